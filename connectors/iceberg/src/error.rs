//! Conversions from iceberg-rust and parquet errors to the connector error.

use lakeshore_api::{Error, ErrorKind};

/// An iceberg-rust error, kept retryable when iceberg says so.
pub fn ice(e: iceberg::Error) -> Error {
    Error::new(kind_of(&e), "iceberg").with_source(e)
}

/// The same for an error shared with other callers (kept as text).
pub fn ice_shared(e: &iceberg::Error) -> Error {
    Error::new(kind_of(e), format!("iceberg: {e}"))
}

fn kind_of(e: &iceberg::Error) -> ErrorKind {
    use iceberg::ErrorKind as K;
    if e.retryable() {
        ErrorKind::Transient
    } else {
        match e.kind() {
            K::CatalogCommitConflicts => ErrorKind::Conflict,
            K::FeatureUnsupported => ErrorKind::Unsupported,
            // I/O and catalog database failures surface as `Unexpected`.
            K::Unexpected => ErrorKind::Transient,
            K::NamespaceNotFound | K::TableNotFound => ErrorKind::Config,
            _ => ErrorKind::Internal,
        }
    }
}

/// A bug or an impossible state.
pub fn internal(msg: impl Into<String>) -> Error {
    Error::internal(msg)
}

/// A parquet or arrow error while reading the table's own files.
pub fn io(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::transient(what.to_string()).with_source(e)
}
