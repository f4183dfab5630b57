//! The WorkerSet as a Kubernetes `batch/v1` Indexed Job, built from `k8s-openapi`'s v1.33
//! types (never from a text template).
//!
//! | WorkerSet | Job |
//! |---|---|
//! | `work.shards` (or `workers.target` replicas) | `completions`, one index per worker |
//! | `workers.target` | `parallelism` |
//! | `fixes.max_attempts` | `backoffLimitPerIndex` (a shard's pod may fail that often) |
//! | other shards carry on after one escalates | `maxFailedIndexes` = completions |
//! | never two processes for one shard | `podReplacementPolicy: Failed` |
//! | `template.stop_grace` | `terminationGracePeriodSeconds` |
//! | the stuck rule | exec `livenessProbe`: `automon probe`, every `interval` |
//! | `{id}`, range, `{checkpoint}` | the entrypoint `automon run-worker` |
//!
//! The manifest and the workers' files are expected on a shared volume mounted at
//! [`WORKDIR`]; the claim is a placeholder ([`claim_name`]).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ExecAction, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Probe, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Engine, Source};

/// The oldest Kubernetes the Job is valid for: `backoffLimitPerIndex` is GA in 1.33
/// (`podReplacementPolicy` is on by default since 1.29, GA in 1.34).
pub const MIN_KUBERNETES: &str = "1.33";
/// Where the shared volume (the workers' working directory) is mounted in the pod.
pub const WORKDIR: &str = "/work";
/// Label carrying the WorkerSet's name, on the Job and its pods.
pub const LABEL_WORKERSET: &str = "automon.io/workerset";
/// Label naming which worker a pod runs: `indexed` on the template (each pod's index is in
/// Kubernetes' own `batch.kubernetes.io/job-completion-index` label and annotation).
pub const LABEL_WORKER: &str = "automon.io/worker";
/// The exit code that fails a shard's index at once: bad input (automon's own code for it, and
/// that of most command-line programs, e.g. Python's argparse); a retry cannot help.
pub const PERMANENT_EXIT_CODE: i32 = 2;

/// A DNS-1123 name from a WorkerSet name (lower case; `_` and `.` become `-`).
pub fn object_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    s.truncate(63);
    s.trim_matches('-').to_string()
}

/// The placeholder PersistentVolumeClaim of the shared filesystem (NFS or any RWX volume).
pub fn claim_name(name: &str) -> String {
    format!("{}-shared", object_name(name))
}

/// The Secret the workers' secret environment variables are read from.
pub fn secret_name(name: &str) -> String {
    format!("{}-env", object_name(name))
}

/// Builds the Job.
///
/// # Errors
/// A sentence when the manifest lies outside the working directory (see
/// [`Source::manifest_in_workdir`]).
pub fn job(src: &Source<'_>, image: &str) -> Result<Job, String> {
    let d = src.desired;
    let name = object_name(&d.name);
    let manifest = src.manifest_in_workdir()?.to_string_lossy().into_owned();
    let workers = i32::try_from(src.workers()).unwrap_or(i32::MAX);
    let parallelism = i32::try_from(d.counts.target.min(src.workers())).unwrap_or(i32::MAX);
    let labels = BTreeMap::from([(LABEL_WORKERSET.to_string(), d.name.clone())]);
    let mut pod_labels = labels.clone();
    pod_labels.insert(LABEL_WORKER.to_string(), "indexed".to_string());

    let mut entrypoint = vec![
        "automon".to_string(),
        "run-worker".to_string(),
        manifest.clone(),
    ];
    if let Some(end) = src.range_end {
        entrypoint.extend(["--range-end".to_string(), end.to_string()]);
    }
    let secret: std::collections::BTreeSet<&str> =
        d.secret_env.iter().map(String::as_str).collect();
    let env = d
        .env
        .iter()
        .map(|(k, v)| {
            if secret.contains(k.as_str()) {
                EnvVar {
                    name: k.clone(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret_name(&d.name),
                            key: k.clone(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                }
            } else {
                EnvVar {
                    name: k.clone(),
                    value: Some(v.clone()),
                    ..EnvVar::default()
                }
            }
        })
        .collect::<Vec<_>>();
    let interval = i32::try_from(d.interval.as_secs().max(1)).unwrap_or(i32::MAX);
    let probe = Probe {
        exec: Some(ExecAction {
            // The worker id comes from $JOB_COMPLETION_INDEX; the start from pid 1 (the worker
            // itself: run-worker execs it).
            command: Some(vec!["automon".into(), "probe".into(), manifest]),
        }),
        period_seconds: Some(interval),
        // The planner confirms a stuck verdict on a second pass before it acts.
        failure_threshold: Some(
            i32::try_from(crate::plan::STUCK_CONFIRMATIONS).unwrap_or(i32::MAX),
        ),
        timeout_seconds: Some(interval.min(30)),
        ..Probe::default()
    };
    let container = Container {
        name: "worker".into(),
        image: Some(image.to_string()),
        command: Some(entrypoint),
        working_dir: Some(WORKDIR.into()),
        env: (!env.is_empty()).then_some(env),
        liveness_probe: Some(probe),
        volume_mounts: Some(vec![VolumeMount {
            name: "shared".into(),
            mount_path: WORKDIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let grace = d.stop_grace.as_secs() + u64::from(d.stop_grace.subsec_nanos() > 0);
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(i64::try_from(grace).unwrap_or(i64::MAX)),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "shared".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&d.name),
                read_only: None,
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let failure_policy = PodFailurePolicy {
        rules: vec![
            // A pod evicted or preempted did not fail: not counted against the shard.
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
                on_exit_codes: None,
            },
            PodFailurePolicyRule {
                action: "FailIndex".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some("worker".into()),
                    operator: "In".into(),
                    values: vec![PERMANENT_EXIT_CODE],
                }),
                on_pod_conditions: None,
            },
        ],
    };
    let annotations = BTreeMap::from([
        (
            "automon.io/minimum-kubernetes".to_string(),
            MIN_KUBERNETES.to_string(),
        ),
        (
            "automon.io/not-carried-over".to_string(),
            super::not_carried_over(src.manifest, Engine::Kubernetes).join("\n"),
        ),
    ]);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(workers),
            parallelism: Some(parallelism),
            backoff_limit_per_index: Some(i32::try_from(d.fixes.max_attempts).unwrap_or(i32::MAX)),
            max_failed_indexes: Some(workers),
            pod_replacement_policy: Some("Failed".into()),
            pod_failure_policy: Some(failure_policy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The comment printed above the YAML (and on stderr with `-o json`): the minimum version,
/// the requirements, and what cannot be carried over.
pub fn header(src: &Source<'_>, image: &str) -> String {
    let d = src.desired;
    let mut lines = vec![
        format!(
            "Kubernetes Indexed Job exported by automon from {} (WorkerSet {}).",
            src.manifest.file.display(),
            d.name
        ),
        format!(
            "Minimum Kubernetes version: {MIN_KUBERNETES} (backoffLimitPerIndex GA; podReplacementPolicy beta, on by default)."
        ),
        format!(
            "Requires: the image {image} holding the workers' program and the automon binary on PATH (entrypoint `automon run-worker`, liveness `automon probe`);"
        ),
        format!(
            "the PersistentVolumeClaim {} (ReadWriteMany, e.g. NFS) holding the workers' working directory (with {} in it), mounted at {WORKDIR}.",
            claim_name(&d.name),
            src.manifest_in_workdir().unwrap_or_default().display()
        ),
    ];
    if !d.secret_env.is_empty() {
        lines.push(format!(
            "Secret environment variables are read from the Secret {}.",
            secret_name(&d.name)
        ));
    }
    lines.push(format!(
        "Exit code {PERMANENT_EXIT_CODE} (bad input) fails a shard at once; evictions do not count."
    ));
    lines.push("Not carried over:".to_string());
    lines.extend(
        super::not_carried_over(src.manifest, Engine::Kubernetes)
            .into_iter()
            .map(|l| format!("- {l}")),
    );
    lines.iter().map(|l| format!("# {l}\n")).collect()
}
