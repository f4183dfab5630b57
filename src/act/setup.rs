//! One-time preparation before workers start: the manifest's `setup` command (skipped when the
//! path it `creates` exists) and the `end_command` that prints the end of the key range.

use std::process::{Command, Stdio};

use crate::manifest::Manifest;

/// Runs `spec.setup` unless its `creates` path exists. The command's output (stdout and stderr)
/// goes to automon's stderr line by line, redacted ([`crate::secrets::redactor_for_manifest`]).
///
/// # Errors
/// A sentence naming the command and how it failed.
pub fn run_setup(manifest: &Manifest, announce: impl Fn(&str)) -> Result<(), String> {
    let spec = &manifest.workerset.spec;
    let Some(setup) = &spec.setup else {
        return Ok(());
    };
    let workdir = manifest.dir.join(&spec.template.workdir);
    if let Some(creates) = &setup.creates
        && workdir.join(creates).exists()
    {
        return Ok(());
    }
    let Some((program, args)) = setup.command.split_first() else {
        return Ok(());
    };
    announce(&format!("setup: running {}", setup.command.join(" ")));
    let mut child = Command::new(program)
        .args(args)
        .current_dir(&workdir)
        .env_clear()
        .envs(crate::secrets::env::child_env_for(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "setup: cannot execute {program:?} in {}: {e}",
                workdir.display()
            )
        })?;
    let redactor = crate::secrets::redactor_for_manifest(manifest);
    let (out, err) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|s| {
        let redactor = &redactor;
        s.spawn(move || forward_redacted(err, redactor));
        forward_redacted(out, redactor);
    });
    let status = child
        .wait()
        .map_err(|e| format!("setup: cannot wait for {program:?}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "setup: {} failed with {status}",
            setup.command.join(" ")
        ));
    }
    Ok(())
}

/// Copies `from` to automon's stderr one line at a time, each redacted.
fn forward_redacted(from: Option<impl std::io::Read>, redactor: &crate::secrets::Redactor) {
    use std::io::{BufRead, Write};
    let Some(from) = from else {
        return;
    };
    let mut reader = std::io::BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = redactor.redact(&String::from_utf8_lossy(&line));
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
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
            crate::secrets::redact_shapes(String::from_utf8_lossy(&out.stderr).trim())
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
