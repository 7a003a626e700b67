//! `partition_by` expressions and their evaluation.
//!
//! An expression is a column (`region`: identity, the directory is `region=<value>` and
//! the column leaves the file, as Hive lays tables out) or a named time function of a
//! timestamp or date column (`dt=date(ts)`, `hour=hour(ts)`, `month=month(ts)`,
//! `year=year(ts)`; the column stays in the file). Rows are grouped by their directory
//! path; a path made only of time functions also has an end in event time, after which
//! the partition can be committed (`_SUCCESS`).

use std::collections::HashMap;
use std::fmt::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Date64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Schema, SchemaRef, TimeUnit};
use chrono::{Datelike, NaiveDate};
use lakeshore_api::{Error, Result};

/// What an expression does to its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The value itself.
    Identity,
    /// `YYYY`.
    Year,
    /// `YYYY-MM`.
    Month,
    /// `YYYY-MM-DD`.
    Date,
    /// `HH` (00–23), meant to follow a `date` level.
    Hour,
}

/// One parsed `partition_by` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionExpr {
    /// Directory key, e.g. `dt`.
    pub name: String,
    /// Source column.
    pub column: String,
    /// Function applied to the column.
    pub transform: Transform,
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parse `column`, `name=column` or `name=func(column)`; the error says what to write.
pub fn parse_expr(text: &str) -> std::result::Result<PartitionExpr, String> {
    let text = text.trim();
    let (name, rhs) = match text.split_once('=') {
        Some((n, r)) => (n.trim(), r.trim()),
        None if text.contains('(') => {
            let func = text.split('(').next().unwrap_or("").trim();
            let name = if func == "date" || func == "day" {
                "dt"
            } else {
                func
            };
            return Err(format!(
                "partition `{text}` needs a directory name; write e.g. \"{name}={text}\""
            ));
        }
        None => (text, text),
    };
    if !is_ident(name) {
        return Err(format!(
            "partition `{text}`: the directory name `{name}` may hold only letters, digits, `_` and `-`"
        ));
    }
    let (transform, column) = match rhs.split_once('(') {
        None => (Transform::Identity, rhs),
        Some((func, rest)) => {
            let column = rest.strip_suffix(')').ok_or_else(|| {
                format!("partition `{text}`: missing `)`; write e.g. \"dt=date(ts)\"")
            })?;
            let t = match func.trim() {
                "year" => Transform::Year,
                "month" => Transform::Month,
                "date" | "day" => Transform::Date,
                "hour" => Transform::Hour,
                "identity" => Transform::Identity,
                other => {
                    return Err(format!(
                        "partition `{text}`: unknown function `{other}`; use year, month, date, hour or a plain column"
                    ));
                }
            };
            (t, column.trim())
        }
    };
    if column.is_empty() {
        return Err(format!("partition `{text}`: no column named"));
    }
    Ok(PartitionExpr {
        name: name.to_string(),
        column: column.to_string(),
        transform,
    })
}

/// Hive's directory value for a missing value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Append `value` to `out`, escaped as Hive escapes partition values (`%XX` for path
/// separators, `=`, `%`, quotes, control characters and a few more).
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        if c < ' '
            || c == '\x7f'
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            )
        {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// How a time column's values become microseconds since the epoch.
#[derive(Debug, Clone, Copy)]
enum TimeKind {
    Timestamp(i64),
    Date32,
    Date64,
}

struct Bound {
    expr: PartitionExpr,
    index: usize,
    time: Option<TimeKind>,
}

/// Rows of one batch that share a partition.
pub struct Group {
    /// Directory path below the table, e.g. `dt=2026-11-27/hour=13` (empty when the
    /// table is not partitioned).
    pub path: String,
    /// The rows, in the file's schema (identity partition columns removed).
    pub rows: RecordBatch,
    /// When event time passes this (µs since the epoch), no more rows are expected.
    pub end: Option<i64>,
}

/// Evaluates a table's expressions over batches.
pub struct Partitioner {
    bound: Vec<Bound>,
    /// Columns written to files.
    keep: Vec<usize>,
    file_schema: SchemaRef,
}

/// How a transform reads column `e.column` of type `dt`: `None` for an identity value,
/// else the time unit; errors say which transform or column to use instead.
fn time_kind(table: &str, e: &PartitionExpr, dt: &DataType) -> Result<Option<TimeKind>> {
    Ok(match (e.transform, dt) {
        (
            Transform::Identity,
            DataType::Timestamp(..)
            | DataType::Float32
            | DataType::Float64
            | DataType::Binary
            | DataType::LargeBinary,
        ) => {
            return Err(Error::config(format!(
                "table {table}: column `{}` ({dt}) cannot be a partition value as it is; use date({0}) or hour({0}) for timestamps, or another column",
                e.column
            )));
        }
        (Transform::Identity, _) => None,
        (_, DataType::Timestamp(unit, _)) => Some(TimeKind::Timestamp(match unit {
            TimeUnit::Second => 1_000_000,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1,
            TimeUnit::Nanosecond => -1_000,
        })),
        (Transform::Hour, DataType::Date32 | DataType::Date64) => {
            return Err(Error::config(format!(
                "table {table}: hour({}) needs a timestamp column, and `{0}` is a date",
                e.column
            )));
        }
        (_, DataType::Date32) => Some(TimeKind::Date32),
        (_, DataType::Date64) => Some(TimeKind::Date64),
        _ => {
            return Err(Error::config(format!(
                "table {table}: {}({}) needs a timestamp or date column, and `{1}` is {dt}",
                match e.transform {
                    Transform::Year => "year",
                    Transform::Month => "month",
                    Transform::Date => "date",
                    _ => "hour",
                },
                e.column
            )));
        }
    })
}

impl Partitioner {
    /// Check `exprs` against `schema`; errors name the table and the column.
    pub fn new(table: &str, exprs: &[PartitionExpr], schema: &Schema) -> Result<Self> {
        let mut bound = Vec::new();
        for e in exprs {
            let (index, field) = schema.column_with_name(&e.column).ok_or_else(|| {
                let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Error::config(format!(
                        "table {table}: partition `{}` names column `{}`, which the table does not have (columns: {}); set this table's own list in [sink.partitioning]",
                        e.name,
                        e.column,
                        cols.join(", ")
                    ),
                )
            })?;
            let time = time_kind(table, e, field.data_type())?;
            // Identity columns leave the files; any other column named like a directory
            // would reach readers twice.
            let leaves = e.transform == Transform::Identity && e.name == e.column;
            if !leaves && schema.column_with_name(&e.name).is_some() {
                return Err(Error::config(format!(
                    "table {table}: partition name `{}` is also a column; readers would see two columns of that name; pick another name",
                    e.name
                )));
            }
            if bound.iter().any(|b: &Bound| b.expr.name == e.name) {
                return Err(Error::config(format!(
                    "table {table}: two partition levels are named `{}`",
                    e.name
                )));
            }
            if e.transform == Transform::Hour
                && !bound
                    .iter()
                    .any(|b| b.expr.column == e.column && b.expr.transform == Transform::Date)
            {
                return Err(Error::config(format!(
                    "table {table}: hour({0}) names only the hour of the day; put a date level of the same column before it, e.g. [\"dt=date({0})\", \"{1}=hour({0})\"]",
                    e.column, e.name
                )));
            }
            bound.push(Bound {
                expr: e.clone(),
                index,
                time,
            });
        }
        let identity: Vec<usize> = bound
            .iter()
            .filter(|b| b.expr.transform == Transform::Identity)
            .map(|b| b.index)
            .collect();
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !identity.contains(i))
            .collect();
        let file_schema = std::sync::Arc::new(schema.project(&keep).map_err(internal)?);
        Ok(Partitioner {
            bound,
            keep,
            file_schema,
        })
    }

    /// The schema of the files (the table's minus identity partition columns).
    pub fn file_schema(&self) -> &SchemaRef {
        &self.file_schema
    }

    /// Group `batch`'s rows by partition, in first-seen order.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<Group>> {
        if self.bound.is_empty() {
            return Ok(vec![Group {
                path: String::new(),
                rows: batch.clone(),
                end: None,
            }]);
        }
        let columns: Vec<&ArrayRef> = self.bound.iter().map(|b| batch.column(b.index)).collect();
        let options = FormatOptions::default();
        let formatters: Vec<Option<ArrayFormatter<'_>>> = self
            .bound
            .iter()
            .zip(&columns)
            .map(|(b, c)| match b.time {
                None => ArrayFormatter::try_new(c.as_ref(), &options)
                    .map(Some)
                    .map_err(internal),
                Some(_) => Ok(None),
            })
            .collect::<Result<_>>()?;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(String, Vec<u32>, Option<i64>)> = Vec::new();
        // Reused per row: no allocation per row and column.
        let mut key = String::new();
        let mut value = String::new();
        for row in 0..batch.num_rows() {
            key.clear();
            let mut end: Option<i64> = None;
            let mut timed = true;
            for (i, b) in self.bound.iter().enumerate() {
                if i > 0 {
                    key.push('/');
                }
                key.push_str(&b.expr.name);
                key.push('=');
                let column = columns[i];
                if column.is_null(row) {
                    key.push_str(NULL_PARTITION);
                    timed = false;
                    continue;
                }
                match (&formatters[i], b.time) {
                    (Some(f), _) => {
                        value.clear();
                        let _ = write!(value, "{}", f.value(row));
                        if value.is_empty() {
                            key.push_str(NULL_PARTITION);
                        } else {
                            escape_into(&mut key, &value);
                        }
                        timed = false;
                    }
                    (None, Some(kind)) => {
                        let micros = micros_at(column, row, kind);
                        let bucket_end = time_value(&mut key, b.expr.transform, micros);
                        end = Some(end.map_or(bucket_end, |e: i64| e.min(bucket_end)));
                    }
                    (None, None) => unreachable!("identity columns have a formatter"),
                }
            }
            let g = match index.get(key.as_str()) {
                Some(&g) => g,
                None => {
                    index.insert(key.clone(), groups.len());
                    groups.push((key.clone(), Vec::new(), if timed { end } else { None }));
                    groups.len() - 1
                }
            };
            groups[g].1.push(row as u32);
        }
        let projected = batch.project(&self.keep).map_err(internal)?;
        if groups.len() == 1 {
            let (path, _, end) = groups.pop().expect("one group");
            return Ok(vec![Group {
                path,
                rows: projected,
                end,
            }]);
        }
        groups
            .into_iter()
            .map(|(path, rows, end)| {
                let indices = UInt32Array::from(rows);
                let rows = arrow_select::take::take_record_batch(&projected, &indices)
                    .map_err(internal)?;
                Ok(Group { path, rows, end })
            })
            .collect()
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e.to_string())
}

fn micros_at(column: &ArrayRef, row: usize, kind: TimeKind) -> i64 {
    match kind {
        TimeKind::Timestamp(scale) => {
            // Every timestamp array stores i64 values; the unit only scales them.
            let raw = match column.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => column
                    .as_primitive::<arrow_array::types::TimestampSecondType>()
                    .value(row),
                DataType::Timestamp(TimeUnit::Millisecond, _) => column
                    .as_primitive::<arrow_array::types::TimestampMillisecondType>()
                    .value(row),
                DataType::Timestamp(TimeUnit::Microsecond, _) => column
                    .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
                    .value(row),
                _ => column
                    .as_primitive::<arrow_array::types::TimestampNanosecondType>()
                    .value(row),
            };
            if scale > 0 {
                raw.saturating_mul(scale)
            } else {
                raw.div_euclid(-scale)
            }
        }
        TimeKind::Date32 => {
            i64::from(column.as_primitive::<Date32Type>().value(row)).saturating_mul(MICROS_PER_DAY)
        }
        TimeKind::Date64 => column
            .as_primitive::<Date64Type>()
            .value(row)
            .saturating_mul(1_000),
    }
}

/// Append the directory value of `micros` under `transform`; returns the bucket's end.
fn time_value(out: &mut String, transform: Transform, micros: i64) -> i64 {
    let day = micros.div_euclid(MICROS_PER_DAY);
    let date =
        NaiveDate::from_num_days_from_ce_opt((day + 719_163) as i32).unwrap_or(NaiveDate::MIN);
    let day_start =
        |d: NaiveDate| i64::from(d.num_days_from_ce() - 719_163).saturating_mul(MICROS_PER_DAY);
    match transform {
        Transform::Hour => {
            let hour = micros.div_euclid(MICROS_PER_HOUR);
            let _ = write!(out, "{:02}", hour.rem_euclid(24));
            (hour + 1).saturating_mul(MICROS_PER_HOUR)
        }
        Transform::Date | Transform::Identity => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}",
                date.year(),
                date.month(),
                date.day()
            );
            (day + 1) * MICROS_PER_DAY
        }
        Transform::Month => {
            let _ = write!(out, "{:04}-{:02}", date.year(), date.month());
            let next = if date.month() == 12 {
                NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
            };
            next.map(day_start).unwrap_or(i64::MAX)
        }
        Transform::Year => {
            let _ = write!(out, "{:04}", date.year());
            NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
                .map(day_start)
                .unwrap_or(i64::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow_schema::Field;

    use super::*;

    #[test]
    fn expressions_parse_with_names_and_hints() {
        assert_eq!(
            parse_expr("dt=date(ts)").unwrap(),
            PartitionExpr {
                name: "dt".into(),
                column: "ts".into(),
                transform: Transform::Date
            }
        );
        assert_eq!(parse_expr("region").unwrap().transform, Transform::Identity);
        assert_eq!(parse_expr("r=region").unwrap().column, "region");
        assert!(parse_expr("date(ts)").unwrap_err().contains("dt=date(ts)"));
        assert!(
            parse_expr("dt=week(ts)")
                .unwrap_err()
                .contains("unknown function")
        );
        assert!(parse_expr("d t=date(ts)").is_err());
    }

    #[test]
    fn values_are_escaped_like_hive() {
        let mut s = String::new();
        escape_into(&mut s, "a/b=c%d:e f");
        assert_eq!(s, "a%2Fb%3Dc%25d%3Ae f");
    }

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("region", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ])
    }

    #[test]
    fn rows_group_by_date_hour_and_column() {
        let schema = Arc::new(schema());
        let exprs: Vec<PartitionExpr> = ["dt=date(ts)", "hour=hour(ts)", "region"]
            .iter()
            .map(|e| parse_expr(e).unwrap())
            .collect();
        let p = Partitioner::new("t", &exprs, &schema).unwrap();
        // 2026-11-27T13:05:00Z, 13:59:59.999999, 14:00:00, and a null time.
        let t0 = 1_795_784_700_000_000i64;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(StringArray::from(vec![
                    Some("eu"),
                    Some("eu"),
                    Some("eu"),
                    None,
                    Some("us/w"),
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(t0),
                        Some(t0 + 3_299_999_999),
                        Some(t0 + 3_300_000_000),
                        Some(t0),
                        None,
                    ])
                    .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let groups = p.split(&batch).unwrap();
        let paths: Vec<&str> = groups.iter().map(|g| g.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "dt=2026-11-27/hour=13/region=eu",
                "dt=2026-11-27/hour=14/region=eu",
                "dt=2026-11-27/hour=13/region=__HIVE_DEFAULT_PARTITION__",
                "dt=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__/region=us%2Fw",
            ]
        );
        assert_eq!(groups[0].rows.num_rows(), 2);
        // Identity columns leave the file; ts stays.
        assert_eq!(groups[0].rows.num_columns(), 2);
        // A column in the path has no end in time; only time-only paths do.
        assert_eq!(groups[0].end, None);
        let timed = Partitioner::new("t", &exprs[..2], &schema).unwrap();
        let g = timed.split(&batch).unwrap();
        assert_eq!(g[0].end, Some(t0 + 3_300_000_000));
        assert_eq!(g[1].end, Some(t0 + 3_300_000_000 + MICROS_PER_HOUR));
    }

    #[test]
    fn month_and_year_end_at_the_next_one() {
        let mut s = String::new();
        // 2026-12-31T23:00Z
        let t = 1_798_758_000_000_000i64;
        let end = time_value(&mut s, Transform::Month, t);
        assert_eq!(s, "2026-12");
        assert_eq!(end, 1_798_761_600_000_000); // 2027-01-01T00:00Z
        s.clear();
        assert_eq!(
            time_value(&mut s, Transform::Year, t),
            1_798_761_600_000_000
        );
        assert_eq!(s, "2026");
    }

    fn error_of(exprs: &[&str]) -> String {
        let exprs: Vec<PartitionExpr> = exprs.iter().map(|e| parse_expr(e).unwrap()).collect();
        match Partitioner::new("t", &exprs, &schema()) {
            Ok(_) => panic!("{exprs:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_columns_are_named() {
        assert!(error_of(&["x"]).contains("column `x`"));
        assert!(error_of(&["ts"]).contains("date(ts)"));
        assert!(error_of(&["h=hour(region)"]).contains("timestamp"));
        assert!(error_of(&["id=date(ts)"]).contains("also a column"));
        assert!(error_of(&["id=region"]).contains("also a column"));
        assert!(error_of(&["ts=date(ts)"]).contains("also a column"));
        assert!(error_of(&["h=hour(ts)"]).contains("date level"));
        assert!(error_of(&["d=date(ts)", "d=region"]).contains("two partition levels"));
    }
}
