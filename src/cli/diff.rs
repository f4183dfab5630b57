//! `automon diff FILE`: observe and plan, print the actions and every worker's phase, act on
//! nothing. Exit 0 when the next pass would do nothing, 1 when it would act.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::observe::{self, Roots};
use crate::plan;

/// Arguments of `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Command-line overrides of manifest fields (preview what `apply` with them would do).
    #[command(flatten)]
    pub overrides: super::apply::OverrideArgs,
}

/// Runs `diff`.
pub fn run(args: &DiffArgs) -> Result<u8, CliError> {
    let (manifest, overridden) =
        super::load_manifest_with(&args.file, &args.overrides.overrides())?;
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    let desired = super::resolve(&manifest)?;
    super::print_overrides(&overridden);
    print_plan(&desired, &state_dir)
}

/// Observes, plans and prints; returns 0 (no actions) or 1 (actions).
pub(crate) fn print_plan(
    desired: &crate::manifest::Desired,
    state_dir: &Path,
) -> Result<u8, CliError> {
    let memory =
        crate::state::load_memory(state_dir).map_err(|e| CliError::runtime(e.to_string()))?;
    let now = crate::clock::Now::read();
    let observed = observe::Observer::new(desired, Roots::default()).observe(
        desired,
        &memory,
        state_dir,
        observe::Children::default(),
        true,
        now.boot,
    );
    let plan = plan::plan(desired, &observed, &memory, now);
    println!("{:<6} {:<12} REASON", "WORKER", "PHASE");
    for (id, s) in &plan.workers {
        println!(
            "{:<6} {:<12} {}",
            id.to_string(),
            format!("{:?}", s.phase),
            s.reason
        );
    }
    for e in &plan.events {
        println!("note: {e}");
    }
    if plan.actions.is_empty() {
        println!("no actions: the workers match the manifest");
        return Ok(0);
    }
    println!("actions the next pass would take:");
    for a in &plan.actions {
        let verb = a.verb();
        println!("  {verb:<5} worker {}: {}", a.worker(), a.reason());
    }
    Ok(1)
}
