"""PostgreSQL arrays as Iceberg lists (issue 24): one-dimensional arrays of mapped types
land as lists that DuckDB and pyiceberg read back equal to the source's arrays (as
psycopg reads them), through the snapshot, the stream, a `kill -9` and an array column
added while streaming; a multi-dimensional value stops the table naming the fix, and
`arrays = "text"` keeps PostgreSQL's text form."""
import datetime
import signal
import time
import uuid

from conftest import start_run
from test_correctness_mysql import wait_lake
from test_postgres import pg_pipeline

DDL = """
CREATE TYPE feel AS ENUM ('sad', 'ok');
CREATE TABLE t (id int PRIMARY KEY, i int[], b bigint[], s smallint[], t text[], v varchar(9)[],
  n numeric(10,2)[], r float8[], ts timestamptz[], d date[], f boolean[], j jsonb[], u uuid[],
  e feel[], y bytea[])
"""
# Nulls and empties, strings that need quoting or escaping, a lower bound other than 1.
ROWS = r"""
INSERT INTO t VALUES
 (1, '{1,2,3}', '{9223372036854775807}', '{-32768}', '{"a b","c,d","e\"f","g\\h","","NULL",NULL,"{x}"}',
  '{ü,✓}', '{1.50,NULL,-0.01}', '{1.5,NaN,Infinity}', '{"2024-02-29 12:00:00+02",NULL}', '{2024-02-29}',
  '{t,f,NULL}', ARRAY['{"a": [1, 2]}'::jsonb], '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{sad,ok}',
  ARRAY['\x00ff'::bytea, NULL]),
 (2, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, '[0:2]={7,8,9}', '{NULL}', NULL, '{NULL,NULL}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""
COLUMNS = ["id", "i", "b", "s", "t", "v", "n", "r", "ts", "d", "f", "j", "u", "e", "y"]


def norm(v):
    if isinstance(v, list):
        return tuple(norm(x) for x in v)
    if isinstance(v, datetime.datetime):
        return v.timestamp()
    if isinstance(v, float) and v != v:
        return "NaN"
    if isinstance(v, (memoryview, bytearray)):
        return bytes(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


def source_rows(server, db, columns=COLUMNS):
    # jsonb elements as their text (the lake holds jsonb as text), enums as text.
    sel = ", ".join({"j": "j::text[]", "e": "e::text[]"}.get(c, c) for c in columns)
    with server.connect(db) as c:
        rows = c.execute(f"select {sel} from t").fetchall()
    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def lake_rows(duck, p, columns=COLUMNS):
    rows = duck.execute(f"select {', '.join(columns)} from {p.scan('t')}").fetchall()
    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def same(duck, p, server, db, columns=COLUMNS):
    got, want = lake_rows(duck, p, columns), source_rows(server, db, columns)
    if got != want:
        raise AssertionError(f"lake differs:\n lake   {got[:3]}\n source {want[:3]}")
    return True


def test_arrays_land_as_lists(tmp_path, postgres, duck):
    db = postgres.create_db("arrays")
    with postgres.connect(db) as c:
        c.execute(DDL)
        c.execute(ROWS)
    p = pg_pipeline(tmp_path, "arrays", postgres, db, ["public.t"])
    p.backfill()
    same(duck, p, postgres, db)
    types = dict(duck.execute(f"select column_name, column_type from (describe select * from {p.scan('t')})").fetchall())
    assert types["i"] == "INTEGER[]" and types["t"] == "VARCHAR[]" and types["n"] == "DECIMAL(10,2)[]", types
    # pyiceberg, another reader: list columns with the same values.
    table = p.pyiceberg_table("t")
    assert str(table.schema().find_field("i").field_type) == "list<int>", table.schema()
    by_id = {r["id"]: r for r in table.scan().to_arrow().to_pylist()}
    assert by_id[1]["i"] == [1, 2, 3] and by_id[4]["i"] == [7, 8, 9] and by_id[2]["t"] == [], by_id[1]
    assert by_id[1]["t"] == ["a b", "c,d", 'e"f', "g\\h", "", "NULL", None, "{x}"], by_id[1]["t"]

    run = start_run(p)
    time.sleep(2)
    with postgres.connect(db) as c:
        c.execute(ROWS.replace("(1, ", "(11, ").replace("(2, ", "(12, ").replace("(3, ", "(13, ")
                  .replace("(4, ", "(14, "))
        c.execute("UPDATE t SET i = array_append(i, 4), t = ARRAY['new', NULL, 'q\"x'] WHERE id IN (1, 12)")
        c.execute("UPDATE t SET n = NULL, ts = ARRAY[now()] WHERE id = 2")
        c.execute("DELETE FROM t WHERE id = 3")
    wait_lake(lambda: same(duck, p, postgres, db))
    # kill -9 among changes; the restart resumes exactly.
    for k in range(20):
        postgres.execute(f"UPDATE t SET i = coalesce(i, '{{}}') || {k} WHERE id = {1 + k % 2}", db)
        if k == 10:
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
    run = start_run(p)
    wait_lake(lambda: same(duck, p, postgres, db), timeout=60)
    # An array column added while streaming joins as a list.
    postgres.execute("ALTER TABLE t ADD COLUMN tags text[]", db)
    postgres.execute("UPDATE t SET tags = '{red,\"dark blue\"}' WHERE id = 1", db)
    wait_lake(lambda: same(duck, p, postgres, db, COLUMNS + ["tags"]))
    assert str(p.pyiceberg_table("t").schema().find_field("tags").field_type) == "list<string>"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]


def test_multi_dimensional_arrays_stop_or_stay_text(tmp_path, postgres, duck):
    db = postgres.create_db("arrays2d")
    postgres.execute("CREATE TABLE m (id int PRIMARY KEY, a int[])", db)
    postgres.execute("INSERT INTO m VALUES (1, '{1,2}'), (2, '{{1,2},{3,4}}')", db)
    p = pg_pipeline(tmp_path, "arrays2d", postgres, db, ["public.m"])
    r = p.start()
    _, err = r.communicate(timeout=120)
    assert r.returncode != 0
    assert "column a" in err and "multi-dimensional" in err and 'arrays = "text"' in err, err[-2000:]
    # The same table with arrays kept as text (another lake).
    (tmp_path / "text").mkdir()
    q = pg_pipeline(tmp_path / "text", "arrays2d_text", postgres, db, ["public.m"], arrays="text")
    q.backfill()
    rows = sorted(duck.execute(f"select id, a from {q.scan('m')}").fetchall())
    assert rows == [(1, "{1,2}"), (2, "{{1,2},{3,4}}")], rows
