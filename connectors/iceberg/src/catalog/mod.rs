//! The catalog seam: everything the sink, the commit actions and maintenance ask of a
//! catalog — load, create, list, and land a staged metadata change — behind one
//! [`CatalogHandle`] with two implementations:
//!
//! - `sql`: iceberg-rust's SQL catalog (SQLite file or PostgreSQL, the JDBC layout) for
//!   loading and creating, and our own compare-and-swap on `metadata_location` after
//!   writing the next metadata file ourselves;
//! - `rest`: an Iceberg REST catalog, spoken with our own HTTP client over iceberg-rust's
//!   request and update types; a change lands as `updateTable` with requirements (table
//!   UUID, the main branch's snapshot, the current schema) and the builder's updates, the
//!   server writing the metadata file. `auth` signs its requests (bearer token, OAuth2
//!   client credentials refreshed before expiry, AWS SigV4).
//!
//! Either way a lost race is `Ok(false)` from [`CatalogHandle::land`]: the caller reloads
//! and re-validates, the same code for both catalogs.

use std::collections::BTreeMap;

use iceberg::spec::TableMetadataBuildResult;
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableCreation, TableIdent};
use lakeshore_api::{Error, Result, StorageOptions};

mod auth;
mod rest;
mod sql;
mod storage;

pub use auth::{RestAuth, SigV4};
pub use lakeshore_api::url::redact;
pub(crate) use sql::DELETE_AFTER_COMMIT;

/// Where the catalog lives. Its `Debug` hides passwords, tokens and credentials.
#[derive(Clone)]
pub struct CatalogConfig {
    /// Catalog name: recorded in `iceberg_tables.catalog_name` by the SQL catalog
    /// (readers must use the same); a label in messages for a REST catalog.
    pub name: String,
    /// SQL: `sqlite:///abs/path/catalog.db` or `postgres://user:pass@host/db`.
    /// REST: the catalog's base URL (`https://host/api/catalog`), before `/v1/`.
    pub uri: String,
    /// SQL: the warehouse root, an absolute local path or an `s3://bucket/prefix` URL.
    /// REST: the warehouse name or location sent to `/v1/config` (may be empty).
    pub warehouse: String,
    /// S3 settings (`endpoint`, `region`, `access_key_id`, `secret_access_key`,
    /// `session_token`) of the warehouse's files; missing ones come from the `AWS_*`
    /// environment. Never printed.
    pub storage: StorageOptions,
    /// `Some`: an Iceberg REST catalog at `uri`; `None`: the SQL catalog.
    pub rest: Option<RestConfig>,
}

/// An Iceberg REST catalog's settings beyond its URI.
#[derive(Clone, Default)]
pub struct RestConfig {
    /// The path prefix after `/v1/`; `None`: what the server's `/v1/config` says.
    pub prefix: Option<String>,
    /// How requests authenticate.
    pub auth: RestAuth,
    /// Extra headers sent with every request (values never printed).
    pub headers: BTreeMap<String, String>,
    /// Ask the catalog for storage credentials (`X-Iceberg-Access-Delegation:
    /// vended-credentials`) and use them for the table's files.
    pub vended_credentials: bool,
}

impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("CatalogConfig");
        d.field("name", &self.name)
            .field("uri", &redact(&self.uri))
            .field("warehouse", &self.warehouse)
            .field("storage", &self.storage);
        if let Some(rest) = &self.rest {
            d.field("prefix", &rest.prefix)
                .field("auth", &rest.auth)
                .field("headers", &rest.headers.keys().collect::<Vec<_>>())
                .field("vended_credentials", &rest.vended_credentials);
        }
        d.finish()
    }
}

/// What one catalog implementation does; [`CatalogHandle`] adds the shared rules.
#[async_trait::async_trait]
trait Backend: Send + Sync {
    /// The table, or `None` when the catalog has no such table.
    async fn load(&self, ident: &TableIdent) -> Result<Option<Table>>;
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool>;
    async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()>;
    /// Create the table; `Ok(None)` when it exists already (another writer won).
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Option<Table>>;
    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>>;
    /// Make `next` (built on `base`) the table's metadata if the table is still at
    /// `base`; `Ok(false)` when another commit moved it first.
    async fn land(
        &self,
        ident: &TableIdent,
        base: &Table,
        next: TableMetadataBuildResult,
    ) -> Result<bool>;
}

/// An open catalog.
pub struct CatalogHandle {
    backend: Box<dyn Backend>,
    label: String,
}

impl CatalogHandle {
    /// Connect: for SQL, creating the SQLite file and the catalog tables when missing;
    /// for REST, reading the server's `/v1/config` (which checks the credentials).
    pub async fn open(cfg: &CatalogConfig) -> Result<Self> {
        let backend: Box<dyn Backend> = match &cfg.rest {
            None => Box::new(sql::SqlBackend::open(cfg).await?),
            Some(rest) => Box::new(rest::RestBackend::open(cfg, rest).await?),
        };
        Ok(CatalogHandle {
            backend,
            label: format!(
                "{} catalog {}",
                if cfg.rest.is_some() { "REST" } else { "SQL" },
                redact(&cfg.uri)
            ),
        })
    }

    /// Load `ident`; a missing table is a configuration error.
    pub async fn load(&self, ident: &TableIdent) -> Result<Table> {
        self.backend.load(ident).await?.ok_or_else(|| {
            Error::config(format!(
                "no table {ident} in the {}; the pipeline creates it on its first run",
                self.label
            ))
        })
    }

    /// Load `ident`, or `None` when the catalog has no such table.
    pub async fn load_if_exists(&self, ident: &TableIdent) -> Result<Option<Table>> {
        self.backend.load(ident).await
    }

    /// Whether `namespace` exists.
    pub async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.backend.namespace_exists(namespace).await
    }

    /// Create `namespace` unless it exists (another writer may create it meanwhile).
    pub async fn ensure_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        if self.backend.namespace_exists(namespace).await? {
            return Ok(());
        }
        match self.backend.create_namespace(namespace).await {
            Ok(()) => Ok(()),
            Err(_) if self.backend.namespace_exists(namespace).await? => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Create a table, or load it when another writer created it first.
    pub async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        let ident = TableIdent::new(namespace.clone(), creation.name.clone());
        match self.backend.create_table(namespace, creation).await {
            Ok(Some(table)) => Ok(table),
            Ok(None) => self.load(&ident).await,
            // Another copy or pipeline created it meanwhile: append to it.
            Err(e) => match self.backend.load(&ident).await {
                Ok(Some(table)) => Ok(table),
                _ => Err(e),
            },
        }
    }

    /// The tables of `namespace`.
    pub async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.backend.list_tables(namespace).await
    }

    /// Land `next`, built on `base`. When another commit won, remove `written` (this
    /// attempt's files) and return false: the caller retries on a fresh table or gives
    /// up. An error leaves the files: the commit may have landed (a REST server that
    /// failed after committing), and orphan cleanup removes them if not.
    pub async fn land(
        &self,
        ident: &TableIdent,
        base: &Table,
        next: TableMetadataBuildResult,
        written: &[String],
    ) -> Result<bool> {
        if self.backend.land(ident, base, next).await? {
            return Ok(true);
        }
        discard(base.file_io(), written).await;
        Ok(false)
    }
}

/// Remove the files of a commit attempt that lost.
pub(crate) async fn discard(file_io: &iceberg::io::FileIO, files: &[String]) {
    for f in files {
        if let Err(e) = file_io.delete(f).await {
            tracing::debug!(file = %f, error = %e, "could not remove a file of a failed commit attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_messages() {
        let mut cfg = CatalogConfig {
            name: "c".into(),
            uri: "postgres://u:secret@h/db".into(),
            warehouse: "/w".into(),
            storage: StorageOptions(
                [("secret_access_key".to_string(), "hunter2".to_string())].into(),
            ),
            rest: None,
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains(":secret@") && !shown.contains("hunter2"),
            "{shown}"
        );
        cfg.rest = Some(RestConfig {
            auth: RestAuth::OAuth2 {
                credential: "client:topsecret".into(),
                server_uri: None,
                scope: None,
            },
            headers: [("X-Api-Key".to_string(), "keyvalue".to_string())].into(),
            ..Default::default()
        });
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("topsecret") && !shown.contains("keyvalue"),
            "{shown}"
        );
        assert!(shown.contains("X-Api-Key"), "{shown}");
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite:///tmp/c.db"), "sqlite:///tmp/c.db");
    }
}
