//! `walhouse-sink`: parse config, open the warehouse, consume or load files.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::watch;
use walhouse::cli::{init_logging, shutdown_signal};
use walhouse::sink;
use walhouse::sink::config::{SinkArgs, SinkCommand, SinkConfig, WarehouseTarget};
use walhouse::sink::metrics::SinkMetrics;
use walhouse::sink::tables::Tables;
use walhouse::sink::{insolvency, prepare};
use walhouse::warehouse::iceberg::IcebergWarehouse;

fn main() -> ExitCode {
    let args = SinkArgs::parse_layered(std::env::args_os()).unwrap_or_else(|e| e.exit("walhouse-sink"));
    let check = args.check;
    let command = args.command;
    let config = match SinkConfig::resolve(args.settings, command.is_none()) {
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
        match command {
            Some(SinkCommand::LoadInsolvencies { path }) => load_insolvencies(&config, &path).await,
            Some(SinkCommand::DuckdbViews) => duckdb_views(&config).await,
            None => {
                let (stop, stopped) = watch::channel(false);
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("stopping: writing the pending batch");
                    let _ = stop.send(true);
                });
                sink::start(config, Arc::new(SinkMetrics::default()), stopped).await?;
                Ok(())
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

/// `duckdb-views`: the Iceberg warehouse's tables and views as a DuckDB
/// script, on stdout.
async fn duckdb_views(config: &SinkConfig) -> anyhow::Result<()> {
    let WarehouseTarget::Iceberg(spec) = &config.warehouse else {
        anyhow::bail!(
            "duckdb-views is for an Iceberg warehouse (--warehouse iceberg:<DIR>); the others hold their views"
        );
    };
    print!("{}", IcebergWarehouse::open_spec(spec).await?.duckdb_script().await?);
    Ok(())
}

/// `load-insolvencies`: each CSV file of `path` into the warehouse, once.
async fn load_insolvencies(config: &SinkConfig, path: &Path) -> anyhow::Result<()> {
    let mut warehouse = config.warehouse.open().await?;
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
    Ok(())
}
