//! Binlog messages → change batches: which changes pass the snapshot's windows, row
//! images in our column order, columns added mid-stream, and the DDL statements lakeshore
//! acts on (TRUNCATE, CREATE TABLE, RENAME).

use std::sync::Arc;

use lakeshore_api::{ChangeBatch, Error, ErrorKind, Op, Result, SourceEvent};
use mysql_common::value::Value;

use crate::discover::{self, MyTable};
use crate::snapshot::{self, Key, compare_keys};
use crate::stream::{self, Msg, RowOp};
use crate::types::RowsBuilder;
use crate::{BinlogPos, ColumnMap, MysqlSource, Pending, Progress};

impl MysqlSource {
    /// Whether a change to `key` of table `t` by the open transaction is emitted.
    pub(crate) fn passes(&mut self, t: usize, key: &Key) -> bool {
        let table = &self.tables[t];
        // Where the open transaction lies (a position inside it), borrowed: this runs
        // per row.
        let start = self.txn.as_ref().unwrap_or(&self.position.binlog);
        let read = match self.position.tables.get(&table.name) {
            Some(Progress::Done) => true,
            Some(Progress::After(k)) => compare_keys(key, k).is_le(),
            None => false,
        };
        if !read {
            if self.dropped[t].as_ref().is_none_or(|d| start > d) {
                self.dropped[t] = Some(start.clone());
            }
            return false;
        }
        !self.position.windows.iter().any(|w| {
            w.table == table.name
                && w.from.as_ref().is_none_or(|f| compare_keys(key, f).is_gt())
                && w.to.as_ref().is_none_or(|to| compare_keys(key, to).is_le())
                && *start < w.seen
        })
    }

    /// The stream is at `pos` between transactions.
    pub(crate) fn passed(&mut self, pos: BinlogPos) {
        self.position.windows.retain(|w| w.seen > pos);
        self.position.binlog = pos;
        if self
            .end_at
            .as_ref()
            .is_some_and(|e| self.position.binlog >= *e)
        {
            self.finished = true;
        }
    }

    /// Our column index of each binlog column of table `t`, by name. A column we do not
    /// know was added since: the table is described again and, when the server has the
    /// column, the lake table gets it (a schema change after the rows before it).
    /// Columns the binlog no longer carries were dropped: they read as null from then on.
    pub(crate) async fn mapping(&mut self, t: usize, columns: &Arc<[String]>) -> Result<ColumnMap> {
        if let Some(m) = self.mapping.get(&(t, columns.clone())) {
            return Ok(m.clone());
        }
        if columns.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "table {}: the binlog carries no column names; set binlog_row_metadata = FULL",
                    self.tables[t].name
                ),
            ));
        }
        let known = |table: &MyTable| -> ColumnMap {
            columns
                .iter()
                .map(|c| table.columns.iter().position(|x| &x.name == c))
                .collect()
        };
        let mut m = known(&self.tables[t]);
        if m.iter().any(Option::is_none) {
            let (db, name) = (self.tables[t].db.clone(), self.tables[t].table.clone());
            let now = discover::describe(&mut self.conn, &db, &name).await?;
            let old = &self.tables[t];
            let keeps_old = old
                .columns
                .iter()
                .zip(&now.columns)
                .all(|(a, b)| a.name == b.name && a.kind == b.kind);
            if !keeps_old || now.columns.len() < old.columns.len() || now.key != old.key {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "table {}: its columns changed in a way the binlog cannot be read \
                         past; restarting to read the new shape",
                        old.name
                    ),
                ));
            }
            let added: Vec<&str> = now.columns[old.columns.len()..]
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            tracing::info!(table = %old.name, columns = ?added, "columns added");
            self.flush_table(t)?;
            self.out
                .push_back(SourceEvent::SchemaChange(now.schema.clone()));
            self.tables[t] = now;
            self.mapping.retain(|(x, _), _| *x != t);
            m = known(&self.tables[t]);
            if let Some((c, _)) = columns.iter().zip(&m).find(|(_, i)| i.is_none()) {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "table {}: column {c} is in the binlog but not on the server any more; \
                         restarting to read the new shape",
                        self.tables[t].name
                    ),
                ));
            }
        }
        self.mapping.insert((t, columns.clone()), m.clone());
        Ok(m)
    }

    /// One row image in our column order (columns the image lacks are null).
    pub(crate) fn key_and_row(
        &self,
        t: usize,
        map: &[Option<usize>],
        image: &[Value],
    ) -> Result<(Key, Vec<Value>)> {
        let table = &self.tables[t];
        let mut row = vec![Value::NULL; table.columns.len()];
        for (v, i) in image.iter().zip(map) {
            if let Some(i) = i {
                row[*i] = v.clone();
            }
        }
        let key = snapshot::key_of(table, &row).ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("table {}: a binlog row without its key", table.name),
            )
        })?;
        Ok((key, row))
    }

    pub(crate) fn push_row(&mut self, t: usize, op: Op, row: &[Value]) -> Result<()> {
        let table = &self.tables[t];
        let batch_rows = self.opts.batch_rows;
        let pending = self.pending[t].get_or_insert_with(|| Pending {
            rows: RowsBuilder::new(table.schema.schema.clone(), &table.kinds(), batch_rows),
            ops: Vec::with_capacity(batch_rows),
        });
        let key_only = op.removes();
        for (i, v) in row.iter().enumerate() {
            if key_only && !table.key.contains(&i) {
                pending.rows.push_null(i);
            } else {
                pending
                    .rows
                    .push(i, v)
                    .map_err(|m| value_error(table, i, m))?;
            }
        }
        pending.rows.end_row();
        pending.ops.push(op);
        if pending.ops.len() >= batch_rows {
            self.flush_table(t)?;
        }
        Ok(())
    }

    pub(crate) fn flush_table(&mut self, t: usize) -> Result<()> {
        if let Some(mut p) = self.pending[t].take()
            && !p.ops.is_empty()
        {
            warn_zero_dates(&self.tables[t], &p.rows);
            let rows = p.rows.finish()?;
            self.out.push_back(SourceEvent::Batch(ChangeBatch {
                table: Arc::from(self.tables[t].name.as_str()),
                rows,
                ops: Arc::from(p.ops),
            }));
        }
        Ok(())
    }

    pub(crate) fn flush_all(&mut self) -> Result<()> {
        for t in 0..self.tables.len() {
            self.flush_table(t)?;
        }
        Ok(())
    }

    pub(crate) async fn on_rows(
        &mut self,
        db: &str,
        table: &str,
        op: RowOp,
        columns: &Arc<[String]>,
        rows: Vec<(Option<stream::Image>, Option<stream::Image>)>,
    ) -> Result<()> {
        let Some(&t) = self.by_name.get(&format!("{db}.{table}")) else {
            return Ok(());
        };
        if self.failed.contains(&t) {
            return Ok(());
        }
        match self.table_rows(t, op, columns, rows).await {
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                self.fail_table(t, e);
                Ok(())
            }
            other => other,
        }
    }

    /// The source cannot go on with table `t` (a value or change it cannot read): its
    /// unflushed rows are dropped (the lake keeps the table as of its last checkpoint),
    /// and the engine is told, which fails the pipeline or parks the table
    /// (`on_table_error = "isolate"`).
    pub(crate) fn fail_table(&mut self, t: usize, error: Error) {
        tracing::error!(table = %self.tables[t].name, %error, "the source stops following the table");
        self.pending[t] = None;
        self.dropped[t] = None;
        self.failed.insert(t);
        self.out.push_back(SourceEvent::TableFailed {
            table: self.tables[t].name.clone(),
            message: error.to_string(),
        });
    }

    async fn table_rows(
        &mut self,
        t: usize,
        op: RowOp,
        columns: &Arc<[String]>,
        rows: Vec<(Option<stream::Image>, Option<stream::Image>)>,
    ) -> Result<()> {
        let map = self.mapping(t, columns).await?;
        for (before, after) in rows {
            match op {
                RowOp::Insert => {
                    let Some(after) = after else { continue };
                    let (key, row) = self.key_and_row(t, &map, &after)?;
                    if self.passes(t, &key) {
                        self.push_row(t, Op::Insert, &row)?;
                    }
                }
                RowOp::Delete => {
                    let Some(before) = before else { continue };
                    let (key, row) = self.key_and_row(t, &map, &before)?;
                    if self.passes(t, &key) {
                        self.push_row(t, Op::Delete, &row)?;
                    }
                }
                RowOp::Update => {
                    let (Some(before), Some(after)) = (before, after) else {
                        continue;
                    };
                    let (old_key, old_row) = self.key_and_row(t, &map, &before)?;
                    let (new_key, new_row) = self.key_and_row(t, &map, &after)?;
                    if old_key != new_key && self.passes(t, &old_key) {
                        self.push_row(t, Op::UpdateBefore, &old_row)?;
                    }
                    if self.passes(t, &new_key) {
                        self.push_row(t, Op::UpdateAfter, &new_row)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn on_msg(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Begin { at, gtid, .. } => {
                // Any position inside the transaction's span orders it against a chunk's
                // snapshot position (which always falls between transactions).
                if self.txn.is_none() {
                    self.txn = Some(at);
                }
                if gtid.is_some() {
                    self.txn_gtid = gtid;
                }
            }
            Msg::Rows {
                db,
                table,
                op,
                columns,
                rows,
            } => self.on_rows(&db, &table, op, &columns, rows).await?,
            Msg::Commit { next } => {
                self.txn = None;
                if let Some(g) = self.txn_gtid.take() {
                    self.position.gtid = Some(g);
                }
                self.passed(next);
            }
            Msg::Statement { db, sql, next } => {
                self.on_statement(&db, &sql)?;
                self.txn = None;
                if let Some(g) = self.txn_gtid.take() {
                    self.position.gtid = Some(g);
                }
                self.passed(next);
            }
            Msg::Advance { next } => {
                if self.txn.is_none() && next > self.position.binlog {
                    self.passed(next);
                }
            }
        }
        Ok(())
    }

    /// A statement outside row events. `TRUNCATE` of a replicated table is replicated;
    /// other DDL on it is picked up from the next row event's column names.
    pub(crate) fn on_statement(&mut self, db: &str, sql: &str) -> Result<()> {
        let words: Vec<String> = sql
            .split_whitespace()
            .take(3)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let qualify = |name: &str| {
            let name = name.trim_end_matches([';', '(']).replace('`', "");
            if name.contains('.') {
                name
            } else {
                format!("{db}.{name}")
            }
        };
        let tokens: Vec<&str> = sql.split_whitespace().collect();
        let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
        let is = |i: usize, w: &str| upper.get(i).is_some_and(|u| u == w);
        // CREATE TABLE of a table the filter names: restart, which discovers it and reads
        // its snapshot (changes to keys not read yet are dropped, as for any table).
        if is(0, "CREATE") && upper.iter().take(3).any(|u| u == "TABLE") {
            let at = upper.iter().position(|u| u == "TABLE").unwrap_or(1) + 1;
            let skip = if is(at, "IF") { 3 } else { 0 };
            if let Some(name) = tokens.get(at + skip).map(|n| qualify(n))
                && !self.by_name.contains_key(&name)
                && self
                    .opts
                    .tables
                    .iter()
                    .any(|p| discover::glob_match(p, &name))
            {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!("table {name} was created; restarting to add it"),
                ));
            }
        }
        // RENAME TABLE a TO b / ALTER TABLE a RENAME [TO] b of a replicated table.
        let renamed = if is(0, "RENAME") && is(1, "TABLE") {
            tokens.get(2).map(|n| qualify(n))
        } else if is(0, "ALTER") && is(1, "TABLE") && upper.iter().any(|u| u == "RENAME") {
            let to = upper.iter().position(|u| u == "RENAME").unwrap_or(0) + 1;
            (!is(to, "COLUMN") && !is(to, "INDEX") && !is(to, "KEY"))
                .then(|| tokens.get(2).map(|n| qualify(n)))
                .flatten()
        } else {
            None
        };
        if let Some(name) = renamed
            && let Some(&t) = self.by_name.get(&name)
            && !self.failed.contains(&t)
        {
            let error = Error::new(
                ErrorKind::Unsupported,
                format!(
                    "table {name} was renamed ({}); lakeshore does not follow renames. Start a \
                     new pipeline for the new name (the lake table {name} keeps its rows)",
                    sql.trim()
                ),
            );
            self.flush_table(t)?;
            self.fail_table(t, error);
            return Ok(());
        }
        if words.first().map(String::as_str) == Some("TRUNCATE") {
            let name = sql
                .split_whitespace()
                .nth(if words.get(1).map(String::as_str) == Some("TABLE") {
                    2
                } else {
                    1
                })
                .unwrap_or_default()
                .trim_end_matches(';')
                .replace('`', "");
            let full = if name.contains('.') {
                name
            } else {
                format!("{db}.{name}")
            };
            if let Some(&t) = self.by_name.get(&full)
                && !self.failed.contains(&t)
            {
                self.flush_table(t)?;
                self.out.push_back(SourceEvent::Truncate(full.clone()));
                let done = self.position.tables.get(&full) == Some(&Progress::Done);
                let open_window = self.position.windows.iter().any(|w| w.table == full);
                if !done || open_window {
                    self.position.tables.remove(&full);
                    self.position.windows.retain(|w| w.table != full);
                    let start = self.txn.as_ref().unwrap_or(&self.position.binlog);
                    self.dropped[t] = Some(start.clone());
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn value_error(table: &MyTable, i: usize, m: String) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "table {}, column {}: {m}",
            table.name, table.columns[i].name
        ),
    )
}

pub(crate) fn warn_zero_dates(table: &MyTable, rows: &RowsBuilder) {
    if rows.zero_dates > 0 {
        metrics::counter!("lakeshore_mysql_zero_dates_total", "table" => table.name.clone())
            .increment(rows.zero_dates);
        tracing::warn!(table = %table.name, count = rows.zero_dates, "zero dates read as null");
    }
}
