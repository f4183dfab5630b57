//! Fixing stuck workers: choosing a fix (restart, config_fix, code_fix — or what an LLM
//! proposed), the per-worker cooldown, verification `verify_after` later, and escalation after
//! `max_attempts` failed attempts.

use std::collections::BTreeMap;
use std::time::Duration;

use super::memory::{Attempt, FixKind, Hold, Verification};
use super::*;
use crate::manifest::Escalation;

/// The order `try_different_fix` walks.
const FIX_ORDER: [FixKind; 3] = [FixKind::Restart, FixKind::ConfigFix, FixKind::CodeFix];

/// How long to wait for an LLM answer beyond its own timeout before fixing without it.
const DIAGNOSIS_SLACK: Duration = Duration::from_secs(30);

impl Planner<'_> {
    /// Verifies the pending fix attempt once `verify_after` has passed: success needs the
    /// checkpoint past where it was at the fix (or the shard complete); a fresh log alone is not
    /// progress. Only a worker with no checkpoint at all is judged by new progress lines.
    pub(super) fn verify_fix(&mut self, id: WorkerId, w: &mut WorkerMemory) {
        let Some(a) = w.fixes.pending().cloned() else {
            return;
        };
        // A held worker is not judged: it was stopped on purpose (resume settles the attempt).
        if w.paused.is_some() || w.failed.is_some() {
            return;
        }
        // A shard that completed needs no waiting: the fix worked.
        if self.now.boot < a.verify_at && w.completed_at.is_none() {
            self.wake_in(a.verify_at.since(self.now.boot));
            return;
        }
        let max = self.desired.fixes.max_attempts;
        let moved = match (a.checkpoint, w.checkpoint) {
            (Some(before), Some(now)) => now > before,
            (None, Some(_)) => true,
            _ => false,
        };
        // Without any checkpoint to go by, a new progress line is the only evidence.
        let signalled = a.checkpoint.is_none()
            && w.checkpoint.is_none()
            && w.last_progress_at.is_some_and(|p| p > a.at);
        let succeeded = w.completed_at.is_some() || moved || signalled;
        let since_fix = fmt_dur(self.since(a.at));
        let detail = if succeeded {
            match (a.checkpoint, w.checkpoint) {
                (Some(before), Some(now)) if now > before => format!(
                    "checkpoint {} → {} since the fix",
                    count(before),
                    count(now)
                ),
                _ if w.completed_at.is_some() => "its shard completed".to_string(),
                _ => "new progress lines since the fix".to_string(),
            }
        } else {
            format!(
                "no progress in {since_fix} since the fix (checkpoint still {})",
                w.checkpoint.map_or_else(|| "unknown".into(), count)
            )
        };
        if let Some(last) = w.fixes.attempts.last_mut() {
            last.result = Some(Verification {
                succeeded,
                detail: detail.clone(),
                at: self.now.wall,
            });
        }
        if succeeded {
            w.fixes.failed_in_row = 0;
            w.stuck_since = None;
            self.memory.totals.fixes_succeeded += 1;
            self.events.push(format!(
                "worker {id}: fix attempt {}/{max} ({}) verified: {detail}",
                a.n,
                a.kind.name()
            ));
            return;
        }
        w.fixes.failed_in_row += 1;
        self.memory.totals.fixes_failed += 1;
        self.events.push(format!(
            "worker {id}: fix attempt {}/{max} ({}) failed verification: {detail}",
            a.n,
            a.kind.name()
        ));
        if let Some(code) = a
            .code
            .as_ref()
            .filter(|_| self.desired.fixes.code.rollback_on_failure)
        {
            self.actions.push(Action::RollbackCodeFix(RollbackAction {
                worker: id,
                file: code.file.clone(),
                backup: code.backup.clone(),
                patch_hash: code.patch_hash.clone(),
                reason: format!(
                    "worker {id}: the code fix to {} did not help; restoring {}",
                    code.file.display(),
                    code.backup.display()
                ),
            }));
        }
        if w.fixes.failed_in_row >= max {
            self.escalate(id, w);
        }
    }

    /// A stuck worker, confirmed on two passes: fix it, or say why not yet.
    pub(super) fn on_stuck(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        what: &str,
        in_uninterruptible_io: bool,
    ) {
        let max = self.desired.fixes.max_attempts;
        if let Some(a) = w.fixes.pending() {
            let left = a.verify_at.since(self.now.boot);
            let reason = format!(
                "{what}; fix attempt {}/{max} ({}) is verified in {}",
                a.n,
                a.kind.name(),
                fmt_dur(left)
            );
            self.set(id, Phase::Stuck, reason);
            self.wake_in(left);
            return;
        }
        let cooldown = self.desired.fixes.cooldown.get();
        if let Some(last) = w.fixes.last_at()
            && self.since(last) < cooldown
        {
            let left = cooldown - self.since(last);
            self.set(
                id,
                Phase::Stuck,
                format!(
                    "{what}; next fix allowed in {} (cooldown {})",
                    fmt_dur(left),
                    fmt_dur(cooldown)
                ),
            );
            self.wake_in(left);
            return;
        }
        // A process in uninterruptible I/O is waiting on the kernel, not on its code: nothing
        // an LLM reads in its log explains that; it is restarted (stopped) at once.
        if self.desired.llm.enabled && !in_uninterruptible_io {
            if self.diagnosis_in_flight(w) {
                self.set(
                    id,
                    Phase::Stuck,
                    format!("{what}; waiting for the LLM's diagnosis"),
                );
                self.wake_in(Duration::from_secs(1));
                return;
            }
            if self.wants_diagnosis(w) {
                w.diagnosis_requested_at = Some(self.now.boot);
                self.actions.push(Action::Diagnose(DiagnoseAction {
                    worker: id,
                    reason: format!("worker {id}: {what}; asking the LLM for a diagnosis"),
                }));
                self.set(
                    id,
                    Phase::Stuck,
                    format!("{what}; asked the LLM for a diagnosis"),
                );
                self.wake_in(Duration::from_secs(1));
                return;
            }
        }
        let (kind, note) = self.choose_fix(w);
        self.apply_fix(id, w, process, kind, what, &note);
    }

    /// True while a diagnosis was asked for, not answered since, and not yet timed out.
    fn diagnosis_in_flight(&self, w: &WorkerMemory) -> bool {
        let Some(asked) = w.diagnosis_requested_at else {
            return false;
        };
        let answered = w.diagnosis.as_ref().is_some_and(|d| d.at >= asked);
        !answered && self.since(asked) < self.desired.llm.timeout.get() + DIAGNOSIS_SLACK
    }

    /// True when there is no unused answer and none was asked for within the fix cooldown (at
    /// most one request per worker per cooldown).
    fn wants_diagnosis(&self, w: &WorkerMemory) -> bool {
        if w.diagnosis.as_ref().is_some_and(|d| !d.used) {
            return false;
        }
        w.diagnosis_requested_at
            .is_none_or(|at| self.since(at) >= self.desired.fixes.cooldown.get())
    }

    /// The fix to apply next: what a fresh diagnosis proposed (when that kind is allowed), else
    /// the kind escalation has reached (restart first).
    fn choose_fix(&mut self, w: &mut WorkerMemory) -> (FixKind, String) {
        let fallback = w.fixes.kind.unwrap_or(FixKind::Restart);
        let Some(d) = w.diagnosis.as_mut().filter(|d| !d.used) else {
            return (fallback, String::new());
        };
        d.used = true;
        let note = format!("LLM: {} (confidence {:.2})", d.root_cause, d.confidence);
        match d.fix {
            Some(FixKind::ConfigFix)
                if self.desired.fixes.config.enabled && !d.params.is_empty() =>
            {
                (FixKind::ConfigFix, note)
            }
            Some(FixKind::CodeFix)
                if self.desired.fixes.code.enabled && d.code_changes.is_some() =>
            {
                (FixKind::CodeFix, note)
            }
            Some(FixKind::ConfigFix | FixKind::CodeFix) => (
                fallback,
                format!("{note}; its proposal is not allowed by the manifest"),
            ),
            _ => (fallback, note),
        }
    }

    /// Heuristic config fix without an LLM: halve `parallel_uploads`, else `batch_size`, else
    /// the first other parameter above its minimum. `None` when nothing can go lower.
    fn heuristic_params(&self, w: &WorkerMemory) -> Option<(String, i64, i64)> {
        let current = self.desired.parameter_values(&w.params);
        let mut names: Vec<&String> = self.desired.parameters.keys().collect();
        names.sort_by_key(|n| match n.as_str() {
            "parallel_uploads" => 0,
            "batch_size" => 1,
            _ => 2,
        });
        names.into_iter().find_map(|name| {
            let bounds = self.desired.parameters.get(name)?;
            let value = *current.get(name)?;
            let lower = (value / 2).max(bounds.min);
            (lower < value).then(|| (name.clone(), value, lower))
        })
    }

    fn apply_fix(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        kind: FixKind,
        what: &str,
        note: &str,
    ) {
        let max = self.desired.fixes.max_attempts;
        let n = w.fixes.failed_in_row + 1;
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" [{note}]")
        };
        let resume = w
            .checkpoint
            .map_or_else(|| "its range start".to_string(), count);
        let (kind, detail) = match kind {
            FixKind::ConfigFix => {
                let proposed: BTreeMap<String, i64> = w
                    .diagnosis
                    .as_ref()
                    .filter(|d| d.fix == Some(FixKind::ConfigFix))
                    .map(|d| d.params.clone())
                    .unwrap_or_default();
                let changes: Vec<(String, i64, i64)> = if proposed.is_empty() {
                    self.heuristic_params(w).into_iter().collect()
                } else {
                    let current = self.desired.parameter_values(&w.params);
                    proposed
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), *current.get(k)?, *v)))
                        .filter(|(_, a, b)| a != b)
                        .collect()
                };
                if changes.is_empty() {
                    (
                        FixKind::Restart,
                        format!("restart from checkpoint {resume} (no parameter can change)"),
                    )
                } else {
                    let words: Vec<String> = changes
                        .iter()
                        .map(|(k, a, b)| format!("{k} {a} → {b}"))
                        .collect();
                    for (k, _, b) in &changes {
                        w.params.insert(k.clone(), *b);
                    }
                    (
                        FixKind::ConfigFix,
                        format!(
                            "config fix: {}; restart from checkpoint {resume}",
                            words.join(", ")
                        ),
                    )
                }
            }
            FixKind::CodeFix => {
                let proposal = w.diagnosis.as_ref().and_then(|d| d.code_changes.clone());
                match proposal {
                    Some(proposal) => {
                        self.actions.push(Action::ApplyCodeFix(CodeFixAction {
                            worker: id,
                            proposal,
                            reason: format!(
                                "worker {id}: {what}; fix attempt {n}/{max}: code fix{note}"
                            ),
                        }));
                        (
                            FixKind::CodeFix,
                            "code fix proposed; the workers restart once it is applied".to_string(),
                        )
                    }
                    None => (
                        FixKind::Restart,
                        format!("restart from checkpoint {resume} (no code change proposed)"),
                    ),
                }
            }
            FixKind::Restart => (
                FixKind::Restart,
                format!("restart from checkpoint {resume}"),
            ),
        };
        if kind != FixKind::CodeFix {
            let reason = format!("worker {id}: {what}; fix attempt {n}/{max}: {detail}{note}");
            self.request_stop(id, w, process, reason.clone(), true);
            self.set(
                id,
                Phase::Stopping,
                format!("{what}; fix attempt {n}/{max}: {detail}"),
            );
        } else {
            self.set(
                id,
                Phase::Stuck,
                format!("{what}; fix attempt {n}/{max}: {detail}"),
            );
        }
        let verify_after = self.desired.fixes.verify_after.get();
        w.fixes.push(Attempt {
            n,
            kind,
            at: self.now.boot,
            at_wall: self.now.wall,
            checkpoint: w.checkpoint,
            detail,
            verify_at: self.later(verify_after),
            result: None,
            code: None,
        });
        *self
            .memory
            .totals
            .fixes
            .entry(kind.name().to_string())
            .or_default() += 1;
        self.wake_in(verify_after);
    }

    /// Whether a fix kind can be tried for this WorkerSet at all.
    fn fix_available(&self, kind: FixKind) -> bool {
        match kind {
            FixKind::Restart => true,
            FixKind::ConfigFix => {
                self.desired.fixes.config.enabled && !self.desired.parameters.is_empty()
            }
            FixKind::CodeFix => {
                self.desired.fixes.code.enabled
                    && !self.desired.code_files.is_empty()
                    && self.desired.llm.enabled
            }
        }
    }

    /// After `max_attempts` failed attempts: the manifest's escalation.
    fn escalate(&mut self, id: WorkerId, w: &mut WorkerMemory) {
        let n = w.fixes.failed_in_row;
        let current = w.fixes.kind.unwrap_or(FixKind::Restart);
        let tried: Vec<&str> = w
            .fixes
            .attempts
            .iter()
            .rev()
            .take(n as usize)
            .map(|a| a.kind.name())
            .collect();
        let history = format!(
            "{n} fix attempts failed ({})",
            tried.into_iter().rev().collect::<Vec<_>>().join(", ")
        );
        match self.desired.fixes.escalation {
            Escalation::AlertAndPause => self.hold(
                id,
                w,
                false,
                format!("{history}; paused until an operator runs `automon resume`"),
            ),
            Escalation::StopWorker => self.hold(
                id,
                w,
                true,
                format!("{history}; stopped for good (escalation stop_worker)"),
            ),
            Escalation::TryDifferentFix => {
                let next = FIX_ORDER
                    .iter()
                    .copied()
                    .skip_while(|k| *k != current)
                    .skip(1)
                    .find(|k| self.fix_available(*k));
                match next {
                    Some(k) => {
                        w.fixes.kind = Some(k);
                        w.fixes.failed_in_row = 0;
                        self.events.push(format!("worker {id}: {history}; trying {} next (escalation try_different_fix)", k.name()));
                    }
                    None => self.hold(id, w, false, format!("{history}; no other fix type is allowed; paused until an operator runs `automon resume`")),
                }
            }
        }
    }

    /// Pauses (or fails) a worker and stops it if it runs.
    pub(super) fn hold(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        failed: bool,
        reason: String,
    ) {
        let hold = Hold {
            reason: reason.clone(),
            at: self.now.wall,
            by_operator: false,
        };
        if failed {
            w.failed = Some(hold);
        } else {
            w.paused = Some(hold);
        }
        let word = if failed { "FAILED" } else { "ALERT" };
        self.events.push(format!("{word}: worker {id}: {reason}"));
        self.stop_if_running(id, w, format!("worker {id}: {reason}"));
    }

    /// Issues a stop without restart for a running worker (pause, fail, park).
    pub(super) fn stop_if_running(&mut self, id: WorkerId, w: &mut WorkerMemory, reason: String) {
        let Some(process) = w.process.clone() else {
            return;
        };
        match &mut w.stopping {
            Some(s) => s.restart = false,
            None => {
                self.request_stop(id, w, &process, reason.clone(), false);
            }
        }
    }
}
