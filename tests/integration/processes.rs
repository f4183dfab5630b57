//! The stop actuator and /proc identity on real processes.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use automon::act::stop::{StopOutcome, stop_group};
use automon::observe::proc::{self, ProcessIdentity, ProcessStatus};
use nix::sys::signal::Signal;

fn spawn_group(script: &str) -> std::process::Child {
    Command::new("python3")
        .args(["-c", script])
        .process_group(0)
        .spawn()
        .expect("spawn python")
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
         subprocess.Popen(['sleep', '60'])\ntime.sleep(60)",
    );
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(300));
    let id = identity(pid);
    // Reap the leader in the background so it does not linger as a zombie.
    let reaper = std::thread::spawn(move || child.wait());
    let outcome = runtime().block_on(stop_group(&id, Signal::SIGTERM, Duration::from_millis(500)));
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(
        !proc::group_exists(pid),
        "the whole group, the sleep child included, must be gone"
    );
    reaper.join().expect("reaper").expect("wait");
}

#[test]
fn stop_is_graceful_when_the_worker_obeys_sigterm() {
    let mut child = spawn_group("import time\ntime.sleep(60)");
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(200));
    let id = identity(pid);
    let reaper = std::thread::spawn(move || child.wait());
    let outcome = runtime().block_on(stop_group(&id, Signal::SIGTERM, Duration::from_secs(10)));
    assert_eq!(outcome, StopOutcome::Graceful);
    reaper.join().expect("reaper").expect("wait");
}

/// Regression: a recorded pid that now belongs to another process must never be signalled.
#[test]
fn a_reused_pid_is_reported_gone_and_left_untouched() {
    let mut child = spawn_group("import time\ntime.sleep(30)");
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(200));
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
        Signal::SIGKILL,
        Duration::from_millis(100),
    ));
    assert_eq!(outcome, StopOutcome::NotOurs);
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
    std::thread::sleep(Duration::from_millis(200)); // exited, not yet reaped: a zombie
    let boot = proc::boot_id(Path::new("/proc"));
    assert_eq!(
        proc::check(Path::new("/proc"), &boot, &id),
        ProcessStatus::Exited
    );
    child.wait().expect("reap");
}
