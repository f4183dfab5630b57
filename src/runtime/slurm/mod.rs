//! The Slurm runtime: each worker start is one batch job (`sbatch`, its argv exec'd by a tiny
//! script on stdin), every pass looks at all the WorkerSet's jobs with one `squeue --json`, and
//! a stop is `scancel --signal=<stop signal> --full`, the grace period, then
//! `scancel --signal=KILL --full`, until the job is terminal.
//!
//! What automon keeps doing itself: the planner, progress files, logs, the stuck rule, fixes
//! and memory. Jobs are found again after an automon restart by the job ids memory records and
//! by their names (`automon/<workerset>/<id>`, with this state directory in `--comment`), so a
//! job submitted just before a crash is adopted, not duplicated. When the scheduler does not
//! answer, nothing that needs it is decided: no start, no stop, no verdict on a job (see
//! [`Slurm::observe`]).

pub mod command;
pub mod squeue;
pub mod submit;

use std::path::Path;
use std::time::Duration;

use super::{Handle, JobRecord, Runtime, StartError, Started, StopOutcome, StopTask};
use crate::WorkerId;
use crate::clock::Now;
use crate::manifest::{Desired, RuntimeKind, RuntimeSpec};
use crate::observe::{ExitEvent, Observed, ProcessStatus, UnrecordedWorker};
use crate::plan::{Memory, StartAction, StopAction};

/// How long `squeue` and `scancel` may take before the scheduler counts as not answering.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `sbatch` may take.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a stop looks whether its job is terminal.
const STOP_POLL: Duration = Duration::from_millis(500);
/// How long a stop waits for a job to be terminal after `scancel --signal=KILL`.
const KILL_WAIT: Duration = Duration::from_secs(90);

/// How each job's `--comment` begins: `automon fleet=<key> state_dir=<dir>`, the key of the
/// files its worker writes ([`crate::state::FleetFiles::key`]) and automon's state directory.
pub const COMMENT_PREFIX: &str = "automon fleet=";

/// Where the state directory begins in a job's comment.
const STATE_DIR_MARK: &str = " state_dir=";

/// The job name of worker `id` of WorkerSet `name`.
pub fn job_name(name: &str, id: WorkerId) -> String {
    format!("automon/{name}/{id}")
}

/// Slurm batch jobs.
#[derive(Debug)]
pub struct Slurm {
    spec: RuntimeSpec,
    /// `--comment` of this automon's jobs: the fleet's key and the state directory.
    comment: String,
}

/// Whose a job is, by its `--comment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This automon's (same fleet, same state directory).
    Ours,
    /// Another automon's on the same files (its state directory).
    OtherAutomon(String),
    /// Another fleet's (a WorkerSet of the same name on other files): not ours to judge.
    Stranger,
}

/// Whose job `comment` is, for this automon's comment `ours`.
pub fn owner(comment: &str, ours: &str) -> Owner {
    if comment == ours {
        return Owner::Ours;
    }
    let fleet = |c: &str| {
        c.split_once(STATE_DIR_MARK)
            .map(|(f, d)| (f.to_string(), d.to_string()))
    };
    match (fleet(comment), fleet(ours)) {
        (Some((theirs, dir)), Some((mine, _))) if theirs == mine => Owner::OtherAutomon(dir),
        _ => Owner::Stranger,
    }
}

impl Slurm {
    /// The runtime for `desired` (whose `spec.runtime` is Slurm's), for the automon whose state
    /// directory is `state_dir`.
    pub fn new(desired: &Desired, state_dir: &Path) -> Self {
        let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.into());
        Self {
            spec: desired.runtime.clone(),
            comment: format!(
                "{COMMENT_PREFIX}{}{STATE_DIR_MARK}{}",
                crate::state::FleetFiles::of(desired).key(),
                state_dir.display()
            ),
        }
    }
}

impl Runtime for Slurm {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Slurm
    }

    fn start(
        &mut self,
        desired: &Desired,
        action: &StartAction,
        state_dir: &Path,
    ) -> Result<Started, StartError> {
        let log = desired.log_path(action.worker);
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StartError::Failed(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let script = submit::script(&desired.name, action).map_err(StartError::Failed)?;
        let args = submit::sbatch_args(desired, &self.spec, action.worker, &self.comment, &log);
        let mut cmd = std::process::Command::new("sbatch");
        cmd.args(&args)
            .current_dir(&desired.workdir)
            .env_clear()
            .envs(submit::job_env(desired, action.worker, state_dir));
        let out = command::run(&mut cmd, Some(&script), SUBMIT_TIMEOUT).map_err(|why| {
            if command::unavailable(&why) {
                StartError::Unavailable(format!("the Slurm scheduler does not answer: {why}"))
            } else {
                StartError::Failed(why)
            }
        })?;
        let id = submit::parse_job_id(&out).map_err(StartError::Failed)?;
        Ok(Started {
            identity: Handle::job_identity(id),
            started_at: crate::clock::BootTime::read(),
            reaped_here: false,
            job: Some(JobRecord {
                id,
                state: "PENDING".into(),
                ..JobRecord::default()
            }),
        })
    }

    /// One `squeue --json` for all the WorkerSet's jobs. When it fails, every recorded job is
    /// `Unknown` and `scan_incomplete` says why, so the planner starts nothing and judges no
    /// job until the scheduler answers again.
    fn observe(
        &mut self,
        desired: &Desired,
        memory: &mut Memory,
        observed: &mut Observed,
        now: Now,
    ) {
        let names: Vec<String> = desired
            .worker_ids()
            .into_iter()
            .map(|id| job_name(&desired.name, id))
            .collect();
        let mut cmd = std::process::Command::new("squeue");
        cmd.args(["--json", "--states=all"])
            .arg(format!("--name={}", names.join(",")));
        let jobs = command::run(&mut cmd, None, QUERY_TIMEOUT)
            .and_then(|text| squeue::parse(&text).map_err(|e| format!("squeue --json: {e}")));
        match jobs {
            Ok(jobs) => apply(&desired.name, &self.comment, &jobs, memory, observed, now),
            Err(why) => scheduler_unreachable(&why, memory, observed),
        }
    }

    fn scans_processes(&self) -> bool {
        false
    }

    fn stop(&self, action: &StopAction, signal: nix::sys::signal::Signal) -> StopTask {
        let handle = Handle::of(&action.identity);
        let grace = action.grace;
        Box::pin(async move {
            let Handle::Job(id) = handle else {
                return StopOutcome::NotOurs;
            };
            stop_job(id, signal, grace).await
        })
    }
}

/// Writes `squeue`'s `jobs` into one pass's observation: the execution of every job memory
/// records (a job no longer listed is `Exited` with its status unknown: the progress file
/// decides), the exit status of each that ended, and this WorkerSet's live jobs memory does
/// not record (found by name; another state directory's on the same files are reported as
/// another automon's, and another fleet's of the same name are left alone).
/// Refreshes each recorded job's [`JobRecord`], and moves a running job's start to when it
/// began to run (its stuck and discovery clocks start then, not at submission).
pub fn apply(
    workerset: &str,
    comment: &str,
    jobs: &[squeue::Job],
    memory: &mut Memory,
    observed: &mut Observed,
    now: Now,
) {
    let prefix = format!("automon/{workerset}/");
    let mut recorded = std::collections::BTreeSet::new();
    for (id, w) in &mut memory.workers {
        let Some(p) = w.process.as_mut() else {
            w.job = None;
            continue;
        };
        let Handle::Job(job_id) = Handle::of(&p.identity) else {
            continue;
        };
        recorded.insert(job_id);
        let job = jobs.iter().find(|j| j.id == job_id);
        let record = w.job.get_or_insert_with(|| JobRecord {
            id: job_id,
            ..JobRecord::default()
        });
        record.id = job_id;
        let status = match job {
            Some(j) => {
                if let Some((code, signal)) = j.exit() {
                    observed.children.exits.push(ExitEvent {
                        worker: *id,
                        pid: p.identity.pid,
                        code,
                        signal,
                    });
                }
                if j.phase() == squeue::Phase::Running
                    && let Some(at) = j
                        .start_time
                        .and_then(|t| jiff::Timestamp::from_second(t).ok())
                        .map(|t| now.boot_time_of(t))
                    && at.since(p.started_at) > Duration::from_secs(1)
                {
                    p.started_at = at;
                }
                record.state.clone_from(&j.state);
                if let Some(node) = j.node() {
                    record.node = Some(node.to_string());
                }
                if !j.cluster.is_empty() {
                    record.cluster.clone_from(&j.cluster);
                }
                j.status()
            }
            None => {
                record.state = "gone from squeue".into();
                ProcessStatus::Exited
            }
        };
        if let Some(o) = observed.workers.get_mut(id) {
            o.process = Some(status);
            o.group_alive = false;
        }
    }
    let valid = |w: WorkerId| observed.workers.contains_key(&w);
    let mut found = Vec::new();
    for j in jobs {
        if recorded.contains(&j.id) || j.phase() == squeue::Phase::Ended {
            continue;
        }
        let Some(worker) = j
            .name
            .strip_prefix(&prefix)
            .and_then(|id| id.parse().ok())
            .map(WorkerId)
            .filter(|w| valid(*w))
        else {
            continue;
        };
        let other_owner = match owner(&j.comment, comment) {
            Owner::Ours => None,
            Owner::OtherAutomon(dir) => Some(dir),
            Owner::Stranger => continue,
        };
        let started_at = j
            .start_time
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map_or(now.boot, |t| now.boot_time_of(t));
        found.push(UnrecordedWorker {
            worker,
            identity: Handle::job_identity(j.id),
            started_at: Some(started_at),
            own_group: false,
            by_command_line: false,
            differences: Vec::new(),
            other_owner,
        });
    }
    found.sort_by_key(|u| (u.worker, u.identity.pid));
    observed.unrecorded.extend(found);
}

/// The scheduler did not answer: every recorded job is `Unknown`, and nothing is started.
fn scheduler_unreachable(why: &str, memory: &Memory, observed: &mut Observed) {
    let why = format!("the Slurm scheduler does not answer: {why}");
    for (id, w) in &memory.workers {
        let is_job = w
            .process
            .as_ref()
            .is_some_and(|p| Handle::of(&p.identity).is_job());
        if is_job && let Some(o) = observed.workers.get_mut(id) {
            o.process = Some(ProcessStatus::Unknown { why: why.clone() });
            o.group_alive = false;
        }
    }
    observed.scan_incomplete = Some(why);
}

/// One job's state now (`None`: not listed, i.e. long gone).
///
/// # Errors
/// Why `squeue` could not say.
async fn job_state(id: u64) -> Result<Option<squeue::Job>, String> {
    let text = command::run_async(
        "squeue",
        &[
            "--json".into(),
            "--states=all".into(),
            format!("--jobs={id}"),
        ],
        QUERY_TIMEOUT,
    )
    .await;
    match text {
        Ok(text) => {
            let jobs = squeue::parse(&text)?;
            Ok(jobs.into_iter().find(|j| j.id == id))
        }
        // squeue refuses a job id it no longer knows.
        Err(e) if e.contains("Invalid job id") => Ok(None),
        Err(e) => Err(e),
    }
}

/// True when nothing of the job runs any more (terminal, or no longer listed).
fn terminal(job: Option<&squeue::Job>) -> bool {
    job.is_none_or(|j| j.phase() == squeue::Phase::Ended)
}

/// Waits up to `limit` for job `id` to be terminal; `Err` when the scheduler stops answering.
async fn wait_terminal(id: u64, limit: Duration) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if terminal(job_state(id).await?.as_ref()) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// Stops job `id`: a queued job is cancelled (nothing of it runs); a running one gets
/// `signal` on every step (`--full`: the batch step is the worker, which the job script
/// exec'd), `grace` to end, then SIGKILL; the outcome comes once the job is terminal
/// (COMPLETING still means processes live). A scheduler that does not answer leaves the stop
/// `Unverified`: the next pass resumes it.
async fn stop_job(id: u64, signal: nix::sys::signal::Signal, grace: Duration) -> StopOutcome {
    let scancel = |args: Vec<String>| async move {
        command::run_async("scancel", &args, QUERY_TIMEOUT).await
    };
    let job = match job_state(id).await {
        Ok(job) => job,
        Err(_) => return StopOutcome::Unverified,
    };
    if terminal(job.as_ref()) {
        return StopOutcome::AlreadyGone;
    }
    let queued = job
        .as_ref()
        .is_some_and(|j| j.phase() == squeue::Phase::Queued);
    let name = signal.as_str().trim_start_matches("SIG");
    let first = if queued {
        vec![id.to_string()]
    } else {
        vec![format!("--signal={name}"), "--full".into(), id.to_string()]
    };
    if scancel(first).await.is_err() {
        // A job that ended meanwhile refuses the signal; anything else is the scheduler.
        return match job_state(id).await {
            Ok(j) if terminal(j.as_ref()) => StopOutcome::Graceful,
            _ => StopOutcome::Unverified,
        };
    }
    match wait_terminal(id, grace).await {
        Ok(true) => return StopOutcome::Graceful,
        Ok(false) => {}
        Err(_) => return StopOutcome::Unverified,
    }
    let kill = vec!["--signal=KILL".into(), "--full".into(), id.to_string()];
    if scancel(kill).await.is_err() {
        return match job_state(id).await {
            Ok(j) if terminal(j.as_ref()) => StopOutcome::Graceful,
            _ => StopOutcome::Unverified,
        };
    }
    match wait_terminal(id, KILL_WAIT).await {
        Ok(true) => StopOutcome::Killed,
        Ok(false) => StopOutcome::Survived,
        Err(_) => StopOutcome::Unverified,
    }
}

/// How the stop of `worker`'s job `id` ended, in words for the events.
pub fn stop_message(worker: WorkerId, id: i32, outcome: &StopOutcome) -> String {
    let how = match outcome {
        StopOutcome::Graceful => "ended after the stop signal",
        StopOutcome::Killed => {
            "did not end within the grace period; killed with SIGKILL (scancel --signal=KILL --full)"
        }
        StopOutcome::AlreadyGone => "had already ended",
        StopOutcome::NotOurs => "is not a Slurm job; nothing signalled",
        StopOutcome::Survived => {
            "is still not terminal after SIGKILL; no replacement until Slurm says it is"
        }
        StopOutcome::Unverified => {
            "could not be stopped: the Slurm scheduler does not answer; nothing decided, trying again when it does"
        }
    };
    format!("worker {worker}: job {id} {how}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::BootTime;
    use crate::observe::{LogObservation, ProgressObservation, WorkerObservation};
    use crate::plan::{RunningProcess, WorkerMemory};

    const OURS: &str = "automon fleet=00ff state_dir=/srv/.automon";

    fn job(id: u64, worker: u32, state: &str, exit: Option<i64>, comment: &str) -> squeue::Job {
        squeue::Job {
            id,
            name: format!("automon/ws/{worker}"),
            state: state.into(),
            reason: if state == "PENDING" {
                "Resources".into()
            } else {
                "None".into()
            },
            exit_status: exit,
            nodes: if state == "PENDING" {
                String::new()
            } else {
                "n1".into()
            },
            comment: comment.into(),
            cluster: "dev".into(),
            start_time: (state != "PENDING").then_some(1_800_000_000),
        }
    }

    fn recorded(job_id: u64) -> WorkerMemory {
        WorkerMemory {
            process: Some(RunningProcess {
                identity: Handle::job_identity(job_id),
                started_at: BootTime(1_000),
                resume_from: None,
                adopted: false,
                own_group: false,
                template: None,
            }),
            ..WorkerMemory::default()
        }
    }

    fn observed(workers: u32) -> Observed {
        Observed {
            disk: crate::observe::disk::DiskObservation::Unavailable { why: "test".into() },
            boot_id: "b".into(),
            workers: (0..workers)
                .map(|i| {
                    (
                        WorkerId(i),
                        WorkerObservation {
                            process: None,
                            group_alive: false,
                            progress: ProgressObservation::Missing,
                            log: LogObservation::Missing,
                        },
                    )
                })
                .collect(),
            children: crate::observe::Children::default(),
            unrecorded: Vec::new(),
            scan_incomplete: None,
            unsaved_state: None,
        }
    }

    fn now() -> Now {
        Now {
            wall: jiff::Timestamp::from_second(1_800_000_100).expect("valid"),
            boot: BootTime(500_000),
        }
    }

    #[test]
    fn squeue_becomes_each_recorded_workers_execution_and_finds_unrecorded_jobs() {
        let mut memory = Memory::default();
        memory.workers.insert(WorkerId(0), Box::new(recorded(10)));
        memory.workers.insert(WorkerId(1), Box::new(recorded(11)));
        memory.workers.insert(WorkerId(2), Box::new(recorded(12)));
        let other = "automon fleet=00ff state_dir=/elsewhere/.automon";
        let jobs = [
            job(10, 0, "RUNNING", Some(0), OURS),
            job(12, 2, "FAILED", Some(768), OURS),
            job(13, 3, "PENDING", Some(0), OURS),
            job(14, 4, "RUNNING", Some(0), other),
            job(15, 5, "RUNNING", Some(0), "automon fleet=abcd state_dir=/x"),
            job(16, 6, "COMPLETED", Some(0), OURS),
        ];
        let mut obs = observed(8);
        apply("ws", OURS, &jobs, &mut memory, &mut obs, now());
        let status = |w: u32| obs.workers[&WorkerId(w)].process.clone();
        assert_eq!(status(0), Some(ProcessStatus::Alive { state: 'R' }));
        // Gone from squeue: exited, status unknown (no exit event).
        assert_eq!(status(1), Some(ProcessStatus::Exited));
        assert_eq!(status(2), Some(ProcessStatus::Exited));
        assert_eq!(
            obs.children.exits,
            [ExitEvent {
                worker: WorkerId(2),
                pid: 12,
                code: Some(3),
                signal: None
            }]
        );
        // The running job's clocks start when it began to run (100 s before now), not at
        // submission; its node and state are recorded for people.
        let w0 = &memory.workers[&WorkerId(0)];
        assert_eq!(
            w0.process.as_ref().map(|p| p.started_at),
            Some(BootTime(400_000))
        );
        let record = w0.job.clone().expect("job record");
        assert_eq!(
            (record.id, record.node.as_deref(), record.state.as_str()),
            (10, Some("n1"), "RUNNING")
        );
        assert_eq!(record.cluster, "dev");
        // Unrecorded live jobs of this WorkerSet: ours to adopt, another automon's on the same
        // files reported as such; another fleet's and ended ones are not listed.
        let found: Vec<(u32, i32, Option<String>)> = obs
            .unrecorded
            .iter()
            .map(|u| (u.worker.0, u.identity.pid, u.other_owner.clone()))
            .collect();
        assert_eq!(
            found,
            [
                (3, 13, None),
                (4, 14, Some("/elsewhere/.automon".to_string()))
            ]
        );
    }

    #[test]
    fn an_unanswering_scheduler_makes_every_job_unknown_and_holds_starts() {
        let mut memory = Memory::default();
        memory.workers.insert(WorkerId(0), Box::new(recorded(10)));
        let mut obs = observed(2);
        scheduler_unreachable(
            "squeue: error: Unable to contact slurm controller",
            &memory,
            &mut obs,
        );
        assert!(matches!(
            &obs.workers[&WorkerId(0)].process,
            Some(ProcessStatus::Unknown { why }) if why.contains("does not answer")
        ));
        assert_eq!(obs.workers[&WorkerId(1)].process, None);
        assert!(
            obs.scan_incomplete
                .as_deref()
                .is_some_and(|w| w.contains("Unable to contact"))
        );
    }

    #[test]
    fn job_ownership_is_read_from_the_comment() {
        assert_eq!(owner(OURS, OURS), Owner::Ours);
        assert_eq!(
            owner("automon fleet=00ff state_dir=/b c/.automon", OURS),
            Owner::OtherAutomon("/b c/.automon".into())
        );
        assert_eq!(
            owner("automon fleet=0a0a state_dir=/srv/.automon", OURS),
            Owner::Stranger
        );
        assert_eq!(owner("", OURS), Owner::Stranger);
    }
}
