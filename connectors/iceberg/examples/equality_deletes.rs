//! A foreign writer for the tests: commits equality deletes, as Flink CDC or a Spark
//! merge-on-read job would, for the rows of a Parquet file (any column order, no field
//! ids needed; at least the equality columns and the partition source columns).
//!
//! ```text
//! cargo run --release --example equality_deletes -- \
//!     sqlite:///abs/lake/catalog.db /abs/lake/warehouse shop.orders order_id ROWS.parquet
//! ```
//!
//! Equality-delete files are written with iceberg-rust's own writer, one per partition of
//! the table's default spec, and committed in one snapshot through lakeshore's row-delta
//! commit (iceberg-rust cannot commit delete files).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use iceberg::TableIdent;
use iceberg::arrow::{
    RecordBatchPartitionSplitter, arrow_schema_to_schema, schema_to_arrow_schema,
};
use iceberg::spec::{DataFileFormat, PartitionKey, Struct};
use iceberg::writer::base_writer::equality_delete_writer::{
    EqualityDeleteFileWriterBuilder, EqualityDeleteWriterConfig,
};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use lakeshore_api::{CommitContext, SourcePosition, StorageOptions};
use lakeshore_iceberg::commit::{CommitOutcome, RowDelta, commit_row_delta};
use lakeshore_iceberg::{CatalogConfig, CatalogHandle};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

// A test helper script: one straight sequence of writes that the integration test
// drives step by step.
#[allow(clippy::too_many_lines)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, warehouse, table, columns, rows] = args.as_slice() else {
        bail!(
            "usage: equality_deletes CATALOG_URI WAREHOUSE NAMESPACE.TABLE COL[,COL] ROWS.parquet"
        );
    };
    let catalog = CatalogHandle::open(&CatalogConfig {
        name: "lakeshore".into(),
        uri: uri.clone(),
        warehouse: warehouse.clone(),
        storage: StorageOptions::default(),
        rest: None,
    })
    .await?;
    let ident = TableIdent::from_strs(table.split('.'))?;
    let t = catalog.load(&ident).await?;
    let md = t.metadata();
    let schema = md.current_schema().clone();
    let arrow_schema = Arc::new(schema_to_arrow_schema(&schema)?);
    let ids = columns
        .split(',')
        .map(|c| {
            schema
                .field_id_by_name(c)
                .with_context(|| format!("no column {c} in {table}"))
        })
        .collect::<anyhow::Result<Vec<i32>>>()?;

    // The rows, in the table's Arrow schema (field ids); missing columns are null.
    let file = std::fs::File::open(rows).with_context(|| rows.clone())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch?;
        let columns: Vec<ArrayRef> = arrow_schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) => arrow_cast::cast(c, f.data_type()),
                None => Ok(new_null_array(f.data_type(), batch.num_rows())),
            })
            .collect::<Result<_, _>>()?;
        batches.push(RecordBatch::try_new(arrow_schema.clone(), columns)?);
    }

    let spec = md.default_partition_spec().clone();
    // Per partition value: its key and rows.
    type Parts = HashMap<Struct, (Option<PartitionKey>, Vec<RecordBatch>)>;
    let mut parts: Parts = HashMap::new();
    if spec.is_unpartitioned() {
        parts.insert(Struct::empty(), (None, batches));
    } else {
        let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
            schema.clone(),
            spec.clone(),
        )?;
        for batch in &batches {
            for (key, part) in splitter.split(batch)? {
                let entry = parts.entry(key.data().clone());
                entry
                    .or_insert_with(|| (Some(key), Vec::new()))
                    .1
                    .push(part);
            }
        }
    }
    let mut files = Vec::new();
    for (_, (key, batches)) in parts {
        let config = EqualityDeleteWriterConfig::new(ids.clone(), schema.clone())?;
        let delete_schema = arrow_schema_to_schema(config.projected_arrow_schema_ref())?;
        let rolling = RollingFileWriterBuilder::new_with_default_file_size(
            ParquetWriterBuilder::new(WriterProperties::default(), Arc::new(delete_schema)),
            t.file_io().clone(),
            DefaultLocationGenerator::new(md)?,
            DefaultFileNameGenerator::new(
                format!("eq-{}", uuid::Uuid::new_v4()),
                Some("deletes".into()),
                DataFileFormat::Parquet,
            ),
        );
        let mut writer = EqualityDeleteFileWriterBuilder::new(rolling, config)
            .build(key)
            .await?;
        for b in batches {
            writer.write(b).await?;
        }
        for f in writer.close().await? {
            files.push((f, spec.spec_id()));
        }
    }
    let delta = RowDelta {
        delete_files: files,
        ..Default::default()
    };
    let n = delta.delete_files.len();
    let ctx = CommitContext {
        pipeline: "equality-deletes-example".into(),
        checkpoint_id: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
        position: SourcePosition(serde_json::Value::Null),
        tables: 1,
    };
    match commit_row_delta(&catalog, &ident, &delta, &ctx, None).await? {
        CommitOutcome::Committed => println!("{n} equality-delete files committed"),
        other => bail!("not committed: {other:?}"),
    }
    Ok(())
}
