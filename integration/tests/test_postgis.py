"""PostGIS geometry and geography columns (issue 24): ISO WKB in the lake, through the
snapshot (binary COPY) and the stream (hex EWKB text), compared byte for byte with the
source's own `ST_AsBinary`; a value whose SRID the column does not declare stops the
table with an error that names the fix."""
import signal
import time

from conftest import start_run
from test_correctness_mysql import wait_lake
from test_postgres import pg_pipeline

SHAPES = [
    "SRID=4326;POINT(1 2)",
    "SRID=4326;POINT Z (1 2 3)",
    "SRID=4326;LINESTRING(0 0, 1 1, 2 0)",
    "SRID=4326;POLYGON((0 0, 4 0, 4 4, 0 4, 0 0), (1 1, 2 1, 2 2, 1 1))",
    "SRID=4326;MULTIPOINT M ((1 2 3), (4 5 6))",
    "SRID=4326;GEOMETRYCOLLECTION(POINT(1 1), LINESTRING(0 0, 1 1))",
    "SRID=4326;POINT EMPTY",
]


def source_wkb(server, db):
    with server.connect(db) as c:
        rows = c.execute("select id, ST_AsBinary(g), ST_AsBinary(h::geometry) from t").fetchall()
    return {(i, None if g is None else bytes(g), None if h is None else bytes(h)) for i, g, h in rows}


def lake_wkb(duck, p):
    rows = duck.execute(f"select id, g, h from {p.scan('t')}").fetchall()
    return {(i, None if g is None else bytes(g), None if h is None else bytes(h)) for i, g, h in rows}


def test_geometry_lands_as_iso_wkb(tmp_path, postgres, duck):
    db = postgres.create_db("gis")
    postgres.execute("CREATE EXTENSION postgis", db)
    postgres.execute("CREATE TABLE t (id int PRIMARY KEY, g geometry(Geometry, 4326), h geography)", db)
    # `g` declares 2D geometries; `h` (unconstrained geography) takes Z and M too.
    values = ", ".join(f"({i}, {'NULL' if ' Z ' in s or ' M ' in s else repr(s)}, "
                       f"'{s.replace('SRID=4326;', '')}'::geography)"
                       for i, s in enumerate(SHAPES) if "EMPTY" not in s)
    postgres.execute(f"INSERT INTO t VALUES {values}", db)
    postgres.execute("INSERT INTO t VALUES (101, 'SRID=4326;POINT EMPTY', NULL), (102, NULL, NULL)", db)
    p = pg_pipeline(tmp_path, "gis", postgres, db, ["public.t"])
    p.backfill()
    assert lake_wkb(duck, p) == source_wkb(postgres, db)
    columns = dict(duck.execute(f"select column_name, column_type from (describe select * from {p.scan('t')})").fetchall())
    assert columns["g"] == "BLOB" and columns["h"] == "BLOB", columns
    # WKB has no SRID: the lake schema's doc of each column holds it.
    schema = p.pyiceberg_table("t").schema()
    assert schema.find_field("g").doc == "PostGIS geometry as ISO WKB; SRID 4326", schema
    assert schema.find_field("h").doc == "PostGIS geometry as ISO WKB; SRID 4326", schema

    run = start_run(p)
    time.sleep(2)
    postgres.execute("INSERT INTO t VALUES (200, 'SRID=4326;POLYGON((0 0, 1 0, 1 1, 0 0))', 'POINT(3 4)')", db)
    postgres.execute("UPDATE t SET g = ST_Translate(g, 10, 10) WHERE id IN (0, 2, 3)", db)
    postgres.execute("UPDATE t SET g = 'SRID=4326;CIRCULARSTRING(0 0, 1 1, 2 0)' WHERE id = 5", db)
    postgres.execute("DELETE FROM t WHERE id = 1", db)
    wait_lake(lambda: (lake_wkb(duck, p) == source_wkb(postgres, db))
              or (_ for _ in ()).throw(AssertionError("lake differs")))
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)

    # An unconstrained column holding SRID 4326 values: the lake column has one SRID, so
    # the table stops at once, naming the SRIDs and the declaration that fixes it.
    postgres.execute("CREATE TABLE u (id int PRIMARY KEY, g geometry)", db)
    postgres.execute("INSERT INTO u VALUES (1, 'POINT(1 1)'), (2, 'SRID=4326;POINT(2 2)')", db)
    q = pg_pipeline(tmp_path, "gis_u", postgres, db, ["public.u"])
    r = q.start()
    _, err = r.communicate(timeout=120)
    assert r.returncode != 0
    assert "column g" in err and "SRID 4326" in err and "geometry(Geometry, 4326)" in err, err[-2000:]
