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
