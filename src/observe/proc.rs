//! Process identity from `/proc`: who a pid is, whether it is alive, when it started.
//!
//! A process is identified by (pid, start time in clock ticks since boot from field 22 of
//! `/proc/PID/stat`, boot id from `/proc/sys/kernel/random/boot_id`). A pid whose start time or
//! boot id differs from the recorded one is a stranger that reused the pid: it is never signalled
//! or counted. Readers take the proc root as an argument so tests can use fixture trees.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Who a worker process is, across automon restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id (also the process group id: workers are started as group leaders).
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// The kernel's boot id when the process was seen.
    pub boot_id: String,
}

/// The state letter of a live process whose `/proc/PID/stat` was not read (see
/// [`ProcessStatus::Alive`]).
pub const STATE_NOT_READ: char = '?';

/// The fields of `/proc/PID/stat` automon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter: R, S, D, Z, T, t, X, I …
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// Session id.
    pub sid: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// What became of a recorded process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessStatus {
    /// Running (or sleeping, stopped, in uninterruptible I/O: see `state`).
    Alive {
        /// The state letter from `/proc/PID/stat`; `D` is uninterruptible I/O;
        /// [`STATE_NOT_READ`] when `/proc` was not read this pass (a child the reaper vouches
        /// for, not quiet long enough for its state to matter).
        state: char,
    },
    /// Exited: no such pid, a zombie (Z) or dead (X).
    Exited,
    /// The pid now belongs to another process (different start time or boot): the recorded one
    /// is gone, and the stranger must not be touched.
    Reused,
    /// A batch job waiting in its scheduler's queue, not running yet (`spec.runtime: slurm`):
    /// its stuck and discovery clocks have not started.
    Queued {
        /// The scheduler's reason, e.g. `Resources`, `Priority`.
        why: String,
    },
    /// A batch job that ended while its processes are still being ended (Slurm's
    /// COMPLETING): like a process group that still has members, it blocks a replacement.
    Completing,
    /// The engine cannot say (its scheduler does not answer): every decision about the worker
    /// that needs the engine waits until it answers again.
    Unknown {
        /// Why, in words.
        why: String,
    },
}

/// Parses the content of `/proc/PID/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text.get(close + 2..)?.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(ProcStat {
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// Reads `/proc/PID/stat` under `proc_root`; `None` when the process does not exist (or the
/// file cannot be read: see [`try_read_stat`] to tell the two apart).
pub fn read_stat(proc_root: &Path, pid: i32) -> Option<ProcStat> {
    try_read_stat(proc_root, pid).ok().flatten()
}

/// Reads `/proc/PID/stat`: `Ok(None)` when the process does not exist, `Err` when it could not
/// be read for another reason (out of descriptors, out of memory): then nothing is known about
/// the process, and callers must not conclude that it exited.
///
/// # Errors
/// The I/O error of opening or reading the file, other than "not found".
pub fn try_read_stat(proc_root: &Path, pid: i32) -> std::io::Result<Option<ProcStat>> {
    let path = proc_root.join(pid.to_string()).join("stat");
    match read_small(&path) {
        Ok(buf) => Ok(std::str::from_utf8(&buf).ok().and_then(parse_stat)),
        // ESRCH: the process exited between open and read.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads a small generated file (a `/proc` entry, whose reported size is 0) with one buffer:
/// open, read, read (end of file), close. `std::fs::read_to_string` first asks for the size
/// and then reads in growing steps, about twice the system calls; the supervisor reads one
/// such file per worker per pass, and one more before each restart.
fn read_generated(path: &Path) -> Option<String> {
    String::from_utf8(read_small(path).ok()?).ok()
}

/// Open, `read` into a 1 KiB buffer until the end (growing it only for a longer file), close:
/// without the `statx` and `lseek` that `read_to_end` adds for its size hint.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    loop {
        if got == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads the boot id (`/proc/sys/kernel/random/boot_id`); empty when unreadable. The real
/// `/proc`'s is read once per process (it changes only with a reboot, which ends the process).
pub fn boot_id(proc_root: &Path) -> String {
    static REAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let read = || {
        read_generated(&proc_root.join("sys/kernel/random/boot_id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    if proc_root != Path::new("/proc") {
        return read();
    }
    let id = REAL.get_or_init(read);
    if id.is_empty() {
        // Unreadable once (a sandbox without it?): do not cache the failure.
        return read();
    }
    id.clone()
}

/// Boot time in seconds since the Unix epoch (`btime` in `/proc/stat`).
pub fn boot_time(proc_root: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// The wall-clock time a process started, from its start ticks and the boot time.
pub fn start_time(
    boot_time_secs: i64,
    start_ticks: u64,
    ticks_per_sec: u64,
) -> Option<jiff::Timestamp> {
    let ms = i64::try_from(start_ticks.checked_mul(1000)? / ticks_per_sec).ok()?;
    jiff::Timestamp::from_millisecond(boot_time_secs.checked_mul(1000)?.checked_add(ms)?).ok()
}

/// The state letter [`check`] reports for a process that exists but whose `/proc` entry could
/// not be read (out of descriptors): assumed alive, so no replacement is started beside it, and
/// never signalled, since its identity could not be confirmed.
pub const UNVERIFIED: char = '?';

/// Checks a recorded identity against `/proc` now. When `/proc/PID/stat` cannot be read for a
/// reason other than the process's absence (out of descriptors), a pid that still exists
/// (`kill(pid, 0)`) is reported `Alive { state: UNVERIFIED }`: a worker is never taken for
/// exited — and replaced while it runs — because automon could not look.
pub fn check(proc_root: &Path, current_boot_id: &str, id: &ProcessIdentity) -> ProcessStatus {
    if id.boot_id != current_boot_id {
        return ProcessStatus::Reused;
    }
    match try_read_stat(proc_root, id.pid) {
        Ok(None) => ProcessStatus::Exited,
        Ok(Some(stat)) if stat.start_ticks != id.start_ticks => ProcessStatus::Reused,
        Ok(Some(stat)) if matches!(stat.state, 'Z' | 'X' | 'x') => ProcessStatus::Exited,
        Ok(Some(stat)) => ProcessStatus::Alive { state: stat.state },
        Err(_) => match nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.pid), None) {
            Err(nix::errno::Errno::ESRCH) => ProcessStatus::Exited,
            _ => ProcessStatus::Alive { state: UNVERIFIED },
        },
    }
}

/// True while a live (not zombie) process is in process group `pgid`, from a scan of `/proc` of
/// its own (see [`group_exists_since`], which shares one).
pub fn group_exists(pgid: i32) -> bool {
    group_signalable(pgid) && live_groups(scan_groups().as_ref(), pgid)
}

/// True while a live (not zombie) process is in process group `pgid`, a group known to have
/// existed at `existed_at` (a stop under way, a worker started before this pass). Linux never
/// hands out a pid that is still some group's id, so a live group cannot belong to a stranger.
///
/// `kill(-pgid, 0)` answers "no such group" cheaply; when the group exists, a scan of `/proc`
/// decides, because a zombie member (an exited leader its parent has not reaped yet — an orphan
/// waits for init) keeps the group in existence without anything running in it. The scan is
/// one made since `existed_at` and at most `max_age` ago, shared with every other caller that
/// can use it. Five hundred stops waiting at once for
/// their groups to end made one scan each every 50 ms — 500 scans of 500 processes — and the
/// control loop, which also reaps the exits they waited for, fell behind by minutes. A group
/// whose last member is gone cannot gain one, so a scan newer than the moment it still existed
/// answers for it.
pub fn group_exists_since(
    pgid: i32,
    existed_at: std::time::Instant,
    max_age: std::time::Duration,
) -> bool {
    if !group_signalable(pgid) {
        return false;
    }
    let now = std::time::Instant::now();
    let not_before = now
        .checked_sub(max_age)
        .map_or(existed_at, |t| t.max(existed_at));
    let mut shared = SHARED_SCAN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scan = match shared.as_ref() {
        Some((at, scan)) if *at >= not_before => scan.clone(),
        _ => {
            let scan = std::sync::Arc::new(scan_groups());
            *shared = Some((now, scan.clone()));
            scan
        }
    };
    drop(shared);
    live_groups(scan.as_ref().as_ref(), pgid)
}

/// The last shared scan of `/proc`'s process groups, with the instant it began.
#[allow(clippy::type_complexity)]
static SHARED_SCAN: std::sync::Mutex<
    Option<(std::time::Instant, std::sync::Arc<Option<GroupScan>>)>,
> = std::sync::Mutex::new(None);

/// False when no process (not even a zombie) is in group `pgid` (`kill(-pgid, 0)`).
fn group_signalable(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    matches!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// The process groups with a live (not zombie) member, from one pass over `/proc`, and
/// whether some process could not be read (it might be a member of any group).
#[derive(Debug)]
struct GroupScan {
    live: std::collections::HashSet<i32>,
    unreadable: bool,
}

/// Scans of `/proc` made (tests count them).
#[cfg(test)]
static SCANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One scan of `/proc`; `None` when it cannot be listed (out of descriptors).
fn scan_groups() -> Option<GroupScan> {
    #[cfg(test)]
    SCANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = Path::new("/proc");
    let pids = try_list_pids(root).ok()?;
    let mut scan = GroupScan {
        live: std::collections::HashSet::new(),
        unreadable: false,
    };
    for pid in pids {
        match try_read_stat(root, pid) {
            Ok(Some(st)) if !matches!(st.state, 'Z' | 'X' | 'x') => {
                scan.live.insert(st.pgid);
            }
            Ok(_) => {}
            Err(_) => scan.unreadable = true,
        }
    }
    Some(scan)
}

/// Whether `scan` leaves group `pgid` possibly alive: a live member seen, a process that could
/// not be read (it might be a member: the group is not called gone), or no scan at all.
fn live_groups(scan: Option<&GroupScan>, pgid: i32) -> bool {
    scan.is_none_or(|s| s.unreadable || s.live.contains(&pgid))
}

/// Reads `/proc/PID/environ` as (name, value) pairs; empty when unreadable.
pub fn read_environ(proc_root: &Path, pid: i32) -> Vec<(String, String)> {
    let Ok(bytes) = std::fs::read(proc_root.join(pid.to_string()).join("environ")) else {
        return Vec::new();
    };
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let (k, v) = std::str::from_utf8(entry).ok()?.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Reads `/proc/PID/environ` and returns the value of `key`, if set.
pub fn environ_var(proc_root: &Path, pid: i32, key: &str) -> Option<String> {
    read_environ(proc_root, pid)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Every numeric entry of `proc_root`: the pids that exist now (empty when unreadable).
pub fn list_pids(proc_root: &Path) -> Vec<i32> {
    try_list_pids(proc_root).unwrap_or_default()
}

/// Every numeric entry of `proc_root`.
///
/// # Errors
/// The error of opening the directory (out of descriptors, a missing `/proc`).
pub fn try_list_pids(proc_root: &Path) -> std::io::Result<Vec<i32>> {
    Ok(std::fs::read_dir(proc_root)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new process group of its own running `script` (not reaped: the test waits for it).
    fn group_of(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .expect("spawn")
    }

    /// Regression (fresh-clone trial, 500 workers found stuck at once): each stop polled its
    /// group every 50 ms with its own scan of `/proc`, and the exits were confirmed one every
    /// half second for minutes. Stops polling at the same time now share one scan.
    #[test]
    fn group_checks_made_together_share_one_scan_of_proc() {
        let mut child = group_of("exec sleep 30");
        let pgid = i32::try_from(child.id()).expect("pid");
        let began = std::time::Instant::now();
        let before = SCANS.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..200 {
            assert!(group_exists_since(
                pgid,
                began,
                std::time::Duration::from_secs(60)
            ));
        }
        let scans = SCANS.load(std::sync::atomic::Ordering::Relaxed) - before;
        // One here; other tests running at the same time may add a few of their own.
        assert!(scans < 20, "{scans} scans for 200 checks");
        kill_group(pgid);
        child.wait().expect("wait");
        // A fresh scan each time (50 ms old at most) sees the group gone, within a minute.
        let poll = std::time::Duration::from_millis(50);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while group_exists_since(pgid, began, poll) {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pgid} never gone"
            );
            std::thread::sleep(poll);
        }
    }

    fn kill_group(pgid: i32) {
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("killpg");
    }

    /// A scan made before the group existed never answers for it; a group whose only member
    /// is a zombie (its leader exited, not yet reaped) is gone.
    #[test]
    fn a_scan_older_than_the_group_is_not_used_and_a_zombie_leader_is_no_member() {
        let began = std::time::Instant::now();
        // A scan now, shared, from before the group below exists.
        let _ = group_exists_since(i32::MAX, began, std::time::Duration::from_secs(60));
        let mut child = group_of("exec sleep 30");
        let pgid = i32::try_from(child.id()).expect("pid");
        let existed = std::time::Instant::now();
        assert!(group_exists_since(
            pgid,
            existed,
            std::time::Duration::from_secs(60)
        ));
        kill_group(pgid);
        // Exited, not reaped: a zombie, and the group's only member.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !matches!(
            try_read_stat(Path::new("/proc"), pgid),
            Ok(Some(ProcStat { state: 'Z', .. }))
        ) {
            assert!(
                std::time::Instant::now() < deadline,
                "{pgid} never a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let zombie = std::time::Instant::now();
        assert!(!group_exists_since(
            pgid,
            zombie,
            std::time::Duration::from_secs(60)
        ));
        child.wait().expect("wait");
    }

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line = "4242 (python3 (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 2 0 0 20 0 1 0 987654 1000 200 0";
        let st = parse_stat(line).expect("valid stat");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.pgid, 4242);
        assert_eq!(st.sid, 4242);
        assert_eq!(st.start_ticks, 987_654);
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_reused() {
        let root = Path::new("/proc");
        let boot = boot_id(root);
        let pid = std::process::id() as i32;
        let stat = read_stat(root, pid).expect("own stat");
        let me = ProcessIdentity {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: boot.clone(),
        };
        assert!(matches!(
            check(root, &boot, &me),
            ProcessStatus::Alive { .. }
        ));
        let impostor = ProcessIdentity {
            start_ticks: stat.start_ticks + 1,
            ..me.clone()
        };
        assert_eq!(check(root, &boot, &impostor), ProcessStatus::Reused);
        let other_boot = ProcessIdentity {
            boot_id: "other".into(),
            ..me
        };
        assert_eq!(check(root, &boot, &other_boot), ProcessStatus::Reused);
    }
}
