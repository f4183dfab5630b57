//! How many workers run, and which: scaling on disk utilisation, then filling free slots.

use super::*;

impl Planner<'_> {
    /// Starts workers up to the desired count: restarts first, then resumed shards, then new ones.
    pub(super) fn schedule_starts(&mut self) {
        let desired_count = self.desired.counts.target.min(self.desired.counts.max) as usize;
        let occupied = self
            .statuses
            .values()
            .filter(|s| {
                matches!(
                    s.phase,
                    Phase::Discovering
                        | Phase::Progressing
                        | Phase::Stuck
                        | Phase::Stopping
                        | Phase::BackingOff
                )
            })
            .count();
        let mut candidates: Vec<(u8, WorkerId)> = self
            .statuses
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Pending | Phase::Stopped))
            .map(|(id, _)| {
                let w = self.memory.workers.get(id);
                let rank = match w {
                    Some(w) if w.restart_reason.is_some() => 0,
                    Some(w) if w.checkpoint.is_some() => 1,
                    _ => 2,
                };
                (rank, *id)
            })
            .collect();
        candidates.sort();
        let free = desired_count.saturating_sub(occupied);
        for (_, id) in candidates.into_iter().take(free) {
            let shard = self.desired.shard(id);
            let w = self.memory.workers.entry(id).or_default();
            let resume_from = w.checkpoint;
            let params = self.desired.parameter_values(&BTreeMap::new());
            let argv = render_argv(&self.desired.command, id, shard, resume_from, &params);
            let reason = match w.restart_reason.take() {
                Some(r) => {
                    w.restarts += 1;
                    format!("{r} (restart {})", w.restarts)
                }
                None => {
                    self.memory.totals.starts += 1;
                    let from = match (resume_from, shard) {
                        (Some(c), _) => format!("resuming from checkpoint {}", count(c)),
                        (None, Some(s)) => format!("from {} {}", self.desired.unit, count(s.start)),
                        (None, None) => "fresh".into(),
                    };
                    format!(
                        "worker {id}: starting shard {} {from}",
                        span(shard.map(|s| (s.start, s.end)))
                    )
                }
            };
            w.backoff_until = None;
            self.statuses.insert(
                id,
                WorkerStatus {
                    phase: Phase::Starting,
                    reason: reason.clone(),
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
