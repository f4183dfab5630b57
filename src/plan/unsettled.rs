//! Executions that are neither running nor gone, which only a batch engine has: a job waiting
//! in the queue, a job whose processes are being ended (COMPLETING), and a job the engine
//! cannot see now (its scheduler does not answer).

use std::time::Duration;

use super::*;
use crate::runtime::Handle;

impl Planner<'_> {
    /// Steps a worker whose recorded execution is queued, completing or unknown; returns
    /// false (touching nothing) for any other.
    ///
    /// - Queued: not judged (nothing runs yet); its start time follows the clock, so its stuck
    ///   and discovery clocks start when it runs. A held (paused, failed) worker's queued job is
    ///   cancelled.
    /// - Completing: like a process group that still has members — no replacement until the
    ///   job is terminal.
    /// - Unknown: held — no stuck verdict, no stop, no restart — until the engine answers.
    pub(super) fn step_unsettled(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        obs: &WorkerObservation,
    ) -> bool {
        let Some(process) = w.process.clone() else {
            return false;
        };
        let handle = Handle::of(&process.identity);
        let soon = self.desired.interval.min(Duration::from_secs(5));
        match &obs.process {
            Some(ProcessStatus::Queued { why }) => {
                if let Some(p) = w.process.as_mut() {
                    p.started_at = self.now.boot;
                }
                w.stuck_passes = 0;
                w.stuck_since = None;
                if let Some(stopping) = w.stopping.clone() {
                    self.resume_stop(id, w, &process);
                    self.set(
                        id,
                        Phase::Stopping,
                        format!("stop requested: {}", stopping.reason),
                    );
                } else if let Some(hold) = w.paused.as_ref().or(w.failed.as_ref()) {
                    let reason = format!(
                        "worker {id}: {}; cancelling its queued {handle}",
                        hold.reason
                    );
                    self.stop_if_running(id, w, reason.clone());
                    self.set(id, Phase::Stopping, reason);
                } else {
                    self.set(
                        id,
                        Phase::Queued,
                        format!(
                            "{handle} queued ({why}); its stuck and discovery clocks start when it runs"
                        ),
                    );
                }
                self.wake_in(soon);
                true
            }
            Some(ProcessStatus::Completing) => {
                let on = w
                    .job
                    .as_ref()
                    .and_then(|j| j.node.as_deref())
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default();
                self.set(
                    id,
                    Phase::Stopping,
                    format!(
                        "{handle}{on} is completing: Slurm is ending its processes; no replacement until the job is terminal"
                    ),
                );
                self.wake_in(self.desired.interval.min(Duration::from_secs(2)));
                true
            }
            Some(ProcessStatus::Unknown { why }) => {
                self.set(
                    id,
                    Phase::Unknown,
                    format!(
                        "{handle}: {why}; holding: no stuck verdict, no stop and no restart until it answers"
                    ),
                );
                self.wake_in(soon);
                true
            }
            _ => false,
        }
    }
}
