//! Sinks by `type`. Each module holds its `[sink]` section (what the user writes; its
//! doc comments are the reference in `docs/config.md`), the validation of that section
//! into the connector's options, and what the binary asks of the connector at run time
//! ([`SinkConnector`]). [`SINKS`] maps each `type` to its module: a new sink is a module
//! here, a line there, and its own crate.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::{Result, Sink, StorageOptions, TableSchema};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::units::{ByteSize, EnvString, Spanned};
use crate::config::{ConfigError, Plan, SourceText, toml_error};

pub mod hive;
pub mod iceberg;

/// A `[sink]` section, read: its validation into a runnable sink.
pub trait SinkSection {
    /// The validated sink and where checkpoint records go unless `[pipeline] state` says.
    fn plan(&self, src: &SourceText<'_>, pipeline: &str)
    -> Result<(SinkPlan, String), ConfigError>;

    /// How the tables' changes land (`mode = "changelog"`, `soft_delete`): shaped by
    /// the pipeline's transforms before the sink sees them.
    fn mode(&self) -> lakeshore_transform::Mode {
        lakeshore_transform::Mode::Mirror
    }

    /// A changelog's `update_before` rows (`before_images = true`).
    fn before_images(&self) -> bool {
        false
    }

    /// Checks that need the source's tables (when they are known without connecting).
    fn check_tables(
        &self,
        src: &SourceText<'_>,
        plan: &Plan,
        tables: &BTreeMap<String, &TableSchema>,
    ) -> Result<(), ConfigError>;
}

/// A validated sink: what the binary asks of it.
#[async_trait::async_trait]
pub trait SinkConnector: Debug + Send + Sync + 'static {
    /// Connect, committing as `commit_as` (see `PipelineSpec::commit_as`).
    async fn open(&self, commit_as: &str) -> Result<Arc<dyn Sink>>;

    /// `validate --connect`: check the storage without changing anything.
    async fn check(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Partition expressions per lake table, and those of tables not listed.
    fn partitioning(&self) -> (BTreeMap<String, Vec<String>>, Vec<String>);

    /// Settings for the state store when it shares the sink's storage.
    fn storage(&self) -> StorageOptions;

    /// Parquet codec and row-group size of the sink's files (the raw-writer benchmark).
    #[cfg(feature = "bench")]
    fn parquet(&self) -> (lakeshore_api::files::Codec, usize);

    /// How often the daemon maintains the tables (`[sink.maintenance] interval`).
    fn maintenance_interval(&self) -> Option<Duration> {
        None
    }

    /// The daemon compacts the tables on its own (`[sink.maintenance] auto`).
    fn auto_maintenance(&self) -> bool {
        false
    }

    /// For commands that work on one sink only (`maintain`).
    fn as_any(&self) -> &dyn Any;
}

/// A validated sink, shared by the runs of its pipeline.
pub type SinkPlan = Arc<dyn SinkConnector>;

/// Reads the `[sink]` section of a pipeline file as one type.
type ReadSink = fn(&SourceText<'_>) -> Result<Box<dyn SinkSection>, ConfigError>;

/// Every sink `type`, and how its section is read.
pub const SINKS: &[(&str, ReadSink)] = &[
    ("iceberg", read::<iceberg::IcebergSection>),
    ("hive", read::<hive::HiveSection>),
];

/// The `type`s of [`SINKS`], quoted, for messages.
pub fn type_list() -> String {
    let names: Vec<String> = SINKS.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    names.join(", ")
}

fn read<K: SinkSection + DeserializeOwned + 'static>(
    src: &SourceText<'_>,
) -> Result<Box<dyn SinkSection>, ConfigError> {
    #[derive(Deserialize)]
    struct Part<K> {
        sink: K,
    }
    let part: Part<K> = toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
    Ok(Box::new(part.sink))
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
    target_file_size: &Option<Spanned<ByteSize>>,
    row_group_size: &Option<Spanned<ByteSize>>,
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

/// `[sink] storage`: object-store settings, every key one `object_store` knows for S3,
/// Google Cloud Storage or Azure.
fn storage_options(
    src: &SourceText<'_>,
    storage: &BTreeMap<String, EnvString>,
    span: Option<std::ops::Range<usize>>,
) -> Result<StorageOptions, ConfigError> {
    let storage: BTreeMap<String, String> = storage
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    if let Some(k) = storage.keys().find(|k| {
        let k = k.to_ascii_lowercase();
        k.parse::<object_store::aws::AmazonS3ConfigKey>().is_err()
            && k.parse::<object_store::gcp::GoogleConfigKey>().is_err()
            && k.parse::<object_store::azure::AzureConfigKey>().is_err()
    }) {
        return Err(src.error(
            span,
            format!("[sink] storage key `{k}` is unknown; use an object_store setting: for S3 endpoint, region, access_key_id, secret_access_key, session_token; for Google Cloud Storage google_service_account, google_service_account_key; for Azure azure_storage_account_name, azure_storage_account_key, azure_storage_sas_key; allow_http for any"),
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
    Ok(StorageOptions(storage))
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
