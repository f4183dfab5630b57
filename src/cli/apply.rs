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
    /// Write STATE_DIR/automon.pid once the lock is held (set by `automon start`: only the
    /// lock holder writes the pid file, so two racing starts cannot leave it naming the loser).
    #[arg(long, hide = true)]
    pub write_pid_file: bool,
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
        let (desired, setup) = super::resolve_for_showing(&manifest)?;
        super::print_overrides(&overridden);
        let code = super::diff::print_plan(&desired, &state_dir, setup, args.reset_state)?;
        crate::outln!("dry run: nothing was changed");
        return Ok(if code > 1 { code } else { 0 });
    }
    if let Some(addr) = args.metrics.metrics_addr
        && !crate::control::server::is_loopback(&addr)
    {
        crate::errln!(
            "automon: warning: --metrics-addr {addr} is not a loopback address: anyone who can reach it reads the WorkerSet's figures (worker ids, checkpoints, rates); use 127.0.0.1 behind a proxy, or a firewall"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the runtime: {e}")))?;
    // SIGINT/SIGTERM are caught before anything is locked, set up or started: from here on a
    // signal ends the run after the current step (setup stopped, or the pass saved), never in
    // the middle of one.
    let mut shutdown = {
        let _in_runtime = runtime.enter();
        Shutdown::install()
            .map_err(|e| CliError::runtime(format!("cannot install signal handlers: {e}")))?
    };
    // Bad input writes nothing: the workdir is checked before the lock creates the state dir.
    super::checked_workdir(&manifest)?;
    // What the lock is about to create, to take back if the run is refused below.
    let fresh = Fresh::of(&state_dir);
    // A running loop takes the manifest (live apply); without one, the lock first: a second
    // automon on this WorkerSet must not even run setup.
    let lock = if args.watch || args.reset_state {
        if args.reset_state
            && let Some(i) = crate::state::running_instance(&state_dir)
        {
            return Err(CliError::runtime(format!(
                "--reset-state: a control loop runs for this WorkerSet ({}); stop it first (`automon stop {}`)",
                super::status::describe(&i),
                args.file.display()
            )));
        }
        super::lock_state(&state_dir)?
    } else {
        match hand_over(args, &manifest, &state_dir)? {
            Handed::Answered(code) => return Ok(code),
            Handed::NoLoop(lock) => lock,
        }
    };
    // And the fleet's files: a copy of the manifest with another state directory must not
    // run a second worker per shard on them.
    let _fleet = match fleet_lock(&manifest, &state_dir) {
        Ok(fleet) => fleet,
        Err(e) => {
            // Refused before doing anything: leave no lock file (naming this process, soon
            // gone) and no state directory behind.
            fresh.take_back(&state_dir, lock);
            return Err(e);
        }
    };
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    if args.write_pid_file {
        let ticks = crate::observe::proc::read_stat(std::path::Path::new("/proc"), me)
            .map_or(0, |s| s.start_ticks);
        if let Err(e) = crate::state::write_pid_file(&state_dir, me, ticks) {
            crate::errln!(
                "automon: cannot write {}: {e}",
                crate::state::pid_file(&state_dir).display()
            );
        }
    }
    let end = runtime.block_on(async {
        // The control socket first (under the lock): requests that arrive during setup are
        // queued and applied by the first pass after it.
        let (metrics_tx, metrics_rx) = tokio::sync::watch::channel(String::new());
        let inbox =
            crate::control::server::start(&state_dir, args.metrics.metrics_addr, metrics_rx)
                .map_err(|e| CliError::runtime(e.to_string()))?;
        let setup = crate::act::setup::run_setup(
            &manifest,
            &state_dir,
            |m| crate::errln!("automon: {m}"),
            shutdown.recv(),
        )
        .await
        .map_err(|e| CliError::runtime(format!("{}: {e}", manifest.file.display())))?;
        if setup == crate::act::setup::SetupEnd::Interrupted {
            crate::errln!(
                "automon: interrupted during setup; it was stopped and nothing was started"
            );
            return Ok(None);
        }
        let desired = super::resolve(&manifest)?;
        let mode = if args.watch { "watching" } else { "one pass" };
        let overrides = if overridden.is_empty() {
            String::new()
        } else {
            format!("; overrides: {}", overridden.join(", "))
        };
        let first_line = format!(
            "applying {} ({}; {}, {}; state in {}{overrides})",
            manifest.file.display(),
            desired.name,
            crate::text::counted(desired.counts.target, "worker", "workers"),
            mode,
            state_dir.display()
        );
        if log_format == super::logging::LogFormat::Json {
            tracing::info!(target: "automon::events", "{first_line}");
        } else {
            crate::errln!("automon: {first_line}");
        }
        let opts = RunOptions {
            state_dir: state_dir.clone(),
            watch: args.watch,
            reset_state: args.reset_state,
            report: crate::metrics::ReportOptions {
                metrics_addr: args.metrics.metrics_addr,
                metrics_textfile: args.metrics.metrics_textfile.clone(),
                json_logs: log_format == super::logging::LogFormat::Json,
            },
            overrides: args.overrides.overrides(),
        };
        daemon::run(
            &desired,
            &opts,
            lock,
            inbox,
            Some(metrics_tx),
            shutdown.recv(),
        )
        .await
        .map(Some)
        .map_err(|e| CliError::runtime(e.to_string()))
    });
    if args.write_pid_file {
        crate::state::remove_pid_file(&state_dir, me);
    }
    // Background engine work (a code fix being matched) may not hold the exit for long: it
    // writes atomically, and an unrecorded outcome is settled by the next automon's planner.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let Some(end) = end? else {
        return Ok(130);
    };
    Ok(match end {
        RunEnd::Complete | RunEnd::PassDone => 0,
        RunEnd::Interrupted => 130,
        // Every unfinished worker is paused or failed: an operator must act.
        RunEnd::Blocked(_) => 3,
    })
}

/// Whether the state directory and its lock file existed before this run took the lock.
struct Fresh {
    dir: bool,
    lock: bool,
}

impl Fresh {
    fn of(state_dir: &std::path::Path) -> Self {
        Self {
            dir: !state_dir.exists(),
            lock: !state_dir.join("lock").exists(),
        }
    }

    /// Removes what taking `lock` created: the lock file (unlinked while still held, so no
    /// other automon can hold the file removed) and the directory, if it is empty.
    fn take_back(&self, state_dir: &std::path::Path, lock: crate::state::InstanceLock) {
        if self.lock {
            let _ = std::fs::remove_file(lock.path());
        }
        drop(lock);
        if self.dir {
            let _ = std::fs::remove_dir(state_dir);
        }
    }
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
        crate::errln!(
            "automon: warning: cannot create a lock file in {}; another automon on the same files would not be noticed",
            files.workdir.display()
        );
    }
    Ok(lock)
}

/// What became of a manifest offered to a running loop.
enum Handed {
    /// The loop answered; the exit code.
    Answered(u8),
    /// No loop runs; the lock is ours.
    NoLoop(crate::state::InstanceLock),
}

/// Offers the validated manifest to the running loop and prints its answer: taken (exit 0,
/// with the events of the pass that took it), queued during setup (0), refused (1), invalid
/// (2). Without a loop, returns the state directory's lock.
fn hand_over(
    args: &ApplyArgs,
    manifest: &crate::manifest::Manifest,
    state_dir: &std::path::Path,
) -> Result<Handed, CliError> {
    use crate::control::{ApplyBody, Outcome, Verdict, client};
    let file = std::path::absolute(&manifest.file).unwrap_or_else(|_| manifest.file.clone());
    // The text that was validated (read again: load_manifest keeps the parsed form only).
    let text = std::fs::read_to_string(&file)
        .map_err(|e| CliError::input(format!("{}: cannot read manifest: {e}", file.display())))?;
    let overrides = args.overrides.overrides();
    crate::manifest::load_text(&file, &text, &overrides)
        .map_err(|e| CliError::input(e.to_string()))?;
    let body = ApplyBody {
        file,
        text,
        overrides: (&overrides).into(),
        command: crate::control::command_in_words(),
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| CliError::runtime(format!("cannot serialize the request: {e}")))?;
    let answer = match client::reach_or_lock(state_dir, "POST", "/v1/apply", &body)
        .map_err(CliError::runtime)?
    {
        client::Reached::Locked(lock) => return Ok(Handed::NoLoop(lock)),
        client::Reached::Loop(answer) => answer,
    };
    let outcome: Outcome = serde_json::from_slice(&answer.body).map_err(|_| {
        CliError::runtime(format!(
            "the control loop answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        ))
    })?;
    let mut text = format!("the running control loop: {}\n", outcome.message);
    for line in &outcome.lines {
        text.push_str(&format!("  {line}\n"));
    }
    match outcome.verdict {
        Verdict::Done | Verdict::Queued => super::emit(&text).map(|_| Handed::Answered(0)),
        Verdict::Refused => Err(CliError::runtime(text.trim_end().to_string())),
        Verdict::Invalid => Err(CliError::input(text.trim_end().to_string())),
    }
}

/// SIGINT and SIGTERM, caught from [`Shutdown::install`] on (the default action would kill
/// automon wherever it stood: mid-save, mid-start).
pub(crate) struct Shutdown {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers; call inside the runtime's context.
    ///
    /// # Errors
    /// The I/O error of the registration.
    pub(crate) fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM (at once for one caught earlier and not yet
    /// received).
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
