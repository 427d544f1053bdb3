//! What the stream knows about tables and types.
//!
//! pgoutput sends a Relation message before the first change of a table in
//! each session and again whenever its shape changes (`ALTER TABLE`), and a
//! Type message before the first use of a non-builtin type (enums, domains,
//! composites). [`RelationCache`] keeps the latest of each, so every change is
//! read with the columns in force when it was written. What the messages do
//! not carry (enum labels, domain bases, array elements, primary keys,
//! declared array dimensions) is read from the catalog with
//! [`load_type_infos`] and [`load_column_infos`].

use std::collections::HashMap;
use std::sync::Arc;

use super::client::ReadColumn;
use super::error::SourceError;
use super::pgoutput::{Relation, TypeMessage};

/// Whether a Relation message changed what the cache held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationChange {
    New,
    /// Columns, key or replica identity differ from the cached version.
    Changed,
    Unchanged,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("change for relation {0} arrived before its Relation message (a pgoutput protocol violation)")]
    UnknownRelation(u32),
    #[error("relation {relation} has {columns} columns but a tuple carried {values} values")]
    ColumnCount {
        relation: String,
        columns: usize,
        values: usize,
    },
}

#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, String>,
    type_infos: HashMap<u32, TypeInfo>,
    column_infos: HashMap<u32, HashMap<String, ColumnInfo>>,
}

static NO_COLUMN_INFOS: std::sync::OnceLock<HashMap<String, ColumnInfo>> = std::sync::OnceLock::new();

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn apply_relation(&mut self, rel: Relation) -> RelationChange {
        let change = match self.relations.get(&rel.id) {
            None => RelationChange::New,
            Some(old)
                if old.columns == rel.columns
                    && old.replica_identity == rel.replica_identity
                    && old.namespace == rel.namespace
                    && old.name == rel.name =>
            {
                RelationChange::Unchanged
            }
            Some(_) => RelationChange::Changed,
        };
        self.relations.insert(rel.id, Arc::new(rel));
        change
    }

    pub fn apply_type(&mut self, t: TypeMessage) {
        let name = if t.namespace == "pg_catalog" || t.namespace.is_empty() {
            t.name
        } else {
            format!("{}.{}", t.namespace, t.name)
        };
        self.types.insert(t.id, name);
    }

    pub fn get(&self, relation_id: u32) -> Result<&Arc<Relation>, CatalogError> {
        self.relations
            .get(&relation_id)
            .ok_or(CatalogError::UnknownRelation(relation_id))
    }

    /// The type's name: builtin, from a Type message, or loaded from `pg_type`.
    pub fn type_name(&self, oid: u32) -> Option<&str> {
        builtin_type_name(oid)
            .or_else(|| self.types.get(&oid).map(String::as_str))
            .or_else(|| self.type_infos.get(&oid).map(|t| t.name.as_str()))
    }

    pub fn type_info(&self, oid: u32) -> Option<&TypeInfo> {
        self.type_infos.get(&oid)
    }

    /// Type oids of `rel` whose `pg_type` facts are not loaded yet.
    pub fn missing_type_infos(&self, rel: &Relation) -> Vec<u32> {
        let mut oids: Vec<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| !self.type_infos.contains_key(oid))
            .collect();
        oids.sort_unstable();
        oids.dedup();
        oids
    }

    pub fn insert_type_infos(&mut self, infos: impl IntoIterator<Item = (u32, TypeInfo)>) {
        self.type_infos.extend(infos);
    }

    /// Catalog facts of a table's columns, by name (empty when unknown).
    pub fn column_infos(&self, relation_id: u32) -> &HashMap<String, ColumnInfo> {
        self.column_infos
            .get(&relation_id)
            .unwrap_or_else(|| NO_COLUMN_INFOS.get_or_init(HashMap::new))
    }

    pub fn set_column_infos(&mut self, relation_id: u32, infos: HashMap<String, ColumnInfo>) {
        self.column_infos.insert(relation_id, infos);
    }
}

/// Names of the builtin types pgoutput never sends Type messages for.
pub fn builtin_type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        600 => "point",
        650 => "cidr",
        700 => "real",
        701 => "double precision",
        718 => "circle",
        774 => "macaddr8",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1000 => "boolean[]",
        1001 => "bytea[]",
        1005 => "smallint[]",
        1007 => "integer[]",
        1009 => "text[]",
        1015 => "character varying[]",
        1016 => "bigint[]",
        1021 => "real[]",
        1022 => "double precision[]",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1115 => "timestamp without time zone[]",
        1182 => "date[]",
        1184 => "timestamp with time zone",
        1185 => "timestamp with time zone[]",
        1186 => "interval",
        1231 => "numeric[]",
        1266 => "time with time zone",
        1560 => "bit",
        1562 => "bit varying",
        1700 => "numeric",
        2950 => "uuid",
        2951 => "uuid[]",
        3614 => "tsvector",
        3802 => "jsonb",
        3807 => "jsonb[]",
        3904 => "int4range",
        3926 => "int8range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::pgoutput::{RelationColumn, ReplicaIdentity};

    fn rel(cols: &[(&str, u32)]) -> Relation {
        Relation {
            xid: None,
            id: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|(n, t)| RelationColumn {
                    is_key: *n == "id",
                    name: (*n).into(),
                    type_oid: *t,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn tracks_shape_changes() {
        let mut c = RelationCache::new();
        assert_eq!(c.apply_relation(rel(&[("id", 23)])), RelationChange::New);
        assert_eq!(c.apply_relation(rel(&[("id", 23)])), RelationChange::Unchanged);
        assert_eq!(c.apply_relation(rel(&[("id", 23), ("v", 25)])), RelationChange::Changed);
        assert_eq!(c.get(7).map(|r| r.columns.len()), Ok(2));
        assert_eq!(c.get(8).err(), Some(CatalogError::UnknownRelation(8)));
    }

    #[test]
    fn names_types_from_builtins_type_messages_and_lookups() {
        let mut c = RelationCache::new();
        let r = rel(&[("id", 23), ("mood", 90001), ("d", 90002)]);
        assert_eq!(c.missing_type_infos(&r), vec![23, 90001, 90002]);
        c.apply_type(TypeMessage {
            xid: None,
            id: 90001,
            namespace: "public".into(),
            name: "mood".into(),
        });
        c.insert_type_infos([(
            90002,
            TypeInfo {
                name: "shop.money_amount".into(),
                kind: TypeKind::Other,
            },
        )]);
        assert_eq!(c.type_name(90002), Some("shop.money_amount"));
        assert_eq!(
            c.missing_type_infos(&r),
            vec![23, 90001],
            "Type messages name, the catalog describes"
        );
        assert_eq!(c.type_name(90001), Some("public.mood"));
        assert_eq!(c.type_name(23), Some("integer"));
    }
}

/// What `pg_type` says about a type, as far as the Avro mapping cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// An enum, with its labels in sort order.
    Enum(Vec<String>),
    /// A domain over `base` (with the domain's typmod).
    Domain { base: u32, typmod: i32 },
    /// An array of `element`.
    Array { element: u32 },
    /// Anything else: carried as its text form.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: String,
    pub kind: TypeKind,
}

/// Per-column facts the Relation message does not carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnInfo {
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(19,4)`.
    pub pg_type: String,
    /// Declared array dimensions (`int[][]` is 2; 0 when undeclared).
    pub array_dims: i32,
    pub in_primary_key: bool,
    /// In the first unique index (by name) of plain columns, when there is
    /// no primary key: Debezium's key for such a table.
    pub in_unique_key: bool,
    pub not_null: bool,
    /// The column's `DEFAULT`, as `pg_get_expr` prints it.
    pub default_expr: Option<String>,
}

/// Looks up `oids` and, recursively, the domain bases and array elements
/// they refer to.
pub async fn load_type_infos(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<Vec<(u32, TypeInfo)>, SourceError> {
    let mut found: Vec<(u32, TypeInfo)> = Vec::new();
    let mut pending: Vec<u32> = oids.to_vec();
    // Domains of arrays of domains… nest only a few levels in practice.
    for _ in 0..8 {
        pending.retain(|o| !found.iter().any(|(f, _)| f == o));
        pending.sort_unstable();
        pending.dedup();
        if pending.is_empty() {
            break;
        }
        let rows = client
            .query(
                "SELECT t.oid, format_type(t.oid, NULL), t.typtype::text, t.typbasetype, t.typtypmod, t.typelem, \
                        t.typcategory::text, \
                        (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid) \
                 FROM pg_catalog.pg_type t WHERE t.oid = ANY($1::oid[])",
                &[&pending],
            )
            .await?;
        pending.clear();
        for r in rows {
            const QUERY: &str = "the pg_type query";
            let oid: u32 = r.read(QUERY, 0)?;
            let typtype: String = r.read(QUERY, 2)?;
            let base: u32 = r.read(QUERY, 3)?;
            let elem: u32 = r.read(QUERY, 5)?;
            let category: String = r.read(QUERY, 6)?;
            let kind = if typtype == "e" {
                TypeKind::Enum(r.read::<Option<Vec<String>>>(QUERY, 7)?.unwrap_or_default())
            } else if typtype == "d" {
                pending.push(base);
                TypeKind::Domain {
                    base,
                    typmod: r.read(QUERY, 4)?,
                }
            } else if category == "A" && elem != 0 {
                pending.push(elem);
                TypeKind::Array { element: elem }
            } else {
                TypeKind::Other
            };
            found.push((
                oid,
                TypeInfo {
                    name: r.read(QUERY, 1)?,
                    kind,
                },
            ));
        }
    }
    Ok(found)
}

/// Catalog facts of a Relation message's columns, by name.
#[derive(Debug, Default)]
pub struct ColumnFacts {
    pub infos: HashMap<String, ColumnInfo>,
    /// Columns the catalog does not show as the message describes them
    /// (missing, or of another type or typmod).
    pub unmatched: Vec<String>,
}

/// Column facts of `rel`'s columns from the current catalog.
///
/// The catalog can disagree with the message: pgoutput sends a transaction
/// once its commit record is flushed, which is before the committing
/// backend leaves the proc array, so for a moment (or, under synchronous
/// replication, until the standby answers) other sessions still see the
/// table as it was; or a later `ALTER TABLE` has committed already. So
/// `pg_type` is always the message's own type (`format_type` of its oid
/// and typmod), and the columns the catalog shows otherwise are listed in
/// `unmatched` for the caller to wait on.
pub async fn load_column_infos(client: &tokio_postgres::Client, rel: &Relation) -> Result<ColumnFacts, SourceError> {
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
    let typmods: Vec<i32> = rel.columns.iter().map(|c| c.type_modifier).collect();
    let rows = client
        .query(
            // attndims is int4 up to Postgres 17 and int2 from 18 on.
            "SELECT m.name, format_type(m.oid, m.typmod), COALESCE(a.attndims::int4, 0), \
                    COALESCE(a.attnum = ANY(i.indkey), false), \
                    i.indexrelid IS NULL AND COALESCE(a.attnum = ANY(u.indkey), false), COALESCE(a.attnotnull, false), \
                    CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END, \
                    COALESCE(a.atttypid = m.oid AND a.atttypmod = m.typmod, false) \
             FROM unnest($2::text[], $3::oid[], $4::int4[]) AS m(name, oid, typmod) \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = $1::oid AND a.attname = m.name AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             LEFT JOIN LATERAL ( \
               SELECT ui.indkey FROM pg_catalog.pg_index ui \
               JOIN pg_catalog.pg_class c ON c.oid = ui.indexrelid \
               WHERE ui.indrelid = a.attrelid AND ui.indisunique AND NOT ui.indisprimary \
                 AND NOT (0 = ANY(ui.indkey)) \
               ORDER BY c.relname LIMIT 1) u ON true",
            &[&rel.id, &names, &oids, &typmods],
        )
        .await?;
    const QUERY: &str = "the pg_attribute query";
    let mut facts = ColumnFacts::default();
    for r in &rows {
        let name: String = r.read(QUERY, 0)?;
        if !r.read::<bool>(QUERY, 7)? {
            facts.unmatched.push(name.clone());
        }
        facts.infos.insert(
            name,
            ColumnInfo {
                pg_type: r.read(QUERY, 1)?,
                array_dims: r.read(QUERY, 2)?,
                in_primary_key: r.read(QUERY, 3)?,
                in_unique_key: r.read(QUERY, 4)?,
                not_null: r.read(QUERY, 5)?,
                default_expr: r.read(QUERY, 6)?,
            },
        );
    }
    Ok(facts)
}
