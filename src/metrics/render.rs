//! [`render_metrics`]: a [`MetricsSnapshot`] as Prometheus text (exposition format 0.0.4):
//! for each family a `# HELP` and a `# TYPE` line, then its samples; counters end in `_total`.

use std::fmt::Write;

use super::{MetricsSnapshot, phase_name};

/// Appends one family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A float as Prometheus writes it (`NaN`, `+Inf`, `-Inf` for the non-finite).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// Renders the snapshot. Every phase appears in `automon_workers` (0 when none); the disk
/// families are absent when there was no disk sample; per-worker families list the workers with
/// a checkpoint (`automon_worker_items_per_minute` those with a rate).
pub fn render_metrics(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let o = &mut out;
    family(o, "automon_workers", "gauge", "Workers by phase.");
    for phase in super::listed_phases(&s.phases) {
        let n = s.phases.get(&phase).copied().unwrap_or(0);
        let _ = writeln!(o, "automon_workers{{phase=\"{}\"}} {n}", phase_name(phase));
    }
    family(
        o,
        "automon_workers_desired",
        "gauge",
        "How many workers should run now (the target, moved by scaling).",
    );
    let _ = writeln!(o, "automon_workers_desired {}", s.desired);
    family(
        o,
        "automon_workers_running",
        "gauge",
        "Worker processes running (starting, discovering, progressing, stuck or stopping).",
    );
    let _ = writeln!(o, "automon_workers_running {}", s.running);
    family(
        o,
        "automon_restarts_total",
        "counter",
        "Worker restarts by reason: crash (unexpected exit) or stuck (stopped for lack of progress).",
    );
    let _ = writeln!(
        o,
        "automon_restarts_total{{reason=\"crash\"}} {}",
        s.totals.crash_restarts
    );
    let _ = writeln!(
        o,
        "automon_restarts_total{{reason=\"stuck\"}} {}",
        s.totals.stuck_restarts
    );
    family(
        o,
        "automon_fixes_total",
        "counter",
        "Fixes applied, by type.",
    );
    for kind in ["restart", "config_fix", "code_fix"] {
        let n = s.totals.fixes.get(kind).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "automon_fixes_total{{type=\"{kind}\",result=\"applied\"}} {n}"
        );
    }
    family(
        o,
        "automon_fix_verifications_total",
        "counter",
        "Fix verifications by result (all fix types together).",
    );
    let _ = writeln!(
        o,
        "automon_fix_verifications_total{{result=\"succeeded\"}} {}",
        s.totals.fixes_succeeded
    );
    let _ = writeln!(
        o,
        "automon_fix_verifications_total{{result=\"failed\"}} {}",
        s.totals.fixes_failed
    );
    family(
        o,
        "automon_scale_events_total",
        "counter",
        "Scaling decisions carried out, by direction.",
    );
    let _ = writeln!(
        o,
        "automon_scale_events_total{{direction=\"up\"}} {}",
        s.totals.scale_ups
    );
    let _ = writeln!(
        o,
        "automon_scale_events_total{{direction=\"down\"}} {}",
        s.totals.scale_downs
    );
    if let Some(d) = s.disk {
        family(
            o,
            "automon_disk_utilisation_ratio",
            "gauge",
            "Fraction of the last interval the watched disk was busy (0-1).",
        );
        let _ = writeln!(
            o,
            "automon_disk_utilisation_ratio {}",
            float(d.utilisation_ratio)
        );
        family(
            o,
            "automon_disk_queue_depth",
            "gauge",
            "Average number of requests in flight on the watched disk over the last interval.",
        );
        let _ = writeln!(o, "automon_disk_queue_depth {}", float(d.queue_depth));
    }
    family(
        o,
        "automon_worker_checkpoint",
        "gauge",
        "The worker's last checkpoint (its resume cursor).",
    );
    for w in &s.workers {
        if let Some(c) = w.checkpoint {
            let _ = writeln!(
                o,
                "automon_worker_checkpoint{{worker=\"{}\"}} {c}",
                w.worker
            );
        }
    }
    family(
        o,
        "automon_worker_items_per_minute",
        "gauge",
        "Checkpoint advance per minute over the worker's recent samples.",
    );
    for w in &s.workers {
        if let Some(r) = w.items_per_minute {
            let _ = writeln!(
                o,
                "automon_worker_items_per_minute{{worker=\"{}\"}} {}",
                w.worker,
                float(r)
            );
        }
    }
    family(
        o,
        "automon_reconcile_duration_seconds",
        "gauge",
        "How long the last reconcile pass took, in seconds.",
    );
    let _ = writeln!(
        o,
        "automon_reconcile_duration_seconds {}",
        float(s.pass_duration.as_secs_f64())
    );
    family(
        o,
        "automon_reconcile_passes_total",
        "counter",
        "Reconcile passes made by this automon process.",
    );
    let _ = writeln!(o, "automon_reconcile_passes_total {}", s.passes);
    family(
        o,
        "automon_last_reconcile_timestamp_seconds",
        "gauge",
        "When the last reconcile pass ended, in seconds since the Unix epoch.",
    );
    let _ = writeln!(
        o,
        "automon_last_reconcile_timestamp_seconds {}",
        s.last_pass_at.as_second()
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::WorkerId;
    use crate::metrics::{DiskMetrics, WorkerMetrics};
    use crate::plan::{Phase, Totals};

    fn snapshot() -> MetricsSnapshot {
        let mut totals = Totals {
            crash_restarts: 2,
            stuck_restarts: 1,
            fixes_succeeded: 1,
            fixes_failed: 3,
            scale_downs: 1,
            ..Totals::default()
        };
        totals.fixes.insert("restart".into(), 4);
        MetricsSnapshot {
            phases: BTreeMap::from([(Phase::Progressing, 3), (Phase::BackingOff, 1)]),
            desired: 4,
            running: 3,
            totals,
            disk: Some(DiskMetrics {
                utilisation_ratio: 0.25,
                queue_depth: 1.5,
            }),
            workers: vec![
                WorkerMetrics {
                    worker: WorkerId(3),
                    checkpoint: Some(1200),
                    items_per_minute: Some(150.0),
                },
                WorkerMetrics {
                    worker: WorkerId(5),
                    checkpoint: Some(7),
                    items_per_minute: None,
                },
            ],
            pass_duration: Duration::from_millis(12),
            passes: 9,
            last_pass_at: jiff::Timestamp::from_second(1_700_000_000).expect("ts"),
        }
    }

    #[test]
    fn renders_every_family_with_help_type_and_samples() {
        let text = render_metrics(&snapshot());
        for line in [
            "# TYPE automon_workers gauge",
            "automon_workers{phase=\"progressing\"} 3",
            "automon_workers{phase=\"backing_off\"} 1",
            "automon_workers{phase=\"completed\"} 0",
            "automon_workers_desired 4",
            "automon_workers_running 3",
            "# TYPE automon_restarts_total counter",
            "automon_restarts_total{reason=\"crash\"} 2",
            "automon_restarts_total{reason=\"stuck\"} 1",
            "automon_fixes_total{type=\"restart\",result=\"applied\"} 4",
            "automon_fixes_total{type=\"code_fix\",result=\"applied\"} 0",
            "automon_fix_verifications_total{result=\"succeeded\"} 1",
            "automon_fix_verifications_total{result=\"failed\"} 3",
            "automon_scale_events_total{direction=\"up\"} 0",
            "automon_scale_events_total{direction=\"down\"} 1",
            "automon_disk_utilisation_ratio 0.25",
            "automon_disk_queue_depth 1.5",
            "automon_worker_checkpoint{worker=\"3\"} 1200",
            "automon_worker_checkpoint{worker=\"5\"} 7",
            "automon_worker_items_per_minute{worker=\"3\"} 150",
            "automon_reconcile_duration_seconds 0.012",
            "automon_reconcile_passes_total 9",
            "automon_last_reconcile_timestamp_seconds 1700000000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("worker=\"5\"} 0"), "no rate without samples");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("automon_workers{"))
                .count(),
            13
        );
        // Each family has exactly one HELP and one TYPE line, HELP first.
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn disk_families_are_absent_without_a_sample() {
        let text = render_metrics(&MetricsSnapshot {
            disk: None,
            ..snapshot()
        });
        assert!(!text.contains("automon_disk_"), "{text}");
    }

    #[test]
    fn non_finite_values_are_written_as_prometheus_spells_them() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.5), "0.5");
    }
}
