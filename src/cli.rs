//! What both binaries share before their pipelines start: reading a
//! `--config` file, the registry settings and librdkafka options, logging,
//! configuration errors and the shutdown signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;

use crate::postgres::conninfo::{ConnInfoError, Secret};
use crate::registry::RegistryConfig;

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
/// The Schema Registry flags both binaries take (a config file holds the
/// same four keys).
#[derive(Debug, Default, clap::Args)]
pub struct RegistryArgs {
    /// Confluent-compatible Schema Registry, http(s)://host:port.
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: Option<String>,

    /// Schema Registry basic-auth user.
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_USER")]
    pub schema_registry_user: Option<String>,

    /// Schema Registry basic-auth password.
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_PASSWORD", hide_env_values = true)]
    pub schema_registry_password: Option<String>,

    /// CA bundle for an https Schema Registry [default: the system bundle].
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_CA")]
    pub schema_registry_ca: Option<PathBuf>,
}

impl RegistryArgs {
    /// These settings over `file`'s: the URL is required (`missing` says
    /// how to give it) and checked, and never echoed.
    pub fn resolve(self, file: RegistryArgs, missing: &str) -> Result<RegistryConfig, ConfigError> {
        let url = self
            .schema_registry_url
            .or(file.schema_registry_url)
            .ok_or_else(|| ConfigError::Invalid(missing.into()))?;
        crate::http::BaseUrl::parse(&url).map_err(|e| ConfigError::Invalid(format!("--schema-registry-url: {e}")))?;
        Ok(RegistryConfig {
            url,
            user: self.schema_registry_user.or(file.schema_registry_user),
            password: self
                .schema_registry_password
                .or(file.schema_registry_password)
                .map(Secret::new),
            ca: self.schema_registry_ca.or(file.schema_registry_ca),
        })
    }
}

pub fn librdkafka_options(file: BTreeMap<String, toml::Value>, flags: &[String]) -> Result<KafkaOptions, ConfigError> {
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
    Ok(KafkaOptions(out))
}

/// librdkafka settings as given. `Debug` (and so `--check`) shows the
/// values of keys that hold secrets as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions(BTreeMap<String, String>);

impl KafkaOptions {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.get(key)
    }
}

impl Extend<(String, String)> for KafkaOptions {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<'a> IntoIterator for &'a KafkaOptions {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_secret_option(k) { "<redacted>" } else { v.as_str() })),
            )
            .finish()
    }
}

/// Whether a librdkafka key holds a secret: passwords, secrets, private
/// keys, OAUTHBEARER and JAAS settings.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("token")
        || k.starts_with("ssl.key.")
        || k == "ssl.key"
        || k.starts_with("sasl.oauthbearer.")
        || k == "sasl.jaas.config"
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

#[cfg(test)]
mod tests {
    #[test]
    fn secret_kafka_options_are_redacted_in_debug() {
        let flags = [
            "sasl.password=hunter2".to_string(),
            "ssl.key.pem=hunter3".to_string(),
            "sasl.oauthbearer.client.secret=hunter4".to_string(),
            "ssl.keystore.password=hunter5".to_string(),
            "linger.ms=5".to_string(),
        ];
        let options = super::librdkafka_options(Default::default(), &flags).expect("options");
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("\"linger.ms\": \"5\""), "{shown}");
        assert_eq!(options.get("sasl.password").map(String::as_str), Some("hunter2"));
    }
}
