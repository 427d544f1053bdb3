//! The sink's Prometheus metrics (served by [`crate::metrics::serve`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::warehouse::iceberg::CommitCounts;

#[derive(Default)]
pub struct SinkMetrics {
    up: AtomicBool,
    rows: AtomicU64,
    dead_letters: AtomicU64,
    batches: AtomicU64,
    skipped: AtomicU64,
    stopped_topics: AtomicU64,
    waiting_partitions: AtomicU64,
    fenced: AtomicU64,
    /// Per topic and partition: a skipped change is looked for where it
    /// was skipped.
    duplicates: Mutex<BTreeMap<(String, i32), u64>>,
    last_batch_ms: AtomicU64,
    /// Nanoseconds spent per [`Stage`].
    stages: [AtomicU64; Stage::ALL.len()],
    /// The Iceberg target's commits, when it is the target.
    iceberg: std::sync::OnceLock<std::sync::Arc<CommitCounts>>,
}

/// Where the sink's time goes, for `walhouse_sink_stage_seconds_total`:
/// the consume loop is in exactly one of the first three at a time; the
/// writer's task writes meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for Kafka to deliver records.
    Receive,
    /// Decoding records into rows encoded for the target, and batching them.
    Decode,
    /// Waiting for the writer to finish the batch before.
    WaitWriter,
    /// Writing a batch into the warehouse (its own task).
    Write,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Receive, Stage::Decode, Stage::WaitWriter, Stage::Write];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Decode => "decode",
            Stage::WaitWriter => "wait_writer",
            Stage::Write => "write",
        }
    }
}

impl SinkMetrics {
    /// Exposes the Iceberg target's commit counts.
    pub fn watch_iceberg(&self, counts: std::sync::Arc<CommitCounts>) {
        let _ = self.iceberg.set(counts);
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn count_batch(&self, rows: u64, dead_letters: u64, millis: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.dead_letters.fetch_add(dead_letters, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_batch_ms.store(millis, Ordering::Relaxed);
    }

    pub fn add_stage(&self, stage: Stage, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.stages[stage as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Seconds spent in `stage` so far.
    pub fn stage_seconds(&self, stage: Stage) -> f64 {
        self.stages[stage as usize].load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn count_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A change stored already (sent again after a capture restart): also
    /// a skipped record.
    pub fn count_duplicate(&self, topic: &str, partition: i32) {
        let mut by_partition = self.duplicates.lock().unwrap_or_else(|p| p.into_inner());
        match by_partition.get_mut(&(topic.to_owned(), partition)) {
            Some(n) => *n += 1,
            None => {
                by_partition.insert((topic.to_owned(), partition), 1);
            }
        }
        drop(by_partition);
        self.count_skipped();
    }

    /// Changes skipped as stored already, over every partition.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }

    pub fn count_fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_waiting_partitions(&self, n: u64) {
        self.waiting_partitions.store(n, Ordering::Relaxed);
    }

    pub fn set_stopped_topics(&self, n: u64) {
        self.stopped_topics.store(n, Ordering::Relaxed);
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Whether the sink is consuming (started, not stopped).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn stopped_topics(&self) -> u64 {
        self.stopped_topics.load(Ordering::Relaxed)
    }
}

impl crate::metrics::Exposition for SinkMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        line(
            "walhouse_sink_up",
            "1 while the sink is consuming.",
            "gauge",
            u64::from(self.up.load(Ordering::Relaxed)),
        );
        line(
            "walhouse_sink_rows_total",
            "Rows written to warehouse tables.",
            "counter",
            get(&self.rows),
        );
        line(
            "walhouse_sink_dead_letters_total",
            "Records written to walhouse.dead_letters.",
            "counter",
            get(&self.dead_letters),
        );
        line(
            "walhouse_sink_batches_total",
            "Warehouse transactions committed.",
            "counter",
            get(&self.batches),
        );
        line(
            "walhouse_sink_skipped_total",
            "Records consumed but not stored by design (tombstones, transaction metadata, changes stored already).",
            "counter",
            get(&self.skipped),
        );
        line(
            "walhouse_sink_stopped_topics",
            "Topics stopped by an incompatible schema change.",
            "gauge",
            get(&self.stopped_topics),
        );
        line(
            "walhouse_sink_waiting_partitions",
            "Assigned partitions not yet positioned at the warehouse's offsets (their records wait).",
            "gauge",
            get(&self.waiting_partitions),
        );
        line(
            "walhouse_sink_fenced_total",
            "Batches rolled back because another instance moved the stored offset.",
            "counter",
            get(&self.fenced),
        );
        line(
            "walhouse_sink_last_batch_milliseconds",
            "Time the last warehouse transaction took.",
            "gauge",
            get(&self.last_batch_ms),
        );
        if let Some(counts) = self.iceberg.get() {
            line(
                "walhouse_sink_iceberg_commits_total",
                "Iceberg commits that added data files (one per table per batch).",
                "counter",
                get(&counts.commits),
            );
            line(
                "walhouse_sink_iceberg_data_files_total",
                "Parquet data files those commits added (divided by the commits: files per commit).",
                "counter",
                get(&counts.data_files),
            );
            line(
                "walhouse_sink_iceberg_last_commit_data_files",
                "Data files the last Iceberg commit added.",
                "gauge",
                get(&counts.last_data_files),
            );
        }
        out.push_str(
            "# HELP walhouse_sink_stage_seconds_total Time spent per stage: receiving from Kafka, decoding and \
             batching, waiting for the writer (the consume loop is in one at a time), writing (the writer's task).\n\
             # TYPE walhouse_sink_stage_seconds_total counter\n",
        );
        for stage in Stage::ALL {
            out.push_str(&format!(
                "walhouse_sink_stage_seconds_total{{stage=\"{}\"}} {:.6}\n",
                stage.name(),
                self.stage_seconds(stage)
            ));
        }
        out.push_str(
            "# HELP walhouse_sink_duplicates_total Changes not stored again: their source position was stored \
             already (capture sent them again), per topic and partition.\n\
             # TYPE walhouse_sink_duplicates_total counter\n",
        );
        for ((topic, partition), n) in self.duplicates.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // Kafka topic names hold only [a-zA-Z0-9._-]: nothing to escape.
            out.push_str(&format!(
                "walhouse_sink_duplicates_total{{topic=\"{topic}\",partition=\"{partition}\"}} {n}\n"
            ));
        }
        out
    }

    fn health(&self) -> (bool, &'static str) {
        if self.up.load(Ordering::Relaxed) {
            (true, "consuming")
        } else {
            (false, "starting")
        }
    }
}
