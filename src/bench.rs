//! Benchmark and test helpers (`--features bench`, hidden): `bench-raw`, the physical
//! limit for a generator pipeline — the same Arrow batches, from the same source code,
//! written straight to Parquet with the sink's compression and row-group settings, with
//! no engine, no Iceberg and no checkpoints; `bench-kafka`, the raw consume limit of a
//! Kafka pipeline's topics; `expected`, what a generator pipeline's tables must hold.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lakeshore_api::SourceEvent;
use parquet::arrow::ArrowWriter;

use crate::Failure;
use crate::config::{self, Plan};

/// The helpers, hidden from `--help`.
#[derive(clap::Subcommand)]
pub enum Command {
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

/// Run one of the helpers.
pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::BenchRaw {
            pipeline: file,
            out,
        } => {
            let plan = config::load(&file)?;
            let (rows, secs) = raw_parquet(&plan, &out)
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
            let Some(kafka) = plan
                .source
                .as_any()
                .downcast_ref::<crate::sources::kafka::Kafka>()
            else {
                return Err(Failure::Config("bench-kafka needs a kafka source".into()));
            };
            let opts = kafka.0.clone();
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
            crate::expected::write(&plan, &out).map_err(|e| Failure::Runtime(e.to_string()))
        }
    }
}

/// Write every batch of the plan's source to `<out>/<table>.parquet`; returns (rows, seconds).
pub async fn raw_parquet(plan: &Plan, out: &Path) -> anyhow::Result<(u64, f64)> {
    let (codec, row_group_bytes) = plan.sink.parquet();
    let props = lakeshore_iceberg::writer_properties(codec, row_group_bytes, []);
    std::fs::create_dir_all(out)?;
    // The limit is measured unpaced, whatever `rate` the pipeline sets.
    let mut plan = plan.clone();
    if let Some(datagen) = plan
        .source
        .as_any()
        .downcast_ref::<crate::sources::datagen::Datagen>()
    {
        let mut unpaced = datagen.clone();
        unpaced.0.rate = 0;
        plan.source = std::sync::Arc::new(unpaced);
    }
    let mut source = plan.source.open(None, true, None).await?;
    let mut writers: HashMap<String, ArrowWriter<File>> = HashMap::new();
    let started = Instant::now();
    let mut rows = 0u64;
    while let Some(event) = source.next_event().await? {
        let SourceEvent::Batch(batch) = event else {
            continue;
        };
        let writer = match writers.get_mut(batch.table.as_ref()) {
            Some(w) => w,
            None => {
                let file = File::create(out.join(format!("{}.parquet", batch.table)))?;
                let w = ArrowWriter::try_new(file, batch.rows.schema(), Some(props.clone()))?;
                writers.entry(batch.table.to_string()).or_insert(w)
            }
        };
        writer.write(&batch.rows)?;
        rows += batch.num_rows() as u64;
    }
    for (_, w) in writers {
        w.close()?;
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}
