//! One notice to one destination, as the schedule keeps it: planned from
//! an event, or one of kci's own (a verification code, a key link).

use super::{ChannelKind, Destination, Message, Priority, Reason, State};
use chrono::{DateTime, Utc};

/// One notice to one destination, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: String,
    /// `None` for kci's own notices.
    pub event: Option<String>,
    pub account: String,
    pub contact: String,
    pub destination: String,
    pub uri: String,
    pub channel: ChannelKind,
    pub type_name: String,
    pub key: String,
    pub priority: Priority,
    pub state: State,
    pub reason: Option<Reason>,
    /// The provider's own words about a failure or a receipt.
    pub detail: Option<String>,
    pub due_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub decided_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    /// Times the provider asked to wait (HTTP 429): not attempts.
    pub paced: u32,
    pub timezone: String,
    pub message: Option<Message>,
    /// For a `digested` notice: the digest notification it is folded into.
    pub digest: Option<String>,
    /// For a pair summary (`on_pair = "summary"`): when the partner happened.
    pub paired_from: Option<DateTime<Utc>>,
    /// The provider's id for the sent message.
    pub provider_ref: Option<String>,
    /// The provider's later word on it.
    pub receipt: Option<super::ReceiptStatus>,
    /// SMS parts billed.
    pub segments: Option<u32>,
    /// The one-time secret its texts carry at [`SECRET_MARK`] (a
    /// verification code, a key link), held only until the notice is final
    /// and then erased: no usable secret stays at rest once it went out.
    pub secret: Option<super::Secret<String>>,
}

/// Where a notice's texts carry its [`Notification::secret`]; rendered in
/// at send time, never stored in the texts themselves.
pub const SECRET_MARK: &str = "{kci:secret}";

impl Notification {
    /// One of kci's own notices (a verification code, a warning about a
    /// destination) to `dest`, due `now`, carrying its own texts.
    pub fn own(
        account: &str,
        dest: &Destination,
        type_name: &str,
        priority: Priority,
        message: Message,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Notification {
        Notification {
            id: crate::model::new_id(),
            event: None,
            account: account.to_string(),
            contact: dest.contact.clone(),
            destination: dest.id.clone(),
            uri: dest.uri.to_string(),
            channel: dest.uri.channel(),
            type_name: type_name.to_string(),
            key: format!("{type_name}:{}", dest.id),
            priority,
            state: State::Pending,
            reason: None,
            detail: None,
            due_at: now,
            expires_at,
            decided_at: now,
            sent_at: None,
            attempts: 0,
            paced: 0,
            timezone: "UTC".into(),
            message: Some(message),
            digest: None,
            paired_from: None,
            provider_ref: None,
            receipt: None,
            segments: None,
            secret: None,
        }
    }
}

impl Notification {
    /// The same notice carrying `secret` in clear, as a version before
    /// secrets were sealed stored it (tests of that path only; kci's own
    /// code attaches secrets sealed, `trust::seal::AtRest::with_secret`).
    #[cfg(test)]
    pub fn with_secret(mut self, secret: String) -> Notification {
        self.secret = Some(super::Secret::new(secret));
        self
    }

    /// Whether its texts need a secret rendered in.
    pub fn needs_secret(&self) -> bool {
        self.message.as_ref().is_some_and(|m| {
            [&m.short, &m.subject, &m.body]
                .iter()
                .any(|t| t.contains(SECRET_MARK))
        })
    }
}

/// When the first of `notes` that waits to go out comes due (`None`: none
/// waits): how soon the scheduler must look at what an event planned.
pub fn first_due(notes: &[Notification]) -> Option<DateTime<Utc>> {
    notes
        .iter()
        .filter(|n| n.state == State::Pending)
        .map(|n| n.due_at)
        .min()
}
