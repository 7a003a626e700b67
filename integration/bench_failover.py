"""Failover benchmark (issue 23; not a test): two `lakeshore run` replicas of a
StatefulSet-like pair (`[replicas] count = 2`, names lakeshore-0 and lakeshore-1) over the
same pipeline directory, --pipelines upsert generators at --rate changes/s each. Once both
run their share, lakeshore-0 is killed with -9. Prints, per pipeline it ran, the time
until the survivor committed a checkpoint of it; then, when every generator has
finished on the survivor, the rows lost and duplicated against the generators' own
folded state (DuckDB over the lake, `lakeshore expected`).

    integration/bench.sh failover [--pipelines 4] [--rate 2000] [--ttl 15s] [--seconds 60]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402
from bench import pipeline  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]
COLUMNS = "order_id, customer_id, status, amount_cents, created_at, updated_at"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(d, cfg, name):
    port = free_port()
    proc = subprocess.Popen([BIN, "run", str(d / "pipelines"), "--config", str(cfg), "--replica", name,
                             "--http", f"127.0.0.1:{port}"], cwd=d, stdout=subprocess.DEVNULL,
                            stderr=open(d / f"{name}.log", "w"))
    return proc, port


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pipelines", timeout=5) as r:
            return {p["name"]: p for p in json.loads(r.read())["pipelines"]}
    except OSError:
        return {}


def running(st):
    return {n for n, p in st.items() if p["phase"] in ("starting", "snapshot", "streaming")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipelines", type=int, default=4)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--ttl", default="15s")
    ap.add_argument("--seconds", type=int, default=60, help="how long each generator runs")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="lakeshore-bench-failover-"))
    (d / "pipelines").mkdir()
    names = [f"f{i}" for i in range(args.pipelines)]
    for i, n in enumerate(names):
        pipeline(d / "pipelines" / f"{n}.toml", n,
                 f'profile = "orders"\ninitial_rows = 10000\nevents = {10_000 + args.rate * args.seconds}\n'
                 f'seed = {i}\nrate = {args.rate}\nbatch_events = 500',
                 f'namespace = "{n}"\nmode = "upsert"', interval="1s")
    cfg = d / "lakeshore.toml"
    cfg.write_text(f'[replicas]\ncount = 2\nlease_ttl = "{args.ttl}"\n')
    print(f"machine: {os.cpu_count()} cores; workdir {d}; {args.pipelines} pipelines at {args.rate:,} changes/s; "
          f"lease TTL {args.ttl}", flush=True)
    a, pa = start(d, cfg, "lakeshore-0")
    b, pb = start(d, cfg, "lakeshore-1")
    try:
        deadline = time.time() + 120
        while True:
            ra, rb = running(status(pa)), running(status(pb))
            if ra | rb == set(names) and not ra & rb and ra and rb:
                break
            if time.time() > deadline:
                sys.exit(f"the replicas did not share the pipelines: a {ra}, b {rb}")
            time.sleep(0.5)
        time.sleep(5)
        moved = running(status(pa))
        before = {n: (p["last_checkpoint"] or {}).get("id", 0) for n, p in status(pb).items()}
        print(f"lakeshore-0 runs {sorted(moved)}, lakeshore-1 runs {sorted(set(names) - moved)}", flush=True)
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed = time.time()
        committed = {}
        while len(committed) < len(moved) and time.time() < killed + 300:
            for n, p in status(pb).items():
                c = p["last_checkpoint"]
                if n in moved and n not in committed and c and c["at_ms"] / 1000 > killed:
                    committed[n] = c["at_ms"] / 1000 - killed
            time.sleep(0.2)
        for n in sorted(moved):
            print(f"  {n}: committed on lakeshore-1 {committed.get(n, float('nan')):.1f} s after the kill -9",
                  flush=True)
        while not all(p["phase"] == "finished" for p in status(pb).values()):
            time.sleep(1)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
    con = lake.duck()
    lost = dup = 0
    for n in names:
        f = d / "pipelines" / f"{n}.toml"
        exp = d / f"expected-{n}"
        subprocess.run([BIN, "expected", str(f), "--out", str(exp)], cwd=d, check=True, capture_output=True)
        have = lake.scan(d / "lake" / "catalog.db", f"{n}.orders")
        want = f"read_parquet('{exp / 'orders.parquet'}')"
        lost += con.execute(f"select count(*) from (select {COLUMNS} from {want} except all "
                            f"select {COLUMNS} from {have})").fetchone()[0]
        dup += con.execute(f"select count(*) from (select {COLUMNS} from {have} except all "
                           f"select {COLUMNS} from {want})").fetchone()[0]
    worst = max(committed.values(), default=float("nan"))
    print(f"failover pipelines {args.pipelines} rate {args.rate:,}/s ttl {args.ttl}: {len(moved)} moved, "
          f"slowest committed again after {worst:.1f} s; rows lost {lost}, rows duplicated or stale {dup}",
          flush=True)


if __name__ == "__main__":
    main()
