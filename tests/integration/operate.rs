//! Operating automon: `get`, `history`, `pause`/`resume` against real migrations.

use std::time::Duration;

use super::support::{Knobs, Migration};

fn automon_out(m: &Migration, args: &[&str]) -> (Option<i32>, String, String) {
    let out = m.automon().args(args).output().expect("run automon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn get_json_shows_phases_percentages_and_a_sane_eta_while_the_migration_runs() {
    let m = Migration::new(&Knobs {
        books: 200,
        upload_delay: "0.1",
        batch_size: 5,
        ..Knobs::default()
    });
    let mut watch = m
        .automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Poll (no fixed wait: the machine may be loaded) until a progressing worker has a rate
    // window, or the run ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        let (code, stdout, stderr) = automon_out(&m, &["get", "workerset.yaml", "-o", "json"]);
        if watch.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert_eq!(code, Some(0), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
        let workers = v["workers"].as_array().expect("workers");
        assert_eq!(workers.len(), 8);
        assert_eq!(v["overall"]["shards_total"], 8);
        for w in workers {
            let pct = w["percent"].as_f64().expect("percent");
            assert!((0.0..=100.0).contains(&pct), "{w}");
            assert!(w["phase"].is_string() && w["reason"].is_string(), "{w}");
        }
        let rated = workers.iter().any(|w| {
            w["phase"] == "Progressing" && w["rate_per_min"].as_f64().is_some_and(|r| r > 0.0)
        });
        if rated {
            seen = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if seen.is_none() && watch.try_wait().expect("try_wait").is_none() {
        // Deadline passed: end the loop rather than leave it behind.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(watch.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    // The two-hundred-book migration runs to its end (its workers are not left behind).
    let finished_first = watch.wait().expect("wait").code() == Some(0);
    match seen {
        Some(v) => {
            let eta = v["overall"]["eta_seconds"]
                .as_u64()
                .expect("an ETA while progressing");
            assert!(eta < 3600, "ETA {eta}s for a two-hundred-book demo");
            assert_eq!(
                v["overall"]["automon_pid"].as_i64(),
                Some(i64::from(watch.id()))
            );
        }
        None => assert!(
            finished_first,
            "no progressing worker with a rate before the deadline"
        ),
    }
}

#[test]
fn history_json_records_the_fix_of_a_hung_worker_and_its_verification() {
    let probe = Migration::new(&Knobs::default());
    let (a, b) = probe.shard(4);
    let fault: &'static str = Box::leak(format!("hang:{}", a + (b - a) / 2).into_boxed_str());
    let m = Migration::new(&Knobs {
        fault,
        extra_spec: "  fixes: {verify_after: 2s}\n",
        ..Knobs::default()
    });
    m.watch_to_completion(Duration::from_secs(180));
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
    m.watch_to_completion(Duration::from_secs(120));
    m.assert_verified();
}

#[test]
fn a_pause_reaches_a_running_loop_which_stops_the_worker() {
    let m = Migration::new(&Knobs {
        books: 200,
        upload_delay: "0.2",
        batch_size: 5,
        ..Knobs::default()
    });
    let mut watch = m
        .automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(3));
    let (code, stdout, stderr) = automon_out(&m, &["pause", "workerset.yaml", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("worker 1: paused by an operator"),
        "{stdout}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !m.events().contains("worker 1: pid") {
        assert!(
            std::time::Instant::now() < deadline,
            "worker 1 not stopped:\n{}",
            m.events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        m.events().contains("worker 1: paused by an operator"),
        "{}",
        m.events()
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = watch.wait();
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
    assert!(stderr.contains("no state yet"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Regression: changing `spec.work.shards` re-cut the range under the old checkpoints, and
/// `diff`/`apply` showed shards whose books were never migrated as complete (a checkpoint
/// from the old, larger shard lay past the new shard's end). Now every command that plans
/// refuses, names the field, and leaves the state file as it was.
#[test]
fn a_changed_shard_count_is_refused_not_planned() {
    let m = super::support::Migration::new(&super::support::Knobs::default());
    m.watch_to_completion(std::time::Duration::from_secs(180));
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
