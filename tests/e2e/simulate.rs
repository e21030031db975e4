//! `kci simulate` on the scenarios under examples/scenarios: each has an
//! `.expected.jsonl` beside it that the output must match line for line.

use std::path::Path;

#[test]
fn every_example_scenario_matches_its_expected_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/scenarios");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let expected_path = path.with_extension("expected.jsonl");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no {}", path.display(), expected_path.display()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
            .arg("simulate")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        let parse = |s: &str| -> Vec<serde_json::Value> {
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        assert_eq!(parse(&got), parse(&expected), "{}", path.display());
        ran += 1;
    }
    assert!(ran > 0, "no scenarios found");
}

#[test]
fn a_scenario_that_does_not_parse_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "start = \"2026-03-22T02:55:00Z\"\nuntil = \"2026-03-23T00:00:00Z\"\n[[event]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kci"))
        .arg("simulate")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
}
