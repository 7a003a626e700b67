//! The daemon file: settings of `lakeshore run` itself ([`DaemonFile`]).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::units::{EnvString, HumanDuration, Spanned};
use super::{ConfigError, SourceText, location_url};

/// The daemon file (`lakeshore run --config configs/lakeshore.toml`): settings of the
/// process that runs every pipeline file it is given. All keys are optional.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    /// Address of the HTTP endpoints (`/health`, `/ready`, `/metrics`, `/pipelines`),
    /// e.g. `"127.0.0.1:8080"`. `--http` on the command line wins. Default: no HTTP.
    /// Any address other than loopback needs a token (`[auth]`).
    pub http: Option<Spanned<String>>,
    /// `"text"` (default) or `"json"` (one object per line). `--log-format` wins.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub log_format: Option<Spanned<LogFormat>>,
    /// Where pipelines without `[pipeline] state` keep their checkpoints: a directory or
    /// `file://` / `s3://` URL; each pipeline gets its own prefix under it.
    pub state: Option<EnvString>,
    /// Checkpoint interval of pipelines that do not set one. Default `"10s"`.
    pub checkpoint_interval: Option<Spanned<HumanDuration>>,
    /// How long SIGTERM waits for every pipeline's final checkpoint before the process
    /// exits with status 1. Default `"30s"`.
    pub grace_period: Option<Spanned<HumanDuration>>,
    /// How often the pipeline files are checked for changes (SIGHUP checks at once).
    /// Default `"2s"`.
    pub watch_interval: Option<Spanned<HumanDuration>>,
    /// `[restart]`: how a failed pipeline is restarted.
    pub restart: Option<RestartSection>,
    /// `[auth]`: the token the HTTP endpoints require.
    pub auth: Option<AuthSection>,
    /// `[tls]`: serve the HTTP endpoints over TLS.
    pub tls: Option<TlsSection>,
    /// `[replicas]`: this daemon is one of several over the same pipeline files.
    pub replicas: Option<ReplicasSection>,
}

/// `[replicas]` of the daemon file: several daemons (e.g. the pods of a StatefulSet) over
/// the same pipeline files and state stores; each pipeline runs on one of them at a time,
/// by a lease in its state store, and moves to another when its replica dies.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplicasSection {
    /// This replica's name, unique among them, e.g. `"${POD_NAME}"` (`--replica` wins).
    pub id: Option<EnvString>,
    /// How many replicas run normally (the StatefulSet's `replicas`): each pipeline is
    /// preferably taken by the replica whose ordinal (the number ending `id`) is its
    /// name's hash modulo this; another takes it only once it stayed free for
    /// `lease_ttl`. Default: whichever replica comes first.
    pub count: Option<Spanned<u32>>,
    /// A replica whose lease heartbeat stood still this long is taken for dead and its
    /// pipelines are taken over. Default `"15s"`; at least `"1s"`.
    pub lease_ttl: Option<Spanned<HumanDuration>>,
}

/// `[auth]` of the daemon file. With a token, every HTTP endpoint except `/health` and
/// `/ready` answers only requests with `Authorization: Bearer <token>` (401 otherwise),
/// `/metrics` too unless `metrics = "open"`. Without one (and without the
/// `LAKESHORE_API_TOKEN` environment variable), the daemon listens only on a loopback
/// address. `lakeshore status --config` reads the token from the same place.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The token, e.g. `"${LAKESHORE_API_TOKEN}"`; at least 16 characters.
    pub token: Option<Spanned<EnvString>>,
    /// A file holding the token, e.g. a mounted Kubernetes Secret
    /// (`"/etc/lakeshore/token/token"`); surrounding whitespace is ignored.
    pub token_file: Option<Spanned<String>>,
    /// `"token"` (default): `/metrics` needs the token too; `"open"`: whoever reaches the
    /// port may scrape it (e.g. behind a NetworkPolicy that admits only Prometheus).
    pub metrics: Option<MetricsAccess>,
}

/// Who may read `/metrics` (`[auth] metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// With the token only.
    Token,
    /// Anyone who reaches the port.
    Open,
}

/// `[tls]` of the daemon file: the HTTP endpoints speak HTTPS with this certificate
/// (for clusters without a service mesh).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

/// `[restart]` of the daemon file. A failed pipeline restarts alone from its last
/// checkpoint after a pause that doubles from `initial_backoff` up to `max_backoff`
/// (back to `initial_backoff` once it ran for a minute). Configuration errors (a wrong
/// setting on the server too) are not retried, nor is an error that repeated
/// `give_up_after` times: the pipeline shows `failed` until its file changes or it is
/// resumed (`POST /pipelines/{name}/resume`).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RestartSection {
    /// First pause. Default `"1s"`.
    pub initial_backoff: Option<Spanned<HumanDuration>>,
    /// Longest pause. Default `"60s"`.
    pub max_backoff: Option<Spanned<HumanDuration>>,
    /// Restarts after which a pipeline that keeps failing with the same error stops
    /// retrying and shows `failed` with that error (the source's retained WAL or binlog
    /// would otherwise pile up behind a retry that cannot succeed). A different error, or
    /// a run that lasted a minute, starts the count again. Default 10.
    pub give_up_after: Option<Spanned<u32>>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Pause before restarting a failed pipeline.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// First pause.
    pub initial: Duration,
    /// Longest pause.
    pub max: Duration,
    /// Consecutive failures with the same error after which the pipeline gives up.
    pub give_up_after: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            give_up_after: 10,
        }
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// The environment variable a token may come from when the daemon file names none.
pub const TOKEN_ENV: &str = "LAKESHORE_API_TOKEN";

/// Who may use the HTTP endpoints.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    /// Required as `Authorization: Bearer ...`; `None`: loopback only, no token.
    pub token: Option<ApiToken>,
    /// `/metrics` without the token.
    pub metrics_open: bool,
}

/// Certificate and key files of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpTls {
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
}

/// A token read from `file` (surrounding whitespace ignored).
pub fn read_token_file(file: &Path) -> Result<ApiToken, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
    checked_token(text.trim())
}

fn checked_token(t: &str) -> Result<ApiToken, String> {
    if t.chars().count() < 16 {
        return Err(
            "the API token must have at least 16 characters (e.g. `openssl rand -hex 32`)".into(),
        );
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the API token must not contain spaces or control characters".into());
    }
    Ok(ApiToken(t.to_string()))
}

/// The token from the environment, if [`TOKEN_ENV`] is set.
pub fn token_from_env() -> Result<Option<ApiToken>, String> {
    match std::env::var(TOKEN_ENV) {
        Ok(t) => checked_token(t.trim())
            .map(Some)
            .map_err(|e| format!("{TOKEN_ENV}: {e}")),
        Err(_) => Ok(None),
    }
}

/// Validated daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// HTTP endpoints' address.
    pub http: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Default state location (a URL).
    pub state: Option<String>,
    /// Default checkpoint interval.
    pub checkpoint_interval: Option<Duration>,
    /// SIGTERM's wait for final checkpoints.
    pub grace_period: Duration,
    /// How often pipeline files are checked.
    pub watch_interval: Duration,
    /// Restarts of failed pipelines.
    pub restart: RestartPolicy,
    /// The HTTP endpoints' token.
    pub auth: ApiAuth,
    /// HTTPS for the endpoints.
    pub tls: Option<HttpTls>,
    /// Replica mode: one of several daemons over the same pipeline files.
    pub replica: Option<Replica>,
}

/// This daemon as one of several replicas (`[replicas]`, `--replica`).
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// This replica's name, unique among them (e.g. the pod name).
    pub id: String,
    /// A lease whose heartbeat stands still this long is taken over.
    pub lease_ttl: Duration,
    /// How many replicas there are normally (a StatefulSet's `replicas`): a pipeline is
    /// preferably run by the replica whose ordinal (the number at the end of `id`) is
    /// its name's hash modulo this; `None`: by whoever takes it first.
    pub count: Option<u32>,
}

impl Replica {
    /// The default lease TTL.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

    /// Whether this replica is the preferred one for `pipeline` (always, without
    /// `count`, or when `id` ends in no number).
    pub fn prefers(&self, pipeline: &str) -> bool {
        let Some(count) = self.count.filter(|c| *c > 0) else {
            return true;
        };
        let digits: String = self
            .id
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let Ok(ordinal) = digits.parse::<u32>() else {
            return true;
        };
        // FNV-1a: the same on every replica and every version.
        let hash = pipeline.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        hash % u64::from(count) == u64::from(ordinal % count)
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            http: None,
            log_format: LogFormat::Text,
            state: None,
            checkpoint_interval: None,
            grace_period: Duration::from_secs(30),
            watch_interval: Duration::from_secs(2),
            restart: RestartPolicy::default(),
            auth: ApiAuth::default(),
            tls: None,
            replica: None,
        }
    }
}

/// Parse an address written in a file or on the command line.
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs().ok()?.next()
}

/// `p` as written in `file`: relative paths are relative to the file's directory.
fn beside(file: &Path, p: &str) -> std::path::PathBuf {
    let p = Path::new(p);
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Read and validate the daemon file.
pub fn load(file: &Path) -> Result<DaemonConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        location: None,
        message: format!("cannot read the daemon file: {e}"),
    })?;
    let src = SourceText { file, text: &text };
    let raw: DaemonFile = toml::from_str(&text).map_err(|e| super::toml_error(&src, e))?;
    parse(&src, raw)
}

fn parse(src: &SourceText<'_>, raw: DaemonFile) -> Result<DaemonConfig, ConfigError> {
    let mut cfg = DaemonConfig::default();
    if let Some(h) = &raw.http {
        cfg.http = Some(parse_addr(h.get_ref()).ok_or_else(|| {
            src.error(
                Some(h.span()),
                format!(
                    "http = \"{}\" is not an address; write host:port, e.g. \"127.0.0.1:8080\"",
                    h.get_ref()
                ),
            )
        })?);
    }
    if let Some(f) = &raw.log_format {
        cfg.log_format = *f.get_ref();
    }
    cfg.state = raw.state.as_ref().map(|s| location_url(&s.0));
    let positive = |d: &Option<Spanned<HumanDuration>>, key: &str| match d {
        Some(v) if v.get_ref().0.is_zero() => Err(src.error(
            Some(v.span()),
            format!("{key} must be more than zero, e.g. \"10s\""),
        )),
        Some(v) => Ok(Some(v.get_ref().0)),
        None => Ok(None),
    };
    if let Some(d) = &raw.checkpoint_interval
        && d.get_ref().0 < Duration::from_millis(100)
    {
        return Err(src.error(
            Some(d.span()),
            "checkpoint_interval must be at least \"100ms\"",
        ));
    }
    cfg.checkpoint_interval = raw.checkpoint_interval.as_ref().map(|d| d.get_ref().0);
    if let Some(d) = positive(&raw.grace_period, "grace_period")? {
        cfg.grace_period = d;
    }
    if let Some(d) = positive(&raw.watch_interval, "watch_interval")? {
        cfg.watch_interval = d;
    }
    if let Some(r) = &raw.restart {
        let r: &RestartSection = r;
        if let Some(d) = positive(&r.initial_backoff, "initial_backoff")? {
            cfg.restart.initial = d;
        }
        if let Some(d) = positive(&r.max_backoff, "max_backoff")? {
            cfg.restart.max = d;
        }
        cfg.restart.max = cfg.restart.max.max(cfg.restart.initial);
        if let Some(n) = &r.give_up_after {
            if *n.get_ref() == 0 {
                return Err(src.error(Some(n.span()), "give_up_after must be at least 1, e.g. 10"));
            }
            cfg.restart.give_up_after = *n.get_ref();
        }
    }
    if let Some(a) = &raw.auth {
        let a: &AuthSection = a;
        cfg.auth.token = match (&a.token, &a.token_file) {
            (Some(_), Some(f)) => {
                return Err(src.error(
                    Some(f.span()),
                    "write either token or token_file in [auth], not both",
                ));
            }
            (Some(t), None) => {
                Some(checked_token(&t.get_ref().0).map_err(|e| src.error(Some(t.span()), e))?)
            }
            (None, Some(f)) => Some(
                read_token_file(&beside(src.file, f.get_ref()))
                    .map_err(|e| src.error(Some(f.span()), e))?,
            ),
            (None, None) => None,
        };
        cfg.auth.metrics_open = a.metrics == Some(MetricsAccess::Open);
    }
    if let Some(t) = &raw.tls {
        cfg.tls = Some(HttpTls {
            cert: beside(src.file, t.cert.get_ref()),
            key: beside(src.file, t.key.get_ref()),
        });
    }
    if let Some(r) = &raw.replicas {
        cfg.replica = Some(replicas(src, r)?);
    }
    Ok(cfg)
}

/// `[replicas]`; its `id` may still be empty (then `--replica` must give it).
fn replicas(src: &SourceText<'_>, r: &ReplicasSection) -> Result<Replica, ConfigError> {
    let lease_ttl = match &r.lease_ttl {
        Some(t) if t.get_ref().0 < Duration::from_secs(1) => {
            return Err(src.error(
                Some(t.span()),
                "lease_ttl must be at least \"1s\", e.g. \"15s\"",
            ));
        }
        Some(t) => t.get_ref().0,
        None => Replica::DEFAULT_TTL,
    };
    if let Some(c) = &r.count
        && *c.get_ref() == 0
    {
        return Err(src.error(
            Some(c.span()),
            "count must be at least 1 (the number of replicas)",
        ));
    }
    Ok(Replica {
        id: r.id.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
        lease_ttl,
        count: r.count.as_ref().map(|c| *c.get_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<DaemonConfig, String> {
        let file = Path::new("lakeshore.toml");
        let src = SourceText { file, text };
        let raw: DaemonFile =
            toml::from_str(text).map_err(|e| super::super::toml_error(&src, e).to_string())?;
        parse(&src, raw).map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_daemon_file_is_valid() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/lakeshore.toml");
        let cfg = load(&file).unwrap();
        assert!(cfg.http.is_some());
    }

    #[test]
    fn auth_settings_are_checked_with_their_location() {
        let token = "t".repeat(16);
        let cfg = parse_text(&format!(
            "[auth]\ntoken = \"{token}\"\nmetrics = \"open\"\n"
        ))
        .unwrap();
        assert!(cfg.auth.metrics_open && cfg.auth.token == Some(ApiToken(token)));
        let err = parse_text("[auth]\nmetrics = \"nope\"\n").unwrap_err();
        assert!(
            err.starts_with("lakeshore.toml:2:")
                && err.contains("\"token\"")
                && err.contains("\"open\""),
            "{err}"
        );
        let err = parse_text("[auth]\ntoken = \"short\"\n").unwrap_err();
        assert!(
            err.starts_with("lakeshore.toml:2:9") && err.contains("16 characters"),
            "{err}"
        );
    }

    #[test]
    fn daemon_settings_are_checked_with_their_location() {
        let cfg = parse_text("http = \"127.0.0.1:9000\"\nlog_format = \"json\"\n[restart]\ninitial_backoff = \"2s\"\n").unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.restart.initial, Duration::from_secs(2));
        assert_eq!(
            parse_text("log_format = \"xml\"\n").unwrap_err(),
            "lakeshore.toml:1:14: unknown value \"xml\"; write \"text\" or \"json\""
        );
        assert!(
            parse_text("http = \"nowhere\"\n")
                .unwrap_err()
                .contains("is not an address")
        );
        assert!(parse_text("htp = \"x\"\n").unwrap_err().contains("1:1"));
    }
}
