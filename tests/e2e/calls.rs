//! Call verification (issue 12, DESIGN.md §8) against a real `kci
//! serve`: a real call verified from both sides, a caller without the
//! customer's code refused, the customer's "are you calling me?".

use crate::changes::{cooling, customer, hooks_of, hub, page};
use crate::common::*;
use serde_json::json;

/// A staff member about to call Alice opens a verification: her phone
/// says who is calling, with her code and a link. She reads her code out
/// and types his; only then is the call verified, on both sides. A code
/// replayed afterwards counts for nothing.
#[tokio::test]
async fn a_real_call_is_verified_from_both_sides() {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling(60));
    let admin = customer(&kci, "standard", &phone).await;
    let (code, _, err) = kci.cli(&["staff", "add", "dan", "--role", "agent"]);
    assert_eq!(code, 0, "{err}");
    let dan = kci.token_as(Some("dan"), &[]);
    let status = || async {
        let (s, v) = kci
            .call(
                "GET",
                "/v1/calls/status?account=acme&contact=alice",
                Some(&dan),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["calling"].as_bool().unwrap()
    };
    // "Are you calling me?" — nobody is.
    assert!(!status().await);
    // Only a person opens a verification.
    let (s, v) = kci
        .call(
            "POST",
            "/v1/calls",
            Some(&admin),
            Some(r#"{"account":"acme","contact":"alice"}"#),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("staff_only")), "{v}");
    let (s, v) = kci
        .call(
            "POST",
            "/v1/calls",
            Some(&dan),
            Some(r#"{"account":"acme","contact":"alice"}"#),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let staff_code = v["staff_code"].as_str().unwrap().to_string();
    assert!(status().await);
    let hook = eventually(10, "the call on the phone", || async {
        hooks_of(&phone, "kci.call.calling").into_iter().next()
    })
    .await;
    let text = hook["data"]["short"].as_str().unwrap().to_string();
    assert!(
        text.contains("dan from Example ISP is calling you now"),
        "{text}"
    );
    let customer_code = text
        .split("your code: ")
        .nth(1)
        .map(|rest| rest[..6].to_string())
        .unwrap_or_else(|| panic!("a code in {text}"));
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/v1/call/"))
        .map(|w| {
            w[w.find("/v1/call/").unwrap()..]
                .trim_end_matches('.')
                .to_string()
        })
        .unwrap_or_else(|| panic!("a link in {text}"));
    // Staff type what Alice reads out.
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/calls/{id}/staff-code"),
            Some(&dan),
            Some(&json!({ "code": customer_code }).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "open");
    // Alice types what staff read out, on the page behind her link.
    let (s, text) = page(&kci, "GET", &link).await;
    assert_eq!(s, 200, "{text}");
    let resp = kci
        .http
        .post(format!("{}{link}", kci.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={staff_code}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("The call is genuine"), "{text}");
    let (_, v) = kci
        .call("GET", &format!("/v1/calls/{id}"), Some(&dan), None)
        .await;
    assert_eq!(v["state"], "verified", "{v}");
    eventually(10, "the phone shows it verified", || async {
        (!hooks_of(&phone, "kci.call.verified").is_empty()).then_some(())
    })
    .await;
    // Replayed after success: refused, nothing changes.
    let token = link.rsplit('/').next().unwrap();
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/calls/{id}/customer-code"),
            None,
            Some(&json!({ "code": staff_code, "token": token }).to_string()),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("call_over")), "{v}");
    assert!(!status().await);
}

/// Someone phones the call centre as Alice, with her name and address
/// but not her phone: the agent opens a verification, cannot get the
/// code, and after three wrong tries it fails — Alice is told to hang up
/// (on any call claiming to be the operator) and an incident is opened.
#[tokio::test]
async fn a_caller_with_the_customers_details_but_no_code_is_refused_and_an_incident_opened() {
    let phone = WebhookReceiver::start().await;
    let (_dir, kci) = hub(None, &cooling(60));
    let admin = customer(&kci, "standard", &phone).await;
    let (code, _, err) = kci.cli(&["staff", "add", "eve", "--role", "agent"]);
    assert_eq!(code, 0, "{err}");
    let eve = kci.token_as(Some("eve"), &[]);
    let (s, v) = kci
        .call(
            "POST",
            "/v1/calls",
            Some(&eve),
            Some(r#"{"account":"acme","contact":"alice"}"#),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    for (i, guess) in ["111111", "222222", "333333"].iter().enumerate() {
        let (s, v) = kci
            .call(
                "POST",
                &format!("/v1/calls/{id}/staff-code"),
                Some(&eve),
                Some(&json!({ "code": guess }).to_string()),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (409, Some("wrong_code")),
            "try {i}: {v}"
        );
    }
    let (_, v) = kci
        .call("GET", &format!("/v1/calls/{id}"), Some(&eve), None)
        .await;
    assert_eq!(v["state"], "failed", "{v}");
    eventually(10, "Alice told to hang up", || async {
        (!hooks_of(&phone, "kci.call.failed").is_empty()).then_some(())
    })
    .await;
    let (_, v) = kci.call("GET", "/v1/incidents", Some(&admin), None).await;
    assert_eq!(v["incidents"][0]["kind"], "call.failed", "{v}");
    // The right code now is no use.
    let (s, v) = kci
        .call(
            "POST",
            &format!("/v1/calls/{id}/staff-code"),
            Some(&eve),
            Some(r#"{"code": "000000"}"#),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("call_over")), "{v}");
}
