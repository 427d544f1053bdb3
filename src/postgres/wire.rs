//! The frontend/backend protocol spoken directly: connect, TLS, startup,
//! authentication, and framing of backend messages
//! (<https://www.postgresql.org/docs/15/protocol-flow.html>).
//!
//! Two connections use it: the replication connection, which tokio-postgres
//! cannot open, and the snapshot's COPY connections, where tokio-postgres
//! hands every row message through its connection task and a channel. Here
//! a row is a slice of a 256 KiB read buffer: reading and parsing a COPY
//! measured 10–20 % less CPU (`cargo bench --bench kafka`).

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::conninfo::ConnInfo;
use super::error::{ErrorContext, ServerError, SourceError};
use super::tls::{negotiate, Socket};

/// Session settings of every walhouse connection to the source, which
/// decide the text form of every value pgoutput and COPY send.
pub const OUTPUT_SETTINGS: [(&str, &str); 5] = [
    ("datestyle", "ISO"),
    ("timezone", "UTC"),
    ("intervalstyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// [`OUTPUT_SETTINGS`] as the startup packet's `options` (`-c name=value …`).
fn output_options() -> String {
    OUTPUT_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Read granularity: big enough that a catch-up stream or a COPY costs few
/// syscalls.
const READ_CHUNK: usize = 256 * 1024;

/// One backend message: tag byte and body.
pub(super) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Which kind of session the startup packet asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Session {
    /// `replication=database`: replication commands and simple SQL.
    Replication,
    /// An ordinary backend.
    Sql,
}

/// Buffered, cancel-safe framing over the socket.
pub(super) struct Wire {
    pub socket: Socket,
    inbuf: BytesMut,
    pub outbuf: BytesMut,
}

impl Wire {
    /// Connects, negotiates TLS per `sslmode`, authenticates and waits for
    /// the server to be ready. Returns the wire and the server's
    /// `server_version_num`-like number (150004 for 15.4).
    pub async fn connect(info: &ConnInfo, session: Session) -> Result<(Wire, u32), SourceError> {
        let info = &*super::client::pick_host(info).await?;
        let address = info.address();
        let tcp = timeout(
            info.connect_timeout,
            TcpStream::connect((info.host.as_str(), info.port)),
        )
        .await
        .map_err(|_| SourceError::Connect {
            address: address.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| SourceError::Connect {
            address: address.clone(),
            source,
        })?;
        tcp.set_nodelay(true).map_err(SourceError::ConnectionLost)?;
        let socket = negotiate(tcp, info).await?;
        let mut wire = Wire {
            socket,
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            outbuf: BytesMut::new(),
        };
        let version = wire.startup(info, session).await?;
        Ok((wire, version))
    }

    async fn startup(&mut self, info: &ConnInfo, session: Session) -> Result<u32, SourceError> {
        let options = output_options();
        let mut params = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("application_name", info.application_name.as_str()),
            // pgoutput and COPY convert names and text values to the client encoding.
            ("client_encoding", "UTF8"),
            // Values are printed by the server's output functions under the
            // session settings: fix the ones that shape the text, so parsing
            // is exact whatever the server's defaults.
            ("options", options.as_str()),
        ];
        if session == Session::Replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.outbuf)
            .map_err(|e| SourceError::Protocol(e.to_string()))?;
        self.flush_out().await?;
        self.authenticate(info).await?;
        let mut version = 0;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'Z' => return Ok(version),
                b'S' => {
                    let mut parts = f.body.split(|&b| b == 0);
                    if parts.next() == Some(b"server_version") {
                        let v = String::from_utf8_lossy(parts.next().unwrap_or_default());
                        version = parse_server_version(&v);
                    }
                }
                b'K' | b'N' => {}
                b'E' => return Err(SourceError::from_server(ServerError::parse(&f.body), &context(info))),
                other => return Err(unexpected(other, "startup")),
            }
        }
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<(), SourceError> {
        let password = || {
            info.password
                .as_ref()
                .map(|p| p.expose().as_bytes())
                .ok_or_else(|| SourceError::Auth {
                    user: info.user.clone(),
                    message: "the server asks for a password but --source-url has none".into(),
                })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'E' => return Err(SourceError::from_server(ServerError::parse(&f.body), &context(info))),
                b'R' => {}
                other => return Err(unexpected(other, "authentication")),
            }
            let mut body = f.body;
            if body.len() < 4 {
                return Err(SourceError::Protocol("short authentication request".into()));
            }
            let protocol_err = |e: std::io::Error| SourceError::Protocol(e.to_string());
            match body.get_i32() {
                0 => return Ok(()),
                3 => frontend::password_message(password()?, &mut self.outbuf).map_err(protocol_err)?,
                5 => {
                    if body.len() < 4 {
                        return Err(SourceError::Protocol("md5 request without salt".into()));
                    }
                    let salt = [body[0], body[1], body[2], body[3]];
                    let hash = md5_hash(info.user.as_bytes(), password()?, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.outbuf).map_err(protocol_err)?;
                }
                10 => {
                    let offered: Vec<&[u8]> = body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    if !offered.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                        let names = offered
                            .iter()
                            .map(|m| String::from_utf8_lossy(m))
                            .collect::<Vec<_>>()
                            .join(", ");
                        return Err(SourceError::UnsupportedAuth(format!("SASL ({names})")));
                    }
                    let s = sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut self.outbuf)
                        .map_err(protocol_err)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| SourceError::Protocol("SASL continue before start".into()))?;
                    s.update(&body).map_err(|e| SourceError::Auth {
                        user: info.user.clone(),
                        message: e.to_string(),
                    })?;
                    frontend::sasl_response(s.message(), &mut self.outbuf).map_err(protocol_err)?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| SourceError::Protocol("SASL final before start".into()))?;
                    s.finish(&body).map_err(|e| SourceError::Auth {
                        user: info.user.clone(),
                        message: format!("the server's SCRAM signature did not verify: {e}"),
                    })?;
                    continue;
                }
                other => return Err(SourceError::UnsupportedAuth(format!("code {other}"))),
            }
            self.flush_out().await?;
        }
    }

    /// A complete frame from what has been read, if there is one.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.inbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.inbuf[0];
        let len = i32::from_be_bytes([self.inbuf[1], self.inbuf[2], self.inbuf[3], self.inbuf[4]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l >= 4)
            .ok_or_else(|| SourceError::Protocol(format!("message {:?} with invalid length {len}", tag as char)))?;
        if self.inbuf.len() < 1 + len {
            self.inbuf.reserve(1 + len - self.inbuf.len());
            return Ok(None);
        }
        let mut frame = self.inbuf.split_to(1 + len).freeze();
        frame.advance(5);
        Ok(Some(Frame { tag, body: frame }))
    }

    /// Reads more bytes. Cancel-safe: bytes read are kept in `inbuf`.
    pub async fn fill(&mut self) -> Result<(), SourceError> {
        if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 4 {
            self.inbuf.reserve(READ_CHUNK);
        }
        match self.socket.read_buf(&mut self.inbuf).await {
            Ok(0) => Err(SourceError::ConnectionLost(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(SourceError::ConnectionLost(e)),
        }
    }

    pub async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Writes whatever is queued. Cancel-safe: `write_buf` advances past
    /// what was written, so a cancelled call resumes where it stopped.
    pub async fn flush_out(&mut self) -> Result<(), SourceError> {
        while self.outbuf.has_remaining() {
            self.socket
                .write_buf(&mut self.outbuf)
                .await
                .map_err(SourceError::ConnectionLost)?;
        }
        self.socket.flush().await.map_err(SourceError::ConnectionLost)
    }
}

fn context(info: &ConnInfo) -> ErrorContext<'_> {
    ErrorContext {
        user: &info.user,
        dbname: &info.dbname,
        ..Default::default()
    }
}

/// `15.4 (Debian 15.4-1)` → 150004; `9.6.1` → 90601.
pub(super) fn parse_server_version(v: &str) -> u32 {
    let nums: Vec<u32> = v
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [major, minor, ..] if *major >= 10 => major * 10_000 + minor,
        [major] if *major >= 10 => major * 10_000,
        [major, minor, patch, ..] => major * 10_000 + minor * 100 + patch,
        _ => 0,
    }
}

pub(super) fn unexpected(tag: u8, during: &str) -> SourceError {
    SourceError::Protocol(format!("unexpected message {:?} during {during}", tag as char))
}

pub(super) fn log_notice(n: &ServerError) {
    tracing::info!(code = %n.code, "source server notice: {}", n.message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.18 (Debian 15.18-0+deb12u1)"), 150018);
        assert_eq!(parse_server_version("17devel"), 170000);
        assert_eq!(parse_server_version("9.6.24"), 90624);
    }
}
