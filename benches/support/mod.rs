//! What the benchmarks that run a real `kci serve` share: ports, the
//! child process, a token.

#![allow(dead_code)] // each benchmark uses its own part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until something listens on `port`.
pub fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process, killed when dropped.
pub struct Killer(pub Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new `admin` token from `kci token create` with `config`.
pub fn admin_token(kci: &str, config: &std::path::Path) -> String {
    let out = Command::new(kci)
        .args([
            "token", "create", "--name", "bench", "--scope", "admin", "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `kci serve --config <config>`, logging warnings only, killed on drop.
pub fn serve(kci: &str, config: &std::path::Path) -> Killer {
    Killer(
        Command::new(kci)
            .args(["serve", "--config"])
            .arg(config)
            .env("KCI_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A running `kci serve` with `config` listening on `port`: the process,
/// an `admin` token for it, and its base URL.
pub fn start(kci: &str, config: &std::path::Path, port: u16) -> (Killer, String, String) {
    let token = admin_token(kci, config);
    let process = serve(kci, config);
    wait_port(port);
    (process, token, format!("http://127.0.0.1:{port}"))
}

/// The text of `base`'s `/metrics`, read with `token`.
#[allow(dead_code)] // not every bench reads metrics
pub async fn metrics_text(http: &reqwest::Client, base: &str, token: &str) -> String {
    http.get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The cumulative buckets of histogram `name` in a `/metrics` text, of
/// its series whose labels include `label` (all when empty), as (upper
/// bound in seconds, count), in order.
#[allow(dead_code)] // read through `observed`
pub fn buckets(metrics: &str, name: &str, label: &str) -> Vec<(f64, f64)> {
    let series = format!("{name}_bucket{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&series) && l.contains(label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// What the observations of histogram `name` (its series with `label`)
/// took between two `/metrics` texts: how many, the bucket bounds (ms)
/// the 50th and 99th percentiles fall under, how many took over 25.6 ms
/// and the bound of the slowest.
#[allow(dead_code)] // read by the latency bench
pub fn observed(before: &str, after: &str, name: &str, label: &str, what: &str) -> String {
    let (b, a) = (buckets(before, name, label), buckets(after, name, label));
    let counts: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| {
            let was = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let total = counts.last().map_or(0.0, |(_, n)| *n);
    let under = |q: f64| {
        counts
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    };
    // The few slowest: a stall of the writer holds up only the writes
    // queued during it, which a percentile can leave out.
    let within = |ms: f64| {
        counts
            .iter()
            .find(|(le, _)| *le * 1000.0 >= ms)
            .map_or(total, |(_, n)| *n)
    };
    format!(
        "{total:.0} {what}, p50 ≤ {:.1} ms, p99 ≤ {:.1} ms, {:.0} over 25.6 ms, the slowest ≤ {:.1} ms",
        under(0.5),
        under(0.99),
        total - within(25.6),
        under(1.0),
    )
}

/// [`observed`] for the store's writes of `durability`
/// (`kci_store_write_seconds`).
#[allow(dead_code)] // read by the latency bench
pub fn store_writes(before: &str, after: &str, durability: &str) -> String {
    observed(
        before,
        after,
        "kci_store_write_seconds",
        &format!("durability=\"{durability}\""),
        &format!("{durability} writes"),
    )
}

/// A plain SMTP client session (no kci in between), as the benches use to
/// measure an SMTP server on its own: greeted, `EHLO` said, then one mail
/// transaction per `send`.
pub struct SmtpSession {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: String,
    /// The server offers PIPELINING (RFC 2920): a mail's commands go
    /// together, as kci sends them to such a server.
    pipelining: bool,
}

impl SmtpSession {
    /// Connects to `port` on loopback with `TCP_NODELAY` (as kci does).
    pub async fn open(port: u16) -> Self {
        use tokio::io::AsyncWriteExt;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        let mut s = Self {
            r: tokio::io::BufReader::new(r),
            w,
            line: String::new(),
            pipelining: false,
        };
        assert_eq!(s.reply().await, 220);
        s.w.write_all(b"EHLO bench\r\n").await.unwrap();
        assert_eq!(s.reply().await, 250);
        s
    }

    /// One reply, multi-line or not: its last line's code.
    async fn reply(&mut self) -> u16 {
        use tokio::io::AsyncBufReadExt;
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line).await.unwrap();
            if self
                .line
                .get(4..)
                .is_some_and(|l| l.trim_end() == "PIPELINING")
            {
                self.pipelining = true;
            }
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return self.line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
    }

    /// One mail: `data` is the message, dot-stuffed and ending in
    /// `\r\n.\r\n`.
    pub async fn send(&mut self, data: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let commands = [
            ("MAIL FROM:<kci@isp.example>\r\n", 250),
            ("RCPT TO:<bench@example.com>\r\n", 250),
            ("DATA\r\n", 354),
        ];
        if self.pipelining {
            let group: String = commands.iter().map(|(cmd, _)| *cmd).collect();
            self.w.write_all(group.as_bytes()).await.unwrap();
        }
        for (cmd, code) in commands {
            if !self.pipelining {
                self.w.write_all(cmd.as_bytes()).await.unwrap();
            }
            assert_eq!(self.reply().await, code, "{cmd}");
        }
        self.w.write_all(data).await.unwrap();
        assert_eq!(self.reply().await, 250);
    }

    pub async fn quit(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.w.write_all(b"QUIT\r\n").await;
    }
}
