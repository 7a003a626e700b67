//! Kafka source: topics read with `isolation.level = read_committed` into lake tables,
//! exactly once.
//!
//! - The partitions of every matching topic are **assigned** (not subscribed) at the
//!   offsets stored in the last lake commit: the position is `{topic: {partition: next
//!   offset}}`, written with the data it covers. Offsets committed to the consumer group
//!   are for monitoring only (after the lake commit, see [`Source::ack`]).
//! - A polling thread gathers messages into chunks (contiguous bytes plus metadata); the
//!   source decodes a chunk per table with one pass of `arrow-json` (see [`decode`]).
//! - Every point between messages is consistent, so a barrier is emitted as soon as the
//!   chunks before it are out.
//! - Bad messages stop the pipeline naming topic, partition and offset (`on_error =
//!   "fail"`), are counted and skipped (`"skip"`), or land in a dead-letter table with
//!   their bytes and the error (`"dead_letter"`).
//! - Bounded runs (`lakeshore backfill`) stop once every partition reaches the end it had
//!   when the run started.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arrow_schema::{Field, Schema, SchemaRef};
use lakeshore_api::{Error, Lag, Ledger, Result, Source, SourceEvent, SourcePosition, TableSchema};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

mod assign;
#[cfg(feature = "bench")]
mod bench;
pub mod decode;
mod group;
mod infer;
mod poll;
mod take;
mod watermark;

use assign::{infer_columns, starts_by_time, topics_of};
#[cfg(feature = "bench")]
pub use bench::bare_consume;
pub use decode::Format;
use decode::RowDecoder;
use group::{Group, OpenChunk, SourceConsumer, SourceContext, unit};
use poll::{Polled, Polling};
use watermark::EventTime;
pub use watermark::WatermarkOptions;

/// Where a topic is read from when the lake has no offsets for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The oldest message still kept (default).
    Earliest,
    /// Messages produced from now on.
    Latest,
    /// The first message at or after this time (milliseconds since the epoch).
    Timestamp(i64),
}

/// What happens to a message that cannot be read (`on_error` in the pipeline file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop, naming topic, partition and offset (default).
    #[default]
    Fail,
    /// Count it and go on.
    Skip,
    /// Write it to the dead-letter table and go on.
    DeadLetter,
}

/// Validated `[source]` settings for `type = "kafka"`.
#[derive(Clone)]
pub struct KafkaOptions {
    /// `host:port[,host:port]`.
    pub brokers: String,
    /// Topic names; an entry starting with `^` is a regular expression over names.
    pub topics: Vec<String>,
    /// Consumer group, for committed offsets (monitoring) and broker-side quotas.
    pub group_id: String,
    pub startup: Startup,
    pub format: Format,
    /// Declared columns (JSON formats): name and Arrow type.
    pub columns: Vec<Field>,
    /// Key columns (upsert tables).
    pub key: Vec<String>,
    pub on_error: OnError,
    /// Source table name for every topic (default: each topic is its own table).
    pub table: Option<String>,
    /// Name of the dead-letter source table.
    pub dead_letter_table: String,
    /// librdkafka settings passed through (security, SASL, fetch sizes). Secret values
    /// are never logged.
    pub properties: BTreeMap<String, String>,
    /// Messages per chunk.
    pub batch_rows: usize,
    /// Event-time watermark, if the sink needs one.
    pub watermark: Option<WatermarkOptions>,
    /// Several processes share the partitions through the consumer group.
    pub scale_out: bool,
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("format", &self.format)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The resume position: the next offset to read, per topic and partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Columns inferred at the pipeline's first start (`"name type"`), kept for its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<String>>,
}

/// The Kafka source.
pub struct KafkaSource {
    opts: KafkaOptions,
    consumer: Arc<SourceConsumer>,
    topics: Arc<[String]>,
    tables: Vec<TableSchema>,
    /// Source table index per topic.
    table_of: Vec<usize>,
    decoders: Vec<Option<RowDecoder>>,
    dead_letter: Option<usize>,
    position: Position,
    rx: mpsc::Receiver<Result<Polled>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    out: VecDeque<SourceEvent>,
    barrier: Option<u64>,
    finished: bool,
    messages: u64,
    /// The last position the lake committed (for the group's offsets at close).
    acked: Option<Position>,
    /// Partitions that delivered a message since the source opened.
    resumed: std::collections::HashSet<(usize, i32)>,
    /// Event time per partition, for the watermark.
    event_time: EventTime,
    /// Broker timestamp (ms) of the newest message read, for the lag in seconds.
    newest_ms: Option<i64>,
    /// Shared (scale-out): barriers emitted and acks received so far, and revokes
    /// waiting for the ack of barrier number `.2`.
    shared: bool,
    barriers: u64,
    acks: u64,
    revoking: Vec<Revoking>,
    /// Each row's broker timestamp and partition:offset are recorded
    /// (`Source::record_origin`).
    record_origin: bool,
}

/// Shared: partitions being taken away, released by the ack of barrier number `after`.
struct Revoking {
    parts: Vec<(String, i32)>,
    done: std::sync::mpsc::Sender<()>,
    after: u64,
}

/// Where each partition of a bounded run ends.
type Ends = HashMap<(String, i32), i64>;

/// A librdkafka failure while doing `what`; the cause is kept as the source.
pub(crate) fn kafka_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::transient(format!("Kafka: {what}")).with_source(e)
}

/// Property names whose values are secrets.
fn is_secret(name: &str) -> bool {
    ["password", "secret", "key", "oauthbearer", "jaas", "token"]
        .iter()
        .any(|w| name.contains(w))
}

impl KafkaSource {
    /// Connect, find the topics' partitions and position them at `position` (or
    /// `startup`). `bounded`: stop at the ends the partitions have now. With a `ledger`
    /// (scale-out) the source subscribes instead and takes the partitions the consumer
    /// group gives it over from the ledger.
    pub async fn open(
        opts: KafkaOptions,
        position: Option<&SourcePosition>,
        bounded: bool,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Self> {
        let position: Position = match position {
            Some(p) => p.decode("Kafka")?,
            None => Position::default(),
        };
        let o = opts.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            Self::open_blocking(o, position, bounded, ledger.map(|l| (l, runtime)))
        })
        .await
        .map_err(|e| Error::internal(format!("opening Kafka: {e}")))?
    }

    pub(crate) fn client_config(opts: &KafkaOptions) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &opts.brokers)
            .set("group.id", &opts.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            // An offset the broker no longer has is an error, never a silent jump.
            .set("auto.offset.reset", "error")
            // Bounded prefetch: memory does not grow with the backlog.
            .set("queued.max.messages.kbytes", "32768")
            .set("fetch.max.bytes", "16777216");
        for (k, v) in &opts.properties {
            c.set(k, v);
        }
        c
    }

    /// The source's consumer with `context`; a bad setting is named without its value
    /// (which may be a secret).
    fn consumer(opts: &KafkaOptions, context: SourceContext) -> Result<SourceConsumer> {
        let mut config = Self::client_config(opts);
        if config.get("statistics.interval.ms").is_none() {
            config.set("statistics.interval.ms", group::STATS_INTERVAL_MS);
        }
        config.create_with_context(context).map_err(|e| {
            // librdkafka's message would repeat the value, which may be a secret.
            let what = match &e {
                KafkaError::ClientConfig(_, desc, key, _) => format!("{key}: {desc}"),
                other => other.to_string(),
            };
            Error::config(format!(
                "Kafka client settings: {what}; check [source] properties"
            ))
        })
    }

    fn open_blocking(
        opts: KafkaOptions,
        mut position: Position,
        bounded: bool,
        shared: Option<(Arc<dyn Ledger>, tokio::runtime::Handle)>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(4);
        let open_chunk: OpenChunk = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let is_shared = shared.is_some();
        let context = SourceContext {
            behind: AtomicI64::new(-1),
            login_refused: Default::default(),
            group: shared.map(|(ledger, runtime)| Group {
                ledger,
                runtime,
                startup: opts.startup.clone(),
                tx: tx.clone(),
                chunk: open_chunk.clone(),
                stop: stop.clone(),
            }),
        };
        let consumer = Self::consumer(&opts, context)?;
        let topics = topics_of(&consumer, &opts)?;
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let (ends, event_time, opts) = if is_shared {
            // The group assigns; the ledger says where each partition starts.
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            consumer
                .subscribe(&refs)
                .map_err(|e| kafka_error("subscribing to the topics", e))?;
            (HashMap::new(), EventTime::new(), opts)
        } else {
            Self::assign_all(&consumer, opts, &topics, &mut position, bounded)?
        };
        Self::start(
            opts, consumer, names, position, bounded, ends, event_time, tx, rx, open_chunk, stop,
        )
    }

    /// Assign every partition of `topics` at the lake's offsets (or `startup`); returns
    /// the ends of a bounded run, the event-time state and the options with inferred
    /// columns.
    fn assign_all(
        consumer: &SourceConsumer,
        opts: KafkaOptions,
        topics: &[(String, Vec<i32>)],
        position: &mut Position,
        bounded: bool,
    ) -> Result<(Ends, EventTime, KafkaOptions)> {
        let timeout = Duration::from_secs(15);
        // Where each partition starts, and (bounded) where it ends.
        let mut assignment = TopicPartitionList::new();
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        let mut highs: HashMap<(String, i32), i64> = HashMap::new();
        let mut by_time = TopicPartitionList::new();
        for (topic, parts) in topics {
            let stored = position.offsets.entry(topic.clone()).or_default();
            // The topic was read before: a partition without an offset is new.
            let known = !stored.is_empty();
            for &p in parts {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, timeout)
                    .map_err(|e| kafka_error(&format!("reading the offsets of {topic}/{p}"), e))?;
                highs.insert((topic.clone(), p), high);
                if bounded {
                    ends.insert((topic.clone(), p), high);
                }
                let start = match (stored.get(&p), &opts.startup) {
                    (Some(&o), _) => {
                        if o < low {
                            return Err(Error::config(format!(
                                "{topic} partition {p}: the lake is at offset {o} but the \
                                     broker keeps offsets from {low} on: messages {o}..{low} were \
                                     deleted by retention before lakeshore read them; raise the \
                                     topic's retention, and start a new pipeline (new name) to \
                                     accept the gap"
                            )));
                        }
                        o
                    }
                    // A partition added since the last run: everything in it is new.
                    (None, _) if known => low,
                    (None, Startup::Earliest) => low,
                    (None, Startup::Latest) => high,
                    (None, Startup::Timestamp(ms)) => {
                        by_time
                            .add_partition_offset(topic, p, Offset::Offset(*ms))
                            .map_err(|e| kafka_error("offsets by time", e))?;
                        continue;
                    }
                };
                stored.insert(p, start);
                if start >= high {
                    ends.remove(&(topic.clone(), p));
                }
            }
        }
        if by_time.count() > 0 {
            starts_by_time(consumer, by_time, position, &mut ends)?;
        }
        let mut event_time = EventTime::new();
        for (topic, parts) in &position.offsets {
            for (&p, &o) in parts {
                if let Some(t) = topics
                    .iter()
                    .position(|(t, ps)| t == topic && ps.contains(&p))
                {
                    assignment
                        .add_partition_offset(topic, p, Offset::Offset(o))
                        .map_err(|e| kafka_error("assigning partitions", e))?;
                    // A partition with messages to read holds the watermark back from
                    // the start, until it delivers them or goes quiet.
                    if highs.get(&(topic.clone(), p)).is_some_and(|h| o < *h) {
                        event_time.saw(t, p, i64::MIN);
                    }
                }
            }
        }
        let opts = infer_columns(opts, position, &assignment, &highs)?;
        consumer
            .assign(&assignment)
            .map_err(|e| kafka_error("assigning partitions", e))?;
        Ok((ends, event_time, opts))
    }

    /// Declare the tables and start the polling thread.
    #[allow(clippy::too_many_arguments)]
    fn start(
        opts: KafkaOptions,
        consumer: SourceConsumer,
        names: Vec<String>,
        position: Position,
        bounded: bool,
        ends: HashMap<(String, i32), i64>,
        event_time: EventTime,
        tx: mpsc::Sender<Result<Polled>>,
        rx: mpsc::Receiver<Result<Polled>>,
        open_chunk: OpenChunk,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let shared = consumer.context().group.is_some();
        // Tables.
        let schema: SchemaRef = match opts.format {
            Format::Raw => decode::raw_schema(),
            _ => Arc::new(Schema::new(opts.columns.clone())),
        };
        let mut tables = Vec::new();
        let mut table_of = Vec::new();
        for topic in &names {
            let name = opts.table.clone().unwrap_or_else(|| topic.clone());
            let i = match tables.iter().position(|t: &TableSchema| t.name == name) {
                Some(i) => i,
                None => {
                    tables.push(TableSchema {
                        name,
                        schema: schema.clone(),
                        key: opts.key.clone(),
                    });
                    tables.len() - 1
                }
            };
            table_of.push(i);
        }
        let decoders = tables
            .iter()
            .map(|t| (opts.format != Format::Raw).then(|| RowDecoder::new(t.schema.clone())))
            .collect();
        let dead_letter = (opts.on_error == OnError::DeadLetter).then(|| {
            tables.push(TableSchema {
                name: opts.dead_letter_table.clone(),
                schema: decode::dead_letter_schema(),
                key: Vec::new(),
            });
            tables.len() - 1
        });
        tracing::info!(brokers = %opts.brokers, topics = ?names, "Kafka source open");
        let consumer = Arc::new(consumer);
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            let names = names.clone();
            let batch = opts.batch_rows.max(1);
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || {
                    let polling = Polling {
                        bounded,
                        batch,
                        stop: &stop,
                        tx: &tx,
                        chunk: &open_chunk,
                    };
                    polling.run(&consumer, &names, ends)
                })
                .map_err(|e| Error::internal(format!("poll thread: {e}")))?
        };
        Ok(KafkaSource {
            opts,
            consumer,
            topics: Arc::from(names),
            tables,
            table_of,
            decoders,
            dead_letter,
            position,
            rx,
            stop,
            thread: Some(thread),
            out: VecDeque::new(),
            barrier: None,
            finished: false,
            messages: 0,
            resumed: Default::default(),
            acked: None,
            event_time,
            newest_ms: None,
            shared,
            barriers: 0,
            acks: 0,
            revoking: Vec::new(),
            record_origin: false,
        })
    }

    fn commit_offsets(&self, p: &Position, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in &p.offsets {
            for (&partition, &offset) in parts {
                let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, mode)
        {
            tracing::debug!(error = %e, "committing offsets to the consumer group");
        }
    }

    fn position_token(&self) -> SourcePosition {
        if self.shared {
            let units = self
                .position
                .offsets
                .iter()
                .flat_map(|(t, parts)| {
                    parts
                        .iter()
                        .map(move |(p, o)| (unit(t, *p), serde_json::json!(o)))
                })
                .collect();
            return SourcePosition::from_units(units);
        }
        SourcePosition(serde_json::to_value(&self.position).unwrap_or_default())
    }

    /// The offsets of a position this source made.
    fn position_of(&self, token: &SourcePosition) -> Option<Position> {
        if !self.shared {
            return token.decode("Kafka").ok();
        }
        let mut p = Position::default();
        for (u, o) in token.units()? {
            let (topic, part) = u.rsplit_once('/')?;
            p.offsets
                .entry(topic.to_string())
                .or_default()
                .insert(part.parse().ok()?, o.as_i64()?);
        }
        Some(p)
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn tables(&self) -> Vec<TableSchema> {
        self.tables.clone()
    }

    /// Messages left to read (librdkafka's statistics, every 5 s), and how old the newest
    /// message read is while any are left.
    fn record_origin(&mut self) -> bool {
        self.record_origin = true;
        true
    }

    fn lag(&self) -> Option<Lag> {
        let behind = u64::try_from(self.consumer.context().behind.load(Ordering::Relaxed)).ok()?;
        let seconds = if behind == 0 {
            Some(0.0)
        } else {
            self.newest_ms.map(|ms| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                (now - ms).max(0) as f64 / 1000.0
            })
        };
        Some(Lag {
            seconds,
            behind: Some(behind),
            unit: "messages",
        })
    }

    async fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Ok(Some(e));
            }
            if let Some(id) = self.barrier.take() {
                self.barriers += 1;
                // Partitions whose hand-over barrier is out are no longer this
                // process's to decide (their position cannot move: nothing is read).
                if self.shared {
                    for r in self.revoking.iter().filter(|r| r.after < self.barriers) {
                        for (topic, p) in &r.parts {
                            if let Some(offsets) = self.position.offsets.get_mut(topic) {
                                offsets.remove(p);
                            }
                        }
                    }
                }
                return Ok(Some(SourceEvent::Barrier {
                    id,
                    position: self.position_token(),
                }));
            }
            if self.finished {
                return Ok(None);
            }
            let waiting = Instant::now();
            let received = tokio::time::timeout(Duration::from_secs(1), self.rx.recv()).await;
            self.event_time.waited(waiting.elapsed());
            match received {
                // Idle: let the engine handle barriers and acks.
                Err(_) => {
                    // Partitions that went quiet stop holding the watermark back.
                    let w = self.opts.watermark.as_ref();
                    let moved = w.and_then(|w| self.event_time.advance(w));
                    return Ok(Some(
                        moved.map_or(SourceEvent::Idle, SourceEvent::Watermark),
                    ));
                }
                Ok(None) => {
                    return Err(Error::internal("the Kafka polling thread stopped"));
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(Polled::Done))) => self.finished = true,
                Ok(Some(Ok(Polled::Chunk(chunk)))) => self.take(chunk)?,
                Ok(Some(Ok(Polled::Assigned(start)))) => {
                    for ((topic, p), o) in start {
                        self.position.offsets.entry(topic).or_default().insert(p, o);
                    }
                }
                Ok(Some(Ok(Polled::Revoke { parts, done }))) => {
                    // The next barrier covers everything read from them.
                    self.revoking.push(Revoking {
                        parts,
                        done,
                        after: self.barriers + 1,
                    });
                    return Ok(Some(SourceEvent::CheckpointNow));
                }
            }
        }
    }

    fn request_barrier(&mut self, id: u64) {
        self.barrier = Some(id);
    }

    /// Commit the lake's offsets to the consumer group, for monitoring (lag tools).
    async fn ack(&mut self, position: &SourcePosition) -> Result<()> {
        self.acks += 1;
        if let Some(p) = self.position_of(position) {
            self.commit_offsets(&p, CommitMode::Async);
            self.acked = Some(p);
        }
        // Revoked partitions whose last reads are in the lake: let them go.
        let acks = self.acks;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.revoking)
            .into_iter()
            .partition(|r| r.after <= acks);
        self.revoking = waiting;
        for r in done {
            for (topic, p) in r.parts {
                if let Some(offsets) = self.position.offsets.get_mut(&topic) {
                    offsets.remove(&p);
                }
            }
            let _ = r.done.send(());
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        // The last acked offsets reach the group before the consumer goes.
        if let Some(p) = self.acked.take() {
            self.commit_offsets(&p, CommitMode::Sync);
        }
        self.stop.store(true, Ordering::Relaxed);
        self.rx.close();
        // A revoke waiting for a checkpoint that will not come now ends at once (also
        // one still queued in the channel).
        self.revoking.clear();
        while self.rx.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    }

    fn progress(&self) -> Option<u64> {
        Some(self.messages)
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.close();
    }
}

/// `lakeshore validate --connect`: the brokers answer and the topics exist.
pub async fn check(opts: &KafkaOptions) -> Result<Vec<String>> {
    let mut o = opts.clone();
    o.startup = Startup::Latest;
    o.scale_out = false;
    let source = KafkaSource::open(o, None, false, None).await?;
    let mut lines = vec![format!("brokers {} answer", opts.brokers)];
    for (topic, parts) in &source.position.offsets {
        lines.push(format!("topic {topic}: {} partitions", parts.len()));
    }
    for (k, v) in &opts.properties {
        let shown = if is_secret(k) { "***" } else { v.as_str() };
        lines.push(format!("property {k} = {shown}"));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_with_partition_numbers() {
        let mut p = Position::default();
        p.offsets.entry("t".into()).or_default().insert(2, 42);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v, serde_json::json!({"offsets": {"t": {"2": 42}}}));
        assert_eq!(serde_json::from_value::<Position>(v).unwrap(), p);
        assert!(is_secret("sasl.password") && !is_secret("security.protocol"));
    }
}
