//! The structured answer: [`Diagnosis`], its strict JSON Schema for the `json_schema` response
//! format, and the parser that turns a model's text into a validated `Diagnosis`.
//!
//! The model's text is never trusted: it is read as loose JSON (plain, or inside a ```` ```json ````
//! fence with prose around it), then every field is re-validated against the manifest's
//! [`FixPolicy`] — fix types, parameter bounds, the code allow-list — whatever the prompt or the
//! log said. Every value changed or dropped leaves a note saying why.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::types::Parameter;

/// The root cause a model gives when it cannot tell.
pub const UNKNOWN_ROOT_CAUSE: &str = "Unknown";

/// What the model thinks is wrong with a worker and the one fix it proposes.
///
/// A `root_cause` of `"Unknown"` ([`UNKNOWN_ROOT_CAUSE`]) is kept as the model wrote it; its
/// default action is a restart from the checkpoint, and it never blocks automon's own rules
/// (a saturated disk with a stuck worker still scales down).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Diagnosis {
    /// One or two sentences naming the cause, or "Unknown".
    pub root_cause: String,
    /// The kind of fix proposed.
    pub fix_type: FixType,
    /// The fix, in words a person can check.
    pub fix_description: String,
    /// How sure the model is, from 0 (guess) to 1 (certain).
    pub confidence: f64,
    /// For code_fix: the edit, as `old_string:`/`new_string:` blocks or a unified diff naming the
    /// file; null otherwise.
    pub code_changes: Option<String>,
    /// For config_fix: new parameter values (null for unchanged ones); null otherwise.
    pub config_changes: Option<ConfigChanges>,
}

impl Diagnosis {
    /// True when the model said it does not know the cause.
    pub fn is_unknown(&self) -> bool {
        self.root_cause
            .trim()
            .eq_ignore_ascii_case(UNKNOWN_ROOT_CAUSE)
    }
}

/// The kinds of fix automon can carry out (serialised in snake_case).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FixType {
    /// Stop the worker and start it again from its checkpoint.
    Restart,
    /// Edit an allow-listed source file, then restart.
    CodeFix,
    /// Change template parameters within their bounds, then restart.
    ConfigFix,
    /// Stop one worker to relieve a saturated disk.
    ScaleDown,
}

impl FixType {
    /// Every fix type, in the order prompts list them.
    pub const ALL: [FixType; 4] = [
        FixType::Restart,
        FixType::CodeFix,
        FixType::ConfigFix,
        FixType::ScaleDown,
    ];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::CodeFix => "code_fix",
            Self::ConfigFix => "config_fix",
            Self::ScaleDown => "scale_down",
        }
    }

    /// Reads a fix type; exact snake_case names first, then spellings that map to exactly one
    /// type ("Scale Down", "config-fix", "CodeFix"). `None` when no or several types match.
    pub fn parse_loose(text: &str) -> Option<FixType> {
        let norm: String = text
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut found = Self::ALL
            .into_iter()
            .filter(|t| t.as_str().replace('_', "") == norm);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

impl std::fmt::Display for FixType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// New values for the manifest's template parameters, by name (any parameter the template
/// declares; the request's schema lists them with their bounds, see [`strict_schema_for`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ConfigChanges(pub BTreeMap<String, i64>);

impl ConfigChanges {
    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values that are set, by parameter name.
    pub fn values(&self) -> BTreeMap<String, i64> {
        self.0.clone()
    }
}

/// The order of the answer's keys in the schema: the reasoning order, so that a
/// grammar-constrained model states the root cause before it commits to a fix (constrained
/// decoders emit keys in the schema's order).
pub const KEY_ORDER: [&str; 6] = [
    "root_cause",
    "fix_type",
    "confidence",
    "fix_description",
    "code_changes",
    "config_changes",
];

/// What the manifest allows an answer to propose; every answer is checked against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixPolicy {
    /// Fix types the manifest allows (restart and scale_down always; config_fix when config
    /// fixes are enabled and the template has parameters; code_fix when code fixes are enabled
    /// and files are allow-listed).
    pub fix_types: Vec<FixType>,
    /// Template parameters and their bounds (`spec.template.parameters`).
    pub parameters: BTreeMap<String, Parameter>,
    /// Files a code fix may change, relative to the working directory as written in the
    /// manifest (`spec.fixes.code.files`).
    pub code_files: Vec<String>,
}

impl FixPolicy {
    /// The policy of a resolved manifest.
    pub fn from_desired(desired: &crate::manifest::Desired) -> Self {
        let mut fix_types = vec![FixType::Restart];
        let code = &desired.fixes.code;
        if code.enabled && !code.files.is_empty() {
            fix_types.push(FixType::CodeFix);
        }
        if desired.fixes.config.enabled && !desired.parameters.is_empty() {
            fix_types.push(FixType::ConfigFix);
        }
        fix_types.push(FixType::ScaleDown);
        Self {
            fix_types,
            parameters: desired.parameters.clone(),
            code_files: code.files.clone(),
        }
    }
}

/// [`strict_schema`] for one manifest: `config_changes` lists the manifest's own parameters
/// (integers within their bounds, or null), or is null alone when config fixes are not allowed;
/// `required` holds the keys in [`KEY_ORDER`] (serialize with [`InSchemaOrder`] to send the
/// properties in that order).
pub fn strict_schema_for(policy: &FixPolicy) -> Value {
    let mut schema = strict_schema();
    let config = if policy.fix_types.contains(&FixType::ConfigFix) && !policy.parameters.is_empty()
    {
        let props: serde_json::Map<String, Value> = policy
            .parameters
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    serde_json::json!({"type": ["integer", "null"], "minimum": p.min, "maximum": p.max}),
                )
            })
            .collect();
        let names: Vec<Value> = policy
            .parameters
            .keys()
            .cloned()
            .map(Value::String)
            .collect();
        serde_json::json!({"anyOf": [
            {"type": "object", "properties": props, "required": names, "additionalProperties": false},
            {"type": "null"},
        ]})
    } else {
        serde_json::json!({"type": "null"})
    };
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("config_changes".into(), config);
    }
    if let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) {
        defs.remove("ConfigChanges");
    }
    if let Some(map) = schema.as_object_mut() {
        map.insert(
            "required".into(),
            Value::Array(
                KEY_ORDER
                    .iter()
                    .map(|k| Value::String((*k).into()))
                    .collect(),
            ),
        );
    }
    schema
}

/// Serializes a JSON value with every `properties` object in the order of its sibling
/// `required` list (serde_json's maps are sorted, which would put `code_changes` first).
pub struct InSchemaOrder<'a>(pub &'a Value);

impl Serialize for InSchemaOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Object(map) => {
                let order: Vec<&str> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    match v {
                        Value::Object(props) if k == "properties" && !order.is_empty() => {
                            m.serialize_entry(k, &Ordered(props, &order))?;
                        }
                        _ => m.serialize_entry(k, &InSchemaOrder(v))?,
                    }
                }
                m.end()
            }
            Value::Array(items) => s.collect_seq(items.iter().map(InSchemaOrder)),
            other => other.serialize(s),
        }
    }
}

/// A map serialized with the keys of `.1` first, in that order, then the rest.
struct Ordered<'a>(&'a serde_json::Map<String, Value>, &'a [&'a str]);

impl Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for k in self.1 {
            if let Some(v) = self.0.get(*k) {
                m.serialize_entry(k, &InSchemaOrder(v))?;
            }
        }
        for (k, v) in self.0.iter().filter(|(k, _)| !self.1.contains(&k.as_str())) {
            m.serialize_entry(k, &InSchemaOrder(v))?;
        }
        m.end()
    }
}

/// The strict JSON Schema of [`Diagnosis`] for OpenAI's `json_schema` response format: every
/// object has `additionalProperties: false` and lists every property as required (optional
/// values are nullable through `type` arrays or `anyOf` with `null`), enums are plain string
/// `enum`s, and keywords strict mode rejects (`format`, `$schema`) are removed.
pub fn strict_schema() -> Value {
    let mut schema = schemars::schema_for!(Diagnosis).to_value();
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
    }
    make_strict(&mut schema);
    schema
}

fn make_strict(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("format");
            // oneOf of documented string constants → one string enum.
            if let Some(Value::Array(options)) = map.get("oneOf") {
                let consts: Option<Vec<Value>> =
                    options.iter().map(|o| o.get("const").cloned()).collect();
                if let Some(consts) = consts {
                    map.remove("oneOf");
                    map.insert("type".into(), Value::String("string".into()));
                    map.insert("enum".into(), Value::Array(consts));
                } else if let Some(one_of) = map.remove("oneOf") {
                    map.insert("anyOf".into(), one_of);
                }
            }
            if let Some(Value::Object(props)) = map.get("properties") {
                let keys: Vec<Value> = props.keys().cloned().map(Value::String).collect();
                map.insert("required".into(), Value::Array(keys));
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for child in map.values_mut() {
                make_strict(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_strict),
        _ => {}
    }
}

/// Why an answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The text holds no JSON object.
    #[error("the answer holds no JSON object (starts: {start:?})")]
    NoJson {
        /// The first characters of the answer (redacted by the caller).
        start: String,
    },
    /// A field is missing or has a type that cannot be repaired.
    #[error("the answer's {field} is unusable: {why}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Finds the JSON object in a model's text: the whole text if it is an object, else the first
/// ```` ``` ```` / ```` ```json ```` fence holding an object, else the first balanced `{…}` that
/// parses as an object with a `root_cause` key. An empty `{}` elsewhere in the prose is ignored.
///
/// # Errors
/// [`AnswerError::NoJson`] when nothing qualifies.
pub fn extract_json(text: &str) -> Result<serde_json::Map<String, Value>, AnswerError> {
    let trimmed = text.trim();
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) {
        return Ok(map);
    }
    let mut candidates: Vec<serde_json::Map<String, Value>> = Vec::new();
    // Fenced blocks: text between pairs of ``` markers, minus an info string such as `json`.
    let parts: Vec<&str> = trimmed.split("```").collect();
    for block in parts.iter().skip(1).step_by(2) {
        let body = block.trim_start();
        let body = body
            .strip_prefix("json")
            .or_else(|| body.strip_prefix("JSON"))
            .unwrap_or(body);
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body.trim()) {
            candidates.push(map);
        }
    }
    // Balanced objects anywhere in the text.
    for (start, _) in trimmed.match_indices('{') {
        if let Some(end) = balanced_end(&trimmed[start..])
            && let Ok(Value::Object(map)) =
                serde_json::from_str::<Value>(&trimmed[start..end + start])
        {
            candidates.push(map);
        }
    }
    candidates
        .into_iter()
        .find(|m| m.contains_key("root_cause"))
        .ok_or_else(|| AnswerError::NoJson {
            start: trimmed.chars().take(80).collect(),
        })
}

/// The byte length of the balanced `{…}` at the start of `s` (strings and escapes respected).
fn balanced_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Parses a model's text into a [`Diagnosis`] checked against `policy`; returns it with notes
/// saying what was clamped, mapped, dropped or flagged.
///
/// # Errors
/// [`AnswerError`] when the text holds no JSON object, or `root_cause` or `fix_type` is missing
/// or unusable (a fix type that maps to no allowed kind, or to several).
pub fn parse_answer(
    text: &str,
    policy: &FixPolicy,
) -> Result<(Diagnosis, Vec<String>), AnswerError> {
    let map = extract_json(text)?;
    validate(&map, policy)
}

/// Validates a loose JSON object as a [`Diagnosis`] against `policy` (see [`parse_answer`]).
///
/// # Errors
/// As [`parse_answer`].
pub fn validate(
    map: &serde_json::Map<String, Value>,
    policy: &FixPolicy,
) -> Result<(Diagnosis, Vec<String>), AnswerError> {
    let mut notes = Vec::new();
    let known = [
        "root_cause",
        "fix_type",
        "fix_description",
        "confidence",
        "code_changes",
        "config_changes",
    ];
    for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
        notes.push(format!("ignored unknown field {key:?}"));
    }

    let root_cause = match map.get("root_cause") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        other => {
            return Err(AnswerError::Field {
                field: "root_cause",
                why: format!("expected a non-empty string, got {}", describe(other)),
            });
        }
    };

    let fix_type = match map.get("fix_type") {
        Some(Value::String(s)) => match FixType::parse_loose(s) {
            Some(t) => {
                if t.as_str() != s {
                    notes.push(format!("fix_type {s:?} read as {t}"));
                }
                t
            }
            None => {
                return Err(AnswerError::Field {
                    field: "fix_type",
                    why: format!(
                        "{s:?} is not one of {}",
                        FixType::ALL.map(FixType::as_str).join(", ")
                    ),
                });
            }
        },
        other => {
            return Err(AnswerError::Field {
                field: "fix_type",
                why: format!("expected a string, got {}", describe(other)),
            });
        }
    };
    let fix_type = if policy.fix_types.contains(&fix_type) {
        fix_type
    } else {
        notes.push(format!(
            "fix_type {fix_type} is not allowed by the manifest; restart instead"
        ));
        FixType::Restart
    };

    let fix_description = match map.get("fix_description") {
        Some(Value::String(s)) => s.trim().to_string(),
        other => {
            notes.push(format!(
                "fix_description missing or not a string ({}); left empty",
                describe(other)
            ));
            String::new()
        }
    };

    let confidence = match map.get("confidence") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(c) if (0.0..=1.0).contains(&c) => c,
            Some(c) if c.is_finite() => {
                let clamped = c.clamp(0.0, 1.0);
                notes.push(format!(
                    "confidence {c} is outside 0–1; clamped to {clamped}"
                ));
                clamped
            }
            _ => {
                notes.push(format!(
                    "confidence {n} is not a usable number; recorded as 0"
                ));
                0.0
            }
        },
        other => {
            notes.push(format!(
                "confidence {} is not a number from 0 to 1; recorded as 0",
                describe(other)
            ));
            0.0
        }
    };

    let code_changes = match map.get("code_changes") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) if !looks_like_an_edit(s) => {
            notes.push(format!(
                "code_changes {:?} is neither edit blocks (SEARCH/REPLACE, old_string/new_string), a unified diff nor a function; dropped",
                s.chars().take(40).collect::<String>()
            ));
            None
        }
        Some(Value::String(s)) => {
            for file in foreign_files(s, &policy.code_files) {
                notes.push(format!(
                    "code_changes names {file}, which is not on the allow-list ({}); the fix \
                     engine will refuse it",
                    if policy.code_files.is_empty() {
                        "empty".to_string()
                    } else {
                        policy.code_files.join(", ")
                    }
                ));
            }
            if !policy.fix_types.contains(&FixType::CodeFix) {
                notes.push(
                    "code_changes given but code fixes are not allowed by the manifest".into(),
                );
            }
            Some(s.clone())
        }
        Some(other) => {
            notes.push(format!(
                "code_changes is {}, not a string; dropped",
                describe(Some(other))
            ));
            None
        }
    };

    let code_changes = match code_changes {
        Some(_) if fix_type != FixType::CodeFix => {
            notes.push(format!(
                "code_changes given with fix_type {fix_type}; dropped (only a code_fix carries a code change)"
            ));
            None
        }
        other => other,
    };

    let config_changes = match map.get("config_changes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(obj)) => {
            let changes = config_changes(obj, policy, &mut notes);
            (!changes.is_empty()).then_some(changes)
        }
        Some(other) => {
            notes.push(format!(
                "config_changes is {}, not an object; dropped",
                describe(Some(other))
            ));
            None
        }
    };
    if config_changes.is_some() && !policy.fix_types.contains(&FixType::ConfigFix) {
        notes.push("config_changes given but config fixes are not allowed by the manifest".into());
    }

    Ok((
        Diagnosis {
            root_cause,
            fix_type,
            fix_description,
            confidence,
            code_changes,
            config_changes,
        },
        notes,
    ))
}

fn config_changes(
    obj: &serde_json::Map<String, Value>,
    policy: &FixPolicy,
    notes: &mut Vec<String>,
) -> ConfigChanges {
    let mut out = ConfigChanges::default();
    for (name, value) in obj {
        if value.is_null() {
            continue;
        }
        let Some(bounds) = policy.parameters.get(name) else {
            notes.push(format!(
                "config_changes.{name} dropped: the manifest has no parameter {name:?}"
            ));
            continue;
        };
        let number = match value {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            _ => None,
        };
        let Some(v) = number else {
            notes.push(format!(
                "config_changes.{name} dropped: {value} is not a whole number"
            ));
            continue;
        };
        let clamped = v.clamp(bounds.min, bounds.max);
        if clamped != v {
            notes.push(format!(
                "config_changes.{name} {v} is outside the manifest's bounds {}–{}; clamped to \
                 {clamped}",
                bounds.min, bounds.max
            ));
        }
        out.0.insert(name.clone(), clamped);
    }
    out
}

/// Whether `code` has the shape of a code change the fix engine reads: edit blocks
/// (`<<<<<<< SEARCH`, `old_string:`), a unified diff (`@@` hunks), or a function or class
/// definition; `"1"` or `":{"` is none of them.
pub fn looks_like_an_edit(code: &str) -> bool {
    code.contains("<<<<<<<")
        || code.contains("old_string")
        || code.lines().any(|l| l.starts_with("@@"))
        || code.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with("def ") || t.starts_with("async def ") || t.starts_with("class ")
        })
}

/// Paths named in `code` that are not allow-listed: unified-diff headers, `file:` lines,
/// absolute paths, and relative paths with a source-file extension. An allow-listed file
/// matches by its path as written in the manifest or by its file name.
pub fn foreign_files(code: &str, allowed: &[String]) -> Vec<String> {
    static PATHS: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let Some(re) = PATHS
        .get_or_init(|| {
            regex::Regex::new(
                r#"(?m)(?:^(?:---|\+\+\+)\s+(?:[ab]/)?(\S+))|(?:^\s*(?:file|path|filename)\s*:\s*(\S+))|(?:(?:^|[\s"'(=:,])(/[\w.\-]+(?:/[\w.\-]+)+))|(?:\b([\w.\-]+(?:/[\w.\-]+)*\.(?:py|pyw|sh|bash|rb|js|ts|go|rs|java|c|h|cc|cpp|yaml|yml|json|toml|cfg|ini|conf|env|txt|sql))\b)"#,
            )
            .ok()
        })
        .as_ref()
    else {
        return Vec::new();
    };
    let allowed_names: Vec<&str> = allowed
        .iter()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for caps in re.captures_iter(code) {
        let Some(m) = (1..=4).find_map(|i| caps.get(i)) else {
            continue;
        };
        let path = m.as_str().trim_matches(|c| c == '"' || c == '\'');
        if path == "/dev/null" {
            continue;
        }
        let rel = path.trim_start_matches("./");
        let ok = allowed.iter().any(|a| {
            let a = a.trim_start_matches("./");
            a == rel || (!rel.starts_with('/') && a.ends_with(&format!("/{rel}")))
        }) || (!rel.contains('/') && allowed_names.contains(&rel));
        if !ok && !out.iter().any(|o| o == path) {
            out.push(path.to_string());
        }
    }
    out
}

fn describe(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::String(s)) => format!("the string {s:?}"),
        Some(Value::Bool(b)) => format!("the boolean {b}"),
        Some(Value::Number(n)) => format!("the number {n}"),
        Some(Value::Array(_)) => "an array".into(),
        Some(Value::Object(_)) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/llm")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub(crate) fn policy() -> FixPolicy {
        FixPolicy {
            fix_types: FixType::ALL.to_vec(),
            parameters: BTreeMap::from([
                (
                    "parallel_uploads".to_string(),
                    Parameter {
                        default: 1,
                        min: 1,
                        max: 10,
                    },
                ),
                (
                    "batch_size".to_string(),
                    Parameter {
                        default: 1000,
                        min: 100,
                        max: 10000,
                    },
                ),
            ]),
            code_files: vec!["examples/calibre-migration/migrate_worker.py".into()],
        }
    }

    #[test]
    fn strict_schema_is_closed_and_requires_everything() {
        let s = strict_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for key in [
            "root_cause",
            "fix_type",
            "fix_description",
            "confidence",
            "code_changes",
            "config_changes",
        ] {
            assert!(required.contains(&key), "{key} not required: {s}");
        }
        let text = s.to_string();
        assert!(!text.contains("\"format\""), "{text}");
        assert!(!text.contains("oneOf"), "{text}");
        // The manifest's schema lists its own parameters, closed and fully required.
        let s2 = strict_schema_for(&policy());
        let cc = &s2["properties"]["config_changes"]["anyOf"][0];
        assert_eq!(cc["additionalProperties"], false);
        assert_eq!(cc["required"].as_array().unwrap().len(), 2);
        assert_eq!(cc["properties"]["parallel_uploads"]["maximum"], 10);
        let ft = &s["$defs"]["FixType"];
        assert_eq!(
            ft["enum"],
            serde_json::json!(["restart", "code_fix", "config_fix", "scale_down"])
        );
        // Optional values are nullable.
        assert!(s["properties"]["code_changes"].to_string().contains("null"));
        assert!(
            s["properties"]["config_changes"]
                .to_string()
                .contains("null")
        );
    }

    #[test]
    fn clean_config_fix_fixture() {
        let (d, notes) = parse_answer(&fixture("clean_config_fix.json"), &policy()).unwrap();
        assert_eq!(d.fix_type, FixType::ConfigFix);
        assert_eq!(d.confidence, 0.8);
        assert_eq!(
            d.config_changes,
            Some(ConfigChanges(BTreeMap::from([(
                "parallel_uploads".to_string(),
                2
            )])))
        );
        assert!(d.code_changes.is_none());
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn fenced_with_prose_fixture_ignores_the_trailing_empty_object() {
        let (d, notes) = parse_answer(&fixture("fenced_with_prose.txt"), &policy()).unwrap();
        assert_eq!(d.fix_type, FixType::CodeFix);
        assert_eq!(d.confidence, 0.72);
        assert!(
            d.code_changes
                .as_deref()
                .unwrap()
                .contains("start_id = max_fetched_id")
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn prose_only_fixture_fails() {
        let err = parse_answer(&fixture("prose_only.txt"), &policy()).unwrap_err();
        assert!(matches!(err, AnswerError::NoJson { .. }), "{err}");
        assert!(err.to_string().contains("no JSON object"));
    }

    #[test]
    fn bad_types_fixture_is_repaired_with_reasons() {
        let (d, notes) = parse_answer(&fixture("bad_types.json"), &policy()).unwrap();
        assert_eq!(
            d.fix_type,
            FixType::ScaleDown,
            "\"Scale Down\" maps to one type"
        );
        assert_eq!(d.confidence, 0.0);
        assert_eq!(
            d.config_changes
                .as_ref()
                .unwrap()
                .0
                .get("parallel_uploads")
                .copied(),
            Some(10)
        );
        let all = notes.join("\n");
        assert!(
            all.contains("fix_type \"Scale Down\" read as scale_down"),
            "{all}"
        );
        assert!(
            all.contains("confidence the string \"high\" is not a number"),
            "{all}"
        );
        assert!(
            all.contains("config_changes.parallel_uploads 50 is outside the manifest's bounds 1–10; clamped to 10"),
            "{all}"
        );
    }

    #[test]
    fn unknown_root_cause_fixture_is_recorded_as_unknown() {
        let (d, notes) = parse_answer(&fixture("unknown_root_cause.json"), &policy()).unwrap();
        assert!(d.is_unknown());
        assert_eq!(d.root_cause, "Unknown");
        assert_eq!(d.fix_type, FixType::Restart);
        assert_eq!(d.confidence, 0.3);
        assert!(notes.is_empty());
    }

    #[test]
    fn unmappable_fix_type_is_rejected_with_the_reason() {
        let text = r#"{"root_cause": "x", "fix_type": "reboot the machine", "fix_description": "", "confidence": 0.5}"#;
        let err = parse_answer(text, &policy()).unwrap_err();
        assert!(
            err.to_string().contains("fix_type is unusable: \"reboot the machine\" is not one of restart, code_fix, config_fix, scale_down"),
            "{err}"
        );
    }

    #[test]
    fn missing_root_cause_is_rejected() {
        let err = parse_answer(r#"{"fix_type": "restart"}"#, &policy());
        // No object with a root_cause key: nothing is taken for the answer.
        assert!(err.is_err());
        let err = validate(
            serde_json::json!({"root_cause": 3, "fix_type": "restart"})
                .as_object()
                .unwrap(),
            &policy(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("root_cause"), "{err}");
    }

    #[test]
    fn confidence_outside_the_range_is_clamped() {
        let text = r#"{"root_cause": "x", "fix_type": "restart", "fix_description": "d", "confidence": 7, "code_changes": null, "config_changes": null}"#;
        let (d, notes) = parse_answer(text, &policy()).unwrap();
        assert_eq!(d.confidence, 1.0);
        assert_eq!(notes, ["confidence 7 is outside 0–1; clamped to 1"]);
        let text = text.replace("\"confidence\": 7", "\"confidence\": -0.5");
        assert_eq!(parse_answer(&text, &policy()).unwrap().0.confidence, 0.0);
    }

    #[test]
    fn config_fixes_know_any_parameter_the_manifest_declares_not_only_the_demos_two() {
        let mut p = policy();
        p.parameters = BTreeMap::from([(
            "threads".to_string(),
            Parameter {
                default: 2,
                min: 1,
                max: 16,
            },
        )]);
        let schema = strict_schema_for(&p);
        let cc = &schema["properties"]["config_changes"]["anyOf"][0];
        assert_eq!(cc["required"], serde_json::json!(["threads"]));
        assert_eq!(cc["properties"]["threads"]["maximum"], 16);
        let text = r#"{"root_cause": "x", "fix_type": "config_fix", "fix_description": "d", "confidence": 0.9, "code_changes": null, "config_changes": {"threads": 40}}"#;
        let (d, notes) = parse_answer(text, &p).unwrap();
        assert_eq!(d.config_changes.unwrap().values()["threads"], 16);
        assert!(
            notes.iter().any(|n| n.contains("clamped to 16")),
            "{notes:?}"
        );
    }

    #[test]
    fn schema_keys_are_sent_in_reasoning_order_root_cause_first() {
        let schema = strict_schema_for(&policy());
        let text = serde_json::to_string(&InSchemaOrder(&schema)).unwrap();
        let props = &text[text.find("\"properties\"").unwrap()..];
        let at = |k: &str| props.find(&format!("\"{k}\":")).unwrap();
        let positions: Vec<usize> = KEY_ORDER.iter().map(|k| at(k)).collect();
        assert!(
            positions.is_sorted(),
            "{KEY_ORDER:?} at {positions:?} in {props}"
        );
        // Still the same schema, only ordered.
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, schema);
    }

    #[test]
    fn code_changes_that_are_no_edit_or_ride_on_a_restart_are_dropped_with_a_note() {
        for (fix, code, says) in [
            ("code_fix", "1", "neither edit blocks"),
            ("code_fix", ":{", "neither edit blocks"),
            (
                "restart",
                "def f():\n    return 1\n",
                "only a code_fix carries",
            ),
        ] {
            let text = serde_json::json!({"root_cause": "x", "fix_type": fix, "fix_description": "d", "confidence": 0.9, "code_changes": code, "config_changes": null}).to_string();
            let (d, notes) = parse_answer(&text, &policy()).unwrap();
            assert!(d.code_changes.is_none(), "{code}");
            assert!(notes.iter().any(|n| n.contains(says)), "{notes:?}");
        }
    }

    #[test]
    fn parameters_the_manifest_lacks_are_dropped() {
        let mut p = policy();
        p.parameters.remove("batch_size");
        let text = r#"{"root_cause": "x", "fix_type": "config_fix", "fix_description": "d", "confidence": 0.5, "config_changes": {"batch_size": 500, "threads": 4, "parallel_uploads": 3.0}}"#;
        let (d, notes) = parse_answer(text, &p).unwrap();
        assert_eq!(
            d.config_changes,
            Some(ConfigChanges(BTreeMap::from([(
                "parallel_uploads".to_string(),
                3
            )])))
        );
        let all = notes.join("\n");
        assert!(
            all.contains(
                "config_changes.batch_size dropped: the manifest has no parameter \"batch_size\""
            ),
            "{all}"
        );
        assert!(all.contains("config_changes.threads dropped"), "{all}");
    }

    #[test]
    fn a_disallowed_fix_type_becomes_a_restart() {
        let mut p = policy();
        p.fix_types = vec![FixType::Restart, FixType::ScaleDown];
        let (d, notes) = parse_answer(&fixture("fenced_with_prose.txt"), &p).unwrap();
        assert_eq!(d.fix_type, FixType::Restart);
        assert!(
            notes.iter().any(|n| n.contains("code_fix is not allowed")),
            "{notes:?}"
        );
    }

    #[test]
    fn foreign_files_table() {
        let allowed = vec!["examples/calibre-migration/migrate_worker.py".to_string()];
        let cases: [(&str, &[&str]); 7] = [
            ("old_string:\n  a = b\nnew_string:\n  a = c\n", &[]),
            (
                "--- a/migrate_worker.py\n+++ b/migrate_worker.py\n@@ -1 +1 @@\n",
                &[],
            ),
            ("edit /etc/passwd and add a user", &["/etc/passwd"]),
            ("file: ../../etc/shadow.conf\n", &["../../etc/shadow.conf"]),
            ("--- a/other.py\n+++ b/other.py\n", &["other.py"]),
            ("x = row.id / 2  # self.batch_size", &[]),
            (
                "in examples/calibre-migration/migrate_worker.py and util/helpers.py",
                &["util/helpers.py"],
            ),
        ];
        for (code, want) in cases {
            assert_eq!(foreign_files(code, &allowed), want, "code: {code}");
        }
    }

    #[test]
    fn loose_fix_types() {
        assert_eq!(FixType::parse_loose("Scale Down"), Some(FixType::ScaleDown));
        assert_eq!(FixType::parse_loose("config-fix"), Some(FixType::ConfigFix));
        assert_eq!(FixType::parse_loose("CodeFix"), Some(FixType::CodeFix));
        assert_eq!(FixType::parse_loose("restart"), Some(FixType::Restart));
        assert_eq!(FixType::parse_loose("rollback"), None);
        assert_eq!(FixType::parse_loose(""), None);
    }
}
