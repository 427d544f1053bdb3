//! A table's rows as its target takes them: Arrow arrays for DuckDB's
//! appender, binary COPY rows for Postgres. Rows are encoded as they are
//! pushed, so a pending batch holds each value once, packed (not a row of
//! cells each), and the writer sends it without converting it again.

use super::arrow::ArrowRows;
use super::origins::Origins;
use super::postgres::copy::CopyRows;
use super::{Cell, ColumnDef, Dialect, WarehouseError};

/// The rows, encoded for one target.
pub enum Encoded {
    Arrow(ArrowRows),
    Copy(CopyRows),
}

/// Rows for one table; `columns` are the values of every row, in order (a
/// subset of the table's columns: missing ones stay NULL), with the types
/// the table declares for them. `origins`, when kept, say where each row
/// came from (same order), so a row the target refuses can be set aside
/// as a dead letter.
pub struct TableRows {
    pub columns: Vec<ColumnDef>,
    data: Encoded,
    pub origins: Origins,
}

impl TableRows {
    /// Empty rows for `dialect`'s target. Fails only for a definition no
    /// batch could hold (a decimal Arrow refuses, more columns than COPY
    /// takes).
    pub fn new(dialect: Dialect, columns: Vec<ColumnDef>) -> Result<Self, WarehouseError> {
        let refused = |message: String| WarehouseError::Sql {
            context: "encoding rows".into(),
            message,
            failure: super::Failure::Statement,
        };
        let data = match dialect {
            Dialect::DuckDb | Dialect::Iceberg => {
                Encoded::Arrow(ArrowRows::new(&columns).map_err(|e| refused(e.to_string()))?)
            }
            Dialect::Postgres => Encoded::Copy(CopyRows::new(&columns).map_err(|e| refused(e.to_string()))?),
        };
        Ok(TableRows {
            columns,
            data,
            origins: Origins::default(),
        })
    }

    /// Appends a row (a cell per column, in order); `Err` says which value
    /// its column cannot hold, and nothing is kept. (Its origin, if kept,
    /// goes to `origins` after.)
    pub fn push(&mut self, cells: &[Cell]) -> Result<(), String> {
        match &mut self.data {
            Encoded::Arrow(a) => a.push(cells).map_err(|e| e.to_string()),
            Encoded::Copy(c) => c.push(cells).map_err(|e| e.to_string()),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Encoded::Arrow(a) => a.len(),
            Encoded::Copy(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every pushed row readable by the writer (Arrow builders
    /// become record batches). Call before writing.
    pub fn seal(&mut self) -> Result<(), WarehouseError> {
        match &mut self.data {
            Encoded::Arrow(a) => a.seal().map_err(|e| WarehouseError::Sql {
                context: "encoding rows".into(),
                message: e.to_string(),
                failure: super::Failure::Statement,
            }),
            Encoded::Copy(_) => Ok(()),
        }
    }

    pub fn data(&self) -> &Encoded {
        &self.data
    }

    /// Rows `from..to` (sealed), without their origins: what a probe sends.
    pub fn range(&self, from: usize, to: usize) -> TableRows {
        TableRows {
            columns: self.columns.clone(),
            data: match &self.data {
                Encoded::Arrow(a) => Encoded::Arrow(a.range(from, to)),
                Encoded::Copy(c) => Encoded::Copy(c.range(from, to)),
            },
            origins: Origins::default(),
        }
    }

    /// Keeps the (sealed) rows whose `keep` is true, and their origins.
    pub fn retain(&mut self, keep: &[bool]) -> Result<(), WarehouseError> {
        match &mut self.data {
            Encoded::Arrow(a) => a.retain(keep).map_err(|e| WarehouseError::Sql {
                context: "setting rows aside".into(),
                message: e.to_string(),
                failure: super::Failure::Statement,
            })?,
            Encoded::Copy(c) => c.retain(keep),
        }
        self.origins.retain(keep);
        Ok(())
    }
}

impl std::fmt::Debug for TableRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRows")
            .field("columns", &self.columns)
            .field("rows", &self.len())
            .finish()
    }
}
