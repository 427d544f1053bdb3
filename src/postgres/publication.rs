//! The publication: which tables the slot streams.
//!
//! walhouse creates the publication when it is missing (for the configured
//! tables, or all tables) and adds configured tables that are missing from
//! an existing one. It never removes tables: a publication may be shared.
//! Every identifier is quoted, so odd names work and nothing can inject SQL.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;

use super::client::ReadColumn;
use super::error::SourceError;
use crate::quote;

/// A `schema.table` name, as configured by the user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parses `table`, `schema.table` or `"Odd Schema"."Odd.Table"`. Unquoted
    /// parts are taken as written (Postgres would fold them to lower case;
    /// walhouse does not guess).
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts = split_qualified(s.trim()).ok_or_else(|| format!("invalid table name {s:?}"))?;
        match parts.as_slice() {
            [name] => Ok(TableName {
                schema: "public".into(),
                name: name.clone(),
            }),
            [schema, name] => Ok(TableName {
                schema: schema.clone(),
                name: name.clone(),
            }),
            _ => Err(format!("invalid table name {s:?}: expected schema.table")),
        }
    }

    /// From a catalog row of `query`: the schema in column `at`, the name
    /// in `at + 1`.
    pub fn from_row(row: &tokio_postgres::Row, query: &'static str, at: usize) -> Result<Self, SourceError> {
        Ok(TableName {
            schema: row.read(query, at)?,
            name: row.read(query, at + 1)?,
        })
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote::ident(&self.schema), quote::ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Splits on dots outside double quotes; `""` inside quotes is a quote.
fn split_qualified(s: &str) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                parts.last_mut()?.push('"');
            }
            ('"', true) => quoted = false,
            ('.', false) => parts.push(String::new()),
            (c, _) => parts.last_mut()?.push(c),
        }
    }
    (!quoted && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

/// Which tables to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableSelection {
    All,
    Tables(Vec<TableName>),
}

/// Per-table column lists and row filters (Postgres 15+), applied when
/// walhouse creates the publication or adds a table to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableOptions {
    pub columns: BTreeMap<TableName, Vec<String>>,
    /// A row filter is an SQL expression written by the operator, used as
    /// it is (inside parentheses, in a single-statement command).
    pub filters: BTreeMap<TableName, String>,
}

impl TableOptions {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.filters.is_empty()
    }

    /// `"s"."t" ("a", "b") WHERE (expr)` for a publication command.
    pub fn spec(&self, table: &TableName) -> String {
        let mut spec = table.quoted();
        if let Some(cols) = self.columns.get(table) {
            let cols = cols.iter().map(|c| quote::ident(c)).collect::<Vec<_>>().join(", ");
            spec.push_str(&format!(" ({cols})"));
        }
        if let Some(filter) = self.filters.get(table) {
            spec.push_str(&format!(" WHERE ({filter})"));
        }
        spec
    }
}

/// A published table whose updates and deletes cannot be captured fully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityWarning {
    pub table: TableName,
    pub replica_identity: char,
}

/// Creates or completes the publication; returns the tables it publishes.
/// With `identity_full`, published tables without a usable replica
/// identity get `REPLICA IDENTITY FULL` (their old rows then travel whole).
pub async fn ensure(
    client: &Client,
    publication: &str,
    selection: &TableSelection,
    options: &TableOptions,
    identity_full: bool,
) -> Result<Vec<TableName>, SourceError> {
    if let TableSelection::Tables(tables) = selection {
        for t in tables {
            let exists = client
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                    &[&t.schema, &t.name],
                )
                .await?;
            if exists.is_none() {
                return Err(SourceError::TableMissing { table: t.to_string() });
            }
        }
    }
    let existing = client
        .query_opt(
            "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let quoted = quote::ident(publication);
    let with = if server_version_num(client).await? >= 130000 {
        VIA_ROOT
    } else {
        ""
    };
    match (existing, selection) {
        (None, TableSelection::All) => {
            client
                .batch_execute(&format!("CREATE PUBLICATION {quoted} FOR ALL TABLES{with}"))
                .await?;
            tracing::info!(publication, "created publication for all tables");
        }
        (None, TableSelection::Tables(tables)) => {
            let list = tables.iter().map(|t| options.spec(t)).collect::<Vec<_>>().join(", ");
            // One statement over the extended protocol: a row filter cannot
            // smuggle a second command in.
            client
                .execute(&format!("CREATE PUBLICATION {quoted} FOR TABLE {list}{with}"), &[])
                .await?;
            tracing::info!(publication, tables = %list, "created publication");
        }
        (Some(row), TableSelection::Tables(tables)) if !row.read::<bool>("the pg_publication query", 0)? => {
            let published = published_tables(client, publication).await?;
            let missing: Vec<_> = tables.iter().filter(|t| !published.contains(t)).collect();
            if !missing.is_empty() {
                let list = missing.iter().map(|t| options.spec(t)).collect::<Vec<_>>().join(", ");
                client
                    .execute(&format!("ALTER PUBLICATION {quoted} ADD TABLE {list}"), &[])
                    .await?;
                tracing::info!(publication, tables = %list, "added tables to the existing publication");
            }
        }
        (Some(_), TableSelection::All) => {
            tracing::info!(publication, "using the existing publication as it is");
        }
        (Some(_), TableSelection::Tables(_)) => {
            tracing::info!(publication, "using the existing FOR ALL TABLES publication");
        }
    }
    let tables = published_tables(client, publication).await?;
    let partitions = published_partitions(client, publication).await?;
    if !partitions.is_empty() {
        let list = partitions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            publication,
            partitions = %list,
            "the publication publishes partitions as tables of their own (publish_via_partition_root is off): each \
             gets its own topic, schema and snapshot, and a row moved between partitions arrives as a delete in one \
             and an insert in another. Fix, for one topic per partitioned table: ALTER PUBLICATION {quoted} SET \
             (publish_via_partition_root = true), restart walhouse-capture and run walhouse-capture snapshot <parent> \
             for the parents' existing rows"
        );
    }
    for t in options.columns.keys().chain(options.filters.keys()) {
        let (columns, filter) = column_list_and_filter(client, publication, t).await?;
        let want_columns = options.columns.get(t);
        let columns_differ = want_columns.is_some_and(|w| columns.as_ref() != Some(w));
        if columns_differ || (options.filters.contains_key(t) && filter.is_none()) {
            tracing::warn!(
                table = %t,
                published_columns = ?columns,
                published_filter = ?filter,
                "the existing publication publishes this table differently from --table-columns / --table-filter; \
                 walhouse does not change tables already published. Fix: ALTER PUBLICATION {quoted} SET TABLE … or drop the table from it"
            );
        }
    }
    for w in identity_warnings(client, publication).await? {
        if identity_full {
            client
                .batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", w.table.quoted()))
                .await?;
            tracing::info!(table = %w.table, "set REPLICA IDENTITY FULL (the table has no primary key)");
            continue;
        }
        tracing::warn!(
            table = %w.table,
            "table has no replica identity (no primary key, or REPLICA IDENTITY NOTHING): Postgres rejects \
             UPDATE and DELETE on it while it is published, and walhouse cannot key its events. \
             Fix: add a primary key, or ALTER TABLE {} REPLICA IDENTITY FULL (or run with --replica-identity-full true)",
            w.table.quoted()
        );
    }
    Ok(tables)
}

/// Publications walhouse creates publish a partitioned table's changes
/// as the table's own (Postgres 13+): one topic per partitioned table,
/// whichever partition a row is in, partitions attached later included.
const VIA_ROOT: &str = " WITH (publish_via_partition_root = true)";

async fn server_version_num(client: &Client) -> Result<u32, SourceError> {
    let v: String = client
        .query_one("SHOW server_version_num", &[])
        .await?
        .read("the server version query", 0)?;
    Ok(v.parse().unwrap_or(0))
}

/// Partitions the publication publishes as tables of their own (without
/// `publish_via_partition_root`).
pub async fn published_partitions(client: &Client, publication: &str) -> Result<Vec<TableName>, SourceError> {
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 AND c.relispartition ORDER BY 1, 2",
            &[&publication],
        )
        .await?;
    rows.iter()
        .map(|r| TableName::from_row(r, "the published partitions query", 0))
        .collect()
}

pub async fn published_tables(client: &Client, publication: &str) -> Result<Vec<TableName>, SourceError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await?;
    rows.iter()
        .map(|r| TableName::from_row(r, "the pg_publication_tables query", 0))
        .collect()
}

/// The column list (`None`: all columns) and row filter of a published
/// table, as Postgres 15+ records them; `(None, None)` before 15.
pub async fn column_list_and_filter(
    client: &Client,
    publication: &str,
    table: &TableName,
) -> Result<(Option<Vec<String>>, Option<String>), SourceError> {
    let v15: bool = client
        .query_one("SELECT current_setting('server_version_num')::int >= 150000", &[])
        .await?
        .read("the server_version_num query", 0)?;
    if !v15 {
        return Ok((None, None));
    }
    let row = client
        .query_opt(
            "SELECT pt.attnames::text[], pt.rowfilter, \
                    (SELECT count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid = to_regclass($4) \
                       AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') \
             FROM pg_catalog.pg_publication_tables pt \
             WHERE pt.pubname = $1 AND pt.schemaname = $2 AND pt.tablename = $3",
            &[&publication, &table.schema, &table.name, &table.quoted()],
        )
        .await?;
    Ok(match row {
        None => (None, None),
        Some(r) => {
            const QUERY: &str = "the column list and row filter query";
            let cols: Option<Vec<String>> = r.read(QUERY, 0)?;
            let all: i64 = r.read(QUERY, 2)?;
            // pg_publication_tables lists every column when there is no
            // list. On Postgres 18 it lists stored generated columns too
            // when the publication publishes them (publish_generated_columns
            // = stored): they then count as a list, so the snapshot reads
            // the columns the stream carries.
            let cols = cols.filter(|c| c.len() as i64 != all);
            (cols, r.read(QUERY, 1)?)
        }
    })
}

/// Published tables whose UPDATE/DELETE carry no usable old key.
pub async fn identity_warnings(client: &Client, publication: &str) -> Result<Vec<IdentityWarning>, SourceError> {
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, c.relreplident::text \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
               (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
             ORDER BY 1, 2",
            &[&publication],
        )
        .await?;
    const QUERY: &str = "the replica identity query";
    rows.iter()
        .map(|r| {
            Ok(IdentityWarning {
                table: TableName::from_row(r, QUERY, 0)?,
                replica_identity: r.read::<String>(QUERY, 2)?.chars().next().unwrap_or('d'),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table_names() {
        let t = |s| TableName::parse(s).expect("valid");
        assert_eq!(t("orders").to_string(), "public.orders");
        assert_eq!(t("shop.orders").to_string(), "shop.orders");
        let odd = t("\"My Schema\".\"we\"\"ird.name\"");
        assert_eq!(odd.schema, "My Schema");
        assert_eq!(odd.name, "we\"ird.name");
        assert_eq!(odd.quoted(), "\"My Schema\".\"we\"\"ird.name\"");
        for bad in ["", "a.b.c", "\"open", "a.", ".b"] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
