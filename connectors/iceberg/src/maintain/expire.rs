//! Snapshot expiry: snapshots older than a cut-off leave the table's metadata, and the
//! files only they reached (manifest lists, manifests, data and delete files) are
//! deleted.
//!
//! What is never expired:
//! - the newest `keep_last` snapshots of the main branch, and snapshots that refs point to;
//! - for every pipeline that committed to the table (`lakeshore.pipeline`), its newest
//!   snapshot and every snapshot after it: a pipeline's recovery finds its last
//!   checkpoint by walking the main branch back from the current snapshot, so that walk
//!   must still reach it (else a crash-recovered checkpoint would be committed twice).
//!
//! The metadata change lands by compare-and-swap, retried on a fresh table (commits
//! since only add snapshots on top). Files are deleted after it landed and only if no
//! remaining snapshot reaches them; a crash in between leaves orphans, never a dangling
//! reference.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::spec::{ManifestFile, ManifestStatus, SnapshotRef, TableMetadataRef};
use iceberg::table::Table;
use lakeshore_api::{Error, ErrorKind, Result};

use crate::catalog::CatalogHandle;
use crate::commit::PIPELINE_KEY;
use crate::error::ice;

/// What an expiry did.
#[derive(Debug, Default, Clone)]
pub struct ExpireReport {
    /// Snapshots removed from the metadata.
    pub snapshots: usize,
    /// Files deleted (manifest lists, manifests, data and delete files).
    pub files_deleted: usize,
}

/// The snapshots of `md` that may go: older than `cutoff_ms`, not among the newest
/// `keep_last` of the main branch, not referenced, not needed by a pipeline's recovery.
pub fn expirable(md: &TableMetadataRef, cutoff_ms: i64, keep_last: usize) -> Vec<i64> {
    let Some(current) = md.current_snapshot_id() else {
        return Vec::new();
    };
    let chain: Vec<SnapshotRef> = iceberg::util::snapshot::ancestors_of(md, current).collect();
    // How much of the main branch, newest first, must stay.
    let mut keep_prefix = keep_last.max(1);
    let mut seen_pipelines = HashSet::new();
    for (i, s) in chain.iter().enumerate() {
        if s.timestamp_ms() >= cutoff_ms {
            keep_prefix = keep_prefix.max(i + 1);
        }
        if let Some(p) = s.summary().additional_properties.get(PIPELINE_KEY)
            && seen_pipelines.insert(p.clone())
        {
            keep_prefix = keep_prefix.max(i + 1);
        }
    }
    let kept: HashSet<i64> = chain
        .iter()
        .take(keep_prefix)
        .map(|s| s.snapshot_id())
        .chain(referenced(md))
        .collect();
    md.snapshots()
        .filter(|s| !kept.contains(&s.snapshot_id()) && s.timestamp_ms() < cutoff_ms)
        .map(|s| s.snapshot_id())
        .collect()
}

/// Snapshots that branches and tags point to (iceberg-rust lists refs only in the
/// metadata's serialised form).
fn referenced(md: &TableMetadataRef) -> Vec<i64> {
    let json = serde_json::to_value(md.as_ref()).unwrap_or_default();
    json.get("refs")
        .and_then(|r| r.as_object())
        .map(|refs| {
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(|v| v.as_i64()))
                .collect()
        })
        .unwrap_or_default()
}

/// Manifests loaded once each (snapshots share most of them).
#[derive(Default)]
struct Manifests {
    files: HashMap<String, Vec<(String, bool)>>,
}

impl Manifests {
    /// Paths reached by `snapshot`: its manifest list, manifests, and their files (with
    /// whether the file is live in the snapshot).
    async fn reached(
        &mut self,
        table: &Table,
        snapshot: &SnapshotRef,
        out: &mut Reach,
    ) -> Result<()> {
        out.paths.insert(snapshot.manifest_list().to_string());
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(ice)?;
        for m in list.entries() {
            out.paths.insert(m.manifest_path.clone());
            let entries = match self.files.get(&m.manifest_path) {
                Some(e) => e,
                None => {
                    let loaded = load(table, m).await?;
                    self.files.entry(m.manifest_path.clone()).or_insert(loaded)
                }
            };
            for (path, live) in entries {
                if *live {
                    out.live.insert(path.clone());
                } else {
                    out.dead.insert(path.clone());
                }
            }
        }
        Ok(())
    }
}

async fn load(table: &Table, m: &ManifestFile) -> Result<Vec<(String, bool)>> {
    let manifest = m.load_manifest(table.file_io()).await.map_err(ice)?;
    Ok(manifest
        .entries()
        .iter()
        .map(|e| {
            (
                e.data_file().file_path().to_string(),
                e.status() != ManifestStatus::Deleted,
            )
        })
        .collect())
}

/// Files reached by a set of snapshots.
#[derive(Default)]
struct Reach {
    /// Manifest lists and manifests.
    paths: HashSet<String>,
    /// Data and delete files live in at least one of the snapshots.
    live: HashSet<String>,
    /// Data and delete files that entries mark deleted (live only in a parent).
    dead: HashSet<String>,
}

/// Every manifest list, manifest, data and delete file (live or marked deleted) that a
/// snapshot of `table` reaches.
pub(crate) async fn reached_by_any_snapshot(table: &Table) -> Result<HashSet<String>> {
    let mut manifests = Manifests::default();
    let mut reach = Reach::default();
    for s in table.metadata().snapshots() {
        manifests.reached(table, s, &mut reach).await?;
    }
    Ok(reach
        .paths
        .into_iter()
        .chain(reach.live)
        .chain(reach.dead)
        .collect())
}

/// Which snapshots stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Snapshots older than this go.
    pub older_than: Option<Duration>,
    /// Snapshots beyond the newest this many go...
    pub max_snapshots: Option<usize>,
    /// ... once older than this (a reader planning on one has that long to read it).
    pub count_min_age: Option<Duration>,
    /// The newest this many of the main branch always stay.
    pub keep_last: usize,
}

impl Retention {
    /// The time before which snapshots of `md` go (milliseconds since the epoch).
    fn cutoff_ms(&self, md: &TableMetadataRef) -> i64 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let by_age = self
            .older_than
            .map_or(i64::MIN, |d| now_ms - d.as_millis() as i64);
        let by_count = self.max_snapshots.map_or(i64::MIN, |n| {
            let mut times: Vec<i64> = md.snapshots().map(|s| s.timestamp_ms()).collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            // Older than the n-th newest, and than the minimum age.
            let nth = times.get(n.max(1) - 1).copied().unwrap_or(i64::MIN);
            let young = self
                .count_min_age
                .map_or(i64::MAX, |d| now_ms - d.as_millis() as i64);
            nth.min(young)
        });
        by_age.max(by_count)
    }

    /// Whether `md` has snapshots worth expiring: any, when an age is set; a quarter over
    /// the count otherwise (expiry reads every remaining snapshot's manifests).
    pub fn due(&self, md: &TableMetadataRef) -> bool {
        match (self.older_than, self.max_snapshots) {
            (Some(_), _) => true,
            (None, Some(n)) => md.snapshots().count() > n + n / 4,
            (None, None) => false,
        }
    }
}

/// Expire the snapshots of `ident` that `keep` lets go.
pub async fn expire(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    keep: &Retention,
) -> Result<ExpireReport> {
    let mut report = ExpireReport::default();
    let mut committed: Option<(Table, Vec<SnapshotRef>)> = None;
    for _ in 0..20 {
        let table = catalog.load(ident).await?;
        let md = table.metadata();
        let cutoff = keep.cutoff_ms(&table.metadata_ref());
        let ids = expirable(&table.metadata_ref(), cutoff, keep.keep_last);
        if ids.is_empty() {
            return Ok(report);
        }
        let expired: Vec<SnapshotRef> = ids
            .iter()
            .filter_map(|id| md.snapshot_by_id(*id).cloned())
            .collect();
        let current_location = table.metadata_location_result().map_err(ice)?;
        let next = md
            .clone()
            .into_builder(Some(current_location.to_string()))
            .remove_snapshots(&ids)
            .build()
            .map_err(ice)?;
        let landed = catalog.land(ident, &table, next, &[]).await.map_err(|e| {
            if e.kind() == ErrorKind::Config {
                Error::config(format!(
                    "table {ident}: the catalog refused to expire snapshots; if it expires them \
                     itself, remove expire_snapshots_older_than and max_snapshots from \
                     [sink.maintenance]"
                ))
                .with_boxed_source(Box::new(e))
            } else {
                e
            }
        })?;
        if landed {
            committed = Some((catalog.load(ident).await?, expired));
            break;
        }
    }
    let Some((table, expired)) = committed else {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("table {ident}: snapshot expiry gave up after 20 commit conflicts"),
        ));
    };
    report.snapshots = expired.len();
    // What the remaining snapshots reach stays; the rest of what the expired ones reached
    // goes.
    let mut manifests = Manifests::default();
    let mut keep = Reach::default();
    for s in table.metadata().snapshots() {
        manifests.reached(&table, s, &mut keep).await?;
    }
    let mut gone = Reach::default();
    for s in &expired {
        manifests.reached(&table, s, &mut gone).await?;
    }
    // A file no remaining snapshot holds live is read by nobody: those the expired
    // snapshots reached, and those the remaining ones only mark deleted.
    let mut doomed: Vec<&String> = gone
        .paths
        .iter()
        .chain(&gone.live)
        .chain(&gone.dead)
        .chain(&keep.dead)
        .filter(|p| !keep.paths.contains(*p) && !keep.live.contains(*p))
        .collect();
    doomed.sort();
    doomed.dedup();
    for path in doomed {
        match table.file_io().delete(path).await {
            Ok(()) => report.files_deleted += 1,
            Err(e) => {
                tracing::warn!(file = %path, error = %e, "could not delete an expired file; orphan cleanup will")
            }
        }
    }
    tracing::info!(table = %ident, snapshots = report.snapshots, files_deleted = report.files_deleted, "snapshots expired");
    Ok(report)
}
