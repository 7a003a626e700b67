//! GTID positions of both server flavours — MariaDB's last GTID per replication domain,
//! MySQL's executed set — read from the server beside a binlog position, advanced by
//! every transaction the stream passes, kept in each checkpoint beside the binlog file
//! and offset, and used to resume where those mean nothing: on another server after a
//! failover, or over binlogs that were purged or rewritten.

use std::collections::BTreeMap;
use std::fmt;

use lakeshore_api::{Error, Result};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use mysql_common::packets::{GnoInterval, Sid, Tag};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::server::my_error;
use crate::{BinlogPos, Position};

/// A MySQL source id: the server's uuid and the GTID's tag (MySQL 8.3+), if any.
pub type SourceId = ([u8; 16], Option<String>);

/// One transaction's GTID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnGtid {
    /// MariaDB's `domain-server-sequence`.
    MariaDb { domain: u32, server: u32, seq: u64 },
    /// MySQL's `uuid[:tag]:number`.
    MySql { source: SourceId, gno: u64 },
}

impl fmt::Display for TxnGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnGtid::MariaDb {
                domain,
                server,
                seq,
            } => write!(f, "{domain}-{server}-{seq}"),
            TxnGtid::MySql {
                source: (uuid, tag),
                gno,
            } => {
                write_uuid(f, uuid)?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                write!(f, ":{gno}")
            }
        }
    }
}

/// A GTID position: the transactions a binlog position comes after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtid {
    /// MariaDB: the last GTID of each domain, domain → (server id, sequence number).
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: the executed set, source → disjoint ascending intervals `[start, end)`.
    MySql(BTreeMap<SourceId, Vec<(u64, u64)>>),
}

impl Gtid {
    /// Either flavour from text (a startup setting); `None` when it is neither, or empty.
    pub fn parse(s: &str) -> Option<Gtid> {
        if s.trim().is_empty() {
            return None;
        }
        parse_mariadb(s).or_else(|| parse_mysql(s))
    }

    /// A server's GTID variable: empty is a position too (no transaction yet).
    fn parse_as(s: &str, mariadb: bool) -> Option<Gtid> {
        if s.trim().is_empty() {
            return Some(if mariadb {
                Gtid::MariaDb(BTreeMap::new())
            } else {
                Gtid::MySql(BTreeMap::new())
            });
        }
        if mariadb {
            parse_mariadb(s)
        } else {
            parse_mysql(s)
        }
    }

    pub fn is_mariadb(&self) -> bool {
        matches!(self, Gtid::MariaDb(_))
    }

    /// The position after transaction `t` too (a GTID of the other flavour changes
    /// nothing).
    pub fn add(&mut self, t: &TxnGtid) {
        match (self, t) {
            (
                Gtid::MariaDb(domains),
                TxnGtid::MariaDb {
                    domain,
                    server,
                    seq,
                },
            ) => {
                domains.insert(*domain, (*server, *seq));
            }
            (Gtid::MySql(sources), TxnGtid::MySql { source, gno }) => {
                // No clone of the source per transaction.
                if let Some(intervals) = sources.get_mut(source) {
                    insert(intervals, *gno, *gno + 1);
                } else {
                    sources.insert(source.clone(), vec![(*gno, *gno + 1)]);
                }
            }
            _ => {}
        }
    }

    /// Every transaction of `other` too (of the same flavour).
    pub fn union(&mut self, other: &Gtid) {
        match (self, other) {
            (Gtid::MariaDb(ours), Gtid::MariaDb(theirs)) => {
                for (d, (server, seq)) in theirs {
                    if ours.get(d).is_none_or(|(_, s)| s < seq) {
                        ours.insert(*d, (*server, *seq));
                    }
                }
            }
            (Gtid::MySql(ours), Gtid::MySql(theirs)) => {
                for (source, intervals) in theirs {
                    let mine = ours.entry(source.clone()).or_default();
                    for &(start, end) in intervals {
                        insert(mine, start, end);
                    }
                }
            }
            _ => {}
        }
    }

    /// The executed set as `COM_BINLOG_DUMP_GTID` takes it (MySQL).
    pub fn sids(&self) -> Vec<Sid<'static>> {
        let Gtid::MySql(sources) = self else {
            return Vec::new();
        };
        sources
            .iter()
            .map(|((uuid, tag), intervals)| {
                let sid = Sid::new(*uuid).with_intervals(
                    intervals
                        .iter()
                        .map(|&(s, e)| GnoInterval::new(s, e))
                        .collect(),
                );
                match tag.clone().and_then(|t| Tag::new(t).ok()) {
                    Some(tag) => sid.with_tag(tag),
                    None => sid,
                }
            })
            .collect()
    }
}

/// Add `[start, end)` to disjoint, ascending, non-touching intervals, merging what it
/// overlaps or touches.
fn insert(intervals: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    // The common case: the next transactions of the source.
    match intervals.last_mut() {
        Some(last) if last.0 <= start && start <= last.1 => {
            last.1 = last.1.max(end);
            return;
        }
        Some(last) if last.1 < start => {
            intervals.push((start, end));
            return;
        }
        Some(_) => {}
        None => {
            intervals.push((start, end));
            return;
        }
    }
    // Intervals i..j overlap or touch it.
    let i = intervals.partition_point(|&(_, e)| e < start);
    let j = intervals.partition_point(|&(s, _)| s <= end);
    if i >= j {
        intervals.insert(i, (start, end));
    } else {
        let merged = (start.min(intervals[i].0), end.max(intervals[j - 1].1));
        intervals.splice(i..j, [merged]);
    }
}

fn parse_mariadb(s: &str) -> Option<Gtid> {
    let mut domains = BTreeMap::new();
    for one in s.split(',').map(str::trim) {
        let mut nums = one.split('-');
        let (Some(d), Some(server), Some(seq), None) =
            (nums.next(), nums.next(), nums.next(), nums.next())
        else {
            return None;
        };
        let (d, server, seq) = (d.parse().ok()?, server.parse().ok()?, seq.parse().ok()?);
        // One GTID per domain: the last one is the position.
        if domains.insert(d, (server, seq)).is_some() {
            return None;
        }
    }
    Some(Gtid::MariaDb(domains))
}

/// MySQL's text form: `uuid(:tag|:n|:n-m)+` per server, comma-separated (the server
/// breaks lines after the commas); a tag applies to the intervals after it.
fn parse_mysql(s: &str) -> Option<Gtid> {
    let mut sources: BTreeMap<SourceId, Vec<(u64, u64)>> = BTreeMap::new();
    for one in s.split(',').map(str::trim) {
        let mut parts = one.split(':');
        let uuid = parse_uuid(parts.next()?)?;
        let mut tag = None;
        let mut any = false;
        for part in parts {
            if part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                let t = part.to_ascii_lowercase();
                Tag::new(t.clone()).ok()?;
                tag = Some(t);
                continue;
            }
            let (start, end) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
                None => {
                    let n = part.parse::<u64>().ok()?;
                    (n, n)
                }
            };
            if start == 0 || end < start {
                return None;
            }
            insert(
                sources.entry((uuid, tag.clone())).or_default(),
                start,
                end + 1,
            );
            any = true;
        }
        if !any {
            return None;
        }
    }
    Some(Gtid::MySql(sources))
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn write_uuid(f: &mut fmt::Formatter<'_>, uuid: &[u8; 16]) -> fmt::Result {
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for Gtid {
    /// As the server prints it: `0-1-100,1-2-5`, or `uuid:1-5:7,uuid:tag:1-3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb(domains) => {
                for (i, (d, (server, seq))) in domains.iter().enumerate() {
                    let sep = if i > 0 { "," } else { "" };
                    write!(f, "{sep}{d}-{server}-{seq}")?;
                }
            }
            Gtid::MySql(sources) => {
                let mut previous: Option<&[u8; 16]> = None;
                for ((uuid, tag), intervals) in sources {
                    if previous != Some(uuid) {
                        if previous.is_some() {
                            f.write_str(",")?;
                        }
                        write_uuid(f, uuid)?;
                        previous = Some(uuid);
                    }
                    if let Some(tag) = tag {
                        write!(f, ":{tag}")?;
                    }
                    for &(start, end) in intervals {
                        if end == start + 1 {
                            write!(f, ":{start}")?;
                        } else {
                            write!(f, ":{start}-{}", end - 1)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// In checkpoints: `{"mariadb": "0-1-100"}` or `{"mysql": "uuid:1-5"}` (an empty
/// position is a position of one flavour).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Text {
    MariaDb(String),
    MySql(String),
}

impl Serialize for Gtid {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Gtid::MariaDb(_) => Text::MariaDb(self.to_string()),
            Gtid::MySql(_) => Text::MySql(self.to_string()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Gtid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (text, mariadb) = match Text::deserialize(d)? {
            Text::MariaDb(t) => (t, true),
            Text::MySql(t) => (t, false),
        };
        Gtid::parse_as(&text, mariadb)
            .ok_or_else(|| serde::de::Error::custom(format!("not a GTID position: {text:?}")))
    }
}

/// Whether the server is MariaDB (its GTIDs are domain-server-sequence).
pub(crate) async fn is_mariadb(conn: &mut Conn) -> Result<bool> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| my_error("reading the version", e))?;
    Ok(version.unwrap_or_default().contains("MariaDB"))
}

/// MariaDB's GTID position at binlog position `at` (`None`: the server has no such
/// file, or `at` is not a transaction boundary in it).
async fn mariadb_at(conn: &mut Conn, at: &BinlogPos) -> Result<Option<Gtid>> {
    let pos: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (&at.file, at.pos))
        .await
        .map_err(|e| my_error("reading the GTID position of a binlog position", e))?;
    Ok(pos.flatten().and_then(|p| Gtid::parse_as(&p, true)))
}

/// The GTID position and server identity to record with `p.binlog`, the server's
/// current binlog position: MariaDB's from its binlog; MySQL's `executed` set (from the
/// same `SHOW MASTER STATUS` row) when `gtid_mode` is on, and its `server_uuid`.
///
/// MySQL reads that set before the position, and adds a transaction's GTID to it only
/// after writing the transaction to the binlog: one committing at that instant can be in
/// the position and not in the set. So the set is read again, then the position: every
/// GTID of the second set is either before `p.binlog` or delivered by the stream before
/// that second position (`Position::settling`), where the set takes them all.
pub(crate) async fn at_start(
    conn: &mut Conn,
    mariadb: bool,
    p: &mut Position,
    executed: Option<String>,
) -> Result<()> {
    if mariadb {
        p.gtids = mariadb_at(conn, &p.binlog).await?;
        return Ok(());
    }
    let mode: Option<String> = conn
        .query_first("SELECT @@GLOBAL.gtid_mode")
        .await
        .map_err(|e| my_error("reading gtid_mode", e))?;
    p.server = server_uuid(conn).await?;
    if !mode.is_some_and(|m| m.eq_ignore_ascii_case("ON")) {
        return Ok(());
    }
    p.gtids = executed.and_then(|e| Gtid::parse_as(&e, false));
    let again: Option<String> = conn
        .query_first("SELECT @@GLOBAL.gtid_executed")
        .await
        .map_err(|e| my_error("reading gtid_executed", e))?;
    let until = crate::master_position(conn).await?;
    if let Some(again) = again.and_then(|e| Gtid::parse_as(&e, false))
        && p.gtids.as_ref() != Some(&again)
    {
        p.settling = Some((until, again));
    }
    Ok(())
}

/// How a pipeline resumes at `p`: by its binlog file and offset when they are this
/// server's and mean what they meant (`None`), else by its GTID position (returned;
/// `p.binlog` is then emptied until the stream's first transaction names a position).
/// Stops where neither holds, naming the fix.
pub(crate) async fn resume(
    conn: &mut Conn,
    mariadb: bool,
    p: &mut Position,
) -> Result<Option<Gtid>> {
    let Some(gtids) = p.gtids.clone() else {
        return resume_without_gtids(conn, mariadb, p).await;
    };
    if gtids.is_mariadb() != mariadb {
        return Err(other_flavour(p));
    }
    let uuid = if mariadb {
        None
    } else {
        server_uuid(conn).await?
    };
    if p.binlog.file.is_empty() {
        // A GTID start (or resumption) that has not passed a transaction yet.
        p.server = uuid;
        return Ok(Some(gtids));
    }
    let reason = if mariadb {
        match mariadb_at(conn, &p.binlog).await? {
            Some(here) if here == gtids => None,
            Some(here) => Some(format!(
                "this server's GTID position at {}:{} is {here}, the checkpoint's {gtids}",
                p.binlog.file, p.binlog.pos
            )),
            None if !has_file(conn, &p.binlog.file).await? => {
                Some(format!("this server has no {}", p.binlog.file))
            }
            None => Some(format!(
                "no transaction starts at {}:{} on this server",
                p.binlog.file, p.binlog.pos
            )),
        }
    } else if uuid != p.server {
        Some(format!(
            "the checkpoint's binlog is server {}'s, this is server {}",
            p.server.as_deref().unwrap_or("?"),
            uuid.as_deref().unwrap_or("?")
        ))
    } else if !has_file(conn, &p.binlog.file).await? {
        Some(format!("this server no longer has {}", p.binlog.file))
    } else {
        None
    };
    // Also when file and offset are the server's: a server reset (RESET MASTER) can
    // have written a file of the same name since.
    if let Some(missing) = missing_here(conn, &gtids).await? {
        return Err(Error::config(format!(
            "this server lacks transactions the lake already has ({missing}) — a replica \
             promoted before it received them, a server whose binlog was reset, or another \
             server's history{}. Point [source] url at a server that has them, or take a new \
             snapshot under a new pipeline name",
            reason
                .as_deref()
                .map(|r| format!(
                    "; the checkpoint's binlog file and offset are not this server's ({r})"
                ))
                .unwrap_or_default()
        )));
    }
    let Some(reason) = reason else {
        return Ok(None);
    };
    tracing::warn!(
        checkpoint = %format!("{}:{}", p.binlog.file, p.binlog.pos),
        gtid = %gtids,
        "the checkpoint's binlog file and offset are not this server's ({reason}: another \
         server after a failover, or purged or rewritten binlogs); resuming by GTID"
    );
    p.binlog = BinlogPos::unnamed();
    p.server = uuid;
    // Its position is the old server's; what it still waits for may be a transaction
    // applied twice, never one lost.
    p.settling = None;
    Ok(Some(gtids))
}

pub(crate) async fn server_uuid(conn: &mut Conn) -> Result<Option<String>> {
    conn.query_first("SELECT @@server_uuid")
        .await
        .map_err(|e| my_error("reading server_uuid", e))
}

/// What of `gtids` the server has not executed (`None`: it has everything).
async fn missing_here(conn: &mut Conn, gtids: &Gtid) -> Result<Option<String>> {
    Ok(match gtids {
        Gtid::MariaDb(ours) => {
            let pos: Option<String> = conn
                .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
                .await
                .map_err(|e| my_error("reading gtid_binlog_pos", e))?;
            let theirs = match Gtid::parse_as(&pos.unwrap_or_default(), true) {
                Some(Gtid::MariaDb(t)) => t,
                _ => BTreeMap::new(),
            };
            let behind: Vec<String> = ours
                .iter()
                .filter(|(d, (_, seq))| theirs.get(d).is_none_or(|(_, s)| s < seq))
                .map(|(d, (server, seq))| {
                    let here = theirs
                        .get(d)
                        .map_or("none".to_string(), |(s, n)| format!("{d}-{s}-{n}"));
                    format!("domain {d}: the lake is at {d}-{server}-{seq}, this server at {here}")
                })
                .collect();
            (!behind.is_empty()).then(|| behind.join("; "))
        }
        Gtid::MySql(_) => {
            let subset: Option<i64> = conn
                .exec_first(
                    "SELECT GTID_SUBSET(?, @@GLOBAL.gtid_executed)",
                    (gtids.to_string(),),
                )
                .await
                .map_err(|e| my_error("comparing GTID sets", e))?;
            (subset != Some(1)).then(|| format!("the lake has {gtids}, not all executed here"))
        }
    })
}

/// A checkpoint without a GTID position (written before lakeshore kept one, or MySQL
/// without `gtid_mode`): by file and offset, on the same server only.
async fn resume_without_gtids(
    conn: &mut Conn,
    mariadb: bool,
    p: &mut Position,
) -> Result<Option<Gtid>> {
    if p.binlog.file.is_empty() {
        // A GTID start not passed yet, from before `gtids` (its GTID was kept as `gtid`).
        let g = p
            .last_gtid
            .as_deref()
            .and_then(Gtid::parse)
            .ok_or_else(|| {
                Error::internal("the checkpoint has neither a binlog position nor a GTID position")
            })?;
        p.gtids = Some(g.clone());
        return Ok(Some(g));
    }
    if mariadb {
        // Checkpoints written before GTID positions were kept: this server's position
        // there, from now on.
        p.gtids = mariadb_at(conn, &p.binlog).await?;
        return Ok(None);
    }
    let uuid = server_uuid(conn).await?;
    if p.server.is_some() && uuid != p.server {
        return Err(Error::config(format!(
            "the checkpoint's binlog position is server {}'s and this is server {} (a \
             failover?); without GTIDs (gtid_mode = ON when the pipeline started) a binlog \
             position means nothing on another server. Point [source] url at the old \
             server, or start the pipeline under a new name to read the tables again (and \
             set gtid_mode = ON and enforce_gtid_consistency = ON first)",
            p.server.as_deref().unwrap_or("?"),
            uuid.as_deref().unwrap_or("?"),
        )));
    }
    p.server = uuid;
    Ok(None)
}

fn other_flavour(p: &Position) -> Error {
    Error::config(format!(
        "the checkpoint was written reading a {} server and this is not one; a pipeline \
         cannot move between MariaDB and MySQL. Point [source] url at the old server, or \
         start the pipeline under a new name",
        if p.gtids.as_ref().is_some_and(Gtid::is_mariadb) {
            "MariaDB"
        } else {
            "MySQL"
        }
    ))
}

async fn has_file(conn: &mut Conn, file: &str) -> Result<bool> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| my_error("listing the binlog files", e))?;
    Ok(rows
        .iter()
        .any(|r| r.get::<String, _>(0).as_deref() == Some(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4e11fa47-71ca-11e1-9e33-c80aa9429562";

    #[test]
    fn positions_of_both_flavours_parse_and_print_as_the_server_does() {
        let m = Gtid::parse("0-1-100, 1-2-5").unwrap();
        assert!(m.is_mariadb());
        assert_eq!(m.to_string(), "0-1-100,1-2-5");
        let text = format!("{},\n{B}:1", A.to_uppercase() + ":1-5:7");
        let my = Gtid::parse(&text).unwrap();
        assert_eq!(my.to_string(), format!("{A}:1-5:7,{B}:1"));
        let sids = my.sids();
        assert_eq!(sids.len(), 2);
        // Intervals are half-open on the wire: 1-5 is [1, 6).
        let first: Vec<(u64, u64)> = sids[0]
            .intervals()
            .iter()
            .map(|i| (i.start(), i.end()))
            .collect();
        assert_eq!(first, vec![(1, 6), (7, 8)]);
        assert_eq!(sids[0].to_string(), format!("{A}:1-5:7"));
        // Tagged GTIDs (MySQL 8.3+): the untagged intervals, then each tag's.
        let tagged = Gtid::parse(&format!("{A}:1-3:Batch:1-2:7")).unwrap();
        assert_eq!(tagged.to_string(), format!("{A}:1-3:batch:1-2:7"));
        assert_eq!(tagged.sids()[1].to_string(), format!("{A}:batch:1-2:7"));
        for bad in [
            "",
            "zero",
            "0-1",
            "0-1-x",
            "0-1-5,0-2-6",
            "3e11fa47:1-5",
            "0-1-100,uuid:1",
            &format!("{A}:0"),
            &format!("{A}:5-3"),
            A,
        ] {
            assert_eq!(Gtid::parse(bad), None, "{bad}");
        }
        // A server's empty position is a position of its flavour.
        assert_eq!(
            Gtid::parse_as("", true),
            Some(Gtid::MariaDb(BTreeMap::new()))
        );
    }

    #[test]
    fn transactions_advance_the_position() {
        let mut m = Gtid::parse("0-1-100,1-2-5").unwrap();
        m.add(&TxnGtid::MariaDb {
            domain: 0,
            server: 2,
            seq: 101,
        });
        m.add(&TxnGtid::MariaDb {
            domain: 9,
            server: 2,
            seq: 1,
        });
        assert_eq!(m.to_string(), "0-2-101,1-2-5,9-2-1");

        let mut my = Gtid::parse(&format!("{A}:1-5:7-9")).unwrap();
        let uuid = parse_uuid(A).unwrap();
        let add = |g: &mut Gtid, gno| {
            g.add(&TxnGtid::MySql {
                source: (uuid, None),
                gno,
            })
        };
        add(&mut my, 6); // fills the gap: one interval
        assert_eq!(my.to_string(), format!("{A}:1-9"));
        add(&mut my, 10);
        add(&mut my, 12);
        add(&mut my, 3); // already in
        assert_eq!(my.to_string(), format!("{A}:1-10:12"));
        add(&mut my, 11);
        assert_eq!(my.to_string(), format!("{A}:1-12"));
        let mut gaps = Gtid::parse(&format!("{A}:5:9")).unwrap();
        for gno in [1, 4, 10, 7] {
            add(&mut gaps, gno);
        }
        assert_eq!(gaps.to_string(), format!("{A}:1:4-5:7:9-10"));
        my.add(&TxnGtid::MySql {
            source: (parse_uuid(B).unwrap(), Some("t".into())),
            gno: 1,
        });
        assert_eq!(my.to_string(), format!("{A}:1-12,{B}:t:1"));
        // Overlapping ranges in the text merge.
        let merged = Gtid::parse(&format!("{A}:1-5:3-8:10-12:9")).unwrap();
        assert_eq!(merged.to_string(), format!("{A}:1-12"));
    }

    #[test]
    fn sets_unite() {
        let mut a = Gtid::parse(&format!("{A}:1-5:9")).unwrap();
        a.union(&Gtid::parse(&format!("{A}:4-7,{B}:1-2")).unwrap());
        assert_eq!(a.to_string(), format!("{A}:1-7:9,{B}:1-2"));
        let mut m = Gtid::parse("0-1-5,1-1-9").unwrap();
        m.union(&Gtid::parse("0-1-7,1-1-3,2-1-1").unwrap());
        assert_eq!(m.to_string(), "0-1-7,1-1-9,2-1-1");
    }

    #[test]
    fn checkpoints_keep_the_flavour_of_an_empty_position() {
        for g in [
            Gtid::parse_as("", true).unwrap(),
            Gtid::parse_as("", false).unwrap(),
            Gtid::parse("0-1-3").unwrap(),
            Gtid::parse(&format!("{A}:1-3")).unwrap(),
        ] {
            let json = serde_json::to_string(&g).unwrap();
            let back: Gtid = serde_json::from_str(&json).unwrap();
            assert_eq!(back, g, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Gtid::parse("0-1-3").unwrap()).unwrap(),
            r#"{"mariadb":"0-1-3"}"#
        );
    }

    #[test]
    fn a_transaction_gtid_prints_as_the_server_does() {
        let uuid = parse_uuid(A).unwrap();
        let t = TxnGtid::MySql {
            source: (uuid, Some("batch".into())),
            gno: 7,
        };
        assert_eq!(t.to_string(), format!("{A}:batch:7"));
        let m = TxnGtid::MariaDb {
            domain: 0,
            server: 1,
            seq: 9,
        };
        assert_eq!(m.to_string(), "0-1-9");
    }
}
