//! The source database's connection string, parsed once.
//!
//! We parse `postgres://` URLs ourselves because `tokio_postgres::Config`
//! knows only `sslmode` disable/prefer/require, and walhouse must also honour
//! libpq's `verify-ca` and `verify-full`. The same [`ConnInfo`] drives both
//! the replication connection and the ordinary SQL connection, so the two
//! can never disagree on host, user or TLS.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// libpq's `sslmode`, less `allow` (which only makes sense with fallbacks
/// walhouse does not do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// TLS always, without verifying the certificate (libpq's meaning).
    Require,
    /// TLS, certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// TLS, chain verified and the host name checked against the certificate.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return Err(ConnInfoError::SslMode),
        })
    }

    /// libpq's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A password that never reaches `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Where and how to connect to the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca` / `verify-full` (libpq's `sslrootcert`).
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("source URL must start with postgres:// or postgresql://")]
    Scheme,
    // The URL may hold a password, and a malformed one may put it in any
    // part: errors name the part, never its content.
    #[error("source URL has an invalid port (a number from 1 to 65535 is needed; a password with ':' or '/' must be percent-escaped)")]
    Port,
    #[error("source URL has an invalid percent-escape in its {0} (%XX with two hex digits, UTF-8 text)")]
    Escape(&'static str),
    #[error("sslmode is not one of disable, prefer, require, verify-ca, verify-full")]
    SslMode,
    #[error("source URL parameter {0:?} is not supported (supported: sslmode, sslrootcert, application_name, connect_timeout, user, password, dbname, host, port)")]
    UnknownParameter(String),
    #[error("connect_timeout is not a whole number of seconds")]
    ConnectTimeout,
}

impl ConnInfo {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=…`.
    pub fn parse(url: &str) -> Result<Self, ConnInfoError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or(ConnInfoError::Scheme)?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut info = ConnInfo {
            host: "localhost".into(),
            port: 5432,
            user: std::env::var("USER").unwrap_or_else(|_| "postgres".into()),
            password: None,
            dbname: String::new(),
            sslmode: SslMode::default(),
            sslrootcert: None,
            application_name: "walhouse".into(),
            connect_timeout: Duration::from_secs(10),
        };
        if let Some(u) = userinfo {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            if !user.is_empty() {
                info.user = percent_decode(user, "user")?;
            }
            info.password = pass.map(|p| percent_decode(p, "password")).transpose()?.map(Secret);
        }
        // IPv6 literals come bracketed: [::1]:5432.
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => (v6, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            info.host = percent_decode(host, "host")?;
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            info.port = p.parse().map_err(|_| ConnInfoError::Port)?;
        }
        info.dbname = if path.is_empty() {
            info.user.clone()
        } else {
            percent_decode(path, "database name")?
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, "parameters")?;
            match k {
                "sslmode" => info.sslmode = SslMode::parse(&v)?,
                "sslrootcert" => info.sslrootcert = Some(PathBuf::from(v)),
                "application_name" => info.application_name = v,
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| ConnInfoError::ConnectTimeout)?;
                    info.connect_timeout = Duration::from_secs(secs.max(1));
                }
                "user" => info.user = v,
                "password" => info.password = Some(Secret(v)),
                "dbname" => info.dbname = v,
                "host" => info.host = v,
                "port" => info.port = v.parse().map_err(|_| ConnInfoError::Port)?,
                other => return Err(ConnInfoError::UnknownParameter(other.into())),
            }
        }
        Ok(info)
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same target without the password, safe to log.
    pub fn redacted(&self) -> String {
        format!(
            "postgres://{}@{}/{}?sslmode={:?}",
            self.user,
            self.address(),
            self.dbname,
            self.sslmode
        )
    }
}

fn percent_decode(s: &str, part: &'static str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(ConnInfoError::Escape(part))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ConnInfoError::Escape(part))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::Escape(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let c = ConnInfo::parse(
            "postgres://rep%40l:p%2Fss@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .expect("valid");
        assert_eq!(c.user, "rep@l");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p/ss"));
        assert_eq!((c.host.as_str(), c.port), ("db.example", 6543));
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.application_name, "x");
    }

    #[test]
    fn defaults_and_ipv6() {
        let c = ConnInfo::parse("postgresql://u@[::1]/").expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("::1", 5432));
        assert_eq!(c.dbname, "u");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.address(), "[::1]:5432");
    }

    #[test]
    fn never_prints_the_password() {
        let c = ConnInfo::parse("postgres://u:hunter2@h/d").expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.redacted().contains("hunter2"));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(ConnInfo::parse("mysql://h"), Err(ConnInfoError::Scheme));
        assert!(matches!(
            ConnInfo::parse("postgres://h:99999/d"),
            Err(ConnInfoError::Port)
        ));
        assert!(matches!(
            ConnInfo::parse("postgres://h/d?sslmode=allow"),
            Err(ConnInfoError::SslMode)
        ));
        assert!(matches!(
            ConnInfo::parse("postgres://h/d?bogus=1"),
            Err(ConnInfoError::UnknownParameter(_))
        ));
        assert!(matches!(
            ConnInfo::parse("postgres://u%zz@h/d"),
            Err(ConnInfoError::Escape("user"))
        ));
    }

    #[test]
    fn errors_never_echo_the_url() {
        for url in [
            "postgres://u:hunter2/d",
            "postgres://u:hunt%zzer2@h/d",
            "postgres://u:hunter2@h:hunter2/d",
            "postgres://h/d?password=x&connect_timeout=hunter2",
            "postgres://h/d?sslmode=hunter2",
            "postgres://h/d?port=hunter2",
        ] {
            let e = ConnInfo::parse(url).expect_err(url).to_string();
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }
}
