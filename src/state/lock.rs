//! One automon per state directory: an exclusive `flock` on `STATE_DIR/lock`, held for the
//! process's life. The file holds the owner's pid so a refusal can name it.

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
                writeln!(lock, "{}", std::process::id()).map_err(io)?;
                Ok(Self { _lock: lock })
            }
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() {
                    "unknown".into()
                } else {
                    pid.trim().to_string()
                };
                Err(LockError::Held { path, pid })
            }
        }
    }
}

/// The pid of the automon holding the lock of `state_dir`, if one does (read-only: nothing is
/// written, and a free lock is released at once).
pub fn lock_holder(state_dir: &Path) -> Option<i32> {
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new().read(true).open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            pid.trim().parse().ok()
        }
    }
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
        assert_eq!(lock_holder(dir.path()), Some(std::process::id() as i32));
        drop(first);
        assert_eq!(lock_holder(dir.path()), None);
        InstanceLock::acquire(dir.path()).expect("after release");
    }
}
