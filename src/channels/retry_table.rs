//! One table of provider behaviours that every channel must read alike:
//! what is delivered, what is worth retrying (and when), what is final —
//! and that no credential of the channel ever shows in the failure. Each
//! HTTP channel runs through every row against a local stand-in answering
//! in that provider's own error shape; email over SMTP runs through the
//! same idea in SMTP's terms (4xx replies transient, 5xx final).

use super::testkit::{Answer, Provider, closed_port, outgoing};
use super::{Channel, DeliveryError};
use std::sync::Arc;
use std::time::Duration;

/// A channel's request timeout in the table: short, so a hanging
/// provider costs the test little.
const TIMEOUT: &str = "300ms";

/// What the stand-in provider does.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers with this status (and `Retry-After: 7` when the row says).
    Status(u16),
    /// 429 with `Retry-After: 7`.
    RateLimited,
    /// Accepts the connection and the request, and never answers.
    Hangs,
    /// Nobody listens: the connection is refused.
    Refuses,
}

/// What kci must make of it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Sent,
    Transient(Option<Duration>),
    Permanent,
}

const ROWS: &[(Behaviour, Expect)] = &[
    (Behaviour::Status(200), Expect::Sent),
    (
        Behaviour::RateLimited,
        Expect::Transient(Some(Duration::from_secs(7))),
    ),
    (Behaviour::Status(500), Expect::Transient(None)),
    (Behaviour::Status(502), Expect::Transient(None)),
    (Behaviour::Status(503), Expect::Transient(None)),
    (Behaviour::Status(408), Expect::Transient(None)),
    (Behaviour::Status(400), Expect::Permanent),
    (Behaviour::Status(401), Expect::Permanent),
    (Behaviour::Status(403), Expect::Permanent),
    (Behaviour::Status(404), Expect::Permanent),
    (Behaviour::Hangs, Expect::Transient(None)),
    (Behaviour::Refuses, Expect::Transient(None)),
];

/// One HTTP channel as the table drives it.
struct Subject {
    name: &'static str,
    /// Every credential configured, none of which may show in an error.
    secrets: &'static [&'static str],
    /// The channel, pointed at the provider at `base`.
    build: fn(base: &str) -> Arc<dyn Channel>,
    /// The destination of the notice, with the provider at `base`.
    uri: fn(base: &str) -> String,
    /// The provider's answer when it accepts.
    success: (u16, &'static str),
    /// The provider's own error body for a status.
    error_body: fn(status: u16) -> String,
}

fn toml<T: serde::de::DeserializeOwned>(text: String) -> T {
    toml::from_str(&text).expect("a valid channel config")
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NTFY_TOKEN: &str = "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2";
const TELEGRAM_TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const PUSHOVER_TOKEN: &str = "azGDORePK8gMaC0QOYAMyEEuzJnyUi";
const SIGNAL_TOKEN: &str = "sig_0c1f9a7e55d24b0b9b7e";
const MATRIX_TOKEN: &str = "syt_a2NpLWJvdA_secretsecret";
const LETTER_TOKEN: &str = "pp_live_7f3a9c1e5b2d4f60";
const X_REFRESH: &str = "rt-0_WVdGaVkyUmxabWRvYVdwcmJHMXViMw";
const X_SECRET: &str = "xcs_T2F1dGgyQ2xpZW50U2VjcmV0";
const X_ACCESS: &str = "at-1_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4";
const WHATSAPP_TOKEN: &str = "EAAJB3Zz9ZC0sBOretrytableTOKEN";
const WHATSAPP_APP_SECRET: &str = "6f1d1c0a0b2e4a9cretrytable";

fn subjects() -> Vec<Subject> {
    vec![
        Subject {
            name: "webhook",
            secrets: &[WEBHOOK_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            build: |_| {
                let cfg: crate::channels::WebhookConfig = toml(format!(
                    // The stand-in receiver is on loopback.
                    "secret = \"{WEBHOOK_SECRET}\"\ntimeout = \"{TIMEOUT}\"\nallow_private = true"
                ));
                Arc::new(super::webhook::WebhookChannel::from_config(&cfg).unwrap())
            },
            uri: |base| format!("{base}/hooks/kci"),
            success: (204, ""),
            error_body: |status| format!("receiver says {status}"),
        },
        Subject {
            name: "ntfy",
            secrets: &[NTFY_TOKEN],
            build: |base| {
                let cfg: super::ntfy::NtfyConfig = toml(format!(
                    "url = \"{base}\"\ntoken = \"{NTFY_TOKEN}\"\ntimeout = \"{TIMEOUT}\""
                ));
                Arc::new(super::ntfy::NtfyChannel::from_config(&cfg).unwrap())
            },
            uri: |_| "ntfy:alerts".into(),
            success: (
                200,
                r#"{"id":"hwQ2YpKdmg","time":1735689600,"event":"message","topic":"alerts","message":"x"}"#,
            ),
            error_body: |status| {
                format!(
                    r#"{{"code":{status}01,"http":{status},"error":"{}","link":"https://ntfy.sh/docs/publish/"}}"#,
                    reason_phrase(status)
                )
            },
        },
        Subject {
            name: "telegram",
            secrets: &[TELEGRAM_TOKEN, "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"],
            build: |base| {
                let cfg: super::telegram::TelegramConfig = toml(format!(
                    "api = \"{base}\"\nbot_token = \"{TELEGRAM_TOKEN}\"\ntimeout = \"{TIMEOUT}\""
                ));
                Arc::new(super::telegram::TelegramChannel::from_config(&cfg).unwrap())
            },
            uri: |_| "telegram:123456789".into(),
            success: (
                200,
                r#"{"ok":true,"result":{"message_id":4711,"chat":{"id":123456789,"type":"private"},"date":1735689600,"text":"x"}}"#,
            ),
            error_body: |status| {
                match status {
                429 => r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#.into(),
                _ => format!(
                    r#"{{"ok":false,"error_code":{status},"description":"{}"}}"#,
                    reason_phrase(status)
                ),
            }
            },
        },
        Subject {
            name: "pushover",
            secrets: &[PUSHOVER_TOKEN],
            build: |base| {
                let cfg: super::pushover::PushoverConfig = toml(format!(
                    "api = \"{base}\"\ntoken = \"{PUSHOVER_TOKEN}\"\ntimeout = \"{TIMEOUT}\""
                ));
                Arc::new(super::pushover::PushoverChannel::from_config(&cfg).unwrap())
            },
            uri: |_| "pushover:uQiRzpo4DXghDmr9QzzfQu27cmVRsG".into(),
            success: (
                200,
                r#"{"status":1,"request":"647d2300-702c-4b38-8b2f-d56326ae460b"}"#,
            ),
            error_body: |status| {
                format!(
                    r#"{{"status":0,"errors":["{}"],"request":"5042853c-402d-4a18-abcb-168734a801de"}}"#,
                    reason_phrase(status)
                )
            },
        },
        Subject {
            name: "signal",
            secrets: &[SIGNAL_TOKEN],
            build: |base| {
                let cfg: super::signal::SignalConfig = toml(format!(
                    "url = \"{base}\"\nnumber = \"+447700900999\"\ntoken = \"{SIGNAL_TOKEN}\"\ntimeout = \"{TIMEOUT}\""
                ));
                Arc::new(super::signal::SignalChannel::from_config(&cfg).unwrap())
            },
            uri: |_| "signal:+447700900123".into(),
            success: (201, r#"{"timestamp":"1735689600123"}"#),
            error_body: |status| {
                format!(
                    r#"{{"error":"Failed to send message: {}"}}"#,
                    reason_phrase(status)
                )
            },
        },
        Subject {
            name: "letter (print-and-post upload)",
            secrets: &[LETTER_TOKEN],
            build: |base| {
                let cfg: super::letter::LetterConfig = toml(format!(
                    "upload = \"{base}/v1/letters\"\ntoken = \"{LETTER_TOKEN}\"\ntimeout = \"{TIMEOUT}\""
                ));
                Arc::new(super::letter::LetterChannel::from_config(&cfg, "Example ISP").unwrap())
            },
            uri: |_| "postal:account".into(),
            success: (201, r#"{"id":"ltr_8c41d2","status":"accepted"}"#),
            error_body: |status| format!(r#"{{"error":"{}"}}"#, reason_phrase(status)),
        },
        Subject {
            name: "matrix (room id)",
            secrets: &[MATRIX_TOKEN],
            build: matrix,
            uri: |_| "matrix:roomid/oGEIdfdOVebCBzdP:example.org".into(),
            success: (200, r#"{"event_id":"$YUwRidLecu:example.org"}"#),
            error_body: matrix_error,
        },
        Subject {
            name: "matrix (alias)",
            secrets: &[MATRIX_TOKEN],
            build: matrix,
            uri: |_| "matrix:r/support:example.org".into(),
            // One stand-in answers both the lookup and the send.
            success: (
                200,
                r#"{"room_id":"!abc:example.org","servers":["example.org"],"event_id":"$e"}"#,
            ),
            error_body: matrix_error,
        },
        Subject {
            name: "x",
            secrets: &[X_REFRESH, X_SECRET, X_ACCESS],
            build: x,
            uri: |_| "x:2244994945".into(),
            success: (
                201,
                r#"{"data":{"dm_conversation_id":"1582103724607971328-2244994945","dm_event_id":"1582838223281184768"}}"#,
            ),
            error_body: |status| {
                match status {
                // X's errors array and its problem details.
                400 => r#"{"errors":[{"message":"The `text` field is invalid"}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.twitter.com/2/problems/invalid-request"}"#.into(),
                _ => format!(
                    r#"{{"title":"{0}","detail":"{0}","type":"about:blank","status":{status}}}"#,
                    reason_phrase(status)
                ),
            }
            },
        },
        Subject {
            name: "whatsapp",
            secrets: &[WHATSAPP_TOKEN, WHATSAPP_APP_SECRET],
            build: |base| {
                let cfg: super::whatsapp::WhatsAppConfig = toml(format!(
                    "api = \"{base}/v21.0\"\nphone_number_id = \"106540352242922\"\naccess_token = \"{WHATSAPP_TOKEN}\"\napp_secret = \"{WHATSAPP_APP_SECRET}\"\ntimeout = \"{TIMEOUT}\""
                ));
                Arc::new(super::whatsapp::WhatsAppChannel::from_config(&cfg).unwrap())
            },
            uri: |_| "whatsapp:+447700900123".into(),
            success: (
                200,
                r#"{"messaging_product":"whatsapp","contacts":[{"input":"+447700900123","wa_id":"447700900123"}],"messages":[{"id":"wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQjBGQTM4NUYwNTlDMkQxRjRGAA=="}]}"#,
            ),
            error_body: |status| {
                // The Graph API's error, with the code WhatsApp gives for each.
                let (code, message) = match status {
                    400 => (100, "(#100) Invalid parameter"),
                    401 => (190, "Error validating access token: Session has expired"),
                    403 => (
                        10,
                        "(#10) Application does not have permission for this action",
                    ),
                    404 => (
                        100,
                        "Unsupported post request. Object with ID '106540352242922' does not exist",
                    ),
                    408 | 502 | 503 => (2, "Service temporarily unavailable"),
                    429 => (130429, "(#130429) Rate limit hit"),
                    _ => (1, "An unknown error occurred"),
                };
                format!(
                    r#"{{"error":{{"message":"{message}","type":"OAuthException","code":{code},"fbtrace_id":"AbCdEf123"}}}}"#
                )
            },
        },
    ]
}

/// X, with an access token already held (as after a refresh) and its
/// refresh token kept in a real SQLite store: a 401 makes it refresh
/// against the same stand-in, which refuses that too.
fn x(base: &str) -> Arc<dyn Channel> {
    let cfg: super::x::XConfig = toml(format!(
        "api = \"{base}\"\nclient_id = \"M1M5R3BMVy13QmpScXkzTUt5OE46MTpjaQ\"\nclient_secret = \"{X_SECRET}\"\nrefresh_token = \"{X_REFRESH}\"\ntimeout = \"{TIMEOUT}\""
    ));
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            static DIR: std::sync::LazyLock<tempfile::TempDir> =
                std::sync::LazyLock::new(|| tempfile::tempdir().unwrap());
            let db = DIR.path().join(format!("{}.db", crate::model::new_id()));
            let store = crate::store::open(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
            let keep = super::Keep {
                store,
                code_key: crate::trust::codes::CodeKey::random(),
            };
            let ch = super::x::XChannel::from_config(&cfg, Some(keep)).unwrap();
            ch.prime(X_ACCESS).await;
            Arc::new(ch) as Arc<dyn Channel>
        })
    })
}

fn matrix(base: &str) -> Arc<dyn Channel> {
    let cfg: super::matrix::MatrixConfig = toml(format!(
        "homeserver = \"{base}\"\naccess_token = \"{MATRIX_TOKEN}\"\ntimeout = \"{TIMEOUT}\""
    ));
    Arc::new(super::matrix::MatrixChannel::from_config(&cfg).unwrap())
}

fn matrix_error(status: u16) -> String {
    let errcode = match status {
        429 => return r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":7000}"#.into(),
        401 => "M_UNKNOWN_TOKEN",
        403 => "M_FORBIDDEN",
        404 => "M_NOT_FOUND",
        400 => "M_BAD_JSON",
        _ => "M_UNKNOWN",
    };
    format!(
        r#"{{"errcode":"{errcode}","error":"{}"}}"#,
        reason_phrase(status)
    )
}

fn reason_phrase(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// The outcome, checked against the row; `Err` says what was wrong.
fn check(
    got: &Result<super::Receipt, DeliveryError>,
    want: Expect,
    secrets: &[&str],
) -> Result<(), String> {
    match (got, want) {
        (Ok(_), Expect::Sent) => Ok(()),
        (Err(e), Expect::Transient(after)) if e.is_transient() => {
            if e.retry_after() != after {
                return Err(format!("retry_after {:?}, want {after:?}", e.retry_after()));
            }
            no_secrets(e, secrets)
        }
        (Err(e), Expect::Permanent) if e.is_permanent() => no_secrets(e, secrets),
        (got, want) => Err(format!("got {got:?}, want {want:?}")),
    }
}

fn no_secrets(e: &DeliveryError, secrets: &[&str]) -> Result<(), String> {
    let shown = format!("{e} {e:?}");
    match secrets.iter().find(|s| shown.contains(*s)) {
        Some(s) => Err(format!("credential {s} shows in {shown}")),
        None => Ok(()),
    }
}

// Several threads: the X subject sets up its store inside `build`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_channel_reads_every_provider_behaviour_alike() {
    let mut failures = Vec::new();
    for subject in subjects() {
        for &(behaviour, want) in ROWS {
            let provider = match behaviour {
                Behaviour::Status(200) => {
                    let (status, body) = subject.success;
                    Some(Provider::answering(Answer::new(status, body)).await)
                }
                Behaviour::Status(status) => Some(
                    Provider::answering(Answer::new(status, (subject.error_body)(status))).await,
                ),
                Behaviour::RateLimited => Some(
                    Provider::answering(
                        Answer::new(429, (subject.error_body)(429)).header("Retry-After", "7"),
                    )
                    .await,
                ),
                Behaviour::Hangs => Some(Provider::hanging().await),
                Behaviour::Refuses => None,
            };
            let base = provider
                .as_ref()
                .map_or_else(closed_port, |p| p.url.clone());
            let channel = (subject.build)(&base);
            let got = channel
                .deliver(&outgoing(&(subject.uri)(&base), "Line L1 down.", "Line L1"))
                .await;
            if let Err(why) = check(&got, want, subject.secrets) {
                failures.push(format!("{} / {behaviour:?}: {why}", subject.name));
            }
            if let (Behaviour::Hangs, Err(e)) = (behaviour, &got)
                && e.reason() != "timeout"
            {
                failures.push(format!("{} / hangs: reason {}", subject.name, e.reason()));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Email over SMTP: the same table in SMTP's terms.
mod smtp {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    const PASSWORD: &str = "hunter2-smtp-secret";

    /// Where the stand-in SMTP server replies with a failure.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Stage {
        Greeting,
        Auth,
        Mail,
        Rcpt,
        EndOfData,
    }

    /// A failure to say at one stage, or `None` for a server that accepts.
    type Fail = Option<(Stage, &'static str)>;

    /// An SMTP server that says `reply` at `stage` (and 2xx/3xx elsewhere),
    /// or, given no reply, accepts connections and never says anything.
    async fn server(fail: Fail, hang: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                if hang {
                    held.push(sock);
                    continue;
                }
                tokio::spawn(session(sock, fail));
            }
        });
        port
    }

    async fn session(sock: tokio::net::TcpStream, fail: Fail) {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        let say = |stage: Stage, ok: &'static str| match fail {
            Some((s, reply)) if s == stage => reply,
            _ => ok,
        };
        let greeting = say(Stage::Greeting, "220 mx.example ESMTP");
        let _ = w.write_all(format!("{greeting}\r\n").as_bytes()).await;
        if !greeting.starts_with('2') {
            return;
        }
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                say(Stage::EndOfData, "250 2.0.0 queued as 4711")
            } else {
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                match verb.as_str() {
                    "EHLO" => "250-mx.example\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME",
                    "AUTH" => say(Stage::Auth, "235 2.7.0 Authentication successful"),
                    "MAIL" => say(Stage::Mail, "250 2.1.0 Ok"),
                    "RCPT" => say(Stage::Rcpt, "250 2.1.5 Ok"),
                    "DATA" => {
                        in_data = true;
                        "354 End data with <CR><LF>.<CR><LF>"
                    }
                    "QUIT" => "221 2.0.0 Bye",
                    "RSET" | "NOOP" => "250 2.0.0 Ok",
                    _ => "502 5.5.2 Error: command not recognized",
                }
            };
            if w.write_all(format!("{reply}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    fn channel(port: u16) -> super::super::email::EmailChannel {
        let cfg: crate::channels::email::EmailConfig = toml(format!(
            "from = \"Example ISP <kci@isp.example>\"\n\
             smtp = \"smtp://kci:{PASSWORD}@127.0.0.1:{port}?tls=none\"\n\
             timeout = \"{TIMEOUT}\""
        ));
        super::super::email::EmailChannel::from_config(&cfg).unwrap()
    }

    #[tokio::test]
    async fn email_over_smtp_reads_every_server_behaviour_alike() {
        use Stage::*;
        let rows: &[(Fail, bool, Expect)] = &[
            (None, false, Expect::Sent),
            (
                Some((Greeting, "421 4.3.2 Service not available")),
                false,
                Expect::Transient(None),
            ),
            (
                Some((Mail, "452 4.3.1 Insufficient system storage")),
                false,
                Expect::Transient(None),
            ),
            (
                Some((Rcpt, "450 4.2.1 Mailbox busy, try again")),
                false,
                Expect::Transient(None),
            ),
            (
                Some((EndOfData, "451 4.7.1 Greylisted, come back later")),
                false,
                Expect::Transient(None),
            ),
            (
                Some((Auth, "535 5.7.8 Authentication credentials invalid")),
                false,
                Expect::Permanent,
            ),
            (
                Some((Rcpt, "550 5.1.1 No such user here")),
                false,
                Expect::Permanent,
            ),
            (
                Some((EndOfData, "554 5.7.1 Message rejected as spam")),
                false,
                Expect::Permanent,
            ),
            // Accepts the connection, never greets.
            (None, true, Expect::Transient(None)),
        ];
        let mut failures = Vec::new();
        for &(fail, hang, want) in rows {
            let port = server(fail, hang).await;
            let got = channel(port)
                .deliver(&outgoing("mailto:alice@example.com", "x", "Line L1"))
                .await;
            if let Err(why) = check(&got, want, &[PASSWORD]) {
                failures.push(format!("{fail:?} hang={hang}: {why}"));
            }
        }
        // Nobody listening.
        let refused: u16 = closed_port()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap();
        let got = channel(refused)
            .deliver(&outgoing("mailto:alice@example.com", "x", "Line L1"))
            .await;
        if let Err(why) = check(&got, Expect::Transient(None), &[PASSWORD]) {
            failures.push(format!("refused: {why}"));
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }
}
