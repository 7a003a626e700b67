//! One table's writer: a Parquet file per partition, staged outside the table until the
//! checkpoint commits, rolled by size and age.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use lakeshore_api::files::{LimitChange, OpenFilesLimit};
use lakeshore_api::{ChangeBatch, Error, PendingCommit, Result, TableSchema, TableWriter};
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::ParquetObjectWriter;
use serde::{Deserialize, Serialize};

use crate::partition::{PartitionExpr, Partitioner};
use crate::{Settings, TableLayout, in_partition, storage_error};

/// Upload buffer per open file; S3 parts must be at least 5 MiB.
const UPLOAD_BUFFER: usize = 5 << 20;

/// A closed file of the open checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StagedFile {
    /// Where it was written (below the staging prefix).
    pub staged: String,
    /// Where the commit puts it (below the table).
    pub target: String,
    /// Rows in the file.
    pub rows: u64,
}

/// The sink-specific part of a [`PendingCommit`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HivePending {
    /// Files to move into the table.
    pub files: Vec<StagedFile>,
    /// Partitions (paths below the table) to mark complete with `_SUCCESS`.
    pub complete: Vec<String>,
    /// Partitions written and not yet complete after this checkpoint, with their end in
    /// event time (µs since the epoch).
    pub open: BTreeMap<String, i64>,
}

struct OpenFile {
    writer: AsyncArrowWriter<ParquetObjectWriter>,
    file: StagedFile,
    opened: Instant,
    last_write: u64,
}

/// Writes one table (see the crate docs for the layout).
pub struct HiveWriter {
    opts: Arc<Settings>,
    layout: TableLayout,
    exprs: Vec<PartitionExpr>,
    schema: TableSchema,
    partitioner: Partitioner,
    open: HashMap<String, OpenFile>,
    closed: Vec<StagedFile>,
    /// Partitions written and not yet complete, with their end in event time.
    pending_partitions: BTreeMap<String, i64>,
    watermark: i64,
    rows: u64,
    writes: u64,
    limit: OpenFilesLimit<String>,
    said_at_max: bool,
}

impl HiveWriter {
    pub(crate) fn new(
        opts: Arc<Settings>,
        layout: TableLayout,
        exprs: Vec<PartitionExpr>,
        schema: TableSchema,
        open_partitions: BTreeMap<String, i64>,
    ) -> Result<Self> {
        let partitioner = Partitioner::new(&layout.table, &exprs, &schema.schema)?;
        let limit = OpenFilesLimit::new(opts.max_open_files);
        Ok(HiveWriter {
            opts,
            layout,
            exprs,
            schema,
            partitioner,
            open: HashMap::new(),
            closed: Vec::new(),
            pending_partitions: open_partitions,
            watermark: i64::MIN,
            rows: 0,
            writes: 0,
            limit,
            said_at_max: false,
        })
    }

    fn open_file(&self, partition: &str) -> Result<OpenFile> {
        let name = format!("part-{}.parquet", uuid::Uuid::new_v4());
        let staged = in_partition(&self.layout.staging, "", &name)?;
        let target = in_partition(&self.layout.data, partition, &name)?;
        let buf = BufWriter::with_capacity(self.opts.store.clone(), staged.clone(), UPLOAD_BUFFER);
        let writer = AsyncArrowWriter::try_new(
            ParquetObjectWriter::from_buf_writer(buf),
            self.partitioner.file_schema().clone(),
            Some(self.opts.props.clone()),
        )
        .map_err(|e| parquet_error(&self.layout.table, e))?;
        Ok(OpenFile {
            writer,
            file: StagedFile {
                staged: staged.as_ref().to_string(),
                target: target.as_ref().to_string(),
                rows: 0,
            },
            opened: Instant::now(),
            last_write: 0,
        })
    }

    async fn close_file(&mut self, partition: &str) -> Result<()> {
        let Some(f) = self.open.remove(partition) else {
            return Ok(());
        };
        f.writer
            .close()
            .await
            .map_err(|e| parquet_error(&self.layout.table, e))?;
        metrics::counter!("lakeshore_hive_files_written_total", "table" => self.layout.table.clone())
            .increment(1);
        self.closed.push(f.file);
        Ok(())
    }

    async fn close_all(&mut self) -> Result<()> {
        let keys: Vec<String> = self.open.keys().cloned().collect();
        for k in keys {
            self.close_file(&k).await?;
        }
        Ok(())
    }

    async fn write_group(&mut self, path: &str, rows: &RecordBatch) -> Result<()> {
        if !self.open.contains_key(path) {
            let (close, change) = self.limit.before_open(&path.to_string(), self.open.len());
            if change == LimitChange::AtMax && !self.said_at_max {
                self.said_at_max = true;
                tracing::warn!(
                    table = %self.layout.table,
                    "more partitions are written at once than max_open_files = {}, so files \
                     close after a few rows each; raise [sink] max_open_files",
                    self.opts.max_open_files
                );
            }
            for _ in 0..close {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, f)| f.last_write)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.close_file(&k).await?;
                    self.limit.closed_early(k);
                }
            }
            let f = self.open_file(path)?;
            self.open.insert(path.to_string(), f);
        }
        self.writes += 1;
        let table = self.layout.table.clone();
        let f = self.open.get_mut(path).expect("opened above");
        f.writer
            .write(rows)
            .await
            .map_err(|e| parquet_error(&table, e))?;
        f.file.rows += rows.num_rows() as u64;
        f.last_write = self.writes;
        let size = f.writer.bytes_written() + f.writer.in_progress_size();
        let roll = size as u64 >= self.opts.target_file_size
            || self.opts.rollover.is_some_and(|r| f.opened.elapsed() >= r);
        if roll {
            self.close_file(path).await?;
        }
        Ok(())
    }
}

fn parquet_error(table: &str, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            storage_error(&format!("writing a file of table {table}"), inner)
        }
        other => Error::internal(format!("table {table}: writing Parquet: {other}")),
    }
}

#[async_trait::async_trait]
impl TableWriter for HiveWriter {
    async fn write(&mut self, batch: ChangeBatch) -> Result<()> {
        let rows = batch.after_images()?;
        if rows.num_rows() == 0 {
            return Ok(());
        }
        if rows.schema().fields() != self.schema.schema.fields() {
            return Err(Error::internal(format!(
                "table {}: a batch does not match the table's schema",
                self.layout.table
            )));
        }
        for group in self.partitioner.split(&rows)? {
            if let Some(end) = group.end {
                let e = self
                    .pending_partitions
                    .entry(group.path.clone())
                    .or_insert(end);
                *e = (*e).max(end);
                if end.saturating_add(self.opts.commit_delay_micros) <= self.watermark {
                    metrics::counter!("lakeshore_hive_late_rows_total", "table" => self.layout.table.clone())
                        .increment(group.rows.num_rows() as u64);
                }
            }
            self.write_group(&group.path, &group.rows).await?;
            self.rows += group.rows.num_rows() as u64;
        }
        Ok(())
    }

    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit> {
        self.close_all().await?;
        self.limit.checkpoint();
        let delay = self.opts.commit_delay_micros;
        let watermark = self.watermark;
        let complete: Vec<String> = self
            .pending_partitions
            .iter()
            .filter(|(_, end)| end.saturating_add(delay) <= watermark)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &complete {
            self.pending_partitions.remove(p);
        }
        let pending = HivePending {
            files: std::mem::take(&mut self.closed),
            complete,
            open: self.pending_partitions.clone(),
        };
        let empty = pending.files.is_empty() && pending.complete.is_empty();
        let payload = serde_json::to_value(&pending).map_err(|e| Error::internal(e.to_string()))?;
        Ok(PendingCommit {
            table: self.layout.table.clone(),
            checkpoint_id,
            added_rows: std::mem::take(&mut self.rows),
            payload,
            empty,
        })
    }

    fn watermark(&mut self, micros: i64) {
        self.watermark = self.watermark.max(micros);
    }

    async fn evolve(&mut self, schema: &TableSchema) -> Result<()> {
        // Columns may be added (later files have them; readers merge by name) or dropped
        // (later files lack them); a column that changes type would make files disagree.
        for new in schema.schema.fields() {
            if let Ok(old) = self.schema.schema.field_with_name(new.name())
                && old.data_type() != new.data_type()
            {
                return Err(Error::unsupported(format!(
                    "table {}: column `{}` changed type from {} to {}; the Hive sink cannot change a column's type (files of both types would disagree); use a new table",
                    self.layout.table,
                    new.name(),
                    old.data_type(),
                    new.data_type()
                )));
            }
        }
        self.close_all().await?;
        self.partitioner = Partitioner::new(&self.layout.table, &self.exprs, &schema.schema)?;
        self.schema = schema.clone();
        Ok(())
    }
}
