//! `[source] type = "mysql"`: MySQL or MariaDB, a lock-free snapshot then the binlog.

#[cfg(feature = "bench")]
use std::any::Any;
use std::sync::Arc;

use lakeshore_api::{Ledger, Result, Source, SourcePosition};
use lakeshore_engine::state::StateStore;
use lakeshore_mysql::{MysqlOptions, MysqlSource, Startup};
use serde::Deserialize;

use super::{SourceConnector, SourcePlan, SourceSection, check_qualified, chunking};
use crate::config::units::{EnvUrl, Spanned};
use crate::config::{ConfigError, Plan, SourceText};

/// `[source]` with `type = "mysql"` (MySQL or MariaDB).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MysqlSection {
    /// `"mysql"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Connection URL, e.g. `"mysql://cdc:${MYSQL_PASSWORD}@db:3306"`. The user needs
    /// REPLICATION SLAVE, REPLICATION CLIENT and SELECT. A `${VAR}` in the user
    /// information is percent-encoded, so any password works; it never appears in logs or
    /// messages. TLS as the `mysql` client names it:
    /// `?ssl-mode=verify_identity&ssl-ca=/path/ca.pem` (`disabled`, `preferred` (default),
    /// `required`, `verify_ca`, `verify_identity`).
    pub url: EnvUrl,
    /// Tables to replicate as `db.table`; `*` matches any run of characters, e.g.
    /// `["shop.orders_*"]` (route them into one lake table with `[[route]]`).
    pub tables: Vec<Spanned<String>>,
    /// The replica id lakeshore uses on the binlog connection; unique among the server's
    /// replicas. Default: derived from the pipeline name.
    pub server_id: Option<Spanned<u64>>,
    /// `"snapshot"` (default: every table, then the binlog), `"latest"` (changes from now
    /// on only), `"snapshot-only"` (stops after the snapshot), `{ gtid = "0-1-100" }`
    /// (MariaDB: changes after that GTID, no snapshot; on MySQL the executed set,
    /// `{ gtid = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100" }`) or `{ file = "mysql-bin.000042",
    /// position = 4 }` (changes from that binlog position, no snapshot).
    #[cfg_attr(test, schemars(with = "Option<serde_json::Value>"))]
    pub startup: Option<Spanned<toml::Value>>,
    /// Rows per snapshot chunk (one short consistent-snapshot transaction each). Default
    /// 20000.
    pub chunk_size: Option<Spanned<u64>>,
    /// Connections that read snapshot chunks ahead, of different tables at once. Default 2.
    pub parallelism: Option<Spanned<u64>>,
    /// A table lakeshore may write, as `db.table` (e.g. `"shop.lakeshore_watermarks"`;
    /// created if absent; the user needs CREATE, SELECT, INSERT and UPDATE on it): each snapshot
    /// chunk is read between two watermark rows written there, and the binlog between
    /// them is merged onto the chunk (DBLog). Needed on MySQL 8, RDS and Aurora, whose
    /// snapshots do not report their binlog position; works on MariaDB too. Default: none
    /// (MariaDB's snapshot position).
    pub snapshot_watermarks: Option<Spanned<String>>,
}

impl SourceSection for MysqlSection {
    fn plan(
        &self,
        src: &SourceText<'_>,
        pipeline: &str,
        columns: &lakeshore_api::ColumnFilter,
    ) -> Result<SourcePlan, ConfigError> {
        check_qualified(src, &self.tables, "database", "shop")?;
        let server_id = match &self.server_id {
            Some(id) if !(1..=u32::MAX as u64).contains(id.get_ref()) => {
                return Err(src.error(
                    Some(id.span()),
                    "server_id must be between 1 and 4294967295",
                ));
            }
            Some(id) => *id.get_ref() as u32,
            // Stable per pipeline, away from the small ids servers usually take.
            None => {
                let h = pipeline.bytes().fold(0x811c_9dc5u32, |h, b| {
                    (h ^ b as u32).wrapping_mul(0x0100_0193)
                });
                0x4000_0000 | (h & 0x3fff_ffff)
            }
        };
        let (chunk_size, parallelism) = chunking(src, &self.chunk_size, &self.parallelism)?;
        let snapshot_watermarks = match &self.snapshot_watermarks {
            Some(w) => match w.get_ref().split_once('.') {
                Some((db, t))
                    if !db.is_empty()
                        && !t.is_empty()
                        && !w.get_ref().contains(['*', '`'])
                        && !t.contains('.') =>
                {
                    Some(w.get_ref().clone())
                }
                _ => {
                    return Err(src.error(
                        Some(w.span()),
                        "snapshot_watermarks names one table as \"db.table\", e.g. \
                         \"shop.lakeshore_watermarks\"",
                    ));
                }
            },
            None => None,
        };
        Ok(Arc::new(Mysql(MysqlOptions {
            url: self.url.0.clone(),
            tables: self.tables.iter().map(|t| t.get_ref().clone()).collect(),
            server_id,
            startup: startup(src, self.startup.as_ref())?,
            chunk_size,
            parallelism,
            batch_rows: 8192,
            columns: columns.clone(),
            snapshot_watermarks,
        })))
    }
}

/// `startup`: a name, `{ gtid = "..." }` or `{ file = "...", position = N }`.
fn startup(src: &SourceText<'_>, v: Option<&Spanned<toml::Value>>) -> Result<Startup, ConfigError> {
    let Some(v) = v else {
        return Ok(Startup::Snapshot);
    };
    let hint = "write startup = \"snapshot\", \"latest\", \"snapshot-only\", { gtid = \"0-1-100\" } (MariaDB), \
                { gtid = \"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100\" } (MySQL) \
                or { file = \"mysql-bin.000042\", position = 4 }";
    let bad = || src.error(Some(v.span()), hint);
    match v.get_ref() {
        toml::Value::String(name) => match name.as_str() {
            "snapshot" => Ok(Startup::Snapshot),
            "latest" => Ok(Startup::Latest),
            "snapshot-only" => Ok(Startup::SnapshotOnly),
            _ => Err(bad()),
        },
        toml::Value::Table(t) => {
            let keys: Vec<&str> = t.keys().map(String::as_str).collect();
            match (
                keys.as_slice(),
                t.get("gtid"),
                t.get("file"),
                t.get("position"),
            ) {
                (["gtid"], Some(toml::Value::String(g)), _, _)
                    if lakeshore_mysql::Gtid::parse(g).is_some() =>
                {
                    Ok(Startup::Gtid(g.clone()))
                }
                (_, _, Some(toml::Value::String(file)), Some(toml::Value::Integer(pos)))
                    if keys.len() == 2 && *pos >= 4 && !file.is_empty() =>
                {
                    Ok(Startup::File {
                        file: file.clone(),
                        position: *pos as u64,
                    })
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// A MySQL source's validated options.
#[derive(Debug, Clone)]
pub struct Mysql(pub MysqlOptions);

#[async_trait::async_trait]
impl SourceConnector for Mysql {
    async fn open(
        &self,
        position: Option<&SourcePosition>,
        bounded: bool,
        _ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Box<dyn Source>> {
        Ok(Box::new(
            MysqlSource::open(self.0.clone(), position, bounded).await?,
        ))
    }

    async fn check(&self) -> Result<Vec<String>> {
        lakeshore_mysql::check(&self.0).await
    }

    async fn held(&self, plan: &Plan) -> Result<Option<(u64, &'static str)>> {
        let store = StateStore::open(&plan.state_url, &plan.name, &plan.sink.storage())?;
        let Some(record) = store.latest().await? else {
            return Ok(None);
        };
        let behind = lakeshore_mysql::binlog_behind(&self.0, &record.position).await?;
        Ok(Some((behind, "binlog written since its last checkpoint")))
    }

    #[cfg(feature = "bench")]
    fn as_any(&self) -> &dyn Any {
        self
    }
}
