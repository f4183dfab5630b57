//! Bad input: clear one-line errors naming the file (and line), exit code 2, nothing started.

use assert_cmd::Command;

fn automon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_automon"))
}

#[test]
fn missing_manifest_names_the_file_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["apply", "nope.yaml", "--watch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nope.yaml: cannot read manifest"),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".automon").exists(),
        "no state may be written"
    );
}

#[test]
fn unparsable_manifest_gives_file_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        "apiVersion: automon/v1\nkind: WorkerSet\nspec: [unclosed\n",
    )
    .unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["apply", "m.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("automon: m.yaml:"), "{stderr}");
    let loc: Vec<&str> = stderr["automon: m.yaml:".len()..].splitn(3, ':').collect();
    assert!(
        loc[0].parse::<u32>().is_ok() && loc[1].parse::<u32>().is_ok(),
        "expected LINE:COL in {stderr}"
    );
    assert!(!dir.path().join(".automon").exists());
}

#[test]
fn unknown_field_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {name: x}\nspec:\n  templte: {}\n";
    std::fs::write(dir.path().join("m.yaml"), text).unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["validate", "m.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("m.yaml:5:"), "{stderr}");
    assert!(stderr.contains("templte"), "{stderr}");
}

#[test]
fn semantic_errors_are_all_reported_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: x}
spec:
  workers: {target: 9, min: 1, max: 8}
  template:
    command: [python3, w.py, "{nope}"]
  progress: {file: "p{id}.json", checkpoint: last}
  logs: {file: "w{id}.log"}
"#;
    std::fs::write(dir.path().join("m.yaml"), text).unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["apply", "m.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("m.yaml:5:3: spec.workers: min 1 ≤ target 9 ≤ max 8 does not hold"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown placeholder {nope}"), "{stderr}");
    assert!(
        stderr.contains("m.yaml:8:") && stderr.contains("invalid JSON pointer \"last\""),
        "{stderr}"
    );
}
