//! The manifest: loading, validation (all problems at once), and the resolved [`Desired`] state.
//!
//! A manifest is a YAML file holding one [`WorkerSet`]. [`load`] parses it with serde-saphyr
//! under parse budgets (alias bombs, deep nesting and huge scalars are rejected), then checks
//! every rule and returns either a [`Manifest`] or a [`ManifestError`] listing every problem as
//! `FILE:LINE:COL: spec.path: what is wrong (what is expected)`.

mod desired;
pub mod duration;
mod locate;
mod overrides;
mod parse_message;
pub use parse_message::out_of_range;
pub mod schema;
mod suggest;
pub mod types;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use desired::{Desired, Patterns, ResolveError, Shard, normalize, render_argv};
pub use duration::HumanDuration;
pub use overrides::{Overrides, apply_overrides};
pub use types::*;
pub use validate::program_warning;

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
    load_with_overrides(file, &Overrides::default()).map(|(manifest, _)| manifest)
}

/// Like [`load`], with command-line `overrides` applied after parsing and before validation
/// (so an override is held to the same rules as the manifest). Also returns the description of
/// each override applied (see [`apply_overrides`]).
///
/// # Errors
/// As [`load`].
pub fn load_with_overrides(
    file: &Path,
    overrides: &Overrides,
) -> Result<(Manifest, Vec<String>), ManifestError> {
    let whole = |message: String| whole_file_error(file, message);
    let bytes = read_capped(file).map_err(whole)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        whole(format!(
            "not UTF-8 at byte {} (expected a UTF-8 YAML file)",
            e.utf8_error().valid_up_to()
        ))
    })?;
    load_text(file, &text, overrides)
}

/// A problem of the whole file (no line): unreadable, too large, not UTF-8.
fn whole_file_error(file: &Path, message: String) -> ManifestError {
    ManifestError {
        file: file.to_path_buf(),
        problems: vec![Problem {
            location: None,
            field: String::new(),
            message,
        }],
    }
}

/// Like [`load_with_overrides`] for manifest `text` already read from `file` (the control loop
/// takes the text an `automon apply` read and validated, so it runs exactly what was checked).
///
/// # Errors
/// As [`load`], except for reading the file.
pub fn load_text(
    file: &Path,
    text: &str,
    overrides: &Overrides,
) -> Result<(Manifest, Vec<String>), ManifestError> {
    let whole = |message: String| whole_file_error(file, message);
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(whole(format!(
            "manifest is {} bytes (expected at most {MAX_MANIFEST_BYTES})",
            text.len()
        )));
    }
    let mut workerset = parse(text).map_err(|problems| ManifestError {
        file: file.to_path_buf(),
        problems,
    })?;
    let abs = std::path::absolute(file).map_err(|e| whole(format!("cannot resolve path: {e}")))?;
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let applied = apply_overrides(&mut workerset, overrides);
    let mut problems = validate::validate(&workerset, text, &dir);
    for p in &mut problems {
        if let Some(flag) = overrides.flag_for(&p.field) {
            p.message.push_str(&format!(" (value set by {flag})"));
        }
    }
    if !problems.is_empty() {
        return Err(ManifestError {
            file: file.to_path_buf(),
            problems,
        });
    }
    if !workerset.spec.llm.secret_env.is_empty() {
        tracing::warn!(
            "{}: spec.llm.secret_env is deprecated; list the names under spec.secrets.env (both \
             are honoured)",
            file.display()
        );
    }
    Ok((
        Manifest {
            file: file.to_path_buf(),
            dir,
            workerset,
        },
        applied,
    ))
}

/// Reads a manifest file: a regular file (after symlinks) of at most [`MAX_MANIFEST_BYTES`].
/// The file is opened without blocking and checked on the open descriptor, so a FIFO (which
/// would hang the read) or a device such as `/dev/zero` (which never ends) is refused, even if
/// it replaced the file between a check and the open; and at most the cap plus one byte is
/// read, whatever the size the file claims.
fn read_capped(file: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(file)
        .map_err(|e| format!("cannot read manifest: {e}"))?;
    let kind = f
        .metadata()
        .map_err(|e| format!("cannot read manifest: {e}"))?
        .file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(format!(
            "is {what} (expected a WorkerSet YAML file: a regular file)"
        ));
    }
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read manifest: {e}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!(
            "manifest is larger than {MAX_MANIFEST_BYTES} bytes (expected at most {MAX_MANIFEST_BYTES})"
        ));
    }
    Ok(bytes)
}

/// Parse budgets: what a manifest may contain at most. A WorkerSet needs a few hundred nodes,
/// a depth below 10 and a few kilobytes of scalars; these limits are far above that and far below
/// what hurts (alias bombs, deep nesting, huge scalars).
pub mod budget {
    /// Nesting depth of mappings and sequences.
    pub const MAX_DEPTH: usize = 32;
    /// Aliases (`*name`) in the document.
    pub const MAX_ALIASES: usize = 100;
    /// Anchors (`&name`) in the document.
    pub const MAX_ANCHORS: usize = 100;
    /// Nodes (mappings, sequences, scalars).
    pub const MAX_NODES: usize = 20_000;
    /// Total bytes of all scalars.
    pub const MAX_SCALAR_BYTES: usize = 64 * 1024;
    /// Events replayed by expanding aliases.
    pub const MAX_REPLAYED_EVENTS: usize = 10_000;
}

/// Parses manifest text into a [`WorkerSet`] under parse budgets; no semantic checks.
///
/// # Errors
/// One [`Problem`] with the line and column serde-saphyr reports, the dotted path of the field
/// being read (e.g. `spec.workers.min`) and a message that suggests the nearest valid name for
/// an unknown field.
pub fn parse(text: &str) -> Result<WorkerSet, Vec<Problem>> {
    if text.trim().is_empty() {
        return Err(vec![Problem {
            location: None,
            field: String::new(),
            message: "empty manifest (expected a WorkerSet mapping)".into(),
        }]);
    }
    // Pass 1: the whole document, typeless, under the budgets, so that hostile input (alias
    // bombs, deep nesting, huge scalars) is reported as such and not masked by the first type
    // error the typed pass would meet.
    if let Err(e) = serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(text, options()) {
        return Err(vec![problem(text, &e, String::new())]);
    }
    // Pass 2, typed. serde stops at the first problem; to report every one it can, the line
    // of each problem (and the block under it) is blanked and the text parsed again, as long
    // as what is left still parses as YAML and the next problem is not one the blanking made.
    let mut problems: Vec<Problem> = Vec::new();
    let mut edited = text.to_string();
    loop {
        let problem = match parse_typed(text, &edited) {
            Ok(workerset) if problems.is_empty() => return Ok(workerset),
            Ok(_) => break,
            Err(p) => p,
        };
        // A problem of a field whose child was blanked (it became empty or lacks that
        // child) is the blanking's, not the author's.
        let made_by_blanking = problems.iter().any(|q| {
            problem.field.is_empty()
                || q.field == problem.field
                || q.field.starts_with(&format!("{}.", problem.field))
        });
        if made_by_blanking || problems.iter().any(|q| q.location == problem.location) {
            break;
        }
        // Whole-document problems and missing fields have no line of their own to blank.
        let last = problem.field.is_empty() || problem.message.starts_with("missing field");
        let next = problem
            .location
            .filter(|_| !last)
            .and_then(|at| blank_block(&edited, at));
        problems.push(problem);
        match next {
            Some(text)
                if problems.len() < MAX_PARSE_PROBLEMS
                    && serde_saphyr::from_str_with_options::<serde::de::IgnoredAny>(
                        &text,
                        options(),
                    )
                    .is_ok() =>
            {
                edited = text;
            }
            _ => break,
        }
    }
    Err(problems)
}

/// At most this many parse problems are reported for one file.
const MAX_PARSE_PROBLEMS: usize = 20;

/// One typed parse of `edited` (the original `text` with problem lines blanked, line numbers
/// unchanged); the first problem, located in `text`.
fn parse_typed(text: &str, edited: &str) -> Result<WorkerSet, Problem> {
    let mut path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(edited, options(), |de| {
        serde_path_to_error::deserialize::<_, WorkerSet>(de).map_err(|e| {
            path = Some(dotted(e.path()));
            e.into_inner()
        })
    });
    result.map_err(|e| problem(text, &e, path.unwrap_or_default()))
}

/// `text` with the block-style entry at 1-based `(line, col)` blanked: its line and the
/// more-indented lines under it become empty, so line numbers stay; `None` when the problem
/// is not on such an entry.
fn blank_block(text: &str, (line, col): (u64, u64)) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let first = *lines.get(at)?;
    let indent = first.len() - first.trim_start().len();
    if usize::try_from(col).ok()?.checked_sub(1)? < indent {
        return None;
    }
    let mut end = at + 1;
    while let Some(l) = lines.get(end) {
        let blank = l.trim().is_empty() || l.trim_start().starts_with('#');
        if !blank && l.len() - l.trim_start().len() <= indent {
            break;
        }
        end += 1;
    }
    let out: Vec<&str> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if (at..end).contains(&i) { "" } else { *l })
        .collect();
    Some(out.join("\n"))
}

/// serde-saphyr options with automon's budgets; duplicate keys are errors.
fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: budget::MAX_DEPTH,
            max_aliases: budget::MAX_ALIASES,
            max_anchors: budget::MAX_ANCHORS,
            max_nodes: budget::MAX_NODES,
            max_total_scalar_bytes: budget::MAX_SCALAR_BYTES,
            max_documents: 1,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
        // A text field refuses what YAML reads as a number or a boolean (`name: 123`, `env:
        // {A: 1}`): the same strictness as whole numbers refusing `"4"`, the other way.
        no_schema: true,
    };
    options.alias_limits.max_total_replayed_events = budget::MAX_REPLAYED_EVENTS;
    options
}

/// One problem from a parse error met while reading `field`.
fn problem(text: &str, e: &serde_saphyr::Error, field: String) -> Problem {
    let e = e.without_snippet();
    let mut location = e.location().map(|l| (l.line(), l.column()));
    let mut message = parse_message::describe(e, &field);
    // A whole number beyond its field's type is reported by the parser as a scalar it cannot
    // read; the scalar itself says it is a number, too large.
    if let serde_saphyr::Error::InvalidScalar { ty, .. } = e
        && let Some(literal) = location.and_then(|at| scalar_at(text, at))
        && let Some(too_large) = parse_message::out_of_range(ty, literal)
    {
        message = too_large;
    }
    // serde-saphyr places a missing field at the mapping's last key (where it noticed); the
    // mapping that lacks it is named by its parent key (or, at the top, its first key).
    if let serde_saphyr::Error::SerdeMissingField { .. } = e
        && let Some(at) = location.and_then(|at| mapping_lacking(text, at, &field))
    {
        location = Some(at);
    }
    if message.contains("tab") {
        // The scanner reports where the scalar or block it was reading began; the tab itself is
        // more useful.
        if let Some(at) = indentation_tab(text) {
            location = Some(at);
            message = "tab character in indentation (expected spaces: YAML indents with spaces \
                       only)"
                .into();
        }
    }
    Problem {
        location,
        field,
        message,
    }
}

/// Where the mapping holding the key at 1-based `(line, col)` begins, for a field it lacks:
/// the line and column of its parent key `field` (its last segment: `spec.template` → the
/// `template:` above), of its `- ` for a list item, or of the document's first key at the top
/// level. `None` when the text is not laid out so (the reported place is kept).
fn mapping_lacking(text: &str, (line, col): (u64, u64), field: &str) -> Option<(u64, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let content = |l: &&str| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#') && !t.starts_with("---")
    };
    if field.is_empty() {
        let i = lines.iter().position(|l| content(l) && indent_of(l) == 0)?;
        return Some((u64::try_from(i).ok()? + 1, 1));
    }
    let name = field.rsplit('.').next()?;
    let at = usize::try_from(line).ok()?.checked_sub(1)?;
    let key_indent = usize::try_from(col).ok()?.checked_sub(1)?;
    let (i, l) = lines
        .iter()
        .enumerate()
        .take(at + 1)
        .rev()
        .find(|(_, l)| content(l) && indent_of(l) < key_indent)?;
    let t = l.trim_start();
    let is_parent = if name.parse::<usize>().is_ok() {
        t.starts_with('-')
    } else {
        [name.to_string(), format!("\"{name}\""), format!("'{name}'")]
            .iter()
            .any(|k| {
                t.strip_prefix(k.as_str())
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
    };
    if !is_parent {
        return None;
    }
    Some((
        u64::try_from(i).ok()? + 1,
        u64::try_from(indent_of(l)).ok()? + 1,
    ))
}

/// The plain scalar starting at 1-based `(line, col)`: up to the first space, comma or closing
/// bracket (the flow and block forms a number is written in).
fn scalar_at(text: &str, (line, col): (u64, u64)) -> Option<&str> {
    let line = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let rest = line.get(usize::try_from(col).ok()?.checked_sub(1)?..)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | ']' | '#'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|s| !s.is_empty())
}

/// 1-based (line, column) of the first tab in a line's leading whitespace.
fn indentation_tab(text: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let indent = &line[..line.len() - line.trim_start().len()];
        indent.find('\t').map(|col| (i as u64 + 1, col as u64 + 1))
    })
}

/// `spec.template.command.2`: the path serde was reading, in the same form validation uses.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &Path) -> String {
        match load(path) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_fifo_manifest_is_refused_without_hanging() {
        // Regression (issue 26, item 8): a FIFO hung `status` and `stop` forever. Nothing writes
        // to this one: a blocking open or read would hang the test.
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("workerset.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let e = refusal(&fifo);
        assert!(e.contains("workerset.yaml: is a FIFO (named pipe)"), "{e}");
    }

    #[test]
    fn a_symlink_to_dev_zero_is_refused_before_reading() {
        // Regression (issue 26, item 8): a symlink to /dev/zero took ~1 GB in a second.
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("workerset.yaml");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let e = refusal(&link);
        assert!(e.contains("is a character device"), "{e}");
    }

    #[test]
    fn an_oversized_manifest_is_refused_reading_at_most_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("workerset.yaml");
        let size = usize::try_from(MAX_MANIFEST_BYTES).expect("fits") + 1;
        std::fs::write(&big, vec![b'#'; size]).expect("write");
        let e = refusal(&big);
        assert!(e.contains("manifest is larger than 1048576 bytes"), "{e}");
        assert_eq!(
            read_capped(&big).map_err(|_| ()).err(),
            Some(()),
            "refused, not truncated"
        );
    }

    fn manifest_with(spec: &str, dir: &Path) -> PathBuf {
        let file = dir.join("m.yaml");
        let text = format!(
            "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {{name: m}}\nspec:\n{spec}  progress: {{file: \"p{{id}}.json\", checkpoint: /c}}\n  logs: {{file: \"w{{id}}.log\"}}\n"
        );
        std::fs::write(&file, text).expect("write");
        file
    }

    /// Regression (fresh-clone test): `shards: "4"` (a string) was accepted silently, and
    /// `shards: eight` was refused asking for "a whole number ≥ 0" although 0 is refused too.
    #[test]
    fn a_quoted_shard_count_is_refused_and_the_expected_count_says_at_least_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = |shards: &str| {
            format!(
                "  work: {{range: {{start: 1, end: 100}}, shards: {shards}}}\n  template: {{command: [sleep, \"1\"]}}\n"
            )
        };
        let quoted = refusal(&manifest_with(&spec("\"4\""), dir.path()));
        assert!(
            quoted.contains("m.yaml:5:")
                && quoted.contains("spec.work.shards: wrong type: found string \"4\"")
                && quoted.contains("(expected a whole number ≥ 1, unquoted)"),
            "{quoted}"
        );
        let word = refusal(&manifest_with(&spec("eight"), dir.path()));
        assert!(
            word.contains("spec.work.shards") && word.contains("a whole number ≥ 1"),
            "{word}"
        );
        assert!(!word.contains("≥ 0"), "{word}");
        let zero = refusal(&manifest_with(&spec("0"), dir.path()));
        assert!(zero.contains("expected at least 1"), "{zero}");
        // Unquoted numbers still load; a quoted worker count is refused like a quoted shard count.
        load(&manifest_with(&spec("4"), dir.path())).expect("shards: 4 loads");
        let target = refusal(&manifest_with(
            "  workers: {target: \"2\"}\n  template: {command: [sleep, \"1\"]}\n",
            dir.path(),
        ));
        assert!(
            target.contains("spec.workers.target: wrong type"),
            "{target}"
        );
    }

    /// Regression (fresh-clone trial): `name:` left empty said "cannot deserialize null into
    /// string; use Option<String>" (Rust's words), and `.nan` spoke of "the configured policy".
    #[test]
    fn an_empty_value_or_a_non_number_is_refused_in_the_manifests_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with = |name: &str| {
            let file = dir.path().join("m.yaml");
            std::fs::write(
                &file,
                format!(
                    "apiVersion: automon/v1\nkind: WorkerSet\nmetadata:\n  name: {name}\nspec:\n  template: {{command: [sleep, \"1\"]}}\n  progress: {{file: \"p{{id}}.json\", checkpoint: /c}}\n  logs: {{file: \"w{{id}}.log\"}}\n"
                ),
            )
            .expect("write");
            file
        };
        let empty = refusal(&with(""));
        assert!(
            empty.contains("metadata.name: no value") && !empty.contains("Option<"),
            "{empty}"
        );
        let nan = refusal(&with(".nan"));
        assert!(
            nan.contains("not a finite number") && !nan.contains("policy"),
            "{nan}"
        );
    }

    /// Regression (fresh-clone trial): `name: 123` (a number where metadata.name's text
    /// belongs) was accepted, while `shards: "4"` is refused. Every text field refuses what YAML
    /// reads as a number or a boolean, naming line, column and field; quoted, it loads; a bare
    /// number as a duration still says it lacks a unit.
    #[test]
    fn a_number_where_text_belongs_is_refused_like_a_quoted_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with = |name: &str, template: &str| {
            let file = dir.path().join("m.yaml");
            std::fs::write(
                &file,
                format!(
                    "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {{name: {name}}}\nspec:\n  template: {template}\n  progress: {{file: \"p{{id}}.json\", checkpoint: /c}}\n  logs: {{file: \"w{{id}}.log\"}}\n"
                ),
            )
            .expect("write");
            file
        };
        let name = refusal(&with("123", "{command: [sleep, \"1\"]}"));
        assert!(
            name.contains("m.yaml:3:18: metadata.name: wrong type: found 123")
                && name.contains("(expected text: quote it, \"123\")"),
            "{name}"
        );
        let flag = refusal(&with("true", "{command: [sleep, \"1\"]}"));
        assert!(
            flag.contains("metadata.name: wrong type: found true"),
            "{flag}"
        );
        let arg = refusal(&with("m", "{command: [sleep, 1]}"));
        assert!(arg.contains("spec.template.command.1: wrong type"), "{arg}");
        let env = refusal(&with("m", "{command: [sleep, \"1\"], env: {A: 1}}"));
        assert!(env.contains("spec.template.env.A: wrong type"), "{env}");
        load(&with(
            "\"123\"",
            "{command: [sleep, \"1\"], env: {A: \"1\"}}",
        ))
        .expect("quoted text loads");
        let duration = refusal(&with("m", "{command: [sleep, \"1\"], stop_grace: 30}"));
        assert!(
            duration.contains("duration \"30\" has no unit"),
            "{duration}"
        );
    }

    /// Regression (fresh-clone trial): a missing required field was reported at the line of
    /// the mapping's last key (where the parser noticed). It is now reported at the mapping
    /// that lacks it: its parent key, block or flow style, or the document's first key.
    #[test]
    fn a_missing_field_is_reported_at_the_mapping_that_lacks_it_not_its_last_key() {
        let head = "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {name: m}\n";
        let tail =
            "  progress: {file: \"p{id}.json\", checkpoint: /c}\n  logs: {file: \"w{id}.log\"}\n";
        let first = |text: &str| match parse(text) {
            Ok(_) => panic!("{text} parsed"),
            Err(problems) => {
                let p = &problems[0];
                (p.location, p.field.clone(), p.message.clone())
            }
        };
        // Block style: `template:` on line 5 lacks `command`; its last key is on line 7.
        let block =
            format!("{head}spec:\n  template:\n    workdir: .\n    env: {{A: \"1\"}}\n{tail}");
        let (at, field, message) = first(&block);
        assert_eq!(
            (at, field.as_str()),
            (Some((5, 3)), "spec.template"),
            "{message}"
        );
        assert!(message.starts_with("missing field `command`"), "{message}");
        // Flow style: the parent key's line.
        let flow = format!(
            "{head}spec:\n  template: {{command: [w]}}\n  progress: {{checkpoint: /c, items: /i}}\n  logs: {{file: l}}\n"
        );
        assert_eq!(first(&flow).0, Some((6, 3)));
        // `spec` lacks `progress`: at `spec:`.
        let spec = format!("{head}spec:\n  template: {{command: [w]}}\n  logs: {{file: l}}\n");
        assert_eq!(first(&spec).0, Some((4, 1)));
        // The document lacks `spec`: at its first key, after a comment.
        assert_eq!(first(&format!("# c\n{head}")).0, Some((2, 1)));
    }

    /// Regression (fresh-clone trial): `shards: 99999999999999999999` was refused as "found
    /// floating point `100000000000000000000.0`", and a range end beyond u64 as "wrong type".
    /// A whole number too large for its field says so, with the limit, line, column and field.
    #[test]
    fn a_number_too_large_for_its_field_says_too_large_and_the_limit_not_floating_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = |range: &str, shards: &str| {
            format!(
                "  work: {{range: {range}, shards: {shards}}}\n  template: {{command: [sleep, \"1\"]}}\n"
            )
        };
        for (spec, at, field, limit) in [
            (
                work("{start: 1, end: 100}", "99999999999999999999"),
                "m.yaml:5:",
                "spec.work.shards: ",
                "at most 4,294,967,295",
            ),
            (
                work("{start: 1, end: 100}", "99999999999"),
                "m.yaml:5:",
                "spec.work.shards: 99999999999 is too large",
                "at most 4,294,967,295",
            ),
            (
                work("{start: 1, end: 99999999999999999999}", "4"),
                "m.yaml:5:",
                "spec.work.range.end: 99999999999999999999 is too large",
                "at most 18,446,744,073,709,551,615",
            ),
            (
                work("{start: 99999999999999999999, end: 100}", "4"),
                "m.yaml:5:",
                "spec.work.range.start: ",
                "at most 18,446,744,073,709,551,615",
            ),
            (
                "  fixes: {max_attempts: 99999999999}\n  template: {command: [sleep, \"1\"]}\n"
                    .to_string(),
                "m.yaml:5:",
                "spec.fixes.max_attempts: 99999999999 is too large",
                "at most 4,294,967,295",
            ),
        ] {
            let why = refusal(&manifest_with(&spec, dir.path()));
            assert!(
                why.contains(at)
                    && why.contains(field)
                    && why.contains("too large")
                    && why.contains(limit),
                "{why}"
            );
            assert!(!why.contains("floating point"), "{why}");
        }
        assert_eq!(
            out_of_range("u64", "-5").as_deref(),
            Some("-5 is negative (expected a whole number from 0 to 18,446,744,073,709,551,615)")
        );
        assert_eq!(out_of_range("u32", "12"), None);
        assert_eq!(out_of_range("u32", "twelve"), None);
        assert_eq!(
            out_of_range("i64", &"9".repeat(40)).as_deref(),
            Some(
                "999999999999999999999999… (40 digits) is too large (expected a whole number of at most 9,223,372,036,854,775,807)"
            )
        );
    }

    /// Regression (fresh-clone test): `validate` passed a manifest whose workdir does not
    /// exist (only `apply` refused it, without a line number).
    #[test]
    fn validate_names_file_line_and_field_of_a_workdir_that_does_not_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = manifest_with(
            "  template:\n    command: [sleep, \"1\"]\n    workdir: no/such/dir\n",
            dir.path(),
        );
        let e = refusal(&file);
        assert!(
            e.contains("m.yaml:7:")
                && e.contains("spec.template.workdir: ")
                && e.contains("no/such/dir is not a directory"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_slurm_runtime_names_file_line_and_field_of_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = manifest_with(
            "  template: {command: [sleep, \"1\"]}\n  runtime:\n    kind: slurm\n    partition: \"two words\"\n    mem_per_worker: lots\n    cpus_per_worker: 0\n    extra_args: [\"--job-name=x\", \"qos\"]\n",
            dir.path(),
        );
        let e = refusal(&file);
        for expected in [
            "m.yaml:8:",
            "spec.runtime.partition: \"two words\" is not a Slurm partition name",
            "m.yaml:9:",
            "spec.runtime.mem_per_worker: \"lots\" is not a memory size",
            "spec.runtime.cpus_per_worker: 0 CPUs",
            "spec.runtime.extra_args.0: \"--job-name=x\" sets an option automon sets itself",
            "spec.runtime.extra_args.1: \"qos\" is not an sbatch option",
        ] {
            assert!(e.contains(expected), "{expected:?} in:\n{e}");
        }
        let local = refusal(&manifest_with(
            "  template: {command: [sleep, \"1\"]}\n  runtime: {partition: batch}\n",
            dir.path(),
        ));
        assert!(
            local.contains("spec.runtime.partition: applies only to `kind: slurm`"),
            "{local}"
        );
        let good = manifest_with(
            "  template: {command: [sleep, \"1\"]}\n  runtime: {kind: slurm, partition: batch, time_limit: 48h, mem_per_worker: 2G, extra_args: [\"--qos=long\"]}\n",
            dir.path(),
        );
        let m = load(&good).expect("a valid Slurm runtime loads");
        assert_eq!(m.workerset.spec.runtime.kind, RuntimeKind::Slurm);
    }
}
