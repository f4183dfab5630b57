//! Where workers run, behind one boundary: the [`Runtime`] trait. The planner never sees an
//! engine: it sees each worker's execution as data ([`ProcessStatus`]: running, queued,
//! completing, exited with a code or a signal ([`crate::observe::ExitEvent`]), unknown) and
//! its actions stay Start and Stop with a grace period.
//!
//! # Layout
//!
//! - [`local`]: processes on this machine, each in its own process group (spawn, identity from
//!   `/proc`, signals, reaping) — what automon always did, unchanged.
//! - [`slurm`]: Slurm batch jobs — one `sbatch` per worker start, one `squeue --json` per pass,
//!   `scancel` to stop.
//!
//! A third engine is one more folder and one more arm in [`for_desired`].
//!
//! # Handles
//!
//! Memory records one handle per worker in [`crate::plan::RunningProcess::identity`]: a
//! process identity (pid, start ticks, boot id), or a job's (job id in `pid`, start ticks 0,
//! and [`JOB_REALM`] where a boot id would be). A job handle is no kernel's boot, so no process
//! check ever matches it and no signal is ever sent to it as a pid (see
//! [`local::stop::stop_group`]); [`Handle::of`] tells the two apart. A Slurm worker's memory
//! also keeps its [`JobRecord`] (cluster, node, state) for people.

pub mod local;
pub mod slurm;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::clock::{BootTime, Now};
use crate::manifest::{Desired, RuntimeKind};
use crate::observe::{ExitEvent, Observed, ProcessIdentity};
use crate::plan::{Memory, StartAction, StopAction};
pub use local::stop::StopOutcome;

/// What stands where a boot id would in a job's handle.
pub const JOB_REALM: &str = "slurm";

/// Why a start failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The worker could not be started (a command that cannot run, a log that cannot be
    /// opened, a refused submission): counts towards the worker's failed starts.
    Failed(String),
    /// The engine itself did not answer (the Slurm controller is unreachable): nothing about
    /// the worker is wrong, so nothing is counted against it; the start is tried again when
    /// the engine answers. (A submission that timed out may still have created its job: the
    /// next pass finds it by name and adopts it.)
    Unavailable(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(why) | Self::Unavailable(why) => f.write_str(why),
        }
    }
}

/// A worker started by a runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Its handle (see the module doc).
    pub identity: ProcessIdentity,
    /// When it started (a job: when it was submitted; its clocks restart when it runs).
    pub started_at: BootTime,
    /// True when this automon reaps it (a local child): its exit arrives as an
    /// [`ExitEvent`] on the channel the runtime was given.
    pub reaped_here: bool,
    /// Its record, for a Slurm job.
    pub job: Option<JobRecord>,
}

/// A Slurm job as memory keeps it, for `automon get` and the events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: u64,
    /// The cluster's name (`ClusterName`), once `squeue` has given it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// The node it runs on, once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its state as `squeue` last gave it (`PENDING`, `RUNNING`, `COMPLETING`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// What a recorded handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    /// A process on this machine (its pid).
    Process(i32),
    /// A Slurm job (its id).
    Job(u64),
}

impl Handle {
    /// The handle `identity` holds.
    pub fn of(identity: &ProcessIdentity) -> Self {
        if identity.boot_id == JOB_REALM {
            Self::Job(u64::try_from(identity.pid).unwrap_or(0))
        } else {
            Self::Process(identity.pid)
        }
    }

    /// The handle of Slurm job `id` (see the module doc).
    pub fn job_identity(id: u64) -> ProcessIdentity {
        ProcessIdentity {
            // Slurm job ids stay below 2^31 (MaxJobId is at most 0x03ff0000 = 67,043,328).
            pid: i32::try_from(id).unwrap_or(i32::MAX),
            start_ticks: 0,
            boot_id: JOB_REALM.to_string(),
        }
    }

    /// True for a Slurm job.
    pub fn is_job(self) -> bool {
        matches!(self, Self::Job(_))
    }
}

impl std::fmt::Display for Handle {
    /// `pid 4242` or `job 17`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Process(pid) => write!(f, "pid {pid}"),
            Self::Job(id) => write!(f, "job {id}"),
        }
    }
}

/// A stop running in the background; resolves to how it ended.
pub type StopTask = Pin<Box<dyn Future<Output = StopOutcome> + Send>>;

/// An engine that runs workers. Implementations do I/O and report what they found as data;
/// they never decide (the planner does).
pub trait Runtime: Send {
    /// Which engine this is.
    fn kind(&self) -> RuntimeKind;

    /// Starts the worker `action` describes (a transaction: on error nothing it started is
    /// left running untracked).
    ///
    /// # Errors
    /// What failed, in a sentence, and whether the worker or the engine is to blame.
    fn start(
        &mut self,
        desired: &Desired,
        action: &StartAction,
        state_dir: &Path,
    ) -> Result<Started, StartError>;

    /// Adds what the engine knows to one pass's observation: each recorded worker's
    /// execution, exits, workers it runs that memory does not record (adoption), and — when
    /// it cannot look — why not (`scan_incomplete`, which holds every start). Also refreshes
    /// each worker's [`JobRecord`] facts in `memory` (node, state) for people. The local
    /// runtime adds nothing: the observers read `/proc` themselves.
    fn observe(
        &mut self,
        desired: &Desired,
        memory: &mut Memory,
        observed: &mut Observed,
        now: Now,
    );

    /// True when the observers' `/proc` scan for unrecorded workers applies (local only:
    /// a Slurm job's processes are found through the scheduler).
    fn scans_processes(&self) -> bool;

    /// Stops the worker of `action` with `signal`, its grace period, then SIGKILL.
    fn stop(&self, action: &StopAction, signal: nix::sys::signal::Signal) -> StopTask;
}

/// The runtime `desired` names; local children's exits go to `exits`.
pub fn for_desired(
    desired: &Desired,
    state_dir: &Path,
    exits: tokio::sync::mpsc::UnboundedSender<ExitEvent>,
) -> Box<dyn Runtime> {
    match desired.runtime.kind {
        RuntimeKind::Local => Box::new(local::Local::new(exits)),
        RuntimeKind::Slurm => Box::new(slurm::Slurm::new(desired, state_dir)),
    }
}

/// What the engine of `desired` adds to a read-only command's observation (`get`, `diff`,
/// `status`): for Slurm, one `squeue` (the local observers need nothing more). `memory` is
/// not changed: the engine's facts go into a scratch copy.
pub fn observe_read_only(
    desired: &Desired,
    memory: &Memory,
    state_dir: &Path,
    observed: &mut Observed,
    now: Now,
) {
    if desired.runtime.kind == RuntimeKind::Local {
        return;
    }
    let (exits, _) = tokio::sync::mpsc::unbounded_channel();
    let mut scratch = memory.clone();
    for_desired(desired, state_dir, exits).observe(desired, &mut scratch, observed, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_handle_is_never_taken_for_a_process() {
        let job = Handle::job_identity(17);
        assert_eq!(Handle::of(&job), Handle::Job(17));
        assert_eq!(Handle::of(&job).to_string(), "job 17");
        // No kernel has this boot id: a /proc check finds the handle is not a live process.
        let status = crate::observe::proc::check(
            Path::new("/proc"),
            &crate::observe::proc::boot_id(Path::new("/proc")),
            &job,
        );
        assert_eq!(status, crate::observe::ProcessStatus::Reused);
        let process = ProcessIdentity {
            pid: 4242,
            start_ticks: 7,
            boot_id: "b".into(),
        };
        assert_eq!(Handle::of(&process), Handle::Process(4242));
        assert_eq!(Handle::of(&process).to_string(), "pid 4242");
    }
}
