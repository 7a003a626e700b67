//! MySQL's own binlog event kinds — no MySQL server installs here — built byte by byte
//! from MySQL's documented formats (our code, not recorded files) and decoded by the live
//! reader's decoder: GTID and anonymous-GTID transactions, previous-GTIDs, rows events v2
//! with `binlog_row_metadata = FULL`, a compressed transaction (`TRANSACTION_PAYLOAD`,
//! zstd), and a JSON partial update (refused, naming the setting). The GTIDs read advance
//! a GTID position as the source does. Public recordings decoded during development are
//! listed in docs/sources/mysql.md.

use mysql_common::value::Value;

use crate::gtid::{Gtid, TxnGtid};
use crate::stream::{Msg, RowOp, decode_all};

const UUID: [u8; 16] = [
    0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42, 0x95, 0x62,
];
const UUID_TEXT: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
const HEADER: usize = 19;
const TABLE_ID: u64 = 109;

/// Post-header lengths of event types 1..=41, as MySQL 8.0's format description lists
/// them (query 13, rotate 8, table map 8, rows v1 8, rows v2 10, GTID 42, ...).
const POST_HEADER: [u8; 41] = [
    56, 13, 0, 8, 0, 18, 0, 4, 4, 4, 4, 18, 0, 0, 98, 0, 4, 26, 8, 0, 0, 0, 8, 8, 8, 2, 0, 0, 0,
    10, 10, 10, 42, 42, 0, 18, 52, 0, 10, 0, 0,
];

/// Event type codes.
const QUERY: u8 = 2;
const FORMAT_DESCRIPTION: u8 = 15;
const XID: u8 = 16;
const TABLE_MAP: u8 = 19;
const WRITE_ROWS: u8 = 30;
const UPDATE_ROWS: u8 = 31;
const DELETE_ROWS: u8 = 32;
const GTID: u8 = 33;
const ANONYMOUS_GTID: u8 = 34;
const PREVIOUS_GTIDS: u8 = 35;
const PARTIAL_UPDATE_ROWS: u8 = 39;
const TRANSACTION_PAYLOAD: u8 = 40;

fn lenenc(n: u64, out: &mut Vec<u8>) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// One event: the common header (timestamp, type, server id, size, end position, flags),
/// the body, and a CRC32 when `checksum` (events inside a compressed transaction have
/// none, and MySQL writes 0 as their end position).
fn event(kind: u8, body: &[u8], log_pos: u64, checksum: bool) -> Vec<u8> {
    let size = HEADER + body.len() + if checksum { 4 } else { 0 };
    let mut e = Vec::with_capacity(size);
    e.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    e.push(kind);
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(size as u32).to_le_bytes());
    e.extend_from_slice(&(log_pos as u32).to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(body);
    if checksum {
        let crc = crc32fast::hash(&e);
        e.extend_from_slice(&crc.to_le_bytes());
    }
    e
}

/// A binlog file being written: magic, a MySQL 8.0.32 format description (CRC32), then
/// the events appended.
struct Binlog(Vec<u8>);

impl Binlog {
    fn new() -> Binlog {
        let mut b = Binlog(b"\xfebin".to_vec());
        let mut fde = 4u16.to_le_bytes().to_vec();
        let mut version = b"8.0.32".to_vec();
        version.resize(50, 0);
        fde.extend_from_slice(&version);
        fde.extend_from_slice(&0u32.to_le_bytes());
        fde.push(HEADER as u8);
        fde.extend_from_slice(&POST_HEADER);
        fde.push(1); // checksum algorithm: CRC32
        b.push(FORMAT_DESCRIPTION, &fde);
        b
    }

    /// Append an event; returns where the next one starts.
    fn push(&mut self, kind: u8, body: &[u8]) -> u64 {
        let end = (self.0.len() + HEADER + body.len() + 4) as u64;
        let e = event(kind, body, end, true);
        self.0.extend_from_slice(&e);
        end
    }
}

/// MySQL's GTID event (and the anonymous one: sid and number zero): flags, sid, number,
/// logical clock, then 8.0's commit timestamp, transaction length and server version.
fn gtid(sid: [u8; 16], gno: u64) -> Vec<u8> {
    let mut b = vec![1];
    b.extend_from_slice(&sid);
    b.extend_from_slice(&gno.to_le_bytes());
    b.push(2); // logical timestamps follow
    b.extend_from_slice(&gno.saturating_sub(1).to_le_bytes());
    b.extend_from_slice(&gno.to_le_bytes());
    b.extend_from_slice(&1_700_000_000_000_000u64.to_le_bytes()[..7]);
    lenenc(300, &mut b);
    b.extend_from_slice(&80032u32.to_le_bytes());
    b
}

/// The executed set before this file: `UUID:1-6`.
fn previous_gtids() -> Vec<u8> {
    let mut b = 1u64.to_le_bytes().to_vec();
    b.extend_from_slice(&UUID);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&7u64.to_le_bytes()); // exclusive
    b
}

fn query(schema: &str, sql: &str) -> Vec<u8> {
    let mut b = 7u32.to_le_bytes().to_vec(); // thread id
    b.extend_from_slice(&0u32.to_le_bytes()); // execution time
    b.push(schema.len() as u8);
    b.extend_from_slice(&0u16.to_le_bytes()); // error code
    b.extend_from_slice(&0u16.to_le_bytes()); // status variables: none
    b.extend_from_slice(schema.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b
}

fn xid(n: u64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

/// `shop.items (id INT PRIMARY KEY, name VARCHAR(60) utf8mb4, doc JSON, price
/// DECIMAL(10,2))` with `binlog_row_metadata = FULL`: signedness, default charset,
/// column names and primary key.
fn table_map() -> Vec<u8> {
    let mut b = TABLE_ID.to_le_bytes()[..6].to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    for name in ["shop", "items"] {
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(0);
    }
    lenenc(4, &mut b);
    b.extend_from_slice(&[3, 15, 245, 246]); // LONG, VARCHAR, JSON, NEWDECIMAL
    let meta = [240, 0, 4, 10, 2]; // VARCHAR max bytes (u16), JSON length bytes, precision/scale
    lenenc(meta.len() as u64, &mut b);
    b.extend_from_slice(&meta);
    b.push(0b1110); // nullable: name, doc, price
    let field = |kind: u8, value: Vec<u8>, b: &mut Vec<u8>| {
        b.push(kind);
        lenenc(value.len() as u64, b);
        b.extend_from_slice(&value);
    };
    field(1, vec![0], &mut b); // signedness of the numeric columns: all signed
    let mut charset = Vec::new();
    lenenc(255, &mut charset); // utf8mb4_0900_ai_ci, no exceptions
    field(2, charset, &mut b);
    let mut names = Vec::new();
    for n in ["id", "name", "doc", "price"] {
        lenenc(n.len() as u64, &mut names);
        names.extend_from_slice(n.as_bytes());
    }
    field(4, names, &mut b);
    field(8, vec![0], &mut b); // primary key: column 0
    b
}

/// One row image of `shop.items`: a null bitmap, then each non-null value in its binary
/// form (INT little-endian; VARCHAR with a 1-byte length; JSON with a 4-byte length and
/// MySQL's binary JSON; DECIMAL packed).
fn image(id: i32, name: Option<&str>, json_a: Option<u16>, price_cents: Option<u32>) -> Vec<u8> {
    let nulls = (name.is_none() as u8) << 1
        | (json_a.is_none() as u8) << 2
        | (price_cents.is_none() as u8) << 3;
    let mut b = vec![nulls];
    b.extend_from_slice(&id.to_le_bytes());
    if let Some(n) = name {
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
    }
    if let Some(a) = json_a {
        // {"a": <a>}: a small object of one key and an inlined int16.
        let mut doc = vec![0x00];
        doc.extend_from_slice(&1u16.to_le_bytes()); // elements
        doc.extend_from_slice(&12u16.to_le_bytes()); // size
        doc.extend_from_slice(&11u16.to_le_bytes()); // key offset
        doc.extend_from_slice(&1u16.to_le_bytes()); // key length
        doc.push(0x05); // int16, inlined
        doc.extend_from_slice(&a.to_le_bytes());
        doc.push(b'a');
        b.extend_from_slice(&(doc.len() as u32).to_le_bytes());
        b.extend_from_slice(&doc);
    }
    if let Some(c) = price_cents {
        // DECIMAL(10,2): 8 integer digits in 4 bytes, 2 fraction digits in 1, big-endian,
        // the sign bit flipped for non-negative values.
        let mut packed = (c / 100).to_be_bytes().to_vec();
        packed.push((c % 100) as u8);
        packed[0] ^= 0x80;
        b.extend_from_slice(&packed);
    }
    b
}

/// A rows event v2: table id, flags (end of statement), no extra data, the columns
/// present in each image (all: a FULL row image), then the images.
fn rows(kind: u8, images: &[Vec<u8>]) -> Vec<u8> {
    let mut b = TABLE_ID.to_le_bytes()[..6].to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    lenenc(4, &mut b);
    b.push(0x0f);
    if kind == UPDATE_ROWS || kind == PARTIAL_UPDATE_ROWS {
        b.push(0x0f);
    }
    for i in images {
        b.extend_from_slice(i);
    }
    b
}

/// A compressed transaction: its events (without checksums) compressed with zstd, after
/// the payload header's fields (type, length, value; all length-encoded).
fn payload(events: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (kind, body) in events {
        raw.extend_from_slice(&event(*kind, body, 0, false));
    }
    let compressed = zstd::encode_all(&raw[..], 3).expect("zstd");
    let mut b = Vec::new();
    for (field, value) in [
        (1, compressed.len() as u64),
        (2, 0), // zstd
        (3, raw.len() as u64),
    ] {
        let mut v = Vec::new();
        lenenc(value, &mut v);
        lenenc(field, &mut b);
        lenenc(v.len() as u64, &mut b);
        b.extend_from_slice(&v);
    }
    lenenc(0, &mut b); // end of the header
    b.extend_from_slice(&compressed);
    b
}

/// The rows messages of `msgs` as (op, before, after) value lists, and the GTIDs begun.
type Images = (RowOp, Option<Vec<Value>>, Option<Vec<Value>>);

fn rows_and_gtids(msgs: &[Msg]) -> (Vec<Images>, Vec<Option<TxnGtid>>) {
    let (mut rows, mut gtids) = (Vec::new(), Vec::new());
    for m in msgs {
        match m {
            Msg::Rows {
                db,
                table,
                op,
                columns,
                rows: r,
                ..
            } => {
                assert_eq!((db.as_str(), table.as_str()), ("shop", "items"));
                assert_eq!(&columns[..], ["id", "name", "doc", "price"]);
                rows.extend(r.iter().map(|(b, a)| (*op, b.clone(), a.clone())));
            }
            Msg::Begin { gtid, .. } => gtids.push(gtid.clone()),
            _ => {}
        }
    }
    (rows, gtids)
}

fn values(id: i64, name: Option<&str>, doc: Option<&str>, price: Option<&str>) -> Vec<Value> {
    let text = |s: Option<&str>| s.map_or(Value::NULL, |s| Value::Bytes(s.as_bytes().to_vec()));
    vec![Value::Int(id), text(name), text(doc), text(price)]
}

/// A MySQL 8 binlog file: previous-GTIDs, a GTID transaction (two inserts, an update, a
/// delete), an anonymous one, a compressed one, DDL; with where the first transaction
/// and the compressed one end.
fn mysql_8_file() -> (Binlog, u64, u64) {
    let mut log = Binlog::new();
    log.push(PREVIOUS_GTIDS, &previous_gtids());
    // A GTID transaction: insert two rows, update one, delete the other.
    log.push(GTID, &gtid(UUID, 7));
    log.push(QUERY, &query("shop", "BEGIN"));
    log.push(TABLE_MAP, &table_map());
    log.push(
        WRITE_ROWS,
        &rows(
            WRITE_ROWS,
            &[
                image(1, Some("ünï"), Some(1), Some(1234)),
                image(2, None, None, None),
            ],
        ),
    );
    log.push(TABLE_MAP, &table_map());
    log.push(
        UPDATE_ROWS,
        &rows(
            UPDATE_ROWS,
            &[
                image(1, Some("ünï"), Some(1), Some(1234)),
                image(1, Some("x"), Some(300), Some(99_999_999)),
            ],
        ),
    );
    log.push(TABLE_MAP, &table_map());
    log.push(
        DELETE_ROWS,
        &rows(DELETE_ROWS, &[image(2, None, None, None)]),
    );
    let first_end = log.push(XID, &xid(41));
    // gtid_mode OFF: an anonymous transaction.
    log.push(ANONYMOUS_GTID, &gtid([0; 16], 0));
    log.push(QUERY, &query("shop", "BEGIN"));
    log.push(TABLE_MAP, &table_map());
    log.push(
        WRITE_ROWS,
        &rows(WRITE_ROWS, &[image(3, Some("anon"), None, Some(5))]),
    );
    log.push(XID, &xid(42));
    // A compressed transaction (binlog_transaction_compression = ON).
    log.push(GTID, &gtid(UUID, 8));
    let inner = [
        (QUERY, query("shop", "BEGIN")),
        (TABLE_MAP, table_map()),
        (
            WRITE_ROWS,
            rows(WRITE_ROWS, &[image(4, Some("zstd"), Some(4), Some(400))]),
        ),
        (XID, xid(43)),
    ];
    let payload_end = log.push(TRANSACTION_PAYLOAD, &payload(&inner));
    // DDL: a GTID, then the statement.
    log.push(GTID, &gtid(UUID, 9));
    log.push(QUERY, &query("shop", "ALTER TABLE items ADD COLUMN c INT"));

    (log, first_end, payload_end)
}

#[test]
fn mysql_8_transactions_decode_to_their_rows_and_gtids() {
    let (log, first_end, payload_end) = mysql_8_file();
    let (msgs, error) = decode_all("binlog.000001", &log.0);
    assert!(error.is_none(), "{error:?}");
    let (rows, gtids) = rows_and_gtids(&msgs);
    let one = values(1, Some("ünï"), Some(r#"{"a": 1}"#), Some("12.34"));
    let two = values(2, None, None, None);
    assert_eq!(
        rows,
        vec![
            (RowOp::Insert, None, Some(one.clone())),
            (RowOp::Insert, None, Some(two.clone())),
            (
                RowOp::Update,
                Some(one),
                Some(values(
                    1,
                    Some("x"),
                    Some(r#"{"a": 300}"#),
                    Some("999999.99")
                ))
            ),
            (RowOp::Delete, Some(two), None),
            (
                RowOp::Insert,
                None,
                Some(values(3, Some("anon"), None, Some("0.05")))
            ),
            (
                RowOp::Insert,
                None,
                Some(values(4, Some("zstd"), Some(r#"{"a": 4}"#), Some("4.00")))
            ),
        ]
    );
    // GTID events begin their transactions; BEGIN and the anonymous one carry none.
    let mysql = |gno| {
        Some(TxnGtid::MySql {
            source: (UUID, None),
            gno,
        })
    };
    assert_eq!(gtids, vec![mysql(7), None, None, mysql(8), None, mysql(9)]);
    // Commits name where the next transaction starts; the compressed one's, the
    // payload's end.
    let commits: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Commit { next } => Some(next.pos),
            _ => None,
        })
        .collect();
    assert_eq!(commits.first(), Some(&first_end));
    assert_eq!(commits.last(), Some(&payload_end));
    assert!(msgs.iter().any(|m| matches!(
        m,
        Msg::Statement { sql, .. } if sql == "ALTER TABLE items ADD COLUMN c INT"
    )));
    // The position the source keeps: the previous set, then each GTID passed.
    let mut at = Gtid::parse(&format!("{UUID_TEXT}:1-6")).unwrap();
    for g in gtids.iter().flatten() {
        at.add(g);
    }
    assert_eq!(at.to_string(), format!("{UUID_TEXT}:1-9"));
}

#[test]
fn a_json_partial_update_stops_naming_the_setting() {
    let mut log = Binlog::new();
    log.push(GTID, &gtid(UUID, 1));
    log.push(QUERY, &query("shop", "BEGIN"));
    log.push(TABLE_MAP, &table_map());
    log.push(PARTIAL_UPDATE_ROWS, &rows(PARTIAL_UPDATE_ROWS, &[]));
    let (msgs, error) = decode_all("binlog.000002", &log.0);
    let error = error.expect("refused").to_string();
    assert!(
        error.contains("binlog_row_value_options") && error.contains("binlog.000002"),
        "{error}"
    );
    assert!(!msgs.iter().any(|m| matches!(m, Msg::Rows { .. })));
}

#[test]
fn a_corrupt_event_stops_with_its_checksum_error() {
    let mut log = Binlog::new();
    log.push(GTID, &gtid(UUID, 1));
    let at = log.0.len() - 10;
    log.0[at] ^= 0xff;
    let (_, error) = decode_all("binlog.000003", &log.0);
    let error = error.expect("a flipped byte went unnoticed").to_string();
    assert!(error.contains("checksum"), "{error}");
}

#[test]
fn savepoints_stay_inside_their_transaction() {
    let mut log = Binlog::new();
    log.push(GTID, &gtid(UUID, 1));
    log.push(QUERY, &query("shop", "BEGIN"));
    log.push(TABLE_MAP, &table_map());
    log.push(WRITE_ROWS, &rows(WRITE_ROWS, &[image(1, None, None, None)]));
    log.push(QUERY, &query("shop", "SAVEPOINT `s1`"));
    log.push(TABLE_MAP, &table_map());
    log.push(WRITE_ROWS, &rows(WRITE_ROWS, &[image(2, None, None, None)]));
    log.push(QUERY, &query("shop", "ROLLBACK TO `s1`"));
    log.push(QUERY, &query("shop", "RELEASE SAVEPOINT `s1`"));
    let end = log.push(XID, &xid(7));
    let (msgs, error) = decode_all("binlog.000004", &log.0);
    assert!(error.is_none(), "{error:?}");
    // One transaction: no statement or commit before its XID.
    let ends: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Commit { next } | Msg::Statement { next, .. } => Some(next.pos),
            _ => None,
        })
        .collect();
    assert_eq!(ends, vec![end]);
}

#[test]
fn an_xa_transaction_stops_naming_it() {
    let mut log = Binlog::new();
    log.push(GTID, &gtid(UUID, 1));
    log.push(QUERY, &query("shop", "XA START X'78',X'',1"));
    let (_, error) = decode_all("binlog.000005", &log.0);
    let error = error.expect("refused").to_string();
    assert!(error.contains("XA transaction"), "{error}");
}
