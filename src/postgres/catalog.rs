//! What the stream knows about tables and types.
//!
//! pgoutput sends a Relation message before the first change of a table in
//! each session and again whenever its shape changes (`ALTER TABLE`), and a
//! Type message before the first use of a non-builtin type (enums, domains,
//! composites). [`RelationCache`] keeps the latest of each, so every change is
//! read with the columns in force when it was written. Type names that no
//! Type message supplied can be filled in from `pg_type` with
//! [`load_type_names`].

use std::collections::HashMap;
use std::sync::Arc;

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
}

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
        builtin_type_name(oid).or_else(|| self.types.get(&oid).map(String::as_str))
    }

    /// Type oids of `rel` with no known name yet.
    pub fn unnamed_types(&self, rel: &Relation) -> Vec<u32> {
        let mut oids: Vec<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|&oid| self.type_name(oid).is_none())
            .collect();
        oids.sort_unstable();
        oids.dedup();
        oids
    }

    pub fn insert_type_names(&mut self, names: impl IntoIterator<Item = (u32, String)>) {
        self.types.extend(names);
    }
}

/// Looks type names up in `pg_type` (for types no Type message named).
pub async fn load_type_names(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<Vec<(u32, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT oid, format_type(oid, NULL) FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[])",
            &[&oids.iter().map(|&o| o as i64).collect::<Vec<i64>>()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
        .collect())
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
        assert_eq!(c.unnamed_types(&r), vec![90001, 90002]);
        c.apply_type(TypeMessage {
            xid: None,
            id: 90001,
            namespace: "public".into(),
            name: "mood".into(),
        });
        c.insert_type_names([(90002, "shop.money_amount".to_string())]);
        assert!(c.unnamed_types(&r).is_empty());
        assert_eq!(c.type_name(90001), Some("public.mood"));
        assert_eq!(c.type_name(23), Some("integer"));
    }
}
