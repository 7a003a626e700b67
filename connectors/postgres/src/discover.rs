//! Which tables the pipeline reads, their columns, keys and replica identity.

use std::sync::Arc;

use lakeshore_api::{Error, Result, TableSchema};
use tokio_postgres::Client;

use crate::Startup;
use crate::types::{self, Kind};

/// How a key column orders, so that chunk bounds compare the same in Rust as in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Integers: compared as numbers.
    Int,
    /// Strings compared byte by byte; SQL uses `COLLATE "C"` to agree.
    Bytes,
    /// Byte-ordered types whose text form sorts like their bytes (uuid, bytea hex).
    BytesNoCollate,
}

/// One source table.
#[derive(Debug, Clone)]
pub struct PgTable {
    /// `schema.table` as the user names it: the table's identity in the pipeline (its
    /// lake table, its progress in the position), kept when the table is renamed.
    pub name: String,
    /// The relation's OID, which a rename keeps and a re-creation changes.
    pub oid: u32,
    /// Its current schema and name (SQL statements use these).
    pub schema_name: String,
    pub table_name: String,
    /// Columns in attribute order.
    pub columns: Vec<PgColumn>,
    /// Indexes into `columns` of the key columns, in key order.
    pub key: Vec<usize>,
    /// `d` default, `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
    /// A partitioned table (its partitions' changes are published under its name).
    pub partitioned: bool,
    pub schema: TableSchema,
    /// The columns the pipeline reads (key columns always).
    pub filter: lakeshore_api::ColumnFilter,
    /// Every column the table has, read or not.
    pub all_columns: Vec<String>,
}

impl PgTable {
    /// Whether the pipeline reads column `column` (transforms leave the others out).
    pub fn reads(&self, column: &str) -> bool {
        self.schema.key.iter().any(|k| k == column) || self.filter.reads(&self.name, column)
    }
}

/// One column.
#[derive(Debug, Clone)]
pub struct PgColumn {
    pub name: String,
    /// PostgreSQL's type name (`format_type`), for messages.
    pub type_name: String,
    pub kind: Kind,
    /// Its binary form is what `types` decodes (else the snapshot reads its text form).
    pub raw: bool,
    /// Set for key columns.
    pub order: Option<KeyOrder>,
}

impl PgTable {
    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema_name),
            quote_ident(&self.table_name)
        )
    }

    /// `schema.table` as it is named now (differs from `name` after a rename).
    pub fn current_name(&self) -> String {
        format!("{}.{}", self.schema_name, self.table_name)
    }

    /// The column names, in order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The column kinds, in order.
    pub fn kinds(&self) -> Vec<Kind> {
        self.columns.iter().map(|c| c.kind).collect()
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'value'` with embedded quotes doubled (standard_conforming_strings is on since 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub use lakeshore_api::glob_match;

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::transient(format!("PostgreSQL: {what}")).with_source(e)
}

/// Find the tables matching `patterns` (`schema.table`, `*` globs) and describe them.
/// `opts`: the patterns (`tables`), keys for tables without a primary key
/// (`key_columns`), the columns read (`columns`) and whether changes are streamed.
/// `known`: the tables the pipeline followed so far, by their name in the pipeline and
/// OID (from the position). A known table found under a new name was renamed while the
/// pipeline was stopped: it keeps its name in the pipeline. A known name that now
/// belongs to another OID is that other table (re-created or swapped in; the caller
/// reads it again). A known table that is gone while the patterns still name it is an
/// error: its lake table would silently stop following it.
pub async fn discover(
    client: &Client,
    opts: &crate::PostgresOptions,
    known: &std::collections::BTreeMap<String, u32>,
) -> Result<Vec<PgTable>> {
    let patterns = &opts.tables;
    let rows = client
        .query(
            "SELECT c.oid, n.nspname, c.relname, c.relreplident::text, c.relkind = 'p' \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' AND c.relpersistence <> 't' \
             ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(pg_err("listing tables"))?;
    let current = |row: &tokio_postgres::Row| {
        format!("{}.{}", row.get::<_, String>(1), row.get::<_, String>(2))
    };
    let named = |name: &str| patterns.iter().any(|p| glob_match(p, name));
    // (name in the pipeline, row) of every table to read.
    let mut chosen: Vec<(String, &tokio_postgres::Row)> = Vec::new();
    for (name, oid) in known {
        if !named(name) {
            continue;
        }
        if let Some(row) = rows.iter().find(|r| current(r) == *name) {
            chosen.push((name.clone(), row));
        } else if let Some(row) = rows.iter().find(|r| r.get::<_, u32>(0) == *oid) {
            tracing::warn!(table = %name, now = %current(row), oid, "table renamed at the source: followed by its OID under its pipeline name");
            chosen.push((name.clone(), row));
        } else {
            // Transient: a table dropped to be created again may be back on a retry.
            return Err(Error::transient(format!(
                "table {name} (oid {oid}), which this pipeline follows, no longer exists at the source; its lake table keeps the rows it had. Re-create it, or take it out of [source] tables (and drop its lake table if it should go too)"
            )));
        }
    }
    for pattern in patterns {
        for row in &rows {
            let name = current(row);
            let oid: u32 = row.get(0);
            if !glob_match(pattern, &name)
                || chosen
                    .iter()
                    .any(|(n, r)| *n == name || r.get::<_, u32>(0) == oid)
            {
                continue;
            }
            chosen.push((name, row));
        }
        if !chosen.iter().any(|(n, _)| glob_match(pattern, n)) {
            return Err(Error::config(format!(
                "no table matches {pattern:?} in the database; check [source] tables \
                     (names are schema.table, e.g. \"public.orders\" or \"public.*\")"
            )));
        }
    }
    let mut tables = Vec::new();
    for (name, row) in chosen {
        let ident: String = row.get(3);
        let mut table = describe(
            client,
            row.get(0),
            name,
            row.get(1),
            row.get(2),
            ident.chars().next().unwrap_or('d'),
            opts,
        )
        .await?;
        table.partitioned = row.get(4);
        tables.push(table);
    }
    opts.columns.check_named(
        tables
            .iter()
            .map(|t| (t.name.as_str(), t.all_columns.as_slice())),
    )?;
    Ok(tables)
}

/// The columns of table `name` from its `pg_attribute` rows; a type lakeshore cannot map
/// is refused, naming the column.
fn columns_of(
    name: &str,
    cols: &[tokio_postgres::Row],
    opts: &crate::PostgresOptions,
) -> Result<Vec<PgColumn>> {
    let mut columns = Vec::new();
    for c in cols {
        let col_name: String = c.get(0);
        let type_name: String = c.get(1);
        let base: String = c.get(2);
        let typmod: i32 = c.get(4);
        let is_array: bool = c.get(5);
        let category: String = c.get(6);
        let as_text = opts.columns.as_text(name, &col_name);
        let kind = match as_text {
            true => Some(Kind::Text),
            false => {
                types::kind_of(&base, &category, typmod, is_array).map(|k| opts.arrays.kind(k))
            }
        };
        let kind = kind.ok_or_else(|| {
            Error::unsupported(format!(
                "table {name}, column {col_name}: type {type_name} has no Iceberg type in \
                     lakeshore; read it as text ([[transform]] tables = \"{name}\", \
                     as_text = [\"{col_name}\"]) or leave it out (exclude = [\"{col_name}\"])"
            ))
        })?;
        let raw = !matches!(kind, Kind::Text | Kind::Array(_))
            || (!is_array
                && !as_text
                && matches!(
                    base.as_str(),
                    "text" | "varchar" | "bpchar" | "name" | "citext"
                ));
        columns.push(PgColumn {
            name: col_name,
            type_name,
            kind,
            raw,
            order: None,
        });
    }
    Ok(columns)
}

/// A stored generated column is in the snapshot but never in the change stream
/// (pgoutput leaves it out before PostgreSQL 18): every changed row would lose its
/// value in the lake. Refused, with the transform that keeps it.
fn refuse_generated(name: &str, cols: &[tokio_postgres::Row]) -> Result<()> {
    let Some(c) = cols
        .iter()
        .find(|c| c.get::<_, Option<String>>(8).is_some())
    else {
        return Ok(());
    };
    let column: String = c.get(0);
    let expression: String = c.get(8);
    Err(Error::config(format!(
        "table {name}, column {column}: a generated column, which logical replication \
             does not send, so changed rows would lose its value; leave it out and compute \
             it in the lake instead: [[transform]] tables = \"{name}\", exclude = \
             [\"{column}\"], and under [transform.compute] {column} = \"{}\" (PostgreSQL's \
             expression; adjust it to DataFusion SQL where they differ)",
        expression.replace('"', "\\\"")
    )))
}

/// Why a table's replica identity cannot carry the pipeline's key in updates and
/// deletes (or, for `deleted_values`, a deleted row's values), with the `ALTER TABLE`
/// that fixes it.
fn identity_problem(
    replica_identity: char,
    no_pk: bool,
    deleted_values: bool,
    qualified: &str,
) -> Option<String> {
    match replica_identity {
        'f' => None,
        _ if deleted_values => Some(format!(
            "is kept with soft_delete or before_images, which keep a row's old values, and \
             PostgreSQL sends them only under REPLICA IDENTITY FULL; run ALTER TABLE \
             {qualified} REPLICA IDENTITY FULL (or leave soft_delete / before_images out)"
        )),
        _ if no_pk && replica_identity != 'f' => Some(format!(
            "has no primary key, so its updates and deletes do not carry the key columns; \
             run ALTER TABLE {qualified} REPLICA IDENTITY FULL"
        )),
        'i' => Some(format!(
            "has REPLICA IDENTITY USING INDEX, whose old images need not carry the \
             pipeline's key; run ALTER TABLE {qualified} REPLICA IDENTITY DEFAULT (or FULL)"
        )),
        'n' => Some(format!(
            "has REPLICA IDENTITY NOTHING, so updates and deletes cannot be replicated; run \
             ALTER TABLE {qualified} REPLICA IDENTITY DEFAULT"
        )),
        _ => None,
    }
}

/// How snapshot chunks order key column `k` of table `name` (`row`: its catalog row).
fn key_order(
    name: &str,
    k: &str,
    column: &PgColumn,
    row: &tokio_postgres::Row,
) -> Result<KeyOrder> {
    // An array's base type is its element's, but an array never orders like it.
    let base: String = if row.get(5) {
        "array".into()
    } else {
        row.get(2)
    };
    Ok(match (column.kind, base.as_str()) {
        (Kind::Int16 | Kind::Int32 | Kind::Int64, _) => KeyOrder::Int,
        (Kind::Text, "text" | "varchar" | "bpchar" | "name") => KeyOrder::Bytes,
        (Kind::Text, "uuid") | (Kind::Bytea, _) => KeyOrder::BytesNoCollate,
        _ => {
            return Err(Error::unsupported(format!(
                "table {name}, key column {k}: snapshot chunks need an integer, text, \
                     uuid or bytea key, not {}",
                column.type_name
            )));
        }
    })
}

async fn describe(
    client: &Client,
    oid: u32,
    name: String,
    schema_name: String,
    table_name: String,
    replica_identity: char,
    opts: &crate::PostgresOptions,
) -> Result<PgTable> {
    let cols = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), \
                    coalesce(et.typname, bt.typname, t.typname)::text, t.typcategory::text, \
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
                    (t.typcategory = 'A' OR coalesce(bt.typcategory, '') = 'A'), \
                    coalesce(et.typcategory, bt.typcategory, t.typcategory)::text, a.attnotnull, \
                    CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
             LEFT JOIN pg_type et ON et.oid = coalesce(bt.typelem, t.typelem) \
                  AND coalesce(bt.typcategory, t.typcategory) = 'A' \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(pg_err("reading columns"))?;
    let pk = client
        .query(
            "SELECT a.attname FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(pg_err("reading the primary key"))?;
    let mut key_names: Vec<String> = pk.iter().map(|r| r.get(0)).collect();
    if let Some(explicit) = opts.key_columns.get(&name) {
        key_names = explicit.clone();
    }
    let all_columns: Vec<String> = cols.iter().map(|c| c.get(0)).collect();
    // Columns the transforms leave out are never read (key columns always are).
    let cols: Vec<tokio_postgres::Row> = cols
        .into_iter()
        .filter(|c| {
            let column: String = c.get(0);
            key_names.contains(&column) || opts.columns.reads(&name, &column)
        })
        .collect();
    if opts.startup != Startup::SnapshotOnly {
        refuse_generated(&name, &cols)?;
    }
    let mut columns = columns_of(&name, &cols, opts)?;
    if key_names.is_empty() {
        return Err(Error::config(format!(
            "table {name} has no primary key; add one, or name the key in [source] \
                 key_columns = {{ \"{name}\" = [\"col\", ...] }} (then the table also needs \
                 ALTER TABLE {} REPLICA IDENTITY FULL)",
            quote_ident(&schema_name) + "." + &quote_ident(&table_name)
        )));
    }
    let qualified = format!("{}.{}", quote_ident(&schema_name), quote_ident(&table_name));
    let values = opts.startup != Startup::SnapshotOnly && opts.columns.needs_deleted_values(&name);
    if let Some(problem) = identity_problem(replica_identity, pk.is_empty(), values, &qualified) {
        return Err(Error::config(format!("table {name} {problem}")));
    }

    let mut key = Vec::new();
    for k in &key_names {
        let i = columns.iter().position(|c| &c.name == k).ok_or_else(|| {
            Error::config(format!(
                "table {name} has no column {k:?}; check [source] key_columns"
            ))
        })?;
        let order = key_order(&name, k, &columns[i], &cols[i])?;
        if pk.is_empty() && !cols[i].get::<_, bool>(7) {
            return Err(Error::config(format!(
                "table {name}, key column {k} may be null; key_columns must be NOT NULL \
                     (and unique): ALTER TABLE {}.{} ALTER COLUMN {} SET NOT NULL",
                quote_ident(&schema_name),
                quote_ident(&table_name),
                quote_ident(k)
            )));
        }
        columns[i].order = Some(order);
        key.push(i);
    }
    let pairs: Vec<(String, Kind)> = columns.iter().map(|c| (c.name.clone(), c.kind)).collect();
    let schema = TableSchema {
        name: name.clone(),
        schema: types::arrow_schema(&pairs, &key_names),
        key: key_names,
    };
    let _ = Arc::clone(&schema.schema);
    Ok(PgTable {
        name,
        oid,
        schema_name,
        table_name,
        columns,
        key,
        replica_identity,
        partitioned: false,
        schema,
        filter: opts.columns.clone(),
        all_columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_quoting() {
        assert!(glob_match("public.*", "public.orders"));
        assert!(glob_match("*.orders", "shop.orders"));
        assert!(!glob_match("public.o*s", "public.orderz"));
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("o'neil"), "'o''neil'");
    }
}
