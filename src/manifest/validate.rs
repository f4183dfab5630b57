//! Semantic rules of a WorkerSet, all checked in one pass so the user sees every problem at once.

use std::path::{Component, Path};

use regex::Regex;

use super::desired::normalize;
use super::locate::locate;
use super::types::{API_VERSION, KIND, WorkerSet};
use super::{HumanDuration, Problem};

/// Placeholders every template understands, besides the parameter names.
pub const BUILTIN_PLACEHOLDERS: [&str; 4] = ["id", "range_start", "range_end", "checkpoint"];

/// Signals a manifest may name as `stop_signal`.
pub const STOP_SIGNALS: [&str; 5] = ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1"];

struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: locate(self.text, field),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn positive(&mut self, field: &str, d: HumanDuration) {
        if d.get().is_zero() {
            self.fail(
                field,
                "duration is zero (expected a positive span such as \"30s\")",
            );
        }
    }

    fn regexes(&mut self, field: &str, patterns: &[String]) {
        for (i, p) in patterns.iter().enumerate() {
            if let Err(e) = Regex::new(p) {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string();
                self.fail(
                    &format!("{field}.{i}"),
                    format!("invalid regex {p:?}: {first}"),
                );
            }
        }
    }

    fn pointer(&mut self, field: &str, pointer: &str) {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            self.fail(field, format!("invalid JSON pointer {pointer:?} (expected RFC 6901, e.g. \"/last_processed_book_id\")"));
        } else if has_bad_escape(pointer) {
            self.fail(
                field,
                format!(
                    "invalid JSON pointer {pointer:?}: '~' must be followed by 0 or 1 (expected \
                     ~0 for '~' and ~1 for '/')"
                ),
            );
        }
    }
}

fn has_bad_escape(pointer: &str) -> bool {
    let b = pointer.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')))
}

/// Returns the `{name}` placeholders in `text`, in order.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

/// True for a name a shell would accept as an environment variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// True when `file`, taken relative to the directory `workdir` (absolute), stays inside it after
/// lexical normalisation (`..` resolved without touching the file system; symlinks are not
/// followed). An absolute `file` must lie under `workdir`. `workdir` itself is not inside.
pub fn stays_inside(workdir: &Path, file: &str) -> bool {
    let root = normalize(workdir);
    let target = normalize(&root.join(file));
    if Path::new(file).is_relative() {
        // Walk the components: a `..` that would climb above `workdir` escapes even if a later
        // component climbs back in.
        let mut depth = 0usize;
        for c in Path::new(file).components() {
            match c {
                Component::ParentDir if depth == 0 => return false,
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
        }
    }
    target.starts_with(&root) && target != root
}

/// Checks that `format` is a strftime format jiff can render (the format logs are read with).
fn strftime_problem(format: &str) -> Option<String> {
    if !format.contains('%') {
        return Some(format!(
            "timestamp format {format:?} has no conversion (expected e.g. \"%Y-%m-%d %H:%M:%S,%f\")"
        ));
    }
    let sample = jiff::Timestamp::UNIX_EPOCH.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    jiff::fmt::strtime::format(format, &sample)
        .err()
        .map(|e| format!("invalid timestamp format {format:?}: {e} (expected a strftime format such as \"%Y-%m-%d %H:%M:%S,%f\")"))
}

/// A warning (not an error: the machine that runs the WorkerSet may differ) when the
/// template's program cannot be found: a bare name not on `path` (the `PATH` value), or a path
/// (relative to `workdir`) that does not exist or is not executable. Every start of such a
/// worker would fail. `None` when the program is found or holds a placeholder.
pub fn program_warning(
    command: &[String],
    workdir: &Path,
    path: Option<&std::ffi::OsStr>,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let program = command.first()?;
    if program.contains('{') {
        return None;
    }
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let full = workdir.join(program);
        return (!executable(&full)).then(|| {
            let why = if full.exists() {
                "is not an executable file"
            } else {
                "does not exist"
            };
            format!(
                "spec.template.command[0]: {} {why} (every start of a worker would fail)",
                full.display()
            )
        });
    }
    let found =
        path.is_some_and(|p| std::env::split_paths(p).any(|d| executable(&d.join(program))));
    (!found).then(|| {
        format!("spec.template.command[0]: program {program:?} not found on PATH (every start of a worker would fail)")
    })
}

/// Checks every rule; returns the problems found (empty when the manifest is valid).
///
/// `text` is the manifest as written (for locations); `dir` is the manifest's directory,
/// absolute, against which `template.workdir` is resolved.
pub fn validate(ws: &WorkerSet, text: &str, dir: &Path) -> Vec<Problem> {
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    if ws.api_version != API_VERSION {
        c.fail(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?} (expected {API_VERSION:?})",
                ws.api_version
            ),
        );
    }
    if ws.kind != KIND {
        c.fail(
            "kind",
            format!("unsupported kind {:?} (expected {KIND:?})", ws.kind),
        );
    }
    let name = &ws.metadata.name;
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        c.fail(
            "metadata.name",
            format!("invalid name {name:?} (expected 1-63 letters, digits, '-', '_' or '.')"),
        );
    }
    let s = &ws.spec;
    c.positive("spec.interval", s.interval);
    let w = s.workers;
    if w.max == 0 {
        c.fail("spec.workers.max", "max is 0 (expected at least 1)");
    }
    if w.min > w.target || w.target > w.max {
        c.fail(
            "spec.workers",
            format!(
                "min {} ≤ target {} ≤ max {} does not hold (expected min ≤ target ≤ max)",
                w.min, w.target, w.max
            ),
        );
    }
    if let Some(work) = &s.work {
        if work.shards == 0 {
            c.fail("spec.work.shards", "shards is 0 (expected at least 1)");
        }
        match (&work.range.end, &work.range.end_command) {
            (Some(_), Some(_)) => c.fail(
                "spec.work.range",
                "both end and end_command given (expected one)",
            ),
            (None, None) => c.fail(
                "spec.work.range",
                "neither end nor end_command given (expected one)",
            ),
            (Some(end), None) if *end <= work.range.start => c.fail(
                "spec.work.range.end",
                format!(
                    "end {end} ≤ start {} (expected start < end)",
                    work.range.start
                ),
            ),
            (Some(end), None) if end - work.range.start < u64::from(work.shards) => c.fail(
                "spec.work.shards",
                format!(
                    "{} shards for a range of {} (expected at most one shard per key)",
                    work.shards,
                    crate::text::counted(end - work.range.start, "key", "keys")
                ),
            ),
            (None, Some(cmd)) if cmd.is_empty() || cmd[0].is_empty() => c.fail(
                "spec.work.range.end_command",
                "empty command (expected an argv list)",
            ),
            _ => {}
        }
        if work.unit.trim().is_empty() {
            c.fail(
                "spec.work.unit",
                "empty unit (expected a noun such as \"book\")",
            );
        }
    }
    if let Some(setup) = &s.setup
        && (setup.command.is_empty() || setup.command[0].is_empty())
    {
        c.fail(
            "spec.setup.command",
            "empty command (expected an argv list)",
        );
    }
    let t = &s.template;
    if t.command.is_empty() || t.command[0].is_empty() {
        c.fail(
            "spec.template.command",
            "empty command (expected an argv list such as [python3, worker.py, --id, \"{id}\"])",
        );
    }
    for (i, arg) in t.command.iter().enumerate() {
        for ph in placeholders(arg) {
            if !BUILTIN_PLACEHOLDERS.contains(&ph) && !t.parameters.contains_key(ph) {
                let mut known: Vec<&str> = BUILTIN_PLACEHOLDERS.to_vec();
                known.extend(t.parameters.keys().map(String::as_str));
                let hint = super::suggest::closest(ph, &known)
                    .map(|k| format!(" — did you mean {{{k}}}?"))
                    .unwrap_or_default();
                c.fail(
                    &format!("spec.template.command.{i}"),
                    format!(
                        "unknown placeholder {{{ph}}}{hint} (expected one of {})",
                        known
                            .iter()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }
    if t.workdir.is_empty() {
        c.fail(
            "spec.template.workdir",
            "empty workdir (expected a directory, e.g. \".\")",
        );
    } else if dir.is_dir() && !normalize(&dir.join(&t.workdir)).is_dir() {
        // (`dir` is the manifest's own directory; it is not there only for a manifest that
        // was never a file, as in the planner's tests.)
        c.fail(
            "spec.template.workdir",
            format!(
                "{} is not a directory (it is resolved against the manifest's directory)",
                normalize(&dir.join(&t.workdir)).display()
            ),
        );
    }
    for (name, p) in &t.parameters {
        let field = format!("spec.template.parameters.{name}");
        if p.min > p.max {
            c.fail(
                &field,
                format!("min {} > max {} (expected min ≤ max)", p.min, p.max),
            );
        } else if p.default < p.min || p.default > p.max {
            c.fail(
                &field,
                format!(
                    "default {} outside [{}, {}] (expected min ≤ default ≤ max)",
                    p.default, p.min, p.max
                ),
            );
        }
        if BUILTIN_PLACEHOLDERS.contains(&name.as_str()) {
            c.fail(
                &field,
                format!(
                    "parameter name {name:?} is a built-in placeholder (expected another name)"
                ),
            );
        }
    }
    if !STOP_SIGNALS.contains(&t.stop_signal.as_str()) {
        c.fail(
            "spec.template.stop_signal",
            format!(
                "unknown signal {:?} (expected one of {})",
                t.stop_signal,
                STOP_SIGNALS.join(", ")
            ),
        );
    }
    c.positive("spec.template.stop_grace", t.stop_grace);
    for name in t.env.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            c.fail(
                &format!("spec.template.env.{name}"),
                format!("invalid variable name {name:?} (expected a name without '=')"),
            );
        }
    }
    let several = s
        .work
        .as_ref()
        .map_or(w.max > 1, |work| work.shards > 1 || w.max > 1);
    for (field, pattern) in [
        ("spec.progress.file", &s.progress.file),
        ("spec.logs.file", &s.logs.file),
    ] {
        if pattern.trim().is_empty() {
            c.fail(field, "empty path (expected a file name pattern with {id})");
        } else if several && !pattern.contains("{id}") {
            c.fail(field, format!("{pattern:?} has no {{id}} (expected one file per worker, e.g. \"worker{{id}}.json\")"));
        }
        for ph in placeholders(pattern) {
            if ph != "id" {
                let hint = super::suggest::closest(ph, &["id"])
                    .map(|_| " — did you mean {id}?")
                    .unwrap_or_default();
                c.fail(
                    field,
                    format!("unknown placeholder {{{ph}}}{hint} (expected only {{id}})"),
                );
            }
        }
    }
    c.pointer("spec.progress.checkpoint", &s.progress.checkpoint);
    if let Some(items) = &s.progress.items {
        c.pointer("spec.progress.items", items);
    }
    if let Some(completion) = &s.progress.completion {
        c.pointer("spec.progress.completion", completion);
    }
    c.regexes("spec.logs.upload_patterns", &s.logs.upload_patterns);
    c.regexes("spec.logs.activity_patterns", &s.logs.activity_patterns);
    c.regexes("spec.logs.error_patterns", &s.logs.error_patterns);
    c.regexes("spec.logs.completion_patterns", &s.logs.completion_patterns);
    if let Some(problem) = strftime_problem(&s.logs.timestamp_format) {
        c.fail("spec.logs.timestamp_format", problem);
    }
    if s.logs.tail_bytes < 1024 || s.logs.tail_bytes > 16 * 1024 * 1024 {
        c.fail(
            "spec.logs.tail_bytes",
            format!("{} bytes (expected 1024 to 16777216)", s.logs.tail_bytes),
        );
    }
    c.positive("spec.health.stuck_after", s.health.stuck_after);
    c.positive("spec.health.discovery_grace", s.health.discovery_grace);
    if s.health.discovery_grace < s.health.stuck_after {
        c.fail(
            "spec.health.discovery_grace",
            format!(
                "discovery_grace {} < stuck_after {} (expected discovery_grace ≥ stuck_after)",
                s.health.discovery_grace, s.health.stuck_after
            ),
        );
    }
    c.positive("spec.restart.backoff_initial", s.restart.backoff_initial);
    c.positive("spec.restart.backoff_max", s.restart.backoff_max);
    c.positive(
        "spec.restart.backoff_reset_after",
        s.restart.backoff_reset_after,
    );
    if s.restart.backoff_max < s.restart.backoff_initial {
        c.fail(
            "spec.restart.backoff_max",
            "backoff_max < backoff_initial (expected backoff_initial ≤ backoff_max)",
        );
    }
    scaling(&mut c, ws);
    fixes(&mut c, ws, dir);
    llm(&mut c, ws);
    secrets(&mut c, ws);
    runtime(&mut c, ws);
    c.problems
}

/// `sbatch` options automon sets itself for every worker's job: `extra_args` may not set them.
pub const SBATCH_OWN_OPTIONS: [&str; 12] = [
    "--job-name",
    "-J",
    "--comment",
    "--output",
    "-o",
    "--error",
    "-e",
    "--chdir",
    "-D",
    "--export",
    "--open-mode",
    "--array",
];

fn runtime(c: &mut Checker<'_>, ws: &WorkerSet) {
    use super::types::RuntimeKind;
    let r = &ws.spec.runtime;
    if r.kind == RuntimeKind::Local {
        for (field, given) in [
            ("partition", r.partition.is_some()),
            ("account", r.account.is_some()),
            ("time_limit", r.time_limit.is_some()),
            ("cpus_per_worker", r.cpus_per_worker.is_some()),
            ("mem_per_worker", r.mem_per_worker.is_some()),
            ("extra_args", !r.extra_args.is_empty()),
        ] {
            if given {
                c.fail(
                    &format!("spec.runtime.{field}"),
                    "applies only to `kind: slurm` (this runtime is `kind: local`)",
                );
            }
        }
        return;
    }
    if ws.spec.adoption.match_command {
        c.fail(
            "spec.adoption.match_command",
            "does not apply to `runtime: slurm` (automon adopts only the Slurm jobs it submitted, found by job name)",
        );
    }
    for (field, value) in [("partition", &r.partition), ("account", &r.account)] {
        if let Some(v) = value
            && (v.is_empty() || v.chars().any(|ch| ch.is_whitespace() || ch == ','))
        {
            c.fail(
                &format!("spec.runtime.{field}"),
                format!("{v:?} is not a Slurm {field} name (expected one word)"),
            );
        }
    }
    if let Some(t) = r.time_limit {
        c.positive("spec.runtime.time_limit", t);
    }
    if r.cpus_per_worker == Some(0) {
        c.fail(
            "spec.runtime.cpus_per_worker",
            "0 CPUs (expected a whole number ≥ 1)",
        );
    }
    if let Some(m) = &r.mem_per_worker {
        let digits = m.trim_end_matches(['K', 'M', 'G', 'T']);
        let ok = !digits.is_empty()
            && digits.chars().all(|ch| ch.is_ascii_digit())
            && m.len() - digits.len() <= 1;
        if !ok {
            c.fail(
                "spec.runtime.mem_per_worker",
                format!("{m:?} is not a memory size (expected a whole number with an optional unit K, M, G or T, e.g. \"2G\")"),
            );
        }
    }
    for (i, arg) in r.extra_args.iter().enumerate() {
        let name = arg.split('=').next().unwrap_or(arg);
        let own = SBATCH_OWN_OPTIONS.iter().any(|o| {
            name == *o || (o.len() == 2 && name.starts_with(o) && !name.starts_with("--"))
        });
        if own {
            c.fail(
                &format!("spec.runtime.extra_args.{i}"),
                format!("{arg:?} sets an option automon sets itself for every job (job name, comment, log, working directory, environment)"),
            );
        } else if !arg.starts_with('-') {
            c.fail(
                &format!("spec.runtime.extra_args.{i}"),
                format!("{arg:?} is not an sbatch option (expected one option per item, e.g. \"--qos=long\")"),
            );
        }
    }
}

fn secrets(c: &mut Checker<'_>, ws: &WorkerSet) {
    let s = &ws.spec.secrets;
    for (i, name) in s.env.iter().enumerate() {
        if !is_env_name(name) {
            c.fail(
                &format!("spec.secrets.env.{i}"),
                "not an environment variable name (expected names such as DB_PASSWORD)",
            );
        }
    }
    c.regexes("spec.secrets.patterns", &s.patterns);
    for (i, p) in s.patterns.iter().enumerate() {
        // A pattern that matches nothing at all would put [REDACTED] between every character.
        if Regex::new(p).is_ok_and(|re| re.is_match("")) {
            c.fail(
                &format!("spec.secrets.patterns.{i}"),
                "the regex matches the empty string (expected a pattern that needs at least \
                 one character, e.g. \"CANARY-[0-9]+\")",
            );
        }
    }
}

fn scaling(c: &mut Checker<'_>, ws: &WorkerSet) {
    let sc = &ws.spec.scaling;
    if sc.disk.path.trim().is_empty() {
        c.fail(
            "spec.scaling.disk.path",
            "empty path (expected a path on the disk to watch, e.g. \".\")",
        );
    }
    let (normal, saturated) = (sc.disk.normal_percent, sc.disk.saturated_percent);
    if !(0.0..=100.0).contains(&normal) {
        c.fail(
            "spec.scaling.disk.normal_percent",
            format!("{normal} is not a percentage (expected 0 to 100)"),
        );
    }
    if !(0.0..=100.0).contains(&saturated) {
        c.fail(
            "spec.scaling.disk.saturated_percent",
            format!("{saturated} is not a percentage (expected 0 to 100)"),
        );
    }
    if normal >= saturated {
        c.fail(
            "spec.scaling.disk",
            format!(
                "normal_percent {normal} ≥ saturated_percent {saturated} (expected 0 ≤ \
                 normal_percent < saturated_percent ≤ 100)"
            ),
        );
    }
    c.positive("spec.scaling.scale_down_cooldown", sc.scale_down_cooldown);
    c.positive("spec.scaling.scale_up_cooldown", sc.scale_up_cooldown);
}

fn fixes(c: &mut Checker<'_>, ws: &WorkerSet, dir: &Path) {
    let f = &ws.spec.fixes;
    c.positive("spec.fixes.cooldown", f.cooldown);
    c.positive("spec.fixes.verify_after", f.verify_after);
    if f.max_attempts == 0 {
        c.fail(
            "spec.fixes.max_attempts",
            "max_attempts is 0 (expected at least 1)",
        );
    }
    let code = &f.code;
    if code.enabled && code.files.is_empty() {
        c.fail(
            "spec.fixes.code",
            "code fixes enabled with no files (expected files: the source files a fix may edit)",
        );
    }
    let workdir = dir.join(&ws.spec.template.workdir);
    for (i, file) in code.files.iter().enumerate() {
        let field = format!("spec.fixes.code.files.{i}");
        if file.trim().is_empty() {
            c.fail(
                &field,
                "empty path (expected a file inside the working directory)",
            );
        } else if !stays_inside(&workdir, file) {
            c.fail(
                &field,
                format!(
                    "{file:?} is outside the working directory (expected a file inside \
                     template.workdir, without `..` escaping it)"
                ),
            );
        }
    }
    if code.interpreter.trim().is_empty() {
        c.fail(
            "spec.fixes.code.interpreter",
            "empty interpreter (expected e.g. \"python3\")",
        );
    }
    if let Some(cmd) = &code.test_command
        && (cmd.is_empty() || cmd[0].is_empty())
    {
        c.fail(
            "spec.fixes.code.test_command",
            "empty command (expected an argv list)",
        );
    }
    if code.max_changed_lines == 0 {
        c.fail(
            "spec.fixes.code.max_changed_lines",
            "max_changed_lines is 0 (expected at least 1)",
        );
    }
}

fn llm(c: &mut Checker<'_>, ws: &WorkerSet) {
    let l = &ws.spec.llm;
    if l.model.trim().is_empty() {
        c.fail(
            "spec.llm.model",
            "empty model (expected e.g. \"gpt-4o-mini\")",
        );
    }
    // Neither value is echoed: a user who pasted the key itself here must not see it printed.
    if !is_env_name(&l.api_key_env) {
        c.fail(
            "spec.llm.api_key_env",
            "not an environment variable name (expected the NAME of the variable that holds the \
             key, e.g. OPENAI_API_KEY, never the key itself)",
        );
    }
    if let Some(url) = &l.base_url
        && !is_http_url(url)
    {
        c.fail(
            "spec.llm.base_url",
            "not an http(s) URL (expected e.g. \"https://api.openai.com/v1\")",
        );
    }
    c.positive("spec.llm.timeout", l.timeout);
    if l.max_log_bytes == 0 {
        c.fail(
            "spec.llm.max_log_bytes",
            "max_log_bytes is 0 (expected at least 1)",
        );
    }
    if !(0.0..=1.0).contains(&l.min_confidence) {
        c.fail(
            "spec.llm.min_confidence",
            format!("{} is outside 0–1", l.min_confidence),
        );
    }
    if l.max_output_tokens == 0 {
        c.fail(
            "spec.llm.max_output_tokens",
            "max_output_tokens is 0 (expected at least 1, e.g. 1024)",
        );
    }
    if l.context_tokens.is_some_and(|n| n < 1024) {
        c.fail(
            "spec.llm.context_tokens",
            "fewer than 1024 tokens cannot hold the instructions and the answer's schema",
        );
    }
    if l.max_response_bytes < 1024 {
        c.fail(
            "spec.llm.max_response_bytes",
            "fewer than 1024 bytes cannot hold an answer",
        );
    }
    for (i, name) in l.secret_env.iter().enumerate() {
        if !is_env_name(name) {
            c.fail(
                &format!("spec.llm.secret_env.{i}"),
                "not an environment variable name (expected names such as DB_PASSWORD)",
            );
        }
    }
}

/// `http://HOST…` or `https://HOST…` with a non-empty host and no whitespace.
fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.starts_with(':') && !url.chars().any(char::is_whitespace)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_fix_files_must_stay_inside_the_working_directory() {
        let wd = Path::new("/project/run");
        assert!(stays_inside(wd, "worker.py"));
        assert!(stays_inside(wd, "./src/../worker.py"));
        assert!(stays_inside(wd, "/project/run/src/worker.py"));
        assert!(!stays_inside(wd, "../worker.py"));
        assert!(!stays_inside(wd, "src/../../worker.py"));
        assert!(
            !stays_inside(wd, "../run/worker.py"),
            "leaving and coming back is an escape"
        );
        assert!(!stays_inside(wd, "/etc/passwd"));
        assert!(!stays_inside(wd, "/project/runner.py"));
        assert!(
            !stays_inside(wd, "."),
            "the directory itself is not a file in it"
        );
        assert!(stays_inside(Path::new("/project/run/.."), "src/w.py"));
    }

    #[test]
    fn env_names_and_urls() {
        assert!(is_env_name("OPENAI_API_KEY"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("sk-abc"));
        assert!(!is_env_name(""));
        assert!(is_http_url("https://api.openai.com/v1"));
        assert!(is_http_url("http://localhost:11434/v1"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https://a b"));
        assert!(!is_http_url("api.openai.com"));
    }

    #[test]
    fn timestamp_formats_are_checked_by_rendering() {
        assert_eq!(strftime_problem("%Y-%m-%d %H:%M:%S,%f"), None);
        assert!(strftime_problem("%Y %K").is_some());
        assert!(strftime_problem("no conversions").is_some());
    }

    #[test]
    fn finds_placeholders_in_order() {
        assert_eq!(
            placeholders("--id={id}-{range_start}"),
            vec!["id", "range_start"]
        );
        assert!(placeholders("plain").is_empty());
        assert!(placeholders("{unclosed").is_empty());
    }
}
