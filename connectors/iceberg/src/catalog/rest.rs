//! An Iceberg REST catalog, spoken with our own HTTP client (reqwest) over the request
//! and response types of `iceberg-catalog-rest`. Its own `RestCatalog` is not used: its
//! `update_table` takes a `TableCommit` no one outside iceberg-rust can build (so it
//! cannot land a row delta), it probes existence with `HEAD` (which some servers refuse),
//! never refreshes an OAuth2 token, and cannot sign with SigV4.
//!
//! A change lands as `POST /v1/{prefix}/namespaces/{ns}/tables/{table}` with the
//! builder's updates and requirements that hold it to the base it was built on: the
//! table's UUID, the main branch's snapshot, the current schema and the last column id.
//! `409` is a lost race (the caller reloads and re-validates); a `5xx` or a lost
//! connection leaves the outcome unknown, so the error is transient and the files stay
//! (a retried row delta finds its checkpoint in the table if it landed).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use iceberg::io::FileIOBuilder;
use iceberg::spec::{
    MAIN_BRANCH, TableMetadataBuildResult, UnboundPartitionField, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableCreation, TableIdent, TableRequirement};
use iceberg_catalog_rest::{
    CommitTableRequest, CreateNamespaceRequest, CreateTableRequest, ErrorModel, ListTablesResponse,
    LoadTableResult,
};
use lakeshore_api::{Error, ErrorKind, Result, StorageOptions};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

use super::auth::Authenticator;
use super::storage::factory_and_props;
use super::{Backend, CatalogConfig, RestConfig, redact};
use crate::error::ice;

pub(super) struct RestBackend {
    http: reqwest::Client,
    /// `<uri>/v1/` or `<uri>/v1/<prefix>/`.
    base: String,
    auth: Authenticator,
    headers: HeaderMap,
    /// The server's `/v1/config` defaults and overrides (FileIO properties among them).
    props: HashMap<String, String>,
    storage: StorageOptions,
    /// `[sink.catalog] uri`, for messages.
    label: String,
}

/// `/v1/config`'s answer.
#[derive(serde::Deserialize, Default)]
struct ConfigResponse {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

/// An error answer (`IcebergErrorResponse`).
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorModel,
}

/// One path segment, percent-encoded (a namespace's levels are joined by 0x1F first).
fn segment(text: &str) -> String {
    lakeshore_api::url::percent_encode(text)
}

fn namespace_path(namespace: &NamespaceIdent) -> String {
    format!("namespaces/{}", segment(&namespace.join("\u{1f}")))
}

fn table_path(ident: &TableIdent) -> String {
    format!(
        "{}/tables/{}",
        namespace_path(ident.namespace()),
        segment(ident.name())
    )
}

impl RestBackend {
    pub(super) async fn open(cfg: &CatalogConfig, rest: &RestConfig) -> Result<Self> {
        let uri = cfg.uri.trim_end_matches('/').to_string();
        let label = format!("REST catalog {}", redact(&uri));
        let mut headers = HeaderMap::new();
        for (name, value) in &rest.headers {
            let bad = || {
                Error::config(format!(
                    "{label}: header {name:?} is not a valid HTTP header; check [sink.catalog] headers"
                ))
            };
            let name = HeaderName::try_from(name.as_str()).map_err(|_| bad())?;
            let mut value = HeaderValue::try_from(value.as_str()).map_err(|_| bad())?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if rest.vended_credentials {
            headers.insert(
                "x-iceberg-access-delegation",
                HeaderValue::from_static("vended-credentials"),
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::internal("HTTP client").with_source(e))?;
        let auth = Authenticator::new(rest.auth.clone(), &uri, cfg.storage.clone(), label.clone());
        let mut backend = RestBackend {
            http,
            base: format!("{uri}/v1/"),
            auth,
            headers,
            props: HashMap::new(),
            storage: cfg.storage.clone(),
            label,
        };
        let query = if cfg.warehouse.is_empty() {
            String::new()
        } else {
            format!("?warehouse={}", segment(&cfg.warehouse))
        };
        let (status, body) = backend
            .send(Method::GET, &format!("config{query}"), None)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::Transient {
                    Error::config(format!(
                        "cannot reach the {}; check [sink.catalog] uri",
                        backend.label
                    ))
                    .with_boxed_source(Box::new(e))
                } else {
                    e
                }
            })?;
        if status != StatusCode::OK {
            return Err(backend.failure(status, &body, "reading /v1/config"));
        }
        let config: ConfigResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::config(format!(
                "{}: /v1/config is not an Iceberg REST catalog's answer ({e}); check [sink.catalog] uri",
                backend.label
            ))
        })?;
        let prefix = rest
            .prefix
            .clone()
            .or_else(|| config.overrides.get("prefix").cloned())
            .filter(|p| !p.is_empty());
        let root = config
            .overrides
            .get("uri")
            .map_or(uri.as_str(), |u| u.trim_end_matches('/'));
        backend.base = match prefix {
            Some(p) => format!("{root}/v1/{}/", p.trim_matches('/')),
            None => format!("{root}/v1/"),
        };
        backend.props = config.defaults;
        backend.props.extend(config.overrides);
        Ok(backend)
    }

    /// Send a request to `<base><path>`; a refused OAuth2 token is fetched again once.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .headers(self.headers.clone());
            if let Some(body) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let mut req = req
                .build()
                .map_err(|e| Error::internal("REST request").with_source(e))?;
            self.auth.authorize(&self.http, &mut req).await?;
            let started = std::time::Instant::now();
            let resp = self.http.execute(req).await.map_err(|e| {
                Error::transient(format!("{}: {method} {path} failed", self.label))
                    .with_source(e.without_url())
            })?;
            let status = resp.status();
            tracing::debug!(catalog = %self.label, %method, path, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "REST catalog request");
            if status == StatusCode::UNAUTHORIZED && attempt == 0 && self.auth.invalidate().await {
                continue;
            }
            let bytes = resp.bytes().await.map_err(|e| {
                Error::transient(format!(
                    "{}: reading the answer to {method} {path}",
                    self.label
                ))
                .with_source(e.without_url())
            })?;
            return Ok((status, bytes));
        }
        unreachable!("the second attempt returns")
    }

    /// The error for an unexpected answer, with the server's message.
    fn failure(&self, status: StatusCode, body: &[u8], what: &str) -> Error {
        let message = serde_json::from_slice::<ErrorBody>(body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        let text = format!("{}: {what}: HTTP {status}: {message}", self.label);
        match status {
            StatusCode::UNAUTHORIZED => {
                Error::config(format!("{text}; check {}", self.auth.setting()))
            }
            StatusCode::FORBIDDEN => Error::config(format!(
                "{text}; the catalog does not allow this to these credentials (grant it, or \
                 use {} of a principal that may)",
                self.auth.setting()
            )),
            StatusCode::CONFLICT => Error::new(ErrorKind::Conflict, text),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Error::transient(text)
            }
            _ => Error::config(text),
        }
    }

    fn json<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::internal("REST request body").with_source(e))
    }

    /// A loaded or created table, with a FileIO for its location: the server's config,
    /// then `[sink] storage`, then the table's own config and any vended credentials.
    fn table(&self, ident: &TableIdent, body: &[u8]) -> Result<Table> {
        let loaded: LoadTableResult = serde_json::from_slice(body).map_err(|e| {
            Error::internal(format!(
                "{}: table {ident}: unreadable metadata",
                self.label
            ))
            .with_source(e)
        })?;
        let location = loaded.metadata.location().to_string();
        let (factory, storage_props) = factory_and_props(&location, &self.storage);
        let mut props = self.props.clone();
        props.extend(storage_props);
        props.extend(loaded.config);
        if let Some(creds) = loaded.storage_credentials
            && let Some(best) = creds
                .into_iter()
                .filter(|c| location.starts_with(&c.prefix))
                .max_by_key(|c| c.prefix.len())
        {
            props.extend(best.config);
        }
        let file_io = FileIOBuilder::new(factory).with_props(props).build();
        let mut builder = Table::builder()
            .identifier(ident.clone())
            .file_io(file_io)
            .runtime(iceberg::Runtime::try_current().map_err(ice)?)
            .metadata(loaded.metadata);
        if let Some(loc) = loaded.metadata_location {
            builder = builder.metadata_location(loc);
        }
        builder.build().map_err(ice)
    }
}

#[async_trait::async_trait]
impl Backend for RestBackend {
    async fn load(&self, ident: &TableIdent) -> Result<Option<Table>> {
        let (status, body) = self.send(Method::GET, &table_path(ident), None).await?;
        match status {
            StatusCode::OK => Ok(Some(self.table(ident, &body)?)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.failure(s, &body, &format!("loading table {ident}"))),
        }
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        let (status, body) = self
            .send(Method::GET, &namespace_path(namespace), None)
            .await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.failure(
                s,
                &body,
                &format!("loading namespace {}", namespace.join(".")),
            )),
        }
    }

    async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        let request = CreateNamespaceRequest {
            namespace: namespace.clone(),
            properties: HashMap::new(),
        };
        let (status, body) = self
            .send(Method::POST, "namespaces", Some(self.json(&request)?))
            .await?;
        match status {
            StatusCode::OK | StatusCode::CONFLICT => Ok(()),
            s => Err(self.failure(
                s,
                &body,
                &format!(
                    "creating namespace {} (create it in the catalog, or choose another [sink] namespace)",
                    namespace.join(".")
                ),
            )),
        }
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Option<Table>> {
        let ident = TableIdent::new(namespace.clone(), creation.name.clone());
        let mut properties = creation.properties;
        properties.insert("format-version".into(), "2".into());
        let request = CreateTableRequest {
            name: creation.name,
            // The server places the table in its warehouse.
            location: None,
            schema: creation.schema,
            partition_spec: creation.partition_spec.map(with_field_ids).transpose()?,
            write_order: creation.sort_order,
            stage_create: Some(false),
            properties,
        };
        let path = format!("{}/tables", namespace_path(namespace));
        let (status, body) = self
            .send(Method::POST, &path, Some(self.json(&request)?))
            .await?;
        match status {
            StatusCode::OK => Ok(Some(self.table(&ident, &body)?)),
            StatusCode::CONFLICT => Ok(None),
            s => Err(self.failure(s, &body, &format!("creating table {ident}"))),
        }
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        let mut tables = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut path = format!("{}/tables", namespace_path(namespace));
            if let Some(token) = &page {
                path.push_str(&format!("?pageToken={}", segment(token)));
            }
            let (status, body) = self.send(Method::GET, &path, None).await?;
            if status != StatusCode::OK {
                return Err(self.failure(status, &body, "listing tables"));
            }
            let list: ListTablesResponse = serde_json::from_slice(&body).map_err(|e| {
                Error::internal(format!("{}: unreadable table list", self.label)).with_source(e)
            })?;
            tables.extend(list.identifiers);
            match list.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => page = Some(t),
                None => return Ok(tables),
            }
        }
    }

    async fn land(
        &self,
        ident: &TableIdent,
        base: &Table,
        next: TableMetadataBuildResult,
    ) -> Result<bool> {
        let md = base.metadata();
        let request = CommitTableRequest {
            identifier: Some(ident.clone()),
            requirements: vec![
                TableRequirement::UuidMatch { uuid: md.uuid() },
                TableRequirement::RefSnapshotIdMatch {
                    r#ref: MAIN_BRANCH.to_string(),
                    snapshot_id: md.current_snapshot_id(),
                },
                TableRequirement::CurrentSchemaIdMatch {
                    current_schema_id: md.current_schema_id(),
                },
                TableRequirement::LastAssignedFieldIdMatch {
                    last_assigned_field_id: md.last_column_id(),
                },
            ],
            updates: next.changes,
        };
        let (status, body) = self
            .send(Method::POST, &table_path(ident), Some(self.json(&request)?))
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Transient => unknown(ident, e),
                _ => e,
            })?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            s if s.is_server_error() => Err(unknown(
                ident,
                self.failure(s, &body, &format!("committing to {ident}")),
            )),
            s => Err(self.failure(s, &body, &format!("committing to {ident}"))),
        }
    }
}

/// `spec` with partition field ids (1000, 1001, ... as the spec numbers them): optional
/// in a create request, but some servers insist.
fn with_field_ids(spec: UnboundPartitionSpec) -> Result<UnboundPartitionSpec> {
    let fields = spec
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| UnboundPartitionField {
            field_id: f.field_id.or(Some(1000 + i as i32)),
            ..f.clone()
        });
    Ok(UnboundPartitionSpec::builder()
        .with_spec_id(spec.spec_id().unwrap_or(0))
        .add_partition_fields(fields)
        .map_err(ice)?
        .build())
}

/// A commit whose outcome is unknown: retried by the caller, which finds it in the
/// table's history if it landed.
fn unknown(ident: &TableIdent, e: Error) -> Error {
    Error::transient(format!(
        "table {ident}: the catalog did not confirm the commit (it may have landed; the retry checks)"
    ))
    .with_boxed_source(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_namespaces_and_names() {
        let ident = TableIdent::new(
            NamespaceIdent::from_strs(["bronze", "shop"]).unwrap(),
            "order items".into(),
        );
        assert_eq!(
            table_path(&ident),
            "namespaces/bronze%1Fshop/tables/order%20items"
        );
    }
}
