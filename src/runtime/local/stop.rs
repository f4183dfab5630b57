//! Stopping a worker: the stop signal to its process group (or, for an adopted process that does
//! not lead a group, to the process alone), wait up to `grace`, SIGKILL, then confirm it is gone.
//! The leader's identity is re-checked before every signal: a pid that now belongs to a stranger
//! is never signalled.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::observe::{ProcessIdentity, ProcessStatus, proc};

/// How a stop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// It exited after the stop signal.
    Graceful,
    /// It had to be killed after the grace period.
    Killed,
    /// It was already gone.
    AlreadyGone,
    /// The pid belongs to another process now; nothing was signalled.
    NotOurs,
    /// It survived SIGKILL (e.g. stuck in uninterruptible I/O).
    Survived,
    /// Its `/proc` entry could not be read (out of descriptors), so its identity could not be
    /// confirmed; nothing was signalled (the next pass tries again).
    Unverified,
}

const POLL: Duration = Duration::from_millis(50);

/// What to signal.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The process group led by the pid (its id cannot be reused while the group exists).
    Group(i32),
    /// One process, re-identified before each signal.
    Process(i32),
}

impl Target {
    /// True once nothing of it lives. `began` is when the stop began (the group existed
    /// then): a group is judged from a scan of `/proc` made since, shared with the other stops
    /// polling at the same time (see [`proc::group_exists_since`]).
    fn gone(self, identity: &ProcessIdentity, boot: &str, began: std::time::Instant) -> bool {
        match self {
            Self::Group(pgid) => !proc::group_exists_since(pgid, began, POLL),
            Self::Process(_) => !matches!(
                proc::check(Path::new("/proc"), boot, identity),
                ProcessStatus::Alive { .. }
            ),
        }
    }

    fn signal(self, signal: Signal) {
        // ESRCH (already gone) is what the caller checks next; nothing else can fail here for root.
        let _ = match self {
            Self::Group(pgid) => killpg(Pid::from_raw(pgid), signal),
            Self::Process(pid) => kill(Pid::from_raw(pid), signal),
        };
    }
}

/// Stops the worker `identity`: its whole process group when `whole_group` (automon's own
/// workers lead one), else the process alone.
pub async fn stop_group(
    identity: &ProcessIdentity,
    whole_group: bool,
    signal: Signal,
    grace: Duration,
) -> StopOutcome {
    // A Slurm job's handle is no process: never signalled as a pid (see crate::runtime).
    if crate::runtime::Handle::of(identity).is_job() {
        return StopOutcome::NotOurs;
    }
    // The group exists from before this moment (its leader was started before the stop).
    let began = std::time::Instant::now();
    let root = Path::new("/proc");
    let boot = proc::boot_id(root);
    let target = if whole_group {
        Target::Group(identity.pid)
    } else {
        Target::Process(identity.pid)
    };
    match proc::check(root, &boot, identity) {
        ProcessStatus::Reused => return StopOutcome::NotOurs,
        ProcessStatus::Alive {
            state: proc::UNVERIFIED,
        } => return StopOutcome::Unverified,
        ProcessStatus::Exited if target.gone(identity, &boot, began) => {
            return StopOutcome::AlreadyGone;
        }
        // Alive, or a leader that exited while its group lives on.
        _ => {}
    }
    target.signal(signal);
    if wait_gone(target, identity, &boot, began, grace).await {
        return StopOutcome::Graceful;
    }
    // Re-check right before SIGKILL: a single process may have exited and its pid been reused.
    if let Target::Process(_) = target {
        match proc::check(root, &boot, identity) {
            ProcessStatus::Alive {
                state: proc::UNVERIFIED,
            } => return StopOutcome::Unverified,
            ProcessStatus::Alive { .. } => {}
            _ => return StopOutcome::Graceful,
        }
    }
    target.signal(Signal::SIGKILL);
    if wait_gone(target, identity, &boot, began, Duration::from_secs(10)).await {
        StopOutcome::Killed
    } else {
        StopOutcome::Survived
    }
}

async fn wait_gone(
    target: Target,
    identity: &ProcessIdentity,
    boot: &str,
    began: std::time::Instant,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if target.gone(identity, boot, began) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
