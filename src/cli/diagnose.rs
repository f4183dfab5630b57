//! `automon diagnose FILE --worker N`: observe once, gather the worker's diagnostics, ask the
//! LLM, print the validated diagnosis and its notes. Applies nothing. Exit 0 with an answer,
//! 1 when the LLM call fails, 2 on bad input (invalid manifest, unknown worker).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::WorkerId;
use crate::act::llm::{self, DiagnosisOutcome, Diagnostics, LlmClient};

/// Output format of `diagnose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable text.
    Text,
    /// One JSON object: worker, phase, reason, diagnosis, notes, model, cached.
    Json,
}

/// Arguments of `diagnose`.
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The WorkerSet manifest.
    pub file: PathBuf,
    /// The worker id to diagnose.
    #[arg(long)]
    pub worker: WorkerId,
    /// State directory (default: .automon/ beside the manifest).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Print the (redacted) messages that would be sent, and send nothing.
    #[arg(long)]
    pub show_prompt: bool,
}

/// Runs `diagnose`.
pub fn run(args: &DiagnoseArgs) -> Result<u8, CliError> {
    let manifest = super::load_manifest(&args.file)?;
    let desired = super::resolve(&manifest)?;
    let worker = args.worker;
    if !desired.worker_ids().contains(&worker) {
        let ids = desired.worker_ids();
        let last = ids.last().map_or(0, |w| w.0);
        return Err(CliError::input(format!(
            "{}: no worker {worker} (this WorkerSet has workers 0–{last})",
            args.file.display()
        )));
    }
    let client = LlmClient::from_desired(&desired, &manifest.dir)
        .map_err(|e| CliError::input(format!("{}: {e}", args.file.display())))?;
    let state_dir = super::state_dir(&manifest, args.state_dir.as_deref());
    let memory =
        crate::state::load_memory(&state_dir).map_err(|e| CliError::runtime(e.to_string()))?;
    let (observed, now) = super::observe_once(&desired, &memory, &state_dir, false);
    let plan = super::plan_shown(&desired, &observed, &memory, now, &state_dir)?;
    let status = plan
        .workers
        .get(&worker)
        .cloned()
        .unwrap_or(crate::plan::WorkerStatus {
            phase: crate::plan::Phase::Pending,
            reason: "not observed".into(),
        });
    let wmem = memory.workers.get(&worker).cloned().unwrap_or_default();
    let diagnostics = llm::collect_diagnostics(&desired, worker, &status, &wmem, &observed, now);

    if args.show_prompt {
        let (system, user) = client.messages(&diagnostics);
        crate::outln!("POST {} (model {})", client.endpoint(), client.model());
        crate::outln!("--- system ---\n{system}\n--- user ---\n{user}");
        return Ok(0);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime
        .block_on(client.diagnose(&diagnostics))
        .map_err(|e| CliError::runtime(format!("diagnosis of worker {worker} failed: {e}")))?;
    match args.output {
        Output::Text => print_text(&diagnostics, &outcome),
        Output::Json => print_json(&diagnostics, &outcome)?,
    }
    Ok(0)
}

fn print_text(d: &Diagnostics, o: &DiagnosisOutcome) {
    let diag = &o.diagnosis;
    crate::outln!("worker {}: {} — {}", d.worker, d.phase, d.reason);
    crate::outln!(
        "model:       {}{}",
        o.model,
        if o.cached { " (cached)" } else { "" }
    );
    crate::outln!("root cause:  {}", diag.root_cause);
    crate::outln!(
        "fix:         {} (confidence {:.2})",
        diag.fix_type,
        diag.confidence
    );
    if !diag.fix_description.is_empty() {
        crate::outln!("             {}", diag.fix_description);
    }
    if let Some(c) = &diag.config_changes {
        let values: Vec<String> = c
            .values()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        crate::outln!("config:      {}", values.join(", "));
    }
    if let Some(code) = &diag.code_changes {
        crate::outln!("code changes:");
        for line in code.lines() {
            crate::outln!("  | {line}");
        }
    }
    for n in &o.notes {
        crate::outln!("note: {n}");
    }
    crate::outln!("nothing was applied");
}

fn print_json(d: &Diagnostics, o: &DiagnosisOutcome) -> Result<(), CliError> {
    let value = serde_json::json!({
        "worker": d.worker,
        "phase": d.phase,
        "reason": d.reason,
        "diagnosis": o.diagnosis,
        "notes": o.notes,
        "model": o.model,
        "cached": o.cached,
    });
    let text = serde_json::to_string_pretty(&value)
        .map_err(|e| CliError::runtime(format!("cannot render the diagnosis as JSON: {e}")))?;
    crate::outln!("{text}");
    Ok(())
}
