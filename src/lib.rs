//! kci — Keeping Customers Informed. A self-hosted hub that source systems
//! post events to; kci decides who is told, where, when and in what form.
//!
//! The modules follow the data flow of DESIGN.md §1:
//! `ingest` → `plan` (pure) → `schedule` → `render` → `channels`, with
//! `store` underneath, `web` and `cli` at the edges.

pub mod audit;
pub mod calls;
pub mod changes;
pub mod channels;
pub mod cli;
pub mod config;
pub mod directory;
#[doc(hidden)]
pub mod fuzz;
pub mod inbound;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod pgp;
pub mod plan;
pub mod render;
pub mod schedule;
pub mod secure;
pub mod shutdown;
pub mod slow;
pub mod smime;
pub mod staff;
pub mod store;
pub mod text;
pub mod trust;
pub mod web;
