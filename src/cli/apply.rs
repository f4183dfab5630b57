//! `automon apply FILE [--watch] [--dry-run] [--check-interval D] [--threshold D] [--llm-enabled]
//! [--metrics-addr ADDR] [--metrics-textfile PATH]`.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::daemon::{self, RunEnd, RunOptions};
use crate::manifest::{HumanDuration, Overrides};

/// The seed's command-line overrides of manifest fields, shared by `apply` and `diff`. They are
/// applied before validation, so they obey the manifest's rules.
#[derive(Debug, Clone, Args)]
pub struct OverrideArgs {
    /// Override spec.interval, the time between passes (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = HumanDuration::parse)]
    pub check_interval: Option<HumanDuration>,
    /// Override spec.health.stuck_after, the time without progress after which a worker is
    /// stuck (e.g. 10m); discovery_grace is raised to match if it is shorter.
    #[arg(long, value_name = "DURATION", value_parser = HumanDuration::parse)]
    pub threshold: Option<HumanDuration>,
    /// Override spec.llm.enabled to true.
    #[arg(long)]
    pub llm_enabled: bool,
}

impl OverrideArgs {
    /// The overrides as the manifest module takes them.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            interval: self.check_interval,
            stuck_after: self.threshold,
            llm_enabled: self.llm_enabled,
        }
    }
}

/// Where the control loop publishes metrics, shared by `apply` and `start`.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics while watching (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Write Prometheus metrics to PATH after every pass, replacing it atomically (for
    /// node_exporter's textfile collector; name it *.prom).
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

impl MetricsArgs {
    /// The flags again, for a child automon (`automon start`); paths made absolute.
    pub fn to_argv(&self) -> Vec<std::ffi::OsString> {
        let mut argv = Vec::new();
        if let Some(addr) = self.metrics_addr {
            argv.push("--metrics-addr".into());
            argv.push(addr.to_string().into());
        }
        if let Some(path) = &self.metrics_textfile {
            argv.push("--metrics-textfile".into());
            argv.push(
                std::path::absolute(path)
                    .unwrap_or_else(|_| path.clone())
                    .into(),
            );
        }
        argv
    }
}

impl OverrideArgs {
    /// The flags again, for a child automon (`automon start`).
    pub fn to_argv(&self) -> Vec<std::ffi::OsString> {
        let mut argv = Vec::new();
        if let Some(d) = self.check_interval {
            argv.push("--check-interval".into());
            argv.push(d.to_string().into());
        }
        if let Some(d) = self.threshold {
            argv.push("--threshold".into());
            argv.push(d.to_string().into());
        }
        if self.llm_enabled {
            argv.push("--llm-enabled".into());
        }
        argv
    }
}

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// Keep reconciling until every shard is complete (the control loop).
    #[arg(long)]
    pub watch: bool,
    /// Plan and print what would be done; act on nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Start from empty memory: the current state file is moved aside (kept as
    /// state.json.reset-TIMESTAMP), never deleted. Running workers are still adopted.
    #[arg(long)]
    pub reset_state: bool,
    /// Command-line overrides of manifest fields.
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Metrics.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Runs `apply`; `log_format` is the global `--log-format`.
pub fn run(args: &ApplyArgs, log_format: super::logging::LogFormat) -> Result<u8, CliError> {
    if args.metrics.metrics_addr.is_some() && !args.watch {
        return Err(CliError::input(
            "--metrics-addr needs --watch: a single pass ends before anything could scrape it (use --metrics-textfile)",
        ));
    }
    let (manifest, overridden) =
        super::load_manifest_with(&args.file, &args.overrides.overrides())?;
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    if args.dry_run {
        let desired = super::resolve(&manifest)?;
        super::print_overrides(&overridden);
        let code = super::diff::print_plan(&desired, &state_dir)?;
        println!("dry run: nothing was changed");
        return Ok(if code > 1 { code } else { 0 });
    }
    // The lock first: a second automon on this WorkerSet must not even run setup.
    let lock = crate::state::InstanceLock::acquire(&state_dir)
        .map_err(|e| CliError::runtime(e.to_string()))?;
    // And the fleet's files: a copy of the manifest with another state directory must not
    // run a second worker per shard on them.
    let _fleet = fleet_lock(&manifest, &state_dir)?;
    crate::act::setup::run_setup(&manifest, |m| eprintln!("automon: {m}"))
        .map_err(|e| CliError::runtime(format!("{}: {e}", manifest.file.display())))?;
    let desired = super::resolve(&manifest)?;
    let mode = if args.watch { "watching" } else { "one pass" };
    let overrides = if overridden.is_empty() {
        String::new()
    } else {
        format!("; overrides: {}", overridden.join(", "))
    };
    let first_line = format!(
        "applying {} ({}; {} workers, {}; state in {}{overrides})",
        manifest.file.display(),
        desired.name,
        desired.counts.target,
        mode,
        state_dir.display()
    );
    if log_format == super::logging::LogFormat::Json {
        tracing::info!(target: "automon::events", "{first_line}");
    } else {
        eprintln!("automon: {first_line}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the runtime: {e}")))?;
    let opts = RunOptions {
        state_dir,
        watch: args.watch,
        reset_state: args.reset_state,
        report: crate::metrics::ReportOptions {
            metrics_addr: args.metrics.metrics_addr,
            metrics_textfile: args.metrics.metrics_textfile.clone(),
            json_logs: log_format == super::logging::LogFormat::Json,
        },
    };
    let end = runtime
        .block_on(daemon::run(&desired, &opts, lock, shutdown_signal()))
        .map_err(|e| CliError::runtime(e.to_string()))?;
    Ok(match end {
        RunEnd::Complete | RunEnd::PassDone => 0,
        RunEnd::Interrupted => 130,
        // Every unfinished worker is paused or failed: an operator must act.
        RunEnd::Blocked(_) => 3,
    })
}

/// Takes the lock on the files `manifest`'s workers write (see [`crate::state::FleetLock`]).
fn fleet_lock(
    manifest: &crate::manifest::Manifest,
    state_dir: &std::path::Path,
) -> Result<Option<crate::state::FleetLock>, CliError> {
    let spec = &manifest.workerset.spec;
    let files = crate::state::FleetFiles {
        workdir: crate::manifest::normalize(&manifest.dir.join(&spec.template.workdir)),
        progress: spec.progress.file.clone(),
        log: spec.logs.file.clone(),
    };
    let lock = crate::state::FleetLock::acquire(&files, state_dir)
        .map_err(|e| CliError::runtime(e.to_string()))?;
    if lock.is_none() {
        eprintln!(
            "automon: warning: cannot create a lock file in {}; another automon on the same files would not be noticed",
            files.workdir.display()
        );
    }
    Ok(lock)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
