//! `automon run-worker FILE [--worker N] [--range-end E]`: the entrypoint of an exported
//! Kubernetes Job pod or Slurm array element. It renders worker N's argv as the local runtime
//! does — `{id}` and the shard's range from N, `{checkpoint}` from its progress file, template
//! parameters at their defaults — appends stdout and stderr to the worker's log, and `exec`s
//! the worker in its place (signals from the kubelet or Slurm reach the worker itself).
//!
//! N defaults to `$JOB_COMPLETION_INDEX` (Kubernetes) or `$SLURM_ARRAY_TASK_ID` (Slurm). A
//! shard whose checkpoint already reached its end exits 0 at once. A progress file that exists
//! but cannot be read is an error (exit 1): never a restart from the shard's start while a
//! checkpoint may exist.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::WorkerId;
use crate::manifest::{Desired, render_argv};
use crate::observe::progress::{self, Pointers, ProgressObservation};

/// Arguments of `run-worker`.
#[derive(Debug, Args)]
pub struct RunWorkerArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// The worker id (default: $JOB_COMPLETION_INDEX, else $SLURM_ARRAY_TASK_ID).
    #[arg(long)]
    pub worker: Option<WorkerId>,
    /// The end of the key range, as fixed at export time (default: spec.work.range.end, else
    /// spec.work.range.end_command run now).
    #[arg(long)]
    pub range_end: Option<u64>,
}

/// The worker id from `--worker` or the engine's index variable.
fn worker_id(args: &RunWorkerArgs) -> Result<WorkerId, CliError> {
    if let Some(w) = args.worker {
        return Ok(w);
    }
    for var in ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"] {
        if let Ok(v) = std::env::var(var) {
            return v.trim().parse().map_err(|_| {
                CliError::input(format!("${var} is {v:?}, not a worker id (0, 1, …)"))
            });
        }
    }
    Err(CliError::input(
        "no worker id: give --worker N, or run as a Kubernetes Indexed Job ($JOB_COMPLETION_INDEX) or a Slurm array element ($SLURM_ARRAY_TASK_ID)",
    ))
}

/// What `run-worker` would execute for one worker: `None` when its shard is already done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLaunch {
    /// The rendered argv.
    pub argv: Vec<String>,
    /// The checkpoint it resumes from, if its progress file has one.
    pub checkpoint: Option<u64>,
}

/// Renders worker `id`'s argv from `desired` and its progress file.
///
/// # Errors
/// A sentence when the worker does not exist or its progress file is unreadable.
pub fn launch(desired: &Desired, id: WorkerId) -> Result<Option<WorkerLaunch>, String> {
    if !desired.worker_ids().contains(&id) {
        return Err(format!(
            "no worker {id} (this WorkerSet has workers 0–{})",
            desired.worker_ids().last().map_or(0, |w| w.0)
        ));
    }
    let path = desired.progress_path(id);
    let pointers = Pointers {
        checkpoint: desired.checkpoint_pointer.clone(),
        items: None,
        completion: desired.completion_pointer.clone(),
    };
    let shard = desired.shard(id);
    let checkpoint = match progress::read(&path, &pointers) {
        ProgressObservation::Missing | ProgressObservation::NothingDone => None,
        ProgressObservation::Read {
            checkpoint,
            completed,
            ..
        } => {
            let done = completed == Some(true) || shard.is_some_and(|s| checkpoint >= s.last_key());
            if done {
                return Ok(None);
            }
            Some(checkpoint)
        }
        ProgressObservation::Unreadable { why } => {
            return Err(format!(
                "progress file {} is unreadable ({why}); not starting worker {id} from its shard's start",
                path.display()
            ));
        }
    };
    let argv = render_argv(
        &desired.command,
        id,
        shard,
        checkpoint,
        &desired.parameter_values(&BTreeMap::new()),
    );
    Ok(Some(WorkerLaunch { argv, checkpoint }))
}

/// Runs `run-worker`: returns only on failure (or 0 for a finished shard).
pub fn run(args: &RunWorkerArgs) -> Result<u8, CliError> {
    use std::os::unix::process::CommandExt;
    let id = worker_id(args)?;
    let manifest = super::load_manifest(&args.file)?;
    let desired = match args.range_end {
        Some(end) => Desired::resolve(&manifest, Some(end))
            .map_err(|e| CliError::input(format!("{}: {e}", args.file.display())))?,
        None => super::resolve(&manifest)?,
    };
    let launch = launch(&desired, id)
        .map_err(|e| CliError::runtime(format!("{}: {e}", args.file.display())))?;
    let Some(launch) = launch else {
        crate::outln!(
            "worker {id}: its shard is complete ({}); nothing to run",
            desired.progress_path(id).display()
        );
        return Ok(0);
    };
    let log_path = desired.log_path(id);
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", parent.display())))?;
    }
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| CliError::runtime(format!("cannot open log {}: {e}", log_path.display())))
    };
    let (log, log_err) = (open()?, open()?);
    let Some((program, rest)) = launch.argv.split_first() else {
        return Err(CliError::input(format!(
            "{}: spec.template.command is empty",
            args.file.display()
        )));
    };
    crate::errln!(
        "worker {id}: {} (log {})",
        match launch.checkpoint {
            Some(c) => format!("resuming from checkpoint {}", crate::text::count(c)),
            None => "starting at its shard's start (no progress file yet)".to_string(),
        },
        log_path.display()
    );
    let err = std::process::Command::new(program)
        .args(rest)
        .current_dir(&desired.workdir)
        .env_clear()
        .envs(crate::secrets::env::child_env(
            std::env::vars_os(),
            &desired.env,
            desired.inherit_env,
            &desired.llm.api_key_env,
        ))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .exec();
    Err(CliError::runtime(format!(
        "worker {id}: cannot execute {program:?} in {}: {err}",
        desired.workdir.display()
    )))
}
