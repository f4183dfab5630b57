//! Operating automon: `start`/`stop`/`status` with real workers, the `/metrics` endpoint parsed
//! as Prometheus text, and the service commands' answers to bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::migration::live_workers;
use super::support::{Knobs, Migration, resume_points};

const CMD_LIMIT: Duration = Duration::from_secs(60);

/// Slow workers (about 25 books per shard at 0.4 s each): they outlive the test's steps.
fn slow_migration() -> Migration {
    Migration::new(&Knobs {
        books: 200,
        upload_delay: "0.4",
        batch_size: 5,
        stuck_after: "30s",
        discovery_grace: "60s",
        ..Knobs::default()
    })
}

/// Runs `automon ARGS` in the migration's directory; (exit code, stdout, stderr).
pub(super) fn run(m: &Migration, args: &[&str]) -> (Option<i32>, String, String) {
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_automon"))
        .current_dir(m.path())
        .args(args)
        .timeout(CMD_LIMIT)
        .output()
        .expect("run automon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(super) fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    automon::observe::proc::read_stat(Path::new("/proc"), pid).is_some_and(|s| s.state != 'Z')
}

/// On drop (also after a failed assertion): SIGTERM to the automon holding the lock, SIGKILL to
/// every worker group of the state directory.
pub(super) struct Cleanup<'a>(pub(super) &'a Migration);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let state_dir = self.0.state_dir();
        if let Some(i) = automon::state::running_instance(&state_dir) {
            let _ = kill(Pid::from_raw(i.pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while i.is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for pids in live_workers(&state_dir).values() {
            for pid in pids {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

#[test]
fn start_stop_status_and_a_restart_that_adopts_the_workers() {
    let m = slow_migration();
    let _cleanup = Cleanup(&m);
    let state_dir = m.state_dir();

    let (code, out, err) = run(&m, &["start", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let pid: i32 = out
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    let pid_file = std::fs::read_to_string(state_dir.join("automon.pid")).expect("pid file");
    let mut fields = pid_file.split_whitespace();
    assert_eq!(fields.next(), Some(pid.to_string().as_str()), "{pid_file}");
    let ticks: u64 = fields.next().and_then(|t| t.parse().ok()).expect("ticks");
    assert_eq!(
        automon::observe::proc::read_stat(Path::new("/proc"), pid).map(|s| s.start_ticks),
        Some(ticks),
        "the pid file holds the daemon's start time"
    );
    wait_for("4 workers", Duration::from_secs(30), || {
        live_workers(&state_dir).len() == 4
    });
    wait_for("status.json", Duration::from_secs(10), || {
        state_dir.join("status.json").exists()
    });

    let (code, out, err) = run(&m, &["status", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("running (pid {pid}, since ")),
        "{out}"
    );
    assert!(
        out.contains("last pass: ") && out.contains("workers: desired 4"),
        "{out}"
    );

    // A second start is refused and names the running instance.
    let (code, out, err) = run(&m, &["start", "workerset.yaml"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("already running") && err.contains(&format!("pid {pid}, since ")),
        "{err}"
    );
    assert!(
        alive(pid),
        "the refused start must not disturb the running one"
    );

    let (code, out, _) = run(&m, &["status", "workerset.yaml", "-o", "json"]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(json["running"], true);
    assert_eq!(json["pid"], pid);
    assert_eq!(json["last_pass"]["desired"], 4);
    assert!(json["last_pass"]["last_pass_ms"].is_u64(), "{json}");
    assert!(
        json["last_pass"]["phases"]["progressing"].is_u64(),
        "{json}"
    );

    // Stop: the loop exits, the workers keep running.
    let before = live_workers(&state_dir);
    let (code, out, err) = run(&m, &["stop", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("stopped") && out.contains("keep running"),
        "{out}"
    );
    assert!(!alive(pid), "automon pid {pid} still alive after stop");
    assert!(!state_dir.join("automon.pid").exists(), "pid file removed");
    let after = live_workers(&state_dir);
    assert!(!after.is_empty(), "workers must survive stop");
    for (id, pids) in &after {
        if let Some(old) = before.get(id) {
            assert_eq!(old, pids, "worker {id} changed pid across stop");
        }
    }
    let (code, out, _) = run(&m, &["status", "workerset.yaml"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("not running") && out.contains(&format!("by pid {pid}")),
        "{out}"
    );

    // Start again: the survivors are adopted, not started a second time.
    let (code, out, err) = run(&m, &["start", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let second = automon::state::running_instance(&state_dir).expect("running again");
    assert_ne!(second.pid, pid);
    wait_for(
        "two passes of the new automon",
        Duration::from_secs(20),
        || {
            automon::state::read_status(&state_dir)
                .ok()
                .flatten()
                .is_some_and(|s| s.pid == second.pid.unsigned_abs() && s.passes >= 2)
        },
    );
    let events = m.events();
    let now = live_workers(&state_dir);
    for (id, pids) in &now {
        assert_eq!(pids.len(), 1, "worker {id} has two processes: {pids:?}");
    }
    for (id, pids) in &after {
        assert_eq!(
            resume_points(&events, u64::from(*id)).len(),
            1,
            "worker {id} was started again although it was alive:\n{events}"
        );
        if let Some(still) = now.get(id) {
            assert_eq!(still, pids, "worker {id} was replaced:\n{events}");
        }
    }
    let (code, _, err) = run(&m, &["stop", "workerset.yaml"]);
    assert_eq!(code, Some(0), "{err}");
}

/// One parsed sample: family-qualified name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A strict parser of the Prometheus text format (0.0.4) as automon writes it: `# HELP` and
/// `# TYPE` once per family, before its samples; metric and label names from the allowed
/// characters; quoted label values with `\\`, `\"`, `\n` escapes; numeric values (`NaN`,
/// `+Inf`, `-Inf` too) and an optional integer timestamp; no duplicate series; counters end in
/// `_total`. Returns the samples and each family's type.
fn parse_prometheus(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    fn name_ok(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut seen = BTreeSet::new();
    if !text.ends_with('\n') {
        return Err("the text must end with a newline".into());
    }
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !name_ok(name) || !helps.insert(name.to_string()) {
                return Err(at("bad or repeated HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split(' ');
            let (name, kind) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
            if !name_ok(name)
                || f.next().is_some()
                || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                || types.insert(name.to_string(), kind.to_string()).is_some()
            {
                return Err(at("bad or repeated TYPE"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("a counter's name must end in _total"));
            }
            if samples.iter().any(|s| s.0 == name) {
                return Err(at("TYPE after the family's samples"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value"))?;
        let name = &line[..name_end];
        if !name_ok(name) {
            return Err(at("bad metric name"));
        }
        if !types.contains_key(name) {
            return Err(at("sample without a TYPE line"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(body).map_err(|why| at(&why))?;
            labels = parsed;
            rest = after;
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value"))?
            .split(' ');
        let raw = fields.next().unwrap_or_default();
        let value = match raw {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| at("value is not a number"))?,
        };
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(at("bad timestamp"));
        }
        if fields.next().is_some() {
            return Err(at("trailing fields"));
        }
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series"));
        }
        samples.push((name.to_string(), labels, value));
    }
    Ok((samples, types))
}

/// Parses `k="v",j="w"}` (the part after `{`); returns the labels and the text after `}`.
fn parse_labels(mut body: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = body.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = body.find('=').ok_or("label without =")?;
        let name = &body[..eq];
        let mut chars = name.chars();
        let name_ok = chars
            .next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!("bad label name {name:?}"));
        }
        let quoted = body[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut iter = quoted.char_indices();
        let close = loop {
            match iter.next() {
                Some((j, '"')) => break j,
                Some((_, '\\')) => match iter.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("repeated label {name}"));
        }
        body = &quoted[close + 1..];
        if let Some(more) = body.strip_prefix(',') {
            body = more;
        } else if !body.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// `GET path` over a fresh connection; (status line, body).
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

#[test]
fn the_strict_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\",j=\"2\"} 1\n";
    let (samples, _) = parse_prometheus(ok).expect("valid");
    assert_eq!(samples[0].1["k"], "v\"");
    for bad in [
        "a 1\n",
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\na{k=v} 1\n",
        "# TYPE a gauge\na 1\na 2\n",
        "# TYPE a counter\na 1\n",
        "# TYPE a gauge\na 1",
        "# TYPE a gauge\na{k=\"v\" 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn metrics_endpoint_and_textfile_serve_every_family_and_json_logs_carry_events() {
    let m = slow_migration();
    let _cleanup = Cleanup(&m);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    std::fs::create_dir_all(m.path().join("textfile")).expect("mkdir");
    let stderr_path = m.path().join("stderr.jsonl");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut daemon = m
        .automon()
        .args([
            "--log-format",
            "json",
            "apply",
            "workerset.yaml",
            "--watch",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--metrics-textfile",
            "textfile/automon.prom",
        ])
        .stderr(stderr)
        .spawn()
        .expect("spawn automon");
    // Wait until workers have checkpoints and rates (two samples apart in time).
    let mut body = String::new();
    wait_for(
        "metrics with worker rates",
        Duration::from_secs(60),
        || match http_get(port, "/metrics") {
            Some((status, b)) if status.contains("200") => {
                body = b;
                body.contains("automon_worker_items_per_minute{")
            }
            _ => false,
        },
    );
    let (samples, types) = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let series = |name: &str| -> Vec<&Sample> { samples.iter().filter(|s| s.0 == name).collect() };
    let label_values = |name: &str, label: &str| -> BTreeSet<String> {
        series(name)
            .iter()
            .filter_map(|s| s.1.get(label).cloned())
            .collect()
    };
    for (family, kind) in [
        ("automon_workers", "gauge"),
        ("automon_workers_desired", "gauge"),
        ("automon_workers_running", "gauge"),
        ("automon_restarts_total", "counter"),
        ("automon_fixes_total", "counter"),
        ("automon_fix_verifications_total", "counter"),
        ("automon_scale_events_total", "counter"),
        ("automon_worker_checkpoint", "gauge"),
        ("automon_worker_items_per_minute", "gauge"),
        ("automon_reconcile_duration_seconds", "gauge"),
        ("automon_reconcile_passes_total", "counter"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}\n{body}"
        );
        assert!(!series(family).is_empty(), "no samples of {family}\n{body}");
    }
    let phases = label_values("automon_workers", "phase");
    for p in [
        "pending",
        "starting",
        "discovering",
        "progressing",
        "stuck",
        "stopping",
        "conflict",
        "stopped",
        "backing_off",
        "parked",
        "paused",
        "failed",
        "completed",
    ] {
        assert!(phases.contains(p), "phase {p} missing: {phases:?}");
    }
    assert_eq!(
        label_values("automon_restarts_total", "reason"),
        BTreeSet::from(["crash".to_string(), "stuck".to_string()])
    );
    assert_eq!(
        label_values("automon_fixes_total", "type"),
        BTreeSet::from(["code_fix".into(), "config_fix".into(), "restart".into()])
    );
    assert_eq!(
        label_values("automon_scale_events_total", "direction"),
        BTreeSet::from(["down".to_string(), "up".to_string()])
    );
    assert_eq!(series("automon_workers_desired")[0].2, 4.0);
    assert!(series("automon_workers_running")[0].2 >= 1.0, "{body}");
    assert!(series("automon_reconcile_passes_total")[0].2 >= 1.0);
    for s in series("automon_worker_checkpoint") {
        assert!(s.1["worker"].parse::<u32>().is_ok() && s.2 >= 0.0, "{s:?}");
    }
    for s in series("automon_worker_items_per_minute") {
        assert!(s.2.is_finite() && s.2 >= 0.0, "{s:?}");
    }
    if let Some(d) = series("automon_disk_utilisation_ratio").first() {
        assert!((0.0..=1.0).contains(&d.2), "{d:?}");
    }
    let (status, _) = http_get(port, "/").expect("GET /");
    assert!(status.contains("404"), "{status}");

    let textfile =
        std::fs::read_to_string(m.path().join("textfile/automon.prom")).expect("textfile");
    let (file_samples, file_types) =
        parse_prometheus(&textfile).unwrap_or_else(|e| panic!("{e}\n{textfile}"));
    assert_eq!(file_types, types, "the textfile has the same families");
    assert!(!file_samples.is_empty());

    let _ = kill(
        Pid::from_raw(i32::try_from(daemon.id()).expect("pid")),
        Signal::SIGTERM,
    );
    let status = daemon.wait().expect("wait automon");
    assert_eq!(
        status.code(),
        Some(130),
        "SIGTERM ends the loop as interrupted"
    );
    let logs = std::fs::read_to_string(&stderr_path).expect("stderr");
    let records: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        records.iter().any(|r| r["target"] == "automon::events"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.contains("started pid"))),
        "{logs}"
    );
    assert!(
        records.iter().any(|r| r["target"] == "automon::pass"),
        "{logs}"
    );
}

#[test]
fn service_commands_answer_bad_input_clearly() {
    let m = Migration::new(&Knobs {
        books: 16,
        ..Knobs::default()
    });
    let _cleanup = Cleanup(&m);
    let (code, out, err) = run(&m, &["stop", "workerset.yaml"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("not running for workerset.yaml"), "{err}");

    let (code, out, _) = run(&m, &["status", "workerset.yaml"]);
    assert_eq!(code, Some(3), "status exits 3 when not running");
    assert!(
        out.contains("not running") && out.contains("none recorded"),
        "{out}"
    );
    let (code, out, _) = run(&m, &["status", "workerset.yaml", "-o", "json"]);
    assert_eq!(code, Some(3));
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["running"], false);
    assert!(json["last_pass"].is_null());

    for cmd in ["start", "stop", "status"] {
        let (code, _, err) = run(&m, &[cmd, "nope.yaml"]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains("nope.yaml"), "{cmd}: {err}");
    }
    let (code, _, err) = run(
        &m,
        &["apply", "workerset.yaml", "--metrics-addr", "127.0.0.1:1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--metrics-addr needs --watch"), "{err}");

    // A background automon that cannot start (its metrics port is taken) is reported with the
    // end of its log.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, out, err) = run(&m, &["start", "workerset.yaml", "--metrics-addr", &addr]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("exited at once") && err.contains("cannot listen on"),
        "{err}"
    );
    assert!(!m.state_dir().join("automon.pid").exists());
    assert!(live_workers(&m.state_dir()).is_empty(), "nothing started");

    let (code, out, _) = run(&m, &["completions", "bash"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("_automon") && out.contains("status"),
        "{}",
        &out[..200.min(out.len())]
    );
}
