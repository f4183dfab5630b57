//! One-time preparation before workers start: the manifest's `setup` command (skipped when the
//! path it `creates` exists) and the `end_command` that prints the end of the key range.

use std::process::{Command, Stdio};

use crate::manifest::Manifest;

/// Runs `spec.setup` unless its `creates` path exists. The command's output goes to stderr.
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
    announce(&format!(
        "setup: running {}",
        crate::text::shell_words(&setup.command)
    ));
    let status = Command::new(program)
        .args(args)
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| {
            format!(
                "setup: cannot execute {program:?} in {}: {e}",
                workdir.display()
            )
        })?;
    if !status.success() {
        return Err(format!(
            "setup: {} failed with {status}",
            crate::text::shell_words(&setup.command)
        ));
    }
    Ok(())
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
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spec.work.range.end_command: cannot execute {program:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "spec.work.range.end_command: {} failed with {}: {}",
            crate::text::shell_words(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
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
