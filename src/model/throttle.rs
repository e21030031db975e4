//! How often something may happen per key within a period — a fixed
//! window counter, as a pure rule over one stored row. Every limit on
//! what an outsider can make kci do (refusal mails per address, key
//! submissions per address and per source, wrong verification codes per
//! token) is this rule; the stores only keep the row.

use super::Cap;
use chrono::{DateTime, Duration, Utc};

/// One key's window, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub count: u32,
}

/// What counting one more occurrence at `now` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Allowed; the row to store.
    Allowed(Window),
    /// Over the cap; nothing to store. Allowed again from `retry_at`.
    Refused { retry_at: DateTime<Utc> },
}

/// Counts one occurrence against `cap`, given the stored window (`None`:
/// nothing counted yet). A window older than the cap's period starts anew.
pub fn count(stored: Option<Window>, cap: Cap, now: DateTime<Utc>) -> Counted {
    let per = Duration::from_std(cap.per.0).unwrap_or(Duration::days(1));
    match stored {
        Some(w) if now < w.start + per => {
            if w.count >= cap.count {
                Counted::Refused {
                    retry_at: w.start + per,
                }
            } else {
                Counted::Allowed(Window {
                    start: w.start,
                    count: w.count + 1,
                })
            }
        }
        _ => Counted::Allowed(Window {
            start: now,
            count: 1,
        }),
    }
}

/// Whether one more occurrence at `now` would be allowed, without
/// counting it (`Err` with when it would be).
pub fn peek(stored: Option<Window>, cap: Cap, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
    match count(stored, cap, now) {
        Counted::Allowed(_) => Ok(()),
        Counted::Refused { retry_at } => Err(retry_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        format!("2026-12-02T{s}Z").parse().unwrap()
    }

    #[test]
    fn counts_within_the_window_and_starts_anew_after_it() {
        let cap: Cap = "2/1h".parse().unwrap();
        let w = |start: &str, count| {
            Some(Window {
                start: at(start),
                count,
            })
        };
        let cases = [
            // (stored, now, expected)
            (
                None,
                "10:00:00",
                Counted::Allowed(Window {
                    start: at("10:00:00"),
                    count: 1,
                }),
            ),
            (
                w("10:00:00", 1),
                "10:30:00",
                Counted::Allowed(Window {
                    start: at("10:00:00"),
                    count: 2,
                }),
            ),
            (
                w("10:00:00", 2),
                "10:59:59",
                Counted::Refused {
                    retry_at: at("11:00:00"),
                },
            ),
            (
                w("10:00:00", 2),
                "11:00:00",
                Counted::Allowed(Window {
                    start: at("11:00:00"),
                    count: 1,
                }),
            ),
            (
                w("10:00:00", 9),
                "10:00:01",
                Counted::Refused {
                    retry_at: at("11:00:00"),
                },
            ),
        ];
        for (stored, now, want) in cases {
            assert_eq!(count(stored, cap, at(now)), want, "{stored:?} at {now}");
        }
        assert_eq!(
            peek(w("10:00:00", 2), cap, at("10:10:00")),
            Err(at("11:00:00"))
        );
        assert_eq!(peek(w("10:00:00", 1), cap, at("10:10:00")), Ok(()));
    }
}
