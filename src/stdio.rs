//! automon's own output, written without ever panicking: `println!`/`eprintln!` panic when the
//! write fails (a closed pipe, a full device), which turned `automon start | head -0` into exit
//! 101 after the work was done and killed the control loop when its log filled the disk.
//!
//! - [`outln!`] writes a line to stdout. A closed pipe (`EPIPE`) is success: the reader left.
//!   Another failure (a full device) is remembered; `main` reports it and exits 1.
//! - [`errln!`] writes a line to stderr. A failure is dropped and remembered (see
//!   [`stderr_failure`]) so the control loop can keep it where `automon status` shows it.
//!
//! The control loop hands its stderr to a thread of its own ([`detach_stderr`]): under
//! `automon start` stderr is `STATE_DIR/automon.log`, and a write to a hung file system (a
//! frozen or dead NFS mount) blocks in the kernel until it answers. The loop then only queues
//! lines; a full queue drops them and the next line that gets through says how many were lost.
//! [`reopen_stderr`] (SIGHUP, logrotate) runs on that thread too, and [`finish`] waits, at most
//! a moment, for the queue to drain before the process exits.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static STDOUT_FAILURE: Mutex<Option<String>> = Mutex::new(None);
static STDERR_FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn remember(slot: &Mutex<Option<String>>, e: &std::io::Error) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(e.to_string());
    }
}

/// Writes `text` to stdout in one call; `EPIPE` is success, another error is remembered.
pub fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => remember(&STDOUT_FAILURE, &e),
    }
}

/// Writes `text` to stderr in one call; a failure is remembered, never a panic. Once
/// [`detach_stderr`] ran, the line is queued for the stderr thread instead (dropped, and
/// counted, when the queue is full).
pub fn err(text: &str) {
    match STDERR_QUEUE.get() {
        Some(queue) => match queue.try_send(ToStderr::Text(text.to_string())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        },
        None => write_stderr(text),
    }
}

fn write_stderr(text: &str) {
    let mut o = std::io::stderr().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        remember(&STDERR_FAILURE, &e);
    }
}

/// Lines the stderr queue can hold while stderr does not take them (about 15 minutes of a
/// busy fleet's events); more are dropped and counted.
const STDERR_QUEUE_LINES: usize = 1024;

static STDERR_QUEUE: OnceLock<SyncSender<ToStderr>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// When the stderr thread began the write it is in (ms since the Unix epoch; 0: none).
static WRITING_SINCE_MS: AtomicU64 = AtomicU64::new(0);

enum ToStderr {
    Text(String),
    /// Reopen this file as stdout and stderr (append); the outcome goes back.
    Reopen(PathBuf, Sender<std::io::Result<()>>),
    /// Answered once every line queued before it is written.
    Flush(Sender<()>),
}

/// Hands stderr to a thread of its own (see the module doc). Idempotent.
pub fn detach_stderr() {
    if STDERR_QUEUE.get().is_some() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(STDERR_QUEUE_LINES);
    let spawned = std::thread::Builder::new()
        .name("automon-stderr".into())
        .spawn(move || stderr_thread(&rx));
    if spawned.is_ok() {
        let _ = STDERR_QUEUE.set(tx);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        })
}

fn stderr_thread(rx: &Receiver<ToStderr>) {
    while let Ok(message) = rx.recv() {
        WRITING_SINCE_MS.store(now_ms(), Ordering::Relaxed);
        match message {
            ToStderr::Text(text) => {
                let dropped = DROPPED.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    write_stderr(&format!(
                        "automon: {} of this log {} dropped while it could not be written (a hung or slow file system?); events.log and `automon history` keep the events\n",
                        crate::text::counted(dropped, "line", "lines"),
                        crate::text::plural(dropped, "was", "were")
                    ));
                }
                write_stderr(&text);
            }
            ToStderr::Reopen(path, reply) => {
                let reopened = open_log(&path).and_then(|f| {
                    nix::unistd::dup2_stdout(&f)?;
                    nix::unistd::dup2_stderr(&f)?;
                    Ok(())
                });
                let _ = reply.send(reopened);
            }
            ToStderr::Flush(reply) => {
                let _ = reply.send(());
            }
        }
        WRITING_SINCE_MS.store(0, Ordering::Relaxed);
    }
}

/// Opens automon's log for appending; a new one is private (0600, as every file of the state
/// directory), whatever the umask.
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// How long the stderr thread has been in one write (or reopen), if it is in one.
pub fn stderr_pending() -> Option<Duration> {
    let since = WRITING_SINCE_MS.load(Ordering::Relaxed);
    (since != 0).then(|| Duration::from_millis(now_ms().saturating_sub(since)))
}

/// Reopens `path` as stdout and stderr (append; logrotate), waiting at most `wait`. Without
/// [`detach_stderr`] it runs here. `Ok(false)`: still pending after `wait` (the file system
/// does not answer); it completes on the stderr thread when it does.
pub fn reopen_stderr(path: PathBuf, wait: Duration) -> std::io::Result<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    match STDERR_QUEUE.get() {
        Some(queue) => {
            if queue.try_send(ToStderr::Reopen(path, tx)).is_err() {
                return Ok(false);
            }
        }
        None => {
            let f = open_log(&path)?;
            nix::unistd::dup2_stdout(&f)?;
            nix::unistd::dup2_stderr(&f)?;
            return Ok(true);
        }
    }
    match rx.recv_timeout(wait) {
        Ok(result) => result.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Waits at most `wait` for every queued line to be written (before the process exits).
/// `false`: lines were left (stderr did not answer in time).
pub fn finish(wait: Duration) -> bool {
    let Some(queue) = STDERR_QUEUE.get() else {
        return true;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let deadline = std::time::Instant::now() + wait;
    let mut message = ToStderr::Flush(tx);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Disconnected(_)) => return true,
            Err(TrySendError::Full(m)) => {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                message = m;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        .is_ok()
}

/// The writer the `tracing` subscriber uses: one formatted event is handed to [`err`] whole.
#[derive(Default)]
pub struct ErrWriter(Vec<u8>);

impl Write for ErrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.0.is_empty() {
            err(&String::from_utf8_lossy(&std::mem::take(&mut self.0)));
        }
        Ok(())
    }
}

impl Drop for ErrWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Why a write to stdout failed (other than a closed pipe), if one did.
pub fn stdout_failure() -> Option<String> {
    STDOUT_FAILURE.lock().ok()?.clone()
}

/// Why the last write to stderr failed, if one did since the last [`clear_stderr_failure`].
pub fn stderr_failure() -> Option<String> {
    STDERR_FAILURE.lock().ok()?.clone()
}

/// Forgets a stderr failure (after a later write succeeded, see [`err`]'s callers).
pub fn clear_stderr_failure() {
    if let Ok(mut s) = STDERR_FAILURE.lock() {
        *s = None;
    }
}

/// `println!` that never panics (see the module doc).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdio::out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics (see the module doc).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::stdio::err(&format!("{}\n", format_args!($($arg)*)))
    };
}
