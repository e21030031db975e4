//! Supersede (DESIGN.md §4.6): for a type with `supersedes = true`, a new
//! event of that type and key replaces, per destination, the older notice
//! still pending — an appointment rebooked twice overnight is told once,
//! with the latest time.

use super::{Cancel, Decision, RelatedNotice};
use crate::model::{Reason, State};

/// Returns the pending notices of `type_name` that the new event's
/// decisions replace (same destination, same key — the store only passes
/// notices of the event's key).
pub fn apply(
    event: &str,
    type_name: &str,
    pending: &[RelatedNotice],
    decisions: &[Decision],
) -> Vec<Cancel> {
    pending
        .iter()
        .filter(|p| {
            p.state == State::Pending
                && p.type_name == type_name
                && decisions.iter().any(|d| d.destination == p.destination)
        })
        .map(|p| Cancel {
            id: p.id.clone(),
            reason: Reason::Superseded,
            detail: format!("superseded by {event}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{at, decision, pending};

    #[test]
    fn table() {
        let now = at("2026-03-22T03:00:00Z");
        let ds = vec![decision("d1", now), decision("d2", now)];
        let cases: Vec<(&str, Vec<RelatedNotice>, Vec<&str>)> = vec![
            ("nothing pending", vec![], vec![]),
            (
                "older booking pending at both",
                vec![
                    pending("a", "appointment.booked", "d1"),
                    pending("b", "appointment.booked", "d2"),
                ],
                vec!["a", "b"],
            ),
            (
                "other type untouched",
                vec![pending("a", "appointment.reminder", "d1")],
                vec![],
            ),
            (
                "a destination no longer planned keeps its notice",
                vec![pending("a", "appointment.booked", "d9")],
                vec![],
            ),
        ];
        for (name, pend, want) in cases {
            let got = apply("new", "appointment.booked", &pend, &ds);
            let ids: Vec<&str> = got.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids, want, "{name}");
        }
    }
}
