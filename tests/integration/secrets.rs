//! Secrets stay secret: a distinct canary planted in every place a secret can come from — a
//! declared secret env value, a secret-looking template env value, a deprecated
//! `llm.secret_env` name set in automon's environment, the LLM key in automon's environment,
//! worker error lines of every common shape, a traceback, an extra manifest pattern and the
//! LLM's answer — then the crash path, the stuck path with a stand-in LLM and a manifest edit;
//! no canary may appear in any file under the state directory, in automon's stdout or stderr,
//! or in the output of any read command. Workers never see the LLM key, and the state
//! directory is 0700 with every file 0600 although automon runs under umask 000.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The LLM key, in automon's environment only; no known shape, so only the literal catches it.
const LLM_KEY: &str = "canary-llmkey-5Z3W";
/// `template.env` DB_PASS (its name looks secret).
const DB_PASS: &str = "canary-dbpass-2468";
/// The edited DB_PASS of the manifest edit.
const DB_PASS_NEW: &str = "canary-dbpass-new-8642";
/// `template.env` MIGRATION_DSN, declared in `spec.secrets.env`.
const DSN: &str = "canary-dsn-4R8T";
/// Automon's environment LEGACY_CRED, declared in the deprecated `llm.secret_env`.
const LEGACY: &str = "canary-legacy-9K1M";

/// Every canary, as it must never appear.
const CANARIES: [&str; 18] = [
    LLM_KEY,
    DB_PASS,
    DB_PASS_NEW,
    DSN,
    LEGACY,
    "canary-pw-1111",
    "canary-pw-2222",
    "canary-pw-3333",
    "canary-tok-4444",
    "canary-bearer-5555",
    "canary-url-6666",
    "sk-canaryOpenAIkey7777",
    "AKIACANARY8888ABCDEF",
    "canaryPEMbody9999",
    "eyJjYW5hcnkiOiJqd3QifQ",
    "CANARY-EXTRA-4242",
    "canary-traceback-1212",
    "canary-llm-answer-1313",
];

/// Worker 0 crashes twice with every shape of secret in its error lines (and its whole
/// environment dumped into one), worker 1 hangs once after logging a secret (found stuck after
/// 20 s: room for a loaded machine); both then finish their shard. Each writes its pid and environment to files in the work directory.
const WORKER: &str = r#"
import json, os, pathlib, sys, time

wid, resume, end = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def log(level, msg):
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + ",%03d" % int(now % 1 * 1000)
    print(f"{stamp} - {level} - {msg}", flush=True)

def progress(n):
    tmp = pathlib.Path(f"progress/p{wid}.json.tmp")
    tmp.write_text(json.dumps({"last_processed_book_id": n}))
    os.replace(tmp, f"progress/p{wid}.json")

pathlib.Path(f"pid{wid}").write_text(str(os.getpid()))
pathlib.Path(f"env{wid}.json").write_text(json.dumps(dict(os.environ)))
leak = pathlib.Path("leak.txt").read_text().strip()

def once(name):
    marker = pathlib.Path(name)
    if marker.exists():
        return False
    marker.write_text("x")
    return True

if wid == 0 and (once("crash-a") or once("crash-b")):
    progress(max(resume, 0) + 2)
    log("ERROR", "environment: " + " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
    log("ERROR", "login failed password=canary-pw-1111 passwd: canary-pw-2222 pwd=canary-pw-3333")
    log("ERROR", "retry with token=canary-tok-4444 and Authorization: Bearer canary-bearer-5555")
    log("ERROR", "cannot reach postgres://migrator:canary-url-6666@db:5432/calibre")
    log("ERROR", "openai sk-canaryOpenAIkey7777 aws AKIACANARY8888ABCDEF extra CANARY-EXTRA-4242")
    log("ERROR", "bad jwt eyJhbGciOiJIUzI1NiJ9.eyJjYW5hcnkiOiJqd3QifQ.c2lnbmF0dXJl and key:\n"
        "-----BEGIN RSA PRIVATE KEY-----\ncanaryPEMbody9999\n-----END RSA PRIVATE KEY-----")
    log("ERROR", "the worker found a key in a config file: " + leak)
    print("Traceback (most recent call last):", flush=True)
    print('  File "worker.py", line 12, in connect', flush=True)
    print("ConnectionError: password=canary-traceback-1212 refused for dsn " + os.environ.get("MIGRATION_DSN", ""), flush=True)
    sys.exit(3)

if wid == 1 and once("hang"):
    progress(max(resume, 20) + 2)
    log("INFO", "Processed batch: book.id > 22")
    log("ERROR", "slow backend, dsn " + os.environ.get("MIGRATION_DSN", "") + " db pass " + os.environ.get("DB_PASS", ""))
    time.sleep(600)
    sys.exit(0)

for n in range(resume + 1, end):
    progress(n)
    log("INFO", f"Successfully uploaded: book {n}")
    time.sleep(0.05)
"#;

fn manifest(base_url: &str, db_pass: &str) -> String {
    format!(
        r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: canary}}
spec:
  interval: 1s
  workers: {{target: 2, min: 1, max: 2}}
  work: {{range: {{start: 1, end: 41}}, shards: 2, unit: book}}
  template:
    command: [python3, worker.py, "{{id}}", "{{checkpoint}}", "{{range_end}}"]
    env: {{DB_PASS: "{db_pass}", MIGRATION_DSN: "{DSN}", PYTHONUNBUFFERED: "1"}}
    stop_grace: 2s
  progress: {{file: "progress/p{{id}}.json", checkpoint: /last_processed_book_id}}
  logs:
    file: "logs/worker{{id}}.log"
    upload_patterns: ["Successfully uploaded:"]
    activity_patterns: ["Processed batch"]
  health: {{stuck_after: 20s, discovery_grace: 20s}}
  restart: {{backoff_initial: 1s, backoff_max: 2s}}
  fixes: {{cooldown: 1s, verify_after: 10s}}
  llm: {{enabled: true, base_url: "{base_url}", model: stand-in-model, timeout: 10s, secret_env: [LEGACY_CRED]}}
  secrets:
    env: [MIGRATION_DSN]
    patterns: ["CANARY-EXTRA-[0-9]+"]
"#
    )
}

/// The stand-in LLM: a restart, with canaries in its prose (a pattern shape, a literal key).
fn answer() -> ResponseTemplate {
    let diagnosis = json!({
        "root_cause": format!("the backend rejected password=canary-llm-answer-1313 and key {LLM_KEY}"),
        "fix_type": "restart",
        "fix_description": format!("restart; the worker logged {LLM_KEY}"),
        "confidence": 0.8,
        "code_changes": null,
        "config_changes": null,
    });
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-canary",
        "object": "chat.completion",
        "model": "stand-in-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": diagnosis.to_string(), "refusal": null}, "finish_reason": "stop"}],
    }))
}

fn automon(dir: &Path) -> Command {
    // umask 000: every mode below must come from automon, not from a kind umask.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "umask 000; exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_automon"),
    ])
    .current_dir(dir)
    .env("OPENAI_API_KEY", LLM_KEY)
    .env("LEGACY_CRED", LEGACY)
    .env("RUST_LOG", "warn");
    cmd
}

/// Runs a read command; returns a label and everything it printed.
fn read(dir: &Path, args: &[&str]) -> (String, String) {
    let out = automon(dir).args(args).output().expect("run automon");
    (
        args.join(" "),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const READ_COMMANDS: [&[&str]; 12] = [
    &["get", "workerset.yaml"],
    &["get", "workerset.yaml", "-o", "wide"],
    &["get", "workerset.yaml", "-o", "json"],
    &["get", "workerset.yaml", "-o", "yaml"],
    &["get", "workerset.yaml", "--observed", "-o", "json"],
    &["diff", "workerset.yaml"],
    &["diff", "workerset.yaml", "-o", "json"],
    &["history", "workerset.yaml"],
    &["history", "workerset.yaml", "-o", "json"],
    &["status", "workerset.yaml"],
    &[
        "diagnose",
        "workerset.yaml",
        "--worker",
        "0",
        "--show-prompt",
    ],
    &["apply", "workerset.yaml", "--dry-run"],
];

fn every_file(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            every_file(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
}

fn assert_no_canary(label: &str, text: &str) {
    for c in CANARIES {
        assert!(!text.contains(c), "{label} holds the canary {c:?}:\n{text}");
    }
}

#[tokio::test]
async fn no_canary_reaches_any_file_output_or_worker_environment() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer())
        .mount(&server)
        .await;
    let base_url = format!("{}/v1", server.uri());
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("progress")).expect("mkdir");
    std::fs::write(work.join("worker.py"), WORKER).expect("worker");
    std::fs::write(work.join("leak.txt"), LLM_KEY).expect("leak");
    std::fs::write(work.join("workerset.yaml"), manifest(&base_url, DB_PASS)).expect("manifest");
    // A state directory left world-readable by an older automon: tightened, with one warning.
    let state = work.join(".automon");
    std::fs::create_dir(&state).expect("mkdir state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let outputs = tokio::task::spawn_blocking(move || {
        let mut outputs: Vec<(String, String)> = Vec::new();
        let logs = tempfile::tempdir().expect("tempdir");
        let stdout = std::fs::File::create(logs.path().join("stdout")).expect("stdout");
        let stderr = std::fs::File::create(logs.path().join("stderr")).expect("stderr");
        let mut child = automon(&work)
            .args(["apply", "workerset.yaml", "--watch"])
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start automon");
        let deadline = Instant::now() + super::support::PATIENCE;
        let mut environ_checked = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "automon did not finish in 5 minutes"
            );
            // The live environment of the hanging worker, as the kernel holds it.
            if !environ_checked
                && let Ok(pid) = std::fs::read_to_string(work.join("pid1"))
                && let Ok(environ) = std::fs::read(format!("/proc/{}/environ", pid.trim()))
            {
                let environ = String::from_utf8_lossy(&environ);
                if environ.contains("AUTOMON_WORKER_ID=1") {
                    assert!(!environ.contains("OPENAI_API_KEY="), "{environ}");
                    assert!(!environ.contains(LLM_KEY), "{environ}");
                    assert!(environ.contains(&format!("DB_PASS={DB_PASS}")));
                    environ_checked = true;
                }
            }
            // Read commands while workers crash, hang and restart.
            for args in [READ_COMMANDS[1], READ_COMMANDS[2], READ_COMMANDS[6]] {
                outputs.push(read(&work, args));
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let stderr = std::fs::read_to_string(logs.path().join("stderr")).expect("stderr");
        let stdout = std::fs::read_to_string(logs.path().join("stdout")).expect("stdout");
        assert_eq!(status.code(), Some(0), "automon failed:\n{stderr}");
        assert!(environ_checked, "worker 1's environment was never read");
        assert_eq!(
            stderr.matches("tightened to 700").count(),
            1,
            "one warning for the loose state directory:\n{stderr}"
        );
        assert!(
            stderr.contains("spec.llm.secret_env is deprecated"),
            "{stderr}"
        );
        outputs.push(("apply --watch stdout".into(), stdout));
        outputs.push(("apply --watch stderr".into(), stderr));
        // Every read command on the finished run, then after an edit of a secret.
        for args in READ_COMMANDS {
            outputs.push(read(&work, args));
        }
        // diagnose asks the stand-in LLM and prints its (redacted) answer.
        outputs.push(read(
            &work,
            &["diagnose", "workerset.yaml", "--worker", "1"],
        ));
        std::fs::write(
            work.join("workerset.yaml"),
            manifest(&base_url, DB_PASS_NEW),
        )
        .expect("edit manifest");
        for args in READ_COMMANDS {
            outputs.push(read(&work, args));
        }
        (work, outputs)
    })
    .await
    .expect("join");
    let (work, outputs) = outputs;

    // The paths ran: a crash quoting its last error, a stuck worker diagnosed, the edit seen.
    let events = std::fs::read_to_string(work.join(".automon/events.log")).expect("events");
    assert!(
        events.contains("worker 0 exited with status 3") && events.contains("last error:"),
        "{events}"
    );
    assert!(events.contains("[REDACTED]"), "{events}");
    assert!(events.contains("worker 1: LLM diagnosis:"), "{events}");
    let (_, diff) = outputs
        .iter()
        .rev()
        .find(|(label, _)| label == "diff workerset.yaml")
        .expect("diff output");
    assert!(diff.contains("DB_PASS: [REDACTED] (changed)"), "{diff}");
    // Each events-log line starts with a fixed-width UTC time with milliseconds.
    for line in events.lines() {
        let stamp = &line[..24];
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z') && &stamp[19..20] == ".",
            "{line}"
        );
    }

    for (label, text) in &outputs {
        assert_no_canary(label, text);
    }
    let state = work.join(".automon");
    let mut files = Vec::new();
    every_file(&state, &mut files);
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned();
        assert_no_canary(&f.display().to_string(), &text);
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&state), 0o700);
    // What each worker saw: never the LLM key, but the env the manifest declares.
    for id in [0, 1] {
        let env = std::fs::read_to_string(work.join(format!("env{id}.json"))).expect("env");
        assert!(!env.contains("OPENAI_API_KEY"), "worker {id}: {env}");
        assert!(!env.contains(LLM_KEY), "worker {id}: {env}");
        assert!(env.contains(DSN), "worker {id} got its declared env: {env}");
    }
}
