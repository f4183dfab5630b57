//! `squeue --json` output as data: each job's id, name, state, exit status and node, and what a
//! state means for a worker ([`Job::status`]). Pure: the text comes in, data goes out.
//!
//! The shape is Slurm 22.05's (`job_state` a string, `exit_code` the raw wait status: 768 is
//! exit 3, 15 is SIGTERM; `start_time` seconds since the epoch); later releases' shapes
//! (`job_state` a list, `exit_code` and times as objects) are read as well.

use serde_json::Value;

use crate::observe::ProcessStatus;

/// One job as `squeue` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job id.
    pub id: u64,
    /// `--job-name`.
    pub name: String,
    /// `PENDING`, `RUNNING`, `COMPLETING`, `COMPLETED`, `FAILED`, `CANCELLED`, …
    pub state: String,
    /// Why it is in that state (`Resources`, `Priority`, `None`, …).
    pub reason: String,
    /// The raw wait status, once it ended.
    pub exit_status: Option<i64>,
    /// The node(s) it runs on; empty while pending.
    pub nodes: String,
    /// `--comment`.
    pub comment: String,
    /// The cluster's name.
    pub cluster: String,
    /// When it started running, seconds since the epoch (0 or absent while pending).
    pub start_time: Option<i64>,
}

/// What a job's state means for the worker it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting in the queue.
    Queued,
    /// Its processes run.
    Running,
    /// Ended, its processes still being ended: blocks a replacement.
    Completing,
    /// Ended: nothing of it runs.
    Ended,
    /// A state this build does not know.
    Other,
}

/// Parses `squeue --json` output.
///
/// # Errors
/// Why the text is not `squeue --json` output, or the errors it lists: with the controller
/// unreachable, 22.05's `squeue --json` exits 0 with an empty `jobs` list and the failure only
/// in `errors` — an empty list that must never be read as "every job is gone".
pub fn parse(text: &str) -> Result<Vec<Job>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(errors) = v.get("errors").and_then(Value::as_array)
        && !errors.is_empty()
    {
        let words: Vec<String> = errors
            .iter()
            .map(|e| {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
                let mut w = field("description").to_string();
                for extra in [field("error"), field("source")] {
                    if !extra.is_empty() {
                        w = if w.is_empty() {
                            extra.to_string()
                        } else {
                            format!("{w} ({extra})")
                        };
                    }
                }
                w
            })
            .collect();
        return Err(format!("squeue reports: {}", words.join("; ")));
    }
    let jobs = v
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("no \"jobs\" list")?;
    Ok(jobs.iter().filter_map(job).collect())
}

fn job(v: &Value) -> Option<Job> {
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let state = match v.get("job_state") {
        Some(Value::String(s)) => s.clone(),
        // Later releases: a list of flags, the base state first.
        Some(Value::Array(a)) => a.first().and_then(Value::as_str)?.to_string(),
        _ => return None,
    };
    Some(Job {
        id: v.get("job_id").and_then(Value::as_u64)?,
        name: text("name"),
        state,
        reason: text("state_reason"),
        exit_status: v.get("exit_code").and_then(exit_status),
        nodes: text("nodes"),
        comment: text("comment"),
        cluster: text("cluster"),
        start_time: v.get("start_time").and_then(number).filter(|t| *t > 0),
    })
}

/// A number, or a later release's `{set, infinite, number}` object.
fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::Object(o) if o.get("set").and_then(Value::as_bool) != Some(false) => {
            o.get("number").and_then(Value::as_i64)
        }
        _ => None,
    }
}

/// The raw wait status: 22.05's number, or a later release's
/// `{return_code: {number}, signal: {id: {number}}}`.
fn exit_status(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::Object(o) => {
            let signal = o
                .get("signal")
                .and_then(|s| s.get("id"))
                .and_then(number)
                .filter(|s| *s > 0);
            match signal {
                Some(s) => Some(s),
                None => o.get("return_code").and_then(number).map(|c| c << 8),
            }
        }
        _ => None,
    }
}

impl Job {
    /// What its state means for the worker.
    pub fn phase(&self) -> Phase {
        match self.state.as_str() {
            "PENDING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" | "RESV_DEL_HOLD" => {
                Phase::Queued
            }
            "RUNNING" | "CONFIGURING" | "RESIZING" | "SIGNALING" | "STAGE_OUT" | "SUSPENDED"
            | "STOPPED" => Phase::Running,
            "COMPLETING" => Phase::Completing,
            "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED"
            | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" | "REVOKED" | "SPECIAL_EXIT" => {
                Phase::Ended
            }
            _ => Phase::Other,
        }
    }

    /// How it ended, as an exit code or a signal number, from its raw wait status: `None` when
    /// unknown — still running, or cancelled before it ran (Slurm then reports 0, which is no
    /// exit of the worker).
    pub fn exit(&self) -> Option<(Option<i32>, Option<i32>)> {
        if self.phase() != Phase::Ended {
            return None;
        }
        let status = i32::try_from(self.exit_status?).ok()?;
        if self.state == "CANCELLED" && status == 0 {
            return None;
        }
        let signal = status & 0x7f;
        if signal == 0 {
            Some((Some((status >> 8) & 0xff), None))
        } else {
            Some((None, Some(signal)))
        }
    }

    /// The worker's execution as the planner sees it (an ended job is `Exited`; its code or
    /// signal travels as an exit event, see [`Job::exit`]).
    pub fn status(&self) -> ProcessStatus {
        match self.phase() {
            Phase::Queued => ProcessStatus::Queued {
                why: self.reason.clone(),
            },
            Phase::Running if self.state == "SUSPENDED" || self.state == "STOPPED" => {
                ProcessStatus::Alive { state: 'T' }
            }
            Phase::Running => ProcessStatus::Alive { state: 'R' },
            Phase::Completing => ProcessStatus::Completing,
            Phase::Ended => ProcessStatus::Exited,
            Phase::Other => ProcessStatus::Unknown {
                why: format!(
                    "job {} is in state {} (unknown to automon)",
                    self.id, self.state
                ),
            },
        }
    }

    /// The node it runs on, when it runs (one task: one node).
    pub fn node(&self) -> Option<&str> {
        Some(self.nodes.as_str()).filter(|n| !n.is_empty() && *n != "(null)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<Job> {
        let path = format!("{}/tests/fixtures/slurm/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("fixture");
        parse(&text).expect("parses")
    }

    fn one(name: &str) -> Job {
        let jobs = fixture(name);
        assert_eq!(jobs.len(), 1, "{name}: one job");
        jobs.into_iter().next().expect("one job")
    }

    #[test]
    fn a_pending_job_is_queued_with_the_schedulers_reason() {
        let job = one("squeue-pending.json");
        assert_eq!(job.phase(), Phase::Queued);
        assert!(
            matches!(&job.status(), ProcessStatus::Queued { why } if !why.is_empty()),
            "{job:?}"
        );
        assert_eq!(job.exit(), None);
        assert_eq!(job.node(), None);
    }

    #[test]
    fn a_running_job_is_alive_on_its_node() {
        let job = one("squeue-running.json");
        assert_eq!(job.status(), ProcessStatus::Alive { state: 'R' });
        assert!(job.node().is_some_and(|n| n.starts_with('n')), "{job:?}");
        assert!(job.start_time.is_some());
        assert!(job.name.starts_with("automon/"), "{job:?}");
        assert_eq!(job.exit(), None);
    }

    #[test]
    fn a_completing_job_blocks_a_replacement() {
        let job = one("squeue-completing.json");
        assert_eq!(job.status(), ProcessStatus::Completing);
    }

    #[test]
    fn a_job_that_exited_3_failed_with_exit_code_3() {
        let job = one("squeue-failed-exit3.json");
        assert_eq!(job.state, "FAILED");
        assert_eq!(job.status(), ProcessStatus::Exited);
        assert_eq!(job.exit(), Some((Some(3), None)));
    }

    #[test]
    fn a_job_ended_by_a_signal_reports_the_signal() {
        let job = one("squeue-signalled.json");
        assert_eq!(job.status(), ProcessStatus::Exited);
        assert_eq!(job.exit(), Some((None, Some(15))), "{job:?}");
    }

    #[test]
    fn a_job_cancelled_before_it_ran_has_no_exit_status() {
        let job = one("squeue-cancelled-pending.json");
        assert_eq!(job.state, "CANCELLED");
        assert_eq!(job.exit(), None);
    }

    #[test]
    fn a_job_cancelled_and_killed_after_killwait_reports_sigkill() {
        let job = one("squeue-cancelled-killed.json");
        assert_eq!(job.state, "CANCELLED");
        assert_eq!(job.status(), ProcessStatus::Exited);
        assert_eq!(job.exit(), Some((None, Some(9))), "{job:?}");
    }

    /// Slurm 22.05's `squeue --json` ignores `--name` and `--jobs`: it lists every job the
    /// controller still knows, and a job past `MinJobAge` is simply absent.
    #[test]
    fn a_job_gone_from_squeue_is_not_listed() {
        let jobs = fixture("squeue-all-after-stops.json");
        let states: Vec<(u64, &str)> = jobs.iter().map(|j| (j.id, j.state.as_str())).collect();
        assert_eq!(
            states,
            [
                (1, "CANCELLED"),
                (2, "RUNNING"),
                (3, "FAILED"),
                (4, "FAILED"),
                (5, "CANCELLED")
            ]
        );
        assert!(!jobs.iter().any(|j| j.id == 99));
    }

    /// Regression: with `slurmctld` stopped, `squeue --json` exits 0 listing no jobs and the
    /// failure in `errors`; read as a list, every running job looked gone and was restarted
    /// (a duplicate of each once the controller came back).
    #[test]
    fn an_unreachable_controllers_empty_listing_is_an_error_not_every_job_gone() {
        let path = format!(
            "{}/tests/fixtures/slurm/squeue-controller-down.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("fixture");
        let err = parse(&text).expect_err("an error, not an empty list");
        assert_eq!(
            err,
            "squeue reports: Failed while looking for jobs (Unspecified error) (slurm_load_jobs)"
        );
    }

    #[test]
    fn later_releases_shapes_are_read() {
        let text = r#"{"jobs":[{"job_id":9,"name":"automon/w/0","job_state":["FAILED"],
            "exit_code":{"status":["EXIT"],"return_code":{"set":true,"infinite":false,"number":3},
            "signal":{"id":{"set":false,"infinite":false,"number":0},"name":""}},
            "start_time":{"set":true,"infinite":false,"number":1800000000},"nodes":"n2"}]}"#;
        let job = parse(text).expect("parses").remove(0);
        assert_eq!(job.exit(), Some((Some(3), None)));
        assert_eq!(job.start_time, Some(1_800_000_000));
        assert!(parse("squeue: error: Unable to contact slurm controller").is_err());
    }
}
