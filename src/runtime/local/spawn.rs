//! Starting a worker: argv as a vector (never a shell string), its own process group, cwd and
//! env from the manifest (see [`crate::secrets::env::child_env`]: never automon's LLM key),
//! stdout and stderr appended to its log (never truncated), and marker variables so a later
//! automon can recognise it. The [`Reaper`] waits for the child and reports its exit.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::reaper::Reaper;
use crate::manifest::Desired;
use crate::observe::{
    ENV_FLEET, ENV_STATE_DIR, ENV_WORKER_ID, ENV_WORKERSET, ProcessIdentity, proc,
};
use crate::plan::StartAction;

/// What every start of one pass shares, worked out once rather than per start (a pass may
/// start a thousand workers): the child's environment, the fleet key it carries, and each
/// program found on the child's `PATH`. Made at the pass's first start and dropped at the start
/// of the next pass ([`super::Local::observe`]); a changed manifest gets a new runtime, so one
/// cache never sees two manifests.
#[derive(Debug, Default)]
pub struct StartCache(Option<Shared>);

#[derive(Debug)]
struct Shared {
    env: Vec<(OsString, OsString)>,
    fleet_key: String,
    programs: HashMap<String, Option<PathBuf>>,
}

impl StartCache {
    /// The shared parts for `desired`, made now unless already made this pass.
    fn for_desired(&mut self, desired: &Desired) -> &mut Shared {
        self.0.get_or_insert_with(|| Shared {
            env: crate::secrets::env::child_env(
                std::env::vars_os(),
                &desired.env,
                desired.inherit_env,
                &desired.llm.api_key_env,
            )
            .into_iter()
            .collect(),
            fleet_key: crate::state::FleetFiles::of(desired).key(),
            programs: HashMap::new(),
        })
    }
}

impl Shared {
    /// `program` as found on the child's `PATH` ([`resolve_program`]), looked up once a pass.
    fn program(&mut self, program: &str, workdir: &Path) -> Option<PathBuf> {
        if let Some(found) = self.programs.get(program) {
            return found.clone();
        }
        let path = self
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let found = resolve_program(program, path, workdir);
        self.programs.insert(program.to_string(), found.clone());
        found
    }
}

/// Starts the worker described by `action` and hands it to `reaper`; on success returns its
/// identity and start time.
///
/// # Errors
/// A sentence saying what failed: opening the log, executing the command, reading `/proc`.
pub fn spawn_worker(
    desired: &Desired,
    action: &StartAction,
    state_dir: &Path,
    cache: &mut StartCache,
    reaper: &Reaper,
) -> Result<(ProcessIdentity, crate::clock::BootTime), String> {
    let Some((program, args)) = action.argv.split_first() else {
        return Err("empty command".into());
    };
    let log_path = desired.log_path(action.worker);
    // Without blocking: the open of a FIFO for writing waits for a reader, and would hang the
    // control loop (a FIFO without one fails at once with ENXIO instead).
    let open_log = || {
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().create(true).append(true),
            nix::libc::O_NONBLOCK,
        )
        .open(&log_path)
    };
    // The log's directory is made only when the log cannot be opened without it.
    let log = match open_log() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = log_path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            open_log()
        }
        opened => opened,
    }
    .map_err(|e| match e.raw_os_error() {
        Some(nix::libc::ENXIO) => format!(
            "cannot open log {}: it is a FIFO or a socket, not a file",
            log_path.display()
        ),
        _ => format!("cannot open log {}: {e}", log_path.display()),
    })?;
    // A FIFO (with a reader) or a socket is no log automon can read back; a device
    // (`/dev/null`) is left to the user. Then the worker's output blocks as usual.
    if let Ok(meta) = log.metadata() {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_fifo() || kind.is_socket() {
            let what = if kind.is_fifo() { "a FIFO" } else { "a socket" };
            return Err(format!(
                "cannot use log {}: it is {what}, not a file",
                log_path.display()
            ));
        }
    }
    nix::fcntl::fcntl(
        &log,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_APPEND),
    )
    .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    let cache = cache.for_desired(desired);
    // The program found on the child's PATH here, as `execvp` would find it, lets the standard
    // library start it with `posix_spawn` (no copy of automon's page tables per start); argv[0]
    // stays the manifest's word. Not found here: the child's own `execvp` looks, as before.
    let mut cmd = match cache.program(program, &desired.workdir) {
        Some(path) => {
            let mut cmd = std::process::Command::new(path);
            std::os::unix::process::CommandExt::arg0(&mut cmd, program);
            cmd
        }
        None => std::process::Command::new(program),
    };
    cmd.args(args)
        .current_dir(&desired.workdir)
        .env_clear()
        .envs(cache.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_WORKERSET, &desired.name)
        .env(ENV_WORKER_ID, action.worker.to_string())
        .env(ENV_STATE_DIR, state_dir)
        .env(ENV_FLEET, &cache.fleet_key)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // Its own process group: a Ctrl-C at automon's terminal does not reach workers, and a
    // stop can signal the worker together with its children.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot execute {program:?} in {}: {e}",
            desired.workdir.display()
        )
    })?;
    let Ok(pid) = i32::try_from(child.id()) else {
        return Err("the child's pid is out of range".into());
    };
    let root = Path::new("/proc");
    // The child is not reaped until the reaper waits for it, so its stat entry exists.
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
    reaper.watch(action.worker, pid);
    let identity = ProcessIdentity {
        pid,
        start_ticks: stat.start_ticks,
        boot_id: proc::boot_id(root),
    };
    let started_at =
        crate::clock::BootTime::from_ticks(stat.start_ticks, proc::clock_ticks_per_second());
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
fn abort_child(child: &mut std::process::Child, pid: i32) -> String {
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

    /// Regression (issue 25, fault safety 1): a start that spawned its process and then could
    /// not read `/proc/PID/stat` (out of descriptors, when automon held one per worker) left
    /// the process running, untracked, and each retry added one more. The undo kills the
    /// spawned group, its own children included, and reaps the process it spawned.
    #[test]
    fn a_started_process_that_cannot_be_identified_is_killed_with_its_group_and_reaped() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & sleep 300"])
            .process_group(0)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid");
        let said = super::abort_child(&mut child, pid);
        assert_eq!(
            said,
            format!("the spawned process group {pid} was killed and reaped")
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the spawned process is reaped, not left a zombie"
        );
        // Its child (re-parented when the shell died) got the group's SIGKILL too: the group
        // empties once init has reaped it (waited for, not timed).
        let group = nix::unistd::Pid::from_raw(pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while nix::sys::signal::killpg(group, None).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the spawned group {pid} still has members a minute after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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
