//! What one worker start submits: the job script (the argv, rendered as for a local start,
//! exec'd by `/bin/sh`), the `sbatch` options, and the environment the job exports. Pure, so
//! it is tested without a cluster.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use crate::WorkerId;
use crate::manifest::{Desired, RuntimeSpec};
use crate::observe::{ENV_FLEET, ENV_STATE_DIR, ENV_WORKER_ID, ENV_WORKERSET};
use crate::plan::StartAction;

fn quote(s: &str) -> Result<String, String> {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .map_err(|e| format!("cannot quote {s:?} for the job script: {e}"))
}

/// The job script: `#!/bin/sh` and one `exec` of the quoted argv (the job's batch step is the
/// worker itself, so `scancel --signal` reaches it directly).
///
/// # Errors
/// An empty command, or an argument that cannot be quoted (a NUL byte).
pub fn script(workerset: &str, action: &StartAction) -> Result<String, String> {
    if action.argv.is_empty() {
        return Err("empty command".into());
    }
    let argv: Vec<String> = action
        .argv
        .iter()
        .map(|a| quote(a))
        .collect::<Result<_, _>>()?;
    Ok(format!(
        "#!/bin/sh\n# automon: WorkerSet {workerset}, worker {}\nexec {}\n",
        action.worker,
        argv.join(" ")
    ))
}

/// `sbatch`'s arguments for worker `id`: `--parsable` (the job id on stdout), its name and
/// comment (how automon finds it again), the working directory, its log (appended to), the
/// whole environment `sbatch` runs with exported, and the manifest's resources and extra
/// options.
pub fn sbatch_args(
    desired: &Desired,
    spec: &RuntimeSpec,
    id: WorkerId,
    comment: &str,
    log: &Path,
) -> Vec<String> {
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", super::job_name(&desired.name, id)),
        format!("--comment={comment}"),
        format!("--chdir={}", desired.workdir.display()),
        format!("--output={}", log.display()),
        "--open-mode=append".into(),
        "--export=ALL".into(),
        "--ntasks=1".into(),
    ];
    args.extend(resource_args(spec));
    args
}

/// The manifest's resources and extra options as `sbatch` options (`spec.runtime`): what a
/// job of this WorkerSet asks for, submitted by automon or exported as an array.
pub fn resource_args(spec: &RuntimeSpec) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(p) = &spec.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(a) = &spec.account {
        args.push(format!("--account={a}"));
    }
    if let Some(t) = spec.time_limit {
        args.push(format!("--time={}", t.get().as_secs().div_ceil(60).max(1)));
    }
    if let Some(n) = spec.cpus_per_worker {
        args.push(format!("--cpus-per-task={n}"));
    }
    if let Some(m) = &spec.mem_per_worker {
        args.push(format!("--mem={m}"));
    }
    args.extend(spec.extra_args.iter().cloned());
    args
}

/// The environment `sbatch` runs with, and so the job's (`--export=ALL`): what a local worker
/// gets ([`crate::secrets::env::child_env`]: never automon's LLM key), the `AUTOMON_*`
/// markers, and `SLURM_CONF` when automon has it (how the client finds the cluster).
pub fn job_env(desired: &Desired, id: WorkerId, state_dir: &Path) -> BTreeMap<OsString, OsString> {
    let mut env = crate::secrets::env::child_env(
        std::env::vars_os(),
        &desired.env,
        desired.inherit_env,
        &desired.llm.api_key_env,
    );
    if let Some(conf) = std::env::var_os("SLURM_CONF") {
        env.entry("SLURM_CONF".into()).or_insert(conf);
    }
    if !env.contains_key(std::ffi::OsStr::new("PATH"))
        && let Some(path) = std::env::var_os("PATH")
    {
        env.insert("PATH".into(), path);
    }
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.into());
    for (k, v) in [
        (ENV_WORKERSET, desired.name.clone()),
        (ENV_WORKER_ID, id.to_string()),
        (ENV_STATE_DIR, state_dir.display().to_string()),
        (ENV_FLEET, crate::state::FleetFiles::of(desired).key()),
    ] {
        env.insert(k.into(), v.into());
    }
    env
}

/// The job id `sbatch --parsable` printed (`17`, or `17;cluster` on a federation).
///
/// # Errors
/// When the output holds no job id.
pub fn parse_job_id(out: &str) -> Result<u64, String> {
    let first = out.trim().split(';').next().unwrap_or_default();
    first
        .parse()
        .map_err(|_| format!("sbatch printed no job id: {:?}", out.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(runtime: &str) -> Desired {
        let text = format!(
            r#"apiVersion: automon/v1
kind: WorkerSet
metadata: {{name: mig}}
spec:
  work: {{range: {{start: 1, end: 801}}, shards: 8}}
  template: {{command: [python3, w.py, "{{id}}"]}}
  progress: {{file: "p{{id}}.json", checkpoint: /c}}
  logs: {{file: "logs/w{{id}}.log"}}
  runtime: {runtime}
"#
        );
        let workerset = crate::manifest::parse(&text).expect("valid manifest");
        let manifest = crate::manifest::Manifest {
            file: "/srv/m.yaml".into(),
            dir: "/srv".into(),
            workerset,
        };
        Desired::resolve(&manifest, None).expect("resolve")
    }

    #[test]
    fn the_script_execs_the_quoted_argv() {
        let action = StartAction {
            worker: WorkerId(3),
            argv: vec!["python3".into(), "my worker.py".into(), "it's".into()],
            resume_from: None,
            reason: String::new(),
        };
        insta::assert_snapshot!(script("mig", &action).expect("script"), @r#"
        #!/bin/sh
        # automon: WorkerSet mig, worker 3
        exec python3 'my worker.py' "it's"
        "#);
    }

    #[test]
    fn sbatch_gets_name_comment_log_and_the_manifests_resources() {
        let d = desired(
            r#"{kind: slurm, partition: batch, account: lib, time_limit: 90s, cpus_per_worker: 2, mem_per_worker: 2G, extra_args: ["--qos=long"]}"#,
        );
        let args = sbatch_args(
            &d,
            &d.runtime,
            WorkerId(3),
            "automon state_dir=/srv/.automon",
            &d.log_path(WorkerId(3)),
        );
        assert_eq!(
            args,
            [
                "--parsable",
                "--job-name=automon/mig/3",
                "--comment=automon state_dir=/srv/.automon",
                "--chdir=/srv",
                "--output=/srv/logs/w3.log",
                "--open-mode=append",
                "--export=ALL",
                "--ntasks=1",
                "--partition=batch",
                "--account=lib",
                "--time=2",
                "--cpus-per-task=2",
                "--mem=2G",
                "--qos=long",
            ]
        );
    }

    #[test]
    fn the_job_gets_the_markers_and_never_the_llm_key() {
        let d = desired("{kind: slurm}");
        let env = job_env(&d, WorkerId(5), Path::new("/srv/.automon"));
        let get = |k: &str| {
            env.get(std::ffi::OsStr::new(k))
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(get(ENV_WORKERSET).as_deref(), Some("mig"));
        assert_eq!(get(ENV_WORKER_ID).as_deref(), Some("5"));
        assert_eq!(get(ENV_STATE_DIR).as_deref(), Some("/srv/.automon"));
        assert_eq!(get(&d.llm.api_key_env), None);
    }

    #[test]
    fn job_ids_are_read_from_parsable_output() {
        assert_eq!(parse_job_id("17\n"), Ok(17));
        assert_eq!(parse_job_id("18;automon-dev\n"), Ok(18));
        assert!(parse_job_id("sbatch: error: Batch job submission failed").is_err());
    }
}
