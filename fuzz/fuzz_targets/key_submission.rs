//! See `kci::fuzz::key_submission`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::key_submission(data));
