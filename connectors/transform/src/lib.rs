//! Transforms: shaping each table's change batches between the source and the router.
//!
//! A [`TransformSpec`] (one `[[transform]]` of a pipeline file) names the tables it
//! applies to and how their rows are shaped: which columns are kept, masks, a filter,
//! computed columns, metadata columns and the key. [`TableTransform`] is one spec
//! compiled for one table's schema; [`Transformed`] wraps a [`lakeshore_api::Source`]
//! so that the engine only ever sees shaped tables, batches and schema changes.
//!
//! Every row keeps its [`lakeshore_api::Op`]; the filter turns an update that leaves it
//! into a delete of the key (an update that enters it is an upsert already), so a table
//! under a filter stays exactly the filtered source table.

use std::fmt;
use std::sync::Arc;

pub use lakeshore_api::glob_match;
use lakeshore_api::{ColumnFilter, ColumnRule};

mod clock;
pub mod expr;
mod mask;
mod source;
mod table;

pub use clock::Clock;
pub use source::Transformed;
pub use table::TableTransform;

/// One `[[transform]]`: how the rows of the tables it matches are shaped.
#[derive(Clone, Default)]
pub struct TransformSpec {
    /// Glob over source table names (`*` matches any run of characters).
    pub tables: String,
    /// Globs of the source columns to keep; `None` keeps every column (and every column
    /// added later).
    pub columns: Option<Vec<String>>,
    /// Globs of source columns to leave out.
    pub exclude: Vec<String>,
    /// Globs of source columns read in the source's text form.
    pub as_text: Vec<String>,
    /// Masks by output column name, in the order written.
    pub masks: Vec<(String, Mask)>,
    /// SQL condition a row must meet to be in the lake.
    pub filter: Option<String>,
    /// Computed columns: name and SQL expression, in the order written. A name that is
    /// a source column replaces that column.
    pub compute: Vec<(String, String)>,
    /// The lake table's key, replacing the source's.
    pub key: Option<Vec<String>>,
    /// Metadata columns added to every row, in the order written.
    pub metadata: Vec<Meta>,
    /// How the changes land: every change as a row, or removals as markers.
    pub mode: Mode,
    /// In a changelog, the old image of every update as an `update_before` row before
    /// it (`[sink] before_images`).
    pub before_images: bool,
}

/// How a table's changes land in the lake (`[sink] mode`, `[sink] soft_delete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The lake table holds the source table's rows (upsert or append, as the sink says).
    #[default]
    Mirror,
    /// Every change is appended as a row: `_op` says what happened (`truncate` too),
    /// `_seq` orders the rows, the lake table has no key (`mode = "changelog"`).
    Changelog,
    /// Deleted rows stay, with `_deleted = true` and `_deleted_at` (`soft_delete = true`).
    SoftDelete,
}

impl fmt::Debug for TransformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Masks hold the hash salt, which is a secret: only their kinds are shown.
        f.debug_struct("TransformSpec")
            .field("tables", &self.tables)
            .field("columns", &self.columns)
            .field("exclude", &self.exclude)
            .field("masks", &self.masks)
            .field("filter", &self.filter)
            .field("compute", &self.compute)
            .field("key", &self.key)
            .field("metadata", &self.metadata)
            .field("mode", &self.mode)
            .finish()
    }
}

impl TransformSpec {
    /// The columns it keeps.
    pub fn column_rule(&self) -> ColumnRule {
        ColumnRule {
            tables: self.tables.clone(),
            columns: self.columns.clone(),
            exclude: self.exclude.clone(),
            deleted_values: self.mode == Mode::SoftDelete,
            before_images: self.before_images && self.mode == Mode::Changelog,
            as_text: self.as_text.clone(),
        }
    }
}

/// The columns the sources read for `specs`.
pub fn column_filter(specs: &[TransformSpec]) -> ColumnFilter {
    ColumnFilter::new(specs.iter().map(TransformSpec::column_rule).collect())
}

/// How one column's values are hidden.
#[derive(Clone, PartialEq)]
pub enum Mask {
    /// SHA-256 of the salt and the value's text, as 64 lowercase hex digits: the same
    /// value gives the same hash in every run, so joins on it still work.
    Hash {
        /// The secret mixed into every hash (from `${ENV}`).
        salt: Arc<str>,
    },
    /// Null, or this constant (the column becomes a string column).
    Redact(Option<String>),
    /// The first N characters of a string (bytes of a binary value).
    Truncate(usize),
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Hash { .. } => f.write_str("hash"),
            Mask::Redact(None) => f.write_str("redact"),
            Mask::Redact(Some(c)) => write!(f, "redact({c:?})"),
            Mask::Truncate(n) => write!(f, "truncate({n})"),
        }
    }
}

/// A metadata column: something about a row that is not one of its source values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// `_op`: `snapshot`, `insert`, `update`, `delete` (string; `truncate` in a changelog).
    Op,
    /// `_source_ts`: when the change was committed at the source (timestamp, UTC; null
    /// for snapshot rows).
    SourceTs,
    /// `_position`: the change's position at the source (string; null for snapshot
    /// rows).
    Position,
    /// `_source_table`: the source table's name as the source names it (string).
    SourceTable,
    /// `_ingested_at`: when lakeshore took the change from the source (timestamp, UTC);
    /// the commit that makes it visible follows within one checkpoint interval.
    IngestedAt,
    /// `_seq`: a number that grows with every change lakeshore takes from the source, in
    /// the source's order (long): the latest change of a key is the one with the highest
    /// `_seq`. Nanoseconds since the epoch at the time it was taken, raised where needed to
    /// stay above the one before, so it keeps growing across restarts.
    Seq,
}

impl Meta {
    /// Every metadata column, by name.
    pub const ALL: [Meta; 6] = [
        Meta::Op,
        Meta::SourceTs,
        Meta::Position,
        Meta::SourceTable,
        Meta::IngestedAt,
        Meta::Seq,
    ];

    /// The column's name.
    pub fn name(self) -> &'static str {
        match self {
            Meta::Op => "_op",
            Meta::SourceTs => "_source_ts",
            Meta::Position => "_position",
            Meta::SourceTable => "_source_table",
            Meta::IngestedAt => "_ingested_at",
            Meta::Seq => "_seq",
        }
    }

    /// The metadata column called `name`.
    pub fn by_name(name: &str) -> Option<Meta> {
        Meta::ALL.into_iter().find(|m| m.name() == name)
    }

    /// True for columns only sources that record each row's origin can fill
    /// ([`lakeshore_api::Source::record_origin`]).
    pub fn needs_origin(self) -> bool {
        matches!(self, Meta::SourceTs | Meta::Position)
    }
}

/// The transform that applies to source table `table`: the first whose glob matches.
pub fn spec_for<'s>(specs: &'s [TransformSpec], table: &str) -> Option<&'s TransformSpec> {
    specs.iter().find(|s| glob_match(&s.tables, table))
}
