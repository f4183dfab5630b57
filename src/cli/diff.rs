//! `automon diff FILE`: what would change, acting on nothing — (a) the manifest against the one
//! last applied, as a unified diff of the normalised YAML; (b) the actions the next pass would
//! take, each with its reason; and every worker's phase. Exit 0 when there is no difference,
//! 1 when there is, 2 on error (kubectl's convention).

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::CliError;
use crate::plan;

/// Arguments of `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = DiffFormat::Text)]
    pub output: DiffFormat,
    /// Command-line overrides of manifest fields (preview what `apply` with them would do).
    #[command(flatten)]
    pub overrides: super::apply::OverrideArgs,
}

/// Output formats of `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

/// Everything `diff` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    /// Overrides given on the command line, in words.
    pub overrides: Vec<String>,
    /// The setup the next `apply` would run first, if any.
    pub setup: Option<super::PendingSetup>,
    /// `None` when the manifest was never applied; else the unified diff (empty: unchanged).
    pub manifest_diff: Option<String>,
    /// Every worker: id, phase, reason.
    pub workers: Vec<WorkerLine>,
    /// Facts noticed (unreadable files, adoptions, completions).
    pub notes: Vec<String>,
    /// The scaling decision.
    pub scaling: String,
    /// The actions the next pass would take.
    pub actions: Vec<ActionLine>,
    /// Adopted workers that run otherwise than the manifest says (their next restart
    /// applies the manifest), one line each; secret values not shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differs: Vec<String>,
}

/// One worker in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerLine {
    /// Worker id.
    pub worker: u32,
    /// Phase name.
    pub phase: String,
    /// Why.
    pub reason: String,
}

/// One action in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionLine {
    /// `start`, `stop`, `diagnose`, `code-fix`, `rollback`.
    pub action: String,
    /// Worker id.
    pub worker: u32,
    /// Why.
    pub reason: String,
}

impl DiffReport {
    /// True when the manifest changed, the next pass would act, or an adopted worker runs
    /// otherwise than the manifest says.
    pub fn differs(&self) -> bool {
        self.manifest_diff.as_ref().is_none_or(|d| !d.is_empty())
            || !self.actions.is_empty()
            || self.setup.is_some()
            || !self.differs.is_empty()
    }
}

/// Runs `diff`.
pub fn run(args: &DiffArgs) -> Result<u8, CliError> {
    let as_diff_error = |e: CliError| CliError {
        code: 2,
        message: e.message,
    };
    let (manifest, overridden) = super::load_manifest_with(&args.file, &args.overrides.overrides())
        .map_err(as_diff_error)?;
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    let (desired, setup) = super::resolve_for_showing(&manifest).map_err(as_diff_error)?;
    let report = build_report(&desired, &state_dir, overridden, setup).map_err(as_diff_error)?;
    let text = match args.output {
        DiffFormat::Text => render(&report),
        DiffFormat::Json => {
            serde_json::to_string_pretty(&report).map_err(|e| CliError {
                code: 2,
                message: e.to_string(),
            })? + "\n"
        }
    };
    super::emit(&text).map_err(|e| CliError {
        code: 2,
        message: e.message,
    })?;
    Ok(u8::from(report.differs()))
}

/// Observes and plans once, acting on nothing; returns the memory it planned from and the plan.
pub(crate) fn plan_once(
    desired: &crate::manifest::Desired,
    state_dir: &Path,
    setup: Option<&super::PendingSetup>,
    reset_state: bool,
) -> Result<(plan::Memory, plan::Plan), CliError> {
    // `apply --reset-state` starts from empty memory (running workers are still adopted by
    // the `/proc` scan): its dry run plans from the same, not from the state it moves aside.
    // While a loop runs, its memory (what it runs and knows now), not the state file.
    let (memory, loop_disk) = if reset_state {
        (plan::Memory::default(), None)
    } else {
        match crate::control::client::view(state_dir).map_err(CliError::runtime)? {
            Some(view) => (view.memory, view.disk),
            None => (
                crate::state::load_memory(state_dir)
                    .map_err(|e| CliError::runtime(e.to_string()))?,
                None,
            ),
        }
    };
    if setup.is_some_and(|s| s.range_after)
        && (memory.range.is_some() || !memory.workers.is_empty())
    {
        // A migration is recorded but its range cannot be read: no plan can be shown.
        return Err(CliError::runtime(format!(
            "{}: the key range is read after setup, which has not run here, but {} records a migration; `automon apply {}` runs setup first",
            desired.manifest_file.display(),
            state_dir.join("state.json").display(),
            desired.manifest_file.display()
        )));
    }
    let (observed, now) = super::observe_once_with(desired, &memory, state_dir, true, loop_disk);
    let plan = super::plan_shown(desired, &observed, &memory, now, state_dir)?;
    Ok((memory, plan))
}

/// Observes and plans once (acting on nothing) and compares the manifest with the last-applied.
pub(crate) fn build_report(
    desired: &crate::manifest::Desired,
    state_dir: &Path,
    overrides: Vec<String>,
    setup: Option<super::PendingSetup>,
) -> Result<DiffReport, CliError> {
    let (memory, plan) = plan_once(desired, state_dir, setup.as_ref(), false)?;
    let mut report = report_from(desired, &memory, &plan, overrides, setup);
    let stale = crate::control::previous_template(desired, &memory);
    report.notes.extend(
        stale
            .iter()
            .map(|id| crate::control::previous_template_note(*id, &memory)),
    );
    report.notes.push(match crate::state::running_instance(state_dir) {
        Some(i) => format!(
            "compared with the manifest the running loop (pid {}) runs; `automon apply` hands this one to it",
            i.pid
        ),
        None if state_dir.join("state.json").exists() => {
            "no loop running: compared with the last-applied manifest in the state directory".into()
        }
        None => "no loop running, and nothing applied yet: `automon apply` starts the migration".into(),
    });
    Ok(report)
}

/// The reason shown for a start planned on the provisional range of a setup that has not run:
/// which worker and shard, not the made-up bounds.
fn start_before_setup(desired: &crate::manifest::Desired, worker: crate::WorkerId) -> String {
    let n = desired.shards.as_ref().map_or(0, Vec::len);
    format!("worker {worker}: starting shard {worker} of {n} (range known after setup)")
}

/// The report of one plan.
fn report_from(
    desired: &crate::manifest::Desired,
    memory: &plan::Memory,
    plan: &plan::Plan,
    overrides: Vec<String>,
    setup: Option<super::PendingSetup>,
) -> DiffReport {
    let manifest_diff = memory
        .last_applied
        .as_ref()
        .map(|old| unified(old, &desired.normalized));
    let range_after = setup.as_ref().is_some_and(|s| s.range_after);
    let reason_of = |a: &plan::Action| {
        if range_after && matches!(a, plan::Action::Start(_)) {
            start_before_setup(desired, a.worker())
        } else {
            a.reason().to_string()
        }
    };
    DiffReport {
        overrides,
        setup,
        manifest_diff,
        workers: plan
            .workers
            .iter()
            .map(|(id, s)| WorkerLine {
                worker: id.0,
                phase: format!("{:?}", s.phase),
                reason: if range_after && s.phase == plan::Phase::Starting {
                    start_before_setup(desired, *id)
                } else {
                    s.reason.to_string()
                },
            })
            .collect(),
        notes: plan.events.clone(),
        differs: plan
            .memory
            .workers
            .iter()
            .filter(|(_, w)| !w.differs.is_empty())
            .map(|(id, w)| differs_line(*id, w))
            .collect(),
        scaling: plan.scaling.clone(),
        actions: plan
            .actions
            .iter()
            .map(|a| ActionLine {
                action: a.verb().into(),
                worker: a.worker().0,
                reason: reason_of(a),
            })
            .collect(),
    }
}

/// A unified diff from the last-applied manifest to this one; empty when equal. Secret values
/// show as `[REDACTED]`, a changed one as `[REDACTED] (changed)` (see
/// [`crate::secrets::env::for_display`]).
pub fn unified(old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let (old, new) = crate::secrets::env::for_display(old, new);
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header("last applied", "this manifest")
        .to_string()
}

/// The report for people.
pub fn render(report: &DiffReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for o in &report.overrides {
        let _ = writeln!(out, "override: {o}");
    }
    if let Some(setup) = &report.setup {
        let _ = writeln!(out, "{}", setup.describe());
    }
    match &report.manifest_diff {
        None => out.push_str("manifest: never applied (no state yet)\n"),
        Some(d) if d.is_empty() => out.push_str("manifest: unchanged since the last apply\n"),
        Some(d) => {
            out.push_str("manifest: changed since the last apply:\n");
            out.push_str(d);
            if !d.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    let _ = writeln!(out, "\n{:<6} {:<12} REASON", "WORKER", "PHASE");
    for w in &report.workers {
        // The WORKER column names it: a reason's own "worker N: " is not said again.
        let prefix = format!("worker {}: ", w.worker);
        let reason = w.reason.strip_prefix(&prefix).unwrap_or(&w.reason);
        let _ = writeln!(out, "{:<6} {:<12} {reason}", w.worker, w.phase);
    }
    let _ = writeln!(out, "\nscaling: {}", report.scaling);
    for n in &report.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for d in &report.differs {
        let _ = writeln!(out, "differs: {d}");
    }
    if report.actions.is_empty() && !report.differs.is_empty() {
        out.push_str("\nno actions; the adopted workers above run otherwise than the manifest says until their next restart\n");
    } else if report.actions.is_empty() {
        out.push_str("\nno actions: the workers match the manifest\n");
    } else {
        out.push_str("\nactions the next pass would take:\n");
        for a in &report.actions {
            // Most reasons name their worker already ("worker 1: starting …", "worker 2
            // exited …"): said once.
            let who = format!("worker {}", a.worker);
            let named = a
                .reason
                .strip_prefix(&who)
                .is_some_and(|rest| rest.starts_with([' ', ':']));
            if named {
                let _ = writeln!(out, "  {:<8} {}", a.action, a.reason);
            } else {
                let _ = writeln!(out, "  {:<8} {who}: {}", a.action, a.reason);
            }
        }
    }
    out
}

/// Prints the plan of one pass (for `apply --dry-run`); returns 0 (no actions) or 1.
pub(crate) fn print_plan(
    desired: &crate::manifest::Desired,
    state_dir: &Path,
    setup: Option<super::PendingSetup>,
    reset_state: bool,
) -> Result<u8, CliError> {
    if reset_state && state_dir.join("state.json").exists() {
        crate::outln!(
            "--reset-state: {} would be moved aside (kept) and the plan below starts from empty memory; running workers are adopted",
            state_dir.join("state.json").display()
        );
    }
    let (memory, plan) = plan_once(desired, state_dir, setup.as_ref(), reset_state)?;
    let report = report_from(desired, &memory, &plan, Vec::new(), setup);
    crate::stdio::out(&render(&report));
    for a in &plan.actions {
        if let plan::Action::ApplyCodeFix(fix) = a {
            crate::outln!("{}", propose_code_fix(desired, state_dir, &memory, fix));
        }
    }
    Ok(u8::from(
        !report.actions.is_empty() || report.setup.is_some(),
    ))
}

/// Dry run of a code fix: the engine checks the proposal and builds the patch without writing
/// the file; the patch goes to `STATE_DIR/proposed/` and the fix history as a unified diff.
fn propose_code_fix(
    desired: &crate::manifest::Desired,
    state_dir: &Path,
    memory: &plan::Memory,
    fix: &plan::CodeFixAction,
) -> String {
    use crate::act::fix;
    let policy = fix::CodeFixPolicy::from_desired(desired);
    let outcome = fix::parse_proposal(&fix.proposal).and_then(|p| {
        fix::apply_code_fix(
            &policy,
            &p,
            &state_dir.join(crate::act::remedy::BACKUPS_DIR),
            &memory.applied_patches,
            true,
        )
    });
    let (detail, diff) = match outcome {
        Ok(fix::Outcome::DryRun { file, diff, .. }) => (
            format!("dry run: proposed code fix to {}", file.display()),
            Some(diff),
        ),
        Ok(fix::Outcome::AlreadyApplied { file, .. }) => (
            format!(
                "dry run: the proposed code fix is already in {}",
                file.display()
            ),
            None,
        ),
        Ok(fix::Outcome::Applied(a)) => (
            format!("dry run: unexpected write to {}", a.file.display()),
            None,
        ),
        Err(e) => (
            format!(
                "dry run: the proposed code fix would be rejected: {}",
                e.why
            ),
            None,
        ),
    };
    let mut written = String::new();
    if let Some(diff) = &diff {
        let dir = state_dir.join("proposed");
        let stamp = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%S%.3fZ")
            .to_string();
        let path = dir.join(format!("{stamp}-worker{}.diff", fix.worker));
        match crate::state::private::ensure_dir(&dir)
            .and_then(|()| crate::state::private::write(&path, diff.as_bytes()))
        {
            Ok(()) => written = format!(" (patch written to {})", path.display()),
            Err(e) => written = format!(" (cannot write {}: {e})", path.display()),
        }
    }
    crate::state::FixHistory::open(state_dir).append(&crate::state::HistoryRecord {
        record: "code_fix".into(),
        at: jiff::Timestamp::now(),
        worker: fix.worker,
        kind: Some("code_fix".into()),
        attempt: None,
        detail: format!("{detail}{written}"),
        checkpoint: memory.workers.get(&fix.worker).and_then(|w| w.checkpoint),
        succeeded: None,
        analysis: diff.clone().map(serde_json::Value::String),
    });
    format!("{detail}{written}\n{}", diff.unwrap_or_default())
}

/// `worker 3 (pid 4242, adopted) differs from the manifest: …; its next restart applies the
/// manifest` (`job 360` for a Slurm job), for `diff` and `get`.
pub(crate) fn differs_line(id: crate::WorkerId, w: &plan::WorkerMemory) -> String {
    let pid = w.process.as_ref().map_or_else(String::new, |p| {
        format!(" ({}, adopted)", crate::runtime::Handle::of(&p.identity))
    });
    format!(
        "worker {id}{pid} differs from the manifest: {}; its next restart applies the manifest",
        w.differs.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(manifest_diff: Option<String>, actions: Vec<ActionLine>) -> DiffReport {
        DiffReport {
            overrides: vec!["interval 1m → 5s (--check-interval)".into()],
            setup: None,
            manifest_diff,
            workers: vec![
                WorkerLine { worker: 0, phase: "Progressing".into(), reason: "pid 4242 at book 1,204; 12s since the last progress".into() },
                WorkerLine { worker: 1, phase: "Pending".into(), reason: "waiting for a free slot".into() },
            ],
            notes: vec!["worker 3: progress file unreadable: truncated JSON; keeping the last good checkpoint 900".into()],
            scaling: "holding at 4: disk vda 12% busy, queue 0.1".into(),
            actions,
            differs: Vec::new(),
        }
    }

    #[test]
    fn never_applied_with_actions() {
        let r = report(
            None,
            vec![ActionLine {
                action: "start".into(),
                worker: 1,
                reason: "worker 1: starting shard [269, 538) from book 269".into(),
            }],
        );
        assert!(r.differs());
        insta::assert_snapshot!(render(&r));
    }

    #[test]
    fn manifest_changed_target() {
        let old = "spec:\n  workers:\n    target: 4\n    min: 1\n    max: 8\n";
        let new = "spec:\n  workers:\n    target: 6\n    min: 1\n    max: 8\n";
        let r = report(Some(unified(old, new)), vec![]);
        assert!(r.differs());
        insta::assert_snapshot!(render(&r));
    }

    #[test]
    fn nothing_to_do() {
        let r = report(Some(String::new()), vec![]);
        assert!(!r.differs());
        insta::assert_snapshot!(render(&r));
    }
}
