//! Planner rules as tables of (memory, observation, now) → expected actions, and time travel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::manifest::{Desired, Manifest};
use crate::observe::logtail::{LogCursor, LogRecord};
use crate::observe::{Children, ExitEvent, ProcessIdentity, ProcessStatus, WorkerObservation};

fn desired() -> Desired {
    let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: t}
spec:
  workers: {target: 4, min: 1, max: 8}
  work: {range: {start: 1, end: 801}, shards: 8, unit: book}
  template: {command: [w, "{id}", "{range_start}", "{range_end}", "{checkpoint}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log", upload_patterns: [Uploading], activity_patterns: [Processed batch]}
"#;
    let workerset = crate::manifest::parse(text).expect("valid manifest");
    let manifest = Manifest {
        file: PathBuf::from("t.yaml"),
        dir: PathBuf::from("/tmp/t"),
        workerset,
    };
    Desired::resolve(&manifest, None).expect("resolve")
}

fn t0() -> Now {
    Now {
        wall: jiff::Timestamp::from_second(1_800_000_000).expect("valid"),
        boot: BootTime(1_000_000),
    }
}

fn at(secs: u64) -> Now {
    let d = Duration::from_secs(secs);
    Now {
        wall: t0().wall.checked_add(d).expect("valid"),
        boot: t0().boot.plus(d),
    }
}

fn mem() -> Memory {
    Memory {
        boot_id: "b".into(),
        ..Memory::default()
    }
}

fn identity(pid: i32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        start_ticks: 100,
        boot_id: "b".into(),
    }
}

fn running(pid: i32, since: Now, checkpoint: u64) -> WorkerMemory {
    WorkerMemory {
        process: Some(RunningProcess {
            identity: identity(pid),
            started_at: since.boot,
            resume_from: None,
            adopted: false,
            own_group: true,
            template: None,
        }),
        checkpoint: Some(checkpoint),
        ..WorkerMemory::default()
    }
}

fn obs(process: Option<ProcessStatus>, checkpoint: Option<u64>) -> WorkerObservation {
    WorkerObservation {
        process,
        group_alive: false,
        progress: checkpoint.map_or(ProgressObservation::Missing, |c| {
            ProgressObservation::Read {
                checkpoint: c,
                items: None,
                completed: None,
            }
        }),
        log: LogObservation::Missing,
    }
}

fn alive() -> Option<ProcessStatus> {
    Some(ProcessStatus::Alive { state: 'S' })
}

fn observed(workers: BTreeMap<WorkerId, WorkerObservation>, exits: Vec<ExitEvent>) -> Observed {
    Observed {
        disk: crate::observe::disk::DiskObservation::Unavailable { why: "test".into() },
        boot_id: "b".into(),
        workers,
        children: Children {
            exits,
            ..Children::default()
        },
        unrecorded: Vec::new(),
        scan_incomplete: None,
        unsaved_state: None,
    }
}

/// The workers a plan starts.
pub(super) fn starts(plan: &Plan) -> Vec<u32> {
    plan.actions
        .iter()
        .filter_map(|a| {
            if let Action::Start(s) = a {
                Some(s.worker.0)
            } else {
                None
            }
        })
        .collect()
}

/// The workers a plan stops.
pub(super) fn stops(plan: &Plan) -> Vec<u32> {
    plan.actions
        .iter()
        .filter_map(|a| {
            if let Action::Stop(s) = a {
                Some(s.worker.0)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn fresh_workerset_starts_target_workers_on_the_first_shards_from_their_range_start() {
    let d = desired();
    let p = plan(&d, &observed(BTreeMap::new(), vec![]), mem(), t0());
    assert_eq!(starts(&p), [0, 1, 2, 3]);
    let Action::Start(s) = &p.actions[1] else {
        panic!()
    };
    assert_eq!(s.argv, ["w", "1", "101", "201", "100"]);
    assert!(
        s.reason.contains("starting shard [101, 201) from book 101"),
        "{}",
        s.reason
    );
    assert_eq!(p.workers[&WorkerId(5)].phase, Phase::Pending);
}

#[test]
fn a_running_worker_is_never_started_twice_and_a_completed_one_never_again() {
    let d = desired();
    let mut m = mem();
    m.workers.insert(
        WorkerId(0),
        Box::new(WorkerMemory {
            completed_at: Some(t0().wall),
            checkpoint: Some(100),
            ..Default::default()
        }),
    );
    for id in 1..4 {
        m.workers
            .insert(WorkerId(id), Box::new(running(10 + id as i32, t0(), 150)));
    }
    let o = observed(
        (1..4)
            .map(|i| (WorkerId(i), obs(alive(), Some(150))))
            .collect(),
        vec![],
    );
    let p = plan(&d, &o, m.clone(), at(10));
    assert_eq!(
        starts(&p),
        [4],
        "one free slot goes to the next pending shard"
    );
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Completed);
}

#[test]
fn exit_zero_at_the_shard_end_completes_and_short_of_it_is_a_suspicious_failure() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 50)));
    m.workers
        .insert(WorkerId(1), Box::new(running(11, t0(), 150)));
    let o = observed(
        [
            (WorkerId(0), obs(Some(ProcessStatus::Exited), Some(100))),
            (WorkerId(1), obs(Some(ProcessStatus::Exited), Some(150))),
        ]
        .into(),
        vec![
            ExitEvent {
                worker: WorkerId(0),
                pid: 10,
                code: Some(0),
                signal: None,
            },
            ExitEvent {
                worker: WorkerId(1),
                pid: 11,
                code: Some(0),
                signal: None,
            },
        ],
    );
    let p = plan(&d, &o, m.clone(), at(60));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Completed);
    let restart = p
        .actions
        .iter()
        .find(|a| a.worker() == WorkerId(1))
        .expect("worker 1 restarted");
    assert!(
        restart.reason().contains("suspicious completion"),
        "{}",
        restart.reason()
    );
}

#[test]
fn crash_loop_backoff_is_immediate_then_waits_then_restarts() {
    let d = desired(); // backoff 10s doubling
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 40)));
    let crashed = |pid| {
        observed(
            [(WorkerId(0), obs(Some(ProcessStatus::Exited), Some(40)))].into(),
            vec![ExitEvent {
                worker: WorkerId(0),
                pid,
                code: Some(1),
                signal: None,
            }],
        )
    };
    // First crash: restart at once, from the checkpoint.
    let p1 = plan(&d, &crashed(10), m.clone(), at(30));
    let Some(Action::Start(s)) = p1.actions.iter().find(|a| a.worker() == WorkerId(0)) else {
        panic!("{:?}", p1.actions)
    };
    assert_eq!(s.argv[4], "40");
    assert!(
        s.reason.contains("exited with status 1 at book 40"),
        "{}",
        s.reason
    );
    // It starts (pid 20) and crashes again: 10s backoff, no start, wake-up within 10s.
    let mut m2 = p1.memory.clone();
    record_start(&mut m2, &d, s, Ok((identity(20), at(30).boot)), at(30));
    let p2 = plan(&d, &crashed(20), m2.clone(), at(35));
    assert!(!starts(&p2).contains(&0));
    assert_eq!(p2.workers[&WorkerId(0)].phase, Phase::BackingOff);
    assert!(p2.requeue_after <= Duration::from_secs(10));
    // Its slot stays held: no other shard takes it.
    assert_eq!(starts(&p2), [1, 2, 3]);
    // After the backoff the restart happens.
    let p3 = plan(
        &d,
        &observed(BTreeMap::new(), vec![]),
        p2.memory.clone(),
        at(46),
    );
    assert!(starts(&p3).contains(&0), "{:?}", p3.workers[&WorkerId(0)]);
}

/// Regression: a worker that crashed before its first key was restarted "from checkpoint its
/// range start", and its reasons said "at book 100" (the cursor before its shard, no key of it).
#[test]
fn a_crash_before_the_first_key_restarts_from_the_start_of_its_shard_in_plain_words() {
    let d = desired(); // worker 1 owns [101, 201); its cursor before any work is 100
    for checkpoint in [Some(100), None] {
        let mut m = mem();
        let mut w = running(10, t0(), 0);
        w.checkpoint = checkpoint;
        m.workers.insert(WorkerId(1), Box::new(w));
        let o = observed(
            [(WorkerId(1), obs(Some(ProcessStatus::Exited), checkpoint))].into(),
            vec![ExitEvent {
                worker: WorkerId(1),
                pid: 10,
                code: Some(1),
                signal: None,
            }],
        );
        let p = plan(&d, &o, m, at(30));
        let Some(Action::Start(s)) = p.actions.iter().find(|a| a.worker() == WorkerId(1)) else {
            panic!("{:?}", p.actions)
        };
        assert_eq!(
            s.reason,
            "worker 1 exited with status 1; restarting from the start of its shard, book 101 (restart 1)"
        );
    }
    // A running worker at its shard's start shows no checkpoint yet.
    let mut m = mem();
    m.workers
        .insert(WorkerId(1), Box::new(running(10, t0(), 100)));
    let o = observed([(WorkerId(1), obs(alive(), Some(100)))].into(), vec![]);
    let p = plan(&d, &o, m, at(5));
    assert_eq!(
        p.workers[&WorkerId(1)].reason.to_string(),
        "pid 10; 5s since start"
    );
}

/// Regression: an operator's pause read "paused by an operator: paused by an operator".
#[test]
fn an_operator_pause_reads_once() {
    use crate::state::requests::RequestKind;
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.process = None;
    m.workers.insert(WorkerId(0), Box::new(w));
    apply_request(&mut m, RequestKind::Pause, WorkerId(0), at(1));
    let p = plan(&d, &observed(BTreeMap::new(), vec![]), m, at(2));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Paused);
    assert_eq!(
        p.workers[&WorkerId(0)].reason.to_string(),
        "paused by an operator (automon pause)"
    );
}

#[test]
fn stuck_is_confirmed_on_a_second_pass_before_the_stop() {
    let d = desired(); // stuck_after 5m, discovery_grace 20m
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.left_discovery = true;
    w.last_progress_at = Some(at(60).boot);
    m.workers.insert(WorkerId(0), Box::new(w));
    let o = observed([(WorkerId(0), obs(alive(), Some(40)))].into(), vec![]);
    let fine = plan(&d, &o, m.clone(), at(60 + 299));
    assert!(fine.actions.iter().all(|a| a.worker() != WorkerId(0)));
    assert_eq!(fine.workers[&WorkerId(0)].phase, Phase::Progressing);
    let first = plan(&d, &o, fine.memory.clone(), at(60 + 372));
    assert_eq!(first.workers[&WorkerId(0)].phase, Phase::Stuck);
    assert!(stops(&first).is_empty());
    let second = plan(&d, &o, first.memory.clone(), at(60 + 380));
    assert_eq!(stops(&second), [0]);
    let reason = second
        .actions
        .iter()
        .find(|a| a.worker() == WorkerId(0))
        .map(Action::reason)
        .unwrap_or_default();
    assert!(
        reason.contains("no progress for 6m20s (threshold 5m stuck_after, progressing) at book 40"),
        "{reason}"
    );
    // While stopping, no replacement is started for that shard.
    let during = plan(&d, &o, second.memory.clone(), at(60 + 381));
    assert!(!starts(&during).contains(&0));
}

/// Regression (issue 26.13, seen in a load-harness run): a worker crashed during a frozen state
/// file system while a member of its process group lingered. The stop of that leftover group
/// was held until its pass was on disk, which never came while the freeze lasted, so the
/// crashed worker was not replaced for ten minutes. The leftover-group stop carries no intent of
/// its own (a restarted automon decides it again from the recorded process), so it does not
/// await the save; a stop that does carry intent (stuck → restart, counted) still does.
#[test]
fn a_crashed_workers_leftover_group_is_stopped_without_waiting_for_a_save_and_a_stuck_stop_waits() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 40)));
    let mut leftover = obs(None, Some(40));
    leftover.group_alive = true;
    let o = observed([(WorkerId(0), leftover)].into(), vec![]);
    let p = plan(&d, &o, m, at(30));
    let stop = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Stop(s) if s.worker == WorkerId(0) => Some(s),
            _ => None,
        })
        .expect("the leftover group is stopped");
    assert!(stop.whole_group, "{stop:?}");
    assert!(!stop.awaits_save, "{stop:?}");
    assert!(stop.reason.contains("still has members"), "{}", stop.reason);
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stopping);
    // Once the group is gone, the worker is replaced from its checkpoint.
    let gone = observed([(WorkerId(0), obs(None, Some(40)))].into(), vec![]);
    let next = plan(&d, &gone, p.memory.clone(), at(31));
    assert!(
        resumes(&next).contains(&(0, Some(40))),
        "{:?}",
        resumes(&next)
    );

    // A stuck worker's stop records a restart in memory: it waits for the save.
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.left_discovery = true;
    w.last_progress_at = Some(at(60).boot);
    m.workers.insert(WorkerId(0), Box::new(w));
    let o = observed([(WorkerId(0), obs(alive(), Some(40)))].into(), vec![]);
    let first = plan(&d, &o, m, at(60 + 372));
    let second = plan(&d, &o, first.memory.clone(), at(60 + 380));
    let stuck_stop = second
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Stop(s) => Some(s),
            _ => None,
        })
        .expect("the stuck worker is stopped");
    assert!(stuck_stop.awaits_save, "{stuck_stop:?}");
}

/// Regression (fresh-clone user test): a fix was decided, automon was SIGKILLed before the fix
/// was saved, and the attempt was lost. The loop now sends a fix's stop only once the memory
/// that records the attempt (number, stage, the stop) is on disk (`daemon::launch_deferred`);
/// this is what the next automon makes of that memory when the kill came between the save and
/// the stop: the same attempt, counted once, and its stop resumed.
#[test]
fn a_fix_saved_but_not_acted_on_before_a_kill_is_resumed_and_counted_once() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.left_discovery = true;
    w.last_progress_at = Some(at(60).boot);
    m.workers.insert(WorkerId(0), Box::new(w));
    let o = observed([(WorkerId(0), obs(alive(), Some(40)))].into(), vec![]);
    let first = plan(&d, &o, m, at(60 + 372));
    let decided = plan(&d, &o, first.memory.clone(), at(60 + 380));
    assert_eq!(stops(&decided), [0]);
    let w0 = &decided.memory.workers[&WorkerId(0)];
    assert_eq!(
        w0.fixes.attempts.len(),
        1,
        "the attempt is in the saved memory"
    );
    assert_eq!(w0.fixes.stage, Some(memory::FixStage::Verifying { n: 1 }));
    assert!(w0.stopping.as_ref().is_some_and(|s| s.restart));
    // What state.json holds when the kill comes before the stop is sent.
    let json = serde_json::to_vec(&decided.memory).expect("serialize");
    let loaded: Memory = serde_json::from_slice(&json).expect("load");
    // The next automon: the stuck process still runs, no stop task of its own.
    let next = plan(&d, &o, loaded, at(60 + 390));
    assert_eq!(stops(&next), [0]);
    let reason = next
        .actions
        .iter()
        .find(|a| a.worker() == WorkerId(0))
        .map(Action::reason)
        .unwrap_or_default();
    assert!(reason.contains("resuming the stop"), "{reason}");
    assert!(reason.contains("fix attempt 1/"), "{reason}");
    let w0 = &next.memory.workers[&WorkerId(0)];
    assert_eq!(w0.fixes.attempts.len(), 1, "counted once");
    assert_eq!(w0.fixes.attempts[0].n, 1);
    assert_eq!(next.memory.totals.fixes.values().sum::<u64>(), 1);
}

#[test]
fn discovery_grace_applies_before_the_first_upload_counted_from_process_start() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 0)));
    let o = observed([(WorkerId(0), obs(alive(), Some(0)))].into(), vec![]);
    let p = plan(&d, &o, m.clone(), at(600));
    assert_eq!(
        p.workers[&WorkerId(0)].phase,
        Phase::Discovering,
        "10 minutes < 20m grace"
    );
    let p = plan(&d, &o, p.memory.clone(), at(1201));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stuck);
}

/// Regression: a worker started with nothing done (no progress file, or `-1`) wrote its first
/// checkpoint, and that did not count as progress: it was judged stuck at its discovery grace
/// with a checkpoint written seconds before, and restarted.
#[test]
fn a_first_checkpoint_written_while_running_is_progress() {
    let d = desired(); // discovery_grace 20m
    let mut m = mem();
    let mut w = running(10, t0(), 0);
    w.checkpoint = None;
    m.workers.insert(WorkerId(0), Box::new(w));
    let nothing = observed([(WorkerId(0), obs(alive(), None))].into(), vec![]);
    let p = plan(&d, &nothing, m, at(1000));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Discovering);
    // Its first checkpoint, a minute before the grace ends.
    let first = observed([(WorkerId(0), obs(alive(), Some(9)))].into(), vec![]);
    let p = plan(&d, &first, p.memory.clone(), at(1140));
    let w0 = &p.memory.workers[&WorkerId(0)];
    assert_eq!(
        w0.last_progress_at,
        Some(at(1140).boot),
        "counted as progress"
    );
    assert!(w0.left_discovery);
    // Past the grace, still within stuck_after of that checkpoint: not stuck.
    let p = plan(&d, &first, p.memory.clone(), at(1260));
    assert_ne!(
        p.workers[&WorkerId(0)].phase,
        Phase::Stuck,
        "{}",
        p.workers[&WorkerId(0)].reason
    );
}

#[test]
fn a_repeated_log_line_is_not_progress() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.left_discovery = true;
    w.last_progress_at = Some(t0().boot);
    m.workers.insert(WorkerId(0), Box::new(w));
    let line = |ts| LogRecord {
        class: LineClass::Activity,
        timestamp: Some(ts),
        message: "INFO - Processed batch: book.id > 40".into(),
    };
    let log = |ts| LogObservation::Read {
        cursor: LogCursor {
            dev: 1,
            inode: 1,
            offset: 10,
            ..LogCursor::default()
        },
        records: vec![line(ts)],
        first_look: false,
        reset: None,
        new_bytes: 10,
        repeated: None,
    };
    let mut o1 = obs(alive(), Some(40));
    o1.log = log(at(100).wall);
    let p1 = plan(
        &d,
        &observed([(WorkerId(0), o1.clone())].into(), vec![]),
        m.clone(),
        at(100),
    );
    assert_eq!(
        p1.memory.workers[&WorkerId(0)].last_progress_at,
        Some(at(100).boot),
        "a new line is progress"
    );
    let p2 = plan(
        &d,
        &observed([(WorkerId(0), o1)].into(), vec![]),
        p1.memory.clone(),
        at(200),
    );
    assert_eq!(
        p2.memory.workers[&WorkerId(0)].last_progress_at,
        Some(at(100).boot),
        "the same line again is not"
    );
}

/// Regression (issue 14.4): `03:05:08 processed item 130` printed over and over showed as
/// Progressing for minutes, with the default format and with `timestamp_format: "%H:%M:%S"`
/// (the time stayed in the message, so every line looked new).
#[test]
fn a_line_repeated_with_only_its_timestamp_changed_is_not_progress_whatever_the_format() {
    let d = desired();
    for (first, again) in [
        ("03:05:08 processed item 130", "03:05:09 processed item 130"),
        (
            "[2026-11-29T08:14:44Z] processed item 130",
            "[2026-11-29T08:14:47Z] processed item 130",
        ),
        (
            "2026-11-29 08:14:44,123 - INFO - processed item 130",
            "2026-11-29 08:14:45,456 - INFO - processed item 130",
        ),
        (
            "12/07/2026 03:05:08.5 | processed item 130",
            "12/07/2026 03:05:11.9 | processed item 130",
        ),
    ] {
        let mut m = mem();
        let mut w = running(10, t0(), 40);
        w.left_discovery = true;
        w.last_progress_at = Some(t0().boot);
        m.workers.insert(WorkerId(0), Box::new(w));
        let with_line = |text: &str| {
            let mut o = obs(alive(), Some(40));
            o.log = LogObservation::Read {
                cursor: LogCursor {
                    dev: 1,
                    inode: 1,
                    offset: 10,
                    ..LogCursor::default()
                },
                records: vec![LogRecord {
                    class: LineClass::Activity,
                    timestamp: None,
                    message: text.into(),
                }],
                first_look: false,
                reset: None,
                new_bytes: 10,
                repeated: None,
            };
            observed([(WorkerId(0), o)].into(), vec![])
        };
        let p1 = plan(&d, &with_line(first), m, at(100));
        assert_eq!(
            p1.memory.workers[&WorkerId(0)].last_progress_at,
            Some(at(100).boot),
            "{first}: a new line is progress"
        );
        let p2 = plan(&d, &with_line(again), p1.memory, at(200));
        assert_eq!(
            p2.memory.workers[&WorkerId(0)].last_progress_at,
            Some(at(100).boot),
            "{again}: the same line with another time is not progress"
        );
    }
}

#[test]
fn a_leading_time_is_stripped_by_shape_and_a_leading_count_is_kept() {
    use super::worker::without_leading_time as strip;
    for (line, rest) in [
        ("03:05:08 processed item 130", "processed item 130"),
        ("2026-11-29 08:14:44,123 - INFO - x", "INFO - x"),
        ("[2026-11-29T08:14:44+01:00] x", "x"),
        ("130 books done", "130 books done"),
        ("2026-11-29 batch 4 done", "2026-11-29 batch 4 done"),
        (
            "Uploading: 12:30 Lecture.epub",
            "Uploading: 12:30 Lecture.epub",
        ),
        ("", ""),
    ] {
        assert_eq!(strip(line), rest, "{line:?}");
    }
}

/// Regression (issue 14.4): a worker looping right after a restart (no upload yet) was judged
/// on `discovery_grace` (20m), although its log already showed the loop.
#[test]
fn repeated_cursor_evidence_marks_a_worker_stuck_on_stuck_after_even_right_after_a_restart() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.repeating = Some(crate::observe::logtail::RepeatedCursor {
        what: "book.id > 40".into(),
        value: 40,
        times: LOOP_EVIDENCE,
    });
    m.workers.insert(WorkerId(0), Box::new(w));
    let o = || observed([(WorkerId(0), obs(alive(), Some(40)))].into(), vec![]);
    let p1 = plan(&d, &o(), m, at(301));
    assert_eq!(
        p1.workers[&WorkerId(0)].phase,
        Phase::Stuck,
        "{:?}",
        p1.workers[&WorkerId(0)]
    );
    let reason = p1.workers[&WorkerId(0)].reason.to_string();
    assert!(
        reason.contains("threshold 5m stuck_after, looping"),
        "{reason}"
    );
    let p2 = plan(&d, &o(), p1.memory, at(302));
    assert!(
        p2.actions
            .iter()
            .any(|a| matches!(a, Action::Stop(s) if s.worker == WorkerId(0))),
        "{:?}",
        p2.actions
    );
}

/// Regression (issue 14.5): a template whose program does not exist was retried at
/// `backoff_max` forever, never Failed.
#[test]
fn a_start_that_cannot_execute_the_program_counts_as_a_crash_and_fails_the_worker_after_the_limit()
{
    let d = desired();
    let enoent = "cannot execute \"python4\" in /tmp/t: No such file or directory (os error 2)";
    let mut m = mem();
    let mut now = 0;
    let mut alerts = Vec::new();
    for attempt in 1..=MAX_START_FAILURES {
        let p = plan(&d, &observed(BTreeMap::new(), vec![]), m, at(now));
        let start = p
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Start(s) if s.worker == WorkerId(0) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("attempt {attempt}: worker 0 started: {:?}", p.actions));
        m = p.memory;
        let event = record_start(&mut m, &d, &start, Err(enoent.into()), at(now));
        let event = event.expect("an event");
        if attempt < MAX_START_FAILURES {
            assert!(
                event.contains("could not start") && event.contains("retrying in"),
                "{event}"
            );
            assert_eq!(
                m.workers[&WorkerId(0)].failures,
                attempt,
                "counts as a crash"
            );
        } else {
            alerts.push(event);
        }
        now += 600; // past any backoff
    }
    assert_eq!(alerts.len(), 1);
    assert!(
        alerts[0].starts_with(
            "ALERT: worker 0: could not start 3 times in a row: cannot execute \"python4\""
        ) && alerts[0].contains("(os error 2)"),
        "{alerts:?}"
    );
    let p = plan(&d, &observed(BTreeMap::new(), vec![]), m, at(now));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Failed);
    assert!(
        p.workers[&WorkerId(0)]
            .reason
            .to_string()
            .contains("os error 2")
    );
    assert!(!starts(&p).contains(&0), "{:?}", p.actions);
}

/// Regression (issue 14.6): a mistyped `progress.file` made the worker redo its whole shard
/// forever ("checkpoint short … restarting from checkpoint its range start"), never naming the
/// file automon looked for.
/// Regression (fresh-clone test): a command whose program is missing behind `env` or `sh`
/// (`[/usr/bin/env, nothere]`) starts, exits 127 at once, and was retried at `backoff_max`
/// forever, never Failed. Exits 127/126 without progress count like starts that failed: the
/// worker is Failed after the limit, with the command and its log named.
#[test]
fn a_command_whose_program_is_missing_behind_env_exits_127_and_fails_after_the_start_limit_instead_of_retrying_forever()
 {
    let d = desired();
    let mut m = mem();
    let mut now = 0;
    let mut alerts = Vec::new();
    for attempt in 1..=MAX_START_FAILURES {
        let p = plan(&d, &observed(BTreeMap::new(), vec![]), m, at(now));
        let start = p
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Start(s) if s.worker == WorkerId(0) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("attempt {attempt}: worker 0 started: {:?}", p.actions));
        m = p.memory;
        let pid = 100 + attempt as i32;
        assert_eq!(
            record_start(
                &mut m,
                &d,
                &start,
                Ok((identity(pid), at(now).boot)),
                at(now)
            ),
            None
        );
        now += 1;
        let exited = observed(
            [(WorkerId(0), obs(Some(ProcessStatus::Exited), None))].into(),
            vec![ExitEvent {
                worker: WorkerId(0),
                pid,
                code: Some(127),
                signal: None,
            }],
        );
        let p = plan(&d, &exited, m, at(now));
        alerts.extend(p.events.iter().filter(|e| e.starts_with("ALERT")).cloned());
        if attempt < MAX_START_FAILURES {
            assert_ne!(
                p.workers[&WorkerId(0)].phase,
                Phase::Failed,
                "attempt {attempt}"
            );
        }
        m = p.memory;
        now += 600; // past any backoff
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].starts_with("ALERT: worker 0: exited with status 127 (command not found) 3 times in a row without progress")
            && alerts[0].contains("(command: w ")
            && alerts[0].contains("/tmp/t/w0.log"),
        "{alerts:?}"
    );
    let p = plan(&d, &observed(BTreeMap::new(), vec![]), m.clone(), at(now));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Failed);
    assert!(!starts(&p).contains(&0), "{:?}", p.actions);
    // An exit 127 after progress is an ordinary crash: restarted, not counted.
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 40)));
    if let Some(w) = m.workers.get_mut(&WorkerId(0)) {
        w.start_failures = MAX_START_FAILURES - 1;
    }
    let exited = observed(
        [(WorkerId(0), obs(Some(ProcessStatus::Exited), Some(40)))].into(),
        vec![ExitEvent {
            worker: WorkerId(0),
            pid: 10,
            code: Some(127),
            signal: None,
        }],
    );
    let p = plan(&d, &exited, m, at(30));
    assert!(starts(&p).contains(&0), "{:?}", p.actions);
    assert_eq!(p.memory.workers[&WorkerId(0)].start_failures, 0);
}

#[test]
fn a_progress_file_that_never_appears_is_named_and_the_worker_held_after_two_clean_exits() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 0);
    w.checkpoint = None;
    m.workers.insert(WorkerId(0), Box::new(w));
    let exit = |pid| ExitEvent {
        worker: WorkerId(0),
        pid,
        code: Some(0),
        signal: None,
    };
    let gone = || [(WorkerId(0), obs(Some(ProcessStatus::Exited), None))].into();
    let p1 = plan(&d, &observed(gone(), vec![exit(10)]), m, at(60));
    let start = p1
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Start(s) if s.worker == WorkerId(0) => Some(s.clone()),
            _ => None,
        })
        .expect("rerun once");
    assert!(
        start
            .reason
            .contains("its progress file /tmp/t/p0.json never appeared"),
        "{}",
        start.reason
    );
    let mut m = p1.memory;
    record_start(&mut m, &d, &start, Ok((identity(11), at(61).boot)), at(61));
    let p2 = plan(&d, &observed(gone(), vec![exit(11)]), m, at(120));
    assert!(
        !starts(&p2).contains(&0),
        "held, not rerun: {:?}",
        p2.actions
    );
    assert!(
        p2.events.iter().any(|e| e.starts_with("ALERT: worker 0 exited with status 0, but its progress file /tmp/t/p0.json never appeared")),
        "{:?}",
        p2.events
    );
    assert_eq!(p2.workers[&WorkerId(0)].phase, Phase::Paused);
    assert!(
        p2.workers[&WorkerId(0)]
            .reason
            .to_string()
            .contains("progress file /tmp/t/p0.json never appeared"),
        "{:?}",
        p2.workers[&WorkerId(0)]
    );
}

#[test]
fn unreadable_progress_keeps_the_last_good_checkpoint() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 77)));
    let mut o = obs(alive(), None);
    o.progress = ProgressObservation::Unreadable {
        why: "truncated JSON".into(),
    };
    let p = plan(
        &d,
        &observed([(WorkerId(0), o)].into(), vec![]),
        m.clone(),
        at(5),
    );
    assert_eq!(p.memory.workers[&WorkerId(0)].checkpoint, Some(77));
    assert!(!starts(&p).contains(&0), "{:?}", p.actions);
}

fn torn(why: &str) -> WorkerObservation {
    WorkerObservation {
        progress: ProgressObservation::Unreadable { why: why.into() },
        ..obs(None, None)
    }
}

/// The starts of a plan with their `--resume-from` cursors.
fn resumes(plan: &Plan) -> Vec<(u32, Option<u64>)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start(s) => Some((s.worker.0, s.resume_from)),
            _ => None,
        })
        .collect()
}

/// Regression (issue 14.1): with no remembered checkpoint (first apply, `--reset-state`, a
/// lost state directory), an unparseable progress file was taken as "no checkpoint" and the
/// worker started from its shard start, overwriting days of work.
#[test]
fn an_unparseable_progress_file_without_a_checkpoint_holds_the_worker_never_starting_it_from_its_shard_start()
 {
    let d = desired();
    let p1 = plan(
        &d,
        &observed(
            [(WorkerId(0), torn("truncated JSON at byte 12"))].into(),
            vec![],
        ),
        mem(),
        t0(),
    );
    assert_eq!(
        starts(&p1),
        vec![1, 2, 3, 4],
        "worker 0 is held, not started"
    );
    let alerts: Vec<&String> = p1.events.iter().filter(|e| e.contains("ALERT")).collect();
    assert_eq!(alerts.len(), 1, "{:?}", p1.events);
    assert!(
        alerts[0].contains("worker 0: progress file /tmp/t/p0.json exists but cannot be parsed (truncated JSON at byte 12)"),
        "{alerts:?}"
    );
    assert_eq!(p1.workers[&WorkerId(0)].phase, Phase::Stopped);
    assert!(
        p1.workers[&WorkerId(0)]
            .reason
            .to_string()
            .starts_with("held: ")
    );
    // Still torn (another parse error) a pass later: still held, not alerted again.
    let p2 = plan(
        &d,
        &observed([(WorkerId(0), torn("empty file"))].into(), vec![]),
        p1.memory,
        at(60),
    );
    assert!(!starts(&p2).contains(&0), "{:?}", p2.actions);
    assert!(
        !p2.events.iter().any(|e| e.contains("ALERT")),
        "{:?}",
        p2.events
    );
    // The file parses: the worker starts from the checkpoint in it, and says so.
    let p3 = plan(
        &d,
        &observed([(WorkerId(0), obs(None, Some(57)))].into(), vec![]),
        p2.memory,
        at(120),
    );
    assert_eq!(resumes(&p3)[0], (0, Some(57)), "{:?}", p3.actions);
    assert!(
        p3.events
            .iter()
            .any(|e| e == "worker 0: progress file /tmp/t/p0.json readable again (checkpoint 57)"),
        "{:?}",
        p3.events
    );
}

/// Regression (issue 14.1): a worker whose every read so far was torn exits; its restart must
/// not begin at the shard start either.
#[test]
fn a_worker_exiting_while_its_progress_file_is_unparseable_and_no_checkpoint_is_known_is_held() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 0);
    w.checkpoint = None;
    m.workers.insert(WorkerId(0), Box::new(w));
    let exit = ExitEvent {
        worker: WorkerId(0),
        pid: 10,
        code: Some(1),
        signal: None,
    };
    let p = plan(
        &d,
        &observed([(WorkerId(0), torn("truncated JSON"))].into(), vec![exit]),
        m,
        at(5),
    );
    assert!(!starts(&p).contains(&0), "{:?}", p.actions);
    assert!(
        p.events
            .iter()
            .any(|e| e.starts_with("ALERT: worker 0: progress file /tmp/t/p0.json")),
        "{:?}",
        p.events
    );
}

/// Regression (issue 14.1): a healthy worker with a non-atomic writer produced an
/// "unreadable"/"readable again" event pair every few seconds (22 lines a minute). Torn reads
/// between good ones are no news; a file unreadable for `UNREADABLE_REPORT_AFTER` is reported
/// once (whatever its parse errors), and its recovery once.
#[test]
fn torn_reads_of_a_non_atomic_writer_are_not_reported_and_a_persistent_problem_is_reported_once() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 10)));
    let mut events = Vec::new();
    // Ten simulated minutes, a pass every 2 s, every third read torn.
    for pass in 1..=299u64 {
        let o = if pass % 3 == 0 {
            WorkerObservation {
                process: alive(),
                ..torn(&format!("truncated JSON at byte {pass}"))
            }
        } else {
            obs(alive(), Some(10 + pass))
        };
        let p = plan(
            &d,
            &observed([(WorkerId(0), o)].into(), vec![]),
            m,
            at(pass * 2),
        );
        events.extend(p.events);
        m = p.memory;
    }
    assert!(
        !events.iter().any(|e| e.contains("progress file")),
        "{events:?}"
    );
    // Now unreadable for good: reported once, after UNREADABLE_REPORT_AFTER.
    let mut reported = Vec::new();
    for s in 0..60u64 {
        let o = WorkerObservation {
            process: alive(),
            ..torn(&format!("truncated JSON at byte {s}"))
        };
        let p = plan(
            &d,
            &observed([(WorkerId(0), o)].into(), vec![]),
            m,
            at(602 + s * 2),
        );
        reported.extend(
            p.events
                .into_iter()
                .filter(|e| e.contains("progress file"))
                .map(|e| (s * 2, e)),
        );
        m = p.memory;
    }
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(
        reported[0].0 >= UNREADABLE_REPORT_AFTER.as_secs(),
        "{reported:?}"
    );
    assert!(
        reported[0]
            .1
            .contains("keeping the last good checkpoint 309"),
        "{reported:?}"
    );
    let p = plan(
        &d,
        &observed([(WorkerId(0), obs(alive(), Some(400)))].into(), vec![]),
        m,
        at(800),
    );
    assert_eq!(
        p.events,
        vec!["worker 0: progress file /tmp/t/p0.json readable again (checkpoint 400)".to_string()]
    );
}

#[test]
fn all_shards_complete_completes_the_workerset() {
    let d = desired();
    let mut m = mem();
    for id in 0..8 {
        m.workers.insert(
            WorkerId(id),
            Box::new(WorkerMemory {
                completed_at: Some(t0().wall),
                checkpoint: Some(100 * u64::from(id) + 100),
                ..Default::default()
            }),
        );
    }
    let p = plan(&d, &observed(BTreeMap::new(), vec![]), m.clone(), at(1));
    assert!(p.complete);
    assert!(p.actions.is_empty());
}

#[test]
fn planning_twice_on_the_same_inputs_gives_the_same_plan() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(2), Box::new(running(12, t0(), 230)));
    let o = observed(
        [(WorkerId(2), obs(Some(ProcessStatus::Exited), Some(240)))].into(),
        vec![],
    );
    assert_eq!(
        plan(&d, &o, m.clone(), at(9)),
        plan(&d, &o, m.clone(), at(9))
    );
}

/// Regression: a pass that ran between a child's death and its reaping restarted it as
/// "status unknown" and lost the exit status (seen as a flaky crash test under load).
#[test]
fn an_own_child_gone_from_proc_but_not_reaped_waits_for_its_exit_status() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 40)));
    let mut o = observed(
        [(WorkerId(0), obs(Some(ProcessStatus::Exited), Some(40)))].into(),
        vec![],
    );
    o.children.unreaped.insert(10);
    let p = plan(&d, &o, m.clone(), at(5));
    assert!(
        p.actions.iter().all(|a| a.worker() != WorkerId(0)),
        "{:?}",
        p.actions
    );
    assert!(p.requeue_after <= Duration::from_millis(100));
    assert!(p.memory.workers[&WorkerId(0)].process.is_some());
}

/// The original tool believed a "Migration complete" log line after a skip-ahead.
#[test]
fn a_completion_log_line_short_of_the_shard_end_is_reported_not_believed() {
    let d = desired();
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 60)));
    let mut o = obs(Some(ProcessStatus::Exited), Some(60));
    o.log = LogObservation::Read {
        cursor: LogCursor {
            dev: 1,
            inode: 1,
            offset: 10,
            ..LogCursor::default()
        },
        records: vec![LogRecord {
            class: LineClass::Completion,
            timestamp: None,
            message: "INFO - Migration complete. Total: 3,112".into(),
        }],
        first_look: false,
        reset: None,
        new_bytes: 10,
        repeated: None,
    };
    let p = plan(
        &d,
        &observed(
            [(WorkerId(0), o)].into(),
            vec![ExitEvent {
                worker: WorkerId(0),
                pid: 10,
                code: Some(0),
                signal: None,
            }],
        ),
        m.clone(),
        at(5),
    );
    assert_ne!(p.workers[&WorkerId(0)].phase, Phase::Completed);
    let reason = p
        .actions
        .iter()
        .find(|a| a.worker() == WorkerId(0))
        .map(Action::reason)
        .unwrap_or_default();
    assert!(
        reason.contains("its log says \"INFO - Migration complete")
            && reason.contains("suspicious completion"),
        "{reason}"
    );
}

#[test]
fn after_a_code_fix_all_running_workers_restart_or_only_the_stuck_one() {
    use crate::manifest::CodeFixRestart;
    let applied = || {
        CodeFixOutcome::Applied(memory::AppliedCode {
            file: "/w/x.py".into(),
            backup: "/s/x.bak".into(),
            patch_hash: "h".into(),
        })
    };
    let mut m = mem();
    for id in 0..3 {
        m.workers
            .insert(WorkerId(id), Box::new(running(10 + id as i32, t0(), 5)));
    }
    let mut all = m.clone();
    let mut d = desired();
    record_code_fix(&mut all, &d, WorkerId(1), applied(), at(1));
    assert_eq!(
        all.restart_for_code,
        [WorkerId(0), WorkerId(1), WorkerId(2)]
    );
    d.fixes.code.restart = CodeFixRestart::StuckOnly;
    record_code_fix(&mut m, &d, WorkerId(1), applied(), at(1));
    assert_eq!(m.restart_for_code, [WorkerId(1)]);
    assert!(
        m.applied_patches.contains("h"),
        "the patch is never applied twice"
    );
}

#[test]
fn an_operator_can_drop_config_fix_values() {
    use crate::state::requests::RequestKind;
    let mut m = mem();
    let mut w = running(10, t0(), 5);
    w.params.insert("parallel_uploads".into(), 2);
    m.workers.insert(WorkerId(0), Box::new(w));
    let msg = apply_request(&mut m, RequestKind::ResetParams, WorkerId(0), at(1));
    assert!(msg.contains("parallel_uploads=2 dropped"), "{msg}");
    assert!(m.workers[&WorkerId(0)].params.is_empty());
    let again = apply_request(&mut m, RequestKind::ResetParams, WorkerId(0), at(2));
    assert!(again.contains("nothing to reset"), "{again}");
}

/// Guards the persisted fingerprints of `recent_signals`: they must not change between
/// builds or Rust releases (std's `DefaultHasher` may; a state file written by one automon
/// would then see every remembered line as new progress after an upgrade).
#[test]
fn progress_line_fingerprints_are_stable_across_builds() {
    assert_eq!(
        super::fingerprint(" - INFO - Successfully uploaded: book 1204 (312 KiB)"),
        17_966_728_807_261_934_678
    );
    // XXH3-64 of the empty input, as the algorithm's specification gives it.
    assert_eq!(super::fingerprint(""), 0x2d06_8005_38d3_94c2);
}

#[test]
fn a_running_workers_reason_reads_as_a_sentence_and_serializes_as_one() {
    let running = |at: Option<u64>, idle: u64, since_start: bool| Reason::Running {
        handle: crate::runtime::Handle::Process(4242),
        at: at.map(|c| (std::sync::Arc::from("book"), c)),
        idle: Duration::from_secs(idle),
        since_start,
    };
    assert_eq!(
        running(Some(1_234_567), 372, false).to_string(),
        "pid 4242 at book 1,234,567; 6m12s since the last progress"
    );
    assert_eq!(
        running(None, 5, true).to_string(),
        "pid 4242; 5s since start"
    );
    let status = WorkerStatus {
        phase: Phase::Progressing,
        reason: running(Some(40), 30, false),
    };
    let json = serde_json::to_string(&status).expect("serializes");
    assert_eq!(
        json,
        r#"{"phase":"Progressing","reason":"pid 4242 at book 40; 30s since the last progress"}"#
    );
    // Read back (status files, `get -o json` consumers) it is the same sentence.
    let back: WorkerStatus = serde_json::from_str(&json).expect("parses");
    assert_eq!(back.reason.to_string(), status.reason.to_string());
}

/// Regression: a Slurm job's running reason said `pid 360` (its job id as a pid) when no
/// job record was at hand (a job found again after a scheduler hold).
#[test]
fn a_running_slurm_jobs_reason_names_the_job_not_a_pid() {
    let reason = Reason::Running {
        handle: crate::runtime::Handle::Job(360),
        at: Some((std::sync::Arc::from("book"), 7)),
        idle: Duration::from_secs(5),
        since_start: true,
    };
    assert_eq!(reason.to_string(), "job 360 at book 7; 5s since start");
}

/// Regression (issue 14.2): with the disk alternating busy/idle, 6–8 scale changes in 100 s
/// were seen, every scale-down undone 10–100 ms later by the pass the parked worker's exit
/// triggered. Ten simulated minutes of a disk alternating 95 % / 20 % every 5 s, with passes
/// every second plus one 50 ms after every exit: at most one scale change per cooldown window,
/// and each kind of hold logged once when it begins.
#[test]
fn an_alternating_disk_moves_the_count_at_most_once_per_cooldown_window() {
    use crate::observe::disk::{DiskDevice, DiskObservation};
    let d = desired();
    let mut m = mem();
    for id in 0..4 {
        let mut w = running(100 + id, t0(), 100 * id as u64 + 5);
        w.left_discovery = true;
        w.last_progress_at = Some(BootTime(0)); // stuck long ago
        m.workers.insert(WorkerId(id as u32), Box::new(w));
    }
    let mut live: BTreeMap<WorkerId, i32> = (0..4).map(|i| (WorkerId(i), 100 + i as i32)).collect();
    let mut exits: Vec<ExitEvent> = Vec::new();
    let mut next_pid = 1000;
    let mut changes: Vec<(u64, &str)> = Vec::new();
    let mut holds: Vec<String> = Vec::new();
    let (mut downs, mut ups) = (0, 0);
    // Pass times in ms: every second, plus 50 ms after a pass that stopped something.
    let mut times: std::collections::BTreeSet<u64> = (0..=600).map(|s| s * 1000).collect();
    while let Some(t) = times.pop_first() {
        let now = Now {
            wall: t0()
                .wall
                .checked_add(Duration::from_millis(t))
                .expect("valid"),
            boot: t0().boot.plus(Duration::from_millis(t)),
        };
        let busy = (t / 5000) % 2 == 0;
        let workers = (0..8)
            .map(|i| {
                let id = WorkerId(i);
                let recorded = m
                    .workers
                    .get(&id)
                    .and_then(|w| w.process.as_ref())
                    .is_some();
                let status = match (recorded, live.contains_key(&id)) {
                    (_, true) => alive(),
                    (true, false) => Some(ProcessStatus::Exited),
                    (false, false) => None,
                };
                let c = m.workers.get(&id).and_then(|w| w.checkpoint);
                (id, obs(status, c))
            })
            .collect();
        let mut o = observed(workers, std::mem::take(&mut exits));
        o.disk = DiskObservation::Sample {
            device: DiskDevice {
                major: 8,
                minor: 0,
                name: "sda".into(),
                rotational: Some(true),
            },
            util_percent: if busy { 95.0 } else { 20.0 },
            queue_depth: if busy { 4.0 } else { 0.2 },
        };
        let p = plan(&d, &o, m, now);
        holds.extend(
            p.events
                .iter()
                .filter(|e| e.starts_with("scaling: "))
                .cloned(),
        );
        m = p.memory;
        if m.totals.scale_downs > downs {
            changes.push((t, "down"));
        }
        if m.totals.scale_ups > ups {
            changes.push((t, "up"));
        }
        (downs, ups) = (m.totals.scale_downs, m.totals.scale_ups);
        for a in &p.actions {
            match a {
                Action::Stop(s) if live.remove(&s.worker).is_some() => {
                    exits.push(ExitEvent {
                        worker: s.worker,
                        pid: s.identity.pid,
                        code: None,
                        signal: Some(15),
                    });
                    times.insert(t + 50);
                }
                Action::Start(s) => {
                    next_pid += 1;
                    record_start(&mut m, &d, s, Ok((identity(next_pid), now.boot)), now);
                    live.insert(s.worker, next_pid);
                }
                _ => {}
            }
        }
    }
    assert!(!changes.is_empty(), "the series does move the count");
    let window = d
        .scaling
        .scale_down_cooldown
        .get()
        .min(d.scaling.scale_up_cooldown.get())
        .as_millis() as u64;
    for pair in changes.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= window,
            "two scale changes within one cooldown window: {changes:?}"
        );
    }
    assert!(changes.len() <= 2, "{changes:?}");
    // Each kind of hold is said once when it begins, not every pass (600+ passes).
    assert!(
        holds.len() <= 6 * (changes.len() + 1),
        "{} hold events: {holds:#?}",
        holds.len()
    );
    assert!(
        holds.iter().any(|h| h.contains("stabilisation window")),
        "{holds:#?}"
    );
}

/// A live apply that lowers the target: the highest-id running workers are parked (stopped with
/// the stop grace, their shards kept for later), once — not again while they stop — and none is
/// started; raising it again resumes the parked shards first.
#[test]
fn a_lowered_target_parks_the_highest_running_workers_with_the_grace_and_a_raised_one_resumes_them()
{
    let four = desired();
    let mut m = mem();
    let mut world = BTreeMap::new();
    for id in 0..4u32 {
        m.workers.insert(
            WorkerId(id),
            Box::new(running(100 + id as i32, t0(), 100 * u64::from(id) + 50)),
        );
        world.insert(WorkerId(id), obs(alive(), Some(100 * u64::from(id) + 50)));
    }
    let p = plan(&four, &observed(world.clone(), vec![]), m, at(1));
    assert!(
        stops(&p).is_empty() && starts(&p).is_empty(),
        "{:?}",
        p.actions
    );
    let mut two = four.clone();
    two.counts.target = 2;
    let p = plan(&two, &observed(world.clone(), vec![]), p.memory, at(2));
    assert_eq!(stops(&p), [3, 2]);
    assert!(starts(&p).is_empty());
    for a in &p.actions {
        let Action::Stop(s) = a else { continue };
        assert_eq!(s.grace, two.stop_grace, "parked with the stop grace");
        assert!(s.reason.contains("parking worker"), "{}", s.reason);
    }
    assert!(p.memory.workers[&WorkerId(3)].parked.is_some());
    assert_eq!(p.memory.desired_count, Some(2));
    // Next pass, the two still stopping (their stop tasks run): nothing more is parked.
    let mut o = observed(world.clone(), vec![]);
    o.children.stopping = [WorkerId(2), WorkerId(3)].into();
    let p = plan(&two, &o, p.memory, at(3));
    assert!(stops(&p).is_empty(), "{:?}", p.actions);
    // Gone: parked, not restarted.
    for id in [2u32, 3] {
        world.insert(WorkerId(id), obs(None, Some(100 * u64::from(id) + 50)));
    }
    let mut m = p.memory;
    for id in [2u32, 3] {
        if let Some(w) = m.workers.get_mut(&WorkerId(id)) {
            w.process = None;
            w.stopping = None;
        }
    }
    let p = plan(&two, &observed(world.clone(), vec![]), m, at(4));
    assert!(starts(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.workers[&WorkerId(3)].phase, Phase::Parked);
    // Target back to 4: the parked shards resume from their checkpoints.
    let p = plan(&four, &observed(world, vec![]), p.memory, at(5));
    assert_eq!(starts(&p), [2, 3]);
}

#[test]
fn unsaved_state_holds_every_start_and_a_crash_restart_resumes_after_a_save() {
    // Regression (issue 26, item 1): a worker started in a pass whose save failed was
    // unrecorded on disk; the next automon took it for a duplicate. While the memory is not on
    // disk nothing starts; the restart that was due is kept, not lost, and made once it is saved.
    let d = desired();
    let unsaved = |mut o: Observed| {
        o.unsaved_state = Some("state.json: No space left on device".into());
        o
    };
    let p = plan(&d, &unsaved(observed(BTreeMap::new(), vec![])), mem(), t0());
    assert_eq!(starts(&p), Vec::<u32>::new());
    assert!(
        p.workers[&WorkerId(0)]
            .reason
            .to_string()
            .contains("start held: automon's state is not saved (state.json: No space left"),
        "{}",
        p.workers[&WorkerId(0)].reason
    );
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(running(10, t0(), 40)));
    let crashed = observed(
        [(WorkerId(0), obs(Some(ProcessStatus::Exited), Some(40)))].into(),
        vec![ExitEvent {
            worker: WorkerId(0),
            pid: 10,
            code: Some(1),
            signal: None,
        }],
    );
    let held = plan(&d, &unsaved(crashed), m, at(30));
    assert_eq!(starts(&held), Vec::<u32>::new());
    let saved = plan(
        &d,
        &observed(BTreeMap::new(), vec![]),
        held.memory.clone(),
        at(31),
    );
    let Some(Action::Start(s)) = saved.actions.iter().find(|a| a.worker() == WorkerId(0)) else {
        panic!("{:?}", saved.actions)
    };
    assert_eq!(s.argv[4], "40", "restarted from its checkpoint");
    assert!(s.reason.contains("exited with status 1"), "{}", s.reason);
}

/// Issue 25: a worker whose checkpoint moved every pass kept 64 rate samples (about 2 KB of
/// state.json and 1 KB of memory per worker, written on every save). It now keeps anchors at
/// least [`RATE_SAMPLE_SPACING`] apart and the newest — at most [`MAX_RATE_SAMPLES`] (17)
/// whatever the pass interval — and its rate is still exact.
#[test]
fn rate_samples_stay_bounded_by_the_spacing_at_any_pass_interval_and_the_rate_stays_exact() {
    assert_eq!(MAX_RATE_SAMPLES, 17);
    let d = desired();
    for step_ms in [250u64, 1_000, 7_000] {
        let mut m = mem();
        m.workers
            .insert(WorkerId(0), Box::new(running(10, t0(), 0)));
        let mut most = 0;
        let mut elapsed_ms = 0;
        // An hour of passes: the checkpoint moves by one key per second of boot time.
        while elapsed_ms <= 3_600_000 {
            elapsed_ms += step_ms;
            let now = Now {
                wall: t0()
                    .wall
                    .checked_add(Duration::from_millis(elapsed_ms))
                    .expect("valid"),
                boot: t0().boot.plus(Duration::from_millis(elapsed_ms)),
            };
            let checkpoint = elapsed_ms / 1_000;
            let o = observed(
                [(WorkerId(0), obs(alive(), Some(checkpoint)))].into(),
                vec![],
            );
            m = plan(&d, &o, m, now).memory;
            let samples = &m.workers[&WorkerId(0)].rate_samples;
            most = most.max(samples.len());
            assert!(
                samples.len() <= MAX_RATE_SAMPLES,
                "{step_ms} ms passes: {} samples after {elapsed_ms} ms",
                samples.len()
            );
            if elapsed_ms >= RATE_WINDOW.as_millis() as u64 + 60_000 {
                let rate = rate::per_minute(samples, Phase::Progressing, now.boot)
                    .expect("a moving worker has a rate");
                // Whole seconds of checkpoint over a span measured in ms: within one key.
                assert!((rate - 60.0).abs() < 0.2, "{step_ms} ms passes: {rate}/min");
            }
        }
        assert!(
            most >= 14,
            "{step_ms} ms passes: the window is covered ({most})"
        );
        // Anchors (all but the newest) lie at least the spacing apart.
        let samples = &m.workers[&WorkerId(0)].rate_samples;
        let anchors: Vec<_> = samples.iter().take(samples.len() - 1).collect();
        for pair in anchors.windows(2) {
            assert!(
                pair[1].0.since(pair[0].0) >= RATE_SAMPLE_SPACING,
                "{pair:?}"
            );
        }
    }
}

/// Regression (`work.range.start: 0`): the first start of the shard at key 0 rendered
/// `{checkpoint}` as 0, "key 0 done". It renders -1; the -1 its worker writes back reads as
/// nothing done (not an unreadable file that holds the worker), and a remembered checkpoint
/// is never given up for it.
#[test]
fn a_shard_starting_at_key_0_starts_before_it_and_its_minus_one_cursor_is_nothing_done() {
    let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: t}
spec:
  workers: {target: 1, min: 1, max: 1}
  work: {range: {start: 0, end: 800}, shards: 8}
  template: {command: [w, "{range_start}", "{checkpoint}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log"}
"#;
    let manifest = Manifest {
        file: PathBuf::from("t.yaml"),
        dir: PathBuf::from("/tmp/t"),
        workerset: crate::manifest::parse(text).expect("valid manifest"),
    };
    let d = Desired::resolve(&manifest, None).expect("resolve");
    let start_argv = |p: &Plan| {
        p.actions
            .iter()
            .find_map(|a| match a {
                Action::Start(s) => Some(s.argv.clone()),
                _ => None,
            })
            .expect("a start")
    };
    let first = plan(&d, &observed(BTreeMap::new(), vec![]), mem(), t0());
    assert_eq!(start_argv(&first), ["w", "0", "-1"]);
    // Stopped, its file written back with -1: started again before key 0, not held.
    let nothing_done = WorkerObservation {
        progress: ProgressObservation::NothingDone,
        ..obs(None, None)
    };
    let mut m = mem();
    m.workers
        .insert(WorkerId(0), Box::new(WorkerMemory::default()));
    let o = observed([(WorkerId(0), nothing_done.clone())].into(), vec![]);
    let again = plan(&d, &o, m, at(10));
    assert_eq!(start_argv(&again), ["w", "0", "-1"]);
    assert_eq!(again.memory.workers[&WorkerId(0)].checkpoint, None);
    // A remembered checkpoint stays the resume cursor.
    let mut m = mem();
    m.workers.insert(
        WorkerId(0),
        Box::new(WorkerMemory {
            checkpoint: Some(5),
            ..WorkerMemory::default()
        }),
    );
    let resumed = plan(&d, &o, m, at(10));
    assert_eq!(start_argv(&resumed), ["w", "0", "5"]);
}

/// The other half of the pause race (see the observer's
/// `a_child_being_stopped_is_read_from_proc_not_taken_for_alive`): a worker being stopped,
/// gone from /proc, its stop task done and its exit status not yet reaped, is waited for:
/// no "resuming the stop", no second stop.
#[test]
fn a_stopped_child_whose_exit_status_is_on_its_way_is_waited_for_not_stopped_again() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.stopping = Some(Stopping {
        requested_at: at(100).boot,
        reason: "paused by an operator".into(),
        restart: false,
        unkillable_since: None,
        exit_reported: false,
    });
    m.workers.insert(WorkerId(0), Box::new(w));
    let mut o = observed(
        [(WorkerId(0), obs(Some(ProcessStatus::Exited), Some(40)))].into(),
        vec![],
    );
    o.children.unreaped.insert(10);
    let p = plan(&d, &o, m, at(101));
    assert!(stops(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stopping);
    assert!(
        p.workers[&WorkerId(0)]
            .reason
            .to_string()
            .contains("collecting its exit status")
    );
}

/// Regression (session 9): a checkpoint below a worker's shard (a progress file left from
/// another shard layout) was read as nothing done without a word, and `get` showed `-`; one
/// past the shard's end made it complete silently. Each is said once, when the checkpoint
/// comes to lie there (not again as it moves on outside); the key before the shard's first
/// (what a worker writes before it has done anything) is not.
#[test]
fn a_checkpoint_outside_the_shard_is_said_once_and_the_key_before_its_first_is_not() {
    let d = desired();
    // Shards of 100: worker 1 owns [101, 201), worker 2 [201, 301), worker 3 [301, 401).
    let seen = || {
        observed(
            [
                (WorkerId(1), obs(None, Some(20))),
                (WorkerId(2), obs(None, Some(200))),
                (WorkerId(3), obs(None, Some(999))),
            ]
            .into(),
            vec![],
        )
    };
    let p = plan(&d, &seen(), mem(), at(0));
    let outside: Vec<_> = p
        .events
        .iter()
        .filter(|e| e.contains("outside its shard"))
        .collect();
    assert_eq!(outside.len(), 2, "{:?}", p.events);
    assert!(
        outside[0].starts_with("worker 1: checkpoint 20 in ")
            && outside[0].contains("[101, 201) (read as nothing of it done)"),
        "{outside:?}"
    );
    assert!(
        outside[1].starts_with("worker 3: checkpoint 999 in ")
            && outside[1].contains("(read as the shard complete)"),
        "{outside:?}"
    );
    let again = plan(&d, &seen(), p.memory, at(1));
    assert!(
        !again.events.iter().any(|e| e.contains("outside its shard")),
        "{:?}",
        again.events
    );
    let moved = observed(
        [
            (WorkerId(1), obs(None, Some(21))),
            (WorkerId(3), obs(None, Some(1_000))),
        ]
        .into(),
        vec![],
    );
    let on = plan(&d, &moved, again.memory, at(2));
    assert!(
        !on.events.iter().any(|e| e.contains("outside its shard")),
        "moving on outside is no news: {:?}",
        on.events
    );
}
