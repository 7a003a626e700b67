//! The checkpoint protocol, proved against an in-memory sink and a scripted source
//! (`testing`): records before commits, acks after commits, recovery from a stop at every
//! failpoint without a duplicate or a loss, fencing of a second copy, parking of a table,
//! the final barrier on shutdown, and two checkpoints in flight under memory pressure.
//! The Python kill -9 suites prove the same end to end against real servers.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lakeshore_api::{Error, ErrorKind, Op, Result, Source, SourcePosition};
use lakeshore_engine::state::StateStore;
use lakeshore_engine::testing::{
    Applied, Change, Entry, Journal, MemorySink, ScriptedSource, Step, apply, memory_store, spec,
};
use lakeshore_engine::{Checkpoints, Failpoint, Failpoints, Observer, PipelineSpec, RunSummary};
use tokio::sync::watch;

const TABLES: [&str; 2] = ["a", "b"];

/// `n` steps of inserts, updates and deletes over tables a and b, and a truncate of b
/// now and then; deterministic for `seed`.
fn script(seed: u64, n: usize) -> Vec<Step> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let mut next_id = [0i64; 2];
    (0..n)
        .map(|_| {
            let t = next(2) as usize;
            if t == 1 && next(40) == 0 {
                return Step::Truncate(TABLES[t].into());
            }
            let changes: Vec<Change> = (0..1 + next(4))
                .map(|_| match next(10) {
                    0..5 => {
                        next_id[t] += 1;
                        (Op::Insert, next_id[t], Some(next(1000) as i64))
                    }
                    5..8 => (
                        Op::UpdateAfter,
                        1 + next(next_id[t].max(1) as u64) as i64,
                        Some(next(1000) as i64),
                    ),
                    _ => (Op::Delete, 1 + next(next_id[t].max(1) as u64) as i64, None),
                })
                .collect();
            Step::Rows(TABLES[t].into(), changes)
        })
        .collect()
}

/// The changes of `table` in the first `seq` steps (`None`: a truncation).
fn changes(steps: &[Step], seq: usize, table: &str) -> Vec<Applied> {
    let mut out = Vec::new();
    for step in &steps[..seq] {
        match step {
            Step::Rows(t, c) if t == table => out.extend(c.iter().copied().map(Some)),
            Step::Truncate(t) if t == table => out.push(None),
            _ => {}
        }
    }
    out
}

/// The rows of `table` after the first `seq` steps.
fn model(steps: &[Step], seq: usize, table: &str) -> BTreeMap<i64, Option<i64>> {
    let mut rows = BTreeMap::new();
    for step in &steps[..seq] {
        match step {
            Step::Rows(t, changes) if t == table => apply(&mut rows, changes),
            Step::Truncate(t) if t == table => rows.clear(),
            _ => {}
        }
    }
    rows
}

struct Quiet;
impl Observer for Quiet {}

/// One pipeline's state store, lake and script, run as often as a test likes.
struct Harness {
    journal: Journal,
    store: StateStore,
    sink: MemorySink,
    steps: Arc<Vec<Step>>,
}

impl Harness {
    fn new(steps: Vec<Step>) -> Self {
        let journal = Journal::default();
        let store = memory_store("p");
        let sink = MemorySink::new(&journal, &store);
        Harness {
            journal,
            store,
            sink,
            steps: Arc::new(steps),
        }
    }

    async fn run(
        &self,
        spec: PipelineSpec,
        bounded: bool,
        shutdown: watch::Receiver<bool>,
        observer: Arc<dyn Observer>,
    ) -> Result<RunSummary> {
        let (steps, journal) = (self.steps.clone(), self.journal.clone());
        let open = async move |p: Option<SourcePosition>| {
            let source = ScriptedSource::new(&TABLES, steps, p.as_ref(), bounded, &journal);
            Ok(Box::new(source) as Box<dyn Source>)
        };
        lakeshore_engine::run(
            spec,
            open,
            Arc::new(self.sink.clone()),
            Checkpoints::Solo(self.store.clone()),
            observer,
            shutdown,
            None,
        )
        .await
    }

    /// Run the script to its end.
    async fn run_to_end(&self, failpoints: Option<Failpoints>) -> Result<RunSummary> {
        let spec = spec("p", Duration::ZERO, failpoints);
        self.run(spec, true, watch::channel(false).1, Arc::new(Quiet))
            .await
    }

    /// The lake holds every change of the script's first `seq` steps once, in order
    /// (rows alone would not show a replay: upserts converge), and no checkpoint of a
    /// table was committed twice.
    fn assert_lake_after(&self, seq: usize) {
        for t in TABLES {
            let (got, want) = (self.sink.history(t), changes(&self.steps, seq, t));
            if got != want {
                let same = got.iter().zip(&want).take_while(|(g, w)| g == w).count();
                panic!(
                    "table {t}: {} changes committed, {} in the source; they part at {same}: lake {:?}, source {:?}",
                    got.len(),
                    want.len(),
                    got.get(same),
                    want.get(same)
                );
            }
            assert_eq!(self.sink.rows(t), model(&self.steps, seq, t), "table {t}");
        }
        let lake = self.sink.lake.lock().unwrap();
        let mut seen = HashSet::new();
        for commit in &lake.applied {
            assert!(seen.insert(commit), "{commit:?} committed twice");
        }
    }

    async fn recorded_seq(&self) -> usize {
        let record = self.store.latest().await.unwrap().expect("a record");
        record.position.as_sequence().unwrap() as usize
    }
}

/// A failpoint hook that fails once: at the first point like `at` from its checkpoint
/// on whose checkpoint changes something (a commit of a table with changes; commits and
/// acks of a checkpoint with changes), so that a wrong recovery would lose or repeat
/// them.
fn stop_at(at: Failpoint, store: &StateStore) -> Failpoints {
    let fired = Arc::new(Mutex::new(false));
    let store = store.clone();
    Arc::new(move |point| {
        let (fired, store, at) = (fired.clone(), store.clone(), at.clone());
        Box::pin(async move {
            let like = match (&point, &at) {
                (Failpoint::BeforeRecord(n), Failpoint::BeforeRecord(k))
                | (Failpoint::AfterCommits(n), Failpoint::AfterCommits(k))
                | (Failpoint::BeforeAck(n), Failpoint::BeforeAck(k)) => n >= k,
                (Failpoint::BeforeCommit(n, t), Failpoint::BeforeCommit(k, u)) => n >= k && t == u,
                _ => false,
            };
            if !like || *fired.lock().unwrap() {
                return Ok(());
            }
            let changes = match &point {
                Failpoint::BeforeRecord(_) => true,
                Failpoint::BeforeCommit(n, t) => {
                    let record = store.read(*n).await?.expect("the record is written");
                    record.pending.iter().any(|p| p.table == *t && !p.empty)
                }
                Failpoint::AfterCommits(n) | Failpoint::BeforeAck(n) => {
                    let record = store.read(*n).await?.expect("the record is kept");
                    record.pending.iter().any(|p| !p.empty)
                }
            };
            if !changes {
                return Ok(());
            }
            *fired.lock().unwrap() = true;
            Err(Error::internal(format!("failpoint {point:?}")))
        })
    })
}

/// The checkpoint each barrier of the journal belongs to, by position.
fn barrier_ids(entries: &[Entry]) -> BTreeMap<u64, u64> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Barrier { id, seq } => Some((*seq, *id)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_before_commits_and_acks_after_them() {
    let h = Harness::new(script(1, 400));
    let summary = h.run_to_end(None).await.unwrap();
    h.assert_lake_after(h.steps.len());
    assert!(summary.last_checkpoint.unwrap() >= 3, "{summary:?}");
    // The sink refuses a commit without its record. Every ack comes after every commit
    // of its checkpoint, and no commit of that checkpoint after it.
    let entries = h.journal.entries();
    let ids = barrier_ids(&entries);
    for (i, e) in entries.iter().enumerate() {
        if let Entry::Ack { seq } = e {
            let id = ids[seq];
            let late = entries[i..]
                .iter()
                .any(|e| matches!(e, Entry::Commit { checkpoint, .. } if *checkpoint == id));
            assert!(!late, "checkpoint {id} committed after its ack");
        }
    }
    assert!(entries.iter().any(|e| matches!(e, Entry::Ack { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_at_any_failpoint_is_recovered_without_a_duplicate_or_a_loss() {
    for k in [1, 3] {
        for at in [
            Failpoint::BeforeRecord(k),
            Failpoint::BeforeCommit(k, "a".into()),
            Failpoint::BeforeCommit(k, "b".into()),
            Failpoint::AfterCommits(k),
            Failpoint::BeforeAck(k),
        ] {
            let h = Harness::new(script(k, 300));
            let Err(err) = h.run_to_end(Some(stop_at(at.clone(), &h.store))).await else {
                panic!("{at:?} was never reached");
            };
            assert!(err.to_string().contains("failpoint"), "{at:?}: {err}");
            // The next run finishes the pending checkpoint (if its record was written) and
            // goes on from the newest record.
            h.run_to_end(None).await.unwrap();
            h.assert_lake_after(h.steps.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_of_the_pipeline_is_fenced() {
    let h = Arc::new(Harness::new(script(7, 2000)));
    let (stop, shutdown) = watch::channel(false);
    let copy = |h: Arc<Harness>, shutdown: watch::Receiver<bool>| {
        tokio::spawn(async move {
            let spec = spec("p", Duration::from_millis(5), None);
            h.run(spec, false, shutdown, Arc::new(Quiet)).await
        })
    };
    let mut first = copy(h.clone(), shutdown.clone());
    let mut second = copy(h.clone(), shutdown);
    // The copy that writes a checkpoint record second stops; the other goes on.
    let (fenced, survivor) = tokio::select! {
        r = &mut first => (r.unwrap(), second),
        r = &mut second => (r.unwrap(), first),
    };
    let err = fenced.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.send_replace(true);
    survivor.await.unwrap().unwrap();
    h.assert_lake_after(h.recorded_seq().await);
}

#[derive(Default)]
struct Failed(Mutex<Vec<String>>);
impl Observer for Failed {
    fn table_failed(&self, table: &str, _error: &Error) {
        self.0.lock().unwrap().push(table.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_writer_refuses_input_is_parked_and_the_others_go_on() {
    let mut h = Harness::new(script(3, 300));
    h.sink = h.sink.clone().refusing("b");
    let observer = Arc::new(Failed::default());
    let mut isolated = spec("p", Duration::ZERO, None);
    isolated.isolate_tables = true;
    let shutdown = watch::channel(false).1;
    h.run(isolated, true, shutdown, observer.clone())
        .await
        .unwrap();
    assert_eq!(h.sink.rows("a"), model(&h.steps, h.steps.len(), "a"));
    assert!(h.sink.rows("b").is_empty());
    assert_eq!(*observer.0.lock().unwrap(), vec!["b".to_string()]);
    // Without isolation the refusal stops the pipeline, naming the table.
    let h = Harness::new(script(3, 300));
    let mut h = h;
    h.sink = h.sink.clone().refusing("b");
    let err = h.run_to_end(None).await.unwrap_err();
    assert!(err.to_string().contains("table b"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_parked_while_its_checkpoint_finishes_keeps_that_checkpoint() {
    // The writer fails on a batch that follows a barrier whose preparation still runs
    // beside it: that checkpoint's changes are committed, not dropped with the writer.
    for refuse_after in 1..12 {
        let mut h = Harness::new(script(3, 300));
        h.sink = h
            .sink
            .clone()
            .with_budget(4)
            .refusing_after("b", refuse_after);
        let mut isolated = spec("p", Duration::ZERO, None);
        isolated.isolate_tables = true;
        let shutdown = watch::channel(false).1;
        h.run(isolated, true, shutdown, Arc::new(Failed::default()))
            .await
            .unwrap();
        assert_eq!(h.sink.rows("a"), model(&h.steps, h.steps.len(), "a"));
        assert_eq!(
            h.sink.history("b").len(),
            h.sink.prepared("b"),
            "refusing after {refuse_after} batches: prepared changes of b were not committed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_a_final_checkpoint() {
    let h = Arc::new(Harness::new(script(5, 3000)));
    let (stop, shutdown) = watch::channel(false);
    let run = {
        let h = h.clone();
        tokio::spawn(async move {
            let spec = spec("p", Duration::from_millis(20), None);
            h.run(spec, false, shutdown, Arc::new(Quiet)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send_replace(true);
    let summary = run.await.unwrap().unwrap();
    let entries = h.journal.entries();
    let Some(Entry::Barrier { id, seq }) = entries
        .iter()
        .rev()
        .find(|e| matches!(e, Entry::Barrier { .. }))
    else {
        panic!("no barrier: {entries:?}")
    };
    assert_eq!(
        summary.last_checkpoint,
        Some(*id),
        "the final barrier is committed"
    );
    assert_eq!(h.recorded_seq().await, *seq as usize);
    assert!(*seq > 0);
    h.assert_lake_after(*seq as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_starts_a_second_checkpoint_never_a_third() {
    let mut h = Harness::new(script(9, 600));
    h.sink = h.sink.clone().with_budget(8);
    let slow_commits: Failpoints = Arc::new(|point| {
        Box::pin(async move {
            if let Failpoint::BeforeCommit(..) = point {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            Ok(())
        })
    });
    let hourly = spec("p", Duration::from_secs(3600), Some(slow_commits));
    h.run(hourly, true, watch::channel(false).1, Arc::new(Quiet))
        .await
        .unwrap();
    h.assert_lake_after(h.steps.len());
    // Barrier n+1 may come before checkpoint n's commits; barrier n+2 never does, but
    // for the final one (the source ended: it is asked for at once).
    let entries = h.journal.entries();
    let end = h.steps.len() as u64;
    let mut committed_at = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Entry::Commit { checkpoint, .. } = e {
            committed_at.insert(*checkpoint, i);
        }
    }
    let mut overlapped = 0;
    for (i, e) in entries.iter().enumerate() {
        if let Entry::Barrier { id, seq } = e
            && *seq < end
        {
            if committed_at.get(&(id - 1)).is_some_and(|c| *c > i) {
                overlapped += 1;
            }
            if let Some(c) = id.checked_sub(2).and_then(|k| committed_at.get(&k)) {
                assert!(
                    *c < i,
                    "barrier {id} came before checkpoint {} committed: {:?}",
                    id - 2,
                    &entries[i.saturating_sub(12)..(*c + 3).min(entries.len())]
                );
            }
        }
    }
    assert!(
        overlapped > 0,
        "no checkpoint started while the previous one committed"
    );
}
