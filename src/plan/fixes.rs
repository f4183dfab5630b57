//! Fixing stuck workers: choosing a fix (restart, config_fix, code_fix — or what an LLM
//! proposed), the per-worker cooldown, verification `verify_after` after the fixed worker's new
//! process started, and escalation after `max_attempts` failed attempts.
//!
//! The fix pipeline of each worker is the state machine [`FixStage`]: every LLM outcome —
//! an answer, a failure, no outcome by the deadline, a refused proposal — is acted on by the
//! first pass that sees it, so a stuck worker gets a restart or an applied fix within one pass
//! of it (and within `llm.timeout` + one interval when the LLM is down).

use std::collections::BTreeMap;
use std::time::Duration;

use super::memory::{Attempt, FixKind, FixStage, Hold, Verification};
use super::*;
use crate::manifest::Escalation;

/// The order `try_different_fix` walks.
const FIX_ORDER: [FixKind; 3] = [FixKind::Restart, FixKind::ConfigFix, FixKind::CodeFix];

/// How long the planner waits for the code-fix engine's outcome before it stops waiting (the
/// outcome of an automon that was killed meanwhile never comes).
pub const ENGINE_DEADLINE: Duration = Duration::from_secs(120);

/// The event for a move of a worker's fix pipeline: from, to, the rule that made it, the next
/// action.
pub(super) fn stage_event(
    id: WorkerId,
    from: Option<&FixStage>,
    to: Option<&FixStage>,
    rule: &str,
    next: &str,
) -> String {
    let name = |s: Option<&FixStage>| s.map_or("idle", FixStage::name);
    format!(
        "worker {id}: fix pipeline {} → {}: {rule}; next: {next}",
        name(from),
        name(to)
    )
}

/// The worker whose code fix is being applied or awaits its verification, if any. Code fixes
/// go one at a time: two engines patching the same file at once refuse each other ("the file
/// changed while the fix was validated"), and a second fix on top of an unverified one makes
/// both verdicts meaningless.
pub(super) fn code_fix_in_flight(memory: &Memory) -> Option<WorkerId> {
    memory
        .workers
        .iter()
        .find(|(_, w)| {
            matches!(w.fixes.stage, Some(FixStage::Applying { .. }))
                || w.fixes
                    .pending()
                    .is_some_and(|a| a.kind == FixKind::CodeFix)
        })
        .map(|(id, _)| *id)
}

impl Planner<'_> {
    /// Moves the worker's fix pipeline to `to` and logs the move with its rule and next action.
    fn enter(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        to: Option<FixStage>,
        rule: &str,
        next: &str,
    ) {
        self.events.push(stage_event(
            id,
            w.fixes.stage.as_ref(),
            to.as_ref(),
            rule,
            next,
        ));
        w.fixes.stage = to;
    }

    /// A running worker that is not stuck: an LLM outcome still waiting to be acted on is
    /// dropped (it was about a stall that is over).
    pub(super) fn drop_stale_outcome(&mut self, id: WorkerId, w: &mut WorkerMemory) {
        if w.fixes.stage.as_ref().is_some_and(FixStage::awaits_action) {
            if let Some(d) = w.diagnosis.as_mut() {
                d.used = true;
            }
            self.enter(
                id,
                w,
                None,
                "the worker is no longer stuck, so its LLM outcome is not used",
                "none",
            );
        }
    }

    /// Verifies the pending fix attempt `verify_after` after the fixed worker's new process
    /// started (not after the fix was decided: a restart takes a stop grace and a free slot,
    /// a code fix an engine run first). Success needs the checkpoint past where it was at the
    /// fix (or the shard complete); a fresh log alone is not progress. Only a worker with no
    /// checkpoint at all is judged by new progress lines. Each attempt is verified once.
    pub(super) fn verify_fix(&mut self, id: WorkerId, w: &mut WorkerMemory) {
        let Some(a) = w.fixes.pending().cloned() else {
            return;
        };
        // A held worker is not judged: it was stopped on purpose (resume settles the attempt).
        if w.paused.is_some() || w.failed.is_some() {
            return;
        }
        let verify_after = self.desired.fixes.verify_after.get();
        // A shard that completed needs no waiting: the fix worked.
        if w.completed_at.is_none() {
            // The clock starts when the fixed worker's new process runs.
            let Some(started) = w
                .process
                .as_ref()
                .map(|p| p.started_at)
                .filter(|s| *s >= a.at)
            else {
                return;
            };
            let due = started.plus(verify_after);
            if a.verify_at != due
                && let Some(last) = w.fixes.attempts.last_mut()
            {
                last.verify_at = due;
            }
            if self.now.boot < due {
                self.wake_in(due.since(self.now.boot));
                return;
            }
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
        let since_start = w
            .process
            .as_ref()
            .map_or(verify_after, |p| self.since(p.started_at));
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
                "no progress in {} since its process restarted with the fix (checkpoint still {})",
                fmt_dur(since_start),
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
            w.fixes.stage = Some(FixStage::Kept { n: a.n });
            self.memory.totals.fixes_succeeded += 1;
            self.events.push(format!(
                "worker {id}: fix attempt {}/{max} ({}) verified: {detail}; fix pipeline verifying → kept",
                a.n,
                a.kind.name()
            ));
            return;
        }
        w.fixes.failed_in_row += 1;
        w.fixes.stage = Some(FixStage::RolledBack { n: a.n });
        self.memory.totals.fixes_failed += 1;
        let rollback = a
            .code
            .as_ref()
            .filter(|_| self.desired.fixes.code.rollback_on_failure);
        let next = if rollback.is_some() {
            "restoring the file, then restarting from their checkpoints the workers that started on the patched code"
        } else if w.fixes.failed_in_row >= max {
            "the escalation"
        } else {
            "the next fix once the cooldown allows"
        };
        self.events.push(format!(
            "worker {id}: fix attempt {}/{max} ({}) failed verification: {detail}; fix pipeline verifying → rolled back; next: {next}",
            a.n,
            a.kind.name()
        ));
        if let Some(code) = rollback {
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
        // An outcome of the pipeline is acted on now, whatever the cooldown.
        match w.fixes.stage.clone() {
            Some(FixStage::Asked { deadline, .. }) if self.now.boot < deadline => {
                let left = deadline.since(self.now.boot);
                self.set(
                    id,
                    Phase::Stuck,
                    format!(
                        "{what}; waiting for the LLM's diagnosis (the built-in fix runs in {} at the latest)",
                        fmt_dur(left)
                    ),
                );
                self.wake_in(left);
                return;
            }
            Some(FixStage::Asked { at, .. }) => {
                let rule = format!(
                    "no LLM outcome {} after asking (llm.timeout {} + one interval {})",
                    fmt_dur(self.since(at)),
                    self.desired.llm.timeout,
                    fmt_dur(self.desired.interval)
                );
                let stage = FixStage::TimedOut { at: self.now.boot };
                self.enter(id, w, Some(stage), &rule, "the built-in fix, now");
                self.builtin_fix(id, w, process, what, "LLM timed out");
                return;
            }
            Some(FixStage::Applying { deadline, .. }) if self.now.boot < deadline => {
                self.set(
                    id,
                    Phase::Stuck,
                    format!("{what}; waiting for the code-fix engine"),
                );
                self.wake_in(deadline.since(self.now.boot));
                return;
            }
            Some(FixStage::Applying { .. }) => {
                let why = "the code-fix engine reported no outcome".to_string();
                let stage = FixStage::Refused {
                    at: self.now.boot,
                    why: why.clone(),
                };
                self.enter(id, w, Some(stage), &why, "the built-in fix, now");
                self.builtin_fix(id, w, process, what, &format!("proposal refused: {why}"));
                return;
            }
            Some(FixStage::Answered { .. }) => {
                self.use_answer(id, w, process, what);
                return;
            }
            Some(FixStage::Failed { why, .. }) => {
                let note = format!(
                    "LLM diagnosis failed: {why}; rule: a failed diagnosis is an outcome, the built-in fix runs at once"
                );
                self.builtin_fix(id, w, process, what, &note);
                return;
            }
            Some(FixStage::TimedOut { .. }) => {
                self.builtin_fix(id, w, process, what, "LLM timed out");
                return;
            }
            Some(FixStage::Refused { why, .. }) => {
                let note = format!(
                    "proposal refused: {why}; rule: a refused proposal is not a fix attempt, the built-in fix runs at once"
                );
                self.builtin_fix(id, w, process, what, &note);
                return;
            }
            _ => {}
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
        if self.desired.llm.enabled && !in_uninterruptible_io && self.wants_diagnosis(w) {
            let wait = self.desired.llm.timeout.get() + self.desired.interval;
            let stage = FixStage::Asked {
                at: self.now.boot,
                deadline: self.later(wait),
            };
            w.diagnosis_requested_at = Some(self.now.boot);
            self.enter(
                id,
                w,
                Some(stage),
                "stuck, and the LLM is enabled",
                &format!(
                    "the fix its answer proposes, or the built-in fix on a failure or after {} without an outcome",
                    fmt_dur(wait)
                ),
            );
            self.actions.push(Action::Diagnose(DiagnoseAction {
                worker: id,
                reason: format!("worker {id}: {what}; asking the LLM for a diagnosis"),
            }));
            self.set(
                id,
                Phase::Stuck,
                format!("{what}; asked the LLM for a diagnosis"),
            );
            self.wake_in(wait);
            return;
        }
        let kind = w.fixes.kind.unwrap_or(FixKind::Restart);
        self.apply_fix(id, w, process, kind, what, "", &BTreeMap::new());
    }

    /// The fix automon applies without a usable LLM proposal: restart from checkpoint (or the
    /// config fix `try_different_fix` moved on to, with the heuristic values; never a code fix,
    /// which only an LLM can propose).
    fn builtin_fix(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        what: &str,
        note: &str,
    ) {
        if let Some(d) = w.diagnosis.as_mut() {
            d.used = true;
        }
        let kind = match w.fixes.kind {
            Some(FixKind::ConfigFix) => FixKind::ConfigFix,
            _ => FixKind::Restart,
        };
        self.apply_fix(id, w, process, kind, what, note, &BTreeMap::new());
    }

    /// True when no diagnosis was asked for within the fix cooldown (at most one request per
    /// worker per cooldown).
    fn wants_diagnosis(&self, w: &WorkerMemory) -> bool {
        w.diagnosis_requested_at
            .is_none_or(|at| self.since(at) >= self.desired.fixes.cooldown.get())
    }

    /// Acts on an LLM answer: applies its fix when the rules allow it, else refuses it and
    /// applies the built-in fix in the same pass. The rules, in order: a root cause of
    /// "Unknown" or a confidence below `llm.min_confidence` means restart; a config or code fix
    /// needs its kind enabled and a change; `scale_down` is honoured within the scaling rules.
    fn use_answer(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        what: &str,
    ) {
        let Some(d) = w.diagnosis.clone() else {
            let why = "the answer is missing from memory".to_string();
            let stage = FixStage::Refused {
                at: self.now.boot,
                why: why.clone(),
            };
            self.enter(id, w, Some(stage), &why, "the built-in fix, now");
            self.builtin_fix(id, w, process, what, &why);
            return;
        };
        if let Some(d) = w.diagnosis.as_mut() {
            d.used = true;
        }
        let mut note = format!("LLM: {} (confidence {:.2})", d.root_cause, d.confidence);
        if !d.notes.is_empty() {
            note.push_str(&format!("; validation notes: {}", d.notes.join("; ")));
        }
        let floor = self.desired.llm.min_confidence;
        let unknown = d.root_cause.trim().eq_ignore_ascii_case("unknown");
        let refusal = match d.fix {
            None => {
                if self.scale_down_for_llm(id, w, &note, what) {
                    return;
                }
                Some(self.why_no_scale_down())
            }
            Some(FixKind::Restart) => None,
            Some(_) if unknown => {
                Some("the root cause is \"Unknown\" (rule: Unknown means restart)".to_string())
            }
            Some(_) if d.confidence < floor => Some(format!(
                "confidence {:.2} is below llm.min_confidence {floor:.2} (rule: a low-confidence answer means restart)",
                d.confidence
            )),
            Some(FixKind::ConfigFix) if !self.desired.fixes.config.enabled => {
                Some("config fixes are disabled by the manifest (fixes.config.enabled)".into())
            }
            Some(FixKind::ConfigFix) if !self.changes_a_parameter(w, &d.params) => Some(
                "it changes no parameter the manifest declares (or only to the current values)"
                    .into(),
            ),
            Some(FixKind::CodeFix) if !self.fix_available(FixKind::CodeFix) => {
                Some("code fixes are disabled by the manifest (fixes.code)".into())
            }
            Some(FixKind::CodeFix) if d.code_changes.is_none() => {
                Some("it proposes a code fix without a code change".into())
            }
            Some(FixKind::CodeFix) if self.code_fix_owner.is_some_and(|o| o != id) => {
                Some(format!(
                    "worker {}'s code fix is being applied or verified (one code fix at a time)",
                    self.code_fix_owner.map_or(id, |o| o)
                ))
            }
            Some(_) => None,
        };
        if let Some(why) = refusal {
            let stage = FixStage::Refused {
                at: self.now.boot,
                why: why.clone(),
            };
            let resume = self.resume_words(id, w.checkpoint);
            self.enter(
                id,
                w,
                Some(stage),
                &format!("proposal refused: {why}"),
                &format!("restart {resume}, now"),
            );
            let note = format!("{note}; proposal refused: {why}");
            self.builtin_fix(id, w, process, what, &note);
            return;
        }
        match (d.fix, d.code_changes) {
            (Some(FixKind::CodeFix), Some(proposal)) => {
                let max = self.desired.fixes.max_attempts;
                let n = w.fixes.failed_in_row + 1;
                let stage = FixStage::Applying {
                    at: self.now.boot,
                    deadline: self.later(ENGINE_DEADLINE),
                };
                self.enter(
                    id,
                    w,
                    Some(stage),
                    "the answer's code fix is allowed",
                    "the fix engine applies it (then the workers that run the file restart) or refuses it (then the built-in fix)",
                );
                self.code_fix_owner = Some(id);
                self.actions.push(Action::ApplyCodeFix(CodeFixAction {
                    worker: id,
                    proposal,
                    reason: format!(
                        "worker {id}: {what}; code fix sent to the fix engine (fix attempt {n}/{max} once applied) [{note}]"
                    ),
                }));
                self.set(
                    id,
                    Phase::Stuck,
                    format!("{what}; code fix sent to the fix engine (fix attempt {n}/{max} once applied)"),
                );
                self.wake_in(ENGINE_DEADLINE);
            }
            (Some(FixKind::ConfigFix), _) => {
                let note = format!("{note}; rule: a confident answer's config fix is applied");
                self.apply_fix(id, w, process, FixKind::ConfigFix, what, &note, &d.params);
            }
            _ => {
                let note = format!("{note}; rule: the answer proposes a restart");
                self.apply_fix(
                    id,
                    w,
                    process,
                    FixKind::Restart,
                    what,
                    &note,
                    &BTreeMap::new(),
                );
            }
        }
    }

    /// True when `proposed` moves at least one declared parameter off its current value.
    fn changes_a_parameter(&self, w: &WorkerMemory, proposed: &BTreeMap<String, i64>) -> bool {
        let current = self.desired.parameter_values(&w.params);
        proposed
            .iter()
            .any(|(k, v)| current.get(k).is_some_and(|c| c != v))
    }

    /// An answer of `scale_down`, honoured within the scaling rules: parks this worker when
    /// more than `min` workers are wanted and the scale-down cooldown allows. False when it
    /// does not (the caller refuses the proposal with [`Self::why_no_scale_down`]).
    fn scale_down_for_llm(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        note: &str,
        what: &str,
    ) -> bool {
        let counts = self.desired.counts;
        let target = counts.target.min(counts.max);
        let wanted = self.memory.desired_count.unwrap_or(target);
        let ready = self
            .memory
            .last_scale_down
            .is_none_or(|t| self.since(t) >= self.desired.scaling.scale_down_cooldown.get());
        if wanted <= counts.min || !ready {
            return false;
        }
        let reason = format!(
            "worker {id}: {what}; the LLM proposed scale_down [{note}]; parking worker {id}, {} of target {target} will run (rule: scale_down is honoured when more than min {} are wanted and the scale-down cooldown allows)",
            wanted - 1,
            counts.min
        );
        self.memory.desired_count = Some(wanted - 1);
        self.memory.last_scale_down = Some(self.now.boot);
        self.memory.totals.scale_downs += 1;
        self.enter(
            id,
            w,
            None,
            "the LLM's scale_down is honoured",
            "none (the worker is parked)",
        );
        w.parked = Some(reason.clone());
        self.stop_if_running(id, w, reason.clone());
        self.events.push(reason.clone());
        self.set(id, Phase::Stopping, reason);
        true
    }

    /// Why an LLM's `scale_down` is not carried out now, in words.
    fn why_no_scale_down(&self) -> String {
        let counts = self.desired.counts;
        let wanted = self
            .memory
            .desired_count
            .unwrap_or(counts.target.min(counts.max));
        if wanted <= counts.min {
            format!(
                "scale_down not possible: {wanted} wanted, min {}",
                counts.min
            )
        } else {
            let left = self.memory.last_scale_down.map_or(Duration::ZERO, |t| {
                self.desired
                    .scaling
                    .scale_down_cooldown
                    .get()
                    .saturating_sub(self.since(t))
            });
            format!(
                "scale_down not possible: the scale-down cooldown has {} left",
                fmt_dur(left)
            )
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

    /// Applies a restart or config fix now (stop, then restart from the checkpoint with any
    /// new parameter values) and records it as the next attempt. `proposed` are an LLM's
    /// values; empty means the heuristic ones. A code fix goes through [`Self::use_answer`].
    #[allow(clippy::too_many_arguments)]
    fn apply_fix(
        &mut self,
        id: WorkerId,
        w: &mut WorkerMemory,
        process: &RunningProcess,
        kind: FixKind,
        what: &str,
        note: &str,
        proposed: &BTreeMap<String, i64>,
    ) {
        let max = self.desired.fixes.max_attempts;
        let n = w.fixes.failed_in_row + 1;
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" [{note}]")
        };
        let resume = self.resume_words(id, w.checkpoint);
        let (kind, detail) = match kind {
            FixKind::ConfigFix => {
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
                        format!("restart {resume} (no parameter can change)"),
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
                        format!("config fix: {}; restart {resume}", words.join(", ")),
                    )
                }
            }
            FixKind::CodeFix => (
                FixKind::Restart,
                format!("restart {resume} (no code change proposed)"),
            ),
            FixKind::Restart => (FixKind::Restart, format!("restart {resume}")),
        };
        let reason = format!("worker {id}: {what}; fix attempt {n}/{max}: {detail}{note}");
        self.request_stop(id, w, process, reason, true);
        self.set(
            id,
            Phase::Stopping,
            format!("{what}; fix attempt {n}/{max}: {detail}"),
        );
        let verify_after = self.desired.fixes.verify_after.get();
        w.fixes.push(Attempt {
            n,
            kind,
            at: self.now.boot,
            at_wall: self.now.wall,
            checkpoint: w.checkpoint,
            detail: format!("{detail}{note}"),
            verify_at: self.later(verify_after),
            result: None,
            code: None,
        });
        w.fixes.stage = Some(FixStage::Verifying { n });
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
        let (word, then) = if failed {
            ("FAILED", "it is not restarted (escalation stop_worker)")
        } else {
            ("ALERT", "it stays stopped until `automon resume`")
        };
        self.events.push(format!("{word}: worker {id}: {reason}"));
        // The reason is on the line above; the stop says only what it does.
        self.stop_if_running(id, w, format!("worker {id}: stopping it; {then}"));
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
