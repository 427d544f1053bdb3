//! Snapshot progress, kept in the source database beside the slot.
//!
//! Two tables in the state schema (default `walhouse`):
//! - `snapshots`: one row per slot, its phase (`starting`, `copying`,
//!   `done`) and the slot's consistent point;
//! - `snapshot_chunks`: every planned chunk (a table's page range), marked
//!   done only after the destination reported all its rows durable;
//! - `snapshot_partitions`: the partition trees of the partitioned tables
//!   snapshotted, as they were when planned, so that a partition attached
//!   later is recognised (its rows from before were never changes).
//!
//! The `starting` row is written *before* the slot is created, so a slot
//! found with a phase other than `done` is a snapshot that was cut off:
//! its missing chunks are finished by the incremental method while
//! streaming resumes. A half snapshot is never taken for a whole one.
//! Progress lives in the source because the slot does: both go together
//! with the database (a restore from backup, a dropped slot).

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::postgres::client::ReadColumn;
use crate::postgres::error::SourceError;
use crate::postgres::partitions::TreeMember;
use crate::postgres::publication::TableName;
use crate::postgres::snapshot::PageRange;
use crate::postgres::Lsn;
use crate::quote;

/// Where a slot's snapshot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Recorded before the slot is created; no chunks planned yet.
    Starting,
    /// Chunks planned, some not done.
    Copying,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Copying => "copying",
            Phase::Done => "done",
        }
    }

    fn parse(s: &str) -> Phase {
        match s {
            "done" => Phase::Done,
            "copying" => Phase::Copying,
            _ => Phase::Starting,
        }
    }
}

/// One chunk of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Order of the plan, unique per slot.
    pub seq: u64,
    pub table: TableName,
    pub pages: PageRange,
    /// The table's file node when planned: a rewrite moves every row.
    pub relfilenode: u32,
}

/// The progress tables of one slot.
#[derive(Clone, Debug)]
pub struct ProgressStore {
    schema: String,
    slot: String,
}

impl ProgressStore {
    pub fn new(schema: &str, slot: &str) -> Self {
        ProgressStore {
            schema: schema.to_owned(),
            slot: slot.to_owned(),
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The statements that forget this slot's snapshot, for messages.
    pub fn clear_sql(&self) -> String {
        let slot = crate::quote::literal(&self.slot);
        format!(
            "DELETE FROM {} WHERE slot = {slot}; DELETE FROM {} WHERE slot = {slot}",
            self.table("snapshot_chunks"),
            self.table("snapshots")
        )
    }

    fn table(&self, name: &str) -> String {
        format!("{}.{}", quote::ident(&self.schema), quote::ident(name))
    }

    /// Creates the schema and tables when missing. Only missing objects are
    /// created, so a role without CREATE works once a DBA made them.
    pub async fn ensure(&self, client: &Client, user: &str) -> Result<(), SourceError> {
        // Two captures starting at once on one database would race in
        // CREATE … IF NOT EXISTS, which is not safe against a concurrent
        // creator (a unique violation in the catalog): one at a time.
        client.batch_execute("BEGIN").await?;
        let created = async {
            client
                .execute(
                    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1, 0))",
                    &[&format!("walhouse state schema {}", self.schema)],
                )
                .await?;
            self.create_missing(client, user).await
        }
        .await;
        match created {
            Ok(()) => client.batch_execute("COMMIT").await.map_err(SourceError::from),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn create_missing(&self, client: &Client, user: &str) -> Result<(), SourceError> {
        let wrap = |source| SourceError::StateStore {
            schema: self.schema.clone(),
            user: user.to_owned(),
            source,
        };
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&self.schema],
            )
            .await?
            .read("the state schema query", 0)?;
        if !exists {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote::ident(&self.schema)))
                .await
                .map_err(wrap)?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    slot text PRIMARY KEY,
                    phase text NOT NULL,
                    consistent_lsn pg_lsn,
                    started_at timestamptz NOT NULL DEFAULT now(),
                    finished_at timestamptz);
                 CREATE TABLE IF NOT EXISTS {} (
                    slot text NOT NULL,
                    seq bigint NOT NULL,
                    table_schema text NOT NULL,
                    table_name text NOT NULL,
                    page_from bigint NOT NULL,
                    page_to bigint,
                    relfilenode oid NOT NULL,
                    done_at timestamptz,
                    rows bigint,
                    PRIMARY KEY (slot, seq));
                 CREATE TABLE IF NOT EXISTS {} (
                    slot text NOT NULL,
                    table_schema text NOT NULL,
                    table_name text NOT NULL,
                    partition_schema text NOT NULL,
                    partition_name text NOT NULL,
                    PRIMARY KEY (slot, table_schema, table_name, partition_schema, partition_name))",
                self.table("snapshots"),
                self.table("snapshot_chunks"),
                self.table("snapshot_partitions")
            ))
            .await
            .map_err(wrap)?;
        Ok(())
    }

    /// Whether the progress tables exist (for read-only `status`).
    pub async fn exists(&self, client: &Client) -> Result<bool, SourceError> {
        client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&self.table("snapshot_chunks")],
            )
            .await?
            .read("the progress tables query", 0)
    }

    /// The slot's phase and consistent point, if a snapshot was recorded.
    pub async fn phase(&self, client: &Client) -> Result<Option<(Phase, Option<Lsn>)>, SourceError> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT phase, consistent_lsn::text FROM {} WHERE slot = $1",
                    self.table("snapshots")
                ),
                &[&self.slot],
            )
            .await?;
        const QUERY: &str = "the snapshot phase query";
        row.map(|r| {
            let lsn: Option<String> = r.read(QUERY, 1)?;
            Ok((Phase::parse(r.read(QUERY, 0)?), lsn.and_then(|l| l.parse().ok())))
        })
        .transpose()
    }

    /// Forgets any earlier snapshot of the slot and records a new one as
    /// starting (committed before the slot exists).
    pub async fn start(&self, client: &Client) -> Result<(), SourceError> {
        for table in ["snapshot_chunks", "snapshot_partitions"] {
            client
                .execute(
                    &format!("DELETE FROM {} WHERE slot = $1", self.table(table)),
                    &[&self.slot],
                )
                .await?;
        }
        client
            .execute(
                &format!(
                    "INSERT INTO {} (slot, phase) VALUES ($1, 'starting') \
                     ON CONFLICT (slot) DO UPDATE SET phase = 'starting', consistent_lsn = NULL, \
                     started_at = now(), finished_at = NULL",
                    self.table("snapshots")
                ),
                &[&self.slot],
            )
            .await?;
        Ok(())
    }

    /// Records a phase (and the consistent point, when known).
    pub async fn set_phase(&self, client: &Client, phase: Phase, consistent: Option<Lsn>) -> Result<(), SourceError> {
        client
            .execute(
                &format!(
                    "INSERT INTO {} (slot, phase, consistent_lsn) VALUES ($1, $2, $3::text::pg_lsn) \
                     ON CONFLICT (slot) DO UPDATE SET phase = $2, \
                       consistent_lsn = COALESCE($3::text::pg_lsn, {0}.consistent_lsn), \
                       finished_at = CASE WHEN $2 = 'done' THEN now() END",
                    self.table("snapshots")
                ),
                &[&self.slot, &phase.as_str(), &consistent.map(|l| l.to_string())],
            )
            .await?;
        Ok(())
    }

    /// Adds planned chunks (one statement, one transaction).
    pub async fn plan(&self, client: &Client, chunks: &[Chunk]) -> Result<(), SourceError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = chunks.iter().map(|c| c.seq as i64).collect();
        let schemas: Vec<&str> = chunks.iter().map(|c| c.table.schema.as_str()).collect();
        let names: Vec<&str> = chunks.iter().map(|c| c.table.name.as_str()).collect();
        let froms: Vec<i64> = chunks.iter().map(|c| c.pages.from as i64).collect();
        let tos: Vec<Option<i64>> = chunks.iter().map(|c| c.pages.to.map(|t| t as i64)).collect();
        let nodes: Vec<u32> = chunks.iter().map(|c| c.relfilenode).collect();
        client
            .execute(
                &format!(
                    "INSERT INTO {} (slot, seq, table_schema, table_name, page_from, page_to, relfilenode) \
                     SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::oid[]) \
                     ON CONFLICT (slot, seq) DO NOTHING",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot, &seqs, &schemas, &names, &froms, &tos, &nodes],
            )
            .await?;
        Ok(())
    }

    /// The next free chunk number.
    pub async fn next_seq(&self, client: &Client) -> Result<u64, SourceError> {
        let row = client
            .query_one(
                &format!(
                    "SELECT COALESCE(max(seq), 0) + 1 FROM {} WHERE slot = $1",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot],
            )
            .await?;
        Ok(row.read::<i64>("the next chunk number query", 0)?.max(1) as u64)
    }

    /// Chunks not done yet, in plan order.
    pub async fn pending(&self, client: &Client) -> Result<Vec<Chunk>, SourceError> {
        let rows = client
            .query(
                &format!(
                    "SELECT seq, table_schema, table_name, page_from, page_to, relfilenode FROM {} \
                     WHERE slot = $1 AND done_at IS NULL ORDER BY seq",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot],
            )
            .await?;
        const QUERY: &str = "the pending chunks query";
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    seq: r.read::<i64>(QUERY, 0)? as u64,
                    table: TableName::from_row(r, QUERY, 1)?,
                    pages: PageRange {
                        from: r.read::<i64>(QUERY, 3)? as u64,
                        to: r.read::<Option<i64>>(QUERY, 4)?.map(|t| t as u64),
                    },
                    relfilenode: r.read(QUERY, 5)?,
                })
            })
            .collect()
    }

    /// Tables that have chunks (planned or done): the ones snapshotted or
    /// being snapshotted.
    pub async fn known_tables(&self, client: &Client) -> Result<Vec<TableName>, SourceError> {
        let rows = client
            .query(
                &format!(
                    "SELECT DISTINCT table_schema, table_name FROM {} WHERE slot = $1",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot],
            )
            .await?;
        rows.iter()
            .map(|r| TableName::from_row(r, "the snapshotted tables query", 0))
            .collect()
    }

    /// Marks chunks done with their row counts.
    pub async fn mark_done(&self, client: &Client, done: &[(u64, u64)]) -> Result<(), SourceError> {
        if done.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = done.iter().map(|d| d.0 as i64).collect();
        let rows: Vec<i64> = done.iter().map(|d| d.1 as i64).collect();
        client
            .execute(
                &format!(
                    "UPDATE {} c SET done_at = now(), rows = d.rows \
                     FROM unnest($2::bigint[], $3::bigint[]) AS d(seq, rows) \
                     WHERE c.slot = $1 AND c.seq = d.seq",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot, &seqs, &rows],
            )
            .await?;
        Ok(())
    }

    /// Drops a table's chunks that are not done (the table left the
    /// publication or was rewritten and is planned again).
    pub async fn forget_table(&self, client: &Client, table: &TableName) -> Result<(), SourceError> {
        client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE slot = $1 AND table_schema = $2 AND table_name = $3 AND done_at IS NULL",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot, &table.schema, &table.name],
            )
            .await?;
        Ok(())
    }

    /// The partition tree members recorded, as `(root, member)`.
    pub async fn partitions(&self, client: &Client) -> Result<HashSet<(TableName, TableName)>, SourceError> {
        let rows = client
            .query(
                &format!(
                    "SELECT table_schema, table_name, partition_schema, partition_name FROM {} WHERE slot = $1",
                    self.table("snapshot_partitions")
                ),
                &[&self.slot],
            )
            .await?;
        const QUERY: &str = "the recorded partitions query";
        rows.iter()
            .map(|r| Ok((TableName::from_row(r, QUERY, 0)?, TableName::from_row(r, QUERY, 2)?)))
            .collect()
    }

    /// Records partition tree members (known ones are kept).
    pub async fn record_partitions(&self, client: &Client, members: &[TreeMember]) -> Result<(), SourceError> {
        if members.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&TreeMember) -> &str| -> Vec<&str> { members.iter().map(f).collect() };
        client
            .execute(
                &format!(
                    "INSERT INTO {} (slot, table_schema, table_name, partition_schema, partition_name) \
                     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING",
                    self.table("snapshot_partitions")
                ),
                &[
                    &self.slot,
                    &column(|m| &m.root.schema),
                    &column(|m| &m.root.name),
                    &column(|m| &m.member.schema),
                    &column(|m| &m.member.name),
                ],
            )
            .await?;
        Ok(())
    }

    /// Adds the recorded snapshot phase and chunk counts to a slot's status.
    pub async fn fill_status(
        &self,
        client: &Client,
        report: &mut crate::postgres::slot::StatusReport,
    ) -> Result<(), SourceError> {
        if !report.slot_exists || !self.exists(client).await? {
            return Ok(());
        }
        if let Some((phase, _)) = self.phase(client).await? {
            report.snapshot = phase.as_str().into();
            (
                report.snapshot_chunks_done,
                report.snapshot_chunks,
                report.snapshot_rows,
            ) = self.counts(client).await?;
        }
        Ok(())
    }

    /// `(done, total)` chunks and rows copied so far, for `status`.
    pub async fn counts(&self, client: &Client) -> Result<(u64, u64, u64), SourceError> {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE done_at IS NOT NULL), count(*), COALESCE(sum(rows), 0)::bigint \
                     FROM {} WHERE slot = $1",
                    self.table("snapshot_chunks")
                ),
                &[&self.slot],
            )
            .await?;
        const QUERY: &str = "the snapshot counts query";
        Ok((
            row.read::<i64>(QUERY, 0)? as u64,
            row.read::<i64>(QUERY, 1)? as u64,
            row.read::<i64>(QUERY, 2)? as u64,
        ))
    }
}

/// Plans a table's chunks from its current size, numbering from `seq`.
pub async fn plan_table(
    client: &Client,
    table: &TableName,
    table_oid: u32,
    chunk_pages: u64,
    seq: &mut u64,
) -> Result<Vec<Chunk>, SourceError> {
    let (pages, relfilenode) = crate::postgres::snapshot::table_pages(client, table_oid).await?;
    Ok(PageRange::split(pages, chunk_pages)
        .into_iter()
        .map(|pages| {
            *seq += 1;
            Chunk {
                seq: *seq - 1,
                table: table.clone(),
                pages,
                relfilenode,
            }
        })
        .collect())
}

/// The oid of `table`, or `None` when it no longer exists.
pub async fn table_oid(client: &Client, table: &TableName) -> Result<Option<u32>, SourceError> {
    let row = client
        .query_one("SELECT pg_catalog.to_regclass($1)::oid", &[&table.quoted()])
        .await?;
    row.read("the table oid query", 0)
}
