//! Trust: the proofs that let kci believe a person — a code sent to a
//! destination and entered back (`codes`) — and the state machine of
//! protected changes (`changes`: cooling-off, vetoes, approvals), as pure
//! rules the stores and the change engine (`crate::changes`) call inside
//! their transactions. Assurance and call verification (DESIGN.md §7, §8)
//! join them here.

pub mod assurance;
pub mod calls;
pub mod changes;
pub mod codes;
pub mod seal;
pub mod staff;
pub mod totp;
