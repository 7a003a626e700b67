//! A chunk read between two watermarks (DBLog), held until the binlog reaches its high
//! watermark.
//!
//! The read saw every transaction logged before its low watermark and none logged after
//! its high one; of those in between it may have seen any. While the binlog is between
//! the two, each change to a key the chunk covers is applied to the chunk's rows instead
//! of being emitted: the binlog carries whole row images, so a row is set to its new
//! image (or removed) whether or not the read saw that change. At the high watermark the
//! rows are exactly the table's rows as of that point in the binlog, and are emitted as
//! the chunk.

use std::collections::HashMap;

use mysql_common::value::Value;

use crate::discover::MyTable;
use crate::snapshot::{ChunkRead, Key, compare_keys, key_of};

/// A chunk waiting for its high watermark.
pub(crate) struct Held {
    /// The key the chunk starts after (`None`: the table's start).
    pub from: Option<Key>,
    pub read: ChunkRead,
    pub low: String,
    pub high: String,
    /// The binlog has passed the low watermark: changes to the chunk's keys are applied
    /// to its rows (and a checkpoint must wait for the high one).
    pub open: bool,
    /// The row of each key, built at the first change applied. A removed row is left
    /// empty (every real row has a column).
    index: Option<HashMap<Key, usize>>,
}

impl Held {
    pub fn new(from: Option<Key>, read: ChunkRead, low: String, high: String) -> Self {
        Held {
            from,
            read,
            low,
            high,
            open: false,
            index: None,
        }
    }

    /// `key` is in the chunk's range.
    pub fn covers(&self, key: &Key) -> bool {
        self.from
            .as_ref()
            .is_none_or(|f| compare_keys(key, f).is_gt())
            && (self.read.complete
                || self
                    .read
                    .last
                    .as_ref()
                    .is_none_or(|l| compare_keys(key, l).is_le()))
    }

    /// Set the row of `key` to `row`, or remove it (`None`).
    pub fn apply(&mut self, table: &MyTable, key: Key, row: Option<Vec<Value>>) {
        let rows = &mut self.read.rows;
        let index = self.index.get_or_insert_with(|| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| Some((key_of(table, r)?, i)))
                .collect()
        });
        match (index.get(&key), row) {
            (Some(&i), row) => rows[i] = row.unwrap_or_default(),
            (None, Some(row)) => {
                index.insert(key, rows.len());
                rows.push(row);
            }
            (None, None) => {}
        }
    }

    /// The chunk's rows as of the high watermark.
    pub fn into_rows(self) -> (Vec<Vec<Value>>, ChunkRead) {
        let mut read = self.read;
        let rows = std::mem::take(&mut read.rows)
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect();
        (rows, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{KeyValue, Seen};
    use crate::types::Kind;

    fn table() -> MyTable {
        let kinds = [("id", Kind::Int64), ("v", Kind::Text { latin1: false })];
        let pairs: Vec<(String, Kind)> = kinds
            .iter()
            .map(|(n, k)| (n.to_string(), k.clone()))
            .collect();
        let key = vec!["id".to_string()];
        MyTable {
            name: "d.t".into(),
            db: "d".into(),
            table: "t".into(),
            columns: kinds
                .iter()
                .map(|(n, k)| crate::discover::MyColumn {
                    name: n.to_string(),
                    column_type: String::new(),
                    kind: k.clone(),
                })
                .collect(),
            key: vec![0],
            schema: lakeshore_api::TableSchema {
                name: "d.t".into(),
                schema: crate::types::arrow_schema(&pairs, &key),
                key,
            },
            filter: Default::default(),
            all_columns: None,
        }
    }

    fn row(id: i64, v: &str) -> Vec<Value> {
        vec![Value::Int(id), Value::Bytes(v.as_bytes().to_vec())]
    }

    fn key(id: i64) -> Key {
        vec![KeyValue::Int(i128::from(id))]
    }

    #[test]
    fn changes_between_the_watermarks_set_or_remove_rows() {
        let read = ChunkRead {
            rows: vec![row(11, "a"), row(12, "b"), row(13, "c")],
            last: Some(key(13)),
            complete: false,
            seen: Seen::Between {
                low: "L".into(),
                high: "H".into(),
                upper: crate::BinlogPos {
                    file: "b.000001".into(),
                    pos: 4,
                },
            },
        };
        let mut held = Held::new(Some(key(10)), read, "L".into(), "H".into());
        let t = table();
        assert!(held.covers(&key(11)) && held.covers(&key(13)));
        assert!(!held.covers(&key(10)) && !held.covers(&key(14)));
        // Seen by the read or not, the row ends as the binlog's last image of it.
        held.apply(&t, key(12), Some(row(12, "b2")));
        held.apply(&t, key(11), None);
        held.apply(&t, key(13), None);
        held.apply(&t, key(13), Some(row(13, "c3")));
        held.apply(&t, key(12), Some(row(12, "b3")));
        // Inserted between the marks (the read may have missed it); removed again.
        held.apply(&t, key(12), None);
        held.apply(&t, key(12), Some(row(12, "b4")));
        held.apply(&t, key(11), None);
        let (rows, read) = held.into_rows();
        assert_eq!(rows, vec![row(12, "b4"), row(13, "c3")]);
        assert_eq!(read.last, Some(key(13)));
    }
}
