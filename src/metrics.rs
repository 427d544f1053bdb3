//! The `/metrics` and `/health` endpoints both binaries serve: each
//! pipeline keeps its own metrics (`capture::metrics`, `sink::metrics`)
//! and shows them through [`Exposition`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What the HTTP endpoints show: Prometheus text, and whether the process
/// is healthy (with a word for why).
pub trait Exposition: Send + Sync + 'static {
    fn render(&self) -> String;
    fn health(&self) -> (bool, &'static str);
}

/// Connections served at once; more wait in the listen backlog, so a
/// flood of slow clients costs a few tasks, not memory per connection.
const MAX_CONNECTIONS: usize = 16;
/// A client gets this long to send its request, and again to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/health` on `addr` until the task is dropped.
pub async fn serve<M: Exposition>(addr: SocketAddr, metrics: Arc<M>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /health");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let sock = match listener.accept().await {
                Ok((sock, _)) => {
                    backoff = Duration::from_millis(10);
                    sock
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                answer(sock, &*metrics).await;
                drop(slot);
            });
        }
    }))
}

/// Reads one request line and answers it, each step within [`IO_TIMEOUT`].
async fn answer<M: Exposition>(mut sock: TcpStream, metrics: &M) {
    let mut buf = [0u8; 1024];
    let n = match tokio::time::timeout(IO_TIMEOUT, sock.read(&mut buf)).await {
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
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Exposition for Fixed {
        fn render(&self) -> String {
            "walhouse_up 1\n".into()
        }
        fn health(&self) -> (bool, &'static str) {
            (true, "ok")
        }
    }

    /// More idle clients than the endpoint serves at once: each is cut off
    /// after its read timeout, and a real request is still answered.
    #[tokio::test]
    async fn idle_clients_beyond_the_limit_do_not_stop_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let _server = serve(addr, Arc::new(Fixed)).await.expect("serves");
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 4 {
            idle.push(TcpStream::connect(addr).await.expect("connects"));
        }
        let mut sock = TcpStream::connect(addr).await.expect("connects");
        sock.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.expect("request");
        let mut answer = String::new();
        tokio::time::timeout(IO_TIMEOUT * 4, sock.read_to_string(&mut answer))
            .await
            .expect("answered once the idle clients timed out")
            .expect("reads");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("walhouse_up 1\n"),
            "{answer}"
        );
    }
}
