//! The WorkerSet manifest: serde types, defaults and the JSON Schema they generate.
//!
//! Field names follow Kubernetes conventions (`apiVersion`, `kind`, `metadata`, `spec`); inside
//! `spec` they are snake_case. Every relative path in `spec` except `template.workdir` is resolved
//! against the worker's working directory, and `template.workdir` against the manifest's own
//! directory.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "automon/v1";
/// The only `kind` this build understands.
pub const KIND: &str = "WorkerSet";

/// A WorkerSet: a worker template, how many run, and how their health is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkerSet {
    /// Must be `automon/v1`.
    pub api_version: String,
    /// Must be `WorkerSet`.
    pub kind: String,
    /// Names the WorkerSet; the name appears in events and marks the processes automon starts.
    pub metadata: Metadata,
    /// The desired state.
    pub spec: Spec,
}

/// Object metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A short name: letters, digits, `-`, `_` and `.`.
    pub name: String,
}

/// The desired state of a WorkerSet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// How often the control loop reconciles when nothing wakes it earlier (default 60s).
    #[serde(default = "defaults::interval")]
    pub interval: HumanDuration,
    /// How many workers run at once.
    #[serde(default)]
    pub workers: WorkerCounts,
    /// Optional key range split into shards; without it workers are plain replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Work>,
    /// Optional one-time preparation run before any worker starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<Setup>,
    /// How to start one worker.
    pub template: Template,
    /// Where each worker writes its resume cursor.
    pub progress: Progress,
    /// Where each worker's output goes and which lines count as activity.
    pub logs: Logs,
    /// When a live worker counts as stuck.
    #[serde(default)]
    pub health: Health,
    /// Crash-loop backoff.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// Worker counts: automon runs `target` workers, never fewer than `min` nor more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerCounts {
    /// Workers to run normally (default 4).
    #[serde(default = "defaults::target")]
    pub target: u32,
    /// Never scale below this (default 1).
    #[serde(default = "defaults::min")]
    pub min: u32,
    /// Never run more than this (default 8).
    #[serde(default = "defaults::max")]
    pub max: u32,
}

impl Default for WorkerCounts {
    fn default() -> Self {
        Self {
            target: defaults::target(),
            min: defaults::min(),
            max: defaults::max(),
        }
    }
}

/// A key range `[start, end)` split into `shards` contiguous slices; worker `i` owns shard `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Work {
    /// The key range.
    pub range: KeyRange,
    /// How many shards to split the range into (default 1).
    #[serde(default = "defaults::shards")]
    pub shards: u32,
    /// The noun for one key in messages, singular (default "item"; e.g. "book").
    #[serde(default = "defaults::unit")]
    pub unit: String,
}

/// The key range `[start, end)`. Give `end`, or `end_command` whose standard output is the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    /// First key of the range (inclusive).
    pub start: u64,
    /// One past the last key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// argv of a command (run in the working directory, after `setup`) that prints `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_command: Option<Vec<String>>,
}

/// A preparation command run once, before the first worker starts, unless `creates` exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// argv of the command, run in the working directory; it must exit 0.
    pub command: Vec<String>,
    /// A path the command creates; when it exists, setup is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
}

/// How to start one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// argv, never a shell string. Placeholders: `{id}`, `{range_start}`, `{range_end}`,
    /// `{checkpoint}` (the resume cursor; `range_start - 1` before the first checkpoint) and
    /// `{NAME}` for each parameter.
    pub command: Vec<String>,
    /// Working directory, relative to the manifest's directory (default `.`).
    #[serde(default = "defaults::workdir")]
    pub workdir: String,
    /// Extra environment variables for the worker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Tunable integer parameters with bounds, substituted into `command`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Parameter>,
    /// Signal sent to the worker's process group to stop it (default SIGTERM).
    #[serde(default = "defaults::stop_signal")]
    pub stop_signal: String,
    /// How long to wait after the stop signal before SIGKILL (default 30s).
    #[serde(default = "defaults::stop_grace")]
    pub stop_grace: HumanDuration,
}

/// A bounded integer parameter of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// Value used unless a fix changes it.
    pub default: i64,
    /// Lowest allowed value.
    pub min: i64,
    /// Highest allowed value.
    pub max: i64,
}

/// The worker's progress file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Path pattern with `{id}`, e.g. `migration_progress_worker{id}.json`.
    pub file: String,
    /// JSON pointer (RFC 6901) to the resume cursor, e.g. `/last_processed_book_id`.
    pub checkpoint: String,
    /// Optional JSON pointer to a count of items done, used in summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<String>,
}

/// The worker's log and the patterns that classify its lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Path pattern with `{id}`; automon appends the worker's stdout and stderr to it.
    pub file: String,
    /// Regexes of lines that show an upload (a worker that uploaded has left discovery).
    #[serde(default)]
    pub upload_patterns: Vec<String>,
    /// Regexes of lines that show other work (discovery batches, queries).
    #[serde(default)]
    pub activity_patterns: Vec<String>,
    /// Regexes of error lines, quoted in events when a worker fails.
    #[serde(default = "defaults::error_patterns")]
    pub error_patterns: Vec<String>,
    /// Bytes read from the end of the log each pass (default 64 KiB).
    #[serde(default = "defaults::tail_bytes")]
    pub tail_bytes: u64,
}

/// When a live worker counts as stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// No progress signal for this long after the first upload → stuck (default 5m).
    #[serde(default = "defaults::stuck_after")]
    pub stuck_after: HumanDuration,
    /// No progress signal for this long since the process started, before its first upload →
    /// stuck (default 20m).
    #[serde(default = "defaults::discovery_grace")]
    pub discovery_grace: HumanDuration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            stuck_after: defaults::stuck_after(),
            discovery_grace: defaults::discovery_grace(),
        }
    }
}

/// Crash-loop backoff: the first restart is immediate, then `initial` doubling up to `max`;
/// reset once a worker has made progress for `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// Delay before the second restart in a row (default 10s).
    #[serde(default = "defaults::backoff_initial")]
    pub backoff_initial: HumanDuration,
    /// Cap on the delay (default 5m).
    #[serde(default = "defaults::backoff_max")]
    pub backoff_max: HumanDuration,
    /// Running with progress this long resets the backoff (default 10m).
    #[serde(default = "defaults::backoff_reset_after")]
    pub backoff_reset_after: HumanDuration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff_initial: defaults::backoff_initial(),
            backoff_max: defaults::backoff_max(),
            backoff_reset_after: defaults::backoff_reset_after(),
        }
    }
}

/// The seed's defaults, one function per field so serde and tests share them.
pub mod defaults {
    use super::HumanDuration;

    /// 60s between passes.
    pub fn interval() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    /// 4 workers.
    pub fn target() -> u32 {
        4
    }
    /// At least 1 worker.
    pub fn min() -> u32 {
        1
    }
    /// At most 8 workers.
    pub fn max() -> u32 {
        8
    }
    /// One shard.
    pub fn shards() -> u32 {
        1
    }
    /// "item".
    pub fn unit() -> String {
        "item".into()
    }
    /// ".".
    pub fn workdir() -> String {
        ".".into()
    }
    /// SIGTERM.
    pub fn stop_signal() -> String {
        "SIGTERM".into()
    }
    /// 30s.
    pub fn stop_grace() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    /// `ERROR`, `CRITICAL`, `Traceback`.
    pub fn error_patterns() -> Vec<String> {
        vec![" - (ERROR|CRITICAL) - ".into(), "^Traceback ".into()]
    }
    /// 64 KiB.
    pub fn tail_bytes() -> u64 {
        64 * 1024
    }
    /// 5 minutes.
    pub fn stuck_after() -> HumanDuration {
        HumanDuration::from_secs(300)
    }
    /// 20 minutes.
    pub fn discovery_grace() -> HumanDuration {
        HumanDuration::from_secs(1200)
    }
    /// 10 seconds.
    pub fn backoff_initial() -> HumanDuration {
        HumanDuration::from_secs(10)
    }
    /// 5 minutes.
    pub fn backoff_max() -> HumanDuration {
        HumanDuration::from_secs(300)
    }
    /// 10 minutes.
    pub fn backoff_reset_after() -> HumanDuration {
        HumanDuration::from_secs(600)
    }
}
