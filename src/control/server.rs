//! The loop's HTTP server: the control socket (every route) and the optional metrics TCP
//! listener (`/metrics` only), one request per connection, at most [`MAX_CONNECTIONS`] open
//! at once (the rest are closed at once: a flood of idle clients must not take the
//! descriptors the loop needs), a request head within [`READ_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::{Outcome, Request, Verdict};

/// Connections served at once, socket and TCP together; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request body (a manifest and its envelope).
const MAX_BODY: usize = crate::manifest::MAX_MANIFEST_BYTES as usize + 64 * 1024;

/// The Prometheus text format's content type.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the control socket failed.
    #[error("cannot create the control socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Binding the metrics listener failed (address in use, no permission…).
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The loop's end of the channel: typed requests, and the socket file (removed when dropped).
#[derive(Debug)]
pub struct Inbox {
    /// Requests, in arrival order.
    pub requests: mpsc::UnboundedReceiver<Request>,
    ready: watch::Sender<bool>,
    socket: Option<SocketFile>,
    /// What a re-bound socket serves (see [`Inbox::rebind_if_gone`]).
    shared: Option<(PathBuf, Arc<Shared>)>,
}

impl Inbox {
    /// An inbox no server feeds (a loop run without a socket, as in tests).
    pub fn detached() -> Self {
        let (_tx, requests) = mpsc::unbounded_channel();
        Self {
            requests,
            ready: watch::Sender::new(true),
            socket: None,
            shared: None,
        }
    }

    /// Binds the socket again when its path no longer names the socket this loop bound (the
    /// state directory was deleted and recreated under the loop, which re-locked it): commands
    /// must still reach the loop. Returns what happened, in words, when it had to.
    pub fn rebind_if_gone(&mut self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let (state_dir, shared) = self.shared.as_ref()?;
        let socket = self.socket.as_ref()?;
        if std::fs::symlink_metadata(&socket.path).is_ok_and(|m| m.ino() == socket.ino) {
            return None;
        }
        match bind_socket(state_dir) {
            Ok((file, listener)) => {
                tokio::spawn(serve_unix(listener, Arc::clone(shared)));
                let message = format!(
                    "the control socket {} was gone; bound it again",
                    file.path.display()
                );
                self.socket = Some(file);
                Some(message)
            }
            Err(e) => Some(e.to_string()),
        }
    }

    /// Setup is over: requests are now answered after the pass that takes them (before this,
    /// they are queued and answered "queued" at once).
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// The socket path, when a server runs.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_ref().map(|s| s.path.as_path())
    }
}

/// The socket file; removed when dropped, if it is still the one this process bound.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What every connection's service shares.
#[derive(Debug)]
struct Shared {
    tx: mpsc::UnboundedSender<Request>,
    ready: watch::Receiver<bool>,
    metrics: watch::Receiver<String>,
    permits: Arc<Semaphore>,
}

/// Binds `STATE_DIR/control.sock` (the caller holds the state directory's lock, so a socket
/// already there is a stale one from a killed loop and is replaced) and, with `metrics_addr`,
/// a TCP listener for `/metrics`; serves both on the current runtime and forwards SIGHUP as
/// [`Request::Reload`]. `metrics` is the latest metrics text.
///
/// # Errors
/// [`ServeError`] when the socket or the TCP listener cannot be bound.
pub fn start(
    state_dir: &Path,
    metrics_addr: Option<SocketAddr>,
    metrics: watch::Receiver<String>,
) -> Result<Inbox, ServeError> {
    let (socket, listener) = bind_socket(state_dir)?;
    let tcp = match metrics_addr {
        Some(addr) => Some(bind_tcp(addr)?),
        None => None,
    };
    let (tx, requests) = mpsc::unbounded_channel();
    let (ready, ready_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        tx: tx.clone(),
        ready: ready_rx,
        metrics,
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    });
    tokio::spawn(serve_unix(listener, Arc::clone(&shared)));
    if let Some(tcp) = tcp {
        tokio::spawn(serve_tcp(tcp, Arc::clone(&shared)));
    }
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(Request::Reload).is_err() {
                    break;
                }
            }
        });
    }
    Ok(Inbox {
        requests,
        ready,
        socket: Some(socket),
        shared: Some((state_dir.to_path_buf(), shared)),
    })
}

/// Binds the socket under a temporary name, makes it 0600, then renames it into place: it
/// is never reachable with wider permissions.
fn bind_socket(state_dir: &Path) -> Result<(SocketFile, tokio::net::UnixListener), ServeError> {
    use std::os::unix::fs::MetadataExt;
    let path = super::socket_path(state_dir);
    let err = |source| ServeError::Socket {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let tmp = state_dir.join(format!(".control.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::symlink_metadata(&path));
    match placed {
        Ok(meta) => Ok((
            SocketFile {
                path,
                ino: meta.ino(),
            },
            listener,
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err(e))
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    let bind = || {
        let socket = std::net::TcpListener::bind(addr)?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(socket)
    };
    bind().map_err(|source| ServeError::Bind { addr, source })
}

/// True when `addr` is reachable only from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

async fn serve_unix(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        serve_connection(stream, Arc::clone(&shared), true);
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        serve_connection(stream, Arc::clone(&shared), false);
    }
}

/// Serves one connection in its own task, or closes it at once when [`MAX_CONNECTIONS`] are
/// open. `control`: the control routes are served (the socket), else `/metrics` only.
fn serve_connection<S>(stream: S, shared: Arc<Shared>, control: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = Arc::clone(&shared.permits).try_acquire_owned() else {
        drop(stream);
        return;
    };
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(route(req, &shared, control).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT)
            .keep_alive(false)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        drop(permit);
    });
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: u16, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match serde_json::to_string(value) {
        Ok(body) => text(status, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot serialize: {e}\n"),
        ),
    }
}

fn unavailable(message: &str) -> Response<Full<Bytes>> {
    json(503, &serde_json::json!({ "message": message }))
}

/// The loop ended before it answered.
const ENDING: &str = "the control loop is ending";

async fn route(
    req: hyper::Request<Incoming>,
    shared: &Shared,
    control: bool,
) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/metrics") => {
            let body = shared.metrics.borrow().clone();
            text(StatusCode::OK, METRICS_TYPE, body)
        }
        (Method::GET, "/v1/view") if control => {
            if !*shared.ready.borrow() {
                return unavailable("the control loop is running spec.setup; no pass yet");
            }
            let (reply, rx) = oneshot::channel();
            if shared.tx.send(Request::View { reply }).is_err() {
                return unavailable(ENDING);
            }
            match rx.await {
                Ok(view) => json(200, &view),
                Err(_) => unavailable(ENDING),
            }
        }
        (Method::GET, "/v1/history") if control => {
            if !*shared.ready.borrow() {
                return unavailable("the control loop is running spec.setup; no pass yet");
            }
            let (reply, rx) = oneshot::channel();
            if shared.tx.send(Request::History { reply }).is_err() {
                return unavailable(ENDING);
            }
            match rx.await {
                Ok(history) => json(200, &history),
                Err(_) => unavailable(ENDING),
            }
        }
        (Method::POST, "/v1/operator" | "/v1/apply") if control => {
            let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        plain,
                        format!("cannot read the request body: {e}\n"),
                    );
                }
            };
            submit(&path, &bytes, shared).await
        }
        (_, "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "only GET /metrics\n".into(),
        ),
        _ if control => text(
            StatusCode::NOT_FOUND,
            plain,
            "not found: /metrics, GET /v1/view, GET /v1/history, POST /v1/operator, POST /v1/apply\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            plain,
            "not found: try /metrics\n".into(),
        ),
    }
}

/// Hands an operator request or a manifest to the loop; waits for its outcome, or answers
/// "queued" at once while setup runs.
async fn submit(path: &str, bytes: &[u8], shared: &Shared) -> Response<Full<Bytes>> {
    let ready = *shared.ready.borrow();
    let (reply, rx) = oneshot::channel();
    let reply = ready.then_some(reply);
    let bad = |e: serde_json::Error| {
        text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            format!("bad request body: {e}\n"),
        )
    };
    let (request, what) = if path == "/v1/apply" {
        match serde_json::from_slice(bytes) {
            Ok(body) => (Request::Apply { body, reply }, "the manifest"),
            Err(e) => return bad(e),
        }
    } else {
        match serde_json::from_slice(bytes) {
            Ok(body) => (Request::Operator { body, reply }, "the request"),
            Err(e) => return bad(e),
        }
    };
    if shared.tx.send(request).is_err() {
        return unavailable(ENDING);
    }
    if !ready {
        let queued = Outcome {
            verdict: Verdict::Queued,
            message: format!(
                "queued: the control loop is running spec.setup; it applies {what} right after"
            ),
            lines: Vec::new(),
        };
        return json(queued.http_status(), &queued);
    }
    match rx.await {
        Ok(outcome) => json(outcome.http_status(), &outcome),
        Err(_) => unavailable(ENDING),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn raw(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), req: &str) -> String {
        stream.write_all(req.as_bytes()).await.expect("send");
        let mut got = String::new();
        stream
            .read_to_string(&mut got)
            .await
            .expect("read to close");
        got
    }

    #[tokio::test]
    async fn socket_is_private_serves_metrics_and_is_removed_when_the_inbox_drops() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // A stale socket file left by a killed loop is replaced.
        drop(std::os::unix::net::UnixListener::bind(
            dir.path().join(super::super::SOCKET_FILE),
        ));
        let (tx, rx) = watch::channel(String::from("first 1\n"));
        let inbox = start(dir.path(), None, rx).expect("start");
        let path = super::super::socket_path(dir.path());
        let meta = std::fs::metadata(&path).expect("socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        tx.send_replace("second 2\n".into());
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let got = raw(&mut s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("text/plain; version=0.0.4"), "{got}");
        assert!(got.ends_with("\r\n\r\nsecond 2\n"), "{got}");
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let got = raw(&mut s, "hello\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        drop(inbox);
        assert!(!path.exists(), "socket removed");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
    }

    #[tokio::test]
    async fn tcp_serves_metrics_only_never_the_control_routes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let (_tx, rx) = watch::channel(String::from("secret_free 1\n"));
        let inbox = start(dir.path(), Some(port), rx).expect("start");
        for (req, status) in [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK"),
            ("GET /v1/view HTTP/1.1\r\nHost: x\r\n\r\n", "404 Not Found"),
            (
                "POST /v1/operator HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                "404 Not Found",
            ),
            (
                "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "405 Method Not Allowed",
            ),
        ] {
            let mut s = tokio::net::TcpStream::connect(port).await.expect("connect");
            let got = raw(&mut s, req).await;
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{req}: {got}"
            );
        }
        drop(inbox);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_the_rest_still_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_tx, rx) = watch::channel(String::from("m 1\n"));
        let inbox = start(dir.path(), None, rx).expect("start");
        let path = super::super::socket_path(dir.path());
        // MAX_CONNECTIONS idle clients that never send a request hold every permit.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(
                tokio::net::UnixStream::connect(&path)
                    .await
                    .expect("connect"),
            );
        }
        // Give the server time to accept them (no assertion on how long this takes).
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        let mut extra = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let mut buf = Vec::new();
        // Refused at once: closed without an answer, long before the idle ones time out.
        let n = tokio::time::timeout(Duration::from_secs(60), extra.read_to_end(&mut buf))
            .await
            .expect("closed, not kept waiting")
            .unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
        drop(idle);
        // Permits come back when the idle connections close; a client is served again.
        let mut served = false;
        for _ in 0..600 {
            let mut s = tokio::net::UnixStream::connect(&path)
                .await
                .expect("connect");
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut got = String::new();
            let _ = s.read_to_string(&mut got).await;
            if got.starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "served again after the idle clients left");
        drop(inbox);
    }

    #[tokio::test]
    async fn requests_before_setup_ends_are_queued_and_reach_the_loop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_tx, rx) = watch::channel(String::new());
        let mut inbox = start(dir.path(), None, rx).expect("start");
        let path = super::super::socket_path(dir.path());
        let body = r#"{"kind":"Pause","worker":3,"command":"automon pause w.yaml 3"}"#;
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let got = raw(
            &mut s,
            &format!(
                "POST /v1/operator HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 202"), "{got}");
        assert!(got.contains("queued"), "{got}");
        match inbox.requests.recv().await {
            Some(Request::Operator { body, reply: None }) => {
                assert_eq!(body.worker, crate::WorkerId(3));
            }
            other => panic!("expected a queued pause, got {other:?}"),
        }
    }
}
