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
pub mod change;
pub mod config;
pub mod destination;
mod emitter;
mod error;
pub mod format;
mod incremental;
mod initial;
pub mod metrics;
mod published;
pub mod snapshot_progress;
mod spool;
mod standby;
pub mod watermark;

pub use error::CaptureError;
pub use incremental::{Signal, SIGNAL_PREFIX, WATERMARK_PREFIX};
pub use initial::snapshot_slot_name;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use self::config::{CaptureConfig, OutputKind, SnapshotMode};
use self::destination::kafka::producer::KafkaDestination;
use self::destination::stdout::JsonLines;
use self::snapshot_progress::{Phase as SnapshotPhase, ProgressStore};
use crate::capture::change::{check_arity, ChangeEvent, ChangeKind, TxInfo};
use crate::capture::destination::{Destination, OutputError};
use crate::capture::metrics::{Metrics, Phase};
use crate::postgres::client::ReadColumn;
use crate::postgres::pgoutput::{
    Begin, Commit, Decoder, LogicalMessage, Message, OldTuple, Relation, StreamCommit, Tuple,
};
use crate::postgres::replication::{Received, ReplicationClient, ReplicationStream, StreamOptions};
use crate::postgres::{client, publication, slot, Lsn, SourceError};
use crate::registry::Registry;
use emitter::Emitter;
use incremental::Incremental;
use published::{captured_tables, retain_captured};
use spool::{Replay, Spools};
use standby::Writer;

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
    let (brokers, registry) = config.kafka.endpoints()?;
    let registry = Arc::new(Registry::new(&registry).map_err(OutputError::from)?);
    Ok(KafkaDestination::new(
        &config.kafka,
        brokers,
        &config.source.dbname,
        registry,
    )?)
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
    let sql = Arc::new(sql);
    let writer = Writer::connect(config, &sql).await?;
    let setup = set_up(config, &sql, &writer).await?;
    dest.prepare(&setup.tables).await?;
    // Which system the positions belong to; asked again on each reconnect
    // (a failover to a promoted standby keeps it).
    let mut repl = ReplicationClient::connect(&config.source).await?;
    let identity = repl.identify_system().await?;
    tracing::info!(system_id = %identity.system_id, timeline = identity.timeline, "source identified");
    dest.system_id(&identity.system_id);
    let spools = spools(config, repl.server_version_num(), &identity.system_id)?;
    drop(repl);
    let mut state = LoopState {
        config,
        emitter: Emitter::new(sql.clone(), metrics.clone(), &config.state_schema),
        sql,
        writer,
        incremental: None,
        spools,
        tx: None,
        tx_ordinal: 0,
        transactions: 0,
    };
    if config.snapshot_mode == SnapshotMode::InitialOnly {
        if !setup.needs_snapshot {
            tracing::info!(slot = %config.slot, "the slot exists, so its snapshot was taken before: nothing to do");
            return Ok(state.summary(Lsn::ZERO));
        }
        // No slot is kept, so no progress either: a cut-off run starts over.
        let done =
            initial::initial_snapshot(config, &mut state.emitter, &state.writer, dest, &mut shutdown, None).await?;
        return Ok(state.summary(done.unwrap_or(Lsn::ZERO)));
    }
    if setup.needs_snapshot {
        let done = initial::initial_snapshot(
            config,
            &mut state.emitter,
            &state.writer,
            dest,
            &mut shutdown,
            setup.progress.as_ref(),
        )
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
            &state.writer.client,
        )
        .await?;
        inc.refresh_tables(&state.writer.client, published).await?;
        state.incremental = Some(inc);
    }
    state
        .stream_with_reconnects(dest, &mut shutdown, setup.status_interval)
        .await
}

/// The spools of streamed transactions, when the server can stream them
/// (Postgres 14+) and `--stream-transactions` is on.
fn spools(config: &CaptureConfig, server_version_num: u32, system_id: &str) -> Result<Option<Spools>, CaptureError> {
    if !config.stream_transactions {
        tracing::info!("pgoutput protocol 1: Postgres keeps large transactions on its own disk until they commit");
        return Ok(None);
    }
    if server_version_num < 140000 {
        tracing::info!(
            server_version_num,
            "the source cannot stream transactions in progress (Postgres 14+): pgoutput protocol 1, large transactions spill on the source"
        );
        return Ok(None);
    }
    let dir = config.spool_dir(system_id);
    let spools = Spools::open(&dir, config.spool_max_bytes)?;
    tracing::info!(spool_dir = %dir.display(), "large transactions are streamed while they run (pgoutput protocol 2) and spooled until they commit");
    Ok(Some(spools))
}

/// What start-up found and made ready.
struct Setup {
    /// The tables captured.
    tables: Vec<publication::TableName>,
    status_interval: Duration,
    /// Where snapshot progress is kept (`initial` mode only).
    progress: Option<ProgressStore>,
    /// No slot exists yet: the initial snapshot creates it.
    needs_snapshot: bool,
}

/// Checks the source, makes sure the publication exists (and, with
/// `never`, the slot), warns about unbounded WAL retention and decides
/// whether an initial snapshot is due.
async fn set_up(config: &CaptureConfig, sql: &tokio_postgres::Client, writer: &Writer) -> Result<Setup, CaptureError> {
    let source = &config.source;
    slot::preflight(sql, &source.user).await?;
    // Progress and the publication are written where writes go (the
    // primary, when the source is a standby).
    let state = &*writer.client;
    // Progress is kept when a snapshot may have to resume: not for
    // `never` (no snapshot) nor `initial_only` (no slot to resume from).
    let progress =
        (config.snapshot_mode == SnapshotMode::Initial).then(|| ProgressStore::new(&config.state_schema, &config.slot));
    let mut tables = publication::ensure(
        state,
        &config.publication,
        &config.table_selection(),
        &config.table_options(),
        config.replica_identity_full,
    )
    .await?;
    // A slot decodes with the catalog as of each change: the standby must
    // have replayed the publication before its slot is made.
    writer.wait_replayed(sql).await?;
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
    let status_interval = match config.status_interval_ms {
        Some(ms) => Duration::from_millis(ms),
        None => slot::status_interval(slot::wal_sender_timeout(sql).await?),
    };
    if let Some(p) = &progress {
        p.ensure(state, &source.user).await?;
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
                adopt_slot(p, state, &tables, config.snapshot_chunk_pages).await?;
            }
        }
        None if config.snapshot_mode == SnapshotMode::Never => {
            let mut repl = ReplicationClient::connect(source)
                .await?
                .with_failover(config.slot_failover)?;
            let created = writer.while_creating_slot(repl.create_slot(&config.slot)).await?;
            tracing::info!(slot = %created.name, consistent_point = %created.consistent_point, "created replication slot (no snapshot)");
        }
        None => {
            if let Some(p) = &progress {
                refuse_lost_slot(p, state, &config.slot).await?;
            }
            needs_snapshot = true;
        }
    }
    Ok(Setup {
        tables,
        status_interval,
        progress,
        needs_snapshot,
    })
}

/// Stops when the slot is gone but the source recorded a snapshot taken
/// through it (copying or done): its changes since are lost, and a new
/// snapshot alone would make downstream wrong. A snapshot cut off before
/// the slot was made (`starting`) is simply taken again.
async fn refuse_lost_slot(store: &ProgressStore, sql: &tokio_postgres::Client, slot: &str) -> Result<(), CaptureError> {
    match store.phase(sql).await? {
        Some((phase, consistent)) if phase != SnapshotPhase::Starting => Err(CaptureError::SlotLost {
            slot: slot.to_owned(),
            phase: phase.as_str(),
            consistent: consistent.map_or_else(|| "unknown".into(), |l| l.to_string()),
            clear: store.clear_sql(),
        }),
        _ => Ok(()),
    }
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

/// 250 ms, 500 ms, 1 s, … capped at `max`.
fn backoff(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16))).min(max)
}

/// Where a received message goes.
enum Route {
    /// Applied now, as protocol 1 would have sent it.
    Apply(Lsn, LogicalMessage),
    /// Kept in a streamed transaction's spool, or a block or abort marker.
    Spooled,
    /// A streamed transaction committed: its spool, to replay.
    Commit(StreamCommit, Option<Replay>),
}

/// What the stream loop owns across reconnects.
struct LoopState<'c> {
    config: &'c CaptureConfig,
    /// Everything sent leaves through it, snapshots' rows too.
    emitter: Emitter,
    /// For the loop's own reads of the source: lag, the publication.
    sql: Arc<tokio_postgres::Client>,
    /// For its writes: heartbeats, snapshot progress.
    writer: Writer,
    incremental: Option<Incremental>,
    /// Streamed transactions in progress; `None` with protocol 1.
    spools: Option<Spools>,
    /// The open transaction, and its changes so far.
    tx: Option<TxInfo>,
    tx_ordinal: u64,
    transactions: u64,
}

impl LoopState<'_> {
    fn summary(&self, acknowledged: Lsn) -> CaptureSummary {
        CaptureSummary {
            acknowledged,
            events: self.emitter.events(),
            transactions: self.transactions,
        }
    }

    /// Streams from the slot until shutdown, reconnecting after transient
    /// failures (from the last acknowledged LSN, with backoff, a bounded
    /// number of times); any other error stops capture.
    async fn stream_with_reconnects<D: Destination>(
        &mut self,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        status_interval: Duration,
    ) -> Result<CaptureSummary, CaptureError> {
        let config = self.config;
        let mut acknowledged = Lsn::ZERO;
        let mut attempt = 0u32;
        loop {
            let streaming = self.spools.is_some();
            let options = StreamOptions {
                publications: vec![config.publication.clone()],
                status_interval,
                proto_version: if streaming { 2 } else { 1 },
                streaming,
                ..StreamOptions::default()
            };
            // Every transaction in progress is streamed again from its first
            // block on the new connection.
            if let Some(spools) = self.spools.as_mut() {
                spools.clear();
                self.emitter.metrics().set_spool(0, 0);
            }
            // The SQL connection goes down with the server too (a restart,
            // a failover): without a new one, every reconnect would fail on
            // its first catalog query.
            if self.sql.is_closed() {
                match client::connect(&config.source).await {
                    Ok((sql, _driver)) => {
                        tracing::info!("SQL connection to the source opened again");
                        self.sql = Arc::new(sql);
                        self.emitter.set_catalog(self.sql.clone());
                    }
                    Err(e) => tracing::debug!("SQL connection not back yet: {e}"),
                }
            }
            if let Err(e) = self.writer.reconnect(config, &self.sql).await {
                tracing::debug!("connection to the primary not back yet: {e}");
            }
            let started = async {
                let mut repl = ReplicationClient::connect(&config.source).await?;
                let identity = repl.identify_system().await?;
                dest.system_id(&identity.system_id);
                repl.start_replication(&config.slot, acknowledged, options).await
            };
            let result: Result<(), CaptureError> = match started.await {
                Ok(mut stream) => {
                    tracing::info!(slot = %config.slot, from = %acknowledged, "streaming");
                    self.emitter.metrics().set_phase(Phase::Streaming);
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
            self.emitter.metrics().set_phase(Phase::Reconnecting);
            self.emitter.metrics().count_reconnect();
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
            let backoff = backoff(attempt, Duration::from_millis(config.reconnect_backoff_max_ms));
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
        let heartbeat_ms = Some(self.config.heartbeat_interval_ms).filter(|&ms| ms > 0);
        let mut heartbeat = heartbeat_ms.map(|ms| {
            let mut i = tokio::time::interval(Duration::from_millis(ms));
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
                done = reader_finished(&mut self.incremental) => {
                    if let Some(inc) = self.incremental.as_mut() {
                        inc.chunk_read(done?, &self.writer.client).await?;
                    }
                }
                _ = tokio::time::sleep(status_interval), if full => {
                    // Paused on the destination: keep the walsender from
                    // timing us out, and tell it what became durable.
                    self.acknowledge_durable(stream, dest)?;
                    stream.send_status().await?;
                }
                _ = lag_check.tick() => {
                    self.check_lag().await?;
                    if self.incremental.is_some() {
                        let published = self.captured_tables().await?;
                        if let Some(inc) = self.incremental.as_mut() {
                            inc.refresh_tables(&self.writer.client, published).await?;
                        }
                    }
                    self.chunks_durable(dest.durable()?).await?;
                }
                _ = std::future::ready(()), if !full && self.incremental.as_ref().is_some_and(Incremental::can_start) => {
                    if let Some(inc) = self.incremental.as_mut() {
                        inc.start_chunk(&self.writer).await?;
                    }
                }
                _ = tick(&mut heartbeat), if heartbeat.is_some() => {
                    self.writer
                        .client
                        .execute("SELECT pg_logical_emit_message(false, 'walhouse.heartbeat', now()::text)", &[])
                        .await
                        .map_err(SourceError::Sql)?;
                }
                next = stream.next_received(), if !full => {
                    let Some(received) = next? else {
                        return Ok(StreamEnd::ServerEnded);
                    };
                    let ack = match self.route(received)? {
                        Route::Apply(lsn, msg) => self.apply(lsn, msg, dest).await?,
                        Route::Spooled => None,
                        Route::Commit(commit, replay) => {
                            let replayed = self.replay(commit, replay, stream, dest, shutdown, status_interval).await?;
                            let Some(ack) = replayed else {
                                return Ok(StreamEnd::Shutdown);
                            };
                            Some(ack)
                        }
                    };
                    if let Some(ack) = ack {
                        dest.end_transaction(ack).await?;
                        self.acknowledge_durable(stream, dest)?;
                        self.chunks_durable(dest.durable()?).await?;
                    }
                }
            }
        }
    }

    /// Where a received message goes: into its streamed transaction's
    /// spool, or on to be applied now; a Stream Commit brings its spool
    /// back for replay.
    fn route(&mut self, received: Received) -> Result<Route, CaptureError> {
        let Received { lsn, message, payload } = received;
        let Some(spools) = self.spools.as_mut() else {
            return Ok(Route::Apply(lsn, message));
        };
        let route = match message {
            LogicalMessage::StreamStart(s) => {
                spools.start_block(s.xid, s.first_segment)?;
                Route::Spooled
            }
            LogicalMessage::StreamStop => {
                spools.stop_block();
                Route::Spooled
            }
            LogicalMessage::StreamAbort(a) => {
                spools.abort(a.xid, a.subxid)?;
                Route::Spooled
            }
            LogicalMessage::StreamCommit(c) => {
                let replay = spools.commit(c.xid)?;
                Route::Commit(c, replay)
            }
            m if spools.in_block() => {
                spools.append(m.stream_xid(), lsn, &payload)?;
                Route::Spooled
            }
            m => Route::Apply(lsn, m),
        };
        self.emitter
            .metrics()
            .set_spool(spools.in_progress() as u64, spools.bytes());
        Ok(route)
    }

    /// Applies a committed streamed transaction from its spool, as if it
    /// had come as Begin … Commit at its commit: the same commit LSN, time
    /// and ordinals. Waits on a full destination as reading does, keeping
    /// the walsender informed meanwhile. `None` when shutdown came first;
    /// otherwise the LSN to acknowledge once durable.
    async fn replay<D: Destination>(
        &mut self,
        commit: StreamCommit,
        replay: Option<Replay>,
        stream: &mut ReplicationStream,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        status_interval: Duration,
    ) -> Result<Option<Lsn>, CaptureError> {
        let mut replay = replay;
        let mut next = replay.as_mut().map(Replay::next_message).transpose()?.flatten();
        let begin = Begin {
            final_lsn: commit.commit_lsn,
            commit_time: commit.commit_time,
            xid: commit.xid,
        };
        let begin_lsn = next.as_ref().map_or(commit.commit_lsn, |(lsn, _)| *lsn);
        self.apply(begin_lsn, LogicalMessage::Begin(begin), dest).await?;
        let mut decoder = Decoder::streamed();
        let mut status_due = tokio::time::Instant::now() + status_interval;
        while let Some((lsn, payload)) = next {
            // Status goes out when due, whether or not the destination is
            // full; a full one is waited on until it has room.
            loop {
                if tokio::time::Instant::now() >= status_due {
                    if *shutdown.borrow() {
                        return Ok(None);
                    }
                    self.acknowledge_durable(stream, dest)?;
                    stream.send_status().await?;
                    status_due = tokio::time::Instant::now() + status_interval;
                }
                if !dest.is_full() {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return Ok(None),
                    _ = dest.progressed() => self.acknowledge_durable(stream, dest)?,
                    _ = tokio::time::sleep_until(status_due) => {}
                }
            }
            let message = decoder
                .decode(payload)
                .map_err(|source| SourceError::Decode { lsn, source })?;
            self.apply(lsn, message, dest).await?;
            next = replay.as_mut().map(Replay::next_message).transpose()?.flatten();
        }
        // The spool file goes now, before the records are even durable: a
        // restart streams the transaction again.
        drop(replay);
        let end = Commit {
            flags: commit.flags,
            commit_lsn: commit.commit_lsn,
            end_lsn: commit.end_lsn,
            commit_time: commit.commit_time,
        };
        let ack = self.apply(commit.end_lsn, LogicalMessage::Commit(end), dest).await?;
        self.emitter.metrics().count_streamed_transaction();
        Ok(ack)
    }

    /// Measures the WAL the slot holds back; warns past the threshold.
    async fn check_lag(&mut self) -> Result<(), CaptureError> {
        let slot_name = &self.config.slot;
        if let Some(stats) = slot::stats(&self.sql, slot_name).await? {
            self.emitter.metrics().set_source_slot_stats(stats);
        }
        let Some((lag, unlimited)) = slot::lag(&self.sql, slot_name).await? else {
            return Ok(());
        };
        let lag = lag.max(0) as u64;
        self.emitter.metrics().set_slot_lag(lag);
        if lag > self.config.slot_lag_warn_bytes {
            tracing::warn!(
                slot = %slot_name,
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
        let metrics = self.emitter.metrics();
        metrics.set_positions(p.received.0, p.acknowledged.0);
        let st = dest.stats();
        metrics.set_destination(st.in_flight, st.bytes_sent, st.registry_calls);
        metrics.set_standby_waits(stream.standby_waits());
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
                    begin_lsn: lsn,
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
                    self.emitter.metrics().count_transaction();
                }
                return Ok(Some(c.end_lsn));
            }
            LogicalMessage::Relation(rel) => {
                self.emitter.learn_streamed_relation(rel, self.tx.as_ref()).await?;
            }
            LogicalMessage::Type(t) => self.emitter.learn_type(t),
            LogicalMessage::Origin(o) => tracing::debug!(origin = %o.name, "transaction from origin"),
            LogicalMessage::Insert(i) => {
                let relation = self.emitter.relation(i.relation_id)?;
                check_arity(&relation, &i.new)?;
                if self.emitter.is_own(&relation) {
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
                let relation = self.emitter.relation(u.relation_id)?;
                check_arity(&relation, &u.new)?;
                if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = &u.old {
                    check_arity(&relation, t)?;
                }
                if self.emitter.is_own(&relation) {
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
                let relation = self.emitter.relation(d.relation_id)?;
                let (OldTuple::Key(t) | OldTuple::Full(t)) = &d.old;
                check_arity(&relation, t)?;
                if self.emitter.is_own(&relation) {
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
                    .map(|id| self.emitter.relation(*id))
                    .collect::<Result<Vec<Arc<_>>, _>>()?;
                let relations: Vec<Arc<Relation>> = relations.into_iter().filter(|r| !self.emitter.is_own(r)).collect();
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
        captured_tables(&self.sql, &self.config.publication, &self.config.state_schema).await
    }

    /// A `walhouse.*` logical message (a watermark or a signal) goes to the
    /// incremental snapshot; true when it was one (not forwarded).
    async fn control_message<D: Destination>(
        &mut self,
        lsn: Lsn,
        m: &Message,
        dest: &mut D,
    ) -> Result<bool, CaptureError> {
        if !incremental::is_control(m) {
            return Ok(false);
        }
        match self.incremental.as_mut() {
            Some(inc) => {
                inc.control_message(lsn, m, &self.config.slot, &mut self.emitter, &self.writer.client, dest)
                    .await?
            }
            None => incremental::without_snapshots(m, &self.config.slot),
        }
        Ok(true)
    }

    /// Records incremental chunks that became durable.
    async fn chunks_durable(&mut self, durable: Lsn) -> Result<(), CaptureError> {
        match self.incremental.as_mut() {
            Some(inc) => {
                inc.chunks_durable(durable, &self.writer.client, self.emitter.metrics())
                    .await
            }
            None => Ok(()),
        }
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
        self.emitter.send(&event, dest).await?;
        // A test hook inside a transaction (after its second record): a
        // reconnect there re-sends the transaction from its Begin.
        if in_tx && self.tx_ordinal == 2 {
            crate::failpoint::pause("capture.mid_transaction").await;
        }
        Ok(())
    }
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
