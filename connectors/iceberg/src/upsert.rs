//! Upsert mode: one live row per primary key; every update and delete becomes a
//! **position delete**, never an equality delete.
//!
//! Bookkeeping per open checkpoint:
//! - `index`: every key touched in this checkpoint → where its live row is (or that it is
//!   deleted), so a change to a row written in this checkpoint becomes a position delete
//!   into our own new file (or the row is dropped before commit, see `drop_dead_rows`);
//! - `lookup`: keys whose *committed* row must go; at `prepare` they are looked up over
//!   the committed table ([`committed_deletes`]) and become position deletes into older
//!   files. The keys are also written to a small keys file, so that the commit can look
//!   them up again if a concurrent commit removed a file those deletes point to.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{DataType, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use arrow_select::filter::filter_record_batch;
use futures::TryStreamExt;
use iceberg::io::FileWrite;
use iceberg::spec::{DataContentType, DataFile, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use lakeshore_api::{
    ChangeBatch, Error, Op, PendingCommit, Preparing, Result, TableSchema, TableWriter,
};
use parquet::arrow::ArrowWriter;

use crate::commit::RowDelta;
use crate::error::{ice, internal, io};
use crate::lookup::{Key, KeyQuery, KeySet, find_live_rows, open_parquet};
use crate::position_delete::{PartitionDeletes, write_position_deletes};
use crate::schema::conform;
use crate::spill::{KeyState, Spill};
use crate::table_writer::OpenTable;
use crate::writer::{FileInfo, FileSettings, RowLocation};

/// Encodes a table's primary-key columns into comparable byte keys.
pub struct KeyCodec {
    converter: RowConverter,
    columns: Vec<String>,
    types: Vec<DataType>,
    schema: ArrowSchemaRef,
    first_field_id: i32,
}

impl KeyCodec {
    /// The codec for `key` columns of a table with `files.schema` / `arrow_schema`.
    pub fn new(
        files: &FileSettings,
        arrow_schema: &ArrowSchemaRef,
        key: &[String],
    ) -> Result<Self> {
        let mut fields = Vec::new();
        for k in key {
            let i = arrow_schema
                .index_of(k)
                .map_err(|_| internal(format!("key column {k} is not in the table")))?;
            fields.push(arrow_schema.field(i).clone());
        }
        let first = key.first().ok_or_else(|| internal("empty key"))?;
        let first_field_id = files
            .schema
            .field_id_by_name(first)
            .ok_or_else(|| internal(format!("key column {first} has no field id")))?;
        let sort_fields = fields
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(KeyCodec {
            converter: RowConverter::new(sort_fields).map_err(|e| internal(e.to_string()))?,
            columns: key.to_vec(),
            types: fields.iter().map(|f| f.data_type().clone()).collect(),
            schema: Arc::new(ArrowSchema::new(fields)),
            first_field_id,
        })
    }

    /// Encode the key columns of `rows`, found by name (the rows may be a source batch
    /// whose other columns do not fit the table, e.g. key-only before-images).
    pub fn encode(&self, table: &str, rows: &RecordBatch) -> Result<Rows> {
        let columns = self
            .columns
            .iter()
            .map(|name| {
                rows.column_by_name(name).cloned().ok_or_else(|| {
                    Error::unsupported(format!("table {table}: rows lack key column {name}"))
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.converter.convert_columns(&columns).map_err(|e| {
            Error::unsupported(format!(
                "table {table}: key columns do not match the lake table"
            ))
            .with_source(e)
        })
    }

    fn decode(&self, keys: &KeySet) -> Result<RecordBatch> {
        self.decode_all(keys.iter())
    }

    fn decode_all<'k>(&self, keys: impl Iterator<Item = &'k Key>) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let rows: Vec<_> = keys.map(|k| parser.parse(k)).collect();
        let arrays = self
            .converter
            .convert_rows(rows)
            .map_err(|e| internal(e.to_string()))?;
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| internal(e.to_string()))
    }

    /// `keys` (encoded by `old`) encoded by this codec, in the same order: after a key
    /// column's type was widened.
    fn reencode<'k>(
        &self,
        old: &KeyCodec,
        keys: impl Iterator<Item = &'k Key>,
    ) -> Result<Vec<Key>> {
        let batch = old.decode_all(keys)?;
        let rows = self
            .converter
            .convert_columns(&self.widened(batch.columns()))
            .map_err(|e| internal(format!("re-encoding widened keys: {e}")))?;
        Ok(rows.iter().map(|r| Key::from_slice(r.as_ref())).collect())
    }

    /// Key columns read or decoded with a narrower type (before a widening), widened to
    /// this codec's types.
    fn widened(&self, columns: &[ArrayRef]) -> Vec<ArrayRef> {
        columns
            .iter()
            .zip(&self.types)
            .map(|(c, t)| crate::schema::widen(c.clone(), t))
            .collect()
    }

    /// True when `other` encodes keys the same way.
    fn same_types(&self, other: &KeyCodec) -> bool {
        self.schema.fields() == other.schema.fields()
    }

    /// The lookup query for `keys`; single integer keys get min/max pruning.
    fn query(&self, keys: KeySet) -> Result<KeyQuery> {
        let int_keys =
            if self.columns.len() == 1 && self.schema.field(0).data_type() == &DataType::Int64 {
                let batch = self.decode(&keys)?;
                let mut v: Vec<i64> = batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec();
                v.sort_unstable();
                Some(v)
            } else {
                None
            };
        let int_set = int_keys.as_ref().map(|v| v.iter().copied().collect());
        let sort_fields = self.types.iter().cloned().map(SortField::new).collect();
        Ok(KeyQuery {
            keys,
            converter: RowConverter::new(sort_fields).map_err(|e| internal(e.to_string()))?,
            columns: self.columns.clone(),
            types: self.types.clone(),
            first_key_field: self.first_field_id,
            int_keys,
            int_set,
        })
    }

    /// The keys of `batch` (key columns, possibly of a narrower type), encoded.
    fn encode_keys(&self, path: &str, batch: &RecordBatch) -> Result<Vec<Key>> {
        let rows = self
            .converter
            .convert_columns(&self.widened(batch.columns()))
            .map_err(|e| io(path, e))?;
        Ok(rows.iter().map(|r| Key::from_slice(r.as_ref())).collect())
    }
}

/// A Parquet file of looked-up keys (their key columns), written chunk by chunk.
struct KeysWriter {
    path: String,
    parquet: ArrowWriter<Vec<u8>>,
    out: Box<dyn FileWrite>,
}

impl KeysWriter {
    async fn create(files: &FileSettings, path: String, codec: &KeyCodec) -> Result<Self> {
        let parquet = ArrowWriter::try_new(Vec::new(), codec.schema.clone(), None)
            .map_err(|e| io(&path, e))?;
        let out = files
            .file_io
            .new_output(&path)
            .map_err(ice)?
            .writer()
            .await
            .map_err(ice)?;
        Ok(KeysWriter { path, parquet, out })
    }

    async fn append(&mut self, batch: &RecordBatch) -> Result<()> {
        self.parquet.write(batch).map_err(|e| io(&self.path, e))?;
        self.parquet.flush().map_err(|e| io(&self.path, e))?;
        // The encoded row group goes out now; the Parquet writer only counts bytes, it
        // never reads back what it wrote.
        let bytes = std::mem::take(self.parquet.inner_mut());
        if !bytes.is_empty() {
            self.out.write(bytes.into()).await.map_err(ice)?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<String> {
        let rest = self.parquet.into_inner().map_err(|e| io(&self.path, e))?;
        self.out.write(rest.into()).await.map_err(ice)?;
        self.out.close().await.map_err(ice)?;
        Ok(self.path)
    }
}

/// Committed-row lookups of any number of keys, [`LOOKUP_CHUNK`] keys at a time (memory
/// stays bounded however many keys one checkpoint replaces). With `keys_at`, the keys of
/// every chunk that found rows are written to a keys file there, for a later re-lookup.
struct ChunkedLookup<'a> {
    table: &'a Table,
    files: &'a FileSettings,
    codec: &'a KeyCodec,
    keys_at: Option<String>,
    keys_out: Option<KeysWriter>,
    chunk: KeySet,
    found: LookupDeletes,
}

impl<'a> ChunkedLookup<'a> {
    fn new(
        table: &'a Table,
        files: &'a FileSettings,
        codec: &'a KeyCodec,
        keys_at: Option<String>,
    ) -> Self {
        ChunkedLookup {
            table,
            files,
            codec,
            keys_at,
            keys_out: None,
            chunk: KeySet::default(),
            found: LookupDeletes::default(),
        }
    }

    async fn add(&mut self, key: Key) -> Result<()> {
        self.chunk.insert(key);
        if self.chunk.len() >= LOOKUP_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Every key of `keys`; a set that fits one chunk is looked up as it is (the usual
    /// checkpoint: no copy of its keys).
    async fn add_all(&mut self, keys: KeySet) -> Result<()> {
        if self.chunk.is_empty() && keys.len() <= LOOKUP_CHUNK {
            self.chunk = keys;
            return self.flush().await;
        }
        for key in keys {
            self.add(key).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let (d, chunk) = committed_deletes(
            self.table,
            self.files,
            self.codec,
            std::mem::take(&mut self.chunk),
        )
        .await?;
        self.chunk = chunk;
        if !d.files.is_empty()
            && let Some(path) = &self.keys_at
        {
            if self.keys_out.is_none() {
                self.keys_out =
                    Some(KeysWriter::create(self.files, path.clone(), self.codec).await?);
            }
            if let Some(w) = &mut self.keys_out {
                w.append(&self.codec.decode(&self.chunk)?).await?;
            }
        }
        self.found.files.extend(d.files);
        self.found.referenced.extend(d.referenced);
        self.found.base = self.found.base.or(d.base);
        self.chunk.clear();
        Ok(())
    }

    /// The deletes of all keys, and the keys file if one was written.
    async fn finish(mut self) -> Result<(LookupDeletes, Option<String>)> {
        self.flush().await?;
        self.found.referenced.sort();
        self.found.referenced.dedup();
        let keys_file = match self.keys_out {
            Some(w) => Some(w.finish().await?),
            None => None,
        };
        Ok((self.found, keys_file))
    }
}

/// Position deletes for the committed rows of some keys.
#[derive(Default)]
pub struct LookupDeletes {
    /// The delete files, with their spec ids.
    pub files: Vec<(DataFile, i32)>,
    /// Committed data files they point into.
    pub referenced: Vec<String>,
    /// The snapshot the lookup read.
    pub base: Option<i64>,
}

/// Group `(spec, partition, path, pos)` deletes by partition and write one file each.
async fn write_delete_groups(
    table: &Table,
    files: &FileSettings,
    deletes: impl IntoIterator<Item = (i32, Struct, Arc<str>, i64)>,
) -> Result<Vec<(DataFile, i32)>> {
    let mut groups: foldhash::HashMap<(i32, Struct), PartitionDeletes> = Default::default();
    // Deletes come in runs of one file: its partition is looked up once per run.
    let mut last: Option<(Arc<str>, (i32, Struct))> = None;
    for (spec, partition, path, pos) in deletes {
        let group = match &last {
            Some((p, g)) if *p == path => g,
            _ => &last.insert((path.clone(), (spec, partition))).1,
        };
        let positions = match groups.get_mut(group) {
            Some(g) => g,
            None => groups.entry(group.clone()).or_default(),
        };
        positions.entry(path).or_default().push(pos);
    }
    let mut out = Vec::with_capacity(groups.len());
    for ((spec, partition), deletes) in groups {
        let spec_ref = table
            .metadata()
            .partition_spec_by_id(spec)
            .cloned()
            .ok_or_else(|| internal(format!("unknown partition spec {spec}")))?;
        let f = write_position_deletes(
            &files.file_io,
            &files.locations,
            &files.schema,
            &spec_ref,
            partition,
            deletes,
            &files.props,
        )
        .await?;
        out.push((f, spec));
    }
    Ok(out)
}

/// Look `keys` up in `table`'s current snapshot and write position deletes for them;
/// the keys come back.
pub async fn committed_deletes(
    table: &Table,
    files: &FileSettings,
    codec: &KeyCodec,
    keys: KeySet,
) -> Result<(LookupDeletes, KeySet)> {
    if keys.is_empty() {
        return Ok((LookupDeletes::default(), keys));
    }
    let base = table.metadata().current_snapshot_id();
    let query = Arc::new(codec.query(keys)?);
    let live = find_live_rows(table, &query).await?;
    let keys = Arc::try_unwrap(query)
        .map_err(|_| internal("a key scan outlived its lookup"))?
        .keys;
    let mut referenced: Vec<String> = live.iter().map(|r| r.path.to_string()).collect();
    referenced.sort();
    referenced.dedup();
    let files = write_delete_groups(
        table,
        files,
        live.into_iter()
            .map(|r| (r.spec_id, r.partition, r.path, r.pos)),
    )
    .await?;
    Ok((
        LookupDeletes {
            files,
            referenced,
            base,
        },
        keys,
    ))
}

/// Redo the committed-row lookup of a pending upsert commit against `table` (after a
/// concurrent commit removed files its deletes pointed to).
pub async fn relookup(
    table: &Table,
    files: &FileSettings,
    arrow_schema: &ArrowSchemaRef,
    key: &[String],
    keys_file: &str,
) -> Result<LookupDeletes> {
    let codec = KeyCodec::new(files, arrow_schema, key)?;
    let mut stream = open_parquet(&files.file_io, keys_file)
        .await?
        .build()
        .map_err(|e| io(keys_file, e))?;
    let mut lookup = ChunkedLookup::new(table, files, &codec, None);
    while let Some(batch) = stream.try_next().await.map_err(|e| io(keys_file, e))? {
        for key in codec.encode_keys(keys_file, &batch)? {
            lookup.add(key).await?;
        }
    }
    Ok(lookup.finish().await?.0)
}

/// Rewrite a data file of the open checkpoint when at least this fraction of its rows
/// died within the checkpoint; below it, position deletes are cheaper than the rewrite.
const REWRITE_DEAD_FRACTION: f64 = 0.05;

/// Keys the open checkpoint may index before the writer asks for an early checkpoint
/// (about 100 bytes each): bounds memory when rows arrive faster than the checkpoint
/// interval drains them, e.g. during a snapshot.
const MAX_INDEXED_KEYS: usize = 128 * 1024;

/// Keys the open checkpoint holds in memory before its index goes to local disk
/// ([`Spill`]): reached only when the checkpoint the writer asked for cannot come, i.e.
/// inside one source transaction of more rows.
const SPILL_KEYS: usize = 2 * MAX_INDEXED_KEYS;

/// Keys looked up in the committed table at a time.
const LOOKUP_CHUNK: usize = MAX_INDEXED_KEYS;

/// Upsert mode: a live row per key; changes become position deletes.
pub struct UpsertWriter {
    t: OpenTable,
    /// Shared with the checkpoint being finished ([`Finishing`]).
    codec: Arc<KeyCodec>,
    index: foldhash::HashMap<Key, KeyState>,
    own_deletes: Vec<RowLocation>,
    lookup: KeySet,
    /// The index of this checkpoint spilled to disk, when it outgrew [`SPILL_KEYS`].
    spill: Spill,
    locations: Vec<RowLocation>,
}

impl UpsertWriter {
    /// A writer for the table; its key must not be empty.
    pub fn new(t: OpenTable) -> Result<Self> {
        let codec = Arc::new(KeyCodec::new(
            &t.ctx.files,
            &t.ctx.arrow_schema,
            &t.ctx.key,
        )?);
        Ok(UpsertWriter {
            t,
            codec,
            index: Default::default(),
            own_deletes: Vec::new(),
            lookup: KeySet::default(),
            spill: Spill::default(),
            locations: Vec::new(),
        })
    }
}

/// The rest of a checkpoint's preparation, after its data files closed: independent of
/// the writer, which meanwhile takes the next checkpoint's rows.
struct Finishing {
    checkpoint_id: u64,
    name: String,
    table: Table,
    catalog: Arc<crate::catalog::CatalogHandle>,
    ident: iceberg::TableIdent,
    files: FileSettings,
    arrow_schema: ArrowSchemaRef,
    codec: Arc<KeyCodec>,
    data: Vec<DataFile>,
    infos: Vec<FileInfo>,
    own_deletes: Vec<RowLocation>,
    lookup: KeySet,
    spill: Spill,
    rows: u64,
    truncate: bool,
}

impl Finishing {
    async fn run(mut self) -> Result<PendingCommit> {
        // Committed rows replaced by this checkpoint: every earlier checkpoint is
        // committed (the engine waits for it), so look them up in the table as it is now.
        let mut keys_file = None;
        let mut looked_up = LookupDeletes::default();
        if !self.lookup.is_empty() || !self.spill.is_empty() {
            self.table = self.catalog.load(&self.ident).await?;
            let path = format!(
                "{}/metadata/lakeshore-keys-{}.parquet",
                self.table.metadata().location().trim_end_matches('/'),
                uuid::Uuid::new_v4()
            );
            let mut lookup = ChunkedLookup::new(&self.table, &self.files, &self.codec, Some(path));
            if self.spill.is_empty() {
                lookup.add_all(std::mem::take(&mut self.lookup)).await?;
            } else {
                // Merge the spilled runs: key by key, whether its first change replaces a
                // committed row, and which of the checkpoint's own rows later changes of
                // the key superseded.
                tracing::info!(table = %self.name, runs = self.spill.runs(), "merging the spilled key index");
                for merged in std::mem::take(&mut self.spill).merge()? {
                    let merged = merged?;
                    self.own_deletes.extend(merged.superseded);
                    if merged.lookup {
                        lookup.add(merged.key).await?;
                    }
                }
            }
            (looked_up, keys_file) = lookup.finish().await?;
        }
        let files = self.drop_dead_rows().await?;
        let spec_id = self.files.spec.spec_id();
        let infos = &self.infos;
        let paths: Vec<Arc<str>> = infos.iter().map(|i| Arc::from(i.path.as_str())).collect();
        let own = self.own_deletes.drain(..).map(|loc| {
            let file = loc.file as usize;
            (
                spec_id,
                infos[file].partition.clone(),
                paths[file].clone(),
                loc.pos as i64,
            )
        });
        let own_deletes =
            write_delete_groups(&self.table, &self.files, own.collect::<Vec<_>>()).await?;
        let delta = RowDelta {
            data_files: files.into_iter().map(|f| (f, spec_id)).collect(),
            delete_files: own_deletes,
            lookup_delete_files: looked_up.files,
            referenced_files: looked_up.referenced,
            lookup_base: looked_up.base,
            truncate: self.truncate,
        };
        crate::table_writer::pending(
            &self.table,
            self.ident.name(),
            self.checkpoint_id,
            self.rows,
            &delta,
            &self.codec.columns,
            keys_file,
        )
    }

    /// Rows that were written and removed within this checkpoint need never be visible:
    /// files of the open checkpoint with enough of them are rewritten without them (they
    /// are not committed yet, so nobody else can see or reference them), and their
    /// position deletes are dropped. This keeps hot keys that change many times per
    /// checkpoint from bloating the table and its read cost.
    async fn drop_dead_rows(&mut self) -> Result<Vec<DataFile>> {
        let files = std::mem::take(&mut self.data);
        if self.own_deletes.is_empty() {
            return Ok(files);
        }
        let infos = &self.infos;
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
            if let Some(new) =
                rewrite_without(&self.files, &self.arrow_schema, &f, positions, partition).await?
            {
                out.push(new);
            }
            self.files
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
        // The file may predate a schema change in this checkpoint: columns added since
        // read as null, widened ones are widened.
        let columns = arrow_schema
            .fields()
            .iter()
            .map(|f| match kept.column_by_name(f.name()) {
                Some(c) => crate::schema::widen(c.clone(), f.data_type()),
                None => arrow_array::new_null_array(f.data_type(), kept.num_rows()),
            })
            .collect();
        let kept = RecordBatch::try_new(arrow_schema.clone(), columns)
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
        let keys = self.codec.encode(&self.t.name, &batch.rows)?;
        // Only after-images are written; removals are identified by their key alone.
        let written = conform(
            &self.t.name,
            &self.t.ctx.arrow_schema,
            &batch.after_images()?,
        )?;
        self.t.rows += written.num_rows() as u64;
        self.locations.clear();
        self.t
            .data
            .write(&written, Some(&mut self.locations))
            .await?;
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
                    // every other first sight may replace a committed row (unless the
                    // table was truncated in this checkpoint: no committed row stays).
                    if op != Op::Insert && !self.t.truncated {
                        self.lookup.insert(e.key().clone());
                    }
                    e.insert(state);
                }
            }
        }
        if self.index.len() >= SPILL_KEYS {
            if self.spill.is_empty() {
                tracing::info!(
                    table = %self.t.name,
                    keys = self.index.len(),
                    "one checkpoint changes more keys than the index holds in memory (a \
                     large source transaction): the index goes to local disk"
                );
            }
            self.spill.write_run(&mut self.index, &mut self.lookup)?;
        }
        Ok(())
    }

    fn wants_checkpoint(&self) -> bool {
        self.index.len() >= MAX_INDEXED_KEYS || !self.spill.is_empty()
    }

    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit> {
        match self.prepare_overlapped(checkpoint_id).await? {
            Preparing::Ready(p) => Ok(p),
            Preparing::Later(rest) => rest.await,
        }
    }

    async fn prepare_overlapped(&mut self, checkpoint_id: u64) -> Result<Preparing> {
        let (data, infos) = self.t.data.close().await?;
        if !self.spill.is_empty() {
            // The rest of the index joins the spilled runs, merged by the lookup.
            self.spill.write_run(&mut self.index, &mut self.lookup)?;
        }
        self.index.clear();
        let ctx = &self.t.ctx;
        let rest = Finishing {
            checkpoint_id,
            name: self.t.name.clone(),
            table: self.t.table.clone(),
            catalog: self.t.catalog.clone(),
            ident: ctx.ident.clone(),
            files: ctx.files.clone(),
            arrow_schema: ctx.arrow_schema.clone(),
            codec: self.codec.clone(),
            data,
            infos,
            own_deletes: std::mem::take(&mut self.own_deletes),
            lookup: std::mem::take(&mut self.lookup),
            spill: std::mem::take(&mut self.spill),
            rows: std::mem::take(&mut self.t.rows),
            truncate: std::mem::take(&mut self.t.truncated),
        };
        Ok(Preparing::Later(Box::pin(rest.run())))
    }

    async fn evolve(&mut self, schema: &TableSchema) -> Result<()> {
        self.t.evolve(schema).await?;
        let codec = KeyCodec::new(&self.t.ctx.files, &self.t.ctx.arrow_schema, &self.t.ctx.key)?;
        if !codec.same_types(&self.codec) {
            // A key column was widened: the keys of the open checkpoint get the new encoding.
            let (keys, states): (Vec<Key>, Vec<KeyState>) = self.index.drain().unzip();
            let keys = codec.reencode(&self.codec, keys.iter())?;
            self.index = keys.into_iter().zip(states).collect();
            let lookup: Vec<Key> = self.lookup.drain().collect();
            self.lookup = codec
                .reencode(&self.codec, lookup.iter())?
                .into_iter()
                .collect();
            self.spill
                .map_keys(|keys| codec.reencode(&self.codec, keys.iter()))?;
        }
        self.codec = Arc::new(codec);
        Ok(())
    }

    async fn truncate(&mut self) -> Result<()> {
        self.t.truncate().await?;
        self.index.clear();
        self.own_deletes.clear();
        self.lookup.clear();
        self.spill.clear();
        Ok(())
    }
}
