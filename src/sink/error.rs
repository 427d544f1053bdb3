//! What stops the sink, and the Kafka consumer's errors it only reports.

use super::tables::TableError;
use crate::registry::RegistryError;
use crate::warehouse::WarehouseError;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka: {context}: {source}. Fix: check --brokers and that the broker is up")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("schema registry: {0}. Fix: check --schema-registry-url and that the registry is up")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("the task writing a batch panicked; nothing of it is counted as stored")]
    Lost,
    #[error(transparent)]
    Config(#[from] crate::cli::ConfigError),
    #[error("cannot serve metrics on {addr}: {source}. Fix: choose a free --metrics-addr")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub(super) fn kafka(context: &str) -> impl Fn(rdkafka::error::KafkaError) -> SinkError + '_ {
    move |source| SinkError::Kafka {
        context: context.to_owned(),
        source,
    }
}

/// Errors the consumer reports while it goes on (it reconnects by itself).
pub(super) fn consumer_error(e: &rdkafka::error::KafkaError) {
    use rdkafka::types::RDKafkaErrorCode;
    match e.rdkafka_error_code() {
        // A subscribed topic that does not exist yet (the companies topic
        // before its first event, a pattern before capture's first table).
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            tracing::debug!("Kafka consumer: {e} (consumed once it exists)")
        }
        _ => tracing::warn!("Kafka consumer: {e}"),
    }
}
