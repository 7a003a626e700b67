//! Starting from where the lake is: finishing the newest checkpoint record (its pending
//! files are committed again, idempotently), and resuming from the lake's own newest
//! commit when the state store lost its records or is behind.

use std::collections::HashMap;
use std::time::Duration;

use lakeshore_api::{CommitContext, Error, PendingCommit, Result, Sink, SourcePosition};

use super::Router;
use super::state::CheckpointRecord;
use crate::events;

/// Each lake table's source tables among those `position` names (routed once per
/// checkpoint, not once per table and name).
pub(super) fn owners<'p>(route: &Router, position: &'p SourcePosition) -> Owners<'p> {
    let mut out: Owners<'p> = HashMap::new();
    for source in position.source_tables() {
        out.entry(route(source).0).or_default().push(source);
    }
    out
}

/// Lake table → its source tables (see [`owners`]).
pub(super) type Owners<'p> = HashMap<String, Vec<&'p str>>;

/// The context lake table `table`'s commit records: the position keeps the row data
/// (snapshot progress, windows) of the source tables routed to it and of no other; the
/// first table the checkpoint changes (see [`whole_in`]) records the rest of the position
/// whole, the others only their own tables' entries.
pub(super) fn table_context(
    ctx: &CommitContext,
    owners: &Owners<'_>,
    table: &str,
    whole: bool,
) -> CommitContext {
    let own = owners.get(table).map_or(&[][..], Vec::as_slice);
    ctx.for_lake_table(own, whole)
}

/// The lake table whose commit of a checkpoint records its position whole: the first
/// one it changes (the same on every retry and in recovery: the record keeps the order).
pub(super) fn whole_in(pending: &[PendingCommit]) -> Option<&str> {
    pending.iter().find(|p| !p.empty).map(|p| p.table.as_str())
}

/// Finish the newest checkpoint record: commit its pending files (idempotent).
pub(super) async fn recover(
    pipeline: &str,
    route: &Router,
    rec: &CheckpointRecord,
    sink: &dyn Sink,
) -> Result<()> {
    let ctx = CommitContext::new(pipeline, rec.id, &rec.position, &rec.pending);
    let whole = whole_in(&rec.pending);
    let owners = owners(route, &rec.position);
    for p in rec.pending.iter().filter(|p| !p.empty) {
        let table_ctx = table_context(&ctx, &owners, &p.table, whole == Some(p.table.as_str()));
        if commit_with_retry(pipeline, sink, p, &table_ctx).await? {
            tracing::info!(pipeline, table = %p.table, checkpoint = rec.id, "recovered: committed pending files of the last checkpoint");
        }
    }
    tracing::info!(pipeline, checkpoint = rec.id, position = %rec.position.without_row_data(), "resuming");
    Ok(())
}

/// The lake's newest checkpoint of `pipeline` and its position, when the lake is ahead of
/// the state store (`state`: its newest record): the records were lost (a fresh pod, a
/// deleted or changed `[pipeline] state`) or are older than the lake. The lake is the
/// truth; resuming from the stale state would skip commits the lake already holds as
/// "already there" while the source moved on. Refuses when that checkpoint reached only
/// some of its tables: the missing tables' files were named only by the lost record.
/// Each commit holds only its own source tables' snapshot progress; the position is put
/// together from every table's newest commit.
pub(super) async fn lake_checkpoint(
    pipeline: &str,
    sink: &dyn Sink,
    state: Option<u64>,
) -> Result<Option<(u64, SourcePosition)>> {
    let commits = sink.last_commits(pipeline).await?;
    let Some(newest) = commits.iter().map(|c| c.checkpoint_id).max() else {
        return Ok(None);
    };
    if state.is_some_and(|s| s >= newest) {
        return Ok(None);
    }
    let at_newest: Vec<_> = commits
        .iter()
        .filter(|c| c.checkpoint_id == newest)
        .collect();
    let expected = at_newest.iter().filter_map(|c| c.tables).max().unwrap_or(0);
    let state_says = match state {
        Some(s) => format!("the state store's newest checkpoint record is {s}"),
        None => "the state store has no checkpoint record".to_string(),
    };
    if at_newest.len() < expected {
        let names: Vec<&str> = at_newest.iter().map(|c| c.table.as_str()).collect();
        return Err(Error::config(format!(
            "pipeline {pipeline}: {state_says}, and the lake's newest checkpoint {newest} reached only {} of its {expected} tables ({}); the record naming the others' files is lost. Restore the pipeline's state directory, or drop the pipeline's lake tables and run it again to start over",
            at_newest.len(),
            names.join(", ")
        )));
    }
    // The commit that records the position whole (older commits all do).
    let Some(whole) = at_newest.iter().find(|c| !c.position.is_part()) else {
        return Err(Error::config(format!(
            "pipeline {pipeline}: {state_says}, and no lake table's commit of the lake's newest checkpoint {newest} holds its whole source position. Restore the pipeline's state directory, or drop the pipeline's lake tables and run it again to start over"
        )));
    };
    let position = whole.position.with_row_data_from(&commits)?;
    events::ResumedFromLake {
        pipeline,
        checkpoint: newest,
        position: &position,
        state_says: &state_says,
    }
    .emit();
    Ok(Some((newest, position)))
}

/// Commit one table, retrying errors the sink marks retryable (a busy catalog database,
/// a storage hiccup). Commits are idempotent, so a retry after an unknown outcome is safe.
pub(crate) async fn commit_with_retry(
    pipeline: &str,
    sink: &dyn Sink,
    pending: &PendingCommit,
    ctx: &CommitContext,
) -> Result<bool> {
    let mut wait = Duration::from_millis(200);
    for attempt in 1.. {
        match sink.commit(pending, ctx).await {
            Err(e) if e.is_retryable() && attempt < 8 => {
                events::CommitRetried {
                    pipeline,
                    table: &pending.table,
                    checkpoint: ctx.checkpoint_id,
                    attempt,
                    error: &e,
                }
                .emit();
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}
