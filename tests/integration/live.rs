//! Changing a running WorkerSet: `apply` hands a manifest to the running loop over its control
//! socket, SIGHUP makes it re-read its file, and operator requests reach it without a signal —
//! with real workers, waiting for conditions (never for durations).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::migration::live_workers;
use super::service::{Cleanup, run, wait_for};
use super::support::{Knobs, Migration};

/// Generous: the machine may be loaded.
const LIMIT: Duration = super::support::PATIENCE;

/// Workers that outlive the test's steps (about 100 books per shard at 0.5 s each).
fn slow(target: u32, extra_spec: &'static str) -> Migration {
    let m = Migration::new(&Knobs {
        books: 800,
        upload_delay: "0.5",
        batch_size: 5,
        stuck_after: "60s",
        discovery_grace: "120s",
        extra_spec,
        ..Knobs::default()
    });
    edit(&m, "target: 4,", &format!("target: {target},"));
    m
}

fn manifest(m: &Migration) -> std::path::PathBuf {
    m.path().join("workerset.yaml")
}

/// Replaces `from` by `to` in the manifest (which must contain it).
fn edit(m: &Migration, from: &str, to: &str) {
    let text = std::fs::read_to_string(manifest(m)).expect("manifest");
    assert!(text.contains(from), "{from} not in:\n{text}");
    std::fs::write(manifest(m), text.replacen(from, to, 1)).expect("write manifest");
}

/// `apply --watch` in the background; its pid.
fn watch(m: &Migration) -> std::process::Child {
    m.automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the loop")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `GET /metrics` over the control socket: the value of an unlabelled sample.
fn socket_metric(state_dir: &Path, name: &str) -> Option<f64> {
    let mut s = std::os::unix::net::UnixStream::connect(state_dir.join("control.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// (desired, running) as `get`, `status` and the metrics say, when the three agree.
fn agreed(m: &Migration) -> Option<(u64, u64)> {
    let (_, out, _) = run(m, &["get", "workerset.yaml", "-o", "json"]);
    let get = serde_json::from_str::<serde_json::Value>(&out).ok()?;
    let (_, out, _) = run(m, &["status", "workerset.yaml", "-o", "json"]);
    let status = serde_json::from_str::<serde_json::Value>(&out).ok()?;
    let desired = socket_metric(&m.state_dir(), "automon_workers_desired")? as u64;
    let running = socket_metric(&m.state_dir(), "automon_workers_running")? as u64;
    let from_get = (
        get["overall"]["desired"].as_u64()?,
        get["overall"]["running"].as_u64()?,
    );
    let from_status = (
        status["last_pass"]["desired"].as_u64()?,
        status["last_pass"]["running"].as_u64()?,
    );
    (status["source"] == "loop" && from_get == from_status && from_get == (desired, running))
        .then_some(from_get)
}

/// Waits until `get`, `status` and the metrics agree on (desired, running) = `want`, and the
/// live worker processes number `want.1`, one per id.
fn wait_agreed(m: &Migration, want: (u64, u64)) {
    wait_for(
        &format!("get/status/metrics to agree on {want:?}"),
        LIMIT,
        || {
            let live = live_workers(&m.state_dir());
            assert!(
                live.values().all(|p| p.len() == 1),
                "two processes for one id: {live:?}"
            );
            agreed(m) == Some(want) && live.len() as u64 == want.1
        },
    );
}

#[test]
fn apply_raises_and_lowers_the_target_of_a_running_loop() {
    let m = slow(2, "");
    let _cleanup = Cleanup(&m);
    let mut lp = watch(&m);
    wait_agreed(&m, (2, 2));
    // 2 → 4: the running loop takes it; the pass that took it started workers 2 and 3.
    edit(&m, "target: 2,", "target: 4,");
    let (code, out, err) = run(&m, &["apply", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("taken: workers.target 2 → 4"), "{out}");
    assert!(
        out.contains("worker 2: started pid") && out.contains("worker 3: started pid"),
        "{out}"
    );
    wait_agreed(&m, (4, 4));
    let (_, diff, _) = run(&m, &["diff", "workerset.yaml"]);
    assert!(
        diff.contains("manifest: unchanged since the last apply"),
        "{diff}"
    );
    // 4 → 2: two workers parked with the stop grace (they exit on SIGTERM), not killed.
    edit(&m, "target: 4,", "target: 2,");
    let (code, out, err) = run(&m, &["apply", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("taken: workers.target 4 → 2"), "{out}");
    assert!(
        out.contains("parking worker 3") && out.contains("parking worker 2"),
        "{out}"
    );
    wait_agreed(&m, (2, 2));
    // The loop records each exit and then shows the worker Parked a moment after the process
    // is gone: waited for, not raced.
    let graceful = |events: &str, id: u32| {
        events.lines().any(|l| {
            l.contains(&format!("worker {id}: pid")) && l.contains("exited after the stop signal")
        })
    };
    wait_for("workers 2 and 3 to exit on the stop signal", LIMIT, || {
        let events = m.events();
        graceful(&events, 2) && graceful(&events, 3)
    });
    wait_for("workers 2 and 3 to be shown Parked", LIMIT, || {
        let (_, out, _) = run(&m, &["get", "workerset.yaml", "-o", "json"]);
        let v = json(&out);
        [2, 3]
            .iter()
            .all(|&id| v["workers"][id]["phase"] == "Parked")
    });
    let events = m.events();
    assert!(
        events.contains("operator `automon apply workerset.yaml`"),
        "{events}"
    );
    assert!(
        lp.try_wait().expect("try_wait").is_none(),
        "the loop runs on"
    );
}

#[test]
fn a_refused_or_invalid_manifest_leaves_the_running_loop_unchanged() {
    let m = slow(2, "");
    let _cleanup = Cleanup(&m);
    let mut lp = watch(&m);
    wait_agreed(&m, (2, 2));
    let good = std::fs::read_to_string(manifest(&m)).expect("manifest");
    for (from, to, code, says) in [
        ("shards: 8", "shards: 6", 1, "spec.work.shards is now 6 but"),
        (
            "name: test-migration",
            "name: another",
            1,
            "metadata.name is another but this loop runs WorkerSet test-migration",
        ),
        (
            "target: 2,",
            "target: 3, bogus: 1,",
            2,
            "spec.workers.bogus: unknown field",
        ),
    ] {
        edit(&m, from, to);
        let (got, out, err) = run(&m, &["apply", "workerset.yaml"]);
        assert_eq!(got, Some(code), "{from} → {to}: {out}{err}");
        assert!(err.contains(says), "{err}");
        std::fs::write(manifest(&m), &good).expect("restore");
        // The loop runs the manifest it ran: nothing differs from it.
        let (_, diff, _) = run(&m, &["diff", "workerset.yaml"]);
        assert!(
            diff.contains("manifest: unchanged since the last apply"),
            "{diff}"
        );
        assert!(
            lp.try_wait().expect("try_wait").is_none(),
            "the loop runs on"
        );
    }
    wait_agreed(&m, (2, 2));
    // (events.log is written by the state writer thread, after the reply: waited for.)
    wait_for("the refusals in the events log", LIMIT, || {
        m.events().contains("not taken; the loop runs on unchanged")
    });
}

#[test]
fn sighup_takes_an_edited_manifest_and_ignores_a_broken_one() {
    let m = slow(2, "");
    let _cleanup = Cleanup(&m);
    let mut lp = watch(&m);
    let pid = Pid::from_raw(i32::try_from(lp.id()).expect("pid"));
    wait_agreed(&m, (2, 2));
    edit(&m, "target: 2,", "target: 3,");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    wait_agreed(&m, (3, 3));
    // (events.log is written by the state writer thread: waited for, not read once.)
    super::support::wait_until(
        "the SIGHUP reload in the events log",
        || m.events().contains("SIGHUP: re-read"),
        || m.events(),
    );
    // A broken file: logged, ignored; the loop runs on with what it had.
    let text = std::fs::read_to_string(manifest(&m)).expect("manifest");
    std::fs::write(manifest(&m), format!("{text}garbage: [\n")).expect("break");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    wait_for("the ignored reload to be logged", LIMIT, || {
        m.events()
            .contains("not taken, the running manifest stays in force")
    });
    assert!(
        lp.try_wait().expect("try_wait").is_none(),
        "SIGHUP did not end the loop"
    );
    // (`get` and `status` read the broken file to find the state directory: the metrics.)
    let state_dir = m.state_dir();
    // (A worker that finishes its shard is replaced by the loop a pass later: the live count is
    // waited for with the metrics, not read once after them.)
    wait_for("the loop to run on with target 3", LIMIT, || {
        let live = live_workers(&state_dir);
        assert!(
            live.values().all(|p| p.len() == 1),
            "two processes for one id: {live:?}"
        );
        socket_metric(&state_dir, "automon_workers_desired") == Some(3.0)
            && socket_metric(&state_dir, "automon_workers_running") == Some(3.0)
            && live.len() == 3
    });
}

/// The state directory holds nothing but automon's own files: no request or temp files.
fn assert_no_leftovers(state_dir: &Path) {
    let known = [
        "state.json",
        "events.log",
        "lock",
        "status.json",
        "auto_fix_history.jsonl",
        "control.sock",
        "automon.log",
        "automon.pid",
    ];
    for e in std::fs::read_dir(state_dir).expect("ls").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            known.contains(&name.as_str()) || name.starts_with("state.json.reset-"),
            "left behind in {}: {name}",
            state_dir.display()
        );
    }
}

/// 20 operator commands at once: pause twice each of 0–3, resume twice each of 4–7 (paused
/// beforehand), reset-params of 0–3. Every one exits 0 and takes effect.
fn twenty_at_once(m: &Migration) {
    for id in 4..8 {
        let (code, out, err) = run(m, &["pause", "workerset.yaml", &id.to_string()]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    let mut jobs = Vec::new();
    for round in 0..2 {
        for id in 0..4 {
            jobs.push(vec!["pause".to_string(), id.to_string()]);
            jobs.push(vec!["resume".to_string(), (id + 4).to_string()]);
        }
        if round == 0 {
            for id in 0..4 {
                jobs.push(vec!["reset-params".to_string(), id.to_string()]);
            }
        }
    }
    assert_eq!(jobs.len(), 20);
    let children: Vec<_> = jobs
        .iter()
        .map(|job| {
            m.automon()
                .args([job[0].as_str(), "workerset.yaml", job[1].as_str()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for (job, child) in jobs.iter().zip(children) {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{job:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn twenty_concurrent_operator_commands_all_take_effect_with_and_without_a_loop() {
    // Without a loop: each takes the lock in turn.
    let m = slow(2, "");
    let _cleanup = Cleanup(&m);
    twenty_at_once(&m);
    let state: serde_json::Value =
        json(&std::fs::read_to_string(m.state_dir().join("state.json")).expect("state"));
    for id in 0..8 {
        let paused = !state["workers"][id.to_string()]["paused"].is_null();
        assert_eq!(paused, id < 4, "worker {id}: {}", state["workers"]);
    }
    assert_no_leftovers(&m.state_dir());
    // With a loop: the same over the socket; the loop is the only thing that changes state.
    let m = slow(2, "");
    let _cleanup2 = Cleanup(&m);
    let mut lp = watch(&m);
    wait_agreed(&m, (2, 2));
    twenty_at_once(&m);
    // A paused running worker is stopped first (Stopping, then Paused): wait for the loop to
    // carry the requests out, then check that exactly workers 0-3 are paused.
    let paused_ids = || {
        let (_, out, _) = run(&m, &["get", "workerset.yaml", "-o", "json"]);
        let v = json(&out);
        (0..8)
            .filter(|&id| v["workers"][id]["phase"] == "Paused")
            .collect::<Vec<usize>>()
    };
    wait_for("workers 0-3 paused, the others not", LIMIT, || {
        paused_ids() == vec![0, 1, 2, 3]
    });
    // (events.log is written by the state writer thread: waited for, not read once; more than
    // 24 would be a failure the wait cannot hide, checked after it.)
    super::support::wait_until(
        "one event per request",
        || m.events().matches("operator `automon ").count() >= 24,
        || m.events(),
    );
    let events = m.events();
    assert_eq!(
        events.matches("operator `automon ").count(),
        24,
        "one event per request:\n{events}"
    );
    // Regression: a stop's task reported before the reaper's exit event, and the next pass
    // "resumed" the stop it took for abandoned (no automon restarted here to abandon one).
    assert!(
        !events.contains("resuming the stop"),
        "a stop of this loop was resumed:\n{events}"
    );
    assert!(
        lp.try_wait().expect("try_wait").is_none(),
        "the loop runs on"
    );
    assert_no_leftovers(&m.state_dir());
}

/// Regression: `pause` during `spec.setup` killed the loop (SIGUSR1 before its handler) and
/// orphaned the setup process. Requests during setup are now queued and applied after it.
#[test]
fn pause_and_apply_during_a_slow_setup_are_applied_after_it() {
    let m = slow(
        2,
        "  setup: {command: [sh, -c, \"until [ -e go ]; do sleep 0.1; done\"], creates: setup-done}\n",
    );
    let _cleanup = Cleanup(&m);
    let mut lp = watch(&m);
    wait_for("the control socket", LIMIT, || {
        m.state_dir().join("control.sock").exists()
    });
    let (code, out, err) = run(&m, &["pause", "workerset.yaml", "1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("queued"), "{out}");
    edit(&m, "target: 2,", "target: 3,");
    let (code, out, err) = run(&m, &["apply", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("queued"), "{out}");
    assert!(
        lp.try_wait().expect("try_wait").is_none(),
        "the loop survives requests during setup"
    );
    // The setup ends when the test says so (a gate file, not a sleep: on a loaded machine the
    // two requests may take seconds to arrive).
    std::fs::write(m.path().join("go"), "").expect("open the setup's gate");
    // After setup: worker 1 paused (never started), three others run.
    wait_agreed(&m, (3, 3));
    let (_, out, _) = run(&m, &["get", "workerset.yaml", "-o", "json"]);
    assert_eq!(json(&out)["workers"][1]["phase"], "Paused", "{out}");
    assert!(
        !m.events().contains("worker 1: starting shard"),
        "{}",
        m.events()
    );
}

/// Regression: SIGHUP killed automon silently (exit 129). Now it reloads, and reopens
/// `automon.log` so logrotate can move it away; a metrics address reachable from other machines
/// gets a warning.
#[test]
fn sighup_reopens_the_log_of_a_started_loop_and_a_public_metrics_address_is_warned_about() {
    let m = slow(2, "");
    let _cleanup = Cleanup(&m);
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("0.0.0.0:{port}");
    let (code, out, err) = run(&m, &["start", "workerset.yaml", "--metrics-addr", &addr]);
    assert_eq!(code, Some(0), "{out}{err}");
    let log = m.state_dir().join("automon.log");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains(&format!(
            "warning: --metrics-addr {addr} is not a loopback address"
        )),
        "{text}"
    );
    let pid = automon::state::running_instance(&m.state_dir())
        .expect("running")
        .pid;
    std::fs::rename(&log, m.state_dir().join("automon.log.1")).expect("rotate");
    kill(Pid::from_raw(pid), Signal::SIGHUP).expect("SIGHUP");
    wait_for("the reopened log to receive the reload", LIMIT, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("SIGHUP: re-read"))
    });
    // Regression (fresh-clone user test): the reopened log was created 0644 (umask 022); it is
    // private like every file of the state directory.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&log).expect("log").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert!(automon::state::running_instance(&m.state_dir()).is_some_and(|i| i.pid == pid));
    let (code, out, err) = run(&m, &["stop", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
}
