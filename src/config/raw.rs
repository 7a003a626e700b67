//! What the user writes: the pipeline file, field by field.
//!
//! These structs are the reference documentation of the pipeline file: every field has a
//! doc comment, and `docs/config.md` is generated from this file by a test
//! (`config::docs::config_reference_is_up_to_date`). Unknown fields are rejected.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::{ByteSize, EnvString, EnvUrl, HumanDuration};

/// A pipeline file. The source and sink sections are chosen by their `type`, so that
/// unknown keys are reported at their own line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline<S, K> {
    /// `[pipeline]`: name and checkpointing.
    pub pipeline: PipelineSection,
    /// `[source]`: where changes come from.
    pub source: S,
    /// `[sink]`: where they land.
    pub sink: K,
    /// `[[route]]`: optional renames, e.g. to merge sharded tables into one.
    #[serde(default)]
    pub route: Vec<Route>,
}

/// `[pipeline]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name of the pipeline; identifies its checkpoints and its commits in the lake
    /// (`lakeshore.pipeline`). Letters, digits, `-` and `_`.
    pub name: Spanned<String>,
    /// How often a checkpoint commits to the lake, e.g. `"10s"`. Default `"10s"`.
    pub checkpoint_interval: Option<Spanned<HumanDuration>>,
    /// Where checkpoint records live: a directory path or `file://` / `s3://` URL.
    /// Default: `state/` next to the Iceberg warehouse directory.
    pub state: Option<EnvString>,
    /// A table whose writer meets input it cannot take (a type change Iceberg cannot
    /// promote, rows that do not fit the lake table): `"fail"` (default: the pipeline
    /// stops, naming table and column) or `"isolate"` (the table is parked, its reason
    /// shown in `/pipelines`, and the pipeline's other tables go on; the parked table
    /// misses the changes made while parked: once the cause is fixed, re-read it with
    /// `POST /pipelines/{name}/resnapshot`).
    pub on_table_error: Option<Spanned<String>>,
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Source table name or glob (`*` matches any run of characters).
    pub from: Spanned<String>,
    /// Lake table name (without namespace).
    pub to: Spanned<String>,
}

/// `[source]` with `type = "datagen"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatagenSection {
    /// `"datagen"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Data set: `"nexmark"` (tables person, auction, bid) or `"orders"` (table orders,
    /// keyed by order_id, with inserts, updates and deletes).
    pub profile: DatagenProfile,
    /// Number of events; omit for an unbounded stream.
    pub events: Option<u64>,
    /// Events per second; 0 (default) = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Seed of every random choice. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Events per generated batch. Default 8192.
    pub batch_events: Option<Spanned<u64>>,
    /// `orders` only: the first `initial_rows` events are inserts. Default 0.
    #[serde(default)]
    pub initial_rows: u64,
    /// `orders` only: from this event on, rows carry a new column `note` (a schema
    /// change, to exercise schema evolution).
    pub add_column_at: Option<Spanned<u64>>,
}

/// `[source]` with `type = "postgres"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// `"postgres"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Connection URL, e.g. `"postgres://app:${PGPASSWORD}@db:5432/shop"`. The user needs
    /// the REPLICATION attribute (unless `startup = "snapshot-only"`) and SELECT on the
    /// tables. A `${VAR}` in the user information or as `password=` is percent-encoded,
    /// so any password works. The password never appears in logs or messages. TLS as in
    /// libpq:
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` (`disable`, `prefer` (default),
    /// `require`, `verify-ca`, `verify-full`).
    pub url: EnvUrl,
    /// Tables to replicate as `schema.table`; `*` matches any run of characters, e.g.
    /// `["public.orders", "shop.*"]`.
    pub tables: Vec<Spanned<String>>,
    /// Publication name; created for the tables if absent, extended if it lacks some.
    /// Default `lakeshore_<pipeline name>`.
    pub publication: Option<Spanned<String>>,
    /// Logical replication slot name; created if absent, reused if present, never
    /// dropped by lakeshore. Default `lakeshore_<pipeline name>`.
    pub slot: Option<Spanned<String>>,
    /// `"snapshot"` (default: every table, then the change stream), `"latest"` (changes
    /// from now on only) or `"snapshot-only"` (no slot; stops after the snapshot).
    pub startup: Option<PostgresStartup>,
    /// Rows per snapshot chunk (one short read transaction each). Default 20000.
    pub chunk_size: Option<Spanned<u64>>,
    /// Connections that read snapshot chunks ahead, of different tables at once (a
    /// table's own chunks follow each other in key order). Default 2.
    pub parallelism: Option<Spanned<u64>>,
    /// Key columns of tables without a primary key, e.g. `{ "public.events" = ["id"] }`;
    /// such tables also need `REPLICA IDENTITY FULL`.
    #[serde(default)]
    pub key_columns: BTreeMap<String, Vec<String>>,
}

/// `[source]` with `type = "mysql"` (MySQL or MariaDB).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSection {
    /// `"mysql"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Connection URL, e.g. `"mysql://cdc:${MYSQL_PASSWORD}@db:3306"`. The user needs
    /// REPLICATION SLAVE, REPLICATION CLIENT and SELECT. A `${VAR}` in the user
    /// information is percent-encoded, so any password works; it never appears in logs or
    /// messages. TLS as the `mysql` client names it:
    /// `?ssl-mode=verify_identity&ssl-ca=/path/ca.pem` (`disabled`, `preferred` (default),
    /// `required`, `verify_ca`, `verify_identity`).
    pub url: EnvUrl,
    /// Tables to replicate as `db.table`; `*` matches any run of characters, e.g.
    /// `["shop.orders_*"]` (route them into one lake table with `[[route]]`).
    pub tables: Vec<Spanned<String>>,
    /// The replica id lakeshore uses on the binlog connection; unique among the server's
    /// replicas. Default: derived from the pipeline name.
    pub server_id: Option<Spanned<u64>>,
    /// `"snapshot"` (default: every table, then the binlog), `"latest"` (changes from now
    /// on only), `"snapshot-only"` (stops after the snapshot), `{ gtid = "0-1-100" }`
    /// (MariaDB: changes after that GTID, no snapshot; on MySQL the executed set,
    /// `{ gtid = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100" }`) or `{ file = "mysql-bin.000042",
    /// position = 4 }` (changes from that binlog position, no snapshot).
    pub startup: Option<Spanned<toml::Value>>,
    /// Rows per snapshot chunk (one short consistent-snapshot transaction each). Default
    /// 20000.
    pub chunk_size: Option<Spanned<u64>>,
    /// Connections that read snapshot chunks ahead, of different tables at once. Default 2.
    pub parallelism: Option<Spanned<u64>>,
}

/// `[source]` with `type = "kafka"`.
#[derive(Debug, Deserialize)]
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
    pub startup: Option<Spanned<toml::Value>>,
    /// `"json"` (one object per message, in `columns`), `"debezium-json"` and
    /// `"canal-json"` (change events: inserts, updates and deletes of rows in
    /// `columns`, keyed by `key`) or `"raw"` (key, value, headers, topic, partition,
    /// offset, timestamp). Default `"json"`.
    pub format: Option<Spanned<String>>,
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
    pub on_error: Option<Spanned<String>>,
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

/// Where a PostgreSQL source starts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresStartup {
    /// Snapshot, then follow the WAL.
    Snapshot,
    /// Follow the WAL from now.
    Latest,
    /// Snapshot only.
    SnapshotOnly,
}

/// Data sets of the generator.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatagenProfile {
    /// Nexmark persons, auctions and bids.
    Nexmark,
    /// Keyed orders.
    Orders,
}

/// `[sink]` with `type = "iceberg"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSection {
    /// `"iceberg"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// The catalog, e.g. `{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }`
    /// (`warehouse` may be `s3://bucket/prefix`, with `storage`).
    pub catalog: CatalogSection,
    /// Namespace of the tables (dots separate levels).
    pub namespace: Spanned<String>,
    /// S3 settings of an `s3://` warehouse, as for the Hive sink: `{ endpoint = "...",
    /// region = "...", access_key_id = "${AWS_ACCESS_KEY_ID}", secret_access_key =
    /// "${AWS_SECRET_ACCESS_KEY}" }`; keys left out come from the `AWS_*` environment.
    /// The state store uses them too. Values are never logged.
    #[serde(default)]
    pub storage: BTreeMap<String, EnvString>,
    /// `"append"` (data files only) or `"upsert"` (one row per primary key; updates and
    /// deletes become position deletes). Default `"upsert"` for keyed tables.
    pub mode: Option<Spanned<SinkMode>>,
    /// Roll data files at this size, e.g. `"128MiB"`. Default `"128MiB"`.
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Parquet codec: `"zstd"`, `"zstd(N)"`, `"snappy"` or `"none"`. Default `"zstd(1)"`.
    pub compression: Option<Spanned<String>>,
    /// Close a Parquet row group at this encoded size, e.g. `"4MiB"` (the default); each
    /// open data file buffers about this much.
    pub row_group_size: Option<Spanned<ByteSize>>,
    /// At most this many files of one table are open at once, e.g. `32`. Each open file
    /// holds its row group and its columns' encoders. From 16 open files (or this many, if
    /// lower) on, opening another closes the least recently written one; the limit doubles
    /// (up to this, for the rest of the run) when a partition closed that way is written
    /// again in the same checkpoint. Default `128`.
    pub max_open_files: Option<Spanned<u64>>,
    /// Partition transforms per lake table, e.g. `orders = ["day(created_at)"]`.
    /// Transforms: a column name (identity), `identity(c)`, `year(c)`, `month(c)`,
    /// `day(c)`, `hour(c)`, `bucket[N](c)`, `truncate[W](c)`.
    #[serde(default)]
    pub partitioning: BTreeMap<String, Vec<Spanned<String>>>,
    /// Table maintenance (`lakeshore maintain`, and in the daemon every `interval`).
    pub maintenance: Option<MaintenanceSection>,
}

/// `[sink.maintenance]` of an Iceberg sink: compaction of the pipeline's tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSection {
    /// How often the daemon (`lakeshore run`) maintains the pipeline's tables, e.g.
    /// `"10m"`. Default: never (only `lakeshore maintain`).
    pub interval: Option<Spanned<HumanDuration>>,
    /// When a partition is compacted (any one suffices), e.g.
    /// `{ delete_files = 10, deleted_ratio = 0.1, small_files = 10 }` (the defaults).
    pub compact_when: Option<CompactWhenSection>,
    /// Size of the files compaction writes. Default: the sink's `target_file_size`.
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Expire snapshots older than this, e.g. `"5d"`, and delete the files only they
    /// reach. Default: keep every snapshot. A pipeline's newest commit and those after it
    /// are always kept (its recovery reads them).
    pub expire_snapshots_older_than: Option<Spanned<HumanDuration>>,
    /// Snapshots always kept, however old. Default 1.
    pub keep_last_snapshots: Option<Spanned<usize>>,
    /// Delete files under the table's location that no snapshot references (left by
    /// killed or lost commits) once older than this, e.g. `"3d"`; at least `"1h"`.
    /// Default: never.
    pub remove_orphans_older_than: Option<Spanned<HumanDuration>>,
}

/// `compact_when` of `[sink.maintenance]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactWhenSection {
    /// At least this many delete files in the partition. Default 10.
    pub delete_files: Option<usize>,
    /// Deleted rows are at least this fraction of the partition's rows. Default 0.1.
    pub deleted_ratio: Option<Spanned<f64>>,
    /// At least this many data files under 3/4 of the target size. Default 10.
    pub small_files: Option<usize>,
}

/// `[sink]` with `type = "hive"`: Hive-style `key=value/` directories of Parquet files,
/// committed exactly-once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiveSection {
    /// `"hive"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Root of the tables: a directory (relative to the working directory), a `file://`
    /// URL or `s3://bucket/prefix`. Table `t` is the directory `<path>/t/`.
    pub path: Spanned<EnvString>,
    /// Storage settings for `s3://` paths, e.g. `{ endpoint = "http://127.0.0.1:9000",
    /// region = "us-east-1", access_key_id = "${AWS_ACCESS_KEY_ID}", secret_access_key =
    /// "${AWS_SECRET_ACCESS_KEY}", allow_http = "true" }`. Keys left out are read from the
    /// `AWS_*` environment variables. Values are never logged.
    #[serde(default)]
    pub storage: BTreeMap<String, EnvString>,
    /// Partition directories of every table, outermost first, e.g. `["dt=date(ts)",
    /// "hour=hour(ts)", "region"]`. `name=date(c)` (`YYYY-MM-DD`), `name=hour(c)` (`HH`),
    /// `name=month(c)` (`YYYY-MM`) and `name=year(c)` (`YYYY`) take a timestamp or date
    /// column, which stays in the files; a plain column (or `name=column`) is written into
    /// the path and left out of the files, as Hive does. Default: no partitions.
    #[serde(default)]
    pub partition_by: Vec<Spanned<String>>,
    /// Lists that replace `partition_by` for single tables, e.g. `events_dead_letters =
    /// []`.
    #[serde(default)]
    pub partitioning: BTreeMap<String, Vec<Spanned<String>>>,
    /// Roll files at this size, e.g. `"128MiB"` (the default).
    pub target_file_size: Option<Spanned<ByteSize>>,
    /// Also roll a file once it is this old, e.g. `"5min"`. Files always close at a
    /// checkpoint. Default: only size and checkpoints roll files.
    pub rollover_interval: Option<Spanned<HumanDuration>>,
    /// Parquet codec: `"zstd"`, `"zstd(N)"`, `"snappy"` or `"none"`. Default `"zstd(1)"`.
    pub compression: Option<Spanned<String>>,
    /// Close a Parquet row group at this encoded size, e.g. `"4MiB"` (the default); each
    /// open file buffers about this much.
    pub row_group_size: Option<Spanned<ByteSize>>,
    /// At most this many files of one table are open at once, e.g. `32`. Each open file
    /// holds its row group and its columns' encoders. From 16 open files (or this many, if
    /// lower) on, opening another closes the least recently written one; the limit doubles
    /// (up to this, for the rest of the run) when a partition closed that way is written
    /// again in the same checkpoint. Default `128`.
    pub max_open_files: Option<Spanned<u64>>,
    /// A partition whose directories are all time functions (`dt=date(ts)`,
    /// `hour=hour(ts)`) is committed (`_SUCCESS` written, the command run) at the first
    /// checkpoint after the source's watermark passes its end plus this delay, e.g.
    /// `"10min"`. Default `"0s"`. Needs a watermark (`[source] watermark`).
    pub commit_delay: Option<Spanned<HumanDuration>>,
    /// Shell command run once per committed partition (after its `_SUCCESS`), e.g. to
    /// add it to a metastore: `'hive -e "MSCK REPAIR TABLE $LAKESHORE_TABLE"'`. It sees
    /// `LAKESHORE_TABLE`, `LAKESHORE_PARTITION` (`dt=2026-11-27/hour=13`) and
    /// `LAKESHORE_PARTITION_URL`, and not the environment variables lakeshore's
    /// configuration takes secrets from (`${NAME}` references, `LAKESHORE_API_TOKEN`). A failure (or 5 minutes without finishing) is retried
    /// with the commit; after a crash it may run again, so it should be idempotent.
    pub partition_commit_command: Option<String>,
}

/// How rows land in Iceberg.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// Data files only.
    Append,
    /// One live row per primary key.
    Upsert,
}

/// `[sink.catalog]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// `"sql"` (SQLite file or PostgreSQL database).
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// `sqlite://path/catalog.db` (relative paths are resolved against the working
    /// directory) or `postgres://user:${PASSWORD}@host:5432/db`.
    pub uri: EnvUrl,
    /// Warehouse directory (relative to the working directory), `file://` URL or
    /// `s3://bucket/prefix` (S3 settings in `[sink] storage`).
    pub warehouse: EnvString,
    /// Catalog name recorded with every table; readers must use the same. Default
    /// `"lakeshore"`.
    pub name: Option<String>,
}

/// The daemon file (`lakeshore run --config configs/lakeshore.toml`): settings of the
/// process that runs every pipeline file it is given. All keys are optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    /// Address of the HTTP endpoints (`/health`, `/ready`, `/metrics`, `/pipelines`),
    /// e.g. `"127.0.0.1:8080"`. `--http` on the command line wins. Default: no HTTP.
    /// Any address other than loopback needs a token (`[auth]`).
    pub http: Option<Spanned<String>>,
    /// `"text"` (default) or `"json"` (one object per line). `--log-format` wins.
    pub log_format: Option<Spanned<String>>,
    /// Where pipelines without `[pipeline] state` keep their checkpoints: a directory or
    /// `file://` / `s3://` URL; each pipeline gets its own prefix under it.
    pub state: Option<EnvString>,
    /// Checkpoint interval of pipelines that do not set one. Default `"10s"`.
    pub checkpoint_interval: Option<Spanned<HumanDuration>>,
    /// How long SIGTERM waits for every pipeline's final checkpoint before the process
    /// exits with status 1. Default `"30s"`.
    pub grace_period: Option<Spanned<HumanDuration>>,
    /// How often the pipeline files are checked for changes (SIGHUP checks at once).
    /// Default `"2s"`.
    pub watch_interval: Option<Spanned<HumanDuration>>,
    /// `[restart]`: how a failed pipeline is restarted.
    pub restart: Option<RestartSection>,
    /// `[auth]`: the token the HTTP endpoints require.
    pub auth: Option<AuthSection>,
    /// `[tls]`: serve the HTTP endpoints over TLS.
    pub tls: Option<TlsSection>,
}

/// `[auth]` of the daemon file. With a token, every HTTP endpoint except `/health` and
/// `/ready` answers only requests with `Authorization: Bearer <token>` (401 otherwise),
/// `/metrics` too unless `metrics = "open"`. Without one (and without the
/// `LAKESHORE_API_TOKEN` environment variable), the daemon listens only on a loopback
/// address. `lakeshore status --config` reads the token from the same place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The token, e.g. `"${LAKESHORE_API_TOKEN}"`; at least 16 characters.
    pub token: Option<Spanned<EnvString>>,
    /// A file holding the token, e.g. a mounted Kubernetes Secret
    /// (`"/etc/lakeshore/token/token"`); surrounding whitespace is ignored.
    pub token_file: Option<Spanned<String>>,
    /// `"token"` (default): `/metrics` needs the token too; `"open"`: whoever reaches the
    /// port may scrape it (e.g. behind a NetworkPolicy that admits only Prometheus).
    pub metrics: Option<MetricsAccess>,
}

/// Who may read `/metrics` (`[auth] metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// With the token only.
    Token,
    /// Anyone who reaches the port.
    Open,
}

/// `[tls]` of the daemon file: the HTTP endpoints speak HTTPS with this certificate
/// (for clusters without a service mesh).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

/// `[restart]` of the daemon file. A failed pipeline restarts alone from its last
/// checkpoint after a pause that doubles from `initial_backoff` up to `max_backoff`
/// (back to `initial_backoff` once it ran for a minute). Configuration errors (a wrong
/// setting on the server too) are not retried, nor is an error that repeated
/// `give_up_after` times: the pipeline shows `failed` until its file changes or it is
/// resumed (`POST /pipelines/{name}/resume`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSection {
    /// First pause. Default `"1s"`.
    pub initial_backoff: Option<Spanned<HumanDuration>>,
    /// Longest pause. Default `"60s"`.
    pub max_backoff: Option<Spanned<HumanDuration>>,
    /// Restarts after which a pipeline that keeps failing with the same error stops
    /// retrying and shows `failed` with that error (the source's retained WAL or binlog
    /// would otherwise pile up behind a retry that cannot succeed). A different error, or
    /// a run that lasted a minute, starts the count again. Default 10.
    pub give_up_after: Option<Spanned<u32>>,
}
