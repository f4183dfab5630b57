//! `automon history FILE [--worker N] [-o json]`: the fix history — every fix, its verification,
//! code-fix outcomes and escalations. `-o json` prints one JSON array (for jq). While a loop
//! runs, the history comes from it over the control socket (with any records a failed save
//! keeps off disk); with none, from the history file, and the output says which. A torn last
//! line left by a crash is skipped with a warning on stderr.

use std::path::PathBuf;

use clap::Args;

use super::CliError;

/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// Only this worker.
    #[arg(long)]
    pub worker: Option<u32>,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = HistoryFormat::Text)]
    pub output: HistoryFormat,
}

/// Output formats of `history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryFormat {
    /// One line per record.
    Text,
    /// One JSON array.
    Json,
}

/// Runs `history`.
pub fn run(args: &HistoryArgs) -> Result<u8, CliError> {
    let manifest = super::load_manifest(&args.file)?;
    // The worker ids need no range end (end_command is not run): one per shard, or 0..max.
    let ids = crate::manifest::Desired::resolve(&manifest, None)
        .map_err(|e| CliError::input(format!("{}: {e}", args.file.display())))?
        .worker_ids();
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    let file = state_dir.join(crate::state::HISTORY_FILE);
    // While a loop runs, its history (with what a failed save keeps off disk); else the file.
    let (records, warnings, source) = match crate::control::client::history(&state_dir) {
        Ok(Some(h)) => {
            let unsaved = if h.unsaved > 0 {
                format!(
                    "; the last {} not on disk yet (its last save failed)",
                    match h.unsaved {
                        1 => "record is".to_string(),
                        n => format!("{n} records are"),
                    }
                )
            } else {
                String::new()
            };
            let source = format!("from the running loop (pid {}){unsaved}", h.pid);
            (h.records, h.warnings, source)
        }
        answer => {
            let why = match answer {
                Err(e) => format!("the running loop did not answer ({e})"),
                _ => "no loop running".into(),
            };
            let (records, warnings) = crate::state::read_history(&state_dir)
                .map_err(|e| CliError::runtime(format!("{}: {e}", file.display())))?;
            (
                records,
                warnings,
                format!("{why}: read from {}", file.display()),
            )
        }
    };
    for w in &warnings {
        crate::errln!("automon: warning: {w}");
    }
    if let Some(w) = args.worker
        && let Some(why) = unknown_worker(&args.file, w, &ids, &records)
    {
        return Err(CliError::input(why));
    }
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| args.worker.is_none_or(|w| r.worker.0 == w))
        .collect();
    use std::fmt::Write;
    let mut out = String::new();
    match args.output {
        // JSON stays one array for jq; where it came from goes to stderr.
        HistoryFormat::Json => {
            crate::errln!("automon: history: {source}");
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&records)
                    .map_err(|e| CliError::runtime(e.to_string()))?
            );
        }
        HistoryFormat::Text => {
            if records.is_empty() {
                let _ = writeln!(
                    out,
                    "no fixes recorded{}",
                    args.worker
                        .map(|w| format!(" for worker {w}"))
                        .unwrap_or_default()
                );
            }
            for r in &records {
                let local =
                    r.at.to_zoned_datetime(jiff::tz::TimeZone::system())
                        .strftime("%Y-%m-%d %H:%M:%S")
                        .to_string();
                let kind = r.kind.as_deref().unwrap_or("-");
                let attempt = r
                    .attempt
                    .map(|(n, m)| format!(" {n}/{m}"))
                    .unwrap_or_default();
                let verdict = match r.succeeded {
                    Some(true) => " succeeded:",
                    Some(false) => " FAILED:",
                    None => "",
                };
                let _ = writeln!(
                    out,
                    "{local}  worker {:<3} {:<12} {kind}{attempt}{verdict} {}",
                    r.worker, r.record, r.detail
                );
            }
            let _ = writeln!(out, "({source})");
        }
    }
    super::emit(&out)
}

/// Why `--worker N` is bad input: the WorkerSet has no worker `N` and the history has no record
/// of one (a worker of an earlier version of the manifest keeps its records); `None` when it is
/// fine. Names the worker and the ids the WorkerSet has.
fn unknown_worker(
    file: &std::path::Path,
    worker: u32,
    ids: &[crate::WorkerId],
    records: &[crate::state::HistoryRecord],
) -> Option<String> {
    if ids.iter().any(|id| id.0 == worker) || records.iter().any(|r| r.worker.0 == worker) {
        return None;
    }
    let has = match (ids.first(), ids.last()) {
        (Some(a), Some(b)) if a == b => format!("only worker {a}"),
        (Some(a), Some(b)) => format!("workers {a}–{b}"),
        _ => "no workers".into(),
    };
    Some(format!(
        "{}: --worker {worker}: no worker {worker} (this WorkerSet has {has})",
        file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fresh-clone trial): `history --worker 7` on a WorkerSet of workers 0–3
    /// printed "no fixes recorded for worker 7" and exited 0; the README says bad input exits 2.
    #[test]
    fn history_for_a_worker_the_workerset_does_not_have_is_bad_input() {
        let ids: Vec<crate::WorkerId> = (0..4).map(crate::WorkerId).collect();
        let file = std::path::Path::new("m.yaml");
        insta::assert_snapshot!(
            unknown_worker(file, 7, &ids, &[]).unwrap_or_default(),
            @"m.yaml: --worker 7: no worker 7 (this WorkerSet has workers 0–3)"
        );
        assert_eq!(unknown_worker(file, 3, &ids, &[]), None);
        assert_eq!(
            unknown_worker(file, 1, &[crate::WorkerId(0)], &[]).as_deref(),
            Some("m.yaml: --worker 1: no worker 1 (this WorkerSet has only worker 0)")
        );
    }
}
