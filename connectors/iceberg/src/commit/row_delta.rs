//! The row delta of one checkpoint: data files and position-delete files in one
//! snapshot, idempotent per (pipeline, checkpoint), refused when a concurrent commit
//! removed a file its lookup deletes point into.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::spec::{
    DataFile, ManifestContentType, ManifestEntry, ManifestStatus, Operation,
    SnapshotSummaryCollector,
};
use iceberg::table::Table;
use lakeshore_api::{CommitContext, Result};

use super::history::{entries_since, last_checkpoint};
use super::snapshot::{NextSnapshot, Staging, build_snapshot, has_live_files, lost_race};
use super::{CHECKPOINT_KEY, PIPELINE_KEY, POSITION_KEY, TABLES_KEY};
use crate::catalog::CatalogHandle;
use crate::error::ice;

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

/// Commit `delta` for checkpoint `ctx`. `loaded`: the table as just loaded, if the
/// caller has it (the first attempt builds on it; a lost race reloads).
pub async fn commit_row_delta(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    delta: &RowDelta,
    ctx: &CommitContext,
    mut loaded: Option<Table>,
) -> Result<CommitOutcome> {
    if delta.is_empty() {
        return Ok(CommitOutcome::AlreadyThere);
    }
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        let table = match loaded.take() {
            Some(table) => table,
            None => catalog.load(ident).await?,
        };
        if let Some(done) = last_checkpoint(&table, &ctx.pipeline)
            && done >= ctx.checkpoint_id
        {
            return Ok(CommitOutcome::AlreadyThere);
        }
        if let Some(removed) = removed_referenced_file(&table, delta).await? {
            tracing::warn!(table = %ident, file = %removed, "a concurrent commit removed a data file this checkpoint deletes from");
            return Ok(CommitOutcome::StaleLookup);
        }
        let staged = stage(&table, delta, ctx, attempt).await?;
        if catalog
            .land(ident, &table, staged.next, &staged.files)
            .await?
        {
            return Ok(CommitOutcome::Committed);
        }
        lost_race(ident, "commit", attempt, &mut backoff).await?;
    }
    unreachable!("the retry loop returns")
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

/// What one attempt wrote, and the metadata to land.
struct Staged {
    next: iceberg::spec::TableMetadataBuildResult,
    files: Vec<String>,
}

/// Write manifests and manifest list for `delta` on top of `table`.
async fn stage(
    table: &Table,
    delta: &RowDelta,
    ctx: &CommitContext,
    attempt: u32,
) -> Result<Staged> {
    let md = table.metadata();
    let file_io = table.file_io();
    let staging = Staging::new(table);
    let mut written = Vec::new();
    let mut collector = SnapshotSummaryCollector::default();
    let new_manifests = staging
        .add_files(
            "m",
            &delta.data_files,
            delta.all_deletes(),
            |_| -1,
            &mut collector,
            &mut written,
        )
        .await?;

    // Carry every manifest of the parent; a truncation instead marks all their live
    // files deleted.
    let parent = md.current_snapshot().cloned();
    let mut manifests = Vec::new();
    if let Some(parent) = &parent {
        let list = crate::cache::manifest_list(table, parent).await?;
        if delta.truncate {
            let mut removed: HashMap<(bool, i32), Vec<ManifestEntry>> = HashMap::new();
            for manifest in list.entries() {
                let m = crate::cache::manifest(file_io, manifest).await?;
                for entry in m.entries().iter().filter(|e| e.is_alive()) {
                    let deletes = manifest.content == ManifestContentType::Deletes;
                    let key = (deletes, manifest.partition_spec_id);
                    removed.entry(key).or_default().push(entry.as_ref().clone());
                }
            }
            for ((deletes, spec_id), entries) in removed {
                let name = format!("r{spec_id}-{deletes}");
                let (mut writer, spec) = staging.manifest(&name, spec_id, deletes, &mut written)?;
                for e in entries {
                    collector.remove_file(&e.data_file, staging.schema.clone(), spec.clone());
                    let seq = e.sequence_number.unwrap_or(0);
                    writer
                        .add_delete_file(e.data_file, seq, e.file_sequence_number)
                        .map_err(ice)?;
                }
                manifests.push(writer.write_manifest_file().await.map_err(ice)?);
            }
        } else {
            manifests.extend(list.entries().iter().filter(|m| has_live_files(m)).cloned());
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
        id: staging.id,
        uuid: staging.uuid,
        attempt,
        operation,
        props,
    };
    let next = build_snapshot(table, parent.as_ref(), manifests, next, &mut written).await?;
    Ok(Staged {
        next,
        files: written,
    })
}
