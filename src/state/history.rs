//! The fix history (`STATE_DIR/auto_fix_history.jsonl`, the seed's `auto_fix_history.json` as
//! JSON Lines): one record per line, appended and never rewritten or truncated, so a crash can
//! at worst leave a torn last line, which readers skip with a warning.
//!
//! Records (field `record`): `fix` (a fix was applied: worker, kind, attempt n/max, what was
//! done, the checkpoint, the LLM analysis when there was one), `verification` (its verdict),
//! `code_fix` (how applying a code change ended), `escalation` (paused or failed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::WorkerId;
use crate::clock::BootTime;
use crate::manifest::Desired;
use crate::plan::Memory;

/// File name of the history inside the state directory.
pub const HISTORY_FILE: &str = "auto_fix_history.jsonl";

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// `fix`, `verification`, `code_fix` or `escalation`.
    pub record: String,
    /// When (RFC 3339, UTC).
    pub at: jiff::Timestamp,
    /// The worker.
    pub worker: WorkerId,
    /// The fix kind (`restart`, `config_fix`, `code_fix`), when the record is about a fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Attempt number since the last success, and the manifest's `max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<(u32, u32)>,
    /// What was done or found, in words.
    pub detail: String,
    /// The checkpoint at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// For verifications: whether the fix worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// The LLM's analysis behind the fix, when there was one (already redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<serde_json::Value>,
}

/// Appends records to the history file.
#[derive(Debug, Clone)]
pub struct FixHistory {
    path: PathBuf,
}

impl FixHistory {
    /// The history of `state_dir` (created on first append).
    pub fn open(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(HISTORY_FILE),
        }
    }

    /// Appends one record as one line (a single `write` of the whole line, then fsync). A torn
    /// last line left by a crash is first closed with a newline, so it cannot swallow this one.
    pub fn append(&self, record: &HistoryRecord) {
        use std::os::unix::fs::FileExt;
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let result = super::private::open_append(&self.path).and_then(|mut f| {
            let len = f.metadata()?.len();
            let mut last = [0u8; 1];
            if len > 0 && f.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
                line.insert(0, b'\n');
            }
            f.write_all(&line)?;
            f.sync_data()
        });
        if let Err(e) = result {
            crate::errln!("automon: cannot append to {}: {e}", self.path.display());
        }
    }
}

/// The records of what changed since `old` (the loop hands them to the writer with the
/// snapshot they describe, to be appended once it is on disk, and shows them to `automon
/// history` until then).
pub fn changes(old: &HistoryBasis, new: &Memory, desired: &Desired) -> Vec<HistoryRecord> {
    let mut out = Vec::new();
    {
        let max = desired.fixes.max_attempts;
        for (id, w) in &new.workers {
            let before = old.workers.get(id);
            let old_attempts = before.map(|b| b.attempts.as_slice()).unwrap_or_default();
            for a in &w.fixes.attempts {
                let previous = old_attempts.iter().find(|o| o.at == a.at && o.n == a.n);
                if previous.is_none() {
                    let analysis = w
                        .diagnosis
                        .as_ref()
                        .filter(|d| d.used)
                        .and_then(|d| serde_json::to_value(d).ok());
                    out.push(HistoryRecord {
                        record: "fix".into(),
                        at: a.at_wall,
                        worker: *id,
                        kind: Some(a.kind.name().into()),
                        attempt: Some((a.n, max)),
                        detail: a.detail.clone(),
                        checkpoint: a.checkpoint,
                        succeeded: None,
                        analysis,
                    });
                }
                if let Some(v) = &a.result
                    && previous.is_none_or(|p| !p.verified)
                {
                    out.push(HistoryRecord {
                        record: "verification".into(),
                        at: v.at,
                        worker: *id,
                        kind: Some(a.kind.name().into()),
                        attempt: Some((a.n, max)),
                        detail: v.detail.clone(),
                        checkpoint: w.checkpoint,
                        succeeded: Some(v.succeeded),
                        analysis: None,
                    });
                }
            }
            for (hold, was) in [
                (&w.paused, before.is_some_and(|b| b.paused)),
                (&w.failed, before.is_some_and(|b| b.failed)),
            ] {
                if let Some(h) = hold
                    && !was
                {
                    out.push(HistoryRecord {
                        record: "escalation".into(),
                        at: h.at,
                        worker: *id,
                        kind: None,
                        attempt: None,
                        detail: h.reason.clone(),
                        checkpoint: w.checkpoint,
                        succeeded: None,
                        analysis: None,
                    });
                }
            }
        }
    }
    out
}

/// What [`changes`] compares a memory with: per worker, its fix
/// attempts (when, which, verified yet) and whether it was paused or failed. A few bytes per
/// worker with fixes, where a copy of the whole memory would cost as much as planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryBasis {
    workers: BTreeMap<WorkerId, WorkerBasis>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WorkerBasis {
    attempts: Vec<AttemptBasis>,
    paused: bool,
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttemptBasis {
    at: BootTime,
    n: u32,
    verified: bool,
}

impl HistoryBasis {
    /// The basis of `memory` (workers without fix attempts or holds are left out).
    pub fn of(memory: &Memory) -> Self {
        let workers = memory
            .workers
            .iter()
            .filter(|(_, w)| {
                !w.fixes.attempts.is_empty() || w.paused.is_some() || w.failed.is_some()
            })
            .map(|(id, w)| {
                let attempts = w
                    .fixes
                    .attempts
                    .iter()
                    .map(|a| AttemptBasis {
                        at: a.at,
                        n: a.n,
                        verified: a.result.is_some(),
                    })
                    .collect();
                let basis = WorkerBasis {
                    attempts,
                    paused: w.paused.is_some(),
                    failed: w.failed.is_some(),
                };
                (*id, basis)
            })
            .collect();
        Self { workers }
    }
}

/// Reads every record; a line that does not parse (a torn last line after a crash) is skipped
/// and described in the returned warnings.
///
/// # Errors
/// The I/O error of an unreadable file (an absent file is an empty history).
pub fn read_history(state_dir: &Path) -> std::io::Result<(Vec<HistoryRecord>, Vec<String>)> {
    let path = state_dir.join(HISTORY_FILE);
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            Err(e) => warnings.push(format!(
                "{}:{}: skipped an unreadable record ({e})",
                path.display(),
                i + 1
            )),
        }
    }
    Ok((records, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(worker: u32) -> HistoryRecord {
        HistoryRecord {
            record: "fix".into(),
            at: jiff::Timestamp::UNIX_EPOCH,
            worker: WorkerId(worker),
            kind: Some("restart".into()),
            attempt: Some((1, 3)),
            detail: "restart from checkpoint 40".into(),
            checkpoint: Some(40),
            succeeded: None,
            analysis: None,
        }
    }

    #[test]
    fn a_torn_last_line_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = FixHistory::open(dir.path());
        h.append(&record(1));
        h.append(&record(2));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(HISTORY_FILE))
            .expect("open");
        f.write_all(b"{\"record\":\"fix\",\"at\":\"2026-")
            .expect("tear");
        let (records, warnings) = read_history(dir.path()).expect("read");
        assert_eq!(records.len(), 2);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains(":3: skipped"), "{warnings:?}");
        // Appending after a torn line keeps the new record; the torn line stays skipped.
        h.append(&record(3));
        let (records, warnings) = read_history(dir.path()).expect("read");
        assert_eq!(
            records.iter().map(|r| r.worker.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(warnings.len(), 1);
    }
}
