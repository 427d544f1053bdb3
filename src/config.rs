//! Typed configuration for `walhouse-capture`, validated once at start.
//!
//! Every setting has three spellings: a flag (`--source-url`), an
//! environment variable (`WALHOUSE_SOURCE_URL`) and a key in a TOML file
//! given by `--config` (`source_url`). Flags beat the environment, which
//! beats the file, which beats the defaults. The file rejects unknown keys,
//! so a typo is an error rather than a silently ignored setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::postgres::conninfo::{ConnInfo, ConnInfoError};
use crate::postgres::publication::{TableName, TableSelection};
use crate::postgres::replication::validate_slot_name;

pub const DEFAULT_SLOT: &str = "walhouse";
pub const DEFAULT_PUBLICATION: &str = "walhouse";
pub const DEFAULT_MAX_RECONNECT_ATTEMPTS: u32 = 10;
pub const DEFAULT_RECONNECT_BACKOFF_MAX_MS: u64 = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// JSON lines on standard output.
    Stdout,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `walhouse-capture`: stream a Postgres database's changes.
#[derive(Debug, Parser)]
#[command(name = "walhouse-capture", version, about, long_about = None)]
pub struct CaptureArgs {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "WALHOUSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Source database, postgres://user:password@host:port/dbname?sslmode=…
    /// (sslmode disable|prefer|require|verify-ca|verify-full, sslrootcert=path).
    #[arg(long, env = "WALHOUSE_SOURCE_URL", hide_env_values = true)]
    pub source_url: Option<String>,

    /// Logical replication slot (created when missing) [default: walhouse].
    #[arg(long, env = "WALHOUSE_SLOT")]
    pub slot: Option<String>,

    /// Publication (created when missing) [default: walhouse].
    #[arg(long, env = "WALHOUSE_PUBLICATION")]
    pub publication: Option<String>,

    /// Tables to publish, schema.table[,…]; all tables when not given.
    #[arg(long, env = "WALHOUSE_TABLES", value_delimiter = ',')]
    pub tables: Option<Vec<String>>,

    /// Where changes go [default: stdout].
    #[arg(long, env = "WALHOUSE_OUTPUT", value_enum)]
    pub output: Option<OutputKind>,

    /// Standby status interval in ms [default: min(1000, wal_sender_timeout/2)].
    #[arg(long, env = "WALHOUSE_STATUS_INTERVAL_MS")]
    pub status_interval_ms: Option<u64>,

    /// Reconnect attempts after a lost connection before giving up [default: 10].
    #[arg(long, env = "WALHOUSE_MAX_RECONNECT_ATTEMPTS")]
    pub max_reconnect_attempts: Option<u32>,

    /// Longest wait between reconnect attempts, in ms [default: 30000].
    #[arg(long, env = "WALHOUSE_RECONNECT_BACKOFF_MAX_MS")]
    pub reconnect_backoff_max_ms: Option<u64>,

    /// Log format on stderr; the level comes from WALHOUSE_LOG (e.g. debug) [default: text].
    #[arg(long, env = "WALHOUSE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The same settings as they appear in the `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    source_url: Option<String>,
    slot: Option<String>,
    publication: Option<String>,
    tables: Option<Vec<String>>,
    output: Option<OutputKind>,
    status_interval_ms: Option<u64>,
    max_reconnect_attempts: Option<u32>,
    reconnect_backoff_max_ms: Option<u64>,
    log_format: Option<LogFormat>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no source database: give --source-url, WALHOUSE_SOURCE_URL or source_url in the config file")]
    MissingSourceUrl,
    #[error("source URL: {0}")]
    SourceUrl(#[from] ConnInfoError),
    #[error("{0}")]
    Invalid(String),
}

/// The validated configuration of one capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub source: ConnInfo,
    pub slot: String,
    pub publication: String,
    pub tables: TableSelection,
    pub output: OutputKind,
    /// `None`: derived from the server's `wal_sender_timeout`.
    pub status_interval: Option<Duration>,
    pub max_reconnect_attempts: u32,
    pub reconnect_backoff_max: Duration,
    pub log_format: LogFormat,
}

impl CaptureConfig {
    /// Merges flags and environment (already in `args`) over the file.
    pub fn resolve(args: CaptureArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let url = args
            .source_url
            .or(file.source_url)
            .ok_or(ConfigError::MissingSourceUrl)?;
        let source = ConnInfo::parse(&url)?;
        let slot = args.slot.or(file.slot).unwrap_or_else(|| DEFAULT_SLOT.into());
        validate_slot_name(&slot).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let publication = args
            .publication
            .or(file.publication)
            .unwrap_or_else(|| DEFAULT_PUBLICATION.into());
        if publication.is_empty() || publication.len() > 63 {
            return Err(ConfigError::Invalid(format!(
                "publication name {publication:?} must have 1 to 63 characters"
            )));
        }
        let tables = match args.tables.or(file.tables) {
            None => TableSelection::All,
            Some(list) if list.iter().all(|t| t.trim().is_empty()) => TableSelection::All,
            Some(list) => TableSelection::Tables(
                list.iter()
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| TableName::parse(t).map_err(ConfigError::Invalid))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let status_interval_ms = args.status_interval_ms.or(file.status_interval_ms);
        if status_interval_ms == Some(0) {
            return Err(ConfigError::Invalid("status_interval_ms must be above 0".into()));
        }
        Ok(CaptureConfig {
            source,
            slot,
            publication,
            tables,
            output: args.output.or(file.output).unwrap_or(OutputKind::Stdout),
            status_interval: status_interval_ms.map(Duration::from_millis),
            max_reconnect_attempts: args
                .max_reconnect_attempts
                .or(file.max_reconnect_attempts)
                .unwrap_or(DEFAULT_MAX_RECONNECT_ATTEMPTS),
            reconnect_backoff_max: Duration::from_millis(
                args.reconnect_backoff_max_ms
                    .or(file.reconnect_backoff_max_ms)
                    .unwrap_or(DEFAULT_RECONNECT_BACKOFF_MAX_MS),
            ),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// Starts `tracing` on stderr (stdout may carry data). The level comes from
/// `WALHOUSE_LOG`, then `RUST_LOG`, default `info`.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("WALHOUSE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(extra: &[&str]) -> CaptureArgs {
        let mut argv = vec!["walhouse-capture"];
        argv.extend_from_slice(extra);
        // Parse without the process environment so the test is hermetic.
        CaptureArgs::try_parse_from(argv).expect("valid args")
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let f =
            file("source_url = \"postgres://file@h/db\"\nslot = \"from_file\"\ntables = [\"public.a\", \"shop.b\"]\n");
        let path = f.path().to_str().expect("utf8 path");
        let c = CaptureConfig::resolve(args(&["--config", path, "--slot", "from_flag"])).expect("valid");
        assert_eq!(c.slot, "from_flag");
        assert_eq!(c.source.user, "file");
        assert_eq!(c.publication, DEFAULT_PUBLICATION);
        assert_eq!(
            c.tables,
            TableSelection::Tables(vec![
                TableName::parse("public.a").expect("valid"),
                TableName::parse("shop.b").expect("valid")
            ])
        );
        assert_eq!(c.output, OutputKind::Stdout);
        assert_eq!(c.max_reconnect_attempts, DEFAULT_MAX_RECONNECT_ATTEMPTS);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let f = file("source_url = \"postgres://h/db\"\nslto = \"typo\"\n");
        let path = f.path().to_str().expect("utf8 path");
        let err = CaptureConfig::resolve(args(&["--config", path])).expect_err("typo rejected");
        assert!(err.to_string().contains("slto"), "{err}");
        assert!(matches!(
            CaptureConfig::resolve(args(&[])),
            Err(ConfigError::MissingSourceUrl)
        ));
        assert!(CaptureConfig::resolve(args(&["--source-url", "postgres://h/d", "--slot", "Bad-Slot"])).is_err());
        assert!(CaptureConfig::resolve(args(&["--source-url", "mysql://h/d"])).is_err());
    }

    #[test]
    fn comma_separated_tables_flag() {
        let c = CaptureConfig::resolve(args(&["--source-url", "postgres://h/d", "--tables", "a,s.b"])).expect("valid");
        let TableSelection::Tables(t) = c.tables else {
            panic!("expected tables");
        };
        assert_eq!(t.iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["public.a", "s.b"]);
    }
}
