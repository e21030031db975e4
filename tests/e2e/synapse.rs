//! A provider's own limits, against a real Matrix homeserver: Synapse
//! from PyPI (installed by `scripts/test`, reached as `target/synapse-venv`),
//! started on loopback with its rate limiter on, a user registered with
//! the server's shared secret. A burst of notices to one room must all
//! arrive — a 429 is pacing, not failure — with few requests turned away,
//! and in order within each key. What Synapse was asked is read from its
//! own access log, not from kci.

use crate::common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Synapse's `rc_message`: a bucket of messages (10) refilled at a rate
/// (25 a second). Its default (0.2/s, 10) would make the test take forty
/// minutes; this is the same limiter, faster. `KCI_SYNAPSE_LIMIT=0.2/10`
/// measures against another (BENCHMARKS.md).
fn limit() -> (f64, u32) {
    std::env::var("KCI_SYNAPSE_LIMIT")
        .ok()
        .and_then(|v| {
            let (rate, burst) = v.split_once('/')?;
            Some((rate.parse().ok()?, burst.parse().ok()?))
        })
        .unwrap_or((25.0, 10))
}

/// Keys, and notices per key: `KCI_SYNAPSE_NOTICES=3x40` for another load.
fn load() -> (usize, usize) {
    std::env::var("KCI_SYNAPSE_NOTICES")
        .ok()
        .and_then(|v| {
            let (keys, each) = v.split_once('x')?;
            Some((keys.parse().ok()?, each.parse().ok()?))
        })
        .unwrap_or((10, 50))
}

fn synapse_python() -> PathBuf {
    std::env::var_os("KCI_SYNAPSE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/synapse-venv/bin/python")
        })
}

/// A Synapse homeserver on a free loopback port, in its own directory.
struct Synapse {
    dir: tempfile::TempDir,
    base: String,
    child: Child,
    python: PathBuf,
    http: reqwest::Client,
}

impl Synapse {
    fn start() -> Synapse {
        let python = synapse_python();
        assert!(
            python.exists(),
            "no Synapse at {}: scripts/test installs it from PyPI \
             (or set KCI_SYNAPSE_PYTHON to a Python that has matrix-synapse)",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("homeserver.yaml");
        // Synapse writes a complete config (secrets, signing key, logging)…
        let out = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--server-name", "localhost"])
            .arg("--config-path")
            .arg(&config)
            .args(["--generate-config", "--report-stats=no"])
            .current_dir(dir.path())
            .output()
            .expect("run synapse");
        assert!(
            out.status.success(),
            "synapse --generate-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // …and a second file overrides what this test needs: its own port,
        // no federation, the message limiter.
        let overrides = dir.path().join("test.yaml");
        let (per_second, burst) = limit();
        std::fs::write(
            &overrides,
            format!(
                "listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    \
                 type: http\n    tls: false\n    x_forwarded: false\n    \
                 resources:\n      - names: [client]\n        compress: false\n\
                 trusted_key_servers: []\n\
                 suppress_key_server_warning: true\n\
                 rc_message:\n  per_second: {per_second}\n  burst_count: {burst}\n"
            ),
        )
        .unwrap();
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(&config)
            .arg("--config-path")
            .arg(&overrides)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start synapse");
        let mut synapse = Synapse {
            dir,
            base: format!("http://127.0.0.1:{port}"),
            child,
            python,
            http: reqwest::Client::new(),
        };
        synapse.wait_ready();
        synapse
    }

    /// Until it listens (its start takes seconds: Python, and the
    /// database's schema), or fails naming why.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let addr = self.base.trim_start_matches("http://").to_string();
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("synapse exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default()
    }

    /// Registers `user` with the server's shared secret (Synapse's own
    /// `register_new_matrix_user`), logs in, and answers its access token.
    async fn user(&self, user: &str, password: &str) -> String {
        let script = self
            .python
            .parent()
            .map(|bin| bin.join("register_new_matrix_user"))
            .unwrap();
        let out = Command::new(&script)
            .args(["-u", user, "-p", password, "--no-admin", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .arg(&self.base)
            .output()
            .expect("register_new_matrix_user");
        assert!(
            out.status.success(),
            "register: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let login = json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user}, "password": password});
        let v = self
            .call(
                self.http
                    .post(self.url("/_matrix/client/v3/login"))
                    .json(&login),
            )
            .await;
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("login: {v}"))
            .to_string()
    }

    async fn create_room(&self, token: &str) -> String {
        let room = json!({"preset": "private_chat", "name": "kci notices"});
        let request = self.http.post(self.url("/_matrix/client/v3/createRoom"));
        let v = self.call(request.bearer_auth(token).json(&room)).await;
        v["room_id"]
            .as_str()
            .unwrap_or_else(|| panic!("createRoom: {v}"))
            .to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` to Synapse; its JSON answer.
    async fn call(&self, request: reqwest::RequestBuilder) -> serde_json::Value {
        request
            .send()
            .await
            .expect("synapse answers")
            .json()
            .await
            .expect("synapse answers JSON")
    }

    /// The bodies of the room's text messages, in the room's order.
    async fn messages(&self, token: &str, room: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut query = vec![("dir", "f".to_string()), ("limit", "1000".to_string())];
            query.extend(from.take().map(|f| ("from", f)));
            let path = format!("/_matrix/client/v3/rooms/{room}/messages");
            let request = self.http.get(self.url(&path)).query(&query);
            let v = self.call(request.bearer_auth(token)).await;
            let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
            if chunk.is_empty() {
                return bodies;
            }
            bodies.extend(
                chunk
                    .iter()
                    .filter(|e| e["type"] == "m.room.message")
                    .filter_map(|e| e["content"]["body"].as_str().map(str::to_string)),
            );
            match v["end"].as_str() {
                Some(end) => from = Some(end.to_string()),
                None => return bodies,
            }
        }
    }

    /// The statuses Synapse answered to message sends, from its access log
    /// (`… Processed request: … 200 "PUT /_matrix/client/v3/rooms/…/send/…"`).
    fn send_statuses(&self) -> Vec<u16> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("Processed request") && l.contains("\"PUT /_matrix/client/v3/rooms/")
            })
            .filter(|l| l.contains("/send/m.room.message/"))
            .filter_map(|l| {
                let (before, _) = l.split_once(" \"PUT ")?;
                before.rsplit(' ').next()?.parse().ok()
            })
            .collect()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test: a burst of 500 notices to one room, ten keys of
/// fifty, all posted before kci may send any. Each arrives once, none
/// fails, Synapse turns away few requests (≤ 1.2 requests per notice),
/// and each key's notices arrive in the order they were posted.
#[tokio::test]
async fn a_burst_to_a_real_synapse_arrives_whole_in_order_within_its_limits() {
    let (keys, per_key) = load();
    let total = keys * per_key;
    let (per_second, burst) = limit();
    let synapse = Synapse::start();
    let bot = synapse.user("kci", "kci-test-password-1").await;
    let room = synapse.create_room(&bot).await;
    let room_part = room.trim_start_matches('!');

    let kci = Kci::start(
        None,
        &format!(
            "[channels.matrix]\nhomeserver = \"{}/\"\naccess_token = \"{bot}\"\n\n\
             [types.\"line.status\"]\ncategory = \"line\"\npriority = \"normal\"\n",
            synapse.base
        ),
    );
    let admin = kci.token(&["admin"]);
    kci.customer(
        &admin,
        "A1",
        "noc",
        json!({"uri": format!("matrix:roomid/{room_part}"), "verified": true}),
    )
    .await;

    // All held for a moment, so the burst reaches the channel at once;
    // each key's events posted one after another, the keys side by side.
    let due = (chrono::Utc::now() + chrono::Duration::seconds(8)).to_rfc3339();
    let posts = (0..keys).map(|k| {
        let (kci, admin, due) = (&kci, &admin, &due);
        async move {
            for i in 0..per_key {
                let body = json!({"id": format!("k{k}-{i}"), "type": "line.status",
                    "account": "A1", "key": format!("line-{k}"), "not_before": due,
                    "short": format!("line-{k} #{i}")});
                kci.post_event(admin, &body.to_string()).await;
            }
        }
    });
    futures_util::future::join_all(posts).await;

    let started = Instant::now();
    // The time the provider's rate needs, and some.
    let secs = 60 + (total as f64 / per_second) as u64 * 2;
    let bodies = eventually(secs, "every notice in the room", || async {
        let bodies = synapse.messages(&bot, &room).await;
        (bodies.len() >= total).then_some(bodies)
    })
    .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies_after = synapse.messages(&bot, &room).await;
    assert_eq!(bodies_after.len(), total, "each notice once");

    // In order within each key.
    for k in 0..keys {
        let prefix = format!("line-{k} #");
        let seq: Vec<usize> = bodies
            .iter()
            .filter_map(|b| b.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert_eq!(
            seq,
            (0..per_key).collect::<Vec<_>>(),
            "key line-{k} arrived out of order"
        );
    }

    // Each sent at its first try as kci tells it: none failed, no
    // attempt spent on a 429.
    for k in 0..keys {
        for i in 0..per_key {
            let (s, v) = kci
                .call("GET", &format!("/v1/events/k{k}-{i}"), Some(&admin), None)
                .await;
            assert_eq!(s, 200, "{v}");
            let n = &v["notifications"][0];
            assert_eq!(
                (n["state"].as_str(), n["attempts"].as_u64()),
                (Some("sent"), Some(1)),
                "k{k}-{i}: {v}"
            );
        }
    }

    // What Synapse was asked, from its own log.
    let statuses = synapse.send_statuses();
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    let per_notice = statuses.len() as f64 / total as f64;
    eprintln!(
        "synapse {per_second}/s burst {burst}: {total} notices in {took:?}, \
         {} sends ({accepted} accepted, {limited} limited): {per_notice:.3} per notice",
        statuses.len()
    );
    assert_eq!(accepted, total, "{statuses:?}");
    assert_eq!(statuses.len(), accepted + limited, "only 200s and 429s");
    assert!(
        per_notice <= 1.2,
        "{per_notice:.3} requests per notice ({limited} turned away)"
    );
}
