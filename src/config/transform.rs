//! `[[transform]]` sections and `[pipeline] metadata`: how rows are shaped between the
//! source and the lake (docs/transforms.md). What can be checked without the source's
//! tables is checked here — names, masks, the SQL's syntax — with the line and column of
//! the mistake; the rest (column names, types) when the tables are known.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use lakeshore_transform::{Mask, Meta, Mode, TransformSpec, expr};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::units::{EnvString, Spanned};
use super::{ConfigError, SourceText};

/// `[[transform]]`
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TransformSection {
    /// Source table name or glob the transform shapes (source names, before
    /// `[[route]]`); a table takes the first transform that matches it.
    pub tables: Spanned<String>,
    /// Columns to keep (names or globs); absent keeps every column, including columns
    /// added at the source later.
    pub columns: Option<Vec<Spanned<String>>>,
    /// Columns to leave out (names or globs). The snapshot never selects them.
    pub exclude: Option<Vec<Spanned<String>>>,
    /// Columns to read in the source's text form (names or globs), e.g. a PostgreSQL
    /// `point`, range or composite column, which has no Iceberg type: the column lands as
    /// a string (`(1,2)`, `[1,5)`), which computed columns may take apart. PostgreSQL
    /// only.
    pub as_text: Option<Vec<Spanned<String>>>,
    /// Column → `"hash"` (SHA-256 of `hash_salt` and the value, hex), `"redact"` (null),
    /// `"redact:TEXT"` (the constant TEXT) or `"truncate(N)"` (first N characters).
    #[cfg_attr(
        test,
        schemars(with = "Option<std::collections::BTreeMap<String, String>>")
    )]
    pub mask: Option<Ordered<Spanned<String>>>,
    /// The secret mixed into `"hash"` masks, e.g. `"${MASK_SALT}"`; keep it the same to
    /// keep hashes comparable across runs and pipelines.
    pub hash_salt: Option<EnvString>,
    /// SQL condition a row must meet to be in the lake, e.g. `"region = 'eu'"`. An update
    /// that leaves it deletes the row from the lake; one that enters it inserts it.
    pub filter: Option<Spanned<String>>,
    /// Column name → SQL expression over the row (casts, string, date and math
    /// functions). A name that is a source column replaces it.
    #[cfg_attr(
        test,
        schemars(with = "Option<std::collections::BTreeMap<String, String>>")
    )]
    pub compute: Option<Ordered<Spanned<String>>>,
    /// The lake table's key, replacing the source's, e.g. `["_source_table", "id"]`.
    pub key: Option<Vec<Spanned<String>>>,
    /// Metadata columns to add: `_op`, `_source_ts`, `_position`, `_source_table`,
    /// `_ingested_at` (added to those of `[pipeline] metadata`).
    pub metadata: Option<Vec<Spanned<String>>>,
}

/// A TOML table read in the order it was written.
#[derive(Debug)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of column = value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

/// Where each expression of the transforms was written, to place the errors found once
/// the tables are known.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    /// Per transform: its `tables` span.
    pub tables: Vec<Range<usize>>,
}

/// The metadata column named by `name`, or the error listing them.
fn meta(src: &SourceText<'_>, name: &Spanned<String>) -> Result<Meta, ConfigError> {
    Meta::by_name(name.get_ref()).ok_or_else(|| {
        let all: Vec<&str> = Meta::ALL.iter().map(|m| m.name()).collect();
        src.error(
            Some(name.span()),
            format!(
                "unknown metadata column \"{}\"; write one of {}",
                name.get_ref(),
                all.join(", ")
            ),
        )
    })
}

/// `[pipeline] metadata`.
pub fn pipeline_metadata(
    src: &SourceText<'_>,
    names: &[Spanned<String>],
) -> Result<Vec<Meta>, ConfigError> {
    names.iter().map(|n| meta(src, n)).collect()
}

/// The validated transforms, then a transform of every other table when `[pipeline]
/// metadata` asks for columns on every table or the sink's `mode` shapes every table.
pub fn specs(
    src: &SourceText<'_>,
    sections: &[TransformSection],
    pipeline_metadata: &[Meta],
    mode: Mode,
) -> Result<(Vec<TransformSpec>, Spans), ConfigError> {
    // A changelog's rows say what happened and in which order.
    let mut metadata = pipeline_metadata.to_vec();
    if mode == Mode::Changelog {
        for m in [Meta::Op, Meta::Seq] {
            if !metadata.contains(&m) {
                metadata.push(m);
            }
        }
    }
    let mut specs = Vec::new();
    let mut spans = Spans::default();
    for s in sections {
        specs.push(TransformSpec {
            mode,
            ..spec(src, s, &metadata)?
        });
        spans.tables.push(s.tables.span());
    }
    if !metadata.is_empty() || mode != Mode::Mirror {
        specs.push(TransformSpec {
            tables: "*".into(),
            metadata,
            mode,
            ..TransformSpec::default()
        });
        spans.tables.push(0..0);
    }
    Ok((specs, spans))
}

fn spec(
    src: &SourceText<'_>,
    s: &TransformSection,
    pipeline_metadata: &[Meta],
) -> Result<TransformSpec, ConfigError> {
    let names = |v: &Option<Vec<Spanned<String>>>| {
        v.as_ref()
            .map(|v| v.iter().map(|s| s.get_ref().clone()).collect::<Vec<_>>())
    };
    let mut metadata = pipeline_metadata.to_vec();
    for name in s.metadata.iter().flatten() {
        let m = meta(src, name)?;
        if !metadata.contains(&m) {
            metadata.push(m);
        }
    }
    let mut masks = Vec::new();
    for (column, how) in s.mask.iter().flat_map(|m| &m.0) {
        masks.push((column.clone(), mask(src, how, s.hash_salt.as_ref())?));
    }
    if let Some(f) = &s.filter {
        check_syntax(src, f)?;
    }
    let mut compute = Vec::new();
    for (name, sql) in s.compute.iter().flat_map(|c| &c.0) {
        check_syntax(src, sql)?;
        compute.push((name.clone(), sql.get_ref().clone()));
    }
    if let Some(key) = &s.key
        && key.is_empty()
    {
        return Err(src.error(
            Some(s.tables.span()),
            "key = [] would leave the lake table without a key; list its columns, or \
                 leave `key` out to keep the source's",
        ));
    }
    Ok(TransformSpec {
        tables: s.tables.get_ref().clone(),
        columns: names(&s.columns),
        exclude: names(&s.exclude).unwrap_or_default(),
        as_text: names(&s.as_text).unwrap_or_default(),
        masks,
        filter: s.filter.as_ref().map(|f| f.get_ref().clone()),
        compute,
        key: names(&s.key),
        metadata,
        mode: Mode::Mirror,
        before_images: false,
    })
}

fn mask(
    src: &SourceText<'_>,
    how: &Spanned<String>,
    salt: Option<&EnvString>,
) -> Result<Mask, ConfigError> {
    let text = how.get_ref().as_str();
    let bad = |m: String| src.error(Some(how.span()), m);
    if text == "hash" {
        return match salt {
            Some(s) if !s.0.is_empty() => Ok(Mask::Hash {
                salt: Arc::from(s.0.as_str()),
            }),
            _ => Err(bad(
                "a \"hash\" mask needs a secret salt in the same [[transform]]: \
                     hash_salt = \"${MASK_SALT}\" (without it, a hash of a short value \
                     could be reversed by trying every value)"
                    .into(),
            )),
        };
    }
    if text == "redact" {
        return Ok(Mask::Redact(None));
    }
    if let Some(constant) = text.strip_prefix("redact:") {
        return Ok(Mask::Redact(Some(constant.to_string())));
    }
    if let Some(n) = text
        .strip_prefix("truncate(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Mask::Truncate(n)),
            _ => Err(bad(format!(
                "truncate needs a positive number of characters, e.g. \"truncate(4)\", not \
                     \"{text}\""
            ))),
        };
    }
    Err(bad(format!(
        "unknown mask \"{text}\"; write \"hash\", \"redact\", \"redact:TEXT\" or \
             \"truncate(N)\""
    )))
}

/// A syntax error in the expression written at `sql`, at its own line and column.
fn check_syntax(src: &SourceText<'_>, sql: &Spanned<String>) -> Result<(), ConfigError> {
    expr::parse(sql.get_ref()).map_err(|e| expr_error(src, sql.span(), &e, None))
}

/// `e` (found in the expression written at `span`) as an error of the file, at the
/// expression's own line and column when known.
pub fn expr_error(
    src: &SourceText<'_>,
    span: Range<usize>,
    e: &expr::ExprError,
    context: Option<&str>,
) -> ConfigError {
    let at = e.at.map_or(span.start, |(line, col)| {
        offset_in_value(src.text, span.clone(), line, col)
    });
    let message = match context {
        Some(c) => format!("{c}: {}", e.message),
        None => e.message.clone(),
    };
    src.error(Some(at..at), message)
}

/// The byte offset of 1-based `line`:`col` of a TOML string's contents, written at
/// `span` (quotes included). Escapes are counted as written.
fn offset_in_value(text: &str, span: Range<usize>, line: u64, col: u64) -> usize {
    let raw = &text[span.clone()];
    let mut start = span.start
        + if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else {
            1
        };
    // A newline right after the opening delimiter of a multi-line string is not part of
    // the value.
    if start > span.start + 1 && text[start..].starts_with('\n') {
        start += 1;
    }
    let mut at = start;
    for _ in 1..line {
        match text[at..span.end].find('\n') {
            Some(i) => at += i + 1,
            None => return start,
        }
    }
    text[at..span.end]
        .char_indices()
        .nth(col.saturating_sub(1) as usize)
        .map_or(at, |(i, _)| at + i)
}

/// `tables` (known without connecting: generators, Kafka with `columns`) as the
/// transforms shape them; a transform that does not fit one is an error at its
/// `tables`.
pub fn shape_known(
    src: &SourceText<'_>,
    specs: &[TransformSpec],
    spans: &Spans,
    tables: Vec<lakeshore_api::TableSchema>,
) -> Result<Vec<lakeshore_api::TableSchema>, ConfigError> {
    tables
        .into_iter()
        .map(|t| {
            let Some(i) = specs
                .iter()
                .position(|s| lakeshore_transform::glob_match(&s.tables, &t.name))
            else {
                return Ok(t);
            };
            lakeshore_transform::TableTransform::new(&specs[i], &t)
                .map(|shaped| shaped.output().clone())
                .map_err(|e| src.error(spans.tables.get(i).cloned(), e))
        })
        .collect()
}
