//! The stop actuator and /proc identity on real processes.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use automon::act::stop::{StopOutcome, stop_group};
use automon::observe::proc::{self, ProcessIdentity, ProcessStatus};
use nix::sys::signal::Signal;

/// Starts `python3 -c script` in its own process group and waits until it prints "ready"
/// (scripts print it once their signal handlers are set); stdout stays open.
fn spawn_group(script: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn python");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    while line.trim() != "ready" {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "exited before ready"
        );
    }
    // Keep the pipe open for the child's life.
    std::mem::forget(reader);
    child
}

fn identity(pid: i32) -> ProcessIdentity {
    let stat = proc::read_stat(Path::new("/proc"), pid).expect("stat");
    ProcessIdentity {
        pid,
        start_ticks: stat.start_ticks,
        boot_id: proc::boot_id(Path::new("/proc")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn stop_escalates_to_sigkill_for_a_group_that_ignores_sigterm() {
    let mut child = spawn_group(
        "import signal, subprocess, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         subprocess.Popen(['sleep', '60'])\nprint('ready', flush=True)\ntime.sleep(60)",
    );
    let pid = child.id() as i32;
    let id = identity(pid);
    // Reap the leader in the background so it does not linger as a zombie.
    let reaper = std::thread::spawn(move || child.wait());
    let outcome = runtime().block_on(stop_group(
        &id,
        true,
        Signal::SIGTERM,
        Duration::from_millis(500),
    ));
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(
        !proc::group_exists(pid),
        "the whole group, the sleep child included, must be gone"
    );
    reaper.join().expect("reaper").expect("wait");
}

#[test]
fn stop_is_graceful_when_the_worker_obeys_sigterm() {
    let mut child = spawn_group("import time\nprint('ready', flush=True)\ntime.sleep(60)");
    let pid = child.id() as i32;
    let id = identity(pid);
    let reaper = std::thread::spawn(move || child.wait());
    let outcome = runtime().block_on(stop_group(
        &id,
        true,
        Signal::SIGTERM,
        Duration::from_secs(10),
    ));
    assert_eq!(outcome, StopOutcome::Graceful);
    reaper.join().expect("reaper").expect("wait");
}

/// Regression: a recorded pid that now belongs to another process must never be signalled.
#[test]
fn a_reused_pid_is_reported_gone_and_left_untouched() {
    let mut child = spawn_group("import time\nprint('ready', flush=True)\ntime.sleep(30)");
    let pid = child.id() as i32;
    let real = identity(pid);
    let recorded = ProcessIdentity {
        start_ticks: real.start_ticks.saturating_sub(7),
        ..real
    };
    let boot = proc::boot_id(Path::new("/proc"));
    assert_eq!(
        proc::check(Path::new("/proc"), &boot, &recorded),
        ProcessStatus::Reused
    );
    let outcome = runtime().block_on(stop_group(
        &recorded,
        true,
        Signal::SIGKILL,
        Duration::from_millis(100),
    ));
    assert_eq!(outcome, StopOutcome::NotOurs);
    // Not a timing assertion: a moment for a wrongly sent signal to land before looking.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the stranger was signalled"
    );
    child.kill().expect("cleanup");
    child.wait().expect("reap");
}

#[test]
fn a_zombie_child_is_not_alive() {
    let mut child = Command::new("true").spawn().expect("spawn");
    let pid = child.id() as i32;
    let id = identity(pid);
    // Exited, not yet reaped: a zombie (on a loaded machine `true` may take a while to exit).
    let boot = proc::boot_id(Path::new("/proc"));
    super::support::wait_until(
        "the child to exit",
        || proc::read_stat(Path::new("/proc"), pid).is_some_and(|s| s.state == 'Z'),
        String::new,
    );
    assert_eq!(
        proc::check(Path::new("/proc"), &boot, &id),
        ProcessStatus::Exited
    );
    child.wait().expect("reap");
}

#[test]
fn a_single_process_stop_leaves_the_rest_of_its_group_alone() {
    // A wrapper shell and its worker child share a group; stopping only the worker (an adopted
    // process that does not lead its group) must not signal the wrapper.
    let mut wrapper = spawn_group(
        "import subprocess, sys, time\n\
         p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n\
         print('ready', flush=True)\n\
         time.sleep(60)",
    );
    let leader = wrapper.id() as i32;
    let child_pid = proc::list_pids(Path::new("/proc"))
        .into_iter()
        .find(|p| proc::read_stat(Path::new("/proc"), *p).is_some_and(|s| s.ppid == leader))
        .expect("worker child");
    let id = identity(child_pid);
    let outcome = runtime().block_on(stop_group(
        &id,
        false,
        Signal::SIGTERM,
        Duration::from_secs(5),
    ));
    assert_eq!(outcome, StopOutcome::Graceful);
    assert!(
        wrapper.try_wait().expect("try_wait").is_none(),
        "the wrapper was signalled"
    );
    wrapper.kill().expect("cleanup");
    wrapper.wait().expect("reap");
}

#[test]
fn processes_matching_the_template_are_adopted_when_the_manifest_opts_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("fake_worker.py");
    std::fs::write(&fake, "import sys, time\ntime.sleep(60)\n").expect("write");
    let manifest = format!(
        "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {{name: adopt}}\nspec:\n  workers: {{target: 2, min: 1, max: 2}}\n  work: {{range: {{start: 0, end: 100}}, shards: 2}}\n  template: {{command: [python3, {f}, --worker-id, \"{{id}}\"]}}\n  progress: {{file: \"p{{id}}.json\", checkpoint: /c}}\n  logs: {{file: \"w{{id}}.log\"}}\n  adoption: {{match_command: true}}\n",
        f = fake.display()
    );
    std::fs::write(dir.path().join("m.yaml"), manifest).expect("write manifest");
    // In the manifest's working directory: the same command line elsewhere is another fleet's.
    let start = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir.path())
            .process_group(0)
            .spawn()
            .expect("spawn")
    };
    let f = fake.to_string_lossy().into_owned();
    let mut one = start(&["python3", &f, "--worker-id", "1"]);
    let mut thirteen = start(&["python3", &f, "--worker-id", "13"]);
    let mut wrapped = start(&["bash", "-c", &format!("python3 {f} --worker-id 0; true")]);
    // Wait (under load this can take a while) until every worker is running python3 with its
    // real command line: the wrapper's child included.
    let deadline = std::time::Instant::now() + super::support::PATIENCE;
    // python3 may be a shim script that execs the interpreter: wait for the interpreter itself.
    let cmdline = |pid: i32| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with("python") {
            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    loop {
        let pids = proc::list_pids(Path::new("/proc"));
        let ready = [&one, &thirteen]
            .iter()
            .all(|c| cmdline(c.id() as i32).windows(4).any(|w| w == b"fake"))
            && pids.iter().any(|p| {
                proc::read_stat(Path::new("/proc"), *p)
                    .is_some_and(|s| s.ppid == wrapped.id() as i32)
                    && cmdline(*p).windows(4).any(|w| w == b"fake")
            });
        if ready || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_automon"))
        .args(["diff", "m.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("diff");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for c in [&mut one, &mut thirteen, &mut wrapped] {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        let _ = c.wait();
    }
    assert!(
        text.contains(&format!("worker 1: adopted pid {}", one.id())),
        "{text}"
    );
    assert!(
        !text.contains(&format!("adopted pid {}", thirteen.id())),
        "worker 13 is not worker 1: {text}"
    );
    assert!(
        !text.contains(&format!("adopted pid {}", wrapped.id())),
        "the bash wrapper is not the worker: {text}"
    );
    assert!(
        text.contains("worker 0: adopted pid"),
        "the wrapped worker itself is adopted: {text}"
    );
    assert!(
        text.contains("no actions: the workers match the manifest"),
        "both workers adopted: nothing to start
{text}"
    );
    // Never applied before: `diff` reports that as a difference.
    assert_eq!(out.status.code(), Some(1), "{text}");
}
