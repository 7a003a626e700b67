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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakeshore_api::{
    ChangeBatch, CommitContext, Error, ErrorKind, Lag, PendingCommit, Result, Sink, Source,
    SourceEvent, SourcePosition, TableSchema, TableTarget, TableWriter, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub mod group;
mod recovery;
pub mod state;

use group::GroupLedger;
pub(crate) use recovery::commit_with_retry;
use recovery::{lake_checkpoint, recover, table_context};
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

/// Batches queued per writer before the source waits.
const CHANNEL_DEPTH: usize = 4;

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
}

/// Progress callbacks for a terminal bar or log lines.
pub trait Observer: Send + Sync {
    /// Called after rows were routed; `events` is the source's progress, if it knows it.
    fn rows(&self, _total_rows: u64, _events: Option<u64>) {}
    /// Called after each committed checkpoint, with the position it resumes from.
    fn checkpoint(&self, _id: u64, _position: &SourcePosition, _total_rows: u64, _took: Duration) {}
    /// A table's snapshot started (`done = false`) or finished.
    fn snapshot(&self, _table: &str, _done: bool) {}
    /// The run failed with `error` and restarts after `pause`.
    fn restarting(&self, _error: &Error, _pause: Duration) {}
    /// A lake table was parked (`on_table_error = "isolate"`) after `error`.
    fn table_failed(&self, _table: &str, _error: &Error) {}
    /// The source's lag, measured about once a second.
    fn lag(&self, _lag: &Lag) {}
    /// How the connection to the source is protected, once per run.
    fn transport(&self, _transport: Transport) {}
}

/// A source connection without a checked certificate is a warning, a gauge
/// (`lakeshore_source_transport{pipeline,transport}`) and a field in `/pipelines`.
fn report_transport(pipeline: &str, t: Transport, observer: &dyn Observer) {
    for each in [Transport::Verified, Transport::Unverified, Transport::Plain] {
        metrics::gauge!("lakeshore_source_transport", "pipeline" => pipeline.to_string(), "transport" => each.as_str())
            .set(f64::from(u8::from(each == t)));
    }
    match t {
        Transport::Verified => {}
        Transport::Unverified => tracing::warn!(
            pipeline,
            transport = t.as_str(),
            "the connection to the source is encrypted but the server's certificate is not checked: anyone in the path could pose as the server. Set sslmode=verify-full&sslrootcert=/path/ca.pem (PostgreSQL) or ssl-mode=verify_identity&ssl-ca=/path/ca.pem (MySQL) in [source] url"
        ),
        Transport::Plain => tracing::warn!(
            pipeline,
            transport = t.as_str(),
            "the connection to the source is not encrypted: its password and rows cross the network readable. Enable TLS on the server and set sslmode=verify-full (PostgreSQL) or ssl-mode=verify_identity (MySQL) in [source] url"
        ),
    }
    observer.transport(t);
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

/// Start a re-snapshot of `table` (see [`Command::Resnapshot`]), if the source, the sink
/// and the table's writer allow it.
fn resnapshot(
    table: &str,
    source: &mut dyn Source,
    sink: &dyn Sink,
    route: &HashMap<String, usize>,
    writers: &[Writer],
    targets: &[String],
) -> Result<()> {
    let config = |m: String| Error::new(ErrorKind::Config, m);
    let (name, w) = match route.get(table) {
        Some(&w) => (table.to_string(), w),
        None => {
            let mut from: Vec<_> = route
                .iter()
                .filter(|(_, w)| targets[**w] == table)
                .collect();
            from.sort();
            match from.as_slice() {
                [(name, w)] => ((*name).clone(), **w),
                [] => {
                    let mut known: Vec<_> = route.keys().cloned().collect();
                    known.sort();
                    return Err(config(format!(
                        "no table {table} in this pipeline; its tables are {}",
                        known.join(", ")
                    )));
                }
                several => {
                    let names: Vec<_> = several.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(config(format!(
                        "lake table {table} is written from {}; name one of them",
                        names.join(", ")
                    )));
                }
            }
        }
    };
    if writers[w].parked {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "lake table {} is parked after an error; fix the cause, then pause and resume \
                 the pipeline",
                targets[w]
            ),
        ));
    }
    if !sink.truncates() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot read {name} again: this sink cannot empty lake table {} (re-snapshots \
                 need an Iceberg sink)",
                targets[w]
            ),
        ));
    }
    source.resnapshot(&name)
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

enum WriterMsg {
    Batch(ChangeBatch),
    Evolve(TableSchema),
    Truncate,
    Watermark(i64),
    Barrier(u64),
}

enum CommitterMsg {
    Started {
        id: u64,
        position: SourcePosition,
        at: Instant,
    },
    Prepared(PendingCommit),
    /// The table's writer failed and is parked: checkpoints no longer wait for it.
    Parked(String),
}

struct Writer {
    tx: mpsc::Sender<WriterMsg>,
    task: JoinHandle<Result<()>>,
    /// Parked after this error (`on_table_error = "isolate"`): gets nothing more.
    parked: bool,
}

/// Hand `msg` to writer `w`. A writer that stopped fails the run, unless tables are
/// isolated and it stopped on unsupported input: then it is parked and `Ok(false)`.
async fn deliver(
    spec: &PipelineSpec,
    writers: &mut [Writer],
    targets: &[String],
    w: usize,
    msg: WriterMsg,
    to_committer: &mpsc::UnboundedSender<CommitterMsg>,
    observer: &dyn Observer,
) -> Result<bool> {
    if writers[w].parked {
        return Ok(false);
    }
    if writers[w].tx.send(msg).await.is_ok() {
        return Ok(true);
    }
    let stopped = Error::new(ErrorKind::Internal, "a table writer stopped");
    if !spec.isolate_tables {
        return Err(stopped);
    }
    match (&mut writers[w].task).await {
        Ok(Err(e)) if e.kind() == ErrorKind::Unsupported => {
            park(spec, writers, targets, w, &e, to_committer, observer);
            Ok(false)
        }
        Ok(Err(e)) => Err(e),
        _ => Err(stopped),
    }
}

/// Park writer `w` after `error` (`on_table_error = "isolate"`): it gets nothing more and
/// checkpoints no longer wait for it; its open files are never committed.
fn park(
    spec: &PipelineSpec,
    writers: &mut [Writer],
    targets: &[String],
    w: usize,
    error: &Error,
    to_committer: &mpsc::UnboundedSender<CommitterMsg>,
    observer: &dyn Observer,
) {
    tracing::error!(pipeline = %spec.name, table = %targets[w], error = %error, "table parked (on_table_error = \"isolate\"); the pipeline's other tables go on");
    metrics::gauge!("lakeshore_table_parked", "pipeline" => spec.name.clone(), "table" => targets[w].clone()).set(1.0);
    observer.table_failed(&targets[w], error);
    writers[w].parked = true;
    // Closing its channel ends the writer task.
    drop(std::mem::replace(&mut writers[w].tx, mpsc::channel(1).0));
    let _ = to_committer.send(CommitterMsg::Parked(targets[w].clone()));
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
    mut commands: Option<&mut mpsc::UnboundedReceiver<Command>>,
) -> Result<RunSummary> {
    let spec = Arc::new(spec);
    let last = store.latest().await?;
    let mut summary = RunSummary::default();
    let mut resume = None;
    if let Some(rec) = &last {
        recover(&spec.commit_as, &spec.route, rec, sink.as_ref()).await?;
        resume = Some((rec.id, rec.position.clone()));
    }
    if store.is_solo()
        && let Some(lake) =
            lake_checkpoint(&spec.commit_as, sink.as_ref(), last.as_ref().map(|r| r.id)).await?
    {
        resume = Some(lake);
    }
    summary.resumed_from = resume.as_ref().map(|(id, _)| *id);
    summary.last_checkpoint = summary.resumed_from;
    let first_id = summary.resumed_from.map_or(1, |id| id + 1);
    let mut source = open_source(resume.map(|(_, position)| position)).await?;
    if let Some(t) = source.transport() {
        report_transport(&spec.name, t, observer.as_ref());
    }

    // Writers, one per lake table.
    let (committed_tx, committed_rx) = watch::channel(first_id - 1);
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    // Set by a writer whose checkpoint state outgrew its budget.
    let pressure = Arc::new(AtomicBool::new(false));
    let (mut writers, targets, route) = open_writers(
        &spec,
        source.tables(),
        sink.as_ref(),
        &commit_tx,
        &committed_rx,
        &pressure,
    )
    .await?;
    let to_committer = commit_tx;
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let committer = tokio::spawn(committer_task(
        spec.clone(),
        sink.clone(),
        store,
        targets.iter().cloned().collect(),
        commit_rx,
        committed_tx,
        ack_tx,
        observer.clone(),
    ));

    let mut rows_per_writer = vec![0u64; writers.len()];
    let counters: Vec<_> = targets
        .iter()
        .map(|t| {
            let labels = [("pipeline", spec.name.clone()), ("table", t.clone())];
            (
                metrics::counter!("lakeshore_rows_total", &labels),
                metrics::counter!("lakeshore_bytes_total", &labels),
            )
        })
        .collect();
    let mut total_rows = 0u64;
    let mut next_id = first_id;
    // Asked of the source and not emitted yet (never more than one: a new request would
    // replace it), and emitted but not committed yet.
    let mut requested: Option<u64> = None;
    let mut uncommitted: VecDeque<u64> = VecDeque::new();
    let mut final_id: Option<u64> = None;
    let mut last_barrier = Instant::now();
    let mut requested_at = Instant::now();
    // The highest watermark handed to the writers.
    let mut watermark = i64::MIN;
    // The source asked for a checkpoint now.
    let mut wanted = false;
    // Re-snapshots started, answered once checkpoint `.0` (or a later one) commits.
    let mut resnapshots: Vec<(u64, oneshot::Sender<Result<u64>>)> = Vec::new();
    // Source tables read again because another source of their lake table was truncated.
    let mut rereading: std::collections::HashSet<String> = std::collections::HashSet::new();
    let lag_seconds =
        metrics::gauge!("lakeshore_source_lag_seconds", "pipeline" => spec.name.clone());
    let mut lag_measured = Instant::now();
    let outcome: Result<()> = async {
        loop {
            // A failed commit stops the run even while the source only idles (its
            // error is taken from the committer below).
            if committer.is_finished() {
                return Err(Error::new(ErrorKind::Internal, "the committer stopped"));
            }
            // A writer that failed in `prepare` would otherwise go unnoticed until the
            // source sends its table something again: the checkpoint would wait for it
            // without a word.
            if let Some(w) = writers.iter().position(|w| !w.parked && w.task.is_finished()) {
                let stopped = Error::new(ErrorKind::Internal, "a table writer stopped");
                if !spec.isolate_tables {
                    return Err(stopped);
                }
                match (&mut writers[w].task).await {
                    Ok(Err(e)) if e.kind() == ErrorKind::Unsupported => {
                        park(&spec, &mut writers, &targets, w, &e, &to_committer, observer.as_ref());
                    }
                    Ok(Err(e)) => return Err(e),
                    _ => return Err(stopped),
                }
            }
            while let Ok((id, position)) = ack_rx.try_recv() {
                source.ack(&position).await?;
                summary.last_checkpoint = Some(id);
                while uncommitted.front().is_some_and(|u| *u <= id) {
                    uncommitted.pop_front();
                }
                let (done, waiting) = std::mem::take(&mut resnapshots)
                    .into_iter()
                    .partition(|(after, _)| *after <= id);
                resnapshots = waiting;
                for (_, reply) in done {
                    let _ = reply.send(Ok(id));
                }
            }
            while let Some(Ok(command)) = commands.as_deref_mut().map(|c| c.try_recv()) {
                let Command::Resnapshot { table, reply } = command;
                match resnapshot(&table, source.as_mut(), sink.as_ref(), &route, &writers, &targets) {
                    Ok(()) => {
                        tracing::info!(pipeline = %spec.name, table = %table, "re-snapshot requested");
                        // Answered by the ack of a barrier asked for after this point.
                        wanted = true;
                        resnapshots.push((next_id, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            if lag_measured.elapsed() >= Duration::from_secs(1) {
                lag_measured = Instant::now();
                if let Some(lag) = source.lag() {
                    if let Some(seconds) = lag.seconds {
                        lag_seconds.set(seconds);
                    }
                    if let Some(behind) = lag.behind {
                        metrics::gauge!("lakeshore_source_lag", "pipeline" => spec.name.clone(), "unit" => lag.unit)
                            .set(behind as f64);
                    }
                    observer.lag(&lag);
                }
            }
            let stopping = *shutdown.borrow_and_update();
            // One checkpoint at a time on the interval; a writer over its budget may start
            // the next one while the previous commits (its writers then wait for that
            // commit at the barrier, which holds the source back).
            let due = requested.is_none()
                && final_id.is_none()
                && match uncommitted.len() {
                    0 => {
                        last_barrier.elapsed() >= spec.checkpoint_interval
                            || pressure.swap(false, Ordering::Relaxed)
                            || std::mem::take(&mut wanted)
                    }
                    1 => pressure.swap(false, Ordering::Relaxed) || std::mem::take(&mut wanted),
                    _ => false,
                };
            if final_id.is_none() && stopping && requested.is_none() {
                final_id = Some(next_id);
            }
            if due || final_id == Some(next_id) {
                // One barrier answers every request made so far.
                wanted = false;
                requested = Some(next_id);
                source.request_barrier(next_id);
                requested_at = Instant::now();
                next_id += 1;
            }
            match source.next_event().await? {
                Some(SourceEvent::Batch(batch)) => {
                    let Some(&w) = route.get(batch.table.as_ref()) else {
                        return Err(Error::new(
                            ErrorKind::Internal,
                            format!("source produced rows for undeclared table {}", batch.table),
                        ));
                    };
                    let n = batch.num_rows() as u64;
                    counters[w].0.increment(n);
                    counters[w]
                        .1
                        .increment(batch.rows.get_array_memory_size() as u64);
                    rows_per_writer[w] += n;
                    total_rows += n;
                    deliver(
                        &spec,
                        &mut writers,
                        &targets,
                        w,
                        WriterMsg::Batch(batch),
                        &to_committer,
                        observer.as_ref(),
                    )
                    .await?;
                    observer.rows(total_rows, source.progress());
                }
                Some(SourceEvent::Barrier { id, position }) => {
                    last_barrier = Instant::now();
                    let msg = CommitterMsg::Started {
                        id,
                        position,
                        at: requested_at,
                    };
                    for w in 0..writers.len() {
                        deliver(
                            &spec,
                            &mut writers,
                            &targets,
                            w,
                            WriterMsg::Barrier(id),
                            &to_committer,
                            observer.as_ref(),
                        )
                        .await?;
                    }
                    if requested == Some(id) {
                        requested = None;
                    }
                    if final_id != Some(id) {
                        uncommitted.push_back(id);
                    }
                    if to_committer.send(msg).is_err() {
                        return Err(Error::new(ErrorKind::Internal, "the committer stopped"));
                    }
                    if final_id == Some(id) {
                        return Ok(());
                    }
                }
                Some(SourceEvent::Truncate(t)) => {
                    let Some(&w) = route.get(&t) else {
                        return Err(Error::new(
                            ErrorKind::Internal,
                            format!("source truncated undeclared table {t}"),
                        ));
                    };
                    tracing::info!(pipeline = %spec.name, table = %t, "truncate");
                    let delivered = deliver(
                        &spec,
                        &mut writers,
                        &targets,
                        w,
                        WriterMsg::Truncate,
                        &to_committer,
                        observer.as_ref(),
                    )
                    .await?;
                    // The lake table's rows do not say which source table they came
                    // from, so it is emptied whole: its other source tables are read
                    // again (their own Truncate, caused here, starts no new round).
                    if delivered && !rereading.remove(&t) {
                        let mut siblings: Vec<&String> = route
                            .iter()
                            .filter(|(name, i)| **i == w && **name != t)
                            .map(|(name, _)| name)
                            .collect();
                        siblings.sort();
                        for sibling in siblings {
                            tracing::warn!(pipeline = %spec.name, table = %t, lake_table = %targets[w], other = %sibling, "a source table of a shared lake table was truncated: the lake table is emptied and its other source tables are read again");
                            source.resnapshot(sibling).map_err(|e| {
                                Error::new(
                                    e.kind(),
                                    format!(
                                        "{t} was truncated, and lake table {} also holds rows of {sibling}, which cannot be read again: {e}. Give {t} a lake table of its own with a [[route]]",
                                        targets[w]
                                    ),
                                )
                            })?;
                            rereading.insert(sibling.clone());
                        }
                    }
                }
                Some(SourceEvent::SchemaChange(t)) => {
                    let Some(&w) = route.get(&t.name) else {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "table {} appeared while running; restart the pipeline to add it",
                                t.name
                            ),
                        ));
                    };
                    tracing::info!(pipeline = %spec.name, table = %t.name, "schema change");
                    deliver(
                        &spec,
                        &mut writers,
                        &targets,
                        w,
                        WriterMsg::Evolve(t),
                        &to_committer,
                        observer.as_ref(),
                    )
                    .await?;
                }
                Some(SourceEvent::CheckpointNow) => wanted = requested.is_none(),
                Some(SourceEvent::TableFailed { table, message }) => {
                    let error = Error::new(ErrorKind::Unsupported, message);
                    match route.get(&table) {
                        Some(&w) if spec.isolate_tables => {
                            if !writers[w].parked {
                                park(
                                    &spec,
                                    &mut writers,
                                    &targets,
                                    w,
                                    &error,
                                    &to_committer,
                                    observer.as_ref(),
                                );
                            }
                        }
                        _ => return Err(error),
                    }
                }
                Some(SourceEvent::SnapshotStarted(t)) => observer.snapshot(&t, false),
                Some(SourceEvent::SnapshotDone(t)) => observer.snapshot(&t, true),
                Some(SourceEvent::Watermark(w)) if w > watermark => {
                    watermark = w;
                    for i in 0..writers.len() {
                        deliver(
                            &spec,
                            &mut writers,
                            &targets,
                            i,
                            WriterMsg::Watermark(w),
                            &to_committer,
                            observer.as_ref(),
                        )
                        .await?;
                    }
                }
                Some(_) => {}
                None => {
                    if final_id.is_none() {
                        // A requested barrier came before the end (the Source contract).
                        final_id = Some(next_id);
                        requested = Some(next_id);
                        source.request_barrier(next_id);
                        requested_at = Instant::now();
                        next_id += 1;
                    } else {
                        return Err(Error::new(
                            ErrorKind::Internal,
                            "the source ended without emitting the final barrier",
                        ));
                    }
                }
            }
        }
    }
    .await;
    // Close the writers: they finish the final checkpoint (if any) and stop. The first
    // to fail stops the rest and the committer (a writer may be waiting for a commit that
    // the failed one will never let happen); what was durable is recovered by the next
    // run, as after a crash.
    let mut first_error = outcome.err();
    drop(to_committer);
    // Parked writers are done with (their tasks were awaited when they were parked).
    let mut tasks: Vec<_> = writers
        .into_iter()
        .filter(|w| !w.parked)
        .map(|w| {
            drop(w.tx);
            w.task
        })
        .collect();
    let stop_all = |tasks: &[tokio::task::JoinHandle<Result<()>>]| {
        tasks.iter().for_each(|t| t.abort());
        committer.abort();
    };
    if first_error.is_some() {
        // Writers that already stopped keep their errors; the rest are stopped.
        for t in &tasks {
            if !t.is_finished() {
                t.abort();
            }
        }
        committer.abort();
    }
    while !tasks.is_empty() {
        let (result, _, rest) = futures::future::select_all(tasks).await;
        tasks = rest;
        match result {
            Ok(Ok(())) => {}
            // The writer's own error explains a "writer stopped" seen by the loop.
            Ok(Err(e)) => {
                if first_error
                    .as_ref()
                    .is_none_or(|f| f.kind() == ErrorKind::Internal)
                {
                    first_error = Some(e);
                }
                stop_all(&tasks);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_error = first_error.or(Some(Error::new(
                    ErrorKind::Internal,
                    format!("writer task: {e}"),
                )));
                stop_all(&tasks);
            }
        }
    }
    match committer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => first_error = Some(e),
        Err(e) if e.is_cancelled() => {}
        Err(e) => {
            first_error = first_error.or(Some(Error::new(
                ErrorKind::Internal,
                format!("committer task: {e}"),
            )))
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    while let Ok((id, position)) = ack_rx.try_recv() {
        source.ack(&position).await?;
        summary.last_checkpoint = Some(id);
    }
    source.close().await?;
    summary.rows = targets.into_iter().zip(rows_per_writer).collect();
    Ok(summary)
}

/// One writer task per lake table (several source tables may route to one); returns the
/// writers, their lake table names, and source table → writer index.
async fn open_writers(
    spec: &PipelineSpec,
    tables: Vec<TableSchema>,
    sink: &dyn Sink,
    to_committer: &mpsc::UnboundedSender<CommitterMsg>,
    committed: &watch::Receiver<u64>,
    pressure: &Arc<AtomicBool>,
) -> Result<(Vec<Writer>, Vec<String>, HashMap<String, usize>)> {
    let mut writers: Vec<Writer> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    let mut route: HashMap<String, usize> = HashMap::new();
    // Lake tables that a source table reached without a route: they take no other.
    let mut unrouted: Vec<bool> = Vec::new();
    for table in tables {
        let (target, routed) = (spec.route)(&table.name);
        let idx = match targets.iter().position(|t| *t == target) {
            Some(i) if routed && !unrouted[i] => i,
            Some(i) => {
                let mut others: Vec<&String> = route
                    .iter()
                    .filter(|(_, w)| **w == i)
                    .map(|(n, _)| n)
                    .collect();
                others.sort();
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "source tables {} and {} would both land in lake table {target} (the name without its schema); give {} a lake table of its own with a [[route]] (from = \"{}\", to = \"...\"), or merge them on purpose with a [[route]] that matches all of them",
                        others.first().map_or("", |n| n.as_str()),
                        table.name,
                        table.name,
                        table.name
                    ),
                ));
            }
            None => {
                let writer = sink
                    .open_table(&TableTarget {
                        source: table.clone(),
                        name: target.clone(),
                        partitioning: spec
                            .partitioning
                            .get(&target)
                            .cloned()
                            .unwrap_or_else(|| spec.default_partitioning.clone()),
                    })
                    .await?;
                let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                let task = tokio::spawn(writer_task(
                    writer,
                    rx,
                    to_committer.clone(),
                    committed.clone(),
                    pressure.clone(),
                ));
                writers.push(Writer {
                    tx,
                    task,
                    parked: false,
                });
                targets.push(target);
                unrouted.push(!routed);
                targets.len() - 1
            }
        };
        route.insert(table.name, idx);
    }
    Ok((writers, targets, route))
}

/// Crash tests set `LAKESHORE_TEST_COMMIT_PAUSE_MS` to widen the windows before the
/// checkpoint record and between it and the table commits, so that random kills (and
/// rebalances) land inside them.
async fn test_pause() {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("LAKESHORE_TEST_COMMIT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(p) = pause {
        tokio::time::sleep(*p).await;
    }
}

async fn writer_task(
    mut writer: Box<dyn TableWriter>,
    mut rx: mpsc::Receiver<WriterMsg>,
    done: mpsc::UnboundedSender<CommitterMsg>,
    mut committed: watch::Receiver<u64>,
    pressure: Arc<AtomicBool>,
) -> Result<()> {
    // Ask once per checkpoint: batches already queued behind the request must not ask
    // for another checkpoint right after it.
    let mut asked = false;
    while let Some(msg) = rx.recv().await {
        match msg {
            WriterMsg::Batch(b) => {
                writer.write(b).await?;
                if !asked && writer.wants_checkpoint() {
                    pressure.store(true, Ordering::Relaxed);
                    asked = true;
                }
            }
            WriterMsg::Evolve(schema) => writer.evolve(&schema).await?,
            WriterMsg::Truncate => writer.truncate().await?,
            WriterMsg::Watermark(w) => writer.watermark(w),
            WriterMsg::Barrier(id) => {
                // Lookups of committed rows must see every earlier checkpoint.
                committed
                    .wait_for(|c| *c + 1 >= id)
                    .await
                    .map_err(|_| Error::new(ErrorKind::Internal, "the committer stopped"))?;
                tracing::debug!(checkpoint = id, "preparing");
                let pending = writer.prepare(id).await?;
                tracing::debug!(checkpoint = id, table = %pending.table, "prepared");
                asked = false;
                if done.send(CommitterMsg::Prepared(pending)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn committer_task(
    spec: Arc<PipelineSpec>,
    sink: Arc<dyn Sink>,
    store: Checkpoints,
    mut expected: std::collections::BTreeSet<String>,
    mut inbox: mpsc::UnboundedReceiver<CommitterMsg>,
    committed: watch::Sender<u64>,
    ack: mpsc::UnboundedSender<(u64, SourcePosition)>,
    observer: Arc<dyn Observer>,
) -> Result<()> {
    let mut started: BTreeMap<u64, (SourcePosition, Instant)> = BTreeMap::new();
    let mut prepared: BTreeMap<u64, Vec<PendingCommit>> = BTreeMap::new();
    let mut total_rows = 0u64;
    while let Some(msg) = inbox.recv().await {
        match msg {
            CommitterMsg::Started { id, position, at } => {
                started.insert(id, (position, at));
            }
            CommitterMsg::Prepared(p) => prepared.entry(p.checkpoint_id).or_default().push(p),
            CommitterMsg::Parked(table) => {
                expected.remove(&table);
            }
        }
        // Commit every complete checkpoint, in order.
        while let Some((&id, _)) = started.first_key_value() {
            let ready = prepared.get(&id).map_or(expected.is_empty(), |p| {
                expected
                    .iter()
                    .all(|t| p.iter().any(|pending| pending.table == *t))
            });
            if !ready {
                break;
            }
            let (position, at) = started.remove(&id).expect("first key exists");
            let pending = prepared.remove(&id).unwrap_or_default();
            let record = CheckpointRecord {
                pipeline: spec.name.clone(),
                id,
                position: position.clone(),
                pending: pending.clone(),
                created_at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            };
            test_pause().await;
            tracing::debug!(checkpoint = id, "writing the checkpoint record");
            store.write(&record).await?;
            let ctx = CommitContext::new(&spec.commit_as, id, &position, &pending);
            for p in &pending {
                test_pause().await;
                let started = Instant::now();
                tracing::debug!(checkpoint = id, table = %p.table, "committing");
                commit_with_retry(
                    sink.as_ref(),
                    p,
                    &table_context(&ctx, &spec.route, &p.table),
                )
                .await?;
                metrics::histogram!("lakeshore_commit_seconds", "pipeline" => spec.name.clone(), "table" => p.table.clone())
                    .record(started.elapsed().as_secs_f64());
                total_rows += p.added_rows;
            }
            let took = at.elapsed();
            metrics::histogram!("lakeshore_engine_checkpoint_duration_seconds", "pipeline" => spec.name.clone())
                .record(took.as_secs_f64());
            metrics::gauge!("lakeshore_engine_last_checkpoint_id", "pipeline" => spec.name.clone())
                .set(id as f64);
            observer.checkpoint(id, &position, total_rows, took);
            tracing::debug!(pipeline = %spec.name, checkpoint = id, ms = took.as_millis() as u64, "checkpoint committed");
            committed.send_replace(id);
            let _ = ack.send((id, position));
            store.prune().await?;
        }
    }
    Ok(())
}
