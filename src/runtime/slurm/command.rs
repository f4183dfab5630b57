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
/// output; gives up after `limit` and then kills it.
///
/// Its input and output are memory files, not pipes, so nothing has to feed or drain them
/// while it runs. The one place that reaps it is this function's `try_wait`, on this thread,
/// so the kill after the time limit can only reach this child, never a process that took over
/// its pid (a waiting thread that reaped it just as the time ran out once made that possible).
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
    let capture = |what: &str| -> Result<std::fs::File, String> {
        nix::sys::memfd::memfd_create(c"automon-slurm", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map(std::fs::File::from)
            .map_err(|e| format!("cannot run {program}: no memory file for its {what}: {e}"))
    };
    let (out, err) = (capture("output")?, capture("errors")?);
    let to_child = |f: &std::fs::File| {
        f.try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("cannot run {program}: {e}"))
    };
    let input = match stdin {
        // A memory file too, rewound: however long, writing it can never wait for the reader.
        Some(text) => {
            use std::io::Seek;
            let mut f = capture("input")?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.rewind())
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    cmd.stdin(input)
        .stdout(to_child(&out)?)
        .stderr(to_child(&err)?);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                // Not reaped (only `try_wait` above reaps it): the pid is still this child's.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not answer within {}",
                    crate::manifest::duration::format_duration(limit)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    let read = |mut f: std::fs::File| -> Vec<u8> {
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        let _ = f.rewind().and_then(|()| f.read_to_end(&mut bytes));
        bytes
    };
    if status.success() {
        Ok(String::from_utf8_lossy(&read(out)).into())
    } else {
        Err(failure(&program, status, &read(err)))
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
        // A script longer than a pipe holds, to a program that never reads it: with a pipe the
        // write would wait for a reader forever, before any time limit applied.
        let long = "#\n".repeat(200_000);
        let mut deaf = std::process::Command::new("true");
        assert_eq!(
            run(&mut deaf, Some(&long), Duration::from_secs(60)).as_deref(),
            Ok("")
        );
        let mut wc = std::process::Command::new("wc");
        wc.arg("-c");
        assert_eq!(
            run(&mut wc, Some(&long), Duration::from_secs(60))
                .map(|out| out.trim().to_string())
                .as_deref(),
            Ok("400000")
        );
        let mut missing = std::process::Command::new("automon-no-such-program");
        assert!(
            run(&mut missing, None, Duration::from_secs(60))
                .is_err_and(|e| e.starts_with("cannot run automon-no-such-program"))
        );
    }
}
