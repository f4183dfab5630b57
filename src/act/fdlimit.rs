//! The open-files ceiling (`RLIMIT_NOFILE`). automon holds one descriptor per live worker it
//! started (the pidfd its reaper waits on) besides a few of its own, so a fleet larger than the
//! common soft default of 1,024 needs more. At start automon raises its soft limit to the hard
//! limit ([`raise`]), gives every worker the original soft limit back (some programs misbehave
//! with a huge one: [`restore_in_child`]), and a fleet that still cannot fit is refused before
//! anything starts ([`check_fleet`]) rather than failing midway.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors automon needs besides one per worker: standard streams, the lock, the events
/// and history logs, the runtime's epoll and signal pipes, the observer's inotify descriptor
/// (and the handles on the fleet's few directories it holds during a pass), and those a start
/// holds for an instant (the log twice, the exec-error pipe), with room for the metrics
/// listener and an LLM connection.
pub const BASE_DESCRIPTORS: u64 = 31;

/// The limits automon runs with, and the soft limit it was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// The soft limit automon was started with (what workers get back).
    pub original_soft: u64,
    /// The soft limit now (the hard limit after [`raise`], unless raising failed).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// The soft limit workers get back, set once by [`raise`] when it changed the limit.
static CHILD_SOFT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and remembers the original soft
/// limit for [`restore_in_child`]. A failure to raise leaves the limits as they were (the
/// returned `soft` says so); `None` when the limits cannot even be read.
pub fn raise() -> Option<FdLimits> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let mut limits = FdLimits {
        original_soft: soft,
        soft,
        hard,
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        limits.soft = hard;
        let _ = CHILD_SOFT.set((soft, hard));
    }
    Some(limits)
}

/// The limits now, without changing them (the original soft limit is the one [`raise`]
/// recorded, else the current one); `None` when they cannot be read.
pub fn current() -> Option<FdLimits> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    Some(FdLimits {
        original_soft: CHILD_SOFT.get().map_or(soft, |(s, _)| *s),
        soft,
        hard,
    })
}

/// Descriptors a fleet of at most `max_workers` live workers needs: one each, plus
/// [`BASE_DESCRIPTORS`].
pub fn needed(max_workers: u32) -> u64 {
    u64::from(max_workers) + BASE_DESCRIPTORS
}

/// Refuses a fleet that cannot fit under the soft limit, with what to do about it.
///
/// # Errors
/// A sentence such as "2,000 workers need about 2,031 open files; the limit is 1,024 (hard
/// 1,024): raise it with `ulimit -n` or LimitNOFILE= in the unit".
pub fn check_fleet(max_workers: u32, limits: &FdLimits) -> Result<(), String> {
    let need = needed(max_workers);
    if need <= limits.soft {
        return Ok(());
    }
    Err(format!(
        "{} {} need about {} open files; the limit is {} (hard {}): raise it with `ulimit -n` or LimitNOFILE= in the unit",
        crate::text::count(u64::from(max_workers)),
        crate::text::plural(max_workers, "worker", "workers"),
        crate::text::count(need),
        crate::text::count(limits.soft),
        crate::text::count(limits.hard),
    ))
}

/// Makes `cmd`'s child start with the soft limit automon was started with, when [`raise`]
/// changed it; otherwise leaves `cmd` alone (so the standard library may keep using
/// `posix_spawn`, which a `pre_exec` hook rules out).
#[allow(unsafe_code)]
pub fn restore_in_child(cmd: &mut tokio::process::Command) {
    let Some(&(soft, hard)) = CHILD_SOFT.get() else {
        return;
    };
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes one setrlimit system call on two copied integers, allocates
    // nothing and touches no lock (an `Errno` converts to `io::Error` without allocating).
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_over_the_limit_is_refused_with_what_to_do() {
        let limits = FdLimits {
            original_soft: 1024,
            soft: 1024,
            hard: 1024,
        };
        assert_eq!(
            check_fleet(2000, &limits),
            Err("2,000 workers need about 2,031 open files; the limit is 1,024 (hard 1,024): raise it with `ulimit -n` or LimitNOFILE= in the unit".into())
        );
        assert_eq!(check_fleet(993, &limits), Ok(()));
        assert!(check_fleet(994, &limits).is_err());
    }

    #[test]
    fn a_raised_limit_fits_the_fleet() {
        let limits = FdLimits {
            original_soft: 1024,
            soft: 4096,
            hard: 4096,
        };
        assert_eq!(check_fleet(2000, &limits), Ok(()));
    }
}
