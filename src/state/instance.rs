//! Which automon, if any, manages a state directory now, and the pid file of one started in the
//! background (`STATE_DIR/automon.pid`, written by `automon start`).
//!
//! The running instance is the owner recorded in `STATE_DIR/lock` (pid and start ticks, written
//! right after the lock is taken) when a process with that pid *and* that start time is alive: a
//! dead owner's pid reused by another process is never taken for automon. Nothing here takes or
//! probes the lock itself, so a check can never make a starting automon fail to get it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::observe::proc;

/// File name of the pid file inside the state directory.
pub const PID_FILE: &str = "automon.pid";

/// A live automon managing a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// When it started (wall clock), when the boot time is readable.
    pub since: Option<jiff::Timestamp>,
}

impl Instance {
    /// True while the process with this pid is still the one that started at `start_ticks`
    /// (alive and not a zombie); re-checked right before it is signalled.
    pub fn is_alive(&self) -> bool {
        alive_with(self.pid, self.start_ticks)
    }
}

/// True when `pid` is alive (not a zombie) and, unless `start_ticks` is 0 (unknown), started at
/// `start_ticks`.
fn alive_with(pid: i32, start_ticks: u64) -> bool {
    proc::read_stat(Path::new("/proc"), pid).is_some_and(|s| {
        !matches!(s.state, 'Z' | 'X' | 'x') && (start_ticks == 0 || s.start_ticks == start_ticks)
    })
}

/// The automon that holds `state_dir`'s lock now, if any (see the module doc).
pub fn running_instance(state_dir: &Path) -> Option<Instance> {
    let (pid, recorded) = super::lock::recorded_owner(state_dir)?;
    if !alive_with(pid, recorded) {
        return None;
    }
    let start_ticks = proc::read_stat(Path::new("/proc"), pid)?.start_ticks;
    let since = proc::boot_time(Path::new("/proc"))
        .and_then(|boot| proc::start_time(boot, start_ticks, proc::clock_ticks_per_second()));
    Some(Instance {
        pid,
        start_ticks,
        since,
    })
}

/// The pid file's path.
pub fn pid_file(state_dir: &Path) -> PathBuf {
    state_dir.join(PID_FILE)
}

/// Writes `PID START_TICKS` to `state_dir/automon.pid` atomically (temp file and rename).
///
/// # Errors
/// The I/O error, for the caller to name the file.
pub fn write_pid_file(state_dir: &Path, pid: i32, start_ticks: u64) -> std::io::Result<()> {
    super::private::ensure_dir(state_dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
    writeln!(tmp, "{pid} {start_ticks}")?;
    tmp.as_file().sync_all()?;
    tmp.persist(pid_file(state_dir)).map_err(|e| e.error)?;
    Ok(())
}

/// Reads `state_dir/automon.pid`: (pid, start ticks); `None` when absent or malformed.
pub fn read_pid_file(state_dir: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(pid_file(state_dir)).ok()?;
    let mut fields = text.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Removes the pid file when it names `pid` (a newer automon's file is left alone).
pub fn remove_pid_file(state_dir: &Path, pid: i32) {
    if read_pid_file(state_dir).is_some_and(|(p, _)| p == pid) {
        let _ = std::fs::remove_file(pid_file(state_dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_owner_is_the_running_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(running_instance(dir.path()), None, "no lock file yet");
        let lock = super::super::InstanceLock::acquire(dir.path()).expect("lock");
        let me = running_instance(dir.path()).expect("running");
        assert_eq!(me.pid.to_string(), std::process::id().to_string());
        assert!(me.is_alive());
        drop(lock);
    }

    #[test]
    fn a_reused_pid_is_not_the_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Our own pid with a start time it never had: a stranger that reused a dead owner's pid.
        std::fs::write(
            dir.path().join("lock"),
            format!("{} 1\n", std::process::id()),
        )
        .expect("write");
        assert_eq!(running_instance(dir.path()), None);
    }

    #[test]
    fn pid_file_round_trips_and_is_removed_only_for_its_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pid_file(dir.path(), 42, 4242).expect("write");
        assert_eq!(read_pid_file(dir.path()), Some((42, 4242)));
        remove_pid_file(dir.path(), 43);
        assert_eq!(read_pid_file(dir.path()), Some((42, 4242)));
        remove_pid_file(dir.path(), 42);
        assert_eq!(read_pid_file(dir.path()), None);
    }
}
