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
        WorkerMemory {
            completed_at: Some(t0().wall),
            checkpoint: Some(100),
            ..Default::default()
        },
    );
    for id in 1..4 {
        m.workers
            .insert(WorkerId(id), running(10 + id as i32, t0(), 150));
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
    m.workers.insert(WorkerId(0), running(10, t0(), 50));
    m.workers.insert(WorkerId(1), running(11, t0(), 150));
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
    m.workers.insert(WorkerId(0), running(10, t0(), 40));
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

#[test]
fn stuck_is_confirmed_on_a_second_pass_before_the_stop() {
    let d = desired(); // stuck_after 5m, discovery_grace 20m
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.left_discovery = true;
    w.last_progress_at = Some(at(60).boot);
    m.workers.insert(WorkerId(0), w);
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

#[test]
fn discovery_grace_applies_before_the_first_upload_counted_from_process_start() {
    let d = desired();
    let mut m = mem();
    m.workers.insert(WorkerId(0), running(10, t0(), 0));
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

#[test]
fn a_repeated_log_line_is_not_progress() {
    let d = desired();
    let mut m = mem();
    let mut w = running(10, t0(), 40);
    w.left_discovery = true;
    w.last_progress_at = Some(t0().boot);
    m.workers.insert(WorkerId(0), w);
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

#[test]
fn unreadable_progress_keeps_the_last_good_checkpoint() {
    let d = desired();
    let mut m = mem();
    m.workers.insert(WorkerId(0), running(10, t0(), 77));
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
    assert!(
        p.events
            .iter()
            .any(|e| e.contains("keeping the last good checkpoint 77")),
        "{:?}",
        p.events
    );
}

#[test]
fn all_shards_complete_completes_the_workerset() {
    let d = desired();
    let mut m = mem();
    for id in 0..8 {
        m.workers.insert(
            WorkerId(id),
            WorkerMemory {
                completed_at: Some(t0().wall),
                checkpoint: Some(100 * u64::from(id) + 100),
                ..Default::default()
            },
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
    m.workers.insert(WorkerId(2), running(12, t0(), 230));
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
    m.workers.insert(WorkerId(0), running(10, t0(), 40));
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
    m.workers.insert(WorkerId(0), running(10, t0(), 60));
    let mut o = obs(Some(ProcessStatus::Exited), Some(60));
    o.log = LogObservation::Read {
        cursor: LogCursor {
            dev: 1,
            inode: 1,
            offset: 10,
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
            .insert(WorkerId(id), running(10 + id as i32, t0(), 5));
    }
    let mut all = m.clone();
    record_code_fix(&mut all, WorkerId(1), applied(), CodeFixRestart::All, at(1));
    assert_eq!(
        all.restart_for_code,
        [WorkerId(0), WorkerId(1), WorkerId(2)]
    );
    record_code_fix(
        &mut m,
        WorkerId(1),
        applied(),
        CodeFixRestart::StuckOnly,
        at(1),
    );
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
    m.workers.insert(WorkerId(0), w);
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
        pid: 4242,
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
            running(100 + id as i32, t0(), 100 * u64::from(id) + 50),
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
    m.workers.insert(WorkerId(0), running(10, t0(), 40));
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
