//! Reads change envelopes (Avro, by their writer schema) into warehouse
//! cells: walhouse's own, and Debezium's (whose semantic types, named by
//! `connect.name`, become the warehouse types they stand for, and whose
//! TOAST placeholder becomes an unchanged-TOAST mark).
//!
//! A plan is compiled once per writer schema id from the schema's JSON, so
//! walhouse's own annotations (`walhouse.column` for the original column
//! name, `walhouse.type` for json, numeric and interval strings) decide the
//! warehouse types. Decoding then walks the Avro binary directly into
//! [`Cell`]s: no generic Avro value tree per message, which is where the
//! time of a sink goes.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::warehouse::{decimal_text, Cell, ColumnDef, SqlType};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("writer schema is not a walhouse change envelope: {0}")]
    NotAnEnvelope(String),
    #[error("writer schema: {0}")]
    Schema(String),
    #[error("Avro body does not match its writer schema: {0}")]
    Body(String),
}

/// An Avro type as the decoder needs it.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Decimal {
        precision: u32,
        scale: u32,
        fixed: Option<usize>,
    },
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    LocalTimestampMillis,
    LocalTimestampMicros,
    /// Debezium's `ZonedTimestamp`: an ISO-8601 string in UTC.
    ZonedTimestamp,
    /// Debezium's `VariableScaleDecimal`: `{scale: int, value: bytes}`.
    VariableDecimal,
    Uuid,
    // Shared, not owned: a named type used many times is one allocation
    // however often a hostile schema refers to it.
    Enum(Arc<[String]>),
    Array(Arc<Node>),
    Map(Arc<Node>),
    Union(Arc<[Node]>),
    Record(Arc<[(String, Node)]>),
}

/// Types in a writer schema once its named types are expanded where they
/// are used. Each costs work per record, so a schema may not hold more.
const MAX_SCHEMA_NODES: u64 = 50_000;
/// Schema text accepted from the registry.
const MAX_SCHEMA_BYTES: usize = 1 << 20;
/// Postgres's largest `numeric` precision.
const MAX_DECIMAL_PRECISION: u32 = 1000;
/// What Debezium writes for a TOAST value an update left unchanged.
pub const DEBEZIUM_TOAST_PLACEHOLDER: &str = "__debezium_unavailable_value";

/// One column of the row records, as the warehouse will store it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanColumn {
    pub name: String,
    pub ty: SqlType,
    node: Node,
}

/// What one writer schema decodes into.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopePlan {
    pub columns: Vec<PlanColumn>,
    fields: Vec<(Field, Node)>,
    /// Debezium's envelope (no `unchanged_toast` list): unchanged TOAST
    /// values are its placeholder.
    placeholders: bool,
    /// `source`'s fields, named once here rather than matched by name per
    /// message; `None` when `source` is not a record (each message is
    /// then refused).
    source: Option<Vec<(SourceField, Node)>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Field {
    Before,
    After,
    Source,
    Op,
    UnchangedToast,
    TextValues,
    Other,
}

/// One decoded change. Its text borrows the message (or the plan); its
/// row's cells are in the [`RowBuffer`] it was decoded with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change<'a> {
    pub op: &'a str,
    /// Whether the message had a row (`after`, or `before` for deletes):
    /// then the buffer's first cells, one per plan column, hold it. Not
    /// for truncates.
    pub has_row: bool,
    pub schema: &'a str,
    pub table: &'a str,
    pub snapshot: &'a str,
    pub tx_id: Option<i64>,
    pub lsn: Option<i64>,
    pub commit_ts_ms: Option<i64>,
    /// walhouse's format: the transaction's commit LSN and the record's
    /// ordinal in it, its source position.
    pub commit_lsn: Option<i64>,
    pub tx_ordinal: Option<i64>,
    /// walhouse's format: the source's database system identifier.
    pub system_id: Option<&'a str>,
    pub unchanged_toast: Vec<String>,
    pub text_values: Vec<(String, String)>,
}

/// Where rows are decoded, kept from message to message: once warm, a
/// row's cells and their text take no new allocation (per-message
/// allocations were most of the sink's decoding time).
#[derive(Debug, Default)]
pub struct RowBuffer {
    /// The row (`after`, or `before` for deletes) in its first cells; the
    /// caller may keep cells of its own after them.
    pub cells: Vec<Cell>,
    before: Vec<Cell>,
}

/// The fields of `source` that are read; the others are skipped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SourceField {
    SystemId,
    Schema,
    Table,
    Snapshot,
    Sequence,
    TxId,
    Lsn,
    TsMs,
    CommitLsn,
    TxOrdinal,
    Other,
}

impl SourceField {
    fn of(name: &str) -> Self {
        match name {
            "system_id" => SourceField::SystemId,
            "schema" => SourceField::Schema,
            "table" => SourceField::Table,
            "snapshot" => SourceField::Snapshot,
            "sequence" => SourceField::Sequence,
            "txId" => SourceField::TxId,
            "lsn" => SourceField::Lsn,
            "ts_ms" => SourceField::TsMs,
            "commit_lsn" => SourceField::CommitLsn,
            "tx_ordinal" => SourceField::TxOrdinal,
            _ => SourceField::Other,
        }
    }
}

impl PlanColumn {
    /// What the warehouse's typed column can hold of a value Avro could
    /// not (sent as null with its exact text): infinite, BC and far-future
    /// dates and timestamps, `24:00:00`, an array deeper than declared (as
    /// JSON). `None` leaves the column null (the text stays in
    /// `_text_values`).
    pub fn cell_from_text(&self, text: &str) -> Option<Cell> {
        use crate::avro::value::{date_from_text, time_from_text, timestamp_from_text};
        match (&self.ty, unwrap_null(&self.node)) {
            (SqlType::Date, _) => date_from_text(text).map(Cell::Date),
            (SqlType::Time, _) => time_from_text(text).map(Cell::Time),
            (SqlType::Timestamp, _) => timestamp_from_text(text, false).map(Cell::Timestamp),
            (SqlType::TimestampTz, _) => timestamp_from_text(text, true).map(Cell::TimestampTz),
            (SqlType::Json, Node::Array(item)) => {
                let parsed = crate::avro::value::parse_array(text).ok()?;
                Some(Cell::Text(array_json(&parsed, leaf(item)).to_string()))
            }
            _ => None,
        }
    }
}

/// `node` without its null branch.
fn unwrap_null(node: &Node) -> &Node {
    match node {
        Node::Union(b) => b.iter().find(|n| **n != Node::Null).unwrap_or(&Node::Null),
        n => n,
    }
}

/// The element type under nested arrays and nullable unions.
fn leaf(node: &Node) -> &Node {
    match unwrap_null(node) {
        Node::Array(item) => leaf(item),
        n => n,
    }
}

/// A Postgres array literal as JSON: numbers and booleans where the
/// element type is one, strings otherwise.
fn array_json(node: &crate::avro::value::ArrayNode, element: &Node) -> Json {
    use crate::avro::value::ArrayNode;
    match node {
        ArrayNode::Null => Json::Null,
        ArrayNode::List(items) => Json::Array(items.iter().map(|i| array_json(i, element)).collect()),
        ArrayNode::Elem(text) => match element {
            Node::Int | Node::Long | Node::Float | Node::Double | Node::Decimal { .. } => text
                .parse::<serde_json::Number>()
                .map(Json::Number)
                .unwrap_or_else(|_| Json::String(text.clone())),
            Node::Boolean => Json::Bool(text == "t" || text == "true"),
            _ => Json::String(text.clone()),
        },
    }
}

impl EnvelopePlan {
    pub fn compile(schema_text: &str) -> Result<Self, ReadError> {
        if schema_text.len() > MAX_SCHEMA_BYTES {
            return Err(ReadError::Schema(format!(
                "{} bytes of schema, more than the {MAX_SCHEMA_BYTES} accepted",
                schema_text.len()
            )));
        }
        let json: Json = serde_json::from_str(schema_text).map_err(|e| ReadError::Schema(format!("not JSON: {e}")))?;
        let mut named = HashMap::new();
        let mut nodes = 0;
        let root = parse(&json, "", &mut named, &mut nodes)?;
        let Node::Record(top) = &root else {
            return Err(ReadError::NotAnEnvelope("the top level is not a record".into()));
        };
        let mut fields = Vec::new();
        let mut columns = None;
        for (name, node) in top.iter() {
            let field = match name.as_str() {
                "before" => Field::Before,
                "after" => Field::After,
                "source" => Field::Source,
                "op" => Field::Op,
                "unchanged_toast" => Field::UnchangedToast,
                "text_values" => Field::TextValues,
                _ => Field::Other,
            };
            if field == Field::After {
                columns = Some(row_columns(&json, node)?);
            }
            fields.push((field, node.clone()));
        }
        for needed in [Field::Before, Field::After, Field::Source, Field::Op] {
            if !fields.iter().any(|(f, _)| *f == needed) {
                return Err(ReadError::NotAnEnvelope(format!("no {needed:?} field")));
            }
        }
        let placeholders = !fields.iter().any(|(f, _)| *f == Field::UnchangedToast);
        let source = fields.iter().find_map(|(f, node)| match (f, node) {
            (Field::Source, Node::Record(fields)) => Some(
                fields
                    .iter()
                    .map(|(name, n)| (SourceField::of(name), n.clone()))
                    .collect(),
            ),
            _ => None,
        });
        Ok(EnvelopePlan {
            columns: columns.unwrap_or_default(),
            fields,
            placeholders,
            source,
        })
    }

    /// Whether the envelope is the Debezium format's (whose topics are
    /// named by another rule).
    pub fn is_debezium(&self) -> bool {
        self.placeholders
    }

    pub fn column_defs(&self) -> Vec<ColumnDef> {
        self.columns
            .iter()
            .map(|c| ColumnDef::new(&c.name, c.ty.clone()))
            .collect()
    }

    /// Decodes a message body, its row into `rows`.
    pub fn decode<'a>(&'a self, body: &'a [u8], rows: &mut RowBuffer) -> Result<Change<'a>, ReadError> {
        let mut r = Reader { buf: body, pos: 0 };
        let n = self.columns.len();
        // Both rows hold a cell per column (a fresh buffer, or one a
        // narrower table's rows left short), so they decode and swap in
        // place.
        for cells in [&mut rows.cells, &mut rows.before] {
            if cells.len() < n {
                cells.resize(n, Cell::Null);
            }
        }
        let mut change = Change::default();
        let mut before = false;
        let mut after = false;
        for (field, node) in &self.fields {
            match field {
                Field::Before => before = self.row(&mut r, node, &mut rows.before)?,
                Field::After => after = self.row(&mut r, node, &mut rows.cells)?,
                Field::Source => self.source(&mut r, &mut change)?,
                Field::Op => change.op = r.str()?,
                Field::UnchangedToast => {
                    let mut v = Json::Null;
                    generic(&mut r, node, &mut v)?;
                    if let Json::Array(items) = v {
                        change.unchanged_toast = items
                            .into_iter()
                            .filter_map(|i| i.as_str().map(str::to_owned))
                            .collect();
                    }
                }
                Field::TextValues => {
                    let mut v = Json::Null;
                    generic(&mut r, node, &mut v)?;
                    if let Json::Object(m) = v {
                        change.text_values = m
                            .into_iter()
                            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                            .collect();
                    }
                }
                Field::Other => skip(&mut r, node)?,
            }
        }
        change.has_row = if change.op == "d" {
            if before {
                if let (Some(row), Some(old)) = (rows.cells.get_mut(..n), rows.before.get_mut(..n)) {
                    row.swap_with_slice(old);
                }
            }
            before
        } else {
            after
        };
        if self.placeholders && change.has_row {
            for (c, cell) in self.columns.iter().zip(rows.cells.iter_mut()) {
                if is_placeholder(cell) {
                    *cell = Cell::Null;
                    change.unchanged_toast.push(c.name.clone());
                }
            }
        }
        Ok(change)
    }

    /// Decodes a row record into `cells` (at least one per column);
    /// `false` if the row is null.
    fn row(&self, r: &mut Reader<'_>, node: &Node, cells: &mut [Cell]) -> Result<bool, ReadError> {
        let node = match node {
            Node::Union(branches) => match &branches[r.branch(branches.len())?] {
                Node::Null => return Ok(false),
                n => n,
            },
            n => n,
        };
        let Node::Record(_) = node else {
            return Err(ReadError::NotAnEnvelope("row is not a record".into()));
        };
        for (c, out) in self.columns.iter().zip(cells.iter_mut()) {
            cell_into(r, &c.node, out)?;
        }
        Ok(true)
    }

    fn source<'a>(&'a self, r: &mut Reader<'a>, change: &mut Change<'a>) -> Result<(), ReadError> {
        let Some(fields) = &self.source else {
            return Err(ReadError::NotAnEnvelope("source is not a record".into()));
        };
        for (field, node) in fields {
            match field {
                SourceField::SystemId => change.system_id = text(r, node)?,
                SourceField::Schema => change.schema = text(r, node)?.unwrap_or_default(),
                SourceField::Table => change.table = text(r, node)?.unwrap_or_default(),
                SourceField::Snapshot => change.snapshot = text(r, node)?.unwrap_or_default(),
                // Debezium's incremental reads carry no `lsn`; their place in
                // the stream (the high watermark) is `sequence`'s last element.
                SourceField::Sequence if change.snapshot == "incremental" => {
                    if let Some(t) = text(r, node)? {
                        change.lsn = change.lsn.or_else(|| sequence_position(t));
                    }
                }
                SourceField::TxId => change.tx_id = number(r, node)?,
                SourceField::Lsn => change.lsn = number(r, node)?.or(change.lsn),
                SourceField::TsMs => change.commit_ts_ms = number(r, node)?,
                SourceField::CommitLsn => change.commit_lsn = number(r, node)?,
                SourceField::TxOrdinal => change.tx_ordinal = number(r, node)?,
                SourceField::Sequence | SourceField::Other => skip(r, node)?,
            }
        }
        Ok(())
    }
}

/// A text field of `source` (a string, or an enum's symbol), borrowed;
/// `None` for null or another type.
fn text<'a>(r: &mut Reader<'a>, node: &'a Node) -> Result<Option<&'a str>, ReadError> {
    match node {
        Node::Union(branches) => {
            let b = r.branch(branches.len())?;
            text(r, &branches[b])
        }
        Node::String => r.str().map(Some),
        Node::Enum(symbols) => {
            let i = r.long()?;
            let symbol = usize::try_from(i).ok().and_then(|i| symbols.get(i));
            symbol
                .map(|s| Some(s.as_str()))
                .ok_or_else(|| r.fail("enum index out of range"))
        }
        n => skip(r, n).map(|()| None),
    }
}

/// A number field of `source` (an int or a long); `None` for null or
/// another type.
fn number(r: &mut Reader<'_>, node: &Node) -> Result<Option<i64>, ReadError> {
    match node {
        Node::Union(branches) => {
            let b = r.branch(branches.len())?;
            number(r, &branches[b])
        }
        Node::Null => Ok(None),
        Node::Long => r.long().map(Some),
        n => Ok(match cell(r, n)? {
            Cell::Long(v) => Some(v),
            Cell::Int(v) => Some(i64::from(v)),
            _ => None,
        }),
    }
}

/// Whether a cell holds Debezium's TOAST placeholder (as text, as bytes,
/// or as the one element of an array).
fn is_placeholder(cell: &Cell) -> bool {
    match cell {
        Cell::Text(t) => {
            t == DEBEZIUM_TOAST_PLACEHOLDER
                || (t.len() == DEBEZIUM_TOAST_PLACEHOLDER.len() + 4
                    && t.strip_prefix("[\"")
                        .and_then(|t| t.strip_suffix("\"]"))
                        .is_some_and(|t| t == DEBEZIUM_TOAST_PLACEHOLDER))
        }
        Cell::Bytes(b) => b == DEBEZIUM_TOAST_PLACEHOLDER.as_bytes(),
        _ => false,
    }
}

/// The row record's fields, from the `after` field's schema JSON.
fn row_columns(envelope: &Json, after: &Node) -> Result<Vec<PlanColumn>, ReadError> {
    let Some(Node::Record(fields)) = (match after {
        Node::Union(b) => b.iter().find(|n| matches!(n, Node::Record(_))),
        n @ Node::Record(_) => Some(n),
        _ => None,
    }) else {
        return Err(ReadError::NotAnEnvelope("after is not a nullable record".into()));
    };
    // The row record is defined inline in `before` (walhouse's shape) or in
    // `after`; its JSON carries the annotations.
    let record_json = envelope["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["name"] == "before" || f["name"] == "after")
        .filter_map(|f| f["type"].as_array())
        .flatten()
        .find(|t| t["type"] == "record")
        .ok_or_else(|| ReadError::NotAnEnvelope("no inline row record".into()))?;
    let jsons: Vec<&Json> = record_json["fields"].as_array().into_iter().flatten().collect();
    let mut out = Vec::with_capacity(fields.len());
    for (i, (field_name, node)) in fields.iter().enumerate() {
        let j = jsons.get(i).copied().unwrap_or(&Json::Null);
        let name = j["walhouse.column"].as_str().unwrap_or(field_name).to_owned();
        let value_json = match &j["type"] {
            Json::Array(branches) => branches.iter().find(|b| *b != "null").cloned().unwrap_or(Json::Null),
            other => other.clone(),
        };
        let walhouse_type = value_json["walhouse.type"]
            .as_str()
            .or_else(|| (value_json["connect.name"] == "io.debezium.data.Json").then_some("json"));
        let inner = unwrap_null(node);
        out.push(PlanColumn {
            name,
            ty: sql_type(inner, walhouse_type),
            node: node.clone(),
        });
    }
    Ok(out)
}

fn sql_type(node: &Node, walhouse_type: Option<&str>) -> SqlType {
    match node {
        Node::Boolean => SqlType::Boolean,
        Node::Int => SqlType::Integer,
        Node::Long => SqlType::BigInt,
        Node::Float => SqlType::Real,
        Node::Double => SqlType::Double,
        Node::Decimal { precision, scale, .. } if *precision <= 38 => SqlType::Decimal {
            precision: *precision,
            scale: *scale,
        },
        Node::Bytes | Node::Fixed(_) => SqlType::Bytes,
        Node::String if walhouse_type == Some("json") => SqlType::Json,
        Node::Date => SqlType::Date,
        Node::TimeMillis | Node::TimeMicros => SqlType::Time,
        Node::TimestampMillis | Node::TimestampMicros | Node::ZonedTimestamp => SqlType::TimestampTz,
        Node::LocalTimestampMillis | Node::LocalTimestampMicros => SqlType::Timestamp,
        Node::Uuid => SqlType::Uuid,
        Node::Array(_) | Node::Map(_) | Node::Record(_) => SqlType::Json,
        _ => SqlType::Text,
    }
}

/// Counts `n` more expanded types against [`MAX_SCHEMA_NODES`].
fn spend(nodes: &mut u64, n: u64) -> Result<(), ReadError> {
    *nodes = nodes.saturating_add(n);
    if *nodes > MAX_SCHEMA_NODES {
        return Err(ReadError::Schema(format!(
            "more than {MAX_SCHEMA_NODES} types once its named types are expanded: refused, as decoding it would cost too much per record"
        )));
    }
    Ok(())
}

/// Parses one schema node; `named` holds each named type with its
/// expanded size, `nodes` counts the expanded size so far.
fn parse(
    json: &Json,
    namespace: &str,
    named: &mut HashMap<String, (Node, u64)>,
    nodes: &mut u64,
) -> Result<Node, ReadError> {
    match json {
        Json::String(name) => {
            if let Some(p) = primitive(name) {
                spend(nodes, 1)?;
                return Ok(p);
            }
            let full = if name.contains('.') || namespace.is_empty() {
                name.clone()
            } else {
                format!("{namespace}.{name}")
            };
            let (node, size) = named
                .get(&full)
                .or_else(|| named.get(name))
                .cloned()
                .ok_or_else(|| ReadError::Schema(format!("unknown type {name:?}")))?;
            spend(nodes, size)?;
            Ok(node)
        }
        Json::Array(branches) => {
            spend(nodes, 1)?;
            Ok(Node::Union(
                branches
                    .iter()
                    .map(|b| parse(b, namespace, named, nodes))
                    .collect::<Result<_, _>>()?,
            ))
        }
        Json::Object(o) => {
            let before = *nodes;
            spend(nodes, 1)?;
            let ty = o.get("type").and_then(Json::as_str).unwrap_or_default();
            let logical = o.get("logicalType").and_then(Json::as_str);
            let num = |k: &str| u32::try_from(o.get(k).and_then(Json::as_u64).unwrap_or(0)).unwrap_or(u32::MAX);
            let decimal = |fixed: Option<usize>| {
                let (precision, scale) = (num("precision"), num("scale"));
                if precision > MAX_DECIMAL_PRECISION || scale > precision {
                    return Err(ReadError::Schema(format!(
                        "decimal({precision},{scale}): precision above {MAX_DECIMAL_PRECISION} or scale above precision"
                    )));
                }
                Ok(Node::Decimal {
                    precision,
                    scale,
                    fixed,
                })
            };
            match (ty, logical) {
                ("bytes", Some("decimal")) => return decimal(None),
                ("int", Some("date")) => return Ok(Node::Date),
                ("int", Some("time-millis")) => return Ok(Node::TimeMillis),
                ("long", Some("time-micros")) => return Ok(Node::TimeMicros),
                ("long", Some("timestamp-millis")) => return Ok(Node::TimestampMillis),
                ("long", Some("timestamp-micros")) => return Ok(Node::TimestampMicros),
                ("long", Some("local-timestamp-micros")) => return Ok(Node::LocalTimestampMicros),
                ("string", Some("uuid")) => return Ok(Node::Uuid),
                _ => {}
            }
            // Debezium's semantic types, by their Connect name.
            match (ty, o.get("connect.name").and_then(Json::as_str)) {
                ("int", Some("io.debezium.time.Date")) => return Ok(Node::Date),
                ("int", Some("io.debezium.time.Time")) => return Ok(Node::TimeMillis),
                ("long", Some("io.debezium.time.MicroTime")) => return Ok(Node::TimeMicros),
                ("long", Some("io.debezium.time.Timestamp")) => return Ok(Node::LocalTimestampMillis),
                ("long", Some("io.debezium.time.MicroTimestamp")) => return Ok(Node::LocalTimestampMicros),
                ("string", Some("io.debezium.time.ZonedTimestamp")) => return Ok(Node::ZonedTimestamp),
                ("string", Some("io.debezium.data.Uuid")) => return Ok(Node::Uuid),
                ("record", Some("io.debezium.data.VariableScaleDecimal")) => return Ok(Node::VariableDecimal),
                _ => {}
            }
            let name = o.get("name").and_then(Json::as_str).unwrap_or_default();
            let ns = o.get("namespace").and_then(Json::as_str).unwrap_or(namespace);
            let full = if name.contains('.') || ns.is_empty() {
                name.to_owned()
            } else {
                format!("{ns}.{name}")
            };
            let inner_ns = full.rsplit_once('.').map_or("", |(n, _)| n).to_owned();
            let node = match ty {
                "record" | "error" => {
                    let mut fields = Vec::new();
                    for f in o.get("fields").and_then(Json::as_array).into_iter().flatten() {
                        let fname = f["name"].as_str().unwrap_or_default().to_owned();
                        fields.push((fname, parse(&f["type"], &inner_ns, named, nodes)?));
                    }
                    Node::Record(fields.into())
                }
                "enum" => Node::Enum(
                    o.get("symbols")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect(),
                ),
                "array" => Node::Array(Arc::new(parse(&o["items"], namespace, named, nodes)?)),
                "map" => Node::Map(Arc::new(parse(&o["values"], namespace, named, nodes)?)),
                "fixed" => {
                    let size = num("size") as usize;
                    if logical == Some("decimal") {
                        decimal(Some(size))?
                    } else {
                        Node::Fixed(size)
                    }
                }
                other => primitive(other).ok_or_else(|| ReadError::Schema(format!("unsupported type {other:?}")))?,
            };
            if !name.is_empty() {
                let size = *nodes - before;
                named.insert(full, (node.clone(), size));
                named.insert(name.to_owned(), (node.clone(), size));
            }
            Ok(node)
        }
        other => Err(ReadError::Schema(format!("unexpected {other}"))),
    }
}

fn primitive(name: &str) -> Option<Node> {
    Some(match name {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "int" => Node::Int,
        "long" => Node::Long,
        "float" => Node::Float,
        "double" => Node::Double,
        "bytes" => Node::Bytes,
        "string" => Node::String,
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn fail(&self, what: &str) -> ReadError {
        ReadError::Body(format!("{what} at byte {}", self.pos))
    }

    fn long(&mut self) -> Result<i64, ReadError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| self.fail("truncated number"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(self.fail("overlong number"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| self.fail("truncated value"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| self.fail("negative length"))?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, ReadError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.fail("string is not UTF-8"))
    }

    fn string(&mut self) -> Result<String, ReadError> {
        self.str().map(str::to_owned)
    }

    fn branch(&mut self, n: usize) -> Result<usize, ReadError> {
        let b = self.long()?;
        usize::try_from(b)
            .ok()
            .filter(|b| *b < n)
            .ok_or_else(|| self.fail("union branch out of range"))
    }

    /// Array and map blocks: calls `item` for each element.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), ReadError>) -> Result<(), ReadError> {
        // A block count is bounded by the bytes left, so a hostile count
        // cannot make this loop run long.
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count.checked_neg().ok_or_else(|| self.fail("bad block count"))?;
                self.long()?;
            }
            if count as u64 > (self.buf.len() - self.pos) as u64 + 1 {
                return Err(self.fail("block count exceeds the message"));
            }
            for _ in 0..count {
                let at = self.pos;
                item(self)?;
                // Items that take no bytes would let a count run free.
                if self.pos == at {
                    return Err(self.fail("array or map items that take no bytes"));
                }
            }
        }
    }
}

/// The last LSN of Debezium's `source.sequence` (`["<lsn>","<lsn>"]`,
/// either may be null), as a signed 64-bit number like `source.lsn`.
fn sequence_position(sequence: &str) -> Option<i64> {
    let inner = sequence.trim().strip_prefix('[')?.strip_suffix(']')?;
    let last = inner.rsplit(',').next()?.trim();
    last.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// Advances past a value without decoding it.
fn skip(r: &mut Reader<'_>, node: &Node) -> Result<(), ReadError> {
    match node {
        Node::Null => {}
        Node::Boolean => {
            r.take(1)?;
        }
        Node::Int
        | Node::Long
        | Node::Date
        | Node::TimeMillis
        | Node::TimeMicros
        | Node::TimestampMillis
        | Node::TimestampMicros
        | Node::LocalTimestampMillis
        | Node::LocalTimestampMicros
        | Node::Enum(_) => {
            r.long()?;
        }
        Node::VariableDecimal => {
            r.long()?;
            r.bytes()?;
        }
        Node::Float => {
            r.take(4)?;
        }
        Node::Double => {
            r.take(8)?;
        }
        Node::Bytes | Node::String | Node::Uuid | Node::ZonedTimestamp | Node::Decimal { fixed: None, .. } => {
            r.bytes()?;
        }
        Node::Fixed(n) | Node::Decimal { fixed: Some(n), .. } => {
            r.take(*n)?;
        }
        Node::Union(branches) => {
            let b = r.branch(branches.len())?;
            skip(r, &branches[b])?;
        }
        Node::Record(fields) => {
            for (_, n) in fields.iter() {
                skip(r, n)?;
            }
        }
        Node::Array(item) => r.blocks(|r| skip(r, item))?,
        Node::Map(values) => r.blocks(|r| {
            r.bytes()?;
            skip(r, values)
        })?,
    }
    Ok(())
}

/// Decodes one row field into `out`, its text into the string `out` has
/// (no allocation once the string is large enough).
fn cell_into(r: &mut Reader<'_>, node: &Node, out: &mut Cell) -> Result<(), ReadError> {
    match node {
        Node::Union(branches) => {
            let b = r.branch(branches.len())?;
            cell_into(r, &branches[b], out)
        }
        Node::String => {
            out.set_text(r.str()?);
            Ok(())
        }
        n => {
            *out = cell(r, n)?;
            Ok(())
        }
    }
}

/// Decodes one row field (a nullable union, or a bare type) to a cell.
fn cell(r: &mut Reader<'_>, node: &Node) -> Result<Cell, ReadError> {
    Ok(match node {
        Node::Union(branches) => {
            let b = r.branch(branches.len())?;
            return cell(r, &branches[b]);
        }
        Node::Null => Cell::Null,
        Node::Boolean => Cell::Bool(r.take(1)?[0] != 0),
        Node::Int => Cell::Int(i32::try_from(r.long()?).map_err(|_| r.fail("int out of range"))?),
        Node::Long => Cell::Long(r.long()?),
        Node::Float => Cell::Float(f32::from_le_bytes(r.take(4)?.try_into().map_err(|_| r.fail("float"))?)),
        Node::Double => Cell::Double(f64::from_le_bytes(r.take(8)?.try_into().map_err(|_| r.fail("double"))?)),
        Node::Bytes => Cell::Bytes(r.bytes()?.to_vec()),
        Node::Fixed(n) => Cell::Bytes(r.take(*n)?.to_vec()),
        Node::String | Node::Enum(_) => match node {
            Node::Enum(symbols) => {
                let i = r.long()?;
                Cell::Text(
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| symbols.get(i))
                        .ok_or_else(|| r.fail("enum index out of range"))?
                        .clone(),
                )
            }
            _ => Cell::Text(r.string()?),
        },
        Node::Decimal {
            precision,
            scale,
            fixed,
        } => {
            let b = match fixed {
                Some(n) => r.take(*n)?,
                None => r.bytes()?,
            };
            // log2(10) bits a digit, a sign bit: more bytes than that is
            // no value of this precision, and is refused before any work.
            if b.len() as u64 > u64::from(*precision) * 3322 / 8000 + 2 {
                return Err(r.fail("decimal longer than its precision allows"));
            }
            let scale8 = u8::try_from(*scale).map_err(|_| r.fail("decimal scale"))?;
            match (twos_complement_i128(b), u8::try_from(*precision)) {
                (Some(v), Ok(p)) if p <= 38 => Cell::Decimal {
                    unscaled: v,
                    precision: p,
                    scale: scale8,
                },
                (Some(v), _) => Cell::Text(decimal_text(v, scale8)),
                (None, _) => Cell::Text(big_decimal_text(b, *scale as usize)),
            }
        }
        Node::Date => Cell::Date(i32::try_from(r.long()?).map_err(|_| r.fail("date out of range"))?),
        Node::TimeMillis => Cell::Time(r.long()?.checked_mul(1000).ok_or_else(|| r.fail("time out of range"))?),
        Node::TimeMicros => Cell::Time(r.long()?),
        Node::TimestampMillis => Cell::TimestampTz(r.long()?.saturating_mul(1000)),
        Node::TimestampMicros => Cell::TimestampTz(r.long()?),
        Node::LocalTimestampMillis => Cell::Timestamp(r.long()?.saturating_mul(1000)),
        Node::LocalTimestampMicros => Cell::Timestamp(r.long()?),
        Node::ZonedTimestamp => {
            let text = r.string()?;
            match zoned_timestamp_micros(&text) {
                Some(micros) => Cell::TimestampTz(micros),
                // Debezium's placeholder, or what it writes for infinity.
                None => Cell::Text(text),
            }
        }
        Node::VariableDecimal => {
            let scale = r.long()?;
            let b = r.bytes()?;
            let scale = usize::try_from(scale)
                .ok()
                .filter(|s| *s <= MAX_DECIMAL_PRECISION as usize)
                .ok_or_else(|| r.fail("variable decimal scale"))?;
            if b.len() > MAX_DECIMAL_PRECISION as usize {
                return Err(r.fail("variable decimal longer than any numeric"));
            }
            Cell::Text(big_decimal_text(b, scale))
        }
        Node::Uuid => Cell::Uuid(r.string()?),
        Node::Array(_) | Node::Map(_) | Node::Record(_) => {
            let mut v = Json::Null;
            generic(r, node, &mut v)?;
            Cell::Text(v.to_string())
        }
    })
}

/// Debezium's ZonedTimestamp (`2024-01-31T13:45:00.5Z`) in microseconds.
fn zoned_timestamp_micros(text: &str) -> Option<i64> {
    let plain = text.strip_suffix('Z')?.replacen('T', " ", 1);
    crate::avro::value::timestamp_from_text(&format!("{plain}+00"), true)
}

/// Decodes any value to JSON (for nested values and fields the sink only
/// skims).
fn generic(r: &mut Reader<'_>, node: &Node, out: &mut Json) -> Result<(), ReadError> {
    *out = match node {
        Node::Union(branches) => {
            let b = r.branch(branches.len())?;
            return generic(r, &branches[b], out);
        }
        Node::Array(item) => {
            let mut items = Vec::new();
            r.blocks(|r| {
                let mut v = Json::Null;
                generic(r, item, &mut v)?;
                items.push(v);
                Ok(())
            })?;
            Json::Array(items)
        }
        Node::Map(values) => {
            let mut m = serde_json::Map::new();
            r.blocks(|r| {
                let k = r.string()?;
                let mut v = Json::Null;
                generic(r, values, &mut v)?;
                m.insert(k, v);
                Ok(())
            })?;
            Json::Object(m)
        }
        Node::Record(fields) => {
            let mut m = serde_json::Map::new();
            for (name, n) in fields.iter() {
                let mut v = Json::Null;
                generic(r, n, &mut v)?;
                m.insert(name.clone(), v);
            }
            Json::Object(m)
        }
        other => match cell(r, other)? {
            Cell::Null => Json::Null,
            Cell::Bool(b) => Json::Bool(b),
            Cell::Int(v) => v.into(),
            Cell::Long(v) | Cell::Time(v) | Cell::Timestamp(v) | Cell::TimestampTz(v) => v.into(),
            Cell::Date(v) => v.into(),
            Cell::Float(v) => serde_json::Number::from_f64(f64::from(v)).map_or(Json::Null, Json::Number),
            Cell::Double(v) => serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
            Cell::Decimal { unscaled, scale, .. } => Json::String(decimal_text(unscaled, scale)),
            Cell::Text(s) | Cell::Uuid(s) => Json::String(s),
            Cell::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        },
    };
    Ok(())
}

fn twos_complement_i128(b: &[u8]) -> Option<i128> {
    if b.is_empty() {
        return Some(0);
    }
    if b.len() > 16 {
        return None;
    }
    let fill = if b[0] & 0x80 != 0 { 0xFF } else { 0 };
    let mut full = [fill; 16];
    full[16 - b.len()..].copy_from_slice(b);
    Some(i128::from_be_bytes(full))
}

/// A decimal of more than 38 digits as text, by long division.
fn big_decimal_text(b: &[u8], scale: usize) -> String {
    let negative = b.first().is_some_and(|x| x & 0x80 != 0);
    let mut mag: Vec<u8> = b.to_vec();
    if negative {
        // Two's complement negate: invert and add one.
        for x in mag.iter_mut() {
            *x = !*x;
        }
        for x in mag.iter_mut().rev() {
            let (v, carry) = x.overflowing_add(1);
            *x = v;
            if !carry {
                break;
            }
        }
    }
    // Nine digits per pass over the bytes, skipping leading zero bytes
    // (the precision bounds the length, so this stays small).
    const CHUNK: u64 = 1_000_000_000;
    let mut digits = Vec::new();
    let mut start = 0;
    while start < mag.len() {
        let mut rem: u64 = 0;
        for x in mag[start..].iter_mut() {
            let cur = (rem << 8) | u64::from(*x);
            *x = (cur / CHUNK) as u8;
            rem = cur % CHUNK;
        }
        while start < mag.len() && mag[start] == 0 {
            start += 1;
        }
        for _ in 0..9 {
            digits.push(b'0' + (rem % 10) as u8);
            rem /= 10;
            if rem == 0 && start == mag.len() {
                break;
            }
        }
    }
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let s = String::from_utf8(digits).unwrap_or_default();
    let (int, frac) = s.split_at(s.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::value::{put_long, put_str};

    #[test]
    fn a_debezium_sequence_gives_its_last_lsn() {
        assert_eq!(sequence_position(r#"[null,"24023128"]"#), Some(24_023_128));
        assert_eq!(sequence_position(r#"["22","24023128"]"#), Some(24_023_128));
        assert_eq!(sequence_position(r#"["22",null]"#), None);
        assert_eq!(sequence_position("not a sequence"), None);
        assert_eq!(sequence_position(r#"[,"99999999999999999999"]"#), None);
    }

    const SCHEMA: &str = r#"{"type":"record","name":"Envelope","namespace":"w.public.t","fields":[
        {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
            {"name":"id","type":["null","long"],"default":null},
            {"name":"amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":19,"scale":4}],"default":null},
            {"name":"meta","type":["null",{"type":"string","walhouse.type":"json"}],"default":null},
            {"name":"odd_name_1234abcd","type":["null","string"],"default":null,"walhouse.column":"odd name"},
            {"name":"tags","type":["null",{"type":"array","items":["null","string"]}],"default":null}
        ]}],"default":null},
        {"name":"after","type":["null","Value"],"default":null},
        {"name":"source","type":{"type":"record","name":"Source","namespace":"walhouse","fields":[
            {"name":"schema","type":"string"},{"name":"table","type":"string"},
            {"name":"snapshot","type":"string"},{"name":"txId","type":["null","long"]},
            {"name":"lsn","type":["null","long"]},{"name":"ts_ms","type":"long"}]}},
        {"name":"op","type":"string"},
        {"name":"ts_ms","type":["null","long"],"default":null},
        {"name":"unchanged_toast","type":{"type":"array","items":"string"},"default":[]},
        {"name":"text_values","type":{"type":"map","values":"string"},"default":{}}
    ]}"#;

    fn body(op: &str, with_row: bool) -> Vec<u8> {
        let mut b = Vec::new();
        let row = |b: &mut Vec<u8>| {
            put_long(b, 1); // the record branch
            put_long(b, 1);
            put_long(b, 42); // id
            put_long(b, 1);
            put_long(b, 1);
            b.push(0x30); // amount: 48 × 10^-4
            put_long(b, 1);
            put_str(b, "{\"a\":1}"); // meta
            put_long(b, 0); // odd name: null
            put_long(b, 1);
            put_long(b, 1);
            put_long(b, 1);
            put_str(b, "x");
            put_long(b, 0); // tags: one block of one string
        };
        if op == "d" {
            row(&mut b);
            put_long(&mut b, 0);
        } else {
            put_long(&mut b, 0);
            if with_row {
                row(&mut b);
            } else {
                put_long(&mut b, 0);
            }
        }
        put_str(&mut b, "public");
        put_str(&mut b, "t");
        put_str(&mut b, "false");
        put_long(&mut b, 1);
        put_long(&mut b, 777);
        put_long(&mut b, 1);
        put_long(&mut b, 0x1000);
        put_long(&mut b, 1_700_000_000_000);
        put_str(&mut b, op);
        put_long(&mut b, 0);
        put_long(&mut b, 1);
        put_str(&mut b, "meta");
        put_long(&mut b, 0);
        put_long(&mut b, 0);
        b
    }

    #[test]
    fn compiles_columns_with_their_warehouse_types() {
        let plan = EnvelopePlan::compile(SCHEMA).expect("plan");
        let cols: Vec<(&str, &SqlType)> = plan.columns.iter().map(|c| (c.name.as_str(), &c.ty)).collect();
        assert_eq!(
            cols,
            vec![
                ("id", &SqlType::BigInt),
                (
                    "amount",
                    &SqlType::Decimal {
                        precision: 19,
                        scale: 4
                    }
                ),
                ("meta", &SqlType::Json),
                ("odd name", &SqlType::Text),
                ("tags", &SqlType::Json),
            ]
        );
    }

    #[test]
    fn decodes_inserts_and_deletes() {
        let plan = EnvelopePlan::compile(SCHEMA).expect("plan");
        let mut rows = RowBuffer::default();
        let c_body = body("c", true);
        let c = plan.decode(&c_body, &mut rows).expect("decode");
        assert_eq!(c.op, "c");
        assert_eq!((c.schema, c.table), ("public", "t"));
        assert_eq!(
            (c.tx_id, c.lsn, c.commit_ts_ms),
            (Some(777), Some(0x1000), Some(1_700_000_000_000))
        );
        assert_eq!(c.unchanged_toast, vec!["meta".to_string()]);
        assert!(c.has_row);
        let expected = vec![
            Cell::Long(42),
            Cell::Decimal {
                unscaled: 48,
                precision: 19,
                scale: 4,
            },
            Cell::Text("{\"a\":1}".into()),
            Cell::Null,
            Cell::Text("[\"x\"]".into()),
        ];
        assert_eq!(rows.cells, expected);
        // The same buffer again, as the sink uses it: cells of other
        // values (and other kinds) are overwritten, not kept.
        rows.cells[0] = Cell::Text("stale".into());
        rows.cells[3] = Cell::Text("stale".into());
        rows.cells.push(Cell::Text("the caller's".into()));
        let d_body = body("d", true);
        let d = plan.decode(&d_body, &mut rows).expect("decode");
        assert!(d.has_row);
        assert_eq!(rows.cells[..5], expected[..]);
        assert_eq!(rows.cells[5], Cell::Text("the caller's".into()));
        let t_body = body("t", false);
        let t = plan.decode(&t_body, &mut rows).expect("decode");
        assert!(!t.has_row);
        // A delete first into a fresh buffer (the first record after a
        // restart): its row is the `before`. It was all NULL once, the
        // swap skipped for want of cells to swap with.
        let mut fresh = RowBuffer::default();
        let d = plan.decode(&d_body, &mut fresh).expect("decode");
        assert!(d.has_row);
        assert_eq!(fresh.cells[..5], expected[..]);
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        let plan = EnvelopePlan::compile(SCHEMA).expect("plan");
        let full = body("c", true);
        for n in 0..full.len() {
            assert!(
                plan.decode(&full[..n], &mut RowBuffer::default()).is_err(),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn other_schemas_are_refused() {
        assert!(matches!(
            EnvelopePlan::compile(r#"{"type":"record","name":"X","fields":[{"name":"a","type":"int"}]}"#),
            Err(ReadError::NotAnEnvelope(_))
        ));
        assert!(EnvelopePlan::compile("not json").is_err());
    }

    #[test]
    fn wide_decimals_become_exact_text() {
        assert_eq!(big_decimal_text(&[0x01, 0x00], 1), "25.6");
        assert_eq!(big_decimal_text(&[0xFF, 0x00], 2), "-2.56");
        assert_eq!(twos_complement_i128(&[0xFF]), Some(-1));
        let mut wide = vec![0u8; 20];
        wide[19] = 5;
        assert_eq!(big_decimal_text(&wide, 0), "5");
    }

    /// The digit-at-a-time division this replaced, as the reference.
    fn reference_decimal_text(b: &[u8], scale: usize) -> String {
        let negative = b.first().is_some_and(|x| x & 0x80 != 0);
        let mut mag: Vec<u8> = b.to_vec();
        if negative {
            for x in mag.iter_mut() {
                *x = !*x;
            }
            for x in mag.iter_mut().rev() {
                let (v, carry) = x.overflowing_add(1);
                *x = v;
                if !carry {
                    break;
                }
            }
        }
        let mut digits = Vec::new();
        while mag.iter().any(|x| *x != 0) {
            let mut rem: u32 = 0;
            for x in mag.iter_mut() {
                let cur = (rem << 8) | u32::from(*x);
                *x = (cur / 10) as u8;
                rem = cur % 10;
            }
            digits.push(b'0' + rem as u8);
        }
        while digits.len() <= scale {
            digits.push(b'0');
        }
        digits.reverse();
        let s = String::from_utf8(digits).unwrap_or_default();
        let (int, frac) = s.split_at(s.len() - scale);
        let sign = if negative { "-" } else { "" };
        if scale == 0 {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    }

    #[test]
    fn big_decimals_match_the_reference_division() {
        // A small linear congruential sequence: many lengths, both signs,
        // leading zero bytes, zero itself.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..60usize {
            for round in 0..8 {
                let mut b = Vec::with_capacity(len);
                for _ in 0..len {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    b.push((x >> 56) as u8);
                }
                if round == 1 && len > 2 {
                    b[0] = 0;
                    b[1] = 0;
                }
                if round == 2 {
                    b.iter_mut().for_each(|v| *v = 0);
                }
                for scale in [0, 3, 30] {
                    assert_eq!(
                        big_decimal_text(&b, scale),
                        reference_decimal_text(&b, scale),
                        "{b:?} scale {scale}"
                    );
                }
            }
        }
    }

    /// Each named type refers to the previous one twice: 2^40 types once
    /// expanded, in a schema of about 3 KB.
    fn doubling_schema(levels: usize) -> String {
        let mut types = vec![r#"{"type":"record","name":"T0","fields":[{"name":"x","type":"null"}]}"#.to_string()];
        for i in 1..=levels {
            types.push(format!(
                r#"{{"type":"record","name":"T{i}","fields":[{{"name":"a","type":"T{p}"}},{{"name":"b","type":"T{p}"}}]}}"#,
                p = i - 1
            ));
        }
        let fields: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!(r#"{{"name":"f{i}","type":{t}}}"#))
            .collect();
        format!(
            r#"{{"type":"record","name":"Envelope","fields":[{}]}}"#,
            fields.join(",")
        )
    }

    #[test]
    fn a_schema_that_expands_without_bound_is_refused_at_once() {
        let started = std::time::Instant::now();
        let err = EnvelopePlan::compile(&doubling_schema(40)).expect_err("refused");
        assert!(err.to_string().contains("expanded"), "{err}");
        // Before, named types were deep-copied at each use: memory and time
        // doubled per level.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(EnvelopePlan::compile(&doubling_schema(5)).is_err_and(|e| !e.to_string().contains("expanded")));
    }

    #[test]
    fn array_items_that_take_no_bytes_are_refused() {
        let schema = SCHEMA.replace(
            r#"{"type":"array","items":"string"}"#,
            r#"{"type":"array","items":"null"}"#,
        );
        let plan = EnvelopePlan::compile(&schema).expect("plan");
        let mut b = body("c", true);
        // The unchanged_toast array, near the end: blocks of nulls, each
        // count within the bytes left (which is all a count was checked
        // against), so a message of n bytes held about n^2 items.
        let at = b.len() - 2;
        b.truncate(at);
        for _ in 0..4 {
            put_long(&mut b, 8);
        }
        put_long(&mut b, 0);
        put_long(&mut b, 0);
        let err = plan.decode(&b, &mut RowBuffer::default()).expect_err("refused");
        assert!(err.to_string().contains("no bytes"), "{err}");
    }

    #[test]
    fn a_decimal_longer_than_its_precision_is_refused() {
        let plan = EnvelopePlan::compile(SCHEMA).expect("plan");
        let b = body("c", true);
        // amount: 1 byte (0x30) after its length 1 (zigzag 2); make it 40 bytes.
        let at = b.windows(2).position(|w| w == [0x02, 0x30]).expect("amount");
        let mut wide = b[..at].to_vec();
        put_long(&mut wide, 40);
        wide.extend(std::iter::repeat_n(0x11, 40));
        wide.extend(&b[at + 2..]);
        let err = plan.decode(&wide, &mut RowBuffer::default()).expect_err("refused");
        assert!(err.to_string().contains("precision"), "{err}");
    }
}
