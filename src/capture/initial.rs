//! The initial snapshot: every published table copied, in chunks of heap
//! pages, by several connections that share the slot's exported snapshot.
//!
//! Copy workers read chunks in parallel; the capture loop sends their rows
//! in plan order, one destination unit per chunk. Nothing is acknowledged
//! to Postgres while the snapshot runs (the slot is not streaming yet), so
//! units are numbered by chunk — `Lsn(k)` closes chunk `k` — and the
//! destination's durable position says how many chunks are safe; those are
//! marked done in the progress tables. The last unit closes at the slot's
//! consistent point, where streaming then starts.
//!
//! Cut off (crash, stop), the snapshot resumes on the next start: the slot
//! exists and its progress says `copying`, so the chunks not done are read
//! by the incremental method while the slot streams from the consistent
//! point ([`super::incremental`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::emitter::{room_or_shutdown, Emitter};
use super::error::CaptureError;
use super::published::captured_tables;
use super::standby::Writer;
use crate::capture::change::{ChangeEvent, ChangeKind, SnapshotMark, TxInfo};
use crate::capture::config::{CaptureConfig, SnapshotMode};
use crate::capture::destination::{Destination, EncodedRows, RowEncoder};
use crate::capture::snapshot_progress::{self, Chunk, Phase, ProgressStore};
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::partitions::{self, TreeMember};
use crate::postgres::pgoutput::{PgTimestamp, Relation, Tuple};
use crate::postgres::publication::TableName;
use crate::postgres::replication::ReplicationClient;
use crate::postgres::snapshot::{self, PageRange, SnapshotError};
use crate::postgres::{client, Lsn, SourceError};

/// The temporary slot that exports the initial snapshot: `<slot>_snap`,
/// within Postgres's 63-character limit.
pub fn snapshot_slot_name(slot: &str) -> String {
    format!("{}_snap", &slot[..slot.len().min(58)])
}

/// Rows per message from a copy worker.
const BATCH_ROWS: usize = 512;
/// Batches a worker may read ahead of the capture loop.
const READ_AHEAD_BATCHES: usize = 8;

enum Piece {
    /// Rows the capture loop sends itself: the last of each chunk (so the
    /// very last row of the snapshot can be marked), rows the destination's
    /// encoder refused, and every row when it offers no encoder.
    Rows(Vec<Tuple>),
    /// Rows the worker encoded, in order.
    Encoded(EncodedRows),
    /// The table as it is now, for the rest of the chunk: its columns
    /// changed since the snapshot (see [`copy_worker`]).
    Relation(Relation),
    /// The chunk is complete.
    End,
}

/// One chunk for a copy worker.
struct ChunkJob {
    /// Position in the plan (0-based).
    k: usize,
    relation: Arc<Relation>,
    filter: Option<Arc<str>>,
    pages: PageRange,
    encoder: Option<Arc<dyn RowEncoder>>,
}

/// `source.tx_ordinal` of the `row`-th row (from 1) of chunk `k`: chunks
/// are read in parallel, so a row's position in the whole snapshot is not
/// known where it is encoded. Unique and increasing in the order sent.
fn snapshot_ordinal(k: usize, row: u64) -> u64 {
    ((k as u64 + 1) << 32) | row
}

/// Rate and time left for log lines and metrics.
pub(super) struct Pace {
    started: Instant,
    last_log: Instant,
}

impl Pace {
    pub(super) fn new() -> Self {
        Pace {
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// `(rows/s, seconds left)` after `done` of `total` chunks and `rows` rows.
    pub(super) fn estimate(&self, rows: u64, done: u64, total: u64) -> (u64, u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (rows as f64 / secs) as u64;
        let left = if done == 0 {
            0
        } else {
            (secs / done as f64 * total.saturating_sub(done) as f64) as u64
        };
        (rate, left)
    }

    /// True at most every 5 s: progress is logged, not chattered.
    pub(super) fn should_log(&mut self) -> bool {
        if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            return true;
        }
        false
    }
}

/// Runs the initial snapshot: plan the chunks under the exported
/// snapshot, spawn the copy workers, drain their chunks in plan order
/// into the destination, wait until all of it is durable. With
/// `progress` the slot is created permanent and chunks are recorded (on
/// the `writer`) as they become durable; without (`initial_only`), a temporary
/// slot exports the snapshot and nothing is kept. Returns the consistent
/// point, or `None` when shutdown came first.
pub(super) async fn initial_snapshot<D: Destination>(
    config: &CaptureConfig,
    emitter: &mut Emitter,
    writer: &Writer,
    dest: &mut D,
    shutdown: &mut watch::Receiver<bool>,
    progress: Option<&ProgressStore>,
) -> Result<Option<Lsn>, CaptureError> {
    let sql = &*writer.client;
    let tables = captured_tables(sql, &config.publication, &config.state_schema).await?;
    if let Some(p) = progress {
        // Before the slot exists: a slot without a finished snapshot is
        // then always recognisable as such.
        p.start(sql).await?;
    }
    let repl = ReplicationClient::connect(&config.source)
        .await?
        .with_failover(config.slot_failover && progress.is_some())?;
    let exported = match progress {
        Some(_) => {
            writer
                .while_creating_slot(repl.create_slot_exporting_snapshot(&config.slot))
                .await?
        }
        None => {
            writer
                .while_creating_slot(repl.create_temporary_slot_exporting_snapshot(&snapshot_slot_name(&config.slot)))
                .await?
        }
    };
    let consistent = exported.slot().consistent_point;
    let mut run = Run {
        emitter,
        sql,
        dest,
        shutdown,
        progress,
    };
    let plan = run.plan(config, &tables, exported.snapshot_name()).await?;
    crate::failpoint::pause("snapshot.planned").await;
    if let Some(p) = progress {
        let planned: Vec<Chunk> = plan.chunks.iter().map(|(_, c)| c.clone()).collect();
        p.plan(sql, &planned).await?;
        p.record_partitions(sql, &plan.partitions).await?;
        p.set_phase(sql, Phase::Copying, Some(consistent)).await?;
    }
    let workers = (config.snapshot_connections as usize).clamp(1, plan.chunks.len().max(1));
    tracing::info!(
        tables = tables.len(),
        chunks = plan.chunks.len(),
        connections = workers,
        %consistent,
        "initial snapshot started"
    );
    let tx = TxInfo {
        xid: 0,
        begin_lsn: consistent,
        commit_lsn: consistent,
        commit_time: PgTimestamp::now(),
    };
    let mut receivers = spawn_copy_workers(config, exported.snapshot_name(), tx, &plan, workers);
    let Some(mut drained) = run.drain_in_order(&plan, &mut receivers, &tx).await? else {
        return Ok(None);
    };
    if !run.wait_durable(&plan, &mut drained, consistent).await? {
        return Ok(None);
    }
    tracing::info!(
        rows = drained.sent,
        seconds = drained.pace.started.elapsed().as_secs_f64(),
        slot = %config.slot,
        %consistent,
        "initial snapshot durable{}",
        if config.snapshot_mode == SnapshotMode::InitialOnly { "" } else { "; streaming starts at its consistent point" }
    );
    // Ends the exported snapshot (a temporary slot goes with it).
    drop(exported);
    Ok(Some(consistent))
}

/// What the snapshot is handed: the emitter it sends through, the
/// connection its progress is written on, the destination and the stop
/// signal. Nothing else of the capture loop.
struct Run<'a, D> {
    emitter: &'a mut Emitter,
    sql: &'a tokio_postgres::Client,
    dest: &'a mut D,
    shutdown: &'a mut watch::Receiver<bool>,
    progress: Option<&'a ProgressStore>,
}

impl<D: Destination> Run<'_, D> {
    /// Describes every table and plans its chunks under the exported
    /// snapshot: the tables as they were at its point.
    async fn plan(
        &mut self,
        config: &CaptureConfig,
        tables: &[TableName],
        snapshot_name: &str,
    ) -> Result<SnapshotPlan, CaptureError> {
        let (planner, _driver) = client::connect(&config.source).await?;
        snapshot::begin(&planner, Some(snapshot_name)).await?;
        let mut plan = SnapshotPlan {
            relations: Vec::with_capacity(tables.len()),
            chunks: Vec::new(),
            partitions: partitions::trees(&planner, tables).await?,
        };
        let mut seq = 1;
        for table in tables {
            let (relation, filter) = snapshot::describe(&planner, table, &config.publication).await?;
            let relation = self.emitter.learn_relation(relation, self.dest, None).await?;
            let encoder = self.dest.row_encoder(&relation);
            for c in snapshot_progress::plan_table(&planner, table, relation.id, config.snapshot_chunk_pages, &mut seq)
                .await?
            {
                plan.chunks.push((plan.relations.len(), c));
            }
            plan.relations.push(PlannedTable {
                relation,
                filter: filter.map(Arc::<str>::from),
                encoder,
            });
        }
        Ok(plan)
    }

    /// Sends every chunk's rows in plan order (worker `k % workers` copies
    /// chunk `k`), closing each chunk as a unit of the destination, and the
    /// very last row marked `last`. `None` when shutdown came first.
    async fn drain_in_order(
        &mut self,
        plan: &SnapshotPlan,
        receivers: &mut [mpsc::Receiver<Result<Piece, SnapshotError>>],
        tx: &TxInfo,
    ) -> Result<Option<Drained>, CaptureError> {
        let total = plan.chunks.len() as u64;
        let workers = receivers.len();
        let mut drained = Drained {
            rows_per_chunk: vec![0u64; plan.chunks.len()],
            marked: 0,
            sent: 0,
            pace: Pace::new(),
        };
        // One row is held back so the very last one can be marked as such;
        // chunks that ended while it was held close after it is sent.
        let mut held: Option<(Arc<Relation>, Tuple, u64)> = None;
        let mut unclosed: Vec<usize> = Vec::new();
        for (k, (t, chunk)) in plan.chunks.iter().enumerate() {
            let rx = &mut receivers[k % workers];
            let mut relation = plan.relations[*t].relation.clone();
            loop {
                let piece = tokio::select! {
                    biased;
                    _ = self.shutdown.changed() => return Ok(None),
                    p = rx.recv() => p,
                };
                match piece {
                    Some(Ok(Piece::Rows(batch))) => {
                        for tuple in batch {
                            drained.rows_per_chunk[k] += 1;
                            let next = (relation.clone(), tuple, snapshot_ordinal(k, drained.rows_per_chunk[k]));
                            if let Some(prev) = held.replace(next) {
                                drained.sent += 1;
                                if !self.release(tx, prev, SnapshotMark::Row, &mut unclosed).await? {
                                    return Ok(None);
                                }
                            }
                        }
                    }
                    Some(Ok(Piece::Encoded(rows))) => {
                        // Encoded rows follow the held one in the plan.
                        if let Some(prev) = held.take() {
                            drained.sent += 1;
                            if !self.release(tx, prev, SnapshotMark::Row, &mut unclosed).await? {
                                return Ok(None);
                            }
                        }
                        if !self
                            .emitter
                            .send_encoded(self.dest, self.shutdown, &relation, &rows)
                            .await?
                        {
                            return Ok(None);
                        }
                        drained.rows_per_chunk[k] += rows.len() as u64;
                        drained.sent += rows.len() as u64;
                    }
                    Some(Ok(Piece::Relation(now))) => {
                        relation = self.emitter.learn_relation(now, self.dest, None).await?;
                    }
                    Some(Ok(Piece::End)) => break,
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        return Err(CaptureError::Source(SourceError::Protocol(format!(
                            "a snapshot copy connection stopped before chunk {} of {} was complete",
                            chunk.seq, chunk.table
                        ))))
                    }
                }
            }
            if held.is_some() {
                unclosed.push(k);
            } else {
                self.dest.end_transaction(chunk_unit(k)).await?;
            }
            self.mark(&mut drained, plan).await?;
            let (rate, left) = drained.pace.estimate(drained.sent, k as u64 + 1, total);
            self.emitter
                .metrics()
                .set_snapshot(total, drained.marked as u64, rate, left);
            if drained.pace.should_log() {
                tracing::info!(
                    table = %chunk.table,
                    chunk = k + 1,
                    chunks = total,
                    rows = drained.sent,
                    rows_per_s = rate,
                    seconds_left = left,
                    "snapshot progress"
                );
            }
        }
        if let Some(last) = held.take() {
            drained.sent += 1;
            if !self.release(tx, last, SnapshotMark::Last, &mut unclosed).await? {
                return Ok(None);
            }
        }
        Ok(Some(drained))
    }

    /// Closes the snapshot at its consistent point and waits until the
    /// destination made all of it durable, recording chunks as they become
    /// so. False when shutdown came first.
    async fn wait_durable(
        &mut self,
        plan: &SnapshotPlan,
        drained: &mut Drained,
        consistent: Lsn,
    ) -> Result<bool, CaptureError> {
        self.dest.end_transaction(consistent).await?;
        while self.dest.durable()? < consistent {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Ok(false),
                _ = self.dest.progressed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            self.mark(drained, plan).await?;
        }
        self.mark(drained, plan).await?;
        if let Some(p) = self.progress {
            p.set_phase(self.sql, Phase::Done, None).await?;
        }
        let total = plan.chunks.len() as u64;
        self.emitter.metrics().set_snapshot(total, total, 0, 0);
        Ok(true)
    }

    /// Records the chunks the destination made durable since last time
    /// (when progress is kept).
    async fn mark(&mut self, drained: &mut Drained, plan: &SnapshotPlan) -> Result<(), CaptureError> {
        if let Some(store) = self.progress {
            drained.marked = mark_durable(
                store,
                self.sql,
                &*self.dest,
                &plan.chunks,
                &drained.rows_per_chunk,
                drained.marked,
            )
            .await?;
        }
        Ok(())
    }

    /// Sends the held-back row, then closes the chunks that ended while it
    /// was held. False when shutdown came first.
    async fn release(
        &mut self,
        tx: &TxInfo,
        (relation, row, ordinal): (Arc<Relation>, Tuple, u64),
        mark: SnapshotMark,
        unclosed: &mut Vec<usize>,
    ) -> Result<bool, CaptureError> {
        if !room_or_shutdown(&*self.dest, self.shutdown).await {
            return Ok(false);
        }
        self.emitter
            .send_read(self.dest, tx, ordinal, &relation, &row, mark)
            .await?;
        for c in unclosed.drain(..) {
            self.dest.end_transaction(chunk_unit(c)).await?;
        }
        Ok(true)
    }
}

/// A table as the snapshot copies it.
struct PlannedTable {
    relation: Arc<Relation>,
    /// The publication's row filter.
    filter: Option<Arc<str>>,
    /// The destination's encoder, when it offers one.
    encoder: Option<Arc<dyn RowEncoder>>,
}

/// The snapshot's tables and their chunks, in the order they are sent
/// (each chunk names its table by index).
struct SnapshotPlan {
    relations: Vec<PlannedTable>,
    chunks: Vec<(usize, Chunk)>,
    /// The partition trees the snapshot reads, as of its point.
    partitions: Vec<TreeMember>,
}

/// What draining the chunks left for the wait until durable.
struct Drained {
    rows_per_chunk: Vec<u64>,
    /// Chunks recorded as done so far.
    marked: usize,
    sent: u64,
    pace: Pace,
}

/// Starts `workers` copy connections under the exported snapshot; worker
/// `w` copies chunks `w`, `w + workers`, … in that order, so the loop can
/// read them back in plan order.
fn spawn_copy_workers(
    config: &CaptureConfig,
    snapshot_name: &str,
    tx: TxInfo,
    plan: &SnapshotPlan,
    workers: usize,
) -> Vec<mpsc::Receiver<Result<Piece, SnapshotError>>> {
    let mut receivers = Vec::with_capacity(workers);
    for w in 0..workers {
        let (sender, rx) = mpsc::channel(READ_AHEAD_BATCHES);
        let mine: Vec<ChunkJob> = plan
            .chunks
            .iter()
            .enumerate()
            .skip(w)
            .step_by(workers)
            .map(|(k, (t, c))| {
                let table = &plan.relations[*t];
                ChunkJob {
                    k,
                    relation: table.relation.clone(),
                    filter: table.filter.clone(),
                    pages: c.pages,
                    encoder: table.encoder.clone(),
                }
            })
            .collect();
        let worker = Worker {
            source: config.source.clone(),
            publication: config.publication.clone(),
            snapshot_name: snapshot_name.to_owned(),
            tx,
            out: sender,
        };
        tokio::spawn(worker.run(mine));
        receivers.push(rx);
    }
    receivers
}

/// The destination unit of chunk `k` (0-based): see the module doc.
fn chunk_unit(k: usize) -> Lsn {
    Lsn(k as u64 + 1)
}

/// Records the chunks that became durable since `marked`; returns the new count.
async fn mark_durable<D: Destination>(
    store: &ProgressStore,
    sql: &tokio_postgres::Client,
    dest: &D,
    chunks: &[(usize, Chunk)],
    rows: &[u64],
    marked: usize,
) -> Result<usize, CaptureError> {
    let durable = (dest.durable()?.0.min(chunks.len() as u64)) as usize;
    if durable <= marked {
        return Ok(marked);
    }
    let done: Vec<(u64, u64)> = (marked..durable).map(|k| (chunks[k].1.seq, rows[k])).collect();
    store.mark_done(sql, &done).await?;
    Ok(durable)
}

/// A copy connection's task: its chunks, in order, under the exported
/// snapshot, encoding the rows when the destination offered an encoder.
struct Worker {
    source: ConnInfo,
    publication: String,
    snapshot_name: String,
    tx: TxInfo,
    out: mpsc::Sender<Result<Piece, SnapshotError>>,
}

/// Times one chunk is described again and retried when its columns keep
/// changing under it.
const DESCRIBE_ATTEMPTS: u32 = 3;

/// Whether the capture loop still listens.
type Listening = bool;

impl Worker {
    async fn run(self, chunks: Vec<ChunkJob>) {
        if let Err(e) = self.copy_all(chunks).await {
            let _ = self.out.send(Err(e)).await;
        }
    }

    async fn copy_all(&self, chunks: Vec<ChunkJob>) -> Result<(), SnapshotError> {
        let mut session = snapshot::CopySession::connect(&self.source).await?;
        session.begin(Some(&self.snapshot_name)).await?;
        // Tables whose columns changed since the snapshot (a column
        // dropped or renamed: COPY resolves names in the current catalog),
        // as they are now: their chunks go raw, the encoder being the old
        // shape's.
        let mut described_again: HashMap<u32, Relation> = HashMap::new();
        for job in chunks {
            let mut attempts = 0;
            loop {
                let now = described_again.get(&job.relation.id);
                let result = match now {
                    Some(r) => {
                        if !self.send(Piece::Relation(r.clone())).await {
                            return Ok(());
                        }
                        let job = ChunkJob {
                            relation: Arc::new(r.clone()),
                            encoder: None,
                            filter: job.filter.clone(),
                            ..job
                        };
                        self.copy_chunk(&mut session, &job).await
                    }
                    None => self.copy_chunk(&mut session, &job).await,
                };
                match result {
                    Ok(true) => break,
                    Ok(false) => return Ok(()),
                    Err(e) if snapshot::is_changed_columns(&e) && attempts < DESCRIBE_ATTEMPTS => {
                        attempts += 1;
                        session.roll_back_chunk().await?;
                        let table = TableName {
                            schema: job.relation.namespace.clone(),
                            name: job.relation.name.clone(),
                        };
                        tracing::warn!(
                            %table,
                            "the table's columns changed since the snapshot began ({e}): reading it with its columns as they are now"
                        );
                        let (client, _driver) = client::connect(&self.source).await?;
                        let (relation, _) = snapshot::describe(&client, &table, &self.publication).await?;
                        described_again.insert(job.relation.id, relation);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Copies one chunk; false when the capture loop stopped listening.
    /// Fails before sending a row when the COPY itself fails.
    async fn copy_chunk(
        &self,
        session: &mut snapshot::CopySession,
        job: &ChunkJob,
    ) -> Result<Listening, SnapshotError> {
        let mut rows = session.copy(&job.relation, job.pages, job.filter.as_deref()).await?;
        let mut batch = Batcher::new(job, self.tx);
        // Held back: the chunk's last row goes to the capture loop raw.
        let mut prev: Option<Tuple> = None;
        while let Some(tuple) = rows.next().await? {
            if let Some(row) = prev.replace(tuple) {
                batch.push(row);
                for piece in batch.ready.drain(..) {
                    if !self.send(piece).await {
                        return Ok(false);
                    }
                }
            }
        }
        for piece in batch.finish(prev) {
            if !self.send(piece).await {
                return Ok(false);
            }
        }
        Ok(self.send(Piece::End).await)
    }

    async fn send(&self, piece: Piece) -> Listening {
        self.out.send(Ok(piece)).await.is_ok()
    }
}

/// A chunk's rows cut into pieces: encoded where the encoder takes them,
/// raw otherwise, in order (at most one kind pending at a time).
struct Batcher<'j> {
    job: &'j ChunkJob,
    tx: TxInfo,
    rows: u64,
    now_ms: i64,
    raw: Vec<Tuple>,
    encoded: Option<EncodedRows>,
    /// Complete pieces, for the worker to send.
    ready: Vec<Piece>,
}

impl<'j> Batcher<'j> {
    fn new(job: &'j ChunkJob, tx: TxInfo) -> Self {
        Batcher {
            job,
            tx,
            rows: 0,
            now_ms: PgTimestamp::now().unix_millis(),
            raw: Vec::new(),
            encoded: None,
            ready: Vec::new(),
        }
    }

    /// Adds the chunk's next row.
    fn push(&mut self, row: Tuple) {
        self.rows += 1;
        let (job, tx) = (self.job, self.tx);
        if let Some(encoder) = &job.encoder {
            let event = ChangeEvent {
                lsn: tx.commit_lsn,
                tx: Some(&tx),
                tx_ordinal: snapshot_ordinal(job.k, self.rows),
                kind: ChangeKind::Insert {
                    relation: &job.relation,
                    new: &row,
                },
                snapshot: Some(SnapshotMark::Row),
            };
            self.flush_raw();
            let rows = self
                .encoded
                .get_or_insert_with(|| EncodedRows::new(encoder.topic().clone(), BATCH_ROWS));
            if encoder.encode(&event, self.now_ms, rows) {
                if rows.len() >= BATCH_ROWS {
                    self.flush_encoded();
                }
                return;
            }
        }
        // No encoder, or one that refused the row: the capture loop sends
        // it, after what was encoded before it.
        self.flush_encoded();
        self.raw.push(row);
        if self.raw.len() >= BATCH_ROWS {
            self.flush_raw();
        }
    }

    fn flush_raw(&mut self) {
        if !self.raw.is_empty() {
            self.ready.push(Piece::Rows(std::mem::take(&mut self.raw)));
        }
    }

    fn flush_encoded(&mut self) {
        if let Some(rows) = self.encoded.take().filter(|e| !e.is_empty()) {
            self.ready.push(Piece::Encoded(rows));
        }
        self.now_ms = PgTimestamp::now().unix_millis();
    }

    /// Everything left, the chunk's last row (raw) at the end.
    fn finish(mut self, last: Option<Tuple>) -> Vec<Piece> {
        self.flush_encoded();
        self.raw.extend(last);
        self.flush_raw();
        self.ready
    }
}
