//! Log tails: the new lines of a worker's log since the last pass, read from at most a fixed
//! window at the end of the file, so a 20 GB log costs what a 20 KB one does.
//!
//! Bytes are decoded as lossy UTF-8 with NUL runs (left by copytruncate) dropped. Lines start
//! with Python logging's `YYYY-MM-DD HH:MM:SS,mmm` timestamp (or `spec.logs.timestamp_format`);
//! a line without one under a timestamped line (a traceback) belongs to that record, and in a
//! log without timestamps (`print`) each line is a record (see [`parse_read`]). Rotation (the inode changed), truncation (the file shrank)
//! and a rewrite (the bytes before the cursor changed: truncated, then written past the old
//! size before the next pass) restart reading at the new file's tail instead of looking like
//! silence.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::Patterns;

/// Where the previous pass stopped reading a log, and enough about the bytes before that point
/// to tell whether they are still the ones read.
///
/// Same device, inode and a size at least `offset` do not prove the log only grew: a log
/// truncated and written again to at least its old size between two passes looks the same. So
/// the cursor also keeps the file's times at the read (an unchanged file is not read at all)
/// and a hash of the last bytes consumed (checked before reading on from `offset`; a mismatch
/// reads the file again from its tail, [`LogReset::Rewritten`]).
///
/// Persisted in `state.json`; the fields after `offset` are absent from state written before
/// they were kept (read as 0 / none: that cursor's first read then skips the check and
/// records them). An older automon ignores them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogCursor {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file; a different inode means the log was rotated.
    pub inode: u64,
    /// Byte offset just after the last complete line consumed.
    pub offset: u64,
    /// The file's modification time when it was read, nanoseconds since the epoch; 0 when
    /// unknown or not settled yet (see [`super::progress::SETTLED`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtime_ns: i128,
    /// The file's status-change time when it was read, nanoseconds since the epoch (which,
    /// unlike the modification time, nobody can set back); 0 like `mtime_ns`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ctime_ns: i128,
    /// XXH3-64 of the [`TAIL_HASH_BYTES`] bytes before `offset` (fewer when `offset` is
    /// smaller); `None` when `offset` is 0 or the hash is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_hash: Option<u64>,
}

/// How many bytes before a [`LogCursor`]'s offset its hash covers: the end of the last line
/// consumed, timestamp included, so a log written again from the start differs there.
pub const TAIL_HASH_BYTES: u64 = 64;

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &i128) -> bool {
    *n == 0
}

/// How a line was classified by the manifest's patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineClass {
    /// Matches an upload pattern.
    Upload,
    /// Matches an activity pattern.
    Activity,
    /// Matches an error pattern (and no upload/activity pattern).
    Error,
    /// Matches a completion pattern: the worker claims its range is done (believed only with
    /// the checkpoint at the shard's end).
    Completion,
}

/// One classified log record (a timestamped line plus any continuation lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The class.
    pub class: LineClass,
    /// The timestamp at the start of the line (written in local time, converted with `tz`).
    pub timestamp: Option<jiff::Timestamp>,
    /// The message after the timestamp (continuation lines joined with `\n`).
    pub message: String,
}

/// Why reading restarted from the tail of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogReset {
    /// The inode changed: the log was rotated.
    Rotated,
    /// The file is shorter than where the last pass stopped: it was truncated.
    Truncated,
    /// The bytes before where the last pass stopped are not the ones it read: the file was
    /// truncated and written again to at least its old size between two passes.
    Rewritten,
}

/// What one read of a log found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogObservation {
    /// No log file yet.
    Missing,
    /// The file exists but could not be read.
    Unreadable {
        /// The reason.
        why: String,
    },
    /// New records since the cursor.
    Read {
        /// Where this read stopped (pass it back next time).
        cursor: LogCursor,
        /// Classified records read this time (unclassified lines are dropped). Patterns match
        /// the whole first line, timestamp included.
        records: Vec<LogRecord>,
        /// True when there was no previous cursor: the records may be old.
        first_look: bool,
        /// Set when reading restarted because of rotation or truncation.
        reset: Option<LogReset>,
        /// Bytes of new complete lines since the cursor (capped by the window).
        new_bytes: u64,
        /// A cursor the new activity lines keep repeating (a discovery loop), if any.
        repeated: Option<RepeatedCursor>,
    },
}

/// A cursor value that activity lines repeat, e.g. `book.id > 61,000` in consecutive batches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RepeatedCursor {
    /// The repeated phrase as written, e.g. `book.id > 61,000`.
    pub what: String,
    /// The number in it.
    pub value: u64,
    /// How many activity lines in this read carry it.
    pub times: u32,
}

/// Finds the cursor phrase (`KEY > N`, `KEY >= N`, `KEY from N`) most repeated across activity
/// records, with its count in this read (the planner adds the counts up across passes while the
/// checkpoint stands still); `None` when no activity record carries one.
pub fn repeated_cursor(records: &[LogRecord]) -> Option<RepeatedCursor> {
    repeated_cursor_in(
        records
            .iter()
            .filter(|r| r.class == LineClass::Activity)
            .map(|r| std::borrow::Cow::Borrowed(r.message.as_str())),
    )
}

/// [`repeated_cursor`] over the messages of activity records.
fn repeated_cursor_in<'a>(
    messages: impl Iterator<Item = std::borrow::Cow<'a, str>>,
) -> Option<RepeatedCursor> {
    static PHRASE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = PHRASE
        .get_or_init(|| {
            regex::Regex::new(r"([A-Za-z_][\w.]*)\s*(?:>=|>|from)\s*([0-9][0-9,]*)").ok()
        })
        .as_ref()?;
    let mut counts: Vec<(String, u64, u32)> = Vec::new();
    for message in messages {
        // One count per record, for its first cursor phrase.
        let Some(c) = re.captures(&message) else {
            continue;
        };
        let Some(value) = parse_number(&c[2]) else {
            continue;
        };
        let what = format!("{} > {}", &c[1], crate::text::count(value));
        match counts.iter_mut().find(|(w, _, _)| *w == what) {
            Some(entry) => entry.2 += 1,
            None => counts.push((what, value, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, _, n)| *n)
        .filter(|(_, _, n)| *n >= 1)
        .map(|(what, value, times)| RepeatedCursor { what, value, times })
}

/// Reads the new part of the log at `path`: from the previous cursor, but never more than the
/// last `window` bytes.
pub fn read_tail(
    path: &Path,
    window: u64,
    prev: Option<&LogCursor>,
    patterns: &Patterns,
    format: &LineFormat,
) -> LogObservation {
    let seen = prev.and_then(|_| super::progress::version(path));
    read_tail_seen(path, seen, window, prev, patterns, format)
}

/// [`read_tail`], given the file's version as a `stat` just found it (the observer looks it up
/// through a handle on the log's directory; see [`super::dirs`]).
pub fn read_tail_seen(
    path: &Path,
    seen: Option<super::progress::FileVersion>,
    window: u64,
    prev: Option<&LogCursor>,
    patterns: &Patterns,
    format: &LineFormat,
) -> LogObservation {
    let open = || super::progress::open_quietly(path);
    let seen = super::dirs::Seen::Stated(seen);
    read_tail_opened(&open, seen, window, prev, patterns, format).0
}

/// [`read_tail_seen`] of the log `open` opens (the observer opens it through its directory's
/// handle), given what the pass knows of it; with the version its handle had once opened.
pub fn read_tail_opened(
    open: &dyn Fn() -> std::io::Result<std::fs::File>,
    seen: super::dirs::Seen,
    window: u64,
    prev: Option<&LogCursor>,
    patterns: &Patterns,
    format: &LineFormat,
) -> (LogObservation, super::progress::Found) {
    // Unchanged since the last pass (same file, same size as what was consumed, same times):
    // what a full read would find — nothing new.
    let unchanged = |m: &super::progress::FileVersion| {
        let c = prev?;
        ((m.dev, m.inode, m.size, m.mtime_ns, m.ctime_ns)
            == (c.dev, c.inode, c.offset, c.mtime_ns, c.ctime_ns))
            .then_some(LogObservation::Read {
                cursor: *c,
                records: Vec::new(),
                first_look: false,
                reset: None,
                new_bytes: 0,
                repeated: None,
            })
    };
    // Known (from memory or a `stat`): no open or read.
    if let super::dirs::Seen::Unchanged(Some(m)) | super::dirs::Seen::Stated(Some(m)) = seen
        && let Some(same) = unchanged(&m)
    {
        return (same, None);
    }
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (LogObservation::Missing, Some(None));
        }
        Err(e) => {
            let why = super::progress::open_failed(&e);
            return (LogObservation::Unreadable { why }, None);
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            let why = format!("cannot stat: {e}");
            return (LogObservation::Unreadable { why }, None);
        }
    };
    let version = super::progress::version_of(&meta);
    let found = Some(Some(version));
    if let Some(why) = super::progress::not_a_file(&meta) {
        return (LogObservation::Unreadable { why }, found);
    }
    // Changed, says inotify, but already consumed: a write made after the last pass took in
    // the queue and before it read the log is reported at this pass. No read.
    if let Some(same) = unchanged(&version) {
        return (same, found);
    }
    (
        read_tail_from(&file, &meta, window, prev, patterns, format),
        found,
    )
}

/// The new part of the opened log `file`, whose metadata is `meta`.
fn read_tail_from(
    file: &std::fs::File,
    meta: &std::fs::Metadata,
    window: u64,
    prev: Option<&LogCursor>,
    patterns: &Patterns,
    format: &LineFormat,
) -> LogObservation {
    let size = meta.len();
    let mut reset = None;
    let mut from = match prev {
        Some(c) if c.inode != meta.ino() || c.dev != meta.dev() => {
            reset = Some(LogReset::Rotated);
            0
        }
        Some(c) if size < c.offset => {
            reset = Some(LogReset::Truncated);
            0
        }
        Some(c) => c.offset,
        None => 0,
    };
    let mut start = from.max(size.saturating_sub(window));
    // The bytes just before the cursor are checked against the ones consumed: read with the
    // new ones when the read starts at the cursor (one `pread` for both), else on their own.
    let check = prev.filter(|c| reset.is_none() && c.tail_hash.is_some());
    let mut read_at = match check {
        Some(c) if start == c.offset => c.offset.saturating_sub(TAIL_HASH_BYTES),
        _ => start,
    };
    let read = |at: u64| super::progress::read_from(file, at, size - at, size - at);
    let mut buf = match read(read_at) {
        Ok(b) => b,
        Err(e) => {
            return LogObservation::Unreadable {
                why: format!("cannot read: {e}"),
            };
        }
    };
    if let Some(c) = check
        && tail_hash(file, &buf, read_at, c.offset) != c.tail_hash
    {
        // Not the bytes consumed: the log was written again.
        reset = Some(LogReset::Rewritten);
        from = 0;
        start = size.saturating_sub(window);
        read_at = start;
        buf = match read(read_at) {
            Ok(b) => b,
            Err(e) => {
                return LogObservation::Unreadable {
                    why: format!("cannot read: {e}"),
                };
            }
        };
    }
    // From `start` on (the hash's bytes before it are not the new ones).
    let skip = usize::try_from(start - read_at)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    buf.drain(..skip);
    // Starting inside the file (not at a line boundary we recorded): drop the partial first line.
    let aligned = start == 0 || (prev.is_some() && reset.is_none() && start == from);
    let mut body: &[u8] = &buf;
    let mut offset = start;
    if !aligned {
        match body.iter().position(|b| matches!(*b, b'\n' | b'\r')) {
            Some(nl) => {
                body = &body[nl + 1..];
                offset += nl as u64 + 1;
            }
            None => body = &[],
        }
    }
    // Only complete lines are consumed; a partial last line is read again next pass. A carriage
    // return ends a line too: a progress bar (tqdm) redraws its line with `\r` and writes a
    // newline only when it is done.
    let complete = body
        .iter()
        .rposition(|b| matches!(*b, b'\n' | b'\r'))
        .map_or(0, |nl| nl + 1);
    let ParsedRead { records, repeated } = parse_read(
        &body[..complete],
        patterns,
        format,
        crate::plan::memory::RECENT_SIGNALS,
    );
    let end = offset + complete as u64;
    // Times of a file changed a moment ago may not change again on its next write (they tick
    // coarsely): kept only once settled, so a same-size rewrite right after this read is still
    // checked by its bytes (git's "racily clean" rule).
    let times =
        super::progress::settled_times(meta, std::time::SystemTime::now()).unwrap_or((0, 0));
    let hash = match prev {
        // Nothing consumed from where the last pass stopped: the same bytes end there.
        Some(c) if reset.is_none() && end == c.offset && c.tail_hash.is_some() => c.tail_hash,
        _ => tail_hash(file, &buf, start, end),
    };
    LogObservation::Read {
        cursor: LogCursor {
            dev: meta.dev(),
            inode: meta.ino(),
            offset: end,
            mtime_ns: times.0,
            ctime_ns: times.1,
            tail_hash: hash,
        },
        records,
        first_look: prev.is_none() || reset.is_some(),
        reset,
        new_bytes: complete as u64,
        repeated,
    }
}

/// The hash a [`LogCursor`] at `end` keeps: XXH3-64 of the [`TAIL_HASH_BYTES`] bytes before
/// `end` (fewer near the start), taken from `buf` (the file's bytes from `buf_start` on) when
/// it holds them, else read from `file`; `None` at offset 0 or when they cannot be read.
fn tail_hash(file: &std::fs::File, buf: &[u8], buf_start: u64, end: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let from = end.saturating_sub(TAIL_HASH_BYTES);
    if end == 0 {
        return None;
    }
    let in_buf = from
        .checked_sub(buf_start)
        .and_then(|lo| {
            Some((
                usize::try_from(lo).ok()?,
                usize::try_from(end - buf_start).ok()?,
            ))
        })
        .and_then(|(lo, hi)| buf.get(lo..hi));
    if let Some(bytes) = in_buf {
        return Some(xxhash_rust::xxh3::xxh3_64(bytes));
    }
    let mut bytes = [0u8; TAIL_HASH_BYTES as usize];
    let bytes = bytes.get_mut(..usize::try_from(end - from).ok()?)?;
    file.read_exact_at(bytes, from).ok()?;
    Some(xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Splits complete lines into records and keeps the classified ones; timestamps are read with
/// `format` in its zone. Every classified record is returned (see [`parse_read`] for what a
/// pass keeps).
pub fn parse_records(bytes: &[u8], patterns: &Patterns, format: &LineFormat) -> Vec<LogRecord> {
    parse_read(bytes, patterns, format, usize::MAX).records
}

/// What [`parse_read`] found in one read's complete lines.
#[derive(Debug, Default)]
pub struct ParsedRead {
    /// The classified records kept, in the file's order.
    pub records: Vec<LogRecord>,
    /// The cursor phrase the read's activity records repeat most (over all of them, kept or
    /// not), if any.
    pub repeated: Option<RepeatedCursor>,
}

/// One record before it is classified, borrowed from the read's text: the indices of its lines
/// in the read's line list (the first one and the continuation lines after it).
struct RawRecord<'a> {
    timestamp: Option<jiff::civil::DateTime>,
    /// The message part of the first line (after the timestamp).
    first: &'a str,
    lines: std::ops::Range<usize>,
}

impl<'a> RawRecord<'a> {
    /// The message for people: the first line's message and the continuation lines.
    fn message(&self, lines: &[&'a str]) -> std::borrow::Cow<'a, str> {
        let first = self.first;
        let more = &lines[self.lines.start + 1..self.lines.end];
        if more.is_empty() {
            return std::borrow::Cow::Borrowed(first);
        }
        let mut m =
            String::with_capacity(first.len() + more.iter().map(|l| l.len() + 1).sum::<usize>());
        m.push_str(first);
        for l in more {
            m.push('\n');
            m.push_str(l);
        }
        std::borrow::Cow::Owned(m)
    }
}

/// Splits one read's complete lines into records, classifies them, and keeps at most `keep` of
/// the last classified ones plus, from those before, the last of each class (a completion
/// claim, an error or an upload line far back in a long first look still counts). Only the
/// records kept are copied out of the read: a first look at a 64 KiB window holds nothing of the
/// lines it drops once it returns.
///
/// Which lines belong together: a line without a timestamp continues the record before it when
/// that record has a timestamp (a traceback under a logging line), when it is indented, or
/// while it closes a bare traceback (`Traceback (most recent call last):` up to its unindented
/// exception line). Otherwise it is a record of its own: a log written with `print`, which has
/// no timestamps at all, is one record per line.
pub fn parse_read(
    bytes: &[u8],
    patterns: &Patterns,
    format: &LineFormat,
    keep: usize,
) -> ParsedRead {
    let cleaned: std::borrow::Cow<'_, [u8]> = if bytes.contains(&0) {
        std::borrow::Cow::Owned(bytes.iter().copied().filter(|b| *b != 0).collect())
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    let text = String::from_utf8_lossy(&cleaned);
    let lines: Vec<&str> = text.split(['\n', '\r']).filter(|l| !l.is_empty()).collect();
    let mut raw: Vec<RawRecord<'_>> = Vec::new();
    // The last record is a bare traceback still waiting for its exception line.
    let mut open_traceback = false;
    // The last record is a bare traceback (a chained one may follow).
    let mut last_traceback = false;
    for (i, line) in lines.iter().enumerate() {
        let (timestamp, msg) = format.split(line);
        if timestamp.is_none()
            && let Some(last) = raw.last_mut()
        {
            let indented = line.starts_with([' ', '\t']);
            let chained = last_traceback
                && (line.starts_with("During handling of the above exception")
                    || line.starts_with("The above exception was the direct cause"));
            if chained {
                // Python's chained exceptions: the next traceback belongs to this record.
                open_traceback = true;
                last.lines.end = i + 1;
                continue;
            }
            if last.timestamp.is_some() || indented || open_traceback {
                if open_traceback && !indented {
                    // `ValueError: …` ends the traceback (a chained one starts again below).
                    open_traceback = line.starts_with("Traceback (most recent call last)");
                }
                last.lines.end = i + 1;
                continue;
            }
        }
        open_traceback =
            timestamp.is_none() && line.starts_with("Traceback (most recent call last)");
        last_traceback = open_traceback;
        raw.push(RawRecord {
            timestamp,
            first: msg,
            lines: i..i + 1,
        });
    }
    let classify = |r: &RawRecord<'_>| {
        let head = lines[r.lines.start];
        if patterns.completion.is_match(head) {
            Some(LineClass::Completion)
        } else if patterns.upload.is_match(head) {
            Some(LineClass::Upload)
        } else if patterns.activity.is_match(head) {
            Some(LineClass::Activity)
        } else if patterns.error.is_match(head)
            || lines[r.lines.start + 1..r.lines.end]
                .iter()
                .any(|l| patterns.error.is_match(l))
        {
            Some(LineClass::Error)
        } else {
            None
        }
    };
    let classified: Vec<(usize, LineClass)> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, r)| classify(r).map(|c| (i, c)))
        .collect();
    let repeated = repeated_cursor_in(
        classified
            .iter()
            .filter(|(_, c)| *c == LineClass::Activity)
            .map(|(i, _)| raw[*i].message(&lines)),
    );
    let cut = classified.len().saturating_sub(keep);
    let mut last_of_class: Vec<usize> = Vec::new();
    for (k, (_, class)) in classified[..cut].iter().enumerate().rev() {
        if !last_of_class.iter().any(|&j| classified[j].1 == *class) {
            last_of_class.push(k);
        }
    }
    let records = classified
        .iter()
        .enumerate()
        .filter(|(k, _)| *k >= cut || last_of_class.contains(k))
        .map(|(_, (i, class))| {
            let r = &raw[*i];
            LogRecord {
                class: *class,
                timestamp: r.timestamp.and_then(|t| format.tz.to_timestamp(t).ok()),
                message: r.message(&lines).into_owned(),
            }
        })
        .collect();
    ParsedRead { records, repeated }
}

/// How the timestamp at the start of a log line is written, and the zone it is in.
#[derive(Debug, Clone)]
pub struct LineFormat {
    /// The zone the timestamps are written in (Python logging writes local time).
    pub tz: jiff::tz::TimeZone,
    timestamp: TimestampFormat,
}

#[derive(Debug, Clone)]
enum TimestampFormat {
    /// Python logging's `%Y-%m-%d %H:%M:%S,%f` (milliseconds), parsed without allocation.
    Python,
    /// Any other strftime format: a regex finds the prefix, jiff parses it.
    Custom {
        prefix: regex::Regex,
        format: String,
    },
}

/// The strftime format of Python logging's default `asctime`.
pub const PYTHON_LOGGING_FORMAT: &str = "%Y-%m-%d %H:%M:%S,%f";

impl LineFormat {
    /// A format from a strftime string (see `spec.logs.timestamp_format`) in zone `tz`.
    /// Unsupported directives match any non-space run.
    pub fn new(format: &str, tz: jiff::tz::TimeZone) -> Self {
        let timestamp = if format == PYTHON_LOGGING_FORMAT {
            TimestampFormat::Python
        } else {
            let mut re = String::from("^");
            let mut chars = format.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    re.push_str(&regex::escape(&c.to_string()));
                    continue;
                }
                re.push_str(match chars.next() {
                    Some('Y') => r"\d{4}",
                    Some('m' | 'd' | 'H' | 'M' | 'S' | 'y' | 'I') => r"\d{2}",
                    Some('e') => r"[ \d]\d",
                    Some('j') => r"\d{3}",
                    Some('f') => r"\d+",
                    Some('z') => r"[+-]\d{2}:?\d{2}",
                    Some('b' | 'a' | 'p') => r"[A-Za-z]+",
                    Some('T') => r"\d{2}:\d{2}:\d{2}",
                    Some('F') => r"\d{4}-\d{2}-\d{2}",
                    Some('%') => "%",
                    _ => r"\S+",
                });
            }
            match regex::Regex::new(&re) {
                Ok(prefix) => TimestampFormat::Custom {
                    prefix,
                    format: format.to_string(),
                },
                Err(_) => TimestampFormat::Python,
            }
        };
        Self { tz, timestamp }
    }

    /// Python logging's format in zone `tz`.
    pub fn python(tz: jiff::tz::TimeZone) -> Self {
        Self::new(PYTHON_LOGGING_FORMAT, tz)
    }

    /// Splits a line into its timestamp (as civil time) and the rest, with the ` - ` separator
    /// trimmed; `None` when the line does not start with a timestamp (a continuation line).
    pub fn split<'a>(&self, line: &'a str) -> (Option<jiff::civil::DateTime>, &'a str) {
        match &self.timestamp {
            TimestampFormat::Python => split_timestamp(line),
            TimestampFormat::Custom { prefix, format } => {
                let Some(m) = prefix.find(line) else {
                    return (None, line);
                };
                match jiff::fmt::strtime::parse(format, m.as_str()).and_then(|t| t.to_datetime()) {
                    Ok(dt) => (Some(dt), line[m.end()..].trim_start_matches([' ', '-'])),
                    Err(_) => (None, line),
                }
            }
        }
    }
}

/// Splits `YYYY-MM-DD HH:MM:SS,mmm - rest` into the timestamp and `- rest`-less message.
/// The message keeps the level (`INFO - …`) so patterns can match it. Impossible dates
/// (month 13) are not timestamps.
pub fn split_timestamp(line: &str) -> (Option<jiff::civil::DateTime>, &str) {
    let Some(head) = line.get(..23) else {
        return (None, line);
    };
    let b = head.as_bytes();
    let shape_ok = b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && matches!(b[19], b',' | b'.');
    if !shape_ok {
        return (None, line);
    }
    let num = |r: std::ops::Range<usize>| head.get(r)?.parse::<i16>().ok();
    let small = |r: std::ops::Range<usize>| num(r).and_then(|v| i8::try_from(v).ok());
    let parsed = (|| {
        let ms = head.get(20..23)?.parse::<i32>().ok()?;
        jiff::civil::DateTime::new(
            num(0..4)?,
            small(5..7)?,
            small(8..10)?,
            small(11..13)?,
            small(14..16)?,
            small(17..19)?,
            ms * 1_000_000,
        )
        .ok()
    })();
    match parsed {
        Some(ts) => (Some(ts), line[23..].trim_start_matches([' ', '-'])),
        None => (None, line),
    }
}

/// Parses a number written with thousands separators (`61,000` → 61000).
pub fn parse_number(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(|c| *c != ',' && *c != '_').collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::RegexSet;

    fn patterns() -> Patterns {
        Patterns {
            upload: RegexSet::new(["Successfully uploaded:", "Uploading:"]).expect("valid"),
            activity: RegexSet::new([
                "Processed batch",
                r"Found [\d,]+ new files",
                "Querying Calibre database",
            ])
            .expect("valid"),
            error: RegexSet::new([" - (ERROR|CRITICAL) - ", "^Traceback "]).expect("valid"),
            completion: RegexSet::new(["Migration complete"]).expect("valid"),
        }
    }

    fn read_tail_utc(
        path: &Path,
        window: u64,
        prev: Option<&LogCursor>,
        p: &Patterns,
    ) -> LogObservation {
        read_tail(
            path,
            window,
            prev,
            p,
            &LineFormat::python(jiff::tz::TimeZone::UTC),
        )
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/logs")
            .join(name)
    }

    fn records(obs: &LogObservation) -> &[LogRecord] {
        match obs {
            LogObservation::Read { records, .. } => records,
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    fn healthy_log_has_uploads_and_activity() {
        let obs = read_tail_utc(&fixture("healthy.log"), 64 * 1024, None, &patterns());
        let recs = records(&obs);
        assert!(recs.iter().any(|r| r.class == LineClass::Upload));
        assert!(recs.iter().any(|r| r.class == LineClass::Activity));
        assert!(recs.iter().all(|r| r.timestamp.is_some()));
    }

    /// Regression: in a log without timestamps (a worker that `print`s), every line of a read
    /// was joined to the read's first line as one record, so only that line was matched: a
    /// worker showing progress only there was judged stuck, restarted and paused.
    #[test]
    fn a_print_style_log_is_one_record_per_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("w.log");
        std::fs::write(&log, "starting\nProcessed batch 1\n").expect("write");
        let first = read_tail_utc(&log, 64 * 1024, None, &patterns());
        let LogObservation::Read { cursor, .. } = &first else {
            panic!("read: {first:?}");
        };
        assert_eq!(records(&first).len(), 1, "{first:?}");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        std::io::Write::write_all(
            &mut f,
            b"querying...\nProcessed batch 2\nProcessed batch 3\nUploading: b.epub\n",
        )
        .expect("append");
        let next = read_tail_utc(&log, 64 * 1024, Some(cursor), &patterns());
        let got: Vec<(LineClass, &str)> = records(&next)
            .iter()
            .map(|r| (r.class, r.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (LineClass::Activity, "Processed batch 2"),
                (LineClass::Activity, "Processed batch 3"),
                (LineClass::Upload, "Uploading: b.epub"),
            ]
        );
        assert!(records(&next).iter().all(|r| r.timestamp.is_none()));
    }

    /// A traceback printed without timestamps (Python's default stderr) stays one error record,
    /// up to its exception line; the line after it is a record of its own.
    #[test]
    fn a_bare_traceback_is_one_record_up_to_its_exception_line() {
        let text = "Processed batch 1\n\
            Traceback (most recent call last):\n  File \"w.py\", line 3, in <module>\n    go()\n\
            KeyError: 'id'\nProcessed batch 2\n";
        let recs = parse_records(
            text.as_bytes(),
            &patterns(),
            &LineFormat::python(jiff::tz::TimeZone::UTC),
        );
        let got: Vec<(LineClass, &str)> =
            recs.iter().map(|r| (r.class, r.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (LineClass::Activity, "Processed batch 1"),
                (
                    LineClass::Error,
                    "Traceback (most recent call last):\n  File \"w.py\", line 3, in <module>\n    go()\nKeyError: 'id'"
                ),
                (LineClass::Activity, "Processed batch 2"),
            ]
        );
    }

    /// Regression: a progress bar redrawn with carriage returns (tqdm) was one record per
    /// newline (never, while the bar runs), so its progress never counted.
    #[test]
    fn a_progress_bar_redrawn_with_carriage_returns_is_one_record_per_redraw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("w.log");
        std::fs::write(&log, "start\n").expect("write");
        let first = read_tail_utc(&log, 64 * 1024, None, &patterns());
        let LogObservation::Read { cursor, .. } = &first else {
            panic!("read: {first:?}");
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        std::io::Write::write_all(
            &mut f,
            b"\rProcessed batch 1\rProcessed batch 2\r\nProcessed batch 3",
        )
        .expect("append");
        let next = read_tail_utc(&log, 64 * 1024, Some(cursor), &patterns());
        let got: Vec<&str> = records(&next).iter().map(|r| r.message.as_str()).collect();
        // The bar's last redraw is not complete yet: read when the next one ends it.
        assert_eq!(got, ["Processed batch 1", "Processed batch 2"]);
        let LogObservation::Read { cursor, .. } = &next else {
            panic!("read: {next:?}");
        };
        std::io::Write::write_all(&mut f, b"\rProcessed batch 4").expect("append");
        let last = read_tail_utc(&log, 64 * 1024, Some(cursor), &patterns());
        let got: Vec<&str> = records(&last).iter().map(|r| r.message.as_str()).collect();
        assert_eq!(got, ["Processed batch 3"]);
    }

    /// A chained Python exception printed bare stays one error record, its second traceback
    /// included.
    #[test]
    fn a_bare_chained_traceback_is_one_record() {
        let text = "Traceback (most recent call last):\n  File \"w.py\", line 3\nKeyError: 'a'\n\n\
            During handling of the above exception, another exception occurred:\n\n\
            Traceback (most recent call last):\n  File \"w.py\", line 5\nValueError: b\n\
            Processed batch 2\n";
        let recs = parse_records(
            text.as_bytes(),
            &patterns(),
            &LineFormat::python(jiff::tz::TimeZone::UTC),
        );
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0].class, LineClass::Error);
        assert!(recs[0].message.contains("During handling"), "{recs:?}");
        assert!(recs[0].message.ends_with("ValueError: b"), "{recs:?}");
        assert_eq!(recs[1].message, "Processed batch 2");
    }

    /// What a read keeps is bounded, and nothing far back that the planner needs is lost; the
    /// repeated cursor is counted over every activity line of the read, kept or not.
    #[test]
    fn a_read_keeps_the_last_records_and_the_last_of_each_class_before_them() {
        let mut text = String::from("2026-12-07 10:00:00,000 - ERROR - could not open book 3\n");
        for n in 0..200 {
            text.push_str(&format!(
                "2026-12-07 10:00:01,000 - INFO - Processed batch {n}: book.id > 61,000\n"
            ));
        }
        let parsed = parse_read(
            text.as_bytes(),
            &patterns(),
            &LineFormat::python(jiff::tz::TimeZone::UTC),
            10,
        );
        assert_eq!(parsed.records.len(), 12, "{:?}", parsed.records);
        assert_eq!(parsed.records[0].class, LineClass::Error);
        assert!(parsed.records[1].message.contains("Processed batch 189"));
        assert!(parsed.records[11].message.contains("Processed batch 199"));
        let repeated = parsed.repeated.expect("a repeated cursor");
        assert_eq!((repeated.value, repeated.times), (61_000, 200));
    }

    #[test]
    fn traceback_lines_join_the_record_before_them() {
        let obs = read_tail_utc(
            &fixture("error_burst_then_silence.log"),
            64 * 1024,
            None,
            &patterns(),
        );
        let last = records(&obs).last().expect("records");
        assert!(last.message.contains("ConnectionResetError"), "{last:?}");
        assert_eq!(last.class, LineClass::Error);
    }

    #[test]
    fn bad_bytes_are_survived() {
        let obs = read_tail_utc(&fixture("bad_bytes.log"), 64 * 1024, None, &patterns());
        let recs = records(&obs);
        assert!(
            recs.iter()
                .any(|r| r.message.contains("Successfully uploaded"))
        );
        assert!(recs.iter().all(|r| !r.message.contains('\0')));
    }

    #[test]
    fn window_bounds_the_read_and_drops_the_partial_first_line() {
        let obs = read_tail_utc(&fixture("healthy.log"), 200, None, &patterns());
        match obs {
            LogObservation::Read {
                new_bytes, records, ..
            } => {
                assert!(new_bytes <= 200);
                assert!(records.iter().all(|r| r.timestamp.is_some()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn second_read_sees_only_new_lines_and_truncation_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        std::fs::write(
            &path,
            "2025-03-02 09:14:05,002 - INFO - Uploading: a.epub\n",
        )
        .expect("write");
        let first = read_tail_utc(&path, 4096, None, &patterns());
        let LogObservation::Read { cursor, .. } = first else {
            panic!("{first:?}")
        };
        let again = read_tail_utc(&path, 4096, Some(&cursor), &patterns());
        assert!(records(&again).is_empty());
        std::fs::write(
            &path,
            "2025-03-02 09:15:05,002 - INFO - Uploading: b.epub\n",
        )
        .expect("rewrite");
        let after = read_tail_utc(
            &path,
            4096,
            Some(&LogCursor {
                offset: 10_000,
                ..cursor
            }),
            &patterns(),
        );
        let LogObservation::Read {
            reset, ref records, ..
        } = after
        else {
            panic!("{after:?}")
        };
        assert_eq!(reset, Some(LogReset::Truncated));
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn an_unchanged_log_reads_as_nothing_new_and_a_same_size_replacement_as_rotated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        let line = "2025-03-02 09:14:05,002 - INFO - Uploading: a.epub\n";
        std::fs::write(&path, line).expect("write");
        let first = read_tail_utc(&path, 4096, None, &patterns());
        let LogObservation::Read { cursor, .. } = first else {
            panic!("{first:?}")
        };
        // Unchanged (one stat, no read): exactly what a full read of nothing new returns.
        let again = read_tail_utc(&path, 4096, Some(&cursor), &patterns());
        assert_eq!(
            again,
            LogObservation::Read {
                cursor,
                records: Vec::new(),
                first_look: false,
                reset: None,
                new_bytes: 0,
                repeated: None,
            }
        );
        // Another file of the same size under the same name (rotation): not skipped.
        let other = dir.path().join("w.log.new");
        std::fs::write(&other, line.replace("a.epub", "b.epub")).expect("write other");
        std::fs::rename(&other, &path).expect("rotate");
        let rotated = read_tail_utc(&path, 4096, Some(&cursor), &patterns());
        let LogObservation::Read { reset, records, .. } = rotated else {
            panic!("{rotated:?}")
        };
        assert_eq!(reset, Some(LogReset::Rotated));
        assert_eq!(records.len(), 1);
        assert!(records[0].message.contains("b.epub"));
    }

    fn cursor_of(obs: &LogObservation) -> LogCursor {
        match obs {
            LogObservation::Read { cursor, .. } => *cursor,
            other => panic!("expected Read, got {other:?}"),
        }
    }

    fn reset_of(obs: &LogObservation) -> Option<LogReset> {
        match obs {
            LogObservation::Read { reset, .. } => *reset,
            other => panic!("expected Read, got {other:?}"),
        }
    }

    /// Regression: a log truncated and written again to at least its old size between two
    /// passes kept its device, inode and a size ≥ the cursor, so the cursor looked valid and
    /// the new lines were never read: no activity, a false stuck verdict. Both the same size
    /// (the "unchanged" shortcut) and a larger one (read on from the old offset) are caught.
    #[test]
    fn a_log_truncated_and_rewritten_to_at_least_its_old_size_is_read_again_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        let old = "2025-03-02 09:14:05,002 - INFO - Uploading: a.epub\n".repeat(3);
        for (name, new) in [
            (
                "same size",
                "2025-03-02 09:20:05,002 - INFO - Uploading: b.epub\n".repeat(3),
            ),
            (
                "larger",
                "2025-03-02 09:20:05,002 - INFO - Uploading: b.epub\n".repeat(5),
            ),
        ] {
            std::fs::write(&path, &old).expect("write");
            let first = read_tail_utc(&path, 4096, None, &patterns());
            let cursor = cursor_of(&first);
            assert_eq!(cursor.offset, old.len() as u64);
            // Truncated and written again in place (same inode), like a worker that reopens
            // its log with mode "w" and logs past the old size before the next pass.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open");
            std::io::Write::write_all(&mut f, new.as_bytes()).expect("rewrite");
            drop(f);
            let after = read_tail_utc(&path, 4096, Some(&cursor), &patterns());
            assert_eq!(reset_of(&after), Some(LogReset::Rewritten), "{name}");
            let recs = records(&after);
            assert_eq!(recs.len(), new.lines().count(), "{name}: {recs:?}");
            assert!(recs.iter().all(|r| r.message.contains("b.epub")), "{name}");
            assert_eq!(cursor_of(&after).offset, new.len() as u64, "{name}");
            // Read: nothing again.
            let again = read_tail_utc(&path, 4096, Some(&cursor_of(&after)), &patterns());
            assert!(records(&again).is_empty(), "{name}");
            assert_eq!(reset_of(&again), None, "{name}");
        }
    }

    #[test]
    fn appends_shorter_than_the_hashed_tail_never_look_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        std::fs::write(&path, "").expect("create");
        let mut cursor = cursor_of(&read_tail_utc(&path, 4096, None, &patterns()));
        assert_eq!(cursor.tail_hash, None, "nothing consumed, nothing to check");
        for i in 0..5 {
            // Lines of a few bytes (less than the hashed tail), one partial at first.
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            std::io::Write::write_all(&mut f, format!("x{i}").as_bytes()).expect("append");
            let partial = read_tail_utc(&path, 4096, Some(&cursor), &patterns());
            assert_eq!(reset_of(&partial), None);
            assert_eq!(
                cursor_of(&partial).offset,
                cursor.offset,
                "a partial line waits"
            );
            std::io::Write::write_all(&mut f, b"\n").expect("append");
            let next = read_tail_utc(&path, 4096, Some(&cursor_of(&partial)), &patterns());
            assert_eq!(reset_of(&next), None, "append {i}");
            assert_eq!(cursor_of(&next).offset, cursor.offset + 3);
            assert!(cursor_of(&next).tail_hash.is_some());
            cursor = cursor_of(&next);
        }
    }

    /// A log changed a moment ago keeps no times in its cursor (they tick coarsely and may
    /// not change on the next write): the next pass checks its bytes. A touch is nothing new.
    #[test]
    fn a_just_changed_log_keeps_no_times_and_a_touch_is_nothing_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        std::fs::write(
            &path,
            "2025-03-02 09:14:05,002 - INFO - Uploading: a.epub\n",
        )
        .expect("write");
        let cursor = cursor_of(&read_tail_utc(&path, 4096, None, &patterns()));
        let meta = std::fs::metadata(&path).expect("stat");
        if crate::observe::progress::settled_times(&meta, std::time::SystemTime::now()).is_none() {
            // (Unsettled now, so unsettled at the read before.)
            assert_eq!((cursor.mtime_ns, cursor.ctime_ns), (0, 0));
        }
        let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(earlier))
            .expect("touch");
        let touched = read_tail_utc(&path, 4096, Some(&cursor), &patterns());
        assert_eq!(reset_of(&touched), None);
        assert!(records(&touched).is_empty());
        let after = cursor_of(&touched);
        assert_eq!(
            (after.offset, after.tail_hash),
            (cursor.offset, cursor.tail_hash)
        );
    }

    /// With settled times, a log whose size and times are the cursor's is answered without
    /// opening it; another status-change time (a rewrite that set the mtime back) is not.
    #[test]
    fn only_a_log_with_the_cursors_size_and_both_times_is_answered_without_a_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Never created: any open would find it missing.
        let path = dir.path().join("absent.log");
        let cursor = LogCursor {
            dev: 1,
            inode: 2,
            offset: 300,
            mtime_ns: 1_000,
            ctime_ns: 2_000,
            tail_hash: Some(7),
        };
        let seen = |ctime_ns| crate::observe::progress::FileVersion {
            dev: 1,
            inode: 2,
            size: 300,
            mtime_ns: 1_000,
            ctime_ns,
        };
        let read = |ctime_ns| {
            read_tail_seen(
                &path,
                Some(seen(ctime_ns)),
                4096,
                Some(&cursor),
                &patterns(),
                &LineFormat::python(jiff::tz::TimeZone::UTC),
            )
        };
        assert_eq!(cursor_of(&read(2_000)), cursor);
        assert_eq!(read(2_001), LogObservation::Missing, "looked at again");
    }

    /// A cursor saved before the times and the hash were kept (`{dev, inode, offset}`) reads
    /// on from its offset, with no reset, and gains them.
    #[test]
    fn a_cursor_from_older_state_reads_on_from_its_offset_and_gains_a_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.log");
        let line = "2025-03-02 09:14:05,002 - INFO - Uploading: a.epub\n";
        std::fs::write(&path, line).expect("write");
        let now = cursor_of(&read_tail_utc(&path, 4096, None, &patterns()));
        let old: LogCursor = serde_json::from_str(&format!(
            "{{\"dev\": {}, \"inode\": {}, \"offset\": {}}}",
            now.dev, now.inode, now.offset
        ))
        .expect("an old cursor parses");
        assert_eq!((old.mtime_ns, old.tail_hash), (0, None));
        std::fs::write(&path, format!("{line}{}", line.replace("a.epub", "b.epub")))
            .expect("append");
        let next = read_tail_utc(&path, 4096, Some(&old), &patterns());
        assert_eq!(reset_of(&next), None);
        assert_eq!(records(&next).len(), 1);
        assert!(records(&next)[0].message.contains("b.epub"));
        assert!(cursor_of(&next).tail_hash.is_some());
        // An unchanged file is still one stat; the new fields round-trip.
        let text = serde_json::to_string(&cursor_of(&next)).expect("json");
        let back: LogCursor = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, cursor_of(&next));
    }

    #[test]
    fn timestamps_and_numbers() {
        let (ts, msg) = split_timestamp("2025-03-02 09:14:01,102 - INFO - hello");
        assert_eq!(
            ts.map(|t| t.to_string()),
            Some("2025-03-02T09:14:01.102".to_string())
        );
        assert_eq!(msg, "INFO - hello");
        assert_eq!(split_timestamp("  File \"x.py\", line 3").0, None);
        assert_eq!(parse_number("61,000"), Some(61_000));
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn the_same_range_loop_fixture_repeats_its_cursor() {
        let patterns = Patterns {
            upload: regex::RegexSet::new(["Uploading:"]).expect("valid"),
            activity: regex::RegexSet::new(["Querying Calibre database", "Processed batch"])
                .expect("valid"),
            error: regex::RegexSet::new(["ERROR"]).expect("valid"),
            completion: regex::RegexSet::new(["Migration complete"]).expect("valid"),
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/logs/same_range_loop.log");
        let obs = read_tail(
            &path,
            64 * 1024,
            None,
            &patterns,
            &LineFormat::python(jiff::tz::TimeZone::UTC),
        );
        let LogObservation::Read {
            repeated: Some(r), ..
        } = obs
        else {
            panic!("{obs:?}")
        };
        assert_eq!(r.value, 61_000);
        assert_eq!(r.what, "book.id > 61,000");
        assert!(r.times >= 3, "{r:?}");
    }

    #[test]
    fn custom_timestamp_formats_parse_and_impossible_dates_are_not_timestamps() {
        let iso = LineFormat::new("%Y-%m-%dT%H:%M:%S", jiff::tz::TimeZone::UTC);
        let (ts, rest) = iso.split("2025-03-02T09:14:01 INFO hello");
        assert_eq!(
            ts.map(|t| t.to_string()),
            Some("2025-03-02T09:14:01".into())
        );
        assert_eq!(rest, "INFO hello");
        assert_eq!(iso.split("  File \"x.py\"").0, None);
        let py = LineFormat::python(jiff::tz::TimeZone::UTC);
        assert_eq!(
            py.split("2025-13-02 09:14:01,102 - INFO - x").0,
            None,
            "month 13"
        );
        assert_eq!(
            py.split("2025-02-30 09:14:01,102 - INFO - x").0,
            None,
            "30 February"
        );
    }
}
