//! [`Desired`]: a validated manifest resolved into what the planner and observers work with —
//! absolute paths, compiled patterns, the shard list and typed durations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::RegexSet;

use super::Manifest;
use super::types::{Adoption, Fixes, Health, Llm, Parameter, RestartPolicy, Scaling, WorkerCounts};
use crate::WorkerId;

/// One slice `[start, end)` of the key range, owned by worker `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    /// The worker that owns this shard.
    pub id: WorkerId,
    /// First key (inclusive).
    pub start: u64,
    /// One past the last key.
    pub end: u64,
}

impl Shard {
    /// The checkpoint a worker reports when every key of the shard is done: `end - 1`.
    pub fn last_key(&self) -> u64 {
        self.end.saturating_sub(1)
    }

    /// The cursor before any work: `start - 1` (every key ≤ it is done — none of the shard);
    /// `None` for a shard that starts at key 0, whose cursor before any work is -1 (rendered
    /// as such by [`render_argv`]; 0 would say key 0 is done).
    pub fn initial_cursor(&self) -> Option<u64> {
        self.start.checked_sub(1)
    }

    /// Keys of the shard done at checkpoint `c` (every key ≤ `c` is done): 0 below the
    /// shard's start, [`Self::len`] at or past its last key.
    pub fn keys_done(&self, c: u64) -> u64 {
        if c < self.start || self.is_empty() {
            return 0;
        }
        c.min(self.last_key()) - self.start + 1
    }

    /// Number of keys in the shard.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for a shard with no keys (never produced by [`split_range`]).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Splits `[start, end)` into `n` contiguous shards whose sizes differ by at most one key.
pub fn split_range(start: u64, end: u64, n: u32) -> Vec<Shard> {
    let n = u64::from(n.max(1));
    let len = end.saturating_sub(start);
    (0..n)
        .map(|i| Shard {
            id: WorkerId(i as u32),
            start: start + len * i / n,
            end: start + len * (i + 1) / n,
        })
        .collect()
}

/// Compiled line patterns from `spec.logs`.
#[derive(Debug, Clone)]
pub struct Patterns {
    /// Upload lines: a worker that logged one has left discovery.
    pub upload: RegexSet,
    /// Other activity lines (discovery batches, queries).
    pub activity: RegexSet,
    /// Error lines.
    pub error: RegexSet,
    /// Lines claiming the range is done.
    pub completion: RegexSet,
}

/// The desired state, resolved from a [`Manifest`].
#[derive(Debug, Clone)]
pub struct Desired {
    /// `metadata.name`.
    pub name: String,
    /// The manifest file as named by the user.
    pub manifest_file: PathBuf,
    /// The manifest's directory, absolute (a `.env` beside it may hold the LLM key).
    pub manifest_dir: PathBuf,
    /// The workers' working directory, absolute.
    pub workdir: PathBuf,
    /// Time between passes when nothing wakes the loop earlier.
    pub interval: Duration,
    /// target / min / max.
    pub counts: WorkerCounts,
    /// The shards, when the manifest has a work range; `None` for plain replicas.
    pub shards: Option<Vec<Shard>>,
    /// Noun for one key, e.g. "book".
    pub unit: String,
    /// The template argv with placeholders.
    pub command: Vec<String>,
    /// Extra environment for workers.
    pub env: BTreeMap<String, String>,
    /// Pass automon's environment on to workers (minus the LLM key); see
    /// [`crate::secrets::env::child_env`].
    pub inherit_env: bool,
    /// Names of environment variables whose values are secret: `spec.secrets.env` plus the
    /// deprecated `spec.llm.secret_env`.
    pub secret_env: Vec<String>,
    /// Extra redaction regexes (`spec.secrets.patterns`).
    pub secret_patterns: Vec<String>,
    /// Template parameters and their bounds.
    pub parameters: BTreeMap<String, Parameter>,
    /// Signal that asks a worker to stop.
    pub stop_signal: nix::sys::signal::Signal,
    /// Wait after the stop signal before SIGKILL.
    pub stop_grace: Duration,
    /// Progress file pattern (absolute, with `{id}`).
    pub progress_file: String,
    /// JSON pointer to the checkpoint.
    pub checkpoint_pointer: String,
    /// JSON pointer to an item count, if any.
    pub items_pointer: Option<String>,
    /// Log file pattern (absolute, with `{id}`).
    pub log_file: String,
    /// Compiled log patterns.
    pub patterns: Patterns,
    /// Bytes read from the end of each log per pass.
    pub tail_bytes: u64,
    /// Stuck thresholds.
    pub health: Health,
    /// Crash-loop backoff.
    pub restart: RestartPolicy,
    /// JSON pointer to a completion flag, if any.
    pub completion_pointer: Option<String>,
    /// strftime format of log timestamps.
    pub timestamp_format: String,
    /// Scaling thresholds; `disk_path` is the resolved absolute path of `scaling.disk.path`.
    pub scaling: Scaling,
    /// The disk path to watch, absolute.
    pub disk_path: PathBuf,
    /// Fix policy; `code.files` resolved to absolute paths in `code_files`.
    pub fixes: Fixes,
    /// Allow-listed code-fix files, absolute (validated to lie inside `workdir`).
    pub code_files: Vec<PathBuf>,
    /// LLM settings.
    pub llm: Llm,
    /// Adoption of processes automon did not start.
    pub adoption: Adoption,
    /// Where the workers run (`spec.runtime`).
    pub runtime: super::types::RuntimeSpec,
    /// The WorkerSet as applied (defaults filled, overrides applied), as YAML, with secret
    /// `template.env` values masked (`[REDACTED] sha256:…`, see
    /// [`crate::secrets::env::mask_workerset`]); what `automon diff` compares with the next
    /// version and what `state.json` keeps.
    pub normalized: String,
}

/// Why a manifest could not be resolved (after it validated).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A pattern that validated failed to compile as a set (should not happen).
    #[error("{field}: {source}")]
    Pattern {
        /// Field path.
        field: &'static str,
        /// The regex error.
        source: regex::Error,
    },
}

impl Desired {
    /// A fingerprint of what a worker process is started from — command, environment,
    /// parameters, working directory — as 16 hex digits (XXH3, stable across builds). A running
    /// worker whose recorded fingerprint differs runs the previous template.
    pub fn template_hash(&self) -> String {
        let what = serde_json::json!([self.command, self.env, self.parameters, self.workdir]);
        format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(what.to_string().as_bytes())
        )
    }

    /// Resolves `manifest`; `range_end` is the end of the key range when the manifest gives it by
    /// `end_command` (see [`crate::act::setup::resolve_range_end`]); ignored otherwise.
    ///
    /// # Errors
    /// [`ResolveError`] if a pattern set does not compile.
    pub fn resolve(manifest: &Manifest, range_end: Option<u64>) -> Result<Self, ResolveError> {
        let spec = &manifest.workerset.spec;
        let workdir = normalize(&manifest.dir.join(&spec.template.workdir));
        let set = |field: &'static str, p: &[String]| {
            RegexSet::new(p).map_err(|source| ResolveError::Pattern { field, source })
        };
        let patterns = Patterns {
            upload: set("spec.logs.upload_patterns", &spec.logs.upload_patterns)?,
            activity: set("spec.logs.activity_patterns", &spec.logs.activity_patterns)?,
            error: set("spec.logs.error_patterns", &spec.logs.error_patterns)?,
            completion: set(
                "spec.logs.completion_patterns",
                &spec.logs.completion_patterns,
            )?,
        };
        let shards = spec.work.as_ref().map(|w| {
            let end = w
                .range
                .end
                .or(range_end)
                .unwrap_or(w.range.start + u64::from(w.shards));
            split_range(w.range.start, end, w.shards)
        });
        let path = |p: &str| workdir.join(p).to_string_lossy().into_owned();
        Ok(Self {
            name: manifest.workerset.metadata.name.clone(),
            manifest_file: manifest.file.clone(),
            manifest_dir: manifest.dir.clone(),
            interval: spec.interval.get(),
            counts: spec.workers,
            shards,
            unit: spec
                .work
                .as_ref()
                .map_or_else(|| "item".into(), |w| w.unit.clone()),
            command: spec.template.command.clone(),
            env: spec.template.env.clone(),
            inherit_env: spec.template.inherit_env,
            secret_env: crate::secrets::env::declared_names(spec),
            secret_patterns: spec.secrets.patterns.clone(),
            parameters: spec.template.parameters.clone(),
            stop_signal: parse_signal(&spec.template.stop_signal),
            stop_grace: spec.template.stop_grace.get(),
            progress_file: path(&spec.progress.file),
            checkpoint_pointer: spec.progress.checkpoint.clone(),
            items_pointer: spec.progress.items.clone(),
            log_file: path(&spec.logs.file),
            patterns,
            tail_bytes: spec.logs.tail_bytes,
            health: spec.health,
            restart: spec.restart,
            completion_pointer: spec.progress.completion.clone(),
            timestamp_format: spec.logs.timestamp_format.clone(),
            scaling: spec.scaling.clone(),
            disk_path: normalize(&workdir.join(&spec.scaling.disk.path)),
            fixes: spec.fixes.clone(),
            code_files: spec
                .fixes
                .code
                .files
                .iter()
                .map(|f| normalize(&workdir.join(f)))
                .collect(),
            llm: spec.llm.clone(),
            adoption: spec.adoption,
            runtime: spec.runtime.clone(),
            normalized: crate::secrets::env::normalized_yaml(&manifest.workerset),
            workdir,
        })
    }

    /// The progress file of worker `id`.
    pub fn progress_path(&self, id: WorkerId) -> PathBuf {
        PathBuf::from(self.progress_file.replace("{id}", &id.to_string()))
    }

    /// The log file of worker `id`.
    pub fn log_path(&self, id: WorkerId) -> PathBuf {
        PathBuf::from(self.log_file.replace("{id}", &id.to_string()))
    }

    /// Every worker id this WorkerSet can have: one per shard, or `0..max` for replicas.
    pub fn worker_ids(&self) -> Vec<WorkerId> {
        match &self.shards {
            Some(shards) => shards.iter().map(|s| s.id).collect(),
            None => (0..self.counts.max).map(WorkerId).collect(),
        }
    }

    /// The shard of worker `id`, if the WorkerSet is sharded.
    pub fn shard(&self, id: WorkerId) -> Option<Shard> {
        let shards = self.shards.as_ref()?;
        // [`split_range`] puts shard `i` at index `i`: O(1), where a search made every pass
        // quadratic in the number of workers (the planner asks once per worker).
        match shards.get(usize::try_from(id.0).ok()?) {
            Some(s) if s.id == id => Some(*s),
            _ => shards.iter().find(|s| s.id == id).copied(),
        }
    }

    /// Parameter values for a worker: defaults, overridden by `overrides` (clamped to bounds).
    pub fn parameter_values(&self, overrides: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
        self.parameters
            .iter()
            .map(|(k, p)| {
                let v = overrides
                    .get(k)
                    .copied()
                    .unwrap_or(p.default)
                    .clamp(p.min, p.max);
                (k.clone(), v)
            })
            .collect()
    }
}

/// Substitutes placeholders in the template argv for one worker.
///
/// `checkpoint` is the resume cursor; `None` renders `range_start - 1` for a shard (no key
/// done yet: `-1` for a shard starting at key 0) or `0` for a replica. Unknown placeholders
/// cannot occur (validation rejects them).
pub fn render_argv(
    command: &[String],
    id: WorkerId,
    shard: Option<Shard>,
    checkpoint: Option<u64>,
    params: &BTreeMap<String, i64>,
) -> Vec<String> {
    let cursor = match (checkpoint, shard) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => s
            .initial_cursor()
            .map_or_else(|| "-1".to_string(), |c| c.to_string()),
        (None, None) => "0".to_string(),
    };
    let value = |name: &str| -> Option<String> {
        match name {
            "id" => Some(id.to_string()),
            "checkpoint" => Some(cursor.clone()),
            "range_start" => shard.map(|s| s.start.to_string()),
            "range_end" => shard.map(|s| s.end.to_string()),
            _ => params.get(name).map(i64::to_string),
        }
    };
    command
        .iter()
        .map(|arg| {
            // One scan per argument; most have no placeholder at all.
            let mut out = String::with_capacity(arg.len());
            let mut rest = arg.as_str();
            while let Some(open) = rest.find('{') {
                out.push_str(&rest[..open]);
                let after = &rest[open + 1..];
                match after
                    .find('}')
                    .and_then(|close| Some((close, value(&after[..close])?)))
                {
                    Some((close, v)) => {
                        out.push_str(&v);
                        rest = &after[close + 1..];
                    }
                    None => {
                        // Not a placeholder (or an unknown name): kept as written.
                        out.push('{');
                        rest = after;
                    }
                }
            }
            out.push_str(rest);
            out
        })
        .collect()
}

fn parse_signal(name: &str) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    match name {
        "SIGINT" => Signal::SIGINT,
        "SIGHUP" => Signal::SIGHUP,
        "SIGQUIT" => Signal::SIGQUIT,
        "SIGUSR1" => Signal::SIGUSR1,
        _ => Signal::SIGTERM,
    }
}

/// Removes `.` and resolves `..` lexically (the path need not exist yet).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_range_without_gaps() {
        let shards = split_range(1, 2001, 8);
        assert_eq!(shards.len(), 8);
        assert_eq!(shards[0].start, 1);
        assert_eq!(shards[7].end, 2001);
        for pair in shards.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(shards.iter().map(Shard::len).sum::<u64>(), 2000);
    }

    /// Regression: with `work.range.start: 0` a first start rendered `{checkpoint}` as 0
    /// (`start - 1` saturated), which says key 0 is done: a worker resuming "after 0" never
    /// processed key 0, and `get` counted it done. Before any checkpoint the cursor is -1; a
    /// checkpoint, once there, is rendered as it is (never the shard's start again).
    #[test]
    fn a_shard_starting_at_key_0_starts_before_key_0_and_counts_it_done_only_once_reached() {
        let cmd: Vec<String> = vec!["w".into(), "--resume-from={checkpoint}".into()];
        let shard = Shard {
            id: WorkerId(0),
            start: 0,
            end: 10,
        };
        let none = BTreeMap::new();
        assert_eq!(
            render_argv(&cmd, WorkerId(0), Some(shard), None, &none),
            ["w", "--resume-from=-1"]
        );
        assert_eq!(
            render_argv(&cmd, WorkerId(0), Some(shard), Some(0), &none),
            ["w", "--resume-from=0"]
        );
        assert_eq!(shard.initial_cursor(), None);
        assert_eq!(shard.keys_done(0), 1, "key 0 done");
        assert_eq!(shard.keys_done(9), 10);
        assert_eq!(shard.keys_done(u64::MAX), 10);
        let later = Shard {
            id: WorkerId(1),
            start: 10,
            end: 20,
        };
        assert_eq!(later.initial_cursor(), Some(9));
        assert_eq!(later.keys_done(9), 0, "the cursor before the shard");
        assert_eq!(later.keys_done(3), 0);
        assert_eq!(later.keys_done(10), 1);
    }

    #[test]
    fn renders_placeholders_and_initial_cursor() {
        let cmd: Vec<String> = [
            "w.py",
            "--id",
            "{id}",
            "--from",
            "{checkpoint}",
            "--end",
            "{range_end}",
            "-p",
            "{p}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let shard = Shard {
            id: WorkerId(3),
            start: 751,
            end: 1001,
        };
        let params = BTreeMap::from([("p".to_string(), 2)]);
        let argv = render_argv(&cmd, WorkerId(3), Some(shard), None, &params);
        assert_eq!(
            argv,
            [
                "w.py", "--id", "3", "--from", "750", "--end", "1001", "-p", "2"
            ]
        );
        let resumed = render_argv(&cmd, WorkerId(3), Some(shard), Some(900), &params);
        assert_eq!(resumed[4], "900");
    }

    #[test]
    fn placeholders_inside_arguments_and_braces_that_are_not_placeholders() {
        let cmd: Vec<String> = [
            "--log=w{id}-{range_start}.log",
            "{",
            "}{id}{",
            "{\"json\": {id}}",
            "{unknown}{id}",
            "{{id}}",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let shard = Shard {
            id: WorkerId(12),
            start: 10,
            end: 20,
        };
        let argv = render_argv(&cmd, WorkerId(12), Some(shard), None, &BTreeMap::new());
        assert_eq!(
            argv,
            [
                "--log=w12-10.log",
                "{",
                "}12{",
                "{\"json\": 12}",
                "{unknown}12",
                "{12}",
                ""
            ]
        );
        // A replica has no range: its range placeholders stay as written.
        let replica = render_argv(&cmd[..1], WorkerId(2), None, Some(5), &BTreeMap::new());
        assert_eq!(replica, ["--log=w2-{range_start}.log"]);
    }
}
