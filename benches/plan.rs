//! `plan()` at 8, 100 and 1,000 workers, in a realistic steady state: every worker has run
//! for a while (memory full of checkpoints, log cursors and recent progress lines), most
//! workers advance their checkpoint and log new upload lines each pass, about 1 % are stuck
//! (no progress for longer than `stuck_after`) and about 1 % crash.
//!
//! Two figures per size: "one pass" plans the same pass again and again from a fresh copy of
//! the memory (the copy is outside the clock); "steady passes" times `plan()` pass after pass
//! with the memory handed from one plan to the next, as the daemon runs it (the target's
//! figure).
//!
//! Run with `cargo bench --bench plan`; `BENCH_ITERS` sets the number of timed runs.
//! Target (issue 9): 1,000 workers ≤ 1 ms.

#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automon::WorkerId;
use automon::clock::{BootTime, Now};
use automon::manifest::Desired;
use automon::observe::disk::DiskObservation;
use automon::observe::logtail::{LineClass, LogRecord};
use automon::observe::{
    Children, ExitEvent, LogCursor, LogObservation, Observed, ProcessIdentity, ProcessStatus,
    ProgressObservation, WorkerObservation,
};
use automon::plan::{self, Action, Memory, Phase};

const BOOT: &str = "bench-boot";

fn now(t: u64) -> Now {
    Now {
        wall: jiff::Timestamp::from_second(1_800_000_000 + t as i64).unwrap_or_default(),
        boot: BootTime(1_000_000 + t * 1000),
    }
}

/// What the simulated fleet does in one pass.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Progress,
    Stuck,
    Crashed,
}

struct Fleet {
    desired: Desired,
    memory: Memory,
    pids: BTreeMap<WorkerId, i32>,
    checkpoints: BTreeMap<WorkerId, u64>,
    offsets: BTreeMap<WorkerId, u64>,
    next_pid: i32,
    line: u64,
}

impl Fleet {
    fn new(desired: Desired) -> Self {
        Self {
            desired,
            memory: Memory {
                boot_id: BOOT.into(),
                ..Memory::default()
            },
            pids: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            offsets: BTreeMap::new(),
            next_pid: 10_000,
            line: 0,
        }
    }

    /// The observation of a pass at `t` seconds where each worker meets `fate(id)`.
    fn observed(&mut self, t: u64, fate: impl Fn(WorkerId) -> Fate) -> Observed {
        let mut exits = Vec::new();
        let wall = now(t).wall;
        let ids = self.desired.worker_ids();
        let mut workers = BTreeMap::new();
        for id in ids {
            let shard = self.desired.shard(id).map_or(0, |s| s.start);
            let f = fate(id);
            let process = self.pids.get(&id).map(|pid| {
                if f == Fate::Crashed {
                    exits.push(ExitEvent {
                        worker: id,
                        pid: *pid,
                        code: None,
                        signal: Some(9),
                    });
                    ProcessStatus::Exited
                } else {
                    ProcessStatus::Alive { state: 'S' }
                }
            });
            let cp = self.checkpoints.entry(id).or_insert(shard);
            let off = self.offsets.entry(id).or_insert(0);
            let mut records = Vec::new();
            if f == Fate::Progress && process.is_some() {
                *cp += 50;
                for k in 0..3 {
                    self.line += 1;
                    records.push(LogRecord {
                        class: if k == 2 {
                            LineClass::Activity
                        } else {
                            LineClass::Upload
                        },
                        timestamp: Some(wall),
                        message: format!(
                            " - INFO - Successfully uploaded: book {} ({} KiB)",
                            *cp + k,
                            self.line
                        ),
                    });
                }
                *off += 400;
            }
            let log = LogObservation::Read {
                cursor: LogCursor {
                    dev: 1,
                    inode: u64::from(id.0) + 1,
                    offset: *off,
                    ..LogCursor::default()
                },
                first_look: false,
                reset: None,
                new_bytes: if records.is_empty() { 0 } else { 400 },
                records,
                repeated: None,
            };
            workers.insert(
                id,
                WorkerObservation {
                    process,
                    group_alive: false,
                    progress: ProgressObservation::Read {
                        checkpoint: *cp,
                        items: Some(*cp - shard),
                        completed: None,
                    },
                    log,
                },
            );
        }
        Observed {
            disk: DiskObservation::Unavailable {
                why: "bench".into(),
            },
            boot_id: BOOT.into(),
            workers,
            children: Children {
                exits,
                unreaped: Default::default(),
                started: Default::default(),
                stopping: Default::default(),
            },
            unrecorded: Vec::new(),
            scan_incomplete: None,
            unsaved_state: None,
        }
    }

    /// Runs one pass and applies its starts and stops the way the daemon would; returns the
    /// time `plan()` took (the memory handed in and taken back, as the daemon does).
    fn pass(&mut self, t: u64, fate: impl Fn(WorkerId) -> Fate) -> Duration {
        let observed = self.observed(t, &fate);
        let now = now(t);
        let memory = std::mem::take(&mut self.memory);
        let began = Instant::now();
        let mut plan = plan::plan(&self.desired, &observed, memory, now);
        let took = began.elapsed();
        self.memory = std::mem::take(&mut plan.memory);
        for a in &plan.actions {
            match a {
                Action::Start(s) => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    let identity = ProcessIdentity {
                        pid,
                        start_ticks: 1,
                        boot_id: BOOT.into(),
                    };
                    plan::record_start(
                        &mut self.memory,
                        &self.desired,
                        s,
                        Ok((identity, now.boot)),
                        now,
                    );
                    self.pids.insert(s.worker, pid);
                }
                Action::Stop(s) => {
                    self.pids.remove(&s.worker);
                }
                _ => {}
            }
        }
        took
    }
}

fn bench(n: u32, iters: usize) {
    let dir = std::env::temp_dir().join("automon-bench-plan");
    let desired = common::desired(n, &dir);
    let mut fleet = Fleet::new(desired);
    // Start everyone, then 20 passes a minute apart with everyone progressing: memory now holds
    // checkpoints, cursors and recent progress-line fingerprints like a fleet that has run.
    fleet.pass(0, |_| Fate::Progress);
    for i in 1..=22 {
        fleet.pass(i * 60, |_| Fate::Progress);
    }
    // Then 4 minutes in which ~1 % of the workers make no progress (stuck at the next pass).
    let stuck = |id: WorkerId| id.0 % 100 == 3 || (n < 100 && id.0 == 3 % n);
    for i in 23..=26 {
        fleet.pass(i * 60, |id| {
            if stuck(id) {
                Fate::Stuck
            } else {
                Fate::Progress
            }
        });
    }
    // The pass being timed: most progress, ~1 % stuck, ~1 % crashed.
    let t = 27 * 60;
    let crashed = |id: WorkerId| id.0 % 100 == 5 || (n < 100 && id.0 == 5 % n);
    let observed = fleet.observed(t, |id| {
        if crashed(id) {
            Fate::Crashed
        } else if stuck(id) {
            Fate::Stuck
        } else {
            Fate::Progress
        }
    });
    let memory = fleet.memory.clone();
    let desired = fleet.desired.clone();
    let at = now(t);
    let check = plan::plan(&desired, &observed, memory.clone(), at);
    let count = |p: Phase| check.workers.values().filter(|s| s.phase == p).count();
    // The daemon hands its memory to the plan and takes the plan's back: neither a copy nor a
    // drop of the whole memory is part of a pass, so both stay outside the clock here.
    let timings = common::Timings::measure_with(
        iters / 10 + 1,
        iters,
        || memory.clone(),
        |m| std::hint::black_box(plan::plan(&desired, &observed, m, at)),
    );
    common::report(&format!("plan, {n} workers, one pass"), &timings, None);
    println!(
        "    ({} progressing, {} stuck, {} starting after a crash; {} actions)",
        count(Phase::Progressing),
        count(Phase::Stuck) + count(Phase::Stopping),
        count(Phase::Starting),
        check.actions.len()
    );
    // Steady state as the daemon runs it: pass after pass a minute apart, the memory handed
    // from one plan to the next; each pass most workers progress, the ~1 % stuck ones stay
    // stuck (stopped, restarted, stuck again) and a different ~1 % crash (and restart).
    let mut runs = Vec::with_capacity(iters);
    for k in 0..(iters / 10 + 1 + iters) as u64 {
        let t = (28 + k) * 60;
        let crashed = |id: WorkerId| u64::from(id.0) % 100 == (k * 7 + 5) % 100 && !stuck(id);
        let took = fleet.pass(t, |id| {
            if crashed(id) {
                Fate::Crashed
            } else if stuck(id) {
                Fate::Stuck
            } else {
                Fate::Progress
            }
        });
        if k as usize > iters / 10 {
            runs.push(took);
        }
    }
    let steady = common::Timings::from_runs(runs);
    let target = (n == 1000).then_some(Duration::from_millis(1));
    common::report(
        &format!("plan, {n} workers, steady passes"),
        &steady,
        target,
    );
}

/// The state save of a fleet that has run (memory full of checkpoints, cursors and recent
/// progress-line fingerprints): serialise, write, fsync, rename and fsync the directory, as
/// the daemon does after a pass that changed something; and the comparison with the memory as
/// last saved, which a pass that changed nothing costs instead (issue 25: save ≤ 10 ms at
/// 2,000 workers).
fn bench_save(n: u32, iters: usize) {
    let dir = std::env::temp_dir().join("automon-bench-plan");
    let mut fleet = Fleet::new(common::desired(n, &dir));
    for i in 0..=22 {
        fleet.pass(i * 60, |_| Fate::Progress);
    }
    let state = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temp dir: {e}"),
    };
    let memory = fleet.memory.clone();
    let save = common::Timings::measure(2, iters, || {
        if let Err(e) = automon::state::save_memory(state.path(), &memory) {
            panic!("save: {e}");
        }
    });
    // The CPU part of a save alone (the rest is the write and two fsyncs).
    let serialise = common::Timings::measure(2, iters, || {
        std::hint::black_box(serde_json::to_vec(std::hint::black_box(&memory)).map(|v| v.len()))
            .ok();
    });
    common::report(&format!("state serialise, {n} workers"), &serialise, None);
    let bytes = std::fs::metadata(state.path().join("state.json")).map_or(0, |m| m.len());
    let target = (n == 2000).then_some(Duration::from_millis(10));
    common::report(&format!("state save, {n} workers"), &save, target);
    println!("    (state.json {} KB)", bytes / 1024);
    let saved = memory.clone();
    let compare = common::Timings::measure(2, iters, || {
        std::hint::black_box(std::hint::black_box(&saved) == std::hint::black_box(&memory));
    });
    common::report(
        &format!("unchanged-memory check, {n} workers"),
        &compare,
        None,
    );
}

fn main() {
    let iters = common::iters(200);
    // An optional worker count runs only that size (e.g. `cargo bench --bench plan -- 1000`).
    let only: Option<u32> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    for n in [8, 100, 1000] {
        if only.is_none_or(|o| o == n) {
            bench(n, iters);
        }
    }
    for n in [1000, 2000] {
        if only.is_none_or(|o| o == n) {
            bench_save(n, iters.min(50));
        }
    }
}
