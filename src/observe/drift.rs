//! How an adopted process differs from what the manifest would start: its program, working
//! directory and environment. A worker started by hand (or by an older manifest) runs on as it
//! is after adoption; its next restart applies the manifest, and the operator is told what that
//! changes before it happens (`get`, `diff`, the adoption event) and when it does (the restart
//! event). Values of secret-looking variables are never shown, only that they differ.

use std::collections::BTreeMap;
use std::path::Path;

/// Variables outside the manifest that change which interpreter and libraries a worker runs;
/// a restart gives the worker automon's own value of each. `PATH` is left out: interpreter
/// shims (pyenv, asdf) rewrite it in every process they start, so it would always differ; a
/// different interpreter shows as a different program.
const INHERITED: &[&str] = &[
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
];

/// True when a variable's name suggests a credential: its value is never shown.
pub fn secret_looking(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSW",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "URL",
        "URI",
        "DSN",
        "COOKIE",
        "SESSION",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// What the manifest would start, to compare a running process with.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The template's program (`command[0]`).
    pub program: &'a str,
    /// The workers' working directory (absolute, symlinks resolved).
    pub workdir: &'a Path,
    /// The manifest's environment.
    pub env: &'a BTreeMap<String, String>,
}

/// What was read of a running process.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// `argv[0]`.
    pub program: Option<&'a str>,
    /// Its working directory.
    pub cwd: Option<&'a Path>,
    /// Its environment.
    pub env: &'a [(String, String)],
}

/// The differences between `running` and what a restart would start (`expected`, with
/// `inherited(key)` giving automon's own value of a variable the manifest does not set), one
/// phrase each: `program /usr/bin/python3.11 (the manifest runs python3)`,
/// `env DB_URL differs (secret-looking: values not shown)`,
/// `env PYTHONPATH=/old (a restart sets /new)`. Empty when they agree. A program differs when
/// its name differs, not only its directory.
pub fn differences(
    expected: Expected<'_>,
    running: Running<'_>,
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    // The same program by another directory (`/usr/bin/python3` for `python3`) is how a PATH
    // lookup or an interpreter shim shows it; a PATH difference is reported on its own.
    if let Some(p) = running.program
        && p != expected.program
        && base(p) != base(expected.program)
    {
        out.push(format!(
            "program {p} (the manifest runs {})",
            expected.program
        ));
    }
    if let Some(cwd) = running.cwd
        && cwd != expected.workdir
    {
        out.push(format!(
            "working directory {} (the manifest's is {})",
            cwd.display(),
            expected.workdir.display()
        ));
    }
    let get = |k: &str| {
        running
            .env
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let mut compare = |key: &str, now: Option<&str>, then: Option<&str>| {
        if now == then {
            return;
        }
        if secret_looking(key) {
            out.push(format!(
                "env {key} differs (secret-looking: values not shown)"
            ));
            return;
        }
        let now = now.map_or_else(|| format!("{key} unset"), |v| format!("{key}={v}"));
        let then = then.map_or_else(|| "leaves it unset".to_string(), |v| format!("sets {v}"));
        out.push(format!("env {now} (a restart {then})"));
    };
    for (k, v) in expected.env {
        compare(k, get(k), Some(v));
    }
    for k in INHERITED {
        if !expected.env.contains_key(*k) {
            compare(k, get(k), inherited(k).as_deref());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_workers_program_env_and_cwd_differences_are_named_and_secrets_redacted() {
        let env: BTreeMap<String, String> = [
            ("DB_URL", "postgres://app:new-pass@db/shelf"),
            ("PYTHONPATH", "/srv/new"),
            ("MODE", "same"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let running_env: Vec<(String, String)> = [
            ("DB_URL", "postgres://app:old-pass@db/shelf"),
            ("PYTHONPATH", "/srv/old"),
            ("MODE", "same"),
            ("PATH", "/opt/py311/bin:/usr/bin"),
            ("VIRTUAL_ENV", "/opt/venv-old"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let found = differences(
            Expected {
                program: "python3",
                workdir: Path::new("/srv/fleet"),
                env: &env,
            },
            Running {
                program: Some("/opt/py311/bin/python3.11"),
                cwd: Some(Path::new("/srv/fleet")),
                env: &running_env,
            },
            |k| (k == "PATH").then(|| "/usr/bin".to_string()),
        );
        assert_eq!(
            found,
            [
                "program /opt/py311/bin/python3.11 (the manifest runs python3)",
                "env DB_URL differs (secret-looking: values not shown)",
                "env PYTHONPATH=/srv/old (a restart sets /srv/new)",
                "env VIRTUAL_ENV=/opt/venv-old (a restart leaves it unset)",
            ]
        );
        assert!(!found.join(" ").contains("pass"), "no secret shown");
    }

    #[test]
    fn a_process_that_matches_has_no_differences() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let running_env = vec![("A".to_string(), "1".to_string())];
        assert!(
            differences(
                Expected {
                    program: "w",
                    workdir: Path::new("/d"),
                    env: &env,
                },
                Running {
                    program: Some("w"),
                    cwd: Some(Path::new("/d")),
                    env: &running_env,
                },
                |_| None,
            )
            .is_empty()
        );
    }
}
