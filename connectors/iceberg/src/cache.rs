//! Parsed manifests and manifest lists, shared by every table of the process. Both are
//! immutable (each file name is new), and each checkpoint's key lookup, commit and
//! maintenance read the same ones again: a whole database's thousand tables would parse
//! thousands of Avro files per checkpoint. Bounded by the files' sizes on disk.

use std::sync::{Arc, LazyLock};

use iceberg::io::FileIO;
use iceberg::spec::{Manifest, ManifestFile, ManifestList, SnapshotRef};
use iceberg::table::Table;
use lakeshore_api::Result;
use moka::future::Cache;

use crate::error::{ice, ice_shared};

/// Bytes of manifest files on disk kept parsed (about four times that in memory).
const MANIFEST_BYTES: u64 = 16 << 20;
/// Manifest-list entries kept parsed.
const LIST_ENTRIES: u64 = 64 * 1024;

static MANIFESTS: LazyLock<Cache<String, Arc<Manifest>>> = LazyLock::new(|| {
    Cache::builder()
        .weigher(|_, m: &Arc<Manifest>| weight(m))
        .max_capacity(MANIFEST_BYTES)
        .build()
});

static LISTS: LazyLock<Cache<String, Arc<ManifestList>>> = LazyLock::new(|| {
    Cache::builder()
        .weigher(|_, l: &Arc<ManifestList>| l.entries().len().max(1) as u32)
        .max_capacity(LIST_ENTRIES)
        .build()
});

/// A manifest's weight: about its size on disk (a data file entry with column
/// statistics is a few hundred bytes of Avro).
fn weight(m: &Manifest) -> u32 {
    (m.entries().len() as u32).saturating_mul(400).max(1)
}

/// The parsed manifest `m`.
pub async fn manifest(file_io: &FileIO, m: &ManifestFile) -> Result<Arc<Manifest>> {
    let load = async { m.load_manifest(file_io).await.map(Arc::new) };
    MANIFESTS
        .try_get_with(m.manifest_path.clone(), load)
        .await
        .map_err(shared)
}

/// An error of a load other callers may have waited for too.
fn shared(e: Arc<iceberg::Error>) -> lakeshore_api::Error {
    match Arc::try_unwrap(e) {
        Ok(e) => ice(e),
        Err(e) => ice_shared(&e),
    }
}

/// The parsed manifest list of `snapshot` of `table`.
pub async fn manifest_list(table: &Table, snapshot: &SnapshotRef) -> Result<Arc<ManifestList>> {
    let load = async {
        table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map(Arc::new)
    };
    LISTS
        .try_get_with(snapshot.manifest_list().to_string(), load)
        .await
        .map_err(shared)
}
