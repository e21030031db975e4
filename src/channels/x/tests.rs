//! The X channel against a stand-in for X's API that keeps state as X
//! does: each refresh token honoured once and replaced, access tokens
//! checked on every call, users looked up by username. It checks every
//! request as X documents it (path, method, bearer or Basic, content type,
//! form or JSON). Tokens are kept in a real SQLite store.

use super::*;
use crate::channels::testkit::{Answer, Provider, outgoing};
use crate::store::Store;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const CLIENT_ID: &str = "M1M5R3BMVy13QmpScXkzTUt5OE46MTpjaQ";
const CLIENT_SECRET: &str = "xcs_7hO0pJ2qGAm2m9yq-d5pZbUJ1rkhyWn1";
const SEED: &str = "rt-0_bWFkZS11cC1yZWZyZXNoLXRva2VuLTA";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Default)]
struct XState {
    /// The refresh token X honours now (one use).
    refresh: String,
    /// Access tokens X honours.
    access: Vec<String>,
    issued: u32,
    seen: Vec<Seen>,
    /// Holds the first two token requests until both arrived.
    race: Option<Arc<tokio::sync::Barrier>>,
    confidential: bool,
}

type Shared = Arc<Mutex<XState>>;

/// A stand-in for X.
struct FakeX {
    url: String,
    state: Shared,
}

impl FakeX {
    async fn start(confidential: bool) -> FakeX {
        let state: Shared = Arc::new(Mutex::new(XState {
            refresh: SEED.into(),
            confidential,
            ..Default::default()
        }));
        let app = axum::Router::new()
            .route("/2/oauth2/token", axum::routing::post(token))
            .route(
                "/2/dm_conversations/with/{id}/messages",
                axum::routing::post(dm),
            )
            .route("/2/users/by/username/{name}", axum::routing::get(user))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeX { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn token_requests(&self) -> Vec<Vec<(String, String)>> {
        self.seen()
            .iter()
            .filter(|s| s.path == "/2/oauth2/token")
            .map(|s| {
                url::form_urlencoded::parse(s.body.as_bytes())
                    .into_owned()
                    .collect()
            })
            .collect()
    }

    /// X revokes every access token (they expired early).
    fn revoke_access(&self) {
        self.state.lock().unwrap().access.clear();
    }
}

fn record(state: &Shared, method: &str, path: String, headers: &HeaderMap, body: &str) {
    state.lock().unwrap().seen.push(Seen {
        method: method.into(),
        path,
        headers: headers.clone(),
        body: body.into(),
    });
}

fn json_answer(status: StatusCode, v: Value) -> axum::response::Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `POST /2/oauth2/token`, the refresh grant.
async fn token(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    record(&st, "POST", "/2/oauth2/token".into(), &headers, &body);
    let race = {
        let mut s = st.lock().unwrap();
        let r = s.race.clone();
        if s.seen
            .iter()
            .filter(|r| r.path == "/2/oauth2/token")
            .count()
            >= 2
        {
            s.race = None;
        }
        r
    };
    if let Some(barrier) = race {
        barrier.wait().await;
    }
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-www-form-urlencoded")
    );
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(form.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(form.len(), 3, "{form:?}");
    let mut s = st.lock().unwrap();
    if s.confidential {
        use base64::Engine;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        );
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
            return json_answer(
                StatusCode::UNAUTHORIZED,
                json!({"error":"unauthorized_client","error_description":"Missing valid authorization header"}),
            );
        }
    }
    if form.get("refresh_token") != Some(&s.refresh) {
        return json_answer(
            StatusCode::BAD_REQUEST,
            json!({"error":"invalid_request","error_description":"Value passed for the token was invalid."}),
        );
    }
    s.issued += 1;
    let (access, refresh) = (
        format!("at-{}_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4", s.issued),
        format!("rt-{}_bWFkZS11cC1yZWZyZXNoLXRva2Vu", s.issued),
    );
    s.access.push(access.clone());
    s.refresh = refresh.clone();
    json_answer(
        StatusCode::OK,
        json!({"token_type":"bearer","expires_in":7200,"access_token":access,
               "scope":"dm.write dm.read tweet.read users.read offline.access","refresh_token":refresh}),
    )
}

/// The bearer of a request, if X honours it.
fn authorized(st: &Shared, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.is_some_and(|b| st.lock().unwrap().access.iter().any(|a| a == b))
}

fn unauthorized() -> axum::response::Response {
    json_answer(
        StatusCode::UNAUTHORIZED,
        json!({"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}),
    )
}

/// `POST /2/dm_conversations/with/{participant_id}/messages`.
async fn dm(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    record(
        &st,
        "POST",
        format!("/2/dm_conversations/with/{id}/messages"),
        &headers,
        &body,
    );
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["text"].is_string() && v.as_object().unwrap().len() == 1,
        "{v}"
    );
    json_answer(
        StatusCode::CREATED,
        json!({"data":{"dm_conversation_id":format!("1582103724607971328-{id}"),"dm_event_id":"1582838223281184768"}}),
    )
}

/// `GET /2/users/by/username/{username}`.
async fn user(
    State(st): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    record(
        &st,
        "GET",
        format!("/2/users/by/username/{name}"),
        &headers,
        "",
    );
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    if name == "XDevelopers" {
        return json_answer(
            StatusCode::OK,
            json!({"data":{"id":"2244994945","name":"Developers","username":"XDevelopers"}}),
        );
    }
    json_answer(
        StatusCode::OK,
        json!({"errors":[{"value":name,"detail":format!("Could not find user with username: [{name}]."),
               "title":"Not Found Error","resource_type":"user","parameter":"username","resource_id":name,
               "type":"https://api.twitter.com/2/problems/resource-not-found"}]}),
    )
}

/// A fresh SQLite store (a node's, or several nodes' when shared).
async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kci.db").display());
    let store = crate::store::open(&url).await.unwrap();
    (dir, store)
}

fn config(api: &str, extra: &str) -> XConfig {
    let cfg: XConfig = toml::from_str(&format!(
        "client_id = \"{CLIENT_ID}\"\nrefresh_token = \"{SEED}\"\napi = \"{api}\"\n{extra}"
    ))
    .unwrap();
    cfg.validate().unwrap();
    cfg
}

fn channel(
    api: &str,
    extra: &str,
    store: &Arc<dyn Store>,
    key: &crate::trust::codes::CodeKey,
) -> XChannel {
    let keep = Keep {
        store: store.clone(),
        code_key: key.clone(),
    };
    XChannel::from_config(&config(api, extra), Some(keep)).unwrap()
}

#[tokio::test]
async fn sends_a_direct_message_as_x_documents_it() {
    let x = FakeX::start(false).await;
    let (_dir, store) = store().await;
    let key = crate::trust::codes::CodeKey::random();
    let ch = channel(&x.url, "", &store, &key);
    let receipt = ch
        .deliver(&outgoing(
            "x:2244994945",
            "Your line L1 went down.",
            "Line L1 is down",
        ))
        .await
        .unwrap();
    assert_eq!(
        receipt.detail.as_deref(),
        Some("x dm_event 1582838223281184768 in conversation 1582103724607971328-2244994945")
    );
    let seen = x.seen();
    assert_eq!(
        seen.iter()
            .map(|s| (s.method.as_str(), s.path.as_str()))
            .collect::<Vec<_>>(),
        [
            ("POST", "/2/oauth2/token"),
            ("POST", "/2/dm_conversations/with/2244994945/messages")
        ]
    );
    // A public client: no Basic auth on the token request.
    assert!(seen[0].headers.get("authorization").is_none());
    assert_eq!(
        x.token_requests()[0],
        [
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".into(), SEED.into()),
            ("client_id".into(), CLIENT_ID.into()),
        ]
    );
    let dm = &seen[1];
    assert_eq!(
        dm.headers.get("authorization").unwrap(),
        "Bearer at-1_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4"
    );
    assert_eq!(dm.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&dm.body).unwrap(),
        json!({"text": "Your line L1 went down."})
    );

    // The access token is kept in memory: a second message refreshes nothing.
    ch.deliver(&outgoing("x:2244994945", "Back up.", "Line L1 is up"))
        .await
        .unwrap();
    assert_eq!(x.token_requests().len(), 1);

    // A text longer than X takes is cut to 10,000 characters, not bytes.
    let long = "é".repeat(MAX_TEXT + 50);
    ch.deliver(&outgoing("x:2244994945", &long, "x"))
        .await
        .unwrap();
    let last: Value = serde_json::from_str(&x.seen().last().unwrap().body).unwrap();
    assert_eq!(last["text"].as_str().unwrap(), "é".repeat(MAX_TEXT));
    assert_eq!(fit("short"), "short");
}

#[tokio::test]
async fn the_rotated_refresh_token_is_kept_sealed_and_a_restart_goes_on_from_it() {
    let x = FakeX::start(true).await;
    let (_dir, store) = store().await;
    let key = crate::trust::codes::CodeKey::random();
    let secret = format!("client_secret = \"{CLIENT_SECRET}\"");
    channel(&x.url, &secret, &store, &key)
        .deliver(&outgoing("x:2244994945", "One.", "x"))
        .await
        .unwrap();
    // A confidential client authenticates the token request with Basic.
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert_eq!(
        x.seen()[0]
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("Basic {basic}")
    );
    // X replaced the refresh token; kci stored the new one, sealed.
    let stored = store.credential(tokens::NAME).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert!(!stored.sealed.contains("rt-1") && !stored.sealed.contains("bWFkZS11cC1yZWZyZXNo"));
    let sealer = crate::trust::seal::Sealer::new(&key, tokens::NAME);
    assert_eq!(
        sealer.open(&stored.sealed, "x.refresh_token#2").unwrap(),
        "rt-1_bWFkZS11cC1yZWZyZXNoLXRva2Vu"
    );
    // Restarted (the access token was in memory only): the stored refresh
    // token is used, never the configured one X no longer honours.
    channel(&x.url, &secret, &store, &key)
        .deliver(&outgoing("x:2244994945", "Two.", "x"))
        .await
        .unwrap();
    let refreshed: Vec<String> = x
        .token_requests()
        .iter()
        .map(|f| {
            f.iter()
                .find(|(k, _)| k == "refresh_token")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(refreshed, [SEED, "rt-1_bWFkZS11cC1yZWZyZXNoLXRva2Vu"]);
    assert_eq!(
        store
            .credential(tokens::NAME)
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
    // Another code key (code.key lost with a restore, or a node's wrong)
    // opens nothing. The configured token is tried instead; X refuses the
    // used-up seed, so nothing stored is touched, and the words say what
    // to do.
    let other_key = crate::trust::codes::CodeKey::random();
    let err = channel(&x.url, &secret, &store, &other_key)
        .deliver(&outgoing("x:2244994945", "Three.", "x"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(
        err.detail().contains("does not open with this code key")
            && err.detail().contains("[channels.x] refresh_token"),
        "{err}"
    );
    assert_eq!(x.token_requests().len(), 3);
    assert_eq!(
        store
            .credential(tokens::NAME)
            .await
            .unwrap()
            .unwrap()
            .version,
        3
    );
    // Authorized again, the new token configured: it starts a chain that
    // opens with the key of now.
    x.state.lock().unwrap().refresh = "rt-again_YWdhaW4tYXV0aG9yaXplZA".into();
    let mut again = config(&x.url, &secret);
    again.refresh_token = Secret::new("rt-again_YWdhaW4tYXV0aG9yaXplZA".into());
    let keep = Keep {
        store: store.clone(),
        code_key: other_key.clone(),
    };
    XChannel::from_config(&again, Some(keep))
        .unwrap()
        .deliver(&outgoing("x:2244994945", "Four.", "x"))
        .await
        .unwrap();
    let stored = store.credential(tokens::NAME).await.unwrap().unwrap();
    assert_eq!(
        crate::trust::seal::Sealer::new(&other_key, tokens::NAME)
            .open(
                &stored.sealed,
                &format!("x.refresh_token#{}", stored.version)
            )
            .unwrap(),
        x.state.lock().unwrap().refresh
    );
}

#[tokio::test]
async fn two_nodes_refreshing_at_once_both_go_on_and_the_newest_token_is_kept() {
    let x = FakeX::start(false).await;
    x.state.lock().unwrap().race = Some(Arc::new(tokio::sync::Barrier::new(2)));
    let (_dir, store) = store().await;
    let key = crate::trust::codes::CodeKey::random();
    // Two nodes, one database, one code key.
    let (a, b) = (
        channel(&x.url, "", &store, &key),
        channel(&x.url, "", &store, &key),
    );
    let msg = outgoing("x:2244994945", "Hello.", "x");
    let (ra, rb) = tokio::join!(a.deliver(&msg), b.deliver(&msg));
    ra.unwrap();
    rb.unwrap();
    // Both asked with the seed at once; X honoured it once, and the loser
    // went on from the winner's stored token.
    let used: Vec<String> = x
        .token_requests()
        .iter()
        .map(|f| {
            f.iter()
                .find(|(k, _)| k == "refresh_token")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(used, [SEED, SEED, "rt-1_bWFkZS11cC1yZWZyZXNoLXRva2Vu"]);
    let stored = store.credential(tokens::NAME).await.unwrap().unwrap();
    assert_eq!(stored.version, 3);
    let sealer = crate::trust::seal::Sealer::new(&key, tokens::NAME);
    assert_eq!(
        sealer.open(&stored.sealed, "x.refresh_token#3").unwrap(),
        x.state.lock().unwrap().refresh
    );
    assert_eq!(
        x.seen()
            .iter()
            .filter(|s| s.path.ends_with("/messages"))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_401_renews_the_access_token_once_and_a_dead_chain_says_what_to_do() {
    let x = FakeX::start(false).await;
    let (_dir, store) = store().await;
    let key = crate::trust::codes::CodeKey::random();
    let ch = channel(&x.url, "", &store, &key);
    ch.deliver(&outgoing("x:2244994945", "One.", "x"))
        .await
        .unwrap();
    x.revoke_access();
    ch.deliver(&outgoing("x:2244994945", "Two.", "x"))
        .await
        .unwrap();
    let paths: Vec<String> = x.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/2/oauth2/token",
            "/2/dm_conversations/with/2244994945/messages",
            "/2/dm_conversations/with/2244994945/messages",
            "/2/oauth2/token",
            "/2/dm_conversations/with/2244994945/messages",
        ]
    );
    // X forgets kci's refresh token (the app was de-authorized): final, in
    // words saying what to do, and no credential in them.
    x.state.lock().unwrap().refresh = "rt-elsewhere".into();
    x.revoke_access();
    let err = ch
        .deliver(&outgoing("x:2244994945", "Three.", "x"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(
        err.detail()
            .contains("Value passed for the token was invalid")
            && err.detail().contains("[channels.x] refresh_token"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains("rt-2") && !format!("{err:?}").contains(SEED));
    // The operator authorizes kci anew and configures the new token: the
    // stored chain is refused, so kci starts again from the configured one.
    x.state.lock().unwrap().refresh = "rt-new_c2Vjb25kLWF1dGhvcml6YXRpb24".into();
    let renewed = XChannel::from_config(
        &{
            let mut c = config(&x.url, "");
            c.refresh_token = Secret::new("rt-new_c2Vjb25kLWF1dGhvcml6YXRpb24".into());
            c
        },
        Some(Keep {
            store: store.clone(),
            code_key: key.clone(),
        }),
    )
    .unwrap();
    renewed
        .deliver(&outgoing("x:2244994945", "Four.", "x"))
        .await
        .unwrap();
    let stored = store.credential(tokens::NAME).await.unwrap().unwrap();
    let sealer = crate::trust::seal::Sealer::new(&key, tokens::NAME);
    assert_eq!(
        sealer
            .open(
                &stored.sealed,
                &format!("x.refresh_token#{}", stored.version)
            )
            .unwrap(),
        x.state.lock().unwrap().refresh
    );
}

#[tokio::test]
async fn a_handle_is_resolved_to_its_id_once_and_an_unknown_one_is_refused() {
    let x = FakeX::start(false).await;
    let (_dir, store) = store().await;
    let key = crate::trust::codes::CodeKey::random();
    let ch = channel(&x.url, "", &store, &key);
    let uri: DestinationUri = "x:@XDevelopers".parse().unwrap();
    let resolved = ch.resolve_destination(&uri).await.unwrap();
    assert_eq!(resolved.to_string(), "x:2244994945");
    let lookup = x.seen().last().cloned().unwrap();
    assert_eq!(
        (lookup.method.as_str(), lookup.path.as_str()),
        ("GET", "/2/users/by/username/XDevelopers")
    );
    assert_eq!(
        lookup.headers.get("authorization").unwrap(),
        "Bearer at-1_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4"
    );
    // An id is what is stored already: X is not asked.
    let before = x.seen().len();
    let id: DestinationUri = "x:2244994945".parse().unwrap();
    assert_eq!(ch.resolve_destination(&id).await.unwrap(), id);
    assert_eq!(x.seen().len(), before);
    let err = ch
        .resolve_destination(&"x:@nosuchuser".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        err.detail(),
        "Could not find user with username: [nosuchuser]."
    );
}

#[tokio::test]
async fn xs_errors_are_classified_in_its_own_words() {
    let reset = chrono::Utc::now().timestamp() + 600;
    let cases: Vec<(Answer, bool, &str, Option<u64>)> = vec![
        (
            Answer::new(403, r#"{"detail":"You cannot send messages to this user.","type":"about:blank","title":"Forbidden","status":403}"#),
            false,
            "HTTP 403 You cannot send messages to this user.",
            None,
        ),
        (
            Answer::new(400, r#"{"errors":[{"parameters":{"text":[""]},"message":"The `text` query parameter value [] is not valid"}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.twitter.com/2/problems/invalid-request"}"#),
            false,
            "HTTP 400 One or more parameters to your request was invalid.",
            None,
        ),
        (
            Answer::new(400, r#"{"errors":[{"message":"The `participant_id` is not valid"}]}"#),
            false,
            "HTTP 400 The `participant_id` is not valid",
            None,
        ),
        (
            Answer::new(429, r#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#)
                .header("x-rate-limit-limit", "15")
                .header("x-rate-limit-remaining", "0")
                .header("x-rate-limit-reset", &reset.to_string()),
            true,
            "HTTP 429 Too Many Requests",
            Some(600),
        ),
        (
            Answer::new(503, r#"{"title":"Service Unavailable","detail":"Service Unavailable","type":"about:blank","status":503}"#),
            true,
            "HTTP 503 Service Unavailable",
            None,
        ),
    ];
    let (_dir, store) = store().await;
    let key = crate::trust::codes::CodeKey::random();
    // Accepted with an answer kci cannot read: sent all the same.
    let odd = Provider::start(201, "{}").await;
    let ch = channel(&odd.url, "", &store, &key);
    ch.prime("at-primed_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4").await;
    let r = ch
        .deliver(&outgoing("x:2244994945", "x", "y"))
        .await
        .unwrap();
    assert!(r.detail.unwrap().starts_with("x: accepted"));
    for (answer, transient, words, after) in cases {
        let x = Provider::answering(answer).await;
        let ch = channel(&x.url, "", &store, &key);
        ch.prime("at-primed_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4").await;
        let err = ch
            .deliver(&outgoing("x:2244994945", "x", "y"))
            .await
            .unwrap_err();
        assert_eq!(err.is_transient(), transient, "{err}");
        assert_eq!(err.detail(), words);
        match after {
            Some(secs) => {
                assert!(err.is_pacing(), "{err:?}");
                let wait = err.retry_after().unwrap().as_secs();
                assert!((secs - 5..=secs).contains(&wait), "{wait}");
            }
            None => assert_eq!(err.retry_after(), None),
        }
        let req = x.only_request();
        assert_eq!(
            req.header("authorization"),
            Some("Bearer at-primed_VGhpcyBpcyBhbiBhY2Nlc3MgdG9rZW4")
        );
        assert!(!format!("{err:?}").contains("at-primed"));
    }
}

#[test]
fn config_mistakes_name_the_key() {
    let cases = [
        ("client_id = \"\"\nrefresh_token = \"r\"", "client_id"),
        ("client_id = \"a b\"\nrefresh_token = \"r\"", "client_id"),
        (
            "client_id = \"abc\"\nrefresh_token = \" \"",
            "refresh_token",
        ),
        (
            "client_id = \"abc\"\nrefresh_token = \"r\"\nclient_secret = \"\"",
            "client_secret",
        ),
    ];
    for (text, key) in cases {
        let cfg: XConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, key, "{text}");
    }
    assert!(
        toml::from_str::<XConfig>("client_id = \"a\"\nrefresh_token = \"r\"\nbearer = \"x\"")
            .is_err()
    );
    let cfg: XConfig = toml::from_str("client_id = \"a\"\nrefresh_token = \"r\"").unwrap();
    assert_eq!(cfg.api.as_str(), "https://api.x.com/");
    // The credentials never show in the config's Debug.
    let shown = format!(
        "{:?}",
        config(
            "http://127.0.0.1:9",
            &format!("client_secret = \"{CLIENT_SECRET}\"")
        )
    );
    assert!(
        !shown.contains(SEED) && !shown.contains(CLIENT_SECRET),
        "{shown}"
    );
}
