//! One-time preparation before workers start: the manifest's `setup` command (skipped when the
//! path it `creates` exists) and the `end_command` that prints the end of the key range.

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

/// Runs `spec.setup` unless its `creates` path exists. The command's output (stdout and stderr)
/// goes to automon's stderr line by line, redacted
/// ([`crate::secrets::redactor_for_manifest`]); its environment is the workers'
/// ([`crate::secrets::env::child_env_for`]). It runs in its own process group; when `shutdown` resolves first, the group is sent SIGTERM,
/// SIGKILL after the template's `stop_grace`, and awaited, so no setup outlives the automon
/// that started it (the next automon would run a second one beside it).
///
/// # Errors
/// A sentence naming the command and how it failed.
pub async fn run_setup(
    manifest: &Manifest,
    announce: impl Fn(&str),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<SetupEnd, String> {
    let spec = &manifest.workerset.spec;
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
    announce(&format!("setup: running {}", setup.command.join(" ")));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&workdir)
        .env_clear()
        .envs(crate::secrets::env::child_env_for(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            format!(
                "setup: cannot execute {program:?} in {}: {e}",
                workdir.display()
            )
        })?;
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
    tokio::pin!(shutdown);
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
            return Ok(SetupEnd::Interrupted);
        }
    }
    .map_err(|e| format!("setup: waiting for {program:?}: {e}"))?;
    drain(forwarders).await;
    if !status.success() {
        return Err(format!(
            "setup: {} failed with {status}",
            setup.command.join(" ")
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
            cmd.join(" "),
            out.status,
            crate::secrets::redactor_for_manifest(manifest)
                .redact(String::from_utf8_lossy(&out.stderr).trim())
        ));
    }
    let end = crate::observe::logtail::parse_number(text.trim()).ok_or_else(|| {
        format!(
            "spec.work.range.end_command: printed {:?} (expected one integer)",
            text.trim()
        )
    })?;
    let start = spec.work.as_ref().map_or(0, |w| w.range.start);
    if end <= start {
        return Err(format!(
            "spec.work.range.end_command: end {end} ≤ start {start} (expected start < end)"
        ));
    }
    Ok(Some(end))
}
