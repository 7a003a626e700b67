//! `[source] type = "kafka"`: topics of JSON, change-event or raw messages.

#[cfg(feature = "bench")]
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::{Ledger, Result, Source, SourcePosition};
use lakeshore_kafka::{Format, KafkaOptions, KafkaSource, OnError, Startup};
use serde::Deserialize;

use super::{SourceConnector, SourcePlan, SourceSection};
use crate::config::units::{EnvString, HumanDuration, Spanned};
use crate::config::{ConfigError, SourceText};

/// `[source]` with `type = "kafka"`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// `"kafka"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Bootstrap brokers, e.g. `"broker1:9092,broker2:9092"`.
    pub brokers: EnvString,
    /// Topic names; an entry starting with `^` is a regular expression, e.g.
    /// `["orders", "^events-.*"]`. Each topic is a source table of its own name unless
    /// `table` is set.
    pub topics: Vec<Spanned<String>>,
    /// Consumer group. lakeshore keeps its offsets in the lake commits; it commits them
    /// to the group after each lake commit so that lag tools see them. Default
    /// `lakeshore-<pipeline name>`.
    pub group_id: Option<Spanned<String>>,
    /// `true`: several `lakeshore run` processes with this pipeline file share the
    /// topics' partitions through the consumer group (scale-out); a rebalance neither
    /// loses nor repeats a message. Default `false`: one process assigns itself every
    /// partition. Needs declared `columns` (JSON) and the eager rebalance protocol.
    pub scale_out: Option<Spanned<bool>>,
    /// Where a partition starts when the lake has no offset for it: `"earliest"`
    /// (default), `"latest"` or `{ timestamp = "2026-01-01T00:00:00Z" }`.
    #[cfg_attr(test, schemars(with = "Option<serde_json::Value>"))]
    pub startup: Option<Spanned<toml::Value>>,
    /// `"json"` (one object per message, in `columns`), `"debezium-json"` and
    /// `"canal-json"` (change events: inserts, updates and deletes of rows in
    /// `columns`, keyed by `key`) or `"raw"` (key, value, headers, topic, partition,
    /// offset, timestamp). Default `"json"`.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub format: Option<Spanned<Format>>,
    /// The columns of a JSON format, in order, as `"name type"`; types are `boolean`,
    /// `int`, `long`, `float`, `double`, `decimal(p,s)`, `string`, `binary`, `date`,
    /// `timestamp`, `timestamptz`. Timestamps read RFC 3339 strings or epoch milliseconds.
    /// Fields not listed are ignored; missing fields read null. With `format = "json"`
    /// and no `columns`, they are inferred from the first messages at the pipeline's
    /// first start (numbers → `long`/`double`, booleans, the rest `string`; nested
    /// fields left out) and then stay fixed, kept in the checkpoints.
    #[serde(default)]
    pub columns: Vec<Spanned<String>>,
    /// Key columns: rows with the same key replace each other (upsert sink). Required by
    /// `debezium-json` and `canal-json`.
    #[serde(default)]
    pub key: Vec<Spanned<String>>,
    /// A message that cannot be read: `"fail"` (default: stop, naming topic, partition
    /// and offset), `"skip"` (count and go on) or `"dead_letter"` (write it, with the
    /// error, to the table `dead_letter_table` and go on).
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub on_error: Option<Spanned<OnError>>,
    /// Source table name of the dead letters. Default `"<pipeline name>_dead_letters"`.
    pub dead_letter_table: Option<String>,
    /// One source table for every topic, e.g. `"events"` (route it with `[[route]]`).
    pub table: Option<String>,
    /// librdkafka settings passed through, e.g. `{ "security.protocol" = "SASL_SSL",
    /// "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "lake", "sasl.password" =
    /// "${KAFKA_PASSWORD}" }`. Values may use `${ENV}`; secrets are never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, EnvString>,
    /// Track event time, for sinks that commit partitions by it (the Hive sink's
    /// `_SUCCESS`), e.g. `{ column = "ts", lateness = "30s" }`.
    pub watermark: Option<Spanned<WatermarkSection>>,
}

/// `watermark` of a Kafka source.
///
/// The watermark is the newest event time of the partition furthest behind, minus
/// `lateness`; a partition without messages for `idle_timeout` stops holding it back.
/// Rows older than the watermark still land (they are late).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WatermarkSection {
    /// A `timestamp` or `timestamptz` column of `columns` (with `format = "raw"`:
    /// `"timestamp"`). Default: the messages' own Kafka timestamps.
    pub column: Option<String>,
    /// How far the watermark stays behind event time, e.g. `"30s"`: how much out of
    /// order messages of one partition may be. Default `"0s"`.
    pub lateness: Option<HumanDuration>,
    /// A partition with no message for this long no longer holds the watermark back,
    /// e.g. `"1min"`. Default `"10s"`.
    pub idle_timeout: Option<HumanDuration>,
}

fn plan(src: &SourceText<'_>, s: &KafkaSection, pipeline: &str) -> Result<SourcePlan, ConfigError> {
    if s.topics.is_empty() {
        return Err(src.error(
            None,
            "[source] topics is empty; list topic names (or ^regex), e.g. topics = [\"orders\"]",
        ));
    }
    let format = s.format.as_ref().map(|f| *f.get_ref()).unwrap_or_default();
    let columns = columns(src, s, format)?;
    let key = key(src, s, format, &columns)?;
    let on_error = s
        .on_error
        .as_ref()
        .map(|f| *f.get_ref())
        .unwrap_or_default();
    let startup = startup(src, s)?;
    if format == Format::Json && columns.is_empty() && startup == Startup::Latest {
        return Err(src.error(
            s.startup.as_ref().map(|v| v.span()),
            "columns are inferred from the messages at the start, and startup = \"latest\" starts after all of them: declare columns = [\"name type\", ...]",
        ));
    }
    let watermark = match &s.watermark {
        None => None,
        Some(w) => Some(watermark(src, w, format, &columns)?),
    };
    let scale_out = s.scale_out.as_ref().is_some_and(|v| *v.get_ref());
    if let Some(v) = s.scale_out.as_ref().filter(|_| scale_out) {
        check_scale_out(src, s, v, format, &columns)?;
    }
    Ok(Arc::new(Kafka(KafkaOptions {
        brokers: s.brokers.0.clone(),
        topics: s.topics.iter().map(|t| t.get_ref().clone()).collect(),
        group_id: s
            .group_id
            .as_ref()
            .map(|g| g.get_ref().clone())
            .unwrap_or_else(|| format!("lakeshore-{pipeline}")),
        startup,
        format,
        columns,
        key,
        on_error,
        table: s.table.clone(),
        dead_letter_table: s
            .dead_letter_table
            .clone()
            .unwrap_or_else(|| format!("{pipeline}_dead_letters")),
        properties: s
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        batch_rows: 8192,
        watermark,
        scale_out,
    })))
}

/// The declared `columns` of a Kafka source, checked against its `format`.
fn columns(
    src: &SourceText<'_>,
    s: &KafkaSection,
    format: Format,
) -> Result<Vec<arrow_schema::Field>, ConfigError> {
    let mut columns = Vec::new();
    for c in &s.columns {
        let text = c.get_ref().trim();
        let parsed = text
            .split_once(char::is_whitespace)
            .and_then(|(n, t)| Some((n, lakeshore_kafka::decode::parse_type(t)?)));
        let Some((name, data_type)) = parsed else {
            return Err(src.error(
                Some(c.span()),
                format!(
                    "column \"{text}\": write \"name type\" with a type among boolean, int, \
                     long, float, double, decimal(p,s), string, binary, date, timestamp, \
                     timestamptz"
                ),
            ));
        };
        if columns
            .iter()
            .any(|f: &arrow_schema::Field| f.name() == name)
        {
            return Err(src.error(Some(c.span()), format!("column {name} is listed twice")));
        }
        columns.push(arrow_schema::Field::new(name, data_type, true));
    }
    if format == Format::Raw {
        if let Some(c) = s.columns.first() {
            return Err(src.error(
                Some(c.span()),
                "format = \"raw\" has fixed columns (key, value, headers, topic, partition, \
                 offset, timestamp); remove columns",
            ));
        }
    } else if columns.is_empty() && format != Format::Json {
        return Err(src.error(
            s.format.as_ref().map(|f| f.span()),
            "a change-event format needs its columns: add columns = [\"id long\", \"name string\", ...]",
        ));
    }
    Ok(columns)
}

/// The `key` columns of a Kafka source.
fn key(
    src: &SourceText<'_>,
    s: &KafkaSection,
    format: Format,
    columns: &[arrow_schema::Field],
) -> Result<Vec<String>, ConfigError> {
    let mut key = Vec::new();
    for k in &s.key {
        // Inferred columns (json without `columns`) are checked when they are known.
        let declared = !columns.is_empty();
        if format != Format::Raw && declared && !columns.iter().any(|f| f.name() == k.get_ref()) {
            return Err(src.error(
                Some(k.span()),
                format!("key column {} is not among columns", k.get_ref()),
            ));
        }
        key.push(k.get_ref().clone());
    }
    if key.is_empty() && matches!(format, Format::DebeziumJson | Format::CanalJson) {
        return Err(src.error(
            s.format.as_ref().map(|f| f.span()),
            "change-event formats need the row key: add key = [\"id\"]",
        ));
    }
    Ok(key)
}

/// `startup` of a Kafka source: `"earliest"`, `"latest"` or `{ timestamp = "..." }`.
fn startup(
    src: &SourceText<'_>,
    s: &KafkaSection,
) -> Result<lakeshore_kafka::Startup, ConfigError> {
    Ok(match s.startup.as_ref() {
        None => Startup::Earliest,
        Some(v) => {
            let hint = "write startup = \"earliest\", \"latest\" or { timestamp = \"2026-01-01T00:00:00Z\" }";
            match v.get_ref() {
                toml::Value::String(x) if x == "earliest" => Startup::Earliest,
                toml::Value::String(x) if x == "latest" => Startup::Latest,
                toml::Value::Table(t) if t.len() == 1 => {
                    let text = match t.get("timestamp") {
                        Some(toml::Value::String(ts)) => Some(ts.clone()),
                        Some(toml::Value::Datetime(d)) => Some(d.to_string()),
                        _ => None,
                    };
                    let ms = text
                        .and_then(|ts| humantime::parse_rfc3339_weak(&ts).ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as i64);
                    Startup::Timestamp(ms.ok_or_else(|| src.error(Some(v.span()), hint))?)
                }
                _ => return Err(src.error(Some(v.span()), hint)),
            }
        }
    })
}

/// `watermark` of a Kafka source: its column must be a timestamp of the messages.
fn watermark(
    src: &SourceText<'_>,
    w: &Spanned<WatermarkSection>,
    format: Format,
    columns: &[arrow_schema::Field],
) -> Result<lakeshore_kafka::WatermarkOptions, ConfigError> {
    let spec = w.get_ref();
    if let Some(c) = &spec.column {
        let schema = if format == Format::Raw {
            lakeshore_kafka::decode::raw_schema()
        } else {
            std::sync::Arc::new(arrow_schema::Schema::new(columns.to_vec()))
        };
        let ok = schema.field_with_name(c).is_ok_and(|f| {
            matches!(
                f.data_type(),
                arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _)
            )
        });
        if !ok {
            let declare = if columns.is_empty() && format == Format::Json {
                " (inferred columns are never timestamps: declare columns)"
            } else {
                ""
            };
            return Err(src.error(
                Some(w.span()),
                format!("watermark column `{c}` must be a timestamp or timestamptz column of the messages{declare}; leave column out to use the Kafka timestamps"),
            ));
        }
    }
    Ok(lakeshore_kafka::WatermarkOptions {
        column: spec.column.clone(),
        lateness_micros: spec
            .lateness
            .as_ref()
            .map(|d| d.0.as_micros() as i64)
            .unwrap_or(0),
        idle: spec
            .idle_timeout
            .as_ref()
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
    })
}

/// `scale_out` needs declared columns and the classic, eager group protocol.
fn check_scale_out(
    src: &SourceText<'_>,
    s: &KafkaSection,
    v: &Spanned<bool>,
    format: Format,
    columns: &[arrow_schema::Field],
) -> Result<(), ConfigError> {
    if format == Format::Json && columns.is_empty() {
        return Err(src.error(
            Some(v.span()),
            "scale_out needs declared columns (each process would infer its own); \
             add columns = [\"name type\", ...]",
        ));
    }
    if let Some(protocol) = s
        .properties
        .get("group.protocol")
        .filter(|p| p.0 != "classic")
    {
        return Err(src.error(
            Some(v.span()),
            format!(
                "scale_out works with the classic group protocol; remove group.protocol = \
                 \"{}\"",
                protocol.0
            ),
        ));
    }
    if let Some(strategy) = s
        .properties
        .get("partition.assignment.strategy")
        .filter(|p| p.0.contains("cooperative"))
    {
        return Err(src.error(
            Some(v.span()),
            format!(
                "scale_out works with the eager rebalance protocol; remove \
                 partition.assignment.strategy = \"{}\" (or use \"range\" or \
                 \"roundrobin\")",
                strategy.0
            ),
        ));
    }
    Ok(())
}

impl SourceSection for KafkaSection {
    fn plan(
        &self,
        src: &SourceText<'_>,
        pipeline: &str,
        _columns: &lakeshore_api::ColumnFilter,
    ) -> Result<SourcePlan, ConfigError> {
        plan(src, self, pipeline)
    }
}

/// A Kafka source's validated options.
#[derive(Debug, Clone)]
pub struct Kafka(pub KafkaOptions);

#[async_trait::async_trait]
impl SourceConnector for Kafka {
    async fn open(
        &self,
        position: Option<&SourcePosition>,
        bounded: bool,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Box<dyn Source>> {
        Ok(Box::new(
            KafkaSource::open(self.0.clone(), position, bounded, ledger).await?,
        ))
    }

    async fn check(&self) -> Result<Vec<String>> {
        lakeshore_kafka::check(&self.0).await
    }

    fn scale_out(&self) -> bool {
        self.0.scale_out
    }

    #[cfg(feature = "bench")]
    fn as_any(&self) -> &dyn Any {
        self
    }
}
