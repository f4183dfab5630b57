//! The code-fix engine (`automon::act::fix`) on real Python files in temporary directories
//! (python3 validates). Every refused proposal must leave every file byte-identical and write no
//! backup.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use automon::act::fix::{
    Applied, CodeFixPolicy, Outcome, Proposal, apply_code_fix, parse_proposal, rollback,
};

use super::support::example;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llm")
        .join(name);
    fs::read_to_string(path).unwrap()
}

/// What the fixtures `function_replacement.txt` and `unified_diff.txt` expect: a worker class
/// with `next_start_id` (return-annotated) and `run_batch`.
const WORKER: &str = r#""""Worker fixture for code-fix tests."""


class Worker:
    batch_size = 100

    def fetch_rows(self, start_id):
        return []

    def upload(self, row):
        pass

    def next_start_id(self, rows: list[tuple[int, str]], current: int) -> int:
        """Return the id to resume from after a page of rows."""
        if not rows:
            return current
        return max(row[0] for row in rows)

    def run_batch(self, start_id):
        rows = self.fetch_rows(start_id)
        if not rows:
            return start_id
        for row in rows:
            self.upload(row)
        return self.next_start_id(rows, start_id)
"#;

const CLASSES: &str = "class A:\n    def run(self):\n        return 1\n\n\nclass B:\n    def run(self):\n        return 2\n";
const TABS: &str = "class T:\n\tdef step(self, x):\n\t\tif x:\n\t\t\treturn 1\n\t\treturn 0\n";

struct Fx {
    dir: tempfile::TempDir,
    policy: CodeFixPolicy,
}

impl Fx {
    /// `work/` with the given files (allow-listed when `allowed`), backups in `backups/`.
    fn new(files: &[(&str, &[u8], bool)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        fs::create_dir_all(&work).unwrap();
        let mut allowed = Vec::new();
        for (rel, bytes, allow) in files {
            let path = work.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
            if *allow {
                allowed.push(path);
            }
        }
        let policy = CodeFixPolicy {
            files: allowed,
            workdir: work,
            interpreter: "python3".into(),
            test_command: None,
            max_changed_lines: 50,
            env: None,
            redactor: Default::default(),
        };
        Self { dir, policy }
    }

    fn worker() -> Self {
        Self::new(&[("app/migrate_worker.py", WORKER.as_bytes(), true)])
    }

    fn work(&self, rel: &str) -> PathBuf {
        self.policy.workdir.join(rel)
    }

    fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    fn apply(&self, text: &str) -> Result<Outcome, String> {
        self.apply_with(text, &BTreeSet::new(), false)
    }

    fn apply_with(
        &self,
        text: &str,
        hashes: &BTreeSet<String>,
        dry_run: bool,
    ) -> Result<Outcome, String> {
        let proposal = parse_proposal(text).map_err(|r| r.why)?;
        apply_code_fix(&self.policy, &proposal, &self.backups(), hashes, dry_run).map_err(|r| r.why)
    }

    /// Every file under the temp dir (not following symlinks), with its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(&path, out);
                } else if meta.is_file() {
                    out.insert(path.clone(), fs::read(&path).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

fn applied(outcome: Outcome) -> Applied {
    match outcome {
        Outcome::Applied(a) => a,
        other => panic!("not applied: {other:?}"),
    }
}

fn compiles(file: &Path) -> bool {
    Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(file)
        .status()
        .unwrap()
        .success()
}

#[test]
fn codefix_function_replacement_fixture_with_return_annotation() {
    let fx = Fx::worker();
    let file = fx.work("app/migrate_worker.py");
    let text = fixture("function_replacement.txt");
    let a = applied(fx.apply(&text).unwrap());
    let new = fs::read_to_string(&file).unwrap();
    assert!(new.contains(
        "    def next_start_id(self, rows: list[tuple[int, str]], current: int) -> int:\n        \"\"\"Return the id to resume from after a page of rows.\"\"\"\n        if not rows:\n            return current + self.batch_size\n"
    ), "{new}");
    assert_eq!(
        new.matches("def next_start_id").count(),
        1,
        "replaced, not appended"
    );
    assert!(new.ends_with("        return self.next_start_id(rows, start_id)\n"));
    assert!(compiles(&file));
    assert_eq!(a.file, fs::canonicalize(&file).unwrap());
    assert_eq!(a.changed_lines, 1);
    assert!(
        a.diff
            .contains("+            return current + self.batch_size"),
        "{}",
        a.diff
    );

    // Backup: original bytes, named <file>.<UTC ms stamp>.<8 hex of the new content>.bak
    assert_eq!(fs::read(&a.backup).unwrap(), WORKER.as_bytes());
    let name = a.backup.file_name().unwrap().to_str().unwrap().to_string();
    let re = regex::Regex::new(r"^migrate_worker\.py\.\d{8}T\d{6}\.\d{3}Z\.[0-9a-f]{8}\.bak$");
    assert!(re.unwrap().is_match(&name), "{name}");
    assert!(name.contains(&automon::act::fix::sha256_hex(new.as_bytes())[..8]));

    // Again: already applied, nothing written.
    let before = fx.snapshot();
    match fx.apply(&text).unwrap() {
        Outcome::AlreadyApplied { patch_hash, .. } => assert_eq!(patch_hash, a.patch_hash),
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.snapshot(), before);

    // Rolled back: byte-identical original. The same patch is then refused (never twice).
    rollback(&a).unwrap();
    assert_eq!(fs::read(&file).unwrap(), WORKER.as_bytes());
    let hashes = BTreeSet::from([a.patch_hash.clone()]);
    let err = fx.apply_with(&text, &hashes, false).unwrap_err();
    assert!(err.contains("applied before"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), WORKER.as_bytes());
}

#[test]
fn codefix_unified_diff_fixture_located_by_context_not_line_numbers() {
    let fx = Fx::worker();
    let file = fx.work("app/migrate_worker.py");
    let text = fixture("unified_diff.txt"); // hunk says line 120; the code is at line 19
    let a = applied(fx.apply(&text).unwrap());
    let new = fs::read_to_string(&file).unwrap();
    assert!(new.contains("        if not rows:\n            return start_id + self.batch_size\n        for row in rows:"));
    // The other `if not rows:` (in next_start_id) is untouched.
    assert!(new.contains("            return current\n"));
    assert_eq!(a.changed_lines, 1);
    assert!(compiles(&file));
    // The reverse applies now: already applied.
    assert!(matches!(
        fx.apply(&text).unwrap(),
        Outcome::AlreadyApplied { .. }
    ));
}

#[test]
fn codefix_string_replacement_with_indentation_offset() {
    let fx = Fx::worker();
    let file = fx.work("app/migrate_worker.py");
    // Given at column 0 with trailing spaces; found at column 8; the new lines are re-indented.
    let text = "OLD:\nfor row in rows:   \n    self.upload(row)\nNEW:\nfor row in rows:\n    if row:\n        self.upload(row)\n";
    applied(fx.apply(text).unwrap());
    let new = fs::read_to_string(&file).unwrap();
    assert!(new.contains(
        "        for row in rows:\n            if row:\n                self.upload(row)\n"
    ));
    assert!(compiles(&file));
}

#[test]
fn codefix_dry_run_writes_nothing_and_returns_the_diff() {
    let fx = Fx::worker();
    let before = fx.snapshot();
    let Outcome::DryRun { diff, file, .. } = fx
        .apply_with(&fixture("unified_diff.txt"), &BTreeSet::new(), true)
        .unwrap()
    else {
        panic!("not a dry run")
    };
    assert!(diff.starts_with("--- a/app/migrate_worker.py\n+++ b/app/migrate_worker.py\n"));
    assert!(diff.contains(
        "-            return start_id\n+            return start_id + self.batch_size\n"
    ));
    assert_eq!(
        file,
        fs::canonicalize(fx.work("app/migrate_worker.py")).unwrap()
    );
    assert_eq!(fx.snapshot(), before);
    assert!(!fx.backups().exists());
}

#[test]
fn codefix_keeps_crlf_permissions_and_rolls_back() {
    let crlf = WORKER.replace('\n', "\r\n");
    let fx = Fx::new(&[("app/migrate_worker.py", crlf.as_bytes(), true)]);
    let file = fx.work("app/migrate_worker.py");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o750)).unwrap();
    let a = applied(fx.apply(&fixture("unified_diff.txt")).unwrap());
    let new = fs::read_to_string(&file).unwrap();
    assert!(new.contains("            return start_id + self.batch_size\r\n"));
    assert_eq!(
        new.matches('\n').count(),
        new.matches("\r\n").count(),
        "still all CRLF"
    );
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o750
    );
    rollback(&a).unwrap();
    assert_eq!(fs::read(&file).unwrap(), crlf.as_bytes());
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o750
    );
    // Rolling back twice is harmless; a file changed after the fix is not clobbered.
    rollback(&a).unwrap();
    let a = applied(fx.apply(&fixture("unified_diff.txt")).unwrap());
    fs::write(&file, "edited by hand\n").unwrap();
    let err = rollback(&a).unwrap_err();
    assert!(err.why.contains("changed after the fix"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"edited by hand\n");
}

#[test]
fn codefix_space_indented_function_into_tab_file_is_retabbed() {
    let fx = Fx::new(&[("t.py", TABS.as_bytes(), true)]);
    let text = "def step(self, x):\n    if x:\n        return 2\n    return 0\n";
    applied(fx.apply(text).unwrap());
    assert_eq!(
        fs::read_to_string(fx.work("t.py")).unwrap(),
        "class T:\n\tdef step(self, x):\n\t\tif x:\n\t\t\treturn 2\n\t\treturn 0\n"
    );
}

#[test]
fn codefix_test_command_sees_the_candidate() {
    let mut fx = Fx::worker();
    let script = "import os, sys; src = open(os.environ['AUTOMON_CANDIDATE']).read(); sys.exit(0 if 'current + self.batch_size' in src else 1)";
    fx.policy.test_command = Some(vec!["python3".into(), "-c".into(), script.into()]);
    applied(fx.apply(&fixture("function_replacement.txt")).unwrap());
}

#[test]
fn codefix_backups_of_two_fixes_never_collide() {
    let fx = Fx::worker();
    let a = applied(fx.apply(&fixture("function_replacement.txt")).unwrap());
    let b = applied(fx.apply(&fixture("unified_diff.txt")).unwrap());
    assert_ne!(a.backup, b.backup);
    assert_eq!(fs::read_dir(fx.backups()).unwrap().count(), 2);
    // Rolled back in reverse order, the original comes back.
    rollback(&b).unwrap();
    rollback(&a).unwrap();
    assert_eq!(
        fs::read(fx.work("app/migrate_worker.py")).unwrap(),
        WORKER.as_bytes()
    );
}

/// One refused proposal: the reason to find, and an optional change to the default policy.
struct Adversarial {
    name: &'static str,
    proposal: String,
    reason: &'static str,
    policy: Option<fn(&mut CodeFixPolicy)>,
}

fn case(name: &'static str, proposal: &str, reason: &'static str) -> Adversarial {
    Adversarial {
        name,
        proposal: proposal.to_string(),
        reason,
        policy: None,
    }
}

#[test]
fn codefix_adversarial_proposals_leave_every_byte_alone() {
    let mut mixed = WORKER.replace('\n', "\r\n");
    mixed.push_str("x = 1\n"); // one bare LF among CRLFs
    let mut latin1 = b"# caf\xe9\n".to_vec();
    latin1.extend_from_slice(WORKER.as_bytes());
    let fx = Fx::new(&[
        ("app/migrate_worker.py", WORKER.as_bytes(), true),
        ("app/classes.py", CLASSES.as_bytes(), true),
        ("app/tabs.py", TABS.as_bytes(), true),
        ("app/mixed.py", mixed.as_bytes(), true),
        ("app/latin1.py", &latin1, true),
        ("other.py", WORKER.as_bytes(), false),
    ]);
    let outside = fx.dir.path().join("outside.py");
    fs::write(&outside, WORKER).unwrap();
    std::os::unix::fs::symlink(&outside, fx.work("link.py")).unwrap();
    let elsewhere = fx.dir.path().join("elsewhere.py");
    fs::write(&elsewhere, WORKER).unwrap();
    let mut policy = fx.policy.clone();
    policy.files.push(fx.work("link.py"));

    let w = "# file: app/migrate_worker.py\n";
    let good_old_new = "OLD:\n            return current\nNEW:\n            return current + 1\n";
    let cases = vec![
        case(
            "not on the allow-list",
            &format!("# file: other.py\n{good_old_new}"),
            "not on the allow-list",
        ),
        case(
            "a path with ..",
            &format!("# file: app/../app/migrate_worker.py\n{good_old_new}"),
            "contains `..`",
        ),
        case(
            "an absolute path outside the workdir",
            &format!("# file: {}\n{good_old_new}", elsewhere.display()),
            "absolute path that is not an allow-listed file",
        ),
        case(
            "a symlink leading outside",
            &format!("# file: link.py\n{good_old_new}"),
            "leads outside the working directory",
        ),
        case(
            "an ambiguous old string",
            &format!("{w}OLD:\n        if not rows:\nNEW:\n        if rows is None:\n"),
            "ambiguous: it occurs 2 times (lines 15, 21)",
        ),
        case(
            "a def name in two classes",
            "# file: app/classes.py\ndef run(self):\n    return 3\n",
            "`run` is ambiguous: it matches 2 functions: A.run (line 2), B.run (line 7)",
        ),
        case(
            "a syntax-breaking change",
            &format!(
                "{w}OLD:\n        if not rows:\n            return current\nNEW:\n        if not rows\n            return current\n"
            ),
            "the result does not parse: expected ':'",
        ),
        // ast.parse accepts duplicate argument names; only compile() (symtable) rejects them.
        case(
            "parses but fails compile()",
            &format!("{w}def next_start_id(self, rows, rows) -> int:\n    return max(rows)\n"),
            "fails python3's compile(): SyntaxError: duplicate argument 'rows'",
        ),
        // `break` outside a loop: the same split between the two validators.
        case(
            "break outside a loop",
            &format!("{w}OLD:\nclass Worker:\nNEW:\nbreak\nclass Worker:\n"),
            "compile(): SyntaxError: 'break' outside loop",
        ),
        Adversarial {
            name: "a failing test command",
            proposal: format!("{w}{good_old_new}"),
            reason: "the test command `python3 -c import sys; print('2 tests failed'); sys.exit(3)` failed (exit status: 3): 2 tests failed",
            policy: Some(|p| {
                p.test_command = Some(vec![
                    "python3".into(),
                    "-c".into(),
                    "import sys; print('2 tests failed'); sys.exit(3)".into(),
                ])
            }),
        },
        Adversarial {
            name: "a change over the size cap",
            proposal: fixture("function_replacement.txt").replace(
                "current + self.batch_size",
                "current + 1\n        x = 1\n        y = 2\n        z = 3",
            ),
            reason: "it changes 4 lines, more than the cap of 3",
            policy: Some(|p| {
                p.max_changed_lines = 3;
                p.files.truncate(1);
            }),
        },
        case(
            "an elision comment",
            &format!(
                "{w}def next_start_id(self, rows, current) -> int:\n    # ... existing code ...\n    return current\n"
            ),
            "elision marker (\"# ... existing code ...\")",
        ),
        case(
            "a rest-unchanged elision",
            &format!(
                "{w}OLD:\n            return current\nNEW:\n            return current + 1\n        ... rest unchanged\n"
            ),
            "elision marker",
        ),
        case(
            "a unicode ellipsis",
            &format!(
                "{w}@@ -15,3 +15,3 @@\n         if not rows:\n-            return current\n+            return current …\n"
            ),
            "elision marker",
        ),
        case("an empty change", "", "the proposal is empty"),
        case(
            "a diff that changes nothing",
            &format!("{w}@@ -15,2 +15,2 @@\n         if not rows:\n             return current\n"),
            "adds and removes nothing",
        ),
        case(
            "old == new",
            &format!(
                "{w}<<<<<<< SEARCH\n        return current\n=======\n        return current\n>>>>>>> REPLACE\n"
            ),
            "identical (no change)",
        ),
        case(
            "a diff whose context is absent",
            &format!(
                "{w}@@ -15,3 +15,3 @@\n         if not cells:\n-            return current\n+            return current + 1\n"
            ),
            "hunk 1 of 1 (hinted at line 15): its context and removed lines are not in the file",
        ),
        case(
            "a diff that applies only partly",
            &format!(
                "{w}@@ -15,3 +15,3 @@\n         if not rows:\n-            return current\n+            return current + 1\n@@ -21,3 +21,3 @@\n         if not cells:\n-            return start_id\n+            return start_id + 1\n"
            ),
            "hunk 2 of 2 (hinted at line 21): its context and removed lines are not in the file; nothing was applied",
        ),
        case(
            "tabs vs spaces",
            "# file: app/tabs.py\nOLD:\n\t\t\treturn 1\nNEW:\n\t\t\tif x > 1:\n                return 2\n\t\t\treturn 1\n",
            "indents with spaces where the file indents with tabs",
        ),
        case(
            "mixed CRLF and LF",
            &format!("# file: app/mixed.py\n{good_old_new}"),
            "mixes CRLF and LF line endings",
        ),
        case(
            "non-UTF-8 bytes",
            &format!("# file: app/latin1.py\n{good_old_new}"),
            "not UTF-8 (invalid byte at offset 5)",
        ),
        case(
            "a replacement defining another name",
            &format!("{w}# function: next_start_id\ndef next_start(self):\n    return 0\n"),
            "header names `next_start_id` but the code defines `next_start`",
        ),
        case(
            "a function that is not there",
            &format!("{w}def resume(self) -> int:\n    return 0\n"),
            "defines no function `resume`",
        ),
        case(
            "no file with two allow-listed files",
            good_old_new,
            "names no file and 6 files are allow-listed",
        ),
        case(
            "two SEARCH/REPLACE blocks",
            &format!(
                "{w}<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n"
            ),
            "2 SEARCH/REPLACE blocks",
        ),
        case(
            "an old text that is not there",
            &format!("{w}OLD:\n        return rows[-1]\nNEW:\n        return rows[0]\n"),
            "the old text is not in the file",
        ),
    ];
    assert!(cases.len() >= 20);
    for c in &cases {
        let before = fx.snapshot();
        let mut p = policy.clone();
        if let Some(change) = c.policy {
            change(&mut p);
        }
        let result = parse_proposal(&c.proposal).and_then(|proposal| {
            apply_code_fix(&p, &proposal, &fx.backups(), &BTreeSet::new(), false)
        });
        let err = match result {
            Err(r) => r.why,
            Ok(o) => panic!("{}: not rejected: {o:?}", c.name),
        };
        assert!(err.contains(c.reason), "{}: {err}", c.name);
        assert!(err.starts_with("code fix"), "{}: {err}", c.name);
        assert_eq!(fx.snapshot(), before, "{}: a file changed", c.name);
        assert!(!fx.backups().exists(), "{}: a backup was written", c.name);
    }
}

#[test]
fn codefix_the_same_patch_is_never_applied_twice() {
    let fx = Fx::worker();
    let text = fixture("unified_diff.txt");
    let Outcome::DryRun { patch_hash, .. } = fx.apply_with(&text, &BTreeSet::new(), true).unwrap()
    else {
        panic!()
    };
    let before = fx.snapshot();
    let err = fx
        .apply_with(&text, &BTreeSet::from([patch_hash]), false)
        .unwrap_err();
    assert!(err.contains("never applied twice"), "{err}");
    assert_eq!(fx.snapshot(), before);
}

/// Runs `discover_batch` of the worker at `file` on a three-book library with the loop fault
/// due, and returns the cursor it hands back (the bug: the unchanged cursor, 0).
fn discovery_cursor_with_loop_fault(file: &Path) -> i64 {
    let script = r#"
import importlib.util, sqlite3, sys
spec = importlib.util.spec_from_file_location("w", sys.argv[1])
w = importlib.util.module_from_spec(spec)
sys.modules["w"] = w
spec.loader.exec_module(w)
w.STOP.set()  # no half-second wait in the injected branch
db = sqlite3.connect(":memory:")
db.executescript("""
CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT, path TEXT);
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE books_authors_link (id INTEGER PRIMARY KEY, book INTEGER, author INTEGER);
CREATE TABLE data (id INTEGER PRIMARY KEY, book INTEGER, format TEXT, name TEXT, uncompressed_size INTEGER);
INSERT INTO books VALUES (1, 'A', 'x/A (1)'), (2, 'B', 'x/B (2)'), (3, 'C', 'x/C (3)');
INSERT INTO data VALUES (1, 1, 'EPUB', 'A', 10), (2, 2, 'EPUB', 'B', 10), (3, 3, 'EPUB', 'C', 10);
""")
print(w.discover_batch(db, 0, 100, 10, lambda max_id: True).next_cursor)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn codefix_fixes_the_example_workers_loop_bug() {
    let original = fs::read(example("migrate_worker.py")).unwrap();
    let fx = Fx::new(&[(
        "examples/calibre-migration/migrate_worker.py",
        &original,
        true,
    )]);
    let file = fx.work("examples/calibre-migration/migrate_worker.py");
    assert_eq!(
        discovery_cursor_with_loop_fault(&file),
        0,
        "the bug is there"
    );

    // The useless fix compiles and applies, but the cursor still does not advance.
    let useless = applied(fx.apply(&fixture("useless_fix.txt")).unwrap());
    assert!(compiles(&file));
    assert_eq!(discovery_cursor_with_loop_fault(&file), 0, "still looping");
    rollback(&useless).unwrap();
    assert_eq!(fs::read(&file).unwrap(), original);

    // The real fix: the injected branch is gone and the cursor advances past the batch.
    let text = fixture("fix_loop_bug.txt");
    assert!(matches!(
        parse_proposal(&text).unwrap(),
        Proposal::ReplaceString { .. }
    ));
    let fix = applied(fx.apply(&text).unwrap());
    let new = fs::read_to_string(&file).unwrap();
    assert!(!new.contains("if loop_fault_due(max_id):"));
    assert!(compiles(&file));
    assert_eq!(
        discovery_cursor_with_loop_fault(&file),
        3,
        "advances to max_id"
    );
    assert!(fix.changed_lines <= 10, "{}", fix.changed_lines);
    assert!(matches!(
        fx.apply(&text).unwrap(),
        Outcome::AlreadyApplied { .. }
    ));
    // Applied on top of the useless fix, it still works.
    rollback(&fix).unwrap();
    applied(fx.apply(&fixture("useless_fix.txt")).unwrap());
    applied(fx.apply(&text).unwrap());
    assert_eq!(discovery_cursor_with_loop_fault(&file), 3);
}
