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
//! - **Equality deletes** (written by other tools; lakeshore writes none) are not applied
//!   here yet: partitions that carry them are left alone, with a warning.
//!
//! Memory: one Parquet batch at a time, the positions deleted in the partitions of one
//! commit, and 8 bytes per row rewritten (where it went); commits are cut at
//! [`ROWS_PER_COMMIT`] rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, new_null_array};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::spec::{DataContentType, DataFile, ManifestStatus, Struct};
use iceberg::table::Table;
use lakeshore_api::{Error, ErrorKind, Result};

use crate::catalog::CatalogHandle;
use crate::commit::{Rewrite, RewriteOutcome, commit_rewrite};
use crate::error::{ice, internal, io};
use crate::lookup::open_parquet;
use crate::position_delete::{PartitionDeletes, write_position_deletes};
use crate::schema::widen;
use crate::writer::{FileSettings, PartitionedWriter, RowLocation};

/// Rows rewritten per commit at most (bounds the row map, 8 bytes per row).
pub const ROWS_PER_COMMIT: u64 = 8_000_000;

/// When a partition is worth compacting: any one of these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactWhen {
    /// At least this many delete files apply to it.
    pub delete_files: usize,
    /// Deleted rows / data rows is at least this (and something is deleted).
    pub deleted_ratio: f64,
    /// At least this many data files are smaller than 3/4 of the target size.
    pub small_files: usize,
}

impl Default for CompactWhen {
    fn default() -> Self {
        CompactWhen {
            delete_files: 10,
            deleted_ratio: 0.1,
            small_files: 10,
        }
    }
}

/// What a compaction run did.
#[derive(Debug, Default, Clone)]
pub struct CompactReport {
    /// Partitions rewritten (committed).
    pub partitions: usize,
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
    /// Partitions left alone because they carry equality deletes.
    pub skipped_equality: usize,
}

/// The files of a table's current snapshot, for metrics and reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct TableStats {
    /// Live data files.
    pub data_files: usize,
    /// Live delete files (position and equality).
    pub delete_files: usize,
    /// Rows in the data files.
    pub data_rows: u64,
    /// Rows of the delete files (deleted rows, as far as the files say).
    pub deleted_rows: u64,
}

impl TableStats {
    /// Deleted rows per data row.
    pub fn deleted_ratio(&self) -> f64 {
        self.deleted_rows as f64 / self.data_rows.max(1) as f64
    }
}

/// The files of `table`'s current snapshot.
pub async fn stats(table: &Table) -> Result<TableStats> {
    let mut s = TableStats::default();
    let Some(snapshot) = table.metadata().current_snapshot().cloned() else {
        return Ok(s);
    };
    for p in inventory(table, &snapshot).await?.values() {
        s.data_files += p.data.len();
        s.data_rows += p.data.iter().map(|e| e.file.record_count()).sum::<u64>();
        s.delete_files += p.position_deletes.len() + p.equality_deletes;
        s.deleted_rows += p
            .position_deletes
            .iter()
            .map(|e| e.file.record_count())
            .sum::<u64>()
            + p.equality_rows;
    }
    Ok(s)
}

/// A live file of the base snapshot.
#[derive(Clone)]
struct Entry {
    file: DataFile,
    seq: i64,
}

type PartitionKey = (i32, Struct);

/// The live files of a partition.
#[derive(Default)]
struct Partition {
    data: Vec<Entry>,
    position_deletes: Vec<Entry>,
    equality_deletes: usize,
    equality_rows: u64,
}

/// Per file read: where each of its rows went (`NONE`: deleted), packed as file id << 40
/// | position.
type RowMap = HashMap<String, Vec<u64>>;
const NONE: u64 = u64::MAX;

/// The live files of `snapshot`, by partition.
async fn inventory(
    table: &Table,
    snapshot: &iceberg::spec::SnapshotRef,
) -> Result<HashMap<PartitionKey, Partition>> {
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(ice)?;
    let mut parts: HashMap<PartitionKey, Partition> = HashMap::new();
    for manifest in list.entries() {
        let m = manifest.load_manifest(table.file_io()).await.map_err(ice)?;
        for e in m.entries() {
            if e.status() == ManifestStatus::Deleted {
                continue;
            }
            let f = e.data_file();
            let key = (manifest.partition_spec_id, f.partition().clone());
            let entry = Entry {
                file: f.clone(),
                seq: e.sequence_number().unwrap_or(0),
            };
            let p = parts.entry(key).or_default();
            match f.content_type() {
                DataContentType::Data => p.data.push(entry),
                DataContentType::PositionDeletes => p.position_deletes.push(entry),
                DataContentType::EqualityDeletes => {
                    p.equality_deletes += 1;
                    p.equality_rows += f.record_count();
                }
            }
        }
    }
    Ok(parts)
}

fn worth_it(p: &Partition, when: &CompactWhen, target_file_size: u64) -> bool {
    if p.data.is_empty() {
        return false;
    }
    let rows: u64 = p.data.iter().map(|e| e.file.record_count()).sum();
    let deleted: u64 = p
        .position_deletes
        .iter()
        .map(|e| e.file.record_count())
        .sum();
    let small = p
        .data
        .iter()
        .filter(|e| e.file.file_size_in_bytes() < target_file_size / 4 * 3)
        .count();
    let deletes = p.position_deletes.len();
    (deletes > 0 && deletes >= when.delete_files)
        || (deleted > 0 && deleted as f64 >= when.deleted_ratio * rows.max(1) as f64)
        || (small > 1 && small >= when.small_files)
}

/// Compact the partitions of `ident` that `when` picks.
pub async fn compact(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    settings: &FileSettings,
    arrow_schema: &ArrowSchemaRef,
    when: &CompactWhen,
) -> Result<CompactReport> {
    let table = catalog.catalog().load_table(ident).await.map_err(ice)?;
    let mut report = CompactReport::default();
    let Some(base) = table.metadata().current_snapshot().cloned() else {
        return Ok(report);
    };
    let mut parts = inventory(&table, &base).await?;
    let mut chosen: Vec<(PartitionKey, Partition)> = Vec::new();
    for (key, p) in parts.drain() {
        if !worth_it(&p, when, settings.target_file_size as u64) {
            continue;
        }
        if p.equality_deletes > 0 {
            tracing::warn!(table = %ident, partition = ?key.1, "partition carries equality deletes (from another writer); not compacted");
            report.skipped_equality += 1;
            continue;
        }
        chosen.push((key, p));
    }
    // Stable order (and so stable file layout) across runs.
    chosen.sort_by_key(|(k, _)| format!("{}:{:?}", k.0, k.1));
    // Partitions into commits of at most ROWS_PER_COMMIT rows each.
    let mut jobs: Vec<Vec<(PartitionKey, Partition)>> = vec![Vec::new()];
    let mut job_rows = 0u64;
    for (key, p) in chosen {
        if job_rows >= ROWS_PER_COMMIT {
            jobs.push(Vec::new());
            job_rows = 0;
        }
        job_rows += p.data.iter().map(|e| e.file.record_count()).sum::<u64>();
        jobs.last_mut().expect("one job at least").push((key, p));
    }
    for job in jobs.into_iter().filter(|j| !j.is_empty()) {
        let job_ctx = (catalog, ident, &table, &base);
        run_job(job_ctx, settings, arrow_schema, job, &mut report).await?;
    }
    Ok(report)
}

/// Rewrite the partitions of `job` and commit them in one snapshot.
async fn run_job(
    (catalog, ident, table, base): (
        &CatalogHandle,
        &TableIdent,
        &Table,
        &iceberg::spec::SnapshotRef,
    ),
    settings: &FileSettings,
    arrow_schema: &ArrowSchemaRef,
    job: Vec<(PartitionKey, Partition)>,
    report: &mut CompactReport,
) -> Result<()> {
    let file_io = table.file_io();
    let mut writer = PartitionedWriter::new(settings.clone())?;
    let mut rewrite = Rewrite {
        base: base.snapshot_id(),
        base_seq: base.sequence_number(),
        ..Default::default()
    };
    let mut map: RowMap = HashMap::new();
    let mut rows = 0u64;
    let mut dropped = 0u64;
    for (key, p) in &job {
        let deleted = deleted_positions(file_io, p).await?;
        let mut data = p.data.clone();
        data.sort_by(|a, b| a.file.file_path().cmp(b.file.file_path()));
        for e in &data {
            let path = e.file.file_path();
            let gone = deleted.get(path);
            let (kept, lost, where_) =
                rewrite_file(file_io, path, gone, arrow_schema, &mut writer).await?;
            rows += kept;
            dropped += lost;
            map.insert(path.to_string(), where_);
            rewrite.removed_data.insert(path.to_string());
        }
        for d in &p.position_deletes {
            rewrite
                .removed_deletes
                .insert(d.file.file_path().to_string());
        }
        rewrite.partitions.insert(key.clone());
    }
    let (files, infos) = writer.close().await?;
    let spec_id = settings.spec.spec_id();
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
    let mut moved = 0u64;
    loop {
        match commit_rewrite(catalog, ident, &rewrite).await? {
            RewriteOutcome::Committed => break,
            RewriteOutcome::LateDeletes(late) => {
                for path in late {
                    let (files, n) =
                        move_deletes(file_io, settings, &path, &map, &new_paths).await?;
                    moved += n;
                    rewrite
                        .moved_deletes
                        .extend(files.into_iter().map(|f| (f, spec_id)));
                    rewrite.moved_from.insert(path);
                }
            }
            RewriteOutcome::Conflict(why) => {
                tracing::warn!(table = %ident, reason = %why, "compaction gave up; the next run starts over");
                report.conflicts += 1;
                for (f, _) in rewrite.added.iter().chain(&rewrite.moved_deletes) {
                    let _ = file_io.delete(f.file_path()).await;
                }
                return Ok(());
            }
        }
    }
    report.partitions += job.len();
    report.data_files_removed += rewrite.removed_data.len();
    report.delete_files_removed += rewrite.removed_deletes.len();
    report.data_files_added += rewrite.added.len();
    report.rows += rows;
    report.rows_dropped += dropped;
    report.deletes_moved += moved;
    tracing::info!(
        table = %ident,
        partitions = job.len(),
        data_files_removed = rewrite.removed_data.len(),
        delete_files_removed = rewrite.removed_deletes.len(),
        data_files_added = rewrite.added.len(),
        rows,
        rows_dropped = dropped,
        deletes_moved = moved,
        "compacted"
    );
    Ok(())
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
        let conformed = conform(&batch, &columns, arrow_schema)?;
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

/// For each column of the table schema, the file column holding it (matched by field id,
/// or by name in files without ids); `None`: the file predates the column.
fn column_sources(
    file: &ArrowSchemaRef,
    table: &ArrowSchemaRef,
    path: &str,
) -> Result<Vec<Option<usize>>> {
    const FIELD_ID: &str = "PARQUET:field_id";
    let by_id: HashMap<&str, usize> = file
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.metadata().get(FIELD_ID).map(|id| (id.as_str(), i)))
        .collect();
    table
        .fields()
        .iter()
        .map(|f| {
            let found = match f.metadata().get(FIELD_ID) {
                Some(id) if !by_id.is_empty() => by_id.get(id.as_str()).copied(),
                _ => file.index_of(f.name()).ok(),
            };
            if found.is_none() && !f.is_nullable() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("{path}: required column {} is missing", f.name()),
                ));
            }
            Ok(found)
        })
        .collect()
}

/// `batch` in the table's schema: columns by their source, widened where the file has a
/// narrower type, null where the file predates the column.
fn conform(
    batch: &RecordBatch,
    sources: &[Option<usize>],
    table: &ArrowSchemaRef,
) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = table
        .fields()
        .iter()
        .zip(sources)
        .map(|(f, s)| match s {
            Some(i) => widen(batch.column(*i).clone(), f.data_type()),
            None => new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(table.clone(), columns).map_err(|e| internal(e.to_string()))
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
