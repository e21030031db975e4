//! See `kci::fuzz::apprise_urls`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::apprise_urls(data));
