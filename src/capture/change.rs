//! A change as the capture pipeline carries it: one pgoutput data message
//! resolved against its relation and placed in its transaction.
//!
//! Events borrow from the decoded message and the relation cache, so
//! building one costs nothing; outputs encode them (JSON lines today, Avro
//! next) without a copy in between.

use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::postgres::catalog::CatalogError;
use crate::postgres::pgoutput::{Message, OldTuple, PgTimestamp, Relation, Tuple, TupleValue};
use crate::postgres::Lsn;

/// The transaction a change belongs to, from its Begin message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxInfo {
    pub xid: u32,
    /// Where the transaction's decoding began (its Begin message's LSN).
    pub begin_lsn: Lsn,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// What happened.
#[derive(Debug)]
pub enum ChangeKind<'a> {
    Insert {
        relation: &'a Relation,
        new: &'a Tuple,
    },
    Update {
        relation: &'a Relation,
        old: Option<&'a OldTuple>,
        new: &'a Tuple,
    },
    Delete {
        relation: &'a Relation,
        old: &'a OldTuple,
    },
    Truncate {
        relations: &'a [Arc<Relation>],
        cascade: bool,
        restart_identity: bool,
    },
    Message(&'a Message),
}

/// Marks a row read by the initial snapshot (Debezium's `op = r`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMark {
    Row,
    /// The last row of the whole snapshot.
    Last,
    /// A row read by an incremental snapshot, while streaming.
    Incremental,
}

impl SnapshotMark {
    /// `source.snapshot` as Debezium spells it.
    pub fn as_str(mark: Option<SnapshotMark>) -> &'static str {
        match mark {
            None => "false",
            Some(SnapshotMark::Row) => "true",
            Some(SnapshotMark::Last) => "last",
            Some(SnapshotMark::Incremental) => "incremental",
        }
    }
}

/// One change with its position.
#[derive(Debug)]
pub struct ChangeEvent<'a> {
    /// The change's own LSN (shared by several changes, and by Begin).
    pub lsn: Lsn,
    /// `None` for a non-transactional logical message.
    pub tx: Option<&'a TxInfo>,
    /// Position in the transaction, from 1: with `commit_lsn`, the only total
    /// order of changes (several can share one LSN).
    pub tx_ordinal: u64,
    pub kind: ChangeKind<'a>,
    /// Set for rows of the initial snapshot (an Insert read, not written).
    pub snapshot: Option<SnapshotMark>,
}

/// Checks that a tuple has as many values as its relation has columns.
pub fn check_arity(relation: &Relation, tuple: &Tuple) -> Result<(), CatalogError> {
    if relation.columns.len() == tuple.len() {
        Ok(())
    } else {
        Err(CatalogError::ColumnCount {
            relation: format!("{}.{}", relation.namespace, relation.name),
            columns: relation.columns.len(),
            values: tuple.len(),
        })
    }
}

impl ChangeEvent<'_> {
    pub fn op(&self) -> &'static str {
        match self.kind {
            ChangeKind::Insert { .. } if self.snapshot.is_some() => "read",
            ChangeKind::Insert { .. } => "insert",
            ChangeKind::Update { .. } => "update",
            ChangeKind::Delete { .. } => "delete",
            ChangeKind::Truncate { .. } => "truncate",
            ChangeKind::Message(_) => "message",
        }
    }
}

/// Column values as a JSON object: text form, NULL as null. Unchanged TOAST
/// values are left out (and listed in `unchanged_toast`): they are not NULL.
struct Columns<'a> {
    relation: &'a Relation,
    tuple: &'a Tuple,
    keys_only: bool,
}

impl Serialize for Columns<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (col, value) in self.relation.columns.iter().zip(self.tuple) {
            if self.keys_only && !col.is_key {
                continue;
            }
            match value {
                TupleValue::Null => map.serialize_entry(&col.name, &())?,
                TupleValue::UnchangedToast => {}
                TupleValue::Text(t) => map.serialize_entry(&col.name, &String::from_utf8_lossy(t))?,
                TupleValue::Binary(b) => map.serialize_entry(&col.name, &hex(b))?,
            }
        }
        map.end()
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("\\x");
    for byte in b {
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

struct UnchangedToast<'a>(&'a Relation, &'a Tuple);

impl Serialize for UnchangedToast<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for (col, v) in self.0.columns.iter().zip(self.1) {
            if *v == TupleValue::UnchangedToast {
                seq.serialize_element(&col.name)?;
            }
        }
        seq.end()
    }
}

/// The JSON-lines form written by `--output stdout`.
impl Serialize for ChangeEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ChangeEvent", 14)?;
        st.serialize_field("lsn", &self.lsn)?;
        st.serialize_field("commit_lsn", &self.tx.map(|t| t.commit_lsn))?;
        st.serialize_field("xid", &self.tx.map(|t| t.xid))?;
        st.serialize_field(
            "commit_ts_ms",
            &self.tx.map(|t| t.commit_time.unix_micros().div_euclid(1000)),
        )?;
        st.serialize_field("tx_ordinal", &self.tx_ordinal)?;
        st.serialize_field("op", self.op())?;
        if self.snapshot.is_some() {
            st.serialize_field("snapshot", SnapshotMark::as_str(self.snapshot))?;
        }
        let cols = |relation, tuple| Columns {
            relation,
            tuple,
            keys_only: false,
        };
        let key = |relation, tuple| Columns {
            relation,
            tuple,
            keys_only: true,
        };
        match &self.kind {
            ChangeKind::Insert { relation, new } => {
                st.serialize_field("schema", &relation.namespace)?;
                st.serialize_field("table", &relation.name)?;
                st.serialize_field("key", &key(relation, new))?;
                st.serialize_field("before", &None::<()>)?;
                st.serialize_field("after", &cols(relation, new))?;
                st.serialize_field("unchanged_toast", &UnchangedToast(relation, new))?;
            }
            ChangeKind::Update { relation, old, new } => {
                st.serialize_field("schema", &relation.namespace)?;
                st.serialize_field("table", &relation.name)?;
                // The old key when the key changed, else the new row's key.
                let key_source = match old {
                    Some(OldTuple::Key(t)) | Some(OldTuple::Full(t)) => t,
                    None => new,
                };
                st.serialize_field("key", &key(relation, key_source))?;
                match old {
                    Some(OldTuple::Full(t)) => st.serialize_field("before", &cols(relation, t))?,
                    Some(OldTuple::Key(t)) => st.serialize_field("before", &key(relation, t))?,
                    None => st.serialize_field("before", &None::<()>)?,
                }
                st.serialize_field("after", &cols(relation, new))?;
                st.serialize_field("unchanged_toast", &UnchangedToast(relation, new))?;
            }
            ChangeKind::Delete { relation, old } => {
                st.serialize_field("schema", &relation.namespace)?;
                st.serialize_field("table", &relation.name)?;
                let (OldTuple::Key(t) | OldTuple::Full(t)) = old;
                st.serialize_field("key", &key(relation, t))?;
                match old {
                    OldTuple::Full(t) => st.serialize_field("before", &cols(relation, t))?,
                    OldTuple::Key(t) => st.serialize_field("before", &key(relation, t))?,
                }
                st.serialize_field("after", &None::<()>)?;
            }
            ChangeKind::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                let names: Vec<String> = relations
                    .iter()
                    .map(|r| format!("{}.{}", r.namespace, r.name))
                    .collect();
                st.serialize_field("tables", &names)?;
                st.serialize_field("cascade", cascade)?;
                st.serialize_field("restart_identity", restart_identity)?;
            }
            ChangeKind::Message(m) => {
                st.serialize_field("transactional", &m.transactional)?;
                st.serialize_field("prefix", &m.prefix)?;
                match std::str::from_utf8(&m.content) {
                    Ok(text) => st.serialize_field("content", text)?,
                    Err(_) => st.serialize_field("content", &hex(&m.content))?,
                }
            }
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::pgoutput::{RelationColumn, ReplicaIdentity};
    use bytes::Bytes;

    fn relation() -> Relation {
        let col = |name: &str, is_key| RelationColumn {
            is_key,
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        Relation {
            xid: None,
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", true), col("note", false), col("big", false)],
        }
    }

    #[test]
    fn json_line_keeps_null_and_unchanged_toast_apart() {
        let rel = relation();
        let new = vec![
            TupleValue::Text(Bytes::from_static(b"7")),
            TupleValue::Null,
            TupleValue::UnchangedToast,
        ];
        let tx = TxInfo {
            xid: 9,
            begin_lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            commit_time: PgTimestamp::from_unix_micros(1_700_000_000_123_456),
        };
        let ev = ChangeEvent {
            lsn: Lsn(0x10),
            tx: Some(&tx),
            tx_ordinal: 1,
            kind: ChangeKind::Update {
                relation: &rel,
                old: None,
                new: &new,
            },
            snapshot: None,
        };
        let v: serde_json::Value = serde_json::to_value(&ev).expect("serialises");
        assert_eq!(v["op"], "update");
        assert_eq!(v["lsn"], "0/10");
        assert_eq!(v["commit_lsn"], "0/20");
        assert_eq!(v["commit_ts_ms"], 1_700_000_000_123i64);
        assert_eq!(v["key"], serde_json::json!({"id": "7"}));
        assert_eq!(v["after"], serde_json::json!({"id": "7", "note": null}));
        assert_eq!(v["unchanged_toast"], serde_json::json!(["big"]));
        assert!(v["before"].is_null());
    }

    #[test]
    fn arity_mismatch_is_an_error() {
        let rel = relation();
        assert!(check_arity(&rel, &vec![TupleValue::Null; 3]).is_ok());
        assert!(check_arity(&rel, &vec![TupleValue::Null; 2]).is_err());
    }
}
