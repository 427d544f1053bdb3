//! Where captured changes go.
//!
//! # The delivery contract
//! The capture loop tells a destination about each table shape
//! ([`Destination::relation`]) before its changes, calls
//! [`Destination::send`] for each change in WAL order and
//! [`Destination::end_transaction`] at each commit. A destination may
//! buffer and deliver asynchronously; [`Destination::durable`] tells how
//! far it is durable, and the capture loop acknowledges to Postgres exactly
//! that LSN and nothing more. Delivery is at least once: after a crash,
//! changes past the durable LSN are sent again.
//!
//! # Encoding off the capture loop
//! A destination may offer a [`RowEncoder`] per table: the initial
//! snapshot's copy workers then encode rows in parallel where they read
//! them, and the capture loop only hands the finished [`EncodedRows`] over
//! ([`Destination::send_encoded`]), in the same order it would have sent
//! the rows. One core then no longer bounds the snapshot.

pub mod kafka;
pub mod stdout;

use std::sync::Arc;

use crate::capture::change::{ChangeEvent, SnapshotMark, TxInfo};
use crate::postgres::catalog::RelationCache;
use crate::postgres::pgoutput::Relation;
use crate::postgres::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing to {target}: {source}")]
    Io {
        target: &'static str,
        source: std::io::Error,
    },
    #[error("encoding the change at {lsn}: {source}")]
    Encode { lsn: Lsn, source: serde_json::Error },
    #[error("table {table}: the schema registry refused its new schema ({columns}): {message}. Nothing past this change was acknowledged. Fix: make the change compatible (e.g. add a column instead of retyping one), or relax the subject's compatibility (PUT /config/{subject}), then restart")]
    Incompatible {
        table: String,
        subject: String,
        columns: String,
        message: String,
    },
    #[error("schema registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("Kafka: {0}. Nothing past the last acknowledged LSN was confirmed to Postgres; a restart resumes there")]
    Kafka(String),
    #[error("encoded rows were handed to a destination that offers no row encoder (a walhouse bug)")]
    NoRowEncoder,
    #[error("reading the catalog of the source: {0}")]
    Catalog(#[from] crate::postgres::SourceError),
    #[error("Kafka topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// Encodes snapshot reads of one table, on any thread.
pub trait RowEncoder: Send + Sync {
    /// The topic of the table's records.
    fn topic(&self) -> &Arc<str>;

    /// Appends the record of `event` (an insert marked as a snapshot read)
    /// to `out`. False: the row cannot be encoded here (its key does not
    /// encode); it must go through [`Destination::send`], which knows where
    /// such rows go.
    fn encode(&self, event: &ChangeEvent<'_>, now_ms: i64, out: &mut EncodedRows) -> bool;
}

/// Records of one topic, encoded, in one buffer (no allocation per record).
#[derive(Debug)]
pub struct EncodedRows {
    pub topic: Arc<str>,
    pub(crate) buf: Vec<u8>,
    /// Per record: start, end of its key (= start: no key), end.
    pub(crate) spans: Vec<(usize, usize, usize)>,
    /// The encoder's bytes shared by the records of one transaction (for
    /// Avro: the `source` head), with what they were made for.
    pub(crate) shared: Vec<u8>,
    pub(crate) shared_for: Option<(Lsn, TxInfo, Option<SnapshotMark>)>,
}

impl EncodedRows {
    pub fn new(topic: Arc<str>, records: usize) -> Self {
        EncodedRows {
            topic,
            buf: Vec::with_capacity(records * 256),
            spans: Vec::with_capacity(records),
            shared: Vec::new(),
            shared_for: None,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// `(key, value)` of each record, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&[u8]>, &[u8])> {
        self.spans.iter().map(|&(start, key_end, end)| {
            (
                (key_end > start).then(|| &self.buf[start..key_end]),
                &self.buf[key_end..end],
            )
        })
    }
}

/// What a destination reports for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestinationStats {
    pub in_flight: u64,
    pub bytes_sent: u64,
    pub registry_calls: u64,
}

#[allow(async_fn_in_trait)]
pub trait Destination {
    /// The source's database system identifier, before any event: the
    /// scope of the positions records carry.
    fn system_id(&mut self, _system_id: &str) {}

    /// Gets ready for the published `tables` before anything is read (a
    /// Kafka topic that cannot be had stops capture here, at start).
    async fn prepare(&mut self, _tables: &[crate::postgres::publication::TableName]) -> Result<(), OutputError> {
        Ok(())
    }

    /// A table's shape, sent before its first change and after each change
    /// of shape. `cache` holds the type and column facts of the catalog.
    async fn relation(&mut self, _relation: &Arc<Relation>, _cache: &RelationCache) -> Result<(), OutputError> {
        Ok(())
    }

    /// An encoder for snapshot reads of `relation` that copy workers may
    /// run in parallel, or `None`: rows are then sent one by one.
    fn row_encoder(&self, _relation: &Relation) -> Option<Arc<dyn RowEncoder>> {
        None
    }

    /// Hands over snapshot reads encoded by this destination's
    /// [`row_encoder`](Self::row_encoder), as one unit of `send`s.
    async fn send_encoded(&mut self, _rows: &EncodedRows) -> Result<(), OutputError> {
        Err(OutputError::NoRowEncoder)
    }

    /// Hands over one change.
    async fn send(&mut self, event: &ChangeEvent<'_>) -> Result<(), OutputError>;

    /// Marks the end of a transaction (or a non-transactional message) whose
    /// acknowledgement LSN is `ack_lsn`.
    async fn end_transaction(&mut self, ack_lsn: Lsn) -> Result<(), OutputError>;

    /// Forgets a transaction cut off by a lost source connection: it will be
    /// sent again whole, so it must not be acknowledged.
    fn abandon_transaction(&mut self) {}

    /// Highest LSN up to which everything handed over is durable, or the
    /// error that keeps anything further from becoming durable.
    fn durable(&self) -> Result<Lsn, OutputError>;

    /// True while the destination holds as much undelivered data as it
    /// may: the capture loop stops reading the slot (backpressure).
    fn is_full(&self) -> bool {
        false
    }

    /// Resolves when delivery made progress (never, for synchronous ones).
    async fn progressed(&self) {
        std::future::pending::<()>().await
    }

    /// For metrics: events not yet durable, bytes sent, registry calls.
    fn stats(&self) -> DestinationStats {
        DestinationStats::default()
    }

    /// Makes everything handed over durable, bounded in time (clean stop).
    async fn flush(&mut self) -> Result<(), OutputError>;
}
