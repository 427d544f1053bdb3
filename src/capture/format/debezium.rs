//! The Kafka Connect type Debezium 3.6's PostgreSQL connector gives a
//! column under its defaults (`decimal.handling.mode=precise`,
//! `time.precision.mode=adaptive`, `interval.handling.mode=numeric`,
//! `hstore.handling.mode=json`, `binary.handling.mode=bytes`,
//! `money.fraction.digits=2`): the type half of the Debezium format,
//! proven column by column against Debezium itself (`tests/debezium.rs`).
//!
//! [`avro_schema`] writes a Connect type as Avro the way Confluent's
//! AvroData (behind the AvroConverter, default settings) does: the schema a
//! Debezium deployment registers. [`envelope`] puts types and values
//! together into a table's records.

pub mod envelope;
pub mod replaced;
pub mod transaction;

use serde_json::{json, Map, Value as Json};

use crate::avro::value::{
    bytea, date_days, decimal_unscaled, parse_array, parse_float, put_bytes, put_long, put_str, split_offset,
    time_micros, timestamp_micros, ArrayNode, ValueError,
};
use crate::postgres::catalog::{TypeInfo, TypeKind};

/// A Connect schema: its type, and for Debezium's semantic types the name,
/// version and parameters that tell readers what the value means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectType {
    /// `int16`, `int32`, `int64`, `float32`, `float64`, `boolean`,
    /// `string`, `bytes`, `struct` or `array`.
    pub ty: &'static str,
    pub name: Option<&'static str>,
    pub version: Option<u32>,
    pub doc: Option<&'static str>,
    /// A default value, as AvroData writes it in JSON (a column's
    /// `DEFAULT`, see [`column_default`]; `source.snapshot`'s "false").
    pub default: Option<Json>,
    pub parameters: Vec<(&'static str, String)>,
    /// A struct's fields (name, type, optional), or an array's one item.
    pub fields: Vec<(&'static str, ConnectType, bool)>,
}

impl ConnectType {
    fn plain(ty: &'static str) -> Self {
        ConnectType {
            ty,
            name: None,
            version: None,
            doc: None,
            default: None,
            parameters: Vec::new(),
            fields: Vec::new(),
        }
    }

    fn named(ty: &'static str, name: &'static str) -> Self {
        ConnectType {
            name: Some(name),
            version: Some(1),
            ..Self::plain(ty)
        }
    }

    fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.parameters.push((key, value.into()));
        self
    }
}

/// Precision above which adaptive mode carries times and timestamps in
/// microseconds instead of milliseconds.
const MILLIS_PRECISION: i32 = 3;
/// Debezium's length of a `varbit` without one.
const UNBOUNDED_BITS: &str = "2147483647";

/// The Connect type of a column of type `oid` with modifier `typmod`.
pub fn connect_type<'a>(oid: u32, typmod: i32, lookup: &impl Fn(u32) -> Option<&'a TypeInfo>) -> ConnectType {
    map(oid, typmod, lookup, 0)
}

fn map<'a>(oid: u32, typmod: i32, lookup: &impl Fn(u32) -> Option<&'a TypeInfo>, depth: u32) -> ConnectType {
    use ConnectType as C;
    // A time or timestamp's declared precision (-1: none, which is 6).
    let precision = if typmod < 0 { 6 } else { typmod };
    match oid {
        21 => C::plain("int16"),
        23 => C::plain("int32"),
        20 => C::plain("int64"),
        700 => C::plain("float32"),
        701 => C::plain("float64"),
        16 => C::plain("boolean"),
        1700 if typmod >= 4 => {
            // numeric's typmod: ((precision << 16) | scale) + 4.
            let t = typmod - 4;
            C::named("bytes", "org.apache.kafka.connect.data.Decimal")
                .with("scale", ((t & 0xffff) as i16).to_string())
                .with("connect.decimal.precision", (t >> 16).to_string())
        }
        1700 => ConnectType {
            fields: vec![("scale", C::plain("int32"), false), ("value", C::plain("bytes"), false)],
            doc: Some("Variable scaled decimal"),
            ..C::named("struct", "io.debezium.data.VariableScaleDecimal")
        },
        790 => C::named("bytes", "org.apache.kafka.connect.data.Decimal").with("scale", "2"),
        25 | 1043 | 1042 | 19 | 18 => C::plain("string"),
        17 => C::plain("bytes"),
        1082 => C::named("int32", "io.debezium.time.Date"),
        1083 if precision <= MILLIS_PRECISION => C::named("int32", "io.debezium.time.Time"),
        1083 => C::named("int64", "io.debezium.time.MicroTime"),
        1266 => C::named("string", "io.debezium.time.ZonedTime"),
        1114 if precision <= MILLIS_PRECISION => C::named("int64", "io.debezium.time.Timestamp"),
        1114 => C::named("int64", "io.debezium.time.MicroTimestamp"),
        1184 => C::named("string", "io.debezium.time.ZonedTimestamp"),
        1186 => C::named("int64", "io.debezium.time.MicroDuration"),
        2950 => C::named("string", "io.debezium.data.Uuid"),
        114 | 3802 => C::named("string", "io.debezium.data.Json"),
        142 => C::named("string", "io.debezium.data.Xml"),
        1560 if typmod == 1 => C::plain("boolean"),
        1560 => C::named("bytes", "io.debezium.data.Bits").with("length", typmod.max(1).to_string()),
        1562 if typmod > 0 => C::named("bytes", "io.debezium.data.Bits").with("length", typmod.to_string()),
        1562 => C::named("bytes", "io.debezium.data.Bits").with("length", UNBOUNDED_BITS),
        600 => ConnectType {
            fields: vec![
                ("x", C::plain("float64"), false),
                ("y", C::plain("float64"), false),
                ("wkb", C::plain("bytes"), true),
                ("srid", C::plain("int32"), true),
            ],
            doc: Some("Geometry (POINT)"),
            ..C::named("struct", "io.debezium.data.geometry.Point")
        },
        _ => match lookup(oid) {
            _ if depth > 8 => C::plain("string"),
            Some(TypeInfo {
                kind: TypeKind::Enum(labels),
                ..
            }) => C::named("string", "io.debezium.data.Enum").with("allowed", labels.join(",")),
            Some(TypeInfo {
                kind: TypeKind::Domain { base, typmod },
                ..
            }) => map(*base, *typmod, lookup, depth + 1),
            Some(TypeInfo {
                kind: TypeKind::Array { element },
                ..
            }) => ConnectType {
                fields: vec![("items", map(*element, typmod, lookup, depth + 1), true)],
                ..C::plain("array")
            },
            Some(TypeInfo { name, .. }) if name == "hstore" => C::named("string", "io.debezium.data.Json"),
            // inet, cidr, macaddr, ranges, geometric types but point, …:
            // their text form.
            _ => C::plain("string"),
        },
    }
}

/// AvroData's precision for a Decimal schema without one.
const DEFAULT_DECIMAL_PRECISION: u64 = 64;

/// The Avro schema AvroData writes for `t`; `optional` makes it a union
/// with null first. Records are named by their Connect name.
pub fn avro_schema(t: &ConnectType, optional: bool) -> Json {
    let mut props = Map::new();
    let base = match t.ty {
        "int16" | "int8" => {
            props.insert("connect.type".into(), json!(t.ty));
            json!("int")
        }
        "int32" => json!("int"),
        "int64" => json!("long"),
        "float32" => json!("float"),
        "float64" => json!("double"),
        "boolean" => json!("boolean"),
        "string" => json!("string"),
        "bytes" => {
            if t.name == Some("org.apache.kafka.connect.data.Decimal") {
                let param = |k: &str| {
                    t.parameters
                        .iter()
                        .find(|(p, _)| *p == k)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                };
                props.insert("scale".into(), json!(param("scale").unwrap_or(0)));
                props.insert(
                    "precision".into(),
                    json!(param("connect.decimal.precision").unwrap_or(DEFAULT_DECIMAL_PRECISION)),
                );
                props.insert("logicalType".into(), json!("decimal"));
            }
            json!("bytes")
        }
        "array" => {
            let (_, item, item_optional) = &t.fields[0];
            json!({"type": "array", "items": avro_schema(item, *item_optional)})
        }
        "struct" => {
            let fields: Vec<Json> = t
                .fields
                .iter()
                .map(|(name, f, field_optional)| field(name, f, *field_optional))
                .collect();
            json!({"type": "record", "name": t.name.unwrap_or("io.confluent.connect.avro.ConnectDefault"), "fields": fields})
        }
        other => json!(other),
    };
    if let Some(d) = t.doc {
        props.insert("connect.doc".into(), json!(d));
    }
    if let Some(v) = t.version {
        props.insert("connect.version".into(), json!(v));
    }
    if !t.parameters.is_empty() {
        let p: Map<String, Json> = t.parameters.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        props.insert("connect.parameters".into(), Json::Object(p));
    }
    if let Some(d) = &t.default {
        props.insert("connect.default".into(), d.clone());
    }
    if let Some(n) = t.name {
        props.insert("connect.name".into(), json!(n));
    }
    let base = with_props(base, props);
    match (optional, &t.default) {
        // A union's first branch types its default.
        (true, Some(_)) => json!([base, "null"]),
        (true, None) => json!(["null", base]),
        (false, _) => base,
    }
}

/// A record field of type `t`: an optional one defaults to null, unless
/// the type has a default of its own.
pub fn field(name: &str, t: &ConnectType, optional: bool) -> Json {
    let schema = avro_schema(t, optional);
    match (&t.default, optional) {
        (Some(d), _) => json!({"name": name, "type": schema, "default": d}),
        (None, true) => json!({"name": name, "type": schema, "default": null}),
        (None, false) => json!({"name": name, "type": schema}),
    }
}

/// A primitive with properties becomes an object; others take them in.
fn with_props(base: Json, props: Map<String, Json>) -> Json {
    if props.is_empty() {
        return base;
    }
    let mut object = match base {
        Json::String(t) => {
            let mut m = Map::new();
            m.insert("type".into(), Json::String(t));
            m
        }
        Json::Object(m) => m,
        other => return other,
    };
    object.extend(props);
    Json::Object(object)
}

/// The `Value` record of a table's rows, as Debezium names it
/// (`<prefix>.<schema>.<table>.Value`): each column with its Connect type,
/// optional where the column may be null.
pub fn value_record(record_name: &str, columns: &[(String, ConnectType, bool)]) -> Json {
    let fields: Vec<Json> = columns
        .iter()
        .map(|(name, t, optional)| field(name, t, *optional))
        .collect();
    json!({"type": "record", "name": record_name, "fields": fields, "connect.name": record_name})
}

/// The key record of a table's topic (`<record_prefix>.Key`): its key
/// columns (the primary key's are never optional; a unique index's may be).
pub fn key_record(record_prefix: &str, key_columns: &[(String, ConnectType, bool)]) -> Json {
    let name = format!("{record_prefix}.Key");
    let fields: Vec<Json> = key_columns
        .iter()
        .map(|(n, t, optional)| field(n, t, *optional))
        .collect();
    json!({"type": "record", "name": name, "fields": fields, "connect.name": name})
}

/// The source block of Debezium's PostgreSQL connector.
pub fn source_type() -> ConnectType {
    use ConnectType as C;
    let snapshot = ConnectType {
        default: Some(json!("false")),
        ..C::named("string", "io.debezium.data.Enum").with(
            "allowed",
            "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental",
        )
    };
    ConnectType {
        fields: vec![
            ("version", C::plain("string"), false),
            ("connector", C::plain("string"), false),
            ("name", C::plain("string"), false),
            ("ts_ms", C::plain("int64"), false),
            ("snapshot", snapshot, true),
            ("db", C::plain("string"), false),
            ("sequence", C::plain("string"), true),
            ("ts_us", C::plain("int64"), true),
            ("ts_ns", C::plain("int64"), true),
            ("schema", C::plain("string"), false),
            ("table", C::plain("string"), false),
            ("txId", C::plain("int64"), true),
            ("lsn", C::plain("int64"), true),
            ("xmin", C::plain("int64"), true),
            ("origin", C::plain("string"), true),
            ("origin_lsn", C::plain("int64"), true),
        ],
        ..C::named("struct", "io.debezium.connector.postgresql.Source")
    }
}

/// The transaction block (`event.block`).
pub fn transaction_type() -> ConnectType {
    use ConnectType as C;
    ConnectType {
        fields: vec![
            ("id", C::plain("string"), false),
            ("total_order", C::plain("int64"), false),
            ("data_collection_order", C::plain("int64"), false),
        ],
        ..C::named("struct", "event.block")
    }
}

/// The envelope record of a table's topic (`<record_prefix>.Envelope`,
/// Connect version 2), around its `Value` record.
pub fn envelope_schema(record_prefix: &str, value: &Json) -> Json {
    let name = format!("{record_prefix}.Envelope");
    let optional_value = json!(["null", value]);
    // `after` names the record `before` defines (a name is defined once).
    let value_name = value["name"].clone();
    let long = ConnectType::plain("int64");
    json!({
        "type": "record",
        "name": name,
        "fields": [
            {"name": "before", "type": optional_value, "default": null},
            {"name": "after", "type": ["null", value_name], "default": null},
            field("source", &source_type(), false),
            field("transaction", &transaction_type(), true),
            field("op", &ConnectType::plain("string"), false),
            field("ts_ms", &long, true),
            field("ts_us", &long, true),
            field("ts_ns", &long, true),
        ],
        "connect.version": 2,
        "connect.name": name,
    })
}

/// The default Debezium gives a column of type `oid` (its Connect type `t`)
/// whose `DEFAULT` is `expr` (as `pg_get_expr` prints it), in AvroData's
/// JSON, following Debezium's PostgresDefaultValueConverter: literals are
/// taken as they are, a function call (`now()`, `nextval(…)`,
/// `gen_random_uuid()`) stands for the type's placeholder (0, "",
/// 1970-01-01, …), `NULL` and what it does not parse give no default.
/// Types it has no mapper for (money, intervals, bit strings, arrays,
/// geometry, …) and unconstrained numerics (a struct) get none either.
pub fn column_default<'a>(
    oid: u32,
    typmod: i32,
    t: &ConnectType,
    expr: &str,
    lookup: &impl Fn(u32) -> Option<&'a TypeInfo>,
) -> Option<Json> {
    let expr = expr.trim();
    let text = |placeholder: &str| -> Option<String> {
        let lower = expr.to_ascii_lowercase();
        if is_function_call(expr)
            || [
                "current_timestamp",
                "current_time",
                "current_date",
                "localtime",
                "localtimestamp",
            ]
            .contains(&lower.as_str())
        {
            return Some(placeholder.to_owned());
        }
        literal(expr)
    };
    match oid {
        16 => text("false").map(|v| json!(v.eq_ignore_ascii_case("true"))),
        1042 | 1043 | 25 | 142 => text("").map(Json::String),
        114 | 3802 => text("{}").map(Json::String),
        2950 => text("00000000-0000-0000-0000-000000000000").map(Json::String),
        21 | 23 | 20 => text("0").and_then(|v| v.parse::<i64>().ok()).map(|v| json!(v)),
        700 | 701 => text("0.0").and_then(|v| v.parse::<f64>().ok()).map(|v| json!(v)),
        1700 if t.name == Some("org.apache.kafka.connect.data.Decimal") => {
            let scale = t
                .parameters
                .iter()
                .find(|(k, _)| *k == "scale")
                .and_then(|(_, v)| v.parse::<u32>().ok())
                .unwrap_or(0);
            let bytes = decimal_unscaled(&text("0.0")?, scale).ok()?;
            // AvroData writes bytes as the ISO-8859-1 string of them.
            Some(json!(bytes.iter().map(|&b| char::from(b)).collect::<String>()))
        }
        1082 => text("1970-01-01").and_then(|v| date_days(&v).ok()).map(|v| json!(v)),
        1083 => {
            let micros = time_micros(&text("00:00")?).ok()?;
            Some(json!(if t.ty == "int32" {
                micros.div_euclid(1000)
            } else {
                micros
            }))
        }
        1114 => {
            let v = text("1970-01-01")?;
            let v = if v.contains(' ') { v } else { format!("{v} 00:00:00") };
            let micros = timestamp_micros(&v, false).ok()?;
            Some(json!(if t.name == Some("io.debezium.time.Timestamp") {
                micros.div_euclid(1000)
            } else {
                micros
            }))
        }
        1184 => {
            let v = text("1970-01-01")?;
            let v = if v.contains(' ') { v } else { format!("{v} 00:00:00+00") };
            zoned_timestamp(&v, typmod).map(|v| json!(v))
        }
        _ => match lookup(oid) {
            Some(TypeInfo {
                kind: TypeKind::Enum(_),
                name,
            }) => {
                // `'ok'::mood`: a literal cast to this very enum.
                let (value, cast) = expr.rsplit_once("::")?;
                let cast = cast.rsplit_once('.').map_or(cast, |(_, n)| n).trim_matches('"');
                let quoted = value.starts_with('\'') && value.ends_with('\'') && value.len() >= 2;
                (cast == name.as_str() && quoted).then(|| json!(&value[1..value.len() - 1]))
            }
            _ => None,
        },
    }
}

/// Whether a default expression starts as a function call (`now()`,
/// `nextval('s'::regclass)`), as Debezium's pattern tells it.
fn is_function_call(expr: &str) -> bool {
    let body = expr.strip_prefix('(').unwrap_or(expr);
    let name_end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(body.len());
    name_end > 0 && body[name_end..].starts_with('(') && body.contains(')')
}

/// The value of a default: the first quoted literal (`'EUR'::bpchar`),
/// else the expression as it is; `NULL::…` is none. Debezium 3.6 ends a
/// literal at its first quote (`'it''s'` gives `it`), and so does this.
fn literal(expr: &str) -> Option<String> {
    if !expr.contains('\'') {
        return (!expr.starts_with("NULL::")).then(|| expr.to_owned());
    }
    let (_, rest) = expr.split_once('\'')?;
    let (value, _) = rest.split_once('\'')?;
    Some(value.to_owned())
}

/// Debezium's month in `MicroDuration`: 365.25 / 12 days, in seconds.
const MONTH_SECONDS: i64 = 2_629_800;

/// Encodes one non-null value of a column of Connect type `t` (declared
/// modifier `typmod`) from its Postgres text form (the replication
/// connection's settings: ISO dates, UTC, ISO-8601 intervals) as the Avro
/// datum of [`avro_schema`]`(t, false)`, the value Debezium writes.
pub fn encode_value(t: &ConnectType, typmod: i32, text: &str, out: &mut Vec<u8>) -> Result<(), ValueError> {
    let bad = || ValueError::Malformed {
        text: text.to_owned(),
        avro: "Debezium value",
    };
    match (t.ty, t.name) {
        ("int16" | "int32" | "int64", None) => put_long(out, text.parse::<i64>().map_err(|_| bad())?),
        ("float32", None) => out.extend_from_slice(&parse_float::<f32>(text)?.to_le_bytes()),
        ("float64", None) => out.extend_from_slice(&parse_float::<f64>(text)?.to_le_bytes()),
        ("boolean", None) => out.push(match text {
            "t" | "true" | "1" => 1,
            "f" | "false" | "0" => 0,
            _ => return Err(bad()),
        }),
        ("string", None) => put_str(out, text),
        ("bytes", None) => put_bytes(out, &bytea(text)?),
        ("bytes", Some("org.apache.kafka.connect.data.Decimal")) => {
            let scale = t
                .parameters
                .iter()
                .find(|(k, _)| *k == "scale")
                .and_then(|(_, v)| v.parse::<u32>().ok())
                .unwrap_or(0);
            put_bytes(out, &decimal_unscaled(&plain_decimal(text), scale)?);
        }
        ("struct", Some("io.debezium.data.VariableScaleDecimal")) => {
            let scale = text.split_once('.').map_or(0, |(_, f)| f.len()) as u32;
            put_long(out, i64::from(scale));
            put_bytes(out, &decimal_unscaled(text, scale)?);
        }
        ("int32", Some("io.debezium.time.Date")) => put_long(out, i64::from(date_days(text)?)),
        ("int32", Some("io.debezium.time.Time")) => put_long(out, time_micros(text)?.div_euclid(1000)),
        ("int64", Some("io.debezium.time.MicroTime")) => put_long(out, time_micros(text)?),
        ("int64", Some("io.debezium.time.Timestamp")) => put_long(out, timestamp_micros(text, false)?.div_euclid(1000)),
        ("int64", Some("io.debezium.time.MicroTimestamp")) => put_long(out, timestamp_micros(text, false)?),
        ("string", Some("io.debezium.time.ZonedTimestamp")) => {
            put_str(out, &zoned_timestamp(text, typmod).ok_or_else(bad)?)
        }
        ("string", Some("io.debezium.time.ZonedTime")) => put_str(out, &zoned_time(text).ok_or_else(bad)?),
        ("int64", Some("io.debezium.time.MicroDuration")) => put_long(out, duration_micros(text).ok_or_else(bad)?),
        ("bytes", Some("io.debezium.data.Bits")) => put_bytes(out, &bits(text).ok_or_else(bad)?),
        ("struct", Some("io.debezium.data.geometry.Point")) => {
            let (x, y) = point(text).ok_or_else(bad)?;
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
            // wkb: the union's second branch, then well-known binary.
            put_long(out, 1);
            let mut wkb = vec![1u8, 1, 0, 0, 0];
            wkb.extend_from_slice(&x.to_le_bytes());
            wkb.extend_from_slice(&y.to_le_bytes());
            put_bytes(out, &wkb);
            // srid: null.
            put_long(out, 0);
        }
        ("array", None) => {
            let (_, item, _) = t.fields.first().ok_or_else(bad)?;
            let ArrayNode::List(elements) = parse_array(text)? else {
                return Err(bad());
            };
            if !elements.is_empty() {
                put_long(out, elements.len() as i64);
                for e in &elements {
                    match e {
                        ArrayNode::Elem(text) => {
                            put_long(out, 1);
                            encode_value(item, typmod, text, out)?;
                        }
                        // Debezium writes an element that is itself an array
                        // (a value deeper than its column declares) as null.
                        ArrayNode::Null | ArrayNode::List(_) => put_long(out, 0),
                    }
                }
            }
            put_long(out, 0);
        }
        ("string", Some(_)) => put_str(out, text),
        _ => return Err(bad()),
    }
    Ok(())
}

/// `money`'s text (`$1,234.56`, `-$12.34`) as a plain decimal.
fn plain_decimal(text: &str) -> String {
    let negative = text.starts_with('-') || text.starts_with('(');
    let digits: String = text.chars().filter(|c| c.is_ascii_digit() || *c == '.').collect();
    if negative {
        format!("-{digits}")
    } else {
        digits
    }
}

/// `2024-01-31 13:45:00.5+00` as Debezium's ZonedTimestamp: ISO-8601 in
/// UTC with as many fraction digits as the column's precision (6 when
/// undeclared).
fn zoned_timestamp(text: &str, typmod: i32) -> Option<String> {
    let micros = timestamp_micros(text, true).ok()?;
    let precision = if typmod < 0 { 6 } else { typmod.min(6) } as usize;
    let plain = crate::calendar::timestamp_text(micros);
    let (date, time) = plain.split_once(' ')?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut frac = frac.to_owned();
    frac.extend(std::iter::repeat_n('0', 6usize.saturating_sub(frac.len())));
    let fraction = if precision == 0 {
        String::new()
    } else {
        format!(".{}", &frac[..precision])
    };
    Some(format!("{date}T{hms}{fraction}Z"))
}

/// `13:45:00+02` as Debezium's ZonedTime: the time in UTC, `Z`.
fn zoned_time(text: &str) -> Option<String> {
    let (time, offset_secs) = split_offset(text)?;
    let micros = time_micros(time)
        .ok()?
        .checked_sub(offset_secs.checked_mul(1_000_000)?)?
        .rem_euclid(86_400_000_000);
    let text = crate::calendar::time_text(micros);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    Some(format!("{text}Z"))
}

/// An ISO-8601 interval (`P1Y2M3DT4H5M6.789S`, as `IntervalStyle=iso_8601`
/// prints it) in microseconds, a month being 365.25/12 days.
fn duration_micros(text: &str) -> Option<i64> {
    let body = text.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let mut micros: i64 = 0;
    for (part, is_time) in [(date, false), (time, true)] {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == '-' {
                number.push(c);
                continue;
            }
            let seconds: i64 = match (c, is_time) {
                ('Y', false) => 12 * MONTH_SECONDS,
                ('M', false) => MONTH_SECONDS,
                ('W', false) => 7 * 86_400,
                ('D', false) => 86_400,
                ('H', true) => 3_600,
                ('M', true) => 60,
                ('S', true) => 1,
                _ => return None,
            };
            let (whole, frac) = number.split_once('.').unwrap_or((&number, ""));
            let negative = whole.starts_with('-');
            let whole: i64 = whole.parse().ok()?;
            let mut frac_micros: i64 = 0;
            if !frac.is_empty() {
                let padded: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
                frac_micros = padded.parse::<i64>().ok()?.checked_mul(seconds)?;
                if negative {
                    frac_micros = -frac_micros;
                }
            }
            // Postgres's intervals reach 178 million years; microseconds
            // in an i64 stop at 292 thousand: past that there is no value.
            micros = whole
                .checked_mul(seconds)
                .and_then(|v| v.checked_mul(1_000_000))
                .and_then(|v| v.checked_add(frac_micros))
                .and_then(|v| v.checked_add(micros))?;
            number.clear();
        }
    }
    Some(micros)
}

/// A bit string (`101`) as Debezium's `Bits`: the bits as a number (the
/// last character is bit 0), its bytes little-endian, without trailing
/// zero bytes.
fn bits(text: &str) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; text.len().div_ceil(8)];
    for (i, c) in text.bytes().rev().enumerate() {
        match c {
            b'1' => bytes[i / 8] |= 1 << (i % 8),
            b'0' => {}
            _ => return None,
        }
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    Some(bytes)
}

/// `(1.5,-2)` as (x, y).
fn point(text: &str) -> Option<(f64, f64)> {
    let (x, y) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    Some((x.parse().ok()?, y.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_on_untrusted_text_never_wraps() {
        assert_eq!(duration_micros("P1D"), Some(86_400_000_000));
        assert_eq!(duration_micros("PT-1.5S"), Some(-1_500_000));
        // 300,000 years exceed an i64 of microseconds: no value, not a wrap.
        assert_eq!(duration_micros("P300000Y"), None);
        assert_eq!(duration_micros("P200000YT9223372036854775807H"), None);
        assert_eq!(zoned_time("10:00:00+02"), Some("08:00:00Z".into()));
        assert_eq!(zoned_time("10:00:00+9999999999999999"), None);
    }

    #[test]
    fn numeric_typmods_give_precision_and_scale() {
        // numeric(38,10): ((38 << 16) | 10) + 4.
        let t = connect_type(1700, (38 << 16 | 10) + 4, &|_| None);
        assert_eq!(
            t.parameters,
            vec![
                ("scale", "10".to_string()),
                ("connect.decimal.precision", "38".to_string())
            ]
        );
        assert_eq!(
            connect_type(1700, -1, &|_| None).name,
            Some("io.debezium.data.VariableScaleDecimal")
        );
    }

    #[test]
    fn adaptive_time_precision() {
        assert_eq!(
            connect_type(1114, 3, &|_| None).name,
            Some("io.debezium.time.Timestamp")
        );
        assert_eq!(
            connect_type(1114, 0, &|_| None).name,
            Some("io.debezium.time.Timestamp")
        );
        assert_eq!(
            connect_type(1114, -1, &|_| None).name,
            Some("io.debezium.time.MicroTimestamp")
        );
        assert_eq!(connect_type(1083, 3, &|_| None).ty, "int32");
        assert_eq!(
            connect_type(1083, 4, &|_| None).name,
            Some("io.debezium.time.MicroTime")
        );
    }
}
