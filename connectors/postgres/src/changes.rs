//! Stream events → change batches: which changes pass the snapshot's windows, row images
//! into Arrow builders (unchanged TOAST values filled in), and Relation messages as
//! schema changes.

use std::sync::Arc;

use lakeshore_api::{ChangeBatch, Error, Op, Result, SourceEvent};
use pg_walstream::{ChangeEvent, ColumnValue, EventType, ReplicaIdentity, RowData};
use smallvec::SmallVec;

use crate::discover::{self, quote_ident};
use crate::snapshot::{Key, compare_keys};
use crate::types::{self, RowsBuilder};
use crate::{Pending, PostgresSource, Progress, SHAPE_MARKER, column_exists, pg_error, type_kind};

impl PostgresSource {
    /// Whether a change to `key` of table `t` by transaction `xid` is emitted.
    pub(crate) fn passes(&mut self, t: usize, key: &[String], xid: u32) -> bool {
        let table = &self.tables[t];
        let read = match self.position.tables.get(&table.name) {
            Some(Progress::Done) => true,
            Some(Progress::After(k)) => compare_keys(table, key, k).is_le(),
            None => false,
        };
        if !read {
            self.dropped[t].insert(xid);
            return false;
        }
        !self.position.windows.iter().any(|w| {
            w.table == table.name
                && w.from
                    .as_ref()
                    .is_none_or(|f| compare_keys(table, key, f).is_gt())
                && w.to
                    .as_ref()
                    .is_none_or(|to| compare_keys(table, key, to).is_le())
                && w.vis.sees(xid)
        })
    }

    /// The stream passed `lsn`: windows whose reads ended before it are closed.
    pub(crate) fn passed(&mut self, lsn: u64) {
        self.position.windows.retain(|w| w.high > lsn);
    }

    pub(crate) fn key_of(&self, t: usize, row: &RowData) -> Result<Key> {
        let table = &self.tables[t];
        table
            .key
            .iter()
            .map(|&k| {
                let name = &table.columns[k].name;
                match row.get(name) {
                    Some(ColumnValue::Text(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                    Some(ColumnValue::Binary(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                    _ => Err(Error::config(format!(
                        "table {}: a change arrived without key column {name}; set \
                             REPLICA IDENTITY FULL or give the table a primary key",
                        table.name
                    ))),
                }
            })
            .collect()
    }

    /// Append one row image with `op`. `base` fills columns the new image leaves out
    /// (unchanged TOAST values) when the old image has them. An old image (a delete's,
    /// or an update's that changed the key) has the row's values under REPLICA IDENTITY
    /// FULL — soft deletes and changelogs show them — and else its key and nulls.
    pub(crate) fn push_row(
        &mut self,
        t: usize,
        op: Op,
        row: &RowData,
        base: Option<&RowData>,
    ) -> Result<()> {
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
        let cols = &self.columns[t];
        // The image's values by column position, in one pass over the image.
        let mut given: SmallVec<[Option<&ColumnValue>; 32]> =
            smallvec::smallvec![None; table.columns.len()];
        for (name, value) in row.iter() {
            let Some(&i) = cols.get(name.as_ref()) else {
                continue;
            };
            given[i] = Some(value);
        }
        for (i, col) in table.columns.iter().enumerate() {
            let value = if given[i].is_none() {
                if op.removes() || !self.live[t][i] {
                    None
                } else {
                    match base.and_then(|b| b.get(&col.name)) {
                        Some(v) => Some(v),
                        None => {
                            return Err(Error::unsupported(format!(
                                "table {}, column {}: an update left this (TOASTed) value \
                                     out and the old image does not carry it; run ALTER TABLE \
                                     {} REPLICA IDENTITY FULL",
                                table.name,
                                col.name,
                                table.quoted()
                            )));
                        }
                    }
                }
            } else {
                given[i]
            };
            let builder = &mut pending.rows;
            match value {
                None | Some(ColumnValue::Null) => builder.append_null(i),
                Some(ColumnValue::Text(b)) | Some(ColumnValue::Binary(b)) => {
                    let s = std::str::from_utf8(b).map_err(|_| {
                        Error::unsupported(format!(
                            "table {}, column {}: value is not UTF-8",
                            table.name, col.name
                        ))
                    })?;
                    builder.append_text(i, s).map_err(|m| {
                        Error::unsupported(format!(
                            "table {}, column {}: {m}",
                            table.name, col.name
                        ))
                    })?;
                }
            }
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
            let table = &self.tables[t];
            p.rows.report_nulled(&table.name, &table.column_names());
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

    /// A transaction begins: its changes carry its commit time (µs) and commit LSN when
    /// origins are recorded.
    fn begin(&mut self, xid: u32, commit_lsn: u64, commit_micros: i64) {
        self.xid = Some(xid);
        if self.record_origin {
            self.txn_origin = Some((commit_micros, crate::server::format_lsn(commit_lsn)));
        }
    }

    /// A logical decoding message at `lsn`: lakeshore's end marker or shape marker.
    async fn on_message(&mut self, lsn: u64, content: &[u8]) -> Result<()> {
        if self.xid.is_none() {
            self.position.lsn = self.position.lsn.max(lsn);
        }
        self.passed(lsn);
        if let Some((marker, seen)) = &mut self.end_marker
            && content == marker.as_bytes()
        {
            // Transactional: the run ends at the marker transaction's commit.
            *seen = true;
        }
        if let Some(oid) = std::str::from_utf8(content)
            .ok()
            .and_then(|c| c.strip_prefix(SHAPE_MARKER))
            .and_then(|oid| oid.parse::<u32>().ok())
        {
            self.shape_marked.remove(&oid);
            if let Some(&t) = self.by_oid.get(&oid) {
                self.follow_catalog_shape(t).await?;
            }
        }
        Ok(())
    }

    /// Handle one replication event.
    pub(crate) async fn on_event(&mut self, ev: ChangeEvent) -> Result<()> {
        match ev.event_type {
            EventType::Begin {
                transaction_id,
                final_lsn,
                commit_timestamp,
            } => self.begin(
                transaction_id,
                final_lsn.0,
                commit_timestamp.timestamp_micros(),
            ),
            EventType::Commit {
                end_lsn,
                commit_timestamp,
                ..
            } => {
                self.last_commit = Some(commit_timestamp.into());
                self.xid = None;
                self.position.lsn = end_lsn.0;
                self.passed(end_lsn.0);
                if self.end_marker.as_ref().is_some_and(|(_, seen)| *seen) {
                    self.finished = true;
                }
            }
            EventType::Message {
                message_lsn,
                content,
                ..
            } => self.on_message(message_lsn.0, &content).await?,
            EventType::Insert {
                schema,
                table,
                relation_oid,
                data,
            } => self.row_change(relation_oid, &schema, &table, Op::Insert, &data)?,
            EventType::Update {
                schema,
                table,
                relation_oid,
                old_data,
                new_data,
                replica_identity,
                ..
            } => {
                self.on_update(
                    relation_oid,
                    &schema,
                    &table,
                    old_data.as_ref(),
                    &new_data,
                    replica_identity,
                )
                .await?
            }
            EventType::Delete {
                schema,
                table,
                relation_oid,
                old_data,
                ..
            } => self.row_change(relation_oid, &schema, &table, Op::Delete, &old_data)?,
            EventType::Truncate { tables, .. } => {
                // Named as they are now (a Relation message precedes a renamed one's).
                for name in tables {
                    if let Some(t) = (0..self.tables.len())
                        .find(|&t| self.tables[t].current_name() == name.as_ref())
                        && !self.failed.contains(&t)
                    {
                        self.truncate(t)?;
                    }
                }
            }
            EventType::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let Some(t) = self.table_of(relation_id, &namespace, &relation_name)? else {
                    return Ok(());
                };
                self.on_relation(t, &columns).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// An `UPDATE`: a changed key removes the old row first; the new image is completed
    /// from the old one (REPLICA IDENTITY FULL) or read for columns the message left out
    /// (unchanged TOASTed values).
    async fn on_update(
        &mut self,
        relation_oid: u32,
        schema: &str,
        table: &str,
        old_data: Option<&RowData>,
        new_data: &RowData,
        replica_identity: ReplicaIdentity,
    ) -> Result<()> {
        let Some(t) = self.table_of(relation_oid, schema, table)? else {
            return Ok(());
        };
        let xid = self.xid.unwrap_or(0);
        let new_key = self.key_of(t, new_data)?;
        if let Some(old) = old_data {
            let old_key = self.key_of(t, old)?;
            let before =
                old_key != new_key || self.opts.columns.needs_before_images(&self.tables[t].name);
            if before && self.passes(t, &old_key, xid) {
                self.push_row(t, Op::UpdateBefore, old, None)?;
            }
        }
        if self.passes(t, &new_key, xid) {
            // Only a full old image ('O', REPLICA IDENTITY FULL) has values; a
            // key image ('K') carries nulls for the columns outside the key.
            let full_old = old_data.filter(|_| matches!(replica_identity, ReplicaIdentity::Full));
            let base = match self.unchanged_columns(t, new_data, full_old) {
                missing if missing.is_empty() => full_old.cloned(),
                missing => Some(self.current_values(t, &new_key, &missing).await?),
            };
            self.push_row(t, Op::UpdateAfter, new_data, base.as_ref())?;
        }
        Ok(())
    }

    /// The source cannot go on with table `t` (a change or value it cannot read): its
    /// unflushed rows are dropped, nothing of it is read from then on, and the engine is
    /// told, which fails the pipeline or parks the table (`on_table_error = "isolate"`).
    pub(crate) fn fail_table(&mut self, t: usize, error: Error) {
        tracing::error!(table = %self.tables[t].name, %error, "the source stops following the table");
        self.pending[t] = None;
        self.dropped[t].clear();
        self.failed.insert(t);
        self.out.push_back(SourceEvent::TableFailed {
            table: self.tables[t].name.clone(),
            message: error.to_string(),
        });
    }

    /// `TRUNCATE` of table `t`: the rows before it (sent first) are gone in the lake.
    /// A table not fully read, or with a chunk read whose window is still open (that read
    /// may already show the table after the truncation), starts its snapshot over: its
    /// next chunk must see the truncation, like any transaction whose changes were dropped
    /// as not yet read, and no barrier falls until that chunk is read.
    pub(crate) fn truncate(&mut self, t: usize) -> Result<()> {
        let name = self.tables[t].name.clone();
        self.flush_table(t)?;
        self.out.push_back(SourceEvent::Truncate(name.clone()));
        let done = self.position.tables.get(&name) == Some(&Progress::Done);
        let open_window = self.position.windows.iter().any(|w| w.table == name);
        tracing::info!(table = %name, resnapshot = !done || open_window, "truncated at the source");
        if !done || open_window {
            self.position.tables.remove(&name);
            self.position.windows.retain(|w| w.table != name);
            self.dropped[t].insert(self.xid.unwrap_or(0));
            self.read_again();
        }
        Ok(())
    }

    /// An insert or a delete of `schema.table`, if it passes.
    pub(crate) fn row_change(
        &mut self,
        oid: u32,
        schema: &str,
        table: &str,
        op: Op,
        row: &RowData,
    ) -> Result<()> {
        let Some(t) = self.table_of(oid, schema, table)? else {
            return Ok(());
        };
        let key = self.key_of(t, row)?;
        if self.passes(t, &key, self.xid.unwrap_or(0)) {
            self.push_row(t, op, row, None)?;
        }
        Ok(())
    }

    /// Columns of the current relation that an update's new image left out (unchanged
    /// TOAST values) and its old image (REPLICA IDENTITY FULL) does not carry either.
    pub(crate) fn unchanged_columns(
        &self,
        t: usize,
        new: &RowData,
        old: Option<&RowData>,
    ) -> Vec<usize> {
        self.tables[t]
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                self.live[t][*i]
                    && new.get(&c.name).is_none()
                    && old.is_none_or(|o| o.get(&c.name).is_none())
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The current values of `columns` for `key`, read from the table. Used for unchanged
    /// TOAST values under REPLICA IDENTITY DEFAULT: a later change of such a column carries
    /// its new value, so the lake converges to the source (a checkpoint in between may show
    /// a value newer than the update's own). REPLICA IDENTITY FULL avoids the query.
    pub(crate) async fn current_values(
        &self,
        t: usize,
        key: &[String],
        columns: &[usize],
    ) -> Result<RowData> {
        let table = &self.tables[t];
        let select: Vec<String> = columns
            .iter()
            .map(|&i| format!("{}::text", quote_ident(&table.columns[i].name)))
            .collect();
        let filter: Vec<String> = table
            .key
            .iter()
            .zip(key)
            .map(|(&k, v)| {
                format!(
                    "{} = {}",
                    quote_ident(&table.columns[k].name),
                    discover::quote_literal(v)
                )
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            select.join(", "),
            table.quoted(),
            filter.join(" AND ")
        );
        let messages = self
            .client
            .simple_query(&sql)
            .await
            .map_err(|e| pg_error("reading unchanged TOAST values", e))?;
        let mut data = RowData::with_capacity(columns.len());
        let row = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        tracing::debug!(table = %table.name, ?key, found = row.is_some(), "read unchanged TOAST values");
        for (j, &i) in columns.iter().enumerate() {
            let value = match row.and_then(|r| r.get(j)) {
                Some(v) => ColumnValue::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
                None => ColumnValue::Null,
            };
            data.push(Arc::from(table.columns[i].name.as_str()), value);
        }
        Ok(data)
    }

    /// A Relation message: the stream's view of the table's columns from here on. New
    /// columns are added to the lake table (a schema change after the rows before it);
    /// dropped ones stay in the lake and read as null; a type widened the way Iceberg
    /// allows is widened in the lake; any other type change is refused.
    /// A Relation message: the table's columns as of this point of the stream. Compared
    /// with the previous shape (kept in the position, so a restart compares with what
    /// the lake was written with): a renamed column, or an added one whose existing
    /// rows got values without WAL (a `DEFAULT`, `NOT NULL`, a generated column), makes
    /// the table be read again — the lake would otherwise keep nulls or stale values.
    pub(crate) async fn on_relation(
        &mut self,
        t: usize,
        columns: &[pg_walstream::RelationColumn],
    ) -> Result<()> {
        // Only the columns the pipeline reads count: the others are not followed.
        let columns: Vec<pg_walstream::RelationColumn> = columns
            .iter()
            .filter(|c| self.tables[t].reads(&c.name))
            .cloned()
            .collect();
        let columns = &columns[..];
        let now: Vec<String> = columns.iter().map(|c| c.name.to_string()).collect();
        let name = self.tables[t].name.clone();
        let before = self.position.columns.insert(name.clone(), now.clone());
        self.follow_columns(t, columns).await?;
        let Some(before) = before.filter(|b| *b != now) else {
            return Ok(());
        };
        if self.failed.contains(&t) {
            return Ok(());
        }
        // Names alone cannot tell a rename from a drop and an add (a drop shifts the
        // positions): columns that went while others came may be renamed ones.
        let removed: Vec<&String> = before.iter().filter(|b| !now.contains(b)).collect();
        let added: Vec<&String> = now.iter().filter(|n| !before.contains(n)).collect();
        let why = if !removed.is_empty() && !added.is_empty() {
            Some(format!(
                "columns {removed:?} went and {added:?} came (renamed, perhaps)"
            ))
        } else if added.is_empty() {
            None
        } else {
            let filled: Vec<String> = self
                .client
                .query(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 \
                     AND attname = ANY($2) AND NOT attisdropped \
                     AND (atthasdef OR atthasmissing OR attnotnull OR attgenerated <> '')",
                    &[&self.tables[t].oid, &added],
                )
                .await
                .map_err(|e| pg_error("reading added columns", e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            (!filled.is_empty()).then(|| {
                format!(
                    "column {} was added with values for the existing rows",
                    filled.join(", ")
                )
            })
        };
        if let Some(why) = why {
            tracing::warn!(table = %name, change = %why, "the table's existing rows changed without WAL: reading it again");
            lakeshore_api::Source::resnapshot(self, &name)?;
        }
        Ok(())
    }

    /// Table `t`'s columns as the catalog has them now, in the form of a Relation
    /// message's.
    async fn catalog_columns(&self, t: usize) -> Result<Vec<pg_walstream::RelationColumn>> {
        let table = &self.tables[t];
        let rows = self
            .client
            .query(
                "SELECT attname::text, atttypid, atttypmod FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&table.oid],
            )
            .await
            .map_err(|e| pg_error("reading the table's columns", e))?;
        Ok(rows
            .iter()
            .filter(|r| table.reads(r.get(0)))
            .map(|r| {
                let name: String = r.get(0);
                pg_walstream::RelationColumn {
                    is_key: table.key.iter().any(|&k| table.columns[k].name == name),
                    name: name.into(),
                    type_id: r.get(1),
                    type_modifier: r.get(2),
                }
            })
            .collect())
    }

    /// The stream read back a shape marker of table `t` (see
    /// [`PostgresSource::check_shapes`]): every DDL committed before the marker is behind
    /// the stream, so the catalog's columns are as current as the stream. A difference
    /// from the last Relation message is a column change that no row change has shown
    /// yet (logical decoding carries no DDL): it is followed as a Relation message would
    /// be.
    pub(crate) async fn follow_catalog_shape(&mut self, t: usize) -> Result<()> {
        if self.failed.contains(&t) {
            return Ok(());
        }
        let columns = self.catalog_columns(t).await?;
        if columns.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = columns.iter().map(|c| c.name.to_string()).collect();
        if self.position.columns.get(&self.tables[t].name) != Some(&names) {
            self.event_table = Some(t);
            self.on_relation(t, &columns).await?;
        }
        Ok(())
    }

    async fn follow_columns(
        &mut self,
        t: usize,
        columns: &[pg_walstream::RelationColumn],
    ) -> Result<()> {
        let mut added = Vec::new();
        let mut widened = Vec::new();
        for c in columns {
            let name = c.name.to_string();
            let kind = if self.opts.columns.as_text(&self.tables[t].name, &name) {
                Some(types::Kind::Text)
            } else {
                type_kind(&self.client, c.type_id, c.type_modifier)
                    .await
                    .map(|k| self.opts.arrays.kind(k))
            };
            match self.columns[t].get(&name) {
                Some(&i) => {
                    let col = &self.tables[t].columns[i];
                    match kind {
                        Some(k) if k == col.kind => {}
                        Some(k) if col.kind.widens_to(k) => widened.push((i, k, c)),
                        // Widened since: an old Relation message replayed after a restart
                        // (its values decode as the wider type).
                        Some(k) if k.widens_to(col.kind) => {}
                        _ => {
                            let message = format!(
                                "table {}, column {name}: its type changed from {} in a way \
                                 Iceberg cannot follow (it widens int to bigint, real to \
                                 double precision and numeric precision only). Re-snapshot \
                                 the table with a new pipeline name",
                                self.tables[t].name, col.type_name
                            );
                            // Rows before the change have the old shape and stand.
                            self.flush_table(t)?;
                            self.fail_table(t, Error::unsupported(message));
                            return Ok(());
                        }
                    }
                }
                None if !column_exists(&self.client, &self.tables[t], &name).await? => {
                    // Dropped again since: an old Relation message replayed after a restart.
                }
                None => {
                    let kind = kind.ok_or_else(|| {
                        Error::unsupported(format!(
                            "table {}, column {name}: added with a type lakeshore does not \
                                 map (type oid {})",
                            self.tables[t].name, c.type_id
                        ))
                    })?;
                    added.push(discover::PgColumn {
                        name,
                        type_name: format!("oid {}", c.type_id),
                        kind,
                        // Snapshot chunks never read it: a chunk that finds the column
                        // restarts the pipeline, which discovers it properly.
                        raw: false,
                        order: None,
                    });
                }
            }
        }
        let present: std::collections::HashSet<&str> =
            columns.iter().map(|c| c.name.as_ref()).collect();
        if added.is_empty() && widened.is_empty() {
            for (i, col) in self.tables[t].columns.iter().enumerate() {
                self.live[t][i] = present.contains(col.name.as_str());
            }
            return Ok(());
        }
        // Rows buffered so far have the old shape.
        self.flush_table(t)?;
        for (i, kind, c) in widened {
            let type_name: String = self
                .client
                .query_one(
                    "SELECT format_type($1::int8::oid, $2)",
                    &[&(c.type_id as i64), &c.type_modifier],
                )
                .await
                .map_err(|e| pg_error("reading a column type", e))?
                .get(0);
            let table = &mut self.tables[t];
            let col = &mut table.columns[i];
            tracing::info!(table = %table.name, column = %col.name, from = %col.type_name, to = %type_name, "column type widened");
            col.kind = kind;
            col.type_name = type_name;
        }
        let table = &mut self.tables[t];
        for col in added {
            tracing::info!(table = %table.name, column = %col.name, "column added");
            self.columns[t].insert(col.name.clone(), table.columns.len());
            table.columns.push(col);
        }
        self.live[t] = table
            .columns
            .iter()
            .map(|c| present.contains(c.name.as_str()))
            .collect();
        let pairs: Vec<(String, types::Kind)> = table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind))
            .collect();
        table.schema.schema = types::arrow_schema(&pairs, &table.schema.key);
        self.out
            .push_back(SourceEvent::SchemaChange(table.schema.clone()));
        Ok(())
    }
}
