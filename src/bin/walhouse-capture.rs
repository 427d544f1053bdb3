//! `walhouse-capture`: parse config, run the capture, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;
use walhouse::capture;
use walhouse::capture::config::{CaptureArgs, CaptureCommand, CaptureConfig, OutputKind};
use walhouse::capture::destination::kafka::producer::KafkaDestination;
use walhouse::capture::destination::stdout::JsonLines;
use walhouse::capture::snapshot_progress::ProgressStore;
use walhouse::cli::{init_logging, shutdown_signal};
use walhouse::postgres::publication::TableName;
use walhouse::registry::Registry;

fn main() -> ExitCode {
    let args = CaptureArgs::parse();
    let check = args.check;
    let command = args.command.as_ref().map(|c| match c {
        CaptureCommand::Status { json } => Command::Status { json: *json },
        CaptureCommand::Snapshot { tables } => Command::Snapshot { tables: tables.clone() },
    });
    let config = match CaptureConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walhouse-capture: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        println!("configuration is valid:\n{config:#?}");
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    match command {
        Some(Command::Status { json }) => return finish(runtime_block_on(print_status(config, json))),
        Some(Command::Snapshot { tables }) => return finish(runtime_block_on(request_snapshot(config, tables))),
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walhouse-capture: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    finish(runtime.block_on(run(config)))
}

enum Command {
    Status { json: bool },
    Snapshot { tables: Vec<String> },
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("walhouse-capture: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime_block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

async fn print_status(config: CaptureConfig, json: bool) -> anyhow::Result<()> {
    let (sql, _driver) = walhouse::postgres::client::connect(&config.source).await?;
    let mut report = walhouse::postgres::slot::status(
        &sql,
        &config.slot,
        &config.publication,
        &capture::snapshot_slot_name(&config.slot),
    )
    .await?;
    ProgressStore::new(&config.state_schema, &config.slot)
        .fill_status(&sql, &mut report)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let or = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "slot                    {} ({})",
        report.slot,
        if report.slot_exists { "exists" } else { "missing" }
    );
    println!(
        "active pid              {}",
        or(report.active_pid.map(|p| p.to_string()))
    );
    println!("confirmed flush LSN     {}", or(report.confirmed_flush_lsn.clone()));
    println!(
        "WAL held back           {}",
        or(report.lag_bytes.map(|b| format!("{b} bytes")))
    );
    println!("wal_status              {}", or(report.wal_status.clone()));
    println!(
        "safe_wal_size           {}",
        or(report.safe_wal_size.map(|b| format!("{b} bytes")))
    );
    println!("max_slot_wal_keep_size  {}", report.max_slot_wal_keep_size);
    // Postgres 16+ and 17+ report more about a slot; older servers say "-".
    println!("invalidation_reason     {}", or(report.invalidation_reason.clone()));
    println!("failover                {}", or(report.failover.map(|f| f.to_string())));
    println!(
        "conflicting             {}",
        or(report.conflicting.map(|c| c.to_string()))
    );
    println!("inactive since          {}", or(report.inactive_since.clone()));
    println!(
        "snapshot                {} ({} of {} chunks done, {} rows)",
        report.snapshot, report.snapshot_chunks_done, report.snapshot_chunks, report.snapshot_rows
    );
    println!(
        "publication             {} ({} tables)",
        report.publication,
        report.tables.len()
    );
    for t in &report.tables {
        println!("  {t}");
    }
    Ok(())
}

/// Writes a snapshot signal into the WAL: the capture on this slot acts on
/// it when it decodes it (at once if running, else when it next starts).
async fn request_snapshot(config: CaptureConfig, tables: Vec<String>) -> anyhow::Result<()> {
    let (sql, _driver) = walhouse::postgres::client::connect(&config.source).await?;
    let published = walhouse::postgres::publication::published_tables(&sql, &config.publication).await?;
    let mut names = Vec::new();
    for t in &tables {
        let name = TableName::parse(t).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            published.contains(&name),
            "{name} is not in publication {:?}. Fix: add it (ALTER PUBLICATION … ADD TABLE {}), which also snapshots it",
            config.publication,
            name.quoted()
        );
        names.push(name.quoted());
    }
    let signal = serde_json::to_string(&capture::Signal {
        slot: config.slot.clone(),
        snapshot: names,
    })?;
    let row = sql
        .query_one(
            "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text",
            &[&capture::SIGNAL_PREFIX, &signal],
        )
        .await?;
    let lsn: String = row.try_get(0)?;
    println!(
        "snapshot of {} requested at {lsn}; the capture on slot {:?} reads it while streaming (see `walhouse-capture status`)",
        tables.join(", "),
        config.slot
    );
    Ok(())
}

async fn run(config: CaptureConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: acknowledging what was written");
        let _ = stop_tx.send(true);
    });
    let summary = match (&config.output, &config.kafka) {
        (OutputKind::Kafka, Some(kafka)) => {
            let registry = Arc::new(Registry::new(&kafka.registry)?);
            let mut out = KafkaDestination::new(kafka, &config.source.dbname, registry)?;
            capture::run(&config, &mut out, stop_rx).await?
        }
        _ => {
            let mut out = JsonLines::new(tokio::io::stdout());
            capture::run(&config, &mut out, stop_rx).await?
        }
    };
    tracing::info!(
        acknowledged = %summary.acknowledged,
        events = summary.events,
        transactions = summary.transactions,
        "stopped cleanly"
    );
    Ok(())
}
