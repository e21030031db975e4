//! kci's own SMTP listener for key submissions (`[keys] smtp_listen`), for
//! operators without an MTA pipe: the submission address's MX (or the
//! MTA's relay) hands mail for it to kci, which answers each message
//! alike — 250, received, the address's owner is told by mail (whether a
//! key was taken or refused, and why, goes to that owner, never to
//! whoever is talking SMTP) — or 554 unreadable, 451 try again later.
//!
//! Deliberately small (RFC 5321's minimum: EHLO/HELO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT, and STARTTLS): one recipient, the submission address;
//! no relaying, no AUTH — run it behind the MTA that faces the Internet.
//! With `[keys.smtp_tls]` it offers STARTTLS (RFC 3207), by default
//! requires it before any mail, and can require the MTA's client
//! certificate from a CA; plaintext pipelined after STARTTLS is dropped,
//! never read as if it came over TLS. Every line and message is bounded; a
//! silent client is dropped, and so is one whose session runs past its
//! deadline or its command budget (a client cannot hold one of the few
//! sessions with NOOPs). The dialogue itself ([`dialogue`]) reads any
//! buffered reader and hands messages to any [`Handler`], so it can be
//! driven (and fuzzed) without a network or a store.

use super::{Handled, MAX_MAIL};
use crate::config::Config;
use crate::store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The longest command line read (RFC 5321 allows 512; some clients send
/// more parameters).
const MAX_COMMAND: usize = 2048;
/// The longest line of a message read after DATA.
const MAX_DATA_LINE: usize = 64 * 1024;

/// What one client may take of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sessions served at once; one more is told 421 and closed.
    pub sessions: usize,
    /// A client silent for this long is told 421 and closed.
    pub idle: Duration,
    /// A whole session: past it the client is told 421 and closed.
    pub session: Duration,
    /// Commands in one session (every verb counts); one more is answered
    /// 421 and the session closed.
    pub commands: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions: 16,
            idle: Duration::from_secs(60),
            session: Duration::from_secs(5 * 60),
            commands: 50,
        }
    }
}

/// What the listener does with a message it took: the whole reply line
/// (`250 …`, `554 …`, `451 …`, without the line end).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, mail: Vec<u8>) -> impl Future<Output = String> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    fn handle(&self, mail: Vec<u8>) -> impl Future<Output = String> + Send {
        self(mail)
    }
}

/// Who the listener is to a client: the host name it greets with, and the
/// one address it takes mail for (lower-case).
#[derive(Debug, Clone)]
pub struct Names {
    pub host: String,
    pub submission: String,
}

impl Names {
    pub fn new(submission: &str) -> Names {
        let submission = submission.to_ascii_lowercase();
        let host = submission
            .rsplit_once('@')
            .map_or("kci", |(_, d)| d)
            .to_string();
        Names { host, submission }
    }
}

/// The one reply to a message kci took, whatever became of it.
pub const RECEIVED: &str = "250 2.0.0 received; the address's owner is told by mail";

/// What the listener needs to handle mail.
/// Where a session stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// No certificate: STARTTLS is not offered.
    Unavailable,
    /// Offered; `required`: no mail is taken before it.
    Offered { required: bool },
    /// The session is encrypted.
    Active,
}

/// How one part of a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// QUIT, a limit, or the client gone.
    Closed,
    /// The client asked for STARTTLS and was told to go ahead.
    StartTls,
}

/// What a session carries across STARTTLS.
struct Session {
    tls: TlsState,
    deadline: Instant,
    commands: usize,
}

/// The listener's TLS: the reloadable certificate and whether it is
/// required.
#[derive(Clone)]
pub struct ListenerTls {
    pub tls: Arc<crate::web::tls::Tls>,
    pub required: bool,
}

#[derive(Clone)]
pub struct Listener {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Wakes the delivery worker for the confirmation mails.
    pub wake: Arc<crate::schedule::Wake>,
    /// Where limits hit are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// STARTTLS, with `[keys.smtp_tls]`.
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// Serves `socket` until `shutdown`.
    pub async fn serve(self, socket: TcpListener, shutdown: crate::shutdown::Shutdown) {
        let names = Names::new(
            self.config
                .keys
                .submission_address
                .as_deref()
                .unwrap_or_default(),
        );
        let tls = self.tls.clone();
        let this = Arc::new(self);
        // Each client's messages count against the limit of its address.
        let handler = move |peer: std::net::IpAddr| {
            let this = this.clone();
            move |mail: Vec<u8>| {
                let this = this.clone();
                async move { this.reply(&mail, peer).await }
            }
        };
        serve(socket, shutdown, Limits::default(), names, tls, handler).await;
    }

    async fn reply(&self, mail: &[u8], peer: std::net::IpAddr) -> String {
        let outcome = super::handle_from(
            self.store.as_ref(),
            &self.config,
            mail,
            Some(format!("smtp:{peer}")),
            Some(&self.metrics),
        )
        .await;
        self.wake.notify_one();
        match &outcome {
            Handled::Accepted(words) | Handled::Refused(words) => {
                tracing::info!(outcome = %words, "key submission by SMTP");
            }
            Handled::Unreadable(e) => tracing::info!(error = %e, "unreadable mail by SMTP"),
            Handled::Unavailable(words) => {
                tracing::warn!(why = %words, "cannot take key submissions by SMTP now");
            }
        }
        reply_line(&outcome)
    }
}

/// The SMTP reply to a message: the same for every message kci took,
/// whether the key was registered or refused — the submitter may be
/// anyone, and only the address's owner is told (by mail) what happened.
/// Only an unreadable mail (554, with what is wrong with it) and kci's own
/// trouble (451, try later; the reason goes to the log) differ.
pub fn reply_line(outcome: &Handled) -> String {
    match outcome {
        Handled::Accepted(_) | Handled::Refused(_) => RECEIVED.to_string(),
        Handled::Unreadable(e) => format!("554 5.6.0 {}", e.to_string().replace(['\r', '\n'], " ")),
        Handled::Unavailable(_) => "451 4.3.0 cannot take mail now; try again later".to_string(),
    }
}

/// Serves `socket` until `shutdown`: at most `limits.sessions` at once,
/// each a [`dialogue`] handing messages to the handler `handler` makes
/// for the client's address, upgraded to TLS on STARTTLS when `tls`.
pub async fn serve<H, M>(
    socket: TcpListener,
    shutdown: crate::shutdown::Shutdown,
    limits: Limits,
    names: Names,
    tls: Option<ListenerTls>,
    handler: M,
) where
    H: Handler,
    M: Fn(std::net::IpAddr) -> H,
{
    let sessions = Arc::new(tokio::sync::Semaphore::new(limits.sessions));
    let names = Arc::new(names);
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = shutdown.wait() => return,
        };
        let Ok((mut stream, peer)) = accepted else {
            continue;
        };
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            // Told without waiting on the client: the write goes to the
            // socket's buffer or not at all.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(b"421 4.3.2 too many connections, try again later\r\n"),
                )
                .await;
            });
            continue;
        };
        let (names, handler, tls) = (names.clone(), handler(peer.ip()), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = session(stream, &names, limits, tls, &handler).await {
                tracing::debug!(%peer, error = %e, "SMTP session ended");
            }
        });
    }
}

/// One client's session: in clear, then, after STARTTLS, over TLS.
async fn session<H: Handler>(
    stream: tokio::net::TcpStream,
    names: &Names,
    limits: Limits,
    tls: Option<ListenerTls>,
    handler: &H,
) -> std::io::Result<()> {
    let mut state = Session {
        tls: match &tls {
            Some(t) => TlsState::Offered {
                required: t.required,
            },
            None => TlsState::Unavailable,
        },
        deadline: Instant::now() + limits.session,
        commands: 0,
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let ended = run(
        &mut read, &mut write, names, limits, handler, &mut state, true,
    )
    .await?;
    let (Ended::StartTls, Some(tls)) = (ended, tls) else {
        return Ok(());
    };
    // Whatever the client sent after STARTTLS in clear is dropped with
    // the buffer: only what comes over TLS is read (RFC 3207 §6).
    let stream = read
        .into_inner()
        .reunite(write)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let handshake = tokio::time::timeout(limits.idle, tls.tls.acceptor().accept(stream));
    let stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("TLS handshake timed out")),
    };
    state.tls = TlsState::Active;
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    run(
        &mut read, &mut write, names, limits, handler, &mut state, false,
    )
    .await?;
    Ok(())
}

/// What came from the client.
enum Input {
    Line(Vec<u8>),
    /// The client closed the connection.
    End,
    /// Silent past [`Limits::idle`].
    Idle,
    /// The session ran past [`Limits::session`].
    Deadline,
}

/// One SMTP session on `read`/`write` without TLS, from the greeting to
/// QUIT (or to a limit): messages taken go to `handler`, whose reply is
/// the answer.
pub async fn dialogue<R, W, H>(
    read: &mut R,
    write: &mut W,
    names: &Names,
    limits: Limits,
    handler: &H,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
    H: Handler,
{
    let mut state = Session {
        tls: TlsState::Unavailable,
        deadline: Instant::now() + limits.session,
        commands: 0,
    };
    run(read, write, names, limits, handler, &mut state, true).await?;
    Ok(())
}

/// The commands of a session until QUIT, a limit, or STARTTLS; `greet`:
/// say 220 first (not after STARTTLS, RFC 3207).
async fn run<R, W, H>(
    read: &mut R,
    write: &mut W,
    names: &Names,
    limits: Limits,
    handler: &H,
    state: &mut Session,
    greet: bool,
) -> std::io::Result<Ended>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
    H: Handler,
{
    let Names { host, submission } = names;
    let bounds = Bounds {
        idle: limits.idle,
        deadline: state.deadline,
    };
    if greet {
        write
            .write_all(format!("220 {host} kci key submission ESMTP\r\n").as_bytes())
            .await?;
    }
    let (mut from, mut to) = (false, false);
    loop {
        let line = match read_line(read, MAX_COMMAND, bounds).await? {
            Input::Line(line) => line,
            Input::End => return Ok(Ended::Closed),
            Input::Idle => return close(write, host, "idle too long").await,
            Input::Deadline => return close(write, host, "session too long").await,
        };
        state.commands += 1;
        if state.commands > limits.commands {
            return close(write, host, "too many commands in one session").await;
        }
        let must_tls = state.tls == TlsState::Offered { required: true };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                let starttls = if matches!(state.tls, TlsState::Offered { .. }) {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!(
                    "250-{host}\r\n{starttls}250-SIZE {MAX_MAIL}\r\n250-8BITMIME\r\n250 SMTPUTF8"
                )
            }
            "MAIL" | "RCPT" | "DATA" if must_tls => {
                "530 5.7.0 Must issue a STARTTLS command first".into()
            }
            "STARTTLS" if matches!(state.tls, TlsState::Offered { .. }) => {
                write.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                return Ok(Ended::StartTls);
            }
            "STARTTLS" if state.tls == TlsState::Active => "503 5.5.1 TLS already active".into(),
            "HELO" => format!("250 {host}"),
            "MAIL" if arg.to_ascii_uppercase().starts_with("FROM:") => {
                from = true;
                to = false;
                "250 2.1.0 OK".into()
            }
            "RCPT" if !from => "503 5.5.1 MAIL first".into(),
            "RCPT" => match path(arg) {
                Some(addr) if addr.eq_ignore_ascii_case(submission) => {
                    to = true;
                    "250 2.1.5 OK".into()
                }
                _ => format!("550 5.1.1 only <{submission}> takes mail here"),
            },
            "DATA" if !to => "503 5.5.1 RCPT first".into(),
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let reply = match read_data(read, bounds).await? {
                    Data::Mail(mail) => handler.handle(mail).await,
                    Data::TooLarge => {
                        format!("552 5.3.4 the message is larger than {MAX_MAIL} bytes")
                    }
                    Data::Ended(Input::Idle) => return close(write, host, "idle too long").await,
                    Data::Ended(Input::Deadline) => {
                        return close(write, host, "session too long").await;
                    }
                    Data::Ended(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "connection closed in DATA",
                        ));
                    }
                };
                (from, to) = (false, false);
                reply.replace(['\r', '\n'], " ")
            }
            "RSET" => {
                (from, to) = (false, false);
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(Ended::Closed);
            }
            "STARTTLS" | "AUTH" => "502 5.5.1 not here: kci listens behind the MTA".into(),
            _ => "500 5.5.2 unknown command".into(),
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

/// Tells the client why the session ends (RFC 5321's 421) and ends it.
async fn close<W: AsyncWrite + Unpin>(
    write: &mut W,
    host: &str,
    why: &str,
) -> std::io::Result<Ended> {
    write
        .write_all(format!("421 4.4.2 {host} {why}, closing\r\n").as_bytes())
        .await?;
    write.shutdown().await?;
    Ok(Ended::Closed)
}

/// How long a read may wait: for the next byte, and in all.
#[derive(Clone, Copy)]
struct Bounds {
    idle: Duration,
    deadline: Instant,
}

/// The address of a `MAIL FROM:<…>` or `RCPT TO:<…>` argument.
fn path(arg: &str) -> Option<&str> {
    let start = arg.find('<')? + 1;
    let end = arg[start..].find('>')? + start;
    Some(arg[start..end].trim())
}

/// One line (with its end), at most `limit` bytes, within `bounds`. A
/// longer line ends the session.
async fn read_line<R: AsyncBufRead + Unpin>(
    read: &mut R,
    limit: usize,
    bounds: Bounds,
) -> std::io::Result<Input> {
    let mut line = Vec::new();
    let until = bounds.deadline.min(Instant::now() + bounds.idle);
    let mut limited = read.take(limit as u64 + 1);
    let Ok(n) = tokio::time::timeout_at(until, limited.read_until(b'\n', &mut line)).await else {
        return Ok(if Instant::now() >= bounds.deadline {
            Input::Deadline
        } else {
            Input::Idle
        });
    };
    if n? == 0 {
        return Ok(Input::End);
    }
    if line.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long",
        ));
    }
    Ok(Input::Line(line))
}

/// What came after DATA.
enum Data {
    /// The message, dot-unstuffed.
    Mail(Vec<u8>),
    /// It grew past [`MAX_MAIL`] (the rest was read and dropped).
    TooLarge,
    /// The input ended (closed, silent, or out of time) before the `.`.
    Ended(Input),
}

/// The message after DATA, up to the lone `.`.
async fn read_data<R: AsyncBufRead + Unpin>(read: &mut R, bounds: Bounds) -> std::io::Result<Data> {
    let mut mail = Vec::new();
    let mut too_big = false;
    loop {
        let line = match read_line(read, MAX_DATA_LINE, bounds).await? {
            Input::Line(line) => line,
            other => return Ok(Data::Ended(other)),
        };
        if line == b".\r\n" || line == b".\n" {
            return Ok(if too_big {
                Data::TooLarge
            } else {
                Data::Mail(mail)
            });
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if mail.len() + line.len() > MAX_MAIL {
            too_big = true;
            mail.clear();
        }
        if !too_big {
            mail.extend_from_slice(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forever() -> Bounds {
        Bounds {
            idle: Duration::from_secs(60),
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn data_is_unstuffed_and_bounded() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\nplain\r\n.\r\n";
        let mut r = BufReader::new(&input[..]);
        let Data::Mail(mail) = read_data(&mut r, forever()).await.unwrap() else {
            panic!("a mail");
        };
        assert_eq!(mail, b"Subject: x\r\n\r\n.leading dot\r\nplain\r\n");
        let big = format!("{}\r\n", "a".repeat(1000)).repeat(300) + ".\r\n";
        let mut r = BufReader::new(big.as_bytes());
        assert!(matches!(
            read_data(&mut r, forever()).await.unwrap(),
            Data::TooLarge
        ));
        assert_eq!(
            path("TO:<Keys@ISP.example> NOTIFY=NEVER"),
            Some("Keys@ISP.example")
        );
        assert_eq!(path("TO:keys@isp.example"), None);
    }

    /// The dialogue on `input`, every message answered `250 taken`: what
    /// the client is told, and the messages handed over.
    async fn talk(input: &[u8], limits: Limits) -> (String, Vec<Vec<u8>>) {
        let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = taken.clone();
        let handler = move |mail: Vec<u8>| {
            seen.lock().unwrap().push(mail);
            async { "250 taken".to_string() }
        };
        let mut out = Vec::new();
        let names = Names::new("Keys@ISP.example");
        let _ = dialogue(
            &mut BufReader::new(input),
            &mut out,
            &names,
            limits,
            &handler,
        )
        .await;
        let taken = taken.lock().unwrap().clone();
        (String::from_utf8(out).unwrap(), taken)
    }

    #[tokio::test]
    async fn a_message_goes_to_the_handler_and_its_reply_to_the_client() {
        let (said, taken) = talk(
            b"EHLO mta.example\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@isp.example>\r\n\
              RCPT TO:<keys@isp.example>\r\nDATA\r\nFrom: alice@example.com\r\n\r\nhi\r\n.\r\nQUIT\r\n",
            Limits::default(),
        )
        .await;
        assert_eq!(
            taken,
            vec![b"From: alice@example.com\r\n\r\nhi\r\n".to_vec()]
        );
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines[0], "220 isp.example kci key submission ESMTP");
        assert!(lines.contains(&"550 5.1.1 only <keys@isp.example> takes mail here"));
        assert!(lines.contains(&"250 taken"), "{said}");
        assert_eq!(lines.last(), Some(&"221 2.0.0 Bye"));
    }

    #[test]
    fn the_reply_to_a_message_tells_the_submitter_nothing() {
        let accepted = Handled::Accepted(
            "key 0123456789ABCDEF0123456789ABCDEF01234567 for alice@example.com: replacement 0190-abc requested (proof from the current key: false)".into(),
        );
        let pending = Handled::Accepted(
            "key 0123456789ABCDEF0123456789ABCDEF01234567 for alice@example.com pending; confirmation sent".into(),
        );
        let refused = Handled::Refused(
            "key for alice@example.com refused: it is revoked; the sender was told".into(),
        );
        for outcome in [accepted, pending, refused] {
            assert_eq!(reply_line(&outcome), RECEIVED);
        }
        assert_eq!(
            reply_line(&Handled::Unreadable(super::super::InboundError::NoSender)),
            "554 5.6.0 the mail has no sender address (From)"
        );
        let trouble = reply_line(&Handled::Unavailable(
            "the store is unavailable (connection refused to db.internal:5432)".into(),
        ));
        assert!(trouble.starts_with("451 4.3.0 "), "{trouble}");
        assert!(!trouble.contains("db.internal"), "{trouble}");
    }

    #[tokio::test]
    async fn noop_keepalive_cannot_hold_the_smtp_listener() {
        use tokio::io::AsyncBufReadExt;
        let limits = Limits {
            sessions: 4,
            idle: Duration::from_secs(60),
            session: Duration::from_millis(1500),
            commands: 50,
        };
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let shutdown = crate::shutdown::Shutdown::default();
        let handler = |_peer| |_mail: Vec<u8>| async { RECEIVED.to_string() };
        tokio::spawn(serve(
            socket,
            shutdown.clone(),
            limits,
            Names::new("keys@isp.example"),
            None,
            handler,
        ));
        async fn client(
            addr: std::net::SocketAddr,
        ) -> (
            BufReader<tokio::net::tcp::OwnedReadHalf>,
            tokio::net::tcp::OwnedWriteHalf,
            String,
        ) {
            let (r, w) = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap()
                .into_split();
            let mut r = BufReader::new(r);
            let mut greeting = String::new();
            r.read_line(&mut greeting).await.unwrap();
            (r, w, greeting)
        }
        // Every session held by a client that says NOOP ten times a second.
        let started = Instant::now();
        let mut holders = Vec::new();
        for _ in 0..limits.sessions {
            let (mut r, mut w, greeting) = client(addr).await;
            assert!(greeting.starts_with("220 "), "{greeting}");
            holders.push(tokio::spawn(async move {
                loop {
                    w.write_all(b"NOOP\r\n").await.unwrap();
                    let mut reply = String::new();
                    if r.read_line(&mut reply).await.unwrap() == 0 || !reply.starts_with("250") {
                        return reply;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        // Meanwhile a newcomer is turned away.
        let (_, _, greeting) = client(addr).await;
        assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
        // The session deadline ends every holder.
        for holder in holders {
            let last = holder.await.unwrap();
            assert!(
                last.starts_with("421 4.4.2 isp.example session too long"),
                "{last}"
            );
        }
        let took = started.elapsed();
        assert!(
            took >= limits.session && took < limits.session * 3,
            "{took:?}"
        );
        // And the next client is served.
        let (mut r, mut w, greeting) = client(addr).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        // Commands as fast as they come: the budget ends the session.
        w.write_all(b"NOOP\r\n".repeat(60).as_slice())
            .await
            .unwrap();
        let mut replies = Vec::new();
        loop {
            let mut reply = String::new();
            if r.read_line(&mut reply).await.unwrap_or(0) == 0 {
                break;
            }
            replies.push(reply);
        }
        assert_eq!(replies.len(), limits.commands + 1, "{replies:?}");
        assert!(
            replies[..limits.commands]
                .iter()
                .all(|r| r.starts_with("250 "))
        );
        assert!(
            replies[limits.commands].starts_with("421 4.4.2 isp.example too many commands"),
            "{replies:?}"
        );
        shutdown.trigger();
    }
}
