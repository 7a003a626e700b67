"""Google Cloud Storage (fake-gcs-server) and Azure Blob Storage (Azurite): the Nexmark
generator into an Iceberg warehouse on each, with its checkpoints next to it and kill -9
in the middle, read back by pyiceberg (pyarrow's own GCS and Azure clients) against the
generator's own rows; and into the Hive sink on each, every bid once and `_SUCCESS` in
every day partition once the bounded run ends (its watermark passes the end of time)."""
import pyarrow.dataset as ds
import pytest

from cloudservers import keys
from conftest import Pipeline, run_with_crashes, table_digest
from test_lake import NEXMARK_COLUMNS

STORES = ["gcs", "azure"]


@pytest.fixture(params=STORES)
def store(request):
    return request.getfixturevalue(request.param)


def sql_catalog(p, store):
    from pyiceberg.catalog.sql import SqlCatalog
    return SqlCatalog("lakeshore", uri=f"sqlite:///{p.catalog_db}", **store.pyiceberg_props())


def assert_same_as(duck, arrow, expected_parquet, columns, what):
    duck.register("lake_rows", arrow)
    exp = f"read_parquet('{expected_parquet}')"
    cols = ", ".join(columns)
    missing = duck.execute(f"select count(*) from (select {cols} from {exp} except all "
                           f"select {cols} from lake_rows)").fetchone()[0]
    extra = duck.execute(f"select count(*) from (select {cols} from lake_rows except all "
                         f"select {cols} from {exp})").fetchone()[0]
    assert (missing, extra) == (0, 0), f"{what}: {missing} rows missing, {extra} rows extra"
    assert table_digest(duck, "lake_rows", columns) == table_digest(duck, exp, columns)
    duck.unregister("lake_rows")


def test_nexmark_into_an_iceberg_warehouse_survives_kill_9(tmp_path, duck, store):
    bucket = store.bucket(f"wh-{tmp_path.name[-20:].lower().replace('_', '-')}")
    source = {"type": "datagen", "profile": "nexmark", "events": 600_000, "seed": 17, "rate": 60_000,
              "batch_events": 1000}
    p = Pipeline(tmp_path, "nx", source, {"namespace": "nexmark", "mode": "append", "storage": store.storage()},
                 partitioning={"bid": ["hour(date_time)"]}, interval="300ms")
    warehouse = store.url(bucket, "lake/warehouse")
    p.file.write_text(p.file.read_text().replace('warehouse = "lake/warehouse"', f'warehouse = "{warehouse}"'))
    logs = run_with_crashes(p, kills=3, window=(0.8, 2.0), env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "100"},
                            seed=store.name)
    assert sum("resuming" in log for log in logs) >= 2, logs[-1][-2000:]
    # Tables and checkpoints in the bucket, nothing on the local disk but the catalog.
    assert keys(store, bucket, "lake/warehouse/nexmark/bid/data/")
    assert keys(store, bucket, "lake/state/nx/checkpoints/")
    assert not (tmp_path / "lake" / "warehouse").exists() and not (tmp_path / "state").exists()
    exp = p.expected()
    catalog = sql_catalog(p, store)
    for table, columns in NEXMARK_COLUMNS.items():
        t = catalog.load_table(f"nexmark.{table}")
        assert t.metadata_location.startswith(warehouse), t.metadata_location
        assert_same_as(duck, t.scan().to_arrow(), exp / f"{table}.parquet", columns, table)


def test_nexmark_into_hive_with_success_markers(tmp_path, duck, store):
    bucket = store.bucket(f"hive-{tmp_path.name[-20:].lower().replace('_', '-')}")
    source = {"type": "datagen", "profile": "nexmark", "events": 200_000, "seed": 4}
    p = Pipeline(tmp_path, "bids", source, {"type": "hive", "path": store.url(bucket, "lake"),
                                             "storage": store.storage(),
                                             "partition_by": ["dt=date(date_time)"]})
    p.backfill()
    names = keys(store, bucket, "lake/bid/")
    days = {n.split("/")[2] for n in names if n.endswith(".parquet")}
    assert days and all(d.startswith("dt=") for d in days), names[:10]
    done = {n.split("/")[2] for n in names if n.endswith("/_SUCCESS")}
    assert done == days, f"partitions without _SUCCESS: {sorted(days - done)}"
    # Checkpoint state on the store too (next to the table), nothing staged left behind.
    assert keys(store, bucket, "lake/_lakeshore/state/bids/checkpoints/")
    assert not [k for k in keys(store, bucket, "lake/_lakeshore/") if "/staging/" in k]
    lake = ds.dataset(f"{bucket}/lake/bid", filesystem=store.fs, format="parquet", partitioning="hive")
    expected = Pipeline(tmp_path / "expected", "bids", source, {"namespace": "n"}) \
        if (tmp_path / "expected").mkdir() is None else None
    columns = NEXMARK_COLUMNS["bid"]
    assert_same_as(duck, lake.to_table(columns=columns), expected.expected() / "bid.parquet", columns, "bid")
