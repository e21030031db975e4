//! `kci doctor` (issue 16) on a deliberately broken installation names
//! each fault, and exits 1; once fixed, it exits 0.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn kci(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kci"))
        .args(args)
        .current_dir(dir)
        .env("KCI_LOG", "error")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A self-signed certificate for `name`, valid from `from` to `until`
/// (years), and its key.
fn certificate(name: &str, from: i32, until: i32) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn doctor_names_each_fault_of_a_broken_installation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let smtp = SmtpServer::start(d);
    let closed = free_port();
    let (expired, _) = certificate("kci.isp.example", 2020, 2021);
    let (_, other_key) = certificate("other.example", 2020, 2040);
    std::fs::write(d.join("tls.crt"), &expired).unwrap();
    std::fs::write(d.join("tls.key"), &other_key).unwrap();
    chmod(&d.join("tls.key"), 0o600);
    let config = |smtp_port: u16, tls: bool| {
        let tls = if tls {
            "tls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n"
        } else {
            ""
        };
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{tls}\
             [store]\nurl = \"sqlite://{db}\"\n\
             [email]\nfrom = \"Example ISP <kci@isp.example>\"\n\
             smtp = \"smtp://127.0.0.1:{smtp_port}?tls=none\"\n\
             signing_key = \"op.asc\"\n",
            port = free_port(),
            db = d.join("kci.db").display(),
        )
    };
    std::fs::write(d.join("kci.toml"), config(closed, true)).unwrap();
    let (code, out) = kci(
        d,
        &[
            "keys", "generate", "--config", "kci.toml", "--out", "op.asc",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = kci(d, &["migrate", "--config", "kci.toml"]);
    assert_eq!(code, 0, "{out}");

    // Break it: the operator key and the database readable by everyone,
    // a schema from a newer kci.
    chmod(&d.join("op.asc"), 0o644);
    chmod(&d.join("kci.db"), 0o644);
    let db = rusqlite::Connection::open(d.join("kci.db")).unwrap();
    db.execute(
        "INSERT INTO kci_schema (version, applied_at) VALUES (999, 0)",
        [],
    )
    .unwrap();

    let (code, out) = kci(d, &["doctor", "--config", "kci.toml"]);
    assert_eq!(code, 1, "{out}");
    let fail = |what: &str, says: &str| {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("[FAIL] {what}:")) && l.contains(says)),
            "no [FAIL] {what}: …{says}… in\n{out}"
        );
    };
    fail("email.signing_key", "chmod 600 op.asc");
    fail("store.file", "readable by everyone");
    fail("store.schema", "version 999 is newer");
    fail("server.tls_cert", "kci.isp.example: expired 2021-01-01");
    fail("server.tls_key", "is not the key of server.tls_cert");
    fail("channel.email", &format!("127.0.0.1:{closed}"));
    assert!(
        out.contains("[warn] dns.wkd: openpgpkey.isp.example"),
        "{out}"
    );

    // Fixed: the files closed, the schema as this kci knows it, a
    // certificate in date with its key, the SMTP server up.
    chmod(&d.join("op.asc"), 0o600);
    chmod(&d.join("kci.db"), 0o600);
    db.execute("DELETE FROM kci_schema WHERE version = 999", [])
        .unwrap();
    let (good, good_key) = certificate("kci.isp.example", 2020, 2040);
    std::fs::write(d.join("tls.crt"), good).unwrap();
    std::fs::write(d.join("tls.key"), good_key).unwrap();
    std::fs::write(d.join("kci.toml"), config(smtp.port, true)).unwrap();
    let (code, out) = kci(d, &["doctor", "--config", "kci.toml"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("[FAIL]"), "{out}");
    assert!(
        out.contains("[ok]   server.tls_key: matches server.tls_cert"),
        "{out}"
    );
    assert!(out.contains("[ok]   channel.email: reachable"), "{out}");
}
