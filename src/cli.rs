//! What both binaries share before their pipelines start: reading a
//! `--config` file and librdkafka options, logging, configuration errors
//! and the shutdown signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;

use crate::postgres::conninfo::ConnInfoError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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

/// Reads a `--config` TOML file of either binary.
pub fn read_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// librdkafka settings: the file's `[kafka]` table, then `--kafka-option
/// KEY=VALUE` flags over it.
pub fn librdkafka_options(
    file: BTreeMap<String, toml::Value>,
    flags: &[String],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (k, v) in file {
        let v = match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        out.insert(k, v);
    }
    for kv in flags {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("--kafka-option {kv:?} is not KEY=VALUE")))?;
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
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

/// Resolves on SIGINT or SIGTERM: both binaries then stop reading, make
/// what they have durable and exit 0. Without signal handlers (they cannot
/// be installed) only Ctrl-C is waited for.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
