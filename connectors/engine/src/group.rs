//! The ledger of a shared pipeline (scale-out): several processes run one pipeline and
//! share its source's units (Kafka partitions), see [`lakeshore_api::Ledger`].
//!
//! The ledger is a linear log on the state store, `<state>/<pipeline>/group/<seq>.json`,
//! each record the whole state: the owner and lake position of every unit, and the last
//! decided checkpoint of every member. A record is written create-if-absent at the next
//! sequence number, so writers are serialised by the store: whoever loses the race reads
//! the new head and decides again on it. Two kinds of records:
//!
//! - **acquire** (a member is given units by the consumer group): the units change owner;
//!   then the last decided checkpoint of every earlier owner is committed (idempotent),
//!   so the lake is complete up to the positions the new owner resumes from;
//! - **decide** (step 3 of the checkpoint protocol, in place of the single-process
//!   checkpoint record): the units' positions advance and the checkpoint's pending
//!   files are recorded, *only if* the member still owns every unit in its position.
//!   A member that stalled while its units moved on is fenced here: its uncommitted work
//!   is dropped and it restarts as a new member.
//!
//! Each member commits under its own name, `<pipeline>@<member>`, with its own
//! checkpoint ids, so commits of different members never look alike to the sinks'
//! idempotency checks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use lakeshore_api::{
    Acquired, CommitContext, Error, ErrorKind, Ledger, PendingCommit, Result, Sink, SourcePosition,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::state::{CheckpointRecord, StateStore, numbered, open_store, read_record, store_error};

/// Records kept behind the head; older ones are pruned once they are [`PRUNE_AGE`] old.
const KEEP: u64 = 20;

/// Age at which records behind the head may be deleted. A deleted record frees its
/// sequence number, so a member whose view of the head is older than
/// [`RELIST_AFTER`] lists the ledger before writing: it can never write into a freed
/// slot on a stale view (clocks may differ by up to the margin between the two).
const PRUNE_AGE: Duration = Duration::from_secs(3600);
const RELIST_AFTER: Duration = Duration::from_secs(1800);

/// One unit: who owns it and where the lake holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Unit {
    owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<serde_json::Value>,
}

/// A member's last decided checkpoint, committed or not.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decided {
    checkpoint: u64,
    position: SourcePosition,
    pending: Vec<PendingCommit>,
}

/// The whole state of a shared pipeline at one sequence number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct GroupRecord {
    pipeline: String,
    seq: u64,
    units: BTreeMap<String, Unit>,
    members: BTreeMap<String, Decided>,
    written_by: String,
    created_at_ms: u64,
}

/// This process's view of a shared pipeline's ledger.
pub struct GroupLedger {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    pipeline: String,
    member: String,
    sink: Arc<dyn Sink>,
    /// The newest record this process knows of, and when it was known to be the head.
    head: Mutex<(GroupRecord, Instant)>,
    /// Earlier owners' checkpoints this process committed: (member, checkpoint).
    recovered: std::sync::Mutex<BTreeSet<(String, u64)>>,
}

fn group_prefix(base: &Path, pipeline: &str) -> Path {
    base.clone().join(pipeline).join("group")
}

fn path_of(prefix: &Path, seq: u64) -> Path {
    prefix.clone().join(format!("{seq:020}.json"))
}

/// The name a member commits under.
pub fn commit_name(pipeline: &str, member: &str) -> String {
    format!("{pipeline}@{member}")
}

/// A new member name: short, unique, readable in logs and paths.
pub fn new_member() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("m{}", &id[..10])
}

async fn sequence_numbers(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<u64>> {
    numbered(store, prefix, "listing the group ledger").await
}

/// True when `pipeline` has a group ledger at `url` (it ran with `scale_out = true`).
pub async fn exists(
    url: &str,
    pipeline: &str,
    storage: &lakeshore_api::StorageOptions,
) -> Result<bool> {
    let (store, base) = open_store(url, storage)?;
    Ok(
        !sequence_numbers(store.as_ref(), &group_prefix(&base, pipeline))
            .await?
            .is_empty(),
    )
}

impl GroupLedger {
    /// Join the ledger of `pipeline` at `url` as `member`; `sink` commits earlier owners'
    /// checkpoints.
    pub async fn open(
        url: &str,
        pipeline: &str,
        member: String,
        storage: &lakeshore_api::StorageOptions,
        sink: Arc<dyn Sink>,
    ) -> Result<Self> {
        if StateStore::open(url, pipeline, storage)?
            .latest()
            .await?
            .is_some()
        {
            return Err(Error::config(format!(
                "pipeline {pipeline} has single-process checkpoints in its state; a shared \
                     (scale_out) run cannot take them over: remove scale_out, or use a new \
                     pipeline name"
            )));
        }
        let (store, base) = open_store(url, storage)?;
        let prefix = group_prefix(&base, pipeline);
        let ledger = GroupLedger {
            store,
            prefix,
            pipeline: pipeline.to_string(),
            member,
            sink,
            head: Mutex::new((
                GroupRecord {
                    pipeline: pipeline.to_string(),
                    ..Default::default()
                },
                Instant::now(),
            )),
            recovered: Default::default(),
        };
        let head = ledger.read_head().await?;
        *ledger.head.lock().await = (head, Instant::now());
        tracing::info!(pipeline, member = %ledger.member, "joined the pipeline's group");
        Ok(ledger)
    }

    async fn read(&self, seq: u64) -> Result<Option<GroupRecord>> {
        read_record(
            self.store.as_ref(),
            &path_of(&self.prefix, seq),
            "group ledger record",
        )
        .await
    }

    /// The newest record in the store.
    async fn read_head(&self) -> Result<GroupRecord> {
        let seqs = sequence_numbers(self.store.as_ref(), &self.prefix).await?;
        for seq in seqs.iter().rev() {
            if let Some(rec) = self.read(*seq).await? {
                return Ok(rec);
            }
        }
        Ok(GroupRecord {
            pipeline: self.pipeline.clone(),
            ..Default::default()
        })
    }

    /// Write the record `change` makes of the head, at the next sequence number; on a
    /// lost race, read the new head and ask `change` again.
    async fn update<T>(
        &self,
        mut change: impl FnMut(&GroupRecord) -> Result<(GroupRecord, T)>,
    ) -> Result<T> {
        let mut guard = self.head.lock().await;
        if guard.1.elapsed() > RELIST_AFTER {
            *guard = (self.read_head().await?, Instant::now());
        }
        let (head, known_at) = &mut *guard;
        loop {
            let (mut next, out) = change(head)?;
            next.seq = head.seq + 1;
            next.pipeline = self.pipeline.clone();
            next.written_by = self.member.clone();
            next.created_at_ms = now_ms();
            let body = serde_json::to_vec(&next).map_err(|e| Error::internal(e.to_string()))?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .store
                .put_opts(
                    &path_of(&self.prefix, next.seq),
                    PutPayload::from(body),
                    opts,
                )
                .await
            {
                Ok(_) => {
                    *head = next;
                    *known_at = Instant::now();
                    return Ok(out);
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    // Another member wrote first: read forward to the new head.
                    let mut seq = head.seq + 1;
                    let mut newest = None;
                    while let Some(rec) = self.read(seq).await? {
                        newest = Some(rec);
                        seq += 1;
                    }
                    *head = match newest {
                        Some(rec) => rec,
                        // Pruned under us (far behind): list.
                        None => self.read_head().await?,
                    };
                    *known_at = Instant::now();
                }
                Err(e) => return Err(store_error("writing the group ledger", e)),
            }
        }
    }

    /// Step 3 of the checkpoint protocol for a shared pipeline: record the checkpoint if
    /// this member still owns every unit of its position.
    pub async fn decide(&self, record: &CheckpointRecord) -> Result<()> {
        let units = record
            .position
            .units()
            .ok_or_else(|| Error::internal("a shared source produced a position without units"))?;
        let recovered = self.recovered.lock().map(|r| r.clone()).unwrap_or_default();
        self.update(|head| {
            let mut next = head.clone();
            for (name, position) in units {
                match next.units.get_mut(name) {
                    Some(u) if u.owner == self.member => u.position = Some(position.clone()),
                    other => {
                        let owner = other.map_or("nobody", |u| u.owner.as_str());
                        return Err(Error::transient(format!(
                            "pipeline {}: {name} belongs to {owner}, not to this process \
                                 ({}); it stalled while the group moved on. Its checkpoint {} \
                                 is dropped and the pipeline restarts",
                            self.pipeline, self.member, record.id
                        )));
                    }
                }
            }
            next.members.insert(
                self.member.clone(),
                Decided {
                    checkpoint: record.id,
                    position: record.position.clone(),
                    pending: record.pending.clone(),
                },
            );
            // Earlier owners whose last checkpoint this member committed and who own
            // nothing any more are done with.
            let owning: BTreeSet<&str> = next.units.values().map(|u| u.owner.as_str()).collect();
            next.members.retain(|m, d| {
                owning.contains(m.as_str()) || !recovered.contains(&(m.clone(), d.checkpoint))
            });
            Ok((next, ()))
        })
        .await
    }

    /// The head as the store has it now (read forward from the one known).
    async fn fresh_head(&self) -> Result<GroupRecord> {
        let mut guard = self.head.lock().await;
        if guard.1.elapsed() > RELIST_AFTER {
            *guard = (self.read_head().await?, Instant::now());
        }
        while let Some(next) = self.read(guard.0.seq + 1).await? {
            guard.0 = next;
        }
        guard.1 = Instant::now();
        Ok(guard.0.clone())
    }

    /// Delete records far behind the head and an hour old.
    pub async fn prune(&self) -> Result<()> {
        let seq = self.head.lock().await.0.seq;
        if seq % KEEP != 0 {
            return Ok(());
        }
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| store_error("listing the group ledger", e))?;
        let old_ms = now_ms().saturating_sub(PRUNE_AGE.as_millis() as u64) as i64;
        for meta in metas {
            let Some(old) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json")?.parse::<u64>().ok())
            else {
                continue;
            };
            if old + KEEP < seq && meta.last_modified.timestamp_millis() < old_ms {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_error("pruning the group ledger", e)),
                }
            }
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Ledger for GroupLedger {
    fn member(&self) -> &str {
        &self.member
    }

    async fn acquire(&self, units: &[String]) -> Result<Acquired> {
        loop {
            // What earlier owners decided must be in the lake before the takeover is
            // recorded: once it is, nobody else would look for it.
            let head = self.fresh_head().await?;
            let earlier = earlier_owners(&head, units, &self.member);
            for (member, d) in &earlier {
                self.commit_decided(member, d).await?;
            }
            let outcome = self
                .update(|head| {
                    let now = earlier_owners(head, units, &self.member);
                    if now
                        .iter()
                        .any(|(m, d)| earlier.get(m).map(|e| e.checkpoint) != Some(d.checkpoint))
                    {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            "an earlier owner decided another checkpoint",
                        ));
                    }
                    let mut next = head.clone();
                    let mut got = Acquired {
                        positions: BTreeMap::new(),
                        known: head.units.keys().cloned().collect(),
                    };
                    for name in units {
                        let unit = next.units.entry(name.clone()).or_insert(Unit {
                            owner: self.member.clone(),
                            position: None,
                        });
                        unit.owner = self.member.clone();
                        if let Some(p) = &unit.position {
                            got.positions.insert(name.clone(), p.clone());
                        }
                    }
                    Ok((next, got))
                })
                .await;
            match outcome {
                Ok(got) => {
                    if let Ok(mut r) = self.recovered.lock() {
                        r.extend(earlier.into_iter().map(|(m, d)| (m, d.checkpoint)));
                    }
                    tracing::info!(pipeline = %self.pipeline, member = %self.member, units = ?units, "took partitions over");
                    return Ok(got);
                }
                // Commit that one too, then try again.
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The last decided checkpoints of the other members owning any of `units`.
fn earlier_owners(head: &GroupRecord, units: &[String], me: &str) -> BTreeMap<String, Decided> {
    units
        .iter()
        .filter_map(|u| head.units.get(u))
        .filter(|u| u.owner != me)
        .filter_map(|u| Some((u.owner.clone(), head.members.get(&u.owner)?.clone())))
        .collect()
}

impl GroupLedger {
    /// Commit `member`'s decided checkpoint (idempotent: a no-op if it is in the lake).
    async fn commit_decided(&self, member: &str, d: &Decided) -> Result<()> {
        let ctx = CommitContext::new(
            &commit_name(&self.pipeline, member),
            d.checkpoint,
            &d.position,
            &d.pending,
        );
        for p in &d.pending {
            if super::commit_with_retry(&self.pipeline, self.sink.as_ref(), p, &ctx).await? {
                tracing::info!(pipeline = %self.pipeline, table = %p.table, from = %member, checkpoint = d.checkpoint, "committed the last checkpoint of an earlier owner");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lakeshore_api::{TableTarget, TableWriter};
    use std::sync::Mutex as StdMutex;

    /// Records commits; idempotent per (pipeline, checkpoint, table).
    #[derive(Default)]
    struct Commits(StdMutex<Vec<(String, u64, String)>>);

    #[async_trait::async_trait]
    impl Sink for Commits {
        async fn open_table(&self, _: &TableTarget) -> Result<Box<dyn TableWriter>> {
            unimplemented!("not used by the ledger")
        }
        async fn commit(&self, p: &PendingCommit, ctx: &CommitContext) -> Result<bool> {
            let key = (ctx.pipeline.clone(), ctx.checkpoint_id, p.table.clone());
            let mut c = self.0.lock().unwrap();
            if c.contains(&key) {
                return Ok(false);
            }
            c.push(key);
            Ok(true)
        }
    }

    fn record(id: u64, units: &[(&str, i64)]) -> CheckpointRecord {
        CheckpointRecord {
            pipeline: "p".into(),
            id,
            position: SourcePosition::from_units(
                units
                    .iter()
                    .map(|(u, o)| (u.to_string(), serde_json::json!(o)))
                    .collect(),
            ),
            pending: vec![PendingCommit {
                table: "t".into(),
                checkpoint_id: id,
                added_rows: 1,
                payload: serde_json::Value::Null,
                empty: false,
            }],
            created_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn units_move_between_members_and_a_stalled_member_is_fenced() {
        let dir = std::env::temp_dir().join(format!("lakeshore-group-{}", uuid::Uuid::new_v4()));
        let url = format!("file://{}", dir.display());
        let sink = Arc::new(Commits::default());
        let storage = lakeshore_api::StorageOptions::default();
        let open = |m: &str| GroupLedger::open(&url, "p", m.to_string(), &storage, sink.clone());
        let a = open("a").await.unwrap();
        let b = open("b").await.unwrap();
        let units = |u: &[&str]| u.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        // a owns both partitions and decides two checkpoints.
        assert!(
            a.acquire(&units(&["t/0", "t/1"]))
                .await
                .unwrap()
                .positions
                .is_empty()
        );
        a.decide(&record(1, &[("t/0", 10), ("t/1", 5)]))
            .await
            .unwrap();
        a.decide(&record(2, &[("t/0", 20), ("t/1", 7)]))
            .await
            .unwrap();
        // b (its view is old) takes t/1 over: it reads the new head, resumes at a's
        // decided offset, and commits a's last checkpoint first.
        let got = b.acquire(&units(&["t/1"])).await.unwrap();
        assert_eq!(got.positions["t/1"], serde_json::json!(7));
        assert_eq!(got.known.len(), 2);
        assert!(
            sink.0
                .lock()
                .unwrap()
                .contains(&("p@a".into(), 2, "t".into()))
        );
        // a, stalled, tries to decide with t/1: fenced, retryable (it restarts).
        let err = a
            .decide(&record(3, &[("t/0", 30), ("t/1", 9)]))
            .await
            .unwrap_err();
        assert!(err.is_retryable() && err.to_string().contains("belongs to b"));
        // Without t/1 a goes on; b decides its own.
        a.decide(&record(3, &[("t/0", 30)])).await.unwrap();
        b.decide(&record(1, &[("t/1", 12)])).await.unwrap();
        // A new member c takes both: positions are the latest decided ones.
        let c = open("c").await.unwrap();
        let got = c.acquire(&units(&["t/0", "t/1"])).await.unwrap().positions;
        assert_eq!(got["t/0"], serde_json::json!(30));
        assert_eq!(got["t/1"], serde_json::json!(12));
        // c's first decision drops a and b, whose checkpoints it committed.
        c.decide(&record(1, &[("t/0", 31)])).await.unwrap();
        let head = c.read_head().await.unwrap();
        assert_eq!(head.members.keys().collect::<Vec<_>>(), vec!["c"]);
        assert!(
            exists(&url, "p", &Default::default()).await.unwrap()
                && !exists(&url, "q", &Default::default()).await.unwrap()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
