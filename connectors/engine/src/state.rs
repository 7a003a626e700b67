//! The state store: one JSON checkpoint record per checkpoint on an object store
//! (`file://` next to the warehouse by default, `s3://` in the cloud).
//!
//! Records are written create-if-absent: if another copy of the pipeline already wrote
//! checkpoint `n`, this copy is fenced off and stops instead of committing twice.

use std::sync::Arc;

use futures::TryStreamExt;
use lakeshore_api::{Error, ErrorKind, PendingCommit, Result, SourcePosition};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// Everything needed to finish checkpoint `id` after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Pipeline name.
    pub pipeline: String,
    /// Checkpoint id; increases by one per checkpoint.
    pub id: u64,
    /// Where the source resumes after this checkpoint.
    pub position: SourcePosition,
    /// Files per table, durable and not necessarily committed yet.
    pub pending: Vec<PendingCommit>,
    /// Wall-clock time of the record, ms since the epoch.
    pub created_at_ms: u64,
}

/// Checkpoint records of one pipeline.
#[derive(Clone)]
pub struct StateStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

/// How many records to keep; older ones are pruned after each checkpoint.
const KEEP: usize = 3;

/// The object store at `url` (a `file://` directory is created) and the path it names.
pub(crate) fn open_store(
    url: &str,
    storage: &lakeshore_api::StorageOptions,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let parsed = url::Url::parse(url).map_err(|e| {
        Error::config(format!(
            "state location {url} is not a URL; check [pipeline] state"
        ))
        .with_source(e)
    })?;
    if parsed.scheme() == "file" {
        std::fs::create_dir_all(parsed.path()).map_err(|e| {
            Error::config(format!(
                "cannot create the state directory {}; check [pipeline] state",
                parsed.path()
            ))
            .with_source(e)
        })?;
    }
    let (store, base) = lakeshore_api::open_store(&parsed, &storage.with_env()).map_err(|e| {
        Error::config(format!(
            "unsupported state location {url}; check [pipeline] state"
        ))
        .with_source(e)
    })?;
    Ok((store, base))
}

/// The JSON record at `path` (`what` names it in errors), or `None` if there is none.
pub(crate) async fn read_record<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &Path,
    what: &str,
) -> Result<Option<T>> {
    let bytes = match store.get(path).await {
        Ok(r) => r
            .bytes()
            .await
            .map_err(|e| store_error(&format!("reading a {what}"), e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_error(&format!("reading a {what}"), e)),
    };
    let record = serde_json::from_slice(&bytes)
        .map_err(|e| Error::internal(format!("{what} {path} is unreadable")).with_source(e))?;
    Ok(Some(record))
}

/// The numbers of the `<n>.json` records under `prefix`, ascending.
pub(crate) async fn numbered(
    store: &dyn ObjectStore,
    prefix: &Path,
    what: &str,
) -> Result<Vec<u64>> {
    let metas: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|e| store_error(what, e))?;
    let mut ids: Vec<u64> = metas
        .iter()
        .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A failure of the state store; refused credentials are a setting to change.
pub(crate) fn store_error(what: &str, e: object_store::Error) -> Error {
    Error::from(e).context(format!("state store: {what}"))
}

impl StateStore {
    /// Open the store at `url` for `pipeline`; `storage` adds to the `AWS_*` environment.
    pub fn open(
        url: &str,
        pipeline: &str,
        storage: &lakeshore_api::StorageOptions,
    ) -> Result<Self> {
        let (store, base) = open_store(url, storage)?;
        Ok(StateStore {
            store,
            prefix: base.join(pipeline).join("checkpoints"),
        })
    }

    /// The records of `pipeline` on `store` (tests use `object_store::memory::InMemory`).
    pub fn on(store: Arc<dyn ObjectStore>, pipeline: &str) -> Self {
        StateStore {
            store,
            prefix: Path::from(pipeline).join("checkpoints"),
        }
    }

    fn path_of(&self, id: u64) -> Path {
        self.prefix.clone().join(format!("{id:020}.json"))
    }

    async fn ids(&self) -> Result<Vec<u64>> {
        numbered(self.store.as_ref(), &self.prefix, "listing checkpoints").await
    }

    /// The newest record, if any.
    pub async fn latest(&self) -> Result<Option<CheckpointRecord>> {
        let Some(id) = self.ids().await?.pop() else {
            return Ok(None);
        };
        self.read(id).await
    }

    /// Record `id`, if it is kept.
    pub async fn read(&self, id: u64) -> Result<Option<CheckpointRecord>> {
        read_record(self.store.as_ref(), &self.path_of(id), "checkpoint record").await
    }

    /// Write `record`; fails with [`ErrorKind::Fenced`] if it already exists.
    pub async fn write(&self, record: &CheckpointRecord) -> Result<()> {
        let body = serde_json::to_vec(record).map_err(|e| Error::internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path_of(record.id), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::new(
                ErrorKind::Fenced,
                format!(
                    "checkpoint {} of pipeline {} was written by another running copy; stop the other copy (only one may run)",
                    record.id, record.pipeline
                ),
            )),
            Err(e) => Err(store_error("writing a checkpoint", e)),
        }
    }

    /// Delete all but the newest records.
    pub async fn prune(&self) -> Result<()> {
        let ids = self.ids().await?;
        for id in ids.iter().take(ids.len().saturating_sub(KEEP)) {
            self.store
                .delete(&self.path_of(*id))
                .await
                .map_err(|e| store_error("pruning checkpoints", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> CheckpointRecord {
        CheckpointRecord {
            pipeline: "p".into(),
            id,
            position: SourcePosition::sequence(id * 10),
            pending: vec![],
            created_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn writes_are_fenced_and_pruned() {
        let dir = std::env::temp_dir().join(format!("lakeshore-state-{}", uuid::Uuid::new_v4()));
        let store = StateStore::open(
            &format!("file://{}", dir.display()),
            "p",
            &Default::default(),
        )
        .unwrap();
        assert!(store.latest().await.unwrap().is_none());
        for id in 1..=5 {
            store.write(&record(id)).await.unwrap();
        }
        let err = store.write(&record(5)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fenced);
        store.prune().await.unwrap();
        assert_eq!(store.ids().await.unwrap(), vec![3, 4, 5]);
        assert_eq!(
            store.latest().await.unwrap().unwrap().position,
            SourcePosition::sequence(50)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
