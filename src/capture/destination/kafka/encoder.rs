//! Change events to Kafka records: topic, key and value in the Confluent
//! wire format, with schemas registered as table shapes arrive. Blind to
//! the format: each table's [`TableFormat`] writes its schemas and
//! records, the encoder registers them and writes the records a
//! [`plan`](crate::capture::format::plan) lists.
//!
//! Separate from the producer so encoding can be measured and reused on
//! its own (the benchmark runs capture with encoding but no producer).

use std::collections::HashMap;
use std::sync::Arc;

use crate::avro::types::NumericMode;
use crate::capture::change::{ChangeEvent, ChangeKind};
use crate::capture::destination::{EncodedRows, OutputError, RowEncoder};
use crate::capture::format::plan::Sequence;
use crate::capture::format::{Format, Op, RecordContext, TableFormat, TableSource};
use crate::postgres::catalog::RelationCache;
use crate::postgres::pgoutput::{Relation, Tuple};
use crate::registry::{wire_header, Registry, RegistryError};

/// A table's shape with its registered schema ids; shared with the
/// snapshot's copy workers, which encode with it on their own threads.
struct TableState {
    format: Box<dyn TableFormat>,
    topic: Arc<str>,
    key_id: Option<u32>,
    value_id: u32,
    prefix: Arc<str>,
    db: Arc<str>,
    system_id: Option<Arc<str>>,
}

impl TableState {
    fn context(&self, now_ms: i64, sequence: Sequence) -> RecordContext<'_> {
        RecordContext {
            name: &self.prefix,
            db: &self.db,
            system_id: self.system_id.as_deref(),
            now_ms,
            last_commit: sequence.last_commit,
            transaction: sequence.transaction,
        }
    }

    /// Writes the wire-format key of `tuple` to `key` (false: the table has
    /// no key) and the value of `op` to `value`.
    fn encode(
        &self,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        now_ms: i64,
        sequence: Sequence,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<bool, Unkeyable> {
        wire_header(self.value_id, value);
        self.format
            .encode_value(event, op, &self.context(now_ms, sequence), value);
        let key_tuple: Option<&Tuple> = match op {
            Op::Create(t) | Op::Read(t) | Op::Delete(t) => Some(t),
            Op::Update { after, .. } => Some(after),
            Op::Truncate => None,
        };
        match key_tuple {
            Some(t) => self.encode_key(t, key),
            None => Ok(false),
        }
    }

    /// The wire-format key of `tuple` (false: the table has no key).
    fn encode_key(&self, tuple: &Tuple, key: &mut Vec<u8>) -> Result<bool, Unkeyable> {
        let Some(id) = self.key_id else { return Ok(false) };
        wire_header(id, key);
        self.format.encode_key(tuple, key).map_err(|reason| Unkeyable {
            topic: self.topic.to_string(),
            reason,
        })
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
        if self.key_id.is_some() && !matches!(self.encode_key(new, &mut out.buf), Ok(true)) {
            out.buf.truncate(start);
            return false;
        }
        let key_end = out.buf.len();
        wire_header(self.value_id, &mut out.buf);
        // Snapshot reads belong to no transaction of this run.
        self.format
            .encode_read(event, new, &self.context(now_ms, Sequence::default()), out);
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
    /// The source's system identifier, once capture has asked for it.
    system_id: Option<Arc<str>>,
    numeric_mode: NumericMode,
    format: Format,
    toast_placeholder: String,
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
            system_id: None,
            numeric_mode,
            format: Format::default(),
            toast_placeholder: crate::capture::config::DEFAULT_TOAST_PLACEHOLDER.into(),
            tables: HashMap::new(),
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(1024),
            transaction_ids: None,
        }
    }

    /// Writes `format` instead of walhouse's, with `toast_placeholder` for
    /// unchanged TOAST values in the Debezium format.
    pub fn with_format(mut self, format: Format, toast_placeholder: &str) -> Self {
        self.format = format;
        self.toast_placeholder = toast_placeholder.to_owned();
        self
    }

    /// The source's database system identifier, written into every record
    /// of walhouse's format from now on. Another one (capture pointed at
    /// another system) makes every table's record state anew.
    pub fn set_system_id(&mut self, system_id: &str) {
        if self.system_id.as_deref() != Some(system_id) {
            self.system_id = Some(system_id.into());
            self.tables.clear();
        }
    }

    /// Key and value schema ids of the transaction topic (registered once).
    pub async fn transaction_schema_ids(&mut self, topic: &str) -> Result<(u32, u32), OutputError> {
        if let Some(ids) = self.transaction_ids {
            return Ok(ids);
        }
        let (key, value) = self.format.transaction_schemas();
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
        let lookup = |oid| cache.type_info(oid);
        let format = self.format.table(TableSource {
            prefix: &self.prefix,
            relation,
            column_infos: cache.column_infos(relation.id),
            numeric_mode: self.numeric_mode,
            toast_placeholder: &self.toast_placeholder,
            lookup: &lookup,
        });
        if let Some(old) = self.tables.get(&relation.id) {
            if (old.format.key_schema(), old.format.value_schema()) == (format.key_schema(), format.value_schema()) {
                return Ok(format.topic().to_owned());
            }
        }
        let table = format!("{}.{}", relation.namespace, relation.name);
        let changed = self
            .tables
            .get(&relation.id)
            .map(|old| old.format.changed_columns(format.as_ref()))
            .unwrap_or_default();
        let (key_schema, value_schema) = (format.key_schema(), format.value_schema());
        let topic = format.topic().to_owned();
        if key_schema.is_none() {
            tracing::warn!(
                %table,
                "table has no primary key: its events get a null key, so Kafka spreads them over partitions \
                 without per-row order. Fix: add a primary key (or REPLICA IDENTITY USING INDEX on a unique index)"
            );
        }
        let value_id = self
            .register(&format!("{topic}-value"), value_schema, &table, &changed)
            .await?;
        let key_id = match key_schema {
            Some(k) => Some(self.register(&format!("{topic}-key"), k, &table, &changed).await?),
            None => None,
        };
        tracing::info!(%table, %topic, value_id, ?key_id, "schema registered");
        self.tables.insert(
            relation.id,
            Arc::new(TableState {
                topic: topic.as_str().into(),
                format,
                key_id,
                value_id,
                prefix: self.prefix.clone(),
                db: self.db.clone(),
                system_id: self.system_id.clone(),
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
            Ok(Op::of(event, |a, b| state.format.key_changed(a, b))
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

    /// Encodes one op of `event` for the table `relation_id`, at its place
    /// in the run.
    pub fn encode(
        &mut self,
        relation_id: u32,
        event: &ChangeEvent<'_>,
        op: Op<'_>,
        now_ms: i64,
        sequence: Sequence,
    ) -> Result<Encoded<'_>, Unkeyable> {
        let Some(state) = self.tables.get(&relation_id) else {
            return Err(Unkeyable {
                topic: format!("{}.unknown", self.prefix),
                reason: format!("no schema for relation {relation_id}"),
            });
        };
        self.value.clear();
        self.key.clear();
        let has_key = state.encode(event, op, now_ms, sequence, &mut self.key, &mut self.value)?;
        Ok(Encoded {
            topic: &state.topic,
            key: has_key.then_some(&self.key[..]),
            value: &self.value,
        })
    }

    /// The wire-format key of `tuple` in `relation_id`'s topic, for the
    /// Debezium format's old-key and new-key headers.
    pub fn key_of(&self, relation_id: u32, tuple: &Tuple) -> Option<Vec<u8>> {
        let state = self.tables.get(&relation_id)?;
        let mut key = Vec::new();
        matches!(state.encode_key(tuple, &mut key), Ok(true)).then_some(key)
    }
}
