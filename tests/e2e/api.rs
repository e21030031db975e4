//! The HTTP API's contract: authentication and scopes on every endpoint,
//! errors that name the field, nothing stored by a refused request,
//! idempotency, batches, verification codes and cancellation.

use crate::common::*;
use serde_json::{Value, json};

async fn setup(kci: &Kci, admin: &str) {
    let dest = json!({"uri": "mailto:alice@example.com", "verified": true});
    kci.customer(admin, "A1", "alice", dest).await;
}

#[tokio::test]
async fn every_endpoint_checks_token_and_scope() {
    let kci = Kci::start(None, "");
    let admin = kci.token(&["admin"]);
    setup(&kci, &admin).await;
    let calls_only = kci.token(&["calls"]);
    let reads_only = kci.token(&["events:read"]);
    let d = "/v1/accounts/A1/contacts/alice/destinations";
    let endpoints: &[(&str, String, Option<&str>, &str)] = &[
        (
            "POST",
            "/v1/events".into(),
            Some(r#"{"type":"line.down","account":"A1"}"#),
            "events:write",
        ),
        (
            "POST",
            "/v1/events/batch".into(),
            Some(r#"{"type":"line.down","account":"A1"}"#),
            "events:write",
        ),
        ("GET", "/v1/events/x".into(), None, "events:read"),
        ("DELETE", "/v1/events/x".into(), None, "events:write"),
        (
            "PUT",
            "/v1/accounts/A2".into(),
            Some("{}"),
            "directory:write",
        ),
        ("GET", "/v1/accounts/A1".into(), None, "directory:read"),
        (
            "PUT",
            "/v1/accounts/A1/contacts/bob".into(),
            Some("{}"),
            "directory:write",
        ),
        (
            "POST",
            d.into(),
            Some(r#"{"uri":"mailto:x@example.com"}"#),
            "directory:write",
        ),
        (
            "POST",
            format!("{d}/x/verify"),
            Some(r#"{"code":"123456"}"#),
            "directory:write",
        ),
        ("DELETE", format!("{d}/x"), None, "directory:write"),
        ("POST", format!("{d}/x/code"), None, "directory:write"),
        (
            "POST",
            format!("{d}/x/secret"),
            Some(r#"{"overlap":"1h"}"#),
            "directory:write",
        ),
        (
            "GET",
            "/v1/deliveries?state=failed".into(),
            None,
            "events:read",
        ),
        (
            "POST",
            "/v1/deliveries/x/retry".into(),
            None,
            "events:write",
        ),
        (
            "POST",
            "/v1/keys".into(),
            Some(r#"{"address":"a@example.com","key":"x"}"#),
            "keys:write",
        ),
        (
            "GET",
            "/v1/keys/a@example.com".into(),
            None,
            "directory:read",
        ),
        (
            "DELETE",
            "/v1/keys/a@example.com".into(),
            None,
            "keys:write",
        ),
        ("GET", "/v1/changes?account=A1".into(), None, "changes:read"),
        ("GET", "/v1/changes/x".into(), None, "changes:read"),
        (
            "POST",
            "/v1/changes/x/approve".into(),
            None,
            "changes:approve",
        ),
        ("POST", "/v1/changes/x/veto".into(), None, "incidents"),
        (
            "POST",
            "/v1/changes/x/code".into(),
            Some(r#"{"destination":"d"}"#),
            "keys:write",
        ),
        (
            "POST",
            "/v1/changes/x/proof".into(),
            Some(r#"{"code":"123456"}"#),
            "keys:write",
        ),
        (
            "POST",
            "/v1/changes/x/assurances".into(),
            Some(r#"{"a_word":"kiwi42","ticket":"T-1","met_on":"2026-01-01"}"#),
            "assure",
        ),
        (
            "GET",
            "/v1/changes/x/assurances".into(),
            None,
            "changes:read",
        ),
        (
            "POST",
            "/v1/changes/x/assurance".into(),
            Some(r#"{"secret":"kiwi42-abcdefghjk"}"#),
            "keys:write",
        ),
        (
            "POST",
            "/v1/changes/x/connection".into(),
            Some(r#"{"address":"203.0.113.7"}"#),
            "keys:write",
        ),
        ("GET", "/v1/incidents".into(), None, "incidents"),
        (
            "POST",
            "/v1/incidents/x/close".into(),
            Some(r#"{"note":"checked"}"#),
            "incidents",
        ),
        ("GET", "/v1/audit".into(), None, "audit:read"),
        (
            "POST",
            "/v1/calls".into(),
            Some(r#"{"account":"A1","contact":"alice"}"#),
            "calls",
        ),
        (
            "POST",
            "/v1/calls/x/staff-code".into(),
            Some(r#"{"code":"123456"}"#),
            "calls",
        ),
        ("GET", "/v1/calls/x".into(), None, "calls"),
        (
            "GET",
            "/v1/calls/status?account=A1&contact=alice".into(),
            None,
            "calls",
        ),
        ("GET", "/metrics".into(), None, "metrics:read"),
    ];
    for (method, path, body, scope) in endpoints {
        let (s, v) = kci
            .call(method, path, Some("kci_not_a_real_token"), *body)
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("unauthenticated")),
            "{method} {path} bad token"
        );
        if *path != "/metrics" {
            let (s, _) = kci.call(method, path, None, *body).await;
            assert_eq!(s, 401, "{method} {path} without token");
        }
        let wrong = if *scope == "calls" {
            &reads_only
        } else {
            &calls_only
        };
        let (s, v) = kci.call(method, path, Some(wrong), *body).await;
        assert_eq!(s, 403, "{method} {path} with the wrong scope");
        assert!(v["message"].as_str().unwrap().contains(scope), "{v}");
        let right = kci.token(&[scope]);
        let (s, v) = kci.call(method, path, Some(&right), *body).await;
        // Past the scope check: anything but 401 and 403 — or the 403 of
        // a step only a staff member's token may take.
        assert!(
            s != 401 && (s != 403 || v["error"] == "staff_only"),
            "{method} {path} with {scope} answered {s} {v}"
        );
    }
    // Nothing the refused calls sent was stored.
    let (_, v) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    let contacts: Vec<_> = v["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(
        contacts,
        vec![json!("alice"), json!("bob")],
        "bob only from the call that had the scope"
    );
    // Health is open and says nothing more.
    let (s, v) = kci.call("GET", "/healthz", None, None).await;
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    // A pre-verified destination needs directory:admin.
    let writer = kci.token(&["directory:write"]);
    let body = r#"{"uri":"mailto:y@example.com","verified":true}"#;
    let (s, _) = kci.call("POST", d, Some(&writer), Some(body)).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let kci = Kci::start(None, "");
    let admin = kci.token(&["admin"]);
    setup(&kci, &admin).await;
    let before = kci
        .call("GET", "/v1/accounts/A1", Some(&admin), None)
        .await
        .1;
    let d = "/v1/accounts/A1/contacts/alice/destinations";
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/v1/events",
            r#"{"type": "line.down", "acc"#,
            400,
            "JSON",
        ),
        (
            "POST",
            "/v1/events",
            r#"{"type":"nope","account":"A1"}"#,
            422,
            "type",
        ),
        (
            "POST",
            "/v1/events",
            r#"{"type":"line.down","account":"ZZ"}"#,
            422,
            "account",
        ),
        (
            "POST",
            "/v1/events",
            r#"{"type":"line.down","account":"A1","priority":"panic"}"#,
            422,
            "priority",
        ),
        (
            "POST",
            "/v1/events",
            r#"{"type":"line.down","account":"A1","occurred_at":"noon"}"#,
            422,
            "occurred_at",
        ),
        (
            "POST",
            "/v1/events",
            r#"{"type":"line.down","account":"A1","contact":"zed"}"#,
            422,
            "contact",
        ),
        ("POST", "/v1/events", r#""just a string""#, 422, "body"),
        (
            "PUT",
            "/v1/accounts/A1",
            r#"{"timezone":"Mars/Base"}"#,
            422,
            "timezone",
        ),
        (
            "PUT",
            "/v1/accounts/A1",
            r#"{"security_level":"paranoid"}"#,
            422,
            "security_level",
        ),
        (
            "PUT",
            "/v1/accounts/A1",
            r#"{"defaults":{"window":"Mo-Fr 8-20 please"}}"#,
            422,
            "window",
        ),
        (
            "PUT",
            "/v1/accounts/A1",
            r#"{"defaults":{"min_priority":"meh"}}"#,
            422,
            "min_priority",
        ),
        ("PUT", "/v1/accounts/A1", r#"{"nmae":"typo"}"#, 422, "nmae"),
        (
            "PUT",
            "/v1/accounts/A1/contacts/alice",
            r#"{"timezone":"Nowhere"}"#,
            422,
            "timezone",
        ),
        ("POST", d, r#"{"uri":"mailto:not an address"}"#, 422, "uri"),
        ("POST", d, r#"{"uri":"sms:07700900123"}"#, 422, "uri"),
        (
            "POST",
            d,
            r#"{"uri":"http://example.com/hook"}"#,
            422,
            "uri",
        ),
        (
            "POST",
            d,
            r#"{"uri":"mailto:a@example.com","window":"whenever"}"#,
            422,
            "window",
        ),
        (
            "POST",
            d,
            r#"{"uri":"mailto:a@example.com","timezone":"Moon/Dark_Side"}"#,
            422,
            "timezone",
        ),
        (
            "POST",
            d,
            r#"{"uri":"mailto:a@example.com","digest":"often"}"#,
            422,
            "digest",
        ),
        (
            "POST",
            d,
            r#"{"uri":"mailto:a@example.com","colour":"blue"}"#,
            422,
            "colour",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (s, v) = kci.call(method, path, Some(&admin), Some(body)).await;
        assert_eq!(s, *status, "{method} {path} {body}: {v}");
        assert!(v["error"].is_string(), "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(field),
            "{body}: message {msg:?} should name {field}"
        );
    }
    let after = kci
        .call("GET", "/v1/accounts/A1", Some(&admin), None)
        .await
        .1;
    assert_eq!(before, after, "refused requests changed nothing");
    let (s, _) = kci
        .call("GET", "/v1/events/does-not-exist", Some(&admin), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn idempotency_batches_and_cancellation() {
    let kci = Kci::start(None, "");
    let admin = kci.token(&["admin"]);
    setup(&kci, &admin).await;

    // appointment.booked has hold = 1h: it stays pending, so we can cancel it.
    let ev =
        r#"{"id":"a1","type":"appointment.booked","account":"A1","data":{"when":"Tue 10:00"}}"#;
    let first = kci.call("POST", "/v1/events", Some(&admin), Some(ev)).await;
    assert_eq!(first, (202, json!({"id": "a1", "notifications": 1})));
    let again = kci.call("POST", "/v1/events", Some(&admin), Some(ev)).await;
    assert_eq!(again, first, "the same id answers the first result");
    let (_, v) = kci.call("GET", "/v1/events/a1", Some(&admin), None).await;
    assert_eq!(v["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(v["notifications"][0]["state"], "pending");
    assert_eq!(v["notifications"][0]["reason"], "hold");
    assert_eq!(
        v["notifications"][0]["destination"],
        "mailto:alice@example.com"
    );

    let (s, v) = kci
        .call("DELETE", "/v1/events/a1", Some(&admin), None)
        .await;
    assert_eq!((s, v), (200, json!({"id": "a1", "cancelled": 1})));
    let (_, v) = kci.call("GET", "/v1/events/a1", Some(&admin), None).await;
    assert_eq!(
        (
            &v["notifications"][0]["state"],
            &v["notifications"][0]["reason"]
        ),
        (&json!("cancelled"), &json!("event_cancelled"))
    );
    // The record: held for an hour, then cancelled by the DELETE.
    let steps: Vec<(Value, Value, Value)> = v["notifications"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["state"].clone(), h["reason"].clone(), h["detail"].clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (json!("pending"), json!("hold"), json!("hold 1h")),
            (
                json!("cancelled"),
                json!("event_cancelled"),
                json!("DELETE /v1/events")
            ),
        ]
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["explain", "a1", "--config"])
        .arg(&kci.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let story = String::from_utf8(out.stdout).unwrap();
    assert!(
        story.starts_with("a1 appointment.booked for account A1 (key a1)"),
        "{story}"
    );
    assert!(
        story.contains("alice → mailto:alice@example.com (UTC)"),
        "{story}"
    );
    assert!(story.contains("pending: held until"), "{story}");
    assert!(
        story.contains("cancelled: event_cancelled — DELETE /v1/events"),
        "{story}"
    );

    // A batch: good lines accepted, bad lines answered, in order.
    let batch = [
        r#"{"id":"b1","type":"line.down","account":"A1","service":"L1"}"#,
        r#"{"id":"b2","type":"line.down","account":"NOPE"}"#,
        "",
        r#"{"id":"b3","type":"line.down","account":"A1","service":"L2"#,
        r#"{"id":"b1","type":"line.down","account":"A1","service":"L1"}"#,
        r#"{"id":"b4","type":"line.down","account":"A1","priority":"urgent"}"#,
    ]
    .join("\n");
    let resp = kci
        .http
        .post(format!("{}/v1/events/batch", kci.base))
        .bearer_auth(&admin)
        .header("content-type", "application/x-ndjson")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let lines: Vec<Value> = resp
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        summary,
        vec![(1, 202), (2, 422), (4, 400), (5, 202), (6, 202)]
    );
    assert_eq!(lines[1]["error"], "unknown_account");
    assert_eq!(lines[3]["id"], "b1");
    for id in ["b1", "b4"] {
        let (s, _) = kci
            .call("GET", &format!("/v1/events/{id}"), Some(&admin), None)
            .await;
        assert_eq!(s, 200);
    }
    let (s, _) = kci.call("GET", "/v1/events/b2", Some(&admin), None).await;
    assert_eq!(s, 404);

    // Metrics show what happened.
    let text = kci
        .http
        .get(format!("{}/metrics", kci.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("kci_events_accepted_total 3"), "{text}");
    assert!(
        text.contains("kci_events_rejected_total{code=\"unknown_account\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kci_notifications{state=\"cancelled\"} 1"),
        "{text}"
    );
    // The store's writes, timed: the events above were durable writes.
    let durable = text
        .lines()
        .find_map(|l| l.strip_prefix("kci_store_write_seconds_count{durability=\"durable\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(durable.is_some_and(|n| n >= 3), "{text}");
}

#[tokio::test]
async fn a_destination_receives_nothing_until_its_code_is_entered() {
    let kci = Kci::start(None, "");
    let writer = kci.token(&["directory:write", "events:write", "events:read"]);
    kci.call("PUT", "/v1/accounts/A1", Some(&writer), Some("{}"))
        .await;
    kci.call(
        "PUT",
        "/v1/accounts/A1/contacts/alice",
        Some(&writer),
        Some("{}"),
    )
    .await;
    let d = "/v1/accounts/A1/contacts/alice/destinations";
    let (s, v) = kci
        .call(
            "POST",
            d,
            Some(&writer),
            Some(r#"{"uri":"mailto:alice@example.com"}"#),
        )
        .await;
    assert_eq!((s, &v["verified"]), (201, &json!(false)));
    let did = v["id"].as_str().unwrap().to_string();

    // Before verification the destination gets nothing from events.
    let (_, v) = kci
        .call(
            "POST",
            "/v1/events",
            Some(&writer),
            Some(r#"{"id":"u1","type":"line.down","account":"A1"}"#),
        )
        .await;
    assert_eq!(v["notifications"], 1);
    let (_, v) = kci.call("GET", "/v1/events/u1", Some(&writer), None).await;
    assert_eq!(
        (
            &v["notifications"][0]["state"],
            &v["notifications"][0]["reason"]
        ),
        (&json!("suppressed"), &json!("unverified"))
    );

    // The code arrives at the destination itself.
    let mails = eventually(20, "the verification mail", || async {
        let m = kci.outbox();
        (!m.is_empty()).then_some(m)
    })
    .await;
    let mail = Mail::parse(&mails[0]);
    assert_eq!(mail.header("To"), Some("alice@example.com"));
    let code: String = mail
        .body
        .split("code is ")
        .nth(1)
        .expect("the code in the mail")
        .chars()
        .take(6)
        .collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    let wrong = if code == "000000" { "111111" } else { "000000" };

    let verify = format!("{d}/{did}/verify");
    let (s, v) = kci
        .call(
            "POST",
            &verify,
            Some(&writer),
            Some(&json!({"code": wrong}).to_string()),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (422, Some("wrong_code")));
    let (s, v) = kci
        .call(
            "POST",
            &verify,
            Some(&writer),
            Some(&json!({"code": code}).to_string()),
        )
        .await;
    assert_eq!((s, v), (200, json!({"id": did, "verified": true})));

    let (_, v) = kci
        .call(
            "POST",
            "/v1/events",
            Some(&writer),
            Some(r#"{"id":"u2","type":"line.down","account":"A1"}"#),
        )
        .await;
    assert_eq!(v["notifications"], 1);
    eventually(20, "delivery after verification", || async {
        let (_, v) = kci.call("GET", "/v1/events/u2", Some(&writer), None).await;
        (v["notifications"][0]["state"] == "sent").then_some(())
    })
    .await;

    let (s, _) = kci
        .call("DELETE", &format!("{d}/{did}"), Some(&writer), None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = kci
        .call("GET", "/v1/accounts/A1", Some(&writer), None)
        .await;
    assert_eq!(v["contacts"][0]["destinations"], json!([]));
}

#[tokio::test]
async fn a_config_error_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[types.\"line.down\"]\nhold = \"a while\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("hold") && err.contains("line.down"),
        "{err}"
    );
}

#[tokio::test]
async fn pairing_and_digests_over_http() {
    let kci = Kci::start(
        None,
        r#"
[types."link.down"]
hold = "2m"
short = "Link {{ service }} down."
[types."link.up"]
cancels = ["link.down"]
hold = "2m"
short = "Link {{ service }} up."
"#,
    );
    let admin = kci.token(&["admin"]);
    let get = |id: &'static str| {
        let kci = &kci;
        let admin = admin.clone();
        async move {
            kci.call("GET", &format!("/v1/events/{id}"), Some(&admin), None)
                .await
                .1
        }
    };
    let notices = |v: &Value, kind: &str| -> Vec<Value> {
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == kind)
            .cloned()
            .collect()
    };
    kci.call("PUT", "/v1/accounts/A1", Some(&admin), Some("{}"))
        .await;
    // The contact wants only L1 and L2; its second address takes a digest.
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/A1/contacts/c",
            Some(&admin),
            Some(r#"{"services":["L1","L2"]}"#),
        )
        .await;
    assert_eq!((s, &v["services"]), (201, &json!(["L1", "L2"])));
    let d = "/v1/accounts/A1/contacts/c/destinations";
    kci.call(
        "POST",
        d,
        Some(&admin),
        Some(r#"{"uri":"mailto:now@example.com","verified":true}"#),
    )
    .await;
    let body = r#"{"uri":"mailto:digest@example.com","verified":true,"digest":"1h"}"#;
    kci.call("POST", d, Some(&admin), Some(body)).await;

    // A drop and a reconnect inside the hold: nobody is told.
    for ev in [
        r#"{"id":"dn","type":"link.down","account":"A1","service":"L1"}"#,
        r#"{"id":"up","type":"link.up","account":"A1","service":"L1"}"#,
        r#"{"id":"other","type":"link.down","account":"A1","service":"L9"}"#,
    ] {
        assert_eq!(
            kci.call("POST", "/v1/events", Some(&admin), Some(ev))
                .await
                .0,
            202
        );
    }
    let dn = get("dn").await;
    let up = get("up").await;
    for (name, v, kind) in [("dn", &dn, "link.down"), ("up", &up, "link.up")] {
        let ns = notices(v, kind);
        assert_eq!(ns.len(), 2, "{name}: {v}");
        for n in ns {
            assert_eq!(
                (&n["state"], &n["reason"]),
                (&json!("cancelled"), &json!("paired")),
                "{name}: {n}"
            );
        }
    }
    // dn opened the digest address's digest; its only notice paired away,
    // nothing is left in it (it ends as empty_digest when due).
    let digests = notices(&dn, "kci.digest");
    assert_eq!(digests.len(), 1, "{dn}");
    assert_eq!(digests[0]["state"], "pending");
    // L9 is not among the contact's services.
    let other = get("other").await;
    assert!(
        notices(&other, "link.down")
            .iter()
            .all(|n| n["reason"] == "service"),
        "{other}"
    );

    // A notice folded into a pending digest is taken out by DELETE.
    kci.call(
        "POST",
        "/v1/events",
        Some(&admin),
        Some(r#"{"id":"n1","type":"line.down","account":"A1","service":"L2"}"#),
    )
    .await;
    let n1 = get("n1").await;
    let folded: Vec<Value> = notices(&n1, "line.down")
        .into_iter()
        .filter(|n| n["state"] == "digested")
        .collect();
    assert_eq!(folded.len(), 1, "{n1}");
    assert_eq!(folded[0]["destination"], "mailto:digest@example.com");
    let (s, v) = kci
        .call("DELETE", "/v1/events/n1", Some(&admin), None)
        .await;
    assert_eq!(s, 200);
    assert!(v["cancelled"].as_u64().unwrap() >= 1, "{v}");
    let n1 = get("n1").await;
    let at_digest: Vec<Value> = notices(&n1, "line.down")
        .into_iter()
        .filter(|n| n["destination"] == "mailto:digest@example.com")
        .collect();
    assert_eq!(
        (&at_digest[0]["state"], &at_digest[0]["reason"]),
        (&json!("cancelled"), &json!("event_cancelled"))
    );
}

/// A token's life (issue 16): made to expire, it stops by itself; listed
/// with when and from where it was last used, never with its secret;
/// revoked, it is refused at once; rotated, the old one is refused and
/// the new one works with the same scopes. Every step is audited.
#[tokio::test]
async fn tokens_expire_are_listed_revoked_and_rotated() {
    let kci = Kci::start(None, "");
    let make = |args: &[&str]| {
        let mut all = vec![
            "token",
            "create",
            "--name",
            "billing",
            "--scope",
            "changes:read",
        ];
        all.extend_from_slice(args);
        let (code, out, err) = kci.cli(&all);
        assert_eq!(code, 0, "{err}");
        out.lines().last().unwrap().trim().to_string()
    };
    let works = |token: String| {
        let kci = &kci;
        async move {
            kci.call("GET", "/v1/changes?account=acme", Some(&token), None)
                .await
                .0
        }
    };
    for bad in ["0s", "soon"] {
        let (code, _, err) = kci.cli(&[
            "token",
            "create",
            "--name",
            "x",
            "--scope",
            "events:read",
            "--expires",
            bad,
        ]);
        assert_eq!(code, 1, "--expires {bad}: {err}");
        assert!(err.contains("--expires"), "{err}");
    }
    let short = make(&["--expires", "2s"]);
    assert_eq!(works(short.clone()).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(works(short.clone()).await, 401, "expired");

    let token = make(&[]);
    assert_eq!(works(token.clone()).await, 200);
    let id_of = |listing: &str, state: &str| {
        listing
            .lines()
            .filter(|l| l.contains("\tbilling\t") && l.contains(&format!("\t{state}\t")))
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let listing = eventually(10, "the last use recorded", || async {
        let (code, out, _) = kci.cli(&["token", "list"]);
        assert_eq!(code, 0);
        out.lines()
            .any(|l| l.contains("\tactive\t") && l.ends_with("\t127.0.0.1\ttoken"))
            .then_some(out)
    })
    .await;
    assert!(
        !listing.contains(&token) && !listing.contains(&short),
        "{listing}"
    );
    assert_eq!(id_of(&listing, "expired").len(), 1, "{listing}");
    let active = id_of(&listing, "active");
    assert_eq!(active.len(), 1, "{listing}");

    // Rotated: the old one refused, the new one works.
    let (code, out, err) = kci.cli(&["token", "rotate", &active[0]]);
    assert_eq!(code, 0, "{err}");
    let rotated = out.lines().last().unwrap().trim().to_string();
    assert_eq!(works(token.clone()).await, 401, "rotated away");
    assert_eq!(works(rotated.clone()).await, 200);
    let (code, _, err) = kci.cli(&["token", "rotate", &active[0]]);
    assert_eq!(code, 1, "rotating a revoked token: {err}");

    // Rotated onto another network: the bindings given replace the old.
    let (_, listing, _) = kci.cli(&["token", "list"]);
    let current = id_of(&listing, "active");
    let (code, out, err) = kci.cli(&["token", "rotate", &current[0], "--allow", "10.0.0.0/8"]);
    assert_eq!(code, 0, "{err}");
    let fenced = out.lines().last().unwrap().trim().to_string();
    let refused = works(fenced).await;
    assert!(
        refused == 403 || refused == 401,
        "from outside its network: {refused}"
    );
    let (_, listing, _) = kci.cli(&["token", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("\t10.0.0.0/8\t") && l.contains("\tactive\t")),
        "{listing}"
    );

    // Revoked: refused at once.
    let (_, listing, _) = kci.cli(&["token", "list"]);
    let new_id = id_of(&listing, "active");
    assert_eq!(new_id.len(), 1, "{listing}");
    let (code, _, err) = kci.cli(&["token", "revoke", &new_id[0]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(works(rotated).await, 401, "revoked");
    let (code, _, _) = kci.cli(&["token", "revoke", &new_id[0]]);
    assert_eq!(code, 1, "revoked once");

    let auditor = kci.token(&["audit:read"]);
    let (_, v) = kci.call("GET", "/v1/audit", Some(&auditor), None).await;
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for step in ["token.created", "token.rotated", "token.revoked"] {
        assert!(actions.contains(&step), "{step} in {actions:?}");
    }
}

/// Who changed an account or where a contact is told is in the audit log:
/// the actor, what was written, from where.
#[tokio::test]
async fn directory_writes_are_audited() {
    let kci = Kci::start(None, "");
    let admin = kci.token(&["admin"]);
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/AU1",
            Some(&admin),
            Some(r#"{"name":"Acme","security_level":"high"}"#),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/AU1/contacts/ops",
            Some(&admin),
            Some(r#"{"name":"Ops","categories":["line"]}"#),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/AU1/contacts/ops",
            Some(&admin),
            Some(r#"{"name":"Ops"}"#),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = kci
        .call("GET", "/v1/audit?account=AU1", Some(&admin), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    let find = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .cloned()
            .unwrap_or_else(|| panic!("{action} in {v}"))
    };
    let created = find("account.created");
    assert!(
        created["detail"]
            .as_str()
            .unwrap()
            .starts_with("security_level high"),
        "{created}"
    );
    assert!(created["source"].as_str().unwrap().starts_with("127.0.0.1"));
    assert!(
        find("contact.created")["detail"]
            .as_str()
            .unwrap()
            .contains("line")
    );
    find("contact.updated");
}

/// Shell completions and the manual page, as a package ships them: the
/// bash script parses (`bash -n`) and knows the commands; the page is a
/// roff man page naming them.
#[test]
fn completions_and_the_manual_page() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("doctor") && bash.contains("complete -F _kci"),
        "{bash}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kci.bash");
    std::fs::write(&file, &bash).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .unwrap();
    assert!(checked.success(), "bash -n on the completion script");
    for shell in ["zsh", "fish"] {
        assert!(run(&["completions", shell]).contains("doctor"), "{shell}");
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH kci 1") && man.contains("doctor"), "{man}");
}

/// `[log] format = "json"`: one JSON object a line, for a log collector.
#[test]
fn logs_can_be_json_lines() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kci.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{}\"\n\
             [email]\noutbox = \"{}\"\n[log]\nformat = \"json\"\n",
            dir.path().join("kci.db").display(),
            dir.path().join("outbox").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("KCI_LOG", "info")
        .env_remove("KCI_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut found = None;
    for line in BufReader::new(stderr).lines().take(50) {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == "kci is listening"
        {
            found = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = found.expect("a JSON line saying kci listens");
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
    assert_eq!(v["fields"]["addr"], format!("127.0.0.1:{port}"), "{v}");
}
