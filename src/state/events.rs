//! The events log (`STATE_DIR/events.log`, the seed's `auto_restart.log`): one line per decision
//! and action, `RFC 3339 time  message`, appended and never truncated.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only events log that also echoes each line to stderr.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    echo: bool,
    /// Lines recorded since [`EventLog::capture`], for an operator waiting on a pass.
    captured: Option<Vec<String>>,
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
        Self {
            path,
            file,
            echo,
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

    /// Records one event at `now`: in the file, on stderr when echoing, and as a `tracing` event
    /// (target `automon::events`, level info) so structured logs carry it.
    pub fn record(&mut self, now: jiff::Timestamp, message: &str) {
        tracing::info!(target: "automon::events", "{message}");
        if let Some(c) = &mut self.captured {
            c.push(message.to_string());
        }
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
