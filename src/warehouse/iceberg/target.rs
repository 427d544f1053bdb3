//! The sink's [`Warehouse`] on Iceberg: a batch becomes one commit per
//! table it touches, then one commit of the marker table
//! `walhouse.offsets`, whose snapshot summary holds each group's offsets
//! and high-water marks.
//!
//! Iceberg commits one table at a time, so a batch is not one atomic
//! commit. It is exactly once all the same:
//! - each table's commit records, in its own summary, the offsets before
//!   which the table holds every row each partition sent it
//!   ([`positions`]); a batch written again (after a crash between two
//!   commits, or by the instance that took a partition over) leaves out,
//!   table by table, the rows the table already holds;
//! - that decision is made on the table as read, and the commit is a
//!   compare-and-set on it ([`super::pinned`]): a table changed meanwhile
//!   is read again and decided anew, so no two writers add one row twice;
//! - the marker moves a partition's offset only from the offset the batch
//!   started at (a compare-and-set too), after every table of the batch
//!   committed: an instance whose partition moved on is fenced, and what
//!   it committed before was only rows no table held.
//!
//! A file load carries the file's digest the same way (`walhouse.file`),
//! and `walhouse.file_loads` records it last.

use std::collections::{BTreeMap, HashMap};

use futures_util::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::spec::Datum;

use super::positions::{self, Positions, FILE_PROPERTY};
use super::{summary, IcebergError, IcebergWarehouse, ATTEMPTS};
use crate::warehouse::arrow::ArrowRows;
use crate::warehouse::{
    Batch, ColumnDef, DeadLetter, Dialect, Encoded, Failure, FileLoad, OffsetUpdate, Origins, SqlType, StoredOffset,
    TableDef, TableRef, TableRows, Warehouse, WarehouseError, DEAD_LETTER_COLUMNS,
};

fn marker() -> TableRef {
    TableRef::new("walhouse", "offsets")
}

fn file_loads() -> TableRef {
    TableRef::new("walhouse", "file_loads")
}

/// walhouse's own tables. The marker's columns say what its summaries
/// hold; it has no rows.
fn state_tables() -> Vec<TableDef> {
    vec![
        table_def(
            marker(),
            &[
                ("consumer_group", SqlType::Text),
                ("topic", SqlType::Text),
                ("partition", SqlType::Integer),
                ("next_offset", SqlType::BigInt),
                ("high_commit_lsn", SqlType::BigInt),
                ("high_tx_ordinal", SqlType::BigInt),
                ("high_system_id", SqlType::Text),
            ],
        ),
        table_def(TableRef::new("walhouse", "dead_letters"), &DEAD_LETTER_COLUMNS),
        file_loads_def(),
    ]
}

fn table_def(table: TableRef, columns: &[(&str, SqlType)]) -> TableDef {
    TableDef {
        table,
        columns: columns.iter().map(|(n, t)| ColumnDef::new(n, t.clone())).collect(),
    }
}

/// `walhouse.file_loads`: a row per loaded file, as on the other targets.
fn file_loads_def() -> TableDef {
    table_def(
        file_loads(),
        &[
            ("sha256", SqlType::Text),
            ("file", SqlType::Text),
            ("rows", SqlType::BigInt),
            ("dead_letters", SqlType::BigInt),
            ("loaded_at", SqlType::TimestampTz),
        ],
    )
}

impl From<IcebergError> for WarehouseError {
    fn from(e: IcebergError) -> Self {
        if let IcebergError::Open { warehouse, message } = e {
            return WarehouseError::Open {
                target: warehouse,
                message,
            };
        }
        let failure = match &e {
            IcebergError::Conversion(_) => Failure::Value,
            IcebergError::Open { .. } | IcebergError::Table { .. } => Failure::Io,
        };
        WarehouseError::Sql {
            context: "Iceberg".into(),
            message: e.to_string(),
            failure,
        }
    }
}

/// A summary property walhouse wrote that it cannot read: stop rather
/// than guess a position.
fn unreadable(table: &TableRef, message: String) -> WarehouseError {
    WarehouseError::Sql {
        context: format!("reading the positions of {table}"),
        message,
        failure: Failure::Io,
    }
}

fn conflicted(table: &TableRef) -> WarehouseError {
    WarehouseError::Sql {
        context: format!("committing to {table}"),
        message: format!("other writers committed to the table {ATTEMPTS} times in a row"),
        failure: Failure::Io,
    }
}

/// What a commit to one table is for: where its rows came from and what
/// the batch moves.
struct Commit<'a> {
    group: &'a str,
    offsets: &'a [OffsetUpdate],
    file: Option<&'a FileLoad>,
}

/// Where each row of a part came from.
enum Came<'a> {
    /// The sink's rows, with their origins.
    Rows(&'a Origins),
    /// Dead letters, in the order of their rows.
    Dead(&'a [DeadLetter]),
    /// Not from Kafka (a file load's record).
    Elsewhere,
}

impl Came<'_> {
    /// Row `i`'s topic, partition and offset, if it came from Kafka.
    fn kafka(&self, i: usize) -> Option<(&str, i32, i64)> {
        match self {
            Came::Rows(origins) => origins.kafka(i),
            Came::Dead(letters) => {
                let o = &letters.get(i)?.origin;
                Some((o.topic.as_deref()?, o.partition?, o.offset?))
            }
            Came::Elsewhere => None,
        }
    }
}

impl IcebergWarehouse {
    /// Appends the rows of `parts` (rows of one table, perhaps under two
    /// writer schemas) that the table does not hold yet, in one commit
    /// that records the batch's positions; tried again on a table changed
    /// meanwhile. One commit for all parts: a position recorded by a first
    /// commit would make a second skip its rows.
    async fn append_once(
        &self,
        table: &TableRef,
        parts: &[(&TableRows, Came<'_>)],
        commit: &Commit<'_>,
    ) -> Result<(), WarehouseError> {
        let mut arrows = Vec::with_capacity(parts.len());
        for (rows, _) in parts {
            let Encoded::Arrow(arrow) = rows.data() else {
                return Err(WarehouseError::Sql {
                    context: format!("appending to {table}"),
                    message: "the rows were encoded for another target".into(),
                    failure: Failure::Statement,
                });
            };
            arrows.push(arrow);
        }
        for _ in 0..ATTEMPTS {
            let current = self.load_existing(table).await?;
            let summary = summary(&current);
            let mut held = Positions::from_summary(&summary, commit.group).map_err(|m| unreadable(table, m))?;
            let keeps: Vec<Vec<bool>> = parts
                .iter()
                .map(|(rows, came)| match commit.file {
                    Some(file) => vec![summary.get(FILE_PROPERTY) != Some(&file.sha256); rows.len()],
                    None => (0..rows.len())
                        .map(|i| {
                            came.kafka(i)
                                .is_none_or(|(topic, partition, offset)| !held.holds(topic, partition, offset))
                        })
                        .collect(),
                })
                .collect();
            if !keeps.iter().flatten().any(|k| *k) {
                return Ok(());
            }
            let mut properties = positions::carried(&summary);
            if !commit.offsets.is_empty() {
                for o in commit.offsets {
                    held.advance(&o.topic, o.partition, o.next);
                }
                properties.insert(positions::property(commit.group), held.to_json());
            }
            if let Some(file) = commit.file {
                properties.insert(FILE_PROPERTY.into(), file.sha256.clone());
            }
            let kept: Vec<(&ArrowRows, Option<&[bool]>)> = arrows
                .iter()
                .zip(&keeps)
                .map(|(a, k)| (*a, Some(k.as_slice())))
                .collect();
            if self.append_to(&current, &kept, properties).await?.is_some() {
                return Ok(());
            }
            tracing::debug!(%table, "another writer committed meanwhile: reading the table again");
        }
        Err(conflicted(table))
    }

    /// Moves `group`'s offsets in the marker, each from the offset its
    /// batch started at; fenced if another instance moved one.
    async fn move_offsets(&self, group: &str, offsets: &[OffsetUpdate]) -> Result<(), WarehouseError> {
        let table = marker();
        for _ in 0..ATTEMPTS {
            let current = self.load_existing(&table).await?;
            let summary = summary(&current);
            let mut stored = positions::offsets_from_summary(&summary, group).map_err(|m| unreadable(&table, m))?;
            fence(&stored, offsets)?;
            for o in offsets {
                stored.insert(
                    (o.topic.clone(), o.partition),
                    StoredOffset {
                        next: o.next,
                        high: o.high,
                    },
                );
            }
            let mut properties = positions::carried(&summary);
            properties.insert(positions::offsets_property(group), positions::offsets_to_json(&stored));
            if self.commit_properties(&current, properties).await?.is_some() {
                return Ok(());
            }
        }
        Err(conflicted(&table))
    }

    async fn stored_offsets(&self, group: &str) -> Result<HashMap<(String, i32), StoredOffset>, WarehouseError> {
        let table = marker();
        let current = self.load_existing(&table).await?;
        positions::offsets_from_summary(&summary(&current), group).map_err(|m| unreadable(&table, m))
    }
}

/// `Err(Fenced)` unless every partition of `offsets` is stored where its
/// batch started.
fn fence(stored: &HashMap<(String, i32), StoredOffset>, offsets: &[OffsetUpdate]) -> Result<(), WarehouseError> {
    for o in offsets {
        let now = stored.get(&(o.topic.clone(), o.partition)).map(|s| s.next);
        if now != o.from {
            return Err(WarehouseError::Fenced {
                topic: o.topic.clone(),
                partition: o.partition,
                expected: o.from,
            });
        }
    }
    Ok(())
}

impl Warehouse for IcebergWarehouse {
    fn dialect(&self) -> Dialect {
        Dialect::Iceberg
    }

    fn describe(&self) -> String {
        IcebergWarehouse::describe(self)
    }

    async fn prepare(&mut self) -> Result<(), WarehouseError> {
        for def in state_tables() {
            if self.load(&def.table).await?.is_none() {
                IcebergWarehouse::create_table(self, &def).await?;
            }
        }
        Ok(())
    }

    async fn create_table(&mut self, def: &TableDef) -> Result<(), WarehouseError> {
        Ok(IcebergWarehouse::create_table(self, def).await?)
    }

    async fn add_columns(&mut self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), WarehouseError> {
        Ok(IcebergWarehouse::add_columns(self, table, columns).await?)
    }

    async fn widen_columns(&mut self, table: &TableRef, columns: &[ColumnDef]) -> Result<(), WarehouseError> {
        Ok(IcebergWarehouse::widen_columns(self, table, columns).await?)
    }

    /// Iceberg keeps no views its readers share: the views' SQL (DuckDB's
    /// dialect) is kept in the raw table's properties, for
    /// [`IcebergWarehouse::duckdb_script`].
    async fn define_views(&mut self, raw: &TableRef, statements: &[String]) -> Result<(), WarehouseError> {
        Ok(self.keep_views(raw, statements).await?)
    }

    async fn columns(&mut self, table: &TableRef) -> Result<Option<Vec<(String, String)>>, WarehouseError> {
        Ok(IcebergWarehouse::columns(self, table).await?)
    }

    async fn offsets(&mut self, consumer_group: &str) -> Result<HashMap<(String, i32), StoredOffset>, WarehouseError> {
        self.stored_offsets(consumer_group).await
    }

    async fn write(&mut self, consumer_group: &str, batch: &Batch) -> Result<(), WarehouseError> {
        // A batch whose partitions moved on writes nothing (the marker is
        // checked again when it moves).
        if !batch.offsets.is_empty() {
            fence(&self.stored_offsets(consumer_group).await?, &batch.offsets)?;
        }
        let commit = Commit {
            group: consumer_group,
            offsets: &batch.offsets,
            file: batch.file.as_ref(),
        };
        let mut by_table: BTreeMap<&TableRef, Vec<(&TableRows, Came<'_>)>> = BTreeMap::new();
        for (table, rows) in batch.tables.iter().filter(|(_, rows)| !rows.is_empty()) {
            by_table
                .entry(table)
                .or_default()
                .push((rows, Came::Rows(&rows.origins)));
        }
        for (table, parts) in &by_table {
            self.append_once(table, parts, &commit).await?;
        }
        if let Some((table, rows)) = batch.dead_letter_rows(Dialect::Iceberg)? {
            self.append_once(&table, &[(&rows, Came::Dead(&batch.dead_letters))], &commit)
                .await?;
        }
        if let Some(file) = &batch.file {
            let mut rows = TableRows::new(Dialect::Iceberg, file_loads_def().columns)?;
            rows.push(&file_load_cells(file))
                .map_err(|message| WarehouseError::Sql {
                    context: "recording a file load".into(),
                    message,
                    failure: Failure::Statement,
                })?;
            rows.seal()?;
            self.append_once(&file_loads(), &[(&rows, Came::Elsewhere)], &commit)
                .await?;
        }
        if !batch.offsets.is_empty() {
            // Tests stop here to kill the sink between the tables' commits
            // and the marker's.
            crate::failpoint::pause("iceberg.before_marker").await;
            self.move_offsets(consumer_group, &batch.offsets).await?;
        }
        Ok(())
    }

    /// Whether the rows convert to the table's Iceberg forms (what can
    /// refuse a value here; nothing is committed).
    async fn probe(&mut self, table: &TableRef, rows: &TableRows) -> Result<(), WarehouseError> {
        let current = self.load_existing(table).await?;
        let Encoded::Arrow(arrow) = rows.data() else {
            return Ok(());
        };
        let target = std::sync::Arc::new(
            iceberg::arrow::schema_to_arrow_schema(current.metadata().current_schema()).map_err(|e| {
                IcebergError::Table {
                    table: table.to_string(),
                    message: e.to_string(),
                }
            })?,
        );
        for batch in arrow.batches() {
            super::types::to_table_batch(batch, &target).map_err(IcebergError::from)?;
        }
        Ok(())
    }

    async fn file_loaded(&mut self, sha256: &str) -> Result<bool, WarehouseError> {
        let table = file_loads();
        let current = self.load_existing(&table).await?;
        let error = |e: iceberg::Error| IcebergError::Table {
            table: table.to_string(),
            message: e.to_string(),
        };
        let scan = current
            .scan()
            .select(["sha256"])
            .with_filter(Reference::new("sha256").equal_to(Datum::string(sha256)))
            .build()
            .map_err(error)?;
        let batches: Vec<_> = scan
            .to_arrow()
            .await
            .map_err(error)?
            .try_collect()
            .await
            .map_err(error)?;
        Ok(batches.iter().any(|b| b.num_rows() > 0))
    }

    async fn query_text(&mut self, _sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        Err(WarehouseError::Sql {
            context: "querying".into(),
            message: "walhouse runs no SQL on Iceberg tables: query them with DuckDB, Trino or Spark (README)".into(),
            failure: Failure::Statement,
        })
    }
}

fn file_load_cells(file: &FileLoad) -> Vec<crate::warehouse::Cell> {
    use crate::warehouse::Cell;
    vec![
        Cell::Text(file.sha256.clone()),
        Cell::Text(file.file.clone()),
        Cell::Long(file.rows),
        Cell::Long(file.dead_letters),
        Cell::TimestampTz(crate::postgres::pgoutput::PgTimestamp::now().unix_micros()),
    ]
}
