"""Correctness under change, PostgreSQL 15 (docs/correctness.md): renames and re-created
tables followed by identity, values Iceberg cannot hold, publications that hide changes,
and shards routed into one lake table. Each case ends with the lake (DuckDB) equal to
the source (psycopg), or a stop naming the cause and the fix."""
import contextlib
import signal
import subprocess
import time

import pytest

import lake
from conftest import BIN, Pipeline, start_run
from test_correctness_mysql import wait_lake
from test_postgres import Log, assert_lake_equals_source, lake_rows, pg_pipeline, pg_rows


def test_renamed_table_keeps_feeding_its_lake_table(tmp_path, postgres, duck):
    """Issue 19, 2: ALTER TABLE a RENAME TO b while streaming, then 50 inserts and 10
    updates: they reach lake table `a`; and again after a restart (found by OID)."""
    db = postgres.create_db("rename19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 1000) g")
    p = pg_pipeline(tmp_path, "rename19", postgres, db, ["public.a"])
    p.backfill()
    cols = ["id", "v"]
    with streaming(p) as log:
        with postgres.connect(db) as c:
            c.execute("ALTER TABLE a RENAME TO b")
            c.execute("INSERT INTO b SELECT g, 'new' || g FROM generate_series(2001, 2050) g")
            c.execute("UPDATE b SET v = 'updated' WHERE id <= 10")
        wait_lake(lambda: _same(duck, postgres, db, p, "a", "public.b", cols))
    assert "table renamed at the source" in log.text(), log.text()[-3000:]
    # After a restart the configured name is gone; the OID in the position finds it.
    with postgres.connect(db) as c:
        c.execute("DELETE FROM b WHERE id BETWEEN 100 AND 199")
    _, err = p.backfill()
    _same(duck, postgres, db, p, "a", "public.b", cols)
    assert "followed by its OID" in err, err[-3000:]


@contextlib.contextmanager
def streaming(p):
    """`lakeshore run` of the pipeline, streaming, while the body runs; yields its log."""
    run = start_run(p)
    log = Log(run)
    log.start()
    time.sleep(1.5)
    try:
        yield log
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)


def test_column_changes_without_a_row_change_reach_the_lake(tmp_path, postgres, duck):
    """A dropped column shifts the others; a rename after it, and no row changes since
    (so no Relation message): the catalog check reads the table again, and the lake's
    renamed column holds every value. Found by the differential test (PostgreSQL seed
    10), whose positional comparison missed this rename."""
    db = postgres.create_db("shape19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, a int, x8 int, x9 text, x12 text)")
        c.execute("INSERT INTO t SELECT g, g, g, 'n' || g, 'v' || g FROM generate_series(1, 500) g")
    p = pg_pipeline(tmp_path, "shape19", postgres, db, ["public.t"])
    p.backfill()
    with streaming(p) as log:
        with postgres.connect(db) as c:
            c.execute("ALTER TABLE t DROP COLUMN x8")
            c.execute("ALTER TABLE t RENAME COLUMN x12 TO x13")
        wait_lake(lambda: _same(duck, postgres, db, p, "t", "public.t", ["id", "a", "x9", "x13"]), timeout=60)
    assert "reading it again" in log.text(), log.text()[-3000:]


def _same(duck, postgres, db, p, lake_table, source_table, cols):
    want = pg_rows(postgres, db, source_table, cols)
    got = lake_rows(duck, p, lake_table, cols)
    assert got == want, f"lake {len(got)} rows, source {len(want)}"


def test_table_dropped_and_created_again_while_stopped_is_read_again(tmp_path, postgres, duck):
    """Issue 19, 6: the table is dropped and re-created (with other rows) while the
    pipeline is stopped; changes to the old table wait in the slot. The restart reads the
    new table again: the lake equals it, none of the old rows stay."""
    db = postgres.create_db("recreate19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'old' || g FROM generate_series(1, 5000) g")
    p = pg_pipeline(tmp_path, "recreate19", postgres, db, ["public.t"])
    p.backfill()
    with postgres.connect(db) as c:
        c.execute("UPDATE t SET v = 'changed' WHERE id <= 100")
        c.execute("DROP TABLE t")
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'new' || g FROM generate_series(3000, 4000) g")
    _, err = p.backfill()
    assert "dropped and created again" in err, err[-3000:]
    assert_lake_equals_source(duck, postgres, db, p, "t", ["id", "v"])
    # While streaming: the poll of the tables' identities sees the new relation.
    with streaming(p) as log:
        with postgres.connect(db) as c:
            c.execute("DROP TABLE t")
            c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            c.execute("INSERT INTO t SELECT g, 'newer' || g FROM generate_series(1, 300) g")
        wait_lake(lambda: assert_lake_equals_source(duck, postgres, db, p, "t", ["id", "v"]), timeout=60)
    assert "now names another relation" in log.text() or "was dropped" in log.text(), log.text()[-3000:]


def test_values_iceberg_cannot_hold_become_null_and_are_counted(tmp_path, postgres, duck):
    """numeric NaN and ±infinity dates and timestamps, in the snapshot and in
    the stream, land as null with a warning; double precision keeps NaN and infinities;
    nothing stops."""
    db = postgres.create_db("nan19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, n numeric(10,2), d date, ts timestamp, "
                  "tz timestamptz, f double precision)")
        c.execute("INSERT INTO t VALUES (1, 'NaN', 'infinity', '-infinity', 'infinity', 'NaN'), "
                  "(2, 1.5, '2024-01-01', '2024-01-01 10:00', '2024-01-01 10:00+00', 'Infinity')")
    p = pg_pipeline(tmp_path, "nan19", postgres, db, ["public.t"])
    _, err = p.backfill()
    with postgres.connect(db) as c:
        # A numeric with a precision holds NaN but no infinity (PostgreSQL 14+).
        c.execute("INSERT INTO t VALUES (3, 'NaN', '-infinity', 'infinity', '-infinity', '-Infinity')")
        c.execute("UPDATE t SET n = 'NaN' WHERE id = 2")
    _, err2 = p.backfill()
    got = duck.execute(f"select id, n, d, ts, tz, f from {lake.scan(p.catalog_db, p.table('t'))} "
                       "order by id").fetchall()
    assert [r[0] for r in got] == [1, 2, 3], got
    # Row 1 and 3: every numeric/date/timestamp is null; row 2 keeps its date and times.
    assert all(v is None for r in (got[0], got[2]) for v in r[1:5]), got
    assert got[1][1] is None and None not in got[1][2:5], got
    f = [r[5] for r in got]
    assert f[0] != f[0] and f[1] == float("inf") and f[2] == float("-inf"), f
    assert "written as null" in err and "written as null" in err2, (err + err2)[-3000:]


def test_a_publication_without_truncate_is_refused(tmp_path, postgres):
    """A user's publication that leaves TRUNCATE out would keep every truncated row in the
    lake: the start stops, saying which statement fixes it."""
    db = postgres.create_db("pub19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("CREATE PUBLICATION mine FOR TABLE t WITH (publish = 'insert, update, delete')")
    p = pg_pipeline(tmp_path, "pub19", postgres, db, ["public.t"], publication="mine")
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "does not publish truncate" in r.stderr and "ALTER PUBLICATION" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("shape", ["(id, a)", "WHERE (id > 10)"])
def test_a_publication_with_a_column_list_or_row_filter_is_refused(tmp_path, postgres, shape):
    """A user's publication that publishes only some columns or rows of a table would
    leave the lake with nulls or without rows: the start stops, naming the table and the
    statements that publish it whole, and the pipeline runs once they are run."""
    name = "publist" if shape.startswith("(") else "pubfilter"
    db = postgres.create_db(name)
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b text)")
        c.execute("INSERT INTO t SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 20) g")
        c.execute(f"CREATE PUBLICATION mine FOR TABLE t {shape}")
    p = pg_pipeline(tmp_path, name, postgres, db, ["public.t"], publication="mine")
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    what = "a column list" if shape.startswith("(") else "the row filter WHERE (id > 10)"
    assert f'publishes "public"."t" with {what}' in r.stderr, r.stderr[-2000:]
    fix = ('BEGIN; ALTER PUBLICATION "mine" DROP TABLE "public"."t"; '
           'ALTER PUBLICATION "mine" ADD TABLE "public"."t"; COMMIT;')
    assert fix in r.stderr, r.stderr[-2000:]
    with postgres.connect(db) as c:
        c.execute(fix.replace("BEGIN; ", "").replace(" COMMIT;", ""))
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_truncate_of_one_routed_shard_keeps_the_others(tmp_path, postgres, duck):
    """Issue 19, 3: d2.s_1 and d2.s_2 routed into lake table s; TRUNCATE d2.s_1 empties
    s and reads d2.s_2 again, so s holds exactly s_2's rows and the changes after."""
    db = postgres.create_db("shards19")
    with postgres.connect(db) as c:
        c.execute("CREATE SCHEMA d2")
        for s in (1, 2):
            c.execute(f"CREATE TABLE d2.s_{s} (id int PRIMARY KEY, v text)")
            c.execute(f"INSERT INTO d2.s_{s} SELECT g * 2 + {s}, 's{s}' FROM generate_series(1, 100) g")
    p = pg_pipeline(tmp_path, "shards19", postgres, db, ["d2.s_*"])
    with open(p.file, "a") as f:
        f.write('\n[[route]]\nfrom = "d2.s_*"\nto = "s"\n')
    p.backfill()
    union = "(select id, v from d2.s_1 union all select id, v from d2.s_2) u"
    _same(duck, postgres, db, p, "s", union, ["id", "v"])
    with streaming(p) as log:
        with postgres.connect(db) as c:
            c.execute("TRUNCATE d2.s_1")
            c.execute("INSERT INTO d2.s_1 VALUES (1001, 'after')")
            c.execute("UPDATE d2.s_2 SET v = 'changed' WHERE id < 50")
        wait_lake(lambda: _same(duck, postgres, db, p, "s", union, ["id", "v"]), timeout=60)
    assert "its other source tables are read again" in log.text(), log.text()[-3000:]


def test_same_named_tables_of_two_schemas_need_a_route(tmp_path, postgres):
    """Two tables named t in two schemas would merge into lake table t without a word:
    a configuration error that says how to route them."""
    db = postgres.create_db("names19")
    with postgres.connect(db) as c:
        c.execute("CREATE SCHEMA a; CREATE SCHEMA b")
        c.execute("CREATE TABLE a.t (id int PRIMARY KEY); CREATE TABLE b.t (id int PRIMARY KEY)")
    p = Pipeline(tmp_path, "names19", {"type": "postgres", "url": postgres.url(db), "tables": ["*.t"]},
                 {"namespace": "pg"})
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "source tables a.t and b.t would both land in lake table t" in r.stderr, r.stderr[-2000:]
    assert "[[route]]" in r.stderr


def test_one_transaction_larger_than_the_key_index_lands_exactly(tmp_path, postgres, duck):
    """Issue 19, a huge transaction: a checkpoint cannot fall inside it, so the upsert
    writer's key index of that one checkpoint outgrows memory and goes to local disk in
    sorted runs. One transaction updates 600k rows, updates every 7th again (keys now in
    older runs), deletes every 11th, inserts 50k new rows and updates some of them; a
    `kill -9` while the runs are merged; the restart lands it exactly once. (The memory
    of a 10M-row transaction is measured in `integration/bench.sh postgres`.)"""
    db = postgres.create_db("bigtxn19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int, s text)")
        c.execute("INSERT INTO t SELECT g, 0, 'row' || g FROM generate_series(1, 600000) g")
    p = pg_pipeline(tmp_path, "bigtxn19", postgres, db, ["public.t"])
    p.backfill()
    with postgres.connect(db) as c:
        c.execute("UPDATE t SET v = 1")
        c.execute("UPDATE t SET v = 2, s = 'again' WHERE id % 7 = 0")
        c.execute("DELETE FROM t WHERE id % 11 = 0")
        c.execute("INSERT INTO t SELECT g, 3, 'new' || g FROM generate_series(600001, 650000) g")
        c.execute("UPDATE t SET v = 4 WHERE id > 640000 OR id % 13 = 0")
    run = start_run(p)
    log = Log(run)
    log.start()
    log.wait_for("merging the spilled key index", timeout=300)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    assert "the index goes to local disk" in log.text()
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "t", ["id", "v", "s"])
    # Nothing of the checkpoint is visible twice, and no data file keeps a dead row
    # that a delete does not cover: the row count DuckDB sees is the source's.
    got = duck.execute(f"select count(*), count(distinct id) from {lake.scan(p.catalog_db, p.table('t'))}").fetchone()
    assert got[0] == got[1] == len(pg_rows(postgres, db, "t", ["id"]))


def test_a_failed_pipeline_reports_the_wal_its_slot_holds(tmp_path, postgres):
    """Issue 19, repeating failures end: a pipeline that failed for good keeps its
    replication slot, whose WAL piles up until someone acts. While it stays failed, the
    daemon measures that WAL: `source_held_bytes` in /pipelines, the gauge
    `lakeshore_pipeline_source_held_bytes` in /metrics, and a warning; the other
    pipeline goes on."""
    from prometheus_client.parser import text_string_to_metric_families
    from test_daemon import Daemon, generator
    db = postgres.create_db("held19")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, a int)")
        c.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g")
    d = tmp_path / "pipelines"
    d.mkdir()
    pg_pipeline(d, "held19", postgres, db, ["public.t"])
    generator(d, "gen", rate=200)
    daemon = Daemon(d, [d])
    try:
        daemon.committing("held19")
        # One transaction: the WAL the slot must keep (written after the pipeline's last
        # confirmed position) is there before the change that fails the pipeline arrives,
        # so the first measurement already sees it (the next one is a minute later).
        with postgres.connect(db, autocommit=False) as c:
            c.execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS s FROM generate_series(1, 20000) g")
            c.execute("ALTER TABLE t ALTER COLUMN a TYPE text")
            c.execute("INSERT INTO t VALUES (1000, 'x')")
        daemon.wait(lambda: daemon.status()[0]["held19"]["phase"] == "failed", 60, "held19 fails")
        daemon.wait(lambda: (daemon.status()[0]["held19"]["source_held_bytes"] or 0) > 1_000_000, 30,
                    "the WAL the slot holds is reported")
        _, text = daemon.get("/metrics")
        held = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "lakeshore_pipeline_source_held_bytes" and s.labels.get("pipeline") == "held19"]
        assert held and held[0] > 1_000_000, held
        daemon.committing("gen")
        assert "its source holds" in daemon.log.read_text()
        # Issue 20: the connection without TLS is visible (field, gauge, warning).
        assert daemon.status()[0]["held19"]["source_transport"] == "plain"
        plain = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "lakeshore_source_transport" and s.labels.get("pipeline") == "held19"
                 and s.labels.get("transport") == "plain"]
        assert plain == [1.0], plain
        assert "the connection to the source is not encrypted" in daemon.log.read_text()
    finally:
        daemon.stop()


def test_a_stored_generated_column_is_refused_with_the_transform_that_keeps_it(tmp_path, postgres, duck):
    """A stored generated column is in the catalog and the snapshot, but pgoutput (before
    PostgreSQL 18) never sends it: changed rows would lose its value (and each shape
    check read the table again). The start stops, naming the column and the transform
    that computes it in the lake; with that transform the lake equals the source."""
    db = postgres.create_db("gen24")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED)")
        c.execute("INSERT INTO t (id, a) SELECT g, g FROM generate_series(1, 50) g")
    p = pg_pipeline(tmp_path, "gen24", postgres, db, ["public.t"])
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "table public.t, column g: a generated column" in r.stderr, r.stderr[-2000:]
    assert 'exclude = ["g"], and under [transform.compute] g = "(a * 2)"' in r.stderr, r.stderr[-2000:]
    with open(p.file, "a") as f:
        f.write('\n[[transform]]\ntables = "public.t"\nexclude = ["g"]\n[transform.compute]\ng = "(a * 2)"\n')
    p.backfill()
    with streaming(p) as log:
        with postgres.connect(db) as c:
            c.execute("UPDATE t SET a = a + 100 WHERE id <= 10")
            c.execute("INSERT INTO t (id, a) VALUES (51, 7)")
        wait_lake(lambda: _same(duck, postgres, db, p, "t", "public.t", ["id", "a", "g"]), timeout=30)
        time.sleep(11)  # past a shape check: the table is not read again
    again = [line for line in log.text().splitlines() if "reading it again" in line]
    assert not again, again
