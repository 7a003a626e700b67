"""Everything on S3 (moto): a daemon runs an Iceberg upsert pipeline whose warehouse is on
S3 and a Hive pipeline on S3, both keeping their checkpoints on S3 (the daemon file's
`state`). S3 freezes for 8 s in the middle, with a pause inside every commit so that the
outage lands mid-commit: the pipelines stall and recover by themselves, and DuckDB
(reading S3 itself) finds exactly the generator's rows."""
import os
import time

from conftest import Pipeline, assert_same_rows
from test_daemon import Daemon
from test_lake import ORDER_COLUMNS


def test_warehouse_state_and_hive_on_s3_survive_an_outage_mid_commit(tmp_path, s3, duck):
    bucket = s3.bucket("everything")
    d = tmp_path / "pipelines"
    d.mkdir()
    daemon_file = tmp_path / "lakeshore.toml"
    daemon_file.write_text(f'state = "s3://{bucket}/state"\nwatch_interval = "1h"\n'
                           '[restart]\ninitial_backoff = "500ms"\nmax_backoff = "2s"\n')
    orders = {"type": "datagen", "profile": "orders", "initial_rows": 3_000, "seed": 8, "events": 40_000,
              "rate": 2_500, "batch_events": 250}
    p = Pipeline(d, "orders", orders, {"namespace": "shop", "mode": "upsert", "storage": s3.storage()},
                 interval="400ms")
    # The warehouse on S3 (the catalog database stays a local SQLite file).
    p.file.write_text(p.file.read_text().replace('warehouse = "lake/warehouse"', f'warehouse = "s3://{bucket}/wh"'))
    bids = {"type": "datagen", "profile": "nexmark", "seed": 3, "events": 30_000, "rate": 2_000,
            "batch_events": 250}
    Pipeline(d, "bids", bids, {"type": "hive", "path": f"s3://{bucket}/hive", "storage": s3.storage()},
             interval="400ms")
    os.environ["LAKESHORE_TEST_COMMIT_PAUSE_MS"] = "150"
    try:
        daemon = Daemon(d, [d], "--config", str(daemon_file))
    finally:
        os.environ.pop("LAKESHORE_TEST_COMMIT_PAUSE_MS")
    try:
        daemon.committing("orders")
        daemon.committing("bids")
        s3.pause()
        try:
            time.sleep(8)
        finally:
            s3.resume()
        # Both bounded: the daemon exits 0 once both are done.
        assert daemon.proc.wait(timeout=240) == 0, daemon.log.read_text()[-3000:]
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
    # Checkpoints on S3, none on the local disk.
    assert s3.keys(bucket, "state/orders/checkpoints/") and s3.keys(bucket, "state/bids/checkpoints/")
    assert not (d / "state").exists() and not (d / "lake" / "warehouse").exists()
    assert any(k.startswith("wh/") for k in s3.keys(bucket, "wh/"))
    s3.duck(duck)
    expected = Pipeline(tmp_path / "expected", "orders", orders, {"namespace": "shop", "mode": "upsert"}) \
        if (tmp_path / "expected").mkdir() is None else None
    assert_same_rows(duck, p, "orders", expected.expected() / "orders.parquet", ORDER_COLUMNS)
    # Hive: every bid of the generator once.
    digest = "select count(*), sum(hash(b)) from read_parquet('{}') b"
    want = duck.execute(digest.format(expected_bids(tmp_path, bids))).fetchone()
    got = duck.execute(digest.format(f"s3://{bucket}/hive/bid/**/*.parquet")).fetchone()
    assert got == want and want[0] > 20_000, (got, want)


def expected_bids(tmp_path, bids):
    e = Pipeline(tmp_path / "expected-bids", "bids", bids, {"namespace": "n"}) \
        if (tmp_path / "expected-bids").mkdir() is None else None
    return e.expected() / "bid.parquet"
