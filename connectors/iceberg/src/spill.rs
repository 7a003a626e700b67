//! The open checkpoint's key index on local disk, for checkpoints that touch more keys
//! than memory should hold.
//!
//! A checkpoint cannot fall inside a source transaction, so one `UPDATE` of 10M rows is
//! one checkpoint. Its upsert writer must still know, per key, whether the key's first
//! change in the checkpoint replaces a committed row (a lookup at `prepare`) and which
//! of the rows it wrote were superseded later in the checkpoint (position deletes into
//! its own files). When the in-memory index grows past its budget it is sorted by key and
//! written here as a *run*; at `prepare` the runs are merged in key order, which yields
//! both answers key by key with one record per run in memory.
//!
//! Runs live in anonymous files in the system's temporary directory (`TMPDIR`): they are
//! unlinked as soon as they are created, so a crash leaves nothing behind.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use lakeshore_api::{Error, Result};

use crate::lookup::{Key, KeySet};
use crate::writer::RowLocation;

/// State of a key within the open checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Its live row is at this location of a file of the checkpoint.
    Live(RowLocation),
    /// Its last change in the checkpoint removed it.
    Deleted,
}

/// One key of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    key: Key,
    /// The key's first change in the run replaces a committed row.
    lookup: bool,
    state: KeyState,
}

/// What the whole checkpoint did to one key, merged over the runs.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// The encoded key.
    pub key: Key,
    /// Its first change in the checkpoint replaces a committed row: look it up.
    pub lookup: bool,
    /// Rows of the checkpoint's own files that later changes of the key superseded.
    pub superseded: Vec<RowLocation>,
}

/// Runs of the open checkpoint's key index, oldest first.
#[derive(Default)]
pub struct Spill {
    runs: Vec<File>,
}

fn spill_error(e: std::io::Error) -> Error {
    Error::transient(format!(
        "cannot spill the upsert key index to {} (set TMPDIR to a writable directory \
             with room for about 40 bytes per row of the largest source transaction)",
        std::env::temp_dir().display()
    ))
    .with_source(e)
}

/// A new file in the temporary directory, already unlinked.
fn anonymous_file() -> std::io::Result<File> {
    let path = std::env::temp_dir().join(format!("lakeshore-spill-{}", uuid::Uuid::new_v4()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

impl Spill {
    /// True when nothing was spilled in this checkpoint.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs written in this checkpoint.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Forget every run (the checkpoint's rows were discarded, e.g. by a truncation).
    pub fn clear(&mut self) {
        self.runs.clear();
    }

    /// Move `index` to a new run, sorted by key; `lookup` holds the keys whose first
    /// change replaces a committed row. Both are left empty.
    pub fn write_run(
        &mut self,
        index: &mut foldhash::HashMap<Key, KeyState>,
        lookup: &mut KeySet,
    ) -> Result<()> {
        let mut records: Vec<Record> = index
            .drain()
            .map(|(key, state)| Record {
                lookup: lookup.contains(&key),
                key,
                state,
            })
            .collect();
        lookup.clear();
        records.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        self.runs
            .push(write_records(&records).map_err(spill_error)?);
        Ok(())
    }

    /// Apply `f` to the keys of every run (after the key encoding changed), keeping each
    /// run sorted.
    pub fn map_keys(&mut self, mut f: impl FnMut(Vec<Key>) -> Result<Vec<Key>>) -> Result<()> {
        for run in &mut self.runs {
            let mut records = Vec::new();
            let mut reader = RunReader::new(run.try_clone().map_err(spill_error)?)?;
            while let Some(r) = reader.next_record().map_err(spill_error)? {
                records.push(r);
            }
            let keys = f(records.iter().map(|r| r.key.clone()).collect())?;
            for (r, k) in records.iter_mut().zip(keys) {
                r.key = k;
            }
            records.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            *run = write_records(&records).map_err(spill_error)?;
        }
        Ok(())
    }

    /// Merge the runs in key order.
    pub fn merge(self) -> Result<Merge> {
        let mut readers = Vec::with_capacity(self.runs.len());
        let mut heap = BinaryHeap::new();
        for (i, run) in self.runs.into_iter().enumerate() {
            let mut reader = RunReader::new(run)?;
            if let Some(r) = reader.next_record().map_err(spill_error)? {
                heap.push(Reverse((r.key.clone(), i)));
                readers.push((reader, Some(r)));
            } else {
                readers.push((reader, None));
            }
        }
        Ok(Merge { readers, heap })
    }
}

fn write_records(records: &[Record]) -> std::io::Result<File> {
    let mut file = anonymous_file()?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &mut file);
        for r in records {
            w.write_all(&(r.key.len() as u32).to_le_bytes())?;
            w.write_all(&r.key)?;
            match r.state {
                KeyState::Live(loc) => {
                    w.write_all(&[r.lookup as u8 | 2])?;
                    w.write_all(&loc.file.to_le_bytes())?;
                    w.write_all(&loc.pos.to_le_bytes())?;
                }
                KeyState::Deleted => w.write_all(&[r.lookup as u8])?,
            }
        }
        w.flush()?;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

struct RunReader {
    r: BufReader<File>,
}

impl RunReader {
    fn new(mut file: File) -> Result<Self> {
        file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
        Ok(RunReader {
            r: BufReader::with_capacity(256 * 1024, file),
        })
    }

    fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut key = Key::from_elem(0, u32::from_le_bytes(len) as usize);
        self.r.read_exact(&mut key)?;
        let mut flags = [0u8; 1];
        self.r.read_exact(&mut flags)?;
        let state = if flags[0] & 2 != 0 {
            let mut file = [0u8; 4];
            let mut pos = [0u8; 8];
            self.r.read_exact(&mut file)?;
            self.r.read_exact(&mut pos)?;
            KeyState::Live(RowLocation {
                file: u32::from_le_bytes(file),
                pos: u64::from_le_bytes(pos),
            })
        } else {
            KeyState::Deleted
        };
        Ok(Some(Record {
            key,
            lookup: flags[0] & 1 != 0,
            state,
        }))
    }
}

/// The runs merged key by key, in key order.
pub struct Merge {
    readers: Vec<(RunReader, Option<Record>)>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
}

impl Merge {
    fn take(&mut self, run: usize) -> Result<Record> {
        let (reader, current) = &mut self.readers[run];
        let record = current
            .take()
            .ok_or_else(|| Error::internal("spill merge lost a record"))?;
        if let Some(next) = reader.next_record().map_err(spill_error)? {
            self.heap.push(Reverse((next.key.clone(), run)));
            *current = Some(next);
        }
        Ok(record)
    }
}

impl Iterator for Merge {
    type Item = Result<Merged>;

    fn next(&mut self) -> Option<Result<Merged>> {
        let Reverse((key, first_run)) = self.heap.pop()?;
        let mut runs = vec![first_run];
        while let Some(Reverse((k, _))) = self.heap.peek()
            && *k == key
        {
            let Some(Reverse((_, run))) = self.heap.pop() else {
                break;
            };
            runs.push(run);
        }
        // Runs are numbered oldest first: the oldest says whether the key's first change
        // replaces a committed row; every live row but the newest one was superseded.
        runs.sort_unstable();
        let mut records = Vec::with_capacity(runs.len());
        for run in runs {
            match self.take(run) {
                Ok(r) => records.push(r),
                Err(e) => return Some(Err(e)),
            }
        }
        let lookup = records[0].lookup;
        let superseded = records[..records.len() - 1]
            .iter()
            .filter_map(|r| match r.state {
                KeyState::Live(loc) => Some(loc),
                KeyState::Deleted => None,
            })
            .collect();
        Some(Ok(Merged {
            key,
            lookup,
            superseded,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: u32) -> Key {
        Key::from_slice(&k.to_be_bytes())
    }

    fn live(file: u32, pos: u64) -> KeyState {
        KeyState::Live(RowLocation { file, pos })
    }

    fn run(spill: &mut Spill, entries: &[(u32, bool, KeyState)]) {
        let mut index = foldhash::HashMap::default();
        let mut lookup = KeySet::default();
        for (k, l, s) in entries {
            index.insert(key(*k), *s);
            if *l {
                lookup.insert(key(*k));
            }
        }
        spill.write_run(&mut index, &mut lookup).unwrap();
        assert!(index.is_empty() && lookup.is_empty());
    }

    #[test]
    fn merge_takes_the_first_lookup_and_supersedes_all_but_the_newest_row() {
        let mut spill = Spill::default();
        // Run 0: key 1 updated (committed row replaced), key 2 inserted, key 3 deleted.
        run(
            &mut spill,
            &[
                (1, true, live(0, 0)),
                (2, false, live(0, 1)),
                (3, true, KeyState::Deleted),
            ],
        );
        // Run 1: key 1 updated again, key 2 deleted, key 4 updated (first sight here).
        run(
            &mut spill,
            &[
                (1, true, live(1, 0)),
                (2, true, KeyState::Deleted),
                (4, true, live(1, 1)),
            ],
        );
        // Run 2: key 1 deleted, key 3 re-inserted.
        run(
            &mut spill,
            &[(1, true, KeyState::Deleted), (3, true, live(2, 0))],
        );
        assert_eq!(spill.runs(), 3);
        let merged: Vec<Merged> = spill.merge().unwrap().map(|m| m.unwrap()).collect();
        let expect = vec![
            Merged {
                key: key(1),
                lookup: true,
                superseded: vec![
                    RowLocation { file: 0, pos: 0 },
                    RowLocation { file: 1, pos: 0 },
                ],
            },
            Merged {
                key: key(2),
                lookup: false,
                superseded: vec![RowLocation { file: 0, pos: 1 }],
            },
            Merged {
                key: key(3),
                lookup: true,
                superseded: vec![],
            },
            Merged {
                key: key(4),
                lookup: true,
                superseded: vec![],
            },
        ];
        assert_eq!(merged, expect);
    }

    #[test]
    fn many_runs_merge_in_key_order_with_long_keys() {
        let mut spill = Spill::default();
        let mut expected = std::collections::BTreeMap::new();
        for r in 0..7u32 {
            let mut index = foldhash::HashMap::default();
            let mut lookup = KeySet::default();
            for i in 0..1000u32 {
                let k = (i * 7919 + r * 13) % 3000;
                let mut long = Key::from_slice(&k.to_be_bytes());
                long.extend_from_slice(&[b'x'; 40]);
                index.insert(long.clone(), live(r, i as u64));
                lookup.insert(long.clone());
                expected.entry(long).or_insert_with(Vec::new).push(r);
            }
            spill.write_run(&mut index, &mut lookup).unwrap();
        }
        let merged: Vec<Merged> = spill.merge().unwrap().map(|m| m.unwrap()).collect();
        assert_eq!(merged.len(), expected.len());
        for (m, (k, runs)) in merged.iter().zip(&expected) {
            assert_eq!(&m.key, k);
            assert_eq!(m.superseded.len(), runs.len() - 1);
            assert!(m.superseded.iter().zip(runs).all(|(s, r)| s.file == *r));
        }
    }

    #[test]
    fn map_keys_reencodes_and_resorts() {
        let mut spill = Spill::default();
        run(&mut spill, &[(1, true, live(0, 0)), (2, false, live(0, 1))]);
        // Reverse the order: the run must come back sorted by the new keys.
        spill
            .map_keys(|keys| {
                Ok(keys
                    .iter()
                    .map(|k| k.iter().map(|b| !b).collect())
                    .collect())
            })
            .unwrap();
        let merged: Vec<Merged> = spill.merge().unwrap().map(|m| m.unwrap()).collect();
        let inv = |k: u32| -> Key { key(k).iter().map(|b| !b).collect() };
        assert_eq!(merged[0].key, inv(2));
        assert!(!merged[0].lookup);
        assert_eq!(merged[1].key, inv(1));
        assert!(merged[1].lookup);
    }
}
