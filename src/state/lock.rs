//! One automon per state directory: an exclusive `flock` on `STATE_DIR/lock`, held for the
//! process's life. The file's first line holds the owner's pid, its start time and the boot id
//! (`PID START_TICKS BOOT_ID`, ticks from `/proc/PID/stat` field 22) so a refusal can name it and
//! `automon status`/`stop` can tell the owner from a process that later reused its pid; a second
//! line, `condition: TEXT`, says what is wrong in automon's own house (state not saved, its log
//! not writable) for `automon status` to show. The file is rewritten in place through the held
//! descriptor, within its first block, so it can still be written when the disk is full or the
//! directory has turned read-only.
//!
//! The lock is on an inode: when the state directory is deleted and recreated under a running
//! loop, the path names a new, unlocked file. [`InstanceLock::recheck`] notices and locks the new
//! file (or reports who took it), each pass.

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Longest condition text kept in the lock file: the file stays within its first block.
const MAX_CONDITION: usize = 3000;

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
    lock: Flock<std::fs::File>,
    path: PathBuf,
    /// `PID START_TICKS BOOT_ID`.
    owner: String,
    /// The condition line last written, if any.
    condition: Option<String>,
}

/// What [`InstanceLock::recheck`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// The path still names the locked file.
    Held,
    /// The file had been deleted or replaced; the new one is locked now.
    Relocked,
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
        super::private::ensure_dir(state_dir).map_err(io)?;
        let file = super::private::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        super::private::tighten(&file).map_err(io)?;
        let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock);
        // A loop whose lock file was deleted still runs here (it writes status.json and holds
        // events.log open): the new file's lock is not a free WorkerSet.
        if locked.is_ok()
            && let Some(other) = super::instance::status_writer(state_dir)
        {
            return Err(LockError::Held {
                pid: other.pid.to_string(),
                path,
            });
        }
        match locked {
            Ok(lock) => {
                let pid = std::process::id();
                let ticks = i32::try_from(pid)
                    .ok()
                    .and_then(|p| crate::observe::proc::read_stat(Path::new("/proc"), p))
                    .map_or(0, |s| s.start_ticks);
                let boot = crate::observe::proc::boot_id(Path::new("/proc"));
                let mut me = Self {
                    lock,
                    path: path.clone(),
                    owner: format!("{pid} {ticks} {boot}"),
                    condition: None,
                };
                me.write().map_err(io)?;
                Ok(me)
            }
            Err((file, _)) => Err(LockError::Held {
                pid: owner_pid_of(file, &path),
                path,
            }),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the owner line and the condition in place (never truncated to empty first, so a
    /// reader never sees an empty owner).
    fn write(&mut self) -> std::io::Result<()> {
        let text = self.text();
        self.lock.write_all_at(text.as_bytes(), 0)?;
        self.lock.set_len(text.len() as u64)?;
        Ok(())
    }

    /// The file's text: the owner line and the condition line.
    fn text(&self) -> String {
        let mut text = format!("{}\n", self.owner);
        if let Some(c) = &self.condition {
            text.push_str("condition: ");
            text.push_str(c);
            text.push('\n');
        }
        text
    }

    /// Sets (or clears, with `None`) the condition `automon status` shows; one line, cut to
    /// [`MAX_CONDITION`] bytes.
    ///
    /// # Errors
    /// The I/O error writing the lock file.
    pub fn set_condition(&mut self, condition: Option<&str>) -> std::io::Result<()> {
        match self.condition_write(condition)? {
            Some(write) => write(),
            None => Ok(()),
        }
    }

    /// [`InstanceLock::set_condition`] for the writer thread: takes the new condition and
    /// returns the write that puts it in the file (through a duplicate of the held descriptor),
    /// `None` when it is unchanged.
    ///
    /// # Errors
    /// The error of duplicating the descriptor.
    pub fn condition_write(
        &mut self,
        condition: Option<&str>,
    ) -> std::io::Result<Option<impl FnOnce() -> std::io::Result<()> + Send + 'static>> {
        let condition = condition.map(|c| {
            let mut line = c.replace('\n', " ");
            if line.len() > MAX_CONDITION {
                let mut cut = MAX_CONDITION;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push('…');
            }
            line
        });
        if condition == self.condition {
            return Ok(None);
        }
        let file = self.lock.try_clone()?;
        self.condition = condition;
        let text = self.text();
        Ok(Some(move || {
            file.write_all_at(text.as_bytes(), 0)?;
            file.set_len(text.len() as u64)
        }))
    }

    /// Checks that the lock path still names the file this lock holds. When the state directory
    /// was deleted or replaced, creates the directory again and locks the new file, so that no
    /// second automon can take the WorkerSet through it.
    ///
    /// # Errors
    /// [`LockError::Held`] when another automon locked the new file first (this one must stop),
    /// [`LockError::Io`] when the new file cannot be created or locked.
    pub fn recheck(&mut self, state_dir: &Path) -> Result<Recheck, LockError> {
        let held = self.lock.metadata().map(|m| (m.dev(), m.ino()));
        let named = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if let (Ok(a), Ok(b)) = (&held, &named)
            && a == b
        {
            return Ok(Recheck::Held);
        }
        let mut fresh = Self::acquire(state_dir)?;
        fresh.condition = self.condition.take();
        fresh.write().map_err(|source| LockError::Io {
            path: self.path.clone(),
            source,
        })?;
        *self = fresh;
        Ok(Recheck::Relocked)
    }
}

/// The pid written in a lock file another process holds; a brand-new file may be empty for a
/// moment (its owner has locked it and not written yet), so it is read again briefly.
fn owner_pid_of(mut file: std::fs::File, path: &Path) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        let _ = std::io::Seek::rewind(&mut file);
        let _ = file.read_to_string(&mut text);
        if let Some(pid) = text.split_whitespace().next() {
            return pid.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = path;
    "unknown".to_string()
}

/// The owner recorded in `state_dir/lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOwner {
    /// Its pid.
    pub pid: i32,
    /// Its start ticks; 0 when written by an automon that recorded only the pid.
    pub start_ticks: u64,
    /// The boot id it ran under; empty when not recorded.
    pub boot_id: String,
    /// The condition line, if any.
    pub condition: Option<String>,
}

/// The owner recorded in `state_dir/lock`; `None` when the file is absent or unreadable.
/// This only reads the file: whether that process still runs and holds the lock is for
/// [`super::running_instance`].
pub fn recorded_owner(state_dir: &Path) -> Option<RecordedOwner> {
    let mut text = String::new();
    std::fs::File::open(state_dir.join("lock"))
        .ok()?
        .take(8192)
        .read_to_string(&mut text)
        .ok()?;
    let mut lines = text.lines();
    let mut fields = lines.next()?.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start_ticks = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    let boot_id = fields.next().unwrap_or_default().to_string();
    let condition = lines.find_map(|l| l.strip_prefix("condition: ").map(str::to_string));
    Some(RecordedOwner {
        pid,
        start_ticks,
        boot_id,
        condition,
    })
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
        let owner = recorded_owner(dir.path()).expect("owner");
        assert_eq!(owner.pid.to_string(), std::process::id().to_string());
        assert!(owner.start_ticks > 0, "start ticks recorded");
        assert_eq!(
            owner.boot_id,
            crate::observe::proc::boot_id(Path::new("/proc"))
        );
        drop(first);
        InstanceLock::acquire(dir.path()).expect("after release");
    }

    #[test]
    fn a_replaced_state_directory_is_locked_again_and_a_taker_is_named() {
        // Regression (issue 26, item 3): `rm -rf` and recreate the state directory, and a
        // second automon could lock the new file beside the first.
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("s");
        let mut lock = InstanceLock::acquire(&state).expect("lock");
        assert_eq!(lock.recheck(&state).expect("same"), Recheck::Held);
        std::fs::remove_dir_all(&state).expect("rm -rf");
        std::fs::create_dir(&state).expect("mkdir");
        assert_eq!(lock.recheck(&state).expect("relock"), Recheck::Relocked);
        assert!(
            InstanceLock::acquire(&state).is_err(),
            "the new file is held by the first lock"
        );
        // Replaced again, and this time another process's lock got there first.
        std::fs::remove_dir_all(&state).expect("rm -rf");
        std::fs::create_dir(&state).expect("mkdir");
        let mut other = std::process::Command::new("flock")
            .arg("--exclusive")
            .arg(state.join("lock"))
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Until flock(1) holds it: a probe that gets the lock lets go at once (flock(1) waits).
        loop {
            let held_by_other = std::fs::File::open(state.join("lock"))
                .ok()
                .is_some_and(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err());
            if held_by_other || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let err = lock.recheck(&state).expect_err("taken");
        let _ = other.kill();
        let _ = other.wait();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
    }

    #[test]
    fn the_condition_is_written_in_place_and_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lock = InstanceLock::acquire(dir.path()).expect("lock");
        lock.set_condition(Some("state NOT saved: disk full"))
            .expect("write");
        let owner = recorded_owner(dir.path()).expect("owner");
        assert_eq!(
            owner.condition.as_deref(),
            Some("state NOT saved: disk full")
        );
        assert_eq!(owner.pid.to_string(), std::process::id().to_string());
        lock.set_condition(None).expect("clear");
        assert_eq!(recorded_owner(dir.path()).expect("owner").condition, None);
    }
}
