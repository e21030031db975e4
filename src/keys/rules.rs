//! The key registry's transitions (DESIGN.md §6, §7) as pure functions
//! over the rows of one address: what following a link does, and what a
//! new change request does to the changes already waiting. The stores
//! load the rows, call these inside their transaction, and write what
//! they return; nothing here reads a clock or a database.
//!
//! Two rules carry the weight of the attack review (issue 9):
//! * a link is used up only by what it validly does: following a link
//!   that cannot act now (its key was replaced meanwhile, its change is
//!   gone) leaves it as it was;
//! * an unproven request never displaces a proven one nor resets another
//!   change's clock: only the current key's holder, by proof, cancels
//!   what waits.

use crate::model::{
    AddressKeys, Change, ChangeKind, ChangeState, Confirmed, KeyState, KeyWrite, LinkRow, Refused,
    TokenPurpose,
};
use chrono::{DateTime, Utc};

/// The most changes one address may have waiting at once. Each is a
/// request by somebody; more would only be noise for the holder.
pub const MAX_PENDING_CHANGES: usize = 3;

/// Follows `link` (as found by its secret's hash; `None` if unknown).
pub fn follow_link(
    link: Option<&LinkRow>,
    keys: &AddressKeys,
    now: DateTime<Utc>,
) -> (Vec<KeyWrite>, Confirmed) {
    let invalid = (Vec::new(), Confirmed::Invalid);
    let Some(link) = link.filter(|l| !l.used && now < l.expires_at) else {
        return invalid;
    };
    match link.purpose {
        TokenPurpose::Activate => {
            // The new key of waiting replacements: its holder's proof, for
            // every change that asks for this key.
            let proven: Vec<Change> = keys
                .changes
                .iter()
                .filter(|c| {
                    c.kind == ChangeKind::KeyReplace && c.fingerprint() == Some(&link.fingerprint)
                })
                .map(|c| Change {
                    proven_new: true,
                    ..c.clone()
                })
                .collect();
            if let Some(complete) = proven.iter().find(|c| c.proven()) {
                let mut writes = vec![KeyWrite::UseLink];
                let applied = apply(complete.clone(), keys, now, &mut writes);
                return (writes, Confirmed::Applied(applied));
            }
            if let Some(first) = proven.first() {
                let mut writes = vec![KeyWrite::UseLink];
                writes.extend(proven.iter().cloned().map(KeyWrite::Change));
                return (writes, Confirmed::Proven(first.clone()));
            }
            match &keys.active {
                // Already the active key: nothing moves, the link is spent.
                Some(active) if active.fingerprint == link.fingerprint => (
                    vec![KeyWrite::UseLink],
                    Confirmed::Activated(active.clone()),
                ),
                // Another key is active and no change waits for this one.
                Some(_) => invalid,
                None => match keys
                    .pending
                    .iter()
                    .find(|k| k.fingerprint == link.fingerprint)
                {
                    Some(key) => {
                        let mut key = key.clone();
                        key.state = KeyState::Active;
                        key.activated_at = Some(now);
                        (
                            vec![
                                KeyWrite::UseLink,
                                KeyWrite::Activate {
                                    fingerprint: key.fingerprint.clone(),
                                    at: now,
                                },
                            ],
                            Confirmed::Activated(key),
                        )
                    }
                    None => invalid,
                },
            }
        }
        TokenPurpose::Approve => {
            // Sent encrypted to the key active then; it approves only
            // while that key is still the active one.
            let holder = keys
                .active
                .as_ref()
                .is_some_and(|a| a.fingerprint == link.fingerprint);
            let change = link
                .change
                .as_deref()
                .and_then(|id| keys.changes.iter().find(|c| c.id == id));
            match change {
                Some(change) if holder => {
                    let mut change = change.clone();
                    change.proven_current = true;
                    prove(change, keys, now)
                }
                _ => invalid,
            }
        }
    }
}

/// A change that just gained a proof: applied if it has them all,
/// otherwise stored as proven so far.
fn prove(change: Change, keys: &AddressKeys, now: DateTime<Utc>) -> (Vec<KeyWrite>, Confirmed) {
    let mut writes = vec![KeyWrite::UseLink];
    if change.proven() {
        let change = apply(change, keys, now, &mut writes);
        (writes, Confirmed::Applied(change))
    } else {
        writes.push(KeyWrite::Change(change.clone()));
        (writes, Confirmed::Proven(change))
    }
}

/// The writes that apply `change`: the active key retires, the new one
/// (for a replacement) becomes active, every other waiting change of the
/// address is cancelled (it was asked against a key that is gone).
pub fn apply(
    mut change: Change,
    keys: &AddressKeys,
    now: DateTime<Utc>,
    writes: &mut Vec<KeyWrite>,
) -> Change {
    if let Some(active) = &keys.active {
        writes.push(KeyWrite::Retire {
            fingerprint: active.fingerprint.clone(),
            state: if change.kind == ChangeKind::KeyReplace {
                KeyState::Replaced
            } else {
                KeyState::Removed
            },
        });
    }
    if let (ChangeKind::KeyReplace, Some(fpr)) = (change.kind, &change.subject.fingerprint) {
        writes.push(KeyWrite::Activate {
            fingerprint: fpr.clone(),
            at: now,
        });
    }
    change.state = ChangeState::Applied;
    writes.push(KeyWrite::Change(change.clone()));
    writes.extend(
        keys.changes
            .iter()
            .filter(|c| c.id != change.id)
            .map(|c| KeyWrite::Change(cancelled(c))),
    );
    change
}

fn cancelled(c: &Change) -> Change {
    Change {
        state: ChangeState::Cancelled,
        ..c.clone()
    }
}

/// Admits a new change request `new` for an address with `keys`.
///
/// * With the current holder's proof (`proven_current`), it stands in for
///   everything waiting: the others are cancelled — and if it needs no
///   other proof (a removal), it applies at once.
/// * Without, it waits beside the others with its own cooling-off clock;
///   nothing else is touched. At most [`MAX_PENDING_CHANGES`] wait.
pub fn admit_change(
    keys: &AddressKeys,
    new: &Change,
    now: DateTime<Utc>,
) -> Result<Vec<KeyWrite>, Refused> {
    if !new.proven_current {
        if keys.changes.len() >= MAX_PENDING_CHANGES {
            return Err(Refused::TooManyChanges);
        }
        return Ok(vec![KeyWrite::Change(new.clone())]);
    }
    let mut writes = Vec::new();
    if new.proven() {
        apply(new.clone(), keys, now, &mut writes);
    } else {
        writes.extend(keys.changes.iter().map(|c| KeyWrite::Change(cancelled(c))));
        writes.push(KeyWrite::Change(new.clone()));
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KeyRecord;

    fn at(s: &str) -> DateTime<Utc> {
        format!("2026-12-02T{s}Z").parse().unwrap()
    }

    fn key(fpr: &str, state: KeyState) -> KeyRecord {
        KeyRecord {
            address: "alice@example.com".into(),
            fingerprint: fpr.into(),
            armored: String::new(),
            state,
            source: "api".into(),
            submitted_at: at("09:00:00"),
            activated_at: None,
            expires_at: None,
        }
    }

    fn change(id: &str, kind: ChangeKind, fpr: Option<&str>, current: bool, new: bool) -> Change {
        Change {
            proven_current: current,
            proven_new: new,
            ..Change::of_key(
                id,
                "alice@example.com",
                kind,
                fpr,
                at("09:00:00"),
                at("09:00:00") + chrono::Duration::days(7),
            )
        }
    }

    fn link(purpose: TokenPurpose, fpr: &str, change: Option<&str>) -> LinkRow {
        LinkRow {
            address: "alice@example.com".into(),
            fingerprint: fpr.into(),
            purpose,
            change: change.map(str::to_string),
            expires_at: at("12:00:00"),
            used: false,
        }
    }

    /// A: active; B: pending with a replacement waiting (c1, unproven).
    fn replacing() -> AddressKeys {
        AddressKeys {
            active: Some(key("A", KeyState::Active)),
            pending: vec![key("B", KeyState::Pending)],
            changes: vec![change(
                "c1",
                ChangeKind::KeyReplace,
                Some("B"),
                false,
                false,
            )],
        }
    }

    fn outcome(c: &Confirmed) -> &'static str {
        match c {
            Confirmed::Activated(_) => "activated",
            Confirmed::Proven(_) => "proven",
            Confirmed::Applied(_) => "applied",
            Confirmed::Invalid => "invalid",
        }
    }

    #[test]
    fn what_following_a_link_does() {
        use TokenPurpose::*;
        let first = AddressKeys {
            pending: vec![key("A", KeyState::Pending)],
            ..Default::default()
        };
        let settled = AddressKeys {
            active: Some(key("A", KeyState::Active)),
            ..Default::default()
        };
        let mut half_proven = replacing();
        half_proven.changes[0].proven_new = true;
        let used = LinkRow {
            used: true,
            ..link(Activate, "A", None)
        };
        let expired = LinkRow {
            expires_at: at("10:00:00"),
            ..link(Activate, "A", None)
        };
        let now = at("10:00:00");
        let replacing = replacing();
        // (case, link, keys, outcome, link used up)
        let cases: Vec<(&str, Option<LinkRow>, &AddressKeys, &str, bool)> = vec![
            ("unknown link", None, &first, "invalid", false),
            ("used link", Some(used), &first, "invalid", false),
            ("expired link", Some(expired), &first, "invalid", false),
            (
                "first key",
                Some(link(Activate, "A", None)),
                &first,
                "activated",
                true,
            ),
            (
                "active key again",
                Some(link(Activate, "A", None)),
                &settled,
                "activated",
                true,
            ),
            (
                "another key active, no change for it",
                Some(link(Activate, "B", None)),
                &settled,
                "invalid",
                false,
            ),
            (
                "new key of a replacement",
                Some(link(Activate, "B", None)),
                &replacing,
                "proven",
                true,
            ),
            (
                "holder approves",
                Some(link(Approve, "A", Some("c1"))),
                &replacing,
                "proven",
                true,
            ),
            (
                "holder approves, new key proven",
                Some(link(Approve, "A", Some("c1"))),
                &half_proven,
                "applied",
                true,
            ),
            (
                "approval for a change that is gone",
                Some(link(Approve, "A", Some("c9"))),
                &replacing,
                "invalid",
                false,
            ),
            (
                "approval by a key no longer active",
                Some(link(Approve, "Z", Some("c1"))),
                &replacing,
                "invalid",
                false,
            ),
        ];
        for (case, link, keys, want, spent) in cases {
            let (writes, got) = follow_link(link.as_ref(), keys, now);
            assert_eq!(outcome(&got), want, "{case}");
            assert_eq!(
                writes.contains(&KeyWrite::UseLink),
                spent,
                "{case}: {writes:?}"
            );
            if want == "invalid" {
                assert!(writes.is_empty(), "{case}: an invalid link changes nothing");
            }
        }
    }

    #[test]
    fn the_new_keys_proof_counts_for_every_change_asking_for_it() {
        let mut keys = replacing();
        keys.changes
            .push(change("c2", ChangeKind::KeyReplace, Some("B"), true, false));
        let (writes, got) = follow_link(
            Some(&link(TokenPurpose::Activate, "B", None)),
            &keys,
            at("10:00:00"),
        );
        // c2 had the holder's proof already: it applies, c1 is cancelled.
        let Confirmed::Applied(c) = got else {
            panic!("{got:?}")
        };
        assert_eq!(c.id, "c2");
        assert!(writes.contains(&KeyWrite::Change(Change {
            state: ChangeState::Cancelled,
            ..keys.changes[0].clone()
        })));
    }

    #[test]
    fn applying_a_replacement_moves_the_keys_and_cancels_the_rest() {
        let mut keys = replacing();
        keys.changes[0].proven_new = true;
        keys.changes
            .push(change("c2", ChangeKind::KeyRemove, None, false, false));
        let (writes, got) = follow_link(
            Some(&link(TokenPurpose::Approve, "A", Some("c1"))),
            &keys,
            at("10:00:00"),
        );
        let Confirmed::Applied(applied) = got else {
            panic!("{got:?}")
        };
        assert_eq!(applied.state, ChangeState::Applied);
        assert_eq!(
            writes,
            vec![
                KeyWrite::UseLink,
                KeyWrite::Retire {
                    fingerprint: "A".into(),
                    state: KeyState::Replaced
                },
                KeyWrite::Activate {
                    fingerprint: "B".into(),
                    at: at("10:00:00")
                },
                KeyWrite::Change(applied.clone()),
                KeyWrite::Change(Change {
                    state: ChangeState::Cancelled,
                    ..keys.changes[1].clone()
                }),
            ]
        );
    }

    #[test]
    fn an_unproven_request_never_displaces_a_proven_one_nor_resets_a_clock() {
        let now = at("10:00:00");
        let mut keys = replacing();
        keys.changes[0].proven_current = true; // the holder asked, signed
        let forged = change("c2", ChangeKind::KeyReplace, Some("X"), false, false);
        // Only the new change is written; c1 keeps its state and clock.
        assert_eq!(
            admit_change(&keys, &forged, now),
            Ok(vec![KeyWrite::Change(forged.clone())])
        );
        // A stream of forged requests is bounded, not a reset.
        keys.changes.push(forged.clone());
        keys.changes
            .push(change("c3", ChangeKind::KeyRemove, None, false, false));
        assert_eq!(
            admit_change(
                &keys,
                &change("c4", ChangeKind::KeyRemove, None, false, false),
                now
            ),
            Err(Refused::TooManyChanges)
        );
    }

    #[test]
    fn the_holders_signed_request_stands_in_for_what_waits() {
        let now = at("10:00:00");
        let keys = replacing();
        // A signed replacement waits for the new key's proof, in place of c1.
        let signed = change("c2", ChangeKind::KeyReplace, Some("C"), true, false);
        assert_eq!(
            admit_change(&keys, &signed, now),
            Ok(vec![
                KeyWrite::Change(Change {
                    state: ChangeState::Cancelled,
                    ..keys.changes[0].clone()
                }),
                KeyWrite::Change(signed.clone()),
            ])
        );
        // A signed removal needs nothing more: it applies at once.
        let remove = change("c3", ChangeKind::KeyRemove, None, true, false);
        let writes = admit_change(&keys, &remove, now).unwrap();
        assert_eq!(
            writes[0],
            KeyWrite::Retire {
                fingerprint: "A".into(),
                state: KeyState::Removed
            }
        );
        assert!(writes.contains(&KeyWrite::Change(Change {
            state: ChangeState::Applied,
            ..remove
        })));
        assert!(writes.contains(&KeyWrite::Change(Change {
            state: ChangeState::Cancelled,
            ..keys.changes[0].clone()
        })));
        // Too many waiting does not stop the holder.
        let mut crowded = keys.clone();
        crowded.changes = (0..5)
            .map(|i| change(&format!("x{i}"), ChangeKind::KeyRemove, None, false, false))
            .collect();
        assert!(admit_change(&crowded, &signed, now).is_ok());
    }
}
