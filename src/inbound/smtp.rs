//! kci's own SMTP listener for key submissions (`[keys] smtp_listen`), for
//! operators without an MTA pipe: the submission address's MX (or the
//! MTA's relay) hands mail for it to kci, which answers each message with
//! the outcome of [`super::handle`]: 250 taken (or refused, and the sender
//! told why), 554 unreadable, 451 try again later.
//!
//! Deliberately small (RFC 5321's minimum: EHLO/HELO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT): one recipient, the submission address; no relaying,
//! no AUTH, no STARTTLS — run it on loopback or a private network behind
//! the MTA that faces the Internet. Every line and message is bounded, and
//! a silent client is dropped.

use super::{Handled, MAX_MAIL};
use crate::config::Config;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The longest command line read (RFC 5321 allows 512; some clients send
/// more parameters).
const MAX_COMMAND: usize = 2048;
/// Sessions served at once.
const MAX_SESSIONS: usize = 16;
/// A client silent for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);

/// What the listener needs to handle mail.
#[derive(Clone)]
pub struct Listener {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Wakes the delivery worker for the confirmation mails.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Listener {
    /// Serves `socket` until `shutdown`.
    pub async fn serve(self, socket: TcpListener, shutdown: crate::shutdown::Shutdown) {
        let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
        loop {
            let accepted = tokio::select! {
                a = socket.accept() => a,
                _ = shutdown.wait() => return,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            let Ok(permit) = sessions.clone().try_acquire_owned() else {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"421 4.3.2 too many connections, try again later\r\n")
                    .await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = this.session(stream).await {
                    tracing::debug!(%peer, error = %e, "SMTP session ended");
                }
            });
        }
    }

    async fn session(&self, stream: TcpStream) -> std::io::Result<()> {
        let submission = self
            .config
            .keys
            .submission_address
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let host = submission
            .rsplit_once('@')
            .map_or("kci", |(_, d)| d)
            .to_string();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write
            .write_all(format!("220 {host} kci key submission ESMTP\r\n").as_bytes())
            .await?;
        let (mut from, mut to) = (false, false);
        loop {
            let Some(line) = read_line(&mut read, MAX_COMMAND).await? else {
                return Ok(());
            };
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
            let reply = match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    format!("250-{host}\r\n250-SIZE {MAX_MAIL}\r\n250-8BITMIME\r\n250 SMTPUTF8")
                }
                "HELO" => format!("250 {host}"),
                "MAIL" if arg.to_ascii_uppercase().starts_with("FROM:") => {
                    from = true;
                    to = false;
                    "250 2.1.0 OK".into()
                }
                "RCPT" if !from => "503 5.5.1 MAIL first".into(),
                "RCPT" => match path(arg) {
                    Some(addr) if addr.eq_ignore_ascii_case(&submission) => {
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
                    let reply = match read_data(&mut read).await? {
                        Some(mail) => self.reply(&mail).await,
                        None => format!("552 5.3.4 the message is larger than {MAX_MAIL} bytes"),
                    };
                    (from, to) = (false, false);
                    reply
                }
                "RSET" => {
                    (from, to) = (false, false);
                    "250 2.0.0 OK".into()
                }
                "NOOP" => "250 2.0.0 OK".into(),
                "QUIT" => {
                    write.write_all(b"221 2.0.0 Bye\r\n").await?;
                    return Ok(());
                }
                "STARTTLS" | "AUTH" => "502 5.5.1 not here: kci listens behind the MTA".into(),
                _ => "500 5.5.2 unknown command".into(),
            };
            write.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }

    async fn reply(&self, mail: &[u8]) -> String {
        let outcome = super::handle(self.store.as_ref(), &self.config, mail).await;
        self.wake.notify_one();
        let one_line = |s: &str| s.replace(['\r', '\n'], " ");
        match outcome {
            Handled::Accepted(words) | Handled::Refused(words) => {
                tracing::info!(outcome = %words, "key submission by SMTP");
                format!("250 2.0.0 {}", one_line(&words))
            }
            Handled::Unreadable(e) => format!("554 5.6.0 {}", one_line(&e.to_string())),
            Handled::Unavailable(words) => format!("451 4.3.0 {}", one_line(&words)),
        }
    }
}

/// The address of a `MAIL FROM:<…>` or `RCPT TO:<…>` argument.
fn path(arg: &str) -> Option<&str> {
    let start = arg.find('<')? + 1;
    let end = arg[start..].find('>')? + start;
    Some(arg[start..end].trim())
}

/// One line (with its end), at most `limit` bytes; `None` at end of input.
/// A longer line, or silence past [`IDLE`], ends the session.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
    limit: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = tokio::time::timeout(
        IDLE,
        read.take(limit as u64 + 1).read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long",
        ));
    }
    Ok(Some(line))
}

/// The message after DATA, dot-unstuffed, up to the lone `.`; `None` if
/// it grew past [`MAX_MAIL`] (the rest is read and dropped).
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut mail = Vec::new();
    let mut too_big = false;
    loop {
        let Some(line) = read_line(read, 64 * 1024).await? else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in DATA",
            ));
        };
        if line == b".\r\n" || line == b".\n" {
            return Ok((!too_big).then_some(mail));
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

    #[tokio::test]
    async fn data_is_unstuffed_and_bounded() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\nplain\r\n.\r\n";
        let mut r = BufReader::new(&input[..]);
        let mail = read_data(&mut r).await.unwrap().unwrap();
        assert_eq!(mail, b"Subject: x\r\n\r\n.leading dot\r\nplain\r\n");
        let big = format!("{}\r\n", "a".repeat(1000)).repeat(300) + ".\r\n";
        let mut r = BufReader::new(big.as_bytes());
        assert_eq!(read_data(&mut r).await.unwrap(), None);
        assert_eq!(
            path("TO:<Keys@ISP.example> NOTIFY=NEVER"),
            Some("Keys@ISP.example")
        );
        assert_eq!(path("TO:keys@isp.example"), None);
    }
}
