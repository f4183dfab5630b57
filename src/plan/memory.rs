//! [`Memory`]: what automon remembers between passes and across its own restarts. The planner
//! takes it and returns the next one; `state::memory` persists it as JSON.

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;

use crate::clock::BootTime;
use serde::{Deserialize, Serialize};

use crate::WorkerId;
use crate::observe::{LogCursor, ProcessIdentity};

/// Version of the persisted memory format; bumped on incompatible changes.
pub const MEMORY_VERSION: u32 = 1;

/// How many distinct progress-line fingerprints are remembered per worker: a line repeated
/// within this many distinct lines is not new progress (a loop that logs the same batch).
pub const RECENT_SIGNALS: usize = 256;

/// Everything automon remembers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Format version ([`MEMORY_VERSION`]).
    pub version: u32,
    /// The key range `[start, end)` the shards were cut from when first applied; a later run
    /// whose range differs is refused, since shard boundaries would move under the checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
    /// Boot id of the kernel the boot-clock times below were taken on; after a reboot they are
    /// meaningless and are dropped.
    #[serde(default)]
    pub boot_id: String,
    /// Per worker id.
    #[serde(default)]
    pub workers: BTreeMap<WorkerId, WorkerMemory>,
    /// Running totals for summaries.
    #[serde(default)]
    pub totals: Totals,
}

/// Counters kept for summaries and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Restarts after a crash (any unexpected exit).
    pub crash_restarts: u64,
    /// Restarts after the worker was stopped as stuck.
    pub stuck_restarts: u64,
    /// Workers started for the first time on their shard.
    pub starts: u64,
}

/// A process automon started or adopted for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

fn own_group_default() -> bool {
    true
}

/// A stop that automon asked for and is waiting on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// When the stop was issued.
    pub requested_at: BootTime,
    /// Why, in words.
    pub reason: String,
    /// Restart the worker once its process group is gone.
    pub restart: bool,
}

/// What automon remembers about one worker id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMemory {
    /// The live process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<RunningProcess>,
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
    /// The last problem reading the progress file (reported once, kept until it clears).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_problem: Option<String>,
    /// The last progress signal (checkpoint change or new upload/activity line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<BootTime>,
    /// True once the current process has uploaded (or advanced its checkpoint).
    #[serde(default)]
    pub left_discovery: bool,
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
    /// Where the last pass stopped reading the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_cursor: Option<LogCursor>,
    /// Fingerprints of recent progress lines (see [`RECENT_SIGNALS`]).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub recent_signals: VecDeque<u64>,
    /// A cursor phrase the log keeps repeating without the checkpoint moving (a discovery loop),
    /// with the running count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeating: Option<crate::observe::logtail::RepeatedCursor>,
    /// The worker's own claim that its range is done (a completion log line or flag), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_complete: Option<String>,
    /// The last error record seen in the log (first line, truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
