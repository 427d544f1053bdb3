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

pub mod companies;
pub mod config;
pub mod insolvency;
pub mod metrics;
pub mod tables;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use self::config::{ConsumeSettings, SinkConfig};
use self::metrics::SinkMetrics;
use self::tables::{cdc_table_def, raw_schema, TableError, Tables};
use crate::avro::reader::EnvelopePlan;
use crate::registry::{split_wire, Registry, RegistryError};
use crate::warehouse::{
    Batch, Cell, ColumnDef, DeadLetter, OffsetUpdate, SqlType, TableRef, TableRows, Warehouse, WarehouseError,
};

/// Extra lookups of a schema id the registry does not know, before the
/// record is a dead letter (0.25 s, 0.5 s, 0.75 s apart).
const UNKNOWN_ID_RETRIES: u32 = 3;

/// The Kafka coordinates every raw table ends with.
pub const KAFKA_COLUMNS: [(&str, SqlType); 4] = [
    ("_topic", SqlType::Text),
    ("_partition", SqlType::Integer),
    ("_offset", SqlType::BigInt),
    ("_ingested_at", SqlType::TimestampTz),
];

pub fn kafka_columns() -> Vec<ColumnDef> {
    KAFKA_COLUMNS
        .iter()
        .map(|(n, t)| ColumnDef::new(n, t.clone()))
        .collect()
}

/// The wall clock, microseconds since the Unix epoch (the project's one clock read).
/// The ingestion time of rows written now.
pub fn now_micros() -> i64 {
    crate::postgres::pgoutput::PgTimestamp::now().unix_micros()
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka: {context}: {source}. Fix: check --brokers and that the broker is up")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("schema registry: {0}. Fix: check --schema-registry-url and that the registry is up")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("the task writing a batch panicked; nothing of it is counted as stored")]
    Lost,
    #[error("no Kafka settings: give --brokers and --schema-registry-url")]
    NoKafkaSettings,
    #[error("cannot serve metrics on {addr}: {source}. Fix: choose a free --metrics-addr")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the sink as configured until `shutdown` says stop: opens the
/// warehouse its URL names, serves `/metrics` and `/health` when asked,
/// then consumes. The one entry point of the binary, the tests and the demo.
pub async fn start(
    config: SinkConfig,
    metrics: Arc<SinkMetrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SinkError> {
    let settings = config.consume.ok_or(SinkError::NoKafkaSettings)?;
    let warehouse = config.warehouse.open().await?;
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

fn kafka(context: &str) -> impl Fn(rdkafka::error::KafkaError) -> SinkError + '_ {
    move |source| SinkError::Kafka {
        context: context.to_owned(),
        source,
    }
}

/// Creates walhouse's tables in the warehouse, the raw tables of company
/// events and insolvencies, and the views over them.
pub async fn prepare<W: Warehouse>(w: &mut W, tables: &mut Tables) -> Result<(), SinkError> {
    w.execute(&w.dialect().state_tables()).await?;
    tables.ensure(w, &companies::table_def()).await?;
    tables.ensure(w, &insolvency::table_def()).await?;
    let views = tables::statements(&tables::companies_latest_sql());
    w.execute(&views).await?;
    Ok(())
}

/// Partition changes, noted by the consumer's rebalance callback and acted
/// on by the loop (which may await the warehouse; the callback may not).
#[derive(Default)]
struct SinkContext {
    events: Mutex<Vec<Rebalanced>>,
}

enum Rebalanced {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for SinkContext {
    /// librdkafka's global errors (broker down, a subscribed pattern that
    /// matches no topic yet) are retried by librdkafka itself; without this
    /// they would be logged as errors every few seconds.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        consumer_error(&error);
        tracing::debug!(target: "librdkafka", "{reason}");
    }
}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(tpl) => Rebalanced::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => Rebalanced::Revoked(partitions(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!("consumer group rebalance failed: {e}");
                return;
            }
        };
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

/// A partition the loop has positioned.
struct Position {
    /// The next offset to store (everything below is in the warehouse or
    /// in the pending batch).
    next: i64,
    /// What the warehouse holds, the fence for the next write.
    stored: Option<i64>,
}

/// What one writer schema id turned out to be.
#[derive(Clone)]
enum Plan {
    Envelope(Arc<EnvelopePlan>),
    /// walhouse's transaction-boundary records: not rows.
    TransactionMetadata,
    Refused(String),
}

#[derive(Default)]
struct Pending {
    /// Rows by target (a CDC writer schema id, or the companies table).
    tables: BTreeMap<u64, (Arc<Target>, Vec<Vec<Cell>>)>,
    dead: Vec<DeadLetter>,
    offsets: HashMap<(String, i32), OffsetUpdate>,
    rows: usize,
    bytes: usize,
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    fn advance(&mut self, partition: &(String, i32), stored: Option<i64>, offset: i64) {
        self.since.get_or_insert_with(Instant::now);
        // Looked up before inserting: the key is cloned once per batch, not per message.
        if let Some(o) = self.offsets.get_mut(partition) {
            o.next = offset + 1;
            return;
        }
        let update = OffsetUpdate {
            topic: partition.0.clone(),
            partition: partition.1,
            from: stored,
            next: offset + 1,
        };
        self.offsets.insert(partition.clone(), update);
    }
}

/// Errors the consumer reports while it goes on (it reconnects by itself).
fn consumer_error(e: &rdkafka::error::KafkaError) {
    use rdkafka::types::RDKafkaErrorCode;
    match e.rdkafka_error_code() {
        // A subscribed topic that does not exist yet (the companies topic
        // before its first event, a pattern before capture's first table).
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            tracing::debug!("Kafka consumer: {e} (consumed once it exists)")
        }
        _ => tracing::warn!("Kafka consumer: {e}"),
    }
}

/// A consumed message, copied out of the consumer's buffer.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl Record {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Where rows of one writer schema (or of the company events) go: worked
/// out once, so the per-message path allocates no names.
struct Target {
    key: u64,
    /// The source table (schema, name); empty for company events.
    source: (String, String),
    table: TableRef,
    /// The cells' column names, Kafka coordinates included.
    columns: Vec<String>,
}

impl Target {
    fn new(key: u64, source: (String, String), table: TableRef, columns: impl Iterator<Item = String>) -> Self {
        Target {
            key,
            source,
            table,
            columns: columns
                .chain(KAFKA_COLUMNS.iter().map(|(n, _)| n.to_string()))
                .collect(),
        }
    }
}

/// The pending-batch key of the company events (CDC keys are schema ids).
const COMPANIES: u64 = u64::MAX;

/// One consumed record's fate.
enum Outcome {
    Row {
        target: Arc<Target>,
        cells: Vec<Cell>,
    },
    Dead(String),
    Skip,
    /// The topic cannot go on (incompatible schema change).
    Stop(String),
}

/// A batch being written by its own task, with the warehouse it owns
/// meanwhile.
type InFlight<W> = tokio::task::JoinHandle<(W, Batch, Instant, Result<(), WarehouseError>)>;

pub struct Sink<W: Warehouse> {
    settings: ConsumeSettings,
    dialect: crate::warehouse::Dialect,
    /// `None` while a batch is in flight (its task owns it).
    warehouse: Option<W>,
    in_flight: Option<InFlight<W>>,
    registry: Registry,
    consumer: StreamConsumer<SinkContext>,
    metrics: Arc<SinkMetrics>,
    tables: Tables,
    plans: HashMap<u32, Plan>,
    targets: HashMap<u32, Arc<Target>>,
    companies: Arc<Target>,
    key_columns: HashMap<u32, Vec<String>>,
    positions: HashMap<(String, i32), Position>,
    unpositioned: Vec<(String, i32)>,
    stopped: HashMap<String, String>,
    pending: Pending,
}

impl<W: Warehouse + Send + 'static> Sink<W> {
    pub async fn new(
        settings: ConsumeSettings,
        mut warehouse: W,
        metrics: Arc<SinkMetrics>,
    ) -> Result<Self, SinkError> {
        let registry = Registry::new(&settings.registry)?;
        let mut tables = Tables::default();
        prepare(&mut warehouse, &mut tables).await?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            // New CDC topics are found by pattern on metadata refresh.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("session.timeout.ms", "10000");
        for (k, v) in &settings.librdkafka {
            config.set(k, v);
        }
        let consumer: StreamConsumer<SinkContext> = config
            .create_with_context(SinkContext::default())
            .map_err(kafka("creating the consumer"))?;
        // Fail early and clearly when no broker answers.
        let probe = consumer.client().fetch_metadata(None, Duration::from_secs(15));
        probe.map_err(kafka(&format!("no answer from {}", settings.brokers)))?;
        let mut topics = vec![settings.topic_pattern.as_str()];
        if let Some(c) = &settings.companies_topic {
            topics.push(c.as_str());
        }
        consumer.subscribe(&topics).map_err(kafka("subscribing"))?;
        tracing::info!(
            warehouse = %warehouse.describe(),
            topics = ?topics,
            group = %settings.group_id,
            "sink started"
        );
        Ok(Sink {
            settings,
            dialect: warehouse.dialect(),
            warehouse: Some(warehouse),
            in_flight: None,
            registry,
            consumer,
            metrics,
            tables,
            plans: HashMap::new(),
            targets: HashMap::new(),
            companies: Arc::new(Target::new(
                COMPANIES,
                Default::default(),
                companies::table(),
                companies::column_names().into_iter(),
            )),
            key_columns: HashMap::new(),
            positions: HashMap::new(),
            unpositioned: Vec::new(),
            stopped: HashMap::new(),
            pending: Pending::default(),
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
            if self.in_flight.as_ref().is_some_and(|t| t.is_finished()) {
                self.settle().await?;
            }
            self.rebalanced();
            if !self.unpositioned.is_empty() {
                self.position().await?;
            }
            let linger = match self.pending.since {
                Some(t) => self.settings.batch_linger.saturating_sub(t.elapsed()),
                None => Duration::from_millis(500),
            };
            let received = tokio::select! {
                m = self.consumer.recv() => Some(m),
                _ = tokio::time::sleep(linger) => None,
                _ = shutdown.changed() => None,
            };
            match received {
                Some(Ok(m)) => {
                    let record = Record::of(&m);
                    drop(m);
                    self.handle(record).await?;
                    // Take what is already fetched without a timer per
                    // message, up to a batch.
                    while self.pending.rows < self.settings.batch_rows {
                        match self.consumer.recv().now_or_never() {
                            Some(Ok(m)) => {
                                let record = Record::of(&m);
                                drop(m);
                                self.handle(record).await?;
                            }
                            Some(Err(e)) => consumer_error(&e),
                            None => break,
                        }
                    }
                }
                Some(Err(e)) => consumer_error(&e),
                None => {}
            }
            let full = self.pending.rows >= self.settings.batch_rows || self.pending.bytes >= self.settings.batch_bytes;
            let due = self
                .pending
                .since
                .is_some_and(|t| t.elapsed() >= self.settings.batch_linger);
            if full || due {
                self.flush().await?;
            }
        }
    }

    /// Applies the rebalance events the consumer noted.
    fn rebalanced(&mut self) {
        let events = std::mem::take(&mut *self.consumer.context().events.lock().unwrap_or_else(|p| p.into_inner()));
        for event in events {
            match event {
                Rebalanced::Revoked(list) => {
                    // Rows not yet written may belong to partitions another
                    // instance now owns: drop the batch, re-read what stays ours.
                    tracing::info!(partitions = list.len(), "partitions revoked; pending batch dropped");
                    self.pending = Pending::default();
                    for p in &list {
                        self.positions.remove(p);
                        self.unpositioned.retain(|u| u != p);
                    }
                    self.unpositioned.extend(self.positions.drain().map(|(k, _)| k));
                }
                Rebalanced::Assigned(list) => {
                    tracing::info!(partitions = list.len(), "partitions assigned");
                    for p in list {
                        if !self.unpositioned.contains(&p) && !self.positions.contains_key(&p) {
                            self.unpositioned.push(p);
                        }
                    }
                }
            }
        }
    }

    /// Seeks the unpositioned partitions to the offsets stored in the
    /// warehouse (the beginning when none is stored).
    async fn position(&mut self) -> Result<(), SinkError> {
        let group = self.settings.group_id.clone();
        let stored = self.warehouse().await?.offsets(&group).await?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &self.unpositioned {
            let offset = stored
                .get(&(topic.clone(), *partition))
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(kafka("building a seek"))?;
        }
        let result = match self.consumer.seek_partitions(tpl, Duration::from_secs(10)) {
            Ok(r) => r,
            Err(e) => {
                // Not fetching yet right after an assignment: try again on
                // the next turn; nothing is read from these partitions meanwhile.
                tracing::debug!("seek not possible yet: {e}");
                return Ok(());
            }
        };
        let mut still = Vec::new();
        for e in result.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let Err(err) = e.error() {
                tracing::debug!(topic = %key.0, partition = key.1, "seek not possible yet: {err}");
                still.push(key);
                continue;
            }
            let stored = stored.get(&key).copied();
            tracing::info!(topic = %key.0, partition = key.1, offset = ?stored, "positioned at the warehouse's offset");
            if self.stopped.contains_key(&key.0) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&key.0, key.1);
                let _ = self.consumer.pause(&tpl);
            }
            self.positions.insert(
                key,
                Position {
                    next: stored.unwrap_or(0),
                    stored,
                },
            );
        }
        self.unpositioned = still;
        Ok(())
    }

    async fn handle(&mut self, record: Record) -> Result<(), SinkError> {
        let Record {
            topic,
            partition,
            offset,
            key,
            payload,
        } = record;
        let at = (topic, partition);
        let topic = at.0.as_str();
        let Some(pos) = self.positions.get(&at) else {
            return Ok(()); // read again once positioned
        };
        if offset < pos.next || self.stopped.contains_key(topic) {
            return Ok(());
        }
        let stored = pos.stored;
        let is_companies = self.settings.companies_topic.as_deref() == Some(topic);
        let outcome = match &payload {
            None if is_companies => Outcome::Dead("empty message (no value)".into()),
            None => Outcome::Skip, // a tombstone: for log compaction, not a change
            Some(p) if is_companies => match companies::parse(p) {
                Ok(cells) => Outcome::Row {
                    target: self.companies.clone(),
                    cells,
                },
                Err(e) => Outcome::Dead(e),
            },
            Some(p) => self.cdc(p, key.as_deref()).await?,
        };
        let refused = match &outcome {
            Outcome::Row { cells, .. } => cells.iter().find_map(|c| self.dialect.refuses(c)),
            _ => None,
        };
        let outcome = match refused {
            Some(reason) => Outcome::Dead(reason.to_owned()),
            None => outcome,
        };
        match outcome {
            Outcome::Stop(reason) => {
                tracing::error!(%topic, "topic stopped: {reason}");
                self.stopped.insert(topic.to_owned(), reason);
                self.metrics.set_stopped_topics(self.stopped.len() as u64);
                let mut tpl = TopicPartitionList::new();
                for (t, p) in self.positions.keys().filter(|(t, _)| t == topic) {
                    tpl.add_partition(t, *p);
                }
                let _ = self.consumer.pause(&tpl);
                return Ok(());
            }
            Outcome::Skip => self.metrics.count_skipped(),
            Outcome::Dead(error) => {
                tracing::warn!(%topic, partition, offset, "dead letter: {error}");
                self.pending.bytes += payload.as_ref().map_or(0, Vec::len);
                self.pending.dead.push(DeadLetter {
                    source: if is_companies { "companies" } else { "cdc" }.into(),
                    topic: Some(topic.to_owned()),
                    partition: Some(partition),
                    offset: Some(offset),
                    file: None,
                    line: None,
                    key,
                    raw: payload,
                    error,
                });
            }
            Outcome::Row { target, mut cells } => {
                cells.push(Cell::Text(topic.to_owned()));
                cells.push(Cell::Int(partition));
                cells.push(Cell::Long(offset));
                cells.push(Cell::TimestampTz(now_micros()));
                self.pending.bytes += cells.iter().map(Cell::weight).sum::<usize>();
                self.pending.rows += 1;
                let key = target.key;
                self.pending
                    .tables
                    .entry(key)
                    .or_insert_with(|| (target, Vec::new()))
                    .1
                    .push(cells);
            }
        }
        if let Some(pos) = self.positions.get_mut(&at) {
            pos.next = offset + 1;
        }
        self.pending.advance(&at, stored, offset);
        Ok(())
    }

    /// Decodes a change event; creates or widens its raw table and view on
    /// first sight.
    async fn cdc(&mut self, payload: &[u8], key: Option<&[u8]>) -> Result<Outcome, SinkError> {
        let Some((schema_id, body)) = split_wire(payload) else {
            return Ok(Outcome::Dead(
                "not in the Confluent wire format (magic byte 0 and a schema id expected)".into(),
            ));
        };
        let plan = match self.plan(schema_id).await? {
            Plan::Envelope(p) => p,
            Plan::TransactionMetadata => return Ok(Outcome::Skip),
            Plan::Refused(reason) => return Ok(Outcome::Dead(reason)),
        };
        let change = match plan.decode(body) {
            Ok(c) => c,
            Err(e) => return Ok(Outcome::Dead(format!("schema id {schema_id}: {e}"))),
        };
        let target = match self.targets.get(&schema_id) {
            Some(t) if t.source.0 == change.schema && t.source.1 == change.table => t.clone(),
            _ => match self.target(schema_id, &plan, &change.schema, &change.table).await? {
                Ok(t) => t,
                Err(stop) => return Ok(stop),
            },
        };
        if !self.tables.has_view(&target.table) {
            if let Some(key_columns) = self.key_columns_of(key).await? {
                let view = TableRef::new(&change.schema, &change.table);
                self.settle().await?;
                let Some(warehouse) = self.warehouse.as_mut() else {
                    return Err(SinkError::Lost);
                };
                self.tables
                    .ensure_view(warehouse, &target.table, &view, &key_columns)
                    .await?;
            }
        }
        let mut cells = change.row.unwrap_or_else(|| vec![Cell::Null; plan.columns.len()]);
        let json_list = |items: &[String]| {
            (!items.is_empty()).then(|| Cell::Text(serde_json::Value::from(items.to_vec()).to_string()))
        };
        cells.push(Cell::Text(change.op));
        cells.push(change.lsn.map_or(Cell::Null, Cell::Long));
        cells.push(change.tx_id.map_or(Cell::Null, Cell::Long));
        cells.push(
            change
                .commit_ts_ms
                .map_or(Cell::Null, |ms| Cell::TimestampTz(ms.saturating_mul(1000))),
        );
        cells.push(Cell::Text(change.snapshot));
        cells.push(json_list(&change.unchanged_toast).unwrap_or(Cell::Null));
        cells.push(if change.text_values.is_empty() {
            Cell::Null
        } else {
            let m: serde_json::Map<String, serde_json::Value> = change
                .text_values
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            Cell::Text(serde_json::Value::Object(m).to_string())
        });
        Ok(Outcome::Row { target, cells })
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
        let def = cdc_table_def(&raw, plan.column_defs());
        self.settle().await?;
        let Some(warehouse) = self.warehouse.as_mut() else {
            return Err(SinkError::Lost);
        };
        let widened = match self.tables.ensure(warehouse, &def).await {
            Ok(w) => w,
            Err(e @ TableError::Incompatible { .. }) => return Ok(Err(Outcome::Stop(e.to_string()))),
            Err(e) => return Err(e.into()),
        };
        if widened {
            self.tables.forget_view(&raw);
        }
        let columns = plan
            .columns
            .iter()
            .map(|c| c.name.clone())
            .chain(tables::CDC_COLUMNS.iter().map(|(n, _)| n.to_string()));
        let target = Arc::new(Target::new(
            u64::from(schema_id),
            (schema.to_owned(), table.to_owned()),
            raw,
            columns,
        ));
        self.targets.insert(schema_id, target.clone());
        Ok(Ok(target))
    }
    async fn plan(&mut self, id: u32) -> Result<Plan, SinkError> {
        if let Some(p) = self.plans.get(&id) {
            return Ok(p.clone());
        }
        // An id the registry does not know yet may be on its way (a
        // registry replica behind its primary): ask a few times first.
        let mut answer = self.registry.schema(id).await;
        for attempt in 1..=UNKNOWN_ID_RETRIES {
            if !matches!(answer, Err(RegistryError::UnknownId { .. })) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            answer = self.registry.schema(id).await;
        }
        let plan = match answer {
            Ok(text) => match EnvelopePlan::compile(&text) {
                Ok(p) => Plan::Envelope(Arc::new(p)),
                Err(_) if text.contains("\"TransactionMetadataValue\"") => Plan::TransactionMetadata,
                Err(e) => Plan::Refused(format!("schema id {id}: {e}")),
            },
            Err(RegistryError::UnknownId { id }) => {
                // Not cached: the schema may be registered later.
                return Ok(Plan::Refused(format!(
                    "schema id {id} is unknown to the schema registry after {} attempts (is the sink pointed at the registry the producer used?)",
                    UNKNOWN_ID_RETRIES + 1
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.plans.insert(id, plan.clone());
        Ok(plan)
    }

    /// The key columns named by a message key's schema.
    async fn key_columns_of(&mut self, key: Option<&[u8]>) -> Result<Option<Vec<String>>, SinkError> {
        let Some((id, _)) = key.and_then(split_wire) else {
            return Ok(None);
        };
        if let Some(k) = self.key_columns.get(&id) {
            return Ok(Some(k.clone()));
        }
        let text = match self.registry.schema(id).await {
            Ok(t) => t,
            Err(RegistryError::UnknownId { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let columns: Vec<String> = json["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["walhouse.column"].as_str().or(f["name"].as_str()).map(str::to_owned))
            .collect();
        self.key_columns.insert(id, columns.clone());
        Ok(Some(columns))
    }

    /// The warehouse, once the batch in flight (if any) is settled.
    async fn warehouse(&mut self) -> Result<&mut W, SinkError> {
        self.settle().await?;
        self.warehouse.as_mut().ok_or(SinkError::Lost)
    }

    /// Hands the pending batch to a task that writes it, rows and offsets
    /// in one transaction, while the loop goes on consuming. One batch is
    /// in flight at a time.
    async fn flush(&mut self) -> Result<(), SinkError> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let batch = Batch {
            tables: pending
                .tables
                .into_values()
                .map(|(target, rows)| {
                    let rows = TableRows {
                        columns: target.columns.clone(),
                        rows,
                    };
                    (target.table.clone(), rows)
                })
                .collect(),
            dead_letters: pending.dead,
            offsets: pending.offsets.into_values().collect(),
            file: None,
        };
        // The next batch continues from here; if this one fails, every
        // partition is positioned again from what the warehouse holds.
        for o in &batch.offsets {
            if let Some(p) = self.positions.get_mut(&(o.topic.clone(), o.partition)) {
                p.stored = Some(o.next);
            }
        }
        let mut warehouse = self.warehouse.take().ok_or(SinkError::Lost)?;
        let group = self.settings.group_id.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let started = Instant::now();
            let result = warehouse.write(&group, &batch).await;
            (warehouse, batch, started, result)
        }));
        Ok(())
    }

    /// Waits for the batch in flight and takes the warehouse back.
    async fn settle(&mut self) -> Result<(), SinkError> {
        let Some(task) = self.in_flight.take() else {
            return Ok(());
        };
        let (warehouse, batch, started, result) = task.await.map_err(|_| SinkError::Lost)?;
        self.warehouse = Some(warehouse);
        match result {
            Ok(()) => {}
            Err(e @ WarehouseError::Fenced { .. }) => {
                tracing::warn!("{e}");
                self.metrics.count_fenced();
                self.pending = Pending::default();
                self.unpositioned.extend(self.positions.drain().map(|(k, _)| k));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let millis = started.elapsed().as_millis() as u64;
        self.metrics
            .count_batch(batch.rows() as u64, batch.dead_letters.len() as u64, millis);
        tracing::debug!(
            rows = batch.rows(),
            dead = batch.dead_letters.len(),
            millis,
            "batch written"
        );
        let mut tpl = TopicPartitionList::new();
        for o in &batch.offsets {
            let _ = tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.next));
        }
        // Informative only: the warehouse's offsets are the ones used.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!("committing offsets to Kafka (informative): {e}");
        }
        Ok(())
    }
}
