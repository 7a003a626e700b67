//! `[sink] type = "hive"`: Hive-style partition directories of Parquet files.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use lakeshore_api::files::Codec;
use lakeshore_api::{Result, Sink, StorageOptions, TableSchema};
use lakeshore_hive::{HiveOptions, HiveSink};
use serde::Deserialize;

use super::{
    SinkConnector, SinkPlan, SinkSection, check_partition_columns, file_sizes, max_open_files,
    storage_options,
};
use crate::config::units::{ByteSize, EnvString, HumanDuration, Spanned, secret_env_names};
use crate::config::{ConfigError, Plan, SourceText, absolute, object_store_url};

/// How changes land in a Hive table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HiveMode {
    /// The rows after each change.
    Append,
    /// Every change as a row.
    Changelog,
}

/// `[sink]` with `type = "hive"`: Hive-style `key=value/` directories of Parquet files,
/// committed exactly-once.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HiveSection {
    /// `"hive"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Root of the tables: a directory (relative to the working directory), a `file://`
    /// URL, `s3://bucket/prefix`, `gs://bucket/prefix` (Google Cloud Storage) or
    /// `az://container/prefix` / `abfss://container@account.dfs.core.windows.net/prefix`
    /// (Azure Blob Storage, ADLS Gen2). Table `t` is the directory `<path>/t/`.
    pub path: Spanned<EnvString>,
    /// Object-store settings, named as `object_store` names them. S3: `{ endpoint =
    /// "http://127.0.0.1:9000", region = "us-east-1", access_key_id =
    /// "${AWS_ACCESS_KEY_ID}", secret_access_key = "${AWS_SECRET_ACCESS_KEY}", allow_http
    /// = "true" }`; GCS: `google_service_account` (a key file) or
    /// `google_service_account_key` (its JSON); Azure: `azure_storage_account_name` with
    /// `azure_storage_account_key`, `azure_storage_sas_key` or `azure_client_id` /
    /// `azure_client_secret` / `azure_tenant_id`. Keys left out are read from the
    /// `AWS_*`, `GOOGLE_*` and `AZURE_*` environment variables. Values are never logged.
    #[serde(default)]
    pub storage: BTreeMap<String, EnvString>,
    /// `"append"` (the rows as they are after each change; deletes are not written) or
    /// `"changelog"` (every change appended as a row with `_op` and `_seq`, deletes and
    /// truncations too; docs/transforms.md). Default `"append"`.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub mode: Option<HiveMode>,
    /// Changelog mode: before each update's row, a row with `_op = "update_before"` and
    /// the values the row had (PostgreSQL tables need `REPLICA IDENTITY FULL`). Default
    /// `false`.
    pub before_images: Option<Spanned<bool>>,
    /// Partition directories of every table, outermost first, e.g. `["dt=date(ts)",
    /// "hour=hour(ts)", "region"]`. `name=date(c)` (`YYYY-MM-DD`), `name=hour(c)` (`HH`),
    /// `name=month(c)` (`YYYY-MM`) and `name=year(c)` (`YYYY`) take a timestamp or date
    /// column, which stays in the files; a plain column (or `name=column`) is written into
    /// the path and left out of the files, as Hive does. Default: no partitions.
    #[serde(default)]
    pub partition_by: Vec<Spanned<String>>,
    /// Lists that replace `partition_by` for single tables, e.g. `events_dead_letters =
    /// []`.
    #[serde(default)]
    pub partitioning: BTreeMap<String, Vec<Spanned<String>>>,
    /// Roll files at this size, e.g. `"128MiB"` (the default).
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Also roll a file once it is this old, e.g. `"5min"`. Files always close at a
    /// checkpoint. Default: only size and checkpoints roll files.
    pub rollover_interval: Option<Spanned<HumanDuration>>,
    /// Parquet codec: `"zstd"`, `"zstd(N)"`, `"snappy"` or `"none"`. Default `"zstd(1)"`.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub compression: Option<Codec>,
    /// Close a Parquet row group at this encoded size, e.g. `"4MiB"` (the default); each
    /// open file buffers about this much.
    pub row_group_size: Option<Spanned<ByteSize>>,
    /// At most this many files of one table are open at once, e.g. `32`. Each open file
    /// holds its row group and its columns' encoders. From 16 open files (or this many, if
    /// lower) on, opening another closes the least recently written one; the limit doubles
    /// (up to this, for the rest of the run) when a partition closed that way is written
    /// again in the same checkpoint. Default `128`.
    pub max_open_files: Option<Spanned<u64>>,
    /// A partition whose directories are all time functions (`dt=date(ts)`,
    /// `hour=hour(ts)`) is committed (`_SUCCESS` written, the command run) at the first
    /// checkpoint after the source's watermark passes its end plus this delay, e.g.
    /// `"10min"`. Default `"0s"`. Needs a watermark (`[source] watermark`).
    pub commit_delay: Option<Spanned<HumanDuration>>,
    /// Shell command run once per committed partition (after its `_SUCCESS`), e.g. to
    /// add it to a metastore: `'hive -e "MSCK REPAIR TABLE $LAKESHORE_TABLE"'`. It sees
    /// `LAKESHORE_TABLE`, `LAKESHORE_PARTITION` (`dt=2026-11-27/hour=13`) and
    /// `LAKESHORE_PARTITION_URL`, and not the environment variables lakeshore's
    /// configuration takes secrets from (`${NAME}` references, `LAKESHORE_API_TOKEN`). A failure (or 5 minutes without finishing) is retried
    /// with the commit; after a crash it may run again, so it should be idempotent.
    pub partition_commit_command: Option<String>,
}

impl SinkSection for HiveSection {
    fn mode(&self) -> lakeshore_transform::Mode {
        match self.mode {
            Some(HiveMode::Changelog) => lakeshore_transform::Mode::Changelog,
            _ => lakeshore_transform::Mode::Mirror,
        }
    }

    fn before_images(&self) -> bool {
        self.before_images.as_ref().is_some_and(|b| *b.get_ref())
    }

    fn plan(
        &self,
        src: &SourceText<'_>,
        pipeline: &str,
    ) -> Result<(SinkPlan, String), ConfigError> {
        if let Some(before) = &self.before_images
            && *before.get_ref()
            && self.mode != Some(HiveMode::Changelog)
        {
            return Err(src.error(
                Some(before.span()),
                "before_images adds rows to a changelog; set mode = \"changelog\", or leave \
                     before_images out",
            ));
        }
        let sink = hive(src, self, pipeline)?;
        let state = format!(
            "{}/_lakeshore/state",
            sink.options.url.trim_end_matches('/')
        );
        Ok((Arc::new(sink), state))
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

fn hive(src: &SourceText<'_>, s: &HiveSection, pipeline: &str) -> Result<Hive, ConfigError> {
    let path = &s.path.get_ref().0;
    let url = match object_store_url(path) {
        Ok(Some(url)) => url,
        Ok(None) => {
            let dir = absolute(path.strip_prefix("file://").unwrap_or(path));
            format!("file://{}", dir.display())
        }
        Err(m) => return Err(src.error(Some(s.path.span()), format!("path {m}"))),
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
    let options = HiveOptions {
        url,
        storage: lakeshore_hive::StorageOptions(storage),
        pipeline: pipeline.to_string(),
        codec: s.compression.unwrap_or_default(),
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
        command_hides_env: secret_env_names(),
    };
    Ok(Hive {
        options,
        partitioning,
        default_partitioning,
    })
}
/// A Hive sink's validated options.
#[derive(Debug, Clone)]
pub struct Hive {
    /// Sink options.
    pub options: HiveOptions,
    /// Partition expressions of single tables.
    pub partitioning: BTreeMap<String, Vec<String>>,
    /// Partition expressions of every other table.
    pub default_partitioning: Vec<String>,
}

#[async_trait::async_trait]
impl SinkConnector for Hive {
    async fn open(&self, commit_as: &str) -> Result<Arc<dyn Sink>> {
        let mut options = self.options.clone();
        options.pipeline = commit_as.to_string();
        Ok(Arc::new(HiveSink::connect(options).await?))
    }

    async fn check(&self) -> Result<Vec<String>> {
        lakeshore_hive::check(&self.options).await
    }

    fn partitioning(&self) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        (self.partitioning.clone(), self.default_partitioning.clone())
    }

    fn storage(&self) -> StorageOptions {
        self.options.storage.clone()
    }

    #[cfg(feature = "bench")]
    fn parquet(&self) -> (Codec, usize) {
        (self.options.codec, self.options.row_group_bytes)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
