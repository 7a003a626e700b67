//! One run of a pipeline: the loop that routes the source's events to the writers, asks
//! for barriers on the schedule, acks what the committer committed, and answers the
//! daemon's commands.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakeshore_api::{
    ChangeBatch, Error, Result, Sink, Source, SourceEvent, SourcePosition, TableSchema,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::committer::{Committer, CommitterMsg};
use crate::events;
use crate::schedule::CheckpointSchedule;
use crate::writers::{WriterMsg, Writers};
use crate::{Checkpoints, Command, Observer, PipelineSpec, RunSummary};

/// Rows routed to all of a pipeline's tables after which the engine asks for a checkpoint
/// before the interval is up: what the writers hold for an open checkpoint (upsert key
/// indexes, about 100 bytes a row; Parquet pages not yet written) stays bounded however
/// many tables share it. Four times one upsert writer's own budget.
const BUDGET_ROWS: u64 = 512 * 1024;
/// The same in Arrow bytes, for wide rows.
const BUDGET_BYTES: u64 = 256 << 20;

/// Whether the loop goes on after an event.
enum Flow {
    Continue,
    /// The final barrier was handed on: the run ends.
    Done,
}

/// The state of one run between its start and its end.
pub(crate) struct Run {
    spec: Arc<PipelineSpec>,
    source: Box<dyn Source>,
    sink: Arc<dyn Sink>,
    writers: Writers,
    schedule: CheckpointSchedule,
    to_committer: mpsc::UnboundedSender<CommitterMsg>,
    committer: JoinHandle<Result<()>>,
    acks: mpsc::UnboundedReceiver<(u64, SourcePosition)>,
    observer: Arc<dyn Observer>,
    /// Set by a writer whose checkpoint state outgrew its budget.
    pressure: Arc<AtomicBool>,
    summary: RunSummary,
    /// Rows and Arrow bytes routed since the last barrier, across every table (see
    /// [`BUDGET_ROWS`]).
    since_barrier: (u64, u64),
    rows: Vec<u64>,
    counters: Vec<(metrics::Counter, metrics::Counter)>,
    total_rows: u64,
    /// The highest watermark handed to the writers.
    watermark: i64,
    /// Re-snapshots started, answered once checkpoint `.0` (or a later one) commits.
    resnapshots: Vec<(u64, oneshot::Sender<Result<u64>>)>,
    /// Source tables read again because another source of their lake table was truncated.
    rereading: HashSet<String>,
    lag_measured: Instant,
}

impl Run {
    /// Open the writers and start the committer; the first checkpoint gets `first_id`.
    pub async fn start(
        spec: Arc<PipelineSpec>,
        source: Box<dyn Source>,
        sink: Arc<dyn Sink>,
        store: Checkpoints,
        observer: Arc<dyn Observer>,
        first_id: u64,
        summary: RunSummary,
    ) -> Result<Run> {
        let (committed_tx, committed_rx) = watch::channel(first_id - 1);
        let (to_committer, inbox) = mpsc::unbounded_channel();
        let pressure = Arc::new(AtomicBool::new(false));
        let writers = Writers::open(
            &spec,
            source.tables(),
            sink.as_ref(),
            &to_committer,
            &committed_rx,
            &pressure,
            &observer,
        )
        .await?;
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let committer = tokio::spawn(
            Committer {
                spec: spec.clone(),
                sink: sink.clone(),
                store,
                expected: writers.targets.iter().cloned().collect(),
                committed: committed_tx,
                ack: ack_tx,
                observer: observer.clone(),
            }
            .run(inbox),
        );
        let counters = writers
            .targets
            .iter()
            .map(|t| events::table_row_counters(&spec.name, t))
            .collect();
        let now = Instant::now();
        Ok(Run {
            schedule: CheckpointSchedule::new(spec.checkpoint_interval, first_id, now),
            rows: vec![0; writers.len()],
            spec,
            source,
            sink,
            writers,
            to_committer,
            committer,
            acks,
            observer,
            pressure,
            summary,
            since_barrier: (0, 0),
            counters,
            total_rows: 0,
            watermark: i64::MIN,
            resnapshots: Vec::new(),
            rereading: HashSet::new(),
            lag_measured: now,
        })
    }

    /// Route events until the final barrier is handed on (shutdown, or the end of a
    /// bounded source) or something fails.
    pub async fn event_loop(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        mut commands: Option<&mut mpsc::UnboundedReceiver<Command>>,
    ) -> Result<()> {
        loop {
            // A failed commit stops the run even while the source only idles (its error
            // is taken from the committer at the end).
            if self.committer.is_finished() {
                return Err(Error::internal("the committer stopped"));
            }
            self.writers.check().await?;
            self.take_acks().await?;
            while let Some(Ok(command)) = commands.as_deref_mut().map(|c| c.try_recv()) {
                self.command(command);
            }
            self.measure_lag();
            let stopping = *shutdown.borrow_and_update();
            let pressure = &self.pressure;
            if let Some(id) = self.schedule.request(Instant::now(), stopping, || {
                pressure.swap(false, Ordering::Relaxed)
            }) {
                self.source.request_barrier(id);
            }
            let event = self.source.next_event().await?;
            if let Flow::Done = self.event(event).await? {
                return Ok(());
            }
        }
    }

    /// Ack the source for every checkpoint the committer committed.
    async fn take_acks(&mut self) -> Result<()> {
        while let Ok((id, position)) = self.acks.try_recv() {
            self.spec.failpoint(crate::Failpoint::BeforeAck(id)).await?;
            self.source.ack(&position).await?;
            self.summary.last_checkpoint = Some(id);
            self.schedule.committed(id);
            let (done, waiting) = std::mem::take(&mut self.resnapshots)
                .into_iter()
                .partition(|(after, _)| *after <= id);
            self.resnapshots = waiting;
            for (_, reply) in done {
                let _ = reply.send(Ok(id));
            }
        }
        Ok(())
    }

    fn command(&mut self, command: Command) {
        let Command::Resnapshot { table, reply } = command;
        match self.resnapshot(&table) {
            Ok(()) => {
                tracing::info!(pipeline = %self.spec.name, table = %table, "re-snapshot requested");
                // Answered by the ack of a barrier asked for after this point.
                self.schedule.want();
                self.resnapshots.push((self.schedule.next_id(), reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Start a re-snapshot of `table` (see [`Command::Resnapshot`]), if the source, the
    /// sink and the table's writer allow it.
    fn resnapshot(&mut self, table: &str) -> Result<()> {
        let (name, w) = self.writers.resolve(table)?;
        let lake_table = &self.writers.targets[w];
        if self.writers.is_parked(w) {
            return Err(Error::unsupported(format!(
                "lake table {lake_table} is parked after an error; fix the cause, then \
                     pause and resume the pipeline"
            )));
        }
        if !self.sink.truncates() {
            return Err(Error::unsupported(format!(
                "cannot read {name} again: this sink cannot empty lake table {lake_table} \
                     (re-snapshots need an Iceberg sink)"
            )));
        }
        self.source.resnapshot(&name)
    }

    /// The source's lag, about once a second: gauges and the observer.
    fn measure_lag(&mut self) {
        if self.lag_measured.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.lag_measured = Instant::now();
        let Some(lag) = self.source.lag() else { return };
        events::SourceLagged {
            pipeline: &self.spec.name,
            lag: &lag,
        }
        .emit(self.observer.as_ref());
    }

    async fn event(&mut self, event: Option<SourceEvent>) -> Result<Flow> {
        match event {
            Some(SourceEvent::Batch(batch)) => self.batch(batch).await?,
            Some(SourceEvent::Barrier { id, position }) => return self.barrier(id, position).await,
            Some(SourceEvent::Truncate(t)) => self.truncate(t).await?,
            Some(SourceEvent::SchemaChange(t)) => self.schema_change(t).await?,
            Some(SourceEvent::CheckpointNow) => self.schedule.source_wants(),
            Some(SourceEvent::TableFailed { table, message }) => {
                let error = Error::unsupported(message);
                match self.writers.route.get(&table) {
                    Some(&w) if self.spec.isolate_tables => {
                        if !self.writers.is_parked(w) {
                            self.writers.park(w, &error);
                        }
                    }
                    _ => return Err(error),
                }
            }
            Some(SourceEvent::SnapshotStarted(t)) => self.observer.snapshot(&t, false),
            Some(SourceEvent::SnapshotDone(t)) => self.observer.snapshot(&t, true),
            Some(SourceEvent::Watermark(w)) if w > self.watermark => {
                self.watermark = w;
                self.writers.deliver_all(|| WriterMsg::Watermark(w)).await?;
            }
            Some(_) => {}
            None => match self.schedule.source_ended(Instant::now()) {
                Some(id) => self.source.request_barrier(id),
                None => {
                    return Err(Error::internal(
                        "the source ended without emitting the final barrier",
                    ));
                }
            },
        }
        Ok(Flow::Continue)
    }

    async fn batch(&mut self, batch: ChangeBatch) -> Result<()> {
        let Some(&w) = self.writers.route.get(batch.table.as_ref()) else {
            return Err(Error::internal(format!(
                "source produced rows for undeclared table {}",
                batch.table
            )));
        };
        let n = batch.num_rows() as u64;
        // The batch's own bytes: a slice of a larger buffer counts only its part.
        let bytes: u64 = batch
            .rows
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0) as u64)
            .sum();
        self.counters[w].0.increment(n);
        self.counters[w].1.increment(bytes);
        // One budget over every table's open checkpoint: a snapshot of a thousand
        // tables, each far below its writer's own budget, still checkpoints in time.
        self.since_barrier.0 += n;
        self.since_barrier.1 += bytes;
        if self.since_barrier.0 >= BUDGET_ROWS || self.since_barrier.1 >= BUDGET_BYTES {
            self.pressure.store(true, Ordering::Relaxed);
            self.since_barrier = (0, 0);
        }
        self.rows[w] += n;
        self.total_rows += n;
        self.writers.deliver(w, WriterMsg::Batch(batch)).await?;
        self.observer.rows(self.total_rows, self.source.progress());
        Ok(())
    }

    /// Barrier `id`: every writer prepares it, and the committer commits it once they
    /// all did.
    async fn barrier(&mut self, id: u64, position: SourcePosition) -> Result<Flow> {
        let seen = self.schedule.barrier(id, Instant::now());
        self.since_barrier = (0, 0);
        self.writers.deliver_all(|| WriterMsg::Barrier(id)).await?;
        let started = CommitterMsg::Started {
            id,
            position,
            at: seen.requested_at,
        };
        if self.to_committer.send(started).is_err() {
            return Err(Error::internal("the committer stopped"));
        }
        Ok(if seen.is_final {
            Flow::Done
        } else {
            Flow::Continue
        })
    }

    async fn truncate(&mut self, t: String) -> Result<()> {
        let Some(&w) = self.writers.route.get(&t) else {
            return Err(Error::internal(format!(
                "source truncated undeclared table {t}"
            )));
        };
        tracing::info!(pipeline = %self.spec.name, table = %t, "truncate");
        let delivered = self.writers.deliver(w, WriterMsg::Truncate).await?;
        // The lake table's rows do not say which source table they came from, so it is
        // emptied whole: its other source tables are read again (their own Truncate,
        // caused here, starts no new round).
        if !delivered || self.rereading.remove(&t) {
            return Ok(());
        }
        let lake_table = self.writers.targets[w].clone();
        for sibling in self.writers.siblings(w, &t) {
            tracing::warn!(pipeline = %self.spec.name, table = %t, %lake_table, other = %sibling, "a source table of a shared lake table was truncated: the lake table is emptied and its other source tables are read again");
            self.source.resnapshot(&sibling).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!(
                        "{t} was truncated, and lake table {lake_table} also holds rows of {sibling}, which cannot be read again: {e}. Give {t} a lake table of its own with a [[route]]"
                    ),
                )
            })?;
            self.rereading.insert(sibling);
        }
        Ok(())
    }

    async fn schema_change(&mut self, t: TableSchema) -> Result<()> {
        let Some(&w) = self.writers.route.get(&t.name) else {
            return Err(Error::unsupported(format!(
                "table {} appeared while running; restart the pipeline to add it",
                t.name
            )));
        };
        tracing::info!(pipeline = %self.spec.name, table = %t.name, "schema change");
        self.writers.deliver(w, WriterMsg::Evolve(t)).await?;
        Ok(())
    }

    /// Close the writers and the committer after the loop ended with `outcome`; ack what
    /// was committed and close the source.
    pub async fn finish(mut self, outcome: Result<()>) -> Result<RunSummary> {
        drop(self.to_committer);
        let targets = std::mem::take(&mut self.writers.targets);
        let first_error = self.writers.close(outcome.err(), &self.committer).await;
        let first_error = match self.committer.await {
            Ok(Ok(())) => first_error,
            Ok(Err(e)) => Some(e),
            Err(e) if e.is_cancelled() => first_error,
            Err(e) => first_error.or(Some(Error::internal(format!("committer task: {e}")))),
        };
        if let Some(e) = first_error {
            return Err(e);
        }
        while let Ok((id, position)) = self.acks.try_recv() {
            self.spec.failpoint(crate::Failpoint::BeforeAck(id)).await?;
            self.source.ack(&position).await?;
            self.summary.last_checkpoint = Some(id);
        }
        self.source.close().await?;
        self.summary.rows = targets.into_iter().zip(self.rows).collect();
        Ok(self.summary)
    }
}
