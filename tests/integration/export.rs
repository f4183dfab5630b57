//! `automon export kubernetes|slurm`, `automon probe` and `automon run-worker` on real files,
//! real processes and (when `sbatch` is present) the one-host Slurm cluster of
//! scripts/slurm-dev-cluster.sh.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::support::{Knobs, Migration, slurm_available, wait_until};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn automon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_automon"))
}

fn export_demo(args: &[&str]) -> (String, String) {
    let out = automon()
        .current_dir(repo())
        .args(["export"])
        .args(args)
        .output()
        .expect("run automon export");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "export failed:\n{stderr}");
    (stdout, stderr)
}

#[test]
fn kubernetes_export_of_the_demo_manifest_yaml() {
    // The demo's range end comes from its generated library; fixed here as the README's 2,000
    // books give it.
    let (yaml, _) = export_demo(&[
        "kubernetes",
        "manifests/migration.yaml",
        "--range-end",
        "2001",
    ]);
    insta::assert_snapshot!(yaml);
}

#[test]
fn kubernetes_export_of_the_demo_manifest_json_puts_the_header_on_stderr() {
    let (json, stderr) = export_demo(&[
        "kubernetes",
        "manifests/migration.yaml",
        "--range-end",
        "2001",
        "-o",
        "json",
    ]);
    let job: serde_json::Value = serde_json::from_str(&json).expect("stdout is one JSON object");
    let spec = &job["spec"];
    assert_eq!(job["kind"], "Job");
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 8);
    assert_eq!(spec["parallelism"], 4);
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    assert_eq!(
        spec["template"]["spec"]["terminationGracePeriodSeconds"],
        10
    );
    assert_eq!(
        spec["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"],
        serde_json::json!(["automon", "probe", "manifests/migration.yaml"])
    );
    assert!(
        stderr.contains("# Minimum Kubernetes version: 1.33")
            && stderr.contains("Not carried over"),
        "{stderr}"
    );
}

#[test]
fn slurm_export_of_the_demo_manifest() {
    let (script, _) = export_demo(&[
        "slurm",
        "manifests/migration.yaml",
        "--range-end",
        "2001",
        "--automon",
        "/opt/automon/bin/automon",
    ]);
    insta::assert_snapshot!(script.replace(&*repo().to_string_lossy(), "[repo]"));
}

/// The kubernetes-validate executable: $AUTOMON_KUBERNETES_VALIDATE (set by .ci/run), the
/// virtualenv .ci/run creates, or PATH.
fn kubernetes_validate() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("AUTOMON_KUBERNETES_VALIDATE").map(PathBuf::from),
        Some(repo().join("target/kubernetes-validate/bin/kubernetes-validate")),
        Some(PathBuf::from("kubernetes-validate")),
    ];
    candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn exported_job_passes_kubernetes_validate_strict_on_1_33_and_the_newest_version() {
    let Some(tool) = kubernetes_validate() else {
        eprintln!(
            "SKIPPED exported_job_passes_kubernetes_validate_strict_on_1_33_and_the_newest_version: \
             kubernetes-validate not found (pip install kubernetes-validate, or run .ci/run, which \
             installs it into target/kubernetes-validate)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (format, file) in [("yaml", "job.yaml"), ("json", "job.json")] {
        let (text, _) = export_demo(&[
            "kubernetes",
            "manifests/migration.yaml",
            "--range-end",
            "2001",
            "-o",
            format,
        ]);
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        // No -k: the newest version the tool bundles.
        for version in [Some("1.33.0"), None] {
            let mut cmd = Command::new(&tool);
            cmd.arg("--strict");
            if let Some(v) = version {
                cmd.args(["-k", v]);
            }
            let out = cmd.arg(&path).output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.contains("passed"),
                "kubernetes-validate --strict {version:?} {file}:\n{said}"
            );
            eprintln!("{}", said.trim());
        }
    }
}

// --- automon probe ----------------------------------------------------------------------

const PROBE_MANIFEST: &str = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: probed}
spec:
  work: {range: {start: 1, end: 401}, shards: 4}
  template:
    command: [sh, -c, 'echo "id=$1 start=$2 end=$3 from=$4"', sh, "{id}", "{range_start}", "{range_end}", "{checkpoint}"]
  progress: {file: "progress/w{id}.json", checkpoint: /last}
  logs:
    file: "logs/w{id}.log"
    upload_patterns: ["Successfully uploaded:"]
    activity_patterns: ["Processed batch"]
  health: {stuck_after: 5m, discovery_grace: 20m}
"#;

fn probe_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ws.yaml"), PROBE_MANIFEST).unwrap();
    std::fs::create_dir_all(dir.path().join("progress")).unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    dir
}

fn ago(minutes: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(minutes * 60)
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).unwrap().to_string()
}

/// Writes `text` to `path` with its modification time set to `mtime`.
fn write_at(path: &Path, text: &str, mtime: SystemTime) {
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn probe(dir: &Path, worker: &str, started: SystemTime) -> (Option<i32>, String, String) {
    let out = automon()
        .current_dir(dir)
        .args(["probe", "ws.yaml", "--worker", worker, "--started-at"])
        .arg(rfc3339(started))
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn probe_exits_0_for_a_worker_whose_progress_file_was_written_recently() {
    let dir = probe_dir();
    write_at(
        &dir.path().join("progress/w1.json"),
        r#"{"last": 150}"#,
        ago(1),
    );
    let (code, stdout, stderr) = probe(dir.path(), "1", ago(30));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("worker 1: ok: 1m")
            && stdout.contains("since its last progress signal (threshold 5m stuck_after, progressing) at checkpoint 150"),
        "{stdout}"
    );
}

#[test]
fn probe_exits_1_with_the_reason_when_the_progress_signal_is_older_than_stuck_after() {
    let dir = probe_dir();
    write_at(
        &dir.path().join("progress/w1.json"),
        r#"{"last": 150}"#,
        ago(10),
    );
    let (code, stdout, stderr) = probe(dir.path(), "1", ago(30));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("worker 1: stuck: no progress for 10m")
            && stderr.contains("(threshold 5m stuck_after, progressing) at checkpoint 150"),
        "{stderr}"
    );
}

/// Regression (fresh-clone user test): the probe of a worker whose shard was complete said
/// "stuck: no progress for 16m12s" (exit 1); a finished shard is not a hung worker.
#[test]
fn probe_exits_0_for_a_worker_whose_checkpoint_reached_its_shards_end() {
    let dir = probe_dir();
    // Worker 1's shard is [101, 201): its last key is 200.
    write_at(
        &dir.path().join("progress/w1.json"),
        r#"{"last": 200}"#,
        ago(16),
    );
    let (code, stdout, stderr) = probe(dir.path(), "1", ago(30));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("worker 1: shard complete (checkpoint 200"),
        "{stdout}"
    );
}

#[test]
fn probe_measures_discovery_grace_from_the_start_before_the_first_progress() {
    let dir = probe_dir();
    // A progress file from a previous run (before this start) is no signal of this one.
    write_at(
        &dir.path().join("progress/w2.json"),
        r#"{"last": 220}"#,
        ago(60),
    );
    let (code, stdout, stderr) = probe(dir.path(), "2", ago(15));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("since its start (threshold 20m discovery_grace, discovering)"),
        "{stdout}"
    );
    let (code, stdout, stderr) = probe(dir.path(), "2", ago(25));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("stuck: no progress for 25m")
            && stderr.contains("since its start (threshold 20m discovery_grace, discovering)"),
        "{stderr}"
    );
}

#[test]
fn probe_counts_a_timestamped_upload_line_as_progress_and_a_repeated_line_once() {
    let dir = probe_dir();
    let local = |t: SystemTime| {
        jiff::Timestamp::try_from(t)
            .unwrap()
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S,000")
            .to_string()
    };
    // An upload 2 minutes ago: progressing, within stuck_after.
    let log = format!(
        "{} - INFO - Processed batch 1\n{} - INFO - Successfully uploaded: book 7\n",
        local(ago(20)),
        local(ago(2))
    );
    write_at(&dir.path().join("logs/w0.log"), &log, ago(2));
    let (code, stdout, stderr) = probe(dir.path(), "0", ago(40));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("2m") && stdout.contains("progressing"),
        "{stdout}"
    );
    // The same upload line again 1 minute ago is not new progress: 8 minutes of silence since
    // the first one.
    let log = format!(
        "{} - INFO - Successfully uploaded: book 7\n{} - INFO - Successfully uploaded: book 7\n",
        local(ago(8)),
        local(ago(1))
    );
    write_at(&dir.path().join("logs/w0.log"), &log, ago(1));
    let (code, stdout, stderr) = probe(dir.path(), "0", ago(40));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("no progress for 8m"), "{stderr}");
}

#[test]
fn probe_takes_the_worker_from_job_completion_index_and_the_start_from_a_process() {
    let dir = probe_dir();
    let mut child = Command::new("sleep").arg("600").spawn().unwrap();
    let out = automon()
        .current_dir(dir.path())
        .args(["probe", "ws.yaml", "--pid"])
        .arg(child.id().to_string())
        .env("JOB_COMPLETION_INDEX", "3")
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("worker 3: ok:") && stdout.contains("since its start"),
        "{stdout}"
    );
    // An index the WorkerSet does not have is bad input.
    let out = automon()
        .current_dir(dir.path())
        .args(["probe", "ws.yaml", "--worker", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no worker 4 (this WorkerSet has workers 0–3)")
    );
}

// --- automon run-worker -----------------------------------------------------------------

fn run_worker(dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = automon();
    cmd.current_dir(dir)
        .args(["run-worker", "ws.yaml"])
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn run_worker_renders_the_shard_and_resumes_from_the_progress_file_checkpoint() {
    let dir = probe_dir();
    std::fs::write(dir.path().join("progress/w1.json"), r#"{"last": 120}"#).unwrap();
    let out = run_worker(dir.path(), &[("SLURM_ARRAY_TASK_ID", "1")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint 120"));
    let log = std::fs::read_to_string(dir.path().join("logs/w1.log")).unwrap();
    assert_eq!(log, "id=1 start=101 end=201 from=120\n");
    // No progress file: from the shard's start (range_start - 1).
    let out = run_worker(dir.path(), &[("JOB_COMPLETION_INDEX", "2")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let log = std::fs::read_to_string(dir.path().join("logs/w2.log")).unwrap();
    assert_eq!(log, "id=2 start=201 end=301 from=200\n");
}

#[test]
fn run_worker_exits_0_without_running_a_complete_shard() {
    let dir = probe_dir();
    std::fs::write(dir.path().join("progress/w0.json"), r#"{"last": 100}"#).unwrap();
    let out = run_worker(dir.path(), &[("SLURM_ARRAY_TASK_ID", "0")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("worker 0: its shard is complete"));
    assert!(!dir.path().join("logs/w0.log").exists());
}

#[test]
fn run_worker_refuses_to_restart_from_the_shard_start_when_the_progress_file_is_unreadable() {
    let dir = probe_dir();
    std::fs::write(dir.path().join("progress/w3.json"), r#"{"last": 3"#).unwrap();
    let out = run_worker(dir.path(), &[("SLURM_ARRAY_TASK_ID", "3")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is unreadable")
            && stderr.contains("not starting worker 3 from its shard's start"),
        "{stderr}"
    );
    assert!(!dir.path().join("logs/w3.log").exists());
}

#[test]
fn run_worker_execs_the_worker_in_its_place_so_signals_and_the_probe_see_the_worker_itself() {
    let dir = probe_dir();
    let manifest = PROBE_MANIFEST.replace(
        r#"command: [sh, -c, 'echo "id=$1 start=$2 end=$3 from=$4"', sh, "{id}", "{range_start}", "{range_end}", "{checkpoint}"]"#,
        r#"command: [sleep, "600"]"#,
    );
    assert_ne!(manifest, PROBE_MANIFEST);
    std::fs::write(dir.path().join("ws.yaml"), manifest).unwrap();
    let mut child = automon()
        .current_dir(dir.path())
        .args(["run-worker", "ws.yaml", "--worker", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cmdline = format!("/proc/{}/cmdline", child.id());
    wait_until(
        "run-worker's pid to run the worker (sleep 600)",
        || std::fs::read(&cmdline).is_ok_and(|c| c == b"sleep\x00600\x00"),
        || {
            format!(
                "{:?}",
                std::fs::read(&cmdline).map(|c| String::from_utf8_lossy(&c).into_owned())
            )
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

// --- the Slurm array on the one-host cluster ---------------------------------------------

fn sbatch(dir: &Path, script: &Path) -> String {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "sbatch failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Waits until no element of array `job` is pending, running or completing.
fn wait_array_done(job: &str) {
    wait_until(
        &format!("Slurm array {job} to finish"),
        || {
            Command::new("squeue")
                .args(["-h", "-j", job, "-t", "PD,R,CG,CF", "-o", "%i"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
        },
        || {
            let o = Command::new("squeue")
                .args(["-j", job, "-t", "all"])
                .output();
            format!("{o:?}")
        },
    );
}

#[test]
fn exported_slurm_array_runs_the_demo_migration_to_completion_and_a_resubmission_resumes_the_crashed_shard()
 {
    let test = "exported_slurm_array_runs_the_demo_migration_to_completion_and_a_resubmission_resumes_the_crashed_shard";
    let _one = super::support::slurm_lock();
    if !slurm_available(test) {
        return;
    }
    // Learn the shard layout, then put a crash in the middle of shard 2.
    let layout = Migration::new(&Knobs {
        books: 300,
        ..Knobs::default()
    });
    let (a, b) = layout.shard(2);
    let book = a + (b - a) * 2 / 3;
    let fault: &'static str = Box::leak(format!("crash:{book}").into_boxed_str());
    let m = Migration::new(&Knobs {
        books: 300,
        fault,
        ..Knobs::default()
    });
    let out = automon()
        .current_dir(m.path())
        .args(["export", "slurm", "workerset.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = m.path().join("array.sh");
    std::fs::write(&script, &out.stdout).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("#SBATCH --array=0-7%4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Submitted twice at once: the second waits for the first (singleton), whose crashed
    // element stays down (retries by Slurm, judgment by nobody); the second resumes it from its
    // checkpoint, and its finished shards exit at once.
    let first = sbatch(m.path(), &script);
    let second = sbatch(m.path(), &script);
    wait_array_done(&first);
    wait_array_done(&second);
    let times = |job: &str| -> Vec<(String, String)> {
        let out = Command::new("squeue")
            .args(["-h", "-j", job, "-t", "all", "-o", "%S %e"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, e)| (s.to_string(), e.to_string()))
            .collect()
    };
    let (first_times, second_times) = (times(&first), times(&second));
    assert_eq!(first_times.len(), 8, "{first_times:?}");
    assert_eq!(second_times.len(), 8, "{second_times:?}");
    let first_end = first_times.iter().map(|(_, e)| e).max().unwrap();
    let second_start = second_times.iter().map(|(s, _)| s).min().unwrap();
    assert!(
        second_start >= first_end,
        "the second array started ({second_start}) before the first ended ({first_end})"
    );
    let owner = m.owner(book);
    let (start, end) = m.shard(owner);
    let out = std::fs::read_to_string(m.path().join(format!("slurm-{second}_{owner}.out")))
        .unwrap_or_default();
    let resumed: u64 = out
        .split("resuming from checkpoint ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("second run of shard {owner} did not resume:\n{out}"));
    assert!(
        resumed > start - 1 && resumed < end - 1,
        "shard {owner} [{start}, {end}) crashed at book {book}; the second run resumed from {resumed}"
    );
    let done =
        std::fs::read_to_string(m.path().join(format!("slurm-{second}_0.out"))).unwrap_or_default();
    assert!(done.contains("worker 0: its shard is complete"), "{done}");
    m.assert_verified();
}
