//! Letters end to end: an account with a postal address and a
//! `postal:account` destination, a real `kci serve` spooling letters to a
//! directory, and Debian's poppler-utils reading the PDF that appears, as
//! a print room would. A type that asks goes by letter; a routine one
//! does not; a new address on a `high` account waits as a change.

use crate::common::*;
use serde_json::{Value, json};

/// The letter channel spooling to `spool`, and a type that asks for
/// letters (`letter = true`).
fn config(spool: &std::path::Path) -> String {
    format!(
        "[channels.letter]\nspool = \"{}\"\ncountry = \"GB\"\nsender_lines = [\"1 Fibre Street\", \"EC1A 1BB London\"]\n",
        spool.display()
    ) + r#"
[types."contract.ended"]
category = "contract"
letter = true
subject = "Your contract {{ service }} has ended"
body = """Dear customer,

your contract {{ service }} ended on {{ data.date }}. Your final bill follows."""
"#
}

fn pdfs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pdf"))
        .collect();
    out.sort();
    out
}

fn pdftotext(pdf: &std::path::Path) -> String {
    let out = std::process::Command::new("pdftotext")
        .args(["-layout"])
        .arg(pdf)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) must be installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_type_that_asks_is_printed_for_the_post_and_a_routine_one_is_not() {
    let spool = tempfile::tempdir().unwrap();
    let kci = Kci::start(None, &config(spool.path()));
    let admin = kci.token(&["directory:admin", "directory:write", "directory:read"]);
    let source = kci.token(&["events:write", "events:read"]);
    let address = json!({
        "name": "Jörg Müller",
        "lines": ["Hauptstraße 5"],
        "postcode": "10115",
        "town": "Berlin",
        "country": "de"
    });

    // A bad address names its field; a good one is kept and shown.
    let bad = json!({"postal_address": {"name": "Jörg Müller", "lines": [""], "town": "Berlin", "country": "DE"}});
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(&bad.to_string()),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("postal_address.lines[0]:"),
        "{v}"
    );
    let body = json!({"postal_address": address}).to_string();
    let (s, v) = kci
        .call("PUT", "/v1/accounts/A1", Some(&admin), Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["postal_address"]["country"], "DE");
    // Absent from a later PUT: kept as stored.
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some("{\"name\": \"Jörg\"}"),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert_eq!(v["postal_address"]["town"], "Berlin", "{v}");

    // `postal:` is `postal:account`, verified by whoever knows the address.
    let (s, _) = kci
        .call(
            "PUT",
            "/v1/accounts/A1/contacts/joerg",
            Some(&admin),
            Some("{}"),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = kci
        .add_destination(&admin, "A1", "joerg", r#"{"uri": "postal:"}"#)
        .await;
    assert_eq!(s, 422, "a postal destination takes no code: {v}");
    let (s, v) = kci
        .add_destination(
            &admin,
            "A1",
            "joerg",
            r#"{"uri": "postal:", "verified": true}"#,
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, view) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert_eq!(
        view["contacts"][0]["destinations"][0]["uri"],
        "postal:account"
    );
    // An account without an address gets no postal destination.
    let (s, _) = kci
        .call("PUT", "/v1/accounts/A2", Some(&admin), Some("{}"))
        .await;
    assert_eq!(s, 201);
    kci.call(
        "PUT",
        "/v1/accounts/A2/contacts/c",
        Some(&admin),
        Some("{}"),
    )
    .await;
    let (s, v) = kci
        .add_destination(
            &admin,
            "A2",
            "c",
            r#"{"uri": "postal:account", "verified": true}"#,
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no postal address"),
        "{v}"
    );

    // A routine notice: no letter, and the record says why.
    let routine = json!({
        "id": "e-routine", "type": "line.down", "account": "A1", "service": "L1",
        "data": {"ticket": "T-1"}
    });
    kci.post_event(&source, &routine.to_string()).await;
    let (s, v) = kci
        .call("GET", "/v1/events/e-routine", Some(&source), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let n = &v["notifications"][0];
    assert_eq!(
        (
            n["destination"].as_str(),
            n["state"].as_str(),
            n["reason"].as_str()
        ),
        (
            Some("postal:account"),
            Some("suppressed"),
            Some("not_by_letter")
        ),
        "{v}"
    );

    // A type that asks: a PDF appears, and its text is the letter.
    let ended = json!({
        "id": "e-ended", "type": "contract.ended", "account": "A1", "service": "C-77",
        "data": {"date": "31 March 2026"}
    });
    kci.post_event(&source, &ended.to_string()).await;
    let pdf = eventually(20, "a letter in the spool", || async {
        pdfs(spool.path()).pop()
    })
    .await;
    let text = pdftotext(&pdf);
    for want in [
        "Jörg Müller",
        "Hauptstraße 5",
        "10115 Berlin",
        "Example ISP · 1 Fibre Street · EC1A 1BB London",
        "Your contract C-77 has ended",
        "your contract C-77 ended on 31 March 2026",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(pdf.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["pages"], 1);
    assert_eq!(sidecar["address"]["name"], "Jörg Müller");
    let (_, v) = kci
        .call("GET", "/v1/events/e-ended", Some(&source), None)
        .await;
    let reference = sidecar["reference"].as_str().unwrap();
    assert!(text.contains(reference), "the reference is printed");
    eventually(10, "the letter recorded as sent", || async {
        let (_, v) = kci
            .call("GET", "/v1/events/e-ended", Some(&source), None)
            .await;
        (v["notifications"][0]["state"] == "sent").then_some(())
    })
    .await;
    assert_eq!(v["notifications"][0]["destination"], "postal:account");
    // Only the one letter: the routine notice never reached the spool.
    assert_eq!(pdfs(spool.path()).len(), 1);

    // On a `high` account, a new address redirects the letters: it waits
    // as a protected change, and the old one stays meanwhile.
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(r#"{"security_level": "high"}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let moved = json!({
        "security_level": "high",
        "postal_address": {"name": "Mallory", "lines": ["Elsewhere 1"], "postcode": "99999", "town": "Faraway", "country": "DE"}
    });
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(&moved.to_string()),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["change"]["kind"], "destination.change");
    assert_eq!(v["change"]["postal_address"]["town"], "Faraway");
    assert_eq!(v["account"]["postal_address"]["town"], "Berlin");
    let (_, v) = kci.call("GET", "/v1/accounts/A1", Some(&admin), None).await;
    assert_eq!(v["postal_address"]["town"], "Berlin", "{v}");
    // Removing the address while letters go there: refused.
    let (s, v) = kci
        .call(
            "PUT",
            "/v1/accounts/A1",
            Some(&admin),
            Some(r#"{"security_level": "high", "postal_address": null}"#),
        )
        .await;
    assert_eq!(s, 422, "{v}");
}
