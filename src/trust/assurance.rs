//! Assurance recovery's rules (DESIGN.md §7, after CAcert's *Password
//! Recovery with Assurance*) as pure functions, plus the hashing of its
//! two secrets:
//!
//! ```text
//!  record (assurer met the customer, A-word hashed) ──▶ recorded ── link to the primary address
//!  recorded ── link followed, met ≤ max_age ago ──▶ confirmed ── T-word to the primary address only,
//!                                                               everyone else told (veto link)
//!  confirmed ── "A-word-T-word" right ──▶ completed ── enough assurers ──▶ the change is proven
//!  confirmed ── wrong, ATTEMPTS times ──▶ locked (every live one of the change; incident)
//! ```
//!
//! The assurer knows the A-word and never sees the T-word; whoever reads
//! the customer's mail may see the T-word and never the A-word. A wrong
//! secret says nothing of which half was wrong. Each assurance proves one
//! change, once.

use crate::model::{
    Assurance, AssuranceState, Change, ChangeContext, ChangeKind, ChangeRefusal, ChangeState,
    DestinationUri,
};
use chrono::{DateTime, Duration, Utc};
use subtle::ConstantTimeEq;

/// Wrong secrets a change's recovery allows, in all.
pub const ATTEMPTS: u32 = 3;
/// The most assurances one change may have (each is a person's visit).
pub const MAX_PER_CHANGE: usize = 4;
/// The A-word's bounds, in characters (printable US-ASCII, no space).
pub const A_WORD_MIN: usize = 6;
pub const A_WORD_MAX: usize = 64;
/// The T-word: this many characters of [`T_ALPHABET`] (about 50 bits).
pub const T_WORD_LEN: usize = 10;
/// Lower-case letters and digits a person cannot misread for another.
const T_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// How long each step may take, and how many assurers a level needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// How long ago the meeting may have been when the link is followed.
    pub max_age: Duration,
    /// How long the confirmation link works.
    pub link_valid: Duration,
    /// How long the T-word works.
    pub t_valid: Duration,
    /// Different assurers whose assurances must be completed.
    pub assurers: u32,
}

/// Whether `a` may be an A-word: 6 to 64 printable US-ASCII characters,
/// no spaces (it is read out and typed back).
pub fn check_a_word(a: &str) -> Result<(), String> {
    let n = a.chars().count();
    if !(A_WORD_MIN..=A_WORD_MAX).contains(&n) {
        return Err(format!(
            "must be {A_WORD_MIN} to {A_WORD_MAX} characters (it has {n})"
        ));
    }
    if !a.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable US-ASCII characters without spaces".into());
    }
    Ok(())
}

/// A fresh T-word from the OS generator.
pub fn t_word() -> String {
    use rand::{Rng, TryRngCore};
    let mut rng = rand::rngs::OsRng.unwrap_err();
    (0..T_WORD_LEN)
        .map(|_| char::from(T_ALPHABET[rng.random_range(0..T_ALPHABET.len())]))
        .collect()
}

/// How an assurance's T-word is kept: random, so an HMAC with the code
/// key (kept out of the database) is enough, and a copy of the database
/// cannot be searched for it.
pub fn t_hash(key: &super::codes::CodeKey, assurance: &str, t: &str) -> String {
    key.mac(&["kci-assurance-t", assurance, t])
}

/// How an assurance's confirmation link secret is kept.
pub fn link_hash(token: &str) -> String {
    crate::model::sha256_hex(format!("kci-assurance-link\u{1f}{token}").as_bytes())
}

/// The A-word's argon2id hash (PHC string, a fresh salt). Slow on
/// purpose: call it outside any transaction.
pub fn hash_a_word(a: &str) -> Result<String, String> {
    super::codes::argon2_hash(a)
}

/// Splits a recovery secret `A-word-T-word` at its last `-` (an A-word
/// may hold dashes, a T-word never does).
pub fn split_secret(secret: &str) -> Option<(&str, &str)> {
    let (a, t) = secret.trim().rsplit_once('-')?;
    (!a.is_empty() && t.len() == T_WORD_LEN).then_some((a, t))
}

/// Which of `assurances` (the live, confirmed ones) `secret` completes,
/// if any. Both halves are checked against every one — the A-word by
/// argon2, the T-word in constant time — so neither the answer nor its
/// time tells which half was wrong. Slow: outside any transaction.
pub fn matching(
    key: &super::codes::CodeKey,
    assurances: &[Assurance],
    secret: &str,
) -> Option<String> {
    let (a, t) = split_secret(secret).unwrap_or(("", ""));
    let mut found = None;
    for x in assurances {
        let a_ok = super::codes::argon2_matches(a, &x.a_hash);
        let want = x.t_hash.as_deref().unwrap_or("");
        let t_ok: bool = want
            .as_bytes()
            .ct_eq(t_hash(key, &x.id, t).as_bytes())
            .into();
        if a_ok && t_ok && !want.is_empty() && found.is_none() {
            found = Some(x.id.clone());
        }
    }
    found
}

/// Whether `draft` (an assurance of `c` by its assurer, through its
/// address) may be recorded beside what `ctx` holds.
pub fn record(
    c: Option<&Change>,
    ctx: &ChangeContext,
    draft: &Assurance,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<(), ChangeRefusal> {
    let c = c.ok_or(ChangeRefusal::NotFound)?;
    if c.state != ChangeState::Pending {
        return Err(ChangeRefusal::NotPending);
    }
    if c.kind == ChangeKind::KeyRemove {
        return Err(ChangeRefusal::AssuranceNotAllowed);
    }
    if now - draft.met_on > limits.max_age {
        return Err(ChangeRefusal::AssuranceTooOld);
    }
    let primary = match &c.address {
        Some(address) => address == &draft.address,
        None => ctx.audience.iter().any(|a| {
            matches!(&a.destination.uri, DestinationUri::Mailto(m) if m.as_str() == draft.address)
        }),
    };
    if !primary {
        return Err(ChangeRefusal::NotAPrimaryAddress);
    }
    if c.proven_current {
        return Err(ChangeRefusal::ProvenAlready);
    }
    if ctx
        .assurances
        .iter()
        .any(|a| a.state == AssuranceState::Locked)
    {
        return Err(ChangeRefusal::AssuranceLocked);
    }
    let mut mine = ctx.assurances.iter().filter(|a| a.assurer == draft.assurer);
    if mine.any(|a| a.live(now) || a.state == AssuranceState::Completed) {
        return Err(ChangeRefusal::AssuredAlready);
    }
    if ctx.assurances.len() >= MAX_PER_CHANGE {
        return Err(ChangeRefusal::TooManyAssurances);
    }
    Ok(())
}

/// The customer followed the confirmation link of `a` (`None`: no such
/// link): the assurance confirmed with its T-word (`t_hash`), or why not.
/// A meeting longer ago than `max_age` expires it (`Err` carries the
/// expired assurance to store).
pub fn confirm(
    a: Option<&Assurance>,
    c: Option<&Change>,
    t_hash: &str,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Assurance, (ChangeRefusal, Option<Box<Assurance>>)> {
    let a = match a {
        Some(a) if a.state == AssuranceState::Recorded && now < a.link_expires_at => a,
        _ => return Err((ChangeRefusal::InvalidLink, None)),
    };
    let ended = |why| {
        let mut x = a.clone();
        x.state = AssuranceState::Expired;
        Err((why, Some(Box::new(x))))
    };
    if c.is_none_or(|c| c.state != ChangeState::Pending) {
        return ended(ChangeRefusal::NotPending);
    }
    if now - a.met_on > limits.max_age {
        return ended(ChangeRefusal::AssuranceTooOld);
    }
    Ok(Assurance {
        state: AssuranceState::Confirmed,
        t_hash: Some(t_hash.to_string()),
        t_expires_at: Some(now + limits.t_valid),
        ..a.clone()
    })
}

/// What a recovery secret did to change `c` and its assurances.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The assurances to store (completed, counted, locked).
    pub assurances: Vec<Assurance>,
    /// The change, when it is proven now.
    pub change: Option<Change>,
    /// This secret locked the recovery.
    pub locked_now: bool,
}

/// A recovery secret for `c`, which `matched` (from [`matching`]) says
/// completes that assurance or none: what to store, and the answer. A
/// wrong one counts against every live confirmed assurance of the change
/// (the guesser's target is not known); the [`ATTEMPTS`]th locks them.
pub fn complete(
    c: Option<&Change>,
    assurances: &[Assurance],
    matched: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> (Completion, Result<(), ChangeRefusal>) {
    let nothing = |why| {
        (
            Completion {
                assurances: Vec::new(),
                change: None,
                locked_now: false,
            },
            Err(why),
        )
    };
    let Some(c) = c else {
        return nothing(ChangeRefusal::NotFound);
    };
    if c.state != ChangeState::Pending {
        return nothing(ChangeRefusal::NotPending);
    }
    if assurances.iter().any(|a| a.state == AssuranceState::Locked) {
        return nothing(ChangeRefusal::AssuranceLocked);
    }
    let live: Vec<&Assurance> = assurances
        .iter()
        .filter(|a| a.state == AssuranceState::Confirmed && a.live(now))
        .collect();
    if live.is_empty() {
        return nothing(ChangeRefusal::NoAssurance);
    }
    if let Some(hit) = matched.and_then(|id| live.iter().find(|a| a.id == id)) {
        let done = Assurance {
            state: AssuranceState::Completed,
            t_hash: None,
            ..(*hit).clone()
        };
        let mut completed: Vec<&Assurance> = assurances
            .iter()
            .filter(|a| a.state == AssuranceState::Completed && a.id != done.id)
            .collect();
        completed.push(&done);
        let mut assurers: Vec<&str> = completed.iter().map(|a| a.assurer.as_str()).collect();
        assurers.sort_unstable();
        assurers.dedup();
        let change = (assurers.len() as u32 >= limits.assurers.max(1)).then(|| {
            let ids: Vec<&str> = completed.iter().map(|a| a.id.as_str()).collect();
            let factor = format!("{}{}", crate::model::assurance::PROOF_PREFIX, ids.join(","));
            let mut proven = c.clone();
            proven.factors.push(factor.clone());
            proven.proven_current = true;
            proven.proof = Some(factor);
            proven
        });
        return (
            Completion {
                assurances: vec![done],
                change,
                locked_now: false,
            },
            Ok(()),
        );
    }
    let attempts = live.iter().map(|a| a.attempts).max().unwrap_or(0) + 1;
    let locked_now = attempts >= ATTEMPTS;
    let after = live
        .into_iter()
        .map(|a| Assurance {
            attempts,
            state: if locked_now {
                AssuranceState::Locked
            } else {
                a.state
            },
            // A locked secret is of no use to anyone: nothing kept.
            t_hash: if locked_now { None } else { a.t_hash.clone() },
            ..a.clone()
        })
        .collect();
    let why = if locked_now {
        ChangeRefusal::AssuranceLocked
    } else {
        ChangeRefusal::WrongSecret
    };
    (
        Completion {
            assurances: after,
            change: None,
            locked_now,
        },
        Err(why),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Audience, Destination};

    fn t(min: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(min)
    }

    fn limits(assurers: u32) -> Limits {
        Limits {
            max_age: Duration::days(30),
            link_valid: Duration::days(2),
            t_valid: Duration::days(7),
            assurers,
        }
    }

    fn change(kind: ChangeKind) -> Change {
        let mut c = Change::of_key(
            "c1",
            "alice@example.org",
            kind,
            Some("NEW"),
            t(0),
            t(14 * 24 * 60),
        );
        c.requested_by = "mail:alice@example.org".into();
        c
    }

    /// The code key of these tests.
    fn key() -> crate::trust::codes::CodeKey {
        crate::trust::codes::CodeKey::from_hex(&"11".repeat(32)).unwrap()
    }

    fn assurance(id: &str, assurer: &str, state: AssuranceState) -> Assurance {
        Assurance {
            id: id.into(),
            change: "c1".into(),
            account: Some("acme".into()),
            address: "alice@example.org".into(),
            assurer: assurer.into(),
            ticket: "T-1".into(),
            met_on: t(-60),
            recorded_at: t(0),
            state,
            a_hash: String::new(),
            link_hash: "L".into(),
            link_expires_at: t(2 * 24 * 60),
            t_hash: (state == AssuranceState::Confirmed).then(|| t_hash(&key(), id, "tttttttttt")),
            t_expires_at: (state == AssuranceState::Confirmed).then(|| t(7 * 24 * 60)),
            attempts: 0,
        }
    }

    fn ctx(assurances: Vec<Assurance>) -> ChangeContext {
        ChangeContext {
            assurances,
            ..Default::default()
        }
    }

    #[test]
    fn a_words() {
        // (word, accepted)
        for (a, ok) in [
            ("kiwi42", true),
            ("blue-moon-7", true),
            ("short", false),
            ("with space", false),
            ("tab\there", false),
            ("ünïcode", false),
            (&"x".repeat(64), true),
            (&"x".repeat(65), false),
        ] {
            assert_eq!(check_a_word(a).is_ok(), ok, "{a:?}");
        }
    }

    #[test]
    fn t_words_are_random_and_unambiguous() {
        let a = t_word();
        assert_eq!(a.len(), T_WORD_LEN);
        assert!(a.bytes().all(|b| T_ALPHABET.contains(&b)), "{a}");
        assert_ne!(a, t_word());
    }

    #[test]
    fn secrets_split_at_the_last_dash() {
        // (secret, split)
        for (s, want) in [
            ("kiwi42-abcdefghjk", Some(("kiwi42", "abcdefghjk"))),
            ("blue-moon-abcdefghjk", Some(("blue-moon", "abcdefghjk"))),
            (" kiwi42-abcdefghjk\n", Some(("kiwi42", "abcdefghjk"))),
            ("kiwi42abcdefghjk", None),
            ("-abcdefghjk", None),
            ("kiwi42-abc", None),
            ("", None),
        ] {
            assert_eq!(split_secret(s), want, "{s:?}");
        }
    }

    #[test]
    fn only_both_halves_match_and_each_is_checked() {
        let mut a = assurance("a1", "sam", AssuranceState::Confirmed);
        a.a_hash = hash_a_word("kiwi42").unwrap();
        assert!(a.a_hash.starts_with("$argon2id$"), "{}", a.a_hash);
        assert!(!a.a_hash.contains("kiwi42"));
        let live = [a];
        // (secret, matches)
        for (s, want) in [
            ("kiwi42-tttttttttt", Some("a1")),
            ("kiwi43-tttttttttt", None),
            ("kiwi42-ttttttttta", None),
            ("tttttttttt", None),
            ("kiwi42", None),
        ] {
            assert_eq!(matching(&key(), &live, s).as_deref(), want, "{s:?}");
        }
    }

    #[test]
    fn recording_an_assurance() {
        let account_change = Change {
            address: None,
            account: Some("acme".into()),
            kind: ChangeKind::DestinationAdd,
            ..change(ChangeKind::DestinationAdd)
        };
        let mailbox = |uri: &str| Audience {
            account: "acme".into(),
            destination: Destination {
                id: "d1".into(),
                contact: "alice".into(),
                uri: uri.parse().unwrap(),
                prefs: Default::default(),
                verified: true,
                unhealthy_since: None,
            },
        };
        let draft = |assurer: &str, met: i64| Assurance {
            met_on: t(met),
            ..assurance("new", assurer, AssuranceState::Recorded)
        };
        let proven = Change {
            proven_current: true,
            ..change(ChangeKind::KeyReplace)
        };
        let applied = Change {
            state: ChangeState::Applied,
            ..change(ChangeKind::KeyReplace)
        };
        let told_at = |uri: &str| ChangeContext {
            audience: vec![mailbox(uri)],
            ..Default::default()
        };
        let day = 24 * 60;
        // (case, change, context, draft, outcome)
        type Case = (
            &'static str,
            Option<Change>,
            ChangeContext,
            Assurance,
            Result<(), ChangeRefusal>,
        );
        let cases: Vec<Case> = vec![
            (
                "key change",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![]),
                draft("sam", -day),
                Ok(()),
            ),
            (
                "met 30 days ago",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![]),
                draft("sam", -30 * day),
                Ok(()),
            ),
            (
                "met too long ago",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![]),
                draft("sam", -30 * day - 1),
                Err(ChangeRefusal::AssuranceTooOld),
            ),
            (
                "no such change",
                None,
                ctx(vec![]),
                draft("sam", 0),
                Err(ChangeRefusal::NotFound),
            ),
            (
                "change over",
                Some(applied),
                ctx(vec![]),
                draft("sam", 0),
                Err(ChangeRefusal::NotPending),
            ),
            (
                "key removal",
                Some(change(ChangeKind::KeyRemove)),
                ctx(vec![]),
                draft("sam", 0),
                Err(ChangeRefusal::AssuranceNotAllowed),
            ),
            (
                "another address",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![]),
                Assurance {
                    address: "eve@example.net".into(),
                    ..draft("sam", 0)
                },
                Err(ChangeRefusal::NotAPrimaryAddress),
            ),
            (
                "account: its mailbox",
                Some(account_change.clone()),
                told_at("mailto:alice@example.org"),
                draft("sam", 0),
                Ok(()),
            ),
            (
                "account: not its mailbox",
                Some(account_change),
                told_at("mailto:eve@example.net"),
                draft("sam", 0),
                Err(ChangeRefusal::NotAPrimaryAddress),
            ),
            (
                "proven already",
                Some(proven),
                ctx(vec![]),
                draft("sam", 0),
                Err(ChangeRefusal::ProvenAlready),
            ),
            (
                "same assurer again",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![assurance("a1", "sam", AssuranceState::Confirmed)]),
                draft("sam", 0),
                Err(ChangeRefusal::AssuredAlready),
            ),
            (
                "same assurer after it expired",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![assurance("a1", "sam", AssuranceState::Expired)]),
                draft("sam", 0),
                Ok(()),
            ),
            (
                "a second assurer",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![assurance("a1", "sam", AssuranceState::Completed)]),
                draft("kim", 0),
                Ok(()),
            ),
            (
                "locked",
                Some(change(ChangeKind::KeyReplace)),
                ctx(vec![assurance("a1", "sam", AssuranceState::Locked)]),
                draft("kim", 0),
                Err(ChangeRefusal::AssuranceLocked),
            ),
            (
                "too many",
                Some(change(ChangeKind::KeyReplace)),
                ctx((0..4)
                    .map(|i| assurance(&format!("a{i}"), &format!("s{i}"), AssuranceState::Expired))
                    .collect()),
                draft("kim", 0),
                Err(ChangeRefusal::TooManyAssurances),
            ),
        ];
        for (case, c, ctx, draft, want) in cases {
            assert_eq!(
                record(c.as_ref(), &ctx, &draft, &limits(1), t(0)),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn confirming_by_the_link() {
        let c = change(ChangeKind::KeyReplace);
        let recorded = assurance("a1", "sam", AssuranceState::Recorded);
        let ok = confirm(Some(&recorded), Some(&c), "H", &limits(1), t(10)).unwrap();
        assert_eq!(ok.state, AssuranceState::Confirmed);
        assert_eq!(ok.t_hash.as_deref(), Some("H"));
        assert_eq!(ok.t_expires_at, Some(t(10) + Duration::days(7)));
        // (case, assurance, change, now, refusal, stored state)
        let over = Change {
            state: ChangeState::Vetoed,
            ..c.clone()
        };
        let old = Assurance {
            met_on: t(-30 * 24 * 60),
            ..recorded.clone()
        };
        let cases = [
            (
                "unknown",
                None,
                Some(&c),
                10,
                ChangeRefusal::InvalidLink,
                None,
            ),
            (
                "used",
                Some(&ok),
                Some(&c),
                20,
                ChangeRefusal::InvalidLink,
                None,
            ),
            (
                "link expired",
                Some(&recorded),
                Some(&c),
                2 * 24 * 60,
                ChangeRefusal::InvalidLink,
                None,
            ),
            (
                "change over",
                Some(&recorded),
                Some(&over),
                10,
                ChangeRefusal::NotPending,
                Some(AssuranceState::Expired),
            ),
            (
                "meeting too old now",
                Some(&old),
                Some(&c),
                1,
                ChangeRefusal::AssuranceTooOld,
                Some(AssuranceState::Expired),
            ),
        ];
        for (case, a, c, now, why, stored) in cases {
            let (got, after) = confirm(a, c, "H", &limits(1), t(now)).unwrap_err();
            assert_eq!(got, why, "{case}");
            assert_eq!(after.map(|a| a.state), stored, "{case}");
        }
    }

    #[test]
    fn completing_with_the_secret() {
        let c = change(ChangeKind::KeyReplace);
        let confirmed = assurance("a1", "sam", AssuranceState::Confirmed);
        // Right: completed, the change proven by it.
        let (done, answer) = complete(
            Some(&c),
            std::slice::from_ref(&confirmed),
            Some("a1"),
            &limits(1),
            t(10),
        );
        assert_eq!(answer, Ok(()));
        assert_eq!(done.assurances[0].state, AssuranceState::Completed);
        assert_eq!(done.assurances[0].t_hash, None, "single use: nothing kept");
        let proven = done.change.unwrap();
        assert!(proven.proven_current && proven.by_assurance());
        assert_eq!(proven.proof.as_deref(), Some("assurance:a1"));
        // Wrong twice, then locked at the third.
        let mut now = vec![confirmed.clone()];
        for (n, want) in [
            (1, ChangeRefusal::WrongSecret),
            (2, ChangeRefusal::WrongSecret),
            (3, ChangeRefusal::AssuranceLocked),
        ] {
            let (after, answer) = complete(Some(&c), &now, None, &limits(1), t(10));
            assert_eq!(answer, Err(want), "try {n}");
            assert_eq!(after.assurances[0].attempts, n);
            assert_eq!(after.locked_now, n == 3);
            now = after.assurances;
        }
        assert_eq!(now[0].state, AssuranceState::Locked);
        // Locked: even the right secret is refused.
        let (after, answer) = complete(Some(&c), &now, Some("a1"), &limits(1), t(11));
        assert_eq!(answer, Err(ChangeRefusal::AssuranceLocked));
        assert!(after.assurances.is_empty());
        // (case, assurances, now, refusal)
        let recorded = assurance("a1", "sam", AssuranceState::Recorded);
        let completed = assurance("a1", "sam", AssuranceState::Completed);
        let cases = [
            (
                "link not followed",
                vec![recorded],
                10,
                ChangeRefusal::NoAssurance,
            ),
            ("used once", vec![completed], 10, ChangeRefusal::NoAssurance),
            (
                "T-word expired",
                vec![confirmed.clone()],
                7 * 24 * 60,
                ChangeRefusal::NoAssurance,
            ),
            ("none", vec![], 10, ChangeRefusal::NoAssurance),
        ];
        for (case, list, at, why) in cases {
            let (after, answer) = complete(Some(&c), &list, Some("a1"), &limits(1), t(at));
            assert_eq!(answer, Err(why), "{case}");
            assert!(after.change.is_none(), "{case}");
        }
        let over = Change {
            state: ChangeState::Cancelled,
            ..c.clone()
        };
        let (_, answer) = complete(
            Some(&over),
            std::slice::from_ref(&confirmed),
            Some("a1"),
            &limits(1),
            t(10),
        );
        assert_eq!(answer, Err(ChangeRefusal::NotPending));
    }

    #[test]
    fn a_level_may_need_two_different_assurers() {
        let c = change(ChangeKind::KeyReplace);
        let first = assurance("a1", "sam", AssuranceState::Confirmed);
        let (done, answer) = complete(
            Some(&c),
            std::slice::from_ref(&first),
            Some("a1"),
            &limits(2),
            t(10),
        );
        assert_eq!(answer, Ok(()));
        assert!(done.change.is_none(), "one of two assurers");
        let completed = done.assurances[0].clone();
        // The same assurer twice counts once.
        let again = assurance("a2", "sam", AssuranceState::Confirmed);
        let (done, _) = complete(
            Some(&c),
            &[completed.clone(), again],
            Some("a2"),
            &limits(2),
            t(11),
        );
        assert!(done.change.is_none(), "the same person twice");
        let second = assurance("a3", "kim", AssuranceState::Confirmed);
        let (done, answer) = complete(
            Some(&c),
            &[completed, second],
            Some("a3"),
            &limits(2),
            t(12),
        );
        assert_eq!(answer, Ok(()));
        assert_eq!(
            done.change.unwrap().proof.as_deref(),
            Some("assurance:a1,a3")
        );
    }

    #[test]
    fn an_assurance_still_needs_the_levels_approvals() {
        let mut c = change(ChangeKind::DestinationAdd);
        c.approvals_needed = 2;
        c.proven_current = true;
        c.proof = Some("assurance:a1".into());
        c.factors = vec!["assurance:a1".into()];
        assert!(!c.proven(), "approvals missing");
        c.approvals = vec![
            crate::model::Approval {
                staff: "bob".into(),
                at: t(1),
            },
            crate::model::Approval {
                staff: "cy".into(),
                at: t(2),
            },
        ];
        assert!(c.proven());
        // Below maximum no approvals are needed: a code proves it at once.
        c.approvals.clear();
        c.approvals_needed = 0;
        c.proof = Some("code:d1".into());
        c.factors = vec!["code:d1".into()];
        assert!(c.proven());
    }
}
