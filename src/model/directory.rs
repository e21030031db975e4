//! The directory: accounts, their contacts, and the destinations where each
//! contact wants to be told.

use super::Preferences;
use super::{DestinationUri, SecurityLevel, TimeZoneName};
use serde::Serialize;

/// A customer.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Account {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "ser_tz_opt")]
    pub timezone: Option<TimeZoneName>,
    pub security_level: SecurityLevel,
    pub paranoid: bool,
    pub defaults: Preferences,
    /// The network prefixes the customer's own connections come from, as
    /// the source system (an ISP knows its customer's line) supplies them:
    /// a request from inside is a factor proving a change (issue 12).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = super::schema::prefixes)]
    pub prefixes: Vec<ipnet::IpNet>,
    /// Where a `postal:account` destination's letters go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_address: Option<super::PostalAddress>,
}

/// The most prefixes one account may have.
pub const MAX_PREFIXES: usize = 32;

/// A person or control-page login under an account.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Contact {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "ser_tz_opt")]
    pub timezone: Option<TimeZoneName>,
    /// Preferences for all of this contact's destinations (a login that
    /// only wants to hear about some services, say); `timezone` is above.
    #[serde(flatten)]
    pub prefs: Preferences,
}

/// Where a contact wants notices, with the preferences it sets itself.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Destination {
    pub id: String,
    pub contact: String,
    pub uri: DestinationUri,
    #[serde(flatten)]
    pub prefs: Preferences,
    pub verified: bool,
    /// Set when permanent failures in a row made kci stop sending here;
    /// cleared by verifying the destination again.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::ser_time_opt"
    )]
    pub unhealthy_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Destination {
    /// Verified and not marked unhealthy: somewhere kci may send.
    pub fn usable(&self) -> bool {
        self.verified && self.unhealthy_since.is_none()
    }
}

/// A contact with its destinations.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ContactView {
    #[serde(flatten)]
    pub contact: Contact,
    pub destinations: Vec<Destination>,
}

/// An account with everything under it: what `plan` fans out over and what
/// `GET /v1/accounts/{id}` shows.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: Account,
    pub contacts: Vec<ContactView>,
}

fn ser_tz_opt<S: serde::Serializer>(v: &Option<TimeZoneName>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(tz) => s.collect_str(tz),
        None => s.serialize_none(),
    }
}

/// A destination's verification code and the counts that bound guessing
/// it, as stored (only the code's hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct CodeRow {
    /// Verified and healthy: nothing to prove.
    pub usable: bool,
    pub hash: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Wrong tries of the current code.
    pub attempts: u32,
    /// Codes sent in the current window.
    pub codes_sent: u32,
    /// When the last code was sent.
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Wrong tries in the current window, whatever code they were for.
    pub wrong: u32,
    /// When the current window began.
    pub window_start: Option<chrono::DateTime<chrono::Utc>>,
}

/// Result of checking a destination verification code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOutcome {
    Verified,
    AlreadyVerified,
    WrongCode {
        attempts_left: u32,
    },
    /// Too many wrong codes, or the code expired: ask for a new one.
    Locked,
    NotFound,
}

/// Result of asking for a new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    Sent,
    AlreadyVerified,
    /// Codes are sent at growing intervals and a few a day: not before
    /// `retry_at`.
    TooSoon {
        retry_at: chrono::DateTime<chrono::Utc>,
    },
    NotFound,
}

/// Checks a submitted code's hash against a destination's row: the new row
/// to store (if anything changes) and the outcome.
pub type CheckRule =
    fn(&CodeRow, &str, chrono::DateTime<chrono::Utc>) -> (Option<CodeRow>, VerifyOutcome);

/// Issues a new code (its hash and expiry) on a destination's row: the new
/// row, or why not (`AlreadyVerified`, `TooSoon`).
pub type IssueRule = fn(
    &CodeRow,
    &str,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
) -> Result<CodeRow, RenewOutcome>;

/// A new destination verification code: only its hash is stored.
#[derive(Debug, Clone)]
pub struct PendingCode {
    pub hash: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}
