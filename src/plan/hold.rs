//! Hold and not_before (DESIGN.md §4.2): earliest = max(occurred_at + hold,
//! not_before), and never earlier than now.

use crate::model::{Event, Reason, Span};
use chrono::{DateTime, Utc};

/// The earliest delivery time of `event` given its type's `hold`, and why it
/// is later than `now`.
pub fn earliest(
    event: &Event,
    hold: Option<Span>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<Reason>) {
    let mut at = now;
    let mut reason = None;
    if let Some(hold) = hold {
        let held = event.occurred_at + hold.chrono();
        if held > at {
            at = held;
            reason = Some(Reason::Hold);
        }
    }
    if let Some(nb) = event.not_before
        && nb > at
    {
        at = nb;
        reason = Some(Reason::NotBefore);
    }
    (at, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{at, event};

    #[test]
    fn table() {
        let now = at("2026-03-22T03:00:30Z");
        let cases = [
            ("no hold: now", None, None, (now, None)),
            (
                "hold 3m",
                Some("3m"),
                None,
                (at("2026-03-22T03:03:00Z"), Some(Reason::Hold)),
            ),
            ("hold already over", Some("10s"), None, (now, None)),
            (
                "not_before later than hold",
                Some("3m"),
                Some("2026-03-22T04:00:00Z"),
                (at("2026-03-22T04:00:00Z"), Some(Reason::NotBefore)),
            ),
            (
                "hold later than not_before",
                Some("3m"),
                Some("2026-03-22T03:01:00Z"),
                (at("2026-03-22T03:03:00Z"), Some(Reason::Hold)),
            ),
        ];
        for (name, hold, nb, want) in cases {
            let mut ev = event("2026-03-22T03:00:00Z");
            ev.not_before = nb.map(at);
            let hold = hold.map(|h| h.parse().unwrap());
            assert_eq!(earliest(&ev, hold, now), want, "{name}");
        }
    }
}
