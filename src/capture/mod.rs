//! The capture loop: slot stream → change events → destination → acknowledge.
//!
//! Start-up checks the source ([`slot::preflight`]), makes sure the
//! publication and slot exist, then streams. Each transaction's changes go
//! to the destination as they are decoded (nothing is buffered here, so
//! memory does not grow with transaction size); at its commit the
//! destination is asked what is durable, and only that LSN is acknowledged.
//!
//! A lost connection is retried with exponential backoff, from the last
//! acknowledged LSN, a bounded number of times; any other error stops the
//! capture with the operator's fix in the message.

pub mod admin;
pub mod config;
pub mod destination;
mod incremental;
mod initial;
pub mod metrics;
pub mod snapshot_progress;
pub mod watermark;

pub use incremental::{Signal, SIGNAL_PREFIX, WATERMARK_PREFIX};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use self::config::{CaptureConfig, OutputKind, SnapshotMode};
use self::destination::kafka::producer::KafkaDestination;
use self::destination::stdout::JsonLines;
use self::snapshot_progress::{Phase as SnapshotPhase, ProgressStore};
use crate::capture::destination::{Destination, EncodedRows, OutputError};
use crate::capture::metrics::{Metrics, Phase};
use crate::change::{check_arity, ChangeEvent, ChangeKind, SnapshotMark, TxInfo};
use crate::postgres::catalog::{load_column_infos, load_type_infos, CatalogError, RelationCache, RelationChange};
use crate::postgres::client::ReadColumn;
use crate::postgres::pgoutput::{LogicalMessage, OldTuple, Relation, Tuple};
use crate::postgres::replication::{ReplicationClient, ReplicationStream, StreamOptions};
use crate::postgres::{client, publication, slot, Lsn, SourceError};
use crate::registry::Registry;
use incremental::Incremental;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("gave up after {attempts} reconnect attempts; last error: {last}")]
    GaveUp { attempts: u32, last: SourceError },
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::postgres::snapshot::SnapshotError),
    #[error("cannot serve metrics on {addr}: {source}. Fix: choose a free --metrics-addr")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the server sent a streamed-transaction message although walhouse asked for protocol 1 (at {lsn})")]
    UnexpectedStream { lsn: Lsn },
    #[error("--output kafka needs --brokers and --schema-registry-url")]
    NoKafkaSettings,
    #[error("{table} is not in publication {publication:?}. Fix: add it (ALTER PUBLICATION … ADD TABLE {quoted}), which also snapshots it")]
    NotPublished {
        table: String,
        quoted: String,
        publication: String,
    },
    #[error("{0}")]
    InvalidTable(String),
}

/// How a capture ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureSummary {
    /// The last LSN confirmed to Postgres.
    pub acknowledged: Lsn,
    pub events: u64,
    pub transactions: u64,
}

/// Why the stream loop returned without error.
enum StreamEnd {
    Shutdown,
    ServerEnded,
}

/// Runs capture into the destination its configuration names (Kafka, or
/// JSON lines on stdout) until `shutdown` turns true or an error stops it:
/// the binary's entry point.
pub async fn start(config: &CaptureConfig, shutdown: watch::Receiver<bool>) -> Result<CaptureSummary, CaptureError> {
    match config.output {
        OutputKind::Kafka => run(config, &mut kafka_destination(config)?, shutdown).await,
        OutputKind::Stdout => run(config, &mut JsonLines::new(tokio::io::stdout()), shutdown).await,
    }
}

/// The Kafka destination of a configuration, with its registry client:
/// for [`start`], and for tests and benches that watch the destination.
pub fn kafka_destination(config: &CaptureConfig) -> Result<KafkaDestination, CaptureError> {
    let kafka = config.kafka.as_ref().ok_or(CaptureError::NoKafkaSettings)?;
    let registry = Arc::new(Registry::new(&kafka.registry).map_err(OutputError::from)?);
    Ok(KafkaDestination::new(kafka, &config.source.dbname, registry)?)
}

/// Runs a capture into `dest` until `shutdown` turns true or an error stops it.
pub async fn run<D: Destination>(
    config: &CaptureConfig,
    dest: &mut D,
    shutdown: watch::Receiver<bool>,
) -> Result<CaptureSummary, CaptureError> {
    run_with_metrics(config, dest, shutdown, Arc::new(Metrics::default())).await
}

/// [`run`], publishing into `metrics` (and serving them when
/// `config.metrics_addr` is set).
pub async fn run_with_metrics<D: Destination>(
    config: &CaptureConfig,
    dest: &mut D,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> Result<CaptureSummary, CaptureError> {
    let _server = match config.metrics_addr {
        Some(addr) => Some(ServerGuard(
            crate::metrics::serve(addr, metrics.clone())
                .await
                .map_err(|e| CaptureError::Metrics { addr, source: e })?,
        )),
        None => None,
    };
    metrics.set_phase(Phase::Starting);
    let result = run_inner(config, dest, shutdown, &metrics).await;
    metrics.set_phase(Phase::Stopped);
    result
}

/// Stops the metrics server with the capture.
struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_inner<D: Destination>(
    config: &CaptureConfig,
    dest: &mut D,
    mut shutdown: watch::Receiver<bool>,
    metrics: &Arc<Metrics>,
) -> Result<CaptureSummary, CaptureError> {
    let (sql, _driver) = client::connect(&config.source).await?;
    let setup = set_up(config, &sql).await?;
    let mut state = LoopState {
        cache: RelationCache::new(),
        sql,
        heartbeat: config.heartbeat_interval,
        metrics: metrics.clone(),
        table_names: Default::default(),
        slot: config.slot.clone(),
        lag_warn_bytes: config.slot_lag_warn_bytes,
        publication: config.publication.clone(),
        state_schema: config.state_schema.clone(),
        incremental: None,
        tx: None,
        tx_ordinal: 0,
        events: 0,
        transactions: 0,
    };
    if config.snapshot_mode == SnapshotMode::InitialOnly {
        if !setup.needs_snapshot {
            tracing::info!(slot = %config.slot, "the slot exists, so its snapshot was taken before: nothing to do");
            return Ok(state.summary(Lsn::ZERO));
        }
        // No slot is kept, so no progress either: a cut-off run starts over.
        let done = state.initial_snapshot(config, dest, &mut shutdown, None).await?;
        return Ok(state.summary(done.unwrap_or(Lsn::ZERO)));
    }
    if setup.needs_snapshot {
        let done = state
            .initial_snapshot(config, dest, &mut shutdown, setup.progress.as_ref())
            .await?;
        if done.is_none() {
            return Ok(state.summary(Lsn::ZERO));
        }
    }
    if let Some(p) = setup.progress {
        let published = state.captured_tables().await?;
        let mut inc = Incremental::load(
            p,
            &config.source,
            &config.publication,
            config.snapshot_chunk_pages,
            &state.sql,
        )
        .await?;
        inc.refresh_tables(&state.sql, published).await?;
        state.incremental = Some(inc);
    }
    state
        .stream_with_reconnects(config, dest, &mut shutdown, setup.status_interval)
        .await
}

/// What start-up found and made ready.
struct Setup {
    status_interval: Duration,
    /// Where snapshot progress is kept (`initial` mode only).
    progress: Option<ProgressStore>,
    /// No slot exists yet: the initial snapshot creates it.
    needs_snapshot: bool,
}

/// Checks the source, makes sure the publication exists (and, with
/// `never`, the slot), warns about unbounded WAL retention and decides
/// whether an initial snapshot is due.
async fn set_up(config: &CaptureConfig, sql: &tokio_postgres::Client) -> Result<Setup, CaptureError> {
    let source = &config.source;
    slot::preflight(sql, &source.user).await?;
    // Progress is kept when a snapshot may have to resume: not for
    // `never` (no snapshot) nor `initial_only` (no slot to resume from).
    let progress =
        (config.snapshot_mode == SnapshotMode::Initial).then(|| ProgressStore::new(&config.state_schema, &config.slot));
    let mut tables = publication::ensure(
        sql,
        &config.publication,
        &config.tables,
        &config.table_options,
        config.replica_identity_full,
    )
    .await?;
    // walhouse's own tables are never captured, whatever the mode (another
    // capture on this database may keep its progress there).
    retain_captured(&mut tables, &config.state_schema);
    let keep: String = sql
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .map_err(SourceError::Sql)?
        .read("the max_slot_wal_keep_size query", 0)?;
    if keep == "-1" {
        tracing::warn!(
            "max_slot_wal_keep_size is unlimited: while walhouse is stopped or slow, the slot keeps every WAL \
             segment and the source's disk can fill. Fix: ALTER SYSTEM SET max_slot_wal_keep_size = '50GB' (a bound \
             you can afford) and SELECT pg_reload_conf()"
        );
    }
    tracing::info!(publication = %config.publication, tables = tables.len(), "publication ready");
    let status_interval = match config.status_interval {
        Some(i) => i,
        None => slot::status_interval(slot::wal_sender_timeout(sql).await?),
    };
    if let Some(p) = &progress {
        p.ensure(sql, &source.user).await?;
    }
    let mut needs_snapshot = false;
    match slot::inspect(sql, &config.slot).await? {
        Some(info) => {
            slot::check_usable(&info, &source.dbname)?;
            if config.slot_failover && info.failover == Some(false) {
                tracing::warn!(
                    slot = %config.slot,
                    "--slot-failover is on but the existing slot was created without it, so a promoted standby \
                     will not have it. Fix: stop walhouse-capture and run ALTER_REPLICATION_SLOT \"{}\" (FAILOVER true) \
                     on a replication connection (psql \"dbname=… replication=database\")",
                    config.slot
                );
            }
            tracing::info!(slot = %config.slot, confirmed_flush = ?info.confirmed_flush.map(|l| l.to_string()), "resuming from existing slot");
            if let Some(p) = &progress {
                adopt_slot(p, sql, &tables, config.snapshot_chunk_pages).await?;
            }
        }
        None if config.snapshot_mode == SnapshotMode::Never => {
            let mut repl = ReplicationClient::connect(source)
                .await?
                .with_failover(config.slot_failover)?;
            let created = repl.create_slot(&config.slot).await?;
            tracing::info!(slot = %created.name, consistent_point = %created.consistent_point, "created replication slot (no snapshot)");
        }
        None => needs_snapshot = true,
    }
    Ok(Setup {
        status_interval,
        progress,
        needs_snapshot,
    })
}

/// The published tables, less walhouse's own progress tables (which a
/// publication FOR ALL TABLES includes).
async fn captured_tables(
    sql: &tokio_postgres::Client,
    publication: &str,
    state_schema: &str,
) -> Result<Vec<publication::TableName>, CaptureError> {
    let mut tables = publication::published_tables(sql, publication).await?;
    retain_captured(&mut tables, state_schema);
    Ok(tables)
}

fn retain_captured(tables: &mut Vec<publication::TableName>, state_schema: &str) {
    tables.retain(|t| t.schema != state_schema);
}

/// The incremental snapshot's reader, if one runs (pending otherwise).
async fn reader_finished(incremental: &mut Option<Incremental>) -> Result<incremental::ChunkReadDone, CaptureError> {
    match incremental {
        Some(inc) => inc.reader_finished().await,
        None => std::future::pending().await,
    }
}

/// On an existing slot: a slot walhouse made before keeping progress (or
/// with `--snapshot-mode never`) counts as snapshotted for the tables
/// published now; a slot whose snapshot was cut off before any chunk was
/// planned gets every table planned, to be read incrementally.
async fn adopt_slot(
    store: &ProgressStore,
    sql: &tokio_postgres::Client,
    tables: &[publication::TableName],
    chunk_pages: u64,
) -> Result<(), CaptureError> {
    let phase = store.phase(sql).await?.map(|(p, _)| p);
    if phase == Some(SnapshotPhase::Starting) || phase.is_none() {
        let mut seq = store.next_seq(sql).await?;
        let mut chunks = Vec::new();
        for table in tables {
            if let Some(oid) = snapshot_progress::table_oid(sql, table).await? {
                chunks.extend(snapshot_progress::plan_table(sql, table, oid, chunk_pages, &mut seq).await?);
            }
        }
        store.plan(sql, &chunks).await?;
        if phase.is_none() {
            let done: Vec<(u64, u64)> = chunks.iter().map(|c| (c.seq, 0)).collect();
            store.mark_done(sql, &done).await?;
            store.set_phase(sql, SnapshotPhase::Done, None).await?;
        } else {
            tracing::warn!("the slot exists but its snapshot was cut off before it was planned: every table is read again incrementally");
            store.set_phase(sql, SnapshotPhase::Copying, None).await?;
        }
    }
    Ok(())
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// How often the slot's lag on the server is measured.
const LAG_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The temporary slot that exports the initial snapshot: `<slot>_snap`,
/// within Postgres's 63-character limit.
pub fn snapshot_slot_name(slot: &str) -> String {
    format!("{}_snap", &slot[..slot.len().min(58)])
}

/// 250 ms, 500 ms, 1 s, … capped at `max`.
fn backoff(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16))).min(max)
}

struct LoopState {
    cache: RelationCache,
    sql: tokio_postgres::Client,
    heartbeat: Option<Duration>,
    metrics: Arc<Metrics>,
    /// `schema.table` by relation id, for metrics labels.
    table_names: std::collections::HashMap<u32, String>,
    slot: String,
    lag_warn_bytes: u64,
    publication: String,
    /// Changes to walhouse's own progress tables are not captured.
    state_schema: String,
    incremental: Option<Incremental>,
    tx: Option<TxInfo>,
    tx_ordinal: u64,
    events: u64,
    transactions: u64,
}

impl LoopState {
    fn summary(&self, acknowledged: Lsn) -> CaptureSummary {
        CaptureSummary {
            acknowledged,
            events: self.events,
            transactions: self.transactions,
        }
    }

    /// Streams from the slot until shutdown, reconnecting after transient
    /// failures (from the last acknowledged LSN, with backoff, a bounded
    /// number of times); any other error stops capture.
    async fn stream_with_reconnects<D: Destination>(
        &mut self,
        config: &CaptureConfig,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        status_interval: Duration,
    ) -> Result<CaptureSummary, CaptureError> {
        let mut acknowledged = Lsn::ZERO;
        let mut attempt = 0u32;
        loop {
            let options = StreamOptions {
                publications: vec![config.publication.clone()],
                status_interval,
                ..StreamOptions::default()
            };
            let started = async {
                let repl = ReplicationClient::connect(&config.source).await?;
                repl.start_replication(&config.slot, acknowledged, options).await
            };
            let result: Result<(), CaptureError> = match started.await {
                Ok(mut stream) => {
                    tracing::info!(slot = %config.slot, from = %acknowledged, "streaming");
                    self.metrics.set_phase(Phase::Streaming);
                    let r = self.stream(&mut stream, dest, shutdown, status_interval).await;
                    acknowledged = stream.progress().acknowledged;
                    match r {
                        Ok(end) => {
                            dest.flush().await?;
                            stream.acknowledge(dest.durable()?);
                            acknowledged = stream.stop().await?;
                            if let StreamEnd::ServerEnded = end {
                                tracing::warn!("the server ended the replication stream");
                            }
                            return Ok(self.summary(acknowledged));
                        }
                        Err(e) => {
                            let transient = matches!(&e, CaptureError::Source(s) if s.is_transient());
                            if !transient {
                                // Stopping for good: still tell Postgres what is
                                // durable, so a restart repeats as little as possible.
                                if let Ok(durable) = dest.durable() {
                                    stream.acknowledge(durable);
                                }
                                if let Err(stop_err) = stream.stop().await {
                                    tracing::warn!("could not report the acknowledged LSN on the way out: {stop_err}");
                                }
                            }
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(CaptureError::Source(e)),
            };
            let Err(err) = result else { continue };
            let CaptureError::Source(source_err) = err else {
                return Err(err);
            };
            if !source_err.is_transient() {
                return Err(CaptureError::Source(source_err));
            }
            attempt += 1;
            self.metrics.set_phase(Phase::Reconnecting);
            self.metrics.count_reconnect();
            if attempt > config.max_reconnect_attempts {
                return Err(CaptureError::GaveUp {
                    attempts: attempt - 1,
                    last: source_err,
                });
            }
            // An interrupted transaction is re-sent from its Begin.
            if self.tx.take().is_some() {
                dest.abandon_transaction();
            }
            let backoff = backoff(attempt, config.reconnect_backoff_max);
            tracing::warn!(attempt, ?backoff, "{source_err}");
            tokio::select! {
                _ = shutdown.changed() => return Ok(self.summary(acknowledged)),
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// One prioritised loop: shutdown first, then delivery progress (acks),
    /// then status updates while paused, then new input. A full
    /// destination pauses reading (backpressure), never buffers.
    async fn stream<D: Destination>(
        &mut self,
        stream: &mut ReplicationStream,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        status_interval: Duration,
    ) -> Result<StreamEnd, CaptureError> {
        let mut lag_check = tokio::time::interval(LAG_CHECK_EVERY);
        lag_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = self.heartbeat.map(|every| {
            let mut i = tokio::time::interval(every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let full = dest.is_full();
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(StreamEnd::Shutdown),
                _ = dest.progressed() => {
                    self.acknowledge_durable(stream, dest)?;
                    self.chunks_durable(dest.durable()?).await?;
                }
                done = reader_finished(&mut self.incremental) => self.chunk_read(done?).await?,
                _ = tokio::time::sleep(status_interval), if full => {
                    // Paused on the destination: keep the walsender from
                    // timing us out, and tell it what became durable.
                    self.acknowledge_durable(stream, dest)?;
                    stream.send_status().await?;
                }
                _ = lag_check.tick() => {
                    self.check_lag().await?;
                    if let Some(inc) = self.incremental.as_mut() {
                        let published = captured_tables(&self.sql, &self.publication, &self.state_schema).await?;
                        inc.refresh_tables(&self.sql, published).await?;
                    }
                    self.chunks_durable(dest.durable()?).await?;
                }
                _ = std::future::ready(()), if !full && self.incremental.as_ref().is_some_and(Incremental::can_start) => {
                    self.start_chunk().await?;
                }
                _ = tick(&mut heartbeat), if heartbeat.is_some() => {
                    self.sql
                        .execute("SELECT pg_logical_emit_message(false, 'walhouse.heartbeat', now()::text)", &[])
                        .await
                        .map_err(SourceError::Sql)?;
                }
                next = stream.next(), if !full => {
                    let Some((lsn, msg)) = next? else {
                        return Ok(StreamEnd::ServerEnded);
                    };
                    if let Some(ack) = self.apply(lsn, msg, dest).await? {
                        dest.end_transaction(ack).await?;
                        self.acknowledge_durable(stream, dest)?;
                        self.chunks_durable(dest.durable()?).await?;
                    }
                }
            }
        }
    }

    /// Takes in a table's shape (from a Relation message or the snapshot):
    /// the catalog facts pgoutput does not send, the cache, the destination.
    async fn learn_relation<D: Destination>(
        &mut self,
        rel: Relation,
        dest: &mut D,
    ) -> Result<Arc<Relation>, CaptureError> {
        let missing = self.cache.missing_type_infos(&rel);
        if !missing.is_empty() {
            let infos = load_type_infos(&self.sql, &missing).await?;
            self.cache.insert_type_infos(infos);
        }
        let columns_info = load_column_infos(&self.sql, rel.id).await?;
        self.cache.set_column_infos(rel.id, columns_info);
        let (id, name, columns) = (rel.id, format!("{}.{}", rel.namespace, rel.name), rel.columns.len());
        let change = self.cache.apply_relation(rel);
        // A renamed table keeps its id: name it afresh.
        self.table_names.remove(&id);
        let relation = self.cache.get(id)?.clone();
        // walhouse's progress tables reach a FOR ALL TABLES stream too; their
        // changes are dropped, so they get no schema subject and no topic.
        if !self.is_own(&relation) {
            dest.relation(&relation, &self.cache).await?;
        }
        if change == RelationChange::Changed {
            // Relation messages are not WAL records (they arrive at 0/0):
            // name the transaction that carried the new shape instead.
            let commit_lsn = self.tx.map(|t| t.commit_lsn.to_string()).unwrap_or_default();
            tracing::info!(table = %name, columns, %commit_lsn, "table shape changed");
        }
        Ok(relation)
    }

    /// Sends one snapshot row, waiting (not buffering) while the destination
    /// is full. False when shutdown came first.
    #[allow(clippy::too_many_arguments)]
    async fn snapshot_row<D: Destination>(
        &mut self,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        tx: &TxInfo,
        ordinal: u64,
        relation: &Relation,
        tuple: &Tuple,
        mark: SnapshotMark,
    ) -> Result<bool, CaptureError> {
        if !room_or_shutdown(dest, shutdown).await {
            return Ok(false);
        }
        self.send_read(dest, tx, ordinal, relation, tuple, mark).await?;
        Ok(true)
    }

    /// Hands over snapshot rows a copy worker encoded, after backpressure
    /// as for single rows. False when shutdown came first.
    async fn snapshot_encoded<D: Destination>(
        &mut self,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        relation: &Relation,
        rows: &EncodedRows,
    ) -> Result<bool, CaptureError> {
        if !room_or_shutdown(dest, shutdown).await {
            return Ok(false);
        }
        dest.send_encoded(rows).await?;
        self.events += rows.len() as u64;
        self.count(relation, "read", rows.len() as u64);
        Ok(true)
    }

    /// Sends a row read by a snapshot (initial or incremental) as an
    /// insert marked `mark`, in the pseudo-transaction `tx`.
    async fn send_read<D: Destination>(
        &mut self,
        dest: &mut D,
        tx: &TxInfo,
        ordinal: u64,
        relation: &Relation,
        tuple: &Tuple,
        mark: SnapshotMark,
    ) -> Result<(), CaptureError> {
        let event = ChangeEvent {
            lsn: tx.commit_lsn,
            tx: Some(tx),
            tx_ordinal: ordinal,
            kind: ChangeKind::Insert { relation, new: tuple },
            snapshot: Some(mark),
        };
        dest.send(&event).await?;
        self.events += 1;
        self.count(relation, "read", 1);
        Ok(())
    }

    /// Measures the WAL the slot holds back; warns past the threshold.
    async fn check_lag(&mut self) -> Result<(), CaptureError> {
        let Some((lag, unlimited)) = slot::lag(&self.sql, &self.slot).await? else {
            return Ok(());
        };
        let lag = lag.max(0) as u64;
        self.metrics.set_slot_lag(lag);
        if lag > self.lag_warn_bytes {
            tracing::warn!(
                slot = %self.slot,
                lag_bytes = lag,
                "the slot holds back {:.1} GiB of WAL on the source{}",
                lag as f64 / (1u64 << 30) as f64,
                if unlimited {
                    " and max_slot_wal_keep_size is unlimited: the source's disk is at risk. Fix: find what slows delivery (see in_flight_events), and set max_slot_wal_keep_size"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    /// Counts an event for metrics under `schema.table`, naming each
    /// relation once rather than formatting per event.
    fn count(&mut self, relation: &Relation, op: &str, n: u64) {
        let name = self
            .table_names
            .entry(relation.id)
            .or_insert_with(|| format!("{}.{}", relation.namespace, relation.name));
        self.metrics.count_events(name, op, n);
    }

    /// Acknowledges whatever the destination reports durable, and
    /// publishes where things stand.
    fn acknowledge_durable<D: Destination>(
        &self,
        stream: &mut ReplicationStream,
        dest: &D,
    ) -> Result<(), CaptureError> {
        let durable = dest.durable()?;
        if durable > stream.progress().acknowledged {
            stream.acknowledge(durable);
        }
        let p = stream.progress();
        self.metrics.set_positions(p.received.0, p.acknowledged.0);
        let st = dest.stats();
        self.metrics
            .set_destination(st.in_flight, st.bytes_sent, st.registry_calls);
        Ok(())
    }

    /// Applies one message; returns the LSN to acknowledge when it ends a
    /// unit of acknowledgement (a commit, or a non-transactional message).
    async fn apply<D: Destination>(
        &mut self,
        lsn: Lsn,
        msg: LogicalMessage,
        dest: &mut D,
    ) -> Result<Option<Lsn>, CaptureError> {
        match msg {
            LogicalMessage::Begin(b) => {
                self.tx = Some(TxInfo {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_time: b.commit_time,
                });
                self.tx_ordinal = 0;
            }
            LogicalMessage::Commit(c) => {
                self.tx = None;
                // A transaction that only wrote walhouse's progress tables
                // carried nothing (Postgres itself skips empty ones).
                if self.tx_ordinal > 0 {
                    self.transactions += 1;
                    self.metrics.count_transaction();
                }
                return Ok(Some(c.end_lsn));
            }
            LogicalMessage::Relation(rel) => {
                self.learn_relation(rel, dest).await?;
            }
            LogicalMessage::Type(t) => self.cache.apply_type(t),
            LogicalMessage::Origin(o) => tracing::debug!(origin = %o.name, "transaction from origin"),
            LogicalMessage::Insert(i) => {
                let relation = self.cache.get(i.relation_id)?.clone();
                check_arity(&relation, &i.new)?;
                if self.is_own(&relation) {
                    return Ok(None);
                }
                self.watch(&relation, None, Some(&i.new));
                self.emit(
                    lsn,
                    ChangeKind::Insert {
                        relation: &relation,
                        new: &i.new,
                    },
                    dest,
                )
                .await?;
            }
            LogicalMessage::Update(u) => {
                let relation = self.cache.get(u.relation_id)?.clone();
                check_arity(&relation, &u.new)?;
                if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = &u.old {
                    check_arity(&relation, t)?;
                }
                if self.is_own(&relation) {
                    return Ok(None);
                }
                self.watch(&relation, u.old.as_ref(), Some(&u.new));
                let kind = ChangeKind::Update {
                    relation: &relation,
                    old: u.old.as_ref(),
                    new: &u.new,
                };
                self.emit(lsn, kind, dest).await?;
            }
            LogicalMessage::Delete(d) => {
                let relation = self.cache.get(d.relation_id)?.clone();
                let (OldTuple::Key(t) | OldTuple::Full(t)) = &d.old;
                check_arity(&relation, t)?;
                if self.is_own(&relation) {
                    return Ok(None);
                }
                self.watch(&relation, Some(&d.old), None);
                self.emit(
                    lsn,
                    ChangeKind::Delete {
                        relation: &relation,
                        old: &d.old,
                    },
                    dest,
                )
                .await?;
            }
            LogicalMessage::Truncate(t) => {
                let relations = t
                    .relation_ids
                    .iter()
                    .map(|id| self.cache.get(*id).cloned())
                    .collect::<Result<Vec<Arc<_>>, _>>()?;
                let relations: Vec<Arc<Relation>> = relations.into_iter().filter(|r| !self.is_own(r)).collect();
                if relations.is_empty() {
                    return Ok(None);
                }
                if let Some(inc) = self.incremental.as_mut() {
                    if relations.iter().any(|r| Some(r.id) == inc.window_relation()) {
                        inc.truncated();
                    }
                }
                let kind = ChangeKind::Truncate {
                    relations: &relations,
                    cascade: t.cascade,
                    restart_identity: t.restart_identity,
                };
                self.emit(lsn, kind, dest).await?;
            }
            LogicalMessage::Message(m) => {
                let transactional = m.transactional && self.tx.is_some();
                if !self.control_message(lsn, &m, dest).await? {
                    self.emit(lsn, ChangeKind::Message(&m), dest).await?;
                }
                if !transactional {
                    return Ok(Some(lsn));
                }
            }
            LogicalMessage::StreamStart(_)
            | LogicalMessage::StreamStop
            | LogicalMessage::StreamCommit(_)
            | LogicalMessage::StreamAbort(_) => return Err(CaptureError::UnexpectedStream { lsn }),
        }
        Ok(None)
    }

    async fn captured_tables(&self) -> Result<Vec<publication::TableName>, CaptureError> {
        captured_tables(&self.sql, &self.publication, &self.state_schema).await
    }

    /// Whether `relation` is one of walhouse's progress tables (a
    /// publication FOR ALL TABLES includes them).
    fn is_own(&self, relation: &Relation) -> bool {
        self.state_schema == relation.namespace
    }

    /// Tells an open incremental-snapshot window about a change of its table.
    fn watch(&mut self, relation: &Relation, old: Option<&OldTuple>, new: Option<&Tuple>) {
        let Some(inc) = self.incremental.as_mut() else { return };
        if inc.window_relation() != Some(relation.id) {
            return;
        }
        let xid = self.tx.map(|t| t.xid).unwrap_or(0);
        let keys = relation.identity_positions();
        if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = old {
            inc.touch(watermark::row_key(t, &keys), xid);
        }
        if let Some(t) = new {
            // An update's new tuple may leave an unchanged key out; the old
            // key (sent only when the key changed) already covers it.
            match watermark::row_key(t, &keys) {
                Some(k) => inc.touch(Some(k), xid),
                None if old.is_some() => {}
                None => inc.touch(None, xid),
            }
        }
    }

    async fn emit<D: Destination>(&mut self, lsn: Lsn, kind: ChangeKind<'_>, dest: &mut D) -> Result<(), CaptureError> {
        let in_tx = self.tx.is_some() && !matches!(&kind, ChangeKind::Message(m) if !m.transactional);
        if in_tx {
            self.tx_ordinal += 1;
        }
        let event = ChangeEvent {
            lsn,
            tx: if in_tx { self.tx.as_ref() } else { None },
            tx_ordinal: if in_tx { self.tx_ordinal } else { 0 },
            kind,
            snapshot: None,
        };
        dest.send(&event).await?;
        self.events += 1;
        match &event.kind {
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => self
                .metrics
                .count_event(&format!("{}.{}", relation.namespace, relation.name), event.op()),
            ChangeKind::Truncate { relations, .. } => {
                for r in relations.iter() {
                    self.metrics
                        .count_event(&format!("{}.{}", r.namespace, r.name), "truncate");
                }
            }
            ChangeKind::Message(_) => {}
        }
        Ok(())
    }
}

/// Waits while the destination is full (backpressure); false when
/// shutdown came first.
async fn room_or_shutdown<D: Destination>(dest: &D, shutdown: &mut watch::Receiver<bool>) -> bool {
    while dest.is_full() {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return false,
            _ = dest.progressed() => {}
        }
    }
    !*shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(1, max), Duration::from_millis(250));
        assert_eq!(backoff(2, max), Duration::from_millis(500));
        assert_eq!(backoff(3, max), Duration::from_secs(1));
        assert_eq!(backoff(10, max), max);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
