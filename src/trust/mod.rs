//! Trust: the proofs that let kci believe a person — a code sent to a
//! destination and entered back (`codes`) — as pure rules the stores call
//! inside their transactions. Protected changes, approvals, assurance and
//! call verification (DESIGN.md §7, §8) join them here.

pub mod codes;
