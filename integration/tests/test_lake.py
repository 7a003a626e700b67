"""End-to-end: generator → lakeshore → Iceberg, checked with DuckDB and pyiceberg against
the generator's own state (`lakeshore expected`)."""
import subprocess
import threading
import time

import pyarrow as pa
import pytest

from conftest import BIN, ROOT, Pipeline, assert_same_rows, lake, run_with_crashes

NEXMARK_COLUMNS = {
    "person": ["id", "name", "email_address", "credit_card", "city", "state", "date_time", "extra"],
    "auction": ["id", "item_name", "description", "initial_bid", "reserve", "date_time", "expires", "seller", "category", "extra"],
    "bid": ["auction", "bidder", "price", "channel", "url", "date_time", "extra"],
}
ORDER_COLUMNS = ["order_id", "customer_id", "status", "amount_cents", "created_at", "updated_at"]


def nexmark_counts(events):
    full, rem = divmod(events, 50)
    persons = full + min(rem, 1)
    auctions = full * 3 + min(max(rem - 1, 0), 3)
    return {"person": persons, "auction": auctions, "bid": events - persons - auctions}


def test_nexmark_append_counts_and_rows(tmp_path, duck):
    events = 120_000
    p = Pipeline(tmp_path, "nx", {"type": "datagen", "profile": "nexmark", "events": events, "seed": 5},
                 {"namespace": "nexmark", "mode": "append"}, partitioning={"bid": ["hour(date_time)"]})
    p.backfill()
    exp = p.expected()
    counts = nexmark_counts(events)
    assert counts == {"person": 2400, "auction": 7200, "bid": 110_400}
    for table, columns in NEXMARK_COLUMNS.items():
        got = assert_same_rows(duck, p, table, exp / f"{table}.parquet", columns)
        assert got[0] == counts[table]


ORDER_CASES = [
    # seed, checkpoint interval, partition spec, max_open_files
    (1, "100ms", [], None),
    (2, "150ms", ["status"], None),
    # 8 buckets in every batch, 3 open files: files close early, mid-checkpoint, and
    # later changes of their rows must still find them.
    (3, "1s", ["bucket[8](customer_id)"], 3),
    (4, "100ms", ["status", "day(created_at)"], None),
    (5, "250ms", ["truncate[2](status)", "hour(updated_at)"], None),
]


@pytest.mark.parametrize("seed,interval,spec,max_open", ORDER_CASES)
def test_orders_upsert_equals_folded_source(tmp_path, duck, seed, interval, spec, max_open):
    sink = {"namespace": "shop", "mode": "upsert"}
    if max_open:
        sink["max_open_files"] = max_open
    p = Pipeline(tmp_path, f"orders{seed}",
                 {"type": "datagen", "profile": "orders", "events": 60_000, "initial_rows": 10_000,
                  "seed": seed, "rate": 20_000, "batch_events": 1000},
                 sink, partitioning={"orders": spec} if spec else None,
                 interval=interval)
    _, err = p.backfill()
    assert ("raise [sink] max_open_files" in err) == bool(max_open), err[-2000:]
    exp = p.expected()
    digest = assert_same_rows(duck, p, "orders", exp / "orders.parquet", ORDER_COLUMNS)

    # No equality deletes: pyiceberg refuses them, and reads the same rows.
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    arrow = table.scan().to_arrow()
    assert arrow.num_rows == digest[0]
    assert pa.compute.sum(arrow["order_id"]).as_py() == duck.execute(
        f"select sum(order_id) from read_parquet('{exp / 'orders.parquet'}')").fetchone()[0]
    files = duck.execute(f"select content from iceberg_metadata('{lake.metadata_location(p.catalog_db, 'shop.orders')}')").fetchall()
    assert all(c[0] != "EQUALITY_DELETES" for c in files), files
    if max_open:
        # Without the cap a checkpoint writes at most one file per bucket.
        data_files = duck.execute(
            f"select count(*) from iceberg_metadata('{lake.metadata_location(p.catalog_db, 'shop.orders')}') "
            "where manifest_content = 'DATA'").fetchone()[0]
        assert data_files > 8 * len(table.snapshots()), data_files
    # The run used several checkpoints, so updates hit rows of earlier commits.
    snapshots = table.snapshots()
    assert len(snapshots) >= 2, f"only {len(snapshots)} snapshots"
    summary = table.current_snapshot().summary
    assert summary["lakeshore.pipeline"] == p.name
    assert int(summary["lakeshore.checkpoint-id"]) >= len(snapshots)
    assert '"seq":60000' in summary["lakeshore.source-position"].replace(" ", "")


@pytest.mark.parametrize("profile", ["nexmark", "orders"])
def test_kill_nine_loses_and_duplicates_nothing(tmp_path, duck, profile):
    if profile == "nexmark":
        source = {"type": "datagen", "profile": "nexmark", "events": 400_000, "seed": 9, "rate": 40_000,
                  "batch_events": 1000}
        sink, spec = {"namespace": "nexmark", "mode": "append"}, {"bid": ["bucket[4](auction)"]}
    else:
        source = {"type": "datagen", "profile": "orders", "events": 320_000, "initial_rows": 20_000, "seed": 9,
                  "rate": 30_000, "batch_events": 1000}
        sink, spec = {"namespace": "shop", "mode": "upsert"}, {"orders": ["status"]}
    p = Pipeline(tmp_path, f"crash-{profile}", source, sink, partitioning=spec, interval="300ms")
    # A pause inside the commit step (after the checkpoint record, before and between the
    # table commits) makes random kills land there too, not only between writes.
    logs = run_with_crashes(p, kills=6, window=(0.4, 1.6), env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "150"}, seed=profile)
    resumed = sum("resuming" in log for log in logs)
    assert resumed >= 4, f"only {resumed} of {len(logs)} runs resumed from a checkpoint"
    recovered = sum("recovered: committed pending files" in log for log in logs)
    print(f"{profile}: {len(logs)} runs, {resumed} resumed, {recovered} finished an interrupted commit")
    assert_generator_rows(duck, p, profile)


def assert_generator_rows(duck, p, profile):
    """Every lake table of a `profile` generator pipeline equals the generator's state."""
    exp = p.expected()
    if profile == "nexmark":
        for table, columns in NEXMARK_COLUMNS.items():
            assert_same_rows(duck, p, table, exp / f"{table}.parquet", columns)
    else:
        assert_same_rows(duck, p, "orders", exp / "orders.parquet", ORDER_COLUMNS)


def test_foreign_commits_between_checkpoints_are_kept(tmp_path, duck):
    p = Pipeline(tmp_path, "shared",
                 {"type": "datagen", "profile": "orders", "events": 150_000, "initial_rows": 10_000, "seed": 21,
                  "rate": 30_000, "batch_events": 1000},
                 {"namespace": "shop", "mode": "upsert"}, interval="200ms")
    proc = p.start()
    table = None
    deadline = time.time() + 30
    while table is None and time.time() < deadline:
        try:
            table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
        except Exception:
            time.sleep(0.1)
    assert table is not None, "lakeshore did not create the table"
    schema = table.schema().as_arrow()
    appended = 0
    for round_ in range(5):
        n = 100
        ids = list(range(-(round_ + 1) * 1000, -(round_ + 1) * 1000 + n))
        batch = pa.table({
            "order_id": pa.array(ids, pa.int64()),
            "customer_id": pa.array([7] * n, pa.int64()),
            "status": pa.array(["foreign"] * n),
            "amount_cents": pa.array([1] * n, pa.int64()),
            "created_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
            "updated_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
        }).cast(schema)
        for _attempt in range(20):
            try:
                table = table.refresh()
                table.append(batch)
                appended += n
                break
            except Exception as e:  # lost the race against a lakeshore commit: retry
                if "CommitFailed" not in type(e).__name__ and "updated by another" not in str(e):
                    raise
                time.sleep(0.05)
        time.sleep(0.3)
    assert proc.poll() is None, "the pipeline ended before the foreign commits were done; slow it down"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert appended == 500
    exp = p.expected()
    rel = lake.scan(p.catalog_db, "shop.orders")
    assert duck.execute(f"select count(*) from {rel} where status = 'foreign'").fetchone()[0] == 500
    duck.execute(f"create view ours as select * from {rel} where order_id > 0")
    want = duck.execute(f"select count(*), sum(hash(order_id, customer_id, status, amount_cents)) from read_parquet('{exp / 'orders.parquet'}')").fetchone()
    got = duck.execute("select count(*), sum(hash(order_id, customer_id, status, amount_cents)) from ours").fetchone()
    assert got == want
    ops = [s.summary.operation.value for s in lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders").snapshots()]
    assert ops.count("append") >= 5, ops


def test_quickstart_pipeline_counts(tmp_path, duck):
    """The README's first command, on a copy of the quickstart pipeline."""
    text = (ROOT / "pipelines" / "quickstart.toml").read_text()
    (tmp_path / "quickstart.toml").write_text(text)
    r = subprocess.run([BIN, "backfill", "quickstart.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "lake" / "catalog.db"
    got = {t: lake.sql(duck, db, f"select count(*) from {{nexmark.{t}}}")[0][0] for t in ("person", "auction", "bid")}
    assert got == {"person": 20_000, "auction": 60_000, "bid": 920_000}
    # Running it again is a no-op: the checkpoint says the source is done.
    r = subprocess.run([BIN, "backfill", "quickstart.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert lake.sql(duck, db, "select count(*) from {nexmark.bid}")[0][0] == 920_000


def test_bad_pipeline_files_exit_2_with_located_message(tmp_path):
    corpus = sorted((ROOT / "integration" / "bad-pipelines").glob("*.toml"))
    assert len(corpus) >= 10
    for f in corpus:
        expected = f.read_text().splitlines()[0].removeprefix("# expect: ")
        r = subprocess.run([BIN, "validate", str(f)], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "LAKESHORE_TEST_SECRET": "hunter2"})
        assert r.returncode == 2, f"{f.name}: exit {r.returncode}"
        assert f"error: {f}:" in r.stderr or f"error: {f}: " in r.stderr, r.stderr
        assert expected in r.stderr, f"{f.name}: {r.stderr}"
        assert "hunter2" not in r.stderr


def test_unreachable_catalog_is_a_config_error(tmp_path):
    p = Pipeline(tmp_path, "badcat", {"type": "datagen", "profile": "orders", "events": 10},
                 {"namespace": "shop"})
    text = p.file.read_text().replace("sqlite://lake/catalog.db", "postgres://lake:s3cret@127.0.0.1:9/lake")
    p.file.write_text(text)
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "check [sink.catalog] uri" in r.stderr
    assert "s3cret" not in r.stderr


def test_run_stops_on_sigterm_with_a_final_checkpoint(tmp_path, duck):
    """`lakeshore run` on an unbounded generator: SIGTERM takes a final checkpoint, exits 0,
    and the lake holds exactly the events up to the committed source position."""
    import json
    import signal

    source = {"type": "datagen", "profile": "orders", "initial_rows": 5_000, "seed": 33, "rate": 20_000,
              "batch_events": 500}
    p = Pipeline(tmp_path, "forever", source, {"namespace": "shop", "mode": "upsert"}, interval="300ms")
    proc = subprocess.Popen([BIN, "run", str(p.file)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    position = json.loads(table.current_snapshot().summary["lakeshore.source-position"])["seq"]
    assert position > 10_000, position
    # The same generator, bounded at the committed position, is what the lake must hold.
    bounded = Pipeline(tmp_path / "bounded", "forever", {**source, "events": position},
                       {"namespace": "shop", "mode": "upsert"}) if (tmp_path / "bounded").mkdir() is None else None
    exp = bounded.expected()
    assert_same_rows(duck, p, "orders", exp / "orders.parquet", ORDER_COLUMNS)


def rewrite_while_running(p, proc, table_name, times):
    """Once `proc` has committed twice, rewrite every data file of the table `times`
    times with pyiceberg (an overwrite with the same rows), 0.5 s apart, retrying each
    rewrite that loses a race against a lakeshore commit. Returns the rewrites done."""
    table = None
    while table is None or len(table.snapshots()) < 2:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
        try:
            table = p.pyiceberg_table(table_name)
        except Exception:
            table = None
    rewrites = 0
    for _ in range(times):
        for _attempt in range(20):
            try:
                table = table.refresh()
                table.overwrite(table.scan().to_arrow())
                rewrites += 1
                break
            except Exception as e:  # lost a race against a lakeshore commit: read again
                if type(e).__name__ not in ("CommitFailedException", "ValidationException"):
                    raise
        time.sleep(0.5)
    assert proc.poll() is None, "the pipeline ended before the rewrites were done; slow it down"
    return rewrites


def test_foreign_rewrite_forces_a_new_lookup_not_a_dangling_delete(tmp_path, duck):
    """A foreign commit that rewrites every data file (pyiceberg overwrite with the same
    rows) lands while lakeshore holds position deletes into the old files: the commit must
    look its keys up again in the new files; the final table still equals the source."""
    p = Pipeline(tmp_path, "rewritten",
                 {"type": "datagen", "profile": "orders", "events": 90_000, "initial_rows": 5_000, "seed": 44,
                  "rate": 12_000, "batch_events": 500},
                 {"namespace": "shop", "mode": "upsert"}, interval="300ms")
    # The pause sits between the checkpoint record and the table commit, after the lookup.
    proc = p.start(env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "600", "RUST_LOG": "info"})
    rewrites = rewrite_while_running(p, proc, "orders", 6)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert rewrites == 6
    relookups = err.count("looked the checkpoint's keys up again")
    print(f"{rewrites} foreign rewrites, {relookups} commits looked their keys up again")
    assert relookups >= 1, "no commit had to look its keys up again; the test did not exercise the race"
    exp = p.expected()
    assert_same_rows(duck, p, "orders", exp / "orders.parquet", ORDER_COLUMNS)


def test_a_second_copy_is_fenced_off(tmp_path, duck):
    """Two copies of one pipeline race for the same checkpoint records: one stops with
    exit code 1 and says why, the other finishes, and nothing is committed twice."""
    p = Pipeline(tmp_path, "twice",
                 {"type": "datagen", "profile": "orders", "events": 40_000, "initial_rows": 5_000, "seed": 8,
                  "rate": 20_000, "batch_events": 500},
                 {"namespace": "shop", "mode": "upsert"}, interval="300ms")
    first, second = p.start(), p.start()
    results = [(proc.wait(timeout=300), proc.communicate()[1]) for proc in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "written by another running copy" in loser, loser
    # Re-running completes whatever the loser's last run left, then the lake is exact.
    p.backfill()
    exp = p.expected()
    assert_same_rows(duck, p, "orders", exp / "orders.parquet", ORDER_COLUMNS)


def test_added_source_column_lands_in_the_lake_across_crashes(tmp_path, duck):
    """The generator adds a column `note` half-way (a schema change); the lake table gains
    it (older rows read null), under kill -9 as well, and equals the folded source."""
    p = Pipeline(tmp_path, "evolving",
                 {"type": "datagen", "profile": "orders", "events": 150_000, "initial_rows": 10_000, "seed": 13,
                  "rate": 20_000, "batch_events": 500, "add_column_at": 45_000},
                 {"namespace": "shop", "mode": "upsert"}, partitioning={"orders": ["status"]}, interval="250ms")
    logs = run_with_crashes(p, kills=3, window=(0.8, 2.0), seed="evolve")
    assert any("adding columns" in log for log in logs), "no run added the column"
    exp = p.expected()
    got = assert_same_rows(duck, p, "orders", exp / "orders.parquet", ORDER_COLUMNS + ["note"])
    rel = lake.scan(p.catalog_db, "shop.orders")
    with_note = duck.execute(f"select count(*) from {rel} where note is not null").fetchone()[0]
    assert 0 < with_note < got[0]
    schema = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders").schema()
    assert schema.find_field("note").field_type.__class__.__name__ == "StringType"
