//! Pipeline files: TOML → [`raw`] (what the user wrote) → [`plan::Plan`] (what we run).
//!
//! Every error names the file, line and column and says what to write instead.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub mod daemon;
pub mod plan;
pub mod raw;
mod sinks;
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
    plan::parse(&SourceText { file, text: &text })
}

/// Validate a pipeline file's `text` (already read from `file`).
pub fn load_text(file: &Path, text: &str) -> Result<Plan, ConfigError> {
    plan::parse(&SourceText { file, text })
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

#[cfg(test)]
mod tests {
    use super::*;

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
