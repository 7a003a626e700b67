//! `lakeshore maintain` and the daemon's periodic maintenance: compaction of the Iceberg
//! tables a pipeline writes (every table of its sink's namespace), while ingestion goes on.

use std::time::{Duration, Instant};

use lakeshore_api::{Error, Result};
use lakeshore_iceberg::{IcebergSink, Maintenance};

use crate::config::Plan;
use lakeshore_engine::state::StateStore;

/// One table's maintenance.
pub struct Maintained {
    /// Lake table name (without namespace).
    pub table: String,
    /// What was done.
    pub done: Maintenance,
    /// How long it took.
    pub took: Duration,
}

/// The sink of `plan`, which must be Iceberg.
pub async fn sink(plan: &Plan) -> Result<IcebergSink> {
    let Some(sink) = plan
        .sink
        .as_any()
        .downcast_ref::<crate::sinks::iceberg::Iceberg>()
    else {
        return Err(Error::config(format!(
            "{}: maintenance works on Iceberg tables; this pipeline writes a Hive sink",
            plan.file.display()
        )));
    };
    IcebergSink::connect(sink.options.clone()).await
}

/// Maintain `tables` (all tables of the sink's namespace when empty), one after another.
pub async fn run(plan: &Plan, tables: &[String]) -> Result<Vec<Maintained>> {
    let sink = sink(plan).await?;
    // The files of the pipeline's pending checkpoint are not referenced yet, and must not
    // be taken for orphans.
    let pending = StateStore::open(&plan.state_url, &plan.name, &plan.sink.storage())?
        .latest()
        .await?
        .map(|r| r.pending)
        .unwrap_or_default();
    let tables = if tables.is_empty() {
        sink.tables().await?
    } else {
        tables.to_vec()
    };
    let mut done = Vec::new();
    for table in tables {
        let started = Instant::now();
        let result = sink.maintain(&table, &pending).await?;
        done.push(Maintained {
            table,
            done: result,
            took: started.elapsed(),
        });
    }
    Ok(done)
}

/// The daemon's maintenance of `plan` every `interval`, until the pipeline stops; a failed
/// round is logged and tried again at the next one.
pub async fn every(plan: Plan, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match run(&plan, &[]).await {
            Ok(done) => {
                for m in done {
                    tracing::info!(
                        pipeline = %plan.name,
                        table = %m.table,
                        partitions = m.done.compacted.partitions,
                        expired = m.done.expired.as_ref().map_or(0, |e| e.snapshots),
                        orphans = m.done.orphans.as_ref().map_or(0, |o| o.files_deleted),
                        data_files = m.done.stats.data_files,
                        delete_files = m.done.stats.delete_files,
                        took_ms = m.took.as_millis() as u64,
                        "maintenance done"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(pipeline = %plan.name, error = %e, "maintenance failed; trying again at the next interval");
            }
        }
    }
}
