//! Secure mail end to end (DESIGN.md §6), with real GnuPG on the customer's
//! side: a key made by `gpg`, mailed in a message built by Python's email
//! package and piped to `kci inbound`; the confirmation mail, received by a
//! real SMTP server, decrypted by `gpg` and its link followed; then an
//! event, and `gpg --decrypt` verifies the operator's signature and yields
//! the text. For an Ed25519/Cv25519 key and an RSA-3072 key.

use crate::common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) use kci::pgp::testkit::Gpg;

/// The path of the key link in the mail `holder` can decrypt.
pub(crate) fn link_in(holder: &Gpg, mail: &str) -> String {
    let (inner, _) = holder.decrypt_mail(mail);
    let inner = unqp(&inner);
    let link = inner
        .split_whitespace()
        .find(|w| w.contains("/v1/keys/confirm/"))
        .expect("a link");
    link[link.find("/v1/").expect("a kci link")..].to_string()
}

/// Quoted-printable soft line breaks and `=3D` undone (enough for links).
pub(crate) fn unqp(s: &str) -> String {
    s.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// A submission mail as a real mail tool writes it: Python's email package.
pub(crate) fn submission_mail(from: &str, key: &str) -> Vec<u8> {
    let script = r#"
import sys
from email.message import EmailMessage
msg = EmailMessage()
msg["From"] = "Alice <" + sys.argv[1] + ">"
msg["To"] = "keys@isp.example"
msg["Subject"] = "My OpenPGP key"
msg.set_content("Please encrypt my notices to the attached key.\n")
msg.add_attachment(sys.stdin.read().encode(), maintype="application", subtype="pgp-keys", filename="key.asc")
sys.stdout.buffer.write(msg.as_bytes())
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, from])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(key.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// `kci inbound --config …` with `mail` on stdin: exit code and stderr.
pub(crate) fn inbound(config: &Path, mail: &[u8]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["inbound", "--config"])
        .arg(config)
        .env("KCI_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(mail).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator's key, made with `kci keys generate`.
pub(crate) fn operator_key(dir: &Path) -> PathBuf {
    let config = dir.join("keygen.toml");
    std::fs::write(
        &config,
        "[email]\nfrom = \"Example ISP <kci@isp.example>\"\n",
    )
    .unwrap();
    let out = dir.join("operator.asc");
    let status = Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["keys", "generate", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .env("KCI_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// `holder` trusts the operator's key as kci publishes it (WKD), so gpg
/// checks the signatures on kci's mail.
pub(crate) async fn trust_operator(kci: &Kci, holder: &Gpg) {
    let (s, _) = kci
        .call("GET", "/.well-known/openpgpkey/policy", None, None)
        .await;
    assert_eq!(s, 200);
    let out = reqwest::get(format!(
        "{}/.well-known/openpgpkey/hu/{}",
        kci.base,
        kci::pgp::wkd::hash("kci")
    ))
    .await
    .unwrap();
    assert_eq!(out.status(), 200);
    holder.ok(&["--import"], Some(&out.bytes().await.unwrap()));
}

/// kci signing its mail with an operator key made by `kci keys generate`
/// in `dir`; mail to `smtp` if given, else to the outbox; `extra` config.
pub(crate) fn signing_kci(dir: &Path, smtp: Option<u16>, extra: &str) -> Kci {
    let signing = operator_key(dir);
    Kci::start_full(
        smtp,
        "",
        &format!("signing_key = \"{}\"\n", signing.display()),
        extra,
    )
}

async fn register_and_receive(algo: &str) {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let kci = signing_kci(dir.path(), Some(smtp.port), "");
    let alice = Gpg::new();
    let fpr = alice.generate("Alice <alice@example.com>", algo, true, "1y");
    trust_operator(&kci, &alice).await;

    // 1. The key, mailed in, piped to kci inbound.
    let mail = submission_mail("alice@example.com", &alice.export("alice@example.com"));
    let (code, err) = inbound(&kci.config, &mail);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&fpr), "{err}");

    // 2. The confirmation, encrypted to that key and signed by the operator.
    let confirm = eventually(15, "the confirmation mail", || async {
        smtp.mails()
            .into_iter()
            .find(|m| m.contains("multipart/encrypted"))
    })
    .await;
    assert!(
        !confirm.contains("Confirm your OpenPGP key"),
        "the subject does not leak"
    );
    let (inner, status) = alice.decrypt_mail(&confirm);
    assert!(status.contains("DECRYPTION_OKAY"), "{status}");
    assert!(status.contains("GOODSIG"), "{status}");
    let inner = unqp(&inner);
    assert!(
        inner.contains("Subject: Confirm your OpenPGP key"),
        "{inner}"
    );
    let link = inner
        .split_whitespace()
        .find(|w| w.contains("/v1/keys/confirm/"))
        .expect("a link")
        .to_string();
    let path = &link[link.find("/v1/").unwrap()..];
    // Fetching the link (a mail scanner) changes nothing; the button does.
    let (s, _) = kci.call("GET", path, None, None).await;
    assert_eq!(s, 200);
    let (_, status) = kci
        .call(
            "GET",
            "/v1/keys/alice@example.com",
            Some(&kci.token(&["directory:read"])),
            None,
        )
        .await;
    assert_eq!(status["active"], serde_json::Value::Null);
    let (s, page) = kci.call("POST", path, None, None).await;
    assert_eq!(s, 200, "{page}");
    assert!(page.to_string().contains("Key confirmed"), "{page}");
    let (s, _) = kci.call("POST", path, None, None).await;
    assert_eq!(s, 404, "a link works once");
    let reader = kci.token(&["directory:read"]);
    let (_, status) = kci
        .call("GET", "/v1/keys/Alice@Example.com", Some(&reader), None)
        .await;
    assert_eq!(status["active"]["fingerprint"], fpr.as_str());
    assert_eq!(status["active"]["state"], "active");

    // 3. An event: the notice arrives encrypted and signed.
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "mailto:alice@example.com", "verified": true}),
    )
    .await;
    let event = json!({
        "id": "e1", "type": "line.down", "account": "A1", "service": "L1",
        "occurred_at": "2026-07-01T02:58:00Z", "expires_at": "2099-01-01T00:00:00Z",
        "data": {"ticket": "T-4711"}
    });
    kci.post_event(&source, &event.to_string()).await;
    let notice = eventually(15, "the notice", || async {
        smtp.mails()
            .into_iter()
            .filter(|m| m.contains("multipart/encrypted"))
            .find(|m| {
                let (inner, _) = alice.decrypt_mail(m);
                inner.contains("Line L1 is down")
            })
    })
    .await;
    assert!(
        !notice.contains("T-4711") && !notice.contains("Line L1"),
        "nothing leaks outside"
    );
    let (inner, status) = alice.decrypt_mail(&notice);
    assert!(
        status.contains("GOODSIG") && status.contains("VALIDSIG"),
        "{status}"
    );
    assert!(
        unqp(&inner).contains("Engineer reference: T-4711."),
        "{inner}"
    );
}

#[tokio::test]
async fn an_ed25519_cv25519_key_is_registered_by_mail_and_used() {
    register_and_receive("ed25519").await;
}

#[tokio::test]
async fn an_rsa3072_key_is_registered_by_mail_and_used() {
    register_and_receive("rsa3072").await;
}

#[tokio::test]
async fn keys_for_someone_elses_address_never_become_active_and_replacement_waits_for_proof() {
    let dir = tempfile::tempdir().unwrap();
    let kci = signing_kci(dir.path(), None, "");
    let writer = kci.token(&["keys:write"]);
    let reader = kci.token(&["directory:read"]);
    let mallory = Gpg::new();
    mallory.generate("Mallory <mallory@evil.example>", "ed25519", true, "1y");
    let key = mallory.export("mallory@evil.example");

    // Over the API, for Alice's address: refused, with the reason.
    let body = json!({"address": "alice@example.com", "key": key}).to_string();
    let (s, v) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body))
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "key_refused");
    assert!(
        v["message"].as_str().unwrap().contains("alice@example.com"),
        "{v}"
    );
    // By mail, from Alice's address (forged): a polite refusal, no link.
    let (code, err) = inbound(&kci.config, &submission_mail("alice@example.com", &key));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("refused"), "{err}");
    let refusal = eventually(10, "the refusal", || async {
        kci.outbox()
            .into_iter()
            .find(|m| m.contains("was not registered"))
    })
    .await;
    assert!(!refusal.contains("/v1/keys/confirm/"), "{refusal}");
    let (_, status) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    assert_eq!(status["active"], serde_json::Value::Null);
    assert_eq!(status["pending"], json!([]));

    // Alice's own key, confirmed through the API path this time.
    let alice = Gpg::new();
    alice.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let body = json!({"address": "alice@example.com", "key": alice.export("alice@example.com")})
        .to_string();
    let (s, v) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body))
        .await;
    assert_eq!((s, &v["status"]), (202, &json!("pending")), "{v}");
    let confirm = eventually(10, "the confirmation", || async {
        kci.outbox()
            .into_iter()
            .find(|m| m.contains("multipart/encrypted"))
    })
    .await;
    let (s, _) = kci
        .call("POST", &link_in(&alice, &confirm), None, None)
        .await;
    assert_eq!(s, 200);

    // Alice extends her key and sends it again: merged into the active copy
    // at once, the new expiry taken.
    let (_, before) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    let fpr = before["active"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["--quick-set-expire", &fpr, "3y"], None);
    alice.ok(&["--quick-set-expire", &fpr, "3y", "*"], None);
    let body = json!({"address": "alice@example.com", "key": alice.export("alice@example.com")})
        .to_string();
    let (s, v) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body))
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("refreshed")), "{v}");
    let (_, after) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    assert_eq!(after["active"]["fingerprint"], fpr.as_str());
    assert!(
        after["active"]["expires_at"].as_str() > before["active"]["expires_at"].as_str(),
        "{before} {after}"
    );

    // Alice revokes the key (gpg's own revocation certificate) and sends
    // it: refused as a key, but kept, so nothing more is encrypted to it —
    // a notice fails rather than going out in clear.
    let rev = std::fs::read_to_string(alice.path(&format!("openpgp-revocs.d/{fpr}.rev")))
        .unwrap()
        .replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
    alice.ok(&["--import"], Some(rev.as_bytes()));
    let body = json!({"address": "alice@example.com", "key": alice.export("alice@example.com")})
        .to_string();
    let (s, v) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body))
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write", "events:read"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "mailto:alice@example.com", "verified": true}),
    )
    .await;
    let event = json!({"id": "after-revocation", "type": "line.down", "account": "A1", "service": "L1",
        "occurred_at": "2026-07-01T02:58:00Z", "expires_at": "2099-01-01T00:00:00Z", "data": {"ticket": "T-9"}});
    kci.post_event(&source, &event.to_string()).await;
    let fate = eventually(10, "the notice's fate", || async {
        let (_, v) = kci
            .call("GET", "/v1/events/after-revocation", Some(&source), None)
            .await;
        let n = v["notifications"][0].clone();
        (n["state"] == "failed").then_some(n)
    })
    .await;
    assert!(
        fate["detail"].as_str().unwrap().contains("never in clear"),
        "{fate}"
    );
    assert!(
        kci.outbox().iter().all(|m| !m.contains("T-9")),
        "nothing in clear"
    );

    // Someone submits another key for Alice: a change that waits for proof
    // from Alice's current key; nothing applies it early.
    let other = Gpg::new();
    other.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let body = json!({"address": "alice@example.com", "key": other.export("alice@example.com")})
        .to_string();
    let (s, v) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body))
        .await;
    assert_eq!((s, &v["status"]), (202, &json!("change_requested")), "{v}");
    let (_, status) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    let changes = status["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (&changes[0]["state"], &changes[0]["proven_current"]),
        (&json!("pending"), &json!(false))
    );
    // Its cooling-off: 7 days, Alice's account being at the standard level.
    let days = |c: &serde_json::Value| {
        let at = |k: &str| chrono::DateTime::parse_from_rfc3339(c[k].as_str().unwrap()).unwrap();
        (at("not_before") - at("requested_at")).num_days()
    };
    assert_eq!(days(&changes[0]), 7);
    // The other key's holder confirms possession: still not applied.
    let to_other = eventually(10, "the new key's confirmation", || async {
        kci.outbox()
            .into_iter()
            .filter(|m| m.contains("multipart/encrypted"))
            .find(|m| other.decrypt_mail(m).1.contains("DECRYPTION_OKAY"))
    })
    .await;
    let (s, page) = kci
        .call("POST", &link_in(&other, &to_other), None, None)
        .await;
    assert_eq!(s, 200);
    assert!(page.to_string().contains("other key holder"), "{page}");
    let (_, status) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    assert_ne!(status["active"]["fingerprint"], v["fingerprint"]);
    // Removal: 202 with a pending change; the scope is checked.
    let (s, _) = kci
        .call("DELETE", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    assert_eq!(s, 403);
    // At the maximum level the wait is 30 days.
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(r#"{"name":"Alice","security_level":"maximum"}"#),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = kci
        .call("DELETE", "/v1/keys/alice@example.com", Some(&writer), None)
        .await;
    assert_eq!(
        (s, &v["change"]["kind"]),
        (202, &json!("key.remove")),
        "{v}"
    );
    assert_eq!(days(&v["change"]), 30);
    let (_, status) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
        .await;
    assert!(status["active"].is_object(), "removal waits for proof");
}

/// Sends `mail` with Python's smtplib (a real SMTP client) to `rcpt` at
/// `port`; the server's answer to the message, or the refusal.
fn smtp_send(port: u16, rcpt: &str, mail: &[u8]) -> String {
    let script = r#"
import smtplib, sys
mail = sys.stdin.buffer.read()
try:
    with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
        s.ehlo("client.example")
        s.sendmail("alice@example.com", [sys.argv[2]], mail)
        print("sent")
except smtplib.SMTPRecipientsRefused as e:
    print("refused", list(e.recipients.values())[0][0])
except smtplib.SMTPDataError as e:
    print("data", e.smtp_code, e.smtp_error.decode())
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, &port.to_string(), rcpt])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(mail).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn keys_come_in_over_kcis_own_smtp_listener() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kci = signing_kci(
        dir.path(),
        None,
        &format!(
            "[keys]\nsubmission_address = \"keys@isp.example\"\nsmtp_listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    wait_for_port(port, "kci's SMTP listener");
    let alice = Gpg::new();
    let fpr = alice.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let mail = submission_mail("alice@example.com", &alice.export("alice@example.com"));
    // Only the submission address takes mail.
    assert_eq!(
        smtp_send(port, "postmaster@isp.example", &mail),
        "refused 550"
    );
    assert_eq!(smtp_send(port, "Keys@isp.example", &mail), "sent");
    let confirm = eventually(10, "the confirmation", || async {
        kci.outbox()
            .into_iter()
            .find(|m| m.contains("multipart/encrypted"))
    })
    .await;
    let (inner, status) = alice.decrypt_mail(&confirm);
    assert!(status.contains("DECRYPTION_OKAY"), "{status}");
    assert!(unqp(&inner).contains(&fpr), "{inner}");
    // Garbage is refused in the SMTP answer, with the reason.
    let answer = smtp_send(
        port,
        "keys@isp.example",
        b"no headers at all, no sender\r\n",
    );
    assert!(answer.starts_with("data 554"), "{answer}");
}

/// A PGP/MIME signed mail (RFC 3156) from `from`, signed by `signer`'s
/// key, carrying `key` as an attachment: the request a key holder makes.
pub(crate) fn signed_submission(signer: &Gpg, from: &str, key: &str) -> Vec<u8> {
    let entity = key_entity("Please use my new key.", Some(key));
    signed_mail(from, &entity, &sign_entity(signer, &entity, None), "")
}

/// A MIME entity (the part a holder signs): `text`, and `key` attached.
pub(crate) fn key_entity(text: &str, key: Option<&str>) -> String {
    use base64::Engine;
    let Some(key) = key else {
        return format!(
            "Content-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            text.replace('\n', "\r\n")
        );
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "Content-Type: multipart/mixed; boundary=\"inner\"\r\n\r\n\
         --inner\r\nContent-Type: text/plain\r\n\r\n{}\r\n\
         --inner\r\nContent-Type: application/pgp-keys; name=\"key.asc\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\n{}\r\n\
         --inner--\r\n",
        text.replace('\n', "\r\n"),
        lines.join("\r\n")
    )
}

/// `signer`'s detached signature over `entity`, armored with CRLF line
/// ends; made at `at` (gpg's `--faked-system-time`, e.g. `20261201T100000`)
/// if given.
pub(crate) fn sign_entity(signer: &Gpg, entity: &str, at: Option<&str>) -> String {
    let mut args = vec!["--armor", "--detach-sign", "--digest-algo", "SHA256"];
    if let Some(at) = at {
        args.extend(["--faked-system-time", at]);
    }
    let sig = signer.ok(&args, Some(entity.as_bytes()));
    String::from_utf8(sig)
        .unwrap()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
}

/// A `multipart/signed` mail from `from` of `entity` and `sig`, with
/// `extra` inserted after the signature part (more parts, or nothing).
pub(crate) fn signed_mail(from: &str, entity: &str, sig: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\r\nTo: keys@isp.example\r\nSubject: New key\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\"outer\"\r\n\r\n\
         --outer\r\n{entity}\r\n--outer\r\nContent-Type: application/pgp-signature\r\n\r\n{sig}\r\n{extra}--outer--\r\n"
    )
    .into_bytes()
}

/// Follows the key link in the mail that `holder` can decrypt.
pub(crate) async fn follow_link(kci: &Kci, holder: &Gpg, skip: usize) -> serde_json::Value {
    let mail = eventually(10, "a mail for this key", || async {
        kci.outbox()
            .into_iter()
            .filter(|m| m.contains("multipart/encrypted"))
            .filter(|m| holder.decrypt_mail(m).1.contains("DECRYPTION_OKAY"))
            .nth(skip)
    })
    .await;
    let (s, page) = kci.call("POST", &link_in(holder, &mail), None, None).await;
    assert_eq!(s, 200, "{page}");
    page
}

#[tokio::test]
async fn a_replacement_applies_at_once_with_the_current_holders_proof() {
    let dir = tempfile::tempdir().unwrap();
    // Many requests for one address in a minute: more than the default
    // limit allows (that limit has a test of its own).
    let kci = signing_kci(
        dir.path(),
        None,
        &format!("{LOCAL_WEBHOOKS}[keys]\nsubmissions_per_address = \"20/1h\"\n"),
    );
    let writer = kci.token(&["keys:write"]);
    let reader = kci.token(&["directory:read"]);
    let fingerprint =
        |v: &serde_json::Value| v["active"]["fingerprint"].as_str().map(str::to_string);
    let status = || async {
        kci.call("GET", "/v1/keys/alice@example.com", Some(&reader), None)
            .await
            .1
    };

    // Alice's first key, active.
    let first = Gpg::new();
    let k1 = first.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let body = json!({"address": "alice@example.com", "key": first.export("alice@example.com")});
    let (s, _) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body.to_string()))
        .await;
    assert_eq!(s, 202);
    follow_link(&kci, &first, 0).await;
    assert_eq!(fingerprint(&status().await).as_deref(), Some(k1.as_str()));

    // Alice gets her notices by mail and on a webhook too.
    let hooks = WebhookReceiver::start().await;
    let admin = kci.token(&["directory:admin", "directory:write"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "mailto:alice@example.com", "verified": true}),
    )
    .await;
    let (s, _) = kci
        .add_destination(
            &admin,
            "A1",
            "alice",
            &json!({"uri": hooks.url, "verified": true}).to_string(),
        )
        .await;
    assert_eq!(s, 201);

    // 1. By link: the current key approves, the new key confirms.
    let second = Gpg::new();
    let k2 = second.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let body = json!({"address": "alice@example.com", "key": second.export("alice@example.com")});
    let (s, v) = kci
        .call("POST", "/v1/keys", Some(&writer), Some(&body.to_string()))
        .await;
    assert_eq!((s, &v["status"]), (202, &json!("change_requested")), "{v}");
    // The approval goes to the current key (its second mail: the first was
    // its own confirmation; then "now encrypted"): find it by its words.
    let approval = eventually(10, "the approval request", || async {
        kci.outbox()
            .into_iter()
            .filter(|m| m.contains("multipart/encrypted"))
            .find(|m| {
                let (inner, status) = first.decrypt_mail(m);
                status.contains("DECRYPTION_OKAY") && inner.contains("replace your OpenPGP key")
            })
    })
    .await;
    let (s, page) = kci
        .call("POST", &link_in(&first, &approval), None, None)
        .await;
    assert_eq!(s, 200);
    assert!(page.to_string().contains("other key holder"), "{page}");
    assert_eq!(
        fingerprint(&status().await).as_deref(),
        Some(k1.as_str()),
        "one proof is not enough"
    );
    let page = follow_link(&kci, &second, 0).await;
    assert!(page.to_string().contains("Change applied"), "{page}");
    assert_eq!(fingerprint(&status().await).as_deref(), Some(k2.as_str()));
    // Every other destination of Alice's is told (DESIGN §7).
    let told = eventually(10, "the notice on the webhook", || async {
        hooks
            .hooks()
            .into_iter()
            .find(|h| String::from_utf8_lossy(&h.body).contains("kci.key.changed"))
    })
    .await;
    let body = String::from_utf8_lossy(&told.body);
    assert!(
        body.contains(&k2) && body.contains("If you did not ask for this"),
        "{body}"
    );

    // 2. By a request signed with the current key, mailed in: the holder's
    // proof is the signature; the new key still confirms possession.
    let third = Gpg::new();
    let k3 = third.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let mail = signed_submission(
        &second,
        "alice@example.com",
        &third.export("alice@example.com"),
    );
    let (code, err) = inbound(&kci.config, &mail);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("proof from the current key: true"), "{err}");
    let page = follow_link(&kci, &third, 0).await;
    assert!(page.to_string().contains("Change applied"), "{page}");
    assert_eq!(fingerprint(&status().await).as_deref(), Some(k3.as_str()));

    // A request signed by a key that is not the current one proves nothing.
    let fourth = Gpg::new();
    fourth.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let mail = signed_submission(
        &first,
        "alice@example.com",
        &fourth.export("alice@example.com"),
    );
    let (code, err) = inbound(&kci.config, &mail);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("proof from the current key: false"), "{err}");
    follow_link(&kci, &fourth, 0).await;
    assert_eq!(
        fingerprint(&status().await).as_deref(),
        Some(k3.as_str()),
        "still the third"
    );
}
