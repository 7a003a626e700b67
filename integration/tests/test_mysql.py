"""MySQL source against a real MariaDB 10.11: the lake (read by DuckDB) must equal the
source's own rows (read by PyMySQL), after snapshots, concurrent writes and kill -9."""
import datetime
import random
import signal
import sqlite3
import threading
import time
from decimal import Decimal

import pymysql

import lake
import conftest
from conftest import Pipeline, start_run


def my_pipeline(tmp_path, name, server, tables, interval="300ms", **source):
    src = {"type": "mysql", "url": server.url(), "tables": tables, **source}
    return Pipeline(tmp_path, name, src, {"namespace": "my"}, interval=interval)


def norm(v):
    if isinstance(v, float) and v != v:
        return "NaN"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, datetime.datetime) and v.tzinfo is not None:
        return v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    if isinstance(v, datetime.timedelta):
        return v
    return v


def source_rows(server, db, sql):
    with server.connect(db) as c, c.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(sql)
        return sorted((tuple(norm(v) for v in r) for r in cur.fetchall()), key=repr)


def lake_rows(con, pipeline, table, columns):
    rel = lake.scan(pipeline.catalog_db, pipeline.table(table))
    rows = con.execute(f"select {', '.join(columns)} from {rel}").fetchall()
    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def assert_same(con, server, db, pipeline, table, columns, source_sql=None):
    want = source_rows(server, db, source_sql or f"select {', '.join(columns)} from {table}")
    got = lake_rows(con, pipeline, table, columns)
    assert len(got) == len(want), f"{table}: lake has {len(got)} rows, source {len(want)}"
    if got != want:
        diffs = [(columns[i], repr(a)[:80], repr(b)[:80])
                 for g, w in zip(got, want) for i, (a, b) in enumerate(zip(g, w)) if a != b]
        raise AssertionError(f"{table}: {len(diffs)} values differ (column, lake, source): {diffs[:8]}")


TYPES_DDL = """
CREATE TABLE alltypes (
  id int PRIMARY KEY,
  c_tiny tinyint, c_small smallint unsigned, c_medium mediumint, c_int int, c_uint int unsigned,
  c_big bigint, c_ubig bigint unsigned, c_dec decimal(12,2), c_float float, c_double double,
  c_bit bit(10), c_year year, c_char char(5), c_varchar varchar(40), c_text text,
  c_latin varchar(20) CHARACTER SET latin1, c_bin varbinary(16), c_blob blob,
  c_date date, c_dt datetime(6), c_ts timestamp(3) NULL DEFAULT NULL, c_json json,
  c_enum enum('sad','ok','happy'), c_set set('a','b','c'), c_time time(6)
)
"""

TYPES_ROWS = """
INSERT INTO alltypes VALUES
 ({o}+1, -128, 65535, -8388608, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
  -1234567890.12, 1.5, -2.25e-300, b'1010101010', 2024, 'ab', 'héllo ✓', repeat('long ', 500),
  'café', x'00ff10', x'deadbeef', '2024-02-29', '2024-02-29 12:34:56.123456', '2024-02-29 12:00:00.5',
  '{{"a": [1, 2]}}', 'happy', 'a,c', '-838:59:59.000000'),
 ({o}+2, 127, 0, 8388607, 2147483647, 0, 9223372036854775807, 0, 0.01, -0.0, 1e300, b'0', 1901, '', '',
  '', '', x'', x'', '1000-01-01', '1000-01-01 00:00:00', '1970-01-01 00:00:01', '[]', 'sad', '',
  '12:00:00.5'),
 ({o}+3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


def test_snapshot_and_binlog_of_the_mapped_types(tmp_path, mysql, duck):
    db = mysql.create_db("types")
    mysql.execute(TYPES_DDL, db)
    mysql.execute(TYPES_ROWS.format(o=0), db)
    p = my_pipeline(tmp_path, "types", mysql, ["types.alltypes"])
    p.backfill()
    # As the lake holds them: unsigned bigint as decimal(20,0), bit as its number, time
    # and enum/set and json as text.
    lake_cols = ["id", "c_tiny", "c_small", "c_medium", "c_int", "c_uint", "c_big", "c_ubig", "c_dec",
                 "c_float", "c_double", "c_bit", "c_year", "c_char", "c_varchar", "c_text", "c_latin",
                 "c_bin", "c_blob", "c_date", "c_dt", "c_ts", "c_enum", "c_set", "c_time"]
    src = ("select id, c_tiny, c_small, c_medium, c_int, c_uint, c_big, cast(c_ubig as decimal(20,0)), c_dec, "
           "c_float, c_double, c_bit + 0, c_year, c_char, c_varchar, c_text, c_latin, c_bin, c_blob, c_date, c_dt, "
           "c_ts, cast(c_enum as char), cast(c_set as char), cast(c_time as char) from alltypes")
    assert_same(duck, mysql, "types", p, "alltypes", lake_cols, src)
    # The same values again, through the binlog this time.
    mysql.execute(TYPES_ROWS.format(o=10), db)
    mysql.execute("UPDATE alltypes SET c_varchar = concat(c_varchar, '!') WHERE id IN (1, 12)", db)
    mysql.execute("DELETE FROM alltypes WHERE id = 2", db)
    p.backfill()
    assert_same(duck, mysql, "types", p, "alltypes", lake_cols, src)
    # JSON as text, compared as JSON values.
    import json
    got = {r[0]: json.loads(r[1]) if r[1] else None for r in duck.execute(
        f"select id, c_json from {lake.scan(p.catalog_db, p.table('alltypes'))}").fetchall()}
    want = {r[0]: json.loads(r[1]) if r[1] else None for r in mysql.execute("select id, c_json from alltypes", db)}
    assert got == want


ACCT_DDL = """
CREATE TABLE acct (id bigint PRIMARY KEY, k int NOT NULL, v varchar(40), amount decimal(12,2),
                   blob_ mediumtext, ts datetime(6))
"""
ACCT_COLUMNS = ["id", "k", "v", "amount", "md5(blob_)", "ts"]


class Churn(conftest.Churn):
    """Random multi-statement transactions: inserts, updates, deletes and key changes,
    until stopped. Survives server restarts (it reconnects)."""

    lost = (pymysql.err.OperationalError,)

    def step(self, cur):
        r = self.rng.random()
        some = self.rng.randrange(1, self.next_id)
        if r < 0.3:
            cur.execute("insert into acct values (%s, %s, %s, %s, %s, now(6))",
                        (self.next_id, self.rng.randrange(100), "n%d" % self.next_id,
                         Decimal(self.rng.randrange(100000)) / 100, "x" * self.rng.randrange(3000)))
            self.next_id += 1
        elif r < 0.75:
            cur.execute("update acct set amount = amount + 1, v = %s where id = %s", ("u%d" % self.txns, some))
        elif r < 0.9:
            cur.execute("delete from acct where id = %s", (some,))
        else:
            cur.execute("update acct set id = %s where id = %s", (self.next_id, some))
            self.next_id += 1

    def transaction(self, conn):
        with conn.cursor() as cur:
            for _ in range(self.rng.randint(1, 5)):
                self.step(cur)
        conn.commit()


def setup_acct(server, name, rows):
    db = server.create_db(name)
    server.execute(ACCT_DDL, db)
    server.execute(f"""INSERT INTO acct SELECT seq, seq % 97, concat('v', seq), seq * 0.01, NULL,
                       '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows}""", db)
    return db



def test_snapshot_under_concurrent_writes_then_binlog(tmp_path, mysql, duck):
    db = setup_acct(mysql, "churn", 30000)
    churn = Churn(mysql, db, 30001, seed=1)
    churn.start()
    p = my_pipeline(tmp_path, "churn", mysql, ["churn.acct"], chunk_size=1000)
    run = start_run(p)
    time.sleep(6)
    churn.stop()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "snapshot complete" in err
    p.backfill()  # catches up with everything committed before it started
    assert_same(duck, mysql, db, p, "acct", ACCT_COLUMNS)


def test_kill_9_during_snapshot_and_streaming(tmp_path, mysql, duck):
    db = setup_acct(mysql, "crash", 300000)
    churn = Churn(mysql, db, 300001, seed=2)
    churn.start()
    p = my_pipeline(tmp_path, "crash", mysql, ["crash.acct"], chunk_size=500)
    logs = conftest.kill_during_snapshot_and_streaming(p)
    churn.stop()
    p.backfill()
    assert_same(duck, mysql, db, p, "acct", ACCT_COLUMNS)
    assert any("resuming" in log for log in logs[1:]), "no run resumed from a checkpoint"
    during_snapshot = sum("snapshot complete" not in log for log in logs)
    assert 2 <= during_snapshot < len(logs), f"{during_snapshot} of {len(logs)} kills landed during the snapshot"


def test_shards_routed_into_one_table_with_add_column_and_rotations(tmp_path, mysql, duck):
    """shop.orders_0..3 land in one lake table; ALTER TABLE ADD COLUMN mid-stream shows
    the column (older rows null); FLUSH BINARY LOGS between changes loses nothing."""
    db = mysql.create_db("shop")
    for s in range(4):
        mysql.execute(f"CREATE TABLE orders_{s} (id bigint PRIMARY KEY, amount decimal(10,2), note varchar(20))", db)
        mysql.execute(f"INSERT INTO orders_{s} SELECT seq * 4 + {s}, seq, 'n' FROM seq_0_to_999", db)
    p = my_pipeline(tmp_path, "shop", mysql, ["shop.orders_*"])
    with open(p.file, "a") as f:
        f.write('\n[[route]]\nfrom = "shop.orders_*"\nto = "orders"\n')
    p.backfill()
    union = " union all ".join(f"select id, amount, note from orders_{s}" for s in range(4))
    assert_same(duck, mysql, db, p, "orders", ["id", "amount", "note"], union)
    run = start_run(p)
    time.sleep(1.5)
    for s in range(4):
        mysql.execute(f"UPDATE orders_{s} SET amount = amount + 1 WHERE id % 10 = 1", db)
        mysql.execute("FLUSH BINARY LOGS")
    mysql.execute("ALTER TABLE orders_2 ADD COLUMN extra varchar(10)", db)
    mysql.execute("INSERT INTO orders_2 VALUES (100002, 5, 'new', 'x')", db)
    mysql.execute("UPDATE orders_2 SET extra = 'y' WHERE id = 6", db)
    mysql.execute("DELETE FROM orders_1 WHERE id < 100", db)
    mysql.execute("FLUSH BINARY LOGS")
    time.sleep(2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "columns added" in err, err[-2000:]
    p.backfill()
    union = " union all ".join(
        f"select id, amount, note, {'extra' if s == 2 else 'NULL'} from orders_{s}" for s in range(4))
    assert_same(duck, mysql, db, p, "orders", ["id", "amount", "note", "extra"], union)


def test_server_restart_during_streaming(tmp_path, mysql, duck):
    db = setup_acct(mysql, "restart", 5000)
    churn = Churn(mysql, db, 5001, seed=3)
    p = my_pipeline(tmp_path, "restart", mysql, ["restart.acct"])
    p.backfill()
    churn.start()
    run = start_run(p)
    time.sleep(3)
    mysql.restart()
    time.sleep(5)
    churn.stop()
    time.sleep(2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=90)
    assert run.returncode == 0, err
    assert "restarting from its last checkpoint" in err
    p.backfill()
    assert_same(duck, mysql, db, p, "acct", ACCT_COLUMNS)


def run_error(pipeline, *args):
    import subprocess
    from conftest import BIN
    r = subprocess.run([BIN, *args, str(pipeline.file)], cwd=pipeline.dir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0, r
    return r.stderr


def test_validate_and_bad_setups_say_what_to_change(tmp_path, mysql):
    import subprocess
    from conftest import BIN
    db = mysql.create_db("valid")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", db)
    mysql.execute("CREATE TABLE nokey (v int, UNIQUE KEY (v))", db)  # a nullable unique index is no key
    p = my_pipeline(tmp_path, "valid", mysql, ["valid.t"])
    r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=p.dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "table valid.t: 2 columns, key (id)" in r.stdout and "binlog_format=ROW" in r.stdout, r.stdout
    mysql.execute("DROP USER IF EXISTS 'weak'@'%'")
    mysql.execute("CREATE USER 'weak'@'%' IDENTIFIED BY 'pw'")
    mysql.execute("GRANT SELECT ON valid.* TO 'weak'@'%'")
    cases = [
        ({"url": mysql.url(user="weak", password="wrong")}, "refused the login"),
        ({"url": mysql.url(user="weak", password="pw")}, "lacks REPLICATION SLAVE"),
        ({"tables": ["valid.missing"]}, "no table matches \"valid.missing\""),
        ({"tables": ["valid.nokey"]},
         "table valid.nokey has no primary key and no unique index on NOT NULL columns; add one "
         "(ALTER TABLE `valid`.`nokey` ADD PRIMARY KEY"),
    ]
    for i, (change, message) in enumerate(cases):
        src = {"type": "mysql", "url": mysql.url(), "tables": ["valid.t"], **change}
        bad = Pipeline(tmp_path, f"bad{i}", src, {"namespace": "my"})
        err = run_error(bad, "validate", "--connect")
        assert message in err, (message, err)
        assert "pw" not in err.replace("pwd", "")  # the password never shows
    # How snapshots will be placed: between watermarks, and what a user needs for them.
    mysql.execute("DROP USER IF EXISTS 'repl'@'%'")
    mysql.execute("CREATE USER 'repl'@'%' IDENTIFIED BY 'pw'")
    mysql.execute("GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'repl'@'%'")
    for name, url, want, ok in [
        ("wm_root", mysql.url(), "snapshot: chunks read between watermarks written to valid.marks "
                                 "(created at the first snapshot)", True),
        ("wm_weak", mysql.url(user="repl", password="pw"),
         "the user lacks INSERT, UPDATE, CREATE on it: GRANT INSERT, UPDATE, CREATE ON `valid`.`marks`", False),
    ]:
        src = {"type": "mysql", "url": url, "tables": ["valid.t"], "snapshot_watermarks": "valid.marks"}
        wm = Pipeline(tmp_path, name, src, {"namespace": "my"})
        r = subprocess.run([BIN, "validate", "--connect", str(wm.file)], cwd=wm.dir, capture_output=True, text=True)
        assert (r.returncode == 0) == ok and want in (r.stdout + r.stderr), (r.stdout, r.stderr)
        assert "binlog_row_metadata=FULL" in r.stdout or not ok, r.stdout


def test_tls_verify_identity_and_what_a_wrong_setup_says(duck):
    """A server that accepts only TLS over TCP: snapshot and binlog over verify_identity, and
    a clear message for no TLS and for a wrong CA."""
    import subprocess
    import tempfile
    from pathlib import Path
    from conftest import BIN
    from myserver import MyServer
    server = MyServer(tls=True)
    try:
        d = Path(tempfile.mkdtemp())
        server.create_db("s")
        server.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", "s")
        server.execute("INSERT INTO t SELECT seq, concat('v', seq) FROM seq_1_to_500", "s")
        base = f"mysql://root@localhost:{server.port}"

        def pipeline(name, query):
            src = {"type": "mysql", "url": f"{base}?{query}", "tables": ["s.t"]}
            return Pipeline(d, name, src, {"namespace": "my"})

        p = pipeline("tls", f"ssl-mode=verify_identity&ssl-ca={server.ca}")
        p.backfill()
        server.execute("UPDATE t SET v = 'changed' WHERE id <= 10", "s")
        server.execute("DELETE FROM t WHERE id > 400", "s")
        p.backfill()
        got = duck.execute(f"select count(*), count(*) filter (where v = 'changed') "
                           f"from {lake.scan(p.catalog_db, p.table('t'))}").fetchone()
        assert got == (400, 10), got
        r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=d, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "over TLS (TLSv1." in r.stdout, r.stdout
        assert "certificate verified" in r.stdout, r.stdout
        unchecked = pipeline("unchecked", "ssl-mode=required")
        unchecked.file.write_text(unchecked.file.read_text().replace('namespace = "my"', 'namespace = "my2"'))
        _, err = unchecked.backfill()
        assert "the server's certificate is not checked" in err, err[-2000:]

        err = run_error(pipeline("plain", "ssl-mode=disabled"), "validate", "--connect")
        assert "accepts only TLS connections" in err and "ssl-mode=verify_identity" in err, err
        assert "refused the login" in err, err  # MariaDB says so; both causes are named
        other = d / "other"
        subprocess.run([str(conftest.ROOT / "integration" / "tls-certs.sh"), str(other)], check=True)
        err = run_error(pipeline("wrongca", f"ssl-mode=verify_ca&ssl-ca={other}/ca.pem"),
                        "validate", "--connect")
        assert "did not verify" in err and "ssl-ca" in err and base in err, err
    finally:
        server.stop()


def test_statement_binlog_is_refused_with_the_fix():
    from myserver import MyServer
    server = MyServer(binlog_format="STATEMENT")
    try:
        import tempfile
        from pathlib import Path
        d = Path(tempfile.mkdtemp())
        server.execute("CREATE DATABASE s")
        server.execute("CREATE TABLE s.t (id int primary key)")
        p = Pipeline(d, "stmt", {"type": "mysql", "url": server.url(), "tables": ["s.t"]}, {"namespace": "my"})
        for args in (["backfill"], ["validate", "--connect"]):
            err = run_error(p, *args)
            assert "binlog_format=STATEMENT, lakeshore needs ROW" in err, err
    finally:
        server.stop()


def test_purged_binlog_says_a_new_snapshot_is_needed(tmp_path, mysql):
    db = mysql.create_db("purged")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, v int)", db)
    mysql.execute("INSERT INTO t VALUES (1, 1)", db)
    p = my_pipeline(tmp_path, "purged", mysql, ["purged.t"])
    p.backfill()
    mysql.execute("INSERT INTO t VALUES (2, 2)", db)
    first = mysql.execute("SHOW MASTER STATUS")[0][0]
    # MariaDB keeps a binlog until its binlog checkpoint moved on: rotate and retry.
    for _ in range(50):
        mysql.execute("FLUSH BINARY LOGS")
        current = mysql.execute("SHOW MASTER STATUS")[0][0]
        mysql.execute(f"PURGE BINARY LOGS TO '{current}'")
        if first not in [r[0] for r in mysql.execute("SHOW BINARY LOGS")]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{first} was never purged")
    err = run_error(p, "backfill")
    assert "no longer has the binlog" in err and "new snapshot" in err, err[-2000:]


def test_geometry_and_zero_dates(tmp_path, mysql, duck):
    db = mysql.create_db("odd")
    mysql.execute("CREATE TABLE g (id int PRIMARY KEY, shape geometry, d date, dt datetime)", db)
    with mysql.connect(db) as c, c.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute("INSERT INTO g VALUES (1, ST_GeomFromText('POINT(1 2)'), '0000-00-00', '2024-01-00 00:00:00'), "
                    "(2, NULL, '2024-05-06', NULL)")
    p = my_pipeline(tmp_path, "odd", mysql, ["odd.g"])
    _, err = p.backfill()
    assert "zero dates read as null" in err, err[-2000:]
    with mysql.connect(db) as c, c.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")
        cur.execute("INSERT INTO g VALUES (3, ST_GeomFromText('LINESTRING(0 0, 1 1)'), '0000-00-00', NULL)")
    p.backfill()
    got = sorted(duck.execute(f"select id, shape, d, dt from {lake.scan(p.catalog_db, p.table('g'))}").fetchall())
    want = sorted((r[0], bytes(r[1]) if r[1] is not None else None, r[2], r[3]) for r in mysql.execute(
        "select id, ST_AsWKB(shape), nullif(d, '0000-00-00'), if(dayofmonth(dt) = 0, NULL, dt) from g", db))
    assert [(r[0], bytes(r[1]) if r[1] is not None else None, r[2], r[3]) for r in got] == want


def test_mariadb_uuid_and_inet_types_read_as_the_server_prints_them(tmp_path, mysql, duck):
    """UUID, INET4 and INET6 are stored in their own binary forms; snapshot and binlog must
    both give the text the server prints. A UUID key is refused with the column named (the
    server orders UUIDs in its own way)."""
    db = mysql.create_db("net")
    mysql.execute("CREATE TABLE n (id int PRIMARY KEY, u uuid, v4 inet4, v6 inet6, w int)", db)
    rows = ", ".join(f"({i}, uuid(), '10.{i // 256}.{i % 256}.1', '2001:db8::{i:x}', {i})" for i in range(300))
    mysql.execute(f"INSERT INTO n VALUES {rows}", db)
    mysql.execute("INSERT INTO n VALUES (1000, '00000000-0000-0000-0000-000000000001', '0.0.0.0', '::', 0), "
                  "(1001, 'ffffffff-ffff-ffff-ffff-fffffffffff0', '255.255.255.255', '::ffff:1.2.3.4', NULL)", db)
    p = my_pipeline(tmp_path, "net", mysql, ["net.n"], chunk_size=100)
    p.backfill()
    mysql.execute("UPDATE n SET v4 = '192.168.1.1', u = uuid(), w = -w WHERE w % 3 = 0", db)
    mysql.execute("DELETE FROM n WHERE w % 7 = 1", db)
    mysql.execute("INSERT INTO n VALUES (2000, uuid(), '1.1.1.1', 'fe80::1', 1000), "
                  "(2001, '12345678-9abc-4ef0-9234-56789abcdef0', NULL, NULL, 1001)", db)
    p.backfill()
    cols = ["id", "cast(u as char)", "cast(v4 as char)", "cast(v6 as char)", "w"]
    want = source_rows(mysql, db, f"select {', '.join(cols)} from n")
    got = lake_rows(duck, p, "n", ["id", "u", "v4", "v6", "w"])
    assert got == want, [(g, w) for g, w in zip(got, want) if g != w][:5]
    mysql.execute("CREATE TABLE uk (id uuid PRIMARY KEY)", db)
    err = run_error(my_pipeline(tmp_path, "uk", mysql, ["net.uk"]), "backfill")
    assert "table net.uk, key column id: keys of type uuid are not supported" in err, err


def test_start_from_a_gtid_or_a_binlog_position(tmp_path, mysql, duck):
    """startup = { gtid = ... } and { file = ..., position = ... }: no snapshot, exactly
    the changes after that point."""
    db = mysql.create_db("startat")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, v int)", db)
    mysql.execute("INSERT INTO t VALUES (1, 1), (2, 2)", db)
    with mysql.connect(db) as c, c.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT @@gtid_binlog_pos")
        gtid = cur.fetchone()[0]
    mysql.execute("INSERT INTO t VALUES (3, 3)", db)
    mysql.execute("UPDATE t SET v = 20 WHERE id = 2", db)
    mysql.execute("DELETE FROM t WHERE id = 3", db)
    mysql.execute("INSERT INTO t VALUES (4, 4)", db)
    for name, start in [("bygtid", f'{{ gtid = "{gtid}" }}'), ("byfile", f'{{ file = "{file}", position = {pos} }}')]:
        (tmp_path / name).mkdir()
        p = my_pipeline(tmp_path / name, name, mysql, ["startat.t"])
        text = p.file.read_text().replace('[source]\n', f'[source]\nstartup = {start}\n')
        p.file.write_text(text)
        _, err = p.backfill()
        got = sorted(duck.execute(f"select id, v from {lake.scan(p.catalog_db, p.table('t'))}").fetchall())
        # Row 1 was never changed after the start point; row 2's update has no before row
        # in the lake (upsert), row 3 came and went.
        assert got == [(2, 20), (4, 4)], (name, got, err[-1500:])
    # A GTID with nothing after it: the bounded run ends at the binlog's end (the server's
    # heartbeat says everything was sent) instead of waiting for a transaction.
    with mysql.connect(db) as c, c.cursor() as cur:
        cur.execute("SELECT @@gtid_binlog_pos")
        end = cur.fetchone()[0]
    (tmp_path / "atend").mkdir()
    p = my_pipeline(tmp_path / "atend", "atend", mysql, ["startat.t"])
    p.file.write_text(p.file.read_text().replace('[source]\n', f'[source]\nstartup = {{ gtid = "{end}" }}\n'))
    run = p.start()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]


def test_a_bad_startup_says_what_to_write(tmp_path, mysql):
    p = my_pipeline(tmp_path, "badstart", mysql, ["x.t"])
    p.file.write_text(p.file.read_text().replace('[source]\n', '[source]\nstartup = { gtid = "zero" }\n'))
    err = run_error(p, "validate")
    assert 'write startup = "snapshot", "latest", "snapshot-only", { gtid = "0-1-100" }' in err, err
    assert "badstart.toml:" in err, err
    # A MySQL GTID set given to MariaDB: the message says which form this server takes.
    db = mysql.create_db("flavour")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY)", db)
    p = my_pipeline(tmp_path, "flavour", mysql, ["flavour.t"])
    gtid = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-100"
    p.file.write_text(p.file.read_text().replace('[source]\n', f'[source]\nstartup = {{ gtid = "{gtid}" }}\n'))
    err = run_error(p, "backfill")
    assert "is the other server flavour's GTID; this server needs MariaDB's" in err, err


def test_created_tables_join_and_renames_stop_with_a_message(tmp_path, mysql, duck):
    """A CREATE TABLE the filter names joins the running pipeline with its snapshot; a
    RENAME of a replicated table stops it, naming the table."""
    db = mysql.create_db("grow")
    mysql.execute("CREATE TABLE a (id int PRIMARY KEY, v int)", db)
    mysql.execute("INSERT INTO a SELECT seq, seq FROM seq_1_to_100", db)
    p = my_pipeline(tmp_path, "grow", mysql, ["grow.*"])
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("CREATE TABLE b (id int PRIMARY KEY, w varchar(10))", db)
    mysql.execute("INSERT INTO b SELECT seq, concat('w', seq) FROM seq_1_to_500", db)
    mysql.execute("UPDATE b SET w = 'changed' WHERE id <= 10", db)
    mysql.execute("INSERT INTO a VALUES (1000, 1000)", db)
    time.sleep(4)
    assert run.poll() is None, run.communicate()[1][-3000:]
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    assert "table grow.b was created; restarting to add it" in err, err[-3000:]
    assert_same(duck, mysql, db, p, "a", ["id", "v"])
    assert_same(duck, mysql, db, p, "b", ["id", "w"])
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("RENAME TABLE a TO a_old", db)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0
    assert "table grow.a was renamed (RENAME TABLE a TO a_old); lakeshore does not follow renames" in err, \
        err[-2000:]


def test_a_table_without_a_primary_key_is_keyed_by_its_unique_index(tmp_path, mysql, duck):
    """No primary key, a unique index on NOT NULL columns (and a unique index on a
    nullable column, which is no key): the table is keyed by the former through the
    snapshot in chunks, updates, a key change, deletes and a kill -9."""
    from test_correctness_mysql import wait_lake  # imports this module
    db = mysql.create_db("uniq")
    mysql.execute("CREATE TABLE u (a int NOT NULL, b int NOT NULL, c int, v varchar(20), "
                  "UNIQUE KEY c_first (c), UNIQUE KEY zz (a, b))", db)
    mysql.execute("INSERT INTO u (a, b, c, v) VALUES " + ", ".join(
        f"({i % 50}, {i // 50}, {i if i % 3 else 'NULL'}, 'v{i}')" for i in range(2000)), db)
    cols = ["a", "b", "c", "v"]
    p = my_pipeline(tmp_path, "uniq", mysql, ["uniq.u"], chunk_size=300)
    p.backfill()
    assert_same(duck, mysql, db, p, "u", cols)
    schema = p.pyiceberg_table("u").schema()
    key = sorted(schema.find_field(i).name for i in schema.identifier_field_ids)
    assert key == ["a", "b"], key
    run = start_run(p)
    time.sleep(2)
    mysql.execute("UPDATE u SET v = 'x' WHERE a = 1", db)
    mysql.execute("UPDATE u SET b = b + 1000 WHERE a = 2", db)  # key changes
    mysql.execute("DELETE FROM u WHERE a = 3", db)
    mysql.execute("INSERT INTO u (a, b, c, v) VALUES (7, 7000, NULL, 'new')", db)
    wait_lake(lambda: assert_same(duck, mysql, db, p, "u", cols))
    for k in range(30):
        mysql.execute(f"UPDATE u SET v = 'k{k}' WHERE a = {10 + k % 5} AND b = {k}", db)
        if k == 15:
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
    run = start_run(p)
    wait_lake(lambda: assert_same(duck, mysql, db, p, "u", cols), timeout=60)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]


def test_snapshot_between_watermarks_with_hot_rows_and_kill_9(tmp_path, mysql, duck):
    """The watermark path (MySQL 8's only lock-free snapshot) on MariaDB: rows updated
    all the time in every chunk, churn, kill -9 during snapshot and streaming; the lake
    equals the source and the watermark table stays out of the lake."""
    db = setup_acct(mysql, "wmark", 60000)
    churn = Churn(mysql, db, 60001, seed=11)
    churn.start()
    stop = threading.Event()

    def hot():
        conn = mysql.connect(db)
        n = 0
        while not stop.is_set():
            with conn.cursor() as cur:
                # A row in nearly every 500-row chunk, again and again.
                cur.execute("update acct set v = %s, amount = amount + 1 where id %% 499 = %s",
                            ("hot%d" % n, n % 7))
            conn.commit()
            n += 1
        conn.close()

    t = threading.Thread(target=hot, daemon=True)
    t.start()
    p = my_pipeline(tmp_path, "wmark", mysql, ["wmark.*"], chunk_size=500,
                    snapshot_watermarks="wmark.lakeshore_watermarks")
    rng = random.Random(11)
    try:
        for _ in range(4):
            run = start_run(p)
            time.sleep(rng.uniform(1.0, 2.5))
            assert run.poll() is None, run.communicate()[1]
            run.send_signal(signal.SIGKILL)
            run.communicate()
    finally:
        stop.set()
        t.join()
        churn.stop()
    p.backfill()
    assert_same(duck, mysql, db, p, "acct", ACCT_COLUMNS)
    # One row per pipeline, last written by a chunk's high watermark.
    marks = mysql.execute("select mark from lakeshore_watermarks", db)
    assert len(marks) == 1 and "-H" in marks[0][0], marks
    with sqlite3.connect(p.catalog_db) as c:
        lake_tables = [r[0] for r in c.execute("select table_name from iceberg_tables")]
    assert lake_tables == ["acct"], lake_tables


def test_a_watermark_table_that_cannot_be_created_says_what_to_set(tmp_path, mysql):
    db = mysql.create_db("wmbad")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY)", db)
    mysql.execute("INSERT INTO t VALUES (1)", db)
    p = my_pipeline(tmp_path, "wmbad", mysql, ["wmbad.t"], snapshot_watermarks="no_such_db.marks")
    run = p.start()
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0
    assert "snapshot_watermarks" in err and "no_such_db" in err, err


def test_snapshot_only_reads_with_select_alone(tmp_path, mysql, duck):
    """startup = "snapshot-only" places no chunk in a binlog: plain chunk reads, which any
    server allows (MySQL needs neither binlog_snapshot_* nor snapshot_watermarks), by a
    user that may only SELECT (no REPLICATION grant, no binlog access)."""
    db = setup_acct(mysql, "sonly", 5000)
    mysql.execute("CREATE USER IF NOT EXISTS 'selector'@'127.0.0.1' IDENTIFIED BY 'pw'")
    mysql.execute(f"GRANT SELECT ON `{db}`.* TO 'selector'@'127.0.0.1'")
    p = my_pipeline(tmp_path, "sonly", mysql, ["sonly.acct"], chunk_size=700, startup="snapshot-only",
                    url=mysql.url(user="selector", password="pw"))
    _, err = p.backfill()
    assert "snapshot complete" in err, err[-3000:]
    assert_same(duck, mysql, db, p, "acct", ACCT_COLUMNS)


def test_savepoints_xa_and_compressed_events(tmp_path, mysql, duck):
    """A transaction with savepoints lands as one (its rolled-back part never logged); an XA
    transaction and MariaDB's compressed binlog events (log_bin_compress) stop the
    pipeline naming them instead of being skipped."""
    db = mysql.create_db("spx")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", db)
    mysql.execute("INSERT INTO t VALUES (1, 'one')", db)
    p = my_pipeline(tmp_path, "spx", mysql, ["spx.t"])
    run = start_run(p)
    time.sleep(3)
    with mysql.connect(db, autocommit=False) as c, c.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2, 'two')")
        cur.execute("SAVEPOINT s1")
        cur.execute("INSERT INTO t VALUES (3, 'rolled back')")
        cur.execute("UPDATE t SET v = 'rolled back too' WHERE id = 1")
        cur.execute("ROLLBACK TO SAVEPOINT s1")
        cur.execute("SAVEPOINT s2")
        cur.execute("UPDATE t SET v = 'kept' WHERE id = 2")
        cur.execute("RELEASE SAVEPOINT s2")
        c.commit()
    time.sleep(3)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    assert_same(duck, mysql, db, p, "t", ["id", "v"])
    assert sorted(mysql.execute("SELECT id, v FROM t", db)) == [(1, "one"), (2, "kept")]

    xa = my_pipeline(tmp_path, "spxa", mysql, ["spx.t"], startup="latest")
    run = start_run(xa)
    time.sleep(3)
    with mysql.connect(db) as c, c.cursor() as cur:
        for sql in ["XA START 'lk'", "INSERT INTO t VALUES (4, 'xa')", "XA END 'lk'", "XA PREPARE 'lk'",
                    "XA COMMIT 'lk'"]:
            cur.execute(sql)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0 and "an XA transaction" in err, err[-3000:]

    comp = my_pipeline(tmp_path, "spxc", mysql, ["spx.t"], startup="latest")
    run = start_run(comp)
    time.sleep(3)
    try:
        mysql.execute("SET GLOBAL log_bin_compress = ON")
        mysql.execute("INSERT INTO t VALUES (5, REPEAT('z', 2000))", db)
        _, err = run.communicate(timeout=60)
    finally:
        mysql.execute("SET GLOBAL log_bin_compress = OFF")
    assert run.returncode != 0 and "log_bin_compress" in err, err[-3000:]
