//! The operator's commands beside the capture loop: `status` (the slot,
//! its lag and WAL retention, the snapshot's progress, the published
//! tables) and `snapshot` (a request to re-read tables, written into the
//! WAL for the running capture to act on; on the primary when the source
//! is a standby).

use std::fmt::Write as _;

use super::config::CaptureConfig;
use super::error::CaptureError;
use super::incremental::{Signal, SIGNAL_PREFIX};
use super::initial::snapshot_slot_name;
use super::snapshot_progress::ProgressStore;
use super::standby::Writer;
use crate::postgres::client::{self, ReadColumn};
use crate::postgres::publication::{self, TableName};
use crate::postgres::replication::ReplicationClient;
use crate::postgres::slot::{self, StatusReport};
use crate::postgres::SourceError;

/// The slot's state as `walhouse-capture status` shows it.
pub async fn status(config: &CaptureConfig) -> Result<StatusReport, SourceError> {
    let (sql, _driver) = client::connect(&config.source).await?;
    let mut report = slot::status(
        &sql,
        &config.slot,
        &config.publication,
        &snapshot_slot_name(&config.slot),
    )
    .await?;
    ProgressStore::new(&config.state_schema, &config.slot)
        .fill_status(&sql, &mut report)
        .await?;
    // The default spool directory is named by the source's system
    // identifier, which only a replication connection tells.
    let system_id = match &config.spool_dir {
        Some(_) => Some(String::new()),
        None => match ReplicationClient::connect(&config.source).await {
            Ok(mut repl) => repl.identify_system().await.ok().map(|i| i.system_id),
            Err(_) => None,
        },
    };
    if let Some(system_id) = system_id {
        let spool_dir = config.spool_dir(&system_id);
        report.spool_bytes = super::spool::spooled_bytes(&spool_dir);
        report.spool_dir = spool_dir.display().to_string();
    }
    Ok(report)
}

/// The text form of [`status`]: one line per fact, `-` for what the server
/// does not report (older versions lack some slot columns).
pub fn status_text(report: &StatusReport) -> String {
    let or = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let bytes = |b: Option<i64>| or(b.map(|b| format!("{b} bytes")));
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<24}{value}");
    };
    line(
        "slot",
        format!(
            "{} ({})",
            report.slot,
            if report.slot_exists { "exists" } else { "missing" }
        ),
    );
    line("active pid", or(report.active_pid.map(|p| p.to_string())));
    line("confirmed flush LSN", or(report.confirmed_flush_lsn.clone()));
    line("WAL held back", bytes(report.lag_bytes));
    line("wal_status", or(report.wal_status.clone()));
    line("safe_wal_size", bytes(report.safe_wal_size));
    line("max_slot_wal_keep_size", report.max_slot_wal_keep_size.clone());
    line("invalidation_reason", or(report.invalidation_reason.clone()));
    line("failover", or(report.failover.map(|f| f.to_string())));
    line("conflicting", or(report.conflicting.map(|c| c.to_string())));
    line("inactive since", or(report.inactive_since.clone()));
    line(
        "snapshot",
        format!(
            "{} ({} of {} chunks done, {} rows)",
            report.snapshot, report.snapshot_chunks_done, report.snapshot_chunks, report.snapshot_rows
        ),
    );
    line(
        "decoding",
        or(report.decoding.map(|d| {
            format!(
                "{} transactions spilled ({} bytes), {} streamed ({} bytes)",
                d.spill_txns, d.spill_bytes, d.stream_txns, d.stream_bytes
            )
        })),
    );
    line(
        "spool",
        format!("{} ({})", report.spool_dir, bytes(report.spool_bytes.map(|b| b as i64))),
    );
    line(
        "publication",
        format!("{} ({} tables)", report.publication, report.tables.len()),
    );
    for t in &report.tables {
        let _ = writeln!(out, "  {t}");
    }
    out
}

/// Writes a snapshot signal for `tables` into the WAL; returns its LSN. The
/// capture on this slot acts on it when it decodes it (at once if running,
/// else when it next starts).
pub async fn request_snapshot(config: &CaptureConfig, tables: &[String]) -> Result<String, CaptureError> {
    let (sql, _driver) = client::connect(&config.source).await?;
    // On a standby the signal is written on the primary and reaches the
    // slot through replay.
    let writer = Writer::connect(config, &std::sync::Arc::new(sql)).await?;
    let sql = &*writer.client;
    let published = publication::published_tables(sql, &config.publication).await?;
    let mut names = Vec::new();
    for t in tables {
        let name = TableName::parse(t).map_err(CaptureError::InvalidTable)?;
        if !published.contains(&name) {
            return Err(CaptureError::NotPublished {
                table: name.to_string(),
                quoted: name.quoted(),
                publication: config.publication.clone(),
            });
        }
        names.push(name.quoted());
    }
    let signal = serde_json::to_string(&Signal {
        slot: config.slot.clone(),
        snapshot: names,
    })
    .map_err(|e| CaptureError::InvalidTable(e.to_string()))?;
    let row = sql
        .query_one(
            "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text",
            &[&SIGNAL_PREFIX, &signal],
        )
        .await
        .map_err(SourceError::Sql)?;
    Ok(row.read("the snapshot signal query", 0)?)
}
