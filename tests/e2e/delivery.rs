//! The story of the foundation: a source system sets up a customer over
//! HTTP, posts an event, and the customer's mail arrives at a real SMTP
//! server while a signed webhook arrives at their endpoint.

use crate::common::*;
use base64::Engine;
use hmac::Mac;
use serde_json::{Value, json};

fn verify_signature(hook: &Hook) {
    let id = hook.headers["webhook-id"].to_str().unwrap();
    let ts = hook.headers["webhook-timestamp"].to_str().unwrap();
    let sig = hook.headers["webhook-signature"].to_str().unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hook.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(sig, expected, "Standard Webhooks signature");
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "timestamp is current");
}

#[tokio::test]
async fn event_to_mail_and_signed_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let hooks = WebhookReceiver::start().await;
    let kci = Kci::start(
        Some(smtp.port),
        &format!("{LOCAL_WEBHOOKS}secret = \"{WEBHOOK_SECRET}\"\n"),
    );
    let admin = kci.token(&["directory:admin"]);
    let source = kci.token(&["events:write", "events:read"]);

    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(r#"{"name":"Alice Ltd","timezone":"Europe/London"}"#),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1/contacts/alice",
            Some(&admin),
            Some(r#"{"name":"Alice"}"#),
        )
        .await;
    assert_eq!(s, 201);
    for uri in ["mailto:alice@example.com".to_string(), hooks.url.clone()] {
        let body = json!({"uri": uri, "verified": true}).to_string();
        let (s, v) = kci
            .call(
                "POST",
                "/v1/accounts/A1/contacts/alice/destinations",
                Some(&admin),
                Some(&body),
            )
            .await;
        assert_eq!((s, &v["verified"]), (201, &json!(true)), "{v}");
    }

    let event = json!({
        "id": "evt-1", "type": "line.down", "account": "A1", "service": "L1",
        "occurred_at": "2026-07-01T02:58:00Z", "expires_at": "2099-01-01T00:00:00Z",
        "data": {"ticket": "T-4711"}
    });
    let (s, v) = kci
        .call(
            "POST",
            "/v1/events",
            Some(&source),
            Some(&event.to_string()),
        )
        .await;
    assert_eq!(
        (s, v.clone()),
        (202, json!({"id": "evt-1", "notifications": 2}))
    );

    let fates: Value = eventually(30, "both notifications sent", || async {
        let (_, v) = kci
            .call("GET", "/v1/events/evt-1", Some(&source), None)
            .await;
        let all_sent = v["notifications"]
            .as_array()?
            .iter()
            .all(|n| n["state"] == "sent");
        all_sent.then_some(v)
    })
    .await;
    for n in fates["notifications"].as_array().unwrap() {
        assert_eq!(n["reason"], Value::Null);
        assert_eq!(n["attempts"], 1);
        assert!(n["sent_at"].is_string());
        assert_eq!(n["contact"], "alice");
    }

    // The mail, as the SMTP server received it.
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one mail");
    let mail = Mail::parse(&mails[0]);
    assert_eq!(mail.header("Subject"), Some("Line L1 is down"));
    assert_eq!(mail.header("To"), Some("alice@example.com"));
    assert_eq!(
        mail.header("From"),
        Some("\"Example ISP\" <kci@isp.example>")
    );
    assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"));
    let mid = mail.header("Message-ID").unwrap();
    assert!(
        mid.starts_with('<') && mid.ends_with("@isp.example>"),
        "{mid}"
    );
    assert!(
        mail.header("References")
            .is_some_and(|r| r.contains("kci-thread-"))
    );
    // 02:58 UTC is 03:58 in London in July (BST).
    assert!(
        mail.body.contains(
            "your line L1 went down at 03:58 (Europe/London).\nEngineer reference: T-4711."
        ),
        "{}",
        mail.body
    );

    // The webhook: signed, with the event and the rendered texts.
    let got = hooks.hooks();
    assert_eq!(got.len(), 1);
    verify_signature(&got[0]);
    let payload: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(payload["type"], "line.down");
    assert_eq!(payload["data"]["event"]["id"], "evt-1");
    assert_eq!(payload["data"]["event"]["data"]["ticket"], "T-4711");
    assert_eq!(payload["data"]["short"], "Your line L1 went down at 03:58.");
    assert_eq!(payload["data"]["subject"], "Line L1 is down");
    assert_eq!(
        got[0].headers["webhook-id"].to_str().unwrap(),
        payload["data"]["notification"].as_str().unwrap()
    );
}

#[tokio::test]
async fn transient_failures_retry_and_permanent_ones_fail_with_the_providers_words() {
    let hooks = WebhookReceiver::start().await;
    let kci = Kci::start(None, LOCAL_WEBHOOKS);
    let admin = kci.token(&["admin"]);
    kci.customer(
        &admin,
        "A1",
        "c",
        json!({"uri": hooks.url, "verified": true}),
    )
    .await;

    // 503 twice, then 200: delivered on the third attempt.
    *hooks.status.lock().unwrap() = 503;
    let (s, _) = kci
        .call(
            "POST",
            "/v1/events",
            Some(&admin),
            Some(r#"{"id":"r1","type":"line.down","account":"A1","service":"L1"}"#),
        )
        .await;
    assert_eq!(s, 202);
    eventually(20, "two failed attempts", || async {
        (hooks.hooks().len() >= 2).then_some(())
    })
    .await;
    *hooks.status.lock().unwrap() = 200;
    let v = eventually(30, "delivered after retries", || async {
        let (_, v) = kci.call("GET", "/v1/events/r1", Some(&admin), None).await;
        (v["notifications"][0]["state"] == "sent").then_some(v)
    })
    .await;
    assert!(
        v["notifications"][0]["attempts"].as_u64().unwrap() >= 3,
        "{v}"
    );
    let ids: std::collections::HashSet<_> = hooks
        .hooks()
        .iter()
        .map(|h| h.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every retry carries the same webhook-id");

    // 404: permanent, failed at once with the provider's words.
    *hooks.status.lock().unwrap() = 404;
    kci.call(
        "POST",
        "/v1/events",
        Some(&admin),
        Some(r#"{"id":"p1","type":"line.down","account":"A1","service":"L1"}"#),
    )
    .await;
    let v = eventually(20, "permanent failure", || async {
        let (_, v) = kci.call("GET", "/v1/events/p1", Some(&admin), None).await;
        (v["notifications"][0]["state"] == "failed").then_some(v)
    })
    .await;
    let n = &v["notifications"][0];
    assert_eq!(
        (n["reason"].as_str(), n["attempts"].as_u64()),
        (Some("rejected"), Some(1))
    );
    assert!(n["detail"].as_str().unwrap().contains("HTTP 404"), "{n}");
    // `kci status`, beside the running node, shows it with the words.
    let (code, status, err) = kci.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        status.contains("failed 1") && status.contains("last failures:"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains(" webhook rejected: ") && l.contains("HTTP 404")),
        "{status}"
    );

    // The dead-letter list shows it; once the receiver is fixed, re-drive it.
    let (s, v) = kci
        .call("GET", "/v1/deliveries?state=failed", Some(&admin), None)
        .await;
    assert_eq!(s, 200);
    let dead = v["deliveries"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{v}");
    assert_eq!(dead[0]["event"], "p1");
    let id = dead[0]["id"].as_str().unwrap().to_string();
    *hooks.status.lock().unwrap() = 200;
    let (s, _) = kci
        .call(
            "POST",
            &format!("/v1/deliveries/{id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let v = eventually(20, "re-driven delivery sent", || async {
        let (_, v) = kci.call("GET", "/v1/events/p1", Some(&admin), None).await;
        (v["notifications"][0]["state"] == "sent").then_some(v)
    })
    .await;
    let steps: Vec<&Value> = v["notifications"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["reason"])
        .collect();
    assert!(steps.contains(&&json!("redriven")), "{v}");
    // Only a failed one can be re-driven.
    let (s, _) = kci
        .call(
            "POST",
            &format!("/v1/deliveries/{id}/retry"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = kci
        .call("GET", "/v1/deliveries?state=sent", Some(&admin), None)
        .await;
    assert_eq!((s, v["error"].as_str()), (422, Some("invalid_field")));
}

#[tokio::test]
async fn no_config_delivers_mail_to_the_maildir_outbox() {
    let kci = Kci::start(None, "");
    let admin = kci.token(&["admin"]);
    kci.customer(
        &admin,
        "A1",
        "c",
        json!({"uri": "mailto:bob@example.com", "verified": true}),
    )
    .await;
    let ev = json!({"id": "m1", "type": "line.down", "account": "A1", "subject": "Literal subject", "body": "Literal body ünïcode"});
    kci.call("POST", "/v1/events", Some(&admin), Some(&ev.to_string()))
        .await;
    let mails = eventually(20, "a mail in the outbox", || async {
        let m = kci.outbox();
        (!m.is_empty()).then_some(m)
    })
    .await;
    let mail = Mail::parse(&mails[0]);
    assert_eq!(mail.header("Subject"), Some("Literal subject"));
    assert_eq!(mail.body.trim(), "Literal body ünïcode");
}
