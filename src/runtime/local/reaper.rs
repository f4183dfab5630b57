//! The reaper: one task that waits for every worker this automon started, instead of a task and
//! a pidfd per child. It holds each child's pid and worker id (a few bytes per worker, no
//! descriptor), reaps a child when `SIGCHLD` says one exited, and reports the exit.
//!
//! No exit is missed: the `SIGCHLD` stream is registered before the first child is spawned, a
//! child is registered in the same turn of the loop that spawned it, and a newly registered
//! child is checked at once (it may have exited, and its `SIGCHLD` been consumed by a scan,
//! before it was registered). Only registered pids are reaped (`waitpid(pid, WNOHANG)`, after
//! a peek that says which child exited: see [`reap_exited`]), so the children other code waits
//! for itself (a `sbatch`, a fix's verification command) are left to it.

use std::collections::HashMap;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::WorkerId;
use crate::observe::ExitEvent;

/// Registers children with the reaper task.
#[derive(Debug)]
pub struct Reaper {
    register: UnboundedSender<(WorkerId, i32)>,
}

impl Reaper {
    /// Starts the reaper task (inside a Tokio runtime); exits go to `exits`. The task ends
    /// once this handle is dropped and every registered child has been reaped.
    ///
    /// # Errors
    /// When `SIGCHLD` cannot be listened for.
    pub fn start(exits: UnboundedSender<ExitEvent>) -> std::io::Result<Self> {
        let sigchld = signal(SignalKind::child())?;
        let (register, registered) = unbounded_channel();
        tokio::spawn(reap(sigchld, registered, exits));
        Ok(Self { register })
    }

    /// Hands the reaper a child just spawned. Must be called before the spawning code yields to
    /// the runtime (it always is: spawning does not await).
    pub fn watch(&self, worker: WorkerId, pid: i32) {
        // The task only ends after this handle is dropped.
        let _ = self.register.send((worker, pid));
    }
}

/// What `waitpid` says of one child: still running, or its exit (`None` for the code and the
/// signal when it was reaped elsewhere).
fn try_reap(worker: WorkerId, pid: i32) -> Option<ExitEvent> {
    let exit = |code, signal| {
        Some(ExitEvent {
            worker,
            pid,
            code,
            signal,
        })
    };
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => exit(Some(code), None),
        Ok(WaitStatus::Signaled(_, signal, _)) => exit(None, Some(signal as i32)),
        // Not exited (a stop or a continue is not an exit).
        Ok(_) | Err(nix::errno::Errno::EINTR) => None,
        // ECHILD: no longer a child of ours to wait for (reaped elsewhere): gone all the same.
        Err(_) => exit(None, None),
    }
}

/// Reaps every exited child among `children` and reports it. The exited children are peeked
/// at one at a time (`waitid(P_ALL, WNOWAIT)`: not reaped by the peek) and ours reaped: one
/// system call per exit, however large the fleet. A child that is not ours (other code waits
/// for it), or a peek that fails, ends the peeking, and every child of ours is then checked.
fn reap_exited(children: &mut HashMap<i32, WorkerId>, exits: &UnboundedSender<ExitEvent>) {
    use nix::sys::wait::{Id, waitid};
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        let pid = match waitid(Id::All, peek) {
            Ok(status) => match status.pid() {
                // No child has exited.
                None => return,
                Some(pid) => pid.as_raw(),
            },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        };
        let Some(worker) = children.remove(&pid) else {
            break;
        };
        match try_reap(worker, pid) {
            // The receiver is gone only when automon is shutting down.
            Some(exit) => drop(exits.send(exit)),
            None => {
                children.insert(pid, worker);
                break;
            }
        }
    }
    children.retain(|&pid, &mut worker| match try_reap(worker, pid) {
        Some(exit) => {
            let _ = exits.send(exit);
            false
        }
        None => true,
    });
}

async fn reap(
    mut sigchld: Signal,
    mut registered: UnboundedReceiver<(WorkerId, i32)>,
    exits: UnboundedSender<ExitEvent>,
) {
    let mut children: HashMap<i32, WorkerId> = HashMap::new();
    let mut open = true;
    loop {
        if !open && children.is_empty() {
            return;
        }
        tokio::select! {
            new = registered.recv(), if open => {
                let Some((worker, pid)) = new else {
                    open = false;
                    continue;
                };
                // This one and any others already waiting, each checked once now.
                let mut batch = vec![(worker, pid)];
                while let Ok(next) = registered.try_recv() {
                    batch.push(next);
                }
                for (worker, pid) in batch {
                    match try_reap(worker, pid) {
                        // The receiver is gone only when automon is shutting down.
                        Some(exit) => drop(exits.send(exit)),
                        None => drop(children.insert(pid, worker)),
                    }
                }
            }
            Some(()) = sigchld.recv() => {
                while let Ok((worker, pid)) = registered.try_recv() {
                    children.insert(pid, worker);
                }
                reap_exited(&mut children, &exits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Children that exit at once, while registered, and long after are each reported once,
    /// with their codes and signals; an unregistered child of ours is left alone.
    #[tokio::test(flavor = "current_thread")]
    async fn every_registered_child_is_reaped_once_with_its_status() {
        let (tx, mut rx) = unbounded_channel();
        let reaper = Reaper::start(tx).expect("reaper");
        // Reaped by the reaper under test.
        #[allow(clippy::zombie_processes)]
        let sh = |script: &str| {
            let child = std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .spawn()
                .expect("spawn");
            i32::try_from(child.id()).expect("pid")
        };
        let quick = sh("exit 3");
        // Exited (very likely) before it is registered: the check at registration finds it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        reaper.watch(WorkerId(0), quick);
        let killed = sh("sleep 30");
        reaper.watch(WorkerId(1), killed);
        let later = sh("sleep 0.2; exit 7");
        reaper.watch(WorkerId(2), later);
        let other = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 5"])
            .spawn()
            .expect("spawn");
        nix::sys::signal::kill(Pid::from_raw(killed), nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        let mut got = Vec::new();
        while got.len() < 3 {
            let e = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
                .await
                .expect("an exit within a minute")
                .expect("an exit");
            got.push((e.worker, e.pid, e.code, e.signal));
        }
        got.sort();
        assert_eq!(
            got,
            [
                (WorkerId(0), quick, Some(3), None),
                (WorkerId(1), killed, None, Some(9)),
                (WorkerId(2), later, Some(7), None),
            ]
        );
        // The unregistered child is still there to be waited for by its own code.
        let status = other.wait_with_output().expect("wait").status;
        assert_eq!(status.code(), Some(5));
        drop(reaper);
    }
}
