//! The matcher: turns a [`Proposal`] and a file's text into the new text (in memory), or says the
//! change is already there, or why it cannot be placed. Nothing here touches the file system
//! except through the Python parser used to locate functions.
//!
//! Indentation rules: a whole-function replacement is dedented and re-indented to the original
//! `def`'s column with the original's own indentation string; if the file indents with tabs and
//! the replacement with spaces, each level of the replacement's spaces (its smallest indentation
//! step) becomes one tab, and widths that are not a multiple of that step are rejected. A
//! replacement indented with tabs into a space-indented function is rejected. Old→new strings and
//! diffs are not re-tabbed: new lines whose indentation style differs from the matched region's
//! are rejected.

use super::proposal::{Hunk, Proposal};
use super::python::{self, FunctionSpan};

/// A file's text as lines, with what is needed to write it back the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// Lines without their terminators.
    pub lines: Vec<String>,
    /// The last line ends with a terminator.
    pub final_newline: bool,
    /// Lines end with `\r\n` (the whole file; mixed endings are refused by [`Text::parse`]).
    pub crlf: bool,
}

impl Text {
    /// Splits `s` into lines. `Err` for mixed line endings (CRLF and bare LF in one file).
    pub fn parse(s: &str) -> Result<Self, String> {
        let crlf = s.contains("\r\n");
        if crlf && s.matches('\n').count() != s.matches("\r\n").count() {
            return Err("the file mixes CRLF and LF line endings".into());
        }
        let normalized = if crlf {
            s.replace("\r\n", "\n")
        } else {
            s.to_string()
        };
        let final_newline = normalized.ends_with('\n');
        let body = normalized.strip_suffix('\n').unwrap_or(&normalized);
        let lines = if normalized.is_empty() {
            Vec::new()
        } else {
            body.split('\n').map(str::to_string).collect()
        };
        Ok(Self {
            lines,
            final_newline,
            crlf,
        })
    }

    /// The text with its original line endings.
    pub fn render(&self) -> String {
        let eol = if self.crlf { "\r\n" } else { "\n" };
        let mut out = self.lines.join(eol);
        if self.final_newline && !self.lines.is_empty() {
            out.push_str(eol);
        }
        out
    }

    fn with_lines(&self, lines: Vec<String>) -> Self {
        Self {
            lines,
            final_newline: self.final_newline || self.lines.is_empty(),
            crlf: self.crlf,
        }
    }
}

/// What the matcher decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// The new text.
    Changed(Text),
    /// The change is already in the file.
    AlreadyApplied,
}

/// Places `proposal` into `text`. `interpreter` runs the Python parser (function replacements
/// only); `label` names the file in parser messages. `Err` is the reason in words, without the
/// file name.
pub fn apply(
    text: &Text,
    proposal: &Proposal,
    interpreter: &str,
    label: &str,
) -> Result<Edit, String> {
    match proposal {
        Proposal::ReplaceFunction { name, source, .. } => {
            replace_function(text, name, source, interpreter, label)
        }
        Proposal::ReplaceString { old, new, .. } => replace_string(text, old, new),
        Proposal::UnifiedDiff { hunks, .. } => apply_diff(text, hunks),
    }
}

// ---------------------------------------------------------------------------------------------
// Indentation
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Tabs,
    Spaces,
    Unknown,
}

fn indent_of(line: &str) -> &str {
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..n]
}

/// The style of the lines' indentation, judged by the first character of each indented line;
/// `Unknown` when nothing is indented or both occur.
fn style_of<'a>(lines: impl IntoIterator<Item = &'a str>) -> Style {
    let (mut tabs, mut spaces) = (false, false);
    for line in lines {
        match line.as_bytes().first() {
            Some(b'\t') if !line.trim().is_empty() => tabs = true,
            Some(b' ') if !line.trim().is_empty() => spaces = true,
            _ => {}
        }
    }
    match (tabs, spaces) {
        (true, false) => Style::Tabs,
        (false, true) => Style::Spaces,
        _ => Style::Unknown,
    }
}

/// The style of `region`, or of the whole file when the region shows none.
fn region_style(text: &Text, region: &[String]) -> Style {
    match style_of(region.iter().map(String::as_str)) {
        Style::Unknown => style_of(text.lines.iter().map(String::as_str)),
        s => s,
    }
}

/// Refuses `new` lines indented with spaces where the region indents with tabs, or the reverse.
fn check_style(new: &[String], region: Style) -> Result<(), String> {
    let starts_with = |c: u8| {
        new.iter()
            .any(|l| !l.trim().is_empty() && l.as_bytes().first() == Some(&c))
    };
    match region {
        Style::Tabs if starts_with(b' ') => {
            Err("the replacement indents with spaces where the file indents with tabs".into())
        }
        Style::Spaces if starts_with(b'\t') => {
            Err("the replacement indents with tabs where the file indents with spaces".into())
        }
        _ => Ok(()),
    }
}

/// The longest whitespace prefix shared by all non-blank lines.
fn common_indent(lines: &[String]) -> String {
    let mut common: Option<&str> = None;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let ind = indent_of(line);
        common = Some(match common {
            None => ind,
            Some(c) => {
                let n = c
                    .bytes()
                    .zip(ind.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                &c[..n]
            }
        });
    }
    common.unwrap_or("").to_string()
}

fn dedent(lines: &[String]) -> Vec<String> {
    let common = common_indent(lines);
    lines
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                l[common.len()..].trim_end().to_string()
            }
        })
        .collect()
}

/// Converts dedented, space-indented lines to tabs: the smallest indentation step is one tab.
fn spaces_to_tabs(lines: &[String]) -> Result<Vec<String>, String> {
    let widths: Vec<usize> = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent_of(l).len())
        .collect();
    let Some(unit) = widths.iter().copied().filter(|w| *w > 0).min() else {
        return Ok(lines.to_vec());
    };
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let ind = indent_of(l);
            if l.trim().is_empty() || ind.is_empty() {
                return Ok(l.clone());
            }
            if ind.contains('\t') {
                return Err(format!(
                    "line {} of the replacement mixes tabs and spaces in its indentation",
                    i + 1
                ));
            }
            if !ind.len().is_multiple_of(unit) {
                return Err(format!(
                    "cannot re-indent the replacement with tabs: line {} has {} spaces, not a multiple of {unit}",
                    i + 1,
                    ind.len()
                ));
            }
            Ok(format!("{}{}", "\t".repeat(ind.len() / unit), &l[ind.len()..]))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Function replacement
// ---------------------------------------------------------------------------------------------

fn matches_name(def: &FunctionSpan, name: &str) -> bool {
    def.qualname == name || def.qualname.ends_with(&format!(".{name}"))
}

fn replace_function(
    text: &Text,
    name: &str,
    source: &str,
    interpreter: &str,
    label: &str,
) -> Result<Edit, String> {
    let original = text.render();
    let defs = python::parse_functions(interpreter, &original, label)
        .map_err(|e| format!("the file does not parse ({e})"))?;
    let found: Vec<&FunctionSpan> = defs.iter().filter(|d| matches_name(d, name)).collect();
    let target = match found.as_slice() {
        [one] => *one,
        [] => return Err(format!("it defines no function `{name}`")),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|d| format!("{} (line {})", d.qualname, d.start))
                .collect();
            return Err(format!(
                "`{name}` is ambiguous: it matches {} functions: {}",
                many.len(),
                list.join(", ")
            ));
        }
    };

    // The replacement: one definition of the same name, nothing else.
    let bare = name.rsplit('.').next().unwrap_or(name);
    let src_lines: Vec<String> = source
        .replace("\r\n", "\n")
        .lines()
        .map(String::from)
        .collect();
    let mut new = dedent(&src_lines);
    while new.last().is_some_and(|l| l.is_empty()) {
        new.pop();
    }
    while new.first().is_some_and(|l| l.is_empty()) {
        new.remove(0);
    }
    let new_src = new.join("\n") + "\n";
    let new_defs = python::parse_functions(interpreter, &new_src, "replacement")
        .map_err(|e| format!("the replacement does not parse ({e})"))?;
    let tops: Vec<&FunctionSpan> = new_defs.iter().filter(|d| d.top).collect();
    match tops.as_slice() {
        [d] if d.name == bare && d.start == 1 && d.end == new.len() => {}
        [d] if d.name != bare => {
            return Err(format!(
                "the replacement defines `{}`, not `{bare}`",
                d.name
            ));
        }
        _ => {
            return Err(format!(
                "the replacement must be exactly one definition of `{bare}` and nothing else"
            ));
        }
    }

    let (start, end) = (target.start - 1, target.end);
    let region = &text.lines[start..end];
    let base = indent_of(&text.lines[start]).to_string();
    let new = match (
        region_style(text, region),
        style_of(new.iter().map(String::as_str)),
    ) {
        (Style::Tabs, Style::Spaces) => spaces_to_tabs(&new)?,
        (Style::Spaces, Style::Tabs) => {
            return Err(
                "the replacement indents with tabs where the function indents with spaces".into(),
            );
        }
        _ => new,
    };
    let new: Vec<String> = new
        .iter()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{base}{l}")
            }
        })
        .collect();
    let same = region.len() == new.len()
        && region
            .iter()
            .zip(&new)
            .all(|(a, b)| a.trim_end() == b.trim_end());
    if same {
        return Ok(Edit::AlreadyApplied);
    }
    let mut lines = text.lines[..start].to_vec();
    lines.extend(new);
    lines.extend_from_slice(&text.lines[end..]);
    Ok(Edit::Changed(text.with_lines(lines)))
}

// ---------------------------------------------------------------------------------------------
// Graded line-block matching (strings and diff hunks)
// ---------------------------------------------------------------------------------------------

/// How a block was found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grade {
    Exact,
    TrailingWhitespace,
    /// The needle's common indentation is `given`; each place has its own.
    Indent {
        given: String,
    },
}

/// All places where `needle` occurs as whole lines at or after line `from` (0-based), using the
/// first grade that finds any: exact, trailing whitespace ignored, one uniform indentation offset.
fn find_lines(hay: &[String], needle: &[String], from: usize) -> Option<(Grade, Vec<usize>)> {
    let n = needle.len();
    if n == 0 || hay.len() < n {
        return None;
    }
    let starts = from..=hay.len() - n;
    let exact: Vec<usize> = starts
        .clone()
        .filter(|&i| hay[i..i + n] == *needle)
        .collect();
    if !exact.is_empty() {
        return Some((Grade::Exact, exact));
    }
    let trimmed: Vec<usize> = starts
        .clone()
        .filter(|&i| {
            hay[i..i + n]
                .iter()
                .zip(needle)
                .all(|(a, b)| a.trim_end() == b.trim_end())
        })
        .collect();
    if !trimmed.is_empty() {
        return Some((Grade::TrailingWhitespace, trimmed));
    }
    let given = common_indent(needle);
    let needle_d = dedent(needle);
    // Blank lines must stay blank; the offset must be uniform (each place keeps its own).
    let shifted: Vec<usize> = starts
        .filter(|&i| dedent(&hay[i..i + n]) == needle_d)
        .collect();
    (!shifted.is_empty()).then_some((Grade::Indent { given }, shifted))
}

/// `new` as it should be written at line `at` for a match of `grade`.
fn reindent(
    hay: &[String],
    at: usize,
    n: usize,
    grade: &Grade,
    new: &[String],
) -> Result<Vec<String>, String> {
    let Grade::Indent { given } = grade else {
        return Ok(new.to_vec());
    };
    let found = common_indent(&hay[at..at + n]);
    new.iter()
        .map(|l| {
            if l.trim().is_empty() {
                Ok(String::new())
            } else if let Some(rest) = l.strip_prefix(given.as_str()) {
                Ok(format!("{found}{rest}"))
            } else {
                Err(format!(
                    "cannot re-indent the new line {:?}: it is indented less than the old text",
                    l.trim()
                ))
            }
        })
        .collect()
}

fn to_lines(s: &str) -> Vec<String> {
    let lines: Vec<String> = s.split('\n').map(String::from).collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    match (first, last) {
        (Some(a), Some(b)) => lines[a..=b].to_vec(),
        _ => Vec::new(),
    }
}

/// 1-based line numbers of the byte offsets `at` in `s`.
fn line_numbers(s: &str, at: &[usize]) -> Vec<String> {
    at.iter()
        .map(|&i| (s[..i].matches('\n').count() + 1).to_string())
        .collect()
}

fn replace_string(text: &Text, old: &str, new: &str) -> Result<Edit, String> {
    let old = old.replace("\r\n", "\n");
    let new = new.replace("\r\n", "\n");
    let joined = text.lines.join("\n");

    // Grade 0: the exact text, anywhere (may start or end mid-line).
    let exact: Vec<usize> = joined.match_indices(&old).map(|(i, _)| i).collect();
    if !new.is_empty() && new.contains(&old) {
        let news: Vec<usize> = joined.match_indices(&new).map(|(i, _)| i).collect();
        let offset = new.find(&old).unwrap_or(0);
        if !news.is_empty() && exact.iter().all(|o| news.iter().any(|n| n + offset == *o)) {
            return Ok(Edit::AlreadyApplied);
        }
    }
    match exact.as_slice() {
        [at] => {
            check_style(&to_lines(&new), region_style(text, &to_lines(&old)))?;
            let changed = format!("{}{}{}", &joined[..*at], new, &joined[at + old.len()..]);
            let lines = changed.split('\n').map(String::from).collect();
            return Ok(Edit::Changed(text.with_lines(lines)));
        }
        [] => {}
        many => {
            return Err(format!(
                "the old text is ambiguous: it occurs {} times (lines {})",
                many.len(),
                line_numbers(&joined, many).join(", ")
            ));
        }
    }

    // Grades 1 and 2: whole lines, trailing whitespace ignored, then an indentation offset.
    let old_lines = to_lines(&old);
    let new_lines = to_lines(&new);
    match find_lines(&text.lines, &old_lines, 0) {
        Some((grade, places)) => match places.as_slice() {
            [at] => {
                let n = old_lines.len();
                let new_lines = reindent(&text.lines, *at, n, &grade, &new_lines)?;
                check_style(&new_lines, region_style(text, &text.lines[*at..*at + n]))?;
                let mut lines = text.lines[..*at].to_vec();
                lines.extend(new_lines);
                lines.extend_from_slice(&text.lines[at + n..]);
                Ok(Edit::Changed(text.with_lines(lines)))
            }
            many => Err(format!(
                "the old text is ambiguous: it matches {} places (lines {})",
                many.len(),
                many.iter()
                    .map(|i| (i + 1).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
        None => {
            let new_present = !new_lines.is_empty()
                && (joined.contains(&new) || find_lines(&text.lines, &new_lines, 0).is_some());
            if new_present {
                Ok(Edit::AlreadyApplied)
            } else {
                Err("the old text is not in the file".into())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Unified diffs
// ---------------------------------------------------------------------------------------------

fn apply_diff(text: &Text, hunks: &[Hunk]) -> Result<Edit, String> {
    match apply_hunks(text, hunks) {
        Ok(lines) => Ok(Edit::Changed(text.with_lines(lines))),
        Err(forward) => {
            let reversed: Vec<Hunk> = hunks.iter().map(Hunk::reversed).collect();
            if apply_hunks(text, &reversed).is_ok() {
                Ok(Edit::AlreadyApplied)
            } else {
                Err(forward)
            }
        }
    }
}

/// Applies every hunk in order to a copy of the lines; the first that cannot be placed fails the
/// whole diff. Each hunk is searched after the previous one and placed at the match nearest to
/// its hinted line (shifted by what earlier hunks added or removed).
fn apply_hunks(text: &Text, hunks: &[Hunk]) -> Result<Vec<String>, String> {
    let mut lines = text.lines.clone();
    let mut floor = 0usize;
    let mut shift: isize = 0;
    let total = hunks.len();
    for (k, hunk) in hunks.iter().enumerate() {
        let which = format!(
            "hunk {} of {total} (hinted at line {})",
            k + 1,
            hunk.old_start
        );
        let old: Vec<String> = hunk.old_lines().into_iter().map(String::from).collect();
        let new: Vec<String> = hunk.new_lines().into_iter().map(String::from).collect();
        if old.iter().all(|l| l.trim().is_empty()) {
            return Err(format!(
                "{which} has no context to locate it; nothing was applied"
            ));
        }
        let Some((grade, places)) = find_lines(&lines, &old, floor) else {
            return Err(format!(
                "{which}: its context and removed lines are not in the file; nothing was applied"
            ));
        };
        let hint = hunk.old_start.saturating_sub(1) as isize + shift;
        let distance = |at: usize| (at as isize - hint).unsigned_abs();
        let best = places.iter().map(|&p| distance(p)).min().unwrap_or(0);
        let nearest: Vec<usize> = places
            .iter()
            .copied()
            .filter(|&p| distance(p) == best)
            .collect();
        let [at] = nearest.as_slice() else {
            return Err(format!(
                "{which} matches equally near lines {}; nothing was applied",
                nearest
                    .iter()
                    .map(|i| (i + 1).to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        };
        let at = *at;
        let new = reindent(&lines, at, old.len(), &grade, &new)?;
        let added: Vec<String> = hunk
            .lines
            .iter()
            .filter_map(|l| match l {
                super::proposal::HunkLine::Add(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        check_style(&added, region_style(text, &lines[at..at + old.len()]))
            .map_err(|e| format!("{which}: {e}"))?;
        let new_len = new.len();
        lines.splice(at..at + old.len(), new);
        shift += new_len as isize - old.len() as isize;
        floor = at + new_len;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::fix::proposal::parse_proposal;

    fn text(s: &str) -> Text {
        Text::parse(s).unwrap()
    }

    fn changed(src: &str, proposal: &str) -> String {
        match apply(
            &text(src),
            &parse_proposal(proposal).unwrap(),
            "python3",
            "t.py",
        )
        .unwrap()
        {
            Edit::Changed(t) => t.render(),
            Edit::AlreadyApplied => panic!("already applied"),
        }
    }

    #[test]
    fn text_round_trips_endings() {
        for s in ["", "a", "a\n", "a\nb", "a\r\nb\r\n", "\n\n"] {
            assert_eq!(text(s).render(), s, "{s:?}");
        }
        assert!(Text::parse("a\r\nb\n").is_err());
    }

    #[test]
    fn string_grades() {
        let src = "def f():\n    x = 1   \n    return x\n";
        // exact substring
        assert_eq!(
            changed(src, "OLD:\nreturn x\nNEW:\nreturn x + 1\n"),
            "def f():\n    x = 1   \n    return x + 1\n"
        );
        // trailing whitespace ignored
        assert_eq!(
            changed(
                src,
                "<<<<<<< SEARCH\n    x = 1\n    return x\n=======\n    x = 2\n    return x\n>>>>>>> REPLACE\n"
            ),
            "def f():\n    x = 2\n    return x\n"
        );
        // indentation offset: given at column 0, found at column 4; new re-indented
        assert_eq!(
            changed(
                src,
                "<<<<<<< SEARCH\nx = 1\nreturn x\n=======\nx = 2\nif x:\n    return x\n>>>>>>> REPLACE\n"
            ),
            "def f():\n    x = 2\n    if x:\n        return x\n"
        );
    }

    #[test]
    fn ambiguous_strings_list_lines() {
        let src = "a = 1\nb = 2\na = 1\n";
        let p = parse_proposal("OLD:\na = 1\nNEW:\na = 3\n").unwrap();
        let err = apply(&text(src), &p, "python3", "t.py").unwrap_err();
        assert!(err.contains("lines 1, 3"), "{err}");
    }

    #[test]
    fn already_applied_strings() {
        let src = "a = 3\n";
        let p = parse_proposal("OLD:\na = 1\nNEW:\na = 3\n").unwrap();
        assert_eq!(
            apply(&text(src), &p, "python3", "t.py").unwrap(),
            Edit::AlreadyApplied
        );
        // new contains old: applied once means the old text only occurs inside the new one
        let p = parse_proposal("OLD:\nx()\nNEW:\nx()\ny()\n").unwrap();
        assert_eq!(
            apply(&text("x()\ny()\n"), &p, "python3", "t.py").unwrap(),
            Edit::AlreadyApplied
        );
        assert!(matches!(
            apply(&text("x()\n"), &p, "python3", "t.py").unwrap(),
            Edit::Changed(_)
        ));
    }

    #[test]
    fn diff_picks_match_nearest_the_hint() {
        let src = "a\nb\nc\nx\na\nb\nc\n";
        let out = changed(src, "@@ -5,3 +5,3 @@\n a\n-b\n+B\n c\n");
        assert_eq!(out, "a\nb\nc\nx\na\nB\nc\n");
        let out = changed(src, "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n");
        assert_eq!(out, "a\nB\nc\nx\na\nb\nc\n");
    }

    #[test]
    fn diff_already_applied_when_reverse_applies() {
        let p = parse_proposal("@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n").unwrap();
        assert_eq!(
            apply(&text("a\nB\nc\n"), &p, "python3", "t.py").unwrap(),
            Edit::AlreadyApplied
        );
    }

    #[test]
    fn function_into_tabs_is_retabbed() {
        let src = "class A:\n\tdef f(self):\n\t\treturn 1\n";
        let out = changed(
            src,
            "def f(self):\n    if self:\n        return 2\n    return 1\n",
        );
        assert_eq!(
            out,
            "class A:\n\tdef f(self):\n\t\tif self:\n\t\t\treturn 2\n\t\treturn 1\n"
        );
    }

    #[test]
    fn function_replacement_must_keep_the_name() {
        let p = parse_proposal("# function: f\ndef f():\n    return 2\n").unwrap();
        let err = apply(&text("def g():\n    return 1\n"), &p, "python3", "t.py").unwrap_err();
        assert!(err.contains("no function `f`"), "{err}");
        let p = Proposal::ReplaceFunction {
            file: None,
            name: "g".into(),
            source: "def h():\n    return 2\n".into(),
        };
        let err = apply(&text("def g():\n    return 1\n"), &p, "python3", "t.py").unwrap_err();
        assert!(err.contains("defines `h`, not `g`"), "{err}");
        let p = Proposal::ReplaceFunction {
            file: None,
            name: "g".into(),
            source: "import os\ndef g():\n    return 2\n".into(),
        };
        let err = apply(&text("def g():\n    return 1\n"), &p, "python3", "t.py").unwrap_err();
        assert!(err.contains("exactly one definition"), "{err}");
    }
}
