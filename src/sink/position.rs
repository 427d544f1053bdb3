//! Where the sink reads each partition from: the offsets stored in the
//! warehouse, never Kafka's. The consumer's rebalance callback only notes
//! what changed ([`SinkContext`]); the loop applies it ([`Positions::apply`])
//! and seeks every newly assigned partition to its stored offset
//! ([`Positions::seek`]) before any of its records count. Records of a
//! partition not positioned yet, or below its position, are read again
//! later or skipped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::error::{consumer_error, kafka, SinkError};
use crate::warehouse::{Mark, OffsetUpdate, SourcePosition, StoredOffset};

/// A topic and partition.
pub(super) type Partition = (String, i32);

/// Partition changes, noted by the consumer's rebalance callback and acted
/// on by the loop (which may await the warehouse; the callback may not).
#[derive(Default)]
pub(super) struct SinkContext {
    events: Mutex<Vec<Rebalanced>>,
}

enum Rebalanced {
    Assigned(Vec<Partition>),
    Revoked(Vec<Partition>),
}

impl SinkContext {
    fn take(&self) -> Vec<Rebalanced> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
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

/// A partition whose stored offset Kafka no longer holds: the records
/// `stored..earliest` were deleted (by retention) before they were stored.
pub(super) struct Gap {
    pub partition: Partition,
    pub stored: i64,
    pub earliest: i64,
}

/// The earliest offset Kafka holds for a partition (`None` when it cannot
/// tell now: the seek then goes ahead as if there were no gap, and a fetch
/// out of range comes back as a consumer error).
pub(super) fn earliest(consumer: &StreamConsumer<SinkContext>, topic: &str, partition: i32) -> Option<i64> {
    if crate::failpoint::fails("sink.earliest") {
        return None;
    }
    match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
        Ok((low, _)) => Some(low),
        Err(e) => {
            tracing::warn!(%topic, partition, "cannot read the partition's earliest offset: {e}");
            None
        }
    }
}

/// A partition the loop has positioned.
pub(super) struct Position {
    /// The next offset to store (everything below is in the warehouse or
    /// in the pending batch).
    pub next: i64,
    /// What the warehouse holds, the fence for the next write.
    pub stored: Option<i64>,
    /// The highest source position stored or pending from this partition,
    /// and its system: a change of that system at or below it is one
    /// stored already (sent again).
    pub high: Option<Mark>,
    /// The changes skipped as stored already since the last one stored.
    skipping: Option<SkipRun>,
}

/// Consecutive changes of a partition skipped as stored already: logged
/// when the run starts and when it ends, so no change is left out unseen.
#[derive(Clone, Copy, Debug)]
struct SkipRun {
    first_offset: i64,
    last_offset: i64,
    first: SourcePosition,
    count: u64,
}

/// How long partitions may wait for their seek before the wait is worth a
/// warning: right after an assignment a seek fails until the consumer
/// fetches, for a moment; longer, the partitions' records are not stored.
const SEEK_PATIENCE: Duration = Duration::from_secs(10);

/// Every assigned partition: positioned, or waiting for its seek.
#[derive(Default)]
pub(super) struct Positions {
    positioned: HashMap<Partition, Position>,
    unpositioned: Vec<Partition>,
    /// Since when some partition has waited for its seek, and whether
    /// that was said.
    waiting_since: Option<(std::time::Instant, bool)>,
}

impl Positions {
    /// Applies the rebalance events the consumer noted; returns whether
    /// partitions were revoked, in which case the pending batch must be
    /// dropped (its rows may belong to partitions another instance now
    /// owns) and every partition kept is positioned again.
    pub fn apply(&mut self, context: &SinkContext) -> bool {
        let mut revoked = false;
        for event in context.take() {
            match event {
                Rebalanced::Revoked(list) => {
                    tracing::info!(partitions = list.len(), "partitions revoked; pending batch dropped");
                    revoked = true;
                    for p in &list {
                        if let Some(mut pos) = self.positioned.remove(p) {
                            end_skip_run(p, &mut pos);
                        }
                        self.unpositioned.retain(|u| u != p);
                    }
                    self.reposition_all();
                    self.note_waiting("");
                }
                Rebalanced::Assigned(list) => {
                    tracing::info!(partitions = list.len(), "partitions assigned");
                    for p in list {
                        if !self.unpositioned.contains(&p) && !self.positioned.contains_key(&p) {
                            self.unpositioned.push(p);
                        }
                    }
                }
            }
        }
        revoked
    }

    /// Every partition is sought again from what the warehouse holds (after
    /// a revocation or a fenced write).
    pub fn reposition_all(&mut self) {
        self.unpositioned.extend(self.positioned.drain().map(|(k, mut pos)| {
            end_skip_run(&k, &mut pos);
            k
        }));
    }

    pub fn needs_seek(&self) -> bool {
        !self.unpositioned.is_empty()
    }

    /// Seeks the unpositioned partitions to `stored` (the warehouse's
    /// offsets; the beginning when none is stored) and pauses those of
    /// `stopped` topics. A partition the consumer cannot seek yet (not
    /// fetching right after its assignment) is tried again next turn.
    ///
    /// A stored offset Kafka no longer holds is returned as a [`Gap`]: with
    /// `skip`, the partition is sought to the earliest offset instead (the
    /// caller records the gap); without, it is left unpositioned for the
    /// caller to stop its topic.
    pub fn seek(
        &mut self,
        consumer: &StreamConsumer<SinkContext>,
        stored: &HashMap<Partition, StoredOffset>,
        stopped: &HashMap<String, String>,
        skip: bool,
    ) -> Result<Vec<Gap>, SinkError> {
        let mut tpl = TopicPartitionList::new();
        let mut gaps = Vec::new();
        let mut from: HashMap<Partition, i64> = HashMap::new();
        for (topic, partition) in &self.unpositioned {
            let key = (topic.clone(), *partition);
            let offset = match stored.get(&key).map(|s| s.next) {
                None => Offset::Beginning,
                Some(o) => match earliest(consumer, topic, *partition) {
                    Some(earliest) if earliest > o => {
                        gaps.push(Gap {
                            partition: key.clone(),
                            stored: o,
                            earliest,
                        });
                        if !skip {
                            continue;
                        }
                        from.insert(key, earliest);
                        Offset::Offset(earliest)
                    }
                    _ => Offset::Offset(o),
                },
            };
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(kafka("building a seek"))?;
        }
        if !skip {
            self.unpositioned.retain(|p| !gaps.iter().any(|g| g.partition == *p));
        }
        if tpl.count() == 0 {
            self.note_waiting("");
            return Ok(gaps);
        }
        let failed = crate::failpoint::fails("sink.seek")
            .then(|| rdkafka::error::KafkaError::Seek("a failpoint (sink.seek)".into()));
        let result = match failed.map_or_else(|| consumer.seek_partitions(tpl, Duration::from_secs(10)), Err) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("seek not possible yet: {e}");
                self.note_waiting(&e.to_string());
                return Ok(Vec::new());
            }
        };
        let mut still = Vec::new();
        let mut last_error = String::new();
        for e in result.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let Err(err) = e.error() {
                tracing::debug!(topic = %key.0, partition = key.1, "seek not possible yet: {err}");
                last_error = err.to_string();
                still.push(key);
                continue;
            }
            let high = stored.get(&key).and_then(|s| s.high);
            let stored = stored.get(&key).map(|s| s.next);
            tracing::info!(topic = %key.0, partition = key.1, offset = ?stored, ?high, "positioned at the warehouse's offset");
            if stopped.contains_key(&key.0) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&key.0, key.1);
                let _ = consumer.pause(&tpl);
            }
            let next = from.get(&key).copied().or(stored).unwrap_or(0);
            self.positioned.insert(
                key,
                Position {
                    next,
                    stored,
                    high,
                    skipping: None,
                },
            );
        }
        self.unpositioned = still;
        self.note_waiting(&last_error);
        // A gap skipped but not sought yet is found again next turn.
        gaps.retain(|g| self.positioned.contains_key(&g.partition));
        Ok(gaps)
    }

    /// Partitions waiting for their seek (their records are not stored).
    pub fn waiting(&self) -> usize {
        self.unpositioned.len()
    }

    /// Notes whether partitions still wait for their seek (`error`: the
    /// last failure): a wait past [`SEEK_PATIENCE`] is said once as a
    /// warning, and its end when it was.
    fn note_waiting(&mut self, error: &str) {
        if self.unpositioned.is_empty() {
            if let Some((since, true)) = self.waiting_since {
                tracing::info!(seconds = since.elapsed().as_secs(), "every partition positioned again");
            }
            self.waiting_since = None;
            return;
        }
        let (since, said) = self.waiting_since.get_or_insert((std::time::Instant::now(), false));
        if !*said && since.elapsed() >= SEEK_PATIENCE {
            *said = true;
            let names: Vec<String> = self.unpositioned.iter().map(|(t, p)| format!("{t}[{p}]")).collect();
            tracing::warn!(
                partitions = %names.join(", "),
                seconds = since.elapsed().as_secs(),
                "partitions could not be positioned at the warehouse's offsets, so their records are not stored \
                 until they are (walhouse_sink_waiting_partitions); retrying: {error}"
            );
        }
    }

    pub fn get(&self, at: &Partition) -> Option<&Position> {
        self.positioned.get(at)
    }

    /// A record of `at` at `offset` was accounted for (row, dead letter or
    /// skipped), a change at `position` among them; returns the partition's
    /// highest position now.
    pub fn advance(&mut self, at: &Partition, offset: i64, position: Option<Mark>) -> Option<Mark> {
        let pos = self.positioned.get_mut(at)?;
        if let Some(p) = position {
            end_skip_run(at, pos);
            // A change of another system never gets here (the caller
            // refuses it); one with no system keeps the mark's.
            match pos.high {
                Some(h) if p.position <= h.position => {}
                Some(h) => {
                    pos.high = Some(Mark {
                        system_id: p.system_id.or(h.system_id),
                        ..p
                    })
                }
                None => pos.high = Some(p),
            }
        }
        pos.next = offset + 1;
        pos.high
    }

    /// A change of `at` at `offset` and `position` was skipped: its
    /// position is at or below the partition's mark, stored already.
    pub fn skipped(&mut self, at: &Partition, offset: i64, position: SourcePosition) {
        let Some(pos) = self.positioned.get_mut(at) else {
            return;
        };
        match &mut pos.skipping {
            Some(run) => {
                run.count += 1;
                run.last_offset = offset;
            }
            None => {
                tracing::info!(
                    topic = %at.0,
                    partition = at.1,
                    offset,
                    position = %position,
                    mark = ?pos.high.map(|h| h.position.to_string()),
                    "skipping changes stored already (sent again): from this one on, until one past the mark"
                );
                pos.skipping = Some(SkipRun {
                    first_offset: offset,
                    last_offset: offset,
                    first: position,
                    count: 1,
                });
            }
        }
        pos.next = offset + 1;
    }

    /// The batch handed to the writer moves the fence: the next batch
    /// continues from its offsets.
    pub fn stored(&mut self, offsets: &[OffsetUpdate]) {
        for o in offsets {
            if let Some(p) = self.positioned.get_mut(&(o.topic.clone(), o.partition)) {
                p.stored = Some(o.next);
            }
        }
    }

    /// The positioned partitions of `topic`.
    pub fn of_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Partition> + 'a {
        self.positioned.keys().filter(move |(t, _)| t == topic)
    }
}

/// Logs the end of a partition's run of skipped changes, if one is open.
fn end_skip_run(at: &Partition, pos: &mut Position) {
    if let Some(run) = pos.skipping.take() {
        tracing::info!(
            topic = %at.0,
            partition = at.1,
            skipped = run.count,
            offsets = %format!("{}..={}", run.first_offset, run.last_offset),
            first = %run.first,
            "skipped changes stored already (sent again); storing from here on"
        );
    }
}
