//! `automon pause FILE N` / `resume FILE N` / `reset-params FILE N`: operator requests kept in
//! memory and honoured by the planner. With a running loop the request goes over its control
//! socket (the loop is the only writer of the state) and the answer comes after the pass that
//! applied it; without one it is applied here, under the lock (any number of these commands at
//! once take turns on it).

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::WorkerId;
use crate::state::requests::RequestKind;

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
    let text = request(args, kind, crate::control::command_in_words())?;
    super::emit(&text)
}

/// Makes the request (`command`: the operator's command in words, for the events) and returns
/// what to tell the operator, one line each — `pause`, `resume`, `reset-params` and `top`'s keys.
pub(crate) fn request(
    args: &OperatorArgs,
    kind: RequestKind,
    command: String,
) -> Result<String, CliError> {
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
        check_worker(manifest, worker)?;
    }
    let body = crate::control::OperatorBody {
        kind,
        worker,
        command: command.clone(),
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| CliError::runtime(format!("cannot serialize the request: {e}")))?;
    // The running loop applies it (over its control socket; nothing is signalled), or, when
    // none runs, this command does under the lock.
    let lock =
        match crate::control::client::reach_or_lock(&state_dir, "POST", "/v1/operator", &body)
            .map_err(CliError::runtime)?
        {
            crate::control::client::Reached::Loop(answer) => {
                let outcome: crate::control::Outcome = serde_json::from_slice(&answer.body)
                    .map_err(|_| {
                        CliError::runtime(format!(
                            "the control loop answered {}: {}",
                            answer.status,
                            String::from_utf8_lossy(&answer.body).trim()
                        ))
                    })?;
                let mut text = format!("{}\n", outcome.message);
                for line in outcome.lines.iter().filter(|l| **l != outcome.message) {
                    text.push_str(&format!("  {line}\n"));
                }
                return match outcome.verdict {
                    crate::control::Verdict::Invalid => Err(CliError::input(outcome.message)),
                    crate::control::Verdict::Refused => Err(CliError::runtime(outcome.message)),
                    crate::control::Verdict::Done | crate::control::Verdict::Queued => Ok(text),
                };
            }
            crate::control::client::Reached::Locked(lock) => lock,
        };
    if manifest.is_none() {
        // The loop ended meanwhile: the request is applied here, so the id is checked here.
        check_worker(&super::load_manifest(&args.file)?, worker)?;
    }
    if kind != RequestKind::Pause && !state_dir.join("state.json").exists() {
        return Err(CliError::runtime(format!(
            "no state yet in {}: nothing to resume (run `automon apply` first)",
            state_dir.display()
        )));
    }
    let _lock = lock;
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
    crate::state::EventLog::open(&state_dir, false).record(
        jiff::Timestamp::now(),
        &format!("operator `{command}` (no loop running): {message}"),
    );
    let mut text = format!("{message}\n");
    if kind == RequestKind::Pause
        && memory
            .workers
            .get(&worker)
            .is_some_and(|w| w.process.is_some())
    {
        text.push_str(
            "note: no automon is running; the worker's process is stopped by the next `automon apply`\n",
        );
    }
    if kind == RequestKind::Resume && was_held && !held(&memory) {
        text.push_str(&format!(
            "note: no automon is running; nothing starts until `automon apply {0}` or `automon start {0}`\n",
            args.file.display()
        ));
    }
    Ok(text)
}

/// Refuses a worker id the manifest does not have (exit 2).
fn check_worker(manifest: &crate::manifest::Manifest, worker: WorkerId) -> Result<(), CliError> {
    let desired = super::resolve(manifest)?;
    let ids = desired.worker_ids();
    if ids.contains(&worker) {
        return Ok(());
    }
    let range = match (ids.first(), ids.last()) {
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "none".into(),
    };
    Err(CliError::input(format!(
        "worker {worker} is not in WorkerSet {} (worker ids {range})",
        desired.name
    )))
}
