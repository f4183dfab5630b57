//! The Python side of a code fix, run through the policy's interpreter: `ast.parse` (to locate
//! functions with exact line ranges and to validate a candidate) and the interpreter's own
//! `compile()` on a temporary copy (which also catches what the parser accepts and the compiler
//! rejects, e.g. duplicate argument names or `break` outside a loop).
//!
//! Why a subprocess and not a Rust parser crate: `rustpython-parser` 0.4 carries a large generated
//! LALRPOP parser and a bigint crate, and its grammar can lag the interpreter's; the
//! `ruff_python_parser` releases on crates.io are 0.0.x internal components of Ruff with a chain of
//! sibling crates. Either is a heavy build on two cores for one job: exact line ranges. The
//! interpreter that runs the workers is needed for `compile()` anyway, and its own `ast` module is
//! by definition the grammar the worker will run with. Cost: one interpreter start per call.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

/// One `def`/`async def` found by `ast.parse`, with 1-based inclusive line numbers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FunctionSpan {
    /// Dotted path of enclosing classes and functions plus the name, e.g. `Worker.run_batch`.
    pub qualname: String,
    /// The bare name.
    pub name: String,
    /// First line: the first decorator's line, or the `def` line.
    pub start: usize,
    /// Last line (`end_lineno`).
    pub end: usize,
    /// Column of the `def` keyword, in bytes (indentation is ASCII, so also in characters).
    pub col: usize,
    /// Defined at module level (not inside a class or function).
    pub top: bool,
}

#[derive(Debug, Deserialize)]
struct ParseReport {
    ok: bool,
    #[serde(default)]
    error: String,
    #[serde(default)]
    line: Option<usize>,
    #[serde(default)]
    defs: Vec<FunctionSpan>,
}

/// Reads source bytes on stdin, prints one JSON object: `{"ok": true, "defs": [...]}` or
/// `{"ok": false, "error": msg, "line": n}`.
const AST_SCRIPT: &str = r#"
import ast, json, sys
src = sys.stdin.buffer.read()
try:
    tree = ast.parse(src, filename=sys.argv[1])
except SyntaxError as e:
    print(json.dumps({"ok": False, "error": str(e.msg), "line": e.lineno}))
    sys.exit(0)
except ValueError as e:
    print(json.dumps({"ok": False, "error": str(e), "line": None}))
    sys.exit(0)
defs = []
def walk(node, prefix):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            q = prefix + [child.name]
            start = min([d.lineno for d in child.decorator_list] + [child.lineno])
            defs.append({"qualname": ".".join(q), "name": child.name, "start": start,
                         "end": child.end_lineno, "col": child.col_offset, "top": node is tree})
            walk(child, q)
        elif isinstance(child, ast.ClassDef):
            walk(child, prefix + [child.name])
        else:
            walk(child, prefix)
walk(tree, [])
print(json.dumps({"ok": True, "defs": defs}))
"#;

/// Parses `source` with `<interpreter> -I -c <ast script>`; returns every function definition, or
/// `Err` with one sentence: the parser's message and line, or why the interpreter could not run.
/// `label` names the source in messages.
pub fn parse_functions(
    interpreter: &str,
    source: &str,
    label: &str,
) -> Result<Vec<FunctionSpan>, String> {
    let mut child = Command::new(interpreter)
        .args(["-I", "-c", AST_SCRIPT, label])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the interpreter `{interpreter}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the child died early; its output below says why.
        let _ = stdin.write_all(source.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("the interpreter `{interpreter}` failed: {e}"))?;
    let report: ParseReport = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "the interpreter `{interpreter}` gave no parse report ({}): {}",
            out.status,
            last_line(&String::from_utf8_lossy(&out.stderr))
        )
    })?;
    if report.ok {
        Ok(report.defs)
    } else {
        Err(match report.line {
            Some(line) => format!("{} at line {line}", report.error),
            None => report.error,
        })
    }
}

/// Runs `<interpreter> -c "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1],
/// 'exec')" FILE`; `Err` holds the interpreter's last stderr line (e.g. `SyntaxError: duplicate
/// argument 'a' in function definition`).
pub fn compile_check(interpreter: &str, file: &Path) -> Result<(), String> {
    let out = Command::new(interpreter)
        .args([
            "-c",
            "import sys; compile(open(sys.argv[1], 'rb').read(), sys.argv[1], 'exec')",
        ])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the interpreter `{interpreter}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(last_line(&String::from_utf8_lossy(&out.stderr)))
    }
}

/// The last non-empty line of a process's output, or "no output".
pub fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_decorated_methods_with_qualnames() {
        let src = "class A:\n    @staticmethod\n    def f(x) -> int:\n        return x\n\ndef g():\n    def h():\n        pass\n";
        let defs = parse_functions("python3", src, "t.py").unwrap();
        let names: Vec<_> = defs.iter().map(|d| d.qualname.as_str()).collect();
        assert_eq!(names, ["A.f", "g", "g.h"]);
        assert_eq!((defs[0].start, defs[0].end, defs[0].col), (2, 4, 4));
        assert!(!defs[0].top && defs[1].top);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse_functions("python3", "x = 1\ndef f(:\n", "t.py").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn parser_accepts_what_compile_rejects() {
        let src = "def f(a, a):\n    return a\n";
        assert!(parse_functions("python3", src, "t.py").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.py");
        std::fs::write(&file, src).unwrap();
        let err = compile_check("python3", &file).unwrap_err();
        assert!(err.contains("duplicate argument"), "{err}");
    }

    #[test]
    fn a_missing_interpreter_is_an_error_not_a_panic() {
        let err = parse_functions("/nonexistent/python", "x = 1\n", "t.py").unwrap_err();
        assert!(err.contains("cannot run"), "{err}");
    }
}
