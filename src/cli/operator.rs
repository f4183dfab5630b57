//! `automon pause FILE N` / `resume FILE N` / `reset-params FILE N`: operator requests kept in
//! memory and honoured by the planner. With a running loop the request goes through `STATE_DIR/requests/` and a
//! SIGUSR1 nudge (the loop is the only writer of the state); without one it is applied here,
//! under the lock.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::WorkerId;
use crate::state::requests::{RequestKind, write_request};

/// Arguments of `pause` and `resume`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// The worker id.
    pub worker: u32,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Runs `pause` (`kind` = Pause) or `resume`.
pub fn run(args: &OperatorArgs, kind: RequestKind) -> Result<u8, CliError> {
    let (state_dir, manifest) = super::loop_state_dir(&args.file, args.state_dir.as_deref())?;
    let worker = WorkerId(args.worker);
    let running = crate::state::lock_holder(&state_dir);
    // The worker id is checked against the manifest when it was read, and always when no loop
    // runs (the request is then applied here); a running loop checks it itself.
    let manifest = match manifest {
        Some(m) => Some(m),
        None if running.is_none() => Some(super::load_manifest(&args.file)?),
        None => None,
    };
    if let Some(manifest) = &manifest {
        let desired = super::resolve(manifest)?;
        let ids = desired.worker_ids();
        if !ids.contains(&worker) {
            let range = match (ids.first(), ids.last()) {
                (Some(a), Some(b)) => format!("{a}–{b}"),
                _ => "none".into(),
            };
            return Err(CliError::input(format!(
                "worker {worker} is not in WorkerSet {} (worker ids {range})",
                desired.name
            )));
        }
    }
    let verb = match kind {
        RequestKind::Pause => "pause",
        RequestKind::Resume => "resume",
        RequestKind::ResetParams => "reset the config-fix values of",
    };
    if let Some(pid) = running {
        write_request(&state_dir, kind, worker).map_err(|e| {
            CliError::runtime(format!(
                "{}: cannot write the request: {e}",
                state_dir.display()
            ))
        })?;
        let nudged = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .is_ok();
        let when = if nudged { "now" } else { "at its next pass" };
        crate::outln!(
            "requested: the running automon (pid {pid}) will {verb} worker {worker} {when}"
        );
        return Ok(0);
    }
    if kind != RequestKind::Pause && !state_dir.join("state.json").exists() {
        return Err(CliError::runtime(format!(
            "no state yet in {}: nothing to resume (run `automon apply` first)",
            state_dir.display()
        )));
    }
    let _lock = super::lock_state(&state_dir)?;
    let mut memory =
        crate::state::load_memory(&state_dir).map_err(|e| CliError::runtime(e.to_string()))?;
    let held = |m: &crate::plan::Memory| {
        m.workers
            .get(&worker)
            .is_some_and(|w| w.paused.is_some() || w.failed.is_some())
    };
    let was_held = held(&memory);
    let message = crate::plan::apply_request(&mut memory, kind, worker, crate::clock::Now::read());
    crate::state::save_memory(&state_dir, &memory).map_err(|e| CliError::runtime(e.to_string()))?;
    crate::state::EventLog::open(&state_dir, false).record(jiff::Timestamp::now(), &message);
    crate::outln!("{message}");
    if kind == RequestKind::Pause
        && memory
            .workers
            .get(&worker)
            .is_some_and(|w| w.process.is_some())
    {
        crate::outln!(
            "note: no automon is running; the worker's process is stopped by the next `automon apply`"
        );
    }
    if kind == RequestKind::Resume && was_held && !held(&memory) {
        crate::outln!(
            "note: no automon is running; nothing starts until `automon apply {0}` or `automon start {0}`",
            args.file.display()
        );
    }
    Ok(0)
}
