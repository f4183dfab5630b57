//! `automon start FILE [--state-dir DIR] [overrides] [metrics flags]`: runs the control loop in
//! the background. The current binary is run again as `automon apply FILE --watch --state-dir
//! DIR …` in its own process group, stdin from /dev/null, stdout and stderr appended to
//! `STATE_DIR/automon.log`; once it holds the lock it writes its pid and start time to
//! `STATE_DIR/automon.pid` itself. `start` returns
//! once the child holds the state directory's lock (it is then *the* automon of this WorkerSet)
//! and has finished its first pass (so a failure just after taking the lock — a metrics port in
//! use, a corrupt state file — is still reported), or fails with the end of its log when it exits
//! first.

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;

use super::CliError;
use super::apply::{MetricsArgs, OverrideArgs};
use super::logging::LogFormat;
use crate::state;

/// How long `start` waits for the child to take the lock and make its first pass (setup such as
/// `end_command` runs before it does).
const WAIT_FOR_LOCK: Duration = Duration::from_secs(30);

/// Lines of `automon.log` shown when the child exits at once.
const TAIL_LINES: usize = 20;

/// Log file of a background automon inside the state directory.
pub const LOG_FILE: &str = "automon.log";

/// Arguments of `start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Command-line overrides of manifest fields, passed on to the loop.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Metrics, passed on to the loop.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Runs `start`.
pub fn run(args: &StartArgs, log_format: LogFormat) -> Result<u8, CliError> {
    let (manifest, _) = super::load_manifest_with(&args.file, &args.overrides.overrides())?;
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    if let Some(running) = state::running_instance(&state_dir) {
        return Err(CliError::runtime(format!(
            "already running for {} ({}); stop it first with `automon stop {}`",
            manifest.file.display(),
            super::status::describe(&running),
            args.file.display()
        )));
    }
    let log_path = state_dir.join(LOG_FILE);
    let runtime = |what: &str, e: std::io::Error| CliError::runtime(format!("{what}: {e}"));
    crate::state::private::ensure_dir(&state_dir)
        .map_err(|e| runtime(&format!("cannot create {}", state_dir.display()), e))?;
    let log = crate::state::private::open_append(&log_path)
        .map_err(|e| runtime(&format!("cannot open {}", log_path.display()), e))?;
    let log_start = log.metadata().map_or(0, |m| m.len());
    let log_err = log
        .try_clone()
        .map_err(|e| runtime(&format!("cannot open {}", log_path.display()), e))?;
    let exe =
        std::env::current_exe().map_err(|e| runtime("cannot find the automon executable", e))?;
    let file = std::path::absolute(&args.file).unwrap_or_else(|_| args.file.clone());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--log-format", log_format.as_str(), "apply"])
        .arg(&file)
        .arg("--watch")
        .arg("--write-pid-file")
        .arg("--state-dir")
        .arg(&state_dir)
        .args(args.overrides.to_argv())
        .args(args.metrics.to_argv())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| runtime("cannot start the background automon", e))?;
    // The child writes the pid file once it holds the lock (a loser of a race never does).
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let deadline = Instant::now() + WAIT_FOR_LOCK;
    loop {
        let locked = state::running_instance(&state_dir).is_some_and(|i| i.pid == pid);
        let passed = || {
            state::read_status(&state_dir)
                .ok()
                .flatten()
                .is_some_and(|s| i64::from(s.pid) == i64::from(pid))
        };
        if locked && passed() {
            crate::outln!(
                "automon started in the background (pid {pid}) for {}; log: {}",
                manifest.file.display(),
                log_path.display()
            );
            return Ok(0);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail(&log_path, log_start, TAIL_LINES);
            return Err(CliError::runtime(format!(
                "the background automon (pid {pid}) exited at once ({status}); the end of {}:\n{tail}",
                log_path.display()
            )));
        }
        if Instant::now() >= deadline {
            crate::outln!(
                "automon started in the background (pid {pid}) but has not {} after {}s (setup still running?); follow {}",
                if locked {
                    "finished its first pass"
                } else {
                    "taken the state directory's lock"
                },
                WAIT_FOR_LOCK.as_secs(),
                log_path.display()
            );
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of `path` written after byte `from`.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(nothing was logged)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_only_what_was_written_after_the_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("automon.log");
        std::fs::write(&path, "old\n").expect("write");
        std::fs::write(&path, "old\na\nb\nc\n").expect("write");
        assert_eq!(log_tail(&path, 4, 2), "b\nc");
        assert_eq!(log_tail(&path, 4, 10), "a\nb\nc");
        assert_eq!(log_tail(&path, 12, 10), "(nothing was logged)");
    }
}
