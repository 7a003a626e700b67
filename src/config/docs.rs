//! `docs/config.md` is rendered from the JSON schemas of the section types (their doc
//! comments, serde names and defaults, through `schemars`); this test fails when the
//! file and the types drift apart. Regenerate with
//! `LAKESHORE_BLESS=1 cargo test config_reference`.

use std::path::Path;

use schemars::{JsonSchema, Schema};
use serde_json::Value;

use super::daemon::{AuthSection, DaemonFile, RestartSection, TlsSection};
use super::pipeline::{PipelineSection, Route};
use super::transform::TransformSection;
use crate::sinks::hive::HiveSection;
use crate::sinks::iceberg::{
    CatalogSection, CompactWhenSection, IcebergSection, MaintenanceSection,
};
use crate::sources::datagen::DatagenSection;
use crate::sources::kafka::{KafkaSection, WatermarkSection};
use crate::sources::mysql::MysqlSection;
use crate::sources::postgres::PostgresSection;
use crate::{sinks, sources};

/// Whitespace of a doc comment folded into one line, safe in a table cell.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// One section: a heading from the first sentence of the type's doc comment, the rest
/// as a paragraph, then one row per key (`type` first, then by name).
fn section(out: &mut String, schema: Schema) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    // schemars names the type in `title`; the doc comment is the description.
    let doc = one_line(&text(schema.get("description")));
    let (title, rest) = doc.split_once(". ").unwrap_or((doc.as_str(), ""));
    out.push_str(&format!("\n## {}\n\n", title.trim_end_matches(['.', ':'])));
    if !rest.is_empty() {
        out.push_str(&format!("{rest}\n\n"));
    }
    out.push_str("| key | meaning |\n|---|---|\n");
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(Value::Object(properties)) = schema.get("properties") else {
        panic!("{title} has no keys");
    };
    let mut keys: Vec<&String> = properties.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "type", k.as_str()));
    for key in keys {
        let p = &properties[key];
        let mut meaning = one_line(&format!(
            "{} {}",
            text(p.get("title")),
            text(p.get("description"))
        ));
        assert!(!meaning.is_empty(), "`{key}` of {title} has no doc comment");
        if required.contains(&key.as_str()) && key != "type" {
            meaning.push_str(" Required.");
        }
        out.push_str(&format!("| `{key}` | {meaning} |\n"));
    }
}

fn schema<T: JsonSchema>() -> Schema {
    schemars::SchemaGenerator::default().into_root_schema_for::<T>()
}

/// The reference: the sections of a pipeline file, then those of the daemon file.
fn render() -> String {
    let mut out = String::from(
        "# Pipeline file reference\n\n<!-- generated from the section types (src/config, src/sources, src/sinks) by a test; do not edit by hand -->\n\n\
         Values may reference environment variables as `${NAME}`; durations take units \
         (`\"500ms\"`, `\"10s\"`), sizes too (`\"128MiB\"`).\n",
    );
    out.push_str(&format!(
        "\nA pipeline file has the sections `[pipeline]` (name and checkpointing), `[source]` \
         (where changes come from; `type` = {}), `[sink]` (where they land; `type` = {}) and \
         any number of `[[route]]` (renames, e.g. to merge sharded tables into one) and \
         `[[transform]]` (how rows are shaped: docs/transforms.md).\n",
        sources::type_list(),
        sinks::type_list()
    ));
    for s in [
        schema::<PipelineSection>(),
        schema::<Route>(),
        schema::<TransformSection>(),
        schema::<DatagenSection>(),
        schema::<PostgresSection>(),
        schema::<MysqlSection>(),
        schema::<KafkaSection>(),
        schema::<WatermarkSection>(),
        schema::<IcebergSection>(),
        schema::<CatalogSection>(),
        schema::<MaintenanceSection>(),
        schema::<CompactWhenSection>(),
        schema::<HiveSection>(),
        schema::<DaemonFile>(),
        schema::<AuthSection>(),
        schema::<TlsSection>(),
        schema::<RestartSection>(),
    ] {
        section(&mut out, s);
    }
    out
}

#[test]
fn config_reference_is_up_to_date() {
    let rendered = render();
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
    if std::env::var_os("LAKESHORE_BLESS").is_some() {
        std::fs::write(&doc_path, &rendered).unwrap();
    }
    // A connector added to a table but not to the reference fails here.
    for (name, _) in sources::SOURCES {
        let heading = format!("## `[source]` with `type = \"{name}\"`");
        assert!(
            rendered.contains(&heading),
            "docs/config.md lacks {heading}"
        );
    }
    for (name, _) in sinks::SINKS {
        let heading = format!("## `[sink]` with `type = \"{name}\"`");
        assert!(
            rendered.contains(&heading),
            "docs/config.md lacks {heading}"
        );
    }
    let current = std::fs::read_to_string(&doc_path).unwrap_or_default();
    assert!(
        current == rendered,
        "docs/config.md is stale; run LAKESHORE_BLESS=1 cargo test config_reference"
    );
}
