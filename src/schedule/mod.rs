//! The durable schedule: notifications wait in the store until due; a worker
//! claims due ones with a lease, re-checks them (expiry), renders, hands them
//! to their channel, and records the outcome — retrying transient failures
//! with exponential backoff and jitter. The same [`Scheduler`] runs under the
//! server's system clock and under `kci simulate`'s virtual one.

use crate::channels::{Channels, DeliveryError, Outgoing};
use crate::config::DeliveryConfig;
use crate::metrics::Metrics;
use crate::model::{Clock, Reason, State};
use crate::render::Renderer;
use crate::store::{Claimed, Finish, Store};
use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::Notify;

pub mod rate;

pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub channels: Channels,
    pub renderer: Arc<Renderer>,
    pub delivery: DeliveryConfig,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Woken by ingest when something may be due now.
    pub wake: Arc<Notify>,
    /// Provider rate limits, per channel that has one.
    pub limits: std::collections::HashMap<crate::model::ChannelKind, rate::Limiter>,
}

/// The rate limiters `[channels.*] rate` asks for.
pub fn limiters(
    config: &crate::config::Config,
) -> std::collections::HashMap<crate::model::ChannelKind, rate::Limiter> {
    use crate::model::ChannelKind::*;
    [
        Email, Sms, Webhook, Matrix, Pushover, Ntfy, Telegram, Signal,
    ]
    .into_iter()
    .filter_map(|k| config.channels.rate(k).map(|r| (k, rate::Limiter::new(r))))
    .collect()
}

/// The delay before retry number `attempt` (1-based): base·2^(attempt-1),
/// capped, then scaled by a random factor in [0.5, 1.0] so that retries of
/// one outage do not arrive in lockstep.
pub fn backoff(
    attempt: u32,
    base: std::time::Duration,
    max: std::time::Duration,
    jitter: f64,
) -> Duration {
    let exp = base.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = exp.min(max.as_secs_f64());
    let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
    Duration::milliseconds((capped * factor * 1000.0) as i64)
}

impl Scheduler {
    /// Delivers everything due at `now`, waiting for every delivery it
    /// started; returns how many were handled. `kci simulate` steps its
    /// virtual clock with this; the server runs [`Scheduler::run`].
    pub async fn run_once(&self, now: DateTime<Utc>) -> crate::store::Result<usize> {
        let (n, ready) = self.claim(now, self.delivery.concurrency * 4).await?;
        let results: Vec<crate::store::Result<()>> = futures_util::stream::iter(ready)
            .map(|c| self.handle(c))
            .buffer_unordered(self.delivery.concurrency)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<crate::store::Result<Vec<()>>>()?;
        Ok(n)
    }

    /// Claims up to `limit` notices due at `now` and admits them past the
    /// provider rate limits; returns how many were claimed and those
    /// ready to deliver now (the rest went back to the queue for their
    /// next free slot).
    async fn claim(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> crate::store::Result<(usize, Vec<Claimed>)> {
        let lease_until =
            now + Duration::from_std(self.delivery.lease.0).unwrap_or(Duration::minutes(2));
        let claimed = self.store.claim_due(now, lease_until, limit).await?;
        let n = claimed.len();
        // Provider rates: in priority order (the claim is sorted urgent
        // first), take a slot or go back to the queue until the next free
        // one. A notice that was given a slot earlier already holds it.
        let mut ready = Vec::with_capacity(claimed.len());
        for c in claimed {
            let kind = c.notification.channel;
            let Some(limiter) = self.limits.get(&kind) else {
                ready.push(c);
                continue;
            };
            if c.notification.reason == Some(Reason::RateLimit) {
                ready.push(c);
                continue;
            }
            match limiter.acquire(now) {
                Ok(()) => ready.push(c),
                Err(slot) => {
                    let detail = format!("{kind} rate limit: queued for the next free slot");
                    self.finish(
                        &c.notification,
                        Finish::Deferred {
                            at: now,
                            due_at: slot,
                            detail,
                        },
                    )
                    .await?;
                }
            }
        }
        for (kind, limiter) in &self.limits {
            self.metrics
                .rate_backlog
                .get_or_create(&vec![("channel", kind.as_str().to_string())])
                .set(limiter.backlog(now));
        }
        Ok((n, ready))
    }

    async fn handle(&self, c: Claimed) -> crate::store::Result<()> {
        let n = &c.notification;
        let now = self.clock.now();
        if n.expires_at.is_some_and(|exp| now > exp) {
            return self.finish(n, Finish::Expired { at: now }).await;
        }
        let rendered = if n.type_name == crate::plan::DIGEST_TYPE {
            // Composed now, from whatever is still folded into it.
            let members = self.store.digest_members(&n.id).await?;
            if members.is_empty() {
                return self
                    .finish(
                        n,
                        Finish::Cancelled {
                            at: now,
                            reason: Reason::EmptyDigest,
                        },
                    )
                    .await;
            }
            self.renderer.render_digest(&members)
        } else {
            self.renderer.render(n, c.event.as_ref())
        };
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                return self
                    .finish(
                        n,
                        Finish::Failed {
                            at: now,
                            reason: Reason::Render,
                            detail: e.to_string(),
                        },
                    )
                    .await;
            }
        };
        if n.channel.needs_short() && rendered.short.is_none() {
            let detail = format!(
                "{} needs a short text: give type {} a `short` template or post the event with `short`",
                n.channel, n.type_name
            );
            return self
                .finish(
                    n,
                    Finish::Failed {
                        at: now,
                        reason: Reason::NoShortForm,
                        detail,
                    },
                )
                .await;
        }
        let Some(channel) = self.channels.get(n.channel) else {
            let detail = format!("no {} channel is configured", n.channel);
            return self
                .finish(
                    n,
                    Finish::Failed {
                        at: now,
                        reason: Reason::NoChannel,
                        detail,
                    },
                )
                .await;
        };
        let out = Outgoing {
            notification: n.clone(),
            event: c.event.clone(),
            rendered,
        };
        let started = std::time::Instant::now();
        let result = channel.deliver(&out).await;
        let channel_label = n.channel.as_str().to_string();
        self.metrics
            .delivery_seconds
            .get_or_create(&vec![("channel", channel_label.clone())])
            .observe(started.elapsed().as_secs_f64());
        let at = self.clock.now();
        let (outcome, reason) = match &result {
            Ok(_) => ("sent", ""),
            Err(e) if e.is_transient() => ("transient", e.reason()),
            Err(e) => ("permanent", e.reason()),
        };
        self.metrics
            .deliveries
            .get_or_create(&vec![
                ("channel", channel_label),
                ("outcome", outcome.into()),
                ("reason", reason.into()),
            ])
            .inc();
        let finish = match result {
            Ok(receipt) => Finish::Sent {
                at,
                detail: receipt.detail,
            },
            Err(e) => self.after_failure(n.attempts, e, at),
        };
        if let Finish::Retry { .. } = &finish {
            tracing::info!(notification = %n.id, channel = %n.channel, attempts = n.attempts, "delivery failed, will retry");
        }
        self.finish(n, finish).await
    }

    fn after_failure(&self, attempts: u32, e: DeliveryError, at: DateTime<Utc>) -> Finish {
        if e.is_permanent() {
            return Finish::Failed {
                at,
                reason: Reason::Rejected,
                detail: e.to_string(),
            };
        }
        if attempts >= self.delivery.max_attempts {
            return Finish::Failed {
                at,
                reason: Reason::GaveUp,
                detail: e.to_string(),
            };
        }
        let computed = backoff(
            attempts,
            self.delivery.backoff.0,
            self.delivery.backoff_max.0,
            rand::random(),
        );
        let wait = e
            .retry_after()
            .and_then(|d| Duration::from_std(d).ok())
            .map(|d| d.max(computed))
            .unwrap_or(computed);
        Finish::Retry {
            at,
            due_at: at + wait,
            detail: e.to_string(),
        }
    }

    async fn finish(&self, n: &crate::store::Notification, f: Finish) -> crate::store::Result<()> {
        let (state, reason) = match &f {
            Finish::Sent { .. } => (State::Sent, None),
            Finish::Retry { .. } => (State::Pending, Some(Reason::Retry)),
            Finish::Failed { reason, .. } => (State::Failed, Some(*reason)),
            Finish::Expired { .. } => (State::Expired, Some(Reason::Expired)),
            Finish::Cancelled { reason, .. } => (State::Cancelled, Some(*reason)),
            Finish::Deferred { .. } => (State::Pending, Some(Reason::RateLimit)),
        };
        if let Finish::Failed { detail, .. } = &f {
            tracing::warn!(notification = %n.id, channel = %n.channel, reason = ?reason, detail = %detail, "delivery failed");
        }
        self.metrics.decided(state, reason);
        self.store.finish(&n.id, f).await
    }

    /// The server's loop: a pipeline keeping up to `concurrency`
    /// deliveries in flight and starting the next claimed notice as soon
    /// as any one finishes — so a provider that answers slowly (or not at
    /// all, until its timeout) holds up only its own deliveries, never a
    /// batch of other channels' notices behind it. Claims are made ahead,
    /// up to `4 × concurrency` at a time, so the store sees one claim per
    /// many deliveries. With nothing due it sleeps until the next due time
    /// (at most a second, so other nodes' work and lease expiries are
    /// noticed) or until ingest wakes it. On shutdown it claims nothing
    /// more and delivers what it has claimed.
    pub async fn run(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        let concurrency = self.delivery.concurrency.max(1);
        let ahead = concurrency * 4;
        let mut queue: std::collections::VecDeque<Claimed> = Default::default();
        // Each delivery is its own task, so deliveries keep going while
        // this loop waits on the store for the next claim.
        let mut in_flight = tokio::task::JoinSet::new();
        let start = |set: &mut tokio::task::JoinSet<_>, c: Claimed| {
            let me = self.clone();
            set.spawn(async move { me.handle(c).await });
        };
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let mut claimed = 0;
            if queue.len() < concurrency {
                match self.claim(self.clock.now(), ahead - queue.len()).await {
                    Ok((n, ready)) => {
                        claimed = n;
                        queue.extend(ready);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "scheduler could not reach the store; retrying");
                    }
                }
            }
            while in_flight.len() < concurrency {
                let Some(c) = queue.pop_front() else { break };
                start(&mut in_flight, c);
            }
            if claimed > 0 && in_flight.len() < concurrency {
                // More may be due right now.
                continue;
            }
            let wait = if in_flight.len() < concurrency {
                let now = self.clock.now();
                self.store
                    .next_due()
                    .await
                    .ok()
                    .flatten()
                    .map(|t| (t - now).to_std().unwrap_or_default())
                    .unwrap_or(std::time::Duration::from_secs(1))
                    .min(std::time::Duration::from_secs(1))
            } else {
                // Full: only a finished delivery frees a slot.
                std::time::Duration::from_secs(3600)
            };
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    log_outcome(done);
                    // Gather every other finished one too.
                    while let Some(done) = in_flight.try_join_next() {
                        log_outcome(done);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.wait() => break,
            }
        }
        loop {
            while in_flight.len() < concurrency {
                let Some(c) = queue.pop_front() else { break };
                start(&mut in_flight, c);
            }
            match in_flight.join_next().await {
                Some(done) => log_outcome(done),
                None => break,
            }
        }
    }
}

/// A delivery whose outcome could not be recorded is not lost: its lease
/// runs out and it is claimed again.
fn log_outcome(done: Result<crate::store::Result<()>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not record a delivery's outcome; it will be retried when its lease runs out")
        }
        Err(e) => {
            tracing::error!(error = %e, "a delivery task failed; it will be retried when its lease runs out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let base = std::time::Duration::from_secs(5);
        let max = std::time::Duration::from_secs(60);
        assert_eq!(backoff(1, base, max, 1.0), Duration::seconds(5));
        assert_eq!(backoff(2, base, max, 1.0), Duration::seconds(10));
        assert_eq!(backoff(3, base, max, 1.0), Duration::seconds(20));
        assert_eq!(backoff(10, base, max, 1.0), Duration::seconds(60));
        assert_eq!(backoff(1, base, max, 0.0), Duration::milliseconds(2500));
        assert_eq!(backoff(u32::MAX, base, max, 1.0), Duration::seconds(60));
    }
}
