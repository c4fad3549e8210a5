//! `cargo +nightly fuzz run config`: see `weir_fuzz::config` for the input format and properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::config(data));
