//! The snapshot producer every action shares: snapshot ids, manifest writers, the
//! manifest list, snapshot and the table's next metadata, which the catalog lands
//! (`CatalogHandle::land`, removing what a lost attempt wrote).

use std::collections::HashMap;
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestFile, ManifestListWriter, ManifestWriter,
    ManifestWriterBuilder, Operation, PartitionSpecRef, SchemaRef, Snapshot,
    SnapshotSummaryCollector, Summary, TableMetadata, TableMetadataBuildResult,
};
use iceberg::table::Table;
use lakeshore_api::{Error, ErrorKind, Result};

use super::history::checkpoint_property;
use super::{MAINTENANCE_KEY, PIPELINE_KEY};
use crate::error::{ice, internal};

fn new_snapshot_id(md: &TableMetadata) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & (i64::MAX as u64)) as i64;
        if id != 0 && md.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// A snapshot being staged on top of the table's current one: its id, the UUID that
/// names this attempt's files, and the manifests it writes.
pub(crate) struct Staging<'t> {
    table: &'t Table,
    /// The new snapshot's id.
    pub(crate) id: i64,
    /// Names this attempt's files.
    pub(crate) uuid: uuid::Uuid,
    /// The table's current schema.
    pub(crate) schema: SchemaRef,
    meta_dir: String,
}

impl<'t> Staging<'t> {
    /// A new snapshot id and attempt UUID for `table`.
    pub(crate) fn new(table: &'t Table) -> Self {
        let md = table.metadata();
        Staging {
            table,
            id: new_snapshot_id(md),
            uuid: uuid::Uuid::new_v4(),
            schema: md.current_schema().clone(),
            meta_dir: format!("{}/metadata", md.location().trim_end_matches('/')),
        }
    }

    /// A v2 manifest writer (data or deletes) for files of partition spec `spec_id`, at
    /// `<metadata>/<uuid>-<name>.avro`; the path is added to `written`.
    pub(crate) fn manifest(
        &self,
        name: &str,
        spec_id: i32,
        deletes: bool,
        written: &mut Vec<String>,
    ) -> Result<(ManifestWriter, PartitionSpecRef)> {
        let md = self.table.metadata();
        let spec = md
            .partition_spec_by_id(spec_id)
            .ok_or_else(|| internal(format!("partition spec {spec_id} is not in the table")))?
            .clone();
        let path = format!("{}/{}-{name}.avro", self.meta_dir, self.uuid);
        let output = self.table.file_io().new_output(&path).map_err(ice)?;
        written.push(path);
        let builder = ManifestWriterBuilder::new(
            output,
            Some(self.id),
            self.schema.clone(),
            spec.as_ref().clone(),
        );
        let writer = if deletes {
            builder.build_v2_deletes()
        } else {
            builder.build_v2_data()
        };
        Ok((writer, spec))
    }

    /// Manifests adding `data` and `deletes` files, one per (content, spec id), named
    /// `<prefix><n>`; `seq(deletes)` is the data sequence number they get (-1: this
    /// snapshot's).
    pub(crate) async fn add_files<'f>(
        &self,
        prefix: &str,
        data: impl IntoIterator<Item = &'f (DataFile, i32)>,
        deletes: impl IntoIterator<Item = &'f (DataFile, i32)>,
        seq: impl Fn(bool) -> i64,
        collector: &mut SnapshotSummaryCollector,
        written: &mut Vec<String>,
    ) -> Result<Vec<ManifestFile>> {
        let mut groups: HashMap<(bool, i32), Vec<DataFile>> = HashMap::new();
        for (f, spec) in data {
            groups.entry((false, *spec)).or_default().push(f.clone());
        }
        for (f, spec) in deletes {
            groups.entry((true, *spec)).or_default().push(f.clone());
        }
        let mut manifests = Vec::new();
        for (n, ((deletes, spec_id), files)) in groups.into_iter().enumerate() {
            let (mut writer, spec) =
                self.manifest(&format!("{prefix}{n}"), spec_id, deletes, written)?;
            for f in files {
                collector.add_file(&f, self.schema.clone(), spec.clone());
                writer.add_file(f, seq(deletes)).map_err(ice)?;
            }
            manifests.push(writer.write_manifest_file().await.map_err(ice)?);
        }
        Ok(manifests)
    }
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

impl NextSnapshot {
    /// A `replace` snapshot of table maintenance (`lakeshore.maintenance = kind`).
    pub(crate) fn maintenance(
        id: i64,
        uuid: uuid::Uuid,
        attempt: u32,
        kind: &str,
        mut props: HashMap<String, String>,
    ) -> Self {
        props.insert(MAINTENANCE_KEY.to_string(), kind.to_string());
        NextSnapshot {
            id,
            uuid,
            attempt,
            operation: Operation::Replace,
            props,
        }
    }
}

/// Write the manifest list of `manifests` and build the snapshot and the table's next
/// metadata (what the catalog lands). Paths written are added to `written`.
pub(crate) async fn build_snapshot(
    table: &Table,
    parent: Option<&iceberg::spec::SnapshotRef>,
    manifests: Vec<iceberg::spec::ManifestFile>,
    next: NextSnapshot,
    written: &mut Vec<String>,
) -> Result<TableMetadataBuildResult> {
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
    let built = builder.build().map_err(ice)?;
    debug_assert_eq!(built.metadata.format_version(), FormatVersion::V2);
    Ok(built)
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

/// After losing the catalog race `attempt` times: wait (backing off) before the next
/// try, or give up after 20.
pub(super) async fn lost_race(
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

/// False for a manifest that only records removals (all its entries are deleted): it
/// need not be carried into later snapshots.
pub(super) fn has_live_files(m: &iceberg::spec::ManifestFile) -> bool {
    match (m.added_files_count, m.existing_files_count) {
        (Some(a), Some(e)) => a + e > 0,
        _ => true,
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
