//! Kafka: the producer destination and its delivery tracking.

pub mod delivery;
pub mod encoder;
pub mod producer;
