//! walhouse-sink against real components: Postgres 15 or 18 (source and
//! warehouse), an Apache Kafka broker, DuckDB, and the Confluent-API registry of
//! the test support (or a real one when `SCHEMA_REGISTRY_URL` is set).
//! Every assertion reads back from the warehouse.

use walhouse_test_support as support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::command::{CaptureCommand, SinkCommand};
use support::kafka::{produce, Broker};
use support::pipeline::{ask, normalise, BACKEND_SCHEMA, GENERATE, QUESTIONS};
use support::postgres::PgServer;
use support::registry::TestRegistry;
use walhouse::metrics::Exposition;
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::warehouse::duckdb::DuckDbWarehouse;
use walhouse::warehouse::iceberg::IcebergWarehouse;
use walhouse::warehouse::postgres::PostgresWarehouse;
use walhouse::warehouse::Warehouse;

const LIMIT: Duration = Duration::from_secs(120);

async fn registry() -> (Option<TestRegistry>, String) {
    match std::env::var("SCHEMA_REGISTRY_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let r = TestRegistry::start().await;
            let url = r.url.clone();
            (Some(r), url)
        }
    }
}

async fn open_duckdb(path: &Path) -> DuckDbWarehouse {
    DuckDbWarehouse::open(path).expect("open the DuckDB warehouse")
}

async fn count<W: Warehouse>(w: &mut W, sql: &str) -> i64 {
    let rows = w.query_text(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows[0][0].as_deref().unwrap_or("0").parse().expect("a count")
}

/// Backend data + a stream of changes (with a column added mid-stream)
/// through capture and two sinks: the seed's questions answer the same on
/// the source, on DuckDB and on a Postgres warehouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_questions_match_on_the_source_and_both_warehouses() {
    seed_questions_match_in_format("walhouse").await;
}

/// The same through topics in the Debezium format (truncates included):
/// the sink reads Debezium's semantic types, its TOAST placeholder and its
/// envelope, so it can stand behind an existing Debezium.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_questions_match_through_the_debezium_format() {
    seed_questions_match_in_format("debezium").await;
}

async fn seed_questions_match_in_format(format: &str) {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source.batch_execute(BACKEND_SCHEMA).await.expect("schema");
    source.batch_execute(GENERATE).await.expect("data");
    // Beyond the seed: values stored out of line (TOAST) and a truncate.
    source
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int); \
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL; \
             CREATE TABLE scratch (id int PRIMARY KEY, v text); \
             INSERT INTO scratch SELECT g, 'old' FROM generate_series(1, 50) g;",
        )
        .await
        .expect("extra tables");
    let prefix = format!("walhouse.e2e{}", std::process::id());
    let source_url = pg.url("walhouse_scram", "backend");
    let capture = CaptureCommand::from(&source_url)
        .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
        .with("--format", format)
        .with("--skipped-operations", "none")
        .start();
    assert!(
        pg.wait_for_slot("backend", "walhouse", true, Duration::from_secs(60))
            .await
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let duck_path = dir.path().join("wh.duckdb");
    let duck_url = format!("duckdb:{}", duck_path.display());
    let common = |warehouse: &str, group: &str| {
        SinkCommand::into(warehouse, &broker.bootstrap(), &registry_url)
            .topics_under(&prefix, group)
            .with("--batch-ms", "200")
            .with("--batch-rows", "700")
            .with("--iceberg-commit-interval", "1s")
    };
    let mut duck = common(&duck_url, "e2e-duck").start().await;
    let mut pgw = common(&warehouse_url, "e2e-pg").start().await;
    let lake = dir.path().join("lake");
    let mut ice = common(&format!("iceberg:{}", lake.display()), "e2e-ice").start().await;

    // Inserts, updates, deletes; a PK-preserving update of the seed's
    // filters; a column added mid-stream and filled.
    for sql in [
        "INSERT INTO \"transaction\" (id, status, bank_account_id, subject_type, subject_id, amount) \
         SELECT g, g % 3, 1 + g % 60, CASE WHEN g % 2 = 0 THEN 'Transfer' ELSE 'Card' END, \
                CASE WHEN g % 2 = 0 THEN 1 + g % 400 END, g FROM generate_series(2001, 2600) g",
        "UPDATE \"transaction\" SET status = 1 WHERE id % 10 = 0",
        "UPDATE transfers SET status = 3 WHERE id % 7 = 0",
        "UPDATE beneficiaries SET bic = '4F' || bic WHERE id % 5 = 0",
        "DELETE FROM card_transactions WHERE id % 17 = 0",
        "INSERT INTO card_transactions (id, transaction_id, status, amount) \
         SELECT g, 1 + 2 * (g % 1000), 0, 1 FROM generate_series(3001, 3400) g",
        "ALTER TABLE organizations ADD COLUMN country char(2)",
        "UPDATE organizations SET country = 'FR', name = name || ' SAS' WHERE name LIKE '%1'",
        "DELETE FROM transfers WHERE id IN (SELECT id FROM transfers WHERE id NOT IN \
         (SELECT subject_id FROM \"transaction\" WHERE subject_id IS NOT NULL) LIMIT 20)",
        "INSERT INTO docs SELECT g, repeat(md5(g::text), 400), 0 FROM generate_series(1, 5) g",
        // body is not sent again: it arrives as unchanged TOAST.
        "UPDATE docs SET n = n + 1",
        "UPDATE docs SET n = n + 1 WHERE id <= 2",
        "TRUNCATE scratch",
        "INSERT INTO scratch SELECT g, 'new' FROM generate_series(40, 45) g",
    ] {
        source.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert!(pg.wait_confirmed("backend", "walhouse", Duration::from_secs(60)).await);
    let (_, produced) = capture.stop().await;
    assert!(produced > 6000, "capture produced {produced}");
    for (name, sink) in [("duckdb", &mut duck), ("postgres", &mut pgw), ("iceberg", &mut ice)] {
        assert!(
            sink.wait_for(produced, LIMIT).await,
            "{name} sink accounted for {:?} of {produced} records",
            sink.accounted()
        );
    }
    let (rows, dead, _) = duck.accounted();
    assert_eq!(dead, 0, "no dead letters expected");
    let metric = |name: &str| -> u64 {
        let text = ice.metrics.render();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let (commits, files) = (
        metric("walhouse_sink_iceberg_commits_total"),
        metric("walhouse_sink_iceberg_data_files_total"),
    );
    assert!(
        commits > 0 && files >= commits,
        "Iceberg commits {commits}, data files {files}"
    );
    duck.stop().await;
    pgw.stop().await;
    ice.stop().await;

    let expected = ask(
        &mut PostgresWarehouse::connect(&ConnInfo::parse(&source_url).expect("url"))
            .await
            .expect("source"),
    )
    .await;
    assert!(
        expected.iter().all(|q| !q.is_empty()),
        "the questions have answers on the source"
    );
    let mut dw = open_duckdb(&duck_path).await;
    assert_eq!(ask(&mut dw).await, expected, "DuckDB answers like the source");
    let mut pw = PostgresWarehouse::connect(&ConnInfo::parse(&warehouse_url).expect("url"))
        .await
        .expect("warehouse");
    assert_eq!(
        ask(&mut pw).await,
        expected,
        "the Postgres warehouse answers like the source"
    );

    // Raw tables are append-only: one row per change record.
    let raw_rows = count(&mut dw, "SELECT (SELECT count(*) FROM raw_public.organizations) + (SELECT count(*) FROM raw_public.bank_accounts) + (SELECT count(*) FROM raw_public.beneficiaries) + (SELECT count(*) FROM raw_public.transfers) + (SELECT count(*) FROM raw_public.\"transaction\") + (SELECT count(*) FROM raw_public.card_transactions) + (SELECT count(*) FROM raw_public.docs) + (SELECT count(*) FROM raw_public.scratch)").await;
    assert_eq!(raw_rows as u64, rows);
    // The column added mid-stream is in the warehouse, raw and latest.
    let fr_source: i64 = source
        .query_one("SELECT count(*) FROM organizations WHERE country = 'FR'", &[])
        .await
        .expect("count")
        .get(0);
    assert!(fr_source > 0);
    let fr = "SELECT count(*) FROM public.organizations WHERE country = 'FR'";
    assert_eq!(count(&mut dw, fr).await, fr_source);
    assert_eq!(count(&mut pw, fr).await, fr_source);
    // Latest state equals the source table by table (row counts).
    for table in [
        "organizations",
        "bank_accounts",
        "beneficiaries",
        "transfers",
        "\"transaction\"",
        "card_transactions",
    ] {
        let n: i64 = source
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            count(&mut dw, &format!("SELECT count(*) FROM public.{table}")).await,
            n,
            "{table} in DuckDB"
        );
        assert_eq!(
            count(&mut pw, &format!("SELECT count(*) FROM public.{table}")).await,
            n,
            "{table} in Postgres"
        );
    }

    // Unchanged TOAST carried forward from the row's earlier version, and
    // nothing from before the truncate.
    let docs_sql = "SELECT id, md5(body), n FROM public.docs ORDER BY id";
    let docs: Vec<Vec<Option<String>>> = source
        .query(docs_sql, &[])
        .await
        .expect("docs")
        .iter()
        .map(|r| {
            vec![
                Some(r.get::<_, i32>(0).to_string()),
                r.get(1),
                Some(r.get::<_, i32>(2).to_string()),
            ]
        })
        .collect();
    assert_eq!(docs.len(), 5);
    let unchanged = count(
        &mut dw,
        "SELECT count(*) FROM raw_public.docs WHERE _unchanged_toast LIKE '%body%'",
    )
    .await;
    assert_eq!(unchanged, 7, "updates that left body out");
    assert_eq!(dw.query_text(docs_sql).await.expect("docs"), docs);
    assert_eq!(pw.query_text(docs_sql).await.expect("docs"), docs);
    let scratch = "SELECT count(*), min(v), max(v) FROM public.scratch";
    let want = vec![vec![
        Some("6".to_string()),
        Some("new".to_string()),
        Some("new".to_string()),
    ]];
    assert_eq!(dw.query_text(scratch).await.expect("scratch"), want);
    assert_eq!(pw.query_text(scratch).await.expect("scratch"), want);

    // Insolvency CSV joins into organizations_with_insolvency.
    let csv = dir.path().join("insolvent.csv");
    std::fs::write(
        &csv,
        "organization_id,insolvency_date\n00000000-0000-4000-8000-000000000003,2024-05-01\n",
    )
    .expect("csv");
    walhouse::sink::insolvency::load_file(&mut dw, &csv)
        .await
        .expect("load");
    let rows = dw
        .query_text(
            "SELECT CAST(latest_insolvency_ts AS DATE) FROM public.organizations_with_insolvency \
             WHERE id = '00000000-0000-4000-8000-000000000003'",
        )
        .await
        .expect("view");
    assert_eq!(rows, vec![vec![Some("2024-05-01".to_string())]]);

    // The same over the Iceberg tables, read by DuckDB through the views
    // `walhouse-sink duckdb-views` prints.
    let mut lake_w = IcebergWarehouse::open(&lake).await.expect("iceberg");
    walhouse::sink::insolvency::load_file(&mut lake_w, &csv)
        .await
        .expect("load into iceberg");
    let script = lake_w.duckdb_script().await.expect("script");
    let mut queries: Vec<&str> = QUESTIONS.iter().map(|(_, _, duck)| *duck).collect();
    queries.extend([
        docs_sql,
        scratch,
        "SELECT CAST(latest_insolvency_ts AS DATE) FROM public.organizations_with_insolvency \
         WHERE id = '00000000-0000-4000-8000-000000000003'",
        "SELECT count(*) FROM public.organizations WHERE country = 'FR'",
    ]);
    let answers = support::python::duckdb_script_queries(&script, &queries).expect("DuckDB over Iceberg");
    let (questions, rest) = answers.split_at(QUESTIONS.len());
    let questions: Vec<_> = questions.iter().cloned().map(normalise).collect();
    assert_eq!(
        questions, expected,
        "DuckDB over the Iceberg tables answers like the source"
    );
    assert_eq!(rest[0], docs, "unchanged TOAST carried forward on Iceberg");
    assert_eq!(rest[1], want, "the truncate on Iceberg");
    assert_eq!(rest[2], vec![vec![Some("2024-05-01".to_string())]]);
    assert_eq!(rest[3], vec![vec![Some(fr_source.to_string())]]);
}

fn company(key: &str, event: &str, id: &str, org: &str, name: &str, created: i64, updated: i64) -> String {
    serde_json::json!({
        "idempotency_key": key, "event": event, "id": id, "organization_id": org, "name": name,
        "created_at": created, "updated_at": updated,
        "changes": serde_json::json!({"name": {"from": null, "to": name}}).to_string(),
    })
    .to_string()
}

/// Company events with every inconsistency the spec lists, duplicates and
/// malformed messages; CDC records with an unknown schema id, no wire
/// header, or a schema id the registry answers for with no schema (a 200
/// it cannot parse, a bare 404): all stored or dead-lettered with the
/// reason, counts exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn company_events_are_stored_as_received_or_dead_lettered() {
    support::init_logs();
    let broker = Broker::start();
    let (reg, registry_url) = registry().await;
    let (a, b) = (
        "3b0c7f52-9d7e-4a51-8f0e-2c1d6a4b9e01",
        "9e1d2c3b-0000-4000-8000-00000000000b",
    );
    let (org1, org2) = (
        "a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a",
        "a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5b",
    );
    let good = [
        company("a-created", "created", a, org1, "Acme", 1000, 1000),
        // name disagrees with changes; created_at == updated_at on update
        company("a-updated-1", "updated", a, org1, "Acme Tools", 1000, 2000)
            .replace("\\\"to\\\":\\\"Acme Tools\\\"", "\\\"to\\\":\\\"Acme Tooling\\\""),
        // same company under another organization, delivered out of order (older)
        company("a-updated-0", "updated", a, org2, "Acme Old", 1500, 1500),
        // a re-sent event: same idempotency key
        company("a-updated-1", "updated", a, org1, "Acme Tools", 1000, 2000),
        company("b-created", "created", b, org2, "Beta", 3000, 3000),
        // a tie on updated_at: the later ingestion wins
        company("b-updated", "updated", b, org2, "Beta Two", 3000, 3000),
    ];
    let bad: [(&str, String); 4] = [
        ("malformed JSON", "{\"event\": \"created\",".to_string()),
        (
            "missing field id",
            company("x", "created", a, org1, "X", 1, 1).replace(&format!("\"id\":\"{a}\","), ""),
        ),
        (
            "changes does not hold JSON",
            company("y", "created", a, org1, "Y", 1, 1).replace("\"changes\":\"{", "\"changes\":\"oops{"),
        ),
        (
            "is not a number of seconds",
            company("z", "created", a, org1, "Z", 1, 1).replace("\"created_at\":1", "\"created_at\":\"1\""),
        ),
    ];
    let mut messages: Vec<(Option<&str>, &[u8])> = good.iter().map(|m| (Some(a), m.as_bytes())).collect();
    messages.extend(bad.iter().map(|(_, m)| (None, m.as_bytes())));
    produce(&broker.bootstrap(), "companies", &messages);
    // A CDC topic: an unknown schema id, and a message without the wire header.
    let unknown_id: &[u8] = &[0, 0x7F, 0xFF, 0xFF, 0xF0, 1, 2, 3];
    let mut cdc: Vec<(Option<&str>, &[u8])> = vec![(None, unknown_id), (None, b"plain text")];
    // A registry broken for one schema id each: a 200 whose body is no
    // schema answer, and a 404 without Confluent's error code.
    let broken_200: &[u8] = &[0, 0x7F, 0xFF, 0xFF, 0xF1, 1, 2, 3];
    let bare_404: &[u8] = &[0, 0x7F, 0xFF, 0xFF, 0xF2, 1, 2, 3];
    if let Some(r) = &reg {
        r.break_id(0x7FFF_FFF1, 200, "<html>welcome</html>");
        r.break_id(0x7FFF_FFF2, 404, "<html>Not Found</html>");
        cdc.extend([(None, broken_200), (None, bare_404)]);
    }
    let cdc_bad = cdc.len();
    produce(&broker.bootstrap(), "walhouse.public.ghost", &cdc);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("companies.duckdb");
    let url = format!("duckdb:{}", path.display());
    let mut sink = SinkCommand::into(&url, &broker.bootstrap(), &registry_url)
        .with("--batch-ms", "200")
        .start()
        .await;
    let total = (good.len() + bad.len() + cdc_bad) as u64;
    assert!(
        sink.wait_for(total, LIMIT).await,
        "accounted {:?} of {total}",
        sink.accounted()
    );
    let (rows, dead, _) = sink.accounted();
    assert_eq!((rows, dead), (good.len() as u64, (bad.len() + cdc_bad) as u64));
    sink.stop().await;

    let mut w = open_duckdb(&path).await;
    assert_eq!(
        count(&mut w, "SELECT count(*) FROM raw.company_events").await,
        good.len() as i64
    );
    // Stored as received: the raw message and what was parsed.
    let raw = w
        .query_text("SELECT raw, name, changes FROM raw.company_events WHERE idempotency_key = 'a-updated-1' ORDER BY _offset LIMIT 1")
        .await
        .expect("raw");
    assert_eq!(raw[0][0].as_deref(), Some(good[1].as_str()));
    assert_eq!(raw[0][1].as_deref(), Some("Acme Tools"));
    assert!(raw[0][2].as_deref().unwrap_or_default().contains("Acme Tooling"));
    let latest = w
        .query_text("SELECT id, organization_id, name FROM public.companies_latest ORDER BY id")
        .await
        .expect("companies_latest");
    assert_eq!(
        latest,
        vec![
            vec![Some(a.into()), Some(org1.into()), Some("Acme Tools".into())],
            vec![Some(b.into()), Some(org2.into()), Some("Beta Two".into())],
        ]
    );
    let letters = w
        .query_text("SELECT source, topic, error FROM walhouse.dead_letters ORDER BY topic, \"offset\"")
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), bad.len() + cdc_bad);
    // Unkeyed messages spread over partitions: match reasons, not order.
    let companies: Vec<&str> = letters
        .iter()
        .filter(|l| l[0].as_deref() == Some("companies"))
        .map(|l| l[2].as_deref().unwrap_or_default())
        .collect();
    assert_eq!(companies.len(), bad.len());
    for (reason, _) in &bad {
        assert!(
            companies.iter().any(|e| e.contains(reason)),
            "no dead letter says {reason}: {companies:?}"
        );
    }
    let cdc: Vec<&str> = letters[bad.len()..]
        .iter()
        .map(|l| l[2].as_deref().unwrap_or_default())
        .collect();
    assert!(
        cdc.iter().any(|e| e.contains("unknown to the schema registry")),
        "{cdc:?}"
    );
    assert!(cdc.iter().any(|e| e.contains("Confluent wire format")), "{cdc:?}");
    if cdc_bad > 2 {
        for (id, says) in [(0x7FFF_FFF1u32, "unexpected answer"), (0x7FFF_FFF2, "HTTP 404")] {
            assert!(
                cdc.iter()
                    .any(|e| e.contains(&format!("schema id {id}")) && e.contains(says)),
                "no dead letter for schema id {id} says {says}: {cdc:?}"
            );
        }
    }
    // Offsets stored in the warehouse cover every message.
    assert_eq!(
        count(&mut w, "SELECT sum(next_offset) FROM walhouse.offsets").await,
        total as i64
    );
}

fn sink_binary(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_walhouse-sink"))
        .args(args)
        .env("WALHOUSE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("walhouse-sink starts")
}

/// The sink binary killed with SIGKILL in the middle of batches, three
/// times, then run to the end: every Kafka message is in the raw table
/// exactly once (Postgres warehouse, read while the sink runs), and then
/// the same for DuckDB (read after the last run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_sink_neither_loses_nor_duplicates() {
    support::init_logs();
    let pg = PgServer::start();
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    const N: usize = 30_000;
    let bodies: Vec<String> = (0..N)
        .map(|i| {
            company(
                &format!("k{i}"),
                "created",
                &format!("id-{}", i % 997),
                "org",
                &format!("n{i}"),
                i as i64,
                i as i64,
            )
        })
        .collect();
    let messages: Vec<(Option<&str>, &[u8])> = bodies.iter().map(|b| (None, b.as_bytes())).collect();
    produce(&broker.bootstrap(), "companies", &messages);

    let dir = tempfile::tempdir().expect("tempdir");
    let duck_url = format!("duckdb:{}", dir.path().join("kill.duckdb").display());
    for (warehouse, group) in [(warehouse_url.as_str(), "kill-pg"), (duck_url.as_str(), "kill-duck")] {
        let args = SinkCommand::into(warehouse, &broker.bootstrap(), &registry_url)
            .with("--group-id", group)
            .with("--batch-rows", "250")
            .with("--batch-ms", "100");
        let is_pg = warehouse.starts_with("postgres");
        for round in 0..3 {
            let port = support::postgres::free_port();
            let run_args = args.clone().with("--metrics-addr", format!("127.0.0.1:{port}"));
            let mut child = sink_binary(run_args.argv());
            // Kill once this run has written rows: mid-stream. (DuckDB's
            // file cannot be read while the sink holds it, so the run's
            // own /metrics say when.)
            let deadline = Instant::now() + LIMIT;
            if is_pg {
                let mut w = PostgresWarehouse::connect(&ConnInfo::parse(warehouse).expect("url"))
                    .await
                    .expect("wh");
                let before = count_or_zero(&mut w, "SELECT count(*) FROM raw.company_events").await;
                while count_or_zero(&mut w, "SELECT count(*) FROM raw.company_events").await <= before {
                    assert!(Instant::now() < deadline, "round {round}: no progress");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                while rows_metric(port) == 0 {
                    assert!(Instant::now() < deadline, "round {round}: no progress");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
        if is_pg {
            let mut child = sink_binary(args.argv());
            let mut w = PostgresWarehouse::connect(&ConnInfo::parse(warehouse).expect("url"))
                .await
                .expect("wh");
            let deadline = Instant::now() + LIMIT;
            while count_or_zero(&mut w, "SELECT count(*) FROM raw.company_events").await < N as i64 {
                assert!(Instant::now() < deadline, "the last run did not finish");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // A moment more: nothing beyond N may arrive.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = child.kill();
            let _ = child.wait();
            assert_exactly_once(&mut w, N).await;
        } else {
            // The file is free between runs: what the killed runs stored,
            // then the last run's own row count from its /metrics.
            let stored = {
                let mut w = open_duckdb(&dir.path().join("kill.duckdb")).await;
                count_or_zero(&mut w, "SELECT count(*) FROM raw.company_events").await
            };
            assert!(
                stored > 0 && stored < N as i64,
                "the kills landed mid-stream ({stored} rows)"
            );
            let port = support::postgres::free_port();
            let with_metrics = args.clone().with("--metrics-addr", format!("127.0.0.1:{port}"));
            let mut child = sink_binary(with_metrics.argv());
            let deadline = Instant::now() + LIMIT;
            while stored + rows_metric(port) < N as i64 {
                assert!(
                    Instant::now() < deadline,
                    "the last run did not finish ({stored} + {})",
                    rows_metric(port)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
            let mut w = open_duckdb(&dir.path().join("kill.duckdb")).await;
            assert_exactly_once(&mut w, N).await;
        }
    }
}

/// `walhouse_sink_rows_total` of a running sink binary (0 until it answers).
fn rows_metric(port: u16) -> i64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("walhouse_sink_rows_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn count_or_zero<W: Warehouse>(w: &mut W, sql: &str) -> i64 {
    match w.query_text(sql).await {
        Ok(rows) => rows[0][0].as_deref().unwrap_or("0").parse().unwrap_or(0),
        Err(_) => 0, // the table does not exist yet
    }
}

async fn assert_exactly_once<W: Warehouse>(w: &mut W, n: usize) {
    let rows = w
        .query_text(
            "SELECT count(*), count(DISTINCT idempotency_key), \
             (SELECT count(*) FROM (SELECT DISTINCT _partition, _offset FROM raw.company_events) AS d) \
             FROM raw.company_events",
        )
        .await
        .expect("counts");
    let n = n as i64;
    let want = vec![Some(n.to_string()); 3];
    assert_eq!(rows[0], want, "{}: every message exactly once", w.describe());
    // Offsets start at 0 and have no gaps here: the stored next offsets add up to N.
    assert_eq!(
        count(
            w,
            "SELECT sum(next_offset) FROM walhouse.offsets WHERE topic = 'companies'"
        )
        .await,
        n
    );
}

/// `load-insolvencies` (the binary) twice on the same file: the second run
/// adds nothing; bad lines are dead letters with file and line.
#[test]
fn insolvency_csv_loads_once_with_bad_lines_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("insolvent-2024-05-01.csv");
    std::fs::write(
        &csv,
        "organization_id,insolvency_date,court\n\
         00000000-0000-4000-8000-000000000001,2024-05-01,Paris\n\
         00000000-0000-4000-8000-000000000002,2024-05-01T09:30:00Z,\"Lyon, 2e\"\n\
         not-a-uuid,2024-05-01,Nice\n\
         00000000-0000-4000-8000-000000000004,tomorrow,Nice\n",
    )
    .expect("csv");
    let warehouse = format!("duckdb:{}", dir.path().join("csv.duckdb").display());
    let load = || {
        let out = Command::new(env!("CARGO_BIN_EXE_walhouse-sink"))
            .args(["--warehouse", &warehouse, "load-insolvencies"])
            .arg(dir.path())
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = load();
    assert!(first.contains("2 rows, 2 dead letters"), "{first}");
    let second = load();
    assert!(second.contains("loaded before, nothing added"), "{second}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut w = open_duckdb(&dir.path().join("csv.duckdb")).await;
        assert_eq!(count(&mut w, "SELECT count(*) FROM raw.insolvencies").await, 2);
        let extra = w
            .query_text("SELECT extra FROM raw.insolvencies WHERE _line = 3")
            .await
            .expect("extra");
        assert_eq!(extra[0][0].as_deref(), Some(r#"{"court":"Lyon, 2e"}"#));
        let dead = w
            .query_text("SELECT file, line, error FROM walhouse.dead_letters ORDER BY line")
            .await
            .expect("dead");
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0][1].as_deref(), Some("4"));
        assert!(dead[0][0]
            .as_deref()
            .unwrap_or_default()
            .ends_with("insolvent-2024-05-01.csv"));
        assert!(dead[0][2].as_deref().unwrap_or_default().contains("not a UUID"));
        assert_eq!(dead[1][1].as_deref(), Some("5"));
        assert_eq!(count(&mut w, "SELECT count(*) FROM walhouse.file_loads").await, 1);
    });
}

/// A writer schema that changes a column's type incompatibly is refused
/// with the table, column, both types and the fix; a new column is added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_column_changes_are_refused_and_new_columns_added() {
    use walhouse::sink::tables::{TableError, Tables};
    use walhouse::warehouse::{ColumnDef, SqlType, TableDef, TableRef};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = open_duckdb(&dir.path().join("evolve.duckdb")).await;
    let table = TableRef::new("raw_public", "things");
    let def = |cols: Vec<ColumnDef>| TableDef {
        table: table.clone(),
        columns: cols,
    };
    let mut tables = Tables::default();
    let v1 = def(vec![
        ColumnDef::new("id", SqlType::BigInt),
        ColumnDef::new("n", SqlType::Integer),
    ]);
    assert!(tables.ensure(&mut w, &v1).await.expect("created"));
    let v2 = def(vec![
        ColumnDef::new("id", SqlType::BigInt),
        ColumnDef::new("n", SqlType::Integer),
        ColumnDef::new("note", SqlType::Text),
    ]);
    assert!(tables.ensure(&mut w, &v2).await.expect("widened"));
    let cols = w.columns(&table).await.expect("columns").expect("table");
    assert_eq!(
        cols.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["id", "n", "note"]
    );
    let v3 = def(vec![
        ColumnDef::new("id", SqlType::BigInt),
        ColumnDef::new("n", SqlType::Text),
    ]);
    let err = Tables::default().ensure(&mut w, &v3).await.expect_err("incompatible");
    assert!(matches!(err, TableError::Incompatible { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("column n of raw_public.things") && text.contains("INTEGER") && text.contains("Fix:"),
        "{text}"
    );
}

/// A value the Postgres warehouse cannot store (a NUL character in a JSON
/// string) is a dead letter, not a failed batch: the events around it land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_postgres_cannot_store_is_a_dead_letter() {
    support::init_logs();
    let pg = PgServer::start();
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let org = "a7e4d0c3-5b2f-4c8e-9a61-0f3e2d1c4b5a";
    let events = [
        company("before", "created", "c1", org, "Fine", 1, 1),
        company("nul", "created", "c2", org, "Bad\u{0}Name", 1, 1),
        company("after", "created", "c3", org, "Also fine", 1, 1),
    ];
    let messages: Vec<(Option<&str>, &[u8])> = events.iter().map(|e| (Some("k"), e.as_bytes())).collect();
    produce(&broker.bootstrap(), "companies", &messages);
    let mut sink = SinkCommand::into(&warehouse_url, &broker.bootstrap(), &registry_url)
        .with("--batch-ms", "200")
        .start()
        .await;
    assert!(sink.wait_for(3, LIMIT).await, "accounted {:?}", sink.accounted());
    assert_eq!(sink.accounted().0, 2);
    sink.stop().await;
    let mut w = PostgresWarehouse::connect(&ConnInfo::parse(&warehouse_url).expect("url"))
        .await
        .expect("warehouse");
    let names = w
        .query_text("SELECT name FROM raw.company_events ORDER BY _offset")
        .await
        .expect("rows");
    assert_eq!(
        names,
        vec![vec![Some("Fine".to_string())], vec![Some("Also fine".to_string())]]
    );
    let dead = w
        .query_text("SELECT error, length(raw) > 0 FROM walhouse.dead_letters")
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0][0].as_deref().unwrap_or_default().contains("NUL character"),
        "{dead:?}"
    );
    assert_eq!(dead[0][1].as_deref(), Some("t"));
}

/// Several sink instances of one consumer group share one Postgres
/// warehouse while partitions move between them: instances started,
/// stopped cleanly and crashed (aborted) between waves of events. Every
/// event lands exactly once, the stored offsets cover every message, and
/// the fenced batches are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinks_in_one_group_share_a_postgres_warehouse_through_rebalances() {
    support::init_logs();
    let pg = PgServer::start();
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    support::kafka::create_topic(&broker.bootstrap(), "companies", 4);
    const WAVE: usize = 4_000;
    let wave = |w: usize| {
        let bodies: Vec<(String, String)> = (w * WAVE..(w + 1) * WAVE)
            .map(|i| {
                (
                    format!("key{i}"),
                    company(
                        &format!("k{i}"),
                        "created",
                        &format!("id-{i}"),
                        "org",
                        &format!("n{i}"),
                        1,
                        1,
                    ),
                )
            })
            .collect();
        let messages: Vec<(Option<&str>, &[u8])> =
            bodies.iter().map(|(k, b)| (Some(k.as_str()), b.as_bytes())).collect();
        produce(&broker.bootstrap(), "companies", &messages);
    };
    let args = SinkCommand::into(&warehouse_url, &broker.bootstrap(), &registry_url)
        .with("--group-id", "shared")
        .with("--batch-rows", "300")
        .with("--batch-ms", "100");
    let mut w = PostgresWarehouse::connect(&ConnInfo::parse(&warehouse_url).expect("url"))
        .await
        .expect("warehouse");
    let mut fenced = 0;
    let a = args.start().await;
    wave(0);
    assert!(wait_rows(&mut w, WAVE / 2).await, "A stores");
    let b = args.start().await;
    wave(1);
    assert!(wait_rows(&mut w, WAVE + WAVE / 2).await, "A and B store");
    let c = args.start().await;
    wave(2);
    // A leaves cleanly mid-wave; B crashes.
    fenced += a.metrics.fenced();
    a.stop().await;
    assert!(wait_rows(&mut w, 2 * WAVE + WAVE / 2).await, "B and C store");
    fenced += b.metrics.fenced();
    b.abort();
    wave(3);
    let d = args.start().await;
    assert!(wait_rows(&mut w, 4 * WAVE).await, "C and D store everything");
    // Settle: every partition's stored offset reaches its end.
    let deadline = Instant::now() + LIMIT;
    while count_or_zero(
        &mut w,
        "SELECT coalesce(sum(next_offset), 0) FROM walhouse.offsets WHERE consumer_group = 'shared'",
    )
    .await
        < (4 * WAVE) as i64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fenced += c.metrics.fenced() + d.metrics.fenced();
    c.stop().await;
    d.stop().await;
    assert_exactly_once(&mut w, 4 * WAVE).await;
    println!("4 sink instances, 4 waves of {WAVE} events over 4 partitions: {fenced} fenced batches");
}

/// Waits (bounded) until `raw.company_events` holds at least `n` rows.
async fn wait_rows<W: Warehouse>(w: &mut W, n: usize) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if count_or_zero(w, "SELECT count(*) FROM raw.company_events").await >= n as i64 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Capture's resends (a restarted capture sends again from its last
/// confirmed LSN) are stored once. Made deterministic with a second slot,
/// created before the workload, whose capture sends every change again into
/// the same topic after the first capture's: the same changes at the same
/// source positions, then new changes behind them in the same partitions.
/// The sink stores the first copies, stops, and on restart loads its
/// high-water positions from the warehouse, skips every resent one and
/// stores the new ones; a key change's two records, a multi-row statement
/// and a truncate keep their own positions. A `test_decoding` slot made
/// before anything ran counts the WAL's changes. Both warehouse targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_sent_again_are_stored_once() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await
        .expect("table");
    // A slot cannot be made in a transaction that wrote.
    source
        .batch_execute("SELECT pg_create_logical_replication_slot('again', 'pgoutput')")
        .await
        .expect("second slot");
    source
        .batch_execute("SELECT pg_create_logical_replication_slot('oracle', 'test_decoding')")
        .await
        .expect("oracle slot");
    let prefix = format!("walhouse.again{}", std::process::id());
    let source_url = pg.url("walhouse_scram", "backend");
    let capture_args = |slot: &str| {
        CaptureCommand::from(&source_url)
            .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
            .args(&["--slot", slot, "--snapshot-mode", "never", "--topic-partitions", "3"])
    };
    let capture = capture_args("walhouse").start();
    assert!(pg.wait_for_slot("backend", "walhouse", true, LIMIT).await);
    for sql in [
        "INSERT INTO t SELECT g, g FROM generate_series(1, 300) g",
        "UPDATE t SET v = v + 1 WHERE id % 3 = 0",
        "UPDATE t SET id = id + 1000 WHERE id % 50 = 0",
        "DELETE FROM t WHERE id % 7 = 0",
        "BEGIN; INSERT INTO t VALUES (5000, 1); UPDATE t SET v = 2 WHERE id = 5000; UPDATE t SET v = 3 WHERE id = 5000; COMMIT",
        "TRUNCATE t",
        "INSERT INTO t SELECT g, -g FROM generate_series(1, 40) g",
    ] {
        source.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert!(pg.wait_confirmed("backend", "walhouse", LIMIT).await);
    let (_, produced) = capture.stop().await;
    // Records: one per change, plus a tombstone after each delete.
    let first_changes = wal_records(&source).await as u64;
    let warehouses = [
        (
            "duckdb",
            format!(
                "duckdb:{}",
                tempfile::tempdir().expect("dir").keep().join("w.duckdb").display()
            ),
        ),
        ("postgres", warehouse_url.clone()),
    ];
    let sink_args = |name: &str, warehouse: &str| {
        // Small batches: a batch boundary falls inside the resent run.
        SinkCommand::into(warehouse, &broker.bootstrap(), &registry_url)
            .topics_under(&prefix, &format!("again-{name}"))
            .with("--batch-rows", "50")
    };
    // One sink run until `records` are accounted for: (rows stored,
    // changes skipped as stored, skipped per partition label).
    let run_sink = |args: SinkCommand, records: u64| async move {
        let mut sink = args.start().await;
        assert!(
            sink.wait_for(records, LIMIT).await,
            "{:?} of {records}",
            sink.accounted()
        );
        let (stored, dead, _) = sink.accounted();
        assert_eq!(dead, 0, "no dead letters");
        let mut per_partition: BTreeMap<String, u64> = BTreeMap::new();
        for line in sink.metrics.render().lines() {
            if let Some(rest) = line.strip_prefix("walhouse_sink_duplicates_total{") {
                let (labels, n) = rest.split_once("} ").expect("a sample");
                *per_partition.entry(labels.to_owned()).or_default() += n.parse::<u64>().expect("a count");
            }
        }
        let duplicates = sink.metrics.duplicates();
        sink.stop().await;
        (stored, duplicates, per_partition)
    };
    // DuckDB's sink stores the first copies, stops, and meets the resent
    // and new ones after a restart (its marks loaded from the warehouse).
    let (duck_rows, duck_duplicates, _) = run_sink(sink_args("duckdb", &warehouses[0].1), produced).await;
    assert_eq!(
        (duck_rows, duck_duplicates),
        (first_changes, 0),
        "nothing was sent twice yet"
    );
    // The second slot's capture sends every change again, then the new
    // ones after them, in the same partitions.
    let resend = capture_args("again").start();
    assert!(pg.wait_confirmed("backend", "again", LIMIT).await);
    for sql in [
        "UPDATE t SET v = v - 1 WHERE id <= 20",
        "INSERT INTO t SELECT g, -g FROM generate_series(41, 60) g",
        "UPDATE t SET id = id + 2000 WHERE id = 2",
        "DELETE FROM t WHERE id = 1",
    ] {
        source.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert!(pg.wait_confirmed("backend", "again", LIMIT).await);
    let (_, resent) = resend.stop().await;
    let changes = wal_records(&source).await;
    let new = changes as u64 - first_changes;
    assert!(new >= 40, "new changes followed the resent ones ({new})");
    assert!(
        resent >= produced + new,
        "the second capture sent every record again, then the new ones"
    );
    let source_state: (i64, i64) = {
        let r = source
            .query_one("SELECT count(*), COALESCE(sum(v), 0)::int8 FROM t", &[])
            .await
            .expect("state");
        (r.get(0), r.get(1))
    };
    let (duck_more, duck_skipped, duck_partitions) = run_sink(sink_args("duckdb", &warehouses[0].1), resent).await;
    // Postgres's sink reads everything in one run.
    let pg_run = run_sink(sink_args("postgres", &warehouses[1].1), produced + resent).await;
    for ((name, warehouse), (rows, duplicates, per_partition)) in warehouses
        .iter()
        .zip([(duck_rows + duck_more, duck_skipped, duck_partitions), pg_run])
    {
        assert_eq!(duplicates, first_changes, "{name}: every resent change was skipped");
        assert_eq!(
            rows,
            first_changes + new,
            "{name}: the first copies and the new changes were stored"
        );
        assert_eq!(
            per_partition.len(),
            3,
            "{name}: skipped changes are counted per partition: {per_partition:?}"
        );
        assert_eq!(
            per_partition.values().sum::<u64>(),
            duplicates,
            "{name}: {per_partition:?}"
        );
        let raw_sql = "SELECT count(*) FROM raw_public.t";
        let distinct_sql = "SELECT count(*) FROM (SELECT DISTINCT _commit_lsn, _tx_ordinal FROM raw_public.t) d";
        let latest_sql = "SELECT count(*), COALESCE(sum(v), 0) FROM public.t";
        let (raw, distinct, latest) = if *name == "duckdb" {
            let path = warehouse.trim_start_matches("duckdb:");
            let mut d = open_duckdb(Path::new(path)).await;
            (
                count(&mut d, raw_sql).await,
                count(&mut d, distinct_sql).await,
                d.query_text(latest_sql).await.expect("view"),
            )
        } else {
            let mut p = PostgresWarehouse::connect(&ConnInfo::parse(warehouse).expect("url"))
                .await
                .expect("warehouse");
            (
                count(&mut p, raw_sql).await,
                count(&mut p, distinct_sql).await,
                p.query_text(latest_sql).await.expect("view"),
            )
        };
        assert_eq!(raw, changes, "{name}: one raw row per change in the WAL");
        assert_eq!(distinct, raw, "{name}: no two raw rows share a source position");
        assert_eq!(
            (latest[0][0].clone(), latest[0][1].clone()),
            (Some(source_state.0.to_string()), Some(source_state.1.to_string())),
            "{name}: the latest state is the source's"
        );
        println!("{name}: {rows} changes stored once, {duplicates} resent records skipped as stored");
    }
}

/// The records capture writes for the WAL's changes so far, by the
/// `oracle` test_decoding slot: one per change, and two for an update that
/// changes the key (a delete and a create).
async fn wal_records(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "SELECT count(*) + count(*) FILTER (WHERE data LIKE '%: UPDATE: old-key:%') \
         FROM pg_logical_slot_peek_changes('oracle', NULL, NULL) WHERE data LIKE 'table public.t: %'",
        &[],
    )
    .await
    .expect("oracle")
    .get(0)
}

/// A sink killed right after it made or altered its DuckDB tables opens the
/// file again: DuckDB cannot replay DDL from its WAL when the file is the
/// default database (duckdb/duckdb#19712, #20543), so the warehouse is
/// attached to an in-memory default one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_after_its_ddl_opens_its_duckdb_again() {
    support::init_logs();
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ddl.duckdb");
    let args = SinkCommand::into(
        &format!("duckdb:{}", path.display()),
        &broker.bootstrap(),
        &registry_url,
    );
    for round in 0..2 {
        let mut child = sink_binary(args.argv());
        // Until its tables exist (the WAL then holds its DDL), bounded.
        let deadline = Instant::now() + LIMIT;
        while !path.with_extension("duckdb.wal").exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = child.kill();
        let _ = child.wait();
        let mut w = DuckDbWarehouse::open(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            count(&mut w, "SELECT count(*) FROM walhouse.offsets").await,
            0,
            "round {round}"
        );
    }
}

/// Scale-out over CDC topics: sink instances of one group write one
/// Postgres warehouse while partitions move between them: two, then three
/// (one killed with SIGKILL, one frozen with SIGSTOP past its session
/// timeout and thawed, a fourth joining), between waves of changes on a
/// 6-partition capture. Every change lands once (by the WAL's own count,
/// from a `test_decoding` slot), no two raw rows share a source position,
/// the views equal the source; fenced batches are counted from the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinks_scale_out_over_cdc_topics_through_kills_and_freezes() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let warehouse_url = pg.url("walhouse_scram", &pg.create_db("warehouse"));
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);")
        .await
        .expect("tables");
    source
        .batch_execute("SELECT pg_create_logical_replication_slot('audit', 'test_decoding')")
        .await
        .expect("audit slot");
    let prefix = format!("scale{}", std::process::id());
    let source_url = pg.url("walhouse_scram", "backend");
    let capture = CaptureCommand::from(&source_url)
        .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
        .with("--topic-partitions", "6")
        .start();
    assert!(pg.wait_for_slot("backend", "walhouse", true, LIMIT).await);
    let dir = tempfile::tempdir().expect("dir");
    let pattern = format!("^{prefix}\\.public\\..*");
    // A's writes can be held at the writer's boundary (after the batch is
    // made, before its transaction) while this file exists.
    let hold = dir.path().join("hold-a");
    let spawn = |name: &str, batch_ms: &str| -> Child {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
        let failpoints = if name == "a" {
            format!("sink.before_write=pause-while:{}", hold.display())
        } else {
            String::new()
        };
        let args = SinkCommand::into(&warehouse_url, &broker.bootstrap(), &registry_url)
            .with("--topic-pattern", &pattern)
            .with("--group-id", "scale")
            .with("--batch-ms", batch_ms)
            .with("--batch-rows", "100000")
            .args(&["--kafka-option", "session.timeout.ms=6000"])
            .args(&["--kafka-option", "heartbeat.interval.ms=1000"]);
        Command::new(env!("CARGO_BIN_EXE_walhouse-sink"))
            .args(args.argv())
            .env("WALHOUSE_LOG", "info")
            .env("WALHOUSE_FAILPOINTS", failpoints)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("walhouse-sink starts")
    };
    let wave = |n: i32| {
        let (lo, hi) = (n * 1000 + 1, n * 1000 + 600);
        format!(
            "INSERT INTO a SELECT g, 0 FROM generate_series({lo}, {hi}) g; \
             INSERT INTO b SELECT g, 0 FROM generate_series({lo}, {hi}) g; \
             UPDATE a SET v = v + 1 WHERE id % 3 = 0; \
             DELETE FROM b WHERE id % 11 = {}",
            n % 11
        )
    };
    let mut w = PostgresWarehouse::connect(&ConnInfo::parse(&warehouse_url).expect("url"))
        .await
        .expect("warehouse");
    let raw_rows = "SELECT (SELECT count(*) FROM raw_public.a) + (SELECT count(*) FROM raw_public.b)";
    let url = warehouse_url.clone();
    let wait_rows = |n: i64| {
        let url = url.clone();
        async move {
            let mut w = PostgresWarehouse::connect(&ConnInfo::parse(&url).expect("url"))
                .await
                .expect("warehouse");
            let deadline = Instant::now() + LIMIT;
            while count_or_zero(&mut w, raw_rows).await < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            count_or_zero(&mut w, raw_rows).await >= n
        }
    };
    // A holds its batches 3 s, so that frozen it holds one.
    let mut a = spawn("a", "3000");
    let mut b = spawn("b", "100");
    source.batch_execute(&wave(1)).await.expect("wave 1");
    assert!(wait_rows(600).await, "A and B store");
    let mut c = spawn("c", "100");
    source.batch_execute(&wave(2)).await.expect("wave 2");
    assert!(wait_rows(2000).await, "three store");
    let _ = b.kill();
    let _ = b.wait();
    source.batch_execute(&wave(3)).await.expect("wave 3");
    // A holds its next batch at the writer's boundary and is frozen past
    // its session timeout: the group moves its partitions, C stores them
    // (wave 4 whole); thawed and let go, A's batch from before is fenced.
    std::fs::write(&hold, b"").expect("hold file");
    source.batch_execute(&wave(4)).await.expect("wave 4");
    let reached = walhouse::failpoint::reached(&hold);
    let deadline = Instant::now() + LIMIT;
    let a_log = || std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
    while !reached.exists() && Instant::now() < deadline {
        if let Ok(Some(status)) = a.try_wait() {
            panic!("sink A ended ({status}) before it held a batch:\n{}", a_log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reached.exists(),
        "A made a batch of wave 4 and holds it; A's log:\n{}",
        a_log()
    );
    let _ = Command::new("kill").args(["-STOP", &a.id().to_string()]).status();
    let through_wave_4: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_changes('audit', NULL, NULL) \
             WHERE data LIKE 'table public.a:%' OR data LIKE 'table public.b:%'",
            &[],
        )
        .await
        .expect("audit")
        .get(0);
    // Only once A is out of the group (past its session) can C store them.
    assert!(
        wait_rows(through_wave_4).await,
        "C stored A's partitions through wave 4"
    );
    let _ = Command::new("kill").args(["-CONT", &a.id().to_string()]).status();
    std::fs::remove_file(&hold).expect("let A's write go");
    let mut d = spawn("d", "100");
    source.batch_execute(&wave(5)).await.expect("wave 5");
    assert!(pg.wait_confirmed("backend", "walhouse", LIMIT).await);
    let (_, produced) = capture.stop().await;

    // Settle: the warehouse's offsets cover every record in the topics.
    let mut total = 0i64;
    for t in ["a", "b"] {
        let (bootstrap, topic) = (broker.bootstrap(), format!("{prefix}.public.{t}"));
        let records = tokio::task::spawn_blocking(move || support::kafka::read_all(&bootstrap, &topic, LIMIT))
            .await
            .expect("reader");
        let mut ends: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        for r in &records {
            let e = ends.entry(r.partition).or_default();
            *e = (*e).max(r.offset + 1);
        }
        total += ends.values().sum::<i64>();
    }
    assert_eq!(total as u64, produced, "every record capture produced is in the topics");
    let offsets = "SELECT coalesce(sum(next_offset), 0) FROM walhouse.offsets WHERE consumer_group = 'scale'";
    let deadline = Instant::now() + LIMIT;
    while count_or_zero(&mut w, offsets).await < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count_or_zero(&mut w, offsets).await,
        total,
        "the stored offsets cover every record"
    );
    for child in [&mut a, &mut c, &mut d] {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
    let fenced = |n: &str| {
        std::fs::read_to_string(dir.path().join(format!("{n}.log")))
            .unwrap_or_default()
            .matches("another sink instance wrote it")
            .count()
    };
    let fenced_a = fenced("a");
    let fenced: usize = ["a", "b", "c", "d"].iter().map(|n| fenced(n)).sum();
    assert!(fenced_a >= 1, "A's held batch was fenced");

    let audit = source
        .query(
            "SELECT split_part(data, ':', 1), count(*) FROM pg_logical_slot_peek_changes('audit', NULL, NULL) \
             WHERE data LIKE 'table public.%' GROUP BY 1",
            &[],
        )
        .await
        .expect("audit");
    for t in ["a", "b"] {
        let expected: i64 = audit
            .iter()
            .find(|r| r.get::<_, String>(0) == format!("table public.{t}"))
            .map_or(0, |r| r.get(1));
        let rows = count(&mut w, &format!("SELECT count(*) FROM raw_public.{t}")).await;
        let positions = count(
            &mut w,
            &format!("SELECT count(*) FROM (SELECT DISTINCT _commit_lsn, _tx_ordinal FROM raw_public.{t}) p"),
        )
        .await;
        let live: i64 = source
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .expect("source count")
            .get(0);
        assert_eq!(rows, expected, "{t}: every change of the WAL stored once");
        assert_eq!(positions, rows, "{t}: no two raw rows share a position");
        assert_eq!(
            count(&mut w, &format!("SELECT count(*) FROM public.{t}")).await,
            live,
            "{t}: view"
        );
    }
    println!(
        "scale-out: sinks A+B, then C, B killed, A holding a batch frozen past its 6 s session and thawed, \
         D joined: {total} records, every change stored once, {fenced} fenced batches ({fenced_a} of A's)"
    );
}

/// Snapshot reads are observations of their own, never taken for changes
/// sent again: an initial snapshot, changes, an incremental re-read of the
/// table (`walhouse-capture snapshot`) and a new slot's snapshot of it all
/// land (each read at a later position than what it repeats), nothing is
/// skipped as a duplicate, no two raw rows share a position, and the view
/// is the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_reads_are_stored_beside_the_changes_they_repeat() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g",
        )
        .await
        .expect("table");
    let prefix = format!("walhouse.reread{}", std::process::id());
    let source_url = pg.url("walhouse_scram", "backend");
    let args = |slot: &str, mode: &str| {
        CaptureCommand::from(&source_url)
            .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
            .args(&["--slot", slot, "--snapshot-mode", mode])
    };
    let capture = args("walhouse", "initial").start();
    assert!(pg.wait_for_slot("backend", "walhouse", true, LIMIT).await);
    source
        .batch_execute("UPDATE t SET v = -v WHERE id % 2 = 0; DELETE FROM t WHERE id > 80")
        .await
        .expect("changes");
    assert!(pg.wait_confirmed("backend", "walhouse", LIMIT).await);
    // The table read again through the slot, while capture streams.
    let asked = Command::new(env!("CARGO_BIN_EXE_walhouse-capture"))
        .args([
            "--source-url",
            &source_url,
            "--slot",
            "walhouse",
            "snapshot",
            "--tables",
            "public.t",
        ])
        .output()
        .expect("walhouse-capture snapshot");
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    let topic = format!("{prefix}.public.t");
    // 100 reads, 50 updates, 20 deletes (+ tombstones), 80 reads again.
    let expected = 100 + 50 + 40 + 80;
    let bootstrap = broker.bootstrap();
    let t2 = topic.clone();
    let held = tokio::task::spawn_blocking(move || support::kafka::wait_for_count(&bootstrap, &t2, expected, LIMIT))
        .await
        .expect("counter");
    assert_eq!(held, expected, "the re-read arrived");
    let (_, produced) = capture.stop().await;
    // A new slot's snapshot of the same table, into the same topic.
    let (_, resnapshot) = args("another", "initial_only").start().finish(LIMIT).await;
    assert_eq!(resnapshot, 80, "the new slot read every row");

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("w.duckdb");
    let warehouse = format!("duckdb:{}", path.display());
    let mut sink = SinkCommand::into(&warehouse, &broker.bootstrap(), &registry_url)
        .with("--topic-pattern", format!("^{}\\..*", prefix.replace('.', "\\.")))
        .with("--batch-ms", "100")
        .start()
        .await;
    let total = produced + resnapshot;
    assert!(sink.wait_for(total, LIMIT).await, "{:?} of {total}", sink.accounted());
    let duplicates = sink.metrics.duplicates();
    sink.stop().await;
    assert_eq!(duplicates, 0, "no read taken for a change sent again");
    let mut w = open_duckdb(&path).await;
    let reads = count(&mut w, "SELECT count(*) FROM raw_public.t WHERE _op = 'r'").await;
    assert_eq!(
        reads,
        100 + 80 + 80,
        "initial, incremental and new-slot reads all stored"
    );
    let rows = count(&mut w, "SELECT count(*) FROM raw_public.t").await;
    let positions = count(
        &mut w,
        "SELECT count(*) FROM (SELECT DISTINCT _commit_lsn, _tx_ordinal FROM raw_public.t) p",
    )
    .await;
    assert_eq!(positions, rows, "no two raw rows share a position");
    let source_sum: i64 = source
        .query_one("SELECT sum(v)::int8 FROM t", &[])
        .await
        .expect("sum")
        .get(0);
    let got = w
        .query_text("SELECT count(*), sum(v) FROM public.t")
        .await
        .expect("view");
    assert_eq!(got[0][0], Some("80".to_string()), "the view holds the source's rows");
    assert_eq!(got[0][1], Some(source_sum.to_string()), "the view sums like the source");
}

/// Sinks one group per target (DuckDB, a Postgres warehouse) over every
/// topic under `prefix` until each has accounted for `records`, then stops
/// them; returns the two warehouses to read back.
async fn sink_into_both(
    pg: &PgServer,
    broker: &Broker,
    registry_url: &str,
    prefix: &str,
    records: u64,
    dir: &Path,
    warehouse_db: &str,
) -> (DuckDbWarehouse, PostgresWarehouse) {
    let duck_path = dir.join("w.duckdb");
    let duck_url = format!("duckdb:{}", duck_path.display());
    let pg_url = pg.url("walhouse_scram", &pg.create_db(warehouse_db));
    for (warehouse, group) in [
        (duck_url.as_str(), "by-position-duck"),
        (pg_url.as_str(), "by-position-pg"),
    ] {
        let mut sink = SinkCommand::into(warehouse, &broker.bootstrap(), registry_url)
            .topics_under(prefix, group)
            .start()
            .await;
        assert!(
            sink.wait_for(records, LIMIT).await,
            "{group}: {:?} of {records}",
            sink.accounted()
        );
        sink.stop().await;
    }
    let pw = PostgresWarehouse::connect(&ConnInfo::parse(&pg_url).expect("url"))
        .await
        .expect("warehouse");
    (open_duckdb(&duck_path).await, pw)
}

/// A transaction open across an incremental snapshot's high watermark
/// wrote its update below the watermark and commits above it: the row
/// read at the watermark (which could not see the update) must rank below
/// the update in the latest-state view, on both targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_open_across_a_snapshot_shows_its_committed_value() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'before'), (2, 'two')")
        .await
        .expect("table");
    let prefix = format!("walhouse.open{}", std::process::id());
    let source_url = pg.url("walhouse_scram", "backend");
    let capture = CaptureCommand::from(&source_url)
        .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
        .start();
    let topic = format!("{prefix}.public.t");
    let held = |n: u64| {
        let (bootstrap, topic) = (broker.bootstrap(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || support::kafka::wait_for_count(&bootstrap, &topic, n, LIMIT))
                .await
                .expect("counter")
        }
    };
    assert_eq!(held(2).await, 2, "the initial snapshot");
    let open = pg.client("backend").await;
    open.batch_execute("BEGIN; UPDATE t SET v = 'after' WHERE id = 1")
        .await
        .expect("open transaction");
    let asked = Command::new(env!("CARGO_BIN_EXE_walhouse-capture"))
        .args(["--source-url", &source_url, "snapshot", "--tables", "public.t"])
        .output()
        .expect("walhouse-capture snapshot");
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    assert_eq!(held(4).await, 4, "the incremental reads, before the commit");
    open.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(held(5).await, 5, "the update");
    assert!(pg.wait_confirmed("backend", "walhouse", LIMIT).await);
    let (_, produced) = capture.stop().await;
    assert_eq!(produced, 5);

    let dir = tempfile::tempdir().expect("dir");
    let (mut duck, mut pgw) =
        sink_into_both(&pg, &broker, &registry_url, &prefix, produced, dir.path(), "warehouse").await;
    let check = |rows: Vec<Vec<Option<String>>>, name: &str| {
        let got: Vec<(String, String)> = rows
            .into_iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            [
                ("1".to_string(), "after".to_string()),
                ("2".to_string(), "two".to_string())
            ],
            "{name}: the view shows the committed update"
        );
    };
    // The case is real: the update's own LSN lies below the read's.
    let order = "SELECT CASE WHEN (SELECT _lsn FROM raw_public.t WHERE _op = 'u') < \
                 (SELECT _lsn FROM raw_public.t WHERE _op = 'r' AND _snapshot = 'incremental' AND id = 1) \
                 THEN 'below' ELSE 'not below' END";
    for rows in [
        duck.query_text(order).await.expect("raw"),
        pgw.query_text(order).await.expect("raw"),
    ] {
        assert_eq!(rows[0][0].as_deref(), Some("below"));
    }
    let view = "SELECT id, v FROM public.t ORDER BY id";
    check(duck.query_text(view).await.expect("view"), "duckdb");
    check(pgw.query_text(view).await.expect("view"), "postgres");
}

/// A table added to the publication while capture streams is read by an
/// incremental snapshot; every row shows in its latest-state view, in both
/// record formats (Debezium's incremental reads carry no `source.lsn`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_added_later_shows_every_row_in_both_formats() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a VALUES (1); \
             CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 30) g",
        )
        .await
        .expect("tables");
    let source_url = pg.url("walhouse_scram", "backend");
    let mut runs = Vec::new();
    for format in ["walhouse", "debezium"] {
        let prefix = format!("walhouse.later{}{format}", std::process::id());
        let slot = format!("later_{format}");
        let capture = CaptureCommand::from(&source_url)
            .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
            .args(&["--slot", &slot, "--tables", "public.a", "--format", format])
            .start();
        assert!(pg.wait_for_slot("backend", &slot, true, LIMIT).await);
        runs.push((format, prefix, slot, capture));
    }
    source
        .batch_execute("ALTER PUBLICATION walhouse ADD TABLE b")
        .await
        .expect("add table");
    for (format, prefix, slot, capture) in runs {
        // Found at the next publication check (every 10 s), then read.
        let (bootstrap, topic) = (broker.bootstrap(), format!("{prefix}.public.b"));
        let held = tokio::task::spawn_blocking(move || support::kafka::wait_for_count(&bootstrap, &topic, 30, LIMIT))
            .await
            .expect("counter");
        assert_eq!(held, 30, "{format}: b's rows were read");
        assert!(pg.wait_confirmed("backend", &slot, LIMIT).await);
        let (_, produced) = capture.stop().await;
        let dir = tempfile::tempdir().expect("dir");
        let (mut duck, mut pgw) = sink_into_both(
            &pg,
            &broker,
            &registry_url,
            &prefix,
            produced,
            dir.path(),
            &format!("warehouse_{format}"),
        )
        .await;
        let reads = "SELECT count(*) FROM raw_public.b WHERE _op = 'r'";
        let view = "SELECT count(*), count(DISTINCT v) FROM public.b";
        for (name, raw, latest) in [
            (
                "duckdb",
                duck.query_text(reads).await.expect("raw"),
                duck.query_text(view).await.expect("view"),
            ),
            (
                "postgres",
                pgw.query_text(reads).await.expect("raw"),
                pgw.query_text(view).await.expect("view"),
            ),
        ] {
            assert_eq!(raw[0][0].as_deref(), Some("30"), "{format} into {name}: raw reads");
            assert_eq!(
                (latest[0][0].as_deref(), latest[0][1].as_deref()),
                (Some("30"), Some("30")),
                "{format} into {name}: every row in the view"
            );
        }
    }
}

/// A table whose name Kafka cannot carry as is (`"Order Items"`: each
/// format names its topic by its own rule, walhouse's with a hash, the
/// Debezium format's with `_`) lands whole in both formats, on both
/// targets: the sink checks a record's topic by the rule of its format.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_kafka_must_rename_lands_whole_in_both_formats() {
    support::init_logs();
    let pg = PgServer::start();
    pg.create_db("backend");
    let broker = Broker::start();
    let (_reg, registry_url) = registry().await;
    let source = pg.client("backend").await;
    source
        .batch_execute(
            "CREATE TABLE \"Order Items\" (id int PRIMARY KEY, v text); \
             INSERT INTO \"Order Items\" SELECT g, 'v' || g FROM generate_series(1, 5) g",
        )
        .await
        .expect("table");
    let source_url = pg.url("walhouse_scram", "backend");
    for format in ["walhouse", "debezium"] {
        let prefix = format!("walhouse.named{}{format}", std::process::id());
        let (_, produced) = CaptureCommand::from(&source_url)
            .into_kafka(&broker.bootstrap(), &registry_url, &prefix)
            .with("--slot", format!("named_{format}"))
            .with("--snapshot-mode", "initial_only")
            .with("--format", format)
            .start()
            .finish(LIMIT)
            .await;
        assert!(produced >= 5, "{format}: {produced} records");
        let dir = tempfile::tempdir().expect("dir");
        let (mut duck, mut pgw) = sink_into_both(
            &pg,
            &broker,
            &registry_url,
            &prefix,
            produced,
            dir.path(),
            &format!("named_{format}"),
        )
        .await;
        let raw = "SELECT count(*) FROM raw_public.\"Order Items\"";
        let view = "SELECT count(DISTINCT v) FROM public.\"Order Items\"";
        let dead = "SELECT count(*) FROM walhouse.dead_letters";
        let mut got = Vec::new();
        for sql in [raw, view, dead] {
            got.push(("duckdb", duck.query_text(sql).await.expect(sql)));
            got.push(("postgres", pgw.query_text(sql).await.expect(sql)));
        }
        let counts: Vec<(&str, Option<String>)> = got.into_iter().map(|(n, r)| (n, r[0][0].clone())).collect();
        let want = |v: &str| Some(v.to_string());
        assert_eq!(
            counts,
            vec![
                ("duckdb", want("5")),
                ("postgres", want("5")),
                ("duckdb", want("5")),
                ("postgres", want("5")),
                ("duckdb", want("0")),
                ("postgres", want("0")),
            ],
            "{format}: raw rows, view rows, dead letters"
        );
    }
}

/// Sink instances that start together on one Postgres warehouse all start:
/// their setup (the state tables, the company and insolvency tables, the
/// views) runs at once, and Postgres's `IF NOT EXISTS` and `OR REPLACE`
/// race between sessions ("duplicate key value", "tuple concurrently
/// updated"). Four at a time, on three fresh warehouses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinks_starting_together_on_a_postgres_warehouse_all_start() {
    support::init_logs();
    let pg = PgServer::start();
    for round in 0..3 {
        let url = pg.url("walhouse_scram", &pg.create_db(&format!("together{round}")));
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut w = PostgresWarehouse::connect(&ConnInfo::parse(&url).expect("url"))
                        .await
                        .expect("warehouse");
                    let mut tables = walhouse::sink::tables::Tables::default();
                    walhouse::sink::prepare(&mut w, &mut tables).await
                })
            })
            .collect();
        for (i, start) in starts.into_iter().enumerate() {
            if let Err(e) = start.await.expect("task") {
                panic!("round {round}, instance {i}: {e}");
            }
        }
    }
}
