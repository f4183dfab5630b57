//! How many workers run, and which: scaling on disk utilisation, then filling free slots.
//!
//! Scale down: disk ≥ `saturated_percent` busy (on an SSD/NVMe also a queue of at least one
//! request: 100 % util with a shallow queue is a parallel device with headroom) AND some worker
//! stuck AND more than `min` running → park the longest-stuck worker (ties: highest id),
//! cooldown `scale_down_cooldown`. Scale up: disk < `normal_percent` AND fewer than `target`
//! wanted → one more, cooldown `scale_up_cooldown`; a parked shard resumes first. Between the
//! two, or without a disk figure: hold, and say so.

use std::time::Duration;

use crate::observe::disk::DiskObservation;

use super::*;

/// Phases that hold a slot.
fn occupies_slot(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Starting
            | Phase::Queued
            | Phase::Unknown
            | Phase::Discovering
            | Phase::Progressing
            | Phase::Stuck
            | Phase::Stopping
            | Phase::BackingOff
            | Phase::Conflict
    )
}

impl Planner<'_> {
    /// Adjusts the desired count from the disk figure.
    pub(super) fn scale(&mut self, observed: &Observed) {
        let counts = self.desired.counts;
        let target = counts.target.min(counts.max);
        if self.memory.applied_target != Some(target) {
            // A new target in the manifest replaces whatever scaling had set.
            self.memory.applied_target = Some(target);
            self.memory.desired_count = Some(target);
        }
        let mut wanted = self
            .memory
            .desired_count
            .unwrap_or(target)
            .clamp(counts.min, counts.max);
        let running = self
            .statuses
            .values()
            .filter(|s| occupies_slot(s.phase))
            .count() as u32;
        let sat = self.desired.scaling.disk.saturated_percent;
        let normal = self.desired.scaling.disk.normal_percent;
        // A stabilisation window in the Kubernetes HPA sense: no change of either direction
        // within the scale-down cooldown of a scale-down or the scale-up cooldown of a
        // scale-up, so an alternating disk moves the count at most once per window.
        let down_cd = self.desired.scaling.scale_down_cooldown.get();
        let up_cd = self.desired.scaling.scale_up_cooldown.get();
        let stable =
            |last: Option<BootTime>, cd: Duration| last.is_none_or(|t| self.since(t) >= cd);
        let stabilising = if !stable(self.memory.last_scale_down, down_cd) {
            Some(format!(
                "within the {} stabilisation window of the last scale-down",
                fmt_dur(down_cd)
            ))
        } else if !stable(self.memory.last_scale_up, up_cd) {
            Some(format!(
                "within the {} stabilisation window of the last scale-up",
                fmt_dur(up_cd)
            ))
        } else {
            None
        };
        // (the words; a key that names the kind of hold: each kind is logged once when it begins)
        let (text, hold): (String, Option<&'static str>) = match &observed.disk {
            _ if self.desired.runtime.kind == crate::manifest::RuntimeKind::Slurm => (
                format!(
                    "holding at {wanted}: disk scaling does not apply to a Slurm fleet (its busy disk is the shared file system's server, not this host's); change workers.target to change the count"
                ),
                Some("slurm"),
            ),
            DiskObservation::Unavailable { why } => (
                format!("holding at {wanted}: disk utilisation unavailable ({why})"),
                Some("unavailable"),
            ),
            DiskObservation::Warming { device } => (
                format!(
                    "holding at {wanted}: measuring {} (needs two readings)",
                    device.name
                ),
                Some("warming"),
            ),
            DiskObservation::Sample {
                device,
                util_percent,
                queue_depth,
            } => {
                let saturated = *util_percent >= sat
                    && (device.rotational != Some(false) || *queue_depth >= 1.0);
                let figure = format!(
                    "disk {} {util_percent:.0}% busy, queue {queue_depth:.1}",
                    device.name
                );
                if saturated {
                    match self.longest_stuck() {
                        None => (
                            format!(
                                "holding at {wanted}: {figure} ≥ {sat}% but no worker is stuck"
                            ),
                            Some("saturated, none stuck"),
                        ),
                        Some(_) if running <= counts.min => (
                            format!(
                                "holding at {wanted}: {figure} ≥ {sat}% but only {running} running (min {})",
                                counts.min
                            ),
                            Some("saturated, at min"),
                        ),
                        Some(_) if stabilising.is_some() => (
                            format!(
                                "holding at {wanted}: {figure} ≥ {sat}%; {}",
                                stabilising.as_deref().unwrap_or_default()
                            ),
                            Some("saturated, stabilising"),
                        ),
                        Some((id, stuck_for)) => {
                            wanted = running.saturating_sub(1).max(counts.min);
                            self.park(id, format!(
                                "scale down: {figure} ≥ {sat}% and worker {id} stuck (silent for {}); parking worker {id} (the longest stuck), {wanted} of target {target} will run",
                                fmt_dur(stuck_for)
                            ));
                            self.memory.last_scale_down = Some(self.now.boot);
                            self.memory.totals.scale_downs += 1;
                            (format!("scaled down to {wanted}: {figure}"), None)
                        }
                    }
                } else if *util_percent < normal && wanted < target {
                    if let Some(why) = &stabilising {
                        (
                            format!("holding at {wanted}: {figure} < {normal}%; {why}"),
                            Some("idle, stabilising"),
                        )
                    } else {
                        wanted += 1;
                        self.memory.last_scale_up = Some(self.now.boot);
                        self.memory.totals.scale_ups += 1;
                        self.events.push(format!(
                            "scale up: {figure} < {normal}%; {wanted} of target {target} will run"
                        ));
                        (format!("scaled up to {wanted}: {figure}"), None)
                    }
                } else {
                    (format!("holding at {wanted}: {figure}"), Some("steady"))
                }
            }
        };
        // Every kind of hold says why once (until the next scale change), not every pass nor
        // every time a flapping disk switches between two kinds.
        match hold {
            Some(key) => {
                if self.memory.scaling_holds.insert(key.to_string()) {
                    self.events.push(format!("scaling: {text}"));
                }
            }
            None => self.memory.scaling_holds.clear(),
        }
        self.scaling = text;
        self.memory.desired_count = Some(wanted);
        self.park_excess(wanted);
    }

    /// Parks running workers beyond `wanted` (a lowered target, or a lowered max), highest ids
    /// first: stopped with the stop grace, their shards resume later from their checkpoints.
    fn park_excess(&mut self, wanted: u32) {
        let mut running: Vec<WorkerId> = self
            .statuses
            .iter()
            .filter(|(id, s)| {
                occupies_slot(s.phase)
                    && s.phase != Phase::Stopping
                    && self
                        .memory
                        .workers
                        .get(*id)
                        .is_some_and(|w| w.process.is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        let excess = running.len().saturating_sub(wanted as usize);
        running.reverse();
        for id in running.into_iter().take(excess) {
            self.park(
                id,
                format!(
                    "scale down: {} wanted (target {}, max {}) and more run; parking worker {id} (the highest id), its shard resumes later from its checkpoint",
                    crate::text::counted(wanted, "worker", "workers"),
                    self.desired.counts.target,
                    self.desired.counts.max
                ),
            );
        }
    }

    /// The worker stuck the longest (ties: the highest id) and for how long.
    fn longest_stuck(&self) -> Option<(WorkerId, std::time::Duration)> {
        self.memory
            .workers
            .iter()
            .filter(|(id, w)| {
                w.process.is_some()
                    && w.stuck_since.is_some()
                    && self
                        .statuses
                        .get(*id)
                        .is_some_and(|s| matches!(s.phase, Phase::Stuck | Phase::Stopping))
            })
            .filter_map(|(id, w)| Some((*id, w.stuck_since?)))
            .min_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(id, since)| (id, self.since(since)))
    }

    /// Parks a running worker: stop without restart. A fix stop issued this pass becomes the
    /// park (its attempt is withdrawn: parking is not a fix).
    fn park(&mut self, id: WorkerId, reason: String) {
        let Some(mut w) = self.memory.workers.remove(&id) else {
            return;
        };
        if w.fixes.pending().is_some_and(|a| a.at == self.now.boot) {
            if let Some(a) = w.fixes.attempts.pop()
                && let Some(n) = self.memory.totals.fixes.get_mut(a.kind.name())
            {
                *n = n.saturating_sub(1);
            }
            self.actions.retain(|a| {
                !(a.worker() == id && matches!(a, Action::Stop(_) | Action::ApplyCodeFix(_)))
            });
            w.stopping = None;
            w.fixes.stage = None;
        }
        w.parked = Some(reason.clone());
        // Said once: as the stop's reason when there is a stop, else as an event.
        let actions = self.actions.len();
        self.stop_if_running(id, &mut w, reason.clone());
        if self.actions.len() == actions {
            self.events.push(reason.clone());
        }
        self.set(id, Phase::Stopping, reason);
        self.memory.workers.insert(id, w);
    }

    /// Set when every unfinished worker is paused or failed: nothing moves without an operator.
    pub(super) fn blocked(&self) -> Option<String> {
        let unfinished: Vec<(&WorkerId, &WorkerStatus)> = self
            .statuses
            .iter()
            .filter(|(_, s)| s.phase != Phase::Completed)
            .collect();
        let held: Vec<String> = unfinished
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Paused | Phase::Failed))
            .map(|(id, s)| format!("worker {id} {:?}", s.phase).to_lowercase())
            .collect();
        (!unfinished.is_empty() && held.len() == unfinished.len() && self.desired.shards.is_some())
            .then(|| {
                format!(
                    "nothing can progress without an operator: {}",
                    held.join(", ")
                )
            })
    }

    /// Starts workers up to the desired count: restarts first, then parked and resumed shards,
    /// then new ones. Paused and failed workers are never started. While `unsaved_state` says
    /// why the memory is not on disk, nothing starts (see [`Observed::unsaved_state`]).
    pub(super) fn schedule_starts(&mut self, unsaved_state: Option<&str>) {
        let counts = self.desired.counts;
        let desired_count = self
            .memory
            .desired_count
            .unwrap_or(counts.target)
            .min(counts.max) as usize;
        let occupied = self
            .statuses
            .values()
            .filter(|s| occupies_slot(s.phase))
            .count();
        let mut candidates: Vec<(u8, WorkerId)> = self
            .statuses
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Pending | Phase::Stopped | Phase::Parked))
            .filter(|(id, _)| !self.held.contains(*id))
            .map(|(id, _)| {
                let rank = match self.memory.workers.get(id) {
                    Some(w) if w.restart_reason.is_some() => 0,
                    Some(w) if w.parked.is_some() || w.checkpoint.is_some() => 1,
                    _ => 2,
                };
                (rank, *id)
            })
            .collect();
        candidates.sort();
        let free = desired_count.saturating_sub(occupied);
        if let Some(why) = unsaved_state {
            // A start that cannot be recorded could be taken for a stranger (or a duplicate) by
            // the next automon: hold every start, memory untouched, until a save succeeds.
            for (_, id) in candidates.into_iter().take(free) {
                if let Some(s) = self.statuses.get_mut(&id) {
                    s.reason = Reason::Text(format!(
                        "worker {id}: start held: automon's state is not saved ({why}); it starts once a save succeeds"
                    ));
                }
            }
            return;
        }
        for (_, id) in candidates.into_iter().take(free) {
            if self.stop_pending(id) {
                // Its old process group is being stopped: the start waits for the stop to
                // report (so the log says the old one went before the new one came), and keeps
                // its slot meanwhile.
                self.set(
                    id,
                    Phase::Stopping,
                    "waiting for the stop of its previous process to confirm its group is gone",
                );
                self.wake_in(std::time::Duration::from_millis(100));
                continue;
            }
            let shard = self.desired.shard(id);
            let from_words =
                self.resume_words(id, self.memory.workers.get(&id).and_then(|w| w.checkpoint));
            let w = self.memory.workers.entry(id).or_default();
            let resume_from = w.checkpoint;
            let params = self.desired.parameter_values(&w.params);
            let argv = render_argv(&self.desired.command, id, shard, resume_from, &params);
            let reason = match (w.restart_reason.take(), w.parked.take()) {
                (Some(r), _) => {
                    w.restarts += 1;
                    format!("{r} (restart {})", w.restarts)
                }
                (None, Some(_)) => format!(
                    "worker {id}: resuming parked shard {} {from_words}",
                    span(shard.map(|s| (s.start, s.end))),
                ),
                (None, None) => {
                    self.memory.totals.starts += 1;
                    let from = match (resume_from, shard) {
                        (Some(_), _) => format!("resuming {from_words}"),
                        (None, Some(s)) => format!("from {} {}", self.desired.unit, count(s.start)),
                        (None, None) => "fresh".into(),
                    };
                    format!(
                        "worker {id}: starting shard {} {from}",
                        span(shard.map(|s| (s.start, s.end)))
                    )
                }
            };
            let reason = if w.params.is_empty() {
                reason
            } else {
                let p: Vec<String> = w.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{reason} with {}", p.join(", "))
            };
            let reason = if w.differs.is_empty() {
                reason
            } else {
                // The adopted process ran otherwise; say what this start changes.
                format!(
                    "{reason}; as the manifest says, unlike the adopted process: {}",
                    std::mem::take(&mut w.differs).join("; ")
                )
            };
            w.backoff_until = None;
            self.statuses.insert(
                id,
                WorkerStatus {
                    phase: Phase::Starting,
                    reason: Reason::Text(reason.clone()),
                },
            );
            self.actions.push(Action::Start(StartAction {
                worker: id,
                argv,
                resume_from,
                reason,
            }));
        }
    }
}
