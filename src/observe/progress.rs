//! Progress files: the worker's resume cursor, read by JSON pointer.
//!
//! The reader is bounded ([`MAX_PROGRESS_BYTES`]) and never turns a damaged file into
//! "checkpoint 0": an empty file, a truncated write, two concatenated objects, a missing or
//! non-numeric cursor each become a [`ProgressObservation::Unreadable`] with the reason, and the
//! planner keeps the last good value. A UTF-8 byte order mark is skipped; a cursor written as a
//! string with thousands separators (`"1,234"`) is accepted.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest progress file read (64 MiB); a larger one is reported, not read.
pub const MAX_PROGRESS_BYTES: u64 = 64 * 1024 * 1024;

/// What one read of a progress file found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgressObservation {
    /// No progress file yet.
    Missing,
    /// A well-formed file.
    Read {
        /// The cursor at the checkpoint pointer.
        checkpoint: u64,
        /// The item count at the items pointer, when configured and present.
        items: Option<u64>,
    },
    /// The file exists but holds no usable cursor; `why` says what is wrong.
    Unreadable {
        /// A sentence naming the problem, e.g. "truncated JSON at byte 118".
        why: String,
    },
}

/// Parses progress-file bytes; `checkpoint` and `items` are JSON pointers (RFC 6901).
pub fn parse(bytes: &[u8], checkpoint: &str, items: Option<&str>) -> ProgressObservation {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return ProgressObservation::Unreadable {
            why: "empty file".into(),
        };
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
    let value = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) if e.is_eof() => {
            return ProgressObservation::Unreadable {
                why: format!("truncated JSON ({e})"),
            };
        }
        Some(Err(e)) => {
            return ProgressObservation::Unreadable {
                why: format!("invalid JSON ({e})"),
            };
        }
        None => {
            return ProgressObservation::Unreadable {
                why: "empty file".into(),
            };
        }
    };
    if stream.next().is_some() {
        return ProgressObservation::Unreadable {
            why: "more than one JSON value in the file (a torn or concatenated write)".into(),
        };
    }
    let Some(raw) = value.pointer(checkpoint) else {
        return ProgressObservation::Unreadable {
            why: format!("no value at {checkpoint}"),
        };
    };
    let Some(checkpoint_value) = as_count(raw) else {
        return ProgressObservation::Unreadable {
            why: format!("value at {checkpoint} is {raw} (expected a non-negative integer)"),
        };
    };
    let items = items.and_then(|p| value.pointer(p)).and_then(as_count);
    ProgressObservation::Read {
        checkpoint: checkpoint_value,
        items,
    }
}

/// A non-negative integer, or a string of digits with `,`, `_` or space separators.
fn as_count(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => {
            let digits: String = s
                .trim()
                .chars()
                .filter(|c| !matches!(c, ',' | '_' | ' '))
                .collect();
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        }
        _ => None,
    }
}

/// Reads and parses the progress file at `path` (at most [`MAX_PROGRESS_BYTES`]).
pub fn read(path: &Path, checkpoint: &str, items: Option<&str>) -> ProgressObservation {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ProgressObservation::Missing,
        Err(e) => {
            return ProgressObservation::Unreadable {
                why: format!("cannot open: {e}"),
            };
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_PROGRESS_BYTES + 1).read_to_end(&mut bytes) {
        return ProgressObservation::Unreadable {
            why: format!("cannot read: {e}"),
        };
    }
    if bytes.len() as u64 > MAX_PROGRESS_BYTES {
        return ProgressObservation::Unreadable {
            why: format!("larger than {MAX_PROGRESS_BYTES} bytes"),
        };
    }
    parse(&bytes, checkpoint, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> ProgressObservation {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/progress")
            .join(name);
        read(&path, "/last_processed_book_id", None)
    }

    fn unreadable(o: &ProgressObservation) -> bool {
        matches!(o, ProgressObservation::Unreadable { .. })
    }

    #[test]
    fn reads_the_bulk_worker_cursor() {
        assert_eq!(
            fixture("bulk_worker.json"),
            ProgressObservation::Read {
                checkpoint: 41250,
                items: None
            }
        );
    }

    #[test]
    fn cursor_as_string_with_thousands_separator() {
        assert_eq!(
            fixture("checkpoint_as_string.json"),
            ProgressObservation::Read {
                checkpoint: 1234,
                items: None
            }
        );
    }

    #[test]
    fn utf8_bom_is_skipped() {
        assert_eq!(
            fixture("utf8_bom.json"),
            ProgressObservation::Read {
                checkpoint: 777,
                items: None
            }
        );
    }

    #[test]
    fn damaged_files_never_become_checkpoint_zero() {
        for name in [
            "empty.json",
            "truncated.json",
            "two_objects.json",
            "tar_worker.json",
        ] {
            assert!(
                unreadable(&fixture(name)),
                "{name} must be unreadable, got {:?}",
                fixture(name)
            );
        }
    }

    #[test]
    fn null_key_and_completed_flag_files_read_normally() {
        assert_eq!(
            fixture("null_key.json"),
            ProgressObservation::Read {
                checkpoint: 9,
                items: None
            }
        );
        assert_eq!(
            fixture("completed_flag.json"),
            ProgressObservation::Read {
                checkpoint: 88400,
                items: None
            }
        );
    }

    #[test]
    fn missing_file_is_missing() {
        assert_eq!(
            read(Path::new("/nonexistent/p.json"), "/x", None),
            ProgressObservation::Missing
        );
    }

    #[test]
    fn negative_or_fractional_cursor_is_rejected() {
        assert!(unreadable(&parse(br#"{"c": -1}"#, "/c", None)));
        assert!(unreadable(&parse(br#"{"c": 1.5}"#, "/c", None)));
        assert!(unreadable(&parse(br#"{"c": "12a"}"#, "/c", None)));
    }

    #[test]
    fn items_pointer_is_read_when_present() {
        assert_eq!(
            parse(br#"{"c": 10, "n": "2,000"}"#, "/c", Some("/n")),
            ProgressObservation::Read {
                checkpoint: 10,
                items: Some(2000)
            }
        );
    }
}
