//! The engine: source → router → one writer task per lake table → committer, with
//! checkpoint barriers and the two-phase commit and recovery protocol.
//!
//! Exactly-once, in order:
//! 1. every `checkpoint_interval` the engine asks the source for a barrier; the source
//!    emits `Barrier(n, P(n))` at a consistent point;
//! 2. each writer, on `Barrier(n)`, closes its files → `PendingCommit(table, n)`;
//! 3. the committer writes the checkpoint record {n, P(n), pending} create-if-absent;
//! 4. it commits every table (snapshot summary carries pipeline, n and P(n));
//! 5. only then the source is told `ack(P(n))`.
//!
//! Recovery: load the newest record, re-commit its pending files (commits are
//! idempotent), reopen the source at its position. Files written after the last record
//! are never referenced and are left for orphan cleanup.
//!
//! Channels are bounded, so a slow sink slows the source; a barrier waits behind at most
//! `CHANNEL_DEPTH` batches per writer, so a checkpoint finishes in bounded time.
//!
//! Modules: `run` (the event loop), `schedule` (when to ask for barriers), `writers`
//! (one task per lake table), `committer` (record, commits, acks), `recovery`, [`state`]
//! (checkpoint records), [`group`] (a pipeline shared by several processes), and with
//! the `test-utils` feature [`testing`] (an in-memory sink, a scripted source).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lakeshore_api::{Error, Lag, Result, Sink, Source, SourcePosition, Transport};
use tokio::sync::{mpsc, oneshot, watch};

mod committer;
pub mod events;
pub mod group;
pub mod lease;
mod recovery;
mod run;
mod schedule;
pub mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
mod writers;

use group::GroupLedger;
pub(crate) use recovery::commit_with_retry;
use recovery::{lake_checkpoint, recover};
use state::{CheckpointRecord, StateStore};

/// Where checkpoints are decided: the pipeline's own records, or the ledger of a group of
/// processes sharing the pipeline (scale-out).
pub enum Checkpoints {
    /// One process runs the pipeline; a second copy is fenced off.
    Solo(StateStore),
    /// Several processes share the source's partitions.
    Group(Arc<GroupLedger>),
}

impl Checkpoints {
    /// The record to recover and resume from; a group member starts afresh (its units
    /// come with their positions from the ledger).
    async fn latest(&self) -> Result<Option<CheckpointRecord>> {
        match self {
            Checkpoints::Solo(s) => s.latest().await,
            Checkpoints::Group(_) => Ok(None),
        }
    }

    async fn write(&self, record: &CheckpointRecord) -> Result<()> {
        match self {
            Checkpoints::Solo(s) => s.write(record).await,
            Checkpoints::Group(g) => g.decide(record).await,
        }
    }

    /// True for a pipeline's own records (a group's ledger decides for its members).
    fn is_solo(&self) -> bool {
        matches!(self, Checkpoints::Solo(_))
    }

    async fn prune(&self) -> Result<()> {
        match self {
            Checkpoints::Solo(s) => s.prune().await,
            Checkpoints::Group(g) => g.prune().await,
        }
    }
}

/// Source table → (lake table, chosen by a `[[route]]`).
pub type Router = Box<dyn Fn(&str) -> (String, bool) + Send + Sync>;

/// What the engine needs from a plan, independent of connector types.
pub struct PipelineSpec {
    /// Pipeline name.
    pub name: String,
    /// The name commits carry (`lakeshore.pipeline`): the pipeline's, or in a shared
    /// pipeline `<pipeline>@<member>`.
    pub commit_as: String,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Source table → lake table, and whether a `[[route]]` chose it (only routed
    /// source tables may share a lake table).
    pub route: Router,
    /// Partition expressions per lake table.
    pub partitioning: BTreeMap<String, Vec<String>>,
    /// Partition expressions of tables not in `partitioning`.
    pub default_partitioning: Vec<String>,
    /// `on_table_error = "isolate"`: a table whose writer meets unsupported input is
    /// parked and the others go on (instead of the pipeline failing).
    pub isolate_tables: bool,
    /// Called at each [`Failpoint`] of the checkpoint protocol: tests stop the engine
    /// there (an error, as a crash would) or slow it down.
    pub failpoints: Option<Failpoints>,
}

impl PipelineSpec {
    async fn failpoint(&self, point: Failpoint) -> Result<()> {
        match &self.failpoints {
            Some(f) => f(point).await,
            None => Ok(()),
        }
    }
}

/// A point in the checkpoint protocol where a test may stop or slow the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failpoint {
    /// Every writer prepared checkpoint `n`; its record is not written yet.
    BeforeRecord(u64),
    /// The record of checkpoint `n` is written; lake table `.1` is not committed yet.
    BeforeCommit(u64, String),
    /// Every table of checkpoint `n` is committed; the source is not acked yet.
    AfterCommits(u64),
    /// The source is about to be acked for checkpoint `n`.
    BeforeAck(u64),
}

/// The failpoint hook: an error stops the engine at that point.
pub type Failpoints = Arc<dyn Fn(Failpoint) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// Progress callbacks for a terminal bar or log lines.
pub trait Observer: Send + Sync {
    /// Called after rows were routed; `events` is the source's progress, if it knows it.
    fn rows(&self, _total_rows: u64, _events: Option<u64>) {}
    /// Called after each committed checkpoint, with the position it resumes from.
    fn checkpoint(&self, _id: u64, _position: &SourcePosition, _total_rows: u64, _took: Duration) {}
    /// A table's snapshot started (`done = false`) or finished.
    fn snapshot(&self, _table: &str, _done: bool) {}
    /// Lake table `table` committed a checkpoint that added `rows` data rows (tables a
    /// checkpoint did not change make no commit).
    fn table_committed(&self, _table: &str, _rows: u64) {}
    /// The run failed with `error` and restarts after `pause`.
    fn restarting(&self, _error: &Error, _pause: Duration) {}
    /// A lake table was parked (`on_table_error = "isolate"`) after `error`.
    fn table_failed(&self, _table: &str, _error: &Error) {}
    /// The source's lag, measured about once a second.
    fn lag(&self, _lag: &Lag) {}
    /// How the connection to the source is protected, once per run.
    fn transport(&self, _transport: Transport) {}
}

/// A request to a running pipeline (from the daemon's HTTP endpoints).
pub enum Command {
    /// Read source table `table` (or the one source table routed to lake table `table`)
    /// again: the lake table is emptied and refilled while changes keep flowing. The
    /// reply comes once the checkpoint that starts it is committed, with its id.
    Resnapshot {
        /// Source or lake table name.
        table: String,
        /// The checkpoint id, or why not.
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// The checkpoint the run resumed from.
    pub resumed_from: Option<u64>,
    /// The last committed checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Rows written per lake table by this run.
    pub rows: BTreeMap<String, u64>,
}

/// Open the sink's tables, recover, and run the source to its end (bounded) or until
/// `shutdown` turns true; the last checkpoint is committed before returning.
pub async fn run(
    spec: PipelineSpec,
    open_source: impl AsyncFnOnce(Option<SourcePosition>) -> Result<Box<dyn Source>>,
    sink: Arc<dyn Sink>,
    store: Checkpoints,
    observer: Arc<dyn Observer>,
    mut shutdown: watch::Receiver<bool>,
    commands: Option<&mut mpsc::UnboundedReceiver<Command>>,
) -> Result<RunSummary> {
    let spec = Arc::new(spec);
    let resume = resume_point(&spec, &store, sink.as_ref()).await?;
    let summary = RunSummary {
        resumed_from: resume.as_ref().map(|(id, _)| *id),
        last_checkpoint: resume.as_ref().map(|(id, _)| *id),
        ..Default::default()
    };
    let first_id = summary.resumed_from.map_or(1, |id| id + 1);
    let source = open_source(resume.map(|(_, position)| position)).await?;
    if let Some(t) = source.transport() {
        events::SourceConnected {
            pipeline: &spec.name,
            transport: t,
        }
        .emit(observer.as_ref());
    }
    let mut run = run::Run::start(spec, source, sink, store, observer, first_id, summary).await?;
    let outcome = run.event_loop(&mut shutdown, commands).await;
    run.finish(outcome).await
}

/// Where to resume: the newest checkpoint record, finished first (its pending files are
/// committed again), or the lake's own newest commit when the records are lost or older.
async fn resume_point(
    spec: &PipelineSpec,
    store: &Checkpoints,
    sink: &dyn Sink,
) -> Result<Option<(u64, SourcePosition)>> {
    let last = store.latest().await?;
    let mut resume = None;
    if let Some(rec) = &last {
        recover(&spec.commit_as, &spec.route, rec, sink).await?;
        resume = Some((rec.id, rec.position.clone()));
    }
    if store.is_solo()
        && let Some(lake) =
            lake_checkpoint(&spec.commit_as, sink, last.as_ref().map(|r| r.id)).await?
    {
        resume = Some(lake);
    }
    Ok(resume)
}
