//! End-to-end tests: real `kci serve` processes, a real SMTP server
//! (Debian's python3-aiosmtpd), a local webhook receiver, and the HTTP API
//! exercised the way a source system uses it.

mod api;
mod assurance;
mod attacks;
mod calls;
mod changes;
mod channels;
mod channels_load;
mod common;
mod crash;
mod delivery;
mod doctor;
mod import;
mod letters;
#[allow(dead_code)] // the benchmark reads figures the test does not
mod load_scenario;
mod mail_transport;
mod multinode;
mod net;
mod proofs;
mod secure_mail;
mod shared_limits;
mod simulate;
mod social;
mod staff;
mod synapse;
