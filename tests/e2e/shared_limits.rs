//! A provider's rate is the provider's, not a node's: two `kci serve`
//! nodes on one PostgreSQL, a webhook channel limited to `10/s`, and
//! notices posted to both nodes at once arrive no faster than one node
//! alone would send them (each node with a limiter of its own would send
//! twice the rate).

use crate::changes::pg_schema;
use crate::common::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A receiver noting when each webhook arrived.
async fn timed_receiver() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrivals)
}

#[tokio::test]
async fn two_nodes_together_keep_one_providers_rate() {
    let (pg, schema) = pg_schema().await;
    let (url, arrivals) = timed_receiver().await;
    let config = format!("{LOCAL_WEBHOOKS}rate = \"10/s\"\n");
    let a = Kci::start_on(Some(&pg), None, "", "", &config);
    let b = Kci::start_on(Some(&pg), None, "", "", &config);
    let admin = a.token(&["admin"]);
    a.customer(&admin, "A1", "c", json!({"uri": url, "verified": true}))
        .await;

    // Sixty notices, half through each node, all at once.
    const TOTAL: usize = 60;
    let posts = (0..TOTAL).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = json!({"id": format!("rate-{i}"), "type": "line.down", "account": "A1",
            "subject": format!("notice {i}")})
        .to_string();
        let admin = admin.clone();
        async move {
            node.call("POST", "/v1/events", Some(&admin), Some(&body))
                .await
        }
    });
    for (s, v) in futures_util::future::join_all(posts).await {
        assert_eq!(s, 202, "{v}");
    }
    eventually(60, "every notice delivered", || async {
        (arrivals.lock().unwrap().len() >= TOTAL).then_some(())
    })
    .await;
    // Nothing more comes: each was sent once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut at = arrivals.lock().unwrap().clone();
    assert_eq!(at.len(), TOTAL, "each notice sent once");
    at.sort();

    // One rate of 10/s: a burst of ten, then one every 100 ms, so the
    // last of sixty no sooner than 5 s after the first (two limiters of
    // their own would have taken about 2 s); and no second holds more
    // than the burst and a second's worth, give or take the network
    // (two limiters: up to 40).
    let span = at[TOTAL - 1] - at[0];
    let busiest = (0..TOTAL)
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| **t - at[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!("two nodes, 10/s: {TOTAL} notices over {span:?}, at most {busiest} in any second");
    assert!(
        span >= Duration::from_millis(4500),
        "{TOTAL} notices in {span:?}: faster than 10/s"
    );
    assert!(busiest <= 25, "{busiest} notices in one second");
    drop((a, b));
    schema.drop_now().await;
}

/// A token is looked up in memory on each node (web::auth::TokenCache),
/// yet `kci token revoke` and `kci staff disable` hold everywhere by the
/// time they return: two nodes on one PostgreSQL, each having just let
/// the token in (so both keep it), refuse it the moment the command,
/// run as another process, is done — and go on refusing it.
#[tokio::test]
async fn a_revocation_holds_on_every_node_when_the_command_returns() {
    let (pg, schema) = pg_schema().await;
    let a = Kci::start_on(Some(&pg), None, "", "", "");
    let b = Kci::start_on(Some(&pg), None, "", "", "");
    let token = a.token(&["directory:read"]);
    let staff_token = {
        let (code, _, err) = a.cli(&["staff", "add", "kim", "--role", "agent"]);
        assert_eq!(code, 0, "{err}");
        a.token_as(Some("kim"), &["directory:read"])
    };
    async fn get(node: &Kci, token: &str) -> u16 {
        node.call("GET", "/v1/accounts/none", Some(token), None)
            .await
            .0
    }
    for t in [&token, &staff_token] {
        for node in [&a, &b] {
            // Twice: the second answer comes from memory.
            assert_eq!(get(node, t).await, 404);
            assert_eq!(get(node, t).await, 404);
        }
    }
    // The token acting as no one: its staff column is empty.
    let (_, listing, _) = a.cli(&["token", "list"]);
    let id = listing
        .lines()
        .find(|l| l.split('\t').nth(2) == Some("-"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no token in {listing}"))
        .to_string();
    let (code, _, err) = b.cli(&["token", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = b.cli(&["staff", "disable", "kim"]);
    assert_eq!(code, 0, "{err}");
    for _ in 0..3 {
        for t in [&token, &staff_token] {
            for node in [&a, &b] {
                assert_eq!(get(node, t).await, 401, "refused once the command returned");
            }
        }
    }
    drop((a, b));
    schema.drop_now().await;
}
