//! [`Diagnostics`]: what a prompt carries about one worker, and [`collect_diagnostics`], which
//! gathers it — the log tail (bounded), error lines (deduplicated), the process's memory and
//! CPU from `/proc`, and excerpts of allow-listed source files that tracebacks point at.
//!
//! Every text field is redacted (see [`super::redact`]) when collected, so a `Diagnostics` may
//! be stored or printed as it is. The pure parts (error deduplication, traceback frames,
//! function excerpts, `/proc` parsing) are separate functions tested on strings.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diagnosis::{FixPolicy, FixType};
use crate::WorkerId;
use crate::clock::Now;
use crate::manifest::Desired;
use crate::observe::{Observed, ProcessStatus, disk::DiskObservation};
use crate::plan::{WorkerMemory, WorkerStatus};

/// Most distinct error lines carried.
pub const MAX_ERROR_LINES: usize = 20;
/// Most characters of one error line.
pub const MAX_ERROR_LINE_CHARS: usize = 300;
/// Most source excerpts carried.
pub const MAX_EXCERPTS: usize = 3;
/// Most lines of one source excerpt.
pub const MAX_EXCERPT_LINES: usize = 60;
/// Most bytes of a source file read for an excerpt; larger files are not excerpted.
pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// Everything a diagnosis prompt says about one worker. Plain data: the planner or the CLI
/// fills it (usually through [`collect_diagnostics`]); text fields are already redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// The worker.
    pub worker: WorkerId,
    /// Its phase, as the planner names it (e.g. `Stuck`).
    pub phase: String,
    /// Why it is in that phase, with numbers.
    pub reason: String,
    /// Time since the last progress signal, when one was ever seen.
    pub since_progress: Option<Duration>,
    /// The last good checkpoint.
    pub checkpoint: Option<u64>,
    /// The worker's shard `[start, end)`, when the WorkerSet is sharded.
    pub shard: Option<(u64, u64)>,
    /// A cursor phrase the log keeps repeating (e.g. `book.id > 61,000`) and how many times.
    pub repeated_cursor: Option<(String, u32)>,
    /// Error lines of the log tail, deduplicated (numbers ignored), with counts, most frequent
    /// first; at most [`MAX_ERROR_LINES`].
    pub errors: Vec<ErrorLine>,
    /// The end of the log, at most `llm.max_log_bytes` bytes, starting at a line boundary.
    pub log_tail: String,
    /// Disk utilisation in percent (0–100) of the watched disk, when sampled.
    pub disk_util_percent: Option<f64>,
    /// Average requests in flight on the watched disk, when sampled.
    pub disk_queue_depth: Option<f64>,
    /// Resident memory of the worker process in bytes (`VmRSS`), when it runs.
    pub rss_bytes: Option<u64>,
    /// CPU time of the worker process (user + system), when it runs.
    pub cpu_time: Option<Duration>,
    /// Time since the worker process started, when it runs.
    pub uptime: Option<Duration>,
    /// Restarts of this worker, all reasons.
    pub restarts: u32,
    /// The worker's recent fixes and how they turned out, oldest first. [`collect_diagnostics`]
    /// leaves it empty; the caller fills it from its fix history.
    pub recent_fixes: Vec<FixRecord>,
    /// Excerpts of allow-listed source files around the functions tracebacks point at.
    pub excerpts: Vec<SourceExcerpt>,
    /// What the manifest allows an answer to propose.
    pub policy: FixPolicy,
}

/// One distinct error line and how often it occurred in the tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorLine {
    /// The first occurrence, timestamp removed, truncated to [`MAX_ERROR_LINE_CHARS`].
    pub text: String,
    /// Occurrences of lines equal to it once numbers are ignored.
    pub count: u32,
}

/// A fix tried on this worker earlier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixRecord {
    /// The kind of fix.
    pub fix_type: FixType,
    /// What was done, in words.
    pub description: String,
    /// How it turned out, in words (e.g. "failed: no progress 2m after the fix").
    pub result: String,
}

/// Lines `[start_line, end_line]` (1-based, inclusive) of an allow-listed source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceExcerpt {
    /// The file, as written in the manifest's allow-list.
    pub file: String,
    /// First line, 1-based.
    pub start_line: usize,
    /// Last line, 1-based, inclusive.
    pub end_line: usize,
    /// The lines.
    pub text: String,
}

/// Gathers the diagnostics of `worker`: `status` is the planner's verdict, `memory` what
/// automon remembers of it, `observed` this pass's observation, `now` the time of it. Reads the
/// log tail (at most `llm.max_log_bytes`), `/proc/PID/status` and `/proc/PID/stat` of its
/// process (only when the recorded identity is alive), and the allow-listed source files that
/// tracebacks name. Never fails: what cannot be read is left out. Text is redacted with the
/// manifest's redactor ([`crate::secrets::redactor_for`]).
pub fn collect_diagnostics(
    desired: &Desired,
    worker: WorkerId,
    status: &WorkerStatus,
    memory: &WorkerMemory,
    observed: &Observed,
    now: Now,
) -> Diagnostics {
    let redactor = crate::secrets::redactor_for(desired);
    let max_log = usize::try_from(desired.llm.max_log_bytes).unwrap_or(usize::MAX);
    let raw_tail = read_log_tail(&desired.log_path(worker), desired.llm.max_log_bytes);
    let tail = cap_tail(&redactor.redact(&raw_tail), max_log);
    let format = crate::observe::logtail::LineFormat::new(
        &desired.timestamp_format,
        jiff::tz::TimeZone::system(),
    );
    let errors = dedupe_errors(
        &tail,
        |line| {
            let msg = format.split(line).1;
            desired.patterns.error.is_match(line) || is_exception_line(msg)
        },
        |line| format.split(line).1.to_string(),
    );

    let process = memory.process.as_ref();
    let alive = observed
        .workers
        .get(&worker)
        .and_then(|w| w.process.as_ref())
        .is_some_and(|p| matches!(p, ProcessStatus::Alive { .. }));
    let (rss_bytes, cpu_time) = match process {
        // (A Slurm job runs on another node: nothing of it is in this /proc.)
        Some(p) if alive && !crate::runtime::Handle::of(&p.identity).is_job() => {
            let dir = Path::new("/proc").join(p.identity.pid.to_string());
            let rss = std::fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|s| parse_vm_rss(&s));
            let cpu = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .filter(|s| {
                    crate::observe::proc::parse_stat(s)
                        .is_some_and(|st| st.start_ticks == p.identity.start_ticks)
                })
                .and_then(|s| parse_cpu_time(&s, crate::observe::proc::clock_ticks_per_second()));
            (rss, cpu)
        }
        _ => (None, None),
    };
    let uptime = process
        .filter(|_| alive)
        .map(|p| now.boot.since(p.started_at));
    let (disk_util_percent, disk_queue_depth) = match &observed.disk {
        DiskObservation::Sample {
            util_percent,
            queue_depth,
            ..
        } => (Some(*util_percent), Some(*queue_depth)),
        _ => (None, None),
    };
    let policy = FixPolicy::from_desired(desired);
    let excerpts = source_excerpts(&raw_tail, desired, &policy)
        .into_iter()
        .map(|mut e| {
            e.text = redactor.redact(&e.text);
            e
        })
        .collect();

    Diagnostics {
        worker,
        phase: format!("{:?}", status.phase),
        reason: redactor.redact(&status.reason.to_string()),
        since_progress: memory.last_progress_at.map(|t| now.boot.since(t)),
        checkpoint: memory.checkpoint,
        shard: desired.shard(worker).map(|s| (s.start, s.end)),
        repeated_cursor: memory
            .repeating
            .as_ref()
            .map(|r| (redactor.redact(&r.what), r.times)),
        errors,
        log_tail: tail,
        disk_util_percent,
        disk_queue_depth,
        rss_bytes,
        cpu_time,
        uptime,
        restarts: memory.restarts,
        recent_fixes: Vec::new(),
        excerpts,
        policy,
    }
}

/// Reads at most the last `max` bytes of the log at `path`, from the first line boundary in
/// that window (the whole file when it is smaller), as lossy UTF-8 with NUL bytes dropped.
/// Empty when the file cannot be read.
pub fn read_log_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = size.saturating_sub(max);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let mut body: &[u8] = &buf;
    if start > 0 {
        body = match body.iter().position(|b| *b == b'\n') {
            Some(nl) => &body[nl + 1..],
            None => &[],
        };
    }
    let cleaned: Vec<u8> = body.iter().copied().filter(|b| *b != 0).collect();
    String::from_utf8_lossy(&cleaned).into_owned()
}

/// The end of `text` in at most `max` bytes, starting at a line boundary when the text had to
/// be cut (and at a character boundary always).
pub fn cap_tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    match cut.find('\n') {
        Some(nl) if nl + 1 < cut.len() => cut[nl + 1..].to_string(),
        _ => cut.to_string(),
    }
}

/// True for a Python exception line such as `ValueError: bad page` or
/// `requests.exceptions.ConnectionError: …`.
fn is_exception_line(line: &str) -> bool {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b(?::|$)").ok()
    })
    .as_ref()
    .is_some_and(|re| re.is_match(line.trim_start()))
}

/// Error lines of `text`, deduplicated: `is_error` picks lines, `message` strips what varies
/// (the timestamp); lines equal once digits are ignored count as one. Most frequent first,
/// ties in order of first appearance; at most [`MAX_ERROR_LINES`].
pub fn dedupe_errors(
    text: &str,
    is_error: impl Fn(&str) -> bool,
    message: impl Fn(&str) -> String,
) -> Vec<ErrorLine> {
    let mut seen: Vec<(String, ErrorLine)> = Vec::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.trim().is_empty() || !is_error(line) {
            continue;
        }
        let msg = message(line);
        let key: String = msg
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, e)) => e.count += 1,
            None => seen.push((
                key,
                ErrorLine {
                    text: truncate_chars(msg.trim(), MAX_ERROR_LINE_CHARS),
                    count: 1,
                },
            )),
        }
    }
    let mut out: Vec<ErrorLine> = seen.into_iter().map(|(_, e)| e).collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.count));
    out.truncate(MAX_ERROR_LINES);
    out
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A traceback frame: `File "PATH", line N, in FUNCTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The path as the traceback writes it.
    pub file: String,
    /// The line, 1-based.
    pub line: usize,
    /// The function.
    pub function: String,
}

/// The traceback frames in `text`, innermost (last written) first, without duplicates.
pub fn traceback_frames(text: &str) -> Vec<Frame> {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let Some(re) = RE
        .get_or_init(|| regex::Regex::new(r#"File "([^"]+)", line (\d+), in ([\w<>.]+)"#).ok())
        .as_ref()
    else {
        return Vec::new();
    };
    let mut frames: Vec<Frame> = Vec::new();
    for c in re.captures_iter(text) {
        let Ok(line) = c[2].parse() else { continue };
        let f = Frame {
            file: c[1].to_string(),
            line,
            function: c[3].to_string(),
        };
        frames.retain(|g| g != &f);
        frames.push(f);
    }
    frames.reverse();
    frames
}

/// The lines of the function enclosing `line` (1-based) in `source`: from the nearest `def`
/// (or `class`) at or above it to the line before the next statement at the same or a smaller
/// indent, at most [`MAX_EXCERPT_LINES`] lines (centred on `line` when longer). Without an
/// enclosing `def`, ten lines either side. Returns `(start_line, end_line, text)`, 1-based.
pub fn function_excerpt(source: &str, line: usize) -> Option<(usize, usize, String)> {
    let lines: Vec<&str> = source.lines().collect();
    if line == 0 || line > lines.len() {
        return None;
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let is_def = |l: &str| {
        let t = l.trim_start();
        t.starts_with("def ") || t.starts_with("async def ") || t.starts_with("class ")
    };
    let idx = line - 1;
    let def = (0..=idx).rev().find(|&i| is_def(lines[i]));
    let (mut start, mut end) = match def {
        Some(d) => {
            let base = indent(lines[d]);
            let end = (d + 1..lines.len())
                .find(|&i| !lines[i].trim().is_empty() && indent(lines[i]) <= base)
                .map_or(lines.len() - 1, |i| i - 1);
            if end < idx {
                // The def above ended before the line: the line is at module level.
                (idx.saturating_sub(10), (idx + 10).min(lines.len() - 1))
            } else {
                (d, end)
            }
        }
        None => (idx.saturating_sub(10), (idx + 10).min(lines.len() - 1)),
    };
    while end > start && lines[end].trim().is_empty() {
        end -= 1;
    }
    if end - start + 1 > MAX_EXCERPT_LINES {
        let half = MAX_EXCERPT_LINES / 2;
        start = idx.saturating_sub(half).max(start);
        end = (start + MAX_EXCERPT_LINES - 1).min(end);
    }
    Some((start + 1, end + 1, lines[start..=end].join("\n")))
}

/// Excerpts of allow-listed files that the traceback frames in `log` point at.
fn source_excerpts(log: &str, desired: &Desired, policy: &FixPolicy) -> Vec<SourceExcerpt> {
    let mut out: Vec<SourceExcerpt> = Vec::new();
    for frame in traceback_frames(log) {
        if out.len() >= MAX_EXCERPTS {
            break;
        }
        let Some((abs, name)) = allowed_file(&frame.file, desired, policy) else {
            continue;
        };
        let Some(source) = read_bounded(&abs) else {
            continue;
        };
        let Some((start, end, text)) = function_excerpt(&source, frame.line) else {
            continue;
        };
        let overlaps = out
            .iter()
            .any(|e| e.file == name && start <= e.end_line && e.start_line <= end);
        if !overlaps {
            out.push(SourceExcerpt {
                file: name,
                start_line: start,
                end_line: end,
                text,
            });
        }
    }
    out
}

/// The allow-listed file a traceback path names (absolute path equal, or relative to the
/// working directory, or the same file name when only one allow-listed file has it).
fn allowed_file(path: &str, desired: &Desired, policy: &FixPolicy) -> Option<(PathBuf, String)> {
    let p = crate::manifest::normalize(&desired.workdir.join(path));
    let pairs = desired.code_files.iter().zip(policy.code_files.iter());
    if let Some((abs, name)) = pairs.clone().find(|(abs, _)| **abs == p) {
        return Some((abs.clone(), name.clone()));
    }
    let file_name = Path::new(path).file_name()?;
    let mut same: Vec<_> = pairs
        .filter(|(abs, _)| abs.file_name() == Some(file_name))
        .collect();
    if same.len() == 1 {
        let (abs, name) = same.remove(0);
        return Some((abs.clone(), name.clone()));
    }
    None
}

fn read_bounded(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_SOURCE_BYTES {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_SOURCE_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `VmRSS` from `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// User + system CPU time from `/proc/PID/stat` text (fields 14 and 15, in clock ticks).
pub fn parse_cpu_time(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let close = stat.rfind(')')?;
    let rest: Vec<&str> = stat.get(close + 2..)?.split_ascii_whitespace().collect();
    // rest[0] is field 3; field N is rest[N - 3].
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(
        ticks.checked_mul(1000)? / ticks_per_sec.max(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  300 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn cpu_time_from_stat_with_spaces_in_the_name() {
        let stat = "4242 (python3 (worker) 1) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 4 0 987654 0 0";
        assert_eq!(parse_cpu_time(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn errors_deduplicate_ignoring_numbers() {
        let text = "\
2024-05-01 10:00:00,001 - ERROR - Upload failed for book 17: HTTP 500
2024-05-01 10:00:01,001 - INFO - Processed batch
2024-05-01 10:00:02,001 - ERROR - Upload failed for book 18: HTTP 500
2024-05-01 10:00:03,001 - ERROR - Database locked
ValueError: page 3 is empty
2024-05-01 10:00:04,001 - ERROR - Upload failed for book 99: HTTP 500
";
        let fmt = crate::observe::logtail::LineFormat::python(jiff::tz::TimeZone::UTC);
        let errors = dedupe_errors(
            text,
            |l| l.contains("ERROR") || is_exception_line(l),
            |l| fmt.split(l).1.to_string(),
        );
        assert_eq!(
            errors,
            [
                ErrorLine {
                    text: "ERROR - Upload failed for book 17: HTTP 500".into(),
                    count: 3
                },
                ErrorLine {
                    text: "ERROR - Database locked".into(),
                    count: 1
                },
                ErrorLine {
                    text: "ValueError: page 3 is empty".into(),
                    count: 1
                },
            ]
        );
    }

    #[test]
    fn frames_innermost_first() {
        let tb = r#"Traceback (most recent call last):
  File "/srv/w/migrate_worker.py", line 300, in main
    worker.run()
  File "/srv/w/migrate_worker.py", line 120, in run_batch
    rows = self.fetch_rows(start_id)
ValueError: boom"#;
        let frames = traceback_frames(tb);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].line, 120);
        assert_eq!(frames[0].function, "run_batch");
    }

    #[test]
    fn excerpt_is_the_enclosing_function() {
        let src = "\
import os

class Worker:
    def fetch_rows(self, start):
        return []

    def run_batch(self, start_id) -> int:
        rows = self.fetch_rows(start_id)
        if not rows:
            return start_id
        return max(rows)

    def other(self):
        pass
";
        let (start, end, text) = function_excerpt(src, 9).unwrap();
        assert_eq!((start, end), (7, 11));
        assert!(text.starts_with("    def run_batch"));
        assert!(text.ends_with("return max(rows)"));
        // A module-level line: ten lines either side.
        let (s, _, _) = function_excerpt(src, 1).unwrap();
        assert_eq!(s, 1);
        assert!(function_excerpt(src, 0).is_none());
        assert!(function_excerpt(src, 999).is_none());
    }

    #[test]
    fn long_functions_are_capped() {
        let mut src = String::from("def f():\n");
        for i in 0..500 {
            src.push_str(&format!("    x{i} = {i}\n"));
        }
        let (start, end, _) = function_excerpt(&src, 300).unwrap();
        assert_eq!(end - start + 1, MAX_EXCERPT_LINES);
        assert!(start <= 300 && 300 <= end);
    }

    #[test]
    fn tail_is_capped_at_a_line_boundary() {
        let text = "first line\nsecond line\nthird ü line\n";
        assert_eq!(cap_tail(text, 1000), text);
        let capped = cap_tail(text, 20);
        assert!(capped.len() <= 20);
        assert_eq!(capped, "third ü line\n");
        // A cut inside a multibyte character moves to the next boundary.
        let s = "üüüü";
        assert!(cap_tail(s, 3).len() <= 3);
    }

    #[test]
    fn log_tail_reads_only_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let tail = read_log_tail(&path, 100);
        assert!(tail.len() <= 100);
        assert!(
            tail.starts_with("line "),
            "starts at a line boundary: {tail}"
        );
        assert!(tail.ends_with("line 999\n"));
        assert_eq!(read_log_tail(&dir.path().join("missing.log"), 100), "");
    }
}
