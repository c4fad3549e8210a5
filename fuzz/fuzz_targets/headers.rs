//! `cargo +nightly fuzz run headers`: see `weir_fuzz::headers` for the input format and properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::headers(data));
