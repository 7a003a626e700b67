//! Messages → Arrow rows, per `format`.
//!
//! Every JSON format reduces a message to row images (JSON objects) with an [`Op`] each:
//! `json` is the message itself, `debezium-json` its `after` / `before`, `canal-json` the
//! entries of its `data` / `old`. The row images of a whole chunk of messages are decoded
//! by one `arrow-json` decoder in one pass; only when that fails are they decoded one by
//! one, to find the messages at fault (see [`RowDecoder::decode`]). `raw` needs no
//! decoding.

use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, LargeBinaryBuilder as BinaryBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lakeshore_api::{Error, Op, Result};
use serde::Deserialize;
use serde_json::value::RawValue;

/// How messages are read (`format` in the pipeline file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON object per message, in the declared columns.
    #[default]
    Json,
    /// Debezium change events (`before`, `after`, `op`; with or without the
    /// `schema`/`payload` envelope).
    DebeziumJson,
    /// Canal change events (`data`, `old`, `type`).
    CanalJson,
    /// The message itself: key, value, headers, topic, partition, offset, timestamp.
    Raw,
}

impl Format {
    /// The name written in the pipeline file.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::DebeziumJson => "debezium-json",
            Format::CanalJson => "canal-json",
            Format::Raw => "raw",
        }
    }
}

/// A message of a chunk, its bytes borrowed from the chunk.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (the broker's or the producer's).
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Headers as a JSON object of strings (raw format only).
    pub headers: Option<&'a str>,
}

/// A message that could not be read.
#[derive(Debug, Clone)]
pub struct Bad {
    /// Index of the message in the chunk.
    pub index: usize,
    pub error: String,
}

/// The Iceberg-facing type of a declared column: `long`, `decimal(12,2)`, ...
pub fn parse_type(name: &str) -> Option<DataType> {
    let t = name.trim().to_ascii_lowercase();
    Some(match t.as_str() {
        "boolean" | "bool" => DataType::Boolean,
        "int" | "integer" => DataType::Int32,
        "long" | "bigint" => DataType::Int64,
        "float" => DataType::Float32,
        "double" => DataType::Float64,
        "string" => DataType::Utf8,
        "binary" => DataType::LargeBinary,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => {
            let inner = t.strip_prefix("decimal(")?.strip_suffix(')')?;
            let (p, s) = inner.split_once(',')?;
            let (p, s): (u8, i8) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
            if !(1..=38).contains(&p) || s < 0 || s as u8 > p {
                return None;
            }
            DataType::Decimal128(p, s)
        }
    })
}

/// Timestamp column `column` of `rows` (µs since the epoch), if it has one.
pub fn timestamps<'a>(
    rows: &'a arrow_array::RecordBatch,
    column: &str,
) -> Option<&'a arrow_array::TimestampMicrosecondArray> {
    rows.column_by_name(column)?
        .as_any()
        .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
}

/// The columns of a `raw` table.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::LargeBinary, true),
        Field::new("value", DataType::LargeBinary, true),
        Field::new("headers", DataType::Utf8, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
    ]))
}

/// The columns of the dead-letter table.
pub fn dead_letter_schema() -> SchemaRef {
    let mut fields: Vec<Field> = raw_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.retain(|f| f.name() != "headers");
    fields.push(Field::new("error", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Raw rows of `messages` (every message reads).
pub fn raw_rows(messages: &[Message<'_>]) -> Result<RecordBatch> {
    let n = messages.len();
    let mut key = BinaryBuilder::with_capacity(n, 0);
    let mut value = BinaryBuilder::with_capacity(n, 0);
    let mut headers = StringBuilder::new();
    let (mut topic, mut partition, mut offset, mut ts) = meta_builders(n);
    for m in messages {
        key.append_option(m.key);
        value.append_option(m.payload);
        headers.append_option(m.headers);
        append_meta(m, &mut topic, &mut partition, &mut offset, &mut ts);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(value.finish()),
        Arc::new(headers.finish()),
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(ts.finish().with_timezone("+00:00")),
    ];
    batch(raw_schema(), columns)
}

/// Dead-letter rows: each bad message with its error.
pub fn dead_letter_rows(messages: &[Message<'_>], bad: &[Bad]) -> Result<RecordBatch> {
    let n = bad.len();
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let mut error = StringBuilder::new();
    let (mut topic, mut partition, mut offset, mut ts) = meta_builders(n);
    for b in bad {
        let m = &messages[b.index];
        key.append_option(m.key);
        value.append_option(m.payload);
        append_meta(m, &mut topic, &mut partition, &mut offset, &mut ts);
        error.append_value(&b.error);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(value.finish()),
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(ts.finish().with_timezone("+00:00")),
        Arc::new(error.finish()),
    ];
    batch(dead_letter_schema(), columns)
}

type MetaBuilders = (
    StringBuilder,
    Int32Builder,
    Int64Builder,
    TimestampMicrosecondBuilder,
);

fn meta_builders(n: usize) -> MetaBuilders {
    (
        StringBuilder::new(),
        Int32Builder::with_capacity(n),
        Int64Builder::with_capacity(n),
        TimestampMicrosecondBuilder::with_capacity(n),
    )
}

fn append_meta(
    m: &Message<'_>,
    topic: &mut StringBuilder,
    partition: &mut Int32Builder,
    offset: &mut Int64Builder,
    ts: &mut TimestampMicrosecondBuilder,
) {
    topic.append_value(m.topic);
    partition.append_value(m.partition);
    offset.append_value(m.offset);
    ts.append_option(m.timestamp.map(|ms| ms * 1000));
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema, columns)
        .map_err(|e| Error::internal(format!("building a batch: {e}")))
}

/// Row images of a chunk: JSON objects laid end to end, each with its op and message.
#[derive(Default)]
pub struct Images {
    buf: Vec<u8>,
    /// (message index, op, byte range in `buf`)
    rows: Vec<(usize, Op, std::ops::Range<usize>)>,
    /// Messages that did not yield row images.
    pub bad: Vec<Bad>,
}

impl Images {
    fn push(&mut self, index: usize, op: Op, json: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(json);
        self.buf.push(b'\n');
        self.rows.push((index, op, start..self.buf.len()));
    }

    fn bad(&mut self, index: usize, error: impl Into<String>) {
        self.bad.push(Bad {
            index,
            error: error.into(),
        });
    }

    /// The message (index into the decoded messages) of every row a decoded batch holds:
    /// rows of messages found bad are not in the batch.
    pub fn row_messages(&self) -> Vec<usize> {
        let bad: std::collections::HashSet<usize> = self.bad.iter().map(|b| b.index).collect();
        self.rows
            .iter()
            .map(|r| r.0)
            .filter(|i| !bad.contains(i))
            .collect()
    }

    /// Row images of `messages` in `format` (not `raw`). Tombstones (no payload) are
    /// skipped: they carry no row. `key` names the key columns (canal-json needs them to
    /// see key changes).
    pub fn of(format: Format, messages: &[Message<'_>], key: &[String]) -> Images {
        let mut out = Images::default();
        for (i, m) in messages.iter().enumerate() {
            let Some(payload) = m.payload else { continue };
            match format {
                Format::Json | Format::Raw => {
                    // Exactly one JSON value per message (trailing data or an empty
                    // payload is a bad message, never a shifted row). With a key, rows
                    // replace earlier rows of their key, committed ones too.
                    let op = if key.is_empty() {
                        Op::Insert
                    } else {
                        Op::UpdateAfter
                    };
                    match serde_json::from_slice::<&RawValue>(payload) {
                        Ok(v) => out.push(i, op, v.get().as_bytes()),
                        Err(e) => out.bad(i, format!("not one JSON value: {e}")),
                    }
                }
                Format::DebeziumJson => out.debezium(i, payload),
                Format::CanalJson => out.canal(i, payload, key),
            }
        }
        out
    }

    fn debezium(&mut self, i: usize, payload: &[u8]) {
        let env = match parse_envelope(payload) {
            Ok(e) => e,
            Err(e) => return self.bad(i, format!("not a Debezium event: {e}")),
        };
        let env = match env.payload {
            Some(p) if env.op.is_none() => match parse_envelope(p.get().as_bytes()) {
                Ok(e) => e,
                Err(e) => return self.bad(i, format!("not a Debezium event: {e}")),
            },
            _ => env,
        };
        match (env.op.as_deref(), image(env.before), image(env.after)) {
            (Some("c" | "r"), _, Some(after)) => self.push(i, Op::UpdateAfter, after.as_bytes()),
            (Some("u"), before, Some(after)) => {
                if let Some(before) = before {
                    self.push(i, Op::UpdateBefore, before.as_bytes());
                }
                self.push(i, Op::UpdateAfter, after.as_bytes());
            }
            (Some("d"), Some(before), _) => self.push(i, Op::Delete, before.as_bytes()),
            // Truncate and message events carry no row.
            (Some("t" | "m"), _, _) => {}
            (op, _, _) => self.bad(
                i,
                format!("Debezium event with op {op:?} lacks the row image it needs"),
            ),
        }
    }

    fn canal(&mut self, i: usize, payload: &[u8], key: &[String]) {
        #[derive(Deserialize)]
        struct Event {
            #[serde(default)]
            data: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
            #[serde(default)]
            old: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
            #[serde(rename = "type")]
            kind: String,
            #[serde(rename = "isDdl", default)]
            is_ddl: bool,
        }
        let ev: Event = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => return self.bad(i, format!("not a Canal event: {e}")),
        };
        if ev.is_ddl {
            return;
        }
        let data = ev.data.unwrap_or_default();
        let encode = |m: &serde_json::Map<String, serde_json::Value>| {
            serde_json::to_vec(m).unwrap_or_default()
        };
        match ev.kind.as_str() {
            "INSERT" => data
                .iter()
                .for_each(|row| self.push(i, Op::UpdateAfter, &encode(row))),
            "UPDATE" => {
                let old = ev.old.unwrap_or_default();
                for (j, row) in data.iter().enumerate() {
                    // `old` holds the changed columns' previous values: a key among them
                    // means the row moved to a new key.
                    if let Some(changed) = old.get(j)
                        && key.iter().any(|k| changed.contains_key(k))
                    {
                        let mut before = row.clone();
                        before.extend(changed.iter().map(|(k, v)| (k.clone(), v.clone())));
                        self.push(i, Op::UpdateBefore, &encode(&before));
                    }
                    self.push(i, Op::UpdateAfter, &encode(row));
                }
            }
            "DELETE" => data
                .iter()
                .for_each(|row| self.push(i, Op::Delete, &encode(row))),
            other => self.bad(i, format!("Canal event of type {other:?}")),
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    op: Option<String>,
}

fn parse_envelope(b: &[u8]) -> serde_json::Result<Envelope<'_>> {
    serde_json::from_slice(b)
}

/// A row image that is there (JSON `null` is not).
fn image(v: Option<&RawValue>) -> Option<&str> {
    v.map(|r| r.get()).filter(|s| *s != "null")
}

/// Decodes row images into batches of one table's columns.
pub struct RowDecoder {
    /// The table's columns as written in the lake.
    schema: SchemaRef,
    /// The same columns as decoded: timestamps in milliseconds, so that JSON numbers read
    /// as epoch milliseconds (strings in RFC 3339 read either way).
    decode_schema: SchemaRef,
}

impl RowDecoder {
    pub fn new(schema: SchemaRef) -> Self {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(_, tz) => f
                    .as_ref()
                    .clone()
                    .with_data_type(DataType::Timestamp(TimeUnit::Millisecond, tz.clone())),
                _ => f.as_ref().clone(),
            })
            .collect();
        RowDecoder {
            decode_schema: Arc::new(Schema::new(fields)),
            schema,
        }
    }

    fn decode_all(&self, bytes: &[u8], rows: usize) -> std::result::Result<RecordBatch, String> {
        let mut d = arrow_json::ReaderBuilder::new(self.decode_schema.clone())
            // One more than expected, so that an extra object shows in the count.
            .with_batch_size(rows + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let mut at = 0;
        while at < bytes.len() {
            let n = d.decode(&bytes[at..]).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            at += n;
        }
        if d.has_partial_record() || d.len() != rows {
            return Err(if rows == 1 {
                "not exactly one JSON object".to_string()
            } else {
                "row count differs".to_string()
            });
        }
        let batch = d
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(self.decode_schema.clone()));
        self.widen(batch).map_err(|e| e.to_string())
    }

    /// Timestamps back to microseconds.
    fn widen(&self, decoded: RecordBatch) -> Result<RecordBatch> {
        let columns = decoded
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    arrow_cast::cast(c, f.data_type())
                        .map_err(|e| Error::internal(format!("column {}: {e}", f.name())))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        batch(self.schema.clone(), columns)
    }

    /// Decode `images` into one batch with its ops. Images that do not decode (a wrong
    /// type, not an object) are added to `images.bad` and left out.
    pub fn decode(&self, images: &mut Images) -> Result<(RecordBatch, Vec<Op>)> {
        let ops: Vec<Op> = images.rows.iter().map(|r| r.1).collect();
        if let Ok(batch) = self.decode_all(&images.buf, images.rows.len()) {
            return Ok((batch, ops));
        }
        // One by one, to find the images at fault; a message is all or nothing (both
        // images of an update, every row of a Canal event).
        let each: Vec<std::result::Result<RecordBatch, String>> = images
            .rows
            .iter()
            .map(|(_, _, range)| self.decode_all(&images.buf[range.clone()], 1))
            .collect();
        let mut failed = std::collections::BTreeMap::new();
        for ((index, _, _), r) in images.rows.iter().zip(&each) {
            if let Err(e) = r {
                failed.entry(*index).or_insert_with(|| e.clone());
            }
        }
        let mut rows = Vec::new();
        let mut kept_ops = Vec::new();
        for ((index, op, _), r) in images.rows.iter().zip(each) {
            if let (false, Ok(b)) = (failed.contains_key(index), r) {
                rows.push(b);
                kept_ops.push(*op);
            }
        }
        for (index, error) in failed {
            images.bad(index, error);
        }
        let batch = arrow_select::concat::concat_batches(&self.schema, &rows)
            .map_err(|e| Error::internal(format!("joining rows: {e}")))?;
        Ok((batch, kept_ops))
    }
}
