//! Compaction planning, as pure code: the live files of a snapshot by partition
//! (`inventory`), what each partition needs (`action`), and the run's plan (`choose`),
//! cut into commits (`commits`).

use std::collections::HashMap;

use iceberg::spec::{DataContentType, DataFile, ManifestStatus, Struct};
use iceberg::table::Table;
use lakeshore_api::Result;

use crate::error::internal;

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
    /// Bytes of the data files.
    pub data_bytes: u64,
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
    let inv = inventory(table, &snapshot).await?;
    for p in inv.parts.values() {
        s.data_files += p.data.len();
        s.data_rows += p.data.iter().map(|e| e.file.record_count()).sum::<u64>();
        s.data_bytes += p
            .data
            .iter()
            .map(|e| e.file.file_size_in_bytes())
            .sum::<u64>();
    }
    let deletes = inv
        .parts
        .values()
        .flat_map(|p| p.position_deletes.iter().chain(&p.equality_deletes));
    for e in deletes.chain(inv.global.iter().map(|(_, e)| e)) {
        s.delete_files += 1;
        s.deleted_rows += e.file.record_count();
    }
    Ok(s)
}

/// A live file of the base snapshot.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) file: DataFile,
    pub(super) seq: i64,
}

pub(super) type PartitionKey = (i32, Struct);

/// The live files of a partition.
#[derive(Default)]
pub(super) struct Partition {
    pub(super) data: Vec<Entry>,
    pub(super) position_deletes: Vec<Entry>,
    /// Equality deletes of a partitioned spec, scoped to this partition.
    pub(super) equality_deletes: Vec<Entry>,
    /// Delete files that compacting this partition makes obsolete: its own position
    /// and equality deletes, and global ones no other partition needs (set when chosen).
    pub(super) obsolete: Vec<String>,
}

impl Partition {
    /// The lowest data sequence number of its data files.
    pub(super) fn min_seq(&self) -> i64 {
        self.data.iter().map(|e| e.seq).min().unwrap_or(i64::MAX)
    }
}

/// The live files of a snapshot.
pub(super) struct Inventory {
    pub(super) parts: HashMap<PartitionKey, Partition>,
    /// Equality deletes of an unpartitioned spec, with their own key: they apply to every
    /// partition.
    pub(super) global: Vec<(PartitionKey, Entry)>,
}

impl Inventory {
    /// The equality deletes that still apply to a data file of `p` (a higher sequence
    /// number than its oldest), with their sequence numbers.
    pub(super) fn equality_for<'a>(&'a self, p: &'a Partition) -> Vec<(&'a DataFile, i64)> {
        let oldest = p.min_seq();
        p.equality_deletes
            .iter()
            .chain(self.global.iter().map(|(_, e)| e))
            .filter(|e| e.seq > oldest)
            .map(|e| (&e.file, e.seq))
            .collect()
    }

    /// Global equality deletes that no data file of a partition other than `key` needs
    /// (all of `key` itself: `None`).
    pub(super) fn globals_needed_only_by(&self, key: Option<&PartitionKey>) -> Vec<String> {
        self.global
            .iter()
            .filter(|(k, e)| {
                key.is_none_or(|key| k == key)
                    && self
                        .parts
                        .iter()
                        .filter(|(other, _)| key != Some(*other))
                        .all(|(_, p)| p.min_seq() >= e.seq)
            })
            .map(|(_, e)| e.file.file_path().to_string())
            .collect()
    }
}

/// What compaction does to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Rewrite its data files with every delete applied.
    Rewrite,
    /// Keep its data files; merge its deletes into one position-delete file.
    MergeDeletes,
}

/// The live files of `snapshot`, by partition.
pub(super) async fn inventory(
    table: &Table,
    snapshot: &iceberg::spec::SnapshotRef,
) -> Result<Inventory> {
    let list = crate::cache::manifest_list(table, snapshot).await?;
    let mut parts: HashMap<PartitionKey, Partition> = HashMap::new();
    let mut global = Vec::new();
    for manifest in list.entries() {
        let unpartitioned = table
            .metadata()
            .partition_spec_by_id(manifest.partition_spec_id)
            .ok_or_else(|| {
                internal(format!(
                    "a manifest names partition spec {}, which the table does not have",
                    manifest.partition_spec_id
                ))
            })?
            .is_unpartitioned();
        let m = crate::cache::manifest(table.file_io(), manifest).await?;
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
                DataContentType::EqualityDeletes if unpartitioned => {
                    global.push(((manifest.partition_spec_id, f.partition().clone()), entry));
                }
                DataContentType::EqualityDeletes => p.equality_deletes.push(entry),
            }
        }
    }
    Ok(Inventory { parts, global })
}

/// What `when` asks for partition `p` (with `equality` applying to it), if anything: a
/// rewrite when many rows are deleted or many files are small; else a merge of its
/// delete files when they are many or some of them are equality deletes it can drop;
/// else a rewrite when global equality deletes it cannot drop apply (only rewritten
/// files escape them).
fn action(
    p: &Partition,
    equality: &[(&DataFile, i64)],
    when: &CompactWhen,
    target_file_size: u64,
) -> Option<Action> {
    if p.data.is_empty() {
        return None;
    }
    let rows: u64 = p.data.iter().map(|e| e.file.record_count()).sum();
    let deleted: u64 = p
        .position_deletes
        .iter()
        .map(|e| e.file.record_count())
        .chain(equality.iter().map(|(f, _)| f.record_count()))
        .sum();
    let small = p
        .data
        .iter()
        .filter(|e| e.file.file_size_in_bytes() < target_file_size / 4 * 3)
        .count();
    let own_equality = p.obsolete.len() - p.position_deletes.len();
    let deletes = p.obsolete.len();
    if (deleted > 0 && deleted as f64 >= when.deleted_ratio * rows.max(1) as f64)
        || (small > 1 && small >= when.small_files)
    {
        Some(Action::Rewrite)
    } else if own_equality > 0 || (deletes > 1 && deletes >= when.delete_files) {
        Some(Action::MergeDeletes)
    } else if !equality.is_empty() {
        Some(Action::Rewrite)
    } else {
        None
    }
}

/// What compaction does with `inv`: global equality deletes no data file needs any more
/// (dropped on their own), and the partitions to rewrite and to merge deletes of, taken
/// out of `inv` (each with the delete files it makes obsolete). Decided on the whole
/// inventory before chosen partitions leave it.
pub(super) fn choose(inv: &mut Inventory, when: &CompactWhen, target_file_size: u64) -> Chosen {
    let mut chosen = Chosen {
        unneeded: inv.globals_needed_only_by(None),
        ..Default::default()
    };
    let keys: Vec<PartitionKey> = inv.parts.keys().cloned().collect();
    let mut plans = Vec::new();
    for key in keys {
        let p = &inv.parts[&key];
        let mut obsolete: Vec<String> = p
            .position_deletes
            .iter()
            .chain(&p.equality_deletes)
            .map(|e| e.file.file_path().to_string())
            .collect();
        obsolete.extend(
            inv.globals_needed_only_by(Some(&key))
                .into_iter()
                .filter(|g| !chosen.unneeded.contains(g)),
        );
        plans.push((key, obsolete));
    }
    for (key, obsolete) in plans {
        let p = inv.parts.get_mut(&key).expect("listed above");
        p.obsolete = obsolete;
        let p = &inv.parts[&key];
        let equality = inv.equality_for(p);
        let Some(act) = action(p, &equality, when, target_file_size) else {
            continue;
        };
        let p = inv.parts.remove(&key).expect("listed above");
        match act {
            Action::Rewrite => chosen.rewrite.push((key, p)),
            Action::MergeDeletes => chosen.merge.push((key, p)),
        }
    }
    chosen
}

/// The plan of one compaction run.
#[derive(Default)]
pub(super) struct Chosen {
    /// Global equality deletes no data file needs.
    pub unneeded: Vec<String>,
    /// Partitions to rewrite.
    pub rewrite: Vec<(PartitionKey, Partition)>,
    /// Partitions whose deletes are merged into one file.
    pub merge: Vec<(PartitionKey, Partition)>,
}

/// `parts` in a stable order (and so a stable file layout across runs), cut into
/// commits of at most [`ROWS_PER_COMMIT`] data rows each.
pub(super) fn commits(
    mut parts: Vec<(PartitionKey, Partition)>,
) -> Vec<Vec<(PartitionKey, Partition)>> {
    parts.sort_by_key(|(k, _)| format!("{}:{:?}", k.0, k.1));
    let mut jobs: Vec<Vec<(PartitionKey, Partition)>> = vec![Vec::new()];
    let mut job_rows = 0u64;
    for (key, p) in parts {
        if job_rows >= ROWS_PER_COMMIT {
            jobs.push(Vec::new());
            job_rows = 0;
        }
        job_rows += p.data.iter().map(|e| e.file.record_count()).sum::<u64>();
        jobs.last_mut().expect("one job at least").push((key, p));
    }
    jobs.retain(|j| !j.is_empty());
    jobs
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{DataFileBuilder, DataFileFormat, Literal};

    use super::*;

    fn entry(path: &str, content: DataContentType, partition: &Struct, seq: i64) -> Entry {
        let mut b = DataFileBuilder::default();
        b.content(content)
            .file_path(path.into())
            .file_format(DataFileFormat::Parquet)
            .partition(partition.clone())
            .record_count(10)
            .file_size_in_bytes(1000);
        if content == DataContentType::EqualityDeletes {
            b.equality_ids(Some(vec![1]));
        }
        Entry {
            file: b.build().unwrap(),
            seq,
        }
    }

    /// An unpartitioned partition `u` (data of sequence number `u_seq`, if any), two
    /// partitions of spec 1 (data of `a_seq` and `b_seq`), and a global equality delete
    /// of sequence number 4.
    fn table(u_seq: Option<i64>, a_seq: i64, b_seq: i64) -> Inventory {
        let u: PartitionKey = (0, Struct::empty());
        let a = Struct::from_iter([Some(Literal::string("a"))]);
        let b = Struct::from_iter([Some(Literal::string("b"))]);
        let mut parts = HashMap::new();
        let mut part = |key: PartitionKey, path: &str, seq: i64| {
            let p = Partition {
                data: vec![entry(path, DataContentType::Data, &key.1, seq)],
                ..Default::default()
            };
            parts.insert(key, p);
        };
        if let Some(s) = u_seq {
            part(u.clone(), "u.parquet", s);
        }
        part((1, a), "a.parquet", a_seq);
        part((1, b), "b.parquet", b_seq);
        let g = entry("g.parquet", DataContentType::EqualityDeletes, &u.1, 4);
        Inventory {
            parts,
            global: vec![(u, g)],
        }
    }

    fn applies(inv: &Inventory, partition: &str) -> bool {
        let p = inv
            .parts
            .values()
            .find(|p| p.data[0].file.file_path().starts_with(partition))
            .unwrap();
        !inv.equality_for(p).is_empty()
    }

    #[test]
    fn global_equality_deletes_apply_to_older_files_everywhere_and_go_when_none_needs_them() {
        let u: PartitionKey = (0, Struct::empty());
        let inv = table(Some(1), 3, 5);
        assert!(applies(&inv, "u") && applies(&inv, "a") && !applies(&inv, "b"));
        // Partition a still needs it: compacting u must not drop it.
        assert!(inv.globals_needed_only_by(Some(&u)).is_empty());
        assert!(inv.globals_needed_only_by(None).is_empty());
        // Only u's own data needs it: compacting u drops it.
        let inv = table(Some(1), 6, 5);
        assert_eq!(inv.globals_needed_only_by(Some(&u)), vec!["g.parquet"]);
        assert!(inv.globals_needed_only_by(None).is_empty());
        // No data file needs it (every one was rewritten since): dropped on its own.
        let inv = table(Some(7), 6, 5);
        assert_eq!(inv.globals_needed_only_by(None), vec!["g.parquet"]);
        let inv = table(None, 6, 5);
        assert_eq!(inv.globals_needed_only_by(None), vec!["g.parquet"]);
    }

    #[test]
    fn global_deletes_a_partition_cannot_drop_ask_for_a_rewrite() {
        let inv = table(Some(1), 3, 5);
        let when = CompactWhen::default();
        for (path, expected) in [("a", Some(Action::Rewrite)), ("b", None)] {
            let p = inv
                .parts
                .values()
                .find(|p| p.data[0].file.file_path().starts_with(path))
                .unwrap();
            let eq = inv.equality_for(p);
            assert_eq!(action(p, &eq, &when, 1 << 20), expected, "{path}");
        }
    }
}
