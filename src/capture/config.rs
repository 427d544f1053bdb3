//! Typed configuration for `walhouse-capture`, validated once at start.
//!
//! Every setting has three spellings: a flag (`--source-url`), an
//! environment variable (`WALHOUSE_SOURCE_URL`) and a key in a TOML file
//! given by `--config` (`source_url`). Flags beat the environment, which
//! beats the file, which beats the defaults. The file rejects unknown keys,
//! so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::avro::types::NumericMode;
use crate::cli::{librdkafka_options, read_file};
pub use crate::cli::{ConfigError, LogFormat};
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::publication::{TableName, TableOptions, TableSelection};
use crate::postgres::replication::validate_slot_name;
use crate::registry::RegistryConfig;

pub const DEFAULT_SLOT: &str = "walhouse";
pub const DEFAULT_PUBLICATION: &str = "walhouse";
pub const DEFAULT_MAX_RECONNECT_ATTEMPTS: u32 = 10;
pub const DEFAULT_RECONNECT_BACKOFF_MAX_MS: u64 = 30_000;
pub const DEFAULT_SLOT_LAG_WARN_BYTES: u64 = 1 << 30;
pub const DEFAULT_SNAPSHOT_CONNECTIONS: u32 = 2;
pub const DEFAULT_SNAPSHOT_CHUNK_PAGES: u64 = 1024;
pub const DEFAULT_STATE_SCHEMA: &str = "walhouse";
pub const DEFAULT_TOPIC_PREFIX: &str = "walhouse";
/// Records handed to librdkafka and not yet acknowledged before capture
/// stops reading the slot.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// JSON lines on standard output.
    Stdout,
    /// Avro to Kafka, schemas in a Schema Registry.
    Kafka,
}

/// What Debezium writes for an unchanged TOAST value it cannot fill in.
pub const DEFAULT_TOAST_PLACEHOLDER: &str = "__debezium_unavailable_value";

/// The shape of the Kafka records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// walhouse's envelope: Avro logical types, `unchanged_toast` and
    /// `text_values` beside the row.
    #[default]
    Walhouse,
    /// What Debezium's PostgreSQL connector writes with Confluent's
    /// AvroConverter under its defaults: drop-in for its consumers.
    Debezium,
}

/// `c,u,d,t` (any order, commas optional) or `none`.
fn parse_skipped_operations(text: &str) -> Result<Vec<char>, ConfigError> {
    if text.trim() == "none" {
        return Ok(Vec::new());
    }
    let mut ops = Vec::new();
    for c in text.chars().filter(|c| !matches!(c, ',' | ' ')) {
        if !matches!(c, 'c' | 'u' | 'd' | 't') {
            return Err(ConfigError::Invalid(format!(
                "skipped operations {text:?}: {c:?} is none of c (create), u (update), d (delete), t (truncate); 'none' skips nothing"
            )));
        }
        if !ops.contains(&c) {
            ops.push(c);
        }
    }
    Ok(ops)
}

/// What to do with the rows that exist when capture first starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Copy every published table, then stream (when the slot is new).
    #[default]
    Initial,
    /// Stream only changes made after the slot was created.
    Never,
    /// Copy every published table, then stop.
    #[value(name = "initial_only")]
    InitialOnly,
}

#[derive(Debug, clap::Subcommand)]
pub enum CaptureCommand {
    /// Print the slot (confirmed LSN, lag, WAL status), the snapshot state
    /// and the published tables, then exit.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running capture (through the slot's WAL, so it also works
    /// while capture is stopped) to snapshot these published tables again,
    /// in chunks, while streaming continues.
    Snapshot {
        /// Tables, schema.table[,…].
        #[arg(long, value_delimiter = ',', required = true)]
        tables: Vec<String>,
    },
}

/// `walhouse-capture`: stream a Postgres database's changes.
#[derive(Debug, Parser)]
#[command(name = "walhouse-capture", version, about, long_about = None)]
pub struct CaptureArgs {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, global = true, env = "WALHOUSE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print it (secrets hidden) and exit.
    #[arg(long)]
    pub check: bool,

    #[command(subcommand)]
    pub command: Option<CaptureCommand>,

    /// Warn when the slot holds back more WAL than this, in bytes [default: 1073741824].
    #[arg(long, env = "WALHOUSE_SLOT_LAG_WARN_BYTES")]
    pub slot_lag_warn_bytes: Option<u64>,

    /// Source database, postgres://user:password@host:port/dbname?sslmode=…
    /// (sslmode disable|prefer|require|verify-ca|verify-full, sslrootcert=path).
    #[arg(long, global = true, env = "WALHOUSE_SOURCE_URL", hide_env_values = true)]
    pub source_url: Option<String>,

    /// Logical replication slot (created when missing) [default: walhouse].
    #[arg(long, global = true, env = "WALHOUSE_SLOT")]
    pub slot: Option<String>,

    /// Publication (created when missing) [default: walhouse].
    #[arg(long, global = true, env = "WALHOUSE_PUBLICATION")]
    pub publication: Option<String>,

    /// Tables to publish, schema.table[,…]; all tables when not given.
    #[arg(long, env = "WALHOUSE_TABLES", value_delimiter = ',')]
    pub tables: Option<Vec<String>>,

    /// Publish only these columns of a table (Postgres 15+), as
    /// `schema.table=col,col`; several tables separated by `;`.
    #[arg(long, env = "WALHOUSE_TABLE_COLUMNS", value_delimiter = ';')]
    pub table_columns: Option<Vec<String>>,

    /// Publish only a table's rows matching an SQL expression (Postgres
    /// 15+), as `schema.table=expression`; repeat the flag per table.
    #[arg(long, env = "WALHOUSE_TABLE_FILTER")]
    pub table_filter: Option<Vec<String>>,

    /// Set REPLICA IDENTITY FULL on published tables without a primary key [default: false].
    #[arg(long, env = "WALHOUSE_REPLICA_IDENTITY_FULL")]
    pub replica_identity_full: Option<bool>,

    /// Rows present at first start: initial (copy, then stream), never, initial_only [default: initial].
    #[arg(long, env = "WALHOUSE_SNAPSHOT_MODE", value_enum)]
    pub snapshot_mode: Option<SnapshotMode>,

    /// Create the slot with FAILOVER so a promoted standby keeps it
    /// (Postgres 17+) [default: false].
    #[arg(long, env = "WALHOUSE_SLOT_FAILOVER")]
    pub slot_failover: Option<bool>,

    /// Connections that copy the initial snapshot in parallel [default: 2].
    #[arg(long, env = "WALHOUSE_SNAPSHOT_CONNECTIONS")]
    pub snapshot_connections: Option<u32>,

    /// Heap pages per snapshot chunk (8 KiB each; an incremental chunk is
    /// held in memory while merged) [default: 1024].
    #[arg(long, env = "WALHOUSE_SNAPSHOT_CHUNK_PAGES")]
    pub snapshot_chunk_pages: Option<u64>,

    /// Schema in the source database for snapshot progress (created when
    /// missing) [default: walhouse].
    #[arg(long, global = true, env = "WALHOUSE_STATE_SCHEMA")]
    pub state_schema: Option<String>,

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

    /// Serve /metrics and /health on this address, e.g. 0.0.0.0:9750 [default: off].
    #[arg(long, env = "WALHOUSE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Emit a pg_logical_emit_message heartbeat this often, in ms, so the slot
    /// advances even when the published tables are idle [default: 0, off].
    #[arg(long, env = "WALHOUSE_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,

    /// Kafka bootstrap servers, host:port[,…] (--output kafka).
    #[arg(long, env = "WALHOUSE_BROKERS")]
    pub brokers: Option<String>,

    #[command(flatten)]
    pub registry: crate::cli::RegistryArgs,

    /// Topics are <prefix>.<schema>.<table> [default: walhouse].
    #[arg(long, env = "WALHOUSE_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,

    /// Send a tombstone (null value) after each delete [default: true].
    #[arg(long, env = "WALHOUSE_TOMBSTONES")]
    pub tombstones: Option<bool>,

    /// numeric(p,s) as Avro decimal, or every numeric as exact text [default: decimal].
    #[arg(long, env = "WALHOUSE_NUMERIC_MODE", value_enum)]
    pub numeric_mode: Option<NumericMode>,

    /// The records' format: walhouse's own, or what Debezium's PostgreSQL
    /// connector writes through Confluent's AvroConverter [default: walhouse].
    #[arg(long, env = "WALHOUSE_FORMAT", value_enum)]
    pub format: Option<Format>,

    /// Operations not written, as letters: c, u, d, t, or none
    /// [default: t in the Debezium format, none in walhouse's].
    #[arg(long, env = "WALHOUSE_SKIPPED_OPERATIONS")]
    pub skipped_operations: Option<String>,

    /// What a Debezium-format record holds for a TOAST value the update left
    /// unchanged and the old row does not carry [default: __debezium_unavailable_value].
    #[arg(long, env = "WALHOUSE_TOAST_PLACEHOLDER")]
    pub toast_placeholder: Option<String>,

    /// Unacknowledged Kafka messages before reading the slot pauses [default: 50000].
    #[arg(long, env = "WALHOUSE_MAX_IN_FLIGHT_MESSAGES")]
    pub max_in_flight_messages: Option<u64>,

    /// Partitions of topics walhouse creates; 0 leaves creation to the broker [default: 1].
    #[arg(long, env = "WALHOUSE_TOPIC_PARTITIONS")]
    pub topic_partitions: Option<i32>,

    /// Replication factor of created topics; -1 is the broker's default [default: -1].
    #[arg(long, env = "WALHOUSE_TOPIC_REPLICATION_FACTOR", allow_negative_numbers = true)]
    pub topic_replication_factor: Option<i32>,

    /// Also write BEGIN/END records with event counts to <prefix>.transaction [default: false].
    #[arg(long, env = "WALHOUSE_TRANSACTION_TOPIC")]
    pub transaction_topic: Option<bool>,

    /// A librdkafka setting, KEY=VALUE (repeatable; also the [kafka] table of the file).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

/// The same settings as they appear in the `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    source_url: Option<String>,
    slot: Option<String>,
    publication: Option<String>,
    tables: Option<Vec<String>>,
    table_columns: Option<BTreeMap<String, Vec<String>>>,
    table_filters: Option<BTreeMap<String, String>>,
    replica_identity_full: Option<bool>,
    snapshot_mode: Option<SnapshotMode>,
    slot_failover: Option<bool>,
    snapshot_connections: Option<u32>,
    snapshot_chunk_pages: Option<u64>,
    state_schema: Option<String>,
    output: Option<OutputKind>,
    status_interval_ms: Option<u64>,
    max_reconnect_attempts: Option<u32>,
    reconnect_backoff_max_ms: Option<u64>,
    log_format: Option<LogFormat>,
    heartbeat_interval_ms: Option<u64>,
    slot_lag_warn_bytes: Option<u64>,
    metrics_addr: Option<std::net::SocketAddr>,
    brokers: Option<String>,
    schema_registry_url: Option<String>,
    schema_registry_user: Option<String>,
    schema_registry_password: Option<String>,
    schema_registry_ca: Option<PathBuf>,
    topic_prefix: Option<String>,
    tombstones: Option<bool>,
    numeric_mode: Option<NumericMode>,
    format: Option<Format>,
    skipped_operations: Option<String>,
    toast_placeholder: Option<String>,
    max_in_flight_messages: Option<u64>,
    topic_partitions: Option<i32>,
    topic_replication_factor: Option<i32>,
    transaction_topic: Option<bool>,
    /// librdkafka settings passed through as they are.
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
}

/// The validated configuration of one capture (its `Debug` form hides
/// passwords: they are [`Secret`]s).
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub source: ConnInfo,
    pub slot: String,
    pub publication: String,
    pub tables: TableSelection,
    pub table_options: TableOptions,
    pub replica_identity_full: bool,
    pub snapshot_mode: SnapshotMode,
    pub slot_failover: bool,
    pub snapshot_connections: u32,
    pub snapshot_chunk_pages: u64,
    pub state_schema: String,
    pub output: OutputKind,
    /// `None`: derived from the server's `wal_sender_timeout`.
    pub status_interval: Option<Duration>,
    pub max_reconnect_attempts: u32,
    pub reconnect_backoff_max: Duration,
    pub log_format: LogFormat,
    pub heartbeat_interval: Option<Duration>,
    pub slot_lag_warn_bytes: u64,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Present for `--output kafka`.
    pub kafka: Option<KafkaSettings>,
}

/// The Kafka side of a capture.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    pub registry: RegistryConfig,
    pub topic_prefix: String,
    pub tombstones: bool,
    pub numeric_mode: NumericMode,
    pub format: Format,
    /// Operation codes not written (`c`, `u`, `d`, `t`).
    pub skipped_operations: Vec<char>,
    pub toast_placeholder: String,
    pub max_in_flight: u64,
    pub topic_partitions: i32,
    pub topic_replication: i32,
    pub transaction_topic: bool,
    pub librdkafka: crate::cli::KafkaOptions,
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
        let table_options = table_options(
            args.table_columns,
            args.table_filter,
            file.table_columns,
            file.table_filters,
            &tables,
        )?;
        let status_interval_ms = args.status_interval_ms.or(file.status_interval_ms);
        if status_interval_ms == Some(0) {
            return Err(ConfigError::Invalid("status_interval_ms must be above 0".into()));
        }
        let output = args.output.or(file.output).unwrap_or(OutputKind::Stdout);
        let kafka = match output {
            OutputKind::Stdout if args.format.or(file.format) == Some(Format::Debezium) => {
                return Err(ConfigError::Invalid(
                    "--format debezium applies to --output kafka: stdout writes JSON lines".into(),
                ))
            }
            OutputKind::Stdout => None,
            OutputKind::Kafka => {
                let brokers = args.brokers.or(file.brokers).ok_or_else(|| {
                    ConfigError::Invalid("--output kafka needs --brokers (WALHOUSE_BROKERS, brokers)".into())
                })?;
                let registry = args.registry.resolve(
                    crate::cli::RegistryArgs {
                        schema_registry_url: file.schema_registry_url,
                        schema_registry_user: file.schema_registry_user,
                        schema_registry_password: file.schema_registry_password,
                        schema_registry_ca: file.schema_registry_ca,
                    },
                    "--output kafka needs --schema-registry-url (WALHOUSE_SCHEMA_REGISTRY_URL, schema_registry_url)",
                )?;
                let librdkafka = librdkafka_options(file.kafka, &args.kafka_options)?;
                let topic_prefix = args
                    .topic_prefix
                    .or(file.topic_prefix)
                    .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.into());
                if topic_prefix.is_empty()
                    || !topic_prefix
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                {
                    return Err(ConfigError::Invalid(format!(
                        "topic prefix {topic_prefix:?} may only hold letters, digits, '.', '_' and '-'"
                    )));
                }
                let format = args.format.or(file.format).unwrap_or_default();
                let skipped_operations = parse_skipped_operations(
                    args.skipped_operations
                        .or(file.skipped_operations)
                        .as_deref()
                        .unwrap_or(match format {
                            Format::Walhouse => "none",
                            Format::Debezium => "t",
                        }),
                )?;
                let toast_placeholder = args
                    .toast_placeholder
                    .or(file.toast_placeholder)
                    .unwrap_or_else(|| DEFAULT_TOAST_PLACEHOLDER.into());
                if format == Format::Walhouse && toast_placeholder != DEFAULT_TOAST_PLACEHOLDER {
                    return Err(ConfigError::Invalid(
                        "--toast-placeholder applies to --format debezium only: walhouse's format lists unchanged TOAST columns in unchanged_toast".into(),
                    ));
                }
                Some(KafkaSettings {
                    brokers,
                    format,
                    skipped_operations,
                    toast_placeholder,
                    registry,
                    topic_prefix,
                    tombstones: args.tombstones.or(file.tombstones).unwrap_or(true),
                    numeric_mode: args.numeric_mode.or(file.numeric_mode).unwrap_or_default(),
                    max_in_flight: args
                        .max_in_flight_messages
                        .or(file.max_in_flight_messages)
                        .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
                        .max(1),
                    topic_partitions: args.topic_partitions.or(file.topic_partitions).unwrap_or(1),
                    topic_replication: args
                        .topic_replication_factor
                        .or(file.topic_replication_factor)
                        .unwrap_or(-1),
                    transaction_topic: args.transaction_topic.or(file.transaction_topic).unwrap_or(false),
                    librdkafka,
                })
            }
        };
        Ok(CaptureConfig {
            kafka,
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            slot_lag_warn_bytes: args
                .slot_lag_warn_bytes
                .or(file.slot_lag_warn_bytes)
                .unwrap_or(DEFAULT_SLOT_LAG_WARN_BYTES),
            heartbeat_interval: args
                .heartbeat_interval_ms
                .or(file.heartbeat_interval_ms)
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            source,
            slot,
            publication,
            tables,
            table_options,
            output,
            snapshot_mode: args.snapshot_mode.or(file.snapshot_mode).unwrap_or_default(),
            slot_failover: args.slot_failover.or(file.slot_failover).unwrap_or(false),
            snapshot_connections: args
                .snapshot_connections
                .or(file.snapshot_connections)
                .unwrap_or(DEFAULT_SNAPSHOT_CONNECTIONS)
                .clamp(1, 64),
            snapshot_chunk_pages: args
                .snapshot_chunk_pages
                .or(file.snapshot_chunk_pages)
                .unwrap_or(DEFAULT_SNAPSHOT_CHUNK_PAGES)
                .max(1),
            state_schema: args
                .state_schema
                .or(file.state_schema)
                .unwrap_or_else(|| DEFAULT_STATE_SCHEMA.into()),
            replica_identity_full: args
                .replica_identity_full
                .or(file.replica_identity_full)
                .unwrap_or(false),
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

/// Column lists and row filters from flags (`table=…`) or the file (maps);
/// flags win per setting. Each table must be one of `--tables`.
fn table_options(
    flag_columns: Option<Vec<String>>,
    flag_filters: Option<Vec<String>>,
    file_columns: Option<BTreeMap<String, Vec<String>>>,
    file_filters: Option<BTreeMap<String, String>>,
    tables: &TableSelection,
) -> Result<TableOptions, ConfigError> {
    let split = |entry: &str, what: &str| -> Result<(String, String), ConfigError> {
        entry
            .split_once('=')
            .map(|(t, v)| (t.trim().to_owned(), v.trim().to_owned()))
            .filter(|(t, v)| !t.is_empty() && !v.is_empty())
            .ok_or_else(|| ConfigError::Invalid(format!("--{what} {entry:?}: expected schema.table=…")))
    };
    let columns: Vec<(String, Vec<String>)> = match flag_columns {
        Some(list) => list
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                split(e, "table-columns").map(|(t, cols)| (t, cols.split(',').map(|c| c.trim().to_owned()).collect()))
            })
            .collect::<Result<_, _>>()?,
        None => file_columns.unwrap_or_default().into_iter().collect(),
    };
    let filters: Vec<(String, String)> = match flag_filters {
        Some(list) => list
            .iter()
            .map(|e| split(e, "table-filter"))
            .collect::<Result<_, _>>()?,
        None => file_filters.unwrap_or_default().into_iter().collect(),
    };
    let mut options = TableOptions::default();
    let listed = |name: &str| -> Result<TableName, ConfigError> {
        let t = TableName::parse(name).map_err(ConfigError::Invalid)?;
        match tables {
            TableSelection::Tables(list) if list.contains(&t) => Ok(t),
            _ => Err(ConfigError::Invalid(format!(
                "{t} has a column list or row filter but is not in --tables: lists and filters apply to tables named there"
            ))),
        }
    };
    for (t, cols) in columns {
        if cols.iter().any(|c| c.is_empty()) {
            return Err(ConfigError::Invalid(format!("column list of {t} has an empty name")));
        }
        options.columns.insert(listed(&t)?, cols);
    }
    for (t, f) in filters {
        options.filters.insert(listed(&t)?, f);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(extra: &[&str]) -> CaptureArgs {
        let mut argv = vec!["walhouse-capture"];
        argv.extend_from_slice(extra);
        // Assumes no WALHOUSE_* variables in the test environment.
        CaptureArgs::try_parse_from(argv).expect("valid args")
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn the_debezium_format_takes_its_own_defaults_and_needs_kafka() {
        let kafka = [
            "--source-url",
            "postgres://u@h/db",
            "--output",
            "kafka",
            "--brokers",
            "b:9092",
            "--schema-registry-url",
            "http://r:8081",
        ];
        let k = |extra: &[&str]| {
            let mut a = kafka.to_vec();
            a.extend_from_slice(extra);
            CaptureConfig::resolve(args(&a))
        };
        let native = k(&[]).expect("native").kafka.expect("kafka");
        assert_eq!(
            (native.format, native.skipped_operations.clone()),
            (Format::Walhouse, vec![])
        );
        let dbz = k(&["--format", "debezium"]).expect("debezium").kafka.expect("kafka");
        assert_eq!(
            (dbz.format, dbz.skipped_operations.clone()),
            (Format::Debezium, vec!['t'])
        );
        assert_eq!(dbz.toast_placeholder, DEFAULT_TOAST_PLACEHOLDER);
        let all = k(&["--format", "debezium", "--skipped-operations", "none"]).expect("none");
        assert!(all.kafka.expect("kafka").skipped_operations.is_empty());
        let e = k(&["--toast-placeholder", "x"]).expect_err("walhouse format has no placeholder");
        assert!(e.to_string().contains("--format debezium"), "{e}");
        let e = CaptureConfig::resolve(args(&["--source-url", "postgres://u@h/db", "--format", "debezium"]))
            .expect_err("stdout has no Debezium format");
        assert!(e.to_string().contains("--output kafka"), "{e}");
    }

    #[test]
    fn skipped_operations_parse_and_refuse_unknown_letters() {
        assert_eq!(parse_skipped_operations("none").expect("none"), Vec::<char>::new());
        assert_eq!(parse_skipped_operations("t").expect("t"), vec!['t']);
        assert_eq!(parse_skipped_operations("c, u,u").expect("c,u"), vec!['c', 'u']);
        let e = parse_skipped_operations("tx").expect_err("x").to_string();
        assert!(e.contains("'x'"), "{e}");
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
    fn kafka_settings_from_flags_and_the_kafka_table() {
        let f = file("[kafka]\n\"compression.type\" = \"zstd\"\n\"linger.ms\" = 20\n");
        let path = f.path().to_str().expect("utf8 path");
        let c = CaptureConfig::resolve(args(&[
            "--config",
            path,
            "--source-url",
            "postgres://h/d",
            "--output",
            "kafka",
            "--brokers",
            "127.0.0.1:9092",
            "--schema-registry-url",
            "http://127.0.0.1:8081",
            "--kafka-option",
            "linger.ms=50",
            "--tombstones",
            "false",
        ]))
        .expect("valid");
        let k = c.kafka.expect("kafka settings");
        assert_eq!(k.topic_prefix, "walhouse");
        assert!(!k.tombstones);
        assert_eq!(k.librdkafka.get("compression.type").map(String::as_str), Some("zstd"));
        assert_eq!(
            k.librdkafka.get("linger.ms").map(String::as_str),
            Some("50"),
            "flags beat the file"
        );
        let err = CaptureConfig::resolve(args(&["--source-url", "postgres://h/d", "--output", "kafka"]))
            .expect_err("brokers required");
        assert!(err.to_string().contains("--brokers"), "{err}");
    }

    #[test]
    fn column_lists_and_row_filters_need_their_table_in_tables() {
        let c = CaptureConfig::resolve(args(&[
            "--source-url",
            "postgres://h/d",
            "--tables",
            "s.a,\"Odd T\"",
            "--table-columns",
            "s.a=id, name;\"Odd T\"=x",
            "--table-filter",
            "s.a=status <> 'draft' AND id = 1",
        ]))
        .expect("valid");
        let a = TableName::parse("s.a").expect("name");
        let odd = TableName::parse("\"Odd T\"").expect("name");
        assert_eq!(c.table_options.columns[&a], ["id", "name"]);
        assert_eq!(c.table_options.columns[&odd], ["x"]);
        assert_eq!(c.table_options.filters[&a], "status <> 'draft' AND id = 1");
        assert_eq!(
            c.table_options.spec(&a),
            "\"s\".\"a\" (\"id\", \"name\") WHERE (status <> 'draft' AND id = 1)"
        );
        for bad in [
            vec!["--table-columns", "s.b=id"],
            vec!["--table-filter", "s.a"],
            vec!["--table-columns", "s.a=id,,x"],
        ] {
            let mut argv = vec!["--source-url", "postgres://h/d", "--tables", "s.a"];
            argv.extend(bad.iter().copied());
            assert!(CaptureConfig::resolve(args(&argv)).is_err(), "{bad:?}");
        }
        // Without --tables (FOR ALL TABLES) there is nothing to attach a list to.
        assert!(
            CaptureConfig::resolve(args(&["--source-url", "postgres://h/d", "--table-filter", "s.a=true"])).is_err()
        );
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
