//! The main job, end to end on embedded defaults (a development tool, not
//! a deployment): starts a throwaway PostgreSQL 15 the way the tests do,
//! creates the backend schema of `sql/source/`, runs walhouse's capture
//! (the same code as `walhouse-capture --output stdout`, writing JSON lines
//! to `target/demo/changes.jsonl`), applies generated data and a workload
//! of updates, deletes and an ALTER TABLE, then stops the capture cleanly
//! and checks that every change arrived and that the slot's confirmed LSN
//! is what capture acknowledged.
//!
//! Run: `cargo run --release --example demo`

#[path = "../tests/support/postgres.rs"]
mod postgres_support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::sync::watch;
use walhouse::capture;
use walhouse::config::{CaptureArgs, CaptureConfig};
use walhouse::output::stdout::JsonLines;

const SCHEMA: &str = include_str!("../sql/source/backend_schema.sql");
const GENERATE: &str = include_str!("../sql/source/generate.sql");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    walhouse::config::init_logging(walhouse::config::LogFormat::Text);
    println!("== starting a local PostgreSQL 15 (temp dir, wal_level=logical) …");
    let pg = postgres_support::PgServer::start();
    pg.create_db("backend");
    let sql = pg.client("backend").await;
    sql.batch_execute(SCHEMA).await.context("backend schema")?;
    println!("   listening on 127.0.0.1:{}", pg.port);

    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let out_path = out_dir.join("changes.jsonl");
    let url = pg.url("walhouse_scram", "backend");
    println!(
        "== walhouse-capture --source-url postgres://walhouse_scram:***@127.0.0.1:{}/backend --output stdout > {}",
        pg.port,
        out_path.display()
    );
    let config = CaptureConfig::resolve(CaptureArgs::try_parse_from([
        "walhouse-capture",
        "--source-url",
        &url,
        "--output",
        "stdout",
    ])?)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let file = tokio::fs::File::create(&out_path).await?;
    let capture = tokio::spawn(async move {
        let mut dest = JsonLines::new(file);
        let summary = capture::run(&config, &mut dest, stop_rx).await;
        summary.map(|s| (s, dest.lines_written()))
    });

    // Capture is streaming once its slot is active.
    let mut active = false;
    for _ in 0..300 {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walhouse' AND active",
                &[],
            )
            .await?
            .get(0);
        if n == 1 {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !active {
        bail!("capture did not start streaming within 15 s");
    }

    println!("== applying generated backend data and a workload …");
    sql.batch_execute(GENERATE).await.context("generate data")?;
    let mut expected: u64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM organizations) + (SELECT count(*) FROM bank_accounts) + \
                    (SELECT count(*) FROM beneficiaries) + (SELECT count(*) FROM transfers) + \
                    (SELECT count(*) FROM \"transaction\") + (SELECT count(*) FROM card_transactions)",
            &[],
        )
        .await?
        .get::<_, i64>(0) as u64;
    expected += sql
        .execute("UPDATE \"transaction\" SET status = 1 WHERE id % 10 = 0", &[])
        .await?;
    expected += sql
        .execute("UPDATE transfers SET status = 3 WHERE id % 7 = 0", &[])
        .await?;
    expected += sql
        .execute("DELETE FROM card_transactions WHERE id % 100 = 0", &[])
        .await?;
    sql.batch_execute("ALTER TABLE organizations ADD COLUMN country char(2)")
        .await?;
    expected += sql
        .execute(
            "UPDATE organizations SET country = 'FR', name = name || ' SAS' WHERE name LIKE '%1'",
            &[],
        )
        .await?;

    // Wait (bounded) until every change is in the file.
    let mut lines = 0;
    for _ in 0..600 {
        lines = std::fs::read_to_string(&out_path)?.lines().count() as u64;
        if lines >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let (summary, written) = capture.await??;
    let confirmed: String = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walhouse'",
            &[],
        )
        .await?
        .get(0);

    let mut by_table: BTreeMap<(String, String), u64> = BTreeMap::new();
    let text = std::fs::read_to_string(&out_path)?;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let table = v["table"].as_str().unwrap_or("-").to_string();
        let op = v["op"].as_str().unwrap_or("-").to_string();
        *by_table.entry((table, op)).or_default() += 1;
    }
    println!();
    println!("| table             | op     | changes |");
    println!("|-------------------|--------|---------|");
    for ((table, op), n) in &by_table {
        println!("| {table:<17} | {op:<6} | {n:>7} |");
    }
    println!();
    if let Some(sample) = text.lines().rev().find(|l| l.contains("\"country\"")) {
        println!("a change after ALTER TABLE ADD COLUMN:\n{sample}\n");
    }
    println!(
        "changes expected {expected}, written {written}, transactions {}",
        summary.transactions
    );
    println!(
        "acknowledged LSN {} — slot confirmed_flush_lsn {confirmed}",
        summary.acknowledged
    );
    if written != expected || lines != expected {
        bail!("expected {expected} changes, capture wrote {written}");
    }
    if summary.acknowledged.to_string() != confirmed {
        bail!("the slot's confirmed LSN {confirmed} differs from what capture acknowledged");
    }
    println!("OK: every change captured once, slot confirmed exactly what was written");
    Ok(())
}
