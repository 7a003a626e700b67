//! The validated plan: what a pipeline will run, with every default filled in and every
//! path made absolute. Nothing here touches the network or the disk beyond reading the
//! pipeline file; `validate` and `run` share it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lakeshore_api::TableSchema;
use lakeshore_datagen::{DatagenOptions, DatagenSource, Profile};
use lakeshore_iceberg::IcebergOptions;
use lakeshore_kafka::KafkaOptions;
use lakeshore_mysql::MysqlOptions;
use lakeshore_postgres::{PostgresOptions, Startup};
use serde::Deserialize;
use toml::Spanned;

use super::raw::{self, DatagenProfile, RawPipeline};
use super::sinks::SinkSection;
use super::{ConfigError, SourceText};

/// A pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Checkpoint store URL (`file:///...` or `s3://...`).
    pub state_url: String,
    /// Settings the file left to their defaults.
    pub defaulted: Defaulted,
    /// `on_table_error = "isolate"`.
    pub isolate_tables: bool,
    /// The source.
    pub source: SourcePlan,
    /// The sink.
    pub sink: SinkPlan,
    /// Source table → lake table.
    pub routes: Vec<RoutePlan>,
}

/// A validated source.
#[derive(Debug, Clone)]
pub enum SourcePlan {
    /// The generator.
    Datagen(DatagenOptions),
    /// PostgreSQL.
    Postgres(PostgresOptions),
    /// MySQL or MariaDB.
    Mysql(MysqlOptions),
    /// Kafka topics.
    Kafka(KafkaOptions),
}

impl SourcePlan {
    /// Total events of a bounded source, when known.
    pub fn size_hint(&self) -> Option<u64> {
        match self {
            SourcePlan::Datagen(o) => o.events,
            SourcePlan::Postgres(_) | SourcePlan::Mysql(_) | SourcePlan::Kafka(_) => None,
        }
    }

    /// Tables the source produces, when known without connecting.
    pub fn known_tables(&self) -> Option<Vec<TableSchema>> {
        match self {
            SourcePlan::Datagen(o) => Some(DatagenSource::schemas(o)),
            SourcePlan::Postgres(_) | SourcePlan::Mysql(_) | SourcePlan::Kafka(_) => None,
        }
    }
}

/// A validated sink.
#[derive(Debug, Clone)]
pub enum SinkPlan {
    /// Iceberg tables.
    Iceberg {
        /// Sink options.
        options: IcebergOptions,
        /// Partition expressions per lake table.
        partitioning: BTreeMap<String, Vec<String>>,
    },
    /// Hive-style Parquet directories.
    Hive {
        /// Sink options.
        options: lakeshore_hive::HiveOptions,
        /// Partition expressions of single tables.
        partitioning: BTreeMap<String, Vec<String>>,
        /// Partition expressions of every other table.
        default_partitioning: Vec<String>,
    },
}

impl SinkPlan {
    /// Partition expressions per lake table, and those of tables not listed.
    pub fn partitioning(&self) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        match self {
            SinkPlan::Iceberg { partitioning, .. } => (partitioning.clone(), Vec::new()),
            SinkPlan::Hive {
                partitioning,
                default_partitioning,
                ..
            } => (partitioning.clone(), default_partitioning.clone()),
        }
    }

    /// Parquet codec and row-group size of the sink's files.
    #[cfg(feature = "bench")]
    pub fn parquet(&self) -> (lakeshore_api::files::Codec, usize) {
        match self {
            SinkPlan::Iceberg { options, .. } => (options.codec, options.row_group_bytes),
            SinkPlan::Hive { options, .. } => (options.codec, options.row_group_bytes),
        }
    }

    /// Settings for the state store when it shares the sink's storage.
    pub fn storage(&self) -> lakeshore_hive::StorageOptions {
        match self {
            SinkPlan::Iceberg { options, .. } => options.catalog.storage.clone(),
            SinkPlan::Hive { options, .. } => options.storage.clone(),
        }
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    /// Glob over source table names.
    pub from: String,
    /// Lake table name.
    pub to: String,
}

/// Which settings the pipeline file left to their defaults (the daemon file may set
/// them for every pipeline).
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaulted {
    /// `[pipeline] checkpoint_interval`.
    pub checkpoint_interval: bool,
    /// `[pipeline] state`.
    pub state: bool,
}

impl Plan {
    /// Apply the daemon file's defaults to the settings the pipeline file left out.
    pub fn apply_defaults(&mut self, daemon: &super::daemon::DaemonConfig) {
        if self.defaulted.checkpoint_interval
            && let Some(i) = daemon.checkpoint_interval
        {
            self.checkpoint_interval = i;
        }
        if self.defaulted.state
            && let Some(s) = &daemon.state
        {
            self.state_url = s.clone();
        }
    }

    /// True when several processes share the source (Kafka `scale_out`).
    pub fn scale_out(&self) -> bool {
        matches!(&self.source, SourcePlan::Kafka(k) if k.scale_out)
    }

    /// The lake table a source table lands in: the first matching route, else the
    /// source name without its database/schema prefix.
    pub fn target_table(&self, source_table: &str) -> String {
        self.route(source_table).0
    }

    /// [`Plan::target_table`], and whether a `[[route]]` chose it (several source tables
    /// may share a lake table only by a route).
    pub fn route(&self, source_table: &str) -> (String, bool) {
        for r in &self.routes {
            if glob_match(&r.from, source_table) {
                return (r.to.clone(), true);
            }
        }
        let bare = source_table.rsplit('.').next().unwrap_or(source_table);
        (bare.to_string(), false)
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct Probe {
    pipeline: Option<toml::Value>,
    source: Option<Spanned<Typed>>,
    sink: Option<Spanned<Typed>>,
}

const SOURCE_TYPES: &str = "\"datagen\", \"postgres\", \"mysql\", \"kafka\"";
const SINK_TYPES: &str = "\"iceberg\", \"hive\"";

/// Suggest the closest known name for an unknown field in a serde message, or what to
/// add for a missing one.
fn with_hint(message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        return format!(
            "missing field `{field}`: add `{field} = ...` to this section (every key is described in docs/config.md)"
        );
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.trim_end().to_string();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = known
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .min()
        .filter(|(d, _)| *d <= 2);
    let list = known.join(", ");
    match best {
        Some((_, k)) => format!("unknown field `{field}`; did you mean `{k}`? (known: {list})"),
        None => format!("unknown field `{field}` (known: {list})"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn toml_error(src: &SourceText<'_>, e: toml::de::Error) -> ConfigError {
    src.error(e.span(), with_hint(e.message()))
}

/// Parse and validate a pipeline file's text.
pub fn parse(src: &SourceText<'_>) -> Result<Plan, ConfigError> {
    let probe: Probe = toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
    if probe.pipeline.is_none() {
        return Err(src.error(
            None,
            "missing [pipeline] section; add one with at least `name = \"...\"`",
        ));
    }
    let source = probe.source.ok_or_else(|| {
        src.error(
            None,
            format!("missing [source] section; add one with type = {SOURCE_TYPES}"),
        )
    })?;
    let sink = probe.sink.ok_or_else(|| {
        src.error(
            None,
            format!("missing [sink] section; add one with type = {SINK_TYPES}"),
        )
    })?;
    let source_type = source.get_ref().kind.clone().ok_or_else(|| {
        src.error(
            Some(source.span()),
            format!("[source] needs `type`; this build supports {SOURCE_TYPES}"),
        )
    })?;
    let sink_type = sink.get_ref().kind.clone().ok_or_else(|| {
        src.error(
            Some(sink.span()),
            format!("[sink] needs `type`; this build supports {SINK_TYPES}"),
        )
    })?;
    match source_type.get_ref().as_str() {
        "datagen" => with_sink(src, &sink_type, |src, s: &raw::DatagenSection, _| {
            datagen(src, s)
        }),
        "postgres" => with_sink(src, &sink_type, postgres),
        "mysql" => with_sink(src, &sink_type, mysql),
        "kafka" => with_sink(src, &sink_type, kafka),
        other => Err(src.error(
            Some(source_type.span()),
            format!("unknown source type \"{other}\"; this build supports {SOURCE_TYPES}"),
        )),
    }
}

/// Parse the whole file with source section `S` and the sink section `sink_type` names.
fn with_sink<S: serde::de::DeserializeOwned>(
    src: &SourceText<'_>,
    sink_type: &Spanned<String>,
    source: impl Fn(&SourceText<'_>, &S, &str) -> Result<SourcePlan, ConfigError>,
) -> Result<Plan, ConfigError> {
    match sink_type.get_ref().as_str() {
        "iceberg" => {
            let raw: RawPipeline<S, raw::IcebergSection> =
                toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
            let plan = source(src, &raw.source, raw.pipeline.name.get_ref())?;
            build(src, raw, plan)
        }
        "hive" => {
            let raw: RawPipeline<S, raw::HiveSection> =
                toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
            let plan = source(src, &raw.source, raw.pipeline.name.get_ref())?;
            build(src, raw, plan)
        }
        other => Err(src.error(
            Some(sink_type.span()),
            format!("unknown sink type \"{other}\"; this build supports {SINK_TYPES}"),
        )),
    }
}

pub(super) fn absolute(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn build<S, K: SinkSection>(
    src: &SourceText<'_>,
    raw: RawPipeline<S, K>,
    source: SourcePlan,
) -> Result<Plan, ConfigError> {
    let p = &raw.pipeline;
    let name = p.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(src.error(
            Some(p.name.span()),
            format!("pipeline name \"{name}\" may hold only letters, digits, `-` and `_`"),
        ));
    }
    let checkpoint_interval = match &p.checkpoint_interval {
        None => Duration::from_secs(10),
        Some(d) if d.get_ref().0 < Duration::from_millis(100) => {
            return Err(src.error(
                Some(d.span()),
                "checkpoint_interval must be at least \"100ms\"",
            ));
        }
        Some(d) => d.get_ref().0,
    };

    let isolate_tables = match &p.on_table_error {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "fail" => false,
            "isolate" => true,
            other => {
                return Err(src.error(
                    Some(v.span()),
                    format!("on_table_error \"{other}\" is unknown; write \"fail\" or \"isolate\""),
                ));
            }
        },
    };
    let (sink, default_state) = raw.sink.plan(src, &name)?;
    let state_url = match &p.state {
        Some(s) => location_url(&s.0),
        None => default_state,
    };
    let routes = raw
        .route
        .iter()
        .map(|r| RoutePlan {
            from: r.from.get_ref().clone(),
            to: r.to.get_ref().clone(),
        })
        .collect();
    let plan = Plan {
        name,
        file: src.file.to_path_buf(),
        checkpoint_interval,
        state_url,
        defaulted: Defaulted {
            checkpoint_interval: p.checkpoint_interval.is_none(),
            state: p.state.is_none(),
        },
        isolate_tables,
        source,
        sink,
        routes,
    };
    if let Some(tables) = plan.source.known_tables() {
        let by_target: BTreeMap<String, &TableSchema> = tables
            .iter()
            .map(|t| (plan.target_table(&t.name), t))
            .collect();
        raw.sink.check_tables(src, &plan, &by_target)?;
    }
    Ok(plan)
}

pub(super) fn location_url(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("file://{}", absolute(s).display())
    }
}

fn postgres(
    src: &SourceText<'_>,
    s: &raw::PostgresSection,
    pipeline: &str,
) -> Result<SourcePlan, ConfigError> {
    if s.tables.is_empty() {
        return Err(src.error(
            None,
            "[source] tables is empty; list tables as \"schema.table\", e.g. tables = [\"public.orders\"]",
        ));
    }
    for t in &s.tables {
        if !t.get_ref().contains('.') {
            return Err(src.error(
                Some(t.span()),
                format!(
                    "table \"{}\" needs its schema: write \"public.{}\"",
                    t.get_ref(),
                    t.get_ref()
                ),
            ));
        }
    }
    let default_name = format!("lakeshore_{}", pipeline.replace('-', "_").to_lowercase());
    let ident = |v: &Option<Spanned<String>>, what: &str| -> Result<String, ConfigError> {
        let Some(v) = v else {
            return Ok(default_name.clone());
        };
        let name = v.get_ref();
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(src.error(
                Some(v.span()),
                format!(
                    "{what} \"{name}\" may hold only lowercase letters, digits and `_` (at most 63)"
                ),
            ));
        }
        Ok(name.clone())
    };
    let (chunk_size, parallelism) = chunking(src, &s.chunk_size, &s.parallelism)?;
    Ok(SourcePlan::Postgres(PostgresOptions {
        parallelism,
        url: s.url.0.clone(),
        tables: s.tables.iter().map(|t| t.get_ref().clone()).collect(),
        publication: ident(&s.publication, "publication")?,
        slot: ident(&s.slot, "slot")?,
        startup: match s.startup.unwrap_or(raw::PostgresStartup::Snapshot) {
            raw::PostgresStartup::Snapshot => Startup::Snapshot,
            raw::PostgresStartup::Latest => Startup::Latest,
            raw::PostgresStartup::SnapshotOnly => Startup::SnapshotOnly,
        },
        chunk_size,
        batch_rows: 8192,
        key_columns: s.key_columns.clone(),
    }))
}

fn mysql(
    src: &SourceText<'_>,
    s: &raw::MysqlSection,
    pipeline: &str,
) -> Result<SourcePlan, ConfigError> {
    if s.tables.is_empty() {
        return Err(src.error(
            None,
            "[source] tables is empty; list tables as \"db.table\", e.g. tables = [\"shop.orders\"]",
        ));
    }
    for t in &s.tables {
        if !t.get_ref().contains('.') {
            return Err(src.error(
                Some(t.span()),
                format!(
                    "table \"{}\" needs its database: write \"mydb.{}\"",
                    t.get_ref(),
                    t.get_ref()
                ),
            ));
        }
    }
    let server_id = match &s.server_id {
        Some(id) if !(1..=u32::MAX as u64).contains(id.get_ref()) => {
            return Err(src.error(
                Some(id.span()),
                "server_id must be between 1 and 4294967295",
            ));
        }
        Some(id) => *id.get_ref() as u32,
        // Stable per pipeline, away from the small ids servers usually take.
        None => {
            let h = pipeline.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ b as u32).wrapping_mul(0x0100_0193)
            });
            0x4000_0000 | (h & 0x3fff_ffff)
        }
    };
    let (chunk_size, parallelism) = chunking(src, &s.chunk_size, &s.parallelism)?;
    Ok(SourcePlan::Mysql(MysqlOptions {
        url: s.url.0.clone(),
        tables: s.tables.iter().map(|t| t.get_ref().clone()).collect(),
        server_id,
        startup: mysql_startup(src, s.startup.as_ref())?,
        chunk_size,
        parallelism,
        batch_rows: 8192,
    }))
}

fn kafka(
    src: &SourceText<'_>,
    s: &raw::KafkaSection,
    pipeline: &str,
) -> Result<SourcePlan, ConfigError> {
    use lakeshore_kafka::{Format, Startup};
    if s.topics.is_empty() {
        return Err(src.error(
            None,
            "[source] topics is empty; list topic names (or ^regex), e.g. topics = [\"orders\"]",
        ));
    }
    let format = kafka_format(src, s)?;
    let columns = kafka_columns(src, s, format)?;
    let key = kafka_key(src, s, format, &columns)?;
    let on_error = kafka_on_error(src, s)?;
    let startup = kafka_startup(src, s)?;
    if format == Format::Json && columns.is_empty() && startup == Startup::Latest {
        return Err(src.error(
            s.startup.as_ref().map(|v| v.span()),
            "columns are inferred from the messages at the start, and startup = \"latest\" starts after all of them: declare columns = [\"name type\", ...]",
        ));
    }
    let watermark = match &s.watermark {
        None => None,
        Some(w) => Some(kafka_watermark(src, w, format, &columns)?),
    };
    let scale_out = s.scale_out.as_ref().is_some_and(|v| *v.get_ref());
    if let Some(v) = s.scale_out.as_ref().filter(|_| scale_out) {
        check_scale_out(src, s, v, format, &columns)?;
    }
    Ok(SourcePlan::Kafka(KafkaOptions {
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
    }))
}

/// `format` of a Kafka source.
fn kafka_format(
    src: &SourceText<'_>,
    s: &raw::KafkaSection,
) -> Result<lakeshore_kafka::Format, ConfigError> {
    use lakeshore_kafka::Format;
    Ok(match s.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("json") => Format::Json,
        Some("debezium-json") => Format::DebeziumJson,
        Some("canal-json") => Format::CanalJson,
        Some("raw") => Format::Raw,
        Some(other) => {
            return Err(src.error(
                s.format.as_ref().map(|f| f.span()),
                format!(
                    "format \"{other}\" is unknown; write \"json\", \"debezium-json\", \
                     \"canal-json\" or \"raw\""
                ),
            ));
        }
    })
}

/// The declared `columns` of a Kafka source, checked against its `format`.
fn kafka_columns(
    src: &SourceText<'_>,
    s: &raw::KafkaSection,
    format: lakeshore_kafka::Format,
) -> Result<Vec<arrow_schema::Field>, ConfigError> {
    use lakeshore_kafka::Format;
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
fn kafka_key(
    src: &SourceText<'_>,
    s: &raw::KafkaSection,
    format: lakeshore_kafka::Format,
    columns: &[arrow_schema::Field],
) -> Result<Vec<String>, ConfigError> {
    use lakeshore_kafka::Format;
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

/// `on_error` of a Kafka source.
fn kafka_on_error(
    src: &SourceText<'_>,
    s: &raw::KafkaSection,
) -> Result<lakeshore_kafka::OnError, ConfigError> {
    use lakeshore_kafka::OnError;
    Ok(match s.on_error.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("fail") => OnError::Fail,
        Some("skip") => OnError::Skip,
        Some("dead_letter") => OnError::DeadLetter,
        Some(other) => {
            return Err(src.error(
                s.on_error.as_ref().map(|f| f.span()),
                format!(
                    "on_error \"{other}\" is unknown; write \"fail\", \"skip\" or \"dead_letter\""
                ),
            ));
        }
    })
}

/// `startup` of a Kafka source: `"earliest"`, `"latest"` or `{ timestamp = "..." }`.
fn kafka_startup(
    src: &SourceText<'_>,
    s: &raw::KafkaSection,
) -> Result<lakeshore_kafka::Startup, ConfigError> {
    use lakeshore_kafka::Startup;
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
fn kafka_watermark(
    src: &SourceText<'_>,
    w: &Spanned<raw::WatermarkSection>,
    format: lakeshore_kafka::Format,
    columns: &[arrow_schema::Field],
) -> Result<lakeshore_kafka::WatermarkOptions, ConfigError> {
    use lakeshore_kafka::Format;
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
    s: &raw::KafkaSection,
    v: &Spanned<bool>,
    format: lakeshore_kafka::Format,
    columns: &[arrow_schema::Field],
) -> Result<(), ConfigError> {
    use lakeshore_kafka::Format;
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

/// `startup` of a MySQL source: a name, `{ gtid = "..." }` or `{ file = "...", position = N }`.
fn mysql_startup(
    src: &SourceText<'_>,
    v: Option<&Spanned<toml::Value>>,
) -> Result<lakeshore_mysql::Startup, ConfigError> {
    use lakeshore_mysql::Startup;
    let Some(v) = v else {
        return Ok(Startup::Snapshot);
    };
    let hint = "write startup = \"snapshot\", \"latest\", \"snapshot-only\", { gtid = \"0-1-100\" } (MariaDB), \
                { gtid = \"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100\" } (MySQL) \
                or { file = \"mysql-bin.000042\", position = 4 }";
    let bad = || src.error(Some(v.span()), hint);
    match v.get_ref() {
        toml::Value::String(name) => match name.as_str() {
            "snapshot" => Ok(Startup::Snapshot),
            "latest" => Ok(Startup::Latest),
            "snapshot-only" => Ok(Startup::SnapshotOnly),
            _ => Err(bad()),
        },
        toml::Value::Table(t) => {
            let keys: Vec<&str> = t.keys().map(String::as_str).collect();
            match (
                keys.as_slice(),
                t.get("gtid"),
                t.get("file"),
                t.get("position"),
            ) {
                (["gtid"], Some(toml::Value::String(g)), _, _)
                    if lakeshore_mysql::Gtid::parse(g).is_some() =>
                {
                    Ok(Startup::Gtid(g.clone()))
                }
                (_, _, Some(toml::Value::String(file)), Some(toml::Value::Integer(pos)))
                    if keys.len() == 2 && *pos >= 4 && !file.is_empty() =>
                {
                    Ok(Startup::File {
                        file: file.clone(),
                        position: *pos as u64,
                    })
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `chunk_size` (default 20000) and `parallelism` (default 2) of a database source.
fn chunking(
    src: &SourceText<'_>,
    chunk_size: &Option<Spanned<u64>>,
    parallelism: &Option<Spanned<u64>>,
) -> Result<(usize, usize), ConfigError> {
    let chunk_size = match chunk_size {
        Some(c) if *c.get_ref() < 100 => {
            return Err(src.error(Some(c.span()), "chunk_size must be at least 100"));
        }
        Some(c) => *c.get_ref() as usize,
        None => 20_000,
    };
    let parallelism = match parallelism {
        Some(p) if !(1..=64).contains(p.get_ref()) => {
            return Err(src.error(Some(p.span()), "parallelism must be between 1 and 64"));
        }
        Some(p) => *p.get_ref() as usize,
        None => 2,
    };
    Ok((chunk_size, parallelism))
}

fn datagen(src: &SourceText<'_>, s: &raw::DatagenSection) -> Result<SourcePlan, ConfigError> {
    if let (Some(at), DatagenProfile::Nexmark) = (&s.add_column_at, s.profile) {
        return Err(src.error(
            Some(at.span()),
            "add_column_at works with profile = \"orders\" only",
        ));
    }
    let batch_events = match &s.batch_events {
        Some(b) if *b.get_ref() == 0 => {
            return Err(src.error(Some(b.span()), "batch_events must be at least 1"));
        }
        Some(b) => *b.get_ref(),
        None => 8192,
    };
    Ok(SourcePlan::Datagen(DatagenOptions {
        profile: match s.profile {
            DatagenProfile::Nexmark => Profile::Nexmark,
            DatagenProfile::Orders => Profile::Orders,
        },
        events: s.events,
        rate: s.rate,
        seed: s.seed,
        batch_events,
        initial_rows: s.initial_rows,
        add_column_at: s.add_column_at.as_ref().map(|a| *a.get_ref()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_sharded_tables() {
        assert!(glob_match("shop.orders_*", "shop.orders_07"));
        assert!(!glob_match("shop.orders_*", "shop.order_items"));
        assert!(glob_match("*.a*c", "db.abbc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn unknown_fields_get_a_suggestion() {
        let m = with_hint("unknown field `evnts`, expected one of `type`, `events`, `rate`");
        assert_eq!(
            m,
            "unknown field `evnts`; did you mean `events`? (known: type, events, rate)"
        );
    }
}
