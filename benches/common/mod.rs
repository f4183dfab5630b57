//! Helpers shared by the bench binaries: a WorkerSet of N workers, a timer that reports
//! min/median/max over repeated runs, and the process's memory figures from `/proc/self/status`.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use automon::manifest::{Desired, Manifest};

/// A sharded WorkerSet of `n` workers (shards = target = max = `n`) whose progress and log files
/// live in `dir`, with Python logging timestamps and the demo's upload/activity patterns.
pub fn desired(n: u32, dir: &Path) -> Desired {
    let text = format!(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: bench}}
spec:
  workers: {{target: {n}, min: 1, max: {n}}}
  work: {{range: {{start: 1, end: {end}}}, shards: {n}, unit: book}}
  template:
    command: [python3, worker.py, --worker-id, "{{id}}", --start-id, "{{range_start}}",
              --end-id, "{{range_end}}", --resume-from, "{{checkpoint}}",
              --parallel-uploads, "{{parallel_uploads}}"]
    parameters: {{parallel_uploads: {{default: 2, min: 1, max: 10}}}}
  progress: {{file: "p{{id}}.json", checkpoint: /last_processed_book_id, items: /books_migrated}}
  logs:
    file: "w{{id}}.log"
    upload_patterns: ["Successfully uploaded:", "Uploading:"]
    activity_patterns: ["Processed batch", "Found [\\d,]+ new files", "Querying Calibre database"]
  health: {{stuck_after: 5m, discovery_grace: 20m}}
"#,
        end = u64::from(n) * 100_000 + 1
    );
    let workerset = match automon::manifest::parse(&text) {
        Ok(w) => w,
        Err(problems) => panic!("bench manifest is invalid: {problems:?}"),
    };
    let manifest = Manifest {
        file: dir.join("bench.yaml"),
        dir: dir.to_path_buf(),
        workerset,
    };
    match Desired::resolve(&manifest, None) {
        Ok(d) => d,
        Err(e) => panic!("bench manifest does not resolve: {e}"),
    }
}

/// Durations of repeated runs.
pub struct Timings(pub Vec<Duration>);

impl Timings {
    /// Runs `f` `iters` times (after `warmup` untimed runs) and keeps each run's duration.
    pub fn measure(warmup: usize, iters: usize, mut f: impl FnMut()) -> Self {
        for _ in 0..warmup {
            f();
        }
        let mut v = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            f();
            v.push(t.elapsed());
        }
        v.sort();
        Self(v)
    }

    /// Like [`Timings::measure`], but each run gets a fresh input from `setup` (not timed), and
    /// what `f` returns is dropped after the clock stops.
    #[allow(dead_code)] // not every bench binary uses it
    pub fn measure_with<I, O>(
        warmup: usize,
        iters: usize,
        mut setup: impl FnMut() -> I,
        mut f: impl FnMut(I) -> O,
    ) -> Self {
        for _ in 0..warmup {
            drop(f(setup()));
        }
        let mut v = Vec::with_capacity(iters);
        for _ in 0..iters {
            let input = setup();
            let t = Instant::now();
            let out = f(input);
            v.push(t.elapsed());
            drop(out);
        }
        v.sort();
        Self(v)
    }

    /// Timings from durations measured elsewhere.
    #[allow(dead_code)] // not every bench binary uses it
    pub fn from_runs(mut runs: Vec<Duration>) -> Self {
        runs.sort();
        Self(runs)
    }

    /// The shortest run.
    pub fn min(&self) -> Duration {
        self.0.first().copied().unwrap_or_default()
    }

    /// The median run.
    pub fn median(&self) -> Duration {
        self.0.get(self.0.len() / 2).copied().unwrap_or_default()
    }

    /// The longest run.
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// Prints one figure: `name  min … median … max (n runs)  [target]`.
pub fn report(name: &str, t: &Timings, target: Option<Duration>) {
    let verdict = match target {
        Some(target) if t.median() <= target => format!("  target ≤ {target:?}: met"),
        Some(target) => format!("  target ≤ {target:?}: MISSED"),
        None => String::new(),
    };
    println!(
        "{name:<44} min {:>11.3?}  median {:>11.3?}  max {:>11.3?}  ({} runs){verdict}",
        t.min(),
        t.median(),
        t.max(),
        t.0.len()
    );
}

/// A field of `/proc/self/status` in kB (`VmHWM`: peak RSS, `VmRSS`: RSS now).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak-RSS counter (`VmHWM`) to the current RSS (Linux ≥ 4.0: write 5 to
/// `/proc/self/clear_refs`); returns false when the kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Iterations from the `BENCH_ITERS` environment variable, else `default`.
pub fn iters(default: usize) -> usize {
    std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
