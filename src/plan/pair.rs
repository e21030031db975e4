//! Pair-and-cancel (DESIGN.md §4.5): an event whose type `cancels` type T
//! ends, per destination, the pending notices of T with the same key — and
//! is itself cancelled there, so a 3am drop and a reconnect a minute later
//! reach nobody. Where the latest T notice already went out, the new notice
//! is delivered normally: the customer who heard of the drop hears of the
//! return. Where it never went out (expired, suppressed, failed), the new
//! one is cancelled too: "your line is back" about a drop nobody was told
//! of is noise. With no T notice at a destination at all, nothing pairs.

use super::{Cancel, Decision, RelatedNotice};
use crate::model::Event;
use crate::model::{Reason, State};
use chrono::{DateTime, Utc};

/// Applies pairing to the decisions of an event whose type cancels
/// `partners`; returns the pending notices to cancel. With `summary`
/// (`on_pair = "summary"`) the new notice is not cancelled but tells of the
/// pair (rendered from the type's `pair_summary`).
pub fn apply(
    event: &Event,
    partners: &[String],
    summary: bool,
    pending: &[RelatedNotice],
    decisions: &mut [Decision],
    now: DateTime<Utc>,
) -> Vec<Cancel> {
    let mut cancels = Vec::new();
    if partners.is_empty() {
        return cancels;
    }
    for d in decisions.iter_mut() {
        let here: Vec<&RelatedNotice> = pending
            .iter()
            .filter(|p| {
                p.destination == d.destination
                    && partners.contains(&p.type_name)
                    // A partner that happened after this event is a later
                    // episode, not this one's first half.
                    && p.occurred_at <= event.occurred_at
            })
            .collect();
        let waiting: Vec<&&RelatedNotice> =
            here.iter().filter(|p| p.state == State::Pending).collect();
        let told = here
            .iter()
            .any(|p| matches!(p.state, State::Sent | State::Sending));
        cancels.extend(waiting.iter().map(|p| Cancel {
            id: p.id.clone(),
            reason: Reason::Paired,
            detail: format!("paired with {}", event.id),
        }));
        let pairs = !waiting.is_empty() || (!here.is_empty() && !told);
        if pairs && !d.state.is_final() {
            let partner = waiting.first().map(|p| **p).unwrap_or(here[0]);
            if summary {
                d.paired_from = Some(partner.occurred_at);
                d.detail = Some(format!("tells of the pair with {}", partner.event));
                continue;
            }
            d.state = State::Cancelled;
            d.reason = Some(Reason::Paired);
            d.detail = Some(match waiting.first() {
                Some(p) => format!("paired with {}", p.event),
                None => format!("paired with {}, which was never sent here", here[0].event),
            });
            d.due_at = now;
        }
    }
    cancels
}

/// The first half of a pair arriving after the second (network jitter
/// inside the hold): where a notice of a type that cancels this one is
/// about something that happened at or after this event, the pair is
/// complete — a pending one is cancelled with this one; one already sent
/// still makes this one pointless ("it went down" after "it is back").
/// Where the later half's type summarises pairs (`summarising`) and its
/// notice is still pending, that notice is kept and now tells of the pair
/// (returned with this event's `occurred_at`), and this one is cancelled.
pub fn apply_late(
    event: &Event,
    cancelled_by: &[String],
    summarising: &[String],
    related: &[RelatedNotice],
    decisions: &mut [Decision],
    now: DateTime<Utc>,
) -> (Vec<Cancel>, Vec<(String, DateTime<Utc>)>) {
    let mut cancels = Vec::new();
    let mut paired = Vec::new();
    if cancelled_by.is_empty() {
        return (cancels, paired);
    }
    for d in decisions.iter_mut() {
        let later: Vec<&RelatedNotice> = related
            .iter()
            .filter(|p| {
                p.destination == d.destination
                    && cancelled_by.contains(&p.type_name)
                    && p.occurred_at >= event.occurred_at
                    && matches!(p.state, State::Pending | State::Sending | State::Sent)
            })
            .collect();
        let Some(first) = later.first() else { continue };
        if first.state == State::Pending && summarising.contains(&first.type_name) {
            paired.push((first.id.clone(), event.occurred_at));
            if !d.state.is_final() {
                d.state = State::Cancelled;
                d.reason = Some(Reason::Paired);
                d.detail = Some(format!("told in the pair summary of {}", first.event));
                d.due_at = now;
            }
            continue;
        }
        cancels.extend(
            later
                .iter()
                .filter(|p| p.state == State::Pending)
                .map(|p| Cancel {
                    id: p.id.clone(),
                    reason: Reason::Paired,
                    detail: format!("paired with {}, which arrived later", event.id),
                }),
        );
        if !d.state.is_final() {
            d.state = State::Cancelled;
            d.reason = Some(Reason::Paired);
            d.detail = Some(format!("paired with {}, which arrived first", first.event));
            d.due_at = now;
        }
    }
    (cancels, paired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{at, decision, pending};

    fn with_state(mut n: RelatedNotice, state: State) -> RelatedNotice {
        n.state = state;
        n
    }

    fn sent(id: &str, t: &str, d: &str) -> RelatedNotice {
        with_state(pending(id, t, d), State::Sent)
    }

    #[test]
    fn table() {
        let partners = vec!["line.down".to_string()];
        let now = at("2026-03-22T03:01:00Z");
        // (name, related notices, new decision's state, want its state, want cancelled ids)
        type Case<'a> = (&'a str, Vec<RelatedNotice>, State, State, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "down pending here: both go",
                vec![pending("n1", "line.down", "d1")],
                State::Pending,
                State::Cancelled,
                vec!["n1"],
            ),
            (
                "down already sent: up is delivered",
                vec![],
                State::Pending,
                State::Pending,
                vec![],
            ),
            (
                "down pending elsewhere only",
                vec![pending("n1", "line.down", "d2")],
                State::Pending,
                State::Pending,
                vec![],
            ),
            (
                "unrelated type pending",
                vec![pending("n1", "order.shipped", "d1")],
                State::Pending,
                State::Pending,
                vec![],
            ),
            (
                "several downs pending (flapping): all go",
                vec![
                    pending("n1", "line.down", "d1"),
                    pending("n2", "line.down", "d1"),
                ],
                State::Pending,
                State::Cancelled,
                vec!["n1", "n2"],
            ),
            (
                "down sent here: up is delivered",
                vec![sent("n1", "line.down", "d1")],
                State::Pending,
                State::Pending,
                vec![],
            ),
            (
                "down expired unsent here: up is pointless",
                vec![with_state(pending("n1", "line.down", "d1"), State::Expired)],
                State::Pending,
                State::Cancelled,
                vec![],
            ),
            (
                "up suppressed here still ends the down",
                vec![pending("n1", "line.down", "d1")],
                State::Suppressed,
                State::Suppressed,
                vec!["n1"],
            ),
        ];
        for (name, pend, state, want, want_cancels) in cases {
            let mut ds = vec![decision("d1", now)];
            ds[0].state = state;
            let mut up = crate::plan::testkit::event("2026-03-22T03:01:00Z");
            up.id = "up".into();
            let cancels = apply(&up, &partners, false, &pend, &mut ds, now);
            assert_eq!(ds[0].state, want, "{name}");
            if want == State::Cancelled {
                assert_eq!(ds[0].reason, Some(Reason::Paired), "{name}");
            }
            let ids: Vec<&str> = cancels.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids, want_cancels, "{name}");
            assert!(
                cancels
                    .iter()
                    .all(|c| c.reason == Reason::Paired && c.detail == "paired with up"),
                "{name}"
            );
        }
    }

    #[test]
    fn a_late_first_half_pairs_too() {
        let now = at("2026-03-22T03:02:00Z");
        let by = vec!["line.up".to_string()];
        let mut down = crate::plan::testkit::event("2026-03-22T03:00:00Z");
        down.id = "down".into();
        let up_at = |t: &str, state: State| {
            let mut n = with_state(pending("u1", "line.up", "d1"), state);
            n.occurred_at = at(t);
            n
        };
        let cases = [
            (
                "up pending, happened after: both go",
                up_at("2026-03-22T03:01:00Z", State::Pending),
                State::Cancelled,
                1,
            ),
            (
                "up sent, happened after: the down is pointless",
                up_at("2026-03-22T03:01:00Z", State::Sent),
                State::Cancelled,
                0,
            ),
            (
                "up happened before: a new episode",
                up_at("2026-03-22T02:59:00Z", State::Pending),
                State::Pending,
                0,
            ),
            (
                "up failed: nothing pairs",
                up_at("2026-03-22T03:01:00Z", State::Failed),
                State::Pending,
                0,
            ),
        ];
        for (name, related, want, n_cancels) in cases {
            let mut ds = vec![decision("d1", now)];
            let (cancels, _) = apply_late(&down, &by, &[], &[related], &mut ds, now);
            assert_eq!(ds[0].state, want, "{name}");
            assert_eq!(cancels.len(), n_cancels, "{name}");
        }
    }

    #[test]
    fn a_partner_from_a_later_episode_does_not_pair() {
        let now = at("2026-03-22T03:10:00Z");
        let mut up = crate::plan::testkit::event("2026-03-22T03:01:00Z");
        up.id = "late-up".into();
        let mut later_down = pending("n9", "line.down", "d1");
        later_down.occurred_at = at("2026-03-22T03:05:00Z");
        let mut ds = vec![decision("d1", now)];
        let cancels = apply(
            &up,
            &["line.down".to_string()],
            false,
            &[later_down],
            &mut ds,
            now,
        );
        assert!(cancels.is_empty());
        assert_eq!(ds[0].state, State::Pending);
    }

    #[test]
    fn with_a_summary_the_new_notice_tells_of_the_pair() {
        let now = at("2026-03-22T03:01:00Z");
        let mut up = crate::plan::testkit::event("2026-03-22T03:01:00Z");
        up.id = "up".into();
        let down = pending("n1", "line.down", "d1"); // occurred 03:00
        let mut ds = vec![decision("d1", now)];
        let cancels = apply(&up, &["line.down".to_string()], true, &[down], &mut ds, now);
        assert_eq!(cancels.len(), 1, "the down goes");
        assert_eq!(ds[0].state, State::Pending, "the up stays, as the summary");
        assert_eq!(ds[0].paired_from, Some(at("2026-03-22T03:00:00Z")));
    }

    #[test]
    fn with_a_summary_a_late_first_half_joins_the_pending_second() {
        let now = at("2026-03-22T03:02:00Z");
        let mut down = crate::plan::testkit::event("2026-03-22T03:00:00Z");
        down.id = "down".into();
        let mut up = pending("u1", "line.up", "d1");
        up.occurred_at = at("2026-03-22T03:01:00Z");
        let by = vec!["line.up".to_string()];
        let mut ds = vec![decision("d1", now)];
        let (cancels, paired) = apply_late(&down, &by, &by, &[up], &mut ds, now);
        assert!(cancels.is_empty(), "the up stays");
        assert_eq!(paired, vec![("u1".to_string(), at("2026-03-22T03:00:00Z"))]);
        assert_eq!(
            (ds[0].state, ds[0].reason),
            (State::Cancelled, Some(Reason::Paired))
        );
    }
}
