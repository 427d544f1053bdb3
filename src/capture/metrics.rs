//! Capture's Prometheus metrics (served by [`crate::metrics::serve`]).
//!
//! The capture loop owns the pipeline and publishes what it knows into
//! these atomics as it goes; the HTTP server only reads them. `/health`
//! answers 200 while capture is streaming and 503 while it is starting,
//! reconnecting or stopped, so an orchestrator can tell a stuck replicator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::capture::format::debezium::replaced::replacements;
use crate::metrics::Exposition;
use crate::postgres::slot::SlotStats;

/// Where capture stands, for `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Streaming = 1,
    Reconnecting = 2,
    Stopped = 3,
}

impl Phase {
    fn name(v: u8) -> &'static str {
        match v {
            0 => "starting",
            1 => "streaming",
            2 => "reconnecting",
            _ => "stopped",
        }
    }
}

const OPS: [&str; 6] = ["insert", "update", "delete", "truncate", "read", "message"];

#[derive(Debug, Default)]
pub struct Metrics {
    phase: AtomicU8,
    /// Per table, counts by op (see `OPS`): looked up by `&str`, so
    /// counting allocates only the first time a table is seen.
    events: Mutex<BTreeMap<String, [u64; OPS.len()]>>,
    transactions: AtomicU64,
    acknowledged_lsn: AtomicU64,
    received_lsn: AtomicU64,
    in_flight: AtomicU64,
    bytes_sent: AtomicU64,
    registry_calls: AtomicU64,
    reconnects: AtomicU64,
    slot_lag: AtomicU64,
    snapshot_chunks_total: AtomicU64,
    snapshot_chunks_done: AtomicU64,
    snapshot_rows_per_s: AtomicU64,
    snapshot_eta_s: AtomicU64,
    streamed_in_progress: AtomicU64,
    spool_bytes: AtomicU64,
    streamed_transactions: AtomicU64,
    /// Warnings that the source waits for a standby before sending.
    standby_waits: AtomicU64,
    /// The slot's row of `pg_stat_replication_slots` (Postgres 14+).
    source_slot_stats: Mutex<Option<SlotStats>>,
}

impl Metrics {
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Streaming,
            2 => Phase::Reconnecting,
            _ => Phase::Stopped,
        }
    }

    /// Counts one event; `table` is `schema.table`, `op` one of insert,
    /// update, delete, truncate, read, message.
    pub fn count_event(&self, table: &str, op: &str) {
        self.count_events(table, op, 1);
    }

    /// Counts `n` events of one kind at once (a snapshot batch).
    pub fn count_events(&self, table: &str, op: &str, n: u64) {
        let Some(i) = OPS.iter().position(|o| *o == op) else {
            return;
        };
        let mut m = self.events.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(table) {
            Some(counts) => counts[i] += n,
            None => {
                let mut counts = [0; OPS.len()];
                counts[i] = n;
                m.insert(table.to_owned(), counts);
            }
        }
    }

    pub fn count_transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Positions: what the server sent, what was acknowledged to it.
    pub fn set_positions(&self, received: u64, acknowledged: u64) {
        self.received_lsn.store(received, Ordering::Relaxed);
        self.acknowledged_lsn.store(acknowledged, Ordering::Relaxed);
    }

    /// WAL bytes the slot holds back on the server.
    pub fn set_slot_lag(&self, bytes: u64) {
        self.slot_lag.store(bytes, Ordering::Relaxed);
    }

    pub fn set_destination(&self, in_flight: u64, bytes_sent: u64, registry_calls: u64) {
        self.in_flight.store(in_flight, Ordering::Relaxed);
        self.bytes_sent.store(bytes_sent, Ordering::Relaxed);
        self.registry_calls.store(registry_calls, Ordering::Relaxed);
    }

    /// Streamed transactions not yet committed or rolled back, and the
    /// bytes their spools hold.
    pub fn set_spool(&self, in_progress: u64, bytes: u64) {
        self.streamed_in_progress.store(in_progress, Ordering::Relaxed);
        self.spool_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn set_standby_waits(&self, waits: u64) {
        self.standby_waits.store(waits, Ordering::Relaxed);
    }

    pub fn count_streamed_transaction(&self) {
        self.streamed_transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_source_slot_stats(&self, stats: SlotStats) {
        *self.source_slot_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// Snapshot progress: chunks planned and done, current rate and the
    /// estimated seconds left (initial and incremental snapshots alike).
    pub fn set_snapshot(&self, chunks_total: u64, chunks_done: u64, rows_per_s: u64, eta_s: u64) {
        self.snapshot_chunks_total.store(chunks_total, Ordering::Relaxed);
        self.snapshot_chunks_done.store(chunks_done, Ordering::Relaxed);
        self.snapshot_rows_per_s.store(rows_per_s, Ordering::Relaxed);
        self.snapshot_eta_s.store(eta_s, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        let received = self.received_lsn.load(Ordering::Relaxed);
        let acked = self.acknowledged_lsn.load(Ordering::Relaxed);
        gauge(
            "walhouse_capture_up",
            "1 while capture is streaming.",
            "gauge",
            u64::from(self.phase() == Phase::Streaming),
        );
        gauge(
            "walhouse_capture_acknowledged_lsn",
            "Last LSN confirmed to Postgres, as a number.",
            "gauge",
            acked,
        );
        gauge(
            "walhouse_capture_received_lsn",
            "Highest WAL position received from Postgres.",
            "gauge",
            received,
        );
        gauge(
            "walhouse_capture_replication_lag_bytes",
            "WAL bytes received but not yet acknowledged.",
            "gauge",
            received.saturating_sub(acked),
        );
        gauge(
            "walhouse_capture_in_flight_events",
            "Events handed to the destination, not yet durable.",
            "gauge",
            self.in_flight.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_sent_bytes_total",
            "Bytes of encoded values sent.",
            "counter",
            self.bytes_sent.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_transactions_total",
            "Committed transactions captured.",
            "counter",
            self.transactions.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_registry_calls_total",
            "Schema Registry requests made.",
            "counter",
            self.registry_calls.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_reconnects_total",
            "Reconnects to the source.",
            "counter",
            self.reconnects.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_snapshot_chunks",
            "Snapshot chunks planned (initial and incremental).",
            "gauge",
            self.snapshot_chunks_total.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_snapshot_chunks_done",
            "Snapshot chunks durable in the destination.",
            "gauge",
            self.snapshot_chunks_done.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_snapshot_rows_per_second",
            "Snapshot rows sent per second (recent).",
            "gauge",
            self.snapshot_rows_per_s.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_snapshot_seconds_left",
            "Estimated seconds until the snapshot is done (by pages left).",
            "gauge",
            self.snapshot_eta_s.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_streamed_transactions_in_progress",
            "Transactions Postgres is streaming that have not committed or rolled back yet.",
            "gauge",
            self.streamed_in_progress.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_spool_bytes",
            "Bytes in --spool-dir held by streamed transactions in progress.",
            "gauge",
            self.spool_bytes.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_streamed_transactions_total",
            "Streamed transactions committed and replayed from the spool.",
            "counter",
            self.streamed_transactions.load(Ordering::Relaxed),
        );
        gauge(
            "walhouse_capture_source_standby_waits",
            "Times the source said, on the current replication connection, that it holds back the slot's changes for a standby in synchronized_standby_slots.",
            "gauge",
            self.standby_waits.load(Ordering::Relaxed),
        );
        let slot_stats = *self.source_slot_stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = slot_stats {
            for (name, help, v) in [
                (
                    "spill_transactions",
                    "Transactions the source spilled to its own disk for the slot",
                    st.spill_txns,
                ),
                (
                    "spill_bytes",
                    "Bytes the source spilled to its own disk for the slot",
                    st.spill_bytes,
                ),
                (
                    "stream_transactions",
                    "Transactions the source streamed to the slot before their commit",
                    st.stream_txns,
                ),
                (
                    "stream_bytes",
                    "Bytes the source streamed to the slot before their commit",
                    st.stream_bytes,
                ),
            ] {
                gauge(
                    &format!("walhouse_capture_source_slot_{name}_total"),
                    &format!("{help} (pg_stat_replication_slots)."),
                    "counter",
                    v,
                );
            }
        }
        out.push_str("# HELP walhouse_capture_events_total Row changes captured, by table and operation.\n");
        out.push_str("# TYPE walhouse_capture_events_total counter\n");
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for (table, counts) in events.iter() {
            let label = label_value(table);
            for (op, n) in OPS.iter().zip(counts).filter(|(_, n)| **n > 0) {
                out.push_str(&format!(
                    "walhouse_capture_events_total{{table=\"{label}\",op=\"{op}\"}} {n}\n"
                ));
            }
        }
        drop(events);
        out.push_str(
            "# HELP walhouse_capture_replaced_values_total Values the Debezium format wrote as null, the default \
             or a fallback (as Debezium does), by table and column.\n\
             # TYPE walhouse_capture_replaced_values_total counter\n",
        );
        for ((table, column), n) in replacements().counts() {
            out.push_str(&format!(
                "walhouse_capture_replaced_values_total{{table=\"{}\",column=\"{}\"}} {n}\n",
                label_value(&table),
                label_value(&column)
            ));
        }
        out
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Exposition for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn health(&self) -> (bool, &'static str) {
        let phase = self.phase.load(Ordering::Relaxed);
        (phase == Phase::Streaming as u8, Phase::name(phase))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.set_phase(Phase::Streaming);
        m.count_event("public.t", "insert");
        m.count_event("public.t", "insert");
        m.count_event("odd\"name", "delete");
        m.set_positions(1000, 400);
        let text = m.render();
        assert!(
            text.contains("walhouse_capture_events_total{table=\"public.t\",op=\"insert\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("table=\"odd\\\"name\""), "{text}");
        assert!(text.contains("walhouse_capture_replication_lag_bytes 600\n"), "{text}");
        assert!(text.contains("walhouse_capture_up 1\n"), "{text}");
    }
}
