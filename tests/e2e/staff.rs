//! Staff logins (DESIGN.md §9) against a real `kci serve`: enrolment with
//! the code `kci staff enrol` prints, a login with a password and a TOTP
//! code computed by a real authenticator (`oathtool`, Debian) from the
//! secret kci handed out, and what a thief with one factor, a used code
//! or an old enrolment can do (nothing).

use crate::common::*;
use serde_json::{Value, json};

/// The code an authenticator shows for `secret` `offset` seconds from now.
fn totp(secret: &str, offset: i64) -> String {
    let at = chrono::Utc::now().timestamp() + offset;
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "-b", secret, "-N", &format!("@{at}")])
        .output()
        .expect("oathtool (Debian's oathtool package; scripts/test installs it)");
    assert!(out.status.success(), "oathtool: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `kci staff enrol NAME`: the code it prints.
fn enrolment_code(kci: &Kci, name: &str) -> String {
    let (code, out, err) = kci.cli(&["staff", "enrol", name]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("single use"), "{err}");
    out.trim().to_string()
}

async fn post(kci: &Kci, path: &str, body: Value) -> (u16, Value) {
    kci.call("POST", path, None, Some(&body.to_string())).await
}

async fn login(kci: &Kci, name: &str, password: &str, code: &str) -> (u16, Value) {
    post(
        kci,
        "/v1/staff/login",
        json!({"name": name, "password": password, "code": code}),
    )
    .await
}

const PASSWORD: &str = "a long staff passphrase";

/// Enrols `name` (added with `role`) and answers their TOTP secret.
async fn enrolled(kci: &Kci, name: &str, role: &str) -> String {
    let (code, _, err) = kci.cli(&["staff", "add", name, "--role", role]);
    assert_eq!(code, 0, "{err}");
    let code = enrolment_code(kci, name);
    let (s, v) = post(
        kci,
        "/v1/staff/enrol",
        json!({"name": name, "code": code, "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["secret"].as_str().unwrap().to_string()
}

/// A staff member is enrolled and logs in; each factor alone, a used
/// code, a used enrolment code and a logged-out or re-enrolled session
/// get nothing; the database holds neither password nor secret; each
/// step is in the audit log.
#[tokio::test]
async fn a_staff_member_logs_in_with_password_and_authenticator_only() {
    // Room for the failures this test makes on purpose.
    let kci = Kci::start(None, "[staff]\nfailed_logins = \"50/1h\"\n");
    let admin = kci.token(&["admin"]);
    let (code, _, err) = kci.cli(&["staff", "add", "jo", "--role", "agent"]);
    assert_eq!(code, 0, "{err}");
    let listed = |kci: &Kci| {
        let (code, out, err) = kci.cli(&["staff", "list"]);
        assert_eq!(code, 0, "{err}");
        out
    };
    assert!(
        listed(&kci).contains("jo\tagent\tenabled\tno login (token only)"),
        "{}",
        listed(&kci)
    );
    let enrol_code = enrolment_code(&kci, "jo");
    assert!(enrol_code.starts_with("kcie_"), "{enrol_code}");
    assert!(
        listed(&kci).contains("\tenrolment code issued, valid until "),
        "{}",
        listed(&kci)
    );
    let enrol =
        |code: &str, password: &str| json!({"name": "jo", "code": code, "password": password});

    // Not the code issued; a weak password; the code of another name.
    let (s, v) = post(
        &kci,
        "/v1/staff/enrol",
        enrol("kcie_AAAAAAAAAAAAAAAA", PASSWORD),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("enrolment_refused")),
        "{v}"
    );
    let (s, v) = post(&kci, "/v1/staff/enrol", enrol(&enrol_code, "short")).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("invalid_field")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().starts_with("password:"),
        "{v}"
    );
    let (s, v) = post(
        &kci,
        "/v1/staff/enrol",
        enrol(&enrol_code, "my name is jo, hello"),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = post(
        &kci,
        "/v1/staff/enrol",
        json!({"name": "ann", "code": enrol_code, "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, 401);
    // No password set by any of those: nobody can log in yet.
    let (s, _) = login(&kci, "jo", PASSWORD, "000000").await;
    assert_eq!(s, 401);

    let (s, v) = post(&kci, "/v1/staff/enrol", enrol(&enrol_code, PASSWORD)).await;
    assert_eq!(s, 200, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    assert_eq!(
        v["otpauth_uri"].as_str().unwrap(),
        format!(
            "otpauth://totp/Example%20ISP:jo?secret={secret}&issuer=Example%20ISP&algorithm=SHA1&digits=6&period=30"
        )
    );
    assert_eq!(
        (v["digits"].as_u64(), v["period"].as_u64()),
        (Some(6), Some(30))
    );
    // The enrolment code is used up.
    let (s, _) = post(
        &kci,
        "/v1/staff/enrol",
        enrol(&enrol_code, "another passphrase!"),
    )
    .await;
    assert_eq!(s, 401);

    // One factor is not enough; a code from another secret is no code.
    let now_code = totp(&secret, 0);
    let (s, v) = login(&kci, "jo", "not the passphrase", &now_code).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("login_refused")),
        "{v}"
    );
    let (s, _) = login(
        &kci,
        "jo",
        PASSWORD,
        &totp("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 0),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = login(&kci, "jo", PASSWORD, &totp(&secret, -300)).await;
    assert_eq!(s, 401, "a code of five minutes ago");
    let (s, _) = login(&kci, "nobody", PASSWORD, &now_code).await;
    assert_eq!(s, 401);
    let (s, v) = login(&kci, "jo", PASSWORD, "1234567").await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = login(&kci, "../jo", PASSWORD, &now_code).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("invalid_field")),
        "{v}"
    );
    let (s, v) = login(&kci, "jo", &"x".repeat(5000), &now_code).await;
    assert_eq!(s, 422, "{v}");

    // Both: a session acting as jo, with an agent's scopes.
    let (s, v) = login(&kci, "jo", PASSWORD, &now_code).await;
    assert_eq!(s, 201, "{v}");
    let session = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["role"], "agent");
    assert!(
        v["scopes"].as_array().unwrap().contains(&json!("calls")),
        "{v}"
    );
    let expires = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let hours = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!((719..=720).contains(&hours), "12 h by default: {hours} min");
    let out = listed(&kci);
    assert!(
        out.contains("\tenrolled ") && out.contains(", first login "),
        "{out}"
    );
    // The session is jo's and says it was made by a login.
    let (_, tokens, _) = kci.cli(&["token", "list"]);
    assert!(
        tokens.lines().any(|l| {
            let cells: Vec<&str> = l.split('\t').collect();
            cells.get(2) == Some(&"jo") && cells.last() == Some(&"session")
        }),
        "{tokens}"
    );
    assert!(
        tokens.lines().next().unwrap().ends_with("\tkind"),
        "{tokens}"
    );
    // The same code again, a replay: refused, even with the password.
    let (s, _) = login(&kci, "jo", PASSWORD, &now_code).await;
    assert_eq!(s, 401, "a code is taken once");

    let (s, v) = kci.call("GET", "/v1/staff/me", Some(&session), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["session"].as_bool()),
        (Some("jo"), Some(true))
    );
    // What an agent may not do.
    let (s, v) = kci
        .call(
            "POST",
            "/v1/events",
            Some(&session),
            Some(r#"{"type":"notice"}"#),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    // A source system's token is nobody.
    let (s, v) = kci.call("GET", "/v1/staff/me", Some(&admin), None).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("staff_only")), "{v}");
    let (s, v) = kci
        .call("POST", "/v1/staff/logout", Some(&admin), None)
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("not_a_session")),
        "{v}"
    );

    // Neither the password nor the secret is in the database.
    let db = rusqlite::Connection::open(kci.db()).unwrap();
    let (hash, sealed): (String, String) = db
        .query_row(
            "SELECT password_hash, totp_secret FROM staff_logins WHERE name = 'jo'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$") && !hash.contains(PASSWORD),
        "{hash}"
    );
    assert!(
        sealed.starts_with("v1.") && !sealed.contains(&secret),
        "{sealed}"
    );
    let sessions: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM tokens WHERE staff = 'jo' AND session",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sessions, 1);
    drop(db);

    // Logged out: the session stops at once.
    let (s, _) = kci
        .call("POST", "/v1/staff/logout", Some(&session), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = kci.call("GET", "/v1/staff/me", Some(&session), None).await;
    assert_eq!(s, 401);

    // Logged in again with the next code; then jo's phone is lost and a
    // new enrolment is issued: that session, the password and the old
    // secret stop working at once.
    let (s, v) = login(&kci, "jo", PASSWORD, &totp(&secret, 30)).await;
    assert_eq!(s, 201, "{v}");
    let second = v["token"].as_str().unwrap().to_string();
    let again = enrolment_code(&kci, "jo");
    assert_ne!(again, enrol_code);
    let (s, _) = kci.call("GET", "/v1/staff/me", Some(&second), None).await;
    assert_eq!(s, 401, "a new enrolment ends the sessions");
    let (s, _) = login(&kci, "jo", PASSWORD, &totp(&secret, 60)).await;
    assert_eq!(s, 401, "the old password and secret no longer log in");
    let (s, _) = login(&kci, "jo", PASSWORD, &totp(&secret, 0)).await;
    assert_eq!(s, 401);
    let (s, v) = post(
        &kci,
        "/v1/staff/enrol",
        enrol(&again, "a new passphrase here"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let new_secret = v["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    // A new secret starts its own count of steps.
    let (s, v) = login(&kci, "jo", "a new passphrase here", &totp(&new_secret, 0)).await;
    assert_eq!(s, 201, "{v}");

    // Disabled: no login, and the session ends.
    let third = v["token"].as_str().unwrap().to_string();
    let (code, _, err) = kci.cli(&["staff", "disable", "jo"]);
    assert_eq!(code, 0, "{err}");
    let (s, _) = kci.call("GET", "/v1/staff/me", Some(&third), None).await;
    assert_eq!(s, 401);

    // The audit log tells each step, and why the refusals were refused.
    let (s, v) = kci
        .call("GET", "/v1/audit?limit=1000", Some(&admin), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let seen: Vec<(String, String, String)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("staff."))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        ("staff.enrolment_issued", "ok", ""),
        ("staff.enrol", "refused", "wrong_enrolment_code"),
        ("staff.enrolled", "ok", ""),
        ("staff.enrol", "refused", "no_enrolment"),
        ("staff.login", "refused", "wrong_password"),
        ("staff.login", "refused", "wrong_code"),
        ("staff.login", "refused", "unknown"),
        ("staff.logout", "ok", ""),
    ] {
        assert!(
            seen.iter()
                .any(|(a, o, d)| a == want.0 && o == want.1 && d.starts_with(want.2)),
            "{want:?} in {seen:?}"
        );
    }
    assert_eq!(
        seen.iter()
            .filter(|(a, o, _)| a == "staff.login" && o == "ok")
            .count(),
        3
    );
}

/// With `[staff] second_factor = "required"`, a staff token made by the
/// command line is refused — also one made before the setting — and only
/// a login's works; failed logins are counted out per name.
#[tokio::test]
async fn a_required_second_factor_refuses_staff_tokens_without_a_login() {
    let mut kci = Kci::start(None, "");
    let secret = enrolled(&kci, "max", "approver").await;
    let old = kci.token_as(Some("max"), &[]);
    let (s, _) = kci.call("GET", "/v1/staff/me", Some(&old), None).await;
    assert_eq!(s, 200, "optional by default");
    let source = kci.token(&["events:write"]);
    let metrics = kci.token(&["metrics:read"]);

    kci.kill();
    let mut text = std::fs::read_to_string(&kci.config).unwrap();
    text.push_str("\n[staff]\nsecond_factor = \"required\"\nfailed_logins = \"3/1h\"\n");
    std::fs::write(&kci.config, text).unwrap();
    kci.spawn();

    let (s, v) = kci.call("GET", "/v1/staff/me", Some(&old), None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    let (code, _, err) = kci.cli(&["token", "create", "--staff", "max", "--name", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("second_factor"), "{err}");
    // A source system's token is not a person's: it still works.
    let (s, v) = kci
        .call("GET", "/v1/events/nothing-here", Some(&source), None)
        .await;
    assert_ne!(s, 401, "{v}");

    let (s, v) = login(&kci, "max", PASSWORD, &totp(&secret, 0)).await;
    assert_eq!(s, 201, "{v}");
    let session = v["token"].as_str().unwrap().to_string();
    let (s, v) = kci.call("GET", "/v1/staff/me", Some(&session), None).await;
    assert_eq!((s, v["role"].as_str()), (200, Some("approver")), "{v}");

    // Three failures, then even the right password and code wait.
    for _ in 0..3 {
        let (s, _) = login(&kci, "max", "a wrong passphrase", &totp(&secret, 30)).await;
        assert_eq!(s, 401);
    }
    let (s, v) = login(&kci, "max", PASSWORD, &totp(&secret, 30)).await;
    assert_eq!((s, v["error"].as_str()), (429, Some("rate_limited")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("staff member"),
        "{v}"
    );
    // The monitoring sees it: someone is trying a staff member's password.
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", kci.base))
        .bearer_auth(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("kci_limited_total")
            && l.contains("what=\"staff_logins\"")
            && l.contains("by=\"name\"")
            && l.ends_with(" 1")),
        "{text}"
    );
}
