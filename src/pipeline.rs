//! Wiring a validated plan to connectors (by `type`) and to the engine; the progress
//! display for `backfill`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lakeshore_api::{Error, ErrorKind, Ledger, Result, SourcePosition};
use tokio::sync::{mpsc, watch};

use crate::config::Plan;
use crate::config::daemon::RestartPolicy;
use lakeshore_engine::group::{self, GroupLedger};
use lakeshore_engine::state::StateStore;
use lakeshore_engine::{self as engine, Checkpoints, Command, Observer, PipelineSpec, RunSummary};

/// `validate --connect`: check the source's server and the sink's storage without
/// changing anything.
pub async fn check(plan: &Plan) -> Result<Vec<String>> {
    let mut lines = plan.source.check().await?;
    lines.extend(plan.sink.check().await?);
    Ok(lines)
}

/// Run `plan` to the end of its source, or until `shutdown`.
///
/// With a `restart` policy (`lakeshore run`), a failure restarts the pipeline from its
/// last checkpoint after a pause that doubles up to the policy's maximum (and starts
/// over once a run lasted a minute); configuration errors are not retried, since the
/// same settings would fail the same way, nor unsupported input, nor a copy fenced off
/// by another one. Without one (`backfill`) the first failure is
/// reported.
pub async fn run(
    plan: &Plan,
    bounded: bool,
    observer: Arc<dyn Observer>,
    mut shutdown: watch::Receiver<bool>,
    restart: Option<RestartPolicy>,
    mut commands: Option<&mut mpsc::UnboundedReceiver<Command>>,
) -> Result<RunSummary> {
    let mut pause = restart.map(|r| r.initial).unwrap_or_default();
    // The last failure's message and how many runs in a row ended with it.
    let mut repeated: (String, u32) = (String::new(), 0);
    loop {
        let started = Instant::now();
        let once = run_once(
            plan,
            bounded,
            observer.clone(),
            shutdown.clone(),
            commands.as_deref_mut(),
        );
        // A panic is a bug, but it must not leave the pipeline silently stopped: it fails
        // the run like any error (and the restart policy restarts it).
        let once = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(once))
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                Err(Error::internal(format!(
                    "lakeshore panicked ({what}); this is a bug, please report it"
                )))
            });
        match once {
            // A configuration error fails the same way again, unsupported input (a
            // type, a DDL) needs a person, and a fenced copy must not take turns with
            // the copy that fenced it.
            Err(e)
                if !matches!(
                    e.kind(),
                    ErrorKind::Config | ErrorKind::Fenced | ErrorKind::Unsupported
                ) && !*shutdown.borrow() =>
            {
                let Some(policy) = restart else {
                    return Err(e);
                };
                if started.elapsed() > Duration::from_secs(60) {
                    pause = policy.initial;
                    repeated.1 = 0;
                }
                let message = e.to_string();
                if repeated.0 == message {
                    repeated.1 += 1;
                } else {
                    repeated = (message, 1);
                }
                if repeated.1 >= policy.give_up_after {
                    tracing::error!(pipeline = %plan.name, error = %e, failures = repeated.1, "pipeline failed the same way {} times in a row; giving up (the source keeps its WAL or binlog from the last checkpoint until the pipeline is resumed)", repeated.1);
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "failed {} times in a row with the same error, not retried again (fix the cause, then resume the pipeline): {e}",
                            repeated.1
                        ),
                    ));
                }
                lakeshore_engine::events::Restarting {
                    pipeline: &plan.name,
                    error: &e,
                    pause,
                }
                .emit(observer.as_ref());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => {}
                }
                pause = (pause * 2).min(policy.max);
            }
            other => return other,
        }
    }
}

async fn run_once(
    plan: &Plan,
    bounded: bool,
    observer: Arc<dyn Observer>,
    shutdown: watch::Receiver<bool>,
    commands: Option<&mut mpsc::UnboundedReceiver<Command>>,
) -> Result<RunSummary> {
    tracing::info!(pipeline = %plan.name, file = %plan.file.display(), "starting");
    let storage = plan.sink.storage();
    // A shared pipeline: each run joins the group as a new member.
    let member = plan.scale_out().then(group::new_member);
    let commit_as = member
        .as_deref()
        .map_or_else(|| plan.name.clone(), |m| group::commit_name(&plan.name, m));
    let sink = plan.sink.open(&commit_as).await?;
    let (store, ledger) = match member {
        Some(member) => {
            if bounded {
                return Err(Error::config(format!(
                    "pipeline {}: scale_out pipelines run with `lakeshore run` (a \
                         backfill reads every partition in one process)",
                    plan.name
                )));
            }
            let ledger = Arc::new(
                GroupLedger::open(&plan.state_url, &plan.name, member, &storage, sink.clone())
                    .await?,
            );
            let shared: Arc<dyn Ledger> = ledger.clone();
            (Checkpoints::Group(ledger), Some(shared))
        }
        None => {
            let store = StateStore::open(&plan.state_url, &plan.name, &storage)?;
            if store.latest().await?.is_none()
                && group::exists(&plan.state_url, &plan.name, &storage).await?
            {
                return Err(Error::config(format!(
                    "pipeline {} ran with scale_out = true; its state is the group's \
                         ledger. Set scale_out = true again, or use a new pipeline name",
                    plan.name
                )));
            }
            (Checkpoints::Solo(store), None)
        }
    };
    let route_plan = plan.clone();
    let (partitioning, default_partitioning) = plan.sink.partitioning();
    let spec = PipelineSpec {
        name: plan.name.clone(),
        commit_as,
        checkpoint_interval: plan.checkpoint_interval,
        route: Box::new(move |t| route_plan.route(t)),
        partitioning,
        default_partitioning,
        isolate_tables: plan.isolate_tables,
        failpoints: crash_test_pause(),
    };
    engine::run(
        spec,
        async |p: Option<SourcePosition>| {
            let source = plan.source.open(p.as_ref(), bounded, ledger).await?;
            lakeshore_transform::Transformed::wrap(source, plan.transforms.clone())
        },
        sink,
        store,
        observer,
        shutdown,
        commands,
    )
    .await
}

/// Crash tests set `LAKESHORE_TEST_COMMIT_PAUSE_MS` to widen the windows before the
/// checkpoint record and between it and the table commits, so that random kills (and
/// rebalances) land inside them.
fn crash_test_pause() -> Option<engine::Failpoints> {
    let pause = std::env::var("LAKESHORE_TEST_COMMIT_PAUSE_MS").ok()?;
    let pause = Duration::from_millis(pause.parse().ok()?);
    Some(Arc::new(move |point| {
        Box::pin(async move {
            if matches!(
                point,
                engine::Failpoint::BeforeRecord(_) | engine::Failpoint::BeforeCommit(..)
            ) {
                tokio::time::sleep(pause).await;
            }
            Ok(())
        })
    }))
}

/// Progress on a terminal (bar with rows, rows/s and ETA) or as log lines.
pub struct Progress {
    bar: Option<ProgressBar>,
    pipeline: String,
    started: Instant,
    rows: AtomicU64,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new(pipeline: &str, total_events: Option<u64>) -> Self {
        let target = ProgressDrawTarget::stderr_with_hz(4);
        let bar = (!target.is_hidden()).then(|| {
            let bar = ProgressBar::with_draw_target(total_events, target);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(pipeline.to_string());
            bar
        });
        Progress {
            bar,
            pipeline: pipeline.to_string(),
            started: Instant::now(),
            rows: AtomicU64::new(0),
        }
    }

    fn rate(&self, rows: u64) -> f64 {
        rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn rows(&self, total_rows: u64, events: Option<u64>) {
        self.rows.store(total_rows, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            if let Some(e) = events {
                bar.set_position(e);
            }
            bar.set_message(format!(
                "{total_rows} rows, {:.0} rows/s",
                self.rate(total_rows)
            ));
        }
    }

    fn checkpoint(&self, id: u64, _position: &SourcePosition, total_rows: u64, took: Duration) {
        if self.bar.is_none() {
            let rows = self.rows.load(Ordering::Relaxed);
            tracing::info!(
                pipeline = %self.pipeline,
                checkpoint = id,
                committed_rows = total_rows,
                rows_per_s = self.rate(rows) as u64,
                checkpoint_ms = took.as_millis() as u64,
                "checkpoint committed"
            );
        }
    }
}
