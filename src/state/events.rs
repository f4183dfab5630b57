//! The events log (`STATE_DIR/events.log`, the seed's `auto_restart.log`): one line per decision
//! and action, `RFC 3339 time  message`, appended and never truncated. The time is UTC with
//! milliseconds, fixed width (`2026-12-02T06:00:13.620Z`), so the file sorts as text; the file
//! is 0600 in a 0700 directory ([`super::private`]).
//!
//! A failed write (a full disk) does not abandon the file: the next event opens it again, first
//! closing a torn last line with a newline so the fragment cannot swallow the next line; each
//! line is flushed to disk (`sync_data`) as the fix history's are. A file deleted or replaced
//! under automon (logrotate, a recreated state directory) is opened again by path
//! ([`EventLog::reopen_if_replaced`]).

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// An append-only events log that also echoes each line to stderr.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    echo: bool,
    /// Lines recorded since [`EventLog::capture`], for an operator waiting on a pass.
    captured: Option<Vec<String>>,
    /// Why the last write failed, until one succeeds.
    failure: Option<String>,
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
            file,
            echo,
            failure,
            captured: None,
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
        tracing::info!(target: "automon::events", "{message}");
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
        let line = format!("{}  {message}\n", record_time(now));
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
