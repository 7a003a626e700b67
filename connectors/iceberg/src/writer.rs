//! Partitioned, rolling Parquet data-file writer that knows where every row lands.
//!
//! A layer over iceberg-rust's `ParquetWriter` (which computes the file statistics): rows
//! are grouped by partition with iceberg's `PartitionValueCalculator`, each partition has
//! one open file, a file is closed when it reaches `target_file_size` (or, past the
//! open-file limit, when it is the least recently written), and every written
//! row's (file, position) can be reported back — the upsert writer needs that to express
//! later changes of the row as position deletes.
//!
//! Each open file encodes in its own task ([`Encoder`]): the table's writer task hands it
//! batches through a short queue and goes on with the next batch (the upsert writer's key
//! index), so Parquet encoding and compression run on another core. A row's position is
//! known when it is handed over, so nothing waits for the encoder until the file closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::{Array, ArrayRef, RecordBatch, StructArray, UInt32Array};
use arrow_row::{OwnedRow, RowConverter, SortField};
use arrow_select::take::take_record_batch;
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, Literal, PartitionKey, PartitionSpecRef, SchemaRef,
    Struct, StructType,
};
use iceberg::writer::CurrentFileStatus;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::{
    FileWriter, FileWriterBuilder, ParquetWriter, ParquetWriterBuilder,
};
use lakeshore_api::files::{LimitChange, OpenFilesLimit};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{ice, internal};
use lakeshore_api::Result;

/// Index of a file written in the open checkpoint (into [`FileSet`]).
pub type FileId = u32;

/// Where a written row is: file and zero-based row position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLocation {
    /// The file.
    pub file: FileId,
    /// Row position within the file.
    pub pos: u64,
}

/// Settings shared by every file a table writer makes.
#[derive(Clone)]
pub struct FileSettings {
    /// Table schema (with field ids).
    pub schema: SchemaRef,
    /// Default partition spec.
    pub spec: PartitionSpecRef,
    /// Storage of the table.
    pub file_io: FileIO,
    /// Where data files go.
    pub locations: DefaultLocationGenerator,
    /// Parquet settings.
    pub props: WriterProperties,
    /// Roll to a new file past this many bytes.
    pub target_file_size: usize,
    /// At most this many files open at once (see [`OpenFilesLimit`]): each holds a row
    /// group and its columns' encoders, so memory is bounded by this, not by how many
    /// partitions the data spans.
    pub max_open_files: usize,
    /// The table's name, for log lines.
    pub table: String,
}

/// A data file of the open checkpoint: its path and partition, known before it is closed.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Full path.
    pub path: String,
    /// Partition value.
    pub partition: Struct,
}

/// Batches an open file's encoder may hold queued: bounds the memory in flight per file.
const ENCODER_QUEUE: usize = 2;

/// One open data file's Parquet writer, run in its own task; dropped unclosed (the
/// writer failed), the task stops.
struct Encoder {
    tx: mpsc::Sender<RecordBatch>,
    /// Rows handed over so far: the position of the next row.
    rows: u64,
    /// Encoded size as the task last saw it (behind by the queued batches).
    size: Arc<AtomicUsize>,
    task: AbortOnDropHandle<Result<Vec<DataFileBuilder>>>,
}

impl Encoder {
    fn start(mut writer: ParquetWriter) -> Self {
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(ENCODER_QUEUE);
        let size = Arc::new(AtomicUsize::new(0));
        let seen = size.clone();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                writer.write(&batch).await.map_err(ice)?;
                seen.store(writer.current_written_size(), Ordering::Relaxed);
            }
            writer.close().await.map_err(ice)
        }));
        Encoder {
            tx,
            rows: 0,
            size,
            task,
        }
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows() as u64;
        if self.tx.send(batch).await.is_err() {
            // The task stopped on an error: it says which.
            return match (&mut self.task).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(internal("a data file's encoder stopped early")),
                Err(e) => Err(internal(format!("a data file's encoder failed: {e}"))),
            };
        }
        self.rows += n;
        Ok(())
    }

    /// The encoded size as the task last reported it: behind by the batches still queued
    /// (at most [`ENCODER_QUEUE`] + 1), so a file rolls over within a few batches past
    /// `target_file_size`.
    fn written_size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    async fn close(self) -> Result<Vec<DataFileBuilder>> {
        let Encoder { tx, task, .. } = self;
        // Dropping the sender ends the task's queue: it encodes what is left and closes.
        drop(tx);
        task.await
            .map_err(|e| internal(format!("a data file's encoder failed: {e}")))?
    }
}

struct OpenFile {
    id: FileId,
    writer: Encoder,
    /// The writer's write count when this file was last written.
    last_write: u64,
}

/// Writes one table's rows into partitioned, rolling data files.
pub struct PartitionedWriter {
    settings: FileSettings,
    calculator: Option<PartitionValueCalculator>,
    partition_type: StructType,
    converter: Option<RowConverter>,
    open: HashMap<OwnedRow, OpenFile>,
    unpartitioned: Option<OpenFile>,
    /// Every file of the checkpoint, by [`FileId`].
    files: Vec<FileInfo>,
    closed: Vec<DataFile>,
    run_id: uuid::Uuid,
    counter: u64,
    writes: u64,
    limit: OpenFilesLimit<OwnedRow>,
    /// Said once: a file closed early; the limit at `max_open_files`.
    said_closed: bool,
    said_at_max: bool,
}

impl PartitionedWriter {
    /// A writer for `settings`; file names start with a fresh UUID so no two runs collide.
    pub fn new(settings: FileSettings) -> Result<Self> {
        let (partition_type, calculator, converter) = Self::partitioning(&settings)?;
        let limit = OpenFilesLimit::new(settings.max_open_files);
        Ok(PartitionedWriter {
            settings,
            calculator,
            partition_type,
            converter,
            open: HashMap::new(),
            unpartitioned: None,
            files: Vec::new(),
            closed: Vec::new(),
            run_id: uuid::Uuid::new_v4(),
            counter: 0,
            writes: 0,
            limit,
            said_closed: false,
            said_at_max: false,
        })
    }

    /// Switch to a new table schema: open files are finished with the old one (readers
    /// resolve columns by field id) and stay part of the open checkpoint, with their
    /// row positions.
    pub async fn change_schema(&mut self, settings: FileSettings) -> Result<()> {
        self.finish_open().await?;
        let (partition_type, calculator, converter) = Self::partitioning(&settings)?;
        self.settings = settings;
        self.partition_type = partition_type;
        self.calculator = calculator;
        self.converter = converter;
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn partitioning(
        settings: &FileSettings,
    ) -> Result<(
        StructType,
        Option<PartitionValueCalculator>,
        Option<RowConverter>,
    )> {
        let partition_type = settings
            .spec
            .partition_type(&settings.schema)
            .map_err(ice)?;
        let (calculator, converter) = if settings.spec.is_unpartitioned() {
            (None, None)
        } else {
            let calc =
                PartitionValueCalculator::try_new(&settings.spec, &settings.schema).map_err(ice)?;
            let arrow_schema::DataType::Struct(fields) = calc.partition_arrow_type() else {
                return Err(internal("partition values are not a struct"));
            };
            let sort_fields = fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            let conv = RowConverter::new(sort_fields).map_err(|e| internal(e.to_string()))?;
            (Some(calc), Some(conv))
        };
        Ok((partition_type, calculator, converter))
    }

    async fn new_file(&mut self, partition: Option<PartitionKey>) -> Result<OpenFile> {
        self.counter += 1;
        let name = format!("{}-{:05}.parquet", self.run_id, self.counter);
        let path = self
            .settings
            .locations
            .generate_location(partition.as_ref(), &name);
        let output = self.settings.file_io.new_output(&path).map_err(ice)?;
        let builder =
            ParquetWriterBuilder::new(self.settings.props.clone(), self.settings.schema.clone());
        let writer = Encoder::start(builder.build(output).await.map_err(ice)?);
        let id = self.files.len() as FileId;
        self.files.push(FileInfo {
            path,
            partition: partition
                .map(|p| p.data().clone())
                .unwrap_or_else(Struct::empty),
        });
        Ok(OpenFile {
            id,
            writer,
            last_write: 0,
        })
    }

    /// Close the least recently written files the open-file limit asks for before a file
    /// for `partition` opens.
    async fn make_room(&mut self, partition: &OwnedRow) -> Result<()> {
        let (close, change) = self.limit.before_open(partition, self.open.len());
        let max = self.settings.max_open_files;
        match change {
            LimitChange::Same => {}
            LimitChange::Raised(limit) => tracing::info!(
                table = %self.settings.table,
                "a partition closed early is written again: up to {limit} files open \
                 (max_open_files = {max})"
            ),
            LimitChange::AtMax if !self.said_at_max => {
                self.said_at_max = true;
                tracing::warn!(
                    table = %self.settings.table,
                    "more partitions are written at once than max_open_files = {max}, so data \
                     files close after a few rows each; raise [sink] max_open_files to the \
                     number of partitions written at once (each open file holds a row group)"
                );
            }
            LimitChange::AtMax => {}
        }
        for _ in 0..close {
            let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.last_write)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let file = self.open.remove(&oldest).expect("found above");
            if !self.said_closed {
                self.said_closed = true;
                tracing::info!(
                    table = %self.settings.table,
                    file = %self.files[file.id as usize].path,
                    "{} files are open: the least recently written one closes",
                    self.limit.limit()
                );
            }
            self.limit.closed_early(oldest);
            self.finish(file).await?;
        }
        Ok(())
    }

    async fn finish_open(&mut self) -> Result<()> {
        let open: Vec<OpenFile> = self
            .open
            .drain()
            .map(|(_, f)| f)
            .chain(self.unpartitioned.take())
            .collect();
        for file in open {
            self.finish(file).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, file: OpenFile) -> Result<()> {
        let info = &self.files[file.id as usize];
        for mut builder in file.writer.close().await? {
            builder
                .content(DataContentType::Data)
                .partition(info.partition.clone())
                .partition_spec_id(self.settings.spec.spec_id());
            self.closed
                .push(builder.build().map_err(|e| internal(e.to_string()))?);
        }
        Ok(())
    }

    /// Write `batch`. With `locations`, append the (file, position) of every row, in row
    /// order.
    pub async fn write(
        &mut self,
        batch: &RecordBatch,
        mut locations: Option<&mut Vec<RowLocation>>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (Some(calc), Some(conv)) = (&self.calculator, &self.converter) else {
            let file = match self.unpartitioned.take() {
                Some(f) => f,
                None => self.new_file(None).await?,
            };
            return self.write_group(file, None, batch, locations).await;
        };
        let values = calc.calculate(batch).map_err(ice)?;
        let values_struct = values
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| internal("partition values are not a struct array"))?;
        let rows = conv
            .convert_columns(values_struct.columns())
            .map_err(|e| internal(e.to_string()))?;
        // Group row indices by partition, keeping first-seen order.
        let mut groups: Vec<(OwnedRow, Vec<u32>)> = Vec::new();
        let mut group_of: HashMap<arrow_row::Row<'_>, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let g = *group_of.entry(row).or_insert_with(|| {
                groups.push((row.owned(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i as u32);
        }
        if let Some(locs) = locations.as_deref_mut() {
            locs.resize(
                locs.len() + batch.num_rows(),
                RowLocation { file: 0, pos: 0 },
            );
        }
        let base = locations.as_deref().map(|l| l.len() - batch.num_rows());
        for (key, indices) in groups {
            let first = indices[0] as usize;
            let part = if indices.len() == batch.num_rows() {
                batch.clone()
            } else {
                let idx = UInt32Array::from(indices.clone());
                take_record_batch(batch, &idx).map_err(|e| internal(e.to_string()))?
            };
            let file = match self.open.remove(&key) {
                Some(f) => f,
                None => {
                    self.make_room(&key).await?;
                    let data = self.partition_struct(&values, first)?;
                    let pk = PartitionKey::new(
                        self.settings.spec.as_ref().clone(),
                        self.settings.schema.clone(),
                        data,
                    );
                    self.new_file(Some(pk)).await?
                }
            };
            let mut group_locs = locations
                .as_ref()
                .map(|_| Vec::with_capacity(indices.len()));
            self.write_group(file, Some(key), &part, group_locs.as_mut())
                .await?;
            if let (Some(locs), Some(group_locs), Some(base)) =
                (locations.as_deref_mut(), group_locs, base)
            {
                for (i, loc) in indices.iter().zip(group_locs) {
                    locs[base + *i as usize] = loc;
                }
            }
        }
        Ok(())
    }

    fn partition_struct(&self, values: &ArrayRef, row: usize) -> Result<Struct> {
        let one = values.slice(row, 1);
        match arrow_struct_to_literal(&one, &self.partition_type)
            .map_err(ice)?
            .pop()
            .flatten()
        {
            Some(Literal::Struct(s)) => Ok(s),
            _ => Err(internal("partition value is not a struct")),
        }
    }

    async fn write_group(
        &mut self,
        mut file: OpenFile,
        key: Option<OwnedRow>,
        batch: &RecordBatch,
        locations: Option<&mut Vec<RowLocation>>,
    ) -> Result<()> {
        let start = file.writer.rows;
        file.writer.write(batch.clone()).await?;
        self.writes += 1;
        file.last_write = self.writes;
        if let Some(locs) = locations {
            let id = file.id;
            locs.extend((0..batch.num_rows() as u64).map(|i| RowLocation {
                file: id,
                pos: start + i,
            }));
        }
        if file.writer.written_size() >= self.settings.target_file_size {
            self.finish(file).await?;
        } else {
            match key {
                Some(k) => {
                    self.open.insert(k, file);
                }
                None => self.unpartitioned = Some(file),
            }
        }
        Ok(())
    }

    /// Close every open file; returns the checkpoint's data files and the per-[`FileId`]
    /// infos, and starts a fresh checkpoint.
    pub async fn close(&mut self) -> Result<(Vec<DataFile>, Vec<FileInfo>)> {
        self.finish_open().await?;
        self.limit.checkpoint();
        Ok((
            std::mem::take(&mut self.closed),
            std::mem::take(&mut self.files),
        ))
    }
}
