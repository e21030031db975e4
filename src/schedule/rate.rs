//! Provider rate limits per channel (`[channels.sms] rate = "10/s"`), by
//! the generic cell rate algorithm: up to `count` notices at once, then one
//! every `per / count`. A notice over the limit is not dropped: it is given
//! the next free slot and goes back to the durable queue until then. The
//! scheduler hands out slots urgent first, and anything arriving later with
//! an earlier due time goes before what is already queued.
//!
//! The limit is the provider's, not a node's: the algorithm's one piece of
//! state (the theoretical arrival time) lives in the store, read and
//! written in one transaction per claimed batch ([`crate::store::Store::reserve_rate`]),
//! so any number of nodes together stay within it. This file is the
//! arithmetic alone.

use crate::model::Cap;
use chrono::{DateTime, Duration, Utc};

/// One channel's rate, as the algorithm reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// The time between two notices at the sustained rate.
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run (the
    /// burst).
    window: Duration,
}

impl Gcra {
    pub fn new(rate: Cap) -> Self {
        // Whole milliseconds, as the store keeps due times.
        let per = rate.per.chrono().num_milliseconds().max(1);
        let interval = Duration::milliseconds((per / i64::from(rate.count.max(1))).max(1));
        Self {
            interval,
            window: Duration::milliseconds(per) - interval,
        }
    }

    /// `n` notices asking at `now`, the theoretical arrival time being
    /// `tat`: the new arrival time, and for each notice in order `None`
    /// (go now) or the slot it is given.
    pub fn reserve(
        &self,
        tat: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        n: usize,
    ) -> (DateTime<Utc>, Vec<Option<DateTime<Utc>>>) {
        let mut tat = tat.map_or(now, |t| t.max(now));
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let t = tat;
            tat = t + self.interval;
            slots.push((t - now > self.window).then(|| t - self.window));
        }
        (tat, slots)
    }

    /// How many slots are reserved beyond `now` when the arrival time is
    /// `tat`: the queue for this channel.
    pub fn backlog(&self, tat: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
        // Reserved slots lie between now and the next free one.
        let next_free = (tat - self.window - now).num_milliseconds();
        let step = self.interval.num_milliseconds().max(1);
        ((next_free + step - 1) / step - 1).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_spaces_and_reserves_slots_in_order() {
        let l = Gcra::new("4/s".parse().unwrap());
        let t0: DateTime<Utc> = "2026-03-24T10:00:00Z".parse().unwrap();
        let ms = |n: i64| t0 + Duration::milliseconds(n);
        let (tat, slots) = l.reserve(None, t0, 4);
        assert_eq!(slots, vec![None; 4]);
        assert_eq!(l.backlog(tat, t0), 0);
        // Over the rate: successive free slots, a quarter second apart.
        let (tat, slots) = l.reserve(Some(tat), t0, 2);
        assert_eq!(slots, vec![Some(ms(250)), Some(ms(500))]);
        assert_eq!(l.backlog(tat, t0), 2);
        assert_eq!(l.backlog(tat, ms(300)), 1);
        // Later, after the reserved slots, a new one goes in the next gap.
        let (tat, slots) = l.reserve(Some(tat), ms(2000), 1);
        assert_eq!(slots, vec![None]);
        assert_eq!(l.backlog(tat, ms(2000)), 0);
    }

    /// Asking in one batch or one at a time comes to the same slots: the
    /// nodes sharing the state may ask in any grouping.
    #[test]
    fn a_batch_is_the_same_as_one_at_a_time() {
        let l = Gcra::new("10/s".parse().unwrap());
        let t0: DateTime<Utc> = "2026-03-24T10:00:00Z".parse().unwrap();
        let (batch_tat, batch) = l.reserve(None, t0, 25);
        let mut tat = None;
        let mut single = Vec::new();
        for _ in 0..25 {
            let (t, s) = l.reserve(tat, t0, 1);
            tat = Some(t);
            single.extend(s);
        }
        assert_eq!(batch, single);
        assert_eq!(Some(batch_tat), tat);
        // Ten at once, then one every 100 ms.
        assert_eq!(batch.iter().filter(|s| s.is_none()).count(), 10);
        assert_eq!(batch[10], Some(t0 + Duration::milliseconds(100)));
        assert_eq!(batch[24], Some(t0 + Duration::milliseconds(1500)));
    }

    /// However the notices are spread over asks, no more go than one
    /// burst and then the sustained rate: by any time `t`, at most the
    /// burst plus `(t - t0) / interval` (the bound nodes sharing the
    /// state rely on: together, they send what one node would).
    #[test]
    fn never_more_than_a_burst_and_the_rate() {
        let l = Gcra::new("10/s".parse().unwrap());
        let t0: DateTime<Utc> = "2026-03-24T10:00:00Z".parse().unwrap();
        let mut tat = None;
        let mut sent = Vec::new();
        // Asks of 1..7 notices every 37 ms for 5 s.
        for step in 0..135i64 {
            let now = t0 + Duration::milliseconds(step * 37);
            let (t, slots) = l.reserve(tat, now, (step % 7 + 1) as usize);
            tat = Some(t);
            sent.extend(slots.into_iter().map(|s| s.unwrap_or(now)));
        }
        sent.sort();
        for (i, t) in sent.iter().enumerate() {
            let bound = 10 + (*t - t0).num_milliseconds() / 100;
            assert!((i as i64) < bound, "{} notices by {t}", i + 1);
        }
    }
}
