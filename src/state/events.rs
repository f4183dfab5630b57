//! The events log (`STATE_DIR/events.log`, the seed's `auto_restart.log`): one line per decision
//! and action, `RFC 3339 time  message`, appended and never truncated. The time is UTC with
//! milliseconds, fixed width (`2026-12-02T06:00:13.620Z`), so the file sorts as text.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only events log that also echoes each line to stderr.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    echo: bool,
}

impl EventLog {
    /// Opens (creating) `state_dir/events.log`; if it cannot be opened, events still go to
    /// stderr and the failure is reported once.
    pub fn open(state_dir: &Path, echo: bool) -> Self {
        let path = state_dir.join("events.log");
        let file =
            super::private::ensure_dir(state_dir).and_then(|()| super::private::open_append(&path));
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "automon: cannot open {}: {e}; events go to stderr only",
                    path.display()
                );
                None
            }
        };
        Self { path, file, echo }
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one event at `now`: in the file, on stderr when echoing, and as a `tracing` event
    /// (target `automon::events`, level info) so structured logs carry it.
    pub fn record(&mut self, now: jiff::Timestamp, message: &str) {
        tracing::info!(target: "automon::events", "{message}");
        let local = now
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        // Each line is formatted first and written with one call: a whole line per write(2)
        // (O_APPEND keeps it in one piece), not one system call per formatted part.
        if self.echo {
            let line = format!("{local}  {message}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some(f) = &mut self.file
            && let Err(e) = f.write_all(format!("{}  {message}\n", record_time(now)).as_bytes())
        {
            eprintln!("automon: cannot write {}: {e}", self.path.display());
            self.file = None;
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
}
