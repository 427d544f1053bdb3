//! The sink's one clock read.

/// The wall clock, microseconds since the Unix epoch (the project's one clock read).
/// The ingestion time of rows written now.
pub fn now_micros() -> i64 {
    crate::postgres::pgoutput::PgTimestamp::now().unix_micros()
}
