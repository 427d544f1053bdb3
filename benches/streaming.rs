//! Large transactions, streamed against spilled, in one run on one
//! Postgres (production default `logical_decoding_work_mem`, 64MB) and one
//! Apache Kafka:
//!
//! 1. one transaction of 1M and of 10M rows (`WALHOUSE_BENCH_TXN_ROWS`,
//!    comma-separated), written while capture runs, once with pgoutput
//!    protocol 1 (the server spills it to `pg_replslot/` and decodes it at
//!    commit) and once with `--stream-transactions` (protocol 2, spooled by
//!    capture): time from the source's COMMIT to the last record
//!    acknowledged by Kafka, the slot's spill and stream bytes
//!    (`pg_stat_replication_slots`), the peak RSS of this process (capture
//!    runs in it) and the spool's peak size;
//! 2. the catch-up of `WALHOUSE_BENCH_ROWS` rows (default 1M) in 10k-row
//!    transactions, each below the work memory, with protocol 1 and with
//!    streaming, rounds interleaved (`WALHOUSE_BENCH_ROUNDS`, default 3),
//!    medians: streaming must not slow the common case;
//! 3. pgoutput's `binary 'true'` against text, server side only:
//!    `pg_recvlogical` over the same catch-up WAL with each.
//!
//! Run: `cargo bench --bench streaming`. Prints tables; never asserts on time.

use walhouse_test_support as support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::command::CaptureCommand;
use support::postgres::{PgOptions, PgServer};
use tokio::sync::watch;
use walhouse::capture;
use walhouse::capture::change::ChangeEvent;
use walhouse::capture::destination::kafka::producer::KafkaDestination;
use walhouse::capture::destination::{Destination, DestinationStats, EncodedRows, OutputError, RowEncoder};
use walhouse::postgres::catalog::RelationCache;
use walhouse::postgres::pgoutput::Relation;
use walhouse::postgres::publication::TableName;
use walhouse::postgres::Lsn;

const TXN_ROWS: u64 = 10_000;

/// Wraps Kafka: counts events, and once `target` of them are durable
/// notes when and stops capture.
struct Probe {
    inner: KafkaDestination,
    target: u64,
    events: u64,
    stop_at: Option<Lsn>,
    done: Arc<Mutex<Option<Instant>>>,
    stop: watch::Sender<bool>,
}

impl Destination for Probe {
    fn system_id(&mut self, system_id: &str) {
        self.inner.system_id(system_id)
    }
    async fn prepare(&mut self, tables: &[TableName]) -> Result<(), OutputError> {
        self.inner.prepare(tables).await
    }
    async fn relation(&mut self, r: &Arc<Relation>, c: &RelationCache) -> Result<(), OutputError> {
        self.inner.relation(r, c).await
    }
    fn row_encoder(&self, r: &Relation) -> Option<Arc<dyn RowEncoder>> {
        self.inner.row_encoder(r)
    }
    async fn send_encoded(&mut self, rows: &EncodedRows) -> Result<(), OutputError> {
        self.events += rows.len() as u64;
        self.inner.send_encoded(rows).await
    }
    async fn send(&mut self, e: &ChangeEvent<'_>) -> Result<(), OutputError> {
        self.events += 1;
        self.inner.send(e).await
    }
    async fn end_transaction(&mut self, ack: Lsn) -> Result<(), OutputError> {
        self.inner.end_transaction(ack).await?;
        if self.events >= self.target && self.stop_at.is_none() {
            self.stop_at = Some(ack);
        }
        Ok(())
    }
    fn abandon_transaction(&mut self) {
        self.inner.abandon_transaction()
    }
    fn durable(&self) -> Result<Lsn, OutputError> {
        let d = self.inner.durable()?;
        if self.stop_at.is_some_and(|s| d >= s) {
            let mut done = self.done.lock().expect("lock");
            if done.is_none() {
                *done = Some(Instant::now());
            }
            let _ = self.stop.send(true);
        }
        Ok(d)
    }
    fn is_full(&self) -> bool {
        self.inner.is_full()
    }
    async fn progressed(&self) {
        self.inner.progressed().await
    }
    fn stats(&self) -> DestinationStats {
        self.inner.stats()
    }
    async fn flush(&mut self) -> Result<(), OutputError> {
        self.inner.flush().await
    }
}

struct Bench {
    pg: PgServer,
    broker: support::kafka::Broker,
    registry: support::registry::TestRegistry,
}

/// Capture running in this process until its probe saw `target` events durable.
struct Running {
    task: tokio::task::JoinHandle<()>,
    done: Arc<Mutex<Option<Instant>>>,
}

impl Bench {
    fn start(&self, slot: &str, table: &str, streaming: bool, spool: &Path, target: u64) -> Running {
        let url = format!("postgres://postgres@127.0.0.1:{}/bench?sslmode=disable", self.pg.port);
        let prefix = format!("wh_{slot}");
        let config = CaptureCommand::from(&url)
            .with("--slot", slot)
            .with("--publication", "bench_pub")
            .with("--tables", table)
            .with("--output", "kafka")
            .with("--brokers", self.broker.bootstrap())
            .with("--schema-registry-url", &self.registry.url)
            .with("--topic-prefix", &prefix)
            .with("--stream-transactions", if streaming { "true" } else { "false" })
            .with("--spool-dir", spool.to_str().expect("utf-8 path"))
            .config();
        let inner = capture::kafka_destination(&config).expect("producer");
        let (stop, rx) = watch::channel(false);
        let done = Arc::new(Mutex::new(None));
        let mut probe = Probe {
            inner,
            target,
            events: 0,
            stop_at: None,
            done: done.clone(),
            stop,
        };
        let task = tokio::spawn(async move {
            capture::run(&config, &mut probe, rx).await.expect("capture");
        });
        Running { task, done }
    }

    async fn slot_stats(&self, slot: &str) -> SlotStats {
        let sql = self.pg.client("bench").await;
        let row = sql
            .query_one(
                "SELECT spill_txns, spill_bytes, stream_txns, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slot stats");
        SlotStats {
            spill_txns: row.get(0),
            spill_bytes: row.get(1),
            stream_txns: row.get(2),
            stream_bytes: row.get(3),
        }
    }
}

struct SlotStats {
    spill_txns: i64,
    spill_bytes: i64,
    stream_txns: i64,
    stream_bytes: i64,
}

/// One large transaction through capture in one mode.
struct LargeRun {
    rows: u64,
    streaming: bool,
    write: Duration,
    commit_to_ack: Duration,
    stats: SlotStats,
    peak_rss_mib: f64,
    peak_spool_bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn large_transaction(bench: &Bench, rows: u64, streaming: bool) -> LargeRun {
    let sql = bench.pg.client("bench").await;
    let slot = format!("{}{rows}", if streaming { "streamed" } else { "spilled" });
    sql.batch_execute("TRUNCATE huge").await.expect("truncate");
    sql.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))
    .await
    .expect("slot");
    let spool = tempfile::tempdir().expect("spool dir");
    let running = bench.start(&slot, "huge", streaming, spool.path(), rows);
    assert!(
        bench
            .pg
            .wait_for_slot("bench", &slot, true, Duration::from_secs(60))
            .await,
        "capture did not start"
    );
    // The spool's size, sampled while the transaction streams.
    let (sampling, mut sampled) = watch::channel(false);
    let spool_path = spool.path().to_owned();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while !*sampled.borrow_and_update() {
            peak = peak.max(dir_bytes(&spool_path));
            let _ = tokio::time::timeout(Duration::from_millis(20), sampled.changed()).await;
        }
        peak
    });
    support::reset_peak_rss();
    let started = Instant::now();
    sql.batch_execute(&format!(
        "INSERT INTO huge SELECT g, g, g * 2, 'x' FROM generate_series(1, {rows}) g"
    ))
    .await
    .expect("large transaction");
    let committed = Instant::now();
    tokio::time::timeout(Duration::from_secs(1800), running.task)
        .await
        .expect("capture ends within 30 min")
        .expect("capture task");
    let acked = running.done.lock().expect("lock").expect("the probe saw the last ack");
    let _ = sampling.send(true);
    let peak_spool_bytes = sampler.await.expect("sampler");
    let peak_rss_mib = support::peak_rss_mib();
    let stats = bench.slot_stats(&slot).await;
    sql.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await
        .expect("drop slot");
    LargeRun {
        rows,
        streaming,
        write: committed - started,
        commit_to_ack: acked.saturating_duration_since(committed),
        stats,
        peak_rss_mib,
        peak_spool_bytes,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() {
    if let Ok(filter) = std::env::var("WALHOUSE_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rows: u64 = std::env::var("WALHOUSE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let txn_rows: Vec<u64> = std::env::var("WALHOUSE_BENCH_TXN_ROWS")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("WALHOUSE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "starting Postgres {}, Apache Kafka {} and the dev registry …",
        support::postgres::test_major(),
        support::kafka::kafka_version()
    );
    let bench = Bench {
        pg: PgServer::start_with(PgOptions {
            extra_conf: vec![
                "max_wal_size = '8GB'".into(),
                "checkpoint_timeout = '30min'".into(),
                "synchronous_commit = on".into(),
            ],
            ..Default::default()
        }),
        broker: support::kafka::Broker::start(),
        registry: support::registry::TestRegistry::start().await,
    };
    bench.pg.create_db("bench");
    let sql = bench.pg.client("bench").await;
    sql.batch_execute(
        "CREATE TABLE small (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE TABLE huge (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE PUBLICATION bench_pub FOR TABLE small, huge;",
    )
    .await
    .expect("schema");
    let work_mem: String = sql
        .query_one("SHOW logical_decoding_work_mem", &[])
        .await
        .expect("work mem")
        .get(0);

    // 1. Large transactions, each size with protocol 1 then streamed.
    let mut large = Vec::new();
    for &n in &txn_rows {
        for streaming in [false, true] {
            let run = large_transaction(&bench, n, streaming).await;
            println!(
                "{n} rows, {}: written in {:.1} s, COMMIT to last ack {:.2} s",
                if streaming { "streamed" } else { "protocol 1" },
                run.write.as_secs_f64(),
                run.commit_to_ack.as_secs_f64()
            );
            large.push(run);
        }
    }

    // 2. and 3. The catch-up of small transactions: every path on its own
    // slot, all made before the rows, rounds interleaved.
    for round in 0..rounds {
        for path in ["p1_", "st_", "rlt", "rlb"] {
            sql.batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{path}{round}', 'pgoutput')"
            ))
            .await
            .expect("slot");
        }
    }
    println!("writing {rows} rows in {TXN_ROWS}-row transactions …");
    support::postgres::insert_small_rows(&sql, "small", rows, TXN_ROWS).await;
    let end: String = sql
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let end: Lsn = end.parse().expect("lsn");
    let (mut protocol1, mut streamed, mut text, mut binary) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for (path, streaming, into) in [("p1_", false, &mut protocol1), ("st_", true, &mut streamed)] {
            let spool = tempfile::tempdir().expect("spool dir");
            let started = Instant::now();
            let running = bench.start(&format!("{path}{round}"), "small", streaming, spool.path(), rows);
            running.task.await.expect("capture task");
            let done = running.done.lock().expect("lock").expect("the probe saw the last ack");
            into.push(done - started);
        }
        text.push(bench.pg.recvlogical("bench", "bench_pub", &format!("rlt{round}"), end));
        binary.push(bench.pg.recvlogical_with(
            "bench",
            "bench_pub",
            &format!("rlb{round}"),
            end,
            &["proto_version=1", "binary=true"],
        ));
        println!(
            "catch-up round {round}: protocol 1 {:.2} s, streaming {:.2} s; pg_recvlogical text {:.2} s, binary {:.2} s",
            protocol1[round].as_secs_f64(),
            streamed[round].as_secs_f64(),
            text[round].as_secs_f64(),
            binary[round].as_secs_f64()
        );
    }

    println!();
    println!(
        "one large transaction, Postgres {}, logical_decoding_work_mem {work_mem}; capture runs in this process (peak RSS) while the rows are written",
        support::postgres::test_major()
    );
    println!("| rows       | mode       | write s | COMMIT→last ack s | spilled txns / MiB | streamed txns / MiB | peak RSS MiB | peak spool MiB |");
    println!("|------------|------------|---------|-------------------|--------------------|---------------------|--------------|----------------|");
    for r in &large {
        println!(
            "| {:>10} | {:<10} | {:>7.1} | {:>17.2} | {:>6} / {:>9.1} | {:>7} / {:>9.1} | {:>12.1} | {:>14.1} |",
            r.rows,
            if r.streaming { "streamed" } else { "protocol 1" },
            r.write.as_secs_f64(),
            r.commit_to_ack.as_secs_f64(),
            r.stats.spill_txns,
            mib(r.stats.spill_bytes as f64),
            r.stats.stream_txns,
            mib(r.stats.stream_bytes as f64),
            r.peak_rss_mib,
            mib(r.peak_spool_bytes as f64)
        );
    }
    println!();
    let (p1, st, t, b) = (median(protocol1), median(streamed), median(text), median(binary));
    println!("catch-up of {rows} rows in {TXN_ROWS}-row transactions into Kafka (acked), medians of {rounds} rounds");
    println!("| path                                  | seconds | rows/s  | ratio          |");
    println!("|---------------------------------------|---------|---------|----------------|");
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    for (name, d, ratio) in [
        ("walhouse, protocol 1", p1, "1.00".to_string()),
        (
            "walhouse, --stream-transactions",
            st,
            format!("{:.2} of protocol 1", p1.as_secs_f64() / st.as_secs_f64()),
        ),
        ("pg_recvlogical, text values", t, "1.00".to_string()),
        (
            "pg_recvlogical, binary 'true'",
            b,
            format!("{:.2} of text", t.as_secs_f64() / b.as_secs_f64()),
        ),
    ] {
        println!(
            "| {name:<37} | {:>7.2} | {:>7.0} | {ratio:<14} |",
            d.as_secs_f64(),
            rate(d)
        );
    }
}
