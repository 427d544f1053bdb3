//! The Kafka key and value of a change, in Debezium's envelope shape.
//!
//! Per table: a topic `<prefix>.<schema>.<table>`, a key record of the
//! primary-key columns (subject `<topic>-key`) and an envelope (subject
//! `<topic>-value`) with `before`, `after`, `source`, `op`, `ts_ms`, plus
//! `unchanged_toast` (columns Postgres did not send: not NULL) and
//! `text_values` (exact text of values the column's Avro type cannot
//! hold, such as `NaN` in a decimal or `infinity` in a timestamp; the typed
//! field is null then). Every row field is a nullable union with default
//! null, so adding or dropping a column stays backward compatible.
//!
//! Names are made valid Avro names and topic names: characters outside the
//! allowed set become `_`, and a changed name gets a short hash of the
//! original so two odd names cannot collide. The original column name is
//! kept in the field's `walhouse.column` property.

use serde_json::{json, Value as Json};

use crate::avro::types::{ColumnType, NumericMode};
use crate::avro::value::{encode_text, put_long, put_str, ValueError};
use crate::capture::change::{ChangeEvent, ChangeKind, TxInfo};
use crate::postgres::catalog::{ColumnInfo, TypeInfo};
use crate::postgres::pgoutput::{OldTuple, Relation, ReplicaIdentity, Tuple, TupleValue};
use crate::topics::short_hash;

pub const CONNECTOR: &str = "walhouse";

/// A valid Avro name (`[A-Za-z_][A-Za-z0-9_]*`) for `s`.
pub fn avro_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if out != s {
        out = format!("{out}_{}", short_hash(s));
    }
    out
}

/// `base`, or `base_<n>` with the first `n` from 2 not in `used` yet (the
/// last resort that keeps two columns' field names apart); marked used.
pub fn unique_field(used: &mut std::collections::HashSet<String>, base: String) -> String {
    let mut field = base.clone();
    let mut n = 1;
    while !used.insert(field.clone()) {
        n += 1;
        field = format!("{base}_{n}");
    }
    field
}

/// walhouse's topic name of a table.
pub fn topic_name(prefix: &str, schema: &str, table: &str) -> String {
    crate::topics::name(crate::topics::Rule::Walhouse, prefix, schema, table)
}

/// One column as the envelope encodes it.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeColumn {
    pub name: String,
    pub field: String,
    pub ty: ColumnType,
    pub pg_type: String,
}

/// What the envelope says about where a change came from.
#[derive(Clone, Debug)]
pub struct SourceInfo<'a> {
    pub version: &'a str,
    pub name: &'a str,
    pub db: &'a str,
    /// The database system identifier (`IDENTIFY_SYSTEM`), which scopes
    /// the positions: LSNs of two systems do not compare.
    pub system_id: Option<&'a str>,
}

/// The schemas and encoders of one table's topic.
#[derive(Clone, Debug)]
pub struct TableEnvelope {
    pub topic: String,
    pub schema: String,
    pub table: String,
    pub columns: Vec<EnvelopeColumn>,
    /// Indexes into `columns` of the key columns; empty: no key.
    pub key_columns: Vec<usize>,
    pub key_schema: Option<Json>,
    pub value_schema: Json,
}

/// Why a change could not be encoded (only keys can fail: values fall back
/// to `text_values`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("key column {column} of {table}: {reason}")]
    Key {
        table: String,
        column: String,
        reason: String,
    },
}

impl TableEnvelope {
    pub fn new<'a>(
        prefix: &str,
        relation: &Relation,
        column_infos: &std::collections::HashMap<String, ColumnInfo>,
        mode: NumericMode,
        lookup: &impl Fn(u32) -> Option<&'a TypeInfo>,
    ) -> TableEnvelope {
        let mut used = std::collections::HashSet::new();
        let columns: Vec<EnvelopeColumn> = relation
            .columns
            .iter()
            .map(|c| {
                let info = column_infos.get(&c.name);
                let ty = crate::avro::types::column_type(
                    c.type_oid,
                    c.type_modifier,
                    info.map_or(0, |i| i.array_dims),
                    mode,
                    lookup,
                );
                // Distinct columns can sanitise alike only via the hash.
                let field = unique_field(&mut used, avro_name(&c.name));
                EnvelopeColumn {
                    name: c.name.clone(),
                    field,
                    pg_type: info
                        .map(|i| i.pg_type.clone())
                        .or_else(|| lookup(c.type_oid).map(|t| t.name.clone()))
                        .unwrap_or_else(|| format!("oid {}", c.type_oid)),
                    ty,
                }
            })
            .collect();
        // The primary key from the catalog; else the replica identity
        // index's columns. REPLICA IDENTITY FULL marks every column as key
        // in the Relation message, which is no Kafka key.
        let pk: Vec<usize> = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| column_infos.get(&c.name).is_some_and(|i| i.in_primary_key))
            .map(|(i, _)| i)
            .collect();
        let key_columns = if !pk.is_empty() {
            pk
        } else if relation.replica_identity == ReplicaIdentity::Index {
            relation.identity_positions()
        } else {
            Vec::new()
        };
        let namespace = format!(
            "{}.{}.{}",
            prefix.split('.').map(avro_name).collect::<Vec<_>>().join("."),
            avro_name(&relation.namespace),
            avro_name(&relation.name)
        );
        let field_json = |c: &EnvelopeColumn, nullable: bool| {
            let mut f = if nullable {
                json!({"name": c.field, "type": ["null", c.ty.schema()], "default": null})
            } else {
                json!({"name": c.field, "type": c.ty.schema()})
            };
            f["walhouse.pg_type"] = json!(c.pg_type);
            if c.field != c.name {
                f["walhouse.column"] = json!(c.name);
            }
            f
        };
        let key_schema = (!key_columns.is_empty()).then(|| {
            json!({
                "type": "record", "name": "Key", "namespace": namespace,
                "fields": key_columns.iter().map(|&i| field_json(&columns[i], false)).collect::<Vec<_>>(),
            })
        });
        let row = json!({
            "type": "record", "name": "Value", "namespace": namespace,
            "fields": columns.iter().map(|c| field_json(c, true)).collect::<Vec<_>>(),
        });
        let value_schema = json!({
            "type": "record", "name": "Envelope", "namespace": namespace,
            "connect.name": format!("{namespace}.Envelope"),
            "fields": [
                {"name": "before", "type": ["null", row], "default": null},
                {"name": "after", "type": ["null", "Value"], "default": null},
                {"name": "source", "type": source_schema()},
                {"name": "op", "type": "string"},
                {"name": "ts_ms", "type": ["null", "long"], "default": null},
                {"name": "unchanged_toast", "type": {"type": "array", "items": "string"}, "default": []},
                {"name": "text_values", "type": {"type": "map", "values": "string"}, "default": {}},
            ],
        });
        TableEnvelope {
            topic: topic_name(prefix, &relation.namespace, &relation.name),
            schema: relation.namespace.clone(),
            table: relation.name.clone(),
            columns,
            key_columns,
            key_schema,
            value_schema,
        }
    }

    /// Columns whose Avro type differs between `self` and `newer` (added,
    /// dropped, or retyped), for messages about schema changes.
    pub fn changed_columns(&self, newer: &TableEnvelope) -> Vec<String> {
        let mut out = Vec::new();
        for c in &newer.columns {
            match self.columns.iter().find(|o| o.name == c.name) {
                Some(o) if o.ty == c.ty => {}
                Some(o) => out.push(format!("{} ({} -> {})", c.name, o.pg_type, c.pg_type)),
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

    /// The key record of a row, or `None` for a table without a key.
    pub fn encode_key(&self, tuple: &Tuple, out: &mut Vec<u8>) -> Result<bool, WriteError> {
        if self.key_columns.is_empty() {
            return Ok(false);
        }
        for &i in &self.key_columns {
            let c = &self.columns[i];
            let fail = |reason: String| WriteError::Key {
                table: format!("{}.{}", self.schema, self.table),
                column: c.name.clone(),
                reason,
            };
            match tuple.get(i) {
                Some(TupleValue::Text(t)) => {
                    let text = std::str::from_utf8(t).map_err(|_| fail("not UTF-8".into()))?;
                    encode_text(&c.ty, text, out).map_err(|e| fail(e.to_string()))?;
                }
                Some(TupleValue::Null) => return Err(fail("NULL in a key column".into())),
                Some(TupleValue::UnchangedToast) => {
                    return Err(fail(
                        "unchanged TOAST value in a key column (no old key was sent)".into(),
                    ))
                }
                Some(TupleValue::Binary(_)) => return Err(fail("binary value".into())),
                None => return Err(fail("missing from the tuple".into())),
            }
        }
        Ok(true)
    }

    /// Whether the key values of two tuples differ (a primary-key update).
    pub fn key_changed(&self, old: &Tuple, new: &Tuple) -> bool {
        self.key_columns.iter().any(|&i| match (old.get(i), new.get(i)) {
            (Some(TupleValue::Text(a)), Some(TupleValue::Text(b))) => a != b,
            _ => false,
        })
    }

    /// Encodes the envelope of `event` (an insert, update, delete or
    /// truncate of this table) as `op`.
    pub fn encode_value(
        &self,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        source: &SourceInfo<'_>,
        now_ms: i64,
        out: &mut Vec<u8>,
    ) {
        let extras = self.encode_rows(op, out);
        self.encode_source_head(event, source, now_ms, out);
        self.encode_tail(event, op, now_ms, &extras, out);
    }

    /// `before` and `after`; returns the columns left out as unchanged
    /// TOAST and the values sent as text.
    fn encode_rows<'s>(&'s self, op: Op<'_>, out: &mut Vec<u8>) -> ValueExtras<'s> {
        let mut unchanged = Vec::new();
        let mut text_values: Vec<(&str, String)> = Vec::new();
        let mut row = |tuple: Option<&Tuple>, out: &mut Vec<u8>, collect_toast: bool| match tuple {
            None => put_long(out, 0),
            Some(tuple) => {
                put_long(out, 1);
                for (c, v) in self.columns.iter().zip(tuple) {
                    match v {
                        TupleValue::Null => put_long(out, 0),
                        TupleValue::UnchangedToast => {
                            put_long(out, 0);
                            if collect_toast {
                                unchanged.push(c.name.as_str());
                            }
                        }
                        TupleValue::Text(t) => {
                            let mark = out.len();
                            put_long(out, 1);
                            // from_utf8 checks ASCII a word at a time; the
                            // lossy form only for what is not UTF-8.
                            let text = match std::str::from_utf8(t) {
                                Ok(s) => std::borrow::Cow::Borrowed(s),
                                Err(_) => String::from_utf8_lossy(t),
                            };
                            if let Err(e) = encode_text(&c.ty, &text, out) {
                                out.truncate(mark);
                                put_long(out, 0);
                                if let ValueError::Malformed { .. } = e {
                                    tracing::warn!(table = %self.table, column = %c.name, "{e}; sent as text_values");
                                }
                                if collect_toast {
                                    text_values.push((c.name.as_str(), text.into_owned()));
                                }
                            }
                        }
                        TupleValue::Binary(b) => {
                            put_long(out, 0);
                            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                            text_values.push((c.name.as_str(), format!("\\x{hex}")));
                        }
                    }
                }
            }
        };
        let (before, after) = op.tuples();
        row(before, out, false);
        row(after, out, true);
        ValueExtras { unchanged, text_values }
    }

    /// The `source` fields before `tx_ordinal`: the same for every change
    /// of one transaction (every row of a snapshot), so batches of snapshot
    /// rows encode them once ([`Self::encode_value_with_head`]).
    pub fn encode_source_head(&self, event: &ChangeEvent<'_>, source: &SourceInfo<'_>, now_ms: i64, out: &mut Vec<u8>) {
        put_str(out, source.version);
        put_str(out, CONNECTOR);
        put_str(out, source.name);
        let tx: Option<&TxInfo> = event.tx;
        put_long(out, tx.map_or(now_ms, |t| t.commit_time.unix_micros().div_euclid(1000)));
        put_str(out, crate::capture::change::SnapshotMark::as_str(event.snapshot));
        put_str(out, source.db);
        match source.system_id {
            Some(id) => {
                put_long(out, 1);
                put_str(out, id);
            }
            None => put_long(out, 0),
        }
        put_str(out, &self.schema);
        put_str(out, &self.table);
        opt_long(out, tx.map(|t| i64::from(t.xid)));
        opt_long(out, Some(event.lsn.0 as i64));
        opt_long(out, tx.map(|t| t.commit_lsn.0 as i64));
    }

    /// As [`Self::encode_value`], with the `source` head encoded before by
    /// [`Self::encode_source_head`] for an event of the same transaction,
    /// LSN and snapshot mark (a snapshot's rows share all three).
    pub fn encode_value_with_head(
        &self,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        head: &[u8],
        now_ms: i64,
        out: &mut Vec<u8>,
    ) {
        let extras = self.encode_rows(op, out);
        out.extend_from_slice(head);
        self.encode_tail(event, op, now_ms, &extras, out);
    }

    /// `source` from `tx_ordinal` on, and the envelope's last fields.
    fn encode_tail(
        &self,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        now_ms: i64,
        extras: &ValueExtras<'_>,
        out: &mut Vec<u8>,
    ) {
        let (unchanged, text_values) = (&extras.unchanged, &extras.text_values);
        put_long(out, record_ordinal(event, op) as i64);
        put_str(out, op.code());
        opt_long(out, Some(now_ms));
        if !unchanged.is_empty() {
            put_long(out, unchanged.len() as i64);
            for name in unchanged {
                put_str(out, name);
            }
        }
        put_long(out, 0);
        if !text_values.is_empty() {
            put_long(out, text_values.len() as i64);
            for (k, v) in text_values {
                put_str(out, k);
                put_str(out, v);
            }
        }
        put_long(out, 0);
    }
}

/// `source.tx_ordinal`: the record's place in its transaction. Each change
/// takes two, so a key change's second record (the create of the new key)
/// has one of its own between its delete and the next change: with
/// `commit_lsn`, no two records share a position.
pub fn record_ordinal(event: &ChangeEvent<'_>, op: Op<'_>) -> u64 {
    let second = matches!(event.kind, ChangeKind::Update { .. }) && matches!(op, Op::Create(_));
    event.tx_ordinal.saturating_mul(2) + u64::from(second)
}

/// walhouse's format behind the format-blind encoder.
impl super::TableFormat for TableEnvelope {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn key_schema(&self) -> Option<&Json> {
        self.key_schema.as_ref()
    }

    fn value_schema(&self) -> &Json {
        &self.value_schema
    }

    fn changed_columns(&self, newer: &dyn super::TableFormat) -> Vec<String> {
        newer
            .as_any()
            .downcast_ref::<TableEnvelope>()
            .map(|n| TableEnvelope::changed_columns(self, n))
            .unwrap_or_default()
    }

    fn key_changed(&self, old: &Tuple, new: &Tuple) -> bool {
        TableEnvelope::key_changed(self, old, new)
    }

    fn encode_key(&self, tuple: &Tuple, out: &mut Vec<u8>) -> Result<bool, String> {
        TableEnvelope::encode_key(self, tuple, out).map_err(|e| e.to_string())
    }

    fn encode_value(&self, event: &ChangeEvent<'_>, op: Op<'_>, cx: &super::RecordContext<'_>, out: &mut Vec<u8>) {
        TableEnvelope::encode_value(self, event, op, &source_info(cx), cx.now_ms, out);
    }

    fn encode_read(
        &self,
        event: &ChangeEvent<'_>,
        new: &Tuple,
        cx: &super::RecordContext<'_>,
        out: &mut crate::capture::destination::EncodedRows,
    ) {
        // The rows of one snapshot transaction share their `source` head:
        // encoded once, copied into each.
        match event.tx {
            Some(tx) => {
                let this = Some((event.lsn, *tx, event.snapshot));
                if out.shared_for != this {
                    out.shared.clear();
                    self.encode_source_head(event, &source_info(cx), cx.now_ms, &mut out.shared);
                    out.shared_for = this;
                }
                self.encode_value_with_head(event, Op::Read(new), &out.shared, cx.now_ms, &mut out.buf);
            }
            None => TableEnvelope::encode_value(self, event, Op::Read(new), &source_info(cx), cx.now_ms, &mut out.buf),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The `source` block's fields, from a record's context.
fn source_info<'a>(cx: &super::RecordContext<'a>) -> SourceInfo<'a> {
    SourceInfo {
        version: env!("CARGO_PKG_VERSION"),
        name: cx.name,
        db: cx.db,
        system_id: cx.system_id,
    }
}

/// An Avro `["null", "long"]` union value.
fn opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => {
            put_long(out, 1);
            put_long(out, v);
        }
        None => put_long(out, 0),
    }
}

/// What a row carries beside its Avro values.
struct ValueExtras<'s> {
    unchanged: Vec<&'s str>,
    text_values: Vec<(&'s str, String)>,
}

/// The envelope's `op` with the tuples it carries.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    Create(&'a Tuple),
    /// A row of the initial snapshot.
    Read(&'a Tuple),
    Update {
        before: Option<&'a Tuple>,
        after: &'a Tuple,
    },
    Delete(&'a Tuple),
    Truncate,
}

impl<'a> Op<'a> {
    pub fn code(&self) -> &'static str {
        match self {
            Op::Create(_) => "c",
            Op::Read(_) => "r",
            Op::Update { .. } => "u",
            Op::Delete(_) => "d",
            Op::Truncate => "t",
        }
    }

    fn tuples(&self) -> (Option<&'a Tuple>, Option<&'a Tuple>) {
        match *self {
            Op::Create(t) | Op::Read(t) => (None, Some(t)),
            Op::Update { before, after } => (before, Some(after)),
            Op::Delete(t) => (Some(t), None),
            Op::Truncate => (None, None),
        }
    }

    /// The ops an event becomes: a primary-key update is a delete of the
    /// old key and a create of the new one, as Debezium does, so compacted
    /// topics keep no stale key.
    pub fn of(event: &'a ChangeEvent<'a>, key_changed: impl Fn(&Tuple, &Tuple) -> bool) -> Vec<Op<'a>> {
        match &event.kind {
            ChangeKind::Insert { new, .. } if event.snapshot.is_some() => vec![Op::Read(new)],
            ChangeKind::Insert { new, .. } => vec![Op::Create(new)],
            ChangeKind::Update { old, new, .. } => {
                let before = old.map(|o| match o {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                });
                match before {
                    Some(b) if key_changed(b, new) => vec![Op::Delete(b), Op::Create(new)],
                    _ => vec![Op::Update { before, after: new }],
                }
            }
            ChangeKind::Delete { old, .. } => {
                let (OldTuple::Key(t) | OldTuple::Full(t)) = old;
                vec![Op::Delete(t)]
            }
            ChangeKind::Truncate { .. } => vec![Op::Truncate],
            ChangeKind::Message(_) => Vec::new(),
        }
    }
}

/// Key and value schemas of the transaction-boundary topic (Debezium's shape).
pub fn transaction_schemas() -> (Json, Json) {
    let key = json!({
        "type": "record", "name": "TransactionKey", "namespace": "walhouse",
        "fields": [{"name": "id", "type": "string"}],
    });
    let value = json!({
        "type": "record", "name": "TransactionMetadataValue", "namespace": "walhouse",
        "fields": [
            {"name": "status", "type": "string"},
            {"name": "id", "type": "string"},
            {"name": "event_count", "type": ["null", "long"], "default": null},
            {"name": "data_collections", "type": ["null", {"type": "array", "items": {
                "type": "record", "name": "DataCollection", "namespace": "walhouse",
                "fields": [{"name": "data_collection", "type": "string"}, {"name": "event_count", "type": "long"}],
            }}], "default": null},
            {"name": "ts_ms", "type": "long"},
        ],
    });
    (key, value)
}

/// A BEGIN (no counts) or END (counts per `schema.table`) record, framed.
pub fn transaction_record(
    key_id: u32,
    value_id: u32,
    id: &str,
    status: &str,
    counts: Option<&std::collections::BTreeMap<String, u64>>,
    now_ms: i64,
) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::new();
    crate::registry::wire_header(key_id, &mut key);
    let mut value = Vec::new();
    crate::registry::wire_header(value_id, &mut value);
    let counts: Option<Vec<(&str, u64)>> = counts.map(|c| c.iter().map(|(t, n)| (t.as_str(), *n)).collect());
    put_transaction(id, status, counts.as_deref(), false, now_ms, &mut key, &mut value);
    (key, value)
}

/// The bodies of a transaction-topic record, in the shape both formats
/// share: key `{id}`, value `{status, id, event_count, data_collections,
/// ts_ms}`; `counts` (END only) per table in the order given, each item a
/// union's value branch when `optional_items`.
pub fn put_transaction(
    id: &str,
    status: &str,
    counts: Option<&[(&str, u64)]>,
    optional_items: bool,
    ts_ms: i64,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) {
    put_str(key, id);
    put_str(value, status);
    put_str(value, id);
    match counts {
        Some(counts) => {
            put_long(value, 1);
            put_long(value, counts.iter().map(|(_, n)| *n).sum::<u64>() as i64);
            put_long(value, 1);
            if !counts.is_empty() {
                put_long(value, counts.len() as i64);
                for (table, n) in counts {
                    if optional_items {
                        put_long(value, 1);
                    }
                    put_str(value, table);
                    put_long(value, *n as i64);
                }
            }
            put_long(value, 0);
        }
        None => {
            put_long(value, 0);
            put_long(value, 0);
        }
    }
    put_long(value, ts_ms);
}

fn source_schema() -> Json {
    json!({
        "type": "record", "name": "Source", "namespace": "walhouse",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": "string", "default": "false"},
            {"name": "db", "type": "string"},
            {"name": "system_id", "type": ["null", "string"], "default": null},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": ["null", "long"], "default": null},
            {"name": "lsn", "type": ["null", "long"], "default": null},
            {"name": "commit_lsn", "type": ["null", "long"], "default": null},
            {"name": "tx_ordinal", "type": "long", "default": 0},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::pgoutput::{PgTimestamp, RelationColumn};
    use crate::postgres::Lsn;
    use apache_avro::types::Value;
    use bytes::Bytes;
    use std::collections::HashMap;

    fn relation() -> Relation {
        let col = |name: &str, oid, typmod| RelationColumn {
            is_key: name == "id",
            name: name.into(),
            type_oid: oid,
            type_modifier: typmod,
        };
        Relation {
            xid: None,
            id: 1,
            namespace: "public".into(),
            name: "Odd Table".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", 23, -1),
                col("amount", 1700, ((19 << 16) | 4) + 4),
                col("Mixed Col", 25, -1),
                col("big", 25, -1),
            ],
        }
    }

    fn infos() -> HashMap<String, ColumnInfo> {
        let mut m = HashMap::new();
        m.insert(
            "id".to_string(),
            ColumnInfo {
                pg_type: "integer".into(),
                array_dims: 0,
                in_primary_key: true,
                in_unique_key: false,
                not_null: true,
                default_expr: None,
            },
        );
        m
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    use crate::avro::read_datum as read;

    fn field<'v>(v: &'v Value, name: &str) -> &'v Value {
        let Value::Record(fields) = v else {
            panic!("record expected: {v:?}")
        };
        &fields
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .1
    }

    fn none(_: u32) -> Option<&'static TypeInfo> {
        None
    }

    #[test]
    fn names_are_valid_and_collision_free() {
        assert_eq!(avro_name("orders"), "orders");
        assert!(avro_name("Mixed Col").starts_with("Mixed_Col_"));
        assert_ne!(avro_name("a b"), avro_name("a-b"));
        assert!(avro_name("1st").starts_with("_1st_"));
        assert_eq!(topic_name("walhouse", "public", "orders"), "walhouse.public.orders");
        assert!(topic_name("walhouse", "public", "Odd Table").starts_with("walhouse.public.Odd_Table_"));
    }

    #[test]
    fn envelope_round_trips_through_apache_avro() {
        let env = TableEnvelope::new("walhouse", &relation(), &infos(), NumericMode::Decimal, &none);
        assert_eq!(env.key_columns, vec![0]);
        let tx = TxInfo {
            xid: 42,
            begin_lsn: Lsn(0x100),
            commit_lsn: Lsn(0x200),
            commit_time: PgTimestamp::from_unix_micros(1_700_000_000_123_000),
        };
        let rel = relation();
        let new = vec![t("7"), t("NaN"), t("x"), TupleValue::UnchangedToast];
        let event = ChangeEvent {
            lsn: Lsn(0x100),
            tx: Some(&tx),
            tx_ordinal: 3,
            kind: ChangeKind::Update {
                relation: &rel,
                old: None,
                new: &new,
            },
            snapshot: None,
        };
        let ops = Op::of(&event, |a, b| env.key_changed(a, b));
        assert_eq!(ops.len(), 1);
        let source = SourceInfo {
            version: "0.1.0",
            name: "walhouse",
            db: "shop",
            system_id: Some("7300000000000000001"),
        };
        let mut out = Vec::new();
        env.encode_value(&event, ops[0], &source, 1_800_000_000_000, &mut out);
        let v = read(&env.value_schema, &out);
        assert_eq!(field(&v, "op"), &Value::String("u".into()));
        assert_eq!(field(&v, "before"), &Value::Union(0, Box::new(Value::Null)));
        let Value::Union(1, after) = field(&v, "after") else {
            panic!("after present")
        };
        assert_eq!(field(after, "id"), &Value::Union(1, Box::new(Value::Int(7))));
        assert_eq!(
            field(after, "amount"),
            &Value::Union(0, Box::new(Value::Null)),
            "NaN is not a decimal"
        );
        assert_eq!(
            field(&v, "unchanged_toast"),
            &Value::Array(vec![Value::String("big".into())])
        );
        let Value::Map(text_values) = field(&v, "text_values") else {
            panic!("map")
        };
        assert_eq!(text_values.get("amount"), Some(&Value::String("NaN".into())));
        let src = field(&v, "source");
        assert_eq!(field(src, "txId"), &Value::Union(1, Box::new(Value::Long(42))));
        assert_eq!(field(src, "lsn"), &Value::Union(1, Box::new(Value::Long(0x100))));
        assert_eq!(field(src, "commit_lsn"), &Value::Union(1, Box::new(Value::Long(0x200))));
        // Two ordinals a change: the third change is 6.
        assert_eq!(field(src, "tx_ordinal"), &Value::Long(6));
        assert_eq!(field(src, "ts_ms"), &Value::Long(1_700_000_000_123));
        assert_eq!(field(src, "table"), &Value::String("Odd Table".into()));

        let mut key = Vec::new();
        assert!(env.encode_key(&new, &mut key).expect("key"));
        let k = read(env.key_schema.as_ref().expect("key schema"), &key);
        assert_eq!(field(&k, "id"), &Value::Int(7));

        // A source head encoded once serves other changes of the
        // transaction: byte for byte the full encoding.
        let mut head = Vec::new();
        env.encode_source_head(&event, &source, 1_800_000_000_000, &mut head);
        let later = ChangeEvent {
            lsn: event.lsn,
            tx: event.tx,
            tx_ordinal: 4,
            kind: ChangeKind::Update {
                relation: &rel,
                old: None,
                new: &new,
            },
            snapshot: None,
        };
        let (mut whole, mut with_head) = (Vec::new(), Vec::new());
        env.encode_value(&later, ops[0], &source, 1_800_000_000_001, &mut whole);
        env.encode_value_with_head(&later, ops[0], &head, 1_800_000_000_001, &mut with_head);
        assert_eq!(whole, with_head);
        assert_ne!(whole, out, "the ordinal and time are not in the head");
    }

    #[test]
    fn a_primary_key_update_becomes_delete_then_create() {
        let env = TableEnvelope::new("walhouse", &relation(), &infos(), NumericMode::Decimal, &none);
        let rel = relation();
        let old = OldTuple::Key(vec![t("1"), TupleValue::Null, TupleValue::Null, TupleValue::Null]);
        let new = vec![t("2"), t("1.0000"), t("x"), t("y")];
        let event = ChangeEvent {
            lsn: Lsn(1),
            tx: None,
            tx_ordinal: 1,
            kind: ChangeKind::Update {
                relation: &rel,
                old: Some(&old),
                new: &new,
            },
            snapshot: None,
        };
        let codes: Vec<_> = Op::of(&event, |a, b| env.key_changed(a, b))
            .iter()
            .map(|o| o.code())
            .collect();
        assert_eq!(codes, ["d", "c"]);
    }

    /// The fixed schemas are documented as files in `schemas/`; they must
    /// not drift from what walhouse registers.
    #[test]
    fn fixed_schemas_match_the_schemas_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let (key, value) = transaction_schemas();
        for (file, schema) in [
            ("walhouse.Source.avsc", source_schema()),
            ("walhouse.TransactionKey.avsc", key),
            ("walhouse.TransactionMetadataValue.avsc", value),
        ] {
            let path = dir.join(file);
            let expected = serde_json::to_string_pretty(&schema).expect("json") + "\n";
            if std::env::var_os("WALHOUSE_WRITE_SCHEMAS").is_some() {
                std::fs::write(&path, &expected).expect("write schema file");
            }
            let on_disk: Json = serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file"))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                on_disk, schema,
                "{file} differs from the code (WALHOUSE_WRITE_SCHEMAS=1 rewrites it)"
            );
        }
    }

    #[test]
    fn transaction_records_decode() {
        let (key_schema, value_schema) = transaction_schemas();
        let mut counts = std::collections::BTreeMap::new();
        counts.insert("public.a".to_string(), 2u64);
        counts.insert("public.b".to_string(), 1u64);
        let (key, value) = transaction_record(1, 2, "7:0/10", "END", Some(&counts), 5);
        assert_eq!(
            read(&key_schema, &key[5..]),
            Value::Record(vec![("id".into(), Value::String("7:0/10".into()))])
        );
        let v = read(&value_schema, &value[5..]);
        assert_eq!(field(&v, "status"), &Value::String("END".into()));
        assert_eq!(field(&v, "event_count"), &Value::Union(1, Box::new(Value::Long(3))));
        let (_, begin) = transaction_record(1, 2, "7:0/10", "BEGIN", None, 5);
        let v = read(&value_schema, &begin[5..]);
        assert_eq!(field(&v, "data_collections"), &Value::Union(0, Box::new(Value::Null)));
    }

    #[test]
    fn tables_without_a_key_have_no_key_schema() {
        let mut rel = relation();
        rel.replica_identity = ReplicaIdentity::Full;
        for c in &mut rel.columns {
            c.is_key = true;
        }
        let env = TableEnvelope::new("walhouse", &rel, &HashMap::new(), NumericMode::Decimal, &none);
        assert!(env.key_schema.is_none());
        assert!(!env.encode_key(&vec![t("1")], &mut Vec::new()).expect("no key"));
    }

    #[test]
    fn changed_columns_name_what_changed() {
        let old = TableEnvelope::new("w", &relation(), &infos(), NumericMode::Decimal, &none);
        let mut rel = relation();
        rel.columns[2].type_oid = 23;
        rel.columns.pop();
        rel.columns.push(RelationColumn {
            is_key: false,
            name: "new".into(),
            type_oid: 25,
            type_modifier: -1,
        });
        let new = TableEnvelope::new("w", &rel, &infos(), NumericMode::Decimal, &none);
        let changed = old.changed_columns(&new);
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(changed.iter().any(|c| c.starts_with("Mixed Col")));
        assert!(changed.contains(&"new (added)".to_string()));
        assert!(changed.contains(&"big (dropped)".to_string()));
    }
}
