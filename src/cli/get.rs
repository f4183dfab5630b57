//! `automon get FILE`: where every worker stands and when the job will finish — one row per
//! worker (phase, pid, shard, checkpoint, % of its shard, rate, ETA, age of the last progress
//! signal, fix attempts, what happens next), then an overall line. `-o wide|json|yaml`;
//! `--observed -o json` dumps one raw observation for bug reports; `--watch` prints the table
//! again on every change. [`look`] builds the view model `top` shares. Reads state and `/proc`;
//! changes nothing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::CliError;
use crate::clock::Now;
use crate::manifest::Desired;
use crate::manifest::duration::format_duration;
use crate::observe::disk::DiskObservation;
use crate::plan::{Memory, Phase, Plan, WorkerMemory};
use crate::text::{count, span};

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = GetFormat::Table)]
    pub output: GetFormat,
    /// Print the raw observation (processes, progress files, log tails, disk) instead.
    #[arg(long)]
    pub observed: bool,
    /// Print the table again on every change (like `kubectl get -w`), until every shard is
    /// complete or the reader leaves.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetFormat {
    /// A table for people.
    Table,
    /// The table with each phase's reason.
    Wide,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// One worker's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    /// Worker id.
    pub worker: u32,
    /// Phase name.
    pub phase: Phase,
    /// Why it is in that phase.
    pub reason: String,
    /// Its process, when it has one (with `runtime: slurm`, its job id).
    pub pid: Option<i32>,
    /// Its Slurm job — id, node, state as `squeue` last gave them — with `runtime: slurm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::runtime::JobRecord>,
    /// Its shard `[start, end)`.
    pub shard: Option<(u64, u64)>,
    /// The last good checkpoint.
    pub checkpoint: Option<u64>,
    /// Percent of its shard done (0–100).
    pub percent: Option<f64>,
    /// Keys per minute over the recent window.
    pub rate_per_min: Option<f64>,
    /// Seconds until its shard is done at that rate.
    pub eta_seconds: Option<u64>,
    /// Seconds since its last progress signal.
    pub last_progress_seconds: Option<u64>,
    /// Failed fix attempts since the last success.
    pub failed_attempts: u32,
    /// Attempts of the current round used (the last attempt's number; 1 after a success
    /// that needed one; 0 before any fix).
    pub attempts_used: u32,
    /// `fixes.max_attempts`.
    pub max_attempts: u32,
    /// The last fix and how it ended, if there was one.
    pub last_fix: Option<LastFix>,
    /// What happens next, in words.
    pub next: String,
    /// Parameter values set by config fixes.
    pub params: std::collections::BTreeMap<String, i64>,
    /// How its adopted process differs from the manifest (its next restart applies the
    /// manifest); secret values not shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differs: Vec<String>,
    /// Its process runs the previous template (a changed command, env, parameters or
    /// workdir reaches it at its next restart).
    pub previous_template: bool,
    /// Its process runs but its progress file is not there: the path automon looks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_missing: Option<PathBuf>,
}

/// The last fix of a worker and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastFix {
    /// `restart`, `config_fix` or `code_fix`.
    pub kind: String,
    /// `ok` (verified), `failed` (verification failed) or `verifying` (not yet verified).
    pub outcome: &'static str,
}

impl LastFix {
    fn of(w: &WorkerMemory) -> Option<Self> {
        let a = w.fixes.attempts.last()?;
        Some(Self {
            kind: a.kind.name().to_string(),
            outcome: match &a.result {
                Some(v) if v.succeeded => "ok",
                Some(_) => "failed",
                None => "verifying",
            },
        })
    }
}

/// The overall line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overall {
    /// Completed shards.
    pub shards_done: usize,
    /// All shards.
    pub shards_total: usize,
    /// Keys done over all shards.
    pub keys_done: u64,
    /// Keys in the range.
    pub keys_total: u64,
    /// Sum of the workers' item counts (the progress file's items pointer), when known.
    pub items: Option<u64>,
    /// Keys per minute, all workers.
    pub rate_per_min: f64,
    /// Seconds until every shard is done at that rate.
    pub eta_seconds: Option<u64>,
    /// Workers wanted now.
    pub desired: u32,
    /// Workers running now.
    pub running: usize,
    /// Disk utilisation, percent.
    pub disk_util_percent: Option<f64>,
    /// Disk queue depth.
    pub disk_queue_depth: Option<f64>,
    /// Why there is no disk figure (measuring, or unavailable and why), when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_note: Option<String>,
    /// When the last shard completed, once every shard has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<jiff::Timestamp>,
    /// The scaling decision or why it holds.
    pub scaling: String,
    /// The pid of the running automon loop whose view this is; `None`: no loop runs and the
    /// figures were read from files.
    pub automon_pid: Option<i32>,
}

/// Everything `get` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The WorkerSet's name.
    pub name: String,
    /// The noun for one key.
    pub unit: String,
    /// One row per worker.
    pub workers: Vec<WorkerRow>,
    /// Totals.
    pub overall: Overall,
}

/// Runs `get`.
pub fn run(args: &GetArgs) -> Result<u8, CliError> {
    if args.watch {
        return watch(args);
    }
    match look(&args.file, args.state_dir.as_deref(), args.observed)? {
        Look::Observed(observed) => {
            let print = |text: String| super::emit(&format!("{}\n", text.trim_end()));
            let serialize_err = |e: String| CliError::runtime(format!("cannot serialize: {e}"));
            match args.output {
                GetFormat::Yaml => print(
                    serde_saphyr::to_string(&observed).map_err(|e| serialize_err(e.to_string()))?,
                ),
                _ => print(
                    serde_json::to_string_pretty(&observed)
                        .map_err(|e| serialize_err(e.to_string()))?,
                ),
            }
        }
        Look::Status(shown) => print_status(args, &shown.status, &shown.notes),
    }
}

/// What `get` looked at: one raw observation (`--observed`), or the status.
#[derive(Debug)]
pub(crate) enum Look {
    /// `--observed`: the raw observation.
    Observed(Box<crate::observe::Observed>),
    /// The status and what it was built from.
    Status(Box<Shown>),
}

/// The status `get` shows, with its notes and the memory it was built from (the running loop's,
/// or this pass's plan's when no loop runs) — the view model `get`, `get --watch` and `top` share.
#[derive(Debug)]
pub(crate) struct Shown {
    /// The rows and the overall line.
    pub status: Status,
    /// Notes printed after the table.
    pub notes: Vec<String>,
    /// The memory the rows come from.
    pub memory: Memory,
    /// The resolved manifest.
    pub desired: Desired,
    /// The state directory.
    pub state_dir: PathBuf,
    /// When it was built.
    pub now: Now,
    /// The running loop's view it was built from; `None`: no loop runs (read from files).
    pub view: Option<Box<crate::control::View>>,
}

/// Looks once: from the running loop's view when one runs, else from the state files and one
/// observation (acting on nothing).
pub(crate) fn look(
    file: &std::path::Path,
    state_dir: Option<&std::path::Path>,
    observed_only: bool,
) -> Result<Look, CliError> {
    let manifest = super::load_manifest(file)?;
    let state_dir = super::state_dir(&manifest, state_dir);
    let (desired, setup) = super::resolve_for_showing(&manifest)?;
    // While a loop runs, its view: its memory, its last pass, its disk figure.
    let view = crate::control::client::view(&state_dir).map_err(CliError::runtime)?;
    if let Some(view) = view.filter(|_| !observed_only) {
        return show_view(desired, view, state_dir);
    }
    let memory =
        crate::state::load_memory(&state_dir).map_err(|e| CliError::runtime(e.to_string()))?;
    // Another automon (a copy of this manifest elsewhere) managing these workers' files: an
    // `apply` of this file would be refused, so it is never advised; who owns them is said.
    let fleet_owner = crate::state::FleetFiles::of(&desired)
        .holder()
        .filter(|h| !same_dir(&h.state_dir, &state_dir));
    if memory.workers.is_empty() && !observed_only {
        // Workers may run that no state records (state moved aside or lost, a loop between
        // its lock and its first save): never say "not started" over running workers.
        let (observed, _) = super::observe_once(&desired, &memory, &state_dir, true);
        if let Some(why) = owned_elsewhere(fleet_owner.as_ref(), &observed.unrecorded) {
            return Err(CliError::runtime(why));
        }
        // This WorkerSet's own (another automon's are neither adopted nor counted here).
        let ours: Vec<_> = observed
            .unrecorded
            .iter()
            .filter(|u| u.other_owner.is_none())
            .cloned()
            .collect();
        if !ours.is_empty() {
            return Err(CliError::runtime(unrecorded_running(
                &manifest.file,
                &state_dir,
                &ours,
            )));
        }
        return Err(CliError::runtime(not_started(
            &manifest.file,
            &state_dir,
            setup.as_ref(),
            crate::state::lock_holder(&state_dir),
        )));
    }
    if setup.as_ref().is_some_and(|s| s.range_after) {
        // Workers are recorded, but the range they were cut from cannot be read.
        super::resolve(&manifest)?;
    }
    let (observed, now) = super::observe_once(&desired, &memory, &state_dir, false);
    if observed_only {
        return Ok(Look::Observed(Box::new(observed)));
    }
    let mut plan = super::plan_shown(&desired, &observed, &memory, now, &state_dir)?;
    // A completion this look only found is dated by the worker's own record, never by this
    // look's clock (which moved on every `get`).
    recorded_completions(&memory, &mut plan.memory, |id| {
        progress_written_at(&desired.progress_path(id))
    });
    // The columns come from the plan's memory, the same look as the phase and reason (the
    // saved state lags the files by up to a pass).
    let mut status = build(&desired, &plan.memory, &plan, &observed.disk, now, None);
    mark_missing_progress(&desired, &plan.memory, &mut status);
    let mut notes = Vec::new();
    if let Some(owner) = &fleet_owner {
        // Nothing here starts while it runs: no row says the next `apply` starts it.
        for row in &mut status.workers {
            if row.next == NEXT_APPLY_STARTS {
                row.next = format!("another automon (pid {}) manages its files", owner.pid);
            }
        }
        notes.push(owned_by(owner));
    }
    Ok(Look::Status(Box::new(Shown {
        status,
        notes,
        memory: plan.memory,
        desired,
        state_dir,
        now,
        view: None,
    })))
}

/// Dates the completions a look without a loop found (in `planned`, not in the `saved` state)
/// by `written_at` — when the worker last wrote its progress file, its own record of its last
/// checkpoint — instead of the look's clock; `None` when there is no such record (no time is
/// shown then). Completions the state recorded keep their time.
fn recorded_completions(
    saved: &Memory,
    planned: &mut Memory,
    written_at: impl Fn(crate::WorkerId) -> Option<jiff::Timestamp>,
) {
    for (id, w) in &mut planned.workers {
        let recorded = saved.workers.get(id).and_then(|s| s.completed_at);
        if w.completed_at.is_some() && recorded.is_none() {
            w.completed_at = written_at(*id);
        }
    }
}

/// When the progress file at `path` was last written (its mtime), if it can be read.
fn progress_written_at(path: &std::path::Path) -> Option<jiff::Timestamp> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    jiff::Timestamp::try_from(modified).ok()
}

/// `get` while a loop runs: the rows come from the loop's view; notes say which running
/// workers run the previous template and whether the loop runs another version of the file.
/// The clock is read here: the same view shown again later gives later ages, rates and ETAs.
pub(crate) fn show_view(
    desired: Desired,
    view: crate::control::View,
    state_dir: PathBuf,
) -> Result<Look, CliError> {
    // A loop of another WorkerSet sharing this directory's state is not this one's view.
    if let Some(why) =
        crate::plan::layout_change(&desired, &view.memory, &state_dir.join("state.json"))
    {
        return Err(CliError::runtime(why));
    }
    let Some(plan) = &view.plan else {
        return Err(CliError::runtime(format!(
            "the control loop (pid {}) has not finished its first pass yet",
            view.pid
        )));
    };
    let now = Now::read();
    let disk = view.disk.clone().unwrap_or(DiskObservation::Unavailable {
        why: "no pass yet".into(),
    });
    let pid = i32::try_from(view.pid).ok();
    let mut status = build(&desired, &view.memory, plan, &disk, now, pid);
    mark_missing_progress(&desired, &view.memory, &mut status);
    let stale = crate::control::previous_template(&desired, &view.memory);
    for row in &mut status.workers {
        row.previous_template = stale.contains(&crate::WorkerId(row.worker));
    }
    let mut notes: Vec<String> = stale
        .iter()
        .map(|id| crate::control::previous_template_note(*id, &view.memory))
        .collect();
    if view.applied != desired.normalized {
        notes.push(format!(
            "the loop runs another version of {}: `automon diff` shows the change, `automon apply` hands it over",
            desired.manifest_file.display()
        ));
    }
    Ok(Look::Status(Box::new(Shown {
        status,
        notes,
        memory: view.memory.clone(),
        desired,
        state_dir,
        now,
        view: Some(Box::new(view)),
    })))
}

/// `get --watch`: the table, then again whenever it changes (kubectl's `-w`), looking once a
/// second; ends when every shard is complete (exit 0) or stdout is closed. A change is anything
/// but the ages of the last progress signals, which move every second on their own.
fn watch(args: &GetArgs) -> Result<u8, CliError> {
    if args.observed {
        return Err(CliError::input(
            "--watch shows the status; it does not go with --observed",
        ));
    }
    let mut last: Option<String> = None;
    loop {
        // A loop starting up (setup, its first pass) or ending meanwhile is waited out.
        let shown = match look(&args.file, args.state_dir.as_deref(), false) {
            Ok(Look::Status(shown)) => Some(shown),
            Ok(Look::Observed(_)) => None,
            Err(e) if e.code == 1 && last.is_some() => {
                crate::errln!("automon: {}", e.message);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(shown) = shown {
            let key = change_key(args, &shown.status)?;
            if last.as_ref() != Some(&key) {
                let text = format_status(args, &shown.status, &shown.notes)?;
                let separator = if last.is_some() { "\n" } else { "" };
                if !write_out(&format!("{separator}{text}"))? {
                    // The reader left (`get --watch | head`).
                    return Ok(0);
                }
                last = Some(key);
            }
            let o = &shown.status.overall;
            if o.shards_total > 0 && o.shards_done == o.shards_total {
                return Ok(0);
            }
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// How often `get --watch` looks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What must differ for `get --watch` to print again: the text, without what moves with the
/// clock alone — the ages of the last progress signals and the rates and ETAs, which a
/// stalled worker's decay every second (they are shown as they are when a change prints).
fn change_key(args: &GetArgs, status: &Status) -> Result<String, CliError> {
    let mut status = status.clone();
    for row in &mut status.workers {
        row.last_progress_seconds = None;
        row.rate_per_min = None;
        row.eta_seconds = None;
        // `pid 4242 at book 1,204; 12s since the last progress`: the age goes.
        row.reason = row
            .reason
            .split("; ")
            .filter(|part| !part.contains(" since "))
            .collect::<Vec<_>>()
            .join("; ");
    }
    status.overall.rate_per_min = 0.0;
    status.overall.eta_seconds = None;
    format_status(args, &status, &[])
}

/// Writes `text` to stdout; `Ok(false)` when the reader has left (a closed pipe).
fn write_out(text: &str) -> Result<bool, CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::runtime(format!("cannot write to stdout: {e}"))),
    }
}

/// Marks the rows of workers whose process runs while their progress file is not there (a
/// mistyped `spec.progress.file`, or a worker that writes elsewhere): `get` names the path
/// automon looks for instead of showing a checkpoint-less row with nothing said.
fn mark_missing_progress(desired: &Desired, memory: &Memory, status: &mut Status) {
    for row in &mut status.workers {
        let id = crate::WorkerId(row.worker);
        let runs = memory.workers.get(&id).is_some_and(|w| w.process.is_some());
        let path = desired.progress_path(id);
        if runs && row.phase != Phase::Completed && !path.exists() {
            row.progress_missing = Some(path);
        }
    }
}

/// Prints `status` in the chosen format; `notes` follow the table.
fn print_status(args: &GetArgs, status: &Status, notes: &[String]) -> Result<u8, CliError> {
    super::emit(&format_status(args, status, notes)?)
}

/// `status` in the chosen format, ending in one newline; `notes` follow the table.
fn format_status(args: &GetArgs, status: &Status, notes: &[String]) -> Result<String, CliError> {
    let serialize_err = |e: String| CliError::runtime(format!("cannot serialize: {e}"));
    let text = match args.output {
        GetFormat::Json => {
            serde_json::to_string_pretty(status).map_err(|e| serialize_err(e.to_string()))?
        }
        GetFormat::Yaml => {
            serde_saphyr::to_string(status).map_err(|e| serialize_err(e.to_string()))?
        }
        GetFormat::Table | GetFormat::Wide => {
            let colour = std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let mut text = render(status, args.output == GetFormat::Wide, colour);
            for n in notes {
                text.push_str(&format!("note: {n}\n"));
            }
            text
        }
    };
    Ok(format!("{}\n", text.trim_end()))
}

/// NEXT of a worker that waits for an `apply` (no loop runs).
const NEXT_APPLY_STARTS: &str = "starts at the next `automon apply`";

/// True when `a` and `b` name one directory (symlinks and spelling aside).
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

/// Another automon manages the files of this manifest's workers: who, and what shows them.
/// No `apply` is advised: this file's would be refused while it runs.
fn owned_by(owner: &crate::state::FleetHolder) -> String {
    format!(
        "another automon (pid {}, state directory {}) manages these workers' files; `automon get` with its manifest (or --state-dir {}) shows them, and an `apply` of this file is refused while it runs",
        owner.pid,
        owner.state_dir.display(),
        owner.state_dir.display()
    )
}

/// Why `get` has nothing of its own to show when the workers found belong to another automon:
/// a live one holding the fleet's files, or processes marked with another state directory (an
/// automon that has exited). `None` when neither (some found are this WorkerSet's own, or
/// nothing runs).
fn owned_elsewhere(
    holder: Option<&crate::state::FleetHolder>,
    found: &[crate::observe::UnrecordedWorker],
) -> Option<String> {
    if let Some(h) = holder {
        return Some(format!("not started here: {}", owned_by(h)));
    }
    if found.is_empty() || found.iter().any(|u| u.other_owner.is_none()) {
        return None;
    }
    let which: Vec<String> = found
        .iter()
        .map(|u| {
            format!(
                "worker {} {}",
                u.worker,
                crate::runtime::Handle::of(&u.identity)
            )
        })
        .collect();
    let mut owners: Vec<&str> = found
        .iter()
        .filter_map(|u| u.other_owner.as_deref())
        .collect();
    owners.dedup();
    Some(format!(
        "not started here: {} ({}) {} another automon's (state directory {}); `automon get` with its manifest shows them. An `apply` of this file would neither adopt them nor start workers beside them",
        crate::text::counted(found.len(), "worker process", "worker processes"),
        which.join(", "),
        crate::text::plural(found.len(), "is", "are"),
        owners.join(", ")
    ))
}

/// Workers of this WorkerSet run, but the state directory records none of them.
fn unrecorded_running(
    file: &std::path::Path,
    state_dir: &std::path::Path,
    found: &[crate::observe::UnrecordedWorker],
) -> String {
    let which: Vec<String> = found
        .iter()
        .map(|u| {
            format!(
                "worker {} {}",
                u.worker,
                crate::runtime::Handle::of(&u.identity)
            )
        })
        .collect();
    format!(
        "{} of this WorkerSet {} ({}), but {} records none of them; `automon apply {}` adopts them",
        crate::text::counted(found.len(), "worker process", "worker processes"),
        crate::text::plural(found.len(), "runs", "run"),
        which.join(", "),
        state_dir.display(),
        file.display()
    )
}

/// Why there is nothing to show yet, saying what will actually happen: setup runs under
/// a loop that holds the lock now, or the next `apply` runs it.
fn not_started(
    file: &std::path::Path,
    state_dir: &std::path::Path,
    setup: Option<&super::PendingSetup>,
    automon_pid: Option<i32>,
) -> String {
    let file = file.display();
    match (setup, automon_pid) {
        (Some(_), Some(pid)) => format!(
            "not started yet: automon (pid {pid}) is running setup; the workers start when it is done"
        ),
        (None, Some(pid)) => format!(
            "not started yet: automon (pid {pid}) is making its first pass; ask again in a moment"
        ),
        (Some(s), None) => format!(
            "not started yet: setup has not run ({}); `automon apply {file}` runs it, then starts the workers",
            crate::text::shell_words(&s.command)
        ),
        (None, None) => format!(
            "not started yet: no state in {} (`automon apply {file}` starts the workers)",
            state_dir.display()
        ),
    }
}

/// Builds the status from memory, this pass's plan and the disk figure.
pub fn build(
    desired: &Desired,
    memory: &Memory,
    plan: &Plan,
    disk: &DiskObservation,
    now: Now,
    automon_pid: Option<i32>,
) -> Status {
    let empty = WorkerMemory::default();
    let max = desired.fixes.max_attempts;
    let mut workers = Vec::new();
    let (mut keys_done, mut keys_total, mut total_rate, mut remaining) = (0u64, 0u64, 0.0f64, 0u64);
    for (id, s) in &plan.workers {
        let w = memory.workers.get(id).map_or(&empty, |w| w);
        let shard = desired.shard(*id);
        let done = match (shard, w.checkpoint) {
            (Some(sh), Some(c)) => sh.keys_done(c),
            _ => 0,
        };
        let done = if s.phase == Phase::Completed {
            shard.map_or(done, |sh| sh.len())
        } else {
            done
        };
        if let Some(sh) = shard {
            keys_done += done;
            keys_total += sh.len();
            remaining += sh.len() - done.min(sh.len());
        }
        let r = crate::plan::rate::per_minute(&w.rate_samples, s.phase, now.boot);
        total_rate += r.unwrap_or(0.0);
        let eta_seconds = shard
            .zip(r)
            .filter(|(_, r)| *r > 0.0)
            .map(|(sh, r)| ((sh.len() - done.min(sh.len())) as f64 / r * 60.0) as u64);
        workers.push(WorkerRow {
            worker: id.0,
            phase: s.phase,
            reason: s.reason.to_string(),
            pid: w.process.as_ref().map(|p| p.identity.pid),
            job: w.job.clone().filter(|_| w.process.is_some()),
            shard: shard.map(|sh| (sh.start, sh.end)),
            checkpoint: w.checkpoint,
            percent: shard
                .filter(|sh| !sh.is_empty())
                .map(|sh| done as f64 * 100.0 / sh.len() as f64),
            rate_per_min: r,
            eta_seconds,
            last_progress_seconds: w.last_progress_at.map(|t| now.boot.since(t).as_secs()),
            failed_attempts: w.fixes.failed_in_row,
            attempts_used: w.fixes.attempts.last().map_or(0, |a| a.n),
            max_attempts: max,
            last_fix: LastFix::of(w),
            next: next_step(desired, w, s.phase, now, automon_pid.is_some()),
            params: w.params.clone(),
            differs: w.differs.clone(),
            previous_template: false,
            progress_missing: None,
        });
    }
    let (disk_util_percent, disk_queue_depth, disk_note) = match disk {
        DiskObservation::Sample {
            util_percent,
            queue_depth,
            ..
        } => (Some(*util_percent), Some(*queue_depth), None),
        DiskObservation::Warming { device } => (
            None,
            None,
            Some(format!("disk {} measured from the next pass", device.name)),
        ),
        DiskObservation::Unavailable { why } => (
            None,
            None,
            Some(format!("disk utilisation unavailable ({why})")),
        ),
    };
    let shards_total = desired.shards.as_ref().map_or(0, Vec::len);
    let shards_done = plan
        .workers
        .values()
        .filter(|s| s.phase == Phase::Completed)
        .count();
    // When the last shard completed: only when every completion has a recorded time.
    let completed_at = (shards_total > 0 && shards_done == shards_total)
        .then(|| {
            plan.workers
                .keys()
                .map(|id| memory.workers.get(id).and_then(|w| w.completed_at))
                .collect::<Option<Vec<_>>>()
        })
        .flatten()
        .and_then(|times| times.into_iter().max());
    let items: Option<u64> = memory.workers.values().map(|w| w.items).sum();
    // A start that a look without a loop only plans runs nothing (see `metrics::runs`).
    let running = plan
        .workers
        .iter()
        .filter(|(id, s)| crate::metrics::runs(s.phase, memory.workers.get(id).map(AsRef::as_ref)))
        .count();
    Status {
        name: desired.name.clone(),
        unit: desired.unit.clone(),
        overall: Overall {
            shards_done,
            shards_total,
            keys_done,
            keys_total,
            items,
            rate_per_min: total_rate,
            eta_seconds: (total_rate > 0.0).then(|| (remaining as f64 / total_rate * 60.0) as u64),
            desired: memory.desired_count.unwrap_or(desired.counts.target),
            running,
            disk_util_percent,
            disk_queue_depth,
            disk_note,
            completed_at,
            scaling: plan.scaling.clone(),
            automon_pid,
        },
        workers,
    }
}

/// What happens next for a worker, in words.
fn next_step(
    desired: &Desired,
    w: &WorkerMemory,
    phase: Phase,
    now: Now,
    automon_running: bool,
) -> String {
    let clock = |t: crate::clock::BootTime| {
        now.wall_of(t)
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%H:%M:%S")
            .to_string()
    };
    // A deadline already passed is never shown as a time in the past: it is due, and acted
    // on at the loop's next pass (or, with no loop, the next `apply`).
    let due = |t: crate::clock::BootTime| t <= now.boot;
    let when_due = if automon_running {
        "at the next pass"
    } else {
        "at the next `automon apply`"
    };
    if let Some(a) = w.fixes.pending() {
        if due(a.verify_at) {
            return format!("verify {}: due, {when_due}", a.kind.name());
        }
        return format!("verify {} at {}", a.kind.name(), clock(a.verify_at));
    }
    match phase {
        Phase::BackingOff => w.backoff_until.map_or_else(String::new, |t| {
            if due(t) {
                format!("restart: due, {when_due}")
            } else {
                format!("restart in {}", format_duration(t.since(now.boot)))
            }
        }),
        Phase::Paused => "waits for `automon resume`".into(),
        Phase::Failed => "stays stopped until `automon resume`".into(),
        // Nothing starts without a loop or an `apply`: say which.
        Phase::Pending | Phase::Stopped | Phase::Parked if !automon_running => {
            NEXT_APPLY_STARTS.into()
        }
        Phase::Pending | Phase::Stopped | Phase::Parked => "starts when a slot is free".into(),
        Phase::Stuck => match w.fixes.last_at() {
            Some(t) if now.boot.since(t) < desired.fixes.cooldown.get() => {
                format!(
                    "fix allowed at {}",
                    clock(t.plus(desired.fixes.cooldown.get()))
                )
            }
            _ => "fix on the next pass".into(),
        },
        Phase::Discovering | Phase::Progressing => {
            let (threshold, from) = if w.left_discovery {
                (desired.health.stuck_after.get(), w.last_progress_at)
            } else {
                // As the planner measures it: from the newest progress signal since the start
                // (activity lines count while discovering), else from the start.
                let started = w.process.as_ref().map(|p| p.started_at);
                let from = match (started, w.last_progress_at) {
                    (Some(s), Some(p)) => Some(s.max(p)),
                    (s, _) => s,
                };
                (desired.health.discovery_grace.get(), from)
            };
            from.map_or_else(String::new, |t| {
                let deadline = t.plus(threshold);
                if due(deadline) {
                    format!("stuck check due: stuck if still silent {when_due}")
                } else {
                    format!("stuck if silent until {}", clock(deadline))
                }
            })
        }
        _ => String::new(),
    }
}

/// The FIXES cell: `1/3 ok`, `2/3 failed`, `1/3 verifying`, `0/3` before any fix; wide
/// splits the count from the last fix and names its kind (`1/3   restart ok`).
fn fixes_cell(w: &WorkerRow, wide: bool) -> String {
    let count = format!("{}/{}", w.attempts_used, w.max_attempts);
    match (&w.last_fix, wide) {
        (None, false) => count,
        (Some(l), false) => format!("{count} {}", l.outcome),
        (None, true) => format!("{count:<5} -"),
        (Some(l), true) => format!("{count:<5} {} {}", l.kind, l.outcome),
    }
}

fn colour_phase(phase: Phase, text: &str, colour: bool) -> String {
    if !colour {
        return text.to_string();
    }
    let code = match phase {
        Phase::Progressing | Phase::Completed => "32",
        Phase::Discovering | Phase::Starting | Phase::Pending | Phase::Queued => "36",
        Phase::Stuck | Phase::BackingOff | Phase::Stopping | Phase::Parked | Phase::Unknown => "33",
        Phase::Paused | Phase::Failed | Phase::Conflict => "31",
        Phase::Stopped => "0",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The table for people.
pub fn render(s: &Status, wide: bool, colour: bool) -> String {
    use std::fmt::Write;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let fixes_width = if wide { 26 } else { 13 };
    // A Slurm fleet's workers are jobs: `17@n2` (job id, node) where a local one has its pid.
    let job_cell = |w: &WorkerRow| {
        w.job.as_ref().map(|j| match &j.node {
            Some(node) => format!("{}@{node}", j.id),
            None => j.id.to_string(),
        })
    };
    let jobs = s.workers.iter().any(|w| w.job.is_some());
    let (id_head, id_width) = if jobs {
        let widest = s
            .workers
            .iter()
            .filter_map(&job_cell)
            .map(|c| c.len())
            .max();
        ("JOB@NODE", widest.unwrap_or(0).max(8))
    } else {
        ("PID", 7)
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<6} {:<12} {:>id_width$}  {:<18} {:>10} {:>6} {:>9} {:>8} {:>9}  {:<fixes_width$} NEXT",
        "WORKER",
        "PHASE",
        id_head,
        "SHARD",
        "CHECKPOINT",
        "DONE",
        "RATE/MIN",
        "ETA",
        "PROGRESS",
        // Attempts of this round / max, and how the last one ended; wide splits them.
        if wide { "FIXES LAST FIX" } else { "FIXES" }
    );
    if wide {
        out.push_str("  REASON");
    }
    out.push('\n');
    for w in &s.workers {
        let phase = format!("{:<12}", format!("{:?}", w.phase));
        let _ = write!(
            out,
            "{:<6} {} {:>id_width$}  {:<18} {:>10} {:>6} {:>9} {:>8} {:>9}  {:<fixes_width$} {}",
            w.worker,
            colour_phase(w.phase, &phase, colour),
            opt(job_cell(w).or_else(|| w.pid.map(|p| p.to_string()))),
            span(w.shard),
            // A cursor before the shard's first key (`start - 1`, a fresh worker's) is no key
            // of it: shown as none, like a missing checkpoint.
            opt(w
                .checkpoint
                .filter(|c| w.shard.is_none_or(|(start, _)| *c >= start))
                .map(count)),
            opt(w.percent.map(|p| format!("{p:.1}%"))),
            opt(w.rate_per_min.map(|r| count(r.round() as u64))),
            opt(w
                .eta_seconds
                .map(|e| format_duration(Duration::from_secs(e)))),
            opt(w
                .last_progress_seconds
                .map(|a| format!("{} ago", format_duration(Duration::from_secs(a))))),
            fixes_cell(w, wide),
            if w.next.is_empty() { "-" } else { &w.next },
        );
        if wide {
            let _ = write!(out, "  {}", w.reason);
        }
        out.push('\n');
    }
    // What runs a worker: `job 360` for a Slurm job, `pid 4242` for a process.
    let handle = |w: &WorkerRow| match (&w.job, w.pid) {
        (Some(j), _) => Some(format!("job {}", j.id)),
        (None, Some(p)) => Some(format!("pid {p}")),
        (None, None) => None,
    };
    for w in &s.workers {
        if let Some(path) = &w.progress_missing {
            let pid = handle(w).map_or_else(String::new, |h| format!(" ({h})"));
            let _ = writeln!(
                out,
                "worker {}{pid} runs, but its progress file {} is missing: no checkpoint is read until it appears (check spec.progress.file)",
                w.worker,
                path.display()
            );
        }
        if !w.differs.is_empty() {
            let pid = handle(w).map_or_else(String::new, |h| format!(" ({h}, adopted)"));
            let _ = writeln!(
                out,
                "worker {}{pid} differs from the manifest: {}; its next restart applies the manifest",
                w.worker,
                w.differs.join("; ")
            );
        }
    }
    let o = &s.overall;
    let pct = if o.keys_total > 0 {
        o.keys_done as f64 * 100.0 / o.keys_total as f64
    } else {
        0.0
    };
    let items = o
        .items
        .map(|n| format!(" · {} {}s done", count(n), s.unit))
        .unwrap_or_default();
    let eta = o.eta_seconds.map_or_else(
        || "unknown".to_string(),
        |e| format_duration(Duration::from_secs(e)),
    );
    let disk = match (o.disk_util_percent, o.disk_queue_depth, &o.disk_note) {
        (Some(u), Some(q), _) if o.automon_pid.is_none() => format!(
            "disk {u:.0}% busy, queue {q:.1} (a {} sample)",
            format_duration(super::ONE_SHOT_DISK_WINDOW)
        ),
        (Some(u), Some(q), _) => format!("disk {u:.0}% busy, queue {q:.1}"),
        (_, _, Some(note)) => note.clone(),
        _ => "disk utilisation unknown".into(),
    };
    // Every shard complete: no rate or ETA to give, but when it finished.
    let pace = if o.shards_total > 0 && o.shards_done == o.shards_total {
        o.completed_at.map_or_else(
            || "done".to_string(),
            |t| {
                format!(
                    "done, completed at {}",
                    t.to_zoned_datetime(jiff::tz::TimeZone::system())
                        .strftime("%Y-%m-%d %H:%M:%S")
                )
            },
        )
    } else {
        format!("{}/min · ETA {eta}", count(o.rate_per_min.round() as u64))
    };
    let automon = o.automon_pid.map_or_else(
        || "no loop running (read from files)".to_string(),
        |p| format!("automon running (pid {p})"),
    );
    let _ = writeln!(
        out,
        "\n{}: shards {}/{} complete · {} ids {}/{} ({pct:.1}%){items} · {pace} · workers {}/{} running · {disk} · {automon}",
        s.name,
        o.shards_done,
        o.shards_total,
        s.unit,
        count(o.keys_done),
        count(o.keys_total),
        o.running,
        o.desired,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(worker: u32, phase: Phase, used: u32, last: Option<(&str, &'static str)>) -> WorkerRow {
        WorkerRow {
            worker,
            phase,
            reason: "pid 4242 at book 1,204; 12s since the last progress".into(),
            pid: Some(4242 + worker as i32),
            shard: Some((1 + 100 * u64::from(worker), 101 + 100 * u64::from(worker))),
            checkpoint: Some(50 + 100 * u64::from(worker)),
            percent: Some(50.0),
            rate_per_min: Some(120.0),
            eta_seconds: Some(25),
            last_progress_seconds: Some(12),
            failed_attempts: u32::from(last.is_some_and(|l| l.1 == "failed")),
            attempts_used: used,
            max_attempts: 3,
            last_fix: last.map(|(kind, outcome)| LastFix {
                kind: kind.into(),
                outcome,
            }),
            next: "stuck if silent until 08:15:25".into(),
            params: BTreeMap::new(),
            previous_template: false,
            differs: Vec::new(),
            progress_missing: None,
            job: None,
        }
    }

    fn status() -> Status {
        Status {
            name: "sorting".into(),
            unit: "item".into(),
            workers: vec![
                row(0, Phase::Progressing, 0, None),
                row(1, Phase::Progressing, 1, Some(("restart", "ok"))),
                row(2, Phase::Progressing, 2, Some(("config_fix", "failed"))),
                row(3, Phase::Progressing, 1, Some(("restart", "verifying"))),
            ],
            overall: Overall {
                shards_done: 0,
                shards_total: 4,
                keys_done: 200,
                keys_total: 400,
                items: Some(180),
                rate_per_min: 480.0,
                eta_seconds: Some(25),
                desired: 4,
                running: 4,
                disk_util_percent: Some(12.0),
                disk_queue_depth: Some(0.1),
                disk_note: None,
                completed_at: None,
                scaling: "holding at 4".into(),
                automon_pid: Some(4000),
            },
        }
    }

    use std::collections::BTreeMap;

    /// Regression: the notes under the table named a Slurm job by its id as a pid
    /// ("worker 0 (pid 360) runs, but its progress file … is missing").
    #[test]
    fn notes_name_a_slurm_job_as_a_job_and_a_process_by_its_pid() {
        let mut s = status();
        s.workers.truncate(2);
        for w in &mut s.workers {
            w.progress_missing = Some(PathBuf::from("p.json"));
        }
        s.workers[0].pid = Some(360);
        s.workers[0].job = Some(crate::runtime::JobRecord {
            id: 360,
            cluster: String::new(),
            node: None,
            state: "RUNNING".into(),
        });
        let text = render(&s, false, false);
        assert!(text.contains("worker 0 (job 360) runs"), "{text}");
        assert!(!text.contains("pid 360"), "{text}");
        assert!(text.contains("worker 1 (pid 4243) runs"), "{text}");
    }

    /// Regression: with no loop running and no live worker, `get` said "workers 2/2
    /// running": the starts a look without a loop only plans (phase Starting) were counted.
    /// Running is a process memory holds.
    #[test]
    fn planned_starts_are_not_counted_as_running_workers() {
        let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: t}
spec:
  workers: {target: 2, min: 1, max: 2}
  work: {range: {start: 0, end: 20}, shards: 2}
  template: {command: [w, "{checkpoint}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#;
        let manifest = crate::manifest::Manifest {
            file: PathBuf::from("t.yaml"),
            dir: PathBuf::from("/tmp/t"),
            workerset: crate::manifest::parse(text).expect("valid manifest"),
        };
        let desired = Desired::resolve(&manifest, None).expect("resolve");
        let now = Now {
            wall: jiff::Timestamp::from_second(1_800_000_000).expect("valid"),
            boot: crate::clock::BootTime::from_duration(Duration::from_secs(1000)),
        };
        let disk = DiskObservation::Unavailable { why: "test".into() };
        let mut observed = crate::observe::Observed {
            disk: disk.clone(),
            boot_id: "b".into(),
            workers: BTreeMap::new(),
            children: Default::default(),
            unrecorded: Vec::new(),
            scan_incomplete: None,
            unsaved_state: None,
        };
        let memory = Memory {
            boot_id: "b".into(),
            ..Memory::default()
        };
        let plan = crate::plan::plan(&desired, &observed, memory.clone(), now);
        assert!(
            plan.workers.values().all(|s| s.phase == Phase::Starting),
            "{:?}",
            plan.workers
        );
        let status = build(&desired, &plan.memory, &plan, &disk, now, None);
        assert_eq!(status.overall.running, 0);
        assert!(render(&status, false, false).contains("workers 0/2 running"));
        // The metrics (and `status`, which takes their figure) count the same way: a loop's
        // start that failed is phase Starting without a process too.
        let snapshot = crate::metrics::MetricsSnapshot::from_pass(
            &plan,
            &plan.memory,
            2,
            None,
            Duration::ZERO,
            1,
            now.wall,
        );
        assert_eq!(snapshot.running, 0);
        // A process memory holds, seen alive, runs.
        let mut memory = memory;
        memory.workers.insert(
            crate::WorkerId(0),
            Box::new(WorkerMemory {
                process: Some(crate::plan::RunningProcess {
                    identity: crate::observe::ProcessIdentity {
                        pid: 4242,
                        start_ticks: 7,
                        boot_id: "b".into(),
                    },
                    started_at: now.boot,
                    resume_from: None,
                    adopted: false,
                    own_group: true,
                    template: None,
                }),
                ..WorkerMemory::default()
            }),
        );
        observed.workers.insert(
            crate::WorkerId(0),
            crate::observe::WorkerObservation {
                process: Some(crate::observe::ProcessStatus::Alive { state: 'S' }),
                group_alive: false,
                progress: crate::observe::ProgressObservation::Missing,
                log: crate::observe::LogObservation::Missing,
            },
        );
        let plan = crate::plan::plan(&desired, &observed, memory, now);
        let status = build(&desired, &plan.memory, &plan, &disk, now, None);
        assert_eq!(status.overall.running, 1);
    }

    /// Regression (fresh-clone trial): with no loop, "completed at" moved on every `get`: a
    /// completion the look found (not in the saved state) was dated by the look's clock. It is
    /// dated by the worker's own record (its progress file's last write), the same on every
    /// look; a completion the state recorded keeps its time; none without a record.
    #[test]
    fn completed_at_without_a_loop_comes_from_a_recorded_time_not_the_looks_clock() {
        let at = |s: i64| jiff::Timestamp::from_second(s).expect("valid");
        let worker = |completed: Option<jiff::Timestamp>| {
            Box::new(WorkerMemory {
                completed_at: completed,
                ..WorkerMemory::default()
            })
        };
        let mut saved = Memory::default();
        saved
            .workers
            .insert(crate::WorkerId(0), worker(Some(at(100))));
        saved.workers.insert(crate::WorkerId(1), worker(None));
        saved.workers.insert(crate::WorkerId(2), worker(None));
        // Two looks at different clocks: the planner dated the new completions by each.
        for now in [1_000, 2_000] {
            let mut planned = Memory::default();
            planned
                .workers
                .insert(crate::WorkerId(0), worker(Some(at(100))));
            planned
                .workers
                .insert(crate::WorkerId(1), worker(Some(at(now))));
            planned
                .workers
                .insert(crate::WorkerId(2), worker(Some(at(now))));
            recorded_completions(&saved, &mut planned, |id| {
                (id == crate::WorkerId(1)).then(|| at(500))
            });
            let got: Vec<_> = planned.workers.values().map(|w| w.completed_at).collect();
            assert_eq!(got, [Some(at(100)), Some(at(500)), None], "look at {now}");
        }
    }

    /// A two-shard WorkerSet with `health` (a YAML flow mapping), for the NEXT tests.
    fn next_test_desired(health: &str) -> Desired {
        let text = format!(
            "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {{name: t}}\nspec:\n  work: {{range: {{start: 0, end: 20}}, shards: 2}}\n  template: {{command: [w, \"{{checkpoint}}\"]}}\n  progress: {{file: \"p{{id}}.json\", checkpoint: /c}}\n  logs: {{file: \"w{{id}}.log\"}}\n  health: {health}\n"
        );
        let manifest = crate::manifest::Manifest {
            file: PathBuf::from("t.yaml"),
            dir: PathBuf::from("/tmp/t"),
            workerset: crate::manifest::parse(&text).expect("valid manifest"),
        };
        Desired::resolve(&manifest, None).expect("resolve")
    }

    fn next_test_boot(s: u64) -> crate::clock::BootTime {
        crate::clock::BootTime::from_duration(Duration::from_secs(s))
    }

    /// The NEXT tests' clock: 1,000 s after boot.
    fn next_test_now() -> Now {
        Now {
            wall: jiff::Timestamp::from_second(1_800_000_000).expect("valid"),
            boot: next_test_boot(1000),
        }
    }

    /// Regression (fresh-clone trial): a discovering worker whose activity lines were fresh
    /// showed "stuck check due" (measured from its start), while the planner measures from its
    /// newest progress signal.
    #[test]
    fn a_discovering_workers_next_stuck_check_counts_from_its_last_signal() {
        let desired = next_test_desired("{stuck_after: 60s, discovery_grace: 120s}");
        let (boot, now) = (next_test_boot, next_test_now());
        let mut w = WorkerMemory {
            process: Some(crate::plan::memory::RunningProcess {
                identity: crate::observe::ProcessIdentity {
                    pid: 10,
                    start_ticks: 1,
                    boot_id: String::new(),
                },
                started_at: boot(700),
                resume_from: None,
                adopted: false,
                own_group: true,
                template: None,
            }),
            last_progress_at: Some(boot(998)),
            ..WorkerMemory::default()
        };
        let next = next_step(&desired, &w, Phase::Discovering, now, true);
        assert!(next.starts_with("stuck if silent until "), "{next}");
        // No signal since its start: from the start (300 s ago, past the 120 s grace).
        w.last_progress_at = None;
        assert_eq!(
            next_step(&desired, &w, Phase::Discovering, now, true),
            "stuck check due: stuck if still silent at the next pass"
        );
    }

    /// Regression (fresh-clone trial): NEXT showed deadlines in the past ("stuck if silent
    /// until" a time gone by, "verify restart at" one too, "restart in 0s"). A deadline passed
    /// is due: it says when it is acted on, never a past time.
    #[test]
    fn next_never_shows_a_deadline_in_the_past() {
        let desired = next_test_desired("{stuck_after: 60s}");
        let (boot, now) = (next_test_boot, next_test_now());
        // Last progress 30 s ago: the deadline is ahead, shown as a time.
        let mut w = WorkerMemory {
            left_discovery: true,
            last_progress_at: Some(boot(970)),
            ..WorkerMemory::default()
        };
        let ahead = next_step(&desired, &w, Phase::Progressing, now, true);
        assert!(ahead.starts_with("stuck if silent until "), "{ahead}");
        // 90 s ago: passed.
        w.last_progress_at = Some(boot(910));
        assert_eq!(
            next_step(&desired, &w, Phase::Progressing, now, true),
            "stuck check due: stuck if still silent at the next pass"
        );
        assert_eq!(
            next_step(&desired, &w, Phase::Progressing, now, false),
            "stuck check due: stuck if still silent at the next `automon apply`"
        );
        // A backoff that ended.
        w.backoff_until = Some(boot(990));
        assert_eq!(
            next_step(&desired, &w, Phase::BackingOff, now, true),
            "restart: due, at the next pass"
        );
        w.backoff_until = Some(boot(1005));
        assert_eq!(
            next_step(&desired, &w, Phase::BackingOff, now, true),
            "restart in 5s"
        );
        // A verification whose time passed.
        w.fixes.push(crate::plan::memory::Attempt {
            n: 1,
            kind: crate::plan::memory::FixKind::Restart,
            at: boot(900),
            at_wall: now.wall,
            checkpoint: None,
            detail: String::new(),
            verify_at: boot(960),
            result: None,
            code: None,
        });
        assert_eq!(
            next_step(&desired, &w, Phase::Progressing, now, true),
            "verify restart: due, at the next pass"
        );
    }

    /// Regression: FIXES showed failed attempts only ("0/3" after a fix that worked), which
    /// read as "no fix done"; and the overall line said "items migrated" for any unit.
    #[test]
    fn fixes_show_attempts_used_and_the_last_outcome_in_the_manifests_unit() {
        insta::assert_snapshot!(render(&status(), false, false));
        insta::assert_snapshot!(render(&status(), true, false));
    }

    /// Regression (fresh-clone test): at 100 % the overall line said "0/min · ETA unknown".
    #[test]
    fn a_finished_migration_says_done_and_when_not_a_zero_rate_and_an_unknown_eta() {
        let mut s = status();
        for w in &mut s.workers {
            w.phase = Phase::Completed;
            w.rate_per_min = None;
            w.eta_seconds = None;
        }
        s.overall.shards_done = 4;
        s.overall.keys_done = 400;
        s.overall.rate_per_min = 0.0;
        s.overall.eta_seconds = None;
        s.overall.completed_at = Some(jiff::Timestamp::from_second(1_800_000_000).expect("valid"));
        let text = render(&s, false, false);
        assert!(text.contains(" · done, completed at 20"), "{text}");
        assert!(
            !text.contains("ETA unknown") && !text.contains("0/min"),
            "{text}"
        );
        // Not all complete: the rate and ETA as before.
        s.overall.shards_done = 3;
        assert!(render(&s, false, false).contains(" · 0/min · ETA unknown"));
    }

    /// Without a figure the overall line says why, not "unknown"; a one-shot figure says how
    /// long it was measured over.
    #[test]
    fn the_disk_figure_says_why_it_is_missing_and_how_a_one_shot_figure_was_taken() {
        let mut s = status();
        s.overall.disk_util_percent = None;
        s.overall.disk_queue_depth = None;
        s.overall.disk_note = Some("disk vda measured from the next pass".into());
        assert!(render(&s, false, false).contains(" · disk vda measured from the next pass · "));
        s.overall.disk_util_percent = Some(40.0);
        s.overall.disk_queue_depth = Some(1.0);
        s.overall.automon_pid = None;
        let text = render(&s, false, false);
        assert!(
            text.contains(" · disk 40% busy, queue 1.0 (a 500ms sample) · "),
            "{text}"
        );
    }

    /// Each case says what will actually happen (regression: during setup `get` said to run
    /// `automon apply` first, while it ran).
    #[test]
    fn get_before_the_first_pass_says_what_will_happen() {
        let file = std::path::Path::new("m.yaml");
        let dir = std::path::Path::new("/srv/.automon");
        let setup = super::super::PendingSetup {
            command: vec!["python3".into(), "gen lib.py".into()],
            creates: Some("lib/db".into()),
            range_after: true,
        };
        insta::assert_snapshot!(not_started(file, dir, Some(&setup), None), @"not started yet: setup has not run (python3 'gen lib.py'); `automon apply m.yaml` runs it, then starts the workers");
        insta::assert_snapshot!(not_started(file, dir, Some(&setup), Some(77)), @"not started yet: automon (pid 77) is running setup; the workers start when it is done");
        insta::assert_snapshot!(not_started(file, dir, None, Some(77)), @"not started yet: automon (pid 77) is making its first pass; ask again in a moment");
        insta::assert_snapshot!(not_started(file, dir, None, None), @"not started yet: no state in /srv/.automon (`automon apply m.yaml` starts the workers)");
    }
}
