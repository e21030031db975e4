//! A mail to the key submission address, as `kci inbound` reads it: any
//! bytes must give a submission or a refusal, within the parser's bounds,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kci::inbound::parse(data);
});
