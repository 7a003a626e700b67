//! The catalog: iceberg-rust's SQL catalog (SQLite file or PostgreSQL) for loading and
//! creating tables, plus our own connection to the same database for the
//! compare-and-swap that lands a hand-built snapshot (iceberg-rust keeps its pool
//! private and cannot commit delete files; see `commit`).

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use lakeshore_api::{Error, Result};
use sqlx::AnyPool;

/// Where the catalog lives. Its `Debug` hides any password in the URI.
#[derive(Clone)]
pub struct CatalogConfig {
    /// Catalog name as recorded in `iceberg_tables.catalog_name` (readers must use the same).
    pub name: String,
    /// `sqlite:///abs/path/catalog.db` or `postgres://user:pass@host/db`.
    pub uri: String,
    /// Warehouse root: an absolute local path, or an `s3://bucket/prefix` URL.
    pub warehouse: String,
    /// S3 settings of an `s3://` warehouse (`endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `session_token`); missing ones come from the `AWS_*`
    /// environment. Never printed.
    pub storage: lakeshore_api::StorageOptions,
}

impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("name", &self.name)
            .field("uri", &redact(&self.uri))
            .field("warehouse", &self.warehouse)
            .field("storage", &self.storage)
            .finish()
    }
}

/// An open catalog.
pub struct CatalogHandle {
    catalog: Arc<SqlCatalog>,
    pool: AnyPool,
    name: String,
}

/// The warehouse's S3 settings as iceberg FileIO properties. An explicit endpoint (MinIO,
/// moto, any S3-compatible store) is addressed path-style.
fn s3_props(storage: &lakeshore_api::StorageOptions) -> Vec<(String, String)> {
    let mut props = Vec::new();
    for (k, v) in &storage.0 {
        let key = match k.to_ascii_lowercase().trim_start_matches("aws_") {
            "endpoint" | "endpoint_url" => {
                props.push(("s3.path-style-access".to_string(), "true".to_string()));
                "s3.endpoint"
            }
            "region" | "default_region" => "s3.region",
            "access_key_id" => "s3.access-key-id",
            "secret_access_key" => "s3.secret-access-key",
            "session_token" | "token" => "s3.session-token",
            // object_store settings with no FileIO counterpart (allow_http: the endpoint's
            // scheme says it).
            _ => continue,
        };
        props.push((key.to_string(), v.clone()));
    }
    props
}

fn is_sqlite(uri: &str) -> bool {
    uri.starts_with("sqlite:")
}

impl CatalogHandle {
    /// Connect, creating the SQLite file and the catalog tables when missing.
    pub async fn open(cfg: &CatalogConfig) -> Result<Self> {
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
        let s3 = cfg.warehouse.starts_with("s3://");
        if s3 {
            props.extend(s3_props(&cfg.storage));
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::config(format!(
                "cannot open the Iceberg SQL catalog at {} ({e}); check [sink.catalog] uri",
                redact(&cfg.uri)
            ))
        };
        let storage: Arc<dyn iceberg::io::StorageFactory> = if s3 {
            Arc::new(iceberg_storage_opendal::OpenDalStorageFactory::S3 {
                customized_credential_load: None,
            })
        } else {
            Arc::new(LocalFsStorageFactory)
        };
        let catalog = SqlCatalogBuilder::default()
            .with_storage_factory(storage)
            .load(cfg.name.clone(), props)
            .await
            .map_err(|e| unreachable(&e))?;
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&uri)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(CatalogHandle {
            catalog: Arc::new(catalog),
            pool,
            name: cfg.name.clone(),
        })
    }

    /// The iceberg-rust catalog.
    pub fn catalog(&self) -> &dyn Catalog {
        self.catalog.as_ref()
    }

    /// Point the table at `new` if it still points at `expected`. `false` means another
    /// writer committed first.
    pub async fn swap_metadata(
        &self,
        ident: &TableIdent,
        expected: &str,
        new: &str,
    ) -> Result<bool> {
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

pub use lakeshore_api::url::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        let cfg = CatalogConfig {
            name: "c".into(),
            uri: "postgres://u:secret@h/db".into(),
            warehouse: "/w".into(),
            storage: lakeshore_api::StorageOptions(
                [("secret_access_key".to_string(), "hunter2".to_string())].into(),
            ),
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains(":secret@") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite:///tmp/c.db"), "sqlite:///tmp/c.db");
    }
}
