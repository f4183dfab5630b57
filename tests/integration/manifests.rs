//! Manifests: every bad fixture fails `automon validate` with exit 2 and the message in its
//! snapshot; good fixtures and the shipped manifests pass; overrides obey the same rules.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn automon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_automon"))
}

fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/manifests")
        .join(kind)
}

/// The `.yaml` files of a directory, sorted by name.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Each bad fixture's first line is a comment saying what is wrong with it; the snapshot holds
/// the exact stderr of `automon validate FILE` (run in the fixture directory, so the path in the
/// message is the bare file name). Update with `INSTA_UPDATE=always cargo test --test tests
/// manifests` and review the diff.
#[test]
fn bad_manifests_fail_with_their_snapshot_message() {
    let dir = fixtures("bad");
    let files = yaml_files(&dir);
    assert!(files.len() >= 30, "only {} bad fixtures", files.len());
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let what = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# what is wrong`"));
        let out = automon()
            .current_dir(&dir)
            .args(["validate", name])
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
        for line in stderr.lines() {
            assert!(line.starts_with(&format!("{name}:")), "{name}: {line}");
        }
        insta::with_settings!({
            description => what,
            omit_expression => true,
            prepend_module_to_snapshot => false,
            snapshot_path => "snapshots/bad_manifests",
        }, {
            insta::assert_snapshot!(name.trim_end_matches(".yaml"), stderr);
        });
    }
}

#[test]
fn secrets_in_a_manifest_are_rejected_without_echoing_them() {
    for name in ["api_key_in_manifest.yaml", "api_key_env_holds_the_key.yaml"] {
        let out = automon()
            .current_dir(fixtures("bad"))
            .args(["validate", name])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("spec.llm.api_key"), "{stderr}");
        assert!(!stderr.contains("DO-NOT-ECHO"), "the key leaked: {stderr}");
    }
}

#[test]
fn good_fixtures_and_shipped_manifests_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = yaml_files(&fixtures("good"));
    files.extend(yaml_files(&root.join("manifests")));
    for file in files {
        let out = automon().arg("validate").arg(&file).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn shipped_manifests_start_with_the_schema_modeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in yaml_files(&root.join("manifests")) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.lines().next(),
            Some("# yaml-language-server: $schema=../schemas/workerset.schema.json"),
            "{} must start with the yaml-language-server modeline",
            file.display()
        );
    }
}

#[test]
fn schema_subcommand_prints_the_checked_in_schema() {
    let out = automon().arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let on_disk = std::fs::read(root.join("schemas/workerset.schema.json")).unwrap();
    assert!(
        out.stdout == on_disk,
        "schemas/workerset.schema.json is stale; regenerate it with:\n    \
         cargo run -- schema > schemas/workerset.schema.json"
    );
}

const SMALL: &str = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: small}
spec:
  workers: {target: 2, min: 1, max: 2}
  template:
    command: [python3, worker.py, --id, "{id}"]
  progress: {file: "progress{id}.json", checkpoint: /cursor}
  logs: {file: "worker{id}.log"}
"#;

#[test]
fn an_override_that_breaks_a_rule_is_rejected_and_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), SMALL).unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["apply", "m.yaml", "--check-interval", "0s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("spec.interval: duration is zero")
            && stderr.contains("(value set by --check-interval)"),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".automon").exists(),
        "no state may be written"
    );
}

#[test]
fn a_bad_override_value_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), SMALL).unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["apply", "m.yaml", "--threshold", "30"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no unit"), "{stderr}");
    assert!(!dir.path().join(".automon").exists());
}

#[test]
fn dry_run_and_diff_print_the_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), SMALL).unwrap();
    let args = [
        "m.yaml",
        "--check-interval",
        "5s",
        "--threshold",
        "30m",
        "--llm-enabled",
    ];
    for cmd in [vec!["apply", "--dry-run"], vec!["diff"]] {
        let out = automon()
            .current_dir(dir.path())
            .args(cmd.iter().chain(args.iter()))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{cmd:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "override: interval 1m → 5s (--check-interval)",
            "override: stuck_after 5m → 30m (--threshold)",
            "override: discovery_grace 20m → 30m (raised to match --threshold",
            "override: llm.enabled false → true (--llm-enabled)",
        ] {
            assert!(
                stdout.contains(line),
                "{cmd:?}: missing {line:?} in\n{stdout}"
            );
        }
    }
}
