"""Benchmarks (not tests): lakeshore vs the raw Parquet write limit in the same run.

For each workload it runs, on the same machine and the same generated Arrow batches:
  - `lakeshore bench-raw`: batches straight to Parquet, same codec and row groups, no engine;
  - `lakeshore backfill`: the whole pipeline into Iceberg with checkpoints;
and prints rows/s, the ratio to the limit, and peak RSS of each. For the upsert table it
also prints the DuckDB full-scan time divided by the scan time of the same final rows
written once as plain data (the read-cost ratio).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]


def run(args, cwd):
    """Run a command; return (wall seconds, peak RSS MiB, stdout)."""
    start = time.perf_counter()
    p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{args} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024, out


SQL_CATALOG = '{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }'


def pipeline(path: Path, name, source, sink_extra="", interval="10s", catalog=SQL_CATALOG, extra=""):
    path.write_text(f"""[pipeline]
name = "{name}"
checkpoint_interval = "{interval}"

[source]
type = "datagen"
{source}

[sink]
type = "iceberg"
catalog = {catalog}
{sink_extra}
{extra}
""")
    return path


def measure(workdir: Path, name, source, sink_extra, interval="10s", extra=""):
    d = workdir / name
    d.mkdir()
    f = pipeline(d / "p.toml", name, source, sink_extra, interval, extra=extra)
    raw_wall, raw_rss, out = run([BIN, "bench-raw", str(f), "--out", str(d / "raw")], d)
    raw = json.loads(out)
    rows = raw["rows"]
    raw_rate = rows / raw["seconds"]
    wall, rss, _ = run([BIN, "backfill", str(f)], d)
    rate = rows / wall
    paced = "rate = 0" not in source and "rate =" in source
    ratio = "paced" if paced else f"{rate / raw_rate:5.2f}"
    print(f"{name:<40} rows {rows:>10,}  lakeshore {rate:>10,.0f} rows/s  raw parquet {raw_rate:>10,.0f} rows/s  "
          f"ratio {ratio:>5}  peak RSS lakeshore {rss:6.1f} MiB, raw {raw_rss:6.1f} MiB", flush=True)
    shutil.rmtree(d / "raw")
    return d, f, {"rows": rows, "rate": rate, "raw_rate": raw_rate, "ratio": rate / raw_rate, "rss_mib": rss}


def scan_seconds(con, relation, repeat=3):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        con.execute(f"select count(*), sum(amount_cents), sum(hash(status)), max(updated_at) from {relation}").fetchall()
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    return best


def read_cost(d: Path, f: Path):
    exp = d / "expected"
    subprocess.run([BIN, "expected", str(f), "--out", str(exp)], check=True, capture_output=True)
    import pyarrow.parquet as pq

    plain = pq.read_table(exp / "orders.parquet")
    cat = lake.pyiceberg_table(d / "lake" / "catalog.db", d / "lake" / "warehouse", "shop.orders").catalog
    cat.create_namespace_if_not_exists("plain")
    t = cat.create_table("plain.orders", schema=plain.schema)
    t.append(plain)
    con = lake.duck()
    upsert = scan_seconds(con, lake.scan(d / "lake" / "catalog.db", "shop.orders"))
    once = scan_seconds(con, lake.scan(d / "lake" / "catalog.db", "plain.orders"))
    meta = con.execute(f"select manifest_content, count(*), sum(record_count) from iceberg_metadata('{lake.metadata_location(d / 'lake' / 'catalog.db', 'shop.orders')}') group by all order by 1").fetchall()
    print(f"{'  read cost of ' + d.name:<40} DuckDB full scan {upsert * 1000:.0f} ms vs {once * 1000:.0f} ms written once "
          f"(ratio {upsert / once:.2f}); files by content: {meta}", flush=True)
    return upsert / once


# A filter every row passes (so both runs write the same rows and the difference is the
# transform's own cost), a hashed column and two metadata columns.
TRANSFORM = """
[[transform]]
tables = "orders"
filter = "amount_cents >= 0 AND status IS NOT NULL"
metadata = ["_op", "_ingested_at"]
hash_salt = "bench-salt"

[transform.mask]
customer_id = "hash"
"""


def transforms(work: Path, n):
    """The same upsert pipeline with and without TRANSFORM, alternated three times; the
    median rate of each and their ratio."""
    source = f'profile = "orders"\ninitial_rows = {n}\nevents = {2 * n}\nseed = 1'
    rates = {"plain": [], "shaped": []}
    for i in range(3):
        for label, extra in (("plain", ""), ("shaped", TRANSFORM)):
            _, _, r = measure(work, f"orders-upsert-{n // 1000}k-{label}-{i}", source,
                              'namespace = "shop"\nmode = "upsert"', extra=extra)
            rates[label].append(r["rate"])
    plain, shaped = (sorted(rates[k])[1] for k in ("plain", "shaped"))
    print(f"transforms: filter + hash mask + 2 metadata columns {shaped:,.0f} rows/s, without {plain:,.0f} rows/s "
          f"(medians of 3), ratio {shaped / plain:4.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,10000000", help="Nexmark event counts")
    ap.add_argument("--orders", default="1000000", help="orders initial rows (the same number of changes follows); 0 skips")
    ap.add_argument("--hourly", default="1000000,6000000",
                    help="orders rows appended into hour(created_at) partitions, one hour per 3,600 rows; 0 skips")
    ap.add_argument("--transforms", default="1000000",
                    help="orders rows (plus as many changes) with and without a filter, a hash mask and "
                         "two metadata columns; 0 skips")
    ap.add_argument("--read-cost", nargs=2, metavar=("DIR", "PIPELINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read_cost:
        read_cost(Path(args.read_cost[0]), Path(args.read_cost[1]))
        return
    work = Path(tempfile.mkdtemp(prefix="lakeshore-bench-"))
    print(f"machine: {os.cpu_count()} cores; workdir {work}")
    try:
        for n in [int(x) for x in args.sizes.split(",") if int(x) > 0]:
            measure(work, f"nexmark-append-{n // 1_000_000}M" if n >= 1_000_000 else f"nexmark-append-{n}",
                    f'profile = "nexmark"\nevents = {n}\nseed = 1',
                    'namespace = "nexmark"\nmode = "append"')
        for n in [int(x) for x in args.hourly.split(",") if int(x) > 0]:
            # A backfill of history: every checkpoint spans hundreds of hour partitions,
            # of which only the newest is still being written.
            measure(work, f"orders-append-hourly-{n // 1000}k-{n // 3600}h",
                    f'profile = "orders"\ninitial_rows = {n}\nevents = {n}\nseed = 1',
                    'namespace = "shop"\nmode = "append"\npartitioning = { orders = ["hour(created_at)"] }')
        for n in [int(x) for x in args.orders.split(",") if int(x) > 0]:
            # As fast as possible (the changes land in one or two checkpoints), then paced so
            # that the changes spread over many 1 s checkpoints and update committed rows.
            for label, interval, rate in (("", "10s", 0), ("-paced-1s", "1s", n // 5)):
                d, f, _ = measure(work, f"orders-upsert-{n // 1000}k-plus-{n // 1000}k{label}",
                                  f'profile = "orders"\ninitial_rows = {n}\nevents = {2 * n}\nseed = 1\nrate = {rate}',
                                  'namespace = "shop"\nmode = "upsert"', interval)
                # In a child process: the measured runs above must be forked from a small
                # parent, since a child's peak RSS counts what it inherited before exec.
                subprocess.run([sys.executable, __file__, "--read-cost", str(d), str(f)], check=True)
        for n in [int(x) for x in args.transforms.split(",") if int(x) > 0]:
            transforms(work, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
