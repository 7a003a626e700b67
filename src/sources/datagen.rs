//! `[source] type = "datagen"`: the built-in generator (Nexmark, keyed orders).

#[cfg(feature = "bench")]
use std::any::Any;
use std::sync::Arc;

use lakeshore_api::{Ledger, Result, Source, SourcePosition, TableSchema};
use lakeshore_datagen::{DatagenOptions, DatagenSource, Profile};
use serde::Deserialize;

use super::{SourceConnector, SourcePlan, SourceSection};
use crate::config::units::Spanned;
use crate::config::{ConfigError, Plan, SourceText};

/// `[source]` with `type = "datagen"`.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DatagenSection {
    /// `"datagen"`.
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "dispatched on before this struct is parsed")]
    pub kind: String,
    /// Data set: `"nexmark"` (tables person, auction, bid) or `"orders"` (table orders,
    /// keyed by order_id, with inserts, updates and deletes).
    #[cfg_attr(test, schemars(with = "String"))]
    pub profile: Profile,
    /// Number of events; omit for an unbounded stream.
    pub events: Option<u64>,
    /// Events per second; 0 (default) = as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Seed of every random choice. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Events per generated batch. Default 8192.
    pub batch_events: Option<Spanned<u64>>,
    /// `orders` only: the first `initial_rows` events are inserts. Default 0.
    #[serde(default)]
    pub initial_rows: u64,
    /// `orders` only: from this event on, rows carry a new column `note` (a schema
    /// change, to exercise schema evolution).
    pub add_column_at: Option<Spanned<u64>>,
}

impl SourceSection for DatagenSection {
    fn plan(
        &self,
        src: &SourceText<'_>,
        _pipeline: &str,
        _columns: &lakeshore_api::ColumnFilter,
    ) -> Result<SourcePlan, ConfigError> {
        if let (Some(at), Profile::Nexmark) = (&self.add_column_at, self.profile) {
            return Err(src.error(
                Some(at.span()),
                "add_column_at works with profile = \"orders\" only",
            ));
        }
        let batch_events = match &self.batch_events {
            Some(b) if *b.get_ref() == 0 => {
                return Err(src.error(Some(b.span()), "batch_events must be at least 1"));
            }
            Some(b) => *b.get_ref(),
            None => 8192,
        };
        Ok(Arc::new(Datagen(DatagenOptions {
            profile: self.profile,
            events: self.events,
            rate: self.rate,
            seed: self.seed,
            batch_events,
            initial_rows: self.initial_rows,
            add_column_at: self.add_column_at.as_ref().map(|a| *a.get_ref()),
        })))
    }
}

/// The generator's validated options.
#[derive(Debug, Clone)]
pub struct Datagen(pub DatagenOptions);

#[async_trait::async_trait]
impl SourceConnector for Datagen {
    async fn open(
        &self,
        position: Option<&SourcePosition>,
        _bounded: bool,
        _ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Box<dyn Source>> {
        Ok(Box::new(DatagenSource::open(self.0.clone(), position)?))
    }

    async fn check(&self) -> Result<Vec<String>> {
        Ok(vec!["generator source: nothing to connect to".into()])
    }

    async fn held(&self, _plan: &Plan) -> Result<Option<(u64, &'static str)>> {
        Ok(None)
    }

    fn size_hint(&self) -> Option<u64> {
        self.0.events
    }

    fn known_tables(&self) -> Option<Vec<TableSchema>> {
        Some(DatagenSource::schemas(&self.0))
    }

    #[cfg(feature = "bench")]
    fn as_any(&self) -> &dyn Any {
        self
    }
}
