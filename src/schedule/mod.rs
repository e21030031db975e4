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
use crate::store::coalesce::{Coalescer, Together};
use crate::store::{Claimed, Finish, LaneClaim, Left, Outcome, Store};
use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use std::sync::Arc;

pub mod aimd;
pub mod health;
pub mod rate;
mod wake;

pub use health::Health;
pub use wake::Wake;

pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub channels: Channels,
    pub renderer: Arc<Renderer>,
    pub delivery: DeliveryConfig,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Woken by ingest when something may be due now.
    pub wake: Arc<Wake>,
    /// Provider rate limits, per channel that has one.
    pub limits: std::collections::HashMap<crate::model::ChannelKind, rate::Gcra>,
    /// Channels whose provider asked kci to wait (a 429 or 503 with
    /// `Retry-After`): the server's loop starts nothing there until then.
    pub pauses: Pauses,
    /// How many deliveries each channel keeps in flight, as its provider
    /// allows (see [`aimd`]).
    pub windows: Windows,
    /// Opens the secrets kept sealed in the store (a notice's code or
    /// link, a webhook's signing secrets).
    pub at_rest: Arc<crate::trust::seal::AtRest>,
    /// Where deliveries' outcomes are written: those that come in while
    /// others commit are written together (see [`outcomes`]).
    pub outcomes: Coalescer<Outcomes>,
}

/// Deliveries' outcomes, written to the store together.
pub struct Outcomes(Arc<dyn Store>);

impl Together for Outcomes {
    type Item = Outcome;
    type Out = bool;

    fn write(&self, outcomes: Vec<Outcome>) -> BoxFuture<'_, crate::store::Result<Vec<bool>>> {
        self.0.finish_all(outcomes)
    }
}

/// Starts writing deliveries' outcomes to `store`: each in one
/// transaction with those that came in while the last ones committed, so
/// a busy channel's outcomes share a commit (and on PostgreSQL one
/// statement) rather than each paying its own. Needs a running Tokio
/// runtime.
pub fn outcomes(store: Arc<dyn Store>) -> Coalescer<Outcomes> {
    Coalescer::start(Outcomes(store))
}

/// Until when each channel is paused.
#[derive(Default)]
pub struct Pauses(
    std::sync::Mutex<std::collections::HashMap<crate::model::ChannelKind, DateTime<Utc>>>,
);

impl Pauses {
    /// Pauses `kind` until `until` (a later pause wins).
    pub fn pause(&self, kind: crate::model::ChannelKind, until: DateTime<Utc>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(kind).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// When `kind`'s pause ends, if it is paused at `now`.
    pub fn until(
        &self,
        kind: crate::model::ChannelKind,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&kind).copied().filter(|t| *t > now)
    }
}

/// Each channel's congestion window ([`aimd::Window`]), where one
/// provider takes all the channel's notices (elsewhere, such as webhooks,
/// one receiver's 429 must not slow the others: their limit stays the
/// configured `concurrency`).
#[derive(Default)]
pub struct Windows(
    std::sync::Mutex<std::collections::HashMap<crate::model::ChannelKind, aimd::Window>>,
);

impl Windows {
    fn with<T>(
        &self,
        kind: crate::model::ChannelKind,
        ceiling: usize,
        f: impl FnOnce(&mut aimd::Window) -> T,
    ) -> T {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map
            .entry(kind)
            .or_insert_with(|| aimd::Window::new(ceiling)))
    }

    /// How many deliveries `kind` may have in flight (of at most `ceiling`).
    pub fn limit(&self, kind: crate::model::ChannelKind, ceiling: usize) -> usize {
        if !kind.one_provider() {
            return ceiling.max(1);
        }
        self.with(kind, ceiling, |w| w.limit())
    }

    /// How long `kind` leaves between the starts of two deliveries (none
    /// where a channel's notices go to many receivers).
    pub fn gap(&self, kind: crate::model::ChannelKind, ceiling: usize) -> std::time::Duration {
        if !kind.one_provider() {
            return std::time::Duration::ZERO;
        }
        self.with(kind, ceiling, |w| w.gap())
    }

    /// The epoch a delivery on `kind` starting now carries.
    pub fn epoch(&self, kind: crate::model::ChannelKind, ceiling: usize) -> u64 {
        self.with(kind, ceiling, |w| w.epoch())
    }

    /// A delivery on `kind` started at `epoch` came to `result`; answers
    /// the limit after it.
    pub fn record(
        &self,
        kind: crate::model::ChannelKind,
        ceiling: usize,
        epoch: u64,
        result: &Result<crate::channels::Receipt, DeliveryError>,
        took: std::time::Duration,
    ) -> usize {
        if !kind.one_provider() {
            return ceiling.max(1);
        }
        let outcome = match result {
            Ok(_) => aimd::Outcome::Accepted,
            Err(e) if e.is_pacing() => aimd::Outcome::Paced(e.retry_after()),
            Err(_) => aimd::Outcome::Other,
        };
        self.with(kind, ceiling, |w| {
            if outcome == aimd::Outcome::Accepted {
                w.took(took);
            }
            w.record(epoch, outcome);
            w.limit()
        })
    }
}

/// The rate limiters `[channels.*] rate` asks for.
pub fn limiters(
    config: &crate::config::Config,
) -> std::collections::HashMap<crate::model::ChannelKind, rate::Gcra> {
    crate::model::ChannelKind::ALL
        .into_iter()
        .filter_map(|k| config.channels.rate(k).map(|r| (k, rate::Gcra::new(r))))
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

/// How long a whole channel waits after `e`: the provider's `Retry-After`
/// where one provider takes all the channel's notices, at most the
/// longest backoff; `None` elsewhere.
pub fn channel_pause(
    d: &crate::config::DeliveryConfig,
    kind: crate::model::ChannelKind,
    e: &DeliveryError,
) -> Option<Duration> {
    if !kind.one_provider() {
        return None;
    }
    let after = Duration::from_std(e.retry_after()?).ok()?;
    let longest = Duration::from_std(d.backoff_max.0).unwrap_or(after);
    Some(after.min(longest))
}

/// What follows a failed delivery (`attempts` made, the provider having
/// asked to wait `paced` times before): failed for good when the provider
/// refused it or the attempts are spent; paced — the attempt given back —
/// when the provider asked to wait (HTTP 429: a provider slowing kci down
/// must never cost a customer their notice), until `max_paced`; else a
/// retry after the backoff, or after the provider's `Retry-After` if
/// longer. `jitter` in [0, 1] spreads the waits.
pub fn after_failure(
    d: &crate::config::DeliveryConfig,
    attempts: u32,
    paced: u32,
    e: &DeliveryError,
    at: DateTime<Utc>,
    jitter: f64,
) -> Finish {
    // A provider's wait, at most the longest backoff: a `Retry-After` of a
    // year must not park a notice for a year.
    let longest = Duration::from_std(d.backoff_max.0).unwrap_or(Duration::MAX);
    let provider_wait = e
        .retry_after()
        .and_then(|d| Duration::from_std(d).ok())
        .map(|w| w.min(longest));
    if e.is_permanent() {
        return Finish::Failed {
            at,
            reason: Reason::Rejected,
            detail: e.to_string(),
        };
    }
    if e.is_pacing() {
        if paced >= d.max_paced {
            return Finish::Failed {
                at,
                reason: Reason::GaveUp,
                detail: format!("the provider asked to wait {paced} times; {e}"),
            };
        }
        // As long as the provider asked, and a little more so the notices
        // it held back do not all come back at the same instant; without
        // a word, a backoff of its own.
        let wait = match provider_wait {
            Some(w) => {
                w + Duration::milliseconds((w.num_milliseconds() as f64 * 0.25 * jitter) as i64)
            }
            None => backoff(paced + 1, d.backoff.0, d.backoff_max.0, jitter),
        };
        return Finish::Paced {
            at,
            due_at: at + wait,
            detail: e.to_string(),
        };
    }
    if attempts >= d.max_attempts {
        return Finish::Failed {
            at,
            reason: Reason::GaveUp,
            detail: e.to_string(),
        };
    }
    let computed = backoff(attempts, d.backoff.0, d.backoff_max.0, jitter);
    let wait = provider_wait.map(|w| w.max(computed)).unwrap_or(computed);
    Finish::Retry {
        at,
        due_at: at + wait,
        detail: e.to_string(),
    }
}

impl Scheduler {
    /// Delivers everything due at `now`, all channels together, and waits
    /// for the lot; returns how many were handled. `kci simulate` steps its
    /// virtual clock with this; the server runs [`Scheduler::run`].
    pub async fn run_once(&self, now: DateTime<Utc>) -> crate::store::Result<usize> {
        let limit = self.delivery.concurrency * 4;
        let claimed = self
            .store
            .claim_due(now, self.lease_until(now), limit)
            .await?;
        let n = claimed.len();
        let ready = self.admit(claimed, now).await?;
        let results: Vec<crate::store::Result<()>> = futures_util::stream::iter(ready)
            .map(|c| self.handle(c, Slot::default()))
            .buffer_unordered(self.delivery.concurrency)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<crate::store::Result<Vec<()>>>()?;
        Ok(n)
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + Duration::from_std(self.delivery.lease.0).unwrap_or(Duration::minutes(2))
    }

    /// Provider rates: in priority order (claims come sorted urgent first),
    /// each notice takes a slot of its channel's rate or goes back to the
    /// queue until the next free one; returns those that may go now. A
    /// notice given a slot earlier already holds it.
    async fn admit(
        &self,
        claimed: Vec<Claimed>,
        now: DateTime<Utc>,
    ) -> crate::store::Result<Vec<Claimed>> {
        // Slots for the notices of each rate-limited channel, reserved
        // in one go in the store (shared by every node); a notice that
        // already waited for its slot has it.
        let mut asking: std::collections::HashMap<crate::model::ChannelKind, usize> =
            Default::default();
        for c in &claimed {
            let kind = c.notification.channel;
            if self.limits.contains_key(&kind) && c.notification.reason != Some(Reason::RateLimit) {
                *asking.entry(kind).or_default() += 1;
            }
        }
        let mut slots = std::collections::HashMap::new();
        for (kind, n) in asking {
            let Some(rate) = self.limits.get(&kind) else {
                continue;
            };
            let (tat, given) = self.store.reserve_rate(kind, *rate, now, n).await?;
            self.metrics
                .rate_backlog
                .get_or_create(&vec![("channel", kind.as_str().to_string())])
                .set(rate.backlog(tat, now));
            slots.insert(kind, given.into_iter());
        }
        let mut ready = Vec::with_capacity(claimed.len());
        for c in claimed {
            let kind = c.notification.channel;
            let slot = if c.notification.reason == Some(Reason::RateLimit) {
                None
            } else {
                slots.get_mut(&kind).and_then(Iterator::next).flatten()
            };
            match slot {
                None => ready.push(c),
                Some(slot) => {
                    let detail = format!("{kind} rate limit: queued for the next free slot");
                    self.finish(
                        &c,
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
        Ok(ready)
    }

    async fn handle(&self, c: Claimed, mut slot: Slot) -> crate::store::Result<()> {
        let n = &c.notification;
        let now = self.clock.now();
        if n.expires_at.is_some_and(|exp| now > exp) {
            return self.finish(&c, Finish::Expired { at: now }).await;
        }
        // Claimed again and again without an outcome (each lease ran out:
        // a node died mid-delivery, or the provider never answered in
        // time): the attempts are spent, so it fails rather than loop.
        if n.attempts > self.delivery.max_attempts {
            let detail = format!(
                "claimed {} times without an outcome (each lease of {} ran out); giving up",
                n.attempts, self.delivery.lease
            );
            return self
                .finish(
                    &c,
                    Finish::Failed {
                        at: now,
                        reason: Reason::GaveUp,
                        detail,
                    },
                )
                .await;
        }
        // Paper only where `plan::letter` admits it, whoever wrote the
        // notice (an event's type whose config changed since, a notice
        // kci wrote itself), judged on the account as it is now.
        if n.channel == crate::model::ChannelKind::Letter {
            let level = c
                .account
                .as_ref()
                .map(|a| a.security_level)
                .unwrap_or_default();
            let asks = self.renderer.asks_for_letter(&n.type_name);
            if !crate::plan::letter::admits(n.channel, &n.type_name, asks, level) {
                let cancelled = Finish::Cancelled {
                    at: now,
                    reason: Reason::NotByLetter,
                };
                return self.finish(&c, cancelled).await;
            }
        }
        let rendered = if n.type_name == crate::plan::DIGEST_TYPE {
            // Composed now, from whatever is still folded into it.
            let members = self.store.digest_members(&n.id).await?;
            if members.is_empty() {
                return self
                    .finish(
                        &c,
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
                        &c,
                        Finish::Failed {
                            at: now,
                            reason: Reason::Render,
                            detail: e.to_string(),
                        },
                    )
                    .await;
            }
        };
        // What may leave, and under which protection.
        let secured = match crate::secure::secure(
            &c,
            rendered,
            &self.renderer,
            self.store.as_ref(),
            &self.at_rest,
            now,
        )
        .await?
        {
            Ok(s) => s,
            // Nothing to tell any more: not a failure.
            Err(w) if w.reason == Reason::ChangeEnded => {
                let cancelled = Finish::Cancelled {
                    at: now,
                    reason: w.reason,
                };
                return self.finish(&c, cancelled).await;
            }
            Err(w) => {
                let failed = Finish::Failed {
                    at: now,
                    reason: w.reason,
                    detail: w.detail,
                };
                return self.finish(&c, failed).await;
            }
        };
        let mut rendered = secured.rendered;
        if n.channel.needs_short() && rendered.short.is_none() {
            let detail = format!(
                "{} needs a short text: give type {} a `short` template or post the event with `short`",
                n.channel, n.type_name
            );
            return self
                .finish(
                    &c,
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
                    &c,
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
            event: secured.event,
            rendered,
            secrets: secured.secrets,
            channel_secret: secured.channel_secret,
            recipient_key: secured.recipient_key,
            postal_address: c.account.as_ref().and_then(|a| a.postal_address.clone()),
        };
        let ceiling = self.delivery.concurrency;
        let epoch = self.windows.epoch(n.channel, ceiling);
        let started = std::time::Instant::now();
        let result = channel.deliver(&out).await;
        let channel_label = n.channel.as_str().to_string();
        let window = self
            .windows
            .record(n.channel, ceiling, epoch, &result, started.elapsed());
        self.metrics
            .delivery_window
            .get_or_create(&vec![("channel", channel_label.clone())])
            .set(window as i64);
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
        // The provider asked to be left alone for a while: the whole
        // channel waits, not just this notice — where one provider takes
        // all its notices, and never past the longest backoff (a webhook
        // receiver, any customer's server, could otherwise stop every
        // other customer's webhooks).
        if let Err(e) = &result
            && let Some(after) = channel_pause(&self.delivery, n.channel, e)
        {
            self.pauses.pause(n.channel, at + after);
            // And every other node on the store, which learns of it
            // within a second (see `run`).
            if let Err(err) = self.store.pause_channel(n.channel, at + after).await {
                tracing::warn!(channel = %n.channel, error = %err, "could not share a provider's pause with the other nodes");
            }
        }
        // The receiver has answered (its window and any pause it asked
        // for are counted) and would drop this notice sent again: its slot
        // goes to the next one while the outcome is written.
        if n.channel.drops_repeats() {
            slot.free();
        }
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
            Err(e) => after_failure(&self.delivery, n.attempts, n.paced, &e, at, rand::random()),
        };
        if let Finish::Retry { .. } = &finish {
            tracing::info!(notification = %n.id, channel = %n.channel, attempts = n.attempts, "delivery failed, will retry");
        }
        // A refusal counts against the destination's health; a success
        // clears the count in the same write as the outcome.
        let refused = matches!(
            &finish,
            Finish::Failed {
                reason: Reason::Rejected,
                ..
            }
        );
        self.finish(&c, finish).await?;
        if refused {
            self.health().count_outcome(n, true, at).await?;
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

    async fn finish(&self, c: &Claimed, f: Finish) -> crate::store::Result<()> {
        let n = &c.notification;
        // What the notice becomes, and when it comes due again if it is
        // back in the queue for later.
        let (state, reason, back_at) = match &f {
            Finish::Sent { .. } => (State::Sent, None, None),
            Finish::Retry { due_at, .. } => (State::Pending, Some(Reason::Retry), Some(*due_at)),
            Finish::Failed { reason, .. } => (State::Failed, Some(*reason), None),
            Finish::Expired { .. } => (State::Expired, Some(Reason::Expired), None),
            Finish::Cancelled { reason, .. } => (State::Cancelled, Some(*reason), None),
            Finish::Deferred { due_at, .. } | Finish::Paced { due_at, .. } => {
                (State::Pending, Some(Reason::RateLimit), Some(*due_at))
            }
        };
        if let Finish::Failed { detail, .. } = &f {
            tracing::warn!(notification = %n.id, channel = %n.channel, reason = ?reason, detail = %detail, "delivery failed");
        }
        // Only under this claim's lease: one that ran out may have been
        // claimed again (another node, or this one), whose outcome stands.
        let recorded = self
            .outcomes
            .call(Outcome {
                id: n.id.clone(),
                lease_until: c.lease_until,
                finish: f,
            })
            .await?;
        if recorded {
            // The loop may be sleeping past it, or hold an older answer
            // of what comes due next.
            if let Some(due_at) = back_at {
                self.wake.due(due_at);
            }
            self.metrics.decided(state, reason);
        } else {
            tracing::warn!(notification = %n.id, channel = %n.channel, "outcome not recorded: the notice is no longer being sent under this claim (its lease ran out and it was claimed again, or its outcome was written)");
        }
        Ok(())
    }

    /// The server's loop. Each channel is its own lane: its own queue of
    /// claimed notices and its own `concurrency` slots, each delivery a task
    /// of its own — so a provider that is slow or timing out fills only its
    /// own slots while the others go on. A slot is a delivery at the
    /// provider: a webhook's is given back as soon as its receiver
    /// answered, while the outcome is written (`ChannelKind::drops_repeats`;
    /// a lane holds at most twice `concurrency` tasks); other channels'
    /// once the outcome is written. A lane claims ahead (up to twice
    /// its slots) when its queue runs low, so the store sees one claim per
    /// many deliveries, and stops asking once a claim took all there was
    /// until ingest wakes the loop, the next due time comes, or (if a
    /// notice waits for its turn behind one being sent) a delivery ends.
    /// The loop sleeps until something is due (at most a second, so
    /// other nodes' work and lease expiries are noticed), ingest wakes
    /// it, or a delivery frees a slot. On shutdown it stops claiming,
    /// leaves what is queued to its lease, and lets the deliveries in
    /// flight finish.
    pub async fn run(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        use crate::model::ChannelKind;
        let concurrency = self.delivery.concurrency.max(1);
        let mut lanes: Vec<Lane> = ChannelKind::ALL
            .into_iter()
            .map(|kind| Lane {
                kind,
                configured: self.channels.get(kind).is_some(),
                slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
                tasks: Arc::new(tokio::sync::Semaphore::new(2 * concurrency)),
                queue: Default::default(),
                dry: false,
                in_turn: false,
                next_start: None,
            })
            .collect();
        // A queued notice is started only while half its lease is left
        // (config validation makes that half cover the slowest channel's
        // timeout); later, it is dropped and claimed again when its lease
        // ends, rather than delivered after another node may have taken it.
        // The half is counted from the moment the lease was asked for, not
        // from the claim's answer: a claim that waited for a connection
        // has already used part of its lease.
        let stale = self.delivery.lease.0 / 2;
        let mut inflight = tokio::task::JoinSet::new();
        // Rung by a delivery whose provider answered (its slot is free).
        let freed = Arc::new(tokio::sync::Notify::new());
        let mut last_poll = std::time::Instant::now();
        let mut last_sweep = std::time::Instant::now();
        let mut last_pauses: Option<std::time::Instant> = None;
        // What the store last said comes due next, while that holds.
        let mut known: Option<KnownDue> = None;
        while !shutdown.is_triggered() {
            // The pauses other nodes were asked for, once a second.
            if last_pauses.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                last_pauses = Some(std::time::Instant::now());
                match self.store.channel_pauses(self.clock.now()).await {
                    Ok(paused) => {
                        for (kind, until) in paused {
                            self.pauses.pause(kind, until);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the channels' pauses"),
                }
            }
            if last_poll.elapsed() >= self.delivery.receipt_poll.0 {
                last_poll = std::time::Instant::now();
                if let Err(e) = self.poll_receipts().await {
                    tracing::error!(error = %e, "could not poll receipts");
                }
            }
            let mut progress = false;
            let now = self.clock.now();
            // Whatever was due by now, the lanes' claims below have seen.
            let looked = now;
            let mut resume: Option<DateTime<Utc>> = None;
            // The next start a lane's spacing (aimd) holds back.
            let mut spaced: Option<std::time::Instant> = None;
            for lane in &mut lanes {
                if let Some(until) = self.pauses.until(lane.kind, now) {
                    resume = Some(resume.map_or(until, |r| r.min(until)));
                    continue;
                }
                // Claimed ahead: twice the slots, or, where the provider
                // asked for a spacing, what can start within half a lease
                // (a notice queued longer is given back, see `stale`).
                let gap = self.windows.gap(lane.kind, concurrency);
                let ahead = if gap.is_zero() {
                    2 * concurrency
                } else {
                    ((stale.as_secs_f64() / gap.as_secs_f64()) as usize).clamp(1, 2 * concurrency)
                };
                if !lane.dry && lane.queue.len() < ahead.div_ceil(2) {
                    let at = std::time::Instant::now();
                    match self.claim_on(lane.kind, ahead - lane.queue.len()).await {
                        Ok((ready, left)) => {
                            // Taken all there was: ask again when woken,
                            // or when a delivery may let the next of a key
                            // go.
                            lane.dry = left != Left::More;
                            lane.in_turn = left == Left::InTurn;
                            progress |= !ready.is_empty();
                            lane.queue.extend(ready.into_iter().map(|c| (at, c)));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, channel = %lane.kind, "scheduler could not reach the store; retrying");
                            // Again once a delivery ends, or on the timer.
                            (lane.dry, lane.in_turn) = (true, true);
                        }
                    }
                }
                loop {
                    let gap = self.windows.gap(lane.kind, concurrency);
                    let started = std::time::Instant::now();
                    match lane.next(
                        concurrency,
                        self.windows.limit(lane.kind, concurrency),
                        gap,
                        started,
                    ) {
                        Next::Start => {}
                        Next::Spaced(next) => {
                            spaced = Some(spaced.map_or(next, |s| s.min(next)));
                            break;
                        }
                        Next::Full | Next::Empty => break,
                    }
                    let Ok(task) = lane.tasks.clone().try_acquire_owned() else {
                        break;
                    };
                    let Ok(permit) = lane.slots.clone().try_acquire_owned() else {
                        break;
                    };
                    let Some((at, c)) = lane.queue.pop_front() else {
                        break;
                    };
                    if at.elapsed() >= stale {
                        // Not started: given back to the queue with its
                        // attempt (the claim counted one). Written under
                        // its lease only (`finish`), so a notice another
                        // claim has taken meanwhile is left alone.
                        drop(permit);
                        let this = self.clone();
                        let kind = lane.kind;
                        inflight.spawn(async move {
                            let now = this.clock.now();
                            let back = Finish::Deferred {
                                at: now,
                                due_at: now,
                                detail: "waited too long in the node's queue; not attempted".into(),
                            };
                            (kind, this.finish(&c, back).await)
                        });
                        continue;
                    }
                    lane.next_start = Some(started + gap);
                    let this = self.clone();
                    let kind = lane.kind;
                    let slot = Slot(Some((permit, freed.clone())));
                    inflight.spawn(async move {
                        let _task = task;
                        (kind, this.handle(c, slot).await)
                    });
                    progress = true;
                }
            }
            // A delivery that ended lets its lane claim again, and may have
            // freed a slot after its lane looked: never asleep while a lane
            // could start what it holds, or its claimed notices wait for
            // the loop's timer, a second (BENCHMARKS.md, stop 32).
            while let Some(done) = inflight.try_join_next() {
                delivered(&mut lanes, done);
                progress = true;
            }
            let startable = |lane: &Lane| {
                !lane.queue.is_empty()
                    && self.pauses.until(lane.kind, now).is_none()
                    && lane.next(
                        concurrency,
                        self.windows.limit(lane.kind, concurrency),
                        self.windows.gap(lane.kind, concurrency),
                        std::time::Instant::now(),
                    ) == Next::Start
            };
            if progress || lanes.iter().any(startable) {
                continue;
            }
            let now = self.clock.now();
            // What is due already waits for a slot of its channel or its
            // turn behind an earlier notice of its key (a finishing
            // delivery wakes the loop for either), or for its channel's
            // pause to end: the loop waits for what comes due after now.
            // Asked again only when the last answer may be wrong: read
            // before the doorbell was rung, past what the loop's sleeps
            // since told ingest, or already come (see `KnownDue`). Each
            // finishing delivery wakes the loop, which asked the store
            // once per delivery under load: a read whose connection
            // drops its page cache as the writer has committed since.
            let next = match known.and_then(|k| k.holds(looked, now)) {
                Some(next) => next,
                None => match self.store.next_due(Some(looked)).await {
                    Ok(next) => {
                        known = Some(KnownDue::read(next));
                        next
                    }
                    Err(_) => {
                        known = None;
                        None
                    }
                },
            };
            let next = match (next, resume) {
                (Some(n), Some(r)) => Some(n.min(r)),
                (n, r) => n.or(r),
            };
            let wait = next
                .map(|t| (t - now).to_std().unwrap_or_default())
                .unwrap_or(std::time::Duration::from_secs(1))
                .min(std::time::Duration::from_secs(1))
                .min(spaced.map_or(std::time::Duration::MAX, |s| {
                    s.saturating_duration_since(std::time::Instant::now())
                }));
            let wait = known.map_or(wait, |k| {
                k.until
                    .signed_duration_since(now)
                    .to_std()
                    .unwrap_or_default()
                    .min(wait)
            });
            let until = now + Duration::from_std(wait).unwrap_or(Duration::zero());
            // Ingest rings for what comes due before this (Wake::due).
            self.wake.sleeping_until(until);
            if let Some(k) = &mut known {
                k.sleeping_until(until);
            }
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => {
                        for lane in &mut lanes {
                            lane.dry = false;
                        }
                    }
                    _ = self.wake.notified() => {
                        // Rung during the round for what comes due after
                        // this sleep: nothing to do before it ends.
                        if !self.wake.rang_before(until) {
                            continue;
                        }
                        known = None;
                        for lane in lanes.iter_mut().filter(|l| l.configured) {
                            lane.dry = false;
                        }
                    }
                    Some(done) = inflight.join_next() => delivered(&mut lanes, done),
                    // A slot given back early: its lane may start the next.
                    _ = freed.notified() => {}
                    _ = shutdown.wait() => {}
                }
                break;
            }
            self.wake.working();
            // A channel that is not configured gets no new work: what is
            // left on it is looked for once a second, however often
            // ingest wakes the loop.
            if last_sweep.elapsed() >= std::time::Duration::from_secs(1) {
                last_sweep = std::time::Instant::now();
                for lane in &mut lanes {
                    lane.dry = false;
                }
            }
        }
        while let Some(done) = inflight.join_next().await {
            delivered(&mut lanes, done);
        }
    }

    /// Claims up to `free` due notices of channel `kind` and admits them
    /// past its rate limit; and what the claim left due.
    async fn claim_on(
        &self,
        kind: crate::model::ChannelKind,
        free: usize,
    ) -> crate::store::Result<(Vec<Claimed>, Left)> {
        let now = self.clock.now();
        let LaneClaim { claimed, left } = self
            .store
            .claim_due_on(kind, now, self.lease_until(now), free)
            .await?;
        if claimed.is_empty() {
            return Ok((claimed, left));
        }
        Ok((self.admit(claimed, now).await?, left))
    }
}

/// The store's answer to what comes due next (`Store::next_due`), kept
/// while it still holds. Anything stored after the read that comes due
/// sooner rang the loop's doorbell (`Wake::due`, which drops the answer),
/// unless it came due no earlier than the loop had said it would look by
/// itself (`Wake::sleeping_until`): so the answer holds until the earliest
/// of the loop's sleeps since the read ends, and no later than one second
/// after it (another node's notices ring no bell here).
#[derive(Debug, Clone, Copy, PartialEq)]
struct KnownDue {
    /// The earliest due time (or lease end) after the read.
    next: Option<DateTime<Utc>>,
    /// Until when nothing unheard of can come due: the earliest end of
    /// the loop's sleeps since the read (none yet: the read is being used
    /// for the first sleep).
    until: DateTime<Utc>,
}

impl KnownDue {
    /// A fresh answer, before the sleep that uses it.
    fn read(next: Option<DateTime<Utc>>) -> KnownDue {
        KnownDue {
            next,
            until: DateTime::<Utc>::MAX_UTC,
        }
    }

    /// The answer, if it still holds for a loop that claimed what was due
    /// by `looked` and now is at `now`: not once the loop's sleeps reached
    /// its horizon, nor once its next due time has come (the claims saw
    /// that one; what comes after it the store must say).
    fn holds(self, looked: DateTime<Utc>, now: DateTime<Utc>) -> Option<Option<DateTime<Utc>>> {
        (now < self.until && self.next.is_none_or(|n| n > looked)).then_some(self.next)
    }

    /// The loop sleeps until `until`, telling ingest so.
    fn sleeping_until(&mut self, until: DateTime<Utc>) {
        self.until = self.until.min(until);
    }
}

/// A delivery's place at its provider (one of its lane's slots), and the
/// doorbell of the loop that waits for one to free. `kci simulate` runs
/// its deliveries without.
#[derive(Default)]
struct Slot(Option<(tokio::sync::OwnedSemaphorePermit, Arc<tokio::sync::Notify>)>);

impl Slot {
    /// Gives the slot back before the delivery's task ends (see
    /// [`ChannelKind::drops_repeats`](crate::model::ChannelKind::drops_repeats)).
    fn free(&mut self) {
        if let Some((permit, freed)) = self.0.take() {
            drop(permit);
            freed.notify_one();
        }
    }
}

/// One channel's share of the server's loop.
struct Lane {
    kind: crate::model::ChannelKind,
    /// The config sets the channel up. Others hold only notices from
    /// before it was taken out (each then fails, naming why), so they
    /// claim on the loop's timer, not on every wake.
    configured: bool,
    /// Its deliveries at the provider, at most `concurrency`.
    slots: Arc<tokio::sync::Semaphore>,
    /// Its delivery tasks, at the provider or writing their outcome: at
    /// most twice `concurrency`, which bounds what a crash sends again
    /// where a slot is given back early (`Slot::free`).
    tasks: Arc<tokio::sync::Semaphore>,
    /// Claimed, waiting for a slot, with when they were claimed.
    queue: std::collections::VecDeque<(std::time::Instant, Claimed)>,
    /// Its last claim took all there was to take: ask again when woken
    /// (ingest, a notice put back), on the loop's timer, or, if
    /// [`Lane::in_turn`], when one of its deliveries ends.
    dry: bool,
    /// Its last claim left due notices waiting for their turn behind an
    /// earlier one of their key (`rows::sql::in_turn`): the end of a
    /// delivery may let the next go. Otherwise a delivery's end frees
    /// nothing to claim, and the lane's store is not asked again for it
    /// (it was asked once or twice per delivery under a steady load).
    in_turn: bool,
    /// Not before this may the next delivery start, where its provider
    /// asked for a spacing (aimd).
    next_start: Option<std::time::Instant>,
}

/// What a lane can do with the notice at the head of its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Start it now.
    Start,
    /// Nothing queued.
    Empty,
    /// As many at the provider as its window (`limit`) or the lane's
    /// slots allow, or as many delivery tasks as the lane may hold: a
    /// freed slot or a finishing delivery wakes the loop.
    Full,
    /// The provider asked for a spacing: not before this.
    Spaced(std::time::Instant),
}

impl Lane {
    /// The one rule for starting a queued notice, used both to start
    /// deliveries and to decide whether the loop may sleep: at `now`, with
    /// `concurrency` slots in all, the provider's window at `limit` and
    /// its spacing at `gap`.
    fn next(
        &self,
        concurrency: usize,
        limit: usize,
        gap: std::time::Duration,
        now: std::time::Instant,
    ) -> Next {
        let in_flight = concurrency.saturating_sub(self.slots.available_permits());
        next_start(
            self.queue.len(),
            in_flight,
            self.tasks.available_permits(),
            limit.min(concurrency),
            gap,
            self.next_start,
            now,
        )
    }
}

/// [`Lane::next`] on plain values: `in_flight` deliveries at the
/// provider, at most `limit` at once (the provider's window, never more
/// than the slots), room for `tasks_left` more delivery tasks (those
/// writing an outcome count too), `not_before` the spacing's next start.
fn next_start(
    queued: usize,
    in_flight: usize,
    tasks_left: usize,
    limit: usize,
    gap: std::time::Duration,
    not_before: Option<std::time::Instant>,
    now: std::time::Instant,
) -> Next {
    if queued == 0 {
        return Next::Empty;
    }
    if in_flight >= limit || tasks_left == 0 {
        return Next::Full;
    }
    match not_before {
        Some(next) if !gap.is_zero() && next > now => Next::Spaced(next),
        _ => Next::Start,
    }
}

/// A delivery task ended: its lane claims again if a notice was waiting
/// for its turn (the next of that key may now go), and a failure is
/// logged.
fn delivered(
    lanes: &mut [Lane],
    done: Result<(crate::model::ChannelKind, crate::store::Result<()>), tokio::task::JoinError>,
) {
    match done {
        Ok((kind, result)) => {
            if let Some(lane) = lanes.iter_mut().find(|l| l.kind == kind) {
                lane.dry &= !lane.in_turn;
            }
            log_delivery_task(Ok(result));
        }
        Err(e) => log_delivery_task(Err(e)),
    }
}

/// A finished delivery task: its store error, or its panic, is logged (the
/// notice's lease runs out and it is claimed again).
fn log_delivery_task(done: Result<crate::store::Result<()>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not record a delivery; it will be retried when its lease ends")
        }
        Err(e) => tracing::error!(error = %e, "a delivery task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::{Channel, Receipt, recording::RecordingChannel};
    use crate::model::{ChannelKind, Destination, SystemClock};

    /// A provider that takes every request and answers none until let go.
    struct Stuck {
        kind: ChannelKind,
        holding: std::sync::atomic::AtomicUsize,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl Channel for Stuck {
        fn kind(&self) -> ChannelKind {
            self.kind
        }
        async fn deliver(&self, _: &Outgoing) -> Result<Receipt, DeliveryError> {
            self.holding
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.release.notified().await;
            Ok(Receipt::default())
        }
    }

    /// A store with account A1, contact alice, a Telegram and an ntfy
    /// destination, 20 events due now (a notice each to both), and a
    /// scheduler over `channels` with `concurrency` slots per channel.
    async fn fixture(concurrency: usize, channels: Channels) -> (Arc<dyn Store>, Arc<Scheduler>) {
        fixture_with(&format!("concurrency = {concurrency}\n"), channels).await
    }

    /// As [`fixture`], with `delivery` as the `[delivery]` table.
    async fn fixture_with(delivery: &str, channels: Channels) -> (Arc<dyn Store>, Arc<Scheduler>) {
        let config = Arc::new(
            crate::config::Config::parse(
                &format!("[delivery]\n{delivery}[types.\"line.down\"]\nshort = \"down\"\n"),
                "test",
            )
            .unwrap(),
        );
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(":memory:").unwrap());
        store.migrate().await.unwrap();
        let account = crate::model::Account {
            id: "A1".into(),
            name: "A".into(),
            timezone: None,
            security_level: crate::model::SecurityLevel::Standard,
            paranoid: false,
            defaults: Default::default(),
            prefixes: Vec::new(),
            postal_address: None,
        };
        store.put_account(&account).await.unwrap();
        let alice = crate::model::Contact {
            id: "alice".into(),
            name: "Alice".into(),
            timezone: None,
            prefs: Default::default(),
        };
        store.put_contact("A1", &alice).await.unwrap();
        for (id, uri) in [("d-tg", "telegram:42"), ("d-ntfy", "ntfy:alerts")] {
            let d = Destination {
                id: id.into(),
                contact: "alice".into(),
                uri: uri.parse().unwrap(),
                prefs: Default::default(),
                verified: true,
                unhealthy_since: None,
            };
            store.add_destination("A1", &d, None, None).await.unwrap();
        }
        let scheduler = Arc::new(Scheduler {
            store: store.clone(),
            channels,
            renderer: Arc::new(Renderer::new(&config).unwrap()),
            delivery: config.delivery.clone(),
            metrics: Arc::new(Metrics::new()),
            clock: Arc::new(SystemClock),
            wake: Default::default(),
            limits: Default::default(),
            pauses: Default::default(),
            windows: Default::default(),
            at_rest: Arc::new(crate::trust::seal::AtRest::new(&config.code_key)),
            outcomes: outcomes(store.clone()),
        });
        let now = Utc::now();
        let events = twenty("e", now);
        store
            .ingest(events, crate::ingest::planner(config.clone()))
            .await
            .unwrap();
        (store, scheduler)
    }

    /// Twenty events due at `now` for account A1, ids `{prefix}0`….
    fn twenty(prefix: &str, now: DateTime<Utc>) -> Vec<crate::model::Event> {
        (0..20)
            .map(|i| crate::model::Event {
                id: format!("{prefix}{i}"),
                type_name: "line.down".into(),
                account: "A1".into(),
                service: None,
                contact: None,
                key: format!("{prefix}k{i}"),
                priority: crate::model::Priority::Normal,
                category: "line".into(),
                occurred_at: now,
                not_before: None,
                expires_at: None,
                received_at: now,
                data: Default::default(),
                short: None,
                subject: None,
                body: None,
            })
            .collect()
    }

    /// Waits (up to 5 s) until `done` holds; the assertions after it say
    /// what should have happened.
    async fn settle(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The loop running over [`fixture`] with a recording ntfy channel
    /// only (the fixture's telegram destination has none).
    async fn running_with_ntfy() -> (
        Arc<RecordingChannel>,
        Arc<dyn Store>,
        Arc<Scheduler>,
        crate::shutdown::Shutdown,
        tokio::task::JoinHandle<()>,
    ) {
        let ntfy = Arc::new(RecordingChannel::new(ChannelKind::Ntfy));
        let mut channels = Channels::default();
        channels.insert(ntfy.clone());
        let (store, scheduler) = fixture(4, channels).await;
        let shutdown = crate::shutdown::Shutdown::default();
        let worker = tokio::spawn(scheduler.clone().run(shutdown.clone()));
        (ntfy, store, scheduler, shutdown, worker)
    }

    /// Ingests [`twenty`] more events, received at `at`.
    async fn ingest_twenty(store: &dyn Store, prefix: &str, at: DateTime<Utc>) {
        ingest(store, twenty(prefix, at)).await;
    }

    /// Ingests `events` with the fixture's one type.
    async fn ingest(store: &dyn Store, events: Vec<crate::model::Event>) {
        let config = Arc::new(
            crate::config::Config::parse("[types.\"line.down\"]\nshort = \"down\"\n", "test")
                .unwrap(),
        );
        store
            .ingest(events, crate::ingest::planner(config))
            .await
            .unwrap();
    }

    /// A provider that answers every request 429, wait an hour.
    struct Limited {
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Channel for Limited {
        fn kind(&self) -> ChannelKind {
            ChannelKind::Telegram
        }
        async fn deliver(&self, _: &Outgoing) -> Result<Receipt, DeliveryError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(DeliveryError::Transient {
                reason: "http_status",
                detail: "HTTP 429 Too Many Requests".into(),
                retry_after: Some(std::time::Duration::from_secs(3600)),
            })
        }
    }

    /// Claimed over and over without an outcome (each lease ran out, as
    /// when every delivery outlives its lease): once the attempts are
    /// spent the notice fails for good instead of looping for ever.
    #[tokio::test]
    async fn a_notice_whose_leases_keep_running_out_gives_up() {
        let tg = Arc::new(RecordingChannel::new(ChannelKind::Telegram));
        let ntfy = Arc::new(RecordingChannel::new(ChannelKind::Ntfy));
        let mut channels = Channels::default();
        channels.insert(tg.clone());
        channels.insert(ntfy.clone());
        let (store, scheduler) = fixture(8, channels).await;
        let mut now = Utc::now();
        for _ in 0..scheduler.delivery.max_attempts {
            now += Duration::seconds(1);
            let claimed = store.claim_due(now, now, 100).await.unwrap();
            assert_eq!(claimed.len(), 40, "each lease ends at once");
        }
        now += Duration::seconds(1);
        while scheduler.run_once(now).await.unwrap() > 0 {}
        assert!(tg.sent().is_empty() && ntfy.sent().is_empty());
        let by_state = store.count_by_state().await.unwrap();
        assert_eq!(by_state, vec![(State::Failed, 40)]);
        let failed = store
            .notifications_in(State::Failed, None, 100)
            .await
            .unwrap();
        assert!(failed.iter().all(|n| n.reason == Some(Reason::GaveUp)
            && n.attempts == scheduler.delivery.max_attempts + 1));
    }

    /// A provider that answers its first `busy` requests 429 (wait a
    /// second), then takes every one.
    struct Busy {
        busy: std::sync::atomic::AtomicUsize,
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Channel for Busy {
        fn kind(&self) -> ChannelKind {
            ChannelKind::Telegram
        }
        async fn deliver(&self, _: &Outgoing) -> Result<Receipt, DeliveryError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            match self.busy.fetch_update(SeqCst, SeqCst, |b| b.checked_sub(1)) {
                Ok(_) => Err(DeliveryError::Transient {
                    reason: "rate_limited",
                    detail: "HTTP 429 M_LIMIT_EXCEEDED".into(),
                    retry_after: Some(std::time::Duration::from_secs(1)),
                }),
                Err(_) => Ok(Receipt::default()),
            }
        }
    }

    /// Issue 14: a provider pacing kci with 429s (here 60 of them, against
    /// 2 attempts per notice) costs no customer their notice: every one
    /// is delivered, none failed, none charged an attempt for waiting.
    #[tokio::test]
    async fn a_provider_pacing_with_429s_costs_no_notice() {
        let busy = Arc::new(Busy {
            busy: 60.into(),
            calls: Default::default(),
        });
        let ntfy = Arc::new(RecordingChannel::new(ChannelKind::Ntfy));
        let mut channels = Channels::default();
        channels.insert(busy.clone());
        channels.insert(ntfy.clone());
        let (store, scheduler) =
            fixture_with("concurrency = 4\nmax_attempts = 2\n", channels).await;
        let mut now = Utc::now();
        for _ in 0..500 {
            now += Duration::seconds(2);
            scheduler.run_once(now).await.unwrap();
            if store.count_by_state().await.unwrap() == vec![(State::Sent, 40)] {
                break;
            }
        }
        assert_eq!(
            store.count_by_state().await.unwrap(),
            vec![(State::Sent, 40)]
        );
        let sent = store
            .notifications_in(State::Sent, None, 100)
            .await
            .unwrap();
        assert!(sent.iter().all(|n| n.attempts == 1), "{sent:?}");
        let paced: u32 = sent.iter().map(|n| n.paced).sum();
        assert_eq!(paced, 60, "every 429 counted as pacing");
        assert_eq!(busy.calls.load(std::sync::atomic::Ordering::SeqCst), 80);
    }

    #[tokio::test]
    async fn a_provider_asking_to_wait_pauses_its_whole_channel() {
        let limited = Arc::new(Limited {
            calls: Default::default(),
        });
        let ntfy = Arc::new(RecordingChannel::new(ChannelKind::Ntfy));
        let mut channels = Channels::default();
        channels.insert(limited.clone());
        channels.insert(ntfy.clone());
        let (_store, scheduler) = fixture(1, channels).await;
        let shutdown = crate::shutdown::Shutdown::default();
        let worker = tokio::spawn(scheduler.clone().run(shutdown.clone()));
        settle(|| ntfy.sent().len() == 20).await;
        assert_eq!(ntfy.sent().len(), 20, "ntfy goes on");
        // One 429, then the other 19 Telegram notices wait out the hour
        // instead of each asking again.
        assert_eq!(limited.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            scheduler
                .pauses
                .until(ChannelKind::Telegram, Utc::now())
                .is_some()
        );
        shutdown.trigger();
        worker.await.unwrap();
    }

    /// A notice for a channel with no configuration fails (`no_channel`)
    /// rather than wait for ever, also when it comes in after every lane
    /// went dry and while ingest keeps waking the loop.
    #[tokio::test]
    async fn a_notice_for_an_unconfigured_channel_fails_while_ingest_keeps_waking() {
        let (ntfy, store, scheduler, shutdown, worker) = running_with_ntfy().await;
        let states = |failed: i64, sent: i64| {
            let store = store.clone();
            async move {
                let mut by_state = store.count_by_state().await.unwrap();
                by_state.sort_by_key(|(s, _)| s.as_str());
                by_state == vec![(State::Failed, failed), (State::Sent, sent)]
            }
        };
        for _ in 0..500 {
            if states(20, 20).await {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(states(20, 20).await, "the first twenty settled");
        // Every lane has gone dry; twenty more come in while ingest wakes
        // the loop every few milliseconds.
        ingest_twenty(&*store, "more", Utc::now()).await;
        let waking = tokio::spawn({
            let wake = scheduler.wake.clone();
            async move {
                loop {
                    wake.notify_one();
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        });
        for _ in 0..500 {
            if states(40, 40).await {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        waking.abort();
        shutdown.trigger();
        worker.await.unwrap();
        assert!(
            states(40, 40).await,
            "{:?}",
            store.count_by_state().await.unwrap()
        );
        let failed = store
            .notifications_in(State::Failed, None, 100)
            .await
            .unwrap();
        assert!(
            failed
                .iter()
                .all(|n| n.reason == Some(Reason::NoChannel) && n.channel == ChannelKind::Telegram),
            "{failed:?}"
        );
        assert_eq!(ntfy.sent().len(), 40);
    }

    #[tokio::test]
    async fn a_stuck_provider_holds_up_only_its_own_channel() {
        let stuck = Arc::new(Stuck {
            kind: ChannelKind::Telegram,
            holding: Default::default(),
            release: tokio::sync::Notify::new(),
        });
        let ntfy = Arc::new(RecordingChannel::new(ChannelKind::Ntfy));
        let mut channels = Channels::default();
        channels.insert(stuck.clone());
        channels.insert(ntfy.clone());
        let (store, scheduler) = fixture(4, channels).await;
        let shutdown = crate::shutdown::Shutdown::default();
        let worker = tokio::spawn(scheduler.clone().run(shutdown.clone()));
        // Every ntfy notice goes out while Telegram holds all its slots.
        settle(|| ntfy.sent().len() == 20).await;
        assert_eq!(ntfy.sent().len(), 20);
        assert_eq!(
            stuck.holding.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "Telegram took only its own 4 slots"
        );
        // Let go: the rest of Telegram's queue drains too, and shutdown
        // waits for deliveries in flight.
        let release = tokio::spawn({
            let stuck = stuck.clone();
            async move {
                loop {
                    stuck.release.notify_waiters();
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        });
        settle(|| stuck.holding.load(std::sync::atomic::Ordering::SeqCst) == 20).await;
        shutdown.trigger();
        worker.await.unwrap();
        release.abort();
        let sent = store
            .count_by_state()
            .await
            .unwrap()
            .into_iter()
            .find(|(s, _)| *s == State::Sent)
            .map(|(_, n)| n);
        assert_eq!(sent, Some(40));
    }

    #[test]
    fn a_provider_asking_to_wait_costs_no_attempt() {
        let d = crate::config::DeliveryConfig {
            max_attempts: 3,
            max_paced: 5,
            ..Default::default()
        };
        let at = Utc::now();
        let secs = std::time::Duration::from_secs;
        let transient = |reason, after: Option<u64>| DeliveryError::Transient {
            reason,
            detail: "HTTP 4xx/5xx".into(),
            retry_after: after.map(secs),
        };
        let refused = DeliveryError::Permanent {
            reason: "http_status",
            detail: "HTTP 404".into(),
        };
        // (attempts, paced, error) -> the finish, and how long it waits.
        let rows: &[(u32, u32, DeliveryError, &str, Option<i64>)] = &[
            (1, 0, refused.clone(), "failed:rejected", None),
            (1, 0, transient("rate_limited", Some(7)), "paced", Some(7)),
            // At the last attempt a 429 is still pacing, not the end.
            (3, 4, transient("rate_limited", Some(7)), "paced", Some(7)),
            (
                3,
                5,
                transient("rate_limited", Some(7)),
                "failed:gave_up",
                None,
            ),
            // No word from the provider: a backoff of its own, by paced.
            (1, 2, transient("rate_limited", None), "paced", Some(20)),
            (1, 0, transient("http_status", None), "retry", Some(5)),
            // A 503's Retry-After, when longer than the backoff.
            (1, 0, transient("http_status", Some(60)), "retry", Some(60)),
            // A Retry-After of a year: no longer than the longest backoff.
            (
                1,
                0,
                transient("rate_limited", Some(31_536_000)),
                "paced",
                Some(3600),
            ),
            (3, 0, transient("http_status", None), "failed:gave_up", None),
        ];
        for (attempts, paced, e, want, wait) in rows {
            let f = after_failure(&d, *attempts, *paced, e, at, 0.0);
            let (got, due) = match &f {
                Finish::Paced { due_at, .. } => ("paced".to_string(), Some(*due_at)),
                Finish::Retry { due_at, .. } => ("retry".to_string(), Some(*due_at)),
                Finish::Failed { reason, .. } => (format!("failed:{}", reason.as_str()), None),
                other => (format!("{other:?}"), None),
            };
            assert_eq!(&got, want, "{attempts} {paced} {e}");
            if let (Some(due), Some(w)) = (due, wait) {
                // jitter 0: backoff halves; the provider's wait is kept.
                let want_wait = if e.is_pacing() && e.retry_after().is_some() || *w >= 60 {
                    *w * 1000
                } else {
                    *w * 500
                };
                assert_eq!(
                    (due - at).num_milliseconds(),
                    want_wait,
                    "{attempts} {paced} {e}"
                );
            }
        }
    }

    /// A webhook receiver (any customer's server) asking to wait holds up
    /// only its own notice, never every customer's webhooks; a provider's
    /// wait pauses its channel, at most for the longest backoff.
    #[test]
    fn only_a_channels_one_provider_pauses_it() {
        use crate::model::ChannelKind::*;
        let d = crate::config::DeliveryConfig::default();
        let wait = |secs| DeliveryError::Transient {
            reason: "rate_limited",
            detail: "HTTP 429".into(),
            retry_after: Some(std::time::Duration::from_secs(secs)),
        };
        let silent = DeliveryError::Transient {
            reason: "http_status",
            detail: "HTTP 503".into(),
            retry_after: None,
        };
        for (kind, e, want) in [
            (Telegram, wait(7), Some(7)),
            (Sms, wait(86_400), Some(3600)),
            (Webhook, wait(86_400), None),
            (Email, wait(60), None),
            (Matrix, silent, None),
        ] {
            assert_eq!(
                channel_pause(&d, kind, &e).map(|w| w.num_seconds()),
                want,
                "{kind:?}"
            );
        }
    }

    /// The loop asks the store what comes due next only when its last
    /// answer may be wrong. A notice stored after the read rang the
    /// doorbell (which drops the answer) unless it comes due no earlier
    /// than the loop said it would look by itself: so the answer holds
    /// until the earliest of the sleeps since the read ends, and not once
    /// the due time it named has come.
    #[test]
    fn what_comes_due_next_is_asked_again_only_when_the_answer_may_be_wrong() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let (ten, ten_half, eleven) = (
            t("2026-03-22T10:00:00Z"),
            t("2026-03-22T10:00:00.500Z"),
            t("2026-03-22T10:00:01Z"),
        );
        let later = t("2026-03-22T10:05:00Z");
        // (answer, sleeps since the read, looked, now) → holds
        let cases = [
            // Not slept on yet: the read is being used.
            (Some(later), vec![], ten, ten, true),
            (None, vec![], ten, ten, true),
            // Within the sleep that followed the read.
            (Some(later), vec![eleven], ten_half, ten_half, true),
            (None, vec![eleven], ten_half, ten_half, true),
            // That sleep's end reached: a notice due from then on rang no bell.
            (Some(later), vec![eleven], eleven, eleven, false),
            (None, vec![eleven], eleven, eleven, false),
            // A shorter sleep since (a spacing, a delivery's end) narrows it.
            (
                Some(later),
                vec![eleven, ten_half],
                ten_half,
                ten_half,
                false,
            ),
            (
                Some(later),
                vec![ten_half, eleven],
                ten_half,
                ten_half,
                false,
            ),
            (Some(later), vec![eleven, ten_half], ten, ten, true),
            // The due time it named has come: the claims took it, and what
            // follows it the store must say.
            (Some(ten_half), vec![eleven], ten_half, ten_half, false),
            (Some(ten_half), vec![eleven], ten, ten, true),
        ];
        for (next, sleeps, looked, now, holds) in cases {
            let mut known = KnownDue::read(next);
            for &until in &sleeps {
                known.sleeping_until(until);
            }
            assert_eq!(
                known.holds(looked, now),
                holds.then_some(next),
                "{next:?} after sleeps until {sleeps:?}, looked {looked}, now {now}"
            );
        }
    }

    /// The rule that starts a lane's queued notices, which the loop also
    /// asks before it sleeps. Stop 32's stall: a lane's deliveries ended
    /// after it had looked (slots full), the loop collected them and went
    /// to sleep for a second with notices queued and every slot free. That
    /// state is the `Start` rows below, and the loop never sleeps on one.
    #[test]
    fn a_lane_starts_its_next_notice_only_when_slot_window_and_spacing_allow() {
        use std::time::{Duration, Instant};
        let now = Instant::now();
        let ms = Duration::from_millis;
        let zero = Duration::ZERO;
        // (queued, in flight, tasks left, window limit, gap, not before) → next
        let table = [
            // The stall: queued, all 4 slots free again.
            ((3, 0, 8, 4, zero, None), Next::Start),
            ((1, 3, 5, 4, zero, None), Next::Start),
            ((0, 0, 8, 4, zero, None), Next::Empty),
            // Every slot taken.
            ((5, 4, 4, 4, zero, None), Next::Full),
            // The provider's window is narrower than the slots.
            ((5, 2, 6, 2, zero, None), Next::Full),
            ((5, 1, 7, 2, zero, None), Next::Start),
            // Slots given back early (a webhook answered), their outcomes
            // still being written: a free slot starts the next …
            ((5, 0, 1, 4, zero, None), Next::Start),
            // … until the lane holds as many tasks as it may.
            ((5, 0, 0, 4, zero, None), Next::Full),
            ((0, 0, 0, 4, zero, None), Next::Empty),
            // A spacing: not before its next start, then at once.
            (
                (5, 0, 8, 4, ms(50), Some(now + ms(20))),
                Next::Spaced(now + ms(20)),
            ),
            ((5, 0, 8, 4, ms(50), Some(now)), Next::Start),
            ((5, 0, 8, 4, ms(50), Some(now - ms(1))), Next::Start),
            ((5, 0, 8, 4, ms(50), None), Next::Start),
            // No spacing asked for: an old next start does not hold it.
            ((5, 0, 8, 4, zero, Some(now + ms(20))), Next::Start),
            // Full wins over spaced: the ending delivery wakes the loop.
            ((5, 4, 4, 4, ms(50), Some(now + ms(20))), Next::Full),
            ((5, 0, 0, 4, ms(50), Some(now + ms(20))), Next::Full),
        ];
        for ((queued, in_flight, tasks_left, limit, gap, not_before), want) in table {
            assert_eq!(
                next_start(queued, in_flight, tasks_left, limit, gap, not_before, now),
                want,
                "queued {queued}, in flight {in_flight}, tasks left {tasks_left}, limit {limit}, gap {gap:?}, not before {not_before:?}"
            );
        }
        // On a lane: its slots are what it counts, and a window wider
        // than the slots is held to them.
        let mut lane = Lane {
            kind: ChannelKind::Webhook,
            configured: true,
            slots: Arc::new(tokio::sync::Semaphore::new(2)),
            tasks: Arc::new(tokio::sync::Semaphore::new(4)),
            queue: Default::default(),
            dry: false,
            in_turn: false,
            next_start: None,
        };
        assert_eq!(lane.next(2, 2, zero, now), Next::Empty);
        let taken = lane.slots.clone().try_acquire_many_owned(2).unwrap();
        let dest = Destination {
            id: "d".into(),
            contact: "c".into(),
            uri: "https://hooks.example/x".parse().unwrap(),
            prefs: Default::default(),
            verified: true,
            unhealthy_since: None,
        };
        let message = crate::model::Message {
            short: "s".into(),
            subject: "s".into(),
            body: "b".into(),
            encrypt_to: None,
        };
        let notice = crate::model::Notification::own(
            "A1",
            &dest,
            "t",
            crate::model::Priority::Normal,
            message,
            Utc::now(),
            None,
        );
        let claimed = Claimed {
            notification: notice,
            lease_until: None,
            event: None,
            paranoid: false,
            active_key: None,
            account: None,
            signing: None,
        };
        lane.queue.push_back((now, claimed));
        assert_eq!(lane.next(2, 2, zero, now), Next::Full);
        assert_eq!(lane.next(2, 8, zero, now), Next::Full);
        drop(taken);
        assert_eq!(lane.next(2, 2, zero, now), Next::Start);
        // Four tasks writing outcomes, their slots given back: full.
        let writing = lane.tasks.clone().try_acquire_many_owned(4).unwrap();
        assert_eq!(lane.next(2, 2, zero, now), Next::Full);
        drop(writing);
        assert_eq!(lane.next(2, 2, zero, now), Next::Start);
    }

    #[tokio::test]
    async fn a_slot_given_back_early_frees_once_and_rings_the_loop() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let freed = Arc::new(tokio::sync::Notify::new());
        let mut slot = Slot(Some((
            slots.clone().try_acquire_owned().unwrap(),
            freed.clone(),
        )));
        assert_eq!(slots.available_permits(), 0);
        slot.free();
        assert_eq!(slots.available_permits(), 1, "given back");
        // The ring is kept for a loop not yet waiting.
        tokio::time::timeout(std::time::Duration::from_secs(1), freed.notified())
            .await
            .expect("the loop is woken");
        slot.free();
        assert_eq!(slots.available_permits(), 1, "given back once");
        let rang_again =
            tokio::time::timeout(std::time::Duration::from_millis(50), freed.notified()).await;
        assert!(rang_again.is_err(), "a second free rings nothing");
        // Without a slot (`kci simulate`), nothing to give back.
        Slot::default().free();
    }

    /// Claims the store was asked for so far (its relaxed writes).
    fn claims(store: &dyn Store) -> u64 {
        crate::metrics::Metrics::new()
            .with_store(store)
            .value_of("kci_store_write_seconds_count{durability=\"relaxed\"}")
    }

    /// A steady stream of notices held for later (quiet hours,
    /// `not_before`) rings the loop whenever it is at work; each such
    /// round used to be rung by those stored during it, so the loop went
    /// round, claiming, for as long as the stream lasted. Now it sleeps
    /// through them: at most its timer's rounds (one a second, each
    /// claiming on every lane) — and a notice due now still wakes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_held_for_later_keep_the_loop_asleep() {
        let (ntfy, store, scheduler, shutdown, worker) = running_with_ntfy().await;
        settle(|| ntfy.sent().len() == 20).await;
        assert_eq!(ntfy.sent().len(), 20, "the first twenty sent");
        let before = claims(&*store);
        let started = std::time::Instant::now();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ringing = std::thread::spawn({
            let (wake, stop) = (scheduler.wake.clone(), stop.clone());
            let held = Utc::now() + Duration::days(365);
            move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    wake.due(held);
                    std::thread::yield_now();
                }
            }
        });
        // Woken now and then (API calls, say): at work, it hears the
        // stream. Each of these rounds claims on the one configured lane.
        let woken = 12;
        for _ in 0..woken {
            scheduler.wake.notify_one();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let asked = claims(&*store) - before;
        // Those, and each of the timer's rounds, claiming on every lane.
        let rounds = started.elapsed().as_secs() + 2;
        let bound = woken + rounds * ChannelKind::ALL.len() as u64;
        assert!(
            asked <= bound,
            "{asked} claims while held notices rang, at most {bound}"
        );
        // Twenty due now, stored while it still rings for later ones.
        let due = Utc::now();
        ingest_twenty(&*store, "now", due).await;
        scheduler.wake.due(due);
        settle(|| ntfy.sent().len() == 40).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        ringing.join().unwrap();
        shutdown.trigger();
        worker.await.unwrap();
        assert_eq!(ntfy.sent().len(), 40, "the twenty due now were sent");
    }

    /// Notices stored one at a time, each sent before the next: a claim
    /// each, and the timer's rounds. The loop used to claim again after a
    /// claim that took something, and again at each delivery's end,
    /// though the claim had taken all there was: about three claims a
    /// notice under a steady stream, each a turn of the store's writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notice_at_a_time_costs_one_claim() {
        let (ntfy, store, scheduler, shutdown, worker) = running_with_ntfy().await;
        settle(|| ntfy.sent().len() == 20).await;
        let before = claims(&*store);
        let started = std::time::Instant::now();
        let stream = 30;
        for i in 0..stream {
            let due = Utc::now();
            let one = twenty(&format!("one{i}-"), due).swap_remove(0);
            ingest(&*store, vec![one]).await;
            scheduler.wake.due(due);
            settle(|| ntfy.sent().len() == 21 + i).await;
            assert_eq!(ntfy.sent().len(), 21 + i, "notice {i} sent");
        }
        let asked = claims(&*store) - before;
        let rounds = started.elapsed().as_secs() + 2;
        let bound = stream as u64 + rounds * ChannelKind::ALL.len() as u64;
        assert!(
            asked <= bound,
            "{asked} claims for {stream} notices, at most {bound}"
        );
        shutdown.trigger();
        worker.await.unwrap();
    }

    /// Eight notices of one key, due at once, go one after another, in
    /// order: each claim leaves the rest waiting for their turn, and each
    /// delivery's end claims the next, without waiting for the loop's
    /// one-second sweep (eight of those would outlast `settle`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keys_notices_follow_each_other_without_the_timer() {
        let (ntfy, store, scheduler, shutdown, worker) = running_with_ntfy().await;
        settle(|| ntfy.sent().len() == 20).await;
        let line: Vec<_> = twenty("k", Utc::now())
            .into_iter()
            .take(8)
            .map(|mut e| {
                e.key = "one-key".into();
                e
            })
            .collect();
        ingest(&*store, line).await;
        scheduler.wake.notify_one();
        settle(|| ntfy.sent().len() == 28).await;
        let sent: Vec<String> = ntfy.sent()[20..]
            .iter()
            .filter_map(|o| o.notification.event.clone())
            .collect();
        let planned: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        assert_eq!(sent, planned, "all eight, in the order planned");
        shutdown.trigger();
        worker.await.unwrap();
    }

    #[test]
    fn only_webhooks_give_their_slot_back_before_the_outcome() {
        for kind in ChannelKind::ALL {
            assert_eq!(kind.drops_repeats(), kind == ChannelKind::Webhook, "{kind}");
        }
    }

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
