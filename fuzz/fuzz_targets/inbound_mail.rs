//! See `kci::fuzz::inbound_mail`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kci::fuzz::inbound_mail(data));
