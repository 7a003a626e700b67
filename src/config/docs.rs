//! `docs/config.md` is generated from the doc comments of `config/raw.rs`; this test
//! fails when they drift apart. Regenerate with `LAKESHORE_BLESS=1 cargo test config_reference`.

use std::path::Path;

/// The reference, rendered from `raw.rs`: one table per struct or enum, one row per
/// field or variant, from their doc comments.
fn render(raw: &str) -> String {
    let mut out = String::from(
        "# Pipeline file reference\n\n<!-- generated from src/config/raw.rs by a test; do not edit by hand -->\n\n\
         Values may reference environment variables as `${NAME}`; durations take units \
         (`\"500ms\"`, `\"10s\"`), sizes too (`\"128MiB\"`).\n",
    );
    let mut doc: Vec<String> = Vec::new();
    for line in raw.lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.trim().to_string());
            continue;
        }
        if t.starts_with("#[") {
            continue;
        }
        doc.retain(|d| !d.is_empty());
        let text = doc.join(" ").replace('|', "\\|");
        if t.starts_with("pub struct ") || t.starts_with("pub enum ") {
            let (title, rest) = text.split_once(". ").unwrap_or((text.as_str(), ""));
            let title = title.trim_end_matches(['.', ':']);
            let header = if t.starts_with("pub enum") {
                "value"
            } else {
                "key"
            };
            out.push_str(&format!("\n## {title}\n\n"));
            if !rest.is_empty() {
                out.push_str(&format!("{rest}\n\n"));
            }
            out.push_str(&format!("| {header} | meaning |\n|---|---|\n"));
        } else if let Some(rest) = t.strip_prefix("pub ") {
            let field = rest.split(':').next().unwrap_or(rest).trim();
            let key = if field == "kind" { "type" } else { field };
            out.push_str(&format!("| `{key}` | {text} |\n"));
        } else if !doc.is_empty() && t.ends_with(',') {
            let variant = t.trim_end_matches(',').to_lowercase();
            out.push_str(&format!("| `\"{variant}\"` | {text} |\n"));
        }
        doc.clear();
    }
    out
}

#[test]
fn config_reference_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read_to_string(root.join("src/config/raw.rs")).unwrap();
    let rendered = render(&raw);
    let doc_path = root.join("docs/config.md");
    if std::env::var_os("LAKESHORE_BLESS").is_some() {
        std::fs::write(&doc_path, &rendered).unwrap();
    }
    let current = std::fs::read_to_string(&doc_path).unwrap_or_default();
    assert!(
        current == rendered,
        "docs/config.md is stale; run LAKESHORE_BLESS=1 cargo test config_reference"
    );
}
