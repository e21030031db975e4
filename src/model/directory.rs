//! The directory: accounts, their contacts, and the destinations where each
//! contact wants to be told.

use super::{DestinationUri, SecurityLevel, TimeZoneName};
use crate::config::Preferences;
use serde::Serialize;

/// A customer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Account {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "ser_tz_opt")]
    pub timezone: Option<TimeZoneName>,
    pub security_level: SecurityLevel,
    pub paranoid: bool,
    pub defaults: Preferences,
}

/// A person or control-page login under an account.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContactView {
    #[serde(flatten)]
    pub contact: Contact,
    pub destinations: Vec<Destination>,
}

/// An account with everything under it: what `plan` fans out over and what
/// `GET /v1/accounts/{id}` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
