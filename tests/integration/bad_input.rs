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

/// Regression: `automon status FILE | head -1` panicked with "failed printing to stdout: Broken
/// pipe" (exit 101); every command that prints must treat a closed pipe as the end.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    let m = super::support::Migration::new(&super::support::Knobs {
        books: 20,
        ..Default::default()
    });
    for args in [
        &["status", "workerset.yaml"][..],
        &["history", "workerset.yaml"],
        &["diff", "workerset.yaml"],
        &["schema"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_automon"))
            .current_dir(m.path())
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
    }
}

/// Regression: two `apply` started together on a fresh WorkerSet both ran `setup` (the lock was
/// taken only afterwards), and the second one's setup failed half-way. The second `apply` now
/// hands its manifest to the first over the control socket (queued while setup runs) and never
/// runs setup itself.
#[test]
fn a_second_apply_during_setup_is_handed_to_the_first_and_setup_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: setup-once}
spec:
  workers: {target: 1, min: 1, max: 1}
  setup:
    command: [sh, -c, "echo run >> setup_runs; until [ -e go ]; do sleep 0.1; done; touch made"]
    creates: made
  template: {command: [sleep, "30"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#;
    std::fs::write(dir.path().join("m.yaml"), manifest).unwrap();
    let first = std::process::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["apply", "m.yaml"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + super::support::PATIENCE;
    while !dir.path().join("setup_runs").exists() {
        assert!(std::time::Instant::now() < deadline, "setup never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = automon()
        .current_dir(dir.path())
        .args(["apply", "m.yaml"])
        .output()
        .unwrap();
    // The setup runs until the second apply has been handed over (a gate file, not a sleep: on
    // a loaded machine the second apply may take seconds to get there). Opened before any
    // assertion, so that a failed one leaves no setup waiting.
    std::fs::write(dir.path().join("go"), "").unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("queued"), "{stdout}");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("setup_runs")).unwrap(),
        "run\n",
        "setup ran twice"
    );
    // Clean up the one worker the first apply started.
    kill_recorded_workers(dir.path());
}

/// Kills the process group of every worker `dir/.automon/state.json` records (a test's
/// cleanup).
fn kill_recorded_workers(dir: &std::path::Path) {
    let Ok(state) = std::fs::read_to_string(dir.join(".automon/state.json")) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&state).unwrap();
    let Some(workers) = v["workers"].as_object() else {
        return;
    };
    for w in workers.values() {
        if let Some(pid) = w["process"]["identity"]["pid"].as_i64() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Regression: a `workdir` that does not exist left `.automon/lock` behind (the lock was taken
/// before the workdir was checked), although bad input writes nothing.
#[test]
fn a_bad_workdir_writes_nothing_for_apply_start_or_pause() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: bad-workdir}
spec:
  template: {command: [sleep, "30"], workdir: no/such/dir}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#;
    std::fs::write(dir.path().join("m.yaml"), manifest).unwrap();
    for args in [
        &["apply", "m.yaml"][..],
        &["apply", "m.yaml", "--watch"],
        &["start", "m.yaml"],
        &["pause", "m.yaml", "0"],
        &["diff", "m.yaml"],
        &["get", "m.yaml"],
    ] {
        let out = automon()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("spec.template.workdir:") && stderr.contains("is not a directory"),
            "{args:?}: {stderr}"
        );
        assert!(
            !dir.path().join(".automon").exists(),
            "{args:?} wrote a state directory"
        );
    }
}

/// Regression (fresh-clone trial): `history --worker 8` for a WorkerSet of workers 0–7 printed
/// "no fixes recorded for worker 8" and exited 0. Bad input: exit 2, naming the worker and the
/// ids the WorkerSet has.
#[test]
fn history_for_an_unknown_worker_exits_2_naming_the_valid_range() {
    let m = super::support::Migration::new(&super::support::Knobs {
        books: 20,
        ..Default::default()
    });
    let out = automon()
        .current_dir(m.path())
        .args(["history", "workerset.yaml", "--worker", "8"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--worker 8: no worker 8 (this WorkerSet has workers 0–7)"),
        "{stderr}"
    );
    let out = automon()
        .current_dir(m.path())
        .args(["history", "workerset.yaml", "--worker", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

/// Regression (fresh-clone trial): a worker's log that is a FIFO hung automon at the worker's
/// start, for good — the open of a FIFO for writing waits for a reader, and SIGTERM and Ctrl-C
/// did not end it (the open restarts). A progress file that is a FIFO hung every pass. Now the
/// start fails at once, saying why; the other worker is held, its progress file named; and
/// the pass ends.
#[test]
fn a_fifo_as_a_workers_log_or_progress_file_fails_its_start_and_never_hangs_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: fifo}
spec:
  workers: {target: 2, min: 1, max: 2}
  template: {command: [sleep, "300"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#;
    std::fs::write(dir.path().join("m.yaml"), manifest).unwrap();
    let fifo = nix::sys::stat::Mode::from_bits_truncate(0o600);
    nix::unistd::mkfifo(&dir.path().join("w0.log"), fifo).unwrap();
    nix::unistd::mkfifo(&dir.path().join("p1.json"), fifo).unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["apply", "m.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(run.id() as i32);
    let (done, out) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run.wait_with_output());
    });
    let out = match out.recv_timeout(super::support::PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("the pass never ended");
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Clean up any worker that started.
    kill_recorded_workers(dir.path());
    assert!(
        text.contains("worker 0: could not start")
            && text.contains("w0.log: it is a FIFO or a socket, not a file"),
        "{text}"
    );
    // Its progress file exists but is no file to parse, and no checkpoint is remembered: held,
    // never started from its shard's start.
    assert!(
        text.contains("ALERT: worker 1: progress file")
            && text.contains("(is a FIFO, not a file)")
            && text.contains("holding it"),
        "{text}"
    );
    assert!(text.contains("pass done"), "{text}");
}
