//! The `[pipeline]` and `[[route]]` sections, and the reading of a whole pipeline file:
//! its source and sink sections are read by the module their `type` names
//! ([`crate::sources::SOURCES`], [`crate::sinks::SINKS`]).

use std::collections::BTreeMap;
use std::time::Duration;

use lakeshore_api::TableSchema;
use serde::Deserialize;

use super::plan::{Defaulted, Plan, RoutePlan};
use super::transform::{self, TransformSection};
use super::units::{EnvString, HumanDuration, Spanned};
use super::{ConfigError, SourceText, location_url, toml_error};
use crate::sinks::{self, SinkSection};
use crate::sources;

/// `[pipeline]`
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Name of the pipeline; identifies its checkpoints and its commits in the lake
    /// (`lakeshore.pipeline`). Letters, digits, `-` and `_`.
    pub name: Spanned<String>,
    /// How often a checkpoint commits to the lake, e.g. `"10s"`. Default `"10s"`.
    pub checkpoint_interval: Option<Spanned<HumanDuration>>,
    /// Where checkpoint records live: a directory path or `file://` / `s3://` URL.
    /// Default: `state/` next to the Iceberg warehouse directory (with a REST catalog:
    /// `state/` in the working directory).
    pub state: Option<EnvString>,
    /// A table whose writer meets input it cannot take (a type change Iceberg cannot
    /// promote, rows that do not fit the lake table): `"fail"` (default: the pipeline
    /// stops, naming table and column) or `"isolate"` (the table is parked, its reason
    /// shown in `/pipelines`, and the pipeline's other tables go on; the parked table
    /// misses the changes made while parked: once the cause is fixed, re-read it with
    /// `POST /pipelines/{name}/resnapshot`).
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub on_table_error: Option<OnTableError>,
    /// Metadata columns added to every table: `_op`, `_source_ts`, `_position`,
    /// `_source_table`, `_ingested_at` (docs/transforms.md).
    pub metadata: Option<Vec<Spanned<String>>>,
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Source table name or glob (`*` matches any run of characters).
    pub from: Spanned<String>,
    /// Lake table name (without namespace).
    pub to: Spanned<String>,
}

/// `on_table_error` of `[pipeline]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTableError {
    /// The pipeline stops.
    #[default]
    Fail,
    /// The table is parked; the others go on.
    Isolate,
}

/// The sections of a pipeline file, and the `type` of its source and sink.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    pipeline: Option<serde::de::IgnoredAny>,
    source: Option<toml::Spanned<Typed>>,
    sink: Option<toml::Spanned<Typed>>,
    #[allow(dead_code, reason = "read with [pipeline]")]
    route: Option<serde::de::IgnoredAny>,
    #[allow(dead_code, reason = "read with [pipeline]")]
    transform: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
}

/// `[pipeline]` and `[[route]]`.
#[derive(Deserialize)]
struct Common {
    pipeline: PipelineSection,
    #[serde(default)]
    route: Vec<Route>,
    #[serde(default)]
    transform: Vec<TransformSection>,
}

/// The module that reads a section of type `kind`, or the error naming the known ones.
fn lookup<'t, F>(
    src: &SourceText<'_>,
    section: &str,
    typed: Option<toml::Spanned<Typed>>,
    table: &'t [(&str, F)],
    known: &str,
) -> Result<&'t F, ConfigError> {
    let typed = typed.ok_or_else(|| {
        src.error(
            None,
            format!("missing [{section}] section; add one with type = {known}"),
        )
    })?;
    let span = typed.span();
    let kind = typed.into_inner().kind.ok_or_else(|| {
        src.error(
            Some(span),
            format!("[{section}] needs `type`; this build supports {known}"),
        )
    })?;
    table
        .iter()
        .find(|(name, _)| name == kind.get_ref())
        .map(|(_, read)| read)
        .ok_or_else(|| {
            src.error(
                Some(kind.span()),
                format!(
                    "unknown {section} type \"{}\"; this build supports {known}",
                    kind.get_ref()
                ),
            )
        })
}

/// Parse and validate a pipeline file's text.
pub fn parse(src: &SourceText<'_>) -> Result<Plan, ConfigError> {
    let sections: Sections = toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
    if sections.pipeline.is_none() {
        return Err(src.error(
            None,
            "missing [pipeline] section; add one with at least `name = \"...\"`",
        ));
    }
    let read_source = lookup(
        src,
        "source",
        sections.source,
        sources::SOURCES,
        &sources::type_list(),
    )?;
    let read_sink = lookup(
        src,
        "sink",
        sections.sink,
        sinks::SINKS,
        &sinks::type_list(),
    )?;
    let common: Common = toml::from_str(src.text).map_err(|e| toml_error(src, e))?;
    let metadata =
        transform::pipeline_metadata(src, common.pipeline.metadata.as_deref().unwrap_or_default())?;
    let sink = read_sink(src)?;
    let mut shaping = transform::specs(src, &common.transform, &metadata, sink.mode())?;
    for spec in &mut shaping.0 {
        spec.before_images = sink.before_images();
    }
    let columns = lakeshore_transform::column_filter(&shaping.0);
    let source = read_source(src, common.pipeline.name.get_ref(), &columns)?;
    build(src, common, source, sink.as_ref(), shaping)
}

fn build(
    src: &SourceText<'_>,
    raw: Common,
    source: sources::SourcePlan,
    sink: &dyn SinkSection,
    (transforms, transform_spans): (Vec<lakeshore_transform::TransformSpec>, transform::Spans),
) -> Result<Plan, ConfigError> {
    let p = &raw.pipeline;
    let name = p.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(src.error(
            Some(p.name.span()),
            format!("pipeline name \"{name}\" may hold only letters, digits, `-` and `_`"),
        ));
    }
    let checkpoint_interval = match &p.checkpoint_interval {
        None => Duration::from_secs(10),
        Some(d) if d.get_ref().0 < Duration::from_millis(100) => {
            return Err(src.error(
                Some(d.span()),
                "checkpoint_interval must be at least \"100ms\"",
            ));
        }
        Some(d) => d.get_ref().0,
    };

    let isolate_tables = p.on_table_error == Some(OnTableError::Isolate);
    let (sink_plan, default_state) = sink.plan(src, &name)?;
    let state_url = match &p.state {
        Some(s) => location_url(&s.0),
        None => default_state,
    };
    let routes = raw
        .route
        .iter()
        .map(|r| RoutePlan {
            from: r.from.get_ref().clone(),
            to: r.to.get_ref().clone(),
        })
        .collect();
    let plan = Plan {
        name,
        file: src.file.to_path_buf(),
        checkpoint_interval,
        state_url,
        defaulted: Defaulted {
            checkpoint_interval: p.checkpoint_interval.is_none(),
            state: p.state.is_none(),
        },
        isolate_tables,
        source,
        sink: sink_plan,
        routes,
        transforms,
    };
    if let Some(tables) = plan.source.known_tables() {
        let tables = transform::shape_known(src, &plan.transforms, &transform_spans, tables)?;
        let by_target: BTreeMap<String, &TableSchema> = tables
            .iter()
            .map(|t| (plan.target_table(&t.name), t))
            .collect();
        sink.check_tables(src, &plan, &by_target)?;
    }
    Ok(plan)
}
