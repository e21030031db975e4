//! `kci import directory` and `kci export directory`, as an operator runs
//! them beside a running hub: a file with good and bad rows, each bad one
//! reported with its line and reason; the same file again changes
//! nothing; the export imported into an empty database gives the same
//! export back, in CSV and in NDJSON; a cell a spreadsheet would run as
//! a formula is exported as text and read back as it was.

use crate::changes::pg_schema;
use crate::common::Kci;
use serde_json::Value;

const FILE: &str = "\
account,account_name,timezone,security_level,contact,contact_name,uri,verified,prefs
A1,Alice Ltd,Europe/London,high,alice,Alice,mailto:alice@example.com,true,
A1,Alice Ltd,Europe/London,high,alice,Alice,https://hooks.example.com/alice,true,\"{\"\"min_priority\"\":\"\"high\"\"}\"
A1,Alice Ltd,Europe/London,high,bob,Bob,,,
A2,Bob's Bikes,Mars/Olympus,,,,,,
A3,Carol,,,carol,,sms:+447700900123,true,
A4,\"=HYPERLINK(\"\"https://evil.example/\"\",\"\"Dan\"\")\",,,dan,,mailto:dan@example.com,,
A 5,,,,,,,,
A1,Alice Ltd,Europe/London,standard,,,,,
";

/// `kci import directory PATH [more…]` on `kci`'s database.
fn import(kci: &Kci, path: &std::path::Path, more: &[&str]) -> (i32, String) {
    let path = path.to_str().unwrap();
    let mut args = vec!["import", "directory", path];
    args.extend(more);
    let (code, _, stderr) = kci.cli(&args);
    (code, stderr)
}

/// `kci export directory --format FORMAT` on `kci`'s database.
fn export(kci: &Kci, format: &str) -> String {
    let (code, stdout, stderr) = kci.cli(&["export", "directory", "--format", format]);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

async fn round_trip(pg: [Option<&str>; 3]) {
    let kci = Kci::start_on(pg[0], None, "", "", "");
    let file = kci.dir.path().join("directory.csv");
    std::fs::write(&file, FILE).unwrap();

    // Each bad row named with its line and reason; the good ones in.
    let (code, stderr) = import(&kci, &file, &[]);
    assert_eq!(code, 1, "{stderr}");
    for want in [
        "line 5: timezone: `Mars/Olympus` is not an IANA time zone name",
        "line 6: uri: no sms channel is configured on this hub",
        "line 8: account: must not contain ' '",
        "line 9: account A1 is at high; lowering that is a protected change",
        "8 rows from",
        "4 created, 0 updated, 0 unchanged, 4 refused",
    ] {
        assert!(stderr.contains(want), "{want} in:\n{stderr}");
    }
    // Again: nothing changes.
    let (code, stderr) = import(&kci, &file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("0 created, 0 updated, 4 unchanged, 4 refused"),
        "{stderr}"
    );
    // The report in a file of its own.
    let report = kci.dir.path().join("report.txt");
    let (_, stderr) = import(&kci, &file, &["--report", report.to_str().unwrap()]);
    let written = std::fs::read_to_string(&report).unwrap();
    assert!(written.starts_with("line 5: timezone"), "{written}");
    assert!(!stderr.contains("line 5"), "{stderr}");

    // The hub serves what was imported.
    let token = kci.token(&["directory:read"]);
    let (status, a1) = kci.call("GET", "/v1/accounts/A1", Some(&token), None).await;
    assert_eq!(status, 200, "{a1}");
    assert_eq!(a1["security_level"], "high");
    let alice = &a1["contacts"][0];
    assert_eq!(alice["id"], "alice");
    let verified: Vec<&Value> = alice["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["verified"])
        .collect();
    assert_eq!(verified, [&Value::Bool(true), &Value::Bool(true)]);
    let entries = kci.cli(&["audit", "verify"]);
    assert_eq!(entries.0, 0, "{}", entries.2);

    // The export: a row per destination, per contact without any.
    let csv = export(&kci, "csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "account,account_name,timezone,security_level,paranoid,defaults,prefixes,contact,contact_name,contact_timezone,contact_prefs,destination,uri,verified,prefs"
    );
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[3].starts_with("A1,Alice Ltd,Europe/London,high,false,,,bob,Bob,,,,,,"),
        "{csv}"
    );
    assert!(!csv.contains("secret") && !csv.contains("code"), "{csv}");
    // A name that a spreadsheet would run is written as text.
    assert!(
        csv.contains("\nA4,\"'=HYPERLINK(\"\"https://evil.example/\"\",\"\"Dan\"\")\","),
        "{csv}"
    );

    // Imported into an empty database, it exports the same, CSV or NDJSON.
    for (i, format) in [(1, "csv"), (2, "ndjson")] {
        let text = export(&kci, format);
        let path = kci.dir.path().join(format!("export.{format}"));
        std::fs::write(&path, &text).unwrap();
        let empty = Kci::start_on(pg[i], None, "", "", "");
        let (code, stderr) = import(&empty, &path, &[]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("4 created, 0 updated, 0 unchanged, 0 refused"),
            "{stderr}"
        );
        assert_eq!(export(&empty, "csv"), csv, "{format}");
        // And into the database it came from: nothing to change.
        let (code, stderr) = import(&kci, &path, &[]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("0 created, 0 updated, 4 unchanged, 0 refused"),
            "{stderr}"
        );
    }

    // A file that cannot be used: exit 2, naming why.
    let (code, stderr) = import(&kci, &kci.dir.path().join("missing.csv"), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    let bad = kci.dir.path().join("bad.csv");
    std::fs::write(&bad, "account,colour\nA1,red\n").unwrap();
    let (code, stderr) = import(&kci, &bad, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 1: unknown column `colour`"),
        "{stderr}"
    );
    let (code, stderr) = import(&kci, &kci.dir.path().join("directory.txt"), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--format"), "{stderr}");
}

#[tokio::test]
async fn a_directory_file_is_imported_row_by_row_and_exported_back() {
    round_trip([None, None, None]).await;
}

#[tokio::test]
async fn a_directory_file_is_imported_row_by_row_and_exported_back_on_postgres() {
    let (one, s1) = pg_schema().await;
    let (two, s2) = pg_schema().await;
    let (three, s3) = pg_schema().await;
    round_trip([Some(&one), Some(&two), Some(&three)]).await;
    for s in [s1, s2, s3] {
        s.drop_now().await;
    }
}
