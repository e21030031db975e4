//! See `kci::fuzz::event_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::event_json(data));
