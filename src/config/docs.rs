//! `docs/config.md` is generated from the doc comments of `config/raw.rs`; this test
//! fails when they drift apart. Regenerate with `LAKESHORE_BLESS=1 cargo test config_reference`.

use std::path::Path;

/// The reference, rendered from `raw.rs`: one table per struct, one row per field.
fn render(raw: &str) -> String {
    let mut out = String::from(
        "# Pipeline file reference\n\n<!-- generated from src/config/raw.rs by a test; do not edit by hand -->\n\n\
         Values may reference environment variables as `${NAME}`; durations take units (`\"500ms\"`, \"10s\"`), sizes too (`\"128MiB\"`).\n",
    );
    let mut doc: Vec<String> = Vec::new();
    let mut struct_doc: Vec<String> = Vec::new();
    for line in raw.lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            doc.push(d.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("pub struct ").or_else(|| t.strip_prefix("pub enum ")) {
            let name = rest.split(|c: char| !c.is_alphanumeric()).next().unwrap_or(rest);
            struct_doc = std::mem::take(&mut doc);
            out.push_str(&format!("\n## {}\n\n{}\n\n", struct_doc.first().cloned().unwrap_or_default(), struct_doc.iter().skip(1).cloned().collect::<Vec<_>>().join(" ")));
            out.push_str(&format!("| {} | meaning |\n|---|---|\n", if t.starts_with("pub enum") { "value" } else { "key" }));
            let _ = name;
        } else if let Some(rest) = t.strip_prefix("pub ") {
            let field = rest.split(':').next().unwrap_or(rest).trim();
            let key = if field == "kind" { "type" } else { field };
            out.push_str(&format!("| `{key}` | {} |\n", doc.join(" ").replace('|', "\\|")));
            doc.clear();
        } else if !t.starts_with("#[") && !doc.is_empty() && t.ends_with(',') {
            // enum variant
            let variant = t.trim_end_matches(',').to_lowercase();
            out.push_str(&format!("| `\"{variant}\"` | {} |\n", doc.join(" ")));
            doc.clear();
        } else if !t.starts_with("#[") {
            doc.clear();
        }
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
    assert!(current == rendered, "docs/config.md is stale; run LAKESHORE_BLESS=1 cargo test config_reference");
}
