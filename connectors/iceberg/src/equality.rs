//! Equality deletes (written by other tools; lakeshore writes none), applied the way the
//! Iceberg spec says: a delete row removes every row of an older data file (a data
//! sequence number strictly lower than the delete file's) whose equality columns hold
//! the same values, null matching null.
//!
//! Compaction uses this to drop such rows from the files it rewrites, and to turn a
//! partition's equality deletes into position deletes without rewriting its data.
//!
//! Memory: every delete key that applies to one partition (its values in Arrow's row
//! format) with the highest sequence number deleting it; data files are read one batch
//! at a time, only their equality columns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_row::{RowConverter, SortField};
use arrow_schema::{Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::spec::DataFile;
use lakeshore_api::{Error, ErrorKind, Result};
use parquet::arrow::ProjectionMask;

use crate::error::{internal, io};
use crate::lookup::open_parquet;
use crate::schema::{column_sources, conform_file};

const FIELD_ID: &str = "PARQUET:field_id";

/// The keys deleted through one set of equality columns.
struct Group {
    ids: Vec<i32>,
    /// The table's columns of `ids`, in that order.
    schema: ArrowSchemaRef,
    converter: RowConverter,
    /// Deleted key → the highest sequence number deleting it.
    keys: HashMap<Box<[u8]>, i64>,
    highest: i64,
}

/// The equality deletes that apply to one partition, loaded.
#[derive(Default)]
pub(crate) struct EqualityDeletes {
    groups: Vec<Group>,
}

impl EqualityDeletes {
    /// Load `files` (equality-delete files, each with its data sequence number) against
    /// the table's Arrow schema `table` (with field ids).
    pub(crate) async fn load(
        file_io: &FileIO,
        files: &[(&DataFile, i64)],
        table: &ArrowSchemaRef,
    ) -> Result<Self> {
        let mut me = EqualityDeletes::default();
        for (file, seq) in files {
            let path = file.file_path();
            let ids = file.equality_ids().unwrap_or_default();
            let g = me.group(&ids, table, path)?;
            let mut stream = open_parquet(file_io, path)
                .await?
                .with_batch_size(64 * 1024)
                .build()
                .map_err(|e| io(path, e))?;
            let sources = column_sources(&stream.schema().clone(), &g.schema, path)?;
            while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
                let batch = conform_file(&batch, &sources, &g.schema)?;
                let rows = g
                    .converter
                    .convert_columns(batch.columns())
                    .map_err(|e| io(path, e))?;
                for row in rows.iter() {
                    let s = g.keys.entry(row.as_ref().into()).or_insert(*seq);
                    *s = (*s).max(*seq);
                }
            }
            g.highest = g.highest.max(*seq);
        }
        Ok(me)
    }

    /// The group for equality columns `ids`, created on first use.
    fn group(&mut self, ids: &[i32], table: &ArrowSchemaRef, path: &str) -> Result<&mut Group> {
        if let Some(i) = self.groups.iter().position(|g| g.ids == ids) {
            return Ok(&mut self.groups[i]);
        }
        if ids.is_empty() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{path}: an equality-delete file without equality ids"),
            ));
        }
        let fields = ids
            .iter()
            .map(|id| {
                table
                    .fields()
                    .iter()
                    .find(|f| f.metadata().get(FIELD_ID) == Some(&id.to_string()))
                    .cloned()
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "{path}: equality field id {id} is not a top-level column of the table"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| internal(e.to_string()))?;
        self.groups.push(Group {
            ids: ids.to_vec(),
            schema: Arc::new(ArrowSchema::new(fields)),
            converter,
            keys: HashMap::new(),
            highest: i64::MIN,
        });
        Ok(self.groups.last_mut().expect("just pushed"))
    }

    /// True when nothing is deleted.
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.keys.is_empty())
    }

    /// Add to `out` the positions of data file `file` (data sequence number `seq`) that
    /// these deletes remove; returns how many were not in `out` yet.
    pub(crate) async fn deleted_in(
        &self,
        file_io: &FileIO,
        file: &DataFile,
        seq: i64,
        out: &mut HashSet<i64>,
    ) -> Result<u64> {
        let path = file.file_path();
        let mut added = 0u64;
        for g in self.groups.iter().filter(|g| g.highest > seq) {
            let builder = open_parquet(file_io, path).await?;
            let sources = column_sources(&builder.schema().clone(), &g.schema, path)?;
            let roots: Vec<usize> = sources.iter().flatten().copied().collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let mut stream = builder
                .with_projection(mask)
                .with_batch_size(64 * 1024)
                .build()
                .map_err(|e| io(path, e))?;
            let projected = column_sources(&stream.schema().clone(), &g.schema, path)?;
            let mut offset = 0i64;
            while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
                let batch = conform_file(&batch, &projected, &g.schema)?;
                let rows = g
                    .converter
                    .convert_columns(batch.columns())
                    .map_err(|e| io(path, e))?;
                for (i, row) in rows.iter().enumerate() {
                    if g.keys.get(row.as_ref()).is_some_and(|s| *s > seq)
                        && out.insert(offset + i as i64)
                    {
                        added += 1;
                    }
                }
                offset += batch.num_rows() as i64;
            }
        }
        Ok(added)
    }
}
