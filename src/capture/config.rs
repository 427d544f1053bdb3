//! Typed configuration for `walhouse-capture`, validated once at start.
//!
//! Each setting is one field of [`CaptureSettings`] (or of the Kafka and
//! registry groups flattened into it): the field's name is the key in the
//! `--config` TOML file, its `--flag` the same name in kebab case, and its
//! environment variable, default and help are written beside it. The
//! layering (flags, then environment, then file, then defaults) is
//! [`crate::cli::layers`]'s; [`CaptureConfig::resolve`] checks what no
//! single setting can check alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};

use crate::avro::types::NumericMode;
use crate::cli::layers::{self, ParseError};
use crate::cli::{kafka_option, librdkafka_options, KafkaConnection, KafkaOption, KafkaOptions, Quiet};
pub use crate::cli::{ConfigError, LogFormat};
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::publication::{TableName, TableOptions, TableSelection};
use crate::postgres::replication::validate_slot_name;
use crate::registry::RegistryConfig;

/// What Debezium writes for an unchanged TOAST value it cannot fill in.
pub const DEFAULT_TOAST_PLACEHOLDER: &str = "__debezium_unavailable_value";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// JSON lines on standard output.
    Stdout,
    /// Avro to Kafka, schemas in a Schema Registry.
    Kafka,
}

/// The shape of the Kafka records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// walhouse's envelope: Avro logical types, `unchanged_toast` and
    /// `text_values` beside the row.
    #[default]
    Walhouse,
    /// What Debezium's PostgreSQL connector writes with Confluent's
    /// AvroConverter under its defaults: drop-in for its consumers.
    Debezium,
}

/// What to do with the rows that exist when capture first starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
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

/// Operation codes not written (`c`, `u`, `d`, `t`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkippedOperations(Vec<char>);

impl SkippedOperations {
    /// `c,u,d,t` (any order, commas optional) or `none`.
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "none" {
            return Ok(SkippedOperations::default());
        }
        let mut ops = Vec::new();
        for c in text.chars().filter(|c| !matches!(c, ',' | ' ')) {
            if !matches!(c, 'c' | 'u' | 'd' | 't') {
                return Err(format!(
                    "{c:?} is none of c (create), u (update), d (delete), t (truncate); 'none' skips nothing"
                ));
            }
            if !ops.contains(&c) {
                ops.push(c);
            }
        }
        Ok(SkippedOperations(ops))
    }

    pub fn contains(&self, op: char) -> bool {
        self.0.contains(&op)
    }
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

    #[command(flatten)]
    pub settings: CaptureSettings,
}

impl CaptureArgs {
    /// Flags, environment and the `--config` file, in that order of
    /// precedence (the file's `[kafka]` table merges with `--kafka-option`).
    pub fn parse_layered(argv: impl IntoIterator<Item = impl Into<std::ffi::OsString>>) -> Result<Self, ParseError> {
        layers::parse(argv, &["kafka"])
    }
}

/// Every setting of a capture.
#[derive(Clone, Debug, clap::Args)]
pub struct CaptureSettings {
    /// Source database, postgres://user:password@host:port/dbname?sslmode=…
    /// (sslmode disable|prefer|require|verify-ca|verify-full, sslrootcert=path).
    #[arg(long, global = true, env = "WALHOUSE_SOURCE_URL", hide_env_values = true, value_parser = Quiet(source_url))]
    pub source_url: Option<ConnInfo>,

    /// The primary, when --source-url is a hot standby (Postgres 16+):
    /// capture reads the WAL and snapshots there, and writes only its
    /// snapshot progress, watermarks and heartbeats here. Same form as
    /// --source-url.
    #[arg(long, global = true, env = "WALHOUSE_PRIMARY_URL", hide_env_values = true, value_parser = Quiet(source_url))]
    pub primary_url: Option<ConnInfo>,

    /// Logical replication slot (created when missing).
    #[arg(long, global = true, env = "WALHOUSE_SLOT", default_value = "walhouse", value_parser = Quiet(slot_name))]
    pub slot: String,

    /// Publication (created when missing).
    #[arg(long, global = true, env = "WALHOUSE_PUBLICATION", default_value = "walhouse", value_parser = Quiet(publication_name))]
    pub publication: String,

    /// Tables to publish, schema.table[,…]; all tables when not given.
    #[arg(long, env = "WALHOUSE_TABLES", value_delimiter = ',', value_parser = Quiet(table_name))]
    pub tables: Vec<TableName>,

    /// Publish only these columns of a table (Postgres 15+), as
    /// `schema.table=col,col`; several tables separated by `;`.
    #[arg(long, env = "WALHOUSE_TABLE_COLUMNS", value_delimiter = ';', value_parser = Quiet(table_columns))]
    pub table_columns: Vec<(TableName, Vec<String>)>,

    /// Publish only a table's rows matching an SQL expression (Postgres
    /// 15+), as `schema.table=expression`; repeat the flag per table.
    #[arg(long = "table-filter", env = "WALHOUSE_TABLE_FILTER", value_parser = Quiet(table_filter))]
    pub table_filters: Vec<(TableName, String)>,

    /// Set REPLICA IDENTITY FULL on published tables without a primary key.
    #[arg(long, env = "WALHOUSE_REPLICA_IDENTITY_FULL", default_value_t = false, action = ArgAction::Set)]
    pub replica_identity_full: bool,

    /// Rows present at first start: initial (copy, then stream), never, initial_only.
    #[arg(long, env = "WALHOUSE_SNAPSHOT_MODE", value_enum, default_value_t = SnapshotMode::Initial)]
    pub snapshot_mode: SnapshotMode,

    /// Create the slot with FAILOVER so a promoted standby keeps it
    /// (Postgres 17+).
    #[arg(long, env = "WALHOUSE_SLOT_FAILOVER", default_value_t = false, action = ArgAction::Set)]
    pub slot_failover: bool,

    /// Connections that copy the initial snapshot in parallel (1 to 64).
    #[arg(long, env = "WALHOUSE_SNAPSHOT_CONNECTIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub snapshot_connections: u32,

    /// Heap pages per snapshot chunk (8 KiB each; an incremental chunk is
    /// held in memory while merged).
    #[arg(long, env = "WALHOUSE_SNAPSHOT_CHUNK_PAGES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_chunk_pages: u64,

    /// Schema in the source database for snapshot progress (created when
    /// missing).
    #[arg(long, global = true, env = "WALHOUSE_STATE_SCHEMA", default_value = "walhouse")]
    pub state_schema: String,

    /// Where changes go.
    #[arg(long, env = "WALHOUSE_OUTPUT", value_enum, default_value_t = OutputKind::Stdout)]
    pub output: OutputKind,

    /// Standby status interval in ms [default: min(1000, wal_sender_timeout/2)].
    #[arg(long, env = "WALHOUSE_STATUS_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub status_interval_ms: Option<u64>,

    /// Reconnect attempts after a lost connection before giving up.
    #[arg(long, env = "WALHOUSE_MAX_RECONNECT_ATTEMPTS", default_value_t = 10)]
    pub max_reconnect_attempts: u32,

    /// Longest wait between reconnect attempts, in ms.
    #[arg(long, env = "WALHOUSE_RECONNECT_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub reconnect_backoff_max_ms: u64,

    /// Log format on stderr; the level comes from WALHOUSE_LOG (e.g. debug).
    #[arg(long, env = "WALHOUSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve /metrics and /health on this address, e.g. 127.0.0.1:9750 [default: off].
    #[arg(long, env = "WALHOUSE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Emit a pg_logical_emit_message heartbeat this often, in ms, so the
    /// slot advances even when the published tables are idle (0: off).
    #[arg(long, env = "WALHOUSE_HEARTBEAT_INTERVAL_MS", default_value_t = 0)]
    pub heartbeat_interval_ms: u64,

    /// Warn when the slot holds back more WAL than this, in bytes.
    #[arg(long, env = "WALHOUSE_SLOT_LAG_WARN_BYTES", default_value_t = 1 << 30)]
    pub slot_lag_warn_bytes: u64,

    /// Have Postgres 14+ stream large transactions while they run (pgoutput
    /// protocol 2), kept in --spool-dir until they commit, instead of
    /// spilling them to its own disk (false, or a server before 14:
    /// protocol 1).
    #[arg(long, env = "WALHOUSE_STREAM_TRANSACTIONS", default_value_t = true, action = ArgAction::Set)]
    pub stream_transactions: bool,

    /// Directory for streamed transactions in progress, on a local disk
    /// [default: /var/tmp/walhouse-spool/<system id>/<slot>].
    #[arg(long, global = true, env = "WALHOUSE_SPOOL_DIR")]
    pub spool_dir: Option<std::path::PathBuf>,

    /// Most bytes the streamed transactions in progress may take in
    /// --spool-dir; past it capture stops with the fix.
    #[arg(long, env = "WALHOUSE_SPOOL_MAX_BYTES", default_value_t = DEFAULT_SPOOL_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_bytes: u64,

    #[command(flatten)]
    pub kafka: KafkaSettings,
}

/// 16 GiB: a bulk load of that size spooled once costs the disk beside
/// capture, not the primary's.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 16 << 30;

impl CaptureSettings {
    /// Where streamed transactions are spooled: `/var/tmp` by default,
    /// because `/tmp` is often in memory, under the source's system
    /// identifier and the slot, so that captures of several sources on one
    /// host never share a directory (slot names are unique per source only).
    pub fn spool_dir(&self, system_id: &str) -> std::path::PathBuf {
        self.spool_dir.clone().unwrap_or_else(|| {
            std::path::Path::new("/var/tmp/walhouse-spool")
                .join(system_id)
                .join(&self.slot)
        })
    }
}

/// The settings of `--output kafka`.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Kafka output")]
pub struct KafkaSettings {
    /// Brokers and registry, required for --output kafka.
    #[command(flatten)]
    pub connection: KafkaConnection,

    /// Topics are <prefix>.<schema>.<table>.
    #[arg(long, env = "WALHOUSE_TOPIC_PREFIX", default_value = "walhouse", value_parser = Quiet(topic_prefix))]
    pub topic_prefix: String,

    /// Send a tombstone (null value) after each delete.
    #[arg(long, env = "WALHOUSE_TOMBSTONES", default_value_t = true, action = ArgAction::Set)]
    pub tombstones: bool,

    /// numeric(p,s) as Avro decimal, or every numeric as exact text.
    #[arg(long, env = "WALHOUSE_NUMERIC_MODE", value_enum, default_value_t = NumericMode::Decimal)]
    pub numeric_mode: NumericMode,

    /// The records' format: walhouse's own, or what Debezium's PostgreSQL
    /// connector writes through Confluent's AvroConverter.
    #[arg(long, env = "WALHOUSE_FORMAT", value_enum, default_value_t = Format::Walhouse)]
    pub format: Format,

    /// Operations not written, as letters: c, u, d, t, or none
    /// [default: t in the Debezium format, none in walhouse's].
    #[arg(long, env = "WALHOUSE_SKIPPED_OPERATIONS", value_parser = Quiet(SkippedOperations::parse))]
    pub skipped_operations: Option<SkippedOperations>,

    /// What a Debezium-format record holds for a TOAST value the update left
    /// unchanged and the old row does not carry.
    #[arg(long, env = "WALHOUSE_TOAST_PLACEHOLDER", default_value = DEFAULT_TOAST_PLACEHOLDER)]
    pub toast_placeholder: String,

    /// Unacknowledged Kafka messages before reading the slot pauses.
    #[arg(long, env = "WALHOUSE_MAX_IN_FLIGHT_MESSAGES", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight_messages: u64,

    /// Partitions of topics walhouse creates; 0 leaves creation to the broker.
    #[arg(long, env = "WALHOUSE_TOPIC_PARTITIONS", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(0..))]
    pub topic_partitions: i32,

    /// Replication factor of created topics; -1 is the broker's default.
    #[arg(long, env = "WALHOUSE_TOPIC_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication_factor: i32,

    /// Also write BEGIN/END records with event counts to <prefix>.transaction.
    #[arg(long, env = "WALHOUSE_TRANSACTION_TOPIC", default_value_t = false, action = ArgAction::Set)]
    pub transaction_topic: bool,

    /// A librdkafka setting, KEY=VALUE (repeatable; the file's [kafka] table).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = Quiet(kafka_option))]
    pub kafka: Vec<KafkaOption>,
}

impl KafkaSettings {
    /// The operations not written: as given, or the format's default.
    pub fn skipped(&self) -> SkippedOperations {
        self.skipped_operations.clone().unwrap_or_else(|| match self.format {
            Format::Walhouse => SkippedOperations::default(),
            Format::Debezium => SkippedOperations(vec!['t']),
        })
    }

    /// librdkafka's settings, `--kafka-option` over the file's `[kafka]`.
    pub fn librdkafka(&self) -> KafkaOptions {
        librdkafka_options(&self.kafka)
    }

    /// Where the records go; [`CaptureConfig::resolve`] refused
    /// `--output kafka` without them.
    pub fn endpoints(&self) -> Result<(&str, RegistryConfig), ConfigError> {
        self.connection.required("--output kafka")
    }
}

fn source_url(text: &str) -> Result<ConnInfo, String> {
    ConnInfo::parse(text).map_err(|e| e.to_string())
}

fn slot_name(text: &str) -> Result<String, String> {
    validate_slot_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

fn publication_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 63 {
        return Err(format!("publication name {text:?} must have 1 to 63 characters"));
    }
    Ok(text.to_owned())
}

fn table_name(text: &str) -> Result<TableName, String> {
    TableName::parse(text)
}

fn topic_prefix(text: &str) -> Result<String, String> {
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "topic prefix {text:?} may only hold letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(text.to_owned())
}

/// `schema.table=…`, both sides non-empty.
fn table_entry(text: &str) -> Result<(TableName, String), String> {
    text.split_once('=')
        .map(|(t, v)| (t.trim(), v.trim()))
        .filter(|(t, v)| !t.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("{text:?}: expected schema.table=…"))
        .and_then(|(t, v)| Ok((TableName::parse(t)?, v.to_owned())))
}

fn table_columns(text: &str) -> Result<(TableName, Vec<String>), String> {
    let (table, list) = table_entry(text)?;
    let columns: Vec<String> = list.split(',').map(|c| c.trim().to_owned()).collect();
    if columns.iter().any(String::is_empty) {
        return Err(format!("column list of {table} has an empty name"));
    }
    Ok((table, columns))
}

fn table_filter(text: &str) -> Result<(TableName, String), String> {
    table_entry(text)
}

impl CaptureSettings {
    /// The tables to publish: all of them when none are named.
    pub fn table_selection(&self) -> TableSelection {
        if self.tables.is_empty() {
            TableSelection::All
        } else {
            TableSelection::Tables(self.tables.clone())
        }
    }

    /// Column lists and row filters by table.
    pub fn table_options(&self) -> TableOptions {
        let mut options = TableOptions::default();
        options.columns.extend(self.table_columns.iter().cloned());
        options.filters.extend(self.table_filters.iter().cloned());
        options
    }
}

/// The checked settings of one capture. `Debug` (and so `--check`) shows
/// the settings, passwords hidden: they are [`Secret`](crate::postgres::conninfo::Secret)s.
#[derive(Clone)]
pub struct CaptureConfig {
    settings: CaptureSettings,
    /// `source_url`, which `resolve` made sure of.
    pub source: ConnInfo,
}

/// Read access to the settings: a checked configuration is its settings
/// plus what checking them proved.
impl std::ops::Deref for CaptureConfig {
    type Target = CaptureSettings;

    fn deref(&self) -> &CaptureSettings {
        &self.settings
    }
}

impl std::fmt::Debug for CaptureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.settings.fmt(f)
    }
}

impl CaptureConfig {
    /// Checks what no setting can check alone: a source, column lists and
    /// filters for named tables, and the Kafka settings `--output` needs.
    pub fn resolve(settings: CaptureSettings) -> Result<Self, ConfigError> {
        let source = settings.source_url.clone().ok_or(ConfigError::MissingSourceUrl)?;
        let named = |t: &TableName| -> Result<(), ConfigError> {
            if settings.tables.contains(t) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{t} has a column list or row filter but is not in --tables: lists and filters apply to tables named there"
                )))
            }
        };
        for (t, _) in &settings.table_columns {
            named(t)?;
        }
        for (t, _) in &settings.table_filters {
            named(t)?;
        }
        let kafka = &settings.kafka;
        match settings.output {
            OutputKind::Stdout if kafka.format == Format::Debezium => {
                return Err(ConfigError::Invalid(
                    "--format debezium applies to --output kafka: stdout writes JSON lines".into(),
                ))
            }
            OutputKind::Stdout => {}
            OutputKind::Kafka => {
                kafka.endpoints()?;
            }
        }
        if kafka.format == Format::Walhouse && kafka.toast_placeholder != DEFAULT_TOAST_PLACEHOLDER {
            return Err(ConfigError::Invalid(
                "--toast-placeholder applies to --format debezium only: walhouse's format lists unchanged TOAST columns in unchanged_toast".into(),
            ));
        }
        Ok(CaptureConfig { settings, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parsed(extra: &[&str]) -> Result<CaptureConfig, String> {
        let mut argv = vec!["walhouse-capture"];
        argv.extend_from_slice(extra);
        // Assumes no WALHOUSE_* variables in the test environment.
        let args = CaptureArgs::parse_layered(argv).map_err(|e| e.to_string())?;
        CaptureConfig::resolve(args.settings).map_err(|e| e.to_string())
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
            parsed(&a)
        };
        let native = k(&[]).expect("native");
        assert_eq!(
            (native.kafka.format, native.kafka.skipped()),
            (Format::Walhouse, SkippedOperations::default())
        );
        let dbz = k(&["--format", "debezium"]).expect("debezium");
        assert_eq!(dbz.kafka.format, Format::Debezium);
        assert!(dbz.kafka.skipped().contains('t') && !dbz.kafka.skipped().contains('d'));
        assert_eq!(dbz.kafka.toast_placeholder, DEFAULT_TOAST_PLACEHOLDER);
        let all = k(&["--format", "debezium", "--skipped-operations", "none"]).expect("none");
        assert_eq!(all.kafka.skipped(), SkippedOperations::default());
        let e = k(&["--toast-placeholder", "x"]).expect_err("walhouse format has no placeholder");
        assert!(e.contains("--format debezium"), "{e}");
        let e = parsed(&["--source-url", "postgres://u@h/db", "--format", "debezium"])
            .expect_err("stdout has no Debezium format");
        assert!(e.contains("--output kafka"), "{e}");
    }

    #[test]
    fn skipped_operations_parse_and_refuse_unknown_letters() {
        assert_eq!(
            SkippedOperations::parse("none").expect("none"),
            SkippedOperations::default()
        );
        assert_eq!(SkippedOperations::parse("t").expect("t"), SkippedOperations(vec!['t']));
        assert_eq!(
            SkippedOperations::parse("c, u,u").expect("c,u"),
            SkippedOperations(vec!['c', 'u'])
        );
        let e = SkippedOperations::parse("tx").expect_err("x");
        assert!(e.contains("'x'"), "{e}");
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let f = file(
            "source_url = \"postgres://file@h/db\"\nslot = \"from_file\"\ntables = [\"public.a\", \"shop.b\"]\n\
             snapshot_chunk_pages = 7\ntombstones = false\ntopic_replication_factor = -1\n",
        );
        let path = f.path().to_str().expect("utf8 path");
        let c = parsed(&["--config", path, "--slot", "from_flag"]).expect("valid");
        assert_eq!(c.slot, "from_flag");
        assert_eq!(c.source.user, "file");
        assert_eq!(c.publication, "walhouse");
        assert_eq!((c.snapshot_chunk_pages, c.kafka.tombstones), (7, false));
        assert_eq!(
            c.table_selection(),
            TableSelection::Tables(vec![
                TableName::parse("public.a").expect("valid"),
                TableName::parse("shop.b").expect("valid")
            ])
        );
        assert_eq!(c.output, OutputKind::Stdout);
        assert_eq!(c.max_reconnect_attempts, 10);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let f = file("source_url = \"postgres://h/db\"\nslto = \"typo\"\n");
        let path = f.path().to_str().expect("utf8 path");
        let err = parsed(&["--config", path]).expect_err("typo rejected");
        assert!(err.contains("slto"), "{err}");
        let f = file("source_url = \"postgres://h/db\"\nsnapshot_connections = 0\n");
        let err = parsed(&["--config", f.path().to_str().expect("utf8 path")]).expect_err("out of range");
        assert!(err.contains("snapshot_connections"), "{err}");
        assert!(matches!(
            CaptureConfig::resolve(
                CaptureArgs::parse_layered(["walhouse-capture"])
                    .expect("no flags")
                    .settings
            ),
            Err(ConfigError::MissingSourceUrl)
        ));
        assert!(parsed(&["--source-url", "postgres://h/d", "--slot", "Bad-Slot"]).is_err());
        assert!(parsed(&["--source-url", "mysql://h/d"]).is_err());
        let e = parsed(&["--source-url", "postgres://u:hunter2@h:notaport/d"]).expect_err("bad port");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn kafka_settings_from_flags_and_the_kafka_table() {
        let f = file("[kafka]\n\"compression.type\" = \"zstd\"\n\"linger.ms\" = 20\n");
        let path = f.path().to_str().expect("utf8 path");
        let c = parsed(&[
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
        ])
        .expect("valid");
        let k = &c.kafka;
        assert_eq!(k.topic_prefix, "walhouse");
        assert!(!k.tombstones);
        let options = k.librdkafka();
        assert_eq!(options.get("compression.type").map(String::as_str), Some("zstd"));
        assert_eq!(
            options.get("linger.ms").map(String::as_str),
            Some("50"),
            "flags beat the file"
        );
        let err = parsed(&["--source-url", "postgres://h/d", "--output", "kafka"]).expect_err("brokers required");
        assert!(err.contains("--brokers"), "{err}");
    }

    #[test]
    fn column_lists_and_row_filters_need_their_table_in_tables() {
        let c = parsed(&[
            "--source-url",
            "postgres://h/d",
            "--tables",
            "s.a,\"Odd T\"",
            "--table-columns",
            "s.a=id, name;\"Odd T\"=x",
            "--table-filter",
            "s.a=status <> 'draft' AND id = 1",
        ])
        .expect("valid");
        let a = TableName::parse("s.a").expect("name");
        let odd = TableName::parse("\"Odd T\"").expect("name");
        let options = c.table_options();
        assert_eq!(options.columns[&a], ["id", "name"]);
        assert_eq!(options.columns[&odd], ["x"]);
        assert_eq!(options.filters[&a], "status <> 'draft' AND id = 1");
        assert_eq!(
            options.spec(&a),
            "\"s\".\"a\" (\"id\", \"name\") WHERE (status <> 'draft' AND id = 1)"
        );
        for bad in [
            vec!["--table-columns", "s.b=id"],
            vec!["--table-filter", "s.a"],
            vec!["--table-columns", "s.a=id,,x"],
        ] {
            let mut argv = vec!["--source-url", "postgres://h/d", "--tables", "s.a"];
            argv.extend(bad.iter().copied());
            assert!(parsed(&argv).is_err(), "{bad:?}");
        }
        // Without --tables (FOR ALL TABLES) there is nothing to attach a list to.
        assert!(parsed(&["--source-url", "postgres://h/d", "--table-filter", "s.a=true"]).is_err());
        // The file's form: tables of table = list or filter.
        let f = file(
            "source_url = \"postgres://h/d\"\ntables = [\"s.a\"]\n[table_columns]\n\"s.a\" = [\"id\", \"name\"]\n\
             [table_filters]\n\"s.a\" = \"id > 1\"\n",
        );
        let c = parsed(&["--config", f.path().to_str().expect("utf8")]).expect("file form");
        assert_eq!(
            c.table_options().spec(&a),
            "\"s\".\"a\" (\"id\", \"name\") WHERE (id > 1)"
        );
    }

    #[test]
    fn comma_separated_tables_flag() {
        let c = parsed(&["--source-url", "postgres://h/d", "--tables", "a,s.b"]).expect("valid");
        let TableSelection::Tables(t) = c.table_selection() else {
            panic!("expected tables");
        };
        assert_eq!(t.iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["public.a", "s.b"]);
    }
}
