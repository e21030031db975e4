//! The key registry (DESIGN.md §6): OpenPGP keys per target email address,
//! each `pending` until its holder proves possession, then `active` (one
//! per address); and the protected changes (§7) that replace or remove an
//! active key.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// A protected change to an address's active key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Another key in place of the active one.
    Replace,
    /// No key: mail to the address goes unencrypted.
    Remove,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Replace => "replace",
            ChangeKind::Remove => "remove",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        match s {
            "replace" => Some(ChangeKind::Replace),
            "remove" => Some(ChangeKind::Remove),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Waiting for proof, or for its cooling-off period to pass.
    Pending,
    Applied,
    /// Superseded by a later change of the same address, or vetoed.
    Cancelled,
}

impl ChangeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Applied => "applied",
            ChangeState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeState> {
        match s {
            "pending" => Some(ChangeState::Pending),
            "applied" => Some(ChangeState::Applied),
            "cancelled" => Some(ChangeState::Cancelled),
            _ => None,
        }
    }
}

/// A requested replacement or removal of an active key. With proof from
/// the current key's holder (and, for a replacement, from the new key's)
/// it applies at once; without, it waits out its cooling-off period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyChange {
    pub id: String,
    pub address: String,
    pub kind: ChangeKind,
    /// The key it would make active (a replacement).
    pub fingerprint: Option<String>,
    pub state: ChangeState,
    #[serde(serialize_with = "super::ser_time")]
    pub requested_at: DateTime<Utc>,
    /// The end of the cooling-off period: nothing applies it earlier
    /// without proof.
    #[serde(serialize_with = "super::ser_time")]
    pub not_before: DateTime<Utc>,
    /// The holder of the key being replaced or removed agreed (a link
    /// encrypted to it was followed, or the request was signed by it).
    pub proven_current: bool,
    /// The holder of the new key proved possession.
    pub proven_new: bool,
}

impl KeyChange {
    /// Whether the proofs it needs to apply at once are all there.
    pub fn proven(&self) -> bool {
        self.proven_current && (self.kind == ChangeKind::Remove || self.proven_new)
    }
}

/// An address's keys and pending changes, as `GET /v1/keys/{address}`
/// shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyStatus {
    pub address: String,
    pub active: Option<KeyRecord>,
    pub pending: Vec<KeyRecord>,
    pub changes: Vec<KeyChange>,
}

/// What following a key link did.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirmed {
    /// The key is now active (there was none before).
    Activated(KeyRecord),
    /// Proof recorded on a change that needs more (the other holder's).
    Proven(KeyChange),
    /// The change had all its proofs and was applied.
    Applied(KeyChange),
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
    pub changes: Vec<KeyChange>,
}

/// One write the key rules ask a store to make, in order, inside the
/// transaction that read the rows.
#[derive(Debug, Clone, PartialEq)]
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
    Change(KeyChange),
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
    pub change: Option<KeyChange>,
    pub links: Vec<KeyToken>,
    pub notices: Vec<super::Notification>,
    /// The signed request that proves it, never to be accepted twice.
    pub proof: Option<ProofUse>,
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
pub type AdmitRule = fn(&AddressKeys, &KeyChange, DateTime<Utc>) -> Result<Vec<KeyWrite>, Refused>;

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
