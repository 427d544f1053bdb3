//! Warehouse targets behind one small trait: create and widen tables, append
//! a batch of rows together with the Kafka offsets it consumed (one
//! transaction), read the stored offsets back.
//!
//! The sink's loop knows nothing of a target beyond [`Warehouse`]; adding
//! ClickHouse or BigQuery means one more module here. DDL is generated from
//! [`TableDef`]s in each target's [`Dialect`].

pub mod arrow;
pub mod duckdb;
pub mod iceberg;
pub mod isolate;
pub mod origins;
pub mod postgres;
pub mod rows;

pub use origins::{OriginRef, Origins};
pub use rows::{Encoded, TableRows};

use crate::quote;
use std::collections::HashMap;

/// The column types the sink creates. Wider source types map onto these
/// (see the README's warehouse type table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlType {
    Boolean,
    Integer,
    BigInt,
    Real,
    Double,
    Decimal { precision: u32, scale: u32 },
    Text,
    Bytes,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
}

/// The warehouses' infinite dates and timestamps (defined with the calendar).
pub use crate::calendar::{DATE_INFINITY, DATE_NEG_INFINITY, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY};

/// One value of a row, already in the column's type.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// `unscaled × 10^-scale`, for decimals of up to 38 digits.
    Decimal {
        unscaled: i128,
        precision: u8,
        scale: u8,
    },
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01; `±i32::MAX` is ±infinity.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 1970-01-01 00:00 (no zone); `±i64::MAX` is ±infinity.
    Timestamp(i64),
    /// Microseconds since 1970-01-01 00:00 UTC; `±i64::MAX` is ±infinity.
    TimestampTz(i64),
    /// Canonical hyphenated text.
    Uuid(String),
}

impl Cell {
    /// Makes this cell `text`, reusing its string if it holds one: rows
    /// decoded into the same cells message after message allocate no
    /// text once warm.
    pub fn set_text(&mut self, text: &str) {
        match self {
            Cell::Text(t) => {
                t.clear();
                t.push_str(text);
            }
            other => *other = Cell::Text(text.to_owned()),
        }
    }

    /// The cell's kind, for errors that must not print its value.
    pub fn kind(&self) -> &'static str {
        match self {
            Cell::Null => "null",
            Cell::Bool(_) => "boolean",
            Cell::Int(_) => "integer",
            Cell::Long(_) => "bigint",
            Cell::Float(_) => "real",
            Cell::Double(_) => "double",
            Cell::Decimal { .. } => "decimal",
            Cell::Text(_) => "text",
            Cell::Bytes(_) => "bytes",
            Cell::Date(_) => "date",
            Cell::Time(_) => "time",
            Cell::Timestamp(_) => "timestamp",
            Cell::TimestampTz(_) => "timestamptz",
            Cell::Uuid(_) => "uuid",
        }
    }

    /// A rough byte size, for batching by bytes.
    pub fn weight(&self) -> usize {
        match self {
            Cell::Text(s) | Cell::Uuid(s) => s.len() + 8,
            Cell::Bytes(b) => b.len() + 8,
            _ => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
}

impl ColumnDef {
    pub fn new(name: &str, ty: SqlType) -> Self {
        ColumnDef { name: name.into(), ty }
    }
}

/// A table by schema and name (both as the user sees them, unquoted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

impl TableRef {
    pub fn new(schema: &str, name: &str) -> Self {
        TableRef {
            schema: schema.into(),
            name: name.into(),
        }
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote::ident(&self.schema), quote::ident(&self.name))
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDef {
    pub table: TableRef,
    pub columns: Vec<ColumnDef>,
}

/// Where a record came from: a Kafka message or a line of a file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    /// What fed it: `cdc`, `companies`, `insolvency_csv`.
    pub source: &'static str,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub file: Option<String>,
    pub line: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub raw: Option<Vec<u8>>,
}

impl Origin {
    /// Its bytes as held in memory, for batching by bytes.
    pub fn weight(&self) -> usize {
        self.borrow().weight()
    }
}

/// A record that could not be stored as a row, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub origin: Origin,
    pub error: String,
}

/// Where a change stands in the source's history: its transaction's
/// commit LSN, then its record's ordinal in the transaction. Positions
/// order changes as the source committed them, so a change sent again
/// (capture resends from its last confirmed LSN) has a position no higher
/// than one already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourcePosition {
    pub commit_lsn: i64,
    pub tx_ordinal: i64,
}

impl std::fmt::Display for SourcePosition {
    /// `<commit LSN>#<ordinal>`, the LSN as Postgres prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The column is signed; the LSN's bits are the same.
        write!(
            f,
            "{}#{}",
            crate::postgres::Lsn(self.commit_lsn as u64),
            self.tx_ordinal
        )
    }
}

/// A partition's high-water mark: the highest source position stored from
/// it, and the source system that wrote it. Positions of two systems do
/// not compare (each counts its own LSNs), so a change from another
/// system is never measured against the mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub position: SourcePosition,
    /// The database system identifier; `None` for records from before
    /// capture wrote it.
    pub system_id: Option<u64>,
}

impl Mark {
    /// From the offsets table's columns (the system identifier as text:
    /// it is an unsigned 64-bit number).
    pub fn from_columns(commit_lsn: Option<i64>, tx_ordinal: Option<i64>, system_id: Option<String>) -> Option<Mark> {
        Some(Mark {
            position: SourcePosition {
                commit_lsn: commit_lsn?,
                tx_ordinal: tx_ordinal?,
            },
            system_id: system_id.and_then(|s| s.parse().ok()),
        })
    }

    /// The offsets table's columns of `mark`.
    pub fn columns(mark: Option<Mark>) -> (Option<i64>, Option<i64>, Option<String>) {
        match mark {
            Some(m) => (
                Some(m.position.commit_lsn),
                Some(m.position.tx_ordinal),
                m.system_id.map(|s| s.to_string()),
            ),
            None => (None, None, None),
        }
    }
}

/// What the warehouse holds of a partition: the next offset to read, and
/// its high-water mark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredOffset {
    pub next: i64,
    pub high: Option<Mark>,
}

/// A partition's consumed position after a batch, fenced by the position
/// the batch started from: the write fails if another writer moved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetUpdate {
    pub topic: String,
    pub partition: i32,
    /// The stored position the batch continues from (`None`: none stored).
    pub from: Option<i64>,
    pub next: i64,
    /// The partition's high-water mark, this batch included (kept with the
    /// offset, in the same transaction).
    pub high: Option<Mark>,
}

/// A loaded file, recorded in the same transaction as its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLoad {
    pub sha256: String,
    pub file: String,
    pub rows: i64,
    pub dead_letters: i64,
}

/// Everything one warehouse transaction writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub tables: Vec<(TableRef, TableRows)>,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<OffsetUpdate>,
    pub file: Option<FileLoad>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.len()).sum()
    }

    /// The dead letters as rows of `walhouse.dead_letters` for `dialect`'s
    /// target (written like any other table, in the same transaction).
    pub fn dead_letter_rows(&self, dialect: Dialect) -> Result<Option<(TableRef, TableRows)>, WarehouseError> {
        if self.dead_letters.is_empty() {
            return Ok(None);
        }
        let columns = DEAD_LETTER_COLUMNS
            .iter()
            .map(|(n, t)| ColumnDef::new(n, t.clone()))
            .collect();
        let mut rows = TableRows::new(dialect, columns)?;
        let now = crate::postgres::pgoutput::PgTimestamp::now().unix_micros();
        for letter in &self.dead_letters {
            rows.push(&letter.cells(now)).map_err(|message| WarehouseError::Sql {
                context: "storing a dead letter".into(),
                message,
                failure: Failure::Statement,
            })?;
        }
        rows.seal()?;
        Ok(Some((TableRef::new("walhouse", "dead_letters"), rows)))
    }
}

/// The columns of `walhouse.dead_letters` (every one a dead letter fills:
/// Iceberg has no column defaults).
pub(crate) const DEAD_LETTER_COLUMNS: [(&str, SqlType); 10] = [
    ("source", SqlType::Text),
    ("topic", SqlType::Text),
    ("partition", SqlType::Integer),
    ("offset", SqlType::BigInt),
    ("file", SqlType::Text),
    ("line", SqlType::BigInt),
    ("key", SqlType::Bytes),
    ("raw", SqlType::Bytes),
    ("error", SqlType::Text),
    ("failed_at", SqlType::TimestampTz),
];

impl DeadLetter {
    fn cells(&self, now: i64) -> Vec<Cell> {
        let o = &self.origin;
        // Text columns: a NUL (which Postgres refuses) is written escaped,
        // so a dead letter can always be stored.
        let text = |s: &str| Cell::Text(s.replace('\0', "\\u0000"));
        vec![
            Cell::Text(o.source.to_owned()),
            o.topic.as_deref().map_or(Cell::Null, text),
            o.partition.map_or(Cell::Null, Cell::Int),
            o.offset.map_or(Cell::Null, Cell::Long),
            o.file.as_deref().map_or(Cell::Null, text),
            o.line.map_or(Cell::Null, Cell::Long),
            o.key.clone().map_or(Cell::Null, Cell::Bytes),
            o.raw.clone().map_or(Cell::Null, Cell::Bytes),
            text(&self.error),
            Cell::TimestampTz(now),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("cannot open the warehouse {target}: {message}")]
    Open { target: String, message: String },
    #[error("warehouse {context}: {message}")]
    Sql {
        context: String,
        message: String,
        failure: Failure,
    },
    #[error(
        "the stored offset of {topic}[{partition}] is no longer {expected:?}: another sink instance wrote it \
         (the batch was rolled back; positions are read again)"
    )]
    Fenced {
        topic: String,
        partition: i32,
        expected: Option<i64>,
    },
}

impl WarehouseError {
    /// How a statement failed; `Io` for everything that is not a refusal.
    pub fn failure(&self) -> Failure {
        match self {
            WarehouseError::Sql { failure, .. } => *failure,
            _ => Failure::Io,
        }
    }
}

/// How a statement failed: it decides whether the sink sets one row aside
/// (a value), pauses one topic (a definition the target cannot hold), or
/// stops and retries from the stored offsets (anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The target refused a value: out of range, too wide, malformed.
    Value,
    /// The target refused the statement itself: catalog, names, types.
    Statement,
    /// The target failed or could not be reached: connection, I/O, memory.
    Io,
}

/// Where a target's SQL differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    DuckDb,
    Postgres,
    /// Not SQL: Iceberg's own types, and no views shared by its readers.
    Iceberg,
}

impl Dialect {
    pub fn type_name(self, ty: &SqlType) -> String {
        use SqlType::*;
        match (self, ty) {
            (Dialect::Iceberg, ty) => iceberg::types::iceberg_type(ty).to_string(),
            (_, Boolean) => "BOOLEAN".into(),
            (_, Integer) => "INTEGER".into(),
            (_, BigInt) => "BIGINT".into(),
            (_, Real) => "REAL".into(),
            (_, Double) => "DOUBLE PRECISION".into(),
            (_, Decimal { precision, scale }) => format!("DECIMAL({precision},{scale})"),
            (Dialect::DuckDb, Text) => "VARCHAR".into(),
            (Dialect::Postgres, Text) => "TEXT".into(),
            (Dialect::DuckDb, Bytes) => "BLOB".into(),
            (Dialect::Postgres, Bytes) => "BYTEA".into(),
            (_, Date) => "DATE".into(),
            (_, Time) => "TIME".into(),
            (_, Timestamp) => "TIMESTAMP".into(),
            (_, TimestampTz) => "TIMESTAMPTZ".into(),
            (_, Uuid) => "UUID".into(),
            (Dialect::DuckDb, Json) => "JSON".into(),
            (Dialect::Postgres, Json) => "JSONB".into(),
        }
    }

    /// Whether a column declared as `declared` may be widened to hold
    /// `wanted` (Iceberg's own promotions; on the SQL targets a type change
    /// is an incompatible change).
    pub fn can_widen(self, declared: &str, wanted: &SqlType) -> bool {
        self == Dialect::Iceberg && iceberg::widen::allowed(declared, wanted)
    }

    /// Whether a column declared as `declared` (as the catalog reports it)
    /// holds `wanted`.
    pub fn same_type(self, declared: &str, wanted: &SqlType) -> bool {
        if self == Dialect::Iceberg {
            return iceberg::types::holds(declared, wanted);
        }
        let d = declared.to_ascii_uppercase();
        let d = d.trim();
        let norm = |s: &str| s.replace(' ', "");
        match wanted {
            SqlType::Decimal { precision, scale } => {
                norm(d) == format!("DECIMAL({precision},{scale})") || norm(d) == format!("NUMERIC({precision},{scale})")
            }
            SqlType::Double => matches!(d, "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8"),
            SqlType::Real => matches!(d, "REAL" | "FLOAT" | "FLOAT4"),
            SqlType::Integer => matches!(d, "INTEGER" | "INT" | "INT4"),
            SqlType::BigInt => matches!(d, "BIGINT" | "INT8"),
            SqlType::Text => matches!(d, "VARCHAR" | "TEXT" | "CHARACTER VARYING"),
            SqlType::Bytes => matches!(d, "BLOB" | "BYTEA"),
            SqlType::Timestamp => matches!(d, "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE"),
            SqlType::TimestampTz => matches!(d, "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE"),
            SqlType::Time => matches!(d, "TIME" | "TIME WITHOUT TIME ZONE"),
            // Binary COPY writes `jsonb`'s own format: a `json` column is another type.
            SqlType::Json => match self {
                Dialect::DuckDb | Dialect::Iceberg => d == "JSON",
                Dialect::Postgres => d == "JSONB",
            },
            other => d == self.type_name(other),
        }
    }

    /// Why this target cannot store `cell`, if it cannot: checked before a
    /// row joins a batch, so one such value is a dead letter instead of a
    /// failed batch.
    pub fn refuses(self, cell: &Cell) -> Option<&'static str> {
        // Postgres's own bounds, in days and microseconds since 1970-01-01:
        // 4714-11-24 BC (Julian day 0) to 5874897 AD for dates; from the
        // same day for timestamps (their upper bound is past i64 here).
        const PG_MIN_DAY: i32 = -2_440_588;
        const PG_MAX_DAY: i32 = 2_145_042_906;
        const PG_MIN_MICROS: i64 = -210_866_803_200_000_000;
        match (self, cell) {
            (Dialect::Postgres, Cell::Text(s)) if s.contains('\0') => {
                Some("a text value holds a NUL character (\\u0000), which Postgres cannot store")
            }
            (
                _,
                Cell::Decimal {
                    unscaled, precision, ..
                },
            ) if digits(*unscaled) > u32::from(*precision) => {
                Some("a decimal value has more digits than its declared precision")
            }
            (_, Cell::Uuid(s)) if !is_uuid(s) => Some("a uuid value is not a UUID"),
            (_, Cell::Date(DATE_INFINITY | DATE_NEG_INFINITY)) => None,
            (
                _,
                Cell::Timestamp(TIMESTAMP_INFINITY | TIMESTAMP_NEG_INFINITY)
                | Cell::TimestampTz(TIMESTAMP_INFINITY | TIMESTAMP_NEG_INFINITY),
            ) => None,
            (Dialect::Postgres, Cell::Date(d)) if !(PG_MIN_DAY..=PG_MAX_DAY).contains(d) => {
                Some("a date is outside what Postgres stores (4713 BC to 5874897 AD)")
            }
            (Dialect::Postgres, Cell::Timestamp(t) | Cell::TimestampTz(t)) if *t < PG_MIN_MICROS => {
                Some("a timestamp is before what Postgres stores (4713 BC)")
            }
            _ => None,
        }
    }

    /// The statements that make `def`'s table and its schema.
    pub fn create_table_statements(self, def: &TableDef) -> Vec<String> {
        vec![
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote::ident(&def.table.schema)),
            self.create_table(def),
        ]
    }

    pub fn add_columns_statements(self, table: &TableRef, columns: &[ColumnDef]) -> Vec<String> {
        columns.iter().map(|c| self.add_column(table, c)).collect()
    }

    pub fn create_table(self, def: &TableDef) -> String {
        let cols: Vec<String> = def
            .columns
            .iter()
            .map(|c| format!("{} {}", quote::ident(&c.name), self.type_name(&c.ty)))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            def.table.quoted(),
            cols.join(", ")
        )
    }

    pub fn add_column(self, table: &TableRef, column: &ColumnDef) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
            table.quoted(),
            quote::ident(&column.name),
            self.type_name(&column.ty)
        )
    }

    /// walhouse's own tables in the warehouse, in schema `walhouse`.
    pub fn state_tables(self) -> Vec<String> {
        let (bytes, now) = match self {
            Dialect::DuckDb | Dialect::Iceberg => ("BLOB", "current_timestamp"),
            Dialect::Postgres => ("BYTEA", "now()"),
        };
        vec![
            "CREATE SCHEMA IF NOT EXISTS walhouse".into(),
            format!(
                "CREATE TABLE IF NOT EXISTS walhouse.offsets (consumer_group VARCHAR NOT NULL, topic VARCHAR NOT NULL, \
                 \"partition\" INTEGER NOT NULL, next_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT {now}, \
                 PRIMARY KEY (consumer_group, topic, \"partition\"))"
            ),
            // Added after the table's first release: warehouses made before
            // get them here.
            "ALTER TABLE walhouse.offsets ADD COLUMN IF NOT EXISTS high_commit_lsn BIGINT".into(),
            "ALTER TABLE walhouse.offsets ADD COLUMN IF NOT EXISTS high_tx_ordinal BIGINT".into(),
            "ALTER TABLE walhouse.offsets ADD COLUMN IF NOT EXISTS high_system_id VARCHAR".into(),
            format!(
                "CREATE TABLE IF NOT EXISTS walhouse.dead_letters (source VARCHAR NOT NULL, topic VARCHAR, \"partition\" INTEGER, \
                 \"offset\" BIGINT, file VARCHAR, line BIGINT, \"key\" {bytes}, raw {bytes}, error VARCHAR NOT NULL, \
                 failed_at TIMESTAMPTZ NOT NULL DEFAULT {now})"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS walhouse.file_loads (sha256 VARCHAR PRIMARY KEY, file VARCHAR NOT NULL, \
                 \"rows\" BIGINT NOT NULL, dead_letters BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT {now})"
            ),
        ]
    }
}

/// What the sink needs of a warehouse. Every method is one round of work
/// against the target; `write` is all-or-nothing.
#[allow(async_fn_in_trait)]
pub trait Warehouse {
    fn dialect(&self) -> Dialect;

    /// A short description for logs (never holds a password).
    fn describe(&self) -> String;

    /// Makes walhouse's own tables (offsets, dead letters, file loads) if
    /// missing.
    async fn prepare(&mut self) -> Result<(), WarehouseError>;

    /// Makes `def`'s table, and its schema if missing.
    async fn create_table(&mut self, def: &TableDef) -> Result<(), WarehouseError>;

    /// Adds `columns` to `table`, in one change.
    async fn add_columns(&mut self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), WarehouseError>;

    /// Gives `columns` of `table` the wider types they now have: asked only
    /// for widenings [`Dialect::can_widen`] allows.
    async fn widen_columns(&mut self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), WarehouseError>;

    /// Creates or replaces the views over `raw` (SQL statements, in order,
    /// in one transaction). A target without views of its own (Iceberg)
    /// keeps them with the table for its readers (DuckDB's, see
    /// `walhouse-sink duckdb-views`).
    async fn define_views(&mut self, raw: &TableRef, statements: &[String]) -> Result<(), WarehouseError>;

    /// The columns of a table and their declared types, or `None` if it
    /// does not exist.
    async fn columns(&mut self, table: &TableRef) -> Result<Option<Vec<(String, String)>>, WarehouseError>;

    /// The stored next offset and highest source position of every
    /// partition of `consumer_group`.
    async fn offsets(&mut self, consumer_group: &str) -> Result<HashMap<(String, i32), StoredOffset>, WarehouseError>;

    /// Appends the batch's rows and dead letters and moves its offsets, in
    /// one transaction. (`Send`: the sink writes on its own task while it
    /// consumes the next batch.)
    fn write(
        &mut self,
        consumer_group: &str,
        batch: &Batch,
    ) -> impl std::future::Future<Output = Result<(), WarehouseError>> + Send;

    /// Appends `rows` to `table` in a transaction that is rolled back:
    /// whether the target takes them (see [`isolate`]).
    fn probe(
        &mut self,
        table: &TableRef,
        rows: &TableRows,
    ) -> impl std::future::Future<Output = Result<(), WarehouseError>> + Send;

    /// Whether a file with this digest was loaded.
    async fn file_loaded(&mut self, sha256: &str) -> Result<bool, WarehouseError>;

    /// Runs a query and returns every value as text (`None` for NULL), for
    /// reports and tests.
    async fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError>;
}

/// The DDL methods of a SQL target's [`Warehouse`] impl: statements in
/// `$dialect`, run in one transaction by the target's own `execute`.
macro_rules! sql_ddl {
    ($dialect:expr) => {
        async fn prepare(&mut self) -> Result<(), WarehouseError> {
            self.execute(&$dialect.state_tables()).await
        }

        async fn create_table(&mut self, def: &$crate::warehouse::TableDef) -> Result<(), WarehouseError> {
            self.execute(&$dialect.create_table_statements(def)).await
        }

        async fn add_columns(
            &mut self,
            table: &$crate::warehouse::TableRef,
            columns: &[$crate::warehouse::ColumnDef],
        ) -> Result<(), WarehouseError> {
            self.execute(&$dialect.add_columns_statements(table, columns))
                .await
        }

        /// Never asked: on a SQL target a type change is an incompatible change.
        async fn widen_columns(
            &mut self,
            table: &$crate::warehouse::TableRef,
            _columns: &[$crate::warehouse::ColumnDef],
        ) -> Result<(), WarehouseError> {
            Err(WarehouseError::Sql {
                context: format!("widening {table}"),
                message: "this target changes no column's type".into(),
                failure: $crate::warehouse::Failure::Statement,
            })
        }

        async fn define_views(
            &mut self,
            _raw: &$crate::warehouse::TableRef,
            statements: &[String],
        ) -> Result<(), WarehouseError> {
            self.execute(statements).await
        }
    };
}
pub(crate) use sql_ddl;

/// Either target, as the configuration names it at run time (the trait's
/// async methods make it unfit for `dyn`).
pub enum AnyWarehouse {
    DuckDb(duckdb::DuckDbWarehouse),
    Postgres(postgres::PostgresWarehouse),
    Iceberg(iceberg::IcebergWarehouse),
}

impl Warehouse for AnyWarehouse {
    fn dialect(&self) -> Dialect {
        match self {
            AnyWarehouse::DuckDb(w) => w.dialect(),
            AnyWarehouse::Postgres(w) => w.dialect(),
            AnyWarehouse::Iceberg(w) => w.dialect(),
        }
    }

    fn describe(&self) -> String {
        match self {
            AnyWarehouse::DuckDb(w) => w.describe(),
            AnyWarehouse::Postgres(w) => w.describe(),
            AnyWarehouse::Iceberg(w) => w.describe(),
        }
    }

    async fn prepare(&mut self) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.prepare().await,
            AnyWarehouse::Postgres(w) => w.prepare().await,
            AnyWarehouse::Iceberg(w) => w.prepare().await,
        }
    }

    async fn create_table(&mut self, def: &TableDef) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.create_table(def).await,
            AnyWarehouse::Postgres(w) => w.create_table(def).await,
            AnyWarehouse::Iceberg(w) => w.create_table(def).await,
        }
    }

    async fn add_columns(&mut self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.add_columns(table, columns).await,
            AnyWarehouse::Postgres(w) => w.add_columns(table, columns).await,
            AnyWarehouse::Iceberg(w) => w.add_columns(table, columns).await,
        }
    }

    async fn widen_columns(&mut self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.widen_columns(table, columns).await,
            AnyWarehouse::Postgres(w) => w.widen_columns(table, columns).await,
            AnyWarehouse::Iceberg(w) => w.widen_columns(table, columns).await,
        }
    }

    async fn define_views(&mut self, raw: &TableRef, statements: &[String]) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.define_views(raw, statements).await,
            AnyWarehouse::Postgres(w) => w.define_views(raw, statements).await,
            AnyWarehouse::Iceberg(w) => w.define_views(raw, statements).await,
        }
    }

    async fn columns(&mut self, table: &TableRef) -> Result<Option<Vec<(String, String)>>, WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.columns(table).await,
            AnyWarehouse::Postgres(w) => w.columns(table).await,
            AnyWarehouse::Iceberg(w) => w.columns(table).await,
        }
    }

    async fn offsets(&mut self, consumer_group: &str) -> Result<HashMap<(String, i32), StoredOffset>, WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.offsets(consumer_group).await,
            AnyWarehouse::Postgres(w) => w.offsets(consumer_group).await,
            AnyWarehouse::Iceberg(w) => w.offsets(consumer_group).await,
        }
    }

    async fn write(&mut self, consumer_group: &str, batch: &Batch) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.write(consumer_group, batch).await,
            AnyWarehouse::Postgres(w) => w.write(consumer_group, batch).await,
            AnyWarehouse::Iceberg(w) => w.write(consumer_group, batch).await,
        }
    }

    async fn probe(&mut self, table: &TableRef, rows: &TableRows) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.probe(table, rows).await,
            AnyWarehouse::Postgres(w) => w.probe(table, rows).await,
            AnyWarehouse::Iceberg(w) => w.probe(table, rows).await,
        }
    }

    async fn file_loaded(&mut self, sha256: &str) -> Result<bool, WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.file_loaded(sha256).await,
            AnyWarehouse::Postgres(w) => w.file_loaded(sha256).await,
            AnyWarehouse::Iceberg(w) => w.file_loaded(sha256).await,
        }
    }

    async fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        match self {
            AnyWarehouse::DuckDb(w) => w.query_text(sql).await,
            AnyWarehouse::Postgres(w) => w.query_text(sql).await,
            AnyWarehouse::Iceberg(w) => w.query_text(sql).await,
        }
    }
}

/// Why `cells` cannot be a row of `columns` by their count: the column
/// named is the first without a value (none for too many values), then
/// the reason. Both encoders refuse such a row whole.
pub(crate) fn width_mismatch(columns: &[ColumnDef], cells: &[Cell]) -> Option<(String, String)> {
    (cells.len() != columns.len()).then(|| {
        (
            columns.get(cells.len()).map(|c| c.name.clone()).unwrap_or_default(),
            format!("the row has {} values for {} columns", cells.len(), columns.len()),
        )
    })
}

/// Why a decimal of `unscaled` does not fit a column of `precision`
/// digits, if it does not: checked by each target's writer before the
/// engine sees the value, which might narrow it instead of refusing it.
pub(crate) fn too_many_digits(unscaled: i128, precision: u32) -> Option<String> {
    (digits(unscaled) > precision)
        .then(|| format!("a decimal value has more digits than its declared precision ({precision})"))
}

/// Decimal digits of `v` (1 for 0).
fn digits(v: i128) -> u32 {
    v.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1)
}

/// Whether `s` is a UUID in the hyphenated form.
pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Formats a decimal's unscaled integer with its scale.
pub fn decimal_text(unscaled: i128, scale: u8) -> String {
    let neg = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let mut out = String::with_capacity(digits.len() + 3);
    if neg {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_format_with_their_scale() {
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(decimal_text(7, 0), "7");
        assert_eq!(decimal_text(0, 4), "0.0000");
    }

    #[test]
    fn declared_types_are_recognised_in_both_dialects() {
        assert!(Dialect::Postgres.same_type(
            "numeric(19,4)",
            &SqlType::Decimal {
                precision: 19,
                scale: 4
            }
        ));
        assert!(Dialect::DuckDb.same_type(
            "DECIMAL(19,4)",
            &SqlType::Decimal {
                precision: 19,
                scale: 4
            }
        ));
        assert!(Dialect::Postgres.same_type("timestamp with time zone", &SqlType::TimestampTz));
        assert!(Dialect::DuckDb.same_type("UUID", &SqlType::Uuid));
        assert!(!Dialect::DuckDb.same_type("VARCHAR", &SqlType::BigInt));
    }

    #[test]
    fn values_outside_a_target_are_refused_before_the_batch() {
        let decimal = |unscaled| Cell::Decimal {
            unscaled,
            precision: 5,
            scale: 2,
        };
        assert!(Dialect::DuckDb.refuses(&decimal(99_999)).is_none());
        assert!(Dialect::DuckDb.refuses(&decimal(-99_999)).is_none());
        assert!(Dialect::DuckDb.refuses(&decimal(0)).is_none());
        assert!(Dialect::DuckDb.refuses(&decimal(100_000)).is_some());
        assert!(Dialect::Postgres.refuses(&decimal(-123_456_789)).is_some());
        assert!(Dialect::Postgres
            .refuses(&Cell::Uuid("a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a".into()))
            .is_none());
        assert!(Dialect::DuckDb.refuses(&Cell::Uuid("not-a-uuid".into())).is_some());
        // -300000000000 s: about 7500 BC.
        let ancient = Cell::TimestampTz(-300_000_000_000 * 1_000_000);
        assert!(Dialect::Postgres.refuses(&ancient).is_some());
        assert!(Dialect::DuckDb.refuses(&ancient).is_none());
        assert!(Dialect::Postgres
            .refuses(&Cell::Timestamp(-210_866_803_200_000_000))
            .is_none());
        assert!(Dialect::Postgres.refuses(&Cell::Date(-2_440_589)).is_some());
        assert!(Dialect::Postgres.refuses(&Cell::Date(i32::MAX - 1)).is_some());
        assert!(Dialect::Postgres.refuses(&Cell::Date(DATE_INFINITY)).is_none());
        assert!(Dialect::Postgres
            .refuses(&Cell::TimestampTz(TIMESTAMP_NEG_INFINITY))
            .is_none());
        assert!(Dialect::Postgres.refuses(&Cell::Date(0)).is_none());
    }

    #[test]
    fn nul_characters_are_refused_by_postgres_only() {
        let nul = Cell::Text("a\0b".into());
        assert!(Dialect::Postgres.refuses(&nul).is_some());
        assert!(Dialect::DuckDb.refuses(&nul).is_none());
        assert!(Dialect::Postgres.refuses(&Cell::Text("ab".into())).is_none());
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(
            TableRef::new("raw_public", "a\"b").quoted(),
            "\"raw_public\".\"a\"\"b\""
        );
        assert_eq!(quote::literal("it's"), "'it''s'");
    }
}
