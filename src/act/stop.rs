//! Stopping a worker: the stop signal to its process group, wait up to `grace`, SIGKILL to the
//! group, then confirm the group is gone. The leader's identity is re-checked before signalling:
//! a pid that now belongs to a stranger is never signalled.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::observe::{ProcessIdentity, ProcessStatus, proc};

/// How a stop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// The group exited after the stop signal.
    Graceful,
    /// The group had to be killed after the grace period.
    Killed,
    /// The group was already gone.
    AlreadyGone,
    /// The pid belongs to another process now; nothing was signalled.
    NotOurs,
    /// The group survived SIGKILL (e.g. stuck in uninterruptible I/O).
    Survived,
}

const POLL: Duration = Duration::from_millis(50);

/// Stops the process group led by `identity`.
pub async fn stop_group(
    identity: &ProcessIdentity,
    signal: Signal,
    grace: Duration,
) -> StopOutcome {
    let root = Path::new("/proc");
    let boot = proc::boot_id(root);
    let pgid = identity.pid;
    match proc::check(root, &boot, identity) {
        ProcessStatus::Reused => return StopOutcome::NotOurs,
        ProcessStatus::Exited if !proc::group_exists(pgid) => return StopOutcome::AlreadyGone,
        // Alive, or a leader that exited while the group lives on: the group id cannot have been
        // reused while the group exists.
        _ => {}
    }
    let _ = killpg(Pid::from_raw(pgid), signal);
    if wait_gone(pgid, grace).await {
        return StopOutcome::Graceful;
    }
    if matches!(proc::check(root, &boot, identity), ProcessStatus::Reused)
        && !proc::group_exists(pgid)
    {
        return StopOutcome::AlreadyGone;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    if wait_gone(pgid, Duration::from_secs(10)).await {
        StopOutcome::Killed
    } else {
        StopOutcome::Survived
    }
}

async fn wait_gone(pgid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !proc::group_exists(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
