//! One observation pass (`Observer::observe`) at 8 and 1,000 workers whose logs are 1 GB
//! sparse files (`File::set_len`) with real log lines at the end, and whose progress files are
//! rewritten before every pass (every worker checkpointed since the last look). Prints the time
//! per pass and the process's peak RSS (`VmHWM`).
//!
//! Figures: the first pass (no log cursors yet: each log's tail window is read; the `/proc` scan
//! for unrecorded workers runs, as in the daemon's first pass), then steady passes (three new
//! lines per log since the cursor).
//!
//! Run with `cargo bench --bench observe`; `BENCH_ITERS` sets the number of steady passes.
//! Targets (issue 9): 1,000 workers ≤ 200 ms per pass and ≤ 30 MB RSS.

#![allow(missing_docs)]

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use automon::clock::BootTime;
use automon::observe::{Children, LogObservation, Observer, ProcessIdentity, Roots, proc};
use automon::plan::{Memory, RunningProcess};

const LOG_SIZE: u64 = 1 << 30;

fn append_lines(path: &Path, pass: u64, id: u32) {
    let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) else {
        panic!("cannot open {}", path.display());
    };
    let mut text = String::new();
    for k in 0..3 {
        text.push_str(&format!(
            "2026-11-29 06:52:{:02},{:03} - INFO - Successfully uploaded: book {} (pass {pass})\n",
            k * 7 % 60,
            (pass * 37) % 1000,
            u64::from(id) * 100_000 + pass * 3 + k
        ));
    }
    if f.write_all(text.as_bytes()).is_err() {
        panic!("cannot append to {}", path.display());
    }
}

fn write_progress(path: &Path, checkpoint: u64) {
    let text = format!(
        "{{\"worker_id\": 1, \"last_processed_book_id\": {checkpoint}, \"books_migrated\": {}, \"errors\": [], \"updated\": \"2026-11-29T06:52:00\"}}",
        checkpoint % 100_000
    );
    if std::fs::write(path, text).is_err() {
        panic!("cannot write {}", path.display());
    }
}

fn bench(n: u32, iters: usize) {
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => panic!("tempdir: {e}"),
    };
    let desired = common::desired(n, tmp.path());
    for id in desired.worker_ids() {
        let log = desired.log_path(id);
        let Ok(f) = std::fs::File::create(&log) else {
            panic!("cannot create {}", log.display());
        };
        if f.set_len(LOG_SIZE).is_err() {
            panic!("cannot extend {}", log.display());
        }
        append_lines(&log, 0, id.0);
        write_progress(&desired.progress_path(id), u64::from(id.0) * 100_000 + 1);
    }
    // Every worker recorded as running: this process stands in for them (one stat read each).
    let root = Path::new("/proc");
    let me = std::process::id() as i32;
    let Some(stat) = proc::read_stat(root, me) else {
        panic!("cannot read /proc/self/stat");
    };
    let identity = ProcessIdentity {
        pid: me,
        start_ticks: stat.start_ticks,
        boot_id: proc::boot_id(root),
    };
    let mut memory = Memory {
        boot_id: identity.boot_id.clone(),
        ..Memory::default()
    };
    for id in desired.worker_ids() {
        memory.workers.entry(id).or_default().process = Some(RunningProcess {
            identity: identity.clone(),
            started_at: BootTime(1),
            resume_from: None,
            adopted: false,
            own_group: true,
            template: None,
        });
    }
    let state_dir = tmp.path().join(".automon");
    let rss_before = common::status_kb("VmRSS");
    let reset = common::reset_peak_rss();
    let mut observer = Observer::new(&desired, Roots::default());

    let t = Instant::now();
    let first = observer.observe(
        &desired,
        &memory,
        &state_dir,
        Children::default(),
        true,
        BootTime::read(),
    );
    let first_time = t.elapsed();
    let records: usize = first
        .workers
        .values()
        .map(|w| match &w.log {
            LogObservation::Read { records, .. } => records.len(),
            _ => 0,
        })
        .sum();
    // The first of the three lines shares a line with the hole's NULs and is dropped as partial.
    assert!(
        records >= 2 * n as usize,
        "every log's lines were read ({records})"
    );
    let cursors = |observed: &automon::observe::Observed, memory: &mut Memory| {
        for (id, w) in &observed.workers {
            if let LogObservation::Read { cursor, .. } = &w.log {
                memory.workers.entry(*id).or_default().log_cursor = Some(*cursor);
            }
        }
    };
    cursors(&first, &mut memory);
    drop(first);

    let mut times = Vec::with_capacity(iters);
    for pass in 1..=iters as u64 {
        for id in desired.worker_ids() {
            append_lines(&desired.log_path(id), pass, id.0);
            write_progress(
                &desired.progress_path(id),
                u64::from(id.0) * 100_000 + 1 + pass * 3,
            );
        }
        let t = Instant::now();
        let observed = observer.observe(
            &desired,
            &memory,
            &state_dir,
            Children::default(),
            false,
            BootTime::read(),
        );
        times.push(t.elapsed());
        cursors(&observed, &mut memory);
    }
    times.sort();
    let steady = common::Timings(times);
    let hwm = common::status_kb("VmHWM");
    println!(
        "{:<44} {:>11.3?}",
        format!("observe, {n} workers, first pass (+/proc scan)"),
        first_time
    );
    let target = (n == 1000).then_some(Duration::from_millis(200));
    common::report(
        &format!("observe, {n} workers, steady pass"),
        &steady,
        target,
    );
    let rss_ok = if n == 1000 {
        if hwm <= 30 * 1024 {
            "  target ≤ 30 MB: met"
        } else {
            "  target ≤ 30 MB: MISSED"
        }
    } else {
        ""
    };
    println!(
        "    peak RSS (VmHWM) {:.1} MB{}; RSS before the passes {:.1} MB; logs {} × {} GiB sparse{rss_ok}",
        hwm as f64 / 1024.0,
        if reset {
            " since the passes began"
        } else {
            " of the whole process"
        },
        rss_before as f64 / 1024.0,
        n,
        LOG_SIZE >> 30
    );
}

fn main() {
    let iters = common::iters(20);
    let only: Option<u32> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    for n in [8, 1000] {
        if only.is_none_or(|o| o == n) {
            bench(n, iters);
        }
    }
}
