//! `walhouse-sink`: Kafka topics into warehouse tables. Not built yet.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "walhouse-sink: not available in this version; the sink (CDC topics, company events and the \
         insolvency CSV into DuckDB or Postgres) is on the roadmap in the README"
    );
    ExitCode::from(2)
}
