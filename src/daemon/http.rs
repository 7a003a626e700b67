//! The daemon's HTTP endpoints: `/health`, `/ready`, `/metrics` (Prometheus text),
//! `/pipelines`, `/pipelines/{name}` (JSON) and `POST /pipelines/{name}/pause|resume|resnapshot`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::status::{Phase, PipelineStatus, now_ms};
use super::{Control, Daemon, Refused};

#[derive(Clone)]
struct App {
    daemon: Arc<Daemon>,
    metrics: PrometheusHandle,
    control: mpsc::Sender<Control>,
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

/// Serve on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    daemon: Arc<Daemon>,
    metrics: PrometheusHandle,
    control: mpsc::Sender<Control>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{name}", get(pipeline))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/pipelines/{name}/resnapshot", post(resnapshot))
        .with_state(App {
            daemon,
            metrics,
            control,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "HTTP endpoints: /health /ready /metrics /pipelines");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
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
        metrics::gauge!("lakeshore_pipeline_snapshot_tables", "pipeline" => name.clone(), "state" => "running")
            .set(total - done);
        metrics::gauge!("lakeshore_pipeline_restarts", "pipeline" => name).set(s.restarts as f64);
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
