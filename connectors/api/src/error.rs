//! One error type for connectors, with a kind that says whether retrying can help.

use std::fmt;

/// What went wrong, coarsely: decides whether the engine retries, restarts or stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration or the remote setup is wrong; retrying cannot help.
    Config,
    /// A network, server or storage fault that may pass.
    Transient,
    /// Someone else changed the target concurrently; redo the step on fresh state.
    Conflict,
    /// Input that cannot be represented (type, value, DDL); names table and column.
    Unsupported,
    /// Another copy of this pipeline owns its state.
    Fenced,
    /// A bug or an unexpected state.
    Internal,
}

/// A connector error: a kind, a message that tells the user what to do, and a cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result with the connector [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when the same operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Conflict)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
