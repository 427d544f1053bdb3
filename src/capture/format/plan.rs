//! What a change event becomes in Kafka, decided in one place for every
//! format: whether it is skipped (`--skipped-operations`), the records it
//! becomes (a key change is a delete and a create, each naming the other's
//! key in a header where the format does so; a delete is followed by its
//! tombstone), where each record stands in its transaction and in the run
//! (`source.sequence`, `total_order`, `data_collection_order`), and the
//! transaction topic's BEGIN and END with their counts. The Kafka
//! destination encodes and produces what the plan lists.

use std::collections::HashMap;

use crate::capture::change::{ChangeEvent, ChangeKind};
use crate::capture::config::{Format, KafkaSettings, SkippedOperations};
use crate::capture::format::Op;
use crate::postgres::pgoutput::Tuple;
use crate::postgres::Lsn;

/// The Debezium format's headers on the two records of a key change.
pub const NEW_KEY_HEADER: &str = "__debezium.newkey";
pub const OLD_KEY_HEADER: &str = "__debezium.oldkey";

/// Where a record stands in the run: what the Debezium format writes in
/// `source.sequence` and its `transaction` block.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequence {
    /// End LSN of the last transaction committed in this run.
    pub last_commit: Option<Lsn>,
    /// Position in the transaction and in its table, when the records
    /// carry the `transaction` block.
    pub transaction: Option<(u64, u64)>,
}

/// One record to write.
#[derive(Debug)]
pub struct Planned<'e> {
    pub relation_id: u32,
    pub op: Op<'e>,
    pub sequence: Sequence,
    /// A tombstone (same key, null value) follows the record.
    pub tombstone: bool,
    /// A header naming the other half of a key change: its name and the
    /// row whose key it carries.
    pub key_header: Option<(&'static str, &'e Tuple)>,
}

/// A transaction's BEGIN or END on the transaction topic.
#[derive(Clone, Debug)]
pub struct TransactionMark {
    pub xid: u32,
    pub begin_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub commit_ms: i64,
    /// The END's own LSN; `None` for the BEGIN.
    pub end: Option<Lsn>,
    /// Records per table (`schema.table`) in order of first appearance,
    /// for the END.
    pub counts: Vec<(String, u64)>,
}

/// The transaction being written, when the transaction topic is on.
struct OpenTransaction {
    mark: TransactionMark,
    /// Records written so far, in all and per table (by relation id).
    total: u64,
    per_table: HashMap<u32, u64>,
}

/// The plan of every event of a run, with the state it needs between
/// events: the open transaction and the last commit.
pub struct Planner {
    format: Format,
    skipped: SkippedOperations,
    tombstones: bool,
    transaction_topic: bool,
    open: Option<OpenTransaction>,
    last_commit: Option<Lsn>,
}

/// What one event becomes.
#[derive(Debug, Default)]
pub struct EventPlan<'e> {
    /// The transaction topic's BEGIN, before the event's first record.
    pub begin: Option<TransactionMark>,
    pub records: Vec<Planned<'e>>,
}

impl Planner {
    pub fn new(settings: &KafkaSettings) -> Self {
        Planner {
            format: settings.format,
            skipped: settings.skipped(),
            tombstones: settings.tombstones,
            transaction_topic: settings.transaction_topic,
            open: None,
            last_commit: None,
        }
    }

    /// Whether the transaction topic is written.
    pub fn transaction_topic(&self) -> bool {
        self.transaction_topic
    }

    /// Whether `--skipped-operations` leaves `event` out (snapshot reads
    /// never are).
    pub fn skips(&self, event: &ChangeEvent<'_>) -> bool {
        let code = match (&event.kind, event.snapshot) {
            (ChangeKind::Insert { .. }, None) => 'c',
            (ChangeKind::Update { .. }, _) => 'u',
            (ChangeKind::Delete { .. }, _) => 'd',
            (ChangeKind::Truncate { .. }, _) => 't',
            _ => return false,
        };
        self.skipped.contains(code)
    }

    /// The records of `event`, given the (relation id, op) pairs its
    /// tables make of it (none when [`Self::skips`] said so).
    pub fn plan<'e>(&mut self, event: &ChangeEvent<'_>, ops: Vec<(u32, Op<'e>)>) -> EventPlan<'e> {
        // Snapshot reads belong to no transaction (Debezium's shape too).
        let in_transaction = self.transaction_topic && event.snapshot.is_none();
        let begin = match event.tx.filter(|_| in_transaction) {
            Some(tx) if self.open.as_ref().map(|o| o.mark.xid) != Some(tx.xid) => {
                let mark = TransactionMark {
                    xid: tx.xid,
                    begin_lsn: tx.begin_lsn,
                    commit_lsn: tx.commit_lsn,
                    commit_ms: tx.commit_time.unix_millis(),
                    end: None,
                    counts: Vec::new(),
                };
                self.open = Some(OpenTransaction {
                    mark: mark.clone(),
                    total: 0,
                    per_table: HashMap::new(),
                });
                Some(mark)
            }
            _ => None,
        };
        // Debezium still opens the transaction for a skipped change: its
        // END then counts nothing for it. It counts records (a key change
        // is two), walhouse changes.
        let counted = self.format.counted(ops.len());
        if let (
            Some(open),
            ChangeKind::Insert { relation, .. }
            | ChangeKind::Update { relation, .. }
            | ChangeKind::Delete { relation, .. },
        ) = (
            self.open.as_mut().filter(|_| in_transaction && counted > 0),
            &event.kind,
        ) {
            let table = format!("{}.{}", relation.namespace, relation.name);
            match open.mark.counts.iter_mut().find(|(t, _)| *t == table) {
                Some((_, n)) => *n += counted,
                None => open.mark.counts.push((table, counted)),
            }
        }
        let key_change = match ops.as_slice() {
            [(_, Op::Delete(old)), (_, Op::Create(new))] if self.format.key_change_headers() => Some((*old, *new)),
            _ => None,
        };
        let records = ops
            .into_iter()
            .map(|(relation_id, op)| {
                let mut sequence = Sequence {
                    last_commit: self.last_commit,
                    transaction: None,
                };
                if let (true, Some(_), Some(open)) = (in_transaction, event.tx, self.open.as_mut()) {
                    open.total += 1;
                    let in_table = open.per_table.entry(relation_id).or_default();
                    *in_table += 1;
                    sequence.transaction = Some((open.total, *in_table));
                }
                let key_header = match (key_change, op) {
                    (Some((_, new)), Op::Delete(_)) => Some((NEW_KEY_HEADER, new)),
                    (Some((old, _)), Op::Create(_)) => Some((OLD_KEY_HEADER, old)),
                    _ => None,
                };
                Planned {
                    relation_id,
                    op,
                    sequence,
                    tombstone: self.tombstones && matches!(op, Op::Delete(_)),
                    key_header,
                }
            })
            .collect();
        EventPlan { begin, records }
    }

    /// The transaction acknowledged at `end_lsn` is over: its END, when
    /// the transaction topic is written; the next records name it in
    /// `source.sequence`.
    pub fn end_transaction(&mut self, end_lsn: Lsn) -> Option<TransactionMark> {
        self.last_commit = Some(end_lsn);
        self.open.take().map(|open| TransactionMark {
            end: Some(end_lsn),
            ..open.mark
        })
    }

    /// The open transaction was interrupted (a reconnect): it is sent again
    /// from its Begin, numbered from 1 again, as each delivery of a
    /// transaction is in Debezium's format.
    pub fn abandon_transaction(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::change::TxInfo;
    use crate::capture::config::CaptureArgs;
    use crate::postgres::pgoutput::{OldTuple, PgTimestamp, Relation, ReplicaIdentity, TupleValue};

    fn planner(flags: &[&str]) -> Planner {
        let mut argv = vec!["walhouse-capture", "--output", "kafka", "--transaction-topic", "true"];
        argv.extend_from_slice(flags);
        Planner::new(&CaptureArgs::parse_layered(argv).expect("flags").settings.kafka)
    }

    fn relation() -> Relation {
        Relation {
            xid: None,
            id: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: Vec::new(),
        }
    }

    fn tx(xid: u32) -> TxInfo {
        TxInfo {
            xid,
            begin_lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            commit_time: PgTimestamp::from_unix_micros(1_700_000_000_000_000),
        }
    }

    fn key(k: &str) -> Vec<TupleValue> {
        vec![TupleValue::Text(bytes::Bytes::copy_from_slice(k.as_bytes()))]
    }

    #[test]
    fn a_key_change_is_two_records_named_by_each_other_in_debezium_and_counted_as_such() {
        let (rel, tx) = (relation(), tx(5));
        let (old, new) = (OldTuple::Key(key("1")), key("2"));
        let event = ChangeEvent {
            lsn: Lsn(0x18),
            tx: Some(&tx),
            tx_ordinal: 1,
            kind: ChangeKind::Update {
                relation: &rel,
                old: Some(&old),
                new: &new,
            },
            snapshot: None,
        };
        let OldTuple::Key(before) = &old else { unreachable!() };
        for (flags, headers, counted) in [(&["--format", "debezium"][..], true, 2), (&[][..], false, 1)] {
            let mut p = planner(flags);
            let plan = p.plan(&event, vec![(7, Op::Delete(before)), (7, Op::Create(&new))]);
            assert_eq!(plan.begin.as_ref().map(|b| (b.xid, b.end)), Some((5, None)));
            let [delete, create] = plan.records.as_slice() else {
                panic!("two records: {plan:?}")
            };
            assert!(delete.tombstone && !create.tombstone);
            assert_eq!(
                (delete.sequence.transaction, create.sequence.transaction),
                (Some((1, 1)), Some((2, 2)))
            );
            if headers {
                assert_eq!(delete.key_header, Some((NEW_KEY_HEADER, &new)));
                assert_eq!(create.key_header, Some((OLD_KEY_HEADER, before)));
            } else {
                assert!(delete.key_header.is_none() && create.key_header.is_none());
            }
            let end = p.end_transaction(Lsn(0x28)).expect("an END");
            assert_eq!(
                (end.end, end.counts),
                (Some(Lsn(0x28)), vec![("public.t".to_owned(), counted)])
            );
        }
    }

    #[test]
    fn a_skipped_change_opens_its_transaction_and_counts_nothing() {
        let (rel, tx) = (relation(), tx(6));
        let old = OldTuple::Key(key("1"));
        let event = ChangeEvent {
            lsn: Lsn(0x18),
            tx: Some(&tx),
            tx_ordinal: 1,
            kind: ChangeKind::Delete {
                relation: &rel,
                old: &old,
            },
            snapshot: None,
        };
        let mut p = planner(&["--skipped-operations", "d"]);
        assert!(p.skips(&event));
        let plan = p.plan(&event, Vec::new());
        assert!(plan.begin.is_some() && plan.records.is_empty());
        assert_eq!(p.end_transaction(Lsn(0x28)).expect("an END").counts, vec![]);
    }

    #[test]
    fn a_transaction_sent_again_is_numbered_from_one_after_the_last_commit() {
        let (rel, tx) = (relation(), tx(9));
        let new = key("1");
        let event = ChangeEvent {
            lsn: Lsn(0x18),
            tx: Some(&tx),
            tx_ordinal: 1,
            kind: ChangeKind::Insert {
                relation: &rel,
                new: &new,
            },
            snapshot: None,
        };
        let mut p = planner(&["--format", "debezium"]);
        p.end_transaction(Lsn(0x08));
        for _ in 0..2 {
            p.plan(&event, vec![(7, Op::Create(&new))]);
        }
        p.abandon_transaction();
        let plan = p.plan(&event, vec![(7, Op::Create(&new))]);
        assert!(plan.begin.is_some(), "the BEGIN is sent again");
        let [again] = plan.records.as_slice() else {
            panic!("one record")
        };
        assert_eq!(again.sequence.transaction, Some((1, 1)));
        assert_eq!(again.sequence.last_commit, Some(Lsn(0x08)));
        assert!(!again.tombstone);
    }
}
