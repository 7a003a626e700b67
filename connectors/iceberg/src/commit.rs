//! The row-delta commit: one Iceberg snapshot that adds data files and position-delete
//! files together, landed with optimistic concurrency.
//!
//! iceberg-rust 0.10 cannot commit delete files (its `Transaction` offers only fast
//! append, and `TableCommit` cannot be built outside the crate), so this module builds the
//! snapshot from public parts — manifests, manifest list, snapshot, table metadata — and
//! lands it with a compare-and-swap on the SQL catalog's `metadata_location`.
//!
//! Invariants:
//! - **Idempotent:** before every attempt the table history is searched for this
//!   pipeline's checkpoint id; if it is there, nothing is done.
//! - **No dangling deletes:** position deletes that point into files committed before
//!   this checkpoint are valid only while those files are live. If a concurrent commit
//!   since the lookup's base snapshot removed one of them, the attempt returns
//!   [`CommitOutcome::StaleLookup`] and the caller looks the keys up again.
//! - **No lost foreign commits:** every attempt starts from the freshly loaded table and
//!   carries all of its manifests.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestEntry, ManifestEntryRef,
    ManifestListWriter, ManifestStatus, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotSummaryCollector, Summary, TableMetadata,
};
use iceberg::table::Table;
use std::str::FromStr;

use iceberg::{MetadataLocation, TableIdent};
use lakeshore_api::{CommitContext, Error, ErrorKind, LakeCommit, Result, SourcePosition};

use crate::catalog::CatalogHandle;
use crate::error::{ice, internal};

/// Snapshot summary keys written by lakeshore.
pub const PIPELINE_KEY: &str = "lakeshore.pipeline";
/// Checkpoint id of the commit.
pub const CHECKPOINT_KEY: &str = "lakeshore.checkpoint-id";
/// Source position of the checkpoint.
pub const POSITION_KEY: &str = "lakeshore.source-position";
/// How many lake tables the checkpoint changed (recovery from the lake checks them all).
pub const TABLES_KEY: &str = "lakeshore.checkpoint-tables";
/// Set on snapshots written by table maintenance (`compaction`).
pub const MAINTENANCE_KEY: &str = "lakeshore.maintenance";

/// The files of one commit.
#[derive(Debug, Default, Clone)]
pub struct RowDelta {
    /// New data files, each with its partition spec id.
    pub data_files: Vec<(DataFile, i32)>,
    /// New position-delete files into this commit's own data files.
    pub delete_files: Vec<(DataFile, i32)>,
    /// New position-delete files into committed data files (from a key lookup).
    pub lookup_delete_files: Vec<(DataFile, i32)>,
    /// Data files committed before this checkpoint that the position deletes point to.
    pub referenced_files: Vec<String>,
    /// The snapshot the position lookup read; `None` when nothing was looked up.
    pub lookup_base: Option<i64>,
    /// The source truncated the table during this checkpoint: every file live in the
    /// table when the commit lands is removed by it (the new files hold only rows
    /// written after the truncation).
    pub truncate: bool,
}

impl RowDelta {
    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.data_files.is_empty()
            && self.delete_files.is_empty()
            && self.lookup_delete_files.is_empty()
            && !self.truncate
    }

    fn all_deletes(&self) -> impl Iterator<Item = &(DataFile, i32)> {
        self.delete_files.iter().chain(&self.lookup_delete_files)
    }
}

/// The newest checkpoint id of `pipeline` in the table's main-branch history.
pub fn last_checkpoint(table: &Table, pipeline: &str) -> Option<u64> {
    newest_commit(table, pipeline).map(|(id, _)| id)
}

/// The newest commit of `pipeline` in the table's main-branch history, as the lake
/// records it (the position and table count are missing from very old commits).
pub fn last_commit(table: &Table, pipeline: &str) -> Result<Option<LakeCommit>> {
    let Some((checkpoint_id, props)) = newest_commit(table, pipeline) else {
        return Ok(None);
    };
    let name = table.identifier().name().to_string();
    let Some(position) = props.get(POSITION_KEY) else {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "table {}: the commit of pipeline {pipeline}'s checkpoint {checkpoint_id} has no {POSITION_KEY}; restore the pipeline's state directory",
                table.identifier()
            ),
        ));
    };
    let position = serde_json::from_str(position).map_err(|e| {
        internal(format!(
            "table {}: {POSITION_KEY} of checkpoint {checkpoint_id} is unreadable: {e}",
            table.identifier()
        ))
    })?;
    Ok(Some(LakeCommit {
        table: name,
        checkpoint_id,
        position: SourcePosition(position),
        tables: props.get(TABLES_KEY).and_then(|t| t.parse().ok()),
    }))
}

/// The table property that mirrors `pipeline`'s newest commit (its snapshot summary's
/// lakeshore keys, as JSON): a snapshot expiry by another engine may remove that
/// snapshot from the history, and recovery must still find the checkpoint.
fn checkpoint_property(pipeline: &str) -> String {
    format!("lakeshore.last-checkpoint.{pipeline}")
}

/// The newest commit of `pipeline`: from the main branch's history, or — when a foreign
/// snapshot expiry removed it from there — from the table property that mirrors it.
fn newest_commit(table: &Table, pipeline: &str) -> Option<(u64, HashMap<String, String>)> {
    let md = table.metadata_ref();
    let in_history = md.current_snapshot_id().and_then(|current| {
        iceberg::util::snapshot::ancestors_of(&md, current).find_map(|s| {
            let props = &s.summary().additional_properties;
            if props.get(PIPELINE_KEY).map(String::as_str) == Some(pipeline) {
                let id = props.get(CHECKPOINT_KEY).and_then(|c| c.parse().ok())?;
                Some((id, props.clone()))
            } else {
                None
            }
        })
    });
    let mirrored = md
        .properties()
        .get(&checkpoint_property(pipeline))
        .and_then(|json| serde_json::from_str::<HashMap<String, String>>(json).ok())
        .and_then(|props| Some((props.get(CHECKPOINT_KEY)?.parse().ok()?, props)));
    match (in_history, mirrored) {
        (Some(h), Some(m)) if m.0 > h.0 => Some(m),
        (Some(h), _) => Some(h),
        (None, m) => m,
    }
}

/// How a commit attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The snapshot is in the table.
    Committed,
    /// The table already holds this checkpoint (or a later one), or there was nothing to
    /// commit.
    AlreadyThere,
    /// A commit since the lookup removed a data file that the lookup deletes point to:
    /// look the keys up again and retry.
    StaleLookup,
}

/// Commit `delta` for checkpoint `ctx`.
pub async fn commit_row_delta(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    delta: &RowDelta,
    ctx: &CommitContext,
) -> Result<CommitOutcome> {
    if delta.is_empty() {
        return Ok(CommitOutcome::AlreadyThere);
    }
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        let table = catalog.catalog().load_table(ident).await.map_err(ice)?;
        if let Some(done) = last_checkpoint(&table, &ctx.pipeline)
            && done >= ctx.checkpoint_id
        {
            return Ok(CommitOutcome::AlreadyThere);
        }
        if let Some(removed) = removed_referenced_file(&table, delta).await? {
            tracing::warn!(table = %ident, file = %removed, "a concurrent commit removed a data file this checkpoint deletes from");
            return Ok(CommitOutcome::StaleLookup);
        }
        let mut staged = stage(&table, delta, ctx, attempt).await?;
        staged.files.push(staged.location.clone());
        if swap_or_discard(catalog, ident, &table, &staged.location, &staged.files).await? {
            return Ok(CommitOutcome::Committed);
        }
        lost_race(ident, "commit", attempt, &mut backoff).await?;
    }
    unreachable!("the retry loop returns")
}

/// After losing the catalog race `attempt` times: wait (backing off) before the next
/// try, or give up after 20.
async fn lost_race(
    ident: &TableIdent,
    what: &str,
    attempt: u32,
    backoff: &mut Duration,
) -> Result<()> {
    if attempt >= 20 {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("table {ident}: {what} gave up after {attempt} commit conflicts"),
        ));
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    Ok(())
}

/// The manifest entries written by the snapshots after `base` up to the current one
/// (only `content`'s, when given), each with its manifest's partition spec id; `Err`
/// with the reason when `base` is not in the current snapshot's history.
async fn entries_since(
    table: &Table,
    base: i64,
    content: Option<ManifestContentType>,
) -> Result<std::result::Result<Vec<(i32, ManifestEntryRef)>, String>> {
    let md = table.metadata_ref();
    let Some(current) = md.current_snapshot_id() else {
        return Ok(Err("the table has no snapshot any more".into()));
    };
    let mut entries = Vec::new();
    for snap in iceberg::util::snapshot::ancestors_of(&md, current) {
        if snap.snapshot_id() == base {
            return Ok(Ok(entries));
        }
        let list = table
            .manifest_list_reader(&snap)
            .load()
            .await
            .map_err(ice)?;
        for manifest in list.entries() {
            if manifest.added_snapshot_id != snap.snapshot_id()
                || content.as_ref().is_some_and(|c| manifest.content != *c)
            {
                continue;
            }
            let m = manifest.load_manifest(table.file_io()).await.map_err(ice)?;
            let spec_id = manifest.partition_spec_id;
            entries.extend(m.entries().iter().map(|e| (spec_id, e.clone())));
        }
    }
    Ok(Err("it is no longer in the table's history".into()))
}

/// A data file that our lookup deletes point into and that a commit since the lookup's
/// base snapshot removed (or a reason the base cannot be checked), if any.
async fn removed_referenced_file(table: &Table, delta: &RowDelta) -> Result<Option<String>> {
    let (Some(base), false) = (delta.lookup_base, delta.referenced_files.is_empty()) else {
        return Ok(None);
    };
    let referenced: HashSet<&str> = delta.referenced_files.iter().map(String::as_str).collect();
    let entries = match entries_since(table, base, Some(ManifestContentType::Data)).await? {
        Ok(entries) => entries,
        Err(why) => return Ok(Some(format!("the lookup's base snapshot: {why}"))),
    };
    Ok(entries
        .iter()
        .map(|(_, e)| e)
        .find(|e| {
            e.status() == ManifestStatus::Deleted && referenced.contains(e.data_file().file_path())
        })
        .map(|e| e.data_file().file_path().to_string()))
}

/// Files a compaction replaces, against the snapshot it read (`base`).
#[derive(Debug, Default)]
pub struct Rewrite {
    /// The snapshot the compaction read.
    pub base: i64,
    /// Its sequence number: the rewritten data files keep it, so equality deletes that
    /// land after `base` still apply to them.
    pub base_seq: i64,
    /// Data files read and replaced.
    pub removed_data: HashSet<String>,
    /// Delete files applied by the rewrite and no longer needed.
    pub removed_deletes: HashSet<String>,
    /// Partitions rewritten, as (spec id, partition).
    pub partitions: HashSet<(i32, iceberg::spec::Struct)>,
    /// The rewritten data files.
    pub added: Vec<(DataFile, i32)>,
    /// New position-delete files: deletes that landed after `base` into removed files,
    /// moved onto the rewritten files; or a partition's deletes merged into one file.
    pub added_deletes: Vec<(DataFile, i32)>,
    /// The position-delete files whose deletes were moved into `added_deletes`.
    pub moved_from: HashSet<String>,
    /// Data files that `added_deletes` point to and that stay: a commit since `base`
    /// that removed one of them is a conflict.
    pub referenced: HashSet<String>,
}

/// How a rewrite attempt ended.
#[derive(Debug)]
pub enum RewriteOutcome {
    /// The replace snapshot is in the table.
    Committed,
    /// Position-delete files committed since `base` in the rewritten partitions, not yet
    /// in `moved_from`: move their deletes of removed files onto the new files, then try
    /// again.
    LateDeletes(Vec<String>),
    /// A commit since `base` removed one of the files read (another compaction, a
    /// truncation) or the history no longer holds `base`: give up; nothing was changed.
    Conflict(String),
}

/// Commit `rewrite` as a `replace` snapshot with optimistic concurrency: the table's
/// history since `rewrite.base` is checked on every attempt.
pub async fn commit_rewrite(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    rewrite: &Rewrite,
) -> Result<RewriteOutcome> {
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        let table = catalog.catalog().load_table(ident).await.map_err(ice)?;
        match since_base(&table, rewrite).await? {
            Err(why) => return Ok(RewriteOutcome::Conflict(why)),
            Ok(late) if !late.is_empty() => return Ok(RewriteOutcome::LateDeletes(late)),
            Ok(_) => {}
        }
        let mut written = Vec::new();
        let staged = stage_rewrite(&table, rewrite, attempt, &mut written).await;
        let location = match staged {
            Ok(l) => l,
            Err(e) => {
                discard(table.file_io(), &written).await;
                return Err(e);
            }
        };
        written.push(location.clone());
        if swap_or_discard(catalog, ident, &table, &location, &written).await? {
            return Ok(RewriteOutcome::Committed);
        }
        lost_race(ident, "compaction", attempt, &mut backoff).await?;
    }
    unreachable!("the retry loop returns")
}

/// Point the table at `location` if it is still at the metadata `table` was loaded
/// from. When another commit won, remove `written` (this attempt's files, `location`
/// among them) and return false: the caller retries on a fresh table or gives up.
pub(crate) async fn swap_or_discard(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    table: &Table,
    location: &str,
    written: &[String],
) -> Result<bool> {
    let current = table.metadata_location_result().map_err(ice)?;
    if catalog.swap_metadata(ident, current, location).await? {
        return Ok(true);
    }
    discard(table.file_io(), written).await;
    Ok(false)
}

async fn discard(file_io: &iceberg::io::FileIO, files: &[String]) {
    for f in files {
        if let Err(e) = file_io.delete(f).await {
            tracing::debug!(file = %f, error = %e, "could not remove a file of a failed commit attempt");
        }
    }
}

/// What happened since `rewrite.base`: `Err(why)` when the rewrite cannot land, else the
/// position-delete files added in its partitions that it has not moved yet.
async fn since_base(
    table: &Table,
    rewrite: &Rewrite,
) -> Result<std::result::Result<Vec<String>, String>> {
    let entries = match entries_since(table, rewrite.base, None).await? {
        Ok(entries) => entries,
        Err(why) => return Ok(Err(format!("the snapshot the compaction read: {why}"))),
    };
    let mut late = Vec::new();
    for (spec_id, entry) in &entries {
        let f = entry.data_file();
        let path = f.file_path();
        match entry.status() {
            ManifestStatus::Deleted
                if rewrite.removed_data.contains(path)
                    || rewrite.removed_deletes.contains(path)
                    || rewrite.referenced.contains(path) =>
            {
                return Ok(Err(format!("{path} was removed by another commit")));
            }
            ManifestStatus::Added
                if f.content_type() == iceberg::spec::DataContentType::PositionDeletes
                    && rewrite
                        .partitions
                        .contains(&(*spec_id, f.partition().clone()))
                    && !rewrite.moved_from.contains(path) =>
            {
                late.push(path.to_string());
            }
            _ => {}
        }
    }
    Ok(Ok(late))
}

/// Manifests, manifest list and metadata of the replace snapshot; returns the metadata
/// path.
async fn stage_rewrite(
    table: &Table,
    rewrite: &Rewrite,
    attempt: u32,
    written: &mut Vec<String>,
) -> Result<String> {
    let md = table.metadata();
    let file_io = table.file_io();
    let schema = md.current_schema().clone();
    let snapshot_id = new_snapshot_id(md);
    let commit_uuid = uuid::Uuid::new_v4();
    let meta_dir = format!("{}/metadata", md.location().trim_end_matches('/'));
    let parent = md
        .current_snapshot()
        .cloned()
        .ok_or_else(|| internal("a compaction needs a snapshot to replace files of"))?;
    let mut collector = SnapshotSummaryCollector::default();
    let mut manifests = Vec::new();
    let list = table
        .manifest_list_reader(&parent)
        .load()
        .await
        .map_err(ice)?;
    // Manifests holding a replaced file are merged, per content and spec, into one that
    // marks the replaced files deleted and keeps their other live entries as existing
    // (so a compaction also leaves fewer manifests); manifests with no live file are
    // dropped; the rest are carried as they are.
    let carried: Vec<iceberg::spec::ManifestFile> = list.consume_entries().into_iter().collect();
    let replaced =
        |p: &str| rewrite.removed_data.contains(p) || rewrite.removed_deletes.contains(p);
    // Per (deletes?, spec id): entries with whether they are replaced and who added them.
    type Merged = HashMap<(bool, i32), Vec<(ManifestEntry, bool, i64)>>;
    let mut merged: Merged = HashMap::new();
    for manifest in carried {
        if !has_live_files(&manifest) {
            continue;
        }
        let m = manifest.load_manifest(file_io).await.map_err(ice)?;
        if !m
            .entries()
            .iter()
            .any(|e| e.is_alive() && replaced(e.data_file().file_path()))
        {
            manifests.push(manifest);
            continue;
        }
        let key = (
            manifest.content == ManifestContentType::Deletes,
            manifest.partition_spec_id,
        );
        let group = merged.entry(key).or_default();
        for e in m.entries().iter().filter(|e| e.is_alive()) {
            let gone = replaced(e.data_file().file_path());
            let added_by = e.snapshot_id().unwrap_or(manifest.added_snapshot_id);
            group.push((e.as_ref().clone(), gone, added_by));
        }
    }
    for (n, ((deletes, spec_id), entries)) in merged.into_iter().enumerate() {
        let path = format!("{meta_dir}/{commit_uuid}-c{n}.avro");
        let (mut writer, spec) = manifest_writer(table, &path, snapshot_id, spec_id, deletes)?;
        written.push(path);
        for (e, gone, added_by) in entries {
            let seq = e.sequence_number().unwrap_or(0);
            let file_seq = e.file_sequence_number;
            let f = e.data_file;
            if gone {
                collector.remove_file(&f, schema.clone(), spec.clone());
                writer.add_delete_file(f, seq, file_seq).map_err(ice)?;
            } else {
                writer
                    .add_existing_file(f, added_by, seq, file_seq)
                    .map_err(ice)?;
            }
        }
        manifests.push(writer.write_manifest_file().await.map_err(ice)?);
    }
    // The rewritten files keep the base's sequence number; new delete files take this
    // snapshot's (moved deletes must apply to the rewritten files; merged ones name
    // their files by path, which all predate them).
    let mut groups: HashMap<(bool, i32), Vec<DataFile>> = HashMap::new();
    for (f, spec) in &rewrite.added {
        groups.entry((false, *spec)).or_default().push(f.clone());
    }
    for (f, spec) in &rewrite.added_deletes {
        groups.entry((true, *spec)).or_default().push(f.clone());
    }
    for (n, ((deletes, spec_id), files)) in groups.into_iter().enumerate() {
        let path = format!("{meta_dir}/{commit_uuid}-a{n}.avro");
        let (mut writer, spec) = manifest_writer(table, &path, snapshot_id, spec_id, deletes)?;
        written.push(path);
        for f in files {
            collector.add_file(&f, schema.clone(), spec.clone());
            let seq = if deletes { -1 } else { rewrite.base_seq };
            writer.add_file(f, seq).map_err(ice)?;
        }
        manifests.push(writer.write_manifest_file().await.map_err(ice)?);
    }
    let mut props = collector.build();
    props.insert(MAINTENANCE_KEY.into(), "compaction".into());
    let next = NextSnapshot {
        id: snapshot_id,
        uuid: commit_uuid,
        attempt,
        operation: Operation::Replace,
        props,
    };
    write_snapshot(table, Some(&parent), manifests, next, written).await
}

/// Rewrite the current snapshot's manifests into one per (content, partition spec),
/// dropping those that only record removals: readers then open a handful of manifests
/// instead of one or two per commit. The files, their sequence numbers and the table's
/// rows are unchanged (a `replace` snapshot). Returns false when there was nothing to
/// merge or a concurrent commit kept winning (the next run tries again).
pub async fn merge_manifests(catalog: &CatalogHandle, ident: &TableIdent) -> Result<bool> {
    for attempt in 0..5 {
        let table = catalog.catalog().load_table(ident).await.map_err(ice)?;
        let md = table.metadata();
        let Some(parent) = md.current_snapshot().cloned() else {
            return Ok(false);
        };
        let list = table
            .manifest_list_reader(&parent)
            .load()
            .await
            .map_err(ice)?;
        let mut groups: HashMap<(bool, i32), Vec<iceberg::spec::ManifestFile>> = HashMap::new();
        let mut dead = 0;
        for m in list.entries() {
            if !has_live_files(m) {
                dead += 1;
                continue;
            }
            let key = (
                m.content == ManifestContentType::Deletes,
                m.partition_spec_id,
            );
            groups.entry(key).or_default().push(m.clone());
        }
        if dead == 0 && groups.values().all(|g| g.len() <= 1) {
            return Ok(false);
        }
        let snapshot_id = new_snapshot_id(md);
        let commit_uuid = uuid::Uuid::new_v4();
        let meta_dir = format!("{}/metadata", md.location().trim_end_matches('/'));
        let mut written = Vec::new();
        let mut manifests = Vec::new();
        for (n, ((deletes, spec_id), group)) in groups.into_iter().enumerate() {
            if group.len() == 1 {
                manifests.extend(group);
                continue;
            }
            let path = format!("{meta_dir}/{commit_uuid}-merged{n}.avro");
            let (mut writer, _) = manifest_writer(&table, &path, snapshot_id, spec_id, deletes)?;
            written.push(path);
            for m in group {
                let loaded = m.load_manifest(table.file_io()).await.map_err(ice)?;
                for e in loaded.entries().iter().filter(|e| e.is_alive()) {
                    let added_by = e.snapshot_id().unwrap_or(m.added_snapshot_id);
                    writer
                        .add_existing_file(
                            e.data_file().clone(),
                            added_by,
                            e.sequence_number().unwrap_or(0),
                            e.file_sequence_number,
                        )
                        .map_err(ice)?;
                }
            }
            manifests.push(writer.write_manifest_file().await.map_err(ice)?);
        }
        let mut props = HashMap::new();
        props.insert(MAINTENANCE_KEY.to_string(), "manifests".to_string());
        let next = NextSnapshot {
            id: snapshot_id,
            uuid: commit_uuid,
            attempt,
            operation: Operation::Replace,
            props,
        };
        let location = write_snapshot(&table, Some(&parent), manifests, next, &mut written).await?;
        written.push(location.clone());
        if swap_or_discard(catalog, ident, &table, &location, &written).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// False for a manifest that only records removals (all its entries are deleted): it
/// need not be carried into later snapshots.
fn has_live_files(m: &iceberg::spec::ManifestFile) -> bool {
    match (m.added_files_count, m.existing_files_count) {
        (Some(a), Some(e)) => a + e > 0,
        _ => true,
    }
}

/// Make `change(current schema)` the table's current schema, in a metadata-only commit
/// landed by compare-and-swap (retried on a fresh table when another commit won).
pub async fn commit_schema(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    change: impl Fn(&iceberg::spec::Schema) -> Result<iceberg::spec::Schema>,
) -> Result<Table> {
    for _ in 0..20 {
        let table = catalog.catalog().load_table(ident).await.map_err(ice)?;
        let md = table.metadata();
        let schema = change(md.current_schema())?;
        if schema.as_struct() == md.current_schema().as_struct() {
            return Ok(table);
        }
        let current_location = table.metadata_location_result().map_err(ice)?;
        let new_md = md
            .clone()
            .into_builder(Some(current_location.to_string()))
            .add_current_schema(schema)
            .map_err(ice)?
            .build()
            .map_err(ice)?
            .metadata;
        let next = write_next_metadata(table.file_io(), current_location, &new_md).await?;
        if swap_or_discard(catalog, ident, &table, &next, std::slice::from_ref(&next)).await? {
            return catalog.catalog().load_table(ident).await.map_err(ice);
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("table {ident}: gave up changing the schema after 20 conflicts"),
    ))
}

/// What one attempt wrote before the swap.
struct Staged {
    location: String,
    files: Vec<String>,
}

pub(crate) fn new_snapshot_id(md: &TableMetadata) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & (i64::MAX as u64)) as i64;
        if id != 0 && md.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Write `new_md` as the next version after the metadata file at `current`; its path.
pub(crate) async fn write_next_metadata(
    file_io: &iceberg::io::FileIO,
    current: &str,
    new_md: &TableMetadata,
) -> Result<String> {
    let next = MetadataLocation::from_str(current)
        .map_err(ice)?
        .with_next_version()
        .with_new_metadata(new_md);
    new_md.write_to(file_io, &next).await.map_err(ice)?;
    Ok(next.to_string())
}

/// A v2 manifest writer (data or deletes) for files of partition spec `spec_id`.
pub(crate) fn manifest_writer(
    table: &Table,
    path: &str,
    snapshot_id: i64,
    spec_id: i32,
    deletes: bool,
) -> Result<(
    iceberg::spec::ManifestWriter,
    iceberg::spec::PartitionSpecRef,
)> {
    let md = table.metadata();
    let spec = md
        .partition_spec_by_id(spec_id)
        .ok_or_else(|| internal(format!("partition spec {spec_id} is not in the table")))?
        .clone();
    let output = table.file_io().new_output(path).map_err(ice)?;
    let builder = ManifestWriterBuilder::new(
        output,
        Some(snapshot_id),
        md.current_schema().clone(),
        spec.as_ref().clone(),
    );
    let writer = if deletes {
        builder.build_v2_deletes()
    } else {
        builder.build_v2_data()
    };
    Ok((writer, spec))
}

/// Write manifests, manifest list and metadata file for `delta` on top of `table`.
async fn stage(
    table: &Table,
    delta: &RowDelta,
    ctx: &CommitContext,
    attempt: u32,
) -> Result<Staged> {
    let md = table.metadata();
    let file_io = table.file_io();
    let schema = md.current_schema().clone();
    let snapshot_id = new_snapshot_id(md);
    let commit_uuid = uuid::Uuid::new_v4();
    let meta_dir = format!("{}/metadata", md.location().trim_end_matches('/'));
    let mut written = Vec::new();

    // One manifest per (content, spec id).
    let mut groups: HashMap<(bool, i32), Vec<DataFile>> = HashMap::new();
    for (f, spec) in &delta.data_files {
        groups.entry((false, *spec)).or_default().push(f.clone());
    }
    for (f, spec) in delta.all_deletes() {
        groups.entry((true, *spec)).or_default().push(f.clone());
    }
    let mut collector = SnapshotSummaryCollector::default();
    let mut new_manifests = Vec::new();
    for (n, ((deletes, spec_id), files)) in groups.into_iter().enumerate() {
        let path = format!("{meta_dir}/{commit_uuid}-m{n}.avro");
        let (mut writer, spec) = manifest_writer(table, &path, snapshot_id, spec_id, deletes)?;
        for f in files {
            collector.add_file(&f, schema.clone(), spec.clone());
            writer.add_file(f, -1).map_err(ice)?;
        }
        new_manifests.push(writer.write_manifest_file().await.map_err(ice)?);
        written.push(path);
    }

    // Carry every manifest of the parent; a truncation instead marks all their live
    // files deleted.
    let parent = md.current_snapshot().cloned();
    let mut manifests = Vec::new();
    if let Some(parent) = &parent {
        let list = table
            .manifest_list_reader(parent)
            .load()
            .await
            .map_err(ice)?;
        if delta.truncate {
            let mut removed: HashMap<(bool, i32), Vec<ManifestEntry>> = HashMap::new();
            for manifest in list.entries() {
                let m = manifest.load_manifest(file_io).await.map_err(ice)?;
                for entry in m.entries().iter().filter(|e| e.is_alive()) {
                    let deletes = manifest.content == ManifestContentType::Deletes;
                    let key = (deletes, manifest.partition_spec_id);
                    removed.entry(key).or_default().push(entry.as_ref().clone());
                }
            }
            for ((deletes, spec_id), entries) in removed {
                let path = format!("{meta_dir}/{commit_uuid}-r{spec_id}-{deletes}.avro");
                let (mut writer, spec) =
                    manifest_writer(table, &path, snapshot_id, spec_id, deletes)?;
                for e in entries {
                    collector.remove_file(&e.data_file, schema.clone(), spec.clone());
                    let seq = e.sequence_number.unwrap_or(0);
                    writer
                        .add_delete_file(e.data_file, seq, e.file_sequence_number)
                        .map_err(ice)?;
                }
                manifests.push(writer.write_manifest_file().await.map_err(ice)?);
                written.push(path);
            }
        } else {
            manifests.extend(list.consume_entries().into_iter().filter(has_live_files));
        }
    }
    manifests.extend(new_manifests);
    let no_deletes = delta.all_deletes().next().is_none();
    let operation = match (delta.data_files.is_empty(), no_deletes) {
        _ if delta.truncate => Operation::Overwrite,
        (false, true) => Operation::Append,
        (true, false) => Operation::Delete,
        _ => Operation::Overwrite,
    };
    let mut props = collector.build();
    props.insert(PIPELINE_KEY.into(), ctx.pipeline.clone());
    props.insert(CHECKPOINT_KEY.into(), ctx.checkpoint_id.to_string());
    props.insert(POSITION_KEY.into(), ctx.position.to_json_string());
    props.insert(TABLES_KEY.into(), ctx.tables.to_string());
    let next = NextSnapshot {
        id: snapshot_id,
        uuid: commit_uuid,
        attempt,
        operation,
        props,
    };
    let location = write_snapshot(table, parent.as_ref(), manifests, next, &mut written).await?;
    Ok(Staged {
        location,
        files: written,
    })
}

/// A snapshot about to be written on top of the table's current one.
pub(crate) struct NextSnapshot {
    pub(crate) id: i64,
    pub(crate) uuid: uuid::Uuid,
    pub(crate) attempt: u32,
    pub(crate) operation: Operation,
    /// Summary properties (the `total-*` keys are added here).
    pub(crate) props: HashMap<String, String>,
}

/// Write the manifest list of `manifests`, the snapshot and the next metadata file;
/// returns the metadata file's path (what the catalog swap installs). Paths written are
/// added to `written`.
pub(crate) async fn write_snapshot(
    table: &Table,
    parent: Option<&iceberg::spec::SnapshotRef>,
    manifests: Vec<iceberg::spec::ManifestFile>,
    next: NextSnapshot,
    written: &mut Vec<String>,
) -> Result<String> {
    let md = table.metadata();
    let file_io = table.file_io();
    let schema = md.current_schema().clone();
    let seq = md.next_sequence_number();
    let meta_dir = format!("{}/metadata", md.location().trim_end_matches('/'));
    let snapshot_id = next.id;
    let list_path = format!(
        "{meta_dir}/snap-{snapshot_id}-{}-{}.avro",
        next.attempt, next.uuid
    );
    let list_out = file_io.new_output(&list_path).map_err(ice)?;
    let mut list = ManifestListWriter::v2(
        list_out.writer().await.map_err(ice)?,
        snapshot_id,
        parent.map(|p| p.snapshot_id()),
        seq,
    );
    list.add_manifests(manifests.into_iter()).map_err(ice)?;
    list.close().await.map_err(ice)?;
    written.push(list_path.clone());

    let mut props = next.props;
    add_totals(&mut props, parent.map(|p| p.summary()));
    // A pipeline's commit is mirrored into a table property (see `newest_commit`).
    let mirror = props.get(PIPELINE_KEY).map(|pipeline| {
        let keys: HashMap<&String, &String> = props
            .iter()
            .filter(|(k, _)| k.starts_with("lakeshore.") && *k != MAINTENANCE_KEY)
            .collect();
        HashMap::from([(
            checkpoint_property(pipeline),
            serde_json::to_string(&keys).unwrap_or_default(),
        )])
    });
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        .max(md.last_updated_ms());
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent.map(|p| p.snapshot_id()))
        .with_sequence_number(seq)
        .with_timestamp_ms(now_ms)
        .with_manifest_list(list_path)
        .with_summary(Summary {
            operation: next.operation,
            additional_properties: props,
        })
        .with_schema_id(schema.schema_id())
        .build();

    let current_location = table.metadata_location_result().map_err(ice)?;
    let mut builder = md
        .clone()
        .into_builder(Some(current_location.to_string()))
        .set_branch_snapshot(snapshot, MAIN_BRANCH)
        .map_err(ice)?;
    if let Some(mirror) = mirror {
        builder = builder.set_properties(mirror).map_err(ice)?;
    }
    let new_md = builder.build().map_err(ice)?.metadata;
    debug_assert_eq!(new_md.format_version(), FormatVersion::V2);
    write_next_metadata(file_io, current_location, &new_md).await
}

/// The `total-*` summary keys: the parent's totals plus this commit's additions, minus
/// its removals.
fn add_totals(props: &mut HashMap<String, String>, parent: Option<&Summary>) {
    let get = |map: &HashMap<String, String>, k: &str| -> u64 {
        map.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    for (total, added, removed) in [
        ("total-data-files", "added-data-files", "deleted-data-files"),
        (
            "total-delete-files",
            "added-delete-files",
            "removed-delete-files",
        ),
        ("total-records", "added-records", "deleted-records"),
        ("total-files-size", "added-files-size", "removed-files-size"),
        (
            "total-position-deletes",
            "added-position-deletes",
            "removed-position-deletes",
        ),
        (
            "total-equality-deletes",
            "added-equality-deletes",
            "removed-equality-deletes",
        ),
    ] {
        let before = parent
            .map(|p| get(&p.additional_properties, total))
            .unwrap_or(0);
        let value = (before + get(props, added)).saturating_sub(get(props, removed));
        props.insert(total.to_string(), value.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_continue_from_the_parent() {
        let parent = Summary {
            operation: Operation::Append,
            additional_properties: HashMap::from([
                ("total-records".to_string(), "10".to_string()),
                ("total-data-files".to_string(), "2".to_string()),
            ]),
        };
        let mut props = HashMap::from([
            ("added-records".to_string(), "5".to_string()),
            ("added-position-deletes".to_string(), "3".to_string()),
        ]);
        add_totals(&mut props, Some(&parent));
        assert_eq!(props["total-records"], "15");
        assert_eq!(props["total-data-files"], "2");
        assert_eq!(props["total-position-deletes"], "3");
        assert_eq!(props["total-equality-deletes"], "0");
    }
}
