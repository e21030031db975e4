//! Caps and digests (DESIGN.md §4.8–4.9), per destination:
//!
//! * `digest = "1h"`: non-urgent notices are folded into one message per
//!   period, sent at the period's end;
//! * `max = "5/1h"`: up to 5 non-urgent notices an hour go out as usual;
//!   the excess is folded into one follow-up digest.
//!
//! A folded notice is `digested`, pointing at its digest; the digest's
//! texts are composed from whatever is still folded into it when it is
//! sent, so cancelling a folded notice takes it out of the digest.

use super::{Decision, DigestLink, Effective, Load, window};
use crate::model::{Event, Priority, Reason, State};
use chrono::{DateTime, Utc};

/// The notification type of digests.
pub const DIGEST_TYPE: &str = "kci.digest";

/// Folds `d` into a digest if the destination's cap or digest preference
/// says so; returns a new digest to create (at index `next_index` of the
/// plan's decisions) when none is pending there yet.
pub fn apply(
    event: &Event,
    eff: &Effective,
    load: Option<&Load>,
    d: &mut Decision,
    next_index: usize,
    now: DateTime<Utc>,
) -> Option<Decision> {
    if d.state != State::Pending || event.priority == Priority::Urgent {
        return None;
    }
    let recent = load.map(|l| l.recent).unwrap_or(0);
    let (reason, period, words) = match (eff.digest, eff.max) {
        (Some(period), _) => (
            Reason::Digest,
            period,
            format!("folded into the {period} digest"),
        ),
        (None, Some(cap)) if recent >= cap.count as usize => (
            Reason::RateLimit,
            cap.per,
            format!("over max {cap}: folded into a digest"),
        ),
        _ => return None,
    };
    let existing = load.and_then(|l| l.pending_digest.clone());
    d.state = State::Digested;
    d.reason = Some(reason);
    d.detail = Some(words);
    if let Some(id) = existing {
        d.folded_into = Some(DigestLink::Existing(id));
        return None;
    }
    d.folded_into = Some(DigestLink::New(next_index));
    let end = now + period.chrono();
    let due = match window::defer(
        end,
        Priority::Normal,
        eff,
        end + chrono::Duration::days(366),
    ) {
        window::Outcome::Deferred(at) => at,
        _ => end,
    };
    let mut digest = d.clone();
    digest.state = State::Pending;
    digest.reason = Some(reason);
    digest.detail = Some(format!(
        "digest of the notices folded into it, sent after {period}"
    ));
    digest.due_at = due;
    digest.expires_at = None;
    digest.is_digest = true;
    digest.folded_into = None;
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::{at, decision, event};

    #[test]
    fn table() {
        let now = at("2026-03-24T10:00:00Z");
        let hour: crate::model::Span = "1h".parse().unwrap();
        let cap: crate::model::Cap = "2/1h".parse().unwrap();
        let digesting = Effective {
            digest: Some(hour),
            ..Default::default()
        };
        let capped = Effective {
            max: Some(cap),
            ..Default::default()
        };
        let load = |recent: usize, pending: Option<&str>| Load {
            destination: "d1".into(),
            recent,
            pending_digest: pending.map(str::to_string),
        };
        // (name, effective, load, priority, want state, want reason, want new digest, want link)
        let cases = [
            (
                "no preference",
                Effective::default(),
                None,
                Priority::Normal,
                State::Pending,
                None,
                false,
                None,
            ),
            (
                "digest: first one opens it",
                digesting,
                None,
                Priority::Normal,
                State::Digested,
                Some(Reason::Digest),
                true,
                Some(DigestLink::New(7)),
            ),
            (
                "digest: joins the pending one",
                digesting,
                Some(load(0, Some("dg"))),
                Priority::Normal,
                State::Digested,
                Some(Reason::Digest),
                false,
                Some(DigestLink::Existing("dg".into())),
            ),
            (
                "urgent is never folded",
                digesting,
                None,
                Priority::Urgent,
                State::Pending,
                None,
                false,
                None,
            ),
            (
                "under the cap",
                capped,
                Some(load(1, None)),
                Priority::Normal,
                State::Pending,
                None,
                false,
                None,
            ),
            (
                "over the cap",
                capped,
                Some(load(2, None)),
                Priority::Normal,
                State::Digested,
                Some(Reason::RateLimit),
                true,
                Some(DigestLink::New(7)),
            ),
        ];
        for (name, eff, load, priority, state, reason, new, link) in cases {
            let mut ev = event("2026-03-24T10:00:00Z");
            ev.priority = priority;
            let mut d = decision("d1", now);
            let digest = apply(&ev, &eff, load.as_ref(), &mut d, 7, now);
            assert_eq!((d.state, d.reason), (state, reason), "{name}");
            assert_eq!(d.folded_into, link, "{name}");
            assert_eq!(digest.is_some(), new, "{name}");
            if let Some(g) = digest {
                assert!(g.is_digest && g.state == State::Pending, "{name}");
                assert_eq!(g.due_at, at("2026-03-24T11:00:00Z"), "{name}");
            }
        }
    }
}
