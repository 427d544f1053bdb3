//! The initial snapshot against a real PostgreSQL 15: rows that existed
//! before capture started arrive as reads, and together with the streamed
//! changes they give exactly the table's final state.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use support::postgres::PgServer;
use tokio::sync::watch;
use walhouse::capture::{self, CaptureError, CaptureSummary};
use walhouse::config::{CaptureArgs, CaptureConfig};
use walhouse::output::stdout::JsonLines;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("WALHOUSE_LOG").unwrap_or_else(|_| "info".into()))
        .try_init();
}

fn config(pg: &PgServer, db: &str, slot: &str, extra: &[&str]) -> CaptureConfig {
    let url = pg.url("walhouse_scram", db);
    let mut args = vec![
        "walhouse-capture",
        "--source-url",
        &url,
        "--slot",
        slot,
        "--status-interval-ms",
        "200",
    ];
    args.extend_from_slice(extra);
    CaptureConfig::resolve(CaptureArgs::try_parse_from(args).expect("args")).expect("config")
}

type Task = tokio::task::JoinHandle<Result<CaptureSummary, CaptureError>>;

/// Capture writing JSON lines to `path`, in-process.
fn spawn(config: CaptureConfig, path: &std::path::Path) -> (watch::Sender<bool>, Task) {
    init_logs();
    let (stop, rx) = watch::channel(false);
    let path = path.to_owned();
    let task = tokio::spawn(async move {
        let file = tokio::fs::File::create(&path).await.expect("output file");
        let mut out = JsonLines::new(file);
        capture::run(&config, &mut out, rx).await
    });
    (stop, task)
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test]
async fn snapshot_and_concurrent_changes_end_in_exactly_the_table() {
    let pg = PgServer::start();
    let db = pg.create_db("snap");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
         INSERT INTO t SELECT g, 'v' || g, g / 100.0 FROM generate_series(1, 60000) g;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("changes.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "snap_slot", &[]), &out);
    // Change rows while the snapshot runs (and after): updates, deletes, inserts.
    let writer = {
        let sql = pg.client(&db).await;
        tokio::spawn(async move {
            for i in 0..200 {
                sql.batch_execute(&format!(
                    "UPDATE t SET v = 'u{i}' WHERE id = {}; DELETE FROM t WHERE id = {}; INSERT INTO t VALUES ({}, 'new', 1.5)",
                    1 + i * 7,
                    30_000 + i,
                    100_000 + i
                ))
                .await
                .expect("concurrent change");
            }
        })
    };
    writer.await.expect("writer");
    assert!(
        pg.wait_for_slot(&db, "snap_slot", false, Duration::from_secs(60)).await,
        "no slot after the snapshot"
    );
    assert!(
        pg.wait_confirmed(&db, "snap_slot", Duration::from_secs(60)).await,
        "snap_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");

    let lines = lines(&out);
    let reads = lines.iter().filter(|l| l["op"] == "read").count();
    let last: Vec<_> = lines.iter().filter(|l| l["snapshot"] == "last").collect();
    assert_eq!(last.len(), 1, "exactly one row closes the snapshot");
    assert!(reads > 0 && reads <= 60_000, "{reads}");
    // Fold every event by key: the result must be the table.
    let mut state: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let mut events_per_key: HashMap<i64, usize> = HashMap::new();
    for l in &lines {
        let id: i64 = l["key"]["id"].as_str().expect("key").parse().expect("int");
        *events_per_key.entry(id).or_default() += 1;
        match l["op"].as_str().expect("op") {
            "read" | "insert" | "update" => {
                let a = &l["after"];
                state.insert(
                    id,
                    (a["v"].as_str().expect("v").into(), a["n"].as_str().expect("n").into()),
                );
            }
            "delete" => {
                state.remove(&id);
            }
            other => panic!("unexpected op {other}"),
        }
    }
    let rows = sql
        .simple_query("SELECT id, v, n FROM t ORDER BY id")
        .await
        .expect("table");
    let table: BTreeMap<i64, (String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).expect("id").parse().expect("int"),
                (r.get(1).expect("v").to_string(), r.get(2).expect("n").to_string()),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(state.len(), table.len());
    assert!(state == table, "the folded stream differs from the table");
    // Rows nobody touched arrive exactly once.
    let touched = |id: i64| (id - 1) % 7 == 0 && (id - 1) / 7 < 200 || (30_000..30_200).contains(&id) || id >= 100_000;
    for id in 1..=60_000i64 {
        if !touched(id) {
            assert_eq!(events_per_key.get(&id), Some(&1), "row {id}");
        }
    }
}

#[tokio::test]
async fn a_snapshot_cut_off_leaves_no_slot_and_is_taken_again() {
    let pg = PgServer::start();
    let db = pg.create_db("cut");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;")
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let first = dir.path().join("first.jsonl");
    let (_stop, task) = spawn(config(&pg, &db, "cut_slot", &[]), &first);
    // Kill capture once the snapshot is under way.
    for _ in 0..600 {
        if std::fs::metadata(&first).map(|m| m.len()).unwrap_or(0) > 100_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    let copied = lines(&first).len();
    assert!(copied > 0 && copied < 300_000, "cut mid-snapshot: {copied} rows");
    // Neither the permanent slot nor (once its connection is gone) the temporary one.
    let mut gone = false;
    for _ in 0..100 {
        if !pg.slot_exists(&db, "cut_slot", false).await && !pg.slot_exists(&db, "cut_slot_snap", false).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a cut-off snapshot must leave no slot behind");
    // Start again: the whole snapshot, every row once.
    let second = dir.path().join("second.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "cut_slot", &[]), &second);
    assert!(
        pg.wait_for_slot(&db, "cut_slot", false, Duration::from_secs(120)).await,
        "the slot exists once the snapshot is durable"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let lines = lines(&second);
    assert_eq!(lines.len(), 300_000);
    let mut ids: Vec<i64> = lines
        .iter()
        .map(|l| l["key"]["id"].as_str().expect("id").parse().expect("int"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 300_000, "every row exactly once");
}

#[tokio::test]
async fn initial_only_copies_and_stops_and_never_copies_nothing() {
    let pg = PgServer::start();
    let db = pg.create_db("only");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("only.jsonl");
    let (_stop, task) = spawn(
        config(&pg, &db, "only_slot", &["--snapshot-mode", "initial_only"]),
        &out,
    );
    let summary = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stops by itself")
        .expect("task")
        .expect("capture");
    assert_eq!(summary.events, 10);
    assert_eq!(lines(&out).iter().filter(|l| l["op"] == "read").count(), 10);
    assert!(
        !pg.slot_exists(&db, "only_slot", false).await,
        "initial_only keeps no slot"
    );

    let never = dir.path().join("never.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "never_slot", &["--snapshot-mode", "never"]), &never);
    assert!(
        pg.wait_for_slot(&db, "never_slot", false, Duration::from_secs(15))
            .await,
        "no slot"
    );
    sql.batch_execute("INSERT INTO t VALUES (11)").await.expect("insert");
    assert!(
        pg.wait_confirmed(&db, "never_slot", Duration::from_secs(60)).await,
        "never_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let got = lines(&never);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["op"], "insert");
}

#[tokio::test]
async fn keyless_tables_can_be_given_replica_identity_full() {
    let pg = PgServer::start();
    let db = pg.create_db("keyless");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (1, 'x')")
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("nokey.jsonl");
    let (stop, task) = spawn(
        config(
            &pg,
            &db,
            "nokey_slot",
            &["--replica-identity-full", "true", "--snapshot-mode", "never"],
        ),
        &out,
    );
    assert!(
        pg.wait_for_slot(&db, "nokey_slot", false, Duration::from_secs(15))
            .await,
        "no slot"
    );
    let ident: String = sql
        .query_one("SELECT relreplident::text FROM pg_class WHERE relname = 'nokey'", &[])
        .await
        .expect("relreplident")
        .get(0);
    assert_eq!(ident, "f");
    // Published without an identity, Postgres would refuse this update.
    sql.batch_execute("UPDATE nokey SET b = 'y'")
        .await
        .expect("update allowed");
    assert!(
        pg.wait_confirmed(&db, "nokey_slot", Duration::from_secs(60)).await,
        "nokey_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let got = lines(&out);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["op"], "update");
    assert_eq!(
        got[0]["before"],
        serde_json::json!({"a": "1", "b": "x"}),
        "the whole old row"
    );
    assert_eq!(got[0]["after"]["b"], "y");
}
