//! The stuck rule: which threshold applies to a live worker and whether its silence exceeds
//! it. One rule for the planner ([`super::Planner`]'s live-worker step) and for `automon probe`
//! (the rule inside a Kubernetes pod), so the two cannot drift apart.

use std::time::Duration;

use crate::manifest::types::Health;

/// The threshold a live worker's silence is judged against, chosen by its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckThreshold {
    /// How long the worker may go without a progress signal.
    pub limit: Duration,
    /// The manifest field it comes from: `stuck_after` or `discovery_grace`.
    pub field: &'static str,
    /// The worker's stage in words: `progressing`, `looping` or `discovering`.
    pub stage: &'static str,
}

impl StuckThreshold {
    /// `stuck_after` once the worker has left discovery (its first upload, or its checkpoint
    /// advanced) or its log keeps repeating one cursor (a loop, judged as progress would be);
    /// `discovery_grace` before that.
    pub fn for_stage(health: &Health, left_discovery: bool, looping: bool) -> Self {
        if left_discovery || looping {
            Self {
                limit: health.stuck_after.get(),
                field: "stuck_after",
                stage: if left_discovery {
                    "progressing"
                } else {
                    "looping"
                },
            }
        } else {
            Self {
                limit: health.discovery_grace.get(),
                field: "discovery_grace",
                stage: "discovering",
            }
        }
    }

    /// True when `idle` (time since the last progress signal, or since the start when there
    /// was none) has reached the limit.
    pub fn exceeded_by(&self, idle: Duration) -> bool {
        idle >= self.limit
    }
}

/// What `automon probe` gathered about one live worker from its files, as plain data: the
/// stateless counterpart of the planner's memory of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeEvidence {
    /// When the worker's process (or container) started.
    pub started: jiff::Timestamp,
    /// The newest progress signal at or after `started`: a write of the progress file, or an
    /// upload/activity log line (by its timestamp, else the log's modification time).
    pub last_signal: Option<jiff::Timestamp>,
    /// The worker left discovery since it started: it logged an upload or wrote its progress
    /// file.
    pub left_discovery: bool,
    /// Its log keeps repeating one cursor (at least [`super::LOOP_EVIDENCE`] activity lines) since
    /// its last progress-file write.
    pub looping: bool,
    /// The checkpoint in its progress file, for the message.
    pub checkpoint: Option<u64>,
    /// The last key of its shard, when the range is known: a checkpoint there is a finished
    /// shard, never a hung worker.
    pub shard_last_key: Option<u64>,
}

/// The probe's answer: progressing (`Ok`) or stuck (`Err`), each with a sentence for people.
///
/// The same rule as the planner's: silence measured from the newest progress signal, or from
/// the start when there was none since; the threshold chosen by [`StuckThreshold::for_stage`].
/// `now` is injected; a signal in the future counts as now.
pub fn probe_verdict(
    health: &Health,
    evidence: &ProbeEvidence,
    now: jiff::Timestamp,
) -> Result<String, String> {
    if let (Some(c), Some(last)) = (evidence.checkpoint, evidence.shard_last_key)
        && c >= last
    {
        return Ok(format!(
            "shard complete (checkpoint {c}, the shard's last key {last})"
        ));
    }
    let rule = StuckThreshold::for_stage(health, evidence.left_discovery, evidence.looping);
    let reference = evidence
        .last_signal
        .filter(|s| *s >= evidence.started)
        .unwrap_or(evidence.started);
    let idle = Duration::try_from(now.duration_since(reference)).unwrap_or(Duration::ZERO);
    let since = if reference == evidence.started {
        "since its start"
    } else {
        "since its last progress signal"
    };
    let at = evidence
        .checkpoint
        .map(|c| format!(" at checkpoint {}", crate::text::count(c)))
        .unwrap_or_default();
    let words = format!(
        "{} {since} (threshold {} {}, {}){at}",
        crate::manifest::duration::format_duration(idle),
        crate::manifest::duration::format_duration(rule.limit),
        rule.field,
        rule.stage
    );
    if rule.exceeded_by(idle) {
        Err(format!("stuck: no progress for {words}"))
    } else {
        Ok(format!("ok: {words}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::HumanDuration;

    fn health() -> Health {
        Health {
            stuck_after: HumanDuration::from_secs(300),
            discovery_grace: HumanDuration::from_secs(1200),
        }
    }

    #[test]
    fn discovering_workers_get_discovery_grace_and_others_stuck_after() {
        let cases = [
            (false, false, 1200, "discovery_grace", "discovering"),
            (true, false, 300, "stuck_after", "progressing"),
            (false, true, 300, "stuck_after", "looping"),
            (true, true, 300, "stuck_after", "progressing"),
        ];
        for (left, looping, secs, field, stage) in cases {
            let t = StuckThreshold::for_stage(&health(), left, looping);
            assert_eq!(
                (t.limit, t.field, t.stage),
                (Duration::from_secs(secs), field, stage),
                "left_discovery={left} looping={looping}"
            );
        }
    }

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn probe_table() {
        // (name, evidence, now, expected Ok/Err prefix)
        let started = at(0);
        let cases: Vec<(&str, ProbeEvidence, i64, Result<&str, &str>)> = vec![
            (
                "discovering within discovery_grace",
                ProbeEvidence {
                    started,
                    ..Default::default()
                },
                1199,
                Ok("ok: 19m59s since its start (threshold 20m discovery_grace, discovering)"),
            ),
            (
                "discovering past discovery_grace",
                ProbeEvidence {
                    started,
                    ..Default::default()
                },
                1200,
                Err("stuck: no progress for 20m since its start (threshold 20m discovery_grace"),
            ),
            (
                "progressing, signal recent",
                ProbeEvidence {
                    started,
                    last_signal: Some(at(1000)),
                    left_discovery: true,
                    checkpoint: Some(1234),
                    ..Default::default()
                },
                1299,
                Ok(
                    "ok: 4m59s since its last progress signal (threshold 5m stuck_after, progressing) at checkpoint 1,234",
                ),
            ),
            (
                "progressing, silent past stuck_after",
                ProbeEvidence {
                    started,
                    last_signal: Some(at(1000)),
                    left_discovery: true,
                    ..Default::default()
                },
                1300,
                Err(
                    "stuck: no progress for 5m since its last progress signal (threshold 5m stuck_after, progressing)",
                ),
            ),
            (
                "a signal from before the start does not count",
                ProbeEvidence {
                    started: at(100),
                    last_signal: Some(at(50)),
                    ..Default::default()
                },
                1300,
                Err("stuck: no progress for 20m since its start"),
            ),
            (
                "looping is judged on stuck_after even in discovery",
                ProbeEvidence {
                    started,
                    looping: true,
                    ..Default::default()
                },
                300,
                Err(
                    "stuck: no progress for 5m since its start (threshold 5m stuck_after, looping)",
                ),
            ),
        ];
        for (name, evidence, now, expected) in cases {
            let got = probe_verdict(&health(), &evidence, at(now));
            match (&got, expected) {
                (Ok(m), Ok(p)) | (Err(m), Err(p)) => {
                    assert!(
                        m.starts_with(p),
                        "{name}: got {got:?}, expected {expected:?}"
                    )
                }
                _ => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_limit_itself_counts_as_stuck() {
        let t = StuckThreshold::for_stage(&health(), true, false);
        assert!(!t.exceeded_by(Duration::from_secs(299)));
        assert!(t.exceeded_by(Duration::from_secs(300)));
    }
}
