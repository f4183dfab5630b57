//! Environments: which variables a child process of automon gets, which variable names are
//! secret, and how secret values are masked in the manifest text automon stores and prints.
//!
//! A worker gets automon's environment (default `template.inherit_env: true`) or only `PATH`,
//! `HOME` and `LANG` from it (`false`), then `template.env`, then automon's markers — and
//! never the LLM API key (`llm.api_key_env`) unless `template.env` names it.
//!
//! In the normalised manifest (`state.json`'s copy, `automon diff`), the value of every
//! `template.env` entry whose name is secret becomes `[REDACTED] sha256:` + 16 hex digits of a
//! SHA-256 over the name and value: enough to notice a change, not the value. `diff` shows it as
//! `NAME: [REDACTED]`, or `NAME: [REDACTED] (changed)` when the hash moved.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::OnceLock;

use regex::Regex;
use sha2::{Digest, Sha256};

use super::redact::REDACTED;
use crate::manifest::{Spec, WorkerSet};

/// What a worker keeps from automon's environment when `template.inherit_env` is false.
pub const KEPT_WITHOUT_INHERIT: [&str; 3] = ["PATH", "HOME", "LANG"];

/// Parts of a variable name (any case) that make it secret: `*PASS*`, `*SECRET*`, `*TOKEN*`,
/// `*KEY*`.
pub const SECRET_NAME_PARTS: [&str; 4] = ["PASS", "SECRET", "TOKEN", "KEY"];

/// The prefix of a masked value in the normalised manifest.
const MASK_PREFIX: &str = "[REDACTED] sha256:";

/// True when `name` looks like it holds a secret (see [`SECRET_NAME_PARTS`]).
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
}

/// The secret names a manifest declares: `spec.secrets.env`, then the deprecated
/// `spec.llm.secret_env`, without repeats.
pub fn declared_names(spec: &Spec) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in spec.secrets.env.iter().chain(&spec.llm.secret_env) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// True when `name` is secret: declared in `declared`, or [looks secret](looks_secret).
pub fn is_secret(name: &str, declared: &[String]) -> bool {
    looks_secret(name) || declared.iter().any(|d| d == name)
}

/// The environment of a child process: `parent` (automon's own environment) minus the variable
/// `llm_key_env` when `inherit`, else only [`KEPT_WITHOUT_INHERIT`] from it; then `declared`
/// (`template.env`), which wins. Pure: the caller passes `std::env::vars_os()`.
pub fn child_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    declared: &BTreeMap<String, String>,
    inherit: bool,
    llm_key_env: &str,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = parent
        .into_iter()
        .filter(|(k, _)| {
            if inherit {
                k.as_os_str() != llm_key_env
            } else {
                KEPT_WITHOUT_INHERIT
                    .iter()
                    .any(|kept| k.as_os_str() == *kept)
            }
        })
        .collect();
    env.extend(
        declared
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    env
}

/// [`child_env`] for a manifest's `spec`, from automon's own environment: what workers, the
/// setup command and a code fix's test command run with.
pub fn child_env_for(spec: &Spec) -> BTreeMap<OsString, OsString> {
    child_env(
        std::env::vars_os(),
        &spec.template.env,
        spec.template.inherit_env,
        &spec.llm.api_key_env,
    )
}

/// The masked form of a secret value: `[REDACTED] sha256:` + 16 hex digits of
/// SHA-256(`name` NUL `value`).
pub fn mask_value(name: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{MASK_PREFIX}{hex}")
}

/// Masks, in place, the value of every secret `template.env` entry of `ws` (already masked
/// values are kept).
pub fn mask_workerset(ws: &mut WorkerSet) {
    let declared = declared_names(&ws.spec);
    for (k, v) in &mut ws.spec.template.env {
        if is_secret(k, &declared) && !v.starts_with(MASK_PREFIX) {
            *v = mask_value(k, v);
        }
    }
}

/// The normalised manifest: `ws` with secrets masked ([`mask_workerset`]), as YAML.
pub fn normalized_yaml(ws: &WorkerSet) -> String {
    let mut ws = ws.clone();
    mask_workerset(&mut ws);
    serde_saphyr::to_string(&ws).unwrap_or_default()
}

/// A stored normalised manifest with its secrets masked, for one written before masking
/// existed: parsed, masked and written again; when it does not parse, every `NAME: value` line
/// whose name [looks secret](looks_secret) shows `[REDACTED]` instead.
pub fn remask(text: &str) -> String {
    match serde_saphyr::from_str::<WorkerSet>(text) {
        Ok(ws) => normalized_yaml(&ws),
        Err(_) => text
            .lines()
            .map(|l| match entry(l) {
                Some((key, name, value)) if looks_secret(name) && !value.contains(REDACTED) => {
                    format!("{key}{REDACTED}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect(),
    }
}

/// Splits an indented `NAME: value` line into (`"  NAME: "`, `NAME`, `value`).
fn entry(line: &str) -> Option<(&str, &str, &str)> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| Regex::new(r"^(\s+([A-Za-z_][A-Za-z0-9_]*):\s+)(\S.*)$").ok())
        .as_ref()?;
    let c = re.captures(line)?;
    Some((c.get(1)?.as_str(), c.get(2)?.as_str(), c.get(3)?.as_str()))
}

/// The hash of a masked line: (`"  NAME: "`, hash).
fn masked(line: &str) -> Option<(&str, &str)> {
    let (key, _, value) = entry(line)?;
    let hash = value
        .trim_matches(|c| c == '\'' || c == '"')
        .strip_prefix(MASK_PREFIX)?;
    Some((key, hash))
}

/// Two normalised manifests as shown in a diff: masked values read `[REDACTED]`, and
/// `[REDACTED] (changed)` in `new` where the same entry's hash differs in `old`. Raw secret
/// values in an old `old` are masked first ([`remask`]).
pub fn for_display(old: &str, new: &str) -> (String, String) {
    let old = remask(old);
    let old_hashes: BTreeMap<&str, &str> = old.lines().filter_map(masked).collect();
    let show = |text: &str, compare: bool| -> String {
        text.lines()
            .map(|l| match masked(l) {
                Some((key, hash)) => {
                    let changed = compare && old_hashes.get(key).is_some_and(|h| *h != hash);
                    if changed {
                        format!("{key}{REDACTED} (changed)\n")
                    } else {
                        format!("{key}{REDACTED}\n")
                    }
                }
                None => format!("{l}\n"),
            })
            .collect()
    };
    (show(&old, false), show(new, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(k: &str, v: &str) -> (OsString, OsString) {
        (k.into(), v.into())
    }

    #[test]
    fn secret_names_by_shape_and_by_declaration() {
        for name in [
            "DB_PASS",
            "db_password",
            "CLIENT_SECRET",
            "GH_TOKEN",
            "OPENAI_API_KEY",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["PATH", "PYTHONUNBUFFERED", "LANG", "BATCH"] {
            assert!(!looks_secret(name), "{name}");
        }
        assert!(is_secret("DSN", &["DSN".to_string()]));
        assert!(!is_secret("DSN", &[]));
    }

    #[test]
    fn workers_never_inherit_the_llm_key_unless_the_template_names_it() {
        let parent = || {
            vec![
                os("PATH", "/usr/bin"),
                os("HOME", "/home/m"),
                os("LANG", "C.UTF-8"),
                os("OPENAI_API_KEY", "sk-parent"),
                os("VIRTUAL_ENV", "/venv"),
            ]
        };
        let declared = BTreeMap::from([("DB_PASS".to_string(), "pw".to_string())]);
        let env = child_env(parent(), &declared, true, "OPENAI_API_KEY");
        assert!(!env.contains_key(&OsString::from("OPENAI_API_KEY")));
        assert_eq!(
            env.get(&OsString::from("VIRTUAL_ENV")),
            Some(&"/venv".into())
        );
        assert_eq!(env.get(&OsString::from("DB_PASS")), Some(&"pw".into()));

        let clean = child_env(parent(), &declared, false, "OPENAI_API_KEY");
        let names: Vec<_> = clean.keys().cloned().collect();
        assert_eq!(
            names,
            ["DB_PASS", "HOME", "LANG", "PATH"].map(OsString::from)
        );

        let named = BTreeMap::from([("OPENAI_API_KEY".to_string(), "sk-declared".to_string())]);
        let env = child_env(parent(), &named, true, "OPENAI_API_KEY");
        assert_eq!(
            env.get(&OsString::from("OPENAI_API_KEY")),
            Some(&"sk-declared".into())
        );
    }

    fn workerset(env: &[(&str, &str)], declared: &[&str]) -> WorkerSet {
        let mut ws = crate::manifest::parse(
            "apiVersion: automon/v1\nkind: WorkerSet\nmetadata: {name: t}\nspec:\n  template: {command: [w]}\n  progress: {file: p, checkpoint: /c}\n  logs: {file: l}\n",
        )
        .expect("parse");
        ws.spec.template.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ws.spec.secrets.env = declared.iter().map(|s| s.to_string()).collect();
        ws
    }

    #[test]
    fn the_normalised_manifest_keeps_a_hash_not_the_value() {
        let ws = workerset(
            &[
                ("DB_PASS", "hunter2-old"),
                ("DSN", "pg://x"),
                ("MODE", "fast"),
            ],
            &["DSN"],
        );
        let yaml = normalized_yaml(&ws);
        assert!(!yaml.contains("hunter2-old"), "{yaml}");
        assert!(!yaml.contains("pg://x"), "{yaml}");
        assert!(yaml.contains("fast"), "{yaml}");
        assert!(
            yaml.contains(&mask_value("DB_PASS", "hunter2-old")),
            "{yaml}"
        );
        // Masking is idempotent: a stored copy parsed again keeps its hash.
        assert_eq!(remask(&yaml), yaml);
    }

    #[test]
    fn diff_display_says_changed_without_either_value() {
        let old = normalized_yaml(&workerset(
            &[("DB_PASS", "hunter2-old"), ("API_TOKEN", "t-1")],
            &[],
        ));
        let new = normalized_yaml(&workerset(
            &[("DB_PASS", "hunter2-new"), ("API_TOKEN", "t-1")],
            &[],
        ));
        let (o, n) = for_display(&old, &new);
        assert!(o.contains("DB_PASS: [REDACTED]\n"), "{o}");
        assert!(n.contains("DB_PASS: [REDACTED] (changed)\n"), "{n}");
        assert!(n.contains("API_TOKEN: [REDACTED]\n"), "{n}");
        assert!(!n.contains("API_TOKEN: [REDACTED] (changed)"), "{n}");
        for text in [&o, &n] {
            assert!(!text.contains("sha256"), "{text}");
        }
    }

    #[test]
    fn a_raw_value_stored_by_an_older_automon_is_masked_when_shown() {
        // The copy an older automon kept in state.json, with the value in clear.
        let ws = workerset(&[("DB_PASS", "hunter2-old")], &[]);
        let raw = serde_saphyr::to_string(&ws).expect("yaml");
        assert!(raw.contains("hunter2-old"));
        let new = normalized_yaml(&workerset(&[("DB_PASS", "hunter2-new")], &[]));
        let (o, n) = for_display(&raw, &new);
        assert!(!o.contains("hunter2"), "{o}");
        assert!(n.contains("DB_PASS: [REDACTED] (changed)"), "{n}");
        // Unparsable text: line by line.
        let (o, _) = for_display("spec:\n  env:\n    DB_PASSWORD: hunter2\n  junk: [\n", "");
        assert!(!o.contains("hunter2"), "{o}");
    }
}
