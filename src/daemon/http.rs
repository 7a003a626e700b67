//! The daemon's HTTP endpoints: `/health`, `/ready`, `/metrics` (Prometheus text),
//! `/pipelines`, `/pipelines/{name}` (JSON) and `POST /pipelines/{name}/pause|resume|resnapshot`.
//!
//! Access ([`guard`]): with a token, everything but `/health` and `/ready` (and
//! `/metrics` when `[auth] metrics = "open"`) needs `Authorization: Bearer <token>`,
//! compared in constant time; a request a browser sends from another origin never
//! changes anything (a cross-site form cannot set that header, and any request whose
//! `Origin` is not the daemon's own is refused). Without a token the daemon listens only
//! on loopback (checked at start). Optionally over TLS (`[tls]`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::status::{Phase, PipelineStatus, now_ms};
use super::{Control, Daemon, Refused};
use crate::config::daemon::{ApiAuth, HttpTls};

#[derive(Clone)]
struct App {
    daemon: Arc<Daemon>,
    metrics: PrometheusHandle,
    control: mpsc::Sender<Control>,
    auth: ApiAuth,
}

/// `GET /pipelines`.
#[derive(Serialize)]
struct Pipelines {
    pipelines: Vec<PipelineStatus>,
    /// Files that were rejected, with the reason.
    rejected: Vec<Rejected>,
}

#[derive(Serialize)]
struct Rejected {
    file: String,
    error: String,
}

/// What the endpoints serve and who may use them.
pub struct Endpoints {
    /// Where.
    pub addr: SocketAddr,
    /// The token.
    pub auth: ApiAuth,
    /// HTTPS instead of HTTP, with this server configuration ([`tls_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A server config for `[tls]`, or why not (naming the file).
pub fn tls_config(tls: &HttpTls) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("[tls] cert {}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[tls] cert {}: no certificate in the file",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("[tls] key {}: {e}", tls.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("[tls]: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("[tls] the key does not fit the certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// Serve until `shutdown`.
pub async fn serve(
    endpoints: Endpoints,
    daemon: Arc<Daemon>,
    metrics: PrometheusHandle,
    control: mpsc::Sender<Control>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let Endpoints { addr, auth, tls } = endpoints;
    let state = App {
        daemon,
        metrics,
        control,
        auth,
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{name}", get(pipeline))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/pipelines/{name}/resnapshot", post(resnapshot))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let token = if state.auth.token.is_some() {
        "token required"
    } else {
        "loopback, no token"
    };
    let Some(tls) = tls else {
        tracing::info!(%addr, access = token, "HTTP endpoints: /health /ready /metrics /pipelines");
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tracing::info!(%addr, access = token, "HTTPS endpoints: /health /ready /metrics /pipelines");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended");
            }
        });
    }
}

/// Access control for every request (see the module documentation).
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD && cross_origin(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "requests from another origin may not change pipelines\n",
        )
            .into_response();
    }
    let path = req.uri().path();
    let open =
        path == "/health" || path == "/ready" || (path == "/metrics" && app.auth.metrics_open);
    if let Some(token) = &app.auth.token
        && !open
        && !bearer_matches(req.headers(), &token.0)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"lakeshore\"")],
            "this endpoint needs the daemon's token: Authorization: Bearer <token> (lakeshore status reads it from the daemon file or LAKESHORE_API_TOKEN)\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// The request carries the token as `Authorization: Bearer ...` (compared in constant
/// time).
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

/// A browser request from a page of another origin (`Origin` names another host than
/// the request's `Host`, or the browser says `Sec-Fetch-Site: cross-site`).
fn cross_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    host != Some(origin_host)
}

async fn health(State(app): State<App>) -> Response {
    if app.daemon.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the supervisor is stuck\n").into_response()
    }
}

async fn ready(State(app): State<App>) -> Response {
    if app.daemon.ready() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let waiting: Vec<String> = app
        .daemon
        .statuses()
        .into_iter()
        .filter(|s| matches!(s.phase, Phase::Starting | Phase::Restarting | Phase::Failed))
        .map(|s| format!("{}: {:?}", s.name, s.phase).to_lowercase())
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {}\n", waiting.join(", ")),
    )
        .into_response()
}

/// Gauges that depend on the time of the scrape are set just before rendering.
async fn render_metrics(State(app): State<App>) -> Response {
    let now = now_ms();
    for s in app.daemon.statuses() {
        let name = s.name.clone();
        let up = matches!(s.phase, Phase::Snapshot | Phase::Streaming);
        metrics::gauge!("lakeshore_pipeline_up", "pipeline" => name.clone())
            .set(f64::from(u8::from(up)));
        for phase in [
            Phase::Starting,
            Phase::Snapshot,
            Phase::Streaming,
            Phase::Restarting,
            Phase::Paused,
            Phase::Stopping,
            Phase::Finished,
            Phase::Failed,
            Phase::Standby,
        ] {
            let label = serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            metrics::gauge!("lakeshore_pipeline_phase", "pipeline" => name.clone(), "phase" => label)
                .set(f64::from(u8::from(phase == s.phase)));
        }
        if let Some(c) = &s.last_checkpoint {
            metrics::gauge!("lakeshore_pipeline_checkpoint_age_seconds", "pipeline" => name.clone())
                .set(now.saturating_sub(c.at_ms) as f64 / 1000.0);
        }
        let total = s.snapshot.len() as f64;
        let done = s.snapshot.values().filter(|v| *v == "done").count() as f64;
        metrics::gauge!("lakeshore_pipeline_snapshot_tables", "pipeline" => name.clone(), "state" => "done")
            .set(done);
        metrics::gauge!("lakeshore_pipeline_snapshot_tables", "pipeline" => name, "state" => "running")
            .set(total - done);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

async fn pipelines(State(app): State<App>) -> Response {
    let body = Pipelines {
        pipelines: app.daemon.statuses(),
        rejected: app
            .daemon
            .invalid_files()
            .into_iter()
            .map(|(file, error)| Rejected { file, error })
            .collect(),
    };
    axum::Json(body).into_response()
}

async fn pipeline(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.daemon.statuses().into_iter().find(|s| s.name == name) {
        Some(s) => axum::Json(s).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no pipeline named {name}\n")).into_response(),
    }
}

async fn send(
    app: &App,
    make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Control,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if app.control.send(make(tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(e)) if e.starts_with("no pipeline") => {
            (StatusCode::NOT_FOUND, e + "\n").into_response()
        }
        Ok(Err(e)) => (StatusCode::CONFLICT, e + "\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn pause(State(app): State<App>, Path(name): Path<String>) -> Response {
    send(&app, |tx| Control::Pause(name, tx)).await
}

async fn resume(State(app): State<App>, Path(name): Path<String>) -> Response {
    send(&app, |tx| Control::Resume(name, tx)).await
}

/// `?table=` of a re-snapshot.
#[derive(serde::Deserialize)]
struct TableQuery {
    table: Option<String>,
}

/// `POST /pipelines/{name}/resnapshot?table=T`: answers once the checkpoint that empties
/// the lake table is committed; the table then refills while changes keep flowing.
async fn resnapshot(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<TableQuery>,
) -> Response {
    let Some(table) = query.table.filter(|t| !t.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "name the table: POST /pipelines/{name}/resnapshot?table=schema.table\n",
        )
            .into_response();
    };
    let (tx, rx) = oneshot::channel();
    let control = Control::Resnapshot {
        pipeline: name,
        table: table.clone(),
        reply: tx,
    };
    if app.control.send(control).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(checkpoint)) => axum::Json(serde_json::json!({
            "table": table,
            "checkpoint": checkpoint,
            "state": "running",
        }))
        .into_response(),
        Ok(Err(Refused::NotFound(e))) => (StatusCode::NOT_FOUND, e + "\n").into_response(),
        Ok(Err(Refused::NotRunning(e))) => (StatusCode::CONFLICT, e + "\n").into_response(),
        Ok(Err(Refused::Rejected(e))) => {
            let status = if e.kind() == lakeshore_api::ErrorKind::Config {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            (status, format!("{e}\n")).into_response()
        }
        Ok(Err(Refused::Stopped)) | Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline stopped before the re-snapshot was committed; ask again once it runs\n",
        )
            .into_response(),
    }
}
