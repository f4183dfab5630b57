//! The fix pipeline over every LLM outcome, by time travel on the real planner (no sleeps):
//! whatever the LLM (and the fix engine after it) does, a stuck worker is running again from its
//! checkpoint within one pass of the outcome, the attempt counter moves only for fixes that were
//! applied, and the events name the rule that decided.

use super::memory::{DiagnosisNote, FixKind, FixStage};
use super::sim_tests::{Sim, started};
use super::tests::{starts, stops};
use super::*;
use crate::act::llm::diagnosis::parse_answer;
use crate::act::llm::{DiagnosisOutcome, FixPolicy};

/// LLM on (60 s timeout, 60 s interval), code and config fixes allowed.
const EXTRA: &str = "  fixes: {cooldown: 10m, verify_after: 2m, max_attempts: 3, code: {enabled: true, files: [w.py]}}\n  llm: {enabled: true, timeout: 60s}\n";

/// What the LLM, then the fix engine, does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Timeout,
    Http500,
    UnusableJson,
    UnknownFixType,
    RefusedCodeFix,
    RefusedConfigFix,
    AppliedFailsThenRollsBack,
    AppliedHelps,
}

/// A raw model answer, validated as the client does.
fn answer(sim: &Sim, content: &str) -> Result<DiagnosisNote, String> {
    let policy = FixPolicy::from_desired(&sim.d);
    parse_answer(content, &policy)
        .map(|(diagnosis, notes)| {
            let outcome = DiagnosisOutcome {
                diagnosis,
                notes,
                model: "stand-in".into(),
                cached: false,
            };
            crate::act::remedy::diagnosis_note(&outcome, sim.now().boot)
        })
        .map_err(|e| format!("LLM answer unusable: {e}"))
}

const CODE_FIX: &str = r##"{"root_cause": "discover_batch never advances its cursor", "fix_type": "code_fix", "fix_description": "advance the cursor", "confidence": 0.9, "code_changes": "# file: w.py\n<<<<<<< SEARCH\n    return start\n=======\n    return end\n>>>>>>> REPLACE\n", "config_changes": null}"##;

/// One pass `secs` later; worker 1 keeps making progress, worker 0 does not.
fn step(sim: &mut Sim, secs: u64) -> Plan {
    sim.advance(secs);
    let c1 = sim.checkpoints[&WorkerId(1)] + 1;
    sim.progress(1, c1);
    sim.pass()
}

fn events(p: &Plan) -> String {
    p.events.join("\n")
}

fn stop_reason(p: &Plan, id: u32) -> String {
    p.actions
        .iter()
        .find(|a| matches!(a, Action::Stop(_)) && a.worker() == WorkerId(id))
        .map(|a| a.reason().to_string())
        .unwrap_or_default()
}

fn resume_of(p: &Plan, id: u32) -> Option<u64> {
    p.actions.iter().find_map(|a| match a {
        Action::Start(s) if s.worker == WorkerId(id) => s.resume_from,
        _ => None,
    })
}

/// Runs worker 0 into a stuck spell until the planner asks the LLM about it.
fn until_asked(sim: &mut Sim, log: &mut String) -> Plan {
    for _ in 0..60 {
        let p = step(sim, 10);
        log.push_str(&events(&p));
        assert!(!stops(&p).contains(&0), "no fix before the LLM is asked");
        if p.actions
            .iter()
            .any(|a| matches!(a, Action::Diagnose(d) if d.worker == WorkerId(0)))
        {
            return p;
        }
    }
    panic!("worker 0 was never found stuck");
}

/// The stop of the pass after an outcome, and the start from checkpoint 20 of the pass after
/// that; returns the stop's reason.
fn restarted_within_one_pass(sim: &mut Sim, p: &Plan, case: Outcome) -> String {
    assert!(
        stops(p).contains(&0),
        "{case:?}: no stop of worker 0 in the pass after the outcome:\n{p:#?}"
    );
    let reason = stop_reason(p, 0);
    let next = step(sim, 1);
    assert!(starts(&next).contains(&0), "{case:?}: not started again");
    assert_eq!(
        resume_of(&next, 0),
        Some(20),
        "{case:?}: resumes from its checkpoint"
    );
    reason
}

#[test]
fn every_llm_outcome_ends_in_a_restart_or_an_applied_fix_within_one_pass() {
    use Outcome::*;
    // (outcome, the rule the events must name, the kinds of attempts counted)
    let table: &[(Outcome, &str, &[FixKind])] = &[
        (Timeout, "no LLM outcome", &[FixKind::Restart]),
        (
            Http500,
            "a failed diagnosis is an outcome",
            &[FixKind::Restart],
        ),
        (
            UnusableJson,
            "a failed diagnosis is an outcome",
            &[FixKind::Restart],
        ),
        (UnknownFixType, "is not one of", &[FixKind::Restart]),
        (
            RefusedCodeFix,
            "a refused proposal is not a fix attempt",
            &[FixKind::Restart],
        ),
        (
            RefusedConfigFix,
            "below llm.min_confidence",
            &[FixKind::Restart],
        ),
        (
            AppliedFailsThenRollsBack,
            "failed verification",
            &[FixKind::CodeFix],
        ),
        (AppliedHelps, "verifying → kept", &[FixKind::CodeFix]),
    ];
    for &(case, rule, kinds) in table {
        let mut sim = started(EXTRA);
        let mut log = String::new();
        let asked = until_asked(&mut sim, &mut log);
        let t_asked = sim.t;
        assert!(
            matches!(
                sim.m.workers[&WorkerId(0)].fixes.stage,
                Some(FixStage::Asked { .. })
            ),
            "{case:?}"
        );
        let record = |sim: &mut Sim, log: &mut String, outcome: Result<DiagnosisNote, String>| {
            let now = sim.now();
            log.push_str(&record_diagnosis(&mut sim.m, WorkerId(0), outcome, now));
            log.push('\n');
        };
        let after = match case {
            Timeout => {
                // No outcome ever comes: the planner's own deadline (timeout + interval).
                let mut last = asked;
                loop {
                    let wait = last.requeue_after.as_secs().max(1);
                    last = step(&mut sim, wait);
                    log.push_str(&events(&last));
                    if stops(&last).contains(&0) {
                        break;
                    }
                    assert!(sim.t - t_asked <= 120, "{case:?}: still waiting");
                }
                assert!(sim.t - t_asked <= 120, "within llm.timeout + one interval");
                last
            }
            Http500 => {
                record(
                    &mut sim,
                    &mut log,
                    Err("LLM server answered HTTP 500: model crashed".into()),
                );
                step(&mut sim, 1)
            }
            UnusableJson => {
                let a = answer(&sim, "I think the worker is stuck, try restarting it.");
                assert!(a.is_err());
                record(&mut sim, &mut log, a);
                step(&mut sim, 1)
            }
            UnknownFixType => {
                let a = answer(
                    &sim,
                    r#"{"root_cause": "x", "fix_type": "reboot_machine", "fix_description": "", "confidence": 0.9, "code_changes": null, "config_changes": null}"#,
                );
                record(&mut sim, &mut log, a);
                step(&mut sim, 1)
            }
            RefusedConfigFix => {
                let a = answer(
                    &sim,
                    r#"{"root_cause": "too many uploads", "fix_type": "config_fix", "fix_description": "", "confidence": 0.2, "code_changes": null, "config_changes": {"parallel_uploads": 2}}"#,
                );
                record(&mut sim, &mut log, a);
                step(&mut sim, 1)
            }
            RefusedCodeFix | AppliedFailsThenRollsBack | AppliedHelps => {
                let a = answer(&sim, CODE_FIX);
                record(&mut sim, &mut log, a);
                let p = step(&mut sim, 1);
                log.push_str(&events(&p));
                assert!(
                    p.actions
                        .iter()
                        .any(|a| matches!(a, Action::ApplyCodeFix(_))),
                    "{case:?}: the code fix goes to the engine"
                );
                assert!(
                    sim.m.workers[&WorkerId(0)].fixes.attempts.is_empty(),
                    "{case:?}: not an attempt before it is applied"
                );
                let outcome = if case == RefusedCodeFix {
                    CodeFixOutcome::Rejected("the SEARCH text is not in w.py".into())
                } else {
                    CodeFixOutcome::Applied(memory::AppliedCode {
                        file: "/tmp/t/w.py".into(),
                        backup: "/s/backups/w.py.bak".into(),
                        patch_hash: "h1".into(),
                    })
                };
                let now = sim.now();
                let d = sim.d.clone();
                log.push_str(&record_code_fix(&mut sim.m, &d, WorkerId(0), outcome, now));
                step(&mut sim, 1)
            }
        };
        log.push_str(&events(&after));
        let reason = restarted_within_one_pass(&mut sim, &after, case);
        if matches!(case, AppliedFailsThenRollsBack | AppliedHelps) {
            // Every worker that runs the file restarts on it, from its checkpoint.
            assert!(stops(&after).contains(&1), "{case:?}: {after:#?}");
            assert!(reason.contains("the code file it runs changed"), "{reason}");
        } else {
            assert!(
                reason.contains("restart from checkpoint 20"),
                "{case:?}: {reason}"
            );
        }
        match case {
            AppliedHelps => {
                sim.progress(0, 25);
                let mut verified = 0;
                for _ in 0..14 {
                    let p = step(&mut sim, 10);
                    log.push_str(&events(&p));
                    verified += p.events.iter().filter(|e| e.contains("verified")).count();
                }
                assert_eq!(verified, 1, "{case:?}: verified exactly once\n{log}");
                assert_eq!(
                    sim.m.workers[&WorkerId(0)].fixes.stage,
                    Some(FixStage::Kept { n: 1 })
                );
            }
            AppliedFailsThenRollsBack => {
                // The verification clock starts at the new process: 2 minutes after it.
                let mut rollback = None;
                for _ in 0..14 {
                    let p = step(&mut sim, 10);
                    log.push_str(&events(&p));
                    if let Some(Action::RollbackCodeFix(r)) = p
                        .actions
                        .iter()
                        .find(|a| matches!(a, Action::RollbackCodeFix(_)))
                    {
                        rollback = Some(r.clone());
                        break;
                    }
                }
                let r = rollback.expect("rolled back after a failed verification");
                let m = record_rollback(&mut sim.m, r.worker, &r.patch_hash, Ok(()));
                assert!(
                    m.contains("restarting from their checkpoints the workers that started on the patched file: 0, 1"),
                    "{m}"
                );
                let p = step(&mut sim, 1);
                assert_eq!(stops(&p), [0, 1], "both leave the rolled-back code");
                let c1 = sim.m.workers[&WorkerId(1)].checkpoint;
                let p = step(&mut sim, 1);
                assert_eq!(starts(&p), [0, 1]);
                assert_eq!(resume_of(&p, 0), Some(20));
                assert_eq!(resume_of(&p, 1), c1.map(|c| c + 1));
                log.push_str(&m);
            }
            _ => {}
        }
        let w = &sim.m.workers[&WorkerId(0)];
        let counted: Vec<FixKind> = w.fixes.attempts.iter().map(|a| a.kind).collect();
        assert_eq!(
            counted, kinds,
            "{case:?}: only applied fixes are attempts\n{log}"
        );
        assert!(
            log.contains(rule),
            "{case:?}: the events name the rule {rule:?}:\n{log}"
        );
        assert!(
            !log.contains("failed verification") || case == AppliedFailsThenRollsBack,
            "{case:?}: a refusal is not a failed verification\n{log}"
        );
    }
}

#[test]
fn a_rejected_code_fix_is_a_rejection_not_a_failed_verification_and_costs_no_attempt() {
    let mut sim = started(EXTRA);
    let mut log = String::new();
    until_asked(&mut sim, &mut log);
    let a = answer(&sim, CODE_FIX);
    let now = sim.now();
    record_diagnosis(&mut sim.m, WorkerId(0), a, now);
    step(&mut sim, 1);
    let now = sim.now();
    let d = sim.d.clone();
    let m = record_code_fix(
        &mut sim.m,
        &d,
        WorkerId(0),
        CodeFixOutcome::Rejected("applied before".into()),
        now,
    );
    assert!(m.contains("applying → refused"), "{m}");
    let w = &sim.m.workers[&WorkerId(0)];
    assert_eq!(w.fixes.failed_in_row, 0);
    assert!(w.fixes.attempts.is_empty());
    assert_eq!(sim.m.totals.fixes_failed, 0);
}

#[test]
fn a_late_llm_answer_after_the_built_in_fix_is_not_used() {
    let mut sim = started(EXTRA);
    let mut log = String::new();
    let mut last = until_asked(&mut sim, &mut log);
    while !stops(&last).contains(&0) {
        let wait = last.requeue_after.as_secs().max(1);
        last = step(&mut sim, wait);
    }
    let a = answer(&sim, CODE_FIX);
    let now = sim.now();
    let m = record_diagnosis(&mut sim.m, WorkerId(0), a, now);
    assert!(m.contains("not used"), "{m}");
    let p = step(&mut sim, 1);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::ApplyCodeFix(_)))
    );
}

#[test]
fn an_llm_scale_down_parks_the_worker_within_the_scaling_rules_or_says_why_not() {
    let mut sim = started(EXTRA);
    let mut log = String::new();
    until_asked(&mut sim, &mut log);
    let scale_down = r#"{"root_cause": "disk saturated", "fix_type": "scale_down", "fix_description": "", "confidence": 0.8, "code_changes": null, "config_changes": null}"#;
    let a = answer(&sim, scale_down);
    let now = sim.now();
    record_diagnosis(&mut sim.m, WorkerId(0), a, now);
    let p = step(&mut sim, 1);
    let reason = stop_reason(&p, 0);
    assert!(reason.contains("parking worker 0"), "{reason}");
    assert!(reason.contains("scale_down is honoured"), "{reason}");
    assert_eq!(sim.m.desired_count, Some(1));
    assert!(sim.m.workers[&WorkerId(0)].parked.is_some());
    assert!(
        sim.m.workers[&WorkerId(0)].fixes.attempts.is_empty(),
        "parking is not a fix"
    );

    // At min already: not honoured; a restart instead, and the event says why.
    let mut sim = started(EXTRA);
    sim.m.desired_count = Some(1);
    let mut log = String::new();
    until_asked(&mut sim, &mut log);
    let a = answer(&sim, scale_down);
    let now = sim.now();
    record_diagnosis(&mut sim.m, WorkerId(0), a, now);
    let p = step(&mut sim, 1);
    let reason = stop_reason(&p, 0);
    assert!(
        reason.contains("scale_down not possible: 1 wanted, min 1"),
        "{reason}"
    );
    assert!(reason.contains("restart from checkpoint 20"), "{reason}");
}

#[test]
fn validation_notes_travel_with_the_decision_into_the_event_and_the_attempt() {
    let mut sim = started(EXTRA);
    let mut log = String::new();
    until_asked(&mut sim, &mut log);
    let a = answer(
        &sim,
        r#"{"root_cause": "uploads stall", "fix_type": "Config Fix", "fix_description": "", "confidence": 0.9, "code_changes": null, "config_changes": {"parallel_uploads": 999, "turbo": 3}}"#,
    );
    let now = sim.now();
    let m = record_diagnosis(&mut sim.m, WorkerId(0), a, now);
    assert!(m.contains("validation notes:"), "{m}");
    let p = step(&mut sim, 1);
    let reason = stop_reason(&p, 0);
    assert!(
        reason.contains("config fix: parallel_uploads 8 → 10"),
        "{reason}"
    );
    assert!(reason.contains("999"), "the clamp is named: {reason}");
    assert!(
        reason.contains("turbo"),
        "the dropped parameter is named: {reason}"
    );
    let detail = &sim.m.workers[&WorkerId(0)].fixes.attempts[0].detail;
    assert!(
        detail.contains("999") && detail.contains("turbo"),
        "{detail}"
    );
}

#[test]
fn an_unknown_root_cause_or_a_low_confidence_means_restart_not_the_proposed_fix() {
    for (cause, confidence) in [("Unknown", 0.9), ("uploads stall", 0.3)] {
        let mut sim = started(EXTRA);
        let mut log = String::new();
        until_asked(&mut sim, &mut log);
        let text = format!(
            r#"{{"root_cause": "{cause}", "fix_type": "config_fix", "fix_description": "", "confidence": {confidence}, "code_changes": null, "config_changes": {{"parallel_uploads": 10}}}}"#
        );
        let a = answer(&sim, &text);
        let now = sim.now();
        record_diagnosis(&mut sim.m, WorkerId(0), a, now);
        let p = step(&mut sim, 1);
        let reason = stop_reason(&p, 0);
        assert!(reason.contains("restart from checkpoint 20"), "{reason}");
        assert!(reason.contains("rule:"), "{reason}");
        assert!(
            sim.m.workers[&WorkerId(0)].params.is_empty(),
            "no config change"
        );
    }
}

#[test]
fn verification_starts_when_the_new_process_runs_not_when_the_fix_is_decided() {
    // No LLM: a plain restart whose old process takes 100 s to go (a slow stop under load).
    let mut sim = started("  fixes: {cooldown: 10m, verify_after: 2m, max_attempts: 3}\n");
    let old_pid = sim.alive[&WorkerId(0)];
    let mut decided = None;
    for _ in 0..60 {
        let p = step(&mut sim, 10);
        if stops(&p).contains(&0) {
            decided = Some(sim.t);
            break;
        }
    }
    let decided = decided.expect("worker 0 found stuck and stopped");
    let mut log = String::new();
    let mut started_at = None;
    while sim.t < decided + 400 {
        if sim.t < decided + 100 {
            sim.alive.insert(WorkerId(0), old_pid); // still exiting
        }
        let p = step(&mut sim, 10);
        log.push_str(&events(&p));
        if starts(&p).contains(&0) {
            started_at = Some(sim.t);
        }
        // The new process moves its checkpoint a minute after it started.
        if started_at.is_some_and(|s| sim.t >= s + 60) {
            sim.progress(0, 30);
        }
    }
    let started_at = started_at.expect("restarted");
    assert!(started_at >= decided + 100, "{started_at} {decided}");
    assert!(
        !log.contains("failed verification"),
        "judged before the new process ran its course:\n{log}"
    );
    assert_eq!(
        log.matches("(restart) verified").count(),
        1,
        "verified exactly once:\n{log}"
    );
}

#[test]
fn code_fixes_go_one_at_a_time_and_a_second_is_refused_with_a_restart() {
    let mut sim = started(EXTRA);
    // Both workers go silent.
    let mut asked = std::collections::BTreeSet::new();
    for _ in 0..60 {
        sim.advance(10);
        let p = sim.pass();
        for a in &p.actions {
            if let Action::Diagnose(d) = a {
                asked.insert(d.worker.0);
            }
        }
        if asked.len() == 2 {
            break;
        }
    }
    assert_eq!(asked.len(), 2);
    for id in [0, 1] {
        let a = answer(&sim, CODE_FIX);
        let now = sim.now();
        record_diagnosis(&mut sim.m, WorkerId(id), a, now);
    }
    sim.advance(1);
    let p = sim.pass();
    let applies: Vec<WorkerId> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::ApplyCodeFix(_)))
        .map(Action::worker)
        .collect();
    assert_eq!(applies, [WorkerId(0)]);
    let reason = stop_reason(&p, 1);
    assert!(reason.contains("one code fix at a time"), "{reason}");
    assert!(reason.contains("restart from checkpoint 120"), "{reason}");
}
