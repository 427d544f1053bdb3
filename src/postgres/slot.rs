//! Preflight checks and the replication slot's state, read over SQL.
//!
//! Everything that would otherwise surface later as a cryptic stream error
//! is checked here first, so the operator reads one message with the fix:
//! `wal_level`, the REPLICATION attribute, a slot owned by another
//! consumer, a slot for another plugin or database, an invalidated slot.

use std::time::Duration;

use tokio_postgres::Client;

use super::client::ReadColumn;
use super::error::SourceError;
use super::lsn::Lsn;

/// A row of `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Why the server invalidated the slot (Postgres 17+: `wal_removed`,
    /// `rows_removed`, `wal_level_insufficient`, `idle_timeout`); `None`
    /// on older servers and for a valid slot.
    pub invalidation_reason: Option<String>,
    /// Whether the slot is synchronised to physical standbys (Postgres 17+).
    pub failover: Option<bool>,
}

/// Fails with the fix when the server cannot serve logical replication to
/// this role.
pub async fn preflight(client: &Client, user: &str) -> Result<(), SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    COALESCE((SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)",
            &[],
        )
        .await?;
    const QUERY: &str = "the preflight query (wal_level, REPLICATION)";
    let wal_level: String = row.read(QUERY, 0)?;
    if wal_level != "logical" {
        return Err(SourceError::WalLevelNotLogical { actual: wal_level });
    }
    let can_replicate: bool = row.read(QUERY, 1)?;
    if !can_replicate {
        return Err(SourceError::MissingReplicationPrivilege { user: user.into() });
    }
    Ok(())
}

/// The server's `wal_sender_timeout`; status updates go out at half of it
/// (at most every second) so the server never drops an idle consumer.
pub async fn wal_sender_timeout(client: &Client) -> Result<Duration, SourceError> {
    let row = client
        .query_one(
            "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await?;
    let ms: i64 = row.read("the wal_sender_timeout query", 0)?;
    Ok(Duration::from_millis(ms.max(0) as u64))
}

/// The status interval walhouse uses: `min(1 s, wal_sender_timeout / 2)`,
/// never below 100 ms; a zero timeout (disabled) means 1 s.
pub fn status_interval(wal_sender_timeout: Duration) -> Duration {
    if wal_sender_timeout.is_zero() {
        return Duration::from_secs(1);
    }
    (wal_sender_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The columns of `pg_replication_slots` that only newer servers have, read
/// through `to_jsonb` so one query serves Postgres 15 to 18: a column the
/// server lacks reads as NULL.
const NEWER_SLOT_COLUMNS: &str = "to_jsonb(s)->>'invalidation_reason', (to_jsonb(s)->>'failover')::bool, \
     (to_jsonb(s)->>'conflicting')::bool, (to_jsonb(s)->>'inactive_since')";

pub async fn inspect(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    const QUERY: &str = "the pg_replication_slots query";
    let Some(r) = client
        .query_opt(
            &format!(
                "SELECT slot_name::text, plugin::text, slot_type, database::text, active_pid, \
                        restart_lsn::text, confirmed_flush_lsn::text, wal_status, {NEWER_SLOT_COLUMNS} \
                 FROM pg_catalog.pg_replication_slots s WHERE slot_name = $1"
            ),
            &[&slot],
        )
        .await?
    else {
        return Ok(None);
    };
    let lsn = |i: usize| -> Result<Option<Lsn>, SourceError> {
        Ok(r.read::<Option<String>>(QUERY, i)?.and_then(|s| s.parse().ok()))
    };
    Ok(Some(SlotInfo {
        name: r.read(QUERY, 0)?,
        plugin: r.read(QUERY, 1)?,
        slot_type: r.read(QUERY, 2)?,
        database: r.read(QUERY, 3)?,
        active_pid: r.read(QUERY, 4)?,
        restart_lsn: lsn(5)?,
        confirmed_flush: lsn(6)?,
        wal_status: r.read(QUERY, 7)?,
        invalidation_reason: r.read(QUERY, 8)?,
        failover: r.read(QUERY, 9)?,
    }))
}

/// What `walhouse-capture status` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusReport {
    pub slot: String,
    pub slot_exists: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    pub wal_status: Option<String>,
    /// Why the slot was invalidated (Postgres 17+; `None` before 17 and for
    /// a valid slot).
    pub invalidation_reason: Option<String>,
    /// Whether a promoted standby will have the slot (Postgres 17+).
    pub failover: Option<bool>,
    /// Whether a standby's slot conflicts with recovery (Postgres 16+).
    pub conflicting: Option<bool>,
    /// Since when nobody streams from the slot (Postgres 17+).
    pub inactive_since: Option<String>,
    /// WAL bytes the slot holds back (current WAL position minus confirmed).
    pub lag_bytes: Option<i64>,
    /// Bytes left before `max_slot_wal_keep_size` invalidates the slot
    /// (`None`: unlimited).
    pub safe_wal_size: Option<i64>,
    pub max_slot_wal_keep_size: String,
    /// `done`, `copying` (initial or incremental chunks left), `starting`,
    /// `in progress` (an `initial_only` snapshot's temporary slot is
    /// active), `complete` (a slot without recorded progress) or `not started`.
    pub snapshot: String,
    /// Snapshot chunks done and planned, and rows they sent.
    pub snapshot_chunks_done: u64,
    pub snapshot_chunks: u64,
    pub snapshot_rows: u64,
    pub publication: String,
    pub tables: Vec<String>,
    /// What the server counted decoding the slot: spilled and streamed
    /// transactions (Postgres 14+; `None` before, or before it decoded).
    pub decoding: Option<SlotStats>,
    /// Where capture spools streamed transactions, and the bytes there now
    /// (`None`: no spool directory).
    pub spool_dir: String,
    pub spool_bytes: Option<u64>,
}

/// Reads the slot's state, its lag and the publication's tables; the
/// snapshot fields say only whether a slot exists (capture's
/// `ProgressStore::fill_status` adds what its progress tables know).
pub async fn status(
    client: &Client,
    slot: &str,
    publication: &str,
    snapshot_slot: &str,
) -> Result<StatusReport, SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('max_slot_wal_keep_size'), \
                    (SELECT count(*) > 0 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND active)",
            &[&snapshot_slot],
        )
        .await?;
    let (keep, snapshot_running): (String, bool) = (
        row.read("the max_slot_wal_keep_size query", 0)?,
        row.read("the max_slot_wal_keep_size query", 1)?,
    );
    let slot_row = client
        .query_opt(
            &format!(
                "SELECT active_pid, confirmed_flush_lsn::text, wal_status, \
                        ({WAL_END} - confirmed_flush_lsn)::bigint, safe_wal_size, \
                        {NEWER_SLOT_COLUMNS} \
                 FROM pg_catalog.pg_replication_slots s WHERE slot_name = $1"
            ),
            &[&slot],
        )
        .await?;
    let tables = super::publication::published_tables(client, publication)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut report = StatusReport {
        slot: slot.into(),
        slot_exists: slot_row.is_some(),
        active_pid: None,
        confirmed_flush_lsn: None,
        wal_status: None,
        invalidation_reason: None,
        failover: None,
        conflicting: None,
        inactive_since: None,
        lag_bytes: None,
        safe_wal_size: None,
        max_slot_wal_keep_size: keep,
        snapshot: if snapshot_running {
            "in progress".into()
        } else if slot_row.is_some() {
            "complete".into()
        } else {
            "not started".into()
        },
        snapshot_chunks_done: 0,
        snapshot_chunks: 0,
        snapshot_rows: 0,
        publication: publication.into(),
        tables,
        decoding: None,
        spool_dir: String::new(),
        spool_bytes: None,
    };
    if let Some(r) = slot_row {
        const QUERY: &str = "the slot status query";
        report.active_pid = r.read(QUERY, 0)?;
        report.confirmed_flush_lsn = r.read(QUERY, 1)?;
        report.wal_status = r.read(QUERY, 2)?;
        report.lag_bytes = r.read(QUERY, 3)?;
        report.safe_wal_size = r.read(QUERY, 4)?;
        report.invalidation_reason = r.read(QUERY, 5)?;
        report.failover = r.read(QUERY, 6)?;
        report.conflicting = r.read(QUERY, 7)?;
        report.inactive_since = r.read(QUERY, 8)?;
        report.decoding = stats(client, slot).await?;
    }
    Ok(report)
}

/// The end of the server's WAL: written on a primary, replayed on a
/// standby (which cannot call `pg_current_wal_lsn()`).
const WAL_END: &str = "CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
                       ELSE pg_catalog.pg_current_wal_lsn() END";

/// WAL bytes `slot` holds back on the server, and whether
/// `max_slot_wal_keep_size` is unlimited.
pub async fn lag(client: &Client, slot: &str) -> Result<Option<(i64, bool)>, SourceError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT ({WAL_END} - confirmed_flush_lsn)::bigint, \
                        current_setting('max_slot_wal_keep_size') = '-1' \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1"
            ),
            &[&slot],
        )
        .await?;
    const QUERY: &str = "the slot lag query";
    row.map(|r| Ok((r.read::<Option<i64>>(QUERY, 0)?.unwrap_or(0), r.read(QUERY, 1)?)))
        .transpose()
}

/// What Postgres counts for a slot: transactions it spilled to its own
/// disk and transactions it streamed before their commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SlotStats {
    pub spill_txns: u64,
    pub spill_bytes: u64,
    pub stream_txns: u64,
    pub stream_bytes: u64,
}

/// The slot's row of `pg_stat_replication_slots` (Postgres 14+; `None`
/// before, or before the slot has decoded anything).
pub async fn stats(client: &Client, slot: &str) -> Result<Option<SlotStats>, SourceError> {
    let row = client
        .query_opt(
            "SELECT spill_txns, spill_bytes, stream_txns, stream_bytes \
             FROM pg_catalog.pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    // The view does not exist before Postgres 14.
    let row = match row {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => return Ok(None),
        other => other?,
    };
    const QUERY: &str = "the slot statistics query";
    let count = |r: &tokio_postgres::Row, i: usize| -> Result<u64, SourceError> {
        Ok(r.read::<Option<i64>>(QUERY, i)?.unwrap_or(0).max(0) as u64)
    };
    row.map(|r| {
        Ok(SlotStats {
            spill_txns: count(&r, 0)?,
            spill_bytes: count(&r, 1)?,
            stream_txns: count(&r, 2)?,
            stream_bytes: count(&r, 3)?,
        })
    })
    .transpose()
}

/// Fails with the fix when `info` cannot be streamed from by walhouse into
/// database `dbname`.
pub fn check_usable(info: &SlotInfo, dbname: &str) -> Result<(), SourceError> {
    let unusable = |problem: String| SourceError::SlotUnusable {
        slot: info.name.clone(),
        problem,
    };
    if info.wal_status.as_deref() == Some("lost") || info.invalidation_reason.is_some() {
        return Err(SourceError::SlotInvalidated {
            slot: info.name.clone(),
            reason: info.invalidation_reason.clone(),
        });
    }
    if info.slot_type != "logical" {
        return Err(unusable(format!("is a {} slot, not a logical one", info.slot_type)));
    }
    if info.plugin.as_deref() != Some("pgoutput") {
        return Err(unusable(format!(
            "uses output plugin {:?}, walhouse needs pgoutput",
            info.plugin.as_deref().unwrap_or("")
        )));
    }
    if info.database.as_deref() != Some(dbname) {
        return Err(unusable(format!(
            "belongs to database {:?}, not {dbname:?}",
            info.database.as_deref().unwrap_or("")
        )));
    }
    if let Some(pid) = info.active_pid {
        return Err(SourceError::SlotActive {
            slot: info.name.clone(),
            pid: Some(pid),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotInfo {
        SlotInfo {
            name: "walhouse".into(),
            plugin: Some("pgoutput".into()),
            slot_type: "logical".into(),
            database: Some("shop".into()),
            active_pid: None,
            restart_lsn: None,
            confirmed_flush: None,
            wal_status: Some("reserved".into()),
            invalidation_reason: None,
            failover: None,
        }
    }

    #[test]
    fn usable_slots_and_the_reasons_others_are_not() {
        assert!(check_usable(&slot(), "shop").is_ok());
        let lost = SlotInfo {
            wal_status: Some("lost".into()),
            ..slot()
        };
        assert!(matches!(
            check_usable(&lost, "shop"),
            Err(SourceError::SlotInvalidated { .. })
        ));
        let busy = SlotInfo {
            active_pid: Some(42),
            ..slot()
        };
        assert!(matches!(
            check_usable(&busy, "shop"),
            Err(SourceError::SlotActive { pid: Some(42), .. })
        ));
        let other_plugin = SlotInfo {
            plugin: Some("wal2json".into()),
            ..slot()
        };
        assert!(check_usable(&other_plugin, "shop").is_err());
        assert!(check_usable(&slot(), "other_db").is_err());
    }

    #[test]
    fn status_interval_follows_wal_sender_timeout() {
        assert_eq!(status_interval(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(status_interval(Duration::from_millis(1000)), Duration::from_millis(500));
        assert_eq!(status_interval(Duration::from_millis(10)), Duration::from_millis(100));
        assert_eq!(status_interval(Duration::ZERO), Duration::from_secs(1));
    }
}
