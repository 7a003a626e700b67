//! Iceberg sink (`type = "iceberg"`): format-v2 tables on an SQL or REST catalog, written
//! exactly-once through the engine's two-phase protocol.
//!
//! - `schema`: source tables → Iceberg schemas and partition specs;
//! - `writer`: partitioned rolling data files that report each row's position;
//! - `table_writer`: append and upsert writers (upserts as position deletes);
//! - `lookup`: key → (file, position) over the committed table;
//! - `position_delete`: position-delete files;
//! - `upsert`, `spill`: the upsert writer and its key index spilled to disk;
//! - `commit`: one file per commit action (row delta, rewrite, manifest merge, schema)
//!   over a shared snapshot producer, with optimistic concurrency;
//! - `maintain`: compaction (planning as pure code, and the rewrite), equality deletes,
//!   snapshot expiry, orphan files;
//! - `catalog`: the catalog seam (load, create, land a change) over the SQL catalog
//!   (compare-and-swap) and Iceberg REST catalogs (`updateTable`).
//!
//! Public: the sink, its options and `CatalogHandle`, `parse_partition_expr` (config
//! validation), and `commit` and `maintain` (the tests and the equality-delete example
//! drive them directly); the other modules are private.

use std::sync::Arc;

use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::PartitionSpec;
use iceberg::writer::file_writer::location_generator::DefaultLocationGenerator;
use iceberg::{NamespaceIdent, TableCreation, TableIdent};
use lakeshore_api::{
    CommitContext, Error, ErrorKind, LakeCommit, PendingCommit, Result, Sink, TableTarget,
    TableWriter,
};

mod cache;
mod catalog;
pub mod commit;
mod error;
mod lookup;
pub mod maintain;
mod position_delete;
mod schema;
mod spill;
mod table_writer;
mod upsert;
mod writer;

pub use catalog::{CatalogConfig, CatalogHandle, RestAuth, RestConfig, SigV4};
pub use lakeshore_api::files::{Codec, HASHED_DOC, writer_properties};
pub use maintain::{compact, expire, orphans, schedule};
pub use schema::parse_partition_expr;

use crate::commit::CommitOutcome;
use crate::error::ice;
use crate::table_writer::{AppendWriter, OpenTable, TableContext, decode_pending};
use crate::upsert::UpsertWriter;
use crate::writer::FileSettings;

/// How changes land in a table (`mode` in the pipeline file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Data files only.
    Append,
    /// One live row per primary key; updates and deletes as position deletes.
    Upsert,
    /// Every change appended as a row (shaped by the pipeline: `_op`, `_seq`); data
    /// files only, as `Append`.
    Changelog,
}

/// The sink's settings, validated.
#[derive(Debug, Clone)]
pub struct IcebergOptions {
    /// Catalog.
    pub catalog: CatalogConfig,
    /// Namespace of every table (dotted for nested namespaces).
    pub namespace: String,
    /// Append or upsert; `None` = upsert for tables with a primary key, else append.
    pub mode: Option<WriteMode>,
    /// Roll data files at this size in bytes.
    pub target_file_size: u64,
    /// At most this many data files of one table open at once.
    pub max_open_files: usize,
    /// Parquet codec.
    pub codec: Codec,
    /// Close a Parquet row group past this many encoded bytes.
    pub row_group_bytes: usize,
    /// Table maintenance settings (`[sink.maintenance]`).
    pub maintenance: MaintenanceOptions,
    /// Each table's read-cost estimate, kept by the sink's commits (shared by every sink
    /// opened from these options, and read by the daemon's maintenance).
    pub read_costs: Arc<schedule::ReadCosts>,
}

/// What maintenance did to one table.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// Compaction.
    pub compacted: compact::CompactReport,
    /// The manifests were merged into one per content and spec.
    pub manifests_merged: bool,
    /// Snapshot expiry, when configured.
    pub expired: Option<expire::ExpireReport>,
    /// Orphan-file cleanup, when configured.
    pub orphans: Option<orphans::OrphanReport>,
    /// The table's files afterwards.
    pub stats: compact::TableStats,
}

/// `[sink.maintenance]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceOptions {
    /// When a partition is compacted.
    pub compact_when: compact::CompactWhen,
    /// Size of the files compaction writes.
    pub target_file_size: u64,
    /// How often the daemon runs maintenance; `None`: only `lakeshore maintain`.
    pub interval: Option<std::time::Duration>,
    /// Expire snapshots older than this; `None`: by age, none.
    pub expire_older_than: Option<std::time::Duration>,
    /// Expire snapshots beyond the newest this many; `None`: by count, none.
    pub max_snapshots: Option<usize>,
    /// Snapshots of the main branch always kept.
    pub keep_last: usize,
    /// Delete unreferenced files older than this; `None`: never.
    pub remove_orphans_older_than: Option<std::time::Duration>,
    /// The daemon's own compaction, scheduled by read cost; `None`: off.
    pub auto: Option<AutoMaintenance>,
}

/// The daemon's own compaction (`[sink.maintenance] auto`).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoMaintenance {
    /// A table is compacted once its estimated read cost is this many times that of its
    /// rows written once.
    pub compact_at: f64,
    /// Maintenance takes at most this share of the wall-clock time (of the process).
    pub time_share: f64,
    /// What a scheduled compaction does to the partitions it looks at.
    pub compact_when: compact::CompactWhen,
    /// Scheduled rounds keep only the newest this many snapshots (and those younger than
    /// [`AutoMaintenance::MIN_SNAPSHOT_AGE`]) when nothing else is set.
    pub max_snapshots: Option<usize>,
}

impl AutoMaintenance {
    /// Snapshots younger than this stay, whatever their count (a reader that planned on
    /// one has that long to read its files).
    pub const MIN_SNAPSHOT_AGE: std::time::Duration = std::time::Duration::from_secs(600);
}

impl Default for AutoMaintenance {
    fn default() -> Self {
        AutoMaintenance {
            compact_at: 1.25,
            time_share: 0.2,
            // Due tables are compacted: any two small files or delete files are worth it.
            compact_when: compact::CompactWhen {
                delete_files: 2,
                deleted_ratio: 0.1,
                small_files: 2,
            },
            max_snapshots: None,
        }
    }
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        MaintenanceOptions {
            compact_when: compact::CompactWhen::default(),
            target_file_size: 128 << 20,
            interval: None,
            expire_older_than: None,
            max_snapshots: None,
            keep_last: 1,
            remove_orphans_older_than: None,
            auto: None,
        }
    }
}

/// The Iceberg sink.
pub struct IcebergSink {
    catalog: Arc<CatalogHandle>,
    opts: IcebergOptions,
    namespace: NamespaceIdent,
}

/// A namespace part or table name must be one directory of the table's location.
fn check_name(what: &str, full: &str, part: &str) -> Result<()> {
    let bad = part.is_empty()
        || part == "."
        || part == ".."
        || part.contains(['/', '\\'])
        || part.chars().any(char::is_control);
    if bad {
        return Err(Error::config(format!(
            "{what} name {full:?} cannot be a directory of the lake: no empty parts, `/`, \
                 `\\`, `.` or `..`; route the table to another name ([[route]]) or change \
                 [sink] namespace"
        )));
    }
    Ok(())
}

impl IcebergSink {
    /// Open the catalog and create the namespace if it is missing.
    pub async fn connect(opts: IcebergOptions) -> Result<Self> {
        let catalog = Arc::new(CatalogHandle::open(&opts.catalog).await?);
        for part in opts.namespace.split('.') {
            check_name("namespace", &opts.namespace, part)?;
        }
        let namespace = NamespaceIdent::from_strs(opts.namespace.split('.')).map_err(ice)?;
        let cat = &catalog;
        // `a.b` beside a table `b` of namespace `a`: the namespace's tables would live
        // inside that table's location (and its orphan cleanup would see their files).
        if let Some((parent, last)) = opts.namespace.rsplit_once('.') {
            let parent = NamespaceIdent::from_strs(parent.split('.')).map_err(ice)?;
            if cat.namespace_exists(&parent).await?
                && cat
                    .load_if_exists(&TableIdent::new(parent, last.to_string()))
                    .await?
                    .is_some()
            {
                return Err(Error::config(format!(
                    "[sink] namespace {}: a table of that name exists, and its location \
                         would hold this namespace's tables; choose another namespace",
                    opts.namespace
                )));
            }
        }
        cat.ensure_namespace(&namespace).await?;
        Ok(IcebergSink {
            catalog,
            opts,
            namespace,
        })
    }

    async fn load(&self, ident: &TableIdent) -> Result<iceberg::table::Table> {
        self.catalog.load(ident).await
    }

    fn ident(&self, table: &str) -> TableIdent {
        TableIdent::new(self.namespace.clone(), table.to_string())
    }

    /// How this sink writes files of `table`, and the table's Arrow schema (with ids).
    fn file_settings(
        &self,
        table: &iceberg::table::Table,
    ) -> Result<(FileSettings, ArrowSchemaRef)> {
        let md = table.metadata();
        let schema = md.current_schema().clone();
        let spec: Arc<PartitionSpec> = md.default_partition_spec().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(ice)?);
        let hashed = schema
            .as_struct()
            .fields()
            .iter()
            .filter(|f| f.doc.as_deref() == Some(HASHED_DOC))
            .map(|f| f.name.as_str());
        let props = writer_properties(self.opts.codec, self.opts.row_group_bytes, hashed);
        let files = FileSettings {
            schema,
            spec,
            file_io: table.file_io().clone(),
            locations: DefaultLocationGenerator::new(md).map_err(ice)?,
            props,
            target_file_size: self.opts.target_file_size as usize,
            max_open_files: self.opts.max_open_files,
            table: table.identifier().to_string(),
        };
        Ok((files, arrow_schema))
    }

    /// Names of the tables in the sink's namespace.
    pub async fn tables(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .catalog
            .list_tables(&self.namespace)
            .await?
            .into_iter()
            .map(|t| t.name().to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Compact `table` as `[sink.maintenance]` says, and publish its file metrics.
    /// `pending`: the pipeline's pending checkpoint (its files are kept from orphan
    /// cleanup).
    pub async fn maintain(&self, table: &str, pending: &[PendingCommit]) -> Result<Maintenance> {
        let when = self.opts.maintenance.compact_when;
        self.maintain_with(table, &when, Some(pending), None).await
    }

    /// The daemon's scheduled compaction of `table` (`[sink.maintenance] auto`): as
    /// [`Self::maintain`], with the schedule's `compact_when`, and orphan cleanup only
    /// when `pending` is given.
    pub async fn maintain_scheduled(
        &self,
        table: &str,
        pending: Option<&[PendingCommit]>,
    ) -> Result<Maintenance> {
        let m = &self.opts.maintenance;
        let when = m.auto.as_ref().map_or(m.compact_when, |a| a.compact_when);
        self.maintain_with(table, &when, pending, m.auto.as_ref())
            .await
    }

    /// `auto`: a scheduled round (its retention default; the data files it leaves are
    /// the floor of the table's read-cost estimate).
    async fn maintain_with(
        &self,
        table: &str,
        when: &compact::CompactWhen,
        pending: Option<&[PendingCommit]>,
        auto: Option<&AutoMaintenance>,
    ) -> Result<Maintenance> {
        let ident = self.ident(table);
        let loaded = self.load(&ident).await?;
        let (mut files, arrow_schema) = self.file_settings(&loaded)?;
        files.target_file_size = self.opts.maintenance.target_file_size as usize;
        let m = &self.opts.maintenance;
        let report = compact::compact(&self.catalog, &ident, &files, &arrow_schema, when).await?;
        // Fewer manifests for readers (compaction's removals, one or two per commit).
        let merged = commit::merge_manifests(&self.catalog, &ident).await?;
        let default_count = auto.and_then(|a| a.max_snapshots);
        let keep = expire::Retention {
            older_than: m.expire_older_than,
            max_snapshots: m.max_snapshots.or(default_count),
            count_min_age: (m.max_snapshots.is_none() && default_count.is_some())
                .then_some(AutoMaintenance::MIN_SNAPSHOT_AGE),
            keep_last: m.keep_last,
        };
        let expired = if keep.due(&self.load(&ident).await?.metadata_ref()) {
            Some(expire::expire(&self.catalog, &ident, &keep).await?)
        } else {
            None
        };
        let orphans = match (m.remove_orphans_older_than, pending) {
            (Some(age), Some(pending)) => {
                let current = self.load(&ident).await?;
                // The pending checkpoint's files are written but not yet referenced.
                let mut protected = std::collections::HashSet::new();
                for p in pending.iter().filter(|p| p.table == table) {
                    let decoded = decode_pending(&current, p)?;
                    let delta = &decoded.delta;
                    for (f, _) in delta
                        .data_files
                        .iter()
                        .chain(&delta.delete_files)
                        .chain(&delta.lookup_delete_files)
                    {
                        protected.insert(f.file_path().to_string());
                    }
                    protected.extend(decoded.keys_file.clone());
                }
                let storage = &self.opts.catalog.storage;
                Some(orphans::remove_orphans(&current, age, storage, &protected).await?)
            }
            _ => None,
        };
        let stats = compact::stats(&self.load(&ident).await?).await?;
        self.opts.read_costs.maintained(
            table,
            schedule::Shape::from_stats(&stats),
            auto.is_some() && report.conflicts == 0,
        );
        let name = format!("{}.{table}", self.opts.namespace);
        metrics::gauge!("lakeshore_table_data_files", "table" => name.clone())
            .set(stats.data_files as f64);
        metrics::gauge!("lakeshore_table_delete_files", "table" => name.clone())
            .set(stats.delete_files as f64);
        metrics::gauge!("lakeshore_table_deleted_ratio", "table" => name.clone())
            .set(stats.deleted_ratio());
        metrics::gauge!("lakeshore_table_last_maintenance_timestamp_seconds", "table" => name).set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        Ok(Maintenance {
            compacted: report,
            manifests_merged: merged,
            expired,
            orphans,
            stats,
        })
    }

    async fn load_or_create(&self, target: &TableTarget) -> Result<iceberg::table::Table> {
        let ident = self.ident(&target.name);
        let cat = &self.catalog;
        if let Some(table) = cat.load_if_exists(&ident).await? {
            return Ok(table);
        }
        check_name("table", &target.name, &target.name)?;
        let nested = NamespaceIdent::from_strs(
            self.opts
                .namespace
                .split('.')
                .chain(std::iter::once(target.name.as_str())),
        )
        .map_err(ice)?;
        if cat.namespace_exists(&nested).await? {
            return Err(Error::config(format!(
                "table {}.{}: a namespace of that name exists, whose tables would live \
                     inside this table's location; route the table to another name ([[route]])",
                self.opts.namespace, target.name
            )));
        }
        let schema = schema::to_iceberg_schema(&target.source)?;
        let spec = schema::partition_spec(&target.name, &schema, &target.partitioning)?;
        // Metadata files that leave the log (100 versions) are deleted at once: at one commit
        // a second they would pile up by the thousand.
        let properties = [(catalog::DELETE_AFTER_COMMIT.to_string(), "true".to_string())];
        let creation = TableCreation::builder()
            .name(target.name.clone())
            .schema(schema)
            .partition_spec(spec)
            .properties(std::collections::HashMap::from(properties))
            .build();
        cat.create_table(&self.namespace, creation).await
    }
}

/// Refuse upserts into lake table `name` by a `key` other than the table's identifier
/// fields: the rows written under the old key would not be found, and would stay beside
/// their new versions.
fn same_key(name: &str, schema: &iceberg::spec::Schema, key: &[String]) -> Result<()> {
    let mut lake: Vec<&str> = schema
        .identifier_field_ids()
        .filter_map(|id| schema.field_by_id(id).map(|f| f.name.as_str()))
        .collect();
    let mut wanted: Vec<&str> = key.iter().map(String::as_str).collect();
    lake.sort_unstable();
    wanted.sort_unstable();
    if lake == wanted {
        return Ok(());
    }
    let lake = if lake.is_empty() {
        "no key (it was written in append or changelog mode)".to_string()
    } else {
        format!("the key ({})", lake.join(", "))
    };
    Err(Error::config(format!(
        "table {name}: the lake table has {lake}, and the pipeline upserts by ({}); rows \
             written before would not be found. Keep the table's key, or route the table to a \
             new lake table ([[route]]) and let it snapshot there",
        wanted.join(", ")
    )))
}

#[async_trait::async_trait]
impl Sink for IcebergSink {
    async fn open_table(&self, target: &TableTarget) -> Result<Box<dyn TableWriter>> {
        let mut table = self.load_or_create(target).await?;
        let (files, arrow_schema) = self.file_settings(&table)?;
        let mut ctx = TableContext {
            ident: self.ident(&target.name),
            files,
            arrow_schema,
            key: target.source.key.clone(),
        };
        // A source that restarts with columns the table lacks (a schema change whose
        // commit was interrupted) brings the table up to date first.
        ctx.evolve(&self.catalog, &mut table, None, &target.source)
            .await?;
        let name = format!("{}.{}", self.opts.namespace, target.name);
        let mode = self.opts.mode.unwrap_or(if ctx.key.is_empty() {
            WriteMode::Append
        } else {
            WriteMode::Upsert
        });
        if mode == WriteMode::Upsert && ctx.key.is_empty() {
            return Err(Error::config(format!(
                "table {}: mode = \"upsert\" needs a primary key, and the source declares none; use mode = \"append\"",
                target.source.name
            )));
        }
        if mode == WriteMode::Upsert {
            same_key(&name, table.metadata().current_schema(), &ctx.key)?;
        }
        let open = OpenTable::new(ctx, self.catalog.clone(), table, name)?;
        Ok(match mode {
            WriteMode::Append | WriteMode::Changelog => Box::new(AppendWriter::new(open)),
            WriteMode::Upsert => Box::new(UpsertWriter::new(open)?),
        })
    }

    async fn commit(&self, pending: &PendingCommit, ctx: &CommitContext) -> Result<bool> {
        let ident = self.ident(&pending.table);
        let table = self.load(&ident).await?;
        let mut decoded = decode_pending(&table, pending)?;
        // The first attempt builds on the table just loaded (one catalog request fewer).
        let mut fresh = Some(table.clone());
        for _ in 0..10 {
            let outcome =
                commit::commit_row_delta(&self.catalog, &ident, &decoded.delta, ctx, fresh.take())
                    .await?;
            if outcome != CommitOutcome::StaleLookup
                && let Some(keys_file) = &decoded.keys_file
            {
                // Only a commit that has not landed can need the keys again.
                let _ = table.file_io().delete(keys_file).await;
            }
            match outcome {
                CommitOutcome::Committed => {
                    // The table's new shape, for the daemon's maintenance schedule.
                    let before = table.metadata().current_snapshot();
                    let delta = &decoded.delta;
                    let added: Vec<&iceberg::spec::DataFile> = delta
                        .data_files
                        .iter()
                        .chain(&delta.delete_files)
                        .chain(&delta.lookup_delete_files)
                        .map(|(f, _)| f)
                        .collect();
                    // A truncating commit removes every file live before it.
                    let shape = match before {
                        Some(s) if !delta.truncate => schedule::Shape::of(s),
                        _ => Some(schedule::Shape::default()),
                    };
                    if let Some(shape) = shape {
                        self.opts.read_costs.set(&pending.table, shape.plus(&added));
                    }
                    return Ok(true);
                }
                CommitOutcome::AlreadyThere => return Ok(false),
                CommitOutcome::StaleLookup => {
                    let Some(keys_file) = &decoded.keys_file else {
                        return Err(Error::internal(format!(
                            "table {ident}: position deletes went stale and no keys file was kept"
                        )));
                    };
                    let table = self.load(&ident).await?;
                    let (files, arrow_schema) = self.file_settings(&table)?;
                    let fresh =
                        upsert::relookup(&table, &files, &arrow_schema, &decoded.key, keys_file)
                            .await?;
                    tracing::info!(table = %ident, checkpoint = ctx.checkpoint_id, "looked the checkpoint's keys up again");
                    decoded.delta.lookup_delete_files = fresh.files;
                    decoded.delta.referenced_files = fresh.referenced;
                    decoded.delta.lookup_base = fresh.base;
                }
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "table {ident}: concurrent commits kept removing the files this checkpoint deletes from"
            ),
        ))
    }

    fn truncates(&self) -> bool {
        true
    }

    async fn last_commits(&self, pipeline: &str) -> Result<Vec<LakeCommit>> {
        let mut commits = Vec::new();
        for name in self.tables().await? {
            let table = self.load(&self.ident(&name)).await?;
            commits.extend(commit::last_commit(&table, pipeline)?);
        }
        Ok(commits)
    }
}
