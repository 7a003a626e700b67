"""PostgreSQL source against a real PostgreSQL 15: the lake (read by DuckDB) must equal the
source's own rows (read by psycopg), after snapshots, concurrent writes, kill -9 and server
restarts."""
import random
import signal
import threading
import time
from decimal import Decimal

import psycopg
import pytest

import lake
import conftest
from conftest import Pipeline, start_run

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE alltypes (
  id int PRIMARY KEY,
  c_smallint smallint, c_int int, c_bigint bigint, c_real real, c_double double precision,
  c_bool boolean, c_numeric numeric(12,2), c_numeric_big numeric(38,10), c_numeric_free numeric,
  c_text text, c_varchar varchar(20), c_char char(5), c_bytea bytea,
  c_date date, c_time time, c_ts timestamp, c_tstz timestamptz,
  c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb,
  c_int_array int[], c_text_array text[], c_enum mood, c_inet inet
);
"""

TYPES_ROWS = """
INSERT INTO alltypes VALUES
 ({o}+1, 1, 2, 3, 1.5, 2.25, true, 1234.56, 12345678901234567890.0123456789, 3.14159265358979,
  'plain', 'v', 'ab', '\\x00ff10', '2024-02-29', '13:14:15.123456', '2024-02-29 12:00:00.000001',
  '2024-02-29 12:00:00+02', '1 day 02:03:04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{{"a": 1}}', '{{"b": [1, 2]}}', '{{1,2,3}}', '{{"x y",NULL,"z"}}', 'happy', '10.0.0.1/8'),
 ({o}+2, -32768, -2147483648, -9223372036854775808, -0.1, -1e300, false, -0.50, -1.5, -0.000001,
  E'tab\\there\\nnew line \\\\ backslash ünïcödé ✓', '', 'abcde', '\\x', '1969-07-20', '00:00:00',
  '1900-01-01 00:00:00', '1970-01-01 00:00:00+00', '-3 months', '00000000-0000-0000-0000-000000000000',
  '[]', '{{}}', '{{}}', '{{}}', 'sad', '::1'),
 ({o}+3, 32767, 2147483647, 9223372036854775807, 'NaN', 'Infinity', NULL, 9999999999.99, 0, 1e20,
  repeat('long ', 2000), NULL, NULL, decode(repeat('ab', 3000), 'hex'), '0001-01-01', '23:59:59.999999',
  '2262-04-11 23:47:16.854775', '2100-12-31 23:59:59.999999-08', 'P1Y2M3DT4H5M6.5S', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 ({o}+4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""

# Columns compared as PostgreSQL's text form (they are strings in the lake; the arrays
# are lists, compared with psycopg's).
AS_TEXT = {"c_numeric_free", "c_interval", "c_uuid", "c_json", "c_jsonb", "c_enum", "c_inet"}


def pg_pipeline(tmp_path, name, server, db, tables, interval="300ms", **source):
    src = {"type": "postgres", "url": server.url(db), "tables": tables, **source}
    return Pipeline(tmp_path, name, src, {"namespace": "pg"}, interval=interval)


def columns_of(server, db, table):
    rows = server.execute(
        "select column_name from information_schema.columns where table_name = %s order by ordinal_position",
        db, (table,))
    return [r[0] for r in rows]


def norm(v):
    if isinstance(v, float) and v != v:
        return "NaN"
    if isinstance(v, memoryview):
        return bytes(v)
    return v


def pg_rows(server, db, table, columns, text=()):
    sel = ", ".join(f"{c}::text" if c in text else c for c in columns)
    with server.connect(db) as c:
        c.execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 3")
        return sorted((tuple(norm(v) for v in r) for r in c.execute(f"select {sel} from {table}").fetchall()),
                      key=repr)


def lake_rows(con, pipeline, table, columns):
    rel = pipeline.scan(table)
    rows = con.execute(f"select {', '.join(columns)} from {rel}").fetchall()
    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def assert_lake_equals_source(con, server, db, pipeline, table, columns, text=(), pg_columns=None):
    want = pg_rows(server, db, f"public.{table}", pg_columns or columns, text)
    got = lake_rows(con, pipeline, table, columns)
    assert len(got) == len(want), f"{table}: lake has {len(got)} rows, source {len(want)}"
    if got != want:
        diffs = [(columns[i], repr(a)[:80], repr(b)[:80])
                 for g, w in zip(got, want) for i, (a, b) in enumerate(zip(g, w)) if a != b]
        raise AssertionError(f"{table}: {len(diffs)} values differ (column, lake, source): {diffs[:8]}")


def test_snapshot_and_stream_of_every_mapped_type(tmp_path, postgres, duck):
    db = postgres.create_db("types")
    with postgres.connect(db) as c:
        c.execute(TYPES_DDL)
        c.execute(TYPES_ROWS.format(o=0))
    p = pg_pipeline(tmp_path, "types", postgres, db, ["public.alltypes"])
    p.backfill()
    cols = columns_of(postgres, db, "alltypes")
    # As the source's output functions print them (::text of inet always adds the mask)
    # and real widened exactly, as DuckDB hands the lake's float back.
    source_cols = [{"c_inet": "abbrev(c_inet)", "c_real": "c_real::float8"}.get(c, c) for c in cols]
    assert_lake_equals_source(duck, postgres, db, p, "alltypes", cols, text=AS_TEXT, pg_columns=source_cols)
    # The same values again, through the replication stream this time.
    with postgres.connect(db) as c:
        c.execute(TYPES_ROWS.format(o=10))
        c.execute("UPDATE alltypes SET c_text = c_text || '!' WHERE id IN (1, 12)")
        c.execute("DELETE FROM alltypes WHERE id = 2")
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "alltypes", cols, text=AS_TEXT, pg_columns=source_cols)
    # pyiceberg reads it too (so no equality deletes were written).
    assert len(lake.pyiceberg_table(p.catalog_db, p.warehouse, "pg.alltypes").scan().to_arrow()) == 7


ACCT_DDL = """
CREATE TABLE acct (id bigint PRIMARY KEY, k int NOT NULL, v varchar(40), amount numeric(12,2),
                   blob text, ts timestamptz DEFAULT now());
INSERT INTO acct SELECT g, g % 97, 'v' || g, g * 0.01, NULL, '2024-01-01'::timestamptz + g * interval '1 s'
FROM generate_series(1, {rows}) g;
"""
ACCT_COLUMNS = ["id", "k", "v", "amount", "md5(blob)", "ts"]


class Churn(conftest.Churn):
    """Random multi-statement transactions: inserts, updates (most leave the TOASTed blob
    unchanged), blob rewrites, deletes and key changes, until stopped. Survives server
    restarts (it reconnects)."""

    lost = (psycopg.OperationalError,)

    def blob(self):
        return "%x" % self.rng.getrandbits(8 * 4096) if self.rng.random() < 0.5 else None

    def step(self, cur):
        r = self.rng.random()
        some = self.rng.randrange(1, self.next_id)
        if r < 0.3:
            cur.execute("insert into acct (id, k, v, amount, blob) values (%s, %s, %s, %s, %s)",
                        (self.next_id, self.rng.randrange(100), "n%d" % self.next_id,
                         Decimal(self.rng.randrange(100000)) / 100, self.blob()))
            self.next_id += 1
        elif r < 0.7:
            cur.execute("update acct set amount = amount + 1, v = %s where id = %s", ("u%d" % self.txns, some))
        elif r < 0.8:
            cur.execute("update acct set blob = %s where id = %s", (self.blob(), some))
        elif r < 0.9:
            cur.execute("delete from acct where id = %s", (some,))
        else:
            cur.execute("update acct set id = %s where id = %s", (self.next_id, some))
            self.next_id += 1

    def transaction(self, conn):
        with conn.transaction():
            cur = conn.cursor()
            for _ in range(self.rng.randint(1, 5)):
                self.step(cur)



def setup_acct(server, name, rows):
    db = server.create_db(name)
    with server.connect(db) as c:
        c.execute(ACCT_DDL.format(rows=rows))
    return db


def test_snapshot_under_concurrent_writes_then_stream(tmp_path, postgres, duck):
    db = setup_acct(postgres, "churn", 30000)
    churn = Churn(postgres, db, 30001, seed=1)
    churn.start()
    p = pg_pipeline(tmp_path, "churn", postgres, db, ["public.acct"], chunk_size=1000)
    run = start_run(p)
    time.sleep(6)
    churn.stop()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    p.backfill()  # catches up with everything committed before it started
    assert_lake_equals_source(duck, postgres, db, p, "acct", ACCT_COLUMNS)


def test_kill_9_during_snapshot_and_streaming(tmp_path, postgres, duck):
    db = setup_acct(postgres, "crash", 400000)
    churn = Churn(postgres, db, 400001, seed=2)
    churn.start()
    p = pg_pipeline(tmp_path, "crash", postgres, db, ["public.acct"], chunk_size=500)
    logs = conftest.kill_during_snapshot_and_streaming(p)
    churn.stop()
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "acct", ACCT_COLUMNS)
    assert any("resuming" in log for log in logs[1:]), "no run resumed from a checkpoint"
    during_snapshot = sum("snapshot complete" not in log for log in logs)
    assert 2 <= during_snapshot < len(logs), f"{during_snapshot} of {len(logs)} kills landed during the snapshot"


REFILL = """
BEGIN;
UPDATE acct SET v = 'before truncate' WHERE id = 5;
TRUNCATE acct;
INSERT INTO acct SELECT g, g % 7, 'r{n}-' || g, g * 0.5, NULL, '2025-01-01' FROM generate_series(1, {rows}) g;
DELETE FROM acct WHERE id = 3;
COMMIT;
"""


class Log(threading.Thread):
    """Collects a process's stderr lines as they come."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []

    def run(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text, timeout=60):
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert time.time() < deadline and self.proc.poll() is None, "".join(self.lines)[-3000:]
            time.sleep(0.01)

    def text(self):
        self.join(timeout=30)
        return "".join(self.lines)


def test_truncate_during_snapshot_and_streaming(tmp_path, postgres, duck):
    """TRUNCATE (in a transaction that also writes before and after it) while the table's
    snapshot is being read, then again while streaming, with writes throughout and a
    kill -9 in the end: the lake holds exactly the source's rows."""
    db = setup_acct(postgres, "trunc", 500000)
    churn = Churn(postgres, db, 500001, seed=4)
    churn.start()
    p = pg_pipeline(tmp_path, "trunc", postgres, db, ["public.acct"], chunk_size=500)
    run = start_run(p)
    log = Log(run)
    log.start()
    log.wait_for("checkpoint committed")
    with postgres.connect(db) as c:
        c.execute(REFILL.format(n=1, rows=20000))
    log.wait_for("snapshot complete")
    time.sleep(2)
    with postgres.connect(db) as c:
        c.execute(REFILL.format(n=2, rows=30000))
    time.sleep(2)
    assert run.poll() is None, log.text()[-3000:]
    run.send_signal(signal.SIGKILL)
    run.wait()
    churn.stop()
    err = log.text()
    assert "resnapshot=true" in err, "the first TRUNCATE did not land during the snapshot"
    assert "resnapshot=false" in err, "the second TRUNCATE did not land while streaming"
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "acct", ACCT_COLUMNS)
    # pyiceberg reads the truncating snapshots the same way.
    count = postgres.execute("select count(*) from acct", db)[0][0]
    assert len(lake.pyiceberg_table(p.catalog_db, p.warehouse, "pg.acct").scan().to_arrow()) == count


def test_type_widening_follows_the_source(tmp_path, postgres, duck):
    """int → bigint (also of the key), real → double precision and numeric precision are
    widened in the lake, with rows changed before and after the ALTER in one checkpoint;
    a change Iceberg cannot follow stops the pipeline naming table and column."""
    import subprocess
    from conftest import BIN
    db = postgres.create_db("widen")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE w (id int PRIMARY KEY, n int, r real, d numeric(8,2), v text)")
        c.execute("INSERT INTO w SELECT g, g * 10, g / 4.0, g * 1.25, 'v' || g FROM generate_series(1, 3000) g")
    p = pg_pipeline(tmp_path, "widen", postgres, db, ["public.w"])
    p.backfill()
    cols = ["id", "n", "r", "d", "v"]
    run = start_run(p)
    log = Log(run)
    log.start()
    time.sleep(1)
    with postgres.connect(db) as c:
        c.execute("UPDATE w SET v = 'before' WHERE id <= 100")
        c.execute("ALTER TABLE w ALTER COLUMN id TYPE bigint, ALTER COLUMN n TYPE bigint, "
                  "ALTER COLUMN r TYPE double precision, ALTER COLUMN d TYPE numeric(14,2)")
        c.execute("UPDATE w SET v = 'after', n = 5000000000, r = r + 1e-9, d = 123456789012.34 "
                  "WHERE id <= 50 OR id BETWEEN 1000 AND 1010")
        c.execute("DELETE FROM w WHERE id BETWEEN 2000 AND 2100")
        c.execute("INSERT INTO w VALUES (9000000000, 1, 0.5, 1.5, 'big key')")
        c.execute("UPDATE w SET id = 8000000000 WHERE id = 7")
    log.wait_for("column type widened")
    time.sleep(1.5)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 0, log.text()[-3000:]
    assert "widening column types" in log.text()
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "w", cols)
    described = duck.execute(f"describe select * from {lake.scan(p.catalog_db, p.table('w'))}").fetchall()
    types = {r[0]: r[1] for r in described}
    assert types["id"] == "BIGINT" and types["r"] == "DOUBLE" and types["d"] == "DECIMAL(14,2)", types
    count = postgres.execute("select count(*) from w", db)[0][0]
    assert len(lake.pyiceberg_table(p.catalog_db, p.warehouse, "pg.w").scan().to_arrow()) == count
    # A narrowing or a change of kind cannot be followed.
    with postgres.connect(db) as c:
        c.execute("ALTER TABLE w ALTER COLUMN n TYPE text")
        c.execute("UPDATE w SET n = 'x' WHERE id = 1")
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "table public.w, column n: type change from long to string is not supported" in r.stderr, \
        r.stderr[-2000:]


def test_server_restart_during_streaming_and_slot_reuse(tmp_path, postgres, duck):
    db = setup_acct(postgres, "restart", 5000)
    churn = Churn(postgres, db, 5001, seed=3)
    p = pg_pipeline(tmp_path, "restart", postgres, db, ["public.acct"])
    p.backfill()
    churn.start()
    run = start_run(p)
    time.sleep(3)
    postgres.restart()
    time.sleep(5)
    churn.stop()
    time.sleep(2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=90)
    assert run.returncode == 0, err
    assert "restarting from its last checkpoint" in err
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "acct", ACCT_COLUMNS)
    # One slot, reused across every restart, and WAL released up to the last commit.
    slots = postgres.execute(
        "select slot_name, confirmed_flush_lsn >= (select max(lsn) from (select pg_current_wal_lsn() lsn) x) - 100000 "
        "from pg_replication_slots where database = %s", params=(db,))
    assert [s[0] for s in slots] == ["lakeshore_restart"], slots
    lag = postgres.execute(
        "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) from pg_replication_slots "
        "where slot_name = 'lakeshore_restart'")[0][0]
    assert lag < 1_000_000, f"slot still holds {lag} bytes of WAL after the last commit"


def validate_error(pipeline):
    """The message of `backfill`, which must equal the one `validate --connect` gives."""
    import subprocess
    from conftest import BIN
    r = subprocess.run([BIN, "backfill", str(pipeline.file)], cwd=pipeline.dir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    v = subprocess.run([BIN, "validate", "--connect", str(pipeline.file)], cwd=pipeline.dir, capture_output=True,
                       text=True, timeout=60)
    assert v.returncode == 2, v
    last = r.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert last in v.stderr, (last, v.stderr)
    return r.stderr


def test_validate_connect_reports_the_setup(tmp_path, postgres):
    import subprocess
    from conftest import BIN
    db = postgres.create_db("valid")
    postgres.execute("CREATE TABLE t (id int primary key, v text)", db)
    p = pg_pipeline(tmp_path, "valid", postgres, db, ["public.t"])
    r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=p.dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for line in ["wal_level=logical", "table public.t: 2 columns, key (id), replica identity default",
                 "publication lakeshore_valid does not exist; lakeshore will create it",
                 "slot lakeshore_valid does not exist; lakeshore will create it"]:
        assert line in r.stdout, r.stdout
    # validate changes nothing.
    assert postgres.execute("select count(*) from pg_replication_slots where slot_name = 'lakeshore_valid'")[0][0] == 0


def test_bad_setups_say_what_to_change(tmp_path, postgres):
    db = postgres.create_db("bad")
    postgres.execute("DROP ROLE IF EXISTS app")
    postgres.execute("CREATE ROLE app LOGIN REPLICATION PASSWORD 'right-password'")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE nokey (a int, b text)")
        c.execute("CREATE TABLE ok (id int primary key)")
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app")
    cases = [
        (postgres.url(db, "app", "wrong-password"), ["public.ok"],
         "PostgreSQL refused the login; check the user and password in [source] url"),
        (postgres.url(db), ["public.missing"], 'no table matches "public.missing"'),
        (postgres.url(db), ["public.nokey"], "table public.nokey has no primary key"),
        (f"postgres://postgres@127.0.0.1:{postgres.port + 1 if postgres.port < 65535 else 1}/{db}", ["public.ok"],
         "cannot reach PostgreSQL"),
    ]
    for i, (url, tables, message) in enumerate(cases):
        p = Pipeline(tmp_path / f"case{i}", f"bad{i}", {"type": "postgres", "url": url, "tables": tables},
                     {"namespace": "pg"}) if (tmp_path / f"case{i}").mkdir() is None else None
        err = validate_error(p)
        assert message in err, err
        assert "wrong-password" not in err and "right-password" not in err


def test_wal_level_replica_is_refused_with_the_fix():
    from conftest import PgServer
    server = PgServer(wal_level="replica")
    try:
        import tempfile
        from pathlib import Path
        d = Path(tempfile.mkdtemp())
        server.execute("CREATE TABLE t (id int primary key)")
        p = Pipeline(d, "replica", {"type": "postgres", "url": server.url(), "tables": ["public.t"]},
                     {"namespace": "pg"})
        err = validate_error(p)
        assert "wal_level=replica" in err and "ALTER SYSTEM SET wal_level = logical" in err, err
    finally:
        server.stop()


def test_tls_verify_full_and_what_a_wrong_setup_says(duck):
    """A server that accepts only TLS: snapshot and stream over verify-full (both the query
    connections and the replication connection), and a clear message for no TLS, a wrong
    CA, and a host name the certificate does not name."""
    import subprocess
    import tempfile
    from pathlib import Path
    from conftest import BIN, PgServer
    server = PgServer(tls=True)
    try:
        d = Path(tempfile.mkdtemp())
        server.execute("CREATE TABLE t (id int primary key, v text)")
        server.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g")
        base = f"postgres://postgres@localhost:{server.port}/postgres"

        def pipeline(name, query):
            return Pipeline(d, name, {"type": "postgres", "url": f"{base}?{query}", "tables": ["public.t"]},
                            {"namespace": "pg"})

        p = pipeline("tls", f"sslmode=verify-full&sslrootcert={server.ca}")
        _, err = p.backfill()
        assert "not encrypted" not in err and "not checked" not in err, err[-2000:]
        r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=d, capture_output=True,
                           text=True, timeout=60)
        assert "over TLS, certificate verified" in r.stdout, r.stdout
        server.execute("UPDATE t SET v = 'changed' WHERE id <= 10")
        server.execute("DELETE FROM t WHERE id > 400")
        p.backfill()
        got = duck.execute(f"select count(*), count(*) filter (where v = 'changed') "
                          f"from {lake.scan(p.catalog_db, p.table('t'))}").fetchone()
        assert got == (400, 10), got
        # TLS without a check of the certificate is a warning, and said by validate.
        unchecked = pipeline("unchecked", "sslmode=require")
        unchecked.file.write_text(unchecked.file.read_text().replace('namespace = "pg"', 'namespace = "pg2"'))
        _, err = unchecked.backfill()
        assert "the server's certificate is not checked" in err, err[-2000:]
        r = subprocess.run([BIN, "validate", "--connect", str(unchecked.file)], cwd=d, capture_output=True,
                           text=True, timeout=60)
        assert "certificate NOT verified" in r.stdout, r.stdout

        def error_of(name, query):
            r = subprocess.run([BIN, "validate", "--connect", str(pipeline(name, query).file)], cwd=d,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 2, r
            return r.stderr

        err = error_of("plain", "sslmode=disable")
        assert "accepts only TLS connections" in err and "sslmode=require" in err, err
        other_ca = d / "other-ca.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=other", "-keyout", str(d / "other.key"), "-out", str(other_ca)],
                       check=True, capture_output=True)
        err = error_of("wrongca", f"sslmode=verify-full&sslrootcert={other_ca}")
        assert "certificate did not verify" in err and "sslrootcert" in err, err
        assert "postgres://postgres@localhost" in err, err
        err = error_of("noca", "sslmode=verify-ca")
        assert "add &sslrootcert=" in err, err
    finally:
        server.stop()


KEYS_DDL = """
CREATE TABLE kv_text (k text PRIMARY KEY, v int);
CREATE TABLE kv_uuid (id uuid PRIMARY KEY, v int);
CREATE TABLE kv_comp (a varchar(20), b int, v int, PRIMARY KEY (a, b));
INSERT INTO kv_text SELECT w, g FROM generate_series(1, 3000) g,
  LATERAL (SELECT (ARRAY['Zebra', 'apple', 'Äpfel', 'éclair', 'a b', 'A', 'z''q', 'ß'])[1 + g % 8] || g AS w) x;
INSERT INTO kv_uuid SELECT md5(g::text)::uuid, g FROM generate_series(1, 3000) g;
INSERT INTO kv_comp SELECT (ARRAY['x', 'X', 'ü', 'y y'])[1 + g % 4], g / 4, g FROM generate_series(1, 3000) g;
"""


def test_text_uuid_and_composite_keys_under_writes(tmp_path, postgres, duck):
    """Chunks ordered by non-integer keys (byte order, COLLATE "C") while rows change in
    every range; the lake must equal the source afterwards."""
    # A linguistic collation, so that the server's default order is not byte order.
    db = postgres.create_db("keys", "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
    with postgres.connect(db) as c:
        c.execute(KEYS_DDL)
    halt = threading.Event()

    def writes():
        rng = random.Random(5)
        with postgres.connect(db) as c:
            n = 10000
            while not halt.is_set():
                with c.transaction():
                    g = rng.randrange(1, 3000)
                    c.execute("update kv_text set v = v + 1 where k = (select k from kv_text offset %s limit 1)", (g % 2000,))
                    c.execute("insert into kv_text values (%s, 0) on conflict do nothing", (f"Ñew{n}",))
                    c.execute("delete from kv_uuid where id = md5(%s::text)::uuid", (g,))
                    c.execute("insert into kv_uuid values (md5(%s::text)::uuid, 0) on conflict do nothing", (n,))
                    c.execute("update kv_comp set v = v + 1, b = b + 100000 where a = %s and b = %s",
                              (["x", "X", "ü", "y y"][g % 4], g // 4))
                n += 1
                time.sleep(0.002)

    t = threading.Thread(target=writes, daemon=True)
    t.start()
    p = pg_pipeline(tmp_path, "keys", postgres, db, ["public.kv_*"], chunk_size=100)
    run = start_run(p)
    time.sleep(4)
    halt.set()
    t.join()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "kv_text", ["k", "v"])
    assert_lake_equals_source(duck, postgres, db, p, "kv_uuid", ["id", "v"], text={"id"})
    assert_lake_equals_source(duck, postgres, db, p, "kv_comp", ["a", "b", "v"])


def test_snapshot_only_is_one_point_in_time(tmp_path, postgres, duck):
    """Transfers keep the balance total constant; a snapshot-only copy taken while they run
    must show that total (chunks from different moments would not)."""
    db = postgres.create_db("transfers")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL)")
        c.execute("INSERT INTO acct SELECT g, 1000 FROM generate_series(1, 200000) g")
    halt = threading.Event()
    moved = [0]

    def transfers():
        rng = random.Random(9)
        with postgres.connect(db) as c:
            while not halt.is_set():
                a, b = rng.randrange(1, 200001), rng.randrange(1, 200001)
                with c.transaction():
                    c.execute("update acct set balance = balance - 7 where id = %s", (a,))
                    c.execute("update acct set balance = balance + 7 where id = %s", (b,))
                moved[0] += 1

    t = threading.Thread(target=transfers, daemon=True)
    t.start()
    time.sleep(0.3)
    p = pg_pipeline(tmp_path, "transfers", postgres, db, ["public.acct"], chunk_size=500, startup="snapshot-only")
    p.backfill()
    halt.set()
    t.join()
    assert moved[0] > 20, "the transfers did not run during the snapshot"
    total, rows = lake.sql(duck, p.catalog_db, "select sum(balance), count(*) from {pg.acct}")[0]
    assert (total, rows) == (200000 * 1000, 200000)
    # No slot or publication for snapshot-only.
    assert postgres.execute("select count(*) from pg_replication_slots where slot_name = 'lakeshore_transfers'")[0][0] == 0
