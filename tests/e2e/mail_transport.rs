//! Mail leaving kci (issue 16): TLS is required by default with the
//! server's certificate verified, a recipient domain may have its own
//! route and policy, and kci presents a client certificate to a partner
//! MTA that requires one. Real peers: aiosmtpd, with and without STARTTLS,
//! and certificates made by `openssl`.

use crate::common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// aiosmtpd writing into `maildir`: in clear, offering no STARTTLS, when
/// `tls` is `None`; else with STARTTLS required, its certificate and key,
/// and, given a CA, a client certificate from that CA required.
struct Mta {
    port: u16,
    maildir: std::path::PathBuf,
    child: Child,
}

impl Mta {
    fn start(dir: &Path, name: &str, tls: Option<(&str, &str, Option<&str>)>) -> Mta {
        const SERVER: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
port, maildir, cert, key, ca = sys.argv[1:6]
ctx = None
if cert != "-":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if ca != "-":
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca)
c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=int(port),
               tls_context=ctx, require_starttls=ctx is not None)
c.start()
while True:
    time.sleep(3600)
"#;
        let port = free_port();
        let maildir = dir.join(name);
        let (cert, key, ca) = tls.unwrap_or(("-", "-", None));
        let child = Command::new("/usr/bin/python3")
            .args(["-c", SERVER, &port.to_string()])
            .arg(&maildir)
            .args([cert, key, ca.unwrap_or("-")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd");
        wait_for_port(port, name);
        Mta {
            port,
            maildir,
            child,
        }
    }

    fn mails(&self) -> Vec<String> {
        read_maildir(&self.maildir)
    }
}

impl Drop for Mta {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn mail_leaves_encrypted_or_not_at_all_unless_a_domain_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    // The partner's MTA: a certificate from `ca`, and it accepts only
    // clients with a certificate from `partner`.
    let pki = Pki::new(dir.path(), "ca");
    pki.issue("ca", "mx", "serverAuth");
    pki.issue("ca", "kci", "clientAuth");
    Pki::new(dir.path(), "partner");
    pki.issue("partner", "kci-partner", "clientAuth");
    let plain = Mta::start(dir.path(), "plain", None);
    let (mx_crt, mx_key, partner_ca) = (
        pki.path("mx.crt"),
        pki.path("mx.key"),
        pki.path("partner.crt"),
    );
    let mtls = Mta::start(
        dir.path(),
        "mtls",
        Some((&mx_crt, &mx_key, Some(&partner_ca))),
    );

    let email = format!(
        "smtp = \"smtp://127.0.0.1:{plain}\"\n\
         tls_ca = \"{ca}\"\n\
         client_cert = \"{kci_crt}\"\nclient_key = \"{kci_key}\"\n\
         [email.domains.\"clear.example\"]\ntls = \"opportunistic\"\n\
         [email.domains.\"mtls.example\"]\nsmtp = \"smtp://127.0.0.1:{mtls}\"\n\
         client_cert = \"{p_crt}\"\nclient_key = \"{p_key}\"\n\
         [email.domains.\"wrongcert.example\"]\nsmtp = \"smtp://127.0.0.1:{mtls}\"\n\
         [email.domains.\"untrusted.example\"]\nsmtp = \"smtp://127.0.0.1:{mtls}\"\n\
         tls_ca = \"{partner_ca}\"\n\
         client_cert = \"{p_crt}\"\nclient_key = \"{p_key}\"\n",
        plain = plain.port,
        mtls = mtls.port,
        ca = pki.path("ca.crt"),
        kci_crt = pki.path("kci.crt"),
        kci_key = pki.path("kci.key"),
        p_crt = pki.path("kci-partner.crt"),
        p_key = pki.path("kci-partner.key"),
    );
    let kci = Kci::start_full(None, "", &email, "");
    let admin = kci.token(&["admin"]);
    let cases = [
        ("bob@plain.example", "tls_required"),
        ("carol@clear.example", "sent"),
        ("dave@mtls.example", "sent"),
        ("erin@wrongcert.example", "refused"),
        ("fred@untrusted.example", "tls_failed"),
    ];
    for (i, (to, _)) in cases.iter().enumerate() {
        let account = format!("A{i}");
        kci.customer(
            &admin,
            &account,
            "c",
            json!({"uri": format!("mailto:{to}"), "verified": true}),
        )
        .await;
        kci.post_event(
            &admin,
            &json!({"id": format!("e{i}"), "type": "line.down", "account": account, "service": "L1"})
                .to_string(),
        )
        .await;
    }
    for (i, (to, want)) in cases.iter().enumerate() {
        let n = eventually(30, &format!("an attempt to {to}"), || async {
            let (_, v) = kci
                .call("GET", &format!("/v1/events/e{i}"), Some(&admin), None)
                .await;
            let n = v["notifications"][0].clone();
            (n["state"] == "sent" || n["detail"].is_string()).then_some(n)
        })
        .await;
        let reason = n["reason"].as_str().unwrap_or_default();
        let detail = n["detail"].as_str().unwrap_or_default();
        match *want {
            "sent" => assert_eq!(n["state"], "sent", "{to}: {n}"),
            // Transient (the server may be fixed): retried, with the
            // reason first in the detail.
            "tls_required" => {
                assert_eq!(reason, "retry", "{to}: {n}");
                assert!(
                    detail.starts_with("tls_required: ") && detail.contains("offers no STARTTLS"),
                    "{to}: {detail}"
                );
            }
            "tls_failed" => {
                assert_eq!(reason, "retry", "{to}: {n}");
                assert!(
                    detail.starts_with("tls_failed: ") && detail.contains("certificate"),
                    "{to}: {detail}"
                );
            }
            // A client certificate the partner does not accept: the
            // handshake or the first command after it fails.
            // (TLS 1.3: the server closes the connection after the handshake.)
            _ => assert!(n["state"] != "sent" && !reason.is_empty(), "{to}: {n}"),
        }
    }
    let in_clear = plain.mails();
    assert_eq!(
        in_clear.len(),
        1,
        "only the domain that allows it: {in_clear:?}"
    );
    assert!(in_clear[0].contains("carol@clear.example"));
    let over_tls = mtls.mails();
    assert_eq!(over_tls.len(), 1, "{over_tls:?}");
    assert!(over_tls[0].contains("dave@mtls.example"));
}

/// DKIM (issue 16): keys made by `kci dkim generate`, one Ed25519 and one
/// RSA; every mail kci sends carries both signatures, and Python's dkimpy
/// verifies each against the records `kci dkim dns` prints.
#[tokio::test]
async fn every_mail_is_dkim_signed_and_dkimpy_verifies_both_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let (ed, rsa) = (dir.path().join("ed.pem"), dir.path().join("rsa.pem"));
    let email = format!(
        "[email.dkim]\nselectors = [{{ name = \"kci-ed\", key = \"{}\" }}, {{ name = \"kci-rsa\", key = \"{}\" }}]\n",
        ed.display(),
        rsa.display()
    );
    for (selector, path, rsa_bits) in [("kci-ed", &ed, None), ("kci-rsa", &rsa, Some("2048"))] {
        let path = path.display().to_string();
        let mut args = vec!["dkim", "generate", "--selector", selector, "--out", &path];
        args.extend(rsa_bits.iter().flat_map(|b| ["--rsa", *b]));
        let out = Command::new(env!("CARGO_BIN_EXE_kci"))
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("{selector}._domainkey.")), "{text}");
    }
    let kci = Kci::start_full(Some(smtp.port), "", &email, "");
    let (code, records, err) = kci.cli(&["dkim", "dns"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        records.contains("kci-ed._domainkey.isp.example. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{records}"
    );
    assert!(
        records.contains("kci-rsa._domainkey.isp.example. IN TXT \"v=DKIM1; k=rsa; p="),
        "{records}"
    );

    let admin = kci.token(&["admin"]);
    kci.customer(
        &admin,
        "A1",
        "c",
        json!({"uri": "mailto:alice@example.org", "verified": true}),
    )
    .await;
    kci.post_event(
        &admin,
        r#"{"id":"d1","type":"line.down","account":"A1","service":"L1","data":{"ticket":"T-1"}}"#,
    )
    .await;
    let mail = eventually(30, "the mail", || async { smtp.mails().pop() }).await;
    assert_eq!(mail.matches("DKIM-Signature:").count(), 2, "{mail}");

    const VERIFY: &str = r#"
import re, sys, dkim
records = {}
for line in sys.argv[1].splitlines():
    name, rest = line.split(" IN TXT ", 1)
    records[name.rstrip(".")] = "".join(re.findall(r'"([^"]*)"', rest)).encode()
def dnsfunc(name, timeout=5):
    return records.get(name.decode().rstrip("."))
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = len(re.findall(rb"(?im)^DKIM-Signature:", msg))
print(" ".join("pass" if d.verify(idx=i, dnsfunc=dnsfunc) else "fail" for i in range(n)))
"#;
    let verify = |mail: &str| {
        use std::io::Write;
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", VERIFY, &records])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3-dkim");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(mail.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(verify(&mail), "pass pass");
    let forged = mail.replace("Line L1 is down", "Line L1 is fine");
    assert_eq!(verify(&forged), "fail fail");
}

/// A DNS server for the test's own names: dnslib's zone resolver.
struct Dns {
    port: u16,
    child: Child,
}

impl Dns {
    fn start(dir: &Path, zone: &str) -> Dns {
        let file = dir.join("zone.txt");
        std::fs::write(&file, zone).unwrap();
        let port = free_port();
        let mut dns = Dns {
            port,
            child: Command::new("/usr/bin/python3")
                .args(["-m", "dnslib.zoneresolver", "--address", "127.0.0.1"])
                .args(["--port", &port.to_string(), "--log=-request,-reply"])
                .arg("--zone")
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3-dnslib"),
        };
        // UDP: wait until it answers.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        // A query for `.` NS, id 1.
        let query = [0u8, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        let mut buf = [0u8; 512];
        for _ in 0..50 {
            let _ = sock.send_to(&query, ("127.0.0.1", port));
            if sock.recv_from(&mut buf).is_ok() {
                return dns;
            }
        }
        let _ = dns.child.kill();
        panic!("dnslib did not answer on {port}");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS server publishing MTA-STS policies, by `Host`.
struct PolicyServer {
    port: u16,
    child: Child,
}

impl PolicyServer {
    fn start(cert: &str, key: &str, policies: &[(&str, &str)]) -> PolicyServer {
        const SERVER: &str = r#"
import http.server, json, ssl, sys
port, cert, key, policies = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        body = policies.get(host)
        if self.path != "/.well-known/mta-sts.txt" or body is None:
            self.send_response(404)
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
        let port = free_port();
        let map: serde_json::Map<String, serde_json::Value> = policies
            .iter()
            .map(|(h, p)| (h.to_string(), json!(p)))
            .collect();
        let child = Command::new("/usr/bin/python3")
            .args(["-c", SERVER, &port.to_string(), cert, key])
            .arg(serde_json::Value::Object(map).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "the MTA-STS policy server");
        PolicyServer { port, child }
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Straight to recipients' MX hosts (`smtp = "mx"`), honouring MTA-STS
/// (issue 16): a domain whose policy lists its MX gets its mail over
/// verified TLS even where a local policy said `tls = "none"`; a domain
/// whose DNS names an MX its policy does not list (a spoofed MX) gets
/// nothing; a domain without a policy gets the default, TLS required.
/// Real peers: dnslib as the DNS server, Python's HTTPS server for the
/// policies, aiosmtpd requiring STARTTLS as every MX.
#[tokio::test]
async fn direct_delivery_honours_mta_sts_policies() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    pki.issue_for(
        "ca",
        "mx",
        "serverAuth",
        &["mx.sts.example", "mx.evil.test", "mx.plain.example"],
    );
    pki.issue_for(
        "ca",
        "policies",
        "serverAuth",
        &["mta-sts.sts.example", "mta-sts.bad.example"],
    );
    let (mx_crt, mx_key) = (pki.path("mx.crt"), pki.path("mx.key"));
    let mx = Mta::start(dir.path(), "mx", Some((&mx_crt, &mx_key, None)));
    let enforce = |mx: &str| format!("version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 86400\n");
    let (sts, bad) = (enforce("mx.sts.example"), enforce("mx.bad.example"));
    let policies = PolicyServer::start(
        &pki.path("policies.crt"),
        &pki.path("policies.key"),
        &[("mta-sts.sts.example", &sts), ("mta-sts.bad.example", &bad)],
    );
    let dns = Dns::start(
        dir.path(),
        "sts.example. 60 IN MX 10 mx.sts.example.\n\
         mx.sts.example. 60 IN A 127.0.0.1\n\
         _mta-sts.sts.example. 60 IN TXT \"v=STSv1; id=20261202\"\n\
         mta-sts.sts.example. 60 IN A 127.0.0.1\n\
         bad.example. 60 IN MX 10 mx.evil.test.\n\
         mx.evil.test. 60 IN A 127.0.0.1\n\
         _mta-sts.bad.example. 60 IN TXT \"v=STSv1; id=1\"\n\
         mta-sts.bad.example. 60 IN A 127.0.0.1\n\
         plain.example. 60 IN MX 10 mx.plain.example.\n\
         mx.plain.example. 60 IN A 127.0.0.1\n",
    );
    let email = format!(
        "smtp = \"mx\"\ntls_ca = \"{ca}\"\n\
         [email.mx]\nnameservers = [\"127.0.0.1:{dns}\"]\nport = {mx}\nhttps_port = {https}\n\
         [email.domains.\"sts.example\"]\ntls = \"none\"\n",
        ca = pki.path("ca.crt"),
        dns = dns.port,
        mx = mx.port,
        https = policies.port,
    );
    let kci = Kci::start_full(None, "", &email, "");
    let admin = kci.token(&["admin"]);
    let cases = [
        ("alice@sts.example", "sent"),
        ("bob@bad.example", "mta_sts"),
        ("carol@plain.example", "sent"),
    ];
    for (i, (to, _)) in cases.iter().enumerate() {
        let account = format!("M{i}");
        kci.customer(
            &admin,
            &account,
            "c",
            json!({"uri": format!("mailto:{to}"), "verified": true}),
        )
        .await;
        kci.post_event(
            &admin,
            &json!({"id": format!("m{i}"), "type": "line.down", "account": account, "service": "L1"})
                .to_string(),
        )
        .await;
    }
    for (i, (to, want)) in cases.iter().enumerate() {
        let n = eventually(30, &format!("an attempt to {to}"), || async {
            let (_, v) = kci
                .call("GET", &format!("/v1/events/m{i}"), Some(&admin), None)
                .await;
            let n = v["notifications"][0].clone();
            (n["state"] == "sent" || n["detail"].is_string()).then_some(n)
        })
        .await;
        let detail = n["detail"].as_str().unwrap_or_default();
        match *want {
            "sent" => assert_eq!(n["state"], "sent", "{to}: {n}"),
            _ => assert!(
                detail.starts_with("mta_sts: none of bad.example's MX hosts (mx.evil.test)"),
                "{to}: {n}"
            ),
        }
    }
    let got = mx.mails();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().any(|m| m.contains("alice@sts.example")));
    assert!(got.iter().any(|m| m.contains("carol@plain.example")));
    assert!(!got.iter().any(|m| m.contains("bob@bad.example")));
}

/// aiosmtpd that offers PIPELINING (RFC 2920) or not, and writes a line
/// of JSON for each mail it takes: its recipients, and what the client had
/// already sent when the server read `MAIL` and the last `RCPT` (the rest
/// of a pipelined group, and nothing of the mail before `DATA`'s 354). A
/// recipient at `refused.example` is refused (550).
struct Listening {
    port: u16,
    log: std::path::PathBuf,
    child: Child,
}

impl Listening {
    fn start(dir: &Path, name: &str, pipelining: bool) -> Listening {
        const SERVER: &str = r#"
import json, sys, time
from aiosmtpd.controller import Controller
port, log, offer = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
def waiting(server):
    # What the client sent that the server has not read yet.
    return bytes(server._reader._buffer).decode("ascii", "replace")
class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if offer:
            responses.insert(-1, "250-PIPELINING")
        return responses
    async def handle_MAIL(self, server, session, envelope, address, options):
        session.at_mail = waiting(server)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"
    async def handle_RCPT(self, server, session, envelope, address, options):
        if address.endswith("@refused.example"):
            return "550 5.1.1 no such mailbox here"
        session.after_rcpt = waiting(server)
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        with open(log, "a") as f:
            f.write(json.dumps({"to": envelope.rcpt_tos, "at_mail": session.at_mail,
                                "after_rcpt": session.after_rcpt}) + "\n")
        return "250 OK"
c = Controller(Handler(), hostname="127.0.0.1", port=port)
c.start()
while True:
    time.sleep(3600)
"#;
        let port = free_port();
        let log = dir.join(format!("{name}.jsonl"));
        let child = Command::new("/usr/bin/python3")
            .args(["-c", SERVER, &port.to_string()])
            .arg(&log)
            .arg(if pipelining { "1" } else { "0" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-aiosmtpd");
        wait_for_port(port, name);
        Listening { port, log, child }
    }

    fn mails(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 2920: to a server that offers PIPELINING, a mail's `MAIL`, `RCPT`
/// and `DATA` leave together and its text only after `DATA`'s 354; to one
/// that does not, a command at a time. A recipient refused inside a
/// pipelined group fails its notice for good with the server's answer, and
/// the next mail goes out as before.
#[tokio::test]
async fn mail_is_pipelined_to_a_server_that_offers_it_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let offers = Listening::start(dir.path(), "offers", true);
    let plain = Listening::start(dir.path(), "plain", false);
    let email = format!(
        "[email.domains.\"plain.example\"]\nsmtp = \"smtp://127.0.0.1:{}?tls=none\"\n",
        plain.port
    );
    let kci = Kci::start_full(Some(offers.port), "", &email, "");
    let admin = kci.token(&["admin"]);
    let to = [
        "alice@pipelined.example",
        "bob@pipelined.example",
        "carol@plain.example",
        "dave@plain.example",
        "nobody@refused.example",
        "erin@pipelined.example",
    ];
    for (i, to) in to.iter().enumerate() {
        kci.customer(
            &admin,
            &format!("A{i}"),
            "c",
            json!({"uri": format!("mailto:{to}"), "verified": true}),
        )
        .await;
    }
    let notice = |i: usize| {
        let kci = &kci;
        let admin = &admin;
        async move {
            eventually(30, &format!("notice of e{i} settled"), || async {
                let (_, v) = kci
                    .call("GET", &format!("/v1/events/e{i}"), Some(admin), None)
                    .await;
                let n = v["notifications"][0].clone();
                (n["state"] == "sent" || n["state"] == "failed").then_some(n)
            })
            .await
        }
    };
    let post = |i: usize| {
        let kci = &kci;
        let admin = &admin;
        async move {
            kci.post_event(
                admin,
                &json!({"id": format!("e{i}"), "type": "line.down", "account": format!("A{i}"),
                        "service": "L1", "data": {"ticket": "T-1"}})
                .to_string(),
            )
            .await;
        }
    };
    for i in 0..5 {
        post(i).await;
    }
    for i in 0..4 {
        assert_eq!(notice(i).await["state"], "sent", "e{i}");
    }
    let refused = notice(4).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("550"),
        "the server's answer: {refused}"
    );
    // After a refusal, the next mail to that server goes out pipelined.
    post(5).await;
    assert_eq!(notice(5).await["state"], "sent");

    let pipelined = offers.mails();
    assert_eq!(pipelined.len(), 3, "{pipelined:?}");
    for m in &pipelined {
        let rcpt = m["to"][0].as_str().unwrap_or_default();
        assert_eq!(
            m["at_mail"],
            format!("RCPT TO:<{rcpt}>\r\nDATA\r\n"),
            "the group in one write: {m}"
        );
        assert_eq!(m["after_rcpt"], "DATA\r\n", "no text before 354: {m}");
    }
    let one_at_a_time = plain.mails();
    assert_eq!(one_at_a_time.len(), 2, "{one_at_a_time:?}");
    for m in &one_at_a_time {
        assert_eq!(m["at_mail"], "", "{m}");
        assert_eq!(m["after_rcpt"], "", "{m}");
    }
}
