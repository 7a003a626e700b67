//! `lakeshore maintain` and the daemon's maintenance: compaction of the Iceberg tables a
//! pipeline writes, while ingestion goes on. The daemon compacts on its own (`auto`):
//! whenever a commit makes a table's estimated read cost due (see
//! [`lakeshore_iceberg::schedule`]), the worst table first, one table at a time in the
//! whole process, and only within its time share: after a round that took `t`, the next
//! one (of any pipeline) starts no sooner than `t × (1 − share) / share` later. It can
//! also run every table's maintenance at a fixed `interval` (`every`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lakeshore_api::{Error, Result};
use lakeshore_iceberg::schedule::{Due, Shape};
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

/// The Iceberg sink settings of `plan`.
fn iceberg(plan: &Plan) -> Result<&crate::sinks::iceberg::Iceberg> {
    plan.sink
        .as_any()
        .downcast_ref::<crate::sinks::iceberg::Iceberg>()
        .ok_or_else(|| {
            Error::config(format!(
                "{}: maintenance works on Iceberg tables; this pipeline writes a Hive sink",
                plan.file.display()
            ))
        })
}

/// The sink of `plan`, which must be Iceberg.
pub async fn sink(plan: &Plan) -> Result<IcebergSink> {
    IcebergSink::connect(iceberg(plan)?.options.clone()).await
}

/// The pipeline's pending checkpoint: its files are not referenced yet, and must not be
/// taken for orphans.
async fn pending(plan: &Plan) -> Result<Vec<lakeshore_api::PendingCommit>> {
    Ok(
        StateStore::open(&plan.state_url, &plan.name, &plan.sink.storage())?
            .latest()
            .await?
            .map(|r| r.pending)
            .unwrap_or_default(),
    )
}

/// Maintain `tables` (all tables of the sink's namespace when empty), one after another.
pub async fn run(plan: &Plan, tables: &[String]) -> Result<Vec<Maintained>> {
    let sink = sink(plan).await?;
    let pending = pending(plan).await?;
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

/// When the process's next maintenance round may start (one round at a time: the lock is
/// held through the round).
static NEXT_ROUND: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);

/// How often a table's orphans are looked for by the scheduled rounds, at most.
const ORPHANS_EVERY: Duration = Duration::from_secs(3600);

/// A table without commits for this long is compacted once 5 % over.
const QUIET: Duration = Duration::from_secs(60);

/// The daemon's own maintenance of `plan`'s tables (`[sink.maintenance] auto`), until the
/// pipeline stops. A failed round is logged; the table is tried again after its next
/// commit.
pub async fn auto(plan: Plan) {
    let Some(mut s) = Scheduler::new(plan) else {
        return;
    };
    loop {
        let _ = tokio::time::timeout(QUIET / 4, s.costs.changed()).await;
        if s.choose().is_some() {
            // Commits go on while it waits for its turn: it chooses again then.
            s.budgeted(Scheduler::choose).await;
        }
    }
}

/// A bounded run of `plan` has ended: its tables are compacted down to any excess of a
/// file (once each) before the daemon reports it finished.
pub async fn settle(plan: Plan) {
    let Some(mut s) = Scheduler::new(plan) else {
        return;
    };
    let mut rounds = 0;
    while s.worst(Due::settle()).is_some() && rounds < s.costs.len() {
        rounds += 1;
        if let Some(table) = s.budgeted(|s| s.worst(Due::settle())).await
            && let Some(shape) = s.costs.shape(&table)
        {
            s.settled.insert(table, shape);
        }
    }
}

/// One pipeline's scheduled maintenance.
struct Scheduler {
    plan: Plan,
    costs: std::sync::Arc<lakeshore_iceberg::schedule::ReadCosts>,
    compact_at: f64,
    share: f64,
    target: u64,
    sink: Option<IcebergSink>,
    /// Tables a round left as they were, with the shape it left: not due again until a
    /// commit changes them.
    settled: HashMap<String, Shape>,
    orphans_looked: HashMap<String, Instant>,
}

impl Scheduler {
    /// `None` when `plan` has no auto maintenance.
    fn new(plan: Plan) -> Option<Scheduler> {
        let options = &iceberg(&plan).ok()?.options;
        let auto = options.maintenance.auto.clone()?;
        Some(Scheduler {
            costs: options.read_costs.clone(),
            compact_at: auto.compact_at,
            share: auto.time_share,
            target: options.maintenance.target_file_size,
            plan,
            sink: None,
            settled: HashMap::new(),
            orphans_looked: HashMap::new(),
        })
    }

    fn worst(&self, due: Due) -> Option<(String, f64)> {
        let skip = |t: &str, s: &Shape| self.settled.get(t) == Some(s);
        self.costs.worst(due, self.target, skip)
    }

    /// The table to compact now: one due under changes, else one quiet for a while.
    fn choose(&self) -> Option<(String, f64)> {
        self.worst(Due::busy(self.compact_at))
            .or_else(|| self.worst(Due::quiet(QUIET)))
    }

    /// Wait for the process's next round, and maintain the table `choose` names then (if
    /// any), within the time share; returns that table.
    async fn budgeted(
        &mut self,
        choose: impl Fn(&Self) -> Option<(String, f64)>,
    ) -> Option<String> {
        let mut next = NEXT_ROUND.lock().await;
        if let Some(at) = *next {
            tokio::time::sleep_until(at.into()).await;
        }
        let (table, ratio) = choose(self)?;
        let took = self.round(&table, ratio).await;
        *next = Some(Instant::now() + took.mul_f64((1.0 - self.share) / self.share));
        Some(table)
    }

    /// Maintain `table` (estimated at `ratio`), log what it did; how long it took.
    async fn round(&mut self, table: &str, ratio: f64) -> Duration {
        let started = Instant::now();
        let result = self.maintain(table).await;
        let took = started.elapsed();
        let plan = &self.plan;
        match result {
            Ok(m) => {
                let after = Shape::from_stats(&m.stats);
                let c = &m.compacted;
                if c.partitions + c.deletes_merged + c.delete_files_removed > 0 {
                    self.settled.remove(table);
                } else {
                    self.settled.insert(table.to_string(), after);
                }
                tracing::info!(
                    pipeline = %plan.name,
                    table = %table,
                    read_cost_before = format!("{ratio:.2}"),
                    read_cost_after = format!("{:.2}", self.costs.ratio(table, self.target).unwrap_or(1.0)),
                    partitions = c.partitions,
                    deletes_merged = c.deletes_merged,
                    expired = m.expired.as_ref().map_or(0, |e| e.snapshots),
                    orphans = m.orphans.as_ref().map_or(0, |o| o.files_deleted),
                    data_files = m.stats.data_files,
                    delete_files = m.stats.delete_files,
                    took_ms = took.as_millis() as u64,
                    "maintenance done"
                );
            }
            Err(e) => {
                self.costs.forget(table);
                self.sink = None;
                tracing::warn!(pipeline = %plan.name, table = %table, error = %e, "maintenance failed; trying again after the table's next commit");
            }
        }
        took
    }

    /// Compaction of `table`, and its orphans once an hour when set.
    async fn maintain(&mut self, table: &str) -> Result<Maintenance> {
        if self.sink.is_none() {
            self.sink = Some(sink(&self.plan).await?);
        }
        let sink = self.sink.as_ref().expect("connected above");
        let orphans = iceberg(&self.plan)?
            .options
            .maintenance
            .remove_orphans_older_than
            .is_some()
            && self
                .orphans_looked
                .get(table)
                .is_none_or(|t| t.elapsed() >= ORPHANS_EVERY);
        if orphans {
            let pending = pending(&self.plan).await?;
            let done = sink.maintain_scheduled(table, Some(&pending)).await?;
            self.orphans_looked
                .insert(table.to_string(), Instant::now());
            return Ok(done);
        }
        sink.maintain_scheduled(table, None).await
    }
}
