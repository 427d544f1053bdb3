//! Shared harness for integration tests: real components started per test.

pub mod avro_data;
pub mod chaos;
pub mod command;
pub mod debezium;
pub mod fold;
pub mod kafka;
pub mod pipeline;
pub mod postgres;
pub mod python;
pub mod registry;
pub mod s3;

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

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    process_status_mib("self", "VmHWM:")
}

/// A memory line of a process's `/proc/<pid>/status` (`VmRSS:`,
/// `VmHWM:`, …), in MiB; `pid` is a number or `self`. 0 if unreadable.
pub fn process_status_mib(pid: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU seconds (user + system) a process used so far, from
/// `/proc/<pid>/stat`; `pid` is a number or `self`. 0 if unreadable.
pub fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses (and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime, fields 14 and 15 of stat(5), are 11 and 12 after the
    // name; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resets the peak to the current RSS (Linux >= 4.0: `5` to clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Logs of the code under test, in the test's output (`WALHOUSE_LOG`
/// filters; default `info`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("WALHOUSE_LOG").unwrap_or_else(|_| "info".into()))
        .try_init();
}
