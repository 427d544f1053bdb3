//! Capture-into-Kafka benchmark, every rate next to its baseline in the
//! same run:
//!
//! 0. initial snapshot of a 1M-row table (no producer, 1 and 2
//!    connections; into Kafka) next to a plain `COPY … TO STDOUT` and a
//!    plain producer of as many records of the same size, interleaved over
//!    `WALHOUSE_BENCH_ROUNDS` rounds (default 3), medians;
//!    `WALHOUSE_BENCH_ONLY=snapshot` stops after it;
//! 1. catch-up of 1M small rows (10k-row transactions), rounds interleaved
//!    like the snapshot's, each path on its own slot: `pg_recvlogical`,
//!    walhouse capture with Avro encoding but no producer, and walhouse
//!    end to end into Kafka (acknowledged by Kafka);
//! 2. a plain reference producer (librdkafka, same settings) sending as
//!    many messages of the same size to the same broker;
//! 3. commit-to-ack latency at a steady 5k rows/s (Postgres commit time to
//!    Kafka acknowledgement);
//! 4. peak RSS while one 1M-row transaction goes into Kafka;
//! 5. the incumbent, in the same run on the same WAL and broker: Debezium
//!    3.6.1's PostgreSQL connector on Kafka Connect standalone (its
//!    defaults, JSON values without schemas, its own slot made before the
//!    rows) catching up on the 1M rows in every round, and on the 1M-row
//!    transaction; `WALHOUSE_BENCH_DEBEZIUM=0` leaves it out.
//!
//! Run: `cargo bench --bench kafka` (env `WALHOUSE_BENCH_ROWS`, default
//! 1000000). Prints tables; never asserts on time.

use walhouse_test_support as support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use support::command::CaptureCommand;
use support::postgres::{PgOptions, PgServer};
use tokio::sync::watch;
use walhouse::capture;
use walhouse::capture::change::ChangeEvent;
use walhouse::capture::config::CaptureConfig;
use walhouse::capture::destination::kafka::encoder::RecordEncoder;
use walhouse::capture::destination::kafka::producer::KafkaDestination;
use walhouse::capture::destination::{Destination, DestinationStats, EncodedRows, OutputError, RowEncoder};
use walhouse::postgres::catalog::RelationCache;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::postgres::pgoutput::PgTimestamp;
use walhouse::postgres::pgoutput::Relation;
use walhouse::postgres::publication::TableName;
use walhouse::postgres::snapshot::{self, CopyRows, CopySession, CopySource, PageRange};
use walhouse::postgres::Lsn;
use walhouse::registry::Registry;

const TXN_ROWS: u64 = 10_000;

/// Wraps a destination: counts events, stops capture once `stop_at` is
/// durable, and records Postgres-commit-to-durable latencies.
struct Probe<D> {
    inner: D,
    target_events: u64,
    events: u64,
    commit_micros: Option<i64>,
    state: Mutex<ProbeState>,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct ProbeState {
    stop_at: Option<Lsn>,
    pending: VecDeque<(Lsn, i64)>,
    latencies_us: Vec<i64>,
}

impl<D: Destination> Destination for Probe<D> {
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
        self.commit_micros = e.tx.map(|t| t.commit_time.unix_micros());
        self.inner.send(e).await
    }
    async fn end_transaction(&mut self, ack: Lsn) -> Result<(), OutputError> {
        self.inner.end_transaction(ack).await?;
        let mut st = self.state.lock().expect("lock");
        if let Some(c) = self.commit_micros.take() {
            st.pending.push_back((ack, c));
        }
        if self.events >= self.target_events && st.stop_at.is_none() {
            st.stop_at = Some(ack);
        }
        Ok(())
    }
    fn durable(&self) -> Result<Lsn, OutputError> {
        let d = self.inner.durable()?;
        let mut st = self.state.lock().expect("lock");
        let now = PgTimestamp::now().unix_micros();
        while st.pending.front().is_some_and(|(ack, _)| *ack <= d) {
            if let Some((_, c)) = st.pending.pop_front() {
                st.latencies_us.push(now - c);
            }
        }
        if st.stop_at.is_some_and(|s| d >= s) {
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

/// Avro encoding with registered schemas, no producer: durable at once.
struct EncodeOnly {
    encoder: RecordEncoder,
    durable: Lsn,
    bytes: u64,
    /// The first records encoded, for the plain producer to send: the same
    /// bytes compress as walhouse's do.
    sample: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Records kept by [`EncodeOnly`]: far more than a producer batch holds, so
/// cycling through them compresses like the real stream.
const SAMPLE_RECORDS: usize = 100_000;

impl Destination for EncodeOnly {
    async fn relation(&mut self, r: &Arc<Relation>, c: &RelationCache) -> Result<(), OutputError> {
        self.encoder.relation(r, c).await.map(|_| ())
    }
    fn row_encoder(&self, r: &Relation) -> Option<Arc<dyn RowEncoder>> {
        self.encoder.row_encoder(r.id)
    }
    async fn send_encoded(&mut self, rows: &EncodedRows) -> Result<(), OutputError> {
        for (key, value) in rows.iter() {
            self.bytes += value.len() as u64 + key.map_or(0, |k| k.len() as u64);
            if self.sample.len() < SAMPLE_RECORDS {
                self.sample.push((key.unwrap_or_default().to_vec(), value.to_vec()));
            }
        }
        Ok(())
    }
    async fn send(&mut self, e: &ChangeEvent<'_>) -> Result<(), OutputError> {
        let now = PgTimestamp::now().unix_millis();
        for (id, op) in self.encoder.ops(e)? {
            let rec = self
                .encoder
                .encode(id, e, op, now, Default::default())
                .map_err(|u| OutputError::Kafka(u.reason))?;
            self.bytes += rec.value.len() as u64 + rec.key.map_or(0, |k| k.len() as u64);
            if self.sample.len() < SAMPLE_RECORDS {
                self.sample
                    .push((rec.key.unwrap_or_default().to_vec(), rec.value.to_vec()));
            }
        }
        Ok(())
    }
    async fn end_transaction(&mut self, ack: Lsn) -> Result<(), OutputError> {
        self.durable = ack;
        Ok(())
    }
    fn durable(&self) -> Result<Lsn, OutputError> {
        Ok(self.durable)
    }
    async fn flush(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

struct Bench {
    pg: PgServer,
    broker: support::kafka::Broker,
    registry: support::registry::TestRegistry,
}

impl Bench {
    fn config(&self, slot: &str, prefix: &str, tables: &str) -> CaptureConfig {
        self.config_with(slot, prefix, tables, &[])
    }

    fn config_with(&self, slot: &str, prefix: &str, tables: &str, extra: &[&str]) -> CaptureConfig {
        let url = format!("postgres://postgres@127.0.0.1:{}/bench?sslmode=disable", self.pg.port);
        CaptureCommand::from(&url)
            .with("--slot", slot)
            .with("--publication", "bench_pub")
            .with("--tables", tables)
            .with("--output", "kafka")
            .with("--brokers", self.broker.bootstrap())
            .with("--schema-registry-url", &self.registry.url)
            .with("--topic-prefix", prefix)
            .args(extra)
            .config()
    }

    /// An initial_only snapshot from a new slot into `dest`: (measures, rows, dest).
    async fn snapshot<D: Destination>(
        &self,
        slot: &str,
        prefix: &str,
        connections: &str,
        mut dest: D,
    ) -> (Measured, u64, D) {
        let config = self.config_with(
            slot,
            prefix,
            "small",
            &["--snapshot-mode", "initial_only", "--snapshot-connections", connections],
        );
        let (_stop, rx) = watch::channel(false);
        let meter = Meter::start();
        let summary = capture::run(&config, &mut dest, rx).await.expect("snapshot");
        (meter.stop(), summary.events, dest)
    }

    /// Runs capture from `slot` with `dest` until `events` changes are durable.
    async fn run<D: Destination + Send + 'static>(
        &self,
        slot: &str,
        prefix: &str,
        tables: &str,
        dest: D,
        events: u64,
    ) -> (Duration, Probe<D>) {
        let config = self.config(slot, prefix, tables);
        let (stop, rx) = watch::channel(false);
        let mut probe = Probe {
            inner: dest,
            target_events: events,
            events: 0,
            commit_micros: None,
            state: Mutex::default(),
            stop,
        };
        let started = Instant::now();
        capture::run(&config, &mut probe, rx).await.expect("capture");
        (started.elapsed(), probe)
    }

    fn kafka(&self, prefix: &str) -> KafkaDestination {
        self.kafka_with(prefix, &[])
    }

    /// A destination with more capture flags (`--format debezium`).
    fn kafka_with(&self, prefix: &str, extra: &[&str]) -> KafkaDestination {
        let options: Vec<String> = extra_kafka_options()
            .into_iter()
            .flat_map(|(k, v)| ["--kafka-option".to_owned(), format!("{k}={v}")])
            .collect();
        let mut flags = extra.to_vec();
        flags.extend(options.iter().map(String::as_str));
        let config = self.config_with("unused", prefix, "small", &flags);
        capture::kafka_destination(&config).expect("producer")
    }
}

/// librdkafka settings for both walhouse and the reference producer, to
/// try others on the same broker: `WALHOUSE_BENCH_KAFKA_OPTIONS="k=v;k=v"`.
fn extra_kafka_options() -> Vec<(String, String)> {
    std::env::var("WALHOUSE_BENCH_KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A plain librdkafka producer, same settings as walhouse's, sending `n`
/// records cycled from `records` (walhouse's own keys and values) to a
/// topic of `partitions` partitions, as walhouse's topics have, measured
/// from the first send to the last acknowledgement.
fn reference_producer(bootstrap: &str, n: u64, records: &[(Vec<u8>, Vec<u8>)], partitions: i32) -> Measured {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "100000");
    for (k, v) in extra_kafka_options() {
        config.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let topic = format!("reference_{partitions}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let created = tokio::runtime::Handle::current().block_on(admin.create_topics(
        [&NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ));
    created.expect("create the reference topic");
    // Connected, metadata fetched and the producer id obtained before the
    // clock starts, as walhouse's producer is when its snapshot begins
    // (this takes ~0.6 s): only the sending is timed.
    producer
        .send(BaseRecord::to(&topic).key(&b"warm-up"[..]).payload(&b"warm-up"[..]))
        .map_err(|(e, _)| e)
        .expect("warm-up");
    producer.flush(Duration::from_secs(30)).expect("warm-up flush");
    let meter = Meter::start();
    for (key, value) in records.iter().cycle().take(n as usize) {
        let mut rec = BaseRecord::to(&topic).key(&key[..]).payload(&value[..]);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    meter.stop()
}

/// Wall time and CPU seconds of one run: this process's own, and the
/// whole machine's (Postgres and the broker included), which tells whether the
/// run was bounded by the cores.
#[derive(Clone, Copy)]
struct Measured {
    wall: Duration,
    own_cpu: f64,
    machine_cpu: f64,
}

impl Measured {
    fn median_of(runs: &[Duration]) -> Duration {
        let mut sorted = runs.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    }

    /// Each quantity's median over the rounds (the machine is shared and noisy).
    fn median(mut runs: Vec<Measured>) -> Measured {
        let mid = runs.len() / 2;
        runs.sort_by_key(|m| m.wall);
        let wall = runs[mid].wall;
        runs.sort_by(|a, b| a.own_cpu.total_cmp(&b.own_cpu));
        let own_cpu = runs[mid].own_cpu;
        runs.sort_by(|a, b| a.machine_cpu.total_cmp(&b.machine_cpu));
        Measured {
            wall,
            own_cpu,
            machine_cpu: runs[mid].machine_cpu,
        }
    }
}

struct Meter {
    started: Instant,
    own: f64,
    machine: f64,
}

impl Meter {
    fn start() -> Meter {
        Meter {
            started: Instant::now(),
            own: support::process_cpu_seconds("self"),
            machine: machine_cpu_seconds(),
        }
    }

    fn stop(self) -> Measured {
        Measured {
            wall: self.started.elapsed(),
            own_cpu: support::process_cpu_seconds("self") - self.own,
            machine_cpu: machine_cpu_seconds() - self.machine,
        }
    }
}

/// Reads a COPY to its end, parsing every row; returns how many.
async fn count_rows<S: CopySource>(mut copy: CopyRows<S>) -> u64 {
    let mut n = 0;
    while copy.next().await.expect("row").is_some() {
        n += 1;
    }
    n
}

/// CPU time the whole machine spent busy so far (every process, every
/// core), from the first line of /proc/stat.
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    // cpu user nice system idle iowait irq softirq steal …: all but idle
    // and iowait are busy; 100 ticks a second.
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy / 100.0
}

/// The median over rounds of `base / path` (each round's own ratio: the
/// machine's speed drifts between rounds, less within one).
fn median_ratio(base: &[Duration], path: &[Duration]) -> f64 {
    let mut r: Vec<f64> = base
        .iter()
        .zip(path)
        .map(|(b, p)| b.as_secs_f64() / p.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn percentile(v: &mut [i64], p: f64) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Capture's own log lines (phases, progress) when asked: WALHOUSE_LOG=info.
    if let Ok(filter) = std::env::var("WALHOUSE_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rows: u64 = std::env::var("WALHOUSE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "starting Postgres {}, Apache Kafka {} and the dev registry …",
        support::postgres::test_major(),
        support::kafka::kafka_version()
    );
    let bench = Bench {
        pg: PgServer::start_with(PgOptions {
            // synchronous_commit on (Postgres's default): with it off, commits
            // reach the walsender only every wal_writer_delay (200 ms), which
            // would be measured as replication latency.
            extra_conf: vec![
                "max_wal_size = '4GB'".into(),
                "checkpoint_timeout = '30min'".into(),
                "synchronous_commit = on".into(),
            ],
            ..Default::default()
        }),
        broker: support::kafka::Broker::start(),
        registry: support::registry::TestRegistry::start().await,
    };
    println!(
        "Apache Kafka answered {:.1} s after its JVM started; resident {:.0} MiB",
        bench.broker.started_in.as_secs_f64(),
        bench.broker.rss_mib()
    );
    bench.pg.create_db("bench");
    let sql = bench.pg.client("bench").await;
    sql.batch_execute(
        "CREATE TABLE small (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE TABLE steady (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE TABLE huge (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE TABLE steady_dbz (id int PRIMARY KEY, a int, b int, filler char(84));
         CREATE PUBLICATION bench_pub FOR TABLE small, steady, huge, steady_dbz;",
    )
    .await
    .expect("schema");
    let rounds: usize = std::env::var("WALHOUSE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // One slot per catch-up path and round, all before the rows are
    // written, so every run reads the same WAL. A slot cannot be created
    // in a transaction that wrote: one statement each.
    let with_debezium = std::env::var("WALHOUSE_BENCH_DEBEZIUM").as_deref() != Ok("0");
    for round in 0..rounds {
        for path in ["rl", "avro", "e2e", "dbzf", "dbz"] {
            sql.batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{path}{round}', 'pgoutput')"
            ))
            .await
            .expect("slot");
        }
    }
    println!("writing {rows} rows in {TXN_ROWS}-row transactions …");
    support::postgres::insert_small_rows(&sql, "small", rows, TXN_ROWS).await;

    // 0. Initial snapshot of the loaded table next to a plain COPY of it
    // and a plain producer of as many records of the same size; every
    // path once per round, rounds interleaved, medians reported (the
    // machine is shared and noisy).
    let encode_only = |prefix: &str| EncodeOnly {
        encoder: RecordEncoder::new(
            Arc::new(Registry::new(&bench.config("x", prefix, "small").kafka.endpoints().expect("k").1).expect("r")),
            prefix,
            "bench",
            Default::default(),
        ),
        durable: Lsn::ZERO,
        bytes: 0,
        sample: Vec::new(),
    };
    let idle = Meter::start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = idle.stop();
    println!(
        "idle for 1 s: this process used {:.2} CPU-s, the machine {:.2}",
        idle.own_cpu, idle.machine_cpu
    );
    let mut runs: [Vec<Measured>; 8] = Default::default();
    let small = TableName {
        schema: "public".into(),
        name: "small".into(),
    };
    let (small_relation, _) = snapshot::describe(&sql, &small, "bench_pub").await.expect("describe");
    let source = ConnInfo::parse(&format!(
        "postgres://postgres@127.0.0.1:{}/bench?sslmode=disable",
        bench.pg.port
    ))
    .expect("url");
    let mut record_size = 0;
    let mut sample = Arc::new(Vec::new());
    let partitions = bench.config("x", "x", "small").kafka.topic_partitions;
    for round in 0..rounds {
        let meter = Meter::start();
        {
            use futures_util::StreamExt;
            let stream = sql.copy_out("COPY small TO STDOUT").await.expect("copy");
            futures_util::pin_mut!(stream);
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                bytes += chunk.expect("chunk").len();
            }
            assert!(bytes > 0);
        }
        runs[0].push(meter.stop());
        let meter = Meter::start();
        let status = std::process::Command::new("psql")
            .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "bench"])
            .args(["-p", &bench.pg.port.to_string(), "-c", "COPY small TO STDOUT"])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create("/dev/null").expect("/dev/null"))
            .status()
            .expect("psql runs");
        assert!(status.success(), "psql failed: {status}");
        runs[5].push(meter.stop());
        // The two COPY readers alone, parsing rows but encoding nothing.
        let everything = PageRange { from: 0, to: None };
        let meter = Meter::start();
        {
            let reader = bench.pg.client("bench").await;
            snapshot::begin(&reader, None).await.expect("begin");
            let copy = CopyRows::start(&reader, &small_relation, everything, None)
                .await
                .expect("copy");
            assert_eq!(count_rows(copy).await, rows);
        }
        runs[6].push(meter.stop());
        let meter = Meter::start();
        {
            let mut session = CopySession::connect(&source).await.expect("session");
            session.begin(None).await.expect("begin");
            let copy = session.copy(&small_relation, everything, None).await.expect("copy");
            assert_eq!(count_rows(copy).await, rows);
        }
        runs[7].push(meter.stop());
        let (m, n, encoded) = bench
            .snapshot(
                &format!("snap_avro1_{round}"),
                "wh_snap_avro1",
                "1",
                encode_only("wh_snap_avro1"),
            )
            .await;
        assert_eq!(n, rows);
        runs[2].push(m);
        record_size = (encoded.bytes / rows.max(1)) as usize;
        if sample.is_empty() {
            sample = Arc::new(encoded.sample);
        }
        let (m, n, _) = bench
            .snapshot(
                &format!("snap_avro_{round}"),
                "wh_snap_avro",
                "2",
                encode_only("wh_snap_avro"),
            )
            .await;
        assert_eq!(n, rows);
        runs[3].push(m);
        let prefix = format!("wh_snap_kafka{round}");
        let (m, n, _) = bench
            .snapshot(&format!("snap_kafka_{round}"), &prefix, "2", bench.kafka(&prefix))
            .await;
        assert_eq!(n, rows);
        runs[4].push(m);
        let bootstrap = bench.broker.bootstrap();
        let records = sample.clone();
        runs[1].push(
            tokio::task::spawn_blocking(move || reference_producer(&bootstrap, rows, &records, partitions))
                .await
                .expect("reference producer"),
        );
    }
    // Each round's ratio to that round's COPY, then the median: the
    // machine's speed drifts between rounds, less within one.
    let walls = |path: &[Measured]| path.iter().map(|m| m.wall).collect::<Vec<_>>();
    let ratios: Vec<f64> = runs
        .iter()
        .map(|path| median_ratio(&walls(&runs[0]), &walls(path)))
        .collect();
    let [copy, producer, avro1, avro2, kafka, psql, read_tokio, read_wire] = runs.map(Measured::median);
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!();
    println!(
        "initial snapshot of {rows} rows (one table; chunks of 1024 pages; records of {record_size} B; medians of {rounds} rounds; ratio: median of each round's COPY time / path time)"
    );
    println!("| path                                          | seconds | rows/s  | ratio to COPY | own CPU-s | machine CPU-s | cores busy |");
    println!("|-----------------------------------------------|---------|---------|---------------|-----------|---------------|------------|");
    for (name, m, ratio) in [
        ("plain COPY small TO STDOUT (discarded)", &copy, ratios[0]),
        ("psql -c 'COPY small TO STDOUT' > /dev/null", &psql, ratios[5]),
        ("rows parsed, read with tokio-postgres", &read_tokio, ratios[6]),
        ("rows parsed, read with walhouse's wire", &read_wire, ratios[7]),
        ("plain producer into Kafka, same records", &producer, ratios[1]),
        ("walhouse snapshot + Avro, no producer, 1 conn", &avro1, ratios[2]),
        ("walhouse snapshot + Avro, no producer, 2 conn", &avro2, ratios[3]),
        ("walhouse snapshot into Kafka (acked), 2 conn", &kafka, ratios[4]),
    ] {
        println!(
            "| {name:<45} | {:>7.2} | {:>7.0} | {ratio:.2}          | {:>9.2} | {:>13.2} | {:>10.2} |",
            m.wall.as_secs_f64(),
            rate(m.wall),
            m.own_cpu,
            m.machine_cpu,
            m.machine_cpu / m.wall.as_secs_f64(),
        );
    }
    println!(
        "producing: walhouse {:.2} CPU-s (into Kafka minus no producer, 2 conn), plain producer {:.2} CPU-s",
        kafka.own_cpu - avro2.own_cpu,
        producer.own_cpu
    );
    // Into Kafka, any implementation does at least COPY's work and a plain
    // producer's on the same cores: their CPU together, spread over every
    // core, is a floor on the wall time.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let floor = (copy.machine_cpu + producer.machine_cpu) / cores;
    let floor = floor.max(copy.wall.as_secs_f64()).max(producer.wall.as_secs_f64());
    println!(
        "into Kafka on {cores} cores: COPY's and the plain producer's CPU ({:.2} CPU-s) allow at best {:.2}x of COPY; \
         walhouse reached {:.2}x ({:.2} of that floor)",
        copy.machine_cpu + producer.machine_cpu,
        copy.wall.as_secs_f64() / floor,
        ratios[4],
        floor / kafka.wall.as_secs_f64()
    );
    if std::env::var("WALHOUSE_BENCH_ONLY").as_deref() == Ok("snapshot") {
        return;
    }

    // 1. Catch-up, every path once per round on its own slot, rounds
    // interleaved like the snapshot's: Avro without producer first (it
    // finds the last commit), pg_recvlogical to the same commit, end to end
    // into Kafka, and (2.) a plain producer of walhouse's own records.
    let mut catch_up: [Vec<Measured>; 4] = Default::default();
    let mut debezium: Vec<DebeziumRun> = Vec::new();
    // walhouse end to end in the Debezium format, per round.
    let mut in_debezium_format: Vec<Measured> = Vec::new();
    let mut avg_bytes = 0.0;
    let mut catch_up_records = Arc::new(Vec::new());
    for round in 0..rounds {
        let prefix = format!("wh_avro{round}");
        let meter = Meter::start();
        let (_, mut avro_probe) = bench
            .run(&format!("avro{round}"), &prefix, "small", encode_only(&prefix), rows)
            .await;
        let avro = meter.stop();
        let stop_at = avro_probe.state.lock().expect("lock").stop_at.expect("stop point");
        avg_bytes = avro_probe.inner.bytes as f64 / rows as f64;
        if catch_up_records.is_empty() {
            catch_up_records = Arc::new(std::mem::take(&mut avro_probe.inner.sample));
        }
        // pg_recvlogical's --endpos compares with XLogData start positions;
        // the commit record starts before its end LSN, so stop at the last
        // commit's end minus one byte: the same message walhouse stopped at.
        let meter = Meter::start();
        bench
            .pg
            .recvlogical("bench", "bench_pub", &format!("rl{round}"), Lsn(stop_at.0 - 1));
        let rl = meter.stop();
        let prefix = format!("wh_e2e{round}");
        let meter = Meter::start();
        let (_, e2e_probe) = bench
            .run(&format!("e2e{round}"), &prefix, "small", bench.kafka(&prefix), rows)
            .await;
        let e2e = meter.stop();
        assert!(e2e_probe.inner.produced() >= rows);
        let bootstrap = bench.broker.bootstrap();
        let records = catch_up_records.clone();
        let reference = tokio::task::spawn_blocking(move || reference_producer(&bootstrap, rows, &records, partitions))
            .await
            .expect("reference");
        let line: Vec<String> = [&rl, &avro, &reference, &e2e]
            .iter()
            .map(|m| {
                format!(
                    "{:.2} s ({:.2}/{:.2} CPU-s)",
                    m.wall.as_secs_f64(),
                    m.own_cpu,
                    m.machine_cpu
                )
            })
            .collect();
        println!(
            "catch-up round {round} (own/machine CPU): pg_recvlogical {}, Avro no producer {}, plain producer {}, into Kafka {}",
            line[0], line[1], line[2], line[3]
        );
        for (path, m) in catch_up.iter_mut().zip([rl, avro, reference, e2e]) {
            path.push(m);
        }
        let prefix = format!("wh_dbzf{round}");
        let meter = Meter::start();
        let (_, dbzf_probe) = bench
            .run(
                &format!("dbzf{round}"),
                &prefix,
                "small",
                bench.kafka_with(&prefix, &["--format", "debezium"]),
                rows,
            )
            .await;
        let dbzf = meter.stop();
        assert!(dbzf_probe.inner.produced() >= rows);
        println!(
            "catch-up round {round}: walhouse into Kafka in the Debezium format {:.2} s ({:.2}/{:.2} CPU-s)",
            dbzf.wall.as_secs_f64(),
            dbzf.own_cpu,
            dbzf.machine_cpu
        );
        in_debezium_format.push(dbzf);
        if with_debezium {
            let run = debezium_catch_up(&bench, &format!("dbz{round}"), "public.small", rows, partitions).await;
            println!(
                "catch-up round {round}: Debezium {:.2} s from its JVM's start, {:.2} s from its task running ({:.2} CPU-s of its JVM, {:.2} machine), {:.0} B a record",
                run.from_start.as_secs_f64(),
                run.from_running.as_secs_f64(),
                run.jvm_cpu,
                run.machine_cpu,
                run.avg_bytes
            );
            debezium.push(run);
        }
    }

    // 3. Latency at a steady 5k rows/s: 50-row transactions every 10 ms for 10 s.
    sql.batch_execute("SELECT pg_create_logical_replication_slot('lat', 'pgoutput')")
        .await
        .expect("slot");
    let steady_rows = 50 * 1000;
    let lat = {
        let writer = steady_writer(&bench, "steady").await;
        let (_, probe) = bench
            .run("lat", "wh_lat", "steady", bench.kafka("wh_lat"), steady_rows)
            .await;
        writer.await.expect("writer");
        let mut l = probe.state.lock().expect("lock").latencies_us.clone();
        (
            percentile(&mut l, 0.5),
            percentile(&mut l, 0.99),
            percentile(&mut l, 1.0),
            l.len(),
        )
    };

    // The same steady load through Debezium, live: per transaction, from
    // its commit to the last of its records' Kafka timestamps (the
    // producer's create time: a lower bound on its commit-to-ack).
    let dbz_lat = if with_debezium {
        sql.batch_execute("SELECT pg_create_logical_replication_slot('dbz_lat', 'pgoutput')")
            .await
            .expect("slot");
        let mut dbz = start_debezium(&bench, "dbz_lat", "public.steady_dbz", partitions);
        let writer = steady_writer(&bench, "steady_dbz").await;
        writer.await.expect("writer");
        let bootstrap = bench.broker.bootstrap();
        let records = tokio::task::spawn_blocking(move || {
            support::kafka::read_topic(
                &bootstrap,
                "dbz_lat.public.steady_dbz",
                steady_rows as usize,
                Duration::from_secs(300),
            )
        })
        .await
        .expect("reader");
        dbz.stop();
        let mut last: std::collections::HashMap<i64, (i64, i64)> = std::collections::HashMap::new();
        for r in &records {
            let Some(v) = r
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            else {
                continue;
            };
            let (Some(tx), Some(commit_us), Some(at_ms)) = (
                v["source"]["txId"].as_i64(),
                v["source"]["ts_us"].as_i64(),
                r.timestamp_ms,
            ) else {
                continue;
            };
            let e = last.entry(tx).or_insert((commit_us, at_ms));
            e.1 = e.1.max(at_ms);
        }
        let mut l: Vec<i64> = last.values().map(|(commit, at)| at * 1000 - commit).collect();
        Some((
            percentile(&mut l, 0.5),
            percentile(&mut l, 0.99),
            percentile(&mut l, 1.0),
            l.len(),
            records.len(),
        ))
    } else {
        None
    };

    // 4. Peak RSS of this process while one 1M-row transaction goes to Kafka.

    sql.batch_execute("SELECT pg_create_logical_replication_slot('huge', 'pgoutput')")
        .await
        .expect("slot");
    if with_debezium {
        sql.batch_execute("SELECT pg_create_logical_replication_slot('dbz_huge', 'pgoutput')")
            .await
            .expect("slot");
    }
    sql.batch_execute(&format!(
        "INSERT INTO huge SELECT g, g, g * 2, 'x' FROM generate_series(1, {rows}) g"
    ))
    .await
    .expect("huge transaction");
    support::reset_peak_rss();
    let rss_before = support::peak_rss_mib();
    let (huge_time, _) = bench.run("huge", "wh_huge", "huge", bench.kafka("wh_huge"), rows).await;
    let rss_peak = support::peak_rss_mib();
    let dbz_huge = if with_debezium {
        Some(debezium_catch_up(&bench, "dbz_huge", "public.huge", rows, partitions).await)
    } else {
        None
    };

    println!();
    let [rl, avro, reference, e2e] = &catch_up.clone().map(|path| walls(&path));
    let [rl_median, avro_median, reference_median, e2e_median] = catch_up.map(|path| Measured::median(path).wall);
    // End to end cannot beat the slower of reading the slot and producing.
    let bound: Vec<Duration> = rl.iter().zip(reference).map(|(a, b)| *a.max(b)).collect();
    println!(
        "catch-up of {rows} rows ({} transactions), same WAL, medians of {rounds} rounds; avg Avro value {avg_bytes:.0} B; \
         ratio: median of each round's baseline time / path time",
        rows / TXN_ROWS
    );
    println!("| path                                   | seconds | rows/s  | ratio                       |");
    println!("|----------------------------------------|---------|---------|-----------------------------|");
    for (name, t, ratio) in [
        ("pg_recvlogical (proto 1, /dev/null)", rl_median, "1.00".to_string()),
        (
            "walhouse capture + Avro, no producer",
            avro_median,
            format!("{:.2} of recvlogical", median_ratio(rl, avro)),
        ),
        (
            "plain producer, walhouse's records",
            reference_median,
            format!("{:.2} of recvlogical", median_ratio(rl, reference)),
        ),
        (
            "walhouse end to end into Kafka (acked)",
            e2e_median,
            format!("{:.2} of the slower above", median_ratio(&bound, e2e)),
        ),
    ] {
        println!(
            "| {name:<38} | {:>7.2} | {:>7.0} | {ratio:<27} |",
            t.as_secs_f64(),
            rate(t)
        );
    }
    println!();
    println!(
        "commit-to-Kafka-ack at 5k rows/s (50-row transactions every 10 ms), {} transactions:",
        lat.3
    );
    println!("| p50 ms | p99 ms | max ms |");
    println!("|--------|--------|--------|");
    println!("| {:>6.1} | {:>6.1} | {:>6.1} |", lat.0, lat.1, lat.2);
    if let Some(d) = dbz_lat {
        println!(
            "the same load through Debezium on Connect ({} transactions, {} records): commit to its records' Kafka timestamp p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            d.3, d.4, d.0, d.1, d.2
        );
    }
    println!();
    println!("one transaction of {rows} rows into Kafka: {:.1} s, peak RSS of the capture process {rss_peak:.1} MiB (before: {rss_before:.1} MiB)", huge_time.as_secs_f64());
    if let Some(h) = &dbz_huge {
        println!(
            "the same transaction through Debezium: {:.1} s from its task running ({:.1} s from its JVM's start), peak RSS of the Connect JVM {:.1} MiB (-Xmx512m); walhouse {:.2}x its rate",
            h.from_running.as_secs_f64(),
            h.from_start.as_secs_f64(),
            h.peak_rss_mib,
            h.from_running.as_secs_f64() / huge_time.as_secs_f64()
        );
    }
    if !debezium.is_empty() {
        let from_running: Vec<Duration> = debezium.iter().map(|r| r.from_running).collect();
        let from_start: Vec<Duration> = debezium.iter().map(|r| r.from_start).collect();
        let mut sorted = from_running.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        println!();
        println!(
            "catch-up of {rows} rows against the incumbent, same WAL and broker, medians of {} rounds; ratio: median of each round's Debezium time / walhouse end-to-end time",
            debezium.len()
        );
        println!("| path                                           | seconds | rows/s  | walhouse is     |");
        println!("|------------------------------------------------|---------|---------|-----------------|");
        println!(
            "| walhouse end to end into Kafka (Avro, acked)   | {:>7.2} | {:>7.0} | 1.00            |",
            e2e_median.as_secs_f64(),
            rate(e2e_median)
        );
        let dbzf_walls: Vec<Duration> = in_debezium_format.iter().map(|m| m.wall).collect();
        let dbzf_median = Measured::median_of(&dbzf_walls);
        println!(
            "| walhouse end to end, Debezium format (acked)   | {:>7.2} | {:>7.0} | {:<15} |",
            dbzf_median.as_secs_f64(),
            rate(dbzf_median),
            format!("{:.2} of its rate", median_ratio(e2e, &dbzf_walls))
        );
        println!(
            "| Debezium on Connect, from its task running     | {:>7.2} | {:>7.0} | {:<15} |",
            median.as_secs_f64(),
            rate(median),
            format!("{:.2}x faster", median_ratio(e2e, &from_running).recip())
        );
        println!(
            "| Debezium on Connect, from its JVM's start      | {:>7.2} | {:>7.0} | {:<15} |",
            Measured::median_of(&from_start).as_secs_f64(),
            rate(Measured::median_of(&from_start)),
            format!("{:.2}x faster", median_ratio(e2e, &from_start).recip())
        );
        println!(
            "walhouse in the Debezium format against Debezium from its task running: {:.2}x faster (median of each round's ratio)",
            median_ratio(&dbzf_walls, &from_running).recip()
        );
        let peak = debezium.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
        println!("peak RSS of the Connect JVM during the catch-ups: {peak:.0} MiB (-Xmx512m, serial GC)");
    }
    println!("Apache Kafka resident after the run: {:.0} MiB", bench.broker.rss_mib());
}

/// 50-row transactions into `table` every 10 ms, 1000 of them (5k rows/s).
async fn steady_writer(bench: &Bench, table: &str) -> tokio::task::JoinHandle<()> {
    let writer_sql = bench.pg.client("bench").await;
    let table = table.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..1000u64 {
            tick.tick().await;
            let (a, b) = (i * 50 + 1, i * 50 + 50);
            writer_sql
                .batch_execute(&format!(
                    "INSERT INTO {table} SELECT g, g, g, 'x' FROM generate_series({a}, {b}) g"
                ))
                .await
                .expect("steady insert");
        }
    })
}

/// Debezium on the existing slot `slot` (no snapshot, the bench's
/// publication, table `table`), JSON values without schemas, running.
fn start_debezium(bench: &Bench, slot: &str, table: &str, partitions: i32) -> support::debezium::Debezium {
    let partitions = partitions.to_string();
    support::debezium::Debezium::start(
        &bench.broker.bootstrap(),
        &bench.pg,
        "bench",
        slot,
        &[
            ("snapshot.mode", "no_data"),
            ("publication.name", "bench_pub"),
            ("publication.autocreate.mode", "disabled"),
            ("table.include.list", table),
            ("topic.creation.default.partitions", &partitions),
            ("value.converter", "org.apache.kafka.connect.json.JsonConverter"),
            ("value.converter.schemas.enable", "false"),
            ("key.converter", "org.apache.kafka.connect.json.JsonConverter"),
            ("key.converter.schemas.enable", "false"),
        ],
    )
}

/// One Debezium catch-up.
struct DebeziumRun {
    from_start: Duration,
    from_running: Duration,
    jvm_cpu: f64,
    machine_cpu: f64,
    peak_rss_mib: f64,
    avg_bytes: f64,
}

/// Starts Debezium on the existing slot `slot` (no snapshot, the bench's
/// publication, table `table`) and waits until its topic holds `rows`
/// records (bounded: 15 min); stops it.
async fn debezium_catch_up(bench: &Bench, slot: &str, table: &str, rows: u64, partitions: i32) -> DebeziumRun {
    let machine = machine_cpu_seconds();
    let started = Instant::now();
    let mut dbz = start_debezium(bench, slot, table, partitions);
    let running = Instant::now();
    let topic = format!("{slot}.{table}");
    let bootstrap = bench.broker.bootstrap();
    let (count, bytes) = tokio::task::spawn_blocking(move || {
        support::kafka::wait_for_records(&bootstrap, &topic, rows, Duration::from_secs(900))
    })
    .await
    .expect("counter");
    assert!(
        count >= rows,
        "Debezium wrote {count} of {rows} records:\n{}",
        dbz.log()
    );
    let run = DebeziumRun {
        from_start: started.elapsed(),
        from_running: running.elapsed(),
        jvm_cpu: dbz.cpu_seconds(),
        machine_cpu: machine_cpu_seconds() - machine,
        peak_rss_mib: dbz.peak_rss_mib(),
        avg_bytes: bytes as f64 / count.max(1) as f64,
    };
    dbz.stop();
    run
}
