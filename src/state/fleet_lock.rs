//! One automon per set of fleet files: whatever names a worker's files — the working
//! directory and the progress and log patterns — is owned by one automon at a time, whatever
//! its state directory. A copy of the manifest elsewhere (so another state directory, another
//! [`super::InstanceLock`]) on the same absolute files would otherwise start a second process
//! for every worker id.
//!
//! The lock is an exclusive `flock` on `WORKDIR/.automon-fleet-HASH.lock`, held for the
//! process's life, where HASH is the XXH3-64 (hex) of the absolute progress and log patterns
//! after the working directory's symlinks are resolved (two spellings of one directory are one
//! fleet). The file holds the owner's `PID START_TICKS` on its first line and its state
//! directory on the second, so a refusal names the owner.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::LockError;

/// The held lock on a fleet's files; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FleetLock {
    _lock: Flock<std::fs::File>,
}

/// What names a fleet's files: the working directory and the progress and log patterns
/// (relative to it, or absolute), as the manifest gives them.
#[derive(Debug, Clone)]
pub struct FleetFiles {
    /// The workers' working directory (absolute).
    pub workdir: PathBuf,
    /// The progress file pattern, with `{id}`.
    pub progress: String,
    /// The log file pattern, with `{id}`.
    pub log: String,
}

impl FleetFiles {
    /// The files of `desired`'s workers (its patterns are absolute: made relative to the
    /// working directory again, so that the key agrees with the manifest's).
    pub fn of(desired: &crate::manifest::Desired) -> Self {
        let relative = |p: &str| {
            Path::new(p)
                .strip_prefix(&desired.workdir)
                .map_or_else(|_| p.to_string(), |r| r.to_string_lossy().into_owned())
        };
        Self {
            workdir: desired.workdir.clone(),
            progress: relative(&desired.progress_file),
            log: relative(&desired.log_file),
        }
    }

    /// The key of these files: 16 hex digits, the same for two spellings of one directory.
    /// Workers carry it in `AUTOMON_FLEET`, so a worker of another automon on the same files
    /// is recognised.
    pub fn key(&self) -> String {
        self.resolved().0
    }

    /// (key, absolute progress pattern, absolute log pattern, resolved directory).
    fn resolved(&self) -> (String, String, String, PathBuf) {
        let dir = std::fs::canonicalize(&self.workdir).unwrap_or_else(|_| self.workdir.clone());
        let progress = dir.join(&self.progress).to_string_lossy().into_owned();
        let log = dir.join(&self.log).to_string_lossy().into_owned();
        let key = xxhash_rust::xxh3::xxh3_64(format!("{progress}\0{log}").as_bytes());
        (format!("{key:016x}"), progress, log, dir)
    }

    /// The lock file for these files, and the absolute patterns it stands for.
    fn lock_path(&self) -> (PathBuf, String, String) {
        let (key, progress, log, dir) = self.resolved();
        (
            dir.join(format!(".automon-fleet-{key}.lock")),
            progress,
            log,
        )
    }
}

/// The live automon holding a fleet's lock, as its lock file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetHolder {
    /// Its pid.
    pub pid: i32,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl FleetFiles {
    /// Who holds these files' lock now, read only (the file is neither created nor locked:
    /// a look must not make a starting automon's lock fail): the pid its first line names, when
    /// `/proc/locks` shows that pid holding the file's `flock`. `None` when no one does.
    pub fn holder(&self) -> Option<FleetHolder> {
        let (path, _, _) = self.lock_path();
        let text = std::fs::read_to_string(&path).ok()?;
        let mut lines = text.lines();
        let pid: i32 = lines.next()?.split_whitespace().next()?.parse().ok()?;
        let state_dir = PathBuf::from(lines.next()?);
        super::instance::holds_lock(pid, &path).then_some(FleetHolder { pid, state_dir })
    }
}

impl FleetLock {
    /// Takes the lock for `files` without waiting, recording `state_dir` as the owner's.
    /// `Ok(None)` when the lock file cannot be created (a read-only working directory: then
    /// no worker can write there either) — the caller says so and runs without it.
    ///
    /// # Errors
    /// [`LockError::FleetHeld`] naming the owner (pid, state directory) and the files.
    pub fn acquire(files: &FleetFiles, state_dir: &Path) -> Result<Option<Self>, LockError> {
        let (path, progress, log) = files.lock_path();
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        else {
            return Ok(None);
        };
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).map_err(io)?;
                lock.rewind().map_err(io)?;
                let pid = std::process::id();
                let ticks = i32::try_from(pid)
                    .ok()
                    .and_then(|p| crate::observe::proc::read_stat(Path::new("/proc"), p))
                    .map_or(0, |s| s.start_ticks);
                let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.into());
                writeln!(lock, "{pid} {ticks}\n{}", state_dir.display()).map_err(io)?;
                Ok(Some(Self { _lock: lock }))
            }
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let mut lines = text.lines();
                let pid = lines
                    .next()
                    .and_then(|l| l.split_whitespace().next())
                    .map_or_else(|| "unknown".to_string(), str::to_string);
                let owner_state = lines.next().unwrap_or("unknown").to_string();
                Err(LockError::FleetHeld {
                    path,
                    pid,
                    state_dir: owner_state,
                    progress,
                    log,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> FleetFiles {
        FleetFiles {
            workdir: dir.to_path_buf(),
            progress: "progress/w{id}.json".into(),
            log: "logs/w{id}.log".into(),
        }
    }

    #[test]
    fn a_second_automon_on_the_same_files_is_refused_naming_the_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = FleetLock::acquire(&files(dir.path()), Path::new("/a/.automon"))
            .expect("first")
            .expect("lock file created");
        // Another spelling of the same directory is the same fleet.
        let other = dir.path().join(".").join("x").join("..");
        std::fs::create_dir_all(dir.path().join("x")).expect("mkdir");
        let err = FleetLock::acquire(&files(&other), Path::new("/b/.automon")).expect_err("held");
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(text.contains("/a/.automon"), "{text}");
        // Other patterns in the same directory are another fleet.
        let mut different = files(dir.path());
        different.log = "other/w{id}.log".into();
        assert!(
            FleetLock::acquire(&different, Path::new("/c"))
                .expect("free")
                .is_some()
        );
        // A look names the holder without taking the lock.
        let holder = files(dir.path()).holder().expect("held");
        assert_eq!(holder.state_dir, Path::new("/a/.automon"));
        assert_eq!(u32::try_from(holder.pid).ok(), Some(std::process::id()));
        drop(first);
        assert_eq!(files(dir.path()).holder(), None);
        assert!(
            FleetLock::acquire(&files(dir.path()), Path::new("/b"))
                .expect("after release")
                .is_some()
        );
    }
}
