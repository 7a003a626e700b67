//! The compare-and-swap that lands a hand-built snapshot: it must refuse to move a table
//! whose metadata changed since it was read, and must move it otherwise.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema};
use iceberg::{NamespaceIdent, TableIdent};
use lakeshore_api::{Sink, TableSchema, TableTarget};
use lakeshore_iceberg::{CatalogConfig, CatalogHandle, Codec, IcebergOptions, IcebergSink};

#[tokio::test]
async fn swap_refuses_a_stale_base() {
    let dir = std::env::temp_dir().join(format!("lakeshore-swap-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = CatalogConfig {
        name: "lakeshore".into(),
        uri: format!("sqlite://{}/catalog.db", dir.display()),
        warehouse: dir.join("warehouse").display().to_string(),
        storage: Default::default(),
    };
    let sink = IcebergSink::connect(IcebergOptions {
        catalog: cfg.clone(),
        namespace: "s".into(),
        mode: None,
        target_file_size: 1 << 20,
        max_open_files: 16,
        codec: Codec::Snappy,
        row_group_bytes: 1 << 20,
        maintenance: Default::default(),
    })
    .await
    .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let target = TableTarget {
        source: TableSchema {
            name: "t".into(),
            schema,
            key: vec![],
        },
        name: "t".into(),
        partitioning: vec![],
    };
    sink.open_table(&target).await.unwrap();
    let catalog = CatalogHandle::open(&cfg).await.unwrap();
    let ident = TableIdent::new(NamespaceIdent::new("s".into()), "t".into());
    let current = catalog.catalog().load_table(&ident).await.unwrap();
    let location = current.metadata_location().unwrap().to_string();

    let stale = format!("{location}.stale");
    assert!(
        !catalog
            .swap_metadata(&ident, &stale, &location)
            .await
            .unwrap()
    );
    assert!(
        catalog
            .swap_metadata(&ident, &location, &location)
            .await
            .unwrap()
    );
    let after = catalog.catalog().load_table(&ident).await.unwrap();
    assert_eq!(after.metadata_location(), Some(location.as_str()));
    std::fs::remove_dir_all(&dir).ok();
}
