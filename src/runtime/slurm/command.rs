//! Running the Slurm client commands with a time limit: a scheduler that does not answer is an
//! error in words, never a hang of the control loop.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

/// The first line of `stderr`, or the exit status when it is empty.
fn failure(program: &str, status: std::process::ExitStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    match first {
        // Slurm's clients begin their messages with their own name.
        Some(line) if line.starts_with(&format!("{program}:")) => line.to_string(),
        Some(line) => format!("{program}: {line}"),
        None => format!("{program} exited with {status}"),
    }
}

/// True when `why` (an error of [`run`]) says the controller did not answer, rather than that
/// it refused the request: the words Slurm 22.05's clients print then, or a time limit.
pub fn unavailable(why: &str) -> bool {
    [
        "Unable to contact slurm controller",
        "Socket timed out",
        "Zero Bytes were transmitted",
        "Connection refused",
        "did not answer within",
    ]
    .iter()
    .any(|w| why.contains(w))
}

/// Runs `cmd` (its program a Slurm client), feeding it `stdin`, and returns its standard
/// output; gives up after `limit` (the command is then killed: it is this automon's child
/// and not reaped yet, so its pid is still its own).
///
/// # Errors
/// A sentence: the program could not be run, exited non-zero (with its first line of
/// stderr), or did not answer within `limit`.
pub fn run(
    cmd: &mut std::process::Command,
    stdin: Option<&str>,
    limit: Duration,
) -> Result<String, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits without reading its input is reported by its status below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => Err(failure(&program, out.status, &out.stderr)),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!(
                "{program} did not answer within {}",
                crate::manifest::duration::format_duration(limit)
            ))
        }
    }
}

/// [`run`] for the async stop tasks: `program` with `args`, no input.
///
/// # Errors
/// As [`run`].
pub async fn run_async(program: &str, args: &[String], limit: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => Err(failure(program, out.status, &out.stderr)),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => Err(format!(
            "{program} did not answer within {}",
            crate::manifest::duration::format_duration(limit)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_errors_and_time_limits_are_words() {
        let mut cat = std::process::Command::new("cat");
        assert_eq!(
            run(&mut cat, Some("job 17\n"), Duration::from_secs(60)).as_deref(),
            Ok("job 17\n")
        );
        let mut fail = std::process::Command::new("sh");
        fail.args([
            "-c",
            "echo 'sbatch: error: Invalid partition name' >&2; exit 1",
        ]);
        assert_eq!(
            run(&mut fail, None, Duration::from_secs(60)),
            Err("sh: sbatch: error: Invalid partition name".into())
        );
        let mut hang = std::process::Command::new("sleep");
        hang.arg("600");
        let err = run(&mut hang, None, Duration::from_millis(200)).expect_err("times out");
        assert!(err.contains("did not answer within"), "{err}");
        let mut missing = std::process::Command::new("automon-no-such-program");
        assert!(
            run(&mut missing, None, Duration::from_secs(60))
                .is_err_and(|e| e.starts_with("cannot run automon-no-such-program"))
        );
    }
}
