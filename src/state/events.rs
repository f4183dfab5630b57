//! The events log (`STATE_DIR/events.log`, the seed's `auto_restart.log`): one line per decision
//! and action, `RFC 3339 time  message`, appended and never truncated.
//!
//! A failed write (a full disk) does not abandon the file: the next event opens it again, first
//! closing a torn last line with a newline so the fragment cannot swallow the next line; each
//! line is flushed to disk (`sync_data`) as the fix history's are. A file deleted or replaced
//! under automon (logrotate, a recreated state directory) is opened again by path
//! ([`EventLog::reopen_if_replaced`]).

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

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
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    echo: bool,
    /// Why the last write failed, until one succeeds.
    failure: Option<String>,
}

/// Opens `path` for appending (creating it) and closes a torn last line.
fn open_for_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
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
            file,
            echo,
            failure,
        }
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the file cannot be written now, if it cannot (the last write or open failed).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Opens the file again by path when the open one was deleted or replaced (compares the
    /// inode the path names with the open file's).
    pub fn reopen_if_replaced(&mut self) {
        let Some(f) = &self.file else {
            return;
        };
        let held = f.metadata().map(|m| (m.dev(), m.ino())).ok();
        let named = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if held != named {
            self.file = None;
        }
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
        // Each line is formatted first and written with one call: a whole line per write(2)
        // (O_APPEND keeps it in one piece), not one system call per formatted part.
        if self.echo {
            let local = now
                .to_zoned_datetime(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string();
            crate::stdio::err(&format!("{local}  {message}\n"));
        }
        let line = format!(
            "{}  {message}\n",
            now.round(jiff::Unit::Millisecond).unwrap_or(now)
        );
        let result = match self.file.take() {
            Some(f) => Ok(f),
            None => open_for_append(&self.path),
        }
        .and_then(|mut f| {
            f.write_all(line.as_bytes())?;
            f.sync_data()?;
            self.file = Some(f);
            Ok(())
        });
        match result {
            Ok(()) => self.failure = None,
            Err(e) => {
                if self.failure.is_none() {
                    crate::errln!(
                        "automon: cannot write {}: {e}; later events try again",
                        self.path.display()
                    );
                }
                self.failure = Some(e.to_string());
                // A partial line may be in the file: the next open closes it.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "1970-01-01T00:00:00Z  next event"
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
        assert_eq!(text, "1970-01-01T00:00:00Z  written\n");
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
        assert_eq!(text, "1970-01-01T00:00:00Z  two\n");
    }
}
