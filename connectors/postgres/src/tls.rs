//! TLS to the server, configured the libpq way in the URL's query:
//! `sslmode=disable|prefer|require|verify-ca|verify-full` and `sslrootcert=/path/ca.pem`.
//!
//! The replication connection is libpq's (`pg_walstream`), which reads these parameters
//! itself; the query connections are `tokio-postgres` with rustls, whose URL parser knows
//! only `disable|prefer|require`, so the parameters are taken off the URL here and turned
//! into the same behaviour as libpq's:
//! - `prefer` (the default) and `require` encrypt without checking the certificate;
//!   `require` with an `sslrootcert` checks it like `verify-ca` (as libpq does);
//! - `verify-ca` checks the chain against `sslrootcert`; `verify-full` also the host name.

use std::sync::Arc;

use lakeshore_api::{Error, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the query connections use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// TLS settings taken from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub mode: Mode,
    pub root_cert: Option<String>,
}

/// How `client` (connected with `url`) is protected: what the server says of the
/// session's TLS, and whether the URL has the certificate checked.
pub(crate) async fn transport(
    client: &tokio_postgres::Client,
    url: &str,
) -> Result<lakeshore_api::Transport> {
    use lakeshore_api::Transport;
    let (_, tls) = split(url)?;
    let ssl = client
        .query_opt(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| crate::server::pg_error("reading the TLS status", e))?
        .is_some_and(|r| r.get::<_, bool>(0));
    Ok(match (ssl, tls.mode) {
        (true, Mode::VerifyCa | Mode::VerifyFull) => Transport::Verified,
        (true, _) => Transport::Unverified,
        (false, _) => Transport::Plain,
    })
}

/// Take libpq's TLS parameters off `url`: the URL `tokio-postgres` can parse, and the
/// settings. Other query parameters stay.
pub(crate) fn split(url: &str) -> Result<(String, Tls)> {
    let mut tls = Tls {
        mode: Mode::Prefer,
        root_cert: None,
    };
    let (url, taken) = lakeshore_api::url::take_query(url, |k| k.starts_with("ssl"));
    for (key, value) in taken {
        match key.as_str() {
            "sslmode" => {
                tls.mode = match value.as_str() {
                    "disable" | "allow" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(Error::config(format!(
                            "[source] url: sslmode={other} is not a TLS mode; write one of \
                                 disable, prefer, require, verify-ca, verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => tls.root_cert = Some(value),
            _ => {
                return Err(Error::config(format!(
                    "[source] url: {key} is not supported (client certificates are not); \
                         log in with a password over sslmode=verify-full"
                )));
            }
        }
    }
    if tls.mode == Mode::Require && tls.root_cert.is_some() {
        tls.mode = Mode::VerifyCa;
    }
    Ok((url, tls))
}

impl Tls {
    /// The `tokio-postgres` mode for these settings.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The rustls connector for these settings.
    pub fn connector(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("setting up TLS", e))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            Mode::Disable | Mode::Prefer | Mode::Require => Arc::new(Unverified(provider)),
            Mode::VerifyCa | Mode::VerifyFull => {
                let roots = self.roots()?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| tls_error("setting up certificate checks", e))?;
                if self.mode == Mode::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let Some(path) = &self.root_cert else {
            return Err(Error::config(
                "[source] url: sslmode=verify-ca and verify-full need the CA that signed the \
                 server's certificate; add &sslrootcert=/path/to/ca.pem",
            ));
        };
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::config(format!(
                "[source] url: sslrootcert={path} cannot be read as PEM certificates: {e}"
            ))
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
            roots
                .add(cert.map_err(|e| unreadable(&e))?)
                .map_err(|e| unreadable(&e))?;
        }
        if roots.is_empty() {
            return Err(unreadable(&"no certificate in the file"));
        }
        Ok(roots)
    }
}

fn tls_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::internal(format!("{what}: {e}"))
}

/// `prefer` / `require`: encrypted, the certificate is not checked (libpq's behaviour).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the host name may differ.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_off_the_url() {
        let (url, tls) = split(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (url, tls) = split("postgres://u@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(tls.mode, Mode::Prefer);
        // require with a root certificate checks it, as in libpq.
        let (url, tls) = split("postgres://u@h/db?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(tls.mode, Mode::VerifyCa);
        let err = split("postgres://u@h/db?sslmode=on")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=on is not a TLS mode"), "{err}");
        let err = split("postgres://u@h/db?sslcert=c.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let (_, tls) = split("postgres://u@h/db?sslmode=verify-ca").unwrap();
        let err = tls.connector().err().unwrap().to_string();
        assert!(err.contains("add &sslrootcert="), "{err}");
        let (_, tls) =
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent").unwrap();
        let err = tls.connector().err().unwrap().to_string();
        assert!(
            err.contains("sslrootcert=/nonexistent cannot be read"),
            "{err}"
        );
    }
}
