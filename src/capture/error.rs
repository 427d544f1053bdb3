//! What stops capture, each with the operator's fix where there is one.

use crate::capture::destination::OutputError;
use crate::postgres::catalog::CatalogError;
use crate::postgres::{Lsn, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(
        "replication slot {slot:?} does not exist, yet this database recorded a snapshot for it (phase {phase}, \
         consistent point {consistent}): the slot was dropped, or a failover promoted a standby whose copy of it was \
         not synced yet (still temporary). The changes after its last confirmed position, deletes among them, cannot \
         be read from this server, and a new snapshot would leave rows deleted meanwhile alive downstream. Fix: to \
         start over, rebuild what downstream holds from this slot and clear the record ({clear}); before the next \
         failover, check that the standby shows the slot synced and not temporary"
    )]
    SlotLost {
        slot: String,
        phase: &'static str,
        consistent: String,
        clear: String,
    },
    #[error("gave up after {attempts} reconnect attempts; last error: {last}")]
    GaveUp { attempts: u32, last: SourceError },
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::postgres::snapshot::SnapshotError),
    #[error("cannot serve metrics on {addr}: {source}. Fix: choose a free --metrics-addr")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the server sent a streamed-transaction message although walhouse asked for protocol 1 (at {lsn})")]
    UnexpectedStream { lsn: Lsn },
    #[error(transparent)]
    Config(#[from] crate::cli::ConfigError),
    #[error(transparent)]
    Spool(#[from] super::spool::SpoolError),
    #[error("{table} is not in publication {publication:?}. Fix: add it (ALTER PUBLICATION … ADD TABLE {quoted}), which also snapshots it")]
    NotPublished {
        table: String,
        quoted: String,
        publication: String,
    },
    #[error("{0}")]
    InvalidTable(String),
    #[error(transparent)]
    Standby(#[from] super::standby::StandbyError),
}
