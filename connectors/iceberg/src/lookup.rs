//! Key → (data file, position) lookup over the committed table, for upserts.
//!
//! Chosen approach (see ARCHITECTURE.md, "Upserts without equality deletes"): scan the
//! key columns of candidate data files, pruned by partition-independent min/max key
//! statistics, then drop positions already removed by live position-delete files of the
//! same partition. Memory is one Parquet batch of key columns plus the looked-up keys;
//! nothing grows with the table.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, StringArray};
use arrow_row::RowConverter;
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::ArrowFileReader;
use iceberg::io::FileIO;
use iceberg::metadata_columns::RESERVED_FIELD_ID_DELETE_FILE_PATH;
use iceberg::spec::{DataContentType, Datum, ManifestStatus, PrimitiveLiteral, Struct};
use iceberg::table::Table;
use lakeshore_api::Result;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use tokio_util::task::AbortOnDropHandle;

use crate::error::{ice, internal, io};
use crate::schema::widen;

/// A live committed row found for a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LiveRow {
    /// Data file path.
    pub path: Arc<str>,
    /// Row position in the file.
    pub pos: i64,
    /// The data file's partition.
    pub partition: Struct,
    /// The data file's partition spec id.
    pub spec_id: i32,
}

/// An encoded key (arrow-row format of the key columns); keys up to 16 bytes, such as
/// any integer key, live inline without a heap allocation.
pub type Key = smallvec::SmallVec<[u8; 16]>;

/// A set of keys, hashed with a fast seeded hash (keys are hashed once per row written
/// and once per row scanned in a lookup).
pub type KeySet = foldhash::HashSet<Key>;

/// What to look up: encoded keys. Shared by the scans of several files at once.
pub struct KeyQuery {
    /// Encoded keys.
    pub keys: KeySet,
    /// Encoder of the key columns, in key order.
    pub converter: RowConverter,
    /// Key column names, in key order.
    pub columns: Vec<String>,
    /// Their Arrow types in the table's current schema.
    pub types: Vec<arrow_schema::DataType>,
    /// Field id of the first key column (for min/max pruning).
    pub first_key_field: i32,
    /// Integer keys, sorted, when the key is a single integer column (enables pruning).
    pub int_keys: Option<Vec<i64>>,
    /// The same integer keys as a set, to test scanned values without re-encoding them.
    pub int_set: Option<foldhash::HashSet<i64>>,
}

struct Candidate {
    path: Arc<str>,
    partition: Struct,
    spec_id: i32,
}

struct DeleteFile {
    path: String,
    partition: Struct,
    spec_id: i32,
    lower: Option<Datum>,
    upper: Option<Datum>,
}

fn as_i64(d: &Datum) -> Option<i64> {
    match d.literal() {
        PrimitiveLiteral::Long(v) => Some(*v),
        PrimitiveLiteral::Int(v) => Some(*v as i64),
        _ => None,
    }
}

fn may_contain(sorted: &[i64], lower: Option<i64>, upper: Option<i64>) -> bool {
    let (Some(lo), Some(hi)) = (lower, upper) else {
        return true;
    };
    let i = sorted.partition_point(|k| *k < lo);
    i < sorted.len() && sorted[i] <= hi
}

/// Candidate files whose keys are scanned at once: decoding runs on every core, and on
/// object storage the reads overlap.
const SCAN_CONCURRENCY: usize = 4;

/// Find the live rows of `query.keys` in the table's current snapshot.
pub async fn find_live_rows(table: &Table, query: &Arc<KeyQuery>) -> Result<Vec<LiveRow>> {
    let Some(snapshot) = table.metadata().current_snapshot().cloned() else {
        return Ok(Vec::new());
    };
    if query.keys.is_empty() {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let file_io = table.file_io();
    let list = crate::cache::manifest_list(table, &snapshot).await?;
    let mut candidates = Vec::new();
    let mut delete_files = Vec::new();
    for manifest in list.entries() {
        let m = crate::cache::manifest(file_io, manifest).await?;
        for entry in m.entries() {
            if entry.status() == ManifestStatus::Deleted {
                continue;
            }
            let f = entry.data_file();
            match f.content_type() {
                DataContentType::Data => {
                    if let Some(keys) = &query.int_keys {
                        let lo = f
                            .lower_bounds()
                            .get(&query.first_key_field)
                            .and_then(as_i64);
                        let hi = f
                            .upper_bounds()
                            .get(&query.first_key_field)
                            .and_then(as_i64);
                        if !may_contain(keys, lo, hi) {
                            continue;
                        }
                    }
                    candidates.push(Candidate {
                        path: Arc::from(f.file_path()),
                        partition: f.partition().clone(),
                        spec_id: manifest.partition_spec_id,
                    });
                }
                DataContentType::PositionDeletes => delete_files.push(DeleteFile {
                    path: f.file_path().to_string(),
                    partition: f.partition().clone(),
                    spec_id: manifest.partition_spec_id,
                    lower: f
                        .lower_bounds()
                        .get(&RESERVED_FIELD_ID_DELETE_FILE_PATH)
                        .cloned(),
                    upper: f
                        .upper_bounds()
                        .get(&RESERVED_FIELD_ID_DELETE_FILE_PATH)
                        .cloned(),
                }),
                // Equality deletes are never written by lakeshore; a foreign writer's are
                // not applied here (documented limitation).
                DataContentType::EqualityDeletes => {}
            }
        }
    }

    let planned = started.elapsed();
    let mut found = scan_candidates(file_io, &candidates, query).await?;
    let scanned = started.elapsed();
    if !found.is_empty() {
        let deleted = deleted_positions(file_io, &found, &delete_files).await?;
        found.retain(|r| !deleted.contains(&(r.path.clone(), r.pos)));
    }
    tracing::debug!(
        keys = query.keys.len(),
        candidates = candidates.len(),
        delete_files = delete_files.len(),
        found = found.len(),
        plan_ms = planned.as_millis() as u64,
        scan_ms = (scanned - planned).as_millis() as u64,
        deletes_ms = (started.elapsed() - scanned).as_millis() as u64,
        "key lookup"
    );
    Ok(found)
}

/// The positions of the looked-up keys in `candidates`, in file order; the files are
/// scanned [`SCAN_CONCURRENCY`] at a time.
async fn scan_candidates(
    file_io: &FileIO,
    candidates: &[Candidate],
    query: &Arc<KeyQuery>,
) -> Result<Vec<LiveRow>> {
    // Collected first: a stream over borrowing closures is not Send for every lifetime.
    let scans: Vec<_> = candidates
        .iter()
        .map(|c| {
            let (file_io, path, query) = (file_io.clone(), c.path.clone(), query.clone());
            async move { scan_keys(&file_io, &path, &query).await }
        })
        .collect();
    let mut scans = futures::stream::iter(scans)
        // A failed scan drops the others' handles, which stops them.
        .map(|scan| AbortOnDropHandle::new(tokio::spawn(scan)))
        .buffered(SCAN_CONCURRENCY);
    let mut found = Vec::new();
    for c in candidates {
        let positions = scans
            .next()
            .await
            .ok_or_else(|| internal("a key scan is missing"))?
            .map_err(|e| internal(format!("a key scan failed: {e}")))??;
        for pos in positions {
            found.push(LiveRow {
                path: c.path.clone(),
                pos,
                partition: c.partition.clone(),
                spec_id: c.spec_id,
            });
        }
    }
    Ok(found)
}

/// A Parquet reader over one of the table's files.
pub async fn open_parquet(
    file_io: &FileIO,
    path: &str,
) -> Result<ParquetRecordBatchStreamBuilder<ArrowFileReader>> {
    let input = file_io.new_input(path).map_err(ice)?;
    let meta = input.metadata().await.map_err(ice)?;
    let reader = ArrowFileReader::new(meta, input.reader().await.map_err(ice)?);
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| io(path, e))
}

/// Positions of `path` whose key is among the looked-up keys.
async fn scan_keys(file_io: &FileIO, path: &str, query: &KeyQuery) -> Result<Vec<i64>> {
    let builder = open_parquet(file_io, path).await?;
    let arrow_schema = builder.schema().clone();
    let mut leaves = Vec::new();
    for name in &query.columns {
        let idx = arrow_schema
            .index_of(name)
            .map_err(|_| internal(format!("{path}: key column {name} is missing")))?;
        leaves.push(idx);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), leaves.iter().copied());
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| io(path, e))?;
    let mut positions = Vec::new();
    let mut offset = 0i64;
    while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
        // Files written before a key column was widened hold the narrower type.
        let columns: Vec<_> = query
            .columns
            .iter()
            .zip(&query.types)
            .map(|(n, t)| batch.column_by_name(n).map(|c| widen(c.clone(), t)))
            .collect::<Option<_>>()
            .ok_or_else(|| internal(format!("{path}: key column missing from batch")))?;
        match (&query.int_set, columns[0].as_primitive_opt::<Int64Type>()) {
            (Some(set), Some(values)) if values.null_count() == 0 => {
                for (i, v) in values.values().iter().enumerate() {
                    if set.contains(v) {
                        positions.push(offset + i as i64);
                    }
                }
            }
            _ => {
                let rows = query
                    .converter
                    .convert_columns(&columns)
                    .map_err(|e| io(path, e))?;
                for (i, row) in rows.iter().enumerate() {
                    if query.keys.contains(row.as_ref()) {
                        positions.push(offset + i as i64);
                    }
                }
            }
        }
        offset += batch.num_rows() as i64;
    }
    Ok(positions)
}

/// The found rows that live position deletes already remove. Only the found positions
/// are kept in memory while the delete files stream past, so memory is bounded by the
/// checkpoint's keys, not by the table's delete history.
async fn deleted_positions(
    file_io: &FileIO,
    found: &[LiveRow],
    delete_files: &[DeleteFile],
) -> Result<HashSet<(Arc<str>, i64)>> {
    // Found positions per data file path.
    let mut wanted: HashMap<&str, HashSet<i64>> = HashMap::new();
    let mut partitions: HashSet<(i32, &Struct)> = HashSet::new();
    for r in found {
        wanted.entry(&r.path).or_default().insert(r.pos);
        partitions.insert((r.spec_id, &r.partition));
    }
    let mut deleted = HashSet::new();
    for d in delete_files {
        if !partitions.contains(&(d.spec_id, &d.partition)) {
            continue;
        }
        let bound = |d: &Option<Datum>| match d.as_ref().map(|d| d.literal()) {
            Some(PrimitiveLiteral::String(s)) => Some(s.clone()),
            _ => None,
        };
        let (lower, upper) = (bound(&d.lower), bound(&d.upper));
        let in_bounds = |p: &str| {
            lower.as_deref().is_none_or(|lo| p >= lo) && upper.as_deref().is_none_or(|hi| p <= hi)
        };
        if !wanted.keys().any(|p| in_bounds(p)) {
            continue;
        }
        let mut stream = open_parquet(file_io, &d.path)
            .await?
            .build()
            .map_err(|e| io(&d.path, e))?;
        while let Some(batch) = stream.try_next().await.map_err(|e| io(&d.path, e))? {
            let file_paths = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| internal("position delete file_path is not a string column"))?;
            let pos = batch.column(1).as_primitive::<Int64Type>();
            // Delete files are sorted by path: look each run of one path up once.
            let mut current: Option<(&str, Option<&HashSet<i64>>)> = None;
            for i in 0..batch.num_rows() {
                let path = file_paths.value(i);
                let positions = match current {
                    Some((p, positions)) if p == path => positions,
                    _ => {
                        let positions = wanted.get(path);
                        current = Some((path, positions));
                        positions
                    }
                };
                if let Some(positions) = positions
                    && positions.contains(&pos.value(i))
                {
                    deleted.insert((Arc::from(path), pos.value(i)));
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_needs_a_key_inside_the_bounds() {
        let keys = [3, 10, 42];
        assert!(may_contain(&keys, Some(0), Some(3)));
        assert!(may_contain(&keys, Some(11), Some(42)));
        assert!(!may_contain(&keys, Some(11), Some(41)));
        assert!(!may_contain(&keys, Some(43), Some(100)));
        assert!(may_contain(&keys, None, Some(1)));
    }
}
