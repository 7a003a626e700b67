//! Parquet settings and the open-file limit every file-writing sink shares.

use std::collections::HashSet;
use std::hash::Hash;

use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Parquet codec of data files (`compression` in the pipeline file: `"zstd"`,
/// `"zstd(N)"`, `"snappy"` or `"none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Codec {
    /// zstd at the given level.
    Zstd(i32),
    /// Snappy.
    Snappy,
    /// No compression.
    Uncompressed,
}

impl Default for Codec {
    /// zstd level 1, the pipeline file's default (ARCHITECTURE.md, "Parquet").
    fn default() -> Self {
        Codec::Zstd(1)
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "zstd" => Ok(Codec::Zstd(1)),
            "snappy" => Ok(Codec::Snappy),
            "none" | "uncompressed" => Ok(Codec::Uncompressed),
            t => t
                .strip_prefix("zstd(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| (1..=22).contains(n))
                .map(Codec::Zstd)
                .ok_or_else(|| {
                    format!(
                        "unknown compression \"{t}\"; write \"zstd\", \"zstd(N)\" with N in \
                         1..=22, \"snappy\" or \"none\""
                    )
                }),
        }
    }
}

impl TryFrom<String> for Codec {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// Upper bound of a Parquet data page and of a column's dictionary, in bytes.
const PAGE_BYTES: usize = 128 << 10;

/// The Arrow field metadata key Iceberg reads as a column's `doc` (and writes back).
pub const FIELD_DOC: &str = "doc";

/// The `doc` of a column written by the `"hash"` mask.
pub const HASHED_DOC: &str = "SHA-256 of the source value and the pipeline's hash_salt, lowercase hex (lakeshore mask \"hash\")";

/// Dictionary bound of a hashed column: a hash is 64 bytes of hex that zstd halves at
/// best, so a column of few distinct values (ids, countries) is much cheaper to write and
/// read as dictionary indices; 1 MiB holds 15,000 distinct hashes per row group. A hashed
/// column has no min/max statistics: hashes are uniformly spread, so its bounds prune
/// nothing, and comparing every 64-byte value twice cost 6% of a masked pipeline's time.
const HASHED_DICTIONARY_BYTES: usize = 1 << 20;

/// Parquet writer properties for `codec` and `row_group_bytes`; `hashed` names the
/// top-level columns written by the `"hash"` mask (see [`HASHED_DICTIONARY_BYTES`]). Row groups are bounded in
/// bytes (not rows), so a writer's buffer is the same size for narrow and wide tables.
/// Data pages and dictionaries are capped at 128 KiB (parquet's default is 1 MiB): on
/// nexmark 10M this writes 15% smaller files 25% faster with 10% less peak memory and the
/// same DuckDB scan time, because high-cardinality strings fall back to plain encoding,
/// which zstd compresses better than dictionary indices (docs/benchmarks.md).
pub fn writer_properties<'a>(
    codec: Codec,
    row_group_bytes: usize,
    hashed: impl IntoIterator<Item = &'a str>,
) -> WriterProperties {
    let compression = match codec {
        Codec::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default()),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Uncompressed => Compression::UNCOMPRESSED,
    };
    let builder = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_max_row_group_bytes(Some(row_group_bytes))
        .set_data_page_size_limit(PAGE_BYTES)
        .set_dictionary_page_size_limit(PAGE_BYTES);
    hashed
        .into_iter()
        .fold(builder, |b, column| {
            b.set_column_dictionary_page_size_limit(
                ColumnPath::from(column),
                HASHED_DICTIONARY_BYTES,
            )
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None)
        })
        .build()
}

/// Open files a table writer starts with before it closes the least recently written one.
pub const FIRST_OPEN_FILES_LIMIT: usize = 16;

/// How many files of one table a writer keeps open: each holds a row group and its
/// columns' encoders, so memory follows the open files, not the partitions written.
///
/// The limit starts at [`FIRST_OPEN_FILES_LIMIT`] (or `max_open_files`, if lower). Past
/// it, the least recently written file closes. That suits a backfill in time order,
/// whose old partitions are never written again. When a partition closed that way is
/// written again in the same checkpoint, the data spreads over more partitions than the
/// limit (e.g. `bucket[64]` in every batch), and closing would only make small files:
/// the limit doubles, up to `max_open_files`.
#[derive(Debug)]
pub struct OpenFilesLimit<K> {
    limit: usize,
    max: usize,
    /// Partitions whose file closed early in the open checkpoint.
    closed_early: HashSet<K>,
}

/// What [`OpenFilesLimit::before_open`] found out about the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitChange {
    /// Unchanged.
    Same,
    /// A partition closed early is written again: the limit rose to this.
    Raised(usize),
    /// A partition closed early is written again at `max_open_files`: files will be small.
    AtMax,
}

impl<K: Hash + Eq> OpenFilesLimit<K> {
    /// A limit for `max_open_files` (at least 1).
    pub fn new(max_open_files: usize) -> Self {
        let max = max_open_files.max(1);
        OpenFilesLimit {
            limit: FIRST_OPEN_FILES_LIMIT.min(max),
            max,
            closed_early: HashSet::new(),
        }
    }

    /// A file for `partition` is about to open while `open` files are open: how many of
    /// the least recently written to close first, and whether the limit changed.
    pub fn before_open(&mut self, partition: &K, open: usize) -> (usize, LimitChange) {
        let mut change = LimitChange::Same;
        if self.closed_early.remove(partition) {
            if self.limit < self.max {
                self.limit = (self.limit * 2).min(self.max);
                change = LimitChange::Raised(self.limit);
                // The other files closed under the old limit count once, not once each.
                self.closed_early.clear();
            } else {
                change = LimitChange::AtMax;
            }
        }
        ((open + 1).saturating_sub(self.limit), change)
    }

    /// `partition`'s file was closed to make room.
    pub fn closed_early(&mut self, partition: K) {
        self.closed_early.insert(partition);
    }

    /// Every file closed at a checkpoint: a partition written after it opens a new file
    /// anyway.
    pub fn checkpoint(&mut self) {
        self.closed_early.clear();
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files opened in order, closing the least recently written past the limit; returns
    /// how many files were closed early and whether the limit was hit at its maximum.
    fn run(
        limit: &mut OpenFilesLimit<u32>,
        writes: impl IntoIterator<Item = u32>,
    ) -> (usize, bool) {
        let mut open: Vec<u32> = Vec::new(); // least recently written first
        let (mut closed, mut at_max) = (0, false);
        for p in writes {
            if let Some(i) = open.iter().position(|o| *o == p) {
                open.remove(i);
            } else {
                let (close, change) = limit.before_open(&p, open.len());
                at_max |= change == LimitChange::AtMax;
                for victim in open.drain(..close).collect::<Vec<_>>() {
                    limit.closed_early(victim);
                    closed += 1;
                }
            }
            open.push(p);
            assert!(open.len() <= limit.limit());
        }
        (closed, at_max)
    }

    #[test]
    fn time_ordered_partitions_stay_at_the_first_limit() {
        let mut limit = OpenFilesLimit::new(128);
        // 1,000 hours, each written 5 times in a row, never again.
        let (closed, _) = run(&mut limit, (0..1000).flat_map(|h| [h; 5]));
        assert_eq!(limit.limit(), FIRST_OPEN_FILES_LIMIT);
        assert_eq!(closed, 1000 - FIRST_OPEN_FILES_LIMIT);
    }

    #[test]
    fn partitions_written_again_raise_the_limit_up_to_the_maximum() {
        let mut limit = OpenFilesLimit::new(128);
        // 64 buckets in every batch: the limit grows to 64, then nothing closes.
        run(&mut limit, (0..5).flat_map(|_| 0..64));
        assert_eq!(limit.limit(), 64);
        assert_eq!(run(&mut limit, (0..10).flat_map(|_| 0..64)), (0, false));
        // 300 buckets: the limit stops at the maximum and says so.
        let (_, at_max) = run(&mut limit, (0..3).flat_map(|_| 0..300));
        assert_eq!(limit.limit(), 128);
        assert!(at_max);
    }

    #[test]
    fn a_low_maximum_is_the_limit_and_checkpoints_forget() {
        let mut limit = OpenFilesLimit::new(4);
        assert_eq!(limit.limit(), 4);
        assert_eq!(limit.before_open(&9, 4), (1, LimitChange::Same));
        limit.closed_early(1);
        limit.checkpoint();
        assert_eq!(limit.before_open(&1, 3), (0, LimitChange::Same));
    }
}
