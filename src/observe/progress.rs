//! Progress files: the worker's resume cursor, read by JSON pointer.
//!
//! The file is streamed: only the values at the configured pointers are kept, everything else is
//! skipped as it is parsed, so a progress file with a 300 MB `completed_files` map costs CPU but
//! not memory (and the observer re-reads a file only when its size, mtime or inode changed). A
//! damaged file never becomes "checkpoint 0": an empty file, a truncated write, two concatenated
//! objects, a missing or non-numeric cursor each become [`ProgressObservation::Unreadable`] with
//! the reason, and the planner keeps the last good value. A UTF-8 byte order mark is skipped; a
//! cursor written as a string with thousands separators (`"1,234"`) is accepted.

use std::cell::RefCell;
use std::fmt;
use std::path::Path;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Largest progress file read (4 GiB); a larger one is reported, not read.
pub const MAX_PROGRESS_BYTES: u64 = 4 * 1024 * 1024 * 1024;

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
        /// The completion flag at the completion pointer, when configured and present.
        #[serde(default)]
        completed: Option<bool>,
    },
    /// A well-formed file whose cursor is -1: no key done yet. It is the cursor before key 0,
    /// what `{checkpoint}` renders for a shard starting at 0 and a worker writes back before
    /// its first batch; it is no checkpoint (the last good one, if any, is kept).
    NothingDone,
    /// The file exists but holds no usable cursor; `why` says what is wrong.
    Unreadable {
        /// A sentence naming the problem, e.g. "truncated JSON at byte 118".
        why: String,
    },
}

/// The JSON pointers (RFC 6901) to read from a progress file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pointers {
    /// The resume cursor, e.g. `/last_processed_book_id`.
    pub checkpoint: String,
    /// An item count, e.g. `/books_migrated`.
    pub items: Option<String>,
    /// A completion flag, e.g. `/completed`.
    pub completion: Option<String>,
}

impl Pointers {
    /// Only a checkpoint pointer.
    pub fn checkpoint(pointer: &str) -> Self {
        Self {
            checkpoint: pointer.to_string(),
            ..Self::default()
        }
    }
}

/// Splits a JSON pointer into unescaped tokens (`~1` → `/`, `~0` → `~`).
fn tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Streams one JSON value, keeping only the values at `paths` (slot i ← paths[i]).
struct Pick<'a> {
    paths: Vec<(usize, &'a [String])>,
    out: &'a RefCell<Vec<Option<serde_json::Value>>>,
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.paths.iter().any(|(_, p)| p.is_empty()) {
            // This node is wanted whole; deeper pointers are read from it.
            let value = serde_json::Value::deserialize(d)?;
            let mut out = self.out.borrow_mut();
            for (slot, path) in &self.paths {
                let pointer: String = path
                    .iter()
                    .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
                    .collect();
                out[*slot] = value.pointer(&pointer).cloned();
            }
            return Ok(());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let sub: Vec<(usize, &[String])> = self
                .paths
                .iter()
                .filter(|(_, p)| p.first().is_some_and(|t| *t == key))
                .map(|(s, p)| (*s, &p[1..]))
                .collect();
            if sub.is_empty() {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Pick {
                    paths: sub,
                    out: self.out,
                })?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let key = index.to_string();
            let sub: Vec<(usize, &[String])> = self
                .paths
                .iter()
                .filter(|(_, p)| p.first().is_some_and(|t| *t == key))
                .map(|(s, p)| (*s, &p[1..]))
                .collect();
            let more = if sub.is_empty() {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Pick {
                    paths: sub,
                    out: self.out,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Parses progress-file bytes (a UTF-8 byte order mark is skipped).
pub fn parse(bytes: &[u8], pointers: &Pointers) -> ProgressObservation {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let paths: Vec<Vec<String>> = std::iter::once(&pointers.checkpoint)
        .chain(pointers.items.as_ref())
        .chain(pointers.completion.as_ref())
        .map(|p| tokens(p))
        .collect();
    let out = RefCell::new(vec![None; paths.len()]);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = Pick {
        paths: paths
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.as_slice()))
            .collect(),
        out: &out,
    };
    if let Err(e) = seed.deserialize(&mut de) {
        let why = if e.is_eof() && e.line() == 1 && e.column() == 0 {
            "empty file".to_string()
        } else if e.is_eof() {
            format!("truncated JSON ({e})")
        } else {
            format!("invalid JSON ({e})")
        };
        return ProgressObservation::Unreadable { why };
    }
    if de.end().is_err() {
        return ProgressObservation::Unreadable {
            why: "more than one JSON value in the file (a torn or concatenated write)".into(),
        };
    }
    let mut values = out.into_inner().into_iter();
    let checkpoint = &pointers.checkpoint;
    let Some(raw) = values.next().flatten() else {
        return ProgressObservation::Unreadable {
            why: format!("no value at {checkpoint}"),
        };
    };
    if is_minus_one(&raw) {
        return ProgressObservation::NothingDone;
    }
    let Some(checkpoint_value) = as_count(&raw) else {
        return ProgressObservation::Unreadable {
            why: format!("value at {checkpoint} is {raw} (expected a non-negative integer)"),
        };
    };
    let items = pointers
        .items
        .as_ref()
        .and_then(|_| values.next().flatten())
        .as_ref()
        .and_then(as_count);
    let completed = pointers
        .completion
        .as_ref()
        .and_then(|_| values.next().flatten())
        .and_then(|v| v.as_bool());
    ProgressObservation::Read {
        checkpoint: checkpoint_value,
        items,
        completed,
    }
}

/// The cursor before key 0: -1, as a number or a string.
fn is_minus_one(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.as_i64() == Some(-1),
        serde_json::Value::String(s) => s.trim() == "-1",
        _ => false,
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

/// Identifies one version of a file: a change in any field means it must be read again.
///
/// The status-change time is there because the modification time alone can be set back: a
/// same-size rewrite by `cp -p` or `rsync -t` restores the old mtime, but the kernel sets the
/// ctime to now on every write and on that very `utimensat`, and userspace cannot set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

/// Nanoseconds since the epoch of a `stat` time given as seconds and nanoseconds.
pub fn nanos(sec: impl Into<i128>, nsec: impl Into<i128>) -> i128 {
    sec.into() * 1_000_000_000 + nsec.into()
}

/// How long after a file's last change its times are trusted to tell a later change: a file
/// system stamps times from a coarse clock (a few milliseconds; a second or two on some), so
/// a write just after a look can leave them as they were. A file changed more recently than
/// this is looked at again, whatever its times say (git's "racily clean" rule).
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// The (mtime, ctime) of `meta` in nanoseconds since the epoch, when the later of them is at
/// least [`SETTLED`] before `now` (wall clock); `None` for a file changed since then (or
/// stamped in the future).
pub fn settled_times(meta: &std::fs::Metadata, now: std::time::SystemTime) -> Option<(i128, i128)> {
    use std::os::unix::fs::MetadataExt;
    let times = (
        nanos(meta.mtime(), meta.mtime_nsec()),
        nanos(meta.ctime(), meta.ctime_nsec()),
    );
    settled(times.0.max(times.1), now).then_some(times)
}

/// True when a change at `changed_ns` (nanoseconds since the epoch) is at least [`SETTLED`]
/// before `now`.
pub fn settled(changed_ns: i128, now: std::time::SystemTime) -> bool {
    let now_ns = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    now_ns.saturating_sub(changed_ns) >= SETTLED.as_nanos() as i128
}

/// The version of the file at `path`, if it exists.
pub fn version(path: &Path) -> Option<FileVersion> {
    std::fs::metadata(path).ok().map(|m| version_of(&m))
}

/// Reads and parses the progress file at `path` (at most [`MAX_PROGRESS_BYTES`]).
pub fn read(path: &Path, pointers: &Pointers) -> ProgressObservation {
    read_versioned(path, pointers, 0).0
}

/// Reads and parses the progress file at `path` (at most [`MAX_PROGRESS_BYTES`]; `size_hint`
/// is its size as last seen), with the version of the file read, taken from the open file
/// once the bytes are in (`None` when it could not be): equal to a version seen before the
/// read, it says the bytes parsed are that version's. Open, one `pread` (a second only when
/// the file grew), `fstat`, close.
pub fn read_versioned(
    path: &Path,
    pointers: &Pointers,
    size_hint: u64,
) -> (ProgressObservation, Option<FileVersion>) {
    read_opened(&|| open_quietly(path), pointers, size_hint)
}

/// [`read_versioned`] of the file `open` opens (the observer opens it through its directory's
/// handle).
pub fn read_opened(
    open: &dyn Fn() -> std::io::Result<std::fs::File>,
    pointers: &Pointers,
    size_hint: u64,
) -> (ProgressObservation, Option<FileVersion>) {
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (ProgressObservation::Missing, None);
        }
        Err(e) => {
            let why = open_failed(&e);
            return (ProgressObservation::Unreadable { why }, None);
        }
    };
    let bytes = match read_from(&file, 0, size_hint, MAX_PROGRESS_BYTES + 1) {
        Ok(b) => b,
        Err(e) => {
            let why = file
                .metadata()
                .ok()
                .and_then(|m| not_a_file(&m))
                .unwrap_or_else(|| format!("cannot read: {e}"));
            return (ProgressObservation::Unreadable { why }, None);
        }
    };
    let meta = file.metadata().ok();
    if let Some(why) = meta.as_ref().and_then(not_a_file) {
        return (ProgressObservation::Unreadable { why }, None);
    }
    let version = meta.map(|m| version_of(&m));
    if bytes.len() as u64 > MAX_PROGRESS_BYTES {
        let size = version.map_or(bytes.len() as u64, |v| v.size);
        let why = format!("{size} bytes, larger than {MAX_PROGRESS_BYTES}");
        return (ProgressObservation::Unreadable { why }, version);
    }
    (parse(bytes.as_slice(), pointers), version)
}

/// The version a reader found through the handle it opened: `Some(None)` when the open found
/// no file, `None` when it could not open or `fstat` it (nothing is then known).
pub type Found = Option<Option<FileVersion>>;

/// [`read_opened`] of a file whose version is not known yet: `fstat`ed right after the open
/// (its size is the read's), with that version.
///
/// The flag is true when the bytes were read and parsed: a parse that failed may be a write
/// caught halfway, worth a second look; a file that cannot be opened or read, or is not a
/// file, is not.
pub fn read_opened_stat_first(
    open: &dyn Fn() -> std::io::Result<std::fs::File>,
    pointers: &Pointers,
) -> (ProgressObservation, Found, bool) {
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (ProgressObservation::Missing, Some(None), false);
        }
        Err(e) => {
            let why = open_failed(&e);
            return (ProgressObservation::Unreadable { why }, None, false);
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            let why = format!("cannot stat: {e}");
            return (ProgressObservation::Unreadable { why }, None, false);
        }
    };
    let version = version_of(&meta);
    let found = Some(Some(version));
    if let Some(why) = not_a_file(&meta) {
        return (ProgressObservation::Unreadable { why }, found, false);
    }
    let bytes = match read_from(&file, 0, version.size, MAX_PROGRESS_BYTES + 1) {
        Ok(b) => b,
        // Nothing remembered: a read error may not last.
        Err(e) => {
            let why = format!("cannot read: {e}");
            return (ProgressObservation::Unreadable { why }, None, false);
        }
    };
    if bytes.len() as u64 > MAX_PROGRESS_BYTES {
        let why = format!("{} bytes, larger than {MAX_PROGRESS_BYTES}", version.size);
        return (ProgressObservation::Unreadable { why }, found, false);
    }
    (parse(bytes.as_slice(), pointers), found, true)
}

/// The version of a file from its metadata.
pub fn version_of(m: &std::fs::Metadata) -> FileVersion {
    use std::os::unix::fs::MetadataExt;
    FileVersion {
        dev: m.dev(),
        inode: m.ino(),
        size: m.size(),
        mtime_ns: nanos(m.mtime(), m.mtime_nsec()),
        ctime_ns: nanos(m.ctime(), m.ctime_nsec()),
    }
}

/// Why a worker's file could not be opened for reading: a socket is named as one (its open
/// fails with ENXIO, "No such device or address").
pub fn open_failed(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::ENXIO) => "is a socket, not a file".to_string(),
        _ => format!("cannot open: {e}"),
    }
}

/// Why a worker's file that is not a regular file cannot be read as one (a FIFO's reads take
/// what its writer meant for another reader, and a device may never end); `None` for a
/// regular file.
pub fn not_a_file(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        "is a directory"
    } else if kind.is_fifo() {
        "is a FIFO, not a file"
    } else if kind.is_socket() {
        "is a socket, not a file"
    } else if kind.is_block_device() || kind.is_char_device() {
        "is a device, not a file"
    } else {
        "is not a regular file"
    };
    Some(what.to_string())
}

/// Opens `path` for reading without making the kernel write its access time back
/// (`O_NOATIME`: at 2,000 workers whose files change every second, the inode updates of
/// reading them were a twentieth of automon's time). The flag needs the file's owner or
/// `CAP_FOWNER`; without them it is a plain open. Never blocks (`O_NONBLOCK`: the open of a
/// FIFO without a writer would wait for one, and hang the pass); on a regular file the flag
/// changes nothing.
///
/// # Errors
/// The open's error.
pub fn open_quietly(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | flags)
            .open(path)
    };
    match open(nix::libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(0),
        opened => opened,
    }
}

/// Reads `file` from byte `from` to its end, at most `max` bytes, with `pread`: one call
/// when `expected` (the bytes thought to be there) is right, since a short read of a regular
/// file is its end; no seek, no read that only finds the end.
///
/// # Errors
/// The read's error.
pub fn read_from(
    file: &std::fs::File,
    from: u64,
    expected: u64,
    max: u64,
) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    // One byte more than expected: a read that fills it all says the file grew.
    let mut want = expected.saturating_add(1).min(max);
    let mut buf = vec![0u8; usize::try_from(want).unwrap_or(usize::MAX)];
    let mut got = 0usize;
    loop {
        let n = match file.read_at(&mut buf[got..], from + got as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        got += n;
        // A short read of a regular file is its end.
        if n == 0 || got < buf.len() || want >= max {
            break;
        }
        want = want.saturating_mul(2).min(max);
        buf.resize(usize::try_from(want).unwrap_or(usize::MAX), 0);
    }
    buf.truncate(got);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `read_from` reads to the end whatever the size it was told: a file that grew since its
    /// `stat` is read whole (in more than one `pread`), a shorter one ends the read, and
    /// `max` caps it.
    #[test]
    fn read_from_reads_to_the_end_whatever_size_it_was_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &text).expect("write");
        let file = open_quietly(&path).expect("open");
        for expected in [0, 1, 100, 9_999, 10_000, 50_000] {
            assert_eq!(read_from(&file, 0, expected, u64::MAX).expect("read"), text);
            assert_eq!(
                read_from(&file, 9_000, expected, u64::MAX).expect("read"),
                text[9_000..]
            );
        }
        assert_eq!(read_from(&file, 0, 10, 300).expect("read"), text[..300]);
        assert!(read_from(&file, 20_000, 5, 100).expect("read").is_empty());
        // A directory is an error, not an empty file.
        let dir_file = open_quietly(dir.path()).expect("open dir");
        assert!(read_from(&dir_file, 0, 0, 10).is_err());
    }

    fn fixture(name: &str) -> ProgressObservation {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/progress")
            .join(name);
        read(&path, &Pointers::checkpoint("/last_processed_book_id"))
    }

    fn read_at(checkpoint: u64) -> ProgressObservation {
        ProgressObservation::Read {
            checkpoint,
            items: None,
            completed: None,
        }
    }

    fn unreadable(o: &ProgressObservation) -> bool {
        matches!(o, ProgressObservation::Unreadable { .. })
    }

    #[test]
    fn reads_the_bulk_worker_cursor() {
        assert_eq!(fixture("bulk_worker.json"), read_at(41250));
    }

    #[test]
    fn cursor_as_string_with_thousands_separator() {
        assert_eq!(fixture("checkpoint_as_string.json"), read_at(1234));
    }

    #[test]
    fn utf8_bom_is_skipped() {
        assert_eq!(fixture("utf8_bom.json"), read_at(777));
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
        let ProgressObservation::Unreadable { why } = fixture("empty.json") else {
            panic!()
        };
        assert_eq!(why, "empty file");
        let ProgressObservation::Unreadable { why } = fixture("two_objects.json") else {
            panic!()
        };
        assert!(why.contains("more than one JSON value"), "{why}");
        let ProgressObservation::Unreadable { why } = fixture("truncated.json") else {
            panic!()
        };
        assert!(why.starts_with("truncated JSON"), "{why}");
    }

    #[test]
    fn null_key_and_completed_flag_files_read_normally() {
        assert_eq!(fixture("null_key.json"), read_at(9));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/progress/completed_flag.json");
        let p = Pointers {
            checkpoint: "/last_processed_book_id".into(),
            items: None,
            completion: Some("/completed".into()),
        };
        assert_eq!(
            read(&path, &p),
            ProgressObservation::Read {
                checkpoint: 88400,
                items: None,
                completed: Some(true)
            }
        );
    }

    #[test]
    fn missing_file_is_missing() {
        assert_eq!(
            read(
                Path::new("/nonexistent/p.json"),
                &Pointers::checkpoint("/x")
            ),
            ProgressObservation::Missing
        );
    }

    #[test]
    fn negative_or_fractional_cursor_is_rejected() {
        for text in [
            &br#"{"c": -2}"#[..],
            br#"{"c": -1.0}"#,
            br#"{"c": 1.5}"#,
            br#"{"c": "12a"}"#,
            br#"{"c": null}"#,
        ] {
            assert!(
                unreadable(&parse(text, &Pointers::checkpoint("/c"))),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    /// A worker of a shard starting at key 0, started with `{checkpoint}` = -1, writes -1
    /// back before its first batch: nothing done, never "unreadable" (which would hold it).
    #[test]
    fn minus_one_the_cursor_before_key_0_reads_as_nothing_done() {
        for text in [&br#"{"c": -1}"#[..], br#"{"c": "-1"}"#] {
            assert_eq!(
                parse(text, &Pointers::checkpoint("/c")),
                ProgressObservation::NothingDone,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn nested_and_escaped_pointers_and_array_indices() {
        let text = br#"{"a/b": {"x": [5, {"c~d": 42}]}, "n": "2,000"}"#;
        let p = Pointers {
            checkpoint: "/a~1b/x/1/c~0d".into(),
            items: Some("/n".into()),
            completion: None,
        };
        assert_eq!(
            parse(text, &p),
            ProgressObservation::Read {
                checkpoint: 42,
                items: Some(2000),
                completed: None
            }
        );
    }

    #[test]
    fn a_huge_map_before_the_cursor_is_streamed() {
        let mut text = String::from("{\"completed_files\": {");
        for i in 0..50_000 {
            text.push_str(&format!(
                "\"{i:040}\": {{\"file\": \"/srv/x/{i}.epub\", \"uploaded_at\": \"1\"}},"
            ));
        }
        text.push_str("\"end\": {}}, \"last_processed_book_id\": 61000}");
        assert_eq!(
            parse(
                text.as_bytes(),
                &Pointers::checkpoint("/last_processed_book_id")
            ),
            read_at(61000)
        );
    }
}
