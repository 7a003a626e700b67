//! One writer task per lake table: the router from source tables to writers, delivery
//! with back-pressure, parking a failed table (`on_table_error = "isolate"`), and closing
//! them all at the end of a run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use lakeshore_api::{
    ChangeBatch, Error, ErrorKind, Preparing, Result, Sink, TableSchema, TableTarget, TableWriter,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;

use crate::committer::CommitterMsg;
use crate::events;
use crate::{Observer, PipelineSpec};

/// Batches queued per writer before the source waits: a barrier waits behind at most
/// this many batches per writer, so a checkpoint finishes in bounded time.
const CHANNEL_DEPTH: usize = 4;

/// Lake tables opened at once when a run starts.
const OPEN_CONCURRENCY: usize = 8;

pub(crate) enum WriterMsg {
    Batch(ChangeBatch),
    Evolve(TableSchema),
    Truncate,
    Watermark(i64),
    Barrier(u64),
}

struct Writer {
    tx: mpsc::Sender<WriterMsg>,
    task: JoinHandle<Result<()>>,
    /// Parked after an error (`on_table_error = "isolate"`): gets nothing more.
    parked: bool,
}

/// The writers of one run.
pub(crate) struct Writers {
    writers: Vec<Writer>,
    /// The lake table of each writer.
    pub targets: Vec<String>,
    /// Source table → writer.
    pub route: HashMap<String, usize>,
    spec: Arc<PipelineSpec>,
    to_committer: mpsc::UnboundedSender<CommitterMsg>,
    observer: Arc<dyn Observer>,
}

impl Writers {
    /// One writer task per lake table (several source tables may route to one).
    pub async fn open(
        spec: &Arc<PipelineSpec>,
        tables: Vec<TableSchema>,
        sink: &dyn Sink,
        to_committer: &mpsc::UnboundedSender<CommitterMsg>,
        committed: &watch::Receiver<u64>,
        pressure: &Arc<AtomicBool>,
        observer: &Arc<dyn Observer>,
    ) -> Result<Writers> {
        let mut out = Writers {
            writers: Vec::new(),
            targets: Vec::new(),
            route: HashMap::new(),
            spec: spec.clone(),
            to_committer: to_committer.clone(),
            observer: observer.clone(),
        };
        // Lake tables that a source table reached without a route: they take no other.
        let mut unrouted: Vec<bool> = Vec::new();
        let mut to_open: Vec<TableTarget> = Vec::new();
        for table in tables {
            let (target, routed) = (spec.route)(&table.name);
            let idx = match out.targets.iter().position(|t| *t == target) {
                Some(i) if routed && !unrouted[i] => i,
                Some(i) => return Err(out.collision(i, &target, &table.name)),
                None => {
                    let partitioning = spec
                        .partitioning
                        .get(&target)
                        .cloned()
                        .unwrap_or_else(|| spec.default_partitioning.clone());
                    to_open.push(TableTarget {
                        source: table.clone(),
                        name: target.clone(),
                        partitioning,
                    });
                    out.targets.push(target);
                    unrouted.push(!routed);
                    out.targets.len() - 1
                }
            };
            out.route.insert(table.name, idx);
        }
        // A whole database's tables open side by side (each a catalog round trip or two),
        // in order.
        let opening: Vec<_> = to_open.iter().map(|t| sink.open_table(t)).collect();
        let opened: Vec<Result<Box<dyn TableWriter>>> = futures::stream::iter(opening)
            .buffered(OPEN_CONCURRENCY)
            .collect()
            .await;
        for writer in opened {
            let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
            let task = tokio::spawn(writer_task(
                writer?,
                rx,
                to_committer.clone(),
                committed.clone(),
                pressure.clone(),
            ));
            out.writers.push(Writer {
                tx,
                task,
                parked: false,
            });
        }
        Ok(out)
    }

    /// Two source tables would land in lake table `target` (writer `i`) without a route
    /// that merges them on purpose.
    fn collision(&self, i: usize, target: &str, table: &str) -> Error {
        let mut others: Vec<&String> = self
            .route
            .iter()
            .filter(|(_, w)| **w == i)
            .map(|(n, _)| n)
            .collect();
        others.sort();
        Error::config(format!(
            "source tables {} and {table} would both land in lake table {target} (the name without its schema); give {table} a lake table of its own with a [[route]] (from = \"{table}\", to = \"...\"), or merge them on purpose with a [[route]] that matches all of them",
            others.first().map_or("", |n| n.as_str()),
        ))
    }

    /// The source table `table` names (itself, or the one source table routed to lake
    /// table `table`) and its writer.
    pub fn resolve(&self, table: &str) -> Result<(String, usize)> {
        if let Some(&w) = self.route.get(table) {
            return Ok((table.to_string(), w));
        }
        let mut from: Vec<_> = self
            .route
            .iter()
            .filter(|(_, w)| self.targets[**w] == table)
            .collect();
        from.sort();
        let config = |m: String| Error::config(m);
        match from.as_slice() {
            [(name, w)] => Ok(((*name).clone(), **w)),
            [] => {
                let mut known: Vec<_> = self.route.keys().cloned().collect();
                known.sort();
                Err(config(format!(
                    "no table {table} in this pipeline; its tables are {}",
                    known.join(", ")
                )))
            }
            several => {
                let names: Vec<_> = several.iter().map(|(n, _)| n.as_str()).collect();
                Err(config(format!(
                    "lake table {table} is written from {}; name one of them",
                    names.join(", ")
                )))
            }
        }
    }

    /// How many writers there are.
    pub fn len(&self) -> usize {
        self.writers.len()
    }

    /// True when writer `w` is parked.
    pub fn is_parked(&self, w: usize) -> bool {
        self.writers[w].parked
    }

    /// The source tables routed to writer `w` other than `table`, sorted.
    pub fn siblings(&self, w: usize, table: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .route
            .iter()
            .filter(|(name, i)| **i == w && *name != table)
            .map(|(name, _)| name.clone())
            .collect();
        out.sort();
        out
    }

    /// Hand `msg` to writer `w`. A writer that stopped fails the run, unless tables are
    /// isolated and it stopped on unsupported input: then it is parked and `Ok(false)`.
    pub async fn deliver(&mut self, w: usize, msg: WriterMsg) -> Result<bool> {
        if self.writers[w].parked {
            return Ok(false);
        }
        if self.writers[w].tx.send(msg).await.is_ok() {
            return Ok(true);
        }
        self.stopped(w).await.map(|()| false)
    }

    /// Hand a copy of `msg` to every writer.
    pub async fn deliver_all(&mut self, msg: impl Fn() -> WriterMsg) -> Result<()> {
        for w in 0..self.writers.len() {
            self.deliver(w, msg()).await?;
        }
        Ok(())
    }

    /// A writer that failed in `prepare` would otherwise go unnoticed until the source
    /// sends its table something again: the checkpoint would wait for it without a word.
    pub async fn check(&mut self) -> Result<()> {
        match self
            .writers
            .iter()
            .position(|w| !w.parked && w.task.is_finished())
        {
            Some(w) => self.stopped(w).await,
            None => Ok(()),
        }
    }

    /// Writer `w` stopped: its error fails the run, or parks it (isolated tables,
    /// unsupported input).
    async fn stopped(&mut self, w: usize) -> Result<()> {
        let stopped = Error::internal("a table writer stopped");
        if !self.spec.isolate_tables {
            return Err(stopped);
        }
        match (&mut self.writers[w].task).await {
            Ok(Err(e)) if e.kind() == ErrorKind::Unsupported => {
                self.park(w, &e);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            _ => Err(stopped),
        }
    }

    /// Park writer `w` after `error` (`on_table_error = "isolate"`): it gets nothing more
    /// and checkpoints no longer wait for it; its open files are never committed.
    pub fn park(&mut self, w: usize, error: &Error) {
        let table = &self.targets[w];
        events::TableParked {
            pipeline: &self.spec.name,
            table,
            error,
        }
        .emit(self.observer.as_ref());
        self.writers[w].parked = true;
        // Closing its channel ends the writer task.
        drop(std::mem::replace(
            &mut self.writers[w].tx,
            mpsc::channel(1).0,
        ));
        let _ = self.to_committer.send(CommitterMsg::Parked(table.clone()));
    }

    /// Close the writers: they finish the final checkpoint (if any) and stop. After an
    /// error (`first_error`) the ones still running are stopped. The first writer to fail
    /// stops the rest and the committer (a writer may be waiting for a commit that the
    /// failed one will never let happen); what was durable is recovered by the next run,
    /// as after a crash. Returns the error that explains the run's end.
    pub async fn close(
        self,
        mut first_error: Option<Error>,
        committer: &JoinHandle<Result<()>>,
    ) -> Option<Error> {
        drop(self.to_committer);
        // Parked writers are done with (their tasks were awaited when they were parked).
        let mut tasks: Vec<_> = self
            .writers
            .into_iter()
            .filter(|w| !w.parked)
            .map(|w| {
                drop(w.tx);
                w.task
            })
            .collect();
        let stop_all = |tasks: &[JoinHandle<Result<()>>]| {
            tasks.iter().for_each(|t| t.abort());
            committer.abort();
        };
        if first_error.is_some() {
            // Writers that already stopped keep their errors; the rest are stopped.
            tasks
                .iter()
                .filter(|t| !t.is_finished())
                .for_each(|t| t.abort());
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
                    first_error =
                        first_error.or(Some(Error::internal(format!("writer task: {e}"))));
                    stop_all(&tasks);
                }
            }
        }
        first_error
    }
}

/// The rest of a checkpoint's preparation, running beside the writer
/// ([`TableWriter::prepare_overlapped`]); it tells the committer itself. Dropped, it stops.
type Finishing = AbortOnDropHandle<Result<()>>;

/// Wait for the checkpoint being finished, if any; its error is the writer's.
async fn finished(finishing: &mut Option<Finishing>) -> Result<()> {
    match finishing.take() {
        Some(f) => joined(f.await),
        None => Ok(()),
    }
}

/// The outcome of a finished preparation task.
fn joined(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.map_err(|e| Error::internal(format!("preparing a checkpoint: {e}")))?
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
    let mut finishing: Option<Finishing> = None;
    loop {
        let msg = tokio::select! {
            // A failed preparation stops the writer now, not at the next barrier.
            r = async { finishing.as_mut().expect("guarded").await }, if finishing.is_some() => {
                finishing = None;
                joined(r)?;
                continue;
            }
            msg = rx.recv() => msg,
        };
        let Some(msg) = msg else { break };
        let barrier = match msg {
            WriterMsg::Barrier(id) => id,
            other => {
                if !matches!(other, WriterMsg::Batch(_) | WriterMsg::Watermark(_)) {
                    finished(&mut finishing).await?;
                }
                if let Err(e) = handle(writer.as_mut(), other, &mut asked, &pressure).await {
                    // The checkpoint that passed its barrier before the failing batch
                    // still gets committed (a parked table keeps what came before).
                    finished(&mut finishing).await?;
                    return Err(e);
                }
                continue;
            }
        };
        finished(&mut finishing).await?;
        // Lookups of committed rows must see every earlier checkpoint.
        committed
            .wait_for(|c| *c + 1 >= barrier)
            .await
            .map_err(|_| Error::internal("the committer stopped"))?;
        tracing::debug!(checkpoint = barrier, "preparing");
        asked = false;
        match writer.prepare_overlapped(barrier).await? {
            Preparing::Ready(pending) => {
                tracing::debug!(checkpoint = barrier, table = %pending.table, "prepared");
                if done.send(CommitterMsg::Prepared(pending)).is_err() {
                    return Ok(());
                }
            }
            Preparing::Later(rest) => {
                let done = done.clone();
                finishing = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                    let pending = rest.await?;
                    tracing::debug!(checkpoint = barrier, table = %pending.table, "prepared");
                    // A stopped committer stops the writer through its channel.
                    let _ = done.send(CommitterMsg::Prepared(pending));
                    Ok(())
                })));
            }
        }
    }
    finished(&mut finishing).await
}

/// Everything but a barrier, on the writer.
async fn handle(
    writer: &mut dyn TableWriter,
    msg: WriterMsg,
    asked: &mut bool,
    pressure: &AtomicBool,
) -> Result<()> {
    match msg {
        WriterMsg::Batch(b) => {
            writer.write(b).await?;
            if !*asked && writer.wants_checkpoint() {
                pressure.store(true, Ordering::Relaxed);
                *asked = true;
            }
        }
        WriterMsg::Evolve(schema) => writer.evolve(&schema).await?,
        WriterMsg::Truncate => writer.truncate().await?,
        WriterMsg::Watermark(w) => writer.watermark(w),
        WriterMsg::Barrier(_) => return Err(Error::internal("a barrier reached handle")),
    }
    Ok(())
}
