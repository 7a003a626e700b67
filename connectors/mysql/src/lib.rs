//! MySQL / MariaDB source: a lock-free chunked snapshot merged with the ROW binlog.
//!
//! How the two meet (DBLog's watermarks, with MariaDB's exact snapshot position as the
//! watermark):
//! - The binlog is read from the position taken when the pipeline started, so it holds
//!   every change after that.
//! - Each table is read in key order, one chunk (`chunk_size` rows after the last key read)
//!   per `START TRANSACTION WITH CONSISTENT SNAPSHOT`, whose `binlog_snapshot_file` /
//!   `binlog_snapshot_position` is exactly the binlog position the read saw. No lock.
//! - Binlog changes for keys **not yet read** are dropped: the chunk that later covers the
//!   key reads its state then. That chunk must have seen every dropped transaction; if it
//!   was read before one of them committed, it is read again.
//! - Changes for keys a chunk **has read**, from a transaction that starts before the
//!   chunk's position (so the read saw it), are dropped too (a window per chunk, kept
//!   until the binlog passes that position); all other changes are emitted.
//! - Barriers fall between transactions and between chunks, never while dropped changes
//!   wait for their chunk; the position records the binlog position (the start of the
//!   next transaction), each table's last key read and the open windows, so a restart
//!   resumes at chunk granularity without re-reading or losing anything.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::read_ahead::{Covering, ReadAhead};
use lakeshore_api::{
    ChangeBatch, Error, ErrorKind, Lag, Op, Result, Source, SourceEvent, SourcePosition,
    TableSchema,
};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod binlog_tests;
mod changes;
mod ddl;
pub mod discover;
mod gtid;
mod held;
mod server;
pub mod snapshot;
mod stream;
pub mod types;

pub use gtid::Gtid;
pub use server::{binlog_behind, check, connect, redact};
use server::{check_server, my_error};

use changes::{value_error, warn_zero_dates};
use discover::MyTable;
use held::Held;
use snapshot::{Key, Seen};
use stream::Stream;
pub use stream::decode_file;
use types::RowsBuilder;

/// What to do first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Snapshot every table, then follow the binlog (default).
    Snapshot,
    /// Follow the binlog from now; no snapshot.
    Latest,
    /// Snapshot every table and stop.
    SnapshotOnly,
    /// Follow the binlog after this GTID position: MariaDB's `domain-server-seq[,...]` or
    /// MySQL's executed set `uuid:1-100[:...][,...]` (see [`Gtid`]).
    Gtid(String),
    /// Follow the binlog from this file and offset (a transaction boundary).
    File { file: String, position: u64 },
}

/// Validated `[source]` settings for `type = "mysql"`.
#[derive(Clone)]
pub struct MysqlOptions {
    /// `mysql://user:password@host:port` (a secret: never logged).
    pub url: String,
    /// `db.table` names or globs.
    pub tables: Vec<String>,
    /// Replica id of the binlog connection.
    pub server_id: u32,
    pub startup: Startup,
    /// Rows per snapshot chunk.
    pub chunk_size: usize,
    /// Connections reading snapshot chunks.
    pub parallelism: usize,
    /// Rows per emitted batch.
    pub batch_rows: usize,
    /// The columns the pipeline reads (its transforms' `columns`/`exclude`); the others
    /// are never selected.
    pub columns: lakeshore_api::ColumnFilter,
    /// `db.table` to write snapshot watermarks in: chunks are read between two of them
    /// (any server) instead of in a snapshot that reports its binlog position (MariaDB).
    pub snapshot_watermarks: Option<String>,
}

impl fmt::Debug for MysqlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlOptions")
            .field("url", &redact(&self.url))
            .field("tables", &self.tables)
            .field("server_id", &self.server_id)
            .field("startup", &self.startup)
            .field("chunk_size", &self.chunk_size)
            .field("snapshot_watermarks", &self.snapshot_watermarks)
            .finish()
    }
}

/// A binlog position: file and byte offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
}

impl BinlogPos {
    /// No position yet: a GTID start or resumption before its first transaction (the
    /// server finds where to send from), or no binlog followed at all.
    pub(crate) fn unnamed() -> BinlogPos {
        BinlogPos {
            file: String::new(),
            pos: 4,
        }
    }

    pub(crate) fn sequence(&self) -> u64 {
        self.file
            .rsplit('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl PartialOrd for BinlogPos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BinlogPos {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.sequence(), self.pos).cmp(&(other.sequence(), other.pos))
    }
}

/// The longest a busy stream keeps its rows before handing them to the engine.
const YIELD_EVERY: Duration = Duration::from_millis(100);
/// A binlog connection without any event (heartbeats included) this long is dead.
const SILENCE: Duration = Duration::from_secs(30);

/// The resume token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Position {
    /// Where the next transaction starts.
    binlog: BinlogPos,
    /// The GTID position at `binlog` (MariaDB's last GTID per domain, MySQL's executed
    /// set), when the server keeps GTIDs: resumes where `binlog` means nothing (another
    /// server after a failover, purged or rewritten binlogs).
    #[serde(default)]
    gtids: Option<Gtid>,
    /// MySQL: the `server_uuid` of the server whose binlog `binlog` is in.
    #[serde(default)]
    server: Option<String>,
    /// MySQL, from the start until the stream passes the position here: the executed set
    /// read just after the start position, which `gtids` then takes whole (see
    /// [`gtid::at_start`]).
    #[serde(default)]
    settling: Option<(BinlogPos, Gtid)>,
    /// Checkpoints written before `gtids`: a GTID start not yet passed (read only).
    #[serde(default, rename = "gtid", skip_serializing)]
    last_gtid: Option<String>,
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
    /// The binlog position the chunk's read saw: transactions starting before it are in
    /// the chunk.
    seen: BinlogPos,
}

/// A change not yet in a batch.
struct Pending {
    rows: RowsBuilder,
    ops: Vec<Op>,
    /// Each row's commit time and position, when asked for (`Source::record_origin`).
    origin: Option<lakeshore_api::OriginBuilder>,
}

/// The MySQL / MariaDB source.
pub struct MysqlSource {
    /// How the connection is protected (measured at open).
    transport: lakeshore_api::Transport,
    opts: MysqlOptions,
    bounded: bool,
    conn: Conn,
    /// The next chunks of tables, read on other connections (`parallelism` of them)
    /// while the current one is written. A chunk read ahead is used only if it saw every
    /// transaction dropped since (the same check as for any chunk), else it is read again.
    ahead: ReadAhead<Conn, Key, snapshot::ChunkRead>,
    tables: Vec<MyTable>,
    by_name: HashMap<String, usize>,
    position: Position,
    stream: Option<Stream>,
    /// Start of the open transaction, if inside one.
    txn: Option<BinlogPos>,
    txn_gtid: Option<gtid::TxnGtid>,
    /// Each row's commit time and position are recorded (`Source::record_origin`).
    record_origin: bool,
    /// The event time (µs) and position (GTID, else `file:pos`) of the transaction being
    /// read.
    txn_origin: Option<(i64, String)>,
    /// Per table: the start of the latest transaction whose changes were dropped as not
    /// yet read; the table's next chunk must have seen it.
    dropped: Vec<Option<BinlogPos>>,
    pending: Vec<Option<Pending>>,
    out: VecDeque<SourceEvent>,
    barrier: Option<u64>,
    /// Bounded runs stop once the stream reaches this position.
    end_at: Option<BinlogPos>,
    finished: bool,
    snapshot_rows: u64,
    since_chunk: usize,
    last_yield: std::time::Instant,
    /// When the binlog reader last delivered anything (heartbeats come every second).
    last_heard: std::time::Instant,
    /// Column index in our table of each binlog column, per table, cached by the
    /// binlog's column names.
    mapping: HashMap<(usize, Arc<[String]>), ColumnMap>,
    /// Tables the source gave up on (`SourceEvent::TableFailed`): skipped from then on.
    failed: std::collections::HashSet<usize>,
    /// Character set of each collation id (the table maps name a column's by id).
    charsets: HashMap<u16, String>,
    /// How chunks are placed in the binlog.
    placement: snapshot::Placement,
    /// The watermark table as the binlog names it (`db`, `table`), when chunks are read
    /// between watermarks.
    watermarks: Option<(String, String)>,
    /// Per table: its chunk read between watermarks, until the binlog reaches the high one.
    held: Vec<Option<held::Held>>,
    /// The low watermark of each chunk read ahead and not yet taken, and its table: the
    /// binlog reaching it takes the chunk then.
    expected: HashMap<String, usize>,
    /// Chunk reads so far (numbers their watermarks).
    reads: u64,
}

/// Our column index of each binlog column (`None`: not one of ours).
type ColumnMap = Vec<Option<usize>>;

/// This process's prefix of watermark marks: a restarted pipeline never mistakes the
/// marks of an earlier run (still in the binlog after its checkpoint) for its own.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// The server's current binlog position.
async fn master_position(conn: &mut Conn) -> Result<BinlogPos> {
    Ok(master_status(conn).await?.0)
}

/// The server's current binlog position, and MySQL's executed GTID set at it.
async fn master_status(conn: &mut Conn) -> Result<(BinlogPos, Option<String>)> {
    let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
        // MySQL 8.4 removed it for the name 8.2 introduced.
        Err(mysql_async::Error::Server(e)) if e.code == 1064 => {
            conn.query_first("SHOW BINARY LOG STATUS").await
        }
        other => other,
    }
    .map_err(|e| my_error("reading the binlog position", e))?;
    let row = row.ok_or_else(|| {
        Error::config(
            "the server has no binlog (SHOW MASTER STATUS is empty); start it with --log-bin \
             and binlog_format=ROW",
        )
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(4);
    // MariaDB's row has four columns.
    let executed: Option<String> = row.get_opt(4).and_then(|v| v.ok());
    Ok((BinlogPos { file, pos }, executed))
}

/// Where a pipeline without a checkpoint starts: at `startup`'s binlog file and
/// position or GTID, or at the server's current position; every table counts as read
/// unless the startup takes a snapshot.
async fn first_position(
    conn: &mut Conn,
    mariadb: bool,
    startup: &Startup,
    tables: &[MyTable],
) -> Result<Position> {
    let (binlog, executed) = match startup {
        Startup::File { file, position } => (
            BinlogPos {
                file: file.clone(),
                pos: *position,
            },
            None,
        ),
        // Found by the server from the GTID; the first rotation names it.
        Startup::Gtid(g) => {
            let gtids = Gtid::parse(g).ok_or_else(|| {
                Error::config(format!("[source] startup: {g:?} is not a GTID position"))
            })?;
            if gtids.is_mariadb() != mariadb {
                return Err(stream::other_flavour(&gtids, mariadb));
            }
            let mut p = Position::at(BinlogPos::unnamed());
            p.gtids = Some(gtids);
            if !mariadb {
                p.server = gtid::server_uuid(conn).await?;
            }
            return Ok(p.every_table_read(tables));
        }
        // No binlog to follow: none needed.
        Startup::SnapshotOnly => return Ok(Position::at(BinlogPos::unnamed())),
        _ => master_status(conn).await?,
    };
    let mut p = Position::at(binlog);
    gtid::at_start(conn, mariadb, &mut p, executed).await?;
    Ok(match startup {
        Startup::File { file, position } => {
            if p.gtids.is_none() && mariadb {
                return Err(Error::config(format!(
                    "[source] startup: {file}:{position} is not where a transaction starts in \
                     this server's binlog (SHOW BINLOG EVENTS IN '{file}' lists the events and \
                     their positions; SHOW BINARY LOGS the files)"
                )));
            }
            p.every_table_read(tables)
        }
        Startup::Latest => p.every_table_read(tables),
        _ => p,
    })
}

impl Position {
    /// At `binlog`, nothing read yet.
    fn at(binlog: BinlogPos) -> Position {
        Position {
            binlog,
            gtids: None,
            server: None,
            settling: None,
            last_gtid: None,
            tables: BTreeMap::new(),
            windows: Vec::new(),
        }
    }

    /// With every table counted as read (no snapshot).
    fn every_table_read(mut self, tables: &[MyTable]) -> Position {
        for t in tables {
            self.tables.insert(t.name.clone(), Progress::Done);
        }
        self
    }
}

/// Start the binlog stream at `p` — a checkpoint's (`resumed`), by file and offset or
/// by GTID ([`gtid::resume`]), or a new pipeline's, by GTID only before its first
/// transaction — with the tables that must be read again: chunks read ahead of a
/// checkpoint know where they were read by the old server's binlog positions.
async fn follow(
    opts: &MysqlOptions,
    conn: &mut Conn,
    mariadb: bool,
    p: &mut Position,
    resumed: bool,
) -> Result<(Stream, Vec<String>)> {
    let by_gtid = if resumed {
        gtid::resume(conn, mariadb, p).await?
    } else {
        p.gtids.clone().filter(|_| p.binlog.file.is_empty())
    };
    let stream = stream::start(
        &opts.url,
        opts.server_id,
        mariadb,
        &p.binlog,
        by_gtid.as_ref(),
    )
    .await?;
    let mut moved = Vec::new();
    if by_gtid.is_some() {
        moved = p.windows.iter().map(|w| w.table.clone()).collect();
        moved.sort();
        moved.dedup();
    }
    Ok((stream, moved))
}

impl MysqlSource {
    /// Connect, check the server, discover the tables, and position at `position` (or the
    /// start). `bounded`: stop after the snapshot and the changes committed until it ended
    /// (`lakeshore backfill`).
    pub async fn open(
        opts: MysqlOptions,
        position: Option<&SourcePosition>,
        bounded: bool,
    ) -> Result<Self> {
        let mut conn = connect(&opts.url).await?;
        let (transport, _) = server::transport(&mut conn, &opts.url).await?;
        let streaming = opts.startup != Startup::SnapshotOnly;
        let mut charsets = HashMap::new();
        if streaming {
            check_server(&mut conn).await?;
            charsets = server::collation_charsets(&mut conn).await?;
        }
        let skip = opts.snapshot_watermarks.as_deref();
        let tables = discover::discover(&mut conn, &opts.tables, &opts.columns, skip).await?;
        let watermarks = skip
            .filter(|_| streaming)
            .and_then(|w| w.split_once('.'))
            .map(|(db, t)| (db.to_string(), t.to_string()));
        let mariadb = gtid::is_mariadb(&mut conn).await?;
        let resumed = position.is_some();
        let mut position: Position = match position {
            Some(p) => p.decode("MySQL")?,
            None => first_position(&mut conn, mariadb, &opts.startup, &tables).await?,
        };
        let (stream, moved) = if streaming {
            let (stream, moved) = follow(&opts, &mut conn, mariadb, &mut position, resumed).await?;
            (Some(stream), moved)
        } else {
            (None, Vec::new())
        };
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let n = tables.len();
        tracing::info!(binlog = ?position.binlog, tables = n, "MySQL source open");
        let mut readers = Vec::new();
        if tables
            .iter()
            .any(|t| position.tables.get(&t.name) != Some(&Progress::Done))
        {
            for _ in 0..opts.parallelism.max(1) {
                readers.push(connect(&opts.url).await?);
            }
        }
        // Also when every table is read: a table may have to be read again.
        let placement = match &watermarks {
            Some((db, t)) => {
                snapshot::create_watermarks(&mut conn, db, t).await?;
                snapshot::Placement::Watermarks {
                    table: format!("{}.{}", discover::quote_ident(db), discover::quote_ident(t)),
                    reader: format!("server_id {}", opts.server_id),
                    run: run_id(),
                }
            }
            None if streaming => snapshot::Placement::SnapshotPosition,
            None => snapshot::Placement::Unplaced,
        };
        let mut source = MysqlSource {
            ahead: ReadAhead::new(readers),
            bounded: bounded || !streaming,
            conn,
            tables,
            by_name,
            position,
            stream,
            txn: None,
            txn_gtid: None,
            record_origin: false,
            txn_origin: None,
            dropped: vec![None; n],
            pending: (0..n).map(|_| None).collect(),
            out: VecDeque::new(),
            barrier: None,
            end_at: None,
            finished: false,
            snapshot_rows: 0,
            since_chunk: 0,
            last_yield: std::time::Instant::now(),
            last_heard: std::time::Instant::now(),
            mapping: HashMap::new(),
            failed: Default::default(),
            charsets,
            transport,
            placement,
            watermarks,
            held: (0..n).map(|_| None).collect(),
            expected: HashMap::new(),
            reads: 0,
            opts,
        };
        for table in moved {
            tracing::warn!(
                table,
                "the checkpoint was taken during the table's snapshot with chunks placed by \
                 the old server's binlog positions; reading the table again"
            );
            lakeshore_api::Source::resnapshot(&mut source, &table)?;
        }
        Ok(source)
    }

    fn progress_of(&self, t: usize) -> Option<&Progress> {
        self.position.tables.get(&self.tables[t].name)
    }

    /// The next table with rows left to read and no chunk held; prefers one whose
    /// read-ahead is ready.
    fn next_chunk_table(&self) -> Option<usize> {
        self.ahead.next_table(self.tables.len(), |t| {
            self.progress_of(t) != Some(&Progress::Done)
                && !self.failed.contains(&t)
                && self.held[t].is_none()
        })
    }

    /// The low and high watermarks of the next chunk read (none without watermarks).
    fn next_marks(&mut self) -> Option<(String, String)> {
        self.placement.next_marks(&mut self.reads)
    }

    /// Start reading ahead the next chunk of every unfinished table that has none in
    /// flight, while idle connections last.
    fn start_prefetches(&mut self) {
        let (tables, limit) = (&self.tables, self.opts.chunk_size);
        let after = |t: usize| match (self.position.tables.get(&tables[t].name), &self.held[t]) {
            _ if self.failed.contains(&t) => None,
            // The chunk after the held one: its low watermark follows the held one's high.
            (_, Some(h)) if h.read.complete => None,
            (_, Some(h)) => Some(h.read.last.clone()),
            (Some(Progress::Done), _) => None,
            (Some(Progress::After(k)), _) => Some(Some(k.clone())),
            (None, _) => Some(None),
        };
        let (placement, reads, expected) = (&self.placement, &mut self.reads, &mut self.expected);
        self.ahead.start(tables.len(), after, |t, mut conn, key| {
            let table = tables[t].clone();
            let marks = placement.next_marks(reads);
            if let Some((low, _)) = &marks {
                expected.insert(low.clone(), t);
            }
            let placement = placement.clone();
            async move {
                let read =
                    snapshot::read_chunk(&mut conn, &table, key.as_ref(), limit, &placement, marks)
                        .await;
                (conn, read)
            }
        });
    }

    /// Read the next chunk of table `t` and queue its rows (or hold them until the binlog
    /// reaches the chunk's high watermark).
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
        // Read with the columns known then: a chunk read ahead is used only if they
        // still hold.
        let columns = table.columns.len();
        let mut ahead = self
            .ahead
            .take(t, after.as_ref(), |read| {
                read.rows.first().is_none_or(|r| r.len() == columns)
            })
            .await?;
        self.expected.retain(|_, x| *x != t);
        let mut covering = Covering::default();
        let read = loop {
            let read = match ahead.take() {
                Some(read) => read,
                None => {
                    let (limit, marks) = (self.opts.chunk_size, self.next_marks());
                    let placement = &self.placement;
                    snapshot::read_chunk(
                        &mut self.conn,
                        &table,
                        after.as_ref(),
                        limit,
                        placement,
                        marks,
                    )
                    .await?
                }
            };
            // Every transaction dropped as not-yet-read must be in this read (a read
            // between watermarks comes after them all: its low watermark is newer).
            match &read.seen {
                Seen::At(seen) if self.dropped[t].as_ref().is_some_and(|d| seen <= d) => {}
                _ => break read,
            }
            covering
                .again(|| {
                    format!(
                        "snapshot of {}: the binlog delivered a transaction the snapshot \
                         position does not cover",
                        table.name
                    )
                })
                .await?;
        };
        self.dropped[t] = None;
        let seen = match &read.seen {
            Seen::At(seen) => Some(seen.clone()),
            Seen::Unplaced => None,
            Seen::Between { low, high, .. } => {
                // The binlog has not reached its low watermark: the stream is read on
                // this task, which was busy reading the chunk.
                let (low, high) = (low.clone(), high.clone());
                self.held[t] = Some(Held::new(after, read, low, high));
                self.start_prefetches();
                return Ok(());
            }
        };
        let to = if read.complete {
            None
        } else {
            read.last.clone()
        };
        if let Some(seen) = seen.filter(|_| self.stream.is_some()) {
            self.position.windows.push(Window {
                table: table.name.clone(),
                from: after.clone(),
                to,
                seen,
            });
        }
        self.emit_chunk(t, read.rows, read.last, read.complete)
    }

    /// Queue the rows of table `t`'s chunk up to `last` (`complete`: to the table's end)
    /// and record the progress.
    fn emit_chunk(
        &mut self,
        t: usize,
        rows: Vec<Vec<mysql_common::value::Value>>,
        last: Option<Key>,
        complete: bool,
    ) -> Result<()> {
        let table = &self.tables[t];
        let progress = match (last, complete) {
            (Some(k), false) => Progress::After(k),
            _ => Progress::Done,
        };
        let n = rows.len();
        self.snapshot_rows += n as u64;
        let kinds = table.kinds();
        for chunk in rows.chunks(self.opts.batch_rows.max(1)) {
            let mut rows = RowsBuilder::new(table.schema.schema.clone(), &kinds, chunk.len());
            for row in chunk {
                for (i, v) in row.iter().enumerate() {
                    rows.push(i, v).map_err(|m| value_error(table, i, m))?;
                }
                rows.end_row();
            }
            warn_zero_dates(table, &rows);
            self.out.push_back(SourceEvent::Batch(ChangeBatch::snapshot(
                Arc::from(table.name.as_str()),
                rows.finish()?,
            )));
        }
        metrics::counter!("lakeshore_mysql_snapshot_rows_total", "table" => table.name.clone())
            .increment(n as u64);
        let name = table.name.clone();
        if progress == Progress::Done {
            tracing::info!(table = %name, "snapshot complete");
            self.out.push_back(SourceEvent::SnapshotDone(name.clone()));
        }
        self.position.tables.insert(name, progress);
        // Read next chunks while this one is written (see `Prefetch`).
        self.start_prefetches();
        Ok(())
    }

    /// The binlog reached the high watermark of table `t`'s held chunk: queue its rows,
    /// which are the table's as of here.
    pub(crate) fn release(&mut self, t: usize) -> Result<()> {
        let Some(held) = self.held[t].take() else {
            return Ok(());
        };
        let (rows, read) = held.into_rows();
        let columns = self.tables[t].columns.len();
        if rows.iter().any(|r| r.len() != columns) {
            // The table's columns changed while the chunk was held; nothing of it was
            // emitted, so it is read again.
            tracing::info!(table = %self.tables[t].name, "columns changed during a chunk read; reading it again");
            return Ok(());
        }
        self.dropped[t] = None;
        self.emit_chunk(t, rows, read.last, read.complete)
    }

    fn position_token(&self) -> SourcePosition {
        SourcePosition(serde_json::to_value(&self.position).unwrap_or_default())
    }

    fn maybe_barrier(&mut self) -> Result<bool> {
        // Not while a held chunk takes changes: a restart would read it again from its
        // start, after the changes it took were committed.
        if self.txn.is_some()
            || self.dropped.iter().any(Option::is_some)
            || self.held.iter().flatten().any(|h| h.open)
        {
            return Ok(false);
        }
        if let Some(id) = self.barrier.take() {
            self.flush_all()?;
            let position = self.position_token();
            self.out.push_back(SourceEvent::Barrier { id, position });
            return Ok(true);
        }
        Ok(false)
    }
}

#[async_trait::async_trait]
impl Source for MysqlSource {
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
            if self.finished && self.txn.is_none() {
                self.flush_all()?;
                if !self.out.is_empty() {
                    continue;
                }
                return Ok(None);
            }
            if self.txn.is_none() {
                let caught_up = self.stream.as_ref().is_none_or(|s| s.rx.is_empty())
                    || self.since_chunk >= self.opts.chunk_size;
                if caught_up {
                    if let Some(t) = self.next_chunk_table() {
                        self.flush_all()?;
                        match self.read_chunk(t).await {
                            Err(e) if e.kind() == ErrorKind::Unsupported => self.fail_table(t, e),
                            other => other?,
                        }
                        self.since_chunk = 0;
                        continue;
                    }
                    if self.stream.is_none() {
                        self.finished = true;
                        continue;
                    }
                    // A held chunk waits for the binlog to reach its high watermark.
                    if self.bounded
                        && self.end_at.is_none()
                        && self.held.iter().all(Option::is_none)
                    {
                        let end = master_position(&mut self.conn).await?;
                        tracing::info!(binlog = ?end, "reading the binlog up to here");
                        if self.position.binlog >= end {
                            self.finished = true;
                        }
                        self.end_at = Some(end);
                        continue;
                    }
                }
            }
            if self.txn.is_none() && self.last_yield.elapsed() >= YIELD_EVERY {
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
                Ok(Some(Ok(msg))) => {
                    self.last_heard = std::time::Instant::now();
                    self.since_chunk += 1;
                    self.on_msg(msg).await?;
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => {
                    return Err(Error::transient("the binlog reader stopped"));
                }
                Err(_) => {
                    // The server sends a heartbeat every second; silence means the
                    // connection is gone without telling us (mysql_async has no read
                    // timeout), so reconnect from the last checkpoint.
                    if self.last_heard.elapsed() > SILENCE {
                        return Err(Error::transient(format!(
                            "the binlog stream has been silent for {} s (no heartbeat)",
                            SILENCE.as_secs()
                        )));
                    }
                    if self.txn.is_none() {
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
        self.barrier = Some(id);
    }

    async fn ack(&mut self, _position: &SourcePosition) -> Result<()> {
        // The binlog keeps no per-reader state on the server: nothing to release.
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.stream.take();
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
        let bits = self
            .stream
            .as_ref()?
            .lag
            .load(std::sync::atomic::Ordering::Relaxed);
        let seconds = f64::from_bits(bits);
        (!seconds.is_nan()).then_some(Lag {
            seconds: Some(seconds),
            behind: None,
            unit: "bytes",
        })
    }

    /// Like a `TRUNCATE` met before the table's snapshot ended: the lake table is emptied
    /// and the table's chunks are read again, merged with the binlog (changes to keys not
    /// read again yet are dropped, as during the first snapshot).
    fn resnapshot(&mut self, table: &str) -> Result<()> {
        let Some(t) = self.by_name.get(table).copied() else {
            return Err(Error::config(format!(
                "the pipeline reads no table {table}"
            )));
        };
        if self.stream.is_none() {
            return Err(Error::unsupported(format!(
                "cannot read {table} again: a pipeline without a binlog reads its tables \
                     once; run it again under a new pipeline name"
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
        self.held[t] = None;
        self.read_again();
        tracing::info!(table, "reading the table again (re-snapshot)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_positions_order_by_file_number_then_offset() {
        let a = BinlogPos {
            file: "mysql-bin.000009".into(),
            pos: 900,
        };
        let b = BinlogPos {
            file: "mysql-bin.000010".into(),
            pos: 4,
        };
        assert!(a < b);
        assert!(
            b < BinlogPos {
                file: "mysql-bin.000010".into(),
                pos: 5
            }
        );
    }
}
