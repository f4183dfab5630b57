//! Parsing the `code_changes` string of an LLM answer into one [`Proposal`].
//!
//! Accepted formats (see `tests/fixtures/llm/`):
//! - a whole function: code (optionally fenced) starting with decorators or `def`/`async def`,
//!   optionally preceded by `# file: PATH` and `# function: Class.method` header lines;
//! - a string replacement: `OLD:` … `NEW:` (each part optionally fenced), or one aider-style
//!   `<<<<<<< SEARCH` / `=======` / `>>>>>>> REPLACE` block;
//! - a unified diff: optional `--- a/PATH` / `+++ b/PATH` headers and `@@ -l,n +l,n @@` hunks;
//!   the numbers are only hints (hunk counts are not trusted either).
//!
//! Rejected here: empty proposals, empty old text, old == new, diffs without a change, and elision
//! markers (`... rest unchanged`, `# ... existing code ...`, `…`) that would delete real code.

use std::sync::LazyLock;

use regex::Regex;

use super::Rejection;

/// A code change as proposed, before it is matched against a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// Replace one whole function (with its decorators) by `source`.
    ReplaceFunction {
        /// The target file as written in the proposal (relative to the workdir), if named.
        file: Option<String>,
        /// `func`, or a dotted suffix of the qualified name such as `Class.method`.
        name: String,
        /// The new definition, any indentation (re-indented to the original's column).
        source: String,
    },
    /// Replace the one occurrence of `old` by `new`.
    ReplaceString {
        /// The target file, if named.
        file: Option<String>,
        /// Text that must occur exactly once (graded: exact, trailing whitespace, indentation).
        old: String,
        /// Its replacement.
        new: String,
    },
    /// Apply every hunk of a unified diff, or none.
    UnifiedDiff {
        /// The target file from the `+++`/`---` headers (`a/`, `b/` stripped), if named.
        file: Option<String>,
        /// The hunks in order.
        hunks: Vec<Hunk>,
    },
}

/// One hunk of a unified diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// The `-l` of the header: a 1-based hint where the hunk starts; 0 when absent.
    pub old_start: usize,
    /// Context, removed and added lines in order, without their one-character prefix.
    pub lines: Vec<HunkLine>,
}

/// A line of a [`Hunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkLine {
    /// ` text`: must be present, kept.
    Context(String),
    /// `-text`: must be present, removed.
    Remove(String),
    /// `+text`: inserted.
    Add(String),
}

impl Hunk {
    /// The lines the hunk expects to find (context and removed), in order.
    pub fn old_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                HunkLine::Context(s) | HunkLine::Remove(s) => Some(s.as_str()),
                HunkLine::Add(_) => None,
            })
            .collect()
    }

    /// The lines the hunk leaves (context and added), in order.
    pub fn new_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                HunkLine::Context(s) | HunkLine::Add(s) => Some(s.as_str()),
                HunkLine::Remove(_) => None,
            })
            .collect()
    }

    /// The same hunk undone (added and removed lines swapped).
    pub fn reversed(&self) -> Hunk {
        let lines = self
            .lines
            .iter()
            .map(|l| match l {
                HunkLine::Context(s) => HunkLine::Context(s.clone()),
                HunkLine::Remove(s) => HunkLine::Add(s.clone()),
                HunkLine::Add(s) => HunkLine::Remove(s.clone()),
            })
            .collect();
        Hunk {
            old_start: self.old_start,
            lines,
        }
    }

    fn changes(&self) -> bool {
        self.lines
            .iter()
            .any(|l| !matches!(l, HunkLine::Context(_)))
    }
}

impl Proposal {
    /// The file named by the proposal, if any.
    pub fn file(&self) -> Option<&str> {
        match self {
            Self::ReplaceFunction { file, .. }
            | Self::ReplaceString { file, .. }
            | Self::UnifiedDiff { file, .. } => file.as_deref(),
        }
    }

    /// The format in words, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ReplaceFunction { .. } => "function replacement",
            Self::ReplaceString { .. } => "string replacement",
            Self::UnifiedDiff { .. } => "unified diff",
        }
    }

    /// Checks what needs no file: a non-empty change, old != new, no elision markers.
    ///
    /// # Errors
    /// A [`Rejection`] naming the problem (and the offending line for elisions).
    pub fn check(&self) -> Result<(), Rejection> {
        let reject = |why: String| Err(Rejection::proposal(self.file(), &why));
        match self {
            Self::ReplaceFunction { name, source, .. } => {
                if source.trim().is_empty() {
                    return reject(format!("the replacement of `{name}` is empty"));
                }
                check_elisions(source.lines(), self.file())
            }
            Self::ReplaceString { old, new, .. } => {
                if old.trim().is_empty() {
                    return reject("the old text is empty (an empty change)".into());
                }
                if old == new {
                    return reject("the old and new text are identical (no change)".into());
                }
                check_elisions(new.lines(), self.file())
            }
            Self::UnifiedDiff { hunks, .. } => {
                if !hunks.iter().any(Hunk::changes) {
                    return reject("the diff adds and removes nothing (an empty change)".into());
                }
                for hunk in hunks {
                    let added = hunk.lines.iter().filter_map(|l| match l {
                        HunkLine::Add(s) | HunkLine::Context(s) => Some(s.as_str()),
                        HunkLine::Remove(_) => None,
                    });
                    check_elisions(added, self.file())?;
                }
                Ok(())
            }
        }
    }
}

static ELISION: LazyLock<Regex> = LazyLock::new(|| {
    // Invariant: a constant pattern that compiles (covered by the tests below).
    #[allow(clippy::expect_used)]
    Regex::new(
        r"(?i)^\s*(\.\.\.|…)|(\.\.\.|…)\s*$|\b(rest|remainder) of (the )?(code|function|file|method|class|body|implementation|loop)\b|\b(existing|remaining|original|other|previous) (code|lines|logic|methods|implementation)\b",
    )
    .expect("elision pattern compiles")
});

/// True when `line` stands for omitted code rather than being code: a `…` anywhere, a line that
/// starts with `...` followed by words (`... rest unchanged`), or a comment such as
/// `# ... existing code ...` or `# rest of the function unchanged`. A bare `...` (Python's
/// Ellipsis, e.g. a stub body) is code.
pub fn is_elision(line: &str) -> bool {
    if line.contains('…') {
        return true;
    }
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("...")
        && rest.chars().any(char::is_alphabetic)
    {
        return true;
    }
    match t.find('#') {
        Some(i) => ELISION.is_match(&t[i + 1..]),
        None => false,
    }
}

fn check_elisions<'a>(
    lines: impl Iterator<Item = &'a str>,
    file: Option<&str>,
) -> Result<(), Rejection> {
    for line in lines {
        if is_elision(line) {
            return Err(Rejection::proposal(
                file,
                &format!(
                    "it contains an elision marker ({:?}) instead of the full code",
                    line.trim()
                ),
            ));
        }
    }
    Ok(())
}

/// Parses an LLM's `code_changes` text into a [`Proposal`] (formats in the module doc).
/// CRLF in the text is read as LF.
///
/// # Errors
/// A [`Rejection`] when the text is empty, in no known format, has more than one SEARCH/REPLACE
/// block, or fails [`Proposal::check`].
pub fn parse_proposal(text: &str) -> Result<Proposal, Rejection> {
    let text = text.replace("\r\n", "\n");
    if text.trim().is_empty() {
        return Err(Rejection::proposal(None, "the proposal is empty"));
    }
    let file = file_header(&text);
    let proposal = if let Some(p) = parse_search_replace(&text, &file)? {
        p
    } else if let Some(p) = parse_old_new(&text, &file) {
        p
    } else if text.lines().any(|l| l.starts_with("@@")) {
        parse_diff(&text, file)
    } else {
        parse_function(&text, file)?
    };
    proposal.check()?;
    Ok(proposal)
}

/// `# file: PATH`, `File: PATH`, `+++ b/PATH` or `--- a/PATH`, in that order of preference.
fn file_header(text: &str) -> Option<String> {
    let mut diff_old = None;
    let mut diff_new = None;
    for line in text.lines() {
        let t = line.trim();
        let lower = t.to_ascii_lowercase();
        for prefix in ["# file:", "#file:", "// file:", "file:"] {
            if lower.starts_with(prefix) {
                let path = t[prefix.len()..].trim().trim_matches('`');
                if !path.is_empty() {
                    return Some(path.to_string());
                }
            }
        }
        if let Some(p) = line.strip_prefix("+++ ") {
            diff_new.get_or_insert_with(|| diff_path(p));
        } else if let Some(p) = line.strip_prefix("--- ") {
            diff_old.get_or_insert_with(|| diff_path(p));
        }
    }
    diff_new.flatten().or(diff_old.flatten())
}

fn diff_path(header: &str) -> Option<String> {
    let p = header.split('\t').next().unwrap_or("").trim();
    if p.is_empty() || p == "/dev/null" {
        return None;
    }
    let p = p
        .strip_prefix("a/")
        .or_else(|| p.strip_prefix("b/"))
        .unwrap_or(p);
    Some(p.to_string())
}

fn is_header_line(line: &str) -> bool {
    let lower = line.trim().to_ascii_lowercase();
    ["# file:", "#file:", "// file:", "file:", "# function:"]
        .iter()
        .any(|p| lower.starts_with(p))
        || line.starts_with("--- ")
        || line.starts_with("+++ ")
}

/// Content of a part that may be fenced: the first fenced block if there is one, else the part
/// itself; leading and trailing blank lines dropped, indentation kept.
fn unfence(part: &str) -> String {
    let lines: Vec<&str> = part.lines().collect();
    let body: Vec<&str> = match lines.iter().position(|l| l.trim_start().starts_with("```")) {
        Some(open) => {
            let rest = &lines[open + 1..];
            let close = rest
                .iter()
                .position(|l| l.trim_start().starts_with("```"))
                .unwrap_or(rest.len());
            rest[..close].to_vec()
        }
        None => lines,
    };
    let body: Vec<&str> = body.into_iter().filter(|l| !is_header_line(l)).collect();
    let first = body.iter().position(|l| !l.trim().is_empty());
    let last = body.iter().rposition(|l| !l.trim().is_empty());
    match (first, last) {
        (Some(a), Some(b)) => body[a..=b].join("\n"),
        _ => String::new(),
    }
}

fn parse_search_replace(text: &str, file: &Option<String>) -> Result<Option<Proposal>, Rejection> {
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("<<<<<<<") && lines[i].contains("SEARCH"))
        .collect();
    let Some(&start) = starts.first() else {
        return Ok(None);
    };
    if starts.len() > 1 {
        return Err(Rejection::proposal(
            file.as_deref(),
            &format!(
                "it has {} SEARCH/REPLACE blocks; one change per proposal",
                starts.len()
            ),
        ));
    }
    let sep = (start + 1..lines.len()).find(|&i| lines[i].trim_end() == "=======");
    let end = sep.and_then(|s| {
        (s + 1..lines.len())
            .find(|&i| lines[i].starts_with(">>>>>>>") && lines[i].contains("REPLACE"))
    });
    let (Some(sep), Some(end)) = (sep, end) else {
        return Err(Rejection::proposal(
            file.as_deref(),
            "its SEARCH/REPLACE block is not closed by ======= and >>>>>>> REPLACE",
        ));
    };
    Ok(Some(Proposal::ReplaceString {
        file: file.clone(),
        old: lines[start + 1..sep].join("\n"),
        new: lines[sep + 1..end].join("\n"),
    }))
}

fn parse_old_new(text: &str, file: &Option<String>) -> Option<Proposal> {
    let lines: Vec<&str> = text.lines().collect();
    let marker = |name: &str| lines.iter().position(|l| l.trim() == name);
    let old_at = marker("OLD:")?;
    let new_at = marker("NEW:").filter(|&n| n > old_at)?;
    Some(Proposal::ReplaceString {
        file: file.clone(),
        old: unfence(&lines[old_at + 1..new_at].join("\n")),
        new: unfence(&lines[new_at + 1..].join("\n")),
    })
}

fn parse_diff(text: &str, file: Option<String>) -> Proposal {
    let mut hunks: Vec<Hunk> = Vec::new();
    let mut current: Option<Hunk> = None;
    // Empty lines (a context line whose space was dropped) count only if more hunk lines follow.
    let mut pending_blank = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("@@") {
            hunks.extend(current.take());
            pending_blank = 0;
            current = Some(Hunk {
                old_start: hunk_start(line),
                lines: Vec::new(),
            });
            continue;
        }
        let Some(hunk) = current.as_mut() else {
            continue;
        };
        let next_is_new_file =
            line.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ "));
        if next_is_new_file || line.starts_with("diff ") || line.trim_start().starts_with("```") {
            hunks.extend(current.take());
            pending_blank = 0;
            continue;
        }
        if line.is_empty() {
            pending_blank += 1;
            continue;
        }
        let entry = match line.as_bytes()[0] {
            b' ' => HunkLine::Context(line[1..].to_string()),
            b'-' => HunkLine::Remove(line[1..].to_string()),
            b'+' => HunkLine::Add(line[1..].to_string()),
            b'\\' => continue, // "\ No newline at end of file"
            _ => {
                // Prose after the diff ends the hunk.
                hunks.extend(current.take());
                pending_blank = 0;
                continue;
            }
        };
        for _ in 0..pending_blank {
            hunk.lines.push(HunkLine::Context(String::new()));
        }
        pending_blank = 0;
        hunk.lines.push(entry);
    }
    hunks.extend(current);
    Proposal::UnifiedDiff { file, hunks }
}

/// The `l` of `@@ -l,n +l,n @@`; 0 when unreadable.
fn hunk_start(header: &str) -> usize {
    header
        .split_whitespace()
        .find_map(|w| w.strip_prefix('-'))
        .and_then(|w| w.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn parse_function(text: &str, file: Option<String>) -> Result<Proposal, Rejection> {
    let body = if text.contains("```") {
        unfence(text)
    } else {
        text.to_string()
    };
    let lines: Vec<&str> = body.lines().collect();
    let named = text.lines().find_map(|l| {
        let t = l.trim();
        t.to_ascii_lowercase()
            .starts_with("# function:")
            .then(|| t["# function:".len()..].trim().to_string())
    });
    let def_at = lines.iter().position(|l| def_name(l).is_some());
    let Some(def_at) = def_at else {
        return Err(Rejection::proposal(
            file.as_deref(),
            "it is none of the known formats (function, OLD:/NEW:, SEARCH/REPLACE, unified diff)",
        ));
    };
    // Start at the decorators right above the def (comments and prose above are dropped).
    let mut first = def_at;
    while first > 0 && lines[first - 1].trim_start().starts_with('@') {
        first -= 1;
    }
    let def = def_name(lines[def_at]).unwrap_or_default();
    let name = match named {
        Some(n) if n.rsplit('.').next() == Some(def.as_str()) => n,
        Some(n) => {
            return Err(Rejection::proposal(
                file.as_deref(),
                &format!("its header names `{n}` but the code defines `{def}`"),
            ));
        }
        None => def,
    };
    let source = lines[first..].join("\n").trim_end().to_string();
    Ok(Proposal::ReplaceFunction { file, name, source })
}

/// The name defined by a `def`/`async def` line.
fn def_name(line: &str) -> Option<String> {
    let t = line.trim_start();
    let rest = t
        .strip_prefix("def ")
        .or_else(|| t.strip_prefix("async def "))?;
    let name: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUNCTION: &str = include_str!("../../../tests/fixtures/llm/function_replacement.txt");
    const DIFF: &str = include_str!("../../../tests/fixtures/llm/unified_diff.txt");

    #[test]
    fn fixture_function_replacement_is_a_function() {
        let Proposal::ReplaceFunction { file, name, source } = parse_proposal(FUNCTION).unwrap()
        else {
            panic!("not a function replacement")
        };
        assert_eq!((file, name.as_str()), (None, "next_start_id"));
        assert!(source.starts_with("def next_start_id(") && source.ends_with("row in rows)"));
    }

    #[test]
    fn fixture_diff_keeps_hint_and_file() {
        let Proposal::UnifiedDiff { file, hunks } = parse_proposal(DIFF).unwrap() else {
            panic!("not a diff")
        };
        assert_eq!(file.as_deref(), Some("migrate_worker.py"));
        assert_eq!(hunks.len(), 1);
        assert_eq!(hunks[0].old_start, 120);
        assert_eq!(hunks[0].old_lines().len(), 5);
        assert_eq!(
            hunks[0].new_lines()[2],
            "            return start_id + self.batch_size"
        );
    }

    #[test]
    fn search_replace_and_old_new_blocks() {
        let sr = "# file: w.py\n<<<<<<< SEARCH\n    x = 1\n=======\n    x = 2\n>>>>>>> REPLACE\n";
        assert_eq!(
            parse_proposal(sr).unwrap(),
            Proposal::ReplaceString {
                file: Some("w.py".into()),
                old: "    x = 1".into(),
                new: "    x = 2".into()
            }
        );
        let on = "OLD:\n```python\n    x = 1\n```\nNEW:\n```python\n    x = 2\n    y = 3\n```\n";
        assert_eq!(
            parse_proposal(on).unwrap(),
            Proposal::ReplaceString {
                file: None,
                old: "    x = 1".into(),
                new: "    x = 2\n    y = 3".into()
            }
        );
    }

    #[test]
    fn fenced_function_with_file_header_and_decorator() {
        let text = "Here is the fix:\n```python\n# file: src/w.py\n@cache\ndef f(x) -> int:\n    return x\n```\nThanks.";
        let Proposal::ReplaceFunction { file, name, source } = parse_proposal(text).unwrap() else {
            panic!()
        };
        assert_eq!(file.as_deref(), Some("src/w.py"));
        assert_eq!(name, "f");
        assert_eq!(source, "@cache\ndef f(x) -> int:\n    return x");
    }

    #[test]
    fn rejections() {
        for (text, why) in [
            ("", "empty"),
            ("  \n", "empty"),
            ("OLD:\nx = 1\nNEW:\nx = 1\n", "identical"),
            ("OLD:\n\nNEW:\nx = 1\n", "old text is empty"),
            (
                "def f():\n    x = 1\n    # ... existing code ...\n",
                "elision",
            ),
            ("def f():\n    ... rest unchanged\n", "elision"),
            ("OLD:\nx = 1\nNEW:\nx = 2 …\n", "elision"),
            ("@@ -1,2 +1,2 @@\n a\n b\n", "adds and removes nothing"),
            ("just prose, no code", "none of the known formats"),
        ] {
            let err = parse_proposal(text).unwrap_err();
            assert!(err.why.contains(why), "{text:?}: {}", err.why);
        }
    }

    #[test]
    fn ellipsis_as_code_is_not_an_elision() {
        assert!(!is_elision("    ..."));
        assert!(!is_elision("    def stub(self) -> None: ..."));
        assert!(!is_elision("    # cursor unchanged when nothing was found"));
        assert!(is_elision("    # rest of the function unchanged"));
        assert!(is_elision("    # ... existing code ..."));
    }
}
