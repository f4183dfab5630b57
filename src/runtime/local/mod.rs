//! The local runtime: workers are processes on this machine, each leading its own process
//! group. [`spawn`] starts one (argv as a vector, cwd and env from the manifest, output
//! appended to its log), the [`reaper`] waits for every child in one task and reports exits,
//! [`stop`] signals a group with a grace period; identity and liveness come from `/proc`
//! ([`crate::observe::proc`]), read by the observers. automon holds no descriptor per worker.

pub mod reaper;
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
    /// Where the reaper sends its children's exits.
    exits: UnboundedSender<ExitEvent>,
    /// The reaper, started with the first start (it needs the runtime).
    reaper: Option<reaper::Reaper>,
    /// What this pass's starts share.
    starts: spawn::StartCache,
}

impl Local {
    /// A local runtime whose children's exits go to `exits`.
    pub fn new(exits: UnboundedSender<ExitEvent>) -> Self {
        Self {
            exits,
            reaper: None,
            starts: spawn::StartCache::default(),
        }
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
        let reaper = match &mut self.reaper {
            Some(reaper) => reaper,
            none => none.insert(reaper::Reaper::start(self.exits.clone()).map_err(|e| {
                StartError::Failed(format!("cannot listen for children's exits (SIGCHLD): {e}"))
            })?),
        };
        let (identity, started_at) =
            spawn::spawn_worker(desired, action, state_dir, &mut self.starts, reaper)
                .map_err(StartError::Failed)?;
        Ok(Started {
            identity,
            started_at,
            reaped_here: true,
            job: None,
        })
    }

    fn observe(&mut self, _: &Desired, _: &mut Memory, _: &mut Observed, _: Now) {
        // The observers read /proc and the reaper reports exits: nothing to add. A new pass
        // looks programs up again (one may have been installed or removed since).
        self.starts = spawn::StartCache::default();
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
