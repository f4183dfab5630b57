//! The control loop: observe → plan → act → persist → wait. It wakes on the planner's
//! `requeue_after`, on a child's exit, on a finished stop, and on SIGINT/SIGTERM (which end the
//! loop and leave the workers running for the next automon to adopt).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::WorkerId;
use crate::act::{spawn, stop};
use crate::manifest::Desired;
use crate::observe::{self, ExitEvent, Roots};
use crate::plan::{self, Action, Memory, Phase, Plan};
use crate::state::{self, EventLog, InstanceLock};
use crate::text::count;

/// How the loop is to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Keep reconciling until complete or interrupted; otherwise one pass.
    pub watch: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every shard is complete.
    Complete,
    /// One pass done (`apply` without `--watch`).
    PassDone,
    /// Interrupted by a signal; workers keep running.
    Interrupted,
}

/// Errors that end a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory is locked by another automon.
    #[error(transparent)]
    Lock(#[from] state::LockError),
    /// Reading or writing state failed.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The key range moved since the state was written.
    #[error("{0}")]
    RangeChanged(String),
}

enum Wake {
    StopDone {
        worker: WorkerId,
        pid: i32,
        outcome: stop::StopOutcome,
    },
}

/// Runs passes until complete (watch), or one pass; `shutdown` ends the loop when it resolves.
///
/// # Errors
/// [`RunError`] for a held lock, unreadable/unwritable state, or a moved key range.
pub async fn run(
    desired: &Desired,
    opts: &RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunEnd, RunError> {
    let _lock = InstanceLock::acquire(&opts.state_dir)?;
    let mut memory = state::load_memory(&opts.state_dir)?;
    check_range(desired, &mut memory, &opts.state_dir)?;
    let mut events = EventLog::open(&opts.state_dir, true);
    let started = Instant::now();
    let before = memory.totals.clone();
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<ExitEvent>();
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<Wake>();
    let mut observer = observe::Observer::new(desired, Roots::default());
    let mut pending_exits: Vec<ExitEvent> = Vec::new();
    let mut unreaped: std::collections::BTreeSet<i32> = std::collections::BTreeSet::new();
    let mut first = true;
    let mut stops_in_flight = 0usize;
    let mut one_shot_passes = 0;
    tokio::pin!(shutdown);
    loop {
        while let Ok(e) = exit_rx.try_recv() {
            pending_exits.push(e);
        }
        for e in &pending_exits {
            unreaped.remove(&e.pid);
        }
        let children = observe::Children {
            exits: std::mem::take(&mut pending_exits),
            unreaped: unreaped.clone(),
        };
        let now = crate::clock::Now::read();
        let observed =
            observer.observe(desired, &memory, &opts.state_dir, children, first, now.boot);
        first = false;
        let plan = plan::plan(desired, &observed, &memory, now);
        for e in &plan.events {
            events.record(now.wall, e);
        }
        memory = plan.memory.clone();
        for action in &plan.actions {
            events.record(now.wall, action.reason());
            match action {
                Action::Stop(a) => {
                    stops_in_flight += 1;
                    let (tx, a, signal) = (wake_tx.clone(), a.clone(), desired.stop_signal);
                    tokio::spawn(async move {
                        let outcome =
                            stop::stop_group(&a.identity, a.whole_group, signal, a.grace).await;
                        let _ = tx.send(Wake::StopDone {
                            worker: a.worker,
                            pid: a.identity.pid,
                            outcome,
                        });
                    });
                }
                Action::Start(a) => {
                    let outcome = spawn::spawn_worker(desired, a, &opts.state_dir, exit_tx.clone());
                    if let Ok((id, _)) = &outcome {
                        unreaped.insert(id.pid);
                        events.record(
                            now.wall,
                            &format!(
                                "worker {}: started pid {}: {}",
                                a.worker,
                                id.pid,
                                a.argv.join(" ")
                            ),
                        );
                    }
                    if let Some(msg) = plan::record_start(&mut memory, desired, a, outcome, now) {
                        events.record(now.wall, &msg);
                    }
                }
            }
        }
        state::save_memory(&opts.state_dir, &memory)?;
        if plan.complete {
            events.record(
                now.wall,
                &summary(desired, &memory, &before, started.elapsed()),
            );
            return Ok(RunEnd::Complete);
        }
        if !opts.watch {
            one_shot_passes += 1;
            // One pass; if it stopped workers to restart them, wait for the stops and make the
            // restarts in a second pass so `apply` leaves the WorkerSet converged.
            if stops_in_flight == 0 || one_shot_passes >= 2 {
                events.record(now.wall, &pass_summary(&plan));
                return Ok(RunEnd::PassDone);
            }
            while stops_in_flight > 0 {
                if let Some(Wake::StopDone {
                    worker,
                    pid,
                    outcome,
                }) = wake_rx.recv().await
                {
                    stops_in_flight -= 1;
                    events.record(jiff::Timestamp::now(), &stop_message(worker, pid, &outcome));
                }
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(plan.requeue_after) => {}
            Some(e) = exit_rx.recv() => pending_exits.push(e),
            Some(Wake::StopDone { worker, pid, outcome }) = wake_rx.recv() => {
                stops_in_flight = stops_in_flight.saturating_sub(1);
                events.record(jiff::Timestamp::now(), &stop_message(worker, pid, &outcome));
            }
            () = &mut shutdown => {
                let running = plan.workers.values().filter(|s| is_running(s.phase)).count();
                events.record(jiff::Timestamp::now(), &format!(
                    "automon interrupted; {running} worker(s) keep running and will be adopted by the next `automon apply`"
                ));
                return Ok(RunEnd::Interrupted);
            }
        }
    }
}

fn is_running(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Starting | Phase::Discovering | Phase::Progressing | Phase::Stuck | Phase::Stopping
    )
}

fn stop_message(worker: WorkerId, pid: i32, outcome: &stop::StopOutcome) -> String {
    let how = match outcome {
        stop::StopOutcome::Graceful => "exited after the stop signal",
        stop::StopOutcome::Killed => "did not exit within the grace period; killed with SIGKILL",
        stop::StopOutcome::AlreadyGone => "was already gone",
        stop::StopOutcome::NotOurs => "pid now belongs to another process; nothing signalled",
        stop::StopOutcome::Survived => "survived SIGKILL (uninterruptible I/O?); will check again",
    };
    format!("worker {worker}: pid {pid} {how}")
}

/// Refuses a run whose key range differs from the one the state was written with.
fn check_range(
    desired: &Desired,
    memory: &mut Memory,
    state_dir: &std::path::Path,
) -> Result<(), RunError> {
    let Some(shards) = &desired.shards else {
        return Ok(());
    };
    let (Some(first), Some(last)) = (shards.first(), shards.last()) else {
        return Ok(());
    };
    let range = (first.start, last.end);
    match memory.range {
        Some(old) if old != range => Err(RunError::RangeChanged(format!(
            "the key range is now [{}, {}) but {} was written for [{}, {}): shard boundaries would move under the workers' checkpoints (use another state directory to start a new migration)",
            count(range.0),
            count(range.1),
            state_dir.join("state.json").display(),
            count(old.0),
            count(old.1)
        ))),
        _ => {
            memory.range = Some(range);
            Ok(())
        }
    }
}

fn pass_summary(plan: &Plan) -> String {
    let mut by_phase: std::collections::BTreeMap<Phase, usize> = std::collections::BTreeMap::new();
    for s in plan.workers.values() {
        *by_phase.entry(s.phase).or_default() += 1;
    }
    let phases: Vec<String> = by_phase.iter().map(|(p, n)| format!("{n} {p:?}")).collect();
    format!("pass done: {}", phases.join(", "))
}

/// The final words of a completed run.
pub fn summary(
    desired: &Desired,
    memory: &Memory,
    before: &plan::Totals,
    wall: Duration,
) -> String {
    let shards = desired.shards.as_ref().map_or(0, Vec::len);
    let items: Option<u64> = memory.workers.values().map(|w| w.items).sum();
    let done = match items {
        Some(n) => format!("{} {}s migrated", count(n), desired.unit),
        None => {
            let (a, b) = memory.range.unwrap_or_default();
            format!("keys [{}, {}) done", count(a), count(b))
        }
    };
    let crash = memory.totals.crash_restarts - before.crash_restarts;
    let stuck = memory.totals.stuck_restarts - before.stuck_restarts;
    format!(
        "all {shards} shards complete: {done}; {} restart(s) this run ({crash} after a crash, {stuck} after being stuck); wall time {}",
        crash + stuck,
        crate::manifest::duration::format_duration(wall)
    )
}
