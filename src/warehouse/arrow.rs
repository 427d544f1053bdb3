//! Rows as Arrow arrays, one per column, typed by the column's declared
//! [`SqlType`]: how DuckDB takes rows a column at a time (its appender's
//! bulk path) instead of one bound value at a time. Rows are appended to
//! the column builders as they are decoded, so a pending batch holds its
//! values once, packed, instead of a row of cells each.
//!
//! Every value is checked against its column before its row is appended,
//! never by the engine that reads the arrays: Arrow's decimal arrays carry
//! no bound, and the engine may narrow a value that exceeds its declared
//! precision instead of refusing it. A row with a value that does not fit
//! is a [`ConversionError`] and is not appended (builders cannot take a
//! value back, hence the check first).

use std::sync::Arc;

use duckdb::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use duckdb::arrow::compute::filter_record_batch;
use duckdb::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;

use super::{too_many_digits, width_mismatch, Cell, ColumnDef, SqlType};

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

/// Whether `cell` can be stored in `column` (`Err`: why not).
pub fn check(column: &ColumnDef, cell: &Cell) -> Result<(), ConversionError> {
    let fits = match (&column.ty, cell) {
        (_, Cell::Null)
        | (SqlType::Boolean, Cell::Bool(_))
        | (SqlType::Integer, Cell::Int(_))
        | (SqlType::BigInt, Cell::Long(_) | Cell::Int(_))
        | (SqlType::Real, Cell::Float(_))
        | (SqlType::Double, Cell::Double(_) | Cell::Float(_))
        | (SqlType::Text | SqlType::Json | SqlType::Uuid, Cell::Text(_) | Cell::Uuid(_))
        | (SqlType::Bytes, Cell::Bytes(_))
        | (SqlType::Date, Cell::Date(_))
        | (SqlType::Time, Cell::Time(_))
        | (SqlType::Timestamp, Cell::Timestamp(_))
        | (SqlType::TimestampTz, Cell::TimestampTz(_)) => true,
        (SqlType::Decimal { precision, scale }, Cell::Decimal { unscaled, scale: s, .. })
            if u32::from(*s) == *scale =>
        {
            if let Some(reason) = too_many_digits(*unscaled, *precision) {
                return Err(ConversionError::Value {
                    column: column.name.clone(),
                    reason,
                });
            }
            true
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(ConversionError::Value {
            column: column.name.clone(),
            reason: format!("a {} value cannot be stored as {:?}", cell.kind(), column.ty),
        })
    }
}

/// One column's builder, by the Arrow type its values travel as.
enum Builder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Time64(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(ty: &SqlType) -> Result<Self, ConversionError> {
        Ok(match ty {
            SqlType::Boolean => Builder::Boolean(BooleanBuilder::new()),
            SqlType::Integer => Builder::Int32(Int32Builder::new()),
            SqlType::BigInt => Builder::Int64(Int64Builder::new()),
            SqlType::Real => Builder::Float32(Float32Builder::new()),
            SqlType::Double => Builder::Float64(Float64Builder::new()),
            SqlType::Decimal { precision, scale } => {
                Builder::Decimal(Decimal128Builder::new().with_precision_and_scale(*precision as u8, *scale as i8)?)
            }
            SqlType::Text | SqlType::Uuid | SqlType::Json => Builder::Utf8(StringBuilder::new()),
            SqlType::Bytes => Builder::Binary(BinaryBuilder::new()),
            SqlType::Date => Builder::Date32(Date32Builder::new()),
            SqlType::Time => Builder::Time64(Time64MicrosecondBuilder::new()),
            SqlType::Timestamp => Builder::Timestamp(TimestampMicrosecondBuilder::new()),
            SqlType::TimestampTz => Builder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone(UTC)),
        })
    }

    /// Appends a value [`check`]ed against the builder's column. A cell of
    /// another type (which the check refuses) is appended as NULL, so the
    /// columns never differ in length.
    fn append(&mut self, cell: &Cell) {
        match (self, cell) {
            (Builder::Boolean(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::Int32(b), Cell::Int(v)) => b.append_value(*v),
            (Builder::Int64(b), Cell::Long(v)) => b.append_value(*v),
            (Builder::Int64(b), Cell::Int(v)) => b.append_value(i64::from(*v)),
            (Builder::Float32(b), Cell::Float(v)) => b.append_value(*v),
            (Builder::Float64(b), Cell::Double(v)) => b.append_value(*v),
            (Builder::Float64(b), Cell::Float(v)) => b.append_value(f64::from(*v)),
            (Builder::Decimal(b), Cell::Decimal { unscaled, .. }) => b.append_value(*unscaled),
            (Builder::Utf8(b), Cell::Text(s) | Cell::Uuid(s)) => b.append_value(s),
            (Builder::Binary(b), Cell::Bytes(v)) => b.append_value(v),
            (Builder::Date32(b), Cell::Date(v)) => b.append_value(*v),
            (Builder::Time64(b), Cell::Time(v)) => b.append_value(*v),
            (Builder::Timestamp(b), Cell::Timestamp(v) | Cell::TimestampTz(v)) => b.append_value(*v),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Boolean(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Decimal(b) => b.append_null(),
            Builder::Utf8(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Date32(b) => b.append_null(),
            Builder::Time64(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Boolean(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b) => Arc::new(b.finish()),
            Builder::Utf8(b) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Date32(b) => Arc::new(b.finish()),
            Builder::Time64(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// A table's rows as Arrow arrays: appended to builders, then sealed into
/// record batches for the appender.
pub struct ArrowRows {
    schema: SchemaRef,
    columns: Vec<ColumnDef>,
    builders: Vec<Builder>,
    /// Rows in the builders.
    building: usize,
    sealed: Vec<RecordBatch>,
}

impl ArrowRows {
    pub fn new(columns: &[ColumnDef]) -> Result<Self, ConversionError> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, data_type(&c.ty), true))
            .collect();
        Ok(ArrowRows {
            schema: Arc::new(Schema::new(fields)),
            columns: columns.to_vec(),
            builders: columns.iter().map(|c| Builder::new(&c.ty)).collect::<Result<_, _>>()?,
            building: 0,
            sealed: Vec::new(),
        })
    }

    fn empty_like(&self) -> Self {
        ArrowRows {
            schema: self.schema.clone(),
            columns: self.columns.clone(),
            builders: Vec::new(),
            building: 0,
            sealed: Vec::new(),
        }
    }

    /// Appends a row (a cell per column, in order), or nothing if one of
    /// its cells does not fit its column.
    pub fn push(&mut self, cells: &[Cell]) -> Result<(), ConversionError> {
        if let Some((column, reason)) = width_mismatch(&self.columns, cells) {
            return Err(ConversionError::Value { column, reason });
        }
        for (column, cell) in self.columns.iter().zip(cells) {
            check(column, cell)?;
        }
        if self.builders.len() != self.columns.len() {
            self.builders = self
                .columns
                .iter()
                .map(|c| Builder::new(&c.ty))
                .collect::<Result<_, _>>()?;
        }
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            match cell {
                Cell::Null => builder.append_null(),
                cell => builder.append(cell),
            }
        }
        self.building += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.building + self.sealed.iter().map(RecordBatch::num_rows).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Turns the rows in the builders into a record batch.
    pub fn seal(&mut self) -> Result<(), ConversionError> {
        if self.building == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.building = 0;
        self.sealed.push(RecordBatch::try_new(self.schema.clone(), arrays)?);
        Ok(())
    }

    /// The sealed rows (rows still in the builders are not among them).
    pub fn batches(&self) -> &[RecordBatch] {
        &self.sealed
    }

    /// The sealed rows `from..to`.
    pub fn range(&self, from: usize, to: usize) -> Self {
        let mut out = self.empty_like();
        let mut start = 0;
        for b in &self.sealed {
            let end = start + b.num_rows();
            let (lo, hi) = (from.max(start), to.min(end));
            if lo < hi {
                out.sealed.push(b.slice(lo - start, hi - lo));
            }
            start = end;
        }
        out
    }

    /// Keeps the sealed rows whose `keep` is true.
    pub fn retain(&mut self, keep: &[bool]) -> Result<(), ConversionError> {
        let mut start = 0;
        let mut kept = Vec::with_capacity(self.sealed.len());
        for b in std::mem::take(&mut self.sealed) {
            let end = start + b.num_rows();
            let mask = BooleanArray::from(keep.get(start..end).map(<[bool]>::to_vec).unwrap_or_default());
            kept.push(if mask.len() == b.num_rows() {
                filter_record_batch(&b, &mask)?
            } else {
                b
            });
            start = end;
        }
        self.sealed = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duckdb::arrow::array::{Array, Decimal128Array, Int64Array};

    fn columns() -> Vec<ColumnDef> {
        vec![
            ColumnDef::new("id", SqlType::BigInt),
            ColumnDef::new("amount", SqlType::Decimal { precision: 5, scale: 2 }),
        ]
    }

    fn decimal(unscaled: i128) -> Cell {
        Cell::Decimal {
            unscaled,
            precision: 5,
            scale: 2,
        }
    }

    #[test]
    fn a_row_that_does_not_fit_leaves_nothing_behind() {
        let mut rows = ArrowRows::new(&columns()).expect("builders");
        rows.push(&[Cell::Long(1), decimal(12_345)]).expect("fits");
        let e = rows
            .push(&[Cell::Long(2), decimal(123_456)])
            .expect_err("six digits in five");
        assert!(e.to_string().starts_with("column amount:"), "{e}");
        assert!(rows.push(&[Cell::Text("3".into()), Cell::Null]).is_err());
        assert!(rows.push(&[Cell::Long(4)]).is_err());
        rows.push(&[Cell::Int(5), Cell::Null]).expect("an int widens to bigint");
        rows.seal().expect("seal");
        assert_eq!(rows.len(), 2);
        let b = &rows.batches()[0];
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().expect("int64");
        assert_eq!(ids.values().to_vec(), vec![1, 5]);
        let amounts = b.column(1).as_any().downcast_ref::<Decimal128Array>().expect("decimal");
        assert_eq!((amounts.value(0), amounts.is_null(1)), (12_345, true));
    }

    #[test]
    fn ranges_and_retains_cross_sealed_batches() {
        let mut rows = ArrowRows::new(&columns()).expect("builders");
        for i in 0..3 {
            rows.push(&[Cell::Long(i), Cell::Null]).expect("row");
        }
        rows.seal().expect("seal");
        for i in 3..5 {
            rows.push(&[Cell::Long(i), Cell::Null]).expect("row");
        }
        rows.seal().expect("seal");
        let ids = |r: &ArrowRows| -> Vec<i64> {
            r.batches()
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_any().downcast_ref::<Int64Array>().expect("int64");
                    a.values().to_vec()
                })
                .collect()
        };
        assert_eq!(ids(&rows.range(2, 4)), vec![2, 3]);
        assert_eq!(ids(&rows.range(4, 9)), vec![4]);
        rows.retain(&[true, false, true, false, true]).expect("retain");
        assert_eq!(ids(&rows), vec![0, 2, 4]);
        assert_eq!(rows.len(), 3);
    }
}
