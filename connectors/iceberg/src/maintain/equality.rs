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

use arrow_array::RecordBatch;
use arrow_row::{RowConverter, SortField};
use arrow_schema::{Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::spec::DataFile;
use lakeshore_api::{Error, Result};
use parquet::arrow::{PARQUET_FIELD_ID_META_KEY, ProjectionMask};

use crate::error::{internal, io};
use crate::lookup::open_parquet;
use crate::schema::{column_sources, conform_file};

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

impl Group {
    /// `batch`'s equality columns, widened to the table's types, as comparable keys.
    fn encode(
        &self,
        batch: &RecordBatch,
        sources: &[Option<usize>],
        path: &str,
    ) -> Result<arrow_row::Rows> {
        let batch = conform_file(batch, sources, &self.schema)?;
        self.converter
            .convert_columns(batch.columns())
            .map_err(|e| io(path, e))
    }
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
            // A missing column would read as null and delete every null row.
            if let Some(i) = sources.iter().position(Option::is_none) {
                return Err(Error::unsupported(format!(
                    "{path}: equality column {} is missing from the delete file",
                    g.schema.field(i).name()
                )));
            }
            while let Some(batch) = stream.try_next().await.map_err(|e| io(path, e))? {
                let rows = g.encode(&batch, &sources, path)?;
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
            return Err(Error::unsupported(format!(
                "{path}: an equality-delete file without equality ids"
            )));
        }
        let fields = ids
            .iter()
            .map(|id| {
                table
                    .fields()
                    .iter()
                    .find(|f| f.metadata().get(PARQUET_FIELD_ID_META_KEY) == Some(&id.to_string()))
                    .cloned()
                    .ok_or_else(|| {
                        Error::unsupported(format!(
                            "{path}: equality field id {id} is not a top-level column of the table"
                        ))
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
                let rows = g.encode(&batch, &projected, path)?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Struct};
    use parquet::arrow::ArrowWriter;

    use super::*;

    fn field(name: &str, id: i32, dt: DataType) -> Field {
        Field::new(name, dt, true).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            id.to_string(),
        )]))
    }

    /// A Parquet file of `columns` at `dir/name`, described as an equality-delete file on
    /// `ids` (or a data file when `ids` is empty).
    fn file(
        dir: &std::path::Path,
        name: &str,
        columns: Vec<(Field, ArrayRef)>,
        ids: &[i32],
    ) -> DataFile {
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let path = dir.join(name);
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let mut b = DataFileBuilder::default();
        b.content(if ids.is_empty() {
            DataContentType::Data
        } else {
            DataContentType::EqualityDeletes
        })
        .file_path(path.display().to_string())
        .file_format(DataFileFormat::Parquet)
        .partition(Struct::empty())
        .record_count(batch.num_rows() as u64)
        .file_size_in_bytes(std::fs::metadata(&path).unwrap().len())
        .equality_ids((!ids.is_empty()).then(|| ids.to_vec()));
        b.build().unwrap()
    }

    #[tokio::test]
    async fn deletes_apply_to_older_files_by_value_null_matching_null() {
        let dir = std::env::temp_dir().join(format!("lakeshore-eq-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = field("id", 1, DataType::Int64);
        let name = field("name", 2, DataType::Utf8);
        let table = Arc::new(Schema::new(vec![id.clone(), name.clone()]));
        let data = file(
            &dir,
            "data.parquet",
            vec![
                (
                    id.clone(),
                    Arc::new(Int64Array::from(vec![
                        Some(1),
                        Some(2),
                        None,
                        Some(4),
                        Some(5),
                    ])),
                ),
                (
                    name.clone(),
                    Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
                ),
            ],
            &[],
        );
        // Written by a writer whose id column is still 32-bit: widened to the table's.
        let newer = file(
            &dir,
            "newer.parquet",
            vec![(
                field("id", 1, DataType::Int32),
                Arc::new(Int32Array::from(vec![Some(2), None, Some(9)])),
            )],
            &[1],
        );
        // Same sequence number as the data file: does not apply to it.
        let same = file(
            &dir,
            "same.parquet",
            vec![
                (id.clone(), Arc::new(Int64Array::from(vec![4, 5]))),
                (name.clone(), Arc::new(StringArray::from(vec!["x", "e"]))),
            ],
            &[1, 2],
        );
        let older = file(
            &dir,
            "older.parquet",
            vec![(id.clone(), Arc::new(Int64Array::from(vec![1])))],
            &[1],
        );
        let io = FileIO::new_with_fs();
        let files = [(&newer, 6), (&same, 5), (&older, 4)];
        let eq = EqualityDeletes::load(&io, &files, &table).await.unwrap();
        assert!(!eq.is_empty());
        let mut out = HashSet::new();
        assert_eq!(eq.deleted_in(&io, &data, 5, &mut out).await.unwrap(), 2);
        assert_eq!(out, HashSet::from([1, 2]));
        // Positions already deleted are not counted again.
        let mut out = HashSet::from([1]);
        assert_eq!(eq.deleted_in(&io, &data, 5, &mut out).await.unwrap(), 1);
        // A file as new as the newest delete is untouched.
        let mut out = HashSet::new();
        assert_eq!(eq.deleted_in(&io, &data, 6, &mut out).await.unwrap(), 0);
        // An older data file: the (4, "x") row does not match "d", (5, "e") does.
        let mut out = HashSet::new();
        assert_eq!(eq.deleted_in(&io, &data, 3, &mut out).await.unwrap(), 4);
        assert_eq!(out, HashSet::from([0, 1, 2, 4]));
        std::fs::remove_dir_all(&dir).ok();
    }
}
