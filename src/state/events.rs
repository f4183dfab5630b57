//! The events log (`STATE_DIR/events.log`, the seed's `auto_restart.log`): one line per decision
//! and action, `RFC 3339 time  message`, appended and never truncated.

use std::io::Write;
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
}

impl EventLog {
    /// Opens (creating) `state_dir/events.log`; if it cannot be opened, events still go to
    /// stderr and the failure is reported once.
    pub fn open(state_dir: &Path, echo: bool) -> Self {
        let path = state_dir.join("events.log");
        let file = std::fs::create_dir_all(state_dir).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
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
            && let Err(e) = f.write_all(
                format!(
                    "{}  {message}\n",
                    now.round(jiff::Unit::Millisecond).unwrap_or(now)
                )
                .as_bytes(),
            )
        {
            eprintln!("automon: cannot write {}: {e}", self.path.display());
            self.file = None;
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
}
