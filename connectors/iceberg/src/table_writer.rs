//! The two table writers: [`AppendWriter`] (data files only) and [`UpsertWriter`]
//! (data files plus position deletes, never equality deletes).
//!
//! Upsert bookkeeping per open checkpoint:
//! - `index`: every key touched in this checkpoint → where its live row is (or that it is
//!   deleted), so a change to a row written in this checkpoint becomes a position delete
//!   into our own new file;
//! - `lookup`: keys whose *committed* row must go; at `prepare` they are looked up over
//!   the committed table (see `lookup`) and become position deletes into older files.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{BooleanArray, RecordBatch};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, SchemaRef as ArrowSchemaRef};
use arrow_select::filter::filter_record_batch;
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::spec::DataContentType;
use iceberg::spec::{
    DataFile, DataFileBuilder, FormatVersion, Literal, Struct, Type,
    deserialize_data_file_from_json, serialize_data_file_to_json,
};
use iceberg::table::Table;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use lakeshore_api::{ChangeBatch, Op, PendingCommit, Result, TableWriter};
use serde::{Deserialize, Serialize};

use crate::catalog::CatalogHandle;
use crate::commit::RowDelta;
use crate::error::{ice, internal, io};
use crate::lookup::{Key, KeyQuery, find_live_rows, open_parquet};
use crate::position_delete::{PartitionDeletes, write_position_deletes};
use crate::schema::conform;
use crate::writer::{FileInfo, FileSettings, PartitionedWriter, RowLocation};

/// What a table writer needs to know about its table.
pub struct TableContext {
    /// Catalog identifier.
    pub ident: TableIdent,
    /// File settings (schema, spec, storage, Parquet properties).
    pub files: FileSettings,
    /// The table's Arrow schema with field ids.
    pub arrow_schema: ArrowSchemaRef,
    /// Primary-key columns (empty for append-only).
    pub key: Vec<String>,
}

/// A serialised file of a pending commit. The partition is stored separately in the
/// spec's single-value JSON form: iceberg-rust's `DataFile` JSON turns `date` partition
/// values into longs on the way back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileEntry {
    spec_id: i32,
    file: serde_json::Value,
    partition: serde_json::Value,
}

/// `f` with its partition replaced (the rest copied field by field).
fn with_partition(f: DataFile, partition: Struct, spec_id: i32) -> Result<DataFile> {
    let mut b = DataFileBuilder::default();
    b.content(f.content_type())
        .file_path(f.file_path().to_string())
        .file_format(f.file_format())
        .partition(partition)
        .record_count(f.record_count())
        .file_size_in_bytes(f.file_size_in_bytes())
        .column_sizes(f.column_sizes().clone())
        .value_counts(f.value_counts().clone())
        .null_value_counts(f.null_value_counts().clone())
        .nan_value_counts(f.nan_value_counts().clone())
        .lower_bounds(f.lower_bounds().clone())
        .upper_bounds(f.upper_bounds().clone())
        .key_metadata(f.key_metadata().map(<[u8]>::to_vec))
        .split_offsets(f.split_offsets().map(<[i64]>::to_vec))
        .equality_ids(f.equality_ids())
        .first_row_id(f.first_row_id())
        .partition_spec_id(spec_id)
        .referenced_data_file(f.referenced_data_file())
        .content_offset(f.content_offset())
        .content_size_in_bytes(f.content_size_in_bytes());
    if let Some(order) = f.sort_order_id() {
        b.sort_order_id(order);
    }
    b.build().map_err(|e| internal(e.to_string()))
}

/// The payload of a [`PendingCommit`] of this sink.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Payload {
    data: Vec<FileEntry>,
    deletes: Vec<FileEntry>,
    referenced: Vec<String>,
    lookup_base: Option<i64>,
}

fn encode(table: &Table, files: &[(DataFile, i32)]) -> Result<Vec<FileEntry>> {
    let md = table.metadata();
    files
        .iter()
        .map(|(f, spec_id)| {
            let spec = md
                .partition_spec_by_id(*spec_id)
                .ok_or_else(|| internal(format!("unknown partition spec {spec_id}")))?;
            let ptype = spec.partition_type(md.current_schema()).map_err(ice)?;
            let json =
                serialize_data_file_to_json(f.clone(), &ptype, FormatVersion::V2).map_err(ice)?;
            let partition = Literal::Struct(f.partition().clone())
                .try_into_json(&Type::Struct(ptype))
                .map_err(ice)?;
            Ok(FileEntry {
                spec_id: *spec_id,
                file: serde_json::from_str(&json).map_err(|e| internal(e.to_string()))?,
                partition,
            })
        })
        .collect()
}

fn decode(table: &Table, entries: &[FileEntry]) -> Result<Vec<(DataFile, i32)>> {
    let md = table.metadata();
    entries
        .iter()
        .map(|e| {
            let spec = md
                .partition_spec_by_id(e.spec_id)
                .ok_or_else(|| internal(format!("unknown partition spec {}", e.spec_id)))?;
            let ptype = spec.partition_type(md.current_schema()).map_err(ice)?;
            let f = deserialize_data_file_from_json(
                &e.file.to_string(),
                e.spec_id,
                &ptype,
                md.current_schema(),
            )
            .map_err(ice)?;
            let partition = match Literal::try_from_json(e.partition.clone(), &Type::Struct(ptype))
                .map_err(ice)?
            {
                Some(Literal::Struct(s)) => s,
                _ => {
                    return Err(internal(format!(
                        "pending file {} has no partition",
                        f.file_path()
                    )));
                }
            };
            Ok((with_partition(f, partition, e.spec_id)?, e.spec_id))
        })
        .collect()
}

/// Turn a pending commit back into a row delta against `table`.
pub fn delta_from_pending(table: &Table, pending: &PendingCommit) -> Result<RowDelta> {
    let p: Payload = serde_json::from_value(pending.payload.clone()).map_err(|e| {
        internal(format!(
            "unreadable pending commit for {}: {e}",
            pending.table
        ))
    })?;
    Ok(RowDelta {
        data_files: decode(table, &p.data)?,
        delete_files: decode(table, &p.deletes)?,
        referenced_files: p.referenced,
        lookup_base: p.lookup_base,
    })
}

fn pending(
    table: &Table,
    name: &str,
    checkpoint_id: u64,
    added_rows: u64,
    delta: &RowDelta,
) -> Result<PendingCommit> {
    let payload = Payload {
        data: encode(table, &delta.data_files)?,
        deletes: encode(table, &delta.delete_files)?,
        referenced: delta.referenced_files.clone(),
        lookup_base: delta.lookup_base,
    };
    Ok(PendingCommit {
        table: name.to_string(),
        checkpoint_id,
        added_rows,
        payload: serde_json::to_value(payload).map_err(|e| internal(e.to_string()))?,
    })
}

/// Rows of `batch` that carry an after-image (inserts and update-afters).
fn after_images(batch: &ChangeBatch) -> Result<RecordBatch> {
    if batch.is_insert_only() {
        return Ok(batch.rows.clone());
    }
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| Some(!batch.op(i).removes()))
        .collect();
    filter_record_batch(&batch.rows, &keep).map_err(|e| internal(e.to_string()))
}

/// Append mode: every insert and update-after becomes a data row; removals are ignored.
pub struct AppendWriter {
    ctx: TableContext,
    table: Table,
    name: String,
    data: PartitionedWriter,
    rows: u64,
}

impl AppendWriter {
    /// A writer for the table.
    pub fn new(ctx: TableContext, table: Table, name: String) -> Result<Self> {
        let data = PartitionedWriter::new(ctx.files.clone())?;
        Ok(AppendWriter {
            ctx,
            table,
            name,
            data,
            rows: 0,
        })
    }
}

#[async_trait::async_trait]
impl TableWriter for AppendWriter {
    async fn write(&mut self, batch: ChangeBatch) -> Result<()> {
        let rows = conform(&self.name, &self.ctx.arrow_schema, &after_images(&batch)?)?;
        self.rows += rows.num_rows() as u64;
        self.data.write(&rows, None).await
    }

    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit> {
        let (files, _) = self.data.close().await?;
        let spec_id = self.ctx.files.spec.spec_id();
        let delta = RowDelta {
            data_files: files.into_iter().map(|f| (f, spec_id)).collect(),
            ..Default::default()
        };
        let rows = std::mem::take(&mut self.rows);
        pending(
            &self.table,
            self.ctx.ident.name(),
            checkpoint_id,
            rows,
            &delta,
        )
    }
}

/// State of a key within the open checkpoint.
#[derive(Debug, Clone, Copy)]
enum KeyState {
    Live(RowLocation),
    Deleted,
}

/// Upsert mode: a live row per key; changes become position deletes.
pub struct UpsertWriter {
    ctx: TableContext,
    catalog: Arc<CatalogHandle>,
    table: Table,
    name: String,
    data: PartitionedWriter,
    converter: RowConverter,
    key_indices: Vec<usize>,
    index: HashMap<Key, KeyState>,
    own_deletes: Vec<RowLocation>,
    lookup: HashSet<Key>,
    rows: u64,
    locations: Vec<RowLocation>,
}

impl UpsertWriter {
    /// A writer for the table; `ctx.key` must not be empty.
    pub fn new(
        ctx: TableContext,
        catalog: Arc<CatalogHandle>,
        table: Table,
        name: String,
    ) -> Result<Self> {
        let mut key_indices = Vec::new();
        let mut fields = Vec::new();
        for k in &ctx.key {
            let i = ctx
                .arrow_schema
                .index_of(k)
                .map_err(|_| internal(format!("table {name}: key column {k} missing")))?;
            key_indices.push(i);
            fields.push(SortField::new(
                ctx.arrow_schema.field(i).data_type().clone(),
            ));
        }
        let converter = RowConverter::new(fields).map_err(|e| internal(e.to_string()))?;
        let data = PartitionedWriter::new(ctx.files.clone())?;
        Ok(UpsertWriter {
            ctx,
            catalog,
            table,
            name,
            data,
            converter,
            key_indices,
            index: HashMap::new(),
            own_deletes: Vec::new(),
            lookup: HashSet::new(),
            rows: 0,
            locations: Vec::new(),
        })
    }

    fn int_keys(&self) -> Option<Vec<i64>> {
        if self.key_indices.len() != 1
            || self.ctx.arrow_schema.field(self.key_indices[0]).data_type() != &DataType::Int64
        {
            return None;
        }
        let parser = self.converter.parser();
        let rows: Vec<_> = self.lookup.iter().map(|k| parser.parse(k)).collect();
        let arrays = self.converter.convert_rows(rows).ok()?;
        let mut keys: Vec<i64> = arrays[0].as_primitive::<Int64Type>().values().to_vec();
        keys.sort_unstable();
        Some(keys)
    }

    async fn committed_deletes(&mut self) -> Result<(Vec<crate::lookup::LiveRow>, Option<i64>)> {
        if self.lookup.is_empty() {
            return Ok((Vec::new(), None));
        }
        self.table = self
            .catalog
            .catalog()
            .load_table(&self.ctx.ident)
            .await
            .map_err(ice)?;
        let base = self.table.metadata().current_snapshot_id();
        let first_key_field = self
            .ctx
            .files
            .schema
            .field_id_by_name(&self.ctx.key[0])
            .ok_or_else(|| internal("key field id"))?;
        let query = KeyQuery {
            keys: &self.lookup,
            converter: &self.converter,
            columns: &self.ctx.key,
            first_key_field,
            int_keys: self.int_keys(),
        };
        let live = find_live_rows(&self.table, &query).await?;
        Ok((live, base))
    }
}

/// Rewrite a data file of the open checkpoint when at least this fraction of its rows
/// died within the checkpoint; below it, position deletes are cheaper than the rewrite.
const REWRITE_DEAD_FRACTION: f64 = 0.05;

impl UpsertWriter {
    /// Rows that were written and removed within this checkpoint need never be visible:
    /// files of the open checkpoint with enough of them are rewritten without them (they
    /// are not committed yet, so nobody else can see or reference them), and their
    /// position deletes are dropped. This keeps hot keys that change many times per
    /// checkpoint from bloating the table and its read cost.
    async fn drop_dead_rows(
        &mut self,
        files: Vec<DataFile>,
        infos: &[FileInfo],
    ) -> Result<Vec<DataFile>> {
        if self.own_deletes.is_empty() {
            return Ok(files);
        }
        let mut dead: HashMap<&str, Vec<u64>> = HashMap::new();
        for loc in &self.own_deletes {
            dead.entry(infos[loc.file as usize].path.as_str())
                .or_default()
                .push(loc.pos);
        }
        let mut rewritten: HashSet<String> = HashSet::new();
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let Some(positions) = dead.get_mut(f.file_path()) else {
                out.push(f);
                continue;
            };
            if (positions.len() as f64) < REWRITE_DEAD_FRACTION * f.record_count() as f64 {
                out.push(f);
                continue;
            }
            positions.sort_unstable();
            positions.dedup();
            let partition = f.partition().clone();
            if let Some(new) = rewrite_without(
                &self.ctx.files,
                &self.ctx.arrow_schema,
                &f,
                positions,
                partition,
            )
            .await?
            {
                out.push(new);
            }
            self.ctx
                .files
                .file_io
                .delete(f.file_path())
                .await
                .map_err(ice)?;
            rewritten.insert(f.file_path().to_string());
        }
        self.own_deletes
            .retain(|loc| !rewritten.contains(&infos[loc.file as usize].path));
        Ok(out)
    }
}

/// A copy of `f` without the rows at `dead` (sorted); `None` when no row is left.
async fn rewrite_without(
    files: &FileSettings,
    arrow_schema: &ArrowSchemaRef,
    f: &DataFile,
    dead: &[u64],
    partition: Struct,
) -> Result<Option<DataFile>> {
    let path = f.file_path();
    let mut stream = open_parquet(&files.file_io, path)
        .await?
        .build()
        .map_err(|e| io(path, e))?;
    let (dir, _) = path.rsplit_once('/').unwrap_or(("", path));
    let new_path = format!("{dir}/{}-c.parquet", uuid::Uuid::new_v4());
    let output = files.file_io.new_output(&new_path).map_err(ice)?;
    let mut writer = ParquetWriterBuilder::new(files.props.clone(), files.schema.clone())
        .build(output)
        .await
        .map_err(ice)?;
    let mut offset = 0u64;
    let mut next_dead = dead.iter().peekable();
    while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
        let n = batch.num_rows() as u64;
        let keep: BooleanArray = (offset..offset + n)
            .map(|pos| {
                let is_dead = next_dead.peek().is_some_and(|d| **d == pos);
                if is_dead {
                    next_dead.next();
                }
                Some(!is_dead)
            })
            .collect();
        offset += n;
        let kept = filter_record_batch(&batch, &keep).map_err(|e| internal(e.to_string()))?;
        let kept = RecordBatch::try_new(arrow_schema.clone(), kept.columns().to_vec())
            .map_err(|e| internal(e.to_string()))?;
        writer.write(&kept).await.map_err(ice)?;
    }
    let Some(mut builder) = writer.close().await.map_err(ice)?.pop() else {
        return Ok(None);
    };
    builder
        .content(DataContentType::Data)
        .partition(partition)
        .partition_spec_id(files.spec.spec_id());
    builder
        .build()
        .map(Some)
        .map_err(|e| internal(e.to_string()))
}

#[async_trait::async_trait]
impl TableWriter for UpsertWriter {
    async fn write(&mut self, batch: ChangeBatch) -> Result<()> {
        let rows = conform(&self.name, &self.ctx.arrow_schema, &batch.rows)?;
        let key_columns: Vec<_> = self
            .key_indices
            .iter()
            .map(|i| rows.column(*i).clone())
            .collect();
        let keys = self
            .converter
            .convert_columns(&key_columns)
            .map_err(|e| internal(e.to_string()))?;
        let written = if batch.is_insert_only() {
            rows
        } else {
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| Some(!batch.op(i).removes()))
                .collect();
            filter_record_batch(&rows, &keep).map_err(|e| internal(e.to_string()))?
        };
        self.rows += written.num_rows() as u64;
        self.locations.clear();
        self.data.write(&written, Some(&mut self.locations)).await?;
        let mut next_location = self.locations.iter();
        for (i, key) in keys.iter().enumerate() {
            let op = batch.op(i);
            let state = if op.removes() {
                KeyState::Deleted
            } else {
                let loc = next_location
                    .next()
                    .ok_or_else(|| internal("fewer written rows than after-images"))?;
                KeyState::Live(*loc)
            };
            match self.index.entry(Key::from_slice(key.as_ref())) {
                Entry::Occupied(mut e) => {
                    if let KeyState::Live(loc) = e.insert(state) {
                        self.own_deletes.push(loc);
                    }
                }
                Entry::Vacant(e) => {
                    // A key first seen as an insert is new by the source's contract;
                    // every other first sight may replace a committed row.
                    if op != Op::Insert {
                        self.lookup.insert(e.key().clone());
                    }
                    e.insert(state);
                }
            }
        }
        Ok(())
    }

    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit> {
        let (files, infos) = self.data.close().await?;
        let files = self.drop_dead_rows(files, &infos).await?;
        let (live, lookup_base) = self.committed_deletes().await?;
        let spec_id = self.ctx.files.spec.spec_id();
        let mut groups: HashMap<(i32, Struct), PartitionDeletes> = HashMap::new();
        let mut add = |spec: i32, partition: &Struct, path: Arc<str>, pos: i64| {
            let entry = groups.entry((spec, partition.clone())).or_default();
            entry.entry(path).or_default().push(pos);
        };
        let paths: Vec<Arc<str>> = infos.iter().map(|f| Arc::from(f.path.as_str())).collect();
        for loc in self.own_deletes.drain(..) {
            let info = &infos[loc.file as usize];
            add(
                spec_id,
                &info.partition,
                paths[loc.file as usize].clone(),
                loc.pos as i64,
            );
        }
        let mut referenced: Vec<String> = live.iter().map(|r| r.path.to_string()).collect();
        referenced.sort();
        referenced.dedup();
        for r in live {
            add(r.spec_id, &r.partition, r.path, r.pos);
        }
        let mut delete_files = Vec::new();
        for ((spec, partition), deletes) in groups {
            let spec_ref = self
                .table
                .metadata()
                .partition_spec_by_id(spec)
                .cloned()
                .ok_or_else(|| internal(format!("unknown partition spec {spec}")))?;
            let f = write_position_deletes(
                &self.ctx.files.file_io,
                &self.ctx.files.locations,
                &self.ctx.files.schema,
                &spec_ref,
                partition,
                deletes,
                &self.ctx.files.props,
            )
            .await?;
            delete_files.push((f, spec));
        }
        self.index.clear();
        self.lookup.clear();
        let delta = RowDelta {
            data_files: files.into_iter().map(|f| (f, spec_id)).collect(),
            delete_files,
            referenced_files: referenced,
            lookup_base,
        };
        let rows = std::mem::take(&mut self.rows);
        pending(
            &self.table,
            self.ctx.ident.name(),
            checkpoint_id,
            rows,
            &delta,
        )
    }
}
