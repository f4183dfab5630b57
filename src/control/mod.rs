//! The control channel of a running loop: one HTTP/1.1 server (hyper) on the Unix domain socket
//! `STATE_DIR/control.sock` — mode 0600, bound under the state directory's lock, a stale one
//! from a killed loop replaced, removed when the loop ends — with JSON bodies. `/metrics` is
//! served by the same server, and on `--metrics-addr` over TCP (metrics only: the control
//! routes never leave the socket).
//!
//! The loop owns the channel: operator requests (`pause`, `resume`, `reset-params`, `apply`) and
//! views (`get`, `status`, `diff`, `history`) reach it as typed [`Request`]s on a channel the daemon reads;
//! SIGHUP arrives on the same channel as [`Request::Reload`]. Nothing is signalled.
//!
//! # Routes (socket)
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `GET /metrics` | — | 200, Prometheus text (also on TCP) |
//! | `GET /v1/view` | — | 200 [`View`]; 503 while `spec.setup` runs |
//! | `GET /v1/history` | — | 200 [`HistoryView`]; 503 while `spec.setup` runs |
//! | `POST /v1/operator` | [`OperatorBody`] | [`Outcome`]: 200 done, 202 queued (setup runs) |
//! | `POST /v1/apply` | [`ApplyBody`] | [`Outcome`]: 200 taken, 202 queued, 409 refused, 422 invalid |
//!
//! # Layout
//!
//! - `server`: binds the socket (and the metrics TCP listener), caps connections, routes.
//! - `client`: how a command reaches the running loop, or takes the lock when none runs.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::WorkerId;
use crate::manifest::{Desired, HumanDuration, Overrides};
use crate::observe::disk::DiskObservation;
use crate::plan::{Memory, Plan};
use crate::state::DaemonStatus;
use crate::state::requests::RequestKind;

/// File name of the control socket inside the state directory.
pub const SOCKET_FILE: &str = "control.sock";

/// The control socket of `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// `POST /v1/operator`: pause, resume or reset-params of one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorBody {
    /// What is asked.
    pub kind: RequestKind,
    /// The worker.
    pub worker: WorkerId,
    /// The operator's command in words (`automon pause workerset.yaml 3`), for the events.
    pub command: String,
}

/// `POST /v1/apply`: a manifest the client read and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyBody {
    /// The manifest file, absolute (relative paths in it are resolved from its directory).
    pub file: PathBuf,
    /// Its text, as validated by the client.
    pub text: String,
    /// Command-line overrides given with the apply.
    #[serde(default)]
    pub overrides: WireOverrides,
    /// The operator's command in words, for the events.
    pub command: String,
}

/// [`Overrides`] on the wire: durations as human strings ("5s").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireOverrides {
    /// `--check-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// `--threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_after: Option<String>,
    /// `--llm-enabled`.
    #[serde(default)]
    pub llm_enabled: bool,
}

impl From<&Overrides> for WireOverrides {
    fn from(o: &Overrides) -> Self {
        Self {
            interval: o.interval.map(|d| d.to_string()),
            stuck_after: o.stuck_after.map(|d| d.to_string()),
            llm_enabled: o.llm_enabled,
        }
    }
}

impl WireOverrides {
    /// Back to [`Overrides`].
    ///
    /// # Errors
    /// A duration that does not parse, in words.
    pub fn overrides(&self) -> Result<Overrides, String> {
        let parse = |d: &Option<String>| d.as_deref().map(HumanDuration::parse).transpose();
        Ok(Overrides {
            interval: parse(&self.interval)?,
            stuck_after: parse(&self.stuck_after)?,
            llm_enabled: self.llm_enabled,
        })
    }
}

/// How the loop answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Applied; a pass took it.
    Done,
    /// Accepted while `spec.setup` runs; applied by the first pass after it.
    Queued,
    /// Refused (a re-cut shard layout, another WorkerSet); the loop is unchanged.
    Refused,
    /// The manifest is invalid; the loop is unchanged.
    Invalid,
}

/// The answer to an operator request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Done, queued, refused or invalid.
    pub verdict: Verdict,
    /// What happened to the request, in words.
    pub message: String,
    /// The events of the pass that took it (as in the events log).
    #[serde(default)]
    pub lines: Vec<String>,
}

impl Outcome {
    /// The HTTP status that carries this outcome.
    pub fn http_status(&self) -> u16 {
        match self.verdict {
            Verdict::Done => 200,
            Verdict::Queued => 202,
            Verdict::Refused => 409,
            Verdict::Invalid => 422,
        }
    }
}

/// `GET /v1/view`: what the loop runs and knows now — the one view `get`, `status` and `diff`
/// show while a loop runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct View {
    /// The loop's pid.
    pub pid: u32,
    /// The manifest file it runs.
    pub manifest_file: PathBuf,
    /// The manifest it runs (normalised YAML, overrides applied).
    pub applied: String,
    /// Its template's fingerprint ([`Desired::template_hash`]).
    pub template: String,
    /// Its memory now.
    pub memory: Memory,
    /// Its last pass's plan (phases, reasons, scaling; the memory field is empty); `None`
    /// before the first pass.
    pub plan: Option<Plan>,
    /// Its last disk observation.
    pub disk: Option<DiskObservation>,
    /// Its last pass, as `status.json` holds it.
    pub status: Option<DaemonStatus>,
    /// What it finds wrong in its own house now (unsaved state, pending writes, unwritable
    /// logs): the lock file's condition, which a hung state directory keeps from being written.
    #[serde(default)]
    pub condition: Option<String>,
}

/// `GET /v1/history`: the fix history as the running loop knows it — its history file, and
/// the records a failed save still keeps off disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryView {
    /// The loop's pid.
    pub pid: u32,
    /// Every record, oldest first.
    pub records: Vec<crate::state::HistoryRecord>,
    /// Lines of the file that did not parse (a torn last line), in words.
    pub warnings: Vec<String>,
    /// How many of the records (the last ones) are not on disk yet: the last save failed.
    pub unsaved: usize,
}

/// What the loop receives on its channel.
#[derive(Debug)]
pub enum Request {
    /// Pause, resume or reset-params; answered after the pass that applies it (`None`: queued
    /// during setup, nobody waits).
    Operator {
        /// The request.
        body: OperatorBody,
        /// Where the outcome goes.
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// A new manifest; answered after the pass that takes it, or at once when refused.
    Apply {
        /// The manifest.
        body: ApplyBody,
        /// Where the outcome goes.
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// SIGHUP: re-read the manifest file the loop was started with; reopen `automon.log`.
    Reload,
    /// The loop's view, answered at once.
    View {
        /// Where the view goes.
        reply: oneshot::Sender<Box<View>>,
    },
    /// The fix history as the loop knows it, answered at once.
    History {
        /// Where the history goes.
        reply: oneshot::Sender<HistoryView>,
    },
}

/// Workers whose recorded process runs another template than `desired`'s, by id: a changed
/// template/env/parameters applies at each worker's next (re)start. Unknown templates (adopted
/// processes) are not listed.
pub fn previous_template(desired: &Desired, memory: &Memory) -> Vec<WorkerId> {
    let now = desired.template_hash();
    memory
        .workers
        .iter()
        .filter(|(_, w)| {
            w.process
                .as_ref()
                .and_then(|p| p.template.as_deref())
                .is_some_and(|t| t != now)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// The note `get` and `diff` print for a worker that runs the previous template.
pub fn previous_template_note(worker: WorkerId, memory: &Memory) -> String {
    let pid = memory
        .workers
        .get(&worker)
        .and_then(|w| w.process.as_ref())
        .map_or_else(String::new, |p| format!(" (pid {})", p.identity.pid));
    format!(
        "worker {worker}{pid} runs the previous template; it takes the new one at its next restart"
    )
}

/// The operator's command in words, from this process's arguments (`automon pause x.yaml 3`).
pub fn command_in_words() -> String {
    let mut args = std::env::args();
    let _exe = args.next();
    let rest: Vec<String> = args.collect();
    format!("automon {}", rest.join(" "))
}
