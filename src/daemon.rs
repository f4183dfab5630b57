//! The control loop: observe → plan → act → persist → wait. It wakes on the planner's
//! `requeue_after`, on a child's exit, on a finished stop, on a request from the control
//! socket or SIGHUP (see [`crate::control`]; applied at the start of the next pass, answered
//! after it), and on SIGINT/SIGTERM (which end the loop and leave the workers running for the
//! next automon to adopt).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::WorkerId;
use crate::act::stop;
use crate::control::{Outcome, Request, Verdict};
use crate::manifest::Desired;
use crate::observe::{self, ExitEvent, Roots};
use crate::plan::{self, Action, Memory, Phase, Plan};
use crate::state::{self, EventLog, InstanceLock};
use crate::text::{count, counted, plural};

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
    /// The command-line overrides the loop was started with (applied again when SIGHUP makes
    /// it re-read its manifest file).
    pub overrides: crate::manifest::Overrides,
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
    /// A one-pass `apply` could not save its state.
    #[error("{0}")]
    Unsaved(String),
    /// The key range or shard count changed since the state was written.
    #[error("{0}")]
    RangeChanged(String),
    /// The state directory was replaced and another automon locked the new one.
    #[error("{0}")]
    LockLost(String),
}

/// The memory is not on disk: the last save failed (see [`observe::Observed::unsaved_state`]).
#[derive(Debug, Clone)]
struct Unsaved {
    /// When the first failed save was.
    since: jiff::Timestamp,
    /// Failed saves in a row.
    failures: u32,
    /// The last save's error.
    why: String,
}

/// How soon a pass retries a failed save, whatever the interval.
const UNSAVED_RETRY: Duration = Duration::from_secs(5);

/// A state write that has taken this long is said to be pending (in the events and `status`).
const SLOW_WRITE: Duration = Duration::from_secs(30);

/// How long an interrupted loop waits for the state directory before it exits without it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// How long a change of the workers' observed progress alone (checkpoints, log cursors,
/// remembered lines; see [`plan::memory::Fingerprints`]) may stay unsaved: the files say it
/// again to the next automon, and saving it every pass rewrote the whole state file every
/// second for a fleet that works. Anything else is saved by the pass that changed it.
pub const OBSERVED_SAVE_PERIOD: Duration = Duration::from_secs(10);

/// A background task finished.
enum Wake {
    StopDone {
        worker: WorkerId,
        pid: i32,
        /// The handle was a Slurm job's (`pid` is its id).
        job: bool,
        /// The stop ended the rest of a process group whose leader had already exited (that
        /// exit was reported on its own): the outcome is the group's, not `pid`'s.
        leftovers: bool,
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
        patch_hash: String,
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
    /// The manifest the loop runs; replaced by `apply` and SIGHUP.
    desired: Desired,
    opts: &'a RunOptions,
    memory: Memory,
    events: EventLog,
    history: crate::state::FixHistory,
    observer: observe::Observer,
    /// Where the workers run (`spec.runtime`): starts, stops, and what the engine observes.
    runtime: Box<dyn crate::runtime::Runtime>,
    /// The LLM client, when `llm.enabled` and it could be built.
    llm: Option<crate::act::llm::LlmClient>,
    /// Why there is no LLM client, when the manifest enables it.
    llm_error: Option<String>,
    exit_tx: mpsc::UnboundedSender<ExitEvent>,
    wake_tx: mpsc::UnboundedSender<Wake>,
    pending_exits: Vec<ExitEvent>,
    /// Children started and not reaped yet: pid → start ticks.
    unreaped: std::collections::BTreeMap<i32, u64>,
    /// The fingerprints ([`Memory::fingerprints`]) of the memory last handed to the writer: a
    /// pass that changed nothing writes nothing. `None` forces the next pass to write.
    saved: Option<plan::memory::Fingerprints>,
    /// When the last snapshot was handed to the writer (see [`OBSERVED_SAVE_PERIOD`]).
    handed_at: Option<Instant>,
    /// Stop tasks running, per worker (the planner starts none of these workers meanwhile).
    stops_in_flight: std::collections::BTreeMap<WorkerId, usize>,
    in_flight: usize,
    first: bool,
    /// The workers the state file recorded when this automon started, not yet found alive:
    /// taken at the first pass, emptied by the first pass whose look was complete. Only these
    /// are "recorded by an earlier automon" (a look made incomplete later, by a scheduler
    /// hold, must not call this run's own jobs that).
    earlier: Option<Vec<(WorkerId, observe::ProcessIdentity)>>,
    started: Instant,
    before: plan::Totals,
    /// Publishes status and metrics after each pass.
    reporter: crate::metrics::Reporter,
    /// The last pass's disk observation, for the metrics.
    last_disk: Option<observe::disk::DiskObservation>,
    /// The last pass's plan (its memory moved out), for the control socket's view.
    last_plan: Option<Plan>,
    /// Requests from the control socket, applied at the start of the next pass.
    queued: Vec<Request>,
    /// Operators waiting for the pass that applies their request: where the outcome goes and
    /// what became of the request.
    /// An operator request's answer carries only its worker's lines (`Some(worker)`).
    waiting: Vec<(oneshot::Sender<Outcome>, String, Option<WorkerId>)>,
    /// Set when stderr is `STATE_DIR/automon.log` (`automon start`): SIGHUP reopens it.
    log_file: Option<PathBuf>,
    /// What is wrong in automon's own house now (see [`Daemon::show_condition`]).
    condition: Option<String>,
    /// The state directory's lock, re-checked every pass; it also carries the condition
    /// `automon status` shows.
    lock: InstanceLock,
    /// Set while the memory is not on disk (the last save failed).
    unsaved: Option<Unsaved>,
    /// The history basis of the memory whose fix-history records were last taken (handed to
    /// the writer with a snapshot, or appended for a code fix): the next records are what
    /// changed since.
    history_basis: crate::state::HistoryBasis,
    /// Fix-history records handed to the writer with a snapshot not yet on disk, with that
    /// snapshot's generation (`automon history` shows them).
    unsaved_records: Vec<(u64, crate::state::HistoryRecord)>,
    /// Writes into the state directory, off this thread (see [`state::StateWriter`]).
    writer: state::StateWriter,
    /// The generation of the last memory snapshot handed to the writer.
    generation: u64,
    /// Stops and code-fix engine runs decided by this pass: started once the memory that
    /// records their intent is on disk.
    deferred: Vec<Action>,
    /// The last slow-write warning, in whole minutes of the write's age.
    slow_warned: Option<u64>,
    /// A one-pass run's failed save.
    save_error: Option<String>,
    /// Each worker's pid as last saved, to say what a failed save puts at risk.
    saved_pids: std::collections::BTreeMap<WorkerId, i32>,
    /// The last pass saved after failed saves: the next pass (which makes the held starts)
    /// comes at once.
    saved_again: bool,
}

impl Daemon<'_> {
    /// One pass: observe → plan → act → persist. Returns the plan.
    fn pass(&mut self) -> Result<Plan, RunError> {
        self.check_lock()?;
        self.take_requests();
        for e in &self.pending_exits {
            self.unreaped.remove(&e.pid);
        }
        let children = observe::Children {
            exits: std::mem::take(&mut self.pending_exits),
            unreaped: self.unreaped.keys().copied().collect(),
            started: self.unreaped.clone(),
            stopping: self.stops_in_flight.keys().copied().collect(),
        };
        let now = crate::clock::Now::read();
        self.say_slow_writes();
        let mut observed = self.observer.observe(
            &self.desired,
            &self.memory,
            &self.opts.state_dir,
            children,
            self.first && self.runtime.scans_processes(),
            now.boot,
        );
        self.runtime
            .observe(&self.desired, &mut self.memory, &mut observed, now);
        observed.unsaved_state = self.unsaved.as_ref().map(|u| u.why.clone());
        self.last_disk = Some(observed.disk.clone());
        // Workers recorded by an earlier automon, to tell which ones the first pass takes over.
        let recorded: Vec<(WorkerId, observe::ProcessIdentity)> = if self.first {
            let memory = &self.memory;
            self.earlier
                .get_or_insert_with(|| {
                    memory
                        .workers
                        .iter()
                        .filter_map(|(id, w)| Some((*id, w.process.as_ref()?.identity.clone())))
                        .collect()
                })
                .clone()
        } else {
            Vec::new()
        };
        // The memory moves into the plan and back (no copy of it per pass).
        let mut plan = plan::plan(
            &self.desired,
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
                            "worker {id}: adopted {} (recorded by an earlier automon)",
                            crate::runtime::Handle::of(old)
                        ),
                    );
                    if let Some(earlier) = &mut self.earlier {
                        earlier.retain(|(w, _)| w != id);
                    }
                }
            }
        }
        // A scan that could not list /proc is made again on the next pass.
        self.first = observed.scan_incomplete.is_some();
        if !self.first {
            self.earlier = Some(Vec::new());
        }
        for e in &plan.events {
            let worker = state::mentioned_worker(e).map(WorkerId);
            let (phase, checkpoint) =
                worker.map_or((None, None), |w| facts(&plan, &plan.memory, w));
            self.events.record_with(
                now.wall,
                e,
                &state::EventFields {
                    worker: worker.map(|w| w.0),
                    phase: phase.as_deref(),
                    checkpoint,
                    ..state::EventFields::default()
                },
            );
        }
        // The plan's memory becomes ours (no copy); the returned plan keeps an empty one.
        self.memory = std::mem::take(&mut plan.memory);
        if self.memory.last_applied.as_deref() != Some(self.desired.normalized.as_str()) {
            self.memory.last_applied = Some(self.desired.normalized.clone());
        }
        for action in &plan.actions {
            let (phase, checkpoint) = facts(&plan, &self.memory, action.worker());
            let pid = match action {
                Action::Stop(a) => Some(a.identity.pid),
                _ => None,
            };
            self.events.record_with(
                now.wall,
                action.reason(),
                &state::EventFields {
                    worker: Some(action.worker().0),
                    pid,
                    phase: phase.as_deref(),
                    action: Some(action.verb()),
                    checkpoint,
                    reason: Some(action.reason()),
                },
            );
            self.act(action, &plan, &observed, now);
        }
        // A pass that changed nothing (memory with the fingerprints of the one last handed
        // over) writes nothing; one that changed only what the workers' files say again on
        // every pass writes at most every OBSERVED_SAVE_PERIOD. The save is made on the writer
        // thread; its outcome comes back as a [`state::SaveDone`] (see [`Daemon::on_saved`]),
        // and the stops and engine runs this pass decided start once it is on disk.
        self.save_if_changed(false);
        self.launch_deferred();
        self.events.sync();
        self.show_condition();
        Ok(plan)
    }

    /// Hands the memory to the writer when it changed since the last snapshot: at once when
    /// anything but the workers' observed progress changed (a process, a stop, a fix, a
    /// hold, a counter, …: intent is on disk before it is acted on), when the last save
    /// failed, for a one-pass run, or when `now`; a change of observed progress alone
    /// (checkpoints, log cursors, remembered lines) waits until [`OBSERVED_SAVE_PERIOD`]
    /// since the last snapshot. At 2,000 workers whose files change every second, saving each
    /// pass wrote 3 MB a second for what the next automon reads again from the files.
    fn save_if_changed(&mut self, now: bool) {
        let fingerprints = self.memory.fingerprints();
        let due = match self.saved {
            _ if self.unsaved.is_some() => true,
            None => true,
            Some(saved) if saved.intent != fingerprints.intent => true,
            Some(saved) if saved.observed != fingerprints.observed => {
                now || !self.opts.watch
                    || self
                        .handed_at
                        .is_none_or(|at| at.elapsed() >= OBSERVED_SAVE_PERIOD)
            }
            Some(_) => false,
        };
        if !due {
            return;
        }
        self.generation += 1;
        let records = self.take_history_records();
        // Shown by `automon history` until the save is on disk.
        self.unsaved_records
            .extend(records.iter().map(|r| (self.generation, r.clone())));
        self.writer
            .save(state::Snapshot::of(self.generation, &self.memory, records));
        self.saved = Some(fingerprints);
        self.handed_at = Some(Instant::now());
    }

    /// The fix-history records for what changed in the memory since they were last taken.
    fn take_history_records(&mut self) -> Vec<crate::state::HistoryRecord> {
        let records =
            crate::state::history_changes(&self.history_basis, &self.memory, &self.desired);
        self.history_basis = crate::state::HistoryBasis::of(&self.memory);
        records
    }

    /// What a save's outcome changes: a failure is said loudly and holds new starts (the next
    /// pass hands the memory over again); a success after failures lets them start again.
    fn on_saved(&mut self, done: state::SaveDone) {
        match done.result {
            Ok(()) => {
                self.saved_pids = done.pids;
                self.unsaved_records.retain(|(g, _)| *g > done.generation);
                if let Some(u) = self.unsaved.take() {
                    self.saved_again = true;
                    self.events.record(
                        jiff::Timestamp::now(),
                        &format!(
                            "state saved again after {} since {}; workers start again",
                            counted(u.failures, "failed save", "failed saves"),
                            whole_seconds(u.since)
                        ),
                    );
                }
            }
            Err(e) => {
                if !self.opts.watch {
                    self.save_error = Some(e);
                    return;
                }
                // The loop goes on: it retries every pass and starts nothing until a save
                // succeeds.
                self.saved = None;
                let now = jiff::Timestamp::now();
                let u = self.unsaved.get_or_insert(Unsaved {
                    since: now,
                    failures: 0,
                    why: String::new(),
                });
                u.failures += 1;
                u.why = e.clone();
                let message = format!(
                    "STATE NOT SAVED ({} since {}): {e}; at risk if automon stops now ({}); no worker is started until a save succeeds (retrying every {}s)",
                    counted(u.failures, "failed save", "failed saves"),
                    whole_seconds(u.since),
                    at_risk(&self.saved_pids, &self.memory),
                    UNSAVED_RETRY.as_secs()
                );
                self.events.record(now, &message);
                self.show_condition();
            }
        }
    }

    /// Says (in the events, on stderr, and in the lock file's condition) when a write into
    /// the state directory has been pending for [`SLOW_WRITE`] or more: once, then once a
    /// minute while it lasts.
    fn say_slow_writes(&mut self) {
        let Some((what, took)) = self.writer.slow(SLOW_WRITE) else {
            self.slow_warned = None;
            return;
        };
        let minute = took.as_secs() / 60;
        if self.slow_warned == Some(minute) {
            return;
        }
        self.slow_warned = Some(minute);
        let message = format!(
            "state write pending for {}s ({what} in {}): the state directory does not answer (a frozen or hung file system?); the loop goes on: crashed workers are restarted, metrics and signals answered; stops and fixes wait until their intent is on disk; at risk if automon stops now: {}",
            took.as_secs(),
            self.opts.state_dir.display(),
            at_risk(&self.saved_pids, &self.memory)
        );
        self.events.record(jiff::Timestamp::now(), &message);
    }

    /// Starts the stops and engine runs this pass decided, each once the memory generation
    /// handed over by this pass (which records its intent: the stop's reason, the fix attempt,
    /// the code fix in `applying`) is on disk. Waiting holds only that action. A stop that
    /// carries no intent of its own ([`plan::StopAction::awaits_save`] false) starts at once.
    fn launch_deferred(&mut self) {
        let need = self.generation;
        for action in std::mem::take(&mut self.deferred) {
            let mut saved = self.writer.saved();
            let durable = async move {
                let _ = saved.wait_for(|g| *g >= need).await;
            };
            let tx = self.wake_tx.clone();
            match action {
                Action::Stop(a) => {
                    let leftovers = self.memory.workers.get(&a.worker).is_some_and(|w| {
                        w.process.as_ref().is_some_and(|p| p.identity == a.identity)
                            && w.stopping.as_ref().is_some_and(|s| s.exit_reported)
                    });
                    let stopping = self.runtime.stop(&a, self.desired.stop_signal);
                    tokio::spawn(async move {
                        if a.awaits_save {
                            durable.await;
                        }
                        let outcome = stopping.await;
                        let _ = tx.send(Wake::StopDone {
                            worker: a.worker,
                            pid: a.identity.pid,
                            job: crate::runtime::Handle::of(&a.identity).is_job(),
                            leftovers,
                            outcome,
                        });
                    });
                }
                Action::ApplyCodeFix(a) => {
                    let (worker, proposal) = (a.worker, a.proposal.clone());
                    let policy = crate::act::fix::CodeFixPolicy::from_desired(&self.desired);
                    let (state_dir, applied) = (
                        self.opts.state_dir.clone(),
                        self.memory.applied_patches.clone(),
                    );
                    tokio::spawn(async move {
                        durable.await;
                        let _ = tokio::task::spawn_blocking(move || {
                            let outcome = crate::act::remedy::apply_code(
                                &policy, &state_dir, &proposal, &applied,
                            );
                            let _ = tx.send(Wake::CodeFix { worker, outcome });
                        })
                        .await;
                    });
                }
                Action::RollbackCodeFix(a) => {
                    let (worker, patch_hash) = (a.worker, a.patch_hash.clone());
                    let code = plan::memory::AppliedCode {
                        file: a.file.clone(),
                        backup: a.backup.clone(),
                        patch_hash: a.patch_hash.clone(),
                    };
                    tokio::spawn(async move {
                        durable.await;
                        let _ = tokio::task::spawn_blocking(move || {
                            let outcome = crate::act::remedy::rollback_code(&code);
                            let _ = tx.send(Wake::Rollback {
                                worker,
                                patch_hash,
                                outcome,
                            });
                        })
                        .await;
                    });
                }
                Action::Start(_) | Action::Diagnose(_) => {}
            }
        }
    }

    /// Re-checks the state directory's lock: a directory deleted and recreated under the loop
    /// is locked again (and the memory written into it by this pass), so no second automon can
    /// take the WorkerSet; if one already has, this loop stops.
    fn check_lock(&mut self) -> Result<(), RunError> {
        let dir = &self.opts.state_dir;
        match self.lock.recheck(dir) {
            Ok(state::Recheck::Held) => {}
            Ok(state::Recheck::Relocked) => {
                // The new directory holds no state: this pass writes it whether or not memory
                // changed (a pass that changed nothing otherwise writes nothing).
                self.saved = None;
                self.events.reopen_if_replaced();
                self.events.record(
                    jiff::Timestamp::now(),
                    &format!(
                        "the state directory {} was deleted or replaced under this automon: its lock is taken again and the state written anew from memory",
                        dir.display()
                    ),
                );
            }
            Err(state::LockError::Held { pid, .. }) => {
                let why = format!(
                    "the state directory {} was replaced under this automon and another automon (pid {pid}) locked it; this loop stops so that one automon manages the WorkerSet (the workers keep running)",
                    dir.display()
                );
                self.events.record(jiff::Timestamp::now(), &why);
                return Err(RunError::LockLost(why));
            }
            Err(e) => {
                // Nobody can create the lock file either; say so and carry on.
                self.events.record(
                    jiff::Timestamp::now(),
                    &format!("the state directory's lock cannot be checked: {e}"),
                );
            }
        }
        self.events.reopen_if_replaced();
        Ok(())
    }

    /// Writes what is wrong in automon's own house (unsaved state, unwritable logs) into the
    /// lock file, where `automon status` shows it; clears it when all is well.
    fn show_condition(&mut self) {
        let mut parts = Vec::new();
        if let Some(u) = &self.unsaved {
            parts.push(format!(
                "state NOT saved since {} ({}): {}; at risk ({}); no worker is started until a save succeeds",
                whole_seconds(u.since),
                counted(u.failures, "failed save", "failed saves"),
                u.why,
                at_risk(&self.saved_pids, &self.memory)
            ));
        }
        if let Some(why) = self.events.failure() {
            parts.push(format!(
                "{} cannot be written: {why}",
                self.events.path().display()
            ));
        }
        if let Some(why) = crate::stdio::stderr_failure() {
            parts.push(format!(
                "automon's own log (stderr) cannot be written: {why}"
            ));
            crate::stdio::clear_stderr_failure();
        }
        if let Some((what, took)) = self.writer.slow(SLOW_WRITE) {
            parts.push(format!(
                "state write pending for {}s ({what}): the state directory does not answer",
                took.as_secs()
            ));
        }
        if let Some(took) = crate::stdio::stderr_pending().filter(|t| *t >= SLOW_WRITE) {
            parts.push(format!(
                "automon's own log (stderr) write pending for {}s: its file does not answer; lines beyond the queue are dropped and counted",
                took.as_secs()
            ));
        }
        let condition = (!parts.is_empty()).then(|| parts.join("; "));
        // Also answered over the control socket (`status`): a hung state directory keeps the
        // lock file's copy from being written.
        self.condition.clone_from(&condition);
        let path = self.lock.path().to_path_buf();
        match self.lock.condition_write(condition.as_deref()) {
            Ok(None) => {}
            Ok(Some(write)) => self
                .writer
                .submit("writing the lock file's condition", move || {
                    if let Err(e) = write() {
                        tracing::warn!("{}: cannot record the condition: {e}", path.display());
                    }
                }),
            Err(e) => tracing::warn!("{}: cannot record the condition: {e}", path.display()),
        }
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
                self.deferred.push(action.clone());
            }
            Action::Start(a) => {
                let started = self.runtime.start(&self.desired, a, &self.opts.state_dir);
                if let Ok(s) = &started {
                    let id = &s.identity;
                    if s.reaped_here {
                        self.unreaped.insert(id.pid, id.start_ticks);
                    }
                    let how = match crate::runtime::Handle::of(id) {
                        h @ crate::runtime::Handle::Job(_) => format!("submitted {h}"),
                        h => format!("started {h}"),
                    };
                    self.events.record_with(
                        now.wall,
                        &format!(
                            "worker {}: {how}: {}",
                            a.worker,
                            crate::text::shell_words(&a.argv)
                        ),
                        &state::EventFields {
                            worker: Some(a.worker.0),
                            pid: Some(id.pid),
                            action: Some("started"),
                            checkpoint: a.resume_from,
                            ..state::EventFields::default()
                        },
                    );
                }
                let job = started.as_ref().ok().and_then(|s| s.job.clone());
                let outcome = match started {
                    Ok(s) => Ok((s.identity, s.started_at)),
                    Err(crate::runtime::StartError::Unavailable(why)) => {
                        let msg = plan::record_start_unavailable(
                            &mut self.memory,
                            &self.desired,
                            a,
                            &why,
                            now,
                        );
                        self.events.record(now.wall, &msg);
                        return;
                    }
                    Err(crate::runtime::StartError::Failed(why)) => Err(why),
                };
                let msg = plan::record_start(&mut self.memory, &self.desired, a, outcome, now);
                if let Some(w) = self.memory.workers.get_mut(&a.worker) {
                    w.job = job;
                }
                if let Some(msg) = msg {
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
                let w = self.memory.workers.get(&worker).map_or(&empty, |w| w);
                let status = plan
                    .workers
                    .get(&worker)
                    .cloned()
                    .unwrap_or(plan::WorkerStatus {
                        phase: Phase::Stuck,
                        reason: plan::Reason::Text(String::new()),
                    });
                let mut diagnostics = crate::act::llm::collect_diagnostics(
                    &self.desired,
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
            Action::ApplyCodeFix(_) | Action::RollbackCodeFix(_) => {
                self.in_flight += 1;
                self.deferred.push(action.clone());
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
                job,
                leftovers,
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
                let message = stop_message(worker, pid, job, leftovers, &outcome);
                self.events.record_with(
                    now.wall,
                    &message,
                    &state::EventFields {
                        worker: Some(worker.0),
                        pid: Some(pid),
                        action: Some("stopped"),
                        ..state::EventFields::default()
                    },
                );
                return;
            }
            Wake::Diagnosis { worker, outcome } => {
                plan::record_diagnosis(&mut self.memory, worker, outcome, now)
            }
            Wake::CodeFix { worker, outcome } => {
                // An applied fix is an attempt: the history gets its `fix` record here.
                let message =
                    plan::record_code_fix(&mut self.memory, &self.desired, worker, outcome, now);
                let record = crate::state::HistoryRecord {
                    record: "code_fix".into(),
                    at: now.wall,
                    worker,
                    kind: Some("code_fix".into()),
                    attempt: None,
                    detail: message.clone(),
                    checkpoint: self.memory.workers.get(&worker).and_then(|w| w.checkpoint),
                    succeeded: None,
                    analysis: None,
                };
                let mut records = self.take_history_records();
                records.push(record);
                let history = self.history.clone();
                self.writer.submit("appending to the fix history", move || {
                    for record in &records {
                        history.append(record);
                    }
                });
                message
            }
            Wake::Rollback {
                worker,
                patch_hash,
                outcome,
            } => plan::record_rollback(&mut self.memory, worker, &patch_hash, outcome),
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
                    &self.desired,
                    &self.memory,
                    &self.before,
                    self.started.elapsed(),
                    now,
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
/// single-instance lock, see [`InstanceLock::acquire`]); `inbox` brings requests from the
/// control socket and SIGHUP (see [`crate::control`]); `metrics` receives the metrics text
/// after each pass; `shutdown` ends the loop when it resolves.
///
/// # Errors
/// [`RunError`] for a held lock, unreadable/unwritable state, or a moved key range.
pub async fn run(
    desired: &Desired,
    opts: &RunOptions,
    lock: InstanceLock,
    mut inbox: crate::control::server::Inbox,
    metrics: Option<tokio::sync::watch::Sender<String>>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunEnd, RunError> {
    // A log on a hung file system must not hold the loop (see `stdio`).
    if opts.watch {
        crate::stdio::detach_stderr();
        // Large freed blocks (state.json's serialisation) go back to the kernel (see `footprint`).
        crate::footprint::return_large_blocks();
    }
    // Held for the whole run (taken by the caller before setup, so setup never runs twice), and
    // re-checked every pass.
    if opts.reset_state
        && let Some(kept) = state::move_aside(&opts.state_dir)?
    {
        crate::errln!(
            "automon: --reset-state: the old state is kept as {}",
            kept.display()
        );
    }
    // Temp files of a save cut short by a kill: only the lock holder writes them.
    for stale in state::remove_stale_temp_files(&opts.state_dir) {
        tracing::warn!(
            "removed {}, left by an automon that was killed mid-write",
            stale.display()
        );
    }
    let mut memory = state::load_memory(&opts.state_dir)?;
    check_range(desired, &mut memory, &opts.state_dir)?;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<ExitEvent>();
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<Wake>();
    let (saved_tx, mut saved_rx) = mpsc::unbounded_channel::<state::SaveDone>();
    let writer = state::StateWriter::start(opts.state_dir.clone(), saved_tx).map_err(|source| {
        state::StateError::Io {
            path: opts.state_dir.clone(),
            source,
        }
    })?;
    let mut events = EventLog::open(&opts.state_dir, !opts.report.json_logs);
    events.write_through(writer.clone());
    let before = memory.totals.clone();
    // The whole migration's figures outlive this process (the final summary gives both).
    memory
        .totals
        .first_applied_at
        .get_or_insert_with(jiff::Timestamp::now);
    memory.totals.runs += 1;
    let mut reporter =
        crate::metrics::Reporter::new(&opts.report, &opts.state_dir, opts.watch, metrics);
    reporter.write_through(writer.clone());
    let (llm, llm_error) = llm_for(desired);
    let history_basis = crate::state::HistoryBasis::of(&memory);
    let mut d = Daemon {
        desired: desired.clone(),
        opts,
        memory,
        events,
        history: crate::state::FixHistory::open(&opts.state_dir),
        observer: observe::Observer::new(desired, Roots::default()),
        runtime: crate::runtime::for_desired(desired, &opts.state_dir, exit_tx.clone()),
        llm,
        llm_error,
        exit_tx,
        wake_tx,
        pending_exits: Vec::new(),
        unreaped: std::collections::BTreeMap::new(),
        saved: None,
        handed_at: None,
        stops_in_flight: std::collections::BTreeMap::new(),
        in_flight: 0,
        first: true,
        earlier: None,
        started: Instant::now(),
        before,
        reporter,
        last_disk: None,
        last_plan: None,
        queued: Vec::new(),
        waiting: Vec::new(),
        log_file: stderr_is_log(&opts.state_dir),
        condition: None,
        lock,
        unsaved: None,
        history_basis,
        unsaved_records: Vec::new(),
        writer,
        generation: 0,
        deferred: Vec::new(),
        slow_warned: None,
        save_error: None,
        saved_pids: std::collections::BTreeMap::new(),
        saved_again: false,
    };
    d.saved_pids = pids(&d.memory);
    d.recover_code_fixes();
    let mut one_shot_passes = 0;
    let mut trimmed = false;
    inbox.set_ready();
    tokio::pin!(shutdown);
    let end: Result<RunEnd, RunError> = async { loop {
        while let Ok(e) = exit_rx.try_recv() {
            d.pending_exits.push(e);
        }
        while let Ok(r) = inbox.requests.try_recv() {
            d.queued.push(r);
        }
        while let Ok(s) = saved_rx.try_recv() {
            d.on_saved(s);
        }
        let began = Instant::now();
        let plan = d.pass()?;
        // After the pass re-checked the lock: a replaced state directory gets its socket back.
        if let Some(message) = inbox.rebind_if_gone() {
            d.events.record(jiff::Timestamp::now(), &message);
        }
        d.reporter.after_pass(
            &d.desired,
            &d.memory,
            &plan,
            d.last_disk.as_ref(),
            began.elapsed(),
        );
        d.answer_waiting();
        let end = d.after(&plan);
        let requeue = plan.requeue_after;
        d.last_plan = Some(plan);
        if let After::End(end) = end {
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
                // One pass ends with its state on disk.
                while *d.writer.saved().borrow() < d.generation && d.save_error.is_none() {
                    tokio::select! {
                        Some(s) = saved_rx.recv() => d.on_saved(s),
                        () = &mut shutdown => return Ok(RunEnd::Interrupted),
                    }
                }
                if let Some(e) = d.save_error.take() {
                    return Err(RunError::Unsaved(e));
                }
                let summary = d.last_plan.as_ref().map(pass_summary).unwrap_or_default();
                d.events.record(jiff::Timestamp::now(), &summary);
                return Ok(RunEnd::PassDone);
            }
            while d.in_flight > 0 {
                tokio::select! {
                    w = wake_rx.recv() => match w {
                        Some(w) => d.on_wake(w),
                        None => break,
                    },
                    Some(s) = saved_rx.recv() => {
                        d.on_saved(s);
                        if let Some(e) = d.save_error.take() {
                            return Err(RunError::Unsaved(e));
                        }
                    }
                    () = &mut shutdown => return Ok(RunEnd::Interrupted),
                }
            }
            continue;
        }
        let wait = if std::mem::take(&mut d.saved_again) {
            Duration::ZERO
        } else if d.unsaved.is_some() {
            requeue.min(UNSAVED_RETRY)
        } else {
            requeue
        };
        let mut wake_at = tokio::time::Instant::now() + wait;
        // Views are answered without a pass; anything else wakes the next one.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake_at) => {}
                Some(e) = exit_rx.recv() => d.pending_exits.push(e),
                Some(w) = wake_rx.recv() => d.on_wake(w),
                // A save's outcome: a failure is said at once and retried within
                // UNSAVED_RETRY; a save after failures makes the held starts in a pass now.
                Some(s) = saved_rx.recv() => {
                    d.on_saved(s);
                    if !std::mem::take(&mut d.saved_again) {
                        if d.unsaved.is_some() {
                            wake_at = wake_at.min(tokio::time::Instant::now() + UNSAVED_RETRY);
                        }
                        continue;
                    }
                }
                Some(r) = inbox.requests.recv() => {
                    if let Request::View { reply } = r {
                        let _ = reply.send(Box::new(d.view()));
                        continue;
                    }
                    if let Request::History { reply } = r {
                        let _ = reply.send(d.history_view());
                        continue;
                    }
                    d.queued.push(r);
                }
                () = &mut shutdown => {
                    // Processes that exist (a planned start that failed is not one).
                    let running = d.memory.workers.values().filter(|w| w.process.is_some()).count();
                    d.events.record(jiff::Timestamp::now(), &format!(
                        "automon interrupted; {} running and will be adopted by the next `automon apply`",
                        match running {
                            1 => "1 worker keeps".to_string(),
                            n => format!("{n} workers keep"),
                        }
                    ));
                    return Ok(RunEnd::Interrupted);
                }
            }
            break;
        }
    } }.await;
    // Observed progress not saved yet goes with the rest, unless the run ended in an error or
    // the lock is no longer this loop's: a loop whose state directory another automon has
    // locked since must not write there.
    if end.is_ok() && d.check_lock().is_ok() {
        d.save_if_changed(true);
    }
    d.finish_writes(matches!(end, Ok(RunEnd::Interrupted)));
    end
}

impl Daemon<'_> {
    /// Settles the code fixes an earlier automon sent to the engine and did not see finish
    /// (stage `applying` on disk; see [`crate::act::remedy::recover_code`]): an applied one
    /// becomes the attempt it was, with its backup, before the first pass.
    fn recover_code_fixes(&mut self) {
        let lost: Vec<(WorkerId, String)> = self
            .memory
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.fixes.stage, Some(plan::memory::FixStage::Applying { .. })))
            .filter_map(|(id, w)| Some((*id, w.diagnosis.as_ref()?.code_changes.clone()?)))
            .collect();
        if lost.is_empty() {
            return;
        }
        let policy = crate::act::fix::CodeFixPolicy::from_desired(&self.desired);
        for (worker, proposal) in lost {
            let outcome = crate::act::remedy::recover_code(
                &policy,
                &self.opts.state_dir,
                &proposal,
                &self.memory.applied_patches,
            );
            self.events.record(
                jiff::Timestamp::now(),
                &format!(
                    "worker {worker}: a code fix was with the fix engine when the previous automon stopped; {}",
                    match &outcome {
                        plan::CodeFixOutcome::Applied(c) => format!(
                            "it was applied ({}, backup {}): recorded as the fix attempt it was",
                            c.file.display(),
                            c.backup.display()
                        ),
                        _ => "it was not applied".to_string(),
                    }
                ),
            );
            self.on_wake(Wake::CodeFix { worker, outcome });
        }
    }

    /// Waits for the writes into the state directory still queued: at most [`EXIT_WAIT`] for
    /// an interrupted loop (a SIGTERM is answered at once, not when a frozen file system
    /// thaws), a minute otherwise; says what is not on disk when they do not finish.
    fn finish_writes(&mut self, interrupted: bool) {
        self.events.sync();
        let limit = if interrupted {
            EXIT_WAIT
        } else {
            Duration::from_secs(60)
        };
        if self.writer.drain(limit) {
            return;
        }
        let on_disk = *self.writer.saved().borrow();
        let state = if on_disk < self.generation {
            format!(
                "the memory since the last save ({})",
                at_risk(&self.saved_pids, &self.memory)
            )
        } else {
            "the memory is on disk".to_string()
        };
        let stuck = self
            .writer
            .slow(Duration::ZERO)
            .map(|(what, took)| format!(" ({what} for {}s)", took.as_secs()))
            .unwrap_or_default();
        crate::errln!(
            "automon: the state directory {} does not answer{stuck}; exiting without waiting for it. Not saved: {state}; {} of events, fix history and status. The workers keep running; the next automon adopts them by their markers",
            self.opts.state_dir.display(),
            counted(self.writer.backlog(), "queued write", "queued writes")
        );
    }
}

/// The LLM client for `desired`, or why there is none when the manifest enables it.
fn llm_for(desired: &Desired) -> (Option<crate::act::llm::LlmClient>, Option<String>) {
    if !desired.llm.enabled {
        return (None, None);
    }
    match crate::act::llm::LlmClient::from_desired(desired, &desired.manifest_dir) {
        Ok(c) => (Some(c), None),
        Err(e) => (
            None,
            Some(format!("the LLM client could not be built: {e}")),
        ),
    }
}

/// `t` to the second below (never later than a line written at `t`, as rounding could be).
fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    t.round(
        jiff::TimestampRound::new()
            .smallest(jiff::Unit::Second)
            .mode(jiff::RoundMode::Trunc),
    )
    .unwrap_or(t)
}

/// `STATE_DIR/automon.log` when stderr is that file (the loop `automon start` runs): SIGHUP
/// reopens it, so logrotate can move it away.
fn stderr_is_log(state_dir: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let path = state_dir.join(crate::cli::LOG_FILE);
    let log = std::fs::metadata(&path).ok()?;
    let stderr = std::fs::metadata("/proc/self/fd/2").ok()?;
    (log.dev() == stderr.dev() && log.ino() == stderr.ino()).then_some(path)
}

impl Daemon<'_> {
    /// Applies the queued requests from the control socket (at the start of a pass). Each is
    /// an event naming the operator's command; refusals are answered at once, the rest after
    /// the pass (its events go with the answer).
    fn take_requests(&mut self) {
        let requests = std::mem::take(&mut self.queued);
        if requests.is_empty() {
            return;
        }
        let now = crate::clock::Now::read();
        for r in requests {
            match r {
                Request::Operator { body, reply } => {
                    // A request sent without reading the manifest (`pause --state-dir`) is
                    // checked here.
                    if !self.desired.worker_ids().contains(&body.worker) {
                        let message = format!(
                            "worker {} is not in WorkerSet {}; request ignored",
                            body.worker, self.desired.name
                        );
                        self.events
                            .record(now.wall, &format!("operator `{}`: {message}", body.command));
                        if let Some(reply) = reply {
                            let _ = reply.send(Outcome {
                                verdict: Verdict::Invalid,
                                message,
                                lines: Vec::new(),
                            });
                        }
                        continue;
                    }
                    let message =
                        plan::apply_request(&mut self.memory, body.kind, body.worker, now);
                    self.events
                        .record(now.wall, &format!("operator `{}`: {message}", body.command));
                    self.wait(reply, message, Some(body.worker));
                }
                Request::Apply { body, reply } => {
                    let outcome = body
                        .overrides
                        .overrides()
                        .map_err(|e| (Verdict::Invalid, e))
                        .and_then(|o| {
                            crate::manifest::load_text(&body.file, &body.text, &o)
                                .map_err(|e| (Verdict::Invalid, e.to_string()))
                        })
                        .and_then(|(m, _)| self.take_manifest(&m));
                    match outcome {
                        Ok(changes) => {
                            let message =
                                format!("manifest {} taken: {changes}", body.file.display());
                            self.events.record(
                                now.wall,
                                &format!("operator `{}`: {message}", body.command),
                            );
                            self.wait(reply, message, None);
                        }
                        Err((verdict, why)) => {
                            let message = format!(
                                "manifest {} not taken; the loop runs on unchanged: {why}",
                                body.file.display()
                            );
                            self.events.record(
                                now.wall,
                                &format!("operator `{}`: {message}", body.command),
                            );
                            if let Some(reply) = reply {
                                let _ = reply.send(Outcome {
                                    verdict,
                                    message,
                                    lines: Vec::new(),
                                });
                            }
                        }
                    }
                }
                Request::Reload => self.reload(now.wall),
                Request::View { reply } => {
                    let _ = reply.send(Box::new(self.view()));
                }
                Request::History { reply } => {
                    let _ = reply.send(self.history_view());
                }
            }
        }
        if !self.waiting.is_empty() {
            self.events.capture();
        }
    }

    fn wait(
        &mut self,
        reply: Option<oneshot::Sender<Outcome>>,
        message: String,
        worker: Option<WorkerId>,
    ) {
        if let Some(reply) = reply {
            self.waiting.push((reply, message, worker));
        }
    }

    /// Answers the operators whose requests this pass applied, with the pass's events.
    fn answer_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let mut lines = self.events.take_captured();
        // A park is both a note and its stop's reason: each line once.
        let mut seen = std::collections::HashSet::new();
        lines.retain(|l| seen.insert(l.clone()));
        for (reply, message, worker) in self.waiting.drain(..) {
            let lines = match worker {
                Some(id) => {
                    let (a, b) = (format!("worker {id}:"), format!("worker {id} "));
                    lines
                        .iter()
                        .filter(|l| l.starts_with(&a) || l.starts_with(&b))
                        .cloned()
                        .collect()
                }
                None => lines.clone(),
            };
            let _ = reply.send(Outcome {
                verdict: Verdict::Done,
                message,
                lines,
            });
        }
    }

    /// SIGHUP: reopens `automon.log` (logrotate) and re-reads the manifest file with the
    /// overrides the loop was started with; an invalid or refused file leaves the running
    /// manifest in force, and the event says why.
    fn reload(&mut self, now: jiff::Timestamp) {
        if let Some(path) = &self.log_file {
            // On the stderr thread: opening a file on a hung file system blocks.
            match crate::stdio::reopen_stderr(path.clone(), Duration::from_secs(1)) {
                Ok(true) => {}
                Ok(false) => self.events.record(
                    now,
                    &format!(
                        "SIGHUP: reopening {} is pending (its file system does not answer); the loop goes on and the log is reopened when it does",
                        path.display()
                    ),
                ),
                Err(e) => self.events.record(
                    now,
                    &format!("SIGHUP: cannot reopen {}: {e}", path.display()),
                ),
            }
        }
        let file = self.desired.manifest_file.clone();
        let taken = crate::manifest::load_with_overrides(&file, &self.opts.overrides)
            .map_err(|e| e.to_string())
            .and_then(|(m, _)| self.take_manifest(&m).map_err(|(_, why)| why));
        let message = match taken {
            Ok(changes) => format!(
                "SIGHUP: re-read {}: manifest taken: {changes}",
                file.display()
            ),
            Err(why) => format!(
                "SIGHUP: re-read {}: not taken, the running manifest stays in force: {why}",
                file.display()
            ),
        };
        self.events.record(now, &message);
    }

    /// Takes a new manifest into the running loop, or refuses it (another WorkerSet, a re-cut
    /// shard layout) leaving everything as it was. A changed template reaches each worker at
    /// its next (re)start; the workers running the previous one are remembered as such.
    /// Returns what changed, in words.
    fn take_manifest(
        &mut self,
        manifest: &crate::manifest::Manifest,
    ) -> Result<String, (Verdict, String)> {
        let new = crate::cli::resolve(manifest).map_err(|e| (Verdict::Invalid, e.message))?;
        if new.name != self.desired.name {
            return Err((
                Verdict::Refused,
                format!(
                    "metadata.name is {} but this loop runs WorkerSet {} (another WorkerSet needs its own state directory)",
                    new.name, self.desired.name
                ),
            ));
        }
        let state_file = self.opts.state_dir.join("state.json");
        if let Some(why) = plan::layout_change(&new, &self.memory, &state_file) {
            return Err((Verdict::Refused, why));
        }
        let changes = describe_changes(&self.desired, &new, &self.memory);
        let old = self.desired.template_hash();
        if old != new.template_hash() {
            for w in self.memory.workers.values_mut() {
                if let Some(p) = &mut w.process {
                    p.template.get_or_insert_with(|| old.clone());
                }
            }
        }
        if new.runtime.kind != self.desired.runtime.kind {
            return Err((
                Verdict::Refused,
                format!(
                    "spec.runtime.kind is now {:?} but this loop runs its workers with {:?}: stop automon (the workers keep running) before moving the WorkerSet to another runtime",
                    new.runtime.kind, self.desired.runtime.kind
                ),
            ));
        }
        let _ = check_range(&new, &mut self.memory, &self.opts.state_dir);
        self.observer = observe::Observer::new(&new, Roots::default());
        self.runtime =
            crate::runtime::for_desired(&new, &self.opts.state_dir, self.exit_tx.clone());
        (self.llm, self.llm_error) = llm_for(&new);
        self.desired = new;
        Ok(changes)
    }

    /// The fix history as this loop knows it (the control socket's `GET /v1/history`): its
    /// history file, then the records a failed save keeps off disk.
    fn history_view(&self) -> crate::control::HistoryView {
        let (mut records, warnings) = match crate::state::read_history(&self.opts.state_dir) {
            Ok(read) => read,
            Err(e) => (
                Vec::new(),
                vec![format!(
                    "{}: {e}",
                    self.opts
                        .state_dir
                        .join(crate::state::HISTORY_FILE)
                        .display()
                )],
            ),
        };
        let n = self.unsaved_records.len();
        records.extend(self.unsaved_records.iter().map(|(_, r)| r.clone()));
        crate::control::HistoryView {
            pid: std::process::id(),
            records,
            warnings,
            unsaved: n,
        }
    }

    /// What the loop runs and knows now (the control socket's `GET /v1/view`).
    fn view(&self) -> crate::control::View {
        crate::control::View {
            pid: std::process::id(),
            manifest_file: self.desired.manifest_file.clone(),
            applied: self.desired.normalized.clone(),
            template: self.desired.template_hash(),
            memory: self.memory.clone(),
            plan: self.last_plan.clone(),
            disk: self.last_disk.clone(),
            status: self.reporter.last_status().cloned(),
            condition: self.condition.clone(),
        }
    }
}

/// What differs between the running manifest and a new one, in words.
fn describe_changes(old: &Desired, new: &Desired, memory: &Memory) -> String {
    if old.normalized == new.normalized {
        return "unchanged".into();
    }
    let mut changes = Vec::new();
    let (a, b) = (old.counts, new.counts);
    for (field, x, y) in [
        ("workers.target", a.target, b.target),
        ("workers.min", a.min, b.min),
        ("workers.max", a.max, b.max),
    ] {
        if x != y {
            changes.push(format!("{field} {x} → {y}"));
        }
    }
    if old.interval != new.interval {
        changes.push(format!(
            "interval {} → {}",
            crate::manifest::duration::format_duration(old.interval),
            crate::manifest::duration::format_duration(new.interval)
        ));
    }
    if old.template_hash() != new.template_hash() {
        let running = memory
            .workers
            .values()
            .filter(|w| w.process.is_some())
            .count();
        changes.push(format!(
            "the template (command, env, parameters or workdir) changed: {} the previous one until {} next restart",
            match running {
                1 => "1 running worker keeps".to_string(),
                n => format!("{n} running workers keep"),
            },
            plural(running, "its", "their")
        ));
    }
    let other = similar::TextDiff::from_lines(&old.normalized, &new.normalized)
        .iter_all_changes()
        .filter(|c| c.tag() == similar::ChangeTag::Insert)
        .count();
    if changes.is_empty() {
        changes.push(format!(
            "{} of the manifest changed (see `automon diff`)",
            match other {
                1 => "1 line".to_string(),
                n => format!("{n} lines"),
            }
        ));
    }
    changes.join("; ")
}

/// A worker's phase after `plan` and its checkpoint in `memory`, for an event's fields.
fn facts(plan: &Plan, memory: &Memory, worker: WorkerId) -> (Option<String>, Option<u64>) {
    (
        plan.workers.get(&worker).map(|s| format!("{:?}", s.phase)),
        memory.workers.get(&worker).and_then(|w| w.checkpoint),
    )
}

/// Each worker's recorded pid.
fn pids(memory: &Memory) -> std::collections::BTreeMap<WorkerId, i32> {
    memory
        .workers
        .iter()
        .filter_map(|(id, w)| Some((*id, w.process.as_ref()?.identity.pid)))
        .collect()
}

/// What a failed save leaves unrecorded on disk, in words: the workers whose process changed
/// since the last save, and the rest of memory's changes.
fn at_risk(saved: &std::collections::BTreeMap<WorkerId, i32>, memory: &Memory) -> String {
    let now = pids(memory);
    let mut changed = Vec::new();
    for (id, pid) in &now {
        if saved.get(id) != Some(pid) {
            changed.push(format!("worker {id} started as pid {pid}"));
        }
    }
    for (id, pid) in saved {
        if !now.contains_key(id) {
            changed.push(format!("worker {id} pid {pid} ended"));
        }
    }
    if changed.is_empty() {
        "fix attempts, backoffs and requests since the last save (no worker started or stopped)"
            .into()
    } else {
        format!(
            "not on disk: {}; and fix attempts, backoffs and requests since the last save",
            changed.join(", ")
        )
    }
}

fn stop_message(
    worker: WorkerId,
    pid: i32,
    job: bool,
    leftovers: bool,
    outcome: &stop::StopOutcome,
) -> String {
    if job {
        return crate::runtime::slurm::stop_message(worker, pid, outcome);
    }
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
    if leftovers {
        // `pid` had already exited, and said how; these are the rest of its group.
        return format!("worker {worker}: the rest of process group {pid} {how}");
    }
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

/// The final words of a completed run: the whole migration's totals (persisted across
/// restarts of automon) — wall time since the first apply, restarts by cause, fixes, the
/// work done — and this run's figures beside them where they differ.
pub fn summary(
    desired: &Desired,
    memory: &Memory,
    before: &plan::Totals,
    wall: Duration,
    now: jiff::Timestamp,
) -> String {
    use crate::manifest::duration::format_duration;
    let shards = desired.shards.as_ref().map_or(0, Vec::len);
    let items: Option<u64> = memory.workers.values().map(|w| w.items).sum();
    let done = match items {
        Some(n) => format!(
            "{} {} done",
            count(n),
            plural(n, &desired.unit, &format!("{}s", desired.unit))
        ),
        None => {
            let (a, b) = memory.range.unwrap_or_default();
            format!("keys [{}, {}) done", count(a), count(b))
        }
    };
    let t = &memory.totals;
    let restarts = |crash: u64, stuck: u64| {
        if crash + stuck == 0 {
            return "no restarts".to_string();
        }
        format!(
            "{} ({crash} after a crash, {stuck} after being stuck)",
            counted(crash + stuck, "restart", "restarts")
        )
    };
    let fixes: u64 = t.fixes.values().sum();
    let fixes = if fixes == 0 {
        "no fixes".to_string()
    } else {
        let kinds: Vec<String> = t
            .fixes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| {
                let (one, many) = match k.as_str() {
                    "restart" => ("restart", "restarts"),
                    "config_fix" => ("config fix", "config fixes"),
                    "code_fix" => ("code fix", "code fixes"),
                    other => (other, other),
                };
                counted(*n, one, many)
            })
            .collect();
        format!("{} ({})", counted(fixes, "fix", "fixes"), kinds.join(", "))
    };
    let whole = t
        .first_applied_at
        .and_then(|first| now.duration_since(first).try_into().ok())
        .unwrap_or(wall);
    let mut out = format!(
        "{}: {done}; {}; {fixes}; wall time {}",
        match shards {
            1 => "the 1 shard complete".to_string(),
            n => format!("all {n} shards complete"),
        },
        restarts(t.crash_restarts, t.stuck_restarts),
        format_duration(whole)
    );
    if t.runs > 1 {
        let (crash, stuck) = (
            t.crash_restarts - before.crash_restarts,
            t.stuck_restarts - before.stuck_restarts,
        );
        out.push_str(&format!(
            " over {} runs of automon; this run: {}, wall time {}",
            t.runs,
            restarts(crash, stuck),
            format_duration(wall)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(unit: &str) -> Desired {
        let text = format!(
            r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: t}}
spec:
  work: {{range: {{start: 1, end: 801}}, shards: 8, unit: {unit}}}
  template: {{command: [w, "{{id}}"]}}
  progress: {{file: "p{{id}}.json", checkpoint: /c, items: /n}}
  logs: {{file: "w{{id}}.log"}}
"#
        );
        let workerset = crate::manifest::parse(&text).expect("valid manifest");
        let manifest = crate::manifest::Manifest {
            file: PathBuf::from("t.yaml"),
            dir: PathBuf::from("/tmp/t"),
            workerset,
        };
        Desired::resolve(&manifest, None).expect("resolve")
    }

    fn memory(items: u64) -> Memory {
        let mut m = Memory::default();
        for id in 0..8 {
            m.workers.insert(
                WorkerId(id),
                Box::new(plan::WorkerMemory {
                    items: Some(items),
                    ..plan::WorkerMemory::default()
                }),
            );
        }
        m
    }

    /// Regression: after 22 restarts of automon the summary gave only the last process's
    /// figures ("1 restart(s) this run … wall time 3m30s" for a 6m21s migration with two), and
    /// said "books migrated" whatever the manifest's unit.
    #[test]
    fn the_final_summary_gives_the_whole_migration_and_this_run_beside_it() {
        let first = jiff::Timestamp::from_second(1_800_000_000).expect("valid");
        let now = first
            .checked_add(jiff::SignedDuration::from_secs(381))
            .expect("valid");
        let mut m = memory(25);
        m.totals = plan::Totals {
            crash_restarts: 1,
            stuck_restarts: 1,
            first_applied_at: Some(first),
            runs: 22,
            ..plan::Totals::default()
        };
        m.totals.fixes.insert("restart".into(), 1);
        let before = plan::Totals {
            crash_restarts: 1,
            ..plan::Totals::default()
        };
        insta::assert_snapshot!(
            summary(&desired("item"), &m, &before, Duration::from_secs(210), now),
            @"all 8 shards complete: 200 items done; 2 restarts (1 after a crash, 1 after being stuck); 1 fix (1 restart); wall time 6m21s over 22 runs of automon; this run: 1 restart (0 after a crash, 1 after being stuck), wall time 3m30s"
        );
        // One run: its figures are the whole migration's, said once.
        m.totals.runs = 1;
        m.totals.fixes.clear();
        insta::assert_snapshot!(
            summary(&desired("book"), &m, &plan::Totals::default(), Duration::from_secs(381), now),
            @"all 8 shards complete: 200 books done; 2 restarts (1 after a crash, 1 after being stuck); no fixes; wall time 6m21s"
        );
    }
}
