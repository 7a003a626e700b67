//! Position-delete files: iceberg-rust 0.10 has no writer for them, so this builds one
//! from its public parts (the reserved `file_path`/`pos` schema and its Parquet writer).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::io::FileIO;
use iceberg::metadata_columns::{delete_file_path_field, delete_file_pos_field};
use iceberg::spec::{
    DataContentType, DataFile, PartitionKey, PartitionSpecRef, Schema, SchemaRef, Struct,
};
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use parquet::file::properties::WriterProperties;

use crate::error::{ice, internal};
use lakeshore_api::Result;

/// Deletes of one partition: data file path → positions.
pub type PartitionDeletes = BTreeMap<Arc<str>, Vec<i64>>;

fn delete_schema() -> Result<Schema> {
    Schema::builder()
        .with_fields([
            delete_file_path_field().clone(),
            delete_file_pos_field().clone(),
        ])
        .build()
        .map_err(ice)
}

/// Write one position-delete file for `deletes` (all in `partition` of `spec`), sorted by
/// (file_path, pos) as the spec requires.
pub async fn write_position_deletes(
    file_io: &FileIO,
    locations: &DefaultLocationGenerator,
    table_schema: &SchemaRef,
    spec: &PartitionSpecRef,
    partition: Struct,
    deletes: PartitionDeletes,
    props: &WriterProperties,
) -> Result<DataFile> {
    let schema = Arc::new(delete_schema()?);
    let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(ice)?);
    let mut paths = Vec::new();
    let mut positions = Vec::new();
    for (path, mut pos) in deletes {
        pos.sort_unstable();
        pos.dedup();
        for p in pos {
            paths.push(path.clone());
            positions.push(p);
        }
    }
    let referenced = match (paths.first(), paths.last()) {
        (Some(a), Some(b)) if a == b => Some(a.to_string()),
        _ => None,
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            paths.iter().map(|p| p.as_ref()),
        )),
        Arc::new(Int64Array::from(positions)),
    ];
    let batch = RecordBatch::try_new(arrow_schema, columns).map_err(|e| internal(e.to_string()))?;
    let key = PartitionKey::new(
        spec.as_ref().clone(),
        table_schema.clone(),
        partition.clone(),
    );
    let key = (!spec.is_unpartitioned()).then_some(key);
    let name = format!("{}-deletes.parquet", uuid::Uuid::new_v4());
    let path = locations.generate_location(key.as_ref(), &name);
    // Full (untruncated) file_path bounds let readers skip delete files by path.
    let props = props
        .clone()
        .into_builder()
        .set_statistics_truncate_length(None)
        .build();
    let mut writer = ParquetWriterBuilder::new(props, schema)
        .build(file_io.new_output(&path).map_err(ice)?)
        .await
        .map_err(ice)?;
    writer.write(&batch).await.map_err(ice)?;
    let mut builders = writer.close().await.map_err(ice)?;
    let mut builder = builders
        .pop()
        .ok_or_else(|| internal("position delete writer produced no file"))?;
    builder
        .content(DataContentType::PositionDeletes)
        .partition(partition)
        .partition_spec_id(spec.spec_id())
        .referenced_data_file(referenced);
    builder.build().map_err(|e| internal(e.to_string()))
}
