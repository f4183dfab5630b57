//! Disk utilisation of the block device that backs a path, from `/proc/diskstats`.
//!
//! The device: `stat(path).st_dev` → major:minor → `/sys/dev/block/MAJ:MIN`; a partition (it
//! has a `partition` file) maps to its whole disk (the parent directory); a device-mapper device
//! keeps its own line. Utilisation is Δio_ticks / Δwall over the time between two passes (what
//! iostat calls %util), queue depth Δweighted-ms / Δwall (aqu-sz). A counter that went down
//! (32-bit wrap, device re-created) yields no sample and never underflows. Lines with 11, 15 or
//! 17 counters (kernels before 4.18, 4.18+, 5.5+) are accepted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::BootTime;

/// The two counters utilisation needs, from one diskstats line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCounters {
    /// Milliseconds the device had I/O in flight (counter 10).
    pub io_ticks_ms: u64,
    /// Weighted milliseconds doing I/O (counter 11).
    pub weighted_ms: u64,
}

/// The block device backing the watched path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDevice {
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Kernel name (`sda`, `nvme0n1`, `dm-0`).
    pub name: String,
    /// True for a spinning disk, false for SSD/NVMe, `None` when unknown.
    pub rotational: Option<bool>,
}

/// What one pass knows about the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DiskObservation {
    /// Utilisation over the time since the previous sample.
    Sample {
        /// The device.
        device: DiskDevice,
        /// Percent of wall time the device was busy, 0–100.
        util_percent: f64,
        /// Average number of requests in flight.
        queue_depth: f64,
    },
    /// The first reading (or one after a counter went down): no interval to measure yet.
    Warming {
        /// The device.
        device: DiskDevice,
    },
    /// No figure: `why` says what is missing.
    Unavailable {
        /// The reason.
        why: String,
    },
}

/// Reads the counters of `major:minor` from diskstats text; `None` if absent or malformed.
pub fn parse_diskstats(text: &str, major: u64, minor: u64) -> Option<DiskCounters> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        // major, minor, name, then at least 11 counters.
        if f.len() < 14 || f[0].parse::<u64>().ok()? != major || f[1].parse::<u64>().ok()? != minor
        {
            return None;
        }
        Some(DiskCounters {
            io_ticks_ms: f[12].parse().ok()?,
            weighted_ms: f[13].parse().ok()?,
        })
    })
}

/// Utilisation and queue depth between two readings `wall_ms` apart; `None` when a counter went
/// down or no time passed.
pub fn utilisation(prev: DiskCounters, cur: DiskCounters, wall_ms: u64) -> Option<(f64, f64)> {
    if wall_ms == 0 {
        return None;
    }
    let busy = cur.io_ticks_ms.checked_sub(prev.io_ticks_ms)?;
    let weighted = cur.weighted_ms.checked_sub(prev.weighted_ms)?;
    let util = (busy as f64 / wall_ms as f64 * 100.0).min(100.0);
    Some((util, weighted as f64 / wall_ms as f64))
}

/// Finds the whole-disk (or device-mapper) device backing `path`, reading `sys_root`
/// (usually `/sys`).
///
/// # Errors
/// A sentence: the path cannot be stat'ed, it is on a filesystem without a block device, or the
/// device is not in sysfs.
pub fn resolve_device(path: &Path, sys_root: &Path) -> Result<DiskDevice, String> {
    let st =
        nix::sys::stat::stat(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let (major, minor) = (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    );
    if major == 0 {
        return Err(format!(
            "{} is on a filesystem without a block device ({major}:{minor})",
            path.display()
        ));
    }
    let mut dir = sys_root.join(format!("dev/block/{major}:{minor}"));
    dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    if !dir.exists() {
        return Err(format!(
            "no {} for the device of {}",
            dir.display(),
            path.display()
        ));
    }
    if dir.join("partition").exists()
        && let Some(parent) = dir.parent()
    {
        dir = parent.to_path_buf();
    }
    let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
    let field = |k: &str| {
        uevent
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_string)
    };
    let name = field("DEVNAME=")
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let (maj, min) = match (field("MAJOR="), field("MINOR=")) {
        (Some(a), Some(b)) => (a.parse().unwrap_or(major), b.parse().unwrap_or(minor)),
        _ => (major, minor),
    };
    let rotational = std::fs::read_to_string(dir.join("queue/rotational"))
        .ok()
        .map(|s| s.trim() == "1");
    Ok(DiskDevice {
        major: maj,
        minor: min,
        name,
        rotational,
    })
}

/// Samples one device pass after pass; holds the previous reading (observer-side state, not
/// planner memory).
#[derive(Debug)]
pub struct DiskSampler {
    path: PathBuf,
    diskstats: PathBuf,
    sys_root: PathBuf,
    device: Option<DiskDevice>,
    prev: Option<(DiskCounters, BootTime)>,
    /// The shortest time a figure is measured over (see [`DiskSampler::with_window`]).
    window: std::time::Duration,
    /// The last figure, returned again by a reading closer than `window` to `prev`.
    last: Option<DiskObservation>,
}

impl DiskSampler {
    /// A sampler for the device backing `path`, reading `proc_root/diskstats` and `sys_root`.
    pub fn new(path: &Path, proc_root: &Path, sys_root: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            diskstats: proc_root.join("diskstats"),
            sys_root: sys_root.to_path_buf(),
            device: None,
            prev: None,
            window: std::time::Duration::ZERO,
            last: None,
        }
    }

    /// Utilisation measured over at least `window` (the check interval): a reading closer than
    /// that to the previous one returns the previous figure instead of measuring a sliver. (A
    /// pass woken by a child's exit 5 ms after the last one read anywhere from 13 % to 138 %
    /// on a disk steadily 88 % busy.)
    #[must_use]
    pub fn with_window(mut self, window: std::time::Duration) -> Self {
        self.window = window;
        self
    }

    /// Takes a reading at boot-clock time `now`.
    pub fn sample(&mut self, now: BootTime) -> DiskObservation {
        let device = match &self.device {
            Some(d) => d.clone(),
            None => match resolve_device(&self.path, &self.sys_root) {
                Ok(d) => {
                    self.device = Some(d.clone());
                    d
                }
                Err(why) => return DiskObservation::Unavailable { why },
            },
        };
        let text = match std::fs::read_to_string(&self.diskstats) {
            Ok(t) => t,
            Err(e) => {
                return DiskObservation::Unavailable {
                    why: format!("cannot read {}: {e}", self.diskstats.display()),
                };
            }
        };
        let Some(cur) = parse_diskstats(&text, device.major, device.minor) else {
            self.device = None; // re-resolve next time: the device may have been re-created
            self.prev = None;
            return DiskObservation::Unavailable {
                why: format!(
                    "{} ({}:{}) not in {}",
                    device.name,
                    device.major,
                    device.minor,
                    self.diskstats.display()
                ),
            };
        };
        if let (Some((_, at)), Some(last)) = (self.prev, &self.last)
            && now.since(at) < self.window
        {
            return last.clone();
        }
        let prev = self.prev.replace((cur, now));
        let figure = match prev.and_then(|(p, at)| utilisation(p, cur, now.0.saturating_sub(at.0)))
        {
            Some((util_percent, queue_depth)) => DiskObservation::Sample {
                device,
                util_percent,
                queue_depth,
            },
            None => DiskObservation::Warming { device },
        };
        self.last = Some(figure.clone());
        figure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/diskstats")
                .join(name),
        )
        .expect("fixture")
    }

    #[test]
    fn all_three_line_lengths_parse() {
        for name in ["format_14_fields.txt", "format_18_fields.txt", "t0.txt"] {
            let c = parse_diskstats(&fixture(name), 8, 0).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                c,
                DiskCounters {
                    io_ticks_ms: 36_001_000,
                    weighted_ms: 120_044_110
                },
                "{name}"
            );
        }
    }

    #[test]
    fn rotational_disk_is_nearly_saturated_over_one_second() {
        let (t0, t1) = (fixture("t0.txt"), fixture("t1_after_1s.txt"));
        let (a, b) = (
            parse_diskstats(&t0, 8, 0).expect("sda"),
            parse_diskstats(&t1, 8, 0).expect("sda"),
        );
        let (util, queue) = utilisation(a, b, 1000).expect("sample");
        assert!((util - 96.8).abs() < 0.01, "{util}");
        assert!((queue - 9.611).abs() < 0.01, "{queue}");
    }

    #[test]
    fn nvme_at_full_util_has_a_shallow_queue() {
        let (t0, t1) = (fixture("t0.txt"), fixture("t1_after_1s.txt"));
        let (a, b) = (
            parse_diskstats(&t0, 259, 0).expect("nvme"),
            parse_diskstats(&t1, 259, 0).expect("nvme"),
        );
        let (util, queue) = utilisation(a, b, 1000).expect("sample");
        assert_eq!(util, 100.0);
        assert!((queue - 0.4).abs() < 1e-9, "{queue}");
    }

    #[test]
    fn a_counter_that_went_down_gives_no_sample() {
        let (a, b) = (
            parse_diskstats(&fixture("wrap_t0.txt"), 8, 16).expect("t0"),
            parse_diskstats(&fixture("wrap_t1.txt"), 8, 16).expect("t1"),
        );
        assert_eq!(utilisation(a, b, 1000), None);
    }

    #[test]
    fn absent_device_and_zero_interval() {
        assert_eq!(parse_diskstats(&fixture("t0.txt"), 9, 9), None);
        let c = DiskCounters {
            io_ticks_ms: 1,
            weighted_ms: 1,
        };
        assert_eq!(utilisation(c, c, 0), None);
    }

    /// Regression (issue 14.2): a pass 5 ms after the previous one measured a sliver (13–138 %
    /// on a disk steadily 88 % busy). A reading closer than the window repeats the last figure.
    #[test]
    fn a_reading_closer_than_the_window_repeats_the_last_figure() {
        let mut s = DiskSampler::new(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            Path::new("/proc"),
            Path::new("/sys"),
        )
        .with_window(std::time::Duration::from_secs(10));
        if let DiskObservation::Warming { .. } = s.sample(BootTime(1000)) {
            assert!(matches!(
                s.sample(BootTime(1005)),
                DiskObservation::Warming { .. }
            ));
            assert!(matches!(
                s.sample(BootTime(9_000)),
                DiskObservation::Warming { .. }
            ));
            let figure = s.sample(BootTime(11_000));
            assert!(
                matches!(figure, DiskObservation::Sample { .. }),
                "{figure:?}"
            );
            assert_eq!(s.sample(BootTime(11_005)), figure, "not a 5 ms sliver");
        }
    }

    #[test]
    fn the_real_root_disk_resolves_and_samples() {
        let mut s = DiskSampler::new(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            Path::new("/proc"),
            Path::new("/sys"),
        );
        match s.sample(BootTime(1000)) {
            DiskObservation::Warming { device } => {
                assert!(!device.name.is_empty());
                assert!(matches!(
                    s.sample(BootTime(2000)),
                    DiskObservation::Sample { .. }
                ));
            }
            // Some filesystems (tmpfs, overlay without a block device) have none: said so.
            DiskObservation::Unavailable { why } => assert!(
                why.contains("block device") || why.contains("/sys"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
