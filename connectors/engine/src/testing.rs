//! Test doubles for the engine's protocol tests (feature `test-utils`): an in-memory sink
//! that keeps each table's rows by key and refuses to commit a checkpoint whose record is
//! not written, a scripted source whose position is the number of steps it emitted, and
//! a journal of barriers, commits and acks in the order they happened.
//!
//! Tables have two columns, `id` (the key) and `v`; a change is `(op, id, v)`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arrow_array::{Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use lakeshore_api::{
    ChangeBatch, CommitContext, Error, LakeCommit, Op, PendingCommit, Preparing, Result, Sink,
    Source, SourceEvent, SourcePosition, TableSchema, TableTarget, TableWriter,
};
use serde_json::json;

use crate::state::StateStore;
use crate::{Failpoints, PipelineSpec};

/// One change: operation, key, value.
pub type Change = (Op, i64, Option<i64>);

/// What a table's history holds: a change, or `None` for a truncation.
pub type Applied = Option<Change>;

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The source emitted barrier `id` after `seq` steps.
    Barrier { id: u64, seq: u64 },
    /// Checkpoint `checkpoint` of `table` became visible.
    Commit { checkpoint: u64, table: String },
    /// The source was acked up to `seq` steps.
    Ack { seq: u64 },
}

/// A shared, ordered log of [`Entry`]s.
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<Entry>>>);

impl Journal {
    fn push(&self, e: Entry) {
        lock(&self.0).push(e);
    }

    /// Everything so far.
    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.0).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The two-column schema every test table has.
pub fn table(name: &str) -> TableSchema {
    TableSchema {
        name: name.to_string(),
        schema: Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ])),
        key: vec!["id".into()],
    }
}

/// A spec whose source tables land in lake tables of the same name, checkpointing every
/// `interval`.
pub fn spec(name: &str, interval: Duration, failpoints: Option<Failpoints>) -> PipelineSpec {
    PipelineSpec {
        name: name.to_string(),
        commit_as: name.to_string(),
        checkpoint_interval: interval,
        route: Box::new(|t| (t.to_string(), false)),
        partitioning: BTreeMap::new(),
        default_partitioning: Vec::new(),
        isolate_tables: false,
        failpoints,
    }
}

/// A state store in memory.
pub fn memory_store(pipeline: &str) -> StateStore {
    StateStore::on(Arc::new(object_store::memory::InMemory::new()), pipeline)
}

/// Apply `changes` to `rows` by key, as an upsert sink does.
pub fn apply(rows: &mut BTreeMap<i64, Option<i64>>, changes: &[Change]) {
    for (op, id, v) in changes {
        if op.removes() {
            rows.remove(id);
        } else {
            rows.insert(*id, *v);
        }
    }
}

/// The lake as the sink holds it.
#[derive(Debug, Default)]
pub struct Lake {
    /// Rows by key, per table.
    pub tables: BTreeMap<String, BTreeMap<i64, Option<i64>>>,
    /// (table, checkpoint) of every commit made, in order: a repeat is a duplicate.
    pub applied: Vec<(String, u64)>,
    /// Every change committed to each table, in commit order: exactly-once means it
    /// equals the source's changes of the table, each once, in order.
    pub history: BTreeMap<String, Vec<Applied>>,
    /// The newest commit per (pipeline, table).
    newest: BTreeMap<(String, String), LakeCommit>,
}

/// An upsert sink in memory. A commit whose checkpoint record is not in `records` fails
/// (the record must come first); commits are idempotent per (pipeline, table,
/// checkpoint) like the real sinks'.
#[derive(Clone)]
pub struct MemorySink {
    /// The lake.
    pub lake: Arc<Mutex<Lake>>,
    journal: Journal,
    records: StateStore,
    /// Tables whose writers refuse every batch (unsupported input) after the first n.
    refuse: Vec<(String, usize)>,
    /// Changes each table's writers moved into pending commits.
    prepared: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Rows a writer holds before it asks for a checkpoint.
    budget: usize,
}

impl MemorySink {
    /// A sink checking commits against the records in `records`.
    pub fn new(journal: &Journal, records: &StateStore) -> Self {
        MemorySink {
            lake: Default::default(),
            journal: journal.clone(),
            records: records.clone(),
            refuse: Vec::new(),
            prepared: Default::default(),
            budget: usize::MAX,
        }
    }

    /// Writers of `table` refuse its rows as unsupported input.
    pub fn refusing(self, table: &str) -> Self {
        self.refusing_after(table, 0)
    }

    /// Writers of `table` take `batches` batches, then refuse the rest as unsupported.
    pub fn refusing_after(mut self, table: &str, batches: usize) -> Self {
        self.refuse.push((table.to_string(), batches));
        self
    }

    /// Changes of `table` its writers moved into pending commits.
    pub fn prepared(&self, table: &str) -> usize {
        lock(&self.prepared).get(table).copied().unwrap_or(0)
    }

    /// Writers ask for a checkpoint once they hold `rows` rows.
    pub fn with_budget(mut self, rows: usize) -> Self {
        self.budget = rows;
        self
    }

    /// The rows of `table`.
    pub fn rows(&self, table: &str) -> BTreeMap<i64, Option<i64>> {
        lock(&self.lake)
            .tables
            .get(table)
            .cloned()
            .unwrap_or_default()
    }

    /// Every change committed to `table`, in order.
    pub fn history(&self, table: &str) -> Vec<Applied> {
        lock(&self.lake)
            .history
            .get(table)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn open_table(&self, target: &TableTarget) -> Result<Box<dyn TableWriter>> {
        Ok(Box::new(MemoryWriter {
            table: target.name.clone(),
            changes: Vec::new(),
            refuse_after: self
                .refuse
                .iter()
                .find(|(t, _)| *t == target.name)
                .map(|(_, n)| *n),
            batches: 0,
            prepared: self.prepared.clone(),
            budget: self.budget,
        }))
    }

    async fn commit(&self, p: &PendingCommit, ctx: &CommitContext) -> Result<bool> {
        let recorded = self.records.latest().await?.map(|r| r.id);
        if recorded.is_none_or(|r| r < ctx.checkpoint_id) {
            return Err(Error::internal(format!(
                "checkpoint {} of {} committed before its record",
                ctx.checkpoint_id, p.table
            )));
        }
        let mut lake = lock(&self.lake);
        let key = (ctx.pipeline.clone(), p.table.clone());
        if p.empty
            || lake
                .newest
                .get(&key)
                .is_some_and(|c| c.checkpoint_id >= ctx.checkpoint_id)
        {
            return Ok(false);
        }
        let changes: Vec<Applied> = serde_json::from_value(p.payload.clone())
            .map_err(|e| Error::internal(e.to_string()))?;
        let rows = lake.tables.entry(p.table.clone()).or_default();
        for change in &changes {
            match change {
                Some(c) => apply(rows, std::slice::from_ref(c)),
                None => rows.clear(),
            }
        }
        lake.history
            .entry(p.table.clone())
            .or_default()
            .extend(changes);
        lake.applied.push((p.table.clone(), ctx.checkpoint_id));
        lake.newest.insert(
            key,
            LakeCommit {
                table: p.table.clone(),
                checkpoint_id: ctx.checkpoint_id,
                position: ctx.position.clone(),
                tables: Some(ctx.tables),
            },
        );
        self.journal.push(Entry::Commit {
            checkpoint: ctx.checkpoint_id,
            table: p.table.clone(),
        });
        Ok(true)
    }

    fn truncates(&self) -> bool {
        true
    }

    async fn last_commits(&self, pipeline: &str) -> Result<Vec<LakeCommit>> {
        Ok(lock(&self.lake)
            .newest
            .iter()
            .filter(|((p, _), _)| p == pipeline)
            .map(|(_, c)| c.clone())
            .collect())
    }
}

struct MemoryWriter {
    table: String,
    changes: Vec<Applied>,
    refuse_after: Option<usize>,
    batches: usize,
    prepared: Arc<Mutex<BTreeMap<String, usize>>>,
    budget: usize,
}

#[async_trait::async_trait]
impl TableWriter for MemoryWriter {
    async fn write(&mut self, batch: ChangeBatch) -> Result<()> {
        if self.refuse_after.is_some_and(|n| self.batches >= n) {
            return Err(Error::unsupported(format!(
                "table {}: refused by the test",
                self.table
            )));
        }
        let column = |i: usize| -> Result<&Int64Array> {
            batch
                .rows
                .column(i)
                .as_any()
                .downcast_ref()
                .ok_or_else(|| Error::internal("test tables have Int64 columns"))
        };
        let (ids, vs) = (column(0)?, column(1)?);
        self.batches += 1;
        for i in 0..batch.num_rows() {
            let v = (!vs.is_null(i)).then(|| vs.value(i));
            self.changes.push(Some((batch.op(i), ids.value(i), v)));
        }
        Ok(())
    }

    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit> {
        let changes = std::mem::take(&mut self.changes);
        *lock(&self.prepared).entry(self.table.clone()).or_default() += changes.len();
        Ok(PendingCommit {
            table: self.table.clone(),
            checkpoint_id,
            added_rows: changes.iter().flatten().filter(|c| !c.0.removes()).count() as u64,
            empty: changes.is_empty(),
            payload: json!(changes),
        })
    }

    /// Finishes later, as the Iceberg upsert writer does: the engine's overlapped path
    /// is what every engine test runs.
    async fn prepare_overlapped(&mut self, checkpoint_id: u64) -> Result<Preparing> {
        let pending = self.prepare(checkpoint_id).await?;
        Ok(Preparing::Later(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(pending)
        })))
    }

    fn wants_checkpoint(&self) -> bool {
        self.changes.len() >= self.budget
    }

    async fn truncate(&mut self) -> Result<()> {
        self.changes.push(None);
        Ok(())
    }
}

/// One step of a scripted source.
#[derive(Debug, Clone)]
pub enum Step {
    /// Changes to one table (one source transaction).
    Rows(String, Vec<Change>),
    /// The table was emptied.
    Truncate(String),
}

/// A source that plays `steps`; its position is the number of steps emitted, and a
/// barrier is emitted as the next event after it is asked for (every step is a
/// consistent point). Bounded: it ends after the last step; unbounded: it idles there.
pub struct ScriptedSource {
    tables: Vec<TableSchema>,
    steps: Arc<Vec<Step>>,
    next: usize,
    barrier: Option<u64>,
    bounded: bool,
    journal: Journal,
}

impl ScriptedSource {
    /// Play `steps` of `tables` from the position `resume` (from the start if `None`).
    pub fn new(
        tables: &[&str],
        steps: Arc<Vec<Step>>,
        resume: Option<&SourcePosition>,
        bounded: bool,
        journal: &Journal,
    ) -> Self {
        ScriptedSource {
            tables: tables.iter().map(|t| table(t)).collect(),
            steps,
            next: resume.and_then(SourcePosition::as_sequence).unwrap_or(0) as usize,
            barrier: None,
            bounded,
            journal: journal.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Source for ScriptedSource {
    fn tables(&self) -> Vec<TableSchema> {
        self.tables.clone()
    }

    async fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        if let Some(id) = self.barrier.take() {
            let seq = self.next as u64;
            self.journal.push(Entry::Barrier { id, seq });
            return Ok(Some(SourceEvent::Barrier {
                id,
                position: SourcePosition::sequence(seq),
            }));
        }
        let Some(step) = self.steps.get(self.next) else {
            if self.bounded {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            return Ok(Some(SourceEvent::Idle));
        };
        self.next += 1;
        Ok(Some(match step {
            Step::Rows(t, changes) => SourceEvent::Batch(batch(t, changes)),
            Step::Truncate(t) => SourceEvent::Truncate(t.clone()),
        }))
    }

    fn request_barrier(&mut self, id: u64) {
        self.barrier = Some(id);
    }

    async fn ack(&mut self, position: &SourcePosition) -> Result<()> {
        let seq = position.as_sequence().unwrap_or(0);
        self.journal.push(Entry::Ack { seq });
        Ok(())
    }
}

/// A change batch of test table `t`.
pub fn batch(t: &str, changes: &[Change]) -> ChangeBatch {
    let ids: Int64Array = changes.iter().map(|c| Some(c.1)).collect();
    let vs: Int64Array = changes.iter().map(|c| c.2).collect();
    let rows = RecordBatch::try_new(table(t).schema, vec![Arc::new(ids), Arc::new(vs)])
        .expect("the test schema");
    ChangeBatch {
        table: Arc::from(t),
        rows,
        ops: changes.iter().map(|c| c.0).collect(),
        origin: Default::default(),
    }
}
