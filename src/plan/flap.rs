//! Flap damping (DESIGN.md §4.7): when `threshold` changes of a type and
//! its pairing partners arrive for one key `within` a period, the key is
//! flapping. From then on its notices are `suppressed` (reason `flapping`),
//! what is still pending of the family is cancelled, and each destination
//! gets one summary instead, at the end of the period, saying how many
//! changes there were — at most one per period, however long it flaps.

use super::{Cancel, Decision, Effective, RelatedNotice, window};
use crate::config::{Config, Flap};
use crate::model::{Event, Message, Reason, State};
use chrono::{DateTime, Utc};

/// The notification type of flap summaries.
pub const SUMMARY_TYPE: &str = "kci.flap";

/// The flap rule governing `type_name` (its own, or the first its pairing
/// family has) and that family: the types whose events count as changes.
pub fn rule<'a>(config: &'a Config, type_name: &str) -> Option<(&'a Flap, Vec<String>)> {
    let t = config.types.get(type_name)?;
    let flap_of = |name: &str| config.types.get(name).and_then(|t| t.flap.as_ref());
    // Most types have no flap rule in their family: answer that without
    // building the family.
    let flap = t
        .flap
        .as_ref()
        .or_else(|| t.cancels.iter().find_map(|c| flap_of(c)))
        .or_else(|| {
            config
                .types
                .iter()
                .filter(|(_, u)| u.cancels.iter().any(|c| c == type_name))
                .find_map(|(_, u)| u.flap.as_ref())
        })?;
    let mut family = vec![type_name.to_string()];
    family.extend(t.cancels.iter().cloned());
    family.extend(super::cancelled_by(config, type_name));
    family.dedup();
    Some((flap, family))
}

/// What damping decided for one destination.
#[derive(Debug, Default)]
pub struct Damped {
    pub cancels: Vec<Cancel>,
    /// A new summary for this destination.
    pub summary: Option<Decision>,
    /// A pending summary whose count goes up.
    pub update: Option<(String, Message)>,
}

fn summary_message(event: &Event, changes: usize, flap: &Flap) -> Message {
    let what = event.service.as_deref().unwrap_or(&event.key);
    let short = format!(
        "Your service {what} changed state {changes} times within {}. We held back the single notices; this is the summary.",
        flap.within
    );
    Message {
        subject: format!("{what}: {changes} changes within {}", flap.within),
        body: format!(
            "{short}\n\nThe latest change was {} at {}. If it goes on, you get one summary like this per {} at most.",
            event.type_name,
            crate::model::fmt_time(event.occurred_at),
            flap.within
        ),
        short,
        encrypt_to: None,
    }
}

/// Applies damping to decision `d` (one destination) of `event`, the
/// `changes`-th change of its family within the period.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    event: &Event,
    flap: &Flap,
    family: &[String],
    changes: usize,
    related: &[RelatedNotice],
    eff: &Effective,
    d: &mut Decision,
    now: DateTime<Utc>,
) -> Damped {
    let mut out = Damped::default();
    if changes < flap.threshold as usize || d.state != State::Pending {
        return out;
    }
    let words = format!("{changes} changes within {}", flap.within);
    let here = related
        .iter()
        .filter(|r| r.destination == d.destination && r.state == State::Pending);
    for r in here.clone().filter(|r| family.contains(&r.type_name)) {
        out.cancels.push(Cancel {
            id: r.id.clone(),
            reason: Reason::Flapping,
            detail: words.clone(),
        });
    }
    let message = summary_message(event, changes, flap);
    match here.clone().find(|r| r.type_name == SUMMARY_TYPE) {
        Some(pending) => out.update = Some((pending.id.clone(), message)),
        None => {
            let end = now + flap.within.chrono();
            let due = match window::defer(
                end,
                crate::model::Priority::Normal,
                eff,
                end + chrono::Duration::days(366),
            ) {
                window::Outcome::Deferred(at) => at,
                _ => end,
            };
            let mut s = d.clone();
            s.reason = Some(Reason::Flapping);
            s.detail = Some(format!(
                "summary of a flapping {}, after the period",
                event.key
            ));
            s.due_at = due;
            s.expires_at = None;
            s.summary = Some(message);
            out.summary = Some(s);
        }
    }
    d.state = State::Suppressed;
    d.reason = Some(Reason::Flapping);
    d.detail = Some(words);
    d.due_at = now;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{at, decision, event, pending};

    fn config() -> Config {
        Config::parse(
            "[types.\"line.down\"]\nflap = { threshold = 3, within = \"1h\" }\n[types.\"line.up\"]\ncancels = [\"line.down\"]\n",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn the_family_shares_one_rule() {
        let c = config();
        let (flap, family) = rule(&c, "line.up").unwrap();
        assert_eq!(flap.threshold, 3);
        assert_eq!(family, ["line.up", "line.down"]);
        assert_eq!(rule(&c, "line.down").unwrap().1, ["line.down", "line.up"]);
    }

    #[test]
    fn table() {
        let c = config();
        let (flap, family) = rule(&c, "line.down").unwrap();
        let now = at("2026-03-24T10:00:00Z");
        let ev = event("2026-03-24T10:00:00Z");
        let eff = Effective::default();
        let summary = {
            let mut s = pending("s1", SUMMARY_TYPE, "d1");
            s.state = State::Pending;
            s
        };
        // (name, changes, related, want state, want cancels, want new summary, want update)
        let cases = [
            (
                "below threshold",
                2,
                vec![pending("n1", "line.up", "d1")],
                State::Pending,
                0,
                false,
                false,
            ),
            (
                "threshold: suppress, cancel, summarise",
                3,
                vec![pending("n1", "line.up", "d1")],
                State::Suppressed,
                1,
                true,
                false,
            ),
            (
                "summary pending: count it",
                5,
                vec![summary.clone()],
                State::Suppressed,
                0,
                false,
                true,
            ),
            (
                "other destination's notices untouched",
                3,
                vec![pending("n1", "line.up", "d2")],
                State::Suppressed,
                0,
                true,
                false,
            ),
        ];
        for (name, changes, related, want, n_cancels, new_summary, update) in cases {
            let mut d = decision("d1", now);
            let out = apply(&ev, flap, &family, changes, &related, &eff, &mut d, now);
            assert_eq!(d.state, want, "{name}");
            assert_eq!(out.cancels.len(), n_cancels, "{name}");
            assert_eq!(out.summary.is_some(), new_summary, "{name}");
            assert_eq!(out.update.is_some(), update, "{name}");
            if let Some(s) = &out.summary {
                assert_eq!(s.due_at, at("2026-03-24T11:00:00Z"), "{name}");
                assert!(
                    s.summary
                        .as_ref()
                        .unwrap()
                        .short
                        .contains("3 times within 1h"),
                    "{name}"
                );
            }
        }
    }
}
