"""Benchmark (not a test): the same pipelines committing through the SQL catalog and
through an Iceberg REST catalog (Lakana on the local PostgreSQL), in one run, each with
the raw Parquet write limit of its batches measured first (`lakeshore bench-raw`).

    integration/bench.sh rest [--sizes 1000000] [--orders 1000000]

Prints rows/s, the ratio to the raw limit, REST/SQL, and peak RSS of every backfill."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, SQL_CATALOG, pipeline  # noqa: E402
from benchlib import rss_of  # noqa: E402
from lakanaserver import Lakana  # noqa: E402
from pgserver import PgServer  # noqa: E402


def toml_inline(d):
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in d.items()) + " }"


def measure(work: Path, name, source, sink_extra, interval, lakana):
    rates = {}
    for kind, catalog in (("sql", SQL_CATALOG), ("rest", toml_inline(lakana.sink_catalog()))):
        d = work / name / kind
        d.mkdir(parents=True)
        f = pipeline(d / "p.toml", f"{name}-{kind}", source, sink_extra, interval, catalog)
        if kind == "sql":
            raw = subprocess.run([BIN, "bench-raw", str(f), "--out", str(d / "raw")], cwd=d, capture_output=True,
                                 text=True, check=True)
            raw = json.loads(raw.stdout)
            rows, raw_rate = raw["rows"], raw["rows"] / raw["seconds"]
            shutil.rmtree(d / "raw")
        wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
        rates[kind] = rows / wall
        print(f"{name + ' via ' + kind.upper():<44} rows {rows:>10,}  lakeshore {rates[kind]:>10,.0f} rows/s  "
              f"raw parquet {raw_rate:>10,.0f} rows/s  ratio {rates[kind] / raw_rate:5.2f}  peak RSS {rss:6.1f} MiB",
              flush=True)
    print(f"{'  ' + name + ': REST / SQL':<44} {rates['rest'] / rates['sql']:.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000", help="Nexmark event counts")
    ap.add_argument("--orders", default="1000000", help="orders initial rows (as many changes follow); 0 skips")
    args = ap.parse_args()
    pg = PgServer()
    lakana = Lakana(pg)
    os.environ.update(lakana.env())
    work = Path(tempfile.mkdtemp(prefix="lakeshore-bench-rest-"))
    print(f"machine: {os.cpu_count()} cores; workdir {work}; REST catalog {lakana.uri} (Lakana)")
    try:
        for n in [int(x) for x in args.sizes.split(",") if int(x) > 0]:
            measure(work, f"nexmark-append-{n // 1000}k", f'profile = "nexmark"\nevents = {n}\nseed = 1',
                    f'namespace = "bronze.nexmark{n}"\nmode = "append"', "10s", lakana)
        for n in [int(x) for x in args.orders.split(",") if int(x) > 0]:
            # Paced: the changes spread over 1 s checkpoints, each a REST commit.
            measure(work, f"orders-upsert-{n // 1000}k-plus-{n // 1000}k-paced-1s",
                    f'profile = "orders"\ninitial_rows = {n}\nevents = {2 * n}\nseed = 1\nrate = {n // 5}',
                    f'namespace = "bronze.orders{n}"\nmode = "upsert"', "1s", lakana)
            measure(work, f"orders-upsert-{n // 1000}k-plus-{n // 1000}k",
                    f'profile = "orders"\ninitial_rows = {n}\nevents = {2 * n}\nseed = 1',
                    f'namespace = "bronze.ordersfast{n}"\nmode = "upsert"', "10s", lakana)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lakana.stop()
        pg.stop()


if __name__ == "__main__":
    main()
