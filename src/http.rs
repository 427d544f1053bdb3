//! A minimal HTTP/1.1 client for the Schema Registry's REST API.
//!
//! One request per connection (`Connection: close`), bodies read by
//! `Content-Length`, chunked encoding or EOF. That is all the Confluent API
//! needs, and it keeps an HTTP stack (hyper, h2, tower) out of the build.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bodies above this are refused: registry answers are small.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL: expected http://host[:port][/path] or https://…")]
    Url,
    #[error("the URL carries credentials (user:password@), which would travel in logs and errors. Fix: give the host alone, and --schema-registry-user with --schema-registry-password (or WALHOUSE_SCHEMA_REGISTRY_PASSWORD)")]
    Credentials,
    #[error("cannot reach {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("request to {address} timed out after {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("TLS with {address}: {source}")]
    Tls { address: String, source: std::io::Error },
    #[error("malformed HTTP response from {address}: {reason}")]
    Response { address: String, reason: String },
}

impl HttpError {
    /// Network trouble that a retry may cure.
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Timeout { .. })
    }
}

/// A parsed `http(s)://host:port/base` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` or `/registry`).
    pub base: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        // Never echoes the URL: it may carry credentials.
        let bad = || HttpError::Url;
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (hostport, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        if hostport.contains('@') {
            return Err(HttpError::Credentials);
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().map_err(|_| bad())?),
            _ => (hostport, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        let base = format!("/{}", path.trim_end_matches('/'));
        Ok(BaseUrl {
            tls,
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            base: if base == "/" { String::new() } else { base },
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request and reads the whole response.
pub async fn request(
    url: &BaseUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let address = url.address();
    let work = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| HttpError::Connect {
                address: address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if url.tls {
            let config = tls.cloned().ok_or_else(|| HttpError::Tls {
                address: address.clone(),
                source: std::io::Error::other("no TLS configuration"),
            })?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|_| HttpError::Tls {
                address: address.clone(),
                source: std::io::Error::other("invalid server name"),
            })?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    address: address.clone(),
                    source,
                })?;
            exchange(stream, url, method, path, headers, body, &address).await
        } else {
            exchange(tcp, url, method, path, headers, body, &address).await
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout {
            address: address.clone(),
            after: timeout,
        })?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    url: &BaseUrl,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
    address: &str,
) -> Result<Response, HttpError> {
    let io = |source: std::io::Error| HttpError::Connect {
        address: address.into(),
        source,
    };
    let mut req = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: walhouse/{}\r\n",
        url.base,
        url.host,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await;
        match n {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A TLS peer that closes without close_notify still sent a whole response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(io(e)),
        }
        if raw.len() > MAX_BODY {
            return Err(HttpError::Response {
                address: address.into(),
                reason: "response too large".into(),
            });
        }
    }
    parse_response(&raw).map_err(|reason| HttpError::Response {
        address: address.into(),
        reason,
    })
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                content_length = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = content_length {
        rest.get(..n).ok_or("body shorter than Content-Length")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk size line")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = BaseUrl::parse("http://127.0.0.1:8081").expect("url");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base.as_str()),
            (false, "127.0.0.1", 8081, "")
        );
        let u = BaseUrl::parse("https://registry.example/sr/").expect("url");
        assert_eq!((u.tls, u.port, u.base.as_str()), (true, 443, "/sr"));
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("http://:80").is_err());
    }

    #[test]
    fn responses_by_length_chunks_and_eof() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((r.status, r.body.as_slice()), (409, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope").expect("eof");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }
}
