//! Operator requests (`automon pause` / `resume` / `reset-params`) as files in `STATE_DIR/requests/`.
//!
//! The running loop is the only writer of `state.json`, so a command that wants to change memory
//! leaves a request file (`<unix-ms>-<pause|resume>-<worker>`, written atomically) and wakes the
//! loop with SIGUSR1; the loop applies requests at the start of its next pass, in file-name
//! order, and deletes them after saving. Without a running loop the command applies the request
//! itself under the lock.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::WorkerId;

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Stop the worker and keep it stopped.
    Pause,
    /// Let the worker run again (also clears an escalation pause or failure).
    Resume,
    /// Drop the parameter values config fixes set; the manifest's defaults apply from the
    /// worker's next start.
    ResetParams,
}

/// One request, and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRequest {
    /// Pause or resume.
    pub kind: RequestKind,
    /// The worker.
    pub worker: WorkerId,
    /// The request file (deleted once applied).
    pub file: PathBuf,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("requests")
}

/// Writes a request file; returns its path.
///
/// # Errors
/// I/O errors creating the directory or writing the file.
pub fn write_request(
    state_dir: &Path,
    kind: RequestKind,
    worker: WorkerId,
) -> std::io::Result<PathBuf> {
    let d = dir(state_dir);
    super::private::ensure_dir(state_dir)?;
    super::private::ensure_dir(&d)?;
    let word = match kind {
        RequestKind::Pause => "pause",
        RequestKind::Resume => "resume",
        RequestKind::ResetParams => "resetparams",
    };
    let ms = jiff::Timestamp::now().as_millisecond();
    let path = d.join(format!("{ms:015}-{word}-{worker}"));
    let tmp = tempfile::NamedTempFile::new_in(&d)?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// Reads pending requests in order; unparsable file names are ignored.
pub fn read_requests(state_dir: &Path) -> Vec<OperatorRequest> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            let name = file.file_name()?.to_str()?.to_string();
            let mut parts = name.splitn(3, '-');
            let _stamp = parts.next()?.parse::<u64>().ok()?;
            let kind = match parts.next()? {
                "pause" => RequestKind::Pause,
                "resume" => RequestKind::Resume,
                "resetparams" => RequestKind::ResetParams,
                _ => return None,
            };
            let worker = WorkerId(parts.next()?.parse().ok()?);
            Some(OperatorRequest { kind, worker, file })
        })
        .collect()
}

/// Deletes applied request files (missing ones are fine).
pub fn remove_requests(requests: &[OperatorRequest]) {
    for r in requests {
        let _ = std::fs::remove_file(&r.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_order() {
        let d = tempfile::tempdir().expect("tempdir");
        write_request(d.path(), RequestKind::Pause, WorkerId(3)).expect("write");
        std::thread::sleep(std::time::Duration::from_millis(2));
        write_request(d.path(), RequestKind::Resume, WorkerId(3)).expect("write");
        let r = read_requests(d.path());
        assert_eq!(
            r.iter().map(|r| r.kind).collect::<Vec<_>>(),
            [RequestKind::Pause, RequestKind::Resume]
        );
        remove_requests(&r);
        assert!(read_requests(d.path()).is_empty());
    }
}
