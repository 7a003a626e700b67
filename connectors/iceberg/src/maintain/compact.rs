//! Compaction: the data files of a partition rewritten with their deletes applied, into
//! files of the target size, committed as one `replace` snapshot while ingestion goes on.
//!
//! - **What is read:** the snapshot current when compaction starts (`base`). Each chosen
//!   partition's live data files are read in full, minus the rows its live position
//!   deletes remove; its delete files are then no longer needed and go with them.
//! - **Sequence numbers:** the rewritten files keep `base`'s sequence number, so an
//!   equality delete committed after `base` still applies to them.
//! - **Deletes committed meanwhile:** ingestion may delete rows of the files being
//!   rewritten while compaction runs. Before landing, the commit looks at every snapshot
//!   since `base`; position deletes into the rewritten partitions are moved onto the new
//!   files (compaction keeps, per file read, where each row went), in the same commit.
//! - **Conflicts:** if a commit since `base` removed a file compaction read (another
//!   compaction, a truncation), nothing is committed and the next run starts over. A
//!   crash leaves only unreferenced files (orphans), never a changed table.
//! - **Equality deletes** (written by other tools; lakeshore writes none) are applied
//!   too (see [`super::equality`]); those of the partition go with the rewrite. Equality
//!   deletes of an unpartitioned spec ("global") apply to every partition: partitions
//!   with older data are rewritten, and a global delete goes with the last partition
//!   that needed it, or on its own once no data file is older than it.
//!
//! **Cheaper than a rewrite:** a partition whose data files are fine (few deleted rows,
//! few small files) but that has many delete files, or any equality delete, keeps its
//! data files: its position deletes, and the rows its equality deletes remove (found
//! by reading only the equality columns), are written into one position-delete file,
//! which replaces all its delete files. One file per partition rather than one per data
//! file: readers attach every position-delete file of a partition to each of its data
//! files, so one file is the least they open; its `file_path` bounds let them skip it.
//!
//! Memory: one Parquet batch at a time, the positions deleted in the partitions of one
//! commit, the equality-delete keys of one partition, and 8 bytes per row rewritten
//! (where it went); commits are cut at [`ROWS_PER_COMMIT`] rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{BooleanArray, RecordBatch, StringArray};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::spec::{DataFile, Struct};
use iceberg::table::Table;
use lakeshore_api::Result;

use super::equality::EqualityDeletes;
use crate::catalog::CatalogHandle;
use crate::commit::{Rewrite, RewriteOutcome, commit_rewrite};
use crate::error::{internal, io};
use crate::lookup::open_parquet;
use crate::position_delete::{PartitionDeletes, write_position_deletes};
use crate::schema::{column_sources, conform_file};
use crate::writer::{FileSettings, PartitionedWriter, RowLocation};

use super::plan::{Chosen, Inventory, Partition, PartitionKey, choose, commits, inventory};
pub use super::plan::{CompactWhen, ROWS_PER_COMMIT, TableStats, stats};

/// What a compaction run did.
#[derive(Debug, Default, Clone)]
pub struct CompactReport {
    /// Partitions rewritten (committed).
    pub partitions: usize,
    /// Partitions whose delete files were merged into one, data files kept.
    pub deletes_merged: usize,
    /// Delete files replaced by those merges.
    pub merged_delete_files: usize,
    /// Rows removed by equality deletes, dropped or turned into position deletes.
    pub equality_rows: u64,
    /// Data files read and replaced.
    pub data_files_removed: usize,
    /// Delete files no longer needed.
    pub delete_files_removed: usize,
    /// Data files written.
    pub data_files_added: usize,
    /// Rows written.
    pub rows: u64,
    /// Deleted rows dropped from the files.
    pub rows_dropped: u64,
    /// Position deletes committed meanwhile, moved onto the new files.
    pub deletes_moved: u64,
    /// Commits given up because another commit removed files they read.
    pub conflicts: usize,
}

/// Per file read: where each of its rows went (`NONE`: deleted), packed as file id << 40
/// | position.
type RowMap = HashMap<String, Vec<u64>>;
const NONE: u64 = u64::MAX;

/// Compact the partitions of `ident` that `when` picks.
pub async fn compact(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    settings: &FileSettings,
    arrow_schema: &ArrowSchemaRef,
    when: &CompactWhen,
) -> Result<CompactReport> {
    let table = catalog.load(ident).await?;
    let mut report = CompactReport::default();
    let Some(base) = table.metadata().current_snapshot().cloned() else {
        return Ok(report);
    };
    let mut inv = inventory(&table, &base).await?;
    let Chosen {
        unneeded,
        mut rewrite,
        merge,
    } = choose(&mut inv, when, settings.target_file_size as u64);
    let ctx = Job {
        catalog,
        ident,
        table: &table,
        base: &base,
        inv: &inv,
        settings,
        arrow_schema,
        when,
    };
    if !unneeded.is_empty() {
        ctx.drop_deletes(unneeded, &mut report).await?;
    }
    // Merges first: a partition whose equality deletes turn out to match many rows is
    // rewritten instead.
    for job in commits(merge) {
        rewrite.extend(ctx.merge_deletes(job, &mut report).await?);
    }
    for job in commits(rewrite) {
        ctx.rewrite(job, &mut report).await?;
    }
    Ok(report)
}

/// What every commit of one compaction run shares.
struct Job<'a> {
    catalog: &'a CatalogHandle,
    ident: &'a TableIdent,
    table: &'a Table,
    base: &'a iceberg::spec::SnapshotRef,
    inv: &'a Inventory,
    settings: &'a FileSettings,
    arrow_schema: &'a ArrowSchemaRef,
    when: &'a CompactWhen,
}

impl Job<'_> {
    fn new_rewrite(&self) -> Rewrite {
        Rewrite {
            base: self.base.snapshot_id(),
            base_seq: self.base.sequence_number(),
            ..Default::default()
        }
    }

    /// Every position partition `p` deletes, per data file: its position deletes and the
    /// rows its equality deletes remove; with the count of the latter. `None` (with a
    /// warning) when a delete file cannot be applied: the partition is left alone.
    async fn deleted(
        &self,
        key: &PartitionKey,
        p: &Partition,
    ) -> Result<Option<(HashMap<String, HashSet<i64>>, u64)>> {
        match self.read_deletes(p).await {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                tracing::warn!(table = %self.ident, partition = ?key.1, error = %e, "a delete file of this partition cannot be applied; partition not compacted");
                Ok(None)
            }
        }
    }

    async fn read_deletes(&self, p: &Partition) -> Result<(HashMap<String, HashSet<i64>>, u64)> {
        let file_io = self.table.file_io();
        let mut deleted = deleted_positions(file_io, p).await?;
        let equality = self.inv.equality_for(p);
        let eq = EqualityDeletes::load(file_io, &equality, self.arrow_schema).await?;
        let mut by_equality = 0u64;
        if !eq.is_empty() {
            for e in &p.data {
                let out = deleted.entry(e.file.file_path().to_string()).or_default();
                by_equality += eq.deleted_in(file_io, &e.file, e.seq, out).await?;
            }
        }
        Ok((deleted, by_equality))
    }

    /// Commit `rewrite`: moving the deletes that land meanwhile (via `map`, onto
    /// `new_paths`), or giving up (and removing what it wrote) on a conflict. Returns
    /// false when it gave up, with the number of deletes moved.
    async fn land(
        &self,
        rewrite: &mut Rewrite,
        map: &RowMap,
        new_paths: &[(Arc<str>, Struct)],
        report: &mut CompactReport,
    ) -> Result<(bool, u64)> {
        let file_io = self.table.file_io();
        let spec_id = self.settings.spec.spec_id();
        let mut moved = 0u64;
        loop {
            match commit_rewrite(self.catalog, self.ident, rewrite).await? {
                RewriteOutcome::Committed => return Ok((true, moved)),
                RewriteOutcome::LateDeletes(late) => {
                    for path in late {
                        let (files, n) =
                            move_deletes(file_io, self.settings, &path, map, new_paths).await?;
                        moved += n;
                        rewrite
                            .added_deletes
                            .extend(files.into_iter().map(|f| (f, spec_id)));
                        rewrite.moved_from.insert(path);
                    }
                }
                RewriteOutcome::Conflict(why) => {
                    tracing::warn!(table = %self.ident, reason = %why, "compaction gave up; the next run starts over");
                    report.conflicts += 1;
                    for (f, _) in rewrite.added.iter().chain(&rewrite.added_deletes) {
                        let _ = file_io.delete(f.file_path()).await;
                    }
                    return Ok((false, moved));
                }
            }
        }
    }

    /// Rewrite the partitions of `job` and commit them in one snapshot.
    async fn rewrite(
        &self,
        job: Vec<(PartitionKey, Partition)>,
        report: &mut CompactReport,
    ) -> Result<()> {
        let file_io = self.table.file_io();
        let mut writer = PartitionedWriter::new(self.settings.clone())?;
        let mut rewrite = self.new_rewrite();
        let mut map: RowMap = HashMap::new();
        let (mut rows, mut dropped, mut by_equality) = (0u64, 0u64, 0u64);
        let mut partitions = 0;
        for (key, p) in &job {
            let Some((deleted, eq)) = self.deleted(key, p).await? else {
                continue;
            };
            partitions += 1;
            by_equality += eq;
            let mut data = p.data.clone();
            data.sort_by(|a, b| a.file.file_path().cmp(b.file.file_path()));
            for e in &data {
                let path = e.file.file_path();
                let gone = deleted.get(path);
                let (kept, lost, where_) =
                    rewrite_file(file_io, path, gone, self.arrow_schema, &mut writer).await?;
                rows += kept;
                dropped += lost;
                map.insert(path.to_string(), where_);
                rewrite.removed_data.insert(path.to_string());
            }
            rewrite.removed_deletes.extend(p.obsolete.iter().cloned());
            rewrite.partitions.insert(key.clone());
        }
        if partitions == 0 {
            return Ok(());
        }
        let (files, infos) = writer.close().await?;
        let spec_id = self.settings.spec.spec_id();
        rewrite.added = files.into_iter().map(|f| (f, spec_id)).collect();
        let new_paths: Vec<(Arc<str>, Struct)> = infos
            .iter()
            .map(|i| (Arc::from(i.path.as_str()), i.partition.clone()))
            .collect();
        // Tests widen the window in which ingestion commits under a running compaction.
        if let Some(ms) = std::env::var("LAKESHORE_TEST_COMPACT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let (landed, moved) = self.land(&mut rewrite, &map, &new_paths, report).await?;
        if !landed {
            return Ok(());
        }
        report.partitions += partitions;
        report.data_files_removed += rewrite.removed_data.len();
        report.delete_files_removed += rewrite.removed_deletes.len();
        report.data_files_added += rewrite.added.len();
        report.rows += rows;
        report.rows_dropped += dropped;
        report.deletes_moved += moved;
        report.equality_rows += by_equality;
        tracing::info!(
            table = %self.ident,
            partitions,
            data_files_removed = rewrite.removed_data.len(),
            delete_files_removed = rewrite.removed_deletes.len(),
            data_files_added = rewrite.added.len(),
            rows,
            rows_dropped = dropped,
            equality_rows = by_equality,
            deletes_moved = moved,
            "compacted"
        );
        Ok(())
    }

    /// Merge the delete files of each partition of `job` into one position-delete file
    /// (equality deletes turned into positions), its data files kept; one snapshot.
    /// Returns the partitions whose deletes turned out to remove at least
    /// `deleted_ratio` of their rows: they are better rewritten.
    async fn merge_deletes(
        &self,
        job: Vec<(PartitionKey, Partition)>,
        report: &mut CompactReport,
    ) -> Result<Vec<(PartitionKey, Partition)>> {
        let file_io = self.table.file_io();
        let md = self.table.metadata();
        let mut rewrite = self.new_rewrite();
        let (mut by_equality, mut partitions) = (0u64, 0);
        let mut heavy = Vec::new();
        for (key, p) in job {
            let Some((deleted, eq)) = self.deleted(&key, &p).await? else {
                continue;
            };
            let rows: u64 = p.data.iter().map(|e| e.file.record_count()).sum();
            let gone: usize = deleted.values().map(HashSet::len).sum();
            if gone > 0 && gone as f64 >= self.when.deleted_ratio * rows.max(1) as f64 {
                heavy.push((key, p));
                continue;
            }
            partitions += 1;
            by_equality += eq;
            let deletes: PartitionDeletes = deleted
                .into_iter()
                .filter(|(_, d)| !d.is_empty())
                .map(|(path, d)| (Arc::from(path.as_str()), d.into_iter().collect()))
                .collect();
            rewrite
                .referenced
                .extend(deletes.keys().map(|k| k.to_string()));
            if !deletes.is_empty() {
                let spec = md
                    .partition_spec_by_id(key.0)
                    .ok_or_else(|| internal(format!("partition spec {} is gone", key.0)))?;
                let file = write_position_deletes(
                    file_io,
                    &self.settings.locations,
                    md.current_schema(),
                    spec,
                    key.1.clone(),
                    deletes,
                    &self.settings.props,
                )
                .await?;
                rewrite.added_deletes.push((file, key.0));
            }
            rewrite.removed_deletes.extend(p.obsolete.iter().cloned());
        }
        if rewrite.removed_deletes.is_empty() && rewrite.added_deletes.is_empty() {
            return Ok(heavy);
        }
        let (landed, _) = self
            .land(&mut rewrite, &HashMap::new(), &[], report)
            .await?;
        if !landed {
            return Ok(heavy);
        }
        report.deletes_merged += partitions;
        report.merged_delete_files += rewrite.removed_deletes.len();
        report.equality_rows += by_equality;
        tracing::info!(
            table = %self.ident,
            partitions,
            delete_files_removed = rewrite.removed_deletes.len(),
            delete_files_added = rewrite.added_deletes.len(),
            equality_rows = by_equality,
            "delete files merged"
        );
        Ok(heavy)
    }

    /// Remove global equality deletes that no live data file needs any more (every
    /// data file has a sequence number at least theirs).
    async fn drop_deletes(&self, paths: Vec<String>, report: &mut CompactReport) -> Result<()> {
        let mut rewrite = self.new_rewrite();
        rewrite.removed_deletes.extend(paths);
        let (landed, _) = self
            .land(&mut rewrite, &HashMap::new(), &[], report)
            .await?;
        if landed {
            report.delete_files_removed += rewrite.removed_deletes.len();
            tracing::info!(table = %self.ident, delete_files_removed = rewrite.removed_deletes.len(), "equality deletes no data file needs removed");
        }
        Ok(())
    }
}

/// Positions removed by the partition's live position deletes, per data file of it.
async fn deleted_positions(
    file_io: &iceberg::io::FileIO,
    p: &Partition,
) -> Result<HashMap<String, HashSet<i64>>> {
    let seq_of: HashMap<&str, i64> = p.data.iter().map(|e| (e.file.file_path(), e.seq)).collect();
    let mut deleted: HashMap<String, HashSet<i64>> = HashMap::new();
    for d in &p.position_deletes {
        let path = d.file.file_path();
        let mut stream = open_parquet(file_io, path)
            .await?
            .build()
            .map_err(|e| io(path, e))?;
        while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
            let (files, pos) = delete_columns(&batch)?;
            for i in 0..batch.num_rows() {
                let target = files.value(i);
                // A position delete applies to data files of its sequence number or
                // older.
                if seq_of.get(target).is_some_and(|s| *s <= d.seq) {
                    deleted
                        .entry(target.to_string())
                        .or_default()
                        .insert(pos.value(i));
                }
            }
        }
    }
    Ok(deleted)
}

fn delete_columns(batch: &RecordBatch) -> Result<(&StringArray, &arrow_array::Int64Array)> {
    let files = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| internal("position delete file_path is not a string column"))?;
    Ok((files, batch.column(1).as_primitive::<Int64Type>()))
}

/// Copy the live rows of data file `path` into `writer`; returns (rows kept, rows
/// dropped, where each row went).
async fn rewrite_file(
    file_io: &iceberg::io::FileIO,
    path: &str,
    deleted: Option<&HashSet<i64>>,
    arrow_schema: &ArrowSchemaRef,
    writer: &mut PartitionedWriter,
) -> Result<(u64, u64, Vec<u64>)> {
    let builder = open_parquet(file_io, path).await?;
    let file_schema = builder.schema().clone();
    let columns = column_sources(&file_schema, arrow_schema, path)?;
    let mut stream = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| io(path, e))?;
    let (mut kept, mut lost) = (0u64, 0u64);
    let mut where_ = Vec::new();
    let mut offset = 0i64;
    let mut locations = Vec::new();
    while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
        let n = batch.num_rows();
        let conformed = conform_file(&batch, &columns, arrow_schema)?;
        let keep: Vec<bool> = (0..n)
            .map(|i| deleted.is_none_or(|d| !d.contains(&(offset + i as i64))))
            .collect();
        let live = keep.iter().filter(|k| **k).count();
        let out = if live == n {
            conformed
        } else {
            arrow_select::filter::filter_record_batch(&conformed, &BooleanArray::from(keep.clone()))
                .map_err(|e| io(path, e))?
        };
        locations.clear();
        writer.write(&out, Some(&mut locations)).await?;
        let mut placed = locations.iter();
        for k in keep {
            if k {
                let l: &RowLocation = placed
                    .next()
                    .ok_or_else(|| internal("the writer reported fewer rows than it was given"))?;
                where_.push(((l.file as u64) << 40) | l.pos);
            } else {
                where_.push(NONE);
            }
        }
        kept += live as u64;
        lost += (n - live) as u64;
        offset += n as i64;
    }
    Ok((kept, lost, where_))
}

/// The deletes of position-delete file `path` that point into rewritten files, moved
/// onto the new files (one delete file per new partition); with how many were moved.
async fn move_deletes(
    file_io: &iceberg::io::FileIO,
    settings: &FileSettings,
    path: &str,
    map: &RowMap,
    new_files: &[(Arc<str>, Struct)],
) -> Result<(Vec<DataFile>, u64)> {
    let mut per_partition: BTreeMap<usize, PartitionDeletes> = BTreeMap::new();
    let mut stream = open_parquet(file_io, path)
        .await?
        .build()
        .map_err(|e| io(path, e))?;
    let mut moved = 0u64;
    while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
        let (files, pos) = delete_columns(&batch)?;
        for i in 0..batch.num_rows() {
            let Some(rows) = map.get(files.value(i)) else {
                continue;
            };
            let Some(&to) = rows.get(pos.value(i) as usize) else {
                continue;
            };
            if to == NONE {
                continue;
            }
            let (file, at) = ((to >> 40) as usize, (to & ((1 << 40) - 1)) as i64);
            let (new_path, _) = &new_files[file];
            per_partition
                .entry(file)
                .or_default()
                .entry(new_path.clone())
                .or_default()
                .push(at);
            moved += 1;
        }
    }
    // One delete file per partition of the new files.
    let mut by_partition: HashMap<Struct, PartitionDeletes> = HashMap::new();
    for (file, deletes) in per_partition {
        let target = by_partition.entry(new_files[file].1.clone()).or_default();
        for (p, mut positions) in deletes {
            target.entry(p).or_default().append(&mut positions);
        }
    }
    let mut out = Vec::new();
    for (partition, deletes) in by_partition {
        out.push(
            write_position_deletes(
                file_io,
                &settings.locations,
                &settings.schema,
                &settings.spec,
                partition,
                deletes,
                &settings.props,
            )
            .await?,
        );
    }
    Ok((out, moved))
}
