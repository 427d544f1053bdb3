//! A batch's rows as an Arrow record batch, one array per column, typed by
//! the column's declared [`SqlType`]: how DuckDB takes rows a column at a
//! time (its appender's bulk path) instead of one bound value at a time.
//!
//! Every value is checked against its column here, never by the engine
//! that reads the arrays: Arrow's decimal arrays carry no bound, and the
//! engine may narrow a value that exceeds its declared precision instead
//! of refusing it. A value that does not fit is a [`ConversionError`] of
//! one row, which the caller sets aside like any refused value.

use std::sync::Arc;

use duckdb::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int32Builder, Int64Builder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;

use super::{too_many_digits, Cell, ColumnDef, SqlType};

/// A value its column cannot hold, or a malformed batch.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("column {column}: {reason}")]
    Value { column: String, reason: String },
    #[error("building Arrow arrays: {0}")]
    Arrow(#[from] duckdb::arrow::error::ArrowError),
}

/// The time zone of `timestamptz` arrays: values are UTC microseconds.
const UTC: &str = "UTC";

/// The Arrow type a column's values travel as. UUIDs and JSON travel as
/// text, which the engine converts to the column's type (and checks).
pub fn data_type(ty: &SqlType) -> DataType {
    match ty {
        SqlType::Boolean => DataType::Boolean,
        SqlType::Integer => DataType::Int32,
        SqlType::BigInt => DataType::Int64,
        SqlType::Real => DataType::Float32,
        SqlType::Double => DataType::Float64,
        SqlType::Decimal { precision, scale } => DataType::Decimal128(*precision as u8, *scale as i8),
        SqlType::Text | SqlType::Uuid | SqlType::Json => DataType::Utf8,
        SqlType::Bytes => DataType::Binary,
        SqlType::Date => DataType::Date32,
        SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
        SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        SqlType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
    }
}

/// `rows` (each with a cell per column of `columns`, in order) as one
/// record batch.
pub fn record_batch(columns: &[ColumnDef], rows: &[Vec<Cell>]) -> Result<RecordBatch, ConversionError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(&c.name, data_type(&c.ty), true))
        .collect();
    let arrays = columns
        .iter()
        .enumerate()
        .map(|(i, c)| array(c, rows.iter().map(|r| r.get(i))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Builds one column's array from its cells (`None`: the row is short).
fn array<'a>(
    column: &ColumnDef,
    cells: impl ExactSizeIterator<Item = Option<&'a Cell>>,
) -> Result<ArrayRef, ConversionError> {
    let n = cells.len();
    let wrong = |cell: Option<&Cell>| ConversionError::Value {
        column: column.name.clone(),
        reason: match cell {
            None => "the row has no value for it".into(),
            Some(c) => format!("a {} value cannot be stored as {:?}", c.kind(), column.ty),
        },
    };
    // Each arm appends every cell, or stops at the first that does not fit.
    macro_rules! build {
        ($builder:expr, $($pattern:pat => $value:expr),+) => {{
            let mut b = $builder;
            for cell in cells {
                match cell {
                    Some(Cell::Null) => b.append_null(),
                    $(Some($pattern) => b.append_value($value),)+
                    other => return Err(wrong(other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match &column.ty {
        SqlType::Boolean => build!(BooleanBuilder::with_capacity(n), Cell::Bool(v) => *v),
        SqlType::Integer => build!(Int32Builder::with_capacity(n), Cell::Int(v) => *v),
        SqlType::BigInt => build!(Int64Builder::with_capacity(n), Cell::Long(v) => *v, Cell::Int(v) => i64::from(*v)),
        SqlType::Real => build!(Float32Builder::with_capacity(n), Cell::Float(v) => *v),
        SqlType::Double => {
            build!(Float64Builder::with_capacity(n), Cell::Double(v) => *v, Cell::Float(v) => f64::from(*v))
        }
        SqlType::Decimal { precision, scale } => {
            let mut b = Decimal128Builder::with_capacity(n).with_precision_and_scale(*precision as u8, *scale as i8)?;
            for cell in cells {
                match cell {
                    Some(Cell::Null) => b.append_null(),
                    Some(Cell::Decimal { unscaled, scale: s, .. }) if u32::from(*s) == *scale => {
                        if let Some(reason) = too_many_digits(*unscaled, *precision) {
                            return Err(ConversionError::Value {
                                column: column.name.clone(),
                                reason,
                            });
                        }
                        b.append_value(*unscaled)
                    }
                    other => return Err(wrong(other)),
                }
            }
            Arc::new(b.finish())
        }
        SqlType::Text | SqlType::Json | SqlType::Uuid => {
            build!(StringBuilder::with_capacity(n, n * 16), Cell::Text(s) => s, Cell::Uuid(s) => s)
        }
        SqlType::Bytes => build!(BinaryBuilder::with_capacity(n, n * 16), Cell::Bytes(b) => b),
        SqlType::Date => build!(Date32Builder::with_capacity(n), Cell::Date(d) => *d),
        SqlType::Time => build!(Time64MicrosecondBuilder::with_capacity(n), Cell::Time(t) => *t),
        SqlType::Timestamp => build!(TimestampMicrosecondBuilder::with_capacity(n), Cell::Timestamp(t) => *t),
        SqlType::TimestampTz => build!(
            TimestampMicrosecondBuilder::with_capacity(n).with_timezone(UTC),
            Cell::TimestampTz(t) => *t
        ),
    })
}
