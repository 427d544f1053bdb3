//! Shared harness for integration tests: real components started per test.

#![allow(dead_code)]

pub mod kafka;
pub mod postgres;
pub mod registry;

use std::time::Duration;

use walhouse::postgres::pgoutput::LogicalMessage;
use walhouse::postgres::replication::ReplicationStream;
use walhouse::postgres::Lsn;

/// Reads messages until `commits` transactions have committed, bounded by
/// `limit`. Panics with what arrived so far if the time runs out.
pub async fn read_commits(
    stream: &mut ReplicationStream,
    commits: usize,
    limit: Duration,
) -> Vec<(Lsn, LogicalMessage)> {
    let mut out = Vec::new();
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while seen < commits {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {seen} of {commits} commits; got {} messages",
                    out.len()
                )
            })
            .expect("stream error")
            .expect("stream ended early");
        if matches!(next.1, LogicalMessage::Commit(_)) {
            seen += 1;
        }
        out.push(next);
    }
    out
}

/// Messages other than Begin/Commit/Relation/Type: the changes themselves.
pub fn changes(msgs: &[(Lsn, LogicalMessage)]) -> Vec<&LogicalMessage> {
    msgs.iter()
        .map(|(_, m)| m)
        .filter(|m| {
            !matches!(
                m,
                LogicalMessage::Begin(_)
                    | LogicalMessage::Commit(_)
                    | LogicalMessage::Relation(_)
                    | LogicalMessage::Type(_)
            )
        })
        .collect()
}
