//! Judgment on messy real inputs (issue 14): torn progress files with and without memory, a
//! program that does not exist, a progress file that never appears.

use std::process::Output;

use super::support::{Cleanup, Knobs, Migration, PATIENCE, resume_points};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Regression (issue 14.1): with no remembered checkpoint (here: a first `apply`), a torn
/// progress file was taken as "no checkpoint" and the worker started from its shard start,
/// overwriting the file. Now the worker is held with an alert naming the file and the parse
/// error, and starts from the checkpoint in the file once it parses.
#[test]
fn a_torn_progress_file_without_memory_holds_the_worker_until_it_parses() {
    let m = Migration::new(&Knobs {
        upload_delay: "0.5",
        ..Knobs::default()
    });
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: m.state_dir(),
    };
    let progress = m.path().join("progress/migration_progress_worker0.json");
    let torn = "{\"worker_id\": 0, \"last_processed_book_id\": 1";
    std::fs::write(&progress, torn).expect("write torn file");
    let out = m
        .automon()
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events = m.events();
    let alert = events
        .lines()
        .find(|l| l.contains("ALERT: worker 0: progress file"))
        .unwrap_or_else(|| panic!("no alert:\n{events}"));
    assert!(
        alert.contains(&progress.display().to_string()) && alert.contains("cannot be parsed ("),
        "{alert}"
    );
    assert!(
        resume_points(&events, 0).is_empty(),
        "worker 0 was started:\n{events}"
    );
    assert_eq!(
        std::fs::read_to_string(&progress).expect("still there"),
        torn,
        "nobody overwrote the file"
    );
    // The file parses now (the writer finished): the next pass starts worker 0 from it.
    let (start, _) = m.shard(0);
    let checkpoint = start + 5;
    std::fs::write(
        &progress,
        format!("{{\"worker_id\": 0, \"last_processed_book_id\": {checkpoint}}}"),
    )
    .expect("write good file");
    // One more slot (four workers run): the next pass has room for worker 0.
    let manifest = m.path().join("workerset.yaml");
    let yaml = std::fs::read_to_string(&manifest).expect("read manifest");
    std::fs::write(&manifest, yaml.replace("target: 4,", "target: 5,")).expect("edit");
    let out = m
        .automon()
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events = m.events();
    assert_eq!(
        resume_points(&events, 0),
        vec![checkpoint],
        "started once, from the checkpoint in the file:\n{events}"
    );
    assert!(
        events.contains("worker 0: progress file") && events.contains("readable again"),
        "{events}"
    );
}

/// A worker that rewrites its progress file in place (truncate, half, pause, rest): reads
/// catch it torn now and then.
const NON_ATOMIC_WORKER: &str = r#"
import json, sys, time
wid, start, end, resume = (int(a) for a in sys.argv[1:5])
path = f"progress/p{wid}.json"
c = max(resume, start - 1)
while c < end - 1:
    c += 1
    text = json.dumps({"c": c, "pad": "x" * 4000})
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        time.sleep(0.01)
        f.write(text[len(text) // 2 :])
    print(f"Processed batch up to {c}", flush=True)
    time.sleep(0.02)
"#;

/// Regression (issue 14.1): with a remembered checkpoint, a healthy worker whose writer is not
/// atomic produced an "unreadable"/"readable again" event pair every few seconds. Torn reads
/// are re-read within the pass, and only a persistent problem is reported.
#[test]
fn a_non_atomic_progress_writer_with_memory_completes_without_unreadable_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("worker.py"), NON_ATOMIC_WORKER).expect("write worker");
    std::fs::create_dir_all(dir.path().join("progress")).expect("mkdir");
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: torn}
spec:
  interval: 1s
  workers: {target: 2, min: 1, max: 2}
  work: {range: {start: 1, end: 401}, shards: 2}
  template: {command: [python3, worker.py, "{id}", "{range_start}", "{range_end}", "{checkpoint}"]}
  progress: {file: "progress/p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log", activity_patterns: ["Processed batch"]}
  health: {stuck_after: 60s, discovery_grace: 120s}
"#,
    )
    .expect("write manifest");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["apply", "m.yaml", "--watch"])
        .timeout(PATIENCE)
        .output()
        .expect("run automon");
    let events =
        std::fs::read_to_string(dir.path().join(".automon/events.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{}\n{events}", text(&out));
    assert!(
        !events.contains("unreadable") && !events.contains("readable again"),
        "{events}"
    );
    for id in 0..2 {
        assert_eq!(
            events.matches(&format!("worker {id}: started pid")).count(),
            1,
            "worker {id} ran once:\n{events}"
        );
    }
}

/// Regression (issue 14.5): a template whose program does not exist (`python4`) passed
/// `validate` and was retried forever, never Failed; on Ctrl-C automon said workers keep
/// running when none had started.
#[test]
fn a_program_that_does_not_exist_is_warned_about_and_the_worker_fails_after_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: missing}
spec:
  interval: 1s
  workers: {target: 1, min: 1, max: 1}
  work: {range: {start: 1, end: 11}, shards: 1}
  template: {command: [automon-test-no-such-program-4, "{id}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
  restart: {backoff_initial: 1s, backoff_max: 2s}
"#,
    )
    .expect("write manifest");
    let automon = || {
        let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"));
        c.current_dir(dir.path()).timeout(PATIENCE);
        c
    };
    let out = automon()
        .args(["validate", "m.yaml"])
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(0), "a warning, not an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "m.yaml: warning: spec.template.command[0]: program \"automon-test-no-such-program-4\" not found on PATH"
        ),
        "{stderr}"
    );
    // The loop: three failed starts (ENOENT), then Failed; nothing can move: exit 3.
    let out = automon()
        .args(["apply", "m.yaml", "--watch"])
        .output()
        .expect("apply");
    let events =
        std::fs::read_to_string(dir.path().join(".automon/events.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(3), "{}\n{events}", text(&out));
    assert_eq!(
        events.matches("worker 0: could not start:").count(),
        2,
        "{events}"
    );
    assert!(
        events.contains("ALERT: worker 0: could not start 3 times in a row: ")
            && events.contains("No such file or directory"),
        "{events}"
    );
    let out = automon()
        .args(["get", "m.yaml", "-o", "json"])
        .output()
        .expect("get");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["workers"][0]["phase"], "Failed", "{v}");
    assert!(
        v["workers"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No such file or directory")),
        "{v}"
    );
}

/// Regression (issue 14.6): a mistyped `progress.file` made the worker redo its shard forever
/// and never named the path automon looked for.
#[test]
fn a_progress_file_that_never_appears_is_named_and_the_worker_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The worker writes `progress/p0.json`; the manifest names `progress/p{id}.jsn`.
    std::fs::create_dir_all(dir.path().join("progress")).expect("mkdir");
    std::fs::write(
        dir.path().join("worker.py"),
        "import json, sys\njson.dump({'c': 10}, open('progress/p' + sys.argv[1] + '.json', 'w'))\nprint('Processed batch up to 10', flush=True)\n",
    )
    .expect("write worker");
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: typo}
spec:
  interval: 1s
  workers: {target: 1, min: 1, max: 1}
  work: {range: {start: 1, end: 11}, shards: 1}
  template: {command: [python3, worker.py, "{id}"]}
  progress: {file: "progress/p{id}.jsn", checkpoint: /c}
  logs: {file: "w{id}.log", activity_patterns: ["Processed batch"]}
  restart: {backoff_initial: 1s, backoff_max: 2s}
"#,
    )
    .expect("write manifest");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["apply", "m.yaml", "--watch"])
        .timeout(PATIENCE)
        .output()
        .expect("apply");
    let events =
        std::fs::read_to_string(dir.path().join(".automon/events.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(3), "{}\n{events}", text(&out));
    let looked_for = dir.path().join("progress/p0.jsn");
    let named = format!("progress file {} never appeared", looked_for.display());
    assert_eq!(
        events.matches("worker 0: started pid").count(),
        2,
        "run twice, then held:\n{events}"
    );
    assert!(
        events.contains(&format!(
            "ALERT: worker 0 exited with status 0, but its {named}"
        )),
        "{events}"
    );
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["get", "m.yaml", "-o", "json"])
        .timeout(PATIENCE)
        .output()
        .expect("get");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["workers"][0]["phase"], "Paused", "{v}");
    assert!(
        v["workers"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&named)),
        "{v}"
    );
}

/// A manifest `m.yaml` in a fresh directory, and a command runner there.
fn scratch(manifest: &str) -> (tempfile::TempDir, impl Fn() -> assert_cmd::Command + use<>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("m.yaml"), manifest).expect("write manifest");
    let path = dir.path().to_path_buf();
    let automon = move || {
        let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"));
        c.current_dir(&path).timeout(PATIENCE);
        c
    };
    (dir, automon)
}

/// Regression (fresh-clone test): a command whose program is missing behind `env` starts,
/// exits 127 at once, and was retried at `backoff_max` forever, never Failed. It fails after
/// the start limit, the alert naming the command and its log.
#[test]
fn a_command_whose_program_is_missing_behind_env_fails_after_the_start_limit_instead_of_retrying_forever()
 {
    let (dir, automon) = scratch(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: missing-behind-env}
spec:
  interval: 1s
  workers: {target: 1, min: 1, max: 1}
  work: {range: {start: 1, end: 11}, shards: 1}
  template: {command: [/usr/bin/env, automon-test-no-such-program-5, "{id}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
  restart: {backoff_initial: 1s, backoff_max: 2s}
"#,
    );
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: dir.path().join(".automon"),
    };
    let out = automon()
        .args(["apply", "m.yaml", "--watch"])
        .output()
        .expect("apply");
    let events =
        std::fs::read_to_string(dir.path().join(".automon/events.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(3), "{}\n{events}", text(&out));
    assert_eq!(
        events.matches("worker 0: started pid").count(),
        3,
        "three starts, then Failed:\n{events}"
    );
    let alert = events
        .lines()
        .find(|l| l.contains("ALERT: worker 0: exited with status 127 (command not found) 3 times in a row without progress"))
        .unwrap_or_else(|| panic!("no alert:\n{events}"));
    assert!(
        alert.contains("/usr/bin/env automon-test-no-such-program-5")
            && alert.contains(&dir.path().join("w0.log").display().to_string()),
        "{alert}"
    );
    let log = std::fs::read_to_string(dir.path().join("w0.log")).unwrap_or_default();
    assert!(
        log.contains("automon-test-no-such-program-5"),
        "the log it points at names the program: {log}"
    );
}

/// Regression (issue 14.2, 14.6): with no loop running, `get` printed "disk utilisation
/// unknown" (one diskstats reading has no interval), and a running worker whose progress file
/// is missing showed a row with no checkpoint and nothing said.
#[test]
fn get_without_a_loop_measures_the_disk_and_names_the_missing_progress_file_of_a_running_worker() {
    let (dir, automon) = scratch(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: no-progress-file}
spec:
  workers: {target: 1, min: 1, max: 1}
  work: {range: {start: 1, end: 11}, shards: 1}
  template: {command: [sleep, "600"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#,
    );
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: dir.path().join(".automon"),
    };
    let out = automon().args(["apply", "m.yaml"]).output().expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = automon().args(["get", "m.yaml"]).output().expect("get");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let missing = format!(
        "runs, but its progress file {} is missing",
        dir.path().join("p0.json").display()
    );
    assert!(
        stdout.contains("worker 0 (pid ") && stdout.contains(&missing),
        "{stdout}"
    );
    // A figure, or the reason there is none (a directory on tmpfs has no block device).
    assert!(!stdout.contains("disk utilisation unknown"), "{stdout}");
    assert!(
        stdout.contains("% busy") || stdout.contains("disk utilisation unavailable ("),
        "{stdout}"
    );
    let out = automon()
        .args(["get", "m.yaml", "-o", "json"])
        .output()
        .expect("get");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["workers"][0]["progress_missing"],
        dir.path().join("p0.json").display().to_string(),
        "{v}"
    );
}

/// Regression (fresh-clone test): two manifests with different `metadata.name` in one
/// directory shared `.automon/` silently (the second one's `apply` planned from the first
/// one's workers and checkpoints). It is refused, naming both and the way out.
#[test]
fn a_second_workerset_in_the_same_directory_is_refused_not_mixed_into_the_first_ones_state() {
    let manifest = |name: &str| {
        format!(
            r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: {name}}}
spec:
  workers: {{target: 1, min: 1, max: 1}}
  work: {{range: {{start: 1, end: 11}}, shards: 1}}
  template: {{command: [sleep, "600"]}}
  progress: {{file: "{name}{{id}}.json", checkpoint: /c}}
  logs: {{file: "{name}{{id}}.log"}}
"#
        )
    };
    let (dir, automon) = scratch(&manifest("alpha"));
    std::fs::write(dir.path().join("b.yaml"), manifest("beta")).expect("write b.yaml");
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: dir.path().join(".automon"),
    };
    let out = automon().args(["apply", "m.yaml"]).output().expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = std::fs::read_to_string(dir.path().join(".automon/state.json")).expect("state");
    for args in [
        &["apply", "b.yaml"][..],
        &["diff", "b.yaml"],
        &["get", "b.yaml"],
    ] {
        let out = automon().args(args).output().expect("run");
        let all = text(&out);
        assert!(
            matches!(out.status.code(), Some(c) if c != 0),
            "{args:?}: {all}"
        );
        assert!(
            all.contains("belongs to WorkerSet \"alpha\", not \"beta\"")
                && all.contains("--state-dir DIR"),
            "{args:?}: {all}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".automon/state.json")).expect("state"),
        state,
        "the refused commands changed nothing"
    );
    assert!(
        !dir.path().join("beta0.log").exists(),
        "beta started nothing"
    );
}

/// Issue 15 ("one view"): while a loop runs, `history` comes from it over the control socket
/// and says so; with no loop, from the file, and says that.
#[test]
fn history_comes_from_the_running_loop_and_says_so_and_from_the_file_when_none_runs() {
    let (dir, automon) = scratch(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: history-view}
spec:
  interval: 1s
  workers: {target: 1, min: 1, max: 1}
  template: {command: [sleep, "600"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
  # A silent worker is stuck at once: its restart is fix attempt 1, a history record.
  health: {stuck_after: 1s, discovery_grace: 1s}
"#,
    );
    let events =
        || std::fs::read_to_string(dir.path().join(".automon/events.log")).unwrap_or_default();
    let daemon = std::process::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["apply", "m.yaml", "--watch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the loop");
    let pid = daemon.id();
    let mut cleanup = Cleanup {
        daemon: Some(daemon),
        state_dir: dir.path().join(".automon"),
    };
    super::support::wait_until(
        "worker 0 started",
        || events().contains("worker 0: started pid"),
        events,
    );
    // The pass that applies the fix records it; polled, not assumed.
    let history = || {
        let out = automon()
            .args(["history", "m.yaml"])
            .output()
            .expect("history");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    super::support::wait_until(
        "the fix in the history",
        || history().contains("restart 1/3"),
        history,
    );
    let stdout = history();
    assert!(
        stdout.ends_with(&format!("(from the running loop (pid {pid}))\n")),
        "{stdout}"
    );
    let out = automon()
        .args(["history", "m.yaml", "-o", "json"])
        .output()
        .expect("history json");
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("one JSON array");
    assert!(records.iter().any(|r| r["record"] == "fix"), "{records:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("history: from the running loop"),
        "{}",
        text(&out)
    );
    // The loop is killed (its socket left behind, stale): the file, and the output says so.
    if let Some(d) = cleanup.daemon.as_mut() {
        d.kill().expect("kill the loop");
        d.wait().expect("reap the loop");
    }
    let out = automon()
        .args(["history", "m.yaml"])
        .output()
        .expect("history");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout.contains("restart 1/3"), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "(no loop running: read from {})\n",
            dir.path().join(".automon/auto_fix_history.jsonl").display()
        )),
        "{stdout}"
    );
}

/// Regression (fresh-clone test): `get` said "not started yet: setup has not run" while
/// workers ran (the state recorded none of them). Running workers of this WorkerSet are
/// named instead, whatever the state says.
#[test]
fn get_never_says_not_started_while_workers_of_the_workerset_run_unrecorded() {
    let (dir, automon) = scratch(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: unrecorded}
spec:
  workers: {target: 1, min: 1, max: 1}
  setup: {command: ["true"], creates: never-created}
  work: {range: {start: 1, end: 11}, shards: 1}
  template: {command: [sleep, "600"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#,
    );
    let state_dir = dir.path().join(".automon");
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: state_dir.clone(),
    };
    let out = automon().args(["apply", "m.yaml"]).output().expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pids: Vec<i32> = super::migration::live_workers(&state_dir)
        .into_values()
        .flatten()
        .collect();
    assert_eq!(pids.len(), 1, "one worker runs");
    // The state is lost; the worker runs on. (It is killed at the end by its recorded pid.)
    let kill = scopeguard_kill(pids[0]);
    std::fs::remove_file(state_dir.join("state.json")).expect("remove state");
    let out = automon().args(["get", "m.yaml"]).output().expect("get");
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("not started"), "{all}");
    assert!(
        all.contains(&format!(
            "1 worker process of this WorkerSet runs (worker 0 pid {})",
            pids[0]
        )) && all.contains("`automon apply m.yaml` adopts them"),
        "{all}"
    );
    drop(kill);
}

/// Kills process group `pid` when dropped (also after a failed assertion).
fn scopeguard_kill(pid: i32) -> impl Drop {
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    Kill(pid)
}

/// Regression (new-user trial): a worker started through `sh` that crashed while a helper of
/// its process group lived on (`sh -c 'sleep 1000 & exit 3'`) was stopped "before a restart"
/// and restarted every ~2 s: its exit status was dropped, no failure counted, no crash
/// backoff, the restarts counted as "after being stuck", and the stop logged as "pid N exited
/// after the stop signal". Now each exit is reported as what it was and counted as a crash
/// (at once, then 2 s, then 4 s), the leftovers are stopped as a side step before any
/// replacement, and the final exit 0 with the shard done is a completion.
#[test]
fn a_crashed_sh_worker_whose_helper_lives_on_is_reported_and_backed_off_as_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Runs 1–3 crash with `exit 3`, run 4 completes the shard with `exit 0`; every run leaves
    // a `sleep 1000` in its process group and records its pid.
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: leftovers}
spec:
  interval: 1s
  workers: {target: 1, min: 1, max: 1}
  work: {range: {start: 1, end: 11}, shards: 1}
  template:
    command: [sh, -c, 'n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs; sleep 1000 & echo $! >> leftovers; if [ $n -ge 4 ]; then printf "\173\"c\": 10\175" > p0.json; exit 0; fi; exit 3']
    stop_grace: 5s
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
  restart: {backoff_initial: 2s, backoff_max: 16s}
"#,
    )
    .expect("write manifest");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir.path())
        .args(["apply", "m.yaml", "--watch"])
        .timeout(PATIENCE)
        .output()
        .expect("apply");
    let events =
        std::fs::read_to_string(dir.path().join(".automon/events.log")).unwrap_or_default();
    // Every leftover `sleep` was stopped by automon (a survivor is ended here, and fails the
    // test).
    let leftovers =
        std::fs::read_to_string(dir.path().join("leftovers")).expect("the runs recorded pids");
    let mut survivors = Vec::new();
    for pid in leftovers
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).starts_with("sleep\0") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            survivors.push(pid);
        }
    }
    assert_eq!(out.status.code(), Some(0), "{}\n{events}", text(&out));
    assert!(survivors.is_empty(), "{survivors:?} survived\n{events}");
    assert_eq!(leftovers.lines().count(), 4, "{events}");

    let lines: Vec<&str> = events.lines().collect();
    let find = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no event with {what:?}:\n{events}"))
    };
    // Each exit as what it was, counted as a crash with its backoff.
    let crash = [
        find("worker 0 exited with status 3; restarting from the start"),
        find(
            "worker 0 exited with status 3; restarting from the start of its shard, item 1 in 2s (2 failures in a row)",
        ),
        find(
            "worker 0 exited with status 3; restarting from the start of its shard, item 1 in 4s (3 failures in a row)",
        ),
    ];
    let done = find("worker 0 exited with status 0: shard [1, 11) complete");
    assert_eq!(
        events.matches("still has members; stopping them").count(),
        4,
        "{events}"
    );
    assert_eq!(
        events
            .matches("worker 0: the rest of process group ")
            .count(),
        4,
        "{events}"
    );
    for bad in [
        "before a restart",
        "after the stop",
        "exited after the stop signal\n",
    ] {
        assert!(
            !lines
                .iter()
                .any(|l| l.contains(bad) && !l.contains("the rest of process group")),
            "{bad:?}:\n{events}"
        );
    }
    // The restarts: at once, then only once the backoff is over; each after the old group
    // was confirmed gone.
    let restarts = [
        find("once the rest of its process group is gone (restart 1)"),
        find("backoff of 2s over; restarting from the start of its shard, item 1 (restart 2)"),
        find("backoff of 4s over; restarting from the start of its shard, item 1 (restart 3)"),
    ];
    let group_gone: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("worker 0: the rest of process group "))
        .map(|(i, _)| i)
        .collect();
    for (n, restart) in restarts.iter().enumerate() {
        assert!(
            crash[n] < group_gone[n] && group_gone[n] < *restart,
            "{events}"
        );
    }
    assert!(restarts[2] < done, "{events}");
    // The summary counts crashes, not stops of stuck workers.
    let summary = text(&out);
    assert!(
        summary.contains("3 restarts (3 after a crash, 0 after being stuck)"),
        "{summary}"
    );
}
