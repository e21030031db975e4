//! The store-wide count of notifications by state, as `/metrics` reports
//! it (`kci_notifications`). Counting reads every notification the store
//! holds, and the final states only grow: on a store of ten million rows
//! one count took 21 s (BENCHMARKS.md, stop 24), longer than Prometheus
//! waits for a scrape. So a node counts again only once the last count is
//! older than [`DUTY`] times what it took (the database spends at most a
//! tenth of its time on it), a scrape waits for a new count at most
//! [`WAIT`] and otherwise answers with the last one, and one count runs at
//! a time. On a small store a count takes a millisecond or two, and every
//! scrape gets a fresh one.

use crate::model::State;
use crate::store::{Result, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The last count is used again until it is this many times as old as it
/// took to make.
pub const DUTY: u32 = 10;
/// How long a scrape waits for a count under way before it answers with
/// the last one.
pub const WAIT: Duration = Duration::from_secs(2);

/// One count: when it was done, how long it took, what it found.
#[derive(Debug, Clone)]
struct Reading {
    done: Instant,
    took: Duration,
    counts: Vec<(State, i64)>,
}

/// Whether a count done at `done` that took `took` should be made again at
/// `now`.
pub fn count_again(last: Option<(Instant, Duration)>, now: Instant) -> bool {
    match last {
        None => true,
        Some((done, took)) => now.saturating_duration_since(done) >= took * DUTY,
    }
}

/// The node's last count, and whether one is under way.
pub struct StoreCounts {
    last: watch::Sender<Option<Reading>>,
    counting: AtomicBool,
}

impl Default for StoreCounts {
    fn default() -> Self {
        StoreCounts {
            last: watch::Sender::new(None),
            counting: AtomicBool::new(false),
        }
    }
}

impl StoreCounts {
    /// The count by state to report now (see the module's doc).
    pub async fn read(self: &Arc<Self>, store: &Arc<dyn Store>) -> Result<Vec<(State, i64)>> {
        let last = self.last.borrow().clone();
        let Some(last) = last else {
            // Nothing to answer with yet: this scrape waits for the count.
            let reading = count(store.as_ref()).await?;
            let counts = reading.counts.clone();
            self.last.send_replace(Some(reading));
            return Ok(counts);
        };
        if !count_again(Some((last.done, last.took)), Instant::now()) {
            return Ok(last.counts);
        }
        let mut changed = self.last.subscribe();
        changed.mark_unchanged();
        if !self.counting.swap(true, Ordering::AcqRel) {
            let (this, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                match count(store.as_ref()).await {
                    Ok(reading) => {
                        this.last.send_replace(Some(reading));
                    }
                    Err(e) => tracing::warn!(error = %e, "counting notifications by state"),
                }
                this.counting.store(false, Ordering::Release);
            });
        }
        match tokio::time::timeout(WAIT, changed.changed()).await {
            Ok(Ok(())) => Ok(changed
                .borrow()
                .as_ref()
                .map_or(last.counts, |r| r.counts.clone())),
            _ => Ok(last.counts),
        }
    }
}

async fn count(store: &dyn Store) -> Result<Reading> {
    let started = Instant::now();
    let counts = store.count_by_state().await?;
    Ok(Reading {
        done: Instant::now(),
        took: started.elapsed(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_made_again_once_it_is_ten_times_as_old_as_it_took() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let cases = [
            (None, t, true),
            // A small store: 2 ms to count, fresh after 20 ms.
            (Some((t, ms(2))), t + ms(19), false),
            (Some((t, ms(2))), t + ms(20), true),
            // Ten million rows: 21 s to count, again after 210 s.
            (Some((t, ms(21_000))), t + ms(209_000), false),
            (Some((t, ms(21_000))), t + ms(210_000), true),
            // A clock read before the count ended.
            (Some((t + ms(5), ms(1))), t, false),
        ];
        for (i, (last, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(count_again(last, now), want, "case {i}");
        }
    }

    #[tokio::test]
    async fn scrapes_at_once_each_get_the_count_of_a_small_store() {
        use crate::store::prelude::*;
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(":memory:").unwrap());
        store.migrate().await.unwrap();
        let counts = Arc::new(StoreCounts::default());
        assert_eq!(counts.read(&store).await.unwrap(), Vec::new());
        // Many scrapes at once: each answers, from a count made for it or
        // the one before.
        let answers = futures_util::future::join_all((0..8).map(|_| counts.read(&store))).await;
        assert!(answers.iter().all(|a| a.as_ref().unwrap().is_empty()));
    }
}
