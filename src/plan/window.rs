//! The delivery window (DESIGN.md §4.3): a non-urgent notice whose earliest
//! time falls outside the destination's window waits for it to open.

use super::Effective;
use crate::model::Priority;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Deliverable at the earliest time.
    Open,
    /// Deferred to when the window opens.
    Deferred(DateTime<Utc>),
    /// The window does not open before the notice would expire.
    Never,
}

/// Applies the destination's window to a notice that could go at `earliest`.
pub fn defer(
    earliest: DateTime<Utc>,
    priority: Priority,
    eff: &Effective,
    horizon: DateTime<Utc>,
) -> Outcome {
    let Some(window) = eff.window else {
        return Outcome::Open;
    };
    if priority == Priority::Urgent && eff.urgent_bypasses_window {
        return Outcome::Open;
    }
    match window.next_open(earliest, eff.timezone, horizon) {
        Some(at) if at == earliest => Outcome::Open,
        Some(at) => Outcome::Deferred(at),
        None => Outcome::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::at;

    fn eff(window: &str, zone: &str, bypass: Option<bool>) -> Effective<'static> {
        let window: &'static crate::model::Window = Box::leak(Box::new(window.parse().unwrap()));
        Effective {
            window: Some(window),
            urgent_bypasses_window: bypass.unwrap_or(true),
            timezone: zone.parse().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        let horizon = at("2027-01-01T00:00:00Z");
        let weekdays = eff("Mo-Fr 08:00-20:00", "Europe/London", None);
        let strict = eff("Mo-Fr 08:00-20:00", "Europe/London", Some(false));
        let night = eff("Mo-Fr 22:00-06:00", "America/New_York", None);
        let cases = [
            (
                "inside",
                &weekdays,
                "2026-03-23T09:00:00Z",
                Priority::Normal,
                Outcome::Open,
            ),
            (
                "sunday 3am waits for monday 8am",
                &weekdays,
                "2026-03-22T03:00:00Z",
                Priority::Normal,
                Outcome::Deferred(at("2026-03-23T08:00:00Z")),
            ),
            (
                "urgent bypasses",
                &weekdays,
                "2026-03-22T03:00:00Z",
                Priority::Urgent,
                Outcome::Open,
            ),
            (
                "urgent waits when told to",
                &strict,
                "2026-03-22T03:00:00Z",
                Priority::Urgent,
                Outcome::Deferred(at("2026-03-23T08:00:00Z")),
            ),
            (
                "midnight-spanning, New York (EDT)",
                &night,
                "2026-03-24T16:00:00Z",
                Priority::Normal,
                Outcome::Deferred(at("2026-03-25T02:00:00Z")),
            ),
            (
                "after horizon",
                &weekdays,
                "2026-12-31T23:00:00Z",
                Priority::Normal,
                Outcome::Never,
            ),
        ];
        for (name, e, t, p, want) in cases {
            assert_eq!(defer(at(t), p, e, horizon), want, "{name}");
        }
    }
}
