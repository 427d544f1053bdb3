//! `walhouse-sink`'s settings: flags, then `WALHOUSE_SINK_*` environment
//! variables, then the `--config` TOML file, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cli::layers::{self, ParseError};
use crate::cli::{
    kafka_option, librdkafka_options, ConfigError, KafkaConnection, KafkaOption, KafkaOptions, LogFormat, Quiet,
};
use crate::postgres::conninfo::ConnInfo;
use crate::registry::RegistryConfig;
use crate::warehouse::duckdb::DuckDbWarehouse;
use crate::warehouse::iceberg::{CatalogAt, IcebergSpec, IcebergWarehouse, S3Settings};
use crate::warehouse::postgres::PostgresWarehouse;
use crate::warehouse::{AnyWarehouse, Dialect, WarehouseError};

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

    /// Validate the configuration, print it (passwords hidden) and exit.
    #[arg(long)]
    pub check: bool,

    #[command(subcommand)]
    pub command: Option<SinkCommand>,

    #[command(flatten)]
    pub settings: SinkSettings,
}

impl SinkArgs {
    /// Flags, environment and the `--config` file, in that order of
    /// precedence (the file's `[kafka]` table merges with `--kafka-option`).
    pub fn parse_layered(argv: impl IntoIterator<Item = impl Into<std::ffi::OsString>>) -> Result<Self, ParseError> {
        layers::parse(argv, &["kafka"])
    }
}

/// Every setting of a sink.
#[derive(Clone, Debug, clap::Args)]
pub struct SinkSettings {
    /// duckdb:<path> (embedded, the default target), iceberg:<dir> (Iceberg tables, embedded catalog),
    /// iceberg+postgres://… (Iceberg tables, catalog in Postgres) or postgres://… (a warehouse database).
    #[arg(long, global = true, env = "WALHOUSE_WAREHOUSE", hide_env_values = true, value_parser = Quiet(WarehouseTarget::parse))]
    pub warehouse: Option<WarehouseTarget>,

    /// Iceberg: where table data and metadata go, e.g. s3://bucket/prefix [default: the catalog's directory].
    #[arg(long, global = true, env = "WALHOUSE_ICEBERG_DATA")]
    pub iceberg_data: Option<String>,

    /// Iceberg data in S3: the endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000 [default: AWS].
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// Iceberg data in S3: the bucket's region.
    #[arg(long, global = true, env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// Iceberg data in S3: path-style addresses (endpoint/bucket/key), as MinIO and most S3-compatible stores want.
    #[arg(long, global = true, env = "WALHOUSE_S3_PATH_STYLE", action = clap::ArgAction::Set, num_args = 0..=1,
        default_value_t = false, default_missing_value = "true")]
    pub s3_path_style: bool,

    /// Log format on stderr; the level comes from WALHOUSE_LOG (e.g. debug).
    #[arg(long, global = true, env = "WALHOUSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub consume: ConsumeSettings,
}

/// The settings of consuming Kafka (all but `load-insolvencies`).
#[derive(Clone, Debug, clap::Args)]
pub struct ConsumeSettings {
    /// Brokers and registry, required to consume.
    #[command(flatten)]
    pub connection: KafkaConnection,

    /// Regular expression of the CDC topics; must start with '^'.
    #[arg(long, env = "WALHOUSE_TOPIC_PATTERN", default_value = "^walhouse\\..*", value_parser = Quiet(topic_pattern))]
    pub topic_pattern: String,

    /// Topic of company events (JSON); empty to consume none.
    #[arg(long, env = "WALHOUSE_COMPANIES_TOPIC", default_value = "companies")]
    pub companies_topic: String,

    /// Kafka consumer group (offsets are stored per group).
    #[arg(long, env = "WALHOUSE_GROUP_ID", default_value = "walhouse-sink")]
    pub group_id: String,

    /// Write a batch at this many rows.
    #[arg(long, env = "WALHOUSE_BATCH_ROWS", default_value_t = 20_000, value_parser = Quiet(positive))]
    pub batch_rows: usize,

    /// ... or at this many bytes of row data.
    #[arg(long, env = "WALHOUSE_BATCH_BYTES", default_value_t = 32 << 20, value_parser = Quiet(positive))]
    pub batch_bytes: usize,

    /// ... or this many ms after its first row.
    #[arg(long, env = "WALHOUSE_BATCH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_ms: u64,

    /// Iceberg: write a batch at most this often (each is a commit and a Parquet file per table), unless
    /// --batch-rows or --batch-bytes ends it sooner; e.g. 5s, 500ms, 2m.
    #[arg(long, env = "WALHOUSE_ICEBERG_COMMIT_INTERVAL", default_value = "5s", value_parser = Quiet(interval))]
    pub iceberg_commit_interval: Interval,

    /// Serve /metrics and /health here, e.g. 127.0.0.1:9751 [default: off].
    #[arg(long, env = "WALHOUSE_SINK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// When Kafka no longer holds a partition's stored offset (retention
    /// deleted records before they were stored): stop that topic, or skip
    /// to the earliest offset and record the gap as a dead letter.
    #[arg(long, env = "WALHOUSE_ON_OFFSET_GAP", value_enum, default_value_t = OffsetGap::Stop)]
    pub on_offset_gap: OffsetGap,

    /// A librdkafka consumer setting, KEY=VALUE (repeatable; the file's [kafka] table).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = Quiet(kafka_option))]
    pub kafka: Vec<KafkaOption>,
}

/// A span of time as flags give it: `500ms`, `5s`, `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub Duration);

fn interval(text: &str) -> Result<Interval, String> {
    let refused = || format!("{text:?} is not a time span above 0 such as 500ms, 5s or 2m");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number.parse().map_err(|_| refused())?;
    let span = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(refused()),
    };
    if span.is_zero() {
        return Err(refused());
    }
    Ok(Interval(span))
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a number above 0")),
    }
}

fn topic_pattern(text: &str) -> Result<String, String> {
    if !text.starts_with('^') {
        return Err(format!(
            "{text:?} must start with '^' (Kafka clients treat only such names as patterns)"
        ));
    }
    Ok(text.to_owned())
}

impl ConsumeSettings {
    /// Where to read; [`SinkConfig::resolve`] refused consuming without them.
    pub fn endpoints(&self) -> Result<(&str, RegistryConfig), ConfigError> {
        self.connection.required("consuming Kafka")
    }

    /// The company events' topic, unless set empty.
    pub fn companies_topic(&self) -> Option<&str> {
        Some(self.companies_topic.as_str()).filter(|t| !t.is_empty())
    }

    /// How long a batch gathers rows after its first: on Iceberg, where
    /// each batch is a commit and a file per table, at least the commit
    /// interval.
    pub fn batch_linger(&self, target: Dialect) -> Duration {
        let linger = Duration::from_millis(self.batch_ms);
        match target {
            Dialect::Iceberg => linger.max(self.iceberg_commit_interval.0),
            Dialect::DuckDb | Dialect::Postgres => linger,
        }
    }

    /// librdkafka's settings, `--kafka-option` over the file's `[kafka]`.
    pub fn librdkafka(&self) -> KafkaOptions {
        librdkafka_options(&self.kafka)
    }
}

#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Load insolvency CSV files (a file, or every .csv of a directory); a file loaded before adds nothing.
    LoadInsolvencies {
        /// File or directory.
        path: PathBuf,
    },
    /// Print a DuckDB script that makes the Iceberg warehouse's tables and latest-state views DuckDB views (run it again to see later commits).
    DuckdbViews,
}

/// What to do when records were deleted from Kafka before they were stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
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
    /// Iceberg tables in a SQL catalog.
    Iceberg(IcebergSpec),
}

impl WarehouseTarget {
    /// Opens (DuckDB, Iceberg) or connects to (Postgres) the target.
    pub async fn open(&self) -> Result<AnyWarehouse, WarehouseError> {
        Ok(match self {
            WarehouseTarget::DuckDb(path) => AnyWarehouse::DuckDb(DuckDbWarehouse::open(path)?),
            WarehouseTarget::Postgres(info) => AnyWarehouse::Postgres(PostgresWarehouse::connect(info).await?),
            WarehouseTarget::Iceberg(spec) => AnyWarehouse::Iceberg(IcebergWarehouse::open_spec(spec).await?),
        })
    }

    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("duckdb:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err("duckdb: needs a file path, e.g. duckdb:warehouse.duckdb".into());
            }
            return Ok(WarehouseTarget::DuckDb(PathBuf::from(path)));
        }
        if let Some(dir) = url.strip_prefix("iceberg:") {
            let dir = dir.trim_start_matches("//");
            if dir.is_empty() {
                return Err("iceberg: needs a directory, e.g. iceberg:warehouse".into());
            }
            return Ok(WarehouseTarget::Iceberg(IcebergSpec::embedded(Path::new(dir))));
        }
        if let Some(catalog) = url
            .strip_prefix("iceberg+postgres://")
            .or_else(|| url.strip_prefix("iceberg+postgresql://"))
        {
            let info = ConnInfo::parse(&format!("postgres://{catalog}")).map_err(|e| e.to_string())?;
            return Ok(WarehouseTarget::Iceberg(IcebergSpec {
                catalog: CatalogAt::Postgres(info),
                data: None,
                s3: S3Settings::default(),
            }));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return ConnInfo::parse(url)
                .map(WarehouseTarget::Postgres)
                .map_err(|e| e.to_string());
        }
        // Only the scheme: the rest of an unknown URL may hold a password.
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        Err(format!(
            "unknown kind {scheme:?}; use duckdb:<path> or iceberg:<dir> (embedded), iceberg+postgres://user@host/db \
             (Iceberg, catalog in Postgres) or postgres://user@host/db"
        ))
    }
}

/// The checked settings of one sink. `Debug` (and so `--check`) shows the
/// settings, passwords hidden.
#[derive(Clone)]
pub struct SinkConfig {
    settings: SinkSettings,
    /// `warehouse`, which `resolve` made sure of.
    pub warehouse: WarehouseTarget,
}

/// Read access to the settings: a checked configuration is its settings
/// plus what checking them proved.
impl std::ops::Deref for SinkConfig {
    type Target = SinkSettings;

    fn deref(&self) -> &SinkSettings {
        &self.settings
    }
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.settings.fmt(f)
    }
}

impl SinkConfig {
    /// Checks what no setting can check alone: a warehouse always, and
    /// brokers and a registry when the sink is to `consume`.
    pub fn resolve(settings: SinkSettings, consume: bool) -> Result<Self, ConfigError> {
        let warehouse = settings.warehouse.clone().ok_or_else(|| {
            ConfigError::Invalid(
                "no warehouse: give --warehouse duckdb:<path> or postgres://… (WALHOUSE_WAREHOUSE, warehouse)".into(),
            )
        })?;
        if consume {
            settings.consume.endpoints()?;
        }
        let warehouse = match warehouse {
            WarehouseTarget::Iceberg(spec) => WarehouseTarget::Iceberg(IcebergSpec {
                data: settings.iceberg_data.clone(),
                s3: S3Settings {
                    endpoint: settings.s3_endpoint.clone(),
                    region: settings.s3_region.clone(),
                    path_style: settings.s3_path_style,
                },
                ..spec
            }),
            other => other,
        };
        Ok(SinkConfig { settings, warehouse })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn resolve(argv: &[&str]) -> Result<SinkConfig, String> {
        let mut all = vec!["walhouse-sink"];
        all.extend_from_slice(argv);
        let args = SinkArgs::parse_layered(all).map_err(|e| e.to_string())?;
        SinkConfig::resolve(args.settings, args.command.is_none()).map_err(|e| e.to_string())
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
        let k = &c.consume;
        assert_eq!((k.connection.brokers.as_deref(), k.batch_rows), (Some("k:9092"), 9));
        assert_eq!(k.companies_topic(), None);
        assert_eq!(k.librdkafka().get("fetch.min.bytes").map(String::as_str), Some("1024"));
        let mut bad = tempfile::NamedTempFile::new().expect("tempfile");
        bad.write_all(b"warehous = \"x\"\n").expect("write");
        let err = resolve(&["--config", bad.path().to_str().expect("utf8")]).expect_err("unknown key");
        assert!(err.to_string().contains("warehous"), "{err}");
    }

    #[test]
    fn intervals_read_with_their_unit_and_iceberg_batches_wait_for_them() {
        assert_eq!(interval("500ms"), Ok(Interval(Duration::from_millis(500))));
        assert_eq!(interval("5s"), Ok(Interval(Duration::from_secs(5))));
        assert_eq!(interval("2m"), Ok(Interval(Duration::from_secs(120))));
        for bad in ["", "5", "0s", "s", "5h", "-1s", "1.5s"] {
            assert!(interval(bad).is_err(), "{bad:?}");
        }
        let c = SinkConfig::resolve(
            SinkArgs::parse_layered([
                "walhouse-sink",
                "--warehouse",
                "iceberg:lake",
                "--brokers",
                "k:9092",
                "--schema-registry-url",
                "http://r:8081",
                "--batch-ms",
                "700",
            ])
            .expect("flags")
            .settings,
            true,
        )
        .expect("config");
        assert_eq!(c.consume.batch_linger(Dialect::Iceberg), Duration::from_secs(5));
        assert_eq!(c.consume.batch_linger(Dialect::DuckDb), Duration::from_millis(700));
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
        assert!(matches!(WarehouseTarget::parse("iceberg:lake"),
            Ok(WarehouseTarget::Iceberg(IcebergSpec { catalog: CatalogAt::Sqlite(p), .. })) if p == Path::new("lake")));
        assert!(matches!(
            WarehouseTarget::parse("iceberg+postgres://u:pw@127.0.0.1/cat"),
            Ok(WarehouseTarget::Iceberg(IcebergSpec {
                catalog: CatalogAt::Postgres(_),
                ..
            }))
        ));
        let refused = WarehouseTarget::parse("iceberg+postgres://u:hunter2@h:99999/cat").expect_err("bad port");
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(WarehouseTarget::parse("iceberg:").is_err());
    }

    #[test]
    fn consuming_needs_brokers_and_a_registry_loading_does_not() {
        let err = resolve(&["--warehouse", "duckdb:x.duckdb"]).expect_err("no brokers");
        assert!(err.to_string().contains("--brokers"), "{err}");
        resolve(&["--warehouse", "duckdb:x.duckdb", "load-insolvencies", "f.csv"]).expect("loading needs no Kafka");
        let c = resolve(&[
            "--warehouse",
            "duckdb:x.duckdb",
            "--brokers",
            "127.0.0.1:9092",
            "--schema-registry-url",
            "http://127.0.0.1:8081",
        ])
        .expect("valid");
        let k = &c.consume;
        assert_eq!(k.topic_pattern, "^walhouse\\..*");
        assert_eq!(k.companies_topic(), Some("companies"));
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
