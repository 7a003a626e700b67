//! A schema change: a metadata-only commit.

use iceberg::TableIdent;
use iceberg::table::Table;
use lakeshore_api::{Error, ErrorKind, Result};

use crate::catalog::CatalogHandle;
use crate::error::ice;

/// Make `change(table metadata)` the table's current schema, in a metadata-only commit
/// landed through the catalog (retried on a fresh table when another commit won).
pub async fn commit_schema(
    catalog: &CatalogHandle,
    ident: &TableIdent,
    change: impl Fn(&iceberg::spec::TableMetadata) -> Result<iceberg::spec::Schema>,
) -> Result<Table> {
    for _ in 0..20 {
        let table = catalog.load(ident).await?;
        let md = table.metadata();
        let schema = change(md)?;
        if schema.as_struct() == md.current_schema().as_struct() {
            return Ok(table);
        }
        let current_location = table.metadata_location_result().map_err(ice)?;
        let next = md
            .clone()
            .into_builder(Some(current_location.to_string()))
            .add_current_schema(schema)
            .map_err(ice)?
            .build()
            .map_err(ice)?;
        if catalog.land(ident, &table, next, &[]).await? {
            return catalog.load(ident).await;
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!("table {ident}: gave up changing the schema after 20 conflicts"),
    ))
}
