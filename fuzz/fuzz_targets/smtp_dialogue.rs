//! See `kci::fuzz::smtp_dialogue`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::smtp_dialogue(data));
