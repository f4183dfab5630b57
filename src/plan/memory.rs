//! [`Memory`]: what automon remembers between passes and across its own restarts. The planner
//! takes it and returns the next one; `state::memory` persists it as JSON.

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;

use crate::clock::BootTime;
use serde::{Deserialize, Serialize};

use crate::WorkerId;
use crate::observe::{LogCursor, ProcessIdentity};

/// Version of the persisted memory format; bumped on incompatible changes.
///
/// - 1: processes only.
/// - 2: a worker's handle may be a Slurm job ([`crate::runtime::Handle`]), with its
///   [`WorkerMemory::job`] record. Version 1 files load as they are (nothing in them is a job);
///   an automon that knows only version 1 refuses a version 2 file rather than take a job's
///   handle for a process that is gone (and start a duplicate).
/// - 3: a worker's [`WorkerMemory::recent_signals`] are one string of 16 hex digits per
///   fingerprint instead of a list of numbers (a third of the bytes of a 2,000-worker state
///   file, which is written whenever a pass changed something). Versions 1 and 2 load as they
///   are. An automon that knows only version 2 cannot read a version 3 file and calls it
///   corrupt (it parsed the whole file before looking at the version; from version 3 on the
///   version is read first, so a newer file is always called newer): going back to an older
///   build needs the state directory of that build, never `--reset-state`.
///
/// Fields added with serde defaults that an older build may ignore without misreading the
/// rest are no new version: a log cursor's times and tail hash ([`LogCursor`]) are read as
/// absent from older files, and an older build drops them (its cursors then work as before).
pub const MEMORY_VERSION: u32 = 3;

/// How many distinct progress-line fingerprints are remembered per worker: a line repeated
/// within this many distinct lines is not new progress (a loop that logs the same batch).
pub const RECENT_SIGNALS: usize = 64;

/// Everything automon remembers.
#[derive(Debug, Clone, Default, PartialEq, Hash, Serialize, Deserialize)]
pub struct Memory {
    /// Format version ([`MEMORY_VERSION`]).
    pub version: u32,
    /// The key range `[start, end)` the shards were cut from when first applied; a later run
    /// whose range differs is refused, since shard boundaries would move under the checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
    /// How many shards the range was cut into when first applied; like the range, a later
    /// run with another count is refused (the boundaries would move under the checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<u32>,
    /// Boot id of the kernel the boot-clock times below were taken on; after a reboot they are
    /// meaningless and are dropped.
    #[serde(default)]
    pub boot_id: String,
    /// Per worker id.
    #[serde(default)]
    pub workers: BTreeMap<WorkerId, Box<WorkerMemory>>,
    /// Running totals for summaries.
    #[serde(default)]
    pub totals: Totals,
    /// How many workers should run now: starts at `target`, moved by scaling within
    /// `[min, max]`; `None` until the first pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_count: Option<u32>,
    /// The manifest's template parameters when config-fix overrides were last valid; when the
    /// manifest changes them, the overrides are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_basis: Option<BTreeMap<String, crate::manifest::Parameter>>,
    /// The manifest's target when the desired count was last reset to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_target: Option<u32>,
    /// When the last scale-down happened (boot clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_down: Option<BootTime>,
    /// When the last scale-up happened (boot clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_up: Option<BootTime>,
    /// The kinds of scaling hold logged since the last scale change (each is logged once).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub scaling_holds: std::collections::BTreeSet<String>,
    /// Since when every start is held because the look for running workers (the `/proc` scan,
    /// the scheduler's queue) was incomplete, and why: said once when it begins and once when
    /// it ends, not every pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_held: Option<ScanHold>,
    /// The manifest as last applied, normalised YAML, for `automon diff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<String>,
    /// Hashes of code patches already applied (a patch is never applied twice).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub applied_patches: std::collections::BTreeSet<String>,
    /// A code fix was applied: restart these workers so they run the new code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_for_code: Vec<WorkerId>,
}

impl Memory {
    /// Fingerprints of the memory (128-bit XXH3 of its `Hash`, field by field), in two
    /// halves: equal memories give equal fingerprints, so the loop tells whether a pass
    /// changed anything, and what, without keeping a copy of the memory (`daemon`'s
    /// unchanged-pass check). Only meaningful within one process (`Hash` of a collection
    /// includes its length, not its layout; nothing here is persisted).
    ///
    /// `observed` covers what each pass reads anew from the workers' files and would read
    /// again after a restart: checkpoints and when they moved (but not whether a worker has
    /// one at all), item counts, the log cursor, the lines remembered, rate samples, the count
    /// of quiet passes and the repeated-cursor tally. `intent` covers everything else, fields
    /// added later included (the destructuring below names every field: a new one does not
    /// compile until it is put on a side).
    pub fn fingerprints(&self) -> Fingerprints {
        use std::hash::Hash;
        let mut intent = xxhash_rust::xxh3::Xxh3Default::new();
        let mut observed = xxhash_rust::xxh3::Xxh3Default::new();
        let Self {
            version,
            range,
            shard_count,
            boot_id,
            workers,
            totals,
            desired_count,
            params_basis,
            applied_target,
            last_scale_down,
            last_scale_up,
            scaling_holds,
            scan_held,
            last_applied,
            applied_patches,
            restart_for_code,
        } = self;
        (
            version,
            range,
            shard_count,
            boot_id,
            totals,
            desired_count,
            params_basis,
            applied_target,
            last_scale_down,
            last_scale_up,
            scaling_holds,
            scan_held,
        )
            .hash(&mut intent);
        (
            last_applied,
            applied_patches,
            restart_for_code,
            workers.len(),
        )
            .hash(&mut intent);
        for (id, w) in workers {
            let WorkerMemory {
                process,
                job,
                completed_at,
                checkpoint,
                checkpoint_changed_at,
                items,
                progress_problem,
                unreadable_since,
                last_progress_at,
                left_discovery,
                start_failures,
                exits_without_progress_file,
                failures,
                restarts,
                backoff_until,
                restart_reason,
                stuck_passes,
                stopping,
                differs,
                log_cursor,
                recent_signals,
                repeating,
                claimed_complete,
                parked,
                paused,
                failed,
                params,
                fixes,
                diagnosis,
                diagnosis_requested_at,
                stuck_since,
                rate_samples,
                last_error,
            } = &**w;
            (id, checkpoint.is_some()).hash(&mut intent);
            (
                process,
                job,
                completed_at,
                progress_problem,
                unreadable_since,
                left_discovery,
                start_failures,
                exits_without_progress_file,
                failures,
                restarts,
                backoff_until,
                restart_reason,
            )
                .hash(&mut intent);
            (
                stopping,
                differs,
                claimed_complete,
                parked,
                paused,
                failed,
                params,
                fixes,
                diagnosis,
                diagnosis_requested_at,
                stuck_since,
                last_error,
            )
                .hash(&mut intent);
            (
                id,
                checkpoint,
                checkpoint_changed_at,
                items,
                last_progress_at,
                stuck_passes,
                log_cursor,
                recent_signals,
                repeating,
                rate_samples,
            )
                .hash(&mut observed);
        }
        Fingerprints {
            intent: intent.digest128(),
            observed: observed.digest128(),
        }
    }
}

/// A memory's fingerprints ([`Memory::fingerprints`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    /// Everything a restart could not read again from the workers' files.
    pub intent: u128,
    /// What each pass reads again from the workers' files.
    pub observed: u128,
}

/// Counters kept for summaries and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Totals {
    /// Restarts after a crash (any unexpected exit).
    pub crash_restarts: u64,
    /// Restarts after the worker was stopped as stuck.
    pub stuck_restarts: u64,
    /// Workers started for the first time on their shard.
    pub starts: u64,
    /// Fixes applied, by kind name (`restart`, `config_fix`, `code_fix`).
    #[serde(default)]
    pub fixes: BTreeMap<String, u64>,
    /// Fix verifications that succeeded.
    #[serde(default)]
    pub fixes_succeeded: u64,
    /// Fix verifications that failed.
    #[serde(default)]
    pub fixes_failed: u64,
    /// Scale-downs (a worker parked).
    #[serde(default)]
    pub scale_downs: u64,
    /// Scale-ups.
    #[serde(default)]
    pub scale_ups: u64,
    /// When automon first applied this WorkerSet (wall clock): the whole migration's wall
    /// time counts from it. `None` in state written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_applied_at: Option<Timestamp>,
    /// automon runs (processes) that have applied this WorkerSet, this one included.
    #[serde(default)]
    pub runs: u64,
}

/// A process automon started or adopted for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunningProcess {
    /// Identity (pid, start ticks, boot id); the pid is also the process group id.
    pub identity: ProcessIdentity,
    /// When the process started, on the boot clock (exact, from its start ticks).
    pub started_at: BootTime,
    /// The cursor it was started with.
    pub resume_from: Option<u64>,
    /// True when automon found it running rather than starting it in this run.
    #[serde(default)]
    pub adopted: bool,
    /// True when it leads its own process group (automon's workers always do); stops then
    /// signal the group, else only the process.
    #[serde(default = "own_group_default")]
    pub own_group: bool,
    /// The template it was started from ([`crate::manifest::Desired::template_hash`]); `None`
    /// when unknown (adopted, or recorded by an older automon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

fn own_group_default() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A stop that automon asked for and is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stopping {
    /// When the stop was issued.
    pub requested_at: BootTime,
    /// Why, in words.
    pub reason: String,
    /// Restart the worker once its process group is gone.
    pub restart: bool,
    /// When a stop found the process (or a member of its group) still alive after SIGKILL:
    /// in uninterruptible I/O. It is not signalled again (SIGKILL is pending) and nothing
    /// replaces it while it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unkillable_since: Option<BootTime>,
    /// The worker's main process had already exited on its own, and that exit was reported and
    /// counted (a crash with its backoff, or a completion) when this stop began: the stop only
    /// ends the rest of its process group, and the end of the group is no second exit (not
    /// "stopped", no restart of its own).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exit_reported: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// What automon remembers about one worker id.
#[derive(Debug, Clone, Default, PartialEq, Hash, Serialize, Deserialize)]
pub struct WorkerMemory {
    /// The live process, if any: its handle is a process identity, or a Slurm job's (see
    /// [`crate::runtime`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<RunningProcess>,
    /// With `spec.runtime: slurm`: the job that runs the worker — id, cluster, node and state as
    /// `squeue` last gave them. `None` for a local worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::runtime::JobRecord>,
    /// When (wall clock) the worker's shard was found complete; completed workers are never
    /// restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// The last good checkpoint read from the progress file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// When automon saw the checkpoint change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_changed_at: Option<BootTime>,
    /// The last item count read from the progress file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    /// The problem reading the progress file, once reported (reported once per streak of
    /// unreadable reads, kept until the file parses again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_problem: Option<String>,
    /// Since when every read of the progress file found it unreadable (boot clock); `None`
    /// while it parses or is absent. A streak shorter than [`super::UNREADABLE_REPORT_AFTER`]
    /// is a non-atomic writer caught mid-write, not a problem to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable_since: Option<BootTime>,
    /// The last progress signal (checkpoint change or new upload/activity line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<BootTime>,
    /// True once the current process has uploaded (or advanced its checkpoint).
    #[serde(default)]
    pub left_discovery: bool,
    /// Consecutive starts that failed (the program could not be executed: ENOENT, EACCES…),
    /// and runs that exited 127/126 without progress (a program behind `env` or `sh` is
    /// missing); at [`super::MAX_START_FAILURES`] the worker is Failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_failures: u32,
    /// Consecutive exits 0 short of the shard's end while its progress file never appeared;
    /// at [`super::MAX_EXITS_WITHOUT_PROGRESS_FILE`] the worker is held.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exits_without_progress_file: u32,
    /// Consecutive failures (unexpected exits) — the backoff exponent.
    #[serde(default)]
    pub failures: u32,
    /// Restarts of this worker, all reasons.
    #[serde(default)]
    pub restarts: u32,
    /// No start before this time (crash-loop backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<BootTime>,
    /// Why the next start is a restart, in words (set on exit, consumed by the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_reason: Option<String>,
    /// Consecutive passes that found the worker stuck (acted on at 2).
    #[serde(default)]
    pub stuck_passes: u32,
    /// A stop in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<Stopping>,
    /// How its adopted process differs from what the manifest starts (program, working
    /// directory, environment; secret values not shown), until its next start applies the
    /// manifest and says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differs: Vec<String>,
    /// Where the last pass stopped reading the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_cursor: Option<LogCursor>,
    /// Fingerprints of recent progress lines (see [`RECENT_SIGNALS`]).
    #[serde(
        default,
        skip_serializing_if = "VecDeque::is_empty",
        with = "signals_as_hex"
    )]
    pub recent_signals: VecDeque<u64>,
    /// A cursor phrase the log keeps repeating without the checkpoint moving (a discovery loop),
    /// with the running count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeating: Option<crate::observe::logtail::RepeatedCursor>,
    /// The worker's own claim that its range is done (a completion log line or flag), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_complete: Option<String>,
    /// Parked by scale-down (the reason); resumes when scaling allows, before new shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<String>,
    /// Paused by escalation or an operator; not started until `automon resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Hold>,
    /// Failed by escalation (`stop_worker`); never restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Hold>,
    /// Parameter values set by config fixes, kept across restarts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, i64>,
    /// Fix attempts and their verification.
    #[serde(default)]
    pub fixes: FixState,
    /// The latest LLM diagnosis for this worker, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<DiagnosisNote>,
    /// When a diagnosis was requested and not yet answered (boot clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis_requested_at: Option<BootTime>,
    /// When the silence of the current stuck spell began — its last progress signal, or its
    /// start (boot clock); set when the spell is first seen. Longest-stuck parks first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_since: Option<BootTime>,
    /// Recent (boot time, checkpoint) samples for rates and ETAs; oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub rate_samples: VecDeque<(BootTime, u64)>,
    /// The last error record seen in the log (first line, truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Why a worker is held (paused or failed), and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hold {
    /// In words.
    pub reason: String,
    /// When (wall clock).
    pub at: Timestamp,
    /// True when an operator did it (`automon pause`), false for an escalation.
    pub by_operator: bool,
}

/// The kinds of fix automon can apply, in the order `try_different_fix` tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixKind {
    /// Stop and restart from the checkpoint.
    Restart,
    /// New template parameter values, then a restart.
    ConfigFix,
    /// An edit to an allow-listed source file, then a restart.
    CodeFix,
}

impl FixKind {
    /// The snake_case name used in manifests, history and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::ConfigFix => "config_fix",
            Self::CodeFix => "code_fix",
        }
    }
}

/// One applied fix and, once known, its verification.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt after the last success.
    pub n: u32,
    /// The kind.
    pub kind: FixKind,
    /// When it was applied (boot clock).
    pub at: BootTime,
    /// When it was applied (wall clock).
    pub at_wall: Timestamp,
    /// The checkpoint when it was applied.
    pub checkpoint: Option<u64>,
    /// What was done, in words.
    pub detail: String,
    /// When it is verified (boot clock).
    pub verify_at: BootTime,
    /// The verification, once made.
    pub result: Option<Verification>,
    /// For a code fix: the file and its backup, to roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<AppliedCode>,
}

/// A code fix as applied, enough to roll it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppliedCode {
    /// The changed file.
    pub file: std::path::PathBuf,
    /// Its backup.
    pub backup: std::path::PathBuf,
    /// The patch hash.
    pub patch_hash: String,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Verification {
    /// True when a progress signal followed the fix.
    pub succeeded: bool,
    /// In words, with numbers.
    pub detail: String,
    /// When (wall clock).
    pub at: Timestamp,
}

/// Fix attempts of one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FixState {
    /// Recent attempts, oldest first (the last [`MAX_ATTEMPT_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Failed verifications since the last success.
    #[serde(default)]
    pub failed_in_row: u32,
    /// The kind `try_different_fix` has moved on to, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FixKind>,
    /// Where the fix pipeline stands for this worker; `None` before its first fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<FixStage>,
}

/// The fix pipeline of one worker, a small state machine persisted with the memory:
///
/// ```text
/// asked ─► answered ─► applying ─► verifying ─► kept
///   │         │            │           └──────► rolled back
///   ├► failed ┴► refused ◄─┘
///   └► timed out
/// ```
///
/// `failed`, `timed out` and `refused` are outcomes like an answer: the pass that finds the
/// worker stuck in one of them applies the built-in fix (restart from checkpoint) at once,
/// whatever the cooldown. A fix without an LLM goes straight to `verifying`. Every move is
/// logged with the rule that made it and the next action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum FixStage {
    /// The LLM was asked at `at` (boot clock); without an outcome by `deadline`
    /// (`llm.timeout` + one interval later) the planner stops waiting.
    Asked {
        /// When.
        at: BootTime,
        /// When the planner stops waiting.
        deadline: BootTime,
    },
    /// The LLM answered (the answer is [`WorkerMemory::diagnosis`]); the next pass applies its
    /// fix or refuses it.
    Answered {
        /// When the answer arrived.
        at: BootTime,
    },
    /// The request failed (error status, unusable answer, refusal, timeout in the client).
    Failed {
        /// When the failure was reported.
        at: BootTime,
        /// Why, in words.
        why: String,
    },
    /// No outcome reached the planner by the deadline (or automon restarted meanwhile).
    TimedOut {
        /// When the planner gave up.
        at: BootTime,
    },
    /// A proposed code change went to the fix engine; its outcome is due by `deadline`.
    Applying {
        /// When it was sent.
        at: BootTime,
        /// When the planner stops waiting for the engine.
        deadline: BootTime,
    },
    /// The proposal was refused (by the manifest, the confidence floor or the fix engine).
    Refused {
        /// When.
        at: BootTime,
        /// Why, in words.
        why: String,
    },
    /// Fix attempt `n` was applied and waits for its verification.
    Verifying {
        /// The attempt number.
        n: u32,
    },
    /// Fix attempt `n` helped.
    Kept {
        /// The attempt number.
        n: u32,
    },
    /// Fix attempt `n` did not help; a code change was restored from its backup (a restart or
    /// a config fix has nothing to restore).
    RolledBack {
        /// The attempt number.
        n: u32,
    },
}

impl FixStage {
    /// The stage's name as the events log writes it (`asked`, `timed out`, `rolled back`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Asked { .. } => "asked",
            Self::Answered { .. } => "answered",
            Self::Failed { .. } => "failed",
            Self::TimedOut { .. } => "timed out",
            Self::Applying { .. } => "applying",
            Self::Refused { .. } => "refused",
            Self::Verifying { .. } => "verifying",
            Self::Kept { .. } => "kept",
            Self::RolledBack { .. } => "rolled back",
        }
    }

    /// Whether the stage is an outcome the next pass must act on (answered, failed, timed
    /// out, refused).
    pub fn awaits_action(&self) -> bool {
        matches!(
            self,
            Self::Answered { .. }
                | Self::Failed { .. }
                | Self::TimedOut { .. }
                | Self::Refused { .. }
        )
    }
}

/// How many attempts are remembered per worker.
pub const MAX_ATTEMPT_HISTORY: usize = 20;

impl FixState {
    /// The attempt awaiting verification, if any.
    pub fn pending(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.result.is_none())
    }

    /// When the last fix was applied.
    pub fn last_at(&self) -> Option<BootTime> {
        self.attempts.last().map(|a| a.at)
    }

    /// Records a new attempt, keeping the history bounded.
    pub fn push(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
        if self.attempts.len() > MAX_ATTEMPT_HISTORY {
            self.attempts.remove(0);
        }
    }
}

/// What an LLM said about a stuck worker (validated and clamped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosisNote {
    /// When it arrived (boot clock).
    pub at: BootTime,
    /// The root cause in words ("Unknown" when the model did not know).
    pub root_cause: String,
    /// The proposed fix kind; `None` for scale_down.
    pub fix: Option<FixKind>,
    /// True when the model proposed a scale-down.
    pub scale_down: bool,
    /// Parameter values proposed (already clamped to the manifest's bounds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, i64>,
    /// The proposed code change, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_changes: Option<String>,
    /// Model confidence, 0–1.
    pub confidence: f64,
    /// What validation clamped, mapped, dropped or flagged, one sentence each (redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Whether it has been acted on.
    #[serde(default)]
    pub used: bool,
}

/// Field by field, the confidence by its bits (so a memory with a NaN confidence hashes the
/// same twice, where `==` would call it changed on every pass).
impl std::hash::Hash for DiagnosisNote {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let Self {
            at,
            root_cause,
            fix,
            scale_down,
            params,
            code_changes,
            confidence,
            notes,
            used,
        } = self;
        (at, root_cause, fix, scale_down, params, code_changes).hash(state);
        confidence.to_bits().hash(state);
        (notes, used).hash(state);
    }
}

/// A hold of every start while automon cannot see every running worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScanHold {
    /// Why the look was incomplete when the hold began.
    pub why: String,
    /// When the hold began (boot clock).
    pub since: BootTime,
}

/// [`WorkerMemory::recent_signals`] as persisted: one string, 16 lowercase hex digits per
/// fingerprint, oldest first (version 3); read also as a list of numbers (versions 1 and 2).
mod signals_as_hex {
    use std::collections::VecDeque;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Lower-case hex, 16 digits per fingerprint. Done by table, not `write!("{:016x}")`: at
    /// 2,000 workers whose logs change, the formatter's per-number work was half of the whole
    /// state save.
    pub fn serialize<S: Serializer>(signals: &VecDeque<u64>, s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = Vec::with_capacity(signals.len() * 16);
        for fp in signals {
            for byte in fp.to_be_bytes() {
                text.push(DIGITS[usize::from(byte >> 4)]);
                text.push(DIGITS[usize::from(byte & 0xf)]);
            }
        }
        // Only ASCII digits and letters were pushed.
        let text = String::from_utf8(text).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<u64>, D::Error> {
        struct Signals;
        impl<'de> Visitor<'de> for Signals {
            type Value = VecDeque<u64>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("fingerprints: a string of 16 hex digits each, or a list of numbers")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if !text.len().is_multiple_of(16) {
                    return Err(E::custom(format!(
                        "{} hex digits is not a whole number of 16-digit fingerprints",
                        text.len()
                    )));
                }
                (0..text.len())
                    .step_by(16)
                    .map(|i| {
                        text.get(i..i + 16)
                            // Digits only: `from_str_radix` would take a leading `+`.
                            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                            .and_then(|h| u64::from_str_radix(h, 16).ok())
                            .ok_or_else(|| {
                                E::custom(format!(
                                    "fingerprint {} is not 16 hex digits",
                                    i / 16 + 1
                                ))
                            })
                    })
                    .collect()
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = VecDeque::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(fp) = seq.next_element::<u64>()? {
                    out.push_back(fp);
                }
                Ok(out)
            }
        }
        d.deserialize_any(Signals)
    }

    #[cfg(test)]
    mod tests {
        use std::collections::VecDeque;

        /// The table encoder writes what `{:016x}` writes (zero-padded, lower case), and the
        /// reader takes it back.
        #[test]
        fn the_table_encoder_writes_what_the_formatter_wrote_and_reads_back() {
            let signals: VecDeque<u64> = [0, 1, u64::MAX, 0x0123_4567_89ab_cdef, 0xf0].into();
            let mut out = Vec::new();
            super::serialize(&signals, &mut serde_json::Serializer::new(&mut out)).expect("ser");
            let expected: String = signals.iter().map(|fp| format!("{fp:016x}")).collect();
            assert_eq!(
                String::from_utf8(out.clone()).expect("utf8"),
                format!("\"{expected}\"")
            );
            let back =
                super::deserialize(&mut serde_json::Deserializer::from_slice(&out)).expect("de");
            assert_eq!(back, signals);
        }
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    /// What the loop saves at once and what may wait (daemon's `OBSERVED_SAVE_PERIOD`): a
    /// checkpoint that moves, item counts and remembered lines are observed progress; a
    /// worker's first checkpoint, its process, a fix attempt and the totals are not.
    #[test]
    fn observed_progress_changes_one_fingerprint_and_everything_else_the_other() {
        let mut m = Memory::default();
        m.workers
            .insert(WorkerId(0), Box::new(WorkerMemory::default()));
        let base = m.fingerprints();
        fn worker(m: &mut Memory) -> &mut WorkerMemory {
            m.workers.get_mut(&WorkerId(0)).expect("worker 0")
        }

        worker(&mut m).checkpoint = Some(10);
        let first = m.fingerprints();
        assert_ne!(
            first.intent, base.intent,
            "a first checkpoint is saved at once"
        );

        worker(&mut m).checkpoint = Some(11);
        worker(&mut m).recent_signals.push_back(7);
        worker(&mut m).items = Some(5);
        worker(&mut m).stuck_passes = 3;
        let moved = m.fingerprints();
        assert_eq!(moved.intent, first.intent, "moved progress may wait");
        assert_ne!(moved.observed, first.observed, "but it is a change");

        worker(&mut m).restarts = 1;
        assert_ne!(m.fingerprints().intent, moved.intent, "a restart count");
        worker(&mut m).restarts = 0;
        m.totals.starts = 1;
        assert_ne!(m.fingerprints().intent, moved.intent, "the totals");
        m.totals.starts = 0;
        worker(&mut m).paused = Some(Hold {
            reason: "operator".into(),
            at: Timestamp::UNIX_EPOCH,
            by_operator: true,
        });
        assert_ne!(m.fingerprints().intent, moved.intent, "a hold");
        worker(&mut m).paused = None;
        assert_eq!(
            m.fingerprints(),
            moved,
            "the same memory, the same fingerprints"
        );
        m.workers
            .insert(WorkerId(1), Box::new(WorkerMemory::default()));
        assert_ne!(m.fingerprints().intent, moved.intent, "a worker more");
    }
}
