//! Orphan-file cleanup: files under the table's location that no snapshot references —
//! written by a commit attempt that was killed or lost the race, by a compaction that
//! gave up, or old metadata versions — deleted once they are older than a threshold.
//!
//! Never deleted: anything a snapshot of the table reaches (manifest lists, manifests,
//! data and delete files, live or not), the current metadata file and those in its log,
//! the files of the pipeline's pending checkpoint (written, recorded, not yet
//! committed), and anything younger than the threshold (at least an hour: a checkpoint's
//! files exist before its commit does).

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use iceberg::table::Table;
use lakeshore_api::{Error, Result, StorageOptions};
use object_store::{ObjectStore, ObjectStoreExt};

/// What a cleanup did.
#[derive(Debug, Default, Clone)]
pub struct OrphanReport {
    /// Files deleted.
    pub files_deleted: usize,
    /// Their bytes.
    pub bytes: u64,
}

fn normalise(path: &str) -> &str {
    path.strip_prefix("file://").unwrap_or(path)
}

/// Every path the table's metadata reaches.
async fn referenced(table: &Table) -> Result<HashSet<String>> {
    let md = table.metadata();
    let mut paths = HashSet::new();
    if let Some(current) = table.metadata_location() {
        paths.insert(normalise(current).to_string());
    }
    for log in md.metadata_log() {
        paths.insert(normalise(&log.metadata_file).to_string());
    }
    for p in super::expire::reached_by_any_snapshot(table).await? {
        paths.insert(normalise(&p).to_string());
    }
    Ok(paths)
}

/// Delete the files under `table`'s location that nothing references, older than
/// `older_than`, except `protected` (the pending checkpoint's files).
pub async fn remove_orphans(
    table: &Table,
    older_than: Duration,
    storage: &StorageOptions,
    protected: &HashSet<String>,
) -> Result<OrphanReport> {
    let location = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let local = !location.contains("://") || location.starts_with("file://");
    let url_text = if location.contains("://") {
        location.clone()
    } else {
        format!("file://{location}")
    };
    let url = url::Url::parse(&url_text)
        .map_err(|e| Error::config(format!("table location {location} is not a URL: {e}")))?;
    let (store, base) = lakeshore_api::open_store(&url, &storage.with_env())
        .map_err(|e| Error::config(format!("cannot list {location}: {e}; check [sink] storage")))?;
    // Listed names are relative to the store's root: give them the table's form back.
    let full = |p: &object_store::path::Path| -> String {
        if local {
            format!("/{p}")
        } else {
            format!("{}://{}/{p}", url.scheme(), url.authority())
        }
    };
    let references = referenced(table).await?;
    let protected: HashSet<&str> = protected.iter().map(|p| normalise(p)).collect();
    let cutoff_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - older_than.as_millis() as i64;
    let mut doomed = Vec::new();
    let mut listing = store.list(Some(&base));
    while let Some(meta) = listing
        .try_next()
        .await
        .map_err(|e| Error::transient(format!("listing {location}: {e}")))?
    {
        let path = full(&meta.location);
        // Only the table's own `data/` and `metadata/` directories are its files:
        // anything else under its location (another table nested there by a foreign
        // writer) is left alone.
        let own = meta
            .location
            .prefix_match(&base)
            .and_then(|mut rest| rest.next())
            .is_some_and(|dir| dir.as_ref() == "data" || dir.as_ref() == "metadata");
        if own
            && meta.last_modified.timestamp_millis() < cutoff_ms
            && !references.contains(&path)
            && !protected.contains(path.as_str())
        {
            doomed.push((meta.location, path, meta.size));
        }
    }
    let mut report = OrphanReport::default();
    for (location, path, size) in doomed {
        match store.delete(&location).await {
            Ok(()) => {
                report.files_deleted += 1;
                report.bytes += size;
                tracing::debug!(file = %path, "orphan deleted");
            }
            Err(e) => tracing::warn!(file = %path, error = %e, "could not delete an orphan file"),
        }
    }
    Ok(report)
}
