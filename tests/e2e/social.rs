//! X direct messages and WhatsApp, end to end: a real `kci serve`
//! delivering to stand-ins that answer as X's API and Meta's Cloud API
//! do — X's honouring each refresh token once — and WhatsApp's signed
//! status webhook and subscription challenge on the public listener.

use crate::common::*;
use hmac::Mac;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const SEED: &str = "rt-0_ZTJlLXNlZWQtcmVmcmVzaC10b2tlbg";

/// What the X stand-in holds: the refresh token it honours, the access
/// tokens, and every request (path, form or JSON body).
#[derive(Default)]
struct XState {
    refresh: String,
    access: Vec<String>,
    issued: u32,
    seen: Vec<(String, String)>,
}

async fn fake_x() -> (String, Arc<Mutex<XState>>) {
    use axum::http::{HeaderMap, StatusCode};
    let state = Arc::new(Mutex::new(XState {
        refresh: SEED.into(),
        ..Default::default()
    }));
    let json = |status: StatusCode, v: Value| {
        (
            status,
            [("content-type", "application/json")],
            v.to_string(),
        )
    };
    let authorized = |st: &Arc<Mutex<XState>>, h: &HeaderMap| {
        let bearer = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        st.lock().unwrap().access.contains(&bearer)
    };
    let (s1, s2, s3) = (state.clone(), state.clone(), state.clone());
    let app = axum::Router::new()
        .route(
            "/2/oauth2/token",
            axum::routing::post(move |body: String| {
                let st = s1.clone();
                async move {
                    let form: std::collections::HashMap<String, String> =
                        url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
                    let mut s = st.lock().unwrap();
                    s.seen.push(("/2/oauth2/token".into(), body.clone()));
                    if form.get("grant_type").map(String::as_str) != Some("refresh_token")
                        || form.get("client_id").map(String::as_str) != Some("kci-e2e-client")
                        || form.get("refresh_token") != Some(&s.refresh)
                    {
                        return json(
                            StatusCode::BAD_REQUEST,
                            json!({"error":"invalid_request","error_description":"Value passed for the token was invalid."}),
                        );
                    }
                    s.issued += 1;
                    let (access, refresh) =
                        (format!("at-{}-e2e", s.issued), format!("rt-{}-e2e-refresh", s.issued));
                    s.access.push(access.clone());
                    s.refresh = refresh.clone();
                    json(
                        StatusCode::OK,
                        json!({"token_type":"bearer","expires_in":7200,"access_token":access,
                               "scope":"dm.write dm.read tweet.read users.read offline.access","refresh_token":refresh}),
                    )
                }
            }),
        )
        .route(
            "/2/dm_conversations/with/{id}/messages",
            axum::routing::post(
                move |axum::extract::Path(id): axum::extract::Path<String>, h: HeaderMap, body: String| {
                    let st = s2.clone();
                    async move {
                        st.lock()
                            .unwrap()
                            .seen
                            .push((format!("/2/dm_conversations/with/{id}/messages"), body));
                        if !authorized(&st, &h) {
                            return json(StatusCode::UNAUTHORIZED, json!({"title":"Unauthorized","status":401,"detail":"Unauthorized","type":"about:blank"}));
                        }
                        json(
                            StatusCode::CREATED,
                            json!({"data":{"dm_conversation_id":format!("1-{id}"),"dm_event_id":"1582838223281184768"}}),
                        )
                    }
                },
            ),
        )
        .route(
            "/2/users/by/username/{name}",
            axum::routing::get(
                move |axum::extract::Path(name): axum::extract::Path<String>, h: HeaderMap| {
                    let st = s3.clone();
                    async move {
                        st.lock()
                            .unwrap()
                            .seen
                            .push((format!("/2/users/by/username/{name}"), String::new()));
                        if !authorized(&st, &h) {
                            return json(StatusCode::UNAUTHORIZED, json!({"title":"Unauthorized","status":401}));
                        }
                        if name == "XDevelopers" {
                            return json(StatusCode::OK, json!({"data":{"id":"2244994945","name":"Developers","username":"XDevelopers"}}));
                        }
                        json(
                            StatusCode::OK,
                            json!({"errors":[{"value":name,"detail":format!("Could not find user with username: [{name}]."),"title":"Not Found Error","type":"https://api.twitter.com/2/problems/resource-not-found"}]}),
                        )
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

fn line_down(id: &str) -> String {
    json!({
        "id": id, "type": "line.down", "account": "A1", "service": "L1",
        "occurred_at": "2026-07-01T02:58:00Z", "expires_at": "2099-01-01T00:00:00Z",
        "data": {"ticket": "T-1"}
    })
    .to_string()
}

async fn sent(kci: &Kci, token: &str, event: &str) -> Value {
    eventually(15, &format!("{event} sent"), || async {
        let (_, v) = kci
            .call("GET", &format!("/v1/events/{event}"), Some(token), None)
            .await;
        let n = v["notifications"][0].clone();
        (n["state"] == "sent").then_some(n)
    })
    .await
}

#[tokio::test]
async fn x_direct_messages_go_to_the_resolved_id_and_the_rotated_token_survives_a_restart() {
    let (api, x) = fake_x().await;
    let extra = format!(
        "[channels.x]\nclient_id = \"kci-e2e-client\"\nrefresh_token = \"{SEED}\"\napi = \"{api}\"\n"
    );
    let mut kci = Kci::start(None, &extra);
    let admin = kci.token(&["directory:admin", "directory:write", "directory:read"]);
    let source = kci.token(&["events:write", "events:read"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "x:@XDevelopers", "verified": true}),
    )
    .await;
    // Stored is X's id, not the handle.
    let (_, account) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert_eq!(
        account["contacts"][0]["destinations"][0]["uri"], "x:2244994945",
        "{account}"
    );
    // A handle X does not know is refused, in X's words.
    let (s, v) = kci
        .add_destination(
            &admin,
            "A1",
            "alice",
            r#"{"uri":"x:@nosuchuser_42","verified":true}"#,
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "invalid_uri");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Could not find user with username: [nosuchuser_42]"),
        "{v}"
    );

    kci.post_event(&source, &line_down("e1")).await;
    let n = sent(&kci, &source, "e1").await;
    assert!(
        n["detail"]
            .as_str()
            .unwrap()
            .starts_with("x dm_event 1582838223281184768"),
        "{n}"
    );
    let dm = x
        .lock()
        .unwrap()
        .seen
        .iter()
        .find(|(p, _)| p == "/2/dm_conversations/with/2244994945/messages")
        .cloned()
        .unwrap();
    let text: Value = serde_json::from_str(&dm.1).unwrap();
    assert_eq!(text, json!({"text": "Your line L1 went down at 02:58."}));

    // Restarted: the access token was in memory only; kci refreshes with
    // the refresh token X handed it last, kept sealed in its database.
    kci.terminate();
    kci.wait_exit(20).expect("kci stops");
    kci.spawn();
    // The old process's connections are gone with it.
    kci.http = reqwest::Client::new();
    kci.post_event(&source, &line_down("e2")).await;
    sent(&kci, &source, "e2").await;
    let refreshed: Vec<String> = x
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(p, _)| p == "/2/oauth2/token")
        .map(|(_, body)| {
            url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "refresh_token")
                .unwrap()
                .1
                .into_owned()
        })
        .collect();
    assert_eq!(refreshed, [SEED, "rt-1-e2e-refresh"]);
    // Never in clear in the database.
    let db = kci.db();
    for file in [db.clone(), db.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&file) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("e2e-refresh") && !text.contains(SEED),
                "{}",
                file.display()
            );
        }
    }
    // kci doctor opens the stored token with the code key.
    let (_, out, _) = kci.cli(&["doctor"]);
    assert!(
        out.contains("[ok]   channels.x.refresh_token: stored (version 3,"),
        "{out}"
    );
    // WhatsApp is not configured here: its webhook is not found.
    let (s, _) = kci
        .call(
            "GET",
            "/v1/callbacks/whatsapp?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1",
            None,
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = kci
        .call("POST", "/v1/callbacks/whatsapp", None, Some("{}"))
        .await;
    assert_eq!(s, 404);
}

const WA_TOKEN: &str = "EAAJB3e2eWhatsAppAccessToken";
const APP_SECRET: &str = "e2e-app-secret-6f1d1c0a0b2e4a9c";
const VERIFY: &str = "e2e-verify-token-7c1f";
const PHONE_ID: &str = "106540352242922";

/// A stand-in for the Cloud API's messages endpoint: each message a wamid
/// of its own; every request kept (authorization and body).
async fn fake_whatsapp() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        &format!("/v21.0/{PHONE_ID}/messages"),
        axum::routing::post(move |h: axum::http::HeaderMap, body: String| {
            let kept = kept.clone();
            async move {
                let auth = h["authorization"].to_str().unwrap().to_string();
                let v: Value = serde_json::from_str(&body).unwrap();
                let mut k = kept.lock().unwrap();
                k.push((auth, v.clone()));
                let wamid = format!("wamid.E2E{}", k.len());
                (
                    axum::http::StatusCode::OK,
                    [("content-type", "application/json")],
                    json!({"messaging_product":"whatsapp","contacts":[{"input":v["to"],"wa_id":v["to"]}],"messages":[{"id":wamid}]}).to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn hub_signature(secret: &str, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[tokio::test]
async fn whatsapp_sends_templates_and_takes_signed_status_webhooks_on_the_public_listener() {
    let (api, seen) = fake_whatsapp().await;
    let public = free_port();
    let extra = format!(
        r#"[channels.whatsapp]
phone_number_id = "{PHONE_ID}"
access_token = "{WA_TOKEN}"
app_secret = "{APP_SECRET}"
verify_token = "{VERIFY}"
api = "{api}/v21.0"

[channels.whatsapp.templates."line.down"]
name = "line_down"
language = "en_GB"
parameters = ["service", "occurred_at | time", "data.ticket"]
"#
    );
    let kci = Kci::start_with(
        None,
        &format!("[server.public]\nlisten = \"127.0.0.1:{public}\"\n"),
        &extra,
    );
    wait_for_port(public, "the public listener");
    let base = format!("http://127.0.0.1:{public}");
    let admin = kci.token(&["directory:admin", "directory:write"]);
    let source = kci.token(&["events:write", "events:read"]);
    kci.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "whatsapp:+447700900123", "verified": true}),
    )
    .await;
    let (s, v) = kci
        .add_destination(
            &admin,
            "A1",
            "alice",
            r#"{"uri":"whatsapp:447700900123","verified":true}"#,
        )
        .await;
    assert_eq!(s, 422, "{v}");

    kci.post_event(&source, &line_down("w1")).await;
    let n = sent(&kci, &source, "w1").await;
    assert_eq!(n["receipt"], "awaiting", "{n}");
    let (auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(auth, format!("Bearer {WA_TOKEN}"));
    assert_eq!(
        body,
        json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"447700900123",
               "type":"template","template":{"name":"line_down","language":{"code":"en_GB"},
               "components":[{"type":"body","parameters":[{"type":"text","text":"L1"},
               {"type":"text","text":"02:58"},{"type":"text","text":"T-1"}]}]}})
    );

    // Meta's subscription challenge: answered with the right token only.
    let http = reqwest::Client::new();
    let challenge = |token: &str| {
        http.get(format!(
            "{base}/v1/callbacks/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
        ))
        .send()
    };
    let ok = challenge(VERIFY).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "text/plain");
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(challenge("wrong-token").await.unwrap().status(), 403);

    // A status webhook: unsigned or forged, refused and nothing recorded.
    let hook = json!({"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages",
        "value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":PHONE_ID},
        "statuses":[{"id":"wamid.E2E1","status":"failed","timestamp":"1750030073","recipient_id":"447700900123",
        "errors":[{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{"details":"Message Undeliverable."}}]}]}}]}]})
    .to_string();
    let post = |signature: Option<String>| {
        let mut req = http
            .post(format!("{base}/v1/callbacks/whatsapp"))
            .header("content-type", "application/json")
            .body(hook.clone());
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 403);
    assert_eq!(
        post(Some(hub_signature("not-the-secret", &hook)))
            .await
            .unwrap()
            .status(),
        403
    );
    let (_, v) = kci.call("GET", "/v1/events/w1", Some(&source), None).await;
    assert_eq!(v["notifications"][0]["receipt"], "awaiting");
    // Signed by Meta: the message could not be delivered after all.
    assert_eq!(
        post(Some(hub_signature(APP_SECRET, &hook)))
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, v) = kci.call("GET", "/v1/events/w1", Some(&source), None).await;
    let n = &v["notifications"][0];
    assert_eq!(
        (&n["state"], &n["reason"], &n["receipt"]),
        (
            &json!("failed"),
            &json!("undelivered"),
            &json!("undelivered")
        ),
        "{n}"
    );
    assert!(
        n["detail"]
            .as_str()
            .unwrap()
            .contains("error 131026: Message undeliverable"),
        "{n}"
    );
    assert!(!v.to_string().contains(WA_TOKEN) && !v.to_string().contains(APP_SECRET));

    // A second notice, then "delivered" for it.
    kci.post_event(&source, &line_down("w2")).await;
    sent(&kci, &source, "w2").await;
    let delivered = hook
        .replace("wamid.E2E1", "wamid.E2E2")
        .replace("\"failed\"", "\"delivered\"");
    let resp = http
        .post(format!("{base}/v1/callbacks/whatsapp"))
        .header("x-hub-signature-256", hub_signature(APP_SECRET, &delivered))
        .body(delivered.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, v) = kci.call("GET", "/v1/events/w2", Some(&source), None).await;
    assert_eq!(
        (
            &v["notifications"][0]["state"],
            &v["notifications"][0]["receipt"]
        ),
        (&json!("sent"), &json!("delivered")),
        "{v}"
    );
}

#[tokio::test]
async fn another_node_on_postgresql_goes_on_from_the_refresh_token_the_first_stored() {
    let (api, x) = fake_x().await;
    let (pg, schema) = crate::changes::pg_schema().await;
    let extra = format!(
        "[channels.x]\nclient_id = \"kci-e2e-client\"\nrefresh_token = \"{SEED}\"\napi = \"{api}\"\n"
    );
    let mut one = Kci::start_on(Some(&pg), None, "", "", &extra);
    let admin = one.token(&["directory:admin", "directory:write"]);
    let source = one.token(&["events:write", "events:read"]);
    one.customer(
        &admin,
        "A1",
        "alice",
        json!({"uri": "x:2244994945", "verified": true}),
    )
    .await;
    one.post_event(&source, &line_down("p1")).await;
    sent(&one, &source, "p1").await;
    one.terminate();
    one.wait_exit(20).expect("the first node stops");

    // The second node, same database and code key, never refreshed: it
    // must use the token the first one stored, not the used-up seed.
    let two = Kci::start_on(Some(&pg), None, "", "", &extra);
    let source = two.token(&["events:write", "events:read"]);
    two.post_event(&source, &line_down("p2")).await;
    sent(&two, &source, "p2").await;
    let refreshed: Vec<String> = x
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(p, _)| p == "/2/oauth2/token")
        .map(|(_, body)| {
            url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "refresh_token")
                .unwrap()
                .1
                .into_owned()
        })
        .collect();
    assert_eq!(refreshed, [SEED, "rt-1-e2e-refresh"]);
    drop(two);
    schema.drop_now().await;
}
