//! Delivery under load across six channels, two misbehaving: a release
//! `kci serve` (SQLite) delivering to local stand-ins for a webhook
//! receiver, ntfy, Signal, Pushover, Telegram and Matrix
//! (`tests/e2e/load_scenario.rs`, shared with the e2e test).
//!
//!     cargo bench --bench channels -- [--notifications N]
//!
//! Two runs, each with a fresh kci and store: a baseline with every
//! provider healthy, then one where Telegram answers 429 with
//! `Retry-After: 2` for its first 20 seconds and Matrix stores every tenth
//! request but answers it only after 3 s (kci gives up after 1 s and
//! retries with the same transaction id). Each run posts N events (one
//! notice each, round the six channels), waits until none is pending, and
//! checks that nothing was lost (every event's notification `sent`, every
//! notice at its provider), nothing reached a recipient twice, and how the
//! healthy providers fared against the baseline.

#[allow(dead_code)] // the e2e test uses parts the benchmark does not
#[path = "../tests/e2e/load_scenario.rs"]
mod load_scenario;

mod support;

use load_scenario::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn notifications() -> u64 {
    let mut n = 10_000;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--notifications" {
            n = it
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--notifications N");
        }
    }
    n
}

const MATRIX_TIMEOUT: &str = "1s";
const DELIVERY: &str = r#"[delivery]
max_attempts = 12
backoff = "500ms"
backoff_max = "5s"
"#;

struct Run {
    name: &'static str,
    reports: Vec<ChannelReport>,
    /// Notifications by final state.
    states: std::collections::HashMap<String, u64>,
    /// Events whose notification is not `sent`, or not exactly one.
    unsent: usize,
    attempts: u64,
    first_post: Instant,
    settled: Duration,
}

async fn run(name: &'static str, n: u64, trouble: Option<Trouble>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let providers = Providers::start(trouble).await;
    let port = free_port();
    let config = dir.path().join("kci.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{db}\"\n\
             [email]\noutbox = \"{outbox}\"\n{DELIVERY}{channels}",
            db = dir.path().join("kci.db").display(),
            outbox = dir.path().join("outbox").display(),
            channels = providers.channels_toml(MATRIX_TIMEOUT),
        ),
    )
    .unwrap();
    let kci_bin = env!("CARGO_BIN_EXE_kci");
    let token = admin_token(kci_bin, &config);
    let _kci = Killer(
        Command::new(kci_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("KCI_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    set_up(&http, &base, &token, &providers).await;

    let first_post = Instant::now();
    let posted = post(&http, &base, &token, name, n, 500).await;
    let states = settle(&http, &base, &token, n, Duration::from_secs(900)).await;
    let settled = first_post.elapsed();
    let fates = fates(&http, &base, &token, name, n).await;
    let unsent = fates
        .values()
        .filter(|f| f.len() != 1 || f[0].0 != "sent")
        .count();
    let attempts = fates.values().flatten().map(|(_, a, _)| a).sum();
    Run {
        name,
        reports: providers.report(&posted),
        states,
        unsent,
        attempts,
        first_post,
        settled,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn print(run: &Run, n: u64) {
    println!(
        "\n## {}: {n} notifications settled in {:.1}s, {} attempts; states {:?}; events not sent exactly once: {}",
        run.name,
        run.settled.as_secs_f64(),
        run.attempts,
        run.states,
        run.unsent
    );
    println!(
        "| channel | at provider (distinct / expected) | requests delivered | 429s | held past timeout | absorbed by idempotency key | reached recipient twice | throughput (notices/s) | p50 post→arrival | p99 post→arrival |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (idx, r) in run.reports.iter().enumerate() {
        let expected = (0..n).filter(|i| i % 6 == idx as u64).count();
        let span = r.last_arrival.saturating_duration_since(run.first_post);
        println!(
            "| {} | {} / {expected} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            r.channel,
            r.distinct,
            r.raw,
            r.limited,
            r.held,
            r.absorbed,
            r.twice,
            r.distinct as f64 / span.as_secs_f64().max(1e-3),
            ms(r.percentile(0.5)),
            ms(r.percentile(0.99)),
        );
    }
}

#[tokio::main]
async fn main() {
    let n = notifications();
    println!(
        "# kci channels benchmark: {n} notifications, six channels, cores={}",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    let baseline = run("baseline", n, None).await;
    print(&baseline, n);
    let troubled = run(
        "trouble",
        n,
        Some(Trouble {
            retry_after: Duration::from_secs(2),
            limited_for: Duration::from_secs(20),
            hold_every: 10,
            hold: Duration::from_secs(3),
        }),
    )
    .await;
    print(&troubled, n);

    println!("\n## healthy providers, trouble vs baseline");
    println!("| channel | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    for (b, t) in baseline.reports.iter().zip(&troubled.reports).take(4) {
        let tput = |r: &ChannelReport, run: &Run| {
            r.distinct as f64
                / r.last_arrival
                    .saturating_duration_since(run.first_post)
                    .as_secs_f64()
                    .max(1e-3)
        };
        println!(
            "| {} | {:.0} → {:.0} /s | {} → {} | {} → {} |",
            b.channel,
            tput(b, &baseline),
            tput(t, &troubled),
            ms(b.percentile(0.5)),
            ms(t.percentile(0.5)),
            ms(b.percentile(0.99)),
            ms(t.percentile(0.99)),
        );
    }
    let lost: u64 = troubled
        .reports
        .iter()
        .enumerate()
        .map(|(idx, r)| (0..n).filter(|i| i % 6 == idx as u64).count() as u64 - r.distinct)
        .sum();
    let twice: u64 = troubled.reports.iter().map(|r| r.twice).sum();
    println!(
        "\nlost: {lost} (plus {} events not sent exactly once); reached a recipient twice: {twice}",
        troubled.unsent
    );
    assert_eq!(
        (lost, twice, troubled.unsent, baseline.unsent),
        (0, 0, 0, 0)
    );
}
