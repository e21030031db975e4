//! Delivery windows in OpenStreetMap `opening_hours` syntax, read in a time
//! zone. The crate evaluates local (naive) time; this file is the one place
//! that maps between UTC instants and local time, including DST gaps and
//! overlaps.
//!
//! Most windows repeat weekly (`Mo-Fr 08:00-20:00`). For those the week is
//! read from the crate once, at parse time, into a map of its 10,080
//! minutes, so planning answers "open now?" and "when next?" without
//! re-evaluating the rules; windows with dates, holidays or sun times are
//! evaluated by the crate every time.

use super::ParseError;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use opening_hours::OpeningHours;
use std::fmt;

/// A parsed window such as `Mo-Fr 08:00-20:00; Sa 10:00-16:00`.
#[derive(Clone)]
pub struct Window {
    source: String,
    hours: OpeningHours,
    /// For weekly windows: the week, minute by minute.
    week: Option<std::sync::Arc<Week>>,
}

const WEEK_MINUTES: usize = 7 * 24 * 60;

/// One week of a weekly window, from Monday 00:00 local time.
struct Week {
    open: Vec<bool>,
    /// Minutes of the week at which it opens, ascending.
    starts: Vec<usize>,
}

impl Week {
    fn minute(t: NaiveDateTime) -> usize {
        t.weekday().num_days_from_monday() as usize * 1440
            + t.hour() as usize * 60
            + t.minute() as usize
    }

    fn is_open(&self, t: NaiveDateTime) -> bool {
        self.open[Self::minute(t)]
    }

    /// The local time at which the window next opens after a closed `t`.
    fn next_opening(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let m = Self::minute(t);
        let next = self
            .starts
            .iter()
            .find(|s| **s > m)
            .copied()
            .or_else(|| self.starts.first().map(|s| s + WEEK_MINUTES))?;
        let floor = t.with_second(0)?.with_nanosecond(0)?;
        floor.checked_add_signed(Duration::minutes((next - m) as i64))
    }

    /// Reads the week from the crate's own evaluation of a reference week
    /// (the Monday 2024-01-01 onwards; the week before is evaluated too, so
    /// a range spilling over Sunday midnight is seen).
    fn read(hours: &OpeningHours) -> Option<Week> {
        let monday = NaiveDate::from_ymd_opt(2024, 1, 1)?.and_hms_opt(0, 0, 0)?;
        let mut open = vec![false; WEEK_MINUTES];
        for r in hours.iter_range(monday, monday + Duration::days(7)) {
            if r.kind != opening_hours::RuleKind::Open {
                continue;
            }
            let from = (r.range.start - monday)
                .num_minutes()
                .clamp(0, WEEK_MINUTES as i64) as usize;
            let to = (r.range.end - monday)
                .num_minutes()
                .clamp(0, WEEK_MINUTES as i64) as usize;
            open[from..to].iter_mut().for_each(|m| *m = true);
        }
        let starts = (0..WEEK_MINUTES)
            .filter(|&m| open[m] && !open[(m + WEEK_MINUTES - 1) % WEEK_MINUTES])
            .collect();
        Some(Week { open, starts })
    }
}

/// Whether every rule depends only on the weekday and the clock.
fn is_weekly(expr: &opening_hours_syntax::rules::OpeningHoursExpression) -> bool {
    use opening_hours_syntax::rules::day::WeekDayRange;
    use opening_hours_syntax::rules::time::Time;
    expr.rules.iter().all(|r| {
        let d = &r.day_selector;
        let days_only = d.year.is_empty()
            && d.monthday.is_empty()
            && d.week.is_empty()
            && d.weekday.iter().all(|w| match w {
                WeekDayRange::Fixed {
                    offset,
                    nth_from_start,
                    nth_from_end,
                    ..
                } => {
                    *offset == 0
                        && nth_from_start.iter().all(|b| *b)
                        && nth_from_end.iter().all(|b| *b)
                }
                WeekDayRange::Holiday { .. } => false,
            });
        let fixed_times = r.time_selector.spans.iter().all(|s| {
            !s.open_end
                && s.repeats.is_none()
                && matches!(s.range.start, Time::Fixed(_))
                && matches!(s.range.end, Time::Fixed(_))
        });
        days_only && fixed_times
    })
}

impl Window {
    /// Whether this window is read from a precomputed week.
    pub fn is_weekly(&self) -> bool {
        self.week.is_some()
    }

    fn open_local(&self, t: NaiveDateTime) -> bool {
        match &self.week {
            Some(w) => w.is_open(t),
            None => self.hours.is_open(t),
        }
    }

    fn next_change_local(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        match &self.week {
            Some(w) => w.next_opening(t),
            None => self.hours.next_change(t),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the window is open at instant `t`, read in zone `tz`.
    pub fn is_open(&self, t: DateTime<Utc>, tz: Tz) -> bool {
        self.open_local(t.with_timezone(&tz).naive_local())
    }

    /// The first instant at or after `t` at which the window is open, or
    /// `None` if it does not open before `horizon`.
    pub fn next_open(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        horizon: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut best = self.walk(t, tz, horizon);
        // At an autumn change local time runs back, so a stretch of the
        // window already passed in local terms comes round again: search
        // again from each such change before the answer found.
        for change in fall_backs(t, best.unwrap_or(horizon), tz) {
            if let Some(again) = self.walk(change, tz, horizon)
                && best.is_none_or(|b| again < b)
            {
                best = Some(again);
            }
        }
        best
    }

    /// Walks forward through local time from `t` to the first opening.
    fn walk(&self, t: DateTime<Utc>, tz: Tz, horizon: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut local = t.with_timezone(&tz).naive_local();
        // Walk forward by local changes, mapping each back to UTC. A local
        // time can repeat (autumn overlap: the earlier instant may lie
        // before `t`, and then `t` itself is the answer) or not exist at all
        // (spring gap: an opening there is no opening; look on from where
        // the clock really is). Whatever is returned is open by `is_open`.
        for _ in 0..1_000 {
            if self.open_local(local) {
                // In an overlap the local time happens twice: take the first
                // pass that is not before `t`.
                let at = match to_utc_passes(local, tz)? {
                    (first, _) if first >= t => first,
                    (_, second) if second >= t => second,
                    _ => t,
                };
                if at > horizon {
                    return None;
                }
                if self.is_open(at, tz) {
                    return Some(at);
                }
                // A skipped local time: go on from where the clock really is.
                let real = at.with_timezone(&tz).naive_local();
                local = if real > local {
                    real
                } else {
                    local + Duration::minutes(1)
                };
                continue;
            }
            let next = self.next_change_local(local)?;
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

/// The instants in (`from`, `to`] at which `tz`'s offset from UTC drops
/// (clocks go back), to the minute. Changes are months apart, so a daily
/// scan finds each; the cost grows with the distance, which is short for
/// any window that opens at least weekly.
fn fall_backs(from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz) -> Vec<DateTime<Utc>> {
    use chrono::Offset;
    let offset = |t: DateTime<Utc>| {
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    let mut out = Vec::new();
    if tz == chrono_tz::UTC {
        return out;
    }
    let mut a = from;
    let mut off_a = offset(a);
    while a < to {
        let b = (a + Duration::days(1)).min(to);
        let off_b = offset(b);
        if off_b < off_a {
            let (mut lo, mut hi) = (a, b);
            while hi - lo > Duration::minutes(1) {
                let mid = lo + (hi - lo) / 2;
                if offset(mid) < off_a {
                    hi = mid
                } else {
                    lo = mid
                }
            }
            out.push(
                hi.with_second(0)
                    .and_then(|t| t.with_nanosecond(0))
                    .unwrap_or(hi),
            );
        }
        (a, off_a) = (b, off_b);
    }
    out
}

/// Both instants of a local time (the same twice outside an overlap), or
/// the first valid minute after a spring-forward gap.
fn to_utc_passes(local: NaiveDateTime, tz: Tz) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some((t.with_timezone(&Utc), t.with_timezone(&Utc))),
        chrono::LocalResult::Ambiguous(a, b) => {
            Some((a.with_timezone(&Utc), b.with_timezone(&Utc)))
        }
        chrono::LocalResult::None => to_utc(local, tz).map(|t| (t, t)),
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
            .map(|hours| {
                let week = if is_weekly(&hours.get_expression()) {
                    Week::read(&hours).map(std::sync::Arc::new)
                } else {
                    None
                };
                Window {
                    source: s.to_string(),
                    hours,
                    week,
                }
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
    fn a_window_inside_the_skipped_hour_does_not_open_that_day() {
        // 01:00-02:00 does not exist in London on 29 March 2026 (clocks go
        // from 01:00 GMT to 02:00 BST): the next opening is a week later.
        let w: Window = "Su 01:00-02:00".parse().unwrap();
        let london: Tz = "Europe/London".parse().unwrap();
        let far = utc("2030-01-01T00:00:00Z");
        let got = w.next_open(utc("2026-03-29T00:59:00Z"), london, far);
        assert_eq!(got, Some(utc("2026-04-05T00:00:00Z")));
        assert!(w.is_open(got.unwrap(), london));
    }

    #[test]
    fn in_the_repeated_hour_the_second_pass_counts() {
        // Sydney, 5 April 2026: 03:00 AEDT becomes 02:00 AEST, so 02:00-03:00
        // happens twice. At 02:29 in the second pass, 02:30 is a minute away.
        let w: Window = "Su 02:30-24:00".parse().unwrap();
        let sydney: Tz = "Australia/Sydney".parse().unwrap();
        let far = utc("2030-01-01T00:00:00Z");
        assert_eq!(
            w.next_open(utc("2026-04-04T16:29:00Z"), sydney, far),
            Some(utc("2026-04-04T16:30:00Z"))
        );
    }

    #[test]
    fn when_local_time_runs_back_a_passed_window_comes_round_again() {
        // Lord Howe, 5 April 2026: 02:00 LHDT (UTC+11) becomes 01:30 LHST
        // (UTC+10:30). At 01:59 the Saturday window (to Sunday 01:45) has
        // closed, but at the change it is 01:30 again: open.
        let w: Window = "Sa 02:00-01:45".parse().unwrap();
        let lord_howe: Tz = "Australia/Lord_Howe".parse().unwrap();
        let far = utc("2030-01-01T00:00:00Z");
        assert_eq!(
            w.next_open(utc("2026-04-04T14:59:00Z"), lord_howe, far),
            Some(utc("2026-04-04T15:00:00Z"))
        );
    }

    #[test]
    fn dated_windows_are_evaluated_by_the_crate() {
        for s in [
            "Dec 25 off; Mo-Fr 08:00-20:00",
            "PH off; Mo-Su 09:00-17:00",
            "Mo-Fr sunrise-sunset",
            "Su[1] 10:00-12:00",
        ] {
            let w: Window = s.parse().unwrap();
            assert!(!w.is_weekly(), "{s}");
        }
        let w: Window = "Mo-Su 08:00-20:00; Dec 25 off".parse().unwrap();
        let tz: Tz = "UTC".parse().unwrap();
        let far = utc("2030-01-01T00:00:00Z");
        assert_eq!(
            w.next_open(utc("2026-12-24T21:00:00Z"), tz, far),
            Some(utc("2026-12-26T08:00:00Z"))
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
            fn the_precomputed_week_agrees_with_the_crate(
                source in window(),
                day in 0i64..800,
                minute in 0i64..1440,
            ) {
                let w: Window = source.parse().unwrap();
                prop_assert!(w.is_weekly(), "{} should be read as weekly", source);
                let t = NaiveDate::from_ymd_opt(2025, 6, 1).unwrap().and_hms_opt(0, 0, 0).unwrap()
                    + Duration::days(day) + Duration::minutes(minute);
                prop_assert_eq!(w.open_local(t), w.hours.is_open(t), "{} at {}", source, t);
                if !w.open_local(t) {
                    prop_assert_eq!(w.next_change_local(t), w.hours.next_change(t), "{} after {}", source, t);
                }
            }

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
