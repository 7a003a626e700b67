//! `[sink] type = "iceberg"`: Iceberg tables through an SQL or an Iceberg REST catalog.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::files::Codec;
use lakeshore_api::{Error, Result, Sink, StorageOptions, TableSchema};
use lakeshore_iceberg::parse_partition_expr;
use lakeshore_iceberg::{
    CatalogConfig, IcebergOptions, IcebergSink, RestAuth, RestConfig, SigV4, WriteMode,
};
use serde::Deserialize;

use super::{
    SinkConnector, SinkPlan, SinkSection, check_partition_columns, file_sizes, max_open_files,
    storage_options,
};
use crate::config::units::{ByteSize, EnvString, EnvUrl, HumanDuration, Spanned};
use crate::config::{ConfigError, Plan, SourceText, absolute, object_store_url};

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
    /// (`warehouse` may be an `s3://`, `gs://`, `az://` or `abfss://` URL, with `storage`).
    pub catalog: CatalogSection,
    /// Namespace of the tables (dots separate levels).
    pub namespace: Spanned<String>,
    /// Object-store settings of the warehouse, as for the Hive sink (S3: `{ endpoint =
    /// "...", region = "...", access_key_id = "${AWS_ACCESS_KEY_ID}", secret_access_key =
    /// "${AWS_SECRET_ACCESS_KEY}" }`; GCS: `google_service_account`; Azure:
    /// `azure_storage_account_name`, `azure_storage_account_key`); keys left out come
    /// from the `AWS_*`, `GOOGLE_*` and `AZURE_*` environment. The state store uses them
    /// too. Values are never logged.
    #[serde(default)]
    pub storage: BTreeMap<String, EnvString>,
    /// `"append"` (data files only), `"upsert"` (one row per primary key; updates and
    /// deletes become position deletes) or `"changelog"` (every change appended as a row
    /// with `_op` and `_seq`: the audit table; docs/transforms.md). Default `"upsert"`
    /// for keyed tables.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub mode: Option<Spanned<WriteMode>>,
    /// Upsert mode: a row deleted at the source stays, with `_deleted = true` and
    /// `_deleted_at` (its commit time at the source), instead of being removed. PostgreSQL
    /// tables need `REPLICA IDENTITY FULL` (deletes must carry the row). Default `false`.
    pub soft_delete: Option<Spanned<bool>>,
    /// Changelog mode: before each update's row, a row with `_op = "update_before"` and
    /// the values the row had (PostgreSQL tables need `REPLICA IDENTITY FULL`). Default
    /// `false`: an update is one row, its new values.
    pub before_images: Option<Spanned<bool>>,
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
    /// The daemon (`lakeshore run`) compacts a table on its own once its estimated read
    /// cost reaches `compact_at`, the worst table first, within `time_share`. Default
    /// `true`; `false` leaves maintenance to `interval` and `lakeshore maintain`.
    pub auto: Option<Spanned<bool>>,
    /// Estimated full-scan cost, as a multiple of the same rows written once, at which
    /// the daemon compacts a table (from each commit's file counts: data and delete files,
    /// deleted rows, small files). Default `1.25`; at least `1.05`.
    pub compact_at: Option<Spanned<f64>>,
    /// Share of the wall-clock time the daemon's maintenance may take (over all its
    /// pipelines), so ingestion keeps the rest. Default `0.2`; between `0.01` and `1.0`.
    pub time_share: Option<Spanned<f64>>,
    /// Maintain every table of the pipeline (compaction by `compact_when`, expiry,
    /// orphans) at this interval too, e.g. `"1h"`. Default: only as `auto` decides.
    pub interval: Option<Spanned<HumanDuration>>,
    /// When a partition is compacted (any one suffices), e.g.
    /// `{ delete_files = 10, deleted_ratio = 0.1, small_files = 10 }` (the defaults for
    /// `interval` and `lakeshore maintain`; `auto` compacts a due table's partitions at
    /// 2 delete files, 0.1 or 2 small files unless this is set).
    pub compact_when: Option<CompactWhenSection>,
    /// Size of the files compaction writes. Default: the sink's `target_file_size`.
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Expire snapshots older than this, e.g. `"5d"`, and delete the files only they
    /// reach. Default: none by age. A pipeline's newest commit and those after it are
    /// always kept (its recovery reads them).
    pub expire_snapshots_older_than: Option<Spanned<HumanDuration>>,
    /// Expire snapshots beyond the newest this many (checked when there are a quarter
    /// more), and delete the files only they reach. Default: in `auto` rounds on an SQL
    /// catalog without `expire_snapshots_older_than`, `100`, keeping every snapshot
    /// younger than 10 minutes (every snapshot is in the table's metadata file, which
    /// every reader and commit reads); else none by count.
    pub max_snapshots: Option<Spanned<usize>>,
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
    /// `"sql"` (SQLite file or PostgreSQL database) or `"rest"` (an Iceberg REST catalog:
    /// Polaris, Lakekeeper, Nessie, Unity, Gravitino, Glue, S3 Tables, R2, ...).
    #[serde(rename = "type")]
    #[cfg_attr(test, schemars(with = "String"))]
    pub kind: Spanned<CatalogType>,
    /// SQL: `sqlite://path/catalog.db` (relative paths are resolved against the working
    /// directory) or `postgres://user:${PASSWORD}@host:5432/db`. REST: the catalog's
    /// base URL, before `/v1/`, e.g. `https://catalog.example.com/api/catalog`.
    pub uri: EnvUrl,
    /// SQL (required): warehouse directory (relative to the working directory),
    /// `file://` URL, `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` or `abfss://container@account.dfs.core.windows.net/prefix`
    /// (settings in `[sink] storage`). REST
    /// (optional): the warehouse the catalog serves, by name or location, as its
    /// documentation says (sent to `/v1/config`).
    pub warehouse: Option<EnvString>,
    /// SQL: catalog name recorded with every table; readers must use the same. Default
    /// `"lakeshore"`.
    pub name: Option<String>,
    /// REST: the path prefix after `/v1/`. Default: what the server's `/v1/config`
    /// answers (most servers derive it from `warehouse`).
    pub prefix: Option<Spanned<String>>,
    /// REST: a static bearer token, e.g. `"${CATALOG_TOKEN}"`.
    pub token: Option<Spanned<EnvString>>,
    /// REST: OAuth2 client credentials, `"${CLIENT_ID}:${CLIENT_SECRET}"`; a token is
    /// fetched from `oauth2_server_uri` and fetched again before it expires.
    pub credential: Option<Spanned<EnvString>>,
    /// REST: the OAuth2 token endpoint. Default `<uri>/v1/oauth/tokens`.
    pub oauth2_server_uri: Option<Spanned<EnvUrl>>,
    /// REST: the OAuth2 scope requested with `credential`. Default `"catalog"`
    /// (Polaris wants `"PRINCIPAL_ROLE:ALL"`).
    pub scope: Option<Spanned<String>>,
    /// REST: sign requests with AWS SigV4 (Glue, S3 Tables), e.g.
    /// `{ region = "us-east-1", service = "glue" }`; the keys come from `[sink] storage`
    /// or the `AWS_*` environment.
    pub sigv4: Option<Spanned<SigV4Section>>,
    /// REST: extra headers sent with every request, e.g. `{ "X-Tenant" = "analytics" }`.
    /// Values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, EnvString>,
    /// REST: ask the catalog to vend storage credentials for each table
    /// (`X-Iceberg-Access-Delegation: vended-credentials`) and use them for its files.
    /// Default `false` (the files are reached with `[sink] storage`).
    pub vended_credentials: Option<Spanned<bool>>,
}

/// `type` of `[sink.catalog]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogType {
    /// SQLite or PostgreSQL, the JDBC catalog's tables.
    Sql,
    /// An Iceberg REST catalog.
    Rest,
}

/// `sigv4` of a REST `[sink.catalog]`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SigV4Section {
    /// AWS region, e.g. `"us-east-1"`.
    pub region: String,
    /// Signing name: `"glue"` (the default) or `"s3tables"`.
    pub service: Option<String>,
}

impl SinkSection for IcebergSection {
    fn mode(&self) -> lakeshore_transform::Mode {
        use lakeshore_transform::Mode;
        match (self.mode.as_ref().map(|m| *m.get_ref()), &self.soft_delete) {
            (Some(WriteMode::Changelog), _) => Mode::Changelog,
            (_, Some(soft)) if *soft.get_ref() => Mode::SoftDelete,
            _ => Mode::Mirror,
        }
    }

    fn before_images(&self) -> bool {
        self.before_images.as_ref().is_some_and(|b| *b.get_ref())
    }

    fn plan(
        &self,
        src: &SourceText<'_>,
        _pipeline: &str,
    ) -> Result<(SinkPlan, String), ConfigError> {
        let (sink, warehouse) = iceberg(src, self)?;
        if self.catalog.kind.get_ref() == &CatalogType::Rest {
            return Ok((sink, warehouse));
        }
        // Checkpoints go next to the warehouse: `<parent>/state`.
        let state = match object_store_url(&warehouse) {
            Ok(Some(url)) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("", &url));
                match rest.rsplit_once('/') {
                    Some((parent, _)) => format!("{scheme}://{parent}/state"),
                    None => format!("{scheme}://{rest}/state"),
                }
            }
            _ => {
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
    if let (Some(soft), Some(mode)) = (&s.soft_delete, &s.mode)
        && *soft.get_ref()
        && *mode.get_ref() != WriteMode::Upsert
    {
        return Err(src.error(
            Some(soft.span()),
            "soft_delete marks deleted rows of an upsert table; with mode = \"append\" or \
                 \"changelog\" nothing is deleted. Leave soft_delete out, or set mode = \"upsert\"",
        ));
    }
    if let Some(before) = &s.before_images
        && *before.get_ref()
        && s.mode.as_ref().map(|m| *m.get_ref()) != Some(WriteMode::Changelog)
    {
        return Err(src.error(
            Some(before.span()),
            "before_images adds rows to a changelog; set mode = \"changelog\", or leave \
                 before_images out",
        ));
    }
    let storage = storage_options(src, &s.storage, None)?;
    let (catalog, warehouse) = match s.catalog.kind.get_ref() {
        CatalogType::Sql => sql_catalog(src, &s.catalog, storage)?,
        CatalogType::Rest => rest_catalog(src, &s.catalog, storage)?,
    };
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
    let sql = catalog.rest.is_none();
    let options = IcebergOptions {
        catalog,
        namespace: namespace.clone(),
        target_file_size,
        max_open_files: max_open_files(src, &s.max_open_files)?,
        codec: s.compression.unwrap_or_default(),
        row_group_bytes,
        maintenance: with_default_retention(
            maintenance(src, s.maintenance.as_ref(), target_file_size)?,
            sql,
        ),
        mode: s.mode.as_ref().map(|m| *m.get_ref()),
        read_costs: Default::default(),
    };
    Ok((
        Arc::new(Iceberg {
            options,
            partitioning,
        }),
        warehouse,
    ))
}

/// An SQL `[sink.catalog]`: its config and the absolute warehouse (local path or
/// `s3://` URL).
fn sql_catalog(
    src: &SourceText<'_>,
    cat: &CatalogSection,
    storage: StorageOptions,
) -> Result<(CatalogConfig, String), ConfigError> {
    let rest_only = [
        ("prefix", cat.prefix.as_ref().map(Spanned::span)),
        ("token", cat.token.as_ref().map(Spanned::span)),
        ("credential", cat.credential.as_ref().map(Spanned::span)),
        (
            "oauth2_server_uri",
            cat.oauth2_server_uri.as_ref().map(Spanned::span),
        ),
        ("scope", cat.scope.as_ref().map(Spanned::span)),
        ("sigv4", cat.sigv4.as_ref().map(Spanned::span)),
        (
            "vended_credentials",
            cat.vended_credentials.as_ref().map(Spanned::span),
        ),
        ("headers", (!cat.headers.is_empty()).then_some(0..0)),
    ];
    if let Some((key, span)) = rest_only.into_iter().find_map(|(k, s)| Some((k, s?))) {
        return Err(src.error(
            (!span.is_empty()).then_some(span),
            format!("[sink.catalog] {key} is a setting of REST catalogs; remove it, or set type = \"rest\""),
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
            "[sink.catalog] uri must start with sqlite:// (e.g. \"sqlite://lake/catalog.db\") or postgres://; for an Iceberg REST catalog set type = \"rest\"",
        ));
    };
    let Some(warehouse) = &cat.warehouse else {
        return Err(src.error(
            Some(cat.kind.span()),
            "[sink.catalog] needs a warehouse for type = \"sql\", e.g. warehouse = \"lake/warehouse\"",
        ));
    };
    let warehouse_text = warehouse.0.strip_prefix("file://").unwrap_or(&warehouse.0);
    let warehouse = match object_store_url(warehouse_text) {
        Ok(Some(url)) => url,
        Ok(None) => absolute(warehouse_text).display().to_string(),
        Err(m) => return Err(src.error(None, format!("[sink.catalog] warehouse {m}"))),
    };
    let catalog = CatalogConfig {
        name: cat.name.clone().unwrap_or_else(|| "lakeshore".into()),
        uri,
        warehouse: warehouse.clone(),
        storage,
        rest: None,
    };
    Ok((catalog, warehouse))
}

/// A REST `[sink.catalog]`: its config, and where checkpoint state goes by default
/// (`state/` in the working directory: the catalog's warehouse is not ours to write).
fn rest_catalog(
    src: &SourceText<'_>,
    cat: &CatalogSection,
    storage: StorageOptions,
) -> Result<(CatalogConfig, String), ConfigError> {
    let uri = cat.uri.0.trim_end_matches('/').to_string();
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(src.error(
            Some(cat.kind.span()),
            "[sink.catalog] uri of a REST catalog must be an http:// or https:// URL, e.g. \"https://catalog.example.com/api/catalog\"",
        ));
    }
    let methods = [
        cat.token.as_ref().map(|t| ("token", t.span())),
        cat.credential.as_ref().map(|t| ("credential", t.span())),
        cat.sigv4.as_ref().map(|t| ("sigv4", t.span())),
    ];
    let mut chosen = methods.iter().flatten();
    if let (Some(first), Some(second)) = (chosen.next(), chosen.next()) {
        return Err(src.error(
            Some(second.1.clone()),
            format!(
                "[sink.catalog] sets both {} and {}; a REST catalog authenticates one way: keep one",
                first.0, second.0
            ),
        ));
    }
    for (key, span) in [
        (
            "oauth2_server_uri",
            cat.oauth2_server_uri.as_ref().map(Spanned::span),
        ),
        ("scope", cat.scope.as_ref().map(Spanned::span)),
    ] {
        if let Some(span) = span
            && cat.credential.is_none()
        {
            return Err(src.error(
                Some(span),
                format!("[sink.catalog] {key} goes with credential (OAuth2 client credentials); add credential = \"${{CLIENT_ID}}:${{CLIENT_SECRET}}\" or remove {key}"),
            ));
        }
    }
    let auth = if let Some(t) = &cat.token {
        RestAuth::Token(t.get_ref().0.clone())
    } else if let Some(c) = &cat.credential {
        RestAuth::OAuth2 {
            credential: c.get_ref().0.clone(),
            server_uri: cat
                .oauth2_server_uri
                .as_ref()
                .map(|u| u.get_ref().0.clone()),
            scope: cat.scope.as_ref().map(|s| s.get_ref().clone()),
        }
    } else if let Some(v) = &cat.sigv4 {
        RestAuth::SigV4(SigV4 {
            region: v.get_ref().region.clone(),
            service: v.get_ref().service.clone().unwrap_or_else(|| "glue".into()),
        })
    } else {
        RestAuth::None
    };
    let catalog = CatalogConfig {
        name: cat.name.clone().unwrap_or_else(|| "lakeshore".into()),
        uri,
        warehouse: cat
            .warehouse
            .as_ref()
            .map(|w| w.0.clone())
            .unwrap_or_default(),
        storage,
        rest: Some(RestConfig {
            prefix: cat.prefix.as_ref().map(|p| p.get_ref().clone()),
            auth,
            headers: cat
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            vended_credentials: cat
                .vended_credentials
                .as_ref()
                .is_some_and(|v| *v.get_ref()),
        }),
    };
    Ok((catalog, format!("file://{}", absolute("state").display())))
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
            auto: Some(lakeshore_iceberg::AutoMaintenance::default()),
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
    let compact_when = lakeshore_iceberg::compact::CompactWhen {
        delete_files: when
            .and_then(|w| w.delete_files)
            .unwrap_or(defaults.delete_files),
        deleted_ratio: ratio.map_or(defaults.deleted_ratio, |r| *r.get_ref()),
        small_files: when
            .and_then(|w| w.small_files)
            .unwrap_or(defaults.small_files),
    };
    Ok(lakeshore_iceberg::MaintenanceOptions {
        auto: auto(src, m, when.map(|_| compact_when))?,
        compact_when,
        target_file_size: if m.target_file_size.is_some() {
            target_file_size
        } else {
            sink_file_size
        },
        interval: m.interval.as_ref().map(|i| i.get_ref().0),
        max_snapshots: match &m.max_snapshots {
            Some(n) if *n.get_ref() == 0 => {
                return Err(src.error(
                    Some(n.span()),
                    "max_snapshots must be at least 1 (the current snapshot stays); to keep \
                     more history, raise it or set expire_snapshots_older_than alone",
                ));
            }
            n => n.as_ref().map(|n| *n.get_ref()),
        },
        expire_older_than: m
            .expire_snapshots_older_than
            .as_ref()
            .map(|d| d.get_ref().0),
        keep_last: keep_last(src, m)?,
        remove_orphans_older_than: orphan_age(src, m)?,
    })
}

/// Snapshots kept by auto maintenance on an SQL catalog when nothing else is said.
const DEFAULT_MAX_SNAPSHOTS: usize = 100;

/// `m` with the default retention of auto rounds: on a catalog lakeshore writes the
/// metadata of (`sql`), and no retention set, the newest [`DEFAULT_MAX_SNAPSHOTS`] (and
/// those younger than 10 minutes). A REST catalog keeps its own (some expire snapshots
/// themselves, some refuse it).
fn with_default_retention(
    mut m: lakeshore_iceberg::MaintenanceOptions,
    sql: bool,
) -> lakeshore_iceberg::MaintenanceOptions {
    if let Some(auto) = &mut m.auto
        && sql
        && m.expire_older_than.is_none()
        && m.max_snapshots.is_none()
    {
        auto.max_snapshots = Some(DEFAULT_MAX_SNAPSHOTS);
    }
    m
}

/// `auto`, `compact_at` and `time_share` of `[sink.maintenance]`; `compact_when` when the
/// section sets it.
fn auto(
    src: &SourceText<'_>,
    m: &MaintenanceSection,
    compact_when: Option<lakeshore_iceberg::compact::CompactWhen>,
) -> Result<Option<lakeshore_iceberg::AutoMaintenance>, ConfigError> {
    let defaults = lakeshore_iceberg::AutoMaintenance::default();
    let fraction = |v: &Option<Spanned<f64>>, range: std::ops::RangeInclusive<f64>, msg| match v {
        Some(v) if !range.contains(v.get_ref()) => Err(src.error(Some(v.span()), msg)),
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    };
    let compact_at = fraction(
        &m.compact_at,
        1.05..=1000.0,
        "compact_at is a read-cost multiple of at least 1.05 (e.g. 1.25: a full scan at \
         most a quarter slower than the same rows written once)",
    )?;
    let time_share = fraction(
        &m.time_share,
        0.01..=1.0,
        "time_share is a fraction of the time between 0.01 and 1.0 (e.g. 0.2)",
    )?;
    if m.auto.as_ref().is_some_and(|a| !*a.get_ref()) {
        if let Some(span) = m
            .compact_at
            .as_ref()
            .or(m.time_share.as_ref())
            .map(Spanned::span)
        {
            return Err(src.error(
                Some(span),
                "compact_at and time_share tune auto maintenance, which auto = false \
                 turns off; remove them or the auto line",
            ));
        }
        return Ok(None);
    }
    Ok(Some(lakeshore_iceberg::AutoMaintenance {
        compact_at: compact_at.unwrap_or(defaults.compact_at),
        time_share: time_share.unwrap_or(defaults.time_share),
        compact_when: compact_when.unwrap_or(defaults.compact_when),
        max_snapshots: None,
    }))
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
        if catalog.rest.is_some() {
            return Ok(Arc::new(IcebergSink::connect(self.options.clone()).await?));
        }
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
        if !catalog.warehouse.contains("://") {
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

    fn auto_maintenance(&self) -> bool {
        self.options.maintenance.auto.is_some()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
