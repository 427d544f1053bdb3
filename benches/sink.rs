//! Kafka → warehouse: walhouse-sink into DuckDB and into a Postgres
//! warehouse, next to the floor for "read and decode" and to the rate
//! capture feeds the same broker at, in one run on the same machine.
//!
//! For each partition count (1 and 4) the topic is filled by
//! walhouse-capture's initial snapshot of a table of `WALHOUSE_BENCH_ROWS`
//! rows (default 1M, 6 columns): real Avro change envelopes, and capture's
//! snapshot rate into Kafka is the first reference. Then, each round:
//! - a plain rdkafka consumer (assign, read, the sink's prefetch settings)
//!   that decodes every record's Avro with apache-avro under its writer
//!   schema: the honest floor for "read and decode";
//! - the `walhouse-sink` binary into a new DuckDB file and into a new
//!   Postgres database, timed from process start (group join included)
//!   until its metrics count every row, with its CPU seconds, peak RSS and
//!   where its time went (`walhouse_sink_stage_seconds_total`);
//! - the target's own write of the rows that sink run stored, in the
//!   sink's batches (20,000 rows, a transaction each) with nothing to read
//!   or decode: binary `COPY` into Postgres, Arrow record batches through
//!   DuckDB's appender. The floor for "write".
//!
//! `WALHOUSE_BENCH_SINK_OPTIONS` adds flags to every sink run (e.g.
//! `--batch-rows 50000`). Medians over `WALHOUSE_BENCH_ROUNDS` rounds (default 3); the machine is
//! shared and the baseline noisy, so each ratio is a median of the
//! rounds' own ratios.
//!
//! Run: `cargo bench --bench sink`

use walhouse_test_support as support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use support::command::{CaptureCommand, SinkCommand};
use walhouse::registry::{Registry, RegistryConfig};

const LIMIT: Duration = Duration::from_secs(600);

/// Reads the whole topic and decodes each value (Confluent wire format)
/// under its writer schema with apache-avro; returns the time taken.
async fn consume_and_decode(bootstrap: &str, topic: &str, registry: &Registry, n: u64) -> Duration {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-plain")
        .set("enable.auto.commit", "false");
    // The sink's own prefetch settings, so that both fetch alike.
    for (k, v) in walhouse::sink::PREFETCH {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let started = Instant::now();
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = meta.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = started + LIMIT;
    let next = || loop {
        assert!(Instant::now() < deadline, "the plain consumer timed out");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            return m;
        }
    };
    // One table, one writer schema: resolved once, as a consumer would.
    let first = next();
    let id_of = |payload: &[u8]| u32::from_be_bytes(payload[1..5].try_into().expect("wire format"));
    let id = id_of(first.payload().expect("a value"));
    let text = registry.schema(id).await.expect("writer schema");
    let schema = apache_avro::Schema::parse_str(&text).expect("schema");
    let datum = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    let mut fields = 0usize;
    let mut decode = |payload: &[u8]| {
        assert_eq!(id_of(payload), id, "one writer schema");
        match datum.read_value(&mut &payload[5..]).expect("decodes") {
            apache_avro::types::Value::Record(f) => fields += f.len(),
            other => panic!("not a record: {other:?}"),
        }
    };
    decode(first.payload().expect("a value"));
    drop(first);
    for _ in 1..n {
        let m = next();
        decode(m.payload().expect("a value"));
    }
    assert!(fields > 0);
    started.elapsed()
}

/// One sink run's measurements.
struct SinkRun {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    stages: Vec<(String, f64)>,
}

/// Runs the walhouse-sink binary until it has written `n` rows.
async fn run_sink(args: &[String], n: u64, label: &str) -> SinkRun {
    let addr = format!("127.0.0.1:{}", support::postgres::free_port());
    let started = Instant::now();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_walhouse-sink"))
        .args(args)
        .args(["--metrics-addr", &addr])
        // `WALHOUSE_BENCH_SINK_LOG=info` shows the sink's own start-up timeline.
        .env(
            "WALHOUSE_LOG",
            std::env::var("WALHOUSE_BENCH_SINK_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("walhouse-sink starts");
    // `WALHOUSE_BENCH_PERF=<dir>` profiles the whole machine during each sink
    // run into `<dir>/<label>-<pid>.data` (`perf report --pid <pid>`: the
    // threads librdkafka and DuckDB start later are not followed by `-p`).
    let perf = std::env::var("WALHOUSE_BENCH_PERF").ok().map(|dir| {
        Command::new("perf")
            .args(["record", "-F", "499", "--call-graph", "dwarf,32768", "-a", "-o"])
            .arg(format!("{dir}/{label}-{}.data", child.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf starts")
    });
    let url = walhouse::http::BaseUrl::parse(&format!("http://{addr}")).expect("url");
    let deadline = started + LIMIT;
    let metrics = loop {
        assert!(Instant::now() < deadline, "the sink did not write {n} rows");
        assert!(child.try_wait().expect("wait").is_none(), "the sink exited");
        let answer = walhouse::http::request(&url, None, "GET", "/metrics", &[], None, Duration::from_secs(5)).await;
        if let Ok(a) = answer {
            let text = String::from_utf8_lossy(&a.body).into_owned();
            if value(&text, "walhouse_sink_rows_total ").is_some_and(|v| v >= n as f64) {
                break text;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let pid = child.id().to_string();
    let (cpu_seconds, peak_rss_mib) = (
        support::process_cpu_seconds(&pid),
        support::process_status_mib(&pid, "VmHWM:"),
    );
    if let Some(mut perf) = perf {
        let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
        let _ = perf.wait();
    }
    let stages = ["receive", "decode", "wait_writer", "write"]
        .iter()
        .map(|s| {
            let line = format!("walhouse_sink_stage_seconds_total{{stage=\"{s}\"}} ");
            (s.to_string(), value(&metrics, &line).unwrap_or(f64::NAN))
        })
        .collect();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    SinkRun {
        seconds,
        cpu_seconds,
        peak_rss_mib,
        stages,
    }
}

/// Rows a sink batch holds by default (`--batch-rows`).
const BATCH_ROWS: usize = 20_000;

/// Postgres's own time to take the rows the sink stored in `db`, by
/// binary `COPY` in the sink's batches, a transaction each, into a copy of
/// the raw table. The rows are read out (and cut into batches) first.
async fn postgres_write_floor(pg: &support::postgres::PgServer, db: &str) -> f64 {
    use futures_util::{SinkExt, TryStreamExt};
    let client = pg.client(db).await;
    client
        .batch_execute("CREATE TABLE raw_public.floor (LIKE raw_public.events)")
        .await
        .expect("floor table");
    let out = client
        .copy_out("COPY raw_public.events TO STDOUT (FORMAT binary)")
        .await
        .expect("copy out");
    let chunks: Vec<bytes::Bytes> = out.try_collect().await.expect("copy out");
    let stream: Vec<u8> = chunks.concat();
    let batches = copy_batches(&stream, BATCH_ROWS);
    let started = Instant::now();
    for batch in batches {
        client.batch_execute("BEGIN").await.expect("begin");
        let sink = client
            .copy_in::<_, bytes::Bytes>("COPY raw_public.floor FROM STDIN (FORMAT binary)")
            .await
            .expect("copy in");
        futures_util::pin_mut!(sink);
        sink.send(batch).await.expect("copy data");
        sink.finish().await.expect("copy done");
        client.batch_execute("COMMIT").await.expect("commit");
    }
    started.elapsed().as_secs_f64()
}

/// A binary COPY stream cut into streams of `rows` rows each.
fn copy_batches(stream: &[u8], rows: usize) -> Vec<bytes::Bytes> {
    const SIGNATURE: usize = 11;
    let ext = u32::from_be_bytes(stream[SIGNATURE + 4..SIGNATURE + 8].try_into().expect("header")) as usize;
    let header = &stream[..SIGNATURE + 8 + ext];
    let mut at = header.len();
    let mut starts = Vec::new();
    loop {
        let fields = i16::from_be_bytes(stream[at..at + 2].try_into().expect("tuple"));
        if fields < 0 {
            break;
        }
        starts.push(at);
        at += 2;
        for _ in 0..fields {
            let len = i32::from_be_bytes(stream[at..at + 4].try_into().expect("field"));
            at += 4 + usize::try_from(len).unwrap_or(0);
        }
    }
    starts.push(at);
    let count = starts.len() - 1;
    (0..count)
        .step_by(rows)
        .map(|i| {
            let (from, to) = (starts[i], starts[(i + rows).min(count)]);
            let mut b = Vec::with_capacity(header.len() + to - from + 2);
            b.extend_from_slice(header);
            b.extend_from_slice(&stream[from..to]);
            b.extend_from_slice(&(-1i16).to_be_bytes());
            bytes::Bytes::from(b)
        })
        .collect()
}

/// DuckDB's own time to take the rows the sink stored in `path`, as Arrow
/// record batches through its appender in the sink's batches, a
/// transaction each, into a copy of the raw table. The rows are read out
/// (and cut into batches) first.
fn duckdb_write_floor(path: &std::path::Path) -> f64 {
    let conn = duckdb::Connection::open(path).expect("open the sink's DuckDB file");
    conn.execute_batch("CREATE TABLE raw_public.floor AS SELECT * FROM raw_public.events LIMIT 0")
        .expect("floor table");
    let mut read = conn.prepare("SELECT * FROM raw_public.events").expect("select");
    let batches: Vec<duckdb::arrow::record_batch::RecordBatch> = read.query_arrow([]).expect("rows").collect();
    let schema = batches.first().expect("rows").schema();
    let all = duckdb::arrow::compute::concat_batches(&schema, &batches).expect("concat");
    let started = Instant::now();
    let mut from = 0;
    while from < all.num_rows() {
        let len = BATCH_ROWS.min(all.num_rows() - from);
        conn.execute_batch("BEGIN TRANSACTION").expect("begin");
        let mut app = conn.appender_to_db("floor", "raw_public").expect("appender");
        app.append_record_batch(all.slice(from, len)).expect("append");
        app.flush().expect("flush");
        drop(app);
        conn.execute_batch("COMMIT").expect("commit");
        from += len;
    }
    started.elapsed().as_secs_f64()
}

/// The value of the metrics line starting with `prefix`.
fn value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let n = env("WALHOUSE_BENCH_ROWS", 1_000_000);
    let rounds = env("WALHOUSE_BENCH_ROUNDS", 3).max(1);
    println!(
        "starting Postgres {}, Apache Kafka {} and the dev registry …",
        support::postgres::test_major(),
        support::kafka::kafka_version()
    );
    let pg = support::postgres::PgServer::start();
    pg.create_db("bench");
    let broker = support::kafka::Broker::start();
    let bootstrap = broker.bootstrap();
    let registry = support::registry::TestRegistry::start().await;
    let reader = Registry::new(&RegistryConfig {
        url: registry.url.clone(),
        user: None,
        password: None,
        ca: None,
    })
    .expect("registry");
    let sql = pg.client("bench").await;
    sql.batch_execute(&format!(
        "CREATE TABLE events (id bigint PRIMARY KEY, account int, status int, amount numeric(19,4), \
         label text, at timestamptz); \
         INSERT INTO events SELECT g, g % 1000, g % 5, g / 100.0, 'label ' || (g % 97), \
         timestamptz '2024-01-01' + g * interval '1 second' FROM generate_series(1, {n}) g;"
    ))
    .await
    .expect("table");
    // More walhouse-sink flags to try (`--batch-rows 50000`, `--kafka-option k=v`).
    let extra = std::env::var("WALHOUSE_BENCH_SINK_OPTIONS").unwrap_or_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut table = Vec::new();
    // `WALHOUSE_BENCH_PARTITIONS=4` and `WALHOUSE_BENCH_TARGETS=DuckDB` narrow a run.
    let partition_counts: Vec<u32> = std::env::var("WALHOUSE_BENCH_PARTITIONS")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let targets = std::env::var("WALHOUSE_BENCH_TARGETS").unwrap_or_else(|_| "DuckDB,Postgres,Iceberg".into());
    for partitions in partition_counts {
        let prefix = format!("bench{partitions}");
        let topic = format!("{prefix}.public.events");
        println!("filling {topic} ({partitions} partitions) with {n} change records (capture's initial snapshot) …");
        let started = Instant::now();
        // capture's defaults otherwise (no test-speed status interval).
        let capture = CaptureCommand::from(&pg.url("walhouse_scram", "bench"))
            .with("--output", "kafka")
            .with("--brokers", &bootstrap)
            .with("--schema-registry-url", &registry.url)
            .with("--topic-prefix", &prefix)
            .with("--topic-partitions", partitions.to_string())
            .with("--snapshot-mode", "initial_only")
            .start();
        let (_, produced) = capture.finish(LIMIT).await;
        let capture_seconds = started.elapsed().as_secs_f64();
        assert_eq!(produced, n);

        let mut baseline = Vec::new();
        // The target's own write of each run's rows, by target.
        let mut floors: std::collections::HashMap<&str, Vec<f64>> = Default::default();
        let mut sinks: Vec<(&str, Vec<SinkRun>)> = ["DuckDB", "Postgres", "Iceberg"]
            .into_iter()
            .filter(|t| targets.split(',').any(|w| w.trim().eq_ignore_ascii_case(t)))
            .map(|t| (t, Vec::new()))
            .collect();
        for round in 0..rounds {
            baseline.push(consume_and_decode(&bootstrap, &topic, &reader, n).await.as_secs_f64());
            for (target, runs) in sinks.iter_mut() {
                let file = dir.path().join(format!("p{partitions}r{round}.duckdb"));
                let db = format!("wh_p{partitions}_r{round}");
                let lake = dir.path().join(format!("p{partitions}r{round}-lake"));
                let warehouse = match *target {
                    "DuckDB" => format!("duckdb:{}", file.display()),
                    "Iceberg" => format!("iceberg:{}", lake.display()),
                    _ => pg.url("walhouse_scram", &pg.create_db(&db)),
                };
                // The sink's defaults otherwise (not the tests' short batches).
                let args = SinkCommand::into(&warehouse, &bootstrap, &registry.url)
                    .with("--topic-pattern", format!("^{prefix}\\..*"))
                    .with("--companies-topic", "")
                    .with("--group-id", format!("bench-{target}-{partitions}-{round}"))
                    .args(&extra.split_whitespace().collect::<Vec<_>>());
                runs.push(run_sink(args.argv(), n, &format!("{target}-p{partitions}-r{round}")).await);
                // Iceberg's floor is not measured: writing Parquet and
                // committing has no cheaper path walhouse could compare to.
                let floor = match *target {
                    "DuckDB" => Some(duckdb_write_floor(&file)),
                    "Iceberg" => None,
                    _ => Some(postgres_write_floor(&pg, &db).await),
                };
                if let Some(floor) = floor {
                    floors.entry(*target).or_default().push(floor);
                }
            }
        }
        let rate = |seconds: f64| n as f64 / seconds;
        let base = median(baseline.clone());
        table.push(format!(
            "| capture snapshot → Kafka (reference)   | {partitions} | {capture_seconds:>6.2} | {:>9.0} | {:>5.2} | 1.00  |         |        |",
            rate(capture_seconds),
            base / capture_seconds
        ));
        table.push(format!(
            "| consumer + Avro decode (floor)         | {partitions} | {base:>6.2} | {:>9.0} | 1.00  | {:>5.2} |         |        |",
            rate(base),
            capture_seconds / base
        ));
        for (target, runs) in &sinks {
            let floor = floors.get(target).cloned().unwrap_or_default();
            let over_floor = if floor.is_empty() {
                "not measured".to_owned()
            } else {
                let to_floor = median(runs.iter().zip(&floor).map(|(r, f)| f / r.seconds).collect());
                format!("{:.2}", 1.0 / to_floor)
            };
            if !floor.is_empty() {
                let label = format!("{target} takes them (write floor)");
                table.push(format!(
                    "| {label:<38} | {partitions} | {:>6.2} | {:>9.0} |       |       |         |        |",
                    median(floor.clone()),
                    rate(median(floor.clone())),
                ));
            }
            let seconds = median(runs.iter().map(|r| r.seconds).collect());
            let to_base = median(runs.iter().zip(&baseline).map(|(r, b)| b / r.seconds).collect());
            table.push(format!(
                "| walhouse-sink → {target:<22} | {partitions} | {seconds:>6.2} | {:>9.0} | {to_base:>5.2} | {:>5.2} | {:>7.2} | {:>6.0} |",
                rate(seconds),
                capture_seconds / seconds,
                median(runs.iter().map(|r| r.cpu_seconds).collect()),
                median(runs.iter().map(|r| r.peak_rss_mib).collect()),
            ));
            let stages: Vec<String> = runs[0]
                .stages
                .iter()
                .enumerate()
                .map(|(i, (name, _))| format!("{name} {:.2}", median(runs.iter().map(|r| r.stages[i].1).collect())))
                .collect();
            println!(
                "stages (s), walhouse-sink → {target}, {partitions} partition(s): {}; the sink's time over the \
                 write floor's: {over_floor}",
                stages.join(", "),
            );
        }
    }
    println!();
    println!("{n} CDC records (Avro envelopes, 6 columns) on Apache Kafka, 127.0.0.1; medians of {rounds} round(s)");
    println!(
        "| path                                   | p | s      | rows/s    | × floor | × capture | CPU s | RSS MiB |"
    );
    println!("|----------------------------------------|---|--------|-----------|-------|-------|---------|--------|");
    for line in table {
        println!("{line}");
    }
}
