//! Object-store settings (the Hive sink's storage, the state store).

use std::collections::BTreeMap;

/// Storage settings passed to `object_store` (`endpoint`, `region`, `access_key_id`,
/// `secret_access_key`, `allow_http`, ...). Values are never printed.
#[derive(Clone, Default)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl StorageOptions {
    /// The `AWS_*`, `GOOGLE_*` and `AZURE_*` environment first (the variables
    /// `object_store` reads; nothing else of the environment, so other secrets never
    /// reach a store's settings), then the explicit ones (which win). Keys lowercased,
    /// as `object_store` parses them.
    pub fn with_env(&self) -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| CLOUD_ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
            .chain(self.0.iter().map(|(k, v)| (k.clone(), v.clone())))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    }
}

const CLOUD_ENV_PREFIXES: &[&str] = &["AWS_", "GOOGLE_", "AZURE_"];

/// URL schemes of the object stores [`open_store`] opens besides `file://`: S3, Google
/// Cloud Storage, Azure Blob Storage / ADLS Gen2.
pub const OBJECT_STORE_SCHEMES: &[&str] =
    &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"];

/// The object store holding `url` and the path of `url` inside it, for the state store,
/// the Hive sink, orphan-file listing and the Iceberg warehouse's files on Google Cloud
/// Storage and Azure:
///
/// - `s3://`, `az://` / `abfs[s]://` / `adl://` / `azure://`, `file://`: `object_store`;
/// - `gs://`: OpenDAL's GCS service (the JSON API) behind `object_store_opendal`, its
///   settings taken from `object_store`'s `google_*` names (`google_service_account`: a
///   key file, `google_service_account_key`: the key itself, `google_base_url`,
///   `google_skip_signature`) so one `storage` table speaks one language.
///
/// `options` are `object_store` settings (unknown keys are skipped); a REST catalog's
/// vended credentials in iceberg's names (`gcs.oauth2.token`, `adls.sas-token.<account>`)
/// are understood too.
pub fn open_store(
    url: &::url::Url,
    options: &[(String, String)],
) -> object_store::Result<(
    std::sync::Arc<dyn object_store::ObjectStore>,
    object_store::path::Path,
)> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::{ObjectStoreScheme, parse_url_opts};
    let (scheme, path) = ObjectStoreScheme::parse(url)?;
    let store: std::sync::Arc<dyn object_store::ObjectStore> = match scheme {
        ObjectStoreScheme::GoogleCloudStorage => std::sync::Arc::new(gcs_store(url, options)?),
        ObjectStoreScheme::MicrosoftAzure => {
            let mut builder = MicrosoftAzureBuilder::new().with_url(url.as_str());
            for (k, v) in options {
                if let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() {
                    builder = builder.with_config(key, v);
                } else if k.starts_with("adls.sas-token") {
                    builder = builder.with_config(AzureConfigKey::SasKey, v);
                }
            }
            std::sync::Arc::new(builder.build()?)
        }
        _ => std::sync::Arc::from(parse_url_opts(url, options.iter().cloned())?.0),
    };
    Ok((store, path))
}

/// Google Cloud Storage through OpenDAL: `object_store`'s own GCS client speaks the XML
/// API, which the GCS emulators we test against do not serve (uploads); OpenDAL speaks
/// the JSON API, which they and GCS both do. OpenDAL 0.58, not iceberg's 0.57, whose GCS
/// upload encodes an object name twice (`dt=1` lands as `dt%3D1`).
fn gcs_store(
    url: &::url::Url,
    options: &[(String, String)],
) -> object_store::Result<object_store_opendal::OpendalStore> {
    use base64::Engine as _;
    // The process-wide HTTP transport (reqwest with rustls); installed once.
    opendal::install_default();
    let mut cfg = opendal::services::GcsConfig::default();
    cfg.bucket = url.host_str().unwrap_or_default().to_string();
    for (k, v) in options {
        let k = k.to_ascii_lowercase();
        match k.strip_prefix("google_").unwrap_or(&k) {
            "service_account" | "service_account_path" | "application_credentials" => {
                cfg.credential_path = Some(v.clone());
            }
            "service_account_key" => {
                cfg.credential = Some(base64::engine::general_purpose::STANDARD.encode(v));
            }
            "base_url" => cfg.endpoint = Some(v.trim_end_matches('/').to_string()),
            "skip_signature" if v.eq_ignore_ascii_case("true") => {
                cfg.skip_signature = true;
                cfg.disable_vm_metadata = true;
                cfg.disable_config_load = true;
            }
            "gcs.oauth2.token" => cfg.token = Some(v.clone()),
            _ => {}
        }
    }
    let op = opendal::Operator::from_config(cfg)
        .map_err(|e| object_store::Error::Generic {
            store: "GCS",
            source: Box::new(e),
        })?
        .layer(opendal::layers::RetryLayer::new());
    Ok(object_store_opendal::OpendalStore::new(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_open_by_scheme_and_give_the_inner_path() {
        let gs = ::url::Url::parse("gs://bucket/wh/t/data/f.parquet").unwrap();
        let opts = vec![
            (
                "google_base_url".to_string(),
                "http://127.0.0.1:1".to_string(),
            ),
            ("google_skip_signature".to_string(), "true".to_string()),
        ];
        let (_, path) = open_store(&gs, &opts).unwrap();
        assert_eq!(path.as_ref(), "wh/t/data/f.parquet");
        let az = ::url::Url::parse("az://container/wh/f.parquet").unwrap();
        let opts = vec![
            ("azure_storage_account_name".to_string(), "acct".to_string()),
            ("azure_storage_account_key".to_string(), "a2V5".to_string()),
        ];
        let (_, path) = open_store(&az, &opts).unwrap();
        assert_eq!(path.as_ref(), "wh/f.parquet");
    }
}
