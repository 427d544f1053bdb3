//! What both binaries share before their pipelines start: reading a
//! `--config` file, the registry settings and librdkafka options, logging,
//! configuration errors and the shutdown signal.

pub mod layers;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::ValueEnum;

use crate::postgres::conninfo::{ConnInfoError, Secret};
use crate::registry::RegistryConfig;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
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

/// A value parser whose error never repeats the value, which may hold a
/// password (URLs): clap's own errors quote what they refused.
#[derive(Clone)]
pub struct Quiet<F>(pub F);

impl<T, F> TypedValueParser for Quiet<F>
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let name = arg
            .and_then(|a| a.get_long())
            .map_or_else(String::new, |l| format!("--{l}: "));
        let refuse =
            |message: String| clap::Error::raw(ErrorKind::ValueValidation, format!("{name}{message}\n")).with_cmd(cmd);
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8".into()))?;
        (self.0)(text).map_err(refuse)
    }
}

/// The Schema Registry settings both binaries take.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RegistrySettings {
    /// Confluent-compatible Schema Registry, http(s)://host:port[/path].
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_URL", value_parser = Quiet(registry_url))]
    pub schema_registry_url: Option<String>,

    /// Schema Registry basic-auth user.
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_USER")]
    pub schema_registry_user: Option<String>,

    /// Schema Registry basic-auth password.
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_PASSWORD", hide_env_values = true, value_parser = Quiet(secret))]
    pub schema_registry_password: Option<Secret>,

    /// CA bundle for an https Schema Registry [default: the system bundle].
    #[arg(long, env = "WALHOUSE_SCHEMA_REGISTRY_CA")]
    pub schema_registry_ca: Option<PathBuf>,
}

fn registry_url(text: &str) -> Result<String, String> {
    crate::http::BaseUrl::parse(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

fn secret(text: &str) -> Result<Secret, String> {
    Ok(Secret::new(text))
}

/// Where Kafka and its Schema Registry are, as both binaries take them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KafkaConnection {
    /// Kafka bootstrap servers, host:port[,…].
    #[arg(long, env = "WALHOUSE_BROKERS")]
    pub brokers: Option<String>,

    #[command(flatten)]
    pub schema_registry: RegistrySettings,
}

impl KafkaConnection {
    /// The brokers and the registry, both required for `purpose` (what
    /// the error says needs them).
    pub fn required(&self, purpose: &str) -> Result<(&str, RegistryConfig), ConfigError> {
        let brokers = self
            .brokers
            .as_deref()
            .ok_or_else(|| ConfigError::Invalid(format!("{purpose} needs --brokers (WALHOUSE_BROKERS, brokers)")))?;
        let registry = &self.schema_registry;
        let url = registry.schema_registry_url.clone().ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{purpose} needs --schema-registry-url (WALHOUSE_SCHEMA_REGISTRY_URL, schema_registry_url)"
            ))
        })?;
        Ok((
            brokers,
            RegistryConfig {
                url,
                user: registry.schema_registry_user.clone(),
                password: registry.schema_registry_password.clone(),
                ca: registry.schema_registry_ca.clone(),
            },
        ))
    }
}

/// One librdkafka setting, `KEY=VALUE`. `Debug` (and so `--check`) shows
/// the value of a key that holds a secret as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    key: String,
    value: String,
}

/// The value parser of `--kafka-option` (and of the file's `[kafka]`
/// entries, which arrive as `KEY=VALUE`).
pub fn kafka_option(text: &str) -> Result<KafkaOption, String> {
    let (k, v) = text.split_once('=').ok_or("expected KEY=VALUE")?;
    Ok(KafkaOption {
        key: k.trim().to_owned(),
        value: v.trim().to_owned(),
    })
}

impl std::fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if is_secret_option(&self.key) {
            "<redacted>"
        } else {
            &self.value
        };
        write!(f, "{}={value}", self.key)
    }
}

/// librdkafka settings in the order given, a later one winning for its key.
pub fn librdkafka_options(given: &[KafkaOption]) -> KafkaOptions {
    KafkaOptions(given.iter().map(|o| (o.key.clone(), o.value.clone())).collect())
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
        let given: Vec<super::KafkaOption> = [
            "sasl.password=hunter2",
            "ssl.key.pem=hunter3",
            "sasl.oauthbearer.client.secret=hunter4",
            "ssl.keystore.password=hunter5",
            "linger.ms=5",
        ]
        .iter()
        .map(|t| super::kafka_option(t).expect("KEY=VALUE"))
        .collect();
        assert!(!format!("{given:?}").contains("hunter"), "{given:?}");
        let options = super::librdkafka_options(&given);
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("\"linger.ms\": \"5\""), "{shown}");
        assert_eq!(options.get("sasl.password").map(String::as_str), Some("hunter2"));
    }
}
