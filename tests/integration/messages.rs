//! What an operator reads: `--log-format json` events carry structured fields.

use super::support::{Knobs, Migration};

/// Regression: `--log-format json` lines carried only a message, so `jq 'select(.worker==3)'`
/// found nothing.
#[test]
fn json_events_carry_worker_pid_phase_action_checkpoint_and_reason() {
    let m = Migration::new(&Knobs {
        books: 60,
        ..Knobs::default()
    });
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(m.path())
        .args(["--log-format", "json", "apply", "workerset.yaml", "--watch"])
        .timeout(super::support::PATIENCE)
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{logs}");
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|r: &serde_json::Value| r["target"] == "automon::events")
        .collect();
    let start = events
        .iter()
        .find(|r| r["worker"] == 3 && r["action"] == "start")
        .unwrap_or_else(|| panic!("no start of worker 3: {logs}"));
    assert_eq!(start["phase"], "Starting", "{start}");
    assert!(
        start["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("worker 3: starting shard")),
        "{start}"
    );
    let started = events
        .iter()
        .find(|r| r["worker"] == 3 && r["action"] == "started")
        .unwrap_or_else(|| panic!("no started event of worker 3: {logs}"));
    assert!(started["pid"].as_i64().is_some_and(|p| p > 0), "{started}");
    let done = events
        .iter()
        .find(|r| {
            r["worker"] == 3
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("complete"))
        })
        .unwrap_or_else(|| panic!("no completion of worker 3: {logs}"));
    assert_eq!(done["phase"], "Completed", "{done}");
    assert!(done["checkpoint"].as_u64().is_some(), "{done}");
    // Every event about a worker says which, as a number.
    for r in &events {
        if let Some(m) = r["message"].as_str()
            && m.starts_with("worker ")
        {
            assert!(r["worker"].is_u64(), "{r}");
        }
    }
}
