//! The pure policy core (DESIGN.md §4): given an event, the account's
//! directory, the notices still pending for the same key and `now`, decide
//! per destination whether, when and why a notice goes out. No I/O and no
//! clock reads happen here; every rule is one small file with its own tests.
//!
//! Rules applied here: per destination, filters (verification, category,
//! service, min_priority), hold and not_before, the delivery window and
//! expiry; then, over all of an event's decisions and the pending notices
//! of its key, pair-and-cancel and supersede. Flap damping, caps and
//! digests slot in as further steps over the same [`Decision`]s.

mod digest;
pub use digest::DIGEST_TYPE;
mod expiry;
mod filter;
pub mod flap;
mod hold;
pub mod letter;
mod pair;
mod supersede;
mod window;

use crate::config::Config;
use crate::model::Preferences;
use crate::model::{AccountView, ChannelKind, Destination, Event, Notification, Reason, State};
pub use crate::model::{Cancel, Load, RelatedNotice, Seen};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// The fate `plan` decides for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub contact: String,
    pub destination: String,
    pub uri: String,
    pub channel: ChannelKind,
    pub state: State,
    /// Why it is in that state; for `pending`, why it waits (`None`: due now).
    pub reason: Option<Reason>,
    /// The reason in words, for the record and `kci explain`
    /// ("window Mo-Fr 08:00-20:00 (Europe/London)").
    pub detail: Option<String>,
    /// When it may be delivered (for a final state: when that was decided).
    pub due_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The zone texts for this destination are rendered in.
    pub timezone: Tz,
    /// Set for a summary kci writes itself (flap damping), not the event's
    /// own notice.
    pub summary: Option<crate::model::Message>,
    /// This is a digest: its texts are composed from its members when due.
    pub is_digest: bool,
    /// For a `digested` notice: the digest it is folded into.
    pub folded_into: Option<DigestLink>,
    /// This notice tells of a completed pair (`on_pair = "summary"`) whose
    /// first half happened then.
    pub paired_from: Option<DateTime<Utc>>,
}

impl Decision {
    /// The notification this decision makes for `event`.
    pub fn notification(&self, event: &Event) -> Notification {
        let d = self;
        let type_name = if d.is_digest {
            DIGEST_TYPE.to_string()
        } else if d.summary.is_some() {
            flap::SUMMARY_TYPE.to_string()
        } else {
            event.type_name.clone()
        };
        Notification {
            id: crate::model::new_id(),
            event: Some(event.id.clone()),
            account: event.account.clone(),
            contact: d.contact.clone(),
            destination: d.destination.clone(),
            uri: d.uri.clone(),
            channel: d.channel,
            type_name,
            key: event.key.clone(),
            priority: event.priority,
            state: d.state,
            reason: d.reason,
            detail: d.detail.clone(),
            due_at: d.due_at,
            expires_at: d.expires_at,
            decided_at: event.received_at,
            sent_at: None,
            attempts: 0,
            paced: 0,
            timezone: d.timezone.name().to_string(),
            message: d.summary.clone(),
            digest: match &d.folded_into {
                Some(DigestLink::Existing(id)) => Some(id.clone()),
                _ => None,
            },
            paired_from: d.paired_from,
            provider_ref: None,
            receipt: None,
            segments: None,
            secret: None,
        }
    }
}

/// The digest a notice is folded into.
#[derive(Debug, Clone, PartialEq)]
pub enum DigestLink {
    /// A digest already pending at the destination (its notification id).
    Existing(String),
    /// A digest this plan creates: its index in [`Plan::decisions`].
    New(usize),
}

/// What planning one event decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// One per destination of the account (or of the named contact).
    pub decisions: Vec<Decision>,
    /// Pending notices of earlier events that this event ends, with why.
    pub cancels: Vec<Cancel>,
    /// Pending summaries whose texts change (a flap summary counting on).
    pub updates: Vec<(String, crate::model::Message)>,
    /// Pending notices that now tell of a completed pair whose first half
    /// (arriving late) happened then.
    pub paired: Vec<(String, DateTime<Utc>)>,
}

impl Plan {
    /// The notifications of this plan for `event`, ids assigned, each
    /// folded notice linked to its digest (including digests the same plan
    /// creates).
    pub fn notifications(&self, event: &Event) -> Vec<Notification> {
        let mut notes: Vec<Notification> = self
            .decisions
            .iter()
            .map(|d| d.notification(event))
            .collect();
        for (i, d) in self.decisions.iter().enumerate() {
            if let Some(DigestLink::New(j)) = d.folded_into {
                notes[i].digest = notes.get(j).map(|n| n.id.clone());
            }
        }
        notes
    }

    /// What the store writes for this plan of `event`.
    pub fn planned(&self, event: &Event) -> crate::model::Planned {
        crate::model::Planned {
            notifications: self.notifications(event),
            cancels: self.cancels.clone(),
            updates: self.updates.clone(),
            paired: self.paired.clone(),
        }
    }
}

/// The resolved preferences of one destination, borrowed from the level
/// that set each (planning runs per destination per event: no copies).
#[derive(Debug, Clone, Copy)]
pub struct Effective<'a> {
    pub window: Option<&'a crate::model::Window>,
    pub timezone: Tz,
    pub min_priority: crate::model::Priority,
    /// Only these categories; `None` or empty: all.
    pub categories: Option<&'a [String]>,
    /// Only these services; `None` or empty: all.
    pub services: Option<&'a [String]>,
    pub urgent_bypasses_window: bool,
    /// One combined message per period.
    pub digest: Option<crate::model::Span>,
    /// At most this many non-urgent notices per period.
    pub max: Option<crate::model::Cap>,
}

impl Default for Effective<'_> {
    fn default() -> Self {
        Effective {
            window: None,
            timezone: chrono_tz::UTC,
            min_priority: crate::model::Priority::Low,
            categories: None,
            services: None,
            urgent_bypasses_window: true,
            digest: None,
            max: None,
        }
    }
}

/// Resolves a destination's preferences: each field from the destination,
/// else its contact, else the account's `defaults`, else config; the zone
/// also from the account itself (destination → contact → account defaults
/// → account → config).
pub fn effective<'a>(
    dest: &'a Preferences,
    contact: &'a crate::model::Contact,
    account: &'a crate::model::Account,
    config: &'a Preferences,
) -> Effective<'a> {
    let levels = [dest, &contact.prefs, &account.defaults, config];
    let contact_tz = contact.timezone;
    let first = |f: &dyn Fn(&'a Preferences) -> bool| levels.into_iter().find(|p| f(p));
    let timezone = dest
        .timezone
        .or(contact_tz)
        .or(account.defaults.timezone)
        .or(account.timezone)
        .or(config.timezone)
        .map(|t| t.0)
        .unwrap_or(chrono_tz::UTC);
    Effective {
        window: first(&|p| p.window.is_some()).and_then(|p| p.window.as_ref()),
        timezone,
        min_priority: first(&|p| p.min_priority.is_some())
            .and_then(|p| p.min_priority)
            .unwrap_or(crate::model::Priority::Low),
        categories: first(&|p| p.categories.is_some()).and_then(|p| p.categories.as_deref()),
        services: first(&|p| p.services.is_some()).and_then(|p| p.services.as_deref()),
        urgent_bypasses_window: first(&|p| p.urgent_bypasses_window.is_some())
            .and_then(|p| p.urgent_bypasses_window)
            .unwrap_or(true),
        digest: first(&|p| p.digest.is_some()).and_then(|p| p.digest),
        max: first(&|p| p.max.is_some()).and_then(|p| p.max),
    }
}

/// Plans `event` for every destination of `dir` (or of the event's contact).
pub fn plan(
    event: &Event,
    dir: &AccountView,
    config: &Config,
    seen: &Seen,
    now: DateTime<Utc>,
) -> Plan {
    let pending = seen.related;
    let etype = config.types.get(&event.type_name);
    let hold = etype.and_then(|t| t.hold);
    let letter = etype.is_some_and(|t| t.letter);
    let level = dir.account.security_level;
    let flapping = flap::rule(config, &event.type_name);
    let mut decisions = Vec::new();
    let mut cancels = Vec::new();
    let mut summaries = Vec::new();
    let mut updates = Vec::new();
    let mut paired = Vec::new();
    let mut effs = Vec::new();
    for cv in &dir.contacts {
        if event.contact.as_deref().is_some_and(|c| c != cv.contact.id) {
            continue;
        }
        for dest in &cv.destinations {
            let eff = effective(&dest.prefs, &cv.contact, &dir.account, &config.defaults);
            let mut d = Decision {
                contact: cv.contact.id.clone(),
                destination: dest.id.clone(),
                uri: dest.uri.to_string(),
                channel: dest.uri.channel(),
                state: State::Pending,
                reason: None,
                detail: None,
                due_at: now,
                expires_at: event.expires_at,
                timezone: eff.timezone,
                summary: None,
                is_digest: false,
                folded_into: None,
                paired_from: None,
            };
            if letter::admits(d.channel, &event.type_name, letter, level) {
                decide(event, hold, dest, &eff, now, &mut d);
            } else {
                d.state = State::Suppressed;
                d.reason = Some(Reason::NotByLetter);
                d.detail = Some(letter::explain(&event.type_name, level));
            }
            if let Some((rule, family)) = &flapping {
                let damped = flap::apply(
                    event,
                    rule,
                    family,
                    seen.recent + 1,
                    pending,
                    &eff,
                    &mut d,
                    now,
                );
                cancels.extend(damped.cancels);
                summaries.extend(damped.summary);
                updates.extend(damped.update);
            }
            decisions.push(d);
            effs.push(eff);
        }
    }
    if let Some(t) = etype {
        let summary = t.on_pair == crate::config::OnPair::Summary;
        cancels.extend(pair::apply(
            event,
            &t.cancels,
            summary,
            pending,
            &mut decisions,
            now,
        ));
        let cancelled_by = cancelled_by(config, &event.type_name);
        let summarising: Vec<String> = cancelled_by
            .iter()
            .filter(|u| {
                config
                    .types
                    .get(*u)
                    .is_some_and(|t| t.on_pair == crate::config::OnPair::Summary)
            })
            .cloned()
            .collect();
        let (late, late_paired) = pair::apply_late(
            event,
            &cancelled_by,
            &summarising,
            pending,
            &mut decisions,
            now,
        );
        cancels.extend(late);
        paired.extend(late_paired);
        if t.supersedes {
            cancels.extend(supersede::apply(
                &event.id,
                &event.type_name,
                pending,
                &decisions,
            ));
        }
    }
    // Caps and digests come last: a notice that pairs away never counts.
    let first_new = decisions.len() + summaries.len();
    let mut digests = Vec::new();
    for (d, eff) in decisions.iter_mut().zip(&effs) {
        let load = seen.loads.iter().find(|l| l.destination == d.destination);
        if let Some(new) = digest::apply(event, eff, load, d, first_new + digests.len(), now) {
            digests.push(new);
        }
    }
    decisions.extend(summaries);
    decisions.extend(digests);
    Plan {
        decisions,
        cancels,
        updates,
        paired,
    }
}

/// The types whose `cancels` name `type_name`: its pairing partners when it
/// is the first half of a pair.
pub fn cancelled_by(config: &Config, type_name: &str) -> Vec<String> {
    config
        .types
        .iter()
        .filter(|(_, t)| t.cancels.iter().any(|c| c == type_name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The per-destination pipeline: each step may settle the decision.
fn decide(
    event: &Event,
    hold: Option<crate::model::Span>,
    dest: &Destination,
    eff: &Effective,
    now: DateTime<Utc>,
    d: &mut Decision,
) {
    if let Some(reason) = filter::check(event, dest, eff) {
        d.state = State::Suppressed;
        d.reason = Some(reason);
        d.detail = Some(filter::explain(reason, event, eff));
        return;
    }
    let (earliest, held) = hold::earliest(event, hold, now);
    d.due_at = earliest;
    d.reason = held;
    d.detail = match held {
        Some(Reason::Hold) => hold.map(|h| format!("hold {h}")),
        Some(Reason::NotBefore) => event
            .not_before
            .map(|t| format!("not before {}", crate::model::fmt_time(t))),
        _ => None,
    };
    let horizon = expiry::horizon(event, now);
    let window_words = || {
        let w = eff.window.map(|w| w.as_str()).unwrap_or("");
        format!("window {w} ({})", eff.timezone.name())
    };
    match window::defer(earliest, event.priority, eff, horizon) {
        window::Outcome::Open => {}
        window::Outcome::Deferred(at) => {
            d.due_at = at;
            d.reason = Some(Reason::Window);
            d.detail = Some(window_words());
        }
        window::Outcome::Never => {
            d.state = State::Expired;
            d.reason = Some(Reason::Expired);
            d.detail = Some(format!(
                "{} does not open before it expires",
                window_words()
            ));
            d.due_at = now;
            return;
        }
    }
    if expiry::is_expired(d.due_at, event.expires_at) {
        let deferred = d.detail.take().unwrap_or_else(|| "delivery".into());
        d.state = State::Expired;
        d.reason = Some(Reason::Expired);
        d.detail = event.expires_at.map(|exp| {
            format!(
                "{deferred} would be after it expires at {}",
                crate::model::fmt_time(exp)
            )
        });
        d.due_at = now;
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Builders for the rule tests.
    use crate::model::{Event, Priority};
    use chrono::{DateTime, Utc};

    pub fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    pub fn decision(destination: &str, now: DateTime<Utc>) -> super::Decision {
        super::Decision {
            contact: "alice".into(),
            destination: destination.into(),
            uri: "mailto:alice@example.com".into(),
            channel: crate::model::ChannelKind::Email,
            state: crate::model::State::Pending,
            reason: None,
            detail: None,
            due_at: now,
            expires_at: None,
            timezone: chrono_tz::UTC,
            summary: None,
            is_digest: false,
            folded_into: None,
            paired_from: None,
        }
    }

    pub fn pending(id: &str, type_name: &str, destination: &str) -> super::RelatedNotice {
        super::RelatedNotice {
            id: id.into(),
            event: format!("ev-{id}"),
            type_name: type_name.into(),
            destination: destination.into(),
            state: crate::model::State::Pending,
            due_at: at("2026-03-22T08:00:00Z"),
            occurred_at: at("2026-03-22T03:00:00Z"),
        }
    }

    pub fn event(occurred: &str) -> Event {
        Event {
            id: "e1".into(),
            type_name: "line.down".into(),
            account: "A1".into(),
            service: Some("L1".into()),
            contact: None,
            key: "L1".into(),
            priority: Priority::Normal,
            category: "line".into(),
            occurred_at: at(occurred),
            not_before: None,
            expires_at: None,
            received_at: at(occurred),
            data: Default::default(),
            short: None,
            subject: None,
            body: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::model::{Account, Contact, ContactView, Destination, SecurityLevel};

    fn dir(window: Option<&str>, verified: bool) -> AccountView {
        AccountView {
            account: Account {
                id: "A1".into(),
                name: "Alice Ltd".into(),
                timezone: Some("Europe/London".parse().unwrap()),
                security_level: SecurityLevel::Standard,
                paranoid: false,
                defaults: Preferences::default(),
                prefixes: Vec::new(),
                postal_address: None,
            },
            contacts: vec![ContactView {
                contact: Contact {
                    id: "alice".into(),
                    name: "Alice".into(),
                    timezone: None,
                    prefs: Default::default(),
                },
                destinations: vec![
                    Destination {
                        id: "d-sms".into(),
                        contact: "alice".into(),
                        uri: "sms:+447700900001".parse().unwrap(),
                        prefs: Preferences {
                            window: window.map(|w| w.parse().unwrap()),
                            ..Default::default()
                        },
                        verified,
                        unhealthy_since: None,
                    },
                    Destination {
                        id: "d-mail".into(),
                        contact: "alice".into(),
                        uri: "mailto:alice@example.com".parse().unwrap(),
                        prefs: Preferences::default(),
                        verified: true,
                        unhealthy_since: None,
                    },
                ],
            }],
        }
    }

    #[test]
    fn fans_out_to_every_destination_with_its_own_fate() {
        let config = Config::load(None).unwrap();
        let ev = event("2026-03-22T03:00:00Z");
        let now = at("2026-03-22T03:00:01Z");
        let plan = plan(
            &ev,
            &dir(Some("Mo-Fr 08:00-20:00"), true),
            &config,
            &Seen::default(),
            now,
        );
        assert_eq!(plan.decisions.len(), 2);
        let sms = &plan.decisions[0];
        assert_eq!(
            (sms.state, sms.reason),
            (State::Pending, Some(Reason::Window))
        );
        assert_eq!(sms.due_at, at("2026-03-23T08:00:00Z"));
        let mail = &plan.decisions[1];
        assert_eq!(
            (mail.state, mail.reason, mail.due_at),
            (State::Pending, None, now)
        );
    }

    #[test]
    fn a_contact_narrows_all_its_destinations_unless_one_says_otherwise() {
        let config = Config::load(None).unwrap();
        let ev = event("2026-03-24T10:00:00Z"); // service L1
        let mut d = dir(None, true);
        d.contacts[0].contact.prefs.services = Some(vec!["L2".into()]);
        let p = plan(
            &ev,
            &d,
            &config,
            &Seen::default(),
            at("2026-03-24T10:00:00Z"),
        );
        assert!(
            p.decisions
                .iter()
                .all(|x| (x.state, x.reason) == (State::Suppressed, Some(Reason::Service)))
        );
        // The mail destination asks for L1 itself: the nearer level wins.
        d.contacts[0].destinations[1].prefs.services = Some(vec!["L1".into()]);
        let p = plan(
            &ev,
            &d,
            &config,
            &Seen::default(),
            at("2026-03-24T10:00:00Z"),
        );
        assert_eq!(p.decisions[0].reason, Some(Reason::Service));
        assert_eq!(
            (p.decisions[1].state, p.decisions[1].reason),
            (State::Pending, None)
        );
    }

    #[test]
    fn unverified_is_suppressed_and_contact_narrows() {
        let config = Config::load(None).unwrap();
        let mut ev = event("2026-03-22T03:00:00Z");
        let p = plan(
            &ev,
            &dir(None, false),
            &config,
            &Seen::default(),
            at("2026-03-22T03:00:00Z"),
        );
        assert_eq!(p.decisions[0].state, State::Suppressed);
        assert_eq!(p.decisions[0].reason, Some(Reason::Unverified));
        ev.contact = Some("bob".into());
        assert!(
            plan(
                &ev,
                &dir(None, true),
                &config,
                &Seen::default(),
                at("2026-03-22T03:00:00Z")
            )
            .decisions
            .is_empty()
        );
    }

    #[test]
    fn deferred_past_expiry_is_expired() {
        let config = Config::load(None).unwrap();
        let mut ev = event("2026-03-22T03:00:00Z");
        ev.expires_at = Some(at("2026-03-22T07:00:00Z"));
        let p = plan(
            &ev,
            &dir(Some("Mo-Fr 08:00-20:00"), true),
            &config,
            &Seen::default(),
            at("2026-03-22T03:00:00Z"),
        );
        assert_eq!(
            (p.decisions[0].state, p.decisions[0].reason),
            (State::Expired, Some(Reason::Expired))
        );
        assert_eq!(p.decisions[1].state, State::Pending);
    }
}
