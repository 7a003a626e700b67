//! Binlog messages → change batches: which changes pass the snapshot's windows, row
//! images in our column order, columns added mid-stream, and the DDL statements lakeshore
//! acts on (TRUNCATE, CREATE TABLE, RENAME).

use std::sync::Arc;

use lakeshore_api::{ChangeBatch, Error, ErrorKind, Op, Result, SourceEvent};
use mysql_common::value::Value;

use crate::ddl::{self, Ddl};
use crate::discover::{self, MyTable};
use crate::snapshot::{self, Key, compare_keys};
use crate::stream::{self, Declared, Msg, RowOp};
use crate::types::{Charset, Kind, RowsBuilder};
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
            // A chunk read between watermarks comes after every transaction the stream
            // passed: nothing to wait for.
            if self.watermarks.is_none() && self.dropped[t].as_ref().is_none_or(|d| start > d) {
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

    /// How text in the collation `id` of a table map decodes (`None`: not said, or an
    /// id the server did not list).
    fn charset_of(&self, id: Option<u16>) -> Option<Charset> {
        self.charsets.get(&id?).map(|name| Charset::of(name))
    }

    /// Change `row` (`None`: removal) of `key` of table `t`: emitted if it
    /// [`passes`](Self::passes), else applied to the table's held chunk while the binlog
    /// is between the chunk's watermarks and the chunk covers the key.
    fn change(&mut self, t: usize, op: Op, key: Key, row: &[Value], removal: bool) -> Result<()> {
        if self.passes(t, &key) {
            return self.push_row(t, op, row);
        }
        if let Some(held) = self.held[t].as_mut()
            && held.open
            && held.covers(&key)
        {
            held.apply(&self.tables[t], key, (!removal).then(|| row.to_vec()));
        }
        Ok(())
    }

    /// A row of the watermark table whose `mark` column holds `mark`.
    async fn on_watermark(&mut self, mark: &str) -> Result<()> {
        if let Some(h) = self.held.iter_mut().flatten().find(|h| h.low == mark) {
            h.open = true;
            return Ok(());
        }
        let high = |h: &Option<crate::Held>| h.as_ref().is_some_and(|h| h.high == mark);
        if let Some(t) = self.held.iter().position(high) {
            return self.release(t);
        }
        // A chunk read ahead and not taken yet: its read is done or ends before its high
        // watermark is written, so it is taken now, open from here (or dropped: with its
        // low watermark passed, no one else may take it).
        let Some(t) = self.expected.remove(mark) else {
            return Ok(());
        };
        let after = match self.position.tables.get(&self.tables[t].name) {
            Some(Progress::After(k)) => Some(k.clone()),
            _ => None,
        };
        let columns = self.tables[t].columns.len();
        let read = self
            .ahead
            .take(t, after.as_ref(), |read| {
                read.rows.first().is_none_or(|r| r.len() == columns)
            })
            .await?;
        let usable = self.held[t].is_none()
            && !self.failed.contains(&t)
            && self.position.tables.get(&self.tables[t].name) != Some(&Progress::Done);
        if let Some(read) = read.filter(|_| usable)
            && let snapshot::Seen::Between { low, high, .. } = &read.seen
            && low == mark
        {
            if after.is_none() {
                let name = self.tables[t].name.clone();
                self.out.push_back(SourceEvent::SnapshotStarted(name));
            }
            let (low, high) = (low.clone(), high.clone());
            let mut held = crate::Held::new(after, read, low, high);
            held.open = true;
            self.held[t] = Some(held);
        }
        Ok(())
    }

    /// A held chunk whose high watermark the binlog should have carried by now stops the
    /// pipeline: waiting would stall the snapshot for ever.
    fn check_held(&self) -> Result<()> {
        for (t, held) in self.held.iter().enumerate() {
            if let Some(h) = held
                && let snapshot::Seen::Between { upper, .. } = &h.read.seen
                && self.position.binlog >= *upper
            {
                let (db, wm) = self.watermarks.clone().unwrap_or_default();
                return Err(Error::config(format!(
                    "snapshot of {}: the binlog passed {}:{} without the watermark written to \
                     {db}.{wm} before it; its writes are not in the binlog this pipeline reads \
                     (binlog_do_db / binlog_ignore_db, or a replication filter). Put \
                     [source] snapshot_watermarks in a database the binlog logs",
                    self.tables[t].name, upper.file, upper.pos
                )));
            }
        }
        Ok(())
    }

    /// The open transaction ended; the next one starts at `next`.
    fn committed(&mut self, next: BinlogPos) {
        self.txn = None;
        if let (Some(g), Some(at)) = (self.txn_gtid.take(), self.position.gtids.as_mut()) {
            at.add(&g);
        }
        self.passed(next);
        if let Some((until, set)) = &self.position.settling
            && self.position.binlog >= *until
        {
            if let Some(at) = self.position.gtids.as_mut() {
                at.union(set);
            }
            self.position.settling = None;
        }
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
            return Err(Error::config(format!(
                "table {}: the binlog carries no column names; set binlog_row_metadata = FULL",
                self.tables[t].name
            )));
        }
        let known = |table: &MyTable| -> ColumnMap {
            columns
                .iter()
                .map(|c| table.columns.iter().position(|x| &x.name == c))
                .collect()
        };
        let mut m = known(&self.tables[t]);
        // A column the pipeline does not read is expected to be unknown.
        let unknown = |m: &ColumnMap, table: &MyTable| {
            m.iter()
                .zip(columns.iter())
                .any(|(i, c)| i.is_none() && table.reads(c))
        };
        if unknown(&m, &self.tables[t]) {
            let (db, name) = (self.tables[t].db.clone(), self.tables[t].table.clone());
            let now = discover::describe(&mut self.conn, &db, &name, &self.opts.columns).await?;
            let old = &self.tables[t];
            let keeps_old = old
                .columns
                .iter()
                .zip(&now.columns)
                .all(|(a, b)| a.name == b.name && a.kind == b.kind);
            if !keeps_old || now.columns.len() < old.columns.len() || now.key != old.key {
                return Err(Error::transient(format!(
                    "table {}: its columns changed in a way the binlog cannot be read \
                         past; restarting to read the new shape",
                    old.name
                )));
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
            // Events from before a column was dropped or renamed (read again after a
            // restart, the server already without it): the column is gone from the
            // source, so its values are not kept. A rename's own statement follows and
            // reads the table again (`on_statement`).
            let table = &self.tables[t];
            for (c, _) in columns
                .iter()
                .zip(&m)
                .filter(|(c, i)| i.is_none() && table.reads(c))
            {
                tracing::warn!(table = %self.tables[t].name, column = %c, "a column in the binlog is no longer on the server (dropped or renamed later): its values are skipped");
            }
        }
        self.mapping.insert((t, columns.clone()), m.clone());
        Ok(m)
    }

    /// Bring table `t`'s column types in line with what the row event's table map
    /// declares (`map`: our column of each binlog column): an `ALTER TABLE ... MODIFY`
    /// shows up here first. ENUM/SET labels are taken from the binlog (a reordered
    /// `ENUM` decodes its index by the new labels); a wider integer, float or decimal
    /// precision becomes a schema change the lake follows; a type that was narrower
    /// before (a replay from before the change) fits as it is; anything else, such as
    /// a new decimal scale or a number that became text, stops the table with an error
    /// naming the column and the change.
    pub(crate) fn follow_declared(
        &mut self,
        t: usize,
        map: &[Option<usize>],
        declared: &[Declared],
    ) -> Result<()> {
        let table = &self.tables[t];
        let mut changed: Vec<(usize, Kind, String)> = Vec::new();
        let mut widened = false;
        for (d, i) in declared.iter().zip(map) {
            let Some(i) = *i else { continue };
            let c = &table.columns[i];
            let to = match (&c.kind, d) {
                (Kind::Enum(l), Declared::Enum(Some(l2))) if l != l2 => {
                    Some((Kind::Enum(l2.clone()), enum_type("enum", l2)))
                }
                (Kind::Set(l), Declared::Set(Some(l2))) if l != l2 => {
                    Some((Kind::Set(l2.clone()), enum_type("set", l2)))
                }
                (Kind::Enum(_) | Kind::Set(_), Declared::Varying(cs) | Declared::Fixed(_, cs)) => {
                    let latin1 = self.charset_of(*cs) == Some(Charset::Latin1);
                    Some((Kind::Text { latin1 }, "varchar".to_string()))
                }
                // The character set of a text column changed (ALTER ... CHARACTER SET,
                // CONVERT TO): the binlog's bytes are in the new one.
                (Kind::Text { latin1 }, Declared::Varying(cs) | Declared::Fixed(_, cs)) => {
                    match self.charset_of(*cs) {
                        Some(Charset::Latin1) if !latin1 => {
                            Some((Kind::Text { latin1: true }, c.column_type.clone()))
                        }
                        Some(Charset::Utf8) if *latin1 => {
                            Some((Kind::Text { latin1: false }, c.column_type.clone()))
                        }
                        Some(Charset::Binary) => {
                            return Err(type_changed(
                                table,
                                i,
                                "a binary type",
                                "Iceberg cannot change a string column to binary",
                            ));
                        }
                        Some(Charset::Unsupported(name)) => {
                            return Err(type_changed(
                                table,
                                i,
                                &format!("character set {name}"),
                                "lakeshore decodes utf8mb4, utf8mb3, ascii and latin1 text only",
                            ));
                        }
                        _ => None,
                    }
                }
                (Kind::Binary, Declared::Varying(cs) | Declared::Fixed(_, cs)) if matches!(self.charset_of(*cs), Some(c) if c != Charset::Binary) =>
                {
                    return Err(type_changed(
                        table,
                        i,
                        "a text type",
                        "Iceberg cannot change a binary column to string",
                    ));
                }
                (Kind::Text { .. }, Declared::Enum(Some(l2))) => {
                    Some((Kind::Enum(l2.clone()), enum_type("enum", l2)))
                }
                (Kind::Text { .. }, Declared::Set(Some(l2))) => {
                    Some((Kind::Set(l2.clone()), enum_type("set", l2)))
                }
                (k, d) => match numeric_change(k, d) {
                    Change::Fits => None,
                    Change::Widen(kind, column_type) => {
                        widened = true;
                        Some((kind, column_type))
                    }
                    Change::Refuse(to, why) => return Err(type_changed(table, i, &to, why)),
                },
            };
            if let Some((kind, column_type)) = to {
                changed.push((i, kind, column_type));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        // Rows buffered so far were decoded with the old types.
        self.flush_table(t)?;
        let table = &mut self.tables[t];
        for (i, kind, column_type) in changed {
            if let (Kind::Text { latin1: from }, Kind::Text { latin1: to }) =
                (&table.columns[i].kind, &kind)
                && from != to
            {
                let name = |l: bool| if l { "latin1" } else { "utf8" };
                tracing::info!(table = %table.name, column = %table.columns[i].name, from = name(*from), to = name(*to), "character set changed at the source");
            } else {
                tracing::info!(table = %table.name, column = %table.columns[i].name, from = %table.columns[i].column_type, to = %column_type, "column type changed at the source");
            }
            table.columns[i].kind = kind;
            table.columns[i].column_type = column_type;
        }
        if widened {
            let schema = table.rebuild_schema();
            self.out.push_back(SourceEvent::SchemaChange(schema));
        }
        Ok(())
    }

    /// One row image in our column order (columns the image lacks are null).
    /// BINARY(n) values get back the trailing zero bytes the binlog dropped, so they
    /// read as in the snapshot (and a key compares the same either way).
    pub(crate) fn key_and_row(
        &self,
        t: usize,
        map: &[Option<usize>],
        declared: &[Declared],
        image: &[Value],
    ) -> Result<(Key, Vec<Value>)> {
        let table = &self.tables[t];
        let mut row = vec![Value::NULL; table.columns.len()];
        for (c, (v, i)) in image.iter().zip(map).enumerate() {
            if let Some(i) = i {
                let mut v = v.clone();
                if let (Kind::Binary, Some(Declared::Fixed(n, _)), Value::Bytes(b)) =
                    (&table.columns[*i].kind, declared.get(c), &mut v)
                    && b.len() < *n
                {
                    b.resize(*n, 0);
                }
                row[*i] = v;
            }
        }
        let key = snapshot::key_of(table, &row).ok_or_else(|| {
            Error::internal(format!(
                "table {}: a binlog row without its key",
                table.name
            ))
        })?;
        Ok((key, row))
    }

    pub(crate) fn push_row(&mut self, t: usize, op: Op, row: &[Value]) -> Result<()> {
        let table = &self.tables[t];
        let batch_rows = self.opts.batch_rows;
        let record_origin = self.record_origin;
        let pending = self.pending[t].get_or_insert_with(|| Pending {
            rows: RowsBuilder::new(table.schema.schema.clone(), &table.kinds(), batch_rows),
            ops: Vec::with_capacity(batch_rows),
            origin: record_origin.then(Default::default),
        });
        if let Some(origin) = &mut pending.origin {
            origin.push_txn(self.txn_origin.as_ref());
        }
        // Removals keep the row's values too (binlog_row_image = FULL): soft deletes and
        // changelogs show them.
        for (i, v) in row.iter().enumerate() {
            pending
                .rows
                .push(i, v)
                .map_err(|m| value_error(table, i, m))?;
        }
        pending.rows.end_row();
        pending.ops.push(op);
        // An old image stays in the batch of its new image (a changelog's
        // `update_before` row is told from a delete by the row that follows it).
        if pending.ops.len() >= batch_rows && op != Op::UpdateBefore {
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
                origin: p.origin.map(|o| o.finish()).unwrap_or_default(),
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
        declared: &[Declared],
        rows: Vec<(Option<stream::Image>, Option<stream::Image>)>,
    ) -> Result<()> {
        if self
            .watermarks
            .as_ref()
            .is_some_and(|(d, w)| d == db && w == table)
        {
            // Column `mark` (or the second, without binlog column names).
            let at = columns.iter().position(|c| c == "mark").unwrap_or(1);
            for (_, after) in rows {
                if let Some(mysql_common::value::Value::Bytes(mark)) =
                    after.as_ref().and_then(|image| image.get(at))
                {
                    self.on_watermark(&String::from_utf8_lossy(mark)).await?;
                }
            }
            return Ok(());
        }
        let Some(&t) = self.by_name.get(&format!("{db}.{table}")) else {
            return Ok(());
        };
        if self.failed.contains(&t) {
            return Ok(());
        }
        match self.table_rows(t, op, columns, declared, rows).await {
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
        self.held[t] = None;
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
        declared: &[Declared],
        rows: Vec<(Option<stream::Image>, Option<stream::Image>)>,
    ) -> Result<()> {
        let map = self.mapping(t, columns).await?;
        self.follow_declared(t, &map, declared)?;
        for (before, after) in rows {
            match op {
                RowOp::Insert => {
                    let Some(after) = after else { continue };
                    let (key, row) = self.key_and_row(t, &map, declared, &after)?;
                    self.change(t, Op::Insert, key, &row, false)?;
                }
                RowOp::Delete => {
                    let Some(before) = before else { continue };
                    let (key, row) = self.key_and_row(t, &map, declared, &before)?;
                    self.change(t, Op::Delete, key, &row, true)?;
                }
                RowOp::Update => {
                    let (Some(before), Some(after)) = (before, after) else {
                        continue;
                    };
                    let (old_key, old_row) = self.key_and_row(t, &map, declared, &before)?;
                    let (new_key, new_row) = self.key_and_row(t, &map, declared, &after)?;
                    let moved = old_key != new_key;
                    if moved || self.opts.columns.needs_before_images(&self.tables[t].name) {
                        // Kept key: a held chunk takes the new image below.
                        if moved {
                            self.change(t, Op::UpdateBefore, old_key, &old_row, true)?;
                        } else if self.passes(t, &old_key) {
                            self.push_row(t, Op::UpdateBefore, &old_row)?;
                        }
                    }
                    self.change(t, Op::UpdateAfter, new_key, &new_row, false)?;
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn on_msg(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Begin { at, gtid, ts } => {
                // Any position inside the transaction's span orders it against a chunk's
                // snapshot position (which always falls between transactions).
                if self.txn.is_none() {
                    if self.record_origin {
                        let position = gtid
                            .as_ref()
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| format!("{}:{}", at.file, at.pos));
                        self.txn_origin = Some((i64::from(ts) * 1_000_000, position));
                    }
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
                declared,
                rows,
            } => {
                self.on_rows(&db, &table, op, &columns, &declared, rows)
                    .await?
            }
            Msg::Commit { next } => {
                self.committed(next);
                self.check_held()?;
            }
            Msg::Statement { db, sql, next } => {
                let (reread, altered) = self.on_statement(&db, &sql)?;
                for t in reread {
                    self.reread(t).await?;
                }
                for t in altered {
                    self.add_new_columns(t).await?;
                }
                self.committed(next);
            }
            // After a GTID start, before its first transaction, nothing is a position:
            // the server's first rotation names where it began looking for the GTID, and
            // MySQL's heartbeats while it skips what the lake has can fall inside a
            // transaction. A heartbeat at or past a bounded run's end says everything
            // was sent.
            Msg::Advance { next, idle } if self.position.binlog.file.is_empty() => {
                if idle && self.txn.is_none() && self.end_at.as_ref().is_some_and(|e| next >= *e) {
                    self.finished = true;
                }
            }
            Msg::Advance { next, .. } => {
                if self.txn.is_none() && next > self.position.binlog {
                    self.passed(next);
                }
            }
        }
        Ok(())
    }

    /// A statement outside row events (`ddl.rs` reads it). Returns the tables that must
    /// be read again — their rows changed without row events (partition DDL), a column
    /// was renamed (the lake's column of the old name would keep stale values), or
    /// another table took their name (gh-ost / pt-online-schema-change cut-over) — and
    /// the other altered tables.
    pub(crate) fn on_statement(&mut self, db: &str, sql: &str) -> Result<(Vec<usize>, Vec<usize>)> {
        let followed = |s: &Self, name: &str| {
            s.by_name
                .get(name)
                .copied()
                .filter(|t| !s.failed.contains(t))
        };
        let (mut reread, mut altered) = (Vec::new(), Vec::new());
        match ddl::parse(db, sql) {
            // CREATE TABLE of a table the filter names: restart, which discovers it and
            // reads its snapshot (changes to keys not read yet are dropped, as for any
            // table). A followed table created again after a DROP (which emptied it)
            // fills from its row events.
            Ddl::CreateTable(name) => {
                let watermarks = self
                    .watermarks
                    .as_ref()
                    .is_some_and(|(d, w)| name == format!("{d}.{w}"));
                if !self.by_name.contains_key(&name)
                    && !watermarks
                    && self
                        .opts
                        .tables
                        .iter()
                        .any(|p| discover::glob_match(p, &name))
                {
                    return Err(Error::transient(format!(
                        "table {name} was created; restarting to add it"
                    )));
                }
            }
            Ddl::Truncate(name) => {
                if let Some(t) = followed(self, &name) {
                    self.truncated(t)?;
                }
            }
            Ddl::DropTables(names) => {
                for name in names {
                    if let Some(t) = followed(self, &name) {
                        tracing::warn!(table = %name, "table dropped at the source: the lake table is emptied (a table created under the name fills it again)");
                        self.truncated(t)?;
                    }
                }
            }
            Ddl::Rename(pairs) => {
                for (from, _) in &pairs {
                    let Some(t) = followed(self, from) else {
                        continue;
                    };
                    if pairs.iter().any(|(_, to)| to == from) {
                        // Another table took the name in the same statement: a cut-over.
                        tracing::warn!(table = %from, statement = %sql.trim(), "another table took the name of a followed table (an online schema change's cut-over): reading it again");
                        reread.push(t);
                        continue;
                    }
                    let error = Error::unsupported(format!(
                        "table {from} was renamed ({}); lakeshore does not follow renames. Start a \
                             new pipeline for the new name (the lake table keeps its rows)",
                        sql.trim()
                    ));
                    self.flush_table(t)?;
                    self.fail_table(t, error);
                }
                // A name taken over by a followed table's rename of another: read it.
                for (_, to) in &pairs {
                    if let Some(t) = followed(self, to)
                        && !reread.contains(&t)
                        && !pairs.iter().any(|(from, _)| from == to)
                    {
                        reread.push(t);
                    }
                }
            }
            Ddl::Reread { table, why } => {
                if let Some(t) = followed(self, &table) {
                    tracing::warn!(table = %table, clause = %why, "the statement changes rows or column names without row events: reading the table again");
                    reread.push(t);
                }
            }
            Ddl::Alter(table) => {
                if let Some(t) = followed(self, &table) {
                    altered.push(t);
                }
            }
            Ddl::Other => {}
        }
        Ok((reread, altered))
    }

    /// After an `ALTER TABLE` of table `t`: columns the server now has and the table
    /// lacks are added (the lake shows them at once, not only with the next row event).
    /// Types are not taken from here: the server may be ahead of the binlog, whose
    /// table maps declare them in order (`follow_declared`).
    pub(crate) async fn add_new_columns(&mut self, t: usize) -> Result<()> {
        let (db, name) = (self.tables[t].db.clone(), self.tables[t].table.clone());
        let now = match discover::describe(&mut self.conn, &db, &name, &self.opts.columns).await {
            Ok(now) => now,
            // Gone or changed beyond reading since: the next row events tell.
            Err(e) if e.kind() != ErrorKind::Transient => return Ok(()),
            Err(e) => return Err(e),
        };
        let added: Vec<_> = now
            .columns
            .into_iter()
            .filter(|c| !self.tables[t].columns.iter().any(|x| x.name == c.name))
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        self.flush_table(t)?;
        let table = &mut self.tables[t];
        tracing::info!(table = %table.name, columns = ?added.iter().map(|c| &c.name).collect::<Vec<_>>(), "columns added");
        table.columns.extend(added);
        let schema = table.rebuild_schema();
        self.mapping.retain(|(x, _), _| *x != t);
        self.out.push_back(SourceEvent::SchemaChange(schema));
        Ok(())
    }

    /// Table `t` lost every row (TRUNCATE, DROP TABLE).
    fn truncated(&mut self, t: usize) -> Result<()> {
        let full = self.tables[t].name.clone();
        self.flush_table(t)?;
        self.out.push_back(SourceEvent::Truncate(full.clone()));
        let done = self.position.tables.get(&full) == Some(&Progress::Done);
        let open_window = self.position.windows.iter().any(|w| w.table == full);
        if !done || open_window {
            self.position.tables.remove(&full);
            self.position.windows.retain(|w| w.table != full);
            self.held[t] = None;
            let start = self.txn.as_ref().unwrap_or(&self.position.binlog);
            self.dropped[t] = Some(start.clone());
            self.read_again();
        }
        Ok(())
    }

    /// A table's snapshot starts over: a bounded run reads it to its end before it takes
    /// a new end of the binlog, rather than stopping at the old one with the table half
    /// read.
    pub(crate) fn read_again(&mut self) {
        self.end_at = None;
        self.finished = false;
    }

    /// Read table `t` again from the server as it is now: its columns (the lake gets
    /// new ones), then its rows, merged with the stream like a re-snapshot.
    pub(crate) async fn reread(&mut self, t: usize) -> Result<()> {
        let (db, name) = (self.tables[t].db.clone(), self.tables[t].table.clone());
        let now = discover::describe(&mut self.conn, &db, &name, &self.opts.columns).await?;
        self.flush_table(t)?;
        if now.key != self.tables[t].key {
            let error = Error::unsupported(format!(
                "table {}: its primary key changed; the lake table is keyed by the old one. Start a new pipeline (or drop the lake table) to read it with the new key",
                now.name
            ));
            self.fail_table(t, error);
            return Ok(());
        }
        if now.schema.schema != self.tables[t].schema.schema {
            self.out
                .push_back(SourceEvent::SchemaChange(now.schema.clone()));
        }
        self.tables[t] = now;
        self.mapping.retain(|(x, _), _| *x != t);
        let table = self.tables[t].name.clone();
        lakeshore_api::Source::resnapshot(self, &table)
    }
}

pub(crate) fn value_error(table: &MyTable, i: usize, m: String) -> Error {
    Error::unsupported(format!(
        "table {}, column {}: {m}",
        table.name, table.columns[i].name
    ))
}

pub(crate) fn warn_zero_dates(table: &MyTable, rows: &RowsBuilder) {
    if rows.zero_dates > 0 {
        metrics::counter!("lakeshore_mysql_zero_dates_total", "table" => table.name.clone())
            .increment(rows.zero_dates);
        tracing::warn!(table = %table.name, count = rows.zero_dates, "zero dates read as null");
    }
}

/// How a column of kind `k` takes values of the declared type `d`.
enum Change {
    /// Every value of `d` is a value of `k` (the same type, or a replay of events from
    /// before a widening the table has since had).
    Fits,
    /// The lake column widens to this kind (Iceberg's int → long, float → double,
    /// decimal precision); the string is the new column type, for messages.
    Widen(Kind, String),
    /// Values of `d` cannot be written to the lake column: the new type and why.
    Refuse(String, &'static str),
}

fn numeric_change(k: &Kind, d: &Declared) -> Change {
    use Change::*;
    let refuse = |why| Refuse(declared_name(d), why);
    let int_digits = |k: &Kind| match k {
        Kind::Int24 => 6,
        Kind::Int32 => 9,
        Kind::Int64 => 18,
        Kind::UInt64 => 20,
        Kind::Decimal(p, s) => (*p as i16 - *s as i16) as u8,
        _ => 0,
    };
    let is_text = matches!(
        k,
        Kind::Text { .. } | Kind::Binary | Kind::Enum(_) | Kind::Set(_) | Kind::Json
    );
    match (k, d) {
        (Kind::Int32 | Kind::Int24, Declared::Int) => Fits,
        (Kind::Int32 | Kind::Int24, Declared::BigInt) => Widen(Kind::Int64, "bigint".into()),
        (Kind::Int64 | Kind::UInt64, Declared::Int | Declared::BigInt) => Fits,
        (Kind::Decimal(..), Declared::Int) if int_digits(k) >= 10 => Fits,
        (Kind::Decimal(..), Declared::BigInt) if int_digits(k) >= 20 => Fits,
        (Kind::Decimal(p, s), Declared::Decimal(p2, s2)) => {
            let (p, s, p2, s2) = (*p as i16, *s as i16, *p2 as i16, *s2 as i16);
            if s2 <= s && p2 - s2 <= p - s {
                Fits
            } else if s2 == s && p2 <= 38 {
                Widen(
                    Kind::Decimal(p2 as u8, s as i8),
                    format!("decimal({p2},{s})"),
                )
            } else {
                refuse("an Iceberg decimal can widen its precision but not change its scale")
            }
        }
        (Kind::Int24 | Kind::Int32 | Kind::Int64 | Kind::UInt64, Declared::Decimal(p2, 0))
            if *p2 <= int_digits(k) =>
        {
            Fits
        }
        (Kind::Float32, Declared::Float) => Fits,
        (Kind::Float32, Declared::Double) => Widen(Kind::Float64, "double".into()),
        (Kind::Float64, Declared::Float | Declared::Double) => Fits,
        (Kind::Int24 | Kind::Int32 | Kind::Int64 | Kind::UInt64 | Kind::Decimal(..), _)
        | (Kind::Float32 | Kind::Float64, _)
            if !matches!(d, Declared::Other) =>
        {
            refuse("the lake column keeps its number type, which cannot hold these values")
        }
        (_, Declared::Int | Declared::BigInt | Declared::Float | Declared::Double)
        | (_, Declared::Decimal(..))
            if is_text =>
        {
            refuse("the lake column is text and Iceberg cannot change it to a number")
        }
        _ => Fits,
    }
}

fn declared_name(d: &Declared) -> String {
    match d {
        Declared::Decimal(p, s) => format!("decimal({p},{s})"),
        Declared::Fixed(n, _) => format!("char/binary({n})"),
        Declared::Enum(_) => "enum".into(),
        Declared::Set(_) => "set".into(),
        Declared::Varying(_) => "varchar/text/blob".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn enum_type(what: &str, labels: &[String]) -> String {
    let quoted: Vec<String> = labels
        .iter()
        .map(|l| format!("'{}'", l.replace('\'', "''")))
        .collect();
    format!("{what}({})", quoted.join(","))
}

/// Column `i` of `table` changed to `to` in a way the lake cannot follow.
fn type_changed(table: &MyTable, i: usize, to: &str, why: &str) -> Error {
    let c = &table.columns[i];
    Error::unsupported(format!(
        "table {}, column {}: its type changed from {} to {to} at the source; {why}. To go on, drop the lake table and read the source table again (restart, then POST /pipelines/<name>/resnapshot?table={})",
        table.name, c.name, c.column_type, table.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(k: Kind, d: Declared) -> bool {
        matches!(numeric_change(&k, &d), Change::Fits)
    }

    fn widens_to(k: Kind, d: Declared) -> Option<Kind> {
        match numeric_change(&k, &d) {
            Change::Widen(kind, _) => Some(kind),
            _ => None,
        }
    }

    fn refused(k: Kind, d: Declared) -> bool {
        matches!(numeric_change(&k, &d), Change::Refuse(..))
    }

    /// What a row event's declared type does to a column: the Iceberg promotions widen
    /// the lake column, older (narrower) table maps of a replay fit, the rest stop.
    #[test]
    fn declared_types_widen_fit_or_stop() {
        assert_eq!(widens_to(Kind::Int32, Declared::BigInt), Some(Kind::Int64));
        assert_eq!(
            widens_to(Kind::Float32, Declared::Double),
            Some(Kind::Float64)
        );
        assert_eq!(
            widens_to(Kind::Decimal(10, 2), Declared::Decimal(14, 2)),
            Some(Kind::Decimal(14, 2))
        );
        // A replay of events from before a widening the table has since had.
        assert!(fits(Kind::Int64, Declared::Int));
        assert!(fits(Kind::Decimal(14, 2), Declared::Decimal(10, 2)));
        assert!(fits(Kind::Decimal(12, 4), Declared::Decimal(10, 2)));
        assert!(fits(Kind::Int64, Declared::Decimal(9, 0)));
        // What Iceberg cannot follow.
        assert!(refused(Kind::Decimal(10, 2), Declared::Decimal(12, 4)));
        assert!(refused(Kind::Decimal(10, 2), Declared::Double));
        assert!(refused(Kind::Int32, Declared::Varying(None)));
        assert!(refused(Kind::Text { latin1: false }, Declared::Int));
        assert!(refused(Kind::Int32, Declared::Decimal(12, 2)));
        // Not numbers on either side: not this check's business.
        assert!(fits(
            Kind::Text { latin1: false },
            Declared::Varying(Some(45))
        ));
        assert!(fits(Kind::Date, Declared::Other));
    }
}
