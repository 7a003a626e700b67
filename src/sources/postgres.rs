//! `[source] type = "postgres"`: a snapshot of the tables, then logical replication.

#[cfg(feature = "bench")]
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use lakeshore_api::{Ledger, Result, Source, SourcePosition};
use lakeshore_postgres::{Arrays, PostgresOptions, PostgresSource, Startup};
use serde::Deserialize;

use super::{SourceConnector, SourcePlan, SourceSection, check_qualified, chunking};
use crate::config::units::{EnvUrl, Spanned};
use crate::config::{ConfigError, Plan, SourceText};

/// `[source]` with `type = "postgres"`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// `"postgres"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Connection URL, e.g. `"postgres://app:${PGPASSWORD}@db:5432/shop"`. The user needs
    /// the REPLICATION attribute (unless `startup = "snapshot-only"`) and SELECT on the
    /// tables. A `${VAR}` in the user information or as `password=` is percent-encoded,
    /// so any password works. The password never appears in logs or messages. TLS as in
    /// libpq:
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` (`disable`, `prefer` (default),
    /// `require`, `verify-ca`, `verify-full`).
    pub url: EnvUrl,
    /// Tables to replicate as `schema.table`; `*` matches any run of characters, e.g.
    /// `["public.orders", "shop.*"]`.
    pub tables: Vec<Spanned<String>>,
    /// Publication name; created for the tables if absent, extended if it lacks some.
    /// Default `lakeshore_<pipeline name>`.
    pub publication: Option<Spanned<String>>,
    /// Logical replication slot name; created if absent, reused if present, never
    /// dropped by lakeshore. Default `lakeshore_<pipeline name>`.
    pub slot: Option<Spanned<String>>,
    /// `"snapshot"` (default: every table, then the change stream), `"latest"` (changes
    /// from now on only) or `"snapshot-only"` (no slot; stops after the snapshot).
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub startup: Option<Startup>,
    /// Rows per snapshot chunk (one short read transaction each). Default 20000.
    pub chunk_size: Option<Spanned<u64>>,
    /// Connections that read snapshot chunks ahead, of different tables at once (a
    /// table's own chunks follow each other in key order). Default 2.
    pub parallelism: Option<Spanned<u64>>,
    /// Key columns of tables without a primary key, e.g. `{ "public.events" = ["id"] }`;
    /// such tables also need `REPLICA IDENTITY FULL`.
    #[serde(default)]
    pub key_columns: BTreeMap<String, Vec<String>>,
    /// `"list"` (default): a one-dimensional array of a mapped type is an Iceberg list
    /// (a multi-dimensional value stops its table); `"text"`: every array is a string in
    /// PostgreSQL's text form (`{1,2}`), as lake tables made before lists hold them.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub arrays: Option<Arrays>,
}

impl SourceSection for PostgresSection {
    fn plan(
        &self,
        src: &SourceText<'_>,
        pipeline: &str,
        columns: &lakeshore_api::ColumnFilter,
    ) -> Result<SourcePlan, ConfigError> {
        check_qualified(src, &self.tables, "schema", "public")?;
        let default_name = format!("lakeshore_{}", pipeline.replace('-', "_").to_lowercase());
        let ident = |v: &Option<Spanned<String>>, what: &str| -> Result<String, ConfigError> {
            let Some(v) = v else {
                return Ok(default_name.clone());
            };
            let name = v.get_ref();
            if name.is_empty()
                || name.len() > 63
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(src.error(
                    Some(v.span()),
                    format!(
                        "{what} \"{name}\" may hold only lowercase letters, digits and `_` (at most 63)"
                    ),
                ));
            }
            Ok(name.clone())
        };
        let (chunk_size, parallelism) = chunking(src, &self.chunk_size, &self.parallelism)?;
        Ok(Arc::new(Postgres(PostgresOptions {
            parallelism,
            url: self.url.0.clone(),
            tables: self.tables.iter().map(|t| t.get_ref().clone()).collect(),
            publication: ident(&self.publication, "publication")?,
            slot: ident(&self.slot, "slot")?,
            startup: self.startup.unwrap_or(Startup::Snapshot),
            chunk_size,
            batch_rows: 8192,
            key_columns: self.key_columns.clone(),
            columns: columns.clone(),
            arrays: self.arrays.unwrap_or_default(),
        })))
    }
}

/// A PostgreSQL source's validated options.
#[derive(Debug, Clone)]
pub struct Postgres(pub PostgresOptions);

#[async_trait::async_trait]
impl SourceConnector for Postgres {
    async fn open(
        &self,
        position: Option<&SourcePosition>,
        bounded: bool,
        _ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Box<dyn Source>> {
        Ok(Box::new(
            PostgresSource::open(self.0.clone(), position, bounded).await?,
        ))
    }

    async fn check(&self) -> Result<Vec<String>> {
        lakeshore_postgres::check(&self.0).await
    }

    async fn held(&self, _plan: &Plan) -> Result<Option<(u64, &'static str)>> {
        Ok(lakeshore_postgres::retained_wal(&self.0)
            .await?
            .map(|b| (b, "WAL kept by its replication slot")))
    }

    #[cfg(feature = "bench")]
    fn as_any(&self) -> &dyn Any {
        self
    }
}
