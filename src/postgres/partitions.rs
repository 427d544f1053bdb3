//! The partitions under published partitioned tables, and whether one
//! brought rows along when it was attached.
//!
//! With `publish_via_partition_root` a partition's changes are its
//! parent's. Rows a table held before `ATTACH PARTITION` made it one were
//! never changes of the parent, so no slot ever carries them: capture finds
//! such partitions here and reads their parent again.

use tokio_postgres::Client;

use super::client::ReadColumn;
use super::error::SourceError;
use super::publication::TableName;

/// One table of a partition tree: `member` under `root` (the root itself
/// is a member of its own tree).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeMember {
    pub root: TableName,
    pub member: TableName,
    /// A partition that holds rows (not partitioned itself).
    pub leaf: bool,
}

/// The partition trees of those of `roots` that are partitioned tables.
pub async fn trees(client: &Client, roots: &[TableName]) -> Result<Vec<TreeMember>, SourceError> {
    let schemas: Vec<&str> = roots.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = roots.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT r.s, r.n, n.nspname::text, c.relname::text, t.isleaf \
             FROM unnest($1::text[], $2::text[]) AS r(s, n) \
             JOIN pg_catalog.pg_class rc \
               ON rc.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(r.s) || '.' || pg_catalog.quote_ident(r.n)) \
              AND rc.relkind = 'p' \
             CROSS JOIN LATERAL pg_catalog.pg_partition_tree(rc.oid) t \
             JOIN pg_catalog.pg_class c ON c.oid = t.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p')",
            &[&schemas, &names],
        )
        .await?;
    const QUERY: &str = "the partition trees query";
    rows.iter()
        .map(|r| {
            Ok(TreeMember {
                root: TableName::from_row(r, QUERY, 0)?,
                member: TableName::from_row(r, QUERY, 2)?,
                leaf: r.read(QUERY, 4)?,
            })
        })
        .collect()
}

/// Whether partition `leaf` holds a row older than its attachment: one
/// written by a transaction before the one that made it (or an ancestor)
/// a partition, which the slot therefore never carried as the root's.
/// Rows written in the attaching transaction itself count as streamed.
pub async fn holds_rows_from_before_attach(client: &Client, leaf: &TableName) -> Result<bool, SourceError> {
    let quoted = leaf.quoted();
    client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM ONLY {quoted} p WHERE pg_catalog.age(p.xmin) > ( \
                   SELECT min(pg_catalog.age(i.xmin)) FROM pg_catalog.pg_inherits i \
                   WHERE i.inhrelid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($1::text::regclass))))"
            ),
            &[&quoted],
        )
        .await?
        .read("the attached partition's rows query", 0)
}
