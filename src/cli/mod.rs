//! Command-line interface: clap definitions and one function per subcommand. Exit codes are
//! decided here: 0 success, 1 runtime failure (or `diff` found differences), 2 bad input.

mod apply;
mod completions;
mod diagnose;
mod diff;
mod export;
mod get;
mod history;
mod logging;
mod operator;
mod probe;
mod run_worker;
mod start;
mod status;
mod stop;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use start::LOG_FILE;

use clap::{Parser, Subcommand};

use crate::manifest::{self, Desired, Manifest};

/// automon: keeps long-running batch workers converged on a manifest.
#[derive(Debug, Parser)]
#[command(name = "automon", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: text, or json (one JSON object per line, events included).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    pub log_format: logging::LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile the workers with the manifest: one pass, or the control loop with --watch.
    Apply(apply::ApplyArgs),
    /// Show what the next pass would do, acting on nothing (exit 0: nothing, 1: something).
    Diff(diff::DiffArgs),
    /// Ask the LLM why a worker is stuck and print its validated answer; applies nothing.
    ///
    /// Uses the manifest's `llm` section with any OpenAI-compatible endpoint, and works even when
    /// llm.enabled is false: this is an explicit request. Base URL: llm.base_url, else
    /// $OPENAI_BASE_URL, else $OPENAI_API_BASE, else OpenAI's. Key: the variable named by
    /// llm.api_key_env (default OPENAI_API_KEY), else that key in a .env file beside the
    /// manifest; none for local servers. Secrets are redacted before anything is sent. Exit 0
    /// with an answer, 1 when the LLM call fails, 2 on bad input.
    Diagnose(diagnose::DiagnoseArgs),
    /// Where every worker stands: phase, checkpoint, rate, ETA, fixes, what happens next.
    Get(get::GetArgs),
    /// The fix history: fixes, verifications, code fixes, escalations.
    History(history::HistoryArgs),
    /// Stop a worker and keep it stopped until `automon resume`.
    Pause(operator::OperatorArgs),
    /// Let a paused (or escalated) worker run again.
    Resume(operator::OperatorArgs),
    /// Drop the parameter values config fixes set for a worker (the manifest's apply again).
    ResetParams(operator::OperatorArgs),
    /// Check manifests and report every problem (exit 0 valid, 2 invalid).
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema (draft 2020-12) of the WorkerSet manifest.
    Schema,
    /// Run the control loop in the background (`apply FILE --watch`, detached; output appended
    /// to STATE_DIR/automon.log). Exit 0 started, 1 already running or failed to start, 2 bad
    /// input.
    Start(start::StartArgs),
    /// Stop a background control loop gracefully; the workers keep running. Exit 0 stopped,
    /// 1 not running or did not stop.
    Stop(stop::StopArgs),
    /// Whether the control loop runs, since when, and its last pass. Exit 0 running, 3 not
    /// running (including never run), 2 bad input.
    Status(status::StatusArgs),
    /// A live full-screen dashboard: workers (trouble first), overall progress and throughput,
    /// disk, alerts, recent events; ↑/↓ select, p pause, r resume, Enter details, q quit. Needs
    /// a terminal (exit 2 otherwise: use `get` or `get --watch`).
    Top(top::TopArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the WorkerSet as another engine's object: a Kubernetes Indexed Job, or a Slurm
    /// job array script. What cannot be carried over is listed at the top of the output.
    Export(export::ExportArgs),
    /// The stuck rule for one worker, for a liveness probe: exit 0 progressing, 1 stuck (the
    /// reason on stderr), 2 bad input.
    Probe(probe::ProbeArgs),
    /// Run one worker in the foreground from its checkpoint (the entrypoint of an exported Job
    /// or array element); exit 0 at once when its shard is complete.
    RunWorker(run_worker::RunWorkerArgs),
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code: 1 runtime, 2 bad input.
    pub code: u8,
    /// The message, printed to stderr.
    pub message: String,
}

impl CliError {
    /// Bad input (exit 2).
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    /// Runtime failure (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    // Before anything of automon's own is open: the caller's descriptors are not ours to keep
    // (nor to pass on to every worker).
    crate::fds::close_inherited();
    let cli = Cli::parse();
    logging::init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Apply(args) => apply::run(&args, cli.log_format),
        Command::Diff(args) => diff::run(&args),
        Command::Get(args) => get::run(&args),
        Command::History(args) => history::run(&args),
        Command::Pause(args) => operator::run(&args, crate::state::requests::RequestKind::Pause),
        Command::Resume(args) => operator::run(&args, crate::state::requests::RequestKind::Resume),
        Command::ResetParams(args) => {
            operator::run(&args, crate::state::requests::RequestKind::ResetParams)
        }
        Command::Diagnose(args) => diagnose::run(&args),
        Command::Validate { files } => validate(&files),
        Command::Schema => schema(),
        Command::Start(args) => start::run(&args, cli.log_format),
        Command::Stop(args) => stop::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Completions(args) => completions::run(&args),
        Command::Top(args) => top::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Probe(args) => probe::run(&args),
        Command::RunWorker(args) => run_worker::run(&args),
    };
    let code = match result {
        // The work is done; a closed stdout is fine (see `stdio`), a failed one is not.
        Ok(0) if let Some(why) = crate::stdio::stdout_failure() => {
            crate::errln!("automon: cannot write to stdout: {why}");
            ExitCode::from(1)
        }
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::errln!("automon: {}", e.message);
            ExitCode::from(e.code)
        }
    };
    // The control loop's last lines, if its stderr thread still holds them; a log on a hung
    // file system does not hold the exit.
    crate::stdio::finish(std::time::Duration::from_secs(2));
    code
}

fn validate(files: &[PathBuf]) -> Result<u8, CliError> {
    let mut bad = false;
    for f in files {
        match manifest::load(f) {
            Ok(m) => {
                crate::outln!("{}: valid", f.display());
                let template = &m.workerset.spec.template;
                if let Some(w) = manifest::program_warning(
                    &template.command,
                    &m.dir.join(&template.workdir),
                    std::env::var_os("PATH").as_deref(),
                ) {
                    crate::errln!("{}: warning: {w}", f.display());
                }
            }
            Err(e) => {
                crate::errln!("{e}");
                bad = true;
            }
        }
    }
    Ok(if bad { 2 } else { 0 })
}

/// Prints the JSON Schema to stdout.
fn schema() -> Result<u8, CliError> {
    emit(&manifest::schema::schema_json())
}

/// Writes `text` to stdout; a closed pipe (`automon get FILE | head`) is not an error.
pub(crate) fn emit(text: &str) -> Result<u8, CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::runtime(format!("cannot write to stdout: {e}"))),
    }
}

/// Loads and validates the manifest without overrides (exit 2 on any problem).
pub fn load_manifest(file: &Path) -> Result<Manifest, CliError> {
    manifest::load(file).map_err(|e| CliError::input(e.to_string()))
}

/// Loads the manifest, applies command-line overrides and validates the result (exit 2 on any
/// problem); also returns a description of each override applied.
pub(crate) fn load_manifest_with(
    file: &Path,
    overrides: &manifest::Overrides,
) -> Result<(Manifest, Vec<String>), CliError> {
    manifest::load_with_overrides(file, overrides).map_err(|e| CliError::input(e.to_string()))
}

/// Prints the overrides applied, one line each, before a plan.
pub(crate) fn print_overrides(overridden: &[String]) {
    for o in overridden {
        crate::outln!("override: {o}");
    }
}

/// The workers' working directory, absolute; bad input unless it is a directory. Checked
/// before anything is written (a bad workdir must not leave a state directory behind).
pub(crate) fn checked_workdir(manifest: &Manifest) -> Result<PathBuf, CliError> {
    let spec = &manifest.workerset.spec;
    let workdir = crate::manifest::normalize(&manifest.dir.join(&spec.template.workdir));
    if !workdir.is_dir() {
        return Err(CliError::input(format!(
            "{}: spec.template.workdir: {} is not a directory (it is resolved against the manifest's directory)",
            manifest.file.display(),
            workdir.display()
        )));
    }
    Ok(workdir)
}

/// `spec.setup` when the next `apply` would run it (its `creates` path is missing, or it has
/// none), for the commands that show what `apply` would do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingSetup {
    /// The setup command's argv.
    pub command: Vec<String>,
    /// What it creates (relative to the working directory), when the manifest says.
    pub creates: Option<String>,
    /// True when the key range is read after it (`spec.work.range.end_command` cannot read
    /// it yet): shard ranges are then unknown until setup has run.
    pub range_after: bool,
}

impl PendingSetup {
    /// `setup would run: CMD (creates PATH)`, and when the range waits for it, a second line.
    pub fn describe(&self) -> String {
        let creates = self
            .creates
            .as_ref()
            .map(|c| format!(" (creates {c})"))
            .unwrap_or_default();
        let mut out = format!(
            "setup would run: {}{creates}",
            crate::text::shell_words(&self.command)
        );
        if self.range_after {
            out.push_str(
                "\nthe key range is read after it (spec.work.range.end_command): shards are shown as \"range known after setup\"",
            );
        }
        out
    }
}

/// What `diff`, `get` and `apply --dry-run` show from: the resolved manifest, and the setup
/// the next `apply` would run. When the range can only be read after that setup, the
/// [`Desired`] carries a provisional range (one key per shard) that must not be shown: only
/// which workers would start is meaningful.
pub(crate) fn resolve_for_showing(
    manifest: &Manifest,
) -> Result<(Desired, Option<PendingSetup>), CliError> {
    let spec = &manifest.workerset.spec;
    let workdir = checked_workdir(manifest)?;
    let pending = spec
        .setup
        .as_ref()
        .filter(|s| s.creates.as_ref().is_none_or(|c| !workdir.join(c).exists()));
    let Some(setup) = pending else {
        return Ok((resolve(manifest)?, None));
    };
    let range_after = crate::act::setup::resolve_range_end(manifest).is_err();
    let pending = PendingSetup {
        command: setup.command.clone(),
        creates: setup.creates.clone(),
        range_after,
    };
    if !range_after {
        return Ok((resolve(manifest)?, Some(pending)));
    }
    let desired = Desired::resolve(manifest, None)
        .map_err(|e| CliError::input(format!("{}: {e}", manifest.file.display())))?;
    Ok((desired, Some(pending)))
}

/// Resolves the manifest into [`Desired`], running `end_command` when there is one.
pub(crate) fn resolve(manifest: &Manifest) -> Result<Desired, CliError> {
    let spec = &manifest.workerset.spec;
    let workdir = checked_workdir(manifest)?;
    let end = crate::act::setup::resolve_range_end(manifest).map_err(|e| {
        // Before the first apply, setup may not have created what end_command reads.
        let pending = spec.setup.as_ref().and_then(|s| s.creates.as_ref()).filter(|c| !workdir.join(c).exists());
        match pending {
            Some(creates) => CliError::input(format!(
                "{}: {e} — the range end comes from spec.work.range.end_command, which needs spec.setup to have created {creates}; run `automon apply {}` first",
                manifest.file.display(),
                manifest.file.display()
            )),
            None => CliError::input(format!("{}: {e}", manifest.file.display())),
        }
    })?;
    Desired::resolve(manifest, end)
        .map_err(|e| CliError::input(format!("{}: {e}", manifest.file.display())))
}

/// Observes the WorkerSet once from `memory`, acting on nothing (the read-only commands'
/// look); `scan_unrecorded` adds the `/proc` scan for workers memory does not record.
///
/// A one-shot command has no previous pass to measure the disk from: it reads diskstats
/// twice, [`ONE_SHOT_DISK_WINDOW`] apart (the observation runs in between), so `get` and
/// `diff` show a figure instead of "disk utilisation unknown".
pub(crate) fn observe_once(
    desired: &Desired,
    memory: &crate::plan::Memory,
    state_dir: &Path,
    scan_unrecorded: bool,
) -> (crate::observe::Observed, crate::clock::Now) {
    observe_once_with(desired, memory, state_dir, scan_unrecorded, None)
}

/// [`observe_once`], with the running loop's disk figure when there is one (its view is the
/// one view: no second measurement beside it).
pub(crate) fn observe_once_with(
    desired: &Desired,
    memory: &crate::plan::Memory,
    state_dir: &Path,
    scan_unrecorded: bool,
    loop_disk: Option<crate::observe::disk::DiskObservation>,
) -> (crate::observe::Observed, crate::clock::Now) {
    if let Some(disk) = loop_disk {
        let now = crate::clock::Now::read();
        let mut observed = crate::observe::Observer::new(desired, crate::observe::Roots::default())
            .observe(
                desired,
                memory,
                state_dir,
                crate::observe::Children::default(),
                scan_unrecorded,
                now.boot,
            );
        observed.disk = disk;
        return (observed, now);
    }
    let roots = crate::observe::Roots::default();
    let mut disk =
        crate::observe::disk::DiskSampler::new(&desired.disk_path, &roots.proc, &roots.sys);
    let first = crate::clock::Now::read();
    let warming = disk.sample(first.boot);
    let mut observed = crate::observe::Observer::new(desired, roots).observe(
        desired,
        memory,
        state_dir,
        crate::observe::Children::default(),
        scan_unrecorded,
        first.boot,
    );
    if matches!(
        warming,
        crate::observe::disk::DiskObservation::Warming { .. }
    ) {
        let spent = crate::clock::Now::read().boot.since(first.boot);
        std::thread::sleep(ONE_SHOT_DISK_WINDOW.saturating_sub(spent));
        observed.disk = disk.sample(crate::clock::Now::read().boot);
    } else {
        observed.disk = warming;
    }
    // The pass is judged at the time of the observation, as the loop judges its passes.
    (observed, first)
}

/// How long a one-shot command measures disk utilisation over.
pub(crate) const ONE_SHOT_DISK_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

/// Plans once from a copy of `memory`, for a command that only shows the plan. Refused, as
/// `apply` refuses it, when the shard layout changed since the state was written (see
/// [`crate::plan::layout_change`]): such a plan would show re-cut shards as complete.
pub(crate) fn plan_shown(
    desired: &Desired,
    observed: &crate::observe::Observed,
    memory: &crate::plan::Memory,
    now: crate::clock::Now,
    state_dir: &Path,
) -> Result<crate::plan::Plan, CliError> {
    if let Some(why) = crate::plan::layout_change(desired, memory, &state_dir.join("state.json")) {
        return Err(CliError::runtime(why));
    }
    Ok(crate::plan::plan(desired, observed, memory.clone(), now))
}

/// `; give automon a writable state directory with --state-dir DIR` when `e` says the
/// state directory cannot be written (a read-only manifest directory), else nothing.
pub(crate) fn state_dir_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "; give automon a writable state directory with --state-dir DIR"
        }
        _ => "",
    }
}

/// Takes the state directory's single-instance lock (creating the directory), with the
/// `--state-dir` hint when it cannot be written.
pub(crate) fn lock_state(state_dir: &Path) -> Result<crate::state::InstanceLock, CliError> {
    crate::state::InstanceLock::acquire(state_dir).map_err(|e| {
        let hint = match &e {
            crate::state::LockError::Io { source, .. } => state_dir_hint(source),
            crate::state::LockError::Held { .. } | crate::state::LockError::FleetHeld { .. } => "",
        };
        CliError::runtime(format!("{e}{hint}"))
    })
}

/// For the commands that reach a running loop (`status`, `stop`, `pause`, `resume`,
/// `reset-params`): the state directory, and the manifest when it was read. With `--state-dir`
/// the manifest is not read at all, so a broken manifest never stands between an operator and
/// the loop; without it, a manifest file that exists but does not load gives `.automon/` beside
/// it, with a note on stderr. A missing file is bad input (exit 2).
pub(crate) fn loop_state_dir(
    file: &Path,
    flag: Option<&Path>,
) -> Result<(PathBuf, Option<Manifest>), CliError> {
    if let Some(p) = flag {
        return Ok((
            std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
            None,
        ));
    }
    match load_manifest(file) {
        Ok(m) => Ok((state_dir(&m, None), Some(m))),
        Err(e) if file.is_file() => {
            let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
            let dir = crate::state::default_state_dir(abs.parent().unwrap_or(Path::new("/")));
            let first = e.message.lines().next().unwrap_or_default();
            crate::errln!(
                "automon: note: the manifest does not load ({first}); using the state directory beside it, {}",
                dir.display()
            );
            Ok((dir, None))
        }
        Err(e) => Err(e),
    }
}

/// The state directory: `--state-dir` or `.automon/` beside the manifest.
pub(crate) fn state_dir(manifest: &Manifest, flag: Option<&Path>) -> PathBuf {
    flag.map_or_else(
        || crate::state::default_state_dir(&manifest.dir),
        |p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a read-only manifest directory gave "Permission denied" and nothing more.
    #[test]
    fn a_state_directory_that_cannot_be_written_suggests_state_dir() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let read_only = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(state_dir_hint(&denied).contains("--state-dir DIR"));
        assert!(state_dir_hint(&read_only).contains("--state-dir DIR"));
        assert_eq!(state_dir_hint(&missing), "");
        // Through the lock, as `apply` takes it: under a file, not a directory, here (the
        // tests run as root, for whom permission bits deny nothing).
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "").expect("write");
        let e = lock_state(&file.join("state")).expect_err("not a directory");
        assert!(e.message.contains("f/state"), "{}", e.message);
    }
}
