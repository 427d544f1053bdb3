//! The record formats capture writes, each on the shared Avro codec
//! (`crate::avro`): walhouse's own envelopes ([`walhouse`]) and what
//! Debezium's PostgreSQL connector writes through Confluent's
//! AvroConverter ([`debezium`], its Connect types and envelopes).
//!
//! Everything that differs between them is answered here, through
//! [`TableFormat`] (a table's schemas and records) and [`Format`]'s
//! methods (topic names, the transaction topic, how a change is counted);
//! what an event becomes, in any format, is [`plan`]'s. The Kafka
//! destination registers and produces what it is given and never asks
//! which format it writes.

pub mod debezium;
pub mod plan;
pub mod walhouse;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;

use crate::avro::types::NumericMode;
use crate::capture::change::ChangeEvent;
pub use crate::capture::config::Format;
use crate::capture::destination::EncodedRows;
use crate::postgres::catalog::{ColumnInfo, TypeInfo};
use crate::postgres::pgoutput::{Relation, Tuple};
use crate::postgres::Lsn;
use crate::registry::wire_header;
use crate::topics::Rule;
pub use plan::TransactionMark;
pub use walhouse::Op;

/// What a record carries beyond its change: the source's names and the
/// run's state at the time of writing.
#[derive(Clone, Copy, Debug)]
pub struct RecordContext<'a> {
    /// The topic prefix (`source.name`).
    pub name: &'a str,
    pub db: &'a str,
    /// The database system identifier (`IDENTIFY_SYSTEM`).
    pub system_id: Option<&'a str>,
    /// Wall-clock time of writing, in ms since the epoch.
    pub now_ms: i64,
    /// End LSN of the last transaction committed before this one in this
    /// run.
    pub last_commit: Option<Lsn>,
    /// The record's place in its transaction: in all, and in its table
    /// (when the transaction topic is written).
    pub transaction: Option<(u64, u64)>,
}

/// One table's topic in a format: its schemas and how its changes become
/// keys and values.
pub trait TableFormat: Send + Sync {
    fn topic(&self) -> &str;
    /// `None`: the table has no key (its records get a null key).
    fn key_schema(&self) -> Option<&Json>;
    fn value_schema(&self) -> &Json;
    /// The columns whose schema `newer` (the same table's, same format)
    /// changes, for the message of a refused schema.
    fn changed_columns(&self, newer: &dyn TableFormat) -> Vec<String>;
    /// Whether an update from `old` to `new` changed the key (then it is
    /// written as a delete and a create).
    fn key_changed(&self, old: &Tuple, new: &Tuple) -> bool;
    /// Appends the key of `tuple` (after the caller's wire header); `false`
    /// when the table has no key. `Err`: why this row cannot be keyed.
    fn encode_key(&self, tuple: &Tuple, out: &mut Vec<u8>) -> Result<bool, String>;
    /// Appends the value of `op` (after the caller's wire header).
    fn encode_value(&self, event: &ChangeEvent<'_>, op: Op<'_>, cx: &RecordContext<'_>, out: &mut Vec<u8>);
    /// Appends the value of a snapshot read of `new` to `out.buf`, free to
    /// keep what the rows of one transaction share in `out.shared`.
    fn encode_read(&self, event: &ChangeEvent<'_>, new: &Tuple, cx: &RecordContext<'_>, out: &mut EncodedRows);
    /// For [`Self::changed_columns`]: the concrete table of the same format.
    fn as_any(&self) -> &dyn Any;
}

/// What a table's format is made from.
pub struct TableSource<'s, 'a, L: Fn(u32) -> Option<&'a TypeInfo>> {
    pub prefix: &'s str,
    pub relation: &'s Relation,
    pub column_infos: &'s HashMap<String, ColumnInfo>,
    pub numeric_mode: NumericMode,
    /// The Debezium format's value for an unchanged TOAST column.
    pub toast_placeholder: &'s str,
    pub lookup: &'s L,
}

impl Format {
    /// A table's topic in this format.
    pub fn table<'a, L: Fn(u32) -> Option<&'a TypeInfo>>(self, s: TableSource<'_, 'a, L>) -> Box<dyn TableFormat> {
        match self {
            Format::Walhouse => Box::new(walhouse::TableEnvelope::new(
                s.prefix,
                s.relation,
                s.column_infos,
                s.numeric_mode,
                s.lookup,
            )),
            Format::Debezium => Box::new(debezium::envelope::DebeziumTable::new(
                s.prefix,
                s.relation,
                s.column_infos,
                s.toast_placeholder,
                s.lookup,
            )),
        }
    }

    /// How this format names a table's topic.
    pub fn topic_rule(self) -> Rule {
        match self {
            Format::Walhouse => Rule::Walhouse,
            Format::Debezium => Rule::Debezium,
        }
    }

    /// The transaction topic's key and value schemas.
    pub fn transaction_schemas(self) -> (Json, Json) {
        match self {
            Format::Walhouse => walhouse::transaction_schemas(),
            Format::Debezium => debezium::transaction::schemas(),
        }
    }

    /// A BEGIN or END record in the wire format, under the registered ids.
    /// walhouse's format names a transaction `<xid>:<commit_lsn>` (xids
    /// wrap; the pair does not), Debezium's `<xid>:<lsn>` with the BEGIN's
    /// and the END's own LSNs.
    pub fn transaction_record(
        self,
        key_id: u32,
        value_id: u32,
        tx: &TransactionMark,
        now_ms: i64,
    ) -> (Vec<u8>, Vec<u8>) {
        let status = if tx.end.is_some() { "END" } else { "BEGIN" };
        match self {
            Format::Walhouse => {
                let counts: BTreeMap<String, u64> = tx.counts.iter().cloned().collect();
                walhouse::transaction_record(
                    key_id,
                    value_id,
                    &format!("{}:{}", tx.xid, tx.commit_lsn),
                    status,
                    tx.end.is_some().then_some(&counts),
                    now_ms,
                )
            }
            Format::Debezium => {
                let lsn = tx.end.unwrap_or(tx.begin_lsn);
                let (k, v) = debezium::transaction::record(
                    &format!("{}:{}", tx.xid, lsn.0),
                    status,
                    tx.end.is_some().then_some(tx.counts.as_slice()),
                    tx.commit_ms,
                );
                let mut key = Vec::with_capacity(k.len() + 5);
                wire_header(key_id, &mut key);
                key.extend_from_slice(&k);
                let mut value = Vec::with_capacity(v.len() + 5);
                wire_header(value_id, &mut value);
                value.extend_from_slice(&v);
                (key, value)
            }
        }
    }

    /// What one change counts for in its transaction's END, given the
    /// records it became: Debezium counts records (a key change is two),
    /// walhouse changes. A change that became no record (skipped) counts
    /// for nothing in either.
    pub fn counted(self, records: usize) -> u64 {
        match self {
            Format::Walhouse => u64::from(records > 0),
            Format::Debezium => records as u64,
        }
    }

    /// Whether the delete and the create of a key change each name the
    /// other's key in a header (Debezium's `__debezium.newkey` and
    /// `__debezium.oldkey`).
    pub fn key_change_headers(self) -> bool {
        self == Format::Debezium
    }
}
