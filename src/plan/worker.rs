//! One worker's step: progress, liveness, stuck detection, exits, and its idle phase.

use std::time::Duration;

use super::*;
use crate::text::Count;

/// Whether `fp` is among the recent fingerprints: a compare of every entry without an early
/// exit, which the compiler turns into a few vector compares (VecDeque::contains stops at the
/// first match, one branch per entry; this runs for every new log line of every worker).
fn seen_recently(recent: &std::collections::VecDeque<u64>, fp: u64) -> bool {
    let (front, back) = recent.as_slices();
    let any = |xs: &[u64]| xs.iter().fold(false, |found, &x| found | (x == fp));
    any(front) || any(back)
}

/// `line` without a leading time of day (and the date, brackets and separators around it), so
/// that a line repeated with only its timestamp changed is the same line whatever the log's
/// timestamp format (`03:05:08 processed item 130`, `[2026-11-29T08:14:44Z] …`, Python
/// logging's `2026-11-29 08:14:44,123 - INFO - …`). A prefix counts as a time only when it holds
/// `digit:digit`; `130 books done` keeps its number.
pub(crate) fn without_leading_time(line: &str) -> &str {
    let b = line.as_bytes();
    let start = usize::from(b.first() == Some(&b'['));
    let mut i = start;
    let mut colon = false;
    let digit_at = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
    while let Some(&c) = b.get(i) {
        let time_char = c.is_ascii_digit()
            || (matches!(c, b'-' | b'/' | b'.' | b',' | b'+') && i > start)
            || (matches!(c, b'T' | b'Z') && i > start && digit_at(i - 1));
        if time_char {
            i += 1;
        } else if c == b':' && i > start && digit_at(i - 1) && digit_at(i + 1) {
            colon = true;
            i += 1;
        } else if c == b' ' && i > start && digit_at(i + 1) {
            i += 1; // between the date and the time
        } else {
            break;
        }
    }
    if !colon {
        return line;
    }
    // Only ASCII bytes were skipped: `i` is a char boundary.
    line[i..].trim_start_matches([']', ' ', '-', '|', ':'])
}

/// ` at book 1,234` for a worker's checkpoint, nothing without one.
struct AtCheckpoint<'a> {
    unit: &'a str,
    checkpoint: Option<u64>,
}

impl std::fmt::Display for AtCheckpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.checkpoint {
            Some(c) => write!(f, " at {} {}", self.unit, Count(c)),
            None => Ok(()),
        }
    }
}

impl Planner<'_> {
    /// One worker's pass. `w` is its memory, updated in place (the caller holds the workers'
    /// map outside `self.memory` meanwhile: moving a worker's memory out and back costs a
    /// large copy per worker per pass).
    pub(super) fn step_worker(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        obs: &WorkerObservation,
        exit: Option<&crate::observe::ExitEvent>,
        exit_pending: bool,
    ) {
        let shard = self.desired.shard(id);
        let signal_at = self.read_progress(id, w, obs);
        self.verify_fix(id, w);
        // A queued, completing or unseen job: neither running nor gone.
        if exit.is_none() && self.step_unsettled(id, w, obs) {
            return;
        }
        let alive = w.process.is_some()
            && exit.is_none()
            // Adopted this pass: seen alive by the scan (the observation is of the process
            // memory recorded before, if any).
            && (self.adopted_now.contains(&id)
                || matches!(obs.process, Some(ProcessStatus::Alive { .. })));
        if alive {
            self.step_alive(id, w, obs, signal_at);
            if self.conflicts.contains(&id) {
                self.set(
                    id,
                    Phase::Conflict,
                    "another live process also runs this worker; see the events",
                );
            }
        } else if self.conflicts.contains(&id) && w.process.is_none() {
            self.set(
                id,
                Phase::Conflict,
                "other live processes run this worker (see the events); none adopted, none started",
            );
            return;
        } else if exit_pending {
            // Our own child is gone from /proc but not reaped yet: its status is on its way.
            self.set(id, Phase::Stopping, "exited; collecting its exit status");
            self.wake_in(Duration::from_millis(100));
        } else if let Some(process) = w.process.take() {
            if obs.group_alive {
                // The leader is gone but the group lives on: finish it before any replacement.
                w.process = Some(process.clone());
                if w.stopping.is_none() {
                    // Its exit is what it was (a crash with its backoff and failure count, or a
                    // completion), exactly as for a worker without leftovers; stopping the rest
                    // of its group is a side step that holds any replacement until it is gone.
                    self.report_exit_with_leftovers(id, w, shard, &process, obs, exit);
                    let reason = format!(
                        "worker {id}: its process group {} still has members; stopping them",
                        process.identity.pid
                    );
                    // The stop carries no intent of its own: a restarted automon would see the
                    // same leader gone and stop the same group (or, had the start not reached
                    // the disk, find fewer of our processes left untracked). So it does not
                    // wait for the save: a hung state file system must not hold the crashed
                    // worker's replacement (issue 26.13).
                    self.request_stop_as(id, w, &process, reason, false, false);
                    if let Some(s) = w.stopping.as_mut() {
                        s.exit_reported = true;
                    }
                } else {
                    self.resume_stop(id, w, &process);
                }
                let why = match w.stopping.as_ref().and_then(|s| s.unkillable_since) {
                    Some(since) => format!(
                        "unkillable: a member of its process group survived SIGKILL (uninterruptible I/O) {} ago; waiting for it to end",
                        fmt_dur(self.since(since))
                    ),
                    None => "waiting for the rest of its process group to exit".to_string(),
                };
                self.set(id, Phase::Stopping, why);
                self.wake_in(self.desired.interval.min(Duration::from_secs(5)));
                return;
            }
            self.step_exited(id, w, shard, &process, obs, exit);
        } else if w.completed_at.is_none()
            && shard
                .zip(w.checkpoint)
                .is_some_and(|(s, c)| c >= s.last_key())
        {
            w.completed_at = Some(self.now.wall);
            self.events.push(format!(
                "worker {id}: shard {} already complete (checkpoint {})",
                span(shard.map(|s| (s.start, s.end))),
                count(w.checkpoint.unwrap_or(0))
            ));
        }
        if w.process.is_none() {
            self.idle_status(id, w, shard);
            self.hold_if_unreadable(id, w, obs);
        }
        if w.completed_at.is_some() {
            self.verify_fix(id, w);
        }
    }

    /// Says so when a checkpoint comes to lie outside worker `id`'s shard (the one before it,
    /// `old`, did not, or lay on the other side): below the key before its first (what a
    /// worker reports before it has done anything) or past its end. It is no cursor of this
    /// shard — a progress file left from another shard layout (with another state directory),
    /// or a bug in the worker — and is read as nothing of the shard done, or as the shard
    /// complete; the operator should know which.
    fn say_if_outside_shard(&mut self, id: WorkerId, old: Option<u64>, checkpoint: u64) {
        let Some(s) = self.desired.shard(id) else {
            return;
        };
        let outside = |c: u64| {
            if c.saturating_add(1) < s.start {
                Some("read as nothing of it done")
            } else if c > s.end {
                Some("read as the shard complete")
            } else {
                None
            }
        };
        let Some(reads_as) = outside(checkpoint).filter(|&o| old.and_then(outside) != Some(o))
        else {
            return;
        };
        self.events.push(format!(
            "worker {id}: checkpoint {} in {} is outside its shard {} ({reads_as}): not a cursor of this shard — left from another shard layout, or a bug in the worker?",
            count(checkpoint),
            self.desired.progress_path(id).display(),
            span(Some((s.start, s.end))),
        ));
    }

    /// Updates checkpoint and log state; returns the time of the newest progress signal.
    fn read_progress(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        obs: &WorkerObservation,
    ) -> Option<BootTime> {
        let mut signal_at: Option<BootTime> = None;
        let running_since = w.process.as_ref().map(|p| p.started_at);
        match &obs.progress {
            ProgressObservation::Read {
                checkpoint, items, ..
            } => {
                if w.checkpoint != Some(*checkpoint) {
                    if let Some(old) = w.checkpoint
                        && *checkpoint < old
                    {
                        self.events.push(format!(
                            "worker {id}: checkpoint went back from {} to {}",
                            count(old),
                            count(*checkpoint)
                        ));
                    }
                    // A checkpoint that appears or moves while the worker runs is progress, its
                    // first one included (a worker started with nothing done, or from a missing
                    // file, writes one only once it has done something: not counting it killed
                    // a slow starter at its discovery grace).
                    if running_since.is_some() {
                        signal_at = Some(self.now.boot);
                        w.left_discovery = true;
                    }
                    self.say_if_outside_shard(id, w.checkpoint, *checkpoint);
                    w.checkpoint = Some(*checkpoint);
                    w.checkpoint_changed_at = Some(self.now.boot);
                    w.repeating = None;
                    self.sample_rate(w, *checkpoint);
                }
                w.items = *items;
                w.unreadable_since = None;
                w.exits_without_progress_file = 0;
                // Only a reported problem is reported over (no unreadable/readable-again pairs
                // for a torn read now and then).
                if w.progress_problem.take().is_some() {
                    self.events.push(format!(
                        "worker {id}: progress file {} readable again (checkpoint {})",
                        self.desired.progress_path(id).display(),
                        count(*checkpoint)
                    ));
                }
            }
            ProgressObservation::Unreadable { why } => {
                let since = *w.unreadable_since.get_or_insert(self.now.boot);
                // With a checkpoint, a persistent problem is reported once per streak (the
                // parse error of a torn file differs from read to read); without one, the
                // worker is held and says so (see `hold_if_unreadable`).
                if w.checkpoint.is_some()
                    && w.progress_problem.is_none()
                    && self.since(since) >= UNREADABLE_REPORT_AFTER
                {
                    self.events.push(format!(
                        "worker {id}: progress file {} unreadable for {}: {why}; keeping the last good checkpoint {}",
                        self.desired.progress_path(id).display(),
                        fmt_dur(self.since(since)),
                        w.checkpoint.map_or_else(|| "(none yet)".to_string(), count)
                    ));
                    w.progress_problem = Some(why.clone());
                }
            }
            ProgressObservation::NothingDone => {
                // Parses, holds no checkpoint: a remembered one stays (a restart never goes
                // back to the shard's start while one exists).
                w.unreadable_since = None;
                w.exits_without_progress_file = 0;
                if w.progress_problem.take().is_some() {
                    self.events.push(format!(
                        "worker {id}: progress file {} readable again (nothing done yet)",
                        self.desired.progress_path(id).display(),
                    ));
                }
            }
            ProgressObservation::Missing => w.unreadable_since = None,
        }
        if let LogObservation::Read {
            cursor,
            records,
            first_look,
            reset,
            repeated,
            ..
        } = &obs.log
        {
            if let Some(reset) = reset {
                let what = match reset {
                    crate::observe::logtail::LogReset::Rotated => "was rotated",
                    crate::observe::logtail::LogReset::Truncated => "was truncated",
                    crate::observe::logtail::LogReset::Rewritten => {
                        "was truncated and written again"
                    }
                };
                self.events.push(format!(
                    "worker {id}: log {what}; reading the new file from its tail"
                ));
            }
            for r in records {
                if r.class == LineClass::Completion {
                    let first = r.message.lines().next().unwrap_or("");
                    w.claimed_complete = Some(format!(
                        "its log says \"{}\"",
                        first.chars().take(200).collect::<String>()
                    ));
                    continue;
                }
                if r.class == LineClass::Error {
                    w.last_error = Some(error_summary(&r.message).chars().take(300).collect());
                    continue;
                }
                let fp = fingerprint(without_leading_time(&r.message));
                if seen_recently(&w.recent_signals, fp) {
                    continue; // the same line again: a loop, not progress
                }
                // Make room first: a cloned queue has no spare capacity, and pushing into a full
                // one would reallocate it on every pass.
                if w.recent_signals.len() >= memory::RECENT_SIGNALS {
                    w.recent_signals.pop_front();
                }
                w.recent_signals.push_back(fp);
                // A first look may show old lines: trust their timestamps (never in the future).
                let at = if *first_look {
                    r.timestamp
                        .map_or(self.now.boot, |t| self.now.boot_time_of(t))
                } else {
                    self.now.boot
                };
                if running_since.is_some_and(|s| at >= s) {
                    signal_at = Some(signal_at.map_or(at, |s| s.max(at)));
                    if r.class == LineClass::Upload {
                        w.left_discovery = true;
                    }
                }
            }
            if let Some(r) = repeated {
                match &mut w.repeating {
                    Some(prev) if prev.what == r.what => prev.times += r.times,

                    _ => w.repeating = Some(r.clone()),
                }
            }
            w.log_cursor = Some(*cursor);
        }
        signal_at
    }

    fn step_alive(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        obs: &WorkerObservation,
        signal_at: Option<BootTime>,
    ) {
        // Copied, not cloned: most passes only read these two (a clone allocates).
        let Some((started_at, pid)) = w.process.as_ref().map(|p| (p.started_at, p.identity.pid))
        else {
            return;
        };
        if let Some(at) = signal_at {
            w.last_progress_at = Some(w.last_progress_at.map_or(at, |l| l.max(at)));
            w.stuck_passes = 0;
            // It runs and works: a streak of starts that failed is over.
            w.start_failures = 0;
        }
        if let Some(stopping) = w.stopping.clone() {
            if let Some(process) = w.process.clone() {
                self.resume_stop(id, w, &process);
            }
            match stopping.unkillable_since {
                Some(since) => {
                    self.set(
                        id,
                        Phase::Stopping,
                        format!(
                            "unkillable: in uninterruptible I/O since {} ago (survived SIGKILL); no replacement while it lives",
                            fmt_dur(self.since(since))
                        ),
                    );
                    self.wake_in(self.desired.interval.min(Duration::from_secs(5)));
                }
                None => {
                    self.set(
                        id,
                        Phase::Stopping,
                        format!("stop requested: {}", stopping.reason),
                    );
                    self.wake_in(self.desired.stop_grace + Duration::from_secs(1));
                }
            }
            return;
        }
        if let Some(hold) = w.paused.as_ref().or(w.failed.as_ref()) {
            let reason = format!("worker {id}: {}; stopping it", hold.reason);
            self.stop_if_running(id, w, reason.clone());
            self.set(id, Phase::Stopping, reason);
            return;
        }
        if let Some(i) = self.memory.restart_for_code.iter().position(|x| *x == id) {
            self.memory.restart_for_code.remove(i);
            let resume = self.resume_words(id, w.checkpoint);
            let reason = format!(
                "worker {id}: restarting {resume}: the code file it runs changed (a code fix was applied or rolled back)"
            );
            if let Some(process) = w.process.clone() {
                self.request_stop(id, w, &process, reason.clone(), true);
            }
            self.set(id, Phase::Stopping, reason);
            return;
        }
        if w.failures > 0
            && self.since(started_at) >= self.desired.restart.backoff_reset_after.get()
            && w.last_progress_at.is_some_and(|p| p > started_at)
        {
            w.failures = 0;
            self.events.push(format!(
                "worker {id}: progressing for {}; crash backoff reset",
                self.desired.restart.backoff_reset_after
            ));
        }
        let reference = w
            .last_progress_at
            .filter(|p| *p >= started_at)
            .unwrap_or(started_at);
        // A cursor phrase recurring while the checkpoint stands still is a loop, not discovery:
        // judged on `stuck_after` even right after a restart.
        let looping = w
            .repeating
            .as_ref()
            .is_some_and(|r| r.times >= LOOP_EVIDENCE);
        let rule = super::health::StuckThreshold::for_stage(
            &self.desired.health,
            w.left_discovery,
            looping,
        );
        let (threshold, threshold_name, stage) = (rule.limit, rule.field, rule.stage);
        let idle = self.since(reference);
        let d_state = matches!(obs.process, Some(ProcessStatus::Alive { state: 'D' }));
        let desired = self.desired;
        let at = AtCheckpoint {
            unit: &desired.unit,
            checkpoint: self.progress_of(id, w.checkpoint),
        };
        if rule.exceeded_by(idle) {
            w.stuck_passes += 1;
            let d_note = if d_state {
                "; process in uninterruptible I/O (D)"
            } else {
                ""
            };
            let loop_note = w
                .repeating
                .as_ref()
                .filter(|r| r.times >= LOOP_EVIDENCE)
                .map(|r| {
                    format!(
                        "; its log keeps repeating \"{}\" ({} times)",
                        r.what, r.times
                    )
                })
                .unwrap_or_default();
            let what = format!(
                "no progress for {} (threshold {} {threshold_name}, {stage}){at}{d_note}{loop_note}",
                fmt_dur(idle),
                fmt_dur(threshold),
            );
            if w.stuck_since.is_none() {
                // When the silence began, not when it was noticed: a scale-down quotes it.
                w.stuck_since = Some(reference);
            }
            if w.stuck_passes >= STUCK_CONFIRMATIONS {
                if let Some(process) = w.process.clone() {
                    self.on_stuck(id, w, &process, &what, d_state);
                }
            } else {
                self.set(
                    id,
                    Phase::Stuck,
                    format!("{what}; confirming on the next pass"),
                );
                self.wake_in(self.desired.interval.min(Duration::from_secs(5)));
            }
            return;
        }
        w.stuck_passes = 0;
        w.stuck_since = None;
        self.drop_stale_outcome(id, w);
        self.wake_in(threshold - idle);
        let phase = if w.left_discovery {
            Phase::Progressing
        } else {
            Phase::Discovering
        };
        // Every running worker's reason, every pass: kept as facts, written when read.
        let handle = w
            .process
            .as_ref()
            .map_or(crate::runtime::Handle::Process(pid), |p| {
                crate::runtime::Handle::of(&p.identity)
            });
        let reason = Reason::Running {
            handle,
            at: self
                .progress_of(id, w.checkpoint)
                .map(|c| (self.unit_name.clone(), c)),
            idle,
            since_start: reference == started_at,
        };
        let reason = match (&w.job, handle) {
            (Some(job), crate::runtime::Handle::Job(_)) => {
                let on = job
                    .node
                    .as_deref()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default();
                Reason::Text(reason.to_string().replacen(
                    &handle.to_string(),
                    &format!("{handle}{on}"),
                    1,
                ))
            }
            _ => reason,
        };
        self.set(id, phase, reason);
    }

    fn step_exited(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        shard: Option<Shard>,
        process: &RunningProcess,
        obs: &WorkerObservation,
        exit: Option<&crate::observe::ExitEvent>,
    ) {
        w.left_discovery = false;
        w.stuck_passes = 0;
        let stopping = w.stopping.take();
        if let Some(since) = stopping.as_ref().and_then(|s| s.unkillable_since) {
            self.events.push(format!(
                "worker {id}: pid {} finally exited, {} after it was found unkillable (uninterruptible I/O)",
                process.identity.pid,
                fmt_dur(self.since(since))
            ));
        }
        if stopping.as_ref().is_some_and(|s| s.exit_reported) {
            // The leader's exit was reported and counted when it came; the rest of its
            // process group is gone now, and the worker's restart (or completion) stands.
            return;
        }
        let how = match (exit, &obs.process) {
            _ if stopping.is_some() => "stopped".to_string(),
            (Some(e), _) if e.code.is_some() => {
                let code = e.code.unwrap_or_default();
                format!("exited with status {code}{}", exec_status_words(code))
            }
            (Some(e), _) => format!(
                "was killed by signal {}",
                e.signal.map_or_else(|| "?".into(), signal_name)
            ),
            (None, Some(ProcessStatus::Reused)) => format!(
                "is gone (pid {} now belongs to another process)",
                process.identity.pid
            ),
            (None, _) if crate::runtime::Handle::of(&process.identity).is_job() => format!(
                "ended: {} left the queue with its exit status unknown to squeue (the progress file decides)",
                crate::runtime::Handle::of(&process.identity)
            ),
            (None, _) => "exited (status unknown: not automon's child)".to_string(),
        };
        let at = self
            .progress_of(id, w.checkpoint)
            .map(|c| format!(" at {} {}", self.unit(), count(c)))
            .unwrap_or_default();
        // Completion is judged by the checkpoint, whatever ended the process.
        let done = match shard {
            Some(s) => w.checkpoint.is_some_and(|c| c >= s.last_key()),
            None => {
                exit.is_some_and(|e| e.code == Some(0))
                    && !matches!(
                        obs.progress,
                        ProgressObservation::Read {
                            completed: Some(false),
                            ..
                        }
                    )
            }
        };
        if done {
            w.completed_at = Some(self.now.wall);
            w.failures = 0;
            w.backoff_until = None;
            w.restart_reason = None;
            w.claimed_complete = None;
            let items = w
                .items
                .map(|n| format!("; {} {}s done", count(n), self.unit()))
                .unwrap_or_default();
            self.events.push(format!(
                "worker {id} {how}: shard {} complete{items}",
                span(shard.map(|s| (s.start, s.end)))
            ));
            return;
        }
        if let Some(stopping) = stopping {
            if stopping.restart {
                let resume = self.resume_words(id, w.checkpoint);
                w.restart_reason = Some(format!("worker {id}: restarting {resume} after the stop"));
                self.memory.totals.stuck_restarts += 1;
            }
            return;
        }
        let claimed = w.claimed_complete.take();
        let exit_zero = exit.is_some_and(|e| e.code == Some(0));
        if exit_zero
            && shard.is_some()
            && w.checkpoint.is_none()
            && obs.progress == ProgressObservation::Missing
        {
            // A mistyped `progress.file`: the worker did its shard, automon never saw a
            // checkpoint, and a rerun would redo the whole shard. Name the path it looked for.
            w.exits_without_progress_file += 1;
            let path = self.desired.progress_path(id);
            let what = format!(
                "worker {id} {how}, but its progress file {} never appeared",
                path.display()
            );
            if w.exits_without_progress_file >= MAX_EXITS_WITHOUT_PROGRESS_FILE {
                let reason = format!(
                    "progress file {} never appeared in {} runs that exited 0; check spec.progress.file",
                    path.display(),
                    w.exits_without_progress_file
                );
                self.events.push(format!(
                    "ALERT: {what} ({} runs in a row); holding it instead of rerunning its shard (fix spec.progress.file, then `automon resume`)",
                    w.exits_without_progress_file
                ));
                w.paused = Some(memory::Hold {
                    reason,
                    at: self.now.wall,
                    by_operator: false,
                });
                return;
            }
            w.restart_reason = Some(format!(
                "{what}; rerunning it from its range start (held if it happens again)"
            ));
            self.memory.totals.crash_restarts += 1;
            return;
        }
        if self.exec_failure(id, w, process, &how, exit) {
            return;
        }
        let suspicious = if exit_zero || claimed.is_some() {
            let end = shard.map_or_else(String::new, |s| {
                format!(" short of the shard's last key {}", count(s.last_key()))
            });
            let claim = claimed.map(|c| format!(" {c},")).unwrap_or_default();
            format!(
                ";{claim} but its checkpoint{at}{end} says it is not done (suspicious completion)"
            )
        } else {
            String::new()
        };
        w.failures += 1;
        let delay = backoff::delay(w.failures, &self.desired.restart);
        w.backoff_until = Some(self.later(delay));
        let resume = self.resume_words(id, w.checkpoint);
        let error = w
            .last_error
            .as_ref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        let when = if delay.is_zero() {
            String::new()
        } else {
            format!(" in {}", fmt_dur(delay))
        };
        let streak = if w.failures > 1 {
            format!(" ({} failures in a row)", w.failures)
        } else {
            String::new()
        };
        let reason =
            format!("worker {id} {how}{at}{suspicious}{error}; restarting {resume}{when}{streak}");
        self.memory.totals.crash_restarts += 1;
        if delay.is_zero() {
            w.restart_reason = Some(reason);
        } else {
            self.events.push(reason.clone());
            w.restart_reason = Some(format!(
                "worker {id}: backoff of {} over; restarting {resume}",
                fmt_dur(delay)
            ));
        }
    }

    /// The exit of a worker whose main process is gone while other members of its process
    /// group live on: reported and counted by [`Self::step_exited`] as for any exit (a crash
    /// backs off and counts as a failure; exit 0 with the shard done is a completion). A
    /// restart that would come at once is said now, not when the replacement starts (which
    /// waits until the rest of the group is gone).
    fn report_exit_with_leftovers(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        shard: Option<Shard>,
        process: &RunningProcess,
        obs: &WorkerObservation,
        exit: Option<&crate::observe::ExitEvent>,
    ) {
        self.step_exited(id, w, shard, process, obs, exit);
        let backing_off = w.backoff_until.is_some_and(|u| u > self.now.boot);
        if !backing_off && let Some(reason) = w.restart_reason.take() {
            self.events.push(reason);
            let resume = self.resume_words(id, w.checkpoint);
            w.restart_reason = Some(format!(
                "worker {id}: restarting {resume} once the rest of its process group is gone"
            ));
        }
    }

    /// An exit with status 127 or 126 from a run that made no progress: the command started,
    /// but a program it runs could not be found or executed (the status `sh` and `env` give).
    /// Counted with the starts that failed outright; at [`super::MAX_START_FAILURES`] in a row
    /// the worker is Failed naming the command, instead of retried at `backoff_max` forever.
    /// Returns true when it failed the worker (nothing more to decide this pass). Any other
    /// exit ends the streak.
    fn exec_failure(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        how: &str,
        exit: Option<&crate::observe::ExitEvent>,
    ) -> bool {
        let code = exit.and_then(|e| e.code);
        let progressed = w.checkpoint != process.resume_from
            || w.last_progress_at.is_some_and(|t| t >= process.started_at);
        if !matches!(code, Some(126 | 127)) || progressed {
            w.start_failures = 0;
            return false;
        }
        w.start_failures += 1;
        if w.start_failures < super::MAX_START_FAILURES {
            return false;
        }
        let reason = format!(
            "{how} {} times in a row without progress: a program its command runs is missing or not executable (command: {}; its log {} names it)",
            w.start_failures,
            crate::text::shell_words(&self.desired.command),
            self.desired.log_path(id).display()
        );
        w.backoff_until = None;
        w.restart_reason = None;
        w.failures += 1;
        self.events.push(format!(
            "ALERT: worker {id}: {reason}; Failed (fix the template's command, then `automon resume`)"
        ));
        w.failed = Some(memory::Hold {
            reason,
            at: self.now.wall,
            by_operator: false,
        });
        true
    }

    /// A worker that would be started now but whose progress file exists without parsing, and
    /// that has no remembered checkpoint (a first apply, `--reset-state`, a lost state
    /// directory, every read so far torn): starting it would begin at its shard's start and
    /// overwrite days of work. It is held, with one alert naming the file and the parse error,
    /// until the file parses (the observer already re-read it within the pass).
    fn hold_if_unreadable(&mut self, id: WorkerId, w: &mut WorkerMemory, obs: &WorkerObservation) {
        let ProgressObservation::Unreadable { why } = &obs.progress else {
            return;
        };
        let startable = self
            .statuses
            .get(&id)
            .is_some_and(|s| matches!(s.phase, Phase::Pending | Phase::Stopped | Phase::Parked));
        if w.checkpoint.is_some() || !startable {
            return;
        }
        let path = self.desired.progress_path(id);
        let what = format!(
            "progress file {} exists but cannot be parsed ({why}) and no checkpoint is remembered",
            path.display()
        );
        if w.progress_problem.is_none() {
            self.events.push(format!(
                "ALERT: worker {id}: {what}; holding it (never started from its shard start while the file exists) until the file parses"
            ));
            w.progress_problem = Some(why.clone());
        }
        self.held.insert(id);
        self.wake_in(self.desired.interval);
        self.set(
            id,
            Phase::Stopped,
            format!("held: {what}; starts once the file parses"),
        );
    }

    fn idle_status(&mut self, id: WorkerId, w: &WorkerMemory, shard: Option<Shard>) {
        if w.completed_at.is_some() {
            let at = w.checkpoint.map(count).unwrap_or_default();
            self.set(
                id,
                Phase::Completed,
                format!(
                    "shard {} done (checkpoint {at})",
                    span(shard.map(|s| (s.start, s.end)))
                ),
            );
        } else if let Some(hold) = &w.failed {
            self.set(id, Phase::Failed, hold.reason.clone());
        } else if let Some(hold) = &w.paused {
            // An operator's hold already says so ("paused by an operator (automon pause)").
            let reason = if hold.by_operator {
                hold.reason.clone()
            } else {
                format!("paused by escalation: {}", hold.reason)
            };
            self.set(id, Phase::Paused, reason);
        } else if let Some(reason) = &w.parked {
            self.set(
                id,
                Phase::Parked,
                format!(
                    "{reason}; resumes {} when scaling allows",
                    self.resume_words(id, w.checkpoint)
                ),
            );
        } else if let Some(until) = w.backoff_until.filter(|u| *u > self.now.boot) {
            let left = until.since(self.now.boot);
            self.wake_in(left);
            self.set(
                id,
                Phase::BackingOff,
                format!(
                    "crashed {} in a row; restart in {}",
                    crate::text::counted(w.failures, "time", "times"),
                    fmt_dur(left)
                ),
            );
        } else if w.restart_reason.is_some() || w.checkpoint.is_some() {
            self.set(
                id,
                Phase::Stopped,
                format!(
                    "not running; resumes {} when a slot is free",
                    self.resume_words(id, w.checkpoint)
                ),
            );
        } else {
            self.set(id, Phase::Pending, "waiting for a free slot");
        }
    }

    /// Keeps (time, checkpoint) samples of the last [`RATE_WINDOW`] for rates and ETAs: anchors
    /// at least [`RATE_SAMPLE_SPACING`] apart and the newest (a sample that comes sooner than
    /// that after the anchor before it replaces the newest instead of adding one), so a worker
    /// holds at most [`MAX_RATE_SAMPLES`] whatever the pass interval.
    fn sample_rate(&self, w: &mut WorkerMemory, checkpoint: u64) {
        let samples = &mut w.rate_samples;
        if samples.back().is_some_and(|(_, c)| *c > checkpoint) {
            samples.clear(); // went backwards: the old samples say nothing now
        }
        while samples.len() >= 2
            && samples
                .front()
                .is_some_and(|(t, _)| self.since(*t) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        let n = samples.len();
        let close = n >= 2 && samples[n - 1].0.since(samples[n - 2].0) < RATE_SAMPLE_SPACING;
        if close && let Some(newest) = samples.back_mut() {
            *newest = (self.now.boot, checkpoint);
            return;
        }
        // The bound holds by the spacing; this only guards memory loaded from an older automon.
        while samples.len() >= MAX_RATE_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((self.now.boot, checkpoint));
    }
}

/// What exit statuses 127 and 126 mean by the convention of `sh` and `env`: ` (command not
/// found)`, ` (command not executable)`; nothing for other statuses.
fn exec_status_words(code: i32) -> &'static str {
    match code {
        127 => " (command not found)",
        126 => " (command not executable)",
        _ => "",
    }
}

/// The line of an error record a person wants to read: its first line, except for a bare
/// Python traceback, whose first line (`Traceback (most recent call last):`) says nothing and
/// whose last unindented line is the exception (`ValueError: boom at 240`).
fn error_summary(message: &str) -> &str {
    let first = message.lines().next().unwrap_or("");
    if !first.starts_with("Traceback (most recent call last)") {
        return first;
    }
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with([' ', '\t']))
        .unwrap_or(first)
}

#[cfg(test)]
mod error_summary_tests {
    use super::error_summary;

    /// Regression: a bare traceback's last error read "Traceback (most recent call last):".
    #[test]
    fn a_bare_traceback_is_summed_up_by_its_exception_line() {
        let tb = "Traceback (most recent call last):\n  File \"w.py\", line 3, in <module>\n    go()\nValueError: boom at 240";
        assert_eq!(error_summary(tb), "ValueError: boom at 240");
        let logged =
            "ERROR - could not open book 3\nTraceback (most recent call last):\nKeyError: 'id'";
        assert_eq!(error_summary(logged), "ERROR - could not open book 3");
        let cut = "Traceback (most recent call last):\n  File \"w.py\", line 3";
        assert_eq!(error_summary(cut), "Traceback (most recent call last):");
    }
}
