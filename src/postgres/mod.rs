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
//! - [`snapshot`]: chunked reads of tables under a snapshot;
//!   [`snapshot_progress`]: which chunks are done, kept beside the slot.
//! - [`error`]: every failure classified, with the operator's fix.

pub mod catalog;
pub mod client;
pub mod conninfo;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod publication;
pub mod replication;
pub mod slot;
pub mod snapshot;
pub mod snapshot_progress;
pub mod tls;
mod wire;

pub use error::SourceError;
pub use lsn::Lsn;

/// Quotes an SQL identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `it's` becomes `'it''s'`. Assumes
/// `standard_conforming_strings` (on by default since 9.1), so backslashes
/// are ordinary characters.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_cannot_be_escaped() {
        assert_eq!(quote_ident("Order Items"), "\"Order Items\"");
        assert_eq!(quote_ident("x\"; DROP TABLE t; --"), "\"x\"\"; DROP TABLE t; --\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a'); DROP TABLE t; --"), "'a''); DROP TABLE t; --'");
    }
}
