//! Recognising a worker by its command line, for adopting processes automon did not start
//! (opt-in: `spec.adoption.match_command`).
//!
//! `/proc/PID/cmdline` is read as an argv vector (NUL-separated) and matched against the
//! template argument by argument: literal arguments must be equal (the program may differ by
//! directory: `python3` matches `/usr/bin/python3`), and placeholder arguments must match their
//! pattern exactly — `{id}` captures a whole integer, so worker 3 never matches 13. Editors,
//! `less`/`tail -f` of a worker's files, a cleanup script that shares the `--worker-id` flag and
//! a `bash -c` wrapper (one string argument) all fail the argument-by-argument match; the worker
//! that a wrapper runs matches on its own.

use regex::Regex;

use crate::WorkerId;

/// Splits `/proc/PID/cmdline` content into arguments (lossy UTF-8).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let trimmed = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[derive(Debug, Clone)]
enum ArgPattern {
    Literal(String),
    Program(String),
    Pattern(Regex),
}

/// A compiled template argv that recognises worker command lines.
#[derive(Debug, Clone)]
pub struct CommandMatcher {
    args: Vec<ArgPattern>,
}

impl CommandMatcher {
    /// Compiles `template` (argv with `{id}`, `{range_start}`, `{range_end}`, `{checkpoint}` and
    /// parameter placeholders, all integers).
    pub fn new(template: &[String]) -> Self {
        let args = template
            .iter()
            .enumerate()
            .map(|(i, arg)| {
                if !arg.contains('{') {
                    return if i == 0 {
                        ArgPattern::Program(arg.clone())
                    } else {
                        ArgPattern::Literal(arg.clone())
                    };
                }
                let mut re = String::from("^");
                let mut rest = arg.as_str();
                while let Some(open) = rest.find('{') {
                    let Some(close) = rest[open..].find('}') else {
                        break;
                    };
                    re.push_str(&regex::escape(&rest[..open]));
                    let name = &rest[open + 1..open + close];
                    re.push_str(if name == "id" {
                        "(?P<id>[0-9]+)"
                    } else {
                        "-?[0-9]+"
                    });
                    rest = &rest[open + close + 1..];
                }
                re.push_str(&regex::escape(rest));
                re.push('$');
                // Built from escaped literals and fixed groups, except a repeated `{id}` (a second
                // named group), which falls back to a literal that matches nothing.
                Regex::new(&re)
                    .map_or_else(|_| ArgPattern::Literal(arg.clone()), ArgPattern::Pattern)
            })
            .collect();
        Self { args }
    }

    /// The worker id of `argv` if it is a worker command line, else `None`.
    pub fn worker_id(&self, argv: &[String]) -> Option<WorkerId> {
        if argv.len() != self.args.len() {
            return None;
        }
        let mut id: Option<u32> = None;
        for (pattern, arg) in self.args.iter().zip(argv) {
            match pattern {
                ArgPattern::Literal(lit) if lit == arg => {}
                ArgPattern::Program(p) if p == arg || basename(p) == basename(arg) => {}
                ArgPattern::Pattern(re) => {
                    let caps = re.captures(arg)?;
                    if let Some(m) = caps.name("id") {
                        let v: u32 = m.as_str().parse().ok()?;
                        if id.is_some_and(|prev| prev != v) {
                            return None;
                        }
                        id = Some(v);
                    }
                }
                _ => return None,
            }
        }
        id.map(WorkerId)
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_lines() -> Vec<(i32, Vec<String>)> {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cmdline/ps_lines.txt"),
        )
        .expect("fixture");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (pid, rest) = l.split_once(' ').expect("pid");
                (
                    pid.parse().expect("pid"),
                    rest.split(" | ").map(str::to_string).collect(),
                )
            })
            .collect()
    }

    fn template(words: &str) -> Vec<String> {
        words.split(" | ").map(str::to_string).collect()
    }

    #[test]
    fn worker_3_matches_and_13_does_not_match_as_3() {
        let m = CommandMatcher::new(&template(
            "python3 | bulk_migrate_calibre.py | /srv/calibre library | mybookshelf2_app | admin | <redacted> | --worker-id | {id} | --offset | {checkpoint} | --batch-size | {batch_size} | --use-symlinks | --parallel-uploads | {parallel_uploads}",
        ));
        let found: Vec<(i32, u32)> = fixture_lines()
            .into_iter()
            .filter_map(|(pid, argv)| m.worker_id(&argv).map(|id| (pid, id.0)))
            .collect();
        assert_eq!(
            found,
            [(48213, 3)],
            "only the bulk worker 3 line matches this template"
        );
    }

    #[test]
    fn worker_13_is_13() {
        let m = CommandMatcher::new(&template(
            "python3 | bulk_migrate_calibre.py | /srv/calibre library | mybookshelf2_app | admin | <redacted> | --worker-id | {id} | --offset | {checkpoint} | --batch-size | {batch_size} | --parallel-uploads | {parallel_uploads}",
        ));
        let found: Vec<(i32, u32)> = fixture_lines()
            .into_iter()
            .filter_map(|(pid, argv)| m.worker_id(&argv).map(|id| (pid, id.0)))
            .collect();
        assert_eq!(found, [(48990, 13)]);
    }

    #[test]
    fn cleanup_script_less_tail_and_bash_wrapper_are_not_workers() {
        let m = CommandMatcher::new(&template("python3 | cleanup_like.py | --worker-id | {id}"));
        for (pid, argv) in fixture_lines() {
            assert_eq!(m.worker_id(&argv), None, "pid {pid} {argv:?}");
        }
    }

    #[test]
    fn program_may_differ_by_directory_and_embedded_placeholders_match_whole_numbers() {
        let m = CommandMatcher::new(&template(
            "python3 | w.py | --id={id} | --from | {checkpoint}",
        ));
        let argv = template("/usr/bin/python3 | w.py | --id=7 | --from | 1200");
        assert_eq!(m.worker_id(&argv), Some(WorkerId(7)));
        assert_eq!(
            m.worker_id(&template("python3 | w.py | --id=7x | --from | 1")),
            None
        );
        assert_eq!(
            m.worker_id(&template("python3 | other.py | --id=7 | --from | 1")),
            None
        );
    }

    #[test]
    fn cmdline_bytes_split_on_nul() {
        assert_eq!(
            parse_cmdline(b"python3\0w.py\0--id\x003\0"),
            ["python3", "w.py", "--id", "3"]
        );
        assert!(parse_cmdline(b"").is_empty());
    }
}
