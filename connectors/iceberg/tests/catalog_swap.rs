//! The catalog seam's landing on the SQL catalog (compare-and-swap): it must refuse a
//! change built on metadata that has moved since it was read, removing the attempt's
//! files, and must land it otherwise. (The REST catalog's is proven against a real server
//! in integration/tests/test_rest.py.)

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema};
use iceberg::{NamespaceIdent, TableIdent};
use lakeshore_api::{Sink, TableSchema, TableTarget};
use lakeshore_iceberg::{CatalogConfig, CatalogHandle, Codec, IcebergOptions, IcebergSink};

/// An SQLite catalog in `dir` holding an empty table `s.t`.
async fn catalog_with_a_table(dir: &std::path::Path) -> CatalogConfig {
    let cfg = CatalogConfig {
        name: "lakeshore".into(),
        uri: format!("sqlite://{}/catalog.db", dir.display()),
        warehouse: dir.join("warehouse").display().to_string(),
        storage: Default::default(),
        rest: None,
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
        read_costs: Default::default(),
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
    cfg
}

#[tokio::test]
async fn landing_refuses_a_stale_base() {
    let dir = std::env::temp_dir().join(format!("lakeshore-swap-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = catalog_with_a_table(&dir).await;
    let catalog = CatalogHandle::open(&cfg).await.unwrap();
    let ident = TableIdent::new(NamespaceIdent::new("s".into()), "t".into());
    let base = catalog.load(&ident).await.unwrap();
    let mark = |t: &iceberg::table::Table, value: &str| {
        t.metadata()
            .clone()
            .into_builder(t.metadata_location().map(str::to_string))
            .set_properties([("mark".to_string(), value.to_string())].into())
            .unwrap()
            .build()
            .unwrap()
    };

    // Another commit moves the table (a column added).
    lakeshore_iceberg::commit::commit_schema(&catalog, &ident, |md| {
        let mut fields: Vec<_> = md.current_schema().as_struct().fields().to_vec();
        fields.push(Arc::new(iceberg::spec::NestedField::optional(
            md.last_column_id() + 1,
            "extra",
            iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Int),
        )));
        Ok(iceberg::spec::Schema::builder()
            .with_fields(fields)
            .build()
            .unwrap())
    })
    .await
    .unwrap();

    // A change built on the stale base is refused, and the attempt's files removed.
    let stray = format!("{}/metadata/stray.avro", base.metadata().location());
    base.file_io()
        .new_output(&stray)
        .unwrap()
        .write(bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(
        !catalog
            .land(
                &ident,
                &base,
                mark(&base, "stale"),
                std::slice::from_ref(&stray)
            )
            .await
            .unwrap()
    );
    assert!(!base.file_io().exists(&stray).await.unwrap());
    let moved = catalog.load(&ident).await.unwrap();
    assert!(moved.metadata().properties().get("mark").is_none());
    assert!(
        moved
            .metadata()
            .current_schema()
            .field_by_name("extra")
            .is_some()
    );

    // Built on the current metadata, it lands.
    assert!(
        catalog
            .land(&ident, &moved, mark(&moved, "fresh"), &[])
            .await
            .unwrap()
    );
    let after = catalog.load(&ident).await.unwrap();
    assert_eq!(after.metadata().properties()["mark"], "fresh");
    assert!(
        after
            .metadata()
            .current_schema()
            .field_by_name("extra")
            .is_some()
    );
    std::fs::remove_dir_all(&dir).ok();
}
