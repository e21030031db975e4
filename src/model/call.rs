//! Call verification (DESIGN.md §8, contract): staff about to call a
//! customer (or taking their call) open a verification; each side gets a
//! code to read out and types the other's in. Only when both codes were
//! typed right is the call verified; a wrong code three times, or five
//! minutes without both, and it failed — the customer is told to hang up
//! and an incident is opened.

use super::{Audience, Incident};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a verification stands (contract names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Open,
    Verified,
    Failed,
    Expired,
}

impl CallState {
    pub const ALL: [CallState; 4] = [
        CallState::Open,
        CallState::Verified,
        CallState::Failed,
        CallState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Open => "open",
            CallState::Verified => "verified",
            CallState::Failed => "failed",
            CallState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<CallState> {
        CallState::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One side's code: only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallCode {
    pub hash: String,
    /// Typed right by the other side.
    pub matched: bool,
}

/// A call verification.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Call {
    pub id: String,
    pub account: String,
    pub contact: String,
    /// The staff member calling (their name).
    pub staff: String,
    pub state: CallState,
    #[serde(serialize_with = "super::ser_time")]
    pub opened_at: DateTime<Utc>,
    #[serde(serialize_with = "super::ser_time")]
    pub expires_at: DateTime<Utc>,
    /// The code staff read out, for the customer to type (`POST
    /// …/customer-code`).
    #[serde(skip)]
    pub staff_code: CallCode,
    /// The code the customer reads out, for staff to type (`POST
    /// …/staff-code`).
    #[serde(skip)]
    pub customer_code: CallCode,
    /// The hash of the secret in the customer's link.
    #[serde(skip)]
    pub link_hash: String,
    /// Whether the customer typed staff's code right.
    pub customer_confirmed: bool,
    /// Whether staff typed the customer's code right.
    pub staff_confirmed: bool,
    /// Wrong codes typed, either side.
    pub attempts: u32,
    /// Why it failed, if it did.
    pub reason: Option<String>,
}

/// What a step on a call reads first.
#[derive(Debug, Clone, PartialEq)]
pub enum CallTarget {
    /// A call not stored yet.
    New(Box<Call>),
    Id(String),
    /// The customer's link, by the hash of its secret.
    Link(String),
}

/// What a step on a call sees, read in its transaction (the call locked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallContext {
    pub call: Option<Call>,
    /// The customer's verified destinations that reach them at once (all
    /// but mail): where their code goes, and the warning to hang up.
    pub audience: Vec<Audience>,
    /// Whether the account and contact exist.
    pub contact_known: bool,
}

/// One write a step on a call asks for.
#[derive(Debug, Clone, PartialEq)]
// Built once per request and moved a few times: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum CallWrite {
    Call(Call),
    Notice(super::Notification),
    Incident(Incident),
    Audit(super::audit::AuditDraft),
}

/// Why a step on a call did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallRefusal {
    #[error("no such call verification")]
    NotFound,
    #[error("no such account or contact")]
    UnknownContact,
    #[error("the customer has no verified destination that reaches them at once (SMS, push, chat)")]
    Unreachable,
    #[error("this verification is over; open a new one")]
    Over,
    #[error("the code is not right")]
    WrongCode,
    #[error("this link is not valid: it was used already, has expired, or is not one kci sent")]
    InvalidLink,
}

/// What a step on a call did.
#[derive(Debug, Clone, PartialEq)]
pub enum CallAnswer {
    /// Stored and sent; the state says where it stands now.
    Done(Call),
    Refused {
        why: CallRefusal,
        call: Option<Call>,
    },
}

/// Decides one step on a call (see [`super::ChangeRule`]).
pub trait CallRule: Send + Sync {
    fn decide(&self, ctx: &CallContext, now: DateTime<Utc>) -> (Vec<CallWrite>, CallAnswer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_keep_their_contract_names() {
        for s in CallState::ALL {
            assert_eq!(CallState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
