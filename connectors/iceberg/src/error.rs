//! Conversions from iceberg-rust and parquet errors to the connector error.

use lakeshore_api::{Error, ErrorKind};

/// An iceberg-rust error, kept retryable when iceberg says so.
pub fn ice(e: iceberg::Error) -> Error {
    use iceberg::ErrorKind as K;
    let kind = if e.retryable() {
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
    };
    Error::new(kind, "iceberg").with_source(e)
}

/// A bug or an impossible state.
pub fn internal(msg: impl Into<String>) -> Error {
    Error::internal(msg)
}

/// A parquet or arrow error while reading the table's own files.
pub fn io(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::transient(what.to_string()).with_source(e)
}
