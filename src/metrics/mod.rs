//! Metrics of the control loop in the Prometheus text exposition format (version 0.0.4).
//!
//! After every pass the daemon fills a [`MetricsSnapshot`] from the plan, the memory and the
//! disk observation; [`render_metrics`] turns it into text, which the [`Reporter`] writes to a
//! node_exporter textfile (`--metrics-textfile`) and hands to the control server, which serves
//! `GET /metrics` on the control socket and on `--metrics-addr` (see [`crate::control`]).
//! `STATE_DIR/status.json` is written at the same time.
//!
//! # Layout
//!
//! - `render`: the pure snapshot → text function.
//! - `reporter`: what runs after each pass (status file, textfile, the served snapshot).

mod render;
mod reporter;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::WorkerId;
use crate::clock::BootTime;
use crate::observe::disk::DiskObservation;
use crate::plan::{Memory, Phase, Plan, Totals};

pub use render::render_metrics;
pub use reporter::{ReportOptions, Reporter};

/// Every phase, in the order metrics list them.
pub const ALL_PHASES: [Phase; 13] = [
    Phase::Pending,
    Phase::Starting,
    Phase::Discovering,
    Phase::Progressing,
    Phase::Stuck,
    Phase::Stopping,
    Phase::Conflict,
    Phase::Stopped,
    Phase::BackingOff,
    Phase::Parked,
    Phase::Paused,
    Phase::Failed,
    Phase::Completed,
];

/// Phases only a batch engine has (`runtime: slurm`): listed where a worker is in one, so a
/// local fleet's metrics read as they always did.
pub const ENGINE_PHASES: [Phase; 2] = [Phase::Queued, Phase::Unknown];

/// [`ALL_PHASES`], then the [`ENGINE_PHASES`] some worker is in (`counts` by phase).
pub fn listed_phases(
    counts: &std::collections::BTreeMap<Phase, usize>,
) -> impl Iterator<Item = Phase> + '_ {
    ALL_PHASES.into_iter().chain(
        ENGINE_PHASES
            .into_iter()
            .filter(|p| counts.get(p).is_some_and(|n| *n > 0)),
    )
}

/// The snake_case name of a phase, as metrics labels and `status.json` use it.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Starting => "starting",
        Phase::Discovering => "discovering",
        Phase::Progressing => "progressing",
        Phase::Stuck => "stuck",
        Phase::Stopping => "stopping",
        Phase::Conflict => "conflict",
        Phase::Stopped => "stopped",
        Phase::BackingOff => "backing_off",
        Phase::Parked => "parked",
        Phase::Paused => "paused",
        Phase::Failed => "failed",
        Phase::Completed => "completed",
        Phase::Queued => "queued",
        Phase::Unknown => "unknown",
    }
}

/// True for the phases in which a worker process runs.
pub fn is_running(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Starting | Phase::Discovering | Phase::Progressing | Phase::Stuck | Phase::Stopping
    )
}

/// True when a worker runs a process: a running phase and a process its memory holds (seen
/// alive, or started by this pass). A start only planned (`get` without a loop) or one that
/// failed is phase Starting with no process: it runs nothing. `get`, `status` and the metrics
/// all count running workers by this.
pub fn runs(phase: Phase, memory: Option<&crate::plan::WorkerMemory>) -> bool {
    is_running(phase) && memory.is_some_and(|w| w.process.is_some())
}

/// One worker's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerMetrics {
    /// The worker.
    pub worker: WorkerId,
    /// Its last checkpoint (the resume cursor), when known.
    pub checkpoint: Option<u64>,
    /// Checkpoint advance per minute over its recent samples, when there are two samples apart
    /// in time.
    pub items_per_minute: Option<f64>,
}

/// Disk figures of the last pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskMetrics {
    /// Fraction of wall time the device was busy, 0–1.
    pub utilisation_ratio: f64,
    /// Average number of requests in flight.
    pub queue_depth: f64,
}

/// Everything the metrics show after one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Workers by phase; [`render_metrics`] lists every phase, 0 when absent here.
    pub phases: BTreeMap<Phase, usize>,
    /// How many workers should run now.
    pub desired: u32,
    /// How many worker processes run.
    pub running: usize,
    /// Running totals from memory (restarts, fixes, scaling).
    pub totals: Totals,
    /// The disk, when a sample was available this pass.
    pub disk: Option<DiskMetrics>,
    /// Per worker with a checkpoint, by id.
    pub workers: Vec<WorkerMetrics>,
    /// How long the last pass took.
    pub pass_duration: Duration,
    /// Passes made by this process.
    pub passes: u64,
    /// When the last pass ended.
    pub last_pass_at: jiff::Timestamp,
}

impl MetricsSnapshot {
    /// The snapshot after a pass: phases from the plan, counters and checkpoints from the memory
    /// (after the pass's actions were recorded), the desired count from memory (the manifest's
    /// target before the first scaling decision).
    pub fn from_pass(
        plan: &Plan,
        memory: &Memory,
        target: u32,
        disk: Option<&DiskObservation>,
        pass_duration: Duration,
        passes: u64,
        last_pass_at: jiff::Timestamp,
    ) -> Self {
        let mut phases = BTreeMap::new();
        for s in plan.workers.values() {
            *phases.entry(s.phase).or_default() += 1;
        }
        let running = plan
            .workers
            .iter()
            .filter(|(id, s)| runs(s.phase, memory.workers.get(id).map(AsRef::as_ref)))
            .count();
        let disk = match disk {
            Some(DiskObservation::Sample {
                util_percent,
                queue_depth,
                ..
            }) => Some(DiskMetrics {
                utilisation_ratio: (util_percent / 100.0).clamp(0.0, 1.0),
                queue_depth: *queue_depth,
            }),
            _ => None,
        };
        let workers = memory
            .workers
            .iter()
            .filter(|(_, w)| w.checkpoint.is_some())
            .map(|(id, w)| WorkerMetrics {
                worker: *id,
                checkpoint: w.checkpoint,
                // Only a progressing worker has a rate (window ending at its newest sample).
                items_per_minute: plan.workers.get(id).and_then(|s| {
                    let newest = w.rate_samples.back()?.0;
                    crate::plan::rate::per_minute(&w.rate_samples, s.phase, newest)
                }),
            })
            .collect();
        Self {
            phases,
            desired: memory.desired_count.unwrap_or(target),
            running,
            totals: memory.totals.clone(),
            disk,
            workers,
            pass_duration,
            passes,
            last_pass_at,
        }
    }
}

/// (last − first checkpoint) / minutes between them over samples oldest first; `None` with
/// fewer than two samples, no time between them, or a checkpoint that went backwards.
pub fn items_per_minute(samples: impl IntoIterator<Item = (BootTime, u64)>) -> Option<f64> {
    let mut it = samples.into_iter();
    let first = it.next()?;
    let last = it.last()?;
    let minutes = last.0.since(first.0).as_secs_f64() / 60.0;
    let advance = last.1.checked_sub(first.1)?;
    // Checkpoints are far below 2^53: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let advance = advance as f64;
    (minutes > 0.0).then(|| advance / minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_advance_per_minute_between_first_and_last_sample() {
        let s = [
            (BootTime(0), 100),
            (BootTime(30_000), 130),
            (BootTime(120_000), 400),
        ];
        assert_eq!(items_per_minute(s), Some(150.0));
        assert_eq!(items_per_minute([(BootTime(0), 1)]), None);
        assert_eq!(items_per_minute([(BootTime(5), 1), (BootTime(5), 9)]), None);
        assert_eq!(
            items_per_minute([(BootTime(0), 9), (BootTime(60_000), 1)]),
            None
        );
    }

    #[test]
    fn every_phase_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> =
            ALL_PHASES.iter().map(|p| phase_name(*p)).collect();
        assert_eq!(names.len(), ALL_PHASES.len());
    }
}
