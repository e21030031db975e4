//! Channels over HTTP, end to end: webhook destinations with secrets of
//! their own and their rotation, destinations that keep refusing marked
//! unhealthy (and the contact told elsewhere), and SMS through a generic
//! gateway with the text fitted to the type's segments.

use crate::common::*;
use base64::Engine;
use hmac::Mac;
use serde_json::{Value, json};

fn signature(secret: &str, hook: &Hook) -> String {
    let id = hook.headers["webhook-id"].to_str().unwrap();
    let ts = hook.headers["webhook-timestamp"].to_str().unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hook.body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The signatures a hook carries, in order.
fn signatures(hook: &Hook) -> Vec<String> {
    hook.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect()
}

fn line_down(id: &str) -> String {
    json!({
        "id": id, "type": "line.down", "account": "A1", "service": "L1",
        "occurred_at": "2026-07-01T02:58:00Z", "expires_at": "2099-01-01T00:00:00Z",
        "data": {"ticket": "T-1"}
    })
    .to_string()
}

/// kci with `channel` config, Alice's webhook destination at a receiver,
/// and the tokens to manage it and to post events.
struct Hooked {
    hooks: WebhookReceiver,
    kci: Kci,
    admin: String,
    source: String,
    /// `POST` here rotates the destination's signing secret.
    secret_path: String,
}

async fn hooked(channel: &str) -> Hooked {
    let hooks = WebhookReceiver::start().await;
    let kci = Kci::start(None, channel);
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write"]);
    let did = kci
        .customer(
            &admin,
            "A1",
            "alice",
            json!({"uri": hooks.url, "verified": true}),
        )
        .await;
    let secret_path = format!("/v1/accounts/A1/contacts/alice/destinations/{did}/secret");
    Hooked {
        hooks,
        kci,
        admin,
        source,
        secret_path,
    }
}

#[tokio::test]
async fn a_webhook_destination_gets_its_own_secret_and_rotates_it_with_an_overlap() {
    let channel = format!("{LOCAL_WEBHOOKS}secret = \"{WEBHOOK_SECRET}\"\n");
    let Hooked {
        hooks,
        kci,
        admin,
        source,
        secret_path,
    } = hooked(&channel).await;

    // Auth and scope first.
    let (s, _) = kci.call("POST", &secret_path, None, None).await;
    assert_eq!(s, 401);
    let (s, _) = kci.call("POST", &secret_path, Some(&source), None).await;
    assert_eq!(s, 403);

    // Until it has its own, the channel's secret signs.
    kci.post_event(&source, &line_down("e1")).await;
    let first = eventually(10, "first hook", || async {
        hooks.hooks().first().cloned()
    })
    .await;
    assert_eq!(signatures(&first), vec![signature(WEBHOOK_SECRET, &first)]);

    // Its own secret, with the channel's still valid for the overlap.
    let (s, v) = kci
        .call(
            "POST",
            &secret_path,
            Some(&admin),
            Some(r#"{"overlap":"1h"}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let own = v["secret"].as_str().unwrap().to_string();
    assert!(own.starts_with("whsec_") && v["previous_valid_until"].is_string());
    kci.post_event(&source, &line_down("e2")).await;
    let second = eventually(10, "second hook", || async {
        hooks.hooks().get(1).cloned()
    })
    .await;
    assert_eq!(
        signatures(&second),
        vec![signature(&own, &second), signature(WEBHOOK_SECRET, &second)]
    );

    // Rotated at once ("0s"): only the newest signs.
    let (s, v) = kci
        .call(
            "POST",
            &secret_path,
            Some(&admin),
            Some(r#"{"overlap":"0s"}"#),
        )
        .await;
    assert_eq!((s, &v["previous_valid_until"]), (200, &Value::Null), "{v}");
    let newest = v["secret"].as_str().unwrap().to_string();
    assert_ne!(newest, own);
    kci.post_event(&source, &line_down("e3")).await;
    let third = eventually(10, "third hook", || async { hooks.hooks().get(2).cloned() }).await;
    assert_eq!(signatures(&third), vec![signature(&newest, &third)]);

    // The secret is shown once: never in the account's view.
    let (_, account) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert!(!account.to_string().contains(&newest[6..]));
    // A bad overlap names the field; a mail destination has no secret.
    let (s, v) = kci
        .call(
            "POST",
            &secret_path,
            Some(&admin),
            Some(r#"{"overlap":"soon"}"#),
        )
        .await;
    assert_eq!(s, 422);
    assert!(v["message"].as_str().unwrap().starts_with("overlap"), "{v}");
}

/// The signing secret is kept sealed: the table alone signs nothing. One
/// an earlier version kept in clear is sealed when kci next starts, and
/// still signs.
#[tokio::test]
async fn a_webhook_secret_is_kept_sealed_and_one_kept_in_clear_is_sealed_at_start() {
    let Hooked {
        hooks,
        mut kci,
        admin,
        source,
        secret_path: path,
    } = hooked(LOCAL_WEBHOOKS).await;
    let did = path.split('/').nth_back(1).unwrap().to_string();
    let (s, v) = kci
        .call("POST", &path, Some(&admin), Some(r#"{"overlap":"0s"}"#))
        .await;
    assert_eq!(s, 200, "{v}");
    let own = v["secret"].as_str().unwrap().to_string();
    let db = kci.db();
    let stored = || -> String {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT secret FROM destinations WHERE id = ?1",
                [&did],
                |r| r.get(0),
            )
            .unwrap()
    };
    let sealed = stored();
    assert!(
        sealed.starts_with("v1.") && !sealed.contains(&own[6..]),
        "{sealed}"
    );
    kci.post_event(&source, &line_down("e1")).await;
    let first = eventually(10, "first hook", || async {
        hooks.hooks().first().cloned()
    })
    .await;
    assert_eq!(signatures(&first), vec![signature(&own, &first)]);

    // As an earlier version kept it: in clear. The next start seals it.
    kci.terminate();
    assert!(kci.wait_exit(15).is_some(), "kci stops on TERM");
    rusqlite::Connection::open(kci.db())
        .unwrap()
        .execute(
            "UPDATE destinations SET secret = ?1 WHERE id = ?2",
            [&own, &did],
        )
        .unwrap();
    kci.spawn();
    let again = stored();
    assert!(
        again.starts_with("v1.") && again != sealed && !again.contains(&own[6..]),
        "{again}"
    );
    kci.post_event(&source, &line_down("e2")).await;
    let second = eventually(10, "second hook", || async {
        hooks.hooks().get(1).cloned()
    })
    .await;
    assert_eq!(signatures(&second), vec![signature(&own, &second)]);
}

#[tokio::test]
async fn refusals_in_a_row_mark_a_destination_unhealthy_and_the_contact_is_told_elsewhere() {
    let hooks = WebhookReceiver::start().await;
    let kci = Kci::start(None, &format!("unhealthy_after = 2\n{LOCAL_WEBHOOKS}"));
    let admin = kci.token(&["directory:admin", "directory:write", "directory:read"]);
    let source = kci.token(&["events:write", "events:read"]);
    let hook = kci
        .customer(
            &admin,
            "A1",
            "alice",
            json!({"uri": hooks.url, "verified": true}),
        )
        .await;
    let (s, _) = kci
        .add_destination(
            &admin,
            "A1",
            "alice",
            r#"{"uri":"mailto:alice@example.com","verified":true}"#,
        )
        .await;
    assert_eq!(s, 201);

    // The endpoint is gone for good: 410 twice.
    *hooks.status.lock().unwrap() = 410;
    for id in ["e1", "e2"] {
        kci.post_event(&source, &line_down(id)).await;
        eventually(10, "the refusal", || async {
            let (_, v) = kci
                .call("GET", &format!("/v1/events/{id}"), Some(&source), None)
                .await;
            v["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["channel"] == "webhook" && n["state"] == "failed")
                .then_some(())
        })
        .await;
    }
    // Two line.down mails, then the warning by mail.
    let warning = eventually(10, "the warning mail", || async {
        kci.outbox()
            .into_iter()
            .find(|m| m.contains("We stopped sending to one of your destinations"))
    })
    .await;
    assert!(warning.contains(&hooks.url), "{warning}");
    let (_, account) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    let dests = account["contacts"][0]["destinations"].as_array().unwrap();
    let marked = dests.iter().find(|d| d["id"] == hook.as_str()).unwrap();
    assert!(marked["unhealthy_since"].is_string(), "{marked}");

    // Now nothing goes there, and the record says why.
    kci.post_event(&source, &line_down("e3")).await;
    let (_, v) = kci.call("GET", "/v1/events/e3", Some(&source), None).await;
    let n = v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["channel"] == "webhook")
        .unwrap()
        .clone();
    assert_eq!(
        (&n["state"], &n["reason"]),
        (&json!("suppressed"), &json!("unhealthy"))
    );

    // Fixed at the other end: a new code, entered back, and it is used again.
    *hooks.status.lock().unwrap() = 200;
    let before = hooks.hooks().len();
    let code_path = format!("/v1/accounts/A1/contacts/alice/destinations/{hook}/code");
    let (s, v) = kci.call("POST", &code_path, Some(&admin), None).await;
    assert_eq!(s, 202, "{v}");
    let code_hook = eventually(10, "the code", || async {
        hooks.hooks().get(before).cloned()
    })
    .await;
    let body: Value = serde_json::from_slice(&code_hook.body).unwrap();
    let short = body["data"]["short"].as_str().unwrap();
    let code: String = short
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(6)
        .collect();
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/accounts/A1/contacts/alice/destinations/{hook}/verify"),
            Some(&admin),
            Some(&json!({"code": code}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Healthy again: a second request for a code has nothing to prove.
    let (s, _) = kci.call("POST", &code_path, Some(&admin), None).await;
    assert_eq!(s, 409);
    kci.post_event(&source, &line_down("e4")).await;
    eventually(10, "delivery after re-verification", || async {
        hooks
            .hooks()
            .get(before + 1..)
            .is_some_and(|rest| {
                rest.iter()
                    .any(|h| String::from_utf8_lossy(&h.body).contains(r#""type":"line.down""#))
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sms_through_a_generic_gateway_is_cut_to_the_types_segments_and_counted() {
    let gateway = WebhookReceiver::start().await;
    let extra = format!(
        r#"[channels.sms.http]
url = "{url}"
headers = {{ Authorization = "Bearer gw_secret_7f3a" }}
fields = {{ to = "{{{{ to }}}}", text = "{{{{ text }}}}", ref = "{{{{ id }}}}" }}

[types."bill.ready"]
category = "billing"
max_segments = 1
short = "Your bill for {{{{ data.month }}}} is ready: {{{{ data.amount }}}}. {{{{ data.note }}}}"
"#,
        url = gateway.url
    );
    let kci = Kci::start(None, &extra);
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write", "events:read"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "sms:+447700900123", "verified": true}),
    )
    .await;
    // A bad number is refused at creation, naming the field.
    let (s, v) = kci
        .add_destination(
            &admin,
            "A1",
            "alice",
            r#"{"uri":"sms:07700900123","verified":true}"#,
        )
        .await;
    assert_eq!(s, 422);
    assert!(v["message"].as_str().unwrap().contains("E.164"), "{v}");

    let note = "Pay by direct debit and save. ".repeat(8);
    let event = json!({
        "id": "b1", "type": "bill.ready", "account": "A1",
        "data": {"month": "July", "amount": "£42.00", "note": note}
    });
    kci.post_event(&source, &event.to_string()).await;
    let req = eventually(10, "the gateway request", || async {
        gateway.hooks().first().cloned()
    })
    .await;
    assert_eq!(req.headers["authorization"], "Bearer gw_secret_7f3a");
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    assert_eq!(form["to"], "+447700900123");
    let text = &form["text"];
    assert!(
        text.starts_with("Your bill for July is ready: £42.00."),
        "{text}"
    );
    assert!(
        text.ends_with("...") && text.chars().count() <= 160,
        "{text}"
    );
    let (_, v) = kci.call("GET", "/v1/events/b1", Some(&source), None).await;
    let n = &v["notifications"][0];
    assert_eq!(form["ref"], n["id"].as_str().unwrap());
    let n = eventually(10, "sent", || async {
        let (_, v) = kci.call("GET", "/v1/events/b1", Some(&source), None).await;
        let n = v["notifications"][0].clone();
        (n["state"] == "sent").then_some(n)
    })
    .await;
    assert_eq!(n["segments"], 1);
    let detail = n["detail"].as_str().unwrap();
    assert!(detail.contains("cut from 2 to 1 segment"), "{detail}");
    // The credential shows nowhere in what the API answers.
    assert!(!v.to_string().contains("gw_secret"));
}

/// A stand-in for Twilio's Messages API: answers a create as Twilio does.
pub(crate) async fn fake_twilio() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        axum::routing::post(move |body: String| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body);
                (
                    axum::http::StatusCode::CREATED,
                    [("content-type", "application/json")],
                    r#"{"sid":"SM0123456789abcdef0123456789abcdef","status":"queued","num_segments":"1"}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

pub(crate) fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn twilio_status_callbacks_are_checked_and_recorded() {
    const TOKEN: &str = "f00dcafe0123456789abcdef01234567";
    let (api, bodies) = fake_twilio().await;
    // kci behind a reverse proxy: Twilio calls the public address, and
    // signs that.
    let public = "https://kci.isp.example/";
    let extra = format!(
        "[channels.sms.twilio]\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\nauth_token = \"{TOKEN}\"\n\
         from = \"+447700900000\"\napi = \"{api}\"\nstatus_callback = \"{public}\"\n"
    );
    let kci = Kci::start(None, &extra);
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write", "events:read"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "sms:+447700900123", "verified": true}),
    )
    .await;
    kci.post_event(&source, &line_down("e1")).await;
    let n = eventually(10, "sent to Twilio", || async {
        let (_, v) = kci.call("GET", "/v1/events/e1", Some(&source), None).await;
        let n = v["notifications"][0].clone();
        (n["state"] == "sent").then_some(n)
    })
    .await;
    assert_eq!(
        (&n["receipt"], &n["segments"]),
        (&json!("awaiting"), &json!(1))
    );
    let id = n["id"].as_str().unwrap();
    let callback = format!("https://kci.isp.example/v1/callbacks/twilio/{id}");
    let sent = bodies.lock().unwrap()[0].clone();
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(sent.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(form["StatusCallback"], callback);
    let local = format!("{}/v1/callbacks/twilio/{id}", kci.base);

    let params = [
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let send = |signature: Option<String>| {
        let mut req = kci
            .http
            .post(&local)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone());
        if let Some(s) = signature {
            req = req.header("x-twilio-signature", s);
        }
        req.send()
    };
    // Unsigned, or signed with another token: refused, nothing recorded.
    assert_eq!(send(None).await.unwrap().status(), 403);
    let forged = twilio_signature("not-the-token", &callback, &params);
    assert_eq!(send(Some(forged)).await.unwrap().status(), 403);
    let (_, v) = kci.call("GET", "/v1/events/e1", Some(&source), None).await;
    assert_eq!(v["notifications"][0]["receipt"], "awaiting");
    // Signed by Twilio: the SMS did not arrive after all.
    let good = twilio_signature(TOKEN, &callback, &params);
    assert_eq!(send(Some(good)).await.unwrap().status(), 204);
    let (_, v) = kci.call("GET", "/v1/events/e1", Some(&source), None).await;
    let n = &v["notifications"][0];
    assert_eq!(
        (&n["state"], &n["reason"], &n["receipt"]),
        (
            &json!("failed"),
            &json!("undelivered"),
            &json!("undelivered")
        )
    );
    assert_eq!(n["detail"], "undelivered: undelivered, error 30003");
    let (_, failed) = kci
        .call("GET", "/v1/deliveries?state=failed", Some(&source), None)
        .await;
    assert!(failed.to_string().contains(id), "{failed}");
    assert!(!v.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_paranoid_account_gets_content_free_notices_where_content_could_leak() {
    let hooks = WebhookReceiver::start().await;
    let kci = Kci::start_with(
        None,
        "portal_url = \"https://my.isp.example/messages\"\n",
        LOCAL_WEBHOOKS,
    );
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": hooks.url, "verified": true}),
    )
    .await;
    let (s, _) = kci
        .add_destination(
            &admin,
            "A1",
            "alice",
            r#"{"uri":"mailto:alice@example.com","verified":true}"#,
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(r#"{"name":"Alice","paranoid":true}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    kci.post_event(&source, &line_down("e1")).await;
    let hook = eventually(10, "the webhook", || async {
        hooks.hooks().first().cloned()
    })
    .await;
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(
        body["data"]["short"],
        "You have a new message from Example ISP. Read it in your portal: https://my.isp.example/messages"
    );
    assert!(!hook.body.windows(2).any(|w| w == b"L1"), "{body}");
    let mail = eventually(10, "the mail", || async { kci.outbox().into_iter().next() }).await;
    assert!(
        mail.contains("Subject: New message from Example ISP"),
        "{mail}"
    );
    assert!(!mail.contains("T-1") && !mail.contains("Line L1"), "{mail}");
}
