"""Independent readers of the lake: DuckDB's iceberg extension and pyiceberg.

Used by the integration tests and the benchmark; also a small CLI:

    python integration/lake.py count lake/catalog.db nexmark.bid
    python integration/lake.py sql lake/catalog.db "select count(*) from {nexmark.bid}"
"""
import os
import sqlite3
import sys

import duckdb

CATALOG_NAME = "lakeshore"


def _extension(package, name):
    import importlib

    mod = importlib.import_module(package)
    base = os.path.dirname(mod.__file__)
    for root, _dirs, files in os.walk(base):
        for f in files:
            if f == f"{name}.duckdb_extension":
                return os.path.join(root, f)
    raise RuntimeError(f"{name}.duckdb_extension not found under {base}")


def duck():
    """A DuckDB connection with the avro, iceberg and httpfs (S3) extensions loaded from
    PyPI packages (no network)."""
    con = duckdb.connect(
        config={
            "allow_unsigned_extensions": "true",
            "autoinstall_known_extensions": "false",
            "autoload_known_extensions": "false",
        }
    )
    con.execute(f"LOAD '{_extension('duckdb_extension_avro', 'avro')}'")
    con.execute(f"LOAD '{_extension('duckdb_extension_iceberg', 'iceberg')}'")
    con.execute(f"LOAD '{_extension('duckdb_extension_httpfs', 'httpfs')}'")
    return con


def metadata_location(catalog_db, table):
    """Current metadata.json of `namespace.table` from the SQL catalog's own table."""
    ns, name = table.rsplit(".", 1)
    with sqlite3.connect(catalog_db) as db:
        row = db.execute(
            "select metadata_location from iceberg_tables where catalog_name = ? and table_namespace = ? and table_name = ?",
            (CATALOG_NAME, ns, name),
        ).fetchone()
    if row is None:
        raise KeyError(f"table {table} is not in {catalog_db}")
    return row[0]


def scan(catalog_db, table):
    """A DuckDB table expression reading the current snapshot of `table`."""
    return f"iceberg_scan('{metadata_location(catalog_db, table)}')"


def sql(con, catalog_db, query):
    """Run `query` with `{ns.table}` placeholders replaced by iceberg scans."""
    import re

    text = re.sub(r"\{([A-Za-z0-9_.]+)\}", lambda m: scan(catalog_db, m.group(1)), query)
    return con.execute(text).fetchall()


def pyiceberg_table(catalog_db, warehouse, table):
    from pyiceberg.catalog.sql import SqlCatalog

    cat = SqlCatalog(CATALOG_NAME, uri=f"sqlite:///{os.path.abspath(catalog_db)}", warehouse=f"file://{os.path.abspath(warehouse)}")
    return cat.load_table(table)


if __name__ == "__main__":
    cmd, catalog_db = sys.argv[1], sys.argv[2]
    con = duck()
    if cmd == "count":
        print(sql(con, catalog_db, f"select count(*) from {{{sys.argv[3]}}}")[0][0])
    elif cmd == "sql":
        for row in sql(con, catalog_db, sys.argv[3]):
            print(*row, sep="\t")
    else:
        sys.exit(f"unknown command {cmd}")
