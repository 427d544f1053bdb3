//! The whole pipeline in one process, for the tests and the demo: capture
//! (Postgres → Kafka) and sink (Kafka → warehouse) run as tasks with the
//! same code as the binaries, and the seed's questions are asked of the
//! source and of a warehouse.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use walhouse::capture::config::CaptureConfig;
use walhouse::capture::{self, CaptureError, CaptureSummary};
use walhouse::sink::config::SinkConfig;
use walhouse::sink::metrics::SinkMetrics;
use walhouse::sink::{self, SinkError};
use walhouse::warehouse::Warehouse;

pub const BACKEND_SCHEMA: &str = include_str!("../../sql/source/backend_schema.sql");
pub const GENERATE: &str = include_str!("../../sql/source/generate.sql");

/// The seed backend's tables (each gets a raw table and a latest-state view).
pub const SEED_TABLES: [&str; 6] = [
    "organizations",
    "bank_accounts",
    "beneficiaries",
    "transfers",
    "transaction",
    "card_transactions",
];

/// The seed's three questions: (file name, Postgres text, DuckDB text).
pub const QUESTIONS: [(&str, &str, &str); 3] = [
    (
        "1_transactions_status_1",
        include_str!("../../sql/questions/postgres/1_transactions_status_1.sql"),
        include_str!("../../sql/questions/duckdb/1_transactions_status_1.sql"),
    ),
    (
        "2_transfers_4f",
        include_str!("../../sql/questions/postgres/2_transfers_4f.sql"),
        include_str!("../../sql/questions/duckdb/2_transfers_4f.sql"),
    ),
    (
        "3_avg_card_transactions",
        include_str!("../../sql/questions/postgres/3_avg_card_transactions.sql"),
        include_str!("../../sql/questions/duckdb/3_avg_card_transactions.sql"),
    ),
];

pub struct RunningCapture {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(CaptureSummary, u64), CaptureError>>,
}

impl RunningCapture {
    /// Starts capture into Kafka as a task (see
    /// [`crate::command::CaptureCommand::start`]).
    pub fn start(config: CaptureConfig) -> Self {
        let mut dest = capture::kafka_destination(&config).expect("producer");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let summary = capture::run(&config, &mut dest, rx).await?;
            Ok((summary, dest.produced()))
        });
        RunningCapture { stop, task }
    }

    /// Waits for a capture that ends by itself (`--snapshot-mode initial_only`).
    pub async fn finish(self, limit: Duration) -> (CaptureSummary, u64) {
        tokio::time::timeout(limit, self.task)
            .await
            .expect("capture ends")
            .expect("task")
            .expect("clean end")
    }

    /// Stops capture; returns its summary and the records it produced.
    pub async fn stop(self) -> (CaptureSummary, u64) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("capture stops")
            .expect("task")
            .expect("clean stop")
    }
}

pub struct RunningSink {
    pub metrics: Arc<SinkMetrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SinkError>>,
}

impl RunningSink {
    /// Starts the sink as a task (see
    /// [`crate::command::SinkCommand::start`]).
    pub fn start(config: SinkConfig) -> Self {
        let metrics = Arc::new(SinkMetrics::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sink::start(config, metrics.clone(), rx));
        RunningSink { metrics, stop, task }
    }

    /// Waits (bounded) until the sink has accounted for `records` Kafka
    /// records (rows, dead letters and skipped ones).
    pub async fn wait_for(&mut self, records: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let m = &self.metrics;
            if m.rows() + m.dead_letters() + m.skipped() >= records {
                return true;
            }
            if self.task.is_finished() {
                match (&mut self.task).await {
                    Ok(Err(e)) => panic!("the sink stopped: {e}"),
                    other => panic!("the sink stopped: {other:?}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Ends the sink abruptly, as a crash would: no pending batch is
    /// written, no offset is committed (a batch already handed to the
    /// writer may still commit, as one committed just before a kill).
    pub fn abort(self) {
        self.task.abort();
    }

    /// Whether the sink task has ended (by error, or by a stop).
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    pub fn accounted(&self) -> (u64, u64, u64) {
        (self.metrics.rows(), self.metrics.dead_letters(), self.metrics.skipped())
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("sink stops")
            .expect("task")
            .expect("clean stop");
    }
}

/// The rows of a question, normalised for comparison across engines:
/// numbers to 9 decimals (AVG is numeric in Postgres, double in DuckDB).
pub fn normalise(rows: Vec<Vec<Option<String>>>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| match v {
                    None => "NULL".into(),
                    Some(s) => match s.parse::<f64>() {
                        Ok(f) if s.contains('.') || s.contains('e') => format!("{f:.9}"),
                        _ => s,
                    },
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}

/// Asks a warehouse the three questions.
pub async fn ask<W: Warehouse>(w: &mut W) -> Vec<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for (name, pg, duck) in QUESTIONS {
        let text = match w.dialect() {
            walhouse::warehouse::Dialect::Postgres => pg,
            walhouse::warehouse::Dialect::DuckDb => duck,
            walhouse::warehouse::Dialect::Iceberg => {
                panic!("Iceberg tables are asked through DuckDB's iceberg extension")
            }
        };
        let rows = w
            .query_text(text)
            .await
            .unwrap_or_else(|e| panic!("question {name} on {}: {e}", w.describe()));
        out.push(normalise(rows));
    }
    out
}
