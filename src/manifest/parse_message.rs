//! Turns serde-saphyr's parse errors into `what is wrong (what is expected)` messages: unknown
//! names get the nearest valid one suggested, budget breaches say which limit was hit.

use serde_saphyr::Error;
use serde_saphyr::budget::BudgetBreach;

use super::budget;
use super::suggest::closest;

/// The message for parse error `e` met while reading `field` (dotted path, empty at the root).
/// The location is not part of it: the caller prints it in front.
pub fn describe(e: &Error, field: &str) -> String {
    match e {
        Error::WithSnippet { error, .. } => describe(error, field),
        Error::AliasError { error, .. } => describe(error, field),
        Error::SerdeUnknownField {
            field: name,
            expected,
            ..
        } => unknown_field(name, expected),
        Error::SerdeUnknownVariant {
            variant, expected, ..
        } => match closest(variant, expected) {
            Some(near) => format!("unknown value {variant:?} (did you mean {near:?}?)"),
            None => format!(
                "unknown value {variant:?} (expected one of {})",
                expected.join(", ")
            ),
        },
        Error::SerdeMissingField { field: name, .. } => {
            format!("missing field `{name}` (it is required)")
        }
        Error::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } if field.is_empty() => format!(
            "the document is {unexpected} (expected a WorkerSet mapping with apiVersion, kind, \
             metadata and spec; {expected})"
        ),
        Error::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("wrong type: found {unexpected} (expected {expected})"),
        Error::QuotingRequired { value, .. } => format!(
            "wrong type: found {value}, which YAML reads as a number or true/false (expected text: quote it, \"{value}\")"
        ),
        Error::InvalidScalar { ty, .. } => format!("wrong type (expected {})", scalar_kind(ty)),
        Error::Unexpected { expected, .. } if field.is_empty() && expected.contains("mapping") => {
            "the document is not a mapping (expected a WorkerSet mapping with apiVersion, kind, \
             metadata and spec)"
                .into()
        }
        Error::Unexpected { expected, .. } => {
            format!("wrong type (expected {})", structure_kind(expected))
        }
        Error::DuplicateMappingKey { key, .. } => match key {
            Some(k) => format!("duplicate key `{k}` (expected each key once per mapping)"),
            None => "duplicate key (expected each key once per mapping)".into(),
        },
        Error::Budget { breach, .. } => budget_breach(breach),
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayCounterOverflow { .. } => format!(
            "aliases expand to more than {} nodes (expected a manifest without alias bombs)",
            budget::MAX_REPLAYED_EVENTS
        ),
        Error::AliasReplayStackDepthExceeded { max_depth, .. } => {
            format!("aliases nest too deep (expected at most {max_depth} levels)")
        }
        Error::Eof { .. } => "no YAML document, only comments or blanks (expected a WorkerSet \
                               mapping)"
            .into(),
        Error::MultipleDocuments { .. } => {
            "more than one YAML document (expected exactly one WorkerSet per file)".into()
        }
        other => plain_words(&strip_location_suffix(other.render().trim())),
    }
}

/// The message for `literal`, written where a whole number of type `ty` belongs, when it is a
/// whole number out of that type's range: too large (or too small), with the limit. `None`
/// when `literal` is not a whole number or `ty` not an integer type.
pub fn out_of_range(ty: &str, literal: &str) -> Option<String> {
    let digits = literal.strip_prefix(['+', '-']).unwrap_or(literal);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (min, max): (i128, u64) = match ty {
        "u8" => (0, u8::MAX.into()),
        "u16" => (0, u16::MAX.into()),
        "u32" => (0, u32::MAX.into()),
        "u64" | "usize" => (0, u64::MAX),
        "i8" => (i8::MIN.into(), i8::MAX.unsigned_abs().into()),
        "i16" => (i16::MIN.into(), i16::MAX.unsigned_abs().into()),
        "i32" => (i32::MIN.into(), i32::MAX.unsigned_abs().into()),
        "i64" | "isize" => (i64::MIN.into(), i64::MAX.unsigned_abs()),
        _ => return None,
    };
    let shown = shown_number(literal);
    let negative = literal.starts_with('-') && digits.bytes().any(|b| b != b'0');
    if negative && min == 0 {
        return Some(format!(
            "{shown} is negative (expected a whole number from 0 to {})",
            crate::text::Count(max)
        ));
    }
    let value = digits.parse::<u128>().ok();
    if negative {
        let fits = value.is_some_and(|v| i128::try_from(v).is_ok_and(|v| -v >= min));
        return (!fits)
            .then(|| format!("{shown} is too small (expected a whole number of at least {min})"));
    }
    let fits = value.is_some_and(|v| v <= u128::from(max));
    (!fits).then(|| {
        format!(
            "{shown} is too large (expected a whole number of at most {})",
            crate::text::Count(max)
        )
    })
}

/// A number as written, shortened when it is too long to read (`123456789012345678901234…
/// (40 digits)`).
pub fn shown_number(literal: &str) -> String {
    const KEEP: usize = 24;
    let digits = literal.trim_start_matches(['+', '-']).len();
    if literal.len() <= KEEP + 4 {
        literal.to_string()
    } else {
        format!("{}… ({digits} digits)", &literal[..KEEP])
    }
}

/// What a Rust scalar type means in a manifest.
fn scalar_kind(ty: &str) -> String {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number ≥ 0".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "bool" | "boolean" => "true or false".into(),
        other => format!("a value of type {other}"),
    }
}

/// What a YAML structure event means in a manifest.
fn structure_kind(event: &str) -> String {
    if event.contains("mapping") {
        "a mapping".into()
    } else if event.contains("sequence") {
        "a list".into()
    } else if event.contains("scalar") {
        "a single value, not a list or mapping".into()
    } else {
        event.into()
    }
}

/// `unknown field (did you mean "template"?)`; never echoes a value, only the key.
fn unknown_field(name: &str, expected: &[&str]) -> String {
    let lower = name.to_ascii_lowercase();
    if ["key", "token", "secret", "password"]
        .iter()
        .any(|w| lower.contains(w))
        && expected.contains(&"api_key_env")
    {
        return "unknown field: a manifest never holds a secret (expected api_key_env: the name \
                of the environment variable that holds the API key, e.g. OPENAI_API_KEY)"
            .into();
    }
    match closest(name, expected) {
        Some(near) => format!("unknown field (did you mean {near:?}?)"),
        None if expected.is_empty() => "unknown field (expected no fields here)".into(),
        None => format!("unknown field (expected one of {})", expected.join(", ")),
    }
}

fn budget_breach(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Depth { .. } => format!(
            "YAML nested too deep (expected at most {} levels of mappings and sequences)",
            budget::MAX_DEPTH
        ),
        BudgetBreach::Aliases { .. } => format!(
            "too many aliases (expected at most {}; a manifest needs few or none)",
            budget::MAX_ALIASES
        ),
        BudgetBreach::Anchors { .. } => {
            format!(
                "too many anchors (expected at most {})",
                budget::MAX_ANCHORS
            )
        }
        BudgetBreach::AliasAnchorRatio { aliases, anchors } => format!(
            "{aliases} aliases for {anchors} anchors look like an alias bomb (expected few aliases)"
        ),
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
            "too many YAML nodes (expected at most {})",
            budget::MAX_NODES
        ),
        BudgetBreach::ScalarBytes { .. } => format!(
            "scalars too large (expected at most {} bytes of text in all values together)",
            budget::MAX_SCALAR_BYTES
        ),
        BudgetBreach::Documents { .. } => {
            "more than one YAML document (expected exactly one WorkerSet per file)".into()
        }
        BudgetBreach::RecordedAnchorEvents { .. } | BudgetBreach::RecordedAnchorBytes { .. } => {
            "anchors hold too much (expected small anchors, if any)".into()
        }
        other => format!("parse budget exceeded: {other:?} (expected a small manifest)"),
    }
}

/// serde-saphyr appends " at line X, column Y" to messages; the location is printed in front.
/// The parser's messages that speak of Rust types, in the manifest's words.
fn plain_words(message: &str) -> String {
    if message.starts_with("cannot deserialize null into") {
        return "no value (null or empty; expected a value here: write one, or remove the key)"
            .into();
    }
    if message.starts_with("non-finite float") {
        return "not a finite number (.nan / .inf; expected text in quotes or a number)".into();
    }
    message.to_string()
}

fn strip_location_suffix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}
