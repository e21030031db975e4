//! The state machine of protected changes (DESIGN.md §7) as pure
//! functions: what may open, when a change is told about, what it takes
//! to apply, what a veto and an approval do. The change engine
//! (`crate::changes`) reads nothing and writes nothing through these; it turns
//! their answers into writes and notices, and the stores persist them in
//! the transaction that read the rows.
//!
//! ```text
//!            ┌── veto (any told destination, or staff) ──▶ vetoed
//!  pending ──┼── not_before passed, approvals in, still possible ──▶ applied
//!            ├── not_before passed, no longer possible ──▶ rejected
//!            ├── approvals not in EXPIRE_AFTER past not_before ──▶ expired
//!            └── superseded (a proven key change, another applied) ──▶ cancelled
//! ```

use crate::model::{
    Approval, Audience, Change, ChangeContext, ChangeKind, ChangeRefusal, ChangeState,
    DestinationUri, KeyState, ProofCode, ProofKind, SecurityLevel, VerifyOutcome, VetoLink,
};
use chrono::{DateTime, Duration, Utc};

/// How long a change past its cooling-off period may still wait for its
/// approvals before it expires.
pub const EXPIRE_AFTER: Duration = Duration::days(30);

/// When the people a pending change is told to hear of it: at the start,
/// half way, and the day before it may apply — for a period of a week or
/// less, a seventh of it before (so a change of seconds in a drill is
/// still told three times, in order). Never twice at the same moment.
pub fn reminder_times(
    requested_at: DateTime<Utc>,
    not_before: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let period = not_before - requested_at;
    if period <= Duration::zero() {
        return vec![requested_at];
    }
    let before = Duration::days(1).min(period / 7);
    let mut times = vec![requested_at, requested_at + period / 2, not_before - before];
    times.sort();
    times.dedup();
    times
}

/// Whether a request of `kind` on an account at this level, with or
/// without verified destinations already, is protected. Keys always are;
/// destinations and lowering security from `high` up — except on an
/// account nobody could be told on yet (its first destination is how it
/// is set up, and there is nothing to redirect).
pub fn protected(
    kind: ChangeKind,
    level: crate::model::SecurityLevel,
    told_anywhere: bool,
) -> bool {
    kind.is_key() || (kind.protected_at(level) && told_anywhere)
}

/// Whether `new` may open beside what `ctx` shows pending: a change of an
/// account waits until every other pending change of the account — and of
/// the keys of the addresses it is told at — has ended. (A key's changes
/// wait beside each other, bounded by `keys::rules`.)
pub fn open(new: &Change, ctx: &ChangeContext) -> Result<(), ChangeRefusal> {
    let blocking = ctx
        .others
        .iter()
        .any(|c| c.state == ChangeState::Pending && c.id != new.id);
    if blocking && !new.kind.is_key() {
        return Err(ChangeRefusal::Blocked);
    }
    Ok(())
}

/// What the scheduler does with a pending change at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Not yet: its period runs, or approvals are missing.
    Wait,
    Apply,
    /// It cannot apply any more; why.
    Reject(String),
    /// Its approvals never came.
    Expire,
}

/// Decides a pending change at `now` (see the module's diagram).
///
/// A change proven by the customer (a code, their key, an assurance)
/// does not wait out its period; every change waits for the level's
/// approvals; and at `maximum` a key change nobody proved — the lost key
/// — also waits for an assurance (DESIGN.md §7).
pub fn settle(c: &Change, ctx: &ChangeContext, now: DateTime<Utc>) -> Settle {
    let disabled = &ctx.disabled_approvers;
    if c.state != ChangeState::Pending || (now < c.not_before && !c.proven_without(disabled)) {
        return Settle::Wait;
    }
    if !c.approved_without(disabled) || needs_assurance(c, ctx) {
        return if now >= c.not_before + EXPIRE_AFTER {
            Settle::Expire
        } else {
            Settle::Wait
        };
    }
    match still_possible(c, ctx, now) {
        Ok(()) => Settle::Apply,
        Err(why) => Settle::Reject(why),
    }
}

/// Whether `c` may apply only with an assurance: a key change at
/// `maximum` that its key's holder did not prove (the key is lost).
pub fn needs_assurance(c: &Change, ctx: &ChangeContext) -> bool {
    ctx.level == SecurityLevel::Maximum && c.kind.is_key() && !c.proven_current
}

/// Whether what `c` asks can still be done.
fn still_possible(c: &Change, ctx: &ChangeContext, now: DateTime<Utc>) -> Result<(), String> {
    let dest_exists = |id: &str| {
        ctx.account.as_ref().is_some_and(|a| {
            a.contacts
                .iter()
                .flat_map(|c| &c.destinations)
                .any(|d| d.id == id)
        })
    };
    match c.kind {
        ChangeKind::KeyReplace => {
            let keys = ctx.keys.as_ref().ok_or("the address is unknown")?;
            let fpr = c.fingerprint().ok_or("the change names no key")?;
            let Some(key) = keys.pending.iter().find(|k| k.fingerprint == fpr) else {
                return Err(format!(
                    "the key {fpr} is no longer waiting to be confirmed"
                ));
            };
            if key.state != KeyState::Pending {
                return Err(format!("the key {fpr} is no longer waiting"));
            }
            if key.expires_at.is_some_and(|e| e <= now) {
                return Err(format!(
                    "the key {fpr} expired during the cooling-off period"
                ));
            }
            if !c.proven_new {
                return Err(format!(
                    "the holder of the key {fpr} never confirmed it (the link encrypted to it was not followed)"
                ));
            }
            Ok(())
        }
        ChangeKind::KeyRemove => match ctx.keys.as_ref().and_then(|k| k.active.as_ref()) {
            Some(_) => Ok(()),
            None => Err("the address has no active key any more".into()),
        },
        ChangeKind::DestinationAdd => {
            let plan = c
                .subject
                .destination
                .as_ref()
                .ok_or("the change names no destination")?;
            let view = ctx.account.as_ref().ok_or("the account is gone")?;
            if !view.contacts.iter().any(|x| x.contact.id == plan.contact) {
                return Err(format!("the contact {} is gone", plan.contact));
            }
            if dest_exists(&plan.id) {
                return Err("the destination exists already".into());
            }
            Ok(())
        }
        ChangeKind::DestinationRemove | ChangeKind::DestinationChange => {
            let plan = c
                .subject
                .destination
                .as_ref()
                .ok_or("the change names no destination")?;
            if dest_exists(&plan.id) {
                Ok(())
            } else {
                Err("the destination is gone".into())
            }
        }
        ChangeKind::SecurityLower => match &ctx.account {
            None => Err("the account is gone".into()),
            Some(v) => {
                let now = (v.account.security_level, v.account.paranoid);
                if c.subject.from.is_some_and(|from| from != now) {
                    Err("the account's security changed since it was asked".into())
                } else {
                    Ok(())
                }
            }
        },
    }
}

/// A veto through `link` (a customer's click) or by staff (`link` none):
/// the change as vetoed, or why not. A veto arriving after the change
/// applied says so, and changes nothing.
pub fn veto(
    change: Option<&Change>,
    link: Option<&VetoLink>,
    now: DateTime<Utc>,
    by: &str,
) -> Result<Change, ChangeRefusal> {
    if let Some(l) = link
        && (l.used || now >= l.expires_at)
    {
        return Err(ChangeRefusal::InvalidLink);
    }
    let c = change.ok_or(if link.is_some() {
        ChangeRefusal::InvalidLink
    } else {
        ChangeRefusal::NotFound
    })?;
    match c.state {
        ChangeState::Pending => Ok(Change {
            state: ChangeState::Vetoed,
            reason: Some(format!("vetoed by {by}")),
            ..c.clone()
        }),
        ChangeState::Applied => Err(ChangeRefusal::AlreadyApplied),
        _ => Err(ChangeRefusal::NotPending),
    }
}

/// An approval by staff member `staff`: the change with it, or why not.
/// Two approvals must come from two different people, neither of them
/// the one who asked.
pub fn approve(c: &Change, staff: &str, now: DateTime<Utc>) -> Result<Change, ChangeRefusal> {
    if c.state != ChangeState::Pending {
        return Err(ChangeRefusal::NotPending);
    }
    if c.approvals_needed == 0 {
        return Err(ChangeRefusal::NoApprovalNeeded);
    }
    if c.requested_by == format!("staff:{staff}") {
        return Err(ChangeRefusal::OwnChange);
    }
    if c.approvals.iter().any(|a| a.staff == staff) {
        return Err(ChangeRefusal::ApprovedAlready);
    }
    let mut c = c.clone();
    c.approvals.push(Approval {
        staff: staff.to_string(),
        at: now,
    });
    Ok(c)
}

/// What a factor the customer proved a change with weighs (see
/// [`weight_needed`]): a code to one of their destinations or a request
/// from their own connection is one channel; a split code (mail and a
/// second channel), a code mailed and texted back from their own line, or
/// an assurance is two.
pub fn factor_weight(factor: &str) -> u32 {
    match factor.split(':').next().unwrap_or_default() {
        "code" | "own_connection" => 1,
        "split_code" | "own_line" | "assurance" => 2,
        _ => 0,
    }
}

/// What the customer's factors must weigh to prove a change at `level`:
/// one channel below `high`, two from `high` (and at `maximum` the
/// approvals are still needed, see `Change::proven`).
pub fn weight_needed(level: SecurityLevel) -> u32 {
    if level >= SecurityLevel::High { 2 } else { 1 }
}

/// `c` with `factor` proved: proven by the customer once its factors — each
/// kind counted once, at its weight — weigh what `level` needs.
pub fn with_factor(c: &Change, factor: &str, level: SecurityLevel) -> Change {
    let mut c = c.clone();
    if !c.factors.iter().any(|f| f == factor) {
        c.factors.push(factor.to_string());
    }
    let mut kinds: Vec<(&str, u32)> = c
        .factors
        .iter()
        .map(|f| (f.split(':').next().unwrap_or_default(), factor_weight(f)))
        .collect();
    kinds.sort_unstable();
    kinds.dedup_by(|a, b| a.0 == b.0);
    if kinds.iter().map(|k| k.1).sum::<u32>() >= weight_needed(level) {
        c.proven_current = true;
        c.proof = Some(c.factors.join(" + "));
    }
    c
}

/// Where the codes proving `c` may go, for a proof of `kind` through
/// `destination` (and `second`, for a split code's other half).
///
/// * a code: a verified destination, below `high` only (above it one
///   channel proves nothing), never the mailbox a key change is about nor
///   the destination a change is about (whoever reads those may be the
///   one asking);
/// * a split code: one half to a verified mailbox — the key change's own
///   address too, the other half is what the mailbox reader lacks — and
///   the other to a verified destination that is not mail and not what
///   the change is about;
/// * a code to text back: to a verified mailbox, for an account with a
///   verified mobile number that is not what the change is about;
/// * never by letter: a code lives 15 minutes and a letter takes days (a
///   split code's paper half would have to stay valid, and guessable,
///   for as long — and wait at rest that long).
pub fn code_destination<'a>(
    c: &Change,
    ctx: &'a ChangeContext,
    kind: ProofKind,
    destination: &str,
    second: Option<&str>,
) -> Result<(&'a Audience, Option<&'a Audience>), ChangeRefusal> {
    if c.state != ChangeState::Pending {
        return Err(ChangeRefusal::NotPending);
    }
    let find = |id: &str| {
        ctx.audience
            .iter()
            .find(|a| a.destination.id == id)
            .ok_or(ChangeRefusal::NotADestination)
    };
    let is_mail = |a: &Audience| matches!(a.destination.uri, DestinationUri::Mailto(_));
    let about_destination = |id: &str| c.subject.destination.as_ref().is_some_and(|d| d.id == id);
    let to = find(destination)?;
    if about_destination(destination) {
        return Err(ChangeRefusal::NotADestination);
    }
    let by_letter = |a: &Audience| a.destination.uri == DestinationUri::Postal;
    let second_by_letter = second
        .and_then(|id| ctx.audience.iter().find(|a| a.destination.id == id))
        .is_some_and(by_letter);
    if by_letter(to) || second_by_letter {
        return Err(ChangeRefusal::NotADestination);
    }
    match kind {
        ProofKind::Code => {
            if ctx.level >= SecurityLevel::High {
                return Err(ChangeRefusal::CodeNotAllowed);
            }
            let about_mailbox = match (&to.destination.uri, &c.address) {
                (DestinationUri::Mailto(a), Some(address)) => a.as_str() == address,
                _ => false,
            };
            if about_mailbox {
                return Err(ChangeRefusal::NotADestination);
            }
            Ok((to, None))
        }
        ProofKind::Split => {
            let other = find(second.ok_or(ChangeRefusal::NotADestination)?)?;
            if !is_mail(to) || is_mail(other) || about_destination(&other.destination.id) {
                return Err(ChangeRefusal::NotADestination);
            }
            Ok((to, Some(other)))
        }
        ProofKind::Reply => {
            let mobile = ctx.audience.iter().any(|a| {
                matches!(a.destination.uri, DestinationUri::Sms(_))
                    && !about_destination(&a.destination.id)
            });
            if !is_mail(to) {
                return Err(ChangeRefusal::NotADestination);
            }
            if !mobile {
                return Err(ChangeRefusal::NoMobile);
            }
            Ok((to, None))
        }
    }
}

/// `c` with a new proof code of `kind` (its hash `hash`) through
/// `destination` (and `second`), within the limits of `trust::codes` (a
/// new code the same way does not renew the guesses).
pub fn with_code(
    c: &Change,
    (kind, destination, second): (ProofKind, &str, Option<&str>),
    hash: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Change, ChangeRefusal> {
    let row = c
        .proof_code
        .as_ref()
        .filter(|p| p.kind == kind && p.destination == destination)
        .map(|p| p.row.clone())
        .unwrap_or_default();
    let row =
        super::codes::issue(&row, hash, expires_at, now).map_err(|_| ChangeRefusal::CodeTooSoon)?;
    Ok(Change {
        proof_code: Some(ProofCode {
            destination: destination.to_string(),
            row,
            kind,
            second: second.map(str::to_string),
        }),
        ..c.clone()
    })
}

/// Checks a code entered for `c` (`hash`: of what was entered), typed in
/// (`from` none) or texted from the mobile number `from`: the change as it
/// is after (its code's counts moved on; the factor added if right, see
/// [`with_factor`]), and whether it was right. A code to text back counts
/// only texted from one of the account's verified numbers, and a typed
/// code only typed.
pub fn prove_by_code(
    c: &Change,
    ctx: &ChangeContext,
    hash: &str,
    from: Option<&str>,
    now: DateTime<Utc>,
) -> (Option<Change>, Result<(), ChangeRefusal>) {
    if c.state != ChangeState::Pending {
        return (None, Err(ChangeRefusal::NotPending));
    }
    let Some(code) = &c.proof_code else {
        return (None, Err(ChangeRefusal::NoCode));
    };
    let own_line = from.filter(|number| {
        ctx.audience.iter().any(|a| match &a.destination.uri {
            DestinationUri::Sms(n) => {
                n.as_str() == *number
                    && c.subject
                        .destination
                        .as_ref()
                        .is_none_or(|d| d.id != a.destination.id)
            }
            _ => false,
        })
    });
    match (code.kind, from, own_line) {
        (ProofKind::Reply, None, _) | (ProofKind::Code | ProofKind::Split, Some(_), _) => {
            return (None, Err(ChangeRefusal::WrongWay));
        }
        // Not a number of this account: not even a guess at its code.
        (ProofKind::Reply, Some(_), None) => return (None, Err(ChangeRefusal::NoCode)),
        _ => {}
    }
    let (next, outcome) = super::codes::check(&code.row, hash, now);
    let mut after = c.clone();
    if let Some(row) = next {
        after.proof_code = Some(ProofCode {
            row,
            ..code.clone()
        });
    }
    let answer = match outcome {
        VerifyOutcome::Verified => {
            let factor = match (code.kind, own_line) {
                (ProofKind::Code, _) => format!("code:{}", code.destination),
                (ProofKind::Split, _) => format!(
                    "split_code:{}+{}",
                    code.destination,
                    code.second.as_deref().unwrap_or_default()
                ),
                (ProofKind::Reply, number) => {
                    format!("own_line:{}", number.unwrap_or_default())
                }
            };
            after = with_factor(&after, &factor, ctx.level);
            Ok(())
        }
        VerifyOutcome::WrongCode { .. } => Err(ChangeRefusal::WrongCode),
        VerifyOutcome::AlreadyVerified => Err(ChangeRefusal::NotPending),
        VerifyOutcome::Locked | VerifyOutcome::NotFound => Err(ChangeRefusal::CodeLocked),
    };
    (Some(after), answer)
}

/// Whether `address` (where the customer's request came from, as the
/// source system saw it) is inside one of the account's own `prefixes`:
/// the factor `own_connection:<address>` if so.
pub fn own_connection(address: std::net::IpAddr, prefixes: &[ipnet::IpNet]) -> Option<String> {
    prefixes
        .iter()
        .any(|p| p.contains(&address))
        .then(|| format!("own_connection:{address}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Account, AccountView, AddressKeys, Contact, ContactView, Destination, DestinationPlan,
        KeyRecord, Subject,
    };

    fn t(min: i64) -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(min)
    }

    fn change(kind: ChangeKind) -> Change {
        Change {
            id: "c1".into(),
            kind,
            account: Some("acme".into()),
            address: None,
            state: ChangeState::Pending,
            proof: None,
            requested_at: t(0),
            requested_by: "staff:ann".into(),
            not_before: t(60),
            approvals: Vec::new(),
            approvals_needed: 0,
            reason: None,
            subject: Subject::default(),
            proven_current: false,
            proven_new: false,
            proof_code: None,
            factors: Vec::new(),
        }
    }

    fn view(dests: &[&str]) -> AccountView {
        AccountView {
            account: Account {
                id: "acme".into(),
                name: "Acme".into(),
                timezone: None,
                security_level: SecurityLevel::High,
                paranoid: false,
                defaults: Default::default(),
                prefixes: Vec::new(),
                postal_address: None,
            },
            contacts: vec![ContactView {
                contact: Contact {
                    id: "alice".into(),
                    name: "Alice".into(),
                    timezone: None,
                    prefs: Default::default(),
                },
                destinations: dests
                    .iter()
                    .map(|id| Destination {
                        id: id.to_string(),
                        contact: "alice".into(),
                        uri: "sms:+447700900123".parse().unwrap(),
                        prefs: Default::default(),
                        verified: true,
                        unhealthy_since: None,
                    })
                    .collect(),
            }],
        }
    }

    fn key(fpr: &str, state: KeyState, expires: Option<i64>) -> KeyRecord {
        KeyRecord {
            address: "a@x.example".into(),
            fingerprint: fpr.into(),
            armored: String::new(),
            state,
            source: "api".into(),
            submitted_at: t(0),
            activated_at: None,
            expires_at: expires.map(t),
        }
    }

    #[test]
    fn reminders_at_the_start_half_way_and_the_day_before() {
        let days = |d: i64| t(0) + Duration::days(d);
        // (period end, reminders)
        let cases = [
            (days(14), vec![t(0), days(7), days(13)]),
            (days(30), vec![t(0), days(15), days(29)]),
            // A week or less: a seventh before.
            (days(7), vec![t(0), t(0) + Duration::hours(84), days(6)]),
            (
                t(0) + Duration::seconds(14),
                vec![
                    t(0),
                    t(0) + Duration::seconds(7),
                    t(0) + Duration::seconds(12),
                ],
            ),
            (t(0), vec![t(0)]),
        ];
        for (end, want) in cases {
            assert_eq!(reminder_times(t(0), end), want, "period to {end}");
        }
    }

    #[test]
    fn what_is_protected() {
        use ChangeKind::*;
        use SecurityLevel::*;
        // (kind, level, told anywhere, protected)
        for (kind, level, told, want) in [
            (KeyReplace, Standard, false, true),
            (KeyRemove, Standard, true, true),
            (DestinationAdd, Standard, true, false),
            (DestinationAdd, High, true, true),
            (DestinationAdd, High, false, false),
            (DestinationRemove, Maximum, true, true),
            (SecurityLower, High, true, true),
            (SecurityLower, Standard, true, false),
        ] {
            assert_eq!(
                protected(kind, level, told),
                want,
                "{kind:?} {level:?} {told}"
            );
        }
    }

    #[test]
    fn a_pending_change_blocks_others_of_its_account() {
        let mut other = change(ChangeKind::DestinationAdd);
        other.id = "c0".into();
        let ctx = ChangeContext {
            others: vec![other.clone()],
            ..Default::default()
        };
        assert_eq!(
            open(&change(ChangeKind::DestinationRemove), &ctx),
            Err(ChangeRefusal::Blocked)
        );
        let ended = ChangeContext {
            others: vec![Change {
                state: ChangeState::Vetoed,
                ..other
            }],
            ..Default::default()
        };
        assert_eq!(open(&change(ChangeKind::DestinationRemove), &ended), Ok(()));
        // A key of one of its addresses waiting to change blocks it too.
        let key = ChangeContext {
            others: vec![Change::of_key(
                "k1",
                "a@x.example",
                ChangeKind::KeyReplace,
                Some("F"),
                t(0),
                t(60),
            )],
            ..Default::default()
        };
        assert_eq!(
            open(&change(ChangeKind::DestinationAdd), &key),
            Err(ChangeRefusal::Blocked)
        );
        assert_eq!(
            open(&change(ChangeKind::SecurityLower), &Default::default()),
            Ok(())
        );
    }

    #[test]
    fn settling_a_change() {
        let plan = |id: &str| DestinationPlan {
            id: id.into(),
            contact: "alice".into(),
            uri: "sms:+447700900999".into(),
            prefs: Default::default(),
            verified: false,
        };
        let with_dest = |kind, id: &str| Change {
            subject: Subject {
                destination: Some(Box::new(plan(id))),
                ..Default::default()
            },
            ..change(kind)
        };
        let account = ChangeContext {
            account: Some(view(&["d1"])),
            ..Default::default()
        };
        let keys = |pending: Vec<KeyRecord>, active: bool| ChangeContext {
            keys: Some(AddressKeys {
                active: active.then(|| key("OLD", KeyState::Active, None)),
                pending,
                changes: Vec::new(),
            }),
            ..Default::default()
        };
        let replace = |proven_new| Change {
            proven_new,
            subject: Subject {
                fingerprint: Some("NEW".into()),
                ..Default::default()
            },
            ..change(ChangeKind::KeyReplace)
        };
        let needs_two = Change {
            approvals_needed: 2,
            approvals: vec![Approval {
                staff: "bob".into(),
                at: t(1),
            }],
            ..with_dest(ChangeKind::DestinationAdd, "d2")
        };
        let two = Change {
            approvals: vec![
                Approval {
                    staff: "bob".into(),
                    at: t(1),
                },
                Approval {
                    staff: "cy".into(),
                    at: t(2),
                },
            ],
            ..needs_two.clone()
        };
        let reject = |why: &str| Settle::Reject(why.to_string());
        let lowering = |from| Change {
            subject: Subject {
                security_level: Some(SecurityLevel::Standard),
                from: Some((from, false)),
                ..Default::default()
            },
            ..change(ChangeKind::SecurityLower)
        };
        // (case, change, context, now, decision)
        let cases: Vec<(&str, Change, ChangeContext, i64, Settle)> = vec![
            (
                "period runs",
                with_dest(ChangeKind::DestinationAdd, "d2"),
                account.clone(),
                59,
                Settle::Wait,
            ),
            (
                "period over",
                with_dest(ChangeKind::DestinationAdd, "d2"),
                account.clone(),
                60,
                Settle::Apply,
            ),
            (
                "one approval of two",
                needs_two.clone(),
                account.clone(),
                61,
                Settle::Wait,
            ),
            (
                "two approvals",
                two.clone(),
                account.clone(),
                61,
                Settle::Apply,
            ),
            (
                "two approvals, one approver disabled since",
                two,
                ChangeContext {
                    disabled_approvers: vec!["cy".into()],
                    ..account.clone()
                },
                61,
                Settle::Wait,
            ),
            (
                "approvals never came",
                needs_two,
                account.clone(),
                60 + 30 * 24 * 60,
                Settle::Expire,
            ),
            (
                "contact gone",
                Change {
                    subject: Subject {
                        destination: Some(Box::new(DestinationPlan {
                            contact: "bob".into(),
                            ..plan("d2")
                        })),
                        ..Default::default()
                    },
                    ..change(ChangeKind::DestinationAdd)
                },
                account.clone(),
                60,
                reject("the contact bob is gone"),
            ),
            (
                "remove: still there",
                with_dest(ChangeKind::DestinationRemove, "d1"),
                account.clone(),
                60,
                Settle::Apply,
            ),
            (
                "remove: gone",
                with_dest(ChangeKind::DestinationRemove, "d9"),
                account.clone(),
                60,
                reject("the destination is gone"),
            ),
            (
                "lower security",
                change(ChangeKind::SecurityLower),
                account.clone(),
                60,
                Settle::Apply,
            ),
            (
                "lower security, account gone",
                change(ChangeKind::SecurityLower),
                Default::default(),
                60,
                reject("the account is gone"),
            ),
            (
                "lower security, asked at high",
                lowering(SecurityLevel::High),
                account.clone(),
                60,
                Settle::Apply,
            ),
            (
                "lower security, raised meanwhile",
                lowering(SecurityLevel::Maximum),
                account.clone(),
                60,
                reject("the account's security changed since it was asked"),
            ),
            (
                "new key confirmed",
                replace(true),
                keys(vec![key("NEW", KeyState::Pending, None)], true),
                60,
                Settle::Apply,
            ),
            (
                "new key never confirmed",
                replace(false),
                keys(vec![key("NEW", KeyState::Pending, None)], true),
                60,
                reject(
                    "the holder of the key NEW never confirmed it (the link encrypted to it was not followed)",
                ),
            ),
            (
                "new key expired meanwhile",
                replace(true),
                keys(vec![key("NEW", KeyState::Pending, Some(30))], true),
                60,
                reject("the key NEW expired during the cooling-off period"),
            ),
            (
                "new key gone",
                replace(true),
                keys(vec![], true),
                60,
                reject("the key NEW is no longer waiting to be confirmed"),
            ),
            (
                "remove a key",
                change(ChangeKind::KeyRemove),
                keys(vec![], true),
                60,
                Settle::Apply,
            ),
            (
                "remove a key that is gone",
                change(ChangeKind::KeyRemove),
                keys(vec![], false),
                60,
                reject("the address has no active key any more"),
            ),
            (
                "ended already",
                Change {
                    state: ChangeState::Vetoed,
                    ..change(ChangeKind::KeyRemove)
                },
                keys(vec![], true),
                90,
                Settle::Wait,
            ),
        ];
        for (case, c, ctx, now, want) in cases {
            assert_eq!(settle(&c, &ctx, t(now)), want, "{case}");
        }
    }

    type VetoCase<'a> = (
        &'a str,
        Option<&'a Change>,
        Option<VetoLink>,
        Result<ChangeState, ChangeRefusal>,
    );

    #[test]
    fn vetoes() {
        let link = |used, expires| VetoLink {
            change: "c1".into(),
            destination: "d1".into(),
            expires_at: t(expires),
            used,
        };
        let pending = change(ChangeKind::DestinationAdd);
        let applied = Change {
            state: ChangeState::Applied,
            ..pending.clone()
        };
        let cancelled = Change {
            state: ChangeState::Cancelled,
            ..pending.clone()
        };
        // (case, change, link, outcome)
        let cases: Vec<VetoCase> = vec![
            (
                "a valid link",
                Some(&pending),
                Some(link(false, 90)),
                Ok(ChangeState::Vetoed),
            ),
            ("staff", Some(&pending), None, Ok(ChangeState::Vetoed)),
            (
                "a used link",
                Some(&pending),
                Some(link(true, 90)),
                Err(ChangeRefusal::InvalidLink),
            ),
            (
                "an expired link",
                Some(&pending),
                Some(link(false, 5)),
                Err(ChangeRefusal::InvalidLink),
            ),
            ("an unknown link", None, None, Err(ChangeRefusal::NotFound)),
            (
                "after it applied",
                Some(&applied),
                Some(link(false, 90)),
                Err(ChangeRefusal::AlreadyApplied),
            ),
            (
                "after it ended",
                Some(&cancelled),
                Some(link(false, 90)),
                Err(ChangeRefusal::NotPending),
            ),
        ];
        for (case, c, l, want) in cases {
            let got = veto(c, l.as_ref(), t(10), "link:d1").map(|c| c.state);
            assert_eq!(got, want, "{case}");
        }
        let vetoed = veto(Some(&pending), None, t(10), "staff:bob").unwrap();
        assert_eq!(vetoed.reason.as_deref(), Some("vetoed by staff:bob"));
    }

    #[test]
    fn a_code_proves_a_change_only_below_high_and_never_through_what_it_is_about() {
        let audience = |level| ChangeContext {
            level,
            audience: view(&["sms1"])
                .contacts
                .into_iter()
                .flat_map(|c| c.destinations)
                .chain([Destination {
                    id: "mail1".into(),
                    contact: "alice".into(),
                    uri: "mailto:a@x.example".parse().unwrap(),
                    prefs: Default::default(),
                    verified: true,
                    unhealthy_since: None,
                }])
                .map(|destination| Audience {
                    account: "acme".into(),
                    destination,
                })
                .collect(),
            ..Default::default()
        };
        let key = Change::of_key(
            "c1",
            "a@x.example",
            ChangeKind::KeyReplace,
            Some("F"),
            t(0),
            t(60),
        );
        let add = Change {
            subject: Subject {
                destination: Some(Box::new(DestinationPlan {
                    id: "sms1".into(),
                    contact: "alice".into(),
                    uri: "sms:+447700900123".into(),
                    prefs: Default::default(),
                    verified: false,
                })),
                ..Default::default()
            },
            ..change(ChangeKind::DestinationRemove)
        };
        let id = |r: Result<(&Audience, Option<&Audience>), ChangeRefusal>| {
            r.map(|(a, _)| a.destination.id.clone())
        };
        use SecurityLevel::*;
        // (case, change, level, destination, outcome)
        let cases = [
            (
                "the phone, standard",
                &key,
                Standard,
                "sms1",
                Ok("sms1".to_string()),
            ),
            (
                "the phone, high",
                &key,
                High,
                "sms1",
                Err(ChangeRefusal::CodeNotAllowed),
            ),
            (
                "the mailbox the key is for",
                &key,
                Standard,
                "mail1",
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "unknown",
                &key,
                Standard,
                "x",
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "the destination removed",
                &add,
                Standard,
                "sms1",
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "another mailbox",
                &add,
                Standard,
                "mail1",
                Ok("mail1".to_string()),
            ),
        ];
        for (case, c, level, dest, want) in cases {
            assert_eq!(
                id(code_destination(
                    c,
                    &audience(level),
                    ProofKind::Code,
                    dest,
                    None
                )),
                want,
                "{case}"
            );
        }
        // Sent, then entered: wrong, then right.
        let how = (ProofKind::Code, "sms1", None);
        let ctx = audience(Standard);
        let sent = with_code(&key, how, "h1", t(30), t(1)).unwrap();
        let (after, wrong) = prove_by_code(&sent, &ctx, "nope", None, t(2));
        assert_eq!(wrong, Err(ChangeRefusal::WrongCode));
        let after = after.unwrap();
        assert_eq!(after.proof_code.as_ref().unwrap().row.attempts, 1);
        let (proven, right) = prove_by_code(&after, &ctx, "h1", None, t(3));
        assert_eq!(right, Ok(()));
        let proven = proven.unwrap();
        assert!(proven.proven_current && !proven.proven());
        assert_eq!(proven.proof.as_deref(), Some("code:sms1"));
        assert_eq!(proven.factors, vec!["code:sms1".to_string()]);
        // Expired, and none sent; texted instead of typed.
        assert_eq!(
            prove_by_code(&sent, &ctx, "h1", None, t(31)).1,
            Err(ChangeRefusal::CodeLocked)
        );
        assert_eq!(
            prove_by_code(&key, &ctx, "h1", None, t(3)).1,
            Err(ChangeRefusal::NoCode)
        );
        assert_eq!(
            prove_by_code(&sent, &ctx, "h1", Some("+447700900123"), t(3)).1,
            Err(ChangeRefusal::WrongWay)
        );
        // A second code at once: too soon.
        assert_eq!(
            with_code(&sent, how, "h2", t(30), t(1)),
            Err(ChangeRefusal::CodeTooSoon)
        );
    }

    #[test]
    fn second_channel_factors_and_what_each_level_needs() {
        use SecurityLevel::*;
        let dest = |id: &str, uri: &str| Audience {
            account: "acme".into(),
            destination: Destination {
                id: id.into(),
                contact: "alice".into(),
                uri: uri.parse().unwrap(),
                prefs: Default::default(),
                verified: true,
                unhealthy_since: None,
            },
        };
        let ctx = |level, with_phone: bool| ChangeContext {
            level,
            audience: [
                Some(dest("mail1", "mailto:a@x.example")),
                with_phone.then(|| dest("sms1", "sms:+447700900123")),
                Some(dest("hook1", "https://hooks.example.com/a")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            ..Default::default()
        };
        let key = Change::of_key(
            "c1",
            "a@x.example",
            ChangeKind::KeyReplace,
            Some("F"),
            t(0),
            t(60),
        );
        let ok = |r: Result<(&Audience, Option<&Audience>), ChangeRefusal>| {
            r.map(|(a, b)| {
                (
                    a.destination.id.clone(),
                    b.map(|b| b.destination.id.clone()),
                )
            })
        };
        // (case, kind, destination, second, level, phone, outcome)
        let cases = [
            (
                "split: mail + phone, high",
                ProofKind::Split,
                "mail1",
                Some("sms1"),
                High,
                true,
                Ok(("mail1".to_string(), Some("sms1".to_string()))),
            ),
            (
                "split: the key's own mailbox is one half",
                ProofKind::Split,
                "mail1",
                Some("hook1"),
                Maximum,
                true,
                Ok(("mail1".to_string(), Some("hook1".to_string()))),
            ),
            (
                "split: two mailboxes",
                ProofKind::Split,
                "mail1",
                Some("mail1"),
                High,
                true,
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "split: no second",
                ProofKind::Split,
                "mail1",
                None,
                High,
                true,
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "split: first half not mail",
                ProofKind::Split,
                "sms1",
                Some("hook1"),
                High,
                true,
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "reply: to the mailbox",
                ProofKind::Reply,
                "mail1",
                None,
                High,
                true,
                Ok(("mail1".to_string(), None)),
            ),
            (
                "reply: no mobile",
                ProofKind::Reply,
                "mail1",
                None,
                High,
                false,
                Err(ChangeRefusal::NoMobile),
            ),
            (
                "reply: not to a mailbox",
                ProofKind::Reply,
                "sms1",
                None,
                High,
                true,
                Err(ChangeRefusal::NotADestination),
            ),
            (
                "code at high",
                ProofKind::Code,
                "sms1",
                None,
                High,
                true,
                Err(ChangeRefusal::CodeNotAllowed),
            ),
        ];
        for (case, kind, d, second, level, phone, want) in cases {
            let ctx = ctx(level, phone);
            assert_eq!(
                ok(code_destination(&key, &ctx, kind, d, second)),
                want,
                "{case}"
            );
        }
        // A reply counts only from the account's own number.
        let high = ctx(High, true);
        let sent = with_code(&key, (ProofKind::Reply, "mail1", None), "h", t(30), t(1)).unwrap();
        for (from, want) in [
            (None, Err(ChangeRefusal::WrongWay)),
            (Some("+15550000000"), Err(ChangeRefusal::NoCode)),
        ] {
            assert_eq!(
                prove_by_code(&sent, &high, "h", from, t(2)).1,
                want,
                "{from:?}"
            );
        }
        let (after, right) = prove_by_code(&sent, &high, "h", Some("+447700900123"), t(2));
        assert_eq!(right, Ok(()));
        let after = after.unwrap();
        assert!(after.proven_current, "two channels prove at high");
        assert_eq!(after.factors, vec!["own_line:+447700900123".to_string()]);

        // (factors, level, proven)
        for (factors, level, want) in [
            (vec!["own_connection:203.0.113.7"], Standard, true),
            (vec!["own_connection:203.0.113.7"], High, false),
            // The same kind twice counts once.
            (
                vec!["own_connection:203.0.113.7", "own_connection:203.0.113.8"],
                High,
                false,
            ),
            (vec!["split_code:mail1+sms1"], High, true),
            (vec!["split_code:mail1+sms1"], Maximum, true),
            (vec!["code:sms1", "own_connection:203.0.113.7"], High, true),
        ] {
            let mut c = key.clone();
            for f in &factors {
                c = with_factor(&c, f, level);
            }
            assert_eq!(c.proven_current, want, "{factors:?} at {level:?}");
        }
        // At maximum the approvals are still needed.
        let mut c = with_factor(&key, "split_code:mail1+sms1", Maximum);
        c.proven_new = true;
        c.approvals_needed = 2;
        assert!(!c.proven());
        // Own connection: inside the account's prefixes only.
        let prefixes: Vec<ipnet::IpNet> = vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        for (ip, want) in [
            ("203.0.113.7", true),
            ("203.0.114.7", false),
            ("2001:db8::1", true),
            ("::ffff:203.0.113.7", false),
        ] {
            assert_eq!(
                own_connection(ip.parse().unwrap(), &prefixes).is_some(),
                want,
                "{ip}"
            );
        }
    }

    #[test]
    fn a_lost_key_at_maximum_waits_for_an_assurance_and_a_proof_skips_the_period() {
        let keys = AddressKeys {
            active: Some(key("OLD", KeyState::Active, None)),
            pending: vec![key("NEW", KeyState::Pending, None)],
            changes: Vec::new(),
        };
        let at = |level| ChangeContext {
            keys: Some(keys.clone()),
            level,
            ..Default::default()
        };
        let replace = Change {
            proven_new: true,
            subject: Subject {
                fingerprint: Some("NEW".into()),
                ..Default::default()
            },
            ..change(ChangeKind::KeyReplace)
        };
        let assured = Change {
            proven_current: true,
            proof: Some("assurance:a1".into()),
            ..replace.clone()
        };
        let approved = Change {
            approvals_needed: 2,
            approvals: vec![
                Approval {
                    staff: "bob".into(),
                    at: t(1),
                },
                Approval {
                    staff: "cy".into(),
                    at: t(2),
                },
            ],
            ..replace.clone()
        };
        // (case, change, level, now, decision)
        let cases = [
            (
                "high: the period alone",
                replace.clone(),
                SecurityLevel::High,
                60,
                Settle::Apply,
            ),
            (
                "maximum, approved, nobody proved it",
                approved.clone(),
                SecurityLevel::Maximum,
                60,
                Settle::Wait,
            ),
            (
                "…until it expires",
                approved.clone(),
                SecurityLevel::Maximum,
                60 + 30 * 24 * 60,
                Settle::Expire,
            ),
            (
                "maximum, assured and approved, before the period",
                Change {
                    proven_current: true,
                    proof: Some("assurance:a1".into()),
                    ..approved.clone()
                },
                SecurityLevel::Maximum,
                1,
                Settle::Apply,
            ),
            (
                "assured, approvals missing",
                Change {
                    approvals_needed: 2,
                    ..assured.clone()
                },
                SecurityLevel::Maximum,
                1,
                Settle::Wait,
            ),
            (
                "assured at high: at once",
                assured,
                SecurityLevel::High,
                1,
                Settle::Apply,
            ),
        ];
        for (case, c, level, now, want) in cases {
            assert_eq!(settle(&c, &at(level), t(now)), want, "{case}");
        }
    }

    #[test]
    fn approvals_by_two_different_people_neither_the_requester() {
        let c = Change {
            approvals_needed: 2,
            ..change(ChangeKind::SecurityLower)
        };
        assert_eq!(approve(&c, "ann", t(1)), Err(ChangeRefusal::OwnChange));
        let once = approve(&c, "bob", t(1)).unwrap();
        assert!(!once.approved());
        assert_eq!(
            approve(&once, "bob", t(2)),
            Err(ChangeRefusal::ApprovedAlready)
        );
        let twice = approve(&once, "cy", t(2)).unwrap();
        assert!(twice.approved());
        let none_needed = change(ChangeKind::SecurityLower);
        assert_eq!(
            approve(&none_needed, "bob", t(1)),
            Err(ChangeRefusal::NoApprovalNeeded)
        );
        let ended = Change {
            state: ChangeState::Vetoed,
            ..c
        };
        assert_eq!(approve(&ended, "bob", t(1)), Err(ChangeRefusal::NotPending));
    }
}
