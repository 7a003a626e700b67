//! Row data in source positions: what logs, `/pipelines` and each lake table see of one.
//!
//! The database sources keep each table's snapshot progress under `tables` (`"done"`, or
//! `{"after": <the last primary key read>}`) and the key ranges of open chunk windows
//! under `windows` (`{"table": .., "from": .., "to": ..}`). Primary-key values are row
//! data: they go only where that table's rows go. Logs and `/pipelines` get
//! [`SourcePosition::without_row_data`]; each lake table's commit gets
//! [`SourcePosition::for_lake_table`] (its own source tables' progress and windows, the
//! rest of the position whole); recovery from the lake alone puts the pieces together
//! again with [`SourcePosition::with_row_data_from`].
//!
//! Per-table maps (`tables`, and PostgreSQL's `oids` and `columns`) grow with the number
//! of tables: a whole database's position is tens of kilobytes. Only one lake table's
//! commit of a checkpoint (the first it changes) records the position whole; the others
//! record [`SourcePosition::part_for_lake_table`], which keeps just their own tables'
//! entries, so that a checkpoint of a thousand tables does not write the thousand-table
//! position a thousand times.

use serde_json::{Value, json};

use crate::{Error, LakeCommit, Result, SourcePosition};

/// What a table being read shows where its progress is left out.
const READING: &str = "reading";
/// The source tables whose row data a lake table's position keeps.
const ROW_DATA_OF: &str = "row_data_of";
/// Marks a position cut to its lake table's own entries of [`PER_TABLE`].
const PART: &str = "part";
/// Maps keyed by source table name, kept only for the own tables in a part.
const PER_TABLE: [&str; 3] = ["tables", "oids", "columns"];

impl SourcePosition {
    /// The position without row data, for logs and `/pipelines`: a table being read shows
    /// `"reading"` and the windows are counted. Recovery uses the whole position, never
    /// this view.
    pub fn without_row_data(&self) -> Value {
        let mut v = self.0.clone();
        if let Some(obj) = v.as_object_mut() {
            if let Some(tables) = obj.get_mut("tables").and_then(Value::as_object_mut) {
                for progress in tables.values_mut() {
                    if !progress.is_string() {
                        *progress = json!(READING);
                    }
                }
            }
            if let Some(n) = obj.get("windows").and_then(Value::as_array).map(Vec::len) {
                obj.insert("windows".into(), json!(n));
            }
            obj.remove(ROW_DATA_OF);
            obj.remove(PART);
        }
        v
    }

    /// [`SourcePosition::for_lake_table`] cut further to the maps' entries of the source
    /// tables `own` ([`PER_TABLE`]): what the lake tables of a checkpoint other than the
    /// one recording it whole keep. The stream position stays; recovery from the lake
    /// starts from the whole one ([`SourcePosition::is_part`] tells them apart). A
    /// position without `tables` comes back unchanged (it is the same for every table).
    /// Built from `own` alone, so a thousand parts of a thousand-table position cost no
    /// more than a few copies of it.
    pub fn part_for_lake_table(&self, own: &[&str]) -> SourcePosition {
        let Some(obj) = self.0.as_object() else {
            return self.clone();
        };
        if !obj.contains_key("tables") {
            return self.clone();
        }
        let mut part = serde_json::Map::new();
        for (key, value) in obj {
            let kept = match (key.as_str(), value) {
                (k, Value::Object(map)) if PER_TABLE.contains(&k) => Value::Object(
                    own.iter()
                        .filter_map(|t| Some((t.to_string(), map.get(*t)?.clone())))
                        .collect(),
                ),
                ("windows", Value::Array(windows)) => Value::Array(
                    windows
                        .iter()
                        .filter(|w| {
                            w.get("table")
                                .and_then(Value::as_str)
                                .is_some_and(|t| own.contains(&t))
                        })
                        .cloned()
                        .collect(),
                ),
                (ROW_DATA_OF | PART, _) => continue,
                _ => value.clone(),
            };
            part.insert(key.clone(), kept);
        }
        part.insert(ROW_DATA_OF.into(), json!(own));
        part.insert(PART.into(), json!(true));
        SourcePosition(Value::Object(part))
    }

    /// The source tables the position names (in its per-table maps and windows).
    pub fn source_tables(&self) -> std::collections::BTreeSet<&str> {
        let mut out = std::collections::BTreeSet::new();
        for key in PER_TABLE {
            if let Some(map) = self.0.get(key).and_then(Value::as_object) {
                out.extend(map.keys().map(String::as_str));
            }
        }
        for w in self
            .0
            .get("windows")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(w.get("table").and_then(Value::as_str));
        }
        out
    }

    /// True for a position made by [`SourcePosition::part_for_lake_table`]: not one to
    /// resume from.
    pub fn is_part(&self) -> bool {
        self.0.get(PART).and_then(Value::as_bool) == Some(true)
    }

    /// The position as one lake table's commit records it (Iceberg snapshot summary, Hive
    /// manifest): the snapshot progress and windows of the source tables `owns` accepts
    /// (those whose rows land in that lake table), the other tables' progress as
    /// `"reading"` and their windows left out; `row_data_of` names the tables kept.
    /// Everything else (the stream position, OIDs, column names) stays whole: recovery
    /// from the lake starts from whichever table's commit it reads first. A position
    /// without `tables` (Kafka, the generator) comes back unchanged.
    pub fn for_lake_table(&self, owns: impl Fn(&str) -> bool) -> SourcePosition {
        let mut v = self.0.clone();
        let Some(obj) = v.as_object_mut() else {
            return self.clone();
        };
        let Some(tables) = obj.get_mut("tables").and_then(Value::as_object_mut) else {
            return self.clone();
        };
        let mut kept = Vec::new();
        for (name, progress) in tables.iter_mut() {
            if owns(name) {
                kept.push(name.clone());
            } else if !progress.is_string() {
                *progress = json!(READING);
            }
        }
        if let Some(windows) = obj.get_mut("windows").and_then(Value::as_array_mut) {
            windows.retain(|w| w.get("table").and_then(Value::as_str).is_some_and(&owns));
        }
        obj.insert(ROW_DATA_OF.into(), json!(kept));
        SourcePosition(v)
    }

    /// The position to resume from when only the lake is left: `self` (a commit of the
    /// newest checkpoint, made by [`SourcePosition::for_lake_table`]) with each table's
    /// snapshot progress taken from the newest commit that keeps it, and the windows of
    /// all of `commits` (each lake table's newest commit of the pipeline).
    ///
    /// Exact because a table's progress moves only by a read whose rows land in its lake
    /// table in the same checkpoint, so that table's newest commit holds the current
    /// progress and every window the read opened. A window from an older commit that the
    /// stream has passed since is closed by the first event, as on any resume. (A read
    /// that found no rows opens a window with no commit; losing it changes nothing: the
    /// stream's changes to those keys end, before the window's position, in the absence
    /// the read saw.) A position written before positions were split (no `row_data_of`)
    /// is whole and comes back unchanged.
    pub fn with_row_data_from(&self, commits: &[LakeCommit]) -> Result<SourcePosition> {
        if self.0.get(ROW_DATA_OF).is_none() {
            return Ok(self.clone());
        }
        let mut v = self.0.clone();
        let obj = v.as_object_mut().expect("a split position is an object");
        if let Some(tables) = obj.get_mut("tables").and_then(Value::as_object_mut) {
            for (name, progress) in tables.iter_mut() {
                if progress.as_str() != Some(READING) {
                    continue;
                }
                let keeper = commits
                    .iter()
                    .filter(|c| keeps(&c.position, name))
                    .max_by_key(|c| c.checkpoint_id);
                let found = keeper.and_then(|c| c.position.0.get("tables")?.get(name));
                match found {
                    Some(p) if p.as_str() != Some(READING) => *progress = p.clone(),
                    _ => {
                        return Err(Error::config(format!(
                            "no lake table's commit holds the snapshot progress of source table {name} (its lake table's commits are gone); restore the pipeline's state directory, or drop the pipeline's lake tables and run it again to start over"
                        )));
                    }
                }
            }
        }
        let mut windows: Vec<Value> = Vec::new();
        for c in commits {
            for w in c
                .position
                .0
                .get("windows")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !windows.contains(w) {
                    windows.push(w.clone());
                }
            }
        }
        obj.insert("windows".into(), Value::Array(windows));
        obj.remove(ROW_DATA_OF);
        Ok(SourcePosition(v))
    }
}

/// True if `position` holds `table`'s row data: a split position that names it, or a
/// whole one.
fn keeps(position: &SourcePosition, table: &str) -> bool {
    match position.0.get(ROW_DATA_OF).and_then(Value::as_array) {
        Some(kept) => kept.iter().any(|k| k.as_str() == Some(table)),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> SourcePosition {
        SourcePosition(json!({
            "lsn": 42,
            "tables": {
                "public.a": "done",
                "public.b": {"after": ["secret-key-17"]},
                "public.c": {"after": [5]},
            },
            "windows": [
                {"table": "public.b", "from": ["k1"], "to": ["k9"], "high": 50},
                {"table": "public.c", "from": null, "to": [5], "high": 51},
            ],
        }))
    }

    fn commit(table: &str, checkpoint_id: u64, position: SourcePosition) -> LakeCommit {
        LakeCommit {
            table: table.into(),
            checkpoint_id,
            position,
            tables: None,
        }
    }

    #[test]
    fn positions_shown_without_row_data() {
        let p = position();
        let shown = p.without_row_data().to_string();
        assert!(
            !shown.contains("secret-key") && !shown.contains("k9"),
            "{shown}"
        );
        assert_eq!(
            p.without_row_data(),
            json!({"lsn": 42, "tables": {"public.a": "done", "public.b": "reading", "public.c": "reading"}, "windows": 2})
        );
        assert_eq!(
            SourcePosition::sequence(3).without_row_data(),
            json!({"seq": 3})
        );
    }

    #[test]
    fn a_lake_table_keeps_only_its_own_tables_row_data() {
        let for_c = position().for_lake_table(|t| t == "public.c");
        let text = for_c.to_json_string();
        assert!(
            !text.contains("secret-key") && !text.contains("k9"),
            "{text}"
        );
        assert_eq!(
            for_c.0,
            json!({
                "lsn": 42,
                "tables": {"public.a": "done", "public.b": "reading", "public.c": {"after": [5]}},
                "windows": [{"table": "public.c", "from": null, "to": [5], "high": 51}],
                "row_data_of": ["public.c"],
            })
        );
        let kafka = SourcePosition(json!({"offsets": {"0": 7}}));
        assert_eq!(kafka.for_lake_table(|_| false), kafka);
    }

    #[test]
    fn recovery_puts_the_split_position_together_again() {
        let whole = position();
        let b = commit("b", 9, whole.for_lake_table(|t| t == "public.b"));
        let c = commit("c", 9, whole.for_lake_table(|t| t == "public.c"));
        let a = commit("a", 9, whole.for_lake_table(|t| t == "public.a"));
        for base in [&a, &b, &c] {
            let mut got = base
                .position
                .with_row_data_from(&[a.clone(), b.clone(), c.clone()])
                .unwrap();
            let w = got.0["windows"].as_array_mut().unwrap();
            w.sort_by_key(|w| w["high"].as_u64());
            assert_eq!(got, whole, "from {}", base.table);
        }
    }

    #[test]
    fn parts_keep_their_own_tables_and_the_whole_one_restores_everything() {
        let mut whole = position();
        whole.0["oids"] = json!({"public.a": 1, "public.b": 2, "public.c": 3});
        whole.0["columns"] =
            json!({"public.a": ["id"], "public.b": ["id", "v"], "public.c": ["k"]});
        let b = commit("b", 9, whole.part_for_lake_table(&["public.b"]));
        assert!(b.position.is_part());
        assert_eq!(
            b.position.0,
            json!({
                "lsn": 42,
                "tables": {"public.b": {"after": ["secret-key-17"]}},
                "windows": [{"table": "public.b", "from": ["k1"], "to": ["k9"], "high": 50}],
                "oids": {"public.b": 2},
                "columns": {"public.b": ["id", "v"]},
                "row_data_of": ["public.b"],
                "part": true,
            })
        );
        assert!(!b.position.without_row_data().to_string().contains("part"));
        let c = commit("c", 9, whole.part_for_lake_table(&["public.c"]));
        // The commit that records the position whole: table a's.
        let a = commit("a", 9, whole.for_lake_table(|t| t == "public.a"));
        assert!(!a.position.is_part());
        let mut got = a.position.with_row_data_from(&[a.clone(), b, c]).unwrap();
        got.0["windows"]
            .as_array_mut()
            .unwrap()
            .sort_by_key(|w| w["high"].as_u64());
        assert_eq!(got, whole);
        // Positions without per-table maps are the same for every table.
        let kafka = SourcePosition(json!({"offsets": {"0": 7}}));
        assert_eq!(kafka.part_for_lake_table(&[]), kafka);
        assert_eq!(
            whole.source_tables().into_iter().collect::<Vec<_>>(),
            ["public.a", "public.b", "public.c"]
        );
        assert!(!kafka.is_part());
    }

    #[test]
    fn a_table_without_a_commit_this_checkpoint_takes_its_newest_one() {
        // Checkpoint 7 read a chunk of b; checkpoint 9 changed only c.
        let at_7 = position();
        let mut at_9 = position();
        at_9.0["tables"]["public.c"] = json!({"after": [8]});
        let b = commit("b", 7, at_7.for_lake_table(|t| t == "public.b"));
        // The older whole-position commit of c, from before positions were split.
        let c_old = commit(
            "c",
            5,
            SourcePosition(json!({"lsn": 1, "tables": {"public.b": {"after": ["old"]}}})),
        );
        let c = commit("c", 9, at_9.for_lake_table(|t| t == "public.c"));
        let got = c
            .position
            .with_row_data_from(&[c_old, b.clone(), c.clone()])
            .unwrap();
        assert_eq!(
            got.0["tables"]["public.b"],
            json!({"after": ["secret-key-17"]})
        );
        assert_eq!(got.0["tables"]["public.c"], json!({"after": [8]}));
        assert!(got.0.get("row_data_of").is_none());
        // Without b's commit, b's progress is nowhere: a loud stop, not a guess.
        let err = c
            .position
            .with_row_data_from(std::slice::from_ref(&c))
            .unwrap_err();
        assert!(err.to_string().contains("source table public.b"), "{err}");
    }

    #[test]
    fn whole_positions_from_before_the_split_are_used_as_they_are() {
        let whole = position();
        assert_eq!(whole.with_row_data_from(&[]).unwrap(), whole);
    }
}
