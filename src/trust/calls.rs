//! Call verification's rules (DESIGN.md §8) as pure functions: what a
//! code typed by either side does to a verification, and when one
//! expires. Codes are 6 digits from the OS generator, kept as hashes and
//! compared in constant time; a verification lives [`CODE_MINUTES`] and
//! allows [`ATTEMPTS`] wrong codes in all, whichever side typed them.

use crate::model::{Call, CallRefusal, CallState};
use chrono::{DateTime, Duration, Utc};
use subtle::ConstantTimeEq;

/// How long a verification stays open.
pub const CODE_MINUTES: i64 = 5;
/// Wrong codes a verification allows, both sides together.
pub const ATTEMPTS: u32 = 3;

/// When a verification opened at `at` expires.
pub fn expires_at(at: DateTime<Utc>) -> DateTime<Utc> {
    at + Duration::minutes(CODE_MINUTES)
}

/// How the code of `side` (`staff` or `customer`) of call `call` is kept.
pub fn code_hash(key: &super::codes::CodeKey, call: &str, side: &str, code: &str) -> String {
    key.mac(&["kci-call", call, side, code])
}

/// Who typed a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Staff typed the code the customer read out.
    Staff,
    /// The customer typed the code staff read out.
    Customer,
}

/// A code typed by `side` (`hash`: of what was typed): the call as it
/// must be stored if it changed (matched, verified once both sides
/// matched; a wrong code counted, failed at the last one; expired), and
/// whether the code was right.
pub fn typed(
    call: &Call,
    side: Side,
    hash: &str,
    now: DateTime<Utc>,
) -> (Option<Call>, Result<(), CallRefusal>) {
    if call.state != CallState::Open {
        return (None, Err(CallRefusal::Over));
    }
    if let Some(expired) = expire(call, now) {
        return (Some(expired), Err(CallRefusal::Over));
    }
    let (code, done) = match side {
        Side::Staff => (&call.customer_code, call.staff_confirmed),
        Side::Customer => (&call.staff_code, call.customer_confirmed),
    };
    // A code is used once: typing it again after it matched is refused.
    if done {
        return (None, Err(CallRefusal::Over));
    }
    let right: bool = code.hash.as_bytes().ct_eq(hash.as_bytes()).into();
    let mut next = call.clone();
    if !right {
        next.attempts = next.attempts.saturating_add(1);
        if next.attempts >= ATTEMPTS {
            next.state = CallState::Failed;
            next.reason = Some(format!("{ATTEMPTS} wrong codes"));
        }
        return (Some(next), Err(CallRefusal::WrongCode));
    }
    match side {
        Side::Staff => {
            next.staff_confirmed = true;
            next.customer_code.matched = true;
        }
        Side::Customer => {
            next.customer_confirmed = true;
            next.staff_code.matched = true;
        }
    }
    if next.staff_confirmed && next.customer_confirmed {
        next.state = CallState::Verified;
    }
    (Some(next), Ok(()))
}

/// The call expired, if it is open past its time.
pub fn expire(call: &Call, now: DateTime<Utc>) -> Option<Call> {
    (call.state == CallState::Open && now >= call.expires_at).then(|| Call {
        state: CallState::Expired,
        reason: Some(format!(
            "not verified from both sides within {CODE_MINUTES} minutes"
        )),
        ..call.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CallCode;

    fn t(s: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::seconds(s)
    }

    fn call() -> Call {
        Call {
            id: "c1".into(),
            account: "acme".into(),
            contact: "alice".into(),
            staff: "dan".into(),
            state: CallState::Open,
            opened_at: t(0),
            expires_at: expires_at(t(0)),
            staff_code: CallCode {
                hash: "S".into(),
                matched: false,
            },
            customer_code: CallCode {
                hash: "C".into(),
                matched: false,
            },
            link_hash: "L".into(),
            customer_confirmed: false,
            staff_confirmed: false,
            attempts: 0,
            reason: None,
        }
    }

    #[test]
    fn both_sides_must_type_the_others_code() {
        let c = call();
        let once = typed(&c, Side::Staff, "C", t(10)).0.unwrap();
        assert_eq!((once.state, once.staff_confirmed), (CallState::Open, true));
        // Staff's own code is no use to staff, nor typed twice.
        assert_eq!(
            typed(&once, Side::Staff, "C", t(11)).1,
            Err(CallRefusal::Over)
        );
        let both = typed(&once, Side::Customer, "S", t(12)).0.unwrap();
        assert_eq!(both.state, CallState::Verified);
        // Replayed after success: over.
        assert_eq!(
            typed(&both, Side::Customer, "S", t(13)),
            (None, Err(CallRefusal::Over))
        );
    }

    #[test]
    fn wrong_codes_count_across_both_sides_and_the_third_fails_it() {
        // (case, side, typed, attempts after, state after)
        let steps = [
            (
                "customer types staff's code wrong",
                Side::Customer,
                "C",
                1,
                CallState::Open,
            ),
            (
                "staff types a wrong code",
                Side::Staff,
                "S",
                2,
                CallState::Open,
            ),
            (
                "the third wrong code",
                Side::Staff,
                "x",
                3,
                CallState::Failed,
            ),
        ];
        let mut now = call();
        for (case, side, code, attempts, state) in steps {
            let (next, why) = typed(&now, side, code, t(20));
            assert_eq!(why, Err(CallRefusal::WrongCode), "{case}");
            let next = next.unwrap();
            assert_eq!((next.attempts, next.state), (attempts, state), "{case}");
            now = next;
        }
        assert_eq!(
            typed(&now, Side::Staff, "C", t(21)).1,
            Err(CallRefusal::Over)
        );
    }

    #[test]
    fn five_minutes_and_it_is_over() {
        let c = call();
        assert_eq!(expire(&c, t(299)), None);
        let (late, why) = typed(&c, Side::Staff, "C", t(300));
        assert_eq!(why, Err(CallRefusal::Over));
        assert_eq!(late.unwrap().state, CallState::Expired);
        let verified = Call {
            state: CallState::Verified,
            ..call()
        };
        assert_eq!(expire(&verified, t(900)), None);
    }
}
