//! Fault safety on real processes: never two live processes for one worker id, never a process
//! automon started and does not track, never a stranger touched — with automon SIGKILLed at
//! bad moments, stops cut short, a second WorkerSet on the same files, hand-started workers,
//! descriptors inherited from the caller and starts that fail for want of descriptors.
//!
//! Each test watches the process table with a sampler (every 50 ms) and asserts on it; waits
//! are for conditions, with deadlines of minutes (the tests run on a loaded 2-core machine).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WORKER: &str = r#"import json, os, signal, subprocess, sys, time
wid, start, end = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mode = os.environ.get("MODE", "")
if mode == "deaf-child":
    # A member of the worker's group that ignores SIGTERM; the main process obeys it.
    subprocess.Popen([sys.executable, "-c",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('deaf child up', flush=True)\ntime.sleep(3600)"])
if mode == "slow-term":
    def bye(*_):
        time.sleep(0.3)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
os.makedirs("progress", exist_ok=True)
cp = start
while True:
    if mode not in ("silent", "slow-term"):
        cp = min(cp + 1, end - 2)
        tmp = "progress/w%d.json.tmp" % wid
        with open(tmp, "w") as f:
            json.dump({"c": cp}, f)
        os.replace(tmp, "progress/w%d.json" % wid)
        print("Processed batch %d" % cp, flush=True)
    time.sleep(0.5)
"#;

/// A WorkerSet of python workers in a temp dir.
struct Fleet {
    dir: tempfile::TempDir,
}

/// Knobs of a test fleet.
struct Spec {
    name: &'static str,
    shards: u32,
    target: u32,
    mode: &'static str,
    stop_grace: &'static str,
    stuck_after: &'static str,
    /// Extra lines appended to `spec` (two-space indented YAML).
    extra: String,
    /// `spec.template.workdir`, when not the manifest's directory.
    workdir: Option<PathBuf>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            name: "fault",
            shards: 2,
            target: 2,
            mode: "",
            stop_grace: "4s",
            stuck_after: "10m",
            extra: String::new(),
            workdir: None,
        }
    }
}

impl Fleet {
    fn new(spec: &Spec) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::write(dir.path(), spec);
        Self { dir }
    }

    fn write(dir: &Path, spec: &Spec) {
        let workdir = spec
            .workdir
            .as_ref()
            .map(|w| format!("\n    workdir: {}", w.display()))
            .unwrap_or_default();
        let manifest = format!(
            r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: {name}}}
spec:
  interval: 1s
  workers: {{target: {target}, min: 1, max: {shards}}}
  work: {{range: {{start: 1, end: 1000001}}, shards: {shards}, unit: book}}
  template:
    command: [python3, worker.py, "{{id}}", "{{range_start}}", "{{range_end}}"]{workdir}
    env: {{MODE: "{mode}", PYTHONUNBUFFERED: "1"}}
    stop_grace: {grace}
  progress: {{file: "progress/w{{id}}.json", checkpoint: /c}}
  logs: {{file: "logs/w{{id}}.log", upload_patterns: ["Uploaded"], activity_patterns: ["Processed batch"]}}
  health: {{stuck_after: {stuck}, discovery_grace: {stuck}}}
  restart: {{backoff_initial: 1s, backoff_max: 4s}}
{extra}"#,
            name = spec.name,
            target = spec.target,
            shards = spec.shards,
            mode = spec.mode,
            grace = spec.stop_grace,
            stuck = spec.stuck_after,
            extra = spec.extra,
        );
        std::fs::write(dir.join("workerset.yaml"), manifest).expect("manifest");
        std::fs::write(dir.join("worker.py"), WORKER).expect("worker");
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state_dir(&self) -> PathBuf {
        self.path().join(".automon")
    }

    fn automon(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_automon"));
        cmd.current_dir(self.path());
        cmd
    }

    /// `apply --watch` in the background, stderr to `automon.err` in the fleet's directory.
    fn watch(&self) -> Child {
        let err = std::fs::File::create(self.path().join("automon.err")).expect("stderr file");
        self.automon()
            .args(["apply", "workerset.yaml", "--watch"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start automon")
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("events.log")).unwrap_or_default()
    }

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).expect("state");
        serde_json::from_str(&text).expect("state is JSON")
    }

    /// The pid state.json records for worker `id`.
    fn recorded_pid(&self, id: u32) -> Option<i32> {
        self.state()["workers"][id.to_string()]["process"]["identity"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
    }
}

/// Live (not zombie) process-group leaders whose environment says they run a worker of the
/// automon with state directory `state_dir`, by worker id.
fn live_workers(state_dir: &Path) -> BTreeMap<u32, Vec<i32>> {
    let want = state_dir.to_string_lossy().into_owned();
    let mut out: BTreeMap<u32, Vec<i32>> = BTreeMap::new();
    for pid in automon::observe::proc::list_pids(Path::new("/proc")) {
        let Some(stat) = automon::observe::proc::read_stat(Path::new("/proc"), pid) else {
            continue;
        };
        if stat.pgid != pid || matches!(stat.state, 'Z' | 'X') {
            continue;
        }
        let env = automon::observe::proc::read_environ(Path::new("/proc"), pid);
        let var = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if var("AUTOMON_STATE_DIR").as_deref() != Some(want.as_str()) {
            continue;
        }
        if let Some(id) = var("AUTOMON_WORKER_ID").and_then(|v| v.parse().ok()) {
            out.entry(id).or_default().push(pid);
        }
    }
    out
}

/// Samples [`live_workers`] every 50 ms until dropped or [`Sampler::finish`]ed.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Sampled>>,
}

#[derive(Debug, Default)]
struct Sampled {
    samples: usize,
    max_per_id: usize,
    /// The first sample with two live processes for one id, if any.
    first_duplicate: Option<BTreeMap<u32, Vec<i32>>>,
}

impl Sampler {
    fn start(state_dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), state_dir.to_path_buf());
        let handle = std::thread::spawn(move || {
            let mut s = Sampled::default();
            while !flag.load(Ordering::Relaxed) {
                let live = live_workers(&dir);
                let max = live.values().map(Vec::len).max().unwrap_or(0);
                if max > 1 && s.first_duplicate.is_none() {
                    s.first_duplicate = Some(live);
                }
                s.max_per_id = s.max_per_id.max(max);
                s.samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            s
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("sampler"))
            .unwrap_or_default()
    }

    /// Asserts the sampled invariant: at most one live process per worker id.
    fn assert_never_two(self) -> Sampled {
        let s = self.finish();
        assert!(s.samples > 0, "the sampler ran");
        assert!(
            s.max_per_id <= 1,
            "two live processes for one worker id: {:?}",
            s.first_duplicate
        );
        s
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: i32) -> bool {
    automon::observe::proc::read_stat(Path::new("/proc"), pid)
        .is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

fn sigkill_group(pid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills every worker group of `state_dir` (test cleanup) and the automon `loop_`, if given.
fn cleanup(state_dir: &Path, loop_: Option<&mut Child>) {
    if let Some(child) = loop_ {
        let _ = child.kill();
        let _ = child.wait();
    }
    for pids in live_workers(state_dir).values() {
        for pid in pids {
            sigkill_group(*pid);
        }
    }
}

/// Starts `python3 worker.py ID START END` by hand in `dir`, in its own process group, with
/// `env` added (e.g. automon's markers).
fn hand_start(dir: &Path, id: u32, range: (u64, u64), env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new("python3");
    cmd.args([
        "worker.py".to_string(),
        id.to_string(),
        range.0.to_string(),
        range.1.to_string(),
    ])
    .current_dir(dir)
    .env("PYTHONUNBUFFERED", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("hand-started worker")
}

/// Reaps `child` in the background (a hand-started worker must not linger as a zombie).
fn reap(mut child: Child) {
    std::thread::spawn(move || child.wait());
}

/// The worker id's shard `[start, end)` of the test fleets (range `[1, 1000001)`).
fn shard(shards: u64, id: u64) -> (u64, u64) {
    let len = 1_000_000;
    (1 + len * id / shards, 1 + len * (id + 1) / shards)
}

const MINUTES: Duration = super::support::PATIENCE;

/// Regression (fault safety 1): automon restarted worker 0 (P gone, Q started) and was
/// SIGKILLed before `state.json` recorded Q. The next automon stopped Q as an "unrecorded
/// duplicate" and, in the same pass, started R beside it.
#[test]
fn a_restart_that_was_never_saved_is_adopted_not_duplicated() {
    let fleet = Fleet::new(&Spec::default());
    let out = fleet
        .automon()
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state_dir = fleet.state_dir();
    let p = fleet.recorded_pid(0).expect("worker 0 recorded");
    // P dies while no automon runs.
    sigkill_group(p);
    wait_for("the recorded worker to be gone", MINUTES, || !alive(p));
    // What the killed automon would have left: its replacement Q, running, unrecorded.
    let markers = [
        ("AUTOMON_WORKERSET", "fault".to_string()),
        ("AUTOMON_WORKER_ID", "0".to_string()),
        (
            "AUTOMON_STATE_DIR",
            state_dir.to_string_lossy().into_owned(),
        ),
    ];
    let q = hand_start(fleet.path(), 0, shard(2, 0), &markers);
    let q_pid = q.id() as i32;
    reap(q);
    wait_for("Q to carry its markers", MINUTES, || {
        live_workers(&state_dir)
            .get(&0)
            .is_some_and(|v| v.contains(&q_pid))
    });
    let sampler = Sampler::start(&state_dir);
    let out = fleet
        .automon()
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("apply");
    // Give a wrongly started R time to show up in the samples.
    std::thread::sleep(Duration::from_secs(2));
    sampler.assert_never_two();
    let events = fleet.events();
    cleanup(&state_dir, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        events.contains(&format!(
            "worker 0: adopted pid {q_pid} in place of the recorded pid {p}"
        )),
        "{events}"
    );
    assert_eq!(fleet.recorded_pid(0), Some(q_pid));
    assert!(!events.contains("unrecorded duplicate"), "{events}");
}

/// Regression (fault safety 2): the main process obeyed SIGTERM, a member of its group did not,
/// and automon was SIGKILLed mid-grace: the next automon left the worker Stopping forever with a
/// dead pid ("adopted pid N" for a pid that had exited) and never signalled the group again.
#[test]
fn a_stop_cut_short_by_automons_restart_is_resumed_for_a_leaderless_group() {
    let fleet = Fleet::new(&Spec {
        mode: "deaf-child",
        shards: 1,
        target: 1,
        // Room for the test to see the leader exit and kill automon before the grace period
        // ends (and SIGKILL ends the deaf child), however slowly it gets there.
        stop_grace: "30s",
        ..Spec::default()
    });
    let state_dir = fleet.state_dir();
    let sampler = Sampler::start(&state_dir);
    let mut first = fleet.watch();
    wait_for("worker 0 to be recorded", MINUTES, || {
        std::fs::read_to_string(state_dir.join("state.json"))
            .is_ok_and(|_| fleet.recorded_pid(0).is_some())
    });
    let leader = fleet.recorded_pid(0).expect("recorded");
    // The deaf child is up once the group has two members.
    let members = |pgid: i32| {
        automon::observe::proc::list_pids(Path::new("/proc"))
            .into_iter()
            .filter(|p| {
                automon::observe::proc::read_stat(Path::new("/proc"), *p)
                    .is_some_and(|s| s.pgid == pgid && !matches!(s.state, 'Z' | 'X'))
            })
            .count()
    };
    wait_for("the deaf child to ignore SIGTERM", MINUTES, || {
        members(leader) >= 2
            && std::fs::read_to_string(fleet.path().join("logs/w0.log"))
                .is_ok_and(|l| l.contains("deaf child up"))
    });
    let out = fleet
        .automon()
        .args(["pause", "workerset.yaml", "0"])
        .output()
        .expect("pause");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The main process exits on SIGTERM; the deaf child stays.
    wait_for("the main process to exit", MINUTES, || !alive(leader));
    assert!(members(leader) >= 1, "the deaf child outlives the leader");
    // automon dies mid-grace.
    let _ = first.kill();
    let _ = first.wait();
    let mut second = fleet.watch();
    wait_for("the rest of the group to be killed", MINUTES, || {
        !automon::observe::proc::group_exists(leader)
    });
    wait_for("worker 0 to be paused", MINUTES, || {
        fleet.events().contains("worker 0: pid")
            && fleet.state()["workers"]["0"]["process"].is_null()
    });
    let events = fleet.events();
    let _ = second.kill();
    let _ = second.wait();
    sampler.assert_never_two();
    cleanup(&state_dir, None);
    assert!(
        events.contains(&format!("worker 0: resuming the stop of pid {leader}")),
        "{events}"
    );
    assert!(
        !events.contains(&format!("adopted pid {leader}")),
        "a pid that has exited is never adopted:\n{events}"
    );
    assert!(
        !events.contains("worker 0: started pid")
            || events.matches("worker 0: started pid").count() == 1,
        "a paused worker is not restarted:\n{events}"
    );
}

/// Regression (fault safety 3): with `adoption.match_command`, automon adopted a healthy
/// worker of another fleet directory whose argv matched, watched its own progress file (which
/// that worker never writes), found it stuck and stopped it.
#[test]
fn a_worker_of_another_fleet_directory_with_the_same_command_line_is_not_adopted() {
    let fleet = Fleet::new(&Spec {
        shards: 1,
        target: 1,
        extra: "  adoption: {match_command: true}\n".into(),
        ..Spec::default()
    });
    // Another fleet: the same files under another directory, the same command line.
    let other = tempfile::tempdir().expect("tempdir");
    Fleet::write(other.path(), &Spec::default());
    let stranger = hand_start(other.path(), 0, shard(1, 0), &[]);
    let stranger_pid = stranger.id() as i32;
    reap(stranger);
    wait_for("the stranger to run", MINUTES, || {
        std::fs::read_link(format!("/proc/{stranger_pid}/cwd")).is_ok()
            && std::fs::read(format!("/proc/{stranger_pid}/cmdline"))
                .is_ok_and(|c| c.windows(9).any(|w| w == b"worker.py"))
    });
    let out = fleet
        .automon()
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("apply");
    let events = fleet.events();
    let ours = fleet.recorded_pid(0);
    let stranger_alive = alive(stranger_pid);
    sigkill_group(stranger_pid);
    cleanup(&fleet.state_dir(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !events.contains(&stranger_pid.to_string()),
        "another fleet's worker is never adopted or named:\n{events}"
    );
    assert!(stranger_alive, "another fleet's worker is never signalled");
    assert!(
        ours.is_some_and(|p| p != stranger_pid),
        "automon started its own worker 0:\n{events}"
    );
}

/// Regression (fault safety 4): a copy of the manifest in another directory (another state
/// directory) with the same absolute workdir started a second process for every worker id
/// while the first automon ran.
#[test]
fn a_second_workerset_on_the_same_files_is_refused_naming_the_owner() {
    let fleet = Fleet::new(&Spec::default());
    let state_dir = fleet.state_dir();
    let copy = tempfile::tempdir().expect("tempdir");
    Fleet::write(
        copy.path(),
        &Spec {
            workdir: Some(fleet.path().to_path_buf()),
            ..Spec::default()
        },
    );
    let sampler = Sampler::start(&state_dir);
    let copy_sampler = Sampler::start(&copy.path().join(".automon"));
    let mut first = fleet.watch();
    wait_for("both workers to run", MINUTES, || {
        live_workers(&state_dir).len() == 2
    });
    let out = Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(copy.path())
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("second apply");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::thread::sleep(Duration::from_secs(1));
    let copy_live = live_workers(&copy.path().join(".automon"));
    let first_pid = first.id();
    cleanup(&state_dir, Some(&mut first));
    sampler.assert_never_two();
    let copy_sampled = copy_sampler.finish();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("another automon (pid {first_pid}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&state_dir.display().to_string()),
        "{stderr}"
    );
    assert!(
        copy_live.is_empty(),
        "the second automon started {copy_live:?}"
    );
    assert_eq!(
        copy_sampled.max_per_id, 0,
        "the second automon started nothing"
    );
    // Regression: the refused automon left its state directory's `lock` file behind.
    assert!(
        !copy.path().join(".automon").join("lock").exists(),
        "the refused automon left a lock file"
    );
}

/// Regression (fault safety 6): a caller's descriptor (here a FIFO on fd 7) leaked into the
/// loop and every worker, so whoever waited for it to close hung until the workers exited.
#[test]
fn inherited_descriptors_do_not_leak_into_the_loop_or_the_workers() {
    let fleet = Fleet::new(&Spec::default());
    let state_dir = fleet.state_dir();
    let fifo = fleet.path().join("caller.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // The reader: EOF once every holder of the write end has closed it.
    let reader_path = fifo.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(reader_path).expect("open fifo");
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let _ = tx.send(());
    });
    // The caller: a shell that opens the FIFO on fd 7 (not close-on-exec) and execs automon.
    let err = std::fs::File::create(fleet.path().join("automon.err")).expect("stderr file");
    let mut automon = Command::new("sh")
        .args([
            "-c",
            "exec \"$0\" apply workerset.yaml --watch 7>caller.fifo",
            env!("CARGO_BIN_EXE_automon"),
        ])
        .current_dir(fleet.path())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start automon");
    // Running the interpreter itself (python3 may be a shell shim that execs it).
    let python = |pid: &i32| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| e.to_string_lossy().contains("python"))
    };
    wait_for("both workers to run", MINUTES, || {
        let live = live_workers(&state_dir);
        live.len() == 2 && live.values().flatten().all(python)
    });
    let eof = rx.recv_timeout(MINUTES).is_ok();
    let loop_alive = automon.try_wait().ok().flatten().is_none();
    let mut worker_fds = Vec::new();
    for pid in live_workers(&state_dir).values().flatten() {
        let fds: BTreeMap<i32, PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("worker fds")
            .filter_map(|e| {
                let e = e.ok()?;
                Some((
                    e.file_name().to_str()?.parse().ok()?,
                    std::fs::read_link(e.path()).ok()?,
                ))
            })
            .collect();
        worker_fds.push((*pid, fds));
    }
    cleanup(&state_dir, Some(&mut automon));
    assert!(loop_alive, "the loop still runs");
    assert!(
        eof,
        "the caller's pipe never closed: automon or a worker still holds it"
    );
    for (pid, fds) in worker_fds {
        assert_eq!(
            fds.get(&0),
            Some(&PathBuf::from("/dev/null")),
            "pid {pid}: {fds:?}"
        );
        for fd in [1, 2] {
            assert!(
                fds.get(&fd)
                    .is_some_and(|p| p.starts_with(fleet.path().join("logs"))),
                "pid {pid}: stdout and stderr go to the worker's log: {fds:?}"
            );
        }
        // Anything else is the worker's own (an interpreter's shim may keep a script open).
        assert!(
            !fds.values().any(|p| p.ends_with("caller.fifo")),
            "pid {pid} inherited the caller's descriptor: {fds:?}"
        );
    }
}

/// Regression (fault safety 8): the replacement's "started pid N" was sometimes logged before
/// the old pid's "exited after the stop signal", which reads as two workers on one shard.
#[test]
fn a_replacement_is_never_logged_as_started_before_the_old_pid_is_gone() {
    let fleet = Fleet::new(&Spec {
        mode: "slow-term",
        shards: 1,
        target: 1,
        stop_grace: "5s",
        stuck_after: "2s",
        extra: "  fixes: {cooldown: 1s, max_attempts: 9, verify_after: 1s}\n".into(),
        ..Spec::default()
    });
    let state_dir = fleet.state_dir();
    let sampler = Sampler::start(&state_dir);
    let mut automon = fleet.watch();
    let restarts = |events: &str| events.matches("exited after the stop signal").count();
    wait_for("three stuck restarts", MINUTES, || {
        restarts(&fleet.events()) >= 3
    });
    wait_for("the third replacement", MINUTES, || {
        fleet.events().matches("worker 0: started pid").count() >= 4
    });
    let events = fleet.events();
    cleanup(&state_dir, Some(&mut automon));
    sampler.assert_never_two();
    // Every start after the first follows the report that the previous pid is gone.
    let mut previous: Option<String> = None;
    let mut gone = true;
    for line in events.lines() {
        if let Some(rest) = line.split("worker 0: started pid ").nth(1) {
            let pid = rest.split(':').next().unwrap_or_default().to_string();
            assert!(
                gone,
                "pid {pid} started before pid {previous:?} was reported gone:\n{events}"
            );
            previous = Some(pid);
            gone = false;
        } else if let Some(p) = &previous
            && line.contains(&format!("worker 0: pid {p} "))
        {
            gone = true;
        }
    }
}

/// Regression (fault safety 5): a hand-started worker whose `DB_URL`, `PYTHONPATH` and
/// interpreter differed from the manifest was adopted, `diff` said "the workers match the
/// manifest", and its next restart switched all three without a word.
#[test]
fn an_adopted_workers_differences_are_shown_and_its_restart_says_what_changed() {
    let fleet = Fleet::new(&Spec {
        shards: 1,
        target: 1,
        extra: "  adoption: {match_command: true}\n".into(),
        ..Spec::default()
    });
    // The manifest's environment for the workers.
    let manifest = fleet.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace(
            "env: {MODE: \"\",",
            "env: {DB_URL: \"postgres://app:new-s3cret@db/shelf\", PYTHONPATH: /srv/new, MODE: \"\",",
        ),
    )
    .expect("manifest");
    let worker = hand_start(
        fleet.path(),
        0,
        shard(1, 0),
        &[
            ("DB_URL", "postgres://app:old-s3cret@db/shelf".to_string()),
            ("PYTHONPATH", "/srv/old".to_string()),
            ("MODE", String::new()),
        ],
    );
    let pid = worker.id() as i32;
    reap(worker);
    let python = || {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| e.to_string_lossy().contains("python"))
    };
    wait_for("the hand-started worker to run", MINUTES, python);
    let run = |args: &[&str]| {
        let out = fleet.automon().args(args).output().expect("automon");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = run(&["apply", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (diff_code, diff, _) = run(&["diff", "workerset.yaml"]);
    let (_, get, _) = run(&["get", "workerset.yaml"]);
    // The restart applies the manifest and says so.
    sigkill_group(pid);
    wait_for("the adopted worker to be gone", MINUTES, || !alive(pid));
    let (code2, _, stderr2) = run(&["apply", "workerset.yaml"]);
    let events = fleet.events();
    cleanup(&fleet.state_dir(), None);
    assert_eq!(code2, Some(0), "{stderr2}");
    let expected = format!(
        "worker 0 (pid {pid}, adopted) differs from the manifest: env DB_URL differs (secret-looking: values not shown); env PYTHONPATH=/srv/old (a restart sets /srv/new)"
    );
    assert!(diff.contains(&expected), "{diff}");
    assert!(!diff.contains("the workers match the manifest"), "{diff}");
    assert_eq!(diff_code, Some(1), "a difference is a difference:\n{diff}");
    assert!(get.contains(&expected), "{get}");
    assert!(
        events.contains("as the manifest says, unlike the adopted process: env DB_URL differs"),
        "{events}"
    );
    for text in [&diff, &get, &events] {
        assert!(!text.contains("s3cret"), "no secret shown:\n{text}");
    }
}

/// A worker whose main process sits in state D: it `vfork`s a child that sleeps without
/// `exec`ing, so the parent waits in the kernel (shown as `D`). Compiled with `cc` into `dir`;
/// `None` (with the reason printed) where there is no C compiler.
fn d_state_worker(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("dproc.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) {\n  if (vfork() == 0) { sleep(3600); _exit(0); }\n  return 0;\n}\n",
    )
    .expect("source");
    let bin = dir.join("dproc");
    match Command::new("cc").arg("-o").arg(&bin).arg(&src).status() {
        Ok(s) if s.success() => Some(bin),
        other => {
            eprintln!("skipped: no C compiler to build a worker in state D ({other:?})");
            None
        }
    }
}

/// Regression (fault safety 7): a stuck worker in uninterruptible I/O was sent to the LLM
/// (and "stopping again" repeated every 16 s). Its state is the kernel's, not its code's: it
/// is restarted without a diagnosis request, and its state is named in the reason.
#[test]
fn a_stuck_worker_in_uninterruptible_io_is_restarted_without_asking_the_llm() {
    let fleet = Fleet::new(&Spec {
        shards: 1,
        target: 1,
        stuck_after: "2s",
        stop_grace: "3s",
        extra: "  llm: {enabled: true, base_url: \"http://127.0.0.1:9/v1\"}\n".into(),
        ..Spec::default()
    });
    let Some(_) = d_state_worker(fleet.path()) else {
        return;
    };
    let manifest = fleet.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replace(
            "command: [python3, worker.py, \"{id}\", \"{range_start}\", \"{range_end}\"]",
            "command: [./dproc, \"{id}\"]",
        ),
    )
    .expect("manifest");
    let state_dir = fleet.state_dir();
    let sampler = Sampler::start(&state_dir);
    let mut automon = fleet.watch();
    wait_for("a stuck restart", MINUTES, || {
        let e = fleet.events();
        e.contains("worker 0: pid") && e.matches("worker 0: started pid").count() >= 2
    });
    let events = fleet.events();
    cleanup(&state_dir, Some(&mut automon));
    sampler.assert_never_two();
    assert!(
        events.contains("process in uninterruptible I/O (D)"),
        "the reason names the state:\n{events}"
    );
    assert!(
        !events.contains("asking the LLM"),
        "no diagnosis request for a process in state D:\n{events}"
    );
}

/// Regression (fault safety 4): with the first automon gone (killed) and its workers running
/// on, a copy of the manifest with another state directory started a duplicate of every
/// worker on the same files. Its workers are reported, left alone, and not duplicated.
#[test]
fn a_second_workerset_does_not_duplicate_the_workers_of_a_killed_automon_on_the_same_files() {
    let fleet = Fleet::new(&Spec::default());
    let state_dir = fleet.state_dir();
    let out = fleet
        .automon()
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("both workers to run", MINUTES, || {
        live_workers(&state_dir).len() == 2
    });
    let copy = tempfile::tempdir().expect("tempdir");
    Fleet::write(
        copy.path(),
        &Spec {
            workdir: Some(fleet.path().to_path_buf()),
            ..Spec::default()
        },
    );
    let copy_state = copy.path().join(".automon");
    let out = Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(copy.path())
        .args(["apply", "workerset.yaml"])
        .output()
        .expect("second apply");
    std::thread::sleep(Duration::from_secs(1));
    let copy_live = live_workers(&copy_state);
    let first_live = live_workers(&state_dir);
    let events = std::fs::read_to_string(copy_state.join("events.log")).unwrap_or_default();
    cleanup(&state_dir, None);
    cleanup(&copy_state, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        copy_live.is_empty(),
        "duplicates started: {copy_live:?}\n{events}"
    );
    assert_eq!(
        first_live.len(),
        2,
        "the first automon's workers run on untouched"
    );
    for id in [0, 1] {
        assert!(
            events.contains(&format!("worker {id}: pid"))
                && events.contains("belongs to another automon"),
            "{events}"
        );
    }
}
