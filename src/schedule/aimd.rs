//! How many deliveries a channel keeps in flight to its provider: additive
//! increase, multiplicative decrease, as TCP finds a path's capacity.
//!
//! A provider that asks kci to slow down (HTTP 429, see
//! [`crate::channels::DeliveryError::is_pacing`]) halves the channel's
//! window; each delivery it accepts widens the window by one over its
//! width, so a full window of successes widens it by one. Requests
//! already in flight when the window was halved were sent under the old
//! width: their 429s say nothing new and do not halve it again (one
//! decrease per window, as TCP reacts once per round trip), which is what
//! keeps a burst's worth of 429s from collapsing the window to its floor.
//! The requests per delivered notice then stay near one instead of
//! hammering a provider that has already said no.
//!
//! A window of one may still be too fast: a provider limiting a *rate*
//! (Synapse's `rc_message`, a token bucket) turns away every other
//! request of one sender that waits for each answer. So a 429 also sets a
//! spacing between request starts — at least the wait the provider asked
//! for, and twice the spacing before, so a provider that keeps answering
//! 429 is asked ever less often — and each accepted delivery shortens it
//! by a small fraction, probing for room again: the same shape of
//! increase and decrease, on the rate. While a spacing holds, no more
//! deliveries are in flight than that rate needs (Little's law: the time
//! a delivery takes over the spacing, at least one): a provider that answers
//! 429 slowly (Synapse waits half a second first) would otherwise see a
//! whole half-second of requests sent into its refusal.
//!
//! Pure: the scheduler keeps one [`Window`] per channel whose notices all
//! go to one provider and asks it before starting a delivery.

use std::time::Duration;

/// Each accepted delivery shortens the spacing by this fraction.
const GAP_DECAY: f64 = 0.01;
/// A spacing shorter than this is none.
const GAP_FLOOR: f64 = 0.001;
/// The longest spacing a provider can teach (a longer wait it asks for
/// is its `Retry-After` pause, not a spacing kept afterwards).
const GAP_CEILING: f64 = 60.0;

/// One channel's congestion window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The width, fractional so that increases of `1/width` add up.
    width: f64,
    /// The configured `concurrency`: the window never grows past it.
    ceiling: usize,
    /// Bumped by each decrease: a delivery started before it carries an
    /// older epoch.
    epoch: u64,
    /// Seconds between the starts of two deliveries (0: none).
    gap: f64,
    /// Smoothed seconds an accepted delivery takes (0: none seen yet).
    srtt: f64,
}

/// What a delivery came to, as far as the window cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took it.
    Accepted,
    /// The provider asked to slow down, and to wait this long if it said.
    Paced(Option<Duration>),
    /// Anything else (a refusal, a timeout, a 5xx): says nothing about
    /// the provider's rate.
    Other,
}

impl Window {
    /// A window as wide as `ceiling` (at least one): a provider is
    /// assumed to take what kci is configured to send until it says
    /// otherwise.
    pub fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Window {
            width: ceiling as f64,
            ceiling,
            epoch: 0,
            gap: 0.0,
            srtt: 0.0,
        }
    }

    /// How many deliveries may be in flight now (at least one, so a
    /// channel always makes progress).
    pub fn limit(&self) -> usize {
        let width = (self.width.floor() as usize).clamp(1, self.ceiling);
        if self.gap > 0.0 && self.srtt > 0.0 {
            width.min(((self.srtt / self.gap).ceil() as usize).max(1))
        } else {
            width
        }
    }

    /// The epoch a delivery starting now carries, handed back to
    /// [`Window::record`] with its outcome.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How long to leave between the starts of two deliveries.
    pub fn gap(&self) -> Duration {
        Duration::from_secs_f64(self.gap)
    }

    /// An accepted delivery took `took`, start to answer (smoothed as
    /// TCP smooths its round-trip time, by eighths).
    pub fn took(&mut self, took: Duration) {
        let t = took.as_secs_f64();
        self.srtt = if self.srtt == 0.0 {
            t
        } else {
            0.875 * self.srtt + 0.125 * t
        };
    }

    /// A delivery started at `epoch` came to `outcome`.
    pub fn record(&mut self, epoch: u64, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => {
                self.width = (self.width + 1.0 / self.width).min(self.ceiling as f64);
                self.gap *= 1.0 - GAP_DECAY;
                if self.gap < GAP_FLOOR {
                    self.gap = 0.0;
                }
            }
            Outcome::Paced(wait) if epoch == self.epoch => {
                self.width = (self.width / 2.0).max(1.0);
                self.epoch += 1;
                let asked = wait.map_or(0.0, |w| w.as_secs_f64());
                self.gap = (2.0 * self.gap)
                    .max(asked)
                    .clamp(GAP_FLOOR * 10.0, GAP_CEILING);
            }
            Outcome::Paced(_) | Outcome::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    /// Each row: the ceiling, the outcomes in order (each with the epoch
    /// it started at: `None` = the current one), the limit after.
    #[test]
    fn the_window_follows_the_provider() {
        type Row = (usize, &'static [(Outcome, Option<u64>)], usize);
        let rows: &[Row] = &[
            // Untouched: as wide as configured.
            (32, &[], 32),
            // Successes never grow it past the ceiling.
            (4, &[(Accepted, None); 10], 4),
            // A 429 halves it.
            (32, &[(Paced(None), None)], 16),
            // A burst of 429s from requests sent under the old width halve
            // it once, not to the floor.
            (32, &[(Paced(None), Some(0)); 20], 16),
            // A 429 to a request sent after the first decrease halves it again.
            (32, &[(Paced(None), Some(0)), (Paced(None), Some(1))], 8),
            // Never below one: kci always makes progress.
            (
                4,
                &[
                    (Paced(None), Some(0)),
                    (Paced(None), Some(1)),
                    (Paced(None), Some(2)),
                    (Paced(None), Some(3)),
                ],
                1,
            ),
            // Failures that are not pacing do not move it.
            (8, &[(Other, None); 5], 8),
            // Zero configured is read as one.
            (0, &[], 1),
        ];
        for (ceiling, outcomes, want) in rows {
            let mut w = Window::new(*ceiling);
            for (outcome, epoch) in *outcomes {
                let e = epoch.unwrap_or(w.epoch());
                w.record(e, *outcome);
            }
            assert_eq!(w.limit(), *want, "ceiling {ceiling}, {outcomes:?}");
        }
    }

    /// After a halving, a window's worth of successes widens it by one:
    /// additive increase.
    #[test]
    fn a_window_of_successes_widens_it_by_one() {
        let mut w = Window::new(32);
        w.record(0, Paced(None));
        assert_eq!(w.limit(), 16);
        for _ in 0..16 {
            w.record(w.epoch(), Accepted);
        }
        assert_eq!(w.limit(), 16, "just short of one more");
        w.record(w.epoch(), Accepted);
        assert_eq!(w.limit(), 17);
        // And it recovers all the way given time.
        for _ in 0..1000 {
            w.record(w.epoch(), Accepted);
        }
        assert_eq!(w.limit(), 32);
    }

    /// A provider that takes about `capacity` at a time and answers the
    /// rest with 429: the window settles around it, and most requests
    /// are accepted (the requests per delivered notice stay near one).
    #[test]
    fn the_window_settles_near_what_the_provider_takes() {
        for capacity in [1usize, 3, 10] {
            let mut w = Window::new(64);
            let (mut sent, mut accepted) = (0u64, 0u64);
            for _round in 0..500 {
                let epoch = w.epoch();
                let n = w.limit();
                for i in 0..n {
                    sent += 1;
                    if i < capacity {
                        accepted += 1;
                        w.record(epoch, Accepted);
                    } else {
                        w.record(epoch, Paced(None));
                    }
                }
            }
            let per_notice = sent as f64 / accepted as f64;
            // At a fixed 64 in flight it would be 64 / capacity.
            let bound = 1.0 + 1.0 / capacity as f64;
            assert!(
                per_notice <= bound,
                "capacity {capacity}: {per_notice:.2} requests per accepted notice"
            );
            assert!(
                w.limit() <= 2 * capacity + 1,
                "capacity {capacity}: {}",
                w.limit()
            );
        }
    }

    /// A provider limiting a rate (a token bucket of `burst` refilled at
    /// `rate` a second, as Synapse's `rc_message`), taking `rtt` to accept
    /// and `refusal` to refuse (Synapse waits half a second), answering 429 with
    /// the time until a slot frees. kci starts deliveries as the window
    /// and its spacing allow and pauses for what a 429 asks. Most
    /// requests are accepted, and the provider's rate is used.
    #[test]
    fn the_spacing_settles_near_a_providers_rate() {
        // Each: the rate, the burst, the time to accept, the time to
        // refuse (Synapse's half second; elsewhere as quick as a yes).
        for (rate, burst, rtt, refusal) in [
            (25.0f64, 10.0f64, 0.03f64, 0.5f64),
            (25.0, 10.0, 0.002, 0.5),
            (5.0, 3.0, 0.03, 0.5),
            (0.2, 10.0, 0.03, 0.5),
            (200.0, 20.0, 0.004, 0.004),
            (30.0, 1.0, 0.05, 0.05),
        ] {
            let mut w = Window::new(32);
            let (mut t, mut level, mut last) = (0.0f64, 0.0f64, 0.0f64);
            let (mut next_start, mut paused) = (0.0f64, 0.0f64);
            // In flight: when the answer comes, its epoch, what it says.
            let mut inflight: Vec<(f64, u64, Outcome)> = Vec::new();
            let (mut sent, mut accepted) = (0u64, 0u64);
            let want = 1000u64;
            while accepted < want {
                while inflight.len() < w.limit() && t >= next_start && t >= paused {
                    // The provider decides as the request arrives.
                    let arrives = t + rtt / 2.0;
                    level = (level - (arrives - last) * rate).max(0.0);
                    last = arrives;
                    sent += 1;
                    if level + 1.0 <= burst {
                        level += 1.0;
                        inflight.push((t + rtt, w.epoch(), Accepted));
                    } else {
                        let wait = (level + 1.0 - burst) / rate;
                        let outcome = Paced(Some(Duration::from_secs_f64(wait)));
                        inflight.push((arrives + refusal, w.epoch(), outcome));
                    }
                    next_start = t + w.gap().as_secs_f64();
                }
                // On to the next answer, or the next start allowed.
                let answer = inflight.iter().map(|i| i.0).fold(f64::MAX, f64::min);
                let can_start = if inflight.len() < w.limit() {
                    next_start.max(paused)
                } else {
                    f64::MAX
                };
                t = answer.min(can_start).max(t);
                inflight.retain(|&(at, epoch, outcome)| {
                    if at > t {
                        return true;
                    }
                    if let Paced(Some(wait)) = outcome {
                        paused = paused.max(at + wait.as_secs_f64());
                    }
                    if outcome == Accepted {
                        accepted += 1;
                        w.took(Duration::from_secs_f64(rtt));
                    }
                    w.record(epoch, outcome);
                    false
                });
            }
            let per_notice = sent as f64 / accepted as f64;
            let used = accepted as f64 / (t * rate + burst);
            eprintln!(
                "{rate}/s burst {burst} rtt {rtt}: {per_notice:.3} requests per notice, {used:.2} of the rate"
            );
            assert!(
                per_notice <= 1.1,
                "{rate}/s burst {burst}: {per_notice:.3} requests per accepted notice"
            );
            // A bucket of one refuses any probe past the rate at once:
            // less of it is used there (0.69), the rest at 0.83 or more.
            assert!(
                used >= 0.65,
                "{rate}/s burst {burst}: {used:.2} of the provider's rate used"
            );
        }
    }
}
