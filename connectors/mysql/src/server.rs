//! Connecting (errors that name the setting to change, passwords redacted), the server's
//! binlog settings, and `validate --connect`.

use lakeshore_api::{Error, ErrorKind, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::{MysqlOptions, discover};

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// An error from a query, as a transient failure (the server may be restarting).
pub(crate) fn my_error(what: &str, e: mysql_async::Error) -> Error {
    let msg = match &e {
        mysql_async::Error::Server(s) => format!("MySQL: {what}: {}", s.message),
        _ => format!("MySQL: {what}: {e}"),
    };
    Error::new(ErrorKind::Transient, msg)
}

/// Connect with lakeshore's session settings (UTC, utf8mb4).
pub async fn connect(url: &str) -> Result<Conn> {
    let opts = Opts::from_url(url).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot parse [source] url ({e}); write mysql://user:${{PASSWORD}}@host:3306"),
        )
    })?;
    let opts = OptsBuilder::from_opts(opts)
        .init(vec![
            "SET time_zone = '+00:00'",
            "SET NAMES utf8mb4",
            "SET SESSION sql_mode = ''",
        ])
        .prefer_socket(false);
    Conn::new(opts).await.map_err(|e| connect_error(url, e))
}

fn connect_error(url: &str, e: mysql_async::Error) -> Error {
    let target = redact(url);
    match &e {
        mysql_async::Error::Server(s) if s.code == 1045 => Error::new(
            ErrorKind::Config,
            format!(
                "MySQL refused the login; check the user and password in [source] url \
                 ({target}): {}",
                s.message
            ),
        ),
        mysql_async::Error::Server(s) if s.code == 1049 => Error::new(
            ErrorKind::Config,
            format!(
                "the database does not exist; check [source] url ({target}): {}",
                s.message
            ),
        ),
        mysql_async::Error::Server(s) => Error::new(
            ErrorKind::Config,
            format!(
                "MySQL refused the connection; check [source] url ({target}): {}",
                s.message
            ),
        ),
        _ => Error::new(
            ErrorKind::Transient,
            format!(
                "cannot reach MySQL ({target}); check host and port in [source] url and that \
                 the server is running: {e}"
            ),
        ),
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
    Ok(problems)
}

/// Fail with the first binlog setting that is wrong.
pub(crate) async fn check_server(conn: &mut Conn) -> Result<()> {
    match binlog_problems(conn).await?.into_iter().next() {
        Some(p) => Err(Error::new(ErrorKind::Config, p)),
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
    lines.push(format!(
        "server {} ({})",
        version.unwrap_or_default(),
        redact(&opts.url)
    ));
    if opts.startup != crate::Startup::SnapshotOnly {
        if let Some(p) = binlog_problems(&mut conn).await?.into_iter().next() {
            return Err(Error::new(ErrorKind::Config, p));
        }
        lines.push("binlog: log_bin=ON, binlog_format=ROW, binlog_row_image=FULL".into());
        let grants: Vec<String> = conn
            .query("SHOW GRANTS")
            .await
            .map_err(|e| my_error("reading grants", e))?;
        let all = grants.join(" ").to_uppercase();
        for privilege in ["REPLICATION SLAVE", "REPLICATION CLIENT"] {
            let has = all.contains("ALL PRIVILEGES ON *.*") || all.contains(privilege);
            if !has {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the user lacks {privilege}: GRANT REPLICATION SLAVE, REPLICATION CLIENT \
                         ON *.* TO <user>"
                    ),
                ));
            }
        }
        lines.push("privileges: REPLICATION SLAVE, REPLICATION CLIENT".into());
    }
    for t in discover::discover(&mut conn, &opts.tables).await? {
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
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://cdc:s3cret@db:3306/shop"),
            "mysql://cdc:***@db:3306/shop"
        );
        assert_eq!(redact("mysql://root@db:3306"), "mysql://root@db:3306");
    }
}
