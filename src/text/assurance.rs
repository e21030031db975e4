//! The words of assurance recovery's notices (DESIGN.md §7): the
//! confirmation link to the primary address, the T-word to it alone, what
//! every other destination is told (with a veto link), and the lock.

use super::changes::{ChangeTexts, REMINDER, reminder_key};
use crate::model::{Assurance, Audience, Change, Message, Notification, SECRET_MARK};
use chrono::{DateTime, Utc};

/// The type of the mail carrying the confirmation link.
pub const LINK: &str = "kci.assurance.link";
/// The type of the mail carrying the T-word.
pub const T_WORD: &str = "kci.assurance.tword";

impl ChangeTexts {
    /// The confirmation link to the primary address (its secret rendered
    /// in as it goes out).
    pub fn assurance_link(&self, a: &Assurance, c: &Change, now: DateTime<Utc>) -> Notification {
        let op = &self.operator;
        let what = self.what(c);
        let link = format!("{}v1/recovery/{SECRET_MARK}", self.base);
        let met = a.met_on.format("%Y-%m-%d");
        let body = format!(
            "{assurer} of {op} recorded that they met you in person on {met} (ticket {ticket}) to recover your account: to {what}.\n\n\
             If that was you, open this link and confirm that this address still reaches you:\n\n    {link}\n\n\
             We will then send you a recovery word here. Together with the word you agreed with {assurer} when you met, it completes the recovery. \
             The link works until {until}.\n\n\
             If you did not meet anyone from {op}, do not open the link: tell us.\n",
            assurer = a.assurer,
            ticket = a.ticket,
            until = crate::model::fmt_time(a.link_expires_at),
        );
        let message = Message {
            short: format!("{op}: confirm your account recovery: {link}"),
            subject: "Confirm your account recovery".into(),
            body,
            encrypt_to: Self::new_key(c),
        };
        let mut n =
            crate::keys::address_mail(&a.address, LINK, message, now, Some(a.link_expires_at));
        n.account = a.account.clone().unwrap_or_default();
        n.key = format!("{LINK}:{}", a.id);
        n
    }

    /// The T-word, to the primary address only (rendered in as it goes
    /// out).
    pub fn assurance_t_word(&self, a: &Assurance, c: &Change, now: DateTime<Utc>) -> Notification {
        let op = &self.operator;
        let what = self.what(c);
        let until = a.t_expires_at.unwrap_or(now);
        let body = format!(
            "Your recovery word is: {SECRET_MARK}\n\n\
             To complete the recovery (to {what}), enter the word you agreed with {assurer} when you met, a dash, and this recovery word — \
             for example  yourword-{SECRET_MARK}  — on the page the confirmation link opened, or give it to us as we ask. \
             It works once, until {until_s}; three wrong tries lock the recovery.\n\n\
             Never read it out to anyone, including our staff.\n",
            assurer = a.assurer,
            until_s = crate::model::fmt_time(until),
        );
        let message = Message {
            short: format!(
                "{op}: your recovery word is {SECRET_MARK}. Never read it out to anyone."
            ),
            subject: "Your recovery word".into(),
            body,
            encrypt_to: Self::new_key(c),
        };
        let mut n = crate::keys::address_mail(&a.address, T_WORD, message, now, Some(until));
        n.account = a.account.clone().unwrap_or_default();
        n.key = format!("{T_WORD}:{}", a.id);
        n
    }

    /// What every other verified destination hears when a recovery is
    /// under way (no secret; a veto link, minted as it goes out).
    pub fn recovery_under_way(
        &self,
        a: &Assurance,
        c: &Change,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let what = self.what(c);
        let link = format!("{}v1/veto/{SECRET_MARK}", self.base);
        let short = format!(
            "{op}: an account recovery is under way (to {what}), confirmed from {address}. If it is not you, stop it: {link}",
            address = a.address
        );
        let body = format!(
            "{assurer} of {op} recorded meeting you in person to recover your account (to {what}), and the recovery was confirmed from {address}.\n\n\
             If this is you, do nothing. If it is not, stop it with this link (one click on the page it opens), and we will look into it:\n\n    {link}\n",
            assurer = a.assurer,
            address = a.address
        );
        audience
            .iter()
            .filter(|to| {
                !matches!(&to.destination.uri, crate::model::DestinationUri::Mailto(m) if m.as_str() == a.address)
            })
            .map(|to| {
                let mut n = Notification::own(
                    &to.account,
                    &to.destination,
                    REMINDER,
                    crate::model::Priority::High,
                    Message {
                        short: short.clone(),
                        subject: "An account recovery is under way".into(),
                        body: body.clone(),
                        encrypt_to: None,
                    },
                    now,
                    Some(c.not_before.max(now + chrono::Duration::days(7))),
                );
                n.key = reminder_key(&c.id);
                n
            })
            .collect()
    }

    /// Everyone is told a recovery was locked after wrong secrets.
    pub fn recovery_locked(
        &self,
        c: &Change,
        audience: &[Audience],
        now: DateTime<Utc>,
    ) -> Vec<Notification> {
        let op = &self.operator;
        let what = self.what(c);
        let text = format!(
            "{op}: the account recovery (to {what}) was locked after three wrong recovery secrets. Nothing changed, and we are looking into it."
        );
        audience
            .iter()
            .map(|to| {
                let mut n = Notification::own(
                    &to.account,
                    &to.destination,
                    "kci.assurance.locked",
                    crate::model::Priority::High,
                    Message {
                        short: text.clone(),
                        subject: "Account recovery locked".into(),
                        body: format!("{text}\n"),
                        encrypt_to: None,
                    },
                    now,
                    None,
                );
                n.key = format!("kci.assurance.locked:{}", c.id);
                n
            })
            .collect()
    }
}
