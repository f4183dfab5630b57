//! `automon probe FILE --worker N`: the stuck rule for one worker, stateless, for a Kubernetes
//! exec `livenessProbe` (the kubelet restarts a hung worker) or any other watchdog. Exit 0 when
//! the worker is progressing (or still within its grace), 1 with the reason on stderr when its
//! progress signal is older than `stuck_after` (`discovery_grace` before the first one,
//! measured from the process's start), 2 on bad input.
//!
//! It reads what the planner reads — the progress file and the tail of the log, classified by
//! the manifest's patterns — and judges with the planner's rule
//! ([`crate::plan::health::probe_verdict`]). Without the planner's memory between passes, a
//! progress signal is a write of the progress file since the start, or an upload/activity log
//! line that does not repeat an earlier line of the tail.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::WorkerId;
use crate::manifest::Desired;
use crate::observe::logtail::{self, LineClass, LogObservation};
use crate::observe::progress::{self, Pointers, ProgressObservation};
use crate::plan::health::{ProbeEvidence, probe_verdict};

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// The worker id (default: $JOB_COMPLETION_INDEX, as in a Kubernetes Indexed Job).
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub worker: WorkerId,
    /// The process whose start begins the discovery clock (default 1: the container's first
    /// process, the worker itself in an exported Job).
    #[arg(long, default_value_t = 1, conflicts_with = "started_at")]
    pub pid: i32,
    /// The start time instead of a process's, as RFC 3339 (e.g. 2026-12-07T03:00:00Z).
    #[arg(long)]
    pub started_at: Option<jiff::Timestamp>,
}

/// Runs `probe`.
pub fn run(args: &ProbeArgs) -> Result<u8, CliError> {
    let manifest = super::load_manifest(&args.file)?;
    // The range end is not needed to judge silence (end_command is not run).
    let desired = Desired::resolve(&manifest, None)
        .map_err(|e| CliError::input(format!("{}: {e}", args.file.display())))?;
    if let Some(shards) = &desired.shards
        && usize::try_from(args.worker.0).map_or(true, |i| i >= shards.len())
    {
        return Err(CliError::input(format!(
            "{}: no worker {} (this WorkerSet has workers 0–{})",
            args.file.display(),
            args.worker,
            shards.len().saturating_sub(1)
        )));
    }
    let started = match args.started_at {
        Some(t) => t,
        None => process_start(args.pid)?,
    };
    let mut evidence = gather(&desired, args.worker, started);
    // A worker whose checkpoint reached its shard's end has finished its work: not stuck,
    // however long ago it last wrote (regression: a fresh-clone user's probe of a completed
    // demo worker said "stuck: no progress for 16m12s"); the verdict says so.
    evidence.shard_last_key = desired.shards.as_ref().and_then(|s| {
        usize::try_from(args.worker.0)
            .ok()
            .and_then(|i| s.get(i))
            .map(|shard| shard.last_key())
    });
    match probe_verdict(&desired.health, &evidence, jiff::Timestamp::now()) {
        Ok(words) => {
            crate::outln!("worker {}: {words}", args.worker);
            Ok(0)
        }
        Err(words) => {
            crate::errln!("worker {}: {words}", args.worker);
            Ok(1)
        }
    }
}

/// The wall-clock start of process `pid`, from `/proc`.
fn process_start(pid: i32) -> Result<jiff::Timestamp, CliError> {
    let proc_root = Path::new("/proc");
    let stat = crate::observe::proc::read_stat(proc_root, pid)
        .ok_or_else(|| CliError::input(format!("--pid {pid}: no such process")))?;
    let boot = crate::observe::proc::boot_time(proc_root)
        .ok_or_else(|| CliError::runtime("cannot read the boot time from /proc/stat"))?;
    crate::observe::proc::start_time(
        boot,
        stat.start_ticks,
        crate::observe::proc::clock_ticks_per_second(),
    )
    .ok_or_else(|| CliError::runtime(format!("--pid {pid}: start time out of range")))
}

fn mtime(path: &Path) -> Option<jiff::Timestamp> {
    let v = progress::version(path)?;
    jiff::Timestamp::from_nanosecond(v.mtime_ns).ok()
}

/// Reads worker `id`'s progress file and log tail into evidence (errors become "no signal").
pub fn gather(desired: &Desired, id: WorkerId, started: jiff::Timestamp) -> ProbeEvidence {
    let mut evidence = ProbeEvidence {
        started,
        ..ProbeEvidence::default()
    };
    let progress_path = desired.progress_path(id);
    let pointers = Pointers {
        checkpoint: desired.checkpoint_pointer.clone(),
        items: None,
        completion: None,
    };
    let mut progress_written = None;
    if let ProgressObservation::Read { checkpoint, .. } = progress::read(&progress_path, &pointers)
    {
        evidence.checkpoint = Some(checkpoint);
        progress_written = mtime(&progress_path).filter(|m| *m >= started);
        if let Some(m) = progress_written {
            evidence.last_signal = Some(m);
            evidence.left_discovery = true;
        }
    }
    let log_path = desired.log_path(id);
    let format = logtail::LineFormat::new(&desired.timestamp_format, jiff::tz::TimeZone::system());
    if let LogObservation::Read { records, .. } = logtail::read_tail(
        &log_path,
        desired.tail_bytes,
        None,
        &desired.patterns,
        &format,
    ) {
        let log_mtime = mtime(&log_path);
        let mut seen = std::collections::HashSet::new();
        let mut since_write = Vec::new();
        for r in &records {
            if !matches!(r.class, LineClass::Upload | LineClass::Activity) {
                continue;
            }
            let Some(at) = r.timestamp.or(log_mtime) else {
                continue;
            };
            if at < started {
                continue;
            }
            if progress_written.is_none_or(|w| at > w) {
                since_write.push(r.clone());
            }
            // The same line again is a loop, not progress (as in the planner).
            if !seen.insert(crate::plan::without_leading_time(&r.message).to_string()) {
                continue;
            }
            evidence.last_signal = Some(evidence.last_signal.map_or(at, |s| s.max(at)));
            if r.class == LineClass::Upload {
                evidence.left_discovery = true;
            }
        }
        evidence.looping = logtail::repeated_cursor(&since_write)
            .is_some_and(|c| c.times >= crate::plan::LOOP_EVIDENCE);
    }
    evidence
}
