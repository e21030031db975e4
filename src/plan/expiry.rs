//! Expiry (DESIGN.md §4.4): a notice whose delivery time is after its expiry
//! is `expired` and never sent.

use crate::model::Event;
use chrono::{DateTime, Duration, Utc};

/// How far ahead a deferral may look: the expiry, or a year for notices that
/// never expire (a window that opens less than once a year is a mistake).
pub fn horizon(event: &Event, now: DateTime<Utc>) -> DateTime<Utc> {
    event.expires_at.unwrap_or(now + Duration::days(366))
}

/// Whether delivering at `at` would be too late.
pub fn is_expired(at: DateTime<Utc>, expires_at: Option<DateTime<Utc>>) -> bool {
    expires_at.is_some_and(|exp| at > exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::at;

    #[test]
    fn table() {
        let t = at("2026-03-22T08:00:00Z");
        assert!(!is_expired(t, None));
        assert!(!is_expired(t, Some(t)));
        assert!(is_expired(t, Some(at("2026-03-22T07:59:59Z"))));
        assert!(!is_expired(t, Some(at("2026-03-22T08:00:01Z"))));
    }
}
