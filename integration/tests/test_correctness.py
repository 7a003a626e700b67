"""Correctness under change (docs/correctness.md): every change a source or an operator
can make either lands exactly, checked by DuckDB against the source's own state, or stops
with an error naming the cause and the fix. One test per failure seen in the field."""
import random
import shutil
import signal
import time

import pytest

from conftest import Pipeline, assert_same_rows
from test_lake import NEXMARK_COLUMNS, assert_generator_rows


def lost_state_source(profile):
    if profile == "nexmark":
        return ({"type": "datagen", "profile": "nexmark", "events": 300_000, "seed": 31, "rate": 40_000,
                 "batch_events": 1000},
                {"namespace": "nexmark", "mode": "append"}, None)
    return ({"type": "datagen", "profile": "orders", "events": 240_000, "initial_rows": 20_000, "seed": 31,
             "rate": 30_000, "batch_events": 1000},
            {"namespace": "shop", "mode": "upsert"}, {"orders": ["status"]})


@pytest.mark.parametrize("profile", ["nexmark", "orders"])
def test_lost_state_resumes_from_the_lake(tmp_path, duck, profile):
    """Issue 19, 1: the state directory is lost (a fresh pod, a deleted `state/`) after
    a kill -9 at a random moment, commits included. The next run resumes from the lake's
    newest commit of the pipeline, or — when that checkpoint reached only some of its
    tables — refuses, naming the fix; restoring the state (the fix) then finishes it."""
    source, sink, spec = lost_state_source(profile)
    p = Pipeline(tmp_path, f"lost-{profile}", source, sink, partitioning=spec, interval="300ms")
    state = tmp_path / "lake" / "state"
    aside = tmp_path / "state-aside"
    rng = random.Random(f"lost-{profile}")
    env = {"LAKESHORE_TEST_COMMIT_PAUSE_MS": "100"}
    from_lake = refused = 0
    for _ in range(6):
        run = p.start(env)
        time.sleep(rng.uniform(0.5, 1.8))
        if run.poll() is not None:
            break
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)
        if not state.exists():
            continue
        shutil.rmtree(aside, ignore_errors=True)
        shutil.move(state, aside)
        attempt = p.start(env)
        time.sleep(rng.uniform(0.5, 1.5))
        if attempt.poll() is None:
            attempt.send_signal(signal.SIGKILL)
        _, err = attempt.communicate(timeout=60)
        if "resuming from the lake's commit" in err:
            from_lake += 1
        elif attempt.returncode == 2:
            # The lake's newest checkpoint is incomplete: a loud stop, never a guess.
            assert "reached only" in err and "Restore the pipeline's state directory" in err, err[-2000:]
            refused += 1
            shutil.rmtree(state, ignore_errors=True)
            shutil.move(aside, state)
        else:
            # Killed before the lake held a checkpoint of the pipeline: a fresh start.
            assert attempt.returncode in (0, -signal.SIGKILL), err[-2000:]
    _, err = p.backfill(env)
    print(f"{profile}: {from_lake} resumed from the lake, {refused} refused")
    assert from_lake >= 2, f"only {from_lake} runs resumed from the lake"
    assert_generator_rows(duck, p, profile)


def test_state_lost_after_the_end_writes_nothing_twice(tmp_path, duck):
    """Issue 19, 1 as reported: a finished append pipeline whose state is deleted and is
    run again (with another seed) resumes from the lake's commit and adds no row."""
    source = {"type": "datagen", "profile": "nexmark", "events": 100_000, "seed": 0}
    p = Pipeline(tmp_path, "rerun", source, {"namespace": "nexmark", "mode": "append"})
    p.backfill()
    exp = p.expected()
    shutil.rmtree(tmp_path / "lake" / "state")
    p.file.write_text(p.file.read_text().replace("seed = 0", "seed = 1"))
    out, err = p.backfill()
    assert "resuming from the lake's commit" in err, err[-2000:]
    assert "0 rows written by this run" in out + err, (out + err)[-2000:]
    for table, columns in NEXMARK_COLUMNS.items():
        assert_same_rows(duck, p, table, exp / f"{table}.parquet", columns)


def test_foreign_expiry_of_the_newest_commit_does_not_commit_it_twice(tmp_path, duck):
    """Another engine commits after lakeshore and expires every older snapshot, so
    lakeshore's newest commit leaves the table's history. A rerun, which re-commits the
    last checkpoint record's files unless the table holds them, must still see that it
    does (a table property mirrors the commit) and add nothing."""
    import pyarrow as pa
    import lake
    source = {"type": "datagen", "profile": "nexmark", "events": 50_000, "seed": 3}
    p = Pipeline(tmp_path, "expired", source, {"namespace": "nexmark", "mode": "append"})
    p.backfill()
    exp = p.expected()
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "nexmark.bid")
    ours = table.current_snapshot().snapshot_id
    one = duck.execute(f"select * from {lake.scan(p.catalog_db, 'nexmark.bid')} limit 1").to_arrow_table()
    one = one.set_column(0, "auction", pa.array([-1], one.schema.field("auction").type))
    table.append(one.cast(table.schema().as_arrow()))
    table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in table.snapshots()
                                     if s.snapshot_id != table.current_snapshot().snapshot_id]).commit()
    assert ours not in [s.snapshot_id for s in lake.pyiceberg_table(p.catalog_db, p.warehouse, "nexmark.bid").snapshots()]
    _, err = p.backfill()
    for name, columns in NEXMARK_COLUMNS.items():
        if name != "bid":
            assert_same_rows(duck, p, name, exp / f"{name}.parquet", columns)
    rel = lake.scan(p.catalog_db, "nexmark.bid")
    got = duck.execute(f"select count(*), count(*) filter (where auction = -1) from {rel}").fetchone()
    want = duck.execute(f"select count(*) from read_parquet('{exp / 'bid.parquet'}')").fetchone()[0]
    assert got == (want + 1, 1), (got, want, err[-2000:])


def test_a_failure_that_repeats_ends_in_failed(tmp_path):
    """A source that fails the same way at every restart (here: nothing listens on its
    port) is not retried forever while its WAL piles up: after give_up_after identical
    failures the pipeline is failed with the error, and a daemon with no other pipeline
    exits."""
    import socket
    import subprocess
    from conftest import BIN
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = Pipeline(tmp_path, "unreachable", {"type": "postgres", "url": f"postgres://u@127.0.0.1:{port}/db",
                                           "tables": ["public.t"]}, {"namespace": "pg"})
    (tmp_path / "daemon.toml").write_text(
        '[restart]\ninitial_backoff = "100ms"\nmax_backoff = "200ms"\ngive_up_after = 3\n')
    r = subprocess.run([BIN, "run", "--config", "daemon.toml", str(p.file)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "failed 3 times in a row with the same error, not retried again" in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("pipeline failed; restarting") == 2, r.stderr[-2000:]
