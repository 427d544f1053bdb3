//! Capture from a hot standby (Postgres 16+): where its few writes go.
//!
//! Everything heavy runs on the source, standby or not: decoding the slot,
//! the snapshot's COPY, catalog reads. A standby cannot write, yet capture
//! writes three small things: its snapshot progress, the watermarks of
//! incremental snapshots and heartbeats (both logical messages in the
//! WAL). On a standby these go to the primary (`--primary-url`), whose WAL
//! the standby replays, so the slot decodes them as if written locally
//! and the progress rows live, as on a primary, beside the slot in the
//! database both servers share.
//!
//! Two things differ on a standby and are handled here: creating a slot
//! waits for a running-transactions record from the primary, which
//! capture asks for (`pg_log_standby_snapshot()`); and the publication,
//! created on the primary, must be replayed before the slot may use it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::config::CaptureConfig;
use super::error::CaptureError;
use crate::postgres::client::{self, ReadColumn};
use crate::postgres::replication::ReplicationClient;
use crate::postgres::SourceError;

/// How long capture waits for the standby to replay the primary's setup.
const REPLAY_WAIT: Duration = Duration::from_secs(120);

/// Where capture's writes go: the source itself, or, when the source is a
/// standby, its primary.
#[derive(Clone)]
pub(super) struct Writer {
    pub client: Arc<Client>,
    /// The source is a standby and `client` is its primary.
    pub standby: bool,
}

impl Writer {
    /// The source's role decides: a primary writes itself; a standby needs
    /// `--primary-url`, a primary of the same system.
    pub async fn connect(config: &CaptureConfig, source: &Arc<Client>) -> Result<Writer, CaptureError> {
        if !in_recovery(source).await? {
            if config.primary_url.is_some() {
                tracing::info!("the source is a primary: --primary-url is not needed and not used");
            }
            return Ok(Writer {
                client: source.clone(),
                standby: false,
            });
        }
        let version: i32 = source
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(SourceError::Sql)?
            .read("the server version query", 0)?;
        if version < 160000 {
            return Err(StandbyError::TooOld { version }.into());
        }
        if config.slot_failover {
            return Err(StandbyError::FailoverSlot.into());
        }
        let Some(primary_url) = &config.primary_url else {
            return Err(StandbyError::NoPrimary.into());
        };
        let (primary, _driver) = client::connect(primary_url).await?;
        // What capture writes there is flushed at commit, so that the flush
        // position covers it (see `wait_replayed`).
        primary
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(SourceError::Sql)?;
        if in_recovery(&primary).await? {
            return Err(StandbyError::PrimaryIsStandby {
                address: primary_url.address(),
            }
            .into());
        }
        let (ours, theirs) = (system_id(&config.source).await?, system_id(primary_url).await?);
        if ours != theirs {
            return Err(StandbyError::OtherSystem {
                standby: ours,
                primary: theirs,
            }
            .into());
        }
        warn_about_feedback(source).await?;
        tracing::info!(
            primary = %primary_url.address(),
            "the source is a standby: reading the WAL and snapshots there, writing progress, watermarks and heartbeats on the primary"
        );
        Ok(Writer {
            client: Arc::new(primary),
            standby: true,
        })
    }

    /// Connects again after the connection was lost (the source's own
    /// connection on a primary, which the caller reconnected).
    pub async fn reconnect(&mut self, config: &CaptureConfig, source: &Arc<Client>) -> Result<(), SourceError> {
        if !self.standby {
            self.client = source.clone();
            return Ok(());
        }
        if self.client.is_closed() {
            if let Some(url) = &config.primary_url {
                let (primary, _driver) = client::connect(url).await?;
                primary.batch_execute("SET synchronous_commit = on").await?;
                self.client = Arc::new(primary);
                tracing::info!("connection to the primary opened again");
            }
        }
        Ok(())
    }

    /// Waits until the standby replayed everything capture committed on the
    /// primary (the publication it just made there). The flush position,
    /// not the insert position: an idle primary may leave its last records
    /// unflushed, and unsent, for a long time. Immediate on a primary.
    pub async fn wait_replayed(&self, source: &Client) -> Result<(), CaptureError> {
        if !self.standby {
            return Ok(());
        }
        let target: String = self
            .client
            .query_one("SELECT pg_catalog.pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(SourceError::Sql)?
            .read("the primary's WAL position query", 0)?;
        let started = Instant::now();
        loop {
            let replayed: Option<bool> = source
                .query_one(
                    "SELECT pg_catalog.pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&target],
                )
                .await
                .map_err(SourceError::Sql)?
                .read("the standby's replay position query", 0)?;
            if replayed == Some(true) {
                return Ok(());
            }
            if started.elapsed() > REPLAY_WAIT {
                return Err(StandbyError::NotReplaying {
                    target,
                    waited: REPLAY_WAIT,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `creating`, a slot being created. On a standby the slot is
    /// ready only after the primary logs its running transactions (every
    /// 15 s while it writes, never while idle): capture asks for one each
    /// second meanwhile.
    pub async fn while_creating_slot<F: Future>(&self, creating: F) -> F::Output {
        if !self.standby {
            return creating.await;
        }
        let primary = self.client.clone();
        let nudge = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = primary
                    .batch_execute("SELECT pg_catalog.pg_log_standby_snapshot()")
                    .await
                {
                    tracing::warn!(
                        "cannot call pg_log_standby_snapshot() on the primary ({e}): the slot is created on the \
                         standby at the primary's next running-transactions record, within 15 s while it writes. \
                         Fix, to create it at once: GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO the \
                         --primary-url role"
                    );
                    return;
                }
            }
        });
        let out = creating.await;
        nudge.abort();
        out
    }
}

/// Why capture cannot run against a standby as configured.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error(
        "the source is a standby running Postgres {version}; logical decoding on a standby needs 16+. Fix: point \
         --source-url at the primary, or upgrade the standby"
    )]
    TooOld { version: i32 },
    #[error(
        "the source is a standby, and capture writes its snapshot progress, watermarks and heartbeats where a standby \
         cannot. Fix: give the primary as --primary-url (same form as --source-url); reads stay on the standby"
    )]
    NoPrimary,
    #[error(
        "--slot-failover cannot be set for a slot created on a standby (Postgres keeps failover slots on the primary \
         only). Fix: --slot-failover false; a slot on a standby survives that standby's promotion"
    )]
    FailoverSlot,
    #[error("--primary-url names {address}, which is a standby too. Fix: give the primary")]
    PrimaryIsStandby { address: String },
    #[error(
        "--primary-url is another system (system identifier {primary}) than the standby's (system identifier \
         {standby}). Fix: give the primary this standby replicates from"
    )]
    OtherSystem { standby: String, primary: String },
    #[error(
        "the standby did not replay the primary's WAL up to {target} within {waited:?}. Fix: check replication from \
         the primary (pg_stat_wal_receiver on the standby, pg_stat_replication on the primary)"
    )]
    NotReplaying { target: String, waited: Duration },
}

async fn in_recovery(client: &Client) -> Result<bool, SourceError> {
    client
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await?
        .read("the recovery state query", 0)
}

async fn system_id(info: &crate::postgres::conninfo::ConnInfo) -> Result<String, SourceError> {
    let mut repl = ReplicationClient::connect(info).await?;
    Ok(repl.identify_system().await?.system_id)
}

/// Without feedback the primary may vacuum away catalog rows the standby's
/// slot still needs, and Postgres then invalidates the slot.
async fn warn_about_feedback(source: &Client) -> Result<(), SourceError> {
    let row = source
        .query_one(
            "SELECT current_setting('hot_standby_feedback') = 'on', current_setting('primary_slot_name') <> ''",
            &[],
        )
        .await?;
    const QUERY: &str = "the standby settings query";
    if !row.read::<bool>(QUERY, 0)? || !row.read::<bool>(QUERY, 1)? {
        tracing::warn!(
            "the standby lacks hot_standby_feedback = on or a primary_slot_name: the primary may remove catalog rows \
             the slot needs, and Postgres then invalidates the slot (conflicting). Fix: on the standby, ALTER SYSTEM SET \
             hot_standby_feedback = on and set primary_slot_name to a physical slot on the primary, then reload"
        );
    }
    Ok(())
}
