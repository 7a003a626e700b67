//! Snapshot chunks: `COPY (SELECT ... WHERE key > last ORDER BY key LIMIT n) TO STDOUT`
//! inside a REPEATABLE READ transaction whose visibility (`pg_current_snapshot()`) is
//! recorded, so the stream can tell which transactions the chunk already contains.
//! No table lock is taken; a chunk holds one short read-only transaction.

use std::cmp::Ordering;

use arrow_array::RecordBatch;
use futures::StreamExt;
use lakeshore_api::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::discover::{KeyOrder, PgTable, quote_ident, quote_literal};
use crate::types::RowsBuilder;

/// A key as the text of its columns, in key order.
pub type Key = Vec<String>;

/// Compare two keys the way the chunk queries order them.
pub fn compare_keys(table: &PgTable, a: &[String], b: &[String]) -> Ordering {
    for (i, col) in table.key.iter().enumerate() {
        let ord = match table.columns[*col].order {
            Some(KeyOrder::Int) => match (a[i].parse::<i64>(), b[i].parse::<i64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => a[i].cmp(&b[i]),
            },
            _ => a[i].as_bytes().cmp(b[i].as_bytes()),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Which transactions a chunk's read saw: PostgreSQL's `pg_snapshot` (`xmin:xmax:xip,...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visibility {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Visibility {
    /// Parse `pg_current_snapshot()::text`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(Visibility { xmin, xmax, xip })
    }

    /// Whether the committed transaction `xid` (32-bit, as pgoutput sends it) was visible.
    pub fn sees(&self, xid: u32) -> bool {
        let full = widen_xid(xid, self.xmax);
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// A 32-bit xid as a 64-bit one, in the epoch of `reference` (a recent 64-bit xid).
fn widen_xid(xid: u32, reference: u64) -> u64 {
    // The 64-bit xid with these low bits nearest to `reference` (xids in use are within
    // 2^31 of each other).
    let epoch = reference >> 32;
    let candidate = (epoch << 32) | xid as u64;
    if candidate > reference.saturating_add(1 << 31) && epoch > 0 {
        candidate - (1 << 32)
    } else if candidate.saturating_add(1 << 31) < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

/// The rows of one chunk, and what the read saw.
pub struct ChunkRead {
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// Key of the chunk's last row; `None` when the chunk was empty.
    pub last: Option<Key>,
    /// Fewer rows than asked for: the table's snapshot is complete.
    pub complete: bool,
    pub visibility: Visibility,
}

/// The chunk query: rows after `after` in key order, at most `limit`.
pub fn chunk_sql(table: &PgTable, after: Option<&[String]>, limit: usize) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let key_expr = |i: usize| {
        let c = &table.columns[table.key[i]];
        match c.order {
            Some(KeyOrder::Bytes) => format!("{} COLLATE \"C\"", quote_ident(&c.name)),
            _ => quote_ident(&c.name),
        }
    };
    let keys: Vec<String> = (0..table.key.len()).map(key_expr).collect();
    let filter = match after {
        None => String::new(),
        Some(after) => {
            let lits: Vec<String> = after.iter().map(|v| quote_literal(v)).collect();
            format!(" WHERE ({}) > ({})", keys.join(", "), lits.join(", "))
        }
    };
    format!(
        "COPY (SELECT {} FROM {}{} ORDER BY {} LIMIT {}) TO STDOUT",
        cols.join(", "),
        table.quoted(),
        filter,
        keys.join(", "),
        limit
    )
}

/// Read one chunk in its own REPEATABLE READ transaction.
pub async fn read_chunk(
    client: &mut Client,
    table: &PgTable,
    after: Option<&[String]>,
    limit: usize,
    batch_rows: usize,
) -> Result<ChunkRead> {
    let pg = |what: &'static str| {
        move |e: tokio_postgres::Error| {
            Error::new(ErrorKind::Transient, format!("PostgreSQL snapshot: {what}")).with_source(e)
        }
    };
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("begin"))?;
    let snap: String = tx
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .map_err(pg("pg_current_snapshot()"))?
        .get(0);
    // The chunk selects the columns known when the pipeline started; a column added or
    // dropped since would be read wrongly, so start over (the restart sees the new shape).
    let now: Vec<String> = tx
        .query_one(
            "SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&table.quoted()],
        )
        .await
        .map_err(pg("reading the columns"))?
        .get(0);
    if now.len() != table.columns.len() || now.iter().zip(&table.columns).any(|(a, c)| *a != c.name)
    {
        return Err(Error::new(
            ErrorKind::Transient,
            format!(
                "the columns of {} changed during its snapshot; restarting to read the new ones",
                table.name
            ),
        ));
    }
    let visibility = Visibility::parse(&snap).ok_or_else(|| {
        Error::new(
            ErrorKind::Internal,
            format!("unexpected snapshot text {snap:?}"),
        )
    })?;
    let sql = chunk_sql(table, after, limit);
    let stream = tx.copy_out(sql.as_str()).await.map_err(|e| {
        Error::new(
            ErrorKind::Transient,
            format!("PostgreSQL snapshot of {}: reading a chunk", table.name),
        )
        .with_source(e)
    })?;
    let mut stream = std::pin::pin!(stream);
    let kinds = table.kinds();
    let mut builder = RowsBuilder::new(table.schema.schema.clone(), &kinds, batch_rows);
    let mut parser = CopyTextParser::default();
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut last: Option<Key> = None;
    while let Some(data) = stream.next().await {
        let data = data.map_err(pg("COPY"))?;
        parser.feed(&data, |fields| {
            for (i, f) in fields.iter().enumerate() {
                let col = builder.column(i);
                match f {
                    None => col.append_null(),
                    Some(v) => col.append_text(v).map_err(|m| {
                        Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "table {}, column {}: {m}",
                                table.name, table.columns[i].name
                            ),
                        )
                    })?,
                }
            }
            builder.end_row();
            rows += 1;
            last = Some(
                table
                    .key
                    .iter()
                    .map(|k| fields[*k].clone().unwrap_or_default())
                    .collect(),
            );
            Ok(())
        })?;
        if builder.len() >= batch_rows {
            batches.push(builder.finish()?);
        }
    }
    if !builder.is_empty() {
        batches.push(builder.finish()?);
    }
    tx.commit().await.map_err(pg("commit"))?;
    Ok(ChunkRead {
        batches,
        rows,
        last,
        complete: rows < limit,
        visibility,
    })
}

/// Splits `COPY ... TO STDOUT` text output into rows of unescaped fields.
#[derive(Default)]
pub struct CopyTextParser {
    partial: Vec<u8>,
}

impl CopyTextParser {
    /// Feed bytes; `row` is called once per complete line.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut row: impl FnMut(&[Option<String>]) -> Result<()>,
    ) -> Result<()> {
        let mut rest = data;
        let mut fields: Vec<Option<String>> = Vec::new();
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let line = if self.partial.is_empty() {
                &rest[..nl]
            } else {
                self.partial.extend_from_slice(&rest[..nl]);
                &self.partial[..]
            };
            fields.clear();
            for raw in line.split(|b| *b == b'\t') {
                fields.push(unescape(raw)?);
            }
            self.partial.clear();
            row(&fields)?;
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }
}

fn unescape(raw: &[u8]) -> Result<Option<String>> {
    if raw == b"\\N" {
        return Ok(None);
    }
    let bad = || Error::new(ErrorKind::Internal, "COPY output is not UTF-8");
    if !raw.contains(&b'\\') {
        return Ok(Some(String::from_utf8(raw.to_vec()).map_err(|_| bad())?));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 == raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(Some(String::from_utf8(out).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_rows_split_across_messages() {
        let mut p = CopyTextParser::default();
        let mut rows = Vec::new();
        p.feed(b"1\ta\\tb\t\\N\n2\tx", |f| {
            rows.push(f.to_vec());
            Ok(())
        })
        .unwrap();
        p.feed(b"y\\\\z\t\\101\n", |f| {
            rows.push(f.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("a\tb".into()), None],
                vec![Some("2".into()), Some("xy\\z".into()), Some("A".into())],
            ]
        );
    }

    #[test]
    fn visibility_of_xids() {
        let v = Visibility::parse("100:105:101,103").unwrap();
        assert!(v.sees(99));
        assert!(v.sees(100) && v.sees(102) && v.sees(104));
        assert!(!v.sees(101) && !v.sees(103) && !v.sees(105) && !v.sees(200));
        let wrapped = Visibility::parse("4294967290:4294967300:").unwrap();
        assert!(wrapped.sees(u32::MAX - 1));
        assert!(wrapped.sees(3)); // 4294967299 in the next epoch
        assert!(!wrapped.sees(4));
        // A snapshot just before the epoch ends; xid 3 of the next epoch started later.
        let before = Visibility::parse("4294967280:4294967291:").unwrap();
        assert!(!before.sees(3));
        assert!(before.sees(u32::MAX - 20));
        assert_eq!(Visibility::parse("5:5:").unwrap().xip, Vec::<u64>::new());
    }
}
