//! A worker frozen with SIGSTOP — a hung process as a supervisor sees it: alive, silent, no
//! progress — is found stuck at `stuck_after` (plus one confirming pass), stopped (its SIGTERM
//! stays pending while it is stopped, so the grace period runs out and SIGKILL ends it) and
//! restarted from its checkpoint; the migration then completes with every book once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::migration::live_workers;
use super::support::{Knobs, Migration, resume_points};

/// Stops the daemon and every worker group of the state dir when the test ends, pass or fail.
struct Cleanup<'a> {
    daemon: Child,
    state_dir: &'a Path,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for pids in live_workers(self.state_dir).values() {
            for pid in pids {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// The pid of the latest start of `worker` in the events log.
fn started_pid(events: &str, worker: u32) -> Option<i32> {
    let prefix = format!("worker {worker}: started pid ");
    events.lines().rev().find_map(|l| {
        let rest = &l[l.find(&prefix)? + prefix.len()..];
        rest.split(':').next()?.trim().parse().ok()
    })
}

fn checkpoint(m: &Migration, worker: u32) -> Option<u64> {
    let path = m
        .path()
        .join(format!("progress/migration_progress_worker{worker}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("last_processed_book_id")?.as_u64()
}

#[test]
fn a_sigstopped_worker_is_found_stuck_killed_and_restarted_from_its_checkpoint() {
    // 50 books per shard at 0.2 s each: worker 0 is mid-shard for about ten seconds.
    let m = Migration::new(&Knobs {
        books: 400,
        upload_delay: "0.2",
        stop_grace: "1s",
        ..Knobs::default()
    });
    let daemon = Command::new(env!("CARGO_BIN_EXE_automon"))
        .args(["apply", "workerset.yaml", "--watch"])
        .current_dir(m.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start automon");
    let state_dir = m.state_dir();
    let mut guard = Cleanup {
        daemon,
        state_dir: &state_dir,
    };
    let (start, _) = m.shard(0);
    // Wait until worker 0 has checkpointed past its range start, then freeze it.
    let deadline = Instant::now() + super::support::PATIENCE;
    let frozen = loop {
        assert!(
            Instant::now() < deadline,
            "worker 0 never checkpointed:\n{}",
            m.events()
        );
        if let (Some(pid), Some(c)) = (started_pid(&m.events(), 0), checkpoint(&m, 0))
            && c > start
            // (A pid that just exited, replaced under load, is looked up again.)
            && kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok()
        {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The run must still complete: the frozen worker is replaced.
    let deadline = Instant::now() + super::support::PATIENCE;
    let status = loop {
        if let Some(status) = guard.daemon.try_wait().expect("wait for automon") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "automon did not finish:\n{}",
            m.events()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let events = m.events();
    assert_eq!(status.code(), Some(0), "{events}");
    m.assert_verified();
    assert!(super::support::found_stuck(&events, 0), "{events}");
    assert!(
        events.contains(&format!(
            "worker 0: pid {frozen} did not exit within the grace period; killed with SIGKILL"
        )),
        "{events}"
    );
    let resumes = resume_points(&events, 0);
    assert!(resumes.len() >= 2, "worker 0 restarted:\n{events}");
    assert!(
        resumes[1] >= start,
        "the restart resumes from the checkpoint, not the range start: {resumes:?}"
    );
}
