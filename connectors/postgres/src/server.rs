//! Talking to the server outside the replication stream: connecting (and saying what is
//! wrong when that fails), the set-up checks shared by `open` and `validate --connect`,
//! the publication and the slot, and small catalog queries.

use std::time::Duration;

use lakeshore_api::{Error, Result};
use tokio_postgres::Client;

use crate::discover::{self, PgTable, quote_ident};
use crate::types;
use crate::{PostgresOptions, Startup};

pub use lakeshore_api::url::redact;

/// Session settings that fix the text formats `types` parses.
pub(crate) const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3";

/// Connect a regular session.
pub async fn connect(url: &str) -> Result<Client> {
    let (plain, tls) = crate::tls::split(url)?;
    let mut config: tokio_postgres::Config = plain.parse().map_err(|e| {
        Error::config(
            "cannot parse [source] url; write postgres://user:${PASSWORD}@host:5432/database",
        )
        .with_source(e)
    })?;
    config.options(SESSION_OPTIONS);
    config.connect_timeout(Duration::from_secs(10));
    config.ssl_mode(tls.ssl_mode());
    let (client, connection) = config
        .connect(tls.connector()?)
        .await
        .map_err(|e| connect_error(url, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

fn connect_error(url: &str, e: tokio_postgres::Error) -> Error {
    let target = redact(url);
    if e.to_string().contains("TLS") {
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let hint = if cause.contains("does not support TLS") {
            "the server does not offer TLS; enable ssl on the server or lower sslmode in              [source] url"
        } else if cause.contains("certificate") {
            "the server's TLS certificate did not verify; check sslrootcert (the CA that              signed it) and, for sslmode=verify-full, that the URL's host is a name in the              certificate"
        } else {
            "the TLS handshake failed; check sslmode and sslrootcert in [source] url"
        };
        return Error::config(format!("{hint} ({target}): {cause}"));
    }
    let hint = match e.as_db_error().map(|d| d.code().code()) {
        Some("28000")
            if e.as_db_error()
                .is_some_and(|d| d.message().contains("no encryption")) =>
        {
            "the server accepts only TLS connections from here; add sslmode=require (better:              verify-full with sslrootcert=/path/to/ca.pem) to [source] url"
        }
        Some("28P01") | Some("28000") => {
            "PostgreSQL refused the login; check the user and password in [source] url"
        }
        Some("3D000") => "the database does not exist; check the database name in [source] url",
        // Shutting down, starting up, out of connections: a moment's condition that a
        // retry gets past, not a setting (class 57 operator intervention, 53300).
        Some(code) if code.starts_with("57") || code == "53300" => {
            return Error::transient(format!(
                "PostgreSQL ({target}) is shutting down, starting or full for now: {}",
                e.as_db_error().map(|d| d.message()).unwrap_or_default()
            ))
            .with_source(e);
        }
        Some(_) => "PostgreSQL refused the connection; check [source] url",
        None => {
            // No answer from the server: it may be down for a moment (`run` retries).
            return Error::transient(format!(
                "cannot reach PostgreSQL ({target}); check host and port in [source] url \
                     and that the server is running"
            ))
            .with_source(e);
        }
    };
    let said = e
        .as_db_error()
        .map(|d| format!(": {}", d.message()))
        .unwrap_or_default();
    Error::config(format!("{hint} ({target}){said}")).with_source(e)
}

/// A PostgreSQL failure while doing `what`; the server's message (`db error: ERROR:
/// relation "x" does not exist`) comes with the cause, kept as the source.
pub(crate) fn pg_error(what: &str, e: tokio_postgres::Error) -> Error {
    Error::transient(format!("PostgreSQL: {what}")).with_source(e)
}

pub(crate) fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s
        .split_once('/')
        .ok_or_else(|| Error::internal(format!("bad LSN {s:?}")))?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| Error::internal("bad LSN"))?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| Error::internal("bad LSN"))?;
    Ok(hi << 32 | lo)
}

/// Whether `table` has the column `name` now.
/// `X/Y`, as PostgreSQL writes an LSN.
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub(crate) async fn column_exists(client: &Client, table: &PgTable, name: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 \
             AND NOT attisdropped",
            &[&table.quoted(), &name],
        )
        .await
        .map_err(|e| pg_error("reading the columns", e))?;
    Ok(row.is_some())
}

/// The kind of a column of type `oid` with modifier `typmod`; `None` when unmapped or the
/// catalog cannot be read.
pub(crate) async fn type_kind(client: &Client, oid: u32, typmod: i32) -> Option<types::Kind> {
    let row = client
        .query_opt(
            "SELECT coalesce(et.typname, bt.typname, t.typname)::text, \
                    coalesce(et.typcategory, bt.typcategory, t.typcategory)::text, \
                    (t.typcategory = 'A' OR coalesce(bt.typcategory, '') = 'A'), \
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE $2 END \
             FROM pg_type t LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
             LEFT JOIN pg_type et ON et.oid = coalesce(bt.typelem, t.typelem) \
                  AND coalesce(bt.typcategory, t.typcategory) = 'A' \
             WHERE t.oid = $1",
            &[&oid, &typmod],
        )
        .await
        .ok()??;
    types::kind_of(
        &row.get::<_, String>(0),
        &row.get::<_, String>(1),
        row.get(3),
        row.get(2),
    )
}

pub(crate) async fn current_wal_lsn(client: &Client) -> Result<u64> {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| pg_error("pg_current_wal_insert_lsn()", e))?;
    parse_lsn(&row.get::<_, String>(0))
}

/// `lakeshore validate --connect`: everything [`PostgresSource::open`] would check or set
/// up, without changing anything. Returns one line per finding; the first problem is an
/// error that says what to change.
pub async fn check(opts: &PostgresOptions) -> Result<Vec<String>> {
    let client = connect(&opts.url).await?;
    let transport = match crate::tls::transport(&client, &opts.url).await? {
        lakeshore_api::Transport::Verified => "over TLS, certificate verified",
        lakeshore_api::Transport::Unverified => {
            "over TLS, certificate NOT verified (set sslmode=verify-full and sslrootcert)"
        }
        lakeshore_api::Transport::Plain => "WITHOUT TLS (set sslmode=verify-full and sslrootcert)",
    };
    let mut report = vec![format!("connected to {} {transport}", redact(&opts.url))];
    let streaming = opts.startup != Startup::SnapshotOnly;
    if streaming {
        check_server(&client).await?;
        report.push("wal_level=logical; the user may start replication".into());
    }
    let tables = discover::discover(&client, opts, &Default::default()).await?;
    for t in &tables {
        let key: Vec<&str> = t.key.iter().map(|&k| t.columns[k].name.as_str()).collect();
        report.push(format!(
            "table {}: {} columns, key ({}), replica identity {}",
            t.name,
            t.columns.len(),
            key.join(", "),
            match t.replica_identity {
                'f' => "full",
                'i' => "index",
                _ => "default",
            }
        ));
    }
    if !streaming {
        return Ok(report);
    }
    report.push(match publication_state(&client, &opts.publication, &tables).await? {
        None => format!(
            "publication {} does not exist; lakeshore will create it (needs ownership of the tables)",
            opts.publication
        ),
        Some(missing) if missing.is_empty() => {
            format!("publication {} covers the tables", opts.publication)
        }
        Some(missing) => {
            let names: Vec<&str> = missing.iter().map(|t| t.name.as_str()).collect();
            format!(
                "publication {} lacks {}; lakeshore will add them",
                opts.publication,
                names.join(", ")
            )
        }
    });
    match slot_state(&client, &opts.slot).await? {
        Some(slot) => report.push(format!(
            "slot {} exists{}, retains {} MiB of WAL",
            opts.slot,
            if slot.active { " and is in use" } else { "" },
            slot.retained_bytes >> 20
        )),
        None => {
            let free = client
                .query_one(
                    "SELECT current_setting('max_replication_slots')::int - \
                            (SELECT count(*) FROM pg_replication_slots)::int",
                    &[],
                )
                .await
                .map_err(|e| pg_error("counting replication slots", e))?
                .get::<_, i32>(0);
            if free <= 0 {
                return Err(Error::config(
                    "no free replication slot: raise max_replication_slots (needs a restart) \
                     or drop an unused slot",
                ));
            }
            report.push(format!(
                "slot {} does not exist; lakeshore will create it ({free} free)",
                opts.slot
            ));
        }
    }
    Ok(report)
}

/// `wal_level = logical` and the REPLICATION attribute.
pub(crate) async fn check_server(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                    current_user::text, current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading server settings", e))?;
    let wal_level: String = row.get(0);
    let can_replicate: bool = row.get(1);
    let user: String = row.get(2);
    let version: i32 = row.get(3);
    if version < 140000 {
        return Err(Error::config(format!(
            "PostgreSQL {} is too old; lakeshore needs 14 or newer",
            version / 10000
        )));
    }
    if wal_level != "logical" {
        return Err(Error::config(format!(
            "PostgreSQL runs with wal_level={wal_level}; logical replication needs \
                 wal_level=logical: run ALTER SYSTEM SET wal_level = logical and restart \
                 PostgreSQL (or use startup = \"snapshot-only\")"
        )));
    }
    if !can_replicate {
        return Err(Error::config(format!(
            "user {user} may not start replication; run ALTER ROLE {} REPLICATION",
            quote_ident(&user)
        )));
    }
    Ok(())
}

/// Create the publication for `tables`, or add the tables it lacks.
pub(crate) async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[PgTable],
) -> Result<()> {
    let list = |ts: &[&PgTable]| ts.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let sql = match publication_state(client, name, tables).await? {
        None => format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            quote_ident(name),
            list(&tables.iter().collect::<Vec<_>>())
        ),
        Some(missing) if missing.is_empty() => return Ok(()),
        Some(missing) => format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(name),
            list(&missing)
        ),
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| publication_error(name, e))?;
    tracing::info!(publication = name, sql = %sql, "publication set up");
    Ok(())
}

/// `None` when the publication does not exist, else the tables it lacks. An existing
/// publication that cannot serve the pipeline is an error saying what to change.
async fn publication_state<'t>(
    client: &Client,
    name: &str,
    tables: &'t [PgTable],
) -> Result<Option<Vec<&'t PgTable>>> {
    let Some(row) = client
        .query_opt(
            "SELECT puballtables, pubviaroot, pubinsert, pubupdate, pubdelete, pubtruncate \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| pg_error("reading publications", e))?
    else {
        return Ok(None);
    };
    // Partitions' changes must come under the partitioned table's name.
    if tables.iter().any(|t| t.partitioned) && !row.get::<_, bool>(1) {
        return Err(Error::config(format!(
            "publication {name} reports partitions' changes under the partitions' \
                 names; run ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
            quote_ident(name)
        )));
    }
    // A TRUNCATE the publication leaves out would leave the lake with every old row.
    let missing: Vec<&str> = [(2, "insert"), (3, "update"), (4, "delete"), (5, "truncate")]
        .into_iter()
        .filter(|(i, _)| !row.get::<_, bool>(*i))
        .map(|(_, op)| op)
        .collect();
    if !missing.is_empty() {
        return Err(Error::config(format!(
            "publication {name} does not publish {}, so those changes would never reach the lake; run \
                 ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
            missing.join(", "),
            quote_ident(name)
        )));
    }
    if row.get::<_, bool>(0) {
        return Ok(Some(Vec::new()));
    }
    // By OID: a table renamed since it joined is still a member.
    let rows = client
        .query(
            "SELECT c.oid FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| pg_error("reading publication tables", e))?;
    let have: Vec<u32> = rows.iter().map(|r| r.get(0)).collect();
    refuse_partial_tables(client, name, tables).await?;
    Ok(Some(
        tables.iter().filter(|t| !have.contains(&t.oid)).collect(),
    ))
}

/// A member table published with a column list or a row filter (PostgreSQL 15+) would
/// reach the lake with the columns it leaves out as null and without the rows it filters:
/// refused, naming the statements that publish the table whole.
async fn refuse_partial_tables(client: &Client, name: &str, tables: &[PgTable]) -> Result<()> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| pg_error("reading the server version", e))?
        .get(0);
    if version < 150000 {
        return Ok(());
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let rows = client
        .query(
            "SELECT pr.prrelid, pr.prattrs IS NOT NULL, pg_get_expr(pr.prqual, pr.prrelid) \
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prrelid = ANY($2) \
               AND (pr.prattrs IS NOT NULL OR pr.prqual IS NOT NULL)",
            &[&name, &oids],
        )
        .await
        .map_err(|e| pg_error("reading publication column lists and row filters", e))?;
    let Some(row) = rows.first() else {
        return Ok(());
    };
    let oid: u32 = row.get(0);
    let table = tables
        .iter()
        .find(|t| t.oid == oid)
        .map_or_else(String::new, |t| t.quoted());
    let what = match row.get::<_, Option<String>>(2) {
        Some(filter) if row.get::<_, bool>(1) => {
            format!("a column list and the row filter WHERE {filter}")
        }
        Some(filter) => format!("the row filter WHERE {filter}"),
        None => "a column list".to_string(),
    };
    let publication = quote_ident(name);
    Err(Error::config(format!(
        "publication {name} publishes {table} with {what}, so the columns or rows it \
             leaves out would never reach the lake; publish the whole table in one \
             transaction: BEGIN; ALTER PUBLICATION {publication} DROP TABLE {table}; \
             ALTER PUBLICATION {publication} ADD TABLE {table}; COMMIT; (to keep rows or \
             columns out of the lake, use a [[transform]] with `filter` or `exclude`; if \
             the pipeline already ran with this publication, read the table again with \
             POST /pipelines/<name>/resnapshot?table=...)"
    )))
}

fn publication_error(name: &str, e: tokio_postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    Error::config(format!(
        "cannot create or extend publication {name}: {detail}; create it as the tables' \
             owner (CREATE PUBLICATION {} FOR TABLE ...) or set [source] publication",
        quote_ident(name)
    ))
    .with_source(e)
}

/// Create the logical slot if absent; check an existing one.
pub(crate) async fn ensure_slot(client: &Client, slot: &str) -> Result<()> {
    if slot_state(client, slot).await?.is_some() {
        return Ok(());
    }
    client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| {
            let detail = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            Error::config(format!(
                "cannot create replication slot {slot}: {detail}; check \
                     max_replication_slots and [source] slot"
            ))
            .with_source(e)
        })?;
    tracing::info!(slot, "created replication slot");
    Ok(())
}

/// Bytes of WAL the pipeline's replication slot keeps on the server (`None`: there is
/// no such slot), for a pipeline that stopped: nothing else reports it then.
pub async fn retained_wal(opts: &PostgresOptions) -> Result<Option<u64>> {
    let client = connect(&opts.url).await?;
    Ok(slot_state(&client, &opts.slot)
        .await?
        .map(|s| s.retained_bytes.max(0) as u64))
}

/// An existing slot.
struct SlotState {
    active: bool,
    retained_bytes: i64,
}

/// `None` when the slot does not exist; a slot that is not a pgoutput slot of this
/// database is an error.
async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>> {
    let Some(r) = client
        .query_opt(
            "SELECT plugin, database = current_database(), active, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| pg_error("reading replication slots", e))?
    else {
        return Ok(None);
    };
    let plugin: Option<String> = r.get(0);
    let same_db: Option<bool> = r.get(1);
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(Error::config(format!(
            "replication slot {slot} exists but is not a pgoutput slot of this database; \
                 choose another [source] slot name"
        )));
    }
    Ok(Some(SlotState {
        active: r.get(2),
        retained_bytes: r.get::<_, Option<i64>>(3).unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(redact("postgres://db/shop"), "postgres://db/shop");
    }

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("0/16B3748").unwrap(), 0x16B3748);
        assert_eq!(parse_lsn("1/0").unwrap(), 1 << 32);
    }
}
