//! The words of kci's notices about protected changes (DESIGN.md §7):
//! the reminders of a pending change (each with a veto link, minted when
//! it goes out), what everyone is told when it ends, and the closing of
//! an incident.

use crate::model::{
    Audience, Change, ChangeKind, ChangeState, Incident, Message, Notification, Priority,
    SECRET_MARK,
};
use crate::trust::changes as rules;
use chrono::{DateTime, Utc};

/// The type of a pending change's reminders (each carries a veto link).
pub const REMINDER: &str = "kci.change.pending";

/// The key of a change's reminders (what a veto cancels).
pub fn reminder_key(change: &str) -> String {
    format!("kci.change:{change}")
}

/// The words of the notices about changes.
#[derive(Debug, Clone)]
pub struct ChangeTexts {
    /// The operator's name, as mail from kci is signed.
    pub operator: String,
    /// The public base URL, ending in `/`.
    pub base: String,
}

impl ChangeTexts {
    /// What `c` asks, in words.
    pub(crate) fn what(&self, c: &Change) -> String {
        let address = c.address.as_deref().unwrap_or("your address");
        let dest = c
            .subject
            .destination
            .as_ref()
            .map_or("a destination", |d| d.uri.as_str());
        match c.kind {
            ChangeKind::KeyReplace => format!(
                "encrypt the mail to {address} to a new OpenPGP key ({})",
                c.fingerprint().unwrap_or("unknown")
            ),
            ChangeKind::KeyRemove => format!("stop encrypting the mail to {address}"),
            ChangeKind::DestinationAdd => format!("send your notices also to {dest}"),
            ChangeKind::DestinationRemove => format!("stop sending your notices to {dest}"),
            ChangeKind::DestinationChange => match &c.subject.postal_address {
                // The town and country only: enough to recognise, not a
                // full address on every channel.
                Some(a) => format!(
                    "send your letters to a new postal address (in {}, {})",
                    a.town, a.country
                ),
                None => format!("change where your notices to {dest} go"),
            },
            ChangeKind::SecurityLower => match (c.subject.security_level, c.subject.paranoid) {
                (Some(level), _) => {
                    format!("lower your account's security level to {}", level.as_str())
                }
                (None, Some(false)) => "stop hiding the content of your notices".into(),
                _ => "lower your account's security".into(),
            },
        }
    }

    fn notice(
        &self,
        to: &Audience,
        kind: &str,
        c: &Change,
        message: Message,
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Notification {
        let mut n = Notification::own(
            &to.account,
            &to.destination,
            kind,
            Priority::High,
            message,
            at,
            expires_at,
        );
        n.key = reminder_key(&c.id);
        n
    }

    /// The reminders of a pending change: at the start, half way and
    /// before it may apply, on every destination in `audience`, each with
    /// a veto link.
    pub fn reminders(&self, c: &Change, audience: &[Audience]) -> Vec<Notification> {
        let op = &self.operator;
        let what = self.what(c);
        let when = crate::model::fmt_time(c.not_before);
        let link = format!("{}v1/veto/{SECRET_MARK}", self.base);
        let approvals = if c.approvals_needed > 0 {
            format!(
                " It also needs the approval of {} of our staff.",
                c.approvals_needed
            )
        } else {
            String::new()
        };
        let short = format!(
            "{op}: someone asked to {what}. It takes effect after {when} unless you stop it: {link}"
        );
        let body = format!(
            "Someone asked {op} to {what}.\n\nThe request came without proof from you, so it waits until {when} at the earliest.{approvals} \
             If it was you, do nothing.\n\nIf it was not you, stop it with this link (one click on the page it opens), and we will look into it:\n\n    {link}\n\n\
             You are told on every address and number you registered with us.\n"
        );
        let mut out = Vec::new();
        for at in rules::reminder_times(c.requested_at, c.not_before) {
            for to in audience {
                let mut n = self.notice(
                    to,
                    REMINDER,
                    c,
                    Message {
                        short: short.clone(),
                        subject: format!("Stop it if it was not you: a request to {what}"),
                        body: body.clone(),
                        encrypt_to: None,
                    },
                    c.requested_at,
                    Some(c.not_before),
                );
                n.due_at = at;
                out.push(n);
            }
        }
        out
    }

    /// What everyone is told when `c` ended (applied, vetoed, rejected,
    /// expired).
    pub fn ended(
        &self,
        c: &Change,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let what = self.what(c);
        let text = match c.state {
            ChangeState::Applied => format!(
                "{op}: as requested, we now {what}. If you did not ask for this, contact us now."
            ),
            ChangeState::Vetoed => format!(
                "{op}: the request to {what} was stopped, and we are looking into it. Nothing changed."
            ),
            ChangeState::Rejected => format!(
                "{op}: the request to {what} could not be carried out ({}). Nothing changed.",
                c.reason.as_deref().unwrap_or("no longer possible")
            ),
            _ => format!("{op}: the request to {what} has lapsed. Nothing changed."),
        };
        audience
            .iter()
            .map(|to| {
                self.notice(
                    to,
                    &format!("kci.change.{}", c.state.as_str()),
                    c,
                    Message {
                        short: text.clone(),
                        subject: format!("A request to {what}: {}", c.state.as_str()),
                        body: format!("{text}\n"),
                        encrypt_to: None,
                    },
                    now,
                    None,
                )
            })
            .collect()
    }

    /// The notice carrying a code that proves `c` (the code at
    /// [`SECRET_MARK`], rendered in as it goes out).
    pub fn proof_code(
        &self,
        c: &Change,
        to: &Audience,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Notification {
        let op = &self.operator;
        let what = self.what(c);
        let short = format!(
            "{op}: your code to confirm the request to {what} is {SECRET_MARK}. If you did not ask for it, do not give it to anyone."
        );
        let mut n = Notification::own(
            &to.account,
            &to.destination,
            "kci.change.code",
            Priority::High,
            Message {
                short: short.clone(),
                subject: "Your code to confirm a request".into(),
                body: format!("{short}\n\nIt is valid for 15 minutes.\n"),
                encrypt_to: None,
            },
            now,
            Some(expires_at),
        );
        n.key = format!("kci.change.code:{}", c.id);
        n
    }

    /// The two halves of a split code (each rendered in at
    /// [`SECRET_MARK`] as it goes out): the first to a mailbox, the second
    /// by another channel; the customer enters their sum.
    pub fn split_halves(
        &self,
        c: &Change,
        (mail, second): (&Audience, &Audience),
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> [Notification; 2] {
        let op = &self.operator;
        let what = self.what(c);
        let half = |to: &Audience, n: &str, other: &str| {
            let short = format!(
                "{op}: to confirm the request to {what}, add this number to the one we sent {other}, and enter the sum: {SECRET_MARK} ({n} half). If you did not ask for it, do not give it to anyone."
            );
            let mut notice = Notification::own(
                &to.account,
                &to.destination,
                "kci.change.code",
                Priority::High,
                Message {
                    short: short.clone(),
                    subject: "Half of your code to confirm a request".into(),
                    body: format!("{short}\n\nIt is valid for 15 minutes.\n"),
                    encrypt_to: Self::new_key(c),
                },
                now,
                Some(expires_at),
            );
            notice.key = format!("kci.change.code:{}:{n}", c.id);
            notice
        };
        let by = |to: &Audience| format!("by {}", to.destination.uri.channel());
        [
            half(mail, "first", &by(second)),
            half(second, "second", "by mail"),
        ]
    }

    /// A code to text back from the customer's own mobile number (rendered
    /// in at [`SECRET_MARK`] as it goes out).
    pub fn reply_code(
        &self,
        c: &Change,
        to: &Audience,
        number: Option<&str>,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Notification {
        let op = &self.operator;
        let what = self.what(c);
        let whom = number.map_or_else(|| "our SMS number".to_string(), str::to_string);
        let short = format!(
            "{op}: to confirm the request to {what}, text {SECRET_MARK} from the mobile number you registered with us to {whom}. If you did not ask for it, do not send it."
        );
        let mut n = Notification::own(
            &to.account,
            &to.destination,
            "kci.change.code",
            Priority::High,
            Message {
                short: short.clone(),
                subject: "Your code to text back".into(),
                body: format!("{short}\n\nIt is valid for 15 minutes.\n"),
                encrypt_to: Self::new_key(c),
            },
            now,
            Some(expires_at),
        );
        n.key = format!("kci.change.code:{}", c.id);
        n
    }

    /// Mail about a lost key's replacement is encrypted to the new key
    /// (never to the lost one).
    pub(crate) fn new_key(c: &Change) -> Option<String> {
        (c.kind == ChangeKind::KeyReplace)
            .then(|| c.fingerprint().map(str::to_string))
            .flatten()
    }

    pub fn incident_closed(
        &self,
        i: &Incident,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let text = format!(
            "{op}: we have looked into the request you stopped and closed the matter: {}",
            i.note.as_deref().unwrap_or("")
        );
        audience
            .iter()
            .map(|to| {
                let mut n = Notification::own(
                    &to.account,
                    &to.destination,
                    "kci.incident.closed",
                    Priority::High,
                    Message {
                        short: crate::model::excerpt(&text, 300),
                        subject: "The request you stopped: closed".into(),
                        body: format!("{text}\n"),
                        encrypt_to: None,
                    },
                    now,
                    None,
                );
                n.key = format!("kci.incident:{}", i.id);
                n
            })
            .collect()
    }
}
