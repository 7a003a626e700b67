//! The committer: once every writer prepared checkpoint `n`, it writes the checkpoint
//! record {n, P(n), pending} (create-if-absent: a second copy of the pipeline is fenced
//! off here), commits every table, and only then lets the source be acked.
//! Checkpoints commit one at a time, in order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use lakeshore_api::{CommitContext, PendingCommit, Result, Sink, SourcePosition};
use tokio::sync::{mpsc, watch};

use crate::events;
use crate::recovery::{commit_with_retry, owners, table_context, whole_in};
use crate::state::CheckpointRecord;
use crate::{Checkpoints, Failpoint, Observer, PipelineSpec};

/// Lake tables of one checkpoint committed at once: a whole database's tables changed in
/// one checkpoint commit in a fraction of the time one after the other takes (each
/// commit waits on the catalog and on object storage more than on the CPU).
const COMMIT_CONCURRENCY: usize = 8;

pub(crate) enum CommitterMsg {
    /// The source emitted barrier `id` at `position`; it was asked for `at`.
    Started {
        id: u64,
        position: SourcePosition,
        at: Instant,
    },
    /// A writer's files of one checkpoint are durable.
    Prepared(PendingCommit),
    /// The table's writer failed and is parked: checkpoints no longer wait for it.
    Parked(String),
}

pub(crate) struct Committer {
    pub spec: Arc<PipelineSpec>,
    pub sink: Arc<dyn Sink>,
    pub store: Checkpoints,
    /// The lake tables whose writers must prepare each checkpoint.
    pub expected: BTreeSet<String>,
    /// The newest committed checkpoint, for writers that look committed rows up.
    pub committed: watch::Sender<u64>,
    /// Committed checkpoints, for the source's ack.
    pub ack: mpsc::UnboundedSender<(u64, SourcePosition)>,
    pub observer: Arc<dyn Observer>,
}

impl Committer {
    /// Commit every checkpoint as soon as it is complete, until the writers and the run
    /// are gone.
    pub async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<CommitterMsg>) -> Result<()> {
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
                    self.expected.remove(&table);
                }
            }
            // Commit every complete checkpoint, in order.
            while let Some((&id, _)) = started.first_key_value() {
                if !self.ready(prepared.get(&id)) {
                    break;
                }
                let (position, at) = started.remove(&id).expect("first key exists");
                let pending = prepared.remove(&id).unwrap_or_default();
                total_rows += pending.iter().map(|p| p.added_rows).sum::<u64>();
                self.commit(id, &position, pending).await?;
                let took = at.elapsed();
                events::CheckpointCommitted {
                    pipeline: &self.spec.name,
                    id,
                    position: &position,
                    total_rows,
                    took,
                }
                .emit(self.observer.as_ref());
                self.committed.send_replace(id);
                let _ = self.ack.send((id, position));
                self.store.prune().await?;
            }
        }
        Ok(())
    }

    /// True when every expected writer prepared the checkpoint.
    fn ready(&self, prepared: Option<&Vec<PendingCommit>>) -> bool {
        prepared.map_or(self.expected.is_empty(), |p| {
            // Counted first: checked table by table only once enough arrived (a thousand
            // tables would otherwise cost a million comparisons per checkpoint).
            p.len() >= self.expected.len() && {
                let have: HashSet<&str> = p.iter().map(|pending| pending.table.as_str()).collect();
                self.expected.iter().all(|t| have.contains(t.as_str()))
            }
        })
    }

    /// Write the record of checkpoint `id`, then commit each table.
    async fn commit(
        &self,
        id: u64,
        position: &SourcePosition,
        pending: Vec<PendingCommit>,
    ) -> Result<()> {
        let record = CheckpointRecord {
            pipeline: self.spec.name.clone(),
            id,
            position: position.clone(),
            pending,
            created_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        self.spec.failpoint(Failpoint::BeforeRecord(id)).await?;
        tracing::debug!(checkpoint = id, "writing the checkpoint record");
        self.store.write(&record).await?;
        let ctx = CommitContext::new(&self.spec.commit_as, id, position, &record.pending);
        // Tables the checkpoint did not change need no commit (and no catalog request);
        // the others commit side by side, each idempotent on its own.
        let whole = whole_in(&record.pending);
        let owners = owners(&self.spec.route, position);
        let failed = AtomicBool::new(false);
        let commits: Vec<_> = record
            .pending
            .iter()
            .filter(|p| !p.empty)
            .map(|p| {
                let table_ctx =
                    table_context(&ctx, &owners, &p.table, whole == Some(p.table.as_str()));
                self.commit_table(id, table_ctx, p, &failed)
            })
            .collect();
        // Every started commit runs to its end, so that none is cut off half-way; after
        // an error no other starts; the first error is the checkpoint's.
        let results: Vec<Result<()>> = futures::stream::iter(commits)
            .buffer_unordered(COMMIT_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<()>>()?;
        self.spec.failpoint(Failpoint::AfterCommits(id)).await
    }

    /// Commit one table's files of checkpoint `id`, unless another table's commit of it
    /// failed already (`failed`): the checkpoint fails anyway, and a thousand tables each
    /// retrying against a catalog that is down would hold its error back for long.
    async fn commit_table(
        &self,
        id: u64,
        ctx: CommitContext,
        p: &PendingCommit,
        failed: &AtomicBool,
    ) -> Result<()> {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let result = self.commit_one(id, ctx, p).await;
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn commit_one(&self, id: u64, ctx: CommitContext, p: &PendingCommit) -> Result<()> {
        self.spec
            .failpoint(Failpoint::BeforeCommit(id, p.table.clone()))
            .await?;
        let started = Instant::now();
        tracing::debug!(checkpoint = id, table = %p.table, "committing");
        if commit_with_retry(&self.spec.name, self.sink.as_ref(), p, &ctx).await? {
            events::TableCommitted {
                pipeline: &self.spec.name,
                table: &p.table,
                took: started.elapsed(),
                rows: p.added_rows,
            }
            .emit(self.observer.as_ref());
        }
        Ok(())
    }
}
