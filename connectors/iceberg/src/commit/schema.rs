//! A schema change: a metadata-only commit.

use iceberg::TableIdent;
use iceberg::table::Table;
use lakeshore_api::{Error, ErrorKind, Result};

use super::snapshot::{swap_or_discard, write_next_metadata};
use crate::catalog::CatalogHandle;
use crate::error::ice;

/// Make `change(current schema)` the table's current schema, in a metadata-only commit
/// landed by compare-and-swap (retried on a fresh table when another commit won).
pub async fn commit_schema(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    change: impl Fn(&iceberg::spec::Schema) -> Result<iceberg::spec::Schema>,
) -> Result<Table> {
    for _ in 0..20 {
        let table = catalog.catalog().load_table(ident).await.map_err(ice)?;
        let md = table.metadata();
        let schema = change(md.current_schema())?;
        if schema.as_struct() == md.current_schema().as_struct() {
            return Ok(table);
        }
        let current_location = table.metadata_location_result().map_err(ice)?;
        let new_md = md
            .clone()
            .into_builder(Some(current_location.to_string()))
            .add_current_schema(schema)
            .map_err(ice)?
            .build()
            .map_err(ice)?
            .metadata;
        let next = write_next_metadata(table.file_io(), current_location, &new_md).await?;
        if swap_or_discard(catalog, ident, &table, &next, std::slice::from_ref(&next)).await? {
            return catalog.catalog().load_table(ident).await.map_err(ice);
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("table {ident}: gave up changing the schema after 20 conflicts"),
    ))
}
