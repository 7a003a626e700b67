//! Snapshot chunks: `COPY (SELECT ... WHERE key > last ORDER BY key LIMIT n) TO STDOUT`
//! inside a REPEATABLE READ transaction whose visibility (`pg_current_snapshot()`) is
//! recorded, so the stream can tell which transactions the chunk already contains.
//! No table lock is taken; a chunk holds one short read-only transaction.
//!
//! The scheduling of chunks is here too: which table is read next, the chunks read
//! ahead on other connections, and the re-read of a chunk until it covers every
//! transaction the stream dropped for it.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::StreamExt;
use lakeshore_api::read_ahead::Covering;
use lakeshore_api::{ChangeBatch, Error, Result, SourceEvent};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::discover::{KeyOrder, PgTable, quote_ident, quote_literal};
use crate::server::current_wal_lsn;
use crate::types::{Kind, RowsBuilder};
use crate::{Progress, Window};

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
    // Binary COPY; types whose binary form is not their text read through their output
    // function (`format('%s', ..)`), exactly as pgoutput prints them in the stream.
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(&c.name);
            if c.raw {
                q
            } else {
                format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END")
            }
        })
        .collect();
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
        "COPY (SELECT {} FROM {}{} ORDER BY {} LIMIT {}) TO STDOUT (FORMAT binary)",
        cols.join(", "),
        table.quoted(),
        filter,
        keys.join(", "),
        limit
    )
}

/// Read one chunk in its own REPEATABLE READ transaction.
/// How chunks are read.
#[derive(Debug, Clone)]
pub struct ChunkSpec {
    /// Rows per chunk.
    pub limit: usize,
    /// Rows per Arrow batch.
    pub batch_rows: usize,
    /// Read every chunk in this exported snapshot (`startup = "snapshot-only"`), so the
    /// whole table is one point in time.
    pub exported: Option<String>,
}

/// The chunk reads the columns (and types) known to the source; a column added, dropped
/// or retyped since, which the stream has not told us about yet, would be read wrongly,
/// so the read starts over (the restart sees the new shape).
async fn same_columns(tx: &tokio_postgres::Transaction<'_>, table: &PgTable) -> Result<()> {
    let now = tx
        .query_one(
            "SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}'), \
                    coalesce(array_agg(format_type(atttypid, atttypmod) ORDER BY attnum), '{}') \
             FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&table.quoted()],
        )
        .await
        .map_err(|e| Error::transient("PostgreSQL snapshot: reading the columns").with_source(e))?;
    let (names, types): (Vec<String>, Vec<String>) = (now.get(0), now.get(1));
    // The columns the pipeline reads, as it described them.
    let (names, types): (Vec<String>, Vec<String>) = names
        .into_iter()
        .zip(types)
        .filter(|(n, _)| table.reads(n))
        .unzip();
    if names.len() != table.columns.len()
        || names
            .iter()
            .zip(&types)
            .zip(&table.columns)
            .any(|((n, ty), c)| *n != c.name || *ty != c.type_name)
    {
        return Err(Error::transient(format!(
            "the columns of {} changed during its snapshot; restarting to read the new ones",
            table.name
        )));
    }
    Ok(())
}

pub async fn read_chunk(
    client: &mut Client,
    table: &PgTable,
    after: Option<&[String]>,
    spec: &ChunkSpec,
) -> Result<ChunkRead> {
    let (limit, batch_rows) = (spec.limit, spec.batch_rows);
    let pg = |what: &'static str| {
        move |e: tokio_postgres::Error| {
            Error::transient(format!("PostgreSQL snapshot: {what}")).with_source(e)
        }
    };
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("begin"))?;
    if let Some(id) = &spec.exported {
        tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(id)))
            .await
            .map_err(pg("SET TRANSACTION SNAPSHOT"))?;
    }
    let snap: String = tx
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .map_err(pg("pg_current_snapshot()"))?
        .get(0);
    same_columns(&tx, table).await?;
    let visibility = Visibility::parse(&snap)
        .ok_or_else(|| Error::internal(format!("unexpected snapshot text {snap:?}")))?;
    let sql = chunk_sql(table, after, limit);
    let stream = tx.copy_out(sql.as_str()).await.map_err(|e| {
        Error::transient(format!(
            "PostgreSQL snapshot of {}: reading a chunk",
            table.name
        ))
        .with_source(e)
    })?;
    let mut stream = std::pin::pin!(stream);
    let mut builder = RowsBuilder::new(table.schema.schema.clone(), &table.kinds(), batch_rows);
    let mut parser = CopyBinaryParser::default();
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut last: Option<Key> = None;
    let kinds = table.kinds();
    while let Some(data) = stream.next().await {
        let data = data.map_err(pg("COPY"))?;
        parser.feed(&data, |fields| {
            if fields.len() != table.columns.len() {
                return Err(Error::internal(format!(
                    "COPY of {} returned {} columns",
                    table.name,
                    fields.len()
                )));
            }
            for (i, f) in fields.iter().enumerate() {
                match f {
                    None => builder.append_null(i),
                    Some(v) => builder.append_binary(i, v).map_err(|m| {
                        Error::unsupported(format!(
                            "table {}, column {}: {m}",
                            table.name, table.columns[i].name
                        ))
                    })?,
                }
            }
            builder.end_row();
            rows += 1;
            if rows == limit {
                last = Some(
                    table
                        .key
                        .iter()
                        .map(|&k| key_text(kinds[k], fields[k].unwrap_or_default()))
                        .collect(),
                );
            }
            Ok(())
        })?;
        if builder.len() >= batch_rows {
            batches.push(builder.finish()?);
        }
    }
    if !builder.is_empty() {
        batches.push(builder.finish()?);
    }
    builder.report_nulled(&table.name, &table.column_names());
    tx.commit().await.map_err(pg("commit"))?;
    Ok(ChunkRead {
        batches,
        rows,
        last,
        complete: rows < limit,
        visibility,
    })
}

/// The text form of a key column's binary value, as chunk bounds and stream keys use it.
fn key_text(kind: Kind, v: &[u8]) -> String {
    match (kind, v.len()) {
        (Kind::Int32 | Kind::Int64, 2) => i16::from_be_bytes([v[0], v[1]]).to_string(),
        (Kind::Int32, 4) => i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
        (Kind::Int64, 4) => u32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
        (Kind::Int64, 8) => i64::from_be_bytes(v.try_into().unwrap_or_default()).to_string(),
        (Kind::Bytea, _) => {
            let mut s = String::from("\\x");
            for b in v {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
        _ => String::from_utf8_lossy(v).into_owned(),
    }
}

/// Splits `COPY ... TO STDOUT (FORMAT binary)` output into rows of fields (`None` = NULL).
#[derive(Default)]
pub struct CopyBinaryParser {
    partial: Vec<u8>,
    header_done: bool,
    fields: Vec<Option<(usize, usize)>>,
}

/// The 11-byte signature, then flags and header-extension length (both i32).
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl CopyBinaryParser {
    /// Feed bytes; `row` is called once per complete tuple.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut row: impl FnMut(&[Option<&[u8]>]) -> Result<()>,
    ) -> Result<()> {
        let owned;
        let buf: &[u8] = if self.partial.is_empty() {
            data
        } else {
            self.partial.extend_from_slice(data);
            owned = std::mem::take(&mut self.partial);
            &owned
        };
        let bad = || Error::internal("malformed binary COPY data");
        let mut at = 0;
        if !self.header_done {
            if buf.len() < SIGNATURE.len() + 8 {
                self.partial = buf.to_vec();
                return Ok(());
            }
            if &buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(bad());
            }
            let ext = u32::from_be_bytes(buf[15..19].try_into().map_err(|_| bad())?) as usize;
            if buf.len() < 19 + ext {
                self.partial = buf.to_vec();
                return Ok(());
            }
            at = 19 + ext;
            self.header_done = true;
        }
        let mut values: Vec<Option<&[u8]>> = Vec::new();
        // One tuple: i16 field count (-1 = trailer), then per field i32 length + bytes.
        while let Some(count) = buf.get(at..at + 2) {
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count < 0 {
                at = buf.len();
                break;
            }
            let mut p = at + 2;
            self.fields.clear();
            let mut complete = true;
            for _ in 0..count {
                let Some(len) = buf.get(p..p + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                p += 4;
                if len < 0 {
                    self.fields.push(None);
                    continue;
                }
                let end = p + len as usize;
                if end > buf.len() {
                    complete = false;
                    break;
                }
                self.fields.push(Some((p, end)));
                p = end;
            }
            if !complete {
                break;
            }
            values.clear();
            values.extend(self.fields.iter().map(|f| f.map(|(a, b)| &buf[a..b])));
            row(&values)?;
            at = p;
        }
        self.partial = buf[at..].to_vec();
        Ok(())
    }
}

impl crate::PostgresSource {
    pub(crate) fn progress_of(&self, t: usize) -> Option<&Progress> {
        self.position.tables.get(&self.tables[t].name)
    }

    /// The next table with rows left to read; prefers one whose read-ahead is ready.
    pub(crate) fn next_chunk_table(&self) -> Option<usize> {
        self.ahead.next_table(self.tables.len(), |t| {
            self.progress_of(t) != Some(&Progress::Done) && !self.failed.contains(&t)
        })
    }

    /// Start reading ahead the next chunk of every unfinished table that has none in
    /// flight, while idle connections last.
    pub(crate) fn start_prefetches(&mut self) {
        let (tables, spec) = (&self.tables, &self.chunks);
        let after = |t: usize| match self.position.tables.get(&tables[t].name) {
            _ if self.failed.contains(&t) => None,
            Some(Progress::Done) => None,
            Some(Progress::After(k)) => Some(Some(k.clone())),
            None => Some(None),
        };
        self.ahead.start(tables.len(), after, |t, mut client, key| {
            let (table, spec) = (tables[t].clone(), spec.clone());
            async move {
                let read = read_chunk(&mut client, &table, key.as_deref(), &spec).await;
                (client, read)
            }
        });
    }

    /// Read the next chunk of table `t` and queue its rows.
    pub(crate) async fn read_chunk(&mut self, t: usize) -> Result<()> {
        let table = self.tables[t].clone();
        let after = match self.progress_of(t) {
            Some(Progress::After(k)) => Some(k.clone()),
            _ => None,
        };
        if after.is_none() {
            self.out
                .push_back(SourceEvent::SnapshotStarted(table.name.clone()));
        }
        let mut ahead = self.ahead.take(t, after.as_ref(), |_| true).await?;
        let mut covering = Covering::default();
        let read = loop {
            let read = match ahead.take() {
                Some(read) => read,
                None => {
                    read_chunk(&mut self.client, &table, after.as_deref(), &self.chunks).await?
                }
            };
            // Every transaction dropped as not-yet-read must be in this read.
            if self.dropped[t].iter().all(|x| read.visibility.sees(*x)) {
                break read;
            }
            covering
                .again(|| {
                    format!(
                        "snapshot of {}: a transaction the stream delivered stayed invisible \
                         to the snapshot",
                        table.name
                    )
                })
                .await?;
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
            self.out.push_back(SourceEvent::Batch(ChangeBatch::snapshot(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_copy_rows_split_anywhere() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&0u32.to_be_bytes());
        for (id, text) in [(1i64, Some("a")), (2, None)] {
            data.extend_from_slice(&2i16.to_be_bytes());
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&id.to_be_bytes());
            match text {
                Some(t) => {
                    data.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    data.extend_from_slice(t.as_bytes());
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        for cut in [1, 5, 20, 30, data.len() - 1] {
            let mut p = CopyBinaryParser::default();
            let mut rows = Vec::new();
            for part in [&data[..cut], &data[cut..]] {
                p.feed(part, |f| {
                    rows.push((
                        key_text(Kind::Int64, f[0].unwrap()),
                        f[1].map(|v| String::from_utf8(v.to_vec()).unwrap()),
                    ));
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(
                rows,
                vec![("1".into(), Some("a".into())), ("2".into(), None)]
            );
        }
        assert_eq!(key_text(Kind::Bytea, &[0, 255]), "\\x00ff");
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
