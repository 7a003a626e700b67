//! `lakeshore run`: the daemon. Runs every pipeline file of the given paths in one
//! process, each in its own task, and keeps them running for months:
//!
//! - **reload:** the files are re-read every `watch_interval` and on SIGHUP; an added file
//!   starts, a removed one stops after a final checkpoint, a changed one restarts; an
//!   invalid one is rejected with its reason (a running pipeline keeps its last valid
//!   version) while the others go on;
//! - **isolation:** a failing pipeline restarts alone, from its last checkpoint, with
//!   exponential backoff ([`pipeline::run`]); the others never wait for it;
//! - **control:** `pause` stops a pipeline after a final checkpoint until `resume`;
//! - **shutdown:** SIGTERM/SIGINT stop every pipeline with a final checkpoint, within the
//!   grace period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::daemon::DaemonConfig;
use crate::config::{self, Plan};
use crate::pipeline;
use lakeshore_engine::Command;

pub mod http;
mod replicas;
pub mod status;

use status::{Phase, StatusCell, WeakStatusCell};

/// A request from the HTTP endpoints to the supervisor.
pub enum Control {
    /// Stop after a final checkpoint, until resumed.
    Pause(String, oneshot::Sender<Result<(), String>>),
    /// Start a paused, failed or finished pipeline again.
    Resume(String, oneshot::Sender<Result<(), String>>),
    /// Read a table of a running pipeline again (see [`Command::Resnapshot`]).
    Resnapshot {
        pipeline: String,
        table: String,
        reply: oneshot::Sender<Result<u64, Refused>>,
    },
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Refused {
    /// No such pipeline.
    NotFound(String),
    /// The pipeline is not running.
    NotRunning(String),
    /// The pipeline refused it (a wrong table name, a source without snapshots).
    Rejected(lakeshore_api::Error),
    /// The pipeline stopped before it was done; ask again.
    Stopped,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    commands: mpsc::UnboundedSender<Command>,
    /// Set by the task just before it wakes the supervisor: the task itself may not
    /// count as finished yet when the supervisor looks.
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Running {
    fn ended(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire) || self.task.is_finished()
    }
}

struct Entry {
    file: PathBuf,
    /// The text the running plan came from.
    text: String,
    plan: Plan,
    status: StatusCell,
    run: Option<Running>,
    paused: bool,
}

/// A file that does not load, with the text that failed (so it is reported once).
struct Invalid {
    text: String,
    error: String,
}

#[derive(Default)]
struct Registry {
    pipelines: BTreeMap<String, Entry>,
    invalid: BTreeMap<PathBuf, Invalid>,
}

/// The supervisor of a process's pipelines.
pub struct Daemon {
    cfg: DaemonConfig,
    paths: Vec<PathBuf>,
    registry: Mutex<Registry>,
    /// When the supervisor loop last went round (for `/health`).
    heartbeat: Mutex<Instant>,
    /// At least one reload happened (for `/ready`).
    loaded: std::sync::atomic::AtomicBool,
    /// A pipeline task ended by itself.
    ended: tokio::sync::Notify,
    /// Replica mode: the leases of the pipelines this replica knows.
    leases: tokio::sync::Mutex<BTreeMap<String, replicas::Held>>,
    /// Replica mode: the pipelines whose lease this replica holds.
    held: Mutex<std::collections::HashSet<String>>,
    /// Pipelines whose old run is being stopped (a changed file): not started meanwhile.
    stopping: Mutex<std::collections::HashSet<String>>,
    /// SIGTERM: pipelines stop, none starts.
    shutting_down: std::sync::atomic::AtomicBool,
}

/// Why [`Daemon::run`] returned.
pub enum Ended {
    /// Asked to stop; `false` if the grace period ran out first.
    Stopped(bool),
    /// Every pipeline ended by itself (bounded sources read, or failed for good); the
    /// first failure, if any, and whether it was a configuration error.
    AllDone(Option<(String, bool)>),
}

/// What a reload decided, carried out after the registry lock is released.
enum Action {
    Start(String),
    Stop(String, Running),
}

impl Daemon {
    /// A daemon over the pipeline files of `paths`.
    pub fn new(cfg: DaemonConfig, paths: Vec<PathBuf>) -> Arc<Self> {
        Arc::new(Daemon {
            cfg,
            paths,
            registry: Mutex::new(Registry::default()),
            heartbeat: Mutex::new(Instant::now()),
            loaded: false.into(),
            ended: tokio::sync::Notify::new(),
            leases: Default::default(),
            held: Default::default(),
            stopping: Default::default(),
            shutting_down: false.into(),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.stopping.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replica mode: another replica holds `name`'s lease now; stop it here (its final
    /// checkpoint is fenced if the other wrote first) and show it standby.
    fn lost(&self, name: &str) {
        self.held().remove(name);
        let run = {
            let mut reg = self.registry();
            reg.pipelines.get_mut(name).and_then(|e| {
                e.status.update(|s| s.phase = Phase::Standby);
                e.run.take()
            })
        };
        if let Some(r) = run {
            tokio::spawn(stop(r));
        }
    }

    /// The statuses of every pipeline, in name order.
    pub fn statuses(&self) -> Vec<status::PipelineStatus> {
        self.registry()
            .pipelines
            .values()
            .map(|e| e.status.get())
            .collect()
    }

    /// Files that were rejected, with the reason.
    pub fn invalid_files(&self) -> Vec<(String, String)> {
        self.registry()
            .invalid
            .iter()
            .map(|(f, i)| (f.display().to_string(), i.error.clone()))
            .collect()
    }

    /// True while the supervisor loop goes round.
    pub fn healthy(&self) -> bool {
        let beat = *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
        beat.elapsed() < self.cfg.watch_interval * 3 + Duration::from_secs(30)
    }

    /// True once the files were loaded and no pipeline is starting, restarting or failed.
    pub fn ready(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .statuses()
                .iter()
                .all(|s| !matches!(s.phase, Phase::Starting | Phase::Restarting | Phase::Failed))
    }

    /// Every pipeline ended by itself (none runs, none is paused): the outcome. Never in
    /// replica mode: a replica stands by for the others.
    fn all_done(&self) -> Option<Ended> {
        let reg = self.registry();
        if reg.pipelines.is_empty() || self.cfg.replica.is_some() {
            return None;
        }
        let mut failure = None;
        for e in reg.pipelines.values() {
            let running = e.run.as_ref().is_some_and(|r| !r.ended());
            if running || e.paused || e.run.is_none() {
                return None;
            }
            let s = e.status.get();
            if s.phase == Phase::Failed && failure.is_none() {
                failure = Some((
                    format!("pipeline {}: {}", s.name, s.last_error.unwrap_or_default()),
                    e.status.failed_on_config(),
                ));
            }
        }
        Some(Ended::AllDone(failure))
    }

    /// Supervise until `shutdown` (then stop every pipeline with a final checkpoint) or
    /// until every pipeline ended by itself.
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
        mut control: mpsc::Receiver<Control>,
    ) -> Ended {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        self.reload().await;
        self.loaded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let leases = self
            .cfg
            .replica
            .clone()
            .map(|me| tokio::spawn(replicas::run(self.clone(), me)));
        loop {
            *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            if let Some(done) = self.all_done() {
                return done;
            }
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.watch_interval) => self.reload().await,
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading the pipeline files");
                    self.reload().await;
                }
                Some(c) = control.recv() => self.control(c).await,
                _ = self.ended.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let stopped = self.stop_all().await;
        if let Some(task) = leases {
            task.abort();
            // Runs still alive past the grace period keep their leases (they expire).
            if stopped {
                replicas::release_all(&self).await;
            }
        }
        Ended::Stopped(stopped)
    }

    /// Compare the files with what runs, and start, stop or restart pipelines.
    async fn reload(self: &Arc<Self>) {
        let files = match config::pipeline_files(&self.paths) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the pipeline files; keeping what runs");
                return;
            }
        };
        let mut actions = Vec::new();
        {
            let mut reg = self.registry();
            for file in &files {
                let text = match std::fs::read_to_string(file) {
                    Ok(t) => t,
                    // Gone between listing and reading: the next round sees it missing.
                    Err(_) => continue,
                };
                self.consider(&mut reg, file, text, &mut actions);
            }
            // Removed files: their pipelines stop; rejections are forgotten.
            let gone: Vec<String> = reg
                .pipelines
                .iter()
                .filter(|(_, e)| !files.contains(&e.file))
                .map(|(n, _)| n.clone())
                .collect();
            for name in gone {
                if let Some(mut e) = reg.pipelines.remove(&name) {
                    tracing::info!(pipeline = %name, file = %e.file.display(), "file removed: stopping the pipeline");
                    if let Some(r) = e.run.take() {
                        actions.push(Action::Stop(name.clone(), r));
                    }
                }
            }
            reg.invalid.retain(|f, _| files.contains(f));
        }
        self.act(actions).await;
    }

    /// One file: unchanged, new, changed or invalid.
    fn consider(
        &self,
        reg: &mut Registry,
        file: &PathBuf,
        text: String,
        actions: &mut Vec<Action>,
    ) {
        let current = reg
            .pipelines
            .iter()
            .find(|(_, e)| e.file == *file)
            .map(|(n, _)| n.clone());
        if let Some(name) = &current
            && reg.pipelines[name].text == text
        {
            return;
        }
        if reg.invalid.get(file).is_some_and(|i| i.text == text) {
            return;
        }
        let loaded = config::load_text(file, &text).map(|mut p| {
            p.apply_defaults(&self.cfg);
            p
        });
        let plan = match loaded {
            Ok(plan) => match reg.pipelines.get(&plan.name) {
                Some(other) if other.file != *file => Err(format!(
                    "{}: pipeline name {} is already used by {}; names must be unique",
                    file.display(),
                    plan.name,
                    other.file.display()
                )),
                _ => Ok(plan),
            },
            Err(e) => Err(e.to_string()),
        };
        match plan {
            Err(error) => {
                match &current {
                    Some(name) => {
                        tracing::error!(pipeline = %name, %error, "the changed file is invalid; the pipeline keeps running its last valid version");
                        reg.pipelines[name]
                            .status
                            .update(|s| s.config_error = Some(error.clone()));
                    }
                    None => tracing::error!(%error, "pipeline file rejected"),
                }
                reg.invalid.insert(file.clone(), Invalid { text, error });
            }
            Ok(plan) => {
                reg.invalid.remove(file);
                let name = plan.name.clone();
                let paused = match current.and_then(|old| reg.pipelines.remove(&old)) {
                    Some(mut old) => {
                        tracing::info!(pipeline = %name, file = %file.display(), "file changed: restarting the pipeline");
                        if let Some(r) = old.run.take() {
                            actions.push(Action::Stop(name.clone(), r));
                        }
                        old.paused
                    }
                    None => {
                        tracing::info!(pipeline = %name, file = %file.display(), "new pipeline file");
                        false
                    }
                };
                let status = StatusCell::new(&name, &file.display().to_string());
                if paused {
                    status.update(|s| s.phase = Phase::Paused);
                } else {
                    actions.push(Action::Start(name.clone()));
                }
                reg.pipelines.insert(
                    name,
                    Entry {
                        file: file.clone(),
                        text,
                        plan,
                        status,
                        run: None,
                        paused,
                    },
                );
            }
        }
    }

    /// Stops first (a restarted pipeline's old run must end before the new one starts).
    async fn act(self: &Arc<Self>, actions: Vec<Action>) {
        let (stops, starts): (Vec<_>, Vec<_>) = actions
            .into_iter()
            .partition(|a| matches!(a, Action::Stop(..)));
        let names: Vec<String> = stops
            .iter()
            .filter_map(|a| match a {
                Action::Stop(n, _) => Some(n.clone()),
                Action::Start(_) => None,
            })
            .collect();
        self.stopping().extend(names.iter().cloned());
        for a in stops {
            if let Action::Stop(_, r) = a {
                stop(r).await;
            }
        }
        for n in &names {
            self.stopping().remove(n);
        }
        for a in starts {
            if let Action::Start(name) = a {
                self.start(&name);
            }
        }
    }

    fn start(self: &Arc<Self>, name: &str) {
        if self.shutting_down() || self.stopping().contains(name) {
            return;
        }
        let standby = self.cfg.replica.is_some() && !self.held().contains(name);
        let mut reg = self.registry();
        let Some(entry) = reg.pipelines.get_mut(name) else {
            return;
        };
        if entry.run.as_ref().is_some_and(|r| !r.ended()) {
            return;
        }
        entry.paused = false;
        if standby {
            // The lease loop starts it once this replica holds its lease.
            entry.status.update(|s| s.phase = Phase::Standby);
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (commands_tx, mut commands) = mpsc::unbounded_channel();
        let plan = entry.plan.clone();
        let status = entry.status.clone();
        status.update(|s| s.phase = Phase::Starting);
        let policy = self.cfg.restart;
        let daemon = Arc::downgrade(self);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_in_task = done.clone();
        let task = tokio::spawn(async move {
            let observer = Arc::new(status.clone());
            // [sink.maintenance]: compaction alongside the pipeline, as its tables' read
            // cost grows (auto) and at a fixed interval.
            let mut maintenance: Vec<_> = plan
                .sink
                .maintenance_interval()
                .map(|i| tokio::spawn(crate::maintain::every(plan.clone(), i)))
                .into_iter()
                .collect();
            if plan.sink.auto_maintenance() {
                maintenance.push(tokio::spawn(crate::maintain::auto(plan.clone())));
            }
            let result = pipeline::run(
                &plan,
                false,
                observer,
                stop_rx.clone(),
                Some(policy),
                Some(&mut commands),
            )
            .await;
            for m in maintenance {
                m.abort();
            }
            let stopped = *stop_rx.borrow();
            // Replica mode: a run stopped because its lease went elsewhere is standby here,
            // however it ended.
            let elsewhere = daemon
                .upgrade()
                .is_some_and(|d| d.cfg.replica.is_some() && !d.held().contains(&plan.name));
            match result {
                _ if elsewhere && stopped => status.update(|s| s.phase = Phase::Standby),
                Ok(summary) => {
                    tracing::info!(pipeline = %plan.name, checkpoint = ?summary.last_checkpoint, "stopped");
                    if !stopped {
                        // A bounded run ends with its tables compacted: for a while, and
                        // not past a stop request (the supervisor waits for this task).
                        let mut stop = stop_rx.clone();
                        tokio::select! {
                            _ = tokio::time::timeout(SETTLE_AT_MOST, crate::maintain::settle(plan.clone())) => {}
                            _ = stop.changed() => {}
                        }
                        status.update(|s| s.phase = Phase::Finished);
                    }
                }
                Err(e) => {
                    tracing::error!(pipeline = %plan.name, error = %e, "pipeline failed; fix it and change its file or resume it");
                    status.failed(&e);
                    tokio::spawn(report_held(plan.clone(), status.weak()));
                }
            }
            done_in_task.store(true, std::sync::atomic::Ordering::Release);
            if let Some(d) = daemon.upgrade() {
                d.ended.notify_one();
            }
        });
        entry.run = Some(Running {
            stop: stop_tx,
            task,
            commands: commands_tx,
            done,
        });
        entry.paused = false;
    }

    async fn control(self: &Arc<Self>, c: Control) {
        match c {
            Control::Pause(name, reply) => {
                let run = {
                    let mut reg = self.registry();
                    match reg.pipelines.get_mut(&name) {
                        None => Err(format!("no pipeline named {name}")),
                        Some(e) => {
                            e.paused = true;
                            e.status.update(|s| s.phase = Phase::Stopping);
                            Ok((e.run.take(), e.status.clone()))
                        }
                    }
                };
                match run {
                    Ok((r, status)) => {
                        if let Some(r) = r {
                            stop(r).await;
                        }
                        status.update(|s| s.phase = Phase::Paused);
                        tracing::info!(pipeline = %name, "paused");
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Control::Resume(name, reply) => {
                let outcome = {
                    let reg = self.registry();
                    match reg.pipelines.get(&name) {
                        None => Err(format!("no pipeline named {name}")),
                        Some(e) if e.run.as_ref().is_some_and(|r| !r.task.is_finished()) => {
                            Err(format!("pipeline {name} is running"))
                        }
                        Some(_) => Ok(()),
                    }
                };
                if outcome.is_ok() {
                    tracing::info!(pipeline = %name, "resumed");
                    self.start(&name);
                }
                let _ = reply.send(outcome);
            }
            Control::Resnapshot {
                pipeline,
                table,
                reply,
            } => {
                let reg = self.registry();
                let running = match reg.pipelines.get(&pipeline) {
                    None => Err(Refused::NotFound(format!("no pipeline named {pipeline}"))),
                    Some(e) => match &e.run {
                        Some(r) if !r.task.is_finished() && !e.paused => Ok(r.commands.clone()),
                        _ => Err(Refused::NotRunning(format!(
                            "pipeline {pipeline} is not running; resume it first"
                        ))),
                    },
                };
                drop(reg);
                match running {
                    Ok(commands) => {
                        // The pipeline answers once the re-snapshot's first checkpoint
                        // is committed.
                        let (tx, rx) = oneshot::channel();
                        let _ = commands.send(Command::Resnapshot { table, reply: tx });
                        tokio::spawn(async move {
                            let outcome = match rx.await {
                                Ok(Ok(id)) => Ok(id),
                                Ok(Err(e)) => Err(Refused::Rejected(e)),
                                Err(_) => Err(Refused::Stopped),
                            };
                            let _ = reply.send(outcome);
                        });
                    }
                    Err(refused) => {
                        let _ = reply.send(Err(refused));
                    }
                }
            }
        }
    }

    /// Stop every pipeline with a final checkpoint; false if the grace period ran out.
    async fn stop_all(&self) -> bool {
        let runs: Vec<Running> = {
            let mut reg = self.registry();
            reg.pipelines
                .values_mut()
                .filter_map(|e| {
                    e.status.update(|s| {
                        if !matches!(
                            s.phase,
                            Phase::Finished | Phase::Failed | Phase::Paused | Phase::Standby
                        ) {
                            s.phase = Phase::Stopping;
                        }
                    });
                    e.run.take()
                })
                .collect()
        };
        for r in &runs {
            let _ = r.stop.send(true);
        }
        let all = futures::future::join_all(runs.into_iter().map(|r| r.task));
        match tokio::time::timeout(self.cfg.grace_period, all).await {
            Ok(_) => true,
            Err(_) => {
                tracing::error!(
                    grace_period_s = self.cfg.grace_period.as_secs(),
                    "pipelines did not finish their final checkpoints within the grace period"
                );
                false
            }
        }
    }
}

/// How long a finished bounded run may spend compacting its tables.
const SETTLE_AT_MOST: Duration = Duration::from_secs(120);

/// How often a failed pipeline's source is asked what it keeps for it.
const HELD_EVERY: Duration = Duration::from_secs(60);

/// While a pipeline stays failed, measure what its source keeps for it (a slot's WAL
/// piles up until the pipeline resumes or the slot is dropped): `source_held_bytes` in
/// `/pipelines`, the gauge `lakeshore_pipeline_source_held_bytes{pipeline}`, and
/// a warning (the first time, then every ten minutes). Ends when the pipeline starts
/// again or its entry goes.
async fn report_held(plan: Plan, status: WeakStatusCell) {
    let gauge =
        metrics::gauge!("lakeshore_pipeline_source_held_bytes", "pipeline" => plan.name.clone());
    let mut rounds = 0u64;
    let failure = status.upgrade().map(|s| s.get().failures);
    loop {
        let still_failed = status.upgrade().is_some_and(|s| {
            let s = s.get();
            s.phase == Phase::Failed && Some(s.failures) == failure
        });
        if !still_failed {
            break;
        }
        match crate::sources::held_at_source(&plan).await {
            Ok(Some((bytes, what))) => {
                gauge.set(bytes as f64);
                if let Some(s) = status.upgrade() {
                    s.update(|s| s.source_held_bytes = Some(bytes));
                }
                if rounds.is_multiple_of(10) {
                    tracing::warn!(pipeline = %plan.name, held_mib = bytes >> 20, "the pipeline is failed and its source holds {} MiB ({what}); fix the cause and resume it, or remove the pipeline and its slot", bytes >> 20);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(pipeline = %plan.name, error = %e, "cannot measure what the source holds");
            }
        }
        rounds += 1;
        tokio::time::sleep(HELD_EVERY).await;
    }
    gauge.set(0.0);
    if let Some(s) = status.upgrade() {
        s.update(|s| s.source_held_bytes = None);
    }
}

/// Ask a run for its final checkpoint and wait for it to end.
async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let _ = r.task.await;
}
