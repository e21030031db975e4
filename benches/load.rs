//! Load benchmark: a release `kci serve` on SQLite or PostgreSQL, driven over
//! HTTP on loopback, delivering to a real SMTP server that discards what it
//! takes. Each figure is printed beside the raw ceiling of the same store on
//! the same machine: a plain batched insert of rows of the same size.
//!
//!     cargo bench --bench load -- [--store sqlite|postgres] [--events N] [--nodes N]
//!         [--smtp aiosmtpd|postfix]
//!
//! `--smtp`: the SMTP server delivered to. `aiosmtpd` (the default) is
//! Python's, one process; `postfix` is a private Postfix instance
//! (`scripts/postfix-sink`, root) that queues each mail on disk and hands
//! it to its `discard` transport, as a relay would.
//!
//! `--nodes N` (PostgreSQL): N `kci serve` nodes on the one database, all
//! claiming and delivering in phase 3; requests go to the first. The CPU
//! figures are those of all nodes together.
//!
//! Phases, each measured alone:
//! 1. single: events posted one per request by 32 concurrent clients;
//! 2. batch: NDJSON batches of 500 events, 4 concurrent clients;
//! 3. deliver: events due now, timed until the SMTP server has accepted
//!    every one (`kci_deliveries_total{outcome="sent"}`, counted live by
//!    each node as it hands a mail over; summed over the nodes), then,
//!    untimed, until the store counts every notification `sent`;
//! 4. smtp: the SMTP server's own ceiling, with as many connections as
//!    kci's delivery `concurrency`, no kci in between (the delivery figure
//!    is printed as a share of it);
//! 5. raw: batched inserts straight into the store, no kci in between;
//! 6. pair: reconnects posted one per request by 32 clients, each of a
//!    type that cancels another (`ont.up` cancels `ont.down`), so each
//!    searches its key for a drop to pair while the notices of phases 1
//!    and 2 are held for later: the search must not grow with them.
//!
//! Both ceilings are measured twice, before the phase they bound and at
//! the end, and a share is of the higher: on a shared machine a ceiling
//! can move by half between two minutes.
//!
//! Ingest phases post events with `not_before` far ahead, so delivery work
//! does not mix into the ingest figures.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

struct Args {
    store: String,
    events: usize,
    nodes: usize,
    smtp: String,
}

fn args() -> Args {
    let mut a = Args {
        store: "sqlite".into(),
        events: 20_000,
        nodes: 1,
        smtp: "aiosmtpd".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--store" => a.store = it.next().expect("--store sqlite|postgres"),
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--nodes" => a.nodes = it.next().and_then(|v| v.parse().ok()).expect("--nodes N"),
            "--smtp" => {
                a.smtp = it
                    .next()
                    .filter(|v| v == "aiosmtpd" || v == "postfix")
                    .expect("--smtp aiosmtpd|postfix")
            }
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The SMTP server the bench delivers to, stopped when dropped.
enum SmtpSink {
    Aiosmtpd(#[allow(dead_code)] Killer),
    Postfix(std::path::PathBuf),
}

impl SmtpSink {
    fn start(kind: &str, port: u16) -> SmtpSink {
        match kind {
            "postfix" => {
                // Not in the bench's private temporary directory: Postfix's
                // own processes, not root, must reach its queue.
                let at =
                    std::env::temp_dir().join(format!("kci-load-postfix-{}", std::process::id()));
                let ok = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postfix-sink"))
                    .args(["start", &at.display().to_string(), &port.to_string()])
                    .status()
                    .expect("scripts/postfix-sink");
                assert!(ok.success(), "scripts/postfix-sink start failed");
                SmtpSink::Postfix(at)
            }
            _ => {
                let child = Command::new("/usr/bin/python3")
                    .args([
                        "-m",
                        "aiosmtpd",
                        "-n",
                        "-l",
                        &format!("127.0.0.1:{port}"),
                        "-c",
                        "aiosmtpd.handlers.Sink",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("python3-aiosmtpd");
                wait_port(port);
                SmtpSink::Aiosmtpd(Killer(child))
            }
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let SmtpSink::Postfix(at) = self {
            let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postfix-sink"))
                .args(["stop", &at.display().to_string()])
                .status();
            let _ = std::fs::remove_dir_all(at);
        }
    }
}

/// An event body of the size used throughout (about 330 bytes).
fn event_json(i: usize, run: &str, later: bool) -> String {
    let nb = if later {
        r#","not_before":"2099-01-01T00:00:00Z""#
    } else {
        ""
    };
    format!(
        r#"{{"id":"{run}-{i}","type":"line.down","account":"A1","service":"L{s}","data":{{"ticket":"T-{i:08}","postcode":"SW1A 1AA","note":"benchmark event with a realistic amount of template data"}}{nb}}}"#,
        s = i % 1000
    )
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let _smtp = SmtpSink::start(&args.smtp, smtp_port);
    println!("smtp    : {} on 127.0.0.1:{smtp_port}", args.smtp);

    let (store_url, schema) = match args.store.as_str() {
        "sqlite" => (
            format!("sqlite://{}", dir.path().join("kci.db").display()),
            None,
        ),
        "postgres" => {
            let schema = format!("kci_bench_{}", std::process::id());
            let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
                .await
                .expect("postgres");
            tokio::spawn(conn);
            c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
            (
                format!("{PG}?options=-csearch_path%3D{schema}"),
                Some(schema),
            )
        }
        other => panic!("unknown store {other}"),
    };
    // The key codes are hashed with (PostgreSQL needs one in the config).
    let code_key = "5a".repeat(32);
    assert!(
        args.nodes >= 1 && (args.nodes == 1 || args.store == "postgres"),
        "--nodes N: 1, or more on PostgreSQL (SQLite is one process)"
    );
    let port = free_port();
    let config = dir.path().join("kci.toml");
    let config_text = |port: u16| {
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[store]
url = "{store_url}"
code_key = "{code_key}"
[email]
from = "Bench ISP <kci@isp.example>"
smtp = "smtp://127.0.0.1:{smtp_port}?tls=none"
[types."line.down"]
short = "Your line {{{{ service }}}} went down at {{{{ occurred_at | time }}}}."
subject = "Line {{{{ service }}}} is down ({{{{ data.ticket }}}})"
body = "Dear customer,\n\nyour line {{{{ service }}}} went down at {{{{ occurred_at | time }}}}.\nReference {{{{ data.ticket }}}}."
[types."ont.down"]
short = "Your fibre terminal {{{{ service }}}} is offline."
[types."ont.up"]
cancels = ["ont.down"]
short = "Your fibre terminal {{{{ service }}}} is back."
"#
        )
    };
    std::fs::write(&config, config_text(port)).unwrap();
    // KCI_BIN: another build of kci to measure (an A/B against this one).
    let kci_bin =
        std::env::var("KCI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kci").to_string());
    let (kci, token, base) = start(&kci_bin, &config, port);
    // The other nodes, on the same database.
    let mut others = Vec::new();
    let mut bases = vec![base.clone()];
    for i in 1..args.nodes {
        let port = free_port();
        let config = dir.path().join(format!("kci-{i}.toml"));
        std::fs::write(&config, config_text(port)).unwrap();
        others.push(serve(&kci_bin, &config));
        wait_port(port);
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let kci_pids: Vec<u32> = std::iter::once(kci.0.id())
        .chain(others.iter().map(|k| k.0.id()))
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let put = |path: &str, body: &str| {
        http.request(
            if path.ends_with("destinations") {
                reqwest::Method::POST
            } else {
                reqwest::Method::PUT
            },
            format!("{base}{path}"),
        )
        .bearer_auth(&token)
        .body(body.to_string())
        .send()
    };
    put("/v1/accounts/A1", r#"{"name":"Bench"}"#).await.unwrap();
    put("/v1/accounts/A1/contacts/c", "{}").await.unwrap();
    put(
        "/v1/accounts/A1/contacts/c/destinations",
        r#"{"uri":"mailto:bench@example.com","verified":true}"#,
    )
    .await
    .unwrap();

    let n = args.events;
    println!(
        "# kci load benchmark: store={} events={n} nodes={} cores={}",
        args.store,
        args.nodes,
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );

    // 1. single
    let single_n = n / 4;
    let clients = 32;
    let cpu = Cpu::now(&kci_pids);
    let took = post_one_by_one(&http, &base, &token, clients, single_n, |i| {
        event_json(i, "s", true)
    })
    .await;
    let single = single_n as f64 / took.as_secs_f64();
    let single_cpu = cpu.per(single_n, Cpu::now(&kci_pids));
    println!(
        "single  : {single_n} events in {:.2}s = {single:.0} events/s accepted durably",
        took.as_secs_f64()
    );

    // Each ceiling is measured before the phase it bounds and at the end
    // (see the top of this file).
    let batch = 500;
    let raw_before = raw_ceiling("before", &args, &dir, schema.as_deref(), n, batch).await;

    // 2. batch
    let cpu = Cpu::now(&kci_pids);
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, base, token, next) = (http.clone(), base.clone(), token.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                if start >= n {
                    break;
                }
                let body: String = (start..(start + batch).min(n))
                    .map(|i| event_json(i, "b", true) + "\n")
                    .collect();
                let r = http
                    .post(format!("{base}/v1/events/batch"))
                    .bearer_auth(&token)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let text = r.text().await.unwrap();
                assert!(!text.contains("\"status\":4"), "{text}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batched = n as f64 / t.elapsed().as_secs_f64();
    let batch_cpu = cpu.per(n, Cpu::now(&kci_pids));
    println!(
        "batch   : {n} events in {:.2}s = {batched:.0} events/s accepted durably (batches of {batch})",
        t.elapsed().as_secs_f64()
    );

    // 3. deliver
    let deliver_n = (n / 4).max(1000);
    let ceiling_before = smtp_ceiling(smtp_port, deliver_n, 32).await;
    let body: String = (0..deliver_n)
        .map(|i| event_json(i, "d", false) + "\n")
        .collect();
    // Timed by the nodes' live counters of mails handed over: the store's
    // count by state (`kci_notifications`) is made again only once it is
    // ten times as old as it took (src/web/gauges.rs), so under load it
    // lags by up to a second, which showed as a second mode of delivery
    // about 1 s slower (BENCHMARKS.md, stop 32).
    let metric = |line: &str, name: &str, label: &str| -> f64 {
        if line.starts_with(name) && line.contains(label) {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        } else {
            0.0
        }
    };
    // Mails handed over to the SMTP server, summed over the nodes.
    let handed_over = || async {
        let mut sum = 0.0;
        for b in &bases {
            sum += metrics_text(&http, b, &token)
                .await
                .lines()
                .map(|l| metric(l, "kci_deliveries_total{", "outcome=\"sent\""))
                .sum::<f64>();
        }
        sum
    };
    // Seconds spent at the SMTP server and mails timed there, summed over
    // the nodes (`kci_delivery_seconds`, from each request's start to the
    // server's answer).
    let at_server = || async {
        let (mut secs, mut count) = (0.0, 0.0);
        for b in &bases {
            for l in metrics_text(&http, b, &token).await.lines() {
                secs += metric(l, "kci_delivery_seconds_sum{", "channel=\"email\"");
                count += metric(l, "kci_delivery_seconds_count{", "channel=\"email\"");
            }
        }
        (secs, count)
    };
    let sent_before = handed_over().await;
    let server_before = at_server().await;
    let cpu = Cpu::now(&kci_pids);
    let t = Instant::now();
    for chunk in body.lines().collect::<Vec<_>>().chunks(batch) {
        let r = http
            .post(format!("{base}/v1/events/batch"))
            .bearer_auth(&token)
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    loop {
        let handed = handed_over().await - sent_before;
        if handed as usize >= deliver_n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "delivery stalled at {handed}"
        );
        // Half the time the rest should take at the rate so far, between
        // 10 and 500 ms (100 ms before the first is out): few scrapes
        // while the end is far, and the end seen within 10 ms. Each scrape
        // of /metrics may count the store by state again (up to a tenth
        // of a reader's time, src/web/gauges.rs): scraped every 20 ms,
        // that count was 7-8% of kci's samples in this phase (stops 40
        // and 41), a load no Prometheus scraping every 15 s puts on a hub.
        let rate = handed / t.elapsed().as_secs_f64();
        let pause = if rate > 0.0 {
            (500.0 * (deliver_n as f64 - handed) / rate).clamp(10.0, 500.0)
        } else {
            100.0
        };
        tokio::time::sleep(Duration::from_secs_f64(pause / 1000.0)).await;
    }
    let took = t.elapsed();
    let delivered = deliver_n as f64 / took.as_secs_f64();
    let deliver_cpu = cpu.per(deliver_n, Cpu::now(&kci_pids));
    let server_after = at_server().await;
    // Then, untimed, until the store has every outcome recorded.
    loop {
        let sent: f64 = metrics_text(&http, &base, &token)
            .await
            .lines()
            .map(|l| metric(l, "kci_notifications{", "state=\"sent\""))
            .sum();
        if sent as usize >= deliver_n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "outcomes stalled at {sent}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "deliver : {deliver_n} mails in {:.2}s = {delivered:.0} notifications/s to SMTP (accept + plan + render + send; outcomes recorded just after)",
        took.as_secs_f64()
    );
    // How busy kci kept the server: the mean time a mail spent there, and
    // how many were there at once on average (of the 32 slots a node has).
    let (secs, count) = (
        server_after.0 - server_before.0,
        server_after.1 - server_before.1,
    );
    println!(
        "at smtp : {:.2} ms a mail from the request's start to the server's answer; {:.1} mails at the server at once on average",
        1000.0 * secs / count.max(1.0),
        secs / took.as_secs_f64()
    );

    // 4. The SMTP server's own ceiling: as many connections as kci's
    // delivery `concurrency` (32), each sending mails of the size kci's
    // were, as fast as the server answers, no kci in between.
    let ceiling_after = smtp_ceiling(smtp_port, deliver_n, 32).await;
    let ceiling = ceiling_before.max(ceiling_after);
    println!(
        "smtp    : {ceiling_before:.0} before, {ceiling_after:.0} after mails/s is the SMTP server's own ceiling (32 connections, mails of kci's size)"
    );

    // 5. raw ceiling
    let raw_after = raw_ceiling("after", &args, &dir, schema.as_deref(), n, batch).await;
    let raw = raw_before.max(raw_after);
    println!(
        "raw     : {raw_before:.0} before, {raw_after:.0} after events/s (an event row and a notification row each, batches of {batch}, same durability)"
    );

    // 6. pair: reconnects (`ont.up`, which cancels `ont.down`) while the
    // single and batch phases' notices are held for later, each for a
    // service of its own with no drop to pair: what each pairing event's
    // search costs beside a held backlog. Its types are apart from
    // `line.down`'s, so the phases above do no pairing.
    let held = single_n + n;
    let pair_n = (n / 40).max(100);
    let cpu = Cpu::now(&kci_pids);
    let took = post_one_by_one(&http, &base, &token, clients, pair_n, |i| {
        format!(
            r#"{{"id":"p-{i}","type":"ont.up","account":"A1","service":"P{i}","not_before":"2099-01-01T00:00:00Z"}}"#
        )
    })
    .await;
    let paired = pair_n as f64 / took.as_secs_f64();
    let pair_cpu = cpu.per(pair_n, Cpu::now(&kci_pids));
    println!(
        "pair    : {pair_n} reconnects in {:.2}s = {paired:.0} events/s accepted durably, each searched for its drop beside {held} notices held for later",
        took.as_secs_f64()
    );
    println!();
    println!(
        "| store | single (events/s) | batch (events/s) | raw ceiling, before / after (events/s) | batch / raw (the higher) | delivered to SMTP (notifications/s) | SMTP server ceiling, before / after (mails/s) | delivered / ceiling (the higher) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {single:.0} | {batched:.0} | {raw_before:.0} / {raw_after:.0} | {:.0}% | {delivered:.0} | {ceiling_before:.0} / {ceiling_after:.0} | {:.0}% |",
        args.store,
        100.0 * batched / raw,
        100.0 * delivered / ceiling
    );

    println!();
    println!(
        "CPU per event, µs (kci process / PostgreSQL server processes; on SQLite the store is inside kci):"
    );
    println!("| phase | kci | PostgreSQL |");
    println!("|---|---|---|");
    for (phase, (k, p)) in [
        ("single", single_cpu),
        ("batch", batch_cpu),
        ("deliver (ingest + send + record)", deliver_cpu),
        ("pair (a reconnect beside the held backlog)", pair_cpu),
    ] {
        println!("| {phase} | {k:.0} | {p:.0} |");
    }

    if let Some(schema) = schema {
        let (c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let _ = c
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
    }
}

/// `n` events posted one per request by `clients` concurrent clients, the
/// `i`th with the body `body(i)`, each answered 202; how long it took.
async fn post_one_by_one(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    clients: usize,
    n: usize,
    body: fn(usize) -> String,
) -> Duration {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, token) = (http.clone(), base.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(clients) {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body(i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t.elapsed()
}

/// The store's raw ceiling now, written to tables of its own named `when`
/// (a database file on SQLite; on PostgreSQL, tables made anew).
async fn raw_ceiling(
    when: &str,
    args: &Args,
    dir: &tempfile::TempDir,
    schema: Option<&str>,
    n: usize,
    batch: usize,
) -> f64 {
    match args.store.as_str() {
        "sqlite" => raw_sqlite(&dir.path().join(format!("raw-{when}.db")), n, batch),
        _ => raw_postgres(schema.unwrap(), n, batch).await,
    }
}

const RAW_PAYLOAD_PAD: usize = 600;

/// Durable batched inserts with rusqlite (WAL, synchronous=FULL): an event
/// row and a notification row per event, as kci writes, through the VFS
/// kci's writer uses (`kci-wal`: a commit's log frames in one write), so
/// the ceiling is what this SQLite can do written the same way.
fn raw_sqlite(path: &std::path::Path, n: usize, batch: usize) -> f64 {
    let conn = rusqlite::Connection::open_with_flags_and_vfs(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        kci::store::sqlite::log_vfs::register().unwrap(),
    )
    .unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE ev (id TEXT PRIMARY KEY, account TEXT, type TEXT, key TEXT, received_at INTEGER, n INTEGER, payload TEXT);
         CREATE TABLE nt (id TEXT PRIMARY KEY, event TEXT, account TEXT, uri TEXT, state TEXT, due_at INTEGER, payload TEXT);",
    )
    .unwrap();
    let pad = "x".repeat(RAW_PAYLOAD_PAD);
    let t = Instant::now();
    for start in (0..n).step_by(batch) {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut e = tx
                .prepare_cached("INSERT INTO ev VALUES (?1, 'A1', 'line.down', ?2, ?3, 1, ?4)")
                .unwrap();
            let mut no = tx.prepare_cached("INSERT INTO nt VALUES (?1, ?2, 'A1', 'mailto:bench@example.com', 'pending', ?3, ?4)").unwrap();
            for i in start..(start + batch).min(n) {
                let id = format!("raw-{i}");
                e.execute(rusqlite::params![
                    id,
                    format!("L{}", i % 1000),
                    i as i64,
                    pad
                ])
                .unwrap();
                no.execute(rusqlite::params![format!("n-{i}"), id, i as i64, pad])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn raw_postgres(schema: &str, n: usize, batch: usize) -> f64 {
    let (mut c, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!(
        "SET search_path = {schema};
         DROP TABLE IF EXISTS ev, nt;
         CREATE TABLE ev (id TEXT PRIMARY KEY, account TEXT, type TEXT, key TEXT, received_at BIGINT, n BIGINT, payload TEXT);
         CREATE TABLE nt (id TEXT PRIMARY KEY, event TEXT, account TEXT, uri TEXT, state TEXT, due_at BIGINT, payload TEXT);"
    ))
    .await
    .unwrap();
    let pad = "x".repeat(RAW_PAYLOAD_PAD);
    let t = Instant::now();
    for start in (0..n).step_by(batch) {
        // One multi-row INSERT per table per batch (UNNEST of arrays).
        let range = start..(start + batch).min(n);
        let ids: Vec<String> = range.clone().map(|i| format!("raw-{i}")).collect();
        let keys: Vec<String> = range.clone().map(|i| format!("L{}", i % 1000)).collect();
        let times: Vec<i64> = range.clone().map(|i| i as i64).collect();
        let nids: Vec<String> = range.clone().map(|i| format!("n-{i}")).collect();
        let pads: Vec<&str> = range.map(|_| pad.as_str()).collect();
        let tx = c.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO ev SELECT id, 'A1', 'line.down', key, t, 1, p FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) AS u(id, key, t, p)",
            &[&ids, &keys, &times, &pads],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO nt SELECT id, ev, 'A1', 'mailto:bench@example.com', 'pending', t, p FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) AS u(id, ev, t, p)",
            &[&nids, &ids, &times, &pads],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Mails/s the SMTP server on `port` takes over `connections` plain
/// connections (TCP_NODELAY, one transaction at a time each, as kci's
/// pool sends), `n` mails in all, each about as large as kci's.
async fn smtp_ceiling(port: u16, n: usize, connections: usize) -> f64 {
    let body = format!(
        "From: Bench ISP <kci@isp.example>\r\nTo: bench@example.com\r\nSubject: Line L1 is down (T-00000001)\r\n\
         Message-ID: <bench@isp.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n.\r\n",
        "Dear customer, your line L1 went down. Reference T-00000001.\r\n".repeat(12)
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, body) = (next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut smtp = SmtpSession::open(port).await;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                smtp.send(body.as_bytes()).await;
            }
            smtp.quit().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// CPU time used so far (seconds) by kci and by every PostgreSQL server
/// process on this machine, from `/proc`.
#[derive(Clone, Copy)]
struct Cpu {
    kci: f64,
    postgres: f64,
}

impl Cpu {
    fn now(kci: &[u32]) -> Cpu {
        // utime + stime, fields 14 and 15 of /proc/PID/stat, in ticks.
        fn ticks(stat: &str) -> Option<(String, f64)> {
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some((comm, t))
        }
        let hz = 100.0; // USER_HZ on Linux
        let read = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| ticks(&s))
        };
        let kci_s = kci
            .iter()
            .map(|pid| read(&pid.to_string()).map_or(0.0, |(_, t)| t / hz))
            .sum();
        let postgres = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| read(&e.file_name().to_string_lossy()))
                    .filter(|(comm, _)| comm == "postgres")
                    .map(|(_, t)| t / hz)
                    .sum()
            })
            .unwrap_or(0.0);
        Cpu {
            kci: kci_s,
            postgres,
        }
    }

    /// Microseconds of each per event, from `self` to `later`.
    fn per(self, events: usize, later: Cpu) -> (f64, f64) {
        let n = events.max(1) as f64;
        (
            (later.kci - self.kci) * 1e6 / n,
            (later.postgres - self.postgres) * 1e6 / n,
        )
    }
}
