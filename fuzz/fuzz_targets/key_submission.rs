//! A key block as submitted (armored or binary): any bytes must be cleaned
//! into a key or refused with a reason, within the checks' bounds, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    let _ = kci::pgp::check_submission(data, "alice@example.com", now);
});
