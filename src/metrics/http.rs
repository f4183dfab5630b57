//! A tiny HTTP/1.1 responder for `GET /metrics` (no web framework): one request per connection,
//! then the connection is closed. `GET`/`HEAD /metrics` → 200 with the latest text; any other
//! path → 404; any other method → 405; an unreadable request → 400.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request head read; a longer one is answered 400.
const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The full response (status line, headers, body) to a request head (`head` is everything up to
/// and including the blank line, or what arrived of it); `metrics` is the body of `/metrics`.
pub fn respond(head: &[u8], metrics: &str) -> Vec<u8> {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let valid = version.is_some_and(|v| v.starts_with("HTTP/1.")) && parts.next().is_none();
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, body, head_only) = match (valid, method, path) {
        (false, _, _) => ("400 Bad Request", "bad request\n", false),
        (true, Some(m @ ("GET" | "HEAD")), Some("/metrics")) => ("200 OK", metrics, m == "HEAD"),
        (true, Some("GET" | "HEAD"), _) => ("404 Not Found", "not found: try /metrics\n", false),
        _ => ("405 Method Not Allowed", "only GET /metrics\n", false),
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads a request head: until the blank line, [`MAX_HEAD`] bytes, or the peer stops sending.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// Answers connections on `listener` with the latest text from `metrics` until the runtime
/// ends. Each connection is served in its own task; errors on one connection end only it.
pub async fn serve(listener: TcpListener, metrics: watch::Receiver<String>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Ok(head) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await else {
                return;
            };
            let body = metrics.borrow().clone();
            let response = respond(&head, &body);
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).expect("utf-8")
    }

    #[test]
    fn get_metrics_is_the_text_with_its_content_type_and_length() {
        let r = text(respond(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "a 1\n",
        ));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(
            r.contains("Content-Length: 4\r\nConnection: close\r\n\r\na 1\n"),
            "{r}"
        );
        let h = text(respond(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", "a 1\n"));
        assert!(
            h.starts_with("HTTP/1.1 200 OK") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
    }

    #[test]
    fn other_paths_methods_and_garbage_are_refused() {
        for (req, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", "404 Not Found"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            (b"hello\r\n\r\n", "400 Bad Request"),
            (b"", "400 Bad Request"),
        ] {
            let r = text(respond(req, "secret 1\n"));
            assert!(r.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{r}");
            assert!(!r.contains("secret"), "{r}");
        }
    }

    #[tokio::test]
    async fn serves_the_latest_snapshot_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = watch::channel(String::from("first 1\n"));
        tokio::spawn(serve(listener, rx));
        tx.send_replace("second 2\n".into());
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut got = String::new();
        s.read_to_string(&mut got).await.expect("read to close");
        assert!(got.ends_with("\r\n\r\nsecond 2\n"), "{got}");
    }
}
