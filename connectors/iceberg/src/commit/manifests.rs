//! Manifest merging: one manifest per (content, partition spec) in a `replace`
//! snapshot that changes no file.

use std::collections::HashMap;

use iceberg::TableIdent;
use iceberg::spec::ManifestContentType;
use lakeshore_api::Result;

use super::snapshot::{NextSnapshot, Staging, build_snapshot, has_live_files};
use crate::catalog::CatalogHandle;
use crate::error::ice;

/// Rewrite the current snapshot's manifests into one per (content, partition spec),
/// dropping those that only record removals: readers then open a handful of manifests
/// instead of one or two per commit. The files, their sequence numbers and the table's
/// rows are unchanged (a `replace` snapshot). Returns false when there was nothing to
/// merge or a concurrent commit kept winning (the next run tries again).
pub async fn merge_manifests(catalog: &CatalogHandle, ident: &TableIdent) -> Result<bool> {
    for attempt in 0..5 {
        let table = catalog.load(ident).await?;
        let md = table.metadata();
        let Some(parent) = md.current_snapshot().cloned() else {
            return Ok(false);
        };
        let list = crate::cache::manifest_list(&table, &parent).await?;
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
        let staging = Staging::new(&table);
        let mut written = Vec::new();
        let mut manifests = Vec::new();
        for (n, ((deletes, spec_id), group)) in groups.into_iter().enumerate() {
            if group.len() == 1 {
                manifests.extend(group);
                continue;
            }
            let (mut writer, _) =
                staging.manifest(&format!("merged{n}"), spec_id, deletes, &mut written)?;
            for m in group {
                let loaded = crate::cache::manifest(table.file_io(), &m).await?;
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
        let next = NextSnapshot::maintenance(
            staging.id,
            staging.uuid,
            attempt,
            "manifests",
            HashMap::new(),
        );
        let next = build_snapshot(&table, Some(&parent), manifests, next, &mut written).await?;
        if catalog.land(ident, &table, next, &written).await? {
            return Ok(true);
        }
    }
    Ok(false)
}
