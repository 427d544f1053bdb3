//! Everything that speaks to the source database.
//!
//! - [`conninfo`]: the source URL, parsed once for both connections.
//! - [`tls`]: libpq's `sslmode` on rustls.
//! - `wire`: the protocol spoken directly (connect, auth, framing).
//! - [`replication`]: the replication-protocol connection and stream.
//! - [`pgoutput`]: bytes to typed messages, no I/O.
//! - [`catalog`]: relations and type names seen on the stream.
//! - [`client`]: the ordinary SQL connection (tokio-postgres).
//! - [`slot`] and [`publication`]: preflight checks and lifecycle.
//! - [`partitions`]: the partition trees under published tables.
//! - [`snapshot`]: chunked reads of tables under a snapshot.
//! - [`error`]: every failure classified, with the operator's fix.

pub mod catalog;
pub mod client;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod partitions;
pub mod pgoutput;
pub mod publication;
pub mod replication;
pub mod slot;
pub mod snapshot;
pub mod tls;
mod wire;

pub use error::SourceError;
pub use lsn::Lsn;
