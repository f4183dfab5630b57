//! `automon top FILE`: a full-screen live dashboard (ratatui on crossterm), refreshed every second
//! from the running loop's view over its control socket — the same [`get::look`] that `get`
//! prints, so rates, ETAs and phases are computed once — or, with no loop running, from the state
//! files (the title says so). Pause and resume go through the same operator requests as
//! `automon pause`/`resume`, in a background thread (a request waits for the loop's next pass),
//! after a y/n confirmation.
//!
//! The terminal is restored on every way out: `q`, Ctrl-C, an error, SIGTERM/SIGHUP/SIGINT (a
//! flag polled four times a second; a second signal while a look hangs ends `top` the default
//! way) and a panic (a hook restores it before the message).
//!
//! # Layout
//!
//! - `model`: the view model (get's status + alerts, events, history), pure.
//! - `render`: one frame from the model and the UI state, pure.

pub mod model;
pub mod render;

#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::CliError;
use super::get::{self, Look, Shown};
use crate::state::requests::RequestKind;
use model::{Dashboard, DiskGauge, History};
use render::Ui;

/// Arguments of `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// How often `top` looks.
const REFRESH: Duration = Duration::from_secs(1);

/// Lines of the events log read for the events pane, alerts and each worker's latest event.
const EVENTS_TAIL: usize = 200;

/// Lines of a worker's log in its details pane.
const LOG_TAIL: usize = 40;

/// Runs `top`; exit 0 on `q`, 2 without a terminal, 128 + the signal's number on a signal.
pub fn run(args: &TopArgs) -> Result<u8, CliError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::input(format!(
            "top needs a terminal (stdin and stdout are not both a TTY); for scripts and pipes use `automon get {0}` (one table) or `automon get {0} --watch` (the table on every change)",
            args.file.display()
        )));
    }
    // Bad input (a broken manifest, no state yet) is reported before the screen is taken.
    let mut source = Source::new(args)?;
    let first = source.look()?;
    // Requests go to the state directory looked at (the manifest is not read again for them).
    source.state_dir = Some(first.state_dir.clone());
    let mut caught = Vec::new();
    for s in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        let flag = Arc::new(AtomicBool::new(false));
        // The first one sets the flag (the loop restores the terminal and exits); a second one,
        // while top is stuck waiting on the loop's socket, ends it the default way.
        signal_hook::flag::register_conditional_default(s, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(s, Arc::clone(&flag)))
            .map_err(|e| CliError::runtime(format!("cannot handle signal {s}: {e}")))?;
        caught.push((s, flag));
    }
    let mut terminal = Screen::take()?;
    let result = event_loop(&mut terminal, &mut source, first, &caught);
    drop(terminal);
    result
}

/// The terminal in raw mode on the alternate screen; restored when dropped, and by the panic
/// hook it installs.
struct Screen {
    terminal: ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>,
}

fn restore() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

impl Screen {
    fn take() -> Result<Self, CliError> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        let fail = |e: std::io::Error| {
            restore();
            CliError::runtime(format!("cannot set up the terminal: {e}"))
        };
        crossterm::terminal::enable_raw_mode().map_err(fail)?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )
        .map_err(fail)?;
        let terminal =
            ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))
                .map_err(fail)?;
        Ok(Self { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// How long a running loop's view is shown again (with the clock moved on) before it is asked
/// for anew though `status.json` did not change: two of its intervals, at least 30 s (a loop
/// passes at least once an interval, so this only matters when `status.json` cannot be
/// written).
fn refetch_after(interval: Duration) -> Duration {
    (interval * 2).max(Duration::from_secs(30))
}

/// Where the looks come from, and what is kept between them.
struct Source {
    file: PathBuf,
    state_dir: Option<PathBuf>,
    history: History,
    redactor: Option<crate::secrets::Redactor>,
    /// The running loop's last view, with the manifest and state directory it was shown with.
    cached: Option<(crate::manifest::Desired, Box<crate::control::View>, PathBuf)>,
    /// `status.json` when the view was fetched: the loop rewrites it after every pass.
    stamp: Option<(std::time::SystemTime, u64, u64)>,
    /// When the view was fetched.
    fetched: Instant,
}

/// `status.json`'s modification time, inode and size; the loop replaces it after every pass.
fn pass_stamp(state_dir: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(state_dir.join(crate::state::STATUS_FILE)).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

impl Source {
    fn new(args: &TopArgs) -> Result<Self, CliError> {
        Ok(Self {
            file: args.file.clone(),
            state_dir: args.state_dir.clone(),
            history: History::default(),
            redactor: None,
            cached: None,
            stamp: None,
            fetched: Instant::now(),
        })
    }

    /// One look, as `get` takes it. While a loop runs, its view is asked for only after it
    /// made a pass (`status.json` replaced), or [`refetch_after`] its interval without one:
    /// between passes the same view is shown with the clock moved on (ages, rates, ETAs), so a
    /// second's refresh costs the loop nothing.
    fn look(&mut self) -> Result<Box<Shown>, CliError> {
        if let Some((desired, view, state_dir)) = &self.cached {
            let alive = Path::new(&format!("/proc/{}", view.pid)).exists();
            if alive
                && self.fetched.elapsed() < refetch_after(desired.interval)
                && pass_stamp(state_dir) == self.stamp
            {
                let shown = get::show_view(desired.clone(), (**view).clone(), state_dir.clone())?;
                if let Look::Status(shown) = shown {
                    return Ok(shown);
                }
            }
        }
        // The stamp is taken before the view: a pass in between is fetched again next time.
        let stamp = self.state_dir.as_deref().and_then(pass_stamp);
        let shown = match get::look(&self.file, self.state_dir.as_deref(), false)? {
            Look::Status(shown) => shown,
            Look::Observed(_) => return Err(CliError::runtime("no status to show")),
        };
        self.cached = shown
            .view
            .clone()
            .map(|v| (shown.desired.clone(), v, shown.state_dir.clone()));
        self.stamp = stamp;
        self.fetched = Instant::now();
        Ok(shown)
    }

    /// Makes the next look ask the loop (after an operator request was answered).
    fn refetch(&mut self) {
        self.cached = None;
    }

    /// The dashboard of a look.
    fn dashboard(&mut self, shown: &Shown) -> Dashboard {
        self.history.record(&shown.memory, shown.now.boot);
        let thresholds = &shown.desired.scaling.disk;
        let disk = DiskGauge {
            util: shown.status.overall.disk_util_percent,
            normal: thresholds.normal_percent,
            saturated: thresholds.saturated_percent,
        };
        let events = tail_lines(&shown.state_dir.join("events.log"), EVENTS_TAIL);
        let clock = shown
            .now
            .wall
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%H:%M:%S")
            .to_string();
        Dashboard::build(
            shown.status.clone(),
            shown.notes.clone(),
            disk,
            &events,
            &self.history,
            shown.now.boot,
            clock,
        )
    }

    /// The details pane of `worker`: its phase's reason, what happens next, its last diagnosis
    /// and its log's last lines (redacted, as everything automon shows from a worker's log).
    fn detail(&mut self, shown: &Shown, worker: u32) -> (String, Vec<String>) {
        let desired = &shown.desired;
        let redactor = self
            .redactor
            .get_or_insert_with(|| crate::secrets::redactor_for(desired));
        let mut lines = Vec::new();
        if let Some(row) = shown.status.workers.iter().find(|w| w.worker == worker) {
            lines.push(format!("phase: {:?} — {}", row.phase, row.reason));
            if !row.next.is_empty() {
                lines.push(format!("next: {}", row.next));
            }
        }
        let w = shown.memory.workers.get(&crate::WorkerId(worker));
        match w.and_then(|w| w.diagnosis.as_ref()) {
            Some(n) => {
                let fix = n.fix.map_or_else(
                    || {
                        if n.scale_down {
                            "scale_down".to_string()
                        } else {
                            "none".to_string()
                        }
                    },
                    |k| k.name().to_string(),
                );
                lines.push(format!(
                    "last diagnosis: {} (fix {fix}, confidence {:.2}, {} ago)",
                    n.root_cause,
                    n.confidence,
                    crate::manifest::duration::format_duration(shown.now.boot.since(n.at))
                ));
                lines.extend(n.notes.iter().map(|x| format!("  {x}")));
            }
            None => lines.push("last diagnosis: none".into()),
        }
        if let Some(e) = w.and_then(|w| w.last_error.as_ref()) {
            lines.push(format!("last error in its log: {e}"));
        }
        let log = desired.log_path(crate::WorkerId(worker));
        lines.push(String::new());
        lines.push(format!("{} (last lines):", log.display()));
        let tail = tail_lines(&log, LOG_TAIL);
        if tail.is_empty() {
            lines.push("  (empty or not readable)".into());
        }
        lines.extend(tail.iter().map(|l| format!("  {}", redactor.redact(l))));
        (format!("worker {worker}"), lines)
    }
}

/// The last `n` lines of a file (read from its last 64 KiB); none when it cannot be read.
fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        // The first line read is likely cut.
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// What a key asks for.
enum Ask {
    /// Waiting for y/n on a pause or resume of a worker.
    Confirm(RequestKind, u32),
}

fn event_loop(
    screen: &mut Screen,
    source: &mut Source,
    first: Box<Shown>,
    signals: &[(i32, Arc<AtomicBool>)],
) -> Result<u8, CliError> {
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut ui = Ui {
        colour,
        ..Ui::default()
    };
    let mut shown = first;
    let mut dashboard = source.dashboard(&shown);
    let mut next_look = Instant::now() + REFRESH;
    let mut ask: Option<Ask> = None;
    let mut detail_of: Option<u32> = None;
    let (tx, rx) = mpsc::channel::<String>();
    let mut in_flight = false;
    loop {
        for (s, flag) in signals {
            if flag.load(Ordering::Relaxed) {
                return Ok(128u8.saturating_add(u8::try_from(*s).unwrap_or(0)));
            }
        }
        if let Ok(outcome) = rx.try_recv() {
            ui.footer = Some(outcome);
            in_flight = false;
            source.refetch();
            // The outcome came after a pass: look again now.
            next_look = Instant::now();
        }
        if Instant::now() >= next_look {
            match source.look() {
                Ok(s) => {
                    shown = s;
                    dashboard = source.dashboard(&shown);
                }
                Err(e) => {
                    // A loop ending or starting meanwhile: keep the last frame and say why.
                    ui.footer = Some(format!("cannot look: {}", e.message));
                }
            }
            if let Some(id) = detail_of {
                ui.detail = Some(source.detail(&shown, id));
            }
            next_look = Instant::now() + REFRESH;
        }
        screen
            .terminal
            .draw(|f| render::draw(f, &dashboard, &mut ui))
            .map_err(|e| CliError::runtime(format!("cannot draw: {e}")))?;
        let wait = next_look
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        let ready = event::poll(wait).map_err(|e| CliError::runtime(format!("terminal: {e}")))?;
        if !ready {
            continue;
        }
        let Event::Key(key) = event::read().map_err(|e| CliError::runtime(format!("{e}")))? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        if let Some(Ask::Confirm(kind, worker)) = ask.take() {
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                let verb = if kind == RequestKind::Pause {
                    "pausing"
                } else {
                    "resuming"
                };
                ui.footer = Some(format!(
                    "{verb} worker {worker}… (the loop answers after its next pass)"
                ));
                in_flight = true;
                send(source, kind, worker, tx.clone());
            } else {
                ui.footer = Some("cancelled".into());
            }
            continue;
        }
        let rows = model::sorted(&dashboard.status.workers);
        let index = ui
            .selected
            .and_then(|id| rows.iter().position(|w| w.worker == id))
            .unwrap_or(0);
        let page = screen
            .terminal
            .size()
            .map(|s| usize::from(s.height / 2))
            .unwrap_or(10);
        let pick = |i: usize| {
            rows.get(i.min(rows.len().saturating_sub(1)))
                .map(|w| w.worker)
        };
        match key.code {
            KeyCode::Char('q') => return Ok(0),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(0),
            KeyCode::Esc => {
                ui.detail = None;
                detail_of = None;
            }
            KeyCode::Up | KeyCode::Char('k') => ui.selected = pick(index.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => ui.selected = pick(index + 1),
            KeyCode::PageUp => ui.selected = pick(index.saturating_sub(page)),
            KeyCode::PageDown => ui.selected = pick(index + page),
            KeyCode::Home => ui.selected = pick(0),
            KeyCode::End => ui.selected = pick(usize::MAX),
            KeyCode::Enter => {
                if detail_of.is_some() {
                    ui.detail = None;
                    detail_of = None;
                } else if let Some(id) = ui.selected {
                    ui.detail = Some(source.detail(&shown, id));
                    detail_of = Some(id);
                }
            }
            KeyCode::Char(c @ ('p' | 'r')) => {
                let kind = if c == 'p' {
                    RequestKind::Pause
                } else {
                    RequestKind::Resume
                };
                match ui.selected {
                    _ if in_flight => {
                        ui.footer = Some("a request is in flight; wait for its answer".into());
                    }
                    Some(id) => {
                        let verb = if c == 'p' { "pause" } else { "resume" };
                        ui.footer = Some(format!("{verb} worker {id}? (y/n)"));
                        ask = Some(Ask::Confirm(kind, id));
                    }
                    None => ui.footer = Some("no worker selected".into()),
                }
            }
            _ => {}
        }
    }
}

/// Sends a pause or resume in a thread (it waits for the loop's pass); the outcome, in one
/// line, arrives on `tx`.
fn send(source: &Source, kind: RequestKind, worker: u32, tx: mpsc::Sender<String>) {
    let args = super::operator::OperatorArgs {
        file: source.file.clone(),
        worker,
        state_dir: source.state_dir.clone(),
    };
    let verb = if kind == RequestKind::Pause {
        "pause"
    } else {
        "resume"
    };
    let command = format!(
        "automon top {} ({verb} worker {worker})",
        source.file.display()
    );
    std::thread::spawn(move || {
        let line = match super::operator::request(&args, kind, command) {
            Ok(text) => text.lines().collect::<Vec<_>>().join(" · "),
            Err(e) => format!("{verb} worker {worker} failed: {}", e.message),
        };
        let _ = tx.send(line);
    });
}
