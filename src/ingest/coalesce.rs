//! Single events posted at the same time are stored together
//! (`store::coalesce`): what queued while the store was busy goes in as
//! one batch, in one transaction, as `POST /v1/events/batch` would store
//! it, and each request gets its own event's outcome. Under load this
//! saves each event its own transaction step, directory read and round
//! trips.
//!
//! Each event keeps the outcome it would have alone (the store plans a
//! batch's events in turn, each seeing those before it, as it would
//! concurrent requests in some order).

use crate::model::Event;
use crate::store::coalesce::Together;
use crate::store::{EventStore, IngestOutcome, Planner, Result};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Events stored with what the planner decides for each.
struct Events {
    store: Arc<dyn EventStore>,
    planner: Arc<dyn Planner>,
}

impl Together for Events {
    type Item = Event;
    type Out = IngestOutcome;

    fn write(&self, events: Vec<Event>) -> BoxFuture<'_, Result<Vec<IngestOutcome>>> {
        self.store.ingest(events, self.planner.clone())
    }
}

/// The handle requests store their single event through.
#[derive(Clone)]
pub struct Coalescer(crate::store::coalesce::Coalescer<Events>);

impl Coalescer {
    /// Starts the task that stores what requests queue; it ends once
    /// every handle is dropped and what was queued is stored.
    pub fn start(store: Arc<dyn EventStore>, planner: Arc<dyn Planner>) -> Coalescer {
        Coalescer(crate::store::coalesce::Coalescer::start(Events {
            store,
            planner,
        }))
    }

    /// Stores `event` (with others queued at the same time) and answers
    /// its outcome.
    pub async fn ingest(&self, event: Event) -> Result<IngestOutcome> {
        self.0.call(event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, Notification, SecurityLevel};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Decided, DirectoryStore, Store, StoreError};
    use chrono::{DateTime, Utc};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Semaphore;

    /// A real store that holds each batch until let go, notes the events
    /// of each batch it was given, and fails any batch holding a
    /// `poison` event (as a row that does not read back, which may be
    /// the event's own), or every batch while `down` (out of connections);
    /// with `falls`, failing the poison brings it down.
    struct Held {
        store: SqliteStore,
        gate: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
        down: AtomicBool,
        falls: AtomicBool,
    }

    #[async_trait::async_trait]
    impl EventStore for Held {
        async fn ingest(
            &self,
            events: Vec<Event>,
            planner: Arc<dyn Planner>,
        ) -> Result<Vec<IngestOutcome>> {
            let ids = events.iter().map(|e| e.id.clone()).collect();
            self.batches.lock().unwrap().push(ids);
            let _pass = self.gate.acquire().await.unwrap();
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Pool(
                    "timed out waiting for a connection".into(),
                ));
            }
            if events.iter().any(|e| e.id.starts_with("poison")) {
                if self.falls.load(Ordering::SeqCst) {
                    self.down.store(true, Ordering::SeqCst);
                }
                return Err(StoreError::Corrupt("poisoned".into()));
            }
            self.store.ingest(events, planner).await
        }
        async fn event(&self, id: &str) -> Result<Option<(Event, Vec<Notification>)>> {
            self.store.event(id).await
        }
        async fn cancel_event(&self, id: &str, now: DateTime<Utc>) -> Result<Option<usize>> {
            self.store.cancel_event(id, now).await
        }
        async fn history(&self, event: &str) -> Result<Vec<Decided>> {
            self.store.history(event).await
        }
    }

    fn event(id: &str, account: &str) -> Event {
        crate::store::conformance::event(id, account, id, Utc::now())
    }

    /// A coalescer over a `Held` store with account `A1`, and a way to
    /// post an event as a request would.
    struct Bench {
        held: Arc<Held>,
        coalescer: Coalescer,
    }

    impl Bench {
        async fn new() -> Bench {
            let config = Arc::new(
                crate::config::Config::parse("[types.\"line.down\"]\nshort = \"down\"\n", "test")
                    .unwrap(),
            );
            let store = SqliteStore::open(":memory:").unwrap();
            store.migrate().await.unwrap();
            store
                .put_account(&Account {
                    id: "A1".into(),
                    name: "A".into(),
                    timezone: None,
                    security_level: SecurityLevel::Standard,
                    paranoid: false,
                    defaults: Default::default(),
                    prefixes: Vec::new(),
                    postal_address: None,
                })
                .await
                .unwrap();
            let held = Arc::new(Held {
                store,
                gate: Semaphore::new(0),
                batches: Mutex::new(Vec::new()),
                down: AtomicBool::new(false),
                falls: AtomicBool::new(false),
            });
            let coalescer = Coalescer::start(held.clone(), crate::ingest::planner(config));
            Bench { held, coalescer }
        }

        fn post(&self, e: Event) -> tokio::task::JoinHandle<Result<IngestOutcome>> {
            let c = self.coalescer.clone();
            tokio::spawn(async move { c.ingest(e).await })
        }

        /// Posts `first`, which goes in alone at once and holds the store.
        async fn hold(&self) -> tokio::task::JoinHandle<Result<IngestOutcome>> {
            let first = self.post(event("first", "A1"));
            self.queued(1).await;
            first
        }

        /// The batches given to the store so far, and where the one that
        /// held the poison with others is.
        fn poisoned(&self) -> (Vec<Vec<String>>, usize) {
            let batches = self.held.batches.lock().unwrap().clone();
            let failed = batches
                .iter()
                .position(|b| b.len() > 1 && b.contains(&"poison".to_string()))
                .unwrap_or_else(|| panic!("no batch held the poison with others: {batches:?}"));
            (batches, failed)
        }

        /// Waits until `n` events were given to the store or wait in the
        /// queue.
        async fn queued(&self, n: usize) {
            let since = std::time::Instant::now();
            loop {
                let taken: usize = self.held.batches.lock().unwrap().iter().map(Vec::len).sum();
                let waiting = self.coalescer.0.waiting();
                if taken + waiting == n {
                    return;
                }
                assert!(
                    since.elapsed() < std::time::Duration::from_secs(10),
                    "{taken} taken and {waiting} waiting, not {n}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }

    /// Events posted while the store is busy go in together, and each
    /// request still gets its own event's outcome: accepted, a duplicate
    /// of the same id posted alongside, refused for an unknown account;
    /// a batch the store fails is stored again event by event, so that
    /// only the event that failed it fails.
    #[tokio::test]
    async fn events_posted_together_are_stored_together_each_with_its_own_outcome() {
        let bench = Bench::new().await;
        let (held, post) = (&bench.held, |e| bench.post(e));
        // The first goes in alone, at once, and holds the store.
        let first = bench.hold().await;
        assert_eq!(*held.batches.lock().unwrap(), [["first"]]);
        // Meanwhile: 30 events, one id twice, one unknown account, and
        // one the store fails.
        let mut posted = Vec::new();
        for i in 0..30 {
            posted.push((format!("e{i}"), post(event(&format!("e{i}"), "A1"))));
        }
        posted.push(("e7".into(), post(event("e7", "A1"))));
        posted.push(("nobody".into(), post(event("nobody", "A9"))));
        posted.push(("poison".into(), post(event("poison", "A1"))));
        bench.queued(34).await;
        held.gate.add_permits(1000);
        assert!(matches!(
            first.await.unwrap(),
            Ok(IngestOutcome::Accepted { ref id, .. }) if id == "first"
        ));
        let mut accepted = 0;
        for (id, answer) in posted {
            match (id.as_str(), answer.await.unwrap()) {
                ("poison", Err(StoreError::Corrupt(e))) => assert_eq!(e, "poisoned"),
                ("nobody", Ok(IngestOutcome::Rejected(r))) => {
                    assert_eq!(r.code, "unknown_account")
                }
                (want, Ok(IngestOutcome::Accepted { id, .. })) => {
                    assert_eq!(id, want);
                    accepted += 1;
                }
                ("e7", Ok(IngestOutcome::Duplicate { id, .. })) => assert_eq!(id, "e7"),
                (want, got) => panic!("{want}: {got:?}"),
            }
        }
        assert_eq!(accepted, 30, "each id once");
        // Batched: with both slots taken, what queued went in together;
        // the failed batch's events then went in one by one.
        let (batches, failed) = bench.poisoned();
        for id in &batches[failed] {
            assert!(
                batches[failed + 1..].contains(&vec![id.clone()]),
                "{id} again alone: {batches:?}"
            );
        }
        for id in ["first", "e0", "e29", "e7"] {
            assert!(held.store.event(id).await.unwrap().is_some(), "{id} stored");
        }
        assert!(held.store.event("poison").await.unwrap().is_none());
    }

    /// A store down as a whole fails every request of a batch at once:
    /// none is tried again alone to meet the same failure in turn.
    #[tokio::test]
    async fn a_store_down_answers_each_request_of_a_batch_at_once() {
        let bench = Bench::new().await;
        bench.held.down.store(true, Ordering::SeqCst);
        let first = bench.hold().await;
        let posted: Vec<_> = (0..20)
            .map(|i| bench.post(event(&format!("e{i}"), "A1")))
            .collect();
        bench.queued(21).await;
        bench.held.gate.add_permits(1000);
        for answer in std::iter::once(first).chain(posted) {
            match answer.await.unwrap() {
                Err(StoreError::Pool(e)) => assert_eq!(e, "timed out waiting for a connection"),
                other => panic!("{other:?}"),
            }
        }
        let batches = bench.held.batches.lock().unwrap().clone();
        assert_eq!(
            batches.iter().map(Vec::len).sum::<usize>(),
            21,
            "each given once: {batches:?}"
        );
        assert!(
            batches.len() < 21,
            "the 20 queued went in together: {batches:?}"
        );
        // Up again: the next request is stored.
        bench.held.down.store(false, Ordering::SeqCst);
        assert!(matches!(
            bench.post(event("later", "A1")).await.unwrap(),
            Ok(IngestOutcome::Accepted { .. })
        ));
    }

    /// A batch failed for what may be one event's own is stored again
    /// event by event; should the store then fail as a whole, the rest of
    /// that batch are told so at once, not given to it one after another.
    #[tokio::test]
    async fn stored_again_one_by_one_the_rest_are_told_once_the_store_is_down() {
        let bench = Bench::new().await;
        bench.held.falls.store(true, Ordering::SeqCst);
        let first = bench.hold().await;
        let mut posted: Vec<_> = (0..10)
            .map(|i| (format!("e{i}"), bench.post(event(&format!("e{i}"), "A1"))))
            .collect();
        posted.push(("poison".into(), bench.post(event("poison", "A1"))));
        bench.queued(12).await;
        bench.held.gate.add_permits(1000);
        assert!(first.await.unwrap().is_ok());
        // Every answer first: the batches are read once all were given.
        let mut answers = Vec::new();
        for (id, answer) in posted {
            answers.push((id, answer.await.unwrap()));
        }
        let (batches, failed) = bench.poisoned();
        // One of them was given to the store again, met it down, and the
        // rest were told without being given to it.
        assert_eq!(batches[failed + 1..].len(), 1, "{batches:?}");
        assert_eq!(batches[failed + 1].len(), 1, "{batches:?}");
        for (id, answer) in answers {
            if batches[failed].contains(&id) {
                assert!(
                    matches!(answer, Err(StoreError::Pool(_))),
                    "{id}: {answer:?}"
                );
            }
        }
    }
}
