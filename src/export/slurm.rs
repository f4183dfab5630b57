//! The WorkerSet as an `sbatch` job-array script: one array element per shard
//! (`--array=0-(shards-1)%target`), each running `automon run-worker`, which computes its
//! shard from `$SLURM_ARRAY_TASK_ID` and resumes from its progress file.
//!
//! `--dependency=singleton` (per job name, `automon/NAME`) makes a second submission wait until
//! the first has ended, so two elements never run one shard at once.
//!
//! Retries by Slurm, judgment by nobody: a crashed element is not restarted and a hung one runs
//! until its time limit. `spec.runtime: slurm` keeps automon's judgment (stuck rule, backoff,
//! fixes) and only hands it the running of processes.

use std::path::Path;

use super::{Engine, Source};

/// An `#SBATCH` option value: sbatch reads these lines itself (no shell), splitting at
/// whitespace and honouring double quotes.
fn option(s: &str) -> String {
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        format!("\"{}\"", s.replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

fn quote(s: &str) -> String {
    shlex::try_quote(s).map_or_else(|_| format!("'{s}'"), |q| q.into_owned())
}

/// The script. `automon` is the path of the automon binary on the compute nodes.
///
/// # Errors
/// A sentence when the manifest lies outside the working directory.
pub fn script(src: &Source<'_>, automon: &Path) -> Result<String, String> {
    let d = src.desired;
    let manifest = src.manifest_in_workdir()?;
    let workers = src.workers();
    let at_once = d.counts.target.min(workers).max(1);
    // Slurm opens this before the element runs: the working directory exists; the log
    // directory may not yet.
    let out_dir = &d.workdir;
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!(
        "# Slurm job array exported by automon from {} (WorkerSet {}).\n",
        src.manifest.file.display(),
        d.name
    ));
    s.push_str(
        "# Retries by Slurm, judgment by nobody: each element runs its shard once, from its checkpoint.\n\
         # Submit again to resume unfinished shards (finished ones exit at once); a second\n\
         # submission waits until the first has ended (singleton): never two runs of one shard.\n\
         # For automon's judgment on Slurm (stuck rule, backoff, fixes), use spec.runtime: slurm.\n\
         # Requires: automon at the path below and the working directory on every node (shared FS).\n\
         # Not carried over:\n",
    );
    for line in super::not_carried_over(src.manifest, Engine::Slurm) {
        s.push_str(&format!("# - {line}\n"));
    }
    let name = format!("automon/{}", d.name);
    s.push_str(&format!("#SBATCH --job-name={}\n", option(&name)));
    s.push_str(&format!("#SBATCH --array=0-{}%{at_once}\n", workers - 1));
    s.push_str("#SBATCH --ntasks=1\n");
    // `spec.runtime: slurm`'s resources, as automon's own submissions ask for them.
    for arg in crate::runtime::slurm::submit::resource_args(&d.runtime) {
        s.push_str(&format!("#SBATCH {}\n", option(&arg)));
    }
    // A second submission waits until every element of the first has ended: never two
    // processes for one shard.
    s.push_str("#SBATCH --dependency=singleton\n");
    s.push_str(&format!(
        "#SBATCH --chdir={}\n",
        option(&d.workdir.to_string_lossy())
    ));
    s.push_str(&format!(
        "#SBATCH --output={}\n",
        option(&out_dir.join("slurm-%A_%a.out").to_string_lossy())
    ));
    s.push_str("#SBATCH --open-mode=append\n\n");
    let mut argv = vec![
        quote(&automon.to_string_lossy()),
        "run-worker".to_string(),
        quote(&manifest.to_string_lossy()),
        "--worker".to_string(),
        "\"$SLURM_ARRAY_TASK_ID\"".to_string(),
    ];
    if let Some(end) = src.range_end {
        argv.extend(["--range-end".to_string(), end.to_string()]);
    }
    s.push_str(&format!("exec {}\n", argv.join(" ")));
    Ok(s)
}
