//! How a command reaches the running loop over `STATE_DIR/control.sock` (blocking: the CLI is
//! synchronous), and [`reach_or_lock`]: the loop when one runs, else the state directory's lock,
//! so a request is applied by exactly one of them and never races another.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::state::{InstanceLock, LockError};

/// How long a request may wait for its answer (an `apply` waits for the pass that takes it).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a read-only view (`status`, `get`, `history`) waits for the loop's answer: a loop
/// that is stopped (SIGSTOP) or stuck in the kernel on a hung file system must not hang them.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`reach_or_lock`] keeps trying while the lock is held but no loop answers (a loop
/// starting up, or another command applying its request under the lock).
pub const REACH_TIMEOUT: Duration = Duration::from_secs(120);

/// Reaching the loop failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No loop listens (no socket, or a stale one from a killed loop).
    #[error("no loop running")]
    NoLoop,
    /// The loop answered 503: it is ending, or still in setup (for a view); the message.
    #[error("{0}")]
    Unavailable(String),
    /// Another failure talking to the socket.
    #[error("{0}")]
    Io(String),
}

/// A response from the loop.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// One request to the loop of `state_dir`: `method` `path` with an optional JSON `body`.
///
/// # Errors
/// [`ClientError::NoLoop`] when nothing listens, [`ClientError::Unavailable`] on a 503, else
/// [`ClientError::Io`].
pub fn call(
    state_dir: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError> {
    call_within(state_dir, method, path, body, ANSWER_TIMEOUT)
}

/// [`call`], waiting at most `timeout` for the answer.
///
/// # Errors
/// As [`call`]; no answer in time is [`ClientError::Io`] saying so.
pub fn call_within(
    state_dir: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Io(format!("cannot start the runtime: {e}")))?;
    let socket = super::socket_path(state_dir);
    let answer = runtime.block_on(async {
        tokio::time::timeout(timeout, exchange(&socket, method, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Io(format!(
                    "the control loop did not answer on {} within {}s (stopped, or hung on its file system?)",
                    socket.display(),
                    timeout.as_secs()
                )))
            })
    })?;
    if answer.status == 503 {
        let message = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| "the control loop is unavailable".into());
        return Err(ClientError::Unavailable(message));
    }
    Ok(answer)
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError> {
    use std::io::ErrorKind;
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NoLoop);
        }
        Err(e) => return Err(ClientError::Io(format!("{}: {e}", socket.display()))),
    };
    let io = |e: hyper::Error| ClientError::Io(format!("{}: {e}", socket.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io)?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "automon")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Io(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| {
        // Closed before an answer: the loop ended (or refused the connection at its cap).
        ClientError::Unavailable(format!("the control loop closed the connection: {e}"))
    })?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(io)?
        .to_bytes()
        .to_vec();
    Ok(Answer { status, body })
}

/// Who takes a request: the running loop (its answer), or this command under the lock.
#[derive(Debug)]
pub enum Reached {
    /// The loop answered.
    Loop(Answer),
    /// No loop runs; the caller holds the lock and applies the request itself.
    Locked(InstanceLock),
}

/// Sends a request to the loop of `state_dir`, or takes the state directory's lock when no
/// loop runs; retries while the lock is held by something that does not answer yet (a loop
/// binding its socket, a command applying its own request) or the loop is ending, up to
/// [`REACH_TIMEOUT`]. No process is signalled.
///
/// # Errors
/// In words: the lock cannot be taken and no loop answers in time, or an I/O failure.
pub fn reach_or_lock(
    state_dir: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Reached, String> {
    let deadline = Instant::now() + REACH_TIMEOUT;
    loop {
        let last;
        match call(state_dir, method, path, Some(body.to_vec())) {
            Ok(answer) => return Ok(Reached::Loop(answer)),
            Err(ClientError::NoLoop) => match InstanceLock::acquire(state_dir) {
                Ok(lock) => return Ok(Reached::Locked(lock)),
                Err(e @ LockError::Held { .. }) => last = e.to_string(),
                Err(e) => return Err(e.to_string()),
            },
            Err(ClientError::Unavailable(why)) => last = why,
            Err(ClientError::Io(why)) => return Err(why),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{last}; no control loop answered on {} within {}s",
                super::socket_path(state_dir).display(),
                REACH_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The running loop's [`super::View`], `Ok(None)` when no loop runs.
///
/// # Errors
/// In words: the loop is in setup (no pass yet), or the socket failed.
pub fn view(state_dir: &Path) -> Result<Option<super::View>, String> {
    match call_within(state_dir, "GET", "/v1/view", None, VIEW_TIMEOUT) {
        Ok(a) if a.status == 200 => serde_json::from_slice(&a.body)
            .map(Some)
            .map_err(|e| format!("the control loop's view cannot be read: {e}")),
        Ok(a) => Err(format!(
            "the control loop answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body).trim()
        )),
        Err(ClientError::NoLoop) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The running loop's [`super::HistoryView`], `Ok(None)` when no loop runs.
///
/// # Errors
/// In words: the loop is in setup (no pass yet), or the socket failed.
pub fn history(state_dir: &Path) -> Result<Option<super::HistoryView>, String> {
    match call_within(state_dir, "GET", "/v1/history", None, VIEW_TIMEOUT) {
        Ok(a) if a.status == 200 => serde_json::from_slice(&a.body)
            .map(Some)
            .map_err(|e| format!("the control loop's history cannot be read: {e}")),
        Ok(a) => Err(format!(
            "the control loop answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body).trim()
        )),
        Err(ClientError::NoLoop) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
