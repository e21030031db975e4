//! Protected changes (issue 11, DESIGN.md §7) against real `kci serve`
//! processes, real GnuPG keys and `kci inbound`: each attack is told as a
//! story in its test's name and fails for the attacker; the honest paths
//! beside them succeed — with cooling-off periods of seconds.

use crate::common::*;
use crate::secure_mail::{Gpg, follow_link, inbound, operator_key, submission_mail};
use serde_json::{Value, json};
use std::time::Duration;

/// The cooling-off periods of these tests: seconds, as drills use.
pub(crate) fn cooling(secs: u32) -> String {
    cooling_and(secs, "")
}

/// As [`cooling`], with more lines for `[changes]`.
fn cooling_and(secs: u32, changes: &str) -> String {
    format!(
        "{LOCAL_WEBHOOKS}[changes]\ncooling_off = {{ standard = \"{secs}s\", high = \"{secs}s\", maximum = \"{secs}s\" }}\n{changes}\
         [keys]\nsubmissions_per_address = \"20/1h\"\n"
    )
}

/// A kci signing its mail (so the audit log is checkpointed too), on
/// SQLite or on the PostgreSQL store `pg`.
pub(crate) fn hub(pg: Option<&str>, extra: &str) -> (tempfile::TempDir, Kci) {
    let dir = tempfile::tempdir().unwrap();
    let signing = operator_key(dir.path());
    let kci = Kci::start_on(
        pg,
        None,
        "",
        &format!("signing_key = \"{}\"\n", signing.display()),
        extra,
    );
    (dir, kci)
}

/// Account `acme` at `level`, contact `alice` told by mail at
/// alice@example.com and on her phone (a webhook), both verified.
pub(crate) async fn customer(kci: &Kci, level: &str, phone: &WebhookReceiver) -> String {
    let admin = kci.token(&["admin"]);
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/acme",
            Some(&admin),
            Some(&json!({"name": "Acme", "security_level": "standard"}).to_string()),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/acme/contacts/alice",
            Some(&admin),
            Some("{}"),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");
    for uri in ["mailto:alice@example.com", phone.url.as_str()] {
        let body = json!({"uri": uri, "verified": true}).to_string();
        let (s, v) = kci.add_destination(&admin, "acme", "alice", &body).await;
        assert_eq!(s, 201, "{v}");
    }
    // Raised only now: the first destinations are how an account is set up.
    let body = json!({"name": "Acme", "security_level": level}).to_string();
    let (s, v) = kci
        .call("PUT", "/v1/accounts/acme", Some(&admin), Some(&body))
        .await;
    assert_eq!(s, 200, "{v}");
    admin
}

/// Alice's key, registered and confirmed.
async fn alice_key(kci: &Kci) -> (Gpg, String) {
    let alice = Gpg::new();
    let fpr = alice.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let (code, err) = inbound(
        &kci.config,
        &submission_mail("alice@example.com", &alice.export("alice@example.com")),
    );
    assert_eq!(code, 0, "{err}");
    let page = follow_link(kci, &alice, 0).await;
    assert!(page.to_string().contains("Key confirmed"), "{page}");
    (alice, fpr)
}

/// Submits `holder`'s new key for alice@example.com without any proof (a
/// lost key, or someone reading Alice's mail) and follows the
/// confirmation link encrypted to it: the change waits, proven new.
async fn new_key_without_proof(kci: &Kci) -> (Gpg, String) {
    let holder = Gpg::new();
    let fpr = holder.generate("Alice <alice@example.com>", "ed25519", true, "1y");
    let (code, err) = inbound(
        &kci.config,
        &submission_mail("alice@example.com", &holder.export("alice@example.com")),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("proof from the current key: false"), "{err}");
    let page = follow_link(kci, &holder, 0).await;
    assert!(page.to_string().contains("Confirmation recorded"), "{page}");
    (holder, fpr)
}

async fn active_key(kci: &Kci, token: &str) -> Option<String> {
    let (s, v) = kci
        .call("GET", "/v1/keys/alice@example.com", Some(token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["active"]["fingerprint"].as_str().map(str::to_string)
}

/// The hooks of one type the phone got.
pub(crate) fn hooks_of(phone: &WebhookReceiver, kind: &str) -> Vec<Value> {
    phone
        .hooks()
        .iter()
        .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// The veto link in the first reminder the phone got, as a path.
async fn veto_link(phone: &WebhookReceiver) -> String {
    let hook = eventually(10, "a reminder on the phone", || async {
        hooks_of(phone, "kci.change.pending").into_iter().next()
    })
    .await;
    let text = hook["data"]["short"].as_str().unwrap().to_string();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/v1/veto/"))
        .unwrap_or_else(|| panic!("a veto link in {text}"));
    link[link.find("/v1/veto/").unwrap()..].to_string()
}

pub(crate) async fn page(kci: &Kci, method: &str, path: &str) -> (u16, String) {
    let (s, v) = kci.call(method, path, None, None).await;
    (s, v.as_str().unwrap_or_default().to_string())
}

async fn changes(kci: &Kci, token: &str) -> Vec<Value> {
    let (s, v) = kci
        .call("GET", "/v1/changes?account=acme", Some(token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["changes"].as_array().unwrap().clone()
}

async fn wait_state(kci: &Kci, token: &str, id: &str, state: &str, secs: u64) -> Value {
    eventually(secs, &format!("change {id} {state}"), || async {
        let (s, v) = kci
            .call("GET", &format!("/v1/changes/{id}"), Some(token), None)
            .await;
        assert_eq!(s, 200, "{v}");
        (v["state"] == state).then_some(v)
    })
    .await
}

/// Someone who reads Alice's mail sends kci their own key as hers and
/// confirms it (the link is encrypted to their key, so they can). Nothing
/// proves it was Alice, so it waits; her phone is told, with a link, and
/// she stops it there. When the period is over, her key is still the one.
#[tokio::test]
async fn a_mail_interceptor_replaces_the_key_and_the_customer_vetoes_from_her_phone() {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling(8));
    let admin = customer(&kci, "standard", &phone).await;
    let (_alice, fpr) = alice_key(&kci).await;
    let (_mallory, _) = new_key_without_proof(&kci).await;
    let pending = changes(&kci, &admin).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["kind"], "key.replace");
    assert_eq!(pending[0]["state"], "pending");
    let id = pending[0]["id"].as_str().unwrap().to_string();

    let link = veto_link(&phone).await;
    // A mail scanner fetching the link stops nothing.
    let (s, text) = page(&kci, "GET", &link).await;
    assert_eq!(s, 200);
    assert!(text.contains("Stop it"), "{text}");
    let (s, text) = page(&kci, "POST", &link).await;
    assert_eq!(s, 200, "{text}");
    assert!(text.contains("Stopped"), "{text}");
    wait_state(&kci, &admin, &id, "vetoed", 5).await;

    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        active_key(&kci, &admin).await.as_deref(),
        Some(fpr.as_str())
    );
    let (s, v) = kci.call("GET", "/v1/incidents", Some(&admin), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["incidents"][0]["change"], id.as_str());
    assert_eq!(v["incidents"][0]["kind"], "veto");
    // Everyone is told it was stopped.
    eventually(10, "the phone told of the veto", || async {
        (!hooks_of(&phone, "kci.change.vetoed").is_empty()).then_some(())
    })
    .await;
}

/// A source system's `directory:write` token (stolen, or a careless
/// integration) adds the attacker's phone to a `high` account: it only
/// opens a change — nothing is sent to the new number, everyone already
/// there is told — and the customer stops it. The link works once.
#[tokio::test]
async fn a_stolen_directory_token_adds_a_phone_to_a_high_account_and_is_vetoed() {
    let phone = WebhookReceiver::start().await;
    let attacker = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling_and(8, "wrong_links_per_source = \"3/1h\"\n"));
    let admin = customer(&kci, "high", &phone).await;
    let writer = kci.token(&["directory:write"]);
    let body = json!({"uri": attacker.url}).to_string();
    let (s, v) = kci.add_destination(&writer, "acme", "alice", &body).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["change"]["kind"], "destination.add");
    assert_eq!(v["change"]["state"], "pending");
    let id = v["change"]["id"].as_str().unwrap().to_string();
    // Another redirection meanwhile waits for this one to end.
    let second = json!({"uri": format!("{}?2", attacker.url)}).to_string();
    let (s, v) = kci.add_destination(&writer, "acme", "alice", &second).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "change_pending", "{v}");

    let link = veto_link(&phone).await;
    let (s, text) = page(&kci, "POST", &link).await;
    assert_eq!(s, 200, "{text}");
    // The same link again (replayed from the phone's history): nothing.
    let (s, text) = page(&kci, "POST", &link).await;
    assert_eq!(s, 404, "{text}");
    assert!(text.contains("not valid"), "{text}");
    // A guessed link: the same answer; and guessing from one address
    // soon stops (the replay above counted as one wrong link).
    let (s, _) = page(&kci, "POST", &format!("/v1/veto/{}", "A".repeat(43))).await;
    assert_eq!(s, 404);
    let (s, _) = page(&kci, "POST", "/v1/veto/short").await;
    assert_eq!(s, 404);
    let (s, v) = kci
        .call("POST", &format!("/v1/veto/{}", "B".repeat(43)), None, None)
        .await;
    assert_eq!((s, v["error"].as_str()), (429, Some("rate_limited")), "{v}");

    tokio::time::sleep(Duration::from_secs(8)).await;
    let change = wait_state(&kci, &admin, &id, "vetoed", 5).await;
    assert!(
        change["reason"]
            .as_str()
            .unwrap()
            .contains("vetoed by link:"),
        "{change}"
    );
    let (_, account) = kci
        .call("GET", "/v1/accounts/acme", Some(&admin), None)
        .await;
    let uris: Vec<&str> = account["contacts"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris.len(), 2, "{uris:?}");
    assert!(attacker.hooks().is_empty(), "nothing reached the attacker");
}

/// At `maximum`, two approvers other than the requester: the requester
/// approving their own change is refused (and audited), one approver
/// approving twice counts once; with a second approver, and no veto, the
/// change applies when its period is over.
#[tokio::test]
async fn approvals_are_two_different_people_neither_the_requester() {
    let phone = WebhookReceiver::start().await;
    let newphone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling(2));
    let admin = customer(&kci, "maximum", &phone).await;
    for (name, role) in [("ann", "approver"), ("bob", "approver"), ("cy", "approver")] {
        let (code, _, err) = kci.cli(&["staff", "add", name, "--role", role]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, _) = kci.cli(&["staff", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("ann\tapprover\tenabled"), "{out}");
    let ann = kci.token_as(Some("ann"), &[]);
    let bob = kci.token_as(Some("bob"), &[]);
    let cy = kci.token_as(Some("cy"), &[]);
    // A role's ceiling: an approver's token cannot be made admin.
    let (code, _, err) = kci.cli(&[
        "token", "create", "--name", "x", "--staff", "ann", "--scope", "admin",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("more than the role"), "{err}");

    let body = json!({"uri": newphone.url, "verified": false}).to_string();
    let (s, v) = kci.add_destination(&ann, "acme", "alice", &body).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["change"]["requested_by"], "staff:ann");
    assert_eq!(v["change"]["approvals_needed"], 2);
    let id = v["change"]["id"].as_str().unwrap().to_string();
    let approve = |token: String| {
        let kci = &kci;
        let path = format!("/v1/changes/{id}/approve");
        async move {
            kci.call("POST", &path, Some(&token), Some(r#"{"ticket": "INC-42"}"#))
                .await
        }
    };
    let (s, v) = approve(ann.clone()).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("own_change")), "{v}");
    let (s, v) = approve(bob.clone()).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = approve(bob.clone()).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("approved_already")),
        "{v}"
    );
    // A token that is not a person's cannot approve.
    let (s, v) = approve(admin.clone()).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("staff_only")), "{v}");
    // Past the period with one approval: still waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = kci
        .call("GET", &format!("/v1/changes/{id}"), Some(&admin), None)
        .await;
    assert_eq!(v["state"], "pending", "{v}");
    let (s, v) = approve(cy.clone()).await;
    assert_eq!(s, 200, "{v}");
    let change = wait_state(&kci, &admin, &id, "applied", 10).await;
    let approvers: Vec<&str> = change["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["staff"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, vec!["bob", "cy"]);
    // The new destination gets its verification code only now.
    eventually(10, "the code on the new phone", || async {
        (!hooks_of(&newphone, "kci.verify").is_empty()).then_some(())
    })
    .await;
    assert!(hooks_of(&newphone, "kci.change.pending").is_empty());

    // The audit log has all of it, under each person's name.
    let auditor = kci.token(&["audit:read"]);
    let (s, v) = kci
        .call("GET", "/v1/audit?account=acme", Some(&auditor), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let own = entries
        .iter()
        .find(|e| e["action"] == "change.approval" && e["outcome"] == "refused")
        .unwrap_or_else(|| panic!("the refusal audited: {v}"));
    assert_eq!(own["actor"], "staff:ann");
    assert_eq!(own["ticket"], "INC-42");
    assert!(
        own["source"].as_str().unwrap().starts_with("127.0.0.1"),
        "{own}"
    );
    // A disabled approver's token stops working at once.
    let (code, _, err) = kci.cli(&["staff", "disable", "bob"]);
    assert_eq!(code, 0, "{err}");
    let (s, _) = kci
        .call("GET", &format!("/v1/changes/{id}"), Some(&bob), None)
        .await;
    assert_eq!(s, 401);
    // …and the token list says why.
    let (code, list, err) = kci.cli(&["token", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        list.lines()
            .any(|l| l.split('\t').nth(2) == Some("bob") && l.contains("\tstaff_disabled\t")),
        "{list}"
    );
}

fn sqlite(db: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn verify(kci: &Kci) -> (i32, String) {
    let (code, out, err) = kci.cli(&["audit", "verify"]);
    (code, format!("{out}{err}"))
}

/// Someone with the database in hand edits, deletes or reorders audit
/// rows: `kci audit verify` (run beside the live server) names the first
/// entry that is not as written; with the rows put back, it is intact.
#[tokio::test]
async fn an_audit_row_edited_deleted_or_reordered_is_named() {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(
        None,
        &format!(
            "{}[audit]\ncheckpoint_every = 4\ncheckpoint_interval = \"1s\"\n",
            cooling(60)
        ),
    );
    customer(&kci, "standard", &phone).await;
    for name in ["ann", "bob", "cy", "dee", "eve", "fay"] {
        let (code, _, err) = kci.cli(&["staff", "add", name, "--role", "viewer"]);
        assert_eq!(code, 0, "{err}");
    }
    // The server signs a checkpoint of the head within a tick or two.
    let db = kci.db();
    eventually(10, "a checkpoint of the head", || async {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let q = |sql: &str| {
            conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .unwrap()
        };
        let (head, signed) = (
            q("SELECT max(seq) FROM audit"),
            q("SELECT max(seq) FROM audit_checkpoints"),
        );
        (head.is_some() && head == signed).then_some(())
    })
    .await;
    let (code, out) = verify(&kci);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact") && !out.contains(" 0 signed"),
        "{out}"
    );

    let snapshot = kci.dir.path().join("audit-copy.sql");
    let _ = std::fs::remove_file(&snapshot);
    sqlite(
        &db,
        &format!(
            "ATTACH '{}' AS copy; CREATE TABLE copy.audit AS SELECT * FROM audit;",
            snapshot.display()
        ),
    );
    let restore = format!(
        "ATTACH '{}' AS copy; DELETE FROM audit; INSERT INTO audit SELECT * FROM copy.audit;",
        snapshot.display()
    );
    // (tampering, the entry named)
    let cases = [
        ("UPDATE audit SET outcome = 'refused' WHERE seq = 3", 3),
        ("UPDATE audit SET actor = 'staff:mallory' WHERE seq = 5", 5),
        ("DELETE FROM audit WHERE seq = 4", 4),
        // Two staff members' additions swapped (the last six entries).
        (
            "UPDATE audit SET actor = CASE seq WHEN 8 THEN (SELECT actor FROM audit WHERE seq = 11) \
             ELSE (SELECT actor FROM audit WHERE seq = 8) END, \
             detail = CASE seq WHEN 8 THEN (SELECT detail FROM audit WHERE seq = 11) \
             ELSE (SELECT detail FROM audit WHERE seq = 8) END WHERE seq IN (8, 11)",
            8,
        ),
    ];
    for (sql, seq) in cases {
        sqlite(&db, sql);
        let (code, out) = verify(&kci);
        assert_eq!(code, 1, "{sql}: {out}");
        assert!(out.contains(&format!("entry {seq}:")), "{sql}: {out}");
        sqlite(&db, &restore);
        let (code, out) = verify(&kci);
        assert_eq!(code, 0, "restored after {sql}: {out}");
    }
    // The last entries cut off below a signed checkpoint.
    sqlite(&db, "DELETE FROM audit WHERE seq > 2");
    let (code, out) = verify(&kci);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entry 3:") && out.contains("removed"), "{out}");
    sqlite(&db, &restore);
    // A forged checkpoint.
    sqlite(
        &db,
        "UPDATE audit_checkpoints SET head = 'ff' || substr(head, 3)",
    );
    let (code, out) = verify(&kci);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not signed"), "{out}");
}

/// A fresh schema of the test PostgreSQL server for a kci to use, and
/// its URL; dropped when the test ends.
pub(crate) async fn pg_schema() -> (String, PgSchema) {
    let base = std::env::var("KCI_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("kci_e2e_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL server");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{sep}options=-c%20search_path%3D{name}"),
        PgSchema { client, name },
    )
}

pub(crate) struct PgSchema {
    client: tokio_postgres::Client,
    name: String,
}

impl PgSchema {
    pub(crate) async fn drop_now(self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .await;
    }
}

/// The honest path of the lost key: Alice lost her secret key, sends a
/// new one; nobody vetoes; after the cooling-off period it is her active
/// key, and the veto link in the reminders says it is too late.
async fn lost_key_recovery(pg: Option<&str>) {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(pg, &cooling(6));
    let admin = customer(&kci, "standard", &phone).await;
    let (_old, old) = alice_key(&kci).await;
    let (_new, new) = new_key_without_proof(&kci).await;
    assert_eq!(
        active_key(&kci, &admin).await.as_deref(),
        Some(old.as_str())
    );
    let link = veto_link(&phone).await;
    let id = changes(&kci, &admin).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_state(&kci, &admin, &id, "applied", 15).await;
    assert_eq!(
        active_key(&kci, &admin).await.as_deref(),
        Some(new.as_str())
    );
    let (s, text) = page(&kci, "POST", &link).await;
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("Too late"), "{text}");
    eventually(10, "the phone told it applied", || async {
        (!hooks_of(&phone, "kci.change.applied").is_empty()).then_some(())
    })
    .await;
    let (code, out) = verify(&kci);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_customer_who_lost_her_key_gets_the_new_one_after_the_cooling_off_on_sqlite() {
    lost_key_recovery(None).await;
}

#[tokio::test]
async fn a_customer_who_lost_her_key_gets_the_new_one_after_the_cooling_off_on_postgres() {
    let (url, schema) = pg_schema().await;
    lost_key_recovery(Some(&url)).await;
    schema.drop_now().await;
}

/// Two nodes on one PostgreSQL database both run the scheduler: the due
/// change is applied by exactly one of them, and told once.
#[tokio::test]
async fn two_postgres_nodes_apply_a_due_change_exactly_once() {
    let (url, schema) = pg_schema().await;
    let phone = WebhookReceiver::start().await;
    let (_dir, one) = hub(Some(&url), &cooling(3));
    let admin = customer(&one, "high", &phone).await;
    let mut two_text = std::fs::read_to_string(&one.config).unwrap();
    let port = free_port();
    two_text = two_text.replace(
        &format!("listen = \"127.0.0.1:{}\"", one.port),
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let two_config = one.dir.path().join("two.toml");
    std::fs::write(&two_config, two_text).unwrap();
    let mut two = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["serve", "--config"])
        .arg(&two_config)
        .env("KCI_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "the second kci");

    let newphone = WebhookReceiver::start().await;
    let body = json!({"uri": newphone.url, "verified": true}).to_string();
    let (s, v) = one.add_destination(&admin, "acme", "alice", &body).await;
    assert_eq!(s, 202, "{v}");
    let id = v["change"]["id"].as_str().unwrap().to_string();
    wait_state(&one, &admin, &id, "applied", 15).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let auditor = one.token(&["audit:read"]);
    let (_, v) = one
        .call(
            "GET",
            "/v1/audit?account=acme&limit=1000",
            Some(&auditor),
            None,
        )
        .await;
    let settled = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "change.settled" && e["change"] == id.as_str())
        .count();
    assert_eq!(settled, 1, "{v}");
    let told = eventually(10, "the phone told it applied", || async {
        let n = hooks_of(&phone, "kci.change.applied").len();
        (n > 0).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(told, 1);
    assert_eq!(hooks_of(&phone, "kci.change.applied").len(), 1);
    let _ = two.kill();
    let _ = two.wait();
    drop(one);
    schema.drop_now().await;
}

/// The destination of `acme`'s contact alice whose URI starts with
/// `prefix`.
async fn destination_id(kci: &Kci, token: &str, prefix: &str) -> String {
    let (_, account) = kci
        .call("GET", "/v1/accounts/acme", Some(token), None)
        .await;
    account["contacts"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uri"].as_str().unwrap().starts_with(prefix))
        .and_then(|d| d["id"].as_str())
        .unwrap_or_else(|| panic!("a {prefix} destination in {account}"))
        .to_string()
}

/// Alice lost her key but has her phone: a code sent there, entered back,
/// proves the new key at once on a `standard` account. Someone reading
/// her mail cannot have the code sent to the mailbox the key is for; on a
/// `high` account no code proves a change at all (the period does).
#[tokio::test]
async fn a_code_to_her_phone_proves_a_lost_key_customers_request_at_once() {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling(600));
    let admin = customer(&kci, "standard", &phone).await;
    let (_old, _) = alice_key(&kci).await;
    let (_new, new) = new_key_without_proof(&kci).await;
    let id = changes(&kci, &admin).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = kci.token(&["keys:write"]);
    let send = |dest: String| {
        let (kci, writer, id) = (&kci, &writer, &id);
        async move {
            let body = json!({ "destination": dest }).to_string();
            kci.call(
                "POST",
                &format!("/v1/changes/{id}/code"),
                Some(writer),
                Some(&body),
            )
            .await
        }
    };
    let mailbox = destination_id(&kci, &admin, "mailto:").await;
    let (s, v) = send(mailbox).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("not_a_destination")),
        "{v}"
    );
    let handset = destination_id(&kci, &admin, "http").await;
    let (s, v) = send(handset.clone()).await;
    assert_eq!(s, 202, "{v}");
    let hook = eventually(10, "the code on the phone", || async {
        hooks_of(&phone, "kci.change.code").into_iter().next()
    })
    .await;
    let text = hook["data"]["short"].as_str().unwrap();
    let code: String = text
        .split_whitespace()
        .find(|w| {
            w.trim_end_matches('.').len() == 6
                && w.trim_end_matches('.').bytes().all(|b| b.is_ascii_digit())
        })
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| panic!("a code in {text}"));
    let prove = |code: String| {
        let (kci, writer, id) = (&kci, &writer, &id);
        async move {
            let body = json!({ "code": code }).to_string();
            kci.call(
                "POST",
                &format!("/v1/changes/{id}/proof"),
                Some(writer),
                Some(&body),
            )
            .await
        }
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (s, v) = prove(wrong.to_string()).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("wrong_code")), "{v}");
    let (s, v) = prove(code.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["change"]["state"], "applied", "{v}");
    assert_eq!(v["change"]["proof"], format!("code:{handset}"));
    assert_eq!(
        active_key(&kci, &admin).await.as_deref(),
        Some(new.as_str())
    );
    // Used up with the change: the same code again changes nothing.
    let (s, v) = prove(code).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("not_pending")), "{v}");

    // At `high`, a code proves nothing: the period runs.
    let body = json!({"name": "Acme", "security_level": "high"}).to_string();
    let (s, v) = kci
        .call("PUT", "/v1/accounts/acme", Some(&admin), Some(&body))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_third, _) = new_key_without_proof(&kci).await;
    let pending = changes(&kci, &admin).await;
    let id = pending
        .iter()
        .find(|c| c["state"] == "pending")
        .and_then(|c| c["id"].as_str())
        .unwrap()
        .to_string();
    let body = json!({ "destination": handset }).to_string();
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/changes/{id}/code"),
            Some(&writer),
            Some(&body),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("code_not_allowed")),
        "{v}"
    );
}

/// A token that can write the directory tries to lower a `high`
/// account's security (and turn `paranoid` off) with a plain `PUT`: the
/// rest of the account is written, the lowering waits as a change, and
/// an agent on the phone with the customer stops it on her behalf —
/// audited under the agent's name, with the ticket.
#[tokio::test]
async fn lowering_a_high_accounts_security_waits_and_an_agent_vetoes_it_for_the_customer() {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling(60));
    let admin = customer(&kci, "high", &phone).await;
    let writer = kci.token(&["directory:write"]);
    let body =
        json!({"name": "Acme Ltd", "security_level": "standard", "paranoid": false}).to_string();
    let (s, v) = kci
        .call("PUT", "/v1/accounts/acme", Some(&writer), Some(&body))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["change"]["kind"], "security.lower");
    assert_eq!(v["change"]["security_level"], "standard");
    assert_eq!(v["account"]["security_level"], "high");
    let id = v["change"]["id"].as_str().unwrap().to_string();
    let (_, account) = kci
        .call("GET", "/v1/accounts/acme", Some(&admin), None)
        .await;
    assert_eq!(account["name"], "Acme Ltd", "{account}");
    assert_eq!(account["security_level"], "high", "{account}");

    let (code, _, err) = kci.cli(&["staff", "add", "dan", "--role", "agent"]);
    assert_eq!(code, 0, "{err}");
    let dan = kci.token_as(Some("dan"), &[]);
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/changes/{id}/veto"),
            Some(&dan),
            Some(r#"{"ticket": "CALL-7"}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["change"]["state"], "vetoed");
    assert_eq!(v["change"]["reason"], "vetoed by staff:dan");
    let incident = v["incident"]["id"].as_str().unwrap().to_string();
    // Closing the incident tells the customer.
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/incidents/{incident}/close"),
            Some(&dan),
            Some(r#"{"note": "Integration misconfigured; its token was revoked."}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["incident"]["state"], "closed");
    assert_eq!(v["incident"]["closed_by"], "staff:dan");
    eventually(10, "the phone told the matter is closed", || async {
        (!hooks_of(&phone, "kci.incident.closed").is_empty()).then_some(())
    })
    .await;
    let (s, _) = kci
        .call(
            "POST",
            &format!("/v1/incidents/{incident}/close"),
            Some(&dan),
            Some(r#"{"note": "again"}"#),
        )
        .await;
    assert_eq!(s, 409);
    let auditor = kci.token(&["audit:read"]);
    let (_, v) = kci
        .call("GET", "/v1/audit?account=acme", Some(&auditor), None)
        .await;
    let vetoed = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "change.vetoed")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (vetoed["actor"].as_str(), vetoed["ticket"].as_str()),
        (Some("staff:dan"), Some("CALL-7"))
    );
}
