//! The scheduler holding a large backlog: N notifications deferred far
//! ahead, on SQLite or PostgreSQL. kci keeps pending work in the store, not
//! in memory, so this measures what that costs: the time to fill through
//! the store's ingest path (and how it changes as the store grows), disk
//! per notice, process memory with the backlog in place, and how long a
//! restarted node takes until it can schedule again (open + migrate + the
//! first "what is due?" queries).
//!
//!     cargo bench --bench backlog -- [--store sqlite|postgres] [--notices 1000000]
//!
//! PostgreSQL: the server at 127.0.0.1:5432 (database `test`), in a schema
//! of its own that is dropped at the end.

use chrono::{Duration, Utc};
use kci::config::Config;
use kci::model::Preferences;
use kci::model::{Account, Contact, Destination, Event, Priority, SecurityLevel};
use std::time::Instant;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Events per ingest call, as a batch POST of this size would make.
const CHUNK: usize = 1000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

async fn pg_client() -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    c
}

/// Tables and indexes of one schema, in bytes (WAL not counted).
async fn pg_schema_bytes(schema: &str) -> u64 {
    let row = pg_client()
        .await
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

#[tokio::main]
async fn main() {
    let mut n = 1_000_000usize;
    let mut kind = "sqlite".to_string();
    let mut restart_url = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--notices" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--notices N")
            }
            "--store" => kind = args.next().expect("--store sqlite|postgres"),
            "--restart" => restart_url = Some(args.next().expect("--restart URL")),
            _ => {}
        }
    }
    if let Some(url) = restart_url {
        return restart(&url, n).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, schema) = match kind.as_str() {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("kci.db").display()),
            None,
        ),
        "postgres" => {
            let schema = format!("kci_backlog_{}", std::process::id());
            pg_client()
                .await
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .await
                .unwrap();
            (
                format!("{PG}?options=-csearch_path%3D{schema}"),
                Some(schema),
            )
        }
        other => panic!("--store sqlite|postgres, not {other}"),
    };
    fill(&url, n).await;
    let bytes = match &schema {
        Some(s) => pg_schema_bytes(s).await,
        None => dir_bytes(dir.path()),
    };
    println!(
        "disk   : {:.0} MiB, {:.0} bytes per pending notice (event, notification, decision, indexes{})",
        bytes as f64 / 1048576.0,
        bytes as f64 / n as f64,
        if schema.is_some() {
            "; WAL not counted"
        } else {
            "; database and WAL files"
        }
    );

    // A restart, as a new process on the same store.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--notices", &n.to_string(), "--restart", &url])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if let Some(s) = schema {
        pg_client()
            .await
            .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
            .await
            .unwrap();
    }
}

/// N events of one account, each planning one notice deferred over the
/// coming year, ingested `CHUNK` at a time; prints the rate of each tenth.
async fn fill(url: &str, n: usize) {
    let config = std::sync::Arc::new(
        Config::parse("[types.\"line.down\"]\nhold = \"3m\"\n", "bench").unwrap(),
    );
    let planner = kci::ingest::planner(config);
    let store = kci::store::open(url).await.unwrap();
    store
        .put_account(&Account {
            id: "A1".into(),
            name: "Backlog".into(),
            timezone: None,
            security_level: SecurityLevel::Standard,
            paranoid: false,
            defaults: Preferences::default(),
            prefixes: Vec::new(),
            postal_address: None,
        })
        .await
        .unwrap();
    store
        .put_contact(
            "A1",
            &Contact {
                id: "c".into(),
                name: "C".into(),
                timezone: None,
                prefs: Default::default(),
            },
        )
        .await
        .unwrap();
    let dest = Destination {
        id: "d1".into(),
        contact: "c".into(),
        uri: "mailto:backlog@example.com".parse().unwrap(),
        prefs: Preferences::default(),
        verified: true,
        unhealthy_since: None,
    };
    store
        .add_destination("A1", &dest, None, None)
        .await
        .unwrap();
    let now = Utc::now();
    let t = Instant::now();
    let tenth = (n / 10 / CHUNK).max(1) * CHUNK;
    let (mut lap, mut reported) = (Instant::now(), 0);
    for start in (0..n).step_by(CHUNK) {
        let events: Vec<Event> = (start..(start + CHUNK).min(n))
            .map(|i| Event {
                id: format!("e{i}"),
                type_name: "line.down".into(),
                account: "A1".into(),
                service: Some(format!("L{}", i % 5000)),
                contact: None,
                key: format!("L{}", i % 5000),
                priority: Priority::Normal,
                category: "line".into(),
                occurred_at: now,
                // Deferred: due over the coming year, the first a day
                // from now (nothing comes due while a long fill runs).
                not_before: Some(now + Duration::minutes(1440 + (i as i64 % 500_000))),
                expires_at: None,
                received_at: now,
                data: Default::default(),
                short: Some("Your line went down.".into()),
                subject: None,
                body: None,
            })
            .collect();
        store.ingest(events, planner.clone()).await.unwrap();
        let done = (start + CHUNK).min(n);
        if done.is_multiple_of(tenth) || done == n {
            let chunk = done - reported;
            reported = done;
            println!(
                "filling: {done:>10} pending, {:>7.0} events/s over the last {chunk}",
                chunk as f64 / lap.elapsed().as_secs_f64()
            );
            lap = Instant::now();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "filled : {n} pending notices in {secs:.1}s ({:.0} events/s through the store's ingest, {CHUNK} a call)",
        n as f64 / secs
    );
}

async fn restart(url: &str, n: usize) {
    let rss_start = rss_kib();
    let t = Instant::now();
    let store = kci::store::open(url).await.unwrap();
    let next = store.next_due(None).await.unwrap();
    let claimed = store
        .claim_due(Utc::now(), Utc::now() + Duration::minutes(2), 128)
        .await
        .unwrap();
    let ready = t.elapsed();
    println!(
        "restart: a new process is ready to schedule in {:.1} ms (open, migrate, next due = {}, claim of nothing due = {} rows)",
        ready.as_secs_f64() * 1000.0,
        next.map(kci::model::fmt_time).unwrap_or_default(),
        claimed.len()
    );
    let t = Instant::now();
    for _ in 0..100 {
        store.next_due(None).await.unwrap();
    }
    println!(
        "next_due: {:.0} µs per call with {n} pending",
        t.elapsed().as_secs_f64() * 1e6 / 100.0
    );
    let t = Instant::now();
    for _ in 0..100 {
        store
            .claim_due(Utc::now(), Utc::now() + Duration::minutes(2), 128)
            .await
            .unwrap();
    }
    println!(
        "claim  : {:.0} µs per claim that finds nothing due, with {n} pending",
        t.elapsed().as_secs_f64() * 1e6 / 100.0
    );
    let t = Instant::now();
    let counts = store.count_by_state().await.unwrap();
    println!(
        "memory : RSS {} MiB before opening, {} MiB with {n} pending and a full count done ({:?}, {:.1} s); the backlog lives in the store",
        rss_start / 1024,
        rss_kib() / 1024,
        counts,
        t.elapsed().as_secs_f64()
    );
}
