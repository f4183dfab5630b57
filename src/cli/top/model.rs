//! `top`'s view model: `get`'s [`Status`] (rows, rates, ETAs, phases — computed once, in
//! `get::build`) plus what a dashboard adds — alerts, the events log's last lines, each worker's
//! latest event, the disk gauge's thresholds, and the throughput history behind the sparklines.
//! Pure: time is an argument, files are read by the caller.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::cli::get::{Status, WorkerRow};
use crate::clock::BootTime;
use crate::plan::{Memory, Phase};

/// How far back a worker's sparkline reaches.
pub const SPARK_WINDOW: Duration = Duration::from_secs(30 * 60);

/// How far back the overall throughput chart reaches.
pub const CHART_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Closest spacing of two kept checkpoint samples of one worker (bounds the history at
/// 1,000 workers: at most 360 samples each per hour).
const SAMPLE_SPACING: Duration = Duration::from_secs(10);

/// Everything one frame shows.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// `get`'s rows and overall line.
    pub status: Status,
    /// Wall-clock time of the look, `HH:MM:SS`.
    pub clock: String,
    /// The disk gauge.
    pub disk: DiskGauge,
    /// Alerts, newest first.
    pub alerts: Vec<String>,
    /// The events log's last lines, oldest first, as `HH:MM:SS  message`.
    pub events: Vec<String>,
    /// Each worker's latest event in the events tail (its message without the `worker N: `).
    pub latest: BTreeMap<u32, String>,
    /// Per worker, keys per minute in equal buckets over [`Dashboard::span`], oldest first.
    pub sparks: BTreeMap<u32, Vec<u64>>,
    /// All workers' keys per minute in equal buckets over [`Dashboard::chart_span`].
    pub throughput: Vec<u64>,
    /// How far back the sparklines reach (the history kept, at most [`SPARK_WINDOW`]).
    pub span: Duration,
    /// How far back the throughput chart reaches (at most [`CHART_WINDOW`]).
    pub chart_span: Duration,
}

/// Disk utilisation with the manifest's scaling thresholds, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskGauge {
    /// Utilisation now; `None` when unknown.
    pub util: Option<f64>,
    /// `scaling.disk.normal_percent`: below it, scale-up is allowed.
    pub normal: f64,
    /// `scaling.disk.saturated_percent`: at or above it, scale-down is considered.
    pub saturated: f64,
}

/// Buckets in a sparkline and in the throughput chart (the renderer stretches or cuts them).
pub const BUCKETS: usize = 30;

impl Dashboard {
    /// Builds the frame's model from `get`'s status, the events tail (lines as the events log
    /// writes them), `get`'s notes, the history and the time of the look.
    pub fn build(
        status: Status,
        notes: Vec<String>,
        disk: DiskGauge,
        events_tail: &[String],
        history: &History,
        now: BootTime,
        clock: String,
    ) -> Self {
        let events: Vec<String> = events_tail.iter().map(|l| short_event(l)).collect();
        let mut latest = BTreeMap::new();
        for line in events_tail {
            let message = event_message(line);
            if let Some(id) = crate::state::mentioned_worker(message) {
                latest.insert(id, without_worker(message, id).to_string());
            }
        }
        let span = history.span(now, SPARK_WINDOW);
        let chart_span = history.span(now, CHART_WINDOW);
        let sparks = status
            .workers
            .iter()
            .map(|w| (w.worker, history.buckets(Some(w.worker), now, span)))
            .collect();
        let throughput = history.buckets(None, now, chart_span);
        let mut alerts = alerts(&status, events_tail);
        // `get`'s notes (a worker on the previous template, another manifest version) last.
        alerts.extend(notes.iter().map(|n| format!("note: {n}")));
        Self {
            status,
            clock,
            disk,
            alerts,
            events,
            latest,
            sparks,
            throughput,
            span,
            chart_span,
        }
    }
}

/// The message of an events-log line (`2026-12-07T00:56:37.640Z  worker 3: …` → `worker 3: …`).
fn event_message(line: &str) -> &str {
    line.split_once("  ").map_or(line, |(_, m)| m)
}

/// `00:56:37  message` from an events-log line (the time as written, UTC).
fn short_event(line: &str) -> String {
    match line.split_once("  ") {
        Some((time, message)) => {
            let clock = time.get(11..19).unwrap_or(time);
            format!("{clock}  {message}")
        }
        None => line.to_string(),
    }
}

/// `worker 3: started …` → `started …`, `worker 3 exited …` → `exited …`; others as they are
/// (`ALERT: worker 3: …`).
fn without_worker(message: &str, id: u32) -> &str {
    let prefix = format!("worker {id}");
    match message.strip_prefix(&prefix) {
        Some(rest) => rest
            .strip_prefix(": ")
            .or_else(|| rest.strip_prefix(' '))
            .unwrap_or(message),
        None => message,
    }
}

/// How much a phase is trouble: the worker list shows the worst first.
pub fn trouble(phase: Phase) -> u8 {
    match phase {
        Phase::Conflict => 0,
        Phase::Failed => 1,
        Phase::Paused => 2,
        Phase::Stuck => 3,
        Phase::BackingOff => 4,
        Phase::Stopping | Phase::Unknown => 5,
        Phase::Stopped => 6,
        Phase::Discovering => 7,
        Phase::Starting | Phase::Queued => 8,
        Phase::Progressing => 9,
        Phase::Parked => 10,
        Phase::Pending => 11,
        Phase::Completed => 12,
    }
}

/// The rows in the order the list shows them: trouble first, then by id.
pub fn sorted(workers: &[WorkerRow]) -> Vec<&WorkerRow> {
    let mut rows: Vec<&WorkerRow> = workers.iter().collect();
    rows.sort_by_key(|w| (trouble(w.phase), w.worker));
    rows
}

/// Alerts, newest first: the workers in trouble now (as the last pass saw them), then the
/// events log's `ALERT:` and `FAILED:` lines, latest first.
fn alerts(status: &Status, events_tail: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for w in sorted(&status.workers) {
        let what = match w.phase {
            Phase::Conflict => "conflict",
            Phase::Failed => "failed",
            Phase::Paused => "paused",
            Phase::Stuck => "stuck",
            Phase::BackingOff => "crash loop",
            _ => continue,
        };
        out.push(format!("worker {} {what}: {}", w.worker, w.reason));
    }
    for line in events_tail.iter().rev() {
        let message = event_message(line);
        if message.starts_with("ALERT: ") || message.starts_with("FAILED: ") {
            out.push(short_event(line));
        }
    }
    out
}

/// Checkpoint samples gathered across looks, for sparklines and the throughput chart: each
/// worker's `(boot time, checkpoint)`, seeded from the loop's own rate samples and extended at
/// every look; kept for [`CHART_WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct History {
    workers: BTreeMap<u32, VecDeque<(BootTime, u64)>>,
}

impl History {
    /// Takes in one look: every worker's recorded rate samples (older ones first) and its
    /// checkpoint now; drops what is older than [`CHART_WINDOW`].
    pub fn record(&mut self, memory: &Memory, now: BootTime) {
        for (id, w) in &memory.workers {
            let samples = self.workers.entry(id.0).or_default();
            let points = w
                .rate_samples
                .iter()
                .copied()
                .chain(w.checkpoint.map(|c| (now, c)));
            for (t, c) in points {
                match samples.back() {
                    Some((last_t, _)) if t <= *last_t => {}
                    Some((last_t, last_c)) if t.since(*last_t) < SAMPLE_SPACING && c == *last_c => {
                    }
                    Some((last_t, _)) if t.since(*last_t) < SAMPLE_SPACING => {
                        // Too close to the last one: move the last one instead.
                        if let Some(back) = samples.back_mut() {
                            back.1 = c.max(back.1);
                        }
                    }
                    _ => samples.push_back((t, c)),
                }
            }
            while samples
                .front()
                .is_some_and(|(t, _)| now.since(*t) > CHART_WINDOW)
            {
                samples.pop_front();
            }
        }
    }

    /// How far back the history reaches from `now`, at most `window` (at least one minute).
    pub fn span(&self, now: BootTime, window: Duration) -> Duration {
        let oldest = self
            .workers
            .values()
            .filter_map(|s| s.front().map(|(t, _)| now.since(*t)))
            .max()
            .unwrap_or_default();
        oldest.clamp(Duration::from_secs(60), window)
    }

    /// Keys per minute in [`BUCKETS`] equal buckets over the `span` before `now`, oldest first:
    /// one worker's, or (`None`) all workers' together. The advance between two samples is
    /// spread evenly over the time between them (samples come once per pass, buckets may be
    /// shorter).
    pub fn buckets(&self, worker: Option<u32>, now: BootTime, span: Duration) -> Vec<u64> {
        let mut keys = [0f64; BUCKETS];
        let width_ms = (span.as_millis() as u64 / BUCKETS as u64).max(1);
        let start = now.0.saturating_sub(width_ms * BUCKETS as u64);
        let series: Vec<&VecDeque<(BootTime, u64)>> = match worker {
            Some(id) => self.workers.get(&id).into_iter().collect(),
            None => self.workers.values().collect(),
        };
        for samples in series {
            for (a, b) in samples.iter().zip(samples.iter().skip(1)) {
                let advance = b.1.saturating_sub(a.1);
                let (from, to) = (a.0.0.max(start), b.0.0.min(now.0));
                if advance == 0 || from >= to {
                    continue;
                }
                let per_ms = advance as f64 / (b.0.0 - a.0.0) as f64;
                let first = ((from - start) / width_ms) as usize;
                let last = (((to - 1 - start) / width_ms) as usize).min(BUCKETS - 1);
                for (i, k) in keys.iter_mut().enumerate().take(last + 1).skip(first) {
                    let lo = start + i as u64 * width_ms;
                    let overlap = to.min(lo + width_ms).saturating_sub(from.max(lo));
                    *k += overlap as f64 * per_ms;
                }
            }
        }
        let minutes = width_ms as f64 / 60_000.0;
        keys.iter().map(|k| (k / minutes).round() as u64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkerId;
    use crate::plan::WorkerMemory;

    fn memory(samples: &[(u64, u64)], checkpoint: u64) -> Memory {
        let mut m = Memory::default();
        let w = WorkerMemory {
            checkpoint: Some(checkpoint),
            rate_samples: samples
                .iter()
                .map(|(s, c)| (BootTime(s * 1000), *c))
                .collect(),
            ..WorkerMemory::default()
        };
        m.workers.insert(WorkerId(0), Box::new(w));
        m
    }

    /// The loop's own samples seed the history, so a freshly started `top` already draws the
    /// last minutes; later looks extend it, and close looks do not grow it.
    #[test]
    fn history_is_seeded_from_the_loops_samples_and_extended_at_each_look() {
        let mut h = History::default();
        h.record(
            &memory(&[(0, 100), (60, 160), (120, 220)], 220),
            BootTime(120_000),
        );
        // One second later, the same checkpoint: nothing new.
        h.record(
            &memory(&[(0, 100), (60, 160), (120, 220)], 220),
            BootTime(121_000),
        );
        assert_eq!(h.workers[&0].len(), 3);
        h.record(&memory(&[(60, 160), (120, 220)], 280), BootTime(180_000));
        assert_eq!(h.workers[&0].len(), 4);
        // 3 minutes of history at 60 keys a minute: 60 in every bucket, though samples are a
        // minute apart and buckets 6 s wide.
        let span = h.span(BootTime(180_000), SPARK_WINDOW);
        assert_eq!(span, Duration::from_secs(180));
        let b = h.buckets(Some(0), BootTime(180_000), span);
        assert_eq!(b, vec![60; BUCKETS]);
        assert_eq!(h.buckets(None, BootTime(180_000), span), b);
    }

    /// Regression guard: samples older than the chart's hour are dropped (memory stays bounded
    /// however long `top` runs).
    #[test]
    fn history_older_than_the_chart_window_is_dropped() {
        let mut h = History::default();
        h.record(&memory(&[(0, 100)], 100), BootTime(0));
        h.record(&memory(&[], 200), BootTime(3_700_000));
        assert_eq!(h.workers[&0].len(), 1);
    }
}
