//! `[sink] type = "iceberg"`: Iceberg tables through an SQL catalog.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::files::Codec;
use lakeshore_api::{Error, Result, Sink, StorageOptions, TableSchema};
use lakeshore_iceberg::parse_partition_expr;
use lakeshore_iceberg::{CatalogConfig, IcebergOptions, IcebergSink, WriteMode};
use serde::Deserialize;

use super::{
    SinkConnector, SinkPlan, SinkSection, check_partition_columns, file_sizes, max_open_files,
    storage_options,
};
use crate::config::units::{ByteSize, EnvString, EnvUrl, HumanDuration, Spanned};
use crate::config::{ConfigError, Plan, SourceText, absolute};

/// `[sink]` with `type = "iceberg"`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IcebergSection {
    /// `"iceberg"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// The catalog, e.g. `{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }`
    /// (`warehouse` may be `s3://bucket/prefix`, with `storage`).
    pub catalog: CatalogSection,
    /// Namespace of the tables (dots separate levels).
    pub namespace: Spanned<String>,
    /// S3 settings of an `s3://` warehouse, as for the Hive sink: `{ endpoint = "...",
    /// region = "...", access_key_id = "${AWS_ACCESS_KEY_ID}", secret_access_key =
    /// "${AWS_SECRET_ACCESS_KEY}" }`; keys left out come from the `AWS_*` environment.
    /// The state store uses them too. Values are never logged.
    #[serde(default)]
    pub storage: BTreeMap<String, EnvString>,
    /// `"append"` (data files only) or `"upsert"` (one row per primary key; updates and
    /// deletes become position deletes). Default `"upsert"` for keyed tables.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub mode: Option<Spanned<WriteMode>>,
    /// Roll data files at this size, e.g. `"128MiB"`. Default `"128MiB"`.
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Parquet codec: `"zstd"`, `"zstd(N)"`, `"snappy"` or `"none"`. Default `"zstd(1)"`.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub compression: Option<Codec>,
    /// Close a Parquet row group at this encoded size, e.g. `"4MiB"` (the default); each
    /// open data file buffers about this much.
    pub row_group_size: Option<Spanned<ByteSize>>,
    /// At most this many files of one table are open at once, e.g. `32`. Each open file
    /// holds its row group and its columns' encoders. From 16 open files (or this many, if
    /// lower) on, opening another closes the least recently written one; the limit doubles
    /// (up to this, for the rest of the run) when a partition closed that way is written
    /// again in the same checkpoint. Default `128`.
    pub max_open_files: Option<Spanned<u64>>,
    /// Partition transforms per lake table, e.g. `orders = ["day(created_at)"]`.
    /// Transforms: a column name (identity), `identity(c)`, `year(c)`, `month(c)`,
    /// `day(c)`, `hour(c)`, `bucket[N](c)`, `truncate[W](c)`.
    #[serde(default)]
    pub partitioning: BTreeMap<String, Vec<Spanned<String>>>,
    /// Table maintenance (`lakeshore maintain`, and in the daemon every `interval`).
    pub maintenance: Option<MaintenanceSection>,
}

/// `[sink.maintenance]` of an Iceberg sink: compaction of the pipeline's tables.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    /// How often the daemon (`lakeshore run`) maintains the pipeline's tables, e.g.
    /// `"10m"`. Default: never (only `lakeshore maintain`).
    pub interval: Option<Spanned<HumanDuration>>,
    /// When a partition is compacted (any one suffices), e.g.
    /// `{ delete_files = 10, deleted_ratio = 0.1, small_files = 10 }` (the defaults).
    pub compact_when: Option<CompactWhenSection>,
    /// Size of the files compaction writes. Default: the sink's `target_file_size`.
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Expire snapshots older than this, e.g. `"5d"`, and delete the files only they
    /// reach. Default: keep every snapshot. A pipeline's newest commit and those after it
    /// are always kept (its recovery reads them).
    pub expire_snapshots_older_than: Option<Spanned<HumanDuration>>,
    /// Snapshots always kept, however old. Default 1.
    pub keep_last_snapshots: Option<Spanned<usize>>,
    /// Delete files under the table's location that no snapshot references (left by
    /// killed or lost commits) once older than this, e.g. `"3d"`; at least `"1h"`.
    /// Default: never.
    pub remove_orphans_older_than: Option<Spanned<HumanDuration>>,
}

/// `compact_when` of `[sink.maintenance]`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CompactWhenSection {
    /// At least this many delete files in the partition. Default 10.
    pub delete_files: Option<usize>,
    /// Deleted rows are at least this fraction of the partition's rows. Default 0.1.
    pub deleted_ratio: Option<Spanned<f64>>,
    /// At least this many data files under 3/4 of the target size. Default 10.
    pub small_files: Option<usize>,
}

/// `[sink.catalog]`
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// `"sql"` (SQLite file or PostgreSQL database).
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// `sqlite://path/catalog.db` (relative paths are resolved against the working
    /// directory) or `postgres://user:${PASSWORD}@host:5432/db`.
    pub uri: EnvUrl,
    /// Warehouse directory (relative to the working directory), `file://` URL or
    /// `s3://bucket/prefix` (S3 settings in `[sink] storage`).
    pub warehouse: EnvString,
    /// Catalog name recorded with every table; readers must use the same. Default
    /// `"lakeshore"`.
    pub name: Option<String>,
}

impl SinkSection for IcebergSection {
    fn plan(
        &self,
        src: &SourceText<'_>,
        _pipeline: &str,
    ) -> Result<(SinkPlan, String), ConfigError> {
        let (sink, warehouse) = iceberg(src, self)?;
        // Checkpoints go next to the warehouse: `<parent>/state`.
        let state = match warehouse.strip_prefix("s3://") {
            Some(rest) => match rest.trim_end_matches('/').rsplit_once('/') {
                Some((parent, _)) => format!("s3://{parent}/state"),
                None => format!("s3://{rest}/state"),
            },
            None => {
                let dir = PathBuf::from(&warehouse);
                let state = dir.parent().unwrap_or(&dir).join("state");
                format!("file://{}", state.display())
            }
        };
        Ok((sink, state))
    }

    fn check_tables(
        &self,
        src: &SourceText<'_>,
        _plan: &Plan,
        tables: &BTreeMap<String, &TableSchema>,
    ) -> Result<(), ConfigError> {
        check_partition_columns(src, tables, &self.partitioning, None, |e| {
            parse_partition_expr(e).ok().map(|p| p.column)
        })?;
        if self.mode.as_ref().map(|m| *m.get_ref()) == Some(WriteMode::Upsert) {
            for (target, t) in tables {
                if t.key.is_empty() {
                    return Err(src.error(
                        self.mode.as_ref().map(|m| m.span()),
                        format!("mode = \"upsert\" needs a primary key, and table `{target}` has none; use mode = \"append\""),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn iceberg(src: &SourceText<'_>, s: &IcebergSection) -> Result<(SinkPlan, String), ConfigError> {
    let cat = &s.catalog;
    if cat.kind.get_ref() != "sql" {
        return Err(src.error(
            Some(cat.kind.span()),
            format!(
                "unknown catalog type \"{}\"; this build supports \"sql\" (SQLite or PostgreSQL)",
                cat.kind.get_ref()
            ),
        ));
    }
    let uri = &cat.uri.0;
    let uri = if let Some(path) = uri.strip_prefix("sqlite://") {
        let (path, query) = path
            .split_once('?')
            .map(|(p, q)| (p, Some(q)))
            .unwrap_or((path, None));
        let abs = absolute(path);
        match query {
            Some(q) => format!("sqlite://{}?{q}", abs.display()),
            None => format!("sqlite://{}", abs.display()),
        }
    } else if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        uri.clone()
    } else {
        return Err(src.error(
            None,
            "[sink.catalog] uri must start with sqlite:// (e.g. \"sqlite://lake/catalog.db\") or postgres://",
        ));
    };
    let warehouse_text = cat
        .warehouse
        .0
        .strip_prefix("file://")
        .unwrap_or(&cat.warehouse.0);
    let warehouse = if warehouse_text.starts_with("s3://") {
        warehouse_text.trim_end_matches('/').to_string()
    } else if warehouse_text.contains("://") {
        return Err(src.error(
            None,
            "[sink.catalog] warehouse must be a local directory, a file:// or an s3:// URL",
        ));
    } else {
        absolute(warehouse_text).display().to_string()
    };
    let storage = storage_options(src, &s.storage, None)?;
    let namespace = s.namespace.get_ref();
    if namespace.is_empty() || namespace.split('.').any(|p| p.is_empty()) {
        return Err(src.error(
            Some(s.namespace.span()),
            "namespace must be a non-empty name such as \"shop\"",
        ));
    }
    let (target_file_size, row_group_bytes) =
        file_sizes(src, &s.target_file_size, &s.row_group_size)?;
    let mut partitioning = BTreeMap::new();
    for (table, exprs) in &s.partitioning {
        let mut list = Vec::new();
        for e in exprs {
            parse_partition_expr(e.get_ref()).map_err(|m| src.error(Some(e.span()), m))?;
            list.push(e.get_ref().clone());
        }
        partitioning.insert(table.clone(), list);
    }
    let options = IcebergOptions {
        catalog: CatalogConfig {
            name: cat.name.clone().unwrap_or_else(|| "lakeshore".into()),
            uri,
            warehouse: warehouse.clone(),
            storage,
        },
        namespace: namespace.clone(),
        target_file_size,
        max_open_files: max_open_files(src, &s.max_open_files)?,
        codec: s.compression.unwrap_or_default(),
        row_group_bytes,
        maintenance: maintenance(src, s.maintenance.as_ref(), target_file_size)?,
        mode: s.mode.as_ref().map(|m| *m.get_ref()),
    };
    Ok((
        Arc::new(Iceberg {
            options,
            partitioning,
        }),
        warehouse,
    ))
}

/// `[sink.maintenance]`, with its defaults.
fn maintenance(
    src: &SourceText<'_>,
    m: Option<&MaintenanceSection>,
    sink_file_size: u64,
) -> Result<lakeshore_iceberg::MaintenanceOptions, ConfigError> {
    let defaults = lakeshore_iceberg::compact::CompactWhen::default();
    let Some(m) = m else {
        return Ok(lakeshore_iceberg::MaintenanceOptions {
            target_file_size: sink_file_size,
            ..Default::default()
        });
    };
    let when = m.compact_when.as_ref();
    let ratio = when.and_then(|w| w.deleted_ratio.as_ref());
    if let Some(r) = ratio
        && !(0.0..=1.0).contains(r.get_ref())
    {
        return Err(src.error(
            Some(r.span()),
            "deleted_ratio is a fraction of the rows, between 0.0 and 1.0 (e.g. 0.1)",
        ));
    }
    let (target_file_size, _) = file_sizes(src, &m.target_file_size, &None)?;
    if let Some(i) = &m.interval
        && i.get_ref().0 < std::time::Duration::from_secs(1)
    {
        return Err(src.error(
            Some(i.span()),
            "interval must be at least \"1s\" (e.g. \"10m\")",
        ));
    }
    Ok(lakeshore_iceberg::MaintenanceOptions {
        compact_when: lakeshore_iceberg::compact::CompactWhen {
            delete_files: when
                .and_then(|w| w.delete_files)
                .unwrap_or(defaults.delete_files),
            deleted_ratio: ratio.map_or(defaults.deleted_ratio, |r| *r.get_ref()),
            small_files: when
                .and_then(|w| w.small_files)
                .unwrap_or(defaults.small_files),
        },
        target_file_size: if m.target_file_size.is_some() {
            target_file_size
        } else {
            sink_file_size
        },
        interval: m.interval.as_ref().map(|i| i.get_ref().0),
        expire_older_than: m
            .expire_snapshots_older_than
            .as_ref()
            .map(|d| d.get_ref().0),
        keep_last: keep_last(src, m)?,
        remove_orphans_older_than: orphan_age(src, m)?,
    })
}

fn orphan_age(
    src: &SourceText<'_>,
    m: &MaintenanceSection,
) -> Result<Option<std::time::Duration>, ConfigError> {
    match &m.remove_orphans_older_than {
        Some(d) if d.get_ref().0 < std::time::Duration::from_secs(3600) => Err(src.error(
            Some(d.span()),
            "remove_orphans_older_than must be at least \"1h\" (e.g. \"3d\"): a checkpoint's \
             files exist before its commit references them",
        )),
        Some(d) => Ok(Some(d.get_ref().0)),
        None => Ok(None),
    }
}

fn keep_last(src: &SourceText<'_>, m: &MaintenanceSection) -> Result<usize, ConfigError> {
    match &m.keep_last_snapshots {
        Some(k) if *k.get_ref() == 0 => Err(src.error(
            Some(k.span()),
            "keep_last_snapshots must be at least 1 (the current snapshot stays)",
        )),
        Some(k) => Ok(*k.get_ref()),
        None => Ok(1),
    }
}

/// An Iceberg sink's validated options.
#[derive(Debug, Clone)]
pub struct Iceberg {
    /// Sink options.
    pub options: IcebergOptions,
    /// Partition expressions per lake table.
    pub partitioning: BTreeMap<String, Vec<String>>,
}

#[async_trait::async_trait]
impl SinkConnector for Iceberg {
    async fn open(&self, _commit_as: &str) -> Result<Arc<dyn Sink>> {
        let catalog = &self.options.catalog;
        if let Some(path) = catalog.uri.strip_prefix("sqlite://") {
            let file = std::path::Path::new(path.split('?').next().unwrap_or(path));
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::config(format!(
                        "cannot create {}; check [sink.catalog] uri",
                        dir.display()
                    ))
                    .with_source(e)
                })?;
            }
        }
        if !catalog.warehouse.starts_with("s3://") {
            std::fs::create_dir_all(&catalog.warehouse).map_err(|e| {
                Error::config(format!(
                    "cannot create the warehouse {}; check [sink.catalog] warehouse",
                    catalog.warehouse
                ))
                .with_source(e)
            })?;
        }
        Ok(Arc::new(IcebergSink::connect(self.options.clone()).await?))
    }

    fn partitioning(&self) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        (self.partitioning.clone(), Vec::new())
    }

    fn storage(&self) -> StorageOptions {
        self.options.catalog.storage.clone()
    }

    #[cfg(feature = "bench")]
    fn parquet(&self) -> (Codec, usize) {
        (self.options.codec, self.options.row_group_bytes)
    }

    fn maintenance_interval(&self) -> Option<Duration> {
        self.options.maintenance.interval
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
