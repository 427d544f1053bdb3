//! Apache Iceberg tables as a warehouse (issue 23, being built): a SQL
//! catalog named `walhouse` (SQLite in `<DIR>/catalog.db` for the
//! embedded form), each raw table an Iceberg table in a namespace named
//! as the other targets' schemas, data in Parquet under `<DIR>`.
//!
//! Here: opening the catalog, making and widening tables (a new column is
//! a schema update with a new field id), and appending rows as one Iceberg
//! commit whose snapshot summary carries properties, as a compare-and-set
//! on the table as read ([`pinned`]). How a sink batch becomes commits,
//! exactly once, is [`target`].

mod pinned;
pub mod positions;
mod target;
pub mod types;
pub mod widen;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::spec::{DataFile, DataFileFormat, NestedField, Schema};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlCatalog, SqlCatalogBuilder};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use parquet::file::properties::WriterProperties;

use self::types::{iceberg_type, to_table_batch, ArrowConversionError};
use crate::postgres::conninfo::ConnInfo;
use crate::quote;
use crate::warehouse::arrow::ArrowRows;
use crate::warehouse::{ColumnDef, TableDef, TableRef};

/// The catalog's name, as readers name it (`pyiceberg`, Trino, Spark).
pub const CATALOG: &str = "walhouse";

/// How often a change to one table is tried again when another writer
/// changed the table in between (each try reads the table again).
pub(crate) const ATTEMPTS: usize = 10;

/// The table property holding the views over a raw table, in DuckDB's
/// SQL (a JSON array of statements).
pub const VIEWS_PROPERTY: &str = "walhouse.duckdb.views";

#[derive(Debug, thiserror::Error)]
pub enum IcebergError {
    /// `warehouse` is its description: catalog and data, no password.
    #[error("cannot open the Iceberg warehouse {warehouse}: {message}")]
    Open { warehouse: String, message: String },
    #[error("Iceberg table {table}: {message}")]
    Table { table: String, message: String },
    #[error(transparent)]
    Conversion(#[from] ArrowConversionError),
}

/// Where an Iceberg warehouse keeps its catalog and its data.
#[derive(Clone, Debug)]
pub struct IcebergSpec {
    pub catalog: CatalogAt,
    /// Where table data and metadata go (`s3://bucket/prefix`,
    /// `file:///dir`); by default the catalog's directory (SQLite only).
    pub data: Option<String>,
    pub s3: S3Settings,
}

/// The SQL catalog's database.
#[derive(Clone, Debug)]
pub enum CatalogAt {
    /// `<dir>/catalog.db`, the embedded form.
    Sqlite(PathBuf),
    /// A Postgres database (the JDBC-catalog tables `iceberg_tables` and
    /// `iceberg_namespace_properties`, made if missing).
    Postgres(ConnInfo),
}

/// How to reach S3-compatible storage. Credentials are not here: they
/// come the usual AWS ways (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
/// a profile, instance metadata), read by the storage layer, never logged.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key`
    /// (MinIO, moto, most S3-compatible stores).
    pub path_style: bool,
}

impl IcebergSpec {
    /// The embedded form: catalog and data under `dir`.
    pub fn embedded(dir: &Path) -> Self {
        IcebergSpec {
            catalog: CatalogAt::Sqlite(dir.to_owned()),
            data: None,
            s3: S3Settings::default(),
        }
    }
}

/// Tables in one Iceberg catalog.
pub struct IcebergWarehouse {
    catalog: SqlCatalog,
    /// Catalog and data, for logs and errors (see [`describe`]).
    shown: String,
    counts: Arc<CommitCounts>,
    /// The catalog database's URL and whether it numbers its parameters
    /// (`$1`, Postgres) or not (`?`, SQLite): for the one change walhouse
    /// makes to it itself (see [`widen`]).
    catalog_uri: String,
    numbered: bool,
}

/// The commits that added data, and their files: how a user sees whether
/// commits make files of a sensible size (metrics).
#[derive(Debug, Default)]
pub struct CommitCounts {
    pub commits: std::sync::atomic::AtomicU64,
    pub data_files: std::sync::atomic::AtomicU64,
    pub last_data_files: std::sync::atomic::AtomicU64,
}

impl CommitCounts {
    fn record(&self, files: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.data_files.fetch_add(files as u64, Relaxed);
        self.last_data_files.store(files as u64, Relaxed);
    }
}

impl IcebergWarehouse {
    /// The embedded form: catalog and data under `dir` (made if missing).
    pub async fn open(dir: &Path) -> Result<Self, IcebergError> {
        Self::open_spec(&IcebergSpec::embedded(dir)).await
    }

    /// Opens the catalog `spec` names (making its tables if missing).
    pub async fn open_spec(spec: &IcebergSpec) -> Result<Self, IcebergError> {
        let shown = describe(spec);
        let open = |message: String| IcebergError::Open {
            warehouse: shown.clone(),
            message,
        };
        let (uri, default_data, bind) = match &spec.catalog {
            CatalogAt::Sqlite(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| open(e.to_string()))?;
                let dir = std::fs::canonicalize(dir).map_err(|e| open(e.to_string()))?;
                let path = dir.to_str().ok_or_else(|| open("the path is not UTF-8".into()))?;
                (
                    format!("sqlite:{path}/catalog.db?mode=rwc"),
                    Some(format!("file://{path}")),
                    "QMark",
                )
            }
            CatalogAt::Postgres(info) => (catalog_url(info), None, "DollarNumeric"),
        };
        let data = spec.data.clone().or(default_data).ok_or_else(|| {
            open("a catalog in Postgres needs a place for the data: --iceberg-data s3://bucket/prefix".into())
        })?;
        let catalog_uri = uri.clone();
        let mut props = HashMap::from([
            ("uri".to_owned(), uri),
            ("warehouse".to_owned(), data),
            ("sql_bind_style".to_owned(), bind.to_owned()),
        ]);
        if let Some(endpoint) = &spec.s3.endpoint {
            props.insert(iceberg::io::S3_ENDPOINT.into(), endpoint.clone());
        }
        if let Some(region) = &spec.s3.region {
            props.insert(iceberg::io::S3_REGION.into(), region.clone());
        }
        props.insert(iceberg::io::S3_PATH_STYLE_ACCESS.into(), spec.s3.path_style.to_string());
        // The S3 client's TLS finds two crypto providers in the build
        // (ring, ours; aws-lc, its default): name the process's one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        sqlx::any::install_default_drivers();
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()))
            .load(CATALOG, props)
            .await
            .map_err(|e| open(e.to_string()))?;
        Ok(IcebergWarehouse {
            catalog,
            shown,
            counts: Arc::default(),
            catalog_uri,
            numbered: bind == "DollarNumeric",
        })
    }

    /// The counts of this warehouse's data commits, as they grow.
    pub fn counts(&self) -> Arc<CommitCounts> {
        self.counts.clone()
    }

    /// Catalog and data, never a password.
    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    fn ident(table: &TableRef) -> TableIdent {
        TableIdent::new(NamespaceIdent::new(table.schema.clone()), table.name.clone())
    }

    fn error(table: &TableRef) -> impl Fn(iceberg::Error) -> IcebergError + '_ {
        move |e| IcebergError::Table {
            table: table.to_string(),
            message: e.to_string(),
        }
    }

    pub(crate) async fn load(&self, table: &TableRef) -> Result<Option<Table>, IcebergError> {
        let ident = Self::ident(table);
        if !self.catalog.table_exists(&ident).await.map_err(Self::error(table))? {
            return Ok(None);
        }
        Ok(Some(self.catalog.load_table(&ident).await.map_err(Self::error(table))?))
    }

    /// The table's columns with their Iceberg types, `None` if it does not
    /// exist.
    pub async fn columns(&self, table: &TableRef) -> Result<Option<Vec<(String, String)>>, IcebergError> {
        Ok(self.load(table).await?.map(|t| {
            t.metadata()
                .current_schema()
                .as_struct()
                .fields()
                .iter()
                .map(|f| (f.name.clone(), f.field_type.to_string()))
                .collect()
        }))
    }

    /// Makes `def`'s table (and its namespace), every column optional.
    pub async fn create_table(&self, def: &TableDef) -> Result<(), IcebergError> {
        let err = Self::error(&def.table);
        let namespace = NamespaceIdent::new(def.table.schema.clone());
        if !self.catalog.namespace_exists(&namespace).await.map_err(&err)? {
            self.catalog
                .create_namespace(&namespace, HashMap::new())
                .await
                .map_err(&err)?;
        }
        let fields = def
            .columns
            .iter()
            .zip(1..)
            .map(|(c, id)| NestedField::optional(id, &c.name, iceberg_type(&c.ty)).into())
            .collect::<Vec<_>>();
        let schema = Schema::builder().with_fields(fields).build().map_err(&err)?;
        let creation = TableCreation::builder()
            .name(def.table.name.clone())
            .schema(schema)
            .build();
        self.catalog.create_table(&namespace, creation).await.map_err(&err)?;
        Ok(())
    }

    /// Adds `columns` to `table` in one schema update (new field ids;
    /// files written before read them as null).
    pub async fn add_columns(&self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), IcebergError> {
        let err = Self::error(table);
        let current = self.load(table).await?.ok_or_else(|| IcebergError::Table {
            table: table.to_string(),
            message: "does not exist".into(),
        })?;
        let tx = Transaction::new(&current);
        let mut update = tx.update_schema();
        for c in columns {
            update = update.add_column(AddColumn::optional(&c.name, iceberg_type(&c.ty)));
        }
        let tx = update.apply(tx).map_err(&err)?;
        tx.commit(&self.catalog).await.map_err(&err)?;
        Ok(())
    }

    /// The table, which must exist.
    pub async fn load_existing(&self, table: &TableRef) -> Result<Table, IcebergError> {
        self.load(table).await?.ok_or_else(|| IcebergError::Table {
            table: table.to_string(),
            message: "does not exist".into(),
        })
    }

    /// Gives `columns` of `table` the wider types they now have (each one
    /// [`widen::allowed`] checked), as a new schema of the same field ids.
    pub async fn widen_columns(&self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), IcebergError> {
        let pool = sqlx::AnyPool::connect(&self.catalog_uri)
            .await
            .map_err(|e| IcebergError::Open {
                warehouse: self.shown.clone(),
                message: e.to_string(),
            })?;
        for _ in 0..ATTEMPTS {
            let current = self.load_existing(table).await?;
            let (metadata, next) = widen::widened(&current, columns)?;
            let location = iceberg::MetadataLocation::from_str(&next).map_err(table_error(&current))?;
            metadata
                .write_to(current.file_io(), &location)
                .await
                .map_err(table_error(&current))?;
            if widen::swap(&pool, self.numbered, &current, &next).await? {
                pool.close().await;
                return Ok(());
            }
        }
        pool.close().await;
        Err(IcebergError::Table {
            table: table.to_string(),
            message: format!("other writers changed the table {ATTEMPTS} times in a row while it was widened"),
        })
    }

    /// Appends `rows` to `table` as one commit whose snapshot summary holds
    /// `properties`; returns the data files it added. Fails if another
    /// writer commits to the table meanwhile.
    pub async fn append(
        &self,
        table: &TableRef,
        rows: &ArrowRows,
        properties: HashMap<String, String>,
    ) -> Result<usize, IcebergError> {
        let current = self.load_existing(table).await?;
        self.append_to(&current, &[(rows, None)], properties)
            .await?
            .ok_or_else(|| IcebergError::Table {
                table: table.to_string(),
                message: "another writer committed to the table meanwhile".into(),
            })
    }

    /// Appends the rows of each part that its `keep` marks (all without it)
    /// to the table as it was read (`current`), in one commit whose snapshot
    /// summary holds `properties`: `Ok(Some(data files added))`, or
    /// `Ok(None)` if the table changed since it was read (nothing is
    /// committed then; the Parquet files already written are orphans no
    /// snapshot names, harmless, cleared by Iceberg's `remove_orphan_files`).
    pub async fn append_to(
        &self,
        current: &Table,
        parts: &[(&ArrowRows, Option<&[bool]>)],
        properties: HashMap<String, String>,
    ) -> Result<Option<usize>, IcebergError> {
        // Names unique to this commit: a file of a failed commit must never
        // be overwritten by a later one that a snapshot will name.
        let commit = uuid::Uuid::now_v7();
        let files = self.write_files(current, parts, commit).await?;
        self.commit(current, files, commit, properties).await
    }

    /// A commit of `properties` alone (no data), on the table as read.
    pub(crate) async fn commit_properties(
        &self,
        current: &Table,
        properties: HashMap<String, String>,
    ) -> Result<Option<usize>, IcebergError> {
        self.commit(current, Vec::new(), uuid::Uuid::now_v7(), properties).await
    }

    /// Parquet files of the kept rows, named for `commit`. Parts may have
    /// different columns (rows of two writer schemas of one table): each
    /// is written under the table's schema.
    async fn write_files(
        &self,
        current: &Table,
        parts: &[(&ArrowRows, Option<&[bool]>)],
        commit: uuid::Uuid,
    ) -> Result<Vec<DataFile>, IcebergError> {
        let err = table_error(current);
        let metadata = current.metadata();
        let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(metadata.current_schema()).map_err(&err)?);
        let mut batches = Vec::new();
        for (rows, keep) in parts {
            let mut at = 0;
            for batch in rows.batches() {
                let n = batch.num_rows();
                let batch = match keep {
                    Some(keep) => {
                        let mask = duckdb::arrow::array::BooleanArray::from(
                            (at..at + n)
                                .map(|i| keep.get(i).copied().unwrap_or(true))
                                .collect::<Vec<_>>(),
                        );
                        duckdb::arrow::compute::filter_record_batch(batch, &mask).map_err(ArrowConversionError::from)?
                    }
                    None => batch.clone(),
                };
                at += n;
                if batch.num_rows() > 0 {
                    batches.push(to_table_batch(&batch, &target)?);
                }
            }
        }
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let location = DefaultLocationGenerator::new(metadata).map_err(&err)?;
        let names = DefaultFileNameGenerator::new("walhouse".into(), Some(commit.to_string()), DataFileFormat::Parquet);
        let parquet = ParquetWriterBuilder::new(WriterProperties::default(), metadata.current_schema().clone());
        let rolling =
            RollingFileWriterBuilder::new_with_default_file_size(parquet, current.file_io().clone(), location, names);
        let mut writer = DataFileWriterBuilder::new(rolling).build(None).await.map_err(&err)?;
        for batch in batches {
            writer.write(batch).await.map_err(&err)?;
        }
        writer.close().await.map_err(&err)
    }

    /// One snapshot adding `files`, with `properties`, as a compare-and-set
    /// on `current` (see [`pinned`]); `Ok(None)` on a conflict.
    async fn commit(
        &self,
        current: &Table,
        files: Vec<DataFile>,
        commit: uuid::Uuid,
        properties: HashMap<String, String>,
    ) -> Result<Option<usize>, IcebergError> {
        let err = table_error(current);
        let added = files.len();
        let tx = Transaction::new(current);
        let append = tx
            .fast_append()
            .set_commit_uuid(commit)
            .add_data_files(files)
            .set_snapshot_properties(properties);
        let tx = append.apply(tx).map_err(&err)?;
        let pinned = pinned::PinnedCatalog {
            inner: &self.catalog,
            pinned: current,
        };
        match tx.commit(&pinned).await {
            Ok(_) => {
                if added > 0 {
                    self.counts.record(added);
                }
                Ok(Some(added))
            }
            Err(e) if pinned::is_conflict(&e) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Keeps `statements` (the views over `raw`) in its properties.
    pub async fn keep_views(&self, raw: &TableRef, statements: &[String]) -> Result<(), IcebergError> {
        let err = Self::error(raw);
        let current = self.load_existing(raw).await?;
        // A list of strings: serializing cannot fail.
        let text = serde_json::to_string(statements).unwrap_or_default();
        if current.metadata().properties().get(VIEWS_PROPERTY) == Some(&text) {
            return Ok(());
        }
        let tx = Transaction::new(&current);
        let update = tx.update_table_properties().set(VIEWS_PROPERTY.into(), text);
        update
            .apply(tx)
            .map_err(&err)?
            .commit(&self.catalog)
            .await
            .map_err(&err)?;
        Ok(())
    }

    /// A DuckDB script that makes every table of the catalog a view over
    /// its current snapshot (`iceberg_scan` of its metadata file), then the
    /// latest-state views kept with the raw tables: run it in DuckDB with
    /// the iceberg extension loaded, again to see later commits.
    pub async fn duckdb_script(&self) -> Result<String, IcebergError> {
        let list = |e: iceberg::Error| IcebergError::Open {
            warehouse: self.shown.clone(),
            message: e.to_string(),
        };
        let mut tables = Vec::new();
        for namespace in self.catalog.list_namespaces(None).await.map_err(list)? {
            for ident in self.catalog.list_tables(&namespace).await.map_err(list)? {
                tables.push(self.catalog.load_table(&ident).await.map_err(list)?);
            }
        }
        tables.sort_by_key(|t| t.identifier().to_string());
        let mut out = format!(
            "-- walhouse: the Iceberg tables of {} as of this script\n",
            self.describe()
        );
        let mut schemas = std::collections::BTreeSet::new();
        for t in &tables {
            let ident = t.identifier();
            let schema = ident.namespace().join(".");
            if schemas.insert(schema.clone()) {
                out.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote::ident(&schema)));
            }
            let Some(location) = t.metadata_location() else {
                continue;
            };
            out.push_str(&format!(
                "CREATE OR REPLACE VIEW {}.{} AS SELECT * FROM iceberg_scan({});\n",
                quote::ident(&schema),
                quote::ident(ident.name()),
                quote::literal(location)
            ));
        }
        for t in &tables {
            let Some(text) = t.metadata().properties().get(VIEWS_PROPERTY) else {
                continue;
            };
            let statements: Vec<String> = serde_json::from_str(text).map_err(|e| IcebergError::Table {
                table: t.identifier().to_string(),
                message: format!("{VIEWS_PROPERTY}: {e}"),
            })?;
            for s in statements {
                out.push_str(&s);
                out.push_str(";\n");
            }
        }
        Ok(out)
    }

    /// The summary properties of the table's current snapshot (empty before
    /// its first commit).
    pub async fn snapshot_properties(&self, table: &TableRef) -> Result<HashMap<String, String>, IcebergError> {
        Ok(self.load(table).await?.map(|t| summary(&t)).unwrap_or_default())
    }
}

fn table_error(table: &Table) -> impl Fn(iceberg::Error) -> IcebergError {
    let name = table.identifier().to_string();
    move |e| IcebergError::Table {
        table: name.clone(),
        message: e.to_string(),
    }
}

/// The catalog and data of `spec`, for logs and errors (no password).
fn describe(spec: &IcebergSpec) -> String {
    let catalog = match &spec.catalog {
        CatalogAt::Sqlite(dir) => format!("iceberg:{}", dir.display()),
        CatalogAt::Postgres(info) => format!("iceberg catalog in postgres {}/{}", info.address(), info.dbname),
    };
    match &spec.data {
        Some(data) => format!("{catalog}, data in {data}"),
        None => catalog,
    }
}

/// The catalog's Postgres as a URL for its SQL client (the password
/// escaped; the URL is never shown).
fn catalog_url(info: &ConnInfo) -> String {
    let escape = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let password = info
        .password
        .as_ref()
        .map(|p| format!(":{}", escape(p.expose())))
        .unwrap_or_default();
    let mut url = format!(
        "postgres://{}{password}@{}:{}/{}?sslmode={}",
        escape(&info.user),
        info.host,
        info.port,
        escape(&info.dbname),
        info.sslmode.as_str()
    );
    if let Some(ca) = &info.sslrootcert {
        url.push_str(&format!("&sslrootcert={}", escape(&ca.display().to_string())));
    }
    url
}

/// The summary properties of `table`'s current snapshot (empty before its
/// first commit).
pub(crate) fn summary(table: &Table) -> HashMap<String, String> {
    table
        .metadata()
        .current_snapshot()
        .map(|s| s.summary().additional_properties.clone())
        .unwrap_or_default()
}
