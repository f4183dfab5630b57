//! The events log (`STATE_DIR/events.log`, the seed's `auto_restart.log`): one line per decision
//! and action, `RFC 3339 time  message`, appended and never truncated. The time is UTC with
//! milliseconds, fixed width (`2026-12-02T06:00:13.620Z`), so the file sorts as text; the file
//! is 0600 in a 0700 directory ([`super::private`]).
//!
//! A failed write (a full disk) does not abandon the file: the next event opens it again, first
//! closing a torn last line with a newline so the fragment cannot swallow the next line; lines
//! are flushed to disk (`sync_data`) as the fix history's are, once per pass ([`EventLog::sync`]). A file deleted or replaced
//! under automon (logrotate, a recreated state directory) is opened again by path
//! ([`EventLog::reopen_if_replaced`]).

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The structured facts of one event, for `--log-format json`, so that
/// `jq 'select(.worker==3)'` finds a worker's events. Absent facts are left out of the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// The worker the event is about.
    pub worker: Option<u32>,
    /// Its process.
    pub pid: Option<i32>,
    /// Its phase after this pass (`Progressing`, `Stuck`, …).
    pub phase: Option<&'a str>,
    /// The action taken: `start`, `stop`, `diagnose`, `code-fix`, `rollback`, `started`,
    /// `stopped`.
    pub action: Option<&'a str>,
    /// Its checkpoint.
    pub checkpoint: Option<u64>,
    /// Why the action was taken.
    pub reason: Option<&'a str>,
}

/// The worker an event's text is about: `worker 3: …`, `worker 3 exited …`, `ALERT: worker 3: …`.
pub fn mentioned_worker(message: &str) -> Option<u32> {
    let rest = message
        .strip_prefix("ALERT: ")
        .or_else(|| message.strip_prefix("FAILED: "))
        .unwrap_or(message)
        .strip_prefix("worker ")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// An append-only events log that also echoes each line to stderr.
///
/// With a [`super::StateWriter`] ([`EventLog::write_through`]) the file is written on the
/// writer thread, in order with the state saves; the caller never waits for the disk.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    /// The open file and whether lines were written since the last sync; locked only by the
    /// thread that writes (held across the I/O).
    file: Arc<Mutex<OpenFile>>,
    echo: bool,
    /// Lines recorded since [`EventLog::capture`], for an operator waiting on a pass.
    captured: Option<Vec<String>>,
    /// Why the last write failed, until one succeeds (locked only briefly, never across I/O).
    failure: Arc<Mutex<Option<String>>>,
    /// Where the file writes go; `None`: written at once by the caller.
    writer: Option<super::StateWriter>,
}

#[derive(Debug, Default)]
struct OpenFile {
    file: Option<std::fs::File>,
    /// Lines written since the last [`EventLog::sync`].
    dirty: bool,
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens `path` for appending (creating it) and closes a torn last line.
fn open_for_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        super::private::ensure_dir(dir)?;
    }
    let mut f = super::private::open_append(path)?;
    let len = f.metadata()?.len();
    let mut last = [0u8; 1];
    if len > 0 && f.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(f)
}

impl EventLog {
    /// Opens (creating) `state_dir/events.log`; if it cannot be opened, events still go to
    /// stderr, the failure is reported once, and each later event tries the file again.
    pub fn open(state_dir: &Path, echo: bool) -> Self {
        let path = state_dir.join("events.log");
        let (file, failure) = match open_for_append(&path) {
            Ok(f) => (Some(f), None),
            Err(e) => {
                crate::errln!(
                    "automon: cannot open {}: {e}; events go to stderr until it can be written",
                    path.display()
                );
                (None, Some(e.to_string()))
            }
        };
        Self {
            path,
            file: Arc::new(Mutex::new(OpenFile { file, dirty: false })),
            echo,
            failure: Arc::new(Mutex::new(failure)),
            captured: None,
            writer: None,
        }
    }

    /// From now on the file is written on `writer`'s thread (see the type's doc).
    pub fn write_through(&mut self, writer: super::StateWriter) {
        self.writer = Some(writer);
    }

    /// Runs `job` on the writer thread, or here without one.
    fn io(&self, what: &'static str, job: impl FnOnce() + Send + 'static) {
        match &self.writer {
            Some(w) => w.submit(what, job),
            None => job(),
        }
    }

    /// Starts keeping the messages recorded from now on (what a pass did, for the operator
    /// whose request it took); [`EventLog::take_captured`] hands them over.
    pub fn capture(&mut self) {
        self.captured.get_or_insert_with(Vec::new);
    }

    /// The messages recorded since [`EventLog::capture`]; capturing stops.
    pub fn take_captured(&mut self) -> Vec<String> {
        self.captured.take().unwrap_or_default()
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the file cannot be written now, if it cannot (the last write or open failed).
    pub fn failure(&self) -> Option<String> {
        guard(&self.failure).clone()
    }

    /// Opens the file again by path when the open one was deleted or replaced (compares the
    /// inode the path names with the open file's).
    pub fn reopen_if_replaced(&mut self) {
        let (file, path) = (self.file.clone(), self.path.clone());
        self.io("checking events.log", move || {
            let mut open = guard(&file);
            let Some(f) = &open.file else {
                return;
            };
            let held = f.metadata().map(|m| (m.dev(), m.ino())).ok();
            let named = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
            if held != named {
                open.file = None;
            }
        });
    }

    /// Records one event at `now`: in the file, on stderr when echoing, and as a `tracing` event
    /// (target `automon::events`, level info) so structured logs carry it.
    pub fn record(&mut self, now: jiff::Timestamp, message: &str) {
        self.record_with(now, message, &EventFields::default());
    }

    /// Records one event with its structured facts (see [`EventFields`]); a worker not given
    /// is taken from the text (`worker 3: …`).
    pub fn record_with(&mut self, now: jiff::Timestamp, message: &str, fields: &EventFields<'_>) {
        tracing::info!(
            target: "automon::events",
            worker = fields.worker.or_else(|| mentioned_worker(message)),
            pid = fields.pid,
            phase = fields.phase,
            action = fields.action,
            checkpoint = fields.checkpoint,
            reason = fields.reason,
            "{message}"
        );
        if let Some(c) = &mut self.captured {
            c.push(message.to_string());
        }
        // Each line is formatted first and written with one call: a whole line per write(2)
        // (O_APPEND keeps it in one piece), not one system call per formatted part.
        if self.echo {
            let local = now
                .to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string();
            crate::stdio::err(&format!("{local}  {message}\n"));
        }
        // One line per event, so the file sorts as text: a message of several lines (a
        // refused manifest's errors) is joined with "; " (a space after a colon).
        let flat;
        let one_line = if message.contains('\n') {
            flat = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .fold(String::new(), |mut acc, l| {
                    if !acc.is_empty() {
                        acc.push_str(if acc.ends_with(':') { " " } else { "; " });
                    }
                    acc.push_str(l);
                    acc
                });
            flat.as_str()
        } else {
            message
        };
        let line = format!("{}  {one_line}\n", record_time(now));
        let (file, failure, path) = (self.file.clone(), self.failure.clone(), self.path.clone());
        self.io("appending to events.log", move || {
            let mut open = guard(&file);
            let result = match open.file.take() {
                Some(f) => Ok(f),
                None => open_for_append(&path),
            }
            .and_then(|mut f| {
                f.write_all(line.as_bytes())?;
                open.file = Some(f);
                open.dirty = true;
                Ok(())
            });
            drop(open);
            let mut failure = guard(&failure);
            match result {
                Ok(()) => *failure = None,
                Err(e) => {
                    if failure.is_none() {
                        crate::errln!(
                            "automon: cannot write {}: {e}; later events try again",
                            path.display()
                        );
                    }
                    *failure = Some(e.to_string());
                    // A partial line may be in the file: the next open closes it.
                }
            }
        });
    }
}

impl EventLog {
    /// Flushes the lines written since the last call to disk (`sync_data`), as the fix history
    /// does; the loop calls it once per pass (not per line), and dropping the log calls it.
    pub fn sync(&mut self) {
        let (file, failure, path) = (self.file.clone(), self.failure.clone(), self.path.clone());
        self.io("flushing events.log", move || {
            let mut open = guard(&file);
            if !std::mem::take(&mut open.dirty) {
                return;
            }
            if let Some(f) = &open.file
                && let Err(e) = f.sync_data()
            {
                open.file = None;
                drop(open);
                let mut failure = guard(&failure);
                if failure.is_none() {
                    crate::errln!("automon: cannot flush {}: {e}", path.display());
                }
                *failure = Some(e.to_string());
            }
        });
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.sync();
    }
}

/// `now` as the events log writes it: UTC, RFC 3339, always three fractional digits
/// (`2026-12-02T06:00:13.620Z`; truncated, not rounded, so a line never claims a later
/// millisecond than the event's).
pub fn record_time(now: jiff::Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_log_times_are_fixed_width_with_milliseconds() {
        let cases = [
            ("2026-12-02T06:00:13.62Z", "2026-12-02T06:00:13.620Z"),
            ("2026-12-02T06:00:13Z", "2026-12-02T06:00:13.000Z"),
            ("2026-12-02T06:00:13.999999Z", "2026-12-02T06:00:13.999Z"),
            ("2026-12-02T06:00:13.1+01:00", "2026-12-02T05:00:13.100Z"),
        ];
        for (input, want) in cases {
            let t: jiff::Timestamp = input.parse().expect("timestamp");
            assert_eq!(record_time(t), want, "{input}");
        }
    }

    #[test]
    fn the_events_file_is_private_and_its_lines_sort_as_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = EventLog::open(dir.path(), false);
        for t in [
            "2026-12-02T06:00:09.5Z",
            "2026-12-02T06:00:10Z",
            "2026-12-02T06:00:10.05Z",
        ] {
            log.record(t.parse().expect("timestamp"), "event");
        }
        let text = std::fs::read_to_string(log.path()).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        assert_eq!(lines, sorted, "{text}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
        let mode = std::fs::metadata(log.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Regression (fresh-clone user test): a SIGHUP refusing a manifest with three errors
    /// wrote three lines, the last two without a time, so the file no longer sorted as text.
    #[test]
    fn a_message_of_several_lines_is_one_timed_line_in_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = EventLog::open(dir.path(), false);
        let t: jiff::Timestamp = "2026-12-02T06:00:09.5Z".parse().expect("timestamp");
        log.record(
            t,
            "SIGHUP: not taken:\nw.yaml:3:5: a: bad\n\nw.yaml:4:5: b: bad\n",
        );
        log.record(t, "next");
        log.sync();
        let text = std::fs::read_to_string(log.path()).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "2026-12-02T06:00:09.500Z  SIGHUP: not taken: w.yaml:3:5: a: bad; w.yaml:4:5: b: bad",
                "2026-12-02T06:00:09.500Z  next"
            ],
            "{text}"
        );
    }

    #[test]
    fn the_worker_of_an_events_text() {
        assert_eq!(mentioned_worker("worker 3: started pid 10: w"), Some(3));
        assert_eq!(mentioned_worker("worker 12 exited with status 1"), Some(12));
        assert_eq!(
            mentioned_worker("ALERT: worker 0: 3 fix attempts failed"),
            Some(0)
        );
        assert_eq!(mentioned_worker("scale down: disk 95% busy"), None);
        assert_eq!(mentioned_worker("worker x"), None);
    }

    #[test]
    fn a_torn_last_line_is_closed_before_the_next_event_is_appended() {
        // Regression (issue 26, item 7): after one failed write the log was abandoned, and the
        // next run appended onto the fragment.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("events.log"),
            "2026-01-01T00:00:00Z  half a li",
        )
        .expect("torn");
        let mut log = EventLog::open(dir.path(), false);
        log.record(jiff::Timestamp::UNIX_EPOCH, "next event");
        let text = std::fs::read_to_string(log.path()).expect("read");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "2026-01-01T00:00:00Z  half a li",
                "1970-01-01T00:00:00.000Z  next event"
            ]
        );
    }

    #[test]
    fn an_events_log_that_could_not_be_opened_is_written_once_it_can_be() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The path is a directory: opening fails; events go on without the file.
        std::fs::create_dir(dir.path().join("events.log")).expect("block");
        let mut log = EventLog::open(dir.path(), false);
        log.record(jiff::Timestamp::UNIX_EPOCH, "lost to the file");
        assert!(log.failure().is_some());
        std::fs::remove_dir(dir.path().join("events.log")).expect("unblock");
        log.record(jiff::Timestamp::UNIX_EPOCH, "written");
        assert_eq!(log.failure(), None);
        let text = std::fs::read_to_string(log.path()).expect("read");
        assert_eq!(text, "1970-01-01T00:00:00.000Z  written\n");
    }

    #[test]
    fn a_replaced_events_log_is_opened_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = EventLog::open(dir.path(), false);
        log.record(jiff::Timestamp::UNIX_EPOCH, "one");
        std::fs::rename(log.path(), dir.path().join("events.log.1")).expect("rotate");
        log.reopen_if_replaced();
        log.record(jiff::Timestamp::UNIX_EPOCH, "two");
        let text = std::fs::read_to_string(log.path()).expect("read");
        assert_eq!(text, "1970-01-01T00:00:00.000Z  two\n");
    }
}
