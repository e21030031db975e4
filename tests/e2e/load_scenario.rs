//! The delivery load scenario, shared by the e2e test (`channels_load.rs`,
//! a few hundred notices) and the benchmark (`benches/channels.rs`, ten
//! thousand): local stand-ins for six providers — webhook, ntfy, Signal
//! and Pushover healthy; Telegram answering 429 with `Retry-After` for a
//! while; Matrix taking one request in `hold_every` in, storing it, and
//! answering only after kci has timed out — each counting what reached the
//! recipient, by idempotency key where the provider has one (webhook-id,
//! Matrix transaction id) and by notice otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The channels of the scenario, in the order events go round them.
pub const CHANNELS: [&str; 6] = [
    "webhook", "ntfy", "signal", "pushover", "telegram", "matrix",
];

/// How the misbehaving providers misbehave; `None` for a healthy run.
#[derive(Debug, Clone, Copy)]
pub struct Trouble {
    /// Telegram answers every request 429 with `Retry-After` this long…
    pub retry_after: Duration,
    /// …for this long after its first request.
    pub limited_for: Duration,
    /// Matrix holds every n-th request…
    pub hold_every: u64,
    /// …this long (more than kci's Matrix timeout), having stored it.
    pub hold: Duration,
}

/// One arrival at a provider.
struct Arrival {
    at: Instant,
    key: Option<String>,
}

/// What one provider saw.
#[derive(Default)]
pub struct Seen {
    /// Requests answered with a delivery (or stored before a late answer).
    raw: u64,
    /// Requests refused with 429.
    limited: u64,
    /// Requests held past kci's timeout.
    held: u64,
    /// Arrivals by notice number.
    by_notice: HashMap<u64, Vec<Arrival>>,
}

pub struct Providers {
    pub urls: HashMap<&'static str, String>,
    seen: HashMap<&'static str, Arc<Mutex<Seen>>>,
    started: Instant,
}

/// The notice number carried in the short text (`#123`).
fn notice_number(text: &str) -> Option<u64> {
    let rest = &text[text.find('#')? + 1..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl Providers {
    pub async fn start(trouble: Option<Trouble>) -> Providers {
        let started = Instant::now();
        let mut urls = HashMap::new();
        let mut seen = HashMap::new();
        for kind in CHANNELS {
            let record = Arc::new(Mutex::new(Seen::default()));
            let counter = Arc::new(AtomicU64::new(0));
            let first = Arc::new(OnceLock::new());
            let rec = record.clone();
            let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                let (rec, count, first) = (rec.clone(), counter.clone(), first.clone());
                async move { answer(kind, req, rec, count, trouble, first).await }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a provider");
            let url = format!("http://{}", listener.local_addr().expect("an address"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            urls.insert(kind, url);
            seen.insert(kind, record);
        }
        Providers {
            urls,
            seen,
            started,
        }
    }

    /// The `[channels.*]` tables pointing kci at the stand-ins, with the
    /// Matrix timeout given.
    pub fn channels_toml(&self, matrix_timeout: &str) -> String {
        let u = |k: &str| self.urls[k].clone();
        format!(
            r#"
[channels.webhook]
timeout = "10s"
# The stand-in receiver listens on loopback.
allow_private = true
[channels.ntfy]
url = "{ntfy}"
[channels.signal]
url = "{signal}"
number = "+447700900999"
[channels.pushover]
api = "{pushover}"
token = "azGDORePK8gMaC0QOYAMyEEuzJnyUi"
[channels.telegram]
api = "{telegram}"
bot_token = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
[channels.matrix]
homeserver = "{matrix}"
access_token = "syt_a2NpLWJvdA_secretsecret"
timeout = "{matrix_timeout}"

[types."bench.down"]
short = "Notice #{{{{ data.n }}}}: line {{{{ service }}}} is down."
subject = "Line {{{{ service }}}} is down (#{{{{ data.n }}}})"
body = "Your line {{{{ service }}}} is down. Notice #{{{{ data.n }}}}."
"#,
            ntfy = u("ntfy"),
            signal = u("signal"),
            pushover = u("pushover"),
            telegram = u("telegram"),
            matrix = u("matrix"),
        )
    }

    /// The destination for channel `kind`'s account.
    pub fn destination(&self, kind: &str) -> String {
        match kind {
            "webhook" => format!("{}/hooks/bench", self.urls["webhook"]),
            "ntfy" => "ntfy:bench-alerts".into(),
            "signal" => "signal:+447700900123".into(),
            "pushover" => "pushover:uQiRzpo4DXghDmr9QzzfQu27cmVRsG".into(),
            "telegram" => "telegram:123456789".into(),
            "matrix" => "matrix:roomid/oGEIdfdOVebCBzdP:example.org".into(),
            other => panic!("no channel {other}"),
        }
    }

    /// What each provider saw, given when each notice's event was posted
    /// (relative to `Providers::start`).
    pub fn report(&self, posted: &HashMap<u64, Instant>) -> Vec<ChannelReport> {
        CHANNELS
            .iter()
            .map(|kind| {
                let seen = self.seen[kind].lock().unwrap_or_else(|e| e.into_inner());
                let mut latencies = Vec::new();
                let (mut absorbed, mut twice, mut last) = (0, 0, self.started);
                for (n, arrivals) in &seen.by_notice {
                    // A provider with idempotency keys keeps one per key.
                    let mut keys: Vec<&Option<String>> = arrivals.iter().map(|a| &a.key).collect();
                    let raw = keys.len();
                    keys.sort();
                    keys.dedup();
                    let reached = if keys.iter().all(|k| k.is_some()) {
                        absorbed += raw - keys.len();
                        keys.len()
                    } else {
                        raw
                    };
                    twice += reached.saturating_sub(1);
                    let first = arrivals.iter().map(|a| a.at).min().unwrap_or(self.started);
                    last = last.max(first);
                    if let Some(p) = posted.get(n) {
                        latencies.push(first.saturating_duration_since(*p));
                    }
                }
                latencies.sort();
                ChannelReport {
                    channel: kind,
                    distinct: seen.by_notice.len() as u64,
                    raw: seen.raw,
                    limited: seen.limited,
                    held: seen.held,
                    absorbed: absorbed as u64,
                    twice: twice as u64,
                    notices: seen.by_notice.keys().copied().collect(),
                    latencies,
                    last_arrival: last,
                }
            })
            .collect()
    }
}

/// One provider's side of a run.
pub struct ChannelReport {
    pub channel: &'static str,
    /// Notices that reached the recipient at least once.
    pub distinct: u64,
    /// Requests that delivered (including ones stored but answered late).
    pub raw: u64,
    /// Requests refused 429.
    pub limited: u64,
    /// Requests held past kci's timeout (stored, answered late).
    pub held: u64,
    /// Repeats the provider dropped by idempotency key.
    pub absorbed: u64,
    /// Repeats that reached the recipient anyway.
    pub twice: u64,
    /// Which notices arrived.
    pub notices: Vec<u64>,
    /// Event post to first arrival, sorted.
    pub latencies: Vec<Duration>,
    pub last_arrival: Instant,
}

impl ChannelReport {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

async fn answer(
    kind: &'static str,
    req: axum::extract::Request,
    seen: Arc<Mutex<Seen>>,
    count: Arc<AtomicU64>,
    trouble: Option<Trouble>,
    first: Arc<OnceLock<Instant>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    // The checks kci makes when a destination is created (Pushover's
    // user validation, Telegram's getChat): the key or chat is fine.
    let path = parts.uri.path();
    if path.ends_with("/users/validate.json") {
        return (
            [("content-type", "application/json")],
            r#"{"status":1,"devices":["phone"],"request":"v"}"#,
        )
            .into_response();
    }
    if path.ends_with("/getChat") {
        return (
            [("content-type", "application/json")],
            r#"{"ok":true,"result":{"id":42,"type":"private"}}"#,
        )
            .into_response();
    }
    let json = || serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let text_of = |v: serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let (text, key) = match kind {
        "webhook" => (
            text_of(json()["data"].clone(), "short"),
            parts
                .headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        "ntfy" | "signal" => (text_of(json(), "message"), None),
        "telegram" => (text_of(json(), "text"), None),
        "matrix" => (
            text_of(json(), "body"),
            parts.uri.path().rsplit('/').next().map(str::to_string),
        ),
        _ => (
            url::form_urlencoded::parse(&body)
                .find(|(k, _)| k == "message")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default(),
            None,
        ),
    };
    let Some(n) = notice_number(&text) else {
        return (axum::http::StatusCode::BAD_REQUEST, "no notice number").into_response();
    };
    let nth = count.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(t) = trouble
        && kind == "telegram"
        && first.get_or_init(Instant::now).elapsed() < t.limited_for
    {
        seen.lock().unwrap_or_else(|e| e.into_inner()).limited += 1;
        let secs = t.retry_after.as_secs().max(1);
        return (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", secs.to_string()),
                    ("content-type", "application/json".to_string()),
                ],
                format!(
                    r#"{{"ok":false,"error_code":429,"description":"Too Many Requests: retry after {secs}","parameters":{{"retry_after":{secs}}}}}"#
                ),
            )
                .into_response();
    }
    {
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        s.raw += 1;
        s.by_notice.entry(n).or_default().push(Arrival {
            at: Instant::now(),
            key,
        });
    }
    if let Some(t) = trouble
        && kind == "matrix"
        && nth.is_multiple_of(t.hold_every)
    {
        // Stored, then answered after kci has given up on the request.
        seen.lock().unwrap_or_else(|e| e.into_inner()).held += 1;
        tokio::time::sleep(t.hold).await;
    }
    let (status, body) = match kind {
        "webhook" => (204, String::new()),
        "ntfy" => (
            200,
            format!(
                r#"{{"id":"n{n}","time":1735689600,"event":"message","topic":"bench-alerts"}}"#
            ),
        ),
        "signal" => (201, r#"{"timestamp":"1735689600123"}"#.to_string()),
        "pushover" => (200, format!(r#"{{"status":1,"request":"r{n}"}}"#)),
        "telegram" => (
            200,
            format!(
                r#"{{"ok":true,"result":{{"message_id":{n},"chat":{{"id":123456789,"type":"private"}},"date":1735689600}}}}"#
            ),
        ),
        _ => (200, format!(r#"{{"event_id":"$e{n}:example.org"}}"#)),
    };
    (
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

/// An event of the scenario: notice `n` for channel `CHANNELS[n % 6]`'s account.
pub fn event_json(run: &str, n: u64) -> String {
    let kind = CHANNELS[(n % CHANNELS.len() as u64) as usize];
    format!(
        r#"{{"id":"{run}-{n}","type":"bench.down","account":"A-{kind}","service":"L{n}","data":{{"n":{n}}}}}"#
    )
}

/// Sets up one account per channel, one contact each, one verified
/// destination each, through the directory API.
pub async fn set_up(http: &reqwest::Client, base: &str, token: &str, providers: &Providers) {
    for kind in CHANNELS {
        let account = format!("{base}/v1/accounts/A-{kind}");
        for (method, url, body) in [
            ("PUT", account.clone(), serde_json::json!({"name": kind})),
            (
                "PUT",
                format!("{account}/contacts/c"),
                serde_json::json!({}),
            ),
            (
                "POST",
                format!("{account}/contacts/c/destinations"),
                serde_json::json!({"uri": providers.destination(kind), "verified": true}),
            ),
        ] {
            let r = http
                .request(method.parse().expect("a method"), &url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("kci answers");
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert!(
                (200..300).contains(&status),
                "{method} {url}: {status} {text}"
            );
        }
    }
}

/// Posts notices `0..n` in NDJSON batches; returns when each was posted.
pub async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    run: &str,
    n: u64,
    batch: u64,
) -> HashMap<u64, Instant> {
    let mut posted = HashMap::new();
    for start in (0..n).step_by(batch as usize) {
        let end = (start + batch).min(n);
        let body: String = (start..end).map(|i| event_json(run, i) + "\n").collect();
        let at = Instant::now();
        let r = http
            .post(format!("{base}/v1/events/batch"))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("kci answers");
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap_or_default();
        assert!(!text.contains("\"status\":4"), "{text}");
        for i in start..end {
            posted.insert(i, at);
        }
    }
    posted
}

/// Notifications in each state, from `/metrics`.
pub async fn states(http: &reqwest::Client, base: &str, token: &str) -> HashMap<String, u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("kci answers")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("kci_notifications{state=\"")?;
            let (state, value) = rest.split_once("\"} ")?;
            Some((state.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Waits until no notification is pending or sending; the states then.
pub async fn settle(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: u64,
    limit: Duration,
) -> HashMap<String, u64> {
    let t = Instant::now();
    loop {
        let s = states(http, base, token).await;
        let open = s.get("pending").copied().unwrap_or(0) + s.get("sending").copied().unwrap_or(0);
        let total: u64 = s.values().sum();
        if total >= n && open == 0 {
            return s;
        }
        assert!(
            t.elapsed() < limit,
            "not settled after {limit:?}: {s:?} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event's notifications as `GET /v1/events/{id}` tells them:
/// notice number → (state, attempts).
pub async fn fates(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    run: &str,
    n: u64,
) -> HashMap<u64, Vec<(String, u64, u64)>> {
    let mut out = HashMap::new();
    for i in 0..n {
        let v: serde_json::Value = http
            .get(format!("{base}/v1/events/{run}-{i}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("kci answers")
            .json()
            .await
            .expect("JSON");
        let notes = v["notifications"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["state"].as_str().unwrap_or("?").to_string(),
                            x["attempts"].as_u64().unwrap_or(0),
                            x["paced"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(i, notes);
    }
    out
}
