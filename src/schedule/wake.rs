//! Waking the scheduler's loop. Anything that makes work now wakes it at
//! once ([`Wake::notify_one`]); ingest says when its notices come due
//! ([`Wake::due`]) and wakes it only if it would not look by then anyway —
//! events held for later (`not_before`, quiet hours) cost the loop
//! nothing, where each used to send it claiming on every lane.
//!
//! While the loop works it cannot know when it will look next, so every
//! notice stored meanwhile rings; the bell also notes the earliest due
//! time it rang for, and the loop, about to sleep, lets a ring for what
//! comes due after that sleep pass ([`Wake::rang_before`]). Under a
//! steady stream of held events each round used to be rung by those
//! stored during it, and the loop went round and claimed on every lane
//! for ever (BENCHMARKS.md, stop 49).

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::Notify;

/// The loop's doorbell, and when it will look again by itself.
pub struct Wake {
    notify: Notify,
    /// While the loop sleeps: when it wakes by itself, in milliseconds
    /// since the Unix epoch. While it works: `i64::MAX` (anything due
    /// must ring, for the loop may have claimed before it was written).
    looks_at: AtomicI64,
    /// The earliest due time rung for since the loop last asked
    /// ([`Wake::rang_before`]): `i64::MIN` for a wake-up asked for now,
    /// `i64::MAX` for none.
    earliest: AtomicI64,
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            looks_at: AtomicI64::new(i64::MAX),
            earliest: AtomicI64::new(i64::MAX),
        }
    }
}

impl Wake {
    /// Wakes the loop now (or, if it is working, right after this round).
    pub fn notify_one(&self) {
        self.ring(i64::MIN);
    }

    /// A notice was stored that comes due at `at`: wakes the loop unless
    /// it looks by then anyway. Called after the notice is committed.
    pub fn due(&self, at: DateTime<Utc>) {
        let at = at.timestamp_millis();
        if at < self.looks_at.load(Ordering::SeqCst) {
            self.ring(at);
        }
    }

    /// Notes `at` before ringing, so that the loop, woken, finds it.
    fn ring(&self, at: i64) {
        self.earliest.fetch_min(at, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Whether anything rang, since the loop last asked, that it must
    /// look at before `until` (a wake-up asked for now always): the loop
    /// woken while it sleeps until `until` asks it, and sleeps on if not.
    /// A ring while it works, for a notice due after the sleep that
    /// followed, needs nothing until that sleep ends.
    pub(super) fn rang_before(&self, until: DateTime<Utc>) -> bool {
        self.earliest.swap(i64::MAX, Ordering::SeqCst) < until.timestamp_millis()
    }

    /// The loop is about to sleep until `at`, having read what is due
    /// before it. A notice committed after that read rings if due sooner.
    pub(super) fn sleeping_until(&self, at: DateTime<Utc>) {
        self.looks_at.store(at.timestamp_millis(), Ordering::SeqCst);
    }

    /// The loop is working: whatever comes due rings.
    pub(super) fn working(&self) {
        self.looks_at.store(i64::MAX, Ordering::SeqCst);
    }

    /// Resolves when the loop is woken.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Whether `wake` holds a wake-up (without waiting for one).
    fn rang(wake: &Wake) -> bool {
        let notified = wake.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let waker = std::task::Waker::noop();
        notified
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    use std::future::Future;

    #[test]
    fn rings_only_for_what_comes_due_before_the_loop_looks() {
        let cases = [
            // (loop state, due, rings)
            (None, "2099-01-01T00:00:00Z", true),
            (None, "2026-01-01T00:00:00Z", true),
            (Some("2026-03-22T10:00:01Z"), "2026-03-22T10:00:00Z", true),
            (
                Some("2026-03-22T10:00:01Z"),
                "2026-03-22T10:00:00.999Z",
                true,
            ),
            (Some("2026-03-22T10:00:01Z"), "2026-03-22T10:00:01Z", false),
            (Some("2026-03-22T10:00:01Z"), "2099-01-01T00:00:00Z", false),
        ];
        for (sleeping, due, rings) in cases {
            let wake = Wake::default();
            if let Some(until) = sleeping {
                wake.sleeping_until(t(until));
            }
            wake.due(t(due));
            assert_eq!(rang(&wake), rings, "sleeping until {sleeping:?}, due {due}");
        }
    }

    /// Rung while it worked, the loop about to sleep until `until` is
    /// woken only for what it must look at before then; what rang is
    /// taken once asked.
    #[test]
    fn a_ring_while_the_loop_worked_wakes_it_only_for_what_comes_due_before_its_sleep_ends() {
        let until = t("2026-03-22T10:00:01Z");
        let cases: [(&[&str], bool, bool); 7] = [
            // (due times stored while it worked, asked for now, wakes)
            (&[], false, false),
            (&["2099-01-01T00:00:00Z"], false, false),
            (&["2026-03-22T10:00:01Z"], false, false),
            (&["2026-03-22T10:00:00.999Z"], false, true),
            (
                &["2099-01-01T00:00:00Z", "2026-03-22T10:00:00Z"],
                false,
                true,
            ),
            (
                &["2026-03-22T10:00:00Z", "2099-01-01T00:00:00Z"],
                false,
                true,
            ),
            (&["2099-01-01T00:00:00Z"], true, true),
        ];
        for (stored, now, wakes) in cases {
            let wake = Wake::default();
            wake.working();
            for due in stored {
                wake.due(t(due));
            }
            if now {
                wake.notify_one();
            }
            assert_eq!(rang(&wake), !stored.is_empty() || now, "{stored:?}");
            wake.sleeping_until(until);
            assert_eq!(wake.rang_before(until), wakes, "{stored:?}, now {now}");
            // Taken: the next ask hears only what rings after it.
            assert!(!wake.rang_before(until));
        }
        // Asleep, a ring for what comes due sooner is heard; for later,
        // none rings.
        let wake = Wake::default();
        wake.sleeping_until(until);
        wake.due(t("2099-01-01T00:00:00Z"));
        assert!(!rang(&wake));
        wake.due(t("2026-03-22T10:00:00Z"));
        assert!(rang(&wake));
        assert!(wake.rang_before(until));
    }

    #[test]
    fn a_loop_back_at_work_hears_everything() {
        let wake = Wake::default();
        wake.sleeping_until(t("2026-03-22T10:00:01Z"));
        wake.working();
        wake.due(t("2099-01-01T00:00:00Z"));
        assert!(rang(&wake));
        // Asked for at once: always.
        let wake = Wake::default();
        wake.sleeping_until(t("2026-03-22T10:00:01Z"));
        wake.notify_one();
        assert!(rang(&wake));
    }
}
