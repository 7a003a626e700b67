"""`lakeshore maintain`: compaction of an upsert table written over many checkpoints.
The compacted table read by DuckDB and pyiceberg equals the state before and the
generator's folded state; its delete files are gone; ingestion committing meanwhile loses
and duplicates nothing; kill -9 in the middle of a compaction leaves the table as it was,
and the next run finishes the job."""
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import lake
from conftest import BIN, Pipeline, assert_same_rows, table_digest
from test_lake import ORDER_COLUMNS


def orders(d, name, events, rate, spec=None, interval="100ms", when=None):
    sink = {"namespace": "shop", "mode": "upsert"}
    if when is not None:
        sink["maintenance"] = {"compact_when": when}
    return Pipeline(d, name, {"type": "datagen", "profile": "orders", "events": events, "initial_rows": 20_000,
                              "seed": 9, "rate": rate, "batch_events": 1000},
                    sink, partitioning={"orders": spec} if spec else None, interval=interval)


def maintain(p, *args, env=None):
    out = subprocess.run([BIN, "maintain", str(p.file), *args], cwd=p.dir, capture_output=True, text=True,
                         timeout=600, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout


def files_by_content(duck, p):
    """Live files by manifest content (DATA, DELETE), as DuckDB reads the metadata."""
    rows = duck.execute(f"select manifest_content, count(*) from iceberg_metadata('{lake.metadata_location(p.catalog_db, p.table('orders'))}') "
                        "where status != 'DELETED' group by all").fetchall()
    return dict(rows)


def digest(duck, p):
    return table_digest(duck, lake.scan(p.catalog_db, p.table("orders")), ORDER_COLUMNS)


def test_compaction_keeps_every_row_and_drops_the_deletes(tmp_path, duck):
    p = orders(tmp_path, "compact", 120_000, 30_000, spec=["status"])
    p.backfill()
    before = digest(duck, p)
    files = files_by_content(duck, p)
    assert files.get("DELETE", 0) >= 10 and files["DATA"] >= 20, files
    out = maintain(p)
    assert re.search(r"orders: [1-9]\d* partitions compacted", out), out
    assert "now" in out and ", 0 delete files" in out, out
    after = files_by_content(duck, p)
    assert after.get("DELETE", 0) == 0 and after["DATA"] < files["DATA"], after
    assert digest(duck, p) == before
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    assert table.scan().to_arrow().num_rows == before[0]
    assert table.current_snapshot().summary.operation.value == "replace"
    # Compaction's removals and the commits' manifests merged: one manifest per content.
    assert "manifests merged" in out, out
    manifests = duck.execute(f"select count(distinct manifest_path) from iceberg_metadata('{lake.metadata_location(p.catalog_db, p.table('orders'))}')").fetchone()[0]
    assert manifests == 1, manifests
    # Nothing left to do: a second run changes nothing.
    assert "orders: 0 partitions compacted" in maintain(p)
    # Ingestion goes on over the compacted files (its lookups find the rewritten rows).
    p.file.write_text(p.file.read_text().replace("events = 120000", "events = 160000"))
    p.backfill()
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def test_compaction_while_ingestion_commits_loses_nothing(tmp_path, duck):
    """Compaction runs again and again while the pipeline commits every 100 ms; deletes
    that land on files being rewritten are moved onto the new files."""
    p = orders(tmp_path, "busy", 200_000, 15_000, when={"delete_files": 1, "small_files": 2, "deleted_ratio": 0.0})
    run = p.start()
    outs = []
    try:
        deadline = time.time() + 120
        while run.poll() is None and time.time() < deadline:
            try:
                lake.metadata_location(p.catalog_db, p.table("orders"))
            except (KeyError, Exception):
                time.sleep(0.2)
                continue
            # Every other run holds its rewrite 300 ms before committing: ingestion
            # commits deletes into the files being rewritten meanwhile.
            pause = "300" if len(outs) % 2 else "0"
            outs.append(maintain(p, env={"LAKESHORE_TEST_COMPACT_PAUSE_MS": pause}))
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    finally:
        if run.poll() is None:
            run.kill()
    compacted = [o for o in outs if not re.search(r"orders: 0 partitions compacted", o)]
    assert len(compacted) >= 3, outs
    moved = sum(int(m) for o in outs for m in re.findall(r"(\d+) deletes moved", o))
    conflicts = sum(int(m) for o in outs for m in re.findall(r"(\d+) conflicts", o))
    print(f"{len(outs)} runs, {len(compacted)} compacted, {moved} deletes moved, {conflicts} conflicts")
    assert moved > 0, outs
    maintain(p)
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
    assert files_by_content(duck, p).get("DELETE", 0) == 0


def test_kill_9_during_compaction_leaves_the_table_as_it_was(tmp_path, duck):
    p = orders(tmp_path, "killed", 150_000, 40_000, spec=["bucket[4](customer_id)"], interval="100ms")
    p.backfill()
    before = digest(duck, p)
    rng = random.Random(3)
    killed = 0
    for _ in range(6):
        m = subprocess.Popen([BIN, "maintain", str(p.file)], cwd=p.dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.05, 0.6))
        if m.poll() is None:
            m.send_signal(signal.SIGKILL)
            killed += 1
        m.communicate(timeout=60)
        assert digest(duck, p) == before
        if m.returncode == 0:
            break
    assert killed >= 1, "every compaction finished before its kill"
    out = maintain(p)
    assert ", 0 delete files" in out, out
    assert digest(duck, p) == before
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def test_bad_maintenance_settings_say_what_to_write(tmp_path):
    p = orders(tmp_path, "bad", 1000, 0, when={"deleted_ratio": 5})
    out = subprocess.run([BIN, "validate", str(p.file)], capture_output=True, text=True)
    assert out.returncode == 2
    assert re.search(r"bad.toml:\d+:\d+: deleted_ratio is a fraction of the rows, between 0.0 and 1.0", out.stderr), \
        out.stderr
    hive = Pipeline(tmp_path, "hv", {"type": "datagen", "profile": "orders", "events": 10},
                    {"type": "hive", "path": "lake/hive"})
    out = subprocess.run([BIN, "maintain", str(hive.file)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "maintenance works on Iceberg tables" in out.stderr, out.stderr


def test_snapshot_expiry_deletes_what_only_old_snapshots_reach(tmp_path, duck):
    """Expiry after compaction: the old snapshots and the files only they reached go; the
    pipeline's newest commit stays (its recovery walks back to it), every remaining
    snapshot reads, and the pipeline resumes on the expired table."""
    p = orders(tmp_path, "expire", 80_000, 40_000, spec=["status"])
    text = p.file.read_text()
    p.file.write_text(text + '\n[sink.maintenance]\nexpire_snapshots_older_than = "1s"\n')
    p.backfill()
    data_dir = p.warehouse / "shop" / "orders" / "data"
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    assert len(table.snapshots()) >= 10
    time.sleep(1.5)
    out = maintain(p)
    # The pipeline's newest commit and the compaction after it stay; the rest expired.
    m = re.search(r"(\d+) snapshots expired, (\d+) files deleted", out)
    assert m and int(m.group(1)) >= 8 and int(m.group(2)) > 0, out
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    remaining = sorted(table.snapshots(), key=lambda s: s.sequence_number)
    assert remaining[-1].summary.operation.value == "replace"
    assert "lakeshore.pipeline" in remaining[0].summary.additional_properties, remaining
    # More ingestion, then expiry again: the compacted-away files go too.
    p.file.write_text(p.file.read_text().replace("events = 80000", "events = 100000"))
    p.backfill()
    time.sleep(1.5)
    maintain(p)
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    live = set()
    for s in table.snapshots():
        assert table.scan(snapshot_id=s.snapshot_id).to_arrow().num_rows > 0  # every remaining snapshot reads
        live |= {r["data_file"]["file_path"].removeprefix("file://")
                 for r in table.inspect.entries(snapshot_id=s.snapshot_id).to_pylist() if r["status"] != 2}
    live = {f for f in live if "/data/" in f}
    disk = {str(f) for f in data_dir.rglob("*.parquet")}
    assert disk == live, f"{len(disk - live)} files on disk that no snapshot reaches, {len(live - disk)} missing"
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
    # The pipeline's recovery still finds its last checkpoint: a re-run adds nothing.
    before = digest(duck, p)
    p.backfill()
    assert digest(duck, p) == before


def test_orphan_cleanup_keeps_what_is_referenced_and_the_pending_checkpoint(tmp_path, duck):
    """A pipeline killed between writing its checkpoint record and committing it leaves
    written-but-unreferenced files that its recovery needs; a lost file nobody needs is
    an orphan. With every file's age pushed back two hours, cleanup removes the orphan
    only: the recovery then commits the pending checkpoint and the table equals the
    generator's state."""
    p = orders(tmp_path, "orphans", 60_000, 20_000, interval="300ms")
    p.file.write_text(p.file.read_text() + '\n[sink.maintenance]\nremove_orphans_older_than = "1h"\n')
    records = tmp_path / "lake" / "state" / "orphans" / "checkpoints"
    run = p.start(env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "4000"})
    deadline = time.time() + 60
    while not (records.exists() and len(list(records.glob("*.json"))) >= 2):
        assert time.time() < deadline and run.poll() is None, run.communicate()[1]
        time.sleep(0.05)
    time.sleep(0.3)  # inside the 4 s pause after the second record
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    data_dir = p.warehouse / "shop" / "orders" / "data"
    orphan = data_dir / "lost-by-a-killed-commit.parquet"
    orphan.write_bytes(next(iter(data_dir.rglob("*.parquet"))).read_bytes())
    old = time.time() - 7200
    for f in (tmp_path / "lake").rglob("*"):
        if f.is_file():
            os.utime(f, (old, old))
    fresh_orphan = data_dir / "written-a-moment-ago.parquet"
    fresh_orphan.write_bytes(orphan.read_bytes())
    out = maintain(p)
    assert re.search(r"[1-9]\d* orphan files deleted", out), out
    assert not orphan.exists() and fresh_orphan.exists()
    fresh_orphan.unlink()
    # The recovery commits the pending checkpoint: had cleanup taken its files, rows would
    # be missing (or the scan would fail).
    _, err = p.backfill()
    assert "recovered: committed pending files of the last checkpoint" in err, err[-2000:]
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def test_the_daemon_maintains_in_the_background(tmp_path, duck):
    """`[sink.maintenance] interval`: the daemon compacts the pipeline's table while the
    pipeline runs, and publishes the table's file metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    from test_daemon import Daemon

    d = tmp_path / "pipelines"
    d.mkdir()
    p = orders(d, "bg", 60_000, 3_000, interval="200ms")
    p.file.write_text(p.file.read_text() + '\n[sink.maintenance]\ninterval = "2s"\n'
                      'compact_when = { delete_files = 3 }\n')
    daemon = Daemon(d, [d])
    try:
        def metric(name):
            families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics")[1])}
            return {s.labels.get("table"): s.value for s in families[name].samples} if name in families else {}

        daemon.wait(lambda: "shop.orders" in metric("lakeshore_table_last_maintenance_timestamp_seconds"), 30,
                    "the daemon maintains the table")
        daemon.wait(lambda: "maintenance done" in daemon.log.read_text()
                    and re.search(r"maintenance done.*partitions=[1-9]", daemon.log.read_text()), 60,
                    "a background compaction")
        assert metric("lakeshore_table_data_files")["shop.orders"] >= 1
    finally:
        assert daemon.stop() == 0
    p.backfill()  # the rest of the bounded source
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def test_a_million_rows_and_a_million_changes_compact_to_the_source_state(tmp_path, duck):
    """The issue's scale: 1M rows, then 1M changes over 1 s checkpoints (hundreds of
    thousands of position deletes into committed files), compacted: DuckDB reads the
    generator's folded state, with no delete file left."""
    p = Pipeline(tmp_path, "million", {"type": "datagen", "profile": "orders", "events": 2_000_000,
                                        "initial_rows": 1_000_000, "seed": 1, "rate": 200_000},
                 {"namespace": "shop", "mode": "upsert"}, interval="1s")
    p.backfill()
    before = digest(duck, p)
    assert files_by_content(duck, p).get("DELETE", 0) >= 5
    out = maintain(p)
    assert re.search(r"orders: [1-9]\d* partitions compacted", out), out
    assert files_by_content(duck, p).get("DELETE", 0) == 0
    assert digest(duck, p) == before
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


EQ_DELETES = str(Path(BIN).parent / "examples" / "equality_deletes")


def foreign_equality_deletes(duck, p, where):
    """Another writer (iceberg-rust's equality-delete writer, as Flink CDC writes them)
    deletes the live rows `where` picks, by order_id; returns how many."""
    rows = p.dir / f"eq-{abs(hash(where))}.parquet"
    duck.execute(f"copy (select * from {lake.scan(p.catalog_db, p.table('orders'))} where {where}) to '{rows}'")
    n = duck.execute(f"select count(*) from read_parquet('{rows}')").fetchone()[0]
    out = subprocess.run([EQ_DELETES, f"sqlite:///{p.catalog_db.resolve()}", str(p.warehouse.resolve()),
                          p.table("orders"), "order_id", str(rows)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return n


def expected_without(duck, p, where):
    """The generator's folded state minus the rows `where` picks."""
    out = p.dir / f"expected-{abs(hash(where))}.parquet"
    duck.execute(f"copy (select * from read_parquet('{p.expected() / 'orders.parquet'}') where not ({where})) to '{out}'")
    return out


def content_counts(p):
    """Live files by content (0 data, 1 position deletes, 2 equality deletes), as
    pyiceberg reads the metadata."""
    files = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders").inspect.files().to_pylist()
    counts = {}
    for f in files:
        counts[f["content"]] = counts.get(f["content"], 0) + 1
    return counts


def data_paths(duck, p):
    return set(r[0] for r in duck.execute(
        f"select file_path from iceberg_metadata('{lake.metadata_location(p.catalog_db, p.table('orders'))}') "
        "where status != 'DELETED' and manifest_content = 'DATA'").fetchall())


def test_equality_deletes_of_another_writer_are_applied_and_keep_applying(tmp_path, duck):
    """Equality deletes committed before the compaction are applied by its rewrite;
    those committed while it runs still apply to the rewritten files (they keep the
    base's sequence number); the next run turns them into position deletes without
    rewriting any data file, and pyiceberg (which refuses equality deletes) reads it."""
    p = orders(tmp_path, "foreign", 60_000, 0, spec=["status"], when={"deleted_ratio": 0.0})
    p.backfill()
    first, second = "order_id % 40 = 0", "order_id % 40 = 1"
    n1 = foreign_equality_deletes(duck, p, first)
    assert n1 > 100 and content_counts(p).get(2, 0) >= 2
    assert_same_rows(duck, p, "orders", expected_without(duck, p, first), ORDER_COLUMNS)
    # A compaction that holds its rewrite 4 s: the second writer commits meanwhile.
    m = subprocess.Popen([BIN, "maintain", str(p.file)], cwd=p.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "LAKESHORE_TEST_COMPACT_PAUSE_MS": "4000"})
    time.sleep(1.5)
    n2 = foreign_equality_deletes(duck, p, second)
    out, err = m.communicate(timeout=120)
    assert m.returncode == 0, err
    assert re.search(rf"{n1} rows removed by equality deletes", out), out
    assert n2 > 100
    both = f"({first}) or ({second})"
    assert_same_rows(duck, p, "orders", expected_without(duck, p, both), ORDER_COLUMNS)
    counts = content_counts(p)
    assert counts.get(1, 0) == 0 and counts.get(2, 0) >= 2, (counts, out)  # only the late ones
    # The late equality deletes are few: merged into position deletes, data kept.
    p.file.write_text(p.file.read_text().replace('"deleted_ratio" = 0.0', '"deleted_ratio" = 0.5'))
    assert '"deleted_ratio" = 0.5' in p.file.read_text()
    data = data_paths(duck, p)
    out = maintain(p)
    assert re.search(rf"{n2} rows removed by equality deletes", out) and "partitions merged" in out, out
    assert "orders: 0 partitions compacted" in out, out
    assert data_paths(duck, p) == data
    counts = content_counts(p)
    assert counts.get(2, 0) == 0 and 1 <= counts.get(1, 0) <= counts[0], counts
    assert_same_rows(duck, p, "orders", expected_without(duck, p, both), ORDER_COLUMNS)
    table = lake.pyiceberg_table(p.catalog_db, p.warehouse, "shop.orders")
    assert table.scan().to_arrow().num_rows == duck.execute(
        f"select count(*) from {lake.scan(p.catalog_db, p.table('orders'))}").fetchone()[0]


def test_many_small_delete_files_merge_without_a_rewrite(tmp_path, duck):
    """Few deleted rows in many delete files: the data files stay, each partition's
    delete files become one."""
    p = orders(tmp_path, "merge", 40_000, 20_000, spec=["status"], when={"delete_files": 2, "deleted_ratio": 0.99, "small_files": 100000})
    p.backfill()
    before = digest(duck, p)
    data = data_paths(duck, p)
    counts = content_counts(p)
    assert counts.get(1, 0) > 2 * 4, counts
    out = maintain(p)
    assert "orders: 0 partitions compacted" in out and "partitions merged" in out, out
    assert data_paths(duck, p) == data
    after = content_counts(p)
    partitions = duck.execute(f"select count(distinct status) from {lake.scan(p.catalog_db, p.table('orders'))}").fetchone()[0]
    assert 1 <= after.get(1, 0) <= partitions, after
    assert digest(duck, p) == before
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
    assert "partitions merged" not in maintain(p)


def test_the_daemon_keeps_tables_compacted_without_settings(tmp_path, duck):
    """No `[sink.maintenance]`: the daemon compacts an upsert table under changes as its
    estimated read cost grows, one round at a time within its time share (a round starts
    no sooner than 4x the previous one's duration after it), keeps every snapshot younger
    than 10 minutes, deletes metadata files that leave the log, and leaves the table
    compacted when the bounded run ends; every row equals the generator's. Beside it, the
    same pipeline with `auto = false` (never compacted: its delete files pile up) and one
    with `max_snapshots = 50` (expired down to 50 whenever over 62)."""
    from test_daemon import Daemon

    d = tmp_path / "pipelines"
    d.mkdir()
    source = {"type": "datagen", "profile": "orders", "events": 130_000, "initial_rows": 20_000, "seed": 9,
              "rate": 4_000, "batch_events": 500}
    auto = Pipeline(d, "auto", source, {"namespace": "shop", "mode": "upsert"}, interval="100ms")
    manual = Pipeline(d, "manual", source, {"namespace": "manual", "mode": "upsert", "maintenance": {"auto": False}},
                      interval="100ms")
    capped = Pipeline(d, "capped", source, {"namespace": "capped", "mode": "upsert",
                                            "maintenance": {"max_snapshots": 50}}, interval="100ms")
    daemon = Daemon(d, [d])
    peak = 0
    try:
        # The daemon exits once the bounded pipelines have finished.
        while daemon.proc.poll() is None:
            try:
                peak = max(peak, sum(files_by_content(duck, auto).values()))
            except (KeyError, sqlite3.OperationalError):  # not created yet
                pass
            time.sleep(0.5)
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
    log = daemon.log.read_text()
    assert daemon.proc.returncode == 0, log[-3000:]
    rounds = [(m.group(1), int(m.group(3))) for m in re.finditer(
        r"^(\S+)Z .*maintenance done pipeline=(\w+) .*took_ms=(\d+)", log, re.M) if m.group(2) in ("auto", "capped")]
    assert len(rounds) >= 6, log[-3000:]
    assert "pipeline=manual" not in "".join(line for line in log.splitlines() if "maintenance done" in line)

    from datetime import datetime
    at = [datetime.fromisoformat(t).timestamp() for t, _ in rounds]
    for (end_a, (_, took_a)), (end_b, (_, took_b)) in zip(zip(at, rounds), zip(at[1:], rounds[1:])):
        gap = (end_b - took_b / 1000) - end_a
        assert gap >= 4 * took_a / 1000 - 0.01, (gap, took_a, rounds)

    left = files_by_content(duck, auto)
    assert left.get("DATA") == 1 and not left.get("DELETE"), left
    piled = files_by_content(duck, manual)
    assert piled.get("DELETE", 0) >= 60, piled
    assert peak < sum(piled.values()) / 3, (peak, piled)

    def snapshots(p, table):
        return len(lake.pyiceberg_table(p.catalog_db, p.warehouse, table).snapshots())

    n_auto, n_manual, n_capped = snapshots(auto, "shop.orders"), snapshots(manual, "manual.orders"), \
        snapshots(capped, "capped.orders")
    assert n_manual > 100 and n_auto > 100, (n_auto, n_manual)
    # Expired down to 50 whenever over 62; commits since the last round add a few.
    assert n_capped <= 90 and n_capped < n_manual / 2 and re.search(r"maintenance done pipeline=capped .*expired=[1-9]", log), n_capped
    metadata = list((auto.warehouse / "shop" / "orders" / "metadata").glob("*.metadata.json"))
    assert len(metadata) <= 102, len(metadata)
    for p in (auto, manual, capped):
        assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
