//! Redaction: secrets are replaced by [`REDACTED`] where text enters automon (a worker's log
//! as it becomes an observation, see [`crate::observe`]) and before anything leaves the machine
//! (the LLM prompt) or is stored (diagnostics, answers, error messages).
//!
//! Three kinds of secret are removed:
//!
//! - literal values: the values of the environment variables named in `spec.secrets.env` (and
//!   the deprecated `llm.secret_env`) or whose names look secret in the template's `env` (read
//!   from automon's own environment and from the worker template's `env`), and the LLM API key
//!   itself (see [`super::redactor_for`]). Values shorter than [`MIN_SECRET_LEN`] bytes are
//!   ignored (redacting every `1` in a log would destroy it and protect nothing);
//! - shapes: OpenAI keys (`sk-…`), GitHub tokens (`ghp_…`, `gho_…`, `github_pat_…`), AWS access
//!   key ids (`AKIA`/`ASIA` + 16), JWTs (three base64url segments starting `eyJ`),
//!   `Bearer …`/`Basic …` credentials, PEM private-key blocks, passwords in URLs
//!   (`scheme://user:pass@`), `key=value` / `key: value` pairs whose key contains password,
//!   passwd, pwd, secret, token, api_key, apikey, api-key, access_key, private_key or
//!   secret_key, and upper-case environment-style assignments whose NAME contains PASS, SECRET,
//!   TOKEN or KEY (`DB_PASS=…` in an environment dump);
//! - the extra regexes of `spec.secrets.patterns`: every match is replaced.
//!
//! A literal is known only while the manifest or automon's environment holds it: after a secret
//! is rotated, its old value in old log lines is caught only by the shapes.

use std::sync::OnceLock;

use regex::Regex;

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Literal secret values shorter than this many bytes are not redacted.
pub const MIN_SECRET_LEN: usize = 4;

/// Replaces secrets in text. Cheap to clone; build one per manifest.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Literal values, longest first (so a value containing another is removed whole).
    literals: Vec<String>,
    /// Extra patterns from the manifest (`spec.secrets.patterns`); every match is replaced.
    patterns: Vec<Regex>,
}

impl PartialEq for Redactor {
    fn eq(&self, other: &Self) -> bool {
        self.literals == other.literals
            && self.patterns.len() == other.patterns.len()
            && self
                .patterns
                .iter()
                .zip(&other.patterns)
                .all(|(a, b)| a.as_str() == b.as_str())
    }
}

impl Eq for Redactor {}

impl std::fmt::Debug for Redactor {
    // The literals are the secrets themselves: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("literals", &self.literals.len())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for the literal `values` (empty and short ones are skipped) plus the shapes.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut r = Self::default();
        r.add(values);
        r
    }

    /// A redactor for the values of the environment variables `names`, looked up first in
    /// `template_env` (the worker template's `env`) and in automon's process environment (both
    /// values are added when both exist).
    pub fn from_env_names(
        names: &[String],
        template_env: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let mut values = Vec::new();
        for name in names {
            if let Some(v) = template_env.get(name) {
                values.push(v.clone());
            }
            if let Ok(v) = std::env::var(name) {
                values.push(v);
            }
        }
        Self::new(values)
    }

    /// Adds literal values (empty and short ones are skipped).
    pub fn add<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for v in values {
            let v: String = v.into();
            let v = v.trim().to_string();
            if v.len() >= MIN_SECRET_LEN && !self.literals.contains(&v) {
                self.literals.push(v);
            }
        }
        self.literals.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// Adds extra patterns (regexes; one that does not compile is skipped — the manifest's are
    /// checked by validation first).
    pub fn add_patterns<I, S>(&mut self, patterns: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for p in patterns {
            if let Ok(re) = Regex::new(p.as_ref())
                && !self.patterns.iter().any(|old| old.as_str() == re.as_str())
            {
                self.patterns.push(re);
            }
        }
    }

    /// Adds the literal values and patterns of another redactor.
    pub fn merge(&mut self, other: &Redactor) {
        self.add(other.literals.iter().cloned());
        self.add_patterns(other.patterns.iter().map(Regex::as_str));
    }

    /// `text` with every literal secret, every extra pattern and every secret shape replaced
    /// by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.literals {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        for re in &self.patterns {
            if re.is_match(&out) {
                out = re.replace_all(&out, REDACTED).into_owned();
            }
        }
        redact_shapes(&out)
    }

    /// Redacts `text` in place, allocating only when something changed (a line that holds no
    /// literal, matches no extra pattern and cannot hold a shape — most log lines — costs a
    /// few substring searches and no allocation).
    pub fn redact_in_place(&self, text: &mut String) {
        let clean = !may_hold_shape(text)
            && !self.literals.iter().any(|v| text.contains(v.as_str()))
            && !self.patterns.iter().any(|re| re.is_match(text));
        if clean {
            return;
        }
        let red = self.redact(text);
        if red != *text {
            *text = red;
        }
    }
}

/// Literals of which every secret shape (see [`shapes`]) holds at least one, in lower case:
/// ASCII text that holds none of them, in any case, cannot match a shape. (Each shape's
/// literal: a PEM block `-----BEGIN`; a URL password `://`; `bearer`; `authorization`; a
/// `key=value` pair's key `pass`(word/wd), `pwd`, `secret`(_key), `token` or `key` (api_key,
/// apikey, api-key, access_key, private_key); an environment NAME `PASS`, `SECRET`, `TOKEN`,
/// `KEY`; a JWT `eyJ`; `sk-`; `ghp_` `gho_` `ghu_` `ghs_` `ghr_`; `github_pat_`; `AKIA`,
/// `ASIA`; `xox`; `AIza`.)
const SHAPE_LITERALS: [&str; 21] = [
    "-----begin",
    "://",
    "bearer",
    "authorization",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "eyj",
    "sk-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "akia",
    "asia",
    "xox",
    "aiza",
];

/// Whether `text` may match a secret shape: false only for ASCII text without any of
/// [`SHAPE_LITERALS`] (ASCII case-insensitively), so the shapes' regexes are neither compiled
/// nor run for it. Text with any non-ASCII character may (the shapes' `(?i)` folds Unicode
/// case: the Kelvin sign is a `k` to them).
fn may_hold_shape(text: &str) -> bool {
    static LITERALS: OnceLock<Option<aho_corasick::AhoCorasick>> = OnceLock::new();
    if !text.is_ascii() {
        return true;
    }
    LITERALS
        .get_or_init(|| {
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(SHAPE_LITERALS)
                .ok()
        })
        .as_ref()
        .is_none_or(|ac| ac.is_match(text))
}

struct Shape {
    re: Regex,
    replacement: &'static str,
}

fn shapes() -> &'static [Shape] {
    static SHAPES: OnceLock<Vec<Shape>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let table: [(&str, &'static str); 13] = [
            // PEM private-key blocks, whole (to the end of the text when the END line is cut off).
            (
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
                REDACTED,
            ),
            // Passwords in URLs: keep scheme and user, drop the password.
            (
                r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+):[^@\s/]+@",
                "${1}:[REDACTED]@",
            ),
            // Authorization headers and the like.
            (r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+", "${1} [REDACTED]"),
            (
                r"(?i)\b(authorization\s*:\s*basic)\s+[A-Za-z0-9+/=]+",
                "${1} [REDACTED]",
            ),
            // key=value, key: value, "key": "value".
            (
                r#"(?i)\b([\w.\-]*(?:password|passwd|pwd|secret|token|api_key|apikey|api-key|access_key|private_key|secret_key)[\w.\-]*)(["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;&"'}]+)"#,
                "${1}${2}[REDACTED]",
            ),
            // Environment-style assignments whose NAME looks secret (`DB_PASS=…`, an env dump,
            // `'API_KEY': '…'`): upper case only, so prose such as "tests passed: 3" is kept.
            (
                r#"\b([A-Z0-9_]*(?:PASS|SECRET|TOKEN|KEY)[A-Z0-9_]*)(["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;&"'}]+)"#,
                "${1}${2}[REDACTED]",
            ),
            // JWTs (header.payload.signature; the signature may be empty with alg none).
            (
                r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",
                REDACTED,
            ),
            // OpenAI-style keys (sk-..., sk-proj-...).
            (r"\bsk-[A-Za-z0-9_\-]{8,}", REDACTED),
            // GitHub tokens.
            (r"\bgh[pousr]_[A-Za-z0-9]{16,}", REDACTED),
            (r"\bgithub_pat_[A-Za-z0-9_]{16,}", REDACTED),
            // AWS access key ids (long-term and temporary).
            (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", REDACTED),
            // Slack tokens.
            (r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", REDACTED),
            // Google API keys.
            (r"\bAIza[0-9A-Za-z_\-]{35}\b", REDACTED),
        ];
        table
            .into_iter()
            .filter_map(|(pattern, replacement)| {
                // The patterns are constants covered by the unit tests below; one that failed
                // to compile would be skipped rather than crash automon.
                Regex::new(pattern).ok().map(|re| Shape { re, replacement })
            })
            .collect()
    })
}

/// `text` with every secret shape replaced (no literal values).
pub fn redact_shapes(text: &str) -> String {
    let mut out = text.to_string();
    if !may_hold_shape(text) {
        return out;
    }
    for s in shapes() {
        if s.re.is_match(&out) {
            out = s.re.replace_all(&out, s.replacement).into_owned();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_compiles() {
        assert_eq!(shapes().len(), 13);
    }

    #[test]
    fn shapes_table() {
        let cases = [
            ("key sk-test-abc1234567890XYZ used", "key [REDACTED] used"),
            ("sk-proj-AbCdEf_1234567890", "[REDACTED]"),
            ("token ghp_0123456789abcdefABCDEF0123", "token [REDACTED]"),
            ("github_pat_11ABCDEFG0123456789_abcdef", "[REDACTED]"),
            ("aws AKIAIOSFODNN7EXAMPLE here", "aws [REDACTED] here"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nat_ure end",
                "jwt [REDACTED] end",
            ),
            (
                "Authorization: Bearer abc.def-ghi",
                "Authorization: Bearer [REDACTED]",
            ),
            (
                "postgres://migrator:hunter2@db:5432/calibre",
                "postgres://migrator:[REDACTED]@db:5432/calibre",
            ),
            ("password=hunter2 next", "password=[REDACTED] next"),
            ("db_password: hunter2", "db_password: [REDACTED]"),
            (
                r#"{"api_key": "abc 123", "n": 1}"#,
                r#"{"api_key": [REDACTED], "n": 1}"#,
            ),
            ("APIKEY=xyz&page=2", "APIKEY=[REDACTED]&page=2"),
            ("client_secret='s3cr3t'", "client_secret=[REDACTED]"),
            ("passwd:abc", "passwd:[REDACTED]"),
            ("pwd=abc123", "pwd=[REDACTED]"),
            (
                "env: DB_PASS=hunter2 MODE=fast SSH_KEY_PATH=/k",
                "env: DB_PASS=[REDACTED] MODE=fast SSH_KEY_PATH=[REDACTED]",
            ),
            ("{'STRIPE_KEY': 'x1'}", "{'STRIPE_KEY': [REDACTED]}"),
            (
                "retry with token=t0k3n-value",
                "retry with token=[REDACTED]",
            ),
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
                "AWS_SECRET_ACCESS_KEY=[REDACTED]",
            ),
            ("temp ASIAIOSFODNN7EXAMPLE", "temp [REDACTED]"),
            (
                "Authorization: Basic dXNlcjpwYXNz",
                "Authorization: Basic [REDACTED]",
            ),
            (
                "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAKCAQ\n-----END RSA PRIVATE KEY-----\nnext",
                "key:\n[REDACTED]\nnext",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt\n(cut off)",
                "[REDACTED]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_shapes(input), want, "input: {input}");
        }
    }

    /// Issue 25: the shapes' 13 regexes ran on every new log line (and their compilation,
    /// 1 MB of heap and megabytes of code, came with a fleet's first restart). A line is now
    /// looked at by them only when it holds one of the shapes' literals; every shape in the
    /// table above holds one, in any case, and lines without one are returned as they are.
    #[test]
    fn only_text_holding_a_shape_literal_is_looked_at_by_the_shapes() {
        for secret in [
            "sk-test-abc1234567890XYZ",
            "ghp_0123456789abcdefABCDEF0123",
            "GHO_0123456789abcdefABCDEF0123",
            "github_pat_11ABCDEFG0123456789_abcdef",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "xoxb-1234567890-abcdef",
            "AIzaSyA-1234567890abcdefghijklmnopqrstu",
            "BEARER abc.def",
            "AUTHORIZATION: basic dXNlcjpwYXNz",
            "-----begin RSA PRIVATE KEY-----",
            "postgres://u:p@h",
            "PassWord=x",
            "PWD=x",
            "client_Secret=x",
            "ToKeN=x",
            "API-KEY=x",
            "DB_PASS=x",
        ] {
            assert!(may_hold_shape(secret), "{secret}");
        }
        for line in [
            "2024-05-01 10:00:00,123 - INFO - Processed batch: book.id > 61,000",
            "Successfully uploaded: War and Peace (id 4411)",
            "tick 12",
        ] {
            assert!(!may_hold_shape(line), "{line}");
            let mut text = line.to_string();
            Redactor::new(["hunter2"]).redact_in_place(&mut text);
            assert_eq!(text, line);
        }
        // Non-ASCII text is always looked at: `(?i)` folds the Kelvin sign (U+212A) to `k`.
        assert!(may_hold_shape("to\u{212a}en=hunter2"));
        assert_eq!(
            redact_shapes("to\u{212a}en=hunter2"),
            "to\u{212a}en=[REDACTED]"
        );
        // A literal or an extra pattern is still redacted in a line without a shape literal.
        let mut r = Redactor::new(["hunter2"]);
        r.add_patterns(["batch [0-9]+"]);
        let mut text = "uploaded hunter2 in batch 12".to_string();
        r.redact_in_place(&mut text);
        assert_eq!(text, "uploaded [REDACTED] in [REDACTED]");
    }

    #[test]
    fn ordinary_log_lines_are_untouched() {
        let lines = [
            "2024-05-01 10:00:00,123 - INFO - Processed batch: book.id > 61,000",
            "Successfully uploaded: War and Peace (id 4411)",
            "Traceback (most recent call last):",
            "  File \"/srv/migrate_worker.py\", line 120, in run_batch",
            "https://example.org/api/books?page=2",
            "risk-averse task-runner",
            "Running basic checks on 12 books",
            "tests passed: 12, key: 4411",
        ];
        for l in lines {
            assert_eq!(redact_shapes(l), l);
        }
    }

    #[test]
    fn literal_values_are_removed_longest_first() {
        let r = Redactor::new(["hunter2-long", "hunter2", "", "abc"]);
        assert_eq!(
            r.redact("a hunter2-long b hunter2 c abc"),
            "a [REDACTED] b [REDACTED] c abc",
            "short values (< MIN_SECRET_LEN) are not redacted"
        );
    }

    #[test]
    fn env_names_read_template_env_and_process_env() {
        let env = std::collections::BTreeMap::from([(
            "CALIBRE_DB_PASSWORD".to_string(),
            "template-value-9".to_string(),
        )]);
        let r = Redactor::from_env_names(&["CALIBRE_DB_PASSWORD".to_string()], &env);
        assert_eq!(r.redact("x template-value-9 y"), "x [REDACTED] y");
        // PATH is always set in the test's environment.
        let path = std::env::var("PATH").unwrap_or_default();
        let r = Redactor::from_env_names(&["PATH".to_string()], &Default::default());
        if path.len() >= MIN_SECRET_LEN {
            assert!(!r.redact(&format!("p={path}")).contains(&path));
        }
    }

    #[test]
    fn extra_patterns_replace_every_match_and_merge() {
        let mut r = Redactor::default();
        r.add_patterns(["CANARY-[0-9]+", "("]);
        assert_eq!(
            r.redact("a CANARY-1 b CANARY-22"),
            "a [REDACTED] b [REDACTED]"
        );
        let mut other = Redactor::new(["literal-1"]);
        other.merge(&r);
        assert_eq!(other.redact("literal-1 CANARY-3"), "[REDACTED] [REDACTED]");
    }

    #[test]
    fn debug_never_prints_the_values() {
        let r = Redactor::new(["very-secret-value"]);
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("very-secret-value"), "{dbg}");
    }
}
