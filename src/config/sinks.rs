//! `[sink]` sections → validated sink plans: Iceberg and Hive options, partition
//! expressions, and the checks that need the source's tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lakeshore_api::TableSchema;
use lakeshore_iceberg::schema::parse_partition_expr;
use lakeshore_iceberg::{CatalogConfig, Codec, IcebergOptions, WriteMode};
use toml::Spanned;

use super::plan::{Plan, SinkPlan, absolute};
use super::raw::{self, SinkMode};
use super::units::EnvString;
use super::{ConfigError, SourceText};

/// A `[sink]` section type.
pub(super) trait SinkSection {
    /// The validated sink and where checkpoint records go unless `[pipeline] state` says.
    fn plan(&self, src: &SourceText<'_>, pipeline: &str)
    -> Result<(SinkPlan, String), ConfigError>;

    /// Checks that need the source's tables (when they are known without connecting).
    fn check_tables(
        &self,
        src: &SourceText<'_>,
        plan: &Plan,
        tables: &BTreeMap<String, &TableSchema>,
    ) -> Result<(), ConfigError>;
}

impl SinkSection for raw::IcebergSection {
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
        plan: &Plan,
        tables: &BTreeMap<String, &TableSchema>,
    ) -> Result<(), ConfigError> {
        check_partition_columns(src, tables, &self.partitioning, None, |e| {
            parse_partition_expr(e).ok().map(|p| p.column)
        })?;
        let SinkPlan::Iceberg { options, .. } = &plan.sink else {
            return Ok(());
        };
        if options.mode == Some(WriteMode::Upsert) {
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

impl SinkSection for raw::HiveSection {
    fn plan(
        &self,
        src: &SourceText<'_>,
        pipeline: &str,
    ) -> Result<(SinkPlan, String), ConfigError> {
        let sink = hive(src, self, pipeline)?;
        let SinkPlan::Hive { options, .. } = &sink else {
            unreachable!("hive() makes a Hive plan");
        };
        let state = format!("{}/_lakeshore/state", options.url.trim_end_matches('/'));
        Ok((sink, state))
    }

    fn check_tables(
        &self,
        src: &SourceText<'_>,
        _plan: &Plan,
        tables: &BTreeMap<String, &TableSchema>,
    ) -> Result<(), ConfigError> {
        let column_of = |e: &str| {
            lakeshore_hive::partition::parse_expr(e)
                .ok()
                .map(|p| p.column)
        };
        check_partition_columns(src, tables, &self.partitioning, None, column_of)?;
        // The default list applies to every table without its own.
        let defaults: BTreeMap<String, Vec<Spanned<String>>> = tables
            .keys()
            .filter(|t| !self.partitioning.contains_key(*t))
            .map(|t| (t.clone(), self.partition_by.clone()))
            .collect();
        check_partition_columns(src, tables, &defaults, Some("partition_by"), column_of)
    }
}

fn codec(src: &SourceText<'_>, c: &Option<Spanned<String>>) -> Result<Codec, ConfigError> {
    let Some(c) = c else {
        return Ok(Codec::Zstd(1));
    };
    let text = c.get_ref().trim();
    let bad = || {
        src.error(
            Some(c.span()),
            format!("unknown compression \"{text}\"; write \"zstd\", \"zstd(N)\" with N in 1..=22, \"snappy\" or \"none\""),
        )
    };
    match text {
        "zstd" => Ok(Codec::Zstd(1)),
        "snappy" => Ok(Codec::Snappy),
        "none" | "uncompressed" => Ok(Codec::Uncompressed),
        t => {
            let level = t
                .strip_prefix("zstd(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| (1..=22).contains(n))
                .ok_or_else(bad)?;
            Ok(Codec::Zstd(level))
        }
    }
}

/// `max_open_files`, with its default and lower bound.
fn max_open_files(
    src: &SourceText<'_>,
    value: &Option<Spanned<u64>>,
) -> Result<usize, ConfigError> {
    match value {
        Some(v) if *v.get_ref() == 0 => Err(src.error(
            Some(v.span()),
            "max_open_files must be at least 1, e.g. 128 (the default)",
        )),
        Some(v) => Ok(*v.get_ref() as usize),
        None => Ok(128),
    }
}

/// `target_file_size` and `row_group_size`, with their defaults and lower bounds.
fn file_sizes(
    src: &SourceText<'_>,
    target_file_size: &Option<Spanned<super::units::ByteSize>>,
    row_group_size: &Option<Spanned<super::units::ByteSize>>,
) -> Result<(u64, usize), ConfigError> {
    let target = match target_file_size {
        Some(t) if t.get_ref().0 < 1 << 20 => {
            return Err(src.error(Some(t.span()), "target_file_size must be at least \"1MiB\""));
        }
        Some(t) => t.get_ref().0,
        None => 128 << 20,
    };
    let row_group = match row_group_size {
        Some(r) if r.get_ref().0 < 64 << 10 => {
            return Err(src.error(Some(r.span()), "row_group_size must be at least \"64KiB\""));
        }
        Some(r) => r.get_ref().0 as usize,
        None => 4 << 20,
    };
    Ok((target, row_group))
}

fn hive(
    src: &SourceText<'_>,
    s: &raw::HiveSection,
    pipeline: &str,
) -> Result<SinkPlan, ConfigError> {
    let path = &s.path.get_ref().0;
    let url = if path.starts_with("s3://") || path.starts_with("s3a://") {
        let rest = path.split_once("://").map(|(_, r)| r).unwrap_or("");
        if rest.split('/').next().unwrap_or("").is_empty() {
            return Err(src.error(
                Some(s.path.span()),
                "path needs a bucket: write \"s3://bucket/prefix\"",
            ));
        }
        format!("s3://{rest}")
    } else if path.contains("://") && !path.starts_with("file://") {
        return Err(src.error(
            Some(s.path.span()),
            format!(
                "path {path}: this build writes Hive tables to a directory, file:// or s3:// URL"
            ),
        ));
    } else {
        let dir = absolute(path.strip_prefix("file://").unwrap_or(path));
        format!("file://{}", dir.display())
    };
    let storage = storage_options(src, &s.storage, Some(s.path.span()))?.0;
    let parse_list = |list: &[Spanned<String>]| -> Result<Vec<String>, ConfigError> {
        list.iter()
            .map(|e| {
                lakeshore_hive::partition::parse_expr(e.get_ref())
                    .map(|_| e.get_ref().clone())
                    .map_err(|m| src.error(Some(e.span()), m))
            })
            .collect()
    };
    let default_partitioning = parse_list(&s.partition_by)?;
    let mut partitioning = BTreeMap::new();
    for (table, exprs) in &s.partitioning {
        partitioning.insert(table.clone(), parse_list(exprs)?);
    }
    let (target_file_size, row_group_bytes) =
        file_sizes(src, &s.target_file_size, &s.row_group_size)?;
    let options = lakeshore_hive::HiveOptions {
        url,
        storage: lakeshore_hive::StorageOptions(storage),
        pipeline: pipeline.to_string(),
        codec: codec(src, &s.compression)?,
        row_group_bytes,
        target_file_size,
        max_open_files: max_open_files(src, &s.max_open_files)?,
        rollover: s.rollover_interval.as_ref().map(|d| d.get_ref().0),
        commit_delay: s
            .commit_delay
            .as_ref()
            .map(|d| d.get_ref().0)
            .unwrap_or_default(),
        partition_commit_command: s.partition_commit_command.clone(),
        command_hides_env: super::units::secret_env_names(),
    };
    Ok(SinkPlan::Hive {
        options,
        partitioning,
        default_partitioning,
    })
}

fn iceberg(
    src: &SourceText<'_>,
    s: &raw::IcebergSection,
) -> Result<(SinkPlan, String), ConfigError> {
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
        codec: codec(src, &s.compression)?,
        row_group_bytes,
        maintenance: maintenance(src, s.maintenance.as_ref(), target_file_size)?,
        mode: s.mode.as_ref().map(|m| match m.get_ref() {
            SinkMode::Append => WriteMode::Append,
            SinkMode::Upsert => WriteMode::Upsert,
        }),
    };
    Ok((
        SinkPlan::Iceberg {
            options,
            partitioning,
        },
        warehouse,
    ))
}

/// `[sink.maintenance]`, with its defaults.
fn maintenance(
    src: &SourceText<'_>,
    m: Option<&raw::MaintenanceSection>,
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
    m: &raw::MaintenanceSection,
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

fn keep_last(src: &SourceText<'_>, m: &raw::MaintenanceSection) -> Result<usize, ConfigError> {
    match &m.keep_last_snapshots {
        Some(k) if *k.get_ref() == 0 => Err(src.error(
            Some(k.span()),
            "keep_last_snapshots must be at least 1 (the current snapshot stays)",
        )),
        Some(k) => Ok(*k.get_ref()),
        None => Ok(1),
    }
}

/// `[sink] storage`: S3 settings, every key one object_store knows.
fn storage_options(
    src: &SourceText<'_>,
    storage: &BTreeMap<String, EnvString>,
    span: Option<std::ops::Range<usize>>,
) -> Result<lakeshore_api::StorageOptions, ConfigError> {
    let storage: BTreeMap<String, String> = storage
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    if let Some(k) = storage.keys().find(|k| {
        k.to_ascii_lowercase()
            .parse::<object_store::aws::AmazonS3ConfigKey>()
            .is_err()
    }) {
        return Err(src.error(
            span,
            format!("[sink] storage key `{k}` is unknown; use endpoint, region, access_key_id, secret_access_key, session_token, allow_http or another object_store S3 setting"),
        ));
    }
    // Storage reached without TLS, or without checking its certificate: said, not refused
    // (a test server or a private endpoint may need it).
    for (key, what) in [
        (
            "allow_http",
            "over plain HTTP: keys and data cross the network readable",
        ),
        (
            "allow_invalid_certificates",
            "without checking its certificate: anyone in the path could pose as it",
        ),
    ] {
        if storage
            .iter()
            .any(|(k, v)| k.to_ascii_lowercase().ends_with(key) && v.eq_ignore_ascii_case("true"))
        {
            tracing::warn!(file = %src.file.display(), setting = key, "[sink] storage is reached {what}");
        }
    }
    Ok(lakeshore_api::StorageOptions(storage))
}

/// Every table named in `lists` exists and has the columns its expressions use.
/// `default_key` names the key the lists came from when they are not per table.
fn check_partition_columns(
    src: &SourceText<'_>,
    tables: &BTreeMap<String, &TableSchema>,
    lists: &BTreeMap<String, Vec<Spanned<String>>>,
    default_key: Option<&str>,
    column_of: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (table, exprs) in lists {
        let Some(schema) = tables.get(table) else {
            let known: Vec<&str> = tables.keys().map(String::as_str).collect();
            return Err(src.error(
                exprs.first().map(|e| e.span()),
                format!("[sink.partitioning] names table `{table}`, which the source does not produce (tables: {})", known.join(", ")),
            ));
        };
        for e in exprs {
            let Some(column) = column_of(e.get_ref()) else {
                continue;
            };
            if schema.schema.field_with_name(&column).is_err() {
                let cols: Vec<&str> = schema
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                let hint = match default_key {
                    Some(key) => format!(
                        "; give it its own list under [sink.partitioning] (e.g. {table} = []) instead of {key}"
                    ),
                    None => String::new(),
                };
                return Err(src.error(
                    Some(e.span()),
                    format!(
                        "table `{table}` has no column `{column}` (columns: {}){hint}",
                        cols.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}
