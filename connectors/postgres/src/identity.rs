//! Following tables by identity, not by name: stream changes matched by relation OID
//! (a rename keeps feeding the lake table), and the checks, every status interval, that
//! each followed name still means its OID and that its columns are as the stream last
//! described them (DDL leaves no trace in the stream).

use lakeshore_api::{Error, Result};

use crate::{PostgresSource, SHAPE_MARKER, pg_error};

impl PostgresSource {
    /// The table a stream change of relation `oid`, now named `schema.table`, belongs
    /// to; `None` for relations outside the pipeline and tables it stopped following.
    /// A followed table under a new name was renamed: it goes on feeding its lake table.
    /// Another relation under a followed name replaced it (dropped and created again, or
    /// swapped in by an online schema change): the pipeline restarts, which reads it
    /// again.
    pub(crate) fn table_of(
        &mut self,
        oid: u32,
        schema: &str,
        table: &str,
    ) -> Result<Option<usize>> {
        if let Some(&t) = self.by_oid.get(&oid) {
            let pg = &mut self.tables[t];
            if pg.schema_name != schema || pg.table_name != table {
                tracing::warn!(table = %pg.name, was = %pg.current_name(), now = %format!("{schema}.{table}"), oid, "table renamed at the source: it keeps feeding its lake table");
                pg.schema_name = schema.to_string();
                pg.table_name = table.to_string();
            }
            self.event_table = Some(t);
            return Ok((!self.failed.contains(&t)).then_some(t));
        }
        if self.retired.contains(&oid) {
            return Ok(None);
        }
        let name = format!("{schema}.{table}");
        if let Some(&t) = self.by_name.get(&name)
            && self.tables[t].current_name() == name
        {
            return Err(Error::transient(format!(
                "table {name} is now another relation (oid {oid}, was {}): it was dropped and created again or swapped; restarting to read it again",
                self.tables[t].oid
            )));
        }
        Ok(None)
    }

    /// Whether every followed table is still the relation the stream follows. DROP and
    /// CREATE leave no trace in the stream, and a table created under a followed name is
    /// outside the publication, so its changes would never arrive: a dropped table, or
    /// a followed name that now belongs to another relation, restarts the pipeline,
    /// whose start reads a re-created table again and stops on a dropped one.
    pub(crate) async fn check_identities(&mut self) -> Result<()> {
        let followed: Vec<usize> = (0..self.tables.len())
            .filter(|t| !self.failed.contains(t))
            .collect();
        if followed.is_empty() || self.stream.is_none() {
            return Ok(());
        }
        let oids: Vec<u32> = followed.iter().map(|&t| self.tables[t].oid).collect();
        let names: Vec<String> = followed
            .iter()
            .map(|&t| self.tables[t].name.clone())
            .collect();
        let rows = self
            .client
            .query(
                "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1) \
                    OR (c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY($2))",
                &[&oids, &names],
            )
            .await
            .map_err(|e| pg_error("checking the tables' identities", e))?;
        let found: Vec<(u32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for &t in &followed {
            let table = &self.tables[t];
            let replaced = found
                .iter()
                .find(|(oid, name)| *name == table.name && *oid != table.oid);
            let gone = !found.iter().any(|(oid, _)| *oid == table.oid);
            if replaced.is_some() || gone {
                let what = match replaced {
                    Some((oid, _)) => format!("now names another relation (oid {oid})"),
                    None => "was dropped".to_string(),
                };
                return Err(Error::transient(format!(
                    "table {} (oid {}) {what} at the source; restarting to follow it",
                    table.name, table.oid
                )));
            }
        }
        self.check_new_tables().await
    }

    /// Whether a table created since the start matches `tables` (`shop.*`): CREATE leaves
    /// no trace in the stream and the table is outside the publication, so it restarts
    /// the pipeline, whose start adds it to the publication and reads it whole. Only once
    /// two checks (10 s apart) saw it, so that a table still being set up (a key added
    /// after the CREATE) or dropped again at once does not restart anything; temporary
    /// tables are never followed.
    async fn check_new_tables(&mut self) -> Result<()> {
        let all: Vec<u32> = self.tables.iter().map(|t| t.oid).collect();
        let rows = self
            .client
            .query(
                "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                   AND c.relpersistence <> 't' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND NOT (c.oid = ANY($1))",
                &[&all],
            )
            .await
            .map_err(|e| pg_error("looking for new tables", e))?;
        let matching: Vec<(u32, String)> = rows
            .iter()
            .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
            .filter(|(_, name)| {
                !self.by_name.contains_key(name)
                    && self
                        .opts
                        .tables
                        .iter()
                        .any(|p| crate::discover::glob_match(p, name))
            })
            .collect();
        let seen_before = std::mem::take(&mut self.new_tables);
        self.new_tables = matching.iter().map(|(oid, _)| *oid).collect();
        match matching.iter().find(|(oid, _)| seen_before.contains(oid)) {
            Some((_, name)) => Err(Error::transient(format!(
                "table {name} was created at the source and matches [source] tables; restarting to read it"
            ))),
            None => Ok(()),
        }
    }

    /// Whether a followed table's catalog columns differ from the shape the stream last
    /// described (a column renamed or added, and no row changed since, so no Relation
    /// message shows it). The catalog may be ahead of the stream: for such a table a
    /// transactional marker is written, and when the stream reads it back the catalog
    /// is compared again and followed ([`PostgresSource::follow_catalog_shape`]).
    pub(crate) async fn check_shapes(&mut self) -> Result<()> {
        let oids: Vec<u32> = (0..self.tables.len())
            .filter(|t| !self.failed.contains(t))
            .map(|t| self.tables[t].oid)
            .filter(|oid| !self.shape_marked.contains(oid))
            .collect();
        if oids.is_empty() || self.stream.is_none() {
            return Ok(());
        }
        let rows = self
            .client
            .query(
                "SELECT attrelid, array_agg(attname::text ORDER BY attnum) FROM pg_attribute \
                 WHERE attrelid = ANY($1) AND attnum > 0 AND NOT attisdropped GROUP BY attrelid",
                &[&oids],
            )
            .await
            .map_err(|e| pg_error("reading the tables' columns", e))?;
        for row in rows {
            let oid: u32 = row.get(0);
            let names: Vec<String> = row.get(1);
            let Some(&t) = self.by_oid.get(&oid) else {
                continue;
            };
            let table = &self.tables[t];
            let names: Vec<String> = names.into_iter().filter(|n| table.reads(n)).collect();
            if self.position.columns.get(&self.tables[t].name) == Some(&names) {
                continue;
            }
            self.client
                .query_one(
                    "SELECT pg_logical_emit_message(true, 'lakeshore', $1)::text",
                    &[&format!("{SHAPE_MARKER}{oid}")],
                )
                .await
                .map_err(|e| pg_error("writing a shape marker", e))?;
            self.shape_marked.insert(oid);
        }
        Ok(())
    }
}
