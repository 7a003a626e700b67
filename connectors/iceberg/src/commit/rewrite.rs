//! The compaction's `replace` snapshot: rewritten data files keep the base's sequence
//! number, replaced files are marked deleted in merged manifests, and the history since
//! the base decides whether it can land.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::spec::{
    DataFile, ManifestContentType, ManifestEntry, ManifestStatus, SnapshotSummaryCollector,
};
use iceberg::table::Table;
use lakeshore_api::Result;

use super::history::entries_since;
use super::snapshot::{NextSnapshot, Staging, build_snapshot, has_live_files, lost_race};
use crate::catalog::{CatalogHandle, discard};
use crate::error::{ice, internal};

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
        let table = catalog.load(ident).await?;
        match since_base(&table, rewrite).await? {
            Err(why) => return Ok(RewriteOutcome::Conflict(why)),
            Ok(late) if !late.is_empty() => return Ok(RewriteOutcome::LateDeletes(late)),
            Ok(_) => {}
        }
        let mut written = Vec::new();
        let staged = stage_rewrite(&table, rewrite, attempt, &mut written).await;
        let next = match staged {
            Ok(next) => next,
            Err(e) => {
                discard(table.file_io(), &written).await;
                return Err(e);
            }
        };
        if catalog.land(ident, &table, next, &written).await? {
            return Ok(RewriteOutcome::Committed);
        }
        lost_race(ident, "compaction", attempt, &mut backoff).await?;
    }
    unreachable!("the retry loop returns")
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
) -> Result<iceberg::spec::TableMetadataBuildResult> {
    let md = table.metadata();
    let file_io = table.file_io();
    let staging = Staging::new(table);
    let parent = md
        .current_snapshot()
        .cloned()
        .ok_or_else(|| internal("a compaction needs a snapshot to replace files of"))?;
    let mut collector = SnapshotSummaryCollector::default();
    let mut manifests = Vec::new();
    let list = crate::cache::manifest_list(table, &parent).await?;
    // Manifests holding a replaced file are merged, per content and spec, into one that
    // marks the replaced files deleted and keeps their other live entries as existing
    // (so a compaction also leaves fewer manifests); manifests with no live file are
    // dropped; the rest are carried as they are.
    let carried: Vec<iceberg::spec::ManifestFile> = list.entries().to_vec();
    let replaced =
        |p: &str| rewrite.removed_data.contains(p) || rewrite.removed_deletes.contains(p);
    // Per (deletes?, spec id): entries with whether they are replaced and who added them.
    type Merged = HashMap<(bool, i32), Vec<(ManifestEntry, bool, i64)>>;
    let mut merged: Merged = HashMap::new();
    for manifest in carried {
        if !has_live_files(&manifest) {
            continue;
        }
        let m = crate::cache::manifest(file_io, &manifest).await?;
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
        let (mut writer, spec) = staging.manifest(&format!("c{n}"), spec_id, deletes, written)?;
        for (e, gone, added_by) in entries {
            let seq = e.sequence_number().unwrap_or(0);
            let file_seq = e.file_sequence_number;
            let f = e.data_file;
            if gone {
                collector.remove_file(&f, staging.schema.clone(), spec.clone());
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
    let added = staging
        .add_files(
            "a",
            &rewrite.added,
            &rewrite.added_deletes,
            |deletes| if deletes { -1 } else { rewrite.base_seq },
            &mut collector,
            written,
        )
        .await?;
    manifests.extend(added);
    let next = NextSnapshot::maintenance(
        staging.id,
        staging.uuid,
        attempt,
        "compaction",
        collector.build(),
    );
    build_snapshot(table, Some(&parent), manifests, next, written).await
}
