//! The initial snapshot against a real Postgres (15 or 18, see
//! `tests/support/postgres.rs`): rows that existed
//! before capture started arrive as reads, and together with the streamed
//! changes they give exactly the table's final state.

use walhouse_test_support as support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;
use support::command::CaptureCommand;
use support::postgres::PgServer;
use tokio::sync::watch;
use walhouse::capture::config::CaptureConfig;
use walhouse::capture::destination::stdout::JsonLines;
use walhouse::capture::{self, CaptureError, CaptureSummary};

fn config(pg: &PgServer, db: &str, slot: &str, extra: &[&str]) -> CaptureConfig {
    CaptureCommand::from(&pg.url("walhouse_scram", db))
        .with("--slot", slot)
        .with("--status-interval-ms", "200")
        .args(extra)
        .config()
}

type Task = tokio::task::JoinHandle<Result<CaptureSummary, CaptureError>>;

/// Capture writing JSON lines to `path`, in-process.
fn spawn(config: CaptureConfig, path: &std::path::Path) -> (watch::Sender<bool>, Task) {
    support::init_logs();
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
         INSERT INTO t SELECT g, 'v' || g, g / 100.0 FROM generate_series(1, 1000000) g;",
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
                    2_000_000 + i
                ))
                .await
                .expect("concurrent change");
                // Spread over the copy, not just its start.
                tokio::time::sleep(Duration::from_millis(50)).await;
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
    assert!(reads > 0 && reads <= 1_000_000, "{reads}");
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
    let touched =
        |id: i64| (id - 1) % 7 == 0 && (id - 1) / 7 < 200 || (30_000..30_200).contains(&id) || id >= 2_000_000;
    for id in 1..=1_000_000i64 {
        if !touched(id) {
            assert_eq!(events_per_key.get(&id), Some(&1), "row {id}");
        }
    }
}

/// Folds JSON-line events of a table `(id int PRIMARY KEY, v text)` by key.
fn fold(lines: &[Value], table: &str) -> BTreeMap<i64, String> {
    let mut state = BTreeMap::new();
    for l in lines.iter().filter(|l| l["table"] == table) {
        let id: i64 = l["key"]["id"].as_str().expect("key").parse().expect("int");
        match l["op"].as_str().expect("op") {
            "read" | "insert" | "update" => {
                state.insert(id, l["after"]["v"].as_str().expect("v").to_string());
            }
            "delete" => {
                state.remove(&id);
            }
            other => panic!("unexpected op {other}"),
        }
    }
    state
}

async fn table_state(sql: &tokio_postgres::Client, table: &str) -> BTreeMap<i64, String> {
    sql.query(&format!("SELECT id::bigint, v FROM {table}"), &[])
        .await
        .expect("table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Runs updates, deletes and inserts on `table` until told to stop;
/// returns how many rounds ran.
fn churn(
    sql: tokio_postgres::Client,
    table: &'static str,
    max_id: i64,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut round = 0u64;
        // Bounded: at most 20k rounds, and the caller stops it.
        while !*stop.borrow() && round < 20_000 {
            let i = round as i64;
            sql.batch_execute(&format!(
                "BEGIN; UPDATE {table} SET v = 'u{i}' WHERE id = {}; DELETE FROM {table} WHERE id = {};
                 INSERT INTO {table} VALUES ({}, 'new{i}'); COMMIT;",
                1 + (i * 7919) % max_id,
                1 + (i * 104_729 + 13) % max_id,
                max_id + 1 + i
            ))
            .await
            .expect("churn");
            round += 1;
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
        round
    })
}

async fn snapshot_phase(sql: &tokio_postgres::Client, slot: &str) -> Option<String> {
    sql.query_opt("SELECT phase FROM walhouse.snapshots WHERE slot = $1", &[&slot])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

async fn wait_phase_done(sql: &tokio_postgres::Client, slot: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if snapshot_phase(sql, slot).await.as_deref() == Some("done") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn a_cut_off_snapshot_resumes_its_missing_chunks_while_streaming() {
    let pg = PgServer::start();
    let db = pg.create_db("cut");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;")
        .await
        .expect("schema");
    let pages: i64 = sql
        .query_one("SELECT pg_relation_size('big') / 8192", &[])
        .await
        .expect("pages")
        .get(0);
    let dir = tempfile::tempdir().expect("tmp");
    let first = dir.path().join("first.jsonl");
    // Small chunks: the table is ~40 of them.
    let opts = ["--snapshot-chunk-pages", "64", "--snapshot-connections", "3"];
    let (_stop, task) = spawn(config(&pg, &db, "cut_slot", &opts), &first);
    let (stop_churn, churn_rx) = watch::channel(false);
    let churner = churn(pg.client(&db).await, "big", 300_000, churn_rx);
    // Kill capture once the snapshot is well under way (~60k rows written).
    for _ in 0..3000 {
        if std::fs::metadata(&first).map(|m| m.len()).unwrap_or(0) > 12_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    let copied = lines(&first).len();
    assert!(copied > 0 && copied < 300_000, "cut mid-snapshot: {copied} rows");
    let (done, total): (i64, i64) = {
        let r = sql
            .query_one(
                "SELECT count(*) FILTER (WHERE done_at IS NOT NULL), count(*) FROM walhouse.snapshot_chunks WHERE slot = 'cut_slot'",
                &[],
            )
            .await
            .expect("progress");
        (r.get(0), r.get(1))
    };
    assert!(total >= pages / 64, "{total} chunks planned for {pages} pages");
    assert!(
        done > 0 && done < total,
        "{done} of {total} chunks recorded done before the cut"
    );
    assert_eq!(snapshot_phase(&sql, "cut_slot").await.as_deref(), Some("copying"));
    // The slot stays: streaming resumes from its consistent point.
    assert!(pg.slot_exists(&db, "cut_slot", false).await, "the slot stays");
    assert!(
        !pg.wait_for_slot(&db, "cut_slot", true, Duration::from_millis(1)).await || {
            // The walsender of the killed capture may take a moment to go.
            tokio::time::sleep(Duration::from_secs(2)).await;
            true
        }
    );

    let second = dir.path().join("second.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "cut_slot", &opts), &second);
    assert!(
        wait_phase_done(&sql, "cut_slot", Duration::from_secs(180)).await,
        "the resumed snapshot finishes"
    );
    let _ = stop_churn.send(true);
    let rounds = churner.await.expect("churn");
    assert!(
        pg.wait_confirmed(&db, "cut_slot", Duration::from_secs(60)).await,
        "cut_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let first = lines(&first);
    let second = lines(&second);
    let incremental = second.iter().filter(|l| l["snapshot"] == "incremental").count();
    assert!(incremental > 0, "the missing chunks were read incrementally");
    assert!(
        incremental < 300_000,
        "chunks done before the cut are not read again ({incremental} rows re-read)"
    );
    let mut all = first;
    all.extend(second);
    let state = fold(&all, "big");
    let table = table_state(&sql, "big").await;
    assert!(rounds > 0);
    assert_eq!(state.len(), table.len());
    assert!(state == table, "the folded events differ from the table");
}

/// A table attached as a partition brings rows that were never changes of
/// its parent: capture notices the new partition (at start and at every lag
/// check), finds rows older than the attachment and reads the parent
/// again, so the parent's stream folds to the table. A partition created
/// empty, filled through the parent, is not a reason to read it again.
#[tokio::test]
async fn a_partition_attached_with_rows_has_them_read_into_its_parent() {
    let pg = PgServer::start();
    let db = pg.create_db("attach");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE m (id int, region text, v text NOT NULL, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         INSERT INTO m SELECT g, 'eu', 'initial' FROM generate_series(1, 100) g;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("attach.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "attach_slot", &[]), &out);
    assert!(
        wait_phase_done(&sql, "attach_slot", Duration::from_secs(60)).await,
        "initial snapshot"
    );
    // Created empty and filled through the parent: streamed, not reread.
    sql.batch_execute(
        "CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
         INSERT INTO m SELECT g, 'us', 'streamed' FROM generate_series(201, 250) g;",
    )
    .await
    .expect("empty partition");
    // Filled on its own, then attached: these rows were never changes of m.
    sql.batch_execute(
        "CREATE TABLE m_asia (id int, region text, v text NOT NULL, PRIMARY KEY (id, region));
         INSERT INTO m_asia SELECT g, 'asia', 'before attach' FROM generate_series(301, 360) g;",
    )
    .await
    .expect("table to attach");
    sql.batch_execute("ALTER TABLE m ATTACH PARTITION m_asia FOR VALUES IN ('asia')")
        .await
        .expect("attach");
    sql.batch_execute("UPDATE m SET v = 'after attach' WHERE id IN (301, 302)")
        .await
        .expect("update after attach");
    let holds = |name: &'static str| {
        let sql = &sql;
        async move {
            let partition = walhouse::postgres::publication::TableName::parse(name).expect("name");
            walhouse::postgres::partitions::holds_rows_from_before_attach(sql, &partition)
                .await
                .expect("query")
        }
    };
    assert!(!holds("public.m_us").await, "m_us's rows came through the parent");
    assert!(holds("public.m_asia").await, "m_asia held rows before it was attached");
    let folded = |lines: &[Value]| -> BTreeMap<i64, String> { fold(lines, "m") };
    // The lag check (every 10 s) finds the partition.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut state = BTreeMap::new();
    let table = table_state(&sql, "m").await;
    while std::time::Instant::now() < deadline {
        state = folded(&lines(&out));
        if state == table && snapshot_phase(&sql, "attach_slot").await.as_deref() == Some("done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    assert_eq!(
        state, table,
        "the parent's stream folds to the table, the attached rows too"
    );
    let reread: Vec<i64> = lines(&out)
        .iter()
        .filter(|l| l["snapshot"] == "incremental" && l["table"] == "m")
        .map(|l| l["key"]["id"].as_str().expect("key").parse().expect("int"))
        .collect();
    assert!(
        reread.contains(&301) && reread.contains(&360),
        "the attached partition's rows were read: {} rows",
        reread.len()
    );
    // Only m's chunks: a capture that looks for new tables while m_asia
    // still stands alone (before the ATTACH) also reads it as a table of
    // its own, which is right and not what this counts.
    let rereads: i64 = sql
        .query_one(
            "SELECT count(DISTINCT seq) FROM walhouse.snapshot_chunks \
             WHERE slot = 'attach_slot' AND table_schema = 'public' AND table_name = 'm'",
            &[],
        )
        .await
        .expect("chunks")
        .get(0);
    assert_eq!(
        rereads, 2,
        "m read twice: by the initial snapshot, and once for the attached partition"
    );
}

#[tokio::test]
async fn a_table_added_to_the_publication_is_snapshotted_while_changes_flow() {
    let pg = PgServer::start();
    let db = pg.create_db("added");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE first (id int PRIMARY KEY, v text); INSERT INTO first VALUES (1, 'a');
         CREATE TABLE later (id int PRIMARY KEY, v text);
         INSERT INTO later SELECT g, md5(g::text) FROM generate_series(1, 50000) g;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("added.jsonl");
    let opts = ["--tables", "public.first", "--snapshot-chunk-pages", "32"];
    let (stop, task) = spawn(config(&pg, &db, "added_slot", &opts), &out);
    assert!(
        wait_phase_done(&sql, "added_slot", Duration::from_secs(60)).await,
        "initial snapshot"
    );
    let (stop_churn, churn_rx) = watch::channel(false);
    let churner = churn(pg.client(&db).await, "later", 50_000, churn_rx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sql.batch_execute("ALTER PUBLICATION walhouse ADD TABLE later")
        .await
        .expect("add table");
    // Found at the next publication check (every 10 s), then read in chunks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut planned = 0i64;
    while planned == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        planned = sql
            .query_one(
                "SELECT count(*) FROM walhouse.snapshot_chunks WHERE slot = 'added_slot' AND table_name = 'later'",
                &[],
            )
            .await
            .expect("chunks")
            .get(0);
    }
    assert!(planned > 1, "the added table was planned in chunks ({planned})");
    assert!(
        wait_phase_done(&sql, "added_slot", Duration::from_secs(120)).await,
        "the added table's snapshot finishes"
    );
    let _ = stop_churn.send(true);
    let rounds = churner.await.expect("churn");
    assert!(
        pg.wait_confirmed(&db, "added_slot", Duration::from_secs(60)).await,
        "added_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let lines = lines(&out);
    assert!(rounds > 10, "changes kept flowing ({rounds} rounds)");
    assert!(
        lines.iter().any(|l| l["table"] == "later" && l["op"] == "update"),
        "live changes of the table were streamed"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["table"] == "later" && l["snapshot"] == "incremental"),
        "its rows were read incrementally"
    );
    let state = fold(&lines, "later");
    let table = table_state(&sql, "later").await;
    assert_eq!(state.len(), table.len());
    assert!(state == table, "the folded events differ from the table");
}

#[tokio::test]
async fn the_snapshot_command_rereads_a_table_through_the_slot() {
    let pg = PgServer::start();
    let db = pg.create_db("signal");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE \"Odd Table\" (id int PRIMARY KEY, v text);
         INSERT INTO \"Odd Table\" SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("signal.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "signal_slot", &[]), &out);
    assert!(
        wait_phase_done(&sql, "signal_slot", Duration::from_secs(60)).await,
        "initial snapshot"
    );
    let url = pg.url("walhouse_scram", &db);
    let ask = |tables: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_walhouse-capture"))
            .args([
                "--source-url",
                &url,
                "--slot",
                "signal_slot",
                "snapshot",
                "--tables",
                tables,
            ])
            .output()
            .expect("run walhouse-capture snapshot")
    };
    let refused = ask("public.not_published");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ALTER PUBLICATION"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let asked = ask("public.\"Odd Table\"");
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut reread = 0;
    while std::time::Instant::now() < deadline {
        reread = lines(&out).iter().filter(|l| l["snapshot"] == "incremental").count();
        if reread == 1000 && snapshot_phase(&sql, "signal_slot").await.as_deref() == Some("done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    assert_eq!(reread, 1000, "every row read again");
    let lines = lines(&out);
    assert_eq!(lines.iter().filter(|l| l["op"] == "read").count(), 2000);
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

#[tokio::test]
async fn failover_slots_are_created_on_postgres_17_and_later_and_refused_before() {
    let pg = PgServer::start();
    let db = pg.create_db("failover");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .expect("schema");
    let version = pg.version_num();
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("failover.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "fo_slot", &["--slot-failover", "true"]), &out);
    if version < 170000 {
        let err = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops by itself")
            .expect("task")
            .expect_err("no FAILOVER before Postgres 17");
        let text = err.to_string();
        assert!(
            text.contains("Postgres 17") && text.contains(&version.to_string()),
            "{text}"
        );
        assert!(!pg.slot_exists(&db, "fo_slot", false).await, "no slot left behind");
        return;
    }
    assert!(
        pg.wait_for_slot(&db, "fo_slot", true, Duration::from_secs(30)).await,
        "no active slot"
    );
    let failover: bool = sql
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = 'fo_slot'",
            &[],
        )
        .await
        .expect("slot row")
        .get(0);
    assert!(failover, "pg_replication_slots.failover is false");
    // The slot streams like any other: the snapshot row, then a change.
    sql.batch_execute("INSERT INTO t VALUES (2)").await.expect("insert");
    assert!(
        pg.wait_confirmed(&db, "fo_slot", Duration::from_secs(60)).await,
        "fo_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let ops: Vec<(String, String)> = lines(&out)
        .iter()
        .map(|l| (l["op"].as_str().unwrap_or("").to_owned(), l["after"]["id"].to_string()))
        .collect();
    assert_eq!(
        ops,
        [("read".into(), "\"1\"".into()), ("insert".into(), "\"2\"".into())],
        "{ops:?}"
    );
}

/// Postgres 18 can publish stored generated columns
/// (`publish_generated_columns = stored`): the snapshot then reads what the
/// stream carries, and a publication without it leaves them out of both.
/// Virtual generated columns (new in 18) are never published.
#[tokio::test]
async fn generated_columns_are_snapshotted_as_the_publication_streams_them() {
    let pg = PgServer::start();
    let db = pg.create_db("generated");
    let sql = pg.client(&db).await;
    if pg.version_num() < 180000 {
        eprintln!("publish_generated_columns needs Postgres 18: nothing to test here");
        return;
    }
    sql.batch_execute(
        "CREATE TABLE g (id int PRIMARY KEY, n int, doubled int GENERATED ALWAYS AS (n * 2) STORED,
                         tripled int GENERATED ALWAYS AS (n * 3) VIRTUAL);
         INSERT INTO g (id, n) VALUES (1, 10);
         CREATE PUBLICATION with_gen FOR TABLE g WITH (publish_generated_columns = stored);
         CREATE PUBLICATION without_gen FOR TABLE g;",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let mut outs = Vec::new();
    for (publication, slot) in [("with_gen", "gen_slot"), ("without_gen", "nogen_slot")] {
        let out = dir.path().join(format!("{publication}.jsonl"));
        let (stop, task) = spawn(config(&pg, &db, slot, &["--publication", publication]), &out);
        // Row 2 must come after the copy, as a streamed insert.
        assert!(
            pg.wait_streaming(&db, slot, Duration::from_secs(30)).await,
            "{slot} is not streaming"
        );
        outs.push((stop, task, out));
    }
    sql.batch_execute("INSERT INTO g (id, n) VALUES (2, 20)")
        .await
        .expect("insert");
    let mut got = Vec::new();
    for ((stop, task, out), slot) in outs.into_iter().zip(["gen_slot", "nogen_slot"]) {
        assert!(
            pg.wait_confirmed(&db, slot, Duration::from_secs(60)).await,
            "{slot} did not confirm"
        );
        let _ = stop.send(true);
        task.await.expect("task").expect("capture");
        got.push(lines(&out));
    }
    let columns = |lines: &[Value]| -> Vec<(String, Vec<String>)> {
        lines
            .iter()
            .map(|l| {
                let after = l["after"].as_object().expect("after");
                (
                    l["op"].as_str().unwrap_or("").to_owned(),
                    after
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                        .collect(),
                )
            })
            .collect()
    };
    let row = |op: &str, cols: &[&str]| (op.to_owned(), cols.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    assert_eq!(
        columns(&got[0]),
        [
            row("read", &["doubled=20", "id=1", "n=10"]),
            row("insert", &["doubled=40", "id=2", "n=20"])
        ]
    );
    assert_eq!(
        columns(&got[1]),
        [row("read", &["id=1", "n=10"]), row("insert", &["id=2", "n=20"])]
    );
}

#[tokio::test]
async fn column_lists_and_row_filters_apply_to_snapshot_and_stream_on_odd_names() {
    let pg = PgServer::start();
    let db = pg.create_db("lists");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE SCHEMA \"Odd Schema\";
         CREATE TABLE \"Odd Schema\".\"Odd.Table\" (id int PRIMARY KEY, \"Mixed Col\" text, secret text, status text);
         INSERT INTO \"Odd Schema\".\"Odd.Table\"
           SELECT g, 'm' || g, 'hide', CASE WHEN g % 2 = 0 THEN 'active' ELSE 'draft' END FROM generate_series(1, 100) g;
         CREATE TABLE victim (id int);",
    )
    .await
    .expect("schema");
    let table = "\"Odd Schema\".\"Odd.Table\"";
    let columns = format!("{table}=id,Mixed Col,status");
    let filter = format!("{table}=status <> 'draft'");
    let dir = tempfile::tempdir().expect("tmp");

    // A filter cannot carry a second statement.
    let injected = format!("{table}=true); DROP TABLE victim; --");
    let (_s, task) = spawn(
        config(
            &pg,
            &db,
            "inj_slot",
            &["--tables", table, "--table-filter", &injected, "--publication", "inj"],
        ),
        &dir.path().join("inj.jsonl"),
    );
    let err = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("task")
        .expect_err("the publication command is refused");
    assert!(
        err.to_string().contains("syntax") || err.to_string().contains("multiple"),
        "{err}"
    );
    let victim: Option<String> = sql
        .query_one("SELECT to_regclass('victim')::text", &[])
        .await
        .expect("regclass")
        .get(0);
    assert_eq!(victim.as_deref(), Some("victim"), "nothing was injected");

    let out = dir.path().join("lists.jsonl");
    let (stop, task) = spawn(
        config(
            &pg,
            &db,
            "lists_slot",
            &[
                "--tables",
                table,
                "--table-columns",
                &columns,
                "--table-filter",
                &filter,
            ],
        ),
        &out,
    );
    assert!(
        wait_phase_done(&sql, "lists_slot", Duration::from_secs(60)).await,
        "snapshot"
    );
    sql.batch_execute(
        "INSERT INTO \"Odd Schema\".\"Odd.Table\" VALUES (1000, 'new', 'hide', 'active'), (1001, 'new', 'hide', 'draft')",
    )
    .await
    .expect("insert");
    assert!(
        pg.wait_confirmed(&db, "lists_slot", Duration::from_secs(60)).await,
        "lists_slot did not confirm"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    let lines = lines(&out);
    let reads: Vec<&Value> = lines.iter().filter(|l| l["op"] == "read").collect();
    assert_eq!(reads.len(), 50, "only rows passing the filter are snapshotted");
    for l in &lines {
        assert_eq!(l["schema"], "Odd Schema");
        assert_eq!(l["table"], "Odd.Table");
        assert_eq!(l["after"]["status"], "active", "{l}");
        assert!(l["after"].get("secret").is_none(), "unlisted column left out: {l}");
        assert!(l["after"]["Mixed Col"].is_string(), "{l}");
    }
    let inserts: Vec<&Value> = lines.iter().filter(|l| l["op"] == "insert").collect();
    assert_eq!(inserts.len(), 1, "the stream applies the same filter");
    assert_eq!(inserts[0]["key"]["id"], "1000");
}

/// The snapshot's own COPY connection (protocol spoken directly, SCRAM,
/// 256 KiB reads) hands over every value exactly as the server holds it,
/// escapes and a row bigger than a read included, and reports a server
/// error with the server's words.
#[tokio::test]
async fn a_copy_session_reads_every_value_as_the_server_holds_it() {
    use walhouse::postgres::conninfo::ConnInfo;
    use walhouse::postgres::pgoutput::TupleValue;
    use walhouse::postgres::publication::TableName;
    use walhouse::postgres::snapshot::{self, CopySession, PageRange};

    let pg = PgServer::start();
    let db = pg.create_db("copy_session");
    let sql = pg.client(&db).await;
    sql.batch_execute(
        "CREATE TABLE odd (id int PRIMARY KEY, t text, b bytea);
         INSERT INTO odd VALUES
           (1, E'tab\\there', NULL),
           (2, E'new\\nline\\r\\\\back\\\\N', '\\x00ff'),
           (3, '', ''),
           (4, repeat('é', 300000), NULL),
           (5, NULL, NULL),
           (6, E'\\\\', '\\x5c');
         CREATE PUBLICATION copy_pub FOR TABLE odd;",
    )
    .await
    .expect("schema");
    let table = TableName {
        schema: "public".into(),
        name: "odd".into(),
    };
    let (relation, filter) = snapshot::describe(&sql, &table, "copy_pub").await.expect("describe");
    let info = ConnInfo::parse(&pg.url("walhouse_scram", &db)).expect("url");
    let mut session = CopySession::connect(&info).await.expect("connect");
    session.begin(None).await.expect("begin");
    let everything = PageRange { from: 0, to: None };
    let mut copied = BTreeMap::new();
    {
        let mut rows = session
            .copy(&relation, everything, filter.as_deref())
            .await
            .expect("copy");
        while let Some(row) = tokio::time::timeout(Duration::from_secs(30), rows.next())
            .await
            .expect("a row within 30 s")
            .expect("row")
        {
            let text = |v: &TupleValue| match v {
                TupleValue::Text(b) => Some(String::from_utf8(b.to_vec()).expect("UTF-8")),
                TupleValue::Null => None,
                other => panic!("unexpected {other:?}"),
            };
            let id: i32 = text(&row[0]).expect("id").parse().expect("int");
            copied.insert(id, (text(&row[1]), text(&row[2])));
        }
    }
    let expected: BTreeMap<i32, (Option<String>, Option<String>)> = sql
        .query("SELECT id, t, '\\x' || encode(b, 'hex') FROM odd", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(copied.len(), 6);
    assert_eq!(copied, expected, "COPY through the session equals SELECT");

    // A second chunk on the same session, in the same transaction: the
    // session stays in step after a complete COPY.
    let mut again = session.copy(&relation, everything, Some("id > 4")).await.expect("copy");
    let mut n = 0;
    while again.next().await.expect("row").is_some() {
        n += 1;
    }
    assert_eq!(n, 2);

    // A table that is not there: the server's error, not a protocol muddle.
    let mut missing = relation.clone();
    missing.name = "no_such_table".into();
    let mut rows = session.copy(&missing, everything, None).await.expect("query sent");
    let err = rows.next().await.expect_err("no such table").to_string();
    assert!(err.contains("no_such_table") && err.contains("does not exist"), "{err}");

    // An exported snapshot that does not exist is refused by name.
    let mut fresh = CopySession::connect(&info).await.expect("connect");
    let err = fresh
        .begin(Some("00000003-0000001B-1"))
        .await
        .expect_err("bogus snapshot")
        .to_string();
    assert!(err.contains("snapshot"), "{err}");
}

/// The slot is gone (dropped, or not synced to a standby before a
/// failover) but the source recorded the snapshot taken through it:
/// capture stops with the cause and the statements that clear the record,
/// instead of taking a new snapshot that would leave rows deleted in the
/// gap alive downstream; once cleared, it snapshots again.
#[tokio::test]
async fn a_lost_slot_with_a_recorded_snapshot_stops_capture_with_the_fix() {
    let pg = PgServer::start();
    let db = pg.create_db("lost");
    let sql = pg.client(&db).await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .expect("schema");
    let dir = tempfile::tempdir().expect("tmp");
    let first = dir.path().join("first.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "lost_slot", &[]), &first);
    assert!(
        wait_phase_done(&sql, "lost_slot", Duration::from_secs(60)).await,
        "initial snapshot"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    assert!(
        pg.wait_for_slot(&db, "lost_slot", false, Duration::from_secs(15)).await,
        "the slot exists"
    );
    // The walsender may take a moment to release the slot after the stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pg.slot_exists(&db, "lost_slot", true).await {
        assert!(std::time::Instant::now() < deadline, "the slot stayed active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sql.batch_execute("SELECT pg_drop_replication_slot('lost_slot'); DELETE FROM t WHERE id <= 5")
        .await
        .expect("slot dropped, rows deleted in the gap");
    let again = dir.path().join("again.jsonl");
    let (_stop, task) = spawn(config(&pg, &db, "lost_slot", &[]), &again);
    let err = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stops")
        .expect("task")
        .expect_err("capture refuses");
    let text = err.to_string();
    for part in [
        "replication slot \"lost_slot\" does not exist",
        "phase done",
        "DELETE FROM \"walhouse\".\"snapshot_chunks\" WHERE slot = 'lost_slot'",
        "synced and not temporary",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(lines(&again).is_empty(), "nothing was sent");
    // Cleared as the error says: a new snapshot.
    sql.batch_execute(
        "DELETE FROM walhouse.snapshot_chunks WHERE slot = 'lost_slot'; DELETE FROM walhouse.snapshots WHERE slot = 'lost_slot'",
    )
    .await
    .expect("clear");
    let third = dir.path().join("third.jsonl");
    let (stop, task) = spawn(config(&pg, &db, "lost_slot", &[]), &third);
    assert!(
        wait_phase_done(&sql, "lost_slot", Duration::from_secs(60)).await,
        "a new snapshot after clearing"
    );
    let _ = stop.send(true);
    task.await.expect("task").expect("capture");
    assert_eq!(lines(&third).iter().filter(|l| l["op"] == "read").count(), 5);
}
