//! Change events to Kafka records: topic, key and value in the Confluent
//! wire format, with schemas registered as table shapes arrive.
//!
//! Separate from the producer so encoding can be measured and reused on
//! its own (the benchmark runs capture with encoding but no producer).

use std::collections::HashMap;
use std::sync::Arc;

use crate::avro::types::NumericMode;
use crate::avro::writer::{Op, SourceInfo, TableEnvelope};
use crate::capture::destination::{EncodedRows, OutputError, RowEncoder};
use crate::change::{ChangeEvent, ChangeKind};
use crate::postgres::catalog::RelationCache;
use crate::postgres::pgoutput::{Relation, Tuple};
use crate::registry::{wire_header, Registry, RegistryError};

/// A table's envelope with its registered schema ids; shared with the
/// snapshot's copy workers, which encode with it on their own threads.
struct TableState {
    envelope: TableEnvelope,
    topic: Arc<str>,
    key_id: Option<u32>,
    value_id: u32,
    prefix: Arc<str>,
    db: Arc<str>,
}

impl TableState {
    fn source(&self) -> SourceInfo<'_> {
        SourceInfo {
            version: env!("CARGO_PKG_VERSION"),
            name: &self.prefix,
            db: &self.db,
        }
    }

    /// Writes the wire-format key of `tuple` to `key` (false: the table has
    /// no key) and the value of `op` to `value`.
    fn encode(
        &self,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        now_ms: i64,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<bool, Unkeyable> {
        wire_header(self.value_id, value);
        self.envelope.encode_value(event, op, &self.source(), now_ms, value);
        let key_tuple: Option<&Tuple> = match op {
            Op::Create(t) | Op::Read(t) | Op::Delete(t) => Some(t),
            Op::Update { after, .. } => Some(after),
            Op::Truncate => None,
        };
        match (key_tuple, self.key_id) {
            (Some(t), Some(id)) => {
                wire_header(id, key);
                self.envelope.encode_key(t, key).map_err(|e| Unkeyable {
                    topic: self.envelope.topic.clone(),
                    reason: e.to_string(),
                })
            }
            _ => Ok(false),
        }
    }
}

impl RowEncoder for TableState {
    fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    fn encode(&self, event: &ChangeEvent<'_>, now_ms: i64, out: &mut EncodedRows) -> bool {
        let ChangeKind::Insert { new, .. } = &event.kind else {
            return false;
        };
        // Key then value, straight into the shared buffer.
        let start = out.buf.len();
        if let Some(id) = self.key_id {
            wire_header(id, &mut out.buf);
            if !matches!(self.envelope.encode_key(new, &mut out.buf), Ok(true)) {
                out.buf.truncate(start);
                return false;
            }
        }
        let key_end = out.buf.len();
        wire_header(self.value_id, &mut out.buf);
        match event.tx {
            Some(tx) => {
                let this = Some((event.lsn, *tx, event.snapshot));
                if out.shared_for != this {
                    out.shared.clear();
                    self.envelope
                        .encode_source_head(event, &self.source(), now_ms, &mut out.shared);
                    out.shared_for = this;
                }
                self.envelope
                    .encode_value_with_head(event, Op::Read(new), &out.shared, now_ms, &mut out.buf);
            }
            None => self
                .envelope
                .encode_value(event, Op::Read(new), &self.source(), now_ms, &mut out.buf),
        }
        out.spans.push((start, key_end, out.buf.len()));
        true
    }
}

/// One encoded record, borrowed from the encoder's buffers.
#[derive(Debug)]
pub struct Encoded<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// A change that cannot be keyed (the value never fails: what Avro cannot
/// hold travels as text).
#[derive(Debug)]
pub struct Unkeyable {
    pub topic: String,
    pub reason: String,
}

pub struct RecordEncoder {
    registry: Arc<Registry>,
    prefix: Arc<str>,
    db: Arc<str>,
    numeric_mode: NumericMode,
    tables: HashMap<u32, Arc<TableState>>,
    key: Vec<u8>,
    value: Vec<u8>,
    transaction_ids: Option<(u32, u32)>,
}

impl RecordEncoder {
    pub fn new(registry: Arc<Registry>, prefix: &str, db: &str, numeric_mode: NumericMode) -> Self {
        RecordEncoder {
            registry,
            prefix: prefix.into(),
            db: db.into(),
            numeric_mode,
            tables: HashMap::new(),
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(1024),
            transaction_ids: None,
        }
    }

    /// Key and value schema ids of the transaction topic (registered once).
    pub async fn transaction_schema_ids(&mut self, topic: &str) -> Result<(u32, u32), OutputError> {
        if let Some(ids) = self.transaction_ids {
            return Ok(ids);
        }
        let (key, value) = crate::avro::writer::transaction_schemas();
        let key_id = self.register(&format!("{topic}-key"), &key, topic, &[]).await?;
        let value_id = self.register(&format!("{topic}-value"), &value, topic, &[]).await?;
        self.transaction_ids = Some((key_id, value_id));
        Ok((key_id, value_id))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Builds the table's envelope and registers its schemas when they
    /// changed; returns its topic.
    pub async fn relation(&mut self, relation: &Arc<Relation>, cache: &RelationCache) -> Result<String, OutputError> {
        let envelope = TableEnvelope::new(
            &self.prefix,
            relation,
            cache.column_infos(relation.id),
            self.numeric_mode,
            &|oid| cache.type_info(oid),
        );
        if let Some(old) = self.tables.get(&relation.id) {
            if old.envelope.value_schema == envelope.value_schema && old.envelope.key_schema == envelope.key_schema {
                return Ok(envelope.topic);
            }
        }
        let table = format!("{}.{}", relation.namespace, relation.name);
        let changed = self
            .tables
            .get(&relation.id)
            .map(|old| old.envelope.changed_columns(&envelope))
            .unwrap_or_default();
        if envelope.key_schema.is_none() {
            tracing::warn!(
                %table,
                "table has no primary key: its events get a null key, so Kafka spreads them over partitions \
                 without per-row order. Fix: add a primary key (or REPLICA IDENTITY USING INDEX on a unique index)"
            );
        }
        let value_id = self
            .register(
                &format!("{}-value", envelope.topic),
                &envelope.value_schema,
                &table,
                &changed,
            )
            .await?;
        let key_id = match &envelope.key_schema {
            Some(k) => Some(
                self.register(&format!("{}-key", envelope.topic), k, &table, &changed)
                    .await?,
            ),
            None => None,
        };
        tracing::info!(%table, topic = %envelope.topic, value_id, ?key_id, "schema registered");
        let topic = envelope.topic.clone();
        self.tables.insert(
            relation.id,
            Arc::new(TableState {
                topic: topic.as_str().into(),
                envelope,
                key_id,
                value_id,
                prefix: self.prefix.clone(),
                db: self.db.clone(),
            }),
        );
        Ok(topic)
    }

    /// The encoder of snapshot reads of `relation_id`, for copy workers.
    pub fn row_encoder(&self, relation_id: u32) -> Option<Arc<dyn RowEncoder>> {
        self.tables.get(&relation_id).map(|t| t.clone() as Arc<dyn RowEncoder>)
    }

    async fn register(
        &self,
        subject: &str,
        schema: &serde_json::Value,
        table: &str,
        columns: &[String],
    ) -> Result<u32, OutputError> {
        self.registry
            .register(subject, &schema.to_string())
            .await
            .map_err(|e| match e {
                RegistryError::Incompatible { subject, message } => OutputError::Incompatible {
                    table: table.into(),
                    subject,
                    columns: if columns.is_empty() {
                        "no column changed".into()
                    } else {
                        columns.join(", ")
                    },
                    message,
                },
                other => OutputError::Registry(other),
            })
    }

    /// The records an event becomes, as (relation id, op) pairs.
    pub fn ops<'e>(&self, event: &'e ChangeEvent<'e>) -> Result<Vec<(u32, Op<'e>)>, OutputError> {
        let one = |relation: &Relation| -> Result<Vec<(u32, Op<'e>)>, OutputError> {
            let state = self.tables.get(&relation.id).ok_or_else(|| {
                OutputError::Kafka(format!(
                    "no schema for {}.{} (its Relation message was missed)",
                    relation.namespace, relation.name
                ))
            })?;
            Ok(Op::of(event, &state.envelope)
                .into_iter()
                .map(|op| (relation.id, op))
                .collect())
        };
        match &event.kind {
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => one(relation),
            ChangeKind::Truncate { relations, .. } => Ok(relations.iter().map(|r| (r.id, Op::Truncate)).collect()),
            // Logical decoding messages (heartbeats included) are not table
            // data: acknowledged, not produced.
            ChangeKind::Message(_) => Ok(Vec::new()),
        }
    }

    /// Encodes one op of `event` for the table `relation_id`.
    pub fn encode(
        &mut self,
        relation_id: u32,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        now_ms: i64,
    ) -> Result<Encoded<'_>, Unkeyable> {
        let Some(state) = self.tables.get(&relation_id) else {
            return Err(Unkeyable {
                topic: format!("{}.unknown", self.prefix),
                reason: format!("no schema for relation {relation_id}"),
            });
        };
        self.value.clear();
        self.key.clear();
        let has_key = state.encode(event, op, now_ms, &mut self.key, &mut self.value)?;
        Ok(Encoded {
            topic: &state.topic,
            key: has_key.then_some(&self.key[..]),
            value: &self.value,
        })
    }
}
