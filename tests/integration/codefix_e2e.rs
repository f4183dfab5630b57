//! End to end: a worker looping without advancing (the injected discovery bug, on every run),
//! a stand-in OpenAI-compatible server answering with a canned code fix, and automon applying it.

use std::path::Path;

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::support::{Knobs, Migration, example};

fn answer(code_changes: &str) -> ResponseTemplate {
    let diagnosis = json!({
        "root_cause": "discover_batch returns the start of the window as the next cursor, so the worker re-queries the same window forever",
        "fix_type": "code_fix",
        "fix_description": "remove the branch that returns an empty batch without advancing",
        "confidence": 0.9,
        "code_changes": code_changes,
        "config_changes": null,
    });
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-e2e",
        "object": "chat.completion",
        "model": "stand-in-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": diagnosis.to_string(), "refusal": null}, "finish_reason": "stop"}],
    }))
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/llm")
            .join(name),
    )
    .expect("fixture")
}

/// A migration whose worker script is a copy inside the temp dir (the fix edits the copy), with
/// the loop bug armed on every run for one shard and the LLM pointed at `base_url`.
/// `verify_after`: how long the fixed worker has to show progress (a fix that helps completes
/// its shard sooner, and is verified then: a long span costs nothing when the fix works).
fn looping_migration(base_url: &str, verify_after: &str) -> (Migration, u64) {
    let probe = Migration::new(&Knobs::default());
    let (a, b) = probe.shard(2);
    let book = a + (b - a) * 2 / 3;
    let fault: &'static str = Box::leak(format!("loop:{book}:always").into_boxed_str());
    let extra: &'static str = Box::leak(
        format!(
            "  fixes:\n    cooldown: 1s\n    verify_after: {verify_after}\n    max_attempts: 3\n    escalation: alert_and_pause\n    code: {{enabled: true, files: [examples/calibre-migration/migrate_worker.py]}}\n  llm: {{enabled: true, base_url: \"{base_url}\", model: stand-in-model, timeout: 10s}}\n"
        )
        .into_boxed_str(),
    );
    // Thresholds with room for a loaded machine: a healthy worker slow to start or starved of
    // CPU for seconds must not be found stuck (the stand-in proposes its code fix for whichever
    // worker asks, so a healthy worker found stuck would take the looping one's fix). The
    // looping worker has uploaded before it loops: it is found on stuck_after, not on
    // discovery_grace.
    let m = Migration::new(&Knobs {
        fault,
        stuck_after: "20s",
        discovery_grace: "60s",
        stop_grace: "1s",
        extra_spec: extra,
        ..Knobs::default()
    });
    let copy = m.path().join("examples/calibre-migration");
    std::fs::create_dir_all(&copy).expect("mkdir");
    std::fs::copy(example("migrate_worker.py"), copy.join("migrate_worker.py"))
        .expect("copy worker");
    let manifest = std::fs::read_to_string(m.path().join("workerset.yaml")).expect("read");
    std::fs::write(
        m.path().join("workerset.yaml"),
        manifest.replace(
            &example("migrate_worker.py").display().to_string(),
            "examples/calibre-migration/migrate_worker.py",
        ),
    )
    .expect("write");
    (m, book)
}

async fn run_watch(m: &Migration) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_automon"));
    cmd.current_dir(m.path())
        .args(["apply", "workerset.yaml", "--watch"])
        .env("OPENAI_API_KEY", "");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run automon"))
        .await
        .expect("join");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_canned_code_fix_from_the_llm_is_applied_verified_and_the_migration_completes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer(&fixture("fix_loop_bug.txt")))
        .mount(&server)
        .await;
    // A minute for the fixed worker's restart and first batch on a loaded machine.
    let (m, book) = looping_migration(&format!("{}/v1", server.uri()), "60s");
    let owner = m.owner(book);
    let (code, stderr) = tokio::time::timeout(super::support::PATIENCE, run_watch(&m))
        .await
        .expect("automon finished");
    assert_eq!(code, Some(0), "{stderr}");
    m.assert_verified();
    let events = m.events();
    assert!(
        events.contains(&format!("worker {owner}: LLM diagnosis:")),
        "{events}"
    );
    assert!(
        events.contains(&format!("worker {owner}: code fix applied to")),
        "{events}"
    );
    assert!(
        events.contains(&format!(
            "worker {owner}: fix attempt 1/3 (code_fix) verified"
        )),
        "{events}"
    );
    // The copy was changed, with a backup of the original in the state directory.
    let fixed = std::fs::read_to_string(
        m.path()
            .join("examples/calibre-migration/migrate_worker.py"),
    )
    .expect("read");
    assert!(
        !fixed.contains("if loop_fault_due(max_id):"),
        "the bug is still there"
    );
    let backups: Vec<_> = std::fs::read_dir(m.state_dir().join("backups"))
        .expect("backups")
        .collect();
    assert_eq!(backups.len(), 1);
    let backup = std::fs::read(backups[0].as_ref().expect("entry").path()).expect("read backup");
    assert_eq!(
        backup,
        std::fs::read(example("migrate_worker.py")).expect("original"),
        "the backup holds the original bytes"
    );
}

#[tokio::test]
async fn a_code_fix_that_does_not_help_is_rolled_back_and_the_worker_paused_after_three_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer(&fixture("useless_fix.txt")))
        .mount(&server)
        .await;
    // The useless fix fails verification however loaded the machine is (no load makes a loop
    // advance): a short span keeps three attempts quick.
    let (m, book) = looping_migration(&format!("{}/v1", server.uri()), "20s");
    let owner = m.owner(book);
    let (code, stderr) = tokio::time::timeout(super::support::PATIENCE, run_watch(&m))
        .await
        .expect("automon finished");
    // Every other shard completes; the looping worker is paused.
    assert_eq!(code, Some(3), "{stderr}");
    let events = m.events();
    assert!(
        events.contains(&format!("worker {owner}: code fix applied to")),
        "{events}"
    );
    assert!(
        events.contains(&format!("worker {owner}: code fix rolled back")),
        "{events}"
    );
    assert!(
        events.contains(&format!("ALERT: worker {owner}: 3 fix attempts failed")),
        "{events}"
    );
    // Rolled back: the file is byte-identical to the original again.
    assert_eq!(
        std::fs::read(
            m.path()
                .join("examples/calibre-migration/migrate_worker.py")
        )
        .expect("read"),
        std::fs::read(example("migrate_worker.py")).expect("original"),
    );
}

/// Two workers on one copied script, the first of which loops at a book early in its shard;
/// the LLM proposes a fix that does not help.
fn two_workers_one_script(base_url: &str) -> (Migration, (u64, u64), (u64, u64)) {
    let probe = Migration::new(&Knobs {
        books: 400,
        ..Knobs::default()
    });
    let len = probe.end - 1;
    let (s0, s1) = ((1, 1 + len / 2), (1 + len / 2, probe.end));
    let book = s0.0 + (s0.1 - s0.0) / 10;
    let fault: &'static str = Box::leak(format!("loop:{book}:always").into_boxed_str());
    let extra: &'static str = Box::leak(
        format!(
            "  fixes:\n    cooldown: 1s\n    verify_after: 5s\n    max_attempts: 3\n    escalation: alert_and_pause\n    code: {{enabled: true, files: [examples/calibre-migration/migrate_worker.py]}}\n  llm: {{enabled: true, base_url: \"{base_url}\", model: stand-in-model, timeout: 10s}}\n"
        )
        .into_boxed_str(),
    );
    // The healthy worker takes ~80 s (200 books at 0.4 s, sleep-bound: load makes it slower,
    // never faster): it is still running when the looping one's fix is rolled back (~8 s of
    // books, then stuck detection and one verify, ~30 s). stuck_after leaves the healthy
    // worker (a line every 0.4 s) 15 s of CPU starvation before it could be found stuck;
    // discovery_grace a minute to start.
    let m = Migration::new(&Knobs {
        books: 400,
        fault,
        upload_delay: "0.4",
        stuck_after: "15s",
        discovery_grace: "60s",
        stop_grace: "1s",
        extra_spec: extra,
        ..Knobs::default()
    });
    let copy = m.path().join("examples/calibre-migration");
    std::fs::create_dir_all(&copy).expect("mkdir");
    std::fs::copy(example("migrate_worker.py"), copy.join("migrate_worker.py"))
        .expect("copy worker");
    let manifest = std::fs::read_to_string(m.path().join("workerset.yaml")).expect("read");
    let manifest = manifest
        .replace(
            &example("migrate_worker.py").display().to_string(),
            "examples/calibre-migration/migrate_worker.py",
        )
        .replace(
            "workers: {target: 4, min: 1, max: 8}",
            "workers: {target: 2, min: 1, max: 2}",
        )
        .replace("shards: 8", "shards: 2");
    assert!(manifest.contains("shards: 2") && manifest.contains("target: 2"));
    std::fs::write(m.path().join("workerset.yaml"), manifest).expect("write");
    (m, s0, s1)
}

#[tokio::test]
async fn a_rolled_back_code_fix_restarts_every_worker_that_started_on_the_patched_file() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer(&fixture("useless_fix.txt")))
        .mount(&server)
        .await;
    let (m, s0, s1) = two_workers_one_script(&format!("{}/v1", server.uri()));
    let (code, stderr) = tokio::time::timeout(super::support::PATIENCE, run_watch(&m))
        .await
        .expect("automon finished");
    // The healthy shard completes; the looping worker ends paused after three failed fixes.
    assert_eq!(code, Some(3), "{stderr}");
    let events = m.events();
    assert!(events.contains("worker 0: code fix applied to"), "{events}");
    let rollback = events
        .lines()
        .position(|l| l.contains("worker 0: code fix rolled back"))
        .unwrap_or_else(|| panic!("no rollback:\n{events}"));
    assert!(
        events.lines().nth(rollback).is_some_and(|l| l.contains(
            "restarting from their checkpoints the workers that started on the patched file: 0, 1"
        )),
        "{events}"
    );
    // After the rollback both workers start again, each from its checkpoint (past its shard's
    // start: both had made progress), on the original file.
    let after: String = events.lines().skip(rollback).collect::<Vec<_>>().join("\n");
    for (id, (start, _)) in [(0, s0), (1, s1)] {
        let resumed = super::support::resume_points(&after, id);
        assert!(
            resumed.first().is_some_and(|r| *r > start),
            "worker {id} restarted from {resumed:?}, shard start {start}:\n{events}"
        );
    }
    assert_eq!(
        std::fs::read(
            m.path()
                .join("examples/calibre-migration/migrate_worker.py")
        )
        .expect("read"),
        std::fs::read(example("migrate_worker.py")).expect("original"),
        "the file holds the original bytes again"
    );
    // For the record (shown with --nocapture): the pipeline's moves around the rollback.
    for line in events.lines().filter(|l| {
        l.contains("fix pipeline") || l.contains("rolled back") || l.contains("code fix")
    }) {
        eprintln!("{line}");
    }
    // The re-proposed fix is refused (applied before): a refusal, never a failed verification
    // of an attempt that was not applied.
    assert_eq!(
        events.matches("(code_fix) failed verification").count(),
        1,
        "{events}"
    );
}
