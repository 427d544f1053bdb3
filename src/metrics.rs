//! The `/metrics` and `/health` endpoints both binaries serve: each
//! pipeline keeps its own metrics (`capture::metrics`, `sink::metrics`)
//! and shows them through [`Exposition`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the HTTP endpoints show: Prometheus text, and whether the process
/// is healthy (with a word for why).
pub trait Exposition: Send + Sync + 'static {
    fn render(&self) -> String;
    fn health(&self) -> (bool, &'static str);
}

/// Serves `/metrics` and `/health` on `addr` until the task is dropped.
pub async fn serve<M: Exposition>(addr: SocketAddr, metrics: Arc<M>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /health");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let line = String::from_utf8_lossy(&buf[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body, ctype) = match path {
                    "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                    "/health" => {
                        let (healthy, word) = metrics.health();
                        let status = if healthy { "200 OK" } else { "503 Service Unavailable" };
                        (status, format!("{word}\n"), "text/plain")
                    }
                    _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }))
}
