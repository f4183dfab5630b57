//! `automon export`: the same WorkerSet as another engine's native object, carrying over as much
//! of automon's judgment as that engine can hold, and listing the rest.
//!
//! # Layout
//! - [`kubernetes`]: a `batch/v1` Indexed Job built from `k8s-openapi` types.
//! - [`slurm`]: an `sbatch` job-array script.
//! - this file: what both share — where the manifest lies relative to the workers' working
//!   directory, and what cannot be carried over ([`not_carried_over`]).
//!
//! Both run each worker through `automon run-worker` (the entrypoint that renders `{id}`, the
//! shard's range and `{checkpoint}` as the local runtime does), so the automon binary must be
//! where the workers run.

pub mod kubernetes;
pub mod slurm;

use std::path::{Path, PathBuf};

use crate::manifest::{Desired, Manifest};

/// What an export is built from: the manifest as loaded, and resolved with a fixed range end.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The manifest as loaded.
    pub manifest: &'a Manifest,
    /// Resolved with the range end fixed at export time (shards never shift under a running
    /// array).
    pub desired: &'a Desired,
    /// The range end the entrypoint is given (`--range-end`), when the WorkerSet is sharded.
    pub range_end: Option<u64>,
}

impl Source<'_> {
    /// Number of indexes/array elements: one per shard, or `target` replicas.
    pub fn workers(&self) -> u32 {
        self.desired
            .shards
            .as_ref()
            .map_or(self.desired.counts.target, |s| {
                u32::try_from(s.len()).unwrap_or(u32::MAX)
            })
    }

    /// The manifest's path relative to the workers' working directory (e.g.
    /// `manifests/migration.yaml`): where the entrypoint finds it on the shared filesystem.
    ///
    /// # Errors
    /// A sentence when the manifest lies outside the working directory.
    pub fn manifest_in_workdir(&self) -> Result<PathBuf, String> {
        let file = crate::manifest::normalize(&absolute(&self.manifest.file));
        file.strip_prefix(&self.desired.workdir)
            .map(Path::to_path_buf)
            .map_err(|_| {
                format!(
                    "{}: the manifest must lie inside spec.template.workdir ({}), the tree the workers share, for the exported workers to find it",
                    self.manifest.file.display(),
                    self.desired.workdir.display()
                )
            })
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
    }
}

/// The engine an export targets, for [`not_carried_over`]'s wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A Kubernetes Indexed Job: the kubelet restarts hung workers through `automon probe`.
    Kubernetes,
    /// A Slurm job array: Slurm runs each element once; nobody judges them.
    Slurm,
}

/// Everything in the manifest the engine cannot hold, one sentence each, in manifest order.
/// Never empty for Slurm (the stuck rule itself does not travel).
pub fn not_carried_over(m: &Manifest, engine: Engine) -> Vec<String> {
    let spec = &m.workerset.spec;
    let mut out = Vec::new();
    if let Some(setup) = &spec.setup {
        out.push(format!(
            "spec.setup: run `{}` once yourself before submitting (nothing runs it first)",
            crate::text::shell_words(&setup.command)
        ));
    }
    let w = spec.workers;
    out.push(format!(
        "spec.workers min {} / max {} and spec.scaling.disk: no scaling on disk utilisation; {} at once (target)",
        w.min,
        w.max,
        match w.target {
            1 => "1 worker runs".to_string(),
            n => format!("{n} workers run"),
        }
    ));
    match engine {
        Engine::Kubernetes => out.push(format!(
            "spec.restart backoff ({} doubling to {}): Kubernetes' own pod backoff applies (10s doubling to 6m)",
            spec.restart.backoff_initial, spec.restart.backoff_max
        )),
        Engine::Slurm => {
            out.push(
                "spec.health (stuck_after, discovery_grace): no stuck rule; a hung element runs until its time limit"
                    .to_string(),
            );
            out.push(
                "spec.restart: a crashed element is not restarted (retries by Slurm, judgment by nobody); resubmit the script and finished shards exit at once"
                    .to_string(),
            );
        }
    }
    if spec.runtime.kind == crate::manifest::RuntimeKind::Slurm
        && matches!(engine, Engine::Kubernetes)
    {
        out.push(
            "spec.runtime (slurm): the Job runs on Kubernetes; its partition, account, time limit, CPUs and memory are not carried over"
                .to_string(),
        );
    }
    if spec.template.stop_signal != "SIGTERM" {
        out.push(format!(
            "spec.template.stop_signal {}: the engine stops workers with SIGTERM",
            spec.template.stop_signal
        ));
    }
    if spec.fixes.config.enabled && !spec.template.parameters.is_empty() {
        let names: Vec<&str> = spec
            .template
            .parameters
            .keys()
            .map(String::as_str)
            .collect();
        out.push(format!(
            "spec.fixes.config: parameters stay at their defaults ({})",
            names.join(", ")
        ));
    }
    if spec.fixes.code.enabled {
        out.push("spec.fixes.code: no code fixes".to_string());
    }
    if spec.llm.enabled {
        out.push("spec.llm: no LLM diagnosis".to_string());
    }
    out.push(format!(
        "spec.fixes escalation {} after {}: {}",
        serde_json::to_value(spec.fixes.escalation)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        crate::text::counted(spec.fixes.max_attempts, "attempt", "attempts"),
        match engine {
            Engine::Kubernetes =>
                "a shard whose pods failed backoffLimitPerIndex + 1 times is marked failed (no alert, no pause to resume)",
            Engine::Slurm => "nothing escalates",
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let text = format!(
            r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: My_Set.v2}}
spec:
  work: {{range: {{start: 1, end: 101}}, shards: 4}}
  template:
    command: [w, "{{id}}"]
    stop_signal: SIGINT
    stop_grace: 2500ms
  progress: {{file: "p{{id}}.json", checkpoint: /c}}
  logs: {{file: "l{{id}}.log"}}
{extra}"#
        );
        let dir = tempfile::tempdir().unwrap();
        crate::manifest::load_text(&dir.path().join("ws.yaml"), &text, &Default::default())
            .unwrap()
            .0
    }

    #[test]
    fn everything_the_engines_cannot_hold_is_listed() {
        let m = manifest(
            "  fixes: {code: {enabled: true, files: [w]}, escalation: stop_worker}\n  llm: {enabled: true}\n",
        );
        let k8s = not_carried_over(&m, Engine::Kubernetes).join("\n");
        for needle in [
            "spec.fixes.code: no code fixes",
            "spec.llm: no LLM diagnosis",
            "spec.template.stop_signal SIGINT",
            "spec.scaling.disk",
            "escalation stop_worker after 3 attempts",
            "Kubernetes' own pod backoff",
        ] {
            assert!(k8s.contains(needle), "missing {needle:?} in:\n{k8s}");
        }
        let slurm = not_carried_over(&m, Engine::Slurm).join("\n");
        assert!(slurm.contains("no stuck rule"), "{slurm}");
        assert!(!slurm.contains("Kubernetes"), "{slurm}");
        let plain = not_carried_over(&manifest(""), Engine::Kubernetes).join("\n");
        assert!(
            !plain.contains("code fixes") && !plain.contains("LLM"),
            "{plain}"
        );
    }

    #[test]
    fn job_names_are_dns_labels_and_the_grace_rounds_up() {
        assert_eq!(kubernetes::object_name("My_Set.v2"), "my-set-v2");
        assert_eq!(kubernetes::object_name("-x-"), "x");
        let m = manifest("");
        let d = crate::manifest::Desired::resolve(&m, None).unwrap();
        let src = Source {
            manifest: &m,
            desired: &d,
            range_end: Some(101),
        };
        let job = kubernetes::job(&src, "img").unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(3));
    }

    #[test]
    fn replicas_without_a_work_range_run_target_indexes() {
        let text = r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {name: replicas}
spec:
  workers: {target: 3, min: 1, max: 5}
  template: {command: [w, "{id}"]}
  progress: {file: "p{id}.json", checkpoint: /c}
  logs: {file: "l{id}.log"}
"#;
        let dir = tempfile::tempdir().unwrap();
        let m = crate::manifest::load_text(&dir.path().join("ws.yaml"), text, &Default::default())
            .unwrap()
            .0;
        let d = crate::manifest::Desired::resolve(&m, None).unwrap();
        let src = Source {
            manifest: &m,
            desired: &d,
            range_end: None,
        };
        let spec = kubernetes::job(&src, "img").unwrap().spec.unwrap();
        assert_eq!((spec.completions, spec.parallelism), (Some(3), Some(3)));
        let command = spec.template.spec.unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        assert_eq!(command, ["automon", "run-worker", "ws.yaml"]);
        let script = slurm::script(&src, std::path::Path::new("/bin/automon")).unwrap();
        assert!(script.contains("#SBATCH --array=0-2%3\n"), "{script}");
    }

    #[test]
    fn a_manifest_outside_its_workdir_cannot_be_exported() {
        let m = manifest("");
        let mut d = crate::manifest::Desired::resolve(&m, None).unwrap();
        d.workdir = PathBuf::from("/somewhere/else");
        let src = Source {
            manifest: &m,
            desired: &d,
            range_end: None,
        };
        let err = kubernetes::job(&src, "img").unwrap_err();
        assert!(
            err.contains("must lie inside spec.template.workdir"),
            "{err}"
        );
    }
}
