//! A migration fixture: a small generated Calibre library and a manifest in a temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn example(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/calibre-migration")
        .join(script)
}

pub struct Migration {
    pub dir: tempfile::TempDir,
    pub end: u64,
}

/// How long a test waits for a condition before it fails: generous, so that a loaded 2-core
/// machine (other builds, CPU hogs) never fails a test that is merely slow. A passing test never
/// waits this long; it polls.
pub const PATIENCE: Duration = Duration::from_secs(600);

/// Polls `ok` every 50 ms until it holds; panics naming `what` (and `detail()`) after
/// [`PATIENCE`].
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}:\n{}",
            detail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when Slurm's client commands are here and a cluster answers; else prints why the
/// calling test is skipped (never silently).
pub fn slurm_available(test: &str) -> bool {
    // On PATH, not `sbatch --version`: that fails without a cluster configuration too.
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("sbatch").is_file()));
    if !found {
        eprintln!(
            "SKIPPED {test}: sbatch not found (scripts/slurm-dev-cluster.sh up installs and starts a one-host cluster; .ci/run does)"
        );
        return false;
    }
    let answers = Command::new("sinfo")
        .args(["-h", "-N"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !answers {
        eprintln!(
            "SKIPPED {test}: sbatch is here but no cluster answers sinfo (eval \"$(scripts/slurm-dev-cluster.sh up)\" to start one and set SLURM_CONF)"
        );
    }
    answers
}

/// Held by every test that uses the one-host Slurm cluster: one at a time (it has four CPUs,
/// and one test stops its controller for a while).
pub fn slurm_lock() -> std::sync::MutexGuard<'static, ()> {
    static SLURM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SLURM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Knobs of a test migration.
pub struct Knobs {
    pub books: u32,
    pub fault: &'static str,
    pub upload_delay: &'static str,
    pub stuck_after: &'static str,
    pub discovery_grace: &'static str,
    pub stop_grace: &'static str,
    pub batch_size: u32,
    /// Extra lines appended to `spec` (two-space indented YAML).
    pub extra_spec: &'static str,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            books: 240,
            fault: "",
            upload_delay: "0.01",
            // Room for a loaded machine: a healthy worker starved of CPU for seconds is not stuck.
            stuck_after: "15s",
            discovery_grace: "30s",
            stop_grace: "2s",
            batch_size: 10,
            extra_spec: "",
        }
    }
}

impl Migration {
    pub fn new(knobs: &Knobs) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("python3")
            .arg(example("generate_library.py"))
            .args([
                "--library",
                "library",
                "--books",
                &knobs.books.to_string(),
                "--min-size",
                "500",
                "--max-size",
                "2000",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run generator");
        assert!(status.success(), "library generator failed");
        let out = Command::new("python3")
            .arg(example("generate_library.py"))
            .args(["--library", "library", "--print-end"])
            .current_dir(dir.path())
            .output()
            .expect("print end");
        let end: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("end is a number");
        let manifest = format!(
            r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: test-migration}}
spec:
  interval: 1s
  workers: {{target: 4, min: 1, max: 8}}
  work:
    range: {{start: 1, end: {end}}}
    shards: 8
    unit: book
  template:
    command: [python3, {worker}, --worker-id, "{{id}}", --library, library, --dest, shelf,
              --progress-dir, progress, --start-id, "{{range_start}}", --end-id, "{{range_end}}",
              --resume-from, "{{checkpoint}}", --batch-size, "{batch}", --upload-delay, "{delay}"]
    env: {{MIGRATION_FAULT: "{fault}", PYTHONUNBUFFERED: "1"}}
    stop_grace: {grace}
  progress: {{file: "progress/migration_progress_worker{{id}}.json", checkpoint: /last_processed_book_id, items: /books_migrated}}
  logs:
    file: "logs/worker{{id}}.log"
    upload_patterns: ["Successfully uploaded:", "Uploading:"]
    activity_patterns: ["Processed batch", "Found [\\d,]+ new files"]
  health: {{stuck_after: {stuck}, discovery_grace: {grace_disc}}}
  restart: {{backoff_initial: 1s, backoff_max: 4s}}
{extra}"#,
            worker = example("migrate_worker.py").display(),
            batch = knobs.batch_size,
            delay = knobs.upload_delay,
            fault = knobs.fault,
            grace = knobs.stop_grace,
            stuck = knobs.stuck_after,
            grace_disc = knobs.discovery_grace,
            extra = knobs.extra_spec,
        );
        std::fs::create_dir_all(dir.path().join("progress")).expect("mkdir");
        std::fs::write(dir.path().join("workerset.yaml"), manifest).expect("write manifest");
        Self { dir, end }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join(".automon")
    }

    pub fn automon(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_automon"));
        cmd.current_dir(self.path());
        cmd
    }

    /// Runs `apply --watch` to completion (or panics after [`PATIENCE`]); returns stderr.
    pub fn watch_to_completion(&self) -> String {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
            .current_dir(self.path())
            .args(["apply", "workerset.yaml", "--watch"])
            .timeout(PATIENCE)
            .output()
            .expect("run automon");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "automon failed:\n{stderr}");
        stderr
    }

    /// Runs the verifier; panics with its output unless every book is present exactly once.
    pub fn assert_verified(&self) {
        let out = Command::new("python3")
            .arg(example("verify_migration.py"))
            .args(["--library", "library", "--dest", "shelf"])
            .current_dir(self.path())
            .output()
            .expect("run verifier");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "verification failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("duplicates: 0"), "{text}");
    }

    pub fn events(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("events.log")).unwrap_or_default()
    }

    /// The shard `[start, end)` of worker `id` (8 shards over `[1, end)`).
    pub fn shard(&self, id: u64) -> (u64, u64) {
        let len = self.end - 1;
        (1 + len * id / 8, 1 + len * (id + 1) / 8)
    }

    /// The worker id whose shard holds `book`.
    pub fn owner(&self, book: u64) -> u64 {
        (0..8)
            .find(|i| {
                let (a, b) = self.shard(*i);
                (a..b).contains(&book)
            })
            .expect("book in range")
    }
}

/// The `--resume-from` values of every start of worker `id`, from the events log.
pub fn resume_points(events: &str, id: u64) -> Vec<u64> {
    let prefix = format!("worker {id}: started pid ");
    events
        .lines()
        .filter(|l| l.contains(&prefix))
        .filter_map(|l| {
            let args: Vec<&str> = l.split_whitespace().collect();
            let at = args.iter().position(|a| *a == "--resume-from")?;
            args.get(at + 1)?.parse().ok()
        })
        .collect()
}

/// On drop (also after a failed assertion): SIGKILL to the daemon, if any, and to every worker
/// process group of the state directory, so no test leaves workers behind.
pub struct Cleanup {
    pub daemon: Option<std::process::Child>,
    pub state_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for pids in super::migration::live_workers(&self.state_dir).values() {
            for pid in pids {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether `worker` was found stuck and stopped: by the stuck rule (`worker N: no progress for
/// …`, a restart), or, when the disk was saturated meanwhile (as under `bench/under-load.sh`'s
/// disk writer), by the disk rule, which parks the longest-stuck worker (`worker N stuck (…);
/// parking worker N`) and resumes it later from its checkpoint. Both are the product working;
/// a test that asserted only the first failed under load (the SIGSTOP test, run 4 of an
/// under-load run).
pub fn found_stuck(events: &str, worker: impl std::fmt::Display) -> bool {
    events.contains(&format!("worker {worker}: no progress for"))
        || (events.contains(&format!("worker {worker} stuck ("))
            && events.contains(&format!("parking worker {worker} ")))
}
