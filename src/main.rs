//! The `lakeshore` command line: parses arguments and hands over to the pipeline code.
//! Exit codes: 0 ok, 1 runtime failure, 2 configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lakeshore_api::ErrorKind;
use tokio::sync::watch;

/// mimalloc: a thousand tables' writers on a few threads fragment glibc's arenas (their
/// resident memory grew past twice the heap in `bench.sh whole-db`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "bench")]
mod bench;
mod config;
mod daemon;
#[cfg(feature = "bench")]
mod expected;
mod maintain;
mod pipeline;
mod sinks;
mod sources;

/// Keeps lakehouse tables in sync with operational databases and event streams.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a bounded pipeline to completion. Re-running the same command after a crash
    /// resumes from the last checkpoint.
    Backfill {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Run pipelines until stopped (SIGTERM or Ctrl-C take a final checkpoint first): the
    /// daemon. Directories are watched: added, changed and removed files start, restart
    /// and stop their pipelines (SIGHUP re-reads them at once).
    Run {
        /// Pipeline files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The daemon file (HTTP address, defaults, restart policy), e.g.
        /// configs/lakeshore.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve /health, /ready, /metrics and /pipelines on this address (wins over the
        /// daemon file), e.g. 127.0.0.1:8080 (another address needs [auth]).
        #[arg(long)]
        http: Option<String>,
        /// "text" or "json" (wins over the daemon file).
        #[arg(long)]
        log_format: Option<String>,
        /// Run as one of several replicas over the same pipeline files, under this name
        /// (unique among them, e.g. the pod name; wins over [replicas] id): each
        /// pipeline runs on one replica at a time, by a lease in its state store.
        #[arg(long, env = "LAKESHORE_REPLICA")]
        replica: Option<String>,
    },
    /// Compact the Iceberg tables of a pipeline (every table of its sink's namespace, or
    /// the ones named), as its [sink.maintenance] says; safe while the pipeline runs.
    Maintain {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Only this lake table (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Show the pipelines of a running daemon (from its /pipelines endpoint).
    Status {
        /// The daemon's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The daemon file, for its [auth] token (else LAKESHORE_API_TOKEN is used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check pipeline files and report every problem with file, line and column.
    Validate {
        /// Pipeline files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also check this daemon file (see `run --config`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also connect to each source and check its server set-up (privileges, WAL
        /// settings, tables and keys, publication and slot), saying what to change.
        #[arg(long)]
        connect: bool,
    },
    /// Benchmark and test helpers, built only with `--features bench`.
    #[cfg(feature = "bench")]
    #[command(flatten)]
    Bench(bench::Command),
}

/// A failure and its exit code.
pub(crate) enum Failure {
    Config(String),
    Runtime(String),
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Self {
        Failure::Config(e.to_string())
    }
}

impl From<lakeshore_api::Error> for Failure {
    fn from(e: lakeshore_api::Error) -> Self {
        match e.kind() {
            ErrorKind::Config => Failure::Config(e.to_string()),
            _ => Failure::Runtime(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    // Two TLS crypto providers are linked in (dependencies want ring and aws-lc-rs), so
    // rustls cannot pick one by itself: TLS connections (MySQL, S3, PostgreSQL) use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The daemon file decides the log format, so it is read before logging starts.
    let daemon_config = match &cli.command {
        Command::Run {
            config,
            http,
            log_format,
            replica,
            ..
        } => match daemon_settings(
            config.as_deref(),
            http.as_deref(),
            log_format.as_deref(),
            replica.as_deref(),
        ) {
            Ok(c) => Some(c),
            Err(m) => {
                eprintln!("error: {m}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pg_walstream=warn"));
    let json = daemon_config
        .as_ref()
        .is_some_and(|c| c.log_format == config::daemon::LogFormat::Json);
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command, daemon_config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}

/// A receiver that turns true on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stopping: taking a final checkpoint");
        let _ = tx.send(true);
    });
    rx
}

/// The daemon file (if any) with the command line's overrides.
fn daemon_settings(
    file: Option<&std::path::Path>,
    http: Option<&str>,
    log_format: Option<&str>,
    replica: Option<&str>,
) -> Result<config::daemon::DaemonConfig, String> {
    let mut cfg = match file {
        Some(f) => config::daemon::load(f).map_err(|e| e.to_string())?,
        None => Default::default(),
    };
    if let Some(id) = replica.filter(|r| !r.is_empty()) {
        cfg.replica
            .get_or_insert_with(|| config::daemon::Replica {
                id: String::new(),
                lease_ttl: config::daemon::Replica::DEFAULT_TTL,
                count: None,
            })
            .id = id.to_string();
    }
    if cfg.replica.as_ref().is_some_and(|r| r.id.is_empty()) {
        return Err(
            "[replicas] needs this replica's name: set id = \"${POD_NAME}\" there, or pass \
             --replica NAME (or the LAKESHORE_REPLICA environment variable)"
                .to_string(),
        );
    }
    if let Some(h) = http {
        cfg.http = Some(config::daemon::parse_addr(h).ok_or_else(|| {
            format!("--http {h} is not an address; write host:port, e.g. 127.0.0.1:8080")
        })?);
    }
    if let Some(f) = log_format {
        cfg.log_format = config::daemon::LogFormat::parse(f)
            .ok_or_else(|| format!("--log-format {f} is unknown; write text or json"))?;
    }
    if cfg.auth.token.is_none() {
        cfg.auth.token = config::daemon::token_from_env()?;
    }
    if let Some(addr) = cfg.http
        && cfg.auth.token.is_none()
        && !addr.ip().is_loopback()
    {
        return Err(format!(
            "refusing to serve the HTTP endpoints on {addr} without a token: anyone who \
             reaches that address could pause pipelines or start re-snapshots. Set [auth] \
             token_file (or token = \"${{VAR}}\") in the daemon file, or the {} environment \
             variable; or listen on 127.0.0.1",
            config::daemon::TOKEN_ENV
        ));
    }
    Ok(cfg)
}

/// `lakeshore run`: the daemon, with its HTTP endpoints if an address is set.
async fn run_daemon(paths: Vec<PathBuf>, cfg: config::daemon::DaemonConfig) -> Result<(), Failure> {
    // Every file must load at the start (later, bad files are only rejected).
    let files = config::pipeline_files(&paths)?;
    for f in &files {
        config::load(f)?;
    }
    let shutdown = shutdown_signal();
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(8);
    let daemon = daemon::Daemon::new(cfg.clone(), paths);
    let server = match cfg.http {
        Some(addr) => {
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| Failure::Runtime(format!("metrics: {e}")))?;
            let upkeep = metrics.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Failure::Config(format!(
                    "cannot listen on {addr}: {e}; change http in the daemon file or --http"
                ))
            })?;
            drop(listener);
            let tls = match &cfg.tls {
                Some(tls) => Some(daemon::http::tls_config(tls).map_err(Failure::Config)?),
                None => None,
            };
            let endpoints = daemon::http::Endpoints {
                addr,
                auth: cfg.auth.clone(),
                tls,
            };
            Some(tokio::spawn(daemon::http::serve(
                endpoints,
                daemon.clone(),
                metrics,
                control_tx.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let ended = daemon.run(shutdown, control_rx).await;
    if let Some(s) = server {
        s.abort();
    }
    match ended {
        daemon::Ended::Stopped(true) | daemon::Ended::AllDone(None) => Ok(()),
        daemon::Ended::Stopped(false) => Err(Failure::Runtime(
            "stopped before every pipeline finished its final checkpoint (grace period)".into(),
        )),
        daemon::Ended::AllDone(Some((message, true))) => Err(Failure::Config(message)),
        daemon::Ended::AllDone(Some((message, false))) => Err(Failure::Runtime(message)),
    }
}

async fn dispatch(
    command: Command,
    daemon_config: Option<config::daemon::DaemonConfig>,
) -> Result<(), Failure> {
    match command {
        Command::Validate {
            paths,
            connect,
            config: daemon_file,
        } => validate(&paths, connect, daemon_file.as_deref()).await,
        Command::Backfill { pipeline: file } => backfill(&file).await,
        Command::Run { paths, .. } => run_daemon(paths, daemon_config.unwrap_or_default()).await,
        Command::Status { url, config } => status(&url, config.as_deref()).await,
        Command::Maintain {
            pipeline: file,
            tables,
        } => {
            let plan = config::load(&file)?;
            for m in maintain::run(&plan, &tables).await? {
                println!("{}", maintained(&m));
            }
            Ok(())
        }
        #[cfg(feature = "bench")]
        Command::Bench(command) => bench::run(command).await,
    }
}

/// `lakeshore validate`: every file loads (and with `connect`, every source is set up).
async fn validate(
    paths: &[PathBuf],
    connect: bool,
    daemon_file: Option<&std::path::Path>,
) -> Result<(), Failure> {
    let files = config::pipeline_files(paths)?;
    let mut failed = Vec::new();
    if let Some(f) = daemon_file {
        match config::daemon::load(f) {
            Ok(_) => println!("ok: {} (daemon file)", f.display()),
            Err(e) => failed.push(e.to_string()),
        }
    }
    for f in &files {
        let plan = match config::load(f) {
            Ok(plan) => plan,
            Err(e) => {
                failed.push(e.to_string());
                continue;
            }
        };
        println!("ok: {} (pipeline {})", f.display(), plan.name);
        if connect {
            match pipeline::check(&plan).await {
                Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
                Err(e) => failed.push(format!("{}: {e}", f.display())),
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Config(failed.join("\nerror: ")))
    }
}

/// `lakeshore backfill`: one bounded run, with a progress bar and a summary line.
async fn backfill(file: &std::path::Path) -> Result<(), Failure> {
    let plan = config::load(file)?;
    let total = plan.source.size_hint();
    let progress = Arc::new(pipeline::Progress::new(&plan.name, total));
    let result = pipeline::run(&plan, true, progress.clone(), shutdown_signal(), None, None).await;
    progress.finish();
    let summary = result?;
    let rows: u64 = summary.rows.values().sum();
    let tables: Vec<String> = summary
        .rows
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect();
    let resumed = summary
        .resumed_from
        .map(|c| format!(", resumed from checkpoint {c}"))
        .unwrap_or_default();
    println!(
        "backfill {} complete: checkpoint {}, {rows} rows written by this run ({}){resumed}",
        plan.name,
        summary
            .last_checkpoint
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into()),
        tables.join(", "),
    );
    Ok(())
}

/// The line `lakeshore maintain` prints for one table.
fn maintained(m: &maintain::Maintained) -> String {
    let r = &m.done.compacted;
    let s = &m.done.stats;
    let mut extra = m.done.expired.as_ref().map_or(String::new(), |e| {
        format!(
            "; {} snapshots expired, {} files deleted",
            e.snapshots, e.files_deleted
        )
    });
    if r.deletes_merged > 0 {
        extra += &format!(
            "; {} delete files of {} partitions merged",
            r.merged_delete_files, r.deletes_merged
        );
    }
    if r.equality_rows > 0 {
        extra += &format!("; {} rows removed by equality deletes", r.equality_rows);
    }
    if m.done.manifests_merged {
        extra += "; manifests merged";
    }
    if let Some(o) = &m.done.orphans {
        extra += &format!("; {} orphan files deleted", o.files_deleted);
    }
    format!(
        "{}: {} partitions compacted: {} data files and {} delete files replaced by {} \
         ({} rows, {} deleted rows dropped, {} deletes moved, {} conflicts){extra}; \
         now {} data files, {} delete files; {:.1} s, {:.0} rows/s",
        m.table,
        r.partitions,
        r.data_files_removed,
        r.delete_files_removed,
        r.data_files_added,
        r.rows,
        r.rows_dropped,
        r.deletes_moved,
        r.conflicts,
        s.data_files,
        s.delete_files,
        m.took.as_secs_f64(),
        (r.rows + r.rows_dropped) as f64 / m.took.as_secs_f64().max(1e-3),
    )
}

/// `lakeshore status`: the daemon's `/pipelines` as a table.
async fn status(url: &str, daemon_file: Option<&std::path::Path>) -> Result<(), Failure> {
    let token = match daemon_file {
        Some(f) => config::daemon::load(f)?.auth.token,
        None => None,
    };
    let token = match token {
        Some(t) => Some(t),
        None => config::daemon::token_from_env().map_err(Failure::Config)?,
    };
    let url = format!("{}/pipelines", url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().get(&url);
    if let Some(t) = &token {
        request = request.bearer_auth(&t.0);
    }
    let body: serde_json::Value = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot read {url}: {e}; is the daemon running with http set?"
            ))
        })?
        .json()
        .await
        .map_err(|e| Failure::Runtime(format!("{url} did not answer with JSON: {e}")))?;
    let now = daemon::status::now_ms();
    let mut rows = vec![[
        "PIPELINE".to_string(),
        "PHASE".into(),
        "ROWS".into(),
        "CHECKPOINT".into(),
        "AGE".into(),
        "LAG".into(),
        "RESTARTS".into(),
        "LAST ERROR".into(),
    ]];
    for p in body["pipelines"].as_array().into_iter().flatten() {
        let cp = &p["last_checkpoint"];
        let age = cp["at_ms"]
            .as_u64()
            .map(|at| format!("{:.1}s", now.saturating_sub(at) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let lag = &p["lag"];
        let lag = match (lag["seconds"].as_f64(), lag["behind"].as_u64()) {
            (Some(s), Some(b)) => format!("{s:.1}s/{b} {}", lag["unit"].as_str().unwrap_or("")),
            (Some(s), None) => format!("{s:.1}s"),
            (None, Some(b)) => format!("{b} {}", lag["unit"].as_str().unwrap_or("")),
            (None, None) => "-".into(),
        };
        let error: String = p["last_error"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        rows.push([
            p["name"].as_str().unwrap_or("?").to_string(),
            p["phase"].as_str().unwrap_or("?").to_string(),
            p["rows"].to_string(),
            cp["id"].as_u64().map_or("-".into(), |i| i.to_string()),
            age,
            lag,
            p["restarts"].to_string(),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    for f in body["rejected"].as_array().into_iter().flatten() {
        println!(
            "rejected {}: {}",
            f["file"].as_str().unwrap_or("?"),
            f["error"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
