"""Transforms (docs/transforms.md) on PostgreSQL and MariaDB, through snapshot, stream,
`kill -9` and a schema change: two shards with overlapping keys merged into one lake
table under `key = ["_source_table", "id"]`, a column excluded, one hashed, a filter, a
computed column and metadata columns. The lake (DuckDB) is compared with the source
shaped by the same rules in Python after each step."""
import os
import hashlib
import re
import signal
import time

import pytest

from conftest import start_run
from test_correctness_mysql import wait_lake
from test_mysql import my_pipeline
from test_postgres import pg_pipeline

SALT = "s4lt-for-tests"
TRANSFORM = """
[[transform]]
tables = "{ns}.s*"
exclude = ["card"]
filter = "region = 'eu'"
key = ["_source_table", "id"]
metadata = ["_op", "_source_table", "_source_ts", "_position"]
hash_salt = "${{TRANSFORM_SALT}}"

[transform.mask]
email = "hash"

[transform.compute]
amount_x2 = "amount * 2"

[[route]]
from = "{ns}.s*"
to = "s"
"""


class Pg:
    def __init__(self, server, tmp_path, name):
        self.server, self.db = server, server.create_db(name)
        self.ns = "public"
        self.p = pg_pipeline(tmp_path, name, server, self.db, ["public.s1", "public.s2"])

    def sql(self, stmt):
        self.server.execute(stmt, self.db)

    def rows(self, shard):
        with self.server.connect(self.db) as c:
            return c.execute(f"select id, email, region, amount, card from s{shard}").fetchall()

    def add_column(self, shard):
        self.sql(f"ALTER TABLE s{shard} ADD COLUMN note text")


class My:
    def __init__(self, server, tmp_path, name):
        self.server, self.db = server, server.create_db(name)
        self.ns = name
        self.p = my_pipeline(tmp_path, name, server, [f"{name}.s1", f"{name}.s2"])

    def sql(self, stmt):
        self.server.execute(stmt, self.db)

    def rows(self, shard):
        return self.server.execute(f"select id, email, region, amount, card from s{shard}", self.db)

    def add_column(self, shard):
        self.sql(f"ALTER TABLE s{shard} ADD COLUMN note varchar(20)")


def expected(src):
    """The source shaped by the transform, as (source table, id, hash, region, amount x2)."""
    out = set()
    for shard in (1, 2):
        for id_, email, region, amount, _card in src.rows(shard):
            if region == "eu":
                h = None if email is None else hashlib.sha256((SALT + email).encode()).hexdigest()
                out.add((f"{src.ns}.s{shard}", id_, h, region, None if amount is None else amount * 2))
    return out


def lake(duck, src):
    return set(duck.execute(
        f"select _source_table, id, email, region, amount_x2 from {src.p.scan('s')}").fetchall())


def assert_shaped(duck, src):
    want, got = expected(src), lake(duck, src)
    assert got == want, f"lake - source: {sorted(got - want)[:5]}; source - lake: {sorted(want - got)[:5]}"


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_transforms_shape_snapshot_and_stream_through_a_crash(tmp_path, kind, request, duck):
    server = request.getfixturevalue("postgres" if kind == "postgres" else "mysql")
    src = (Pg if kind == "postgres" else My)(server, tmp_path, f"shape_{kind[:2]}")
    for shard in (1, 2):
        src.sql(f"CREATE TABLE s{shard} (id int PRIMARY KEY, email varchar(60), region varchar(10), "
                f"amount int, card varchar(20))")
        src.sql(f"INSERT INTO s{shard} (id, email, region, amount, card) VALUES " + ", ".join(
            f"({i}, 'user{i}@s{shard}.example', '{'eu' if i % 2 else 'us'}', {i * 10}, '4111-{i}')"
            for i in range(1, 201)))
    with open(src.p.file, "a") as f:
        f.write(TRANSFORM.format(ns=src.ns))
    env = {"TRANSFORM_SALT": SALT}
    src.p.backfill(env)
    assert_shaped(duck, src)
    columns = [r[0] for r in duck.execute(f"describe select * from {src.p.scan('s')}").fetchall()]
    assert columns == ["id", "email", "region", "amount", "amount_x2", "_op", "_source_table", "_source_ts",
                       "_position"], columns
    # Snapshot rows have no commit time or position at the source.
    assert duck.execute(f"select count(*) from {src.p.scan('s')} "
                        "where _source_ts is not null or _position is not null").fetchone()[0] == 0
    ops = {r[0] for r in duck.execute(f"select distinct _op from {src.p.scan('s')}").fetchall()}
    assert ops == {"snapshot"}, ops
    # The hashed column says so in the lake schema (pyiceberg reads the field's doc).
    email = src.p.pyiceberg_table("s").schema().find_field("email")
    assert email.doc and "SHA-256" in email.doc and "hash_salt" in email.doc, email
    assert src.p.pyiceberg_table("s").schema().find_field("region").doc is None

    run = start_run(src.p, env)
    time.sleep(2)
    # Across the filter both ways, deletes, new rows in and out of it, on both shards.
    src.sql("UPDATE s1 SET region = 'us' WHERE id <= 20")           # odd ids leave: deletes
    src.sql("UPDATE s2 SET region = 'eu' WHERE id BETWEEN 21 AND 40")  # even ids enter: inserts
    src.sql("DELETE FROM s1 WHERE id BETWEEN 41 AND 50")
    src.sql("INSERT INTO s2 (id, email, region, amount, card) VALUES (500, 'new@x', 'eu', 7, 'c'), "
            "(501, 'out@x', 'us', 8, 'c')")
    src.sql("UPDATE s1 SET amount = amount + 1, email = 'changed@x' WHERE id BETWEEN 51 AND 60")
    wait_lake(lambda: assert_shaped(duck, src))
    ops = {r[0] for r in duck.execute(f"select distinct _op from {src.p.scan('s')}").fetchall()}
    assert {"snapshot", "insert", "update"} <= ops, ops
    # Streamed rows carry their commit time (within the last minutes) and their position
    # at the source: a PostgreSQL LSN, or a MariaDB GTID.
    streamed = duck.execute(
        f"select _source_ts, _position from {src.p.scan('s')} where _op <> 'snapshot'").fetchall()
    assert streamed and all(ts is not None and pos for ts, pos in streamed), streamed[:3]
    now = time.time()
    assert all(now - 600 < ts.timestamp() <= now + 5 for ts, _ in streamed), streamed[:3]
    pattern = r"^[0-9A-F]+/[0-9A-F]+$" if kind == "postgres" else r"^[0-9]+-[0-9]+-[0-9]+$"
    assert all(re.match(pattern, pos) for _, pos in streamed), streamed[:3]

    # kill -9 in the middle of a stream of changes; the restart resumes exactly.
    for i in range(60, 120):
        src.sql(f"UPDATE s{1 + i % 2} SET region = CASE WHEN region = 'eu' THEN 'us' ELSE 'eu' END, "
                f"amount = amount + 1 WHERE id = {i}")
        if i == 90:
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
    run = start_run(src.p, env)
    wait_lake(lambda: assert_shaped(duck, src), timeout=60)

    # A column added at the source appears in the lake (the transform keeps every
    # column but `card`); the excluded column never does.
    src.add_column(1)
    src.sql("UPDATE s1 SET note = 'hello', region = 'eu' WHERE id = 61")
    wait_lake(lambda: assert_shaped(duck, src))
    wait_lake(lambda: duck.execute(
        f"select note from {src.p.scan('s')} where _source_table = '{src.ns}.s1' and id = 61"
    ).fetchall() == [("hello",)] or (_ for _ in ()).throw(AssertionError("note not in the lake")))
    columns = [r[0] for r in duck.execute(f"describe select * from {src.p.scan('s')}").fetchall()]
    assert "card" not in columns and "note" in columns, columns

    # TRUNCATE of one shard removes only its rows.
    src.sql("TRUNCATE s2")
    wait_lake(lambda: assert_shaped(duck, src), timeout=60)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    assert SALT not in err


EXCLUDE = """
[[transform]]
tables = "{table}"
exclude = ["secret", "odd*"]
"""


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_excluded_columns_are_never_read(tmp_path, kind, request, duck):
    """A user with SELECT on some columns only, and a column of a type lakeshore cannot
    map: both excluded by a transform, the table snapshots and streams, and the lake
    has neither column."""
    server = request.getfixturevalue("postgres" if kind == "postgres" else "mysql")
    name = f"excl_{kind[:2]}"
    if kind == "postgres":
        db = server.create_db(name)
        server.execute("DROP ROLE IF EXISTS limited")
        server.execute("CREATE ROLE limited LOGIN REPLICATION PASSWORD 'pw'")
        with server.connect(db) as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY, a text, secret text, odd_p point)")
            c.execute("INSERT INTO t SELECT g, 'a' || g, 's' || g, point(g, g) FROM generate_series(1, 100) g")
            c.execute("GRANT SELECT (id, a) ON t TO limited")
            c.execute("CREATE PUBLICATION mine FOR TABLE t")
        p = pg_pipeline(tmp_path, name, server, db, ["public.t"], publication="mine")
        text = p.file.read_text().replace("postgres://postgres@", "postgres://limited:pw@")
        table = "public.t"

        def sql(stmt):
            server.execute(stmt, db)

        def source():
            return set(server.execute("select id, a from t", db))
    else:
        db = server.create_db(name)
        server.execute("DROP USER IF EXISTS 'limited'@'%'")
        server.execute("CREATE USER 'limited'@'%' IDENTIFIED BY 'pw'")
        server.execute("CREATE TABLE t (id int PRIMARY KEY, a varchar(20), secret varchar(20), "
                       "odd_c varchar(20) CHARACTER SET koi8r)", db)
        server.execute("INSERT INTO t VALUES " + ", ".join(f"({i}, 'a{i}', 's{i}', 'k')" for i in range(1, 101)), db)
        server.execute(f"GRANT SELECT (id, a) ON {db}.t TO 'limited'@'%'")
        server.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'limited'@'%'")
        if os.environ.get("LAKESHORE_TEST_WATERMARKS") == "1":
            # The second pass reads snapshots between watermarks, in a table of its own.
            server.execute(f"GRANT CREATE, SELECT, INSERT, UPDATE ON {db}.lakeshore_watermarks TO 'limited'@'%'")
        p = my_pipeline(tmp_path, name, server, [f"{db}.t"])
        text = p.file.read_text().replace("mysql://root@", "mysql://limited:pw@")
        table = f"{db}.t"

        def sql(stmt):
            server.execute(stmt, db)

        def source():
            return set(server.execute("select id, a from t", db))
    p.file.write_text(text + EXCLUDE.format(table=table))
    p.backfill()

    def lake_equals_source():
        got = set(duck.execute(f"select id, a from {p.scan('t')}").fetchall())
        assert got == source(), f"lake {len(got)} rows, source {len(source())}"

    lake_equals_source()
    run = start_run(p)
    time.sleep(2)
    sql("UPDATE t SET a = concat(a, '!'), secret = 'changed' WHERE id <= 30")
    sql("DELETE FROM t WHERE id BETWEEN 31 AND 40")
    sql("INSERT INTO t (id, a, secret) VALUES (1000, 'new', 'hidden')")
    wait_lake(lake_equals_source)
    columns = [r[0] for r in duck.execute(f"describe select * from {p.scan('t')}").fetchall()]
    assert columns == ["id", "a"], columns
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]


def test_a_key_changed_under_an_existing_lake_table_is_refused(tmp_path):
    """Upserts by a new `key` would not find the rows written under the old one: the
    pipeline stops before writing, naming both keys and the fix."""
    from conftest import Pipeline
    source = {"type": "datagen", "profile": "orders", "initial_rows": 500, "events": 500, "seed": 3}
    p = Pipeline(tmp_path, "rekey", source, {"namespace": "shop", "mode": "upsert"})
    p.backfill()
    before = len(p.pyiceberg_table("orders").scan().to_arrow())
    with open(p.file, "a") as f:
        f.write('\n[[transform]]\ntables = "orders"\nmetadata = ["_source_table"]\nkey = ["_source_table", "order_id"]\n')
    r = p.start()
    _, err = r.communicate(timeout=120)
    assert r.returncode != 0
    assert "the key (order_id)" in err and "upserts by (_source_table, order_id)" in err and "[[route]]" in err, err[-2000:]
    assert len(p.pyiceberg_table("orders").scan().to_arrow()) == before


AS_TEXT = """
[[transform]]
tables = "public.shapes"
as_text = ["p", "r"]
exclude = ["c"]

[transform.compute]
px = "CAST(split_part(substr(p, 2), ',', 1) AS DOUBLE)"
"""


def test_columns_of_unmapped_types_read_as_text(tmp_path, postgres, duck):
    """A `point`, a range and a composite column have no Iceberg type: without a
    transform the table is refused with both fixes; with `as_text` two of them land as
    PostgreSQL prints them and a computed column takes one apart, through snapshot and
    stream; the third is excluded."""
    db = postgres.create_db("astext")
    postgres.execute("CREATE TYPE pair AS (a int, b text)", db)
    postgres.execute("CREATE TABLE shapes (id int PRIMARY KEY, p point, r int4range, c pair, v text)", db)
    postgres.execute("INSERT INTO shapes SELECT g, point(g, g * 2), int4range(g, g + 5), ROW(g, 'x')::pair, 'v' "
                     "FROM generate_series(1, 300) g", db)
    bare = pg_pipeline(tmp_path, "astext_bare", postgres, db, ["public.shapes"])
    r = bare.start()
    _, err = r.communicate(timeout=120)
    assert r.returncode != 0
    assert 'column p: type point has no Iceberg type' in err and 'as_text = ["p"]' in err and \
        'exclude = ["p"]' in err, err[-2000:]

    (tmp_path / "t").mkdir()
    p = pg_pipeline(tmp_path / "t", "astext", postgres, db, ["public.shapes"])
    with open(p.file, "a") as f:
        f.write(AS_TEXT)

    def same():
        with postgres.connect(db) as c:
            want = sorted(c.execute("select id, p::text, r::text, p[0], v from shapes").fetchall())
        got = sorted(duck.execute(f"select id, p, r, px, v from {p.scan('shapes')}").fetchall())
        assert got == want, (got[:3], want[:3])
        return True

    p.backfill()
    same()
    columns = [r[0] for r in duck.execute(f"describe select * from {p.scan('shapes')}").fetchall()]
    assert "c" not in columns, columns
    run = start_run(p)
    time.sleep(2)
    postgres.execute("UPDATE shapes SET p = point(-1.5, 7), r = int4range(1, 2, '[]') WHERE id <= 10", db)
    postgres.execute("INSERT INTO shapes VALUES (1000, point(3, 4), 'empty', NULL, 'n')", db)
    postgres.execute("DELETE FROM shapes WHERE id BETWEEN 20 AND 29", db)
    wait_lake(same)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
