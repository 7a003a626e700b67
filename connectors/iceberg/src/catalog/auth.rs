//! How requests to a REST catalog authenticate: a static bearer token, an OAuth2
//! client-credentials token (fetched from the token endpoint and fetched again before it
//! expires, or when the catalog answers 401), or AWS SigV4 signatures (Glue's and S3
//! Tables' Iceberg endpoints), signed by `aws-sigv4`. Nothing here is ever printed.

use std::time::{Duration, Instant, SystemTime};

use lakeshore_api::{Error, Result, StorageOptions};
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};

/// How requests authenticate.
#[derive(Clone, Default)]
pub enum RestAuth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Token(String),
    /// OAuth2 client credentials: `client_id:client_secret` (or a secret alone).
    OAuth2 {
        /// `client_id:client_secret`.
        credential: String,
        /// Token endpoint; `None`: `<uri>/v1/oauth/tokens`.
        server_uri: Option<String>,
        /// Scope requested; `None`: `catalog`.
        scope: Option<String>,
    },
    /// AWS Signature Version 4.
    SigV4(SigV4),
}

/// AWS SigV4 settings; the keys come from the sink's `storage` or the `AWS_*`
/// environment.
#[derive(Clone, Debug)]
pub struct SigV4 {
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Signing name: `glue` for Glue's Iceberg endpoint, `s3tables` for S3 Tables.
    pub service: String,
}

impl std::fmt::Debug for RestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestAuth::None => f.write_str("None"),
            RestAuth::Token(_) => f.write_str("Token(***)"),
            RestAuth::OAuth2 {
                server_uri, scope, ..
            } => f
                .debug_struct("OAuth2")
                .field("credential", &"***")
                .field("server_uri", server_uri)
                .field("scope", scope)
                .finish(),
            RestAuth::SigV4(s) => f.debug_tuple("SigV4").field(s).finish(),
        }
    }
}

/// A token and when to fetch the next one.
struct Token {
    value: String,
    refresh_at: Option<Instant>,
}

/// Adds credentials to requests, fetching and refreshing OAuth2 tokens.
pub(super) struct Authenticator {
    auth: RestAuth,
    token_uri: String,
    keys: StorageOptions,
    token: tokio::sync::Mutex<Option<Token>>,
    catalog: String,
}

/// The token endpoint's answer (Iceberg REST spec `OAuthTokenResponse`).
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

/// The token endpoint's refusal (`OAuthError`).
#[derive(serde::Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

impl Authenticator {
    /// `uri`: the catalog's base URL; `catalog`: its name in messages.
    pub(super) fn new(auth: RestAuth, uri: &str, keys: StorageOptions, catalog: String) -> Self {
        let token_uri = match &auth {
            RestAuth::OAuth2 {
                server_uri: Some(u),
                ..
            } => u.clone(),
            _ => format!("{}/v1/oauth/tokens", uri.trim_end_matches('/')),
        };
        Authenticator {
            auth,
            token_uri,
            keys,
            token: tokio::sync::Mutex::new(None),
            catalog,
        }
    }

    /// The setting to check when the catalog refuses our credentials.
    pub(super) fn setting(&self) -> &'static str {
        match self.auth {
            RestAuth::None => "[sink.catalog] token or credential (the catalog wants one)",
            RestAuth::Token(_) => "[sink.catalog] token",
            RestAuth::OAuth2 { .. } => "[sink.catalog] credential and scope",
            RestAuth::SigV4(_) => "the AWS keys ([sink] storage or AWS_*) and [sink.catalog] sigv4",
        }
    }

    /// Add credentials to `req` (its body is final).
    pub(super) async fn authorize(
        &self,
        http: &reqwest::Client,
        req: &mut reqwest::Request,
    ) -> Result<()> {
        let bearer = match &self.auth {
            RestAuth::None => return Ok(()),
            RestAuth::Token(t) => t.clone(),
            RestAuth::OAuth2 {
                credential, scope, ..
            } => self.oauth_token(http, credential, scope.as_deref()).await?,
            RestAuth::SigV4(s) => return self.sign(s, req, SystemTime::now()),
        };
        let mut value = HeaderValue::try_from(format!("Bearer {bearer}")).map_err(|_| {
            Error::config(format!(
                "{}: the token holds characters a header cannot carry; check {}",
                self.catalog,
                self.setting()
            ))
        })?;
        value.set_sensitive(true);
        req.headers_mut().insert(AUTHORIZATION, value);
        Ok(())
    }

    /// Forget the OAuth2 token (the catalog refused it): the next request fetches one.
    /// False when there is nothing to refresh.
    pub(super) async fn invalidate(&self) -> bool {
        if !matches!(self.auth, RestAuth::OAuth2 { .. }) {
            return false;
        }
        *self.token.lock().await = None;
        true
    }

    async fn oauth_token(
        &self,
        http: &reqwest::Client,
        credential: &str,
        scope: Option<&str>,
    ) -> Result<String> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && t.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(t.value.clone());
        }
        let (id, secret) = match credential.split_once(':') {
            Some((id, secret)) => (Some(id), secret),
            None => (None, credential),
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_secret", secret),
            ("scope", scope.unwrap_or("catalog")),
        ];
        if let Some(id) = id {
            form.push(("client_id", id));
        }
        let refused = |why: String| {
            Error::config(format!(
                "{}: the OAuth2 token endpoint {} refused the client credentials ({why}); check {}",
                self.catalog,
                self.token_uri,
                self.setting()
            ))
        };
        let started = Instant::now();
        let resp = http
            .post(&self.token_uri)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                Error::transient(format!(
                    "{}: cannot reach the OAuth2 token endpoint {}",
                    self.catalog, self.token_uri
                ))
                .with_source(e)
            })?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let why = match serde_json::from_slice::<OAuthError>(&body) {
                Ok(e) => match e.error_description {
                    Some(d) => format!("{}: {d}", e.error),
                    None => e.error,
                },
                Err(_) => format!("HTTP {status}"),
            };
            return Err(if status.is_server_error() {
                Error::transient(format!(
                    "{}: the OAuth2 token endpoint answered {why}",
                    self.catalog
                ))
            } else {
                refused(why)
            });
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("an answer without access_token: {e}")))?;
        // Fetch the next token when 80% of this one's life has passed.
        let refresh_at = token
            .expires_in
            .map(|s| started + Duration::from_millis(s * 800));
        let value = token.access_token;
        *cached = Some(Token {
            value: value.clone(),
            refresh_at,
        });
        tracing::debug!(catalog = %self.catalog, expires_in = ?token.expires_in, "OAuth2 token fetched");
        Ok(value)
    }

    /// Sign `req` with SigV4 at `time`.
    fn sign(&self, s: &SigV4, req: &mut reqwest::Request, time: SystemTime) -> Result<()> {
        let key = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| {
                self.keys
                    .0
                    .iter()
                    .find(|(k, _)| {
                        k.eq_ignore_ascii_case(n) || k.eq_ignore_ascii_case(&format!("aws_{n}"))
                    })
                    .map(|(_, v)| v.clone())
                    .or_else(|| std::env::var(format!("AWS_{}", n.to_ascii_uppercase())).ok())
            })
        };
        let (Some(id), Some(secret)) = (key(&["access_key_id"]), key(&["secret_access_key"]))
        else {
            return Err(Error::config(format!(
                "{}: SigV4 signing needs AWS keys; set access_key_id and secret_access_key in \
                 [sink] storage, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                self.catalog
            )));
        };
        let token = key(&["session_token", "token"]);
        sign_v4(req, &s.region, &s.service, (&id, &secret, token), time)
            .map_err(|e| Error::config(format!("{}: cannot sign the request: {e}", self.catalog)))
    }
}

/// Sign `req` (header signature; a body is hashed into `x-amz-content-sha256`).
fn sign_v4(
    req: &mut reqwest::Request,
    region: &str,
    service: &str,
    (id, secret, token): (&str, &str, Option<String>),
    time: SystemTime,
) -> std::result::Result<(), String> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
    };
    let identity =
        aws_credential_types::Credentials::new(id, secret, token, None, "lakeshore").into();
    let body = req.body().and_then(|b| b.as_bytes()).unwrap_or_default();
    let mut settings = SigningSettings::default();
    if !body.is_empty() {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let signable = SignableRequest::new(
        req.method().as_str(),
        req.url().as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    for h in headers {
        let mut value = HeaderValue::try_from(h.value()).map_err(|e| e.to_string())?;
        value.set_sensitive(h.sensitive());
        let name = HeaderName::from_static(h.name());
        req.headers_mut().insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 test suite (`aws-signing-test-suite/v4` in aws-sigv4 and
    /// the botocore suite): request, keys and time in, `Authorization` out.
    const ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn at_2015_08_30() -> SystemTime {
        // 2015-08-30T12:36:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn signed(req: &mut reqwest::Request, token: Option<&str>) -> String {
        sign_v4(
            req,
            "us-east-1",
            "service",
            (ID, SECRET, token.map(str::to_string)),
            at_2015_08_30(),
        )
        .unwrap();
        req.headers()["authorization"].to_str().unwrap().to_string()
    }

    fn get(url: &str) -> reqwest::Request {
        reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap())
    }

    #[test]
    fn sigv4_matches_the_published_vectors() {
        // get-vanilla
        let mut req = get("https://example.amazonaws.com/");
        assert!(signed(&mut req, None).ends_with(
            "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        ));
        assert_eq!(req.headers()["x-amz-date"], "20150830T123600Z");
        // get-vanilla-query-order-key-case
        let mut req = get("https://example.amazonaws.com/?Param2=value2&Param1=value1");
        assert!(signed(&mut req, None).ends_with(
            "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        ));
        // get-vanilla-with-session-token
        let mut req = get("https://example.amazonaws.com/");
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        assert_eq!(
            signed(&mut req, Some(token)),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        assert_eq!(req.headers()["x-amz-security-token"], token);
    }

    #[test]
    fn sigv4_signs_the_body_like_the_published_vector() {
        // post-x-www-form-urlencoded (sign_body = true): our own signer, body hashed
        // into x-amz-content-sha256 as the vector does.
        let mut req = reqwest::Request::new(
            reqwest::Method::POST,
            "https://example.amazonaws.com/".parse().unwrap(),
        );
        let h = req.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert("content-length", HeaderValue::from_static("13"));
        *req.body_mut() = Some("Param1=value1".into());
        let auth = signed(&mut req, None);
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, \
             Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
        );
        assert_eq!(
            req.headers()["x-amz-content-sha256"],
            "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"
        );
    }

    #[test]
    fn auth_is_never_printed() {
        let a = RestAuth::OAuth2 {
            credential: "id:hunter2".into(),
            server_uri: None,
            scope: None,
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!format!("{:?}", RestAuth::Token("hunter2".into())).contains("hunter2"));
    }
}
