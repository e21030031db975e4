//! Provider rate limits per channel (`[channels.sms] rate = "10/s"`), by
//! the generic cell rate algorithm: up to `count` notices at once, then one
//! every `per / count`. A notice over the limit is not dropped: it is given
//! the next free slot and goes back to the durable queue until then. The
//! scheduler hands out slots urgent first, and anything arriving later with
//! an earlier due time goes before what is already queued.

use crate::model::Cap;
use chrono::{DateTime, Duration, Utc};
use std::sync::Mutex;

pub struct Limiter {
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run.
    window: Duration,
    tat: Mutex<Option<DateTime<Utc>>>,
}

impl Limiter {
    pub fn new(rate: Cap) -> Self {
        // Whole milliseconds, as the store keeps due times.
        let per = rate.per.chrono().num_milliseconds().max(1);
        let interval = Duration::milliseconds((per / i64::from(rate.count.max(1))).max(1));
        Self {
            interval,
            window: Duration::milliseconds(per) - interval,
            tat: Mutex::new(None),
        }
    }

    /// Takes a slot at `now` if the rate allows, or reserves the next free
    /// one and says when it is.
    pub fn acquire(&self, now: DateTime<Utc>) -> Result<(), DateTime<Utc>> {
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let t = tat.map_or(now, |t| t.max(now));
        *tat = Some(t + self.interval);
        if t - now <= self.window {
            Ok(())
        } else {
            Err(t - self.window)
        }
    }

    /// How many slots are reserved beyond `now`: the queue for this channel.
    pub fn backlog(&self, now: DateTime<Utc>) -> i64 {
        // Reserved slots lie between now and the next free one.
        let tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = *tat else { return 0 };
        let next_free = (t - self.window - now).num_milliseconds();
        let step = self.interval.num_milliseconds().max(1);
        ((next_free + step - 1) / step - 1).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_spaces_and_reserves_slots_in_order() {
        let l = Limiter::new("4/s".parse().unwrap());
        let t0: DateTime<Utc> = "2026-03-24T10:00:00Z".parse().unwrap();
        let ms = |n: i64| t0 + Duration::milliseconds(n);
        for _ in 0..4 {
            assert_eq!(l.acquire(t0), Ok(()));
        }
        assert_eq!(l.backlog(t0), 0);
        // Over the rate: successive free slots, a quarter second apart.
        assert_eq!(l.acquire(t0), Err(ms(250)));
        assert_eq!(l.acquire(t0), Err(ms(500)));
        assert_eq!(l.backlog(t0), 2);
        assert_eq!(l.backlog(ms(300)), 1);
        // Later, after the reserved slots, a new one goes in the next gap.
        assert_eq!(l.acquire(ms(2000)), Ok(()));
        assert_eq!(l.backlog(ms(2000)), 0);
    }
}
