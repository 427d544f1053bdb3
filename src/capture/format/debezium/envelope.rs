//! One table's topic in the Debezium format: its name, its key and
//! envelope schemas, and its records, as Debezium 3.6's PostgreSQL
//! connector writes them through Confluent's AvroConverter (checked record
//! for record against Debezium in `tests/debezium.rs`).
//!
//! What differs from walhouse's own envelope:
//! - values carry Debezium's semantic types ([`super::connect_type`]);
//! - a column is optional only when it may be NULL, and a NOT NULL column
//!   Postgres did not send (a delete's old row under the default replica
//!   identity) holds Debezium's fallback value (0, "", …);
//! - a TOAST value an update left unchanged is taken from the old row when
//!   the replica identity is FULL, else it is the placeholder;
//! - a table without a primary key is keyed by its first unique index (by
//!   index name, plain columns only), as Debezium's JDBC metadata does;
//! - names follow the topic: `<topic>.Key`, `<topic>.Value`,
//!   `<topic>.Envelope`.

use serde_json::Value as Json;

use super::replaced::{replacements, Why};
use super::{column_default, connect_type, encode_value, envelope_schema, key_record, value_record, ConnectType};
use crate::avro::value::{put_bytes, put_long, put_str};
use crate::capture::change::{ChangeEvent, SnapshotMark};
use crate::capture::format::walhouse::{unique_field, Op};
use crate::postgres::catalog::{ColumnInfo, TypeInfo, TypeKind};
use crate::postgres::pgoutput::{Relation, Tuple, TupleValue};
use crate::postgres::Lsn;

/// Debezium's connector name in `source.connector`.
const CONNECTOR: &str = "postgresql";

/// What Debezium writes for an unchanged TOAST value, by column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Toast {
    /// The placeholder as a string (text, varchar, json, xml, …).
    Text,
    /// The placeholder's bytes (bytea).
    Bytes,
    /// A one-element array of the placeholder (text[], varchar[], json[]).
    TextArray,
    /// A one-element array of the placeholder's bytes (bytea[]).
    BytesArray,
    /// The placeholder's bytes as numbers (int[], date[], bigint[]).
    NumberArray,
    /// `{"<placeholder>":"<placeholder>"}` (hstore as JSON).
    Hstore,
    /// Nothing Debezium defines: null, or the fallback if NOT NULL.
    None,
}

#[derive(Clone, Debug, PartialEq)]
struct Column {
    name: String,
    field: String,
    ty: ConnectType,
    typmod: i32,
    optional: bool,
    toast: Toast,
}

impl Column {
    /// An optional column's union is `[null, type]`, or `[type, null]`
    /// when it has a default (a union's first branch types its default).
    fn put_value_branch(&self, out: &mut Vec<u8>) {
        if self.optional {
            put_long(out, if self.ty.default.is_some() { 0 } else { 1 });
        }
    }

    /// What Kafka Connect writes for a missing or NULL value: the column's
    /// default when it has one (a Connect struct reads a null field as its
    /// schema default, and the AvroConverter writes that, even for a
    /// nullable column), else null, else for a NOT NULL column Debezium's
    /// fallback value.
    fn put_null(&self, out: &mut Vec<u8>) {
        if let Some(d) = &self.ty.default {
            let mark = out.len();
            self.put_value_branch(out);
            if put_default(&self.ty, d, out) {
                return;
            }
            out.truncate(mark);
        }
        if self.optional {
            put_long(out, if self.ty.default.is_some() { 1 } else { 0 });
        } else {
            fallback(&self.ty, out);
        }
    }
}

/// Where a record sits, beside what its change says.
#[derive(Clone, Copy, Debug)]
pub struct RecordContext<'a> {
    /// The topic prefix (`source.name`).
    pub name: &'a str,
    pub db: &'a str,
    pub version: &'a str,
    /// End LSN of the last transaction committed before this one in this
    /// run (`source.sequence`'s first element).
    pub last_commit: Option<Lsn>,
    /// Wall-clock time of writing, in ns since the epoch.
    pub now_ns: i64,
    /// The `transaction` block: total order and order within the table.
    pub transaction: Option<(u64, u64)>,
}

/// The schemas and encoders of one table's topic in the Debezium format.
#[derive(Clone, Debug)]
pub struct DebeziumTable {
    pub topic: String,
    pub schema: String,
    pub table: String,
    columns: Vec<Column>,
    pub key_columns: Vec<usize>,
    pub key_schema: Option<Json>,
    pub value_schema: Json,
    placeholder: String,
}

/// Debezium's topic name: invalid characters become `_`, at most 249.
pub fn topic_name(prefix: &str, schema: &str, table: &str) -> String {
    crate::topics::name(crate::topics::Rule::Debezium, prefix, schema, table)
}

/// An Avro name for `s` as `*.name.adjustment.mode=avro` makes it: invalid
/// characters become `_`, and a leading digit gets one in front.
fn avro_adjusted(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn toast_kind<'a>(oid: u32, ty: &ConnectType, lookup: &impl Fn(u32) -> Option<&'a TypeInfo>) -> Toast {
    let array_of = |element: u32| match element {
        25 | 1043 | 1042 | 114 | 3802 => Toast::TextArray,
        17 => Toast::BytesArray,
        23 | 1082 | 20 => Toast::NumberArray,
        _ => Toast::None,
    };
    match lookup(oid) {
        Some(TypeInfo {
            kind: TypeKind::Array { element },
            ..
        }) => array_of(*element),
        Some(TypeInfo { name, .. }) if name == "hstore" => Toast::Hstore,
        _ => match (ty.ty, ty.name) {
            ("string", _) => Toast::Text,
            ("bytes", None) => Toast::Bytes,
            _ => Toast::None,
        },
    }
}

impl DebeziumTable {
    pub fn new<'a>(
        prefix: &str,
        relation: &Relation,
        column_infos: &std::collections::HashMap<String, ColumnInfo>,
        placeholder: &str,
        lookup: &impl Fn(u32) -> Option<&'a TypeInfo>,
    ) -> DebeziumTable {
        let mut used = std::collections::HashSet::new();
        let columns: Vec<Column> = relation
            .columns
            .iter()
            .map(|c| {
                let info = column_infos.get(&c.name);
                let mut ty = connect_type(c.type_oid, c.type_modifier, lookup);
                ty.default = info
                    .and_then(|i| i.default_expr.as_deref())
                    .and_then(|e| column_default(c.type_oid, c.type_modifier, &ty, e, lookup));
                let field = unique_field(&mut used, avro_adjusted(&c.name));
                Column {
                    name: c.name.clone(),
                    field,
                    toast: toast_kind(c.type_oid, &ty, lookup),
                    ty,
                    typmod: c.type_modifier,
                    optional: !info.is_some_and(|i| i.not_null),
                }
            })
            .collect();
        let in_key = |pick: fn(&ColumnInfo) -> bool| -> Vec<usize> {
            relation
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| column_infos.get(&c.name).is_some_and(pick))
                .map(|(i, _)| i)
                .collect()
        };
        let mut key_columns = in_key(|i| i.in_primary_key);
        if key_columns.is_empty() {
            key_columns = in_key(|i| i.in_unique_key);
        }
        let topic = topic_name(prefix, &relation.namespace, &relation.name);
        let record_prefix: String = topic.split('.').map(avro_adjusted).collect::<Vec<_>>().join(".");
        let key_schema = (!key_columns.is_empty()).then(|| {
            let fields: Vec<(String, ConnectType, bool)> = key_columns
                .iter()
                .map(|&i| (columns[i].field.clone(), columns[i].ty.clone(), columns[i].optional))
                .collect();
            key_record(&record_prefix, &fields)
        });
        let value_fields: Vec<(String, ConnectType, bool)> = columns
            .iter()
            .map(|c| (c.field.clone(), c.ty.clone(), c.optional))
            .collect();
        let value = value_record(&format!("{record_prefix}.Value"), &value_fields);
        DebeziumTable {
            value_schema: envelope_schema(&record_prefix, &value),
            topic,
            schema: relation.namespace.clone(),
            table: relation.name.clone(),
            columns,
            key_columns,
            key_schema,
            placeholder: placeholder.to_owned(),
        }
    }

    /// Columns added, dropped or retyped between `self` and `newer`.
    pub fn changed_columns(&self, newer: &DebeziumTable) -> Vec<String> {
        let mut out = Vec::new();
        for c in &newer.columns {
            match self.columns.iter().find(|o| o.name == c.name) {
                Some(o) if o.ty == c.ty && o.optional == c.optional => {}
                Some(_) => out.push(format!("{} (retyped)", c.name)),
                None => out.push(format!("{} (added)", c.name)),
            }
        }
        for o in &self.columns {
            if !newer.columns.iter().any(|c| c.name == o.name) {
                out.push(format!("{} (dropped)", o.name));
            }
        }
        out
    }

    /// Whether the key values of two tuples differ.
    pub fn key_changed(&self, old: &Tuple, new: &Tuple) -> bool {
        self.key_columns.iter().any(|&i| match (old.get(i), new.get(i)) {
            (Some(TupleValue::Text(a)), Some(TupleValue::Text(b))) => a != b,
            (Some(TupleValue::Null), Some(TupleValue::Text(_)))
            | (Some(TupleValue::Text(_)), Some(TupleValue::Null)) => true,
            _ => false,
        })
    }

    /// The key record of a row; false for a table without a key.
    pub fn encode_key(&self, tuple: &Tuple, out: &mut Vec<u8>) -> Result<bool, String> {
        if self.key_columns.is_empty() {
            return Ok(false);
        }
        for &i in &self.key_columns {
            let c = &self.columns[i];
            match tuple.get(i) {
                Some(TupleValue::Text(t)) => {
                    let text = std::str::from_utf8(t).map_err(|_| format!("key column {}: not UTF-8", c.name))?;
                    c.put_value_branch(out);
                    encode_value(&c.ty, c.typmod, text, out).map_err(|e| format!("key column {}: {e}", c.name))?;
                }
                Some(TupleValue::Null) if c.optional => c.put_null(out),
                _ => return Err(format!("key column {}: no value (NULL or not sent)", c.name)),
            }
        }
        Ok(true)
    }

    /// The envelope of `op` (a change of this table) as Debezium writes it.
    pub fn encode_value(&self, event: &ChangeEvent<'_>, op: Op<'_>, ctx: &RecordContext<'_>, out: &mut Vec<u8>) {
        let (before, after, old) = match op {
            Op::Create(t) | Op::Read(t) => (None, Some(t), None),
            Op::Update { before, after } => (before, Some(after), before),
            Op::Delete(t) => (Some(t), None, None),
            Op::Truncate => (None, None, None),
        };
        for row in [before, after] {
            match row {
                None => put_long(out, 0),
                Some(tuple) => {
                    put_long(out, 1);
                    self.encode_row(tuple, old, out);
                }
            }
        }
        self.encode_source(event, ctx, out);
        match (ctx.transaction, event.tx) {
            (Some((total, in_table)), Some(tx)) => {
                put_long(out, 1);
                put_str(out, &format!("{}:{}", tx.xid, event.lsn.0));
                put_long(out, total as i64);
                put_long(out, in_table as i64);
            }
            _ => put_long(out, 0),
        }
        put_str(out, op.code());
        for v in [
            ctx.now_ns.div_euclid(1_000_000),
            ctx.now_ns.div_euclid(1_000),
            ctx.now_ns,
        ] {
            put_long(out, 1);
            put_long(out, v);
        }
    }

    fn encode_row(&self, tuple: &Tuple, old: Option<&Tuple>, out: &mut Vec<u8>) {
        for (i, c) in self.columns.iter().enumerate() {
            let value = match tuple.get(i) {
                Some(TupleValue::UnchangedToast) => match old.and_then(|o| o.get(i)) {
                    Some(v @ TupleValue::Text(_)) => Some(v),
                    _ => {
                        self.put_placeholder(c, out);
                        continue;
                    }
                },
                v => v,
            };
            let text = match value {
                Some(TupleValue::Text(t)) => match std::str::from_utf8(t) {
                    Ok(text) => Some(text),
                    Err(_) => {
                        self.replaced(c, Why::NotUtf8);
                        None
                    }
                },
                _ => None,
            };
            let start = out.len();
            if let Some(text) = text {
                c.put_value_branch(out);
                if encode_value(&c.ty, c.typmod, text, out).is_ok() {
                    continue;
                }
                // What Debezium's converters cannot represent (NaN in a
                // decimal, infinite dates) it writes as null.
                out.truncate(start);
                self.replaced(c, Why::NotRepresentable);
            }
            c.put_null(out);
        }
    }

    fn put_placeholder(&self, c: &Column, out: &mut Vec<u8>) {
        let p = self.placeholder.as_str();
        let branch = |out: &mut Vec<u8>| c.put_value_branch(out);
        match c.toast {
            Toast::Text => {
                branch(out);
                put_str(out, p);
            }
            Toast::Bytes => {
                branch(out);
                put_bytes(out, p.as_bytes());
            }
            Toast::TextArray | Toast::BytesArray => {
                branch(out);
                put_long(out, 1);
                // Array items are optional: the value branch.
                put_long(out, 1);
                if c.toast == Toast::TextArray {
                    put_str(out, p);
                } else {
                    put_bytes(out, p.as_bytes());
                }
                put_long(out, 0);
            }
            Toast::NumberArray => {
                branch(out);
                put_long(out, p.len() as i64);
                for b in p.bytes() {
                    put_long(out, 1);
                    put_long(out, i64::from(b));
                }
                put_long(out, 0);
            }
            Toast::Hstore => {
                branch(out);
                put_str(out, &serde_json::json!({ p: p }).to_string());
            }
            Toast::None => {
                self.replaced(c, Why::UnchangedToast);
                c.put_null(out);
            }
        }
    }

    fn replaced(&self, c: &Column, why: Why) {
        replacements().count(&format!("{}.{}", self.schema, self.table), &c.name, why);
    }

    fn encode_source(&self, event: &ChangeEvent<'_>, ctx: &RecordContext<'_>, out: &mut Vec<u8>) {
        put_str(out, ctx.version);
        put_str(out, CONNECTOR);
        put_str(out, ctx.name);
        let commit_us = event
            .tx
            .map_or(ctx.now_ns.div_euclid(1_000), |t| t.commit_time.unix_micros());
        put_long(out, commit_us.div_euclid(1_000));
        // snapshot: the union's first branch is the enum string.
        put_long(out, 0);
        put_str(out, SnapshotMark::as_str(event.snapshot));
        put_str(out, ctx.db);
        let last = ctx
            .last_commit
            .filter(|_| event.snapshot.is_none())
            .map_or("null".to_string(), |l| format!("\"{}\"", l.0));
        opt_str(out, Some(&format!("[{last},\"{}\"]", event.lsn.0)));
        opt_long(out, Some(commit_us));
        opt_long(out, Some(commit_us.saturating_mul(1_000)));
        put_str(out, &self.schema);
        put_str(out, &self.table);
        let incremental = event.snapshot == Some(SnapshotMark::Incremental);
        opt_long(out, event.tx.filter(|_| !incremental).map(|t| i64::from(t.xid)));
        opt_long(out, (!incremental).then_some(event.lsn.0 as i64));
        // xmin, origin, origin_lsn.
        opt_long(out, None);
        opt_str(out, None);
        opt_long(out, None);
    }
}

/// Writes a default (AvroData's JSON of it) as the Avro datum of `t`;
/// false when it is no value of that type.
fn put_default(t: &ConnectType, d: &Json, out: &mut Vec<u8>) -> bool {
    match (t.ty, d) {
        ("int16" | "int32" | "int64", Json::Number(n)) => n.as_i64().map(|v| put_long(out, v)).is_some(),
        ("boolean", Json::Bool(b)) => {
            out.push(u8::from(*b));
            true
        }
        ("float32", Json::Number(n)) => n
            .as_f64()
            .map(|v| out.extend_from_slice(&(v as f32).to_le_bytes()))
            .is_some(),
        ("float64", Json::Number(n)) => n.as_f64().map(|v| out.extend_from_slice(&v.to_le_bytes())).is_some(),
        ("string", Json::String(v)) => {
            put_str(out, v);
            true
        }
        // AvroData's bytes: one char per byte.
        ("bytes", Json::String(v)) => {
            let bytes: Option<Vec<u8>> = v.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
            bytes.map(|b| put_bytes(out, &b)).is_some()
        }
        _ => false,
    }
}

/// The value Debezium gives a NOT NULL column it has no value for.
fn fallback(t: &ConnectType, out: &mut Vec<u8>) {
    match (t.ty, t.name) {
        ("int16" | "int32" | "int64", _) | ("boolean", _) => put_long(out, 0),
        ("float32", _) => out.extend_from_slice(&0f32.to_le_bytes()),
        ("float64", _) => out.extend_from_slice(&0f64.to_le_bytes()),
        ("string", Some("io.debezium.time.ZonedTimestamp")) => put_str(out, "1970-01-01T00:00:00Z"),
        ("string", Some("io.debezium.time.ZonedTime")) => put_str(out, "00:00:00Z"),
        ("string", _) => put_str(out, ""),
        ("bytes", Some("org.apache.kafka.connect.data.Decimal")) => put_bytes(out, &[0]),
        ("bytes", _) => put_bytes(out, &[]),
        ("struct", _) => {
            for (_, f, optional) in &t.fields {
                if *optional {
                    put_long(out, 0);
                } else {
                    fallback(f, out);
                }
            }
        }
        _ => put_long(out, 0),
    }
}

fn opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => {
            put_long(out, 1);
            put_long(out, v);
        }
        None => put_long(out, 0),
    }
}

fn opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => {
            put_long(out, 1);
            put_str(out, v);
        }
        None => put_long(out, 0),
    }
}

/// Debezium's format behind the format-blind encoder.
impl crate::capture::format::TableFormat for DebeziumTable {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn key_schema(&self) -> Option<&Json> {
        self.key_schema.as_ref()
    }

    fn value_schema(&self) -> &Json {
        &self.value_schema
    }

    fn changed_columns(&self, newer: &dyn crate::capture::format::TableFormat) -> Vec<String> {
        newer
            .as_any()
            .downcast_ref::<DebeziumTable>()
            .map(|n| DebeziumTable::changed_columns(self, n))
            .unwrap_or_default()
    }

    fn key_changed(&self, old: &Tuple, new: &Tuple) -> bool {
        DebeziumTable::key_changed(self, old, new)
    }

    fn encode_key(&self, tuple: &Tuple, out: &mut Vec<u8>) -> Result<bool, String> {
        DebeziumTable::encode_key(self, tuple, out)
    }

    fn encode_value(
        &self,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        cx: &crate::capture::format::RecordContext<'_>,
        out: &mut Vec<u8>,
    ) {
        DebeziumTable::encode_value(self, event, op, &context(cx), out);
    }

    fn encode_read(
        &self,
        event: &ChangeEvent<'_>,
        new: &Tuple,
        cx: &crate::capture::format::RecordContext<'_>,
        out: &mut crate::capture::destination::EncodedRows,
    ) {
        DebeziumTable::encode_value(self, event, Op::Read(new), &context(cx), &mut out.buf);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// This format's context of a record.
fn context<'a>(cx: &crate::capture::format::RecordContext<'a>) -> RecordContext<'a> {
    RecordContext {
        name: cx.name,
        db: cx.db,
        version: env!("CARGO_PKG_VERSION"),
        last_commit: cx.last_commit,
        now_ns: cx.now_ms.saturating_mul(1_000_000),
        transaction: cx.transaction,
    }
}
