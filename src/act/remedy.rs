//! Glue between the planner's fix actions and the engines that carry them out: the LLM client
//! (its answer becomes a [`DiagnosisNote`]) and the code-fix engine (its outcome becomes a
//! [`CodeFixOutcome`]). No decisions here: the planner makes them from these reports.

use std::collections::BTreeSet;
use std::path::Path;

use crate::act::fix::{self, CodeFixPolicy, Outcome};
use crate::act::llm::{DiagnosisOutcome, FixRecord, FixType};
use crate::clock::BootTime;
use crate::plan::CodeFixOutcome;
use crate::plan::memory::{AppliedCode, DiagnosisNote, FixKind, WorkerMemory};

/// Directory (inside the state directory) where code-fix backups are kept.
pub const BACKUPS_DIR: &str = "backups";

/// An LLM answer as the planner remembers it (already validated and clamped by the client).
pub fn diagnosis_note(outcome: &DiagnosisOutcome, at: BootTime) -> DiagnosisNote {
    let d = &outcome.diagnosis;
    let fix = match d.fix_type {
        FixType::Restart => Some(FixKind::Restart),
        FixType::ConfigFix => Some(FixKind::ConfigFix),
        FixType::CodeFix => Some(FixKind::CodeFix),
        FixType::ScaleDown => None,
    };
    DiagnosisNote {
        at,
        root_cause: d.root_cause.clone(),
        fix,
        scale_down: d.fix_type == FixType::ScaleDown,
        params: d
            .config_changes
            .as_ref()
            .map(|c| c.values())
            .unwrap_or_default(),
        code_changes: d.code_changes.clone(),
        confidence: d.confidence,
        notes: outcome.notes.clone(),
        used: false,
    }
}

/// This worker's recent fixes and their results, for the prompt.
pub fn recent_fixes(w: &WorkerMemory) -> Vec<FixRecord> {
    w.fixes
        .attempts
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|a| FixRecord {
            fix_type: match a.kind {
                FixKind::Restart => FixType::Restart,
                FixKind::ConfigFix => FixType::ConfigFix,
                FixKind::CodeFix => FixType::CodeFix,
            },
            description: a.detail.clone(),
            result: a.result.as_ref().map_or_else(
                || "not verified yet".to_string(),
                |v| {
                    format!(
                        "{}: {}",
                        if v.succeeded { "succeeded" } else { "failed" },
                        v.detail
                    )
                },
            ),
        })
        .collect()
}

/// Parses and applies a proposed code change under the manifest's policy; backups go to
/// `state_dir/backups`. Never panics; every failure is a `Rejected` with the reason.
pub fn apply_code(
    policy: &CodeFixPolicy,
    state_dir: &Path,
    proposal: &str,
    applied: &BTreeSet<String>,
) -> CodeFixOutcome {
    // Checked before any matching: a huge proposal is refused at once (matching and diffing
    // megabytes takes seconds of CPU for a change that the line cap refuses anyway).
    let limit = proposal_limit(policy.max_changed_lines);
    if proposal.len() > limit {
        return CodeFixOutcome::Rejected(format!(
            "the proposal is {} bytes, more than {} for a fix of at most {} changed lines; refused before matching",
            proposal.len(),
            limit,
            policy.max_changed_lines
        ));
    }
    let parsed = match fix::parse_proposal(proposal) {
        Ok(p) => p,
        Err(e) => return CodeFixOutcome::Rejected(e.why),
    };
    match fix::apply_code_fix(
        policy,
        &parsed,
        &state_dir.join(BACKUPS_DIR),
        applied,
        false,
    ) {
        Ok(Outcome::Applied(a)) => CodeFixOutcome::Applied(AppliedCode {
            file: a.file,
            backup: a.backup,
            patch_hash: a.patch_hash,
        }),
        Ok(Outcome::AlreadyApplied { .. }) => CodeFixOutcome::AlreadyApplied,
        Ok(Outcome::DryRun { .. }) => {
            CodeFixOutcome::Rejected("the engine answered a dry run to a real apply".into())
        }
        Err(e) => CodeFixOutcome::Rejected(e.why),
    }
}

/// Settles a code fix an earlier automon sent to the engine and did not see finish (it was
/// killed with the worker's stage at `applying`, which is on disk before the engine runs): when
/// the proposal's change is in the file and the engine's backup of the original is in
/// `state_dir/backups` (named after the new content's hash, see
/// [`fix::write`](crate::act::fix)), the fix was applied: `Applied` with that backup, so the
/// attempt counts and is verified (and rolled back if it does not help) like any other.
/// Otherwise nothing was written: `Rejected` saying so, and the planner moves on to the
/// built-in fix.
pub fn recover_code(
    policy: &CodeFixPolicy,
    state_dir: &Path,
    proposal: &str,
    applied: &BTreeSet<String>,
) -> CodeFixOutcome {
    let not_applied = CodeFixOutcome::Rejected(
        "the automon that sent this code fix to the engine was stopped before the engine's outcome was saved, and the change is not in the file: nothing was applied".into(),
    );
    let Ok(parsed) = fix::parse_proposal(proposal) else {
        return not_applied;
    };
    let backups = state_dir.join(BACKUPS_DIR);
    let Ok(Outcome::AlreadyApplied { file, patch_hash }) =
        fix::apply_code_fix(policy, &parsed, &backups, &BTreeSet::new(), true)
    else {
        return not_applied;
    };
    if applied.contains(&patch_hash) {
        // Recorded before: this change is an earlier attempt's, not the lost one's.
        return not_applied;
    }
    let Ok(content) = std::fs::read(&file) else {
        return not_applied;
    };
    let sha8 = fix::sha256_hex(&content)[..8].to_string();
    let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return not_applied;
    };
    let backup = std::fs::read_dir(&backups).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{name}."))
                        && n.contains(&format!(".{sha8}."))
                        && n.ends_with(".bak")
                })
            })
            .max()
    });
    match backup {
        Some(backup) => CodeFixOutcome::Applied(AppliedCode {
            file,
            backup,
            patch_hash,
        }),
        None => not_applied,
    }
}

/// The most bytes a proposal may have: room for a function of a few hundred lines around
/// `max_changed_lines` changed ones (400 bytes a changed line, 32 KiB of context), far below
/// the megabytes that take the matcher seconds.
pub fn proposal_limit(max_changed_lines: u32) -> usize {
    32 * 1024 + 400 * max_changed_lines as usize
}

/// Restores `file` from `backup` (refused if the file changed since the fix).
///
/// # Errors
/// The engine's reason, in words.
pub fn rollback_code(code: &AppliedCode) -> Result<(), String> {
    let applied = fix::Applied {
        file: code.file.clone(),
        backup: code.backup.clone(),
        patch_hash: code.patch_hash.clone(),
        diff: String::new(),
        changed_lines: 0,
    };
    fix::rollback(&applied).map_err(|e| e.why)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir with `w.py` (`def f(): return 1`) and a policy that may fix it.
    fn one_file_policy() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        &'static str,
        CodeFixPolicy,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("w.py");
        let original = "def f():\n    return 1\n";
        std::fs::write(&file, original).expect("write");
        let policy = CodeFixPolicy {
            files: vec![file.clone()],
            workdir: dir.path().to_path_buf(),
            interpreter: "python3".into(),
            test_command: None,
            max_changed_lines: 50,
            env: None,
            redactor: crate::secrets::Redactor::default(),
        };
        (dir, file, original, policy)
    }

    /// Regression (fresh-clone user test): automon killed after the engine wrote a code fix and
    /// before the outcome (with the backup's path) was saved lost the attempt, and the changed
    /// file stayed with no record to roll it back by. The next automon finds the change and
    /// the backup and reports the fix as applied, so the attempt counts and can be rolled back.
    #[test]
    fn a_code_fix_applied_by_a_killed_automon_is_found_with_its_backup() {
        let (dir, file, original, policy) = one_file_policy();
        let proposal =
            "# file: w.py\n<<<<<<< SEARCH\n    return 1\n=======\n    return 2\n>>>>>>> REPLACE\n";
        let state = dir.path().join("state");
        // Nothing applied yet: nothing to recover, the file untouched.
        match recover_code(&policy, &state, proposal, &BTreeSet::new()) {
            CodeFixOutcome::Rejected(why) => assert!(why.contains("nothing was applied"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&file).expect("read"), original);
        // The engine applies it; its outcome is lost with the automon.
        let CodeFixOutcome::Applied(lost) = apply_code(&policy, &state, proposal, &BTreeSet::new())
        else {
            panic!("the engine refused the fix");
        };
        match recover_code(&policy, &state, proposal, &BTreeSet::new()) {
            CodeFixOutcome::Applied(found) => assert_eq!(found, lost),
            other => panic!("{other:?}"),
        }
        // Already recorded (its hash among the applied patches): not the lost attempt.
        let recorded = BTreeSet::from([lost.patch_hash.clone()]);
        assert!(matches!(
            recover_code(&policy, &state, proposal, &recorded),
            CodeFixOutcome::Rejected(_)
        ));
    }

    #[test]
    fn a_huge_proposal_is_refused_before_matching_and_the_file_is_untouched() {
        let (dir, file, original, policy) = one_file_policy();
        // 2.8 MB of plausible edit blocks: once matched and diffed for 16.7 s.
        let block = "<<<<<<< SEARCH\n    return 1\n=======\n    return 2\n>>>>>>> REPLACE\n";
        let huge = format!("# file: w.py\n{}", block.repeat(2_800_000 / block.len()));
        let outcome = apply_code(&policy, dir.path(), &huge, &BTreeSet::new());
        match outcome {
            CodeFixOutcome::Rejected(why) => {
                assert!(why.contains("refused before matching"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // Refused by its size alone (the reason says so): no matching ran.
        assert_eq!(std::fs::read_to_string(&file).expect("read"), original);
    }
}
