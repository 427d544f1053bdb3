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

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{snapshot_slot_name, CaptureError, LoopState};
use crate::change::{SnapshotMark, TxInfo};
use crate::config::{CaptureConfig, SnapshotMode};
use crate::output::Destination;
use crate::postgres::conninfo::ConnInfo;
use crate::postgres::pgoutput::{PgTimestamp, Relation, Tuple};
use crate::postgres::replication::ReplicationClient;
use crate::postgres::snapshot::{self, PageRange, SnapshotError};
use crate::postgres::snapshot_progress::{self, Chunk, Phase, ProgressStore};
use crate::postgres::{client, Lsn, SourceError};

/// Rows per message from a copy worker.
const BATCH_ROWS: usize = 512;
/// Batches a worker may read ahead of the capture loop.
const READ_AHEAD_BATCHES: usize = 8;

enum Piece {
    Rows(Vec<Tuple>),
    /// The chunk is complete.
    End,
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

impl LoopState {
    /// Runs the initial snapshot. With `progress` the slot is created
    /// permanent and chunks are recorded as they become durable; without
    /// (`initial_only`), a temporary slot exports the snapshot and nothing
    /// is kept. Returns the consistent point, or `None` when shutdown came
    /// first.
    pub(super) async fn initial_snapshot<D: Destination>(
        &mut self,
        config: &CaptureConfig,
        dest: &mut D,
        shutdown: &mut watch::Receiver<bool>,
        progress: Option<&ProgressStore>,
    ) -> Result<Option<Lsn>, CaptureError> {
        let source = &config.source;
        let tables = self.captured_tables().await?;
        if let Some(p) = progress {
            // Before the slot exists: a slot without a finished snapshot is
            // then always recognisable as such.
            p.start(&self.sql).await?;
        }
        let repl = ReplicationClient::connect(source)
            .await?
            .with_failover(config.slot_failover && progress.is_some())?;
        let exported = match progress {
            Some(_) => repl.create_slot_exporting_snapshot(&config.slot).await?,
            None => {
                repl.create_temporary_slot_exporting_snapshot(&snapshot_slot_name(&config.slot))
                    .await?
            }
        };
        let consistent = exported.slot().consistent_point;

        // Plan under the snapshot: the tables as they were at its point.
        let (planner, _driver) = client::connect(source).await?;
        snapshot::begin(&planner, Some(exported.snapshot_name())).await?;
        let mut relations = Vec::with_capacity(tables.len());
        let mut chunks: Vec<(usize, Chunk)> = Vec::new();
        let mut seq = 1;
        for table in &tables {
            let (relation, filter) = snapshot::describe(&planner, table, &config.publication).await?;
            let relation = (self.learn_relation(relation, dest).await?, filter.map(Arc::<str>::from));
            for c in
                snapshot_progress::plan_table(&planner, table, relation.0.id, config.snapshot_chunk_pages, &mut seq)
                    .await?
            {
                chunks.push((relations.len(), c));
            }
            relations.push(relation);
        }
        drop(planner);
        if let Some(p) = progress {
            let planned: Vec<Chunk> = chunks.iter().map(|(_, c)| c.clone()).collect();
            p.plan(&self.sql, &planned).await?;
            p.set_phase(&self.sql, Phase::Copying, Some(consistent)).await?;
        }
        let workers = (config.snapshot_connections as usize).clamp(1, chunks.len().max(1));
        tracing::info!(
            tables = tables.len(),
            chunks = chunks.len(),
            connections = workers,
            %consistent,
            "initial snapshot started"
        );

        let mut receivers = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
            let mine: Vec<(Arc<Relation>, Option<Arc<str>>, PageRange)> = chunks
                .iter()
                .skip(w)
                .step_by(workers)
                .map(|(t, c)| (relations[*t].0.clone(), relations[*t].1.clone(), c.pages))
                .collect();
            tokio::spawn(copy_worker(
                source.clone(),
                exported.snapshot_name().to_owned(),
                mine,
                tx,
            ));
            receivers.push(rx);
        }

        let tx = TxInfo {
            xid: 0,
            commit_lsn: consistent,
            commit_time: PgTimestamp::now(),
        };
        let total = chunks.len() as u64;
        let mut pace = Pace::new();
        // One row is held back so the very last one can be marked as such;
        // chunks that ended while it was held close after it is sent.
        let mut held: Option<(Arc<Relation>, Tuple)> = None;
        let mut unclosed: Vec<usize> = Vec::new();
        let mut rows_per_chunk = vec![0u64; chunks.len()];
        let mut marked = 0usize;
        let mut ordinal = 0u64;
        for (k, (t, chunk)) in chunks.iter().enumerate() {
            let rx = &mut receivers[k % workers];
            loop {
                let piece = tokio::select! {
                    biased;
                    _ = shutdown.changed() => return Ok(None),
                    p = rx.recv() => p,
                };
                match piece {
                    Some(Ok(Piece::Rows(batch))) => {
                        for tuple in batch {
                            rows_per_chunk[k] += 1;
                            if let Some((r, row)) = held.replace((relations[*t].0.clone(), tuple)) {
                                ordinal += 1;
                                if !self
                                    .snapshot_row(dest, shutdown, &tx, ordinal, &r, &row, SnapshotMark::Row)
                                    .await?
                                {
                                    return Ok(None);
                                }
                                for c in unclosed.drain(..) {
                                    dest.end_transaction(chunk_unit(c)).await?;
                                }
                            }
                        }
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
                dest.end_transaction(chunk_unit(k)).await?;
            }
            if let Some(p) = progress {
                marked = mark_durable(p, &self.sql, dest, &chunks, &rows_per_chunk, marked).await?;
            }
            let (rate, left) = pace.estimate(ordinal, k as u64 + 1, total);
            self.metrics.set_snapshot(total, marked as u64, rate, left);
            if pace.should_log() {
                tracing::info!(
                    table = %chunk.table,
                    chunk = k + 1,
                    chunks = total,
                    rows = ordinal,
                    rows_per_s = rate,
                    seconds_left = left,
                    "snapshot progress"
                );
            }
        }
        if let Some((r, row)) = held.take() {
            ordinal += 1;
            if !self
                .snapshot_row(dest, shutdown, &tx, ordinal, &r, &row, SnapshotMark::Last)
                .await?
            {
                return Ok(None);
            }
        }
        for c in unclosed.drain(..) {
            dest.end_transaction(chunk_unit(c)).await?;
        }
        dest.end_transaction(consistent).await?;
        while dest.durable()? < consistent {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(None),
                _ = dest.progressed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if let Some(p) = progress {
                marked = mark_durable(p, &self.sql, dest, &chunks, &rows_per_chunk, marked).await?;
            }
        }
        if let Some(p) = progress {
            mark_durable(p, &self.sql, dest, &chunks, &rows_per_chunk, marked).await?;
            p.set_phase(&self.sql, Phase::Done, None).await?;
        }
        self.metrics.set_snapshot(total, total, 0, 0);
        tracing::info!(
            rows = ordinal,
            seconds = pace.started.elapsed().as_secs_f64(),
            slot = %config.slot,
            %consistent,
            "initial snapshot durable{}",
            if config.snapshot_mode == SnapshotMode::InitialOnly { "" } else { "; streaming starts at its consistent point" }
        );
        // Ends the exported snapshot (a temporary slot goes with it).
        drop(exported);
        Ok(Some(consistent))
    }
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

/// Copies its chunks, in order, under the exported snapshot.
async fn copy_worker(
    source: ConnInfo,
    snapshot_name: String,
    chunks: Vec<(Arc<Relation>, Option<Arc<str>>, PageRange)>,
    out: mpsc::Sender<Result<Piece, SnapshotError>>,
) {
    let result: Result<(), SnapshotError> = async {
        let (client, _driver) = client::connect(&source).await?;
        snapshot::begin(&client, Some(&snapshot_name)).await?;
        for (relation, filter, pages) in chunks {
            let mut rows = snapshot::CopyRows::start(&client, &relation, pages, filter.as_deref()).await?;
            let mut batch = Vec::with_capacity(BATCH_ROWS);
            while let Some(tuple) = rows.next().await? {
                batch.push(tuple);
                if batch.len() == BATCH_ROWS {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                    if out.send(Ok(Piece::Rows(full))).await.is_err() {
                        return Ok(());
                    }
                }
            }
            if !batch.is_empty() && out.send(Ok(Piece::Rows(batch))).await.is_err() {
                return Ok(());
            }
            if out.send(Ok(Piece::End)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = out.send(Err(e)).await;
    }
}
