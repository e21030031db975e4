//! WhatsApp against a stand-in answering as the Cloud API does, each
//! request checked as Meta documents it.

use super::*;
use crate::channels::testkit::{Answer, Provider, outgoing};
use serde_json::json;

const TOKEN: &str = "EAAJB3Zz9ZC0sBO4ZB7mZC4ZBwhatsappTOKENxyz";
const APP_SECRET: &str = "6f1d1c0a0b2e4a9c8d7e6f5a4b3c2d1e";
const PHONE_ID: &str = "106540352242922";
const SENT: &str = r#"{"messaging_product":"whatsapp","contacts":[{"input":"+447700900123","wa_id":"447700900123"}],"messages":[{"id":"wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQjBGQTM4NUYwNTlDMkQxRjRGAA=="}]}"#;
const WAMID: &str = "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSQjBGQTM4NUYwNTlDMkQxRjRGAA==";

fn config(api: &str, extra: &str) -> WhatsAppConfig {
    let cfg: WhatsAppConfig = toml::from_str(&format!(
        "phone_number_id = \"{PHONE_ID}\"\naccess_token = \"{TOKEN}\"\napp_secret = \"{APP_SECRET}\"\napi = \"{api}/v21.0\"\n{extra}"
    ))
    .unwrap();
    cfg.validate().unwrap();
    cfg
}

fn channel(api: &str, extra: &str) -> WhatsAppChannel {
    WhatsAppChannel::from_config(&config(api, extra)).unwrap()
}

const TEMPLATES: &str = r#"
[templates."line.down"]
name = "line_down_v2"
language = "en_GB"
parameters = ["service", "occurred_at | time", "data.ticket"]

[templates."kci.change.pending"]
name = "protected_change"
language = "en"
parameters = ["short"]

[templates."kci.content_free"]
name = "new_message"
language = "en"
"#;

fn line_down() -> crate::channels::Outgoing {
    let mut out = outgoing(
        "whatsapp:+447700900123",
        "Your line L1 went down.",
        "Line L1 is down",
    );
    let mut event = crate::plan::testkit::event("2026-03-22T03:00:00Z");
    event.data = serde_json::from_value(json!({"ticket": "T-4711"})).unwrap();
    out.notification.timezone = "Europe/London".into();
    out.event = Some(event);
    out
}

fn expect_request(req: &crate::channels::testkit::Request, body: serde_json::Value) {
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", format!("/v21.0/{PHONE_ID}/messages").as_str())
    );
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.json(), body);
}

#[tokio::test]
async fn a_type_with_a_template_goes_as_that_template_with_its_parameters() {
    let wa = Provider::start(200, SENT).await;
    let receipt = channel(&wa.url, TEMPLATES)
        .deliver(&line_down())
        .await
        .unwrap();
    assert_eq!(receipt.provider_ref.as_deref(), Some(WAMID));
    assert!(receipt.awaiting);
    assert_eq!(
        receipt.detail.unwrap(),
        format!("whatsapp {WAMID} (template line_down_v2)")
    );
    expect_request(
        &wa.only_request(),
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "447700900123",
            "type": "template",
            "template": {
                "name": "line_down_v2",
                "language": {"code": "en_GB"},
                "components": [{"type": "body", "parameters": [
                    {"type": "text", "text": "L1"},
                    // 03:00 UTC, in London's zone (GMT until 29 March).
                    {"type": "text", "text": "03:00"},
                    {"type": "text", "text": "T-4711"},
                ]}]
            }
        }),
    );
}

#[tokio::test]
async fn kcis_own_notices_and_content_free_ones_use_their_own_templates() {
    let wa = Provider::start(200, SENT).await;
    let ch = channel(&wa.url, TEMPLATES);
    // A protected change's reminder: no event, its text (with the veto
    // link rendered in) as the parameter.
    let mut own = outgoing(
        "whatsapp:+447700900123",
        "ISP: someone asked to stop encrypting your mail. Stop it: https://kci.example/v1/veto/abc",
        "Stop it if it was not you",
    );
    own.notification.type_name = "kci.change.pending".into();
    own.notification.event = None;
    ch.deliver(&own).await.unwrap();
    let req = &wa.requests()[0];
    assert_eq!(
        req.json()["template"],
        json!({"name": "protected_change", "language": {"code": "en"},
               "components": [{"type": "body", "parameters": [{"type": "text",
               "text": "ISP: someone asked to stop encrypting your mail. Stop it: https://kci.example/v1/veto/abc"}]}]})
    );
    // A paranoid account's notice: the event withheld, so the content-free
    // template, without parameters, and nothing of the event.
    let mut withheld = line_down();
    withheld.event = None;
    ch.deliver(&withheld).await.unwrap();
    let req = &wa.requests()[1];
    assert_eq!(
        req.json()["template"],
        json!({"name": "new_message", "language": {"code": "en"}})
    );
    assert!(!String::from_utf8_lossy(&req.body).contains("T-4711"));
}

#[tokio::test]
async fn a_type_without_a_template_goes_as_free_text_cut_to_whatsapps_limit() {
    let wa = Provider::start(200, SENT).await;
    let ch = channel(&wa.url, "");
    ch.deliver(&line_down()).await.unwrap();
    expect_request(
        &wa.requests()[0],
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "447700900123",
            "type": "text",
            "text": {"body": "Your line L1 went down.", "preview_url": false}
        }),
    );
    // Accepted with an answer naming no message: sent (a retry would send
    // it twice), with nothing a report could match.
    let odd = Provider::start(200, r#"{"messaging_product":"whatsapp"}"#).await;
    let r = channel(&odd.url, "").deliver(&line_down()).await.unwrap();
    assert_eq!((r.provider_ref, r.awaiting), (None, false));
    let long = "ü".repeat(MAX_TEXT + 10);
    ch.deliver(&outgoing("whatsapp:+447700900123", &long, "x"))
        .await
        .unwrap();
    assert_eq!(
        wa.requests()[1].json()["text"]["body"].as_str().unwrap(),
        "ü".repeat(MAX_TEXT)
    );
}

#[tokio::test]
async fn free_text_outside_the_window_fails_for_good_saying_to_configure_a_template() {
    let wa = Provider::start(
        400,
        r#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},"fbtrace_id":"AbCdEfGhIjK"}}"#,
    )
    .await;
    let err = channel(&wa.url, "")
        .deliver(&line_down())
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.reason(), "outside_window");
    assert!(
        err.detail().starts_with("HTTP 400 131047: (#131047) Re-engagement message (Message failed to send because more than 24 hours")
            && err.detail().ends_with("configure [channels.whatsapp.templates.\"line.down\"]"),
        "{err}"
    );
    assert!(!format!("{err:?}").contains(TOKEN));
}

#[tokio::test]
async fn a_parameter_that_renders_empty_fails_before_anything_is_sent() {
    let wa = Provider::start(200, SENT).await;
    let extra = "[templates.\"line.down\"]\nname = \"line_down\"\nlanguage = \"en\"\nparameters = [\"data.missing\"]\n";
    let err = channel(&wa.url, extra)
        .deliver(&line_down())
        .await
        .unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(
        err.detail(),
        "[channels.whatsapp.templates.\"line.down\"] parameters[0] (`data.missing`): renders empty for this notice"
    );
    assert!(wa.requests().is_empty());
}

#[tokio::test]
async fn a_rate_limit_paces_with_retry_after() {
    let wa = Provider::answering(
        Answer::new(
            400,
            r#"{"error":{"message":"(#131056) (Business Account, Consumer Account) pair rate limit hit","type":"OAuthException","code":131056,"fbtrace_id":"A1"}}"#,
        )
        .header("Retry-After", "30"),
    )
    .await;
    let err = channel(&wa.url, "")
        .deliver(&line_down())
        .await
        .unwrap_err();
    assert!(err.is_pacing(), "{err:?}");
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(30)));
}

#[test]
fn errors_are_classified_by_whatsapps_code_then_the_status() {
    use std::result::Result::{Err as P, Ok as T};
    // (HTTP status, error.code, transient (and its reason) or permanent reason)
    let rows: &[(u16, Option<i64>, Result<&str, &str>)] = &[
        (400, Some(130429), T("rate_limited")),
        (400, Some(131056), T("rate_limited")),
        (400, Some(80007), T("rate_limited")),
        (400, Some(131047), P("outside_window")),
        (400, Some(131026), P("undeliverable")),
        (401, Some(190), P("token_expired")),
        (500, Some(1), T("provider_error")),
        (503, Some(2), T("provider_error")),
        (500, Some(131000), T("provider_error")),
        (400, Some(131016), T("provider_error")),
        (400, Some(100), P("http_status")),
        (403, Some(10), P("http_status")),
        (404, None, P("http_status")),
        (429, None, T("rate_limited")),
        (502, None, T("http_status")),
        (500, Some(131008), T("http_status")),
        (408, None, T("http_status")),
    ];
    for &(status, code, want) in rows {
        let got = classify(status, code, "line.down", "words");
        match want {
            T(reason) => assert!(
                got.is_transient() && got.reason() == reason,
                "{status} {code:?}: {got:?}"
            ),
            P(reason) => assert!(
                got.is_permanent() && got.reason() == reason,
                "{status} {code:?}: {got:?}"
            ),
        }
        assert!(got.detail().starts_with("words"));
        assert_eq!(
            got.is_pacing(),
            matches!(want, T("rate_limited")),
            "{status} {code:?}"
        );
    }
    assert!(
        classify(401, Some(190), "t", "w")
            .detail()
            .contains("[channels.whatsapp] access_token")
    );
}

#[test]
fn statuses_become_receipts() {
    let status = |json: serde_json::Value| report(&serde_json::from_value::<Status>(json).unwrap());
    assert_eq!(status(json!({"id": WAMID, "status": "sent"})), None);
    for s in ["delivered", "read"] {
        assert_eq!(
            status(json!({"id": WAMID, "status": s})).map(|r| r.status),
            Some(ReceiptStatus::Delivered)
        );
    }
    let failed = status(json!({"id": WAMID, "status": "failed", "recipient_id": "447700900123",
        "errors": [{"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                    "error_data": {"details": "Message Undeliverable."}}]}))
    .unwrap();
    assert_eq!(failed.status, ReceiptStatus::Undelivered);
    assert_eq!(
        failed.detail.as_deref(),
        Some("failed, error 131026: Message undeliverable (Message Undeliverable.)")
    );
    assert_eq!(status(json!({"id": WAMID, "status": "deleted"})), None);
}

#[test]
fn webhook_signatures_per_meta() {
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    // Made with: printf '%s' "$body" | openssl dgst -sha256 -hmac "$APP_SECRET"
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(valid_signature(APP_SECRET, body, &format!("sha256={hex}")));
    assert!(valid_signature(
        APP_SECRET,
        body,
        &format!("sha256={}", hex.to_uppercase())
    ));
    assert!(!valid_signature(APP_SECRET, body, &hex));
    assert!(!valid_signature(
        "another-secret",
        body,
        &format!("sha256={hex}")
    ));
    assert!(!valid_signature(
        APP_SECRET,
        b"{}",
        &format!("sha256={hex}")
    ));
    assert!(!valid_signature(APP_SECRET, body, ""));
    assert!(valid_verify_token("vt-123", "vt-123"));
    assert!(!valid_verify_token("vt-123", "vt-124"));
    assert!(!valid_verify_token("vt-123", ""));
}

#[test]
fn config_mistakes_name_the_key() {
    let base = format!("access_token = \"{TOKEN}\"\n");
    let cases = [
        ("phone_number_id = \"+447700900000\"", "phone_number_id"),
        ("phone_number_id = \"1\"\napp_secret = \"\"", "app_secret"),
        (
            "phone_number_id = \"1\"\n[templates.\"line.down\"]\nname = \"Line Down\"\nlanguage = \"en\"",
            "templates.\"line.down\".name",
        ),
        (
            "phone_number_id = \"1\"\n[templates.\"line.down\"]\nname = \"line_down\"\nlanguage = \"english\"",
            "templates.\"line.down\".language",
        ),
        (
            "phone_number_id = \"1\"\n[templates.\"line.down\"]\nname = \"line_down\"\nlanguage = \"en_US\"\nparameters = [\"service\", \"data.(\"]",
            "templates.\"line.down\".parameters[1]",
        ),
        (
            "phone_number_id = \"1\"\n[templates.\"line.down\"]\nname = \"line_down\"\nlanguage = \"en\"\nparameters = [\"x }}{{ y\"]",
            "templates.\"line.down\".parameters[0]",
        ),
    ];
    for (extra, key) in cases {
        let cfg: WhatsAppConfig = toml::from_str(&format!("{base}{extra}")).unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, key, "{extra}");
    }
    assert!(
        toml::from_str::<WhatsAppConfig>(&format!("{base}phone_number_id = \"1\"\n[templates.t]\nname = \"n\"\nlanguage = \"en\"\nparams = []")).is_err()
    );
    for ok in ["en", "fil", "en_US", "es_419", "zh_HK"] {
        assert!(language_code(ok), "{ok}");
    }
    let cfg: WhatsAppConfig = toml::from_str(&format!("{base}phone_number_id = \"1\"")).unwrap();
    assert_eq!(cfg.api.as_str(), "https://graph.facebook.com/v21.0");
    assert!(!format!("{cfg:?}").contains(TOKEN));
}
