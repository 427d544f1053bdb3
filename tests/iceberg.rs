//! The Iceberg target as another reader sees it: the table layer (every
//! column type, a widened table, each commit's summary properties), and
//! `walhouse-sink --warehouse iceberg:<DIR>` fed by capture through Kafka,
//! killed between a batch's commits, read back by pyiceberg and by DuckDB's
//! iceberg extension.

use walhouse_test_support as support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::command::{CaptureCommand, SinkCommand};
use support::kafka::Broker;
use support::postgres::PgServer;
use support::registry::TestRegistry;

use serde_json::{json, Value};
use walhouse::warehouse::arrow::ArrowRows;
use walhouse::warehouse::iceberg::positions::{property, Positions};
use walhouse::warehouse::iceberg::IcebergWarehouse;
use walhouse::warehouse::{Cell, ColumnDef, SqlType, TableDef, TableRef};

fn columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new("id", SqlType::BigInt),
        ColumnDef::new("name", SqlType::Text),
        ColumnDef::new(
            "amount",
            SqlType::Decimal {
                precision: 12,
                scale: 2,
            },
        ),
        ColumnDef::new("at", SqlType::TimestampTz),
        ColumnDef::new("local", SqlType::Timestamp),
        ColumnDef::new("day", SqlType::Date),
        ColumnDef::new("clock", SqlType::Time),
        ColumnDef::new("u", SqlType::Uuid),
        ColumnDef::new("doc", SqlType::Json),
        ColumnDef::new("raw", SqlType::Bytes),
        ColumnDef::new("flag", SqlType::Boolean),
        ColumnDef::new("small", SqlType::Integer),
        ColumnDef::new("r", SqlType::Real),
        ColumnDef::new("d", SqlType::Double),
    ]
}

fn decimal(unscaled: i128) -> Cell {
    Cell::Decimal {
        unscaled,
        precision: 12,
        scale: 2,
    }
}

#[tokio::test]
async fn pyiceberg_reads_every_type_and_each_commits_properties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = IcebergWarehouse::open(dir.path()).await.expect("catalog");
    let table = TableRef::new("raw_public", "every_type");
    let def = TableDef {
        table: table.clone(),
        columns: columns(),
    };
    assert_eq!(w.columns(&table).await.expect("columns"), None);
    w.create_table(&def).await.expect("create");

    let mut rows = ArrowRows::new(&def.columns).expect("rows");
    rows.push(&[
        Cell::Long(1),
        Cell::Text("Zoë 🙂".into()),
        decimal(999_999_999_999),
        Cell::TimestampTz(1_700_000_000_123_456),
        Cell::Timestamp(-1),
        Cell::Date(-719_162),
        Cell::Time(86_399_999_999),
        Cell::Uuid("00112233-4455-6677-8899-aabbccddeeff".into()),
        Cell::Text("{\"a\": [1, 2.50]}".into()),
        Cell::Bytes(vec![0, 255, 16]),
        Cell::Bool(true),
        Cell::Int(i32::MIN),
        Cell::Float(1.5),
        Cell::Double(-0.1),
    ])
    .expect("row 1");
    let mut nulls = vec![Cell::Null; def.columns.len()];
    nulls[0] = Cell::Long(2);
    nulls[2] = decimal(-1);
    rows.push(&nulls).expect("row 2");
    rows.seal().expect("seal");
    let mut positions = Positions::default();
    positions.advance("walhouse.public.every_type", 0, 2);
    let first = HashMap::from([(property("g"), positions.to_json())]);
    assert_eq!(w.append(&table, &rows, first).await.expect("append"), 1);

    let mut wider = def.columns.clone();
    wider.push(ColumnDef::new("added", SqlType::Text));
    w.add_columns(&table, &wider[def.columns.len()..]).await.expect("widen");
    let known = w.columns(&table).await.expect("columns").expect("exists");
    assert_eq!(known.last(), Some(&("added".to_owned(), "string".to_owned())));
    let mut rows = ArrowRows::new(&wider).expect("rows");
    let mut later = vec![Cell::Null; wider.len()];
    later[0] = Cell::Long(3);
    later[wider.len() - 1] = Cell::Text("new".into());
    rows.push(&later).expect("row 3");
    rows.seal().expect("seal");
    positions.advance("walhouse.public.every_type", 0, 3);
    let second = HashMap::from([(property("g"), positions.to_json())]);
    w.append(&table, &rows, second).await.expect("append");

    let read = support::python::pyiceberg_read(dir.path(), "raw_public.every_type").expect("pyiceberg reads");
    let types: Vec<(String, String)> = serde_json::from_value(read["schema"].clone()).expect("schema");
    let wanted: Vec<(&str, &str)> = vec![
        ("id", "long"),
        ("name", "string"),
        ("amount", "decimal(12, 2)"),
        ("at", "timestamptz"),
        ("local", "timestamp"),
        ("day", "date"),
        ("clock", "time"),
        ("u", "uuid"),
        ("doc", "string"),
        ("raw", "binary"),
        ("flag", "boolean"),
        ("small", "int"),
        ("r", "float"),
        ("d", "double"),
        ("added", "string"),
    ];
    assert_eq!(
        types,
        wanted
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let mut got: Vec<Value> = serde_json::from_value(read["rows"].clone()).expect("rows");
    got.sort_by_key(|r| r["id"].as_str().and_then(|s| s.parse::<i64>().ok()));
    assert_eq!(
        got[0],
        json!({
            "id": "1", "name": "Zoë 🙂", "amount": "9999999999.99", "at": "2023-11-14T22:13:20.123456+00:00",
            "local": "1969-12-31T23:59:59.999999", "day": "0001-01-01", "clock": "23:59:59.999999",
            "u": "00112233-4455-6677-8899-aabbccddeeff", "doc": "{\"a\": [1, 2.50]}", "raw": "00ff10",
            "flag": "True", "small": "-2147483648", "r": "1.5", "d": "-0.1", "added": null
        })
    );
    assert_eq!(got[1]["amount"], "-0.01");
    assert_eq!(got[1]["name"], Value::Null);
    assert_eq!(
        (got[2]["id"].as_str(), got[2]["added"].as_str()),
        (Some("3"), Some("new"))
    );
    let committed: Vec<Option<&str>> = read["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["walhouse.positions.g"].as_str())
        .collect();
    assert_eq!(
        committed,
        [
            Some("{\"walhouse.public.every_type\":{\"0\":2}}"),
            Some("{\"walhouse.public.every_type\":{\"0\":3}}")
        ]
    );
    let duck = support::python::duckdb_iceberg_query(
        dir.path(),
        "raw_public.every_type",
        "SELECT count(*), sum(amount), max(\"at\"), min(u), count(added) FROM t",
    )
    .expect("DuckDB's iceberg extension reads");
    assert_eq!(
        duck,
        [[
            Some("3".to_owned()),
            Some("9999999999.98".to_owned()),
            Some("2023-11-14 22:13:20.123456+00:00".to_owned()),
            Some("00112233-4455-6677-8899-aabbccddeeff".to_owned()),
            Some("1".to_owned()),
        ]]
    );
    let summary = w.snapshot_properties(&table).await.expect("properties");
    assert_eq!(Positions::from_summary(&summary, "g"), Ok(positions));
}

/// A source database `backend` made by `schema` (SQL), and capture
/// streaming it into Kafka (topics under `walhouse.<name><pid>`).
struct Fed {
    pg: PgServer,
    broker: Broker,
    registry: TestRegistry,
    source: tokio_postgres::Client,
    prefix: String,
    capture: support::pipeline::RunningCapture,
}

async fn feed(name: &str, schema: &str) -> Fed {
    let pg = PgServer::start();
    pg.create_db("backend");
    let broker = Broker::start();
    let registry = TestRegistry::start().await;
    let source = pg.client("backend").await;
    source.batch_execute(schema).await.expect("source tables");
    let prefix = format!("walhouse.{name}{}", std::process::id());
    let capture = CaptureCommand::from(&pg.url("walhouse_scram", "backend"))
        .into_kafka(&broker.bootstrap(), &registry.url, &prefix)
        .start();
    assert!(pg.wait_streaming("backend", "walhouse", Duration::from_secs(60)).await);
    Fed {
        pg,
        broker,
        registry,
        source,
        prefix,
        capture,
    }
}

/// Waits (bounded) until capture confirmed every change made so far, or
/// fails with the slot's state.
async fn confirmed(pg: &PgServer) {
    if pg.wait_confirmed("backend", "walhouse", Duration::from_secs(120)).await {
        return;
    }
    let state = pg
        .client("backend")
        .await
        .query_one(
            "SELECT active::text, confirmed_flush_lsn::text, pg_current_wal_insert_lsn()::text \
             FROM pg_replication_slots WHERE slot_name = 'walhouse'",
            &[],
        )
        .await
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)));
    panic!("capture did not confirm within 120 s: (active, confirmed, insert) {state:?}");
}

/// A sink process into the Iceberg warehouse `lake`, in group `group`,
/// with `failpoints`; its log in `log`.
fn spawn_sink(lake: &Path, broker: &Broker, registry_url: &str, prefix: &str, failpoints: &str, log: &Path) -> Child {
    let args = SinkCommand::into(
        &format!("iceberg:{}", lake.display()),
        &broker.bootstrap(),
        registry_url,
    )
    .topics_under(prefix, "lake")
    .with("--batch-ms", "300");
    Command::new(env!("CARGO_BIN_EXE_walhouse-sink"))
        .args(args.argv())
        .env("WALHOUSE_LOG", "info")
        .env("WALHOUSE_FAILPOINTS", failpoints)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("walhouse-sink starts")
}

/// A sink (as [`spawn_sink`]) that commits a batch's tables and then
/// holds, before it moves the batch's offsets, while `hold` exists;
/// returned once it holds.
fn sink_held_before_offsets(
    lake: &Path,
    broker: &Broker,
    registry_url: &str,
    prefix: &str,
    hold: &Path,
    log: &Path,
) -> Child {
    std::fs::write(hold, b"").expect("hold");
    let failpoints = format!("iceberg.before_marker=pause-while:{}", hold.display());
    let sink = spawn_sink(lake, broker, registry_url, prefix, &failpoints, log);
    let reached = walhouse::failpoint::reached(hold);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !reached.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        reached.exists(),
        "the sink committed a table and holds before the offsets; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    sink
}

/// The rows of `table` as pyiceberg reads them (none before the table
/// exists).
fn iceberg_rows(lake: &Path, table: &str) -> Vec<Value> {
    match support::python::pyiceberg_read(lake, table) {
        Ok(read) => serde_json::from_value(read["rows"].clone()).expect("rows"),
        Err(e) if e.contains("NoSuchTableError") => Vec::new(),
        Err(e) => panic!("pyiceberg reads {table}: {e}"),
    }
}

/// Capture into Kafka, and a sink into Iceberg killed after it committed
/// a batch's tables but before it moved its offsets (the marker): the
/// sink started again stores what was missing and nothing twice, and the
/// latest state read by DuckDB over the Iceberg tables is the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_stores_each_change_once_in_iceberg_across_a_kill_between_commits() {
    support::init_logs();
    let Fed {
        pg,
        broker,
        registry,
        source,
        prefix,
        capture,
    } = feed(
        "lake",
            "CREATE TABLE a (id int PRIMARY KEY, amount numeric(12,2), at timestamptz, u uuid, doc jsonb, \
                 until timestamptz, born date); \
             CREATE TABLE b (id int PRIMARY KEY, v text); \
             INSERT INTO a SELECT g, g * 1.25, '2024-01-01 00:00+00'::timestamptz + g * interval '1 min', \
                 md5(g::text)::uuid, jsonb_build_object('g', g), \
                 CASE WHEN g <= 3 THEN 'infinity'::timestamptz WHEN g <= 5 THEN '-infinity' ELSE '2030-01-01 00:00+00' END, \
                 CASE WHEN g <= 3 THEN '-infinity'::date ELSE '2000-01-01'::date + g END \
             FROM generate_series(1, 300) g; \
             INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 300) g;",
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let hold = dir.path().join("hold");
    let mut first = sink_held_before_offsets(
        &lake,
        &broker,
        &registry.url,
        &prefix,
        &hold,
        &dir.path().join("first.log"),
    );
    let _ = first.kill();
    let _ = first.wait();
    let held: usize = ["raw_public.a", "raw_public.b"]
        .iter()
        .map(|t| iceberg_rows(&lake, t).len())
        .sum();
    assert!(held > 0, "the killed sink had committed a table");
    std::fs::remove_file(&hold).expect("release");

    source
        .batch_execute(
            "UPDATE a SET amount = amount + 1 WHERE id % 3 = 0; DELETE FROM b WHERE id % 4 = 0; \
             INSERT INTO b SELECT g, 'w' || g FROM generate_series(301, 350) g;",
        )
        .await
        .expect("changes");
    confirmed(&pg).await;
    capture.stop().await;
    // A row per change: the snapshot's 600, 100 updates, 75 deletes, 50
    // inserts (the deletes' tombstones are not rows).
    let changes: u64 = 600 + 100 + 75 + 50;

    let mut second = spawn_sink(
        &lake,
        &broker,
        &registry.url,
        &prefix,
        "",
        &dir.path().join("second.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = ["raw_public.a", "raw_public.b"]
            .iter()
            .map(|t| iceberg_rows(&lake, t).len())
            .sum::<usize>() as u64;
        if stored >= changes {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Time for a duplicate to show, were there one.
    std::thread::sleep(Duration::from_secs(2));
    let _ = second.kill();
    let _ = second.wait();
    for table in ["raw_public.a", "raw_public.b"] {
        let rows = iceberg_rows(&lake, table);
        let mut at: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r["_topic"].to_string(),
                    r["_partition"].to_string(),
                    r["_offset"].to_string(),
                )
            })
            .collect();
        at.sort();
        at.dedup();
        assert_eq!(at.len(), rows.len(), "{table}: no Kafka record stored twice");
    }
    let total: usize = ["raw_public.a", "raw_public.b"]
        .iter()
        .map(|t| iceberg_rows(&lake, t).len())
        .sum();
    assert_eq!(
        total as u64, changes,
        "every change stored once (stored {stored} while waiting)"
    );

    let latest = |key: &str| {
        format!(
            "SELECT {key} FROM (SELECT * FROM t QUALIFY row_number() OVER \
             (PARTITION BY id ORDER BY _commit_lsn DESC, _tx_ordinal DESC) = 1) WHERE _op <> 'd'"
        )
    };
    let from_source = |sql: &str| {
        let source = &source;
        let sql = sql.to_owned();
        async move {
            let row = source.query_one(&sql, &[]).await.expect("source");
            (0..row.len())
                .map(|i| Some(row.get::<_, String>(i)))
                .collect::<Vec<_>>()
        }
    };
    let a = support::python::duckdb_iceberg_query(
        &lake,
        "raw_public.a",
        &latest("count(*)::text, sum(amount)::text, epoch(max(\"at\"))::bigint::text, count(DISTINCT u)::text"),
    )
    .expect("DuckDB reads a");
    let want = from_source(
        "SELECT count(*)::text, sum(amount)::text, extract(epoch FROM max(\"at\"))::bigint::text, count(DISTINCT u)::text FROM a",
    )
    .await;
    assert_eq!(a, vec![want], "a's latest state, read by DuckDB, is the source's");
    let b = support::python::duckdb_iceberg_query(&lake, "raw_public.b", &latest("count(*)::text, max(v)"))
        .expect("DuckDB reads b");
    assert_eq!(b, vec![from_source("SELECT count(*)::text, max(v) FROM b").await]);
    let dead = iceberg_rows(&lake, "walhouse.dead_letters");
    assert!(dead.is_empty(), "no dead letters: {dead:?}");
    // Infinite timestamps and dates, which Iceberg cannot hold, are null
    // in their typed column, their text in _text_values (pyiceberg read
    // them: it fails on the other targets' sentinels).
    let a_rows = iceberg_rows(&lake, "raw_public.a");
    let first = |id: &str| {
        a_rows
            .iter()
            .find(|r| r["id"] == id && r["_op"] == "r")
            .unwrap_or_else(|| panic!("row {id}"))
    };
    assert_eq!(
        (&first("1")["until"], &first("1")["born"]),
        (&Value::Null, &Value::Null)
    );
    let text: Value = serde_json::from_str(first("1")["_text_values"].as_str().expect("text values")).expect("json");
    assert_eq!(text, json!({"until": "infinity", "born": "-infinity"}));
    let text: Value = serde_json::from_str(first("4")["_text_values"].as_str().expect("text values")).expect("json");
    assert_eq!(text, json!({"until": "-infinity"}));
    assert_eq!(first("4")["born"], "2000-01-05");
    assert_eq!(first("6")["until"], "2030-01-01T00:00:00+00:00");
}

/// Two writers read a table, each decides what to add: the second commit
/// is refused (the table changed since it read it) instead of applied on
/// top of the first, which would store rows twice. What walhouse's fence
/// and per-table positions rest on.
#[tokio::test]
async fn a_commit_on_a_table_changed_since_it_was_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = IcebergWarehouse::open(dir.path()).await.expect("catalog");
    let table = TableRef::new("raw_public", "contended");
    let def = TableDef {
        table: table.clone(),
        columns: vec![ColumnDef::new("id", SqlType::BigInt)],
    };
    w.create_table(&def).await.expect("create");
    let rows = |id: i64| {
        let mut rows = ArrowRows::new(&def.columns).expect("rows");
        rows.push(&[Cell::Long(id)]).expect("row");
        rows.seal().expect("seal");
        rows
    };
    let read_by_both = w.load_existing(&table).await.expect("load");
    let first = w.append_to(&read_by_both, &[(&rows(1), None)], HashMap::new()).await;
    assert_eq!(first.expect("first commit"), Some(1));
    let second = w.append_to(&read_by_both, &[(&rows(2), None)], HashMap::new()).await;
    assert_eq!(second.expect("no error"), None, "the second writer's commit is refused");
    let again = w.load_existing(&table).await.expect("load");
    assert_eq!(
        w.append_to(&again, &[(&rows(3), None)], HashMap::new())
            .await
            .expect("third"),
        Some(1)
    );
    let read = support::python::pyiceberg_read(dir.path(), "raw_public.contended").expect("pyiceberg reads");
    let mut ids: Vec<String> = read["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["1", "3"]);
}

/// The scaled setup: the catalog in a Postgres database, the data in S3
/// (moto's server on 127.0.0.1), credentials from the AWS environment.
/// pyiceberg reads the tables back through the same catalog and bucket;
/// neither the catalog's password nor the S3 secret reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scaled_setup_keeps_the_catalog_in_postgres_and_the_data_in_s3() {
    support::init_logs();
    let Fed {
        pg,
        broker,
        registry,
        source,
        prefix,
        capture,
    } = feed(
        "s3lake",
        "CREATE TABLE t (id int PRIMARY KEY, amount numeric(12,2)); \
             INSERT INTO t SELECT g, g * 0.5 FROM generate_series(1, 200) g;",
    )
    .await;
    let catalog_db = pg.create_db("catalog");
    let s3 = support::s3::S3Server::start();
    s3.create_bucket("lake");
    source
        .batch_execute("UPDATE t SET amount = amount + 1 WHERE id <= 50")
        .await
        .expect("changes");
    confirmed(&pg).await;
    capture.stop().await;

    let catalog_url = pg.url("walhouse_scram", &catalog_db);
    let warehouse = catalog_url.replacen("postgres://", "iceberg+postgres://", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sink.log");
    let args = SinkCommand::into(&warehouse, &broker.bootstrap(), &registry.url)
        .topics_under(&prefix, "s3lake")
        .with("--iceberg-data", "s3://lake/warehouse")
        .with("--s3-endpoint", s3.endpoint())
        .with("--s3-region", "us-east-1")
        .with("--iceberg-commit-interval", "500ms")
        .args(&["--s3-path-style"]);
    let mut sink = Command::new(env!("CARGO_BIN_EXE_walhouse-sink"))
        .args(args.argv())
        .env("WALHOUSE_LOG", "debug")
        .env("AWS_ACCESS_KEY_ID", support::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", support::s3::SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("walhouse-sink starts");

    let properties = json!({
        "uri": catalog_url
            .replacen("postgres://", "postgresql+psycopg2://", 1)
            .replace("?sslmode=disable", ""),
        "s3.endpoint": s3.endpoint(),
        "s3.region": "us-east-1",
        "s3.access-key-id": support::s3::ACCESS_KEY,
        "s3.secret-access-key": support::s3::SECRET_KEY,
    });
    let read = || support::python::pyiceberg_read_catalog(&properties, "raw_public.t");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = read();
        if last
            .as_ref()
            .is_ok_and(|r| r["rows"].as_array().map_or(0, Vec::len) >= 250)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = sink.kill();
    let _ = sink.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let read = last.unwrap_or_else(|e| panic!("pyiceberg reads the table: {e}\nsink log:\n{text}"));
    let rows = read["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 250, "200 snapshot rows and 50 updates\nsink log:\n{text}");
    let location = read["location"].as_str().unwrap_or_default();
    assert!(location.starts_with("s3://lake/warehouse/"), "data in S3: {location}");
    let amount: f64 = rows
        .iter()
        .filter(|r| r["_op"] == "u")
        .map(|r| r["amount"].as_str().and_then(|a| a.parse::<f64>().ok()).unwrap_or(0.0))
        .sum();
    assert_eq!(amount, (1..=50).map(|g| g as f64 * 0.5 + 1.0).sum::<f64>());
    assert!(!text.contains(support::s3::SECRET_KEY), "the S3 secret is not logged");
    assert!(
        !text.contains(support::postgres::PASSWORD),
        "the catalog's password is not logged"
    );
}

/// Two instances of one group: A commits a batch's table and, frozen
/// before it moves the offsets, leaves the group; B takes the partition
/// over, writes the same records again (the table already holds them: none
/// is added) and goes on. A, thawed, is fenced at the offsets. Every
/// change is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_lost_its_partition_is_fenced_and_stores_nothing_twice() {
    support::init_logs();
    let Fed {
        pg,
        broker,
        registry,
        source,
        prefix,
        capture,
    } = feed(
        "zombie",
        "CREATE TABLE a (id int PRIMARY KEY, v int); INSERT INTO a SELECT g, 0 FROM generate_series(1, 300) g;",
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let hold = dir.path().join("hold");
    let a_log = dir.path().join("a.log");
    let mut a = sink_held_before_offsets(&lake, &broker, &registry.url, &prefix, &hold, &a_log);
    assert_eq!(iceberg_rows(&lake, "raw_public.a").len(), 300, "A's table commit");
    let _ = Command::new("kill").args(["-STOP", &a.id().to_string()]).status();

    let mut b = spawn_sink(&lake, &broker, &registry.url, &prefix, "", &dir.path().join("b.log"));
    source
        .batch_execute("INSERT INTO a SELECT g, 1 FROM generate_series(301, 400) g")
        .await
        .expect("more");
    confirmed(&pg).await;
    capture.stop().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while iceberg_rows(&lake, "raw_public.a").len() < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = Command::new("kill").args(["-CONT", &a.id().to_string()]).status();
    std::fs::remove_file(&hold).expect("release A");
    let a_text = || std::fs::read_to_string(&a_log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a_text().contains("another sink instance wrote it") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        a_text().contains("another sink instance wrote it"),
        "A was fenced at the offsets; its log:\n{}",
        a_text()
    );
    let rows = iceberg_rows(&lake, "raw_public.a");
    let mut offsets: Vec<String> = rows.iter().map(|r| r["_offset"].to_string()).collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!((rows.len(), offsets.len()), (400, 400), "every change once");
}

/// Source columns whose type grows as Iceberg allows (`int` to `bigint`,
/// `real` to `double precision`, a decimal's precision raised) widen the
/// table's fields in a new schema of the same field ids: rows before and
/// after read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_column_whose_type_grows_as_iceberg_allows_is_widened() {
    support::init_logs();
    let Fed {
        pg,
        broker,
        registry,
        source,
        prefix,
        capture,
    } = feed(
        "widen",
        "CREATE TABLE w (id int PRIMARY KEY, n int, amount numeric(5,2), r real); \
             INSERT INTO w SELECT g, g * 1000, g + 0.25, g * 0.5 FROM generate_series(1, 10) g;",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let mut sink = SinkCommand::into(
        &format!("iceberg:{}", lake.display()),
        &broker.bootstrap(),
        &registry.url,
    )
    .topics_under(&prefix, "widen")
    .with("--iceberg-commit-interval", "300ms")
    .start()
    .await;
    assert!(sink.wait_for(10, Duration::from_secs(90)).await, "the snapshot's rows");
    source
        .batch_execute(
            "ALTER TABLE w ALTER n TYPE bigint, ALTER amount TYPE numeric(9,2), ALTER r TYPE double precision; \
             INSERT INTO w VALUES (11, 5000000000, 1234567.89, 0.1);",
        )
        .await
        .expect("widen at the source");
    confirmed(&pg).await;
    capture.stop().await;
    assert!(
        sink.wait_for(11, Duration::from_secs(90)).await,
        "the row after the change: {:?}",
        sink.accounted()
    );
    let (_, dead, _) = sink.accounted();
    sink.stop().await;
    assert_eq!(dead, 0, "no dead letters");

    let read = support::python::pyiceberg_read(&lake, "raw_public.w").expect("pyiceberg reads");
    let types: Vec<(String, String)> = serde_json::from_value(read["schema"].clone()).expect("schema");
    let of = |name: &str| types.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
    assert_eq!(
        (of("n"), of("amount"), of("r")),
        (Some("long".into()), Some("decimal(9, 2)".into()), Some("double".into()))
    );
    let rows: Vec<Value> = serde_json::from_value(read["rows"].clone()).expect("rows");
    assert_eq!(rows.len(), 11);
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("row {id}"))
    };
    assert_eq!(
        (&row("3")["n"], &row("3")["amount"], &row("3")["r"]),
        (&json!("3000"), &json!("3.25"), &json!("1.5"))
    );
    assert_eq!(
        (&row("11")["n"], &row("11")["amount"], &row("11")["r"]),
        (&json!("5000000000"), &json!("1234567.89"), &json!("0.1"))
    );
}
