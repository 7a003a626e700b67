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

    /// A configuration or remote set-up error: say what to change.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// A fault that may pass (network, server, storage).
    pub fn transient(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Transient, message)
    }

    /// Input that cannot be represented; name the table and the column.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// A bug or an unexpected state.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// The message prefixed with what was being done (`"{what}: {message}"`); kind and
    /// cause are kept.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Attach a cause that comes boxed already (e.g. parquet's `External`).
    pub fn with_boxed_source(mut self, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        self.source = Some(source);
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

/// [`Error::context`] on a result.
pub trait Context<T> {
    /// Prefix the error's message with what was being done.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
}

/// A cause kept as the source; the message says which library failed.
fn caused(kind: ErrorKind, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(kind, what).with_source(e)
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        caused(ErrorKind::Internal, "JSON", e)
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        caused(ErrorKind::Internal, "Arrow", e)
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        caused(ErrorKind::Transient, "Parquet", e)
    }
}

impl From<object_store::Error> for Error {
    /// Refused credentials are a setting to change; anything else may pass.
    fn from(e: object_store::Error) -> Self {
        let kind = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => ErrorKind::Config,
            _ => ErrorKind::Transient,
        };
        caused(kind, "object store", e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        caused(ErrorKind::Transient, "I/O", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let r: Result<()> = Err(io).context("reading the checkpoint record");
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.to_string(), "reading the checkpoint record: I/O: gone");
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::config("set [source] url").context("table a");
        assert_eq!(
            (e.kind(), e.to_string()),
            (ErrorKind::Config, "table a: set [source] url".into())
        );
    }

    #[test]
    fn refused_storage_credentials_are_a_setting_to_change() {
        let denied = object_store::Error::PermissionDenied {
            path: "bucket/t".into(),
            source: "403 Forbidden".into(),
        };
        let e = Error::from(denied).context("state store: writing a checkpoint");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.to_string()
                .starts_with("state store: writing a checkpoint: object store: "),
            "{e}"
        );
        let missing = object_store::Error::NotFound {
            path: "bucket/t".into(),
            source: "404".into(),
        };
        assert!(Error::from(missing).is_retryable());
    }
}
