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

pub mod health;
pub mod rate;

pub use health::Health;

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
    crate::model::ChannelKind::ALL
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
    /// Delivers everything due at `now`; returns how many were handled.
    pub async fn run_once(&self, now: DateTime<Utc>) -> crate::store::Result<usize> {
        let lease_until =
            now + Duration::from_std(self.delivery.lease.0).unwrap_or(Duration::minutes(2));
        let limit = self.delivery.concurrency * 4;
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
        let claimed = ready;
        let results: Vec<crate::store::Result<()>> = futures_util::stream::iter(claimed)
            .map(|c| self.handle(c))
            .buffer_unordered(self.delivery.concurrency)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<crate::store::Result<Vec<()>>>()?;
        Ok(n)
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
        let mut rendered = match rendered {
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
        let cut = if n.channel == crate::model::ChannelKind::Sms {
            self.renderer.fit_sms(&n.type_name, &mut rendered)
        } else {
            None
        };
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
        let signing = if n.channel == crate::model::ChannelKind::Webhook {
            self.store.destination_secrets(&n.destination, now).await?
        } else {
            crate::store::Signing {
                own: Vec::new(),
                channel: true,
            }
        };
        let out = Outgoing {
            notification: n.clone(),
            event: c.event.clone(),
            rendered,
            secrets: signing
                .own
                .into_iter()
                .map(crate::model::Secret::new)
                .collect(),
            channel_secret: signing.channel,
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
            Ok(mut receipt) => {
                if let Some(cut) = cut {
                    let said = receipt.detail.take().unwrap_or_default();
                    receipt.detail = Some(
                        format!("{said}; text {cut}")
                            .trim_start_matches("; ")
                            .to_string(),
                    );
                }
                Finish::Sent { at, receipt }
            }
            Err(e) => self.after_failure(n.attempts, e, at),
        };
        if let Finish::Retry { .. } = &finish {
            tracing::info!(notification = %n.id, channel = %n.channel, attempts = n.attempts, "delivery failed, will retry");
        }
        let verdict = match &finish {
            Finish::Sent { .. } => Some(false),
            Finish::Failed {
                reason: Reason::Rejected,
                ..
            } => Some(true),
            _ => None,
        };
        self.finish(n, finish).await?;
        if let Some(failed) = verdict {
            self.health().count_outcome(n, failed, at).await?;
        }
        Ok(())
    }

    /// Destination health and receipts, as this scheduler counts them.
    pub fn health(&self) -> Health {
        Health {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            threshold: self.delivery.unhealthy_after,
            wake: self.wake.clone(),
        }
    }

    /// Asks each channel about messages whose provider is still to report
    /// (delivery reports, acknowledgements) and records what it says.
    pub async fn poll_receipts(&self) -> crate::store::Result<usize> {
        let mut recorded = 0;
        for kind in self.channels.kinds().collect::<Vec<_>>() {
            let Some(channel) = self.channels.get(kind) else {
                continue;
            };
            for n in self.store.awaiting_receipts(kind, 100).await? {
                let Some(reference) = n.provider_ref.as_deref() else {
                    continue;
                };
                match channel.poll_receipt(reference).await {
                    Ok(Some(report)) => {
                        recorded += self
                            .health()
                            .record_receipt(&n, &report, self.clock.now())
                            .await? as usize;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::info!(notification = %n.id, channel = %kind, error = %e, "could not ask the provider about a receipt");
                    }
                }
            }
        }
        Ok(recorded)
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

    /// The server's loop: deliver what is due, then sleep until the next due
    /// time (at most a second, so other nodes' work and lease expiries are
    /// noticed) or until ingest wakes it.
    pub async fn run(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        let mut last_poll = std::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            if last_poll.elapsed() >= self.delivery.receipt_poll.0 {
                last_poll = std::time::Instant::now();
                if let Err(e) = self.poll_receipts().await {
                    tracing::error!(error = %e, "could not poll receipts");
                }
            }
            let handled = match self.run_once(self.clock.now()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler could not reach the store; retrying");
                    0
                }
            };
            if handled > 0 {
                continue;
            }
            let now = self.clock.now();
            let next = self.store.next_due().await.ok().flatten();
            let wait = next
                .map(|t| (t - now).to_std().unwrap_or_default())
                .unwrap_or(std::time::Duration::from_secs(1))
                .min(std::time::Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.wait() => return,
            }
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
