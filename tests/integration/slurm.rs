//! `spec.runtime: slurm` against the real one-host cluster (`scripts/slurm-dev-cluster.sh up`;
//! `.ci/run` brings it up): the demo migration as Slurm jobs, with a crash, a hang, a worker
//! deaf to SIGTERM, automon SIGKILLed mid-run, and the controller stopped for a while. Without
//! `sbatch` or a cluster each test says SKIPPED and why.
//!
//! The tests take [`super::support::SLURM`] one at a time: the cluster has four CPUs, and one of
//! them stops its controller.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::support::{Knobs, Migration, PATIENCE, slurm_available, wait_until};

/// A migration whose workers run as Slurm jobs, under a WorkerSet name of its own (job names
/// are cluster-wide).
fn slurm_migration(name: &str, knobs: Knobs) -> Migration {
    let m = Migration::new(&Knobs {
        extra_spec: "  runtime: {kind: slurm}\n",
        ..knobs
    });
    let file = m.path().join("workerset.yaml");
    let text = std::fs::read_to_string(&file).expect("manifest");
    std::fs::write(
        &file,
        text.replace("name: test-migration", &format!("name: {name}")),
    )
    .expect("rename");
    m
}

/// The crash/hang/freeze book in the middle of shard `id`.
fn mid_shard(books: u32, id: u64) -> u64 {
    let probe = Migration::new(&Knobs {
        books,
        ..Knobs::default()
    });
    let (a, b) = probe.shard(id);
    a + (b - a) * 2 / 3
}

/// `(job id, --resume-from)` of every submission of worker `id`, from the events log.
fn submissions(events: &str, id: u64) -> Vec<(u64, u64)> {
    let prefix = format!("worker {id}: submitted job ");
    events
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            let job = rest.split(':').next()?.parse().ok()?;
            let args: Vec<&str> = rest.split_whitespace().collect();
            let at = args.iter().position(|a| *a == "--resume-from")?;
            Some((job, args.get(at + 1)?.parse().ok()?))
        })
        .collect()
}

/// Live (not terminal) jobs of WorkerSet `name`, per job name, as squeue lists them now;
/// `None` when squeue does not answer.
fn live_jobs(name: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let out = Command::new("squeue")
        .args(["-h", "-t", "PD,CF,R,CG,S,ST,SI,RS,SO", "-o", "%j %i %T"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let prefix = format!("automon/{name}/");
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        if let (Some(job_name), Some(id), Some(state)) = (f.next(), f.next(), f.next())
            && job_name.starts_with(&prefix)
        {
            by_name
                .entry(job_name.to_string())
                .or_default()
                .push(format!("{id} {state}"));
        }
    }
    Some(by_name)
}

/// Each time a worker had two live jobs: its job name and the jobs (`id STATE`).
type Duplicates = Vec<(String, Vec<String>)>;

/// Watches, until dropped, that no worker of WorkerSet `name` ever has two live jobs.
struct DuplicateWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Duplicates>>,
}

impl DuplicateWatch {
    fn start(name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                for (job_name, jobs) in live_jobs(&name).unwrap_or_default() {
                    if jobs.len() > 1 {
                        seen.push((job_name, jobs));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; the times a worker had two live jobs.
    fn finish(mut self) -> Duplicates {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("watch"))
            .unwrap_or_default()
    }
}

impl Drop for DuplicateWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// On drop (also after a failed assertion): SIGKILL to the daemon, if any, and `scancel` of
/// every job of the WorkerSet, so no test leaves jobs in the cluster.
struct SlurmCleanup {
    daemon: Option<std::process::Child>,
    name: String,
}

impl SlurmCleanup {
    /// Cancels what an earlier run of the same test may have left (its cleanup could not reach
    /// a stopped controller), and waits until none of it lives: the duplicate watch counts
    /// every live job of the name.
    fn new(name: &str) -> Self {
        let cleanup = Self {
            daemon: None,
            name: name.into(),
        };
        cleanup.cancel_all();
        wait_until(
            "no live job left by an earlier run",
            || live_jobs(name).is_some_and(|j| j.is_empty()),
            || format!("{:?}", live_jobs(name)),
        );
        cleanup
    }

    fn cancel_all(&self) {
        for id in 0..8 {
            let _ = Command::new("scancel")
                .arg(format!("--name=automon/{}/{id}", self.name))
                .output();
        }
    }
}

impl Drop for SlurmCleanup {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            let _ = d.kill();
            let _ = d.wait();
        }
        self.cancel_all();
    }
}

/// `scripts/slurm-dev-cluster.sh up` (idempotent: starts only what is not running).
fn cluster_up() -> std::process::ExitStatus {
    Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-dev-cluster.sh"),
    )
    .arg("up")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .status()
    .expect("run scripts/slurm-dev-cluster.sh up")
}

/// On drop (also after a failed assertion), the controller a test stopped runs again, so the
/// tests after it find a cluster. Declare it after the [`SlurmCleanup`]: it then drops first
/// (reverse order of declaration), and the cleanup's `scancel` finds a controller.
struct ControllerBack;

impl Drop for ControllerBack {
    fn drop(&mut self) {
        let _ = cluster_up();
    }
}

fn watch(m: &Migration) -> std::process::Child {
    m.automon()
        .args(["apply", "workerset.yaml", "--watch"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn automon")
}

/// Waits (up to [`PATIENCE`]) for the daemon to end on its own; its stderr, after asserting
/// it succeeded. Killed, with the events in the panic, when it does not end.
fn wait_done(m: &Migration, mut child: std::process::Child) -> String {
    use std::io::Read;
    let mut pipe = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "automon did not finish within {PATIENCE:?}:\n{}",
                m.events()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = reader.join().expect("stderr");
    assert_eq!(status.code(), Some(0), "automon failed:\n{stderr}");
    stderr
}

#[test]
fn slurm_runtime_migrates_with_a_crash_and_a_hang_and_every_book_arrives_once() {
    let test = "slurm_runtime_migrates_with_a_crash_and_a_hang_and_every_book_arrives_once";
    let _one = super::support::slurm_lock();
    if !slurm_available(test) {
        return;
    }
    let books = 300;
    let (crash, hang) = (mid_shard(books, 2), mid_shard(books, 5));
    let fault: &'static str = Box::leak(format!("crash:{crash},hang:{hang}").into_boxed_str());
    let name = "slurm-crash-hang";
    let m = slurm_migration(
        name,
        Knobs {
            books,
            fault,
            // Room for a loaded machine and a job's start-up on a node.
            stuck_after: "20s",
            discovery_grace: "60s",
            ..Knobs::default()
        },
    );
    let mut cleanup = SlurmCleanup::new(name);
    let duplicates = DuplicateWatch::start(name);
    cleanup.daemon = Some(watch(&m));
    let stderr = wait_done(&m, cleanup.daemon.take().expect("daemon"));
    assert!(duplicates.finish().is_empty(), "a worker had two live jobs");
    m.assert_verified();
    let events = m.events();
    assert!(stderr.contains("all 8 shards complete"), "{stderr}");
    // The crashed shard's job failed with exit 3 and was resubmitted from its checkpoint.
    let owner = m.owner(crash);
    let (start, _) = m.shard(owner);
    let subs = submissions(&events, owner);
    assert!(subs.len() >= 2, "worker {owner} submitted once:\n{events}");
    assert_eq!(subs[0].1, start - 1, "{subs:?}");
    assert!(subs[1..].iter().all(|(_, r)| *r > start - 1), "{subs:?}");
    assert!(
        events.contains(&format!("worker {owner} exited with status 3")),
        "{events}"
    );
    // The hung one was stopped with the grace (scancel) and resubmitted from its checkpoint.
    let owner = m.owner(hang);
    let (start, _) = m.shard(owner);
    assert!(super::support::found_stuck(&events, owner), "{events}");
    let subs = submissions(&events, owner);
    assert!(subs.len() >= 2, "{events}");
    assert!(subs[1..].iter().all(|(_, r)| *r > start - 1), "{subs:?}");
    assert!(
        events.contains(&format!("worker {owner}: job {}", subs[0].0)),
        "the stop names the job:\n{events}"
    );
}

#[test]
fn automon_sigkilled_under_slurm_adopts_its_running_jobs_without_submitting_duplicates() {
    let test =
        "automon_sigkilled_under_slurm_adopts_its_running_jobs_without_submitting_duplicates";
    let _one = super::support::slurm_lock();
    if !slurm_available(test) {
        return;
    }
    let name = "slurm-adopt";
    // Not about stuck detection: thresholds a loaded machine cannot trip; shards of 25 books at
    // 0.3 s each keep the jobs running well past the kill.
    let m = slurm_migration(
        name,
        Knobs {
            books: 200,
            upload_delay: "0.3",
            batch_size: 5,
            stuck_after: "120s",
            discovery_grace: "120s",
            ..Knobs::default()
        },
    );
    let mut cleanup = SlurmCleanup::new(name);
    let duplicates = DuplicateWatch::start(name);
    cleanup.daemon = Some(watch(&m));
    wait_until(
        "4 running jobs, one with a checkpoint",
        || {
            live_jobs(name).is_some_and(|j| {
                j.values()
                    .filter(|v| v.iter().any(|s| s.ends_with("RUNNING")))
                    .count()
                    >= 4
            }) && (0..8).any(|i| {
                m.path()
                    .join(format!("progress/migration_progress_worker{i}.json"))
                    .exists()
            })
        },
        || m.events(),
    );
    if let Some(mut d) = cleanup.daemon.take() {
        d.kill().expect("SIGKILL automon");
        d.wait().expect("reap automon");
    }
    let survivors: Vec<u64> = live_jobs(name)
        .unwrap_or_default()
        .keys()
        .filter_map(|n| n.rsplit('/').next()?.parse().ok())
        .collect();
    assert!(!survivors.is_empty(), "jobs outlive a killed automon");
    cleanup.daemon = Some(watch(&m));
    let stderr = wait_done(&m, cleanup.daemon.take().expect("daemon"));
    assert!(duplicates.finish().is_empty(), "a worker had two live jobs");
    m.assert_verified();
    let events = m.events();
    for id in &survivors {
        assert_eq!(
            submissions(&events, *id).len(),
            1,
            "worker {id} was submitted again although its job lived on:\n{events}"
        );
    }
    assert!(
        events.contains("adopted job"),
        "the restarted automon adopted no job:\n{events}"
    );
    assert!(stderr.contains("all 8 shards complete"), "{stderr}");
}

#[test]
fn a_sigterm_deaf_job_is_killed_after_stop_grace_and_not_replaced_before_it_is_terminal() {
    let test =
        "a_sigterm_deaf_job_is_killed_after_stop_grace_and_not_replaced_before_it_is_terminal";
    let _one = super::support::slurm_lock();
    if !slurm_available(test) {
        return;
    }
    let books = 240;
    let freeze = mid_shard(books, 1);
    let fault: &'static str = Box::leak(format!("freeze:{freeze}").into_boxed_str());
    let name = "slurm-deaf";
    let m = slurm_migration(
        name,
        Knobs {
            books,
            fault,
            stop_grace: "2s",
            stuck_after: "20s",
            discovery_grace: "60s",
            ..Knobs::default()
        },
    );
    let mut cleanup = SlurmCleanup::new(name);
    // The watch is the point: a replacement submitted while the deaf job still lives (RUNNING
    // or COMPLETING) would be a second live job of the worker.
    let duplicates = DuplicateWatch::start(name);
    cleanup.daemon = Some(watch(&m));
    wait_done(&m, cleanup.daemon.take().expect("daemon"));
    let seen = duplicates.finish();
    assert!(seen.is_empty(), "a worker had two live jobs: {seen:?}");
    m.assert_verified();
    let events = m.events();
    let owner = m.owner(freeze);
    let subs = submissions(&events, owner);
    assert!(subs.len() >= 2, "{events}");
    assert!(
        events.contains(&format!(
            "worker {owner}: job {} did not end within the grace period; killed with SIGKILL",
            subs[0].0
        )),
        "{events}"
    );
}

#[test]
fn slurmctld_stopped_for_a_while_holds_automon_which_says_why_and_then_carries_on() {
    let test = "slurmctld_stopped_for_a_while_holds_automon_which_says_why_and_then_carries_on";
    let _one = super::support::slurm_lock();
    if !slurm_available(test) {
        return;
    }
    let Some(conf) = std::env::var_os("SLURM_CONF").map(PathBuf::from) else {
        eprintln!("SKIPPED {test}: SLURM_CONF is not set (the dev cluster's `up` prints it)");
        return;
    };
    let pid_file = conf.with_file_name("run").join("slurmctld.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        eprintln!(
            "SKIPPED {test}: {} is missing: not the dev cluster of scripts/slurm-dev-cluster.sh",
            pid_file.display()
        );
        return;
    };
    let name = "slurm-ctld";
    let m = slurm_migration(
        name,
        Knobs {
            books: 200,
            upload_delay: "0.1",
            batch_size: 5,
            stuck_after: "120s",
            discovery_grace: "120s",
            ..Knobs::default()
        },
    );
    let mut cleanup = SlurmCleanup::new(name);
    let duplicates = DuplicateWatch::start(name);
    cleanup.daemon = Some(watch(&m));
    wait_until(
        "a job submitted",
        || m.events().contains("submitted job"),
        || m.events(),
    );
    // The controller goes away (its jobs keep running on the nodes) ...
    let _back = ControllerBack;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM slurmctld");
    wait_until(
        "slurmctld to exit",
        || {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        },
        || format!("slurmctld pid {pid} still runs"),
    );
    // ... automon's pass finds no answer and holds, saying why (the hold, not merely a failed
    // submission: a pass whose squeue failed) ...
    let hold = "could not look for running workers (the Slurm scheduler does not answer";
    wait_until(
        "automon to hold because the scheduler does not answer",
        || m.events().contains(hold),
        || m.events(),
    );
    // ... having judged no job gone and failed no worker while it could not see them ...
    let during = m.events();
    assert!(
        !during.contains("left the queue"),
        "a job was judged gone blind:
{during}"
    );
    assert!(!during.contains("ALERT"), "{during}");
    // ... and the controller comes back: the run carries on to the end.
    let up = cluster_up();
    assert!(up.success(), "scripts/slurm-dev-cluster.sh up: {up}");
    let stderr = wait_done(&m, cleanup.daemon.take().expect("daemon"));
    assert!(duplicates.finish().is_empty(), "a worker had two live jobs");
    m.assert_verified();
    let events = m.events();
    assert!(
        events.contains("starting nothing until automon can"),
        "the hold says what it holds:\n{events}"
    );
    // Regression: the hold was said again on every pass while the controller was down. Now
    // each hold is said when it begins and when it ends.
    let (begun, ended) = (
        events.matches("starting nothing until automon can").count(),
        events.matches("; carrying on").count(),
    );
    assert!(
        begun == ended && begun <= 3,
        "{begun} hold(s) begun, {ended} ended:\n{events}"
    );
    // Regression: after the hold, this run's own jobs, seen again, were logged as "adopted
    // job N (recorded by an earlier automon)"; no earlier automon ran.
    assert!(
        !events.contains("recorded by an earlier automon"),
        "this run's own jobs called an earlier automon's:\n{events}"
    );
    assert!(stderr.contains("all 8 shards complete"), "{stderr}");
}
