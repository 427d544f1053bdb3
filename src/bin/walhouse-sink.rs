//! `walhouse-sink`: parse config, open the warehouse, consume or load files.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;
use walhouse::cli::{init_logging, shutdown_signal};
use walhouse::sink::config::{SinkArgs, SinkCommand, SinkConfig, WarehouseTarget};
use walhouse::sink::metrics::SinkMetrics;
use walhouse::sink::tables::Tables;
use walhouse::sink::{insolvency, prepare, Sink};
use walhouse::warehouse::duckdb::DuckDbWarehouse;
use walhouse::warehouse::postgres::PostgresWarehouse;
use walhouse::warehouse::Warehouse;

fn main() -> ExitCode {
    let args = SinkArgs::parse();
    let check = args.check;
    let load = args
        .command
        .as_ref()
        .map(|SinkCommand::LoadInsolvencies { path }| path.clone());
    let config = match SinkConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walhouse-sink: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        println!("configuration is valid:\n{config:#?}");
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walhouse-sink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match config.warehouse.clone() {
            WarehouseTarget::DuckDb(path) => run(config, DuckDbWarehouse::open(&path)?, load.as_deref()).await,
            WarehouseTarget::Postgres(info) => {
                run(config, PostgresWarehouse::connect(&info).await?, load.as_deref()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("walhouse-sink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run<W: Warehouse + Send + 'static>(
    config: SinkConfig,
    mut warehouse: W,
    load: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = load {
        prepare(&mut warehouse, &mut Tables::default()).await?;
        for file in insolvency::files(path)? {
            let report = insolvency::load_file(&mut warehouse, &file).await?;
            if report.already_loaded {
                println!("{}: loaded before, nothing added", report.file);
            } else {
                println!(
                    "{}: {} rows, {} dead letters (see walhouse.dead_letters)",
                    report.file, report.rows, report.dead_letters
                );
            }
        }
        return Ok(());
    }
    let settings = config.consume.ok_or_else(|| anyhow::anyhow!("no Kafka settings"))?;
    let metrics = Arc::new(SinkMetrics::default());
    let _server = match settings.metrics_addr {
        Some(addr) => Some(walhouse::metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: writing the pending batch");
        let _ = stop.send(true);
    });
    Sink::new(settings, warehouse, metrics).await?.run(stopped).await?;
    Ok(())
}
