//! The DDL statements of the binlog that change what a replicated table holds without
//! row events, or which table a name means: read just far enough to act on them.
//! Column additions and type changes are not read here: the next row event's table map
//! declares them (`changes.rs`).

/// What a statement does to the tables it names (names qualified with the statement's
/// default database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ddl {
    /// `CREATE TABLE [IF NOT EXISTS] t ...`.
    CreateTable(String),
    /// `DROP TABLE [IF EXISTS] a, b`: their rows are gone.
    DropTables(Vec<String>),
    /// `TRUNCATE [TABLE] t`.
    Truncate(String),
    /// `RENAME TABLE a TO b, c TO d` (and `ALTER TABLE a RENAME [TO|AS] b`), in order.
    Rename(Vec<(String, String)>),
    /// `ALTER TABLE t` that changes the rows without row events or renames a column
    /// (`RENAME COLUMN`, `CHANGE a b`, `TRUNCATE` / `DROP` / `EXCHANGE PARTITION`, `ADD`
    /// of a column that is `NOT NULL`, has a `DEFAULT` or is generated): the table must
    /// be read again. `why` names the clause.
    Reread {
        /// The table.
        table: String,
        /// The clause, for messages.
        why: String,
    },
    /// Any other `ALTER TABLE t`: added columns show in the lake at once (type changes
    /// wait for the next row event's table map).
    Alter(String),
    /// Anything else.
    Other,
}

/// The statement without leading comments (`/* */`, `-- `, `#`) and whitespace.
fn strip_leading_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("/*") {
            // `/*!50001 ... */` version comments hold real SQL: keep them.
            if rest.starts_with('!') {
                return sql;
            }
            sql = rest.split_once("*/").map_or("", |(_, r)| r);
        } else if sql.starts_with("-- ") || sql.starts_with('#') {
            sql = sql.split_once('\n').map_or("", |(_, r)| r);
        } else {
            return sql;
        }
    }
}

/// SQL tokens: identifiers (backquotes removed), words, and `,` `;` `(` `)` on their own.
fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '`' {
            chars.next();
            let mut name = String::new();
            while let Some(c) = chars.next() {
                if c == '`' {
                    if chars.peek() == Some(&'`') {
                        chars.next();
                        name.push('`');
                        continue;
                    }
                    break;
                }
                name.push(c);
            }
            // `db`.`t` stays one token.
            if let Some(prev) = out.last_mut().filter(|p: &&mut String| p.ends_with('.')) {
                prev.push_str(&name);
            } else {
                out.push(name);
            }
        } else if matches!(c, ',' | ';' | '(' | ')') {
            chars.next();
            out.push(c.to_string());
        } else if c == '.' {
            chars.next();
            match out.last_mut() {
                Some(prev) => prev.push('.'),
                None => out.push(".".into()),
            }
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '`') {
                    break;
                }
                word.push(c);
                chars.next();
            }
            if let Some(prev) = out.last_mut().filter(|p: &&mut String| p.ends_with('.')) {
                prev.push_str(&word);
            } else {
                out.push(word);
            }
        }
    }
    out
}

/// Token `i` of `t` as a table name, qualified with `db` when it is not.
fn qualified(db: &str, t: &[String], i: usize) -> Option<String> {
    let n = t.get(i)?;
    Some(if n.contains('.') {
        n.clone()
    } else {
        format!("{db}.{n}")
    })
}

/// `ALTER TABLE`: a rename of the table, a change that makes existing rows differ from
/// what the binlog will say of them (a renamed column, a partition's rows dropped or
/// swapped, a column added with values), or another change.
fn parse_alter(db: &str, t: &[String], up: &[String]) -> Ddl {
    let name = |i: usize| qualified(db, t, i);
    let Some(at) = up.iter().take(4).position(|u| u == "TABLE") else {
        return Ddl::Other;
    };
    let Some(table) = name(at + 1) else {
        return Ddl::Other;
    };
    // Clauses are separated by commas at nesting depth 0.
    let mut depth = 0i32;
    let mut clause_start = at + 2;
    for i in at + 2..=up.len() {
        let end = i == up.len() || (depth == 0 && up[i] == ",");
        if i < up.len() {
            match up[i].as_str() {
                "(" => depth += 1,
                ")" => depth -= 1,
                _ => {}
            }
        }
        if !end {
            continue;
        }
        let c = &up[clause_start..i];
        let w = |k: usize, s: &str| c.get(k).is_some_and(|u| u == s);
        if w(0, "RENAME") && !w(1, "COLUMN") && !w(1, "INDEX") && !w(1, "KEY") {
            let to = if w(1, "TO") || w(1, "AS") { 2 } else { 1 };
            if let Some(n) = name(clause_start + to) {
                return Ddl::Rename(vec![(table, n)]);
            }
        }
        let renames_column = (w(0, "RENAME") && w(1, "COLUMN"))
            || (w(0, "CHANGE") && {
                let at = if w(1, "COLUMN") { 2 } else { 1 };
                let at = if w(at, "IF") { at + 2 } else { at };
                match (t.get(clause_start + at), t.get(clause_start + at + 1)) {
                    (Some(a), Some(b)) => !a.eq_ignore_ascii_case(b),
                    _ => false,
                }
            });
        let partition_rows = c.iter().any(|u| u == "PARTITION")
            && (w(0, "TRUNCATE") || w(0, "DROP") || w(0, "EXCHANGE"));
        // A column added NOT NULL, with a DEFAULT or generated gives the existing
        // rows values that no row event carries.
        let adds_column = w(0, "ADD")
            && !c.get(1).is_some_and(|u| {
                matches!(
                    u.as_str(),
                    "INDEX"
                        | "KEY"
                        | "UNIQUE"
                        | "PRIMARY"
                        | "FOREIGN"
                        | "CONSTRAINT"
                        | "FULLTEXT"
                        | "SPATIAL"
                        | "CHECK"
                        | "PARTITION"
                        | "PERIOD"
                        | "SYSTEM"
                )
            });
        let fills_rows = adds_column
            && c.iter().enumerate().any(|(k, u)| {
                matches!(u.as_str(), "DEFAULT" | "AS" | "GENERATED")
                    || (u == "NOT" && c.get(k + 1).is_some_and(|n| n == "NULL"))
            });
        if renames_column || partition_rows || fills_rows {
            let why = t[clause_start..i.min(clause_start + 4)].join(" ");
            return Ddl::Reread { table, why };
        }
        clause_start = i + 1;
    }
    Ddl::Alter(table)
}

/// Read `sql`, run in database `db`.
pub fn parse(db: &str, sql: &str) -> Ddl {
    let t = tokens(strip_leading_comments(sql));
    let up: Vec<String> = t.iter().map(|w| w.to_ascii_uppercase()).collect();
    let is = |i: usize, w: &str| up.get(i).is_some_and(|u| u == w);
    let name = |i: usize| qualified(db, &t, i);
    // Skip MariaDB's `CREATE OR REPLACE`, `DROP TEMPORARY` and `IF [NOT] EXISTS`.
    let after_if = |mut i: usize| {
        if is(i, "IF") {
            i += if is(i + 1, "NOT") { 3 } else { 2 };
        }
        i
    };
    if is(0, "CREATE") {
        let Some(at) = up.iter().take(4).position(|u| u == "TABLE") else {
            return Ddl::Other;
        };
        if up[..at].iter().any(|u| u == "TEMPORARY") {
            return Ddl::Other;
        }
        return name(after_if(at + 1)).map_or(Ddl::Other, Ddl::CreateTable);
    }
    if is(0, "DROP") && (is(1, "TABLE") || is(1, "TABLES")) {
        let mut i = after_if(2);
        let mut names = Vec::new();
        while let Some(n) = name(i) {
            if matches!(up[i].as_str(), "RESTRICT" | "CASCADE" | ";") {
                break;
            }
            names.push(n);
            if !is(i + 1, ",") {
                break;
            }
            i += 2;
        }
        return Ddl::DropTables(names);
    }
    if is(0, "TRUNCATE") {
        let at = if is(1, "TABLE") { 2 } else { 1 };
        return name(at).map_or(Ddl::Other, Ddl::Truncate);
    }
    if is(0, "RENAME") && (is(1, "TABLE") || is(1, "TABLES")) {
        let mut pairs = Vec::new();
        let mut i = 2;
        while let (Some(from), true, Some(to)) = (name(i), is(i + 1, "TO"), name(i + 2)) {
            pairs.push((from, to));
            if !is(i + 3, ",") {
                break;
            }
            i += 4;
        }
        return Ddl::Rename(pairs);
    }
    if is(0, "ALTER") {
        return parse_alter(db, &t, &up);
    }
    Ddl::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn statements_that_change_rows_or_names() {
        assert_eq!(
            parse("shop", "/* flyway */ -- v2\nTRUNCATE TABLE `orders`"),
            Ddl::Truncate("shop.orders".into())
        );
        assert_eq!(
            parse("shop", "truncate shop.orders;"),
            Ddl::Truncate("shop.orders".into())
        );
        assert_eq!(
            parse(
                "shop",
                "DROP TABLE IF EXISTS `a`, `other`.`b` /* generated by server */"
            ),
            Ddl::DropTables(names(&["shop.a", "other.b"]))
        );
        assert_eq!(
            parse("shop", "CREATE TABLE IF NOT EXISTS t (id int primary key)"),
            Ddl::CreateTable("shop.t".into())
        );
        assert_eq!(
            parse("shop", "CREATE OR REPLACE TABLE t (id int)"),
            Ddl::CreateTable("shop.t".into())
        );
        assert_eq!(
            parse("shop", "CREATE TEMPORARY TABLE t (id int)"),
            Ddl::Other
        );
        // gh-ost's and pt-online-schema-change's cut-over.
        assert_eq!(
            parse(
                "shop",
                "RENAME TABLE `shop`.`orders` TO `shop`.`_orders_del`, `shop`.`_orders_gho` TO `shop`.`orders`"
            ),
            Ddl::Rename(vec![
                ("shop.orders".into(), "shop._orders_del".into()),
                ("shop._orders_gho".into(), "shop.orders".into()),
            ])
        );
        assert_eq!(
            parse("shop", "ALTER TABLE a RENAME TO b"),
            Ddl::Rename(vec![("shop.a".into(), "shop.b".into())])
        );
        assert_eq!(
            parse("shop", "ALTER TABLE a ADD COLUMN x int, RENAME AS b"),
            Ddl::Rename(vec![("shop.a".into(), "shop.b".into())])
        );
    }

    #[test]
    fn alter_clauses_that_need_a_new_read() {
        let reread = |sql| matches!(parse("d", sql), Ddl::Reread { table, .. } if table == "d.t");
        let alter = || Ddl::Alter("d.t".into());
        assert!(reread("ALTER TABLE t RENAME COLUMN a TO b"));
        assert!(reread(
            "ALTER TABLE t ADD COLUMN z int, CHANGE COLUMN a b int"
        ));
        assert!(reread("ALTER TABLE t CHANGE a b decimal(10,2)"));
        assert!(reread("alter table t truncate partition p0, p1"));
        assert!(reread("ALTER TABLE t DROP PARTITION p2023"));
        assert!(reread(
            "ALTER TABLE t EXCHANGE PARTITION p0 WITH TABLE t_old"
        ));
        // Same name: a type change, which the next table map declares.
        assert_eq!(parse("d", "ALTER TABLE t CHANGE a a bigint"), alter());
        assert_eq!(
            parse("d", "ALTER TABLE t MODIFY amt decimal(12,4)"),
            alter()
        );
        assert_eq!(parse("d", "ALTER TABLE t RENAME INDEX i TO j"), alter());
        assert_eq!(
            parse(
                "d",
                "ALTER TABLE t ADD PARTITION (PARTITION p3 VALUES LESS THAN (10))"
            ),
            alter()
        );
        assert_eq!(
            parse("d", "ALTER TABLE t ADD COLUMN c enum('a,b','c')"),
            alter()
        );
        assert_eq!(
            parse("d", "ALTER TABLE t ADD COLUMN c int NULL, ADD INDEX i (c)"),
            alter()
        );
        // Existing rows get values without row events.
        assert!(reread("ALTER TABLE t ADD COLUMN c int NOT NULL"));
        assert!(reread("ALTER TABLE t ADD c varchar(5) DEFAULT 'x'"));
        assert!(reread("ALTER TABLE t ADD COLUMN (c int, d int DEFAULT 1)"));
        assert!(reread("ALTER TABLE t ADD COLUMN g int AS (id * 2) STORED"));
        assert_eq!(
            parse("d", "ALTER TABLE t ADD CONSTRAINT c CHECK (id IS NOT NULL)"),
            alter()
        );
    }
}
