//! `cargo +nightly fuzz run plugin_output`: see `weir_fuzz::plugin_output` for the input format and properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::plugin_output(data));
