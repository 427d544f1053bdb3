//! Postgres rows to Avro: the type mapping ([`types`]), exact text-to-binary
//! encoding ([`value`]), and the Debezium-shaped key and envelope
//! ([`envelope`]). Pure: no I/O, unit-tested against apache-avro's reader.

pub mod envelope;
pub mod types;
pub mod value;
