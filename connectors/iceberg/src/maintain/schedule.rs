//! When the daemon compacts a table on its own: a read-cost estimate per table, kept up
//! to date by the sink's own commits (no catalog request of its own), and the choice of
//! the table whose reads have grown the most.
//!
//! **The model.** A full scan reads every row of the data files, every deleted position
//! (to skip its row), and pays a fixed cost per file opened (data or delete file):
//! `cost = data rows + deleted rows + FILE_ROWS × files`. The same rows written once
//! cost `live rows + FILE_ROWS × ⌈bytes / target file size⌉`. Their ratio is the
//! table's estimated read cost; compaction brings it back to about 1. `FILE_ROWS`, the
//! rows a file's opening is worth, was measured with DuckDB's `iceberg_scan`
//! (`bench.sh always-fast`).
//!
//! **The choice.** A table is due when its ratio reaches `compact_at` and its excess
//! (cost − ideal) is worth at least [`MIN_EXCESS_FILES`] files: a table of a thousand rows
//! is not compacted at every checkpoint. Of the due tables, the one with the largest
//! excess goes first. A table that has had no commit for a while ([`Due::quiet`]) is due
//! at 5 % over: tables that stop changing end compacted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iceberg::spec::{DataContentType, DataFile, Snapshot};

use super::plan::TableStats;

/// Rows a file's opening costs a reader, as measured.
pub const FILE_ROWS: f64 = 40_000.0;

/// The least excess, in files, that makes a table due.
pub const MIN_EXCESS_FILES: f64 = 8.0;

/// What a table's current snapshot holds, as far as a scan's cost goes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Live data files.
    pub data_files: u64,
    /// Live delete files.
    pub delete_files: u64,
    /// Rows in the data files.
    pub data_rows: u64,
    /// Rows of the delete files.
    pub deleted_rows: u64,
    /// Bytes of the data files.
    pub data_bytes: u64,
}

impl Shape {
    /// The totals of `snapshot`'s summary (`total-*`), when it has them.
    pub fn of(snapshot: &Snapshot) -> Option<Shape> {
        let props = &snapshot.summary().additional_properties;
        let n = |k: &str| props.get(k).and_then(|v| v.parse::<u64>().ok());
        let deleted = n("total-position-deletes")? + n("total-equality-deletes").unwrap_or(0);
        Some(Shape {
            data_files: n("total-data-files")?,
            delete_files: n("total-delete-files")?,
            data_rows: n("total-records")?,
            deleted_rows: deleted,
            // Delete files are small beside data files; the total is close enough.
            data_bytes: n("total-files-size").unwrap_or(0),
        })
    }

    /// From a maintenance run's file statistics.
    pub fn from_stats(s: &TableStats) -> Shape {
        Shape {
            data_files: s.data_files as u64,
            delete_files: s.delete_files as u64,
            data_rows: s.data_rows,
            deleted_rows: s.deleted_rows,
            data_bytes: s.data_bytes,
        }
    }

    /// With `files` added (data and delete files alike).
    pub fn plus(mut self, files: &[&DataFile]) -> Shape {
        for f in files {
            match f.content_type() {
                DataContentType::Data => {
                    self.data_files += 1;
                    self.data_rows += f.record_count();
                    self.data_bytes += f.file_size_in_bytes();
                }
                _ => {
                    self.delete_files += 1;
                    self.deleted_rows += f.record_count();
                }
            }
        }
        self
    }

    /// A scan's cost, in rows.
    pub fn cost(&self) -> f64 {
        (self.data_rows + self.deleted_rows) as f64
            + FILE_ROWS * (self.data_files + self.delete_files) as f64
    }

    /// The cost of the same rows written once into files of `target_file_size`, in at
    /// least `floor_files` files (what compaction left last time: one file a partition).
    pub fn ideal(&self, target_file_size: u64, floor_files: u64) -> f64 {
        let live = self.data_rows.saturating_sub(self.deleted_rows) as f64;
        let files = self
            .data_bytes
            .div_ceil(target_file_size.max(1))
            .max(floor_files)
            .max(1);
        live + FILE_ROWS * files as f64
    }

    /// Estimated read cost against the same rows written once.
    pub fn ratio(&self, target_file_size: u64, floor_files: u64) -> f64 {
        self.cost() / self.ideal(target_file_size, floor_files)
    }
}

/// When a table is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    /// Estimated ratio at least this.
    pub ratio: f64,
    /// Excess worth at least this many files.
    pub min_excess_files: f64,
    /// No change for at least this long.
    pub quiet_for: Duration,
}

impl Due {
    /// Due at `compact_at` while changes come.
    pub fn busy(compact_at: f64) -> Due {
        Due {
            ratio: compact_at,
            min_excess_files: MIN_EXCESS_FILES,
            quiet_for: Duration::ZERO,
        }
    }

    /// Due once quiet for `quiet_for`, at 5 % over and an excess of two files (a large
    /// table with a trickle of changes is not rewritten at every one).
    pub fn quiet(quiet_for: Duration) -> Due {
        Due {
            ratio: 1.05,
            min_excess_files: 2.0,
            quiet_for,
        }
    }

    /// Due at any excess of a file (a bounded run's end).
    pub fn settle() -> Due {
        Due {
            ratio: 1.0,
            min_excess_files: 1.0,
            quiet_for: Duration::ZERO,
        }
    }
}

/// What is known of one table.
#[derive(Debug, Clone, Copy)]
struct Known {
    shape: Shape,
    /// Its last commit.
    changed: Instant,
    /// Data files its last maintenance left: no fewer are expected of the next.
    floor_files: u64,
}

/// The tables' shapes, as the sink committed them, with when they last changed.
#[derive(Debug, Default)]
pub struct ReadCosts {
    tables: Mutex<HashMap<String, Known>>,
    changed: tokio::sync::Notify,
}

impl ReadCosts {
    /// `table` (name without namespace) now has `shape`, after a commit.
    pub fn set(&self, table: &str, shape: Shape) {
        let mut tables = self.lock();
        let floor_files = tables.get(table).map_or(1, |k| k.floor_files);
        tables.insert(
            table.to_string(),
            Known {
                shape,
                changed: Instant::now(),
                floor_files,
            },
        );
        drop(tables);
        self.changed.notify_one();
    }

    /// `table` has `shape` after maintenance (which is not a change of its rows: the time
    /// of its last commit stays); with `floor`, compaction got it down to its data files
    /// (a scheduled round without conflicts).
    pub fn maintained(&self, table: &str, shape: Shape, floor: bool) {
        let mut tables = self.lock();
        let known = tables.get(table).copied();
        let floor_files = if floor {
            shape.data_files
        } else {
            known.map_or(1, |k| k.floor_files)
        };
        tables.insert(
            table.to_string(),
            Known {
                shape,
                changed: known.map_or_else(Instant::now, |k| k.changed),
                floor_files,
            },
        );
    }

    /// The estimated ratio of `table`, if known.
    pub fn ratio(&self, table: &str, target_file_size: u64) -> Option<f64> {
        let tables = self.lock();
        let k = tables.get(table)?;
        Some(k.shape.ratio(target_file_size, k.floor_files))
    }

    /// Wait until a table's shape changes (returns at once if one changed since the last
    /// wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The due table with the largest excess, with its estimated ratio; tables for which
    /// `skip` says so are passed over.
    pub fn worst(
        &self,
        when: Due,
        target_file_size: u64,
        skip: impl Fn(&str, &Shape) -> bool,
    ) -> Option<(String, f64)> {
        let tables = self.lock();
        let mut due: Vec<(&String, f64, f64)> = tables
            .iter()
            .filter(|(name, k)| !skip(name, &k.shape) && k.changed.elapsed() >= when.quiet_for)
            .filter_map(|(name, k)| {
                let (cost, ideal) = (
                    k.shape.cost(),
                    k.shape.ideal(target_file_size, k.floor_files),
                );
                let excess = cost - ideal;
                let due = cost >= when.ratio * ideal && excess >= when.min_excess_files * FILE_ROWS;
                due.then_some((name, excess, cost / ideal))
            })
            .collect();
        due.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        due.first().map(|(n, _, r)| ((*n).clone(), *r))
    }

    /// How many tables it knows.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it knows no table.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The shape of `table`, if known.
    pub fn shape(&self, table: &str) -> Option<Shape> {
        self.lock().get(table).map(|k| k.shape)
    }

    /// Forget `table` until the sink commits to it again.
    pub fn forget(&self, table: &str) {
        self.lock().remove(table);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn shape(files: u64, deletes: u64, rows: u64, deleted: u64) -> Shape {
        Shape {
            data_files: files,
            delete_files: deletes,
            data_rows: rows,
            deleted_rows: deleted,
            data_bytes: rows * 30,
        }
    }

    #[test]
    fn a_table_written_once_costs_what_it_ideally_costs() {
        let s = shape(1, 0, 1_000_000, 0);
        assert!((s.ratio(128 * MB, 1) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn small_files_and_deletes_raise_the_estimate() {
        // A million rows after 60 one-second checkpoints of 5,000 changes: a data and a
        // delete file each, 3,000 rows deleted each.
        let s = shape(61, 60, 1_300_000, 180_000);
        let r = s.ratio(128 * MB, 1);
        assert!(r > 3.0, "{r}");
        // After two of them: 10 to 25 % slower.
        let r = shape(3, 2, 1_010_000, 6_000).ratio(128 * MB, 1);
        assert!(r > 1.1 && r < 1.25, "{r}");
    }

    #[test]
    fn the_worst_due_table_goes_first_and_small_tables_wait() {
        let costs = ReadCosts::default();
        costs.set("clean", shape(1, 0, 5_000_000, 0));
        costs.set("tiny", shape(4, 3, 1_000, 10));
        costs.set("busy", shape(40, 40, 1_000_000, 100_000));
        costs.set("busier", shape(80, 80, 1_000_000, 100_000));
        assert_eq!(
            costs
                .worst(Due::busy(1.25), 128 * MB, |_, _| false)
                .unwrap()
                .0,
            "busier"
        );
        costs.set("busier", shape(1, 0, 900_000, 0));
        assert_eq!(
            costs
                .worst(Due::busy(1.25), 128 * MB, |_, _| false)
                .unwrap()
                .0,
            "busy"
        );
        costs.set("busy", shape(1, 0, 900_000, 0));
        // "tiny" costs 8x its ideal, but its excess is under eight files' worth.
        assert!(
            costs
                .worst(Due::busy(1.25), 128 * MB, |_, _| false)
                .is_none()
        );
        costs.set("tiny", shape(12, 12, 1_000, 10));
        assert_eq!(
            costs
                .worst(Due::busy(1.25), 128 * MB, |_, _| false)
                .unwrap()
                .0,
            "tiny"
        );
        assert!(
            costs
                .worst(Due::busy(1.25), 128 * MB, |t, _| t == "tiny")
                .is_none()
        );
        // Quiet for long enough, a table is due at an excess of a file.
        costs.set("tiny", shape(2, 1, 1_000, 10));
        assert!(
            costs
                .worst(Due::busy(1.25), 128 * MB, |_, _| false)
                .is_none()
        );
        assert!(
            costs
                .worst(Due::quiet(Duration::from_secs(3600)), 128 * MB, |_, _| {
                    false
                })
                .is_none()
        );
        assert_eq!(
            costs
                .worst(Due::settle(), 128 * MB, |_, _| false)
                .unwrap()
                .0,
            "tiny"
        );
        costs.forget("tiny");
        assert!(costs.worst(Due::settle(), 128 * MB, |_, _| false).is_none());
    }

    #[test]
    fn files_compaction_cannot_merge_raise_the_ideal() {
        // Twelve partitions, one file each after maintenance: no excess left to remove.
        let costs = ReadCosts::default();
        costs.maintained("days", shape(12, 0, 120_000, 0), true);
        let none = |_: &str, _: &Shape| false;
        assert!(costs.worst(Due::settle(), 128 * MB, none).is_none());
        // Then twelve checkpoints' small files and deletes: due again.
        costs.set("days", shape(24, 12, 130_000, 5_000));
        assert!(costs.worst(Due::busy(1.25), 128 * MB, none).is_some());
        let r = costs.ratio("days", 128 * MB).unwrap();
        assert!(r > 1.25 && r < 6.0, "{r}");
    }

    #[test]
    fn added_files_count_by_their_content() {
        use iceberg::spec::{DataFileBuilder, DataFileFormat, Struct};
        let file = |content, rows| {
            DataFileBuilder::default()
                .content(content)
                .file_path("f.parquet".into())
                .file_format(DataFileFormat::Parquet)
                .partition(Struct::empty())
                .record_count(rows)
                .file_size_in_bytes(100)
                .build()
                .unwrap()
        };
        let (d, p) = (
            file(DataContentType::Data, 10),
            file(DataContentType::PositionDeletes, 3),
        );
        let s = Shape::default().plus(&[&d, &p, &p]);
        assert_eq!(
            s,
            Shape {
                data_files: 1,
                delete_files: 2,
                data_rows: 10,
                deleted_rows: 6,
                data_bytes: 100,
            }
        );
    }
}
