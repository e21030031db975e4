//! See `kci::fuzz::destination_uri`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::destination_uri(data));
