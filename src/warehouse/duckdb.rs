//! DuckDB, the embedded default: one file, one writer. Rows go in through
//! DuckDB's appender as Arrow record batches (a column at a time, see
//! [`super::arrow`]), inside the same transaction as the offsets.
//!
//! DuckDB calls block; the sink's runtime is multi-threaded, so they run
//! under `block_in_place` rather than stalling the Kafka client's polling.

use crate::quote;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use duckdb::Connection;

use super::{Batch, Dialect, Encoded, Failure, Mark, StoredOffset, TableRef, TableRows, Warehouse, WarehouseError};

pub struct DuckDbWarehouse {
    path: PathBuf,
    conn: Connection,
}

impl DuckDbWarehouse {
    pub fn open(path: &Path) -> Result<Self, WarehouseError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| WarehouseError::Open {
                target: path.display().to_string(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let open_error = |e: duckdb::Error| {
            WarehouseError::Open {
            target: path.display().to_string(),
            message: format!(
                "{e} (DuckDB allows one writing process per file: is another walhouse-sink or a DuckDB shell holding it?)"
            ),
        }
        };
        // The file is attached to an in-memory default database rather than
        // opened as the default: DuckDB replays DDL left in the file's WAL
        // by a killed process only when a default database exists
        // (duckdb/duckdb#19712, #20543); opened as the default, the file
        // would not open again after a kill that followed an ALTER.
        let conn = Connection::open_in_memory().map_err(open_error)?;
        let stem = path
            .file_stem()
            .map_or_else(|| "warehouse".to_owned(), |s| s.to_string_lossy().into_owned());
        let catalog = free_catalog_name(&conn, &stem).map_err(open_error)?;
        conn.execute_batch(&format!(
            "ATTACH {} AS {catalog_q}; USE {catalog_q};",
            quote::literal(&path.display().to_string()),
            catalog_q = quote::ident(&catalog)
        ))
        .map_err(open_error)?;
        Ok(DuckDbWarehouse {
            path: path.to_owned(),
            conn,
        })
    }

    fn sql_error(context: &str) -> impl Fn(duckdb::Error) -> WarehouseError + '_ {
        move |e| {
            let message = e.to_string();
            WarehouseError::Sql {
                context: context.to_owned(),
                failure: failure(&e, &message),
                message,
            }
        }
    }

    fn in_transaction<T>(
        &mut self,
        context: &str,
        work: impl FnOnce(&Connection) -> Result<T, WarehouseError>,
    ) -> Result<T, WarehouseError> {
        let conn = &self.conn;
        tokio::task::block_in_place(|| {
            conn.execute_batch("BEGIN TRANSACTION")
                .map_err(Self::sql_error(context))?;
            match work(conn) {
                Ok(v) => {
                    conn.execute_batch("COMMIT").map_err(Self::sql_error(context))?;
                    Ok(v)
                }
                Err(e) => {
                    if let Err(r) = conn.execute_batch("ROLLBACK") {
                        tracing::warn!("DuckDB rollback after an error failed: {r}");
                    }
                    Err(e)
                }
            }
        })
    }
}

/// DuckDB names the class of an error at the start of its message.
fn failure(e: &duckdb::Error, message: &str) -> Failure {
    const VALUE: [&str; 4] = [
        "Conversion Error",
        "Invalid Input Error",
        "Out of Range Error",
        "Constraint Error",
    ];
    const IO: [&str; 5] = [
        "IO Error",
        "Out of Memory Error",
        "FATAL Error",
        "INTERNAL Error",
        "Interrupt Error",
    ];
    // The appender drops the class: its messages name the check that failed.
    const APPENDER_VALUE: [&str; 2] = ["constraint failed", "Could not convert"];
    let appended = message.strip_prefix("Failed to append: ");
    if matches!(e, duckdb::Error::ToSqlConversionFailure(_))
        || VALUE.iter().any(|v| message.starts_with(v))
        || appended.is_some_and(|m| APPENDER_VALUE.iter().any(|v| m.contains(v)))
    {
        Failure::Value
    } else if IO.iter().any(|v| message.starts_with(v)) {
        Failure::Io
    } else {
        Failure::Statement
    }
}

/// Appends `rows` through DuckDB's appender, a column at a time (inside
/// the caller's transaction).
fn append(conn: &Connection, table: &TableRef, rows: &TableRows) -> Result<(), WarehouseError> {
    let context = format!("appending to {table}");
    let Encoded::Arrow(arrow) = rows.data() else {
        return Err(WarehouseError::Sql {
            context,
            message: "the rows were encoded for another target".into(),
            failure: Failure::Statement,
        });
    };
    let names: Vec<&str> = rows.columns.iter().map(|c| c.name.as_str()).collect();
    let mut app = conn
        .appender_with_columns_to_db(&table.name, &table.schema, &names)
        .map_err(DuckDbWarehouse::sql_error(&context))?;
    for batch in arrow.batches() {
        app.append_record_batch(batch.clone())
            .map_err(DuckDbWarehouse::sql_error(&context))?;
    }
    app.flush().map_err(DuckDbWarehouse::sql_error(&context))
}

impl DuckDbWarehouse {
    /// Runs statements in order, in one transaction.
    pub async fn execute(&mut self, statements: &[String]) -> Result<(), WarehouseError> {
        self.in_transaction("DDL", |conn| {
            for s in statements {
                conn.execute_batch(s).map_err(Self::sql_error(s))?;
            }
            Ok(())
        })
    }
}

impl Warehouse for DuckDbWarehouse {
    fn dialect(&self) -> Dialect {
        Dialect::DuckDb
    }

    fn describe(&self) -> String {
        format!("duckdb:{}", self.path.display())
    }

    super::sql_ddl!(Dialect::DuckDb);

    async fn columns(&mut self, table: &super::TableRef) -> Result<Option<Vec<(String, String)>>, WarehouseError> {
        let conn = &self.conn;
        let rows: Vec<(String, String)> = tokio::task::block_in_place(|| {
            let mut stmt = conn
                .prepare(
                    "SELECT column_name, data_type FROM information_schema.columns \
                     WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                )
                .map_err(Self::sql_error("reading columns"))?;
            let rows = stmt
                .query_map([&table.schema, &table.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(Self::sql_error("reading columns"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(Self::sql_error("reading columns"))
        })?;
        Ok((!rows.is_empty()).then_some(rows))
    }

    async fn offsets(&mut self, consumer_group: &str) -> Result<HashMap<(String, i32), StoredOffset>, WarehouseError> {
        let conn = &self.conn;
        tokio::task::block_in_place(|| {
            let mut stmt = conn
                .prepare(
                    "SELECT topic, \"partition\", next_offset, high_commit_lsn, high_tx_ordinal, high_system_id \
                     FROM walhouse.offsets WHERE consumer_group = ?",
                )
                .map_err(Self::sql_error("reading offsets"))?;
            let rows = stmt
                .query_map([consumer_group], |r| {
                    let high = Mark::from_columns(r.get(3)?, r.get(4)?, r.get(5)?);
                    Ok(((r.get(0)?, r.get(1)?), StoredOffset { next: r.get(2)?, high }))
                })
                .map_err(Self::sql_error("reading offsets"))?;
            rows.collect::<Result<HashMap<_, _>, _>>()
                .map_err(Self::sql_error("reading offsets"))
        })
    }

    async fn write(&mut self, consumer_group: &str, batch: &Batch) -> Result<(), WarehouseError> {
        self.in_transaction("writing a batch", |conn| {
            let dead = batch.dead_letter_rows(Dialect::DuckDb)?;
            for (table, rows) in batch.tables.iter().chain(&dead) {
                if rows.is_empty() {
                    continue;
                }
                append(conn, table, rows)?;
            }
            for o in &batch.offsets {
                let (commit_lsn, tx_ordinal, system_id) = Mark::columns(o.high);
                let moved = match o.from {
                    None => conn.execute(
                        "INSERT INTO walhouse.offsets (consumer_group, topic, \"partition\", next_offset, \
                         high_commit_lsn, high_tx_ordinal, high_system_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        duckdb::params![
                            consumer_group,
                            o.topic,
                            o.partition,
                            o.next,
                            commit_lsn,
                            tx_ordinal,
                            system_id
                        ],
                    ),
                    Some(from) => conn.execute(
                        "UPDATE walhouse.offsets SET next_offset = ?, high_commit_lsn = ?, high_tx_ordinal = ?, \
                         high_system_id = ?, updated_at = current_timestamp \
                         WHERE consumer_group = ? AND topic = ? AND \"partition\" = ? AND next_offset = ?",
                        duckdb::params![
                            o.next,
                            commit_lsn,
                            tx_ordinal,
                            system_id,
                            consumer_group,
                            o.topic,
                            o.partition,
                            from
                        ],
                    ),
                };
                let fenced = || WarehouseError::Fenced {
                    topic: o.topic.clone(),
                    partition: o.partition,
                    expected: o.from,
                };
                match moved {
                    Ok(1) => {}
                    // No row at the expected position: someone else moved it.
                    Ok(_) => return Err(fenced()),
                    Err(e) => {
                        let e = Self::sql_error("storing offsets")(e);
                        // A duplicate key on insert: someone else stored it
                        // first. Any other failure is just that.
                        return Err(match &e {
                            WarehouseError::Sql { message, .. }
                                if o.from.is_none() && message.starts_with("Constraint Error") =>
                            {
                                fenced()
                            }
                            _ => e,
                        });
                    }
                }
            }
            if let Some(f) = &batch.file {
                conn.execute(
                    "INSERT INTO walhouse.file_loads (sha256, file, \"rows\", dead_letters) VALUES (?, ?, ?, ?)",
                    duckdb::params![f.sha256, f.file, f.rows, f.dead_letters],
                )
                .map_err(Self::sql_error("recording the file load"))?;
            }
            Ok(())
        })
    }

    async fn probe(&mut self, table: &TableRef, rows: &TableRows) -> Result<(), WarehouseError> {
        let conn = &self.conn;
        tokio::task::block_in_place(|| {
            let context = format!("appending to {table}");
            conn.execute_batch("BEGIN TRANSACTION")
                .map_err(Self::sql_error(&context))?;
            let result = append(conn, table, rows);
            if let Err(r) = conn.execute_batch("ROLLBACK") {
                tracing::warn!("DuckDB rollback after a probe failed: {r}");
            }
            result
        })
    }

    async fn file_loaded(&mut self, sha256: &str) -> Result<bool, WarehouseError> {
        let sql = format!(
            "SELECT count(*) FROM walhouse.file_loads WHERE sha256 = {}",
            quote::literal(sha256)
        );
        let conn = &self.conn;
        let n: i64 = tokio::task::block_in_place(|| conn.query_row(&sql, [], |r| r.get(0)))
            .map_err(Self::sql_error("reading file loads"))?;
        Ok(n > 0)
    }

    async fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WarehouseError> {
        // COLUMNS(*) casts every column of the query to text in DuckDB.
        let wrapped = format!(
            "SELECT COLUMNS(*)::VARCHAR FROM ({}) AS {}",
            sql.trim().trim_end_matches(';'),
            quote::ident("q")
        );
        let conn = &self.conn;
        tokio::task::block_in_place(|| {
            let mut stmt = conn.prepare(&wrapped).map_err(Self::sql_error("query"))?;
            let mut rows = stmt.query([]).map_err(Self::sql_error("query"))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(Self::sql_error("query"))? {
                let n = row.as_ref().column_count();
                let mut values = Vec::with_capacity(n);
                for i in 0..n {
                    values.push(row.get::<_, Option<String>>(i).map_err(Self::sql_error("query"))?);
                }
                out.push(values);
            }
            Ok(out)
        })
    }
}

/// The file's stem as its catalog's name, as DuckDB names a file it opens,
/// unless DuckDB holds that name for a catalog of its own (`memory`,
/// `system`, `temp`, matched without case) or reserves it (`main`): then
/// the first free `<stem>_<n>`.
fn free_catalog_name(conn: &Connection, stem: &str) -> Result<String, duckdb::Error> {
    let mut stmt = conn.prepare("SELECT lower(database_name) FROM duckdb_databases()")?;
    let mut taken: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    taken.push("main".into());
    let mut name = stem.to_owned();
    let mut n = 0;
    while taken.contains(&name.to_lowercase()) {
        n += 1;
        name = format!("{stem}_{n}");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's stem names its catalog, and DuckDB keeps some names for
    /// its own catalogs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_named_like_duckdbs_own_catalogs_open_and_keep_their_tables() {
        let dir = tempfile::tempdir().expect("dir");
        for name in ["memory", "system", "temp", "main", "Memory", "warehouse"] {
            let path = dir.path().join(format!("{name}.duckdb"));
            let mut w = DuckDbWarehouse::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            w.execute(&[
                "CREATE SCHEMA IF NOT EXISTS s".into(),
                "CREATE TABLE s.t (n int)".into(),
                "INSERT INTO s.t VALUES (7)".into(),
            ])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            drop(w);
            let mut again = DuckDbWarehouse::open(&path).unwrap_or_else(|e| panic!("{name} again: {e}"));
            let rows = again
                .query_text("SELECT n FROM s.t")
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rows, vec![vec![Some("7".to_string())]], "{name}");
        }
    }

    /// Values the engine itself refuses through the appender (a check, a
    /// NOT NULL) cost their row, not the batch: the appender's messages
    /// carry no error class.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_the_appender_refuses_are_value_failures() {
        use crate::warehouse::{Cell, ColumnDef, SqlType};
        let dir = tempfile::tempdir().expect("dir");
        let mut w = DuckDbWarehouse::open(&dir.path().join("w.duckdb")).expect("open");
        w.execute(&["CREATE TABLE t (n BIGINT NOT NULL CHECK (n < 10), j VARCHAR)".into()])
            .await
            .expect("table");
        let columns = vec![ColumnDef::new("n", SqlType::BigInt), ColumnDef::new("j", SqlType::Text)];
        for (row, what) in [
            ([Cell::Long(11), Cell::Null], "a check"),
            ([Cell::Null, Cell::Null], "NOT NULL"),
        ] {
            let mut rows = TableRows::new(Dialect::DuckDb, columns.clone()).expect("rows");
            rows.push(&row).expect("the columns hold it");
            rows.seal().expect("sealed");
            let e = w.probe(&TableRef::new("main", "t"), &rows).await.expect_err(what);
            assert_eq!(e.failure(), Failure::Value, "{what}: {e}");
        }
    }
}
