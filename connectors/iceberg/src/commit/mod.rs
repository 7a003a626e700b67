//! The row-delta commit: one Iceberg snapshot that adds data files and position-delete
//! files together, landed with optimistic concurrency.
//!
//! iceberg-rust 0.10 cannot commit delete files (its `Transaction` offers only fast
//! append, and `TableCommit` cannot be built outside the crate), so this module builds the
//! snapshot from public parts — manifests, manifest list, snapshot, table metadata — and
//! lands it through the catalog seam (`CatalogHandle::land`: a compare-and-swap on the SQL
//! catalog, `updateTable` with requirements on a REST catalog).
//!
//! Invariants:
//! - **Idempotent:** before every attempt the table history is searched for this
//!   pipeline's checkpoint id; if it is there, nothing is done.
//! - **No dangling deletes:** position deletes that point into files committed before
//!   this checkpoint are valid only while those files are live. If a concurrent commit
//!   since the lookup's base snapshot removed one of them, the attempt returns
//!   [`CommitOutcome::StaleLookup`] and the caller looks the keys up again.
//! - **No lost foreign commits:** every attempt starts from the freshly loaded table and
//!   carries all of its manifests.
//!
//! One file per action over a shared snapshot producer (`snapshot.rs`), as iceberg-rust
//! keeps its `transaction/`: the row delta of a checkpoint (`row_delta.rs`), the
//! compaction's replace (`rewrite.rs`), manifest merging (`manifests.rs`), the schema
//! change (`schema.rs`), and what the history says about a pipeline (`history.rs`).

mod history;
mod manifests;
mod rewrite;
mod row_delta;
mod schema;
mod snapshot;

pub use history::{last_checkpoint, last_commit};
pub use manifests::merge_manifests;
pub use rewrite::{Rewrite, RewriteOutcome, commit_rewrite};
pub use row_delta::{CommitOutcome, RowDelta, commit_row_delta};
pub use schema::commit_schema;

/// Snapshot summary keys written by lakeshore.
pub const PIPELINE_KEY: &str = "lakeshore.pipeline";
/// Checkpoint id of the commit.
pub const CHECKPOINT_KEY: &str = "lakeshore.checkpoint-id";
/// Source position of the checkpoint.
pub const POSITION_KEY: &str = "lakeshore.source-position";
/// How many lake tables the checkpoint changed (recovery from the lake checks them all).
pub const TABLES_KEY: &str = "lakeshore.checkpoint-tables";
/// Set on snapshots written by table maintenance (`compaction`).
pub const MAINTENANCE_KEY: &str = "lakeshore.maintenance";
