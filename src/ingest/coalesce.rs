//! Single events posted at the same time are stored together: what queued
//! while the store was busy goes in as one batch, in one transaction, as
//! `POST /v1/events/batch` would store it, and each request gets its own
//! event's outcome. A lone event goes in at once (nothing waits for
//! company), so this costs no latency; under load it saves each event its
//! own transaction step, directory read and round trips.
//!
//! Each event keeps the outcome it would have alone (the store plans a
//! batch's events in turn, each seeing those before it, as it would
//! concurrent requests in some order). If the store fails a batch of
//! several, nothing of it was written, and each event is stored again on
//! its own, so that whatever made it fail fails only its own request.

use crate::model::Event;
use crate::store::{EventStore, IngestOutcome, Planner, Result, StoreError};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most events stored as one batch.
const MAX_EVENTS: usize = 256;
/// Events queued for the store before a request waits for room.
const QUEUE: usize = 4096;
/// Batches in the store at once: while one commits, the next gathers and
/// queues behind it, so the store never waits for the next batch.
const IN_FLIGHT: usize = 2;

type Answer = oneshot::Sender<Result<IngestOutcome>>;

/// The handle requests store their single event through.
#[derive(Clone)]
pub struct Coalescer {
    queue: mpsc::Sender<(Event, Answer)>,
}

impl Coalescer {
    /// Starts the task that stores what requests queue; it ends once
    /// every handle is dropped and what was queued is stored.
    pub fn start(store: Arc<dyn EventStore>, planner: Arc<dyn Planner>) -> Coalescer {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(gather(rx, store, planner));
        Coalescer { queue }
    }

    /// Stores `event` (with others queued at the same time) and answers
    /// its outcome.
    pub async fn ingest(&self, event: Event) -> Result<IngestOutcome> {
        let stopped = || StoreError::Unavailable("the ingest queue stopped".into());
        let (tx, rx) = oneshot::channel();
        self.queue.send((event, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn gather(
    mut rx: mpsc::Receiver<(Event, Answer)>,
    store: Arc<dyn EventStore>,
    planner: Arc<dyn Planner>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while every batch in flight is in the store, what
        // arrives queues up and goes in together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, MAX_EVENTS).await == 0 {
            return;
        }
        let (store, planner) = (store.clone(), planner.clone());
        tokio::spawn(async move {
            store_batch(store.as_ref(), &planner, batch).await;
            drop(slot);
        });
    }
}

/// Stores `batch` and answers each of its requests.
async fn store_batch(
    store: &dyn EventStore,
    planner: &Arc<dyn Planner>,
    batch: Vec<(Event, Answer)>,
) {
    let (events, answers): (Vec<Event>, Vec<Answer>) = batch.into_iter().unzip();
    // Kept for storing each on its own, should the batch fail.
    let spare = (events.len() > 1).then(|| events.clone());
    let n = events.len();
    match (store.ingest(events, planner.clone()).await, spare) {
        (Ok(outcomes), _) if outcomes.len() == n => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(Ok(outcome));
            }
        }
        (Ok(outcomes), _) => {
            let wrong = || {
                StoreError::Unavailable(format!(
                    "the store answered {} outcomes for {n} events",
                    outcomes.len()
                ))
            };
            tracing::error!("{}", wrong());
            for answer in answers {
                let _ = answer.send(Err(wrong()));
            }
        }
        // Nothing of the batch was written: each on its own, so that only
        // what failed it fails.
        (Err(_), Some(events)) => {
            for (event, answer) in events.into_iter().zip(answers) {
                let outcome = store
                    .ingest(vec![event], planner.clone())
                    .await
                    .and_then(|mut o| {
                        o.pop().ok_or_else(|| {
                            StoreError::Unavailable("the store answered no outcome".into())
                        })
                    });
                let _ = answer.send(outcome);
            }
        }
        (Err(e), None) => {
            if let Some(answer) = answers.into_iter().next() {
                let _ = answer.send(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, Notification, SecurityLevel};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Decided, DirectoryStore, Store};
    use chrono::{DateTime, Utc};
    use std::sync::Mutex;

    /// A real store that holds each batch until let go, notes the events
    /// of each batch it was given, and fails any batch holding a
    /// `poison` event (as a store error, not a refusal).
    struct Held {
        store: SqliteStore,
        gate: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
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
            if events.iter().any(|e| e.id.starts_with("poison")) {
                return Err(StoreError::Unavailable("poisoned".into()));
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

    /// Events posted while the store is busy go in together, and each
    /// request still gets its own event's outcome: accepted, a duplicate
    /// of the same id posted alongside, refused for an unknown account;
    /// a batch the store fails is stored again event by event, so that
    /// only the event that failed it fails.
    #[tokio::test]
    async fn events_posted_together_are_stored_together_each_with_its_own_outcome() {
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
        });
        let coalescer = Coalescer::start(held.clone(), crate::ingest::planner(config));
        let post = |e: Event| {
            let c = coalescer.clone();
            tokio::spawn(async move { c.ingest(e).await })
        };
        // The first goes in alone, at once, and holds the store.
        let first = post(event("first", "A1"));
        let queued = |n: usize| {
            let (held, coalescer) = (held.clone(), coalescer.clone());
            async move {
                let since = std::time::Instant::now();
                loop {
                    let taken: usize = held.batches.lock().unwrap().iter().map(Vec::len).sum();
                    let waiting = QUEUE - coalescer.queue.capacity();
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
        };
        queued(1).await;
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
        queued(34).await;
        held.gate.add_permits(1000);
        assert!(matches!(
            first.await.unwrap(),
            Ok(IngestOutcome::Accepted { ref id, .. }) if id == "first"
        ));
        let mut accepted = 0;
        for (id, answer) in posted {
            match (id.as_str(), answer.await.unwrap()) {
                ("poison", Err(StoreError::Unavailable(e))) => assert_eq!(e, "poisoned"),
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
        let batches = held.batches.lock().unwrap().clone();
        let failed = batches
            .iter()
            .position(|b| b.len() > 1 && b.contains(&"poison".to_string()))
            .unwrap_or_else(|| panic!("no batch held the poison with others: {batches:?}"));
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
}
