//! The local runtime: workers are processes on this machine, each leading its own process
//! group. [`spawn`] starts one (argv as a vector, cwd and env from the manifest, output
//! appended to its log, a task that reaps it), [`stop`] signals its group with a grace period;
//! identity and liveness come from `/proc` ([`crate::observe::proc`]), read by the observers.

pub mod spawn;
pub mod stop;

use std::path::Path;

use tokio::sync::mpsc::UnboundedSender;

use super::{Runtime, StartError, Started, StopTask};
use crate::clock::Now;
use crate::manifest::{Desired, RuntimeKind};
use crate::observe::{ExitEvent, Observed};
use crate::plan::{Memory, StartAction, StopAction};

/// Processes on this machine.
#[derive(Debug)]
pub struct Local {
    /// Where the reaper tasks send their children's exits.
    exits: UnboundedSender<ExitEvent>,
}

impl Local {
    /// A local runtime whose children's exits go to `exits`.
    pub fn new(exits: UnboundedSender<ExitEvent>) -> Self {
        Self { exits }
    }
}

impl Runtime for Local {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Local
    }

    fn start(
        &mut self,
        desired: &Desired,
        action: &StartAction,
        state_dir: &Path,
    ) -> Result<Started, StartError> {
        let (identity, started_at) =
            spawn::spawn_worker(desired, action, state_dir, self.exits.clone())
                .map_err(StartError::Failed)?;
        Ok(Started {
            identity,
            started_at,
            reaped_here: true,
            job: None,
        })
    }

    fn observe(&mut self, _: &Desired, _: &mut Memory, _: &mut Observed, _: Now) {
        // The observers read /proc and the reaper reports exits: nothing to add.
    }

    fn scans_processes(&self) -> bool {
        true
    }

    fn stop(&self, action: &StopAction, signal: nix::sys::signal::Signal) -> StopTask {
        let (identity, whole_group, grace) =
            (action.identity.clone(), action.whole_group, action.grace);
        Box::pin(async move { stop::stop_group(&identity, whole_group, signal, grace).await })
    }
}
