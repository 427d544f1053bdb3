//! `--output kafka`: Avro-encoded changes produced to one topic per table,
//! keyed by primary key, durable when Kafka acknowledged them.
//!
//! The producer is idempotent with `acks=all` (librdkafka retries transient
//! errors itself, in order); delivery reports feed the
//! [`DeliveryTracker`], whose durable LSN is all the capture loop ever
//! acknowledges. Backpressure: once `max_in_flight` messages are
//! unacknowledged, [`Destination::is_full`] turns true and the capture loop
//! stops reading the slot until deliveries catch up, so memory stays
//! bounded whatever the transaction size.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use super::delivery::DeliveryTracker;
use super::encoder::RecordEncoder;
use crate::capture::change::ChangeEvent;
use crate::capture::config::KafkaSettings;
use crate::capture::destination::{Destination, DestinationStats, EncodedRows, OutputError, RowEncoder};
use crate::capture::format::plan::{Planner, TransactionMark};
use crate::cli::KafkaOptions;
use crate::postgres::catalog::RelationCache;
use crate::postgres::pgoutput::PgTimestamp;
use crate::postgres::pgoutput::Relation;
use crate::postgres::publication::TableName;
use crate::postgres::Lsn;
use crate::registry::Registry;

/// Routes librdkafka's delivery reports and logs.
struct Context {
    tracker: Arc<DeliveryTracker>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker-down and similar errors are retried by librdkafka; they
        // only matter once a delivery fails, which the tracker reports.
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, unit: usize) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.to_string()),
        };
        self.tracker.delivered(unit as u64, outcome);
    }
}

/// librdkafka's producer with delivery tracking.
struct Sender {
    producer: ThreadedProducer<Context>,
    tracker: Arc<DeliveryTracker>,
    produced: u64,
    bytes_sent: u64,
}

impl Sender {
    /// Hands one record to librdkafka, registered with the tracker.
    fn produce(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), OutputError> {
        self.produce_with(topic, key, value, None)
    }

    /// As [`Self::produce`], with one header.
    fn produce_with(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        header: Option<(&str, &[u8])>,
    ) -> Result<(), OutputError> {
        let unit = self.tracker.sent();
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, unit as usize);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some((name, value)) = header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: name,
                value: Some(value),
            }));
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        // Only a full local queue is worth waiting for; the slot pauses at
        // max_in_flight, so this is rare and short.
        for _ in 0..6_000 {
            match self.producer.send(record) {
                Ok(()) => {
                    self.produced += 1;
                    self.bytes_sent += value.map_or(0, |v| v.len() as u64);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    self.tracker.unsent(unit);
                    return Err(OutputError::Kafka(format!("cannot produce to {topic}: {e}")));
                }
            }
        }
        self.tracker.unsent(unit);
        Err(OutputError::Kafka(format!(
            "the producer queue for {topic} stayed full for 60 s"
        )))
    }
}

pub struct KafkaDestination {
    sender: Sender,
    admin: AdminClient<DefaultClientContext>,
    encoder: RecordEncoder,
    config: KafkaSettings,
    /// What each event becomes, and the transaction it is in.
    planner: Planner,
    topics: HashSet<String>,
}

/// How long a topic left to the broker's auto-creation may take to show.
const TOPIC_WAIT: Duration = Duration::from_secs(5);

/// What to do when the broker refused to create a topic, by its code.
fn creation_fix(code: RDKafkaErrorCode) -> String {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed => {
            ". Fix: grant walhouse's principal CREATE on the cluster or on the topics, or create the topics \
             beforehand (walhouse then uses them as they are)"
        }
        RDKafkaErrorCode::InvalidReplicationFactor => {
            ". Fix: give --topic-replication-factor at most the number of brokers (-1: the broker's default)"
        }
        RDKafkaErrorCode::InvalidPartitions => ". Fix: give --topic-partitions 1 or more",
        _ => ". Fix: create the topic beforehand, or see the broker's log for why it refused",
    }
    .to_owned()
}

/// Runs a blocking librdkafka call without stalling the runtime's other
/// tasks where the runtime allows it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn client_config(config: &KafkaSettings, brokers: &str, options: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        // Bounded memory: walhouse pauses the slot long before these fill.
        .set(
            "queue.buffering.max.messages",
            (config.max_in_flight_messages * 2).max(1000).to_string(),
        )
        .set("queue.buffering.max.kbytes", "262144")
        .set("client.id", "walhouse-capture")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

impl KafkaDestination {
    /// A producer into `brokers` (the settings' own, as
    /// [`KafkaSettings::endpoints`] checked them).
    pub fn new(config: &KafkaSettings, brokers: &str, db: &str, registry: Arc<Registry>) -> Result<Self, OutputError> {
        let config = config.clone();
        let options = config.librdkafka();
        let tracker = Arc::new(DeliveryTracker::default());
        let kafka_err = |e: KafkaError| OutputError::Kafka(format!("cannot create the producer: {e}"));
        let producer = client_config(&config, brokers, &options)
            .create_with_context(Context {
                tracker: tracker.clone(),
            })
            .map_err(kafka_err)?;
        let mut admin_config = ClientConfig::new();
        admin_config.set("bootstrap.servers", brokers);
        for (k, v) in &options {
            // Security settings apply to the admin client too; producer-only
            // keys would make it refuse to start.
            if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                admin_config.set(k, v);
            }
        }
        let admin = admin_config.create().map_err(kafka_err)?;
        let encoder = RecordEncoder::new(registry, &config.topic_prefix, db, config.numeric_mode)
            .with_format(config.format, &config.toast_placeholder);
        Ok(KafkaDestination {
            sender: Sender {
                producer,
                tracker,
                produced: 0,
                bytes_sent: 0,
            },
            admin,
            encoder,
            planner: Planner::new(&config),
            config,
            topics: HashSet::new(),
        })
    }

    /// Records handed to librdkafka (tombstones included).
    pub fn produced(&self) -> u64 {
        self.sender.produced
    }

    /// Makes sure `topic` exists before anything is produced to it (see
    /// [`Self::ensure_topics`]).
    async fn ensure_topic(&mut self, topic: &str) -> Result<(), OutputError> {
        if self.topics.contains(topic) {
            return Ok(());
        }
        self.ensure_topics(&[topic.to_owned()]).await
    }

    /// Makes sure `topics` exist before anything is produced to them:
    /// created with `--topic-partitions` partitions (in one request), or,
    /// with 0, asked of the broker (which creates them if its
    /// auto-creation is on). A topic that cannot be had is an error with
    /// the cause and the fix: records produced to it would otherwise wait
    /// until they time out.
    async fn ensure_topics(&mut self, topics: &[String]) -> Result<(), OutputError> {
        let wanted: Vec<&String> = topics.iter().filter(|t| !self.topics.contains(*t)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let missing = |topic: &str, reason: String| OutputError::Topic {
            topic: topic.to_owned(),
            reason,
        };
        if self.config.topic_partitions > 0 {
            let new: Vec<NewTopic<'_>> = wanted
                .iter()
                .map(|t| {
                    NewTopic::new(
                        t,
                        self.config.topic_partitions,
                        TopicReplication::Fixed(self.config.topic_replication_factor),
                    )
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let refused: Vec<(String, String)> = match self.admin.create_topics(&new, &opts).await {
                Ok(results) => results
                    .into_iter()
                    .filter_map(|r| match r {
                        Ok(name) => {
                            tracing::info!(topic = %name, partitions = self.config.topic_partitions, "created topic");
                            None
                        }
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                        Err((name, code)) => Some((name, code.to_string() + &creation_fix(code))),
                    })
                    .collect(),
                Err(e) => wanted
                    .iter()
                    .map(|t| {
                        (
                            t.to_string(),
                            format!("{e}. Fix: check that the broker is up and that --brokers is right"),
                        )
                    })
                    .collect(),
            };
            // Made by an administrator, who may not let walhouse create topics.
            for (topic, reason) in refused {
                if !self.topic_exists(&topic, Duration::ZERO).await? {
                    return Err(missing(&topic, format!("walhouse could not create it: {reason}")));
                }
            }
        } else {
            for topic in &wanted {
                if !self.topic_exists(topic, TOPIC_WAIT).await? {
                    return Err(missing(
                        topic,
                        "it does not exist, and --topic-partitions 0 leaves its creation to the broker, which did \
                         not create it (its auto.create.topics.enable is off). Fix: create the topic, or give \
                         --topic-partitions N so walhouse creates its topics"
                            .into(),
                    ));
                }
            }
        }
        self.topics.extend(wanted.into_iter().cloned());
        Ok(())
    }

    /// Whether the broker knows `topic`, asking until `wait` has passed (a
    /// topic the broker creates on request takes a moment to show).
    async fn topic_exists(&self, topic: &str, wait: Duration) -> Result<bool, OutputError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let metadata = blocking(|| {
                self.sender
                    .producer
                    .client()
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
            })
            .map_err(|e| OutputError::Kafka(format!("reading the metadata of topic {topic}: {e}")))?;
            let known = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if known || std::time::Instant::now() >= deadline {
                return Ok(known);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A BEGIN record (`end` is `None`) or the END one (the transaction's
    /// end LSN) on `<prefix>.transaction`, in the format's shape (see
    /// [`crate::capture::format::Format::transaction_record`]).
    async fn transaction_record(&mut self, mark: &TransactionMark) -> Result<(), OutputError> {
        let topic = format!("{}.transaction", self.config.topic_prefix);
        let (key_id, value_id) = self.encoder.transaction_schema_ids(&topic).await?;
        self.ensure_topic(&topic).await?;
        let (key, value) =
            self.config
                .format
                .transaction_record(key_id, value_id, mark, PgTimestamp::now().unix_millis());
        self.sender.produce(&topic, Some(&key), Some(&value))
    }

    /// A change that cannot be keyed goes, as its JSON line with the
    /// reason, to `<prefix>.dead_letter`, keyed by the table's topic.
    /// Created like every other topic: a cluster without automatic topic
    /// creation would otherwise hold the record until it times out.
    async fn dead_letter(&mut self, topic: &str, event: &ChangeEvent<'_>, reason: &str) -> Result<(), OutputError> {
        tracing::error!(topic, lsn = %event.lsn, "{reason}; sent to the dead-letter topic");
        let body = serde_json::json!({ "topic": topic, "reason": reason, "change": event });
        let dlq = format!("{}.dead_letter", self.config.topic_prefix);
        self.ensure_topic(&dlq).await?;
        let bytes = body.to_string().into_bytes();
        self.sender.produce(&dlq, Some(topic.as_bytes()), Some(&bytes))
    }
}

impl Destination for KafkaDestination {
    fn system_id(&mut self, system_id: &str) {
        self.encoder.set_system_id(system_id);
    }

    async fn prepare(&mut self, tables: &[TableName]) -> Result<(), OutputError> {
        let rule = self.config.format.topic_rule();
        let mut topics: Vec<String> = tables
            .iter()
            .map(|t| crate::topics::name(rule, &self.config.topic_prefix, &t.schema, &t.name))
            .collect();
        if self.planner.transaction_topic() {
            topics.push(format!("{}.transaction", self.config.topic_prefix));
        }
        self.ensure_topics(&topics).await
    }

    async fn relation(&mut self, relation: &Arc<Relation>, cache: &RelationCache) -> Result<(), OutputError> {
        let topic = self.encoder.relation(relation, cache).await?;
        self.ensure_topic(&topic).await
    }

    fn row_encoder(&self, relation: &Relation) -> Option<Arc<dyn RowEncoder>> {
        self.encoder.row_encoder(relation.id)
    }

    async fn send_encoded(&mut self, rows: &EncodedRows) -> Result<(), OutputError> {
        for (key, value) in rows.iter() {
            self.sender.produce(&rows.topic, key, Some(value))?;
        }
        Ok(())
    }

    async fn send(&mut self, event: &ChangeEvent<'_>) -> Result<(), OutputError> {
        let ops = if self.planner.skips(event) {
            Vec::new()
        } else {
            self.encoder.ops(event)?
        };
        let plan = self.planner.plan(event, ops);
        if let Some(begin) = &plan.begin {
            self.transaction_record(begin).await?;
        }
        let now = PgTimestamp::now().unix_millis();
        for planned in plan.records {
            let header = planned
                .key_header
                .map(|(name, row)| (name, self.encoder.key_of(planned.relation_id, row).unwrap_or_default()));
            let header = header.as_ref().map(|(name, key)| (*name, key.as_slice()));
            match self
                .encoder
                .encode(planned.relation_id, event, planned.op, now, planned.sequence)
            {
                Ok(record) => {
                    self.sender
                        .produce_with(record.topic, record.key, Some(record.value), header)?;
                    if planned.tombstone && record.key.is_some() {
                        self.sender.produce_with(record.topic, record.key, None, header)?;
                    }
                }
                Err(unkeyable) => self.dead_letter(&unkeyable.topic, event, &unkeyable.reason).await?,
            }
        }
        Ok(())
    }

    async fn end_transaction(&mut self, ack_lsn: Lsn) -> Result<(), OutputError> {
        if let Some(end) = self.planner.end_transaction(ack_lsn) {
            self.transaction_record(&end).await?;
        }
        self.sender.tracker.close_unit(ack_lsn);
        Ok(())
    }

    fn abandon_transaction(&mut self) {
        self.planner.abandon_transaction();
        self.sender.tracker.abandon_unit();
    }

    fn durable(&self) -> Result<Lsn, OutputError> {
        self.sender
            .tracker
            .durable()
            .map_err(|e| OutputError::Kafka(format!("a message was not delivered: {e}")))
    }

    fn is_full(&self) -> bool {
        self.sender.tracker.in_flight() >= self.config.max_in_flight_messages
    }

    async fn progressed(&self) {
        self.sender.tracker.changed().await
    }

    fn stats(&self) -> DestinationStats {
        DestinationStats {
            in_flight: self.sender.tracker.in_flight(),
            bytes_sent: self.sender.bytes_sent,
            registry_calls: self.encoder.registry().calls(),
        }
    }

    async fn flush(&mut self) -> Result<(), OutputError> {
        let producer = self.sender.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| OutputError::Kafka(e.to_string()))?
            .map_err(|e| OutputError::Kafka(format!("flush: {e}")))?;
        self.durable().map(|_| ())
    }
}
