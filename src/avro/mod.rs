//! Postgres rows to Avro and back, the codec both wings share: the type
//! mapping ([`types`]) and exact text-to-binary encoding ([`value`]) that
//! capture's formats (`capture::format`) build their keys and envelopes
//! from (the sink decodes them with its own `sink::envelope`). Pure: no
//! I/O, and no import of either wing or the warehouse.

pub mod types;
pub mod value;

/// Decodes `bytes` as one datum of `schema` with apache-avro, and checks
/// nothing is left over: the independent reader the unit tests check
/// walhouse's encoder against.
#[cfg(test)]
pub(crate) fn read_datum(schema: &serde_json::Value, bytes: &[u8]) -> apache_avro::types::Value {
    let schema = apache_avro::Schema::parse(schema).expect("valid schema");
    let mut r = bytes;
    let v = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader")
        .read_value(&mut r)
        .expect("decodes");
    assert!(r.is_empty(), "trailing bytes");
    v
}
