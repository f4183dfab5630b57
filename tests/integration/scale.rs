//! Fleets larger than the common open-files limit, and passes that change nothing (issue 25).
//! The workers are `sleep`, each with a progress file and a log, so a fleet of 1,100 is cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::migration::live_workers;

/// A directory with a WorkerSet of `n` `sleep` replicas (interval `interval`) and their files.
fn fleet(n: u32, interval: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = format!(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: fleet}}
spec:
  interval: {interval}
  workers: {{target: {n}, min: 1, max: {n}}}
  template:
    command: [sleep, "1000000"]
    stop_grace: 2s
  progress: {{file: "progress/w{{id}}.json", checkpoint: /checkpoint}}
  logs:
    file: "logs/w{{id}}.log"
    activity_patterns: ["Processed batch"]
  health: {{stuck_after: 24h, discovery_grace: 24h}}
"#
    );
    std::fs::write(dir.path().join("workerset.yaml"), manifest).expect("manifest");
    std::fs::create_dir_all(dir.path().join("progress")).expect("mkdir");
    for id in 0..n {
        std::fs::write(
            dir.path().join(format!("progress/w{id}.json")),
            "{\"checkpoint\": 1}\n",
        )
        .expect("progress file");
    }
    dir
}

/// Runs `automon ARGS` in `dir` through `sh`, with the open-files limit lowered to `soft`
/// (and the hard limit to `hard`) in that child only, as `ulimit -n` in a login would.
fn automon_with_limit(dir: &Path, soft: u64, hard: u64, args: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" {args}"
        ))
        .arg(env!("CARGO_BIN_EXE_automon"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run automon")
}

/// Kills every worker of `state_dir` when dropped, pass or fail.
struct KillFleet<'a>(&'a Path);

impl Drop for KillFleet<'_> {
    fn drop(&mut self) {
        for pids in live_workers(self.0).values() {
            for pid in pids {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// Worker id → pid as recorded in `state.json`.
fn recorded_pids(state_dir: &Path) -> BTreeMap<u32, i32> {
    let text = std::fs::read_to_string(state_dir.join("state.json")).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut out = BTreeMap::new();
    if let Some(workers) = value.get("workers").and_then(|w| w.as_object()) {
        for (id, w) in workers {
            if let (Ok(id), Some(pid)) = (
                id.parse::<u32>(),
                w.pointer("/process/identity/pid").and_then(|p| p.as_i64()),
            ) {
                out.insert(id, pid as i32);
            }
        }
    }
    out
}

/// Regression (issue 25): automon held a pidfd per worker, so under the common limit of 1,024
/// open files the starts from about the 1,008th failed after their spawn and left the process
/// running untracked. Now one reaper waits for every child and automon holds no descriptor per
/// worker: a fleet larger than even the hard limit runs, one process per worker.
#[test]
fn a_fleet_over_the_open_files_limit_runs_exactly_one_process_per_worker() {
    const FLEET: u32 = 1_100;
    let (soft, hard) = (1_024, 1_024);
    let dir = fleet(FLEET, "1s");
    let state_dir = dir.path().join(".automon");
    let _kill = KillFleet(&state_dir);
    // One pass starts the whole fleet.
    let out = automon_with_limit(dir.path(), soft, hard, "apply workerset.yaml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "apply failed:\n{stderr}");
    assert!(
        !stderr.contains("could not start"),
        "a start failed:\n{stderr}"
    );
    let live = live_workers(&state_dir);
    let doubles: Vec<_> = live.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "two processes for one worker: {doubles:?}"
    );
    assert_eq!(live.len(), FLEET as usize, "one live process per worker");
    // Every live process is the one automon recorded: none it does not track.
    let recorded = recorded_pids(&state_dir);
    let live_one: BTreeMap<u32, i32> = live.iter().map(|(id, p)| (*id, p[0])).collect();
    assert_eq!(
        recorded, live_one,
        "state.json records exactly the live processes"
    );
    // The workers run with the limit automon was given.
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", live_one[&0])).expect("worker limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3..5],
        ["1024", "1024"],
        "a worker's open-files limit: {line}"
    );
}

/// A one-worker fleet whose command is `command` (YAML), with `PATH` set to its `bin/` first and
/// `script` (name, text) written there as an executable; not started yet.
fn one_worker_on_path(command: &str, script: Option<(&str, &str)>) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = fleet(1, "1s");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    if let Some((name, text)) = script {
        std::fs::write(bin.join(name), text).expect("script");
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let manifest = dir.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&manifest)
        .expect("manifest")
        .replace(
            "    command: [sleep, \"1000000\"]\n",
            &format!(
                "    command: {command}\n    env: {{PATH: \"{}:/usr/local/bin:/usr/bin:/bin\"}}\n",
                bin.display()
            ),
        );
    std::fs::write(&manifest, text).expect("manifest");
    dir
}

/// Applies `dir`'s manifest in one pass and waits (minutes at most) until worker 0's command
/// line is `want`; returns the command line last seen, for the assertion.
fn apply_and_wait_for_cmdline(dir: &Path, want: &[u8]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_automon"))
        .args(["apply", "workerset.yaml"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run automon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "apply failed:\n{stderr}");
    let state_dir = dir.join(".automon");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(pid) = live_workers(&state_dir).get(&0).and_then(|p| p.first()) {
            seen = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if seen == want {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

#[test]
fn a_worker_found_on_path_keeps_the_manifests_argv0_and_a_script_without_shebang_still_runs() {
    // automon looks the program up on the worker's PATH itself (so that the standard library
    // can start it with posix_spawn, without copying automon's page tables per start); the
    // worker must not see the difference.
    let dir = one_worker_on_path("[sleep, \"1000000\"]", None);
    let state_dir = dir.path().join(".automon");
    let _kill = KillFleet(&state_dir);
    let want = b"sleep\x001000000\x00";
    let seen = apply_and_wait_for_cmdline(dir.path(), want);
    assert_eq!(
        String::from_utf8_lossy(&seen),
        String::from_utf8_lossy(want),
        "argv[0] is the manifest's word"
    );

    // A script without `#!`, found only on the PATH the manifest gives the worker: execvp runs
    // it with /bin/sh, and so must automon's start.
    let script_dir = one_worker_on_path(
        "[plainworker]",
        Some(("plainworker", "exec sleep 1000001\n")),
    );
    let script_state = script_dir.path().join(".automon");
    let _kill_script = KillFleet(&script_state);
    let want = b"sleep\x001000001\x00";
    let seen = apply_and_wait_for_cmdline(script_dir.path(), want);
    assert_eq!(
        String::from_utf8_lossy(&seen),
        String::from_utf8_lossy(want),
        "the script ran (through /bin/sh) and exec'd sleep"
    );
}

#[test]
fn a_pass_that_changes_nothing_does_not_rewrite_the_state_file() {
    let dir = fleet(3, "1s");
    for id in 0..3 {
        std::fs::create_dir_all(dir.path().join("logs")).expect("mkdir");
        std::fs::write(
            dir.path().join(format!("logs/w{id}.log")),
            "2026-01-01 00:00:00,000 - INFO - Processed batch 1\n",
        )
        .expect("log");
    }
    let state_dir = dir.path().join(".automon");
    let _kill = KillFleet(&state_dir);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_automon"))
        .args(["apply", "workerset.yaml", "--watch"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start automon");
    let passes = || {
        automon::state::read_status(&state_dir)
            .ok()
            .flatten()
            .map_or(0, |s| s.passes)
    };
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(state_dir.join("state.json"))
            .ok()
            .map(|m| (m.ino(), m.mtime_nsec(), m.mtime()))
    };
    let wait_for_passes = |n: u64| {
        let deadline = Instant::now() + super::support::PATIENCE;
        while passes() < n {
            assert!(
                Instant::now() < deadline,
                "automon made fewer than {n} passes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The first passes start the workers and take in their files; then nothing changes.
    wait_for_passes(4);
    let settled = inode();
    let at = passes();
    wait_for_passes(at + 4);
    let after = inode();
    assert!(settled.is_some(), "state.json was written");
    assert_eq!(
        settled, after,
        "four passes over an unchanged fleet rewrote state.json"
    );
    // One worker's checkpoint moves: the memory changed, so a pass writes it (issue 25: the
    // unchanged check is a fingerprint of the memory, not a copy of it).
    let progress = dir.path().join("progress/w1.json");
    std::fs::write(progress.with_extension("tmp"), "{\"checkpoint\": 7}\n").expect("progress");
    std::fs::rename(progress.with_extension("tmp"), &progress).expect("rename");
    let checkpoint_1 = || {
        let text = std::fs::read_to_string(state_dir.join("state.json")).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        value
            .pointer("/workers/1/checkpoint")
            .and_then(serde_json::Value::as_u64)
    };
    super::support::wait_until(
        "state.json to record worker 1's new checkpoint",
        || checkpoint_1() == Some(7),
        || format!("recorded checkpoint of worker 1: {:?}", checkpoint_1()),
    );
    assert_ne!(inode(), after, "the changed memory was written anew");
    // A moved checkpoint alone may wait up to OBSERVED_SAVE_PERIOD for its save; a SIGTERM
    // in that time saves it on the way out (the loop has read it once two passes went by).
    std::fs::write(progress.with_extension("tmp"), "{\"checkpoint\": 8}\n").expect("progress");
    std::fs::rename(progress.with_extension("tmp"), &progress).expect("rename");
    wait_for_passes(passes() + 2);
    nix::sys::signal::kill(
        Pid::from_raw(i32::try_from(daemon.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = daemon.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(130),
        "SIGTERM ends the loop as interrupted"
    );
    assert_eq!(
        checkpoint_1(),
        Some(8),
        "the checkpoint read before SIGTERM is on disk after it"
    );
    let live: BTreeSet<u32> = live_workers(&state_dir).keys().copied().collect();
    assert_eq!(live, BTreeSet::from([0, 1, 2]), "the fleet kept running");
}
