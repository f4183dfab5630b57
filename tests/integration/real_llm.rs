//! Opt-in tests against a real OpenAI-compatible server (llama.cpp's `llama-server` with a tiny
//! model; start one with `scripts/real-llm-server.sh start`). They run when `AUTOMON_REAL_LLM`
//! names the server's base URL (e.g. `http://127.0.0.1:8089/v1`) and say they were skipped
//! otherwise. Answers of models this small are structurally valid and meaningless: these tests
//! check structure and handling, never content.

use std::time::{Duration, Instant};

use super::support::{Knobs, Migration};

fn base_url() -> Option<String> {
    match std::env::var("AUTOMON_REAL_LLM") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
        _ => {
            eprintln!("skipped: AUTOMON_REAL_LLM is not set (see scripts/real-llm-server.sh)");
            None
        }
    }
}

fn llm_spec(url: &str) -> &'static str {
    Box::leak(
        format!(
            "  llm: {{base_url: \"{url}\", model: smollm2, timeout: 180s, max_output_tokens: 400, context_tokens: 8192}}\n"
        )
        .into_boxed_str(),
    )
}

#[test]
fn real_llm_diagnose_answers_schema_valid_or_fails_clearly() {
    let Some(url) = base_url() else { return };
    let m = Migration::new(&Knobs {
        extra_spec: llm_spec(&url),
        ..Knobs::default()
    });
    let (mut valid, mut truncated, mut timed_out) = (0, 0, 0);
    for round in 0..3 {
        let started = Instant::now();
        let out = m
            .automon()
            .args(["diagnose", "workerset.yaml", "--worker", "0", "-o", "json"])
            .env("OPENAI_API_KEY", "")
            .output()
            .expect("run automon diagnose");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("diagnose -o json prints JSON");
                let fix = v["diagnosis"]["fix_type"].as_str().unwrap_or_default();
                assert!(
                    ["restart", "code_fix", "config_fix", "scale_down"].contains(&fix),
                    "{v}"
                );
                let c = v["diagnosis"]["confidence"].as_f64().unwrap_or(-1.0);
                assert!((0.0..=1.0).contains(&c), "{v}");
                valid += 1;
            }
            Some(1) if stderr.contains("cut off") => truncated += 1,
            Some(1) if stderr.contains("no answer within") => timed_out += 1,
            other => panic!("diagnose ended {other:?}:\n{stderr}"),
        }
        eprintln!(
            "real LLM round {round}: {:.1} s; {}",
            took.as_secs_f64(),
            stderr.trim()
        );
    }
    eprintln!("real LLM: {valid} schema-valid, {truncated} truncated, {timed_out} timed out of 3");
}

#[test]
fn real_llm_control_loop_applies_only_what_the_rules_allow_and_finishes_the_migration() {
    let Some(url) = base_url() else { return };
    let probe = Migration::new(&Knobs::default());
    let (a, b) = probe.shard(2);
    let book = a + (b - a) / 2;
    // A discovery loop once (a restart gets past it), and the LLM on in the loop.
    let fault: &'static str = Box::leak(format!("loop:{book}").into_boxed_str());
    let extra: &'static str = Box::leak(
        format!(
            "  fixes: {{cooldown: 1s, verify_after: 5s, max_attempts: 5}}\n{}",
            llm_spec(&url)
        )
        .into_boxed_str(),
    );
    let m = Migration::new(&Knobs {
        fault,
        stuck_after: "3s",
        discovery_grace: "6s",
        stop_grace: "1s",
        extra_spec: extra,
        ..Knobs::default()
    });
    let started = Instant::now();
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(m.path())
        .args(["apply", "workerset.yaml", "--watch", "--llm-enabled"])
        .env("OPENAI_API_KEY", "")
        .timeout(Duration::from_secs(1200))
        .output()
        .expect("run automon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    m.assert_verified();
    let events = m.events();
    let owner = m.owner(book);
    assert!(
        events.contains(&format!("worker {owner}: fix pipeline idle → asked")),
        "{events}"
    );
    // The rules decided, whatever the model said: every LLM outcome led to a restart or an
    // allowed fix, and the event names the rule.
    assert!(
        events.contains(&format!("worker {owner}: LLM diagnosis")),
        "{events}"
    );
    eprintln!(
        "real LLM control loop: migration complete in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for line in events
        .lines()
        .filter(|l| l.contains("LLM") || l.contains("fix pipeline"))
    {
        eprintln!("  {line}");
    }
}

/// Our own llama-server child, killed when the test ends, also by a failed assertion.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The llama-server binary and model the script builds into its cache, if they are there.
fn local_server() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let cache = std::env::var_os("AUTOMON_LLM_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/automon/llama"))
        })?;
    let bin = cache.join("bin/llama-server");
    let model = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    (bin.is_file() && model.is_file()).then_some((bin, model))
}

#[test]
fn real_llm_a_server_still_loading_is_waited_for_and_one_killed_mid_request_is_survived() {
    let Some(_) = base_url() else { return };
    let Some((bin, model)) = local_server() else {
        eprintln!("skipped: no llama-server and model in the script's cache");
        return;
    };
    // A server of this test's own, on a free port, asked at once (still loading: 503s).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let spawn = || {
        std::process::Command::new(&bin)
            .args(["-m"])
            .arg(&model)
            .args(["--alias", "smollm2", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["-c", "8192", "-np", "1", "-t", "2", "-n", "256"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start llama-server")
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let m = Migration::new(&Knobs {
        extra_spec: llm_spec(&url),
        ..Knobs::default()
    });
    let diagnose = |m: &Migration| {
        m.automon()
            .args(["diagnose", "workerset.yaml", "--worker", "0", "-o", "json"])
            .env("OPENAI_API_KEY", "")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run automon diagnose")
    };
    let mut server = KillOnDrop(Some(spawn()));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = diagnose(&m).wait_with_output().expect("diagnose");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "asked while loading: exit {:?} after {:.1} s {}",
        out.status.code(),
        started.elapsed().as_secs_f64(),
        stderr.trim()
    );
    // Waited for: an answer, or on a loaded machine a clear truncation or timeout — never
    // the 503 "Loading model" given up on after a second or two.
    assert!(
        out.status.code() == Some(0)
            || stderr.contains("cut off")
            || stderr.contains("no answer within"),
        "a loading server is waited for: {stderr}"
    );
    assert!(!stderr.contains("HTTP 503"), "{stderr}");
    // Killed mid-request: a clear failure, well before llm.timeout, and nothing else.
    let child = diagnose(&m);
    std::thread::sleep(Duration::from_secs(2));
    server.stop();
    let out = child.wait_with_output().expect("diagnose");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "server killed mid-request: exit {:?}: {}",
        out.status.code(),
        stderr.trim()
    );
    assert!(
        out.status.code() == Some(0) || stderr.contains("LLM"),
        "{stderr}"
    );
    if out.status.code() == Some(1) {
        assert!(
            stderr.contains("cannot reach the LLM server") || stderr.contains("no answer within"),
            "{stderr}"
        );
    }
}
