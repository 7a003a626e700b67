//! The storage behind a warehouse or a table location, as iceberg `FileIO`:
//!
//! - `s3://` (and `s3a://`): iceberg's OpenDAL S3 backend, our `storage` settings
//!   translated to its `s3.*` properties;
//! - `gs://` (Google Cloud Storage) and `az://`, `abfs[s]://`, `adl://`, `azure://`
//!   (Azure Blob Storage and ADLS Gen2 through its blob endpoint): [`ObjectStoreStorage`],
//!   iceberg's `Storage` over the stores [`lakeshore_api::open_store`] opens, so a
//!   warehouse takes the same `storage` keys (`google_service_account`,
//!   `azure_storage_account_name`, ...) as the Hive sink and the state store.
//!   Credentials a REST catalog vends in iceberg's names (`gcs.oauth2.token`,
//!   `adls.sas-token.<account>`) are used for the table's files;
//! - anything else: the local file system.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{ErrorKind, Result};
use lakeshore_api::StorageOptions;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use serde::{Deserialize, Serialize};
use url::Url;

/// The iceberg storage factory for files under `location`, with the FileIO properties
/// it needs from `storage` (the pipeline's settings; for `object_store` backends with
/// the cloud environment, [`StorageOptions::with_env`]).
pub(crate) fn factory_and_props(
    location: &str,
    storage: &StorageOptions,
) -> (Arc<dyn StorageFactory>, Vec<(String, String)>) {
    match scheme(location) {
        Scheme::S3 => (
            Arc::new(iceberg_storage_opendal::OpenDalStorageFactory::S3 {
                customized_credential_load: None,
            }),
            s3_props(storage),
        ),
        Scheme::ObjectStore => (Arc::new(ObjectStoreStorageFactory), storage.with_env()),
        Scheme::Local => (Arc::new(iceberg::io::LocalFsStorageFactory), Vec::new()),
    }
}

enum Scheme {
    S3,
    ObjectStore,
    Local,
}

fn scheme(location: &str) -> Scheme {
    match location.split_once("://").map(|(s, _)| s) {
        Some("s3" | "s3a") => Scheme::S3,
        Some(s) if lakeshore_api::OBJECT_STORE_SCHEMES.contains(&s) => Scheme::ObjectStore,
        _ => Scheme::Local,
    }
}

/// The warehouse's S3 settings as iceberg FileIO properties. An explicit endpoint (MinIO,
/// moto, any S3-compatible store) is addressed path-style.
fn s3_props(storage: &StorageOptions) -> Vec<(String, String)> {
    let mut props = Vec::new();
    for (k, v) in &storage.0 {
        let key = match k.to_ascii_lowercase().trim_start_matches("aws_") {
            "endpoint" | "endpoint_url" => {
                props.push(("s3.path-style-access".to_string(), "true".to_string()));
                "s3.endpoint"
            }
            "region" | "default_region" => "s3.region",
            "access_key_id" => "s3.access-key-id",
            "secret_access_key" => "s3.secret-access-key",
            "session_token" | "token" => "s3.session-token",
            // object_store settings with no FileIO counterpart (allow_http: the endpoint's
            // scheme says it).
            _ => continue,
        };
        props.push((key.to_string(), v.clone()));
    }
    props
}

/// Builds [`ObjectStoreStorage`] over the FileIO's properties.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ObjectStoreStorageFactory;

#[typetag::serde]
impl StorageFactory for ObjectStoreStorageFactory {
    fn build(&self, config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStoreStorage {
            props: config.props().clone().into_iter().collect(),
            stores: Arc::default(),
        }))
    }
}

/// Iceberg's `Storage` over `object_store`: one store per bucket or container, built on
/// first use from the properties.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ObjectStoreStorage {
    props: Vec<(String, String)>,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl std::fmt::Debug for ObjectStoreStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Property values may be secrets.
        f.debug_struct("ObjectStoreStorage")
            .field(
                "props",
                &self.props.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn store_error(what: &str, path: &str, e: object_store::Error) -> iceberg::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    iceberg::Error::new(kind, format!("cannot {what} {path}")).with_source(e)
}

impl ObjectStoreStorage {
    /// The store holding `location` and the object's path inside it.
    fn locate(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = Url::parse(location).map_err(|e| {
            iceberg::Error::new(ErrorKind::DataInvalid, format!("not a URL: {location}"))
                .with_source(e)
        })?;
        let (_, path) = ObjectStoreScheme::parse(&url)
            .map_err(|e| store_error("address", location, e.into()))?;
        let key = format!("{}://{}", url.scheme(), url.authority());
        let mut stores = self.stores.lock().expect("store cache poisoned");
        if let Some(store) = stores.get(&key) {
            return Ok((store.clone(), path));
        }
        let (store, _) = lakeshore_api::open_store(&url, &self.props)
            .map_err(|e| store_error("open", &key, e))?;
        stores.insert(key, store.clone());
        Ok((store, path))
    }
}

#[async_trait::async_trait]
#[typetag::serde]
impl Storage for ObjectStoreStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, key) = self.locate(path)?;
        match store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("look up", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, key) = self.locate(path)?;
        let meta = store
            .head(&key)
            .await
            .map_err(|e| store_error("look up", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, key) = self.locate(path)?;
        let got = store
            .get(&key)
            .await
            .map_err(|e| store_error("read", path, e))?;
        got.bytes().await.map_err(|e| store_error("read", path, e))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(ObjectRead {
            store,
            key,
            path: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, key) = self.locate(path)?;
        store
            .put(&key, bs.into())
            .await
            .map_err(|e| store_error("write", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(ObjectWrite {
            inner: BufWriter::with_capacity(store, key, WRITE_PART),
            path: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, key) = self.locate(path)?;
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("delete", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, key) = self.locate(path)?;
        let listed = store.list(Some(&key)).map_ok(|m| m.location).boxed();
        store
            .delete_stream(listed)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| store_error("delete under", path, e))?;
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Bytes buffered before a write becomes a multipart upload (one PUT below it).
const WRITE_PART: usize = 10 * 1024 * 1024;

struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    key: Path,
    path: String,
}

#[async_trait::async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.key, range)
            .await
            .map_err(|e| store_error("read", &self.path, e))
    }
}

struct ObjectWrite {
    inner: BufWriter,
    path: String,
}

#[async_trait::async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.inner
            .put(bs)
            .await
            .map_err(|e| store_error("write", &self.path, e))
    }

    async fn close(&mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.inner.shutdown().await.map_err(|e| {
            iceberg::Error::new(ErrorKind::Unexpected, format!("cannot write {}", self.path))
                .with_source(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_their_backend() {
        assert!(matches!(scheme("s3://b/w"), Scheme::S3));
        assert!(matches!(scheme("s3a://b/w"), Scheme::S3));
        assert!(matches!(scheme("gs://b/w"), Scheme::ObjectStore));
        assert!(matches!(scheme("az://c/w"), Scheme::ObjectStore));
        assert!(matches!(
            scheme("abfss://fs@acct.dfs.core.windows.net/w"),
            Scheme::ObjectStore
        ));
        assert!(matches!(scheme("/tmp/w"), Scheme::Local));
        assert!(matches!(scheme("file:///tmp/w"), Scheme::Local));
    }

    #[test]
    fn debug_hides_values() {
        let s = ObjectStoreStorage {
            props: vec![("azure_storage_account_key".into(), "hunter2".into())],
            stores: Arc::default(),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
