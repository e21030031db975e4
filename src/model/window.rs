//! Delivery windows in OpenStreetMap `opening_hours` syntax, read in a time
//! zone. The crate evaluates local (naive) time; this file is the one place
//! that maps between UTC instants and local time, including DST gaps and
//! overlaps.

use super::ParseError;
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use opening_hours::OpeningHours;
use std::fmt;

/// A parsed window such as `Mo-Fr 08:00-20:00; Sa 10:00-16:00`.
#[derive(Clone)]
pub struct Window {
    source: String,
    hours: OpeningHours,
}

impl Window {
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the window is open at instant `t`, read in zone `tz`.
    pub fn is_open(&self, t: DateTime<Utc>, tz: Tz) -> bool {
        self.hours.is_open(t.with_timezone(&tz).naive_local())
    }

    /// The first instant at or after `t` at which the window is open, or
    /// `None` if it does not open before `horizon`.
    pub fn next_open(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        horizon: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut local = t.with_timezone(&tz).naive_local();
        // A local time can repeat (autumn overlap): walk forward by local
        // changes, mapping each back to UTC, until an open one is found that
        // is not before `t`.
        for _ in 0..1_000 {
            if self.hours.is_open(local) {
                let at = to_utc(local, tz)?;
                if at >= t {
                    return Some(at);
                }
                // Open only in the earlier pass of a repeated hour: open now.
                return Some(t);
            }
            let next = self.hours.next_change(local)?;
            if next <= local {
                return None;
            }
            local = next;
            if to_utc(local, tz)? > horizon {
                return None;
            }
        }
        None
    }
}

/// Maps a local time to UTC: the earlier instant of an overlap, and the first
/// valid minute after a spring-forward gap.
fn to_utc(local: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    let mut candidate = local;
    for _ in 0..(24 * 60) {
        if let Some(t) = tz.from_local_datetime(&candidate).earliest() {
            return Some(t.with_timezone(&Utc));
        }
        candidate = candidate.checked_add_signed(Duration::minutes(1))?;
    }
    None
}

impl std::str::FromStr for Window {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(ParseError::new(
                "an empty window; leave it out for \"always\"",
            ));
        }
        s.parse::<OpeningHours>()
            .map(|hours| Window {
                source: s.to_string(),
                hours,
            })
            .map_err(|e| ParseError::new(format!("`{s}` is not in opening_hours syntax ({e})")))
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({:?})", self.source)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn defers_to_next_opening_in_zone() {
        let w: Window = "Mo-Fr 08:00-20:00".parse().unwrap();
        let london: Tz = "Europe/London".parse().unwrap();
        let far = utc("2030-01-01T00:00:00Z");
        // Sunday 22 March 2026, 03:00 UTC (GMT): next opening Monday 08:00 GMT.
        assert_eq!(
            w.next_open(utc("2026-03-22T03:00:00Z"), london, far),
            Some(utc("2026-03-23T08:00:00Z"))
        );
        // After the spring change (BST, UTC+1) 08:00 local is 07:00 UTC.
        assert_eq!(
            w.next_open(utc("2026-03-29T03:00:00Z"), london, far),
            Some(utc("2026-03-30T07:00:00Z"))
        );
        // Already open: now.
        assert_eq!(
            w.next_open(utc("2026-03-23T09:00:00Z"), london, far),
            Some(utc("2026-03-23T09:00:00Z"))
        );
    }

    #[test]
    fn midnight_spanning_window() {
        let w: Window = "Mo-Fr 22:00-06:00".parse().unwrap();
        let tz: Tz = "UTC".parse().unwrap();
        let far = utc("2030-01-01T00:00:00Z");
        // Tuesday 02:00 belongs to Monday's 22:00-06:00.
        assert!(w.is_open(utc("2026-03-24T02:00:00Z"), tz));
        assert!(!w.is_open(utc("2026-03-24T12:00:00Z"), tz));
        assert_eq!(
            w.next_open(utc("2026-03-24T12:00:00Z"), tz, far),
            Some(utc("2026-03-24T22:00:00Z"))
        );
    }

    #[test]
    fn horizon_and_bad_syntax() {
        let w: Window = "Mo 08:00-09:00".parse().unwrap();
        let tz: Tz = "UTC".parse().unwrap();
        assert_eq!(
            w.next_open(utc("2026-03-24T12:00:00Z"), tz, utc("2026-03-25T00:00:00Z")),
            None
        );
        assert!("Mo-Fr 25:00-26:00 blah".parse::<Window>().is_err());
        assert!("".parse::<Window>().is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Zones with DST in both hemispheres, a 30-minute DST shift
        /// (Lord Howe), a :45 offset (Chatham) and none at all.
        const ZONES: &[&str] = &[
            "Europe/London",
            "America/New_York",
            "Australia/Sydney",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "Asia/Kolkata",
            "UTC",
        ];

        /// 2026's DST changes in those zones: the property runs around them.
        const CHANGES: &[&str] = &[
            "2026-03-08T07:00:00Z", // New York spring
            "2026-03-29T01:00:00Z", // London spring
            "2026-04-05T02:00:00Z", // Sydney autumn
            "2026-04-04T15:00:00Z", // Lord Howe autumn
            "2026-10-04T02:00:00Z", // Sydney spring
            "2026-10-25T01:00:00Z", // London autumn
            "2026-11-01T06:00:00Z", // New York autumn
        ];

        fn days() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["Mo-Fr", "Sa", "Su", "Mo-Su", "Tu,Th", "Sa-Su", "Fr"])
        }

        fn clock() -> impl Strategy<Value = String> {
            (0u32..24, prop::sample::select(vec![0u32, 15, 30, 45]))
                .prop_map(|(h, m)| format!("{h:02}:{m:02}"))
        }

        fn window() -> impl Strategy<Value = String> {
            prop::collection::vec((days(), clock(), clock()), 1..3).prop_map(|rules| {
                rules
                    .into_iter()
                    .map(|(d, a, b)| {
                        if a == b {
                            format!("{d} {a}-24:00")
                        } else {
                            format!("{d} {a}-{b}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        }

        /// The first whole minute at or after `t` at which the window is
        /// open, found by trying every minute.
        fn brute_force(
            w: &Window,
            t: DateTime<Utc>,
            tz: Tz,
            limit: DateTime<Utc>,
        ) -> Option<DateTime<Utc>> {
            let mut m = t;
            while m <= limit {
                if w.is_open(m, tz) {
                    return Some(m);
                }
                m += Duration::minutes(1);
            }
            None
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            #[test]
            fn next_open_agrees_with_minute_by_minute_search(
                source in window(),
                zone in prop::sample::select(ZONES.to_vec()),
                change in prop::sample::select(CHANGES.to_vec()),
                offset_minutes in -4_320i64..4_320,
            ) {
                let w: Window = source.parse().unwrap();
                let tz: Tz = zone.parse().unwrap();
                let t = utc(change) + Duration::minutes(offset_minutes);
                let limit = t + Duration::days(8);
                let expected = brute_force(&w, t, tz, limit);
                let got = w.next_open(t, tz, limit + Duration::days(1)).filter(|g| *g <= limit);
                prop_assert_eq!(got, expected, "window {:?} in {} from {}", source, zone, t);
            }
        }
    }
}
