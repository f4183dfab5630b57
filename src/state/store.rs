//! Atomic persistence of [`Memory`] as `state.json`: temp file, fsync, rename, fsync of the
//! directory. A corrupt file is an error naming it, never a silent reset.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::plan::Memory;
use crate::plan::memory::MEMORY_VERSION;

/// File name of the persisted memory inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// Reading or writing the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a state file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error(
        "{path}: corrupt state file: {why} (run `automon apply --reset-state` to move it aside and start over; automon never resets it silently)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Written by a newer automon.
    #[error(
        "{path}: state version {found} is newer than this automon understands ({MEMORY_VERSION})"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// Loads the memory from `state_dir`; an absent file is empty memory.
///
/// # Errors
/// [`StateError`] for an unreadable, corrupt or too-new file.
pub fn load_memory(state_dir: &Path) -> Result<Memory, StateError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Memory::default()),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    // The version first, alone: a file from a newer automon may not parse as this one's
    // memory at all, and must be called newer, never "corrupt" (whose advice, `--reset-state`,
    // would throw its memory away).
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        #[serde(default)]
        version: u32,
    }
    let corrupt = |e: serde_json::Error| StateError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    };
    let found = serde_json::from_slice::<VersionOnly>(&bytes)
        .map_err(corrupt)?
        .version;
    if found > MEMORY_VERSION {
        return Err(StateError::Version { path, found });
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        // Parsed again, tracking where, only to say which worker and field (the first parse
        // stays as fast as it was: `get` and every start read the whole file).
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, Memory>(&mut de) {
            Err(located) => StateError::Corrupt {
                path: path.clone(),
                why: format!(
                    "{}{}",
                    where_in_memory(located.path()),
                    located.into_inner()
                ),
            },
            Ok(_) => corrupt(e),
        }
    })
}

/// Where in the memory a parse failed, as a prefix for the error: `worker 3, recent_signals: `
/// for a worker's field, `desired_count: ` for another, nothing at the top level.
fn where_in_memory(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let names: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    match names.as_slice() {
        [] => String::new(),
        [workers, id] if workers == "workers" => format!("worker {id}: "),
        [workers, id, rest @ ..] if workers == "workers" => {
            format!("worker {id}, {}: ", rest.join("."))
        }
        other => format!("{}: ", other.join(".")),
    }
}

/// Writes the memory atomically to `state_dir/state.json`, creating the directory.
///
/// # Errors
/// [`StateError::Io`] naming the file.
pub fn save_memory(state_dir: &Path, memory: &Memory) -> Result<(), StateError> {
    write_state(state_dir, &serialize_memory(memory)?)
}

/// `state.json`'s bytes for `memory`. Compact, not pretty: at 2,000 workers the indentation
/// alone was a third of the file, written and fsynced whenever a pass changed something
/// (`jq . state.json` reads it).
///
/// # Errors
/// [`StateError::Io`] naming the file, should the memory not serialise.
pub fn serialize_memory(memory: &Memory) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(memory).map_err(|e| StateError::Io {
        path: PathBuf::from(STATE_FILE),
        source: std::io::Error::other(e),
    })
}

/// Writes `json` (from [`serialize_memory`]) as `state.json` in `state_dir`: a temp file,
/// fsync, rename over the old one, fsync of the directory.
///
/// # Errors
/// [`StateError::Io`] naming the file.
pub fn write_state(state_dir: &Path, json: &[u8]) -> Result<(), StateError> {
    let path = state_dir.join(STATE_FILE);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    super::private::ensure_dir(state_dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(state_dir).map_err(io)?;
    tmp.write_all(json).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Removes the temp files (`.tmpXXXXXX`, from `tempfile`) an automon killed in the middle of
/// writing `state.json` or `status.json` left in `state_dir`; returns what was removed. Call
/// only while holding the lock: the lock holder is the only writer of such files there.
pub fn remove_stale_temp_files(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name();
            let is_temp = name.to_str()?.starts_with(".tmp") && e.file_type().ok()?.is_file();
            (is_temp && std::fs::remove_file(e.path()).is_ok()).then(|| e.path())
        })
        .collect()
}

/// Moves `state.json` aside as `state.json.reset-<UTC timestamp>` (for `--reset-state`);
/// returns the new name, or `None` when there was no state file.
///
/// # Errors
/// [`StateError::Io`] naming the file.
pub fn move_aside(state_dir: &Path) -> Result<Option<PathBuf>, StateError> {
    let path = state_dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%S%.3fZ")
        .to_string();
    let kept = state_dir.join(format!("{STATE_FILE}.reset-{stamp}"));
    std::fs::rename(&path, &kept).map_err(|source| StateError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_absent_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_memory(dir.path()).expect("empty"), Memory::default());
        let mut m = Memory {
            version: MEMORY_VERSION,
            ..Memory::default()
        };
        m.totals.starts = 3;
        save_memory(dir.path(), &m).expect("save");
        assert_eq!(load_memory(dir.path()).expect("load"), m);
    }

    #[test]
    fn temp_files_of_a_killed_save_are_removed_and_nothing_else() {
        // Regression (issue 26, item 4): an automon killed mid-save left `.tmpXXXX` files.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".tmpAbC123"), b"{\"half").expect("write");
        std::fs::write(dir.path().join(STATE_FILE), b"{}").expect("write");
        std::fs::create_dir(dir.path().join("requests")).expect("mkdir");
        let removed = remove_stale_temp_files(dir.path());
        assert_eq!(removed, [dir.path().join(".tmpAbC123")]);
        assert!(dir.path().join(STATE_FILE).exists());
        assert!(dir.path().join("requests").exists());
    }

    /// A state file written by automon before Slurm jobs (format version 1, by the build of
    /// main at 2026-12-07, from a run of the demo migration killed mid-run) loads: its workers'
    /// handles are processes, none has a job record, and the planner's next save is version 2.
    #[test]
    fn a_version_1_state_file_loads_with_process_handles_and_no_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = format!(
            "{}/tests/fixtures/state/state-v1.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::copy(&fixture, dir.path().join(STATE_FILE)).expect("copy fixture");
        let m = load_memory(dir.path()).expect("a version 1 file loads");
        assert_eq!(m.version, 1);
        let handles: Vec<crate::runtime::Handle> = m
            .workers
            .values()
            .filter_map(|w| w.process.as_ref())
            .map(|p| crate::runtime::Handle::of(&p.identity))
            .collect();
        assert!(!handles.is_empty(), "the fixture records running workers");
        assert!(handles.iter().all(|h| !h.is_job()), "{handles:?}");
        assert!(m.workers.values().all(|w| w.job.is_none()));
        let signals: usize = m.workers.values().map(|w| w.recent_signals.len()).sum();
        assert!(
            signals > 0,
            "the fixture remembers progress lines as numbers"
        );
        // Saved again (as the planner stamps it), it reads back the same at the current
        // version, its fingerprints now one hex string per worker.
        let m = Memory {
            version: MEMORY_VERSION,
            ..m
        };
        assert_eq!(MEMORY_VERSION, 3);
        save_memory(dir.path(), &m).expect("save");
        assert_eq!(load_memory(dir.path()).expect("load"), m);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).expect("read");
        assert!(text.contains("\"recent_signals\":\""), "hex strings");
    }

    /// Fingerprints are kept as hex (version 3) and still read as numbers (versions 1 and
    /// 2); a damaged hex string is an error naming the file, never a silent empty list (an
    /// empty list would count every remembered line as new progress).
    #[test]
    fn recent_signals_read_as_numbers_or_hex_and_damaged_hex_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(STATE_FILE);
        let with = |signals: &str| {
            format!("{{\"version\": 2, \"workers\": {{\"0\": {{\"recent_signals\": {signals}}}}}}}")
        };
        std::fs::write(&file, with("[1, 18446744073709551615]")).expect("write");
        let old = load_memory(dir.path()).expect("numbers load");
        std::fs::write(&file, with("\"0000000000000001ffffffffffffffff\"")).expect("write");
        let new = load_memory(dir.path()).expect("hex loads");
        assert_eq!(old, new);
        assert_eq!(
            Vec::from(new.workers[&crate::WorkerId(0)].recent_signals.clone()),
            [1, u64::MAX]
        );
        for damaged in [
            "\"00000000000000\"",
            "\"000000000000000g\"",
            "\"+000000000000001\"",
        ] {
            std::fs::write(&file, with(damaged)).expect("write");
            let err = load_memory(dir.path()).expect_err(damaged);
            assert!(
                err.to_string().contains("state.json")
                    && err.to_string().contains("recent_signals"),
                "{err}"
            );
            // Regression: the error did not say whose fingerprints they were.
            assert!(
                err.to_string().contains("worker 0, recent_signals"),
                "{err}"
            );
        }
    }

    /// Regression: a file of a newer format whose fields this automon cannot parse was called
    /// "corrupt" (and the advice was `--reset-state`), because the version was checked only
    /// after a full parse.
    #[test]
    fn a_newer_format_is_called_newer_even_when_its_fields_do_not_parse_here() {
        let dir = tempfile::tempdir().expect("tempdir");
        let newer = MEMORY_VERSION + 1;
        std::fs::write(
            dir.path().join(STATE_FILE),
            format!(
                "{{\"workers\": {{\"0\": {{\"checkpoint\": {{\"at\": 5}}}}}}, \"version\": {newer}}}"
            ),
        )
        .expect("write");
        let err = load_memory(dir.path()).expect_err("newer");
        assert!(
            matches!(err, StateError::Version { found, .. } if found == newer),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this automon"), "{err}");
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(STATE_FILE),
            b"{\"version\": 1, \"workers\": ",
        )
        .expect("write");
        let err = load_memory(dir.path()).expect_err("corrupt");
        assert!(
            err.to_string().contains("state.json: corrupt state file"),
            "{err}"
        );
    }
}
