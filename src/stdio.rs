//! automon's own output, written without ever panicking: `println!`/`eprintln!` panic when the
//! write fails (a closed pipe, a full device), which turned `automon start | head -0` into exit
//! 101 after the work was done and killed the control loop when its log filled the disk.
//!
//! - [`outln!`] writes a line to stdout. A closed pipe (`EPIPE`) is success: the reader left.
//!   Another failure (a full device) is remembered; `main` reports it and exits 1.
//! - [`errln!`] writes a line to stderr. A failure is dropped and remembered (see
//!   [`stderr_failure`]) so the control loop can keep it where `automon status` shows it.

use std::io::Write;
use std::sync::Mutex;

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

/// Writes `text` to stderr in one call; a failure is remembered, never a panic.
pub fn err(text: &str) {
    let mut o = std::io::stderr().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        remember(&STDERR_FAILURE, &e);
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
