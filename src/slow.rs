//! Work that is slow on purpose — argon2 hashing and checking of secrets
//! people chose (staff passwords, A-words) — run off the async threads and
//! a few at a time for all callers together. Each run takes ~19 MiB and a
//! core for tens of milliseconds, and the endpoints that cause it are open
//! to whoever may try a login or an assurance: without one bound for all
//! of them, parallel requests could take every core and as much memory as
//! they liked. Beyond the bound, requests wait their turn (the request
//! timeout bounds the wait).

use crate::store::{Result, StoreError};

/// How many argon2 computations run at once, whoever asks.
pub const ARGON2_AT_ONCE: usize = 4;

static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ARGON2_AT_ONCE);

/// Runs the argon2 work `f` off the async threads, at most
/// [`ARGON2_AT_ONCE`] at a time.
pub async fn argon2<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let unavailable = |e: String| StoreError::Unavailable(format!("hashing: {e}"));
    let _turn = TURNS
        .acquire()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_bound_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs = (0..3 * ARGON2_AT_ONCE).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(argon2(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            }))
        });
        for job in futures_util::future::join_all(jobs).await {
            job.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=ARGON2_AT_ONCE).contains(&most), "{most} at once");
    }
}
