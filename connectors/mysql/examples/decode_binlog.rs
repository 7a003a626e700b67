//! Decode binlog files with the live reader's decoder (development aid; see
//! docs/sources/mysql.md, "Binlog recordings"):
//!
//! ```text
//! cargo run --release -p lakeshore-mysql --example decode_binlog -- [-v] FILE...
//! ```
//!
//! One summary line per file (messages by kind, GTIDs, the error that stopped it);
//! `-v` prints every message.

use std::collections::BTreeMap;

fn main() {
    let mut verbose = false;
    let mut failed = 0;
    for arg in std::env::args().skip(1) {
        if arg == "-v" {
            verbose = true;
            continue;
        }
        let bytes = match std::fs::read(&arg) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{arg}: {e}");
                failed += 1;
                continue;
            }
        };
        let name = std::path::Path::new(&arg)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (lines, error) = lakeshore_mysql::decode_file(&name, &bytes);
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        let mut gtids = Vec::new();
        let mut rows = 0usize;
        for line in &lines {
            if verbose {
                println!("  {line}");
            }
            let kind = line.split([' ', ',']).next().unwrap_or("");
            *kinds.entry(kind).or_default() += 1;
            if let Some(rest) = line.strip_prefix("begin ")
                && !rest.starts_with("at ")
            {
                gtids.push(rest.split(' ').next().unwrap_or("").to_string());
            }
            if let Some(n) = line.split(": ").nth(1).and_then(|r| r.split(' ').next()) {
                rows += n.parse::<usize>().unwrap_or(0);
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let gtid = match (gtids.first(), gtids.last()) {
            (Some(a), Some(b)) if a != b => format!(" gtids {a} .. {b}"),
            (Some(a), _) => format!(" gtid {a}"),
            _ => String::new(),
        };
        match error {
            None => println!("{arg}: ok: {} rows; {}{gtid}", rows, kinds.join(" ")),
            Some(e) => {
                failed += 1;
                println!("{arg}: STOPPED after {}: {e}", kinds.join(" "));
            }
        }
    }
    std::process::exit(i32::from(failed > 0));
}
