//! A source whose tables come out shaped by their transforms.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lakeshore_api::{
    Error, Lag, Result, Source, SourceEvent, SourcePosition, TableSchema, Transport,
};

use lakeshore_api::{ColumnFilter, ColumnRule};

use crate::{Clock, Mode, TableTransform, TransformSpec, spec_for};

/// A [`Source`] whose tables, batches and schema changes are shaped by the first
/// [`TransformSpec`] matching each table; tables no transform matches pass unchanged.
pub struct Transformed {
    inner: Box<dyn Source>,
    specs: Vec<TransformSpec>,
    /// Compiled transforms by source table (tables no spec matches are absent).
    tables: HashMap<String, TableTransform>,
    /// Tables whose transform failed: the engine was told, nothing more of them passes.
    failed: HashSet<String>,
    /// `_ingested_at` and `_seq`.
    clock: Clock,
}

impl Transformed {
    /// `inner` shaped by `specs`; `inner` itself when there are none. A transform that
    /// does not fit a table, or asks for what the source cannot give, is a
    /// configuration error naming the table and column.
    pub fn wrap(mut inner: Box<dyn Source>, specs: Vec<TransformSpec>) -> Result<Box<dyn Source>> {
        if specs.is_empty() {
            return Ok(inner);
        }
        let mut tables = HashMap::new();
        let known = inner.tables();
        for t in &known {
            if let Some(spec) = spec_for(&specs, &t.name) {
                let compiled = TableTransform::new(spec, t).map_err(Error::config)?;
                tables.insert(t.name.clone(), compiled);
            }
        }
        check_named_columns(&specs, &known)?;
        // Soft deletes take their time from the source where it records it.
        if specs.iter().any(|s| s.mode == Mode::SoftDelete) {
            inner.record_origin();
        }
        if tables.values().any(TableTransform::needs_origin) && !inner.record_origin() {
            return Err(Error::config(
                "this source does not record each change's commit time and position, so \
                     _source_ts and _position cannot be filled; leave them out of `metadata`",
            ));
        }
        Ok(Box::new(Transformed {
            inner,
            specs,
            tables,
            failed: HashSet::new(),
            clock: Clock::default(),
        }))
    }

    /// The next event of the inner source, shaped; `None` when it is to be dropped.
    fn shape(&mut self, event: SourceEvent) -> Option<SourceEvent> {
        match event {
            SourceEvent::Batch(b) if self.failed.contains(b.table.as_ref()) => None,
            SourceEvent::Batch(b) => {
                let Some(t) = self.tables.get(b.table.as_ref()) else {
                    return Some(SourceEvent::Batch(b));
                };
                self.clock.tick();
                match t.apply(&b, &mut self.clock) {
                    Ok(shaped) => shaped.map(SourceEvent::Batch),
                    Err(e) => {
                        Some(self.fail(&b.table, format!("transform of table {}: {e}", b.table)))
                    }
                }
            }
            SourceEvent::SchemaChange(s) if self.failed.contains(&s.name) => None,
            SourceEvent::SchemaChange(s) => match spec_for(&self.specs, &s.name) {
                None => Some(SourceEvent::SchemaChange(s)),
                Some(spec) => match TableTransform::new(spec, &s) {
                    Ok(t) => {
                        let out = t.output().clone();
                        self.tables.insert(s.name.clone(), t);
                        Some(SourceEvent::SchemaChange(out))
                    }
                    Err(e) => Some(self.fail(&s.name, e)),
                },
            },
            SourceEvent::Truncate(t) if self.failed.contains(&t) => None,
            SourceEvent::Truncate(t) => {
                let Some(shaped) = self.tables.get(&t) else {
                    return Some(SourceEvent::Truncate(t));
                };
                // A changelog records the truncation as a row and keeps what it holds.
                self.clock.tick();
                match shaped.truncated(&Arc::from(t.as_str()), &mut self.clock) {
                    Some(row) => Some(SourceEvent::Batch(row)),
                    None => Some(SourceEvent::Truncate(t)),
                }
            }
            other => Some(other),
        }
    }

    fn fail(&mut self, table: &str, message: String) -> SourceEvent {
        tracing::error!(table, error = %message, "transform failed; the table stops");
        self.failed.insert(table.to_string());
        SourceEvent::TableFailed {
            table: table.to_string(),
            message,
        }
    }
}

/// A column named without a glob in `columns` must be in one of the tables its
/// transform matches (the database sources check `exclude` too, against every column the
/// table has, since they never read the excluded ones).
fn check_named_columns(specs: &[TransformSpec], tables: &[TableSchema]) -> Result<()> {
    let rules: Vec<ColumnRule> = specs
        .iter()
        .map(|s| ColumnRule {
            exclude: Vec::new(),
            deleted_values: false,
            before_images: false,
            ..s.column_rule()
        })
        .collect();
    let names: Vec<(String, Vec<String>)> = tables
        .iter()
        .map(|t| {
            let columns = t.schema.fields().iter().map(|f| f.name().clone());
            (t.name.clone(), columns.collect())
        })
        .collect();
    ColumnFilter::new(rules).check_named(names.iter().map(|(t, c)| (t.as_str(), c.as_slice())))
}

#[async_trait::async_trait]
impl Source for Transformed {
    fn tables(&self) -> Vec<TableSchema> {
        self.inner
            .tables()
            .into_iter()
            .filter(|t| !self.failed.contains(&t.name))
            .map(|t| match self.tables.get(&t.name) {
                Some(shaped) => shaped.output().clone(),
                None => t,
            })
            .collect()
    }

    async fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        loop {
            let Some(event) = self.inner.next_event().await? else {
                return Ok(None);
            };
            if let Some(e) = self.shape(event) {
                return Ok(Some(e));
            }
        }
    }

    fn request_barrier(&mut self, id: u64) {
        self.inner.request_barrier(id);
    }

    async fn ack(&mut self, position: &SourcePosition) -> Result<()> {
        self.inner.ack(position).await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }

    fn size_hint(&self) -> Option<u64> {
        self.inner.size_hint()
    }

    fn progress(&self) -> Option<u64> {
        self.inner.progress()
    }

    fn lag(&self) -> Option<Lag> {
        self.inner.lag()
    }

    fn transport(&self) -> Option<Transport> {
        self.inner.transport()
    }

    fn record_origin(&mut self) -> bool {
        self.inner.record_origin()
    }

    fn resnapshot(&mut self, table: &str) -> Result<()> {
        self.inner.resnapshot(table)
    }
}
