//! Kafka → warehouse: rows/s of walhouse-sink into DuckDB and into a
//! Postgres warehouse for the same CDC topic, next to a plain rdkafka
//! consumer reading the same messages from the same broker in the same run.
//!
//! The topic is filled by walhouse-capture's initial snapshot of a table of
//! `WALHOUSE_BENCH_ROWS` rows (default 1M): real Avro change envelopes.
//! The sink's time is given two ways: from start (group join included,
//! which takes seconds) and from its first committed batch
//! (steady state), the fair comparison with the consumer's assign-and-read.
//!
//! Run: `cargo bench --bench sink`

use walhouse_test_support as support;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use support::pipeline::{start_capture, start_sink};

fn plain_consumer(bootstrap: &str, topic: &str, n: u64) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-plain")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = meta.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let (mut seen, mut bytes) = (0u64, 0usize);
    while seen < n {
        assert!(Instant::now() < deadline, "plain consumer read {seen} of {n}");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, <[u8]>::len);
            seen += 1;
        }
    }
    assert!(bytes > 0);
    started.elapsed()
}

/// (time from start, time from the first committed batch, rows then).
async fn sink(args: &[&str], n: u64) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let (cpu0, m0) = (cpu_seconds(), machine_cpu_seconds());
    let mut sink = start_sink(args).await;
    let deadline = started + Duration::from_secs(600);
    while sink.metrics.rows() == 0 {
        assert!(Instant::now() < deadline, "the sink wrote nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = (Instant::now(), sink.metrics.rows());
    assert!(
        sink.wait_for(n, Duration::from_secs(600)).await,
        "sink accounted {:?}",
        sink.accounted()
    );
    let end = Instant::now();
    let stages: Vec<String> = walhouse::sink::metrics::Stage::ALL
        .iter()
        .map(|s| format!("{} {:.2}s", s.name(), sink.metrics.stage_seconds(*s)))
        .collect();
    println!("stages: {}; cpu {:.2}s, machine {:.2}s", stages.join(", "), cpu_seconds() - cpu0, machine_cpu_seconds() - m0);
    sink.stop().await;
    (end - started, end - first.0, first.1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let n: u64 = std::env::var("WALHOUSE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "starting Postgres {}, Apache Kafka {} and the dev registry …",
        support::postgres::test_major(),
        support::kafka::kafka_version()
    );
    let pg = support::postgres::PgServer::start();
    pg.create_db("bench");
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = support::kafka::Broker::start();
    let registry = support::registry::TestRegistry::start().await;
    let sql = pg.client("bench").await;
    sql.batch_execute(&format!(
        "CREATE TABLE events (id bigint PRIMARY KEY, account int, status int, amount numeric(19,4), \
         label text, at timestamptz); \
         INSERT INTO events SELECT g, g % 1000, g % 5, g / 100.0, 'label ' || (g % 97), \
         timestamptz '2024-01-01' + g * interval '1 second' FROM generate_series(1, {n}) g;"
    ))
    .await
    .expect("table");
    println!("filling topic bench.public.events with {n} change records (capture's initial snapshot) …");
    let capture = start_capture(&[
        "--source-url",
        &pg.url("walhouse_scram", "bench"),
        "--output",
        "kafka",
        "--brokers",
        &broker.bootstrap(),
        "--schema-registry-url",
        &registry.url,
        "--topic-prefix",
        "bench",
        "--snapshot-mode",
        "initial_only",
    ]);
    let (_, produced) = capture.finish(Duration::from_secs(600)).await;
    assert_eq!(produced, n);

    let plain = plain_consumer(&broker.bootstrap(), "bench.public.events", n);
    let dir = tempfile::tempdir().expect("tempdir");
    let duck = format!("duckdb:{}", dir.path().join("bench.duckdb").display());
    let mut results = Vec::new();
    for (name, warehouse) in [
        ("walhouse-sink → DuckDB", duck.as_str()),
        ("walhouse-sink → Postgres", warehouse_url.as_str()),
    ] {
        let group = format!("bench-{}", results.len());
        let bootstrap = broker.bootstrap();
        let extra = std::env::var("XARGS").unwrap_or_default();
        let mut args: Vec<&str> = extra.split_whitespace().collect();
        args.extend([
                "--warehouse",
                warehouse,
                "--brokers",
                &bootstrap,
                "--schema-registry-url",
                &registry.url,
                "--topic-pattern",
                "^bench\\..*",
                "--companies-topic",
                "",
                "--group-id",
                &group,
                "--batch-rows",
                Box::leak(std::env::var("XROWS").unwrap_or("50000".into()).into_boxed_str()),
                "--batch-ms",
                "1000",
            ]);
        let r = sink(&args, n).await;
        results.push((name, r));
    }
    let rate = |rows: u64, d: Duration| rows as f64 / d.as_secs_f64();
    let plain_rate = rate(n, plain);
    println!();
    println!("{n} CDC records (Avro envelopes, 6 columns) from Apache Kafka on 127.0.0.1, same run");
    println!("| path                                   | seconds | rows/s    | ratio to plain consumer |");
    println!("|----------------------------------------|---------|-----------|-------------------------|");
    println!(
        "| plain rdkafka consumer (assign, read)  | {:>7.2} | {:>9.0} | 1.00                    |",
        plain.as_secs_f64(),
        plain_rate
    );
    for (name, (total, steady, first_rows)) in &results {
        let total_rate = rate(n, *total);
        let steady_rate = rate(n - first_rows, *steady);
        println!(
            "| {:<38} | {:>7.2} | {:>9.0} | {:.2} (from start)        |",
            name,
            total.as_secs_f64(),
            total_rate,
            total_rate / plain_rate
        );
        println!(
            "| {:<38} | {:>7.2} | {:>9.0} | {:.2} (after 1st batch)   |",
            format!("{name}, steady"),
            steady.as_secs_f64(),
            steady_rate,
            steady_rate / plain_rate
        );
    }
}

fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy / 100.0
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, r)| r.split(' ').collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
