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

/// Which of several hosts to use (libpq's `target_session_attrs`): the
/// first that answers and is what is asked for. After a failover the
/// promoted server is found by asking again at each (re)connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    #[default]
    Any,
    /// Takes writes (`transaction_read_only` off).
    ReadWrite,
    /// Not in recovery.
    Primary,
    /// In recovery: a standby (logical decoding there needs Postgres 16+).
    Standby,
}

impl SessionAttrs {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Ok(match s {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            _ => return Err(ConnInfoError::SessionAttrs),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::Primary => "primary",
            Self::Standby => "standby",
        }
    }

    /// Whether a server in recovery or not, read-only or not, is wanted.
    pub fn accepts(self, in_recovery: bool, read_only: bool) -> bool {
        match self {
            Self::Any => true,
            Self::ReadWrite => !read_only,
            Self::Primary => !in_recovery,
            Self::Standby => in_recovery,
        }
    }
}

/// Where and how to connect to the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The host this connects to: the first of the URL's hosts, or the one
    /// [`crate::postgres::client::pick_host`] chose.
    pub host: String,
    pub port: u16,
    /// The URL's other hosts, in order (`postgres://a,b:5433/db`).
    pub other_hosts: Vec<(String, u16)>,
    pub target_session_attrs: SessionAttrs,
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
    #[error("target_session_attrs is not one of any, read-write, primary, standby")]
    SessionAttrs,
    #[error("source URL parameter {0:?} is not supported (supported: sslmode, sslrootcert, application_name, connect_timeout, target_session_attrs, user, password, dbname, host, port)")]
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
            other_hosts: Vec::new(),
            target_session_attrs: SessionAttrs::default(),
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
        let mut hosts = Vec::new();
        for one in hostport.split(',') {
            // IPv6 literals come bracketed: [::1]:5432.
            let (host, port) = if let Some(v6) = one.strip_prefix('[') {
                match v6.split_once(']') {
                    Some((h, p)) => (h, p.strip_prefix(':')),
                    None => (v6, None),
                }
            } else {
                match one.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (one, None),
                }
            };
            let host = if host.is_empty() {
                "localhost".to_owned()
            } else {
                percent_decode(host, "host")?
            };
            let port = match port.filter(|p| !p.is_empty()) {
                Some(p) => p.parse().map_err(|_| ConnInfoError::Port)?,
                None => 5432,
            };
            hosts.push((host, port));
        }
        info.set_hosts(hosts);
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
                "target_session_attrs" => info.target_session_attrs = SessionAttrs::parse(&v)?,
                "host" => {
                    let port = info.port;
                    info.set_hosts(v.split(',').map(|h| (h.to_owned(), port)).collect());
                }
                // One port for every host, or one per host.
                "port" => {
                    let ports = v
                        .split(',')
                        .map(|p| p.parse::<u16>().map_err(|_| ConnInfoError::Port))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut hosts = info.hosts();
                    if ports.len() != 1 && ports.len() != hosts.len() {
                        return Err(ConnInfoError::Port);
                    }
                    for (i, h) in hosts.iter_mut().enumerate() {
                        h.1 = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    }
                    info.set_hosts(hosts);
                }
                other => return Err(ConnInfoError::UnknownParameter(other.into())),
            }
        }
        Ok(info)
    }

    /// Every host, in the URL's order.
    pub fn hosts(&self) -> Vec<(String, u16)> {
        std::iter::once((self.host.clone(), self.port))
            .chain(self.other_hosts.iter().cloned())
            .collect()
    }

    fn set_hosts(&mut self, mut hosts: Vec<(String, u16)>) {
        if hosts.is_empty() {
            return;
        }
        let (host, port) = hosts.remove(0);
        self.host = host;
        self.port = port;
        self.other_hosts = hosts;
    }

    /// One connection target per host, in order, each with only that host.
    pub fn candidates(&self) -> Vec<ConnInfo> {
        self.hosts()
            .into_iter()
            .map(|(host, port)| ConnInfo {
                host,
                port,
                other_hosts: Vec::new(),
                ..self.clone()
            })
            .collect()
    }

    /// Whether a host must be chosen before connecting: several hosts, or
    /// one that must be of a kind.
    pub fn needs_choice(&self) -> bool {
        !self.other_hosts.is_empty() || self.target_session_attrs != SessionAttrs::Any
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
        let hosts = self
            .candidates()
            .iter()
            .map(ConnInfo::address)
            .collect::<Vec<_>>()
            .join(",");
        let attrs = match self.target_session_attrs {
            SessionAttrs::Any => String::new(),
            a => format!("&target_session_attrs={}", a.as_str()),
        };
        format!(
            "postgres://{}@{hosts}/{}?sslmode={:?}{attrs}",
            self.user, self.dbname, self.sslmode
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
    fn several_hosts_and_the_kind_of_server_wanted() {
        let c = ConnInfo::parse("postgres://u@a:5433,[::1],b/d?target_session_attrs=read-write").expect("valid");
        assert_eq!(
            c.hosts(),
            [
                ("a".to_string(), 5433),
                ("::1".to_string(), 5432),
                ("b".to_string(), 5432)
            ]
        );
        assert_eq!(c.target_session_attrs, SessionAttrs::ReadWrite);
        let each: Vec<String> = c.candidates().iter().map(ConnInfo::address).collect();
        assert_eq!(each, ["a:5433", "[::1]:5432", "b:5432"]);
        assert!(c.candidates().iter().all(|x| x.other_hosts.is_empty()));
        assert!(c.needs_choice());
        assert_eq!(
            c.redacted(),
            "postgres://u@a:5433,[::1]:5432,b:5432/d?sslmode=Prefer&target_session_attrs=read-write"
        );
        let p = ConnInfo::parse("postgres://u@x/d?host=a,b&port=6000,6001").expect("valid");
        assert_eq!(p.hosts(), [("a".to_string(), 6000), ("b".to_string(), 6001)]);
        assert!(!ConnInfo::parse("postgres://u@h/d").expect("valid").needs_choice());
        assert!(matches!(
            ConnInfo::parse("postgres://h/d?target_session_attrs=prefer-standby"),
            Err(ConnInfoError::SessionAttrs)
        ));
        assert!(matches!(
            ConnInfo::parse("postgres://u@x/d?host=a,b,c&port=1,2"),
            Err(ConnInfoError::Port)
        ));
        assert!(SessionAttrs::Primary.accepts(false, true) && !SessionAttrs::Primary.accepts(true, true));
        assert!(SessionAttrs::ReadWrite.accepts(false, false) && !SessionAttrs::ReadWrite.accepts(false, true));
        assert!(SessionAttrs::Standby.accepts(true, true) && !SessionAttrs::Standby.accepts(false, false));
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
