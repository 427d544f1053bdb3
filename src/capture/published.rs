//! Which tables capture reads: the publication's, less walhouse's own.

use super::error::CaptureError;
use crate::postgres::publication;

/// The published tables, less walhouse's own progress tables (which a
/// publication FOR ALL TABLES includes).
pub(super) async fn captured_tables(
    sql: &tokio_postgres::Client,
    publication: &str,
    state_schema: &str,
) -> Result<Vec<publication::TableName>, CaptureError> {
    let mut tables = publication::published_tables(sql, publication).await?;
    retain_captured(&mut tables, state_schema);
    Ok(tables)
}

pub(super) fn retain_captured(tables: &mut Vec<publication::TableName>, state_schema: &str) {
    tables.retain(|t| t.schema != state_schema);
}
