//! The warehouse's tables as the sink keeps them: raw tables created on
//! first sight and widened when a writer schema adds columns, and the SQL
//! views on top (latest state per CDC table, latest company, organizations
//! with their insolvency).

use crate::quote;
use std::collections::{HashMap, HashSet};

use crate::warehouse::{ColumnDef, Dialect, SqlType, TableDef, TableRef, Warehouse, WarehouseError};

/// The CDC metadata columns of every raw change table, after the source's.
/// The Kafka coordinates every raw table ends with.
pub const KAFKA_COLUMNS: [(&str, SqlType); 4] = [
    ("_topic", SqlType::Text),
    ("_partition", SqlType::Integer),
    ("_offset", SqlType::BigInt),
    ("_ingested_at", SqlType::TimestampTz),
];

pub fn kafka_columns() -> Vec<ColumnDef> {
    KAFKA_COLUMNS
        .iter()
        .map(|(n, t)| ColumnDef::new(n, t.clone()))
        .collect()
}

pub const CDC_COLUMNS: [(&str, SqlType); 9] = [
    ("_op", SqlType::Text),
    ("_lsn", SqlType::BigInt),
    ("_tx_id", SqlType::BigInt),
    ("_commit_ts", SqlType::TimestampTz),
    ("_snapshot", SqlType::Text),
    // The change's source position (see `SourcePosition`): with the two,
    // no raw table holds one change twice.
    ("_commit_lsn", SqlType::BigInt),
    ("_tx_ordinal", SqlType::BigInt),
    ("_unchanged_toast", SqlType::Text),
    ("_text_values", SqlType::Text),
];

/// The warehouse names of a writer schema's columns, in order. A source
/// column named like a metadata column (`_op`, `_offset`, …), or like an
/// earlier column but for case (DuckDB's names ignore case), takes the
/// first free `_<n>` suffix: `_op` is stored as `_op_1`.
pub fn warehouse_column_names<'a>(source: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken: std::collections::HashSet<String> = CDC_COLUMNS
        .iter()
        .chain(KAFKA_COLUMNS.iter())
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    let mut out = Vec::new();
    for name in source {
        let mut candidate = name.to_owned();
        let mut n = 0;
        while taken.contains(&candidate.to_lowercase()) {
            n += 1;
            candidate = format!("{name}_{n}");
        }
        taken.insert(candidate.to_lowercase());
        out.push(candidate);
    }
    out
}

/// The schema of the raw table of a source schema.
pub fn raw_schema(source_schema: &str) -> String {
    format!("raw_{source_schema}")
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "column {column} of {table} is {declared} in the warehouse but the new writer schema makes it {wanted}: \
         an incompatible change. Fix: migrate the raw table by hand (e.g. rename it and let the sink create it again), \
         then restart the sink"
    )]
    Incompatible {
        table: TableRef,
        column: String,
        declared: String,
        wanted: String,
    },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// The tables the sink made sure of in this process.
#[derive(Default)]
pub struct Tables {
    /// Column names (and declared types) per table, as last seen.
    known: HashMap<TableRef, Vec<(String, String)>>,
    /// Latest-state views created in this process, by raw table.
    views: HashSet<TableRef>,
}

impl Tables {
    /// Makes `def`'s table exist with at least `def`'s columns, adding the
    /// missing ones. Returns whether anything changed.
    pub async fn ensure<W: Warehouse>(&mut self, w: &mut W, def: &TableDef) -> Result<bool, TableError> {
        let dialect = w.dialect();
        if let Some(cols) = self.known.get(&def.table) {
            // Types too: a column whose type changed is widened or refused.
            let held = |c: &ColumnDef| cols.iter().any(|(n, d)| *n == c.name && dialect.same_type(d, &c.ty));
            if def.columns.iter().all(held) {
                return Ok(false);
            }
        }
        let existing = w.columns(&def.table).await?;
        let changed = match &existing {
            None => {
                tracing::info!(table = %def.table, "creating the table");
                w.create_table(def).await?;
                true
            }
            Some(cols) => {
                let mut missing = Vec::new();
                let mut wider = Vec::new();
                for c in &def.columns {
                    match cols.iter().find(|(n, _)| *n == c.name) {
                        Some((_, declared)) if dialect.same_type(declared, &c.ty) => {}
                        Some((_, declared)) if dialect.can_widen(declared, &c.ty) => wider.push(c.clone()),
                        Some((_, declared)) => {
                            return Err(TableError::Incompatible {
                                table: def.table.clone(),
                                column: c.name.clone(),
                                declared: declared.clone(),
                                wanted: dialect.type_name(&c.ty),
                            })
                        }
                        None => missing.push(c.clone()),
                    }
                }
                if !wider.is_empty() {
                    let names: Vec<&str> = wider.iter().map(|c| c.name.as_str()).collect();
                    tracing::info!(table = %def.table, "widening the types of {}", names.join(", "));
                    w.widen_columns(&def.table, &wider).await?;
                }
                if !missing.is_empty() {
                    let names: Vec<&str> = missing.iter().map(|c| c.name.as_str()).collect();
                    tracing::info!(table = %def.table, "widening the table by {}", names.join(", "));
                    w.add_columns(&def.table, &missing).await?;
                }
                !missing.is_empty() || !wider.is_empty()
            }
        };
        let now = w.columns(&def.table).await?.unwrap_or_default();
        self.known.insert(def.table.clone(), now);
        Ok(changed)
    }

    /// Whether this process made the latest-state view of `raw`.
    pub fn has_view(&self, raw: &TableRef) -> bool {
        self.views.contains(raw)
    }

    /// The view of `raw` must be made again (its table was widened).
    pub fn forget_view(&mut self, raw: &TableRef) {
        self.views.remove(raw);
    }

    /// Creates (or replaces) the latest-state view of a raw CDC table,
    /// once per process and again after [`Tables::forget_view`].
    pub async fn ensure_view<W: Warehouse>(
        &mut self,
        w: &mut W,
        raw: &TableRef,
        view: &TableRef,
        key: &[String],
    ) -> Result<(), TableError> {
        if key.is_empty() || self.views.contains(raw) {
            return Ok(());
        }
        let columns: Vec<(String, String)> = match self.known.get(raw) {
            Some(c) => c.clone(),
            None => w.columns(raw).await?.unwrap_or_default(),
        };
        let data: Vec<String> = columns
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !is_metadata(n))
            .collect();
        let toastable: Vec<bool> = columns
            .iter()
            .filter(|(n, _)| !is_metadata(n))
            .map(|(_, t)| toastable(t))
            .collect();
        let mut statements = vec![format!("CREATE SCHEMA IF NOT EXISTS {}", quote::ident(&view.schema))];
        let organizations = view.name == "organizations";
        if organizations {
            // It selects o.*: a widened organizations view changes its
            // columns, which CREATE OR REPLACE may not do.
            statements.push(format!(
                "DROP VIEW IF EXISTS {}.organizations_with_insolvency",
                quote::ident(&view.schema)
            ));
        }
        statements.push(latest_view_sql(w.dialect(), raw, view, key, &data, &toastable));
        if organizations {
            statements.push(organizations_with_insolvency_sql(
                &view.schema,
                data.iter().any(|c| c == "insolvency_ts"),
            ));
        }
        w.define_views(raw, &statements).await?;
        self.views.insert(raw.clone());
        Ok(())
    }
}

fn is_metadata(column: &str) -> bool {
    CDC_COLUMNS.iter().any(|(n, _)| *n == column) || KAFKA_COLUMNS.iter().any(|(n, _)| *n == column)
}

/// Types whose values Postgres may leave out of an update as unchanged
/// TOAST (variable-length ones).
fn toastable(declared: &str) -> bool {
    let d = declared.to_ascii_uppercase();
    // The SQL targets' names, then Iceberg's.
    [
        "VARCHAR",
        "TEXT",
        "JSON",
        "BLOB",
        "BYTEA",
        "CHARACTER VARYING",
        "STRING",
        "BINARY",
    ]
    .iter()
    .any(|t| d.starts_with(t))
}

/// The latest-state view of a raw CDC table: the text of
/// [`sql/warehouse/latest_state.sql`](../../sql/warehouse/latest_state.sql),
/// which says how source order is decided, filled in. One text serves both
/// targets (`strpos`, `DISTINCT ON`, window functions, correlated
/// subqueries and CTE materialization hints mean the same in DuckDB and
/// Postgres).
pub fn latest_view_sql(
    dialect: Dialect,
    raw: &TableRef,
    view: &TableRef,
    key: &[String],
    columns: &[String],
    toastable: &[bool],
) -> String {
    let keys: Vec<String> = key.iter().map(|k| quote::ident(k)).collect();
    let same_key: Vec<String> = key.iter().map(|k| format!("p.{0} = o.{0}", quote::ident(k))).collect();
    let select: Vec<String> = columns
        .iter()
        .zip(toastable)
        .map(|(c, t)| {
            let q = quote::ident(c);
            let marker = quote::literal(&format!("\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")));
            if *t && !key.contains(c) {
                format!(
                    "CASE WHEN strpos(o._unchanged_toast, {marker}) > 0 THEN (SELECT p.{q} FROM kept p \
                     WHERE {same} AND NOT (p._topic = o._topic AND p._partition = o._partition \
                     AND p._offset = o._offset) AND p._op IN ('c', 'r', 'u') \
                     AND (p._unchanged_toast IS NULL OR strpos(p._unchanged_toast, {marker}) = 0) \
                     ORDER BY p._commit_lsn DESC NULLS LAST, p._op <> 'r' DESC, \
                     p._tx_ordinal DESC NULLS LAST, p._offset DESC LIMIT 1) ELSE o.{q} END AS {q}",
                    same = same_key.join(" AND ")
                )
            } else {
                format!("o.{q}")
            }
        })
        .collect();
    // Each key's last version, newest first by source order.
    let newest_first =
        "k._commit_lsn DESC NULLS LAST, k._op <> 'r' DESC, k._tx_ordinal DESC NULLS LAST, k._offset DESC";
    let keys = keys.join(", ");
    let latest = match dialect {
        Dialect::Postgres => format!("SELECT DISTINCT ON ({keys}) k.* FROM kept AS k ORDER BY {keys}, {newest_first}"),
        // Iceberg's latest state is read by DuckDB (sql/iceberg).
        Dialect::DuckDb | Dialect::Iceberg => format!(
            "SELECT k.* FROM kept AS k QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {newest_first}) = 1"
        ),
    };
    let template: String = include_str!("../../sql/warehouse/latest_state.sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    fill(
        &template,
        &[
            ("view", &view.quoted()),
            ("raw", &raw.quoted()),
            ("keys", &keys),
            ("latest", &latest),
            ("columns", &select.join(", ")),
        ],
    )
}

/// `template` with each `{name}` replaced in one pass, so a value that
/// reads like a placeholder (a table named `{keys}`) stays as it is.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = values.iter().find_map(|(name, value)| {
            after
                .strip_prefix(name)
                .and_then(|t| t.strip_prefix('}'))
                .map(|t| (value, t))
        });
        match hit {
            Some((value, tail)) => {
                out.push_str(value);
                rest = tail;
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Organizations with the latest insolvency known from either the source
/// column or the CSV loads.
fn organizations_with_insolvency_sql(schema: &str, source_has_column: bool) -> String {
    let template = include_str!("../../sql/warehouse/organizations_with_insolvency.sql");
    let source_ts = if source_has_column {
        "o.insolvency_ts"
    } else {
        "CAST(NULL AS TIMESTAMPTZ)"
    };
    template
        .replace("{schema}", &quote::ident(schema))
        .replace("{source_insolvency_ts}", source_ts)
}

/// The view of the latest version of each company.
pub fn companies_latest_sql() -> String {
    include_str!("../../sql/warehouse/companies_latest.sql").to_owned()
}

/// The statements of a SQL file: comment lines dropped, split on `;`
/// (the files of `sql/warehouse` hold no `;` inside literals).
pub fn statements(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The raw table of a CDC source table with the plan's columns.
pub fn cdc_table_def(raw: &TableRef, source_columns: Vec<ColumnDef>) -> TableDef {
    let mut columns = source_columns;
    columns.extend(CDC_COLUMNS.iter().map(|(n, t)| ColumnDef::new(n, t.clone())));
    columns.extend(kafka_columns());
    TableDef {
        table: raw.clone(),
        columns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_columns_never_collide_with_metadata_or_by_case() {
        let names = warehouse_column_names(["id", "_op", "Name", "name", "_OFFSET", "name_1"]);
        assert_eq!(names, ["id", "_op_1", "Name", "name_1", "_OFFSET_1", "name_1_1"]);
    }

    #[test]
    fn placeholders_are_filled_once() {
        assert_eq!(
            fill("{view} ON {keys} {x}", &[("view", "\"{keys}\""), ("keys", "id")]),
            "\"{keys}\" ON id {x}"
        );
    }

    #[test]
    fn latest_view_orders_by_source_position_and_carries_toast_forward() {
        let view = |dialect| {
            latest_view_sql(
                dialect,
                &TableRef::new("raw_public", "t"),
                &TableRef::new("public", "t"),
                &["id".to_string()],
                &["id".to_string(), "doc".to_string(), "n".to_string()],
                &[false, true, false],
            )
        };
        let newest_first =
            "k._commit_lsn DESC NULLS LAST, k._op <> 'r' DESC, k._tx_ordinal DESC NULLS LAST, k._offset DESC";
        let duck = view(Dialect::DuckDb);
        assert!(
            duck.contains(&format!(
                "QUALIFY row_number() OVER (PARTITION BY \"id\" ORDER BY {newest_first}) = 1"
            )),
            "{duck}"
        );
        let sql = view(Dialect::Postgres);
        assert!(
            sql.contains(&format!(
                "SELECT DISTINCT ON (\"id\") k.* FROM kept AS k ORDER BY \"id\", {newest_first}"
            )),
            "{sql}"
        );
        assert!(
            !sql.contains('{') && !duck.contains('{'),
            "every placeholder filled: {sql}"
        );
        assert!(sql.contains("strpos(o._unchanged_toast, '\"doc\"') > 0"), "{sql}");
        assert!(sql.contains("o.\"n\""), "{sql}");
        assert!(sql.contains("o._op <> 'd'"), "{sql}");
        assert!(sql.contains("t._op = 't'"), "{sql}");
    }
}
