//! Iceberg types for the warehouse's column types, chosen so that every
//! value is kept exactly (decimals with their precision and scale,
//! microsecond timestamps with and without time zone, UUIDs as Iceberg's
//! `uuid`, JSON as text), and the Arrow arrays a batch becomes on the way
//! to Parquet.

use std::sync::Arc;

use duckdb::arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, RecordBatch};
use duckdb::arrow::datatypes::{DataType, Date32Type, SchemaRef, TimeUnit, TimestampMicrosecondType};
use iceberg::spec::{PrimitiveType, Type};

use crate::warehouse::SqlType;

/// The Iceberg type that holds a column of `ty`.
pub fn iceberg_type(ty: &SqlType) -> Type {
    Type::Primitive(match ty {
        SqlType::Boolean => PrimitiveType::Boolean,
        SqlType::Integer => PrimitiveType::Int,
        SqlType::BigInt => PrimitiveType::Long,
        SqlType::Real => PrimitiveType::Float,
        SqlType::Double => PrimitiveType::Double,
        SqlType::Decimal { precision, scale } => PrimitiveType::Decimal {
            precision: *precision,
            scale: *scale,
        },
        SqlType::Text | SqlType::Json => PrimitiveType::String,
        SqlType::Bytes => PrimitiveType::Binary,
        SqlType::Date => PrimitiveType::Date,
        SqlType::Time => PrimitiveType::Time,
        SqlType::Timestamp => PrimitiveType::Timestamp,
        SqlType::TimestampTz => PrimitiveType::Timestamptz,
        SqlType::Uuid => PrimitiveType::Uuid,
    })
}

/// Whether a field of Iceberg type `declared` (as [`Type`]'s text) holds
/// `wanted`.
pub fn holds(declared: &str, wanted: &SqlType) -> bool {
    declared == iceberg_type(wanted).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ArrowConversionError {
    #[error("column {column}: {reason}")]
    Column { column: String, reason: String },
    #[error("building the Iceberg batch: {0}")]
    Arrow(#[from] duckdb::arrow::error::ArrowError),
}

/// `batch` (the warehouse's Arrow encoding of rows, see
/// [`crate::warehouse::arrow`]) under the table's Arrow schema, `target`
/// (field ids, Iceberg's own forms): timestamps with time zone carry
/// Iceberg's `+00:00`, UUIDs their 16 bytes instead of their text.
/// Columns are matched by name; one the batch lacks is null.
///
/// Iceberg has no infinite dates or timestamps, and readers fail on the
/// other targets' sentinels (pyarrow and Spark overflow on them): such a
/// value is null here; its exact text is in the row's `_text_values`.
pub fn to_table_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ArrowConversionError> {
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let Some(source) = batch.column_by_name(field.name()) else {
            columns.push(duckdb::arrow::array::new_null_array(field.data_type(), rows));
            continue;
        };
        let refuse = |reason: String| ArrowConversionError::Column {
            column: field.name().clone(),
            reason,
        };
        let converted: ArrayRef = match (source.data_type(), field.data_type()) {
            (a, b) if a == b => source.clone(),
            (DataType::Timestamp(_, Some(_)), DataType::Timestamp(_, Some(tz))) => Arc::new(
                source
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
                    .with_timezone(tz.clone()),
            ),
            (DataType::Utf8, DataType::FixedSizeBinary(16)) => {
                let text = source.as_string::<i32>();
                let mut out = FixedSizeBinaryBuilder::with_capacity(rows, 16);
                for value in text.iter() {
                    match value {
                        None => out.append_null(),
                        Some(s) => {
                            let bytes = uuid_bytes(s).ok_or_else(|| refuse(format!("{s:?} is not a UUID")))?;
                            out.append_value(bytes)?;
                        }
                    }
                }
                Arc::new(out.finish())
            }
            // Iceberg's Arrow forms of the same values (`binary` is
            // LargeBinary): a widening Arrow does itself.
            // Checked: a value the cast cannot keep is an error, never a null.
            (from, to) if duckdb::arrow::compute::can_cast_types(from, to) => {
                let checked = duckdb::arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                duckdb::arrow::compute::cast_with_options(source, to, &checked)
                    .map_err(|e| refuse(format!("{from} as {to}: {e}")))?
            }
            (from, to) => return Err(refuse(format!("{from} cannot be written as {to}"))),
        };
        columns.push(without_infinities(converted));
    }
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// `array` with the warehouses' infinite dates and timestamps as nulls.
fn without_infinities(array: ArrayRef) -> ArrayRef {
    use crate::calendar::{DATE_INFINITY, DATE_NEG_INFINITY, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY};
    match array.data_type() {
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>();
            Arc::new(days.unary_opt::<_, Date32Type>(|d| (d != DATE_INFINITY && d != DATE_NEG_INFINITY).then_some(d)))
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let micros = array.as_primitive::<TimestampMicrosecondType>();
            Arc::new(
                micros
                    .unary_opt::<_, TimestampMicrosecondType>(|t| {
                        (t != TIMESTAMP_INFINITY && t != TIMESTAMP_NEG_INFINITY).then_some(t)
                    })
                    .with_timezone_opt(zone.clone()),
            )
        }
        _ => array,
    }
}

/// The 16 bytes of a UUID in its text form (hyphens optional).
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_become_their_bytes() {
        assert_eq!(
            uuid_bytes("00112233-4455-6677-8899-aabbccddeeff"),
            Some([0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert_eq!(uuid_bytes("0011"), None);
        assert_eq!(uuid_bytes("zz112233-4455-6677-8899-aabbccddeeff"), None);
    }

    #[test]
    fn every_column_type_has_an_exact_iceberg_type() {
        assert_eq!(
            iceberg_type(&SqlType::Decimal {
                precision: 12,
                scale: 2
            })
            .to_string(),
            "decimal(12, 2)"
        );
        assert!(holds("timestamptz", &SqlType::TimestampTz));
        assert!(!holds("timestamp", &SqlType::TimestampTz));
        assert!(holds("uuid", &SqlType::Uuid));
    }
}
