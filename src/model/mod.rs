//! Domain types. Raw strings from the outside world become these newtypes at
//! the edge (HTTP, config, CLI), so anything inside kci holding one of them
//! holds a valid value.

mod address;
pub mod assurance;
pub mod audit;
mod call;
mod cap;
mod change;
mod clock;
mod delivery;
mod directory;
mod duration;
mod event;
mod import;
mod keys;
mod notification;
mod planning;
pub mod postal;
mod preferences;
mod priority;
mod role;
pub mod schema;
mod secret;
mod state;
pub mod throttle;
mod uri;
mod window;

pub use address::EmailAddr;
pub use assurance::{Assurance, AssuranceState};
pub use call::{
    Call, CallAnswer, CallCode, CallContext, CallRefusal, CallRule, CallState, CallTarget,
    CallWrite,
};
pub use cap::Cap;
pub use change::{
    Approval, Audience, Change, ChangeAnswer, ChangeContext, ChangeKind, ChangeRefusal, ChangeRule,
    ChangeState, ChangeTarget, ChangeWrite, DestinationPlan, Incident, ProofCode, ProofKind,
    Subject, VetoLink, kept_security,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use delivery::{MAX_DETAIL, Receipt, Report, excerpt as delivery_excerpt};
pub use directory::{
    Account, AccountView, CheckRule, CodeRow, Contact, ContactView, Destination, IssueRule,
    MAX_PREFIXES, PendingCode, RenewOutcome, VerifyOutcome,
};
pub use duration::Span;
pub use event::Event;
pub use import::{
    ImportBatch, ImportCounts, ImportOutcome, ImportRow, ImportRule, ImportSeen, ImportWrite,
};
pub use keys::{
    AddressKeys, AdmitRule, Confirmed, KeyRecord, KeyRequest, KeyState, KeyStatus, KeyToken,
    KeyWrite, LinkRow, LinkRule, ProofUse, Refused, TokenPurpose,
};
pub use notification::{Notification, SECRET_MARK, first_due};
pub use planning::{Cancel, Load, Planned, RelatedNotice, Seen};
pub use postal::{PostalAddress, PostalError, PostalInput};
pub use preferences::Preferences;
pub use priority::Priority;
pub use role::{Role, Staff, StaffLogin, check_staff_name};
pub use secret::Secret;
pub use state::{Reason, ReceiptStatus, State};
pub use uri::{ChannelKind, DestinationUri, XUser, parse_apprise_tag, parse_e164};
pub use window::Window;

use chrono::{DateTime, TimeZone, Utc};
use std::fmt;

/// SHA-256 in lower-case hex: how token secrets and codes are kept at rest.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

/// `bytes` as lower-case hex, two digits each, in one allocation (a
/// mail's thread id and each code's MAC are made this way, per mail and
/// per request).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// A time-ordered unique id (UUIDv7), used for events without one, for
/// notifications, destinations, changes and tokens.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// At most `max` characters of `text`, cut on a character boundary and
/// ending in `…` where cut: what kci keeps or answers of words it did not
/// write (a provider's answer, a parser's message quoting its input).
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text[cut..].chars().nth(1).is_some() => format!("{}…", &text[..cut]),
        _ => text.to_string(),
    }
}

/// An error from parsing a raw value into a domain type; the message names
/// what is wrong, the caller adds which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Texts kci writes itself (a verification code, a flap summary) rather
/// than rendering them from an event type's templates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub short: String,
    pub subject: String,
    pub body: String,
    /// Mail only: encrypt to this key of the address (a fingerprint), not
    /// to its active one — a confirmation link goes to the key submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_to: Option<String>,
}

/// An IANA time zone, such as `Europe/London`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZoneName(pub chrono_tz::Tz);

impl std::str::FromStr for TimeZoneName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<chrono_tz::Tz>()
            .map(TimeZoneName)
            .map_err(|_| ParseError::new(format!("`{s}` is not an IANA time zone name")))
    }
}

impl fmt::Display for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

/// Checks that an identifier given by a source system (account, contact,
/// service, event id) is printable, reasonably short and free of separators
/// that would make URLs or logs ambiguous.
pub fn check_id(s: &str) -> Result<(), ParseError> {
    if s.is_empty() {
        return Err(ParseError::new("must not be empty"));
    }
    if s.len() > 128 {
        return Err(ParseError::new("must be at most 128 bytes"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == '/' || *c == '?' || *c == '#')
    {
        return Err(ParseError::new(format!("must not contain {c:?}")));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch: how both stores keep instants.
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`to_millis`]; out-of-range values clamp to the epoch
/// rather than panic (they can only come from a corrupted row).
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Parses an RFC 3339 timestamp into UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, ParseError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ParseError::new(format!("`{s}` is not an RFC 3339 timestamp ({e})")))
}

/// Formats an instant the way the API and `kci simulate` print it.
/// Serializes an instant as [`fmt_time`] does.
pub fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_time(*t))
}

/// Serializes an optional instant as [`fmt_time`] does, or null.
pub fn ser_time_opt<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&fmt_time(*t)),
        None => s.serialize_none(),
    }
}

pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The level of protection an account asks for (DESIGN.md §7).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SecurityLevel {
    #[default]
    Standard,
    High,
    Maximum,
}

impl SecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityLevel::Standard => "standard",
            SecurityLevel::High => "high",
            SecurityLevel::Maximum => "maximum",
        }
    }
}

impl std::str::FromStr for SecurityLevel {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Self::Standard),
            "high" => Ok(Self::High),
            "maximum" => Ok(Self::Maximum),
            _ => Err(ParseError::new(format!(
                "`{s}` is not one of standard, high, maximum"
            ))),
        }
    }
}

/// What a bearer token may do (DESIGN.md §2a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    EventsWrite,
    EventsRead,
    DirectoryRead,
    DirectoryWrite,
    DirectoryAdmin,
    KeysWrite,
    Calls,
    ChangesRead,
    ChangesApprove,
    Incidents,
    AuditRead,
    Assure,
    /// Reading `/metrics`: what a Prometheus server holds, and no more.
    MetricsRead,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 14] = [
        Scope::EventsWrite,
        Scope::EventsRead,
        Scope::DirectoryRead,
        Scope::DirectoryWrite,
        Scope::DirectoryAdmin,
        Scope::KeysWrite,
        Scope::Calls,
        Scope::ChangesRead,
        Scope::ChangesApprove,
        Scope::Incidents,
        Scope::AuditRead,
        Scope::Assure,
        Scope::MetricsRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::EventsRead => "events:read",
            Scope::DirectoryRead => "directory:read",
            Scope::DirectoryWrite => "directory:write",
            Scope::DirectoryAdmin => "directory:admin",
            Scope::KeysWrite => "keys:write",
            Scope::Calls => "calls",
            Scope::ChangesRead => "changes:read",
            Scope::ChangesApprove => "changes:approve",
            Scope::Incidents => "incidents",
            Scope::AuditRead => "audit:read",
            Scope::Assure => "assure",
            Scope::MetricsRead => "metrics:read",
            Scope::Admin => "admin",
        }
    }

    /// Whether holding `self` grants `wanted`. `admin` grants everything;
    /// `directory:admin` includes writing, writing includes reading, and
    /// approving changes includes reading them.
    pub fn grants(self, wanted: Scope) -> bool {
        self == wanted
            || self == Scope::Admin
            || matches!(
                (self, wanted),
                (
                    Scope::DirectoryAdmin,
                    Scope::DirectoryWrite | Scope::DirectoryRead
                ) | (Scope::DirectoryWrite, Scope::DirectoryRead)
                    | (Scope::ChangesApprove, Scope::ChangesRead)
            )
    }

    /// A read-only scope (what a `viewer` may hold).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Scope::EventsRead
                | Scope::DirectoryRead
                | Scope::ChangesRead
                | Scope::AuditRead
                | Scope::MetricsRead
        )
    }
}

impl std::str::FromStr for Scope {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                ParseError::new(format!("`{s}` is not a scope; known: {}", known.join(", ")))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        let cases: [(&[u8], &str); 4] = [
            (&[], ""),
            (&[0x00], "00"),
            (&[0x0a, 0xf0, 0xff, 0x5c], "0af0ff5c"),
            (
                &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
                "0123456789abcdef",
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(hex(bytes), want, "{bytes:?}");
        }
        // The known SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scopes_round_trip_and_grant() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert!(Scope::Admin.grants(Scope::EventsWrite));
        assert!(Scope::DirectoryAdmin.grants(Scope::DirectoryRead));
        assert!(!Scope::DirectoryRead.grants(Scope::DirectoryWrite));
        assert!(!Scope::EventsRead.grants(Scope::EventsWrite));
        assert!("events:*".parse::<Scope>().is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("A1").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("a b").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }
}
