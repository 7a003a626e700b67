"""Shared helpers: the lakeshore binary, pipeline files in a temporary directory, and the
independent readers (DuckDB, pyiceberg) from integration/lake.py."""
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lake  # noqa: E402
from myserver import MyServer  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("LAKESHORE_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "lakeshore" / "target")) / "release" / "lakeshore"
)


class Pipeline:
    """A pipeline file in its own directory, with the lake next to it."""

    def __init__(self, workdir: Path, name: str, source: dict, sink: dict, partitioning=None, interval="200ms",
                 lakana=None):
        """`lakana`: commit through that REST catalog instead of an SQLite catalog."""
        self.dir = workdir
        self.lakana = lakana
        self.name = name
        self.file = workdir / f"{name}.toml"
        self.catalog_db = workdir / "lake" / "catalog.db"
        self.warehouse = workdir / "lake" / "warehouse"
        if source.get("type") == "mysql" and os.environ.get("LAKESHORE_TEST_WATERMARKS") == "1" \
                and "snapshot_watermarks" not in source:
            # The MariaDB suite's second pass: every snapshot read between watermarks
            # (test.sh), in the database of the pipeline's first table.
            db = source["tables"][0].split(".")[0]
            source = {**source, "snapshot_watermarks": f"{db}.lakeshore_watermarks"}
        lines = ["[pipeline]", f'name = "{name}"', f'checkpoint_interval = "{interval}"', "", "[source]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in source.items()]
        if sink.get("type", "iceberg") == "iceberg":
            lines += ["", "[sink]", 'type = "iceberg"']
            if lakana is not None:
                lines.append(f"catalog = {toml_value(lakana.sink_catalog())}")
            else:
                lines.append('catalog = { type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }')
            self.namespace = sink["namespace"]
        else:
            lines += ["", "[sink]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in sink.items()]
        if partitioning:
            lines += ["", "[sink.partitioning]"]
            lines += [f"{t} = {toml_value(v)}" for t, v in partitioning.items()]
        self.file.write_text("\n".join(lines) + "\n")

    def start(self, env=None):
        return subprocess.Popen(
            [BIN, "backfill", str(self.file)], cwd=self.dir,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(self.lakana.env() if self.lakana else {}), **(env or {})},
        )

    def backfill(self, env=None):
        p = self.start(env)
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"backfill failed ({p.returncode}):\n{err}"
        return out, err

    def expected(self, env=None):
        out = self.dir / "expected"
        subprocess.run([BIN, "expected", str(self.file), "--out", str(out)], cwd=self.dir, check=True,
                       capture_output=True,
                       env={**os.environ, **(self.lakana.env() if self.lakana else {}), **(env or {})})
        return out

    def table(self, name):
        return f"{self.namespace}.{name}"

    def scan(self, name):
        """A DuckDB table expression of the lake table's current snapshot."""
        if self.lakana is not None:
            return self.lakana.scan(self.table(name))
        return lake.scan(self.catalog_db, self.table(name))

    def pyiceberg_table(self, name):
        if self.lakana is not None:
            return self.lakana.catalog().load_table(self.table(name))
        return lake.pyiceberg_table(self.catalog_db, self.warehouse, self.table(name))


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + " }"
    return str(v)


@pytest.fixture
def duck():
    return lake.duck()


def table_digest(con, relation, columns):
    """(count, order-independent checksum) of a relation, computed by DuckDB."""
    cols = ", ".join(columns)
    return con.execute(f"select count(*), coalesce(sum(hash({cols})), 0) from {relation}").fetchone()


def assert_same_rows(con, pipeline: Pipeline, table: str, expected_parquet: Path, columns):
    """The lake table (DuckDB's iceberg_scan) holds exactly the rows of the expected file."""
    lake_rel = pipeline.scan(table)
    exp_rel = f"read_parquet('{expected_parquet}')"
    got = table_digest(con, lake_rel, columns)
    want = table_digest(con, exp_rel, columns)
    cols = ", ".join(columns)
    missing = con.execute(f"select count(*) from (select {cols} from {exp_rel} except all select {cols} from {lake_rel})").fetchone()[0]
    extra = con.execute(f"select count(*) from (select {cols} from {lake_rel} except all select {cols} from {exp_rel})").fetchone()[0]
    assert (missing, extra) == (0, 0), f"{table}: {missing} rows missing, {extra} rows extra; lake {got}, expected {want}"
    assert got == want
    return got


def run_with_crashes(pipeline: Pipeline, kills: int, window=(0.3, 1.5), env=None, seed=None):
    """Start the backfill, kill -9 it at random moments `kills` times, then let it finish.
    Returns the stderr of every attempt."""
    rng = random.Random(seed)
    logs = []
    done = 0
    while True:
        p = pipeline.start(env)
        if done < kills:
            time.sleep(rng.uniform(*window))
            killed = p.poll() is None
            if killed:
                p.send_signal(signal.SIGKILL)
                done += 1
            _, err = p.communicate(timeout=60)
            logs.append(err)
            if p.returncode == 0 and done < kills:
                raise AssertionError("the run finished before all kills landed; slow the generator down")
            if not killed and p.returncode != 0:
                raise AssertionError(f"a run failed by itself ({p.returncode}):\n{err[-3000:]}")
            continue
        _, err = p.communicate(timeout=600)
        logs.append(err)
        assert p.returncode == 0, f"final run failed:\n{err}"
        return logs


from pgserver import PgServer  # noqa: E402,F401


@pytest.fixture(scope="session")
def postgres():
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mysql():
    server = MyServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3():
    from s3server import S3Server
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lakana(postgres):
    from lakanaserver import Lakana
    server = Lakana(postgres)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs():
    from cloudservers import FakeGcs
    server = FakeGcs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure():
    from cloudservers import Azurite
    server = Azurite()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka():
    from kafkaserver import Broker
    broker = Broker()
    yield broker
    broker.stop()


def start_run(pipeline, env=None):
    """`lakeshore run` of the pipeline in the background (stop it with a signal)."""
    lakana = pipeline.lakana.env() if pipeline.lakana else {}
    return subprocess.Popen([BIN, "run", str(pipeline.file)], cwd=pipeline.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **lakana, **(env or {})})


def kill_during_snapshot_and_streaming(pipeline, kills=7, seed=7):
    """`lakeshore run` killed -9 `kills` times, each 0.5–1.5 s after its start. Should
    every kill land before the snapshot completed (a slow or busy machine), it goes on
    with runs three times as long until one completes the snapshot and is killed while
    streaming. Returns each run's log."""
    rng = random.Random(seed)
    logs = []
    while len(logs) < kills or (all("snapshot complete" not in log for log in logs) and len(logs) < 2 * kills):
        run = start_run(pipeline)
        time.sleep(rng.uniform(0.5, 1.5) * (1 if len(logs) < kills else 3))
        assert run.poll() is None, run.communicate()[1]
        run.send_signal(signal.SIGKILL)
        logs.append(run.communicate()[1])
    return logs


class Churn(threading.Thread):
    """Random multi-statement transactions against a source database until stopped;
    survives server restarts (it reconnects). Subclasses say how to connect, what a lost
    connection raises, how to run one transaction, and what one change is (`step`)."""

    lost: tuple = ()

    def __init__(self, server, db, first_new_id, seed):
        super().__init__(daemon=True)
        self.server, self.db, self.next_id = server, db, first_new_id
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.txns = 0
        self.error = None

    def transaction(self, conn):
        raise NotImplementedError

    def run(self):
        conn = None
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = self.server.connect(self.db, autocommit=False)
                self.transaction(conn)
                self.txns += 1
                time.sleep(0.002)
            except self.lost:
                conn = None
                time.sleep(0.2)
            except Exception as e:  # noqa: BLE001 - reported by stop()
                self.error = e
                return
        if conn is not None:
            conn.close()

    def stop(self):
        self.halt.set()
        self.join(timeout=30)
        assert self.error is None, f"churn failed: {self.error!r}"
        assert self.txns > 50, f"only {self.txns} transactions ran"
