//! One-time preparation before workers start: the manifest's `setup` command (skipped when the
//! path it `creates` exists) and the `end_command` that prints the end of the key range.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::manifest::Manifest;

/// How a setup run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupEnd {
    /// Done, or nothing to do.
    Done,
    /// automon was asked to stop while setup ran: the setup's process group was sent SIGTERM
    /// and, after the template's `stop_grace`, SIGKILL; it is gone.
    Interrupted,
}

/// The environment variable that marks a setup process (and whatever it starts) with the state
/// directory it was started for, so a later automon finds it even when it was killed before it
/// could record the setup's pid.
pub const ENV_SETUP: &str = "AUTOMON_SETUP";

/// File name of the setup record inside the state directory: written (and fsynced) before the
/// setup is spawned, rewritten with its identity after, removed when it has ended.
pub const SETUP_FILE: &str = "setup.json";

/// A setup that automon started (or is about to start): `STATE_DIR/setup.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetupRecord {
    /// The command.
    pub command: Vec<String>,
    /// Its identity once spawned; `None` while only the intent is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::observe::ProcessIdentity>,
    /// When the record was written.
    pub at: jiff::Timestamp,
}

/// Writes `record` to `state_dir/setup.json` durably (temp file, fsync, rename, fsync of the
/// directory).
fn write_record(state_dir: &Path, record: &SetupRecord) -> std::io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    crate::state::private::ensure_dir(state_dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(state_dir)?;
    tmp.write_all(&json)?;
    tmp.as_file().sync_all()?;
    tmp.persist(state_dir.join(SETUP_FILE))
        .map_err(|e| e.error)?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Reads `state_dir/setup.json`; `None` when absent or unreadable.
pub fn read_record(state_dir: &Path) -> Option<SetupRecord> {
    serde_json::from_slice(&std::fs::read(state_dir.join(SETUP_FILE)).ok()?).ok()
}

/// The live leader of a setup started for `state_dir` by an earlier automon: the process the
/// record names, when it is still that process; without a recorded identity (the automon was
/// killed between the spawn and the record), the processes that carry [`ENV_SETUP`] with this
/// directory and lead their own process group, as a setup does. Background processes a
/// finished setup left running do not count: only the setup itself is waited for.
fn leftover_setup(state_dir: &Path, record: &SetupRecord) -> Vec<i32> {
    use crate::observe::proc;
    let root = Path::new("/proc");
    if let Some(id) = &record.identity {
        let alive = matches!(
            proc::check(root, &proc::boot_id(root), id),
            crate::observe::ProcessStatus::Alive { .. }
        );
        return if alive { vec![id.pid] } else { Vec::new() };
    }
    let me = state_dir.to_string_lossy();
    proc::list_pids(root)
        .into_iter()
        .filter(|pid| {
            proc::read_stat(root, *pid)
                .is_some_and(|s| s.pgid == *pid && !matches!(s.state, 'Z' | 'X' | 'x'))
                && proc::environ_var(root, *pid, ENV_SETUP).as_deref() == Some(&*me)
        })
        .collect()
}

/// Waits for the setup an earlier automon started and did not see end (it was killed while
/// the setup ran: the setup is in its own process group and outlives it), so that two setups
/// never run at once. When `shutdown` resolves first, that setup is stopped as this
/// automon's own would be (SIGTERM, SIGKILL after `grace`).
async fn await_leftover(
    state_dir: &Path,
    grace: std::time::Duration,
    announce: &impl Fn(&str),
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> SetupEnd {
    let Some(record) = read_record(state_dir) else {
        // Only the lock holder writes the record; without one no setup of ours can run.
        return SetupEnd::Done;
    };
    let mut pids = leftover_setup(state_dir, &record);
    if !pids.is_empty() {
        announce(&format!(
            "setup: the setup an earlier automon started at {} is still running (pid {}: {}); waiting for it to end before anything else (two setups never run at once)",
            record.at.round(jiff::Unit::Second).unwrap_or(record.at),
            pids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            crate::text::shell_words(&record.command)
        ));
    }
    while !pids.is_empty() {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            () = shutdown.as_mut() => {
                announce("setup: interrupted while waiting for the earlier setup; stopping it (SIGTERM, SIGKILL after the stop grace)");
                stop_marked(state_dir, &record, grace).await;
                return SetupEnd::Interrupted;
            }
        }
        pids = leftover_setup(state_dir, &record);
        if pids.is_empty() {
            announce("setup: the earlier setup has ended");
        }
    }
    let _ = std::fs::remove_file(state_dir.join(SETUP_FILE));
    SetupEnd::Done
}

/// Sends SIGTERM to the earlier setup's process group (its leader re-identified right before),
/// then SIGKILL when it is left after `grace`.
async fn stop_marked(state_dir: &Path, record: &SetupRecord, grace: std::time::Duration) {
    use nix::sys::signal::{Signal, killpg};
    let deadline = tokio::time::Instant::now() + grace;
    for s in [Signal::SIGTERM, Signal::SIGKILL] {
        for pid in leftover_setup(state_dir, record) {
            let _ = killpg(nix::unistd::Pid::from_raw(pid), s);
        }
        while tokio::time::Instant::now() < deadline
            && !leftover_setup(state_dir, record).is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    if leftover_setup(state_dir, record).is_empty() {
        let _ = std::fs::remove_file(state_dir.join(SETUP_FILE));
    }
}

/// Runs `spec.setup` unless its `creates` path exists. The command's output (stdout and stderr)
/// goes to automon's stderr line by line, redacted
/// ([`crate::secrets::redactor_for_manifest`]); its environment is the workers'
/// ([`crate::secrets::env::child_env_for`]). It runs in its own process group; when `shutdown` resolves first, the group is sent SIGTERM,
/// SIGKILL after the template's `stop_grace`, and awaited, so no setup outlives the automon
/// that started it (the next automon would run a second one beside it).
///
/// Intent is durable before the spawn: `STATE_DIR/setup.json` names the command before it
/// starts and its identity after, and the setup carries [`ENV_SETUP`]. An automon killed
/// while its setup ran (SIGKILL leaves the group running) leaves both behind; the next one
/// finds that setup and waits for it to end before it decides anything (see
/// [`await_leftover`]), so two setups never run at once.
///
/// # Errors
/// A sentence naming the command and how it failed, or that its record cannot be written.
pub async fn run_setup(
    manifest: &Manifest,
    state_dir: &Path,
    announce: impl Fn(&str),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<SetupEnd, String> {
    let spec = &manifest.workerset.spec;
    let state_dir = &std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    tokio::pin!(shutdown);
    if await_leftover(
        state_dir,
        spec.template.stop_grace.0,
        &announce,
        &mut shutdown,
    )
    .await
        == SetupEnd::Interrupted
    {
        return Ok(SetupEnd::Interrupted);
    }
    let Some(setup) = &spec.setup else {
        return Ok(SetupEnd::Done);
    };
    let workdir = manifest.dir.join(&spec.template.workdir);
    if let Some(creates) = &setup.creates
        && workdir.join(creates).exists()
    {
        return Ok(SetupEnd::Done);
    }
    let Some((program, args)) = setup.command.split_first() else {
        return Ok(SetupEnd::Done);
    };
    announce(&format!(
        "setup: running {}",
        crate::text::shell_words(&setup.command)
    ));
    let mut record = SetupRecord {
        command: setup.command.clone(),
        identity: None,
        at: jiff::Timestamp::now(),
    };
    write_record(state_dir, &record).map_err(|e| {
        format!(
            "setup: not started: its record {} cannot be written: {e}",
            state_dir.join(SETUP_FILE).display()
        )
    })?;
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&workdir)
        .env_clear()
        .envs(crate::secrets::env::child_env_for(spec))
        .env(ENV_SETUP, state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(state_dir.join(SETUP_FILE));
            return Err(format!(
                "setup: cannot execute {program:?} in {}: {e}",
                workdir.display()
            ));
        }
    };
    // Its identity, for the next automon (the marker finds it without one).
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let root = Path::new("/proc");
        if let Some(stat) = crate::observe::proc::read_stat(root, pid) {
            record.identity = Some(crate::observe::ProcessIdentity {
                pid,
                start_ticks: stat.start_ticks,
                boot_id: crate::observe::proc::boot_id(root),
            });
            if let Err(e) = write_record(state_dir, &record) {
                tracing::warn!("setup: cannot record its pid in {SETUP_FILE}: {e}");
            }
        }
    }
    let redactor = std::sync::Arc::new(crate::secrets::redactor_for_manifest(manifest));
    let forwarders = [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(forward_redacted(o, redactor.clone()))),
        child
            .stderr
            .take()
            .map(|e| tokio::spawn(forward_redacted(e, redactor.clone()))),
    ];
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let status = tokio::select! {
        status = child.wait() => status,
        () = &mut shutdown => {
            announce(&format!(
                "setup: interrupted; stopping {} (SIGTERM to its process group, SIGKILL after {})",
                setup.command.join(" "),
                spec.template.stop_grace
            ));
            let signal = |s| {
                if let Some(g) = group {
                    let _ = nix::sys::signal::killpg(g, s);
                }
            };
            signal(nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(spec.template.stop_grace.0, child.wait()).await.is_err() {
                signal(nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait().await;
            }
            // The leader is reaped; the rest of its group gets the same end.
            signal(nix::sys::signal::Signal::SIGKILL);
            drain(forwarders).await;
            let _ = std::fs::remove_file(state_dir.join(SETUP_FILE));
            return Ok(SetupEnd::Interrupted);
        }
    }
    .map_err(|e| format!("setup: waiting for {program:?}: {e}"))?;
    drain(forwarders).await;
    // It has ended (and was reaped): nothing is left for a later automon to wait for.
    let _ = std::fs::remove_file(state_dir.join(SETUP_FILE));
    if !status.success() {
        return Err(format!(
            "setup: {} failed with {status}",
            crate::text::shell_words(&setup.command)
        ));
    }
    Ok(SetupEnd::Done)
}

/// Copies `from` to automon's stderr one line at a time, each redacted.
async fn forward_redacted(
    from: impl tokio::io::AsyncRead + Unpin,
    redactor: std::sync::Arc<crate::secrets::Redactor>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => crate::stdio::err(&redactor.redact(&String::from_utf8_lossy(&line))),
        }
    }
}

/// Waits briefly for the output forwarders to reach the end of their pipes: a process the
/// setup left running in the background may hold them open, and must not hold automon.
async fn drain(forwarders: [Option<tokio::task::JoinHandle<()>>; 2]) {
    for f in forwarders.into_iter().flatten() {
        let abort = f.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(2), f)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Runs `spec.work.range.end_command` (when the manifest has one) and parses its output.
///
/// # Errors
/// A sentence naming the command and what it printed.
pub fn resolve_range_end(manifest: &Manifest) -> Result<Option<u64>, String> {
    let spec = &manifest.workerset.spec;
    let Some(cmd) = spec
        .work
        .as_ref()
        .and_then(|w| w.range.end_command.as_ref())
    else {
        return Ok(None);
    };
    let Some((program, args)) = cmd.split_first() else {
        return Ok(None);
    };
    let workdir = manifest.dir.join(&spec.template.workdir);
    let out = Command::new(program)
        .args(args)
        .current_dir(&workdir)
        .env_clear()
        .envs(crate::secrets::env::child_env_for(spec))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spec.work.range.end_command: cannot execute {program:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "spec.work.range.end_command: {} failed with {}: {}",
            crate::text::shell_words(cmd),
            out.status,
            crate::secrets::redactor_for_manifest(manifest)
                .redact(String::from_utf8_lossy(&out.stderr).trim())
        ));
    }
    let end = crate::observe::logtail::parse_number(text.trim()).ok_or_else(|| {
        match crate::manifest::out_of_range("u64", text.trim()) {
            Some(why) => format!("spec.work.range.end_command: the end it printed: {why}"),
            None => format!(
                "spec.work.range.end_command: printed {:?} (expected one integer)",
                text.trim()
            ),
        }
    })?;
    let start = spec.work.as_ref().map_or(0, |w| w.range.start);
    if end <= start {
        return Err(format!(
            "spec.work.range.end_command: end {end} ≤ start {start} (expected start < end)"
        ));
    }
    Ok(Some(end))
}
