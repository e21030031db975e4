//! A small pool of SMTP connections with `TCP_NODELAY` set.
//!
//! lettre 0.11.23 (the newest release) leaves Nagle's algorithm on: the
//! five-byte end-of-data marker waits for the server's delayed ACK, 40 ms
//! per mail, which capped kci at about 500 mails/s against a local server
//! (lettre PR #1159 fixes this upstream but is not released yet). So kci
//! opens the TCP connection itself, sets `TCP_NODELAY`, and lets lettre's
//! `AsyncSmtpConnection` speak SMTP over it: EHLO, STARTTLS, AUTH and the
//! mail transaction stay lettre's. Implicit TLS (`smtps://`) uses lettre's
//! own connect.

use crate::channels::DeliveryError;
use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How the connection is secured, from the URL (lettre's syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `tls=none`: plain text, for a relay on the same host.
    None,
    /// Default for `smtp://`: STARTTLS when the server offers it.
    Opportunistic,
    /// `tls=required`: STARTTLS or fail.
    Required,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
}

/// Where and how to connect, parsed from `[email] smtp`.
#[derive(Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    credentials: Option<Credentials>,
    hello: ClientId,
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        write!(f, "SmtpTarget({}:{} {:?})", self.host, self.port, self.tls)
    }
}

impl SmtpTarget {
    /// Parses lettre's URL syntax: `smtp[s]://[user:pass@]host[:port][/ehlo-name][?tls=…]`.
    pub fn parse(url: &str) -> Result<SmtpTarget, String> {
        let u = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        let host = u
            .host_str()
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let tls_param = u
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (tls, default_port) = match (u.scheme(), tls_param.as_deref()) {
            ("smtp", None | Some("opportunistic")) => (
                TlsMode::Opportunistic,
                if tls_param.is_some() { 587 } else { 25 },
            ),
            ("smtp", Some("required")) => (TlsMode::Required, 587),
            ("smtp", Some("none")) => (TlsMode::None, 25),
            ("smtps", _) => (TlsMode::Wrapper, 465),
            (scheme, tls) => {
                return Err(format!(
                    "unsupported scheme `{scheme}` or tls=`{}`",
                    tls.unwrap_or("")
                ));
            }
        };
        let decode = |s: &str| percent_decode(s);
        let credentials = match (u.username(), u.password()) {
            ("", None) => None,
            (user, pass) => Some(Credentials::new(decode(user), decode(pass.unwrap_or("")))),
        };
        let path = u.path().trim_matches('/');
        let hello = if path.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(path.to_string())
        };
        Ok(SmtpTarget {
            port: u.port().unwrap_or(default_port),
            host,
            tls,
            credentials,
            hello,
        })
    }
}

/// A user name or password from the URL: percent-decoded (RFC 3986), so
/// `+`, `&` and `=` in a password stay what they are.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Idle connections older than this are not reused (servers drop them).
const IDLE_LIMIT: Duration = Duration::from_secs(30);
const MAX_IDLE: usize = 32;

pub struct SmtpPool {
    target: SmtpTarget,
    timeout: Duration,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

/// Classifies an SMTP failure: the server's 4xx and connection trouble are
/// transient, its 5xx permanent. The text names the server's reply but
/// never the URL or its credentials.
pub fn classify(e: &SmtpError) -> DeliveryError {
    let detail = e.to_string();
    if e.is_permanent() {
        DeliveryError::Permanent {
            reason: "smtp_rejected",
            detail,
        }
    } else if e.is_timeout() {
        DeliveryError::Transient {
            reason: "timeout",
            detail,
            retry_after: None,
        }
    } else {
        DeliveryError::Transient {
            reason: "smtp_unavailable",
            detail,
            retry_after: None,
        }
    }
}

fn unreachable(e: std::io::Error) -> DeliveryError {
    DeliveryError::Transient {
        reason: "smtp_unavailable",
        detail: format!("cannot connect: {e}"),
        retry_after: None,
    }
}

impl SmtpPool {
    pub fn new(target: SmtpTarget, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn tls_params(&self) -> Result<TlsParameters, DeliveryError> {
        TlsParameters::new(self.target.host.clone()).map_err(|e| classify(&e))
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let t = &self.target;
        let mut conn = if t.tls == TlsMode::Wrapper {
            AsyncSmtpConnection::connect_tokio1(
                (t.host.as_str(), t.port),
                Some(self.timeout),
                &t.hello,
                Some(self.tls_params()?),
                None,
            )
            .await
            .map_err(|e| classify(&e))?
        } else {
            let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(unreachable)?;
            tcp.set_nodelay(true).map_err(unreachable)?;
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &t.hello)
                .await
                .map_err(|e| classify(&e))?
        };
        let upgrade = match t.tls {
            TlsMode::Required => true,
            TlsMode::Opportunistic => conn.can_starttls(),
            TlsMode::None | TlsMode::Wrapper => false,
        };
        if upgrade {
            conn.starttls(self.tls_params()?, &t.hello)
                .await
                .map_err(|e| classify(&e))?;
        }
        if let Some(creds) = &t.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(conn)
    }

    fn checkout_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_LIMIT && !conn.has_broken() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE && !conn.has_broken() {
            idle.push((conn, Instant::now()));
        }
    }

    /// Sends one mail. A reused connection that turns out to be dead is
    /// replaced once before the error counts.
    pub async fn send(&self, envelope: &Envelope, mail: &[u8]) -> Result<Response, DeliveryError> {
        let attempt = async {
            if let Some(mut conn) = self.checkout_idle() {
                match conn.send(envelope, mail).await {
                    Ok(resp) => {
                        self.checkin(conn);
                        return Ok(resp);
                    }
                    // The server answered: that answer stands.
                    Err(e) if e.is_permanent() || e.is_transient() => return Err(classify(&e)),
                    Err(_) => {} // the idle connection died; try a fresh one
                }
            }
            let mut conn = self.connect().await?;
            let resp = conn.send(envelope, mail).await.map_err(|e| classify(&e))?;
            self.checkin(conn);
            Ok(resp)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Transient {
                reason: "timeout",
                detail: format!("no answer within {:?}", self.timeout),
                retry_after: None,
            }),
        }
    }

    /// Connects, says EHLO (and STARTTLS/AUTH as configured), and keeps the
    /// connection for the next mail.
    pub async fn check(&self) -> Result<(), DeliveryError> {
        let conn = tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| DeliveryError::Transient {
                reason: "timeout",
                detail: "connect timed out".into(),
                retry_after: None,
            })??;
        self.checkin(conn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lettre_url_syntax() {
        let t = SmtpTarget::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("127.0.0.1", 2525, TlsMode::Opportunistic)
        );
        let t =
            SmtpTarget::parse("smtp://user%40isp:p%40ss@mail.example.com?tls=required").unwrap();
        assert_eq!((t.port, t.tls), (587, TlsMode::Required));
        assert_eq!(
            t.credentials,
            Some(Credentials::new("user@isp".into(), "p@ss".into()))
        );
        let t = SmtpTarget::parse("smtps://mail.example.com").unwrap();
        assert_eq!((t.port, t.tls), (465, TlsMode::Wrapper));
        let t = SmtpTarget::parse("smtp://localhost?tls=none").unwrap();
        assert_eq!(t.tls, TlsMode::None);
        assert!(SmtpTarget::parse("smtp://h?tls=maybe").is_err());
        assert!(SmtpTarget::parse("http://h").is_err());
        assert!(
            !format!("{:?}", SmtpTarget::parse("smtp://u:hunter2@h").unwrap()).contains("hunter2")
        );
    }

    /// A `+` (or `&`, `=`) in a password is what it is: percent-decoding,
    /// not form-decoding, which turned `+` into a space.
    #[test]
    fn a_plus_in_an_smtp_password_stays_a_plus() {
        let t = SmtpTarget::parse("smtp://kci:a+b&c=d%2Be@mail.example.com").unwrap();
        assert_eq!(
            t.credentials,
            Some(Credentials::new("kci".into(), "a+b&c=d+e".into()))
        );
    }
}
