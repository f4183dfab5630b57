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
///
/// The lock file's record is not trusted alone (anyone can write it): the process must have
/// started at the recorded time in this boot, be an automon (`/proc/PID/exe`), and hold the
/// `flock` on that very file (`/proc/locks`). Only then may `stop` signal it.
pub fn running_instance(state_dir: &Path) -> Option<Instance> {
    lock_owner(state_dir).or_else(|| status_writer(state_dir))
}

/// The lock file's recorded owner, when it is alive, an automon, and holds that file's flock.
fn lock_owner(state_dir: &Path) -> Option<Instance> {
    let owner = super::lock::recorded_owner(state_dir)?;
    let pid = owner.pid;
    if !owner.boot_id.is_empty() && owner.boot_id != proc::boot_id(Path::new("/proc")) {
        return None;
    }
    if !alive_with(pid, owner.start_ticks) {
        return None;
    }
    if !is_automon(pid) || !holds_lock(pid, &state_dir.join("lock")) {
        return None;
    }
    instance_of(pid)
}

/// The control loop that wrote `state_dir/status.json`, when it still runs there although the
/// lock file does not name it (the file was deleted under it; the loop locks a new one on its
/// next pass): a live automon other than this process, running `--watch`, with the state
/// directory's `events.log` open (the same inode, so a stranger with a reused pid, or an
/// automon on another directory, is not taken for it).
pub fn status_writer(state_dir: &Path) -> Option<Instance> {
    let status = super::read_status(state_dir).ok()??;
    let pid = i32::try_from(status.pid).ok()?;
    if !status.watch || status.pid == std::process::id() || !alive_with(pid, 0) {
        return None;
    }
    if !is_automon(pid) || !has_open(pid, &state_dir.join("events.log")) {
        return None;
    }
    instance_of(pid)
}

/// True when one of `pid`'s open descriptors is the file `path` names (same device and inode).
fn has_open(pid: i32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::metadata(fd.path())
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    })
}

/// `pid` as an [`Instance`] with its start time.
fn instance_of(pid: i32) -> Option<Instance> {
    let start_ticks = proc::read_stat(Path::new("/proc"), pid)?.start_ticks;
    let since = proc::boot_time(Path::new("/proc"))
        .and_then(|boot| proc::start_time(boot, start_ticks, proc::clock_ticks_per_second()));
    Some(Instance {
        pid,
        start_ticks,
        since,
    })
}

/// True when `/proc/PID/exe` is an automon binary: the same file name as this one's (after an
/// upgrade the old one reads `NAME (deleted)`), or a name starting with `automon`. Another
/// user's process (its `exe` link is not readable) is judged by `/proc/PID/comm` instead.
fn is_automon(pid: i32) -> bool {
    let name = |p: &Path| {
        p.file_name().map(|n| {
            n.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
    };
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        let ours = std::env::current_exe().ok().and_then(|e| name(&e));
        return std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| {
            // comm is the file name cut to 15 bytes.
            let comm = comm.trim_end();
            comm.starts_with("automon") || ours.is_some_and(|o| o.starts_with(comm))
        });
    };
    let Some(theirs) = name(&exe) else {
        return false;
    };
    let ours = std::env::current_exe().ok().and_then(|e| name(&e));
    ours.as_deref() == Some(theirs.as_str()) || theirs.starts_with("automon")
}

/// True when `/proc/locks` shows `pid` holding an exclusive `flock` on the inode `lock_path`
/// names. The device is not compared: on overlay file systems `/proc/locks` names the upper
/// layer's device. When `/proc/locks` cannot be read, this check is skipped (true).
pub(super) fn holds_lock(pid: i32, lock_path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(lock_path) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return true;
    };
    flock_held_by(&locks, pid, meta.ino())
}

/// Parses `/proc/locks` (`1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE 0 EOF`): whether `pid`
/// holds an exclusive flock on inode `ino`.
fn flock_held_by(locks: &str, pid: i32, ino: u64) -> bool {
    locks.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Blocked waiters are listed as "N: -> FLOCK ..."; they hold nothing.
        f.len() >= 6
            && f[1] == "FLOCK"
            && f[3] == "WRITE"
            && f[4].parse::<i32>().ok() == Some(pid)
            && f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
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
    fn proc_locks_lines_name_the_holder_of_an_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4222 fe:00:10010644 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4300 fe:00:10010644 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 fe:00:5 0 EOF\n";
        assert!(flock_held_by(locks, 4222, 10_010_644));
        assert!(
            !flock_held_by(locks, 4300, 10_010_644),
            "a waiter holds nothing"
        );
        assert!(!flock_held_by(locks, 4222, 5));
        assert!(!flock_held_by(locks, 99, 5), "a POSIX lock is not ours");
    }

    #[test]
    fn a_forged_lock_file_naming_a_live_stranger_is_not_the_instance() {
        // Regression (issue 26, item 12): `stop` SIGTERMed whatever pid the lock file named.
        // A live process with the right start time that holds no lock on the file: not automon.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let ticks = proc::read_stat(Path::new("/proc"), pid)
            .expect("stat")
            .start_ticks;
        let boot = proc::boot_id(Path::new("/proc"));
        std::fs::write(dir.path().join("lock"), format!("{pid} {ticks} {boot}\n")).expect("forge");
        let found = running_instance(dir.path());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, None);
    }

    #[test]
    fn a_lock_file_from_another_boot_is_not_the_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = super::super::InstanceLock::acquire(dir.path()).expect("lock");
        let me = std::process::id();
        let ticks = proc::read_stat(Path::new("/proc"), i32::try_from(me).expect("pid"))
            .expect("stat")
            .start_ticks;
        std::fs::write(
            dir.path().join("lock"),
            format!("{me} {ticks} another-boot\n"),
        )
        .expect("write");
        assert_eq!(running_instance(dir.path()), None);
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
