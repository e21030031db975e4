//! What the store reads for planning one event and what it writes back:
//! the data between `plan` (the pure policy) and `store` (which only
//! persists), so that neither depends on the other.

use super::{Message, Notification, Reason, State};
use chrono::{DateTime, Utc};

/// What the store tells planning about one destination with a cap or a
/// digest preference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    pub destination: String,
    /// Non-urgent notices to it within the cap's period (scheduled or sent).
    pub recent: usize,
    /// The digest still pending there, if any.
    pub pending_digest: Option<String>,
}

/// What the store read for planning one event, besides the directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// Related notices of the event's key (pairing, superseding, flapping).
    pub related: &'a [RelatedNotice],
    /// Earlier changes of the event's flap family within the flap window.
    pub recent: usize,
    /// Destinations with a cap or a digest preference.
    pub loads: &'a [Load],
}

/// A notice of an earlier event with the same account and key, of a type
/// the new event relates to (a pairing partner, or its own type when it
/// supersedes): every one still pending, and every notice of the latest
/// such event whatever its state. What pairing and superseding look at.
#[derive(Debug, Clone, PartialEq)]
pub struct RelatedNotice {
    pub id: String,
    pub event: String,
    pub type_name: String,
    pub destination: String,
    pub state: State,
    pub due_at: DateTime<Utc>,
    /// When the notice's event happened (pairing must not depend on the
    /// order events arrive in).
    pub occurred_at: DateTime<Utc>,
}

/// An earlier notice that a new event ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancel {
    pub id: String,
    pub reason: Reason,
    pub detail: String,
}

/// What planning one event asks the store to write, besides the event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Planned {
    /// One per destination decided, ids assigned.
    pub notifications: Vec<Notification>,
    /// Pending notices of earlier events that this event ends, with why.
    pub cancels: Vec<Cancel>,
    /// Pending summaries whose texts change.
    pub updates: Vec<(String, Message)>,
    /// Pending notices that now tell of a completed pair whose first half
    /// happened then.
    pub paired: Vec<(String, DateTime<Utc>)>,
}
