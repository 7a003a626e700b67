//! `lakeshore expected`: what a generator pipeline's lake tables must hold once it has
//! run to the end, written as Parquet so that tests can compare the lake (read by DuckDB
//! or pyiceberg) against the source's own state.

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use lakeshore_datagen::{Profile, nexmark, orders};
use parquet::arrow::ArrowWriter;

use crate::config::Plan;
use crate::sources::datagen::Datagen;

/// Write `<out>/<lake table>.parquet` for every table of the plan's generator.
pub fn write(plan: &Plan, out: &Path) -> anyhow::Result<()> {
    let Some(Datagen(o)) = plan.source.as_any().downcast_ref::<Datagen>() else {
        anyhow::bail!(
            "only generator pipelines have an expected state; compare with the source itself"
        );
    };
    let events = o.events.ok_or_else(|| {
        anyhow::anyhow!("the generator is unbounded (no `events`); nothing to expect")
    })?;
    std::fs::create_dir_all(out)?;
    let tables: Vec<(&str, RecordBatch)> = match o.profile {
        Profile::Nexmark => {
            let b = nexmark::generate(o.seed, 0, events);
            vec![("person", b.person), ("auction", b.auction), ("bid", b.bid)]
        }
        Profile::Orders => {
            let cfg = orders::OrdersConfig {
                seed: o.seed,
                initial_rows: o.initial_rows,
                note_from: o.add_column_at,
            };
            vec![("orders", orders::fold_batch(&cfg, events))]
        }
    };
    for (table, batch) in tables {
        let path = out.join(format!("{}.parquet", plan.target_table(table)));
        let mut w = ArrowWriter::try_new(File::create(&path)?, batch.schema(), None)?;
        w.write(&batch)?;
        w.close()?;
    }
    Ok(())
}
