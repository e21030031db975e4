//! The words of kci's notices about call verification (DESIGN.md §8).

use crate::model::{Audience, Call, Message, Notification, Priority, SECRET_MARK};
use chrono::{DateTime, Utc};

/// The type of the notice that tells a customer who is calling, with their
/// code (rendered in at [`SECRET_MARK`] as it goes out).
pub const CALLING: &str = "kci.call.calling";

/// The words of one operator's call notices.
#[derive(Debug, Clone)]
pub struct CallTexts {
    pub operator: String,
}

impl CallTexts {
    fn notice(
        &self,
        to: &Audience,
        (kind, c): (&str, &Call),
        (short, subject): (&str, &str),
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Notification {
        let mut n = Notification::own(
            &to.account,
            &to.destination,
            kind,
            Priority::Urgent,
            Message {
                short: short.to_string(),
                subject: subject.to_string(),
                body: format!("{short}\n"),
                encrypt_to: None,
            },
            now,
            expires_at,
        );
        n.key = format!("kci.call:{}", c.id);
        n
    }

    /// "<staff> from <operator> is calling you now", with the customer's
    /// code and the link to type staff's (the secret: both, rendered in).
    pub fn calling(
        &self,
        c: &Call,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let short = format!(
            "{staff} from {op} is calling you now. Read them your code: {SECRET_MARK}. If nobody from {op} is on the line with you, ignore this.",
            staff = c.staff
        );
        audience
            .iter()
            .map(|to| {
                self.notice(
                    to,
                    (CALLING, c),
                    (&short, &format!("{op} is calling you now")),
                    now,
                    Some(c.expires_at),
                )
            })
            .collect()
    }

    /// The secret rendered into the calling notice: the customer's code
    /// and the link where they type staff's.
    pub fn calling_secret(&self, customer_code: &str, link: &str) -> String {
        format!("{customer_code} — and type the code they read to you at {link}")
    }

    /// Both sides typed the other's code.
    pub fn verified(
        &self,
        c: &Call,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let short = format!(
            "The call is verified: you are speaking with {staff} from {op}.",
            staff = c.staff
        );
        audience
            .iter()
            .map(|to| {
                let subject = format!("Call from {op} verified");
                self.notice(to, ("kci.call.verified", c), (&short, &subject), now, None)
            })
            .collect()
    }

    /// It failed or expired: hang up.
    pub fn hang_up(
        &self,
        c: &Call,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let short = format!(
            "{op}: the call from someone saying they are {staff} of {op} could NOT be verified. Hang up now. If you need us, call us on the number you know.",
            staff = c.staff
        );
        audience
            .iter()
            .map(|to| {
                let subject = "Hang up: the call was not verified";
                self.notice(to, ("kci.call.failed", c), (&short, subject), now, None)
            })
            .collect()
    }
}
