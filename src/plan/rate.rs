//! Rates and ETAs: keys per minute from checkpoint movement inside [`RATE_WINDOW`], and only
//! for a worker that is progressing. A paused, looping, stuck or completed worker has no rate
//! (and so no ETA): its old samples describe a worker that is not running that way now.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Phase, RATE_WINDOW};
use crate::clock::BootTime;

/// The shortest span of samples a rate is computed over.
pub const MIN_RATE_SPAN: Duration = Duration::from_secs(10);

/// Keys per minute: the checkpoint's advance from the oldest sample inside the window ending
/// at `now` to the newest, over the time from that oldest sample to `now` (a stalled worker's
/// rate decays rather than freezing). `None` unless `phase` is Progressing, the span is at
/// least [`MIN_RATE_SPAN`] and the checkpoint moved inside the window.
pub fn per_minute(samples: &VecDeque<(BootTime, u64)>, phase: Phase, now: BootTime) -> Option<f64> {
    if phase != Phase::Progressing {
        return None;
    }
    let first = samples.iter().find(|(t, _)| now.since(*t) <= RATE_WINDOW)?;
    let last = samples.back()?;
    let span = now.since(first.0);
    let advance = last.1.checked_sub(first.1).filter(|a| *a > 0)?;
    // Checkpoints are far below 2^53: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let advance = advance as f64;
    (span >= MIN_RATE_SPAN).then(|| advance / (span.as_secs_f64() / 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, samples, phase, now, expected keys per minute)
    type Row<'a> = (
        &'a str,
        &'a VecDeque<(BootTime, u64)>,
        Phase,
        BootTime,
        Option<f64>,
    );

    fn samples(points: &[(u64, u64)]) -> VecDeque<(BootTime, u64)> {
        points
            .iter()
            .map(|(s, c)| (BootTime(s * 1000), *c))
            .collect()
    }

    /// Regression (issue 14.7): paused and looping workers showed a rate and an ETA, and
    /// completed workers kept a rate metric.
    #[test]
    fn a_rate_only_from_movement_inside_the_window_and_only_while_progressing() {
        let moving = samples(&[(0, 100), (30, 130), (60, 160)]);
        let now = BootTime(60_000);
        // (name, samples, phase, now, expected keys per minute)
        let table: [Row; 8] = [
            ("progressing", &moving, Phase::Progressing, now, Some(60.0)),
            ("paused", &moving, Phase::Paused, now, None),
            ("stuck (looping)", &moving, Phase::Stuck, now, None),
            ("completed", &moving, Phase::Completed, now, None),
            ("stopped", &moving, Phase::Stopped, now, None),
            (
                "progressing, but the last movement is older than the window",
                &moving,
                Phase::Progressing,
                BootTime(60_000 + RATE_WINDOW.as_millis() as u64 + 1),
                None,
            ),
            (
                "one sample: no movement inside the window",
                &samples(&[(0, 100)]),
                Phase::Progressing,
                BootTime(30_000),
                None,
            ),
            (
                "shorter than the minimum span",
                &samples(&[(0, 100), (5, 200)]),
                Phase::Progressing,
                BootTime(5_000),
                None,
            ),
        ];
        for (name, s, phase, now, want) in table {
            assert_eq!(per_minute(s, phase, now), want, "{name}");
        }
        // A stalled worker's rate decays: same movement over a longer span.
        assert_eq!(
            per_minute(&moving, Phase::Progressing, BootTime(120_000)),
            Some(30.0)
        );
    }
}
