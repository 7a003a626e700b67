//! What a pipeline reports, one type per event. Each event's `emit` writes its log line,
//! its metrics and its [`Observer`] call together, so that the three never say different
//! things and a new event is one type here.
//!
//! Metric names follow `lakeshore_<subject>_<what>[_<unit>][_total]`: the subject is
//! `pipeline`, `checkpoint`, `table` or `source` (what the engine sees of every pipeline),
//! or a connector's name (`postgres`, `mysql`, `kafka`, `hive`) for what only it measures;
//! units are spelled out (`_seconds`, `_bytes`), counters end in `_total`, and every
//! metric of a pipeline carries its `pipeline` label. The list, and the names this scheme
//! replaced, are in `docs/daemon.md`.

use std::time::Duration;

use lakeshore_api::{Error, Lag, SourcePosition, Transport};

use crate::Observer;

/// A checkpoint committed to every table: its duration from barrier to last commit.
pub struct CheckpointCommitted<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The checkpoint.
    pub id: u64,
    /// Where the source resumes after it.
    pub position: &'a SourcePosition,
    /// Rows committed by the run so far.
    pub total_rows: u64,
    /// From the barrier to the last table's commit.
    pub took: Duration,
}

impl CheckpointCommitted<'_> {
    /// Log, metrics, observer.
    pub fn emit(&self, observer: &dyn Observer) {
        let pipeline = self.pipeline.to_string();
        metrics::histogram!("lakeshore_checkpoint_duration_seconds", "pipeline" => pipeline.clone())
            .record(self.took.as_secs_f64());
        metrics::gauge!("lakeshore_checkpoint_last_id", "pipeline" => pipeline).set(self.id as f64);
        observer.checkpoint(self.id, self.position, self.total_rows, self.took);
        tracing::debug!(
            pipeline = self.pipeline,
            checkpoint = self.id,
            ms = self.took.as_millis() as u64,
            "checkpoint committed"
        );
    }
}

/// One table's commit of a checkpoint.
pub struct TableCommitted<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The lake table.
    pub table: &'a str,
    /// How long the commit took, retries included.
    pub took: Duration,
    /// Data rows the commit added.
    pub rows: u64,
}

impl TableCommitted<'_> {
    /// Metrics, observer.
    pub fn emit(&self, observer: &dyn Observer) {
        let (pipeline, table) = (self.pipeline.to_string(), self.table.to_string());
        metrics::histogram!("lakeshore_table_commit_duration_seconds", "pipeline" => pipeline.clone(), "table" => table.clone())
            .record(self.took.as_secs_f64());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        metrics::gauge!("lakeshore_table_last_commit_timestamp_seconds", "pipeline" => pipeline, "table" => table)
            .set(now.map_or(0.0, |d| d.as_secs_f64()));
        observer.table_committed(self.table, self.rows);
    }
}

/// A table's commit failed with a retryable error and is tried again.
pub struct CommitRetried<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The lake table.
    pub table: &'a str,
    /// The checkpoint.
    pub checkpoint: u64,
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// Why.
    pub error: &'a Error,
}

impl CommitRetried<'_> {
    /// Log, metrics.
    pub fn emit(&self) {
        metrics::counter!("lakeshore_table_commit_retries_total", "pipeline" => self.pipeline.to_string(), "table" => self.table.to_string())
            .increment(1);
        tracing::warn!(pipeline = self.pipeline, table = self.table, checkpoint = self.checkpoint, attempt = self.attempt, error = %self.error, "commit failed; retrying");
    }
}

/// A table parked by `on_table_error = "isolate"`.
pub struct TableParked<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The lake table.
    pub table: &'a str,
    /// Why.
    pub error: &'a Error,
}

impl TableParked<'_> {
    /// Log, metrics, observer.
    pub fn emit(&self, observer: &dyn Observer) {
        tracing::error!(pipeline = self.pipeline, table = self.table, error = %self.error, "table parked (on_table_error = \"isolate\"); the pipeline's other tables go on");
        metrics::gauge!("lakeshore_table_parked", "pipeline" => self.pipeline.to_string(), "table" => self.table.to_string())
            .set(1.0);
        observer.table_failed(self.table, self.error);
    }
}

/// The source's lag, measured about once a second.
pub struct SourceLagged<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// What the source measured.
    pub lag: &'a Lag,
}

impl SourceLagged<'_> {
    /// Metrics, observer.
    pub fn emit(&self, observer: &dyn Observer) {
        if let Some(seconds) = self.lag.seconds {
            metrics::gauge!("lakeshore_source_lag_seconds", "pipeline" => self.pipeline.to_string())
                .set(seconds);
        }
        if let Some(behind) = self.lag.behind {
            metrics::gauge!("lakeshore_source_lag", "pipeline" => self.pipeline.to_string(), "unit" => self.lag.unit)
                .set(behind as f64);
        }
        observer.lag(self.lag);
    }
}

/// How the connection to the source is protected, once per run. An unchecked
/// certificate or plain text is a warning.
pub struct SourceConnected<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The connection's protection.
    pub transport: Transport,
}

impl SourceConnected<'_> {
    /// Log, metrics, observer.
    pub fn emit(&self, observer: &dyn Observer) {
        let (pipeline, t) = (self.pipeline, self.transport);
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
}

/// The state store lost (or never had) the checkpoint the lake holds: the run resumes
/// from the lake's own commit.
pub struct ResumedFromLake<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// The lake's newest checkpoint.
    pub checkpoint: u64,
    /// Where the source resumes.
    pub position: &'a SourcePosition,
    /// What the state store said.
    pub state_says: &'a str,
}

impl ResumedFromLake<'_> {
    /// Log, metrics.
    pub fn emit(&self) {
        let (pipeline, newest) = (self.pipeline, self.checkpoint);
        tracing::warn!(pipeline, checkpoint = newest, position = %self.position.without_row_data(), "{}, but the lake holds checkpoint {newest}: resuming from the lake's commit", self.state_says);
        metrics::counter!("lakeshore_checkpoint_resumed_from_lake_total", "pipeline" => pipeline.to_string())
            .increment(1);
    }
}

/// A run failed and the pipeline restarts from its last checkpoint after `pause`.
pub struct Restarting<'a> {
    /// The pipeline.
    pub pipeline: &'a str,
    /// Why the run failed.
    pub error: &'a Error,
    /// The pause before the restart.
    pub pause: Duration,
}

impl Restarting<'_> {
    /// Log, metrics, observer.
    pub fn emit(&self, observer: &dyn Observer) {
        tracing::warn!(
            pipeline = self.pipeline,
            error = %self.error,
            retry_in_ms = self.pause.as_millis() as u64,
            "pipeline failed; restarting from its last checkpoint"
        );
        metrics::counter!("lakeshore_pipeline_restarts_total", "pipeline" => self.pipeline.to_string())
            .increment(1);
        observer.restarting(self.error, self.pause);
    }
}

/// The counters of rows (and their Arrow bytes) routed to one table, made once per run
/// so that each batch only adds to them.
pub fn table_row_counters(pipeline: &str, table: &str) -> (metrics::Counter, metrics::Counter) {
    let labels = [
        ("pipeline", pipeline.to_string()),
        ("table", table.to_string()),
    ];
    (
        metrics::counter!("lakeshore_table_rows_total", &labels),
        metrics::counter!("lakeshore_table_bytes_total", &labels),
    )
}
