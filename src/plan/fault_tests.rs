//! Fault safety of the planner: automon killed at any instruction, stops cut short, a worker
//! that survives SIGKILL. Time travel with the injected clock; no real process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::tests::{starts, stops};
use super::*;
use crate::manifest::{Desired, Manifest};
use crate::observe::{
    Children, ProcessIdentity, ProcessStatus, UnrecordedWorker, WorkerObservation,
};

fn desired_with(extra: &str) -> Desired {
    let text = format!(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: t}}
spec:
  workers: {{target: 4, min: 1, max: 8}}
  work: {{range: {{start: 1, end: 801}}, shards: 8, unit: book}}
  template: {{command: [w, "{{id}}", "{{range_start}}", "{{range_end}}", "{{checkpoint}}"], stop_grace: 30s}}
  progress: {{file: "p{{id}}.json", checkpoint: /c}}
  logs: {{file: "w{{id}}.log", upload_patterns: [Uploading], activity_patterns: [Processed batch]}}
  health: {{stuck_after: 1m, discovery_grace: 2m}}
{extra}"#
    );
    let workerset = crate::manifest::parse(&text).expect("valid manifest");
    let manifest = Manifest {
        file: PathBuf::from("t.yaml"),
        dir: PathBuf::from("/tmp/t"),
        workerset,
    };
    Desired::resolve(&manifest, None).expect("resolve")
}

fn at(secs: u64) -> Now {
    let d = Duration::from_secs(secs);
    Now {
        wall: jiff::Timestamp::from_second(1_800_000_000 + i64::try_from(secs).expect("small"))
            .expect("valid"),
        boot: BootTime(1_000_000).plus(d),
    }
}

fn identity(pid: i32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        start_ticks: 100,
        boot_id: "b".into(),
    }
}

fn process(pid: i32, since: Now) -> RunningProcess {
    RunningProcess {
        identity: identity(pid),
        started_at: since.boot,
        resume_from: None,
        adopted: false,
        own_group: true,
        template: None,
    }
}

/// Memory with worker 0 recorded as `pid`; workers 1–3 running (so only worker 0 is in play).
fn memory_with(pid: i32, stopping: Option<Stopping>) -> Memory {
    let mut m = Memory {
        boot_id: "b".into(),
        ..Memory::default()
    };
    m.workers.insert(
        WorkerId(0),
        Box::new(WorkerMemory {
            process: Some(process(pid, at(0))),
            checkpoint: Some(40),
            stopping,
            ..WorkerMemory::default()
        }),
    );
    for id in 1..4 {
        m.workers.insert(
            WorkerId(id),
            Box::new(WorkerMemory {
                process: Some(process(100 + i32::try_from(id).expect("small"), at(0))),
                ..WorkerMemory::default()
            }),
        );
    }
    m
}

fn worker_obs(process: Option<ProcessStatus>, group_alive: bool) -> WorkerObservation {
    WorkerObservation {
        process,
        group_alive,
        progress: ProgressObservation::Read {
            checkpoint: 40,
            items: None,
            completed: None,
        },
        log: LogObservation::Missing,
    }
}

fn observed(zero: WorkerObservation) -> Observed {
    let mut workers: BTreeMap<WorkerId, WorkerObservation> = (1..4)
        .map(|id| {
            (
                WorkerId(id),
                worker_obs(Some(ProcessStatus::Alive { state: 'S' }), false),
            )
        })
        .collect();
    workers.insert(WorkerId(0), zero);
    Observed {
        disk: crate::observe::disk::DiskObservation::Unavailable { why: "test".into() },
        boot_id: "b".into(),
        workers,
        children: Children::default(),
        unrecorded: Vec::new(),
        scan_incomplete: None,
        unsaved_state: None,
    }
}

fn marked(worker: u32, pid: i32) -> UnrecordedWorker {
    UnrecordedWorker {
        worker: WorkerId(worker),
        identity: identity(pid),
        started_at: Some(at(1).boot),
        own_group: true,
        by_command_line: false,
        differences: Vec::new(),
        other_owner: None,
    }
}

fn stop_of(plan: &Plan, id: u32) -> Option<&StopAction> {
    plan.actions.iter().find_map(|a| match a {
        Action::Stop(s) if s.worker == WorkerId(id) => Some(s),
        _ => None,
    })
}

/// Regression (fault safety 1): automon restarted a dead worker P as Q and was killed before
/// saving; the next automon stopped Q as an "unrecorded duplicate" and started R beside it.
#[test]
fn a_restart_that_was_never_saved_is_adopted_not_duplicated() {
    let d = desired_with("");
    let mut o = observed(worker_obs(Some(ProcessStatus::Exited), false));
    o.unrecorded = vec![marked(0, 20)];
    let p = plan(&d, &o, memory_with(10, None), at(5));
    assert!(starts(&p).is_empty(), "{:?}", p.actions);
    assert!(stops(&p).is_empty(), "{:?}", p.actions);
    let w = &p.memory.workers[&WorkerId(0)];
    assert_eq!(w.process.as_ref().map(|p| p.identity.pid), Some(20));
    assert!(
        p.events
            .iter()
            .any(|e| e.contains("adopted pid 20 in place of the recorded pid 10")),
        "{:?}",
        p.events
    );
    assert!(matches!(
        p.workers[&WorkerId(0)].phase,
        Phase::Discovering | Phase::Progressing
    ));
}

/// Regression (fault safety 1): the conflict message named the dead recorded pid.
#[test]
fn a_conflict_counts_only_live_processes() {
    let d = desired_with("");
    let mut o = observed(worker_obs(Some(ProcessStatus::Exited), false));
    o.unrecorded = vec![marked(0, 20), marked(0, 21)];
    let p = plan(&d, &o, memory_with(10, None), at(5));
    assert!(starts(&p).is_empty(), "{:?}", p.actions);
    let conflict = p
        .events
        .iter()
        .find(|e| e.contains("conflict"))
        .expect("a conflict event");
    assert!(conflict.contains("pids 20, 21"), "{conflict}");
    assert!(!conflict.contains("10"), "{conflict}");
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Conflict);
}

/// Regression (fault safety 1, 8): a worker whose stop is still confirming that its group is
/// gone was restarted (and "started" logged before "exited after the stop signal").
#[test]
fn a_worker_with_a_stop_in_flight_is_never_started_and_keeps_its_slot() {
    let d = desired_with("");
    let stopping = Stopping {
        requested_at: at(0).boot,
        reason: "stuck".into(),
        restart: true,
        unkillable_since: None,
        exit_reported: false,
    };
    let mut o = observed(worker_obs(Some(ProcessStatus::Exited), false));
    o.children.exits = vec![crate::observe::ExitEvent {
        worker: WorkerId(0),
        pid: 10,
        code: None,
        signal: Some(15),
    }];
    o.children.stopping.insert(WorkerId(0));
    let p = plan(&d, &o, memory_with(10, Some(stopping)), at(3));
    assert!(starts(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stopping);
    // The stop reported: the restart happens now, from the checkpoint.
    let mut o = observed(worker_obs(None, false));
    o.children.stopping.clear();
    let p = plan(&d, &o, p.memory, at(4));
    assert_eq!(starts(&p), [0]);
}

/// Regression (fault safety 2): a stop cut short by automon's restart was re-sent only at
/// about 2×grace+10 s, with a fresh grace period.
#[test]
fn a_stop_cut_short_by_a_restart_resumes_with_sigkill_at_the_original_deadline() {
    let d = desired_with("");
    let stopping = Stopping {
        requested_at: at(0).boot,
        reason: "stuck".into(),
        restart: true,
        unkillable_since: None,
        exit_reported: false,
    };
    let m = memory_with(10, Some(stopping));
    let o = observed(worker_obs(Some(ProcessStatus::Alive { state: 'S' }), false));
    // Restarted 10 s into a 30 s grace: 20 s left.
    let p = plan(&d, &o, m.clone(), at(10));
    let s = stop_of(&p, 0).expect("the stop is resumed");
    assert_eq!(s.grace, Duration::from_secs(20));
    assert!(
        s.reason.contains("resuming the stop of pid 10"),
        "{}",
        s.reason
    );
    // Restarted after the deadline: SIGKILL at once.
    let p = plan(&d, &o, m.clone(), at(45));
    assert_eq!(stop_of(&p, 0).expect("resumed").grace, Duration::ZERO);
    // While this automon's own stop task runs, nothing is sent again.
    let mut o2 = o.clone();
    o2.children.stopping.insert(WorkerId(0));
    let p = plan(&d, &o2, m, at(45));
    assert!(stop_of(&p, 0).is_none(), "{:?}", p.actions);
}

/// Regression (fault safety 2): a leaderless group (main process gone, a member deaf to
/// SIGTERM) stayed Stopping forever after automon's restart.
#[test]
fn a_leaderless_group_left_mid_stop_is_stopped_again_after_a_restart() {
    let d = desired_with("");
    let stopping = Stopping {
        requested_at: at(0).boot,
        reason: "stuck".into(),
        restart: true,
        unkillable_since: None,
        exit_reported: false,
    };
    let o = observed(worker_obs(Some(ProcessStatus::Exited), true));
    let p = plan(&d, &o, memory_with(10, Some(stopping)), at(40));
    let s = stop_of(&p, 0).expect("the group is stopped again");
    assert!(s.whole_group);
    assert_eq!(s.grace, Duration::ZERO);
    assert!(starts(&p).is_empty());
}

/// Regression (fault safety 7): a worker in uninterruptible I/O was stopped "again" every
/// 16 s and sent to the LLM.
#[test]
fn an_unkillable_worker_is_not_stopped_again_and_its_end_is_one_line() {
    let d = desired_with("");
    let stopping = Stopping {
        requested_at: at(0).boot,
        reason: "stuck".into(),
        restart: true,
        unkillable_since: Some(at(40).boot),
        exit_reported: false,
    };
    let mut m = memory_with(10, Some(stopping));
    let o = observed(worker_obs(Some(ProcessStatus::Alive { state: 'D' }), false));
    for t in [41, 60, 120, 600] {
        let p = plan(&d, &o, m, at(t));
        assert!(
            p.actions.iter().all(|a| a.worker() != WorkerId(0)),
            "at {t}: {:?}",
            p.actions
        );
        let status = &p.workers[&WorkerId(0)];
        assert_eq!(status.phase, Phase::Stopping);
        assert!(
            status.reason.to_string().contains("unkillable"),
            "{}",
            status.reason
        );
        assert!(
            !p.events.iter().any(|e| e.starts_with("worker 0")),
            "at {t}: {:?}",
            p.events
        );
        m = p.memory;
    }
    let p = plan(
        &d,
        &observed(worker_obs(Some(ProcessStatus::Exited), false)),
        m,
        at(700),
    );
    let ends: Vec<&String> = p
        .events
        .iter()
        .filter(|e| e.contains("finally exited"))
        .collect();
    assert_eq!(ends.len(), 1, "{:?}", p.events);
    assert_eq!(starts(&p), [0], "restarted once it is gone");
}

/// Regression (fault safety 7): a stuck worker in state D was sent to the LLM.
#[test]
fn a_stuck_worker_in_uninterruptible_io_is_restarted_without_asking_the_llm() {
    let d = desired_with("  llm: {enabled: true}");
    let mut m = memory_with(10, None);
    let o = observed(worker_obs(Some(ProcessStatus::Alive { state: 'D' }), false));
    let mut stopped = false;
    for t in [200, 210, 220] {
        let p = plan(&d, &o, m, at(t));
        assert!(
            !p.actions
                .iter()
                .any(|a| matches!(a, Action::Diagnose(x) if x.worker == WorkerId(0))),
            "{:?}",
            p.actions
        );
        stopped |= stop_of(&p, 0).is_some();
        m = p.memory;
    }
    assert!(stopped, "the stuck worker is restarted");
}

/// The crash of worker 0's `pid` at `t` with `how` (code or signal) while the rest of its
/// process group lives on (a worker started through `sh`, or with a helper subprocess).
fn crash_with_leftovers(pid: i32, code: Option<i32>, signal: Option<i32>) -> Observed {
    let mut o = observed(worker_obs(Some(ProcessStatus::Exited), true));
    o.children.exits = vec![crate::observe::ExitEvent {
        worker: WorkerId(0),
        pid,
        code,
        signal,
    }];
    o
}

/// Records the start `p` asked for as `pid`, started at `now`.
fn record_started(d: &Desired, p: &mut Plan, pid: i32, now: Now) {
    let start = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Start(s) if s.worker == WorkerId(0) => Some(s.clone()),
            _ => None,
        })
        .expect("worker 0 is started");
    assert!(record_start(&mut p.memory, d, &start, Ok((identity(pid), now.boot)), now).is_none());
}

/// Regression (new-user trial): a worker whose main process exited (`exit 3`, SIGKILL, SIGSEGV)
/// while another member of its process group lived on (`sh -c 'sleep 1000 & exit 3'`) was
/// stopped "before a restart" and restarted every ~2 s: the reaped exit status was dropped, no
/// failure counted, no crash backoff, and the summary counted the restarts as "after being
/// stuck". Now the exit is reported as what it was and counted as a crash exactly as for a
/// worker without leftovers (immediate, then 2/4/8/16 s), the leftovers are stopped as a side
/// step, and no replacement starts while the old group has members.
#[test]
fn a_crashed_worker_whose_group_lives_on_is_reported_and_backed_off_as_a_crash() {
    let d = desired_with("  restart: {backoff_initial: 2s, backoff_max: 16s}");
    let mut m = memory_with(10, None);
    let mut t = 10;
    let mut pid = 10;
    let crashes: [(Option<i32>, Option<i32>, &str, u64); 5] = [
        (Some(3), None, "worker 0 exited with status 3 at book 40", 0),
        (
            None,
            Some(9),
            "worker 0 was killed by signal SIGKILL at book 40",
            2,
        ),
        (
            None,
            Some(11),
            "worker 0 was killed by signal SIGSEGV at book 40",
            4,
        ),
        (
            None,
            Some(15),
            "worker 0 was killed by signal SIGTERM at book 40",
            8,
        ),
        (
            Some(0),
            None,
            "worker 0 exited with status 0 at book 40",
            16,
        ),
    ];
    let mut all_events = Vec::new();
    for (n, (code, signal, said, delay)) in crashes.into_iter().enumerate() {
        let n = u32::try_from(n).expect("small") + 1;
        // The leader exits; the group lives on.
        let p = plan(&d, &crash_with_leftovers(pid, code, signal), m, at(t));
        all_events.extend(p.events.clone());
        assert!(
            p.events.iter().any(|e| e.starts_with(said)),
            "crash {n}: {:?}",
            p.events
        );
        let stop = stop_of(&p, 0).expect("the leftovers are stopped");
        assert!(stop.whole_group, "{stop:?}");
        assert_eq!(
            stop.reason,
            format!("worker 0: its process group {pid} still has members; stopping them")
        );
        assert!(starts(&p).is_empty(), "crash {n}: {:?}", p.actions);
        assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stopping);
        let w = &p.memory.workers[&WorkerId(0)];
        assert_eq!(w.failures, n, "crash {n}");
        assert_eq!(
            w.backoff_until,
            Some(at(t).boot.plus(Duration::from_secs(delay))),
            "crash {n}"
        );
        // The group still has members next pass: the stop goes on, nothing is counted again.
        let mut o = observed(worker_obs(Some(ProcessStatus::Exited), true));
        o.children.stopping.insert(WorkerId(0));
        let p = plan(&d, &o, p.memory, at(t));
        all_events.extend(p.events.clone());
        assert!(
            starts(&p).is_empty() && stops(&p).is_empty(),
            "{:?}",
            p.actions
        );
        assert_eq!(p.memory.workers[&WorkerId(0)].failures, n);
        // The group is gone a second later: restarted at once the first time, else after the
        // backoff (which ran while the leftovers were stopped).
        let p = plan(&d, &observed(worker_obs(None, false)), p.memory, at(t + 1));
        all_events.extend(p.events.clone());
        assert_eq!(p.memory.workers[&WorkerId(0)].failures, n);
        let mut p = if delay == 0 {
            p
        } else {
            assert!(starts(&p).is_empty(), "crash {n}: {:?}", p.actions);
            assert_eq!(p.workers[&WorkerId(0)].phase, Phase::BackingOff);
            let early = plan(
                &d,
                &observed(worker_obs(None, false)),
                p.memory.clone(),
                at(t + delay - 1),
            );
            assert!(starts(&early).is_empty(), "crash {n}: {:?}", early.actions);
            let p = plan(
                &d,
                &observed(worker_obs(None, false)),
                p.memory,
                at(t + delay),
            );
            all_events.extend(p.events.clone());
            p
        };
        let start = p
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Start(s) => Some(s.reason.clone()),
                _ => None,
            })
            .expect("restarted");
        assert!(start.ends_with(&format!("(restart {n})")), "{start}");
        assert!(!start.contains("after the stop"), "{start}");
        t += delay + 1;
        pid += 1;
        record_started(&d, &mut p, pid, at(t));
        m = p.memory;
        t += 1;
    }
    assert!(
        !all_events
            .iter()
            .any(|e| e.contains("before a restart") || e.contains("after the stop")),
        "{all_events:?}"
    );
    assert_eq!(m.totals.crash_restarts, 5);
    assert_eq!(m.totals.stuck_restarts, 0);
}

/// Regression (new-user trial): a worker that exited 0 with its shard complete while a
/// helper of its process group lived on was stopped "before a restart". It is a completion:
/// reported as one, no failure counted, the leftovers stopped, and never restarted.
#[test]
fn a_completed_worker_whose_group_lives_on_is_completed_not_restarted() {
    let d = desired_with("");
    let mut m = memory_with(10, None);
    if let Some(w) = m.workers.get_mut(&WorkerId(0)) {
        w.checkpoint = Some(100); // shard 0 is books 1..=100
    }
    let mut o = crash_with_leftovers(10, Some(0), None);
    if let Some(w) = o.workers.get_mut(&WorkerId(0)) {
        w.progress = ProgressObservation::Read {
            checkpoint: 100,
            items: None,
            completed: None,
        };
    }
    let p = plan(&d, &o, m, at(10));
    assert!(
        p.events.iter().any(
            |e| e.starts_with("worker 0 exited with status 0: shard") && e.contains("complete")
        ),
        "{:?}",
        p.events
    );
    let stop = stop_of(&p, 0).expect("the leftovers are stopped");
    assert!(!stop.reason.contains("restart"), "{}", stop.reason);
    let w = &p.memory.workers[&WorkerId(0)];
    assert_eq!((w.failures, w.completed_at.is_some()), (0, true));
    assert!(starts(&p).is_empty());
    let mut gone = observed(worker_obs(None, false));
    if let Some(w) = gone.workers.get_mut(&WorkerId(0)) {
        w.progress = o.workers[&WorkerId(0)].progress.clone();
    }
    let p = plan(&d, &gone, p.memory, at(11));
    // Its slot goes to the next shard.
    assert_eq!(starts(&p), [4], "{:?}", p.actions);
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Completed);
    assert_eq!(p.memory.totals.crash_restarts, 0);
    assert_eq!(p.memory.totals.stuck_restarts, 0);
}

/// Regression (new-user trial): the leftover-group stop of a crashed worker, cut short by an
/// automon restart, must neither count the crash twice nor take the group's end for a stop
/// "after being stuck"; and an automon killed before it saved the crash counts it once, as an
/// exit of unknown status, and still stops the leftovers before any replacement.
#[test]
fn a_leftover_group_stop_cut_short_by_an_automon_restart_counts_the_crash_once() {
    let d = desired_with("  restart: {backoff_initial: 2s, backoff_max: 16s}");
    let mut m = memory_with(10, None);
    if let Some(w) = m.workers.get_mut(&WorkerId(0)) {
        w.failures = 2; // the third crash in a row: a 4 s backoff
    }
    let p = plan(
        &d,
        &crash_with_leftovers(10, Some(3), None),
        m.clone(),
        at(10),
    );
    // Saved (state.json) and read back by the next automon, which runs no stop task.
    let text = serde_json::to_string(&p.memory).expect("serialises");
    let saved: Memory = serde_json::from_str(&text).expect("parses");
    assert!(
        saved.workers[&WorkerId(0)]
            .stopping
            .as_ref()
            .is_some_and(|s| s.exit_reported),
        "{text}"
    );
    let leftovers = observed(worker_obs(Some(ProcessStatus::Exited), true));
    let p = plan(&d, &leftovers, saved, at(11));
    let stop = stop_of(&p, 0).expect("the stop is resumed");
    assert!(
        stop.reason.contains("resuming the stop of pid 10"),
        "{}",
        stop.reason
    );
    assert!(starts(&p).is_empty());
    assert_eq!(p.memory.workers[&WorkerId(0)].failures, 3);
    let p = plan(&d, &observed(worker_obs(None, false)), p.memory, at(12));
    assert!(starts(&p).is_empty(), "the backoff runs until 14 s");
    assert_eq!(p.memory.workers[&WorkerId(0)].failures, 3);
    assert!(
        !p.events.iter().any(|e| e.contains("worker 0 ")),
        "{:?}",
        p.events
    );
    let p = plan(&d, &observed(worker_obs(None, false)), p.memory, at(14));
    assert_eq!(starts(&p), [0]);
    assert_eq!(p.memory.totals.stuck_restarts, 0);

    // Killed before the crash was saved: the next automon has no exit status, only the
    // recorded process gone and its group alive.
    let p = plan(&d, &leftovers, m, at(11));
    assert!(
        p.events
            .iter()
            .any(|e| e.starts_with("worker 0 exited (status unknown: not automon's child)")),
        "{:?}",
        p.events
    );
    assert!(stop_of(&p, 0).is_some_and(|s| s.whole_group));
    assert!(starts(&p).is_empty());
    assert_eq!(p.memory.workers[&WorkerId(0)].failures, 3);
}
