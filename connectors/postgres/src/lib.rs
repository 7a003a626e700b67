//! PostgreSQL source: a lock-free chunked snapshot merged with pgoutput logical replication.
//!
//! How the two meet (a variant of DBLog's watermarks that uses transaction visibility):
//! - The replication slot is created (or reused) first, so the stream holds every change
//!   after the slot's consistent point.
//! - Each table is read in key order, one chunk (`chunk_size` rows after the last key read)
//!   per short REPEATABLE READ transaction, recording the transaction's visibility
//!   (`pg_current_snapshot()`) and the WAL position after the read (`high`). No lock.
//! - Stream changes for keys **not yet read** are dropped: the chunk that later covers the
//!   key reads its state then. To be sure that chunk sees every dropped transaction, the
//!   xids dropped since the last chunk are checked against its visibility, and the chunk is
//!   read again in the rare case one was still committing.
//! - Changes for keys a chunk **has read**, from a transaction that chunk's read already
//!   saw, are dropped too (a *window* per chunk, kept until the stream passes `high`); all
//!   other changes are emitted.
//! - So every key's history in the lake is: the chunk's row, then exactly the changes the
//!   chunk did not see. Barriers fall between source transactions and between chunks; the
//!   position records the stream LSN, each table's last key read, and the open windows, so
//!   a restart resumes at chunk granularity without re-reading or losing anything.
//!
//! Values arrive as text in both paths (COPY text and pgoutput) and go through one decoder
//! (`types`). `confirmed_flush_lsn` only advances on [`Source::ack`], i.e. after the lake
//! commit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use lakeshore_api::read_ahead::ReadAhead;
use lakeshore_api::{
    Error, ErrorKind, Lag, Op, Result, Source, SourceEvent, SourcePosition, TableSchema,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

mod array;
mod changes;
pub mod discover;
mod geometry;
mod identity;
mod server;
pub mod snapshot;
mod stream;
mod tls;
pub mod types;

pub use server::{check, connect, redact, retained_wal};
use server::{
    check_server, column_exists, ensure_publication, ensure_slot, format_lsn, parse_lsn, pg_error,
    type_kind,
};
use stream::{Stream, start_stream};

use discover::PgTable;
use snapshot::{Key, Visibility};
use types::RowsBuilder;

/// What to do first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Startup {
    /// Snapshot every table, then follow the WAL (default).
    Snapshot,
    /// Follow the WAL from now; no snapshot.
    Latest,
    /// Snapshot every table and stop; no slot, no publication.
    SnapshotOnly,
}

/// Validated `[source]` settings for `type = "postgres"`.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db` (a secret: never logged).
    pub url: String,
    /// `schema.table` names or globs.
    pub tables: Vec<String>,
    /// Publication name (created if absent).
    pub publication: String,
    /// Replication slot name (created if absent, never dropped).
    pub slot: String,
    pub startup: Startup,
    /// Rows per snapshot chunk.
    pub chunk_size: usize,
    /// Connections reading snapshot chunks ahead, across tables (each table's chunks are
    /// read in key order, one at a time).
    pub parallelism: usize,
    /// Rows per emitted batch.
    pub batch_rows: usize,
    /// Keys of tables without a primary key.
    pub key_columns: BTreeMap<String, Vec<String>>,
    /// The columns the pipeline reads (its transforms' `columns`/`exclude`); the others
    /// are never selected.
    pub columns: lakeshore_api::ColumnFilter,
    /// How arrays land.
    pub arrays: Arrays,
}

/// How PostgreSQL arrays land in the lake (`arrays` in `[source]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arrays {
    /// One-dimensional arrays of mapped types as lists (the default).
    #[default]
    List,
    /// Every array as a string in PostgreSQL's text form (`{1,2}`), as before lists.
    Text,
}

impl Arrays {
    /// `kind` as this setting has arrays land.
    pub fn kind(self, kind: types::Kind) -> types::Kind {
        match (self, kind) {
            (Arrays::Text, types::Kind::Array(_)) => types::Kind::Text,
            _ => kind,
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("tables", &self.tables)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("startup", &self.startup)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

/// The longest a busy stream keeps its rows before handing them to the engine.
const YIELD_EVERY: Duration = Duration::from_millis(100);

/// The content prefix of the logical message that asks the stream to compare a table's
/// catalog columns with its last Relation message (then the table's OID).
const SHAPE_MARKER: &str = "lakeshore shape ";

/// How long the stream may stay silent inside a transaction before it counts as stuck.
const STUCK_IN_TRANSACTION: Duration = Duration::from_secs(20);

/// How long a requested barrier may wait (inside a transaction, or for a chunk to read
/// dropped changes) before a warning says why.
const BARRIER_WARN: Duration = Duration::from_secs(30);

/// How often lag is measured and, on a quiet stream, a heartbeat is written.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Retained WAL above which a warning is logged.
const SLOT_WARN_BYTES: u64 = 1 << 30;

/// The resume token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Position {
    /// End LSN of the last transaction whose changes are before the barrier.
    lsn: u64,
    /// Snapshot progress per table; absent = not started.
    #[serde(default)]
    tables: BTreeMap<String, Progress>,
    /// Chunks whose reads saw transactions the stream has not passed yet.
    #[serde(default)]
    windows: Vec<Window>,
    /// The OID of each table (by its name in the pipeline): a rename keeps it, a table
    /// dropped and created again gets a new one.
    #[serde(default)]
    oids: BTreeMap<String, u32>,
    /// The column names of each table as the stream last described them (its last
    /// Relation message), to tell renamed and added columns from the next one.
    #[serde(default)]
    columns: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Progress {
    /// Rows up to and including this key are read.
    After(Key),
    /// The whole table is read.
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Window {
    table: String,
    /// Keys after `from` (all when `None`) ...
    from: Option<Key>,
    /// ... up to and including `to` (all when `None`).
    to: Option<Key>,
    vis: Visibility,
    /// WAL insert position after the read: no transaction the read saw commits later.
    high: u64,
}

/// A change not yet in a batch.
struct Pending {
    rows: RowsBuilder,
    ops: Vec<Op>,
    /// Each row's commit time and LSN, when asked for (`Source::record_origin`).
    origin: Option<lakeshore_api::OriginBuilder>,
}

/// The PostgreSQL source.
pub struct PostgresSource {
    /// How the connection is protected (measured at open).
    transport: lakeshore_api::Transport,
    opts: PostgresOptions,
    bounded: bool,
    client: Client,
    chunks: snapshot::ChunkSpec,
    /// `snapshot-only`: the connection whose open transaction exported the snapshot every
    /// chunk reads (it must stay open while they run).
    _holder: Option<Client>,
    /// The next chunks of tables, read on other connections (`parallelism` of them)
    /// while the current one is written. A chunk read ahead is used only if the stream
    /// delivered nothing since that the read missed (the same check as for any chunk),
    /// else it is read again; on a quiet source it overlaps the server's work with ours.
    ahead: ReadAhead<Client, Key, snapshot::ChunkRead>,
    tables: Vec<PgTable>,
    /// Tables by their name in the pipeline (see [`PgTable::name`]).
    by_name: HashMap<String, usize>,
    /// Tables by relation OID: stream changes are matched by it, so a renamed table
    /// keeps feeding its lake table.
    by_oid: HashMap<u32, usize>,
    /// OIDs of tables dropped and created again: their changes left in the stream are
    /// skipped (the new table is read again).
    retired: std::collections::HashSet<u32>,
    /// The table of the stream event being handled, once known.
    event_table: Option<usize>,
    /// Tables (by OID) whose shape marker is on its way through the stream.
    shape_marked: std::collections::HashSet<u32>,
    /// Column index by name, per table.
    columns: Vec<HashMap<String, usize>>,
    /// Per table and column: present in the stream's current relation (dropped columns
    /// read as null from then on).
    live: Vec<Vec<bool>>,
    /// Tables the source gave up on (`SourceEvent::TableFailed`): their changes are
    /// skipped from then on.
    failed: std::collections::HashSet<usize>,
    position: Position,
    stream: Option<Stream>,
    /// Xids whose changes were dropped as not-yet-read, per table, since its last chunk.
    dropped: Vec<std::collections::HashSet<u32>>,
    xid: Option<u32>,
    pending: Vec<Option<Pending>>,
    out: VecDeque<SourceEvent>,
    barrier: Option<u64>,
    /// When the pending barrier was asked for (a barrier held back long is reported).
    barrier_asked: std::time::Instant,
    /// Bounded runs stop once a message written at this LSN is read back.
    /// (content of the message, read back) once written.
    end_marker: Option<(String, bool)>,
    finished: bool,
    snapshot_rows: u64,
    /// Stream events handled since the last chunk, so a busy stream cannot starve the
    /// snapshot.
    since_chunk: usize,
    /// When the last stream event arrived and when lag was last measured.
    last_event: std::time::Instant,
    last_status: std::time::Instant,
    /// When `next_event` last returned.
    last_yield: std::time::Instant,
    /// Commit time of the last source transaction read, for the lag in seconds.
    last_commit: Option<std::time::SystemTime>,
    /// The lag as last measured.
    lag: Option<Lag>,
    /// Tables created since the start that `tables` matches, as the last identity check
    /// saw them (OIDs): a restart follows one only once two checks saw it.
    new_tables: std::collections::HashSet<u32>,
    /// Each row's commit time and position are recorded (`Source::record_origin`).
    record_origin: bool,
    /// The commit time (µs) and commit LSN of the transaction being read, from its Begin.
    txn_origin: Option<(i64, String)>,
}

/// The position brought in line with the tables as discovered: a table dropped and
/// created again (a reload, a restore, a swap) while the pipeline was stopped is read
/// again (the stream never carried its changes from before it joined the publication;
/// the old OID's changes still in the stream are skipped), new tables take their
/// current shape, and a key changed under a snapshot in progress is refused. Returns
/// the retired OIDs and the tables to read again.
fn reconcile(
    position: &mut Position,
    tables: &[PgTable],
) -> Result<(std::collections::HashSet<u32>, Vec<String>)> {
    let mut retired = std::collections::HashSet::new();
    let mut recreated = Vec::new();
    for t in tables {
        if let Some(&old) = position.oids.get(&t.name)
            && old != t.oid
        {
            tracing::warn!(table = %t.name, old_oid = old, new_oid = t.oid, "the table was dropped and created again (or another table took its name) while the pipeline was stopped: reading it again");
            retired.insert(old);
            recreated.push(t.name.clone());
            position.tables.remove(&t.name);
            position.windows.retain(|w| w.table != t.name);
        }
    }
    position.oids = tables.iter().map(|t| (t.name.clone(), t.oid)).collect();
    for t in tables {
        // Tables new to the position are read whole: their shape is the current one.
        if !position.columns.contains_key(&t.name) || recreated.contains(&t.name) {
            position.columns.insert(t.name.clone(), t.column_names());
        }
    }
    position
        .columns
        .retain(|name, _| position.oids.contains_key(name));
    for t in tables {
        if let Some(Progress::After(k)) = position.tables.get(&t.name)
            && k.len() != t.key.len()
        {
            return Err(Error::config(format!(
                "the key of {} changed since its snapshot began; start over with a new \
                     pipeline name",
                t.name
            )));
        }
    }
    Ok((retired, recreated))
}

/// Table by name, table by OID, and each table's columns by name.
#[allow(clippy::type_complexity)]
fn indexes(
    tables: &[PgTable],
) -> (
    HashMap<String, usize>,
    HashMap<u32, usize>,
    Vec<HashMap<String, usize>>,
) {
    let by_name = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let by_oid = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    let columns = tables
        .iter()
        .map(|t| {
            t.columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect()
        })
        .collect();
    (by_name, by_oid, columns)
}

/// A connection holding a repeatable-read transaction and the snapshot it exports, so
/// that every chunk of a `snapshot-only` run reads one point in time.
async fn export_snapshot(url: &str) -> Result<(Client, String)> {
    let holder = connect(url).await?;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| pg_error("starting the snapshot", e))?;
    let id: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| pg_error("exporting the snapshot", e))?
        .get(0);
    Ok((holder, id))
}

impl PostgresSource {
    /// Connect, check the server, discover the tables, make sure publication and slot
    /// exist, and position at `position` (or the start). `bounded`: stop after the
    /// snapshot and the changes committed until it ended (`lakeshore backfill`).
    pub async fn open(
        opts: PostgresOptions,
        position: Option<&SourcePosition>,
        bounded: bool,
    ) -> Result<Self> {
        let client = connect(&opts.url).await?;
        let transport = tls::transport(&client, &opts.url).await?;
        let streaming = opts.startup != Startup::SnapshotOnly;
        if streaming {
            check_server(&client).await?;
        }
        let mut position: Position = match position {
            Some(p) => p.decode("PostgreSQL")?,
            None => Position::default(),
        };
        let tables = discover::discover(&client, &opts, &position.oids).await?;
        let (retired, recreated) = reconcile(&mut position, &tables)?;
        let fresh = position.lsn == 0 && position.tables.is_empty();
        if fresh && opts.startup == Startup::Latest {
            for t in &tables {
                position.tables.insert(t.name.clone(), Progress::Done);
            }
        }
        let stream = if streaming {
            ensure_publication(&client, &opts.publication, &tables).await?;
            ensure_slot(&client, &opts.slot).await?;
            Some(start_stream(&opts, position.lsn).await?)
        } else {
            None
        };
        let (by_name, by_oid, columns) = indexes(&tables);
        let n = tables.len();
        let live = tables.iter().map(|t| vec![true; t.columns.len()]).collect();
        let mut readers = Vec::new();
        let snapshot_left = tables
            .iter()
            .any(|t| position.tables.get(&t.name) != Some(&Progress::Done));
        if snapshot_left {
            for _ in 0..opts.parallelism.max(1) {
                readers.push(connect(&opts.url).await?);
            }
        }
        // snapshot-only has no stream to merge with: one exported snapshot makes the whole
        // read one point in time (held by an open transaction; a restart takes a new one).
        let (holder, exported) = if streaming {
            (None, None)
        } else {
            let (holder, id) = export_snapshot(&opts.url).await?;
            (Some(holder), Some(id))
        };
        let chunks = snapshot::ChunkSpec {
            limit: opts.chunk_size,
            batch_rows: opts.batch_rows,
            exported,
        };
        let mut source = PostgresSource {
            by_oid,
            retired,
            event_table: None,
            shape_marked: Default::default(),
            chunks,
            _holder: holder,
            live,
            failed: Default::default(),
            ahead: ReadAhead::new(readers),
            opts,
            bounded: bounded || !streaming,
            client,
            transport,
            tables,
            by_name,
            columns,
            position,
            stream,
            dropped: vec![Default::default(); n],
            xid: None,
            pending: (0..n).map(|_| None).collect(),
            out: VecDeque::new(),
            barrier: None,
            barrier_asked: std::time::Instant::now(),
            end_marker: None,
            finished: false,
            snapshot_rows: 0,
            since_chunk: 0,
            last_event: std::time::Instant::now(),
            // Lag is measured at the first chance, then every `STATUS_INTERVAL`.
            last_status: std::time::Instant::now()
                .checked_sub(STATUS_INTERVAL)
                .unwrap_or_else(std::time::Instant::now),
            last_yield: std::time::Instant::now(),
            last_commit: None,
            lag: None,
            new_tables: Default::default(),
            record_origin: false,
            txn_origin: None,
        };
        for name in recreated {
            source.out.push_back(SourceEvent::Truncate(name));
        }
        Ok(source)
    }

    /// Read the next chunk of table `t` (a value it cannot read stops the table only),
    /// then mark the stream so that it passes the chunk's window even when idle.
    async fn chunk_of(&mut self, t: usize) -> Result<()> {
        self.flush_all()?;
        match self.read_chunk(t).await {
            Err(e) if e.kind() == ErrorKind::Unsupported => self.fail_table(t, e),
            other => other?,
        }
        self.since_chunk = 0;
        if self.stream.is_some() {
            self.client
                .query_one(
                    "SELECT pg_logical_emit_message(false, 'lakeshore', 'chunk')::text",
                    &[],
                )
                .await
                .map_err(|e| pg_error("writing a chunk marker", e))?;
        }
        Ok(())
    }

    /// A table's snapshot starts over: a bounded run reads it to its end before it marks
    /// a new end of the stream, rather than stopping at the old mark half read.
    pub(crate) fn read_again(&mut self) {
        self.end_marker = None;
        self.finished = false;
    }

    fn position(&self) -> SourcePosition {
        SourcePosition(serde_json::to_value(&self.position).unwrap_or_default())
    }

    /// Emit the requested barrier if we are between transactions.
    fn maybe_barrier(&mut self) -> Result<bool> {
        // Not inside a source transaction, and not while changes were dropped for keys
        // that the next chunk must read: a restart from here would not replay them.
        if self.xid.is_some() || self.dropped.iter().any(|d| !d.is_empty()) {
            // A checkpoint that cannot happen must not go unnoticed.
            if self.barrier.is_some() && self.barrier_asked.elapsed() > BARRIER_WARN {
                let waiting: Vec<String> = (0..self.tables.len())
                    .filter(|&t| !self.dropped[t].is_empty())
                    .map(|t| {
                        format!(
                            "{} ({} transactions, progress {:?})",
                            self.tables[t].name,
                            self.dropped[t].len(),
                            self.progress_of(t)
                        )
                    })
                    .collect();
                tracing::warn!(xid = ?self.xid, waiting_for_chunks = ?waiting, "a checkpoint has been held back for {} s", self.barrier_asked.elapsed().as_secs());
                metrics::counter!("lakeshore_postgres_barrier_held_back_total").increment(1);
                self.barrier_asked = std::time::Instant::now();
            }
            return Ok(false);
        }
        if let Some(id) = self.barrier.take() {
            self.flush_all()?;
            let position = self.position();
            self.out.push_back(SourceEvent::Barrier { id, position });
            return Ok(true);
        }
        Ok(false)
    }

    /// Publish replication lag and retained WAL; when the stream has been quiet, write a
    /// heartbeat message so the position (and, after the next commit, the slot) moves past
    /// WAL written for other tables or databases.
    async fn status(&mut self) -> Result<()> {
        self.last_status = std::time::Instant::now();
        let row = self
            .client
            .query_one(
                "SELECT pg_current_wal_lsn()::text, \
                        (SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1)",
                &[&self.opts.slot],
            )
            .await
            .map_err(|e| pg_error("reading the WAL position", e))?;
        let current = parse_lsn(&row.get::<_, String>(0))?;
        let lag = current.saturating_sub(self.position.lsn);
        metrics::gauge!("lakeshore_postgres_replication_lag_bytes", "slot" => self.opts.slot.clone())
            .set(lag as f64);
        let seconds = match (lag, self.last_commit) {
            (0, _) | (_, None) => 0.0,
            (_, Some(at)) => at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
        };
        metrics::gauge!("lakeshore_postgres_replication_lag_seconds", "slot" => self.opts.slot.clone())
            .set(seconds);
        self.lag = Some(Lag {
            seconds: Some(seconds),
            behind: Some(lag),
            unit: "bytes",
        });
        if let Some(restart) = row.get::<_, Option<String>>(1) {
            let retained = current.saturating_sub(parse_lsn(&restart)?);
            metrics::gauge!("lakeshore_postgres_slot_retained_wal_bytes", "slot" => self.opts.slot.clone())
                .set(retained as f64);
            if retained > SLOT_WARN_BYTES {
                tracing::warn!(slot = %self.opts.slot, retained_bytes = retained, "replication slot retains much WAL; is the pipeline keeping up?");
            }
        }
        self.check_identities().await?;
        self.check_shapes().await?;
        if self.xid.is_none() && self.last_event.elapsed() >= STATUS_INTERVAL && lag > 0 {
            self.client
                .query_one(
                    "SELECT pg_logical_emit_message(false, 'lakeshore', 'heartbeat')::text",
                    &[],
                )
                .await
                .map_err(|e| pg_error("writing a heartbeat", e))?;
        }
        Ok(())
    }

    /// A bounded run ends once it reads back a marker written now: everything committed
    /// before it has then been read. The marker is a transaction committed with
    /// `synchronous_commit = on`, so the server flushes (and sends) it at once.
    async fn write_end_marker(&mut self) -> Result<()> {
        let marker = format!(
            "end {} {:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| pg_error("writing the end marker", e))?;
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(|e| pg_error("writing the end marker", e))?;
        tx.query_one(
            "SELECT pg_logical_emit_message(true, 'lakeshore', $1::text)::text",
            &[&marker],
        )
        .await
        .map_err(|e| pg_error("writing the end marker", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error("writing the end marker", e))?;
        self.end_marker = Some((marker, false));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for PostgresSource {
    fn tables(&self) -> Vec<TableSchema> {
        self.tables.iter().map(|t| t.schema.clone()).collect()
    }

    async fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        loop {
            if let Some(ev) = self.out.pop_front() {
                self.last_yield = std::time::Instant::now();
                return Ok(Some(ev));
            }
            if self.maybe_barrier()? {
                continue;
            }
            if self.finished {
                self.flush_all()?;
                if !self.out.is_empty() {
                    continue;
                }
                return Ok(None);
            }
            // Between transactions, read the next chunk when the stream has caught up.
            if self.xid.is_none() {
                let caught_up = self.stream.as_ref().is_none_or(|s| s.rx.is_empty())
                    || self.since_chunk >= self.opts.chunk_size;
                if caught_up {
                    if let Some(t) = self.next_chunk_table() {
                        self.chunk_of(t).await?;
                        continue;
                    }
                    if self.stream.is_none() {
                        self.finished = true;
                        continue;
                    }
                    if self.bounded && self.end_marker.is_none() {
                        self.write_end_marker().await?;
                    }
                }
            }
            if self.stream.is_some() && self.last_status.elapsed() >= STATUS_INTERVAL {
                self.status().await?;
            }
            // A busy stream still hands over what it has every YIELD_EVERY, between
            // transactions, so the engine can ask for checkpoints on time.
            if self.xid.is_none() && self.last_yield.elapsed() >= YIELD_EVERY {
                self.flush_all()?;
                if self.out.is_empty() {
                    self.last_yield = std::time::Instant::now();
                    return Ok(Some(SourceEvent::Idle));
                }
                continue;
            }
            let Some(stream) = self.stream.as_mut() else {
                self.finished = true;
                continue;
            };
            match tokio::time::timeout(Duration::from_millis(200), stream.rx.recv()).await {
                Ok(Some(Ok(ev))) => {
                    self.since_chunk += 1;
                    self.last_event = std::time::Instant::now();
                    self.event_table = None;
                    match self.on_event(ev).await {
                        // A value or change of one table it cannot read stops that table
                        // only (the pipeline, or with `on_table_error = "isolate"` just
                        // the table).
                        Err(e) if e.kind() == ErrorKind::Unsupported => match self.event_table {
                            Some(t) => self.fail_table(t, e),
                            None => return Err(e),
                        },
                        other => other?,
                    }
                }
                Ok(Some(Err(message))) => {
                    return Err(Error::transient(format!(
                        "PostgreSQL replication stream: {message}"
                    )));
                }
                Ok(None) => {
                    return Err(Error::transient("PostgreSQL replication stream ended"));
                }
                Err(_) => {
                    // pgoutput sends a transaction whole once it committed: silence in the
                    // middle of one means the stream is stuck, and every checkpoint would
                    // wait for its end. Start over from the last checkpoint instead.
                    if let Some(xid) = self.xid
                        && self.last_event.elapsed() > STUCK_IN_TRANSACTION
                    {
                        return Err(Error::transient(format!(
                            "the replication stream stopped inside transaction {xid} for {} s; restarting from the last checkpoint",
                            self.last_event.elapsed().as_secs()
                        )));
                    }
                    // Idle: hand out what is buffered and let the engine look around.
                    if self.xid.is_none() {
                        self.flush_all()?;
                    }
                    if self.out.is_empty() {
                        return Ok(Some(SourceEvent::Idle));
                    }
                }
            }
        }
    }

    fn request_barrier(&mut self, id: u64) {
        if self.barrier.is_none() {
            self.barrier_asked = std::time::Instant::now();
        }
        self.barrier = Some(id);
    }

    async fn ack(&mut self, position: &SourcePosition) -> Result<()> {
        if let (Some(stream), Some(lsn)) = (&mut self.stream, position.0.get("lsn"))
            && let Some(lsn) = lsn.as_u64().filter(|l| *l > 0)
        {
            stream.feedback.update_applied_lsn(lsn);
            stream.acked = stream.acked.max(lsn);
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        let Some(mut stream) = self.stream.take() else {
            return Ok(());
        };
        stream.cancel.cancel();
        if let Some(task) = stream.task.take() {
            let _ = task.await;
        }
        // The stream may have ended before its last feedback went out: move the slot's
        // confirmed position to the last ack directly (the slot is free again now).
        if stream.acked > 0 {
            let lsn = format_lsn(stream.acked);
            if let Err(e) = self
                .client
                .query_one(
                    "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)::text",
                    &[&self.opts.slot, &lsn],
                )
                .await
            {
                tracing::debug!(error = %e, "advancing the slot on close");
            }
        }
        Ok(())
    }

    fn progress(&self) -> Option<u64> {
        Some(self.snapshot_rows)
    }

    fn transport(&self) -> Option<lakeshore_api::Transport> {
        Some(self.transport)
    }

    fn record_origin(&mut self) -> bool {
        self.record_origin = true;
        true
    }

    fn lag(&self) -> Option<Lag> {
        self.lag
    }

    /// Like a `TRUNCATE` met before the table's snapshot ended: the lake table is emptied
    /// and the table's chunks are read again, merged with the stream (changes to keys not
    /// read again yet are dropped, as during the first snapshot).
    fn resnapshot(&mut self, table: &str) -> Result<()> {
        let Some(t) = self.by_name.get(table).copied() else {
            return Err(Error::config(format!(
                "the pipeline reads no table {table}"
            )));
        };
        if self.stream.is_none() {
            return Err(Error::unsupported(format!(
                "cannot read {table} again: a startup = \"snapshot-only\" pipeline reads its \
                     tables once; run it again under a new pipeline name"
            )));
        }
        if self.failed.contains(&t) {
            return Err(Error::unsupported(format!(
                "cannot read {table} again: the source stopped following it"
            )));
        }
        self.flush_table(t)?;
        self.out.push_back(SourceEvent::Truncate(table.to_string()));
        self.position.tables.remove(table);
        self.position.windows.retain(|w| w.table != table);
        self.read_again();
        tracing::info!(table, "reading the table again (re-snapshot)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let mut p = Position {
            lsn: 42,
            ..Default::default()
        };
        p.tables
            .insert("public.t".into(), Progress::After(vec!["7".into()]));
        p.tables.insert("public.u".into(), Progress::Done);
        let json = serde_json::to_value(&p).unwrap();
        let back: Position = serde_json::from_value(json).unwrap();
        assert_eq!(back.tables, p.tables);
        assert_eq!(back.lsn, 42);
    }
}
