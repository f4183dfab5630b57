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
    /// Move the state file aside and start from empty memory.
    pub reset_state: bool,
    /// Metrics, status file and log format.
    pub report: crate::metrics::ReportOptions,
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
    /// Nothing can progress without an operator (every unfinished worker paused or failed).
    Blocked(String),
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
    /// The key range or shard count changed since the state was written.
    #[error("{0}")]
    RangeChanged(String),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ReportError),
}

/// A background task finished.
enum Wake {
    StopDone {
        worker: WorkerId,
        pid: i32,
        outcome: stop::StopOutcome,
    },
    Diagnosis {
        worker: WorkerId,
        outcome: Result<plan::memory::DiagnosisNote, String>,
    },
    CodeFix {
        worker: WorkerId,
        outcome: plan::CodeFixOutcome,
    },
    Rollback {
        worker: WorkerId,
        outcome: Result<(), String>,
    },
}

/// How a run is to end after a pass, if it is.
enum After {
    Continue,
    End(RunEnd),
}

/// The loop's state between passes.
struct Daemon<'a> {
    desired: &'a Desired,
    opts: &'a RunOptions,
    memory: Memory,
    events: EventLog,
    history: crate::state::FixHistory,
    observer: observe::Observer,
    /// The LLM client, when `llm.enabled` and it could be built.
    llm: Option<crate::act::llm::LlmClient>,
    /// Why there is no LLM client, when the manifest enables it.
    llm_error: Option<String>,
    exit_tx: mpsc::UnboundedSender<ExitEvent>,
    wake_tx: mpsc::UnboundedSender<Wake>,
    pending_exits: Vec<ExitEvent>,
    unreaped: std::collections::BTreeSet<i32>,
    /// Stop tasks running, per worker (the planner starts none of these workers meanwhile).
    stops_in_flight: std::collections::BTreeMap<WorkerId, usize>,
    in_flight: usize,
    first: bool,
    started: Instant,
    before: plan::Totals,
    /// Publishes status and metrics after each pass.
    reporter: crate::metrics::Reporter,
    /// The last pass's disk observation, for the metrics.
    last_disk: Option<observe::disk::DiskObservation>,
}

impl Daemon<'_> {
    /// One pass: observe → plan → act → persist. Returns the plan.
    fn pass(&mut self) -> Result<Plan, RunError> {
        let requests = crate::state::requests::read_requests(&self.opts.state_dir);
        for r in &requests {
            let message = plan::apply_request(
                &mut self.memory,
                r.kind,
                r.worker,
                crate::clock::Now::read(),
            );
            self.events.record(jiff::Timestamp::now(), &message);
        }
        for e in &self.pending_exits {
            self.unreaped.remove(&e.pid);
        }
        let children = observe::Children {
            exits: std::mem::take(&mut self.pending_exits),
            unreaped: self.unreaped.clone(),
            stopping: self.stops_in_flight.keys().copied().collect(),
        };
        let now = crate::clock::Now::read();
        let history_basis = crate::state::HistoryBasis::of(&self.memory);
        let observed = self.observer.observe(
            self.desired,
            &self.memory,
            &self.opts.state_dir,
            children,
            self.first,
            now.boot,
        );
        self.last_disk = Some(observed.disk.clone());
        // Workers recorded by an earlier automon, to tell which ones the first pass takes over.
        let recorded: Vec<(WorkerId, observe::ProcessIdentity)> = if self.first {
            self.memory
                .workers
                .iter()
                .filter_map(|(id, w)| Some((*id, w.process.as_ref()?.identity.clone())))
                .collect()
        } else {
            Vec::new()
        };
        // The memory moves into the plan and back (no copy of it per pass).
        let mut plan = plan::plan(
            self.desired,
            &observed,
            std::mem::take(&mut self.memory),
            now,
        );
        if self.first {
            // Workers recorded by an earlier automon and still alive are taken over, not restarted.
            for (id, old) in &recorded {
                let kept = plan.memory.workers.get(id).and_then(|n| n.process.as_ref());
                // Only a live process is adopted (a stop may go on for a leaderless group).
                let alive = observed.workers.get(id).is_some_and(|o| {
                    matches!(o.process, Some(observe::ProcessStatus::Alive { .. }))
                });
                if let Some(new) = kept
                    && *old == new.identity
                    && alive
                {
                    self.events.record(
                        now.wall,
                        &format!(
                            "worker {id}: adopted pid {} (recorded by an earlier automon)",
                            old.pid
                        ),
                    );
                }
            }
        }
        // A scan that could not list /proc is made again on the next pass.
        self.first = observed.scan_incomplete.is_some();
        for e in &plan.events {
            self.events.record(now.wall, e);
        }
        // The plan's memory becomes ours (no copy); the returned plan keeps an empty one.
        self.memory = std::mem::take(&mut plan.memory);
        if self.memory.last_applied.as_deref() != Some(self.desired.normalized.as_str()) {
            self.memory.last_applied = Some(self.desired.normalized.clone());
        }
        for action in &plan.actions {
            self.events.record(now.wall, action.reason());
            self.act(action, &plan, &observed, now);
        }
        state::save_memory(&self.opts.state_dir, &self.memory)?;
        crate::state::requests::remove_requests(&requests);
        // After the save: a crash may lose a history line, never duplicate one.
        self.history
            .record_changes(&history_basis, &self.memory, self.desired);
        Ok(plan)
    }

    /// Carries out one action; long ones run in the background and report a [`Wake`].
    fn act(
        &mut self,
        action: &Action,
        plan: &Plan,
        observed: &observe::Observed,
        now: crate::clock::Now,
    ) {
        match action {
            Action::Stop(a) => {
                self.in_flight += 1;
                *self.stops_in_flight.entry(a.worker).or_default() += 1;
                let (tx, a, signal) = (self.wake_tx.clone(), a.clone(), self.desired.stop_signal);
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
                let outcome = spawn::spawn_worker(
                    self.desired,
                    a,
                    &self.opts.state_dir,
                    self.exit_tx.clone(),
                );
                if let Ok((id, _)) = &outcome {
                    self.unreaped.insert(id.pid);
                    self.events.record(
                        now.wall,
                        &format!(
                            "worker {}: started pid {}: {}",
                            a.worker,
                            id.pid,
                            a.argv.join(" ")
                        ),
                    );
                }
                if let Some(msg) =
                    plan::record_start(&mut self.memory, self.desired, a, outcome, now)
                {
                    self.events.record(now.wall, &msg);
                }
            }
            Action::Diagnose(a) => {
                self.in_flight += 1;
                let worker = a.worker;
                let tx = self.wake_tx.clone();
                let Some(client) = self.llm.clone() else {
                    let why = self
                        .llm_error
                        .clone()
                        .unwrap_or_else(|| "the LLM is not enabled".into());
                    let _ = tx.send(Wake::Diagnosis {
                        worker,
                        outcome: Err(why),
                    });
                    return;
                };
                let empty = crate::plan::WorkerMemory::default();
                let w = self.memory.workers.get(&worker).unwrap_or(&empty);
                let status = plan
                    .workers
                    .get(&worker)
                    .cloned()
                    .unwrap_or(plan::WorkerStatus {
                        phase: Phase::Stuck,
                        reason: plan::Reason::Text(String::new()),
                    });
                let mut diagnostics = crate::act::llm::collect_diagnostics(
                    self.desired,
                    worker,
                    &status,
                    w,
                    observed,
                    now,
                );
                diagnostics.recent_fixes = crate::act::remedy::recent_fixes(w);
                tokio::spawn(async move {
                    let outcome = client
                        .diagnose(&diagnostics)
                        .await
                        .map(|o| {
                            crate::act::remedy::diagnosis_note(&o, crate::clock::BootTime::read())
                        })
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Wake::Diagnosis { worker, outcome });
                });
            }
            Action::ApplyCodeFix(a) => {
                self.in_flight += 1;
                let (tx, worker, proposal) = (self.wake_tx.clone(), a.worker, a.proposal.clone());
                let policy = crate::act::fix::CodeFixPolicy::from_desired(self.desired);
                let (state_dir, applied) = (
                    self.opts.state_dir.clone(),
                    self.memory.applied_patches.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let outcome =
                        crate::act::remedy::apply_code(&policy, &state_dir, &proposal, &applied);
                    let _ = tx.send(Wake::CodeFix { worker, outcome });
                });
            }
            Action::RollbackCodeFix(a) => {
                self.in_flight += 1;
                let tx = self.wake_tx.clone();
                let worker = a.worker;
                let code = plan::memory::AppliedCode {
                    file: a.file.clone(),
                    backup: a.backup.clone(),
                    patch_hash: a.patch_hash.clone(),
                };
                tokio::task::spawn_blocking(move || {
                    let outcome = crate::act::remedy::rollback_code(&code);
                    let _ = tx.send(Wake::Rollback { worker, outcome });
                });
            }
        }
    }

    /// Records what a background task reported.
    fn on_wake(&mut self, wake: Wake) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = crate::clock::Now::read();
        let message = match wake {
            Wake::StopDone {
                worker,
                pid,
                outcome,
            } => {
                if let Some(n) = self.stops_in_flight.get_mut(&worker) {
                    *n -= 1;
                    if *n == 0 {
                        self.stops_in_flight.remove(&worker);
                    }
                }
                if outcome == stop::StopOutcome::Survived {
                    plan::record_unkillable(&mut self.memory, worker, pid, now);
                }
                stop_message(worker, pid, &outcome)
            }
            Wake::Diagnosis { worker, outcome } => {
                plan::record_diagnosis(&mut self.memory, worker, outcome)
            }
            Wake::CodeFix { worker, outcome } => {
                let message = plan::record_code_fix(
                    &mut self.memory,
                    worker,
                    outcome,
                    self.desired.fixes.code.restart,
                    now,
                );
                self.history.append(&crate::state::HistoryRecord {
                    record: "code_fix".into(),
                    at: now.wall,
                    worker,
                    kind: Some("code_fix".into()),
                    attempt: None,
                    detail: message.clone(),
                    checkpoint: self.memory.workers.get(&worker).and_then(|w| w.checkpoint),
                    succeeded: None,
                    analysis: None,
                });
                message
            }
            Wake::Rollback { worker, outcome } => match outcome {
                Ok(()) => format!("worker {worker}: code fix rolled back"),
                Err(why) => format!("worker {worker}: rollback failed: {why}"),
            },
        };
        self.events.record(now.wall, &message);
    }

    /// What follows a pass.
    fn after(&mut self, plan: &Plan) -> After {
        let now = jiff::Timestamp::now();
        if plan.complete {
            self.events.record(
                now,
                &summary(
                    self.desired,
                    &self.memory,
                    &self.before,
                    self.started.elapsed(),
                ),
            );
            return After::End(RunEnd::Complete);
        }
        if let Some(why) = &plan.blocked
            && self.in_flight == 0
        {
            self.events
                .record(now, &format!("stopping the control loop: {why}"));
            return After::End(RunEnd::Blocked(why.clone()));
        }
        After::Continue
    }
}

/// Runs passes until complete (watch), or one pass, holding `lock` (the state directory's
/// single-instance lock, see [`InstanceLock::acquire`]); `shutdown` ends the loop when it
/// resolves.
///
/// # Errors
/// [`RunError`] for a held lock, unreadable/unwritable state, or a moved key range.
pub async fn run(
    desired: &Desired,
    opts: &RunOptions,
    lock: InstanceLock,
    shutdown: impl Future<Output = ()>,
) -> Result<RunEnd, RunError> {
    // Held for the whole run (taken by the caller before setup, so setup never runs twice).
    let _lock = lock;
    if opts.reset_state
        && let Some(kept) = state::move_aside(&opts.state_dir)?
    {
        eprintln!(
            "automon: --reset-state: the old state is kept as {}",
            kept.display()
        );
    }
    let mut memory = state::load_memory(&opts.state_dir)?;
    check_range(desired, &mut memory, &opts.state_dir)?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<ExitEvent>();
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<Wake>();
    let before = memory.totals.clone();
    let reporter =
        crate::metrics::Reporter::start(&opts.report, &opts.state_dir, opts.watch).await?;
    let (llm, llm_error) = if desired.llm.enabled {
        match crate::act::llm::LlmClient::from_desired(desired, &desired.manifest_dir) {
            Ok(c) => (Some(c), None),
            Err(e) => (
                None,
                Some(format!("the LLM client could not be built: {e}")),
            ),
        }
    } else {
        (None, None)
    };
    let mut d = Daemon {
        desired,
        opts,
        memory,
        events: EventLog::open(&opts.state_dir, !opts.report.json_logs),
        history: crate::state::FixHistory::open(&opts.state_dir),
        observer: observe::Observer::new(desired, Roots::default()),
        llm,
        llm_error,
        exit_tx,
        wake_tx,
        pending_exits: Vec::new(),
        unreaped: std::collections::BTreeSet::new(),
        stops_in_flight: std::collections::BTreeMap::new(),
        in_flight: 0,
        first: true,
        started: Instant::now(),
        before,
        reporter,
        last_disk: None,
    };
    let mut one_shot_passes = 0;
    let mut trimmed = false;
    // SIGUSR1: an operator request is waiting (automon pause/resume); reconcile now.
    let mut nudge =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    tokio::pin!(shutdown);
    loop {
        while let Ok(e) = exit_rx.try_recv() {
            d.pending_exits.push(e);
        }
        let began = Instant::now();
        let plan = d.pass()?;
        d.reporter.after_pass(
            desired,
            &d.memory,
            &plan,
            d.last_disk.as_ref(),
            began.elapsed(),
        );
        if let After::End(end) = d.after(&plan) {
            return Ok(end);
        }
        if opts.watch && !trimmed {
            // Startup is over: give back the code only it ran (see `footprint`).
            trimmed = true;
            let bytes = crate::footprint::release_startup_code();
            tracing::debug!(bytes, "released the startup code's pages");
        }
        if !opts.watch {
            one_shot_passes += 1;
            // One pass; if it started stops or background work, wait for them and make the
            // resulting restarts in a second pass so `apply` leaves the WorkerSet converged.
            if d.in_flight == 0 || one_shot_passes >= 2 {
                d.events
                    .record(jiff::Timestamp::now(), &pass_summary(&plan));
                return Ok(RunEnd::PassDone);
            }
            while d.in_flight > 0 {
                match wake_rx.recv().await {
                    Some(w) => d.on_wake(w),
                    None => break,
                }
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(plan.requeue_after) => {}
            Some(e) = exit_rx.recv() => d.pending_exits.push(e),
            Some(w) = wake_rx.recv() => d.on_wake(w),
            Some(()) = async { match nudge.as_mut() { Some(n) => n.recv().await, None => std::future::pending().await } } => {}
            () = &mut shutdown => {
                // What memory records as running (a start that failed in the last pass is not).
                let running = d.memory.workers.values().filter(|w| w.process.is_some()).count();
                d.events.record(jiff::Timestamp::now(), &format!(
                    "automon interrupted; {running} worker(s) keep running and will be adopted by the next `automon apply`"
                ));
                return Ok(RunEnd::Interrupted);
            }
        }
    }
}

fn stop_message(worker: WorkerId, pid: i32, outcome: &stop::StopOutcome) -> String {
    let how = match outcome {
        stop::StopOutcome::Graceful => "exited after the stop signal",
        stop::StopOutcome::Killed => "did not exit within the grace period; killed with SIGKILL",
        stop::StopOutcome::AlreadyGone => "was already gone",
        stop::StopOutcome::NotOurs => "pid now belongs to another process; nothing signalled",
        stop::StopOutcome::Survived => {
            "survived SIGKILL: unkillable, in uninterruptible I/O; no replacement while it lives, and automon says when it goes"
        }
        stop::StopOutcome::Unverified => {
            "could not be identified (its /proc entry is unreadable); nothing signalled, trying again"
        }
    };
    format!("worker {worker}: pid {pid} {how}")
}

/// Refuses a run whose shard layout (key range, shard count) differs from the one the state
/// was written with (see [`plan::layout_change`]); records the layout otherwise.
fn check_range(
    desired: &Desired,
    memory: &mut Memory,
    state_dir: &std::path::Path,
) -> Result<(), RunError> {
    if let Some(why) = plan::layout_change(desired, memory, &state_dir.join("state.json")) {
        return Err(RunError::RangeChanged(why));
    }
    if let Some((range, n)) = plan::shard_layout(desired) {
        memory.range = Some(range);
        memory.shard_count = Some(n);
    }
    Ok(())
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
