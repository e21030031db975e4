//! Writes asked for at the same time go to the store together: what queued
//! while the store was busy goes in as one batch, in one transaction, and
//! each caller gets its own item's outcome. A lone item goes in at once
//! (nothing waits for company), so this costs no latency; under load it
//! saves each item its own transaction, commit and round trips.
//!
//! Used for single events posted at once (`ingest::coalesce`) and for
//! delivery outcomes (`schedule`). If the store fails a batch of several,
//! nothing of it was written: a failure of the store as a whole
//! (unreachable, out of connections) is every caller's answer at once;
//! any other, which may be one item's own, has each item written again on
//! its own, so that whatever made it fail fails only its own caller.

use super::{Result, StoreError};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most items written as one batch.
const MAX_ITEMS: usize = 256;
/// Items queued for the store before a caller waits for room.
const QUEUE: usize = 4096;
/// Batches in the store at once: while one commits, the next gathers and
/// queues behind it, so the store never waits for the next batch.
const IN_FLIGHT: usize = 2;

/// A write that takes many items at once.
pub trait Together: Send + Sync + 'static {
    type Item: Clone + Send + 'static;
    type Out: Send + 'static;

    /// Writes `items` in one step and answers an outcome for each, in
    /// order; an error: none of them was written.
    fn write(&self, items: Vec<Self::Item>) -> BoxFuture<'_, Result<Vec<Self::Out>>>;
}

type Answer<T> = oneshot::Sender<Result<T>>;

/// The handle callers queue their items through.
pub struct Coalescer<W: Together> {
    queue: mpsc::Sender<(W::Item, Answer<W::Out>)>,
}

impl<W: Together> Clone for Coalescer<W> {
    fn clone(&self) -> Self {
        Coalescer {
            queue: self.queue.clone(),
        }
    }
}

impl<W: Together> Coalescer<W> {
    /// Starts the task that writes what callers queue; it ends once every
    /// handle is dropped and what was queued is written.
    pub fn start(write: W) -> Coalescer<W> {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(gather(rx, Arc::new(write)));
        Coalescer { queue }
    }

    /// Writes `item` (with others queued at the same time) and answers its
    /// outcome.
    pub async fn call(&self, item: W::Item) -> Result<W::Out> {
        let stopped = || StoreError::Unavailable("the store's queue stopped".into());
        let (tx, rx) = oneshot::channel();
        self.queue.send((item, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Items queued and not yet given to the store.
    pub fn waiting(&self) -> usize {
        QUEUE - self.queue.capacity()
    }
}

async fn gather<W: Together>(mut rx: mpsc::Receiver<(W::Item, Answer<W::Out>)>, write: Arc<W>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while every batch in flight is in the store, what
        // arrives queues up and goes in together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, MAX_ITEMS).await == 0 {
            return;
        }
        let write = write.clone();
        tokio::spawn(async move {
            write_batch(write.as_ref(), batch).await;
            drop(slot);
        });
    }
}

/// Writes `batch` and answers each of its callers.
async fn write_batch<W: Together>(write: &W, batch: Vec<(W::Item, Answer<W::Out>)>) {
    let (items, answers): (Vec<W::Item>, Vec<Answer<W::Out>>) = batch.into_iter().unzip();
    // Kept for writing each on its own, should the batch fail.
    let spare = (items.len() > 1).then(|| items.clone());
    let n = items.len();
    match (write.write(items).await, spare) {
        (Ok(outcomes), _) if outcomes.len() == n => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(Ok(outcome));
            }
        }
        (Ok(outcomes), _) => {
            let wrong = || {
                StoreError::Unavailable(format!(
                    "the store answered {} outcomes for {n} items",
                    outcomes.len()
                ))
            };
            tracing::error!("{}", wrong());
            for answer in answers {
                let _ = answer.send(Err(wrong()));
            }
        }
        // The store failed as a whole (down, out of connections): every
        // item would meet the same, so each caller is told at once.
        (Err(e), Some(_)) if e.is_the_stores() => {
            for answer in answers {
                let _ = answer.send(Err(e.again()));
            }
        }
        // Nothing of the batch was written: each on its own, so that only
        // what failed it fails. Should the store then fail as a whole,
        // the rest are told so rather than each waiting to meet it.
        (Err(_), Some(items)) => {
            let mut down: Option<StoreError> = None;
            for (item, answer) in items.into_iter().zip(answers) {
                if let Some(e) = &down {
                    let _ = answer.send(Err(e.again()));
                    continue;
                }
                let outcome = write.write(vec![item]).await.and_then(|mut o| {
                    o.pop().ok_or_else(|| {
                        StoreError::Unavailable("the store answered no outcome".into())
                    })
                });
                if let Err(e) = &outcome
                    && e.is_the_stores()
                {
                    down = Some(e.again());
                }
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
