//! The SQL catalog: iceberg-rust's `SqlCatalog` (SQLite file or PostgreSQL) for loading
//! and creating tables, plus our own connection to the same database for the
//! compare-and-swap that lands a hand-built snapshot (iceberg-rust keeps its pool
//! private and cannot commit delete files; see `commit`). The next metadata file is
//! written here, before the swap; a lost swap removes it.

use std::collections::HashMap;
use std::str::FromStr;

use iceberg::spec::{TableMetadata, TableMetadataBuildResult};
use iceberg::table::Table;
use iceberg::{
    Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableCreation, TableIdent,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use lakeshore_api::{Error, Result};
use sqlx::AnyPool;

use super::storage::factory_and_props;
use super::{Backend, CatalogConfig, discard, redact};
use crate::error::ice;

pub(super) struct SqlBackend {
    catalog: SqlCatalog,
    pool: AnyPool,
    name: String,
}

fn is_sqlite(uri: &str) -> bool {
    uri.starts_with("sqlite:")
}

/// Write `new_md` as the next version after the metadata file at `current`; its path.
async fn write_next_metadata(
    file_io: &iceberg::io::FileIO,
    current: &str,
    new_md: &TableMetadata,
) -> Result<String> {
    let next = MetadataLocation::from_str(current)
        .map_err(ice)?
        .with_next_version()
        .with_new_metadata(new_md);
    new_md.write_to(file_io, &next).await.map_err(ice)?;
    Ok(next.to_string())
}

/// How long the catalog database may take to accept a connection (a restart) before
/// the catalog counts as unreachable.
const CONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(8);

impl SqlBackend {
    pub(super) async fn open(cfg: &CatalogConfig) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let uri = if is_sqlite(&cfg.uri) && !cfg.uri.contains("mode=") {
            let sep = if cfg.uri.contains('?') { '&' } else { '?' };
            format!("{}{sep}mode=rwc", cfg.uri)
        } else {
            cfg.uri.clone()
        };
        let style = if is_sqlite(&uri) {
            SqlBindStyle::QMark
        } else {
            SqlBindStyle::DollarNumeric
        };
        let mut props = HashMap::from([
            ("uri".to_string(), uri.clone()),
            ("warehouse".to_string(), cfg.warehouse.clone()),
            ("sql_bind_style".to_string(), style.to_string()),
        ]);
        let (factory, storage_props) = factory_and_props(&cfg.warehouse, &cfg.storage);
        props.extend(storage_props);
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::config(format!(
                "cannot open the Iceberg SQL catalog at {} ({e}); check [sink.catalog] uri",
                redact(&cfg.uri)
            ))
        };
        // Our pool first: a catalog that cannot be reached is reported after
        // CONNECT_FOR, not after the 30 s iceberg's own pool keeps trying.
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CONNECT_FOR)
            .connect(&uri)
            .await
            .map_err(|e| unreachable(&e))?;
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(factory)
            .load(cfg.name.clone(), props)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(SqlBackend {
            catalog,
            pool,
            name: cfg.name.clone(),
        })
    }

    /// Point the table at `new` if it still points at `expected`. `false` means another
    /// writer committed first.
    async fn swap_metadata(&self, ident: &TableIdent, expected: &str, new: &str) -> Result<bool> {
        let sql = "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
                   WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
                   AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = $6";
        let result = sqlx::query(sql)
            .bind(new)
            .bind(expected)
            .bind(&self.name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .bind(expected)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                Error::transient(format!("table {ident}: catalog update failed")).with_source(e)
            })?;
        Ok(result.rows_affected() == 1)
    }
}

#[async_trait::async_trait]
impl Backend for SqlBackend {
    async fn load(&self, ident: &TableIdent) -> Result<Option<Table>> {
        // `load_table` checks existence itself: no separate `table_exists` round trip.
        match self.catalog.load_table(ident).await {
            Ok(table) => Ok(Some(table)),
            Err(e) if e.kind() == iceberg::ErrorKind::TableNotFound => Ok(None),
            Err(e) => Err(ice(e)),
        }
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.catalog.namespace_exists(namespace).await.map_err(ice)
    }

    async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.catalog
            .create_namespace(namespace, HashMap::new())
            .await
            .map(|_| ())
            .map_err(ice)
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Option<Table>> {
        Ok(Some(
            self.catalog
                .create_table(namespace, creation)
                .await
                .map_err(ice)?,
        ))
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.catalog.list_tables(namespace).await.map_err(ice)
    }

    async fn land(
        &self,
        ident: &TableIdent,
        base: &Table,
        next: TableMetadataBuildResult,
    ) -> Result<bool> {
        let current = base.metadata_location_result().map_err(ice)?;
        let location = write_next_metadata(base.file_io(), current, &next.metadata).await?;
        if self.swap_metadata(ident, current, &location).await? {
            delete_dropped_metadata(base, &next.metadata).await;
            return Ok(true);
        }
        discard(base.file_io(), std::slice::from_ref(&location)).await;
        Ok(false)
    }
}

/// The table property asking for metadata files to be deleted once they leave the
/// metadata log (kept to `write.metadata.previous-versions-max`, 100 by default).
pub(crate) const DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

/// With [`DELETE_AFTER_COMMIT`] on, delete the metadata files of `base`'s log (and `base`'s
/// own) that `next`'s log no longer lists; what cannot be deleted is left to orphan
/// cleanup.
async fn delete_dropped_metadata(base: &Table, next: &iceberg::spec::TableMetadata) {
    if next
        .properties()
        .get(DELETE_AFTER_COMMIT)
        .map(String::as_str)
        != Some("true")
    {
        return;
    }
    let kept: std::collections::HashSet<&str> = next
        .metadata_log()
        .iter()
        .map(|l| l.metadata_file.as_str())
        .collect();
    let old = base
        .metadata()
        .metadata_log()
        .iter()
        .map(|l| l.metadata_file.as_str())
        .chain(base.metadata_location());
    for path in old.filter(|p| !kept.contains(p)) {
        if let Err(e) = base.file_io().delete(path).await {
            tracing::debug!(file = %path, error = %e, "could not delete a metadata file that left the log");
        }
    }
}
