//! Assurance recovery (DESIGN.md §7, after CAcert's *Password Recovery
//! with Assurance*): a customer who lost every proof is met in person by
//! an assurer, who records an A-word agreed face to face (kept only as an
//! argon2 hash); kci confirms the customer's primary address still reaches
//! them (a link), then mails it a random T-word. Only `A-word-T-word`
//! proves the change: the assurer lacks the T-word, a mailbox reader the
//! A-word. An assurance proves one pending change.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a change proven by assurances names them: `assurance:<id>[,<id>]`.
pub const PROOF_PREFIX: &str = "assurance:";

/// Where an assurance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssuranceState {
    /// Waiting for the customer to follow the link sent to the address.
    Recorded,
    /// The address reached them; the T-word went out.
    Confirmed,
    /// The change was proven with it.
    Completed,
    /// Too many wrong secrets.
    Locked,
    /// Its link, its T-word or its change ran out.
    Expired,
}

impl AssuranceState {
    pub const ALL: [AssuranceState; 5] = [
        AssuranceState::Recorded,
        AssuranceState::Confirmed,
        AssuranceState::Completed,
        AssuranceState::Locked,
        AssuranceState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AssuranceState::Recorded => "recorded",
            AssuranceState::Confirmed => "confirmed",
            AssuranceState::Completed => "completed",
            AssuranceState::Locked => "locked",
            AssuranceState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<AssuranceState> {
        AssuranceState::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An assurance of one change.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Assurance {
    pub id: String,
    /// The change it proves.
    pub change: String,
    /// The account (a key change's: the first using its address).
    pub account: Option<String>,
    /// The customer's primary address: the link and the T-word go there
    /// only.
    pub address: String,
    /// The staff member who met the customer.
    pub assurer: String,
    pub ticket: String,
    /// When they met.
    #[serde(serialize_with = "super::ser_time")]
    pub met_on: DateTime<Utc>,
    #[serde(serialize_with = "super::ser_time")]
    pub recorded_at: DateTime<Utc>,
    pub state: AssuranceState,
    /// The A-word's argon2 hash (PHC string).
    #[serde(skip)]
    pub a_hash: String,
    /// The hash of the confirmation link's secret, and until when it
    /// works.
    #[serde(skip)]
    pub link_hash: String,
    #[serde(serialize_with = "super::ser_time")]
    pub link_expires_at: DateTime<Utc>,
    /// The T-word's hash, once sent, and until when it works.
    #[serde(skip)]
    pub t_hash: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::ser_time_opt"
    )]
    pub t_expires_at: Option<DateTime<Utc>>,
    /// Wrong secrets tried.
    pub attempts: u32,
}

impl Assurance {
    /// Still on its way to proving the change (recorded, or confirmed and
    /// its T-word not expired).
    pub fn live(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            AssuranceState::Recorded => now < self.link_expires_at,
            AssuranceState::Confirmed => self.t_expires_at.is_some_and(|t| now < t),
            _ => false,
        }
    }
}
