//! The `--metrics ADDR` endpoint: a minimal HTTP/1.x server on the
//! session's tokio runtime, answering `GET /metrics` with the OpenMetrics
//! text of [`Metrics`] and anything else with 404. No web framework: one
//! request per connection, a bounded request head, a timeout, so a slow or
//! hostile client costs nothing but its own socket.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::metrics::Metrics;
use crate::error::{Error, Result};

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;
/// A client gets this long to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind `addr` now (so a taken port fails before attach) and serve it on
/// the current runtime until the session ends.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening on {addr} for --metrics"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the --metrics address", e))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let m = metrics.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &m)).await;
                    });
                }
                Err(e) => {
                    log::warn!("--metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(local)
}

/// The path of a `GET` request head, if it is one.
fn get_path(head: &str) -> Option<&str> {
    let mut parts = head.lines().next()?.split_whitespace();
    (parts.next()? == "GET").then_some(())?;
    parts.next()
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let (status, ctype, body) = match get_path(&head) {
        Some(p) if p == "/metrics" || p.starts_with("/metrics?") => {
            ("200 OK", CONTENT_TYPE, metrics.encode())
        }
        Some(_) => (
            "404 Not Found",
            "text/plain",
            "lagtrace serves /metrics\n".into(),
        ),
        None => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_paths_are_read() {
        assert_eq!(get_path("GET /metrics HTTP/1.1\r\n"), Some("/metrics"));
        assert_eq!(get_path("POST /metrics HTTP/1.1\r\n"), None);
        assert_eq!(get_path(""), None);
    }
}
