//! kci facing the network: webhooks that would reach into the hub's own
//! network, clients that would hold its listeners, and what its SMTP
//! listener tells a submitter.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn a_webhook_cannot_point_at_the_hubs_own_network() {
    // A real service on this machine's loopback, which must stay unreached.
    let inside = WebhookReceiver::start().await;
    let kci = Kci::start(None, "");
    let admin = kci.token(&["directory:admin", "directory:write", "directory:read"]);
    let (s, _) = kci
        .call("PUT", "/v1/accounts/A1", Some(&admin), Some("{}"))
        .await;
    assert_eq!(s, 201);
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1/contacts/mallory",
            Some(&admin),
            Some("{}"),
        )
        .await;
    assert_eq!(s, 201);
    for uri in [
        inside.url.as_str(),
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://172.16.3.4/hook",
        "https://192.168.1.1/admin",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",
        "https://localhost./hook",
        "https://db.localhost/hook",
    ] {
        for verified in [false, true] {
            let (s, v) = kci
                .add_destination(
                    &admin,
                    "A1",
                    "mallory",
                    &json!({"uri": uri, "verified": verified}).to_string(),
                )
                .await;
            assert_eq!((s, &v["error"]), (422, &json!("invalid_uri")), "{uri}: {v}");
            let message = v["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("uri:") && message.contains("[channels.webhook] allow_private"),
                "{uri}: {message}"
            );
        }
    }
    let (_, account) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert_eq!(
        account["contacts"][0]["destinations"],
        json!([]),
        "{account}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(inside.hooks().is_empty(), "no verification code went in");

    // The operator who runs receivers on its own network says so.
    let kci = Kci::start(None, LOCAL_WEBHOOKS);
    let admin = kci.token(&["directory:admin", "directory:write"]);
    kci.customer(&admin, "A1", "ops", json!({"uri": inside.url}))
        .await;
    eventually(
        10,
        "the verification code on the local receiver",
        || async { (!inside.hooks().is_empty()).then_some(()) },
    )
    .await;
}
