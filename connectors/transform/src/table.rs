//! One transform compiled for one table's schema, and its application to a batch.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use lakeshore_api::{ChangeBatch, Op, TableSchema};
use sha2::{Digest, Sha256};

use crate::expr::{self, Compiled};
use crate::{Mask, Meta, TransformSpec};

/// The time zone of the timestamp metadata columns (as the sources write `timestamptz`).
const UTC: &str = "+00:00";

/// Where an output column's values come from.
#[derive(Debug, Clone)]
enum From {
    /// Column `i` of the working batch (kept source columns, then metadata columns).
    Work(usize),
    /// Computed column `i`.
    Computed(usize),
}

#[derive(Debug, Clone)]
struct Out {
    from: From,
    mask: Option<Mask>,
}

/// A [`TransformSpec`] compiled for one source table's schema.
#[derive(Debug, Clone)]
pub struct TableTransform {
    /// Input columns kept, by index.
    keep: Vec<usize>,
    /// Metadata columns of the working batch, after the kept columns.
    meta: Vec<Meta>,
    /// Kept columns and metadata columns: what expressions see.
    work: SchemaRef,
    filter: Option<Compiled>,
    compute: Vec<Compiled>,
    outputs: Vec<Out>,
    /// The shaped table the engine sees.
    output: TableSchema,
}

/// What a transform refuses, naming the table and the column.
fn refuse(table: &str, what: impl std::fmt::Display) -> String {
    format!("transform of table {table}: {what}")
}

impl TableTransform {
    /// Compile `spec` for `input`. Errors say what to write instead.
    pub fn new(spec: &TransformSpec, input: &TableSchema) -> Result<Self, String> {
        let table = input.name.as_str();
        let (keep, work) = working_columns(spec, input)?;
        let located = |what: &str, e: expr::ExprError| refuse(table, format!("{what}: {e}"));
        let filter = match &spec.filter {
            None => None,
            Some(sql) => {
                let c = expr::compile(sql, &work).map_err(|e| located("filter", e))?;
                if c.data_type != DataType::Boolean {
                    return Err(refuse(
                        table,
                        format!(
                            "filter must be a condition (true or false), but gives {}; \
                                 compare it, e.g. `... = 'value'` or `... IS NOT NULL`",
                            c.data_type
                        ),
                    ));
                }
                Some(c)
            }
        };
        let mut compute = Vec::new();
        let mut outputs: Vec<(String, Out, Field)> = (0..keep.len())
            .map(|i| {
                let f = work.field(i);
                (
                    f.name().clone(),
                    Out {
                        from: From::Work(i),
                        mask: None,
                    },
                    f.clone(),
                )
            })
            .collect();
        for (name, sql) in &spec.compute {
            if Meta::by_name(name).is_some() {
                return Err(refuse(
                    table,
                    format!("{name} is a metadata column; give the computed column another name"),
                ));
            }
            let c = expr::compile(sql, &work).map_err(|e| located(&format!("column {name}"), e))?;
            let field = Field::new(name, lake_type(&c.data_type), c.nullable);
            let out = Out {
                from: From::Computed(compute.len()),
                mask: None,
            };
            compute.push(c);
            match outputs.iter_mut().find(|(n, ..)| n == name) {
                Some(slot) => *slot = (name.clone(), out, field),
                None => outputs.push((name.clone(), out, field)),
            }
        }
        for (i, m) in spec.metadata.iter().enumerate() {
            outputs.push((
                m.name().to_string(),
                Out {
                    from: From::Work(keep.len() + i),
                    mask: None,
                },
                work.field(keep.len() + i).clone(),
            ));
        }
        apply_masks(table, spec, &mut outputs)?;
        let key = lake_key(spec, input, &outputs, &work, &compute)?;
        let schema = Arc::new(Schema::new(
            outputs
                .iter()
                .map(|(_, _, f)| f.clone())
                .collect::<Vec<_>>(),
        ));
        Ok(TableTransform {
            keep,
            meta: spec.metadata.clone(),
            work,
            filter,
            compute,
            outputs: outputs.into_iter().map(|(_, o, _)| o).collect(),
            output: TableSchema {
                name: input.name.clone(),
                schema,
                key,
            },
        })
    }

    /// The shaped table.
    pub fn output(&self) -> &TableSchema {
        &self.output
    }

    /// True when the transform adds `_source_ts` or `_position`.
    pub fn needs_origin(&self) -> bool {
        self.meta.iter().any(|m| m.needs_origin())
    }

    /// Shape `batch` (rows of the input schema); `None` when the filter leaves no row.
    /// `now` (µs since the epoch) is `_ingested_at`.
    pub fn apply(&self, batch: &ChangeBatch, now: i64) -> Result<Option<ChangeBatch>, String> {
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = self
            .keep
            .iter()
            .map(|&i| Arc::clone(batch.rows.column(i)))
            .collect();
        for m in &self.meta {
            columns.push(meta_array(*m, batch, now));
        }
        let work = RecordBatch::try_new(Arc::clone(&self.work), columns)
            .map_err(|e| format!("shaping a batch: {e}"))?;
        let (work, ops) = match &self.filter {
            None => (work, Arc::clone(&batch.ops)),
            Some(f) => {
                let value = f.evaluate(&work).map_err(|e| format!("filter: {e}"))?;
                let matches = value.as_boolean();
                let mut ops = Vec::with_capacity(n);
                let keep: BooleanArray = (0..n)
                    .map(|i| {
                        let hit = matches.is_valid(i) && matches.value(i);
                        Some(match batch.op(i) {
                            Op::Insert if !hit => false,
                            // Out of the filter: whatever the lake holds for the key goes.
                            Op::UpdateAfter if !hit => {
                                ops.push(Op::Delete);
                                true
                            }
                            op => {
                                ops.push(op);
                                true
                            }
                        })
                    })
                    .collect();
                if ops.is_empty() {
                    return Ok(None);
                }
                let work = if ops.len() == n {
                    work
                } else {
                    arrow_select::filter::filter_record_batch(&work, &keep)
                        .map_err(|e| format!("filtering a batch: {e}"))?
                };
                let ops: Arc<[Op]> = if ops.iter().all(|o| *o == Op::Insert) {
                    Arc::from(Vec::new())
                } else {
                    Arc::from(ops)
                };
                (work, ops)
            }
        };
        let computed: Vec<ArrayRef> = self
            .compute
            .iter()
            .map(|c| c.evaluate(&work))
            .collect::<Result<_, _>>()?;
        let schema = &self.output.schema;
        let mut columns = Vec::with_capacity(self.outputs.len());
        for (out, field) in self.outputs.iter().zip(schema.fields()) {
            let values = match out.from {
                From::Work(i) => Arc::clone(work.column(i)),
                From::Computed(i) => Arc::clone(&computed[i]),
            };
            let values = match &out.mask {
                None => values,
                Some(m) => mask(&values, m)?,
            };
            let values = if values.data_type() == field.data_type() {
                values
            } else {
                arrow_cast::cast(&values, field.data_type())
                    .map_err(|e| format!("column {}: {e}", field.name()))?
            };
            columns.push(values);
        }
        let rows = RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())?;
        Ok(Some(ChangeBatch {
            table: Arc::clone(&batch.table),
            rows,
            ops,
            origin: batch.origin.clone(),
        }))
    }
}

/// The input columns kept (by index) and the working schema: those columns, then the
/// metadata columns.
fn working_columns(
    spec: &TransformSpec,
    input: &TableSchema,
) -> Result<(Vec<usize>, SchemaRef), String> {
    let table = input.name.as_str();
    let rule = spec.column_rule();
    let keep: Vec<usize> = (0..input.schema.fields().len())
        .filter(|&i| rule.keeps(input.schema.field(i).name()))
        .collect();
    let mut fields: Vec<FieldRef> = keep
        .iter()
        .map(|&i| Arc::clone(&input.schema.fields()[i]))
        .collect();
    for m in &spec.metadata {
        if fields.iter().any(|f| f.name() == m.name()) {
            return Err(refuse(
                table,
                format!(
                    "the source already has a column {}; exclude it or leave {} out of \
                         `metadata`",
                    m.name(),
                    m.name()
                ),
            ));
        }
        fields.push(Arc::new(meta_field(*m)));
    }
    Ok((keep, Arc::new(Schema::new(fields))))
}

/// Set each masked output column's mask and field.
fn apply_masks(
    table: &str,
    spec: &TransformSpec,
    outputs: &mut [(String, Out, Field)],
) -> Result<(), String> {
    for (column, mask) in &spec.masks {
        let Some((_, out, field)) = outputs.iter_mut().find(|(n, ..)| n == column) else {
            return Err(refuse(
                table,
                format!(
                    "mask on column {column}, which the table does not have (or the \
                         transform leaves out); its columns: {}",
                    names(outputs)
                ),
            ));
        };
        *field = masked_field(field, mask)
            .map_err(|m| refuse(table, format!("column {column}: {m}")))?;
        out.mask = Some(mask.clone());
    }
    Ok(())
}

/// The lake table's key: the spec's or the source's, each column in the output, not
/// made ambiguous by a mask, and computable from what a delete carries.
fn lake_key(
    spec: &TransformSpec,
    input: &TableSchema,
    outputs: &[(String, Out, Field)],
    work: &Schema,
    compute: &[Compiled],
) -> Result<Vec<String>, String> {
    let table = input.name.as_str();
    let key = spec.key.clone().unwrap_or_else(|| input.key.clone());
    for k in &key {
        let Some((_, out, _)) = outputs.iter().find(|(n, ..)| n == k) else {
            let fix = if spec.key.is_some() {
                "list only columns the lake table has in `key`"
            } else {
                "keep it, or set `key` to the columns that identify a row"
            };
            return Err(refuse(
                table,
                format!("key column {k} is not in the lake table; {fix}"),
            ));
        };
        if let Some(m @ (Mask::Redact(_) | Mask::Truncate(_))) = &out.mask {
            return Err(refuse(
                table,
                format!(
                    "key column {k} is masked with {m:?}, which makes different rows \
                         equal; mask it with \"hash\", or take it out of the key"
                ),
            ));
        }
        // A delete (or the old image of an update) carries only the source's key:
        // a lake key must be computable from it, or the lake could not find the row.
        let from_source_key =
            |c: &str| input.key.iter().any(|s| s == c) || c == Meta::SourceTable.name();
        let determined = match &out.from {
            From::Work(i) => from_source_key(work.field(*i).name()),
            From::Computed(i) => compute[*i].columns.iter().all(|c| from_source_key(c)),
        };
        if spec.key.is_some() && !determined {
            let source_key = if input.key.is_empty() {
                "it has none".to_string()
            } else {
                input.key.join(", ")
            };
            return Err(refuse(
                table,
                format!(
                    "key column {k} is not determined by the source table's key \
                         ({source_key}): a delete at the source names only that key, so \
                         the lake could not find the row; build the key from the source's \
                         key columns and _source_table"
                ),
            ));
        }
    }
    Ok(key)
}

fn names(outputs: &[(String, Out, Field)]) -> String {
    outputs
        .iter()
        .map(|(n, ..)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type a lake table stores for an expression's result type.
fn lake_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| Arc::from(UTC)))
        }
        DataType::Time64(_) | DataType::Time32(_) => DataType::Time64(TimeUnit::Microsecond),
        DataType::Date64 => DataType::Date32,
        other => other.clone(),
    }
}

fn meta_field(m: Meta) -> Field {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)));
    match m {
        Meta::Op => Field::new(m.name(), DataType::Utf8, false),
        Meta::SourceTs => Field::new(m.name(), ts, true),
        Meta::Position => Field::new(m.name(), DataType::Utf8, true),
        Meta::SourceTable => Field::new(m.name(), DataType::Utf8, false),
        Meta::IngestedAt => Field::new(m.name(), ts, false),
    }
}

fn meta_array(m: Meta, batch: &ChangeBatch, now: i64) -> ArrayRef {
    let n = batch.num_rows();
    match m {
        Meta::Op => Arc::new(StringArray::from_iter_values((0..n).map(
            |i| match batch.op(i) {
                Op::Insert if batch.origin.snapshot => "snapshot",
                Op::Insert => "insert",
                Op::UpdateAfter => "update",
                Op::UpdateBefore => "update_before",
                Op::Delete => "delete",
            },
        ))),
        Meta::SourceTable => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            batch.table.as_ref(),
            n,
        ))),
        Meta::IngestedAt => {
            Arc::new(TimestampMicrosecondArray::from_value(now, n).with_timezone(UTC))
        }
        Meta::SourceTs => batch
            .origin
            .source_ts
            .clone()
            .unwrap_or_else(|| new_null_array(meta_field(m).data_type(), n)),
        Meta::Position => batch
            .origin
            .position
            .clone()
            .unwrap_or_else(|| new_null_array(&DataType::Utf8, n)),
    }
}

/// The field of a column after `mask`, or why the mask cannot apply.
fn masked_field(field: &Field, mask: &Mask) -> Result<Field, String> {
    let string_like = matches!(
        field.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    let binary_like = matches!(
        field.data_type(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    );
    Ok(match mask {
        Mask::Hash { .. } => field.clone().with_data_type(DataType::Utf8),
        Mask::Redact(None) => field.clone().with_nullable(true),
        Mask::Redact(Some(_)) => field.clone().with_data_type(DataType::Utf8),
        Mask::Truncate(_) if string_like => field.clone().with_data_type(DataType::Utf8),
        Mask::Truncate(_) if binary_like => field.clone().with_data_type(DataType::Binary),
        Mask::Truncate(_) => {
            return Err(format!(
                "truncate applies to strings and binary values, not {}; use \"hash\" or \
                     \"redact\", or compute a shorter value",
                field.data_type()
            ));
        }
    })
}

fn mask(values: &ArrayRef, mask: &Mask) -> Result<ArrayRef, String> {
    let n = values.len();
    Ok(match mask {
        Mask::Redact(None) => new_null_array(values.data_type(), n),
        Mask::Redact(Some(c)) => Arc::new(
            (0..n)
                .map(|i| values.is_valid(i).then_some(c.as_str()))
                .collect::<StringArray>(),
        ),
        Mask::Hash { salt } => {
            let mut out = StringBuilder::with_capacity(n, n * 64);
            let mut hex = [0u8; 64];
            each_bytes(values, |v| match v {
                None => out.append_null(),
                Some(bytes) => {
                    let digest = Sha256::new()
                        .chain_update(salt.as_bytes())
                        .chain_update(bytes)
                        .finalize();
                    for (i, b) in digest.iter().enumerate() {
                        hex[2 * i] = HEX[(b >> 4) as usize];
                        hex[2 * i + 1] = HEX[(b & 15) as usize];
                    }
                    out.append_value(std::str::from_utf8(&hex).expect("hex digits"));
                }
            })?;
            Arc::new(out.finish())
        }
        Mask::Truncate(len) => match values.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                let mut out = arrow_array::builder::BinaryBuilder::new();
                each_bytes(values, |v| {
                    out.append_option(v.map(|b| &b[..b.len().min(*len)]))
                })?;
                Arc::new(out.finish())
            }
            _ => {
                let text = arrow_cast::cast(values, &DataType::Utf8).map_err(|e| e.to_string())?;
                let text = text.as_string::<i32>();
                Arc::new(
                    text.iter()
                        .map(|v| v.map(|s| s.char_indices().nth(*len).map_or(s, |(i, _)| &s[..i])))
                        .collect::<StringArray>(),
                )
            }
        },
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Each value of `values` as bytes: binary values as they are, everything else as its
/// text (UTF-8).
fn each_bytes(values: &ArrayRef, mut f: impl FnMut(Option<&[u8]>)) -> Result<(), String> {
    match values.data_type() {
        DataType::Binary => values.as_binary::<i32>().iter().for_each(f),
        DataType::LargeBinary => values.as_binary::<i64>().iter().for_each(f),
        DataType::BinaryView => values.as_binary_view().iter().for_each(f),
        DataType::Utf8 => values
            .as_string::<i32>()
            .iter()
            .for_each(|v| f(v.map(str::as_bytes))),
        _ => {
            let text = arrow_cast::cast(values, &DataType::Utf8).map_err(|e| e.to_string())?;
            text.as_string::<i32>()
                .iter()
                .for_each(|v| f(v.map(str::as_bytes)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    fn input() -> TableSchema {
        TableSchema {
            name: "shop.orders_1".into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("email", DataType::Utf8, true),
                Field::new("region", DataType::Utf8, true),
                Field::new("card", DataType::Utf8, true),
            ])),
            key: vec!["id".into()],
        }
    }

    fn batch(ops: &[Op], snapshot: bool) -> ChangeBatch {
        let n = ops.len() as i64;
        let rows = RecordBatch::try_new(
            input().schema,
            vec![
                Arc::new(Int64Array::from_iter_values(1..=n)),
                Arc::new(StringArray::from_iter_values(
                    (1..=n).map(|i| format!("u{i}@x.org")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (1..=n).map(|i| if i % 2 == 0 { "eu" } else { "us" }),
                )),
                Arc::new(StringArray::from_iter_values(
                    (1..=n).map(|i| format!("4111-{i}")),
                )),
            ],
        )
        .unwrap();
        let mut b = ChangeBatch::inserts("shop.orders_1".into(), rows);
        b.ops = Arc::from(ops.to_vec());
        b.origin.snapshot = snapshot;
        b
    }

    fn spec() -> TransformSpec {
        TransformSpec {
            tables: "shop.orders_*".into(),
            exclude: vec!["card".into()],
            masks: vec![(
                "email".into(),
                Mask::Hash {
                    salt: "pepper".into(),
                },
            )],
            filter: Some("region = 'eu'".into()),
            compute: vec![("id_text".into(), "'#' || CAST(id AS VARCHAR)".into())],
            key: Some(vec!["_source_table".into(), "id".into()]),
            metadata: vec![Meta::Op, Meta::SourceTable],
            ..TransformSpec::default()
        }
    }

    #[test]
    fn a_transform_shapes_columns_key_and_rows() {
        let t = TableTransform::new(&spec(), &input()).unwrap();
        let names: Vec<&str> = t
            .output()
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            ["id", "email", "region", "id_text", "_op", "_source_table"]
        );
        assert_eq!(t.output().key, ["_source_table", "id"]);
        let ops = [
            Op::Insert,
            Op::Insert,
            Op::UpdateAfter,
            Op::UpdateAfter,
            Op::Delete,
        ];
        let out = t.apply(&batch(&ops, false), 7).unwrap().unwrap();
        // Row 1 (us) is an insert outside the filter: gone; row 3 (us) an update that
        // left it: a delete of its key; row 5 a delete: kept whatever its values.
        let ids = out
            .rows
            .column(0)
            .as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![2, 3, 4, 5]);
        assert_eq!(
            &out.ops[..],
            &[Op::Insert, Op::Delete, Op::UpdateAfter, Op::Delete]
        );
        let email = out.rows.column(1).as_string::<i32>();
        let expected = Sha256::new()
            .chain_update(b"pepper")
            .chain_update(b"u2@x.org")
            .finalize();
        let expected: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(email.value(0), expected);
        assert_eq!(out.rows.column(3).as_string::<i32>().value(0), "#2");
        assert_eq!(out.rows.column(4).as_string::<i32>().value(0), "insert");
        assert_eq!(
            out.rows.column(5).as_string::<i32>().value(0),
            "shop.orders_1"
        );
        let snap = t
            .apply(&batch(&[Op::Insert, Op::Insert], true), 7)
            .unwrap()
            .unwrap();
        assert_eq!(snap.rows.column(4).as_string::<i32>().value(0), "snapshot");
        assert!(snap.is_insert_only());
        assert!(t.apply(&batch(&[Op::Insert], false), 7).unwrap().is_none());
    }

    #[test]
    fn masks_truncate_and_redact() {
        let mut s = TransformSpec {
            masks: vec![
                ("email".into(), Mask::Truncate(3)),
                ("card".into(), Mask::Redact(Some("****".into()))),
                ("region".into(), Mask::Redact(None)),
            ],
            ..TransformSpec::default()
        };
        let t = TableTransform::new(&s, &input()).unwrap();
        let out = t.apply(&batch(&[Op::Insert], false), 0).unwrap().unwrap();
        assert_eq!(out.rows.column(1).as_string::<i32>().value(0), "u1@");
        assert!(out.rows.column(2).is_null(0));
        assert_eq!(out.rows.column(3).as_string::<i32>().value(0), "****");
        s.masks = vec![("id".into(), Mask::Truncate(2))];
        let e = TableTransform::new(&s, &input()).unwrap_err();
        assert!(e.contains("truncate applies to strings"), "{e}");
    }

    #[test]
    fn refusals_say_what_to_write_instead() {
        let with = |f: &dyn Fn(&mut TransformSpec)| {
            let mut s = spec();
            f(&mut s);
            TableTransform::new(&s, &input()).unwrap_err()
        };
        let e = with(&|s| s.key = Some(vec!["email".into()]));
        assert!(
            e.contains("not determined by the source table's key (id)"),
            "{e}"
        );
        let e = with(&|s| s.exclude = vec!["id".into()]);
        assert!(e.contains("column id_text: No field named id"), "{e}");
        let e = with(&|s| {
            s.exclude = vec!["id".into()];
            s.compute.clear();
        });
        assert!(e.contains("key column id is not in the lake table"), "{e}");
        let e = with(&|s| s.masks = vec![("card".into(), Mask::Redact(None))]);
        assert!(e.contains("mask on column card"), "{e}");
        let e = with(&|s| s.filter = Some("card = 'x'".into()));
        assert!(e.contains("filter") && e.contains("card"), "{e}");
        let e = with(&|s| s.filter = Some("id + 1".into()));
        assert!(e.contains("must be a condition"), "{e}");
        let e = with(&|s| s.masks = vec![("id".into(), Mask::Redact(None))]);
        assert!(e.contains("makes different rows equal"), "{e}");
        let e = with(&|s| s.compute = vec![("_op".into(), "1".into())]);
        assert!(e.contains("metadata column"), "{e}");
    }
}
