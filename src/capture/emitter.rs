//! Where every captured event leaves capture: the relation cache (with the
//! catalog facts pgoutput does not send), the destination, and the counts
//! each sent event adds to.
//!
//! The stream loop and both snapshots send through an [`Emitter`]; the
//! snapshot code is handed this and nothing else of the loop, so it cannot
//! touch the loop's transaction, slot or reconnect state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::CaptureError;
use crate::capture::change::{ChangeEvent, ChangeKind, SnapshotMark, TxInfo};
use crate::capture::destination::{Destination, EncodedRows};
use crate::capture::metrics::Metrics;
use crate::postgres::catalog::{load_column_infos, load_type_infos, ColumnFacts, RelationCache, RelationChange};
use crate::postgres::pgoutput::{Relation, Tuple, TypeMessage};

/// How long a shape change waits for the catalog to show it. The commit
/// is normally visible within microseconds of its decoding; a synchronous
/// standby that answers late holds it back longer.
const CATALOG_CATCH_UP: Duration = Duration::from_secs(10);

pub(super) struct Emitter {
    cache: RelationCache,
    /// Reads what the cache lacks: type and column facts.
    catalog: Arc<tokio_postgres::Client>,
    metrics: Arc<Metrics>,
    /// `schema.table` by relation id, for metrics labels.
    table_names: HashMap<u32, String>,
    /// Changes to walhouse's own progress tables are not captured.
    state_schema: String,
    events: u64,
    /// Tables the stream described whose shape the destination has not
    /// been given yet: it is given at their first change. pgoutput also
    /// describes tables that carry no change of their own (a partition,
    /// before its parent when changes are published as the parent's):
    /// those get no schema subject and no topic.
    unannounced: HashSet<u32>,
}

impl Emitter {
    pub(super) fn new(catalog: Arc<tokio_postgres::Client>, metrics: Arc<Metrics>, state_schema: &str) -> Self {
        Emitter {
            cache: RelationCache::new(),
            catalog,
            metrics,
            table_names: HashMap::new(),
            state_schema: state_schema.to_owned(),
            events: 0,
            unannounced: HashSet::new(),
        }
    }

    /// The catalog connection to use from now on (the last one was lost).
    pub(super) fn set_catalog(&mut self, catalog: Arc<tokio_postgres::Client>) {
        self.catalog = catalog;
    }

    pub(super) fn events(&self) -> u64 {
        self.events
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The table with relation id `id`, as last described.
    pub(super) fn relation(&self, id: u32) -> Result<Arc<Relation>, CaptureError> {
        Ok(self.cache.get(id)?.clone())
    }

    pub(super) fn learn_type(&mut self, t: TypeMessage) {
        self.cache.apply_type(t);
    }

    /// Whether `relation` is one of walhouse's progress tables (a
    /// publication FOR ALL TABLES includes them).
    pub(super) fn is_own(&self, relation: &Relation) -> bool {
        self.state_schema == relation.namespace
    }

    /// Takes in a table's shape from the snapshot: the catalog facts
    /// pgoutput does not send, the cache, the destination (at once: the
    /// snapshot's rows are encoded under it).
    pub(super) async fn learn_relation<D: Destination>(
        &mut self,
        rel: Relation,
        dest: &mut D,
        carried_by: Option<&TxInfo>,
    ) -> Result<Arc<Relation>, CaptureError> {
        let relation = self.learn_streamed_relation(rel, carried_by).await?;
        self.announce(relation.id, dest).await?;
        Ok(relation)
    }

    /// Takes in a table's shape from a Relation message: the catalog facts
    /// pgoutput does not send and the cache; the destination gets it with
    /// the table's first change. `carried_by` is the transaction that
    /// brought it, for the log.
    pub(super) async fn learn_streamed_relation(
        &mut self,
        rel: Relation,
        carried_by: Option<&TxInfo>,
    ) -> Result<Arc<Relation>, CaptureError> {
        let missing = self.cache.missing_type_infos(&rel);
        if !missing.is_empty() {
            let infos = load_type_infos(&self.catalog, &missing).await?;
            self.cache.insert_type_infos(infos);
        }
        let facts = self.column_facts(&rel).await?;
        self.cache.set_column_infos(rel.id, facts.infos);
        let (id, name, columns) = (rel.id, format!("{}.{}", rel.namespace, rel.name), rel.columns.len());
        let change = self.cache.apply_relation(rel);
        // A renamed table keeps its id: name it afresh.
        self.table_names.remove(&id);
        let relation = self.cache.get(id)?.clone();
        // walhouse's progress tables reach a FOR ALL TABLES stream too; their
        // changes are dropped, so they get no schema subject and no topic.
        if !self.is_own(&relation) {
            self.unannounced.insert(id);
        }
        if change == RelationChange::Changed {
            // Relation messages are not WAL records (they arrive at 0/0):
            // name the transaction that carried the new shape instead.
            let commit_lsn = carried_by.map(|t| t.commit_lsn.to_string()).unwrap_or_default();
            tracing::info!(table = %name, columns, %commit_lsn, "table shape changed");
        }
        Ok(relation)
    }

    /// The catalog's facts of `rel`'s columns once the catalog shows the
    /// shape the message describes. A commit is decoded before other
    /// sessions see it (see [`load_column_infos`]), so a catalog that lags
    /// is read again for up to [`CATALOG_CATCH_UP`]; one that still
    /// differs then was changed again by a later commit, and its facts
    /// (keys, NOT NULL, defaults) are used with a warning. The column
    /// types always come from the message.
    async fn column_facts(&self, rel: &Relation) -> Result<ColumnFacts, CaptureError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let facts = load_column_infos(&self.catalog, rel).await?;
            if facts.unmatched.is_empty() {
                return Ok(facts);
            }
            if started.elapsed() >= CATALOG_CATCH_UP {
                tracing::warn!(
                    table = %format!("{}.{}", rel.namespace, rel.name),
                    columns = %facts.unmatched.join(", "),
                    waited_ms = started.elapsed().as_millis() as u64,
                    "the catalog does not show these columns as the stream describes them (a later ALTER TABLE \
                     committed already, or this change is still invisible to other sessions): their types come \
                     from the stream, their keys, NOT NULL and defaults from the catalog as it is now"
                );
                return Ok(facts);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Gives the destination the shape of table `id`, if it lacks it.
    async fn announce<D: Destination>(&mut self, id: u32, dest: &mut D) -> Result<(), CaptureError> {
        if self.unannounced.remove(&id) {
            let relation = self.cache.get(id)?.clone();
            dest.relation(&relation, &self.cache).await?;
        }
        Ok(())
    }

    /// Sends one change event and counts it.
    pub(super) async fn send<D: Destination>(
        &mut self,
        event: &ChangeEvent<'_>,
        dest: &mut D,
    ) -> Result<(), CaptureError> {
        if !self.unannounced.is_empty() {
            match &event.kind {
                ChangeKind::Insert { relation, .. }
                | ChangeKind::Update { relation, .. }
                | ChangeKind::Delete { relation, .. } => self.announce(relation.id, dest).await?,
                ChangeKind::Truncate { relations, .. } => {
                    for r in relations.iter() {
                        self.announce(r.id, dest).await?;
                    }
                }
                ChangeKind::Message(_) => {}
            }
        }
        dest.send(event).await?;
        self.events += 1;
        match &event.kind {
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. } => self.count(relation, event.op(), 1),
            ChangeKind::Truncate { relations, .. } => {
                for r in relations.iter() {
                    self.count(r, "truncate", 1);
                }
            }
            ChangeKind::Message(_) => {}
        }
        Ok(())
    }

    /// Sends a row read by a snapshot (initial or incremental) as an
    /// insert marked `mark`, in the pseudo-transaction `tx`.
    pub(super) async fn send_read<D: Destination>(
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
        self.send(&event, dest).await
    }

    /// Hands over snapshot rows a copy worker encoded, after backpressure
    /// as for single rows. False when shutdown came first.
    pub(super) async fn send_encoded<D: Destination>(
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

    /// Counts events for metrics under `schema.table`, naming each
    /// relation once rather than formatting per event.
    fn count(&mut self, relation: &Relation, op: &str, n: u64) {
        let name = self
            .table_names
            .entry(relation.id)
            .or_insert_with(|| format!("{}.{}", relation.namespace, relation.name));
        self.metrics.count_events(name, op, n);
    }
}

/// Waits while the destination is full (backpressure); false when
/// shutdown came first.
pub(super) async fn room_or_shutdown<D: Destination>(dest: &D, shutdown: &mut watch::Receiver<bool>) -> bool {
    while dest.is_full() {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return false,
            _ = dest.progressed() => {}
        }
    }
    !*shutdown.borrow()
}
