//! The scheduler holding a large backlog: N notifications deferred far
//! ahead (SQLite). kci keeps pending work in the store, not in memory, so
//! this measures what that costs: disk per notice, process memory with the
//! backlog in place, and how long a restarted node takes until it can
//! schedule again (open + migrate + the first "what is due?" queries).
//!
//!     cargo bench --bench backlog -- [--notices 1000000]

use chrono::{Duration, Utc};
use kci::config::Config;
use kci::model::Preferences;
use kci::model::{Account, Contact, Destination, Event, Priority, SecurityLevel};
use kci::store::prelude::*;
use kci::store::sqlite::SqliteStore;
use std::time::Instant;

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
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[tokio::main]
async fn main() {
    let mut n = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--notices" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--notices N")
            }
            "--restart" => return restart(&args.next().expect("--restart DB"), n).await,
            _ => {}
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kci.db");
    let config = std::sync::Arc::new(
        Config::parse("[types.\"line.down\"]\nhold = \"3m\"\n", "bench").unwrap(),
    );
    let planner = kci::ingest::planner(config);
    {
        let store = SqliteStore::open(path.to_str().unwrap()).unwrap();
        store.migrate().await.unwrap();
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
        for start in (0..n).step_by(1000) {
            let events: Vec<Event> = (start..(start + 1000).min(n))
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
                    // Deferred: due over the coming year.
                    not_before: Some(now + Duration::minutes(10 + (i as i64 % 500_000))),
                    expires_at: None,
                    received_at: now,
                    data: Default::default(),
                    short: Some("Your line went down.".into()),
                    subject: None,
                    body: None,
                })
                .collect();
            store.ingest(events, planner.clone()).await.unwrap();
        }
        println!(
            "filled : {n} pending notices in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    let bytes = dir_bytes(dir.path());
    println!(
        "disk   : {:.0} MiB, {:.0} bytes per pending notice (event, notification, decision, indexes)",
        bytes as f64 / 1048576.0,
        bytes as f64 / n as f64
    );

    // A restart, as a new process on the same file.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--notices", &n.to_string(), "--restart"])
        .arg(&path)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

async fn restart(path: &str, n: usize) {
    let rss_start = rss_kib();
    let t = Instant::now();
    let store = SqliteStore::open(path).unwrap();
    store.migrate().await.unwrap();
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
    let counts = store.count_by_state().await.unwrap();
    println!(
        "memory : RSS {} MiB before opening, {} MiB with {n} pending and a full count done ({:?}); the backlog lives on disk, the page cache is capped at 32 MiB per connection",
        rss_start / 1024,
        rss_kib() / 1024,
        counts
    );
}
