//! The planner: `plan(desired, observed, memory, now) -> Plan`. Pure — no I/O, no clock reads —
//! and the only place automon decides. Every action carries the reason a person would read.

pub mod backoff;
mod fixes;
pub mod health;
pub(crate) use worker::without_leading_time;
pub mod memory;
pub mod rate;
mod scaling;
mod unsettled;
mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::WorkerId;
use crate::clock::{BootTime, Now};
use crate::manifest::duration::format_duration as fmt_dur;
use crate::manifest::{Desired, Shard, render_argv};
use crate::observe::logtail::LineClass;
use crate::observe::{
    LogObservation, Observed, ProcessIdentity, ProcessStatus, ProgressObservation,
    WorkerObservation,
};
use crate::text::{count, span};
pub use memory::{Memory, RunningProcess, Stopping, Totals, WorkerMemory};

/// Passes in a row that must find a worker stuck before it is stopped.
pub const STUCK_CONFIRMATIONS: u32 = 2;

/// Times a cursor phrase must recur (with the checkpoint standing still) before a stuck reason
/// calls it a loop.
pub const LOOP_EVIDENCE: u32 = 3;

/// How long a progress file must stay unreadable, read after read, before a worker that has a
/// checkpoint reports it: a non-atomic writer is caught mid-write now and then (a torn read),
/// which is no news while the next read parses. (A worker without a checkpoint is held at once.)
pub const UNREADABLE_REPORT_AFTER: Duration = Duration::from_secs(30);

/// Starts in a row that may fail (the program cannot be executed) before the worker is Failed.
pub const MAX_START_FAILURES: u32 = 3;

/// Exits 0 in a row, short of the shard's end, with the progress file never seen, before the
/// worker is held (rerunning it would redo its whole shard again).
pub const MAX_EXITS_WITHOUT_PROGRESS_FILE: u32 = 2;

/// How far back rate samples reach (items/min and ETAs use this window).
pub const RATE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The least time between two kept rate samples older than the newest: a rate needs only the
/// first sample inside [`RATE_WINDOW`] and the newest, so a worker keeps at most
/// [`MAX_RATE_SAMPLES`] however often its checkpoint moves.
pub const RATE_SAMPLE_SPACING: Duration = Duration::from_secs(RATE_WINDOW.as_secs() / 15);

/// Most (time, checkpoint) samples a worker keeps: one per [`RATE_SAMPLE_SPACING`] inside
/// [`RATE_WINDOW`], one at its start, and the newest.
pub const MAX_RATE_SAMPLES: usize =
    (RATE_WINDOW.as_secs() / RATE_SAMPLE_SPACING.as_secs()) as usize + 2;

/// Where a worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Never started; waiting for a free slot.
    Pending,
    /// Started this pass.
    Starting,
    /// Its batch job waits in the scheduler's queue (`runtime: slurm`); its stuck and
    /// discovery clocks start when it runs.
    Queued,
    /// Running, no upload since it started.
    Discovering,
    /// Running and making progress.
    Progressing,
    /// Running without a progress signal past its threshold.
    Stuck,
    /// A stop was requested; waiting for its process group to go.
    Stopping,
    /// More than one live process claims this worker id; automon waits for an operator.
    Conflict,
    /// Not running, shard not complete, waiting for a slot.
    Stopped,
    /// Crashed; waiting out its backoff.
    BackingOff,
    /// Stopped on purpose by scale-down; resumes when scaling allows, before new shards.
    Parked,
    /// Stopped by escalation or an operator; waits for `automon resume`.
    Paused,
    /// Stopped by escalation `stop_worker`; never restarted.
    Failed,
    /// Its shard is done; never restarted.
    Completed,
    /// Its engine cannot say what runs (the Slurm scheduler does not answer): nothing about it
    /// that needs the engine is decided until it answers.
    Unknown,
}

impl Phase {
    /// Whether one pass may move a worker from `self` to `next` without an operator. Phases
    /// are derived from observation each pass, so most moves are possible; the exceptions are
    /// the held and finished ones: Completed stays Completed (a persisted fact), Failed and
    /// Paused stay put until `automon resume` (or turn out Completed), and a Parked worker only
    /// resumes by starting (or is paused).
    pub fn may_become(self, next: Phase) -> bool {
        use Phase::*;
        match self {
            _ if self == next => true,
            Completed => false,
            // A held or parked worker whose progress file shows its shard done is done (a
            // parked worker may write its last item while it stops).
            Failed | Paused => next == Completed,
            Parked => matches!(next, Starting | Paused | Failed | Completed),
            _ => true,
        }
    }
}

/// A worker's phase and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The phase.
    pub phase: Phase,
    /// Why it is in that phase, with numbers.
    pub reason: Reason,
}

/// Why a worker is in its phase, as a sentence (`Display`; serialized as that string).
///
/// A running worker's steady reason is kept as its facts and written only when read: every
/// pass gives every worker a reason, and at 1,000 workers writing them all out was about a
/// third of the planner's time, while a person reads a handful.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Written out.
    Text(String),
    /// A running worker without an alarm: `pid 4242 at book 1,234; 12s since the last progress`
    /// (`job 360 at …` for a Slurm job).
    Running {
        /// Its process or job.
        handle: crate::runtime::Handle,
        /// The unit's name (`book`) and its checkpoint, when it has one.
        at: Option<(std::sync::Arc<str>, u64)>,
        /// Time since the last progress signal (or since its start).
        idle: Duration,
        /// No progress signal since it started.
        since_start: bool,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Text(text) => f.write_str(text),
            Reason::Running {
                handle,
                at,
                idle,
                since_start,
            } => {
                write!(f, "{handle}")?;
                if let Some((unit, checkpoint)) = at {
                    write!(f, " at {unit} {}", crate::text::Count(*checkpoint))?;
                }
                let since = if *since_start {
                    "since start"
                } else {
                    "since the last progress"
                };
                write!(f, "; {} {since}", crate::manifest::duration::Compact(*idle))
            }
        }
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Reason::Text(text)
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        Reason::Text(text.to_string())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Reason::Text)
    }
}

/// Start one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartAction {
    /// The worker.
    pub worker: WorkerId,
    /// argv with placeholders substituted.
    pub argv: Vec<String>,
    /// The cursor it resumes from.
    pub resume_from: Option<u64>,
    /// Why, in words.
    pub reason: String,
}

/// Stop one worker's process group: the stop signal, `grace`, SIGKILL, until the group is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAction {
    /// The worker.
    pub worker: WorkerId,
    /// The process to stop; re-checked before every signal.
    pub identity: ProcessIdentity,
    /// Signal its whole process group (it leads one), else only the process.
    pub whole_group: bool,
    /// Time between the stop signal and SIGKILL.
    pub grace: Duration,
    /// Why, in words.
    pub reason: String,
    /// Whether the stop must wait until the memory of the pass that decided it is on disk.
    /// True when the stop carries intent that exists only in memory (a restart counted, a fix
    /// attempt, a pause, a scale-down). False when it follows from the recorded process and
    /// what is observed alone — the leader of the worker's process group has exited and
    /// members remain — so an automon killed before the save decides the same stop again;
    /// such a stop runs at once even while the state file system does not answer, and the
    /// crashed worker is replaced.
    pub awaits_save: bool,
}

/// Ask the LLM what is wrong with a stuck worker (runs in the background; the answer is
/// recorded with [`record_diagnosis`] and used by a later pass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnoseAction {
    /// The worker.
    pub worker: WorkerId,
    /// Why, in words.
    pub reason: String,
}

/// Apply a proposed code change to an allow-listed file (recorded with [`record_code_fix`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeFixAction {
    /// The worker whose fix it is.
    pub worker: WorkerId,
    /// The change as proposed (function replacement, old → new, or unified diff).
    pub proposal: String,
    /// Why, in words.
    pub reason: String,
}

/// Restore a file from its backup after a code fix failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackAction {
    /// The worker whose fix it was.
    pub worker: WorkerId,
    /// The changed file.
    pub file: std::path::PathBuf,
    /// Its backup.
    pub backup: std::path::PathBuf,
    /// The hash of the patch being undone (the rollback is refused if the file changed since).
    pub patch_hash: String,
    /// Why, in words.
    pub reason: String,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Start a worker process.
    Start(StartAction),
    /// Stop a worker's process group.
    Stop(StopAction),
    /// Ask the LLM about a stuck worker.
    Diagnose(DiagnoseAction),
    /// Apply a code fix.
    ApplyCodeFix(CodeFixAction),
    /// Roll a code fix back.
    RollbackCodeFix(RollbackAction),
}

impl Action {
    /// The worker the action is for.
    pub fn worker(&self) -> WorkerId {
        match self {
            Self::Start(a) => a.worker,
            Self::Stop(a) => a.worker,
            Self::Diagnose(a) => a.worker,
            Self::ApplyCodeFix(a) => a.worker,
            Self::RollbackCodeFix(a) => a.worker,
        }
    }

    /// A one-word verb for listings: start, stop, diagnose, code-fix, rollback.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Stop(_) => "stop",
            Self::Diagnose(_) => "diagnose",
            Self::ApplyCodeFix(_) => "code-fix",
            Self::RollbackCodeFix(_) => "rollback",
        }
    }

    /// The reason, in words.
    pub fn reason(&self) -> &str {
        match self {
            Self::Start(a) => &a.reason,
            Self::Stop(a) => &a.reason,
            Self::Diagnose(a) => &a.reason,
            Self::ApplyCodeFix(a) => &a.reason,
            Self::RollbackCodeFix(a) => &a.reason,
        }
    }
}

/// The result of one planning pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Actions, in the order to run them (stops first).
    pub actions: Vec<Action>,
    /// The next memory (before action outcomes are recorded).
    pub memory: Memory,
    /// When to look again if nothing wakes the loop earlier.
    pub requeue_after: Duration,
    /// Every worker's phase and reason.
    pub workers: BTreeMap<WorkerId, WorkerStatus>,
    /// Facts noticed this pass that are not actions (completions, unreadable files), in words.
    pub events: Vec<String>,
    /// True when every shard is complete.
    pub complete: bool,
    /// Set when nothing can progress without an operator (every unfinished worker is paused or
    /// failed): the reason.
    pub blocked: Option<String>,
    /// The scaling decision or hold of this pass, in words.
    pub scaling: String,
}

/// Whether the manifest's shard layout (key range and shard count) differs from the one
/// `memory` was written with: `Some(why)` in words when it does. Each worker's checkpoint is
/// meaningful only inside its own shard: re-cut shards would put old checkpoints into other
/// shards (a checkpoint past a new, smaller shard's end reads as that shard being complete),
/// so a run with another layout must be refused, not planned. `state_file` names the file in
/// the message. State written before the layout was recorded has nothing to compare. State
/// written for another WorkerSet (another `metadata.name`: two manifests in one directory
/// share `.automon/` by default) is refused first.
pub fn layout_change(
    desired: &Desired,
    memory: &Memory,
    state_file: &std::path::Path,
) -> Option<String> {
    if let Some(other) = memory
        .last_applied
        .as_deref()
        .and_then(applied_name)
        .filter(|n| *n != desired.name)
    {
        return Some(format!(
            "{} belongs to WorkerSet {other:?}, not {:?} (metadata.name): two WorkerSets cannot share a state directory (their workers, checkpoints and lock would mix); give this one its own with --state-dir DIR",
            state_file.parent().unwrap_or(state_file).display(),
            desired.name
        ));
    }
    let (range, n) = shard_layout(desired)?;
    let advice = "shard boundaries would move under the workers' checkpoints (use another state directory to start a new migration)";
    if let Some(old) = memory.range
        && old != range
    {
        return Some(format!(
            "the key range is now [{}, {}) but {} was written for [{}, {}): {advice}",
            count(range.0),
            count(range.1),
            state_file.display(),
            count(old.0),
            count(old.1)
        ));
    }
    match memory.shard_count {
        Some(old) if old != n => Some(format!(
            "spec.work.shards is now {n} but {} was written for {}: {advice}",
            state_file.display(),
            crate::text::counted(old, "shard", "shards")
        )),
        _ => None,
    }
}

/// `metadata.name` of a normalised manifest ([`Memory::last_applied`]); `None` when it does
/// not parse.
pub fn applied_name(applied: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        metadata: Meta,
    }
    serde_saphyr::from_str::<Head>(applied)
        .ok()
        .map(|h| h.metadata.name)
}

/// The manifest's shard layout: the key range `[start, end)` and the shard count; `None` for
/// replicas (no range). What [`Memory::range`] and [`Memory::shard_count`] record.
pub fn shard_layout(desired: &Desired) -> Option<((u64, u64), u32)> {
    let shards = desired.shards.as_ref()?;
    let (first, last) = (shards.first()?, shards.last()?);
    let n = u32::try_from(shards.len()).unwrap_or(u32::MAX);
    Some(((first.start, last.end), n))
}

/// Plans one pass. `now` is the time of the observation. `memory` is the previous pass's
/// (consumed: the next one is [`Plan::memory`]; a caller that wants both keeps a clone, which
/// costs about as much as the plan itself at 1,000 workers).
pub fn plan(desired: &Desired, observed: &Observed, memory: Memory, now: Now) -> Plan {
    let mut planner = Planner {
        desired,
        now,
        memory,
        actions: Vec::new(),
        events: Vec::new(),
        statuses: BTreeMap::new(),
        requeue: desired.interval,
        conflicts: std::collections::BTreeSet::new(),
        adopted_now: std::collections::BTreeSet::new(),
        stops_in_flight: observed.children.stopping.clone(),
        scaling: String::new(),
        unit_name: std::sync::Arc::from(desired.unit.as_str()),
        held: std::collections::BTreeSet::new(),
        code_fix_owner: None,
    };
    planner.code_fix_owner = fixes::code_fix_in_flight(&planner.memory);
    planner.memory.version = memory::MEMORY_VERSION;
    if planner.memory.boot_id != observed.boot_id {
        planner.forget_previous_boot(&observed.boot_id);
    }
    planner.reset_params_if_the_manifest_changed();
    planner.adopt_unrecorded(observed);
    let empty = WorkerObservation {
        process: None,
        group_alive: false,
        progress: ProgressObservation::Missing,
        log: LogObservation::Missing,
    };
    // Each worker's memory is stepped in place, the map held outside the planner meanwhile.
    let mut workers = std::mem::take(&mut planner.memory.workers);
    for id in desired.worker_ids() {
        let obs = observed.workers.get(&id).unwrap_or(&empty);
        let w = workers.entry(id).or_default();
        let pid = w.process.as_ref().map(|p| p.identity.pid);
        let exit = observed
            .children
            .exits
            .iter()
            .find(|e| e.worker == id && pid == Some(e.pid));
        let exit_pending =
            exit.is_none() && pid.is_some_and(|p| observed.children.unreaped.contains(&p));
        planner.step_worker(id, w, obs, exit, exit_pending);
    }
    // A restart for changed code is owed to running workers only: one that is gone or being
    // stopped starts again on whatever the file holds then.
    planner.memory.restart_for_code.retain(|id| {
        workers
            .get(id)
            .is_some_and(|w| w.process.is_some() && w.stopping.is_none())
    });
    planner.memory.workers = workers;
    planner.scale(observed);
    if let Some(why) = &observed.scan_incomplete {
        // A worker the scan missed would be started twice: start nothing until it is whole.
        // Said when the hold begins; `status` shows it while it lasts.
        if planner.memory.scan_held.is_none() {
            planner.events.push(format!(
                "could not look for running workers ({why}); starting nothing until automon can"
            ));
            planner.memory.scan_held = Some(memory::ScanHold {
                why: why.clone(),
                since: now.boot,
            });
        }
        planner.wake_in(Duration::from_secs(1));
    } else {
        if let Some(held) = planner.memory.scan_held.take() {
            planner.events.push(format!(
                "running workers can be looked for again after {} ({}); carrying on",
                fmt_dur(now.boot.since(held.since)),
                held.why
            ));
        }
        planner.schedule_starts(observed.unsaved_state.as_deref());
    }
    let blocked = planner.blocked();
    let complete = desired.shards.is_some()
        && desired.worker_ids().iter().all(|id| {
            planner
                .statuses
                .get(id)
                .is_some_and(|s| s.phase == Phase::Completed)
        });
    planner.actions.sort_by_key(|a| match a {
        Action::Stop(_) | Action::RollbackCodeFix(_) => 0,
        Action::ApplyCodeFix(_) | Action::Diagnose(_) => 1,
        Action::Start(_) => 2,
    });
    Plan {
        actions: planner.actions,
        memory: planner.memory,
        requeue_after: planner.requeue,
        workers: planner.statuses,
        events: planner.events,
        complete,
        blocked,
        scaling: planner.scaling,
    }
}

struct Planner<'a> {
    desired: &'a Desired,
    now: Now,
    memory: Memory,
    actions: Vec<Action>,
    events: Vec<String>,
    statuses: BTreeMap<WorkerId, WorkerStatus>,
    requeue: Duration,
    /// Worker ids with more than one live process this pass.
    conflicts: std::collections::BTreeSet<WorkerId>,
    /// Worker ids whose live process was adopted this pass (found by the scan, so alive now).
    adopted_now: std::collections::BTreeSet<WorkerId>,
    /// Worker ids with a stop task running in this automon ([`crate::observe::Children`]).
    stops_in_flight: std::collections::BTreeSet<WorkerId>,
    /// The scaling decision of this pass, in words.
    scaling: String,
    /// The manifest's unit (`book`), shared by the running workers' reasons.
    unit_name: std::sync::Arc<str>,
    /// Workers not started this pass although idle: their progress file exists but does not
    /// parse and no checkpoint is remembered (a start would begin at the shard's start).
    held: std::collections::BTreeSet<WorkerId>,
    /// The worker whose code fix is being applied or verified: one code fix at a time.
    code_fix_owner: Option<WorkerId>,
}

/// The fingerprint of a progress line, as kept in [`WorkerMemory::recent_signals`]: XXH3-64
/// of its UTF-8 bytes. A specified algorithm (unlike std's `DefaultHasher`, which may change
/// between Rust releases), so fingerprints in a state file stay comparable across builds; and
/// about four times cheaper than SipHash on a log line.
pub(crate) fn fingerprint(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

impl Planner<'_> {
    /// After a reboot (or on first use) boot-clock times and processes in memory are void.
    fn forget_previous_boot(&mut self, boot_id: &str) {
        let had_boot = !self.memory.boot_id.is_empty();
        for (id, w) in &mut self.memory.workers {
            // A Slurm job runs elsewhere and outlives this machine's reboot; its clock restarts.
            if let Some(p) = w
                .process
                .as_mut()
                .filter(|p| crate::runtime::Handle::of(&p.identity).is_job())
            {
                p.started_at = self.now.boot;
            } else if had_boot && w.process.take().is_some() {
                self.events.push(format!(
                    "worker {id}: the machine rebooted; its process is gone"
                ));
            }
            w.stopping = None;
            w.checkpoint_changed_at = None;
            w.last_progress_at = None;
            w.backoff_until = None;
            // Deadlines on the old boot's clock mean nothing; an outcome not yet acted on is
            // about a process that is gone.
            if w.fixes.stage.as_ref().is_some_and(|s| {
                s.awaits_action()
                    || matches!(
                        s,
                        memory::FixStage::Asked { .. } | memory::FixStage::Applying { .. }
                    )
            }) {
                w.fixes.stage = None;
            }
        }
        self.memory.boot_id = boot_id.to_string();
    }

    /// Config-fix overrides last until the manifest changes its parameters.
    fn reset_params_if_the_manifest_changed(&mut self) {
        if self.memory.params_basis.as_ref() == Some(&self.desired.parameters) {
            return;
        }
        if self.memory.params_basis.is_some() {
            for (id, w) in &mut self.memory.workers {
                if !w.params.is_empty() {
                    self.events.push(format!(
                        "worker {id}: the manifest changed its parameters; dropping the config-fix values {:?}",
                        w.params
                    ));
                    w.params.clear();
                }
            }
        }
        self.memory.params_basis = Some(self.desired.parameters.clone());
    }

    /// Records a stop in memory and issues it: the stop signal to the worker's process group
    /// (or to the process alone when it leads none), `stop_grace`, SIGKILL. `restart` says
    /// whether the worker is restarted once it is gone.
    pub(super) fn request_stop(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        reason: String,
        restart: bool,
    ) {
        self.request_stop_as(id, w, process, reason, restart, true);
    }

    /// [`Self::request_stop`], saying whether the stop must wait for the save
    /// ([`StopAction::awaits_save`]).
    pub(super) fn request_stop_as(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        reason: String,
        restart: bool,
        awaits_save: bool,
    ) {
        w.stopping = Some(Stopping {
            requested_at: self.now.boot,
            reason: reason.clone(),
            restart,
            unkillable_since: None,
            exit_reported: false,
        });
        self.actions.push(Action::Stop(StopAction {
            worker: id,
            identity: process.identity.clone(),
            whole_group: process.own_group,
            grace: self.desired.stop_grace,
            reason,
            awaits_save,
        }));
    }

    /// Carries on a recorded stop that no stop task of this automon is running (the automon
    /// that began it was killed, or the task could not confirm the identity): the stop signal
    /// again and SIGKILL at the original deadline (`requested_at + stop_grace`), not a new grace
    /// period. A process found unkillable is left to the SIGKILL already pending in the kernel.
    pub(super) fn resume_stop(&mut self, id: WorkerId, w: &WorkerMemory, process: &RunningProcess) {
        let Some(stopping) = &w.stopping else {
            return;
        };
        if stopping.unkillable_since.is_some() || self.stop_pending(id) {
            return;
        }
        let deadline = stopping.requested_at.plus(self.desired.stop_grace);
        let grace = deadline.since(self.now.boot);
        let kill_at = if grace.is_zero() {
            "SIGKILL now: its grace period is over".to_string()
        } else {
            format!("SIGKILL in {} if it is still there", fmt_dur(grace))
        };
        let reason = format!(
            "worker {id}: resuming the stop of {} requested {} ago ({}); {kill_at}",
            crate::runtime::Handle::of(&process.identity),
            fmt_dur(self.since(stopping.requested_at)),
            stopping.reason
        );
        self.actions.push(Action::Stop(StopAction {
            worker: id,
            identity: process.identity.clone(),
            whole_group: process.own_group,
            grace,
            reason,
            awaits_save: true,
        }));
    }

    fn since(&self, then: BootTime) -> Duration {
        self.now.boot.since(then)
    }

    fn later(&self, d: Duration) -> BootTime {
        self.now.boot.plus(d)
    }

    fn set(&mut self, id: WorkerId, phase: Phase, reason: impl Into<Reason>) {
        let reason = reason.into();
        self.statuses.insert(id, WorkerStatus { phase, reason });
    }

    fn wake_in(&mut self, d: Duration) {
        self.requeue = self.requeue.min(d.max(Duration::from_millis(100)));
    }

    fn unit(&self) -> &str {
        &self.desired.unit
    }

    /// The checkpoint as a person reads it: `None` before the first key of the worker's shard
    /// is done (a worker reports `start - 1` at its start, which is no key of its shard).
    fn progress_of(&self, id: WorkerId, checkpoint: Option<u64>) -> Option<u64> {
        let c = checkpoint?;
        match self.desired.shard(id) {
            Some(s) if c < s.start => None,
            _ => Some(c),
        }
    }

    /// Where a (re)start resumes, in words: `from checkpoint 1,451`, or `from the start of its
    /// shard, book 1` before any key of it is done.
    fn resume_words(&self, id: WorkerId, checkpoint: Option<u64>) -> String {
        match (self.progress_of(id, checkpoint), self.desired.shard(id)) {
            (Some(c), _) => format!("from checkpoint {}", count(c)),
            (None, Some(s)) => format!(
                "from the start of its shard, {} {}",
                self.unit(),
                count(s.start)
            ),
            (None, None) => "from the start".into(),
        }
    }

    /// True when worker `id` has a stop running in this automon or ordered by this plan: it
    /// is not started (nor stopped again) until that stop reports.
    pub(super) fn stop_pending(&self, id: WorkerId) -> bool {
        self.stops_in_flight.contains(&id)
            || self
                .actions
                .iter()
                .any(|a| matches!(a, Action::Stop(s) if s.worker == id))
    }

    /// Takes over live workers memory does not record (see
    /// [`crate::observe::UnrecordedWorker`]). A worker whose recorded process is gone and that
    /// runs one unrecorded process carrying this WorkerSet's marker was restarted by an
    /// earlier automon killed before it saved: that process is the worker now (adopted, never
    /// duplicated). Only live processes count towards a conflict.
    fn adopt_unrecorded(&mut self, observed: &Observed) {
        let mut by_id: BTreeMap<WorkerId, Vec<&crate::observe::UnrecordedWorker>> = BTreeMap::new();
        for u in &observed.unrecorded {
            by_id.entry(u.worker).or_default().push(u);
        }
        for (id, mut found) in by_id {
            // Another automon's worker on this worker's files: reported, left alone, and
            // nothing started beside it.
            found.retain(|u| {
                let Some(owner) = &u.other_owner else {
                    return true;
                };
                self.events.push(format!(
                    "worker {id}: pid {} writes this worker's files but belongs to another automon (state directory {owner}); adopting it, signalling it and starting a duplicate are all refused",
                    u.identity.pid
                ));
                self.conflicts.insert(id);
                false
            });
            if found.is_empty() {
                continue;
            }
            let obs = observed.workers.get(&id);
            let w = self.memory.workers.entry(id).or_default();
            // The recorded process is gone (and its group with it): it no longer runs the worker.
            let recorded_gone = w.process.is_some()
                && obs.is_some_and(|o| {
                    matches!(
                        o.process,
                        Some(ProcessStatus::Exited | ProcessStatus::Reused)
                    ) && !o.group_alive
                });
            let previous = if recorded_gone {
                w.process.take()
            } else {
                None
            };
            match (&w.process, found.as_slice()) {
                (None, [u]) => {
                    w.process = Some(RunningProcess {
                        identity: u.identity.clone(),
                        started_at: u.started_at.unwrap_or(self.now.boot),
                        resume_from: None,
                        adopted: true,
                        own_group: u.own_group,
                        template: None,
                    });
                    w.completed_at = None;
                    let how = if u.by_command_line {
                        "its command line and working directory match the template; automon did not start it"
                    } else {
                        "started by an earlier automon that stopped before recording it"
                    };
                    let instead = previous.as_ref().map_or_else(String::new, |p| {
                        // The stop or restart that replaced it is done.
                        w.stopping = None;
                        w.restart_reason = None;
                        format!(
                            " in place of the recorded {}, which is gone",
                            crate::runtime::Handle::of(&p.identity)
                        )
                    });
                    self.adopted_now.insert(id);
                    w.differs.clone_from(&u.differences);
                    let differs = if u.differences.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; it differs from the manifest: {}; its next restart applies the manifest",
                            u.differences.join("; ")
                        )
                    };
                    self.events.push(format!(
                        "worker {id}: adopted {}{instead} ({how}){differs}",
                        crate::runtime::Handle::of(&u.identity)
                    ));
                }
                (None, many) => {
                    let pids: Vec<String> =
                        many.iter().map(|u| u.identity.pid.to_string()).collect();
                    self.events.push(format!(
                        "worker {id}: conflict: {} live processes run it (pids {}); adopting none and starting none until only one is left",
                        many.len(),
                        pids.join(", ")
                    ));
                    // The gone recorded process is forgotten (it is neither live nor ours now).
                    self.conflicts.insert(id);
                }
                (Some(p), others) => {
                    for u in others {
                        if u.by_command_line {
                            self.events.push(format!(
                                "worker {id}: conflict: pid {} also runs its command line besides the recorded pid {}; automon did not start it and leaves it alone",
                                u.identity.pid, p.identity.pid
                            ));
                            self.conflicts.insert(id);
                            continue;
                        }
                        self.actions.push(Action::Stop(StopAction {
                            worker: id,
                            identity: u.identity.clone(),
                            whole_group: u.own_group,
                            grace: self.desired.stop_grace,
                            reason: format!(
                                "worker {id}: two live processes ({} recorded, {} not); stopping the unrecorded duplicate",
                                crate::runtime::Handle::of(&p.identity),
                                crate::runtime::Handle::of(&u.identity)
                            ),
                            awaits_save: true,
                        }));
                    }
                }
            }
        }
    }
}

/// Records that a stop of `worker`'s process `pid` ended with the process still alive after
/// SIGKILL (uninterruptible I/O): the stop is not repeated, and the planner reports the
/// worker as unkillable until it goes.
pub fn record_unkillable(memory: &mut Memory, worker: WorkerId, pid: i32, now: Now) {
    let Some(w) = memory.workers.get_mut(&worker) else {
        return;
    };
    if w.process.as_ref().is_some_and(|p| p.identity.pid == pid)
        && let Some(s) = w.stopping.as_mut()
    {
        s.unkillable_since.get_or_insert(now.boot);
    }
}

/// What the operator fixes when starts keep failing: on this machine the program is missing
/// or not executable; on Slurm `sbatch` refused the job, mostly for `spec.runtime` (a partition
/// or account that does not exist, limits the partition does not allow), sometimes for the
/// template (a working directory the job cannot use).
fn start_failure_advice(desired: &Desired) -> &'static str {
    match desired.runtime.kind {
        crate::manifest::types::RuntimeKind::Local => "fix the template's command",
        crate::manifest::types::RuntimeKind::Slurm => {
            "fix spec.runtime (partition, account, time_limit, cpus_per_worker, mem_per_worker, extra_args) or the template, as the error says"
        }
    }
}

/// Records the outcome of a start in memory: the new process, or a failure with backoff.
pub fn record_start(
    memory: &mut Memory,
    desired: &Desired,
    action: &StartAction,
    outcome: Result<(ProcessIdentity, BootTime), String>,
    now: Now,
) -> Option<String> {
    let w = memory.workers.entry(action.worker).or_default();
    match outcome {
        Ok((identity, started_at)) => {
            w.process = Some(RunningProcess {
                identity,
                started_at,
                resume_from: action.resume_from,
                adopted: false,
                own_group: true,
                template: Some(desired.template_hash()),
            });
            w.left_discovery = false;
            w.stuck_passes = 0;
            w.completed_at = None;
            // (A streak of failed starts ends with progress or another kind of exit: a
            // command whose program is missing behind `env` or `sh` starts, then exits 127.)
            None
        }
        Err(why) => {
            // A start that cannot execute the program is a crash (it counts towards backoff);
            // after MAX_START_FAILURES in a row the worker is Failed with the OS error.
            w.start_failures += 1;
            w.failures += 1;
            w.restart_reason = None;
            if w.start_failures >= MAX_START_FAILURES {
                let reason = format!(
                    "could not start {} in a row: {why}",
                    crate::text::counted(w.start_failures, "time", "times")
                );
                w.backoff_until = None;
                w.failed = Some(memory::Hold {
                    reason: reason.clone(),
                    at: now.wall,
                    by_operator: false,
                });
                return Some(format!(
                    "ALERT: worker {}: {reason}; Failed ({}, then `automon resume`)",
                    action.worker,
                    start_failure_advice(desired)
                ));
            }
            let delay = backoff::delay(w.failures, &desired.restart)
                .max(desired.restart.backoff_initial.get());
            w.backoff_until = Some(now.boot.plus(delay));
            w.restart_reason = Some(format!(
                "worker {}: retrying the start that failed",
                action.worker
            ));
            Some(format!(
                "worker {}: could not start: {why}; retrying in {}",
                action.worker,
                fmt_dur(delay)
            ))
        }
    }
}

/// Records a start the engine could not take because it did not answer (the Slurm
/// controller is unreachable): unlike a failed start, nothing is counted against the worker
/// (no failure, no backoff streak, never Failed for it); the start is tried again after
/// `restart.backoff_initial`. Returns the event to log.
pub fn record_start_unavailable(
    memory: &mut Memory,
    desired: &Desired,
    action: &StartAction,
    why: &str,
    now: Now,
) -> String {
    let w = memory.workers.entry(action.worker).or_default();
    let delay = desired.restart.backoff_initial.get();
    w.backoff_until = Some(now.boot.plus(delay));
    w.restart_reason = Some(format!(
        "worker {}: submitting again now that the scheduler may answer",
        action.worker
    ));
    format!(
        "worker {}: not started: {why}; nothing counted against the worker, trying again in {}",
        action.worker,
        fmt_dur(delay)
    )
}

/// Records an LLM answer (or failure) for `worker` at `now`; returns the event to log. The
/// fix pipeline moves from asked to answered or failed, and the next pass acts on it; an
/// outcome that arrives after the planner stopped waiting is logged and not used.
pub fn record_diagnosis(
    memory: &mut Memory,
    worker: WorkerId,
    outcome: Result<memory::DiagnosisNote, String>,
    now: Now,
) -> String {
    use memory::FixStage;
    let w = memory.workers.entry(worker).or_default();
    let asked = matches!(w.fixes.stage, Some(FixStage::Asked { .. }));
    let late = "it came after the planner stopped waiting for it, so it is not used";
    match outcome {
        Ok(mut note) => {
            let fix = note.fix.map_or("scale_down", memory::FixKind::name);
            let notes = if note.notes.is_empty() {
                String::new()
            } else {
                format!("; validation notes: {}", note.notes.join("; "))
            };
            let head = format!(
                "worker {worker}: LLM diagnosis: {} → {fix} (confidence {:.2}){notes}",
                note.root_cause, note.confidence
            );
            let event = if asked {
                let to = FixStage::Answered { at: now.boot };
                let moved = fixes::stage_event(
                    worker,
                    w.fixes.stage.as_ref(),
                    Some(&to),
                    "the LLM answered",
                    "the next pass applies its fix if the rules allow it, else the built-in fix",
                );
                w.fixes.stage = Some(to);
                format!("{head}; {}", strip_worker(&moved, worker))
            } else {
                note.used = true;
                format!("{head}; {late}")
            };
            w.diagnosis = Some(note);
            event
        }
        Err(why) => {
            let head = format!("worker {worker}: LLM diagnosis failed: {why}");
            if !asked {
                return format!("{head}; {late}");
            }
            let to = FixStage::Failed {
                at: now.boot,
                why: why.clone(),
            };
            let moved = fixes::stage_event(
                worker,
                w.fixes.stage.as_ref(),
                Some(&to),
                "a failed diagnosis is an outcome",
                "the built-in fix (restart from checkpoint) on the next pass",
            );
            w.fixes.stage = Some(to);
            format!("{head}; {}", strip_worker(&moved, worker))
        }
    }
}

/// `worker 3: fix pipeline …` → `fix pipeline …` (for joining onto an event about worker 3).
fn strip_worker(event: &str, worker: WorkerId) -> String {
    event
        .strip_prefix(&format!("worker {worker}: "))
        .unwrap_or(event)
        .to_string()
}

/// Applies an operator's pause or resume to memory (the planner honours it on the next pass: a
/// paused worker is stopped and never started; resume also clears an escalation pause or
/// failure and the failed-attempt count). Returns the event to log.
pub fn apply_request(
    memory: &mut Memory,
    kind: crate::state::requests::RequestKind,
    worker: WorkerId,
    now: Now,
) -> String {
    use crate::state::requests::RequestKind;
    let w = memory.workers.entry(worker).or_default();
    match kind {
        RequestKind::ResetParams if w.params.is_empty() => {
            format!("worker {worker} has no config-fix values; nothing to reset")
        }
        RequestKind::ResetParams => {
            let dropped: Vec<String> = w.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            w.params.clear();
            format!(
                "worker {worker}: config-fix values {} dropped by an operator; the manifest's apply from its next start",
                dropped.join(", ")
            )
        }
        RequestKind::Pause if w.completed_at.is_some() => {
            format!("worker {worker}: its shard is already complete; nothing to pause")
        }
        RequestKind::Resume if w.paused.is_none() && w.failed.is_none() => {
            format!("worker {worker} is not paused; nothing to resume")
        }
        RequestKind::Pause => {
            w.paused = Some(memory::Hold {
                reason: "paused by an operator (automon pause)".into(),
                at: now.wall,
                by_operator: true,
            });
            format!(
                "worker {worker}: paused by an operator; it is stopped and stays stopped until `automon resume`"
            )
        }
        RequestKind::Resume => {
            let was = match (&w.paused, &w.failed) {
                (_, Some(f)) => format!("failed: {}", f.reason),
                (Some(p), None) => p.reason.clone(),
                (None, None) => String::new(),
            };
            w.paused = None;
            w.failed = None;
            if let Some(a) = w.fixes.attempts.last_mut().filter(|a| a.result.is_none()) {
                a.result = Some(memory::Verification {
                    succeeded: false,
                    detail: "not verified: the worker was held before its verification".into(),
                    at: now.wall,
                });
            }
            w.fixes.failed_in_row = 0;
            w.fixes.kind = None;
            w.fixes.stage = None;
            w.stuck_since = None;
            w.stuck_passes = 0;
            w.failures = 0;
            w.start_failures = 0;
            w.exits_without_progress_file = 0;
            w.backoff_until = None;
            // What follows depends on whether a loop runs: the caller says it.
            format!("worker {worker}: resumed by an operator (was {was})")
        }
    }
}

/// How applying a code fix ended, as the actuator reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeFixOutcome {
    /// Written, with a backup.
    Applied(memory::AppliedCode),
    /// The file already contains the change: nothing written, no attempt spent.
    AlreadyApplied,
    /// Rejected; the file is untouched.
    Rejected(String),
}

/// Records a code-fix outcome at `now`. Applied: the next attempt (the counter moves only
/// for an applied fix), verified `verify_after` after the fixed worker's new process starts;
/// the workers that run the file (every running one, or with `restart: stuck_only` the fixed
/// one alone) restart on the next pass. Refused by the engine or already in the file: not an
/// attempt; the pipeline moves to refused and the next pass applies the built-in fix. Returns
/// the event to log.
pub fn record_code_fix(
    memory: &mut Memory,
    desired: &Desired,
    worker: WorkerId,
    outcome: CodeFixOutcome,
    now: Now,
) -> String {
    use memory::FixStage;
    let running: Vec<WorkerId> = memory
        .workers
        .iter()
        .filter(|(_, w)| w.process.is_some())
        .map(|(id, _)| *id)
        .collect();
    let max = desired.fixes.max_attempts;
    let w = memory.workers.entry(worker).or_default();
    let applying = matches!(w.fixes.stage, Some(FixStage::Applying { .. }));
    let refuse = |w: &mut WorkerMemory, why: String| -> String {
        if !applying {
            return "the planner had stopped waiting for it and already applied the built-in fix"
                .into();
        }
        let to = FixStage::Refused { at: now.boot, why };
        let moved = fixes::stage_event(
            worker,
            w.fixes.stage.as_ref(),
            Some(&to),
            "a refused proposal is not a fix attempt",
            "the built-in fix (restart from checkpoint) on the next pass",
        );
        w.fixes.stage = Some(to);
        strip_worker(&moved, worker)
    };
    match outcome {
        CodeFixOutcome::Applied(code) => {
            // An attempt the planner made meanwhile (it had stopped waiting) is superseded.
            if let Some(a) = w.fixes.attempts.last_mut().filter(|a| a.result.is_none()) {
                a.result = Some(memory::Verification {
                    succeeded: false,
                    detail: "not verified: superseded by a code fix applied meanwhile".into(),
                    at: now.wall,
                });
            }
            let n = w.fixes.failed_in_row + 1;
            let event = format!(
                "worker {worker}: code fix applied to {} (backup {}, patch {}): fix attempt {n}/{max} (code_fix); fix pipeline {} → verifying; next: restarting the workers that run it, verified {} after worker {worker}'s new process starts",
                code.file.display(),
                code.backup.display(),
                code.patch_hash,
                w.fixes.stage.as_ref().map_or("idle", FixStage::name),
                fmt_dur(desired.fixes.verify_after.get()),
            );
            memory.applied_patches.insert(code.patch_hash.clone());
            w.fixes.push(memory::Attempt {
                n,
                kind: memory::FixKind::CodeFix,
                at: now.boot,
                at_wall: now.wall,
                checkpoint: w.checkpoint,
                detail: format!("code fix applied to {}", code.file.display()),
                verify_at: now.boot.plus(desired.fixes.verify_after.get()),
                result: None,
                code: Some(code),
            });
            w.fixes.stage = Some(FixStage::Verifying { n });
            *memory.totals.fixes.entry("code_fix".into()).or_default() += 1;
            memory.restart_for_code = match desired.fixes.code.restart {
                crate::manifest::CodeFixRestart::All => running,
                crate::manifest::CodeFixRestart::StuckOnly => Vec::new(),
            };
            if !memory.restart_for_code.contains(&worker) {
                memory.restart_for_code.push(worker);
            }
            event
        }
        CodeFixOutcome::AlreadyApplied => {
            let moved = refuse(w, "the proposed change is already in the file".into());
            format!(
                "worker {worker}: the proposed code fix is already applied; nothing written; {moved}"
            )
        }
        CodeFixOutcome::Rejected(why) => {
            let moved = refuse(w, format!("the fix engine refused it: {why}"));
            format!("worker {worker}: code fix rejected, file untouched: {why}; {moved}")
        }
    }
}

/// Records how rolling back the code fix `patch_hash` of `worker` ended, at `now`. Restored:
/// every worker whose process started on the patched file (at or after the fix was applied)
/// is restarted from its checkpoint on the next pass, so none keeps running the rolled-back
/// code. Returns the event to log.
pub fn record_rollback(
    memory: &mut Memory,
    worker: WorkerId,
    patch_hash: &str,
    outcome: Result<(), String>,
) -> String {
    if let Err(why) = outcome {
        return format!("worker {worker}: rollback failed: {why}; the patched file stays as it is");
    }
    let applied_at = memory.workers.get(&worker).and_then(|w| {
        w.fixes
            .attempts
            .iter()
            .rev()
            .find(|a| a.code.as_ref().is_some_and(|c| c.patch_hash == patch_hash))
            .map(|a| a.at)
    });
    let on_patched: Vec<WorkerId> = memory
        .workers
        .iter()
        .filter(|(_, w)| w.paused.is_none() && w.failed.is_none() && w.parked.is_none())
        .filter(|(_, w)| {
            w.process
                .as_ref()
                .is_some_and(|p| applied_at.is_none_or(|t| p.started_at >= t))
        })
        .map(|(id, _)| *id)
        .collect();
    for id in &on_patched {
        if !memory.restart_for_code.contains(id) {
            memory.restart_for_code.push(*id);
        }
    }
    if on_patched.is_empty() {
        format!(
            "worker {worker}: code fix rolled back (patch {patch_hash}); no running worker started on the patched file"
        )
    } else {
        let ids: Vec<String> = on_patched.iter().map(ToString::to_string).collect();
        format!(
            "worker {worker}: code fix rolled back (patch {patch_hash}); restarting from their checkpoints the workers that started on the patched file: {}",
            ids.join(", ")
        )
    }
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| sig.to_string(), |s| s.as_str().to_string())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim_tests;

#[cfg(test)]
mod pipeline_tests;

#[cfg(test)]
mod fault_tests;

#[cfg(test)]
mod runtime_tests;
