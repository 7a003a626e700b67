//! What the table writers share — the table context and the serialised pending commit —
//! and the [`AppendWriter`] (data files only). The upsert writer lives in `upsert`.

use std::sync::Arc;

use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::TableIdent;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFile, DataFileBuilder, FormatVersion, Literal, Struct, Type,
    deserialize_data_file_from_json, serialize_data_file_to_json,
};
use iceberg::table::Table;
use lakeshore_api::{ChangeBatch, PendingCommit, Result, TableSchema, TableWriter};
use serde::{Deserialize, Serialize};

use crate::catalog::CatalogHandle;
use crate::commit::RowDelta;
use crate::error::{ice, internal};
use crate::schema::{conform, schema_changes, with_added, with_promotions};
use crate::writer::{FileSettings, PartitionedWriter};

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
    /// iceberg-rust's `DataFile` JSON, as one string: as a JSON tree (how records before
    /// 2026-11-27 hold it, still read) a file with its column statistics takes tens of
    /// kilobytes in memory, and a checkpoint that closes thousands of files holds several
    /// copies of its payload.
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
    /// Position deletes into this checkpoint's own data files.
    deletes: Vec<FileEntry>,
    /// Position deletes into committed data files, from the key lookup.
    #[serde(default)]
    lookup_deletes: Vec<FileEntry>,
    referenced: Vec<String>,
    lookup_base: Option<i64>,
    /// Primary-key columns, and the file of looked-up keys (to look them up again).
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    keys_file: Option<String>,
    /// The checkpoint truncated the table first (see [`RowDelta::truncate`]).
    #[serde(default)]
    truncate: bool,
}

/// A pending commit turned back into files, plus what a re-lookup needs.
pub struct DecodedPending {
    /// The files.
    pub delta: RowDelta,
    /// Primary-key columns.
    pub key: Vec<String>,
    /// Keys whose committed rows the lookup deletes point to.
    pub keys_file: Option<String>,
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
                file: serde_json::Value::String(json),
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
            let json = match &e.file {
                serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                tree => std::borrow::Cow::Owned(tree.to_string()),
            };
            let f = deserialize_data_file_from_json(&json, e.spec_id, &ptype, md.current_schema())
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
pub fn decode_pending(table: &Table, pending: &PendingCommit) -> Result<DecodedPending> {
    let p: Payload = serde_json::from_value(pending.payload.clone()).map_err(|e| {
        internal(format!(
            "unreadable pending commit for {}: {e}",
            pending.table
        ))
    })?;
    Ok(DecodedPending {
        delta: RowDelta {
            data_files: decode(table, &p.data)?,
            delete_files: decode(table, &p.deletes)?,
            lookup_delete_files: decode(table, &p.lookup_deletes)?,
            referenced_files: p.referenced,
            lookup_base: p.lookup_base,
            truncate: p.truncate,
        },
        key: p.key,
        keys_file: p.keys_file,
    })
}

impl TableContext {
    /// Bring the lake table up to `source`'s columns (adding the missing ones in a
    /// metadata-only commit) and switch this context — and `data`, the writer of the
    /// open checkpoint, if any — to the table's new schema. Idempotent: replaying the
    /// change after a crash finds the columns already there.
    pub async fn evolve(
        &mut self,
        catalog: &CatalogHandle,
        table: &mut Table,
        data: Option<&mut PartitionedWriter>,
        source: &TableSchema,
    ) -> Result<()> {
        let fresh = catalog.load(&self.ident).await?;
        let changes = schema_changes(fresh.metadata().current_schema(), source)?;
        let evolved = if changes.added.is_empty() && changes.promoted.is_empty() {
            fresh
        } else {
            // iceberg-rust 0.10's schema update cannot promote types, nor commit through
            // a REST catalog we speak ourselves: the new schema lands like our row deltas.
            let added: Vec<&str> = changes.added.iter().map(|f| f.name.as_str()).collect();
            let promoted: Vec<&str> = changes.promoted.iter().map(|(n, _)| n.as_str()).collect();
            if !added.is_empty() {
                tracing::info!(table = %self.ident, columns = ?added, "adding columns");
            }
            if !promoted.is_empty() {
                tracing::info!(table = %self.ident, columns = ?promoted, "widening column types");
            }
            crate::commit::commit_schema(catalog, &self.ident, move |md| {
                let schema = with_added(md.current_schema(), &changes.added, md.last_column_id())?;
                with_promotions(&schema, &changes.promoted)
            })
            .await?
        };
        let schema = evolved.metadata().current_schema().clone();
        if schema.schema_id() != self.files.schema.schema_id() {
            self.arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(ice)?);
            self.files.schema = schema;
            if let Some(data) = data {
                data.change_schema(self.files.clone()).await?;
            }
        }
        *table = evolved;
        Ok(())
    }

    /// Describe `delta` as the pending commit of `checkpoint_id` for this table.
    pub fn pending(
        &self,
        table: &Table,
        checkpoint_id: u64,
        added_rows: u64,
        delta: &RowDelta,
        keys_file: Option<String>,
    ) -> Result<PendingCommit> {
        pending(
            table,
            self.ident.name(),
            checkpoint_id,
            added_rows,
            delta,
            &self.key,
            keys_file,
        )
    }
}

/// Describe `delta` as the pending commit of `checkpoint_id`.
pub(crate) fn pending(
    table: &Table,
    name: &str,
    checkpoint_id: u64,
    added_rows: u64,
    delta: &RowDelta,
    key: &[String],
    keys_file: Option<String>,
) -> Result<PendingCommit> {
    let payload = Payload {
        data: encode(table, &delta.data_files)?,
        deletes: encode(table, &delta.delete_files)?,
        lookup_deletes: encode(table, &delta.lookup_delete_files)?,
        referenced: delta.referenced_files.clone(),
        lookup_base: delta.lookup_base,
        key: key.to_vec(),
        keys_file,
        truncate: delta.truncate,
    };
    Ok(PendingCommit {
        table: name.to_string(),
        checkpoint_id,
        added_rows,
        payload: serde_json::to_value(payload).map_err(|e| internal(e.to_string()))?,
        empty: delta.is_empty(),
    })
}

/// What both writers hold: the table, how to write it, and the open checkpoint's data
/// files.
pub struct OpenTable {
    /// The table's context.
    pub ctx: TableContext,
    /// The catalog, for schema changes and lookups.
    pub catalog: Arc<CatalogHandle>,
    /// The table as last loaded.
    pub table: Table,
    /// `namespace.table`, for messages.
    pub name: String,
    /// Data files of the open checkpoint.
    pub data: PartitionedWriter,
    /// Data rows written in the open checkpoint.
    pub rows: u64,
    /// The source truncated the table in the open checkpoint.
    pub truncated: bool,
}

impl OpenTable {
    /// Start writing `table`.
    pub fn new(
        ctx: TableContext,
        catalog: Arc<CatalogHandle>,
        table: Table,
        name: String,
    ) -> Result<Self> {
        let data = PartitionedWriter::new(ctx.files.clone())?;
        Ok(OpenTable {
            ctx,
            catalog,
            table,
            name,
            data,
            rows: 0,
            truncated: false,
        })
    }

    /// The source truncated the table: the rows written so far in the open checkpoint
    /// are dropped (their files removed), and the commit will remove every committed
    /// file.
    pub async fn truncate(&mut self) -> Result<()> {
        let (files, _) = self.data.close().await?;
        for f in files {
            self.ctx
                .files
                .file_io
                .delete(f.file_path())
                .await
                .map_err(ice)?;
        }
        self.rows = 0;
        self.truncated = true;
        tracing::info!(table = %self.name, "truncated by the source");
        Ok(())
    }

    /// Apply a source schema change (see [`TableContext::evolve`]).
    pub async fn evolve(&mut self, schema: &TableSchema) -> Result<()> {
        let (table, data) = (&mut self.table, Some(&mut self.data));
        self.ctx.evolve(&self.catalog, table, data, schema).await
    }

    /// Describe `delta` as checkpoint `checkpoint_id` and start counting rows afresh.
    pub fn pending(
        &mut self,
        checkpoint_id: u64,
        delta: &RowDelta,
        keys_file: Option<String>,
    ) -> Result<PendingCommit> {
        let rows = std::mem::take(&mut self.rows);
        self.truncated = false;
        self.ctx
            .pending(&self.table, checkpoint_id, rows, delta, keys_file)
    }
}

/// Append mode: every insert and update-after becomes a data row; removals are ignored.
pub struct AppendWriter(OpenTable);

impl AppendWriter {
    /// A writer for the table.
    pub fn new(table: OpenTable) -> Self {
        AppendWriter(table)
    }
}

#[async_trait::async_trait]
impl TableWriter for AppendWriter {
    async fn write(&mut self, batch: ChangeBatch) -> Result<()> {
        let t = &mut self.0;
        let rows = conform(&t.name, &t.ctx.arrow_schema, &batch.after_images()?)?;
        t.rows += rows.num_rows() as u64;
        t.data.write(&rows, None).await
    }

    async fn prepare(&mut self, checkpoint_id: u64) -> Result<PendingCommit> {
        let t = &mut self.0;
        let (files, _) = t.data.close().await?;
        let spec_id = t.ctx.files.spec.spec_id();
        let delta = RowDelta {
            data_files: files.into_iter().map(|f| (f, spec_id)).collect(),
            truncate: t.truncated,
            ..Default::default()
        };
        t.pending(checkpoint_id, &delta, None)
    }

    async fn evolve(&mut self, schema: &TableSchema) -> Result<()> {
        self.0.evolve(schema).await
    }

    async fn truncate(&mut self) -> Result<()> {
        self.0.truncate().await
    }
}
