//! The record formats capture writes, each on the shared Avro codec
//! (`crate::avro`): walhouse's own envelopes ([`walhouse`]) and what
//! Debezium's PostgreSQL connector writes through Confluent's
//! AvroConverter ([`debezium`], its Connect types and envelopes).

pub mod debezium;
pub mod walhouse;
