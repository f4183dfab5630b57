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
    #[schemars(extend("const" = "automon/v1"))]
    pub api_version: String,
    /// Must be `WorkerSet`.
    #[schemars(extend("const" = "WorkerSet"))]
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
    /// Scaling on disk utilisation.
    #[serde(default)]
    pub scaling: Scaling,
    /// Which fixes automon may apply to a stuck worker, and when to escalate.
    #[serde(default)]
    pub fixes: Fixes,
    /// Optional LLM diagnosis of stuck workers (any OpenAI-compatible endpoint).
    #[serde(default)]
    pub llm: Llm,
    /// What counts as a secret: redacted from every log line automon reads, from everything it
    /// writes or prints, and from what it sends to the LLM.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// Taking over worker processes that this automon did not start.
    #[serde(default)]
    pub adoption: Adoption,
    /// Where the workers run: on this machine (`kind: local`, the default) or as Slurm batch
    /// jobs (`kind: slurm`), one job per worker start.
    #[serde(default, skip_serializing_if = "RuntimeSpec::is_local")]
    pub runtime: RuntimeSpec,
}

/// The engine that runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// Processes on this machine, each in its own process group (the default).
    #[default]
    Local,
    /// Slurm batch jobs: one `sbatch` per worker start, observed with `squeue`, stopped with
    /// `scancel`. automon runs on one host; the workers run anywhere in the cluster, on a
    /// file system that every node shares with it.
    Slurm,
}

/// `spec.runtime`: where the workers run. The Slurm fields are refused with `kind: local`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// `local` (default) or `slurm`.
    #[serde(default)]
    pub kind: RuntimeKind,
    /// Slurm partition (`sbatch --partition`); the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Slurm account (`sbatch --account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Wall-time limit of one job (`sbatch --time`, in whole minutes, rounded up), e.g. "48h".
    /// A job that reaches it is ended by Slurm and restarted by automon from its checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<HumanDuration>,
    /// CPUs for each worker's job (`sbatch --cpus-per-task`, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub cpus_per_worker: Option<u32>,
    /// Memory for each worker's job (`sbatch --mem`): a whole number with an optional unit
    /// K, M, G or T, e.g. "2G".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[KMGT]?$"))]
    pub mem_per_worker: Option<String>,
    /// More `sbatch` options, one argument each (e.g. `["--qos=long", "--nice=10"]`); the
    /// options automon sets itself (job name, comment, output, working directory, exported
    /// environment) are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

impl RuntimeSpec {
    /// True for the default, `kind: local` (not written into the normalised manifest, so a
    /// manifest without `spec.runtime` normalises as it always did).
    pub fn is_local(&self) -> bool {
        *self == Self::default()
    }
}

/// Scaling on the utilisation of the disk that backs `disk.path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// The disk to watch and its thresholds.
    #[serde(default)]
    pub disk: DiskThresholds,
    /// Minimum time between two scale-downs (default 5m).
    #[serde(default = "defaults::scale_down_cooldown")]
    pub scale_down_cooldown: HumanDuration,
    /// Minimum time between two scale-ups (default 10m).
    #[serde(default = "defaults::scale_up_cooldown")]
    pub scale_up_cooldown: HumanDuration,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            disk: DiskThresholds::default(),
            scale_down_cooldown: defaults::scale_down_cooldown(),
            scale_up_cooldown: defaults::scale_up_cooldown(),
        }
    }
}

/// Disk utilisation thresholds, in percent of wall time the device was busy (io_ticks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskThresholds {
    /// A path on the disk to watch, relative to the working directory (default `.`).
    #[serde(default = "defaults::disk_path")]
    pub path: String,
    /// At or above this, with a worker stuck and more than `min` running, park one (default 90).
    #[serde(default = "defaults::saturated_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub saturated_percent: f64,
    /// Below this, with fewer than `target` running, start one more (default 50).
    #[serde(default = "defaults::normal_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub normal_percent: f64,
}

impl Default for DiskThresholds {
    fn default() -> Self {
        Self {
            path: defaults::disk_path(),
            saturated_percent: defaults::saturated_percent(),
            normal_percent: defaults::normal_percent(),
        }
    }
}

/// What happens after `max_attempts` failed fixes of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    /// Stop the worker and mark it Paused until an operator resumes it.
    AlertAndPause,
    /// Stop the worker and mark it Failed; it is not restarted.
    StopWorker,
    /// Try the next fix type not yet tried (restart → config_fix → code_fix), then pause.
    TryDifferentFix,
}

/// Which fixes automon may apply to a stuck worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fixes {
    /// Minimum time between two fixes of one worker (default 10m).
    #[serde(default = "defaults::fix_cooldown")]
    pub cooldown: HumanDuration,
    /// Failed attempts before escalation (default 3).
    #[serde(default = "defaults::max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Time after a fix at which it is verified by a progress signal (default 2m).
    #[serde(default = "defaults::verify_after")]
    pub verify_after: HumanDuration,
    /// What happens after `max_attempts` failed attempts (default alert_and_pause).
    #[serde(default = "defaults::escalation")]
    pub escalation: Escalation,
    /// Config fixes: new values for template parameters, within their bounds.
    #[serde(default)]
    pub config: ConfigFixes,
    /// Code fixes: edits to allow-listed source files.
    #[serde(default)]
    pub code: CodeFixes,
}

impl Default for Fixes {
    fn default() -> Self {
        Self {
            cooldown: defaults::fix_cooldown(),
            max_attempts: defaults::max_attempts(),
            verify_after: defaults::verify_after(),
            escalation: defaults::escalation(),
            config: ConfigFixes::default(),
            code: CodeFixes::default(),
        }
    }
}

/// Config fixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFixes {
    /// Allowed (default true).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

impl Default for ConfigFixes {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Code fixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeFixes {
    /// Allowed (default false).
    #[serde(default)]
    pub enabled: bool,
    /// The only files a code fix may change, relative to the working directory (which they must
    /// not leave).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Interpreter whose `compile()` validates a changed file (default `python3`).
    #[serde(default = "defaults::interpreter")]
    pub interpreter: String,
    /// Optional argv that must exit 0 on the changed tree before the change is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_command: Option<Vec<String>>,
    /// Most lines one fix may change (default 50).
    #[serde(default = "defaults::max_changed_lines")]
    pub max_changed_lines: u32,
    /// Roll a code fix back when its verification fails (default true).
    #[serde(default = "defaults::yes")]
    pub rollback_on_failure: bool,
    /// Which workers restart after a code fix: every running one (they run the changed file;
    /// default) or only the stuck one.
    #[serde(default)]
    pub restart: CodeFixRestart,
}

/// Which workers restart after a code fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeFixRestart {
    /// Every running worker: they all run the changed file.
    #[default]
    All,
    /// Only the worker the fix was for.
    StuckOnly,
}

impl Default for CodeFixes {
    fn default() -> Self {
        Self {
            enabled: false,
            files: Vec::new(),
            interpreter: defaults::interpreter(),
            test_command: None,
            max_changed_lines: defaults::max_changed_lines(),
            rollback_on_failure: true,
            restart: CodeFixRestart::All,
        }
    }
}

/// LLM diagnosis settings. The API key is never written here: `api_key_env` names the
/// environment variable that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// Ask the LLM about stuck workers (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Model name (default `gpt-4o-mini`).
    #[serde(default = "defaults::model")]
    pub model: String,
    /// Base URL of an OpenAI-compatible API; default `OPENAI_BASE_URL`, else OpenAI's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (default `OPENAI_API_KEY`); the
    /// key itself is never written in a manifest.
    #[serde(default = "defaults::api_key_env")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub api_key_env: String,
    /// Total time allowed for one diagnosis (default 60s).
    #[serde(default = "defaults::llm_timeout")]
    pub timeout: HumanDuration,
    /// Most bytes of log tail sent (default 16 KiB).
    #[serde(default = "defaults::max_log_bytes")]
    pub max_log_bytes: u64,
    /// Deprecated: use `spec.secrets.env` (names listed here are still honoured there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("deprecated" = true))]
    pub secret_env: Vec<String>,
    /// Below this confidence (0–1) an answer's config or code fix is not applied: the worker
    /// is restarted instead, as for a root cause of "Unknown" (default 0.5).
    #[serde(default = "defaults::min_confidence")]
    pub min_confidence: f64,
    /// Most tokens the model may write in one answer, sent as `max_tokens` (default 1024); an
    /// answer cut off there fails at once as truncated.
    #[serde(default = "defaults::max_output_tokens")]
    pub max_output_tokens: u32,
    /// The model's context window in tokens, when known; the log tail is trimmed so the prompt
    /// and the answer fit. Unset: learnt from the server's `exceed_context_size_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
    /// Most bytes of an answer's body read from the server (default 256 KiB); a longer body
    /// fails as unusable without being parsed.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: u64,
}

/// Secrets: values automon must never write, print or send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Environment variables whose values are secrets (read from `template.env` and from
    /// automon's own environment): every occurrence is redacted, and `template.env` entries show
    /// as `[REDACTED]`. Names that contain PASS, SECRET, TOKEN or KEY are secret without being
    /// listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Extra regexes (Rust syntax); every match in a log line, message or prompt is replaced by
    /// `[REDACTED]`. The common shapes (password=, token=, Bearer, URL passwords, sk-…, AWS key
    /// ids, PEM private keys, JWTs) are built in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

impl Secrets {
    /// True when nothing is declared (the section is then left out of the normalised YAML).
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.patterns.is_empty()
    }
}

impl Default for Llm {
    fn default() -> Self {
        Self {
            enabled: false,
            model: defaults::model(),
            base_url: None,
            api_key_env: defaults::api_key_env(),
            timeout: defaults::llm_timeout(),
            max_log_bytes: defaults::max_log_bytes(),
            secret_env: Vec::new(),
            min_confidence: defaults::min_confidence(),
            max_output_tokens: defaults::max_output_tokens(),
            context_tokens: None,
            max_response_bytes: defaults::max_response_bytes(),
        }
    }
}

/// Adoption of processes automon did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Adoption {
    /// Adopt running processes whose command line matches the template exactly, argument by
    /// argument (default false). Workers automon itself started are always adopted.
    #[serde(default)]
    pub match_command: bool,
}

/// Whole numbers as the manifest must write them: unquoted. serde-saphyr reads a quoted
/// `"4"` into an integer field as 4, so `shards: "4"` passed silently where `shards: eight`
/// was refused; these read the scalar as YAML types it (`deserialize_any`) and refuse a
/// string, quoted or not, with what is expected.
mod whole {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserializer, Unexpected, Visitor};

    struct Whole<T> {
        expected: &'static str,
        /// The largest value `T` holds.
        max: u64,
        ty: PhantomData<T>,
    }

    impl<T: TryFrom<u64>> Whole<T> {
        /// A number beyond `T`: too large, with the limit (serde's own message for a float
        /// said "floating point", for a u64 beyond u32 "invalid value").
        fn too_large<E: de::Error>(&self, shown: &str) -> E {
            E::custom(format!(
                "{shown} is too large (expected {}, at most {})",
                self.expected,
                crate::text::Count(self.max)
            ))
        }
    }

    impl<T: TryFrom<u64>> Visitor<'_> for Whole<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expected)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| self.too_large(&v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => {
                    Err(self.too_large(&super::super::parse_message::shown_number(&v.to_string())))
                }
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            // A whole number beyond u64 reaches here as a float: it was written as digits.
            if v.is_finite() && v.fract() == 0.0 && v >= 18_446_744_073_709_551_616.0 {
                return Err(self.too_large("the number"));
            }
            Err(E::invalid_type(Unexpected::Float(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Err(E::invalid_type(Unexpected::Str(v), &self))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
            Err(E::invalid_type(Unexpected::Bool(v), &self))
        }
    }

    fn read<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
        expected: &'static str,
        max: u64,
    ) -> Result<T, D::Error> {
        d.deserialize_any(Whole {
            expected,
            max,
            ty: PhantomData,
        })
    }

    /// A worker count.
    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        read(d, "a whole number ≥ 0, unquoted", u32::MAX.into())
    }

    /// `spec.work.shards`.
    pub fn shards<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        read(d, "a whole number ≥ 1, unquoted", u32::MAX.into())
    }

    /// A key.
    pub fn key<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        read(d, "a whole number ≥ 0, unquoted", u64::MAX)
    }
}

/// Worker counts: automon runs `target` workers, never fewer than `min` nor more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerCounts {
    /// Workers to run normally (default 4).
    #[serde(default = "defaults::target", deserialize_with = "whole::count")]
    pub target: u32,
    /// Never scale below this (default 1).
    #[serde(default = "defaults::min", deserialize_with = "whole::count")]
    pub min: u32,
    /// Never run more than this (default 8).
    #[serde(default = "defaults::max", deserialize_with = "whole::count")]
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
    #[serde(default = "defaults::shards", deserialize_with = "whole::shards")]
    #[schemars(range(min = 1))]
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
    #[serde(deserialize_with = "whole::key")]
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
    /// `{checkpoint}` (the resume cursor; `range_start - 1` before the first checkpoint, -1
    /// for a range starting at 0) and
    /// `{NAME}` for each parameter.
    pub command: Vec<String>,
    /// Working directory, relative to the manifest's directory (default `.`).
    #[serde(default = "defaults::workdir")]
    pub workdir: String,
    /// Extra environment variables for the worker. Values of secret names (see
    /// `spec.secrets.env`) are shown as `[REDACTED]` wherever automon displays them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Pass automon's own environment on to the worker (default true), minus the LLM API key
    /// (`llm.api_key_env`) unless `env` names it. With false the worker gets only `PATH`,
    /// `HOME` and `LANG` from automon, plus `env` and automon's markers.
    #[serde(default = "defaults::yes", skip_serializing_if = "defaults::is_true")]
    pub inherit_env: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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
    /// Optional JSON pointer to a completion flag (`true` when the worker's range is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
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
    /// Regexes of lines that claim the worker's range is done (believed only with the checkpoint
    /// at the shard's end).
    #[serde(default = "defaults::completion_patterns")]
    pub completion_patterns: Vec<String>,
    /// strftime-style format of the timestamp that starts each line (default Python logging's
    /// `%Y-%m-%d %H:%M:%S,%f`, read as local time).
    #[serde(default = "defaults::timestamp_format")]
    pub timestamp_format: String,
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
    /// `Migration complete`.
    pub fn completion_patterns() -> Vec<String> {
        vec!["Migration complete".into()]
    }
    /// Python logging's default asctime.
    pub fn timestamp_format() -> String {
        "%Y-%m-%d %H:%M:%S,%f".into()
    }
    /// 5 minutes.
    pub fn scale_down_cooldown() -> HumanDuration {
        HumanDuration::from_secs(300)
    }
    /// 10 minutes.
    pub fn scale_up_cooldown() -> HumanDuration {
        HumanDuration::from_secs(600)
    }
    /// ".".
    pub fn disk_path() -> String {
        ".".into()
    }
    /// 90 %.
    pub fn saturated_percent() -> f64 {
        90.0
    }
    /// 50 %.
    pub fn normal_percent() -> f64 {
        50.0
    }
    /// 10 minutes.
    pub fn fix_cooldown() -> HumanDuration {
        HumanDuration::from_secs(600)
    }
    /// 3 attempts.
    pub fn max_attempts() -> u32 {
        3
    }
    /// 2 minutes.
    pub fn verify_after() -> HumanDuration {
        HumanDuration::from_secs(120)
    }
    /// alert_and_pause.
    pub fn escalation() -> super::Escalation {
        super::Escalation::AlertAndPause
    }
    /// true.
    pub fn yes() -> bool {
        true
    }
    /// True for `true` (a default left out of the normalised YAML).
    pub fn is_true(b: &bool) -> bool {
        *b
    }
    /// python3.
    pub fn interpreter() -> String {
        "python3".into()
    }
    /// 50 lines.
    pub fn max_changed_lines() -> u32 {
        50
    }
    /// gpt-4o-mini.
    pub fn model() -> String {
        "gpt-4o-mini".into()
    }
    /// OPENAI_API_KEY.
    pub fn api_key_env() -> String {
        "OPENAI_API_KEY".into()
    }
    /// 60 seconds.
    pub fn llm_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    /// 16 KiB.
    pub fn max_log_bytes() -> u64 {
        16 * 1024
    }
    /// 0.5.
    pub fn min_confidence() -> f64 {
        0.5
    }
    /// 1024.
    pub fn max_output_tokens() -> u32 {
        1024
    }
    /// 256 KiB.
    pub fn max_response_bytes() -> u64 {
        256 * 1024
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::manifest::parse;

    const MINIMAL: &str = "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {name: t}\nspec:\n  \
                           template: {command: [w, \"{id}\"]}\n  \
                           progress: {file: \"p{id}\", checkpoint: /c}\n  \
                           logs: {file: \"l{id}\"}\n";

    fn secs(d: HumanDuration) -> u64 {
        d.get().as_secs()
    }

    /// The seed's rules hold for every field a manifest leaves out.
    #[test]
    fn omitted_fields_take_the_seeds_defaults() {
        let s = parse(MINIMAL).unwrap().spec;
        assert_eq!(secs(s.interval), 60, "check interval 60s");
        assert_eq!((s.workers.target, s.workers.min, s.workers.max), (4, 1, 8));
        assert_eq!(secs(s.health.stuck_after), 5 * 60, "stuck after 5m");
        assert_eq!(
            secs(s.health.discovery_grace),
            20 * 60,
            "discovery grace 20m"
        );
        assert_eq!(s.scaling.disk.saturated_percent, 90.0);
        assert_eq!(s.scaling.disk.normal_percent, 50.0);
        assert_eq!(s.scaling.disk.path, ".");
        assert_eq!(secs(s.scaling.scale_down_cooldown), 5 * 60);
        assert_eq!(secs(s.scaling.scale_up_cooldown), 10 * 60);
        assert_eq!(
            secs(s.fixes.cooldown),
            10 * 60,
            "per-worker fix cooldown 10m"
        );
        assert_eq!(s.fixes.max_attempts, 3);
        assert_eq!(secs(s.fixes.verify_after), 2 * 60);
        assert_eq!(s.fixes.escalation, Escalation::AlertAndPause);
        assert!(s.fixes.config.enabled);
        assert!(!s.fixes.code.enabled);
        assert!(s.fixes.code.rollback_on_failure);
        assert_eq!(s.fixes.code.restart, CodeFixRestart::All);
        assert_eq!(s.template.workdir, ".");
        assert_eq!(s.template.stop_signal, "SIGTERM");
        assert_eq!(secs(s.template.stop_grace), 30);
        assert_eq!(s.logs.tail_bytes, 64 * 1024);
        assert_eq!(s.logs.timestamp_format, "%Y-%m-%d %H:%M:%S,%f");
        assert!(!s.llm.enabled);
        assert_eq!(s.llm.model, "gpt-4o-mini");
        assert_eq!(s.llm.api_key_env, "OPENAI_API_KEY");
        assert_eq!(s.llm.base_url, None);
        assert_eq!(secs(s.llm.timeout), 60);
        assert_eq!(secs(s.restart.backoff_initial), 10);
        assert_eq!(secs(s.restart.backoff_max), 5 * 60);
        assert_eq!(secs(s.restart.backoff_reset_after), 10 * 60);
        assert!(!s.adoption.match_command);
        assert_eq!(s.work, None);
        assert_eq!(s.setup, None);
    }

    /// The `Default` impls agree with the serde defaults (a section left out entirely equals a
    /// section written as `{}`).
    #[test]
    fn empty_sections_equal_omitted_sections() {
        let omitted = parse(MINIMAL).unwrap();
        let empty = parse(&format!(
            "{MINIMAL}  workers: {{}}\n  health: {{}}\n  restart: {{}}\n  scaling: {{disk: {{}}}}\n  \
             fixes: {{config: {{}}, code: {{}}}}\n  llm: {{}}\n  adoption: {{}}\n"
        ))
        .unwrap();
        assert_eq!(omitted, empty);
    }

    fn duration() -> impl Strategy<Value = HumanDuration> {
        prop_oneof![
            (1u64..100_000).prop_map(HumanDuration::from_secs),
            (1u64..100_000_000).prop_map(|ms| HumanDuration(Duration::from_millis(ms))),
        ]
    }

    /// Any printable text, including text that YAML would read as a number, bool or null.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,16}",
            Just("true".to_string()),
            Just("0x1F".to_string()),
            Just("~".to_string()),
            Just("1e3".to_string()),
            Just("- item".to_string()),
            Just("a: b".to_string()),
            Just("#hash".to_string()),
        ]
    }

    fn env_name() -> impl Strategy<Value = String> {
        "[A-Z_][A-Z0-9_]{0,12}"
    }

    fn counts() -> impl Strategy<Value = WorkerCounts> {
        (0u32..50, 0u32..50, 1u32..50).prop_map(|(a, b, c)| {
            let mut v = [a, b, c];
            v.sort_unstable();
            WorkerCounts {
                min: v[0],
                target: v[1],
                max: v[2],
            }
        })
    }

    fn work() -> impl Strategy<Value = Option<Work>> {
        proptest::option::of(
            (0u64..1_000_000_000, 1u32..64, 0u64..1_000_000, "[a-z]{1,8}").prop_map(
                |(start, shards, extra, unit)| Work {
                    range: KeyRange {
                        start,
                        end: Some(start + u64::from(shards) + extra),
                        end_command: None,
                    },
                    shards,
                    unit,
                },
            ),
        )
    }

    fn template() -> impl Strategy<Value = Template> {
        (
            proptest::collection::vec(text(), 0..5),
            proptest::collection::btree_map(env_name(), text(), 0..4),
            proptest::collection::btree_map(
                "p_[a-z]{1,8}",
                (-1000i64..1000, -1000i64..1000, -1000i64..1000),
                0..3,
            ),
            prop::sample::select(vec!["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1"]),
            duration(),
            "[a-z./]{1,10}",
        )
            .prop_map(|(args, env, params, signal, stop_grace, workdir)| {
                let parameters: BTreeMap<String, Parameter> = params
                    .into_iter()
                    .map(|(k, (a, b, c))| {
                        let mut v = [a, b, c];
                        v.sort_unstable();
                        (
                            k,
                            Parameter {
                                min: v[0],
                                default: v[1],
                                max: v[2],
                            },
                        )
                    })
                    .collect();
                // Braces in free text would be placeholders; keep them out of the arguments.
                let mut command = vec!["python3".to_string(), "{id}".to_string()];
                command.extend(args.into_iter().map(|a| a.replace(['{', '}'], "")));
                command.extend(parameters.keys().map(|k| format!("{{{k}}}")));
                Template {
                    command,
                    workdir,
                    env,
                    inherit_env: true,
                    parameters,
                    stop_signal: signal.to_string(),
                    stop_grace,
                }
            })
    }

    fn logs() -> impl Strategy<Value = Logs> {
        let pattern = prop::sample::select(vec![
            "Successfully uploaded:",
            "Found [\\d,]+ new files",
            "^Traceback ",
            " - (ERROR|CRITICAL) - ",
            "a.b*c",
        ])
        .prop_map(String::from);
        (
            proptest::collection::vec(pattern.clone(), 0..3),
            proptest::collection::vec(pattern.clone(), 0..3),
            proptest::collection::vec(pattern.clone(), 0..3),
            proptest::collection::vec(pattern, 0..3),
            prop::sample::select(vec!["%Y-%m-%d %H:%M:%S,%f", "%H:%M:%S", "[%d/%b/%Y:%T %z]"]),
            1024u64..16 * 1024 * 1024,
        )
            .prop_map(|(upload, activity, error, completion, ts, tail)| Logs {
                file: "logs/worker{id}.log".into(),
                upload_patterns: upload,
                activity_patterns: activity,
                error_patterns: error,
                completion_patterns: completion,
                timestamp_format: ts.into(),
                tail_bytes: tail,
            })
    }

    fn scaling() -> impl Strategy<Value = Scaling> {
        (0u32..10_000, 1u32..10_000, duration(), duration()).prop_map(|(a, b, down, up)| {
            let normal = f64::from(a.min(9_999)) / 100.0;
            let saturated = (normal + f64::from(b) / 100.0).min(100.0);
            Scaling {
                disk: DiskThresholds {
                    path: ".".into(),
                    saturated_percent: saturated,
                    normal_percent: normal,
                },
                scale_down_cooldown: down,
                scale_up_cooldown: up,
            }
        })
    }

    fn fixes() -> impl Strategy<Value = Fixes> {
        (
            duration(),
            1u32..10,
            duration(),
            prop::sample::select(vec![
                Escalation::AlertAndPause,
                Escalation::StopWorker,
                Escalation::TryDifferentFix,
            ]),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec("[a-z]{1,8}/[a-z]{1,8}\\.py", 1..3),
            1u32..500,
        )
            .prop_map(
                |(cooldown, max_attempts, verify_after, escalation, config, code, files, lines)| {
                    Fixes {
                        cooldown,
                        max_attempts,
                        verify_after,
                        escalation,
                        config: ConfigFixes { enabled: config },
                        code: CodeFixes {
                            enabled: code,
                            files,
                            interpreter: "python3".into(),
                            test_command: code.then(|| vec!["pytest".into(), "-q".into()]),
                            max_changed_lines: lines,
                            rollback_on_failure: !code,
                            restart: if code {
                                CodeFixRestart::StuckOnly
                            } else {
                                CodeFixRestart::All
                            },
                        },
                    }
                },
            )
    }

    fn llm() -> impl Strategy<Value = Llm> {
        (
            any::<bool>(),
            "[a-z0-9.-]{1,16}",
            proptest::option::of(prop::sample::select(vec![
                "https://api.openai.com/v1",
                "http://localhost:11434/v1",
            ])),
            env_name(),
            duration(),
            1u64..1_000_000,
            proptest::collection::vec(env_name(), 0..3),
        )
            .prop_map(
                |(enabled, model, base_url, api_key_env, timeout, max_log_bytes, secret_env)| Llm {
                    enabled,
                    model,
                    base_url: base_url.map(String::from),
                    api_key_env,
                    timeout,
                    max_log_bytes,
                    secret_env,
                    ..Llm::default()
                },
            )
    }

    fn workerset() -> impl Strategy<Value = WorkerSet> {
        let timing = (
            duration(),
            duration(),
            duration(),
            duration(),
            duration(),
            duration(),
        );
        (
            "[a-z][a-z0-9._-]{0,20}",
            counts(),
            work(),
            template(),
            proptest::option::of("/[a-z_]{1,12}"),
            timing,
            (scaling(), fixes(), llm(), any::<bool>()),
            logs(),
        )
            .prop_map(
                |(name, workers, work, template, items, timing, (sc, fx, llm, adopt), logs)| {
                    let (interval, a, b, initial, max, reset) = timing;
                    WorkerSet {
                        api_version: API_VERSION.into(),
                        kind: KIND.into(),
                        metadata: Metadata { name },
                        spec: Spec {
                            interval,
                            workers,
                            work,
                            setup: None,
                            template,
                            progress: Progress {
                                file: "state/progress{id}.json".into(),
                                checkpoint: "/last_processed_book_id".into(),
                                items,
                                completion: None,
                            },
                            logs,
                            health: Health {
                                stuck_after: a.min(b),
                                discovery_grace: a.max(b),
                            },
                            restart: RestartPolicy {
                                backoff_initial: initial.min(max),
                                backoff_max: initial.max(max),
                                backoff_reset_after: reset,
                            },
                            scaling: sc,
                            fixes: fx,
                            llm,
                            secrets: Secrets::default(),
                            runtime: RuntimeSpec::default(),
                            adoption: Adoption {
                                match_command: adopt,
                            },
                        },
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(256))]
        /// A valid manifest survives serialize (serde-saphyr) → parse unchanged.
        #[test]
        fn valid_manifests_round_trip_through_yaml(ws in workerset()) {
            let problems =
                crate::manifest::validate::validate(&ws, "", std::path::Path::new("/project"));
            prop_assert!(problems.is_empty(), "the generator made an invalid manifest: {problems:?}");
            let yaml = serde_saphyr::to_string(&ws).unwrap();
            let back = parse(&yaml).map_err(|p| format!("{p:?}\n{yaml}"));
            prop_assert_eq!(back, Ok(ws), "{}", yaml);
        }
    }
}
