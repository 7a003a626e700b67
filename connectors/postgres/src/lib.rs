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
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::{
    ChangeBatch, Error, ErrorKind, Op, Result, Source, SourceEvent, SourcePosition, TableSchema,
};
use pg_walstream::{
    CancellationToken, ChangeEvent, ColumnValue, EventType, LogicalReplicationStream,
    ReplicaIdentity, ReplicationStreamConfig, RowData, SharedLsnFeedback, StreamingMode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::Client;

pub mod discover;
pub mod snapshot;
pub mod types;

use discover::{PgTable, quote_ident};
use snapshot::{Key, Visibility, compare_keys};
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

/// The URL without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The longest a busy stream keeps its rows before handing them to the engine.
const YIELD_EVERY: Duration = Duration::from_millis(100);

/// How often lag is measured and, on a quiet stream, a heartbeat is written.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Retained WAL above which a warning is logged.
const SLOT_WARN_BYTES: u64 = 1 << 30;

/// Session settings that fix the text formats `types` parses.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3";

/// Connect a regular session.
pub async fn connect(url: &str) -> Result<Client> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            "cannot parse [source] url; write postgres://user:${PASSWORD}@host:5432/database",
        )
        .with_source(e)
    })?;
    config.options(SESSION_OPTIONS);
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| connect_error(url, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

fn connect_error(url: &str, e: tokio_postgres::Error) -> Error {
    let target = redact(url);
    let hint = match e.as_db_error().map(|d| d.code().code()) {
        Some("28P01") | Some("28000") => {
            "PostgreSQL refused the login; check the user and password in [source] url"
        }
        Some("3D000") => "the database does not exist; check the database name in [source] url",
        Some(_) => "PostgreSQL refused the connection; check [source] url",
        None => {
            // No answer from the server: it may be down for a moment (`run` retries).
            return Error::new(
                ErrorKind::Transient,
                format!(
                    "cannot reach PostgreSQL ({target}); check host and port in [source] url \
                     and that the server is running"
                ),
            )
            .with_source(e);
        }
    };
    Error::new(ErrorKind::Config, format!("{hint} ({target})")).with_source(e)
}

fn pg_error(what: &str, e: tokio_postgres::Error) -> Error {
    let msg = match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {what}: {}", db.message()),
        None => format!("PostgreSQL: {what}"),
    };
    Error::new(ErrorKind::Transient, msg).with_source(e)
}

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
}

/// The replication stream, read by its own task.
struct Stream {
    rx: mpsc::Receiver<std::result::Result<ChangeEvent, String>>,
    feedback: Arc<SharedLsnFeedback>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Highest LSN acked.
    acked: u64,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The next chunk of a table, read on a second connection while the current one is
/// written. It is used only if the stream delivered nothing since that the read missed
/// (the same check as for any chunk), else read again; on a quiet source it overlaps the
/// server's work with ours.
struct Prefetch {
    after: Option<Key>,
    task: tokio::task::JoinHandle<(Client, Result<snapshot::ChunkRead>)>,
}

/// The PostgreSQL source.
pub struct PostgresSource {
    opts: PostgresOptions,
    bounded: bool,
    client: Client,
    chunks: snapshot::ChunkSpec,
    /// `snapshot-only`: the connection whose open transaction exported the snapshot every
    /// chunk reads (it must stay open while they run).
    _holder: Option<Client>,
    /// Idle connections for [`Prefetch`]es (`parallelism` of them in all).
    readers: Vec<Client>,
    /// Chunks being read ahead, at most one per table.
    prefetch: HashMap<usize, Prefetch>,
    tables: Vec<PgTable>,
    by_name: HashMap<String, usize>,
    /// Column index by name, per table.
    columns: Vec<HashMap<String, usize>>,
    /// Per table and column: present in the stream's current relation (dropped columns
    /// read as null from then on).
    live: Vec<Vec<bool>>,
    position: Position,
    stream: Option<Stream>,
    /// Xids whose changes were dropped as not-yet-read, per table, since its last chunk.
    dropped: Vec<std::collections::HashSet<u32>>,
    xid: Option<u32>,
    pending: Vec<Option<Pending>>,
    out: VecDeque<SourceEvent>,
    barrier: Option<u64>,
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
        let streaming = opts.startup != Startup::SnapshotOnly;
        if streaming {
            check_server(&client).await?;
        }
        let tables = discover::discover(&client, &opts.tables, &opts.key_columns).await?;
        let mut position: Position = match position {
            Some(p) => serde_json::from_value(p.0.clone()).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    "the checkpoint's source position is not a PostgreSQL position; was the \
                     pipeline's source changed? Use a new pipeline name",
                )
                .with_source(e)
            })?,
            None => Position::default(),
        };
        for t in &tables {
            if let Some(Progress::After(k)) = position.tables.get(&t.name)
                && k.len() != t.key.len()
            {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the key of {} changed since its snapshot began; start over with a new \
                         pipeline name",
                        t.name
                    ),
                ));
            }
        }
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
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
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
            let holder = connect(&opts.url).await?;
            holder
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| pg_error("starting the snapshot", e))?;
            let id: String = holder
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(|e| pg_error("exporting the snapshot", e))?
                .get(0);
            (Some(holder), Some(id))
        };
        let chunks = snapshot::ChunkSpec {
            limit: opts.chunk_size,
            batch_rows: opts.batch_rows,
            exported,
        };
        Ok(PostgresSource {
            chunks,
            _holder: holder,
            live,
            readers,
            prefetch: HashMap::new(),
            opts,
            bounded: bounded || !streaming,
            client,
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
            end_marker: None,
            finished: false,
            snapshot_rows: 0,
            since_chunk: 0,
            last_event: std::time::Instant::now(),
            last_status: std::time::Instant::now(),
            last_yield: std::time::Instant::now(),
            last_commit: None,
        })
    }

    fn progress_of(&self, t: usize) -> Option<&Progress> {
        self.position.tables.get(&self.tables[t].name)
    }

    /// The next table with rows left to read.
    /// Prefers a table whose read-ahead chunk is ready.
    fn next_chunk_table(&self) -> Option<usize> {
        let pending = |t: &usize| self.progress_of(*t) != Some(&Progress::Done);
        (0..self.tables.len())
            .filter(pending)
            .find(|t| self.prefetch.get(t).is_some_and(|p| p.task.is_finished()))
            .or_else(|| (0..self.tables.len()).find(pending))
    }

    /// Start reading ahead: the next chunk of every unfinished table that has none in
    /// flight, while idle connections last (`parallelism`).
    fn start_prefetches(&mut self) {
        for t in 0..self.tables.len() {
            if self.readers.is_empty() {
                return;
            }
            if self.prefetch.contains_key(&t) {
                continue;
            }
            let after = match self.progress_of(t) {
                Some(Progress::Done) => continue,
                Some(Progress::After(k)) => Some(k.clone()),
                None => None,
            };
            let Some(mut client) = self.readers.pop() else {
                return;
            };
            let table = self.tables[t].clone();
            let spec = self.chunks.clone();
            let key = after.clone();
            let task = tokio::spawn(async move {
                let read = snapshot::read_chunk(&mut client, &table, key.as_deref(), &spec).await;
                (client, read)
            });
            self.prefetch.insert(t, Prefetch { after, task });
        }
    }

    /// Read the next chunk of table `t` and queue its rows.
    async fn read_chunk(&mut self, t: usize) -> Result<()> {
        let table = self.tables[t].clone();
        let after = match self.progress_of(t) {
            Some(Progress::After(k)) => Some(k.clone()),
            _ => None,
        };
        if after.is_none() {
            self.out
                .push_back(SourceEvent::SnapshotStarted(table.name.clone()));
        }
        let mut attempt = 0;
        let mut prefetched = match self.prefetch.remove(&t) {
            Some(p) => {
                let (client, read) = p
                    .task
                    .await
                    .map_err(|e| Error::new(ErrorKind::Internal, format!("chunk reader: {e}")))?;
                self.readers.push(client);
                match read {
                    Ok(read) if p.after == after => Some(read),
                    Ok(_) => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let read = loop {
            let read = match prefetched.take() {
                Some(read) => read,
                None => {
                    snapshot::read_chunk(&mut self.client, &table, after.as_deref(), &self.chunks)
                        .await?
                }
            };
            // Every transaction dropped as not-yet-read must be in this read.
            if self.dropped[t].iter().all(|x| read.visibility.sees(*x)) {
                break read;
            }
            attempt += 1;
            if attempt > 50 {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "snapshot of {}: a transaction the stream delivered stayed invisible \
                         to the snapshot",
                        table.name
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.dropped[t].clear();
        let high = current_wal_lsn(&self.client).await?;
        let to = if read.complete {
            None
        } else {
            read.last.clone()
        };
        if self.stream.is_some() {
            self.position.windows.push(Window {
                table: table.name.clone(),
                from: after.clone(),
                to: to.clone(),
                vis: read.visibility.clone(),
                high,
            });
        }
        let progress = match (&read.last, read.complete) {
            (_, true) => Progress::Done,
            (Some(k), false) => Progress::After(k.clone()),
            (None, false) => Progress::Done,
        };
        self.snapshot_rows += read.rows as u64;
        for b in read.batches {
            self.out.push_back(SourceEvent::Batch(ChangeBatch::inserts(
                Arc::from(table.name.as_str()),
                b,
            )));
        }
        metrics::counter!("lakeshore_postgres_snapshot_rows_total", "table" => table.name.clone())
            .increment(read.rows as u64);
        if progress == Progress::Done {
            tracing::info!(table = %table.name, "snapshot complete");
            metrics::gauge!("lakeshore_postgres_snapshot_done", "table" => table.name.clone())
                .set(1.0);
            self.out
                .push_back(SourceEvent::SnapshotDone(table.name.clone()));
        }
        self.position.tables.insert(table.name.clone(), progress);
        // Read next chunks while this one is written (see `Prefetch`).
        self.start_prefetches();
        Ok(())
    }

    /// Whether a change to `key` of table `t` by transaction `xid` is emitted.
    fn passes(&mut self, t: usize, key: &[String], xid: u32) -> bool {
        let table = &self.tables[t];
        let read = match self.position.tables.get(&table.name) {
            Some(Progress::Done) => true,
            Some(Progress::After(k)) => compare_keys(table, key, k).is_le(),
            None => false,
        };
        if !read {
            self.dropped[t].insert(xid);
            return false;
        }
        !self.position.windows.iter().any(|w| {
            w.table == table.name
                && w.from
                    .as_ref()
                    .is_none_or(|f| compare_keys(table, key, f).is_gt())
                && w.to
                    .as_ref()
                    .is_none_or(|to| compare_keys(table, key, to).is_le())
                && w.vis.sees(xid)
        })
    }

    /// The stream passed `lsn`: windows whose reads ended before it are closed.
    fn passed(&mut self, lsn: u64) {
        self.position.windows.retain(|w| w.high > lsn);
    }

    fn key_of(&self, t: usize, row: &RowData) -> Result<Key> {
        let table = &self.tables[t];
        table
            .key
            .iter()
            .map(|&k| {
                let name = &table.columns[k].name;
                match row.get(name) {
                    Some(ColumnValue::Text(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                    Some(ColumnValue::Binary(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                    _ => Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "table {}: a change arrived without key column {name}; set \
                             REPLICA IDENTITY FULL or give the table a primary key",
                            table.name
                        ),
                    )),
                }
            })
            .collect()
    }

    /// Append one row image with `op`. `base` fills columns the new image leaves out
    /// (unchanged TOAST values) when the old image has them.
    fn push_row(
        &mut self,
        t: usize,
        op: Op,
        row: &RowData,
        base: Option<&RowData>,
        key_only: bool,
    ) -> Result<()> {
        let table = &self.tables[t];
        let batch_rows = self.opts.batch_rows;
        let pending = self.pending[t].get_or_insert_with(|| Pending {
            rows: RowsBuilder::new(table.schema.schema.clone(), &table.kinds(), batch_rows),
            ops: Vec::with_capacity(batch_rows),
        });
        let cols = &self.columns[t];
        let mut seen = vec![false; table.columns.len()];
        for (name, _) in row.iter() {
            let Some(&i) = cols.get(name.as_ref()) else {
                continue;
            };
            if key_only && !table.key.contains(&i) {
                continue;
            }
            seen[i] = true;
        }
        for (i, col) in table.columns.iter().enumerate() {
            let value = if !seen[i] {
                if key_only || op.removes() || !self.live[t][i] {
                    None
                } else {
                    match base.and_then(|b| b.get(&col.name)) {
                        Some(v) => Some(v),
                        None => {
                            return Err(Error::new(
                                ErrorKind::Unsupported,
                                format!(
                                    "table {}, column {}: an update left this (TOASTed) value \
                                     out and the old image does not carry it; run ALTER TABLE \
                                     {} REPLICA IDENTITY FULL",
                                    table.name,
                                    col.name,
                                    table.quoted()
                                ),
                            ));
                        }
                    }
                }
            } else {
                row.get(&col.name)
            };
            let builder = pending.rows.column(i);
            match value {
                None | Some(ColumnValue::Null) => builder.append_null(),
                Some(ColumnValue::Text(b)) | Some(ColumnValue::Binary(b)) => {
                    let s = std::str::from_utf8(b).map_err(|_| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "table {}, column {}: value is not UTF-8",
                                table.name, col.name
                            ),
                        )
                    })?;
                    builder.append_text(s).map_err(|m| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!("table {}, column {}: {m}", table.name, col.name),
                        )
                    })?;
                }
            }
        }
        pending.rows.end_row();
        pending.ops.push(op);
        if pending.ops.len() >= batch_rows {
            self.flush_table(t)?;
        }
        Ok(())
    }

    fn flush_table(&mut self, t: usize) -> Result<()> {
        if let Some(mut p) = self.pending[t].take()
            && !p.ops.is_empty()
        {
            let rows = p.rows.finish()?;
            self.out.push_back(SourceEvent::Batch(ChangeBatch {
                table: Arc::from(self.tables[t].name.as_str()),
                rows,
                ops: Arc::from(p.ops),
            }));
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        for t in 0..self.tables.len() {
            self.flush_table(t)?;
        }
        Ok(())
    }

    /// Handle one replication event.
    async fn on_event(&mut self, ev: ChangeEvent) -> Result<()> {
        match ev.event_type {
            EventType::Begin { transaction_id, .. } => self.xid = Some(transaction_id),
            EventType::Commit {
                end_lsn,
                commit_timestamp,
                ..
            } => {
                self.last_commit = Some(commit_timestamp.into());
                self.xid = None;
                self.position.lsn = end_lsn.0;
                self.passed(end_lsn.0);
                if self.end_marker.as_ref().is_some_and(|(_, seen)| *seen) {
                    self.finished = true;
                }
            }
            EventType::Message {
                message_lsn,
                content,
                ..
            } => {
                let lsn = message_lsn.0;
                if self.xid.is_none() {
                    self.position.lsn = self.position.lsn.max(lsn);
                }
                self.passed(lsn);
                if let Some((marker, seen)) = &mut self.end_marker
                    && content.as_ref() == marker.as_bytes()
                {
                    // Transactional: the run ends at the marker transaction's commit.
                    *seen = true;
                }
            }
            EventType::Insert {
                schema,
                table,
                data,
                ..
            } => self.row_change(&schema, &table, Op::Insert, &data)?,
            EventType::Update {
                schema,
                table,
                old_data,
                new_data,
                replica_identity,
                ..
            } => {
                let Some(t) = self.table_index(&schema, &table) else {
                    return Ok(());
                };
                let xid = self.xid.unwrap_or(0);
                let new_key = self.key_of(t, &new_data)?;
                if let Some(old) = &old_data {
                    let old_key = self.key_of(t, old)?;
                    if old_key != new_key && self.passes(t, &old_key, xid) {
                        self.push_row(t, Op::UpdateBefore, old, None, true)?;
                    }
                }
                if self.passes(t, &new_key, xid) {
                    // Only a full old image ('O', REPLICA IDENTITY FULL) has values; a
                    // key image ('K') carries nulls for the columns outside the key.
                    let full_old = old_data
                        .as_ref()
                        .filter(|_| matches!(replica_identity, ReplicaIdentity::Full));
                    let base = match self.unchanged_columns(t, &new_data, full_old) {
                        missing if missing.is_empty() => full_old.cloned(),
                        missing => Some(self.current_values(t, &new_key, &missing).await?),
                    };
                    self.push_row(t, Op::UpdateAfter, &new_data, base.as_ref(), false)?;
                }
            }
            EventType::Delete {
                schema,
                table,
                old_data,
                ..
            } => self.row_change(&schema, &table, Op::Delete, &old_data)?,
            EventType::Truncate { tables, .. } => {
                for name in tables {
                    if self.by_name.contains_key(name.as_ref()) {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "table {name} was truncated; lakeshore does not replicate \
                                 TRUNCATE yet: re-snapshot it with a new pipeline name"
                            ),
                        ));
                    }
                }
            }
            EventType::Relation {
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let Some(t) = self.table_index(&namespace, &relation_name) else {
                    return Ok(());
                };
                self.on_relation(t, &columns).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// An insert (the whole row) or a delete (its key) of `schema.table`, if it passes.
    fn row_change(&mut self, schema: &str, table: &str, op: Op, row: &RowData) -> Result<()> {
        let Some(t) = self.table_index(schema, table) else {
            return Ok(());
        };
        let key = self.key_of(t, row)?;
        if self.passes(t, &key, self.xid.unwrap_or(0)) {
            self.push_row(t, op, row, None, op.removes())?;
        }
        Ok(())
    }

    /// Columns of the current relation that an update's new image left out (unchanged
    /// TOAST values) and its old image (REPLICA IDENTITY FULL) does not carry either.
    fn unchanged_columns(&self, t: usize, new: &RowData, old: Option<&RowData>) -> Vec<usize> {
        self.tables[t]
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                self.live[t][*i]
                    && new.get(&c.name).is_none()
                    && old.is_none_or(|o| o.get(&c.name).is_none())
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The current values of `columns` for `key`, read from the table. Used for unchanged
    /// TOAST values under REPLICA IDENTITY DEFAULT: a later change of such a column carries
    /// its new value, so the lake converges to the source (a checkpoint in between may show
    /// a value newer than the update's own). REPLICA IDENTITY FULL avoids the query.
    async fn current_values(&self, t: usize, key: &[String], columns: &[usize]) -> Result<RowData> {
        let table = &self.tables[t];
        let select: Vec<String> = columns
            .iter()
            .map(|&i| format!("{}::text", quote_ident(&table.columns[i].name)))
            .collect();
        let filter: Vec<String> = table
            .key
            .iter()
            .zip(key)
            .map(|(&k, v)| {
                format!(
                    "{} = {}",
                    quote_ident(&table.columns[k].name),
                    discover::quote_literal(v)
                )
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            select.join(", "),
            table.quoted(),
            filter.join(" AND ")
        );
        let messages = self
            .client
            .simple_query(&sql)
            .await
            .map_err(|e| pg_error("reading unchanged TOAST values", e))?;
        let mut data = RowData::with_capacity(columns.len());
        let row = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        tracing::debug!(table = %table.name, ?key, found = row.is_some(), "read unchanged TOAST values");
        for (j, &i) in columns.iter().enumerate() {
            let value = match row.and_then(|r| r.get(j)) {
                Some(v) => ColumnValue::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
                None => ColumnValue::Null,
            };
            data.push(Arc::from(table.columns[i].name.as_str()), value);
        }
        Ok(data)
    }

    /// A Relation message: the stream's view of the table's columns from here on. New
    /// columns are added to the lake table (a schema change after the rows before it);
    /// dropped ones stay in the lake and read as null; a changed type is refused.
    async fn on_relation(
        &mut self,
        t: usize,
        columns: &[pg_walstream::RelationColumn],
    ) -> Result<()> {
        let mut added = Vec::new();
        for c in columns {
            let kind = type_kind(&self.client, c.type_id, c.type_modifier).await;
            let name = c.name.to_string();
            match self.columns[t].get(&name) {
                Some(&i) => {
                    let col = &self.tables[t].columns[i];
                    if kind.is_some_and(|k| k != col.kind) {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "table {}, column {name}: its type changed (was {}); lakeshore \
                                 replicates added and dropped columns only. Re-snapshot the \
                                 table with a new pipeline name",
                                self.tables[t].name, col.type_name
                            ),
                        ));
                    }
                }
                None if !column_exists(&self.client, &self.tables[t], &name).await? => {
                    // Dropped again since: an old Relation message replayed after a restart.
                }
                None => {
                    let kind = kind.ok_or_else(|| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "table {}, column {name}: added with a type lakeshore does not \
                                 map (type oid {})",
                                self.tables[t].name, c.type_id
                            ),
                        )
                    })?;
                    added.push(discover::PgColumn {
                        name,
                        type_name: format!("oid {}", c.type_id),
                        kind,
                        // Snapshot chunks never read it: a chunk that finds the column
                        // restarts the pipeline, which discovers it properly.
                        raw: false,
                        order: None,
                    });
                }
            }
        }
        let present: std::collections::HashSet<&str> =
            columns.iter().map(|c| c.name.as_ref()).collect();
        if added.is_empty() {
            for (i, col) in self.tables[t].columns.iter().enumerate() {
                self.live[t][i] = present.contains(col.name.as_str());
            }
            return Ok(());
        }
        // Rows buffered so far have the old shape.
        self.flush_table(t)?;
        let table = &mut self.tables[t];
        for col in added {
            tracing::info!(table = %table.name, column = %col.name, "column added");
            self.columns[t].insert(col.name.clone(), table.columns.len());
            table.columns.push(col);
        }
        self.live[t] = table
            .columns
            .iter()
            .map(|c| present.contains(c.name.as_str()))
            .collect();
        let pairs: Vec<(String, types::Kind)> = table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind))
            .collect();
        table.schema.schema = types::arrow_schema(&pairs, &table.schema.key);
        self.out
            .push_back(SourceEvent::SchemaChange(table.schema.clone()));
        Ok(())
    }

    fn table_index(&self, schema: &str, table: &str) -> Option<usize> {
        self.by_name.get(&format!("{schema}.{table}")).copied()
    }

    fn position(&self) -> SourcePosition {
        SourcePosition(serde_json::to_value(&self.position).unwrap_or_default())
    }

    /// Emit the requested barrier if we are between transactions.
    fn maybe_barrier(&mut self) -> Result<bool> {
        // Not inside a source transaction, and not while changes were dropped for keys
        // that the next chunk must read: a restart from here would not replay them.
        if self.xid.is_some() || self.dropped.iter().any(|d| !d.is_empty()) {
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
        if let Some(restart) = row.get::<_, Option<String>>(1) {
            let retained = current.saturating_sub(parse_lsn(&restart)?);
            metrics::gauge!("lakeshore_postgres_slot_retained_wal_bytes", "slot" => self.opts.slot.clone())
                .set(retained as f64);
            if retained > SLOT_WARN_BYTES {
                tracing::warn!(slot = %self.opts.slot, retained_bytes = retained, "replication slot retains much WAL; is the pipeline keeping up?");
            }
        }
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
                        self.flush_all()?;
                        self.read_chunk(t).await?;
                        self.since_chunk = 0;
                        if self.stream.is_some() {
                            // Lets the stream pass this chunk's window even when idle.
                            self.client
                                .query_one(
                                    "SELECT pg_logical_emit_message(false, 'lakeshore', 'chunk')::text",
                                    &[],
                                )
                                .await
                                .map_err(|e| pg_error("writing a chunk marker", e))?;
                        }
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
                    return Ok(Some(SourceEvent::Watermark(0)));
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
                    self.on_event(ev).await?
                }
                Ok(Some(Err(message))) => {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!("PostgreSQL replication stream: {message}"),
                    ));
                }
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        "PostgreSQL replication stream ended",
                    ));
                }
                Err(_) => {
                    // Idle: hand out what is buffered and let the engine look around.
                    if self.xid.is_none() {
                        self.flush_all()?;
                    }
                    if self.out.is_empty() {
                        return Ok(Some(SourceEvent::Watermark(0)));
                    }
                }
            }
        }
    }

    fn request_barrier(&mut self, id: u64) {
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
            let lsn = format!("{:X}/{:X}", stream.acked >> 32, stream.acked & 0xffff_ffff);
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
}

fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s
        .split_once('/')
        .ok_or_else(|| Error::new(ErrorKind::Internal, format!("bad LSN {s:?}")))?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| Error::new(ErrorKind::Internal, "bad LSN"))?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| Error::new(ErrorKind::Internal, "bad LSN"))?;
    Ok(hi << 32 | lo)
}

/// Whether `table` has the column `name` now.
async fn column_exists(client: &Client, table: &PgTable, name: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 \
             AND NOT attisdropped",
            &[&table.quoted(), &name],
        )
        .await
        .map_err(|e| pg_error("reading the columns", e))?;
    Ok(row.is_some())
}

/// The kind of a column of type `oid` with modifier `typmod`; `None` when unmapped or the
/// catalog cannot be read.
async fn type_kind(client: &Client, oid: u32, typmod: i32) -> Option<types::Kind> {
    let row = client
        .query_opt(
            "SELECT coalesce(bt.typname, t.typname)::text, \
                    coalesce(bt.typcategory, t.typcategory)::text, \
                    (t.typcategory = 'A' OR coalesce(bt.typcategory, '') = 'A'), \
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE $2 END \
             FROM pg_type t LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
             WHERE t.oid = $1",
            &[&oid, &typmod],
        )
        .await
        .ok()??;
    types::kind_of(
        &row.get::<_, String>(0),
        &row.get::<_, String>(1),
        row.get(3),
        row.get(2),
    )
}

async fn current_wal_lsn(client: &Client) -> Result<u64> {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| pg_error("pg_current_wal_insert_lsn()", e))?;
    parse_lsn(&row.get::<_, String>(0))
}

/// `lakeshore validate --connect`: everything [`PostgresSource::open`] would check or set
/// up, without changing anything. Returns one line per finding; the first problem is an
/// error that says what to change.
pub async fn check(opts: &PostgresOptions) -> Result<Vec<String>> {
    let client = connect(&opts.url).await?;
    let mut report = vec![format!("connected to {}", redact(&opts.url))];
    let streaming = opts.startup != Startup::SnapshotOnly;
    if streaming {
        check_server(&client).await?;
        report.push("wal_level=logical; the user may start replication".into());
    }
    let tables = discover::discover(&client, &opts.tables, &opts.key_columns).await?;
    for t in &tables {
        let key: Vec<&str> = t.key.iter().map(|&k| t.columns[k].name.as_str()).collect();
        report.push(format!(
            "table {}: {} columns, key ({}), replica identity {}",
            t.name,
            t.columns.len(),
            key.join(", "),
            match t.replica_identity {
                'f' => "full",
                'i' => "index",
                _ => "default",
            }
        ));
    }
    if !streaming {
        return Ok(report);
    }
    let publication = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&opts.publication],
        )
        .await
        .map_err(|e| pg_error("reading publications", e))?;
    report.push(match publication {
        None => format!(
            "publication {} does not exist; lakeshore will create it (needs ownership of the tables)",
            opts.publication
        ),
        Some(row) if row.get::<_, bool>(0) => {
            format!("publication {} covers all tables", opts.publication)
        }
        Some(_) => {
            let rows = client
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
                     WHERE pubname = $1",
                    &[&opts.publication],
                )
                .await
                .map_err(|e| pg_error("reading publication tables", e))?;
            let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let missing: Vec<&str> = tables
                .iter()
                .filter(|t| !have.contains(&t.name))
                .map(|t| t.name.as_str())
                .collect();
            if missing.is_empty() {
                format!("publication {} covers the tables", opts.publication)
            } else {
                format!(
                    "publication {} lacks {}; lakeshore will add them",
                    opts.publication,
                    missing.join(", ")
                )
            }
        }
    });
    let slot = client
        .query_opt(
            "SELECT plugin, database = current_database(), active, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&opts.slot],
        )
        .await
        .map_err(|e| pg_error("reading replication slots", e))?;
    match slot {
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let same_db: Option<bool> = r.get(1);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "replication slot {} exists but is not a pgoutput slot of this \
                         database; choose another [source] slot name",
                        opts.slot
                    ),
                ));
            }
            let active: bool = r.get(2);
            let retained: Option<i64> = r.get(3);
            report.push(format!(
                "slot {} exists{}, retains {} MiB of WAL",
                opts.slot,
                if active { " and is in use" } else { "" },
                retained.unwrap_or(0) >> 20
            ));
        }
        None => {
            let free = client
                .query_one(
                    "SELECT current_setting('max_replication_slots')::int - \
                            (SELECT count(*) FROM pg_replication_slots)::int",
                    &[],
                )
                .await
                .map_err(|e| pg_error("counting replication slots", e))?
                .get::<_, i32>(0);
            if free <= 0 {
                return Err(Error::new(
                    ErrorKind::Config,
                    "no free replication slot: raise max_replication_slots (needs a restart) \
                     or drop an unused slot",
                ));
            }
            report.push(format!(
                "slot {} does not exist; lakeshore will create it ({free} free)",
                opts.slot
            ));
        }
    }
    Ok(report)
}

/// `wal_level = logical` and the REPLICATION attribute.
async fn check_server(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                    current_user::text, current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading server settings", e))?;
    let wal_level: String = row.get(0);
    let can_replicate: bool = row.get(1);
    let user: String = row.get(2);
    let version: i32 = row.get(3);
    if version < 140000 {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "PostgreSQL {} is too old; lakeshore needs 14 or newer",
                version / 10000
            ),
        ));
    }
    if wal_level != "logical" {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "PostgreSQL runs with wal_level={wal_level}; logical replication needs \
                 wal_level=logical: run ALTER SYSTEM SET wal_level = logical and restart \
                 PostgreSQL (or use startup = \"snapshot-only\")"
            ),
        ));
    }
    if !can_replicate {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "user {user} may not start replication; run ALTER ROLE {} REPLICATION",
                quote_ident(&user)
            ),
        ));
    }
    Ok(())
}

/// Create the publication for `tables`, or add the tables it lacks.
async fn ensure_publication(client: &Client, name: &str, tables: &[PgTable]) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT puballtables, pubviaroot, pubinsert AND pubupdate AND pubdelete \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| pg_error("reading publications", e))?;
    if let Some(row) = &exists {
        // Partitions' changes must come under the partitioned table's name.
        if tables.iter().any(|t| t.partitioned) && !row.get::<_, bool>(1) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "publication {name} reports partitions' changes under the partitions' \
                     names; run ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    quote_ident(name)
                ),
            ));
        }
        if !row.get::<_, bool>(2) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "publication {name} does not publish every insert, update and delete; run \
                     ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                    quote_ident(name)
                ),
            ));
        }
    }
    let list = |ts: &[&PgTable]| ts.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    match exists {
        None => {
            let all: Vec<&PgTable> = tables.iter().collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                quote_ident(name),
                list(&all)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| publication_error(name, e))?;
            tracing::info!(publication = name, "created publication");
        }
        Some(row) if row.get::<_, bool>(0) => {}
        Some(_) => {
            let rows = client
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
                     WHERE pubname = $1",
                    &[&name],
                )
                .await
                .map_err(|e| pg_error("reading publication tables", e))?;
            let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let missing: Vec<&PgTable> =
                tables.iter().filter(|t| !have.contains(&t.name)).collect();
            if !missing.is_empty() {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(name),
                    list(&missing)
                );
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| publication_error(name, e))?;
                tracing::info!(publication = name, tables = %list(&missing), "added tables to publication");
            }
        }
    }
    Ok(())
}

fn publication_error(name: &str, e: tokio_postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    Error::new(
        ErrorKind::Config,
        format!(
            "cannot create or extend publication {name}: {detail}; create it as the tables' \
             owner (CREATE PUBLICATION {} FOR TABLE ...) or set [source] publication",
            quote_ident(name)
        ),
    )
    .with_source(e)
}

/// Create the logical slot if absent; check an existing one.
async fn ensure_slot(client: &Client, slot: &str) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT plugin, database = current_database() FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| pg_error("reading replication slots", e))?;
    match row {
        None => {
            client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await
                .map_err(|e| {
                    let detail = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
                    Error::new(
                        ErrorKind::Config,
                        format!("cannot create replication slot {slot}: {detail}; check max_replication_slots and [source] slot"),
                    )
                    .with_source(e)
                })?;
            tracing::info!(slot, "created replication slot");
        }
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let same_db: Option<bool> = r.get(1);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "replication slot {slot} exists but is not a pgoutput slot of this \
                         database; choose another [source] slot name"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Start the replication stream at `lsn` (0 = where the slot stands) in its own task.
async fn start_stream(opts: &PostgresOptions, lsn: u64) -> Result<Stream> {
    let sep = if opts.url.contains('?') { '&' } else { '?' };
    let options = SESSION_OPTIONS.replace(' ', "%20").replace('=', "%3D");
    let conninfo = format!("{}{sep}replication=database&options={options}", opts.url);
    let config = ReplicationStreamConfig::builder(opts.slot.clone(), opts.publication.clone())
        .with_protocol_version(1)
        .with_streaming_mode(StreamingMode::Off)
        .with_messages(true)
        .with_existing_slot_required(true)
        .with_feedback_interval(Duration::from_secs(1));
    let mut stream = LogicalReplicationStream::new(&conninfo, config)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "cannot open a replication connection ({}): {e}; check [source] url and \
                     that the user has the REPLICATION attribute",
                    redact(&opts.url)
                ),
            )
        })?;
    stream
        .start(if lsn == 0 { None } else { Some(lsn) })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("cannot start replication from slot {}: {e}", opts.slot),
            )
        })?;
    let feedback = stream.shared_lsn_feedback.clone();
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel(1024);
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        loop {
            match stream.next_event(&token).await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    if !token.is_cancelled() {
                        let _ = tx.send(Err(e.to_string())).await;
                    }
                    break;
                }
            }
        }
        let _ = stream.stop().await;
    });
    Ok(Stream {
        rx,
        feedback,
        cancel,
        task: Some(task),
        acked: lsn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(redact("postgres://db/shop"), "postgres://db/shop");
    }

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/16B3748").unwrap(), 0x16B3748);
        assert_eq!(parse_lsn("1/0").unwrap(), 1 << 32);
    }

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
