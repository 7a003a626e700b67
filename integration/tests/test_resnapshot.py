"""`POST /pipelines/{name}/resnapshot?table=`: a table whose lake copy drifted from the
source (here: a foreign writer added rows) is emptied and read again while changes keep
flowing, across a kill -9 in the middle, and ends equal to the source; the source's lag
is reported per pipeline. Checked with DuckDB against the source's own rows."""
import signal

import lake
import pyarrow as pa
import pytest
import test_kafka
import test_mysql
import test_postgres
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import Daemon


def source_setup(kind, server, d):
    """The source table under churn, its pipeline, and how to compare lake and source."""
    if kind == "postgres":
        db = test_postgres.setup_acct(server, "resnap", 300000)
        churn = test_postgres.Churn(server, db, 300001, seed=11)
        p = test_postgres.pg_pipeline(d, "resnap_pg", server, db, ["public.acct"], chunk_size=300)
        table = "public.acct"

        def same(duck):
            test_postgres.assert_lake_equals_source(duck, server, db, p, "acct", test_postgres.ACCT_COLUMNS)
    else:
        db = test_mysql.setup_acct(server, "resnap", 300000)
        churn = test_mysql.Churn(server, db, 300001, seed=11)
        p = test_mysql.my_pipeline(d, "resnap_my", server, ["resnap.acct"], chunk_size=300)
        table = "resnap.acct"

        def same(duck):
            test_mysql.assert_same(duck, server, db, p, "acct", test_mysql.ACCT_COLUMNS)
    return churn, p, table, same


def drift(p):
    """A foreign writer appends 500 rows the source never had (keys -1 .. -500)."""
    t = lake.pyiceberg_table(p.catalog_db, p.warehouse, p.table("acct"))
    one = t.scan(limit=1).to_arrow()
    rows = pa.concat_tables([one] * 500)
    ids = pa.array(range(-1, -501, -1), rows.schema.field("id").type)
    t.append(rows.set_column(rows.schema.get_field_index("id"), rows.schema.field("id"), ids))


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_resnapshot_refills_a_drifted_table_while_changes_flow(tmp_path, request, duck, kind):
    server = request.getfixturevalue(kind)
    d = tmp_path / "pipelines"
    d.mkdir()
    churn, p, table, same = source_setup(kind, server, d)

    def count(where=""):
        return duck.execute(f"select count(*) from {lake.scan(p.catalog_db, p.table('acct'))} {where}").fetchone()[0]

    churn.start()
    daemon = Daemon(d, [d])
    try:
        daemon.wait(lambda: daemon.status()[0][p.name]["snapshot"].get(table) == "done", 120, "the first snapshot ends")
        daemon.committing(p.name)
        drift(p)
        assert count("where id < 0") == 500

        # Errors first: they change nothing.
        code, text = daemon.post(f"/pipelines/{p.name}/resnapshot")
        assert code == 400 and "name the table" in text, (code, text)
        code, text = daemon.post(f"/pipelines/{p.name}/resnapshot?table=nope")
        assert code == 400 and f"no table nope in this pipeline; its tables are {table}" in text, (code, text)
        assert daemon.post("/pipelines/nope/resnapshot?table=x")[0] == 404

        # By lake table name; answered once the checkpoint that empties the table is in.
        code, text = daemon.post(f"/pipelines/{p.name}/resnapshot?table=acct")
        assert code == 200 and '"checkpoint"' in text, (code, text)
        assert count("where id < 0") == 0, "the foreign rows survived the checkpoint that started the re-snapshot"
        # kill -9 while the table is read again; a new daemon goes on from the checkpoint.
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=30)
        killed_log = daemon.log.read_text()
        assert "re-snapshot requested" in killed_log
        after_request = killed_log[killed_log.index("re-snapshot requested"):]
        assert "snapshot complete" not in after_request, "the kill came after the re-snapshot ended"
        daemon = Daemon(d, [d])
        # Read to the end when the last checkpoint's position says so (the new daemon sees
        # no snapshot events if the re-read ended before the kill).
        daemon.wait(lambda: ((daemon.status()[0][p.name]["source_position"] or {}).get("tables") or {})
                    .get(table) == "done", 180, "the re-snapshot ends after the restart")
        daemon.wait(lambda: daemon.status()[0][p.name]["lag"], 30, "the lag is measured")
        status = daemon.status()[0][p.name]
        lag = status["lag"]
        assert lag and lag["unit"] == "bytes" and lag["seconds"] is not None and lag["seconds"] >= 0, status
        families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics")[1])}
        assert any(s.labels["pipeline"] == p.name for s in families["lakeshore_source_lag_seconds"].samples)
        churn.stop()
        daemon.committing(p.name)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        churn.halt.set()
    p.backfill()  # everything committed before it started
    same(duck)
    assert count("where id < 0") == 0


def test_a_source_without_snapshots_says_so_and_reports_its_lag(tmp_path, kafka):
    """A Kafka source has nothing to read again: the daemon says so. Its lag is counted
    in messages."""
    topic = kafka.topic("resnap-kafka", 2)
    kafka.produce(topic, [test_kafka.event(i) for i in range(5000)])
    d = tmp_path / "pipelines"
    d.mkdir()
    test_kafka.kafka_pipeline(d, "k", kafka, [topic])
    daemon = Daemon(d, [d])
    try:
        daemon.committing("k")
        code, text = daemon.post(f"/pipelines/k/resnapshot?table={topic}")
        assert code == 409 and "only database sources (postgres, mysql) take snapshots" in text, (code, text)
        daemon.wait(lambda: (daemon.status()[0]["k"]["lag"] or {}).get("behind") == 0, 30, "the Kafka lag is 0")
        assert daemon.status()[0]["k"]["lag"]["unit"] == "messages"
    finally:
        assert daemon.stop() == 0
