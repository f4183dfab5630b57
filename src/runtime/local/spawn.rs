//! Starting a worker: argv as a vector (never a shell string), its own process group, cwd and
//! env from the manifest (see [`crate::secrets::env::child_env`]: never automon's LLM key), stdout and stderr appended to its log (never truncated), and marker
//! variables so a later automon can recognise it. A task reaps the child and reports its exit.

use std::path::Path;
use std::process::Stdio;

use tokio::sync::mpsc::UnboundedSender;

use crate::manifest::Desired;
use crate::observe::{
    ENV_FLEET, ENV_STATE_DIR, ENV_WORKER_ID, ENV_WORKERSET, ExitEvent, ProcessIdentity, proc,
};
use crate::plan::StartAction;

/// Starts the worker described by `action`; on success returns its identity and start time.
/// The exit of the child is sent on `exits` when it is reaped.
///
/// # Errors
/// A sentence saying what failed: opening the log, executing the command, reading `/proc`.
pub fn spawn_worker(
    desired: &Desired,
    action: &StartAction,
    state_dir: &Path,
    exits: UnboundedSender<ExitEvent>,
) -> Result<(ProcessIdentity, crate::clock::BootTime), String> {
    let Some((program, args)) = action.argv.split_first() else {
        return Err("empty command".into());
    };
    let log_path = desired.log_path(action.worker);
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let env = crate::secrets::env::child_env(
        std::env::vars_os(),
        &desired.env,
        desired.inherit_env,
        &desired.llm.api_key_env,
    );
    // The program found on the child's PATH here, as `execvp` would find it, lets the standard
    // library start it with `posix_spawn` (no copy of automon's page tables per start); argv[0]
    // stays the manifest's word. Not found here: the child's own `execvp` looks, as before.
    let resolved = resolve_program(
        program,
        env.get(std::ffi::OsStr::new("PATH")).map(|p| p.as_os_str()),
        &desired.workdir,
    );
    let mut cmd = match &resolved {
        Some(path) => {
            let mut cmd = tokio::process::Command::new(path);
            cmd.arg0(program);
            cmd
        }
        None => tokio::process::Command::new(program),
    };
    cmd.args(args)
        .current_dir(&desired.workdir)
        .env_clear()
        .envs(env)
        .env(ENV_WORKERSET, &desired.name)
        .env(ENV_WORKER_ID, action.worker.to_string())
        .env(ENV_STATE_DIR, state_dir)
        .env(ENV_FLEET, crate::state::FleetFiles::of(desired).key())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        // Its own process group: a Ctrl-C at automon's terminal does not reach workers, and a
        // stop can signal the worker together with its children.
        .process_group(0)
        .kill_on_drop(false);
    // automon raised its open-files limit for its fleet; the worker gets the original one.
    crate::act::fdlimit::restore_in_child(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot execute {program:?} in {}: {e}",
            desired.workdir.display()
        )
    })?;
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        // Only a reaped child has no pid; nothing of it is left to track.
        return Err("the child exited before its pid could be read".into());
    };
    let root = Path::new("/proc");
    // The child is not reaped until the task below waits on it, so its stat entry exists.
    let stat = match proc::try_read_stat(root, pid) {
        Ok(Some(stat)) => stat,
        // A start is one transaction: a process automon cannot identify is not left running.
        failed => {
            let why = match failed {
                Err(e) => format!("cannot read /proc/{pid}/stat: {e}"),
                _ => format!("cannot read /proc/{pid}/stat"),
            };
            return Err(format!("{why}; {}", abort_child(&mut child, pid)));
        }
    };
    let identity = ProcessIdentity {
        pid,
        start_ticks: stat.start_ticks,
        boot_id: proc::boot_id(root),
    };
    let started_at =
        crate::clock::BootTime::from_ticks(stat.start_ticks, proc::clock_ticks_per_second());
    let worker = action.worker;
    tokio::spawn(async move {
        let (code, signal) = match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                (status.code(), status.signal())
            }
            Err(_) => (None, None),
        };
        // The receiver is gone only when automon is shutting down.
        let _ = exits.send(ExitEvent {
            worker,
            pid,
            code,
            signal,
        });
    });
    Ok((identity, started_at))
}

/// The file `execvp` would run for `program` with the child's `path` (`PATH`) from `workdir`:
/// the first regular, executable file named `program` in a `PATH` directory (an empty or
/// relative directory counts from `workdir`, where the child execs). `None` — the child then
/// searches itself — for a program named by a path, without a `PATH`, when nothing is found,
/// and for a file that is neither an ELF binary nor a `#!` script (`execvp` runs such a file
/// with `/bin/sh`; `posix_spawn` would not).
pub fn resolve_program(
    program: &str,
    path: Option<&std::ffi::OsStr>,
    workdir: &Path,
) -> Option<std::path::PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    for dir in std::env::split_paths(path?) {
        let candidate = if dir.as_os_str().is_empty() {
            workdir.join(program)
        } else {
            workdir.join(dir).join(program)
        };
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_err() {
            continue;
        }
        let mut magic = [0u8; 4];
        let runs_directly = std::fs::File::open(&candidate)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok_and(|()| magic.starts_with(b"#!") || magic == *b"\x7fELF");
        return runs_directly.then_some(candidate);
    }
    None
}

/// Undoes a start whose process could not be identified: SIGKILL to its process group (it
/// leads one: `process_group(0)` ran before `exec`), then reaps it, so that no process automon
/// started runs untracked. Says what became of it, for the error message.
fn abort_child(child: &mut tokio::process::Child, pid: i32) -> String {
    use nix::sys::signal::{Signal, killpg};
    let _ = killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    // SIGKILL ends a process at once unless it is in uninterruptible I/O; a short blocking wait
    // keeps the transaction whole in the common case.
    for _ in 0..500 {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => {
                return format!("the spawned process group {pid} was killed and reaped");
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    format!(
        "the spawned process group {pid} was sent SIGKILL but has not exited yet (uninterruptible I/O?); it is reaped when it does"
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::resolve_program;

    fn file(path: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_program_is_found_on_the_childs_path_as_execvp_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        // Not executable in the first directory: skipped, as execvp skips it (EACCES).
        file(&a.join("work"), "#!/bin/sh\nexit 0\n", 0o644);
        file(&b.join("work"), "#!/bin/sh\nexit 0\n", 0o755);
        let path = std::env::join_paths([&a, &b]).expect("PATH");
        assert_eq!(
            resolve_program("work", Some(&path), dir.path()),
            Some(b.join("work"))
        );
        // A relative PATH directory counts from the working directory the child execs in.
        assert_eq!(
            resolve_program("work", Some("b".as_ref()), dir.path()),
            Some(dir.path().join("b").join("work"))
        );
    }

    #[test]
    fn a_program_the_child_must_look_up_itself_is_not_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        // No `#!` and not ELF: execvp runs it with /bin/sh, posix_spawn would fail with ENOEXEC.
        file(&bin.join("plain"), "exit 0\n", 0o755);
        let path = bin.as_os_str();
        assert_eq!(resolve_program("plain", Some(path), dir.path()), None);
        assert_eq!(resolve_program("missing", Some(path), dir.path()), None);
        assert_eq!(resolve_program("./plain", Some(path), dir.path()), None);
        assert_eq!(resolve_program("plain", None, dir.path()), None);
    }
}
