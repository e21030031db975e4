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
//! Pure: the scheduler keeps one [`Window`] per channel whose notices all
//! go to one provider and asks it before starting a delivery.

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
}

/// What a delivery came to, as far as the window cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took it.
    Accepted,
    /// The provider asked to slow down.
    Paced,
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
        }
    }

    /// How many deliveries may be in flight now (at least one, so a
    /// channel always makes progress).
    pub fn limit(&self) -> usize {
        (self.width.floor() as usize).clamp(1, self.ceiling)
    }

    /// The epoch a delivery starting now carries, handed back to
    /// [`Window::record`] with its outcome.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A delivery started at `epoch` came to `outcome`.
    pub fn record(&mut self, epoch: u64, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => {
                self.width = (self.width + 1.0 / self.width).min(self.ceiling as f64);
            }
            Outcome::Paced if epoch == self.epoch => {
                self.width = (self.width / 2.0).max(1.0);
                self.epoch += 1;
            }
            Outcome::Paced | Outcome::Other => {}
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
            (32, &[(Paced, None)], 16),
            // A burst of 429s from requests sent under the old width halve
            // it once, not to the floor.
            (32, &[(Paced, Some(0)); 20], 16),
            // A 429 to a request sent after the first decrease halves it again.
            (32, &[(Paced, Some(0)), (Paced, Some(1))], 8),
            // Never below one: kci always makes progress.
            (
                4,
                &[
                    (Paced, Some(0)),
                    (Paced, Some(1)),
                    (Paced, Some(2)),
                    (Paced, Some(3)),
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
        w.record(0, Paced);
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
                        w.record(epoch, Paced);
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
}
