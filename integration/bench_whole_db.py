"""Whole-database benchmark (issue 23; not a test): one pipeline with `tables = ["shop.*"]`
over --small tables of --small-rows rows plus --big tables of --big-rows rows, in
`lakeshore run` with default settings (10 s checkpoints). Measures the snapshot (time
until every table's snapshot is done, rows/s), then --rate changes/s spread over all
tables for --seconds (each source transaction updates 20 rows in each of `rate / 200`
random tables, ten transactions a second): the time each checkpoint took (barrier to
last table commit, from `/pipelines`), freshness (per transaction and table it touched,
the first snapshot of that lake table whose source position covers the transaction's
commit), and the process's peak RSS. At the end every lake table's row count and
`sum(n)` must equal the source's (DuckDB).

    integration/bench.sh whole-db [--source postgres|mysql] [--small 1000] [--big 10] [--rate 20000] [--seconds 60]
"""
import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402
from bench_always_fast import peak_rss_mib  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]
ROWS_PER_TOUCH = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pipelines/whole", timeout=10) as r:
            return json.loads(r.read())
    except OSError:
        return None


class Postgres:
    ns = "pg"

    def __init__(self):
        from pgserver import PgServer

        self.server = PgServer()
        self.db = self.server.create_db("shop")

    def url(self):
        return self.server.url(self.db)

    def source(self):
        return f'type = "postgres"\nurl = "{self.url()}"\ntables = ["shop.*"]'

    def create(self, names, rows_of):
        with self.server.connect(self.db) as c:
            c.execute("create schema shop")
            for name in names:
                c.execute(f"""create table shop.{name} (id bigint primary key, n int not null, name text,
                              amount numeric(12,2), updated_at timestamptz)""")
                c.execute(f"""insert into shop.{name} select g, 0, 'row ' || g, (g % 10000) / 100.0, now()
                              from generate_series(1, {rows_of(name)}) g""")
            c.execute("vacuum analyze")
            c.execute("""create function touch(tables text[], ids bigint[]) returns void language plpgsql as $$
                         declare t text; begin foreach t in array tables loop
                         execute format('update shop.%I set n = n + 1, updated_at = now() where id = any($1)', t)
                         using ids; end loop; end $$""")

    def connect(self):
        return self.server.connect(self.db)

    def touch(self, c, tables, ids):
        c.execute("select touch(%s, %s)", (tables, ids))
        return self.lsn(c.execute("select pg_current_wal_lsn()::text").fetchone()[0])

    @staticmethod
    def lsn(text):
        hi, lo = text.split("/")
        return int(hi, 16) << 32 | int(lo, 16)

    def position(self, pos):
        return pos["lsn"]

    def totals(self, names):
        with self.server.connect(self.db) as c:
            return {n: tuple(c.execute(f"select count(*), coalesce(sum(n), 0) from shop.{n}").fetchone())
                    for n in names}

    def stop(self):
        self.server.stop()


class Mysql:
    ns = "my"

    def __init__(self):
        from myserver import MyServer

        self.server = MyServer()
        self.server.create_db("shop")

    def source(self):
        return f'type = "mysql"\nurl = "{self.server.url()}"\ntables = ["shop.*"]'

    def create(self, names, rows_of):
        with self.server.connect("shop") as c, c.cursor() as cur:
            for name in names:
                cur.execute(f"""create table {name} (id bigint primary key, n int not null, name varchar(40),
                                amount decimal(12,2), updated_at datetime(6))""")
                cur.execute(f"""insert into {name} select seq, 0, concat('row ', seq), (seq % 10000) / 100.0,
                                now(6) from seq_1_to_{rows_of(name)}""")

    def connect(self):
        return self.server.connect("shop", autocommit=False)

    def touch(self, c, tables, ids):
        idl = ",".join(map(str, ids))
        with c.cursor() as cur:
            for t in tables:
                cur.execute(f"update {t} set n = n + 1, updated_at = now(6) where id in ({idl})")
            c.commit()
            cur.execute("show master status")
            file, pos = cur.fetchone()[:2]
        return self.key(file, int(pos))

    @staticmethod
    def key(file, pos):
        return (int(file.rsplit(".", 1)[1]), pos)

    def position(self, pos):
        return self.key(pos["binlog"]["file"], pos["binlog"]["pos"])

    def totals(self, names):
        with self.server.connect("shop") as c, c.cursor() as cur:
            out = {}
            for n in names:
                cur.execute(f"select count(*), coalesce(sum(n), 0) from {n}")
                out[n] = tuple(int(v) for v in cur.fetchone())
            return out

    def stop(self):
        self.server.stop()


def lake_snapshots(catalog_db, ns, names, position_of):
    """{table: [(snapshot time s, source position)]} from each table's current metadata."""
    con = sqlite3.connect(catalog_db)
    out = {}
    for name in names:
        (loc,) = con.execute("select metadata_location from iceberg_tables where table_namespace = ? "
                             "and table_name = ?", (ns, name)).fetchone()
        meta = json.loads(Path(loc.removeprefix("file://")).read_text())
        snaps = []
        for s in meta.get("snapshots", []):
            pos = s.get("summary", {}).get("lakeshore.source-position")
            if pos:
                snaps.append((s["timestamp-ms"] / 1000, position_of(json.loads(pos))))
        out[name] = sorted(snaps)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="postgres", choices=["postgres", "mysql"])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--small-rows", type=int, default=1000)
    ap.add_argument("--big", type=int, default=10)
    ap.add_argument("--big-rows", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--interval", default="", help="checkpoint_interval (default: the pipeline default, 10 s)")
    a = ap.parse_args()
    src = Postgres() if a.source == "postgres" else Mysql()
    work = Path(tempfile.mkdtemp(prefix="lakeshore-bench-whole-db-"))
    print(f"machine: {os.cpu_count()} cores; workdir {work}; source {a.source}", flush=True)
    small = [f"t{i:04}" for i in range(a.small)]
    big = [f"big{i:02}" for i in range(a.big)]
    names = small + big
    total_rows = a.small * a.small_rows + a.big * a.big_rows
    proc = None
    try:
        t0 = time.time()
        src.create(names, lambda n: a.big_rows if n.startswith("big") else a.small_rows)
        print(f"source: {len(names)} tables, {total_rows:,} rows, created in {time.time() - t0:.0f} s", flush=True)
        interval = f'checkpoint_interval = "{a.interval}"\n' if a.interval else ""
        (work / "p").mkdir()
        (work / "p" / "whole.toml").write_text(f"""[pipeline]
name = "whole"
{interval}
[source]
{src.source()}

[sink]
type = "iceberg"
namespace = "{src.ns}"
catalog = {{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }}
""")
        port = free_port()
        start = time.time()
        proc = subprocess.Popen([BIN, "run", str(work / "p"), "--http", f"127.0.0.1:{port}"], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "w"))
        peak = [0.0]
        threading.Thread(target=peak_rss_mib, args=(proc.pid, peak), daemon=True).start()
        while True:
            st = status(port)
            if st and st["phase"] == "streaming" and len(st["snapshot"]) == len(names) \
                    and st["last_checkpoint"]:
                break
            if st and st["phase"] in ("failed", "restarting"):
                sys.exit(f"pipeline {st['phase']}: {st['last_error']}")
            if proc.poll() is not None or time.time() - start > 3600:
                sys.exit((work / "daemon.log").read_text()[-3000:])
            time.sleep(0.5)
        snap_wall = time.time() - start
        snap_peak = peak[0]
        print(f"snapshot: {len(names)} tables, {total_rows:,} rows in {snap_wall:.1f} s "
              f"({total_rows / snap_wall:,.0f} rows/s, to the first streaming checkpoint), peak RSS {snap_peak:.1f} MiB",
              flush=True)

        # Changes spread over every table; checkpoint durations from /pipelines.
        per_txn_tables = max(1, a.rate // (10 * ROWS_PER_TOUCH))
        rng = random.Random(7)
        commits = []  # (wall time after commit, position, tables)
        durations = {}
        stop = threading.Event()

        def poll_checkpoints():
            while not stop.is_set():
                st = status(port)
                if st and st["last_checkpoint"]:
                    cp = st["last_checkpoint"]
                    durations[cp["id"]] = cp["duration_ms"] / 1000
                time.sleep(0.25)

        poller = threading.Thread(target=poll_checkpoints, daemon=True)
        poller.start()
        first_cp = max(durations) if durations else 0
        with src.connect() as c:
            begin = time.time()
            i = 0
            while time.time() - begin < a.seconds:
                due = begin + i / 10
                if due > time.time():
                    time.sleep(due - time.time())
                tables = rng.sample(names, per_txn_tables)
                ids = [rng.randrange(1, a.small_rows + 1) for _ in range(ROWS_PER_TOUCH)]
                pos = src.touch(c, tables, ids)
                commits.append((time.time(), pos, tables))
                i += 1
        offered = len(commits) * per_txn_tables * ROWS_PER_TOUCH / (commits[-1][0] - begin)
        # Two checkpoints more, so that the last changes land.
        deadline = time.time() + 120
        last_pos = commits[-1][1]
        while time.time() < deadline:
            st = status(port)
            if st and st.get("source_position") and src.position(st["source_position"]) >= last_pos:
                break
            time.sleep(0.5)
        stop.set()
        poller.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        stream_peak = peak[0]
        cps = sorted(v for k, v in durations.items() if k > first_cp)
        snaps = lake_snapshots(work / "lake" / "catalog.db", src.ns, names, src.position)
        delays = []
        unseen = 0
        for t, pos, tables in commits:
            for name in tables:
                ts = next((ts for ts, p in snaps[name] if p >= pos), None)
                if ts is None:
                    unseen += 1
                else:
                    delays.append(ts - t)
        delays.sort()
        p50 = delays[len(delays) // 2] if delays else float("nan")
        p99 = delays[int(len(delays) * 0.99)] if delays else float("nan")
        print(f"changes: {offered:,.0f} changes/s offered for {a.seconds:.0f} s over {len(names)} tables "
              f"({per_txn_tables} tables × {ROWS_PER_TOUCH} rows per transaction, 10 transactions/s)", flush=True)
        if cps:
            print(f"checkpoints during changes: {len(cps)}, duration p50 {cps[len(cps) // 2]:.2f} s, "
                  f"max {cps[-1]:.2f} s", flush=True)
        print(f"freshness (commit → visible in that table): p50 {p50:.2f} s, p99 {p99:.2f} s "
              f"({len(delays)} table-transactions seen, {unseen} not)", flush=True)
        print(f"peak RSS: snapshot {snap_peak:.1f} MiB, whole run {stream_peak:.1f} MiB", flush=True)

        # Every table equal to the source.
        want = src.totals(names)
        con = lake.duck()
        wrong = []
        for n in names:
            got = lake.sql(con, work / "lake" / "catalog.db",
                           f"select count(*), coalesce(sum(n), 0) from {{{src.ns}.{n}}}")[0]
            if tuple(int(v) for v in got) != tuple(int(v) for v in want[n]):
                wrong.append((n, got, want[n]))
        if wrong:
            sys.exit(f"{len(wrong)} tables differ from the source, e.g. {wrong[:5]}")
        print(f"lake = source: all {len(names)} tables (count and sum(n))", flush=True)
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        src.stop()
        if not os.environ.get("LAKESHORE_BENCH_KEEP"):
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
