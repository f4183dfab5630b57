//! `automon stop FILE [--state-dir DIR] [--timeout D]`: stops the control loop of a WorkerSet
//! (started by `automon start` or running in a terminal) with SIGTERM and waits for it to exit.
//! Its workers keep running; the next `automon start`/`apply` adopts them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::CliError;
use crate::manifest::HumanDuration;
use crate::state;

/// Arguments of `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How long to wait for the loop to exit after SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = HumanDuration::parse, default_value = "30s")]
    pub timeout: HumanDuration,
}

/// Runs `stop`.
pub fn run(args: &StopArgs) -> Result<u8, CliError> {
    let (state_dir, _) = super::loop_state_dir(&args.file, args.state_dir.as_deref())?;
    let Some(instance) = state::running_instance(&state_dir) else {
        return Err(CliError::runtime(format!(
            "not running for {} (no live automon holds {}); nothing to stop",
            args.file.display(),
            state_dir.join("lock").display()
        )));
    };
    // Re-checked right before the signal: a pid reused since the check is never signalled.
    if !instance.is_alive() {
        return Err(CliError::runtime(format!(
            "automon (pid {}) exited just now; nothing to stop",
            instance.pid
        )));
    }
    kill(Pid::from_raw(instance.pid), Signal::SIGTERM).map_err(|e| {
        CliError::runtime(format!("cannot signal automon (pid {}): {e}", instance.pid))
    })?;
    let deadline = Instant::now() + args.timeout.0;
    while instance.is_alive() {
        if Instant::now() >= deadline {
            return Err(CliError::runtime(format!(
                "automon (pid {}) did not exit within {} of SIGTERM; its workers are untouched",
                instance.pid, args.timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    state::remove_pid_file(&state_dir, instance.pid);
    let workers = match state::read_status(&state_dir) {
        Ok(Some(s)) => match s.running {
            1 => "1 worker keeps running".to_string(),
            n => format!("{n} workers keep running"),
        },
        _ => "its workers keep running".to_string(),
    };
    crate::outln!(
        "automon (pid {}) stopped; {workers}: `automon start {}` adopts them",
        instance.pid,
        args.file.display()
    );
    Ok(0)
}
