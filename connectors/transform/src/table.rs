//! One transform compiled for one table's schema, and its application to a batch.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow_schema::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use lakeshore_api::{ChangeBatch, Op, TableSchema};

use crate::clock::Clock;
use crate::expr::{self, Compiled};
use crate::mask::{mask, masked_field};
use crate::{Mask, Meta, Mode, TransformSpec};

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
    /// A column of the lake table's key.
    keyed: bool,
    /// A metadata column.
    meta: bool,
}

/// The columns `soft_delete` adds, after all others.
const DELETED: &str = "_deleted";
const DELETED_AT: &str = "_deleted_at";

/// A [`TransformSpec`] compiled for one source table's schema.
#[derive(Debug, Clone)]
pub struct TableTransform {
    /// Input columns kept, by index.
    keep: Vec<usize>,
    /// Input columns of the source's key, by index.
    source_key: Vec<usize>,
    /// Metadata columns of the working batch, after the kept columns.
    meta: Vec<Meta>,
    /// Kept columns and metadata columns: what expressions see.
    work: SchemaRef,
    filter: Option<Compiled>,
    compute: Vec<Compiled>,
    outputs: Vec<Out>,
    /// The shaped table the engine sees.
    output: TableSchema,
    mode: Mode,
    /// A changelog keeps each update's old image as an `update_before` row.
    before_images: bool,
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
                        keyed: false,
                        meta: false,
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
                keyed: false,
                meta: false,
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
                    keyed: false,
                    meta: true,
                },
                work.field(keep.len() + i).clone(),
            ));
        }
        apply_masks(table, spec, &mut outputs)?;
        let key = lake_key(spec, input, &outputs, &work, &compute)?;
        let (key, fields) = mode_fields(spec.mode, table, key, &mut outputs)?;
        let schema = Arc::new(Schema::new(fields));
        let source_key = input
            .key
            .iter()
            .filter_map(|k| input.schema.index_of(k).ok())
            .collect();
        Ok(TableTransform {
            source_key,
            mode: spec.mode,
            before_images: spec.before_images && spec.mode == Mode::Changelog,
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

    /// Shape `batch` (rows of the input schema); `None` when no row is left. `clock`
    /// gives `_ingested_at` and `_seq`.
    pub fn apply(
        &self,
        batch: &ChangeBatch,
        clock: &mut Clock,
    ) -> Result<Option<ChangeBatch>, String> {
        let n = batch.num_rows();
        let now = clock.now_micros();
        let seq = clock.take(n);
        let mut columns: Vec<ArrayRef> = self
            .keep
            .iter()
            .map(|&i| Arc::clone(batch.rows.column(i)))
            .collect();
        for m in &self.meta {
            columns.push(meta_array(*m, batch, now, seq));
        }
        let work = RecordBatch::try_new(Arc::clone(&self.work), columns)
            .map_err(|e| format!("shaping a batch: {e}"))?;
        let fates = self.fates(batch, &work)?;
        let rows = Rows::of(self.mode, batch, &fates, now);
        if rows.ops.is_empty() {
            return Ok(None);
        }
        let mut work = if rows.ops.len() == n {
            work
        } else {
            let keep: BooleanArray = fates.iter().map(|f| Some(*f != Fate::Drop)).collect();
            arrow_select::filter::filter_record_batch(&work, &keep)
                .map_err(|e| format!("filtering a batch: {e}"))?
        };
        if let Some(i) = self.meta.iter().position(|m| *m == Meta::Op) {
            // What the row is now: a filter may have turned an update into a delete.
            let mut columns = work.columns().to_vec();
            columns[self.keep.len() + i] = Arc::new(StringArray::from(rows.op_names.clone()));
            work = RecordBatch::try_new(work.schema(), columns).map_err(|e| e.to_string())?;
        }
        let computed: Vec<ArrayRef> = self
            .compute
            .iter()
            .map(|c| c.evaluate(&work))
            .collect::<Result<_, _>>()?;
        let schema = &self.output.schema;
        let exits = rows.exits.then(|| BooleanArray::from(rows.exit.clone()));
        let mut columns = Vec::with_capacity(self.outputs.len() + 2);
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
            // A row that left the filter is deleted by its key: its other values, now
            // outside the filter, do not reach the lake (a mirrored table only reads a
            // delete's key; the other modes' columns outside the key may be null).
            let values = match &exits {
                Some(exit) if self.mode != Mode::Mirror && !out.keyed && !out.meta => {
                    arrow_select::nullif::nullif(&values, exit).map_err(|e| e.to_string())?
                }
                _ => values,
            };
            columns.push(values);
        }
        if self.mode == Mode::SoftDelete {
            columns.push(Arc::new(BooleanArray::from(rows.marked)));
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(rows.deleted_at).with_timezone(UTC),
            ));
        }
        let out = RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())?;
        let ops: Arc<[Op]> = if rows.ops.iter().all(|o| *o == Op::Insert) {
            Arc::from(Vec::new())
        } else {
            Arc::from(rows.ops)
        };
        Ok(Some(ChangeBatch {
            table: Arc::clone(&batch.table),
            rows: out,
            ops,
            origin: batch.origin.clone(),
        }))
    }

    /// What becomes of each row of `batch` (`work`: its kept and metadata columns).
    fn fates(&self, batch: &ChangeBatch, work: &RecordBatch) -> Result<Vec<Fate>, String> {
        let verdict = match &self.filter {
            None => None,
            Some(f) => Some(f.evaluate(work).map_err(|e| format!("filter: {e}"))?),
        };
        let verdict = verdict.as_ref().map(|v| v.as_boolean());
        // Met: the condition is true. Out: it is false (not null: a delete that carries
        // only its key may well have been in the lake).
        let met = |i: usize| verdict.is_none_or(|v| v.is_valid(i) && v.value(i));
        let out = |i: usize| verdict.is_some_and(|v| v.is_valid(i) && !v.value(i));
        Ok((0..batch.num_rows())
            .map(|i| match (batch.op(i), self.mode) {
                (Op::Insert, _) if !met(i) => Fate::Drop,
                (Op::UpdateAfter, _) if !met(i) => Fate::Exit,
                // Asked for: the old image of an update that keeps its key and was in
                // the filter (one from outside it is no row of this table).
                (Op::UpdateBefore, Mode::Changelog)
                    if self.before_images && !out(i) && self.same_key_follows(batch, i) =>
                {
                    Fate::Before
                }
                // The old image of an update that keeps its key says nothing the new
                // one does not; that of a key change is the removal of the old key.
                (Op::UpdateBefore, Mode::Changelog | Mode::SoftDelete)
                    if self.same_key_follows(batch, i) =>
                {
                    Fate::Drop
                }
                (Op::Delete | Op::UpdateBefore, Mode::Changelog) if out(i) => Fate::Drop,
                (Op::Delete | Op::UpdateBefore, Mode::SoftDelete) if !out(i) => Fate::Mark,
                (op, _) => Fate::Keep(op),
            })
            .collect())
    }

    /// Row `i + 1` of `batch` is the new image of the same key as row `i`.
    fn same_key_follows(&self, batch: &ChangeBatch, i: usize) -> bool {
        i + 1 < batch.num_rows()
            && batch.op(i + 1) == Op::UpdateAfter
            && self.source_key.iter().all(|&k| {
                let c = batch.rows.column(k);
                arrow_ord::ord::make_comparator(c, c, arrow_schema::SortOptions::default())
                    .is_ok_and(|cmp| cmp(i, i + 1).is_eq())
            })
    }

    /// A changelog's row for `TRUNCATE` of the table: `_op = 'truncate'`, its metadata,
    /// every other column null. `None` outside changelog mode.
    pub fn truncated(&self, table: &Arc<str>, clock: &mut Clock) -> Option<ChangeBatch> {
        if self.mode != Mode::Changelog {
            return None;
        }
        let now = clock.now_micros();
        let seq = clock.take(1);
        let origin = ChangeBatch::inserts(
            Arc::clone(table),
            RecordBatch::new_empty(Arc::new(Schema::empty())),
        );
        let columns = self
            .outputs
            .iter()
            .zip(self.output.schema.fields())
            .map(|(out, field)| match out.from {
                From::Work(i) if i >= self.keep.len() => match self.meta[i - self.keep.len()] {
                    Meta::Op => Arc::new(StringArray::from(vec!["truncate"])) as ArrayRef,
                    m => meta_array_of(m, &origin, 1, now, seq),
                },
                _ => new_null_array(field.data_type(), 1),
            })
            .collect();
        let rows = RecordBatch::try_new(Arc::clone(&self.output.schema), columns).ok()?;
        Some(ChangeBatch::inserts(Arc::clone(table), rows))
    }
}

/// What becomes of one source row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Not in the lake (outside the filter; an old image in a changelog).
    Drop,
    /// Lands with this operation.
    Keep(Op),
    /// An update that left the filter: a delete of its key.
    Exit,
    /// A delete kept as a marker row (`soft_delete`).
    Mark,
    /// The old image of an update, kept in a changelog (`before_images`).
    Before,
}

/// The rows that land, one entry each: their operation and what the mode adds.
struct Rows {
    ops: Vec<Op>,
    op_names: Vec<&'static str>,
    /// Left the filter (delete by key, other values withheld).
    exit: Vec<bool>,
    exits: bool,
    /// Soft-deleted, and when.
    marked: Vec<bool>,
    deleted_at: Vec<Option<i64>>,
}

impl Rows {
    fn of(mode: Mode, batch: &ChangeBatch, fates: &[Fate], now: i64) -> Rows {
        let n = fates.len();
        let mut rows = Rows {
            ops: Vec::with_capacity(n),
            op_names: Vec::with_capacity(n),
            exit: Vec::with_capacity(n),
            exits: false,
            marked: Vec::new(),
            deleted_at: Vec::new(),
        };
        let source_ts = batch
            .origin
            .source_ts
            .as_ref()
            .map(|a| a.as_primitive::<arrow_array::types::TimestampMicrosecondType>());
        for (i, fate) in fates.iter().enumerate() {
            let (op, name) = match *fate {
                Fate::Drop => continue,
                // In a changelog an old image kept is the delete of its key.
                Fate::Keep(Op::UpdateBefore) if mode == Mode::Changelog => {
                    (Op::UpdateBefore, "delete")
                }
                Fate::Keep(op) => (op, op_name(op, batch.origin.snapshot)),
                Fate::Exit => (Op::Delete, "delete"),
                Fate::Before => (Op::UpdateBefore, "update_before"),
                // A marker replaces the row: an update of the key to its last values.
                Fate::Mark => (Op::UpdateAfter, "delete"),
            };
            let op = match (mode, op) {
                (Mode::Changelog, _) => Op::Insert,
                // A stream insert may meet the marker of a key deleted before: an upsert.
                (Mode::SoftDelete, Op::Insert) if !batch.origin.snapshot => Op::UpdateAfter,
                (_, op) => op,
            };
            rows.ops.push(op);
            rows.op_names.push(name);
            rows.exit.push(*fate == Fate::Exit);
            rows.exits |= *fate == Fate::Exit;
            if mode == Mode::SoftDelete {
                let marked = *fate == Fate::Mark;
                rows.marked.push(marked);
                rows.deleted_at.push(marked.then(|| {
                    source_ts
                        .filter(|t| t.is_valid(i))
                        .map_or(now, |t| t.value(i))
                }));
            }
        }
        rows
    }
}

fn op_name(op: Op, snapshot: bool) -> &'static str {
    match op {
        Op::Insert if snapshot => "snapshot",
        Op::Insert => "insert",
        Op::UpdateAfter => "update",
        Op::UpdateBefore => "update_before",
        Op::Delete => "delete",
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

/// The lake table's key and columns under `mode`: a changelog has no key and every
/// column may be null (a delete carries only its key where the source sends no more, a
/// truncation nothing); soft deletes add `_deleted` and `_deleted_at`, and the columns
/// outside the key may be null (a row that left the filter is deleted by its key).
fn mode_fields(
    mode: Mode,
    table: &str,
    key: Vec<String>,
    outputs: &mut [(String, Out, Field)],
) -> Result<(Vec<String>, Vec<Field>), String> {
    for (name, out, _) in outputs.iter_mut() {
        out.keyed = key.contains(name);
    }
    let mut fields: Vec<Field> = outputs
        .iter()
        .map(|(_, out, f)| match mode {
            Mode::Mirror => f.clone(),
            Mode::Changelog => f.clone().with_nullable(f.is_nullable() || !out.meta),
            Mode::SoftDelete => f.clone().with_nullable(f.is_nullable() || !out.keyed),
        })
        .collect();
    match mode {
        Mode::Mirror => Ok((key, fields)),
        Mode::Changelog => Ok((Vec::new(), fields)),
        Mode::SoftDelete => {
            if key.is_empty() {
                return Err(refuse(
                    table,
                    "soft_delete keeps deleted rows by their key, and the table has none; \
                         set `key` in a [[transform]], or leave soft_delete out",
                ));
            }
            for name in [DELETED, DELETED_AT] {
                if outputs.iter().any(|(n, ..)| n == name) {
                    return Err(refuse(
                        table,
                        format!(
                            "soft_delete adds a column {name}, and the table already has \
                                 one; exclude or rename it"
                        ),
                    ));
                }
            }
            let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(UTC)));
            fields.push(Field::new(DELETED, DataType::Boolean, false));
            fields.push(Field::new(DELETED_AT, ts, true));
            Ok((key, fields))
        }
    }
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
        Meta::Seq => Field::new(m.name(), DataType::Int64, false),
    }
}

fn meta_array(m: Meta, batch: &ChangeBatch, now: i64, seq: i64) -> ArrayRef {
    meta_array_of(m, batch, batch.num_rows(), now, seq)
}

/// Metadata column `m` for the `n` rows of `batch` (whose origin and ops it reads), the
/// first of them numbered `seq`.
fn meta_array_of(m: Meta, batch: &ChangeBatch, n: usize, now: i64, seq: i64) -> ArrayRef {
    match m {
        Meta::Op => Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| op_name(batch.op(i), batch.origin.snapshot)),
        )),
        Meta::SourceTable => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            batch.table.as_ref(),
            n,
        ))),
        Meta::IngestedAt => {
            Arc::new(TimestampMicrosecondArray::from_value(now, n).with_timezone(UTC))
        }
        Meta::Seq => Arc::new(Int64Array::from_iter_values(seq..seq + n as i64)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use sha2::{Digest, Sha256};

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
        let out = t
            .apply(&batch(&ops, false), &mut Clock::at(7000))
            .unwrap()
            .unwrap();
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
            .apply(
                &batch(&[Op::Insert, Op::Insert], true),
                &mut Clock::at(7000),
            )
            .unwrap()
            .unwrap();
        assert_eq!(snap.rows.column(4).as_string::<i32>().value(0), "snapshot");
        assert!(snap.is_insert_only());
        assert!(
            t.apply(&batch(&[Op::Insert], false), &mut Clock::at(7000))
                .unwrap()
                .is_none()
        );
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
        let out = t
            .apply(&batch(&[Op::Insert], false), &mut Clock::at(0))
            .unwrap()
            .unwrap();
        assert_eq!(out.rows.column(1).as_string::<i32>().value(0), "u1@");
        assert!(out.rows.column(2).is_null(0));
        assert_eq!(out.rows.column(3).as_string::<i32>().value(0), "****");
        s.masks = vec![("id".into(), Mask::Truncate(2))];
        let e = TableTransform::new(&s, &input()).unwrap_err();
        assert!(e.contains("truncate applies to strings"), "{e}");
    }

    fn strings(b: &ChangeBatch, name: &str) -> Vec<Option<String>> {
        let c = b.rows.column_by_name(name).unwrap();
        c.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn a_changelog_appends_every_change_in_order() {
        let s = TransformSpec {
            mode: Mode::Changelog,
            metadata: vec![Meta::Op, Meta::SourceTable, Meta::Seq],
            ..spec()
        };
        let t = TableTransform::new(&s, &input()).unwrap();
        assert!(t.output().key.is_empty());
        assert!(t.output().schema.field(0).is_nullable());
        let ops = [
            Op::Insert,      // us: outside the filter
            Op::UpdateAfter, // eu
            Op::UpdateAfter, // us: left the filter
            Op::UpdateBefore,
            Op::Delete, // us: never was in the filtered table
            Op::Delete, // eu
        ];
        let mut clock = Clock::at(1_000);
        let out = t.apply(&batch(&ops, false), &mut clock).unwrap().unwrap();
        assert!(out.is_insert_only());
        // Row 4, an old image not followed by its key's new image, is a key change:
        // the delete of the old key.
        assert_eq!(
            strings(&out, "_op"),
            ["update", "delete", "delete", "delete"].map(|s| Some(s.to_string()))
        );
        // The row that left the filter keeps only its key: its new values are outside.
        assert_eq!(strings(&out, "region")[1], None);
        assert_eq!(strings(&out, "region")[3].as_deref(), Some("eu"));
        let seq = out.rows.column_by_name("_seq").unwrap();
        let seq = seq.as_primitive::<arrow_array::types::Int64Type>();
        // Numbered before the filter: rows 2, 3, 4 and 6 of six from 1000.
        assert_eq!(seq.values().to_vec(), vec![1_001, 1_002, 1_003, 1_005]);
        // An update that keeps its key is one row.
        let mut same = batch(&[Op::UpdateBefore, Op::UpdateAfter], false);
        let mut columns = same.rows.columns().to_vec();
        columns[0] = Arc::new(Int64Array::from(vec![2, 2]));
        columns[2] = Arc::new(StringArray::from(vec!["eu", "eu"]));
        same.rows = RecordBatch::try_new(same.rows.schema(), columns).unwrap();
        let one = t.apply(&same, &mut clock).unwrap().unwrap();
        assert_eq!(strings(&one, "_op"), [Some("update".to_string())]);
        // With before_images, its old image is a row of its own, before it.
        let with_before = TableTransform::new(
            &TransformSpec {
                before_images: true,
                ..s.clone()
            },
            &input(),
        )
        .unwrap();
        let two = with_before
            .apply(&same, &mut Clock::at(0))
            .unwrap()
            .unwrap();
        assert_eq!(
            strings(&two, "_op"),
            ["update_before", "update"].map(|s| Some(s.to_string()))
        );
        // The clock stands still: numbers still grow.
        let next = t
            .apply(&batch(&[Op::UpdateAfter; 2], false), &mut clock)
            .unwrap()
            .unwrap();
        let seq = next.rows.column_by_name("_seq").unwrap();
        assert_eq!(
            seq.as_primitive::<arrow_array::types::Int64Type>().value(0),
            1_008
        );
        let marker = t
            .truncated(&Arc::from("shop.orders_1"), &mut clock)
            .unwrap();
        assert_eq!(strings(&marker, "_op"), [Some("truncate".to_string())]);
        assert!(marker.rows.column(0).is_null(0));
    }

    #[test]
    fn soft_deletes_keep_the_row_marked() {
        let s = TransformSpec {
            mode: Mode::SoftDelete,
            ..spec()
        };
        let t = TableTransform::new(&s, &input()).unwrap();
        let names: Vec<&str> = t
            .output()
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names[names.len() - 2..], ["_deleted", "_deleted_at"]);
        let ops = [Op::Delete, Op::Delete, Op::UpdateAfter, Op::Insert];
        let mut b = batch(&ops, false);
        b.origin.source_ts = Some(Arc::new(
            TimestampMicrosecondArray::from(vec![Some(5), Some(6), Some(7), Some(8)])
                .with_timezone(UTC),
        ));
        let out = t.apply(&b, &mut Clock::at(9_000)).unwrap().unwrap();
        // Row 1 (us) was never in the filtered table: deleted (a no-op); row 2 is kept
        // with its values, marked; row 3 left the filter: deleted; row 4 an upsert.
        assert_eq!(
            &out.ops[..],
            &[Op::Delete, Op::UpdateAfter, Op::Delete, Op::UpdateAfter]
        );
        let deleted = out.rows.column_by_name("_deleted").unwrap().as_boolean();
        assert_eq!(
            deleted.iter().collect::<Vec<_>>(),
            [Some(false), Some(true), Some(false), Some(false)]
        );
        let at = out.rows.column_by_name("_deleted_at").unwrap();
        let at = at.as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        assert_eq!(at.iter().collect::<Vec<_>>(), [None, Some(6), None, None]);
        assert_eq!(strings(&out, "region")[1].as_deref(), Some("eu"));
        let mut keyless = input();
        keyless.key.clear();
        let e = TableTransform::new(
            &TransformSpec {
                mode: Mode::SoftDelete,
                ..TransformSpec::default()
            },
            &keyless,
        )
        .unwrap_err();
        assert!(
            e.contains("soft_delete keeps deleted rows by their key"),
            "{e}"
        );
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
