//! The sink: Kafka → warehouse, exactly once.
//!
//! Each partition's next offset lives in the warehouse (`walhouse.offsets`)
//! and is moved in the same transaction as the rows of the batch. On start,
//! on every assignment and after a fenced write, the consumer is positioned
//! at the stored offsets; messages below them are skipped. Kafka's own
//! committed offsets are written after each batch for monitoring only.
//!
//! What cannot be a row goes to `walhouse.dead_letters` with the reason, in
//! the same transaction, and its offset moves on like any other.

mod batch;
mod clock;
pub mod companies;
pub mod config;
mod decode;
pub mod envelope;
mod error;
pub mod insolvency;
pub mod metrics;
mod position;
pub mod tables;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

pub use self::clock::now_micros;
pub use self::error::SinkError;
pub use self::tables::{kafka_columns, KAFKA_COLUMNS};

use self::batch::{Pending, Settled, Writer};
use self::config::{ConsumeSettings, OffsetGap, SinkConfig};
use self::decode::{Decoder, Outcome, Planned, Target, COMPANIES};
use self::envelope::{EnvelopePlan, RowBuffer};
use self::error::{consumer_error, kafka};
use self::metrics::{SinkMetrics, Stage};
use self::position::{Gap, Positions, SinkContext};
use self::tables::{cdc_table_def, raw_schema, TableError, Tables};
use crate::registry::Registry;
use crate::topics::{Rule, TopicEnd};
use crate::warehouse::{
    Cell, ColumnDef, DeadLetter, Failure, Mark, Origin, OriginRef, SourcePosition, TableRef, Warehouse,
};

/// Runs the sink as configured until `shutdown` says stop: opens the
/// warehouse its URL names, serves `/metrics` and `/health` when asked,
/// then consumes. The one entry point of the binary, the tests and the demo.
pub async fn start(
    config: SinkConfig,
    metrics: Arc<SinkMetrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SinkError> {
    let settings = config.consume.clone();
    let warehouse = config.warehouse.open().await?;
    if let crate::warehouse::AnyWarehouse::Iceberg(w) = &warehouse {
        metrics.watch_iceberg(w.counts());
    }
    let _server = match settings.metrics_addr {
        Some(addr) => Some(
            crate::metrics::serve(addr, metrics.clone())
                .await
                .map_err(|source| SinkError::Metrics { addr, source })?,
        ),
        None => None,
    };
    Sink::new(settings, warehouse, metrics).await?.run(shutdown).await
}

/// How much librdkafka fetches ahead, and how soon it fetches again
/// (each overridable by `--kafka-option`). Its defaults suit a consumer
/// that takes one message at a time: once a partition's queue is full it
/// waits 1 s before the next fetch (`fetch.queue.backoff.ms`), which a
/// sink draining whole batches spent idle, half its time on 1M records;
/// and it queues up to 100k messages or 64 MiB per partition, at several
/// hundred bytes of bookkeeping per message. These keep the queue fed and
/// bounded: refilled below 2,500 messages, at most 2 MiB queued and 512 KiB
/// fetched per partition, 2 MiB per fetch response. Measured on 1M records
/// (`cargo bench --bench sink`): the rate of settings four times larger,
/// and half the peak RSS on 4 partitions (fetch responses, decompressed,
/// are most of it: 204 MiB at 2 MiB a partition and 8 MiB a response).
pub const PREFETCH: &[(&str, &str)] = &[
    ("fetch.queue.backoff.ms", "10"),
    ("queued.min.messages", "2500"),
    ("queued.max.messages.kbytes", "2048"),
    ("max.partition.fetch.bytes", "524288"),
    ("fetch.max.bytes", "2097152"),
];

/// walhouse's own schema in the warehouse: never a source's.
const STATE_SCHEMA: &str = "walhouse";

/// The rule the topics of records in `plan`'s format are named by.
fn topic_rule(plan: &EnvelopePlan) -> Rule {
    if plan.is_debezium() {
        Rule::Debezium
    } else {
        Rule::Walhouse
    }
}

/// Why a change of another source system than the one that wrote its
/// partition's mark is a dead letter, with the fix.
fn foreign_change(at: &position::Partition, change: Mark, mark: Mark, group: &str) -> String {
    let system = |m: Mark| m.system_id.map_or_else(|| "?".into(), |s| s.to_string());
    format!(
        "a change of database system {} at {}, but {}[{}]'s high-water mark ({}) was written by system {}: \
         positions of two systems do not compare, so the change is refused rather than measured against the \
         mark or moving it. Two databases write under one topic prefix, or the source was replaced by another \
         system. Fix: give each database its own --topic-prefix; if the source was replaced on purpose, stop \
         the sink and reset the mark: UPDATE walhouse.offsets SET high_commit_lsn = NULL, high_tx_ordinal = \
         NULL, high_system_id = NULL WHERE consumer_group = {} AND topic = {} AND \"partition\" = {}",
        system(change),
        change.position,
        at.0,
        at.1,
        mark.position,
        system(mark),
        crate::quote::literal(group),
        crate::quote::literal(&at.0),
        at.1
    )
}

/// A table or view definition the warehouse refuses (an incompatible
/// change, a name it cannot hold) stops only its topic: `Ok(Err(stop))`.
/// A failing warehouse stops the sink.
fn refused_definition<T>(made: Result<T, TableError>) -> Result<Result<T, Outcome>, SinkError> {
    match made {
        Ok(v) => Ok(Ok(v)),
        Err(e @ TableError::Incompatible { .. }) => Ok(Err(Outcome::Stop(e.to_string()))),
        Err(TableError::Warehouse(e)) if e.failure() != Failure::Io => Ok(Err(Outcome::Stop(format!(
            "{e}. Fix: make the warehouse accept the definition (a name or type it refuses, an object in the way), \
             then restart the sink"
        )))),
        Err(e) => Err(e.into()),
    }
}

/// Creates walhouse's tables in the warehouse, the raw tables of company
/// events and insolvencies, and the views over them.
pub async fn prepare<W: Warehouse>(w: &mut W, tables: &mut Tables) -> Result<(), SinkError> {
    w.prepare().await?;
    tables.ensure(w, &companies::table_def()).await?;
    tables.ensure(w, &insolvency::table_def()).await?;
    w.define_views(
        &companies::table_def().table,
        &tables::statements(&tables::companies_latest_sql()),
    )
    .await?;
    Ok(())
}

/// A consumed message, copied out of the consumer's buffer.
#[derive(Default)]
struct Record {
    /// Topic and partition.
    at: position::Partition,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl Record {
    /// Copies `m` in, reusing this record's buffers (no allocation per
    /// message once they are large enough).
    fn fill(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        fn copy(to: &mut Option<Vec<u8>>, from: Option<&[u8]>) {
            match (to.as_mut(), from) {
                (Some(buf), Some(bytes)) => {
                    buf.clear();
                    buf.extend_from_slice(bytes);
                }
                (None, Some(bytes)) => *to = Some(bytes.to_vec()),
                (_, None) => *to = None,
            }
        }
        if self.at.0 != m.topic() {
            self.at.0.clear();
            self.at.0.push_str(m.topic());
        }
        self.at.1 = m.partition();
        self.offset = m.offset();
        copy(&mut self.key, m.key());
        copy(&mut self.payload, m.payload());
    }
}

/// The consume loop. Its three parts: where each partition is read from
/// ([`position`]), what each record becomes ([`decode`]) and the batch
/// being gathered and written ([`batch`]); the loop itself owns the
/// warehouse DDL that a new writer schema needs.
pub struct Sink<W: Warehouse> {
    settings: ConsumeSettings,
    dialect: crate::warehouse::Dialect,
    consumer: StreamConsumer<SinkContext>,
    metrics: Arc<SinkMetrics>,
    positions: Positions,
    decoder: Decoder,
    writer: Writer<W>,
    pending: Pending,
    tables: Tables,
    targets: HashMap<u32, Arc<Target>>,
    companies: Arc<Target>,
    /// Topics paused for good, with the reason.
    stopped: HashMap<String, String>,
    /// Fenced batches so far: a record being handled when one is found
    /// is dropped (it is read again once repositioned).
    fences: u64,
    /// Time spent waiting for the writer, in all (the stages' accounting).
    waited: Duration,
    /// The `_ingested_at` of the records being handled: read once per
    /// burst of received records, not per row (a clock read per row was a
    /// measurable part of decoding).
    ingested_at: i64,
    /// The message being handled, its buffers kept for the next.
    record: Record,
    /// The row being built (see [`Outcome::Row`]), its cells kept for the
    /// next.
    row: RowBuffer,
}

impl<W: Warehouse + Send + 'static> Sink<W> {
    pub async fn new(
        settings: ConsumeSettings,
        mut warehouse: W,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkError> {
        let (brokers, registry) = settings.endpoints()?;
        let brokers = brokers.to_owned();
        let registry = Registry::new(&registry)?;
        registry.check().await?;
        let mut tables = Tables::default();
        prepare(&mut warehouse, &mut tables).await?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Every partition is sought explicitly; a position retention
            // removed meanwhile resets to the earliest, and the jump is
            // then found in `handle` (never skipped silently).
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            // New CDC topics are found by pattern on metadata refresh.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("session.timeout.ms", "10000");
        for (k, v) in PREFETCH {
            config.set(*k, *v);
        }
        for (k, v) in &settings.librdkafka() {
            config.set(k, v);
        }
        let consumer: StreamConsumer<SinkContext> = config
            .create_with_context(SinkContext::default())
            .map_err(kafka("creating the consumer"))?;
        // Fail early and clearly when no broker answers.
        let probe = consumer.client().fetch_metadata(None, Duration::from_secs(15));
        probe.map_err(kafka(&format!("no answer from {brokers}")))?;
        let mut topics = vec![settings.topic_pattern.as_str()];
        if let Some(c) = settings.companies_topic() {
            topics.push(c);
        }
        consumer.subscribe(&topics).map_err(kafka("subscribing"))?;
        tracing::info!(
            warehouse = %warehouse.describe(),
            topics = ?topics,
            group = %settings.group_id,
            "sink started"
        );
        let dialect = warehouse.dialect();
        Ok(Sink {
            dialect,
            writer: Writer::new(warehouse, settings.group_id.clone(), metrics.clone()),
            settings,
            consumer,
            metrics,
            positions: Positions::default(),
            decoder: Decoder::new(registry),
            pending: Pending::new(dialect),
            tables,
            targets: HashMap::new(),
            companies: Arc::new(Target::new(
                COMPANIES,
                Default::default(),
                companies::table(),
                companies::table_def().columns,
            )),
            stopped: HashMap::new(),
            fences: 0,
            waited: Duration::ZERO,
            ingested_at: 0,
            record: Record::default(),
            row: RowBuffer::default(),
        })
    }

    /// Consumes until `shutdown` turns true, then writes what is pending.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
        self.metrics.set_up(true);
        let result = self.consume(&mut shutdown).await;
        self.metrics.set_up(false);
        result
    }

    async fn consume(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), SinkError> {
        loop {
            if *shutdown.borrow() {
                self.flush().await?;
                self.settle().await?;
                tracing::info!("sink stopped");
                return Ok(());
            }
            if self.writer.finished() {
                self.settle().await?;
            }
            if self.positions.apply(self.consumer.context()) {
                self.pending = Pending::new(self.dialect);
            }
            if self.positions.needs_seek() {
                let group = self.settings.group_id.clone();
                let stored = self.warehouse().await?.offsets(&group).await?;
                let skip = self.settings.on_offset_gap == OffsetGap::SkipAndRecord;
                for gap in self.positions.seek(&self.consumer, &stored, &self.stopped, skip)? {
                    let fence = Some(gap.stored);
                    self.offset_gap(gap, fence, skip);
                }
                self.metrics.set_waiting_partitions(self.positions.waiting() as u64);
            }
            let linger = match self.pending.since {
                Some(t) => self.settings.batch_linger(self.dialect).saturating_sub(t.elapsed()),
                None => Duration::from_millis(500),
            };
            let waited = Instant::now();
            let received = tokio::select! {
                m = self.consumer.recv() => Some(m),
                _ = tokio::time::sleep(linger) => None,
                _ = shutdown.changed() => None,
            };
            self.metrics.add_stage(Stage::Receive, waited.elapsed());
            let decoding = Instant::now();
            let waited_before = self.waited;
            match received {
                Some(Ok(m)) => {
                    self.ingested_at = now_micros();
                    self.record.fill(&m);
                    drop(m);
                    self.handle_record().await?;
                    // Take what is already fetched without a timer per
                    // message, up to a batch.
                    while self.pending.rows < self.settings.batch_rows {
                        match self.consumer.recv().now_or_never() {
                            Some(Ok(m)) => {
                                self.record.fill(&m);
                                drop(m);
                                self.handle_record().await?;
                            }
                            Some(Err(e)) => consumer_error(&e),
                            None => break,
                        }
                    }
                }
                Some(Err(e)) => consumer_error(&e),
                None => {}
            }
            // Waits for the writer while decoding (before DDL) count once,
            // as `wait_writer`.
            let waited = self.waited.saturating_sub(waited_before);
            self.metrics
                .add_stage(Stage::Decode, decoding.elapsed().saturating_sub(waited));
            let full = self.pending.rows >= self.settings.batch_rows || self.pending.bytes >= self.settings.batch_bytes;
            let due = self
                .pending
                .since
                .is_some_and(|t| t.elapsed() >= self.settings.batch_linger(self.dialect));
            if full || due {
                self.flush().await?;
            }
        }
    }

    /// Handles `self.record`, whose buffers stay for the next message.
    async fn handle_record(&mut self) -> Result<(), SinkError> {
        let record = std::mem::take(&mut self.record);
        let handled = self.handle(&record).await;
        self.record = record;
        handled
    }

    async fn handle(&mut self, record: &Record) -> Result<(), SinkError> {
        let (at, offset) = (&record.at, record.offset);
        let Some(pos) = self.positions.get(at) else {
            return Ok(()); // read again once positioned
        };
        if offset < pos.next || self.stopped.contains_key(&at.0) {
            return Ok(());
        }
        let (stored, next, high) = (pos.stored, pos.next, pos.high);
        if offset > next && !self.jump(at, next, offset, stored).await {
            return Ok(());
        }
        let fences = self.fences;
        let outcome = self.outcome(record, high).await?;
        if self.fences != fences {
            // A batch was fenced while this record was handled (settled for
            // DDL): every position, this one's too, is read again.
            return Ok(());
        }
        self.apply(record, outcome, stored);
        Ok(())
    }

    /// A jump from offset `next` to `offset`: compaction, or records
    /// deleted before they were read (the consumer then reset to the
    /// earliest offset). Only the earliest offset tells which. Whether the
    /// record at `offset` is handled now.
    async fn jump(&mut self, at: &position::Partition, next: i64, offset: i64, stored: Option<i64>) -> bool {
        let (topic, partition) = (at.0.as_str(), at.1);
        match position::earliest(&self.consumer, topic, partition) {
            Some(earliest) if earliest > next => {
                let skip = self.settings.on_offset_gap == OffsetGap::SkipAndRecord;
                let gap = Gap {
                    partition: at.clone(),
                    stored: next,
                    earliest,
                };
                self.offset_gap(gap, stored, skip);
                skip
            }
            // Compaction: the records between were superseded.
            Some(_) => true,
            None => {
                // Compaction and retention cannot be told apart: the jump
                // is not taken. Every partition is read again from what
                // the warehouse holds (the pending batch with it, as
                // after a rebalance), after a pause, as the earliest
                // offset may be readable by then.
                tracing::warn!(
                    %topic,
                    partition,
                    "the consumer jumped from offset {next} to {offset}, and the partition's earliest offset \
                     cannot be read to tell compaction from deleted records: not taken; reading again from \
                     the warehouse's offsets"
                );
                self.pending = Pending::new(self.dialect);
                self.positions.reposition_all();
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        }
    }

    /// What a record becomes, a row's cells in `self.row`; `high` is its
    /// partition's high-water mark.
    async fn outcome(&mut self, record: &Record, high: Option<Mark>) -> Result<Outcome, SinkError> {
        let topic = record.at.0.as_str();
        let outcome = match &record.payload {
            None if self.is_companies(topic) => Outcome::Dead("empty message (no value)".into()),
            None => Outcome::Skip, // a tombstone: for log compaction, not a change
            Some(p) if self.is_companies(topic) => match companies::parse(p) {
                Ok(cells) => {
                    self.row.cells = cells;
                    Outcome::Row {
                        target: self.companies.clone(),
                        position: None,
                    }
                }
                Err(e) => Outcome::Dead(e),
            },
            Some(p) => self.cdc(topic, p, record.key.as_deref()).await?,
        };
        // Values the target would refuse cost their record here, before
        // the batch (the writer sets aside what gets past this).
        let refused = match &outcome {
            Outcome::Row { target, .. } => self
                .row
                .cells
                .iter()
                .zip(&target.columns)
                .find_map(|(c, col)| self.dialect.refuses(c).map(|r| format!("column {}: {r}", col.name))),
            _ => None,
        };
        if let Some(reason) = refused {
            return Ok(Outcome::Dead(reason));
        }
        // A change of another system than the one that wrote the mark: its
        // position says nothing against the mark, and must not move it.
        // A change at or below the mark was stored already: capture sent it
        // again after a restart.
        Ok(match (outcome, high) {
            (Outcome::Row { position: Some(p), .. }, Some(h))
                if p.system_id.zip(h.system_id).is_some_and(|(a, b)| a != b) =>
            {
                Outcome::Dead(foreign_change(&record.at, p, h, &self.settings.group_id))
            }
            (Outcome::Row { position: Some(p), .. }, Some(h)) if p.position <= h.position => {
                Outcome::Duplicate(p.position)
            }
            (other, _) => other,
        })
    }

    fn is_companies(&self, topic: &str) -> bool {
        self.settings.companies_topic() == Some(topic)
    }

    /// Puts a record's outcome in the pending batch and moves its
    /// partition on (`stored`: the warehouse's offset the batch is fenced
    /// on).
    fn apply(&mut self, record: &Record, outcome: Outcome, stored: Option<i64>) {
        let Record {
            at,
            offset,
            key,
            payload,
        } = record;
        let (topic, partition, offset) = (at.0.as_str(), at.1, *offset);
        let origin = OriginRef {
            source: if self.is_companies(topic) { "companies" } else { "cdc" },
            topic: Some(topic),
            partition: Some(partition),
            offset: Some(offset),
            key: key.as_deref(),
            raw: payload.as_deref(),
            ..OriginRef::default()
        };
        let mut position = None;
        match outcome {
            Outcome::Stop(reason) => {
                self.stop_topic(topic, reason);
                return;
            }
            Outcome::Skip => self.metrics.count_skipped(),
            Outcome::Duplicate(p) => {
                self.metrics.count_duplicate(topic, partition);
                self.positions.skipped(at, offset, p);
            }
            Outcome::Dead(error) => {
                tracing::warn!(%topic, partition, offset, "dead letter: {error}");
                self.pending.dead(DeadLetter {
                    origin: origin.to_owned(),
                    error,
                });
            }
            Outcome::Row {
                target,
                position: at_position,
            } => {
                position = at_position;
                let cells = &mut self.row.cells;
                let kafka = target.columns.len().saturating_sub(KAFKA_COLUMNS.len());
                cells.resize(target.columns.len(), Cell::Null);
                if let Some([t, p, o, ingested]) = cells.get_mut(kafka..) {
                    t.set_text(topic);
                    *p = Cell::Int(partition);
                    *o = Cell::Long(offset);
                    *ingested = Cell::TimestampTz(self.ingested_at);
                }
                if let Err(error) = self.pending.row(&target, cells, origin) {
                    tracing::warn!(%topic, partition, offset, "dead letter: {error}");
                }
            }
        }
        let high = self.positions.advance(at, offset, position);
        self.pending.advance(at, stored, offset, high);
    }

    /// Records deleted from Kafka before they were stored: with `skip`,
    /// a dead letter names the range and the partition goes on from the
    /// earliest offset (in the same batch, fenced on `fence`); otherwise
    /// its topic stops.
    fn offset_gap(&mut self, gap: Gap, fence: Option<i64>, skip: bool) {
        let Gap {
            partition: at,
            stored,
            earliest,
        } = gap;
        let what = format!(
            "{}[{}]: offset {stored}, the next to store, is no longer in Kafka (its earliest is now {earliest}): \
             records {stored}..{} were deleted, by retention, before the sink stored them",
            at.0,
            at.1,
            earliest - 1
        );
        if !skip {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&at.0, at.1);
            let _ = self.consumer.pause(&tpl);
            self.stop_topic(
                &at.0,
                format!(
                    "{what}. Fix: restore them to the warehouse from elsewhere, or restart with \
                     --on-offset-gap skip-and-record to go on from {earliest} with the gap recorded as a dead letter"
                ),
            );
            return;
        }
        tracing::error!("{what}; skipped and recorded in walhouse.dead_letters (--on-offset-gap skip-and-record)");
        self.pending.dead(DeadLetter {
            origin: Origin {
                source: "offset_gap",
                topic: Some(at.0.clone()),
                partition: Some(at.1),
                offset: Some(stored),
                ..Origin::default()
            },
            error: what,
        });
        let high = self.positions.advance(&at, earliest - 1, None);
        self.pending.advance(&at, fence, earliest - 1, high);
    }

    /// Pauses every partition of `topic` for good (until a restart), with why.
    fn stop_topic(&mut self, topic: &str, reason: String) {
        tracing::error!(%topic, "topic stopped: {reason}");
        self.stopped.insert(topic.to_owned(), reason);
        self.metrics.set_stopped_topics(self.stopped.len() as u64);
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.positions.of_topic(topic) {
            tpl.add_partition(t, *p);
        }
        let _ = self.consumer.pause(&tpl);
    }

    /// Decodes a change event; creates or widens its raw table and view on
    /// first sight.
    async fn cdc(&mut self, topic: &str, payload: &[u8], key: Option<&[u8]>) -> Result<Outcome, SinkError> {
        let (schema_id, plan, body) = match self.decoder.plan_of(payload).await? {
            Planned::Envelope { schema_id, plan, body } => (schema_id, plan, body),
            Planned::Outcome(outcome) => return Ok(outcome),
        };
        let change = match plan.decode(body, &mut self.row) {
            Ok(change) => change,
            Err(e) => return Ok(Outcome::Dead(format!("schema id {schema_id}: {e}"))),
        };
        // The body names its table; the topic, which the producer was
        // allowed to write, decides. A record naming another topic's table
        // (or walhouse's own schema) could otherwise write there.
        let elsewhere = || {
            Ok(Outcome::Dead(format!(
                "the record names table {}.{}, which is not what topic {topic} carries",
                change.schema, change.table
            )))
        };
        let target = match self.targets.get(&schema_id) {
            Some(t) if t.source.0 == change.schema && t.source.1 == change.table => t.clone(),
            _ => {
                let end = TopicEnd::of(topic_rule(&plan), change.schema, change.table);
                if !end.is_end_of(topic) || change.schema == STATE_SCHEMA {
                    return elsewhere();
                }
                match self.target(schema_id, &plan, change.schema, change.table).await? {
                    Ok(t) => t,
                    Err(stop) => return Ok(stop),
                }
            }
        };
        if !target.topic.is_end_of(topic) {
            return elsewhere();
        }
        if !self.tables.has_view(&target.table) {
            if let Some(key_columns) = self.decoder.key_columns_of(key).await? {
                let view = TableRef::new(change.schema, change.table);
                self.settle().await?;
                let warehouse = self.writer.warehouse()?;
                let key_columns: Vec<String> = key_columns.iter().map(|c| target.column(c).to_owned()).collect();
                let made = self
                    .tables
                    .ensure_view(warehouse, &target.table, &view, &key_columns)
                    .await;
                if let Err(stop) = refused_definition(made)? {
                    return Ok(stop);
                }
            }
        }
        let system_id = match change.system_id.map(str::parse::<u64>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                return Ok(Outcome::Dead(format!(
                    "source.system_id {:?} is not a database system identifier",
                    change.system_id.unwrap_or_default()
                )))
            }
        };
        let position = match (change.commit_lsn, change.tx_ordinal) {
            (Some(commit_lsn), Some(tx_ordinal)) => Some(Mark {
                position: SourcePosition { commit_lsn, tx_ordinal },
                system_id,
            }),
            _ => None,
        };
        decode::finish_row(&plan, &target, change, &mut self.row.cells);
        Ok(Outcome::Row { target, position })
    }

    /// First sight of a writer schema: creates or widens its raw table
    /// (and replaces its view when widened). `Err` carries the outcome of
    /// an incompatible change.
    async fn target(
        &mut self,
        schema_id: u32,
        plan: &EnvelopePlan,
        schema: &str,
        table: &str,
    ) -> Result<Result<Arc<Target>, Outcome>, SinkError> {
        let raw = TableRef::new(&raw_schema(schema), table);
        let names = tables::warehouse_column_names(plan.columns.iter().map(|c| c.name.as_str()));
        let defs = plan
            .column_defs()
            .into_iter()
            .zip(&names)
            .map(|(c, name)| ColumnDef::new(name, c.ty))
            .collect();
        let def = cdc_table_def(&raw, defs);
        self.settle().await?;
        let warehouse = self.writer.warehouse()?;
        let widened = match refused_definition(self.tables.ensure(warehouse, &def).await)? {
            Ok(w) => w,
            Err(stop) => return Ok(Err(stop)),
        };
        if widened {
            self.tables.forget_view(&raw);
        }
        let renamed = plan
            .columns
            .iter()
            .zip(&names)
            .filter(|(c, n)| c.name != **n)
            .map(|(c, n)| (c.name.clone(), n.clone()))
            .collect();
        let mut target = Target::new(
            u64::from(schema_id),
            (schema.to_owned(), table.to_owned()),
            raw,
            def.columns,
        );
        target.topic = TopicEnd::of(topic_rule(plan), schema, table);
        target.renamed = renamed;
        let target = Arc::new(target);
        self.targets.insert(schema_id, target.clone());
        Ok(Ok(target))
    }

    /// The warehouse, once the batch in flight (if any) is settled.
    async fn warehouse(&mut self) -> Result<&mut W, SinkError> {
        self.settle().await?;
        self.writer.warehouse()
    }

    /// Hands the pending batch to the writer, which writes it while the
    /// loop goes on consuming.
    async fn flush(&mut self) -> Result<(), SinkError> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::replace(&mut self.pending, Pending::new(self.dialect));
        let offsets = self.writer.write(pending)?;
        // The next batch continues from here; if this one fails, every
        // partition is positioned again from what the warehouse holds.
        self.positions.stored(&offsets);
        Ok(())
    }

    /// Waits for the batch in flight. A fenced batch drops what is pending
    /// and positions every partition again; a written one's offsets go to
    /// Kafka too, for monitoring only.
    async fn settle(&mut self) -> Result<(), SinkError> {
        let waited = Instant::now();
        let settled = self.writer.settle().await;
        self.waited += waited.elapsed();
        self.metrics.add_stage(Stage::WaitWriter, waited.elapsed());
        match settled? {
            Settled::Idle => {}
            Settled::Fenced => {
                self.fences += 1;
                self.pending = Pending::new(self.dialect);
                self.positions.reposition_all();
            }
            Settled::Written(offsets) => {
                let mut tpl = TopicPartitionList::new();
                for o in &offsets {
                    let _ = tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.next));
                }
                if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!("committing offsets to Kafka (informative): {e}");
                }
            }
        }
        Ok(())
    }
}
