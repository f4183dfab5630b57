//! `automon history FILE [--worker N] [-o json]`: the fix history — every fix, its verification,
//! code-fix outcomes and escalations. `-o json` prints one JSON array (for jq). A torn last line
//! left by a crash is skipped with a warning on stderr.

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
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    let (records, warnings) = crate::state::read_history(&state_dir).map_err(|e| {
        CliError::runtime(format!(
            "{}: {e}",
            state_dir.join(crate::state::HISTORY_FILE).display()
        ))
    })?;
    for w in &warnings {
        crate::errln!("automon: warning: {w}");
    }
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| args.worker.is_none_or(|w| r.worker.0 == w))
        .collect();
    use std::fmt::Write;
    let mut out = String::new();
    match args.output {
        HistoryFormat::Json => {
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
        }
    }
    super::emit(&out)
}
