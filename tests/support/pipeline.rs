//! The whole pipeline in one process, for the tests and the demo: capture
//! (Postgres → Kafka) and sink (Kafka → warehouse) run as tasks with the
//! same code as the binaries, and the seed's questions are asked of the
//! source and of a warehouse.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::watch;
use walhouse::capture::config::{CaptureArgs, CaptureConfig};
use walhouse::capture::{self, CaptureError, CaptureSummary};
use walhouse::sink::config::{SinkArgs, SinkConfig};
use walhouse::sink::metrics::SinkMetrics;
use walhouse::sink::{self, SinkError};
use walhouse::warehouse::Warehouse;

use crate::kafka::Broker;

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

/// walhouse-capture's flags into Kafka under `prefix` (status every
/// 200 ms), then `extra`.
pub fn capture_flags(
    source_url: &str,
    broker: &Broker,
    registry_url: &str,
    prefix: &str,
    extra: &[&str],
) -> Vec<String> {
    [
        "--source-url",
        source_url,
        "--output",
        "kafka",
        "--brokers",
        &broker.bootstrap(),
        "--schema-registry-url",
        registry_url,
        "--topic-prefix",
        prefix,
        "--status-interval-ms",
        "200",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// walhouse-sink's flags for consumer group `group` over every topic under
/// `prefix` (batches of 100 ms), then `extra`.
pub fn sink_flags(
    warehouse: &str,
    broker: &Broker,
    registry_url: &str,
    prefix: &str,
    group: &str,
    extra: &[&str],
) -> Vec<String> {
    let pattern = format!("^{}\\..*", prefix.replace('.', "\\."));
    [
        "--warehouse",
        warehouse,
        "--brokers",
        &broker.bootstrap(),
        "--schema-registry-url",
        registry_url,
        "--topic-pattern",
        &pattern,
        "--group-id",
        group,
        "--batch-ms",
        "100",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// A capture configuration from walhouse-capture's flags (without the
/// program name), resolved as the binary resolves it: every test, bench
/// and the demo build theirs here.
pub fn capture_config<S: AsRef<str>>(args: &[S]) -> CaptureConfig {
    let argv = std::iter::once("walhouse-capture").chain(args.iter().map(AsRef::as_ref));
    CaptureConfig::resolve(CaptureArgs::try_parse_from(argv).expect("capture flags")).expect("capture config")
}

/// Starts capture into Kafka (`args` are walhouse-capture's flags).
pub fn start_capture(args: &[&str]) -> RunningCapture {
    let config = capture_config(args);
    let mut dest = capture::kafka_destination(&config).expect("producer");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let summary = capture::run(&config, &mut dest, rx).await?;
        Ok((summary, dest.produced()))
    });
    RunningCapture { stop, task }
}

pub struct RunningSink {
    pub metrics: Arc<SinkMetrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SinkError>>,
}

impl RunningSink {
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

/// Starts the sink (`args` are walhouse-sink's flags).
pub async fn start_sink(args: &[&str]) -> RunningSink {
    let mut argv = vec!["walhouse-sink"];
    argv.extend_from_slice(args);
    let config = SinkConfig::resolve(SinkArgs::try_parse_from(argv).expect("sink args")).expect("config");
    let metrics = Arc::new(SinkMetrics::default());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(sink::start(config, metrics.clone(), rx));
    RunningSink { metrics, stop, task }
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
        };
        let rows = w
            .query_text(text)
            .await
            .unwrap_or_else(|e| panic!("question {name} on {}: {e}", w.describe()));
        out.push(normalise(rows));
    }
    out
}
