//! One automon per state directory: an exclusive `flock` on `STATE_DIR/lock`, held for the
//! process's life. The file holds the owner's pid and its start time (`PID START_TICKS`, ticks
//! from `/proc/PID/stat` field 22) so a refusal can name it and `automon status`/`stop` can tell
//! the owner from a process that later reused its pid.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Taking the lock failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another automon holds it.
    #[error("another automon (pid {pid}) is already managing this WorkerSet (lock {path})")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The owner's pid as written in the file ("unknown" if unreadable).
        pid: String,
    },
    /// Another automon owns the files this WorkerSet's workers would write.
    #[error(
        "another automon (pid {pid}, state directory {state_dir}) already manages the files of this fleet (progress {progress}, logs {log}; lock {path}): two automons on one set of files would run two workers per shard. Stop it (`automon stop` with its manifest) or give this manifest other files"
    )]
    FleetHeld {
        /// The fleet lock file.
        path: PathBuf,
        /// The owner's pid as written in the file ("unknown" if unreadable).
        pid: String,
        /// The owner's state directory as written in the file.
        state_dir: String,
        /// The absolute progress file pattern.
        progress: String,
        /// The absolute log file pattern.
        log: String,
    },
    /// I/O on the lock file.
    #[error("{path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<std::fs::File>,
}

impl InstanceLock {
    /// Takes the lock on `state_dir/lock` without waiting, creating the directory.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the running instance's pid, or [`LockError::Io`].
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let path = state_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).map_err(io)?;
                lock.rewind().map_err(io)?;
                let pid = std::process::id();
                let ticks = i32::try_from(pid)
                    .ok()
                    .and_then(|p| crate::observe::proc::read_stat(Path::new("/proc"), p))
                    .map_or(0, |s| s.start_ticks);
                writeln!(lock, "{pid} {ticks}").map_err(io)?;
                Ok(Self { _lock: lock })
            }
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid
                    .split_whitespace()
                    .next()
                    .map_or_else(|| "unknown".to_string(), str::to_string);
                Err(LockError::Held { path, pid })
            }
        }
    }
}

/// The owner recorded in `state_dir/lock`: (pid, start ticks); ticks are 0 when the file was
/// written by an automon that recorded only the pid. `None` when the file is absent or unreadable.
/// This only reads the file: whether that process still runs is for [`super::running_instance`].
pub fn recorded_owner(state_dir: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(state_dir.join("lock")).ok()?;
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let ticks = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    Some((pid, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_owner_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = InstanceLock::acquire(dir.path()).expect("first");
        let err = InstanceLock::acquire(dir.path()).expect_err("second");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        let (pid, ticks) = recorded_owner(dir.path()).expect("owner");
        assert_eq!(pid.to_string(), std::process::id().to_string());
        assert!(ticks > 0, "start ticks recorded");
        drop(first);
        InstanceLock::acquire(dir.path()).expect("after release");
    }
}
