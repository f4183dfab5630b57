//! automon keeps a fleet of long-running batch workers on one machine converged on a
//! declarative manifest, the way a Kubernetes controller does.
//!
//! # Layout
//!
//! - [`manifest`]: the WorkerSet manifest — types, defaults, validation, the resolved [`manifest::Desired`].
//! - [`observe`]: the world as plain data — processes, progress files, log tails.
//! - [`plan`]: the pure planner, `plan(desired, observed, memory, now) -> Plan`.
//! - [`act`]: actuators — setup, code fixes (`act::fix`), the LLM client.
//! - [`runtime`]: where workers run, behind one trait: [`runtime::local`] (process groups on this machine), [`runtime::slurm`] (Slurm batch jobs).
//! - [`secrets`]: redaction of worker output, the workers' environment, masked secrets in the manifest.
//! - [`state`]: persisted memory, the single-instance lock, the events log.
//! - [`daemon`]: the control loop.
//! - [`control`]: the loop's control socket (HTTP, JSON): operator requests, live apply, views, `/metrics`.
//! - [`metrics`]: Prometheus metrics and the status file, published after each pass.
//! - [`cli`]: command-line parsing and the subcommands.
//! - [`clock`]: the boot clock the planner measures time on, and wall time for people.
//! - [`text`]: numbers and ranges for people.
//! - [`stdio`]: automon's own stdout and stderr, written without panicking.

pub mod act;
pub mod cli;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod export;
pub mod fds;
pub mod footprint;
pub mod manifest;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod stdio;
#[cfg(test)]
mod test_support;
pub mod text;

use serde::{Deserialize, Serialize};

/// A worker's small integer id: `{id}` in the template, and the index of the shard it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub u32);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for WorkerId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}
