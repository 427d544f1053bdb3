//! The whole pipeline under faults: a concurrent workload on the seed's
//! tables while `walhouse-capture` and `walhouse-sink` (SIGKILL), the Kafka
//! broker (SIGKILL, keeping its log dir) and Postgres (`-m immediate`) are
//! killed at random moments and brought back, then four checks:
//!
//! 1. no change lost: each raw table holds as many changes as the WAL has
//!    for its table (counted independently by a `test_decoding` slot made
//!    before anything ran);
//! 2. no change stored twice: no two raw rows share a source position
//!    (`_commit_lsn`, `_tx_ordinal`);
//! 3. the end state in Kafka (each key's latest record by source position)
//!    and in the warehouse's latest-state views equals the source;
//! 4. the seed's questions give the source's answers on the warehouse.
//!
//! The kills come from a seed, printed with every kill, so a failure can be
//! replayed: `cargo test --test chaos -- --seconds 600 --seed 42`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::registry::{split_wire, Registry, RegistryConfig};
use walhouse::warehouse::duckdb::DuckDbWarehouse;
use walhouse::warehouse::postgres::PostgresWarehouse;
use walhouse::warehouse::Warehouse;

use crate::command::{CaptureCommand, SinkCommand};
use crate::kafka::{committed_sum, read_all, topics, Broker};
use crate::pipeline::{ask, BACKEND_SCHEMA, GENERATE, SEED_TABLES};
use crate::postgres::PgServer;
use crate::registry::TestRegistry;

const PREFIX: &str = "chaos";
const GROUP: &str = "chaos";
/// How long the pipeline may take to settle after the last kill.
const SETTLE: Duration = Duration::from_secs(240);
/// The workload's floor: runs here commit about 40 a second.
const MIN_TRANSACTIONS_PER_SECOND: u64 = 5;

/// The binaries under test (integration tests know their paths).
pub struct Binaries {
    pub capture: PathBuf,
    pub sink: PathBuf,
}

/// xorshift64*: a small seeded generator, so a seed replays the kills.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A binary run as a service: killed, and started again like a supervisor
/// (compose's `restart: always`) would.
struct Service {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Service {
    fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("service log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("WALHOUSE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.program.display()));
        self.child = Some(child);
        self.starts += 1;
    }

    /// Starts it again if it exited (as a supervisor would).
    fn ensure(&mut self) {
        let exited = match self.child.as_mut() {
            None => true,
            Some(c) => !matches!(c.try_wait(), Ok(None)),
        };
        if exited {
            self.start();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded: 60 s) for its clean stop.
    fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("[{}] {}", self.name, lines[lines.len().saturating_sub(40)..].join("\n"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Capture,
    Sink,
    Broker,
    Postgres,
}

/// What a run did, for its report.
#[derive(Debug, Default)]
pub struct Report {
    pub kills: Vec<String>,
    /// Which components were killed.
    pub killed: BTreeSet<String>,
    pub transactions: u64,
    pub changes: u64,
    pub duplicates_in_kafka: u64,
}

/// Runs the workload for `seconds` under kills drawn from `seed`, settles,
/// and checks; panics (with the seed and the kills) when a check fails.
pub async fn run(bins: &Binaries, seconds: u64, seed: u64) -> Report {
    println!("chaos: {seconds} s, seed {seed} (replay: cargo test --test chaos -- --seconds {seconds} --seed {seed})");
    let mut rng = Rng::new(seed);
    let mut pg = PgServer::start();
    pg.create_db("backend");
    let mut broker = Broker::start();
    let registry = TestRegistry::start().await;
    // Kept when a check fails (its path is in the message), removed after a
    // passing run.
    let dir = tempfile::Builder::new()
        .prefix("walhouse-chaos-")
        .tempdir()
        .expect("dir")
        .keep();
    let duck = dir.join("warehouse.duckdb");
    let source_url = pg.url("walhouse_scram", "backend");
    {
        let sql = pg.client("backend").await;
        sql.batch_execute(BACKEND_SCHEMA).await.expect("schema");
        // The independent count of every change, from before anything ran.
        sql.batch_execute("SELECT pg_create_logical_replication_slot('audit', 'test_decoding')")
            .await
            .expect("audit slot");
        // A second pgoutput slot from before anything ran: at the end a
        // capture on it sends every change again, so the sink's skipping of
        // changes stored already is exercised in every run, whatever the
        // kills happened to cause.
        sql.batch_execute("SELECT pg_create_logical_replication_slot('replay', 'pgoutput')")
            .await
            .expect("replay slot");
    }
    let mut capture = Service {
        name: "capture",
        program: bins.capture.clone(),
        args: CaptureCommand::from(&source_url)
            .into_kafka(&broker.bootstrap(), &registry.url, PREFIX)
            .with("--topic-partitions", "3")
            .with("--reconnect-backoff-max-ms", "2000")
            .with("--max-reconnect-attempts", "1000")
            .argv()
            .to_vec(),
        log: dir.join("capture.log"),
        child: None,
        starts: 0,
    };
    let mut sink = Service {
        name: "sink",
        program: bins.sink.clone(),
        args: SinkCommand::into(
            &format!("duckdb:{}", duck.display()),
            &broker.bootstrap(),
            &registry.url,
        )
        .with("--topic-pattern", format!("^{PREFIX}\\.public\\..*"))
        .with("--group-id", GROUP)
        .with("--batch-ms", "200")
        .argv()
        .to_vec(),
        log: dir.join("sink.log"),
        child: None,
        starts: 0,
    };
    capture.start();
    assert!(
        pg.wait_for_slot("backend", "walhouse", true, Duration::from_secs(60))
            .await,
        "capture did not start:\n{}",
        capture.log_tail()
    );
    sink.start();

    // The workload: the seed's data, then transactions until told to stop,
    // through every outage (reconnecting).
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let workload = tokio::spawn(workload(source_url.clone(), seed, stop.clone(), committed.clone()));

    let mut report = Report::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut order = [Victim::Capture, Victim::Sink, Victim::Broker, Victim::Postgres];
    for i in (1..order.len()).rev() {
        order.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let mut next_kill = started + Duration::from_millis(rng.range(3_000, 6_000));
    let mut kills = 0usize;
    // Every component is killed at least once: past `deadline` the kills
    // go on until each had its turn (bounded), since slow restarts on a
    // loaded machine can stretch the first four.
    let every_one_by = deadline + Duration::from_secs(120);
    while Instant::now() < deadline || (kills < order.len() && Instant::now() < every_one_by) {
        capture.ensure();
        sink.ensure();
        let last_seconds = Instant::now() + Duration::from_secs(3) > deadline && kills >= order.len();
        if Instant::now() < next_kill || last_seconds {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let victim = if kills < order.len() {
            order[kills]
        } else {
            order[rng.range(0, order.len() as u64) as usize]
        };
        let down = Duration::from_millis(rng.range(300, 3_000));
        let line = format!(
            "kill {} at {:.1} s: {victim:?}, down {:.1} s (seed {seed})",
            kills + 1,
            started.elapsed().as_secs_f64(),
            down.as_secs_f64()
        );
        println!("chaos: {line}");
        report.kills.push(line);
        report.killed.insert(format!("{victim:?}"));
        match victim {
            Victim::Capture => {
                capture.kill();
                tokio::time::sleep(down).await;
                capture.start();
            }
            Victim::Sink => {
                sink.kill();
                tokio::time::sleep(down).await;
                sink.start();
            }
            Victim::Broker => {
                broker.stop();
                tokio::time::sleep(down).await;
                broker = tokio::task::spawn_blocking(move || {
                    broker.resume();
                    broker
                })
                .await
                .expect("broker");
            }
            Victim::Postgres => {
                pg.stop();
                tokio::time::sleep(down).await;
                pg = tokio::task::spawn_blocking(move || {
                    pg.resume();
                    pg
                })
                .await
                .expect("postgres");
            }
        }
        kills += 1;
        next_kill = Instant::now() + Duration::from_millis(rng.range(2_000, 6_000));
    }
    stop.store(true, Ordering::Relaxed);
    workload.await.expect("workload");
    report.transactions = committed.load(Ordering::Relaxed);
    let failure = |what: &str, report: &Report, capture: &Service, sink: &Service| {
        format!(
            "{what} (seed {seed}; kills: {:#?}; logs in {})\ncapture's log:\n{}\nsink's log:\n{}",
            report.kills,
            dir.display(),
            capture.log_tail(),
            sink.log_tail()
        )
    };

    // Settle: capture confirms the whole WAL, the sink stores every record.
    let settle_until = Instant::now() + SETTLE;
    capture.ensure();
    sink.ensure();
    let mut confirmed = false;
    while !confirmed && Instant::now() < settle_until {
        capture.ensure();
        confirmed = pg.wait_confirmed("backend", "walhouse", Duration::from_secs(2)).await;
    }
    assert!(
        confirmed,
        "{}",
        failure("capture did not confirm the WAL", &report, &capture, &sink)
    );
    capture.terminate();
    // Every change sent again, at the same positions, into the same topics.
    let mut replay = Service {
        name: "replay",
        program: bins.capture.clone(),
        args: capture
            .args
            .iter()
            .cloned()
            .chain(["--slot", "replay", "--snapshot-mode", "never"].map(String::from))
            .collect(),
        log: dir.join("replay.log"),
        child: None,
        starts: 0,
    };
    replay.start();
    let replayed = pg.wait_confirmed("backend", "replay", SETTLE).await;
    replay.terminate();
    assert!(
        replayed,
        "{}\nreplay's log:\n{}",
        failure("the replay did not confirm the WAL", &report, &capture, &sink),
        replay.log_tail()
    );
    let cdc_topics: Vec<String> = {
        let bootstrap = broker.bootstrap();
        tokio::task::spawn_blocking(move || topics(&bootstrap))
            .await
            .expect("topics")
            .into_iter()
            .filter(|t| t.starts_with(&format!("{PREFIX}.public.")))
            .collect()
    };
    let in_kafka: BTreeMap<String, Vec<crate::kafka::Record>> = {
        let mut m = BTreeMap::new();
        for t in &cdc_topics {
            let (bootstrap, topic) = (broker.bootstrap(), t.clone());
            let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, Duration::from_secs(60)))
                .await
                .expect("reader");
            m.insert(t.clone(), records);
        }
        m
    };
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (topic, records) in &in_kafka {
        for r in records {
            let e = ends.entry((topic.clone(), r.partition)).or_default();
            *e = (*e).max(r.offset + 1);
        }
    }
    let total: i64 = ends.values().sum();
    let partitions: Vec<(String, i32)> = ends.keys().cloned().collect();
    // The sink's progress while it runs: the offsets it commits to Kafka
    // after each batch (its warehouse file is its own until it stops).
    let mut caught_up = false;
    while !caught_up && Instant::now() < settle_until {
        sink.ensure();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (bootstrap, partitions) = (broker.bootstrap(), partitions.clone());
        let committed = tokio::task::spawn_blocking(move || committed_sum(&bootstrap, GROUP, &partitions))
            .await
            .expect("committed offsets");
        caught_up = committed.is_some_and(|c| c >= total);
    }
    sink.terminate();
    let mut w = DuckDbWarehouse::open(&duck).expect("warehouse");
    let stored = count(
        &mut w,
        &format!("SELECT coalesce(sum(next_offset), 0) FROM walhouse.offsets WHERE consumer_group = '{GROUP}'"),
    )
    .await;
    drop(w);
    assert_eq!(
        stored,
        total,
        "{}",
        failure("the sink did not store every record", &report, &capture, &sink)
    );

    // 1 and 2: each change stored once, none missing, by the WAL's count.
    let audit = audit_counts(&pg).await;
    let mut w = DuckDbWarehouse::open(&duck).expect("warehouse");
    for table in SEED_TABLES {
        let raw = format!("raw_public.{}", walhouse::quote::ident(table));
        let rows = count(&mut w, &format!("SELECT count(*) FROM {raw}")).await;
        let positions = count(
            &mut w,
            &format!("SELECT count(*) FROM (SELECT DISTINCT _commit_lsn, _tx_ordinal FROM {raw}) p"),
        )
        .await;
        let expected = audit.get(table).copied().unwrap_or(0);
        report.changes += expected as u64;
        assert_eq!(
            positions,
            rows,
            "{}",
            failure(&format!("{table}: a change stored twice"), &report, &capture, &sink)
        );
        assert_eq!(
            rows,
            expected,
            "{}",
            failure(
                &format!("{table}: raw rows against the WAL's changes"),
                &report,
                &capture,
                &sink
            )
        );
    }

    // 3: the end state in Kafka and in the warehouse equals the source.
    let source = pg.client("backend").await;
    let reader = Registry::new(&RegistryConfig {
        url: registry.url.clone(),
        ..Default::default()
    })
    .expect("registry");
    for table in SEED_TABLES {
        let ids: BTreeSet<String> = source
            .query(
                &format!("SELECT id::text FROM public.{}", walhouse::quote::ident(table)),
                &[],
            )
            .await
            .expect("source ids")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let records = in_kafka
            .get(&format!("{PREFIX}.public.{table}"))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (latest, duplicates) = kafka_latest(&reader, records).await;
        report.duplicates_in_kafka += duplicates;
        assert_eq!(
            latest,
            ids,
            "{}",
            failure(
                &format!("{table}: Kafka's latest state against the source"),
                &report,
                &capture,
                &sink
            )
        );
        let view = count(
            &mut w,
            &format!("SELECT count(*) FROM public.{}", walhouse::quote::ident(table)),
        )
        .await;
        assert_eq!(
            view,
            ids.len() as i64,
            "{}",
            failure(
                &format!("{table}: the latest-state view against the source"),
                &report,
                &capture,
                &sink
            )
        );
    }

    // 4: the seed's questions.
    let mut source_w = PostgresWarehouse::connect(&ConnInfo::parse(&source_url).expect("url"))
        .await
        .expect("source");
    let expected = ask(&mut source_w).await;
    let got = ask(&mut w).await;
    assert!(
        got == expected,
        "{}",
        failure("the seed's questions differ", &report, &capture, &sink)
    );
    // The run did what it claims: each component went down, the workload
    // committed, and every change came twice (the replay) and was stored
    // once (checks 1 and 2).
    for victim in ["Capture", "Sink", "Broker", "Postgres"] {
        assert!(
            report.killed.contains(victim),
            "{}",
            failure(&format!("{victim} was never killed"), &report, &capture, &sink)
        );
    }
    let at_least = seconds * MIN_TRANSACTIONS_PER_SECOND;
    assert!(
        report.transactions >= at_least,
        "{}",
        failure(
            &format!(
                "only {} transactions committed (at least {at_least})",
                report.transactions
            ),
            &report,
            &capture,
            &sink
        )
    );
    assert!(
        report.changes > 0 && report.duplicates_in_kafka >= report.changes,
        "{}",
        failure(
            &format!(
                "{} records held twice for {} changes: the replay did not send every change again",
                report.duplicates_in_kafka, report.changes
            ),
            &report,
            &capture,
            &sink
        )
    );
    println!(
        "chaos: {} kills, {} transactions, {} changes, each stored once ({} records Kafka holds twice were skipped); capture started {} times, the sink {}",
        report.kills.len(),
        report.transactions,
        report.changes,
        report.duplicates_in_kafka,
        capture.starts,
        sink.starts
    );
    let _ = std::fs::remove_dir_all(&dir);
    report
}

async fn count<W: Warehouse>(w: &mut W, sql: &str) -> i64 {
    let rows = w.query_text(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first()
        .and_then(|r| r.first())
        .and_then(|c| c.as_deref())
        .unwrap_or("0")
        .parse()
        .expect("a count")
}

/// Changes per table in the WAL, by the `test_decoding` slot.
async fn audit_counts(pg: &PgServer) -> HashMap<&'static str, i64> {
    let sql = pg.client("backend").await;
    let rows = sql
        .query(
            "SELECT data FROM pg_logical_slot_peek_changes('audit', NULL, NULL) \
             WHERE data LIKE 'table public.%'",
            &[],
        )
        .await
        .expect("audit");
    let mut counts = HashMap::new();
    for r in rows {
        let data: String = r.get(0);
        // `table public."transaction": UPDATE: …`
        let Some((name, _)) = data.trim_start_matches("table public.").split_once(": ") else {
            continue;
        };
        let name = name.trim_matches('"');
        if let Some(t) = SEED_TABLES.iter().find(|t| **t == name) {
            *counts.entry(*t).or_default() += 1;
        }
    }
    counts
}

/// The keys present after every record of a table's topic (each key's
/// latest record by source position, deletes removing it), and how many
/// records repeat a position already seen.
async fn kafka_latest(registry: &Registry, records: &[crate::kafka::Record]) -> (BTreeSet<String>, u64) {
    let mut latest: HashMap<String, ((i64, i64), bool)> = HashMap::new();
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for r in records {
        let Some(value) = r.value.as_deref() else { continue };
        let envelope = decode(registry, value).await;
        let key = decode(registry, r.key.as_deref().expect("a keyed record")).await;
        let id = match &key["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let source = &envelope["source"];
        let position = (
            source["commit_lsn"].as_i64().expect("commit_lsn"),
            source["tx_ordinal"].as_i64().expect("tx_ordinal"),
        );
        if !seen.insert((id.clone(), position)) {
            duplicates += 1;
        }
        let live = envelope["op"] != "d";
        let entry = latest.entry(id).or_insert((position, live));
        if position >= entry.0 {
            *entry = (position, live);
        }
    }
    let present = latest
        .into_iter()
        .filter(|(_, (_, live))| *live)
        .map(|(id, _)| id)
        .collect();
    (present, duplicates)
}

/// A record's Avro body as JSON (unions unwrapped).
async fn decode(registry: &Registry, bytes: &[u8]) -> Value {
    let (id, mut body) = split_wire(bytes).expect("wire format");
    let text = registry.schema(id).await.expect("schema");
    let schema = apache_avro::Schema::parse_str(&text).expect("schema parses");
    let datum = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader")
        .read_value(&mut body)
        .expect("decodes");
    unwrap_unions(datum)
}

fn unwrap_unions(v: apache_avro::types::Value) -> Value {
    use apache_avro::types::Value as A;
    match v {
        A::Union(_, inner) => unwrap_unions(*inner),
        A::Record(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, unwrap_unions(v))).collect()),
        A::Null => Value::Null,
        A::Long(n) => n.into(),
        A::Int(n) => n.into(),
        A::String(s) => s.into(),
        A::Uuid(u) => u.to_string().into(),
        other => Value::try_from(other).unwrap_or(Value::Null),
    }
}

/// The seed's data, then one random transaction every ~20 ms until `stop`,
/// reconnecting through outages; counts the commits Postgres confirmed.
async fn workload(url: String, seed: u64, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>) {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut seeded = false;
    let mut next_id: i64 = 100_000;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        client = Some(c);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                continue;
            }
        };
        let sql = if !seeded {
            GENERATE.to_string()
        } else {
            next_id += 1;
            let (a, b) = (rng.range(1, 2001), rng.range(1, 61));
            match rng.range(0, 6) {
                0 => format!(
                    "BEGIN; INSERT INTO \"transaction\" (id, status, bank_account_id, subject_type, amount) \
                     VALUES ({next_id}, 0, {b}, 'Card', 10); \
                     INSERT INTO card_transactions (id, transaction_id, status, amount) VALUES ({next_id}, {next_id}, 0, 5); COMMIT"
                ),
                1 => format!("UPDATE \"transaction\" SET status = (status + 1) % 3 WHERE id = {a}"),
                2 => format!("UPDATE bank_accounts SET balance = balance + 1 WHERE id = {b}"),
                3 => format!("DELETE FROM card_transactions WHERE id = {}", rng.range(1, 3001)),
                4 => format!("UPDATE transfers SET status = (status + 1) % 5 WHERE id % 97 = {}", a % 97),
                _ => format!(
                    "BEGIN; UPDATE beneficiaries SET bic = bic || 'X' WHERE id = {}; \
                     UPDATE \"transaction\" SET settled_at = now() WHERE id = {a}; COMMIT",
                    1 + b % 40
                ),
            }
        };
        match c.batch_execute(&sql).await {
            Ok(()) => {
                seeded = true;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // An outage (or a key a half-known commit took): go on.
                if client.as_ref().is_some_and(|c| c.is_closed()) {
                    client = None;
                }
                if !seeded {
                    // The seed's data either committed whole or not at all.
                    if let Some(c) = &client {
                        if let Ok(row) = c.query_one("SELECT count(*) FROM organizations", &[]).await {
                            seeded = row.get::<_, i64>(0) > 0;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
