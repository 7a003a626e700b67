"""MariaDB benchmark (not a test): lakeshore vs the server's own limits, same run.

1. Snapshot of a 1M-row table (bigint key, int, varchar, decimal(12,2), text, two
   datetime(6)): `lakeshore backfill` rows/s vs `mariadb --quick -e 'SELECT * ...'` into
   /dev/null; once at MariaDB's snapshot position, once between watermarks
   (`snapshot_watermarks`, the MySQL 8 path).
2. CDC: 100k changes (70% update, 20% insert, 10% delete, transactions of 100) written while
   lakeshore is stopped, then read back: lakeshore changes/s vs `mariadb-binlog
   --read-from-remote-server` decoding the same binlog range into /dev/null.
3. Freshness at a steady 5k changes/s with `lakeshore run`: for each source transaction,
   the time from its commit to the first Iceberg snapshot whose source position covers it.
Peak RSS is the child's, measured by /usr/bin/time.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402
from benchlib import freshness, rss_of, timed  # noqa: E402
from myserver import MyServer  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]


def write_pipeline(d: Path, name, url, interval="10s", extra="", file="p.toml"):
    f = d / file
    f.write_text(f"""[pipeline]
name = "{name}"
checkpoint_interval = "{interval}"

[source]
type = "mysql"
url = "{url}"
tables = ["bench.bench"]
{extra}
[sink]
type = "iceberg"
catalog = {{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }}
namespace = "my"
""")
    return f


def changes(conn, rng, next_id, n, txn=100):
    """`n` changes in transactions of `txn`: 70% update, 20% insert, 10% delete. Each
    transaction goes to the server in one round trip (multi-statement), so the client
    keeps up with the target rate."""
    done = 0
    with conn.cursor() as cur:
        while done < n:
            stmts = []
            for _ in range(txn):
                r = rng.random()
                if r < 0.7:
                    stmts.append("update bench set n = n + 1, amount = amount + 0.01, updated_at = now(6) "
                                 f"where id = {rng.randrange(1, next_id)}")
                elif r < 0.9:
                    stmts.append(f"insert into bench values ({next_id}, 1, 'new', 1.00, 'inserted', now(6), now(6))")
                    next_id += 1
                else:
                    stmts.append(f"delete from bench where id = {rng.randrange(1, next_id)}")
                done += 1
            cur.execute("begin; " + "; ".join(stmts) + "; commit")
            while cur.nextset():
                pass
    return next_id


def connect(server):
    import pymysql
    from pymysql.constants import CLIENT
    return pymysql.connect(host="127.0.0.1", port=server.port, user="root", database="bench", autocommit=True,
                           client_flag=CLIENT.MULTI_STATEMENTS)


def master(server):
    file, pos = server.execute("show master status")[0][:2]
    return file, int(pos)


def key(file, pos):
    return int(file.rsplit(".", 1)[1]), pos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=100_000)
    ap.add_argument("--fresh-seconds", type=int, default=20)
    ap.add_argument("--fresh-rate", type=int, default=5000)
    args = ap.parse_args()

    server = MyServer()
    work = Path(tempfile.mkdtemp(prefix="lakeshore-mybench-"))
    print(f"machine: {os.cpu_count()} cores; workdir {work}", flush=True)
    try:
        server.create_db("bench")
        server.execute("""create table bench (id bigint primary key, n int, name varchar(40), amount decimal(12,2),
                          note text, created_at datetime(6), updated_at datetime(6))""", "bench")
        server.execute(f"""insert into bench select seq, seq % 1000, concat('name ', seq), (seq % 100000) / 100.0,
                           concat(md5(seq), ' ', repeat('x', seq % 40)), '2024-01-01' + interval seq second, now(6)
                           from seq_1_to_{args.rows}""", "bench")
        client = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(server.port), "-u", "root"]

        # 1. Snapshot vs a raw SELECT.
        select_wall = timed(["sh", "-c", " ".join(client) + " --quick -e 'select * from bench.bench' > /dev/null"])
        d = work / "snap"
        d.mkdir()
        f = write_pipeline(d, "bench", server.url())
        wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
        n = args.rows
        print(f"{'mysql-snapshot-' + str(n // 1000) + 'k':<32} rows {n:>10,}  lakeshore {n / wall:>10,.0f} rows/s  "
              f"raw SELECT {n / select_wall:>10,.0f} rows/s  ratio {select_wall / wall:5.2f}  peak RSS {rss:6.1f} MiB",
              flush=True)
        # The same snapshot read between watermarks (the MySQL 8 path) instead of at
        # MariaDB's snapshot position.
        dw = work / "snap-watermarks"
        dw.mkdir()
        fw = write_pipeline(dw, "bench-wm", server.url(), extra='snapshot_watermarks = "bench.lakeshore_watermarks"')
        wm_wall, wm_rss, _ = rss_of([BIN, "backfill", str(fw)], dw)
        print(f"{'mysql-snapshot-watermarks-' + str(n // 1000) + 'k':<32} rows {n:>10,}  lakeshore {n / wm_wall:>10,.0f} rows/s  "
              f"raw SELECT {n / select_wall:>10,.0f} rows/s  ratio {select_wall / wm_wall:5.2f}  peak RSS {wm_rss:6.1f} MiB  "
              f"(vs snapshot position: {wall / wm_wall:4.2f}x the speed)", flush=True)

        # 2. CDC backlog vs mariadb-binlog decoding the same range.
        start_file, start_pos = master(server)
        rng = random.Random(1)
        with connect(server) as c:
            changes(c, rng, args.rows + 1, args.changes)
        end_file, end_pos = master(server)
        raw_wall = timed(["sh", "-c", "mariadb-binlog --no-defaults --read-from-remote-server -h 127.0.0.1 "
                          f"-P {server.port} -u root --base64-output=decode-rows --verbose "
                          f"--start-position={start_pos} --stop-position={end_pos} {start_file} > /dev/null"])
        wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
        m = args.changes
        print(f"{'mysql-cdc-' + str(m // 1000) + 'k':<32} chg  {m:>10,}  lakeshore {m / wall:>10,.0f} chg/s   "
              f"mariadb-binlog {m / raw_wall:>10,.0f} chg/s  ratio {raw_wall / wall:5.2f}  peak RSS {rss:6.1f} MiB",
              flush=True)
        lake_n = lake.sql(lake.duck(), d / "lake" / "catalog.db", "select count(*) from {my.bench}")[0][0]
        src_n = server.execute("select count(*) from bench", "bench")[0][0]
        assert lake_n == src_n, (lake_n, src_n)

        # 3. Freshness at a steady rate.
        interval = 1
        f2 = write_pipeline(d, "bench", server.url(), interval=f"{interval}s")
        run = subprocess.Popen([BIN, "run", str(f2)], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        time.sleep(2)
        commits = []  # (commit wall time, binlog position after the commit)
        txn = 100
        per_s = args.fresh_rate // txn
        next_id = args.rows + args.changes + 1_000_000
        with connect(server) as c:
            start = time.time()
            for i in range(per_s * args.fresh_seconds):
                due = start + i / per_s
                if due > time.time():
                    time.sleep(due - time.time())
                next_id = changes(c, rng, next_id, txn, txn)
                t = time.time()
                with c.cursor() as cur:
                    cur.execute("show master status")
                    file, pos = cur.fetchone()[:2]
                commits.append((t, key(file, int(pos))))
        time.sleep(interval + 3)
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
        achieved = len(commits) * txn / (commits[-1][0] - commits[0][0])
        table = lake.pyiceberg_table(d / "lake" / "catalog.db", d / "lake" / "warehouse", "my.bench")
        p50, p99, seen = freshness(table, commits, lambda pos: key(pos["binlog"]["file"], pos["binlog"]["pos"]))
        print(f"{'mysql-freshness':<32} {achieved:,.0f} chg/s for {args.fresh_seconds} s, checkpoint {interval} s: "
              f"commit → visible p50 {p50:.2f} s, p99 {p99:.2f} s ({seen}/{len(commits)} transactions seen)",
              flush=True)
    finally:
        server.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
