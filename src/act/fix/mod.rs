//! The code-fix engine: applies exactly the proposed change to one allow-listed file, or nothing.
//!
//! # Layout
//! - `proposal` — [`parse_proposal`]: an LLM's `code_changes` text → [`Proposal`] (three formats).
//! - `matcher` — places a proposal in a file's text (function by Python parser, graded string
//!   match, context-located diff hunks) and recognises "already applied".
//! - `python` — the interpreter's `ast.parse` (function line ranges, validation) and `compile()`.
//! - `write` — hashes, timestamped backups, atomic replacement.
//!
//! # Pipeline of [`apply_code_fix`]
//! 1. Proposal checks (no elisions, no empty change, old != new).
//! 2. Target: the proposal's file (relative to the workdir, `a/`/`b/` stripped; a bare name that
//!    is a path suffix of exactly one allow-listed file means that file), or the only allow-listed
//!    file. Paths with `..`, paths (after resolving symlinks) outside the workdir and files not on
//!    the allow-list are refused.
//! 3. The file must be UTF-8 with consistent line endings; the new text is built in memory, with
//!    the file's line endings (CRLF stays CRLF) and indentation (see `matcher`).
//! 4. Already applied → [`Outcome::AlreadyApplied`], nothing written.
//! 5. The patch hash (SHA-256 of the absolute path, NUL, the resulting content) must not be in
//!    `applied_hashes`; the changed-line count (a modified line counts once) must not exceed
//!    `max_changed_lines`.
//! 6. Validation: `ast.parse` of the result, then `<interpreter> -c "compile(...)"` on a copy in a
//!    temporary directory. A dry run stops here and returns the diff.
//! 7. `test_command` (if any) runs in the workdir with `AUTOMON_CANDIDATE` = the temporary copy
//!    and `AUTOMON_TARGET` = the real file (not yet changed); it must exit 0 within 5 minutes.
//! 8. Backup of the original bytes into `backups_dir`, then the atomic replace.
//!
//! Any failure before step 8 leaves the file byte-identical; the [`Rejection`] says why.

mod matcher;
mod proposal;
mod python;
mod write;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::manifest::Desired;

pub use matcher::{Edit, Text};
pub use proposal::{Hunk, HunkLine, Proposal, is_elision, parse_proposal};
pub use write::{patch_hash, sha256_hex};

/// Longest a `test_command` may run before it is killed and the fix rejected.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What a code fix may touch and how it is validated (from `spec.fixes.code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFixPolicy {
    /// The allow-list: absolute paths inside `workdir`.
    pub files: Vec<PathBuf>,
    /// The workers' working directory, absolute; relative proposal paths are resolved here.
    pub workdir: PathBuf,
    /// Python interpreter for `ast.parse` and `compile()` (e.g. `python3`).
    pub interpreter: String,
    /// Optional argv that must exit 0 (see the module doc for its environment).
    pub test_command: Option<Vec<String>>,
    /// Most lines one fix may change (a modified line counts once, as do added/removed ones).
    pub max_changed_lines: u32,
    /// The test command's environment (the workers', [`crate::secrets::env::child_env`]: never
    /// the LLM key); `None` runs it with automon's.
    pub env: Option<std::collections::BTreeMap<std::ffi::OsString, std::ffi::OsString>>,
    /// Removes secrets from the test command's output before it is quoted in a rejection.
    pub redactor: crate::secrets::Redactor,
}

impl CodeFixPolicy {
    /// The policy of a resolved manifest (`code_files`, `workdir`, `fixes.code`).
    pub fn from_desired(d: &Desired) -> Self {
        let code = &d.fixes.code;
        Self {
            files: d.code_files.clone(),
            workdir: d.workdir.clone(),
            interpreter: code.interpreter.clone(),
            test_command: code.test_command.clone(),
            max_changed_lines: code.max_changed_lines,
            env: Some(crate::secrets::env::child_env(
                std::env::vars_os(),
                &d.env,
                d.inherit_env,
                &d.llm.api_key_env,
            )),
            redactor: crate::secrets::redactor_for(d),
        }
    }
}

/// Why a code fix was not applied (or not rolled back); the file was left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Rejection {
    /// One sentence naming the file (when known) and the reason.
    pub why: String,
}

impl Rejection {
    fn at(file: &str, reason: &str) -> Self {
        Self {
            why: format!("code fix to {file} rejected: {reason}"),
        }
    }

    pub(crate) fn proposal(file: Option<&str>, reason: &str) -> Self {
        match file {
            Some(f) => Self::at(f, reason),
            None => Self {
                why: format!("code fix rejected: {reason}"),
            },
        }
    }
}

/// A change that was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The changed file (absolute, symlinks resolved).
    pub file: PathBuf,
    /// The backup of the original bytes.
    pub backup: PathBuf,
    /// The patch hash (hex SHA-256 of path, NUL, new content); record it in `applied_hashes`.
    pub patch_hash: String,
    /// Unified diff of the change (`a/<rel path>` → `b/<rel path>`, 3 lines of context).
    pub diff: String,
    /// Lines changed (a modified line counts once).
    pub changed_lines: u32,
}

/// What [`apply_code_fix`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written, after a backup.
    Applied(Applied),
    /// The change is already in the file; nothing written. `patch_hash` is that of the current
    /// content.
    AlreadyApplied {
        /// The file.
        file: PathBuf,
        /// Hash of the path and the current content.
        patch_hash: String,
    },
    /// Dry run: validated (parse and compile), nothing written, `test_command` not run.
    DryRun {
        /// The file.
        file: PathBuf,
        /// The diff that would be applied.
        diff: String,
        /// The patch hash it would have.
        patch_hash: String,
    },
}

/// Applies `proposal` under `policy` (pipeline in the module doc). Backups go to `backups_dir`
/// (created if missing), e.g. the state directory's `backups/`. `applied_hashes` are the patch
/// hashes applied before; a proposal producing one of them is refused. With `dry_run` nothing is
/// written.
///
/// # Errors
/// A [`Rejection`] for every refusal; the target file is then byte-identical to before.
pub fn apply_code_fix(
    policy: &CodeFixPolicy,
    proposal: &Proposal,
    backups_dir: &Path,
    applied_hashes: &BTreeSet<String>,
    dry_run: bool,
) -> Result<Outcome, Rejection> {
    proposal.check()?;
    let (path, label) = resolve_target(policy, proposal.file())?;
    let reject = |reason: String| Rejection::at(&label, &reason);

    let meta = fs::metadata(&path).map_err(|e| reject(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(reject("it is not a regular file".into()));
    }
    let bytes = fs::read(&path).map_err(|e| reject(format!("cannot read it: {e}")))?;
    let original = String::from_utf8(bytes.clone()).map_err(|e| {
        reject(format!(
            "the file is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let text = Text::parse(&original).map_err(&reject)?;
    let new = match matcher::apply(&text, proposal, &policy.interpreter, &label) {
        Ok(Edit::Changed(t)) => t.render(),
        Ok(Edit::AlreadyApplied) => {
            return Ok(Outcome::AlreadyApplied {
                patch_hash: patch_hash(&path, &bytes),
                file: path,
            });
        }
        Err(e) => return Err(reject(e)),
    };
    let hash = patch_hash(&path, new.as_bytes());
    if new == original {
        return Ok(Outcome::AlreadyApplied {
            file: path,
            patch_hash: hash,
        });
    }
    if applied_hashes.contains(&hash) {
        return Err(reject(format!(
            "this patch ({}) was applied before and is never applied twice",
            &hash[..12]
        )));
    }
    let diff = unified_diff(&original, &new, &label);
    let changed = changed_lines(&original, &new);
    if changed > policy.max_changed_lines {
        return Err(reject(format!(
            "it changes {changed} lines, more than the cap of {}",
            policy.max_changed_lines
        )));
    }

    // Validation: the parser, then the interpreter's own compile() on a temporary copy.
    python::parse_functions(&policy.interpreter, &new, &label)
        .map_err(|e| reject(format!("the result does not parse: {e}")))?;
    let tmp = tempfile::tempdir().map_err(|e| reject(format!("no temporary directory: {e}")))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "candidate.py".into());
    let candidate = tmp.path().join(&file_name);
    fs::write(&candidate, new.as_bytes())
        .map_err(|e| reject(format!("cannot write the temporary copy: {e}")))?;
    python::compile_check(&policy.interpreter, &candidate).map_err(|e| {
        reject(format!(
            "the result fails {}'s compile(): {e}",
            policy.interpreter
        ))
    })?;
    if dry_run {
        return Ok(Outcome::DryRun {
            file: path,
            diff,
            patch_hash: hash,
        });
    }
    if let Some(cmd) = &policy.test_command {
        run_test(policy, cmd, &candidate, &path, tmp.path()).map_err(&reject)?;
    }

    // The file must not have changed while we validated.
    if fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
        return Err(reject(
            "the file changed while the fix was validated".into(),
        ));
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%S%.3fZ")
        .to_string();
    let new_sha = sha256_hex(new.as_bytes());
    let backup = write::write_backup(backups_dir, &file_name, &stamp, &new_sha[..8], &bytes)
        .map_err(|e| {
            reject(format!(
                "cannot write the backup in {}: {e}",
                backups_dir.display()
            ))
        })?;
    write::atomic_write(&path, new.as_bytes(), meta.permissions())
        .map_err(|e| reject(format!("cannot replace the file: {e}")))?;
    Ok(Outcome::Applied(Applied {
        file: path,
        backup,
        patch_hash: hash,
        diff,
        changed_lines: changed,
    }))
}

/// Restores `applied.backup` over `applied.file` atomically (keeping the file's permissions).
/// Nothing to do when the file already equals the backup.
///
/// # Errors
/// A [`Rejection`] when the backup cannot be read, the file changed since the fix (its content no
/// longer matches `patch_hash`; it is left alone), or the write fails.
pub fn rollback(applied: &Applied) -> Result<(), Rejection> {
    let label = applied.file.display().to_string();
    let reject = |reason: String| Rejection {
        why: format!("rollback of {label} refused: {reason}"),
    };
    let backup = fs::read(&applied.backup).map_err(|e| {
        reject(format!(
            "cannot read the backup {}: {e}",
            applied.backup.display()
        ))
    })?;
    let current = fs::read(&applied.file).map_err(|e| reject(format!("cannot read it: {e}")))?;
    if current == backup {
        return Ok(());
    }
    if patch_hash(&applied.file, &current) != applied.patch_hash {
        return Err(reject(
            "the file changed after the fix was applied; restore the backup by hand".into(),
        ));
    }
    let perms = fs::metadata(&applied.file)
        .map_err(|e| reject(format!("cannot read it: {e}")))?
        .permissions();
    write::atomic_write(&applied.file, &backup, perms)
        .map_err(|e| reject(format!("cannot replace the file: {e}")))
}

/// The target file (absolute, symlinks resolved) and its name for messages (relative to the
/// workdir when inside it).
fn resolve_target(
    policy: &CodeFixPolicy,
    file: Option<&str>,
) -> Result<(PathBuf, String), Rejection> {
    let shown = file.unwrap_or("the allow-listed file");
    let reject = |reason: String| Rejection::at(shown, &reason);
    let workdir = fs::canonicalize(&policy.workdir).map_err(|e| {
        reject(format!(
            "the working directory {} is unreadable: {e}",
            policy.workdir.display()
        ))
    })?;
    let chosen: PathBuf = match file {
        None => match policy.files.as_slice() {
            [only] => only.clone(),
            files => {
                return Err(reject(format!(
                    "the proposal names no file and {} files are allow-listed",
                    files.len()
                )));
            }
        },
        Some(name) => {
            let p = Path::new(name);
            if p.components().any(|c| c == Component::ParentDir) {
                return Err(reject("the path contains `..`".into()));
            }
            let joined = policy.workdir.join(p);
            let direct = fs::canonicalize(&joined)
                .ok()
                .filter(|c| policy.files.iter().any(|f| canon_eq(f, c)));
            match direct {
                Some(c) => c,
                None if p.is_absolute() => {
                    return Err(reject(
                        "an absolute path that is not an allow-listed file".into(),
                    ));
                }
                None => {
                    // A bare or partial path: the one allow-listed file it is a suffix of.
                    let hits: Vec<&PathBuf> =
                        policy.files.iter().filter(|f| f.ends_with(p)).collect();
                    match hits.as_slice() {
                        [one] => (*one).clone(),
                        _ => return Err(reject("the file is not on the allow-list".into())),
                    }
                }
            }
        }
    };
    let canonical = fs::canonicalize(&chosen)
        .map_err(|e| reject(format!("cannot resolve {}: {e}", chosen.display())))?;
    if !canonical.starts_with(&workdir) {
        return Err(reject(format!(
            "it leads outside the working directory (to {})",
            canonical.display()
        )));
    }
    let label = canonical
        .strip_prefix(&workdir)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| canonical.display().to_string());
    Ok((canonical, label))
}

fn canon_eq(allowed: &Path, canonical: &Path) -> bool {
    fs::canonicalize(allowed).is_ok_and(|a| a == canonical)
}

/// Unified diff of two texts via `similar`, 3 lines of context, headers `a/LABEL`, `b/LABEL`.
pub fn unified_diff(old: &str, new: &str, label: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{label}"), &format!("b/{label}"))
        .to_string()
}

/// Lines changed between two texts: per diff operation, the larger of removed and added lines.
pub fn changed_lines(old: &str, new: &str) -> u32 {
    let diff = similar::TextDiff::from_lines(old, new);
    let total: usize = diff
        .ops()
        .iter()
        .map(|op| match *op {
            similar::DiffOp::Equal { .. } => 0,
            similar::DiffOp::Delete { old_len, .. } => old_len,
            similar::DiffOp::Insert { new_len, .. } => new_len,
            similar::DiffOp::Replace {
                old_len, new_len, ..
            } => old_len.max(new_len),
        })
        .sum();
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// Runs the test command; `Err` says how it failed (exit status and its last output line).
fn run_test(
    policy: &CodeFixPolicy,
    cmd: &[String],
    candidate: &Path,
    target: &Path,
    scratch: &Path,
) -> Result<(), String> {
    let shown = cmd.join(" ");
    let Some((program, args)) = cmd.split_first() else {
        return Err("the test command is empty".into());
    };
    let out_path = scratch.join("test-output.log");
    let out = File::create(&out_path).map_err(|e| format!("cannot capture test output: {e}"))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot capture test output: {e}"))?;
    let mut command = Command::new(program);
    if let Some(env) = &policy.env {
        command.env_clear().envs(env);
    }
    let mut child = command
        .args(args)
        .current_dir(&policy.workdir)
        .env("AUTOMON_CANDIDATE", candidate)
        .env("AUTOMON_TARGET", target)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run the test command `{shown}`: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > TEST_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the test command `{shown}` ran longer than {} s",
                    TEST_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("the test command `{shown}` failed: {e}")),
        }
    };
    if status.success() {
        Ok(())
    } else {
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        Err(format!(
            "the test command `{shown}` failed ({status}): {}",
            policy.redactor.redact(&python::last_line(&output))
        ))
    }
}
