//! What the table's history says about a pipeline: its newest checkpoint and commit
//! (also when a foreign snapshot expiry removed it from the history), and the manifest
//! entries since a snapshot.

use std::collections::HashMap;

use iceberg::spec::{ManifestContentType, ManifestEntryRef};
use iceberg::table::Table;
use lakeshore_api::{Error, LakeCommit, Result, SourcePosition};

use super::{CHECKPOINT_KEY, PIPELINE_KEY, POSITION_KEY, TABLES_KEY};
use crate::error::internal;

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
        return Err(Error::config(format!(
            "table {}: the commit of pipeline {pipeline}'s checkpoint {checkpoint_id} has no {POSITION_KEY}; restore the pipeline's state directory",
            table.identifier()
        )));
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
pub(super) fn checkpoint_property(pipeline: &str) -> String {
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

/// The manifest entries written by the snapshots after `base` up to the current one
/// (only `content`'s, when given), each with its manifest's partition spec id; `Err`
/// with the reason when `base` is not in the current snapshot's history.
pub(super) async fn entries_since(
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
        let list = crate::cache::manifest_list(table, &snap).await?;
        for manifest in list.entries() {
            if manifest.added_snapshot_id != snap.snapshot_id()
                || content.as_ref().is_some_and(|c| manifest.content != *c)
            {
                continue;
            }
            let m = crate::cache::manifest(table.file_io(), manifest).await?;
            let spec_id = manifest.partition_spec_id;
            entries.extend(m.entries().iter().map(|e| (spec_id, e.clone())));
        }
    }
    Ok(Err("it is no longer in the table's history".into()))
}
