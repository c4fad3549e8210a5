//! `cargo +nightly fuzz run path`: see `weir_fuzz::path` for the input format and properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::path(data));
