"""PostgreSQL benchmark (not a test): lakeshore vs the server's own limits, same run.

1. Snapshot of a 1M-row table (bigint key, int, varchar, numeric(12,2), text, two
   timestamps): `lakeshore backfill` rows/s vs `COPY ... TO STDOUT (FORMAT binary)` into
   /dev/null by psql.
2. CDC: 100k changes (70% update, 20% insert, 10% delete, transactions of 100) written while
   lakeshore is stopped, then read back: lakeshore changes/s vs `pg_recvlogical` (pgoutput,
   same publication) reading the same WAL from its own slot.
3. Freshness at a steady 5k changes/s with `lakeshore run`: for each source transaction,
   the time from its commit to the first Iceberg snapshot whose source position covers it
   (snapshot timestamps and `lakeshore.source-position` from the table metadata).
4. One transaction that updates every row of a 10M-row table (`--big-transaction`): a
   checkpoint cannot fall inside it, so this measures the upsert writer's spilled key
   index; lakeshore changes/s and peak RSS vs `pg_recvlogical` over the same WAL.
Peak RSS is the child's ru_maxrss. `--parts` runs a subset (e.g. `--parts big`).
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402
from benchlib import freshness, rss_of, timed  # noqa: E402
from pgserver import PgServer  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]
PGBIN = "/usr/lib/postgresql/15/bin"


def write_pipeline(d: Path, name, url, interval="10s", table="public.bench"):
    f = d / "p.toml"
    f.write_text(f"""[pipeline]
name = "{name}"
checkpoint_interval = "{interval}"

[source]
type = "postgres"
url = "{url}"
tables = ["{table}"]

[sink]
type = "iceberg"
catalog = {{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }}
namespace = "pg"
""")
    return f


def changes(conn, rng, next_id, n, txn=100):
    """`n` changes in transactions of `txn`: 70% update, 20% insert, 10% delete."""
    cur = conn.cursor()
    done = 0
    while done < n:
        with conn.transaction():
            for _ in range(txn):
                r = rng.random()
                if r < 0.7:
                    cur.execute("update bench set n = n + 1, amount = amount + 0.01, updated_at = now() where id = %s",
                                (rng.randrange(1, next_id),))
                elif r < 0.9:
                    cur.execute("insert into bench values (%s, 1, 'new', 1.00, 'inserted', now(), now())", (next_id,))
                    next_id += 1
                else:
                    cur.execute("delete from bench where id = %s", (rng.randrange(1, next_id),))
                done += 1
    return next_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=100_000)
    ap.add_argument("--fresh-seconds", type=int, default=20)
    ap.add_argument("--fresh-rate", type=int, default=5000)
    ap.add_argument("--big-transaction", type=int, default=10_000_000)
    ap.add_argument("--parts", default="snapshot,cdc,fresh,big")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    import psycopg

    server = PgServer()
    work = Path(tempfile.mkdtemp(prefix="lakeshore-pgbench-"))
    print(f"machine: {os.cpu_count()} cores; workdir {work}", flush=True)
    try:
        db = server.create_db("bench")
        if "big" in parts:
            big_transaction(server, db, work, args.big_transaction)
        if not parts & {"snapshot", "cdc", "fresh"}:
            return
        with server.connect(db) as c:
            c.execute("""create table bench (id bigint primary key, n int, name varchar(40), amount numeric(12,2),
                         note text, created_at timestamp, updated_at timestamptz)""")
            c.execute(f"""insert into bench select g, g % 1000, 'name ' || g, (g % 100000) / 100.0,
                          md5(g::text) || ' ' || repeat('x', g % 40), '2024-01-01'::timestamp + g * interval '1 s',
                          now() from generate_series(1, {args.rows}) g""")
            c.execute("vacuum analyze bench")

        # 1. Snapshot vs binary COPY.
        copy_wall = timed([f"{PGBIN}/psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                                 "-d", db, "-c", "\\copy bench to '/dev/null' with (format binary)"])
        d = work / "snap"
        d.mkdir()
        f = write_pipeline(d, "bench", server.url(db))
        wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
        n = args.rows
        print(f"{'postgres-snapshot-' + str(n // 1000) + 'k':<32} rows {n:>10,}  lakeshore {n / wall:>10,.0f} rows/s  "
              f"binary COPY {n / copy_wall:>10,.0f} rows/s  ratio {copy_wall / wall:5.2f}  peak RSS {rss:6.1f} MiB",
              flush=True)

        # 2. CDC backlog vs pg_recvlogical on its own slot over the same WAL.
        server.execute("select pg_create_logical_replication_slot('raw_reader', 'pgoutput')", db)
        rng = random.Random(1)
        with server.connect(db) as c:
            changes(c, rng, args.rows + 1, args.changes)
        raw_wall = raw_wal_read(server, db, "raw_reader", "lakeshore_bench")
        wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
        m = args.changes
        print(f"{'postgres-cdc-' + str(m // 1000) + 'k':<32} chg  {m:>10,}  lakeshore {m / wall:>10,.0f} chg/s   "
              f"pg_recvlogical {m / raw_wall:>10,.0f} chg/s  ratio {raw_wall / wall:5.2f}  peak RSS {rss:6.1f} MiB",
              flush=True)
        lake_n = lake.sql(lake.duck(), d / "lake" / "catalog.db", "select count(*) from {pg.bench}")[0][0]
        src_n = server.execute("select count(*) from bench", db)[0][0]
        assert lake_n == src_n, (lake_n, src_n)

        # 3. Freshness at a steady rate.
        interval = 1
        f2 = write_pipeline(d, "bench", server.url(db), interval=f"{interval}s")
        run = subprocess.Popen([BIN, "run", str(f2)], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        time.sleep(2)
        commits = []  # (commit wall time, LSN after commit)
        txn = 100
        per_s = args.fresh_rate // txn
        next_id = args.rows + args.changes + 1_000_000
        with server.connect(db) as c, server.connect(db) as probe:
            start = time.time()
            for i in range(per_s * args.fresh_seconds):
                due = start + i / per_s
                if due > time.time():
                    time.sleep(due - time.time())
                next_id = changes(c, rng, next_id, txn, txn)
                t = time.time()
                # At or past the transaction's commit record, so a snapshot covering this
                # position holds the transaction (slightly pessimistic).
                lsn = probe.execute("select pg_current_wal_lsn()::text").fetchone()[0]
                commits.append((t, lsn))
        time.sleep(interval + 3)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        achieved = len(commits) * txn / (commits[-1][0] - commits[0][0])
        table = lake.pyiceberg_table(d / "lake" / "catalog.db", d / "lake" / "warehouse", "pg.bench")

        def lsn_int(text):
            hi, lo = text.split("/")
            return int(hi, 16) << 32 | int(lo, 16)

        p50, p99, seen = freshness(table, [(t, lsn_int(lsn)) for t, lsn in commits], lambda pos: pos["lsn"])
        print(f"{'postgres-freshness':<32} {achieved:,.0f} chg/s for {args.fresh_seconds} s, checkpoint {interval} s: "
              f"commit → visible p50 {p50:.2f} s, p99 {p99:.2f} s ({seen}/{len(commits)} transactions seen)",
              flush=True)
    finally:
        server.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def raw_wal_read(server, db, slot, publication):
    """Seconds `pg_recvlogical` takes to read the slot's WAL up to now."""
    end_lsn = server.execute("select pg_current_wal_lsn()::text", db)[0][0]
    wall = timed([f"{PGBIN}/pg_recvlogical", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
                  "-d", db, "--slot", slot, "--start", "--endpos", end_lsn,
                  "-o", "proto_version=1", "-o", f"publication_names={publication}",
                  "-f", "/dev/null", "--no-loop"])
    server.execute(f"select pg_drop_replication_slot('{slot}')", db)
    return wall


def big_transaction(server, db, work, n):
    """Part 4: one UPDATE of all `n` rows, read back by `lakeshore backfill`."""
    with server.connect(db) as c:
        c.execute("create table big (id bigint primary key, v int, s text)")
        c.execute(f"insert into big select g, 0, 'row ' || g from generate_series(1, {n}) g")
        c.execute("vacuum analyze big")
    d = work / "big"
    d.mkdir()
    f = write_pipeline(d, "big", server.url(db), table="public.big")
    subprocess.run([BIN, "backfill", str(f)], cwd=d, check=True, capture_output=True)
    server.execute("select pg_create_logical_replication_slot('raw_big', 'pgoutput')", db)
    with server.connect(db) as c:
        c.execute("update big set v = 1")
    raw_wall = raw_wal_read(server, db, "raw_big", "lakeshore_big")
    wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
    print(f"{'postgres-one-txn-' + str(n // 1_000_000) + 'M':<32} chg  {n:>10,}  lakeshore {n / wall:>10,.0f} chg/s   "
          f"pg_recvlogical {n / raw_wall:>10,.0f} chg/s  ratio {raw_wall / wall:5.2f}  peak RSS {rss:6.1f} MiB",
          flush=True)
    got = lake.sql(lake.duck(), d / "lake" / "catalog.db",
                   "select count(*), count(distinct id), min(v), max(v) from {pg.big}")[0]
    assert tuple(got) == (n, n, 1, 1), got


if __name__ == "__main__":
    main()
