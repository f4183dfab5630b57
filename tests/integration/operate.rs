//! Operating automon: `get`, `history`, `pause`/`resume` against real migrations.

use super::support::{Cleanup, Knobs, Migration, wait_until};

fn automon_out(m: &Migration, args: &[&str]) -> (Option<i32>, String, String) {
    let out = m.automon().args(args).output().expect("run automon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Regression (issue 16): the migration outran the 10 s rate window on a loaded machine and
/// the test saw no rate and no ETA. Now the migration lasts minutes (30 s per shard at full
/// speed) and the test polls `get` until a rate shows, then checks it is sane.
#[test]
fn get_json_shows_phases_percentages_and_a_sane_eta_while_the_migration_runs() {
    let m = Migration::new(&Knobs {
        books: 800,
        upload_delay: "0.3",
        batch_size: 5,
        ..Knobs::default()
    });
    let watch = m
        .automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let watch_pid = i64::from(watch.id());
    let _cleanup = Cleanup {
        daemon: Some(watch),
        state_dir: m.state_dir(),
    };
    let last = std::cell::RefCell::new(String::new());
    let mut seen: Option<serde_json::Value> = None;
    wait_until(
        "a Progressing worker with a rate and an overall ETA",
        || {
            let (code, stdout, stderr) = automon_out(&m, &["get", "workerset.yaml", "-o", "json"]);
            *last.borrow_mut() = format!("{code:?}\n{stdout}\n{stderr}");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) else {
                return false;
            };
            let rated = v["workers"].as_array().is_some_and(|ws| {
                ws.iter().any(|w| {
                    w["phase"] == "Progressing"
                        && w["rate_per_min"].as_f64().is_some_and(|r| r > 0.0)
                })
            });
            if rated && v["overall"]["eta_seconds"].is_u64() {
                seen = Some(v);
            }
            seen.is_some()
        },
        || last.borrow().clone(),
    );
    let v = seen.expect("seen");
    let workers = v["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 8);
    for w in workers {
        let pct = w["percent"].as_f64().expect("percent");
        assert!((0.0..=100.0).contains(&pct), "{w}");
        assert!(w["phase"].is_string() && w["reason"].is_string(), "{w}");
    }
    let eta = v["overall"]["eta_seconds"].as_u64().expect("an ETA");
    assert!(eta < 3600 * 24, "ETA {eta}s for an eight-hundred-book demo");
    assert_eq!(v["overall"]["automon_pid"].as_i64(), Some(watch_pid));
    assert_eq!(v["overall"]["shards_total"], 8);
}

#[test]
fn history_json_records_the_fix_of_a_hung_worker_and_its_verification() {
    let probe = Migration::new(&Knobs::default());
    let (a, b) = probe.shard(4);
    let fault: &'static str = Box::leak(format!("hang:{}", a + (b - a) / 2).into_boxed_str());
    let m = Migration::new(&Knobs {
        fault,
        // Room for the restart and the first batch after it on a loaded machine.
        extra_spec: "  fixes: {verify_after: 20s}\n",
        ..Knobs::default()
    });
    m.watch_to_completion();
    let (code, stdout, stderr) = automon_out(
        &m,
        &["history", "workerset.yaml", "-o", "json", "--worker", "4"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("one JSON array");
    let fix = records
        .iter()
        .find(|r| r["record"] == "fix")
        .expect("a fix record");
    assert_eq!(fix["kind"], "restart");
    assert_eq!(fix["attempt"], serde_json::json!([1, 3]));
    let verification = records
        .iter()
        .find(|r| r["record"] == "verification")
        .expect("a verification record");
    assert_eq!(verification["succeeded"], true, "{records:#?}");
    assert!(records.iter().all(|r| r["worker"] == 4));
    let (_, text, _) = automon_out(&m, &["history", "workerset.yaml"]);
    assert!(
        text.contains("fix") && text.contains("restart 1/3"),
        "{text}"
    );
}

#[test]
fn a_paused_worker_stays_stopped_through_automon_restarts_until_resumed() {
    let m = Migration::new(&Knobs {
        books: 160,
        upload_delay: "0.05",
        batch_size: 5,
        ..Knobs::default()
    });
    // Pause worker 2 before anything runs; no automon is running: applied directly.
    let (code, stdout, stderr) = automon_out(&m, &["pause", "workerset.yaml", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("worker 2: paused by an operator"),
        "{stdout}"
    );
    // Two runs of automon: every other shard completes, worker 2 never starts; each run ends
    // "blocked" (exit 3) because only an operator can move it.
    for _ in 0..2 {
        let out = m
            .automon()
            .args(["apply", "workerset.yaml", "--watch"])
            .output()
            .expect("apply");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !m.events().contains("worker 2: starting shard"),
        "{}",
        m.events()
    );
    let (_, stdout, _) = automon_out(&m, &["get", "workerset.yaml", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["workers"][2]["phase"], "Paused");
    // Resume: the next run migrates its shard and completes.
    let (code, _, stderr) = automon_out(&m, &["resume", "workerset.yaml", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    m.watch_to_completion();
    m.assert_verified();
}

#[test]
fn a_pause_reaches_a_running_loop_which_stops_the_worker() {
    // 50 books per shard at 1 s each: worker 1 is still running when the pause arrives.
    let m = Migration::new(&Knobs {
        books: 400,
        upload_delay: "1.0",
        batch_size: 5,
        ..Knobs::default()
    });
    let watch = m
        .automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let _cleanup = Cleanup {
        daemon: Some(watch),
        state_dir: m.state_dir(),
    };
    wait_until(
        "worker 1 started",
        || m.events().contains("worker 1: started pid"),
        || m.events(),
    );
    let (code, stdout, stderr) = automon_out(&m, &["pause", "workerset.yaml", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("worker 1: paused by an operator"),
        "{stdout}"
    );
    wait_until(
        "worker 1 stopped",
        || m.events().contains("worker 1: pid"),
        || m.events(),
    );
    // (events.log is written by the state writer thread: waited for, not read once.)
    wait_until(
        "the pause in the events log",
        || m.events().contains("worker 1: paused by an operator"),
        || m.events(),
    );
}

#[test]
fn bad_operator_input_is_a_clear_error() {
    let m = Migration::new(&Knobs {
        books: 40,
        ..Knobs::default()
    });
    let (code, _, stderr) = automon_out(&m, &["pause", "workerset.yaml", "12"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("worker 12 is not in WorkerSet test-migration (worker ids 0–7)"),
        "{stderr}"
    );
    let (code, _, stderr) = automon_out(&m, &["resume", "workerset.yaml", "3"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no state yet"), "{stderr}");
    let (code, _, stderr) = automon_out(&m, &["get", "workerset.yaml"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not started yet: no state in"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Regression: changing `spec.work.shards` re-cut the range under the old checkpoints, and
/// `diff`/`apply` showed shards whose books were never migrated as complete (a checkpoint
/// from the old, larger shard lay past the new shard's end). Now every command that plans
/// refuses, names the field, and leaves the state file as it was.
#[test]
fn a_changed_shard_count_is_refused_not_planned() {
    let m = super::support::Migration::new(&super::support::Knobs::default());
    m.watch_to_completion();
    let state_file = m.state_dir().join("state.json");
    let before = std::fs::read(&state_file).expect("state written");
    let manifest = m.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    assert!(text.contains("shards: 8"), "{text}");
    std::fs::write(&manifest, text.replace("shards: 8", "shards: 16")).expect("edit");
    for args in [
        vec!["apply", "workerset.yaml"],
        vec!["apply", "workerset.yaml", "--dry-run"],
        vec!["diff", "workerset.yaml"],
        vec!["get", "workerset.yaml"],
    ] {
        let out = m.automon().args(&args).output().expect("run automon");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // (For `diff`, exit 1 would mean "differences found": an error is not that.)
        assert!(
            !out.status.success() && (args[0] != "diff" || out.status.code() != Some(1)),
            "{args:?} must fail: {:?}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains("spec.work.shards is now 16 but") && stderr.contains("8 shards"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read(&state_file).expect("state"),
        before,
        "state untouched"
    );
}

/// Regression (fresh-clone trial): with no loop running, `status` repeated the dead loop's
/// `status.json` ("running 4") while none of its workers was alive. It now counts the workers
/// running now as `get` does (a running phase and a recorded process seen alive) and marks the
/// last pass's figures as of its time.
#[test]
fn status_without_a_loop_counts_no_dead_worker_as_running() {
    let m = Migration::new(&Knobs {
        books: 200,
        upload_delay: "0.4",
        batch_size: 5,
        stuck_after: "1h",
        discovery_grace: "1h",
        ..Knobs::default()
    });
    // Workers that cannot end on their own (a Python worker on a loaded machine once did, and
    // the count right after the pass saw 3 of 4): the subject is `status`, not the migration.
    let manifest = m.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let start = text.find("    command: [python3").expect("the command");
    let end = start + text[start..].find("]\n").expect("its end") + 2;
    std::fs::write(
        &manifest,
        format!(
            "{}    command: [sleep, \"600\"]\n{}",
            &text[..start],
            &text[end..]
        ),
    )
    .expect("write");
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: m.state_dir(),
    };
    // One pass (no loop): it starts four workers and records them, then exits.
    let (code, out, err) = automon_out(&m, &["apply", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let live = super::migration::live_workers(&m.state_dir());
    assert_eq!(live.len(), 4, "{live:?}\n{out}{err}");
    let (_, out, _) = automon_out(&m, &["status", "workerset.yaml", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(json["running"], false, "{json}");
    assert_eq!(json["last_pass"]["running"], 4, "{json}");
    assert_eq!(json["workers_now"]["running"], 4, "{json}");
    // The workers die while no loop runs (these are this test's own workers).
    for pids in live.values() {
        for pid in pids {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    wait_until(
        "the workers to be gone",
        || super::migration::live_workers(&m.state_dir()).is_empty(),
        String::new,
    );
    let (code, out, err) = automon_out(&m, &["status", "workerset.yaml"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.contains("workers: desired 4, running 0 (alive now; no loop running; as of "),
        "{out}"
    );
    assert!(out.contains(": 4 running; "), "{out}");
    let (_, out, _) = automon_out(&m, &["status", "workerset.yaml", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(json["workers_now"]["running"], 0, "{json}");
    // `get` agrees.
    let (_, out, _) = automon_out(&m, &["get", "workerset.yaml", "-o", "json"]);
    let get: serde_json::Value = serde_json::from_str(&out).expect("get json");
    assert_eq!(get["overall"]["running"], 0, "{get}");
}

/// Regression (fresh-clone trial): shards that completed while no loop ran showed a "completed
/// at" that moved on every `get` (the look's own clock). It is the workers' recorded time now:
/// two looks a moment apart agree.
#[test]
fn completed_at_without_a_loop_is_the_same_on_every_get() {
    let m = Migration::new(&Knobs {
        books: 40,
        ..Knobs::default()
    });
    let manifest = m.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("target: 4,", "target: 8,")).expect("write");
    let _cleanup = Cleanup {
        daemon: None,
        state_dir: m.state_dir(),
    };
    // One pass starts all eight; they finish with no loop to see it.
    let (code, out, err) = automon_out(&m, &["apply", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_until(
        "the workers to finish",
        || super::migration::live_workers(&m.state_dir()).is_empty(),
        String::new,
    );
    let completed_at = || {
        let (_, out, _) = automon_out(&m, &["get", "workerset.yaml", "-o", "json"]);
        let get: serde_json::Value = serde_json::from_str(&out).expect("get json");
        assert_eq!(get["overall"]["shards_done"], 8, "{get}");
        get["overall"]["completed_at"].clone()
    };
    let first = completed_at();
    assert!(first.is_string(), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(completed_at(), first);
}

/// Regression (fresh-clone trial): `get` of a copy of the manifest (another state directory,
/// the same workers' files) advised `automon apply` while another automon ran those workers;
/// that apply is refused. `get` now names the owner and advises no apply, while it runs and
/// after it has exited (its workers carry its state directory).
#[test]
fn get_of_a_copy_whose_workers_another_automon_owns_names_the_owner_and_advises_no_apply() {
    let m = Migration::new(&Knobs {
        books: 200,
        upload_delay: "0.4",
        batch_size: 5,
        stuck_after: "1h",
        discovery_grace: "1h",
        ..Knobs::default()
    });
    std::fs::copy(m.path().join("workerset.yaml"), m.path().join("copy.yaml")).expect("copy");
    let other = m.path().join("other-state");
    let other = other.to_str().expect("utf-8");
    let watch = m
        .automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let loop_pid = watch.id();
    let mut cleanup = Cleanup {
        daemon: Some(watch),
        state_dir: m.state_dir(),
    };
    wait_until(
        "four workers",
        || super::migration::live_workers(&m.state_dir()).len() == 4,
        String::new,
    );
    let (code, out, err) = automon_out(&m, &["get", "copy.yaml", "--state-dir", other]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(&format!(
            "another automon (pid {loop_pid}, state directory "
        )) && err.contains("an `apply` of this file is refused while it runs"),
        "{err}"
    );
    assert!(!err.contains("`automon apply"), "{err}");
    // The loop ends (SIGKILL: no stop, its workers keep running with its marker).
    if let Some(mut d) = cleanup.daemon.take() {
        d.kill().expect("kill the loop");
        d.wait().expect("wait");
    }
    let (code, out, err) = automon_out(&m, &["get", "copy.yaml", "--state-dir", other]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("another automon's (state directory ")
            && err.contains("would neither adopt them nor start workers beside them"),
        "{err}"
    );
    assert!(!err.contains("`automon apply"), "{err}");
}
