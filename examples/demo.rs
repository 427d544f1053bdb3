//! The main job, end to end on embedded defaults (a development tool, not
//! a deployment): starts a throwaway PostgreSQL 15 the way the tests do, a
//! local Kafka-protocol broker (tansu) and the small Confluent-API registry
//! of the test support (a development stand-in for a real Schema Registry),
//! creates the backend schema of `sql/source/` with generated data, runs
//! walhouse's capture (the same code as `walhouse-capture --output kafka`):
//! the existing rows arrive as the initial snapshot (`op = r`), then a
//! workload of inserts, updates, deletes and an ALTER TABLE streams. It
//! reads every topic back, decodes each record with the schema the registry
//! returns, and checks that every row and change arrived once and that the
//! slot confirmed exactly what Kafka acknowledged.
//!
//! Run: `cargo run --release --example demo`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use apache_avro::types::Value;
use clap::Parser;
use tokio::sync::watch;
use walhouse::capture;
use walhouse::config::{CaptureArgs, CaptureConfig};
use walhouse::kafka::producer::KafkaDestination;
use walhouse::registry::{split_wire, Registry, RegistryConfig};

const SCHEMA: &str = include_str!("../sql/source/backend_schema.sql");
const GENERATE: &str = include_str!("../sql/source/generate.sql");
const COUNT_ROWS: &str = "SELECT (SELECT count(*) FROM organizations) + (SELECT count(*) FROM bank_accounts) + \
     (SELECT count(*) FROM beneficiaries) + (SELECT count(*) FROM transfers) + \
     (SELECT count(*) FROM \"transaction\") + (SELECT count(*) FROM card_transactions)";
const TABLES: [&str; 6] = [
    "organizations",
    "bank_accounts",
    "beneficiaries",
    "transfers",
    "transaction",
    "card_transactions",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    walhouse::config::init_logging(walhouse::config::LogFormat::Text);
    println!("== starting a local PostgreSQL 15 (temp dir, wal_level=logical) …");
    let pg = support::postgres::PgServer::start();
    pg.create_db("backend");
    let sql = pg.client("backend").await;
    sql.batch_execute(SCHEMA).await.context("backend schema")?;
    sql.batch_execute(GENERATE).await.context("generate data")?;
    let existing: i64 = sql.query_one(COUNT_ROWS, &[]).await?.get(0);
    println!("   backend schema with {existing} generated rows (they will arrive as the initial snapshot)");
    println!("== starting a local Kafka-protocol broker (tansu, memory storage) and a dev Schema Registry …");
    let broker = support::kafka::Broker::start();
    let registry = support::registry::TestRegistry::start().await;
    println!(
        "   postgres 127.0.0.1:{}, broker {}, registry {} (test-support stand-in, not for production)",
        pg.port,
        broker.bootstrap(),
        registry.url
    );

    let url = pg.url("walhouse_scram", "backend");
    println!(
        "== walhouse-capture --source-url postgres://walhouse_scram:***@127.0.0.1:{}/backend --output kafka --brokers {} --schema-registry-url {}",
        pg.port,
        broker.bootstrap(),
        registry.url
    );
    let config = CaptureConfig::resolve(CaptureArgs::try_parse_from([
        "walhouse-capture",
        "--source-url",
        &url,
        "--output",
        "kafka",
        "--brokers",
        &broker.bootstrap(),
        "--schema-registry-url",
        &registry.url,
    ])?)?;
    let kafka = config.kafka.clone().context("kafka settings")?;
    let reg = Arc::new(Registry::new(&kafka.registry)?);
    let mut dest = KafkaDestination::new(&kafka, "backend", reg)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let capture = tokio::spawn(async move {
        let summary = capture::run(&config, &mut dest, stop_rx).await;
        summary.map(|s| (s, dest.produced()))
    });
    if !pg
        .wait_for_slot("backend", "walhouse", true, Duration::from_secs(60))
        .await
    {
        bail!("capture did not start streaming within 60 s");
    }

    println!("== applying a workload while capture streams …");
    let mut expected = existing as u64;
    expected += sql
        .execute(
            "INSERT INTO \"transaction\" (id, status, bank_account_id, subject_type, amount) \
             SELECT g, 1, 1 + g % 60, 'Card', g FROM generate_series(2001, 2500) g",
            &[],
        )
        .await?;
    expected += sql
        .execute("UPDATE \"transaction\" SET status = 1 WHERE id % 10 = 0", &[])
        .await?;
    expected += sql
        .execute("UPDATE transfers SET status = 3 WHERE id % 7 = 0", &[])
        .await?;
    let deleted = sql
        .execute("DELETE FROM card_transactions WHERE id % 100 = 0", &[])
        .await?;
    expected += deleted;
    sql.batch_execute("ALTER TABLE organizations ADD COLUMN country char(2)")
        .await?;
    expected += sql
        .execute(
            "UPDATE organizations SET country = 'FR', name = name || ' SAS' WHERE name LIKE '%1'",
            &[],
        )
        .await?;

    // Capture acknowledges only what Kafka acknowledged: wait (bounded)
    // until the slot confirmed everything written.
    if !pg.wait_confirmed("backend", "walhouse", Duration::from_secs(60)).await {
        bail!("the slot did not confirm the workload within 60 s");
    }
    let _ = stop_tx.send(true);
    let (summary, produced) = capture.await??;
    let confirmed: String = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walhouse'",
            &[],
        )
        .await?
        .get(0);

    println!("== reading every topic back, decoding with the schemas the registry returns …");
    let reader = Registry::new(&RegistryConfig {
        url: registry.url.clone(),
        ..Default::default()
    })?;
    let mut by_table: BTreeMap<(String, String), u64> = BTreeMap::new();
    let (mut changes, mut tombstones) = (0u64, 0u64);
    let mut sample = None;
    for table in TABLES {
        let (bootstrap, topic) = (broker.bootstrap(), format!("walhouse.public.{table}"));
        let records = tokio::task::spawn_blocking(move || {
            support::kafka::read_topic(&bootstrap, &topic, usize::MAX, Duration::from_secs(5))
        })
        .await?;
        for r in records {
            let Some(value) = r.value else {
                tombstones += 1;
                *by_table.entry((table.to_string(), "tombstone".into())).or_default() += 1;
                continue;
            };
            let (id, mut body) = split_wire(&value).context("Confluent wire format")?;
            let schema = apache_avro::Schema::parse_str(&reader.schema(id).await?)?;
            let v = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
                .build()?
                .read_value(&mut body)?;
            let Value::Record(fields) = &v else {
                bail!("not a record")
            };
            let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let op = match field("op") {
                Some(Value::String(s)) => s.clone(),
                _ => bail!("no op"),
            };
            changes += 1;
            *by_table.entry((table.to_string(), op.clone())).or_default() += 1;
            if table == "organizations" && op == "u" && sample.is_none() {
                sample = field("after").map(|a| format!("{a:?}"));
            }
        }
    }
    println!();
    println!("| topic walhouse.public.… | op        | records |");
    println!("|-------------------------|-----------|---------|");
    for ((table, op), n) in &by_table {
        println!("| {table:<23} | {op:<9} | {n:>7} |");
    }
    println!();
    if let Some(sample) = sample {
        println!("an organizations update after ALTER TABLE ADD COLUMN, decoded from Avro:\n{sample}\n");
    }
    let reads: u64 = by_table.iter().filter(|((_, op), _)| op == "r").map(|(_, n)| n).sum();
    println!(
        "rows and changes expected {expected} ({existing} snapshot reads), decoded from Kafka {changes} ({reads} reads, +{tombstones} tombstones), records produced {produced}, transactions {}",
        summary.transactions
    );
    println!(
        "acknowledged LSN {} — slot confirmed_flush_lsn {confirmed}",
        summary.acknowledged
    );
    if changes != expected || reads != existing as u64 || tombstones != deleted || produced != changes + tombstones {
        bail!("expected {expected} changes and {deleted} tombstones in Kafka, found {changes} and {tombstones}");
    }
    if summary.acknowledged.to_string() != confirmed {
        bail!("the slot's confirmed LSN {confirmed} differs from what capture acknowledged");
    }
    println!("OK: every existing row (snapshot) and every change is in Kafka once, and the slot confirmed exactly what Kafka acknowledged");
    Ok(())
}
