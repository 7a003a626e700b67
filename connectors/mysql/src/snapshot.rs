//! Snapshot chunks: key values that order like the server orders them, and one chunk read
//! either in a consistent-snapshot transaction that also yields the exact binlog position
//! the read saw (MariaDB's `binlog_snapshot_file` / `binlog_snapshot_position`), or
//! between two watermark rows written to a table of the user's choosing (DBLog; any
//! server, MySQL 8 included).

use std::cmp::Ordering;

use lakeshore_api::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row};
use mysql_common::value::Value;
use serde::{Deserialize, Serialize};

use crate::BinlogPos;
use crate::discover::{MyTable, quote_ident};
use crate::server::my_error;
use crate::types::Kind;

/// One key column's value, in a form that orders as the server orders it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyValue {
    /// Integers, and decimals scaled by their column's scale.
    Int(i128),
    /// Dates and times: microseconds since the epoch.
    Micros(i64),
    /// Binary strings and `_bin`-collated text: byte order.
    Bytes(Vec<u8>),
}

/// A row's key, in key order.
pub type Key = Vec<KeyValue>;

/// The key value of `v` in a column of `kind`.
pub fn key_value(kind: &Kind, v: &Value) -> Option<KeyValue> {
    Some(match (kind, v) {
        (Kind::Decimal(_, scale), Value::Bytes(b)) => {
            KeyValue::Int(crate::types::decimal(std::str::from_utf8(b).ok()?, *scale)?)
        }
        (Kind::Decimal(_, scale), Value::Int(i)) => {
            KeyValue::Int(*i as i128 * 10i128.pow(*scale as u32))
        }
        (Kind::Date | Kind::DateTime | Kind::Timestamp, v) => {
            KeyValue::Micros(crate::types::micros(v).ok()??)
        }
        (Kind::Int24, Value::Int(i)) if *i >= 1 << 23 => KeyValue::Int(*i as i128 - (1 << 24)),
        (_, Value::Int(i)) => KeyValue::Int(*i as i128),
        (_, Value::UInt(u)) => KeyValue::Int(*u as i128),
        (Kind::Int32 | Kind::Int24 | Kind::Int64 | Kind::UInt64, Value::Bytes(b)) => {
            KeyValue::Int(std::str::from_utf8(b).ok()?.parse().ok()?)
        }
        (_, Value::Bytes(b)) => KeyValue::Bytes(b.clone()),
        _ => return None,
    })
}

/// The value to bind for a key value of a column of `kind`.
fn bind(kind: &Kind, k: &KeyValue) -> Value {
    match (kind, k) {
        (Kind::Decimal(_, scale), KeyValue::Int(n)) => {
            Value::Bytes(crate::types::format_decimal(*n, *scale).into_bytes())
        }
        (_, KeyValue::Int(n)) => match i64::try_from(*n) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(*n as u64),
        },
        (_, KeyValue::Micros(us)) => crate::types::date_value(*us),
        (_, KeyValue::Bytes(b)) => Value::Bytes(b.clone()),
    }
}

/// Compare two keys of the same table.
pub fn compare_keys(a: &[KeyValue], b: &[KeyValue]) -> Ordering {
    a.cmp(b)
}

/// What a chunk read returned.
pub struct ChunkRead {
    /// The rows, as the binary protocol returned them.
    pub rows: Vec<Vec<Value>>,
    /// The key of the last row, if any.
    pub last: Option<Key>,
    /// Fewer rows than the limit: the table is read to its end.
    pub complete: bool,
    /// Where the read lies in the binlog.
    pub seen: Seen,
}

/// Where a chunk's read lies in the binlog.
#[derive(Debug, Clone)]
pub enum Seen {
    /// Exactly at this position: the read saw every transaction before it, none after.
    At(BinlogPos),
    /// Between two watermark rows: it saw every transaction before the `low` one, none
    /// after the `high` one, and any of those between them. The `high` row is in the
    /// binlog before `upper` (the server's position once it was written).
    Between {
        low: String,
        high: String,
        upper: BinlogPos,
    },
    /// Nowhere: no binlog is followed.
    Unplaced,
}

/// How chunks are placed in the binlog.
#[derive(Debug, Clone)]
pub enum Placement {
    /// No binlog to place chunks in (`startup = "snapshot-only"`): each chunk is one
    /// `SELECT` (a consistent read of its own), on any server, with `SELECT` alone.
    Unplaced,
    /// A consistent snapshot that reports its binlog position (MariaDB, Percona).
    SnapshotPosition,
    /// Between watermark rows written to `table` (quoted `db`.`t`) in the row of
    /// `reader`; each read takes the next marks `{run}-L{n}` / `{run}-H{n}`.
    Watermarks {
        table: String,
        reader: String,
        run: String,
    },
}

impl Placement {
    /// The low and high marks of the next read, counting it in `reads` (none without
    /// watermarks).
    pub fn next_marks(&self, reads: &mut u64) -> Option<(String, String)> {
        *reads += 1;
        let n = *reads;
        match self {
            Placement::Unplaced | Placement::SnapshotPosition => None,
            Placement::Watermarks { run, .. } => {
                Some((format!("{run}-L{n}"), format!("{run}-H{n}")))
            }
        }
    }
}

/// Write `mark` into the watermark table (its own transaction, so it lands in the binlog
/// in commit order with the transactions around it).
async fn watermark(conn: &mut Conn, table: &str, reader: &str, mark: &str) -> Result<()> {
    conn.exec_drop(
        format!(
            "INSERT INTO {table} (reader, mark) VALUES (?, ?) ON DUPLICATE KEY UPDATE mark = ?"
        ),
        (reader, mark, mark),
    )
    .await
    .map_err(|e| {
        my_error(
            &format!(
                "writing a snapshot watermark into {table} (it needs the columns reader \
                 VARCHAR(64) PRIMARY KEY and mark VARCHAR(64), and the user SELECT, INSERT and UPDATE on \
                 it; [source] snapshot_watermarks)"
            ),
            e,
        )
    })
}

/// Whether the watermark table `db`.`t` exists.
pub async fn watermarks_exist(conn: &mut Conn, db: &str, t: &str) -> Result<bool> {
    let exists: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, t),
        )
        .await
        .map_err(|e| my_error("looking for the snapshot watermark table", e))?;
    Ok(exists.is_some())
}

/// Create the watermark table `db`.`t` if it is absent (asked first: a `CREATE TABLE IF
/// NOT EXISTS` is logged even when the table exists).
pub async fn create_watermarks(conn: &mut Conn, db: &str, t: &str) -> Result<()> {
    if watermarks_exist(conn, db, t).await? {
        return Ok(());
    }
    let table = format!("{}.{}", quote_ident(db), quote_ident(t));
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} (reader VARCHAR(64) NOT NULL PRIMARY KEY, \
         mark VARCHAR(64) NOT NULL, written_at TIMESTAMP(6) NOT NULL DEFAULT \
         CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)) COMMENT 'lakeshore snapshot \
         watermarks: safe to drop when no pipeline snapshots'"
    );
    conn.query_drop(sql).await.map_err(|e| {
        my_error(
            &format!(
                "creating the snapshot watermark table {table} ([source] snapshot_watermarks: its \
                 database must exist and the user needs CREATE, SELECT, INSERT and UPDATE on it)"
            ),
            e,
        )
    })
}

/// `SELECT` of the chunk after `after` (the whole table from the start when `None`).
fn chunk_sql(table: &MyTable, after: Option<&Key>, limit: usize) -> String {
    // latin1 text as its bytes, as the binlog carries it (one decoder for both).
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::Text { latin1: true } => format!("CAST({} AS BINARY)", quote_ident(&c.name)),
            // A SET as its bit mask, as the binlog carries it.
            Kind::Set(_) => format!("{} + 0", quote_ident(&c.name)),
            // UUID / INET in their binary forms, as the binlog carries them.
            Kind::Uuid | Kind::Inet6 => format!("CAST({} AS BINARY(16))", quote_ident(&c.name)),
            Kind::Inet4 => format!("CAST({} AS BINARY(4))", quote_ident(&c.name)),
            _ => quote_ident(&c.name),
        })
        .collect();
    let keys: Vec<String> = table
        .key
        .iter()
        .map(|&k| quote_ident(&table.columns[k].name))
        .collect();
    // (a, b) > (?, ?) spelled out, so the server uses the primary key's range.
    let filter = match after {
        None => String::new(),
        Some(_) => {
            let mut ors = Vec::new();
            for i in 0..keys.len() {
                let mut ands: Vec<String> = keys[..i].iter().map(|k| format!("{k} = ?")).collect();
                ands.push(format!("{} > ?", keys[i]));
                ors.push(format!("({})", ands.join(" AND ")));
            }
            format!(" WHERE {}", ors.join(" OR "))
        }
    };
    format!(
        "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
        cols.join(", "),
        table.quoted(),
        keys.join(", ")
    )
}

fn params(table: &MyTable, after: Option<&Key>) -> Params {
    let Some(after) = after else {
        return Params::Empty;
    };
    let mut out = Vec::new();
    for i in 0..table.key.len() {
        for (&k, v) in table.key.iter().zip(after).take(i + 1) {
            out.push(bind(&table.columns[k].kind, v));
        }
    }
    Params::Positional(out)
}

/// Read the chunk after `after`, placed in the binlog as `placement` says (`marks`: the
/// low and high watermarks of this read, for [`Placement::Watermarks`]).
pub async fn read_chunk(
    conn: &mut Conn,
    table: &MyTable,
    after: Option<&Key>,
    limit: usize,
    placement: &Placement,
    marks: Option<(String, String)>,
) -> Result<ChunkRead> {
    let sql = chunk_sql(table, after, limit);
    let select = |rows: mysql_async::Result<Vec<Row>>| {
        rows.map_err(|e| my_error(&format!("reading a chunk of {}", table.name), e))
    };
    let (result, seen) = match (placement, marks) {
        (
            Placement::Watermarks {
                table: wm, reader, ..
            },
            Some((low, high)),
        ) => {
            watermark(conn, wm, reader, &low).await?;
            // One statement: its consistent read starts after the low mark committed.
            let rows = select(conn.exec(sql.as_str(), params(table, after)).await)?;
            watermark(conn, wm, reader, &high).await?;
            let upper = crate::master_position(conn).await?;
            (rows, Seen::Between { low, high, upper })
        }
        (Placement::Unplaced, _) => (
            select(conn.exec(sql.as_str(), params(table, after)).await)?,
            Seen::Unplaced,
        ),
        _ => {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(|e| my_error("starting a snapshot chunk", e))?;
            let seen = snapshot_position(conn).await?;
            let rows = select(conn.exec(sql.as_str(), params(table, after)).await)?;
            conn.query_drop("COMMIT")
                .await
                .map_err(|e| my_error("ending a snapshot chunk", e))?;
            (rows, Seen::At(seen))
        }
    };
    let complete = result.len() < limit;
    let rows: Vec<Vec<Value>> = result.into_iter().map(|r| r.unwrap()).collect();
    let last = match rows.last() {
        Some(row) => Some(key_of(table, row).ok_or_else(|| {
            Error::internal(format!(
                "table {}: cannot read the key of a row",
                table.name
            ))
        })?),
        None => None,
    };
    Ok(ChunkRead {
        rows,
        last,
        complete,
        seen,
    })
}

/// The binlog position of the open consistent snapshot (MariaDB, Percona).
async fn snapshot_position(conn: &mut Conn) -> Result<BinlogPos> {
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(|e| my_error("reading the snapshot's binlog position", e))?;
    let get = |name: &str| {
        status
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
        (Some(file), Some(pos)) if !file.is_empty() => Ok(BinlogPos {
            file,
            pos: pos.parse().unwrap_or(4),
        }),
        _ => Err(Error::unsupported(
            "the server does not report binlog_snapshot_file / binlog_snapshot_position \
             (MariaDB and Percona Server do; MySQL does not), which lakeshore's lock-free \
             snapshot reads by default. On MySQL, give lakeshore a table to write its \
             snapshot watermarks in: [source] snapshot_watermarks = \"<db>.lakeshore_watermarks\" \
             (created if absent; docs/sources/mysql.md)",
        )),
    }
}

/// The key of a full row.
pub fn key_of(table: &MyTable, row: &[Value]) -> Option<Key> {
    table
        .key
        .iter()
        .map(|&k| key_value(&table.columns[k].kind, row.get(k)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_like_the_server() {
        let a = vec![KeyValue::Int(-5), KeyValue::Bytes(b"b".to_vec())];
        let b = vec![KeyValue::Int(-5), KeyValue::Bytes(b"ba".to_vec())];
        let c = vec![KeyValue::Int(3), KeyValue::Bytes(b"a".to_vec())];
        assert!(compare_keys(&a, &b).is_lt() && compare_keys(&b, &c).is_lt());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), a);
        let dec = key_value(&Kind::Decimal(10, 2), &Value::Bytes(b"-1.5".to_vec()));
        assert_eq!(dec, Some(KeyValue::Int(-150)));
    }
}
