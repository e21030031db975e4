//! Assurance recovery (issue 12, DESIGN.md §7) against real `kci serve`
//! processes, a real SMTP server (aiosmtpd), real GnuPG keys and
//! `kci inbound`: a customer who lost her key recovers through an
//! assurer who met her; the assurer alone, someone reading her mail, and
//! an old secret all fail.

use crate::changes::{cooling, customer, hooks_of, page};
use crate::common::*;
use crate::secure_mail::{Gpg, inbound, operator_key, submission_mail, trust_operator, unqp};
use serde_json::{Value, json};

/// kci signing its mail, sending it to a real SMTP server, on SQLite or
/// the PostgreSQL store `pg`.
pub(crate) fn hub(pg: Option<&str>, dir: &std::path::Path, smtp: &SmtpServer, extra: &str) -> Kci {
    let signing = operator_key(dir);
    Kci::start_on(
        pg,
        Some(smtp.port),
        "",
        &format!("signing_key = \"{}\"\n", signing.display()),
        extra,
    )
}

/// The mails `holder` can decrypt, decrypted (quoted-printable undone),
/// with gpg's status lines.
fn readable(smtp: &SmtpServer, holder: &Gpg) -> Vec<(String, String)> {
    smtp.mails()
        .into_iter()
        .filter(|m| m.contains("multipart/encrypted"))
        .map(|m| holder.decrypt_mail(&m))
        .filter(|(_, status)| status.contains("DECRYPTION_OKAY"))
        .map(|(inner, status)| (unqp(&inner), status))
        .collect()
}

/// The first `/v1/…` path after `marker` in a decrypted mail `holder`
/// can read.
async fn path_in(smtp: &SmtpServer, holder: &Gpg, marker: &str) -> String {
    eventually(15, marker, || async {
        readable(smtp, holder).into_iter().find_map(|(inner, _)| {
            let word = inner.split_whitespace().find(|w| w.contains(marker))?;
            Some(word[word.find("/v1/")?..].to_string())
        })
    })
    .await
}

/// The T-word in the mail `holder` can read, and gpg's status on it.
async fn t_word(smtp: &SmtpServer, holder: &Gpg) -> (String, String) {
    eventually(15, "the recovery word", || async {
        readable(smtp, holder)
            .into_iter()
            .find_map(|(inner, status)| {
                let at = inner.find("Your recovery word is: ")? + "Your recovery word is: ".len();
                let word: String = inner[at..]
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                Some((word, status))
            })
    })
    .await
}

/// Alice's key, registered and confirmed through the real SMTP server.
pub(crate) async fn alice_key(kci: &Kci, smtp: &SmtpServer) -> (Gpg, String) {
    let alice = Gpg::new();
    let fpr = alice.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let (code, err) = inbound(
        &kci.config,
        &submission_mail("alice@example.com", &alice.export("alice@example.com")),
    );
    assert_eq!(code, 0, "{err}");
    let link = path_in(smtp, &alice, "/v1/keys/confirm/").await;
    let (s, v) = kci.call("POST", &link, None, None).await;
    assert_eq!(s, 200, "{v}");
    (alice, fpr)
}

/// Alice lost her key: her new one, sent without proof and confirmed by
/// its link. The change waits; its id.
pub(crate) async fn lost_key(kci: &Kci, smtp: &SmtpServer, admin: &str) -> (Gpg, String, String) {
    let holder = Gpg::new();
    let fpr = holder.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    trust_operator(kci, &holder).await;
    let (code, err) = inbound(
        &kci.config,
        &submission_mail("alice@example.com", &holder.export("alice@example.com")),
    );
    assert_eq!(code, 0, "{err}");
    let link = path_in(smtp, &holder, "/v1/keys/confirm/").await;
    let (s, v) = kci.call("POST", &link, None, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = kci
        .call(
            "GET",
            "/v1/changes?address=alice@example.com",
            Some(admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let change = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "pending" && c["kind"] == "key.replace")
        .unwrap_or_else(|| panic!("a pending key change in {v}"))
        .clone();
    (holder, fpr, change["id"].as_str().unwrap().to_string())
}

/// Staff member `name` with `role`, and a token acting as them.
fn staff(kci: &Kci, name: &str, role: &str) -> String {
    let (code, _, err) = kci.cli(&["staff", "add", name, "--role", role]);
    assert_eq!(code, 0, "{err}");
    kci.token_as(Some(name), &[])
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn assure(kci: &Kci, token: &str, change: &str, a_word: &str) -> (u16, Value) {
    let body = json!({"a_word": a_word, "ticket": "T-100", "met_on": today()}).to_string();
    kci.call(
        "POST",
        &format!("/v1/changes/{change}/assurances"),
        Some(token),
        Some(&body),
    )
    .await
}

async fn complete(kci: &Kci, token: &str, change: &str, secret: &str) -> (u16, Value) {
    let body = json!({ "secret": secret }).to_string();
    kci.call(
        "POST",
        &format!("/v1/changes/{change}/assurance"),
        Some(token),
        Some(&body),
    )
    .await
}

pub(crate) async fn active_key(kci: &Kci, token: &str) -> Option<String> {
    let (_, v) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(token), None)
        .await;
    v["active"]["fingerprint"].as_str().map(str::to_string)
}

/// The honest path, the same day: Alice lost her key and sent a new one;
/// at `high` it would wait 14 days. She meets an assurer, agrees an A-word
/// with them, confirms from her mailbox (the link is encrypted to her new
/// key), receives the T-word there, and completes on the page: her new
/// key is active at once. Her phone was told, with a veto link; every mail
/// was signed; the secret works once; the audit log holds each step.
async fn same_day_recovery(pg: Option<&str>) {
    let phone = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    // A period no test waits out: only the assurance can apply it today.
    let kci = hub(pg, dir.path(), &smtp, &cooling(3600));
    let admin = customer(&kci, "high", &phone).await;
    let (_old, old) = alice_key(&kci, &smtp).await;
    let (holder, new, change) = lost_key(&kci, &smtp, &admin).await;
    assert_eq!(active_key(&kci, &admin).await, Some(old));
    let sam = staff(&kci, "sam", "assurer");

    let (s, v) = assure(&kci, &sam, &change, "kiwi-42").await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["assurance"]["state"], "recorded");
    assert_eq!(v["assurance"]["address"], "alice@example.com");
    assert!(v["assurance"].get("a_hash").is_none(), "{v}");

    // The link, encrypted to her new key: a scanner's GET changes nothing.
    let link = path_in(&smtp, &holder, "/v1/recovery/").await;
    let (s, text) = page(&kci, "GET", &link).await;
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("Confirm"), "{text}");
    let (s, text) = page(&kci, "POST", &link).await;
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("Confirmed"), "{text}");
    let (word, status) = t_word(&smtp, &holder).await;
    assert_eq!(word.len(), 10, "{word}");
    assert!(status.contains("GOODSIG"), "signed: {status}");
    // Everyone else is told, without the word, and may stop it.
    let told = eventually(10, "the phone told of the recovery", || async {
        hooks_of(&phone, "kci.change.pending")
            .into_iter()
            .find(|h| {
                h["data"]["short"]
                    .as_str()
                    .unwrap_or("")
                    .contains("recovery")
            })
    })
    .await;
    let short = told["data"]["short"].as_str().unwrap();
    assert!(short.contains("/v1/veto/"), "{short}");
    assert!(!short.contains(&word), "{short}");

    // Completed on the page the link opens: applied now.
    let (s, text) = page(&kci, "GET", &link).await;
    assert_eq!(s, 200);
    assert!(text.contains("name=\"secret\""), "{text}");
    let form = format!("secret=kiwi-42-{word}");
    let (s, v) = kci.form(&link, &form).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.contains("Recovered"), "{v}");
    assert_eq!(active_key(&kci, &admin).await, Some(new));
    let (_, v) = kci
        .call("GET", &format!("/v1/changes/{change}"), Some(&admin), None)
        .await;
    assert_eq!(v["state"], "applied", "{v}");
    assert!(
        v["proof"].as_str().unwrap().starts_with("assurance:"),
        "{v}"
    );

    // Once: the same secret again is refused, on the page and the API.
    let (s, v) = kci.form(&link, &form).await;
    assert_eq!(s, 404, "{v}");
    let writer = kci.token(&["keys:write"]);
    let (s, v) = complete(&kci, &writer, &change, &format!("kiwi-42-{word}")).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("not_pending")), "{v}");

    let (s, v) = kci
        .call("GET", "/v1/audit?account=acme", Some(&admin), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let actions: Vec<(&str, &str)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ticket"] == "T-100")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for step in [
        ("assurance.recorded", "ok"),
        ("assurance.confirmed", "ok"),
        ("assurance.completed", "ok"),
    ] {
        assert!(actions.contains(&step), "{step:?} in {actions:?}");
    }
    let (code, out, err) = kci.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn an_assured_customer_recovers_in_person_and_registers_a_new_key_the_same_day_on_sqlite() {
    same_day_recovery(None).await;
}

#[tokio::test]
async fn an_assured_customer_recovers_in_person_and_registers_a_new_key_the_same_day_on_postgres() {
    let (url, schema) = crate::changes::pg_schema().await;
    same_day_recovery(Some(&url)).await;
    schema.drop_now().await;
}

/// The attacks: the assurer knows the A-word but never sees the T-word;
/// whoever reads Alice's mail (here: holds the key the mail is encrypted
/// to) sees the T-word but not the A-word. Each fails with the same
/// answer, whichever half was wrong; the third wrong secret locks the
/// recovery for good, opens an incident and tells Alice everywhere. Only
/// a person's token may assure, and only an assurer's.
#[tokio::test]
async fn neither_a_malicious_assurer_nor_a_mailbox_reader_completes_a_recovery() {
    let phone = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let kci = hub(None, dir.path(), &smtp, &cooling(3600));
    let admin = customer(&kci, "high", &phone).await;
    let (_old, old) = alice_key(&kci, &smtp).await;
    let (reader, _, change) = lost_key(&kci, &smtp, &admin).await;
    let sam = staff(&kci, "sam", "assurer");
    let agent = staff(&kci, "al", "agent");

    // Not an assurer, not a person, not a proper A-word: refused.
    let (s, v) = assure(&kci, &agent, &change, "kiwi-42").await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = assure(&kci, &admin, &change, "kiwi-42").await;
    assert_eq!((s, v["error"].as_str()), (403, Some("staff_only")), "{v}");
    for bad in ["short", "has space", "ünïcødé!"] {
        let (s, v) = assure(&kci, &sam, &change, bad).await;
        assert_eq!(s, 422, "{bad}: {v}");
        assert!(
            v["message"].as_str().unwrap().starts_with("a_word"),
            "{bad}: {v}"
        );
    }
    let (s, v) = assure(&kci, &sam, &change, "kiwi-42").await;
    assert_eq!(s, 201, "{v}");
    let link = path_in(&smtp, &reader, "/v1/recovery/").await;
    let (s, _) = page(&kci, "POST", &link).await;
    assert_eq!(s, 200);
    let (word, _) = t_word(&smtp, &reader).await;

    let writer = kci.token(&["keys:write"]);
    // The assurer guesses the T-word; the reader guesses the A-word.
    let (s1, v1) = complete(&kci, &writer, &change, "kiwi-42-abcdefghjk").await;
    let (s2, v2) = complete(&kci, &writer, &change, &format!("guess1-{word}")).await;
    assert_eq!(
        (s1, v1["error"].as_str()),
        (409, Some("wrong_secret")),
        "{v1}"
    );
    assert_eq!(v1, v2, "the answer says nothing of which half was wrong");
    assert_eq!(s2, 409);
    // The third locks it.
    let (s, text) = kci.form(&link, &format!("secret=other7-{word}")).await;
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("Locked"), "{text}");
    let (s, v) = complete(&kci, &writer, &change, &format!("kiwi-42-{word}")).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("assurance_locked")),
        "{v}"
    );
    let (_, v) = kci
        .call(
            "GET",
            &format!("/v1/changes/{change}/assurances"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["assurances"][0]["state"], "locked", "{v}");
    assert_eq!(v["assurances"][0]["attempts"], 3, "{v}");
    let (_, v) = kci.call("GET", "/v1/incidents", Some(&admin), None).await;
    assert!(
        v["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "assurance_locked" && i["change"] == change.as_str()),
        "{v}"
    );
    eventually(10, "the phone told of the lock", || async {
        (!hooks_of(&phone, "kci.assurance.locked").is_empty()).then_some(())
    })
    .await;
    // A second assurer cannot start over.
    let kim = staff(&kci, "kim", "assurer");
    let (s, v) = assure(&kci, &kim, &change, "other-99").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("assurance_locked")),
        "{v}"
    );
    assert_eq!(active_key(&kci, &admin).await, Some(old));
    // Nothing usable at rest, once kci has been idle a few seconds: no
    // A-word, no T-word in the database's files.
    eventually(30, "no copy of the secrets on disk", || async {
        let db = kci.dir.path().join("kci.db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
        let text = String::from_utf8_lossy(&bytes);
        (!text.contains("kiwi-42") && !text.contains(&word)).then_some(())
    })
    .await;
}
