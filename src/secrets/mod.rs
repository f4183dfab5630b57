//! Secrets: what counts as one, and the one place where each path a secret could take is cut.
//!
//! # Layout
//!
//! - [`redact`]: the [`Redactor`] — literal secret values, the common shapes (`password=`,
//!   `token=`, `Bearer …`, URL passwords, `sk-…`, AWS key ids, PEM private keys, JWTs) and the
//!   manifest's extra patterns, replaced by [`REDACTED`].
//! - [`env`]: the environment a child process gets (never the LLM key unless the template
//!   names it), which variable names are secret, and how secret `template.env` values are
//!   masked in the manifest text automon stores and prints.
//!
//! # Where secrets are cut
//!
//! - Worker logs: every record is redacted as it becomes an observation
//!   ([`crate::observe::Observer`]), with [`redactor_for`], whether or not the LLM is enabled;
//!   memory, events, `get`, `diff`, the history and prompts only ever see redacted text.
//! - The LLM: the prompt and every answer go through the same redactor
//!   ([`crate::act::llm::LlmClient::from_desired`]).
//! - The manifest: `state.json`'s copy and `diff` show secret `template.env` values as
//!   `[REDACTED]` ([`env::normalized_yaml`]).
//! - Workers: started with [`env::child_env`].

pub mod env;
pub mod redact;

use std::path::Path;

pub use redact::{REDACTED, Redactor, redact_shapes};

use crate::manifest::{Desired, Llm, Manifest};

/// The redactor for a resolved manifest: the values of its declared secret names
/// ([`Desired::secret_env`]), from `template.env` and from automon's environment; the values of
/// `template.env` entries and of automon's own variables whose names
/// [look secret](env::looks_secret) (at least [`MIN_IMPLICIT_SECRET_LEN`] bytes); the LLM API
/// key ([`llm_key`]); and `spec.secrets.patterns`.
pub fn redactor_for(desired: &Desired) -> Redactor {
    build(
        &desired.secret_env,
        &desired.env,
        &desired.llm,
        &desired.manifest_dir,
        &desired.secret_patterns,
    )
}

/// [`redactor_for`] a manifest not resolved yet (the setup command runs before).
pub fn redactor_for_manifest(manifest: &Manifest) -> Redactor {
    let spec = &manifest.workerset.spec;
    build(
        &env::declared_names(spec),
        &spec.template.env,
        &spec.llm,
        &manifest.dir,
        &spec.secrets.patterns,
    )
}

/// Values of variables that are secret only by their names (`TOKENIZERS_PARALLELISM=false`)
/// shorter than this many bytes are not redacted: removing every `false` from the logs would
/// protect nothing. Declared names and the LLM key use [`redact::MIN_SECRET_LEN`].
pub const MIN_IMPLICIT_SECRET_LEN: usize = 8;

fn build(
    declared: &[String],
    template_env: &std::collections::BTreeMap<String, String>,
    llm: &Llm,
    manifest_dir: &Path,
    patterns: &[String],
) -> Redactor {
    let mut r = Redactor::from_env_names(declared, template_env);
    let implicit = template_env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(std::env::vars())
        .filter(|(k, v)| {
            env::looks_secret(k)
                && !declared.contains(k)
                && v.trim().len() >= MIN_IMPLICIT_SECRET_LEN
        })
        .map(|(_, v)| v);
    r.add(implicit);
    r.add(llm_key(llm, manifest_dir));
    r.add_patterns(patterns);
    r
}

/// The LLM API key as automon would send it: the variable `llm.api_key_env` in automon's
/// environment, else that key in a `.env` file in `manifest_dir`; `None` when neither is set.
pub fn llm_key(llm: &Llm, manifest_dir: &Path) -> Option<String> {
    let nonempty = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    nonempty(std::env::var(&llm.api_key_env).ok()).or_else(|| {
        nonempty(crate::act::llm::client::dotenv_value(
            &manifest_dir.join(".env"),
            &llm.api_key_env,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_of_names_that_only_look_secret_are_kept() {
        let env = std::collections::BTreeMap::from([
            ("TOKENIZERS_PARALLELISM".to_string(), "false".to_string()),
            ("DB_PASS".to_string(), "hunter2-long".to_string()),
            ("DSN".to_string(), "pg-x".to_string()),
        ]);
        let r = build(
            &["DSN".to_string()],
            &env,
            &Llm::default(),
            Path::new("/nonexistent"),
            &[],
        );
        assert_eq!(
            r.redact("completed false, pass hunter2-long, dsn pg-x"),
            "completed false, pass [REDACTED], dsn [REDACTED]"
        );
    }
}
