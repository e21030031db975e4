//! See `kci::fuzz::window`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::window(data));
