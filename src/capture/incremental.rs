//! Incremental snapshots: tables read in chunks while the slot streams,
//! merged with the live changes by watermarks ([`super::watermark`]).
//!
//! Used for the chunks a cut-off initial snapshot did not finish, for
//! tables added to the publication later (found at start and every lag
//! check), and for tables named by a `walhouse-capture snapshot` signal (a
//! transactional logical message, so it travels through the slot and is
//! acted on even when sent while capture was stopped).
//!
//! One chunk at a time: the capture loop opens a window, a reader task on
//! its own connection writes the low watermark, reads the chunk in a fresh
//! transaction, and writes the high watermark. When the loop decodes the
//! high watermark it sends the chunk's rows that no change in the window
//! made stale, as reads (`source.snapshot = incremental`), in a unit that
//! closes at the watermark's LSN; the chunk is marked done once that LSN is
//! durable. Guarantee: at the end, the latest event per key equals the
//! table. Tables without a key cannot be merged: their chunk rows are sent
//! as read and may repeat rows the stream carried.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::emitter::Emitter;
use super::error::CaptureError;
use super::initial::Pace;
use super::standby::Writer;
use crate::capture::change::{SnapshotMark, TxInfo};
use crate::capture::destination::Destination;
use crate::capture::metrics::Metrics;
use crate::capture::snapshot_progress::{self, Chunk, Phase, ProgressStore};
use crate::capture::watermark::{self, Merge, Window, XidSnapshot};
use crate::postgres::partitions;
use crate::postgres::pgoutput::{Message, PgTimestamp, Relation, Tuple};
use crate::postgres::publication::TableName;
use crate::postgres::snapshot::{self, SnapshotError};
use crate::postgres::{client, conninfo::ConnInfo, Lsn, SourceError};

/// Prefix of the watermark messages.
pub const WATERMARK_PREFIX: &str = "walhouse.watermark";
/// Prefix of the signal messages `walhouse-capture snapshot` writes.
pub const SIGNAL_PREFIX: &str = "walhouse.signal";

/// What `walhouse-capture snapshot` asks for.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub slot: String,
    /// `schema.table` names (quoted where needed).
    pub snapshot: Vec<String>,
}

/// A chunk the reader task returned.
struct ChunkRead {
    relation: Relation,
    rows: Vec<Tuple>,
    /// `None` on a standby, whose snapshots do not list the transactions
    /// in progress on the primary.
    snapshot: Option<XidSnapshot>,
    /// The table was rewritten since the chunk was planned: its CTIDs moved.
    rewritten: bool,
}

struct Active {
    chunk: Chunk,
    id: u64,
    window: Window,
    task: Option<JoinHandle<Result<ChunkRead, SnapshotError>>>,
    read: Option<ChunkRead>,
}

pub(super) struct Incremental {
    store: ProgressStore,
    source: ConnInfo,
    publication: String,
    chunk_pages: u64,
    queue: VecDeque<Chunk>,
    active: Option<Active>,
    reader: Option<(Arc<tokio_postgres::Client>, JoinHandle<()>)>,
    /// Tells this process's watermarks from another's (or a previous run's).
    nonce: u64,
    next_id: u64,
    next_seq: u64,
    /// Chunks sent, waiting for their unit to be durable: (unit LSN, seq, rows).
    sent: Vec<(Lsn, u64, u64)>,
    published: HashSet<TableName>,
    /// Whether the progress row says `done`.
    done: bool,
    total: u64,
    finished: u64,
    rows: u64,
    pace: Pace,
}

impl Incremental {
    pub(super) async fn load(
        store: ProgressStore,
        source: &ConnInfo,
        publication: &str,
        chunk_pages: u64,
        sql: &tokio_postgres::Client,
    ) -> Result<Self, CaptureError> {
        let queue: VecDeque<Chunk> = store.pending(sql).await?.into();
        let (done, total, _) = store.counts(sql).await?;
        let next_seq = store.next_seq(sql).await?;
        let phase = store.phase(sql).await?.map(|(p, _)| p);
        let nonce = std::process::id() as u64 ^ (PgTimestamp::now().0 as u64).rotate_left(20);
        let inc = Incremental {
            store,
            source: source.clone(),
            publication: publication.to_owned(),
            chunk_pages,
            queue,
            active: None,
            reader: None,
            nonce,
            next_id: 0,
            next_seq,
            sent: Vec::new(),
            // Filled by the first refresh_tables.
            published: HashSet::new(),
            done: phase == Some(Phase::Done),
            total,
            finished: done,
            rows: 0,
            pace: Pace::new(),
        };
        if !inc.queue.is_empty() {
            tracing::info!(
                chunks = inc.queue.len(),
                "snapshot chunks not done yet: reading them while streaming (incremental method)"
            );
        }
        Ok(inc)
    }

    /// Plans chunks for `tables` (their current size) and queues them,
    /// replacing any not-done chunks they had.
    async fn add_tables(&mut self, sql: &tokio_postgres::Client, tables: &[TableName]) -> Result<(), CaptureError> {
        let mut planned = Vec::new();
        for table in tables {
            let Some(oid) = snapshot_progress::table_oid(sql, table).await? else {
                tracing::warn!(table = %table, "table to snapshot no longer exists; skipped");
                continue;
            };
            self.store.forget_table(sql, table).await?;
            self.queue.retain(|c| &c.table != table);
            planned.extend(snapshot_progress::plan_table(sql, table, oid, self.chunk_pages, &mut self.next_seq).await?);
            tracing::info!(table = %table, "incremental snapshot of the table planned");
        }
        if planned.is_empty() {
            return Ok(());
        }
        self.store.plan(sql, &planned).await?;
        // Partitions attached from now on are new to this snapshot.
        let trees = partitions::trees(sql, tables).await?;
        self.store.record_partitions(sql, &trees).await?;
        if self.done {
            self.store.set_phase(sql, Phase::Copying, None).await?;
            self.done = false;
        }
        self.total = self.store.counts(sql).await?.1;
        self.queue.extend(planned);
        Ok(())
    }

    /// Published tables that no snapshot covered yet are planned, and so
    /// are partitioned tables that gained a partition holding rows from
    /// before it was attached.
    pub(super) async fn refresh_tables(
        &mut self,
        sql: &tokio_postgres::Client,
        published: Vec<TableName>,
    ) -> Result<(), CaptureError> {
        let known: HashSet<TableName> = self.store.known_tables(sql).await?.into_iter().collect();
        self.published = published.into_iter().collect();
        let mut new: Vec<TableName> = self.published.difference(&known).cloned().collect();
        new.sort();
        if !new.is_empty() {
            tracing::info!(tables = ?new.iter().map(ToString::to_string).collect::<Vec<_>>(), "new tables in the publication");
            self.add_tables(sql, &new).await?;
        }
        let mut covered: Vec<TableName> = known.intersection(&self.published).cloned().collect();
        covered.sort();
        let attached = self.attached_with_rows(sql, &covered).await?;
        if !attached.is_empty() {
            self.add_tables(sql, &attached).await?;
        }
        Ok(())
    }

    /// Of `tables` (snapshotted before), the partitioned ones with a
    /// partition, new since, that holds rows from before its attachment:
    /// those rows were never changes, so the parent is read again. New
    /// partitions without such rows are recorded as covered. A table whose
    /// tree was never recorded (a slot older than this record) has it
    /// recorded as it is now.
    async fn attached_with_rows(
        &mut self,
        sql: &tokio_postgres::Client,
        tables: &[TableName],
    ) -> Result<Vec<TableName>, CaptureError> {
        let trees = partitions::trees(sql, tables).await?;
        if trees.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = self.store.partitions(sql).await?;
        let mut unseen = Vec::new();
        let mut reread: Vec<TableName> = Vec::new();
        for m in trees {
            if recorded.contains(&(m.root.clone(), m.member.clone())) {
                continue;
            }
            let tree_recorded = recorded.contains(&(m.root.clone(), m.root.clone()));
            if tree_recorded
                && m.leaf
                && !reread.contains(&m.root)
                && partitions::holds_rows_from_before_attach(sql, &m.member).await?
            {
                tracing::info!(
                    table = %m.root,
                    partition = %m.member,
                    "a partition was attached with rows it held before: reading the table again"
                );
                reread.push(m.root.clone());
            }
            unseen.push(m);
        }
        // A table read again records its whole tree when planned.
        unseen.retain(|m| !reread.contains(&m.root));
        self.store.record_partitions(sql, &unseen).await?;
        Ok(reread)
    }

    pub(super) fn can_start(&self) -> bool {
        self.active.is_none() && !self.queue.is_empty()
    }

    /// Resolves when the active reader task finished (never otherwise).
    pub(super) async fn reader_finished(&mut self) -> Result<ChunkReadDone, CaptureError> {
        let Some(task) = self.active.as_mut().and_then(|a| a.task.as_mut()) else {
            return std::future::pending().await;
        };
        let result = task.await;
        if let Some(a) = self.active.as_mut() {
            a.task = None;
        }
        match result {
            Ok(r) => Ok(ChunkReadDone(r)),
            Err(e) => Err(CaptureError::Source(SourceError::Protocol(format!(
                "the snapshot chunk reader failed: {e}"
            )))),
        }
    }

    /// The relation the open window watches.
    pub(super) fn window_relation(&self) -> Option<u32> {
        self.active.as_ref().map(|a| a.window.relation_id)
    }

    pub(super) fn touch(&mut self, key: Option<watermark::RowKey>, xid: u32) {
        if let Some(a) = self.active.as_mut() {
            a.window.touch(key, xid);
        }
    }

    pub(super) fn truncated(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.window.truncated();
        }
    }
}

/// A finished reader task's result (opaque to the loop).
pub(super) struct ChunkReadDone(Result<ChunkRead, SnapshotError>);

/// Whether `m` is one of walhouse's control messages: a watermark or a signal.
pub(super) fn is_control(m: &Message) -> bool {
    m.prefix == WATERMARK_PREFIX || m.prefix == SIGNAL_PREFIX
}

/// A control message that reached a capture keeping no snapshot state
/// (`--snapshot-mode never`): a signal to this slot is refused aloud.
pub(super) fn without_snapshots(m: &Message, slot: &str) {
    if m.prefix != SIGNAL_PREFIX {
        return;
    }
    if parse_signal(m).is_some_and(|s| s.slot == slot) {
        tracing::warn!("a snapshot was requested, but --snapshot-mode never keeps no snapshot state: ignored");
    }
}

fn parse_signal(m: &Message) -> Option<Signal> {
    match serde_json::from_slice(&m.content) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(lsn = %m.lsn, "ignoring a malformed walhouse signal: {e}");
            None
        }
    }
}

impl Incremental {
    /// Starts the next chunk: opens its window, then the reader.
    pub(super) async fn start_chunk(&mut self, writer: &Writer) -> Result<(), CaptureError> {
        let sql = &*writer.client;
        let Some(chunk) = self.queue.pop_front() else {
            return Ok(());
        };
        if !self.published.contains(&chunk.table) {
            tracing::info!(table = %chunk.table, "table left the publication: its snapshot chunks are dropped");
            self.store.forget_table(sql, &chunk.table).await?;
            self.queue.retain(|c| c.table != chunk.table);
            return Ok(());
        }
        let Some(oid) = snapshot_progress::table_oid(sql, &chunk.table).await? else {
            self.store.forget_table(sql, &chunk.table).await?;
            self.queue.retain(|c| c.table != chunk.table);
            return Ok(());
        };
        if self.reader.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let (c, driver) = client::connect(&self.source).await?;
            self.reader = Some((Arc::new(c), driver));
        }
        let Some((reader, _)) = self.reader.as_ref() else {
            return Ok(());
        };
        self.next_id += 1;
        let task = tokio::spawn(read_chunk(
            reader.clone(),
            writer.standby.then(|| writer.client.clone()),
            chunk.clone(),
            self.publication.clone(),
            self.nonce,
            self.next_id,
        ));
        self.active = Some(Active {
            chunk,
            id: self.next_id,
            window: Window::new(oid),
            task: Some(task),
            read: None,
        });
        Ok(())
    }

    /// Takes in a finished reader: a failure puts the chunk back (or stops
    /// capture when retrying cannot help); a rewritten table is planned again.
    pub(super) async fn chunk_read(
        &mut self,
        done: ChunkReadDone,
        sql: &tokio_postgres::Client,
    ) -> Result<(), CaptureError> {
        match done.0 {
            Ok(read) if read.rewritten => {
                let Some(active) = self.active.take() else {
                    return Ok(());
                };
                tracing::info!(table = %active.chunk.table, "table was rewritten since its chunks were planned: planning it again");
                self.add_tables(sql, std::slice::from_ref(&active.chunk.table)).await?;
            }
            Ok(read) => {
                if let Some(a) = self.active.as_mut() {
                    a.read = Some(read);
                }
            }
            Err(SnapshotError::Source(e)) if e.is_transient() => {
                let Some(active) = self.active.take() else {
                    return Ok(());
                };
                tracing::warn!(table = %active.chunk.table, "snapshot chunk read failed, will retry: {e}");
                self.reader = None;
                self.queue.push_front(active.chunk);
            }
            Err(e) => return Err(CaptureError::Snapshot(e)),
        }
        Ok(())
    }

    /// A watermark or a signal ([`is_control`]): a watermark of ours
    /// opens or merges the window, a signal to `slot` queues its tables.
    pub(super) async fn control_message<D: Destination>(
        &mut self,
        lsn: Lsn,
        m: &Message,
        slot: &str,
        emitter: &mut Emitter,
        sql: &tokio_postgres::Client,
        dest: &mut D,
    ) -> Result<(), CaptureError> {
        if m.prefix == SIGNAL_PREFIX {
            return self.signal(m, slot, sql).await;
        }
        let Some((nonce, id, high)) = watermark::parse_watermark(&m.content) else {
            return Ok(());
        };
        let ours = self.active.as_ref().is_some_and(|a| a.id == id) && nonce == self.nonce;
        if !ours {
            return Ok(());
        }
        if !high {
            if let Some(a) = self.active.as_mut() {
                a.window.low_watermark();
            }
            return Ok(());
        }
        self.merge_chunk(lsn, emitter, dest).await
    }

    /// At the high watermark: sends the chunk's rows the window left valid.
    async fn merge_chunk<D: Destination>(
        &mut self,
        lsn: Lsn,
        emitter: &mut Emitter,
        dest: &mut D,
    ) -> Result<(), CaptureError> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        // The reader wrote this watermark as its last step, so its result
        // is there or about to be.
        let read = match (active.read.take(), active.task.take()) {
            (Some(r), _) => r,
            (None, Some(task)) => match task.await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(CaptureError::Snapshot(e)),
                Err(e) => {
                    return Err(CaptureError::Source(SourceError::Protocol(format!(
                        "the snapshot chunk reader failed: {e}"
                    ))))
                }
            },
            (None, None) => return Ok(()),
        };
        // The rows must be encoded under the shape the stream uses now.
        let relation = match emitter.relation(read.relation.id) {
            Ok(cached) if same_shape(&cached, &read.relation) => cached,
            Ok(_) => {
                tracing::info!(table = %active.chunk.table, "table shape changed while its chunk was read: reading it again");
                self.queue.push_front(active.chunk);
                return Ok(());
            }
            Err(_) => emitter.learn_relation(read.relation, dest, None).await?,
        };
        let keys = relation.identity_positions();
        let read_rows = read.rows.len();
        let rows = match active.window.keep(read.rows, &keys, read.snapshot.as_ref()) {
            Merge::Send(rows) => rows,
            Merge::Retry(reason) => {
                tracing::info!(table = %active.chunk.table, "{reason}: reading the chunk again");
                self.queue.push_front(active.chunk);
                return Ok(());
            }
        };
        let tx = TxInfo {
            xid: 0,
            begin_lsn: lsn,
            commit_lsn: lsn,
            commit_time: PgTimestamp::now(),
        };
        for (i, row) in rows.iter().enumerate() {
            while dest.is_full() {
                dest.progressed().await;
            }
            emitter
                .send_read(dest, &tx, i as u64 + 1, &relation, row, SnapshotMark::Incremental)
                .await?;
        }
        let sent = rows.len() as u64;
        self.sent.push((lsn, active.chunk.seq, sent));
        self.rows += sent;
        tracing::debug!(
            table = %active.chunk.table,
            chunk = active.chunk.seq,
            read = read_rows,
            sent,
            "incremental chunk merged"
        );
        Ok(())
    }

    /// Acts on a `walhouse-capture snapshot` request addressed to this slot.
    async fn signal(&mut self, m: &Message, slot: &str, sql: &tokio_postgres::Client) -> Result<(), CaptureError> {
        let Some(signal) = parse_signal(m) else {
            return Ok(());
        };
        if signal.slot != slot {
            return Ok(());
        }
        let mut tables = Vec::new();
        for t in &signal.snapshot {
            match TableName::parse(t) {
                Ok(name) if self.published.contains(&name) => tables.push(name),
                Ok(name) => {
                    tracing::warn!(table = %name, "snapshot requested for a table not in the publication: ignored")
                }
                Err(e) => tracing::warn!("snapshot requested for {t:?}: {e}"),
            }
        }
        tracing::info!(tables = ?signal.snapshot, "snapshot requested by signal");
        self.add_tables(sql, &tables).await
    }

    /// Records chunks whose rows became durable; closes the snapshot when
    /// nothing is left.
    pub(super) async fn chunks_durable(
        &mut self,
        durable: Lsn,
        sql: &tokio_postgres::Client,
        metrics: &Metrics,
    ) -> Result<(), CaptureError> {
        let ready: Vec<(u64, u64)> = self
            .sent
            .iter()
            .filter(|(lsn, _, _)| *lsn <= durable)
            .map(|&(_, seq, rows)| (seq, rows))
            .collect();
        if !ready.is_empty() {
            self.store.mark_done(sql, &ready).await?;
            self.sent.retain(|(lsn, _, _)| *lsn > durable);
            self.finished += ready.len() as u64;
            let (rate, left) = self.pace.estimate(self.rows, self.finished, self.total);
            metrics.set_snapshot(self.total, self.finished, rate, left);
            if self.pace.should_log() {
                tracing::info!(
                    chunks_done = self.finished,
                    chunks = self.total,
                    rows_per_s = rate,
                    seconds_left = left,
                    "incremental snapshot progress"
                );
            }
        }
        if !self.done && self.queue.is_empty() && self.active.is_none() && self.sent.is_empty() {
            self.store.set_phase(sql, Phase::Done, None).await?;
            self.done = true;
            metrics.set_snapshot(self.total, self.total, 0, 0);
            tracing::info!(
                chunks = self.total,
                "snapshot complete: every published table is covered"
            );
        }
        Ok(())
    }
}

/// Whether a chunk's rows (described now) fit the stream's current shape.
fn same_shape(a: &Relation, b: &Relation) -> bool {
    a.columns.len() == b.columns.len()
        && a.columns.iter().zip(&b.columns).all(|(x, y)| {
            x.name == y.name && x.type_oid == y.type_oid && x.type_modifier == y.type_modifier && x.is_key == y.is_key
        })
}

/// Low watermark, read the chunk in a fresh transaction, high watermark.
/// On a standby (`primary` given) the watermarks are written on the
/// primary and reach the slot through replay.
async fn read_chunk(
    client: Arc<tokio_postgres::Client>,
    primary: Option<Arc<tokio_postgres::Client>>,
    chunk: Chunk,
    publication: String,
    nonce: u64,
    id: u64,
) -> Result<ChunkRead, SnapshotError> {
    let on_standby = primary.is_some();
    let marks = primary.unwrap_or_else(|| client.clone());
    let emit = |high: bool| {
        let content = watermark::watermark_content(nonce, id, high);
        let client = marks.clone();
        async move {
            client
                .execute(
                    "SELECT pg_catalog.pg_logical_emit_message(false, $1, $2)",
                    &[&WATERMARK_PREFIX, &content],
                )
                .await
                .map_err(SourceError::Sql)
        }
    };
    // The low watermark goes out before the read's snapshot is taken.
    emit(false).await?;
    snapshot::begin(&client, None).await?;
    // A standby's pg_current_snapshot() leaves out the primary's
    // transactions in progress (they are tracked as subtransactions there):
    // it cannot tell what the read saw, so the merge assumes nothing.
    let snapshot = match on_standby {
        true => None,
        false => {
            let xids = snapshot::current_snapshot(&client).await?;
            Some(XidSnapshot::parse(&xids).map_err(SourceError::Protocol)?)
        }
    };
    let (relation, filter) = snapshot::describe(&client, &chunk.table, &publication).await?;
    let (_, relfilenode) = snapshot::table_pages(&client, relation.id).await?;
    if relfilenode != chunk.relfilenode {
        client.batch_execute("ROLLBACK").await.map_err(SourceError::Sql)?;
        return Ok(ChunkRead {
            relation,
            rows: Vec::new(),
            snapshot,
            rewritten: true,
        });
    }
    let mut copy = snapshot::CopyRows::start(&client, &relation, chunk.pages, filter.as_deref()).await?;
    let mut rows = Vec::new();
    while let Some(t) = copy.next().await? {
        rows.push(t);
    }
    client.batch_execute("COMMIT").await.map_err(SourceError::Sql)?;
    emit(true).await?;
    Ok(ChunkRead {
        relation,
        rows,
        snapshot,
        rewritten: false,
    })
}
