//! End-to-end tests: real `kci serve` processes, a real SMTP server
//! (Debian's python3-aiosmtpd), a local webhook receiver, and the HTTP API
//! exercised the way a source system uses it.

mod api;
mod channels;
mod common;
mod crash;
mod delivery;
mod simulate;
