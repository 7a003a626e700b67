//! What the daemon knows about each pipeline, as served by `/pipelines` and shown by
//! `lakeshore status`; kept up to date by the engine's [`Observer`] callbacks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lakeshore_api::{Error, Lag, SourcePosition};
use serde::{Deserialize, Serialize};

use lakeshore_engine::Observer;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening the sink and the source, recovering.
    Starting,
    /// Reading a consistent snapshot of at least one table.
    Snapshot,
    /// Following the change stream.
    Streaming,
    /// Failed; restarts after a pause.
    Restarting,
    /// Stopped by `POST /pipelines/{name}/pause`.
    Paused,
    /// Taking its final checkpoint.
    Stopping,
    /// A bounded source was read to its end.
    Finished,
    /// Failed with an error that a restart cannot fix (see `last_error`).
    Failed,
    /// Replica mode: another replica holds the pipeline's lease (this one takes over
    /// when that lease expires or is released).
    Standby,
}

/// The last committed checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointStatus {
    /// Checkpoint id.
    pub id: u64,
    /// When it committed, ms since the epoch.
    pub at_ms: u64,
    /// From its barrier to its last table commit.
    pub duration_ms: u64,
}

/// One lake table of a pipeline, as its commits left it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStatus {
    /// Data rows committed to it since the daemon started the pipeline.
    pub rows: u64,
    /// Its last commit, ms since the epoch (a checkpoint that did not change the table
    /// makes no commit: the table is as fresh as `last_checkpoint`, but unchanged).
    pub last_commit_ms: u64,
}

/// A source's lag (see [`lakeshore_api::Lag`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagStatus {
    /// Age of the newest change read, in seconds; 0 when caught up.
    pub seconds: Option<f64>,
    /// What is left to read, in `unit`.
    pub behind: Option<u64>,
    /// `bytes` or `messages`.
    pub unit: String,
}

/// One pipeline, as `/pipelines/{name}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// Pipeline name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// Where it is.
    pub phase: Phase,
    /// Rows routed to the lake since the daemon started it.
    pub rows: u64,
    /// Restarts after failures.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The last committed checkpoint.
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Where the source resumes after that checkpoint.
    pub source_position: Option<serde_json::Value>,
    /// Snapshot state per source table: `"running"` or `"done"`.
    pub snapshot: BTreeMap<String, String>,
    /// Per lake table committed to: rows and last commit.
    pub tables: BTreeMap<String, TableStatus>,
    /// The pipeline's file changed to something invalid; the last valid version runs.
    pub config_error: Option<String>,
    /// Lake tables parked by `on_table_error = "isolate"`, with the reason.
    pub failed_tables: BTreeMap<String, String>,
    /// How far the source's read position is behind the source, as last measured.
    pub lag: Option<LagStatus>,
    /// While failed: bytes the source keeps for the pipeline (a slot's WAL, or the binlog
    /// since its last checkpoint), measured every minute.
    pub source_held_bytes: Option<u64>,
    /// How the connection to the source is protected: `verified`, `unverified` (TLS
    /// without a certificate check) or `plain`; `null` for sources without one.
    pub source_transport: Option<lakeshore_api::Transport>,
    /// Rows of earlier runs (before restarts).
    #[serde(skip)]
    rows_before: u64,
    /// The failure was a configuration error.
    #[serde(skip)]
    failed_on_config: bool,
    /// The failure was a fence (another copy wrote its checkpoint).
    #[serde(skip)]
    failed_fenced: bool,
    /// Counts failures, so that only the newest one's watch of the source goes on.
    #[serde(skip)]
    pub(crate) failures: u64,
}

/// A pipeline's status, shared by its task, the HTTP handlers and the metrics.
#[derive(Clone)]
pub struct StatusCell(Arc<Mutex<PipelineStatus>>);

/// A [`StatusCell`] that may be gone (its pipeline's file changed or was removed).
pub struct WeakStatusCell(std::sync::Weak<Mutex<PipelineStatus>>);

impl WeakStatusCell {
    /// The cell, while its pipeline is still known.
    pub fn upgrade(&self) -> Option<StatusCell> {
        self.0.upgrade().map(StatusCell)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl StatusCell {
    /// A pipeline about to start.
    pub fn new(name: &str, file: &str) -> Self {
        StatusCell(Arc::new(Mutex::new(PipelineStatus {
            name: name.to_string(),
            file: file.to_string(),
            phase: Phase::Starting,
            rows: 0,
            restarts: 0,
            last_error: None,
            last_checkpoint: None,
            source_position: None,
            snapshot: BTreeMap::new(),
            tables: BTreeMap::new(),
            config_error: None,
            failed_tables: BTreeMap::new(),
            lag: None,
            source_held_bytes: None,
            source_transport: None,
            rows_before: 0,
            failed_on_config: false,
            failed_fenced: false,
            failures: 0,
        })))
    }

    /// A reference that does not keep the pipeline's entry alive.
    pub fn weak(&self) -> WeakStatusCell {
        WeakStatusCell(Arc::downgrade(&self.0))
    }

    /// Change it.
    pub fn update(&self, f: impl FnOnce(&mut PipelineStatus)) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    /// The pipeline failed for good with `e`.
    pub fn failed(&self, e: &Error) {
        self.update(|s| {
            s.phase = Phase::Failed;
            s.last_error = Some(e.to_string());
            s.failed_on_config = e.kind() == lakeshore_api::ErrorKind::Config;
            s.failed_fenced = e.kind() == lakeshore_api::ErrorKind::Fenced;
            s.failures += 1;
        });
    }

    /// True when it failed with a configuration error.
    pub fn failed_on_config(&self) -> bool {
        self.get().failed_on_config
    }

    /// True when it failed because another copy wrote its checkpoint.
    pub fn failed_fenced(&self) -> bool {
        let s = self.get();
        s.phase == Phase::Failed && s.failed_fenced
    }

    /// A copy.
    pub fn get(&self) -> PipelineStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Moves the phase from `Starting` on once data flows or a checkpoint commits.
fn running(s: &mut PipelineStatus) {
    if matches!(s.phase, Phase::Starting | Phase::Restarting) {
        s.phase = if s.snapshot.values().any(|v| v == "running") {
            Phase::Snapshot
        } else {
            Phase::Streaming
        };
    }
}

impl Observer for StatusCell {
    fn transport(&self, transport: lakeshore_api::Transport) {
        self.update(|s| s.source_transport = Some(transport));
    }

    fn rows(&self, total_rows: u64, _events: Option<u64>) {
        self.update(|s| {
            s.rows = s.rows_before + total_rows;
            running(s);
        });
    }

    fn checkpoint(&self, id: u64, position: &SourcePosition, total_rows: u64, took: Duration) {
        self.update(|s| {
            tracing::info!(
                pipeline = %s.name,
                checkpoint = id,
                committed_rows = total_rows,
                checkpoint_ms = took.as_millis() as u64,
                "checkpoint committed"
            );
            s.last_checkpoint = Some(CheckpointStatus {
                id,
                at_ms: now_ms(),
                duration_ms: took.as_millis() as u64,
            });
            s.source_position = Some(position.without_row_data());
            running(s);
        });
    }

    fn snapshot(&self, table: &str, done: bool) {
        self.update(|s| {
            s.snapshot.insert(
                table.to_string(),
                if done { "done" } else { "running" }.to_string(),
            );
            if s.phase == Phase::Snapshot && s.snapshot.values().all(|v| v == "done") {
                s.phase = Phase::Streaming;
            } else if !done && s.phase == Phase::Streaming {
                s.phase = Phase::Snapshot;
            }
        });
    }

    fn table_committed(&self, table: &str, rows: u64) {
        self.update(|s| {
            let at = now_ms();
            let t = s.tables.entry(table.to_string()).or_insert(TableStatus {
                rows: 0,
                last_commit_ms: at,
            });
            t.rows += rows;
            t.last_commit_ms = at;
        });
    }

    fn lag(&self, lag: &Lag) {
        self.update(|s| {
            s.lag = Some(LagStatus {
                seconds: lag.seconds,
                behind: lag.behind,
                unit: lag.unit.to_string(),
            });
        });
    }

    fn table_failed(&self, table: &str, error: &Error) {
        self.update(|s| {
            s.failed_tables.insert(table.to_string(), error.to_string());
        });
    }

    fn restarting(&self, error: &Error, _pause: Duration) {
        self.update(|s| {
            s.phase = Phase::Restarting;
            s.rows_before = s.rows;
            s.restarts += 1;
            s.last_error = Some(error.to_string());
        });
    }
}
