//! The change model and the connector traits of lakeshore.
//!
//! This crate owns the vocabulary every connector speaks and does no I/O:
//! - [`ChangeBatch`]: an Arrow batch in a table's schema plus one [`Op`] per row;
//! - [`SourceEvent`]: the ordered stream a [`Source`] produces (data and control events);
//! - [`SourcePosition`]: an opaque, serialisable, totally ordered resume token;
//! - [`Source`] and [`Sink`] / [`TableWriter`]: the two-phase contract the engine drives.
//!
//! The engine depends on this crate; connectors depend on nothing else of lakeshore.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use serde::{Deserialize, Serialize};

mod error;
pub mod files;
mod ledger;
mod position;
pub mod read_ahead;
mod storage;
pub mod url;
pub use error::{Context, Error, ErrorKind, Result};
pub use ledger::{Acquired, Ledger};
pub use storage::{OBJECT_STORE_SCHEMES, StorageOptions, open_store};

/// What happened to one row.
///
/// The sink folds these per primary key (upsert mode) or writes the after-images
/// (append mode). `UpdateBefore` and `Delete` are identified by their key columns; a
/// `Delete` carries the row's other values where the source sends them (the MySQL binlog,
/// PostgreSQL under `REPLICA IDENTITY FULL`), else they are null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Op {
    /// A new row. In upsert mode a row already written for the same key within the
    /// open checkpoint is replaced; rows committed earlier are not looked up (sources
    /// emit `Insert` only for keys they know to be new, e.g. snapshot rows).
    Insert = 0,
    /// The old image of an updated row: removes the live row with this key.
    UpdateBefore = 1,
    /// The new image of an updated row: replaces the live row with this key, if any.
    UpdateAfter = 2,
    /// Removes the live row with this key.
    Delete = 3,
}

impl Op {
    /// True for operations that remove the current row of the key.
    pub fn removes(self) -> bool {
        matches!(self, Op::UpdateBefore | Op::Delete)
    }
}

/// A source's resume token: opaque to the engine, ordered and serialisable.
///
/// Sources encode their own notion (binlog file+pos or GTID set, LSN, Kafka offsets,
/// generator sequence) into the JSON value; the engine stores it in checkpoint records
/// and Iceberg snapshot summaries and hands it back on restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcePosition(pub serde_json::Value);

impl SourcePosition {
    /// A position made of a single sequence number (generators, single-partition logs).
    pub fn sequence(n: u64) -> Self {
        SourcePosition(serde_json::json!({ "seq": n }))
    }

    /// The sequence number of a position made by [`SourcePosition::sequence`].
    pub fn as_sequence(&self) -> Option<u64> {
        self.0.get("seq").and_then(|v| v.as_u64())
    }

    /// A source's own position type, read back from a checkpoint. A position some other
    /// kind of source wrote (the pipeline's source was changed under its name) is a
    /// configuration error naming `source`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, source: &str) -> Result<T> {
        serde_json::from_value(self.0.clone()).map_err(|e| {
            Error::config(format!(
                "the checkpoint's source position is not a {source} position; was the \
                     pipeline's source changed? Use a new pipeline name"
            ))
            .with_source(e)
        })
    }

    /// A shared source's position: one position per unit it owns (see [`Ledger`]).
    pub fn from_units(units: BTreeMap<String, serde_json::Value>) -> Self {
        SourcePosition(serde_json::json!({ "units": units }))
    }

    /// The units of a position made by [`SourcePosition::from_units`].
    pub fn units(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0.get("units")?.as_object()
    }

    /// Compact JSON, as stored in the snapshot summary `lakeshore.source-position`.
    pub fn to_json_string(&self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl PartialOrd for SourcePosition {
    /// Sequence positions compare by number; other encodings are compared by the source
    /// that made them, so the engine never needs to order them itself.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self.as_sequence(), other.as_sequence()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ if self == other => Some(Ordering::Equal),
            _ => None,
        }
    }
}

/// The shape of one source table, declared before its first batch.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Source-qualified name (`db.table`, `schema.table`, or a generator table name).
    pub name: String,
    /// Arrow schema of the rows; fields are nullable unless the source guarantees values.
    pub schema: SchemaRef,
    /// Primary-key column names, in key order; empty for keyless (append-only) tables.
    pub key: Vec<String>,
}

/// Which source columns a pipeline reads: what its transforms keep (`columns`,
/// `exclude`). A database source never selects the others — a user without privileges
/// on them still works, and a column of a type lakeshore cannot map does not refuse its
/// table — except key columns, which it needs to follow rows.
#[derive(Debug, Clone, Default)]
pub struct ColumnFilter {
    rules: Arc<[ColumnRule]>,
}

/// The columns kept of the tables one transform matches.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnRule {
    /// Glob over source table names.
    pub tables: String,
    /// Globs of the columns kept; `None` keeps every column.
    pub columns: Option<Vec<String>>,
    /// Globs of the columns left out.
    pub exclude: Vec<String>,
    /// A delete must carry the row's values, not only its key (`soft_delete` keeps them):
    /// a source that sends them only when configured so (PostgreSQL's `REPLICA IDENTITY
    /// FULL`) refuses the table until it is.
    pub deleted_values: bool,
    /// Every update must carry the row's old values (a changelog's `update_before`
    /// rows): sources send the old image of each update, not only of key changes, and
    /// PostgreSQL needs `REPLICA IDENTITY FULL` as for `deleted_values`.
    pub before_images: bool,
    /// Globs of the columns read in the source's text form (`as_text`), whatever their
    /// type — for types lakeshore cannot map.
    pub as_text: Vec<String>,
}

impl ColumnRule {
    /// Whether `column` is kept.
    pub fn keeps(&self, column: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|c| c.iter().any(|g| glob_match(g, column)))
            && !self.exclude.iter().any(|g| glob_match(g, column))
    }
}

impl ColumnFilter {
    /// The rules in order: a table takes the first whose `tables` matches it.
    pub fn new(rules: Vec<ColumnRule>) -> Self {
        ColumnFilter {
            rules: Arc::from(rules),
        }
    }

    /// A column named without a glob in a rule's `columns` or `exclude` that no table
    /// the rule applies to has (`tables`: each table's name and every column it has):
    /// a misspelt exclusion would let the column into the lake.
    pub fn check_named<'t>(
        &self,
        tables: impl IntoIterator<Item = (&'t str, &'t [String])> + Clone,
    ) -> Result<()> {
        for (i, rule) in self.rules.iter().enumerate() {
            let matched: Vec<(&str, &[String])> = tables
                .clone()
                .into_iter()
                .filter(|(t, _)| {
                    self.rules.iter().position(|r| glob_match(&r.tables, t)) == Some(i)
                })
                .collect();
            let Some((first, first_columns)) = matched.first() else {
                continue;
            };
            let named = rule
                .columns
                .iter()
                .flatten()
                .chain(&rule.exclude)
                .chain(&rule.as_text);
            for c in named.filter(|c| !c.contains('*')) {
                if !matched.iter().any(|(_, cols)| cols.iter().any(|x| x == c)) {
                    return Err(Error::config(format!(
                        "transform of tables {}: no table it matches has a column {c} \
                             (names are case-sensitive); {first} has: {}",
                        rule.tables,
                        first_columns.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether the deletes of source table `table` must carry the row's values
    /// ([`ColumnRule::deleted_values`]).
    pub fn needs_deleted_values(&self, table: &str) -> bool {
        self.rules
            .iter()
            .find(|r| glob_match(&r.tables, table))
            .is_some_and(|r| r.deleted_values || r.before_images)
    }

    /// Whether every update of source table `table` must come with its old image
    /// ([`ColumnRule::before_images`]).
    pub fn needs_before_images(&self, table: &str) -> bool {
        self.rules
            .iter()
            .find(|r| glob_match(&r.tables, table))
            .is_some_and(|r| r.before_images)
    }

    /// Whether column `column` of source table `table` is read in the source's text
    /// form ([`ColumnRule::as_text`]).
    pub fn as_text(&self, table: &str, column: &str) -> bool {
        self.rules
            .iter()
            .find(|r| glob_match(&r.tables, table))
            .is_some_and(|r| r.as_text.iter().any(|g| glob_match(g, column)))
    }

    /// Whether column `column` of source table `table` is read.
    pub fn reads(&self, table: &str, column: &str) -> bool {
        self.rules
            .iter()
            .find(|r| glob_match(&r.tables, table))
            .is_none_or(|r| r.keeps(column))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// A batch of changes to one table, columnar from the reader on.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// Source-qualified table name, as in [`TableSchema::name`].
    pub table: Arc<str>,
    /// The rows, in the table's schema.
    pub rows: RecordBatch,
    /// One operation per row; empty means every row is an [`Op::Insert`].
    pub ops: Arc<[Op]>,
    /// Where the rows come from, for the metadata columns of a transform.
    pub origin: Origin,
}

/// Where a batch's rows come from: what a transform's metadata columns (`_op`,
/// `_source_ts`, `_position`) show.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The rows were read by a snapshot (a consistent read of the table), not taken from
    /// a change stream.
    pub snapshot: bool,
    /// Per row, from sources asked to record it ([`Source::record_origin`]): the time the
    /// change was committed at the source (`Timestamp(Microsecond, "UTC")`, null when
    /// unknown, e.g. snapshot rows).
    pub source_ts: Option<ArrayRef>,
    /// Per row, likewise: the change's position at the source as text (LSN, binlog
    /// `file:position`, Kafka `partition:offset`).
    pub position: Option<ArrayRef>,
}

/// Gathers each row's [`Origin`] while a source builds a batch.
#[derive(Debug, Default)]
pub struct OriginBuilder {
    source_ts: Vec<Option<i64>>,
    position: arrow_array::builder::StringBuilder,
}

impl OriginBuilder {
    /// The next row's commit time at the source (µs since the epoch) and position.
    pub fn push(&mut self, source_ts: Option<i64>, position: &str) {
        self.source_ts.push(source_ts);
        self.position.append_value(position);
    }

    /// The next row's origin: its transaction's commit time (µs) and position, when
    /// known.
    pub fn push_txn(&mut self, txn: Option<&(i64, String)>) {
        let (ts, position) = txn.map_or((None, ""), |(ts, p)| (Some(*ts), p.as_str()));
        self.push(ts, position);
    }

    /// The origin of the rows pushed.
    pub fn finish(mut self) -> Origin {
        let ts = arrow_array::TimestampMicrosecondArray::from(self.source_ts)
            .with_timezone(ORIGIN_TIME_ZONE);
        Origin {
            snapshot: false,
            source_ts: Some(Arc::new(ts)),
            position: Some(Arc::new(self.position.finish())),
        }
    }
}

/// The time zone of [`Origin::source_ts`] (as the sources write `timestamptz`).
pub const ORIGIN_TIME_ZONE: &str = "+00:00";

impl ChangeBatch {
    /// A batch of inserts.
    pub fn inserts(table: Arc<str>, rows: RecordBatch) -> Self {
        ChangeBatch {
            table,
            rows,
            ops: Arc::from(Vec::new()),
            origin: Origin::default(),
        }
    }

    /// A batch of rows read by a snapshot.
    pub fn snapshot(table: Arc<str>, rows: RecordBatch) -> Self {
        ChangeBatch {
            origin: Origin {
                snapshot: true,
                ..Origin::default()
            },
            ..ChangeBatch::inserts(table, rows)
        }
    }

    /// The operation of row `i`.
    pub fn op(&self, i: usize) -> Op {
        self.ops.get(i).copied().unwrap_or(Op::Insert)
    }

    /// True when every row is an insert.
    pub fn is_insert_only(&self) -> bool {
        self.ops.iter().all(|op| *op == Op::Insert)
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    /// The rows that exist after the batch: inserts and update-afters (what an append
    /// sink writes); removals are dropped.
    pub fn after_images(&self) -> Result<RecordBatch> {
        if self.is_insert_only() {
            return Ok(self.rows.clone());
        }
        let keep: arrow_array::BooleanArray = (0..self.num_rows())
            .map(|i| Some(!self.op(i).removes()))
            .collect();
        arrow_select::filter::filter_record_batch(&self.rows, &keep)
            .map_err(|e| Error::internal(e.to_string()))
    }
}

/// One item of a source's ordered output stream.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// Data for one table.
    Batch(ChangeBatch),
    /// Every event before this one is covered by checkpoint `id`, whose resume position
    /// is `position`. Emitted by the source only at a consistent point (never inside a
    /// source transaction), after [`Source::request_barrier`].
    Barrier {
        /// Checkpoint id asked for by the engine.
        id: u64,
        /// Where to resume so that nothing before the barrier is read again.
        position: SourcePosition,
    },
    /// The schema of a table changed; later batches of the table use the new schema.
    SchemaChange(TableSchema),
    /// Every row of the table before this event is gone (SQL `TRUNCATE`); later batches
    /// of the table start from an empty table.
    Truncate(String),
    /// A table's snapshot phase started.
    SnapshotStarted(String),
    /// A table's snapshot phase finished; changes follow.
    SnapshotDone(String),
    /// Event time has progressed to this many microseconds since the epoch: the source
    /// expects no more rows older than that.
    Watermark(i64),
    /// Nothing happened; lets the engine handle barriers and acks while a source idles.
    Idle,
    /// The source cannot go on with this table (input it cannot read or follow, such as
    /// a column type change the lake cannot take) and produces nothing more of it. The
    /// engine fails the pipeline with `message`, or with `on_table_error = "isolate"`
    /// parks the table and goes on with the others.
    TableFailed {
        /// Source table name.
        table: String,
        /// What happened and what to do, naming the column.
        message: String,
    },
    /// The source needs a checkpoint now rather than at the next interval (a shared
    /// source is about to give partitions up and waits for the ack of the next barrier).
    CheckpointNow,
}

/// A source of changes.
///
/// Guarantees the engine relies on:
/// - **Ordered:** events come out in source order; a [`SourceEvent::Barrier`] separates
///   everything before its position from everything after.
/// - **Replayable:** opened at a position taken from one of its barriers, the source
///   produces exactly the events that followed that barrier, in the same order.
/// - **Consistent barriers:** a barrier is emitted only between source transactions.
///
/// What the engine guarantees back: [`Source::ack`] is called only after every event up
/// to that position is durable and visible in the lake, so the source may release
/// upstream resources (replication slot WAL, broker offsets) up to it.
#[async_trait::async_trait]
pub trait Source: Send {
    /// The tables this source will produce, known before the first event.
    fn tables(&self) -> Vec<TableSchema>;

    /// The next event, or `None` when a bounded source is exhausted. The engine handles
    /// barrier requests and acks between calls, so an unbounded source must return at
    /// least every few seconds ([`SourceEvent::Idle`] when nothing happens).
    async fn next_event(&mut self) -> Result<Option<SourceEvent>>;

    /// Ask for `Barrier { id, .. }` at the next consistent point. A source that is always
    /// consistent between events emits it as the very next event. An exhausted bounded
    /// source still emits a requested barrier (its final position) before `None`.
    fn request_barrier(&mut self, id: u64);

    /// Everything up to `position` is committed in the lake.
    async fn ack(&mut self, position: &SourcePosition) -> Result<()>;

    /// The engine is done with the source; every ack has been delivered. Sources release
    /// their connections here and make sure the last acked position reached upstream.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
    /// Total number of events for a bounded source, for progress reporting.
    fn size_hint(&self) -> Option<u64> {
        None
    }

    /// Events produced so far (in the unit of [`Source::size_hint`]), for progress.
    fn progress(&self) -> Option<u64> {
        None
    }

    /// How far the source's read position is behind the source's head, as last measured;
    /// `None` for sources without a head (generators).
    fn lag(&self) -> Option<Lag> {
        None
    }

    /// How the connection to the source is protected; `None` for sources without one.
    fn transport(&self) -> Option<Transport> {
        None
    }

    /// Record each row's commit time and position at the source in
    /// [`ChangeBatch::origin`] from now on (a transform shows them as `_source_ts` and
    /// `_position`). Returns false for sources that cannot.
    fn record_origin(&mut self) -> bool {
        false
    }

    /// Read source table `table` again from its start while changes keep flowing: emit
    /// [`SourceEvent::Truncate`] for it, then a new snapshot of it chunk by chunk, merged
    /// with the change stream as at the first start; the resume position covers the
    /// re-read, so a restart goes on with it. Sources without a snapshot refuse.
    fn resnapshot(&mut self, table: &str) -> Result<()> {
        Err(Error::unsupported(format!(
            "cannot read {table} again: only database sources (postgres, mysql) take \
                 snapshots"
        )))
    }
}

/// How a source's connection is protected on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// TLS, and the server's certificate was checked against a CA.
    Verified,
    /// TLS without a certificate check (anyone in the path could pose as the server).
    Unverified,
    /// No TLS: passwords and rows cross the network readable.
    Plain,
}

impl Transport {
    /// The label used in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Verified => "verified",
            Transport::Unverified => "unverified",
            Transport::Plain => "plain",
        }
    }
}

/// How far a source's read position is behind the source's head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lag {
    /// Age of the newest change read, in seconds; 0 when nothing is left to read.
    pub seconds: Option<f64>,
    /// What is left to read, in `unit`.
    pub behind: Option<u64>,
    /// The unit of `behind`: `"bytes"` (WAL, binlog) or `"messages"` (Kafka).
    pub unit: &'static str,
}

/// Everything a sink needs to know about one table it will write.
#[derive(Debug, Clone)]
pub struct TableTarget {
    /// The source table's schema and key.
    pub source: TableSchema,
    /// Name of the table in the lake (without namespace).
    pub name: String,
    /// Partition transforms as written in the pipeline file, e.g. `day(created_at)`.
    pub partitioning: Vec<String>,
}

/// Files of one table for one checkpoint, durable but not yet visible.
///
/// The payload is sink-specific and must be serialisable: the engine writes it into the
/// checkpoint record so that recovery can commit it without the writer that made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingCommit {
    /// Lake table name.
    pub table: String,
    /// Checkpoint this commit belongs to.
    pub checkpoint_id: u64,
    /// Rows added by this commit (data rows; deletes are not counted).
    pub added_rows: u64,
    /// Sink-specific description of the files.
    pub payload: serde_json::Value,
    /// True when committing it changes nothing (no file, no delete, no truncation), so
    /// the sink makes no commit for it. Records written before this field count as
    /// changes.
    #[serde(default)]
    pub empty: bool,
}

/// What identifies a commit in the lake, written into its metadata.
#[derive(Debug, Clone)]
pub struct CommitContext {
    /// Pipeline name (`lakeshore.pipeline`).
    pub pipeline: String,
    /// Checkpoint id (`lakeshore.checkpoint-id`).
    pub checkpoint_id: u64,
    /// Source position of the checkpoint (`lakeshore.source-position`); each lake table's
    /// commit gets [`CommitContext::for_lake_table`].
    pub position: SourcePosition,
    /// How many lake tables this checkpoint changes (`lakeshore.checkpoint-tables`):
    /// recovery from the lake alone (the state store lost) checks that each of them
    /// holds the checkpoint before resuming from it.
    pub tables: usize,
}

impl CommitContext {
    /// The context of checkpoint `checkpoint_id` whose pending commits are `pending`.
    pub fn new(
        pipeline: &str,
        checkpoint_id: u64,
        position: &SourcePosition,
        pending: &[PendingCommit],
    ) -> Self {
        CommitContext {
            pipeline: pipeline.to_string(),
            checkpoint_id,
            position: position.clone(),
            tables: pending.iter().filter(|p| !p.empty).count(),
        }
    }

    /// The context one lake table's commit records: its position keeps only the row data
    /// of its source tables `own` ([`SourcePosition::for_lake_table`]); unless `whole`,
    /// only their entries of the per-table maps too
    /// ([`SourcePosition::part_for_lake_table`]). One commit of each checkpoint records
    /// the position whole.
    pub fn for_lake_table(&self, own: &[&str], whole: bool) -> CommitContext {
        CommitContext {
            pipeline: self.pipeline.clone(),
            checkpoint_id: self.checkpoint_id,
            position: if whole {
                self.position.for_lake_table(|t| own.contains(&t))
            } else {
                self.position.part_for_lake_table(own)
            },
            tables: self.tables,
        }
    }
}

/// The newest commit one pipeline made to one lake table, as the lake records it.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeCommit {
    /// Lake table name.
    pub table: String,
    /// Checkpoint id of the commit.
    pub checkpoint_id: u64,
    /// Source position of that checkpoint.
    pub position: SourcePosition,
    /// Lake tables the checkpoint changed, when the commit says (older commits do not).
    pub tables: Option<usize>,
}

/// A two-phase transactional sink.
///
/// Guarantees the engine relies on:
/// - [`TableWriter::prepare`] returns only when the checkpoint's files are durable;
///   nothing is visible to readers yet.
/// - [`Sink::commit`] is **idempotent**: committing a checkpoint that is already in the
///   table is a no-op that returns `Ok(false)`. Recovery relies on this to re-commit the
///   pending files of the last checkpoint record after a crash.
/// - Commits of one table happen in checkpoint order; a commit never becomes visible
///   partially.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Create the table if it does not exist (an existing table is appended to, never
    /// recreated) and return a writer for it.
    async fn open_table(&self, target: &TableTarget) -> Result<Box<dyn TableWriter>>;

    /// Make the pending files visible in one atomic commit per table. Returns `false`
    /// when the table already holds this pipeline's checkpoint (nothing was done).
    async fn commit(&self, pending: &PendingCommit, ctx: &CommitContext) -> Result<bool>;

    /// True when its writers empty a table on [`TableWriter::truncate`] (a re-snapshot
    /// needs it).
    fn truncates(&self) -> bool {
        false
    }

    /// The newest commit of `pipeline` to each table of the sink (its namespace or root),
    /// read from the lake itself. The engine resumes from these when the state store
    /// lost its records or is behind the lake: the lake is the truth, state a cache.
    async fn last_commits(&self, _pipeline: &str) -> Result<Vec<LakeCommit>> {
        Ok(Vec::new())
    }
}

/// A checkpoint's pending commit, or the rest of the work that makes it.
pub enum Preparing {
    /// Prepared.
    Ready(PendingCommit),
    /// Finishes on its own, independent of the writer.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Result<PendingCommit>> + Send>>),
}

/// Writes one table's changes between two checkpoints.
#[async_trait::async_trait]
pub trait TableWriter: Send {
    /// Buffer or write a batch.
    async fn write(&mut self, batch: ChangeBatch) -> Result<()>;

    /// Close the open files of checkpoint `checkpoint_id` and describe them. The engine
    /// calls it only after the previous checkpoint's commit is visible, so writers that
    /// look up committed rows see everything before this checkpoint.
    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit>;

    /// [`prepare`](Self::prepare) in two parts: the writer closes the checkpoint's files
    /// and takes what the commit needs, and may hand back the slow rest (looking up the
    /// committed rows it replaces, writing delete files) as [`Preparing::Later`], which
    /// the engine runs while the writer already takes the next checkpoint's batches. The
    /// engine runs no other call on the writer but `write` and `watermark` until that
    /// future finished, and prepares the next checkpoint only after it is committed.
    async fn prepare_overlapped(&mut self, checkpoint_id: u64) -> Result<Preparing> {
        Ok(Preparing::Ready(self.prepare(checkpoint_id).await?))
    }

    /// True when the writer holds so much state for the open checkpoint (e.g. an index of
    /// the keys it wrote) that the engine should checkpoint now rather than at the next
    /// interval. Keeps memory bounded when rows arrive faster than the interval drains
    /// them, e.g. during a snapshot.
    fn wants_checkpoint(&self) -> bool {
        false
    }

    /// Event time reached `micros` (µs since the epoch): the source expects no more rows
    /// older than that. Sinks that close partitions by event time use it; the default
    /// ignores it.
    fn watermark(&mut self, _micros: i64) {}
    /// The source emptied the table: rows written before this call (committed or in the
    /// open checkpoint) are gone once the checkpoint commits; later batches start from an
    /// empty table.
    async fn truncate(&mut self) -> Result<()> {
        Err(Error::unsupported("this sink does not support TRUNCATE"))
    }

    /// The source table's schema changed; later batches use `schema`. Writers add new
    /// columns to the lake table (existing rows read them as null), keep dropped ones
    /// (null from then on), and refuse other changes with an error that names the table
    /// and the column.
    async fn evolve(&mut self, schema: &TableSchema) -> Result<()> {
        Err(Error::unsupported(format!(
            "table {}: this sink does not support schema changes",
            schema.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_filter_takes_the_first_matching_rule() {
        let rule = |tables: &str, columns: Option<&[&str]>, exclude: &[&str]| ColumnRule {
            tables: tables.into(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            deleted_values: tables == "shop.*",
            before_images: false,
            as_text: if tables == "shop.*" {
                vec!["geo*".into()]
            } else {
                Vec::new()
            },
        };
        let f = ColumnFilter::new(vec![
            rule("shop.orders_*", None, &["card*"]),
            rule("shop.*", Some(&["id", "name"]), &[]),
        ]);
        assert!(f.reads("shop.orders_1", "email"));
        assert!(!f.reads("shop.orders_1", "card_number"));
        assert!(f.reads("shop.users", "name"));
        assert!(!f.reads("shop.users", "email"));
        assert!(f.reads("other.t", "anything"));
        assert!(!f.needs_deleted_values("shop.orders_1"));
        assert!(f.needs_deleted_values("shop.users"));
        assert!(!f.needs_deleted_values("other.t"));
        assert!(f.as_text("shop.users", "geom") && !f.as_text("shop.users", "name"));
        assert!(!f.as_text("shop.orders_1", "geom"));
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (a, b) = (cols(&["id", "card_no"]), cols(&["id", "name"]));
        f.check_named([
            ("shop.orders_1", a.as_slice()),
            ("shop.users", b.as_slice()),
        ])
        .unwrap();
        let typo = ColumnFilter::new(vec![rule("shop.*", None, &["secert"])]);
        let e = typo
            .check_named([("shop.users", b.as_slice())])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("no table it matches has a column secert"),
            "{e}"
        );
    }

    #[test]
    fn sequence_positions_order_by_number() {
        let a = SourcePosition::sequence(9);
        let b = SourcePosition::sequence(10);
        assert!(a < b);
        assert_eq!(a.as_sequence(), Some(9));
        let json = serde_json::to_string(&b).unwrap();
        let back: SourcePosition = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn opaque_positions_are_unordered_unless_equal() {
        let a = SourcePosition(serde_json::json!({"lsn": "0/16B3748"}));
        let b = SourcePosition(serde_json::json!({"lsn": "0/16B3750"}));
        assert_eq!(a.partial_cmp(&a.clone()), Some(Ordering::Equal));
        assert_eq!(a.partial_cmp(&b), None);
    }

    #[test]
    fn missing_ops_mean_inserts() {
        let schema = Arc::new(arrow_schema::Schema::empty());
        let batch = ChangeBatch::inserts("t".into(), RecordBatch::new_empty(schema));
        assert_eq!(batch.op(5), Op::Insert);
        assert!(batch.is_insert_only());
        assert!(Op::Delete.removes() && Op::UpdateBefore.removes());
        assert!(!Op::UpdateAfter.removes());
    }
}
