//! The initial snapshot: every published table read under the snapshot a
//! new slot exported, so the rows plus the slot's changes after its
//! consistent point are the database exactly once.
//!
//! Rows are read with `COPY (SELECT …) TO STDOUT` in text format, in the
//! same session settings as the replication connection
//! ([`OUTPUT_SETTINGS`]), so a
//! snapshot row's values are byte for byte what pgoutput would send, and
//! the same encoders serve both. Columns are those pgoutput sends: not
//! dropped, not generated, in `attnum` order.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use postgres_protocol::message::frontend;
use tokio_postgres::Client;

use super::client::ReadColumn;
use super::conninfo::ConnInfo;
use super::error::{ErrorContext, ServerError, SourceError};
use super::pgoutput::{Relation, RelationColumn, ReplicaIdentity, Tuple, TupleValue};
use super::publication::TableName;
use super::wire::{log_notice, unexpected, Session, Wire, OUTPUT_SETTINGS};
use crate::quote;

/// A COPY text row that does not parse (a Postgres bug or a protocol mix-up).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("COPY row of {table}: {reason}")]
pub struct CopyRowError {
    pub table: String,
    pub reason: String,
}

/// Opens a read-only transaction on `client` that sees the database as of
/// the exported `snapshot` (or, with `None`, as of its first query), with
/// the replication connection's output settings.
pub async fn begin(client: &Client, snapshot: Option<&str>) -> Result<(), SourceError> {
    client.batch_execute(&begin_sql(snapshot)).await?;
    Ok(())
}

fn begin_sql(snapshot: Option<&str>) -> String {
    let mut sql = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; ");
    if let Some(snapshot) = snapshot {
        sql.push_str(&format!("SET TRANSACTION SNAPSHOT {}; ", quote::literal(snapshot)));
    }
    for (name, value) in OUTPUT_SETTINGS {
        sql.push_str(&format!("SET LOCAL {name} = {}; ", quote::literal(value)));
    }
    sql
}

/// The table as a Relation message would describe it, read from the
/// catalog inside the snapshot transaction, restricted to the publication's
/// column list; with the publication's row filter for the table, which a
/// snapshot applies as the stream does.
pub async fn describe(
    client: &Client,
    table: &TableName,
    publication: &str,
) -> Result<(Relation, Option<String>), SourceError> {
    let (column_list, row_filter) = super::publication::column_list_and_filter(client, publication, table).await?;
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await?
        .ok_or_else(|| SourceError::TableMissing {
            table: table.to_string(),
        })?;
    const QUERY: &str = "the relation query";
    let id: u32 = rel.read(QUERY, 0)?;
    let replica_identity = match rel.read::<String>(QUERY, 1)?.as_str() {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    // The key flags pgoutput would set: every column under FULL, the
    // identity index's columns under INDEX, the primary key's under DEFAULT.
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, \
                    COALESCE(a.attnum = ANY(i.indkey), false), a.attgenerated::text \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid \
                  AND ((c.relreplident = 'i' AND i.indisreplident) OR (c.relreplident = 'd' AND i.indisprimary)) \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> 'v' \
             ORDER BY a.attnum",
            &[&id],
        )
        .await?;
    const COLUMNS: &str = "the relation columns query";
    let mut columns = Vec::with_capacity(rows.len());
    for r in &rows {
        let name: String = r.read(COLUMNS, 0)?;
        // What pgoutput sends: the listed columns when the publication has
        // a column list (which on Postgres 18 may name stored generated
        // columns, or stand for publish_generated_columns = stored), else
        // every column that is not generated. Virtual generated columns
        // (Postgres 18) are never published.
        let published = match &column_list {
            Some(list) => list.contains(&name),
            None => r.read::<String>(COLUMNS, 4)?.is_empty(),
        };
        if published {
            columns.push(RelationColumn {
                is_key: replica_identity == ReplicaIdentity::Full || r.read::<bool>(COLUMNS, 3)?,
                name,
                type_oid: r.read(COLUMNS, 1)?,
                type_modifier: r.read(COLUMNS, 2)?,
            });
        }
    }
    let relation = Relation {
        xid: None,
        id,
        namespace: table.schema.clone(),
        name: table.name.clone(),
        replica_identity,
        columns,
    };
    Ok((relation, row_filter))
}

/// A range of a table's heap pages: `from` inclusive, `to` exclusive, or to
/// the end of the table. Ranges by CTID work for tables without a key, and
/// since Postgres 14 a range is read by a TID range scan (only its pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    pub from: u64,
    pub to: Option<u64>,
}

impl PageRange {
    /// Splits `pages` pages into ranges of `chunk_pages`; the last range is
    /// open-ended so pages added meanwhile are not missed.
    pub fn split(pages: u64, chunk_pages: u64) -> Vec<PageRange> {
        let chunk_pages = chunk_pages.max(1);
        let mut out = Vec::new();
        let mut from = 0;
        while from + chunk_pages < pages {
            out.push(PageRange {
                from,
                to: Some(from + chunk_pages),
            });
            from += chunk_pages;
        }
        out.push(PageRange { from, to: None });
        out
    }

    /// The WHERE clause for these pages, and the publication's row filter.
    fn predicate(&self, row_filter: Option<&str>) -> String {
        let mut conds = Vec::new();
        if self.from > 0 {
            conds.push(format!("ctid >= '({},0)'::tid", self.from));
        }
        if let Some(to) = self.to {
            conds.push(format!("ctid < '({to},0)'::tid"));
        }
        if let Some(f) = row_filter {
            conds.push(format!("({f})"));
        }
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    }
}

/// A table's size in pages and its current file node (which changes when
/// the table is rewritten, moving every row to a new CTID).
pub async fn table_pages(client: &Client, table_oid: u32) -> Result<(u64, u32), SourceError> {
    let row = client
        .query_one(
            "SELECT (pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint, \
                    c.relfilenode FROM pg_catalog.pg_class c WHERE c.oid = $1",
            &[&table_oid],
        )
        .await?;
    const QUERY: &str = "the table size query";
    Ok((row.read::<i64>(QUERY, 0)?.max(0) as u64, row.read(QUERY, 1)?))
}

/// The transaction snapshot of `client`'s open transaction
/// (`pg_current_snapshot()`), which also fixes it if no query ran yet.
pub async fn current_snapshot(client: &Client) -> Result<String, SourceError> {
    client
        .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
        .await?
        .read("the pg_current_snapshot query", 0)
}

/// Where COPY's data messages come from.
pub trait CopySource: Send {
    /// The next CopyData body, or `None` once the command completed.
    fn next_data(&mut self) -> impl std::future::Future<Output = Result<Option<Bytes>, SourceError>> + Send;
}

impl CopySource for std::pin::Pin<Box<tokio_postgres::CopyOutStream>> {
    async fn next_data(&mut self) -> Result<Option<Bytes>, SourceError> {
        self.next().await.transpose().map_err(SourceError::Sql)
    }
}

/// A plain connection that reads chunks under a snapshot, speaking the
/// protocol itself, which costs less CPU per row than tokio-postgres's
/// `copy_out` (see the `wire` module).
pub struct CopySession {
    wire: Wire,
    user: String,
    dbname: String,
    /// Whether a chunk's savepoint is open (see [`CopySession::copy`]).
    savepoint: bool,
}

impl CopySession {
    pub async fn connect(info: &ConnInfo) -> Result<Self, SourceError> {
        let (wire, _) = Wire::connect(info, Session::Sql).await?;
        Ok(CopySession {
            wire,
            user: info.user.clone(),
            dbname: info.dbname.clone(),
            savepoint: false,
        })
    }

    fn server_error(&self, body: &[u8]) -> SourceError {
        let ctx = ErrorContext {
            user: &self.user,
            dbname: &self.dbname,
            ..Default::default()
        };
        SourceError::from_server(ServerError::parse(body), &ctx)
    }

    /// Opens the read-only transaction [`begin`] opens, on this session
    /// (whose output settings were set at startup).
    pub async fn begin(&mut self, snapshot: Option<&str>) -> Result<(), SourceError> {
        self.query(&begin_sql(snapshot)).await?;
        // The command returns no data: this reads to its outcome.
        while self.next_data().await?.is_some() {}
        Ok(())
    }

    async fn query(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.wire.outbuf).map_err(|e| SourceError::Protocol(e.to_string()))?;
        self.wire.flush_out().await
    }

    /// Starts the COPY of `pages` of `relation`, as [`CopyRows::start`] does.
    /// The rows must be read to the end before the session takes another
    /// command: the session is borrowed until then.
    pub async fn copy(
        &mut self,
        relation: &Relation,
        pages: PageRange,
        row_filter: Option<&str>,
    ) -> Result<CopyRows<&mut CopySession>, SourceError> {
        // Each COPY behind a savepoint, in the same round trip: one that
        // fails because the table changed since the snapshot (a column
        // dropped or renamed) rolls back to it, and the session's snapshot
        // stays usable for the chunk read again.
        let savepoint = if self.savepoint {
            "RELEASE SAVEPOINT walhouse_chunk; SAVEPOINT walhouse_chunk; "
        } else {
            "SAVEPOINT walhouse_chunk; "
        };
        self.savepoint = true;
        self.query(&format!("{savepoint}{}", copy_sql(relation, pages, row_filter)))
            .await?;
        Ok(CopyRows::new(self, relation))
    }

    /// Undoes a failed COPY: back to its savepoint, in the snapshot.
    pub async fn roll_back_chunk(&mut self) -> Result<(), SourceError> {
        self.query("ROLLBACK TO SAVEPOINT walhouse_chunk").await?;
        while self.next_data().await?.is_some() {}
        Ok(())
    }
}

/// Whether `e` says the table's columns are not what the snapshot saw: a
/// column dropped or renamed since (`42703`, undefined_column). COPY reads
/// rows under the snapshot but resolves names in the current catalog.
pub fn is_changed_columns(e: &SnapshotError) -> bool {
    matches!(e, SnapshotError::Source(SourceError::Server(s)) if s.code == "42703")
}

impl<T: CopySource> CopySource for &mut T {
    async fn next_data(&mut self) -> Result<Option<Bytes>, SourceError> {
        (**self).next_data().await
    }
}

impl CopySource for CopySession {
    /// Reads to the end of the current command: its data messages, then
    /// its outcome (an error is reported once the server is ready again,
    /// so the session stays usable in step).
    async fn next_data(&mut self) -> Result<Option<Bytes>, SourceError> {
        let mut error = None;
        loop {
            let f = self.wire.read_frame().await?;
            match f.tag {
                b'd' if error.is_none() => return Ok(Some(f.body)),
                b'E' => error = Some(self.server_error(&f.body)),
                b'N' => log_notice(&ServerError::parse(&f.body)),
                b'Z' => return error.map_or(Ok(None), Err),
                b'd' | b'H' | b'c' | b'C' | b'I' | b'S' | b'A' => {}
                other => return Err(unexpected(other, "a snapshot COPY")),
            }
        }
    }
}

fn copy_sql(relation: &Relation, pages: PageRange, row_filter: Option<&str>) -> String {
    let columns = relation
        .columns
        .iter()
        .map(|c| quote::ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "COPY (SELECT {columns} FROM {}.{}{}) TO STDOUT",
        quote::ident(&relation.namespace),
        quote::ident(&relation.name),
        pages.predicate(row_filter)
    )
}

/// A table's rows as COPY sends them, one tuple at a time.
pub struct CopyRows<S> {
    source: S,
    /// Received, not yet parsed.
    cur: Bytes,
    /// A row that spans messages, while it is being completed.
    carry: BytesMut,
    ncols: usize,
    table: String,
    done: bool,
}

impl CopyRows<std::pin::Pin<Box<tokio_postgres::CopyOutStream>>> {
    /// Starts `COPY (SELECT <pgoutput's columns> FROM table WHERE <pages>)
    /// TO STDOUT` in the snapshot transaction of `client`.
    pub async fn start(
        client: &Client,
        relation: &Relation,
        pages: PageRange,
        row_filter: Option<&str>,
    ) -> Result<Self, SourceError> {
        let stream = client.copy_out(&copy_sql(relation, pages, row_filter)).await?;
        Ok(CopyRows::new(Box::pin(stream), relation))
    }
}

impl<S: CopySource> CopyRows<S> {
    fn new(source: S, relation: &Relation) -> Self {
        CopyRows {
            source,
            cur: Bytes::new(),
            carry: BytesMut::new(),
            ncols: relation.columns.len(),
            table: format!("{}.{}", relation.namespace, relation.name),
            done: false,
        }
    }

    /// The next row, or `None` at the end of the table.
    pub async fn next(&mut self) -> Result<Option<Tuple>, SnapshotError> {
        loop {
            // Newlines inside values are escaped, so a raw one ends a row.
            if let Some(nl) = memchr::memchr(b'\n', &self.cur) {
                let line = self.cur.split_to(nl + 1).slice(..nl);
                let row = parse_copy_row(&line, self.ncols).map_err(|reason| CopyRowError {
                    table: self.table.clone(),
                    reason,
                })?;
                return Ok(Some(row));
            }
            if !self.cur.is_empty() {
                self.carry.extend_from_slice(&self.cur);
                self.cur = Bytes::new();
            }
            if self.done {
                if !self.carry.is_empty() {
                    return Err(CopyRowError {
                        table: self.table.clone(),
                        reason: "the last row has no newline".into(),
                    }
                    .into());
                }
                return Ok(None);
            }
            match self.source.next_data().await? {
                Some(chunk) => {
                    if self.carry.is_empty() {
                        // Postgres sends a row per message: parsed in place.
                        self.cur = chunk;
                    } else {
                        self.carry.extend_from_slice(&chunk);
                        if memchr::memchr(b'\n', &chunk).is_some() {
                            self.cur = self.carry.split().freeze();
                        }
                    }
                }
                None => self.done = true,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Row(#[from] CopyRowError),
}

/// One row of COPY's text format: tab-separated, `\N` for NULL, backslash
/// escapes (<https://www.postgresql.org/docs/15/sql-copy.html#id-1.9.3.55.9.2>).
/// Fields without escapes are zero-copy slices of `line`.
pub fn parse_copy_row(line: &Bytes, ncols: usize) -> Result<Tuple, String> {
    let mut out = Vec::with_capacity(ncols);
    let mut start = 0;
    let mut escaped = false;
    // One pass finds both the field ends (a raw tab is always one: tabs in
    // values are escaped) and whether a field holds escapes.
    for i in memchr::memchr2_iter(b'\t', b'\\', line) {
        if line[i] == b'\\' {
            escaped = true;
            continue;
        }
        out.push(copy_field(line, start, i, escaped)?);
        start = i + 1;
        escaped = false;
    }
    out.push(copy_field(line, start, line.len(), escaped)?);
    if out.len() != ncols {
        return Err(format!("{} fields, expected {ncols}", out.len()));
    }
    Ok(out)
}

fn copy_field(line: &Bytes, start: usize, end: usize, escaped: bool) -> Result<TupleValue, String> {
    let field = &line[start..end];
    if !escaped {
        return Ok(TupleValue::Text(line.slice(start..end)));
    }
    if field == b"\\N" {
        return Ok(TupleValue::Null);
    }
    let mut v = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' {
            v.push(field[i]);
            i += 1;
            continue;
        }
        let next = *field.get(i + 1).ok_or("a backslash ends the field")?;
        i += 2;
        match next {
            b'b' => v.push(8),
            b'f' => v.push(12),
            b'n' => v.push(b'\n'),
            b'r' => v.push(b'\r'),
            b't' => v.push(b'\t'),
            b'v' => v.push(11),
            b'0'..=b'7' => {
                let mut n = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                v.push(n as u8);
            }
            b'x' => {
                let mut n = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            n = n * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    v.push(b'x');
                } else {
                    v.push(n as u8);
                }
            }
            other => v.push(other),
        }
    }
    Ok(TupleValue::Text(Bytes::from(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &[u8]) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s))
    }

    #[test]
    fn page_ranges_cover_the_table_and_end_open() {
        let r = |from, to| PageRange { from, to };
        assert_eq!(PageRange::split(0, 4), vec![r(0, None)]);
        assert_eq!(PageRange::split(4, 4), vec![r(0, None)]);
        assert_eq!(PageRange::split(9, 4), vec![r(0, Some(4)), r(4, Some(8)), r(8, None)]);
        assert_eq!(r(0, None).predicate(None), "");
        assert_eq!(r(0, Some(4)).predicate(None), " WHERE ctid < '(4,0)'::tid");
        assert_eq!(r(8, None).predicate(None), " WHERE ctid >= '(8,0)'::tid");
        assert_eq!(
            r(4, Some(8)).predicate(None),
            " WHERE ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid"
        );
        assert_eq!(r(0, None).predicate(Some("a > 1 OR b")), " WHERE (a > 1 OR b)");
    }

    #[test]
    fn copy_text_rows() {
        let row = |s: &'static [u8], n| parse_copy_row(&Bytes::from_static(s), n);
        assert_eq!(
            row(b"1\t\\N\ta\\tb\\nc\\\\d", 3).expect("row"),
            vec![t(b"1"), TupleValue::Null, t(b"a\tb\nc\\d")]
        );
        assert_eq!(row(b"ab\t\tcd", 3).expect("row"), vec![t(b"ab"), t(b""), t(b"cd")]);
        assert_eq!(row(b"\\101\\x42\\x4", 1).expect("row"), vec![t(b"AB\x04")]);
        assert_eq!(row(b"", 1).expect("empty string"), vec![t(b"")]);
        // The text `\N` (escaped) is not NULL; a trailing escaped backslash
        // does not hide the tab after it.
        assert_eq!(row(b"\\\\N\t\\N", 2).expect("row"), vec![t(b"\\N"), TupleValue::Null]);
        assert_eq!(row(b"a\\\\\tb", 2).expect("row"), vec![t(b"a\\"), t(b"b")]);
        assert!(row(b"1\t2", 3).is_err());
        assert!(row(b"x\\", 1).is_err());
    }
}
