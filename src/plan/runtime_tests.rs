//! The planner over a batch engine's executions (`runtime: slurm`): queued, completing and
//! unknown jobs, a job gone from the queue, and what does not apply to a cluster — with the
//! injected clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::manifest::{Desired, Manifest};
use crate::observe::{Children, ExitEvent, ProcessStatus, WorkerObservation};
use crate::runtime::Handle;

fn desired() -> Desired {
    let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: t}
spec:
  workers: {target: 4, min: 1, max: 8}
  work: {range: {start: 1, end: 801}, shards: 8, unit: book}
  template: {command: [w, "{id}", "{checkpoint}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "w{id}.log", upload_patterns: [Uploading]}
  runtime: {kind: slurm, partition: batch}
"#;
    let workerset = crate::manifest::parse(text).expect("valid manifest");
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
        wall: jiff::Timestamp::from_second(1_800_000_000)
            .expect("valid")
            .checked_add(d)
            .expect("valid"),
        boot: BootTime(1_000_000).plus(d),
    }
}

/// Memory where worker `w` runs Slurm job `job` (submitted at `since`) at `checkpoint`.
fn with_job(w: u32, job: u64, since: Now, checkpoint: u64) -> Memory {
    let mut m = Memory {
        boot_id: "b".into(),
        ..Memory::default()
    };
    m.workers.insert(
        WorkerId(w),
        Box::new(WorkerMemory {
            process: Some(RunningProcess {
                identity: Handle::job_identity(job),
                started_at: since.boot,
                resume_from: None,
                adopted: false,
                own_group: false,
                template: None,
            }),
            job: Some(crate::runtime::JobRecord {
                id: job,
                node: Some("n2".into()),
                ..Default::default()
            }),
            checkpoint: Some(checkpoint),
            ..WorkerMemory::default()
        }),
    );
    m
}

fn observed(
    w: u32,
    process: ProcessStatus,
    checkpoint: u64,
    exits: Vec<ExitEvent>,
    scan_incomplete: Option<&str>,
) -> Observed {
    let mut workers = BTreeMap::new();
    workers.insert(
        WorkerId(w),
        WorkerObservation {
            process: Some(process),
            group_alive: false,
            progress: ProgressObservation::Read {
                checkpoint,
                items: None,
                completed: None,
            },
            log: LogObservation::Missing,
        },
    );
    Observed {
        disk: crate::observe::disk::DiskObservation::Unavailable { why: "test".into() },
        boot_id: "b".into(),
        workers,
        children: Children {
            exits,
            ..Children::default()
        },
        unrecorded: Vec::new(),
        scan_incomplete: scan_incomplete.map(str::to_string),
        unsaved_state: None,
    }
}

fn acts_on(p: &Plan, w: u32) -> Vec<&'static str> {
    p.actions
        .iter()
        .filter(|a| a.worker() == WorkerId(w))
        .map(Action::verb)
        .collect()
}

#[test]
fn a_queued_job_is_never_judged_and_its_clocks_start_when_it_runs() {
    let d = desired();
    // Queued for two hours: far past discovery_grace (20m), yet nothing is judged.
    let m = with_job(0, 17, at(0), 50);
    let queued = ProcessStatus::Queued {
        why: "Resources".into(),
    };
    let p = plan(&d, &observed(0, queued, 50, vec![], None), m, at(7200));
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Queued);
    assert!(acts_on(&p, 0).is_empty(), "{:?}", p.actions);
    let reason = p.workers[&WorkerId(0)].reason.to_string();
    assert!(reason.contains("job 17 queued (Resources)"), "{reason}");
    // It runs: 10 minutes later it is still discovering (the clock began when it ran), where a
    // clock started at submission would have it stuck long ago.
    let running = ProcessStatus::Alive { state: 'R' };
    let p = plan(
        &d,
        &observed(0, running.clone(), 50, vec![], None),
        p.memory,
        at(7200 + 600),
    );
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Discovering);
    let reason = p.workers[&WorkerId(0)].reason.to_string();
    assert!(reason.starts_with("job 17 on n2"), "{reason}");
    // Past the grace measured from when it ran: stuck (confirmed on the next pass), and the
    // stop names the job.
    let p = plan(
        &d,
        &observed(0, running.clone(), 50, vec![], None),
        p.memory,
        at(7200 + 1201),
    );
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stuck);
    let p = plan(
        &d,
        &observed(0, running, 50, vec![], None),
        p.memory,
        at(7200 + 1210),
    );
    assert_eq!(acts_on(&p, 0), ["stop"]);
    let Some(Action::Stop(stop)) = p.actions.iter().find(|a| a.worker() == WorkerId(0)) else {
        panic!("a stop")
    };
    assert_eq!(Handle::of(&stop.identity), Handle::Job(17));
}

#[test]
fn a_completing_job_blocks_its_replacement_until_it_is_terminal() {
    let d = desired();
    let m = with_job(0, 17, at(0), 50);
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Completing, 50, vec![], None),
        m,
        at(60),
    );
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Stopping);
    assert!(acts_on(&p, 0).is_empty(), "{:?}", p.actions);
    assert!(p.memory.workers[&WorkerId(0)].process.is_some());
    let reason = p.workers[&WorkerId(0)].reason.to_string();
    assert!(reason.contains("job 17 on n2 is completing"), "{reason}");
    // Terminal with exit 3: restarted from its checkpoint.
    let exit = ExitEvent {
        worker: WorkerId(0),
        pid: 17,
        code: Some(3),
        signal: None,
    };
    // Terminal with exit 3 (its wait status from squeue): restarted from its checkpoint at
    // once (a first failure has no backoff), the reason saying how it ended.
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Exited, 50, vec![exit], None),
        p.memory,
        at(62),
    );
    let Some(Action::Start(start)) = p.actions.iter().find(|a| a.worker() == WorkerId(0)) else {
        panic!("a restart: {:?}", p.actions)
    };
    assert_eq!(start.resume_from, Some(50));
    assert!(
        start.reason.contains("worker 0 exited with status 3"),
        "{}",
        start.reason
    );
}

#[test]
fn a_job_gone_from_squeue_is_decided_by_the_progress_file() {
    let d = desired();
    // Its shard [1, 101) is done: complete, not restarted.
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Exited, 100, vec![], None),
        with_job(0, 17, at(0), 60),
        at(60),
    );
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Completed);
    assert!(acts_on(&p, 0).is_empty());
    // Mid-shard: it ended without a word; restarted from its checkpoint.
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Exited, 60, vec![], None),
        with_job(0, 17, at(0), 60),
        at(60),
    );
    let Some(Action::Start(start)) = p.actions.iter().find(|a| a.worker() == WorkerId(0)) else {
        panic!("a restart: {:?}", p.actions)
    };
    assert_eq!(start.resume_from, Some(60));
    assert!(
        start.reason.contains("job 17 left the queue"),
        "{}",
        start.reason
    );
}

#[test]
fn an_unanswering_scheduler_holds_every_decision_and_says_why() {
    let d = desired();
    let why =
        "the Slurm scheduler does not answer: squeue: error: Unable to contact slurm controller";
    // Silent for an hour: a running job would be stuck; unseen, it is held.
    let m = with_job(0, 17, at(0), 50);
    let unknown = ProcessStatus::Unknown { why: why.into() };
    let p = plan(
        &d,
        &observed(0, unknown.clone(), 50, vec![], Some(why)),
        m,
        at(3600),
    );
    assert_eq!(p.workers[&WorkerId(0)].phase, Phase::Unknown);
    assert!(
        p.actions.is_empty(),
        "nothing is started or stopped: {:?}",
        p.actions
    );
    assert!(
        p.events
            .iter()
            .any(|e| e.contains("Unable to contact slurm controller")
                && e.contains("starting nothing")),
        "{:?}",
        p.events
    );
    let p = plan(
        &d,
        &observed(0, unknown, 50, vec![], Some(why)),
        p.memory,
        at(3610),
    );
    assert!(p.actions.is_empty());
    assert!(
        p.memory.workers[&WorkerId(0)].process.is_some(),
        "the job stays recorded"
    );
    // Regression: the hold was said again on every pass (once a second while the controller
    // was down); it is said when it begins and when it ends.
    assert!(
        !p.events.iter().any(|e| e.contains("starting nothing")),
        "said once, not every pass: {:?}",
        p.events
    );
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Alive { state: 'R' }, 50, vec![], None),
        p.memory,
        at(3640),
    );
    assert!(
        p.events
            .iter()
            .any(|e| e.contains("after 40s") && e.contains("carrying on")),
        "{:?}",
        p.events
    );
    assert!(p.memory.scan_held.is_none());
}

/// Regression: a job `sbatch` refused three times (an unknown partition) Failed the worker
/// with "fix the template's command", which sent the operator to the wrong place.
#[test]
fn a_worker_whose_submissions_are_refused_is_failed_with_advice_about_spec_runtime() {
    let d = desired();
    let mut m = Memory {
        boot_id: "b".into(),
        ..Memory::default()
    };
    let start = StartAction {
        worker: WorkerId(0),
        argv: vec!["w".into(), "0".into()],
        resume_from: None,
        reason: "worker 0: starting".into(),
    };
    let mut last = None;
    for attempt in 0..MAX_START_FAILURES {
        last = record_start(
            &mut m,
            &d,
            &start,
            Err("sbatch: error: invalid partition specified: nosuch".into()),
            at(60 * u64::from(attempt)),
        );
    }
    let alert = last.expect("an alert");
    assert!(alert.contains("Failed (fix spec.runtime"), "{alert}");
    assert!(alert.contains("invalid partition"), "{alert}");
    assert!(m.workers[&WorkerId(0)].failed.is_some());
}

#[test]
fn disk_scaling_says_it_does_not_apply_to_a_slurm_fleet() {
    let d = desired();
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Alive { state: 'R' }, 50, vec![], None),
        with_job(0, 17, at(0), 50),
        at(10),
    );
    assert!(
        p.scaling.contains("does not apply to a Slurm fleet"),
        "{}",
        p.scaling
    );
}

#[test]
fn a_reboot_of_automons_host_keeps_the_jobs_that_run_elsewhere() {
    let d = desired();
    let mut m = with_job(0, 17, at(0), 50);
    m.boot_id = "an earlier boot".into();
    let p = plan(
        &d,
        &observed(0, ProcessStatus::Alive { state: 'R' }, 50, vec![], None),
        m,
        at(10),
    );
    assert!(p.memory.workers[&WorkerId(0)].process.is_some());
    assert!(acts_on(&p, 0).is_empty(), "{:?}", p.actions);
}

/// Regression: with `slurmctld` down, every `sbatch` failed and counted as a failed start;
/// after three, each worker was Failed ("fix the template's command") and the run stopped,
/// though nothing was wrong with any worker.
#[test]
fn a_submission_the_scheduler_did_not_answer_is_retried_and_never_fails_the_worker() {
    let d = desired();
    let mut m = Memory {
        boot_id: "b".into(),
        ..Memory::default()
    };
    let mut now = at(0);
    let no_process = || -> Observed {
        let mut o = observed(0, ProcessStatus::Exited, 0, vec![], None);
        let w = o.workers.get_mut(&WorkerId(0)).expect("worker 0");
        (w.process, w.progress) = (None, ProgressObservation::Missing);
        o
    };
    for attempt in 0..5 {
        let p = plan(&d, &no_process(), m, now);
        let Some(Action::Start(start)) = p.actions.iter().find(|a| a.worker() == WorkerId(0))
        else {
            panic!("attempt {attempt}: a start: {:?}", p.actions)
        };
        m = p.memory;
        let event = record_start_unavailable(
            &mut m,
            &d,
            start,
            "the Slurm scheduler does not answer: sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
            now,
        );
        assert!(
            event.contains("nothing counted against the worker"),
            "{event}"
        );
        let w = &m.workers[&WorkerId(0)];
        assert_eq!((w.failures, w.start_failures), (0, 0));
        assert!(w.failed.is_none());
        now = at(60 * (attempt + 1));
    }
}
