//! One conformance suite, run against both stores: every `check_*` takes a
//! fresh, migrated store. PostgreSQL runs against a real server
//! (`KCI_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`),
//! each test in a schema of its own; if the server is not there the tests
//! fail rather than skip.

use super::*;
use crate::config::Config;
use crate::model::Preferences;
use crate::model::{DestinationUri, Priority, SecurityLevel};
use chrono::Duration;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("test time")
}

fn account(id: &str) -> Account {
    Account {
        id: id.into(),
        name: format!("Customer {id}"),
        timezone: Some("Europe/London".parse().unwrap()),
        security_level: SecurityLevel::Standard,
        paranoid: false,
        defaults: Preferences::default(),
        prefixes: Vec::new(),
        postal_address: None,
    }
}

/// Contact `alice` with default preferences.
fn alice() -> Contact {
    Contact {
        id: "alice".into(),
        name: "Alice".into(),
        timezone: None,
        prefs: Default::default(),
    }
}

fn destination(contact: &str, uri: &str, verified: bool) -> Destination {
    Destination {
        id: new_id(),
        contact: contact.into(),
        uri: uri.parse::<DestinationUri>().unwrap(),
        prefs: Preferences::default(),
        verified,
        unhealthy_since: None,
    }
}

/// An event of type `line.down` (as the tests' config defines it).
pub(crate) fn event(id: &str, account: &str, key: &str, at: DateTime<Utc>) -> Event {
    Event {
        id: id.into(),
        type_name: "line.down".into(),
        account: account.into(),
        service: Some(key.into()),
        contact: None,
        key: key.into(),
        priority: Priority::Normal,
        category: "line".into(),
        occurred_at: at,
        not_before: None,
        expires_at: None,
        received_at: at,
        data: Default::default(),
        short: Some("Your line went down.".into()),
        subject: None,
        body: None,
    }
}

/// Sent at `at`, with no receipt to wait for.
fn sent_at(at: DateTime<Utc>) -> Finish {
    Finish::Sent {
        at,
        receipt: Default::default(),
    }
}

pub(crate) fn planner() -> Arc<dyn Planner> {
    let config = Arc::new(Config::parse("[types.\"line.down\"]\n", "test").unwrap());
    crate::ingest::planner(config)
}

/// An account A1 with contact alice and two verified destinations.
pub(crate) async fn seed(store: &dyn Store) {
    assert_eq!(
        store.put_account(&account("A1")).await.unwrap().0,
        PutOutcome::Created
    );
    assert_eq!(
        store.put_contact("A1", &alice()).await.unwrap(),
        PutOutcome::Created
    );
    for uri in ["mailto:alice@example.com", "https://hooks.example.com/kci"] {
        let d = destination("alice", uri, true);
        assert_eq!(
            store.add_destination("A1", &d, None, None).await.unwrap(),
            PutOutcome::Created
        );
    }
}

pub async fn check_tokens(store: &dyn Store) {
    let rec = TokenRecord {
        id: new_id(),
        name: "billing".into(),
        scopes: vec![Scope::EventsWrite, Scope::DirectoryRead],
        created_at: from_ms(1_700_000_000_000),
        staff: None,
        expires_at: Some(from_ms(1_700_086_400_000)),
        revoked_at: None,
        last_used_at: None,
        last_used_from: None,
        allow: vec!["192.0.2.0/24".parse().unwrap()],
        cert: Some("ab".repeat(32)),
        session: false,
    };
    store
        .create_token(&rec, &sha256_hex(b"secret"))
        .await
        .unwrap();
    assert_eq!(
        store.find_token(&sha256_hex(b"secret")).await.unwrap(),
        Some(rec.clone())
    );
    assert_eq!(store.find_token(&sha256_hex(b"other")).await.unwrap(), None);

    // Its last use, recorded.
    let used = from_ms(1_700_000_060_000);
    store
        .touch_token(&rec.id, used, Some("192.0.2.7"))
        .await
        .unwrap();
    let found = store
        .find_token(&sha256_hex(b"secret"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.last_used_at, found.last_used_from.as_deref()),
        (Some(used), Some("192.0.2.7"))
    );
    // Rotated: the old one revoked, the new one with the same name, scopes
    // and expiry, in one step; rotating a revoked one does nothing.
    let new = TokenRecord {
        id: new_id(),
        created_at: from_ms(1_700_000_120_000),
        last_used_at: None,
        last_used_from: None,
        ..rec.clone()
    };
    assert!(
        store
            .rotate_token(&rec.id, &new, &sha256_hex(b"secret-2"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_token(&rec.id, &new, &sha256_hex(b"secret-3"))
            .await
            .unwrap()
    );
    let old = store
        .find_token(&sha256_hex(b"secret"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.revoked_at, Some(new.created_at));
    assert!(!old.usable(new.created_at));
    assert_eq!(
        store.find_token(&sha256_hex(b"secret-2")).await.unwrap(),
        Some(new.clone())
    );
    assert_eq!(
        store.find_token(&sha256_hex(b"secret-3")).await.unwrap(),
        None
    );
    // Revoked once; listed newest first.
    let at = from_ms(1_700_000_180_000);
    assert!(store.revoke_token(&new.id, at).await.unwrap());
    assert!(!store.revoke_token(&new.id, at).await.unwrap());
    assert!(!store.revoke_token("unknown", at).await.unwrap());
    let listed: Vec<String> = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, vec![new.id.clone(), rec.id.clone()]);
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    crate::model::from_millis(ms)
}

pub async fn check_directory(store: &dyn Store) {
    assert_eq!(
        store.put_contact("nobody", &alice()).await.unwrap(),
        PutOutcome::NoParent
    );
    seed(store).await;
    assert_eq!(
        store
            .contacts_with_uri("mailto:alice@example.com")
            .await
            .unwrap(),
        vec![("A1".to_string(), "alice".to_string())]
    );
    let mut a = account("A1");
    a.name = "Renamed".into();
    a.security_level = SecurityLevel::High;
    a.defaults.window = Some("Mo-Fr 08:00-20:00".parse().unwrap());
    assert_eq!(store.put_account(&a).await.unwrap().0, PutOutcome::Updated);
    let view = store.account_view("A1").await.unwrap().unwrap();
    assert_eq!(view.account, a);
    assert_eq!(view.contacts.len(), 1);
    assert_eq!(view.contacts[0].destinations.len(), 2);
    assert!(store.account_view("A2").await.unwrap().is_none());
    let orphan = destination("bob", "mailto:bob@example.com", true);
    assert_eq!(
        store
            .add_destination("A1", &orphan, None, None)
            .await
            .unwrap(),
        PutOutcome::NoParent
    );

    // Verification: wrong codes count, the right one verifies, then it sticks.
    let now = t("2026-03-22T10:00:00Z");
    let d = destination("alice", "sms:+447700900001", false);
    let code = crate::trust::codes::first(&sha256_hex(b"123456"), now + Duration::hours(24), now);
    store
        .add_destination("A1", &d, Some(code), None)
        .await
        .unwrap();
    let wrong = sha256_hex(b"000000");
    assert_eq!(
        store
            .verify_destination(
                "A1",
                "alice",
                &d.id,
                &wrong,
                now,
                crate::trust::codes::check
            )
            .await
            .unwrap(),
        VerifyOutcome::WrongCode {
            attempts_left: crate::trust::codes::PER_CODE - 1
        }
    );
    assert_eq!(
        store
            .verify_destination("A1", "bob", &d.id, &wrong, now, crate::trust::codes::check)
            .await
            .unwrap(),
        VerifyOutcome::NotFound
    );
    let right = sha256_hex(b"123456");
    assert_eq!(
        store
            .verify_destination(
                "A1",
                "alice",
                &d.id,
                &right,
                now,
                crate::trust::codes::check
            )
            .await
            .unwrap(),
        VerifyOutcome::Verified
    );
    assert_eq!(
        store
            .verify_destination(
                "A1",
                "alice",
                &d.id,
                &right,
                now,
                crate::trust::codes::check
            )
            .await
            .unwrap(),
        VerifyOutcome::AlreadyVerified
    );

    // Too many wrong codes lock it, even for the right code afterwards.
    let d2 = destination("alice", "sms:+447700900002", false);
    let code = crate::trust::codes::first(&right.clone(), now + Duration::hours(24), now);
    store
        .add_destination("A1", &d2, Some(code), None)
        .await
        .unwrap();
    for _ in 0..crate::trust::codes::PER_CODE {
        store
            .verify_destination(
                "A1",
                "alice",
                &d2.id,
                &wrong,
                now,
                crate::trust::codes::check,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .verify_destination(
                "A1",
                "alice",
                &d2.id,
                &right,
                now,
                crate::trust::codes::check
            )
            .await
            .unwrap(),
        VerifyOutcome::Locked
    );

    // An expired code is refused.
    let d3 = destination("alice", "sms:+447700900003", false);
    let code = crate::trust::codes::first(&right.clone(), now, now);
    store
        .add_destination("A1", &d3, Some(code), None)
        .await
        .unwrap();
    let later = now + Duration::seconds(1);
    assert_eq!(
        store
            .verify_destination(
                "A1",
                "alice",
                &d3.id,
                &right,
                later,
                crate::trust::codes::check
            )
            .await
            .unwrap(),
        VerifyOutcome::Locked
    );

    assert!(
        store
            .delete_destination("A1", "alice", &d3.id, now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_destination("A1", "alice", &d3.id, now)
            .await
            .unwrap()
    );
    let view = store.account_view("A1").await.unwrap().unwrap();
    assert_eq!(view.contacts[0].destinations.len(), 4);
}

pub async fn check_ingest_is_atomic_and_idempotent(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let out = store
        .ingest(vec![event("e1", "A1", "L1", now)], planner())
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![IngestOutcome::Accepted {
            id: "e1".into(),
            notifications: 2,
            due: Some(now),
        }]
    );
    // The same id again: the first answer, nothing new.
    let mut again = event("e1", "A1", "L1", now + Duration::seconds(5));
    again.short = Some("different".into());
    let out = store.ingest(vec![again], planner()).await.unwrap();
    assert_eq!(
        out,
        vec![IngestOutcome::Duplicate {
            id: "e1".into(),
            notifications: 2
        }]
    );
    let (ev, notes) = store.event("e1").await.unwrap().unwrap();
    assert_eq!(ev.short.as_deref(), Some("Your line went down."));
    assert_eq!(notes.len(), 2);
    assert!(
        notes
            .iter()
            .all(|n| n.state == State::Pending && n.due_at == now)
    );

    // A batch: a bad event in the middle stores nothing and spoils nothing.
    let out = store
        .ingest(
            vec![
                event("e2", "A1", "L2", now),
                event("e3", "NOPE", "L1", now),
                event("e4", "A1", "L3", now),
            ],
            planner(),
        )
        .await
        .unwrap();
    assert!(matches!(out[0], IngestOutcome::Accepted { .. }));
    assert!(matches!(&out[1], IngestOutcome::Rejected(r) if r.code == "unknown_account"));
    assert!(matches!(out[2], IngestOutcome::Accepted { .. }));
    assert!(store.event("e3").await.unwrap().is_none());
    assert!(store.event("e4").await.unwrap().is_some());
    let total: i64 = store
        .count_by_state()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 6);
    let backlog = store.backlog().await.unwrap();
    let pending = store
        .notifications_in(State::Pending, None, 100)
        .await
        .unwrap();
    let oldest = pending.iter().map(|n| n.due_at).min();
    assert_eq!(backlog.oldest_due, oldest, "{pending:?}");
    assert_eq!(
        (
            backlog.changes_pending,
            backlog.incidents_open,
            backlog.destinations_unhealthy
        ),
        (0, 0, 0)
    );
}

/// A batch is written together but reads as events taken one by one: an
/// id repeated in it is a duplicate of its first, and an event that pairs
/// sees (and cancels) a partner earlier in the same batch.
/// What a notice is, apart from its id, event, key and texts.
#[derive(Debug, PartialEq)]
struct Shape {
    contact: String,
    destination: String,
    uri: String,
    channel: ChannelKind,
    type_name: String,
    priority: Priority,
    state: State,
    due_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    decided_at: DateTime<Utc>,
    timezone: String,
    has_message: bool,
    has_secret: bool,
}

/// The shapes of an event's notices, in destination order: notices
/// written together compare equal to those of one written alone.
fn shapes(mut notes: Vec<Notification>) -> Vec<Shape> {
    notes.sort_by(|a, b| a.destination.cmp(&b.destination));
    notes
        .into_iter()
        .map(|n| Shape {
            has_message: n.message.is_some(),
            has_secret: n.secret.is_some(),
            contact: n.contact,
            destination: n.destination,
            uri: n.uri,
            channel: n.channel,
            type_name: n.type_name,
            priority: n.priority,
            state: n.state,
            due_at: n.due_at,
            expires_at: n.expires_at,
            decided_at: n.decided_at,
            timezone: n.timezone,
        })
        .collect()
}

pub async fn check_batch_ingest_in_order(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let config = Config::parse(
        "[types.\"line.down\"]\n[types.\"line.up\"]\ncancels = [\"line.down\"]\n",
        "test",
    )
    .unwrap();
    let planner = crate::ingest::planner(Arc::new(config));
    store
        .ingest(vec![event("b0", "A1", "L0", now)], planner.clone())
        .await
        .unwrap();
    let mut up = event("b3", "A1", "L1", now + Duration::seconds(30));
    up.type_name = "line.up".into();
    let out = store
        .ingest(
            vec![
                event("b1", "A1", "L1", now),
                event("b0", "A1", "L0", now),
                event("b2", "A1", "L2", now),
                event("b1", "A1", "L1", now),
                up,
                event("b4", "NOPE", "L1", now),
                event("b5", "A1", "L5", now),
            ],
            planner,
        )
        .await
        .unwrap();
    let accepted = |id: &str, n| IngestOutcome::Accepted {
        id: id.into(),
        notifications: n,
        due: Some(now),
    };
    let duplicate = |id: &str, n| IngestOutcome::Duplicate {
        id: id.into(),
        notifications: n,
    };
    assert_eq!(out.len(), 7);
    assert_eq!(out[0], accepted("b1", 2));
    assert_eq!(out[1], duplicate("b0", 2), "known before the batch");
    assert_eq!(out[2], accepted("b2", 2));
    assert_eq!(out[3], duplicate("b1", 2), "repeated in the batch");
    assert!(
        matches!(out[4], IngestOutcome::Accepted { .. }),
        "{:?}",
        out[4]
    );
    assert!(matches!(&out[5], IngestOutcome::Rejected(r) if r.code == "unknown_account"));
    assert_eq!(out[6], accepted("b5", 2));
    // The line came up in the same batch: its drop's notices are paired
    // away; the others wait.
    let (_, b1) = store.event("b1").await.unwrap().unwrap();
    assert!(
        b1.iter()
            .all(|n| n.state == State::Cancelled && n.reason == Some(Reason::Paired)),
        "{b1:?}"
    );
    for id in ["b2", "b5"] {
        let (_, notes) = store.event(id).await.unwrap().unwrap();
        assert_eq!(notes.len(), 2);
        assert!(notes.iter().all(|n| n.state == State::Pending));
    }
    assert!(store.event("b4").await.unwrap().is_none());
    // Written together (one statement per table on PostgreSQL), each
    // notice is as one written alone (b0) would be, with its first
    // decision.
    let (_, alone) = store.event("b0").await.unwrap().unwrap();
    for id in ["b2", "b5"] {
        let (_, together) = store.event(id).await.unwrap().unwrap();
        assert_eq!(shapes(together.clone()), shapes(alone.clone()), "{id}");
        let history = store.history(id).await.unwrap();
        let mut decided: Vec<&str> = history.iter().map(|d| d.notification.as_str()).collect();
        decided.sort_unstable();
        let mut ids: Vec<&str> = together.iter().map(|n| n.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(decided, ids, "{id}: one first decision each");
        assert!(history.iter().all(|d| d.state == State::Pending));
    }
}

/// A batch larger than a statement's share (SQLite writes its notices 32
/// rows to a statement, the rest one by one): every notice is written as
/// one written alone would be, each with its own first decision, and
/// none is lost or doubled.
pub async fn check_a_large_batch_is_written_whole(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    store
        .ingest(vec![event("alone", "A1", "L", now)], planner())
        .await
        .unwrap();
    let batch: Vec<Event> = (0..41)
        .map(|i| event(&format!("big-{i}"), "A1", &format!("L{i}"), now))
        .collect();
    let out = store.ingest(batch, planner()).await.unwrap();
    assert_eq!(out.len(), 41);
    let (_, alone) = store.event("alone").await.unwrap().unwrap();
    let mut every = std::collections::HashSet::new();
    for (i, o) in out.iter().enumerate() {
        let id = format!("big-{i}");
        assert!(
            matches!(o, IngestOutcome::Accepted { id: got, notifications: 2, .. } if *got == id),
            "{o:?}"
        );
        let (_, notes) = store.event(&id).await.unwrap().unwrap();
        assert_eq!(shapes(notes.clone()), shapes(alone.clone()), "{id}");
        for n in &notes {
            assert_eq!(n.key, format!("L{i}"));
            assert!(every.insert(n.id.clone()), "{} written twice", n.id);
        }
        let history = store.history(&id).await.unwrap();
        let decided: std::collections::HashSet<&str> =
            history.iter().map(|d| d.notification.as_str()).collect();
        let ids: std::collections::HashSet<&str> = notes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(history.len(), 2, "{id}: {history:?}");
        assert_eq!(decided, ids, "{id}: one first decision each");
        assert!(
            history
                .iter()
                .all(|d| d.state == State::Pending && d.at == now)
        );
    }
    assert_eq!(every.len(), 82);
}

/// A planner for the checks of what the store reads for planning: asks
/// for the notices of `related` types (and cancels every one it sees) or
/// counts `line.down` events within the hour, says whether an event is
/// `keyed`, records what it saw, and plans with the default policy.
struct Probe {
    related: Option<&'static str>,
    counts: bool,
    keyed: bool,
    related_seen: std::sync::Mutex<Vec<String>>,
    recent_seen: std::sync::Mutex<Vec<usize>>,
}

impl Probe {
    fn related(type_name: &'static str) -> Self {
        Probe {
            related: Some(type_name),
            counts: false,
            keyed: true,
            related_seen: Default::default(),
            recent_seen: Default::default(),
        }
    }

    fn counting(keyed: bool) -> Self {
        Probe {
            related: None,
            counts: true,
            keyed,
            related_seen: Default::default(),
            recent_seen: Default::default(),
        }
    }
}

impl Planner for Probe {
    fn related_types(&self, _: &Event) -> Vec<String> {
        self.related.iter().map(|t| t.to_string()).collect()
    }
    fn keyed(&self, _: &Event) -> bool {
        self.keyed
    }
    fn flap_window(&self, _: &Event) -> Option<(Vec<String>, chrono::Duration)> {
        self.counts
            .then(|| (vec!["line.down".into()], Duration::hours(1)))
    }
    fn loads_needed(&self, _: &Event, _: &AccountView) -> Vec<(String, Option<chrono::Duration>)> {
        Vec::new()
    }
    fn plan(
        &self,
        ev: &Event,
        view: &AccountView,
        seen: &Seen,
    ) -> std::result::Result<Planned, Rejection> {
        let pending = seen.related;
        self.related_seen
            .lock()
            .unwrap()
            .extend(pending.iter().map(|p| p.event.clone()));
        self.recent_seen.lock().unwrap().push(seen.recent);
        let config = Config::load(None).unwrap();
        let mut plan = crate::plan::plan(ev, view, &config, seen, ev.received_at);
        plan.cancels = pending
            .iter()
            .map(|p| crate::plan::Cancel {
                id: p.id.clone(),
                reason: Reason::Paired,
                detail: format!("paired with {}", ev.id),
            })
            .collect();
        Ok(plan.planned(ev))
    }
}

pub async fn check_planner_sees_pending_and_cancels(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    store
        .ingest(vec![event("e1", "A1", "L1", now)], planner())
        .await
        .unwrap();
    // Asks for pending notices of one type, and cancels what it saw.
    let other_type = Arc::new(Probe::related("line.up"));
    store
        .ingest(vec![event("e2", "A1", "L1", now)], other_type.clone())
        .await
        .unwrap();
    assert!(
        other_type.related_seen.lock().unwrap().is_empty(),
        "only related types are looked up"
    );
    let cancelling = Arc::new(Probe::related("line.down"));
    store
        .ingest(vec![event("e3", "A1", "L1", now)], cancelling.clone())
        .await
        .unwrap();
    let mut seen = cancelling.related_seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["e1", "e1", "e2", "e2"]);
    let (_, notes) = store.event("e1").await.unwrap().unwrap();
    assert!(
        notes
            .iter()
            .all(|n| n.state == State::Cancelled && n.reason == Some(Reason::Paired))
    );
}

/// Flap counting (and pairing's latest event) find only events stored
/// as keyed (`Planner::keyed`): one stored while nothing looked its type
/// up has no entry in `events_key` and is not counted later.
pub async fn check_only_keyed_events_are_counted(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    // Counts line.down events of the key within the hour.
    let unkeyed = Arc::new(Probe::counting(false));
    let keyed = Arc::new(Probe::counting(true));
    let at = |m: i64| now + Duration::minutes(m);
    for (id, m, planner) in [
        ("e1", 0, &unkeyed),
        ("e2", 1, &keyed),
        ("e3", 2, &unkeyed),
        ("e4", 3, &keyed),
    ] {
        let p: Arc<dyn Planner> = planner.clone();
        store
            .ingest(vec![event(id, "A1", "L1", at(m))], p)
            .await
            .unwrap();
    }
    // e2 saw none (e1 is not keyed); e4 saw e2 only.
    assert_eq!(*keyed.recent_seen.lock().unwrap(), [0, 1]);
    // Those not keyed count the keyed ones before them all the same.
    assert_eq!(*unkeyed.recent_seen.lock().unwrap(), [0, 1]);
    // Stored whole either way.
    for id in ["e1", "e2", "e3", "e4"] {
        assert!(store.event(id).await.unwrap().is_some(), "{id}");
    }
    // Pairing's latest event of a type is the latest keyed one: with
    // nothing pending any more, an unkeyed e5 after e4 is not it.
    store
        .ingest(vec![event("e5", "A1", "L1", at(4))], unkeyed.clone())
        .await
        .unwrap();
    for id in ["e1", "e2", "e3", "e4", "e5"] {
        store.cancel_event(id, at(5)).await.unwrap();
    }
    let pairing = Arc::new(Probe::related("line.down"));
    store
        .ingest(vec![event("e6", "A1", "L1", at(6))], pairing.clone())
        .await
        .unwrap();
    let mut seen = pairing.related_seen.lock().unwrap().clone();
    seen.dedup();
    assert_eq!(seen, ["e4"]);
}

pub async fn check_claim_lease_and_finish(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let mut later = event("later", "A1", "L9", now);
    later.not_before = Some(now + Duration::hours(1));
    store
        .ingest(vec![event("e1", "A1", "L1", now), later], planner())
        .await
        .unwrap();
    assert_eq!(store.next_due(None).await.unwrap(), Some(now));

    // A claim says whether the account is paranoid.
    let mut paranoid = account("A1");
    paranoid.paranoid = true;
    store.put_account(&paranoid).await.unwrap();
    let lease = now + Duration::minutes(2);
    let claimed = store.claim_due(now, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2, "only e1's two are due");
    assert!(claimed.iter().all(|c| c.paranoid));
    assert!(
        claimed
            .iter()
            .all(|c| c.event.as_ref().is_some_and(|e| e.id == "e1"))
    );
    assert!(
        claimed
            .iter()
            .all(|c| c.notification.state == State::Sending && c.notification.attempts == 1)
    );
    // Leased: nobody else gets them until the lease runs out.
    assert!(
        store
            .claim_due(now + Duration::seconds(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let (a, b) = (&claimed[0].notification, &claimed[1].notification);
    store
        .finish(
            &a.id,
            Finish::Sent {
                at: now,
                receipt: crate::model::Receipt {
                    detail: Some("250 OK".into()),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    let retry_at = now + Duration::seconds(30);
    store
        .finish(
            &b.id,
            Finish::Retry {
                at: now,
                due_at: retry_at,
                detail: "timeout".into(),
            },
        )
        .await
        .unwrap();
    // Finishing twice (a late worker) changes nothing.
    store
        .finish(
            &a.id,
            Finish::Failed {
                at: now,
                reason: Reason::Rejected,
                detail: "x".into(),
            },
        )
        .await
        .unwrap();

    let (_, notes) = store.event("e1").await.unwrap().unwrap();
    let get = |id: &str| notes.iter().find(|n| n.id == id).unwrap().clone();
    let sent = get(&a.id);
    assert_eq!(
        (sent.state, sent.sent_at, sent.detail.as_deref()),
        (State::Sent, Some(now), Some("250 OK"))
    );
    let retry = get(&b.id);
    assert_eq!(
        (retry.state, retry.reason, retry.due_at),
        (State::Pending, Some(Reason::Retry), retry_at)
    );

    // A crashed worker: its lease runs out and the work is claimed again.
    let re = store
        .claim_due(retry_at, retry_at + Duration::minutes(2), 10)
        .await
        .unwrap();
    assert_eq!(re.len(), 1);
    assert_eq!(re[0].notification.attempts, 2);
    let after_lease = retry_at + Duration::minutes(3);
    let again = store
        .claim_due(after_lease, after_lease + Duration::minutes(2), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "expired lease is claimed again");
    assert_eq!(again[0].notification.attempts, 3);
    // A rate limit sends it back to the queue without counting an attempt.
    let slot = after_lease + Duration::seconds(30);
    store
        .finish(
            &again[0].notification.id,
            Finish::Deferred {
                at: after_lease,
                due_at: slot,
                detail: "rate".into(),
            },
        )
        .await
        .unwrap();
    let back = store
        .claim_due(slot, slot + Duration::minutes(2), 10)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].notification.attempts, 3,
        "the deferral gave its attempt back"
    );
    assert_eq!(back[0].notification.reason, Some(Reason::RateLimit));
    // The provider asking to wait (HTTP 429) gives the attempt back too,
    // and is counted as pacing.
    let later = slot + Duration::seconds(7);
    store
        .finish(
            &back[0].notification.id,
            Finish::Paced {
                at: slot,
                due_at: later,
                detail: "rate_limited: HTTP 429".into(),
            },
        )
        .await
        .unwrap();
    let back = store
        .claim_due(later, later + Duration::minutes(2), 10)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].notification.attempts, back[0].notification.paced),
        (3, 1),
        "paced, not attempted"
    );
    store
        .finish(&back[0].notification.id, Finish::Expired { at: later })
        .await
        .unwrap();
    assert_eq!(
        store.next_due(None).await.unwrap(),
        Some(now + Duration::hours(1))
    );
}

/// Claims take the longest-waiting work first: a notice whose lease ran
/// out (its node died with it) before any pending one, pending ones by
/// due time, whatever order the rows were written in. So a dead node's
/// work is taken over as its lease ends, not after the whole backlog.
pub async fn check_claim_takes_the_longest_waiting_first(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    // Written newest first: e3 (due in 3 minutes) … e0 (due now).
    for i in (0..4).rev() {
        let mut e = event(&format!("e{i}"), "A1", &format!("L{i}"), now);
        e.not_before = Some(now + Duration::minutes(i));
        store.ingest(vec![e], planner()).await.unwrap();
    }
    let events = |claimed: &[Claimed]| -> Vec<String> {
        let mut ids: Vec<String> = claimed
            .iter()
            .filter_map(|c| c.notification.event.clone())
            .collect();
        ids.sort();
        ids
    };
    let webhook = ChannelKind::Webhook;
    let at = now + Duration::minutes(10);
    let first = store
        .claim_due_on(webhook, at, at + Duration::minutes(1), 1)
        .await
        .unwrap();
    assert_eq!(first.left, Left::More, "as many as asked for");
    let first = first.claimed;
    assert_eq!(events(&first), ["e0"], "the earliest due first");
    // e0's node dies; after its lease, e0 goes before the pending ones.
    let at = now + Duration::minutes(20);
    let next = store
        .claim_due_on(webhook, at, at + Duration::minutes(1), 2)
        .await
        .unwrap()
        .claimed;
    assert_eq!(events(&next), ["e0", "e1"], "the expired lease first");
    let e0 = next
        .iter()
        .find(|c| c.notification.event.as_deref() == Some("e0"))
        .unwrap();
    assert_eq!(e0.notification.attempts, 2);
    let rest = store
        .claim_due_on(webhook, at, at + Duration::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.left,
        Left::Nothing,
        "fewer than asked for: all there was"
    );
    assert_eq!(events(&rest.claimed), ["e2", "e3"]);
    // The mail channel's own queue, in due order too.
    let mail = store
        .claim_due_on(ChannelKind::Email, at, at + Duration::minutes(1), 3)
        .await
        .unwrap()
        .claimed;
    assert_eq!(events(&mail), ["e0", "e1", "e2"]);
    let mail = store
        .claim_due(at, at + Duration::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!(events(&mail), ["e3"]);
}

/// Each key's notices to a destination go out one at a time, in the
/// order they were planned: a later one is not claimed while an earlier
/// one is being sent, is due, or waits to be tried again (a retry, a
/// provider's 429); one that its policy places later (`not_before`) does
/// not hold up the next.
pub async fn check_claim_keeps_each_keys_order(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let webhook = ChannelKind::Webhook;
    for (id, key) in [("e0", "K"), ("e1", "K"), ("e2", "K"), ("f0", "F")] {
        store
            .ingest(vec![event(id, "A1", key, now)], planner())
            .await
            .unwrap();
    }
    // What a claim took (event and notice ids, sorted), and what it left:
    // while a notice waits for its turn, a claim says so.
    let claim_left = |at: DateTime<Utc>| async move {
        let LaneClaim { claimed, left } = store
            .claim_due_on(webhook, at, at + Duration::hours(1), 10)
            .await
            .unwrap();
        let mut got: Vec<(String, String)> = claimed
            .into_iter()
            .map(|c| {
                let n = c.notification;
                (n.event.unwrap_or_default(), n.id)
            })
            .collect();
        got.sort();
        (got, left)
    };
    let claim = |at: DateTime<Utc>| async move {
        let (got, left) = claim_left(at).await;
        assert_eq!(left, Left::InTurn, "at {at}: a notice of K waits");
        got
    };
    let events = |got: &[(String, String)]| got.iter().map(|g| g.0.clone()).collect::<Vec<_>>();
    let first = claim(now).await;
    assert_eq!(events(&first), ["e0", "f0"], "one of each key");
    assert!(claim(now).await.is_empty(), "e1 waits while e0 is sent");
    // e0 failed for now: e1 waits for its retry.
    store
        .finish(
            &first[0].1,
            Finish::Retry {
                at: now,
                due_at: now + Duration::minutes(2),
                detail: "HTTP 503".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        claim(now + Duration::minutes(1)).await.is_empty(),
        "e1 waits for e0's retry"
    );
    let again = claim(now + Duration::minutes(2)).await;
    assert_eq!(events(&again), ["e0"], "the retry, not e1");
    // The provider asks to wait: paced, and still first in line.
    let at = now + Duration::minutes(2);
    store
        .finish(
            &again[0].1,
            Finish::Paced {
                at,
                due_at: at + Duration::seconds(5),
                detail: "HTTP 429".into(),
            },
        )
        .await
        .unwrap();
    assert!(claim(at).await.is_empty(), "e1 waits for e0's pacing");
    let at = at + Duration::seconds(5);
    let again = claim(at).await;
    assert_eq!(events(&again), ["e0"]);
    let sent = sent_at(at);
    store.finish(&again[0].1, sent.clone()).await.unwrap();
    let next = claim(at).await;
    assert_eq!(events(&next), ["e1"], "e1 once e0 is sent");
    // A notice that failed for good no longer holds up its key either.
    store
        .finish(
            &next[0].1,
            Finish::Failed {
                at,
                reason: Reason::Rejected,
                detail: "HTTP 410".into(),
            },
        )
        .await
        .unwrap();
    let (last, left) = claim_left(at).await;
    assert_eq!(events(&last), ["e2"]);
    assert_eq!(left, Left::Nothing, "the last of K taken");
    // Another destination's notices of the key are a line of their own:
    // the mail channel's first of K, whatever the webhook's did.
    let mail = store
        .claim_due_on(ChannelKind::Email, at, at + Duration::minutes(1), 10)
        .await
        .unwrap()
        .claimed;
    let mut mail: Vec<_> = mail
        .iter()
        .filter_map(|c| c.notification.event.clone())
        .collect();
    mail.sort();
    assert_eq!(mail, ["e0", "f0"]);
    // An earlier notice that its policy holds until later does not hold
    // up a later one that may go now.
    let mut held = event("g0", "A1", "G", at);
    held.not_before = Some(at + Duration::hours(1));
    store.ingest(vec![held], planner()).await.unwrap();
    store
        .ingest(vec![event("g1", "A1", "G", at)], planner())
        .await
        .unwrap();
    let (g, left) = claim_left(at).await;
    assert_eq!(events(&g), ["g1"]);
    assert_eq!(left, Left::Nothing, "g0 is not due");
}

/// An outcome is written under the lease it was claimed with: a node
/// that outlived its lease (the notice claimed again elsewhere) writes
/// nothing, and the new claim's outcome stands.
pub async fn check_finish_holds_to_its_lease(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    store
        .ingest(vec![event("e0", "A1", "L0", now)], planner())
        .await
        .unwrap();
    let webhook = ChannelKind::Webhook;
    let first = store
        .claim_due_on(webhook, now, now + Duration::minutes(1), 1)
        .await
        .unwrap()
        .claimed;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].lease_until, Some(now + Duration::minutes(1)));
    let id = first[0].notification.id.clone();
    // The first claim's lease runs out; another claim takes the notice.
    let later = now + Duration::minutes(2);
    let second = store
        .claim_due_on(webhook, later, later + Duration::minutes(1), 1)
        .await
        .unwrap()
        .claimed;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].notification.id, id);
    let failed = Finish::Failed {
        at: later,
        reason: Reason::Rejected,
        detail: "HTTP 410 from the first node".into(),
    };
    assert!(
        !store
            .finish_leased(&id, now + Duration::minutes(1), failed)
            .await
            .unwrap(),
        "the first claim's outcome comes too late"
    );
    let sent = sent_at(later);
    assert!(
        store
            .finish_leased(&id, later + Duration::minutes(1), sent.clone())
            .await
            .unwrap()
    );
    let (_, notes) = store.event("e0").await.unwrap().unwrap();
    let n = notes.iter().find(|n| n.id == id).unwrap();
    assert_eq!((n.state, n.attempts), (State::Sent, 2));
    // Once written, written: no second outcome under the same lease.
    assert!(
        !store
            .finish_leased(&id, later + Duration::minutes(1), sent)
            .await
            .unwrap()
    );
}

/// Outcomes written together are each written as alone: under its
/// lease where it names one, in order (a notice twice: the second finds
/// it no longer being sent), with its decision and, sent, its
/// destination's refusals cleared; what is not being sent is left alone.
pub async fn check_outcomes_written_together(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let events: Vec<Event> = (0..3)
        .map(|i| event(&format!("e{i}"), "A1", &format!("L{i}"), now))
        .collect();
    store.ingest(events, planner()).await.unwrap();
    let lease = now + Duration::minutes(1);
    let hooks = store
        .claim_due_on(ChannelKind::Webhook, now, lease, 10)
        .await
        .unwrap()
        .claimed;
    let mails = store
        .claim_due_on(ChannelKind::Email, now, lease, 10)
        .await
        .unwrap()
        .claimed;
    assert_eq!((hooks.len(), mails.len()), (3, 3));
    let hook = |i: usize| hooks[i].notification.id.clone();
    let hook_destination = hooks[0].notification.destination.clone();
    // Two refusals in a row at the webhook, which a sent notice clears.
    for _ in 0..2 {
        assert!(
            !store
                .count_outcome(&hook_destination, true, 3, now)
                .await
                .unwrap()
        );
    }
    let at = now + Duration::seconds(5);
    let retry_at = now + Duration::minutes(10);
    let outcome = |id: String, lease_until: Option<DateTime<Utc>>, finish: Finish| Outcome {
        id,
        lease_until,
        finish,
    };
    let written = store
        .finish_all(vec![
            outcome(hook(0), Some(lease), sent_at(at)),
            outcome(
                hook(1),
                Some(lease + Duration::seconds(1)),
                Finish::Retry {
                    at,
                    due_at: retry_at,
                    detail: "HTTP 503 under another lease".into(),
                },
            ),
            outcome(
                hook(2),
                None,
                Finish::Failed {
                    at,
                    reason: Reason::Rejected,
                    detail: "HTTP 410".into(),
                },
            ),
            outcome(hook(2), None, sent_at(at)),
            outcome(
                mails[0].notification.id.clone(),
                Some(lease),
                Finish::Paced {
                    at,
                    due_at: retry_at,
                    detail: "421 slow down".into(),
                },
            ),
            outcome("no-such-notice".into(), None, sent_at(at)),
        ])
        .await
        .unwrap();
    assert_eq!(written, [true, false, true, false, true, false]);
    // A claimed notice as it is now, and its event's history.
    let note = |c: &Claimed| {
        let (event, id) = (
            c.notification.event.clone().unwrap(),
            c.notification.id.clone(),
        );
        async move {
            let (_, notes) = store.event(&event).await.unwrap().unwrap();
            notes.into_iter().find(|n| n.id == id).unwrap()
        }
    };
    let history = |c: &Claimed| {
        let (event, id) = (
            c.notification.event.clone().unwrap(),
            c.notification.id.clone(),
        );
        async move {
            let history = store.history(&event).await.unwrap();
            history
                .into_iter()
                .filter(|d| d.notification == id && d.at == at)
                .map(|d| (d.state, d.reason))
                .collect::<Vec<_>>()
        }
    };
    let sent = note(&hooks[0]).await;
    assert_eq!(
        (sent.state, sent.sent_at, sent.attempts, sent.decided_at),
        (State::Sent, Some(at), 1, at)
    );
    let other_lease = note(&hooks[1]).await;
    assert_eq!(
        (other_lease.state, other_lease.attempts, other_lease.due_at),
        (State::Sending, 1, now),
        "written only under its own lease"
    );
    let failed = note(&hooks[2]).await;
    assert_eq!(
        (failed.state, failed.reason, failed.detail.as_deref()),
        (State::Failed, Some(Reason::Rejected), Some("HTTP 410"))
    );
    let paced = note(&mails[0]).await;
    assert_eq!(
        (
            paced.state,
            paced.reason,
            paced.attempts,
            paced.paced,
            paced.due_at
        ),
        (State::Pending, Some(Reason::RateLimit), 0, 1, retry_at)
    );
    // Each written outcome is in its event's history, once.
    assert_eq!(
        history(&hooks[2]).await,
        [(State::Failed, Some(Reason::Rejected))]
    );
    assert!(history(&hooks[1]).await.is_empty());
    assert_eq!(history(&hooks[0]).await, [(State::Sent, None)]);
    assert_eq!(
        history(&mails[0]).await,
        [(State::Pending, Some(Reason::RateLimit))]
    );
    // The sent notice cleared the webhook's refusals: two more do not
    // reach three in a row, a third does.
    for marks in [false, false, true] {
        assert_eq!(
            store
                .count_outcome(&hook_destination, true, 3, at)
                .await
                .unwrap(),
            marks
        );
    }
    // Nothing to write is no error.
    assert!(store.finish_all(Vec::new()).await.unwrap().is_empty());
}

pub async fn check_cancel_event(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    store
        .ingest(vec![event("e1", "A1", "L1", now)], planner())
        .await
        .unwrap();
    let claimed = store
        .claim_due(now, now + Duration::minutes(2), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.cancel_event("e1", now).await.unwrap(),
        Some(1),
        "the one in flight is not cancelled"
    );
    assert_eq!(store.cancel_event("nope", now).await.unwrap(), None);
    let (_, notes) = store.event("e1").await.unwrap().unwrap();
    let cancelled: Vec<_> = notes
        .iter()
        .filter(|n| n.state == State::Cancelled)
        .collect();
    // The record: planned pending, then cancelled by the DELETE.
    let history = store.history("e1").await.unwrap();
    let of = |id: &str| {
        history
            .iter()
            .filter(|d| d.notification == id)
            .map(|d| (d.state, d.reason))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&cancelled[0].id),
        vec![
            (State::Pending, None),
            (State::Cancelled, Some(Reason::EventCancelled))
        ]
    );
    assert_eq!(
        of(&claimed[0].notification.id),
        vec![(State::Pending, None)]
    );
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].reason, Some(Reason::EventCancelled));
}

pub async fn check_own_notices(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let view = store.account_view("A1").await.unwrap().unwrap();
    let dest = &view.contacts[0].destinations[0];
    let n = Notification {
        id: new_id(),
        event: None,
        account: "A1".into(),
        contact: "alice".into(),
        destination: dest.id.clone(),
        uri: dest.uri.to_string(),
        channel: dest.uri.channel(),
        type_name: "kci.verify".into(),
        key: "verify".into(),
        priority: Priority::High,
        state: State::Pending,
        reason: None,
        detail: None,
        due_at: now,
        expires_at: None,
        decided_at: now,
        sent_at: None,
        attempts: 0,
        paced: 0,
        timezone: "UTC".into(),
        digest: None,
        paired_from: None,
        provider_ref: None,
        receipt: None,
        segments: None,
        secret: None,
        message: Some(Message {
            short: "code 123456".into(),
            subject: "s".into(),
            body: "b".into(),
            encrypt_to: None,
        }),
    };
    store.enqueue(&n).await.unwrap();
    let claimed = store
        .claim_due(now, now + Duration::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].event.is_none());
    assert_eq!(claimed[0].notification.message, n.message);
}

/// The next due time and the backlog's oldest are the earliest over
/// every channel's queue (each read through its own range of the
/// (channel, due_at) index, migration 27), and a lease's end counts.
pub async fn check_next_due_over_every_channel(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-22T10:00:00Z");
    let view = store.account_view("A1").await.unwrap().unwrap();
    let to = |channel: ChannelKind| {
        view.contacts
            .iter()
            .flat_map(|c| &c.destinations)
            .find(|d| d.uri.channel() == channel)
            .unwrap_or_else(|| panic!("seed has a {channel:?} destination"))
    };
    let notice = |channel: ChannelKind, due_at: DateTime<Utc>| {
        let message = Message {
            short: "code 123456".into(),
            subject: "s".into(),
            body: "b".into(),
            encrypt_to: None,
        };
        Notification::own(
            "A1",
            to(channel),
            "kci.verify",
            Priority::High,
            message,
            due_at,
            None,
        )
    };
    assert_eq!(store.next_due(None).await.unwrap(), None);
    assert_eq!(store.backlog().await.unwrap().oldest_due, None);
    let (soon, late) = (now + Duration::minutes(1), now + Duration::minutes(3));
    store
        .enqueue(&notice(ChannelKind::Webhook, late))
        .await
        .unwrap();
    store
        .enqueue(&notice(ChannelKind::Email, soon))
        .await
        .unwrap();
    assert_eq!(store.next_due(None).await.unwrap(), Some(soon));
    assert_eq!(store.next_due(Some(soon)).await.unwrap(), Some(late));
    assert_eq!(store.backlog().await.unwrap().oldest_due, Some(soon));
    // The mail goes out with a lease of a minute: its end comes first.
    let lease = soon + Duration::minutes(1);
    let claimed = store
        .claim_due_on(ChannelKind::Email, soon, lease, 10)
        .await
        .unwrap()
        .claimed;
    assert_eq!(claimed.len(), 1);
    assert_eq!(store.next_due(Some(soon)).await.unwrap(), Some(lease));
    assert_eq!(store.backlog().await.unwrap().oldest_due, Some(late));
    assert_eq!(store.next_due(Some(lease)).await.unwrap(), Some(late));
    assert_eq!(store.next_due(Some(late)).await.unwrap(), None);
}

pub async fn check_digest_folding_and_cancellation(store: &dyn Store) {
    assert_eq!(
        store.put_account(&account("A1")).await.unwrap().0,
        PutOutcome::Created
    );
    store.put_contact("A1", &alice()).await.unwrap();
    let mut d = destination("alice", "mailto:alice@example.com", true);
    d.prefs.digest = Some("1h".parse().unwrap());
    store.add_destination("A1", &d, None, None).await.unwrap();
    let now = t("2026-03-24T10:00:00Z");
    store
        .ingest(
            vec![
                event("e1", "A1", "L1", now),
                event("e2", "A1", "L2", now + Duration::minutes(5)),
            ],
            planner(),
        )
        .await
        .unwrap();
    let (_, notes) = store.event("e1").await.unwrap().unwrap();
    let folded = notes
        .iter()
        .find(|n| n.state == State::Digested)
        .expect("e1 folded");
    assert_eq!(folded.reason, Some(Reason::Digest));
    let digest_id = folded.digest.clone().expect("linked to its digest");
    let (_, notes2) = store.event("e2").await.unwrap().unwrap();
    assert_eq!(
        notes2[0].digest.as_deref(),
        Some(digest_id.as_str()),
        "one digest per destination"
    );
    assert_eq!(store.digest_members(&digest_id).await.unwrap().len(), 2);

    // Cancelling an event reaches its notice inside the pending digest.
    assert_eq!(store.cancel_event("e1", now).await.unwrap(), Some(1));
    let members = store.digest_members(&digest_id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].event.as_ref().map(|e| e.id.as_str()), Some("e2"));

    // The digest itself is due an hour after it opened.
    assert!(
        store
            .claim_due(now + Duration::minutes(59), now + Duration::hours(2), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = store
        .claim_due(now + Duration::hours(1), now + Duration::hours(2), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].notification.id, digest_id);
    assert_eq!(due[0].notification.type_name, crate::plan::DIGEST_TYPE);
}

/// A reconnect pairs away its drop's notice folded into a digest not yet
/// sent (found through the account's open digests, migration 23), and
/// only its own account's: another account's notice of the same key and
/// type, folded alike, stays.
pub async fn check_pairing_reaches_folded_notices(store: &dyn Store) {
    let config = Config::parse(
        "[types.\"line.down\"]\n[types.\"line.up\"]\ncancels = [\"line.down\"]\n",
        "test",
    )
    .unwrap();
    let planner = crate::ingest::planner(Arc::new(config));
    let now = t("2026-03-24T10:00:00Z");
    for acc in ["A1", "A2"] {
        store.put_account(&account(acc)).await.unwrap();
        store.put_contact(acc, &alice()).await.unwrap();
        let mut d = destination("alice", &format!("mailto:{acc}@example.com"), true);
        d.prefs.digest = Some("1h".parse().unwrap());
        store.add_destination(acc, &d, None, None).await.unwrap();
        let down = event(&format!("{acc}-down"), acc, "L1", now);
        store.ingest(vec![down], planner.clone()).await.unwrap();
    }
    let folded = |id: &str| {
        let id = id.to_string();
        async move {
            let (_, notes) = store.event(&id).await.unwrap().unwrap();
            let own: Vec<_> = notes
                .iter()
                .filter(|n| n.type_name == "line.down")
                .collect();
            assert_eq!(own.len(), 1, "{id}: {notes:?}");
            own[0].clone()
        }
    };
    let before = folded("A1-down").await;
    assert_eq!(before.state, State::Digested);
    let digest = before.digest.clone().expect("folded into a digest");

    let mut up = event("A1-up", "A1", "L1", now + Duration::minutes(2));
    up.type_name = "line.up".into();
    store.ingest(vec![up], planner).await.unwrap();
    let after = folded("A1-down").await;
    assert_eq!(
        (after.state, after.reason),
        (State::Cancelled, Some(Reason::Paired)),
        "{after:?}"
    );
    let members = store.digest_members(&digest).await.unwrap();
    assert!(
        members
            .iter()
            .all(|m| m.event.as_ref().map(|e| e.id.as_str()) != Some("A1-down")),
        "the paired notice left its digest"
    );
    let other = folded("A2-down").await;
    assert_eq!(other.state, State::Digested, "{other:?}");
}

pub async fn check_dead_letters_and_redrive(store: &dyn Store) {
    seed(store).await;
    let now = t("2026-03-24T10:00:00Z");
    store
        .ingest(vec![event("e1", "A1", "L1", now)], planner())
        .await
        .unwrap();
    let claimed = store
        .claim_due(now, now + Duration::minutes(2), 10)
        .await
        .unwrap();
    for (i, c) in claimed.iter().enumerate() {
        let at = now + Duration::seconds(i as i64);
        let f = Finish::Failed {
            at,
            reason: Reason::Rejected,
            detail: "HTTP 404".into(),
        };
        store.finish(&c.notification.id, f).await.unwrap();
    }
    let dead = store
        .notifications_in(State::Failed, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead[0].decided_at > dead[1].decided_at, "newest first");
    let page = store
        .notifications_in(State::Failed, Some(dead[0].decided_at), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "paging with before");
    assert!(
        store
            .redrive(&dead[0].id, now + Duration::hours(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .redrive(&dead[0].id, now + Duration::hours(1))
            .await
            .unwrap(),
        "no longer failed"
    );
    let again = store
        .claim_due(now + Duration::hours(1), now + Duration::hours(2), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].notification.attempts, 1, "counted afresh");
}

/// Runs `check` against a fresh store of each kind.
/// Sends the only due notification of event `id` with `receipt`.
async fn send_one(
    store: &dyn Store,
    id: &str,
    at: DateTime<Utc>,
    receipt: crate::model::Receipt,
) -> Notification {
    store
        .ingest(vec![event(id, "A1", id, at)], planner())
        .await
        .unwrap();
    let claimed = store
        .claim_due(at, at + Duration::minutes(2), 10)
        .await
        .unwrap();
    let n = claimed
        .into_iter()
        .map(|c| c.notification)
        .find(|n| n.event.as_deref() == Some(id) && n.channel == ChannelKind::Email)
        .expect("a mail to send");
    store
        .finish(&n.id, Finish::Sent { at, receipt })
        .await
        .unwrap();
    n
}

pub async fn check_receipts(store: &dyn Store) {
    use crate::channels::{Receipt, Report};
    use crate::model::ReceiptStatus;
    seed(store).await;
    let at = t("2026-03-22T10:00:00Z");
    let awaited = Receipt {
        detail: Some("twilio SM1 queued".into()),
        provider_ref: Some("SM1".into()),
        awaiting: true,
        segments: Some(2),
    };
    let a = send_one(store, "e1", at, awaited.clone()).await;
    let b = send_one(
        store,
        "e2",
        at + Duration::seconds(1),
        Receipt {
            provider_ref: Some("SM2".into()),
            ..awaited
        },
    )
    .await;
    let c = send_one(store, "e3", at, Receipt::default()).await;
    assert_eq!(
        store
            .notification(&a.id)
            .await
            .unwrap()
            .map(|n| n.provider_ref),
        Some(Some("SM1".into()))
    );
    assert_eq!(store.notification("no-such").await.unwrap(), None);
    // Found by the provider's own id, on its channel only.
    assert_eq!(
        store
            .notification_by_ref(ChannelKind::Email, "SM2")
            .await
            .unwrap()
            .map(|n| n.id),
        Some(b.id.clone())
    );
    assert_eq!(
        store
            .notification_by_ref(ChannelKind::WhatsApp, "SM2")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .notification_by_ref(ChannelKind::Email, "SM9")
            .await
            .unwrap(),
        None
    );
    let waiting = store
        .awaiting_receipts(ChannelKind::Email, 10)
        .await
        .unwrap();
    assert_eq!(
        waiting.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![a.id.clone(), b.id.clone()]
    );
    assert_eq!(waiting[0].provider_ref.as_deref(), Some("SM1"));
    assert_eq!(
        (waiting[0].receipt, waiting[0].segments),
        (Some(ReceiptStatus::Awaiting), Some(2))
    );
    assert!(
        store
            .awaiting_receipts(ChannelKind::Sms, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let later = at + Duration::minutes(1);
    let delivered = Report {
        status: ReceiptStatus::Delivered,
        detail: None,
    };
    assert!(
        store
            .record_receipt(&a.id, &delivered, later)
            .await
            .unwrap()
    );
    // A receipt is final: a second report changes nothing.
    let undelivered = Report {
        status: ReceiptStatus::Undelivered,
        detail: Some("error 30003".into()),
    };
    assert!(
        !store
            .record_receipt(&a.id, &undelivered, later)
            .await
            .unwrap()
    );
    assert!(
        store
            .record_receipt(&b.id, &undelivered, later)
            .await
            .unwrap()
    );
    // Only sent notifications take receipts.
    assert!(
        !store
            .record_receipt("no-such", &delivered, later)
            .await
            .unwrap()
    );
    let (_, notes) = store.event("e1").await.unwrap().unwrap();
    let a2 = notes.iter().find(|n| n.id == a.id).unwrap();
    assert_eq!(
        (a2.state, a2.receipt),
        (State::Sent, Some(ReceiptStatus::Delivered))
    );
    let (_, notes) = store.event("e2").await.unwrap().unwrap();
    let b2 = notes.iter().find(|n| n.id == b.id).unwrap();
    assert_eq!(
        (b2.state, b2.reason, b2.receipt),
        (
            State::Failed,
            Some(Reason::Undelivered),
            Some(ReceiptStatus::Undelivered)
        )
    );
    assert_eq!(b2.detail.as_deref(), Some("undelivered: error 30003"));
    let history = store.history("e2").await.unwrap();
    assert_eq!(
        history.last().map(|d| (d.state, d.reason)),
        Some((State::Failed, Some(Reason::Undelivered)))
    );
    // It is a dead letter now, and the others wait no more.
    let failed = store
        .notifications_in(State::Failed, None, 10)
        .await
        .unwrap();
    assert_eq!(
        failed.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        vec![b.id.clone()]
    );
    assert!(
        store
            .awaiting_receipts(ChannelKind::Email, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (_, notes) = store.event("e3").await.unwrap().unwrap();
    assert_eq!(notes.iter().find(|n| n.id == c.id).unwrap().receipt, None);
}

pub async fn check_destination_health(store: &dyn Store) {
    seed(store).await;
    let view = store.account_view("A1").await.unwrap().unwrap();
    let mail = view.contacts[0]
        .destinations
        .iter()
        .find(|d| d.uri.channel() == ChannelKind::Email)
        .unwrap()
        .clone();
    let at = t("2026-03-22T10:00:00Z");
    // Two refusals, a success clears them; then three in a row mark it.
    assert!(!store.count_outcome(&mail.id, true, 3, at).await.unwrap());
    assert!(!store.count_outcome(&mail.id, true, 3, at).await.unwrap());
    assert!(!store.count_outcome(&mail.id, false, 3, at).await.unwrap());
    assert!(!store.count_outcome(&mail.id, true, 3, at).await.unwrap());
    assert!(!store.count_outcome(&mail.id, true, 3, at).await.unwrap());
    assert!(store.count_outcome(&mail.id, true, 3, at).await.unwrap());
    // Marked once only.
    assert!(
        !store
            .count_outcome(&mail.id, true, 3, at + Duration::seconds(1))
            .await
            .unwrap()
    );
    let view = store.account_view("A1").await.unwrap().unwrap();
    let marked = view.contacts[0]
        .destinations
        .iter()
        .find(|d| d.id == mail.id)
        .unwrap();
    assert_eq!(marked.unhealthy_since, Some(at));
    assert!(!marked.usable());
    // The planner passes it by.
    store
        .ingest(vec![event("e1", "A1", "L1", at)], planner())
        .await
        .unwrap();
    let (_, notes) = store.event("e1").await.unwrap().unwrap();
    let n = notes.iter().find(|n| n.destination == mail.id).unwrap();
    assert_eq!(
        (n.state, n.reason),
        (State::Suppressed, Some(Reason::Unhealthy))
    );
    // A new code; entering it makes the destination healthy again.
    let code = PendingCode {
        hash: "h".into(),
        expires_at: at + Duration::hours(1),
    };
    let notice = Notification::own(
        "A1",
        marked,
        "kci.verify",
        Priority::High,
        Message {
            short: "s".into(),
            subject: "s".into(),
            body: "b".into(),
            encrypt_to: None,
        },
        at,
        None,
    );
    assert_eq!(
        store
            .renew_code(
                "A1",
                "alice",
                &mail.id,
                code.clone(),
                notice.clone(),
                at,
                crate::trust::codes::issue
            )
            .await
            .unwrap(),
        RenewOutcome::Sent
    );
    assert_eq!(
        store
            .renew_code(
                "A1",
                "alice",
                "nope",
                code.clone(),
                notice.clone(),
                at,
                crate::trust::codes::issue
            )
            .await
            .unwrap(),
        RenewOutcome::NotFound
    );
    assert_eq!(
        store
            .verify_destination("A1", "alice", &mail.id, "h", at, crate::trust::codes::check)
            .await
            .unwrap(),
        VerifyOutcome::Verified
    );
    let view = store.account_view("A1").await.unwrap().unwrap();
    assert!(view.contacts[0].destinations.iter().all(|d| d.usable()));
    // Healthy and verified: nothing to prove.
    let mut again = notice;
    again.id = new_id();
    assert_eq!(
        store
            .renew_code(
                "A1",
                "alice",
                &mail.id,
                code,
                again,
                at,
                crate::trust::codes::issue
            )
            .await
            .unwrap(),
        RenewOutcome::AlreadyVerified
    );
    // The count started afresh; a delivery sent clears it in the same write.
    assert!(!store.count_outcome(&mail.id, true, 2, at).await.unwrap());
    store
        .ingest(vec![event("e2", "A1", "L2", at)], planner())
        .await
        .unwrap();
    let claimed = store
        .claim_due(at, at + Duration::minutes(2), 10)
        .await
        .unwrap();
    let sent = claimed
        .iter()
        .find(|c| c.notification.destination == mail.id)
        .expect("a mail for e2");
    store
        .finish(&sent.notification.id, sent_at(at))
        .await
        .unwrap();
    assert!(!store.count_outcome(&mail.id, true, 2, at).await.unwrap());
    assert!(store.count_outcome(&mail.id, true, 2, at).await.unwrap());
}

pub async fn check_destination_secrets(store: &dyn Store) {
    seed(store).await;
    let view = store.account_view("A1").await.unwrap().unwrap();
    let hook = view.contacts[0]
        .destinations
        .iter()
        .find(|d| d.uri.channel() == ChannelKind::Webhook)
        .unwrap()
        .id
        .clone();
    let at = t("2026-03-22T10:00:00Z");
    let signing = |own: &[&str], channel: bool| Signing {
        own: own.iter().map(|s| s.to_string()).collect(),
        channel,
    };
    // No secret of its own: the channel's.
    assert_eq!(
        store.destination_secrets(&hook, at).await.unwrap(),
        signing(&[], true)
    );
    // Its first, with a day's overlap: both, then only its own.
    let until = at + Duration::hours(24);
    assert!(
        store
            .set_destination_secret("A1", "alice", &hook, "whsec_one", Some(until))
            .await
            .unwrap()
    );
    assert_eq!(
        store.destination_secrets(&hook, at).await.unwrap(),
        signing(&["whsec_one"], true)
    );
    assert_eq!(
        store.destination_secrets(&hook, until).await.unwrap(),
        signing(&["whsec_one"], false)
    );
    // Rotation: both of its own for a day, then only the new one.
    assert!(
        store
            .set_destination_secret("A1", "alice", &hook, "whsec_two", Some(until))
            .await
            .unwrap()
    );
    assert_eq!(
        store.destination_secrets(&hook, at).await.unwrap(),
        signing(&["whsec_two", "whsec_one"], false)
    );
    assert_eq!(
        store.destination_secrets(&hook, until).await.unwrap(),
        signing(&["whsec_two"], false)
    );
    // A notice to it claimed now carries them, read with the claim (no
    // read of its own when it is sent at once).
    let dest = view.contacts[0]
        .destinations
        .iter()
        .find(|d| d.id == hook)
        .unwrap();
    let message = Message {
        short: "Your line went down.".into(),
        subject: "s".into(),
        body: "b".into(),
        encrypt_to: None,
    };
    let notice = Notification::own("A1", dest, "line.down", Priority::Normal, message, at, None);
    store.enqueue(&notice).await.unwrap();
    let claimed = store
        .claim_due(at, at + Duration::minutes(2), 10)
        .await
        .unwrap();
    let c = claimed
        .iter()
        .find(|c| c.notification.id == notice.id)
        .expect("the webhook notice");
    assert_eq!(c.signing.as_ref().map(|s| s.read_at), Some(at));
    assert_eq!(
        claimed_signing(c.signing.as_ref(), at),
        Some(signing(&["whsec_two", "whsec_one"], false))
    );
    assert!(
        claimed
            .iter()
            .filter(|c| c.notification.channel != ChannelKind::Webhook)
            .all(|c| c.signing.is_none()),
        "only webhooks carry signing secrets"
    );
    // Without an overlap the old one stops at once.
    assert!(
        store
            .set_destination_secret("A1", "alice", &hook, "whsec_three", None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.destination_secrets(&hook, at).await.unwrap(),
        signing(&["whsec_three"], false)
    );
    assert!(
        !store
            .set_destination_secret("A1", "bob", &hook, "x", None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.destination_secrets("nope", at).await.unwrap(),
        signing(&[], true)
    );
}

pub async fn check_key_registry(store: &dyn Store) {
    use crate::model::*;
    let at = t("2026-03-22T10:00:00Z");
    let addr = "alice@example.com";
    let key = |fpr: &str| KeyRecord {
        address: addr.into(),
        fingerprint: fpr.into(),
        armored: format!("-----BEGIN PGP PUBLIC KEY BLOCK----- {fpr}"),
        state: KeyState::Pending,
        source: "api".into(),
        submitted_at: at,
        activated_at: None,
        expires_at: None,
    };
    let token = |hash: &str, fpr: &str, purpose, change: Option<&str>, expires| KeyToken {
        hash: hash.into(),
        address: addr.into(),
        fingerprint: fpr.into(),
        purpose,
        change: change.map(str::to_string),
        expires_at: expires,
    };
    let later = at + Duration::hours(24);
    let mail = |subject: &str| {
        let dest = Destination {
            id: String::new(),
            contact: String::new(),
            uri: format!("mailto:{addr}").parse().unwrap(),
            prefs: Preferences::default(),
            verified: true,
            unhealthy_since: None,
        };
        Notification::own(
            "",
            &dest,
            "kci.key",
            Priority::High,
            Message {
                short: subject.into(),
                subject: subject.into(),
                body: subject.into(),
                encrypt_to: Some("K1".into()),
            },
            at,
            None,
        )
    };

    let request = |key: Option<KeyRecord>,
                   change: Option<Change>,
                   links: Vec<KeyToken>,
                   notices: Vec<Notification>| KeyRequest {
        address: addr.into(),
        key,
        change,
        links,
        notices,
        proof: None,
        audit: Vec::new(),
    };
    let follow =
        |hash: &'static str, at| store.follow_key_link(hash, at, crate::keys::rules::follow_link);
    let admit = crate::keys::rules::admit_change;
    // Who uses an address.
    assert!(
        store
            .contacts_with_uri(&format!("mailto:{addr}"))
            .await
            .unwrap()
            .is_empty()
    );

    // A first key: pending until its link is followed, once.
    store
        .record_key_request(
            &request(
                Some(key("K1")),
                None,
                vec![token("t1", "K1", TokenPurpose::Activate, None, later)],
                vec![mail("confirm")],
            ),
            at,
            admit,
        )
        .await
        .unwrap()
        .unwrap();
    let status = store.key_status(addr).await.unwrap();
    assert_eq!((status.active.as_ref(), status.pending.len()), (None, 1));
    let queued = store.claim_due(at, later, 10).await.unwrap();
    assert_eq!(
        queued.len(),
        1,
        "the confirmation mail is queued with the key"
    );
    assert_eq!(
        queued[0]
            .notification
            .message
            .as_ref()
            .unwrap()
            .encrypt_to
            .as_deref(),
        Some("K1")
    );
    // Sent (the mails to the address go in turn: the next waits for it).
    let sent = sent_at(at);
    store
        .finish(&queued[0].notification.id, sent)
        .await
        .unwrap();
    let Confirmed::Activated(k1) = follow("t1", at).await.unwrap() else {
        panic!("K1 activated")
    };
    assert_eq!((k1.state, k1.activated_at), (KeyState::Active, Some(at)));
    assert_eq!(follow("t1", at).await.unwrap(), Confirmed::Invalid);
    assert_eq!(follow("nope", at).await.unwrap(), Confirmed::Invalid);
    assert_eq!(
        store.key(addr, "K1").await.unwrap().map(|k| k.state),
        Some(KeyState::Active)
    );
    assert_eq!(
        store.active_key(addr).await.unwrap().map(|k| k.fingerprint),
        Some("K1".into())
    );
    assert_eq!(store.active_key("bob@example.com").await.unwrap(), None);
    // A mail claimed now comes with the address's active key.
    let mut after = mail("after");
    after.message = None;
    store.enqueue(&after).await.unwrap();
    let claimed = store.claim_due(at, later, 10).await.unwrap();
    let c = claimed
        .iter()
        .find(|c| c.notification.id == after.id)
        .expect("the mail");
    assert_eq!(c.active_key.as_deref(), Some(k1.armored.as_str()));

    // A replacement: pending until both holders prove it; then at once.
    let change = |id: &str, kind, fpr: Option<&str>| {
        Change::of_key(id, addr, kind, fpr, at, at + Duration::days(7))
    };
    store
        .record_key_request(
            &request(
                Some(key("K2")),
                Some(change("c1", ChangeKind::KeyReplace, Some("K2"))),
                vec![
                    token("t2", "K2", TokenPurpose::Activate, None, later),
                    token("t3", "K1", TokenPurpose::Approve, Some("c1"), later),
                ],
                vec![],
            ),
            at,
            admit,
        )
        .await
        .unwrap()
        .unwrap();
    let Confirmed::Proven(c) = follow("t2", at).await.unwrap() else {
        panic!("proof of the new key recorded")
    };
    assert!(c.proven_new && !c.proven_current);
    let status = store.key_status(addr).await.unwrap();
    assert_eq!(
        status.active.map(|k| k.fingerprint).as_deref(),
        Some("K1"),
        "nothing applied early"
    );
    // An expired link proves nothing.
    assert_eq!(
        follow("t3", later + Duration::seconds(1)).await.unwrap(),
        Confirmed::Invalid
    );
    // Another unproven request waits beside it: c1 keeps its state.
    store
        .record_key_request(
            &request(
                None,
                Some(change("c1b", ChangeKind::KeyReplace, Some("K2"))),
                vec![],
                vec![],
            ),
            at,
            admit,
        )
        .await
        .unwrap()
        .unwrap();
    store
        .record_key_request(
            &request(
                Some(key("K2")),
                Some(change("c2", ChangeKind::KeyReplace, Some("K2"))),
                vec![
                    token("t4", "K2", TokenPurpose::Activate, None, later),
                    token("t5", "K1", TokenPurpose::Approve, Some("c2"), later),
                ],
                vec![],
            ),
            at,
            admit,
        )
        .await
        .unwrap()
        .unwrap();
    let status = store.key_status(addr).await.unwrap();
    assert_eq!(
        status
            .changes
            .iter()
            .filter(|c| c.state == ChangeState::Pending)
            .count(),
        3
    );
    assert!(status.changes.iter().any(|c| c.id == "c1" && c.proven_new));
    // A fourth waiting change is refused, writing nothing.
    assert_eq!(
        store
            .record_key_request(
                &request(
                    Some(key("K9")),
                    Some(change("c9", ChangeKind::KeyReplace, Some("K9"))),
                    vec![token("t9", "K9", TokenPurpose::Activate, None, later)],
                    vec![mail("never")],
                ),
                at,
                admit,
            )
            .await
            .unwrap(),
        Err(Refused::TooManyChanges)
    );
    assert_eq!(store.key(addr, "K9").await.unwrap(), None);
    assert_eq!(follow("t9", at).await.unwrap(), Confirmed::Invalid);
    assert!(matches!(
        follow("t5", at).await.unwrap(),
        Confirmed::Proven(_)
    ));
    let Confirmed::Applied(c2) = follow("t4", at).await.unwrap() else {
        panic!("both proofs: applied")
    };
    assert_eq!((c2.id.as_str(), c2.state), ("c2", ChangeState::Applied));
    let status = store.key_status(addr).await.unwrap();
    assert_eq!(status.active.map(|k| k.fingerprint).as_deref(), Some("K2"));
    assert_eq!(
        store.key(addr, "K1").await.unwrap().map(|k| k.state),
        Some(KeyState::Replaced)
    );
    let states: Vec<_> = status
        .changes
        .iter()
        .map(|c| (c.id.as_str(), c.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("c1", ChangeState::Cancelled),
            ("c1b", ChangeState::Cancelled),
            ("c2", ChangeState::Applied)
        ]
    );

    // A removal without proof stays pending; a link that cannot act now is
    // not used up by trying; the current holder's approval applies it.
    store
        .record_key_request(
            &request(
                None,
                Some(change("c3", ChangeKind::KeyRemove, None)),
                vec![
                    token("t6", "K2", TokenPurpose::Approve, Some("c3"), later),
                    token("t7", "K1", TokenPurpose::Approve, Some("c3"), later),
                ],
                vec![],
            ),
            at,
            admit,
        )
        .await
        .unwrap()
        .unwrap();
    let status = store.key_status(addr).await.unwrap();
    assert!(status.active.is_some());
    assert_eq!(
        follow("t7", at).await.unwrap(),
        Confirmed::Invalid,
        "K1 is no longer the holder"
    );
    assert!(matches!(
        follow("t6", at).await.unwrap(),
        Confirmed::Applied(_)
    ));
    let status = store.key_status(addr).await.unwrap();
    assert_eq!(status.active, None);
    assert_eq!(
        store.key(addr, "K2").await.unwrap().map(|k| k.state),
        Some(KeyState::Removed)
    );

    // A signed request is accepted once: its proof is remembered.
    let proof = ProofUse {
        hash: "p1".into(),
        keep_until: at + Duration::hours(1),
    };
    let signed = |id: &str| KeyRequest {
        proof: Some(proof.clone()),
        ..request(
            Some(key("K3")),
            Some(change(id, ChangeKind::KeyReplace, Some("K3"))),
            vec![],
            vec![],
        )
    };
    assert!(
        store
            .record_key_request(&signed("c4"), at, admit)
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        store
            .record_key_request(&signed("c5"), at, admit)
            .await
            .unwrap(),
        Err(Refused::Replayed)
    );
    assert!(
        !store
            .key_status(addr)
            .await
            .unwrap()
            .changes
            .iter()
            .any(|c| c.id == "c5"),
        "a replay writes nothing"
    );
}

/// Limits: a window per (bucket, key), counted only when allowed.
pub async fn check_throttle(store: &dyn Store) {
    use crate::model::throttle::Counted;
    let at = t("2026-03-22T10:00:00Z");
    let cap: crate::model::Cap = "2/1h".parse().unwrap();
    for i in 0..2 {
        assert!(matches!(
            store
                .throttle("b", "k", cap, at + Duration::minutes(i))
                .await
                .unwrap(),
            Counted::Allowed(_)
        ));
    }
    assert_eq!(
        store
            .throttle("b", "k", cap, at + Duration::minutes(5))
            .await
            .unwrap(),
        Counted::Refused {
            retry_at: at + Duration::hours(1)
        }
    );
    assert_eq!(
        store.throttle_peek("b", "k", cap, at).await.unwrap(),
        Err(at + Duration::hours(1))
    );
    // Other keys and buckets are apart; a new window starts afresh.
    assert_eq!(
        store.throttle_peek("b", "other", cap, at).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.throttle_peek("c", "k", cap, at).await.unwrap(),
        Ok(())
    );
    assert!(matches!(
        store
            .throttle("b", "k", cap, at + Duration::hours(1))
            .await
            .unwrap(),
        Counted::Allowed(_)
    ));
}

/// The secret notice `id` carries as a claim at `at` takes it.
async fn claimed_secret(store: &dyn Store, at: DateTime<Utc>, id: &str) -> Option<String> {
    let claimed = store
        .claim_due(at, at + Duration::minutes(2), 10)
        .await
        .unwrap();
    let mine = claimed.iter().find(|c| c.notification.id == id).unwrap();
    mine.notification
        .secret
        .as_ref()
        .map(|s| s.expose().clone())
}

/// Secrets kept in clear (by a version before they were sealed) are found
/// through their partial indexes and replaced only where still as read.
pub async fn check_clear_secrets_found_and_replaced(store: &dyn Store) {
    use super::SecretPlace::{Notice, Webhook, WebhookPrevious};
    seed(store).await;
    let at = t("2026-03-22T10:00:00Z");
    let view = store.account_view("A1").await.unwrap().unwrap();
    let dests = &view.contacts[0].destinations;
    let hook = dests
        .iter()
        .find(|d| d.uri.channel() == ChannelKind::Webhook)
        .unwrap()
        .id
        .clone();
    let until = Some(at + Duration::hours(24));
    for secret in ["whsec_one", "whsec_two"] {
        assert!(
            store
                .set_destination_secret("A1", "alice", &hook, secret, until)
                .await
                .unwrap()
        );
    }
    let message = Message {
        short: format!("code {}", crate::model::SECRET_MARK),
        subject: "s".into(),
        body: "b".into(),
        encrypt_to: None,
    };
    let coded = Notification::own(
        "A1",
        &dests[0],
        "kci.verify",
        Priority::High,
        message,
        at,
        None,
    )
    .with_secret("424242".into());
    store.enqueue(&coded).await.unwrap();
    let found = || async {
        let mut found: Vec<(super::SecretPlace, String, String)> = store
            .clear_secrets()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.place, c.id, c.value.expose().to_string()))
            .collect();
        found.sort_by(|a, b| a.2.cmp(&b.2));
        found
    };
    assert_eq!(
        found().await,
        vec![
            (Notice, coded.id.clone(), "424242".to_string()),
            (WebhookPrevious, hook.clone(), "whsec_one".to_string()),
            (Webhook, hook.clone(), "whsec_two".to_string()),
        ]
    );
    // Replaced only where the value is still the one read.
    assert!(
        !store
            .replace_secret(Webhook, &hook, "whsec_one", "v1.x")
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_secret(Notice, "nope", "424242", "v1.x")
            .await
            .unwrap()
    );
    for (place, id, old, new) in [
        (Webhook, &hook, "whsec_two", "v1.two"),
        (WebhookPrevious, &hook, "whsec_one", "v1.one"),
        (Notice, &coded.id, "424242", "v1.n"),
    ] {
        assert!(store.replace_secret(place, id, old, new).await.unwrap());
    }
    assert!(found().await.is_empty());
    assert_eq!(
        store.destination_secrets(&hook, at).await.unwrap().own,
        vec!["v1.two".to_string(), "v1.one".to_string()]
    );
    assert_eq!(
        claimed_secret(store, at, &coded.id).await.as_deref(),
        Some("v1.n")
    );
}

/// A notice's one-time secret is kept only until the notice is final.
pub async fn check_secrets_erased(store: &dyn Store) {
    seed(store).await;
    let at = t("2026-03-22T10:00:00Z");
    let view = store.account_view("A1").await.unwrap().unwrap();
    let dest = &view.contacts[0].destinations[0];
    let notice = |body: &str| {
        Notification::own(
            "A1",
            dest,
            "kci.verify",
            Priority::High,
            Message {
                short: body.into(),
                subject: "s".into(),
                body: body.into(),
                encrypt_to: None,
            },
            at,
            None,
        )
        .with_secret("424242".into())
    };
    let sent = notice(&format!("code {}", crate::model::SECRET_MARK));
    let also = notice(&format!("code {}", crate::model::SECRET_MARK));
    store.enqueue(&sent).await.unwrap();
    store.enqueue(&also).await.unwrap();
    assert_eq!(
        claimed_secret(store, at, &sent.id).await.as_deref(),
        Some("424242"),
        "held until delivery"
    );
    // A retry keeps it; being sent erases it.
    store
        .finish(
            &sent.id,
            Finish::Retry {
                at,
                due_at: at,
                detail: "later".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .notification(&sent.id)
            .await
            .unwrap()
            .unwrap()
            .secret
            .is_some()
    );
    store
        .claim_due(at, at + Duration::minutes(2), 10)
        .await
        .unwrap();
    for id in [&sent.id, &also.id] {
        store.finish(id, sent_at(at)).await.unwrap();
    }
    let after = store.notification(&sent.id).await.unwrap().unwrap();
    assert_eq!(after.state, State::Sent);
    assert_eq!(after.secret, None);
    assert!(after.needs_secret(), "the texts keep only the mark");
    // A cancelled one loses it too.
    let waiting = notice(crate::model::SECRET_MARK);
    store.enqueue(&waiting).await.unwrap();
    assert!(
        store
            .delete_destination("A1", "alice", &dest.id, at)
            .await
            .unwrap()
    );
    let gone = store.notification(&waiting.id).await.unwrap().unwrap();
    assert_eq!((gone.state, gone.secret), (State::Cancelled, None));
}

/// The directory is listed in byte order of the account ids on both
/// stores, whatever the PostgreSQL server's locale (migration 25): upper
/// case before lower, punctuation by its code. Paged two at a time, each
/// page after the last id of the one before.
pub async fn check_directory_pages_in_byte_order(store: &dyn Store) {
    for id in ["b", "a_1", "B", "a", "a-1", "A"] {
        store.put_account(&account(id)).await.unwrap();
    }
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.directory_page(after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.account.id.clone());
        listed.extend(page.into_iter().map(|v| v.account.id));
    }
    assert_eq!(listed, ["A", "B", "a", "a-1", "a_1", "b"]);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_conformance {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = crate::store::sqlite::SqliteStore::open(dir.path().join("kci.db").to_str().unwrap()).unwrap();
                    crate::store::Store::migrate(&store).await.unwrap();
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres_conformance {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _schema) = super::pg_store().await;
                    super::$name(&store).await;
                }
            )*
        }
    };
}

/// The change engine on this store (DESIGN.md §7): a protected change
/// opens pending with its reminders, blocks others of the account,
/// applies once when due (its reminders cancelled, everyone told), a
/// veto link works once, approvals need two different people other than
/// the requester, and every step is in one intact audit chain.
pub async fn check_protected_changes(store: &dyn Store) {
    use crate::changes::{Actor, Engine, REMINDER, mint_veto_link};
    use crate::model::{
        ChangeAnswer, ChangeKind, ChangeRefusal, ChangeState, DestinationPlan, Subject,
    };
    seed(store).await;
    let mut high = account("A1");
    high.security_level = SecurityLevel::High;
    store.put_account(&high).await.unwrap();
    let config = Config::parse(
        "[changes]\ncooling_off = { standard = \"1h\", high = \"1h\", maximum = \"1h\" }\n",
        "test",
    )
    .unwrap();
    let t0 = t("2026-03-22T10:00:00Z");
    let at = |min: i64| Engine {
        store,
        config: &config,
        now: t0 + Duration::minutes(min),
    };
    let ann = Actor {
        id: "staff:ann".into(),
        source: Some("192.0.2.1".into()),
        ticket: Some("T-1".into()),
    };
    let plan = DestinationPlan {
        id: new_id(),
        contact: "alice".into(),
        uri: "sms:+447700900999".into(),
        prefs: Default::default(),
        verified: false,
    };
    let subject = Subject {
        destination: Some(Box::new(plan.clone())),
        ..Subject::default()
    };
    let change = at(0).new_change(
        ChangeKind::DestinationAdd,
        "A1",
        SecurityLevel::High,
        subject,
        &ann,
    );
    let ChangeAnswer::Opened(opened) = at(0).request(change.clone(), &ann).await.unwrap() else {
        panic!("a protected change opens");
    };
    assert_eq!(opened.state, ChangeState::Pending);
    assert_eq!(
        store.change(&opened.id).await.unwrap(),
        Some(opened.clone())
    );
    // Three reminders on each of the two verified destinations.
    let pending = store
        .notifications_in(State::Pending, None, 100)
        .await
        .unwrap();
    let reminders: Vec<_> = pending.iter().filter(|n| n.type_name == REMINDER).collect();
    assert_eq!(reminders.len(), 6, "{pending:?}");
    // Another sensitive change of the account waits for this one.
    let other = at(1).new_change(
        ChangeKind::SecurityLower,
        "A1",
        SecurityLevel::High,
        Subject::default(),
        &ann,
    );
    match at(1).request(other, &ann).await.unwrap() {
        ChangeAnswer::Refused {
            why: ChangeRefusal::Blocked,
            change: Some(c),
        } => assert_eq!(c.id, opened.id),
        other => panic!("blocked expected, not {other:?}"),
    }
    // Not due yet: nothing happens.
    assert_eq!(at(30).settle_due().await.unwrap(), 0);
    // Due: applied once — the destination is there, unverified, with a
    // code on its way; the reminders still waiting are cancelled.
    assert_eq!(at(61).settle_due().await.unwrap(), 1);
    assert_eq!(at(62).settle_due().await.unwrap(), 0);
    let c = store.change(&opened.id).await.unwrap().unwrap();
    assert_eq!(c.state, ChangeState::Applied);
    let view = store.account_view("A1").await.unwrap().unwrap();
    let added = view.contacts[0]
        .destinations
        .iter()
        .find(|d| d.id == plan.id)
        .expect("added");
    assert!(!added.verified);
    let pending = store
        .notifications_in(State::Pending, None, 100)
        .await
        .unwrap();
    assert!(
        pending.iter().all(|n| n.type_name != REMINDER),
        "{pending:?}"
    );
    assert!(
        pending
            .iter()
            .any(|n| n.type_name == "kci.verify" && n.destination == plan.id)
    );
    assert_eq!(
        pending
            .iter()
            .filter(|n| n.type_name == "kci.change.applied")
            .count(),
        2
    );
    // The destination's code goes only now; its reminders never went there.
    assert!(reminders.iter().all(|n| n.destination != plan.id));

    // A second change, vetoed through the link a reminder carried: once.
    let subject = Subject {
        destination: Some(Box::new(DestinationPlan {
            id: new_id(),
            ..plan.clone()
        })),
        ..Subject::default()
    };
    let second = at(70).new_change(
        ChangeKind::DestinationAdd,
        "A1",
        SecurityLevel::High,
        subject,
        &ann,
    );
    at(70).request(second.clone(), &ann).await.unwrap();
    let reminder = store
        .notifications_in(State::Pending, None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.type_name == REMINDER && n.key.ends_with(&second.id))
        .expect("a reminder");
    let token = mint_veto_link(store, &reminder)
        .await
        .unwrap()
        .expect("pending: a link");
    let phone = Actor::default();
    match at(71)
        .veto_link(&token, phone.source.clone())
        .await
        .unwrap()
    {
        ChangeAnswer::Vetoed { change, incident } => {
            assert_eq!(change.state, ChangeState::Vetoed);
            assert_eq!(incident.change.as_deref(), Some(second.id.as_str()));
            assert_eq!(incident.account.as_deref(), Some("A1"));
        }
        other => panic!("vetoed expected, not {other:?}"),
    }
    match at(72).veto_link(&token, None).await.unwrap() {
        ChangeAnswer::Refused {
            why: ChangeRefusal::InvalidLink,
            ..
        } => {}
        other => panic!("a used link, not {other:?}"),
    }
    assert!(matches!(
        at(72)
            .veto_link("x".repeat(43).as_str(), None)
            .await
            .unwrap(),
        ChangeAnswer::Refused {
            why: ChangeRefusal::InvalidLink,
            ..
        }
    ));
    // No more link for an ended change.
    assert_eq!(mint_veto_link(store, &reminder).await.unwrap(), None);
    assert_eq!(
        store.incidents(true, Some("A1"), 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        at(200).settle_due().await.unwrap(),
        0,
        "a vetoed change never applies"
    );

    // At maximum: two different approvers, neither the requester.
    let mut max = high.clone();
    max.security_level = SecurityLevel::Maximum;
    store.put_account(&max).await.unwrap();
    let lower = Subject {
        security_level: Some(SecurityLevel::High),
        ..Subject::default()
    };
    let third = at(300).new_change(
        ChangeKind::SecurityLower,
        "A1",
        SecurityLevel::Maximum,
        lower,
        &ann,
    );
    assert_eq!(third.approvals_needed, 2);
    at(300).request(third.clone(), &ann).await.unwrap();
    let staff = |name: &str| Actor {
        id: format!("staff:{name}"),
        ..Actor::default()
    };
    let refused = |a: ChangeAnswer| match a {
        ChangeAnswer::Refused { why, .. } => why,
        other => panic!("refused expected, not {other:?}"),
    };
    assert_eq!(
        refused(at(301).approve(&third.id, &ann).await.unwrap()),
        ChangeRefusal::OwnChange
    );
    assert!(matches!(
        at(302).approve(&third.id, &staff("bob")).await.unwrap(),
        ChangeAnswer::Approved(_)
    ));
    assert_eq!(
        refused(at(303).approve(&third.id, &staff("bob")).await.unwrap()),
        ChangeRefusal::ApprovedAlready
    );
    assert_eq!(
        at(400).settle_due().await.unwrap(),
        0,
        "one approval of two"
    );
    // Bob is disabled (his account taken over, say): his approval no
    // longer counts, so cy's second one does not apply it.
    let bob = crate::model::Staff {
        name: "bob".into(),
        role: crate::model::Role::Approver,
        created_at: t0,
        disabled_at: None,
    };
    assert!(store.add_staff(&bob).await.unwrap());
    assert!(
        store
            .disable_staff("bob", t0 + Duration::minutes(350))
            .await
            .unwrap()
    );
    assert!(matches!(
        at(401).approve(&third.id, &staff("cy")).await.unwrap(),
        ChangeAnswer::Approved(_)
    ));
    assert_eq!(
        at(401).settle_due().await.unwrap(),
        0,
        "a disabled approver's approval withdrawn"
    );
    // Another approver: the last approval after the period applies it.
    assert!(matches!(
        at(402).approve(&third.id, &staff("dee")).await.unwrap(),
        ChangeAnswer::Settled(c) if c.state == ChangeState::Applied
    ));
    assert_eq!(at(403).settle_due().await.unwrap(), 0);
    let account = store.account_view("A1").await.unwrap().unwrap().account;
    assert_eq!(account.security_level, SecurityLevel::High);

    // Every step is in the chain, intact.
    let entries = store.audit_entries(None, 0, 1000).await.unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.draft.action.as_str()).collect();
    for want in [
        "change.requested",
        "change.settled",
        "change.vetoed",
        "change.approved",
        "change.approval",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let own = entries
        .iter()
        .find(|e| e.draft.action == "change.approval" && e.draft.outcome == "refused")
        .unwrap();
    assert_eq!(
        (own.draft.actor.as_str(), own.draft.ticket.as_deref()),
        ("staff:ann", Some("T-1"))
    );
    assert!(crate::model::audit::verify(&entries, &[], |_| true).is_ok());
    assert_eq!(
        store
            .audit_entries(Some("A1"), 0, 1000)
            .await
            .unwrap()
            .len(),
        entries.len()
    );
    // The pending ones of an account, as a texted code is tried against:
    // exactly the pending among all of them.
    let all = store
        .changes(crate::store::ChangeFilter::Account("A1".into()))
        .await
        .unwrap();
    let pending = store
        .changes(crate::store::ChangeFilter::PendingOfAccount("A1".into()))
        .await
        .unwrap();
    let want: Vec<_> = all
        .iter()
        .filter(|c| c.state == ChangeState::Pending)
        .map(|c| c.id.clone())
        .collect();
    assert!(all.len() > want.len(), "settled ones too: {all:?}");
    assert_eq!(
        pending.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        want
    );
}

/// Lowering a `high` account's security through `PUT` keeps it, in the
/// same transaction, for a change to lower it.
pub async fn check_security_kept(store: &dyn Store) {
    let mut a = account("A1");
    a.security_level = SecurityLevel::High;
    a.paranoid = true;
    store.put_account(&a).await.unwrap();
    let mut lower = a.clone();
    lower.security_level = SecurityLevel::Standard;
    lower.paranoid = false;
    lower.name = "Renamed".into();
    let (outcome, kept) = store.put_account(&lower).await.unwrap();
    assert_eq!(
        (outcome, kept),
        (PutOutcome::Updated, Some((SecurityLevel::High, true)))
    );
    let stored = store.account_view("A1").await.unwrap().unwrap().account;
    assert_eq!(
        (stored.name.as_str(), stored.security_level, stored.paranoid),
        ("Renamed", SecurityLevel::High, true)
    );
}

/// The audit chain stays one chain with appends from many tasks at once
/// (on PostgreSQL: many connections, serialised in the database).
pub async fn check_audit_chain(store: Arc<dyn Store>) {
    let at = t("2026-03-22T10:00:00Z");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut d =
                crate::model::audit::AuditDraft::new(&format!("token:{i}"), "test.append", "ok");
            d.account = Some(format!("A{}", i % 3));
            store.audit(d, at).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entries = store.audit_entries(None, 0, 1000).await.unwrap();
    assert_eq!(entries.len(), 40);
    assert_eq!(
        crate::model::audit::verify(&entries, &[], |_| true).map(|i| i.entries),
        Ok(40)
    );
    assert_eq!(
        store
            .audit_entries(Some("A1"), 0, 1000)
            .await
            .unwrap()
            .len(),
        13
    );
    let page = store.audit_entries(None, 10, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    // Checkpoints: one per entry number.
    let cp = crate::model::audit::Checkpoint {
        seq: 40,
        head: entries[39].hash.clone(),
        at,
        signature: "sig".into(),
    };
    assert!(store.add_checkpoint(&cp).await.unwrap());
    assert!(!store.add_checkpoint(&cp).await.unwrap());
    let (head, last) = store.audit_head().await.unwrap();
    assert_eq!(head, Some((40, entries[39].hash.clone())));
    assert_eq!(last, Some(cp.clone()));
    assert_eq!(store.checkpoints().await.unwrap(), vec![cp]);
}

/// Staff, and tokens acting as them: limited to the role, dead once the
/// person is disabled.
pub async fn check_staff_tokens(store: &dyn Store) {
    use crate::model::{Role, Staff};
    let at = t("2026-03-22T10:00:00Z");
    let ann = Staff {
        name: "ann".into(),
        role: Role::Agent,
        created_at: at,
        disabled_at: None,
    };
    assert!(store.add_staff(&ann).await.unwrap());
    assert!(
        !store.add_staff(&ann).await.unwrap(),
        "a name is taken once"
    );
    let rec = TokenRecord {
        id: new_id(),
        name: "ann's console".into(),
        // More than an agent may hold, as if written before a demotion.
        scopes: vec![Scope::DirectoryWrite, Scope::ChangesApprove, Scope::Admin],
        created_at: at,
        staff: Some("ann".into()),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        last_used_from: None,
        allow: vec!["192.0.2.0/24".parse().unwrap()],
        cert: Some("ab".repeat(32)),
        session: false,
    };
    store
        .create_token(&rec, &sha256_hex(b"ann-token"))
        .await
        .unwrap();
    let found = store
        .find_token(&sha256_hex(b"ann-token"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.scopes, vec![Scope::DirectoryWrite]);
    assert_eq!(found.staff.as_deref(), Some("ann"));
    assert_eq!(store.list_staff().await.unwrap(), vec![ann.clone()]);
    assert!(store.disable_staff("ann", at).await.unwrap());
    assert!(!store.disable_staff("ann", at).await.unwrap());
    assert!(
        store
            .find_token(&sha256_hex(b"ann-token"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.staff("ann").await.unwrap().unwrap().disabled_at,
        Some(at)
    );
}

/// Staff logins on this store (DESIGN.md §9, `crate::staff`): an
/// enrolment code used once and not after it expired; a TOTP step used
/// once, and never an earlier one; a new enrolment drops the password and
/// the secret and revokes the member's sessions, not their other tokens;
/// a login moves no token epoch; one of two logins racing with the same
/// code wins.
pub async fn check_staff_logins(store: &dyn Store) {
    use crate::model::{Role, Staff};
    use crate::trust::staff as rules;
    let at = t("2026-03-22T10:00:00Z");
    let later = |s: i64| at + Duration::seconds(s);
    let cy = Staff {
        name: "cy".into(),
        role: Role::Approver,
        created_at: at,
        disabled_at: None,
    };
    assert!(store.add_staff(&cy).await.unwrap());
    assert_eq!(
        store.staff_login("cy").await.unwrap(),
        (Some(cy.clone()), None)
    );
    assert_eq!(store.staff_login("nobody").await.unwrap(), (None, None));
    assert!(
        !store
            .issue_enrolment("nobody", "h", later(60), at)
            .await
            .unwrap(),
        "no enrolment for a name that is not staff"
    );

    let code = rules::new_enrolment_code();
    let hash = rules::enrolment_hash(&code);
    assert!(
        store
            .issue_enrolment("cy", &hash, later(60), at)
            .await
            .unwrap()
    );
    let (_, login) = store.staff_login("cy").await.unwrap();
    let login = login.unwrap();
    assert_eq!(login.enrol_hash.as_deref(), Some(hash.as_str()));
    assert_eq!(login.enrol_expires_at, Some(later(60)));
    assert_eq!((login.password_hash, login.totp_secret), (None, None));

    // Expired, or another code: nothing set.
    assert!(
        !store
            .enrol_staff("cy", &hash, "$pw", "v1.s", later(60))
            .await
            .unwrap()
    );
    assert!(
        !store
            .enrol_staff("cy", "other", "$pw", "v1.s", later(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .enrol_staff("cy", &hash, "$pw", "v1.s", later(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .enrol_staff("cy", &hash, "$pw2", "v1.t", later(2))
            .await
            .unwrap(),
        "an enrolment code is used once"
    );
    let (_, login) = store.staff_login("cy").await.unwrap();
    let login = login.unwrap();
    assert_eq!(login.password_hash.as_deref(), Some("$pw"));
    assert_eq!(login.totp_secret.as_deref(), Some("v1.s"));
    assert_eq!(
        (login.enrol_hash, login.enrolled_at),
        (None, Some(later(1)))
    );
    assert_eq!(login.confirmed_at, None);

    // Logins: a step once; an earlier one never; the epoch stays.
    let epoch = store.token_epoch().await.unwrap();
    let session = |s: i64| rules::session(&cy, later(s), Duration::hours(1));
    let first = session(10);
    assert!(
        store
            .start_session("cy", 100, "v1.s", &first, "hash-1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .start_session("cy", 100, "v1.s", &session(11), "hash-2")
            .await
            .unwrap()
    );
    assert!(
        !store
            .start_session("cy", 99, "v1.s", &session(12), "hash-3")
            .await
            .unwrap()
    );
    assert!(
        store.find_token("hash-2").await.unwrap().is_none(),
        "nothing stored for a refused step"
    );
    let found = store.find_token("hash-1").await.unwrap().unwrap();
    assert!(found.session);
    assert_eq!(found.staff.as_deref(), Some("cy"));
    assert_eq!(found.expires_at, Some(later(10) + Duration::hours(1)));
    assert_eq!(
        store.token_epoch().await.unwrap(),
        epoch,
        "a login moves no epoch"
    );
    let (_, login) = store.staff_login("cy").await.unwrap();
    let login = login.unwrap();
    assert_eq!(
        (login.totp_last_step, login.confirmed_at),
        (100, Some(later(10)))
    );

    // Two logins with the same next step at once: one wins.
    let (a, b) = (session(20), session(20));
    let (ra, rb) = tokio::join!(
        store.start_session("cy", 101, "v1.s", &a, "hash-a"),
        store.start_session("cy", 101, "v1.s", &b, "hash-b"),
    );
    assert!(ra.unwrap() ^ rb.unwrap(), "exactly one login takes a code");

    // A long-lived token of cy's, beside the sessions.
    let mut kept = session(30);
    kept.session = false;
    kept.expires_at = None;
    store.create_token(&kept, "hash-kept").await.unwrap();

    // Enrolled again (a lost phone): password and secret gone, sessions
    // revoked at once, the step kept.
    let again = rules::enrolment_hash(&rules::new_enrolment_code());
    assert!(
        store
            .issue_enrolment("cy", &again, later(600), later(40))
            .await
            .unwrap()
    );
    let (_, login) = store.staff_login("cy").await.unwrap();
    let login = login.unwrap();
    assert_eq!((login.password_hash, login.totp_secret), (None, None));
    assert_eq!(login.totp_last_step, 101);
    assert!(
        !store
            .start_session("cy", 102, "v1.s", &session(41), "hash-c")
            .await
            .unwrap(),
        "no login without a secret"
    );
    let revoked = store.find_token("hash-1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(later(40)));
    assert!(!revoked.usable(later(41)));
    assert!(
        store
            .find_token("hash-kept")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert!(
        store.token_epoch().await.unwrap() > epoch,
        "revoked sessions move the epoch"
    );
    // Enrolled with a new secret: a login checked against the old one
    // (under way during the re-enrolment) takes nothing; the new secret
    // counts its steps from the start.
    assert!(
        store
            .enrol_staff("cy", &again, "$pw3", "v1.new", later(42))
            .await
            .unwrap()
    );
    assert!(
        !store
            .start_session("cy", 500, "v1.s", &session(43), "hash-d")
            .await
            .unwrap()
    );
    assert!(
        store
            .start_session("cy", 5, "v1.new", &session(43), "hash-e")
            .await
            .unwrap()
    );

    // Disabled: no new enrolment.
    assert!(store.disable_staff("cy", later(50)).await.unwrap());
    assert!(
        !store
            .issue_enrolment("cy", &hash, later(600), later(51))
            .await
            .unwrap()
    );
}

/// Call verification on this store (DESIGN.md §8): opened with the
/// customer told on their phone, both codes typed, a failure after three
/// wrong codes telling the customer to hang up and opening an incident,
/// and expiry.
pub async fn check_calls(store: &dyn Store) {
    use crate::calls::{Calls, Opened};
    use crate::changes::Actor;
    use crate::model::{CallAnswer, CallRefusal, CallState};
    seed(store).await;
    let config = Config::parse("", "test").unwrap();
    let t0 = t("2026-03-22T10:00:00Z");
    let at = |s: i64| Calls {
        store,
        config: &config,
        now: t0 + Duration::seconds(s),
    };
    let dan = Actor {
        id: "staff:dan".into(),
        ..Actor::default()
    };
    let Opened::Open { call, staff_code } = at(0).open("A1", "alice", &dan).await.unwrap() else {
        panic!("opened");
    };
    assert_eq!(call.state, CallState::Open);
    assert_eq!(staff_code.len(), 6);
    assert_eq!(store.open_calls("A1", "alice", t0).await.unwrap().len(), 1);
    // The customer is told on the webhook (not by mail), the code and the
    // link kept with the notice only until it is sent.
    let told: Vec<_> = store
        .notifications_in(State::Pending, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.type_name == crate::text::calls::CALLING)
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].channel, ChannelKind::Webhook);
    // Kept sealed, opened with the code key.
    let stored = told[0].secret.as_ref().unwrap().expose();
    assert!(crate::trust::seal::is_sealed(stored), "{stored}");
    let at_rest = crate::trust::seal::AtRest::new(&config.code_key);
    let secret = at_rest.open_notice(&told[0]).unwrap().unwrap();
    let secret = secret.expose().to_string();
    let customer_code = &secret[..6];
    let token = secret.rsplit("/v1/call/").next().unwrap().to_string();
    // Unknown contacts and a contact nobody reaches at once: refused.
    assert!(matches!(
        at(1).open("A1", "nobody", &dan).await.unwrap(),
        Opened::Refused(CallRefusal::UnknownContact)
    ));

    // Staff type the customer's code, the customer staff's: verified.
    let typed = at(10)
        .staff_typed(&call.id, customer_code, &dan)
        .await
        .unwrap();
    assert!(
        matches!(&typed, CallAnswer::Done(c) if c.staff_confirmed && c.state == CallState::Open)
    );
    let wrong_call = at(11)
        .customer_typed(&token, Some("another-call"), &staff_code, None)
        .await
        .unwrap();
    assert!(matches!(
        wrong_call,
        CallAnswer::Refused {
            why: CallRefusal::InvalidLink,
            ..
        }
    ));
    let done = at(12)
        .customer_typed(&token, Some(&call.id), &staff_code, None)
        .await
        .unwrap();
    assert!(
        matches!(&done, CallAnswer::Done(c) if c.state == CallState::Verified),
        "{done:?}"
    );
    let again = at(13)
        .customer_typed(&token, None, &staff_code, None)
        .await
        .unwrap();
    assert!(matches!(
        again,
        CallAnswer::Refused {
            why: CallRefusal::Over,
            ..
        }
    ));
    assert_eq!(
        store.call(&call.id).await.unwrap().unwrap().state,
        CallState::Verified
    );

    // A caller who has the customer's details but not their code.
    let Opened::Open { call: second, .. } = at(100).open("A1", "alice", &dan).await.unwrap() else {
        panic!("opened");
    };
    for (i, code) in ["000001", "000002", "000003"].into_iter().enumerate() {
        let a = at(101 + i64::try_from(i).unwrap())
            .staff_typed(&second.id, code, &dan)
            .await
            .unwrap();
        assert!(
            matches!(
                a,
                CallAnswer::Refused {
                    why: CallRefusal::WrongCode,
                    ..
                }
            ),
            "{a:?}"
        );
    }
    let failed = store.call(&second.id).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.attempts), (CallState::Failed, 3));
    let pending = store
        .notifications_in(State::Pending, None, 100)
        .await
        .unwrap();
    assert!(pending.iter().any(|n| n.type_name == "kci.call.failed"));
    let incidents = store.incidents(true, Some("A1"), 10).await.unwrap();
    assert_eq!(incidents[0].kind, "call.failed");

    // Nobody types anything: expired after five minutes.
    let Opened::Open { call: third, .. } = at(200).open("A1", "alice", &dan).await.unwrap() else {
        panic!("opened");
    };
    assert_eq!(at(499).expire_due().await.unwrap(), 0);
    assert_eq!(at(500).expire_due().await.unwrap(), 1);
    assert_eq!(
        store.call(&third.id).await.unwrap().unwrap().state,
        CallState::Expired
    );
    assert_eq!(
        store.incidents(true, Some("A1"), 10).await.unwrap().len(),
        2
    );
    assert!(
        store
            .open_calls("A1", "alice", t0 + Duration::seconds(501))
            .await
            .unwrap()
            .is_empty()
    );
    let entries = store.audit_entries(Some("A1"), 0, 100).await.unwrap();
    let actions: Vec<_> = entries.iter().map(|e| e.draft.action.as_str()).collect();
    for want in [
        "call.opened",
        "call.staff_typed",
        "call.customer_typed",
        "call.verified",
        "call.failed",
        "call.expired",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
}

/// `kci doctor`'s view: a migrated store is at the newest schema; a
/// server with its own clock tells it, and it is this machine's.
pub async fn check_inspect(store: &dyn Store) {
    let info = store.inspect().await.unwrap();
    assert!(info.latest > 0);
    assert_eq!(info.schema, info.latest);
    if let Some(theirs) = info.server_time {
        let skew = (theirs - Utc::now()).num_seconds().abs();
        assert!(skew < 60, "the test database's clock is {skew} s off");
    }
}

/// The rows of a CSV text, checked as `kci import directory` checks them.
fn import_rows(csv: &str) -> Vec<crate::model::ImportRow> {
    use crate::directory::file::{self, Format, Header, RawRow, Reader, Record};
    let hub = file::Hub {
        channels: ChannelKind::ALL.to_vec(),
        allow_http: false,
    };
    let mut reader = Reader::new(csv.as_bytes(), Format::Csv);
    let Some((_, Record::Fields(h))) = reader.next_record().unwrap() else {
        panic!("a header")
    };
    let header = Header::parse(&h).unwrap();
    let mut out = Vec::new();
    while let Some((line, rec)) = reader.next_record().unwrap() {
        let Record::Fields(f) = rec else {
            panic!("line {line}: {rec:?}")
        };
        let raw = RawRow::from_csv(&header, &f).unwrap();
        out.push(file::check(raw, line, &hub).unwrap_or_else(|e| panic!("line {line}: {e}")));
    }
    out
}

/// One import batch as `kci import directory` hands it over.
async fn import(store: &dyn Store, csv: &str) -> Vec<crate::model::ImportOutcome> {
    let batch = crate::model::ImportBatch {
        rows: import_rows(csv),
        actor: "cli".into(),
        what: "test.csv".into(),
        refused_before: 0,
        at: t("2026-03-22T10:00:00Z"),
    };
    store
        .import_directory(batch, crate::directory::import::decide)
        .await
        .unwrap()
}

fn outcome_kinds(o: &[crate::model::ImportOutcome]) -> Vec<&'static str> {
    use crate::model::ImportOutcome::*;
    o.iter()
        .map(|o| match o {
            Created => "created",
            Updated => "updated",
            Unchanged => "unchanged",
            Refused(_) => "refused",
        })
        .collect()
}

/// A bulk import: a new `high` account created whole with verified
/// destinations; the same rows again change nothing and leave no audit
/// entry; what the API protects is refused, row by row, while the rest
/// of the batch is written; an export's pages hold it all.
pub async fn check_import_directory(store: &dyn Store) {
    const HEAD: &str =
        "account,account_name,security_level,contact,destination,uri,verified,prefs\n";
    let first = format!(
        "{HEAD}A1,Alice Ltd,high,alice,,mailto:alice@example.com,true,\n\
         A1,Alice Ltd,high,alice,,sms:+447700900123,true,\n\
         A1,Alice Ltd,high,bob,,,,\n\
         A2,,,,,,,\n\
         A3,Carol,,carol,d-fixed,mailto:carol@example.com,false,\"{{\"\"min_priority\"\":\"\"high\"\"}}\"\n"
    );
    let created = import(store, &first).await;
    assert_eq!(outcome_kinds(&created), vec!["created"; 5]);
    let audited = |entries: &[crate::model::audit::AuditEntry]| {
        entries
            .iter()
            .filter(|e| e.draft.action == "directory.imported")
            .map(|e| e.draft.detail.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let entries = store.audit_entries(None, 0, 100).await.unwrap();
    assert_eq!(
        audited(&entries),
        vec!["test.csv: 5 created, 0 updated, 0 unchanged, 0 refused".to_string()]
    );
    let a1 = store.account_view("A1").await.unwrap().unwrap();
    assert_eq!(a1.account.security_level, SecurityLevel::High);
    assert_eq!(a1.contacts.len(), 2);
    assert_eq!(a1.contacts[0].destinations.len(), 2);
    assert!(a1.contacts[0].destinations.iter().all(|d| d.verified));
    let a3 = store.account_view("A3").await.unwrap().unwrap();
    assert_eq!(a3.contacts[0].destinations[0].id, "d-fixed");
    assert_eq!(
        a3.contacts[0].destinations[0].prefs.min_priority,
        Some(Priority::High)
    );

    // Again: nothing changes, nothing is audited.
    let again = import(store, &first).await;
    assert_eq!(outcome_kinds(&again), vec!["unchanged"; 5]);
    assert_eq!(
        store.audit_entries(None, 0, 100).await.unwrap().len(),
        entries.len()
    );

    // What the API protects, refused; the rest written.
    let second = format!(
        "{HEAD}A1,Alice Ltd,high,alice,,ntfy:alice-phone,true,\n\
         A1,Alice Ltd,standard,,,,,\n\
         A2,Bob Ltd,,,,,,\n\
         A2,Bob Ltd,,dave,d-fixed,mailto:dave@example.com,true,\n\
         A3,Carol,,carol,,mailto:carol@example.com,true,\n\
         A3,Carol,,carol,d-fixed,mailto:carol@example.com,true,\"{{\"\"min_priority\"\":\"\"high\"\"}}\"\n\
         A3,Carol,,carol,d-fixed,mailto:carol@example.com,true,\"{{\"\"min_priority\"\":\"\"high\"\"}}\"\n"
    );
    let got = import(store, &second).await;
    assert_eq!(
        outcome_kinds(&got),
        vec![
            "refused",
            "refused",
            "updated",
            "refused",
            "refused",
            "updated",
            "unchanged"
        ],
        "{got:?}"
    );
    let a1 = store.account_view("A1").await.unwrap().unwrap();
    assert_eq!(a1.account.security_level, SecurityLevel::High);
    assert_eq!(a1.contacts[0].destinations.len(), 2);
    assert_eq!(
        store
            .account_view("A2")
            .await
            .unwrap()
            .unwrap()
            .account
            .name,
        "Bob Ltd"
    );
    assert!(store.account_view("A3").await.unwrap().unwrap().contacts[0].destinations[0].verified);
    let entries = store.audit_entries(None, 0, 100).await.unwrap();
    assert_eq!(
        audited(&entries).last().map(String::as_str),
        Some("test.csv: 0 created, 2 updated, 1 unchanged, 4 refused")
    );

    // An export reads it all back a page at a time, in the order of ids.
    let page = store.directory_page(None, 2).await.unwrap();
    let ids: Vec<_> = page.iter().map(|v| v.account.id.as_str()).collect();
    assert_eq!(ids, ["A1", "A2"]);
    assert_eq!(page[0], a1);
    let rest = store.directory_page(Some("A2"), 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0], store.account_view("A3").await.unwrap().unwrap());
    assert!(
        store
            .directory_page(Some("A3"), 2)
            .await
            .unwrap()
            .is_empty()
    );
}

conformance!(
    check_inspect,
    check_tokens,
    check_directory,
    check_directory_pages_in_byte_order,
    check_ingest_is_atomic_and_idempotent,
    check_batch_ingest_in_order,
    check_a_large_batch_is_written_whole,
    check_planner_sees_pending_and_cancels,
    check_only_keyed_events_are_counted,
    check_claim_lease_and_finish,
    check_claim_takes_the_longest_waiting_first,
    check_claim_keeps_each_keys_order,
    check_finish_holds_to_its_lease,
    check_outcomes_written_together,
    check_cancel_event,
    check_own_notices,
    check_next_due_over_every_channel,
    check_digest_folding_and_cancellation,
    check_pairing_reaches_folded_notices,
    check_dead_letters_and_redrive,
    check_receipts,
    check_destination_health,
    check_destination_secrets,
    check_clear_secrets_found_and_replaced,
    check_key_registry,
    check_throttle,
    check_secrets_erased,
    check_protected_changes,
    check_security_kept,
    check_staff_tokens,
    check_staff_logins,
    check_calls,
    check_assurance,
    check_import_directory,
    check_channel_limits,
    check_postal_addresses,
    check_credentials,
    check_token_epoch,
);

/// The token epoch moves with every change to what a token lookup
/// answers, and only then: a cache keyed on it never serves a revoked
/// token, and a token's last use does not empty every node's cache.
pub async fn check_token_epoch(store: &dyn Store) {
    use crate::model::{Role, Staff};
    let at = t("2026-03-22T10:00:00Z");
    let epoch = || async { store.token_epoch().await.unwrap() };
    let bo = Staff {
        name: "bo".into(),
        role: Role::Agent,
        created_at: at,
        disabled_at: None,
    };
    assert!(store.add_staff(&bo).await.unwrap());
    let rec = |id: &str, staff: Option<&str>| TokenRecord {
        id: id.into(),
        name: "epoch".into(),
        scopes: vec![Scope::EventsWrite],
        created_at: at,
        staff: staff.map(str::to_string),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        last_used_from: None,
        allow: vec![],
        cert: None,
        session: false,
    };
    let (one, two) = (new_id(), new_id());
    store
        .create_token(&rec(&one, None), &sha256_hex(b"epoch-one"))
        .await
        .unwrap();
    store
        .create_token(&rec(&two, Some("bo")), &sha256_hex(b"epoch-two"))
        .await
        .unwrap();
    let start = epoch().await;
    store
        .touch_token(&one, at, Some("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(epoch().await, start, "a token's last use leaves the epoch");
    assert!(store.revoke_token(&one, at).await.unwrap());
    let revoked = epoch().await;
    assert!(revoked > start, "a revocation moves the epoch");
    let three = rec(&new_id(), Some("bo"));
    assert!(
        store
            .rotate_token(&two, &three, &sha256_hex(b"epoch-three"))
            .await
            .unwrap()
    );
    let rotated = epoch().await;
    assert!(rotated > revoked, "a rotation moves the epoch");
    assert!(store.disable_staff("bo", at).await.unwrap());
    assert!(epoch().await > rotated, "disabling staff moves the epoch");
}

/// A channel's rate and pause are one state for every node on the store:
/// reservations made at once (as nodes make them) hand out each slot
/// once, as one node asking for them all would; a pause is seen by all,
/// and a shorter one never cuts a longer one.
pub async fn check_channel_limits(store: &dyn Store) {
    use crate::model::ChannelKind;
    use crate::schedule::rate::Gcra;
    let at = t("2026-03-22T10:00:00Z");
    let rate = Gcra::new("10/s".parse().unwrap());
    // Twenty asks of one at once, then what a single ask of twenty gives.
    let asks = (0..20).map(|_| store.reserve_rate(ChannelKind::Sms, rate, at, 1));
    let mut got: Vec<Option<DateTime<Utc>>> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap().1)
        .collect();
    got.sort();
    let (want_tat, mut want) = rate.reserve(None, at, 20);
    want.sort();
    assert_eq!(got, want, "each slot handed out once");
    // The state carries on from there, on any node.
    let (tat, next) = store
        .reserve_rate(ChannelKind::Sms, rate, at, 1)
        .await
        .unwrap();
    assert_eq!(next, rate.reserve(Some(want_tat), at, 1).1);
    assert_eq!(rate.backlog(tat, at), 11);
    // Another channel is apart.
    let (_, other) = store
        .reserve_rate(ChannelKind::Telegram, rate, at, 1)
        .await
        .unwrap();
    assert_eq!(other, vec![None]);

    assert!(store.channel_pauses(at).await.unwrap().is_empty());
    let until = at + Duration::seconds(30);
    store.pause_channel(ChannelKind::Sms, until).await.unwrap();
    store
        .pause_channel(ChannelKind::Sms, at + Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(
        store.channel_pauses(at).await.unwrap(),
        vec![(ChannelKind::Sms, until)],
        "the longer pause stands"
    );
    assert!(store.channel_pauses(until).await.unwrap().is_empty());
    // The pause left the rate's state alone.
    let (_, after) = store
        .reserve_rate(ChannelKind::Sms, rate, at, 1)
        .await
        .unwrap();
    assert_eq!(after, rate.reserve(Some(tat), at, 1).1);
}

/// An account's postal address on this store: kept as written; a new one
/// for an account with a `postal:` destination applied by its protected
/// change (`destination.change`) once due; the change's notices by letter
/// only at `maximum`.
pub async fn check_postal_addresses(store: &dyn Store) {
    use crate::changes::{Actor, Engine, REMINDER};
    use crate::model::{
        ChangeAnswer, ChangeKind, ChangeState, DestinationPlan, PostalAddress, PostalInput, Subject,
    };
    let address = |town: &str| {
        PostalAddress::parse(PostalInput {
            name: "Jörg Müller".into(),
            lines: vec!["Hauptstraße 5".into()],
            postcode: "10115".into(),
            town: town.into(),
            country: "DE".into(),
        })
        .unwrap()
    };
    let config = Config::parse(
        "[changes]\ncooling_off = { standard = \"1h\", high = \"1h\", maximum = \"1h\" }\n",
        "test",
    )
    .unwrap();
    let t0 = t("2026-03-22T10:00:00Z");
    let at = |min: i64| Engine {
        store,
        config: &config,
        now: t0 + Duration::minutes(min),
    };
    let ann = Actor {
        id: "staff:ann".into(),
        source: None,
        ticket: None,
    };
    // (account, level, letters among the reminders)
    for (id, level, by_letter) in [
        ("P1", SecurityLevel::High, 0),
        ("P2", SecurityLevel::Maximum, 3),
    ] {
        let mut a = account(id);
        a.security_level = level;
        a.postal_address = Some(address("Berlin"));
        store.put_account(&a).await.unwrap();
        let view = store.account_view(id).await.unwrap().unwrap();
        assert_eq!(view.account.postal_address, Some(address("Berlin")));
        store.put_contact(id, &alice()).await.unwrap();
        let postal = destination("alice", "postal:account", true);
        for d in [
            destination("alice", "mailto:alice@example.com", true),
            postal.clone(),
        ] {
            store.add_destination(id, &d, None, None).await.unwrap();
        }
        let plan = DestinationPlan {
            id: postal.id.clone(),
            contact: "alice".into(),
            uri: "postal:account".into(),
            prefs: Default::default(),
            verified: true,
        };
        let subject = Subject {
            destination: Some(Box::new(plan)),
            postal_address: Some(address("Hamburg")),
            ..Subject::default()
        };
        let change = at(0).new_change(ChangeKind::DestinationChange, id, level, subject, &ann);
        let ChangeAnswer::Opened(opened) = at(0).request(change, &ann).await.unwrap() else {
            panic!("a protected change opens");
        };
        assert_eq!(opened.subject.postal_address, Some(address("Hamburg")));
        // Stored whole, the new address with it.
        assert_eq!(
            store.change(&opened.id).await.unwrap(),
            Some(opened.clone())
        );
        let pending = store
            .notifications_in(State::Pending, None, 500)
            .await
            .unwrap();
        let reminders: Vec<_> = pending
            .iter()
            .filter(|n| n.account == id && n.type_name == REMINDER)
            .collect();
        let letters = reminders
            .iter()
            .filter(|n| n.channel == crate::model::ChannelKind::Letter)
            .count();
        assert_eq!((reminders.len() - letters, letters), (3, by_letter), "{id}");
        // The old address meanwhile; the new one once it applies.
        let view = store.account_view(id).await.unwrap().unwrap();
        assert_eq!(view.account.postal_address, Some(address("Berlin")));
        if level == SecurityLevel::Maximum {
            // Two approvals at maximum.
            for name in ["bob", "cy"] {
                let staff = Actor {
                    id: format!("staff:{name}"),
                    ..ann.clone()
                };
                at(2).approve(&opened.id, &staff).await.unwrap();
            }
        }
        at(61).settle_due().await.unwrap();
        let c = store.change(&opened.id).await.unwrap().unwrap();
        assert_eq!(c.state, ChangeState::Applied, "{id}: {c:?}");
        let view = store.account_view(id).await.unwrap().unwrap();
        assert_eq!(
            view.account.postal_address,
            Some(address("Hamburg")),
            "{id}"
        );
    }
}

/// A channel's rotating credential: seeded once, swapped only from the
/// version read (of two swaps from one version, one wins), each name its
/// own.
pub async fn check_credentials(store: &dyn Store) {
    let at = t("2026-03-22T10:00:00Z");
    assert_eq!(store.credential("x.refresh_token").await.unwrap(), None);
    assert!(
        store
            .seed_credential("x.refresh_token", "v1.sealed-1", "seed-a", at)
            .await
            .unwrap()
    );
    // A second seed (another node starting) changes nothing.
    assert!(
        !store
            .seed_credential("x.refresh_token", "v1.other", "seed-b", at)
            .await
            .unwrap()
    );
    let first = store.credential("x.refresh_token").await.unwrap().unwrap();
    assert_eq!(
        (
            first.version,
            first.sealed.as_str(),
            first.seed.as_str(),
            first.updated_at
        ),
        (1, "v1.sealed-1", "seed-a", at)
    );
    // Two nodes swap from version 1: one wins, the other is told to read again.
    let later = at + Duration::minutes(1);
    assert!(
        store
            .swap_credential("x.refresh_token", 1, "v1.sealed-2", "seed-a", later)
            .await
            .unwrap()
    );
    assert!(
        !store
            .swap_credential("x.refresh_token", 1, "v1.sealed-2b", "seed-a", later)
            .await
            .unwrap()
    );
    let second = store.credential("x.refresh_token").await.unwrap().unwrap();
    assert_eq!(
        (second.version, second.sealed.as_str(), second.updated_at),
        (2, "v1.sealed-2", later)
    );
    assert!(
        store
            .swap_credential("x.refresh_token", 2, "v1.sealed-3", "seed-c", later)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .credential("x.refresh_token")
            .await
            .unwrap()
            .map(|c| (c.version, c.seed)),
        Some((3, "seed-c".to_string()))
    );
    // Another name is another credential; an unknown one never swaps.
    assert_eq!(store.credential("other").await.unwrap(), None);
    assert!(
        !store
            .swap_credential("other", 0, "v1.x", "s", later)
            .await
            .unwrap()
    );
}

/// Assurance recovery on a store: record, confirm by the link, complete
/// with `A-word-T-word`; wrong secrets counted and locked with an
/// incident; nothing usable kept.
pub async fn check_assurance(store: &dyn Store) {
    use crate::changes::{Actor, AssuranceInput, Engine};
    use crate::model::{
        AssuranceState, ChangeAnswer, ChangeKind, ChangeRefusal, ChangeState, DestinationPlan,
        Subject,
    };
    use crate::text::assurance::{LINK, T_WORD};
    seed(store).await;
    let mut high = account("A1");
    high.security_level = SecurityLevel::High;
    store.put_account(&high).await.unwrap();
    let config = Config::parse(
        "[changes]\ncooling_off = { standard = \"1h\", high = \"1h\", maximum = \"1h\" }\n",
        "test",
    )
    .unwrap();
    let t0 = t("2026-03-22T10:00:00Z");
    let at = |min: i64| Engine {
        store,
        config: &config,
        now: t0 + Duration::minutes(min),
    };
    let staff = |name: &str| Actor {
        id: format!("staff:{name}"),
        source: Some("192.0.2.1".into()),
        ticket: None,
    };
    let open = |min: i64| async move {
        let plan = DestinationPlan {
            id: new_id(),
            contact: "alice".into(),
            uri: "sms:+447700900999".into(),
            prefs: Default::default(),
            verified: true,
        };
        let subject = Subject {
            destination: Some(Box::new(plan)),
            ..Subject::default()
        };
        let c = at(min).new_change(
            ChangeKind::DestinationAdd,
            "A1",
            SecurityLevel::High,
            subject,
            &staff("ann"),
        );
        match at(min).request(c, &staff("ann")).await.unwrap() {
            ChangeAnswer::Opened(c) => c,
            other => panic!("opened expected, not {other:?}"),
        }
    };
    let input = |met_days: i64| AssuranceInput {
        address: None,
        a_word: "kiwi42".into(),
        ticket: "T-7".into(),
        met_on: t0 - Duration::days(met_days),
    };
    let refusal = |a: ChangeAnswer| match a {
        ChangeAnswer::Refused { why, .. } => why,
        other => panic!("refused expected, not {other:?}"),
    };
    let at_rest = &crate::trust::seal::AtRest::new(&config.code_key);
    let secret_of = |kind: &'static str, assurance: String| async move {
        let key = format!("{kind}:{assurance}");
        let n = store
            .notifications_in(State::Pending, None, 500)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.key == key)
            .expect(kind);
        // Kept sealed, opened with the code key.
        let stored = n.secret.as_ref().unwrap().expose();
        assert!(crate::trust::seal::is_sealed(stored), "{stored}");
        let secret = at_rest.open_notice(&n).unwrap().unwrap();
        (secret.expose().to_string(), n)
    };
    let change = open(0).await;

    // Too long ago, or from a token that is no person: refused.
    assert_eq!(
        refusal(
            at(1)
                .assure(&change.id, input(31), &staff("sam"))
                .await
                .unwrap()
        ),
        ChangeRefusal::AssuranceTooOld
    );
    let ChangeAnswer::Assured { assurance, .. } = at(1)
        .assure(&change.id, input(1), &staff("sam"))
        .await
        .unwrap()
    else {
        panic!("assured");
    };
    assert_eq!(assurance.state, AssuranceState::Recorded);
    assert_eq!(assurance.address, "alice@example.com", "the only mailbox");
    assert!(assurance.a_hash.starts_with("$argon2id$"));
    assert!(!assurance.a_hash.contains("kiwi42"));
    assert_eq!(
        refusal(
            at(2)
                .assure(&change.id, input(1), &staff("sam"))
                .await
                .unwrap()
        ),
        ChangeRefusal::AssuredAlready
    );
    // The link goes to the primary address; its secret only with the
    // notice, its hash with the assurance.
    let (token, link_mail) = secret_of(LINK, assurance.id.clone()).await;
    assert_eq!(link_mail.uri, "mailto:alice@example.com");
    assert_eq!(
        store
            .assurance_by_link(&crate::trust::assurance::link_hash(&token))
            .await
            .unwrap()
            .map(|a| a.id),
        Some(assurance.id.clone())
    );
    // Completing before the link is followed: nothing to complete.
    assert_eq!(
        refusal(
            at(3)
                .complete_assurance(&change.id, "kiwi42-abcdefghjk", &staff("sam"))
                .await
                .unwrap()
        ),
        ChangeRefusal::NoAssurance
    );
    assert_eq!(
        refusal(
            at(3)
                .confirm_assurance(&"x".repeat(43), None)
                .await
                .unwrap()
        ),
        ChangeRefusal::InvalidLink
    );
    let ChangeAnswer::Assured {
        assurance: confirmed,
        ..
    } = at(4).confirm_assurance(&token, None).await.unwrap()
    else {
        panic!("confirmed");
    };
    assert_eq!(confirmed.state, AssuranceState::Confirmed);
    assert_eq!(
        refusal(at(5).confirm_assurance(&token, None).await.unwrap()),
        ChangeRefusal::InvalidLink,
        "a link works once"
    );
    // The T-word to the mailbox only; the webhook told, with a veto link.
    let (t_word, t_mail) = secret_of(T_WORD, assurance.id.clone()).await;
    assert_eq!(t_mail.uri, "mailto:alice@example.com");
    assert_eq!(t_word.len(), crate::trust::assurance::T_WORD_LEN);
    let stored = store.assurances(&change.id).await.unwrap();
    assert_ne!(stored[0].t_hash.as_deref(), Some(t_word.as_str()));
    let told: Vec<_> = store
        .notifications_in(State::Pending, None, 500)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| {
            n.type_name == crate::changes::REMINDER && n.due_at == t0 + Duration::minutes(4)
        })
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].channel, ChannelKind::Webhook);

    // The mailbox reader has the T-word, the assurer the A-word: neither
    // completes it.
    for (secret, who) in [
        (format!("guess1-{t_word}"), "link"),
        ("kiwi42-abcdefghjk".to_string(), "staff:sam"),
    ] {
        let actor = Actor {
            id: who.into(),
            ..Actor::default()
        };
        assert_eq!(
            refusal(
                at(6)
                    .complete_assurance(&change.id, &secret, &actor)
                    .await
                    .unwrap()
            ),
            ChangeRefusal::WrongSecret
        );
    }
    assert_eq!(store.assurances(&change.id).await.unwrap()[0].attempts, 2);
    // Both halves: proven, and applied at once (at high, no approvals).
    let answer = at(7)
        .complete_assurance(&change.id, &format!("kiwi42-{t_word}"), &staff("x"))
        .await
        .unwrap();
    let ChangeAnswer::Settled(applied) = answer else {
        panic!("applied expected, not {answer:?}");
    };
    assert_eq!(applied.state, ChangeState::Applied);
    assert_eq!(applied.proof, Some(format!("assurance:{}", assurance.id)));
    let done = &store.assurances(&change.id).await.unwrap()[0];
    assert_eq!(done.state, AssuranceState::Completed);
    assert_eq!(done.t_hash, None);
    // Used once.
    assert_eq!(
        refusal(
            at(8)
                .complete_assurance(&change.id, &format!("kiwi42-{t_word}"), &staff("x"))
                .await
                .unwrap()
        ),
        ChangeRefusal::NotPending
    );

    // Three wrong secrets lock the recovery: an incident, everyone told,
    // the right secret and new assurances refused after.
    let second = open(10).await;
    let ChangeAnswer::Assured { assurance, .. } = at(10)
        .assure(&second.id, input(1), &staff("sam"))
        .await
        .unwrap()
    else {
        panic!("assured");
    };
    let (token, _) = secret_of(LINK, assurance.id.clone()).await;
    at(11).confirm_assurance(&token, None).await.unwrap();
    let (t_word, _) = secret_of(T_WORD, assurance.id.clone()).await;
    for (n, want) in [
        (1, ChangeRefusal::WrongSecret),
        (2, ChangeRefusal::WrongSecret),
        (3, ChangeRefusal::AssuranceLocked),
    ] {
        assert_eq!(
            refusal(
                at(12)
                    .complete_assurance(&second.id, "nope42-abcdefghjk", &staff("x"))
                    .await
                    .unwrap()
            ),
            want,
            "try {n}"
        );
    }
    assert_eq!(
        refusal(
            at(13)
                .complete_assurance(&second.id, &format!("kiwi42-{t_word}"), &staff("x"))
                .await
                .unwrap()
        ),
        ChangeRefusal::AssuranceLocked
    );
    assert_eq!(
        refusal(
            at(13)
                .assure(&second.id, input(1), &staff("kim"))
                .await
                .unwrap()
        ),
        ChangeRefusal::AssuranceLocked
    );
    let incidents = store.incidents(true, Some("A1"), 10).await.unwrap();
    assert!(
        incidents
            .iter()
            .any(|i| i.kind == "assurance_locked" && i.change.as_deref() == Some(&second.id)),
        "{incidents:?}"
    );
    assert_eq!(
        store.change(&second.id).await.unwrap().unwrap().state,
        ChangeState::Pending
    );
    let entries = store.audit_entries(Some("A1"), 0, 1000).await.unwrap();
    for action in [
        "assurance.recorded",
        "assurance.confirmed",
        "assurance.completed",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e.draft.action == action && e.draft.ticket.as_deref() == Some("T-7")),
            "{action} audited with its ticket"
        );
    }
}

/// A schema dropped when the test ends.
pub struct TempSchema {
    pub(crate) name: String,
    url: String,
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

pub fn pg_url() -> String {
    std::env::var("KCI_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A migrated PostgreSQL store in a fresh schema of the test server.
pub async fn pg_store() -> (super::postgres::PgStore, TempSchema) {
    let url = pg_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test server at {url} is not reachable: {e}"));
    tokio::spawn(conn);
    let name = format!("kci_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.options(format!("-c search_path={name}"));
    let store = super::postgres::PgStore::with_config(config).await.unwrap();
    store.migrate().await.unwrap();
    (store, TempSchema { name, url })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_chain_with_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        crate::store::sqlite::SqliteStore::open(dir.path().join("kci.db").to_str().unwrap())
            .unwrap();
    store.migrate().await.unwrap();
    check_audit_chain(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_chain_with_concurrent_appends() {
    let (store, _schema) = pg_store().await;
    check_audit_chain(Arc::new(store)).await;
}

/// Two nodes on one PostgreSQL database settle the same due changes at
/// the same moment, many times over: each change is applied by exactly
/// one of them, and told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_nodes_apply_a_change_once() {
    use crate::changes::{Actor, Engine};
    use crate::model::{ChangeKind, ChangeState, DestinationPlan, Subject};
    let (node1, schema) = pg_store().await;
    let node2 = {
        let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
        config.options(format!("-c search_path={}", schema.name));
        crate::store::postgres::PgStore::with_config(config)
            .await
            .unwrap()
    };
    seed(&node1).await;
    let mut high = account("A1");
    high.security_level = SecurityLevel::High;
    node1.put_account(&high).await.unwrap();
    let config = Config::parse("[changes]\ncooling_off = { high = \"1s\" }\n", "test").unwrap();
    let t0 = t("2026-03-22T10:00:00Z");
    let actor = Actor {
        id: "token:t1".into(),
        ..Actor::default()
    };
    let mut ids = Vec::new();
    for round in 0..10 {
        let engine = Engine {
            store: &node1,
            config: &config,
            now: t0 + Duration::minutes(round),
        };
        let plan = DestinationPlan {
            id: new_id(),
            contact: "alice".into(),
            uri: format!("sms:+4477009001{round:02}"),
            prefs: Default::default(),
            verified: true,
        };
        let subject = Subject {
            destination: Some(Box::new(plan)),
            ..Subject::default()
        };
        let c = engine.new_change(
            ChangeKind::DestinationAdd,
            "A1",
            SecurityLevel::High,
            subject,
            &actor,
        );
        engine.request(c.clone(), &actor).await.unwrap();
        let due = t0 + Duration::minutes(round) + Duration::seconds(2);
        let (e1, e2) = (
            Engine {
                store: &node1,
                config: &config,
                now: due,
            },
            Engine {
                store: &node2,
                config: &config,
                now: due,
            },
        );
        let (a, b) = tokio::join!(e1.settle_due(), e2.settle_due());
        assert_eq!(a.unwrap() + b.unwrap(), 1, "round {round}: applied once");
        ids.push(c.id);
    }
    for id in &ids {
        assert_eq!(
            node1.change(id).await.unwrap().unwrap().state,
            ChangeState::Applied
        );
    }
    let entries = node1.audit_entries(None, 0, 1000).await.unwrap();
    let settled = entries
        .iter()
        .filter(|e| e.draft.action == "change.settled")
        .count();
    assert_eq!(settled, 10);
    assert!(crate::model::audit::verify(&entries, &[], |_| true).is_ok());
    let applied = node1
        .notifications_in(State::Pending, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.type_name == "kci.change.applied")
        .count();
    // Told on the two destinations there were at the first change, and
    // the ones added verified since.
    assert_eq!(applied, (0..10).map(|r| 2 + r).sum::<usize>());
}
