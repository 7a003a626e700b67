//! Pipeline files: TOML → [`raw`] (what the user wrote) → [`plan::Plan`] (what we run).
//!
//! Every error names the file, line and column and says what to write instead.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub mod daemon;
pub mod pipeline;
pub mod plan;
pub mod transform;
pub mod units;

#[cfg(test)]
mod docs;

pub use plan::Plan;

/// A problem in a pipeline file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A pipeline file's text and name, to turn byte spans into line:column.
pub struct SourceText<'a> {
    /// The file.
    pub file: &'a Path,
    /// Its contents.
    pub text: &'a str,
}

impl SourceText<'_> {
    /// An error at byte span `span` (or at no location).
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            location: span.map(|s| line_col(self.text, s.start)),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// Read and validate one pipeline file.
pub fn load(file: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        location: None,
        message: format!("cannot read the pipeline file: {e}"),
    })?;
    pipeline::parse(&SourceText { file, text: &text })
}

/// Validate a pipeline file's `text` (already read from `file`).
pub fn load_text(file: &Path, text: &str) -> Result<Plan, ConfigError> {
    pipeline::parse(&SourceText { file, text })
}

/// The pipeline files named by `paths`: files as given, directories by their `*.toml`
/// files in name order.
pub fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| ConfigError {
                    file: p.clone(),
                    location: None,
                    message: format!("cannot list the directory: {e}"),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Suggest the closest known name for an unknown field or value in a serde message, or
/// what to add for a missing field.
fn with_hint(message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        return format!(
            "missing field `{field}`: add `{field} = ...` to this section (every key is described in docs/config.md)"
        );
    }
    for (prefix, what) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        let Some((name, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
        else {
            continue;
        };
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let best = known
            .iter()
            .map(|k| (edit_distance(name, k), *k))
            .min()
            // A value is a short word: "nope" is not a typo of "open".
            .filter(|(d, _)| {
                *d <= if what == "field" {
                    2
                } else {
                    (name.len() / 3).clamp(1, 2)
                }
            })
            .map(|(_, k)| k);
        return if what == "field" {
            let list = known.join(", ");
            match best {
                Some(k) => format!("unknown field `{name}`; did you mean `{k}`? (known: {list})"),
                None => format!("unknown field `{name}` (known: {list})"),
            }
        } else {
            let quoted: Vec<String> = known.iter().map(|k| format!("\"{k}\"")).collect();
            let list = match quoted.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                _ => quoted.join(""),
            };
            match best {
                Some(k) => format!("unknown value \"{name}\"; did you mean \"{k}\"? write {list}"),
                None => format!("unknown value \"{name}\"; write {list}"),
            }
        };
    }
    message.trim_end().to_string()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A TOML or serde error, located, with a hint where one helps.
pub fn toml_error(src: &SourceText<'_>, e: toml::de::Error) -> ConfigError {
    src.error(e.span(), with_hint(e.message()))
}

/// `path` against the working directory.
pub fn absolute(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// `Some(url)` (without a trailing `/`, `s3a` spelled `s3`) when `s` is an object-store
/// URL with a bucket or container; `None` for a local path or `file://`; `Err` with
/// what to write instead for anything else.
pub fn object_store_url(s: &str) -> Result<Option<String>, String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(None);
    };
    if scheme == "file" {
        return Ok(None);
    }
    if !lakeshore_api::OBJECT_STORE_SCHEMES.contains(&scheme) {
        return Err(format!(
            "{s}: write a local directory or a file://, s3://, gs://, az:// or abfss:// URL"
        ));
    }
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err(format!(
            "{s} needs a bucket or container: write \"{scheme}://bucket/prefix\""
        ));
    }
    let scheme = if scheme == "s3a" { "s3" } else { scheme };
    Ok(Some(format!("{scheme}://{}", rest.trim_end_matches('/'))))
}

/// A directory or URL as a URL (`file://` for directories).
pub fn location_url(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("file://{}", absolute(s).display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_urls_need_a_bucket() {
        assert_eq!(object_store_url("lake/w"), Ok(None));
        assert_eq!(object_store_url("file:///tmp/w"), Ok(None));
        assert_eq!(
            object_store_url("s3a://b/w/"),
            Ok(Some("s3://b/w".to_string()))
        );
        assert_eq!(
            object_store_url("gs://b/w"),
            Ok(Some("gs://b/w".to_string()))
        );
        assert_eq!(
            object_store_url("abfss://fs@acct.dfs.core.windows.net/w"),
            Ok(Some("abfss://fs@acct.dfs.core.windows.net/w".to_string()))
        );
        assert!(
            object_store_url("gs:///w")
                .unwrap_err()
                .contains("gs://bucket/prefix")
        );
        assert!(
            object_store_url("hdfs://nn/w")
                .unwrap_err()
                .contains("abfss://")
        );
    }

    #[test]
    fn unknown_fields_get_a_suggestion() {
        let m = with_hint("unknown field `evnts`, expected one of `type`, `events`, `rate`");
        assert_eq!(
            m,
            "unknown field `evnts`; did you mean `events`? (known: type, events, rate)"
        );
        let m = with_hint("unknown variant `apend`, expected `append` or `upsert`");
        assert_eq!(
            m,
            "unknown value \"apend\"; did you mean \"append\"? write \"append\" or \"upsert\""
        );
        let m = with_hint("unknown variant `avro`, expected one of `json`, `raw`, `canal-json`");
        assert_eq!(
            m,
            "unknown value \"avro\"; write \"json\", \"raw\" or \"canal-json\""
        );
    }

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
    }

    #[test]
    fn every_example_pipeline_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        for var in [
            "PGPASSWORD",
            "MYSQL_PASSWORD",
            "S3_ACCESS_KEY",
            "S3_SECRET_KEY",
            "MASK_SALT",
        ] {
            if std::env::var_os(var).is_none() {
                // SAFETY: each test runs in its own process under nextest; nothing else
                // reads the environment concurrently here.
                unsafe { std::env::set_var(var, "example") };
            }
        }
        let files = pipeline_files(&[dir]).unwrap();
        assert!(!files.is_empty());
        for f in files {
            if let Err(e) = load(&f) {
                panic!("{e}");
            }
        }
    }

    /// Each file in `integration/bad-pipelines/` starts with `# expect: <message>`; the
    /// message must be exactly what validation reports (with the file name left out).
    #[test]
    fn broken_pipelines_fail_with_the_expected_message() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/bad-pipelines");
        let files = pipeline_files(&[dir]).unwrap();
        assert!(files.len() >= 10, "the corpus has {} files", files.len());
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let expected = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks an `# expect:` line", f.display()));
            // SAFETY: tests in this module read the variable set here; no other thread
            // touches LAKESHORE_TEST_SECRET.
            unsafe { std::env::set_var("LAKESHORE_TEST_SECRET", "hunter2") };
            let err = load(&f).expect_err(&format!("{} should fail", f.display()));
            let shown = err.to_string();
            let without_file = shown
                .strip_prefix(&format!("{}:", f.display()))
                .unwrap_or(&shown)
                .trim_start();
            assert_eq!(without_file, expected, "{}", f.display());
            assert!(
                !shown.contains("hunter2"),
                "a secret reached the message: {shown}"
            );
        }
    }
}
