//! Sources by `type`. Each module holds its `[source]` section (what the user writes;
//! its doc comments are the reference in `docs/config.md`), the validation of that
//! section into the connector's options, and what the binary asks of the connector at
//! run time ([`SourceConnector`]). [`SOURCES`] maps each `type` to its module: a new
//! source is a module here, a line there, and its own crate.

#[cfg(feature = "bench")]
use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use lakeshore_api::{ColumnFilter, Ledger, Result, Source, SourcePosition, TableSchema};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::units::Spanned;
use crate::config::{ConfigError, Plan, SourceText, toml_error};

pub mod datagen;
pub mod kafka;
pub mod mysql;
pub mod postgres;

/// A `[source]` section, read: its validation into a runnable source.
pub trait SourceSection {
    /// The validated source of pipeline `pipeline`.
    /// `columns`: the source columns the pipeline's transforms keep (database sources
    /// never read the others).
    fn plan(
        &self,
        src: &SourceText<'_>,
        pipeline: &str,
        columns: &ColumnFilter,
    ) -> Result<SourcePlan, ConfigError>;
}

/// A validated source: what the binary asks of it.
#[async_trait::async_trait]
pub trait SourceConnector: Debug + Send + Sync + 'static {
    /// Open it at `position`. `bounded` (`backfill`): stop once caught up with what
    /// existed at the start. `ledger`: the lake's record of what was committed, for
    /// sources that must agree with it while running (Kafka's scale-out).
    async fn open(
        &self,
        position: Option<&SourcePosition>,
        bounded: bool,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Box<dyn Source>>;

    /// `validate --connect`: check the server without changing anything; one line per
    /// finding.
    async fn check(&self) -> Result<Vec<String>>;

    /// What the source keeps for this pipeline while it is stopped, in bytes, and what
    /// it is (see [`held_at_source`]).
    async fn held(&self, _plan: &Plan) -> Result<Option<(u64, &'static str)>> {
        Ok(None)
    }

    /// Total events of a bounded source, when known.
    fn size_hint(&self) -> Option<u64> {
        None
    }

    /// Tables it produces, when known without connecting.
    fn known_tables(&self) -> Option<Vec<TableSchema>> {
        None
    }

    /// True when several processes share it (Kafka `scale_out`).
    fn scale_out(&self) -> bool {
        false
    }

    /// For the benchmark commands, which need one source's own options.
    #[cfg(feature = "bench")]
    fn as_any(&self) -> &dyn Any;
}

/// A validated source, shared by the runs of its pipeline.
pub type SourcePlan = Arc<dyn SourceConnector>;

/// Reads the `[source]` section of a pipeline file as one type and validates it.
type ReadSource = fn(&SourceText<'_>, &str, &ColumnFilter) -> Result<SourcePlan, ConfigError>;

/// Every source `type`, and how its section is read.
pub const SOURCES: &[(&str, ReadSource)] = &[
    ("datagen", read::<datagen::DatagenSection>),
    ("postgres", read::<postgres::PostgresSection>),
    ("mysql", read::<mysql::MysqlSection>),
    ("kafka", read::<kafka::KafkaSection>),
];

/// The `type`s of [`SOURCES`], quoted, for messages.
pub fn type_list() -> String {
    let names: Vec<String> = SOURCES.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    names.join(", ")
}

fn read<S: SourceSection + DeserializeOwned>(
    src: &SourceText<'_>,
    pipeline: &str,
    columns: &ColumnFilter,
) -> Result<SourcePlan, ConfigError> {
    #[derive(Deserialize)]
    struct Part<S> {
        source: S,
    }
    let part: Part<S> = toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
    part.source.plan(src, pipeline, columns)
}

/// What the source keeps for a stopped pipeline, in bytes, and what it is: a PostgreSQL
/// slot's WAL (it piles up until the pipeline resumes or the slot is dropped), or the
/// binlog MySQL wrote since the last checkpoint (purged by the server's own expiry,
/// after which a new snapshot is needed). `None` for sources that keep nothing for a
/// pipeline, or before its first checkpoint.
pub async fn held_at_source(plan: &Plan) -> Result<Option<(u64, &'static str)>> {
    plan.source.held(plan).await
}

/// Tables must be named with their schema or database: `"public.orders"`.
fn check_qualified(
    src: &SourceText<'_>,
    tables: &[Spanned<String>],
    container: &str,
    example: &str,
) -> Result<(), ConfigError> {
    if tables.is_empty() {
        return Err(src.error(
            None,
            format!(
                "[source] tables is empty; list tables as \"{container}.table\", e.g. tables = [\"{example}.orders\"]"
            ),
        ));
    }
    for t in tables {
        if !t.get_ref().contains('.') {
            return Err(src.error(
                Some(t.span()),
                format!(
                    "table \"{}\" needs its {container}: write \"{example}.{}\"",
                    t.get_ref(),
                    t.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// `chunk_size` (default 20000) and `parallelism` (default 2) of a database source.
fn chunking(
    src: &SourceText<'_>,
    chunk_size: &Option<Spanned<u64>>,
    parallelism: &Option<Spanned<u64>>,
) -> Result<(usize, usize), ConfigError> {
    let chunk_size = match chunk_size {
        Some(c) if *c.get_ref() < 100 => {
            return Err(src.error(Some(c.span()), "chunk_size must be at least 100"));
        }
        Some(c) => *c.get_ref() as usize,
        None => 20_000,
    };
    let parallelism = match parallelism {
        Some(p) if !(1..=64).contains(p.get_ref()) => {
            return Err(src.error(Some(p.span()), "parallelism must be between 1 and 64"));
        }
        Some(p) => *p.get_ref() as usize,
        None => 2,
    };
    Ok((chunk_size, parallelism))
}
