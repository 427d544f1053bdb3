//! The transaction topic in the Debezium format (`provide.transaction.metadata`):
//! a BEGIN and an END record per transaction, keyed by its id
//! `<xid>:<lsn>` (the BEGIN's LSN for BEGIN, the commit's end for END),
//! the END counting the records of each table in the order Debezium lists
//! them.

use serde_json::Value as Json;

use super::{avro_schema, ConnectType};
use crate::capture::format::walhouse::put_transaction;

/// Key and value schemas, as AvroData writes Debezium's Connect schemas.
pub fn schemas() -> (Json, Json) {
    use ConnectType as C;
    let string = || C::plain("string");
    let long = || C::plain("int64");
    let key = ConnectType {
        fields: vec![("id", string(), false)],
        ..C::named("struct", "io.debezium.connector.common.TransactionMetadataKey")
    };
    let collection = ConnectType {
        fields: vec![("data_collection", string(), false), ("event_count", long(), false)],
        ..C::named("struct", "event.collection")
    };
    let value = ConnectType {
        fields: vec![
            ("status", string(), false),
            ("id", string(), false),
            ("event_count", long(), true),
            (
                "data_collections",
                ConnectType {
                    fields: vec![("items", collection, true)],
                    ..C::plain("array")
                },
                true,
            ),
            ("ts_ms", long(), false),
        ],
        ..C::named("struct", "io.debezium.connector.common.TransactionMetadataValue")
    };
    (avro_schema(&key, false), avro_schema(&value, false))
}

/// The key and value bodies (without the wire header) of a BEGIN (no
/// counts) or END record; `counts` are per `schema.table`, in the order
/// the tables first appeared in the transaction (written in Debezium's);
/// `commit_ms` is the transaction's commit time.
pub fn record(id: &str, status: &str, counts: Option<&[(String, u64)]>, commit_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let ordered: Option<Vec<(&str, u64)>> = counts.map(|c| {
        java_hash_map_order(c.iter().map(|(t, _)| t.as_str()))
            .into_iter()
            .map(|i| (c[i].0.as_str(), c[i].1))
            .collect()
    });
    let (mut key, mut value) = (Vec::new(), Vec::new());
    put_transaction(id, status, ordered.as_deref(), true, commit_ms, &mut key, &mut value);
    (key, value)
}

/// Java's `String.hashCode`: over UTF-16 code units, wrapping.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

/// The order a `java.util.HashMap` with these keys (inserted in this
/// order) iterates them: Debezium counts tables in one, so its END record
/// lists them so. Buckets in index order (the table doubles from 16 past a
/// load of 0.75), insertion order within a bucket.
fn java_hash_map_order<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let keys: Vec<&str> = keys.collect();
    let mut capacity: usize = 16;
    while keys.len() * 4 > capacity * 3 {
        capacity *= 2;
    }
    let bucket = |k: &str| {
        let h = java_hash(k);
        ((h ^ ((h as u32) >> 16) as i32) as u32 as usize) & (capacity - 1)
    };
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| (bucket(keys[i]), i));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_string_hashes() {
        // Values from Java's "…".hashCode().
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("public.t"), 1_293_599_279);
    }

    #[test]
    fn tables_come_in_debeziums_order() {
        // Debezium 3.6.1 listed a transaction touching public.f, public.t
        // and public.u (first in that order) as t, u, f.
        let order = java_hash_map_order(["public.f", "public.t", "public.u"].into_iter());
        assert_eq!(order, vec![1, 2, 0]);
    }
}
