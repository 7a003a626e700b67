//! Mapping source tables to Iceberg: Arrow schema → Iceberg schema with field ids and
//! identifier fields, partition expressions (`day(created_at)`, `bucket[16](id)`) →
//! partition specs, and re-stamping batches with the table's field ids.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, SchemaRef as ArrowSchemaRef, TimeUnit};
use iceberg::spec::{
    ListType, NestedField, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec,
};
use lakeshore_api::files::FIELD_DOC;
use lakeshore_api::{Error, Result, TableSchema};

use crate::error::internal;

/// The Iceberg type of an Arrow column, or an error naming the table and column. A
/// list's element has field id 0 until [`number_elements`] numbers it.
fn iceberg_type(table: &str, column: &str, dt: &DataType) -> Result<Type> {
    if let DataType::List(element) = dt {
        let ty = match element.data_type() {
            DataType::List(_) => {
                return Err(Error::unsupported(format!(
                    "table {table}, column {column}: lists of lists have no Iceberg \
                     mapping in lakeshore yet"
                )));
            }
            inner => iceberg_type(table, column, inner)?,
        };
        let element = NestedField::list_element(0, ty, !element.is_nullable());
        return Ok(Type::List(ListType::new(Arc::new(element))));
    }
    let p = match dt {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => PrimitiveType::Int,
        DataType::UInt8 | DataType::UInt16 => PrimitiveType::Int,
        DataType::Int64 | DataType::UInt32 => PrimitiveType::Long,
        DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Decimal128(p, s) if *s >= 0 => PrimitiveType::Decimal {
            precision: *p as u32,
            scale: *s as u32,
        },
        DataType::Utf8 | DataType::LargeUtf8 => PrimitiveType::String,
        DataType::Binary | DataType::LargeBinary => PrimitiveType::Binary,
        DataType::Date32 => PrimitiveType::Date,
        DataType::Time64(TimeUnit::Microsecond) => PrimitiveType::Time,
        DataType::Timestamp(TimeUnit::Microsecond, None) => PrimitiveType::Timestamp,
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => PrimitiveType::Timestamptz,
        other => {
            return Err(Error::unsupported(format!(
                "table {table}, column {column}: Arrow type {other} has no Iceberg mapping in lakeshore yet"
            )));
        }
    };
    Ok(Type::Primitive(p))
}

/// A fresh Iceberg schema for a source table: field ids 1..n in column order, key
/// columns as required identifier fields.
pub fn to_iceberg_schema(table: &TableSchema) -> Result<Schema> {
    let mut fields = Vec::new();
    let mut identifiers = Vec::new();
    for (i, f) in table.schema.fields().iter().enumerate() {
        let id = i as i32 + 1;
        let ty = iceberg_type(&table.name, f.name(), f.data_type())?;
        let is_key = table.key.iter().any(|k| k == f.name());
        if is_key {
            identifiers.push(id);
        }
        let required = is_key || !f.is_nullable();
        let field = NestedField::new(id, f.name(), ty, required);
        fields.push(with_doc(field, f));
    }
    let mut next_id = fields.len() as i32;
    let fields: Vec<_> = fields
        .into_iter()
        .map(|f| Arc::new(number_elements(f, &mut next_id)))
        .collect();
    for k in &table.key {
        if table.schema.field_with_name(k).is_err() {
            return Err(Error::config(format!(
                "table {}: key column {k} is not a column of the table",
                table.name
            )));
        }
    }
    Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(identifiers)
        .build()
        .map_err(|e| {
            Error::internal(format!("table {}: invalid schema", table.name)).with_source(e)
        })
}

/// `field` with its list element (if any) numbered `next_id + 1`, and `next_id` moved on.
fn number_elements(mut field: NestedField, next_id: &mut i32) -> NestedField {
    if let Type::List(list) = field.field_type.as_ref() {
        *next_id += 1;
        let element = numbered(list.element_field.as_ref(), *next_id);
        field.field_type = Box::new(Type::List(ListType::new(Arc::new(element))));
    }
    field
}

/// `field` with id `id`.
fn numbered(field: &NestedField, id: i32) -> NestedField {
    let mut field = field.clone();
    field.id = id;
    field
}

/// `ty` with every nested field id 0: two types of the same shape compare equal.
fn unnumbered(ty: &Type) -> Type {
    match ty {
        Type::List(list) => {
            let element = numbered(list.element_field.as_ref(), 0);
            Type::List(ListType::new(Arc::new(element)))
        }
        other => other.clone(),
    }
}

/// `field` with the `doc` the source's Arrow field carries (a hashed column, a
/// geometry's SRID), which Iceberg keeps in the table's schema.
fn with_doc(field: NestedField, source: &arrow_schema::Field) -> NestedField {
    match source.metadata().get(FIELD_DOC) {
        Some(doc) => field.with_doc(doc),
        None => field,
    }
}

/// How a lake table must change to take a source table's rows.
#[derive(Debug, Default)]
pub struct SchemaChanges {
    /// Columns the lake table lacks (added as optional, with their Iceberg types and
    /// docs).
    pub added: Vec<NestedField>,
    /// Columns whose type the source widened, with the wider Iceberg type.
    pub promoted: Vec<(String, Type)>,
}

/// True when Iceberg allows promoting a column of type `from` to `to`: int → long,
/// float → double, decimal(P, S) → decimal(P', S) with P' > P.
pub fn promotable(from: &Type, to: &Type) -> bool {
    use PrimitiveType as P;
    let (Type::Primitive(from), Type::Primitive(to)) = (from, to) else {
        return false;
    };
    match (from, to) {
        (P::Int, P::Long) | (P::Float, P::Double) => true,
        (
            P::Decimal {
                precision: p1,
                scale: s1,
            },
            P::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 > p1,
        _ => false,
    }
}

/// What the lake table `current` needs to take the rows of `source`: columns it lacks,
/// and columns the source widened in a way Iceberg allows. A source column narrower than
/// the lake's is fine (its values are widened on write); any other type change is an
/// error naming the table and the column.
pub fn schema_changes(current: &Schema, source: &TableSchema) -> Result<SchemaChanges> {
    let mut changes = SchemaChanges::default();
    for f in source.schema.fields() {
        let ty = iceberg_type(&source.name, f.name(), f.data_type())?;
        match current.field_by_name(f.name()) {
            None => changes
                .added
                .push(with_doc(NestedField::optional(0, f.name(), ty), f)),
            Some(existing) if unnumbered(&existing.field_type) == ty => {}
            Some(existing) if promotable(&existing.field_type, &ty) => {
                changes.promoted.push((f.name().clone(), ty));
            }
            Some(existing) if promotable(&ty, &existing.field_type) => {}
            Some(existing)
                if matches!(ty, Type::List(_))
                    && *existing.field_type == Type::Primitive(PrimitiveType::String) =>
            {
                return Err(Error::unsupported(format!(
                    "table {}, column {}: the lake column holds arrays as text and the source \
                         now sends lists; keep text with arrays = \"text\" in [source] \
                         (PostgreSQL), or re-snapshot the table with a new pipeline name",
                    source.name,
                    f.name()
                )));
            }
            Some(existing) => {
                return Err(Error::unsupported(format!(
                    "table {}, column {}: type change from {} to {} is not supported (Iceberg \
                         promotes only int to long, float to double and decimal precision); \
                         re-snapshot the table with a new pipeline name or keep the old type",
                    source.name,
                    f.name(),
                    existing.field_type,
                    ty
                )));
            }
        }
    }
    Ok(changes)
}

/// `schema` with the named columns changed to the given (promoted) types; same field ids.
pub fn with_promotions(schema: &Schema, promoted: &[(String, Type)]) -> Result<Schema> {
    let fields = schema.as_struct().fields().iter().map(|f| {
        match promoted.iter().find(|(name, _)| *name == f.name) {
            Some((_, ty)) => {
                let mut f = f.as_ref().clone();
                f.field_type = Box::new(ty.clone());
                Arc::new(f)
            }
            None => f.clone(),
        }
    });
    Schema::builder()
        .with_schema_id(schema.schema_id())
        .with_fields(fields)
        .with_identifier_field_ids(schema.identifier_field_ids())
        .build()
        .map_err(|e| internal(format!("promoting column types: {e}")))
}

/// `schema` with the `added` columns (optional, numbered after `last_column_id`) that it
/// does not hold yet.
pub fn with_added(schema: &Schema, added: &[NestedField], last_column_id: i32) -> Result<Schema> {
    let mut next_id = last_column_id.max(schema.highest_field_id());
    let new = added
        .iter()
        .filter(|f| schema.field_by_name(&f.name).is_none())
        .map(|f| {
            next_id += 1;
            let f = numbered(f, next_id);
            Arc::new(number_elements(f, &mut next_id))
        });
    let fields: Vec<_> = schema
        .as_struct()
        .fields()
        .iter()
        .cloned()
        .chain(new)
        .collect();
    Schema::builder()
        .with_schema_id(schema.schema_id())
        .with_fields(fields)
        .with_identifier_field_ids(schema.identifier_field_ids())
        .build()
        .map_err(|e| internal(format!("adding columns: {e}")))
}

/// Widen `column` to `target` when Iceberg allows the promotion (a batch read or made
/// before a column's type was promoted); other mismatches are left to the caller.
pub(crate) fn widen(column: ArrayRef, target: &DataType) -> ArrayRef {
    let widening = matches!(
        (column.data_type(), target),
        (DataType::Int8 | DataType::Int16, DataType::Int32)
            | (
                DataType::Int8 | DataType::Int16 | DataType::Int32,
                DataType::Int64
            )
            | (DataType::Float32, DataType::Float64)
    ) || matches!(
        (column.data_type(), target),
        (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) if s1 == s2 && p2 > p1
    );
    if widening {
        return arrow_cast::cast(&column, target).unwrap_or(column);
    }
    match (column.data_type(), target) {
        // The source's list element has no field id; the lake table's has.
        (DataType::List(from), DataType::List(to)) if from != to => {
            let list = column.as_list::<i32>();
            let values = widen(list.values().clone(), to.data_type());
            match arrow_array::ListArray::try_new(
                to.clone(),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            ) {
                Ok(relabelled) => Arc::new(relabelled),
                Err(_) => column,
            }
        }
        _ => column,
    }
}

/// One parsed partition expression.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionExpr {
    /// Source column.
    pub column: String,
    /// Iceberg transform.
    pub transform: Transform,
}

/// Parse `identity(c)`, `c`, `year|month|day|hour(c)`, `bucket[N](c)`, `truncate[W](c)`.
pub fn parse_partition_expr(expr: &str) -> std::result::Result<PartitionExpr, String> {
    let expr = expr.trim();
    let hint = "write a column name or one of identity(col), year(col), month(col), day(col), hour(col), bucket[N](col), truncate[W](col)";
    let Some(open) = expr.find('(') else {
        if expr.chars().all(|c| c.is_alphanumeric() || c == '_') && !expr.is_empty() {
            return Ok(PartitionExpr {
                column: expr.to_string(),
                transform: Transform::Identity,
            });
        }
        return Err(format!("cannot read partition expression `{expr}`: {hint}"));
    };
    let Some(column) = expr[open + 1..].strip_suffix(')') else {
        return Err(format!(
            "partition expression `{expr}` lacks a closing `)`: {hint}"
        ));
    };
    let name = &expr[..open];
    let transform = match name {
        "identity" | "year" | "month" | "day" | "hour" => Transform::from_str(name),
        _ if name.starts_with("bucket[") || name.starts_with("truncate[") => {
            Transform::from_str(name)
        }
        _ => {
            return Err(format!(
                "unknown partition transform `{name}` in `{expr}`: {hint}"
            ));
        }
    }
    .map_err(|_| format!("cannot read partition transform `{name}` in `{expr}`: {hint}"))?;
    if matches!(transform, Transform::Bucket(0) | Transform::Truncate(0)) {
        return Err(format!("`{expr}`: the width must be positive"));
    }
    Ok(PartitionExpr {
        column: column.trim().to_string(),
        transform,
    })
}

fn transform_suffix(t: &Transform) -> String {
    match t {
        Transform::Identity => String::new(),
        Transform::Bucket(n) => format!("_bucket_{n}"),
        Transform::Truncate(w) => format!("_trunc_{w}"),
        other => format!("_{other}"),
    }
}

/// The partition spec for `exprs` over `schema`.
pub fn partition_spec(
    table: &str,
    schema: &Schema,
    exprs: &[String],
) -> Result<UnboundPartitionSpec> {
    let mut builder = UnboundPartitionSpec::builder();
    for expr in exprs {
        let p =
            parse_partition_expr(expr).map_err(|e| Error::config(format!("table {table}: {e}")))?;
        let field = schema.field_by_name(&p.column).ok_or_else(|| {
            Error::config(format!(
                "table {table}: partition column {} is not a column of the table",
                p.column
            ))
        })?;
        let name = format!("{}{}", p.column, transform_suffix(&p.transform));
        builder = builder
            .add_partition_field(field.id, name, p.transform)
            .map_err(|e| {
                Error::config(format!("table {table}: partition `{expr}`")).with_source(e)
            })?;
    }
    Ok(builder.build())
}

/// Re-stamp a batch with the table's Arrow schema (field ids in metadata, table
/// nullability), matching columns by name. Fails with the table and column when a
/// column is missing or of another type.
pub fn conform(table: &str, target: &ArrowSchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) => widen(c.clone(), field.data_type()),
            None => arrow_array::new_null_array(field.data_type(), batch.num_rows()),
        };
        if column.data_type() != field.data_type() {
            return Err(Error::unsupported(format!(
                "table {table}, column {}: source type {} does not match the lake table's {}",
                field.name(),
                column.data_type(),
                field.data_type()
            )));
        }
        columns.push(column);
    }
    RecordBatch::try_new(target.clone(), columns).map_err(|e| {
        Error::unsupported(format!(
            "table {table}: rows do not fit the lake table's schema"
        ))
        .with_source(e)
    })
}

/// For each column of the table schema, the file column holding it (matched by field id,
/// or by name in files without ids); `None`: the file predates the column.
pub(crate) fn column_sources(
    file: &ArrowSchemaRef,
    table: &ArrowSchemaRef,
    path: &str,
) -> Result<Vec<Option<usize>>> {
    let by_id: HashMap<&str, usize> = file
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.metadata()
                .get(parquet::arrow::PARQUET_FIELD_ID_META_KEY)
                .map(|id| (id.as_str(), i))
        })
        .collect();
    table
        .fields()
        .iter()
        .map(|f| {
            let found = match f.metadata().get(parquet::arrow::PARQUET_FIELD_ID_META_KEY) {
                Some(id) if !by_id.is_empty() => by_id.get(id.as_str()).copied(),
                _ => file.index_of(f.name()).ok(),
            };
            if found.is_none() && !f.is_nullable() {
                return Err(Error::unsupported(format!(
                    "{path}: required column {} is missing",
                    f.name()
                )));
            }
            Ok(found)
        })
        .collect()
}

/// `batch` in the table's schema: columns by their source, widened where the file has a
/// narrower type, null where the file predates the column.
pub(crate) fn conform_file(
    batch: &RecordBatch,
    sources: &[Option<usize>],
    table: &ArrowSchemaRef,
) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = table
        .fields()
        .iter()
        .zip(sources)
        .map(|(f, s)| match s {
            Some(i) => widen(batch.column(*i).clone(), f.data_type()),
            None => new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(table.clone(), columns).map_err(|e| internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Field, Schema as ArrowSchema};

    #[test]
    fn parses_every_transform() {
        let cases = [
            ("status", Transform::Identity),
            ("identity(status)", Transform::Identity),
            ("day(created_at)", Transform::Day),
            ("hour(created_at)", Transform::Hour),
            ("bucket[16](customer_id)", Transform::Bucket(16)),
            ("truncate[4](status)", Transform::Truncate(4)),
        ];
        for (text, t) in cases {
            assert_eq!(parse_partition_expr(text).unwrap().transform, t, "{text}");
        }
        assert!(
            parse_partition_expr("weekday(x)")
                .unwrap_err()
                .contains("unknown partition transform")
        );
        assert!(
            parse_partition_expr("day(x")
                .unwrap_err()
                .contains("closing")
        );
        assert!(parse_partition_expr("bucket[0](x)").is_err());
    }

    #[test]
    fn keys_become_required_identifier_fields() {
        let table = TableSchema {
            name: "t".into(),
            schema: Arc::new(ArrowSchema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("v", DataType::Utf8, true),
            ])),
            key: vec!["id".into()],
        };
        let schema = to_iceberg_schema(&table).unwrap();
        assert_eq!(schema.identifier_field_ids().collect::<Vec<_>>(), vec![1]);
        assert!(schema.field_by_id(1).unwrap().required);
        assert!(!schema.field_by_id(2).unwrap().required);
        let spec = partition_spec("t", &schema, &["bucket[4](id)".into()]).unwrap();
        assert_eq!(spec.fields()[0].name, "id_bucket_4");
        let err = partition_spec("t", &schema, &["day(nope)".into()]).unwrap_err();
        assert!(err.to_string().contains("partition column nope"));
    }

    #[test]
    fn docs_of_source_fields_reach_the_lake_schema() {
        let doc = |f: Field, d: &str| f.with_metadata([(FIELD_DOC.into(), d.into())].into());
        let old = table_of(vec![
            Field::new("id", DataType::Int64, false),
            doc(Field::new("h", DataType::Utf8, true), "hashed"),
        ]);
        let current = to_iceberg_schema(&old).unwrap();
        assert_eq!(
            current.field_by_name("h").unwrap().doc.as_deref(),
            Some("hashed")
        );
        assert_eq!(current.field_by_name("id").unwrap().doc, None);
        let mut fields = old.schema.fields().to_vec();
        fields.push(Arc::new(doc(
            Field::new("g", DataType::Binary, true),
            "WKB",
        )));
        let changes = schema_changes(
            &current,
            &table_of(fields.into_iter().map(|f| f.as_ref().clone()).collect()),
        )
        .unwrap();
        let evolved = with_added(&current, &changes.added, 2).unwrap();
        let g = evolved.field_by_name("g").unwrap();
        assert_eq!((g.id, g.doc.as_deref()), (3, Some("WKB")));
    }

    #[test]
    fn lists_get_element_ids_and_take_source_batches() {
        let list = |dt: DataType| DataType::List(Arc::new(Field::new("element", dt, true)));
        let old = table_of(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("tags", list(DataType::Utf8), true),
            Field::new("n", DataType::Int32, true),
        ]);
        let current = to_iceberg_schema(&old).unwrap();
        let Type::List(tags) = current.field_by_name("tags").unwrap().field_type.as_ref() else {
            panic!("tags is not a list: {current:?}");
        };
        assert_eq!(tags.element_field.id, 4);
        // The same list again is no change; a new list column gets the next ids.
        let mut fields: Vec<Field> = old
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("scores", list(DataType::Int64), true));
        let changes = schema_changes(&current, &table_of(fields)).unwrap();
        assert_eq!(changes.added.len(), 1);
        assert!(changes.promoted.is_empty());
        let evolved = with_added(&current, &changes.added, current.highest_field_id()).unwrap();
        let scores = evolved.field_by_name("scores").unwrap();
        let Type::List(inner) = scores.field_type.as_ref() else {
            panic!("scores is not a list");
        };
        assert_eq!((scores.id, inner.element_field.id), (5, 6));
        // A source batch (element without field id) fits the lake's Arrow schema.
        let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(&evolved).unwrap());
        let tags =
            arrow_array::ListArray::from_iter_primitive::<arrow_array::types::Int64Type, _, _>([
                Some(vec![Some(1), None]),
                None,
            ]);
        let batch = RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("scores", tags.data_type().clone(), true),
            ])),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1, 2])),
                Arc::new(tags),
            ],
        )
        .unwrap();
        let conformed = conform("t", &target, &batch).unwrap();
        assert_eq!(
            conformed
                .column_by_name("scores")
                .unwrap()
                .as_list::<i32>()
                .value_length(0),
            2
        );
        // A lake column of text arrays and a source list: the error names arrays = "text".
        let text = table_of(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("tags", DataType::Utf8, true),
        ]);
        let e = schema_changes(&to_iceberg_schema(&text).unwrap(), &old).unwrap_err();
        assert!(e.to_string().contains("arrays = \"text\""), "{e}");
    }

    fn table_of(fields: Vec<Field>) -> TableSchema {
        TableSchema {
            name: "db.t".into(),
            schema: Arc::new(ArrowSchema::new(fields)),
            key: vec!["id".into()],
        }
    }

    #[test]
    fn new_columns_widenings_and_refused_type_changes() {
        let old = table_of(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("x", DataType::Float32, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
        ]);
        let current = to_iceberg_schema(&old).unwrap();
        let wider = table_of(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("d", DataType::Decimal128(18, 2), true),
            Field::new("note", DataType::Utf8, true),
        ]);
        let changes = schema_changes(&current, &wider).unwrap();
        assert_eq!(changes.added.len(), 1);
        assert_eq!(changes.added[0].name, "note");
        let promoted: Vec<&str> = changes.promoted.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(promoted, ["id", "x", "d"]);
        let unchanged = schema_changes(&current, &old).unwrap();
        assert!(unchanged.added.is_empty() && unchanged.promoted.is_empty());
        // The promoted schema keeps field ids and the key, and takes the old rows.
        let promoted_schema = with_promotions(&current, &changes.promoted).unwrap();
        assert_eq!(promoted_schema.field_by_name("id").unwrap().id, 1);
        assert_eq!(
            *promoted_schema.field_by_name("id").unwrap().field_type,
            Type::Primitive(PrimitiveType::Long)
        );
        assert_eq!(
            promoted_schema.identifier_field_ids().collect::<Vec<_>>(),
            vec![1]
        );
        assert!(
            schema_changes(&promoted_schema, &old)
                .unwrap()
                .promoted
                .is_empty()
        );
        for (field, why) in [
            (Field::new("id", DataType::Utf8, false), "int to string"),
            (Field::new("d", DataType::Decimal128(18, 4), true), "scale"),
            (Field::new("x", DataType::Int64, true), "float to long"),
        ] {
            let mut fields: Vec<Field> = old
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            let i = fields
                .iter()
                .position(|f| f.name() == field.name())
                .unwrap();
            fields[i] = field;
            let err = schema_changes(&current, &table_of(fields))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("table db.t, column "), "{why}: {err}");
        }
    }

    #[test]
    fn narrower_batches_are_widened_to_the_lake_type() {
        let target: ArrowSchemaRef = Arc::new(ArrowSchema::new(vec![Field::new(
            "id",
            DataType::Int64,
            false,
        )]));
        let narrow = RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![Field::new(
                "id",
                DataType::Int32,
                false,
            )])),
            vec![Arc::new(arrow_array::Int32Array::from(vec![1, -2]))],
        )
        .unwrap();
        let out = conform("t", &target, &narrow).unwrap();
        assert_eq!(out.column(0).data_type(), &DataType::Int64);
    }

    #[test]
    fn unsupported_types_name_table_and_column() {
        let err = iceberg_type("db.t", "c", &DataType::Duration(TimeUnit::Second)).unwrap_err();
        assert!(err.to_string().starts_with("table db.t, column c:"));
    }
}
