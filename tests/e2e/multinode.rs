//! Several `kci serve` nodes on one PostgreSQL database (DESIGN.md §10,
//! issue 14): each claims due notifications with a lease, delivers them
//! and records the outcome; a node killed with `kill -9` leaves its claims
//! to their lease, and another node takes them over. Two nodes take ten
//! thousand events posted to both while one is killed and restarted; four
//! nodes contend for a few thousand. The recipient is a webhook receiver
//! on loopback, which counts what arrived by Standard Webhooks `webhook-id`.
//!
//! kci is at-least-once: a delivery the receiver got from the killed node
//! before that node recorded it is sent again once its lease ends — with
//! the same `webhook-id`, so the receiver drops it. Anything else that
//! arrives twice is a fault of the claims.

use crate::common::*;
use base64::Engine;
use hmac::Mac;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease a node holds on what it claims: short, so that the takeover
/// after `kill -9` happens within the test. Half a lease must cover the
/// slowest channel's timeout (config validation), hence [`TIMEOUT`].
const LEASE: Duration = Duration::from_secs(5);

/// The lease of the node that survives the kill: shorter, so that a notice
/// leased for longer than this was claimed by the node to be killed — how
/// the test picks a moment when that node holds some.
const SURVIVOR_LEASE: Duration = Duration::from_secs(4);

/// Every channel's timeout: half the shorter lease.
const TIMEOUT: &str = "2s";

/// Notices one node delivers at once per channel (`[delivery]
/// concurrency`, its default). A webhook's slot is given back once its
/// receiver answered, while the outcome is written, and a lane holds at
/// most twice this many delivery tasks: the most a node can have handed
/// to the receiver and not yet recorded when it dies.
const CONCURRENCY: usize = 32;

/// Accounts the events are spread over, each with one contact and one
/// verified webhook destination.
const ACCOUNTS: usize = 10;

/// A fresh database on the test PostgreSQL server, its own so that
/// `pg_stat_database` counts only what its nodes did; dropped when this
/// goes, also when the test fails (declare it before the nodes, so that
/// they are gone first).
struct FreshDb {
    url: String,
    name: String,
    base: String,
    admin: tokio_postgres::Client,
}

impl FreshDb {
    async fn create() -> FreshDb {
        let base = std::env::var("KCI_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .expect("the test PostgreSQL server");
        tokio::spawn(conn);
        let name = format!("kci_nodes_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        // The same server and options, another database.
        let (path, query) = base.split_once('?').unwrap_or((&base, ""));
        let server = path.rsplit_once('/').map_or(path, |(s, _)| s);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        FreshDb {
            url: format!("{server}/{name}{query}"),
            name,
            base,
            admin,
        }
    }

    /// A connection of the test's own, to read what the nodes stored.
    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Commits and rows written in this database so far (all nodes).
    async fn stats(&self) -> DbStats {
        let row = self
            .admin
            .query_one(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, \
                 tup_returned, tup_fetched FROM pg_stat_database WHERE datname = $1",
                &[&self.name],
            )
            .await
            .unwrap();
        DbStats {
            commits: row.get(0),
            rollbacks: row.get(1),
            inserted: row.get(2),
            updated: row.get(3),
            deleted: row.get(4),
            returned: row.get(5),
            fetched: row.get(6),
        }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        // On a thread of its own: a test's runtime may be the one dropping.
        let (base, name) = (self.base.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// `pg_stat_database`'s counters for one database.
#[derive(Debug, Clone, Copy)]
struct DbStats {
    commits: i64,
    rollbacks: i64,
    inserted: i64,
    updated: i64,
    deleted: i64,
    returned: i64,
    fetched: i64,
}

impl DbStats {
    /// What happened between `before` and `self`, per one of `n` notices.
    fn per(&self, before: &DbStats, n: usize) -> String {
        let per = |a: i64, b: i64| (a - b) as f64 / n as f64;
        format!(
            "per notification: {:.2} commits, {:.3} rollbacks, {:.2} rows inserted, {:.2} updated, {:.2} deleted, {:.1} returned, {:.1} fetched",
            per(self.commits, before.commits),
            per(self.rollbacks, before.rollbacks),
            per(self.inserted, before.inserted),
            per(self.updated, before.updated),
            per(self.deleted, before.deleted),
            per(self.returned, before.returned),
            per(self.fetched, before.fetched),
        )
    }
}

/// Starts a node per lease in `leases` on `url`, all at once (they
/// migrate the fresh database together: one migrator at a time), each
/// keeping at most `pool` connections; webhooks signed with the test's
/// secret, the timeouts short.
fn nodes(url: &str, leases: &[Duration], pool: usize) -> Vec<Kci> {
    let email = format!("timeout = \"{TIMEOUT}\"\n");
    let extra = |lease: &Duration| {
        format!(
            "lease = \"{}ms\"\nconcurrency = {CONCURRENCY}\n\
             {LOCAL_WEBHOOKS}secret = \"{WEBHOOK_SECRET}\"\ntimeout = \"{TIMEOUT}\"\n",
            lease.as_millis()
        )
    };
    std::thread::scope(|s| {
        let started: Vec<_> = leases
            .iter()
            .map(|lease| {
                let (email, extra) = (&email, extra(lease));
                s.spawn(move || {
                    let pool = format!("pool_size = {pool}\n");
                    Kci::start_on_with(Some(url), &pool, None, "", email, &extra)
                })
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("a node started"))
            .collect()
    })
}

/// `ACCOUNTS` customers, each with a verified webhook to `receiver`.
async fn customers(kci: &Kci, admin: &str, receiver: &WebhookReceiver) {
    for a in 0..ACCOUNTS {
        let hook = json!({"uri": receiver.url, "verified": true});
        kci.customer(admin, &format!("A{a}"), "ops", hook).await;
    }
}

/// Event number `i`: a line of account `i % ACCOUNTS` went down; told
/// not before `due` if given.
fn event(run: &str, i: usize, due: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    let mut ev = json!({
        "id": format!("{run}-{i:05}"),
        "type": "line.down",
        "account": format!("A{}", i % ACCOUNTS),
        "service": format!("L{i}"),
        "data": {"ticket": format!("T{i}")},
    });
    if let Some(due) = due {
        ev["not_before"] = json!(due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    ev
}

/// Posts events `0..total` with `senders` concurrent clients, event `i`
/// to node `i % bases.len()`; when that node does not answer, the same
/// event (same id) goes to the next node, as a source system behind a
/// load balancer fails over. Returns the ids answered 202 and how many
/// posts failed over.
async fn post_all(
    http: &reqwest::Client,
    bases: &[String],
    token: &str,
    run: &str,
    total: usize,
    senders: usize,
    due: Option<chrono::DateTime<chrono::Utc>>,
) -> (Vec<String>, usize) {
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failed_over = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..senders {
        let (http, bases, token, run) = (
            http.clone(),
            bases.to_vec(),
            token.to_string(),
            run.to_string(),
        );
        let (accepted, failed_over) = (accepted.clone(), failed_over.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(senders) {
                let ev = event(&run, i, due);
                let mut node = i % bases.len();
                let mut tries = 0;
                loop {
                    let resp = http
                        .post(format!("{}/v1/events", bases[node]))
                        .bearer_auth(&token)
                        .json(&ev)
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    match resp {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            assert_eq!(status, 202, "event {i} on node {node}: {body}");
                            accepted
                                .lock()
                                .unwrap()
                                .push(ev["id"].as_str().unwrap().into());
                            break;
                        }
                        Err(e) => {
                            // The node is gone: the next one takes it.
                            tries += 1;
                            assert!(tries <= 2 * bases.len(), "event {i}: no node answers: {e}");
                            failed_over.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            node = (node + 1) % bases.len();
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a sender");
    }
    let accepted = accepted.lock().unwrap().clone();
    (
        accepted,
        failed_over.load(std::sync::atomic::Ordering::SeqCst),
    )
}

/// Standard Webhooks: the signature over `id.timestamp.body` with the
/// channel's secret.
fn verify_signature(hook: &Hook) {
    let id = hook.headers["webhook-id"].to_str().unwrap();
    let ts = hook.headers["webhook-timestamp"].to_str().unwrap();
    let sig = hook.headers["webhook-signature"].to_str().unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hook.body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(sig, want, "Standard Webhooks signature of {id}");
}

/// What the receiver got, by `webhook-id`: how many copies, and the event
/// each was about. Every copy is signed, and names its own notification
/// and one event; an event never arrives under two ids.
struct Received {
    copies: HashMap<String, usize>,
    event_of: HashMap<String, String>,
}

fn received(receiver: &WebhookReceiver) -> Received {
    let hooks = receiver.received.lock().unwrap();
    let mut copies = HashMap::new();
    let mut event_of: HashMap<String, String> = HashMap::new();
    let mut ids_of_event: HashMap<String, HashSet<String>> = HashMap::new();
    for hook in hooks.iter() {
        verify_signature(hook);
        let id = hook.headers["webhook-id"].to_str().unwrap().to_string();
        let body: Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(body["data"]["notification"], id.as_str(), "{body}");
        let event = body["data"]["event"]["id"].as_str().unwrap().to_string();
        if let Some(before) = event_of.insert(id.clone(), event.clone()) {
            assert_eq!(before, event, "{id} carried two events");
        }
        ids_of_event.entry(event).or_default().insert(id.clone());
        *copies.entry(id).or_insert(0) += 1;
    }
    for (event, ids) in &ids_of_event {
        assert_eq!(ids.len(), 1, "{event} arrived under several ids: {ids:?}");
    }
    Received { copies, event_of }
}

/// Distinct `webhook-id`s received so far, counted from `seen` on.
struct Distinct {
    ids: HashSet<String>,
    seen: usize,
}

impl Distinct {
    fn new() -> Distinct {
        Distinct {
            ids: HashSet::new(),
            seen: 0,
        }
    }

    fn count(&mut self, receiver: &WebhookReceiver) -> usize {
        let hooks = receiver.received.lock().unwrap();
        for hook in &hooks[self.seen..] {
            if let Some(id) = hook.headers.get("webhook-id") {
                self.ids.insert(id.to_str().unwrap_or_default().to_string());
            }
        }
        self.seen = hooks.len();
        self.ids.len()
    }
}

/// Each stored notification: event id → (notification id, state,
/// attempts).
async fn stored(db: &tokio_postgres::Client) -> HashMap<String, Vec<(String, String, i64)>> {
    let mut out: HashMap<String, Vec<_>> = HashMap::new();
    for r in db
        .query("SELECT event, id, state, attempts FROM notifications", &[])
        .await
        .unwrap()
    {
        out.entry(r.get::<_, String>(0))
            .or_default()
            .push((r.get(1), r.get(2), r.get(3)));
    }
    out
}

/// Notifications not yet `sent` (of `ids` only, if given).
async fn unsent(db: &tokio_postgres::Client, ids: Option<&[String]>) -> i64 {
    let row = match ids {
        Some(ids) => db
            .query_one(
                "SELECT COUNT(*) FROM notifications WHERE state <> 'sent' AND id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap(),
        None => db
            .query_one(
                "SELECT COUNT(*) FROM notifications WHERE state <> 'sent'",
                &[],
            )
            .await
            .unwrap(),
    };
    row.get(0)
}

/// Webhooks this node has delivered since it started, from its `/metrics`.
async fn delivered_by(kci: &Kci, token: &str) -> u64 {
    let text = kci
        .http
        .get(format!("{}/metrics", kci.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("the node answers")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("kci_deliveries_total{")
                && l.contains("channel=\"webhook\"")
                && l.contains("outcome=\"sent\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Two nodes, ten thousand events posted to both at once; node one is
/// killed with `kill -9` while deliveries are in flight and restarted.
/// Every event answered 202 is delivered; what arrives twice is only what
/// the killed node had in flight, under the same `webhook-id`; what it
/// held is delivered within its lease (and a margin) of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_lose_nothing_when_one_is_killed_mid_delivery() {
    const TOTAL: usize = 10_000;
    const BACKLOG: chrono::TimeDelta = chrono::TimeDelta::seconds(15);
    let db = FreshDb::create().await;
    let receiver = WebhookReceiver::start().await;
    // Eight connections each, as in the four-node test: the suite runs
    // other PostgreSQL tests beside these.
    let mut nodes = nodes(&db.url, &[LEASE, SURVIVOR_LEASE], 8);
    let admin = nodes[0].token(&["admin"]);
    customers(&nodes[1], &admin, &receiver).await;
    let check = db.client().await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();

    // Every event is due a while after the first post, so a backlog
    // builds up and both nodes' lanes are full when the kill comes.
    let started = Instant::now();
    let due = chrono::Utc::now() + BACKLOG;
    let posting = tokio::spawn({
        let (http, admin) = (nodes[0].http.clone(), admin.clone());
        async move { post_all(&http, &bases, &admin, "two", TOTAL, 16, Some(due)).await }
    });

    // The kill: once a quarter of the events has arrived, while events
    // are still being posted, at a moment when node one holds notices
    // (leased for longer than node two ever leases, so claimed by it).
    let mut distinct = Distinct::new();
    eventually(120, "a quarter delivered", || {
        let n = distinct.count(&receiver);
        async move { (n >= TOTAL / 4).then_some(()) }
    })
    .await;
    // What node one has delivered so far (a few more may go out before
    // the kill).
    let before_kill = delivered_by(&nodes[0], &admin).await;
    eventually(60, "node one holding notices", || {
        let check = &check;
        async move {
            let beyond = chrono::Utc::now().timestamp_millis()
                + SURVIVOR_LEASE.as_millis() as i64
                + 100;
            let row = check
                .query_one(
                    "SELECT COUNT(*) FROM notifications WHERE state = 'sending' AND lease_until > $1",
                    &[&beyond],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0) >= 10).then_some(())
        }
    })
    .await;
    nodes[0].kill();
    let killed = Instant::now();
    let killed_at = chrono::Utc::now().timestamp_millis();
    let delivered_at_kill = distinct.count(&receiver);
    let posting_at_kill = !posting.is_finished();
    // What was claimed and not yet recorded at the kill, by either node:
    // the killed node's share is left to its lease.
    let held: Vec<(String, i64)> = check
        .query(
            "SELECT id, lease_until FROM notifications WHERE state = 'sending'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let held_ids: Vec<String> = held.iter().map(|(id, _)| id.clone()).collect();
    let last_lease = held.iter().map(|(_, l)| *l).max().unwrap_or(killed_at);

    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes[0].spawn();
    let restarted = killed.elapsed();

    // Watched while the senders go on: when the notices held at the kill
    // are all sent, and when everything is.
    let mut settled = None;
    let mut posted = None;
    let drained = loop {
        if settled.is_none() && unsent(&check, Some(&held_ids)).await == 0 {
            settled = Some(killed.elapsed());
        }
        if posted.is_none() && posting.is_finished() {
            posted = Some(started.elapsed());
        }
        if posted.is_some() && distinct.count(&receiver) >= TOTAL && unsent(&check, None).await == 0
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(150),
            "not delivered 150 s after the kill: {} of {TOTAL} arrived, {} unsent",
            distinct.count(&receiver),
            unsent(&check, None).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let posted = posted.unwrap_or_else(|| started.elapsed());
    let (accepted, failed_over) = posting.await.expect("the senders");
    assert_eq!(accepted.len(), TOTAL, "every event answered 202");
    let settled = settled.unwrap_or(drained);
    let total_time = started.elapsed();

    // Every accepted event: one notification, sent, and received.
    let got = received(&receiver);
    let notes = stored(&check).await;
    assert_eq!(notes.len(), TOTAL, "one stored event per posted one");
    let mut attempts_of = HashMap::new();
    for id in &accepted {
        let n = notes
            .get(id)
            .unwrap_or_else(|| panic!("{id} answered 202 but not stored"));
        assert_eq!(n.len(), 1, "{id}: {n:?}");
        let (nid, state, attempts) = &n[0];
        assert_eq!(state, "sent", "{id}");
        assert!(
            got.copies.contains_key(nid),
            "{id} never reached the receiver"
        );
        assert_eq!(got.event_of[nid], *id);
        attempts_of.insert(nid.clone(), *attempts);
    }
    assert_eq!(got.copies.len(), TOTAL, "nothing else arrived");

    // What arrived twice: only what was held at the kill, claimed again,
    // and no more than the killed node could have had in flight.
    let held: HashSet<&String> = held_ids.iter().collect();
    let twice: Vec<(&String, usize)> = got
        .copies
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, c)| (id, *c))
        .collect();
    let duplicates: usize = twice.iter().map(|(_, c)| c - 1).sum();
    for (id, copies) in &twice {
        assert!(
            held.contains(id),
            "{id} arrived {copies} times but was not in flight at the kill: two live nodes sent it"
        );
        assert!(attempts_of[*id] >= 2, "{id}: {copies} copies in one claim");
    }
    assert!(
        duplicates <= 2 * CONCURRENCY,
        "{duplicates} copies again: more than the {} the killed node could have had unrecorded",
        2 * CONCURRENCY
    );
    // Taken over once the lease ran out, and delivered within a margin.
    let margin = Duration::from_secs(30);
    assert!(
        settled <= LEASE + margin,
        "held notices delivered {settled:?} after the kill (lease {LEASE:?})"
    );

    // Claimed more than once: the killed node's, and any a node queued
    // past half its lease and let go (a loaded machine).
    let again = |held_at_kill: bool| {
        attempts_of
            .iter()
            .filter(|(id, a)| **a > 1 && held.contains(id) == held_at_kill)
            .count()
    };
    let (again_held, again_other) = (again(true), again(false));
    assert!(again_held > 0, "node one held nothing at the kill");

    let survivor = delivered_by(&nodes[1], &admin).await;
    let restarted_node = delivered_by(&nodes[0], &admin).await;
    eprintln!(
        "two nodes, {TOTAL} events (16 senders over both nodes): posted in {posted:.1?} \
         ({:.0} events/s), all delivered {total_time:.1?} after the first post",
        TOTAL as f64 / posted.as_secs_f64()
    );
    eprintln!(
        "  kill -9 of node one with {delivered_at_kill} delivered (posting still going: \
         {posting_at_kill}); {} notices held (sending) at the kill, their last lease ending \
         {:.1} s after it; restarted {restarted:.1?} after the kill; {failed_over} posts \
         failed over to the other node",
        held_ids.len(),
        (last_lease - killed_at) as f64 / 1000.0
    );
    eprintln!(
        "  held notices all sent {settled:.1?} after the kill (lease {LEASE:?}); \
         everything sent {drained:.1?} after it"
    );
    eprintln!(
        "  deliveries: node one at least {before_kill} before the kill and {restarted_node} after its \
         restart, node two {survivor}; {} notices arrived twice ({duplicates} extra copies, \
         each with its first webhook-id)",
        twice.len()
    );
    eprintln!(
        "  claimed again: {again_held} of the held notices, {again_other} others (queued past \
         half their lease and let go)"
    );
}

/// Four nodes on one database contend for the same queue; nobody dies.
/// Every notification arrives exactly once (counted by `webhook-id`), and
/// the work is shared. Also what one notification costs the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_contending_deliver_each_notification_exactly_once() {
    const TOTAL: usize = 4_000;
    let db = FreshDb::create().await;
    let receiver = WebhookReceiver::start().await;
    // Eight connections each: with the other multinode test and another
    // PostgreSQL test running beside it, well under the server's default
    // 100.
    let mut nodes = nodes(&db.url, &[LEASE; 4], 8);
    let admin = nodes[0].token(&["admin"]);
    customers(&nodes[1], &admin, &receiver).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let before = db.stats().await;

    // Due a while after the first post: the four start on a backlog.
    let started = Instant::now();
    let due = chrono::Utc::now() + chrono::TimeDelta::seconds(10);
    let (accepted, failed_over) =
        post_all(&nodes[0].http, &bases, &admin, "four", TOTAL, 16, Some(due)).await;
    let posted = started.elapsed();
    assert_eq!(accepted.len(), TOTAL, "every event answered 202");
    assert_eq!(failed_over, 0, "no node went away");
    let mut distinct = Distinct::new();
    eventually(120, "every notification delivered", || {
        let n = distinct.count(&receiver);
        async move { (n >= TOTAL).then_some(()) }
    })
    .await;
    let delivered = started.elapsed();
    let check = db.client().await;
    eventually(30, "every outcome recorded", || {
        let check = &check;
        async move { (unsent(check, None).await == 0).then_some(()) }
    })
    .await;

    let got = received(&receiver);
    assert_eq!(got.copies.len(), TOTAL);
    let twice: Vec<_> = got.copies.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let notes = stored(&check).await;
    let mut claimed_again = 0;
    for id in &accepted {
        let n = &notes[id];
        assert_eq!(n.len(), 1, "{id}: {n:?}");
        assert_eq!(n[0].1, "sent", "{id}");
        assert_eq!(got.event_of[&n[0].0], *id);
        claimed_again += usize::from(n[0].2 > 1);
    }
    let mut shares = Vec::new();
    for kci in &nodes {
        shares.push(delivered_by(kci, &admin).await);
    }
    assert_eq!(
        shares.iter().sum::<u64>(),
        TOTAL as u64,
        "the nodes' own counts: {shares:?}"
    );
    // Let the nodes' connections end, so every count reaches the server's
    // statistics, then read what the run cost the database.
    drop(check);
    for kci in &mut nodes {
        kci.terminate();
    }
    for kci in &mut nodes {
        assert!(kci.wait_exit(30).is_some(), "a node did not stop");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = db.stats().await;
    eprintln!(
        "four nodes, {TOTAL} events (16 senders over four nodes): posted in {posted:.1?} \
         ({:.0} events/s), all delivered {delivered:.1?} after the first post, each exactly once",
        TOTAL as f64 / posted.as_secs_f64()
    );
    let pct: Vec<String> = shares
        .iter()
        .map(|s| format!("{s} ({:.0}%)", *s as f64 * 100.0 / TOTAL as f64))
        .collect();
    eprintln!(
        "  deliveries per node: {}; {claimed_again} notices claimed more than once \
         (queued past half their lease and let go)",
        pct.join(", ")
    );
    eprintln!(
        "  database, ingest and delivery together, {}",
        after.per(&before, TOTAL)
    );
}
