//! A commit that is a compare-and-set on the table as walhouse read it.
//!
//! `iceberg`'s `Transaction::commit` loads the table again before it
//! commits and, if another writer committed in between, applies its
//! actions to the newer table. For a plain append that is right; for
//! walhouse it is not: which rows a commit adds, and the positions it
//! records, were decided from the table as read (the rows it already
//! holds). So the transaction is committed through this catalog, which
//! hands back the table as read instead of loading it again. The append's
//! requirement (the branch still at the snapshot it was built on) is then
//! checked by the real catalog against its current metadata, in the same
//! compare-and-set that swaps the metadata: a table changed since it was
//! read fails the commit, and the caller reads it again and decides anew.

use std::collections::HashMap;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent};

/// `inner`, with `pinned` standing for its table's current state.
#[derive(Debug)]
pub struct PinnedCatalog<'a, C: Catalog> {
    pub inner: &'a C,
    pub pinned: &'a Table,
}

#[async_trait]
impl<C: Catalog> Catalog for PinnedCatalog<'_, C> {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(&self, namespace: &NamespaceIdent, properties: HashMap<String, String>) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(&self, namespace: &NamespaceIdent, creation: TableCreation) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        if table == self.pinned.identifier() {
            return Ok(self.pinned.clone());
        }
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    /// A conflict is final here: retrying would apply the same decision to
    /// the same stale table. The caller reads the table again instead.
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.inner
            .update_table(commit)
            .await
            .map_err(|e| Error::new(e.kind(), e.message().to_owned()))
    }
}

/// Whether `e` says the table changed since it was read.
pub fn is_conflict(e: &Error) -> bool {
    e.kind() == ErrorKind::CatalogCommitConflicts
}
