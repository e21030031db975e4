//! Fixtures: a kci server process, an SMTP server, a webhook receiver.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Webhooks to the test's own receiver, which listens on loopback: the
/// operator's leave kci needs for that (`allow_private`).
pub const LOCAL_WEBHOOKS: &str = "[channels.webhook]\nallow_private = true\n";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns `Some`, or panics after `secs` with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real SMTP server: aiosmtpd writing every accepted mail into a Maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: Child,
}

impl SmtpServer {
    pub fn start(dir: &Path) -> SmtpServer {
        let port = free_port();
        let maildir = dir.join("smtp-maildir");
        let child = Command::new("/usr/bin/python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd must be installed (apt-get install python3-aiosmtpd)");
        wait_for_port(port, "aiosmtpd");
        SmtpServer {
            port,
            maildir,
            child,
        }
    }

    /// Every mail received so far, raw.
    pub fn mails(&self) -> Vec<String> {
        read_maildir(&self.maildir)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_maildir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    out.push(s);
                }
            }
        }
    }
    out
}

/// A parsed mail: its headers and decoded text body.
pub struct Mail {
    pub body: String,
    headers: Vec<(String, String)>,
}

impl Mail {
    pub fn parse(raw: &str) -> Mail {
        let parsed = mailparse::parse_mail(raw.as_bytes()).expect("a parseable mail");
        let headers = parsed
            .headers
            .iter()
            .map(|h| (h.get_key(), h.get_value()))
            .collect();
        let body = parsed.get_body().unwrap_or_default().replace("\r\n", "\n");
        Mail { body, headers }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

/// A local HTTP server recording every POST; answers `status`.
pub struct WebhookReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Hook>>>,
    pub status: Arc<Mutex<u16>>,
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let (r, s) = (received.clone(), status.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let (r, s) = (r.clone(), s.clone());
                async move {
                    r.lock().unwrap().push(Hook { headers, body });
                    let code = *s.lock().unwrap();
                    axum::http::StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        WebhookReceiver {
            url,
            received,
            status,
        }
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.received.lock().unwrap().clone()
    }
}

/// A running `kci serve`.
pub struct Kci {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub base: String,
    pub port: u16,
    child: Option<Child>,
    pub http: reqwest::Client,
}

pub const TYPES: &str = r#"
[types."line.down"]
category = "line"
priority = "normal"
expires_after = "12h"
short = "Your line {{ service }} went down at {{ occurred_at | time }}."
subject = "Line {{ service }} is down"
body = """Dear customer,

your line {{ service }} went down at {{ occurred_at | time }} ({{ timezone }}).
Engineer reference: {{ data.ticket }}."""

[types."appointment.booked"]
category = "appointment"
hold = "1h"
short = "Your appointment is booked for {{ data.when }}."
"#;

impl Kci {
    /// Starts kci on a SQLite store in a fresh directory with the test
    /// event types; mail goes to `smtp` if given, else to the outbox.
    pub fn start(smtp: Option<u16>, extra: &str) -> Kci {
        Kci::start_with(smtp, "", extra)
    }

    /// As [`Kci::start`], with `server` added to the `[server]` table.
    pub fn start_with(smtp: Option<u16>, server: &str, extra: &str) -> Kci {
        Kci::start_full(smtp, server, "", extra)
    }

    /// As [`Kci::start`], with `server` and `email` added to those tables.
    pub fn start_full(smtp: Option<u16>, server: &str, email: &str, extra: &str) -> Kci {
        Kci::start_on(None, smtp, server, email, extra)
    }

    /// As [`Kci::start_full`], on the store at `store` (a `postgres://`
    /// URL) if given, else on SQLite in the fresh directory.
    pub fn start_on(
        store: Option<&str>,
        smtp: Option<u16>,
        server: &str,
        email: &str,
        extra: &str,
    ) -> Kci {
        Kci::start_on_with(store, "", smtp, server, email, extra)
    }

    /// As [`Kci::start_on`], with `store_extra` added to the `[store]`
    /// table.
    pub fn start_on_with(
        store: Option<&str>,
        store_extra: &str,
        smtp: Option<u16>,
        server: &str,
        email: &str,
        extra: &str,
    ) -> Kci {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("kci.toml");
        let smtp = smtp
            .map(|p| format!("smtp = \"smtp://127.0.0.1:{p}?tls=none\"\n"))
            .unwrap_or_default();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\
             [store]\nurl = \"{store}\"\n{store_extra}{code_key}\
             [email]\nfrom = \"Example ISP <kci@isp.example>\"\noutbox = \"{outbox}\"\n{smtp}{email}\
             [delivery]\nbackoff = \"200ms\"\n{extra}\n{TYPES}",
            store = store.map_or_else(
                || format!("sqlite://{}", dir.path().join("kci.db").display()),
                str::to_string
            ),
            outbox = dir.path().join("outbox").display(),
            // PostgreSQL's nodes share a code key from the config.
            code_key = if store.is_some() {
                format!("code_key = \"{}\"\n", "5a".repeat(32))
            } else {
                String::new()
            },
        );
        std::fs::write(&config, text).unwrap();
        let mut kci = Kci {
            dir,
            config,
            base: format!("http://127.0.0.1:{port}"),
            port,
            child: None,
            http: reqwest::Client::new(),
        };
        kci.spawn();
        kci
    }

    pub fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_kci"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env(
                "KCI_LOG",
                std::env::var("KCI_TEST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kci");
        self.child = Some(child);
        // Connections kept to a process that has gone would fail the next
        // request.
        self.http = reqwest::Client::new();
        wait_for_port(self.port, "kci");
    }

    /// `kill -TERM`: kci shuts down gracefully.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends kci the signal `name` (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("kci is running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits up to `secs` for kci to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The SQLite database file.
    pub fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("kci.db")
    }

    pub fn outbox(&self) -> Vec<String> {
        read_maildir(&self.dir.path().join("outbox"))
    }

    /// Creates a token with `scopes` through the CLI, as an operator would.
    pub fn token(&self, scopes: &[&str]) -> String {
        self.token_as(None, scopes)
    }

    /// Creates a token acting as staff member `staff` (if given).
    pub fn token_as(&self, staff: Option<&str>, scopes: &[&str]) -> String {
        let mut args = vec!["token", "create", "--name", "test"];
        if let Some(s) = staff {
            args.extend(["--staff", s]);
        }
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let (code, stdout, stderr) = self.cli(&args);
        assert_eq!(code, 0, "token create: {stderr}");
        stdout
            .lines()
            .last()
            .expect("a token line")
            .trim()
            .to_string()
    }

    /// Runs `kci ARGS --config <this config>`: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_kci"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("KCI_LOG", "warn")
            .output()
            .expect("kci");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates account `account` with contact `contact` and a destination
    /// from `destination` (a JSON body), checking each answer; returns the
    /// destination's id.
    pub async fn customer(
        &self,
        token: &str,
        account: &str,
        contact: &str,
        destination: serde_json::Value,
    ) -> String {
        let (s, v) = self
            .call(
                "PUT",
                &format!("/v1/accounts/{account}"),
                Some(token),
                Some("{}"),
            )
            .await;
        assert!(s == 200 || s == 201, "account: {s} {v}");
        let path = format!("/v1/accounts/{account}/contacts/{contact}");
        let (s, v) = self.call("PUT", &path, Some(token), Some("{}")).await;
        assert!(s == 200 || s == 201, "contact: {s} {v}");
        let (s, v) = self
            .add_destination(token, account, contact, &destination.to_string())
            .await;
        assert_eq!(s, 201, "destination: {v}");
        v["id"].as_str().unwrap_or_default().to_string()
    }

    /// `POST /v1/events` with `body`, which must be accepted (202).
    pub async fn post_event(&self, token: &str, body: &str) {
        let (s, v) = self
            .call("POST", "/v1/events", Some(token), Some(body))
            .await;
        assert_eq!(s, 202, "{v}");
    }

    /// `POST …/contacts/{contact}/destinations` with `body`.
    pub async fn add_destination(
        &self,
        token: &str,
        account: &str,
        contact: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        self.call(
            "POST",
            &format!("/v1/accounts/{account}/contacts/{contact}/destinations"),
            Some(token),
            Some(body),
        )
        .await
    }

    /// POSTs a form (`application/x-www-form-urlencoded`) to `path`, as
    /// a browser does: the status and the page.
    pub async fn form(&self, path: &str, body: &str) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }
}

impl Drop for Kci {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA, and certificates it issues, made with the real `openssl`.
pub struct Pki {
    pub dir: std::path::PathBuf,
}

impl Pki {
    pub fn new(dir: &std::path::Path, name: &str) -> Pki {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki
    }

    pub fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A certificate for `name` issued by CA `ca`, for `usage`
    /// (`serverAuth` with the loopback address, or `clientAuth`).
    pub fn issue(&self, ca: &str, name: &str, usage: &str) {
        self.issue_for(ca, name, usage, &[]);
    }

    /// As [`Pki::issue`]; a server certificate names `dns` (and the
    /// loopback address).
    pub fn issue_for(&self, ca: &str, name: &str, usage: &str, dns: &[&str]) {
        let ext = format!("{name}.ext");
        let san = if usage == "serverAuth" {
            let names: String = dns.iter().map(|d| format!(",DNS:{d}")).collect();
            format!("subjectAltName=IP:127.0.0.1{names}\n")
        } else {
            String::new()
        };
        std::fs::write(
            self.dir.join(&ext),
            format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(file)).unwrap()
    }

    /// An HTTPS client trusting CA `ca`, presenting `identity`'s
    /// certificate if given.
    pub fn client(&self, ca: &str, identity: Option<&str>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&self.read(&format!("{ca}.crt"))).unwrap(),
            );
        if let Some(id) = identity {
            let pem = [
                self.read(&format!("{id}.crt")),
                self.read(&format!("{id}.key")),
            ]
            .concat();
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}
