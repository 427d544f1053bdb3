//! walhouse-capture's and walhouse-sink's command lines, built in one place
//! for every test, bench and the demo: the flags a pipeline always needs
//! are written here once, and a test adds only what it is about. (Tests of
//! the command line itself, `capture_cli.rs` and the `snapshot`
//! subcommand's, write theirs by hand: the argv is what they test.)
//!
//! ```ignore
//! let capture = CaptureCommand::from(&source_url)
//!     .into_kafka(&broker.bootstrap(), &registry.url, "t1")
//!     .with("--format", "debezium")
//!     .start();
//! let sink = SinkCommand::into(&warehouse, &broker.bootstrap(), &registry.url)
//!     .topics_under("t1", "group-1")
//!     .start()
//!     .await;
//! ```

use clap::Parser;
use walhouse::capture::config::{CaptureArgs, CaptureConfig};
use walhouse::sink::config::{SinkArgs, SinkConfig};

use crate::pipeline::{RunningCapture, RunningSink};

/// Sets `flag` to `value` in `argv`: the value after an earlier `flag` is
/// replaced (clap refuses a flag given twice), or both are added.
fn set(argv: &mut Vec<String>, flag: &str, value: &str) {
    match argv.iter().position(|a| a == flag) {
        Some(i) if i + 1 < argv.len() => argv[i + 1] = value.to_owned(),
        _ => argv.extend([flag.to_owned(), value.to_owned()]),
    }
}

/// walhouse-capture's flags (without the program name).
#[derive(Clone, Debug, Default)]
pub struct CaptureCommand {
    argv: Vec<String>,
}

impl CaptureCommand {
    /// Capture from `source_url`, nothing else set.
    pub fn from(source_url: &str) -> Self {
        CaptureCommand::default().with("--source-url", source_url)
    }

    /// Into Kafka at `bootstrap`, schemas registered at `registry_url`,
    /// topics named under `prefix`, status every 200 ms.
    pub fn into_kafka(self, bootstrap: &str, registry_url: &str, prefix: &str) -> Self {
        self.args(&[
            "--output",
            "kafka",
            "--brokers",
            bootstrap,
            "--schema-registry-url",
            registry_url,
            "--topic-prefix",
            prefix,
            "--status-interval-ms",
            "200",
        ])
    }

    /// One flag and its value, replacing the value given before if any
    /// (a flag given many times, `--kafka-option`, goes through [`Self::args`]).
    pub fn with(mut self, flag: &str, value: impl AsRef<str>) -> Self {
        set(&mut self.argv, flag, value.as_ref());
        self
    }

    /// Flags (and their values) as written on a command line.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The configuration, resolved as the binary resolves it.
    pub fn config(&self) -> CaptureConfig {
        let argv = std::iter::once("walhouse-capture").chain(self.argv.iter().map(String::as_str));
        CaptureConfig::resolve(CaptureArgs::try_parse_from(argv).expect("capture flags")).expect("capture config")
    }

    /// Starts capture into Kafka in this process, with the binary's code.
    pub fn start(&self) -> RunningCapture {
        RunningCapture::start(self.config())
    }
}

/// walhouse-sink's flags (without the program name).
#[derive(Clone, Debug, Default)]
pub struct SinkCommand {
    argv: Vec<String>,
}

impl SinkCommand {
    /// Into `warehouse` (a URL) from Kafka at `bootstrap`, schemas read
    /// from `registry_url`.
    pub fn into(warehouse: &str, bootstrap: &str, registry_url: &str) -> Self {
        SinkCommand::default().args(&[
            "--warehouse",
            warehouse,
            "--brokers",
            bootstrap,
            "--schema-registry-url",
            registry_url,
        ])
    }

    /// Every topic under `prefix`, in consumer group `group`, batches
    /// written every 100 ms.
    pub fn topics_under(self, prefix: &str, group: &str) -> Self {
        let pattern = format!("^{}\\..*", prefix.replace('.', "\\."));
        self.with("--topic-pattern", pattern)
            .with("--group-id", group)
            .with("--batch-ms", "100")
    }

    /// One flag and its value, replacing the value given before if any
    /// (a flag given many times, `--kafka-option`, goes through [`Self::args`]).
    pub fn with(mut self, flag: &str, value: impl AsRef<str>) -> Self {
        set(&mut self.argv, flag, value.as_ref());
        self
    }

    /// Flags (and their values) as written on a command line.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The configuration, resolved as the binary resolves it.
    pub fn config(&self) -> SinkConfig {
        let argv = std::iter::once("walhouse-sink").chain(self.argv.iter().map(String::as_str));
        SinkConfig::resolve(SinkArgs::try_parse_from(argv).expect("sink flags")).expect("sink config")
    }

    /// Starts the sink in this process, with the binary's code.
    pub async fn start(&self) -> RunningSink {
        RunningSink::start(self.config())
    }
}
