//! A Postgres database as the warehouse: rows go in by `COPY … FROM STDIN`
//! (binary format, see [`copy`]), offsets by a fenced upsert, in one
//! transaction.
//!
//! Several sink instances may share one warehouse database: each partition
//! is written by its owner, and the fence on the stored offset rolls back a
//! batch from an instance that lost its partition in a rebalance.

pub mod copy;

use crate::quote;
use std::collections::HashMap;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{
    Batch, ColumnDef, Dialect, Encoded, Failure, Mark, StoredOffset, TableRef, TableRows, Warehouse, WarehouseError,
};
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::error::sql_message;

/// The advisory lock key under which every DDL transaction of the sink
/// runs (an arbitrary constant: "walhouse" in ASCII).
const DDL_LOCK: i64 = 0x7761_6c68_6f75_7365;

pub struct PostgresWarehouse {
    info: ConnInfo,
    client: Client,
    _driver: JoinHandle<()>,
}

fn sql(context: &str) -> impl Fn(tokio_postgres::Error) -> WarehouseError + '_ {
    move |e| WarehouseError::Sql {
        context: context.to_owned(),
        message: sql_message(&e),
        failure: failure(&e),
    }
}

/// Data exceptions (class 22), integrity violations (23) and program
/// limits (54, e.g. a value too large) are a row's fault; other answers
/// from the server refuse the statement; no answer is a failure.
fn failure(e: &tokio_postgres::Error) -> Failure {
    match e.as_db_error().map(|db| db.code().code()) {
        Some(code) if code.starts_with("22") || code.starts_with("23") || code.starts_with("54") => Failure::Value,
        // Out of disk, memory or connections: not the statement's fault.
        Some(code) if code.starts_with("53") || code.starts_with("57") || code.starts_with("58") => Failure::Io,
        Some(_) => Failure::Statement,
        None => Failure::Io,
    }
}

impl PostgresWarehouse {
    pub async fn connect(info: &ConnInfo) -> Result<Self, WarehouseError> {
        let (client, driver) = crate::postgres::client::connect(info)
            .await
            .map_err(|e| WarehouseError::Open {
                target: info.address(),
                message: e.to_string(),
            })?;
        Ok(PostgresWarehouse {
            info: info.clone(),
            client,
            _driver: driver,
        })
    }
}

/// `rows` in COPY's binary format; a value its column cannot hold is a
/// refused value, as if the server had refused it.
/// `rows` as one binary COPY stream.
fn stream(table: &TableRef, rows: &TableRows) -> Result<Bytes, WarehouseError> {
    match rows.data() {
        Encoded::Copy(c) => Ok(c.stream(0, c.len())),
        Encoded::Arrow(_) => Err(WarehouseError::Sql {
            context: format!("COPY into {table}"),
            message: "the rows were encoded for another target".into(),
            failure: Failure::Statement,
        }),
    }
}

async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    table: &TableRef,
    columns: &[ColumnDef],
    data: Bytes,
) -> Result<(), WarehouseError> {
    let context = format!("COPY into {table}");
    let cols: Vec<String> = columns.iter().map(|c| quote::ident(&c.name)).collect();
    let statement = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        table.quoted(),
        cols.join(", ")
    );
    let sink = tx.copy_in::<_, Bytes>(&statement).await.map_err(sql(&context))?;
    futures_util::pin_mut!(sink);
    sink.send(data).await.map_err(sql(&context))?;
    sink.finish().await.map_err(sql(&context))?;
    Ok(())
}

impl PostgresWarehouse {
    /// Runs statements in order, in one transaction.
    pub async fn execute(&mut self, statements: &[String]) -> Result<(), WarehouseError> {
        let tx = self.client.transaction().await.map_err(sql("BEGIN"))?;
        // Sink instances of one warehouse make and widen the same tables
        // and views, often at the same moment (a group starting, a new
        // topic's first records on several partitions); Postgres's IF NOT
        // EXISTS and OR REPLACE race between sessions ("duplicate key
        // value", "tuple concurrently updated"). One at a time, then: the
        // lock ends with the transaction.
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({DDL_LOCK})"))
            .await
            .map_err(sql("taking the DDL lock"))?;
        for s in statements {
            tx.batch_execute(s).await.map_err(sql(s))?;
        }
        tx.commit().await.map_err(sql("COMMIT"))
    }
}

impl Warehouse for PostgresWarehouse {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn describe(&self) -> String {
        format!("postgres {}/{}", self.info.address(), self.info.dbname)
    }

    super::sql_ddl!(Dialect::Postgres);

    async fn columns(&mut self, table: &TableRef) -> Result<Option<Vec<(String, String)>>, WarehouseError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(sql("reading columns"))?;
        let cols = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<(String, String)>, tokio_postgres::Error>>()
            .map_err(sql("reading columns"))?;
        Ok((!cols.is_empty()).then_some(cols))
    }

    async fn offsets(&mut self, consumer_group: &str) -> Result<HashMap<(String, i32), StoredOffset>, WarehouseError> {
        let rows = self
            .client
            .query(
                "SELECT topic, \"partition\", next_offset, high_commit_lsn, high_tx_ordinal, high_system_id \
                 FROM walhouse.offsets WHERE consumer_group = $1",
                &[&consumer_group],
            )
            .await
            .map_err(sql("reading offsets"))?;
        rows.iter()
            .map(|r| {
                let high = Mark::from_columns(r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
                Ok((
                    (r.try_get(0)?, r.try_get(1)?),
                    StoredOffset {
                        next: r.try_get(2)?,
                        high,
                    },
                ))
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(sql("reading offsets"))
    }

    async fn write(&mut self, consumer_group: &str, batch: &Batch) -> Result<(), WarehouseError> {
        // Rendering before BEGIN keeps the transaction short.
        let dead = batch.dead_letter_rows(Dialect::Postgres)?;
        let tables = batch
            .tables
            .iter()
            .chain(&dead)
            .filter(|(_, r)| !r.is_empty())
            .map(|(t, r)| Ok((t, &r.columns[..], stream(t, r)?)))
            .collect::<Result<Vec<_>, WarehouseError>>()?;
        let tx = self.client.transaction().await.map_err(sql("BEGIN"))?;
        for (table, columns, data) in tables {
            copy_in(&tx, table, columns, data).await?;
        }
        for o in &batch.offsets {
            let (commit_lsn, tx_ordinal, system_id) = Mark::columns(o.high);
            let moved = match o.from {
                None => {
                    tx.execute(
                        "INSERT INTO walhouse.offsets (consumer_group, topic, \"partition\", next_offset, \
                         high_commit_lsn, high_tx_ordinal, high_system_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT DO NOTHING",
                        &[
                            &consumer_group,
                            &o.topic,
                            &o.partition,
                            &o.next,
                            &commit_lsn,
                            &tx_ordinal,
                            &system_id,
                        ],
                    )
                    .await
                }
                Some(from) => {
                    tx.execute(
                        "UPDATE walhouse.offsets SET next_offset = $1, high_commit_lsn = $6, high_tx_ordinal = $7, \
                         high_system_id = $8, updated_at = now() \
                         WHERE consumer_group = $2 AND topic = $3 AND \"partition\" = $4 AND next_offset = $5",
                        &[
                            &o.next,
                            &consumer_group,
                            &o.topic,
                            &o.partition,
                            &from,
                            &commit_lsn,
                            &tx_ordinal,
                            &system_id,
                        ],
                    )
                    .await
                }
            }
            .map_err(sql("storing offsets"))?;
            if moved != 1 {
                return Err(WarehouseError::Fenced {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    expected: o.from,
                });
            }
        }
        if let Some(f) = &batch.file {
            tx.execute(
                "INSERT INTO walhouse.file_loads (sha256, file, \"rows\", dead_letters) VALUES ($1, $2, $3, $4)",
                &[&f.sha256, &f.file, &f.rows, &f.dead_letters],
            )
            .await
            .map_err(sql("recording the file load"))?;
        }
        tx.commit().await.map_err(sql("COMMIT"))
    }

    async fn probe(&mut self, table: &TableRef, rows: &TableRows) -> Result<(), WarehouseError> {
        let data = stream(table, rows)?;
        let tx = self.client.transaction().await.map_err(sql("BEGIN"))?;
        let result = copy_in(&tx, table, &rows.columns, data).await;
        tx.rollback().await.map_err(sql("ROLLBACK"))?;
        result
    }

    async fn file_loaded(&mut self, sha256: &str) -> Result<bool, WarehouseError> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM walhouse.file_loads WHERE sha256 = $1", &[&sha256])
            .await
            .map_err(sql("reading file loads"))?;
        Ok(row.try_get::<_, i64>(0).map_err(sql("reading file loads"))? > 0)
    }

    async fn query_text(&mut self, sql_text: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        let messages = self.client.simple_query(sql_text).await.map_err(sql("query"))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }
}
