//! `automon export kubernetes|slurm FILE`: prints the WorkerSet as a Kubernetes Indexed Job
//! (YAML or JSON) or a Slurm job-array script (see [`crate::export`]). Writes nothing else;
//! exit 0, or 2 on bad input (invalid manifest, a range end that cannot be read).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::CliError;
use crate::export::{Source, kubernetes, slurm};
use crate::manifest::Desired;

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The engine.
    #[command(subcommand)]
    pub engine: ExportEngine,
}

/// Engines `export` writes for.
#[derive(Debug, Subcommand)]
pub enum ExportEngine {
    /// A batch/v1 Indexed Job (Kubernetes ≥ 1.33) with the stuck rule as a liveness probe.
    Kubernetes {
        /// The WorkerSet manifest.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = K8sFormat::Yaml)]
        output: K8sFormat,
        /// The container image: the workers' program plus the automon binary.
        #[arg(long, default_value = "automon-worker:latest")]
        image: String,
        /// The end of the key range, fixed in the output (default: spec.work.range.end, else
        /// spec.work.range.end_command run now).
        #[arg(long)]
        range_end: Option<u64>,
    },
    /// An sbatch job-array script, one element per shard (retries by Slurm, judgment by nobody).
    Slurm {
        /// The WorkerSet manifest.
        file: PathBuf,
        /// The automon binary as the compute nodes see it (default: this one).
        #[arg(long)]
        automon: Option<PathBuf>,
        /// The end of the key range, fixed in the script (default: spec.work.range.end, else
        /// spec.work.range.end_command run now).
        #[arg(long)]
        range_end: Option<u64>,
    },
}

/// Formats of the Kubernetes export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum K8sFormat {
    /// YAML, with a comment header.
    Yaml,
    /// JSON (the header goes to stderr).
    Json,
}

/// Loads the manifest and fixes its range end.
fn load(
    file: &std::path::Path,
    range_end: Option<u64>,
) -> Result<(crate::manifest::Manifest, Desired, Option<u64>), CliError> {
    let manifest = super::load_manifest(file)?;
    let desired = match range_end {
        Some(end) => Desired::resolve(&manifest, Some(end))
            .map_err(|e| CliError::input(format!("{}: {e}", file.display())))?,
        None => super::resolve(&manifest)?,
    };
    let end = desired
        .shards
        .as_ref()
        .and_then(|s| s.last())
        .map(|s| s.end);
    Ok((manifest, desired, end))
}

/// Runs `export`.
pub fn run(args: &ExportArgs) -> Result<u8, CliError> {
    match &args.engine {
        ExportEngine::Kubernetes {
            file,
            output,
            image,
            range_end,
        } => {
            let (manifest, desired, end) = load(file, *range_end)?;
            let src = Source {
                manifest: &manifest,
                desired: &desired,
                range_end: end,
            };
            let job = kubernetes::job(&src, image).map_err(CliError::input)?;
            let header = kubernetes::header(&src, image);
            match output {
                K8sFormat::Yaml => {
                    let value = serde_json::to_value(&job)
                        .map_err(|e| CliError::runtime(format!("cannot serialize the Job: {e}")))?;
                    let yaml = serde_saphyr::to_string(&value)
                        .map_err(|e| CliError::runtime(format!("cannot write YAML: {e}")))?;
                    super::emit(&format!("{header}{yaml}"))
                }
                K8sFormat::Json => {
                    crate::errln!("{}", header.trim_end());
                    let json = serde_json::to_string_pretty(&job)
                        .map_err(|e| CliError::runtime(format!("cannot serialize the Job: {e}")))?;
                    super::emit(&format!("{json}\n"))
                }
            }
        }
        ExportEngine::Slurm {
            file,
            automon,
            range_end,
        } => {
            let (manifest, desired, end) = load(file, *range_end)?;
            let src = Source {
                manifest: &manifest,
                desired: &desired,
                range_end: end,
            };
            let automon = match automon {
                Some(p) => p.clone(),
                None => std::env::current_exe().map_err(|e| {
                    CliError::runtime(format!(
                        "cannot find this automon binary ({e}); give --automon PATH"
                    ))
                })?,
            };
            let script = slurm::script(&src, &automon).map_err(CliError::input)?;
            super::emit(&script)
        }
    }
}
