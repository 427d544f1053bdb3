//! The type widenings Iceberg allows (`int` to `long`, `float` to
//! `double`, a decimal's precision raised at the same scale): a source
//! column whose type grew that way becomes a new schema of the same field
//! ids, which files written before read through. `iceberg` 0.10 has no
//! transaction action for it, so the new metadata is made with its
//! metadata builder, written next to the current one, and swapped in the
//! catalog by the same compare-and-set on `metadata_location` that its
//! own commits use.

use std::str::FromStr;

use iceberg::spec::{NestedField, Schema};
use iceberg::table::Table;
use iceberg::MetadataLocation;

use super::types::iceberg_type;
use super::{IcebergError, CATALOG};
use crate::warehouse::{ColumnDef, SqlType};

/// Whether a field of Iceberg type `declared` (its text) may become one
/// holding `wanted`.
pub fn allowed(declared: &str, wanted: &SqlType) -> bool {
    match wanted {
        SqlType::BigInt => declared == "int",
        SqlType::Double => declared == "float",
        SqlType::Decimal { precision, scale } => decimal(declared).is_some_and(|(p, s)| s == *scale && p < *precision),
        _ => false,
    }
}

/// The precision and scale of `decimal(p, s)`.
fn decimal(declared: &str) -> Option<(u32, u32)> {
    let inner = declared.strip_prefix("decimal(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',')?;
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

/// `current`'s metadata with `columns` given their wider types, as a new
/// current schema; and where it goes.
pub fn widened(current: &Table, columns: &[ColumnDef]) -> Result<(iceberg::spec::TableMetadata, String), IcebergError> {
    let err = super::table_error(current);
    let location = current.metadata_location_result().map_err(&err)?;
    let fields = current
        .metadata()
        .current_schema()
        .as_struct()
        .fields()
        .iter()
        .map(|f| match columns.iter().find(|c| c.name == f.name) {
            Some(c) => NestedField::optional(f.id, &f.name, iceberg_type(&c.ty)).into(),
            None => f.clone(),
        })
        .collect::<Vec<_>>();
    let schema = Schema::builder().with_fields(fields).build().map_err(&err)?;
    let metadata = current
        .metadata()
        .clone()
        .into_builder(Some(location.to_owned()))
        .add_current_schema(schema)
        .and_then(|b| b.build())
        .map_err(&err)?
        .metadata;
    let next = MetadataLocation::from_str(location)
        .map_err(&err)?
        .with_next_version()
        .with_new_metadata(&metadata)
        .to_string();
    Ok((metadata, next))
}

/// Points the catalog's row of `current` at `next` if it still points at
/// the metadata `current` was read from: `Ok(false)` if another writer
/// moved it.
pub async fn swap(pool: &sqlx::AnyPool, numbered: bool, current: &Table, next: &str) -> Result<bool, IcebergError> {
    let err = |e: sqlx::Error| IcebergError::Table {
        table: current.identifier().to_string(),
        message: format!("swapping its metadata in the catalog: {e}"),
    };
    let from = current
        .metadata_location_result()
        .map_err(super::table_error(current))?;
    let p = |n: usize| if numbered { format!("${n}") } else { "?".to_owned() };
    let sql = format!(
        "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
         WHERE catalog_name = {} AND table_namespace = {} AND table_name = {} AND metadata_location = {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6)
    );
    let ident = current.identifier();
    let done = sqlx::query(&sql)
        .bind(next)
        .bind(from)
        .bind(CATALOG)
        .bind(ident.namespace().join("."))
        .bind(ident.name())
        .bind(from)
        .execute(pool)
        .await
        .map_err(err)?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_icebergs_own_promotions_are_allowed() {
        assert!(allowed("int", &SqlType::BigInt));
        assert!(allowed("float", &SqlType::Double));
        assert!(allowed("decimal(5, 2)", &SqlType::Decimal { precision: 9, scale: 2 }));
        assert!(!allowed("decimal(5, 2)", &SqlType::Decimal { precision: 9, scale: 3 }));
        assert!(!allowed("decimal(9, 2)", &SqlType::Decimal { precision: 5, scale: 2 }));
        assert!(!allowed("long", &SqlType::Integer));
        assert!(!allowed("int", &SqlType::Text));
        assert!(!allowed("string", &SqlType::BigInt));
    }
}
