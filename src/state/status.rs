//! `STATE_DIR/status.json`: what the control loop last did, written atomically after every pass
//! for `automon status` (which reads it; whether automon still runs comes from the lock, see
//! [`super::running_instance`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the status inside the state directory.
pub const STATUS_FILE: &str = "status.json";

/// The loop's status after its last pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The WorkerSet's name (`metadata.name`).
    pub workerset: String,
    /// The automon process that wrote it.
    pub pid: u32,
    /// When that process started its run (RFC 3339, UTC).
    pub started_at: jiff::Timestamp,
    /// True for the control loop (`--watch`), false for a one-pass `apply`.
    pub watch: bool,
    /// When the last pass ended (RFC 3339, UTC).
    pub last_pass_at: jiff::Timestamp,
    /// How long the last pass took, in milliseconds.
    pub last_pass_ms: u64,
    /// Passes made by this process.
    pub passes: u64,
    /// Workers by phase (snake_case phase name → count); every phase is present.
    pub phases: BTreeMap<String, usize>,
    /// How many workers should run now.
    pub desired: u32,
    /// How many worker processes are running (starting, discovering, progressing, stuck or
    /// stopping).
    pub running: usize,
}

/// The status file's path.
pub fn status_file(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes the status atomically (temp file in the same directory, then rename).
///
/// # Errors
/// The I/O error, for the caller to name the file.
pub fn write_status(state_dir: &Path, status: &DaemonStatus) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    super::private::ensure_dir(state_dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
    tmp.write_all(&json)?;
    tmp.write_all(b"\n")?;
    tmp.persist(status_file(state_dir)).map_err(|e| e.error)?;
    Ok(())
}

/// Reads the status; `Ok(None)` when no pass has written one yet.
///
/// # Errors
/// A message naming the file when it is unreadable or not a status.
pub fn read_status(state_dir: &Path) -> Result<Option<DaemonStatus>, String> {
    let path = status_file(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a status file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_absent_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_status(dir.path()), Ok(None));
        let s = DaemonStatus {
            workerset: "m".into(),
            pid: 7,
            started_at: jiff::Timestamp::UNIX_EPOCH,
            watch: true,
            last_pass_at: jiff::Timestamp::UNIX_EPOCH,
            last_pass_ms: 12,
            passes: 3,
            phases: BTreeMap::from([("progressing".to_string(), 2)]),
            desired: 4,
            running: 2,
        };
        write_status(dir.path(), &s).expect("write");
        assert_eq!(read_status(dir.path()), Ok(Some(s)));
        std::fs::write(status_file(dir.path()), b"{").expect("corrupt");
        assert!(
            read_status(dir.path())
                .expect_err("corrupt")
                .contains("status.json: not a status file")
        );
    }
}
