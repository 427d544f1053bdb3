//! `walhouse-sink`'s settings: flags, then `WALHOUSE_SINK_*` environment
//! variables, then the `--config` TOML file, then defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;

use crate::cli::{ConfigError, LogFormat};
use crate::postgres::conninfo::ConnInfo;
use crate::registry::RegistryConfig;
use crate::warehouse::duckdb::DuckDbWarehouse;
use crate::warehouse::postgres::PostgresWarehouse;
use crate::warehouse::{AnyWarehouse, WarehouseError};

pub const DEFAULT_TOPIC_PATTERN: &str = "^walhouse\\..*";
pub const DEFAULT_COMPANIES_TOPIC: &str = "companies";
pub const DEFAULT_GROUP: &str = "walhouse-sink";

#[derive(Debug, Parser)]
#[command(
    name = "walhouse-sink",
    version,
    about = "Kafka CDC topics (Avro), company events (JSON) and insolvency CSVs into warehouse tables, exactly once"
)]
pub struct SinkArgs {
    /// TOML file with any of the settings below (flags and env win).
    #[arg(long, global = true, env = "WALHOUSE_SINK_CONFIG")]
    pub config: Option<PathBuf>,

    /// duckdb:<path> (embedded, the default target) or postgres://… (a warehouse database).
    #[arg(long, global = true, env = "WALHOUSE_WAREHOUSE")]
    pub warehouse: Option<String>,

    /// Validate the configuration, print it (passwords hidden) and exit.
    #[arg(long)]
    pub check: bool,

    /// Kafka bootstrap servers.
    #[arg(long, env = "WALHOUSE_BROKERS")]
    pub brokers: Option<String>,

    #[command(flatten)]
    pub registry: crate::cli::RegistryArgs,

    /// Regular expression of the CDC topics (default `^walhouse\..*`).
    #[arg(long, env = "WALHOUSE_TOPIC_PATTERN")]
    pub topic_pattern: Option<String>,

    /// Topic of company events (JSON); empty to consume none.
    #[arg(long, env = "WALHOUSE_COMPANIES_TOPIC")]
    pub companies_topic: Option<String>,

    /// Kafka consumer group (default walhouse-sink).
    #[arg(long, env = "WALHOUSE_GROUP_ID")]
    pub group_id: Option<String>,

    /// Write a batch at this many rows (default 20000).
    #[arg(long, env = "WALHOUSE_BATCH_ROWS")]
    pub batch_rows: Option<usize>,

    /// ... or at this many bytes of row data (default 32 MiB).
    #[arg(long, env = "WALHOUSE_BATCH_BYTES")]
    pub batch_bytes: Option<usize>,

    /// ... or this long after its first row (default 1000 ms).
    #[arg(long, env = "WALHOUSE_BATCH_MS")]
    pub batch_ms: Option<u64>,

    /// Serve /metrics and /health here (e.g. 127.0.0.1:9751).
    #[arg(long, env = "WALHOUSE_SINK_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    #[arg(long, env = "WALHOUSE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// A librdkafka consumer setting, KEY=VALUE (repeatable; also the [kafka] table of the file).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,

    /// When Kafka no longer holds a partition's stored offset (retention
    /// deleted records before they were stored): stop that topic (default),
    /// or skip to the earliest offset and record the gap as a dead letter.
    #[arg(long, env = "WALHOUSE_ON_OFFSET_GAP", value_enum)]
    pub on_offset_gap: Option<OffsetGap>,

    #[command(subcommand)]
    pub command: Option<SinkCommand>,
}

#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Load insolvency CSV files (a file, or every .csv of a directory); a file loaded before adds nothing.
    LoadInsolvencies {
        /// File or directory.
        path: PathBuf,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    warehouse: Option<String>,
    brokers: Option<String>,
    schema_registry_url: Option<String>,
    schema_registry_user: Option<String>,
    schema_registry_password: Option<String>,
    schema_registry_ca: Option<PathBuf>,
    topic_pattern: Option<String>,
    companies_topic: Option<String>,
    group_id: Option<String>,
    batch_rows: Option<usize>,
    batch_bytes: Option<usize>,
    batch_ms: Option<u64>,
    metrics_addr: Option<std::net::SocketAddr>,
    log_format: Option<LogFormat>,
    on_offset_gap: Option<OffsetGap>,
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
}

/// What to do when records were deleted from Kafka before they were stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetGap {
    /// Stop the topic with an error that names the gap.
    #[default]
    Stop,
    /// Go on from the earliest offset Kafka holds; a dead letter records the gap.
    SkipAndRecord,
}

/// Where rows go.
#[derive(Clone, Debug)]
pub enum WarehouseTarget {
    DuckDb(PathBuf),
    Postgres(ConnInfo),
}

impl WarehouseTarget {
    /// Opens (DuckDB) or connects to (Postgres) the target.
    pub async fn open(&self) -> Result<AnyWarehouse, WarehouseError> {
        Ok(match self {
            WarehouseTarget::DuckDb(path) => AnyWarehouse::DuckDb(DuckDbWarehouse::open(path)?),
            WarehouseTarget::Postgres(info) => AnyWarehouse::Postgres(PostgresWarehouse::connect(info).await?),
        })
    }

    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        if let Some(path) = url.strip_prefix("duckdb:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(ConfigError::Invalid(
                    "--warehouse duckdb: needs a file path, e.g. duckdb:warehouse.duckdb".into(),
                ));
            }
            return Ok(WarehouseTarget::DuckDb(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(WarehouseTarget::Postgres(ConnInfo::parse(url)?));
        }
        // Only the scheme: the rest of an unknown URL may hold a password.
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        Err(ConfigError::Invalid(format!(
            "--warehouse: unknown kind {scheme:?}; use duckdb:<path> (embedded) or postgres://user@host/db"
        )))
    }
}

#[derive(Clone, Debug)]
pub struct ConsumeSettings {
    pub brokers: String,
    pub registry: RegistryConfig,
    pub topic_pattern: String,
    pub companies_topic: Option<String>,
    pub group_id: String,
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub batch_linger: Duration,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub librdkafka: crate::cli::KafkaOptions,
    pub on_offset_gap: OffsetGap,
}

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub warehouse: WarehouseTarget,
    pub log_format: LogFormat,
    /// Absent for `load-insolvencies`, which needs no Kafka.
    pub consume: Option<ConsumeSettings>,
}

impl SinkConfig {
    pub fn resolve(args: SinkArgs) -> Result<Self, ConfigError> {
        let file: FileConfig = match &args.config {
            Some(path) => crate::cli::read_file(path)?,
            None => FileConfig::default(),
        };
        let warehouse = args.warehouse.or(file.warehouse).ok_or_else(|| {
            ConfigError::Invalid(
                "no warehouse: give --warehouse duckdb:<path> or postgres://… (WALHOUSE_WAREHOUSE)".into(),
            )
        })?;
        let warehouse = WarehouseTarget::parse(&warehouse)?;
        let log_format = args.log_format.or(file.log_format).unwrap_or_default();
        if args.command.is_some() {
            return Ok(SinkConfig {
                warehouse,
                log_format,
                consume: None,
            });
        }
        let brokers = args
            .brokers
            .or(file.brokers)
            .ok_or_else(|| ConfigError::Invalid("no brokers: give --brokers (WALHOUSE_BROKERS)".into()))?;
        let registry = args.registry.resolve(
            crate::cli::RegistryArgs {
                schema_registry_url: file.schema_registry_url,
                schema_registry_user: file.schema_registry_user,
                schema_registry_password: file.schema_registry_password,
                schema_registry_ca: file.schema_registry_ca,
            },
            "no schema registry: give --schema-registry-url (WALHOUSE_SCHEMA_REGISTRY_URL)",
        )?;
        let librdkafka = crate::cli::librdkafka_options(file.kafka, &args.kafka_options)?;
        let topic_pattern = args
            .topic_pattern
            .or(file.topic_pattern)
            .unwrap_or_else(|| DEFAULT_TOPIC_PATTERN.into());
        if !topic_pattern.starts_with('^') {
            return Err(ConfigError::Invalid(format!(
                "--topic-pattern {topic_pattern:?} must start with '^' (Kafka clients treat only such names as patterns)"
            )));
        }
        let companies_topic = args
            .companies_topic
            .or(file.companies_topic)
            .unwrap_or_else(|| DEFAULT_COMPANIES_TOPIC.into());
        let batch_rows = args.batch_rows.or(file.batch_rows).unwrap_or(20_000);
        let batch_bytes = args.batch_bytes.or(file.batch_bytes).unwrap_or(32 << 20);
        let batch_ms = args.batch_ms.or(file.batch_ms).unwrap_or(1000);
        if batch_rows == 0 || batch_bytes == 0 || batch_ms == 0 {
            return Err(ConfigError::Invalid(
                "batch_rows, batch_bytes and batch_ms must be above 0".into(),
            ));
        }
        Ok(SinkConfig {
            warehouse,
            log_format,
            consume: Some(ConsumeSettings {
                brokers,
                registry,
                topic_pattern,
                companies_topic: (!companies_topic.is_empty()).then_some(companies_topic),
                group_id: args.group_id.or(file.group_id).unwrap_or_else(|| DEFAULT_GROUP.into()),
                batch_rows,
                batch_bytes,
                batch_linger: Duration::from_millis(batch_ms),
                metrics_addr: args.metrics_addr.or(file.metrics_addr),
                librdkafka,
                on_offset_gap: args.on_offset_gap.or(file.on_offset_gap).unwrap_or_default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn resolve(argv: &[&str]) -> Result<SinkConfig, ConfigError> {
        let mut all = vec!["walhouse-sink"];
        all.extend_from_slice(argv);
        SinkConfig::resolve(SinkArgs::try_parse_from(all).expect("args"))
    }

    #[test]
    fn the_file_form_fills_what_flags_leave_out() {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(
            b"warehouse = \"duckdb:from-file.duckdb\"\nbrokers = \"k:9092\"\n\
              schema_registry_url = \"http://r:8081\"\nbatch_rows = 7\ncompanies_topic = \"\"\n\
              [kafka]\n\"fetch.min.bytes\" = 1024\n",
        )
        .expect("write");
        let path = f.path().to_str().expect("utf8").to_owned();
        let c = resolve(&["--config", &path, "--batch-rows", "9"]).expect("valid");
        assert!(matches!(&c.warehouse, WarehouseTarget::DuckDb(p) if p == Path::new("from-file.duckdb")));
        let k = c.consume.expect("consume");
        assert_eq!((k.brokers.as_str(), k.batch_rows), ("k:9092", 9));
        assert_eq!(k.companies_topic, None);
        assert_eq!(k.librdkafka.get("fetch.min.bytes").map(String::as_str), Some("1024"));
        let mut bad = tempfile::NamedTempFile::new().expect("tempfile");
        bad.write_all(b"warehous = \"x\"\n").expect("write");
        let err = resolve(&["--config", bad.path().to_str().expect("utf8")]).expect_err("unknown key");
        assert!(err.to_string().contains("warehous"), "{err}");
    }

    #[test]
    fn warehouse_urls() {
        assert!(
            matches!(WarehouseTarget::parse("duckdb:w/x.duckdb"), Ok(WarehouseTarget::DuckDb(p)) if p == Path::new("w/x.duckdb"))
        );
        assert!(matches!(
            WarehouseTarget::parse("postgres://u@127.0.0.1/wh"),
            Ok(WarehouseTarget::Postgres(_))
        ));
        assert!(WarehouseTarget::parse("mysql://x").is_err());
        let refused = WarehouseTarget::parse("clickhouse://u:hunter2@h/db").expect_err("unknown kind");
        let text = refused.to_string();
        assert!(text.contains("\"clickhouse\"") && !text.contains("hunter2"), "{text}");
        assert!(WarehouseTarget::parse("duckdb:").is_err());
    }

    #[test]
    fn consuming_needs_brokers_and_a_registry_loading_does_not() {
        let err = resolve(&["--warehouse", "duckdb:x.duckdb"]).expect_err("no brokers");
        assert!(err.to_string().contains("--brokers"), "{err}");
        let c = resolve(&["--warehouse", "duckdb:x.duckdb", "load-insolvencies", "f.csv"]).expect("valid");
        assert!(c.consume.is_none());
        let c = resolve(&[
            "--warehouse",
            "duckdb:x.duckdb",
            "--brokers",
            "127.0.0.1:9092",
            "--schema-registry-url",
            "http://127.0.0.1:8081",
        ])
        .expect("valid");
        let k = c.consume.expect("consume");
        assert_eq!(k.topic_pattern, DEFAULT_TOPIC_PATTERN);
        assert_eq!(k.companies_topic.as_deref(), Some("companies"));
        assert!(resolve(&[
            "--warehouse",
            "duckdb:x",
            "--brokers",
            "b",
            "--schema-registry-url",
            "http://r",
            "--topic-pattern",
            "walhouse"
        ])
        .is_err());
    }
}
