"""Correctness under change, MariaDB 10.11 (docs/correctness.md): column type changes,
fixed-length binary, and DDL that changes rows or names without row events. Each case
ends with the lake (DuckDB) equal to the source (PyMySQL), or a stop naming the cause."""
import signal
import time

import lake
from conftest import start_run
from test_mysql import assert_same, my_pipeline, run_error


def wait_lake(check, timeout=30):
    """Retry `check` (an assertion on the lake) until it passes while the pipeline runs."""
    deadline = time.time() + timeout
    while True:
        try:
            return check()
        except (AssertionError, Exception):  # noqa: BLE001 - the lake may lag or the table be missing
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def test_binary_padding_and_column_type_changes(tmp_path, mysql, duck):
    """Issue 19, 4 and 5: a BINARY(16) value ending in 0x00 reads the same through the
    binlog as in the snapshot; DECIMAL precision widens the lake column; a reordered ENUM
    decodes by its new labels; a DECIMAL scale change stops, naming table and column."""
    db = mysql.create_db("types19")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, u binary(16), amt decimal(10,2), "
                  "color enum('red','green','blue'), n int)", db)
    mysql.execute("INSERT INTO t VALUES (1, unhex('00112233445566778899aabbccddee00'), 1.25, 'red', 1)", db)
    p = my_pipeline(tmp_path, "types19", mysql, ["types19.t"])
    p.backfill()
    cols = ["id", "u", "amt", "color", "n"]
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("INSERT INTO t VALUES (2, unhex('ff000000000000000000000000000000'), 2.5, 'green', 2)", db)
    mysql.execute("UPDATE t SET n = 10 WHERE id = 1", db)
    mysql.execute("ALTER TABLE t MODIFY amt decimal(14,2), MODIFY n bigint", db)
    mysql.execute("INSERT INTO t VALUES (3, NULL, 123456789012.34, 'blue', 5000000000)", db)
    mysql.execute("ALTER TABLE t MODIFY color enum('blue','green','red')", db)
    mysql.execute("INSERT INTO t VALUES (4, unhex('00'), 1.5, 'red', 4)", db)
    mysql.execute("UPDATE t SET color = 'green', amt = 99.99 WHERE id = 1", db)
    wait_lake(lambda: assert_same(duck, mysql, db, p, "t", cols))
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    assert "column type changed at the source" in err, err[-3000:]
    described = duck.execute(f"describe select * from {lake.scan(p.catalog_db, p.table('t'))}").fetchall()
    types = {r[0]: r[1] for r in described}
    assert types["amt"] == "DECIMAL(14,2)" and types["n"] == "BIGINT", types
    # A new scale cannot be followed: a stop that names table, column and change, seen
    # in the stream (the table map) ...
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("ALTER TABLE t MODIFY amt decimal(16,4)", db)
    mysql.execute("INSERT INTO t VALUES (5, NULL, 1.2345, 'red', 5)", db)
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0
    assert "table types19.t, column amt: its type changed from decimal(14,2) to decimal(16,4)" in err, err[-2000:]
    assert "not change its scale" in err, err[-2000:]
    # ... and at a restart (the writer compares the lake table with the source's).
    err = run_error(p, "backfill")
    assert "table types19.t, column amt: type change from decimal(14, 2) to decimal(16, 4)" in err, err[-2000:]
    # Nothing after the change was committed: the lake still has 4 rows.
    assert len(duck.execute(f"select * from {lake.scan(p.catalog_db, p.table('t'))}").fetchall()) == 4


def test_ddl_that_changes_rows_or_names_without_row_events(tmp_path, mysql, duck):
    """DROP + CREATE, TRUNCATE PARTITION, RENAME COLUMN, a gh-ost style swap, a TRUNCATE
    behind a comment and a two-pair RENAME TABLE: each table ends equal to the source."""
    db = mysql.create_db("ddl19")
    for t in ["recreated", "renamed_col", "swapped", "commented"]:
        mysql.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v varchar(20))", db)
        mysql.execute(f"INSERT INTO {t} SELECT seq, concat('v', seq) FROM seq_1_to_200", db)
    mysql.execute("CREATE TABLE parts (id int PRIMARY KEY, v varchar(20)) "
                  "PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (100), PARTITION p1 VALUES LESS THAN MAXVALUE)", db)
    mysql.execute("INSERT INTO parts SELECT seq, concat('v', seq) FROM seq_1_to_200", db)
    p = my_pipeline(tmp_path, "ddl19", mysql, ["ddl19.recreated", "ddl19.renamed_col", "ddl19.swapped",
                                               "ddl19.commented", "ddl19.parts"])
    p.backfill()
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("DROP TABLE recreated", db)
    mysql.execute("CREATE TABLE recreated (id int PRIMARY KEY, v varchar(20))", db)
    mysql.execute("INSERT INTO recreated SELECT seq, concat('new', seq) FROM seq_150_to_170", db)
    mysql.execute("ALTER TABLE parts TRUNCATE PARTITION p0", db)
    mysql.execute("UPDATE parts SET v = 'after' WHERE id = 150", db)
    mysql.execute("ALTER TABLE renamed_col RENAME COLUMN v TO w", db)
    mysql.execute("UPDATE renamed_col SET w = 'changed' WHERE id <= 5", db)
    # gh-ost: a shadow table filled, then swapped in with one RENAME of two pairs.
    mysql.execute("CREATE TABLE _swapped_gho (id int PRIMARY KEY, v varchar(20), extra int)", db)
    mysql.execute("INSERT INTO _swapped_gho SELECT id, v, 7 FROM swapped WHERE id % 2 = 0", db)
    mysql.execute("RENAME TABLE swapped TO _swapped_del, _swapped_gho TO swapped", db)
    mysql.execute("UPDATE swapped SET v = 'post-swap' WHERE id = 2", db)
    mysql.execute("/* maintenance */ TRUNCATE TABLE commented", db)
    mysql.execute("INSERT INTO commented VALUES (1, 'only')", db)
    try:
        wait_lake(lambda: assert_same(duck, mysql, db, p, "recreated", ["id", "v"]))
        wait_lake(lambda: assert_same(duck, mysql, db, p, "parts", ["id", "v"]))
        wait_lake(lambda: assert_same(duck, mysql, db, p, "renamed_col", ["id", "w"]))
        wait_lake(lambda: assert_same(duck, mysql, db, p, "swapped", ["id", "v", "extra"]))
        wait_lake(lambda: assert_same(duck, mysql, db, p, "commented", ["id", "v"]))
    finally:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    for cause in ["table dropped at the source", "TRUNCATE PARTITION", "RENAME COLUMN", "cut-over"]:
        assert cause in err, f"{cause!r} not logged:\n{err[-3000:]}"


def test_dropped_and_renamed_columns_replayed_after_a_restart(tmp_path, mysql, duck):
    """Changes made before a DROP COLUMN and a RENAME COLUMN, read after the pipeline
    restarts (the server already without those columns), no longer loop forever: the
    run completes and the lake equals the source."""
    db = mysql.create_db("replay19")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b varchar(10), c int)", db)
    mysql.execute("INSERT INTO t SELECT seq, seq, concat('b', seq), seq FROM seq_1_to_300", db)
    p = my_pipeline(tmp_path, "replay19", mysql, ["replay19.t"])
    p.backfill()
    mysql.execute("UPDATE t SET a = a + 1, c = 0 WHERE id <= 50", db)
    mysql.execute("ALTER TABLE t DROP COLUMN c", db)
    mysql.execute("UPDATE t SET b = 'x' WHERE id BETWEEN 40 AND 60", db)
    mysql.execute("ALTER TABLE t RENAME COLUMN b TO bb", db)
    mysql.execute("UPDATE t SET bb = 'y' WHERE id BETWEEN 55 AND 70", db)
    p.backfill()
    assert_same(duck, mysql, db, p, "t", ["id", "a", "bb"])


def test_character_set_changes_follow_the_table_map(tmp_path, mysql, duck):
    """Issue 19, suspected: a charset change of a column while streaming. The binlog
    carries text as stored, so after `MODIFY ... CHARACTER SET latin1` (or back to
    utf8mb4) each row event is decoded by the character set its table map names; the
    same when the events are replayed after a restart, when the server already has the
    newer charset. A charset lakeshore cannot decode stops the table, naming the column;
    at discovery too."""
    db = mysql.create_db("charset19")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, a varchar(20) CHARACTER SET utf8mb4, "
                  "b text CHARACTER SET latin1, e enum('x','y'), c char(6) CHARACTER SET latin1, "
                  "bin varbinary(8))", db)
    mysql.execute("INSERT INTO t VALUES (1, 'café', 'naïve', 'x', 'olé', x'00ff'), "
                  "(2, 'plain', 'plain', 'y', 'ab', NULL)", db)
    p = my_pipeline(tmp_path, "charset19", mysql, ["charset19.t"])
    p.backfill()
    cols = ["id", "a", "b", "e", "c", "bin"]
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("ALTER TABLE t MODIFY a varchar(20) CHARACTER SET latin1, "
                  "MODIFY b text CHARACTER SET utf8mb4, MODIFY c char(6) CHARACTER SET utf8mb4", db)
    mysql.execute("INSERT INTO t VALUES (3, 'Größe', 'Ærø €', 'y', 'ñü😀', x'01')", db)
    mysql.execute("UPDATE t SET a = 'über', b = concat(b, ' ✓') WHERE id = 1", db)
    wait_lake(lambda: assert_same(duck, mysql, db, p, "t", cols))
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    # While stopped: back the other way, then rows in both; the restart replays the
    # events from its checkpoint with the server already at the last charsets.
    mysql.execute("UPDATE t SET a = 'déjà' WHERE id = 2", db)
    mysql.execute("ALTER TABLE t CONVERT TO CHARACTER SET utf8mb4", db)
    mysql.execute("INSERT INTO t VALUES (4, 'ça 😀', 'ok', 'x', 'fin', NULL)", db)
    p.backfill()
    assert_same(duck, mysql, db, p, "t", cols)
    # A character set lakeshore does not decode: a stop naming table and column.
    run = start_run(p)
    time.sleep(1.5)
    mysql.execute("UPDATE t SET a = concat('r', id)", db)  # values cp1251 can hold
    mysql.execute("ALTER TABLE t MODIFY a varchar(20) CHARACTER SET cp1251", db)
    mysql.execute("INSERT INTO t VALUES (5, 'Привет', 'x', 'x', 'x', NULL)", db)
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0
    assert "table charset19.t, column a" in err and "character set cp1251" in err, err[-2000:]
    err = run_error(p, "backfill")
    assert "column a: character set cp1251 is not supported" in err, err[-2000:]
