//! The binlog reader: a `mysql_async` binlog connection read by its own task, which turns
//! events into owned messages with their positions (MariaDB's GTID events, types 160–163,
//! are not known to `mysql_common`; the GTID event is parsed here).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use lakeshore_api::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::binlog::EventStreamReader;
use mysql_common::binlog::consts::{BinlogChecksumAlg, BinlogVersion};
use mysql_common::binlog::events::{
    Event, EventData, RowsEventData, TableMapEvent, TransactionPayloadEvent,
};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::value::Value;
use tokio::sync::mpsc;

use crate::BinlogPos;
use crate::gtid::{Gtid, TxnGtid};
use crate::server::{connect, redact};

/// MariaDB's GTID event.
const MARIADB_GTID_EVENT: u8 = 162;
/// MariaDB's compressed events: query, then rows v1 and v2 (165–171).
const MARIADB_COMPRESSED_FIRST: u8 = 165;
const MARIADB_COMPRESSED_LAST: u8 = 171;
/// The heartbeat the server sends when it has nothing more to send.
const HEARTBEAT: u8 = 27;

/// What a row event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    Insert,
    Update,
    Delete,
}

/// A row image: values by the table's binlog column order.
pub type Image = Vec<Value>;

/// One message of the reader.
#[derive(Debug)]
pub enum Msg {
    /// A transaction starts; `at` lies within it (its GTID event, or `BEGIN`). A DDL
    /// transaction ends with its [`Msg::Statement`].
    Begin {
        at: BinlogPos,
        gtid: Option<TxnGtid>,
        /// The event's timestamp (seconds since the epoch).
        ts: u32,
    },
    /// Row changes of `db.table`; `columns` are the binlog's column names and
    /// `declared` their types as the event's table map declares them.
    Rows {
        db: String,
        table: String,
        op: RowOp,
        columns: Arc<[String]>,
        declared: Arc<[Declared]>,
        rows: Vec<(Option<Image>, Option<Image>)>,
    },
    /// The transaction ended; the next one starts at `next`.
    Commit { next: BinlogPos },
    /// A statement outside row events (DDL); the next transaction starts at `next`.
    Statement {
        db: String,
        sql: String,
        next: BinlogPos,
    },
    /// Nothing to apply up to `next` (rotation, heartbeat, bookkeeping events). `idle`:
    /// a heartbeat — the server has sent everything up to `next`.
    Advance { next: BinlogPos, idle: bool },
}

/// A column's type as a row event's table map declares it: the truth at that point of
/// the binlog, whatever `information_schema` says now. Only what decoding or the lake's
/// column type depends on is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// TINYINT, SMALLINT, MEDIUMINT, INT, YEAR.
    Int,
    /// BIGINT.
    BigInt,
    Float,
    Double,
    /// DECIMAL(precision, scale).
    Decimal(u8, u8),
    /// ENUM, with its labels when the binlog carries them (`binlog_row_metadata=FULL`).
    Enum(Option<Arc<[String]>>),
    /// SET, with its labels when the binlog carries them.
    Set(Option<Arc<[String]>>),
    /// CHAR(n) / BINARY(n): at most `n` bytes; the binlog drops the trailing padding.
    /// With the column's collation id (`binlog_row_metadata` MINIMAL or FULL; 63 is
    /// binary).
    Fixed(usize, Option<u16>),
    /// VARCHAR, VARBINARY, TEXT, BLOB (with the collation id), JSON (without).
    Varying(Option<u16>),
    /// Every other type (dates, times, BIT, GEOMETRY): compared by our own decoder.
    Other,
}

/// The declared type of every column of a table map.
pub fn declared(tme: &mysql_common::binlog::events::TableMapEvent<'_>) -> Vec<Declared> {
    use mysql_common::binlog::events::OptionalMetadataField;
    use mysql_common::constants::ColumnType as C;
    let (mut enums, mut sets) = (Vec::new(), Vec::new());
    // Collation ids of the character columns (CHAR, VARCHAR, TEXT, BLOB; not ENUM/SET),
    // in column order: either one default with exceptions by character-column index,
    // or one per character column.
    let mut charsets: Vec<u16> = Vec::new();
    let mut default_charset: Option<(u16, Vec<(usize, u16)>)> = None;
    for field in tme.iter_optional_meta().flatten() {
        match field {
            OptionalMetadataField::DefaultCharset(d) => {
                let exceptions = d
                    .iter_non_default()
                    .flatten()
                    .map(|n| (n.column_index() as usize, n.charset()))
                    .collect();
                default_charset = Some((d.default_charset(), exceptions));
            }
            OptionalMetadataField::ColumnCharset(c) => {
                charsets = c.iter_charsets().flatten().collect();
            }
            OptionalMetadataField::EnumStrValue(v) => {
                for e in v.iter_values().flatten() {
                    enums.push(e.values().iter().map(|x| x.value().into_owned()).collect());
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for e in v.iter_values().flatten() {
                    sets.push(e.values().iter().map(|x| x.value().into_owned()).collect());
                }
            }
            _ => {}
        }
    }
    let character_columns = (0..tme.columns_count() as usize)
        .filter(|&i| matches!(tme.get_column_type(i), Ok(Some(t)) if t.is_character_type()))
        .count();
    if let Some((default, exceptions)) = default_charset {
        charsets = vec![default; character_columns];
        for (i, c) in exceptions {
            if let Some(slot) = charsets.get_mut(i) {
                *slot = c;
            }
        }
    }
    let mut charsets = charsets.into_iter();
    let (mut enums, mut sets) = (enums.into_iter(), sets.into_iter());
    (0..tme.columns_count() as usize)
        .map(|i| {
            let m = tme.get_column_metadata(i).unwrap_or(&[]);
            let charset = match tme.get_column_type(i) {
                Ok(Some(t)) if t.is_character_type() => charsets.next(),
                _ => None,
            };
            match tme.get_column_type(i) {
                Ok(Some(C::MYSQL_TYPE_TINY | C::MYSQL_TYPE_SHORT | C::MYSQL_TYPE_INT24))
                | Ok(Some(C::MYSQL_TYPE_LONG | C::MYSQL_TYPE_YEAR)) => Declared::Int,
                Ok(Some(C::MYSQL_TYPE_LONGLONG)) => Declared::BigInt,
                Ok(Some(C::MYSQL_TYPE_FLOAT)) => Declared::Float,
                Ok(Some(C::MYSQL_TYPE_DOUBLE)) => Declared::Double,
                Ok(Some(C::MYSQL_TYPE_NEWDECIMAL)) if m.len() == 2 => Declared::Decimal(m[0], m[1]),
                Ok(Some(C::MYSQL_TYPE_ENUM)) => Declared::Enum(enums.next()),
                Ok(Some(C::MYSQL_TYPE_SET)) => Declared::Set(sets.next()),
                Ok(Some(C::MYSQL_TYPE_STRING)) if m.len() == 2 => {
                    // The real type's spare bits carry the high bits of the length (the
                    // server's `Field_string::do_save_field_metadata`).
                    let (b0, b1) = (m[0] as usize, m[1] as usize);
                    if b0 & 0x30 != 0x30 {
                        Declared::Fixed(b1 | (((b0 & 0x30) ^ 0x30) << 4), charset)
                    } else {
                        Declared::Fixed(b1, charset)
                    }
                }
                Ok(Some(
                    C::MYSQL_TYPE_VARCHAR
                    | C::MYSQL_TYPE_VAR_STRING
                    | C::MYSQL_TYPE_BLOB
                    | C::MYSQL_TYPE_JSON,
                )) => Declared::Varying(charset),
                _ => Declared::Other,
            }
        })
        .collect()
}

/// The running reader.
pub struct Stream {
    pub rx: mpsc::Receiver<std::result::Result<Msg, Error>>,
    pub task: tokio::task::JoinHandle<()>,
    /// Binlog lag in seconds as last measured (`f64` bits; NaN until known).
    pub lag: Arc<AtomicU64>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `request` starting after GTID position `gtid`: MariaDB's through
/// `@slave_connect_state`, MySQL's executed set through COM_BINLOG_DUMP_GTID; the other
/// flavour's GTID is refused with an example of the right one.
async fn from_gtid<'a>(
    conn: &mut Conn,
    mariadb: bool,
    request: BinlogStreamRequest<'a>,
    gtid: &Gtid,
) -> Result<BinlogStreamRequest<'a>> {
    Ok(match (gtid, mariadb) {
        (Gtid::MariaDb(_), true) => {
            conn.exec_drop("SET @slave_connect_state = ?", (gtid.to_string(),))
                .await
                .map_err(|e| crate::server::my_error("setting the GTID to start from", e))?;
            request
        }
        // MySQL: COM_BINLOG_DUMP_GTID with the executed set; the server skips those.
        (Gtid::MySql(_), false) => request.with_gtid().with_gtid_set(gtid.sids()),
        (_, mariadb) => return Err(other_flavour(gtid, mariadb)),
    })
}

/// `startup = { gtid = ... }` of the other server flavour, with an example of the right
/// one (`mariadb`: this server's).
pub(crate) fn other_flavour(gtid: &Gtid, mariadb: bool) -> Error {
    let want = if mariadb {
        "MariaDB's domain-server-seq, e.g. { gtid = \"0-1-100\" } (SELECT @@gtid_binlog_pos)"
    } else {
        "MySQL's executed set, e.g. { gtid = \"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100\" } \
         (SELECT @@gtid_executed)"
    };
    Error::config(format!(
        "[source] startup: {gtid} is the other server flavour's GTID; this server needs {want}"
    ))
}

/// Start reading the binlog of a MariaDB (`mariadb`) or MySQL server at `from` (a
/// transaction boundary), or after the GTID position `gtid` when given.
pub async fn start(
    url: &str,
    server_id: u32,
    mariadb: bool,
    from: &BinlogPos,
    gtid: Option<&Gtid>,
) -> Result<Stream> {
    let mut conn = connect(url).await?;
    // MariaDB sends its GTID events only to replicas that say they understand them, and
    // heartbeats (1 s) only when asked.
    for sql in [
        "SET @mariadb_slave_capability = 4",
        "SET @master_heartbeat_period = 1000000000",
        // MySQL 8.0.26+ names (8.4 may read only these); mysql_async sets the old
        // checksum name itself.
        "SET @source_heartbeat_period = 1000000000",
        "SET @source_binlog_checksum = 'ALL'",
    ] {
        conn.query_drop(sql)
            .await
            .map_err(|e| crate::server::my_error("preparing the binlog connection", e))?;
    }
    let mut request = BinlogStreamRequest::new(server_id)
        .with_filename(from.file.as_bytes())
        .with_pos(from.pos);
    if let Some(gtid) = gtid {
        request = from_gtid(&mut conn, mariadb, request, gtid).await?;
    }
    let mut stream = conn.get_binlog_stream(request).await.map_err(|e| {
        Error::transient(format!(
            "cannot open the binlog stream ({}): {e}; check [source] url and REPLICATION \
                 SLAVE",
            redact(url)
        ))
    })?;
    let (tx, rx) = mpsc::channel(1024);
    let resume = match gtid {
        Some(g) => format!("after GTID position {g}"),
        None => format!("{}:{}", from.file, from.pos),
    };
    let mut decoder = Decoder::new(&from.file);
    let lag =
        metrics::gauge!("lakeshore_mysql_binlog_lag_seconds", "server_id" => server_id.to_string());
    let lag_cell = Arc::new(AtomicU64::new(f64::NAN.to_bits()));
    let lag_seen = lag_cell.clone();
    let task = tokio::spawn(async move {
        let mut msgs = Vec::new();
        while let Some(ev) = stream.next().await {
            let decoded = match ev {
                Err(e) => Err(stream_error(e, &resume)),
                Ok(ev) => {
                    if let Some(seconds) = lag_of(&ev.header()) {
                        lag.set(seconds);
                        lag_seen.store(seconds.to_bits(), Ordering::Relaxed);
                    }
                    decoder.decode(&ev, &mut msgs)
                }
            };
            for m in msgs.drain(..) {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            if let Err(e) = decoded {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let _ = tx
            .send(Err(Error::transient("the binlog stream ended")))
            .await;
    });
    Ok(Stream {
        rx,
        task,
        lag: lag_cell,
    })
}

/// Binlog lag in seconds: how old the transaction just read is (its GTID event's write
/// time); 0 on a heartbeat, which the server sends only when nothing is left to read.
fn lag_of(header: &mysql_common::binlog::events::BinlogEventHeader) -> Option<f64> {
    const MYSQL_GTID: u8 = 33;
    match header.event_type_raw() {
        HEARTBEAT => Some(0.0),
        MYSQL_GTID | MARIADB_GTID_EVENT => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            Some((now - header.timestamp() as f64).max(0.0))
        }
        _ => None,
    }
}

/// A stream error; 1236 (the server cannot send from `resume`) needs a new snapshot.
fn stream_error(e: mysql_async::Error, resume: &str) -> Error {
    if let mysql_async::Error::Server(s) = &e
        && s.code == 1236
    {
        return Error::config(format!(
            "the server no longer has the binlog lakeshore must resume from ({resume}), or \
                 never had it (a replica promoted before it received every transaction the \
                 lake has): {}. The changes since the last checkpoint are not on this server; \
                 take a new snapshot under a new pipeline name (and keep binlogs longer: \
                 binlog_expire_logs_seconds)",
            s.message
        ));
    }
    Error::transient(format!("binlog stream: {e}"))
}

/// What decoding the next binlog event needs to know of the ones before it.
struct Decoder {
    /// The binlog file being read (rotations change it).
    file: String,
    /// Whether the format description was seen (rotations before it carry a checksum).
    fde_seen: bool,
    /// Each table id's last table map, with its declared column types.
    maps: TableMaps,
}

impl Decoder {
    fn new(file: &str) -> Decoder {
        Decoder {
            file: file.to_string(),
            fde_seen: false,
            maps: TableMaps::default(),
        }
    }

    /// The messages of one binlog event for the source, in order (none: nothing to say;
    /// several: a compressed transaction); MariaDB's GTID events begin a transaction.
    fn decode(&mut self, ev: &Event, out: &mut Vec<Msg>) -> Result<()> {
        let end = u64::from(ev.header().log_pos());
        let ts = ev.header().timestamp();
        // mysql_async keeps the checksum the server sends (`@master_binlog_checksum`)
        // without checking it.
        if let (Some(sum), Ok(Some(alg))) = (ev.checksum(), ev.footer().get_checksum_alg())
            && alg == BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32
            && ev.calc_checksum(alg) != u32::from_le_bytes(sum)
        {
            return Err(Error::internal(format!(
                "binlog {} at {end}: an event fails its CRC32 checksum (a corrupt binlog file \
                 or connection)",
                self.file
            )));
        }
        if ev.header().event_type_raw() == MARIADB_GTID_EVENT {
            out.push(mariadb_gtid(ev, &self.file, end)?);
            return Ok(());
        }
        // MariaDB's compressed query and rows events (`log_bin_compress`), unknown to
        // `mysql_common`: never skipped, rows are inside.
        if (MARIADB_COMPRESSED_FIRST..=MARIADB_COMPRESSED_LAST)
            .contains(&ev.header().event_type_raw())
        {
            return Err(Error::config(format!(
                "binlog {} at {end}: a compressed event (MariaDB's log_bin_compress = ON), which \
                 lakeshore does not decode; SET GLOBAL log_bin_compress = OFF on the server (and \
                 in its configuration) and start the pipeline under a new name to read the \
                 tables again",
                self.file
            )));
        }
        let data = ev.read_data().map_err(|e| {
            Error::internal(format!(
                "cannot decode a binlog event in {} at {end}: {e}",
                self.file
            ))
        })?;
        if let Some(EventData::TransactionPayloadEvent(payload)) = &data {
            return self.payload(payload, end, ts, out);
        }
        match self.message(data, end, ts)? {
            Some(m) => out.push(m),
            None if end > 0 => out.push(Msg::Advance {
                next: BinlogPos {
                    file: self.file.clone(),
                    pos: end,
                },
                idle: ev.header().event_type_raw() == HEARTBEAT,
            }),
            None => {}
        }
        Ok(())
    }

    /// A compressed transaction (MySQL's `binlog_transaction_compression`): its events,
    /// decompressed, each placed at the payload's end (the whole transaction lies
    /// inside the payload event).
    fn payload(
        &mut self,
        payload: &TransactionPayloadEvent<'_>,
        end: u64,
        ts: u32,
        out: &mut Vec<Msg>,
    ) -> Result<()> {
        let file = self.file.clone();
        let bad = |e: std::io::Error| {
            Error::internal(format!(
                "cannot decode the compressed transaction in binlog {file} at {end}: {e}"
            ))
        };
        let mut input = payload.decompressed().map_err(bad)?;
        let mut reader = EventStreamReader::new(BinlogVersion::Version4);
        while let Some(inner) = reader.read_decompressed(&mut input).map_err(bad)? {
            let data = inner.read_data().map_err(bad)?;
            if let Some(m) = self.message(data, end, ts)? {
                out.push(m);
            }
        }
        Ok(())
    }

    /// The message of one decoded event (`None`: only its position matters).
    fn message(&mut self, data: Option<EventData<'_>>, end: u64, ts: u32) -> Result<Option<Msg>> {
        let Decoder {
            file,
            fde_seen,
            maps,
        } = self;
        let here = |file: &str, pos: u64| BinlogPos {
            file: file.to_string(),
            pos,
        };
        Ok(match data {
            Some(EventData::RotateEvent(r)) => {
                let mut raw = r.name_raw().to_vec();
                // The rotation sent before the format description still carries the 4
                // checksum bytes after the name.
                if !*fde_seen && raw.len() > 4 {
                    raw.truncate(raw.len() - 4);
                }
                let name = String::from_utf8_lossy(&raw).into_owned();
                tracing::debug!(file = %name, pos = r.position(), "binlog rotation");
                *file = name;
                // Table ids are the server's, per file; a table map precedes its rows.
                maps.0.clear();
                Some(Msg::Advance {
                    next: here(file, r.position()),
                    idle: false,
                })
            }
            Some(EventData::FormatDescriptionEvent(_)) => {
                *fde_seen = true;
                None
            }
            Some(EventData::TableMapEvent(tme)) => {
                maps.seen(&tme);
                None
            }
            Some(EventData::QueryEvent(q)) => {
                let sql = q.query();
                let trimmed = sql.trim();
                let mut words = trimmed.split_whitespace().map(str::to_ascii_uppercase);
                let (first, second) = (words.next().unwrap_or_default(), words.next());
                if first == "XA" {
                    return Err(Error::config(format!(
                        "binlog {file} at {end}: an XA transaction ({trimmed:.40}); lakeshore \
                         does not follow XA transactions (their rows are logged at XA PREPARE \
                         and can still be rolled back after). Stop using XA on this server, or \
                         follow it with a tool that applies XA COMMIT / XA ROLLBACK"
                    )));
                }
                // Inside a transaction; the rows it undoes were never logged.
                if first == "SAVEPOINT"
                    || first == "RELEASE"
                    || (first == "ROLLBACK" && second.as_deref() == Some("TO"))
                {
                    return Ok(None);
                }
                if trimmed.eq_ignore_ascii_case("BEGIN") {
                    Some(Msg::Begin {
                        at: here(file, end.saturating_sub(1)),
                        gtid: None,
                        ts,
                    })
                } else if trimmed.eq_ignore_ascii_case("COMMIT") {
                    Some(Msg::Commit {
                        next: here(file, end),
                    })
                } else {
                    Some(Msg::Statement {
                        db: q.schema().into_owned(),
                        sql: sql.into_owned(),
                        next: here(file, end),
                    })
                }
            }
            // MySQL's GTID event starts a transaction (a `BEGIN` follows for DML); an
            // anonymous one (gtid_mode OFF) says nothing its `BEGIN` does not.
            Some(EventData::GtidEvent(g)) => Some(Msg::Begin {
                at: here(file, end.saturating_sub(1)),
                gtid: Some(mysql_gtid(&g)),
                ts,
            }),
            Some(EventData::XidEvent(_)) => Some(Msg::Commit {
                next: here(file, end),
            }),
            Some(EventData::RowsEvent(RowsEventData::PartialUpdateRowsEvent(_))) => {
                return Err(Error::config(format!(
                    "binlog {file} at {end}: a JSON partial update (MySQL's \
                     binlog_row_value_options = PARTIAL_JSON), which lakeshore does not \
                     decode; set binlog_row_value_options = '' on the server (SET GLOBAL and in \
                     its configuration) and start the pipeline under a new name to read the \
                     tables again"
                )));
            }
            Some(EventData::RowsEvent(rows)) => Some(rows_msg(&rows, file, end, maps)?),
            Some(EventData::TransactionPayloadEvent(_)) => {
                return Err(Error::internal(format!(
                    "binlog {file} at {end}: a compressed transaction inside another"
                )));
            }
            _ => None,
        })
    }
}

/// A development aid (`examples/decode_binlog.rs`): a binlog file as the server writes it
/// (magic, then events) decoded by the live reader's decoder — each message in one line,
/// then the error that stopped it, if any.
#[doc(hidden)]
pub fn decode_file(name: &str, bytes: &[u8]) -> (Vec<String>, Option<String>) {
    let (msgs, error) = decode_all(name, bytes);
    (
        msgs.iter().map(describe).collect(),
        error.map(|e| e.to_string()),
    )
}

/// Every message of a binlog file, in order, and the error that stopped decoding.
pub(crate) fn decode_all(name: &str, bytes: &[u8]) -> (Vec<Msg>, Option<Error>) {
    let mut out = Vec::new();
    let mut file = match mysql_common::binlog::BinlogFile::new(BinlogVersion::Version4, bytes) {
        Ok(f) => f,
        Err(e) => {
            return (
                out,
                Some(Error::internal(format!("not a binlog file: {e}"))),
            );
        }
    };
    let mut decoder = Decoder::new(name);
    loop {
        let ev = match file.next() {
            None => return (out, None),
            Some(Err(e)) => {
                let e = Error::internal(format!("cannot read an event: {e}"));
                return (out, Some(e));
            }
            Some(Ok(ev)) => ev,
        };
        if let Err(e) = decoder.decode(&ev, &mut out) {
            return (out, Some(e));
        }
    }
}

/// One message in one line (rows by count and first image).
fn describe(m: &Msg) -> String {
    match m {
        Msg::Begin { at, gtid, .. } => match gtid {
            Some(g) => format!("begin {g} at {}", at.pos),
            None => format!("begin at {}", at.pos),
        },
        Msg::Rows {
            db,
            table,
            op,
            columns,
            rows,
            ..
        } => {
            let first = rows.first().and_then(|(b, a)| a.as_ref().or(b.as_ref()));
            let values: Vec<String> = first
                .into_iter()
                .flatten()
                .zip(columns.iter())
                .map(|(v, c)| {
                    let text = format!("{c}={}", v.as_sql(false));
                    text.chars().take(40).collect()
                })
                .collect();
            format!(
                "{op:?} {db}.{table}: {} row(s), first: {}",
                rows.len(),
                values.join(" ")
            )
        }
        Msg::Commit { next } => format!("commit, next {}", next.pos),
        Msg::Statement { sql, next, .. } => {
            let sql: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("statement {:.60}, next {}", sql, next.pos)
        }
        Msg::Advance { next, .. } => format!("advance {}:{}", next.file, next.pos),
    }
}

/// MariaDB's GTID event (type 162, unknown to `mysql_common`): a transaction begins.
fn mariadb_gtid(ev: &Event, file: &str, end: u64) -> Result<Msg> {
    let d = ev.data();
    if d.len() < 13 {
        return Err(Error::internal(format!(
            "binlog {file} at {end}: a short MariaDB GTID event"
        )));
    }
    let seq = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
    let domain = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
    let server = ev.header().server_id();
    let start = end.saturating_sub(u64::from(ev.header().event_size()));
    Ok(Msg::Begin {
        at: BinlogPos {
            file: file.to_string(),
            pos: start,
        },
        gtid: Some(TxnGtid::MariaDb {
            domain,
            server,
            seq,
        }),
        ts: ev.header().timestamp(),
    })
}

/// A MySQL transaction's GTID: its source (uuid and tag) and number.
fn mysql_gtid(g: &mysql_common::binlog::events::GtidEvent) -> TxnGtid {
    TxnGtid::MySql {
        source: (g.sid(), g.tag().map(|t| t.as_str().to_string())),
        gno: g.gno(),
    }
}

/// The last table map of each table id and its declared column types: a table map
/// repeats before every transaction's rows, unchanged until the table's definition
/// changes.
#[derive(Default)]
struct TableMaps(HashMap<u64, (TableMapEvent<'static>, Arc<[Declared]>)>);

impl TableMaps {
    fn seen(&mut self, tme: &TableMapEvent<'_>) {
        if self
            .0
            .get(&tme.table_id())
            .is_none_or(|(seen, _)| seen != tme)
        {
            let d: Arc<[Declared]> = declared(tme).into();
            self.0.insert(tme.table_id(), (tme.clone().into_owned(), d));
        }
    }
}

fn rows_msg(rows: &RowsEventData<'_>, file: &str, end: u64, maps: &TableMaps) -> Result<Msg> {
    let (tme, declared) = maps.0.get(&rows.table_id()).ok_or_else(|| {
        Error::internal(format!(
            "binlog {file} at {end}: a row event without its table map"
        ))
    })?;
    let op = match rows {
        RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => RowOp::Insert,
        RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => RowOp::Delete,
        _ => RowOp::Update,
    };
    let bad = |e: String| {
        Error::internal(format!(
            "binlog {file} at {end}, table {}.{}: {e}",
            tme.database_name(),
            tme.table_name()
        ))
    };
    let mut columns: Option<Arc<[String]>> = None;
    let mut out = Vec::new();
    let all = tme.columns_count() as usize;
    for row in rows.rows(tme) {
        let (before, after) = row.map_err(|e| bad(e.to_string()))?;
        // A MINIMAL or NOBLOB row image (the server's setting changed while we run)
        // leaves columns out, which would read as null: refuse rather than guess.
        if [&before, &after]
            .into_iter()
            .flatten()
            .any(|r| r.columns_ref().len() < all)
        {
            return Err(Error::config(format!(
                "binlog {file} at {end}, table {}.{}: a row image without every column \
                     (binlog_row_image is not FULL); set binlog_row_image = FULL on the server \
                     (SET GLOBAL and in its configuration). Changes already logged this way \
                     cannot be read: then start the pipeline under a new name to read the \
                     tables again",
                tme.database_name(),
                tme.table_name()
            )));
        }
        if columns.is_none() {
            let any = before.as_ref().or(after.as_ref());
            if let Some(r) = any {
                columns = Some(
                    r.columns_ref()
                        .iter()
                        .map(|c| c.name_str().into_owned())
                        .collect(),
                );
            }
        }
        let image = |r: Option<mysql_common::binlog::row::BinlogRow>| -> Result<Option<Image>> {
            r.map(|r| {
                r.unwrap()
                    .into_iter()
                    .map(|v| match v {
                        // Through the DOM: values a JSON document took from SQL types
                        // (dates, decimals: "opaque" in MySQL's binary JSON) print as text.
                        BinlogValue::Jsonb(j) => j
                            .parse()
                            .map(|dom| Value::Bytes(crate::types::json_text(&dom).into_bytes()))
                            .map_err(|e| bad(format!("a JSON value: {e}"))),
                        v => Value::try_from(v).map_err(|e| bad(e.to_string())),
                    })
                    .collect()
            })
            .transpose()
        };
        out.push((image(before)?, image(after)?));
    }
    Ok(Msg::Rows {
        db: tme.database_name().into_owned(),
        table: tme.table_name().into_owned(),
        op,
        columns: columns.unwrap_or_else(|| Arc::from(Vec::new())),
        declared: declared.clone(),
        rows: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::binlog::events::GtidEvent;

    #[test]
    fn mysql_gtids_print_as_mysql_does() {
        let sid = [
            0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42,
            0x95, 0x62,
        ];
        let g = GtidEvent::new(sid, 23);
        assert_eq!(
            mysql_gtid(&g).to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:23"
        );
    }
}
