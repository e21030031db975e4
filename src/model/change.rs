//! Protected changes (DESIGN.md §7, contract): every sensitive request —
//! replacing or removing a key, adding, removing or changing a destination,
//! lowering an account's security — is a change record. With proof from
//! the right person it applies at once; without, it waits out a cooling-off
//! period during which any verified destination can veto it, and at
//! `maximum` two staff approve it too.

use super::{Preferences, SecurityLevel};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a change asks for (contract names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ChangeKind {
    /// Another key in place of the address's active one.
    #[serde(rename = "key.replace")]
    KeyReplace,
    /// No key: mail to the address goes unencrypted.
    #[serde(rename = "key.remove")]
    KeyRemove,
    #[serde(rename = "destination.add")]
    DestinationAdd,
    #[serde(rename = "destination.remove")]
    DestinationRemove,
    #[serde(rename = "destination.change")]
    DestinationChange,
    /// A lower `security_level`, or `paranoid` off.
    #[serde(rename = "security.lower")]
    SecurityLower,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 6] = [
        ChangeKind::KeyReplace,
        ChangeKind::KeyRemove,
        ChangeKind::DestinationAdd,
        ChangeKind::DestinationRemove,
        ChangeKind::DestinationChange,
        ChangeKind::SecurityLower,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::KeyReplace => "key.replace",
            ChangeKind::KeyRemove => "key.remove",
            ChangeKind::DestinationAdd => "destination.add",
            ChangeKind::DestinationRemove => "destination.remove",
            ChangeKind::DestinationChange => "destination.change",
            ChangeKind::SecurityLower => "security.lower",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A change to an address's key (the others are an account's).
    pub fn is_key(self) -> bool {
        matches!(self, ChangeKind::KeyReplace | ChangeKind::KeyRemove)
    }

    /// Whether a request of this kind on an account at `level` is
    /// protected: keys always; destinations and lowering security from
    /// `high` up.
    pub fn protected_at(self, level: SecurityLevel) -> bool {
        self.is_key() || level >= SecurityLevel::High
    }
}

/// Where a change stands (contract names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Waiting for proof, its cooling-off period or its approvals.
    Pending,
    Applied,
    /// Stopped by someone it was told to.
    Vetoed,
    /// Superseded (the holder's proven request, another change applied).
    Cancelled,
    /// Its proof never came in time.
    Expired,
    /// It could not apply any more (the key expired meanwhile, the
    /// destination is gone); `reason` says why.
    Rejected,
}

impl ChangeState {
    pub const ALL: [ChangeState; 6] = [
        ChangeState::Pending,
        ChangeState::Applied,
        ChangeState::Vetoed,
        ChangeState::Cancelled,
        ChangeState::Expired,
        ChangeState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Applied => "applied",
            ChangeState::Vetoed => "vetoed",
            ChangeState::Cancelled => "cancelled",
            ChangeState::Expired => "expired",
            ChangeState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeState> {
        ChangeState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One staff member's approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    pub staff: String,
    #[serde(serialize_with = "super::ser_time", deserialize_with = "de_time")]
    pub at: DateTime<Utc>,
}

fn de_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    super::parse_time(&s).map_err(serde::de::Error::custom)
}

/// A destination as a change will make it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DestinationPlan {
    pub id: String,
    pub contact: String,
    pub uri: String,
    #[serde(default)]
    pub prefs: Preferences,
    /// Added verified (a bulk import by `directory:admin`), rather than
    /// sent a code when the change applies.
    #[serde(default)]
    pub verified: bool,
}

/// What a change does, beyond its kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subject {
    /// `key.replace`: the key it makes active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `destination.*`: the destination (as it will be; for a removal,
    /// as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Box<DestinationPlan>>,
    /// `security.lower`: the account's level after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<SecurityLevel>,
    /// `security.lower`: `paranoid` after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoid: Option<bool>,
    /// `security.lower`: the account's level and `paranoid` when it was
    /// asked (if they changed since, it no longer applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<(SecurityLevel, bool)>,
    /// `destination.change` of a `postal:account` destination: the
    /// account's postal address after (where its letters go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_address: Option<super::PostalAddress>,
}

/// A protected change (the contract's record, and what it does).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub id: String,
    pub kind: ChangeKind,
    pub account: Option<String>,
    pub address: Option<String>,
    pub state: ChangeState,
    /// What proved it, if anything did (`signed_mail`, `link`).
    pub proof: Option<String>,
    #[serde(serialize_with = "super::ser_time")]
    pub requested_at: DateTime<Utc>,
    /// Who asked: `token:<id>`, `staff:<name>`, `mail:<address>`.
    pub requested_by: String,
    /// The end of the cooling-off period: nothing applies it earlier
    /// without proof.
    #[serde(serialize_with = "super::ser_time")]
    pub not_before: DateTime<Utc>,
    pub approvals: Vec<Approval>,
    /// Staff approvals it needs (two at `maximum`).
    pub approvals_needed: u32,
    /// Why it ended as it did.
    pub reason: Option<String>,
    #[serde(flatten)]
    pub subject: Subject,
    /// The holder of the key being replaced or removed agreed (a link
    /// encrypted to it was followed, or the request was signed by it).
    pub proven_current: bool,
    /// The holder of the new key proved possession.
    pub proven_new: bool,
    /// The code sent to one of the customer's verified destinations to
    /// prove this change (only its hash and the counts bounding guesses).
    #[serde(skip)]
    pub proof_code: Option<ProofCode>,
    /// What the customer proved it with, in order (`code:<destination>`,
    /// `split_code:<mail>+<second>`, `own_line:<number>`,
    /// `own_connection:<address>`, `assurance:<ids>`): see
    /// `trust::changes::factor_weight`.
    pub factors: Vec<String>,
}

/// A code sent to prove a change: where it went, and its row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProofCode {
    /// Where the code (or its first half) went.
    pub destination: String,
    pub row: super::CodeRow,
    #[serde(default)]
    pub kind: ProofKind,
    /// A split code's second half went here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second: Option<String>,
}

/// How a proof code travels (DESIGN.md §7, issue 12).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProofKind {
    /// One code to one destination, entered back.
    #[default]
    Code,
    /// Two numbers, one by mail and one by a second channel; the customer
    /// enters their sum.
    Split,
    /// A code by mail, texted back from the account's own mobile number.
    Reply,
}

impl Change {
    /// A pending change of the key of `address`, asked at `at`, not to
    /// apply without proof before `not_before`; no approvals needed.
    pub fn of_key(
        id: &str,
        address: &str,
        kind: ChangeKind,
        fingerprint: Option<&str>,
        at: DateTime<Utc>,
        not_before: DateTime<Utc>,
    ) -> Change {
        Change {
            id: id.to_string(),
            kind,
            account: None,
            address: Some(address.to_string()),
            state: ChangeState::Pending,
            proof: None,
            requested_at: at,
            requested_by: String::new(),
            not_before,
            approvals: Vec::new(),
            approvals_needed: 0,
            reason: None,
            subject: Subject {
                fingerprint: fingerprint.map(str::to_string),
                ..Subject::default()
            },
            proven_current: false,
            proven_new: false,
            proof_code: None,
            factors: Vec::new(),
        }
    }

    /// Whether the proofs it needs to apply at once are all there.
    /// A proof by the customer rather than the key's holder (a code, an
    /// assurance, their line) still needs the level's staff approvals.
    pub fn proven(&self) -> bool {
        self.proven_without(&[])
    }

    /// As [`Change::proven`], not counting the approvals of `disabled`
    /// staff members.
    pub fn proven_without(&self, disabled: &[String]) -> bool {
        let proofs = match self.kind {
            ChangeKind::KeyReplace => self.proven_current && self.proven_new,
            // The key's holder, the customer by a code or an assurance.
            _ => self.proven_current,
        };
        // What the customer proved (codes, assurances, their line) stands
        // in for the key's holder, never for the level's approvals.
        proofs && (self.factors.is_empty() || self.approved_without(disabled))
    }

    /// Whether what proves the customer is an assurance (DESIGN.md §7).
    pub fn by_assurance(&self) -> bool {
        self.proof
            .as_deref()
            .is_some_and(|p| p.starts_with(super::assurance::PROOF_PREFIX))
    }

    /// The key a `key.replace` makes active.
    pub fn fingerprint(&self) -> Option<&str> {
        self.subject.fingerprint.as_deref()
    }

    /// Its staff approvals are all in.
    pub fn approved(&self) -> bool {
        self.approved_without(&[])
    }

    /// Its staff approvals are all in, not counting those of `disabled`
    /// staff members: disabling someone (their account compromised, say)
    /// withdraws what they approved and is not applied yet.
    pub fn approved_without(&self, disabled: &[String]) -> bool {
        let counted = self
            .approvals
            .iter()
            .filter(|a| !disabled.contains(&a.staff))
            .count();
        counted >= self.approvals_needed as usize
    }
}

/// An incident: something a customer (or staff) stopped, for staff to look
/// into (contract fields).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: String,
    pub account: Option<String>,
    pub change: Option<String>,
    /// What happened (`veto`, `approval_refused`, …).
    pub kind: String,
    #[serde(serialize_with = "super::ser_time")]
    pub opened_at: DateTime<Utc>,
    /// `open` or `closed`.
    pub state: String,
    pub note: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::ser_time_opt"
    )]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }
}

/// What an account's replacement may not do at once: lower the security
/// of an account at `high` or above (a lower level, or `paranoid` off).
/// Answers the security it keeps meanwhile (the stored one), or `None`
/// when the replacement may write its own.
pub fn kept_security(
    stored: Option<&super::Account>,
    wanted: &super::Account,
) -> Option<(super::SecurityLevel, bool)> {
    let stored = stored?;
    let lowers =
        wanted.security_level < stored.security_level || (stored.paranoid && !wanted.paranoid);
    (lowers && stored.security_level >= super::SecurityLevel::High)
        .then_some((stored.security_level, stored.paranoid))
}

/// A veto link as stored (its secret only hashed).
#[derive(Debug, Clone, PartialEq)]
pub struct VetoLink {
    pub change: String,
    /// The destination whose notice carried it.
    pub destination: String,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
}

/// Where a verified destination that must hear of a change belongs.
#[derive(Debug, Clone, PartialEq)]
pub struct Audience {
    pub account: String,
    pub destination: super::Destination,
}

/// What a step on a change sees, read in the transaction that will write
/// its outcome (the change itself locked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeContext {
    /// The change acted on, as stored (none: a new one, or unknown).
    pub change: Option<Change>,
    /// The veto link followed, if that is the step.
    pub link: Option<VetoLink>,
    /// The incident acted on, if that is the step.
    pub incident: Option<Incident>,
    /// The other pending changes of the same account (or address).
    pub others: Vec<Change>,
    /// The account, for a change of an account.
    pub account: Option<super::AccountView>,
    /// The address's keys, for a change of a key.
    pub keys: Option<super::AddressKeys>,
    /// Every verified, usable destination of every account concerned:
    /// who is told.
    pub audience: Vec<Audience>,
    /// The highest security level among the accounts concerned.
    pub level: SecurityLevel,
    /// The own network prefixes of the accounts concerned.
    pub prefixes: Vec<ipnet::IpNet>,
    /// The change's assurances (locked), newest last.
    pub assurances: Vec<super::Assurance>,
    /// The assurance whose link was followed, if that is the step.
    pub assurance: Option<super::Assurance>,
    /// Who approved the change and has been disabled since: their
    /// approvals no longer count.
    pub disabled_approvers: Vec<String>,
}

/// What a step on a change reads first.
#[derive(Debug, Clone, PartialEq)]
// Built once per request and moved a few times: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ChangeTarget {
    /// A change not stored yet (its account or address is read).
    New(Change),
    Id(String),
    /// A veto link, by the hash of its secret.
    Link(String),
    Incident(String),
    /// An assurance's confirmation link, by the hash of its secret.
    AssuranceLink(String),
}

/// One write a step asks a store to make, in order, in the transaction
/// that read its context.
#[derive(Debug, Clone, PartialEq)]
// Built once per request and moved a few times: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum ChangeWrite {
    /// The change stored as given (inserted, or its state, proofs,
    /// approvals and reason updated; never its clock).
    Change(Change),
    /// A write to the keys of an address (a key change applied).
    Key {
        address: String,
        write: super::KeyWrite,
    },
    /// The veto link followed is used up.
    UseLink(String),
    /// A destination a change adds, with its first verification code and
    /// the notice carrying it.
    AddDestination {
        account: String,
        destination: super::Destination,
        code: Option<super::CodeRow>,
        notice: Option<super::Notification>,
    },
    /// A destination a change removes (what waits for it is cancelled).
    RemoveDestination {
        account: String,
        contact: String,
        id: String,
    },
    /// An account's postal address, as a change of its `postal:`
    /// destination sets it.
    SetPostalAddress {
        account: String,
        address: super::PostalAddress,
    },
    /// An account's security, as a change lowers it.
    SetSecurity {
        account: String,
        level: SecurityLevel,
        paranoid: bool,
    },
    /// What still waits of the notices with this key (a change's
    /// reminders, once it ended) is cancelled.
    CancelNotices {
        key: String,
        detail: String,
    },
    Incident(Incident),
    Notice(super::Notification),
    Audit(super::audit::AuditDraft),
    Assurance(super::Assurance),
}

/// Why a step did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefusal {
    #[error("no such change")]
    NotFound,
    #[error("another protected change of this account is pending; it must end first")]
    Blocked,
    #[error("the change is not pending any more")]
    NotPending,
    #[error("the change was applied already; it cannot be vetoed now")]
    AlreadyApplied,
    #[error("the change needs no staff approval")]
    NoApprovalNeeded,
    #[error("a change cannot be approved by the person who requested it")]
    OwnChange,
    #[error("this staff member approved the change already; another approver must")]
    ApprovedAlready,
    #[error("this link is not valid: it was used already, has expired, or is not one kci sent")]
    InvalidLink,
    #[error("the incident is closed already")]
    IncidentClosed,
    #[error(
        "at this account's security level a code to a destination proves nothing: the change waits out its period (or the current key's holder approves it)"
    )]
    CodeNotAllowed,
    #[error(
        "a code can go only to a verified destination of the account that is not what the change is about"
    )]
    NotADestination,
    #[error("a new code can be sent only after a while, and a few a day; try again later")]
    CodeTooSoon,
    #[error("no code was sent for this change; ask for one first")]
    NoCode,
    #[error("the code is not right")]
    WrongCode,
    #[error("the code expired or had too many wrong tries; ask for a new one")]
    CodeLocked,
    #[error(
        "the assurance is too old: the customer must have been met in person within the allowed time"
    )]
    AssuranceTooOld,
    #[error(
        "no assurance of this change is ready to complete (its confirmation link was not followed, or it is over)"
    )]
    NoAssurance,
    #[error("that is not the recovery secret")]
    WrongSecret,
    #[error("the recovery is locked after too many wrong secrets; staff will look into it")]
    AssuranceLocked,
    #[error("you assured this change already: another assurance must come from another assurer")]
    AssuredAlready,
    #[error(
        "an assurance is sent to the customer's primary address: a verified mail address of the account (for a key change, the key's address)"
    )]
    NotAPrimaryAddress,
    #[error(
        "an assurance cannot prove this change: the recovery secret goes by mail encrypted to the new key, so ask for a new key (key.replace) instead"
    )]
    AssuranceNotAllowed,
    #[error("this change has had as many assurances as it may")]
    TooManyAssurances,
    #[error("the change is proven already")]
    ProvenAlready,
    #[error("the account has no verified mobile number to text the code back from")]
    NoMobile,
    #[error(
        "this code does not prove anything this way: a code to text back must come by SMS from your own number, any other code typed in"
    )]
    WrongWay,
    #[error("the address is not one of the account's own connections")]
    NotOwnConnection,
}

/// What a step on a change did.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeAnswer {
    /// Stored and pending (or applied at once, state says).
    Opened(Change),
    /// Nothing to do yet.
    Waiting(Change),
    /// Applied, rejected or expired now: its state says which.
    Settled(Change),
    Vetoed {
        change: Change,
        incident: Incident,
    },
    Approved(Change),
    IncidentClosed(Incident),
    /// An assurance recorded, confirmed or completed (its state says).
    Assured {
        change: Change,
        assurance: Box<super::Assurance>,
    },
    Refused {
        why: ChangeRefusal,
        change: Option<Change>,
    },
}

/// Decides one step on a change from what it sees: the writes, and the
/// answer. Made by the change engine (`crate::changes`), which builds
/// the notices; the decisions themselves are `crate::changes::rules`'s.
pub trait ChangeRule: Send + Sync {
    fn decide(&self, ctx: &ChangeContext, now: DateTime<Utc>) -> (Vec<ChangeWrite>, ChangeAnswer);
}

#[cfg(test)]
mod tests {
    use super::super::Account;
    use super::*;

    #[test]
    fn kinds_and_states_keep_their_contract_names() {
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for s in ChangeState::ALL {
            assert_eq!(ChangeState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn lowering_a_high_accounts_security_waits() {
        use SecurityLevel::*;
        let acct = |level, paranoid| Account {
            security_level: level,
            paranoid,
            id: "acme".into(),
            name: "Acme".into(),
            timezone: None,
            defaults: Default::default(),
            prefixes: Vec::new(),
            postal_address: None,
        };
        // (case, stored, wanted, kept)
        let cases = [
            ("new account", None, acct(Standard, false), None),
            (
                "standard lowers freely",
                Some(acct(Standard, true)),
                acct(Standard, false),
                None,
            ),
            (
                "raising",
                Some(acct(High, false)),
                acct(Maximum, true),
                None,
            ),
            ("same", Some(acct(High, true)), acct(High, true), None),
            (
                "high to standard",
                Some(acct(High, false)),
                acct(Standard, false),
                Some((High, false)),
            ),
            (
                "maximum to high",
                Some(acct(Maximum, true)),
                acct(High, true),
                Some((Maximum, true)),
            ),
            (
                "paranoid off at high",
                Some(acct(High, true)),
                acct(High, false),
                Some((High, true)),
            ),
            (
                "raise but paranoid off",
                Some(acct(High, true)),
                acct(Maximum, false),
                Some((High, true)),
            ),
        ];
        for (case, stored, wanted, kept) in cases {
            assert_eq!(kept_security(stored.as_ref(), &wanted), kept, "{case}");
        }
    }

    #[test]
    fn what_is_protected_at_which_level() {
        use SecurityLevel::*;
        for (kind, level, protected) in [
            (ChangeKind::KeyReplace, Standard, true),
            (ChangeKind::KeyRemove, Standard, true),
            (ChangeKind::DestinationAdd, Standard, false),
            (ChangeKind::DestinationAdd, High, true),
            (ChangeKind::DestinationRemove, Maximum, true),
            (ChangeKind::SecurityLower, Standard, false),
            (ChangeKind::SecurityLower, High, true),
        ] {
            assert_eq!(kind.protected_at(level), protected, "{kind:?} at {level:?}");
        }
    }
}
