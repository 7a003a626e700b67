//! The `lakeshore` command line: parses arguments and hands over to the pipeline code.
//! Exit codes: 0 ok, 1 runtime failure, 2 configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lakeshore_api::ErrorKind;
use tokio::sync::watch;

mod bench;
mod config;
mod engine;
mod expected;
mod pipeline;

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
    /// Run pipelines until stopped (SIGTERM or Ctrl-C take a final checkpoint first).
    Run {
        /// Pipeline files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check pipeline files and report every problem with file, line and column.
    Validate {
        /// Pipeline files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also connect to each source and check its server set-up (privileges, WAL
        /// settings, tables and keys, publication and slot), saying what to change.
        #[arg(long)]
        connect: bool,
    },
    /// Measure the raw Parquet write limit of a generator pipeline (for benchmarks).
    #[command(hide = true)]
    BenchRaw {
        /// The pipeline file (a datagen source).
        pipeline: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the raw consume limit of a Kafka pipeline's topics (for benchmarks).
    #[command(hide = true)]
    BenchKafka {
        /// The pipeline file (a kafka source).
        pipeline: PathBuf,
        /// Also write the result (JSON) to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Write what a generator pipeline's tables must hold after it ran (for tests).
    #[command(hide = true)]
    Expected {
        /// The pipeline file (a datagen source).
        pipeline: PathBuf,
        /// Output directory; one Parquet file per table.
        #[arg(long)]
        out: PathBuf,
    },
}

/// A failure and its exit code.
enum Failure {
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pg_walstream=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
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

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Validate { paths, connect } => {
            let files = config::pipeline_files(&paths)?;
            let mut failed = Vec::new();
            for f in &files {
                match config::load(f) {
                    Ok(plan) => {
                        println!("ok: {} (pipeline {})", f.display(), plan.name);
                        if connect {
                            match pipeline::check_source(&plan).await {
                                Ok(lines) => {
                                    for l in lines {
                                        println!("  {l}");
                                    }
                                }
                                Err(e) => failed.push(format!("{}: {e}", f.display())),
                            }
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Failure::Config(failed.join("\nerror: ")))
            }
        }
        Command::Backfill { pipeline: file } => {
            let plan = config::load(&file)?;
            let total = plan.source.size_hint();
            let progress = Arc::new(pipeline::Progress::new(&plan.name, total));
            let result = pipeline::run(&plan, true, progress.clone(), shutdown_signal()).await;
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
        Command::Run { paths } => {
            let files = config::pipeline_files(&paths)?;
            let plans = files
                .iter()
                .map(|f| config::load(f))
                .collect::<Result<Vec<_>, _>>()?;
            let shutdown = shutdown_signal();
            let mut tasks = Vec::new();
            for plan in plans {
                let shutdown = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    let progress = Arc::new(pipeline::Progress::new(&plan.name, None));
                    let result = pipeline::run(&plan, false, progress, shutdown).await;
                    (plan.name, result)
                }));
            }
            let mut failure = None;
            for t in tasks {
                match t.await {
                    Ok((name, Ok(s))) => {
                        tracing::info!(pipeline = %name, checkpoint = ?s.last_checkpoint, "stopped")
                    }
                    Ok((name, Err(e))) => {
                        tracing::error!(pipeline = %name, error = %e, "pipeline failed");
                        failure = Some(Failure::from(e));
                    }
                    Err(e) => failure = Some(Failure::Runtime(format!("pipeline task: {e}"))),
                }
            }
            failure.map_or(Ok(()), Err)
        }
        Command::BenchRaw {
            pipeline: file,
            out,
        } => {
            let plan = config::load(&file)?;
            let (rows, secs) = bench::raw_parquet(&plan, &out)
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            println!("{{\"rows\": {rows}, \"seconds\": {secs:.3}}}");
            Ok(())
        }
        Command::BenchKafka {
            pipeline: file,
            report,
        } => {
            let plan = config::load(&file)?;
            let config::plan::SourcePlan::Kafka(opts) = &plan.source else {
                return Err(Failure::Config("bench-kafka needs a kafka source".into()));
            };
            let opts = opts.clone();
            let (messages, bytes, secs) =
                tokio::task::spawn_blocking(move || lakeshore_kafka::bare_consume(&opts))
                    .await
                    .map_err(|e| Failure::Runtime(e.to_string()))?
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
            let json =
                format!("{{\"messages\": {messages}, \"bytes\": {bytes}, \"seconds\": {secs:.3}}}");
            if let Some(path) = report {
                std::fs::write(&path, &json).map_err(|e| Failure::Runtime(e.to_string()))?;
            }
            println!("{json}");
            Ok(())
        }
        Command::Expected {
            pipeline: file,
            out,
        } => {
            let plan = config::load(&file)?;
            expected::write(&plan, &out).map_err(|e| Failure::Runtime(e.to_string()))
        }
    }
}
