//! The manifest: loading, validation (all problems at once), and the resolved [`Desired`] state.
//!
//! A manifest is a YAML file holding one [`WorkerSet`]. [`load`] parses it with serde-saphyr
//! under parse budgets (alias bombs, deep nesting and huge scalars are rejected), then checks
//! every rule and returns either a [`Manifest`] or a [`ManifestError`] listing every problem as
//! `FILE:LINE:COL: spec.path: what is wrong (what is expected)`.

mod desired;
pub mod duration;
mod locate;
pub mod types;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use desired::{Desired, Patterns, ResolveError, Shard, render_argv};
pub use duration::HumanDuration;
pub use types::*;

/// Largest manifest file automon reads (1 MiB); larger files are rejected before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when known.
    pub location: Option<(u64, u64)>,
    /// Dotted path of the field, e.g. `spec.workers.min`; empty for whole-file problems.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Every problem found in one manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file as the user named it.
    pub file: PathBuf,
    /// At least one problem.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some((line, col)) = p.location {
                write!(f, ":{line}:{col}")?;
            }
            if p.field.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// A parsed and validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file as the user named it (used in messages).
    pub file: PathBuf,
    /// The manifest's directory, absolute.
    pub dir: PathBuf,
    /// The WorkerSet as written, with defaults filled in.
    pub workerset: WorkerSet,
}

/// Reads, parses and validates the manifest at `file`.
///
/// # Errors
/// A [`ManifestError`] naming the file for an unreadable file, a YAML syntax error (with line
/// and column), a type error or unknown field, a parse budget breach, and every semantic rule
/// broken (see [`validate`]).
pub fn load(file: &Path) -> Result<Manifest, ManifestError> {
    let whole = |message: String| ManifestError {
        file: file.to_path_buf(),
        problems: vec![Problem {
            location: None,
            field: String::new(),
            message,
        }],
    };
    let meta = std::fs::metadata(file).map_err(|e| whole(format!("cannot read manifest: {e}")))?;
    if meta.is_dir() {
        return Err(whole(
            "is a directory (expected a WorkerSet YAML file)".into(),
        ));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(whole(format!(
            "manifest is {} bytes (expected at most {MAX_MANIFEST_BYTES})",
            meta.len()
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| whole(format!("cannot read manifest: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        whole(format!(
            "not UTF-8 at byte {} (expected a UTF-8 YAML file)",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let workerset = parse(&text).map_err(|problems| ManifestError {
        file: file.to_path_buf(),
        problems,
    })?;
    let problems = validate::validate(&workerset, &text);
    if !problems.is_empty() {
        return Err(ManifestError {
            file: file.to_path_buf(),
            problems,
        });
    }
    let abs = std::path::absolute(file).map_err(|e| whole(format!("cannot resolve path: {e}")))?;
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(Manifest {
        file: file.to_path_buf(),
        dir,
        workerset,
    })
}

/// Parses manifest text into a [`WorkerSet`] under parse budgets; no semantic checks.
///
/// # Errors
/// One [`Problem`] with the line and column serde-saphyr reports.
pub fn parse(text: &str) -> Result<WorkerSet, Vec<Problem>> {
    if text.trim().is_empty() {
        return Err(vec![Problem {
            location: None,
            field: String::new(),
            message: "empty manifest (expected a WorkerSet mapping)".into(),
        }]);
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 32,
            max_aliases: 100,
            max_anchors: 100,
            max_nodes: 20_000,
            max_total_scalar_bytes: 512 * 1024,
            max_documents: 1,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<WorkerSet>(text, options).map_err(|e| {
        let location = e.location().map(|l| (l.line(), l.column()));
        let message = e.without_snippet().render();
        let message = strip_location_suffix(message.trim());
        vec![Problem {
            location,
            field: String::new(),
            message,
        }]
    })
}

/// serde-saphyr appends " at line X, column Y" to messages; the location is printed in front.
fn strip_location_suffix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}
