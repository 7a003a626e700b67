//! Connecting (errors that name the setting to change, passwords redacted), the server's
//! binlog settings, and `validate --connect`.

use lakeshore_api::{Error, Result, SourcePosition};
use mysql_async::prelude::Queryable;
use std::path::PathBuf;

use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts};

use crate::{MysqlOptions, discover};

pub use lakeshore_api::url::redact;

/// An error from a query, as a transient failure (the server may be restarting).
pub(crate) fn my_error(what: &str, e: mysql_async::Error) -> Error {
    // The server's error code stays in the message (through the source): `ERROR 1146
    // (42S02): Table 'shop.x' doesn't exist`.
    Error::transient(format!("MySQL: {what}")).with_source(e)
}

/// How a connection uses TLS, named as the `mysql` client's `--ssl-mode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// TLS settings taken off the URL: `ssl-mode` and `ssl-ca` (a PEM file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub mode: SslMode,
    pub ca: Option<String>,
}

/// Take the TLS parameters off `url` (`ssl-mode=disabled|preferred|required|verify_ca|
/// verify_identity`, default `preferred`; `ssl-ca=/path/ca.pem`): the URL for the driver,
/// and the settings. `required` with an `ssl-ca` checks the certificate like `verify_ca`,
/// as the `mysql` client does.
pub(crate) fn split_tls(url: &str) -> Result<(String, Tls)> {
    let is_ours = |k: &str| {
        k.starts_with("ssl") || matches!(k, "require_ssl" | "verify_ca" | "verify_identity")
    };
    let (url, taken) = lakeshore_api::url::take_query(url, is_ours);
    let mut tls = Tls {
        mode: SslMode::Preferred,
        ca: None,
    };
    for (key, value) in taken {
        match key.replace('_', "-").as_str() {
            "ssl-mode" => {
                tls.mode = match value.to_ascii_lowercase().replace('-', "_").as_str() {
                    "disabled" => SslMode::Disabled,
                    "preferred" => SslMode::Preferred,
                    "required" => SslMode::Required,
                    "verify_ca" => SslMode::VerifyCa,
                    "verify_identity" => SslMode::VerifyIdentity,
                    other => {
                        return Err(Error::config(format!(
                            "[source] url: ssl-mode={other} is not a TLS mode; write one of \
                                 disabled, preferred, required, verify_ca, verify_identity"
                        )));
                    }
                }
            }
            "ssl-ca" => tls.ca = Some(value),
            _ => {
                return Err(Error::config(format!(
                    "[source] url: {key} is not supported (client certificates are not); \
                         write ssl-mode=verify_identity&ssl-ca=/path/ca.pem and log in with a \
                         password"
                )));
            }
        }
    }
    if tls.mode == SslMode::Required && tls.ca.is_some() {
        tls.mode = SslMode::VerifyCa;
    }
    Ok((url, tls))
}

impl Tls {
    /// The driver's TLS options (`None`: plain). Without `ssl-ca`, the verify modes check
    /// against the public web PKI roots.
    fn ssl_opts(&self) -> Option<SslOpts> {
        let checked = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyIdentity);
        let mut opts = SslOpts::default()
            .with_danger_accept_invalid_certs(!checked)
            .with_danger_skip_domain_validation(self.mode != SslMode::VerifyIdentity);
        if let Some(ca) = &self.ca {
            opts = opts.with_root_certs(vec![PathBuf::from(ca).into()]);
        }
        (self.mode != SslMode::Disabled).then_some(opts)
    }
}

/// Connect with lakeshore's session settings (UTC, utf8mb4), over TLS as the URL says.
pub async fn connect(url: &str) -> Result<Conn> {
    let (driver_url, tls) = split_tls(url)?;
    let opts = Opts::from_url(&driver_url).map_err(|e| {
        Error::config(format!(
            "cannot parse [source] url ({e}); write mysql://user:${{PASSWORD}}@host:3306"
        ))
    })?;
    let opts = OptsBuilder::from_opts(opts)
        .init(vec![
            "SET time_zone = '+00:00'",
            "SET NAMES utf8mb4",
            "SET SESSION sql_mode = ''",
        ])
        .prefer_socket(false);
    match Conn::new(opts.clone().ssl_opts(tls.ssl_opts())).await {
        // `preferred`: a server without TLS gets a plain connection.
        Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))
            if tls.mode == SslMode::Preferred =>
        {
            Conn::new(opts)
                .await
                .map_err(|e| connect_error(url, e, true))
        }
        r => r.map_err(|e| connect_error(url, e, tls.mode == SslMode::Disabled)),
    }
}

/// What a failed connection means; `plain`: it was not encrypted.
fn connect_error(url: &str, e: mysql_async::Error, plain: bool) -> Error {
    let target = redact(url);
    let text = e.to_string();
    // MariaDB refuses a plain login to a TLS-only server as a wrong password.
    let only_tls = "the server accepts only TLS connections: write \
                    ssl-mode=verify_identity&ssl-ca=/path/ca.pem (or ssl-mode=required) in \
                    [source] url";
    match &e {
        mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer) => {
            Error::config(format!(
                "the server does not offer TLS ({target}); enable it on the server (ssl_cert, \
                 ssl_key) or write ssl-mode=disabled in [source] url"
            ))
        }
        mysql_async::Error::Server(s) if s.message.contains("insecure transport") => {
            Error::config(format!("{only_tls} ({target}): {}", s.message))
        }
        _ if text.contains("certificate") || text.contains("UnknownIssuer") => {
            Error::config(format!(
                "the server's TLS certificate did not verify ({target}): {text}; set ssl-ca in \
                 [source] url to the CA that signed it (ssl-mode=verify_ca skips the host name, \
                 ssl-mode=required encrypts without checking)"
            ))
        }
        mysql_async::Error::Server(s) if s.code == 1045 => Error::config(format!(
            "MySQL refused the login; check the user and password in [source] url \
                 ({target}){}: {}",
            if plain {
                format!(", or, if {only_tls}")
            } else {
                String::new()
            },
            s.message
        )),
        mysql_async::Error::Server(s) if s.code == 1049 => Error::config(format!(
            "the database does not exist; check [source] url ({target}): {}",
            s.message
        )),
        mysql_async::Error::Server(s) => Error::config(format!(
            "MySQL refused the connection; check [source] url ({target}): {}",
            s.message
        )),
        _ => Error::transient(format!(
            "cannot reach MySQL ({target}); check host and port in [source] url and that \
                 the server is running: {e}"
        )),
    }
}

/// A server variable, or `None` when the server has no such variable.
async fn variable(conn: &mut Conn, name: &str) -> Result<Option<String>> {
    let row: Option<(String, String)> = conn
        .exec_first("SHOW GLOBAL VARIABLES WHERE Variable_name = ?", (name,))
        .await
        .map_err(|e| my_error("reading server variables", e))?;
    Ok(row.map(|(_, v)| v))
}

/// The binlog settings lakeshore needs, as problems with their fixes.
pub(crate) async fn binlog_problems(conn: &mut Conn) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let want = [
        ("log_bin", "ON", "start the server with --log-bin"),
        (
            "binlog_format",
            "ROW",
            "SET GLOBAL binlog_format = 'ROW' (and binlog_format=ROW in the server's config)",
        ),
        (
            "binlog_row_image",
            "FULL",
            "SET GLOBAL binlog_row_image = 'FULL' (and in the server's config)",
        ),
    ];
    for (name, value, fix) in want {
        match variable(conn, name).await? {
            Some(v) if v.eq_ignore_ascii_case(value) => {}
            Some(v) => problems.push(format!("{name}={v}, lakeshore needs {value}: {fix}")),
            None => problems.push(format!("{name} is not set, lakeshore needs {value}: {fix}")),
        }
    }
    if let Some(v) = variable(conn, "binlog_row_metadata").await?
        && !v.eq_ignore_ascii_case("FULL")
    {
        problems.push(format!(
            "binlog_row_metadata={v}, lakeshore needs FULL: SET GLOBAL binlog_row_metadata = \
             'FULL' (and in the server's config)"
        ));
    }
    if let Some(v) = variable(conn, "log_bin_compress").await?
        && v.eq_ignore_ascii_case("ON")
    {
        problems.push(
            "log_bin_compress=ON (MariaDB's compressed binlog events), which lakeshore does \
             not decode: SET GLOBAL log_bin_compress = OFF (and in the server's config)"
                .into(),
        );
    }
    // MySQL 8 only (MariaDB has none). Compressed transactions are decoded.
    if let Some(v) = variable(conn, "binlog_row_value_options").await?
        && v.to_uppercase().contains("PARTIAL_JSON")
    {
        problems.push(
            "binlog_row_value_options=PARTIAL_JSON (JSON partial updates), which lakeshore \
             does not decode: SET GLOBAL binlog_row_value_options = '' (and in the server's \
             config)"
                .into(),
        );
    }
    Ok(problems)
}

/// `validate --connect`: the server's GTID settings, and what they allow.
async fn gtid_line(conn: &mut Conn) -> Result<String> {
    if let Some(mode) = variable(conn, "gtid_mode").await? {
        let enforce = variable(conn, "enforce_gtid_consistency")
            .await?
            .unwrap_or_default();
        let on = mode.eq_ignore_ascii_case("ON") && enforce.eq_ignore_ascii_case("ON");
        return Ok(if on {
            format!("GTIDs: gtid_mode={mode}, enforce_gtid_consistency={enforce}")
        } else {
            format!(
                "GTIDs: gtid_mode={mode}, enforce_gtid_consistency={enforce}; positions are binlog \
                 file and offset only, which mean nothing on another server after a failover \
                 (set gtid_mode = ON and enforce_gtid_consistency = ON)"
            )
        });
    }
    let pos = variable(conn, "gtid_binlog_pos").await?.unwrap_or_default();
    Ok(format!("GTIDs: MariaDB, gtid_binlog_pos={pos}"))
}

/// `validate --connect`: how snapshot chunks will be placed in the binlog, or why they
/// cannot be.
async fn snapshot_line(conn: &mut Conn, opts: &MysqlOptions, grants: &str) -> Result<String> {
    if let Some(w) = &opts.snapshot_watermarks {
        let (db, t) = w.split_once('.').unwrap_or((w, ""));
        let exists = crate::snapshot::watermarks_exist(conn, db, t).await?;
        let may = |what: &str| {
            grants.contains("ALL PRIVILEGES ON *.*")
                || grants.lines().any(|g| {
                    (g.contains("ALL PRIVILEGES") || g.contains(what))
                        && (g.contains(" ON *.*")
                            || g.contains(&format!("ON `{}`.", db.to_uppercase())))
                })
        };
        let mut missing: Vec<&str> = ["SELECT", "INSERT", "UPDATE"]
            .into_iter()
            .filter(|p| !may(p))
            .collect();
        if !exists && !may("CREATE") {
            missing.push("CREATE");
        }
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "[source] snapshot_watermarks = {w:?}: the user lacks {} on it: GRANT {} ON \
                 `{db}`.`{t}` TO <user>",
                missing.join(", "),
                missing.join(", ")
            )));
        }
        let state = if exists {
            "exists"
        } else {
            "created at the first snapshot"
        };
        return Ok(format!(
            "snapshot: chunks read between watermarks written to {w} ({state})"
        ));
    }
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_file'")
        .await
        .map_err(|e| my_error("reading the snapshot status", e))?;
    if status.is_empty() {
        return Err(Error::config(
            "this server does not report its snapshots' binlog position (MySQL; MariaDB and \
             Percona Server do), which the default snapshot needs: set [source] \
             snapshot_watermarks = \"<db>.lakeshore_watermarks\" (a table lakeshore may write; \
             docs/sources/mysql.md)",
        ));
    }
    Ok("snapshot: chunks read at the server's consistent-snapshot position (MariaDB)".into())
}

/// Bytes of binlog the server wrote since `position` (a checkpoint's), by the sizes of
/// its binlog files: how far a stopped pipeline is behind. The server purges files by
/// its own expiry, not for lakeshore; a checkpoint whose file is gone needs a new
/// snapshot.
pub async fn binlog_behind(opts: &MysqlOptions, position: &SourcePosition) -> Result<u64> {
    let pos: crate::BinlogPos = position
        .0
        .get("binlog")
        .cloned()
        .and_then(|b| serde_json::from_value(b).ok())
        .ok_or_else(|| Error::internal("not a MySQL position"))?;
    let mut conn = connect(&opts.url).await?;
    let files: Vec<(String, u64)> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| my_error("listing the binlog files", e))?
        .into_iter()
        .map(|row: mysql_async::Row| {
            (
                row.get::<String, _>(0).unwrap_or_default(),
                row.get::<u64, _>(1).unwrap_or(0),
            )
        })
        .collect();
    Ok(bytes_after(&files, &pos))
}

/// Bytes in `files` (name, size; in order) after `pos`.
fn bytes_after(files: &[(String, u64)], pos: &crate::BinlogPos) -> u64 {
    files
        .iter()
        .filter(|(name, _)| {
            crate::BinlogPos {
                file: name.clone(),
                pos: 0,
            }
            .sequence()
                >= pos.sequence()
        })
        .map(|(name, size)| {
            if *name == pos.file {
                size.saturating_sub(pos.pos)
            } else {
                *size
            }
        })
        .sum()
}

/// How `conn` (connected with `url`) is protected: whether the session runs over TLS
/// (and which version), and whether the URL has the certificate checked.
pub(crate) async fn transport(
    conn: &mut Conn,
    url: &str,
) -> Result<(lakeshore_api::Transport, Option<String>)> {
    use lakeshore_api::Transport;
    let (_, tls) = split_tls(url)?;
    let cipher: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
        .await
        .map_err(|e| my_error("reading the TLS status", e))?;
    let version = cipher.map(|(_, v)| v).filter(|v| !v.is_empty());
    let transport = match (&version, tls.mode) {
        (Some(_), SslMode::VerifyCa | SslMode::VerifyIdentity) => Transport::Verified,
        (Some(_), _) => Transport::Unverified,
        (None, _) => Transport::Plain,
    };
    Ok((transport, version))
}

/// The character set of each collation id the server knows: a binlog table map names a
/// text column's collation by id.
pub(crate) async fn collation_charsets(
    conn: &mut Conn,
) -> Result<std::collections::HashMap<u16, String>> {
    let mut out: std::collections::HashMap<u16, String> = conn
        .query::<(u16, String), _>(
            "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL",
        )
        .await
        .map_err(|e| my_error("reading the server's collations", e))?
        .into_iter()
        .collect();
    // MariaDB 10.10+ lists the ids of its full collation names (UCA 14.0.0) only here;
    // MySQL has no such column, and the query fails harmlessly.
    if let Ok(rows) = conn
        .query::<(u16, String), _>(
            "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY \
             WHERE ID IS NOT NULL",
        )
        .await
    {
        out.extend(rows);
    }
    Ok(out)
}

/// Fail with the first binlog setting that is wrong.
pub(crate) async fn check_server(conn: &mut Conn) -> Result<()> {
    match binlog_problems(conn).await?.into_iter().next() {
        Some(p) => Err(Error::config(p)),
        None => Ok(()),
    }
}

/// `lakeshore validate --connect`: what `MysqlSource::open` would check, without
/// changing anything. One line per finding; the first problem is an error.
pub async fn check(opts: &MysqlOptions) -> Result<Vec<String>> {
    let mut conn = connect(&opts.url).await?;
    let mut lines = Vec::new();
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| my_error("reading the version", e))?;
    let (transport, tls_version) = transport(&mut conn, &opts.url).await?;
    let verified = transport == lakeshore_api::Transport::Verified;
    let tls = match tls_version {
        Some(v) if verified => format!("over TLS ({v}), certificate verified"),
        Some(v) => format!(
            "over TLS ({v}), certificate NOT verified (set ssl-mode=verify_identity and ssl-ca)"
        ),
        None => "WITHOUT TLS (set ssl-mode=verify_identity and ssl-ca)".to_string(),
    };
    lines.push(format!(
        "server {} ({}), {tls}",
        version.unwrap_or_default(),
        redact(&opts.url)
    ));
    if opts.startup != crate::Startup::SnapshotOnly {
        if let Some(p) = binlog_problems(&mut conn).await?.into_iter().next() {
            return Err(Error::config(p));
        }
        let mut binlog = "binlog: log_bin=ON, binlog_format=ROW, binlog_row_image=FULL".to_string();
        if let Some(v) = variable(&mut conn, "binlog_row_metadata").await? {
            binlog.push_str(&format!(", binlog_row_metadata={v}"));
        }
        if let Some(v) = variable(&mut conn, "binlog_transaction_compression").await? {
            binlog.push_str(&format!(
                ", binlog_transaction_compression={v} (compressed transactions are decoded)"
            ));
        }
        lines.push(binlog);
        let grants: Vec<String> = conn
            .query("SHOW GRANTS")
            .await
            .map_err(|e| my_error("reading grants", e))?;
        let all = grants.join(" ").to_uppercase();
        // MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR.
        for (privilege, alias) in [
            ("REPLICATION SLAVE", "REPLICATION SLAVE"),
            ("REPLICATION CLIENT", "BINLOG MONITOR"),
        ] {
            let has = all.contains("ALL PRIVILEGES ON *.*")
                || all.contains(privilege)
                || all.contains(alias);
            if !has {
                return Err(Error::config(format!(
                    "the user lacks {privilege}: GRANT REPLICATION SLAVE, REPLICATION CLIENT \
                         ON *.* TO <user>"
                )));
            }
        }
        lines.push("privileges: REPLICATION SLAVE, REPLICATION CLIENT".into());
        lines.push(gtid_line(&mut conn).await?);
        if opts.startup == crate::Startup::Snapshot {
            let grants = grants.join("\n").to_uppercase();
            lines.push(snapshot_line(&mut conn, opts, &grants).await?);
        }
    }
    for t in discover::discover(
        &mut conn,
        &opts.tables,
        &opts.columns,
        opts.snapshot_watermarks.as_deref(),
    )
    .await?
    {
        let key: Vec<&str> = t.key.iter().map(|&k| t.columns[k].name.as_str()).collect();
        lines.push(format!(
            "table {}: {} columns, key ({})",
            t.name,
            t.columns.len(),
            key.join(", ")
        ));
    }
    conn.disconnect().await.ok();
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_behind_counts_from_the_position_on() {
        let files = [
            ("bin.000001".to_string(), 1000),
            ("bin.000002".to_string(), 500),
            ("bin.000003".to_string(), 300),
        ];
        let at = |file: &str, pos| crate::BinlogPos {
            file: file.into(),
            pos,
        };
        assert_eq!(bytes_after(&files, &at("bin.000002", 100)), 400 + 300);
        assert_eq!(bytes_after(&files, &at("bin.000003", 300)), 0);
        assert_eq!(bytes_after(&files, &at("bin.000001", 4)), 996 + 800);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://cdc:s3cret@db:3306/shop"),
            "mysql://cdc:***@db:3306/shop"
        );
        assert_eq!(redact("mysql://root@db:3306"), "mysql://root@db:3306");
    }

    #[test]
    fn tls_settings_come_off_the_url() {
        let (url, tls) = split_tls("mysql://u:p@h:3306/db").unwrap();
        assert_eq!(
            (url.as_str(), tls.mode),
            ("mysql://u:p@h:3306/db", SslMode::Preferred)
        );
        assert!(tls.ssl_opts().unwrap().accept_invalid_certs());
        let (url, tls) = split_tls("mysql://h/db?ssl-mode=REQUIRED&ssl-ca=/c.pem&x=1").unwrap();
        assert_eq!(url, "mysql://h/db?x=1");
        assert_eq!(
            (tls.mode, tls.ca.as_deref()),
            (SslMode::VerifyCa, Some("/c.pem"))
        );
        let opts = tls.ssl_opts().unwrap();
        assert!(!opts.accept_invalid_certs() && opts.skip_domain_validation());
        let (_, tls) = split_tls("mysql://h?ssl_mode=verify-identity").unwrap();
        let opts = tls.ssl_opts().unwrap();
        assert!(!opts.accept_invalid_certs() && !opts.skip_domain_validation());
        let (_, tls) = split_tls("mysql://h?ssl-mode=disabled").unwrap();
        assert!(tls.ssl_opts().is_none());
        let err = split_tls("mysql://h?ssl-mode=on").unwrap_err().to_string();
        assert!(err.contains("ssl-mode=on is not a TLS mode"), "{err}");
        let err = split_tls("mysql://h?ssl-cert=c.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssl-cert is not supported"), "{err}");
    }
}
