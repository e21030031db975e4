//! Delivery latency, open loop: from the moment an event is due to be
//! posted until the provider has the notice, at a constant arrival rate
//! (half of the peak found first), with a release `kci serve` on SQLite.
//!
//!     cargo bench --bench latency -- [--channel webhook|email]
//!         [--seconds 20] [--rate N] [--peak-events 4000] [--pin]
//!         [--pipelining]
//!
//! `--pin` (email): the SMTP server on the second core and everything else
//! (this bench, hence kci) on the first, as if the server had a host of its
//! own; without it, the three share both cores. `--pipelining` (email):
//! the server offers PIPELINING (RFC 2920), as Postfix, Exim and the large
//! relays do, so kci (and this bench's own client) send a mail's `MAIL`,
//! `RCPT` and `DATA` together.
//!
//! 1. peak: `--peak-events` events due now, posted by 32 clients as fast
//!    as they are answered; the rate at which the last notice arrives at
//!    the provider is the peak (end to end: accept, plan, render, send,
//!    record).
//! 2. open loop: events at `--rate` per second (default: half the peak)
//!    for `--seconds`. Each request is sent at its planned time whether or
//!    not earlier ones were answered, and latency counts from that planned
//!    time, so a stall shows in the figures instead of slowing the load
//!    (no coordinated omission). Reported: p50/p90/p99/max of POST → 202
//!    and of POST → the provider receiving the notice; notices that never
//!    arrived; kci's resident memory, sampled every second; and where the
//!    slow ones (over 25 ms) were: runs of them by when they were planned,
//!    so a tail of a few stalls that hold up everything can be told from
//!    one spread over the whole run, and set beside what else happened then.
//!    For email, also how many SMTP sessions kci opened during the loop
//!    (each a connection and a greeting more for its mail).
//! 3. email only: the SMTP server alone, open loop at the same rate over as
//!    many connections as kci's delivery `concurrency` (32), mails of about
//!    the same size, kci idle: what the server and the machine take on their
//!    own, the floor under POST → provider.
//!
//! The provider is, for `webhook`, a receiver in this process (axum),
//! and for `email`, a real SMTP server (Debian's python3-aiosmtpd) whose
//! handler notes when each message arrived. Times on both sides are the
//! system clock of this one machine.

mod support;

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

struct Args {
    channel: String,
    seconds: u64,
    rate: Option<f64>,
    peak_events: usize,
    pin: bool,
    pipelining: bool,
}

fn args() -> Args {
    let mut a = Args {
        channel: "webhook".into(),
        seconds: 20,
        rate: None,
        peak_events: 4000,
        pin: false,
        pipelining: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--channel" => a.channel = value(),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--rate" => a.rate = Some(value().parse().expect("--rate N")),
            "--peak-events" => a.peak_events = value().parse().expect("--peak-events N"),
            "--pin" => a.pin = true,
            "--pipelining" => a.pipelining = true,
            _ => {} // cargo bench passes --bench
        }
    }
    assert!(
        a.channel == "webhook" || a.channel == "email",
        "--channel webhook|email"
    );
    assert!(
        !a.pin || a.channel == "email",
        "--pin is for email (the webhook receiver is in this process)"
    );
    assert!(
        !a.pipelining || a.channel == "email",
        "--pipelining is for email"
    );
    a
}

/// kci's delivery `concurrency` (its default): how many connections the
/// SMTP server alone is given.
const CONCURRENCY: usize = 32;

/// Microseconds since the Unix epoch, now.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// When each event's notice reached the provider (µs since the epoch).
type Arrivals = Arc<Mutex<HashMap<String, u64>>>;

/// A webhook receiver noting when each event's notice arrived.
async fn webhook_receiver(arrivals: Arrivals) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let arrivals = arrivals.clone();
            async move {
                let at = now_us();
                // The envelope carries the event whole; its id is ours.
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(event) = v["data"]["event"]["id"].as_str()
                {
                    arrivals.lock().unwrap().insert(event.to_string(), at);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// aiosmtpd with a handler that prints, per message, the time it arrived
/// and its subject (which carries the event id), and the time of each
/// session's first `EHLO` (a connection opened: kci's, or this bench's own
/// when it measures the server alone). With `--pipelining` its `EHLO`
/// offers PIPELINING.
const SMTP_HANDLER: &str = r#"
import sys, time, asyncio
from email.parser import BytesHeaderParser
from aiosmtpd.controller import Controller
# aiosmtpd reads a session's commands one line at a time, in order, so a
# group of them in one packet is answered as RFC 2920 asks; it just does
# not say so. `1`: it says so.
PIPELINING = sys.argv[2] == "1"
class Note:
    async def handle_DATA(self, server, session, envelope):
        at = int(time.time() * 1e6)
        subject = BytesHeaderParser().parsebytes(envelope.content).get("Subject", "")
        sys.stdout.write(f"{at} {subject}\n")
        sys.stdout.flush()
        return "250 OK"
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # A session's first EHLO (kci asks again after it, for PIPELINING).
        if not getattr(session, "noted", False):
            session.noted = True
            sys.stdout.write(f"{int(time.time() * 1e6)} EHLO\n")
            sys.stdout.flush()
        if PIPELINING:
            responses.insert(-1, "250-PIPELINING")
        return responses
# A pipe of 1 MiB (Linux's default ceiling) to the bench's reader: a
# reader behind by a few thousand lines must not block this server.
try:
    import fcntl
    fcntl.fcntl(sys.stdout.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
except OSError:
    pass
c = Controller(Note(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
sys.stdout.write("ready\n"); sys.stdout.flush()
try:
    while True:
        time.sleep(3600)
except KeyboardInterrupt:
    pass
"#;

/// When the SMTP server greeted a session (µs since the epoch).
type Greetings = Arc<Mutex<Vec<u64>>>;

/// Starts the SMTP server on `port`; its arrivals are read into
/// `arrivals` and its sessions' greetings into `greeted` by a thread.
fn smtp_receiver(
    port: u16,
    arrivals: Arrivals,
    greeted: Greetings,
    pin: bool,
    pipelining: bool,
) -> Killer {
    let mut command = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "/usr/bin/python3"]);
        c
    } else {
        Command::new("/usr/bin/python3")
    };
    let mut child = command
        .args(["-c", SMTP_HANDLER, &port.to_string()])
        .arg(if pipelining { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (Debian python3-aiosmtpd)");
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let Some((at, subject)) = line.split_once(' ') else {
                continue;
            };
            if let ("EHLO", Ok(at)) = (subject, at.parse::<u64>()) {
                greeted.lock().unwrap().push(at);
                continue;
            }
            // "Line down (lat-123)"
            let (Ok(at), Some(id)) = (
                at.parse::<u64>(),
                subject
                    .rsplit_once('(')
                    .and_then(|(_, rest)| rest.strip_suffix(')')),
            ) else {
                continue;
            };
            arrivals.lock().unwrap().insert(id.to_string(), at);
        }
    });
    wait_port(port);
    Killer(child)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn summary(name: &str, mut us: Vec<u64>) -> String {
    us.sort_unstable();
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        us.len(),
        percentile(&us, 0.50),
        percentile(&us, 0.90),
        percentile(&us, 0.99),
        us.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
    )
}

/// Where the slow ones were: runs of events slower than `over_ms`, each
/// run ending where the next slow one was planned 100 ms or more later,
/// with when its first one was planned (seconds into the open loop), how
/// many it held and the slowest; at most ten runs, the slowest first. A
/// tail from stalls that hold up everything shows as a few dense runs; a
/// tail spread over the whole run, as many thin ones.
fn stalls(name: &str, mut samples: Vec<(u64, u64)>, over_ms: u64) -> String {
    samples.sort_unstable();
    // (first planned, last planned, how many, slowest)
    let mut runs: Vec<(u64, u64, usize, u64)> = Vec::new();
    for (at, us) in samples.into_iter().filter(|(_, us)| *us > over_ms * 1000) {
        match runs.last_mut() {
            Some(run) if at - run.1 < 100_000 => {
                run.1 = at;
                run.2 += 1;
                run.3 = run.3.max(us);
            }
            _ => runs.push((at, at, 1, us)),
        }
    }
    let count = runs.len();
    runs.sort_unstable_by_key(|r| std::cmp::Reverse(r.3));
    let shown: Vec<String> = runs
        .iter()
        .take(10)
        .map(|(at, _, n, max)| {
            format!(
                "{:.2}s ({n}, max {:.0} ms)",
                *at as f64 / 1e6,
                *max as f64 / 1000.0
            )
        })
        .collect();
    format!(
        "{name} over {over_ms} ms: {count} runs; {}",
        shown.join(", ")
    )
}

/// Each event about a line of its own: notices of one key go out in turn
/// (one at a time to a destination), so one key for all would measure
/// that order, not the hub.
fn event_json(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"line.down","account":"A1","service":"L-{id}","data":{{"ticket":"{id}"}}}}"#
    )
}

/// Waits until every one of `ids` arrived, or `limit` passed; how many did.
async fn settle(arrivals: &Arrivals, ids: &[String], limit: Duration) -> usize {
    let t = Instant::now();
    loop {
        let got = {
            let a = arrivals.lock().unwrap();
            ids.iter().filter(|id| a.contains_key(*id)).count()
        };
        if got == ids.len() || t.elapsed() > limit {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    if args.pin {
        // Every thread of this process, and so kci, started later.
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("taskset (util-linux)");
        assert!(pinned.success(), "taskset -a -p -c 0 failed");
    }
    let dir = tempfile::tempdir().unwrap();
    let arrivals: Arrivals = Default::default();
    let greeted: Greetings = Default::default();
    let (destination, channel_toml, _smtp, smtp_port) = if args.channel == "webhook" {
        let url = webhook_receiver(arrivals.clone()).await;
        (
            url,
            "[channels.webhook]\nallow_private = true\n".to_string(),
            None,
            None,
        )
    } else {
        let port = free_port();
        let smtp = smtp_receiver(
            port,
            arrivals.clone(),
            greeted.clone(),
            args.pin,
            args.pipelining,
        );
        (
            "mailto:bench@example.com".to_string(),
            format!("[email]\nsmtp = \"smtp://127.0.0.1:{port}?tls=none\"\n"),
            Some(smtp),
            Some(port),
        )
    };
    let port = free_port();
    let config = dir.path().join("kci.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[store]
url = "sqlite://{db}"
{channel_toml}
[types."line.down"]
short = "Line down ({{{{ data.ticket }}}})"
subject = "Line down ({{{{ data.ticket }}}})"
body = "Your line went down. Reference {{{{ data.ticket }}}}."
"#,
            db = dir.path().join("kci.db").display(),
        ),
    )
    .unwrap();
    // KCI_BIN: another build of kci to measure (an A/B against this one).
    let kci_bin =
        std::env::var("KCI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kci").to_string());
    let (kci, token, base) = start(&kci_bin, &config, port);
    let pid = kci.0.id();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    for (method, path, body) in [
        ("PUT", "/v1/accounts/A1", r#"{"name":"Bench"}"#.to_string()),
        ("PUT", "/v1/accounts/A1/contacts/c", "{}".to_string()),
        (
            "POST",
            "/v1/accounts/A1/contacts/c/destinations",
            serde_json::json!({"uri": destination, "verified": true}).to_string(),
        ),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(&token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let post = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        move |id: String| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(event_json(&id))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        }
    };
    println!(
        "# kci latency benchmark: channel={} store=sqlite cores={}{}",
        args.channel,
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0),
        if args.pin {
            " (pinned: the SMTP server on core 1, the rest on core 0)"
        } else {
            ""
        }
    );

    // 1. Peak, end to end, closed loop.
    let ids: Vec<String> = (0..args.peak_events).map(|i| format!("peak-{i}")).collect();
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (ids, next, post) = (ids.clone(), next.clone(), post.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                post(id.clone()).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let got = settle(&arrivals, &ids, Duration::from_secs(120)).await;
    if got != ids.len() {
        let states = metrics_text(&http, &base, &token).await;
        let states: Vec<&str> = states
            .lines()
            .filter(|l| l.starts_with("kci_notifications{"))
            .collect();
        panic!("peak: {got} of {} arrived; kci: {states:?}", ids.len());
    }
    let peak = ids.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "peak    : {} events posted and delivered in {:.2}s = {peak:.0}/s end to end",
        ids.len(),
        t.elapsed().as_secs_f64()
    );

    // 2. Open loop at a constant rate.
    let rate = args.rate.unwrap_or(peak / 2.0);
    let total = (rate * args.seconds as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    // (planned, µs into the open loop; took, µs)
    let answered: Arc<Mutex<Vec<(u64, u64)>>> = Default::default();
    let mut planned: HashMap<String, u64> = HashMap::with_capacity(total);
    let rss_samples: Arc<Mutex<Vec<u64>>> = Default::default();
    let sampling = {
        let rss = rss_samples.clone();
        tokio::spawn(async move {
            loop {
                rss.lock().unwrap().push(rss_kib(pid));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let writes_before = metrics_text(&http, &base, &token).await;
    let start = Instant::now();
    let start_us = now_us();
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let id = format!("open-{i}");
        let at = start_us + (interval * i as u32).as_micros() as u64;
        planned.insert(id.clone(), at);
        let (post, answered) = (post.clone(), answered.clone());
        sends.push(tokio::spawn(async move {
            post(id).await;
            let took = now_us().saturating_sub(at);
            answered.lock().unwrap().push((at - start_us, took));
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let ids: Vec<String> = planned.keys().cloned().collect();
    let got = settle(&arrivals, &ids, Duration::from_secs(60)).await;
    let settled_us = now_us();
    sampling.abort();
    let writes_after = metrics_text(&http, &base, &token).await;
    let delivered: Vec<(u64, u64)> = {
        let a = arrivals.lock().unwrap();
        planned
            .iter()
            .filter_map(|(id, at)| a.get(id).map(|t| (at - start_us, t.saturating_sub(*at))))
            .collect()
    };
    let answered = answered.lock().unwrap().clone();
    let rss = rss_samples.lock().unwrap().clone();
    // The wall-clock start, to line a trace up with the slow runs below:
    // `perf record -k monotonic` gives CLOCK_MONOTONIC times, to which add
    // the wall clock less the monotonic one (`python3 -c 'import time;
    // print(time.time() - time.monotonic())'`).
    println!(
        "open    : {total} events at {rate:.0}/s for {}s, from {:.3} s since the epoch; {} of them never arrived",
        args.seconds,
        start_us as f64 / 1e6,
        total - got
    );
    if args.channel == "email" {
        // A session opened under load costs its notice a connection and
        // a greeting more: a burst of them would show as a slow run.
        let greeted = greeted.lock().unwrap();
        let during = greeted
            .iter()
            .filter(|at| (start_us..=settled_us).contains(at))
            .count();
        println!(
            "smtp    : {during} SMTP sessions opened by kci during the open loop, {} before it",
            greeted.len() - during
        );
    }
    println!();
    println!(
        "| {} at {rate:.0}/s (half of peak {peak:.0}/s) | n | p50 ms | p90 ms | p99 ms | max ms |",
        args.channel
    );
    println!("|---|---|---|---|---|---|");
    let took = |v: &[(u64, u64)]| v.iter().map(|(_, us)| *us).collect::<Vec<_>>();
    println!("{}", summary("POST → 202", took(&answered)));
    println!("{}", summary("POST → provider has it", took(&delivered)));
    println!();
    println!("{}", stalls("POST → 202", answered, 25));
    println!("{}", stalls("POST → provider has it", delivered, 25));
    println!();
    // What the store added (`kci_store_write_seconds`, from a write asked
    // for to its answer): a stall of the writer or the disk shows here,
    // one elsewhere (the CPU, the network, the receiver) does not.
    println!(
        "store   : {}; {}",
        store_writes(&writes_before, &writes_after, "durable"),
        store_writes(&writes_before, &writes_after, "relaxed")
    );
    // The provider's part (`kci_delivery_seconds`, from each request's
    // start to the provider's answer): what is left of POST → provider
    // beyond it and the 202 is the wait for a claim and a slot.
    println!(
        "deliver : {}",
        observed(
            &writes_before,
            &writes_after,
            "kci_delivery_seconds",
            &format!("channel=\"{}\"", args.channel),
            "attempts at the provider"
        )
    );
    // The SQLite writer's folds of its log, which every write queued
    // meanwhile waits for.
    println!(
        "folds   : {}",
        observed(
            &writes_before,
            &writes_after,
            "kci_store_fold_seconds",
            "",
            "folds"
        )
    );
    println!(
        "kci RSS (MiB): first {:.1}, last {:.1}, max {:.1} ({} samples, one a second)",
        rss.first().copied().unwrap_or(0) as f64 / 1024.0,
        rss.last().copied().unwrap_or(0) as f64 / 1024.0,
        rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        rss.len()
    );

    // 3. The SMTP server alone: the same rate, the same number of
    // connections as kci's delivery `concurrency`, mails of about the
    // same size, no kci in between (kci idles meanwhile). What the server and
    // the machine take on their own is the floor under POST → provider.
    if let Some(port) = smtp_port {
        let alone = smtp_alone(port, rate, args.seconds, CONCURRENCY, &arrivals).await;
        println!();
        println!(
            "| the SMTP server alone at {rate:.0}/s, {CONCURRENCY} connections | n | p50 ms | p90 ms | p99 ms | max ms |"
        );
        println!("|---|---|---|---|---|---|");
        println!("{}", summary("sent → server has it", took(&alone)));
        println!("{}", stalls("sent → server has it", alone, 25));
    }
}

/// Mails at `rate` a second for `seconds` straight to the SMTP server on
/// `port`, each handed at its planned time to the first of `connections`
/// idle connections (as kci's pool does), open loop; for each, when it was
/// planned (µs into the loop) and how long until the server had it.
async fn smtp_alone(
    port: u16,
    rate: f64,
    seconds: u64,
    connections: usize,
    arrivals: &Arrivals,
) -> Vec<(u64, u64)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut smtp = SmtpSession::open(port).await;
            loop {
                let Some(id) = rx.lock().await.recv().await else {
                    break;
                };
                let body = format!(
                    "From: Bench ISP <kci@isp.example>\r\nTo: bench@example.com\r\n\
                     Subject: Line down ({id})\r\nMessage-ID: <{id}@isp.example>\r\n\
                     MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n.\r\n",
                    format!("Your line went down. Reference {id}.\r\n").repeat(12)
                );
                smtp.send(body.as_bytes()).await;
            }
            smtp.quit().await;
        }));
    }
    let total = (rate * seconds as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut planned: Vec<(String, u64)> = Vec::with_capacity(total);
    let start = Instant::now();
    let start_us = now_us();
    for i in 0..total {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let id = format!("alone-{i}");
        planned.push((
            id.clone(),
            start_us + (interval * i as u32).as_micros() as u64,
        ));
        tx.send(id).unwrap();
    }
    drop(tx);
    for t in tasks {
        t.await.unwrap();
    }
    let ids: Vec<String> = planned.iter().map(|(id, _)| id.clone()).collect();
    settle(arrivals, &ids, Duration::from_secs(10)).await;
    let a = arrivals.lock().unwrap();
    planned
        .iter()
        .filter_map(|(id, at)| a.get(id).map(|t| (at - start_us, t.saturating_sub(*at))))
        .collect()
}
