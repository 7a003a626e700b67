//! Which tables the filter names, their columns, types and primary keys
//! (`information_schema`), and how their key values order.

use std::sync::Arc;

use lakeshore_api::{Error, Result, TableSchema};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::server::my_error;
use crate::types::{self, Kind};

/// One column.
#[derive(Debug, Clone)]
pub struct MyColumn {
    pub name: String,
    /// `COLUMN_TYPE`, for messages.
    pub column_type: String,
    pub kind: Kind,
}

/// One source table.
#[derive(Debug, Clone)]
pub struct MyTable {
    /// `db.table`.
    pub name: String,
    pub db: String,
    pub table: String,
    pub columns: Vec<MyColumn>,
    /// Key column indexes, in key order.
    pub key: Vec<usize>,
    pub schema: TableSchema,
    /// The columns the pipeline reads (key columns always).
    pub filter: lakeshore_api::ColumnFilter,
    /// Every column the table has, read or not, when the user may see them all (no
    /// column-level grants: information_schema hides the columns a user may not
    /// select); `None` otherwise.
    pub all_columns: Option<Vec<String>>,
}

impl MyTable {
    /// Whether the pipeline reads column `column` (transforms leave the others out).
    pub fn reads(&self, column: &str) -> bool {
        self.schema.key.iter().any(|k| k == column) || self.filter.reads(&self.name, column)
    }

    /// The table's schema rebuilt from its columns after they changed (added, widened).
    pub fn rebuild_schema(&mut self) -> TableSchema {
        let pairs: Vec<(String, Kind)> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind.clone()))
            .collect();
        self.schema.schema = types::arrow_schema(&pairs, &self.schema.key);
        self.schema.clone()
    }

    /// `` `db`.`table` ``.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.db), quote_ident(&self.table))
    }

    /// The column kinds, in order.
    pub fn kinds(&self) -> Vec<Kind> {
        self.columns.iter().map(|c| c.kind.clone()).collect()
    }
}

/// `` `name` `` with backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

pub use lakeshore_api::glob_match;

/// The tables `patterns` name, with their columns and keys. A pattern that matches
/// nothing, a table without a primary key or a column of an unmapped type is an error
/// naming it.
pub async fn discover(
    conn: &mut Conn,
    patterns: &[String],
    filter: &lakeshore_api::ColumnFilter,
    skip: Option<&str>,
) -> Result<Vec<MyTable>> {
    let all: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await
        .map_err(|e| my_error("listing tables", e))?;
    let mut tables = Vec::new();
    for pattern in patterns {
        let matched: Vec<&(String, String)> = all
            .iter()
            .filter(|(db, t)| glob_match(pattern, &format!("{db}.{t}")))
            .collect();
        if matched.is_empty() {
            return Err(Error::config(format!(
                "[source] tables: no table matches \"{pattern}\"; check the database and \
                     table names (and that the user may SELECT them)"
            )));
        }
        for (db, t) in matched {
            let name = format!("{db}.{t}");
            // The snapshot watermark table is never a table of the lake.
            if skip == Some(name.as_str()) || tables.iter().any(|x: &MyTable| x.name == name) {
                continue;
            }
            tables.push(describe(conn, db, t, filter).await?);
        }
    }
    // Tables with column grants may hide columns from the user: not checked.
    filter.check_named(
        tables
            .iter()
            .filter_map(|t| Some((t.name.as_str(), t.all_columns.as_deref()?))),
    )?;
    Ok(tables)
}

/// One table's columns and key as the server has them now.
pub async fn describe(
    conn: &mut Conn,
    db: &str,
    table: &str,
    filter: &lakeshore_api::ColumnFilter,
) -> Result<MyTable> {
    let name = format!("{db}.{table}");
    type ColumnRow = (
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<ColumnRow> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, \
                    CHARACTER_SET_NAME, COLLATION_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await
        .map_err(|e| my_error("reading columns", e))?;
    let key_names = key_of(conn, db, table).await?;
    let column_grants: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.COLUMN_PRIVILEGES \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, table),
        )
        .await
        .map_err(|e| my_error("reading column privileges", e))?;
    let all_columns = (column_grants.unwrap_or(0) == 0)
        .then(|| rows.iter().map(|r| r.0.clone()).collect::<Vec<String>>());
    let mut columns = Vec::new();
    let mut collations = Vec::new();
    for (col, data_type, column_type, precision, scale, charset, collation) in rows {
        // Columns the transforms leave out are never read (key columns always are).
        if !key_names.contains(&col) && !filter.reads(&name, &col) {
            continue;
        }
        if filter.as_text(&name, &col) {
            return Err(Error::config(format!(
                "table {name}, column {col}: as_text reads PostgreSQL columns only (the \
                     binlog sends MySQL values in binary); leave it out of as_text, or \
                     exclude the column"
            )));
        }
        collations.push(collation.unwrap_or_default());
        let kind = types::kind_of(
            &data_type.to_lowercase(),
            &column_type.to_lowercase(),
            precision,
            scale,
            charset.as_deref(),
        )
        .ok_or_else(|| unsupported(&name, &col, &column_type, charset.as_deref()))?;
        columns.push(MyColumn {
            name: col,
            column_type,
            kind,
        });
    }
    if key_names.is_empty() {
        return Err(Error::config(format!(
            "table {name} has no primary key and no unique index on NOT NULL columns; add \
                 one (ALTER TABLE {} ADD PRIMARY KEY (...), or ADD UNIQUE KEY (...) on NOT \
                 NULL columns): lakeshore reads snapshots in key order and upserts by key",
            quote_ident(db) + "." + &quote_ident(table)
        )));
    }
    // The two reads are not one snapshot of the catalog: a table dropped, re-created or
    // altered in between reads again after a restart (found by the differential test,
    // MariaDB seed 1, where this used to panic).
    let key: Vec<usize> = key_names
        .iter()
        .map(|k| {
            columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                Error::transient(format!(
                    "table {name} changed while its columns were read; reading it again"
                ))
            })
        })
        .collect::<Result<_>>()?;
    check_key(&name, &columns, &collations, &key)?;
    let pairs: Vec<(String, Kind)> = columns
        .iter()
        .map(|c| (c.name.clone(), c.kind.clone()))
        .collect();
    let schema = TableSchema {
        name: name.clone(),
        schema: types::arrow_schema(&pairs, &key_names),
        key: key_names,
    };
    Ok(MyTable {
        name,
        db: db.to_string(),
        table: table.to_string(),
        columns,
        key,
        schema,
        filter: filter.clone(),
        all_columns,
    })
}

/// Why column `col` of table `name` cannot be read, and what to do.
fn unsupported(name: &str, col: &str, column_type: &str, charset: Option<&str>) -> Error {
    let message = match charset.map(types::Charset::of) {
        Some(types::Charset::Unsupported(cs)) => format!(
            "table {name}, column {col}: character set {cs} is not supported (the \
             binlog carries text as stored, and lakeshore decodes utf8mb4, utf8mb3, \
             ascii and latin1); convert it (ALTER TABLE {name} MODIFY {col} \
             {column_type} CHARACTER SET utf8mb4) or exclude the table"
        ),
        _ => format!(
            "table {name}, column {col}: type {column_type} is not supported; exclude \
             the table or change the column's type"
        ),
    };
    Error::unsupported(message)
}

/// The key columns of table `name` must be of a kind whose order lakeshore reproduces.
/// The columns of the table's primary key, else of [`unique_not_null_key`]; empty when
/// it has neither.
async fn key_of(conn: &mut Conn, db: &str, table: &str) -> Result<Vec<String>> {
    let primary: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await
        .map_err(|e| my_error("reading the primary key", e))?;
    if !primary.is_empty() {
        return Ok(primary);
    }
    unique_not_null_key(conn, db, table).await
}

/// The key of a table without a primary key: the columns of its unique index whose
/// columns are all NOT NULL (the one with the fewest columns, then the first by name) —
/// a key the server guarantees, as InnoDB itself clusters such a table by it. Empty when
/// there is none.
async fn unique_not_null_key(conn: &mut Conn, db: &str, table: &str) -> Result<Vec<String>> {
    let rows: Vec<(String, String, String)> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME, NULLABLE FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (db, table),
        )
        .await
        .map_err(|e| my_error("reading unique indexes", e))?;
    let mut indexes: Vec<(String, Vec<String>, bool)> = Vec::new();
    for (index, column, nullable) in rows {
        if indexes.last().is_none_or(|(i, ..)| *i != index) {
            indexes.push((index.clone(), Vec::new(), true));
        }
        let last = indexes.last_mut().expect("pushed above");
        last.1.push(column);
        last.2 &= nullable.is_empty();
    }
    Ok(indexes
        .into_iter()
        .filter(|(.., not_null)| *not_null)
        .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(&b.0)))
        .map(|(_, columns, _)| columns)
        .unwrap_or_default())
}

fn check_key(name: &str, columns: &[MyColumn], collations: &[String], key: &[usize]) -> Result<()> {
    for &k in key {
        let c = &columns[k];
        let text_ci = matches!(c.kind, Kind::Text { .. }) && !collations[k].ends_with("_bin");
        if !key_kind_supported(&c.kind) || text_ci {
            return Err(Error::unsupported(format!(
                "table {name}, key column {}: keys of type {} are not supported yet \
                     (integer, decimal, date/time, binary and `_bin`-collated text keys are)",
                c.name,
                format!("{} {}", c.column_type, collations[k]).trim_end()
            )));
        }
    }
    Ok(())
}

/// Key kinds whose order lakeshore reproduces exactly (see `KeyValue`).
fn key_kind_supported(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Int24
            | Kind::Int64
            | Kind::UInt64
            | Kind::Decimal(..)
            | Kind::Date
            | Kind::DateTime
            | Kind::Timestamp
            | Kind::Binary
            | Kind::Text { .. }
    )
}

/// Shared handle to the discovered tables.
pub type Tables = Arc<Vec<MyTable>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_sharded_tables() {
        assert!(glob_match("shop.orders_*", "shop.orders_3"));
        assert!(!glob_match("shop.orders_*", "shop.order"));
        assert!(glob_match("*.t", "db.t"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(glob_match("db.t", "db.t"));
    }
}
