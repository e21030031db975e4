//! kci facing the network: webhooks that would reach into the hub's own
//! network, clients that would hold its listeners, and what its SMTP
//! listener tells a submitter.

use crate::common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_webhook_cannot_point_at_the_hubs_own_network() {
    // A real service on this machine's loopback, which must stay unreached.
    let inside = WebhookReceiver::start().await;
    let kci = Kci::start(None, "");
    let admin = kci.token(&["directory:admin", "directory:write", "directory:read"]);
    let (s, _) = kci
        .call("PUT", "/v1/accounts/A1", Some(&admin), Some("{}"))
        .await;
    assert_eq!(s, 201);
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1/contacts/mallory",
            Some(&admin),
            Some("{}"),
        )
        .await;
    assert_eq!(s, 201);
    for uri in [
        inside.url.as_str(),
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://172.16.3.4/hook",
        "https://192.168.1.1/admin",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",
        "https://localhost./hook",
        "https://db.localhost/hook",
    ] {
        for verified in [false, true] {
            let (s, v) = kci
                .add_destination(
                    &admin,
                    "A1",
                    "mallory",
                    &json!({"uri": uri, "verified": verified}).to_string(),
                )
                .await;
            assert_eq!((s, &v["error"]), (422, &json!("invalid_uri")), "{uri}: {v}");
            let message = v["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("uri:") && message.contains("[channels.webhook] allow_private"),
                "{uri}: {message}"
            );
        }
    }
    let (_, account) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert_eq!(
        account["contacts"][0]["destinations"],
        json!([]),
        "{account}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(inside.hooks().is_empty(), "no verification code went in");

    // The operator who runs receivers on its own network says so.
    let kci = Kci::start(None, LOCAL_WEBHOOKS);
    let admin = kci.token(&["directory:admin", "directory:write"]);
    kci.customer(&admin, "A1", "ops", json!({"uri": inside.url}))
        .await;
    eventually(
        10,
        "the verification code on the local receiver",
        || async { (!inside.hooks().is_empty()).then_some(()) },
    )
    .await;
}

/// Reads from `stream` until it is closed (or `within` passes); what came.
async fn until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

async fn connect(kci: &Kci) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", kci.port))
        .await
        .unwrap()
}

/// A client that keeps no connection open between requests.
fn one_shot() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn healthz(kci: &Kci) -> Result<u16, reqwest::Error> {
    let resp = one_shot()
        .get(format!("{}/healthz", kci.base))
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn a_slow_client_cannot_hold_the_http_server() {
    use tokio::io::AsyncWriteExt;
    let kci = Kci::start_with(None, "header_timeout = \"1s\"\n", "");
    // Half a request line, then nothing; a connection that never speaks;
    // and one that asks once and then sits on the kept-alive connection.
    let started = Instant::now();
    let mut half = connect(&kci).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: kc")
        .await
        .unwrap();
    let mut silent = connect(&kci).await;
    let mut idle = connect(&kci).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: kci\r\n\r\n")
        .await
        .unwrap();
    // Meanwhile everyone else is served.
    assert_eq!(healthz(&kci).await.unwrap(), 200);
    for (name, stream) in [
        ("half", &mut half),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let got = until_closed(stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("the {name} client is still connected"));
        if name == "idle" {
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        } else {
            assert!(!got.contains("200"), "{name}: {got}");
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(healthz(&kci).await.unwrap(), 200);
}

#[tokio::test]
async fn a_trickled_body_times_out() {
    use tokio::io::AsyncWriteExt;
    let kci = Kci::start_with(
        None,
        "body_timeout = \"1s\"\nrequest_timeout = \"3s\"\n",
        "",
    );
    let token = kci.token(&["events:write", "events:read", "directory:write"]);
    let (s, _) = kci
        .call("PUT", "/v1/accounts/A1", Some(&token), Some("{}"))
        .await;
    assert_eq!(s, 201);
    let event =
        |id: &str| format!(r#"{{"id":"{id}","type":"line.down","account":"A1","service":"L1"}}"#);
    let head = |body: &str| {
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: kci\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };

    // A body that stops half way: refused once it has been silent for
    // body_timeout, and the connection closed.
    let body = event("stalled");
    let mut stalled = connect(&kci).await;
    stalled
        .write_all(format!("{}{}", head(&body), &body[..10]).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let got = until_closed(&mut stalled, Duration::from_secs(5))
        .await
        .expect("the stalled request is ended");
    let took = started.elapsed();
    assert!(got.starts_with("HTTP/1.1 4"), "{got}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A body trickled a byte at a time, never silent for long: the whole
    // request still ends at request_timeout, with the JSON error answer.
    let body = event("trickled");
    let (mut answer, mut trickle) = connect(&kci).await.into_split();
    trickle.write_all(head(&body).as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for b in body.as_bytes() {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    // The answer comes, and the connection ends, while the client is
    // still writing (the body would take 20 s at this pace).
    let got = until_closed(&mut answer, Duration::from_secs(8))
        .await
        .expect("the trickled request is ended");
    let took = started.elapsed();
    writer.abort();
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""error":"request_timeout""#), "{got}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // Neither was taken.
    for id in ["stalled", "trickled"] {
        let (s, _) = kci
            .call("GET", &format!("/v1/events/{id}"), Some(&token), None)
            .await;
        assert_eq!(s, 404, "{id}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let kci = Kci::start_with(None, "max_connections = 3\n", "");
    // The harness's own probe of the port (it connects and closes at once)
    // may still be on kci's books for a moment: let it go first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&kci).await);
    }
    // Each held connection is being served (its header timer running).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect(&kci).await;
    let got = until_closed(&mut over, Duration::from_secs(2))
        .await
        .expect("a connection over the cap is closed at once");
    assert_eq!(got, "");
    assert!(healthz(&kci).await.is_err(), "no request over the cap");
    // One goes, and the next client is served.
    held.pop();
    eventually(5, "a free connection", || async {
        healthz(&kci).await.ok().filter(|s| *s == 200)
    })
    .await;
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() {
    use tokio::io::AsyncWriteExt;
    let mut kci = Kci::start(None, "");
    let token = kci.token(&["directory:write"]);
    let body = r#"{"name":"Alice Ltd"}"#;
    let mut client = connect(&kci).await;
    client
        .write_all(
            format!(
                "PUT /v1/accounts/A1 HTTP/1.1\r\nHost: kci\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..5]
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kci.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.write_all(&body.as_bytes()[5..]).await.unwrap();
    let got = until_closed(&mut client, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    let status = kci.wait_exit(10).expect("kci exits after the request");
    assert!(status.success(), "{status:?}");
}

/// `kci keys generate` for `from` in `dir`: the secret key's file and the
/// public key, armored (kci's own key generator makes a customer's key
/// here as well as the operator's).
fn generate_key(dir: &std::path::Path, name: &str, from: &str) -> (std::path::PathBuf, String) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, format!("[email]\nfrom = \"{from}\"\n")).unwrap();
    let out = dir.join(format!("{name}.asc"));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["keys", "generate", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .env("KCI_LOG", "warn")
        .output()
        .unwrap();
    assert!(run.status.success());
    let stdout = String::from_utf8(run.stdout).unwrap();
    let start = stdout.find("-----BEGIN PGP PUBLIC KEY BLOCK-----").unwrap();
    (out, stdout[start..].trim().to_string())
}

/// One message through an SMTP session at `port`: kci's answer to it.
async fn smtp_reply(port: u16, mail: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap()
        .into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut expect = async |r: &mut BufReader<_>, code: &str| {
        loop {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            assert!(line.starts_with(code), "{code}: {line}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    };
    expect(&mut r, "220").await;
    for (command, code) in [
        ("EHLO client.example", "250"),
        ("MAIL FROM:<alice@example.com>", "250"),
        ("RCPT TO:<keys@isp.example>", "250"),
        ("DATA", "354"),
    ] {
        w.write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        expect(&mut r, code).await;
    }
    let body = mail.replace("\r\n", "\n").replace('\n', "\r\n");
    w.write_all(format!("{body}\r\n.\r\n").as_bytes())
        .await
        .unwrap();
    line.clear();
    r.read_line(&mut line).await.unwrap();
    let reply = line.trim_end().to_string();
    w.write_all(b"QUIT\r\n").await.unwrap();
    reply
}

#[tokio::test]
async fn the_smtp_listener_tells_a_submitter_nothing_about_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (operator, _) = generate_key(dir.path(), "operator", "Example ISP <kci@isp.example>");
    let (_, alice) = generate_key(dir.path(), "alice", "Alice <alice@example.com>");
    let port = free_port();
    let kci = Kci::start_full(
        None,
        "",
        &format!("signing_key = \"{}\"\n", operator.display()),
        &format!(
            "[keys]\nsubmission_address = \"keys@isp.example\"\nsmtp_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    wait_for_port(port, "kci's SMTP listener");
    let mail = |text: &str| {
        format!(
            "From: Alice <alice@example.com>\nTo: keys@isp.example\nSubject: my key\n\n{text}\n"
        )
    };
    // A key registered (pending, confirmation sent), a mail without one
    // (refused, the sender told why): the same answer to whoever sends.
    let registered = smtp_reply(port, &mail(&alice)).await;
    let refused = smtp_reply(port, &mail("Here is my key.")).await;
    for reply in [&registered, &refused] {
        assert_eq!(
            reply,
            "250 2.0.0 received; the address's owner is told by mail"
        );
    }
    // What happened goes to the address: the confirmation, encrypted to
    // the key, and the refusal.
    eventually(10, "the two mails to alice", || async {
        let out = kci.outbox();
        (out.iter().any(|m| m.contains("multipart/encrypted")) && out.len() >= 2).then_some(())
    })
    .await;
    // A mail kci cannot read at all is still bounced with what is wrong.
    let unreadable = smtp_reply(port, "no headers at all, no sender").await;
    assert!(unreadable.starts_with("554 5.6.0 "), "{unreadable}");
}

/// STARTTLS on kci's SMTP listener (issue 16), with Python's smtplib as
/// the MTA: offered, required before mail; with a client CA (made by
/// `kci ca`), only an MTA presenting a certificate from it gets through,
/// and plaintext pipelined after STARTTLS is never read as a command.
#[tokio::test]
async fn the_smtp_listener_takes_mail_only_over_tls_from_known_mtas() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    pki.issue("ca", "kci-smtp", "serverAuth");
    let mtas = dir.path().join("mtas");
    let ca = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
            .arg("ca")
            .args(args)
            .arg("--dir")
            .arg(&mtas)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ca(&["init"]);
    ca(&["issue", "--name", "mx1"]);
    let (operator, _) = generate_key(dir.path(), "operator", "Example ISP <kci@isp.example>");
    let port = free_port();
    let _kci = Kci::start_full(
        None,
        "",
        &format!("signing_key = \"{}\"\n", operator.display()),
        &format!(
            "[keys]\nsubmission_address = \"keys@isp.example\"\nsmtp_listen = \"127.0.0.1:{port}\"\n\
             [keys.smtp_tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{mta_ca}\"\n",
            cert = pki.path("kci-smtp.crt"),
            key = pki.path("kci-smtp.key"),
            mta_ca = mtas.join("ca.crt").display(),
        ),
    );
    wait_for_port(port, "kci's SMTP listener");
    const MTA: &str = r#"
import smtplib, socket, ssl, sys
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
mail = "From: alice@example.com\r\nTo: keys@isp.example\r\nSubject: key\r\n\r\nhello\r\n"
def ctx(with_cert):
    c = ssl.create_default_context(cafile=ca)
    if with_cert:
        c.load_cert_chain(cert, key)
    return c
def attempt(name, f):
    try:
        print(name, f())
    except smtplib.SMTPResponseException as e:
        print(name, e.smtp_code)
    except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError) as e:
        print(name, "refused")
def plain():
    s = smtplib.SMTP("127.0.0.1", port)
    s.ehlo()
    offered = s.has_extn("starttls")
    code, _ = s.mail("alice@example.com")
    return f"{offered} {code}"
def over_tls(with_cert):
    s = smtplib.SMTP("127.0.0.1", port)
    s.starttls(context=ctx(with_cert))
    s.ehlo()
    s.sendmail("alice@example.com", ["keys@isp.example"], mail)
    s.quit()
    return "sent"
def injected():
    # STARTTLS and a MAIL in one write: the MAIL, in clear, must be lost.
    raw = socket.create_connection(("127.0.0.1", port))
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO mta\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
    f.readline()
    tls = ctx(True).wrap_socket(raw, server_hostname="127.0.0.1")
    t = tls.makefile("rb")
    tls.sendall(b"EHLO mta\r\n")
    while not t.readline().startswith(b"250 "):
        pass
    tls.sendall(b"RCPT TO:<keys@isp.example>\r\n")
    return t.readline().split()[0].decode()
attempt("plain", plain)
attempt("nocert", lambda: over_tls(False))
attempt("cert", lambda: over_tls(True))
attempt("injected", injected)
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", MTA, &port.to_string()])
        .args([pki.path("ca.crt")])
        .arg(mtas.join("mx1.crt"))
        .arg(mtas.join("mx1.key"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        [
            "plain True 530",
            "nocert refused",
            "cert sent",
            "injected 503"
        ],
        "{said}"
    );
}

/// Two listeners (issue 16): the API kept to the office network, and a
/// public one serving only what customers and providers reach — the API
/// is not there at all.
#[tokio::test]
async fn the_public_listener_serves_links_and_callbacks_only() {
    let public = free_port();
    let kci = Kci::start_with(
        None,
        &format!("allow = [\"10.0.0.0/8\"]\n[server.public]\nlisten = \"127.0.0.1:{public}\"\n"),
        "",
    );
    wait_for_port(public, "the public listener");
    let token = kci.token(&["admin"]);
    let get = |base: String, path: &'static str| {
        let token = token.clone();
        async move {
            let resp = one_shot()
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    // The main listener: this machine is not in its networks.
    let (s, body) = get(kci.base.clone(), "/healthz").await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("network_refused"), "{body}");
    // The public one: health and the customers' links, nothing else.
    let base = format!("http://127.0.0.1:{public}");
    assert_eq!(get(base.clone(), "/healthz").await.0, 200);
    for path in ["/v1/events/e1", "/v1/accounts/A1", "/metrics", "/v1/audit"] {
        let (s, body) = get(base.clone(), path).await;
        assert_eq!(s, 404, "{path}: {body}");
    }
    // A link's page answers there (this one not valid: kci's own page).
    let (_, page) = get(base.clone(), "/v1/veto/not-a-real-token").await;
    assert!(page.contains("Link not valid"), "{page}");
}

/// GET `path` with `token`, as the client at `forwarded` behind the local
/// proxy (`X-Forwarded-For`): the status, the `Retry-After` header and the
/// error code.
async fn from(
    kci: &Kci,
    path: &str,
    token: Option<&str>,
    forwarded: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut req = kci.http.get(format!("{}{path}", kci.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        retry,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// The perimeter (issue 16): behind a trusted proxy, the client's own
/// address decides — the listener admits only its networks, a token bound
/// to the office network is refused elsewhere (as any bad token is), and
/// the address a client claims for itself when it is not the proxy is
/// ignored. Each token and each address has its rate; over it, 429 with
/// `Retry-After`, counted in the metrics.
#[tokio::test]
async fn networks_and_rates_at_the_perimeter() {
    let kci = Kci::start_with(
        None,
        "allow = [\"127.0.0.1/32\", \"192.0.2.0/24\", \"198.51.100.0/24\"]\n\
         trusted_proxies = [\"127.0.0.1/32\"]\nrate_per_token = \"4/1h\"\n",
        "",
    );
    let path = "/v1/changes?account=acme";
    let (code, out, err) = kci.cli(&[
        "token",
        "create",
        "--name",
        "office",
        "--scope",
        "changes:read",
        "--allow",
        "192.0.2.0/24",
    ]);
    assert_eq!(code, 0, "{err}");
    let office = out.lines().last().unwrap().trim().to_string();
    // A client outside the listener's networks, through the proxy.
    let (s, _, e) = from(&kci, path, Some(&office), Some("203.0.113.5")).await;
    assert_eq!((s, e.as_str()), (403, "network_refused"));
    // Inside the listener's, outside the token's: refused as a bad token.
    let (s, _, e) = from(&kci, path, Some(&office), Some("198.51.100.9")).await;
    assert_eq!((s, e.as_str()), (401, "unauthenticated"));
    // The proxy itself, no header: not the office either.
    let (s, _, _) = from(&kci, path, Some(&office), None).await;
    assert_eq!(s, 401);
    // From the office: served; its last use names the office address.
    let (s, _, _) = from(&kci, path, Some(&office), Some("192.0.2.7")).await;
    assert_eq!(s, 200);
    eventually(10, "the office address recorded", || async {
        let (_, out, _) = kci.cli(&["token", "list"]);
        out.lines()
            .any(|l| l.contains("\toffice\t") && l.ends_with("\t192.0.2.7\ttoken"))
            .then_some(())
    })
    .await;
    // A client that puts its own entry first is still the proxy's word.
    let (s, _, _) = from(&kci, path, Some(&office), Some("192.0.2.8, 198.51.100.9")).await;
    assert_eq!(s, 401);
    // Its rate: four served in the hour (one so far; refusals are not
    // served), then 429 with Retry-After.
    for _ in 0..3 {
        let (s, _, _) = from(&kci, path, Some(&office), Some("192.0.2.7")).await;
        assert_eq!(s, 200);
    }
    let (s, retry, e) = from(&kci, path, Some(&office), Some("192.0.2.7")).await;
    assert_eq!((s, e.as_str()), (429, "rate_limited"));
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(retry > 60, "{retry}");
    let admin = kci.token(&["admin"]);
    let (_, metrics) = kci.call("GET", "/metrics", Some(&admin), None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for by in ["network", "token_network", "token"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("what=\"api\"") && l.contains(&format!("by=\"{by}\""))),
            "{by} in {metrics}"
        );
    }
}

/// Without a trusted proxy, `X-Forwarded-For` means nothing: a client
/// cannot talk its way into the listener's networks. Each address has its
/// own rate.
#[tokio::test]
async fn a_client_cannot_forward_itself_in_and_each_address_has_a_rate() {
    let kci = Kci::start_with(
        None,
        "allow = [\"127.0.0.0/8\"]\nrate_per_source = \"30/1h\"\n",
        "",
    );
    let (s, _, _) = from(&kci, "/healthz", None, Some("203.0.113.5")).await;
    assert_eq!(s, 200, "the header is ignored: the peer is 127.0.0.1");
    let mut last = (0, None, String::new());
    for _ in 0..30 {
        last = from(&kci, "/healthz", None, None).await;
        if last.0 == 429 {
            break;
        }
    }
    assert_eq!(last.0, 429, "{last:?}");
    assert_eq!(last.2, "rate_limited");
    assert!(last.1.is_some());
}

/// TLS on the listener (issue 16): with `client_ca`, only a client with a
/// certificate from that CA is served — plain HTTP and a client without
/// one get nothing; a token bound to one certificate is refused with
/// another. A renewed certificate is read again on SIGHUP: a client that
/// trusts only the new CA fails before and succeeds after.
#[tokio::test]
async fn tls_with_client_certificates_and_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    pki.issue("ca", "server", "serverAuth");
    pki.issue("ca", "order-system", "clientAuth");
    let kci = Kci::start_with(
        None,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n",
            pki.path("server.crt"),
            pki.path("server.key"),
            pki.path("ca.crt")
        ),
        "",
    );
    let https = format!("https://127.0.0.1:{}/healthz", kci.port);
    let ok = pki
        .client("ca", Some("order-system"))
        .get(&https)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        pki.client("ca", None).get(&https).send().await.is_err(),
        "no client certificate, no connection"
    );
    let plain = reqwest::get(format!("http://127.0.0.1:{}/healthz", kci.port)).await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "no plain HTTP"
    );

    // A token bound to the order system's certificate: stolen, and used
    // with another valid certificate, it is refused.
    pki.issue("ca", "billing", "clientAuth");
    let fingerprint = {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(dir.path().join("order-system.crt"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.trim().rsplit('=').next().unwrap().to_string()
    };
    let (code, _, err) = kci.cli(&[
        "token",
        "create",
        "--name",
        "orders",
        "--scope",
        "changes:read",
        "--cert",
        "nonsense",
    ]);
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = kci.cli(&[
        "token",
        "create",
        "--name",
        "orders",
        "--scope",
        "changes:read",
        "--cert",
        &fingerprint,
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    let changes = format!("https://127.0.0.1:{}/v1/changes?account=acme", kci.port);
    for (identity, want) in [("order-system", 200), ("billing", 401)] {
        let r = pki
            .client("ca", Some(identity))
            .get(&changes)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{identity}");
    }

    // A new CA issues the renewed certificate; the files are replaced and
    // kci is told.
    let renewed = Pki::new(dir.path(), "ca2");
    renewed.issue("ca2", "server2", "serverAuth");
    let trusts_new = pki.client("ca2", Some("order-system"));
    assert!(
        trusts_new.get(&https).send().await.is_err(),
        "the old certificate is in use"
    );
    std::fs::copy(
        dir.path().join("server2.crt"),
        dir.path().join("server.crt"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("server2.key"),
        dir.path().join("server.key"),
    )
    .unwrap();
    kci.signal("HUP");
    eventually(10, "the renewed certificate", || async {
        trusts_new
            .get(&https)
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
    // A broken file on reload: the certificate in use stays.
    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    kci.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = trusts_new.get(&https).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// `kci ca` (issue 16): the operator's own CA issues a source system's
/// certificate; kci serves it over TLS and a token bound to it; once the
/// certificate is revoked and kci is told (SIGHUP), it gets no connection.
#[tokio::test]
async fn kci_ca_issues_and_revokes_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server-ca");
    pki.issue("server-ca", "server", "serverAuth");
    let ca = dir.path().join("clients");
    let ca_dir = ca.display().to_string();
    let kci_ca = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
            .arg("ca")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = kci_ca(&["init", "--dir", &ca_dir]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kci_ca(&["init", "--dir", &ca_dir]);
    assert_eq!(code, 1, "a CA once: {err}");
    let (code, out, err) = kci_ca(&["issue", "--dir", &ca_dir, "--name", "order-system"]);
    assert_eq!(code, 0, "{err}");
    let fingerprint = out.lines().last().unwrap().trim().to_string();
    assert_eq!(fingerprint.len(), 64, "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "order-system.key"] {
            let mode = std::fs::metadata(ca.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{key} is private");
        }
    }
    let kci = Kci::start_with(
        None,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{ca_dir}/ca.crt\"\nclient_crl = \"{ca_dir}/ca.crl\"\n",
            pki.path("server.crt"),
            pki.path("server.key"),
        ),
        "",
    );
    let (code, out, err) = kci.cli(&[
        "token",
        "create",
        "--name",
        "orders",
        "--scope",
        "changes:read",
        "--cert",
        &fingerprint,
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    let client = {
        let pem = [
            std::fs::read(ca.join("order-system.crt")).unwrap(),
            std::fs::read(ca.join("order-system.key")).unwrap(),
        ]
        .concat();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&pki.read("server-ca.crt")).unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    };
    let url = format!("https://127.0.0.1:{}/v1/changes?account=acme", kci.port);
    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let (code, _, err) = kci_ca(&["revoke", "--dir", &ca_dir, "order-system"]);
    assert_eq!(code, 0, "{err}");
    kci.signal("HUP");
    eventually(10, "the revoked certificate refused", || async {
        // A fresh connection each try: the revocation is checked at the
        // handshake.
        let fresh = {
            let pem = [
                std::fs::read(ca.join("order-system.crt")).unwrap(),
                std::fs::read(ca.join("order-system.key")).unwrap(),
            ]
            .concat();
            reqwest::Client::builder()
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(
                    reqwest::Certificate::from_pem(&pki.read("server-ca.crt")).unwrap(),
                )
                .identity(reqwest::Identity::from_pem(&pem).unwrap())
                .build()
                .unwrap()
        };
        fresh
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .is_err()
            .then_some(())
    })
    .await;
}
