//! `automon status FILE [--state-dir DIR] [-o text|json]`: whether a control loop manages the
//! WorkerSet now (the live owner of `STATE_DIR/lock`), since when, and its last pass (from
//! `STATE_DIR/status.json`). A `condition:` line says what the running loop finds wrong in its
//! own house (state not saved, its logs not writable; kept in the lock file, which can still be
//! written when the disk is full). Exit 0 when running, 3 when not (including never run).
//!
//! With no loop running, `status.json` is a dead loop's last word: its running count is not
//! repeated as today's. The workers running now are counted as `get` counts them (a running
//! phase and a recorded process seen alive, [`crate::metrics::runs`]), from the state files and
//! one look at the recorded processes.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::manifest::duration::format_duration;
use crate::state::{self, DaemonStatus, Instance};

/// Exit code of `status` when no automon runs.
pub const NOT_RUNNING: u8 = 3;

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text.
    Text,
    /// One JSON object: running, pid, since, state_dir, last_pass (status.json or null).
    Json,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// A wall-clock time for people: local time and how long ago.
fn when(t: jiff::Timestamp) -> String {
    let local = t
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let ago = jiff::Timestamp::now()
        .duration_since(t)
        .try_into()
        .map_or_else(
            |_| "just now".to_string(),
            |d| format!("{} ago", format_duration(d)),
        );
    format!("{local}, {ago}")
}

/// "pid N, since TIME, AGO" for messages about a running automon.
pub fn describe(i: &Instance) -> String {
    match i.since {
        Some(t) => format!("pid {}, since {}", i.pid, when(t)),
        None => format!("pid {}", i.pid),
    }
}

/// Runs `status`.
pub fn run(args: &StatusArgs) -> Result<u8, CliError> {
    let (state_dir, _) = super::loop_state_dir(&args.file, args.state_dir.as_deref())?;
    let running = state::running_instance(&state_dir);
    // What the running loop says is wrong in its own house (unsaved state, unwritable logs).
    let condition = running
        .as_ref()
        .and_then(|_| state::recorded_owner(&state_dir)?.condition);
    // While a loop runs, its own last pass (over the control socket); otherwise the file.
    let (view, unanswered) = match crate::control::client::view(&state_dir) {
        Ok(v) => (v, None),
        // Running spec.setup (no pass yet), or a socket that fails.
        Err(why) if running.is_some() => (None, Some(why)),
        Err(why) => return Err(CliError::runtime(why)),
    };
    let from_loop = view.as_ref().is_some_and(|v| v.status.is_some());
    // The loop's own word when it answers (the lock file's copy may be stale: a hung state
    // directory keeps it from being written).
    let condition = match &view {
        Some(v) => v.condition.clone(),
        None => condition,
    };
    let last = match view.and_then(|v| v.status) {
        Some(s) => Some(s),
        None => state::read_status(&state_dir).map_err(CliError::runtime)?,
    };
    // No loop: the last pass's counts are history; who runs now is checked, as `get` checks.
    let now = if running.is_none() && last.is_some() {
        Some(running_now(&args.file, args.state_dir.as_deref()))
    } else {
        None
    };
    match args.output {
        Output::Json => print_json(
            &state_dir,
            running.as_ref(),
            condition.as_deref(),
            last.as_ref(),
            from_loop,
            now.as_ref(),
        )?,
        Output::Text => print_text(
            &args.file,
            &state_dir,
            running.as_ref(),
            condition.as_deref(),
            last.as_ref(),
            unanswered.as_deref(),
            now.as_ref(),
        )?,
    }
    Ok(if running.is_some() { 0 } else { NOT_RUNNING })
}

/// Workers counted with no loop running: checked against their recorded processes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunningNow {
    /// Workers wanted.
    pub desired: u32,
    /// Workers in a running phase whose recorded process is alive now.
    pub running: usize,
}

/// Counts the workers running now with no loop, by `get`'s rule (one look at the recorded
/// processes, acting on nothing); `Err` says in words why they cannot be counted (the manifest
/// does not load, no state, workers the state does not record).
fn running_now(
    file: &std::path::Path,
    state_dir: Option<&std::path::Path>,
) -> Result<RunningNow, String> {
    match super::get::look(file, state_dir, false).map_err(|e| e.message)? {
        super::get::Look::Status(shown) => Ok(RunningNow {
            desired: shown.status.overall.desired,
            running: shown.status.overall.running,
        }),
        super::get::Look::Observed(_) => Err("nothing looked at".into()),
    }
}

fn print_json(
    state_dir: &std::path::Path,
    running: Option<&Instance>,
    condition: Option<&str>,
    last: Option<&DaemonStatus>,
    from_loop: bool,
    now: Option<&Result<RunningNow, String>>,
) -> Result<(), CliError> {
    // With no loop: who runs now, checked against the recorded processes (`last_pass` is the
    // dead loop's record, its `running` then history).
    let workers_now = match now {
        Some(Ok(n)) => serde_json::json!({ "desired": n.desired, "running": n.running }),
        Some(Err(why)) => serde_json::json!({ "unknown": why }),
        None => serde_json::Value::Null,
    };
    let value = serde_json::json!({
        "running": running.is_some(),
        "source": if from_loop { "loop" } else { "files" },
        "pid": running.map(|i| i.pid),
        "since": running.and_then(|i| i.since),
        "condition": condition,
        "state_dir": state_dir,
        "last_pass": last,
        "workers_now": workers_now,
    });
    let text = serde_json::to_string_pretty(&value)
        .map_err(|e| CliError::runtime(format!("cannot write JSON: {e}")))?;
    super::emit(&format!("{text}\n")).map(|_| ())
}

fn print_text(
    file: &std::path::Path,
    state_dir: &std::path::Path,
    running: Option<&Instance>,
    condition: Option<&str>,
    last: Option<&DaemonStatus>,
    unanswered: Option<&str>,
    now: Option<&Result<RunningNow, String>>,
) -> Result<(), CliError> {
    let mut text = String::new();
    macro_rules! out {
        ($($arg:tt)*) => {{
            use std::fmt::Write;
            let _ = writeln!(text, $($arg)*);
        }};
    }
    match running {
        Some(i) => out!("automon: running ({})", describe(i)),
        None => out!(
            "automon: not running for {} (no loop running; read from files)",
            file.display()
        ),
    }
    if let Some(why) = unanswered {
        out!("loop: {why} (read from files)");
    }
    if let Some(c) = condition {
        out!("condition: {c}");
    }
    let Some(s) = last else {
        out!(
            "last pass: none recorded ({} does not exist yet)",
            state::status_file(state_dir).display()
        );
        return super::emit(&text).map(|_| ());
    };
    let by = if running.is_some_and(|i| u32::try_from(i.pid).ok() == Some(s.pid)) {
        String::new()
    } else {
        format!(" by pid {}", s.pid)
    };
    out!(
        "last pass: {} (took {} ms; pass {}{by})",
        when(s.last_pass_at),
        s.last_pass_ms,
        s.passes
    );
    out!("{}", workers_line(s, now));
    super::emit(&text).map(|_| ())
}

/// The `workers:` line. While a loop runs, its last pass's counts. With none, the workers
/// running now (checked against their recorded processes) and the dead loop's counts marked
/// as of its last pass: a stale "running 4" is never shown as today's.
fn workers_line(s: &DaemonStatus, now: Option<&Result<RunningNow, String>>) -> String {
    let phases: Vec<String> = s
        .phases
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| format!("{n} {p}"))
        .collect();
    let phases = if phases.is_empty() {
        String::new()
    } else {
        format!("; {}", phases.join(", "))
    };
    match now {
        None => format!(
            "workers: desired {}, running {}{phases}",
            s.desired, s.running
        ),
        Some(Ok(n)) => format!(
            "workers: desired {}, running {} (alive now; no loop running; as of {}: {} running{phases})",
            n.desired,
            n.running,
            clock_time(s.last_pass_at),
            s.running
        ),
        Some(Err(why)) => format!(
            "workers: desired {}, running unknown (no loop running, and the recorded processes cannot be checked: {why}; as of {}: {} running{phases})",
            s.desired,
            clock_time(s.last_pass_at),
            s.running
        ),
    }
}

/// A wall-clock time for people, local: `2026-12-07 19:49:01`.
fn clock_time(t: jiff::Timestamp) -> String {
    t.to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}
