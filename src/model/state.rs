//! Notification states and the reasons recorded with them (DESIGN.md §3,
//! contract: these names are relied on outside the code).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Held, deferred or queued.
    Pending,
    Sending,
    Sent,
    Failed,
    Cancelled,
    Expired,
    Suppressed,
    Digested,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Pending,
        State::Sending,
        State::Sent,
        State::Failed,
        State::Cancelled,
        State::Expired,
        State::Suppressed,
        State::Digested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
            State::Suppressed => "suppressed",
            State::Digested => "digested",
        }
    }

    /// Whether nothing more will happen to a notification in this state.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Sending)
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state `{s}`"))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a notification is in its state: a short snake_case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Waiting out the type's `hold`.
    Hold,
    /// Waiting for the event's `not_before`.
    NotBefore,
    /// Deferred until the destination's window opens.
    Window,
    MinPriority,
    Category,
    Service,
    Unverified,
    Expired,
    Paired,
    Superseded,
    Flapping,
    RateLimit,
    EventCancelled,
    /// Waiting to retry after a transient delivery failure.
    Retry,
    /// The provider refused it for good.
    Rejected,
    /// Transient failures until the attempts ran out.
    GaveUp,
    /// No channel is configured for the destination's scheme.
    NoChannel,
    /// The message could not be rendered for the channel.
    Render,
    /// The destination was removed while the notice waited.
    DestinationRemoved,
    /// kci stopped while sending it; it goes out again.
    Requeued,
    /// The channel needs a short text and neither the event nor its type has one.
    NoShortForm,
    /// Folded into the destination's digest.
    Digest,
    /// A digest whose notices were all cancelled before it was due.
    EmptyDigest,
    /// A failed delivery put back in the queue by an operator.
    Redriven,
    /// The provider accepted it, then reported it could not be delivered
    /// (an SMS delivery report of `undelivered`, say).
    Undelivered,
    /// The destination is marked unhealthy after permanent failures in a
    /// row; nothing goes there until it is verified again.
    Unhealthy,
    /// It carried a one-time secret (a code, a link) that kci no longer
    /// holds: a new one must be asked for.
    SecretGone,
    /// A notice about a protected change that ended before it went out
    /// (a reminder of a change vetoed or applied meanwhile).
    ChangeEnded,
    /// A `postal:` destination gets only the types that ask for letters and
    /// kci's security notices at `maximum` (`plan::letter`).
    NotByLetter,
    /// A letter for an account without a postal address.
    NoPostalAddress,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Hold => "hold",
            Reason::NotBefore => "not_before",
            Reason::Window => "window",
            Reason::MinPriority => "min_priority",
            Reason::Category => "category",
            Reason::Service => "service",
            Reason::Unverified => "unverified",
            Reason::Expired => "expired",
            Reason::Paired => "paired",
            Reason::Superseded => "superseded",
            Reason::Flapping => "flapping",
            Reason::RateLimit => "rate_limit",
            Reason::EventCancelled => "event_cancelled",
            Reason::Retry => "retry",
            Reason::Rejected => "rejected",
            Reason::GaveUp => "gave_up",
            Reason::NoChannel => "no_channel",
            Reason::Render => "render",
            Reason::DestinationRemoved => "destination_removed",
            Reason::Requeued => "requeued",
            Reason::NoShortForm => "no_short_form",
            Reason::Digest => "digest",
            Reason::EmptyDigest => "empty_digest",
            Reason::Redriven => "redriven",
            Reason::Undelivered => "undelivered",
            Reason::Unhealthy => "unhealthy",
            Reason::SecretGone => "secret_gone",
            Reason::ChangeEnded => "change_ended",
            Reason::NotByLetter => "not_by_letter",
            Reason::NoPostalAddress => "no_postal_address",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// What a provider reported after accepting a notice: the receipt behind a
/// `sent` notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// The provider will report; kci asks (or waits for its callback).
    Awaiting,
    /// Handed to the handset or mailbox (an SMS delivery report).
    Delivered,
    /// A person acknowledged it (a Pushover emergency notice).
    Acknowledged,
    /// The provider gave up (no acknowledgement before the emergency expired).
    Unacknowledged,
    /// The provider could not deliver it; the notification becomes `failed`.
    Undelivered,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Awaiting => "awaiting",
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Acknowledged => "acknowledged",
            ReceiptStatus::Unacknowledged => "unacknowledged",
            ReceiptStatus::Undelivered => "undelivered",
        }
    }

    pub fn parse(s: &str) -> Option<ReceiptStatus> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// Whether the provider has said its last word.
    pub fn is_final(self) -> bool {
        self != ReceiptStatus::Awaiting
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in [
            Reason::EventCancelled,
            Reason::MinPriority,
            Reason::RateLimit,
            Reason::NotBefore,
            Reason::NotByLetter,
            Reason::NoPostalAddress,
        ] {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
