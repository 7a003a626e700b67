"""Whole-database pipelines (`tables = ["shop.*"]`), the smaller form of the whole-db
benchmark: a few hundred tables snapshotted by one pipeline in `lakeshore run`, a
`kill -9` in the middle of the snapshot, then changes to a few of the tables and a table
created while streaming. Every lake table ends equal to its source table (DuckDB
against the server); tables a checkpoint did not change get no commit (no new Iceberg
snapshot), and `/pipelines` reports each lake table's committed rows."""
import json
import random
import signal
import sqlite3
from pathlib import Path

import lake
import pytest
from conftest import Pipeline
from test_daemon import Daemon

TABLES = 240
BIG_ROWS = 20_000


def snapshot_count(catalog_db, ns, name):
    loc = lake.metadata_location(catalog_db, f"{ns}.{name}")
    return len(json.loads(Path(loc.removeprefix("file://")).read_text()).get("snapshots", []))


def lake_tables(catalog_db, ns):
    with sqlite3.connect(catalog_db) as db:
        return {r[0] for r in db.execute("select table_name from iceberg_tables where table_namespace = ?", (ns,))}


class Pg:
    ns = "pg"

    def __init__(self, server):
        self.server = server
        self.db = server.create_db("whole")

    def source(self):
        return {"type": "postgres", "url": self.server.url(self.db), "tables": ["shop.*"]}

    def create(self, names, rows_of):
        with self.server.connect(self.db) as c:
            c.execute("create schema shop")
            for n in names:
                self.create_one(c, n, rows_of(n))

    def create_one(self, c, name, rows):
        c.execute(f"create table shop.{name} (id bigint primary key, n int not null, s text)")
        c.execute(f"insert into shop.{name} select g, 0, 'row ' || g from generate_series(1, {rows}) g")

    def add_table(self, name, rows):
        with self.server.connect(self.db) as c:
            self.create_one(c, name, rows)

    def change(self, rng, names):
        with self.server.connect(self.db) as c:
            for n in names:
                with c.transaction():
                    c.execute(f"update shop.{n} set n = n + 1 where id % 7 = {rng.randrange(7)}")
                    c.execute(f"delete from shop.{n} where id = {rng.randrange(1, 40)}")
                    c.execute(f"insert into shop.{n} values ({100_000 + rng.randrange(1000)}, 5, 'new') "
                              "on conflict (id) do update set n = excluded.n + 1")

    def totals(self, names):
        with self.server.connect(self.db) as c:
            return {n: tuple(c.execute(f"select count(*), coalesce(sum(n), 0), coalesce(sum(id), 0) from shop.{n}")
                             .fetchone()) for n in names}


class My:
    ns = "my"

    def __init__(self, server):
        self.server = server
        server.create_db("wholedb")

    def source(self):
        return {"type": "mysql", "url": self.server.url(), "tables": ["wholedb.*"]}

    def create(self, names, rows_of):
        with self.server.connect("wholedb") as c, c.cursor() as cur:
            for n in names:
                self.create_one(cur, n, rows_of(n))

    def create_one(self, cur, name, rows):
        cur.execute(f"create table {name} (id bigint primary key, n int not null, s varchar(40))")
        cur.execute(f"insert into {name} select seq, 0, concat('row ', seq) from seq_1_to_{rows}")

    def add_table(self, name, rows):
        with self.server.connect("wholedb") as c, c.cursor() as cur:
            self.create_one(cur, name, rows)

    def change(self, rng, names):
        with self.server.connect("wholedb", autocommit=False) as c, c.cursor() as cur:
            for n in names:
                cur.execute(f"update {n} set n = n + 1 where id % 7 = {rng.randrange(7)}")
                cur.execute(f"delete from {n} where id = {rng.randrange(1, 40)}")
                cur.execute(f"insert into {n} values ({100_000 + rng.randrange(1000)}, 5, 'new') "
                            "on duplicate key update n = values(n) + 1")
                c.commit()

    def totals(self, names):
        with self.server.connect("wholedb") as c, c.cursor() as cur:
            out = {}
            for n in names:
                cur.execute(f"select count(*), coalesce(sum(n), 0), coalesce(sum(id), 0) from {n}")
                out[n] = tuple(int(v) for v in cur.fetchone())
            return out


def assert_lake_equals_source(duck, p, src, names):
    want = src.totals(names)
    wrong = []
    for n in names:
        got = duck.execute(f"select count(*), coalesce(sum(n), 0), coalesce(sum(id), 0) from {p.scan(n)}").fetchone()
        if tuple(int(v) for v in got) != tuple(int(v) for v in want[n]):
            wrong.append((n, got, want[n]))
    assert not wrong, f"{len(wrong)} of {len(names)} tables differ from the source, e.g. {wrong[:5]}"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_whole_database_snapshots_streams_and_takes_new_tables(tmp_path, kind, request, duck):
    server = request.getfixturevalue(kind)
    src = Pg(server) if kind == "postgres" else My(server)
    names = [f"t{i:03}" for i in range(TABLES)] + ["big0", "big1"]
    src.create(names, lambda n: BIG_ROWS if n.startswith("big") else 40 + len(n) * 3)
    d = tmp_path / "pipelines"
    d.mkdir()
    p = Pipeline(d, "whole", src.source(), {"namespace": src.ns}, interval="1s")
    daemon = Daemon(d, [d])
    try:
        # kill -9 once some tables, not all, are in the lake.
        daemon.wait(lambda: p.catalog_db.exists() and len(lake_tables(p.catalog_db, src.ns)) > 0
                    and daemon.status()[0]["whole"]["last_checkpoint"] is not None, 120, "a first checkpoint")
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=30)
        daemon = Daemon(d, [d])
        daemon.wait(lambda: daemon.status()[0]["whole"]["phase"] == "streaming", 300, "the snapshot ends")
        daemon.committing("whole")
        assert lake_tables(p.catalog_db, src.ns) == set(names)
        assert_lake_equals_source(duck, p, src, names)

        # Changes to a few tables: those commit, the others make no commit.
        rng = random.Random(23)
        changed = rng.sample(names, 12)
        before = {n: snapshot_count(p.catalog_db, src.ns, n) for n in names}
        src.change(rng, changed)
        # A table created while streaming joins (a restart reads it whole).
        src.add_table("t_late", 300)
        daemon.wait(lambda: "t_late" in lake_tables(p.catalog_db, src.ns), 120, "t_late joins")
        daemon.committing("whole")
        daemon.committing("whole")
        assert_lake_equals_source(duck, p, src, names + ["t_late"])
        after = {n: snapshot_count(p.catalog_db, src.ns, n) for n in names}
        grew = {n for n in names if after[n] > before[n]}
        assert set(changed) <= grew, sorted(set(changed) - grew)
        # A restart (PostgreSQL, for the new table) may commit nothing of the others; but
        # an unchanged table never gets a commit per checkpoint.
        assert len(grew - set(changed)) == 0, sorted(grew - set(changed))[:10]

        status = daemon.status()[0]["whole"]
        assert set(changed) <= set(status["tables"]), status["tables"].keys()
        assert all(status["tables"][n]["rows"] >= 1 for n in changed)
        assert status["tables"]["t_late"]["rows"] == 300
    finally:
        assert daemon.stop() == 0
