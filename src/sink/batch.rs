//! Batching and settling: what the loop has consumed waits in [`Pending`]
//! (rows per target, dead letters, each partition's next offset) until the
//! batch is full or due; the [`Writer`] then writes it on its own task, rows
//! and offsets in one warehouse transaction, while the loop consumes the
//! next one. One batch is in flight at a time; the warehouse belongs to
//! that task until it is settled.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::decode::Target;
use super::error::SinkError;
use super::metrics::SinkMetrics;
use super::position::Partition;
use crate::warehouse::{
    isolate, Batch, Cell, DeadLetter, Dialect, Mark, OffsetUpdate, OriginRef, TableRows, Warehouse, WarehouseError,
};

pub(super) struct Pending {
    /// Whose encoding the rows take.
    dialect: Dialect,
    /// Rows by target (a CDC writer schema id, or the companies table).
    tables: BTreeMap<u64, (Arc<Target>, TableRows)>,
    dead: Vec<DeadLetter>,
    offsets: HashMap<Partition, OffsetUpdate>,
    pub rows: usize,
    pub bytes: usize,
    /// When the first record of the batch came.
    pub since: Option<Instant>,
}

impl Pending {
    pub fn new(dialect: Dialect) -> Self {
        Pending {
            dialect,
            tables: BTreeMap::new(),
            dead: Vec::new(),
            offsets: HashMap::new(),
            rows: 0,
            bytes: 0,
            since: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// A row for `target`, encoded at once; `origin` is kept should the
    /// warehouse refuse it. A row its target cannot hold is a dead letter
    /// instead (`Err`: why).
    pub fn row(&mut self, target: &Arc<Target>, cells: &[Cell], origin: OriginRef<'_>) -> Result<(), String> {
        let pushed = match self.tables.entry(target.key) {
            Entry::Occupied(e) => {
                let rows = &mut e.into_mut().1;
                rows.push(cells).map(|()| rows)
            }
            Entry::Vacant(e) => match TableRows::new(self.dialect, target.columns.clone()) {
                Ok(rows) => {
                    let rows = &mut e.insert((target.clone(), rows)).1;
                    rows.push(cells).map(|()| rows)
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match pushed {
            Ok(rows) => {
                self.bytes += cells.iter().map(Cell::weight).sum::<usize>() + origin.weight();
                self.rows += 1;
                rows.origins.push(origin);
                Ok(())
            }
            Err(error) => {
                self.dead(DeadLetter {
                    origin: origin.to_owned(),
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    pub fn dead(&mut self, letter: DeadLetter) {
        self.bytes += letter.origin.weight();
        self.dead.push(letter);
    }

    /// Records that `partition` is accounted for up to `offset`; `stored`
    /// is the warehouse's offset the write is fenced on.
    pub fn advance(&mut self, partition: &Partition, stored: Option<i64>, offset: i64, high: Option<Mark>) {
        self.since.get_or_insert_with(Instant::now);
        // Looked up before inserting: the key is cloned once per batch, not per message.
        if let Some(o) = self.offsets.get_mut(partition) {
            o.next = offset + 1;
            o.high = high;
            return;
        }
        let update = OffsetUpdate {
            topic: partition.0.clone(),
            partition: partition.1,
            from: stored,
            next: offset + 1,
            high,
        };
        self.offsets.insert(partition.clone(), update);
    }

    fn into_batch(self) -> Result<Batch, WarehouseError> {
        let mut tables = Vec::with_capacity(self.tables.len());
        for (target, mut rows) in self.tables.into_values() {
            rows.seal()?;
            tables.push((target.table.clone(), rows));
        }
        Ok(Batch {
            tables,
            dead_letters: self.dead,
            offsets: self.offsets.into_values().collect(),
            file: None,
        })
    }
}

/// A batch being written by its own task, with the warehouse it owns
/// meanwhile.
type InFlight<W> = tokio::task::JoinHandle<(W, Batch, Instant, Result<usize, WarehouseError>)>;

/// How the batch in flight ended.
pub(super) enum Settled {
    /// No batch was in flight.
    Idle,
    /// Written: these offsets are now the warehouse's.
    Written(Vec<OffsetUpdate>),
    /// Another instance moved an offset first; the batch was rolled back.
    Fenced,
}

/// Writes batches, one in flight at a time.
pub(super) struct Writer<W: Warehouse> {
    /// `None` while a batch is in flight (its task owns it).
    warehouse: Option<W>,
    in_flight: Option<InFlight<W>>,
    group: String,
    metrics: Arc<SinkMetrics>,
}

impl<W: Warehouse + Send + 'static> Writer<W> {
    pub fn new(warehouse: W, group: String, metrics: Arc<SinkMetrics>) -> Self {
        Writer {
            warehouse: Some(warehouse),
            in_flight: None,
            group,
            metrics,
        }
    }

    /// Whether the batch in flight has finished (settling it will not wait).
    pub fn finished(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Hands `pending` to a task that writes it, rows and offsets in one
    /// transaction; returns its offset updates. Settle the batch before.
    pub fn write(&mut self, pending: Pending) -> Result<Vec<OffsetUpdate>, SinkError> {
        let batch = pending.into_batch()?;
        let offsets = batch.offsets.clone();
        let mut warehouse = self.warehouse.take().ok_or(SinkError::Lost)?;
        let group = self.group.clone();
        self.in_flight = Some(tokio::spawn(async move {
            crate::failpoint::pause("sink.before_write").await;
            let started = Instant::now();
            let mut batch = batch;
            let result = isolate::write(&mut warehouse, &group, &mut batch).await;
            (warehouse, batch, started, result)
        }));
        Ok(offsets)
    }

    /// Waits for the batch in flight and takes the warehouse back.
    pub async fn settle(&mut self) -> Result<Settled, SinkError> {
        let Some(task) = self.in_flight.take() else {
            return Ok(Settled::Idle);
        };
        let (warehouse, batch, started, result) = task.await.map_err(|_| SinkError::Lost)?;
        self.warehouse = Some(warehouse);
        match result {
            Ok(_) => {}
            Err(e @ WarehouseError::Fenced { .. }) => {
                tracing::warn!("{e}");
                self.metrics.count_fenced();
                return Ok(Settled::Fenced);
            }
            Err(e) => return Err(e.into()),
        }
        self.metrics.add_stage(super::metrics::Stage::Write, started.elapsed());
        let millis = started.elapsed().as_millis() as u64;
        self.metrics
            .count_batch(batch.rows() as u64, batch.dead_letters.len() as u64, millis);
        tracing::debug!(
            rows = batch.rows(),
            dead = batch.dead_letters.len(),
            millis,
            "batch written"
        );
        Ok(Settled::Written(batch.offsets))
    }

    /// The warehouse, when no batch is in flight (settle first).
    pub fn warehouse(&mut self) -> Result<&mut W, SinkError> {
        self.warehouse.as_mut().ok_or(SinkError::Lost)
    }
}
