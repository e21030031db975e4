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
//!
//! The connection holds what kci writes until kci waits for an answer
//! ([`HeldWrites`]): lettre writes a mail and its end (`\r\n.\r\n`) apart,
//! each flushed, which with `TCP_NODELAY` was two packets, and two reads
//! woken at the server, for every mail.
//!
//! A server that offers PIPELINING (RFC 2920: Postfix, Exim, the large
//! relays) gets a mail's `MAIL`, `RCPT` and `DATA` in one write and answers
//! them together ([`Conn::send`]): two round trips a mail rather than
//! four. lettre keeps no record of that extension, so kci asks `EHLO`
//! once more when it opens a connection, after STARTTLS and before AUTH.
//!
//! TLS is required unless the URL or a domain's policy says otherwise: a
//! server that offers no STARTTLS gets nothing (`tls_required`), and its
//! certificate must chain to the web's roots or `tls_ca` and name the host.

use super::config::TlsPolicy;
use crate::channels::DeliveryError;
use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Identity, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the connection is secured, from the URL (lettre's syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// `tls=none`: plain text, for a relay on the same host.
    None,
    /// `tls=opportunistic`: STARTTLS when the server offers it.
    Opportunistic,
    /// Default for `smtp://`, or `tls=required`: STARTTLS or nothing sent.
    Required,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
}

/// Where and how to connect, parsed from `[email] smtp`.
#[derive(Clone)]
pub struct SmtpTarget {
    /// The server's name: what its certificate must name.
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Where to connect, when already resolved (an MX host's address).
    connect_to: Option<std::net::IpAddr>,
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
            ("smtp", None) => (TlsMode::Required, 25),
            ("smtp", Some("opportunistic")) => (TlsMode::Opportunistic, 587),
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
            connect_to: None,
        })
    }

    /// A recipient domain's MX host `host` at `ip`: no credentials, EHLO
    /// with `hello` (kci's own name).
    pub fn mx(
        host: &str,
        ip: std::net::IpAddr,
        port: u16,
        tls: TlsMode,
        hello: &str,
    ) -> SmtpTarget {
        SmtpTarget {
            host: host.trim_end_matches('.').to_string(),
            port,
            tls,
            credentials: None,
            hello: ClientId::Domain(hello.to_string()),
            connect_to: Some(ip),
        }
    }
}

impl SmtpTarget {
    /// The target with a domain's `tls` in place of the URL's. Implicit
    /// TLS (`smtps://`) stays what it is.
    pub fn with_policy(mut self, policy: Option<TlsPolicy>) -> SmtpTarget {
        if self.tls != TlsMode::Wrapper {
            self.tls = match policy {
                Some(TlsPolicy::Required) => TlsMode::Required,
                Some(TlsPolicy::Opportunistic) => TlsMode::Opportunistic,
                Some(TlsPolicy::None) => TlsMode::None,
                None => self.tls,
            };
        }
        self
    }
}

/// What the TLS handshake trusts and presents, read from PEM files.
#[derive(Default, Clone)]
pub struct TlsFiles {
    /// Extra roots, besides the web's.
    pub roots: Option<Vec<u8>>,
    /// A client certificate chain and its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The DER of every certificate in `pem`; at least one.
pub(super) fn certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if ders.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(ders)
}

/// A user name or password from the URL: percent-decoded (RFC 3986), so
/// `+`, `&` and `=` in a password stay what they are.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A connection whose writes are held until its next read. SMTP answers
/// each command (or, with PIPELINING, each group of commands) before the
/// client sends more, so all kci wrote must be out by the time it reads
/// the answer, and not before: a command, a pipelined group, or a mail
/// and its end, leave in one write. lettre flushes after each
/// write; a flush here sends nothing, the next read (or a shutdown) does.
/// Under STARTTLS the TLS records go through it the same way.
#[derive(Debug)]
struct HeldWrites<S> {
    inner: S,
    held: Vec<u8>,
}

/// Held beyond this, writes go out at once (a large mail in pieces).
const HOLD_AT_MOST: usize = 64 * 1024;

impl<S: AsyncWrite + Unpin> HeldWrites<S> {
    fn new(inner: S) -> Self {
        HeldWrites {
            inner,
            held: Vec::new(),
        }
    }

    /// Writes out all that is held.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeldWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeldWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() >= HOLD_AT_MOST {
            ready!(this.poll_send(cx))?;
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Sent by the read that waits for the answer.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for HeldWrites<tokio::net::TcpStream> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

/// One of the pool's connections, and whether its server pipelines.
struct Conn {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

/// Whether an `EHLO` answer offers PIPELINING (RFC 2920): a line of its
/// own after the greeting, the keyword in any case.
fn offers_pipelining(ehlo: &Response) -> bool {
    ehlo.message().skip(1).any(|line| {
        line.split_ascii_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    })
}

/// A mail's `MAIL`, each `RCPT` and `DATA`: the commands RFC 2920 lets a
/// client send as one group, `DATA` last.
fn envelope_group(envelope: &Envelope) -> String {
    let mut group = Mail::new(envelope.from().cloned(), vec![]).to_string();
    for to in envelope.to() {
        group.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
    }
    group.push_str(&Data.to_string());
    group
}

/// Whether a failure is the server's answer (it has a code), not the
/// connection's.
fn answered(e: &SmtpError) -> bool {
    e.is_permanent() || e.is_transient()
}

impl Conn {
    /// Sends one mail: pipelined where the server offers it, else as
    /// lettre does, a command and its answer at a time. A mail whose
    /// addresses or text need SMTPUTF8 or 8BITMIME goes lettre's way,
    /// which checks the server offers them.
    async fn send(&mut self, envelope: &Envelope, mail: &[u8]) -> Result<Response, SmtpError> {
        let ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .all(|a| AsRef::<str>::as_ref(a).is_ascii());
        if !self.pipelining || !ascii || !mail.is_ascii() {
            return self.smtp.send(envelope, mail).await;
        }
        // The group goes out in one write; its answers come in order, one
        // for each command, each read even after a refusal so that the
        // first refusal is the one reported.
        let mut refused = match self.smtp.command(envelope_group(envelope)).await {
            Ok(_) => None,
            Err(e) if answered(&e) => Some(e),
            Err(e) => return Err(e),
        };
        let mut in_data = false;
        let rcpts = envelope.to().len();
        for at in 0..=rcpts {
            match self.smtp.read_response().await {
                Ok(_) if at == rcpts => in_data = true,
                Ok(_) => {}
                Err(e) if answered(&e) => {
                    refused.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = refused {
            // A server that took DATA though a command before it failed
            // waits for the mail: the connection is dropped unfinished
            // (the pool keeps only one whose mail went through, see
            // `SmtpPool::checkin`), so nothing is sent; a QUIT
            // now would be read as the mail's text. Otherwise it is closed
            // politely.
            if !in_data {
                self.smtp.abort().await;
            }
            return Err(e);
        }
        self.smtp.message(mail).await
    }
}

/// Idle connections older than this are not reused (servers drop them).
const IDLE_LIMIT: Duration = Duration::from_secs(30);
const MAX_IDLE: usize = 32;

pub struct SmtpPool {
    target: SmtpTarget,
    timeout: Duration,
    /// Built once: the roots, the host name checked, the client identity.
    tls: TlsParameters,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// Classifies an SMTP failure: the server's 4xx and connection trouble are
/// transient, its 5xx permanent. The text names the server's reply but
/// never the URL or its credentials.
pub fn classify(e: &SmtpError) -> DeliveryError {
    let detail = e.to_string();
    if e.is_tls() || tls_in_chain(e) {
        DeliveryError::Transient {
            reason: "tls_failed",
            detail,
            retry_after: None,
        }
    } else if e.is_permanent() {
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

/// Whether a failure was the TLS handshake's (lettre reports a refused
/// certificate as a connection error, with rustls's error inside).
fn tls_in_chain(e: &SmtpError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn unreachable(t: &SmtpTarget, e: std::io::Error) -> DeliveryError {
    DeliveryError::Transient {
        reason: "smtp_unavailable",
        detail: format!("cannot connect to {}:{}: {e}", t.host, t.port),
        retry_after: None,
    }
}

impl SmtpPool {
    /// A pool for `target`; fails on certificates or keys that do not
    /// parse (named by the caller).
    pub fn new(target: SmtpTarget, timeout: Duration, files: &TlsFiles) -> Result<Self, String> {
        let mut tls = TlsParameters::builder(target.host.clone());
        if let Some(pem) = &files.roots {
            for der in certificates(pem).map_err(|e| format!("tls_ca: {e}"))? {
                let root = Certificate::from_der(der).map_err(|e| format!("tls_ca: {e}"))?;
                tls = tls.add_root_certificate(root);
            }
        }
        if let Some((cert, key)) = &files.identity {
            let bad = |e: String| format!("client_cert/client_key: {e}");
            let leaf = certificates(cert).map_err(bad)?.swap_remove(0);
            // lettre 0.11.23 takes the certificate as DER here, whatever
            // the name says (its rustls path does not decode the PEM).
            let identity = Identity::from_pem(&leaf, key).map_err(|e| bad(e.to_string()))?;
            tls = tls.identify_with(identity);
        }
        let tls = tls.build_rustls().map_err(|e| format!("TLS: {e}"))?;
        Ok(Self {
            target,
            timeout,
            tls,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Why nothing was sent to a server without STARTTLS.
    fn refused_in_clear(&self) -> DeliveryError {
        DeliveryError::Transient {
            reason: "tls_required",
            detail: format!(
                "{}:{} offers no STARTTLS and TLS is required: nothing sent in clear \
                 (a recipient domain's [email.domains] tls = \"opportunistic\" allows it)",
                self.target.host, self.target.port
            ),
            retry_after: None,
        }
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let t = &self.target;
        let mut conn = if t.tls == TlsMode::Wrapper {
            AsyncSmtpConnection::connect_tokio1(
                (t.host.as_str(), t.port),
                Some(self.timeout),
                &t.hello,
                Some(self.tls.clone()),
                None,
            )
            .await
            .map_err(|e| classify(&e))?
        } else {
            let tcp = match t.connect_to {
                Some(ip) => tokio::net::TcpStream::connect((ip, t.port)).await,
                None => tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await,
            }
            .map_err(|e| unreachable(t, e))?;
            tcp.set_nodelay(true).map_err(|e| unreachable(t, e))?;
            AsyncSmtpConnection::connect_with_transport(Box::new(HeldWrites::new(tcp)), &t.hello)
                .await
                .map_err(|e| classify(&e))?
        };
        let upgrade = match t.tls {
            TlsMode::Required if !conn.can_starttls() => {
                conn.abort().await;
                return Err(self.refused_in_clear());
            }
            TlsMode::Required => true,
            TlsMode::Opportunistic => conn.can_starttls(),
            TlsMode::None | TlsMode::Wrapper => false,
        };
        if upgrade {
            conn.starttls(self.tls.clone(), &t.hello)
                .await
                .map_err(|e| classify(&e))?;
        }
        // What the server offers now (after STARTTLS, which may change
        // it), for PIPELINING; before AUTH, which a new EHLO may undo.
        // A server that refuses a second EHLO keeps its session as it was:
        // mail goes to it a command at a time.
        let pipelining = match conn.command(Ehlo::new(t.hello.clone())).await {
            Ok(ehlo) => offers_pipelining(&ehlo),
            Err(e) if answered(&e) => false,
            Err(e) => return Err(classify(&e)),
        };
        if let Some(creds) = &t.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], creds)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(Conn {
            smtp: conn,
            pipelining,
        })
    }

    fn checkout_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_LIMIT && !conn.smtp.has_broken() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection for the next mail: only one just opened or
    /// whose last mail went through. After a failed mail a connection may
    /// be mid-transaction, even waiting for a mail's text after a
    /// pipelined refusal, so `send` drops it instead.
    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE && !conn.smtp.has_broken() {
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
                    Err(e) if answered(&e) => return Err(classify(&e)),
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
            ("127.0.0.1", 2525, TlsMode::Required)
        );
        let t = SmtpTarget::parse("smtp://mx.example?tls=opportunistic").unwrap();
        assert_eq!((t.port, t.tls), (587, TlsMode::Opportunistic));
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
        // A domain's policy overrides the URL's, except implicit TLS.
        let t = SmtpTarget::parse("smtp://mx.example").unwrap();
        assert_eq!(
            t.clone().with_policy(Some(TlsPolicy::Opportunistic)).tls,
            TlsMode::Opportunistic
        );
        assert_eq!(t.with_policy(None).tls, TlsMode::Required);
        let t = SmtpTarget::parse("smtps://mx.example").unwrap();
        assert_eq!(t.with_policy(Some(TlsPolicy::None)).tls, TlsMode::Wrapper);
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

    /// PIPELINING is an extension line of its own, in any case; a greeting
    /// or another extension's parameter that says the word is not it.
    #[test]
    fn pipelining_is_read_from_the_ehlo_answer() {
        let cases = [
            ("250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n", true),
            (
                "250-mx.example\r\n250-SIZE 1000\r\n250 pipelining\r\n",
                true,
            ),
            ("250-mx.example\r\n250 8BITMIME\r\n", false),
            ("250 PIPELINING\r\n", false),
            ("250-mx.example\r\n250 X-NOT PIPELINING\r\n", false),
            ("250-mx.example\r\n250 PIPELININGX\r\n", false),
        ];
        for (text, offered) in cases {
            let ehlo: Response = text.parse().unwrap();
            assert_eq!(offers_pipelining(&ehlo), offered, "{text:?}");
        }
    }

    /// A mail's group: `MAIL`, a `RCPT` for each recipient, `DATA` last.
    #[test]
    fn a_mails_commands_are_one_group_with_data_last() {
        let envelope = Envelope::new(
            Some("kci@isp.example".parse().unwrap()),
            vec![
                "a@example.com".parse().unwrap(),
                "b@example.com".parse().unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(
            envelope_group(&envelope),
            "MAIL FROM:<kci@isp.example>\r\nRCPT TO:<a@example.com>\r\n\
             RCPT TO:<b@example.com>\r\nDATA\r\n"
        );
    }

    /// A stream that keeps each write it is given apart, and answers
    /// reads with `reply`.
    #[derive(Default)]
    struct Wire {
        writes: Vec<Vec<u8>>,
        reply: std::collections::VecDeque<u8>,
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Wire {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            let n = buf.remaining().min(this.reply.len());
            let bytes: Vec<u8> = this.reply.drain(..n).collect();
            buf.put_slice(&bytes);
            Poll::Ready(Ok(()))
        }
    }

    /// As lettre writes a mail (each part flushed), the mail and its end
    /// reach the socket in one write, once kci reads the server's answer;
    /// a mail larger than what is held goes out in pieces; a shutdown
    /// sends what is held.
    #[tokio::test]
    async fn a_mail_and_its_end_leave_in_one_write_before_the_answer_is_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = HeldWrites::new(Wire {
            reply: b"250 OK\r\n".iter().copied().collect(),
            ..Default::default()
        });
        conn.write_all(b"Subject: x\r\n\r\nbody").await.unwrap();
        conn.flush().await.unwrap();
        conn.write_all(b"\r\n.\r\n").await.unwrap();
        conn.flush().await.unwrap();
        assert!(conn.inner.writes.is_empty(), "nothing sent before the read");
        let mut answer = [0u8; 8];
        conn.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"250 OK\r\n");
        assert_eq!(
            conn.inner.writes,
            [b"Subject: x\r\n\r\nbody\r\n.\r\n".to_vec()],
            "one write"
        );
        // Past what is held, what was held goes first, then the rest.
        let big = vec![b'a'; HOLD_AT_MOST];
        conn.write_all(&big).await.unwrap();
        conn.write_all(b"tail").await.unwrap();
        assert_eq!(conn.inner.writes.len(), 2);
        assert_eq!(conn.inner.writes[1], big);
        conn.shutdown().await.unwrap();
        assert_eq!(conn.inner.writes.len(), 3);
        assert_eq!(conn.inner.writes[2], b"tail");
    }
}
