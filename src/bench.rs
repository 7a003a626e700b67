//! `lakeshore bench-raw`: the physical limit for a generator pipeline — the same Arrow
//! batches, from the same source code, written straight to Parquet with the sink's
//! compression and row-group settings, with no engine, no Iceberg and no checkpoints.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use lakeshore_api::SourceEvent;
use parquet::arrow::ArrowWriter;

use crate::config::Plan;

/// Write every batch of the plan's source to `<out>/<table>.parquet`; returns (rows, seconds).
pub async fn raw_parquet(plan: &Plan, out: &Path) -> anyhow::Result<(u64, f64)> {
    let (codec, row_group_bytes) = plan.sink.parquet();
    let props = lakeshore_iceberg::writer_properties(codec, row_group_bytes);
    std::fs::create_dir_all(out)?;
    // The limit is measured unpaced, whatever `rate` the pipeline sets.
    let mut plan = plan.clone();
    if let crate::config::plan::SourcePlan::Datagen(opts) = &mut plan.source {
        opts.rate = 0;
    }
    let mut source = crate::pipeline::open_source(&plan, None, true, None).await?;
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
