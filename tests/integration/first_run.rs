//! A fresh clone, before anything ran: `diff`, `apply --dry-run` and `get` on the demo manifest
//! say what the first `apply` would do (setup first, then the starts) and write nothing.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The demo manifest and the example scripts it runs, laid out as in the repository.
fn fresh_clone() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    std::fs::copy(
        repo.join("manifests/migration.yaml"),
        dir.path().join("manifests/migration.yaml"),
    )
    .unwrap();
    let examples = dir.path().join("examples/calibre-migration");
    std::fs::create_dir_all(&examples).unwrap();
    for script in ["generate_library.py", "migrate_worker.py"] {
        std::fs::copy(
            repo.join("examples/calibre-migration").join(script),
            examples.join(script),
        )
        .unwrap();
    }
    dir
}

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The scaling line names this machine's disk; the rest is the same everywhere.
fn without_disk(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("scaling: ") {
                "scaling: [this machine's disk]"
            } else if l.starts_with("note: scaling: ") {
                "note: scaling: [what this machine's disk reads]"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Regression: on a fresh clone `diff`, `apply --dry-run` and `get` exited 2, because the
/// range's `end_command` reads the library that `setup` creates.
#[test]
fn a_fresh_clone_diff_shows_the_setup_step_and_the_starts_and_writes_nothing() {
    let dir = fresh_clone();
    let before = tree(dir.path());

    let (code, stdout, stderr) = run(dir.path(), &["diff", "manifests/migration.yaml"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        stdout.starts_with(
            "setup would run: python3 examples/calibre-migration/generate_library.py --library demo/library --books 2000 (creates demo/library/metadata.db)\n"
        ),
        "{stdout}"
    );
    let starts = stdout.lines().filter(|l| l.starts_with("  start ")).count();
    assert_eq!(starts, 4, "target 4: {stdout}");
    insta::assert_snapshot!(without_disk(&stdout));

    let (code, json, _) = run(
        dir.path(),
        &["diff", "manifests/migration.yaml", "-o", "json"],
    );
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["setup"]["range_after"], true, "{json}");
    assert_eq!(v["actions"].as_array().map(Vec::len), Some(4), "{json}");

    let (code, stdout, stderr) = run(
        dir.path(),
        &["apply", "manifests/migration.yaml", "--dry-run"],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("setup would run: "), "{stdout}");
    assert!(
        stdout.ends_with("dry run: nothing was changed\n"),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(dir.path(), &["get", "manifests/migration.yaml"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    insta::assert_snapshot!(stderr, @"automon: not started yet: setup has not run (python3 examples/calibre-migration/generate_library.py --library demo/library --books 2000); `automon apply manifests/migration.yaml` runs it, then starts the workers");

    assert_eq!(tree(dir.path()), before, "nothing written");
}

/// Regression: `apply --reset-state --dry-run` planned from the state that `--reset-state`
/// moves aside, so it showed what a plain `apply` would do.
#[test]
fn a_reset_state_dry_run_plans_from_empty_memory_and_moves_nothing() {
    use super::support::{Knobs, Migration};
    let m = Migration::new(&Knobs {
        books: 60,
        ..Knobs::default()
    });
    m.watch_to_completion();
    let state = std::fs::read(m.state_dir().join("state.json")).unwrap();
    let plain = m
        .automon()
        .args(["apply", "workerset.yaml", "--dry-run"])
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.contains("manifest: unchanged since the last apply"),
        "{plain}"
    );
    let reset = m
        .automon()
        .args(["apply", "workerset.yaml", "--dry-run", "--reset-state"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&reset.stdout);
    assert_eq!(reset.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("--reset-state: ") && stdout.contains("would be moved aside (kept)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("manifest: never applied (no state yet)"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(m.state_dir().join("state.json")).unwrap(),
        state,
        "the dry run moved nothing"
    );
}
