//! `walhouse-capture`: parse config, run the capture, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;
use walhouse::capture;
use walhouse::config::{init_logging, CaptureArgs, CaptureConfig, OutputKind};
use walhouse::kafka::producer::KafkaDestination;
use walhouse::output::stdout::JsonLines;
use walhouse::registry::Registry;

fn main() -> ExitCode {
    let args = CaptureArgs::parse();
    let check = args.check;
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walhouse-capture: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("walhouse-capture: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: CaptureConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process still stops on SIGINT/SIGTERM,
        // just without the clean acknowledgement.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
