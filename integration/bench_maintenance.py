"""Maintenance benchmark (not a test): an orders upsert table after N changes spread over
about 1,000 checkpoints, scanned by DuckDB before and after `lakeshore maintain`, against
the floor: the same final rows written once as plain data (pyiceberg). Prints the read-cost
ratios, compaction rows/s and peak RSS.

Then a foreign writer (iceberg-rust's equality-delete writer, as Flink CDC writes them)
deletes --equality rows of the compacted table by key; DuckDB scans it with those
equality deletes, and again after `lakeshore maintain` turned them into position deletes
(a delete merge: the data files stay).

    integration/bench.sh maintenance [--rows 1000000] [--checkpoints 1000]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402
from bench import pipeline, scan_seconds  # noqa: E402
from benchlib import rss_of  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]


def files(con, catalog, table):
    meta = lake.metadata_location(catalog, table)
    return dict(con.execute(f"select manifest_content, count(*) from iceberg_metadata('{meta}') where status != 'DELETED' group by all").fetchall())


def equality_phase(con, f, work, catalog, rows, floor, count):
    """Equality deletes of `count` live rows by another writer: the scan with them, and
    after `lakeshore maintain` merged them into position deletes."""
    relation = lake.scan(catalog, "shop.orders")
    keys = work / "eq.parquet"
    con.execute(f"copy (select * from {relation} order by hash(order_id) limit {count}) to '{keys}'")
    example = Path(BIN).parent / "examples" / "equality_deletes"
    subprocess.run([str(example), f"sqlite:///{catalog}", str(work / "lake" / "warehouse"), "shop.orders", "order_id",
                    str(keys)], check=True, capture_output=True)
    con = lake.duck()
    relation = lake.scan(catalog, "shop.orders")
    live = con.execute(f"select count(*) from {relation}").fetchone()[0]
    assert live == rows - count, (live, rows, count)
    with_eq = scan_seconds(con, relation, repeat=1)
    data_before = files(con, catalog, "shop.orders").get("DATA")
    mwall, mrss, _ = rss_of([BIN, "maintain", str(f), "--table", "orders"], work)
    con = lake.duck()
    relation = lake.scan(catalog, "shop.orders")
    assert con.execute(f"select count(*) from {relation}").fetchone()[0] == live
    merged = scan_seconds(con, relation)
    files_after = files(con, catalog, "shop.orders")
    assert files_after.get("DATA") == data_before, files_after
    print(f"equality deletes of {count:,} rows by another writer: DuckDB full scan {with_eq * 1000:.0f} ms "
          f"(ratio {with_eq / floor:.2f}); after maintain merged them into position deletes "
          f"({mwall:.1f} s, peak RSS {mrss:.1f} MiB, data files kept: {files_after}) {merged * 1000:.0f} ms "
          f"(ratio {merged / floor:.2f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000, help="initial rows; as many changes follow")
    ap.add_argument("--checkpoints", type=int, default=1000, help="checkpoints the changes spread over")
    ap.add_argument("--equality", type=int, default=11_100, help="rows deleted by a foreign writer's equality deletes")
    args = ap.parse_args()
    n = args.rows
    work = Path(tempfile.mkdtemp(prefix="lakeshore-bench-maint-"))
    print(f"machine: {os.cpu_count()} cores; workdir {work}")
    try:
        interval = 0.1
        # Under this load a 100 ms checkpoint lands about every 125 ms on 2 cores (801
        # commits for 100 s of changes), so the changes come at 80% of n per 100 s.
        rate = int(0.8 * n / (args.checkpoints * interval))
        f = pipeline(work / "p.toml", "maint",
                     f'profile = "orders"\ninitial_rows = {n}\nevents = {2 * n}\nseed = 1\nrate = {rate}\nbatch_events = 1000',
                     'namespace = "shop"\nmode = "upsert"\n[sink.maintenance]\ncompact_when = { delete_files = 1 }\n'
                     'expire_snapshots_older_than = "1s"',
                     interval="100ms")
        started = time.perf_counter()
        wall, rss, _ = rss_of([BIN, "backfill", str(f)], work)
        catalog = work / "lake" / "catalog.db"
        t = lake.pyiceberg_table(catalog, work / "lake" / "warehouse", "shop.orders")
        commits = len(t.snapshots())
        print(f"ingest: {2 * n:,} events at {rate:,}/s with 100 ms checkpoints: {commits} commits in {wall:.0f} s, "
              f"peak RSS {rss:.1f} MiB", flush=True)

        exp = work / "expected"
        subprocess.run([BIN, "expected", str(f), "--out", str(exp)], check=True, capture_output=True)
        import pyarrow.parquet as pq

        plain = pq.read_table(exp / "orders.parquet")
        t.catalog.create_namespace_if_not_exists("plain")
        t.catalog.create_table("plain.orders", schema=plain.schema).append(plain)
        con = lake.duck()
        floor = scan_seconds(con, lake.scan(catalog, "plain.orders"))
        before = scan_seconds(con, lake.scan(catalog, "shop.orders"))
        files_before = files(con, catalog, "shop.orders")

        time.sleep(1.5)  # every snapshot is older than expire_snapshots_older_than
        mwall, mrss, _ = rss_of([BIN, "maintain", str(f), "--table", "orders"], work)
        out = subprocess.run([BIN, "maintain", str(f), "--table", "orders"], cwd=work, capture_output=True,
                             text=True, check=True).stdout
        assert re.search(r"0 partitions compacted", out), out
        con = lake.duck()
        after = scan_seconds(con, lake.scan(catalog, "shop.orders"))
        files_after = files(con, catalog, "shop.orders")
        rows = plain.num_rows
        print(f"live rows {rows:,}; files before {files_before}, after {files_after}")
        print(f"DuckDB full scan: floor (written once) {floor * 1000:.0f} ms, before maintenance "
              f"{before * 1000:.0f} ms (ratio {before / floor:.2f}), after {after * 1000:.0f} ms "
              f"(ratio {after / floor:.2f})")
        print(f"compaction: {mwall:.1f} s, peak RSS {mrss:.1f} MiB; about {rows / mwall:,.0f} live rows/s "
              f"(the rows read include the {2 * n - rows:,} changes' dead versions)")
        equality_phase(con, f, work, catalog, plain.num_rows, floor, args.equality)
        print(f"total {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
