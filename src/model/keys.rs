//! The key registry (DESIGN.md §6): OpenPGP keys per target email address,
//! each `pending` until its holder proves possession, then `active` (one
//! per address); and the protected changes (§7) that replace or remove an
//! active key.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Submitted; waits for the confirmation link sent encrypted to it.
    Pending,
    /// Mail to the address is encrypted to it.
    Active,
    /// Was active; another key took its place.
    Replaced,
    /// Was active; removed through a change.
    Removed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Replaced => "replaced",
            KeyState::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<KeyState> {
        [
            KeyState::Pending,
            KeyState::Active,
            KeyState::Replaced,
            KeyState::Removed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One key of one address.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyRecord {
    /// The address, lower-cased.
    pub address: String,
    /// Upper-case hex.
    pub fingerprint: String,
    /// The cleaned public certificate, ASCII-armored.
    #[serde(skip)]
    pub armored: String,
    pub state: KeyState,
    /// How it came: `api`, `mail`.
    pub source: String,
    #[serde(serialize_with = "super::ser_time")]
    pub submitted_at: DateTime<Utc>,
    #[serde(serialize_with = "super::ser_time_opt")]
    pub activated_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "super::ser_time_opt")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a single-use key link proves when followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPurpose {
    /// Sent encrypted to a submitted key: its holder can read that mailbox.
    Activate,
    /// Sent encrypted to the active key: its holder agrees to a change.
    Approve,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::Activate => "activate",
            TokenPurpose::Approve => "approve",
        }
    }

    pub fn parse(s: &str) -> Option<TokenPurpose> {
        match s {
            "activate" => Some(TokenPurpose::Activate),
            "approve" => Some(TokenPurpose::Approve),
            _ => None,
        }
    }
}

/// A single-use link: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyToken {
    pub hash: String,
    pub address: String,
    /// The key it is about (the submitted one for `activate`).
    pub fingerprint: String,
    pub purpose: TokenPurpose,
    /// For `approve`: the change it approves.
    pub change: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// An address's keys and pending changes, as `GET /v1/keys/{address}`
/// shows them.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyStatus {
    pub address: String,
    pub active: Option<KeyRecord>,
    pub pending: Vec<KeyRecord>,
    pub changes: Vec<super::Change>,
}

/// What following a key link did.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirmed {
    /// The key is now active (there was none before).
    Activated(KeyRecord),
    /// Proof recorded on a change that needs more (the other holder's).
    Proven(super::Change),
    /// The change had all its proofs and was applied.
    Applied(super::Change),
    /// Unknown, used, or expired.
    Invalid,
}

/// A key link as stored, found by the hash of its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    pub address: String,
    /// The key it is about: the submitted one (`activate`), or the key
    /// that was active when it was sent (`approve`).
    pub fingerprint: String,
    pub purpose: TokenPurpose,
    pub change: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
}

/// What the key rules see of one address: its active key, the keys
/// waiting for confirmation, and its pending changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressKeys {
    pub active: Option<KeyRecord>,
    pub pending: Vec<KeyRecord>,
    /// Pending changes only, oldest first.
    pub changes: Vec<super::Change>,
}

/// One write the key rules ask a store to make, in order, inside the
/// transaction that read the rows.
#[derive(Debug, Clone, PartialEq)]
// Built once per request and moved a few times: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum KeyWrite {
    /// The link that was followed is used up.
    UseLink,
    /// The address's active key leaves that state (`replaced`, `removed`).
    Retire {
        fingerprint: String,
        state: KeyState,
    },
    /// A key of the address becomes its active key.
    Activate {
        fingerprint: String,
        at: DateTime<Utc>,
    },
    /// A change is stored as given (inserted, or its state and proofs
    /// updated).
    Change(super::Change),
}

/// What following a link decides: the writes, and what to tell.
pub type LinkRule = fn(Option<&LinkRow>, &AddressKeys, DateTime<Utc>) -> (Vec<KeyWrite>, Confirmed);

/// A request to change an address's keys, with everything it stores.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRequest {
    pub address: String,
    /// A submitted key, stored `pending`.
    pub key: Option<KeyRecord>,
    /// The change it asks for, if the address has an active key.
    pub change: Option<super::Change>,
    pub links: Vec<KeyToken>,
    pub notices: Vec<super::Notification>,
    /// The signed request that proves it, never to be accepted twice.
    pub proof: Option<ProofUse>,
    /// What the audit log records of it, if it is recorded.
    pub audit: Vec<super::audit::AuditDraft>,
}

/// A signed request used as proof: its fingerprint (over the signer, the
/// signature time and the signed content) is kept until `keep_until`, the
/// end of the time it could be fresh, so it is never accepted twice.
#[derive(Debug, Clone, PartialEq)]
pub struct ProofUse {
    pub hash: String,
    pub keep_until: DateTime<Utc>,
}

/// What admitting a change decides: the writes (other changes cancelled,
/// the change stored, or applied at once when it has every proof), or a
/// refusal.
pub type AdmitRule =
    fn(&AddressKeys, &super::Change, DateTime<Utc>) -> Result<Vec<KeyWrite>, Refused>;

/// Why a key request was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this signed request was used already; sign a new one")]
    Replayed,
    #[error(
        "the address has too many changes waiting already; approve or wait out one of them first"
    )]
    TooManyChanges,
}
