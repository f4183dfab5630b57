//! [`Reporter`]: what the control loop publishes after each pass — `STATE_DIR/status.json`, the
//! metrics textfile and the snapshot the control server serves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::{MetricsSnapshot, phase_name, render_metrics};
use crate::manifest::Desired;
use crate::observe::disk::DiskObservation;
use crate::plan::{Memory, Plan};
use crate::state::{self, DaemonStatus};

/// Where the loop publishes what it did.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Serve `GET /metrics` on this address (`--metrics-addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Write the metrics to this file after each pass, for node_exporter's textfile collector
    /// (`--metrics-textfile`; the name should end in `.prom`).
    pub metrics_textfile: Option<PathBuf>,
    /// Logs are JSON (`--log-format json`): events are not echoed as plain lines on stderr, they
    /// reach it through `tracing` only.
    pub json_logs: bool,
}

/// Publishes after each pass; holds this process's identity for the status file.
#[derive(Debug)]
pub struct Reporter {
    state_dir: PathBuf,
    textfile: Option<PathBuf>,
    served: Option<watch::Sender<String>>,
    watch: bool,
    started_at: jiff::Timestamp,
    passes: u64,
    /// The last write failure reported, so a persistent one is not repeated every pass.
    last_problem: Option<String>,
    /// The last pass's status, as written to `status.json` (the loop's view serves it).
    last_status: Option<DaemonStatus>,
    /// Where `status.json` is written; `None`: at once, by the caller.
    writer: Option<state::StateWriter>,
    /// The last `status.json` failure the writer thread reported (said once while it lasts).
    status_problem: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Reporter {
    /// A reporter for the loop on `state_dir`; `served` receives the metrics text after each
    /// pass (the control server serves it).
    pub fn new(
        opts: &ReportOptions,
        state_dir: &Path,
        watch: bool,
        served: Option<watch::Sender<String>>,
    ) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            textfile: opts.metrics_textfile.clone(),
            served,
            watch,
            started_at: jiff::Timestamp::now(),
            passes: 0,
            last_problem: None,
            last_status: None,
            writer: None,
            status_problem: std::sync::Arc::default(),
        }
    }

    /// From now on `status.json` is written on `writer`'s thread (a hung state directory
    /// does not hold the pass, nor the metrics published after it).
    pub fn write_through(&mut self, writer: state::StateWriter) {
        self.writer = Some(writer);
    }

    /// The last pass's status, `None` before the first.
    pub fn last_status(&self) -> Option<&DaemonStatus> {
        self.last_status.as_ref()
    }

    /// Publishes one pass: status file, metrics textfile, HTTP snapshot. Failures to write are
    /// logged (once while they persist) and never end the loop.
    pub fn after_pass(
        &mut self,
        desired: &Desired,
        memory: &Memory,
        plan: &Plan,
        disk: Option<&DiskObservation>,
        took: Duration,
    ) {
        self.passes += 1;
        let now = jiff::Timestamp::now();
        let snap = MetricsSnapshot::from_pass(
            plan,
            memory,
            desired.counts.target,
            disk,
            took,
            self.passes,
            now,
        );
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            target: "automon::pass",
            pass = self.passes,
            duration_ms = took_ms,
            desired = snap.desired,
            running = snap.running,
            "pass done"
        );
        let status = DaemonStatus {
            workerset: desired.name.clone(),
            pid: std::process::id(),
            started_at: self.started_at,
            watch: self.watch,
            last_pass_at: now,
            last_pass_ms: took_ms,
            passes: self.passes,
            phases: super::listed_phases(&snap.phases)
                .map(|p| {
                    (
                        phase_name(p).to_string(),
                        snap.phases.get(&p).copied().unwrap_or(0),
                    )
                })
                .collect(),
            desired: snap.desired,
            running: snap.running,
        };
        let mut problems = Vec::new();
        if let Some(w) = &self.writer {
            let (dir, copy) = (self.state_dir.clone(), status.clone());
            let last = self.status_problem.clone();
            w.submit("writing status.json", move || {
                let problem = state::write_status(&dir, &copy)
                    .err()
                    .map(|e| format!("cannot write {}: {e}", state::status_file(&dir).display()));
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if problem.is_some() && *last != problem {
                    tracing::warn!("{}", problem.as_deref().unwrap_or_default());
                }
                *last = problem;
            });
        } else if let Err(e) = state::write_status(&self.state_dir, &status) {
            problems.push(format!(
                "cannot write {}: {e}",
                state::status_file(&self.state_dir).display()
            ));
        }
        self.last_status = Some(status);
        if self.textfile.is_some() || self.served.is_some() {
            let text = render_metrics(&snap);
            if let Some(path) = &self.textfile
                && let Err(e) = write_textfile(path, &text)
            {
                problems.push(format!("cannot write {}: {e}", path.display()));
            }
            if let Some(tx) = &self.served {
                tx.send_replace(text);
            }
        }
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        if problem.is_some() && problem != self.last_problem {
            tracing::warn!("{}", problem.as_deref().unwrap_or_default());
        }
        self.last_problem = problem;
    }
}

/// Writes `text` to `path` atomically for node_exporter: a temp file in the same directory
/// (readable by all, as the collector may run as another user), then rename.
fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".automon-metrics")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textfile_is_replaced_whole_and_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("automon.prom");
        write_textfile(&path, "a 1\n").expect("first");
        write_textfile(&path, "b 2\n").expect("second");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "b 2\n");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(left.len(), 1, "no temp files left behind");
    }
}
