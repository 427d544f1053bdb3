//! `walhouse-capture`: parse config, run the capture, map errors to exit codes.

use std::process::ExitCode;

use tokio::sync::watch;
use walhouse::capture::config::{CaptureArgs, CaptureCommand, CaptureConfig};
use walhouse::capture::{self, admin};
use walhouse::cli::{init_logging, shutdown_signal};

fn main() -> ExitCode {
    let args = CaptureArgs::parse_layered(std::env::args_os()).unwrap_or_else(|e| e.exit("walhouse-capture"));
    let check = args.check;
    let command = args.command.as_ref().map(|c| match c {
        CaptureCommand::Status { json } => Command::Status { json: *json },
        CaptureCommand::Snapshot { tables } => Command::Snapshot { tables: tables.clone() },
    });
    let config = match CaptureConfig::resolve(args.settings) {
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
    let report = admin::status(&config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", admin::status_text(&report));
    }
    Ok(())
}

async fn request_snapshot(config: CaptureConfig, tables: Vec<String>) -> anyhow::Result<()> {
    let lsn = admin::request_snapshot(&config, &tables).await?;
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
    let summary = capture::start(&config, stop_rx).await?;
    tracing::info!(
        acknowledged = %summary.acknowledged,
        events = summary.events,
        transactions = summary.transactions,
        "stopped cleanly"
    );
    Ok(())
}
