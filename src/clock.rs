//! Time as the planner sees it. Staleness is measured on the kernel's boot clock
//! (`CLOCK_BOOTTIME`: monotonic, counts suspend, and the clock `/proc/PID/stat` start times are
//! on), so a wall-clock jump never makes every worker look stuck at once, and the values stay
//! meaningful across automon's own restarts (until the machine reboots: the boot id changes).
//! Wall-clock time is kept alongside for people.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the kernel booted (`CLOCK_BOOTTIME`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BootTime(pub u64);

impl BootTime {
    /// From a duration since boot.
    pub fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// From clock ticks since boot (`/proc/PID/stat` field 22) at `ticks_per_sec`.
    pub fn from_ticks(ticks: u64, ticks_per_sec: u64) -> Self {
        Self(ticks.saturating_mul(1000) / ticks_per_sec.max(1))
    }

    /// The span from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: BootTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`.
    pub fn plus(self, d: Duration) -> BootTime {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Reads `CLOCK_BOOTTIME` now.
    pub fn read() -> BootTime {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| Self::from_duration(Duration::from(t)))
            .unwrap_or_default()
    }
}

/// One reading of both clocks, taken at the edge and passed into the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    /// Wall-clock time, for people and for timestamps read from logs.
    pub wall: jiff::Timestamp,
    /// Boot-clock time, for every duration the planner measures.
    pub boot: BootTime,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Self {
        Self {
            wall: jiff::Timestamp::now(),
            boot: BootTime::read(),
        }
    }

    /// Maps a wall-clock time (a log line's timestamp) onto the boot clock; a time in the future
    /// counts as now.
    pub fn boot_time_of(&self, wall: jiff::Timestamp) -> BootTime {
        let ago = Duration::try_from(self.wall.duration_since(wall)).unwrap_or(Duration::ZERO);
        BootTime(
            self.boot
                .0
                .saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// The wall-clock time of a boot-clock time (for display).
    pub fn wall_of(&self, boot: BootTime) -> jiff::Timestamp {
        let delta = i64::try_from(boot.0).unwrap_or(i64::MAX)
            - i64::try_from(self.boot.0).unwrap_or(i64::MAX);
        self.wall
            .checked_add(jiff::SignedDuration::from_millis(delta))
            .unwrap_or(self.wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_clock_arithmetic_saturates() {
        assert_eq!(BootTime(5000).since(BootTime(2000)), Duration::from_secs(3));
        assert_eq!(BootTime(1000).since(BootTime(2000)), Duration::ZERO);
        assert_eq!(BootTime::from_ticks(250, 100), BootTime(2500));
        assert!(BootTime::read() > BootTime(0));
    }

    #[test]
    fn future_log_timestamps_count_as_now() {
        let now = Now {
            wall: jiff::Timestamp::from_second(1_000_000).expect("valid"),
            boot: BootTime(50_000),
        };
        let future = jiff::Timestamp::from_second(1_000_100).expect("valid");
        assert_eq!(now.boot_time_of(future), now.boot);
        let past = jiff::Timestamp::from_second(999_990).expect("valid");
        assert_eq!(now.boot_time_of(past), BootTime(40_000));
    }
}
