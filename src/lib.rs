//! walhouse: change data capture from Postgres to Kafka to a warehouse.
//!
//! Two pipelines, two binaries:
//!
//! - **capture** (`walhouse-capture`): a logical replication slot
//!   ([`postgres::replication`]) streams pgoutput messages, decoded without
//!   I/O ([`postgres::pgoutput`]) and resolved against their relations
//!   ([`postgres::catalog`]) into [`change::ChangeEvent`]s; the
//!   [`capture`] loop hands them to a [`capture::destination::Destination`] and confirms
//!   an LSN to Postgres only once the destination says it is durable.
//! - **sink** (`walhouse-sink`): the [`sink`] loop consumes the CDC topics
//!   (decoded by [`sink::envelope`]), company events and insolvency CSVs
//!   into append-only raw tables of a [`warehouse::Warehouse`] (DuckDB or
//!   Postgres), storing each partition's offset in the same transaction.
//!
//! Capture delivers at least once, ordered per table as in the WAL; what is
//! not acknowledged is sent again after a crash. The sink stores each Kafka
//! message exactly once.

pub mod avro;
pub mod calendar;
pub mod capture;
pub mod cli;
pub mod failpoint;
pub mod http;
pub mod metrics;
pub mod postgres;
pub mod quote;
pub mod registry;
pub mod sink;
pub mod topics;
pub mod warehouse;
