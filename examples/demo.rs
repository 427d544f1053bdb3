//! The main job, end to end on embedded defaults (a development tool, not
//! a deployment). It starts a throwaway Postgres (18 unless `WALHOUSE_TEST_PG=15`) the way the tests do,
//! a local Kafka-protocol broker (tansu: it listens within 50 ms and
//! needs no JVM; the tests use Apache Kafka), and the small Confluent-API
//! registry of the test support (a development stand-in for a real Schema
//! Registry). It creates the backend schema of `sql/source/` with generated
//! data, then runs walhouse's capture (the same code as `walhouse-capture
//! --output kafka`): the existing rows arrive as the initial snapshot, then
//! a workload of inserts, updates, deletes and an ALTER TABLE streams.
//! walhouse-sink (the same code as the binary) appends everything into a
//! DuckDB file, with company events (duplicates and a malformed one
//! included) fed to the `companies` topic, and loads an insolvency CSV.
//! Last, it prints the seed's three questions from the warehouse next to
//! the same questions on the source, and says OK only if they agree.
//!
//! Run: `cargo run --release --example demo`

use walhouse_test_support as support;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use support::command::{CaptureCommand, SinkCommand};
use support::pipeline::{ask, BACKEND_SCHEMA, GENERATE, QUESTIONS};
use walhouse::postgres::conninfo::ConnInfo;
use walhouse::warehouse::duckdb::DuckDbWarehouse;
use walhouse::warehouse::postgres::PostgresWarehouse;
use walhouse::warehouse::Warehouse;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    walhouse::cli::init_logging(walhouse::cli::LogFormat::Text);
    let started = Instant::now();
    println!(
        "== starting a local Postgres {} (temp dir, wal_level=logical) …",
        support::postgres::test_major()
    );
    let pg = support::postgres::PgServer::start();
    pg.create_db("backend");
    let sql = pg.client("backend").await;
    sql.batch_execute(BACKEND_SCHEMA).await.context("backend schema")?;
    sql.batch_execute(GENERATE).await.context("generate data")?;
    println!("== starting a local Kafka-protocol broker (tansu, memory storage) and a dev Schema Registry …");
    let broker = support::kafka::Tansu::start();
    let registry = support::registry::TestRegistry::start().await;
    println!(
        "   postgres 127.0.0.1:{}, broker {}, registry {} (test-support stand-in, not for production)",
        pg.port,
        broker.bootstrap(),
        registry.url
    );

    let source_url = pg.url("walhouse_scram", "backend");
    println!("== walhouse-capture --output kafka (initial snapshot, then streaming) …");
    // Topics under capture's default prefix, which the sink's default
    // pattern reads.
    let capture = CaptureCommand::from(&source_url)
        .with("--output", "kafka")
        .with("--brokers", broker.bootstrap())
        .with("--schema-registry-url", &registry.url)
        .start();
    if !pg
        .wait_for_slot("backend", "walhouse", true, Duration::from_secs(60))
        .await
    {
        bail!("capture did not start streaming within 60 s");
    }
    let dir = tempfile::tempdir()?;
    let duck_path = dir.path().join("warehouse.duckdb");
    let duck_url = format!("duckdb:{}", duck_path.display());
    println!("== walhouse-sink --warehouse {duck_url} …");
    let mut sink = SinkCommand::into(&duck_url, &broker.bootstrap(), &registry.url)
        .with("--batch-ms", "250")
        .start()
        .await;

    println!("== applying a workload on the source while both run …");
    for statement in [
        "INSERT INTO \"transaction\" (id, status, bank_account_id, subject_type, subject_id, amount) \
         SELECT g, g % 3, 1 + g % 60, CASE WHEN g % 2 = 0 THEN 'Transfer' ELSE 'Card' END, \
                CASE WHEN g % 2 = 0 THEN 1 + g % 400 END, g FROM generate_series(2001, 2500) g",
        "UPDATE \"transaction\" SET status = 1 WHERE id % 10 = 0",
        "UPDATE transfers SET status = 3 WHERE id % 7 = 0",
        "DELETE FROM card_transactions WHERE id % 100 = 0",
        "ALTER TABLE organizations ADD COLUMN country char(2)",
        "UPDATE organizations SET country = 'FR', name = name || ' SAS' WHERE name LIKE '%1'",
    ] {
        sql.batch_execute(statement)
            .await
            .with_context(|| statement.to_string())?;
    }
    println!("== feeding company events (two duplicates, one malformed) to topic companies …");
    let events = company_events();
    let messages: Vec<(Option<&str>, &[u8])> = events.iter().map(|e| (None, e.as_bytes())).collect();
    support::kafka::produce(&broker.bootstrap(), "companies", &messages);

    if !pg.wait_confirmed("backend", "walhouse", Duration::from_secs(60)).await {
        bail!("the slot did not confirm the workload within 60 s");
    }
    let (summary, produced) = capture.stop().await;
    println!(
        "   capture: {} change events, {produced} Kafka records, slot confirmed {}",
        summary.events, summary.acknowledged
    );
    let records = produced + events.len() as u64;
    if !sink.wait_for(records, Duration::from_secs(120)).await {
        bail!(
            "the sink accounted for {:?} of {records} records within 120 s",
            sink.accounted()
        );
    }
    let (rows, dead, skipped) = sink.accounted();
    sink.stop().await;
    println!("   sink: {rows} rows appended, {dead} dead letter(s), {skipped} tombstones skipped");

    let csv = dir.path().join("insolvent-companies.csv");
    std::fs::write(
        &csv,
        "organization_id,insolvency_date,court\n\
         00000000-0000-4000-8000-000000000003,2024-05-01,Paris\n\
         00000000-0000-4000-8000-000000000007,2024-06-15T09:00:00Z,Lyon\n\
         not-a-uuid,2024-06-15,Nice\n",
    )?;
    println!("== walhouse-sink load-insolvencies {} (twice) …", csv.display());
    let mut warehouse = DuckDbWarehouse::open(&duck_path)?;
    for _ in 0..2 {
        let r = walhouse::sink::insolvency::load_file(&mut warehouse, &csv).await?;
        println!(
            "   {} rows, {} dead letter(s){}",
            r.rows,
            r.dead_letters,
            if r.already_loaded {
                " (loaded before: nothing added)"
            } else {
                ""
            }
        );
    }

    println!("\n== the seed's questions, source (Postgres) vs warehouse (DuckDB latest-state views)");
    let mut source = PostgresWarehouse::connect(&ConnInfo::parse(&source_url)?).await?;
    let on_source = ask(&mut source).await;
    let on_warehouse = ask(&mut warehouse).await;
    let mut all_equal = true;
    for (i, (name, _, _)) in QUESTIONS.iter().enumerate() {
        let equal = on_source[i] == on_warehouse[i];
        all_equal &= equal;
        println!(
            "\n-- sql/questions/*/{name}.sql: {} rows on the source, {} in the warehouse: {}",
            on_source[i].len(),
            on_warehouse[i].len(),
            if equal { "identical" } else { "DIFFERENT" }
        );
        println!(
            "{:<38} {:<22} {:>14} {:>14}",
            "organization id", "name", "source", "warehouse"
        );
        for (s, w) in on_source[i].iter().zip(&on_warehouse[i]).take(6) {
            println!("{:<38} {:<22} {:>14} {:>14}", s[0], s[1], s[2], w[2]);
        }
        if on_source[i].len() > 6 {
            println!("… ({} more)", on_source[i].len() - 6);
        }
    }
    for (title, query) in [
        (
            "public.companies_latest",
            "SELECT id, name, updated_at FROM public.companies_latest ORDER BY id",
        ),
        (
            "public.organizations_with_insolvency (insolvent ones)",
            "SELECT id, name, latest_insolvency_ts FROM public.organizations_with_insolvency \
             WHERE latest_insolvency_ts IS NOT NULL ORDER BY id",
        ),
        (
            "walhouse.dead_letters",
            "SELECT source, coalesce(topic, file), error FROM walhouse.dead_letters ORDER BY failed_at",
        ),
    ] {
        println!("\n-- {title}");
        for r in warehouse.query_text(query).await? {
            let cells: Vec<&str> = r.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
            println!("{}", cells.join(" | "));
        }
    }
    if !all_equal {
        bail!("the warehouse does not answer the seed's questions like the source");
    }
    println!(
        "\nOK: Postgres → Kafka → DuckDB in {:.0} s; the seed's three questions give identical answers on the source and the warehouse",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Company events as producers send them: an update whose name disagrees
/// with `changes`, a re-sent event, one out of order, one malformed.
fn company_events() -> Vec<String> {
    let event = |key: &str, kind: &str, id: &str, org: u32, name: &str, created: i64, updated: i64| {
        serde_json::json!({
            "idempotency_key": key, "event": kind, "id": id,
            "organization_id": format!("00000000-0000-4000-8000-{org:012x}"), "name": name,
            "created_at": created, "updated_at": updated,
            "changes": serde_json::json!({"name": {"from": null, "to": name}}).to_string(),
        })
        .to_string()
    };
    let (a, b) = (
        "3b0c7f52-9d7e-4a51-8f0e-2c1d6a4b9e01",
        "5d2e8a61-1c3b-4f7a-9e02-7a6b5c4d3e21",
    );
    vec![
        event("a-created-1", "created", a, 1, "Acme", 1_700_000_000, 1_700_000_000),
        event(
            "a-updated-2",
            "updated",
            a,
            1,
            "Acme Tools",
            1_700_000_000,
            1_700_000_600,
        ),
        event(
            "a-updated-2",
            "updated",
            a,
            1,
            "Acme Tools",
            1_700_000_000,
            1_700_000_600,
        ),
        event(
            "a-updated-1",
            "updated",
            a,
            2,
            "Acme (old)",
            1_700_000_000,
            1_700_000_300,
        ),
        event("b-created-1", "created", b, 3, "Beta", 1_700_001_000, 1_700_001_000),
        "{\"event\": \"updated\", \"id\": ".to_string(),
    ]
}
