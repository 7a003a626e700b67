"""Changelog tables (`mode = "changelog"`) and soft deletes (`soft_delete = true`) on
PostgreSQL and MariaDB (docs/transforms.md): one source table followed by two pipelines
through a snapshot, a seeded random sequence of single-row changes (key changes too), a
`kill -9` of each and a TRUNCATE. The changelog must hold every change exactly once, in the source's order
(by `_seq`), and fold back into the source table in DuckDB; the soft-delete table must
hold the live rows and every deleted row with its last values."""
import random
import signal
import time

import pytest

from conftest import Pipeline, start_run
from test_correctness_mysql import wait_lake

SEED = 2412


def source_db(request, kind, name):
    """A new database on the kind's server: (server, db, its [source] table, run one
    statement in it)."""
    server = request.getfixturevalue("postgres" if kind == "postgres" else "mysql")
    db = server.create_db(f"{name}_{kind[:2]}")
    if kind == "postgres":
        source = {"type": "postgres", "url": server.url(db), "tables": ["public.t"]}
    else:
        source = {"type": "mysql", "url": server.url(), "tables": [f"{db}.t"]}
    return server, db, source, lambda stmt: server.execute(stmt, db)


def refused_until_replica_identity_full(pipeline, sql, *words):
    """PostgreSQL sends only the key of an old row by default: the pipeline refuses the
    table naming the fix; then the fix."""
    p = pipeline.start()
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "REPLICA IDENTITY FULL" in err and all(w in err for w in words), err[-2000:]
    sql("ALTER TABLE t REPLICA IDENTITY FULL")


def pipelines(tmp_path, kind, source, db):
    ns = "pg" if kind == "postgres" else "my"
    log_dir, soft_dir = tmp_path / "log", tmp_path / "soft"
    log_dir.mkdir()
    soft_dir.mkdir()
    log = Pipeline(log_dir, f"{db}_log", source, {"namespace": ns, "mode": "changelog"}, interval="300ms")
    soft = Pipeline(soft_dir, f"{db}_soft", source, {"namespace": ns, "soft_delete": True}, interval="300ms")
    text = log.file.read_text().replace("[source]", 'metadata = ["_source_ts"]\n\n[source]', 1)
    log.file.write_text(text)
    return log, soft


def fold(duck, log):
    """The changelog folded: the latest row of each id after the last truncation,
    unless it is a delete (the query docs/transforms.md shows)."""
    scan = log.scan("t")
    return set(duck.execute(f"""
        select id, v from (
          select *, row_number() over (partition by id order by _seq desc) as rn from {scan}
          where _seq > coalesce((select max(_seq) from {scan} where _op = 'truncate'), 0)
        ) where rn = 1 and _op <> 'delete'""").fetchall())


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_changelog_and_soft_delete_through_random_changes_and_crashes(tmp_path, kind, request, duck):
    server, db, src, sql = source_db(request, kind, "modes")

    def source():
        return set(server.execute("select id, v from t", db))

    sql("CREATE TABLE t (id int PRIMARY KEY, v varchar(40) NOT NULL, n int)")
    model = {i: f"s{i}" for i in range(1, 51)}
    sql("INSERT INTO t (id, v, n) VALUES " + ", ".join(f"({i}, '{v}', {i})" for i, v in model.items()))
    log, soft = pipelines(tmp_path, kind, src, db)

    if kind == "postgres":
        # Deletes carry only the key under the default replica identity: soft deletes
        # refuse the table, naming the fix.
        refused_until_replica_identity_full(soft, sql, "ALTER TABLE")

    log.backfill()
    soft.backfill()
    snap = duck.execute(f"select count(*), min(_op), max(_op) from {log.scan('t')}").fetchone()
    assert snap == (50, "snapshot", "snapshot"), snap
    runs = {"log": start_run(log), "soft": start_run(soft)}
    time.sleep(2)

    rng = random.Random(SEED)
    changes = []          # (op, id, v) in commit order
    deleted = {}          # id -> its values when deleted, while it stays deleted
    token = 0
    for step in range(300):
        token += 1
        r = rng.random()
        if r < 0.3 or not model:
            i = rng.choice([k for k in range(1, 80) if k not in model] or [1000 + step])
            v = f"i{token}"
            sql(f"INSERT INTO t (id, v, n) VALUES ({i}, '{v}', {token})")
            model[i] = v
            deleted.pop(i, None)
            changes.append(("insert", i, v))
        elif r < 0.4:
            # A key change: the delete of the old key (with its values) and the new row.
            i = rng.choice(sorted(model))
            new = rng.choice([k for k in range(1, 120) if k not in model])
            sql(f"UPDATE t SET id = {new} WHERE id = {i}")
            v = model.pop(i)
            model[new] = v
            deleted[i] = v
            deleted.pop(new, None)
            changes += [("delete", i, v), ("update", new, v)]
        elif r < 0.75:
            i = rng.choice(sorted(model))
            v = f"u{token}"
            sql(f"UPDATE t SET v = '{v}', n = {token} WHERE id = {i}")
            model[i] = v
            changes.append(("update", i, v))
        else:
            i = rng.choice(sorted(model))
            sql(f"DELETE FROM t WHERE id = {i}")
            deleted[i] = model.pop(i)
            changes.append(("delete", i, deleted[i]))
        if step in (120, 210):
            name = "log" if step == 120 else "soft"
            runs[name].send_signal(signal.SIGKILL)
            runs[name].communicate(timeout=30)
            runs[name] = start_run(log if name == "log" else soft)
    assert source() == set(model.items())

    def changelog_is_exact():
        rows = duck.execute(
            f"select _op, id, v from {log.scan('t')} where _op <> 'snapshot' order by _seq").fetchall()
        assert len(rows) == len(changes), f"changelog has {len(rows)} changes, the source made {len(changes)}"
        assert rows == changes, next((k, a, b) for k, (a, b) in enumerate(zip(rows, changes)) if a != b)

    wait_lake(changelog_is_exact, timeout=90)
    assert fold(duck, log) == source()
    dup = duck.execute(f"select count(*) - count(distinct _seq) from {log.scan('t')}").fetchone()[0]
    assert dup == 0
    streamed = duck.execute(
        f"select count(*) from {log.scan('t')} where _op <> 'snapshot' and _source_ts is null").fetchone()[0]
    assert streamed == 0

    def soft_is_exact():
        live = set(duck.execute(f"select id, v from {soft.scan('t')} where not _deleted").fetchall())
        assert live == source(), f"live rows: lake - source {sorted(live - source())[:5]}, source - lake {sorted(source() - live)[:5]}"
        gone = set(duck.execute(
            f"select id, v from {soft.scan('t')} where _deleted and _deleted_at is not null").fetchall())
        assert gone == set(deleted.items()), f"markers: {sorted(gone ^ set(deleted.items()))[:5]}"
        total = duck.execute(f"select count(*) from {soft.scan('t')}").fetchone()[0]
        assert total == len(model) + len(deleted), total

    wait_lake(soft_is_exact, timeout=90)

    # TRUNCATE: a row of its own in the changelog (what it held stays); the soft-delete
    # table is emptied like a mirrored one. Rows inserted afterwards fold as usual.
    sql("TRUNCATE t")
    sql("INSERT INTO t (id, v, n) VALUES (7, 'after', 0)")
    wait_lake(lambda: fold(duck, log) == {(7, "after")} or (_ for _ in ()).throw(AssertionError(fold(duck, log))),
              timeout=60)
    ops = duck.execute(f"select _op, count(*) from {log.scan('t')} group by 1 order by 1").fetchall()
    assert ("truncate", 1) in ops, ops
    wait_lake(lambda: set(duck.execute(f"select id, v, _deleted from {soft.scan('t')}").fetchall())
              == {(7, "after", False)} or (_ for _ in ()).throw(AssertionError("soft table not emptied")),
              timeout=60)
    for name, run in runs.items():
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, f"{name}: {err[-3000:]}"


def test_a_hive_changelog_folds_to_the_generator_state(tmp_path, duck):
    """`mode = "changelog"` on a Hive sink: the generator's inserts, updates and deletes
    each land as a row; folded by `_seq` they equal the generator's own final state
    (`lakeshore expected`), and no change is written twice."""
    source = {"type": "datagen", "profile": "orders", "initial_rows": 3000, "events": 9000, "seed": 11}
    p = Pipeline(tmp_path, "hive_log", source, {"type": "hive", "path": "lake/hive", "mode": "changelog"})
    p.backfill()
    files = f"read_parquet('{tmp_path}/lake/hive/orders/**/*.parquet')"
    cols = "order_id, customer_id, status, amount_cents, created_at, updated_at"
    folded = set(duck.execute(f"""
        select {cols} from (
          select *, row_number() over (partition by order_id order by _seq desc) as rn from {files}
        ) where rn = 1 and _op <> 'delete'""").fetchall())
    want = set(duck.execute(f"select {cols} from read_parquet('{p.expected()}/orders.parquet')").fetchall())
    assert folded == want, f"folded - expected {sorted(folded - want)[:3]}, expected - folded {sorted(want - folded)[:3]}"
    ops = dict(duck.execute(f"select _op, count(*) from {files} group by 1").fetchall())
    assert ops.get("snapshot", 0) + ops.get("insert", 0) >= 3000 and ops.get("update") and ops.get("delete"), ops
    total, distinct = duck.execute(f"select count(*), count(distinct _seq) from {files}").fetchone()
    assert total == distinct == sum(ops.values())


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_before_images_precede_each_update(tmp_path, kind, request, duck):
    """`before_images = true`: every update that keeps its key is two rows, the old
    values (`update_before`) then the new, in the source's order, across a `kill -9`;
    a key change stays the delete of the old key. PostgreSQL needs REPLICA IDENTITY
    FULL, and says so."""
    server, db, source, sql = source_db(request, kind, "before")
    sql("CREATE TABLE t (id int PRIMARY KEY, v varchar(40) NOT NULL)")
    model = {i: f"s{i}" for i in range(1, 21)}
    sql("INSERT INTO t (id, v) VALUES " + ", ".join(f"({i}, '{v}')" for i, v in model.items()))
    log = Pipeline(tmp_path, f"{db}_before", source,
                   {"namespace": "b", "mode": "changelog", "before_images": True}, interval="300ms")
    if kind == "postgres":
        refused_until_replica_identity_full(log, sql, "before_images")
    log.backfill()
    run = start_run(log)
    time.sleep(2)
    rng = random.Random(SEED + 1)
    changes = []
    for step in range(80):
        i = rng.choice(sorted(model))
        if step % 20 == 19:
            new = max(model) + 1
            sql(f"UPDATE t SET id = {new} WHERE id = {i}")
            model[new] = model.pop(i)
            changes += [("delete", i, model[new]), ("update", new, model[new])]
        else:
            v = f"u{step}"
            sql(f"UPDATE t SET v = '{v}' WHERE id = {i}")
            changes += [("update_before", i, model[i]), ("update", i, v)]
            model[i] = v
        if step == 40:
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
            run = start_run(log)

    def exact():
        rows = duck.execute(
            f"select _op, id, v from {log.scan('t')} where _op <> 'snapshot' order by _seq").fetchall()
        assert rows == changes, (len(rows), len(changes),
                                 next(((k, a, b) for k, (a, b) in enumerate(zip(rows, changes)) if a != b), None))

    wait_lake(exact, timeout=90)
    assert fold(duck, log) == set(server.execute("select id, v from t", db))
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
