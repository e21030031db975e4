//! Proof from a second channel (issue 12) against real `kci serve`
//! processes, a real SMTP server and local stand-ins checked as the
//! providers define them: a split code (a number by mail, one on the
//! phone, the sum entered), a code mailed and texted back from the
//! customer's own mobile number (Twilio's inbound webhook, signed), and a
//! request from the customer's own connection.

use crate::assurance::hub;
use crate::changes::{cooling, customer, hooks_of};
use crate::channels::{fake_twilio, twilio_signature};
use crate::common::*;
use serde_json::{Value, json};

/// A protected change on `acme`: an agent adds a phone (202, pending).
async fn pending_add(kci: &Kci, agent: &str, uri: &str) -> String {
    let body = json!({"uri": uri, "verified": true}).to_string();
    let (s, v) = kci.add_destination(agent, "acme", "alice", &body).await;
    assert_eq!(s, 202, "{v}");
    v["change"]["id"].as_str().unwrap().to_string()
}

/// The ids of acme's destinations, by the start of their URI.
async fn destination(kci: &Kci, token: &str, prefix: &str) -> String {
    let (_, v) = kci
        .call("GET", "/v1/accounts/acme", Some(token), None)
        .await;
    v["contacts"][0]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uri"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("a {prefix} destination in {v}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn post(kci: &Kci, token: &str, path: &str, body: Value) -> (u16, Value) {
    kci.call("POST", path, Some(token), Some(&body.to_string()))
        .await
}

/// The number after `marker` in the newest text that has it.
fn number_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    let n: String = text[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    (!n.is_empty()).then_some(n)
}

/// At `high` one channel proves nothing, two do: a split code's halves go
/// to Alice's mailbox and her phone; whoever holds only one of them
/// cannot give the sum. A wrong sum is counted; the right one applies
/// the change at once, and the change shows the factor.
#[tokio::test]
async fn a_split_code_across_mail_and_phone_proves_a_change_at_high() {
    let phone = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let kci = hub(None, dir.path(), &smtp, &cooling(3600));
    let admin = customer(&kci, "high", &phone).await;
    let writer = kci.token(&["keys:write"]);
    let id = pending_add(&kci, &admin, "https://hooks.example.net/new").await;
    let mail = destination(&kci, &admin, "mailto:").await;
    let hook = destination(&kci, &admin, "http").await;
    let code = format!("/v1/changes/{id}/code");
    // One code to one channel: not at high.
    let (s, v) = post(&kci, &writer, &code, json!({"destination": hook})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("code_not_allowed")),
        "{v}"
    );
    // Both halves through the mailbox: refused.
    let (s, v) = post(
        &kci,
        &writer,
        &code,
        json!({"destination": mail, "proof": "split", "second": mail}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("not_a_destination")),
        "{v}"
    );
    let (s, v) = post(
        &kci,
        &writer,
        &code,
        json!({"destination": mail, "proof": "split", "second": hook}),
    )
    .await;
    assert_eq!(s, 202, "{v}");

    let first = eventually(15, "the first half by mail", || async {
        smtp.mails()
            .iter()
            .find_map(|m| number_after(&crate::secure_mail::unqp(m), "enter the sum:"))
    })
    .await;
    let second = eventually(15, "the second half on the phone", || async {
        hooks_of(&phone, "kci.change.code")
            .iter()
            .find_map(|h| number_after(h["data"]["short"].as_str()?, "enter the sum:"))
    })
    .await;
    let sum: u32 = first.parse::<u32>().unwrap() + second.parse::<u32>().unwrap();
    let proof = format!("/v1/changes/{id}/proof");
    // Either half alone is not the sum.
    let (s, v) = post(&kci, &writer, &proof, json!({"code": first})).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("wrong_code")), "{v}");
    let (s, v) = post(&kci, &writer, &proof, json!({"code": sum.to_string()})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["change"]["state"], "applied", "{v}");
    assert_eq!(
        v["change"]["factors"],
        json!([format!("split_code:{mail}+{hook}")]),
        "{v}"
    );
    // Used once.
    let (s, _) = post(&kci, &writer, &proof, json!({"code": sum.to_string()})).await;
    assert_eq!(s, 409);
}

/// Alice's phone number is on her account: a code mailed to her, texted
/// back from that number through Twilio's inbound webhook (signed as
/// Twilio signs), proves the change. A text from another number, a typed
/// code and a forged signature prove nothing.
#[tokio::test]
async fn a_code_texted_back_from_her_own_number_proves_a_change() {
    const TOKEN: &str = "f00dcafe0123456789abcdef01234567";
    let (api, _) = fake_twilio().await;
    let public = "https://kci.isp.example/";
    let phone = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let extra = format!(
        "{}[channels.sms.twilio]\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\nauth_token = \"{TOKEN}\"\n\
         from = \"+447700900000\"\napi = \"{api}\"\nstatus_callback = \"{public}\"\n",
        cooling(3600)
    );
    let kci = hub(
        None,
        dir.path(),
        &smtp,
        &extra.replace(
            "[changes]\n",
            "[changes]\nreply_number = \"+447700900000\"\n",
        ),
    );
    let admin = customer(&kci, "standard", &phone).await;
    let (s, v) = kci
        .add_destination(
            &admin,
            "acme",
            "alice",
            &json!({"uri": "sms:+447700900123", "verified": true}).to_string(),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let body = json!({"name": "Acme", "security_level": "high"}).to_string();
    let (s, v) = kci
        .call("PUT", "/v1/accounts/acme", Some(&admin), Some(&body))
        .await;
    assert_eq!(s, 200, "{v}");
    let writer = kci.token(&["keys:write"]);
    let id = pending_add(&kci, &admin, "https://hooks.example.net/new").await;
    let mail = destination(&kci, &admin, "mailto:").await;
    let (s, v) = post(
        &kci,
        &writer,
        &format!("/v1/changes/{id}/code"),
        json!({"destination": mail, "proof": "reply"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let code = eventually(15, "the code by mail", || async {
        smtp.mails().iter().find_map(|m| {
            let m = crate::secure_mail::unqp(m);
            m.contains("+447700900000")
                .then(|| number_after(&m, ", text "))
                .flatten()
        })
    })
    .await;
    assert_eq!(code.len(), 6, "{code}");
    // Typed in: it must come from her line.
    let (s, v) = post(
        &kci,
        &writer,
        &format!("/v1/changes/{id}/proof"),
        json!({"code": code}),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("wrong_way")), "{v}");

    let url = format!("{public}v1/inbound/sms/twilio");
    let text = |from: &str, signature_token: &str| {
        let params = [
            ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("From", from),
            ("To", "+447700900000"),
            ("Body", code.as_str()),
        ];
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let signature = twilio_signature(signature_token, &url, &params);
        kci.http
            .post(format!("{}/v1/inbound/sms/twilio", kci.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(form)
            .send()
    };
    let state = || async {
        let (_, v) = kci
            .call("GET", &format!("/v1/changes/{id}"), Some(&admin), None)
            .await;
        v
    };
    // Forged: refused. From another number: nothing proven.
    assert_eq!(text("+447700900123", "forged").await.unwrap().status(), 403);
    let r = text("+15550001111", TOKEN).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<Response>"));
    assert_eq!(state().await["state"], "pending");
    // From her own number: proven by two channels, applied at once.
    assert_eq!(text("+447700900123", TOKEN).await.unwrap().status(), 200);
    let v = state().await;
    assert_eq!(v["state"], "applied", "{v}");
    assert_eq!(v["factors"], json!(["own_line:+447700900123"]), "{v}");
}

/// The ISP knows Alice's line: her account's prefixes are set by an admin
/// (not by a `directory:write` token). A lost key's replacement at
/// `standard`, asked from inside them, applies at once; from outside it
/// waits.
#[tokio::test]
async fn a_request_from_her_own_connection_proves_a_change_at_standard() {
    let phone = WebhookReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(dir.path());
    let kci = hub(None, dir.path(), &smtp, &cooling(3600));
    let admin = customer(&kci, "standard", &phone).await;
    let agent = kci.token(&["directory:write"]);
    let body = |prefixes: Value| {
        json!({"name": "Acme", "security_level": "standard", "prefixes": prefixes}).to_string()
    };
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/acme",
            Some(&agent),
            Some(&body(json!(["0.0.0.0/0"]))),
        )
        .await;
    assert_eq!(s, 403, "only directory:admin sets prefixes: {v}");
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/acme",
            Some(&admin),
            Some(&body(json!(["not-a-prefix"]))),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/acme",
            Some(&admin),
            Some(&body(json!(["203.0.113.0/24", "2001:db8::/32"]))),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["prefixes"], json!(["203.0.113.0/24", "2001:db8::/32"]));
    // A later PUT without them keeps them.
    let plain = json!({"name": "Acme", "security_level": "standard"}).to_string();
    let (s, v) = kci
        .call("PUT", "/v1/accounts/acme", Some(&agent), Some(&plain))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["prefixes"], json!(["203.0.113.0/24", "2001:db8::/32"]));

    // Alice lost her key; her new one waits (its holder confirmed it).
    let (_old, old) = crate::assurance::alice_key(&kci, &smtp).await;
    let (_new, new, id) = crate::assurance::lost_key(&kci, &smtp, &admin).await;
    let writer = kci.token(&["keys:write"]);
    let path = format!("/v1/changes/{id}/connection");
    let (s, v) = post(&kci, &writer, &path, json!({"address": "198.51.100.7"})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("not_own_connection")),
        "{v}"
    );
    let (s, v) = post(&kci, &writer, &path, json!({"address": "bogus"})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        crate::assurance::active_key(&kci, &admin).await,
        Some(old),
        "from outside: still waiting"
    );
    let (s, v) = post(&kci, &writer, &path, json!({"address": "203.0.113.7"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["change"]["state"], "applied", "{v}");
    assert_eq!(
        v["change"]["factors"],
        json!(["own_connection:203.0.113.7"])
    );
    assert_eq!(crate::assurance::active_key(&kci, &admin).await, Some(new));
}
