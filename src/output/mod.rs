//! Where captured changes go.
//!
//! # The delivery contract
//! The capture loop calls [`Destination::send`] for each change in WAL
//! order and [`Destination::end_transaction`] at each commit. A destination
//! may buffer; [`Destination::durable`] tells how far it is durable, and the
//! capture loop acknowledges to Postgres exactly that LSN and nothing more.
//! Delivery is at least once: after a crash, changes past the durable LSN
//! are sent again.

pub mod stdout;

use crate::change::ChangeEvent;
use crate::postgres::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing to {target}: {source}")]
    Io {
        target: &'static str,
        source: std::io::Error,
    },
    #[error("encoding the change at {lsn}: {source}")]
    Encode { lsn: Lsn, source: serde_json::Error },
}

#[allow(async_fn_in_trait)]
pub trait Destination {
    /// Hands over one change.
    async fn send(&mut self, event: &ChangeEvent<'_>) -> Result<(), OutputError>;

    /// Marks the end of a transaction (or a non-transactional message) whose
    /// acknowledgement LSN is `ack_lsn`.
    async fn end_transaction(&mut self, ack_lsn: Lsn) -> Result<(), OutputError>;

    /// Highest LSN up to which everything handed over is durable.
    fn durable(&self) -> Lsn;

    /// Makes everything handed over durable (on a clean stop).
    async fn flush(&mut self) -> Result<(), OutputError>;
}
