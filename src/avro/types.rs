//! Postgres column types to Avro types: the mapping the README documents.
//!
//! Decided once per column when a Relation message arrives; encoding then
//! follows the decision without looking at the catalog again.

use serde_json::{json, Value as Json};

use crate::postgres::catalog::{TypeInfo, TypeKind};

/// How `numeric` columns travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NumericMode {
    /// `numeric(p,s)` as Avro `decimal(p,s)`; unconstrained `numeric` as string.
    #[default]
    Decimal,
    /// Every numeric as its exact text.
    String,
}

/// The Avro shape of one Postgres column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Int,
    Long,
    Float,
    Double,
    Boolean,
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Exact decimal text (unconstrained numeric, or string mode).
    NumericText,
    String,
    Bytes,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds since midnight.
    TimeMicros,
    /// Microseconds since 1970-01-01 00:00 local (no zone).
    LocalTimestampMicros,
    /// Microseconds since 1970-01-01 00:00 UTC.
    TimestampMicros,
    /// ISO-8601 duration text.
    Interval,
    Uuid,
    Json,
    Enum(Vec<String>),
    /// `dims` nested arrays of nullable `element`.
    Array {
        element: Box<ColumnType>,
        dims: u32,
    },
    /// Anything else, as Postgres's text form; the name is kept for readers.
    Text(String),
}

/// Upper bound on numeric precision Avro readers handle as decimal; wider
/// constrained numerics still fit (Postgres allows 1000), so this only
/// guards against nonsense typmods.
const MAX_DECIMAL_PRECISION: u32 = 1000;

/// Maps a column; `lookup` answers for non-builtin oids (enums, domains,
/// arrays, extension types).
pub fn column_type<'a>(
    oid: u32,
    typmod: i32,
    array_dims: i32,
    mode: NumericMode,
    lookup: &impl Fn(u32) -> Option<&'a TypeInfo>,
) -> ColumnType {
    map(oid, typmod, array_dims, mode, lookup, 0)
}

fn map<'a>(
    oid: u32,
    typmod: i32,
    array_dims: i32,
    mode: NumericMode,
    lookup: &impl Fn(u32) -> Option<&'a TypeInfo>,
    depth: u32,
) -> ColumnType {
    match oid {
        21 | 23 => ColumnType::Int,
        20 => ColumnType::Long,
        700 => ColumnType::Float,
        701 => ColumnType::Double,
        16 => ColumnType::Boolean,
        1700 => numeric(typmod, mode),
        25 | 1043 | 1042 | 19 | 18 => ColumnType::String,
        17 => ColumnType::Bytes,
        1082 => ColumnType::Date,
        1083 => ColumnType::TimeMicros,
        1114 => ColumnType::LocalTimestampMicros,
        1184 => ColumnType::TimestampMicros,
        1186 => ColumnType::Interval,
        2950 => ColumnType::Uuid,
        114 | 3802 => ColumnType::Json,
        _ => match lookup(oid) {
            // A cycle or absurd nesting cannot come from a real catalog.
            _ if depth > 8 => ColumnType::Text(format!("oid {oid}")),
            Some(TypeInfo {
                kind: TypeKind::Enum(labels),
                ..
            }) => ColumnType::Enum(labels.clone()),
            Some(TypeInfo {
                kind: TypeKind::Domain { base, typmod: dm },
                ..
            }) => map(
                *base,
                if *dm >= 0 { *dm } else { typmod },
                array_dims,
                mode,
                lookup,
                depth + 1,
            ),
            Some(TypeInfo {
                kind: TypeKind::Array { element },
                ..
            }) => ColumnType::Array {
                element: Box::new(map(*element, typmod, 0, mode, lookup, depth + 1)),
                dims: array_dims.clamp(1, 6) as u32,
            },
            Some(info) => ColumnType::Text(info.name.clone()),
            None => ColumnType::Text(format!("oid {oid}")),
        },
    }
}

fn numeric(typmod: i32, mode: NumericMode) -> ColumnType {
    if mode == NumericMode::String || typmod < 4 {
        return ColumnType::NumericText;
    }
    let t = typmod - 4;
    let precision = ((t >> 16) & 0xFFFF) as u32;
    // Postgres 15 allows negative scales and scales above the precision;
    // Avro's decimal does not, so such columns travel as exact text.
    let scale = ((t & 0x7FF) ^ 1024) - 1024;
    match u32::try_from(scale) {
        Ok(scale) if (1..=MAX_DECIMAL_PRECISION).contains(&precision) && scale <= precision => {
            ColumnType::Decimal { precision, scale }
        }
        _ => ColumnType::NumericText,
    }
}

impl ColumnType {
    /// The Avro schema of a non-null value of this type.
    pub fn schema(&self) -> Json {
        match self {
            ColumnType::Int => json!("int"),
            ColumnType::Long => json!("long"),
            ColumnType::Float => json!("float"),
            ColumnType::Double => json!("double"),
            ColumnType::Boolean => json!("boolean"),
            ColumnType::Decimal { precision, scale } => {
                json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale})
            }
            ColumnType::NumericText => json!({"type": "string", "walhouse.type": "numeric"}),
            ColumnType::String => json!("string"),
            ColumnType::Bytes => json!("bytes"),
            ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
            ColumnType::TimeMicros => json!({"type": "long", "logicalType": "time-micros"}),
            ColumnType::LocalTimestampMicros => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            ColumnType::TimestampMicros => json!({"type": "long", "logicalType": "timestamp-micros"}),
            ColumnType::Interval => json!({"type": "string", "walhouse.type": "interval"}),
            ColumnType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            ColumnType::Json => {
                json!({"type": "string", "walhouse.type": "json", "connect.name": "io.debezium.data.Json"})
            }
            ColumnType::Enum(labels) => {
                json!({"type": "string", "walhouse.type": "enum", "walhouse.enum.symbols": labels})
            }
            ColumnType::Array { element, dims } => {
                let mut s = json!({"type": "array", "items": ["null", element.schema()]});
                for _ in 1..*dims {
                    s = json!({"type": "array", "items": ["null", s]});
                }
                s
            }
            ColumnType::Text(name) => json!({"type": "string", "walhouse.type": name}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: u32) -> Option<&'static TypeInfo> {
        None
    }

    fn numeric_typmod(p: i32, s: i32) -> i32 {
        ((p << 16) | (s & 0x7FF)) + 4
    }

    #[test]
    fn builtin_types() {
        let m = |oid| column_type(oid, -1, 0, NumericMode::Decimal, &none);
        assert_eq!(m(21), ColumnType::Int);
        assert_eq!(m(20), ColumnType::Long);
        assert_eq!(m(1184), ColumnType::TimestampMicros);
        assert_eq!(m(1114), ColumnType::LocalTimestampMicros);
        assert_eq!(m(1700), ColumnType::NumericText, "unconstrained numeric");
        assert_eq!(m(869), ColumnType::Text("oid 869".into()), "inet falls back to text");
    }

    #[test]
    fn numeric_typmods() {
        let m = |p, s, mode| column_type(1700, numeric_typmod(p, s), 0, mode, &none);
        assert_eq!(
            m(19, 4, NumericMode::Decimal),
            ColumnType::Decimal {
                precision: 19,
                scale: 4
            }
        );
        assert_eq!(
            m(38, 0, NumericMode::Decimal),
            ColumnType::Decimal {
                precision: 38,
                scale: 0
            }
        );
        assert_eq!(m(19, 4, NumericMode::String), ColumnType::NumericText);
        assert_eq!(
            m(5, -2, NumericMode::Decimal),
            ColumnType::NumericText,
            "negative scale"
        );
        assert_eq!(
            m(2, 5, NumericMode::Decimal),
            ColumnType::NumericText,
            "scale above precision"
        );
    }

    #[test]
    fn enums_domains_and_arrays() {
        let infos = [
            (
                90001,
                TypeInfo {
                    name: "mood".into(),
                    kind: TypeKind::Enum(vec!["sad".into(), "ok".into()]),
                },
            ),
            (
                90002,
                TypeInfo {
                    name: "money_amount".into(),
                    kind: TypeKind::Domain {
                        base: 1700,
                        typmod: numeric_typmod(12, 2),
                    },
                },
            ),
            (
                1007,
                TypeInfo {
                    name: "integer[]".into(),
                    kind: TypeKind::Array { element: 23 },
                },
            ),
            (
                90003,
                TypeInfo {
                    name: "citext".into(),
                    kind: TypeKind::Other,
                },
            ),
        ];
        let lookup = |oid: u32| infos.iter().find(|(o, _)| *o == oid).map(|(_, i)| i);
        let m = |oid, dims| column_type(oid, -1, dims, NumericMode::Decimal, &lookup);
        assert_eq!(m(90001, 0), ColumnType::Enum(vec!["sad".into(), "ok".into()]));
        assert_eq!(
            m(90002, 0),
            ColumnType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(
            m(1007, 2),
            ColumnType::Array {
                element: Box::new(ColumnType::Int),
                dims: 2
            }
        );
        assert_eq!(m(1007, 0).schema()["items"][1], json!("int"));
        assert_eq!(m(90003, 0), ColumnType::Text("citext".into()));
    }

    #[test]
    fn every_schema_is_valid_avro() {
        let types = [
            ColumnType::Int,
            ColumnType::Decimal {
                precision: 38,
                scale: 10,
            },
            ColumnType::NumericText,
            ColumnType::Date,
            ColumnType::TimeMicros,
            ColumnType::LocalTimestampMicros,
            ColumnType::TimestampMicros,
            ColumnType::Uuid,
            ColumnType::Json,
            ColumnType::Enum(vec!["a".into()]),
            ColumnType::Array {
                element: Box::new(ColumnType::Text("inet".into())),
                dims: 3,
            },
        ];
        for t in types {
            let s = json!({"type": "record", "name": "R", "fields": [{"name": "f", "type": ["null", t.schema()], "default": null}]});
            apache_avro::Schema::parse(&s).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        }
    }
}
