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

use std::marker::PhantomData;

use walhouse::capture::config::{CaptureArgs, CaptureConfig};
use walhouse::sink::config::{SinkArgs, SinkConfig};

use crate::pipeline::{RunningCapture, RunningSink};

/// A program's flags (without its name); what both programs' command lines
/// share is written once here, what each needs on its own below.
#[derive(Debug)]
pub struct Command<P> {
    argv: Vec<String>,
    program: PhantomData<P>,
}

/// walhouse-capture.
#[derive(Debug)]
pub enum Capture {}
/// walhouse-sink.
#[derive(Debug)]
pub enum Sink {}

pub type CaptureCommand = Command<Capture>;
pub type SinkCommand = Command<Sink>;

// Derived impls would ask the marker for Clone and Default too.
impl<P> Clone for Command<P> {
    fn clone(&self) -> Self {
        Command {
            argv: self.argv.clone(),
            program: PhantomData,
        }
    }
}

impl<P> Default for Command<P> {
    fn default() -> Self {
        Command {
            argv: Vec::new(),
            program: PhantomData,
        }
    }
}

impl<P> Command<P> {
    /// One flag and its value, replacing the value given before if any
    /// (clap refuses a flag given twice; a flag given many times,
    /// `--kafka-option`, goes through [`Self::args`]).
    pub fn with(mut self, flag: &str, value: impl AsRef<str>) -> Self {
        let value = value.as_ref().to_owned();
        match self.argv.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.argv.len() => self.argv[i + 1] = value,
            _ => self.argv.extend([flag.to_owned(), value]),
        }
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

    /// The flags after the program's name, as `try_parse_from` takes them.
    fn with_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        std::iter::once(name).chain(self.argv.iter().map(String::as_str))
    }
}

impl Command<Capture> {
    /// Capture from `source_url`, nothing else set.
    pub fn from(source_url: &str) -> Self {
        Command::default().with("--source-url", source_url)
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

    /// The configuration, resolved as the binary resolves it.
    pub fn config(&self) -> CaptureConfig {
        let args = CaptureArgs::parse_layered(self.with_name("walhouse-capture")).expect("capture flags");
        CaptureConfig::resolve(args.settings).expect("capture config")
    }

    /// Starts capture into Kafka in this process, with the binary's code.
    pub fn start(&self) -> RunningCapture {
        RunningCapture::start(self.config())
    }
}

impl Command<Sink> {
    /// Into `warehouse` (a URL) from Kafka at `bootstrap`, schemas read
    /// from `registry_url`.
    pub fn into(warehouse: &str, bootstrap: &str, registry_url: &str) -> Self {
        Command::default().args(&[
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

    /// The configuration, resolved as the binary resolves it.
    pub fn config(&self) -> SinkConfig {
        let args = SinkArgs::parse_layered(self.with_name("walhouse-sink")).expect("sink flags");
        SinkConfig::resolve(args.settings, args.command.is_none()).expect("sink config")
    }

    /// Starts the sink in this process, with the binary's code.
    pub async fn start(&self) -> RunningSink {
        RunningSink::start(self.config())
    }
}
