"""`lakeshore run` as a daemon: several pipelines in one process, failure isolation
(a database outage restarts only its pipeline while the others keep committing), reload
of added, changed, removed and invalid files, pause/resume, SIGTERM with exactly-once
after the restart, and the HTTP endpoints read by parsers we did not write (Prometheus'
text parser, a JSON schema)."""
import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import jsonschema
import lake
from conftest import BIN, Pipeline, assert_same_rows
from prometheus_client.parser import text_string_to_metric_families
from test_lake import ORDER_COLUMNS

STATUS_SCHEMA = {
    "type": "object",
    "required": ["pipelines", "rejected"],
    "properties": {
        "pipelines": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "file", "phase", "rows", "restarts", "last_error", "last_checkpoint",
                         "source_position", "snapshot", "tables", "config_error"],
            "properties": {
                "name": {"type": "string"},
                "phase": {"enum": ["starting", "snapshot", "streaming", "restarting", "paused", "stopping",
                                   "finished", "failed", "standby"]},
                "rows": {"type": "integer", "minimum": 0},
                "restarts": {"type": "integer", "minimum": 0},
                "last_error": {"type": ["string", "null"]},
                "last_checkpoint": {"oneOf": [{"type": "null"}, {
                    "type": "object", "required": ["id", "at_ms", "duration_ms"],
                    "properties": {"id": {"type": "integer"}, "at_ms": {"type": "integer"},
                                   "duration_ms": {"type": "integer"}}}]},
                "snapshot": {"type": "object", "additionalProperties": {"enum": ["running", "done"]}},
                "tables": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["rows", "last_commit_ms"],
                    "properties": {"rows": {"type": "integer", "minimum": 0},
                                   "last_commit_ms": {"type": "integer"}}}},
                "config_error": {"type": ["string", "null"]},
            },
        }},
        "rejected": {"type": "array", "items": {"type": "object", "required": ["file", "error"]}},
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`lakeshore run DIR --http ...` with its log in a file."""

    def __init__(self, cwd, paths, *args):
        self.port = free_port()
        self.log = cwd / f"daemon-{self.port}.log"
        self.proc = subprocess.Popen([BIN, "run", *map(str, paths), "--http", f"127.0.0.1:{self.port}", *args],
                                     cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.wait(lambda: self.get("/health")[0] == 200, 30, "the daemon answers /health")

    def request(self, path, method="GET"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return None, ""

    def get(self, path):
        return self.request(path)

    def post(self, path):
        return self.request(path, "POST")

    def status(self):
        code, body = self.get("/pipelines")
        assert code == 200, body
        doc = json.loads(body)
        jsonschema.validate(doc, STATUS_SCHEMA)
        return {p["name"]: p for p in doc["pipelines"]}, doc["rejected"]

    def checkpoint(self, name):
        c = self.status()[0].get(name, {}).get("last_checkpoint")
        return c["id"] if c else 0

    def wait(self, check, timeout, what):
        deadline = time.time() + timeout
        while not check():
            assert self.proc.poll() is None, f"the daemon exited: {self.log.read_text()[-3000:]}"
            assert time.time() < deadline, f"timed out waiting until {what}: {self.log.read_text()[-3000:]}"
            time.sleep(0.25)

    def committing(self, name, timeout=60):
        """Wait until `name` commits a checkpoint after now."""
        before = self.checkpoint(name)
        self.wait(lambda: self.checkpoint(name) > before, timeout, f"{name} commits")

    def stop(self, timeout=60):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def generator(d, name, profile="orders", rate=2000, interval="500ms", **extra):
    source = {"type": "datagen", "profile": profile, "seed": 5, "rate": rate, "batch_events": 200, **extra}
    return Pipeline(d, name, source, {"namespace": name}, interval=interval)


def test_a_database_outage_restarts_only_its_pipeline(tmp_path, postgres, duck):
    """Three pipelines in one daemon: two generators and PostgreSQL. PostgreSQL goes down
    for 12 s: its pipeline restarts (with backoff) and comes back, the generators'
    commits never pause; /metrics and /pipelines read by parsers we did not write."""
    db = postgres.create_db("daemon")
    postgres.execute("create table items (id bigint primary key, name text)", db)
    postgres.execute("insert into items select g, 'item ' || g from generate_series(1, 1000) g", db)
    d = tmp_path / "pipelines"
    d.mkdir()
    generator(d, "gen_a")
    generator(d, "gen_b", profile="nexmark")
    pg = Pipeline(d, "pg", {"type": "postgres", "url": postgres.url(db), "tables": ["public.items"]},
                  {"namespace": "pg"}, interval="500ms")
    daemon = Daemon(d, [d], "--log-format", "json")
    try:
        for name in ("gen_a", "gen_b", "pg"):
            daemon.committing(name)
        daemon.wait(lambda: daemon.status()[0]["pg"]["phase"] == "streaming", 60, "pg streams")
        daemon.wait(lambda: daemon.get("/ready")[0] == 200, 30, "ready")

        postgres.down()
        commits = {"gen_a": [], "gen_b": []}
        seen_restarting = False
        try:
            end = time.time() + 12
            while time.time() < end:
                status, _ = daemon.status()
                seen_restarting |= status["pg"]["phase"] == "restarting"
                for name in commits:
                    c = status[name]["last_checkpoint"]
                    if not commits[name] or commits[name][-1] != c["at_ms"]:
                        commits[name].append(c["at_ms"])
                time.sleep(0.2)
        finally:
            postgres.up()
        assert seen_restarting
        for name, times in commits.items():
            gaps = [b - a for a, b in zip(times, times[1:])]
            # Checkpoints every 0.5 s all through the outage: no gap near its length.
            assert len(times) >= 12 and max(gaps) < 3000, (name, gaps)
        status, _ = daemon.status()
        assert status["pg"]["restarts"] >= 1 and status["pg"]["last_error"], status["pg"]
        assert status["gen_a"]["restarts"] == 0 and status["gen_b"]["restarts"] == 0

        # pg comes back by itself and streams what was written after the outage.
        postgres.execute("insert into items select g, 'late ' || g from generate_series(1001, 1500) g", db)
        daemon.wait(lambda: duck.execute(f"select count(*) from {lake.scan(pg.catalog_db, 'pg.items')}")
                    .fetchone()[0] == 1500, 90, "pg catches up after the outage")

        code, text = daemon.get("/metrics")
        assert code == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        rows = {s.labels["pipeline"]: s.value for s in families["lakeshore_table_rows"].samples
                if s.name == "lakeshore_table_rows_total"}
        assert set(rows) >= {"gen_a", "gen_b", "pg"} and min(rows.values()) > 0, rows
        # A counter: pipelines that never restarted have no sample.
        restarts = {s.labels["pipeline"]: s.value for s in families["lakeshore_pipeline_restarts"].samples
                    if s.name == "lakeshore_pipeline_restarts_total"}
        assert restarts["pg"] >= 1 and restarts.get("gen_a", 0) == 0, restarts
        ages = {s.labels["pipeline"]: s.value for s in families["lakeshore_pipeline_checkpoint_age_seconds"].samples}
        assert all(0 <= a < 30 for a in ages.values()), ages
        assert {"lakeshore_table_commit_duration_seconds", "lakeshore_checkpoint_duration_seconds",
                "lakeshore_checkpoint_last_id"} <= set(families), sorted(families)
        # The names the scheme replaced are gone (docs/daemon.md lists them).
        assert not {"lakeshore_rows", "lakeshore_commit_seconds", "lakeshore_engine_checkpoint_duration_seconds",
                    "lakeshore_engine_last_checkpoint_id"} & set(families), sorted(families)

        out = subprocess.run([BIN, "status", "--url", f"http://127.0.0.1:{daemon.port}"], capture_output=True,
                             text=True, check=True).stdout
        assert out.splitlines()[0].split()[:3] == ["PIPELINE", "PHASE", "ROWS"]
        assert {line.split()[0] for line in out.splitlines()[1:]} == {"gen_a", "gen_b", "pg"}
    finally:
        assert daemon.stop() == 0
    # JSON logs, one object per line, and the password-less URL is the only secret-ish
    # thing around: nothing else to hide here, but every line must parse.
    for line in daemon.log.read_text().splitlines():
        json.loads(line)


def test_files_added_changed_removed_and_invalid_while_running(tmp_path):
    d = tmp_path / "pipelines"
    d.mkdir()
    daemon_file = tmp_path / "lakeshore.toml"
    daemon_file.write_text('watch_interval = "500ms"\ncheckpoint_interval = "400ms"\n')
    gen_a = Pipeline(d, "gen_a", {"type": "datagen", "profile": "orders", "seed": 1, "rate": 1000,
                                   "batch_events": 100}, {"namespace": "gen_a"})
    # The daemon file's checkpoint interval applies to files that set none.
    text = gen_a.file.read_text().replace('checkpoint_interval = "200ms"\n', "")
    gen_a.file.write_text(text)
    daemon = Daemon(d, [d], "--config", str(daemon_file))
    try:
        daemon.committing("gen_a")
        # Added.
        generator(d, "gen_b")
        daemon.wait(lambda: "gen_b" in daemon.status()[0], 20, "gen_b starts")
        daemon.committing("gen_b")
        # Invalid new file: rejected with its location; the others go on.
        (d / "broken.toml").write_text(gen_a.file.read_text().replace('name = "gen_a"', 'name = "broken"')
                                       .replace("rate = 1000", 'rate = "fast"'))
        daemon.wait(lambda: daemon.status()[1], 20, "broken.toml is rejected")
        rejected = daemon.status()[1][0]
        assert rejected["file"].endswith("broken.toml") and re.search(r"broken.toml:\d+:\d+: ", rejected["error"]), \
            rejected
        daemon.committing("gen_a")
        # Changed: restarts with the new settings.
        gen_b_text = (d / "gen_b.toml").read_text()
        (d / "gen_b.toml").write_text(gen_b_text.replace("rate = 2000", "rate = 500"))
        daemon.wait(lambda: "file changed: restarting" in daemon.log.read_text(), 20, "gen_b restarts")
        daemon.committing("gen_b")
        # Changed to something invalid: the last valid version keeps running.
        (d / "gen_b.toml").write_text(gen_b_text.replace('profile = "orders"', 'profile = "nope"'))
        daemon.wait(lambda: daemon.status()[0]["gen_b"]["config_error"], 20, "gen_b's bad change is reported")
        daemon.committing("gen_b")
        # Removed: stops after a final checkpoint and disappears.
        gen_a.file.unlink()
        daemon.wait(lambda: "gen_a" not in daemon.status()[0], 30, "gen_a stops")
        assert "file removed: stopping the pipeline" in daemon.log.read_text()
        # Pause and resume.
        assert daemon.post("/pipelines/gen_b/pause")[0] == 200
        assert daemon.status()[0]["gen_b"]["phase"] == "paused"
        held = daemon.checkpoint("gen_b")
        time.sleep(1.5)
        assert daemon.checkpoint("gen_b") == held
        assert daemon.post("/pipelines/gen_b/resume")[0] == 200
        daemon.committing("gen_b")
        assert daemon.post("/pipelines/nope/pause")[0] == 404
        code, text = daemon.post("/pipelines/gen_b/resnapshot?table=orders")
        assert code == 409 and "only database sources" in text, (code, text)
    finally:
        assert daemon.stop() == 0


def test_sigterm_mid_stream_then_restart_is_exactly_once(tmp_path, duck):
    """A bounded generator in the daemon, SIGTERM twice on the way (exit 0 within the
    grace period), run again until it finishes: the lake equals the source. A second
    file added while the daemon waits for changes only on SIGHUP shows SIGHUP reloads.
    Once every pipeline has ended by itself, the daemon exits 0."""
    d = tmp_path / "pipelines"
    d.mkdir()
    daemon_file = tmp_path / "lakeshore.toml"
    daemon_file.write_text('watch_interval = "1h"\ngrace_period = "30s"\n')
    source = {"type": "datagen", "profile": "orders", "initial_rows": 2_000, "seed": 21, "events": 60_000,
              "rate": 15_000, "batch_events": 300}
    p = Pipeline(d, "orders", source, {"namespace": "shop", "mode": "upsert"}, interval="300ms")
    for _ in range(2):
        daemon = Daemon(d, [d], "--config", str(daemon_file))
        daemon.committing("orders")
        time.sleep(0.7)
        assert daemon.stop() == 0, daemon.log.read_text()[-2000:]
        assert "stopping: taking a final checkpoint" in daemon.log.read_text()
    # An unbounded pipeline keeps the daemon up after the generator is done.
    generator(d, "idle", rate=1)
    daemon = Daemon(d, [d], "--config", str(daemon_file))
    try:
        daemon.wait(lambda: daemon.status()[0]["orders"]["phase"] == "finished", 120, "the generator finishes")
        bounded_later = generator(d, "later", events=500)
        time.sleep(1)
        assert "later" not in daemon.status()[0]
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait(lambda: "later" in daemon.status()[0], 20, "SIGHUP loads the new file")
        # Without the unbounded one, nothing is left to run once `later` is done.
        (d / "idle.toml").unlink()
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.proc.wait(timeout=60) == 0, daemon.log.read_text()[-2000:]
        assert bounded_later.file.exists()
    finally:
        if daemon.proc.poll() is None:
            assert daemon.stop() == 0
    bounded = Pipeline(tmp_path / "expected", "orders", source, {"namespace": "shop", "mode": "upsert"}) \
        if (tmp_path / "expected").mkdir() is None else None
    assert_same_rows(duck, p, "orders", bounded.expected() / "orders.parquet", ORDER_COLUMNS)


def test_a_table_that_cannot_take_a_change_is_parked_and_the_others_go_on(tmp_path, postgres, duck):
    """on_table_error = "isolate": a column of table a changes to a type Iceberg cannot
    promote; a is parked with the reason in /pipelines and a metric, while table b of the
    same pipeline keeps landing its changes."""
    db = postgres.create_db("isolate")
    postgres.execute("create table a (id int primary key, n int)", db)
    postgres.execute("create table b (id int primary key, v text)", db)
    postgres.execute("insert into a select g, g from generate_series(1, 100) g", db)
    postgres.execute("insert into b select g, 'b' || g from generate_series(1, 100) g", db)
    d = tmp_path / "pipelines"
    d.mkdir()
    p = Pipeline(d, "iso", {"type": "postgres", "url": postgres.url(db), "tables": ["public.a", "public.b"]},
                 {"namespace": "iso"}, interval="300ms")
    p.file.write_text(p.file.read_text().replace("[pipeline]\n", '[pipeline]\non_table_error = "isolate"\n', 1))
    daemon = Daemon(d, [d])
    try:
        daemon.wait(lambda: daemon.status()[0]["iso"]["phase"] == "streaming", 60, "iso streams")
        daemon.committing("iso")
        with postgres.connect(db) as c:
            c.execute("ALTER TABLE a ALTER COLUMN n TYPE text")
            c.execute("UPDATE a SET n = 'x' WHERE id = 1")
            c.execute("INSERT INTO b SELECT g, 'late' FROM generate_series(101, 300) g")
        daemon.wait(lambda: "a" in daemon.status()[0]["iso"]["failed_tables"], 60, "table a is parked")
        reason = daemon.status()[0]["iso"]["failed_tables"]["a"]
        assert "table public.a, column n: its type changed from integer" in reason, reason
        def rows_of_b():
            return duck.execute(f"select count(*) from {lake.scan(p.catalog_db, 'iso.b')}").fetchone()[0]

        daemon.wait(lambda: rows_of_b() == 300, 60, "b goes on")
        postgres.execute("INSERT INTO b SELECT g, 'later' FROM generate_series(301, 400) g", db)
        daemon.wait(lambda: rows_of_b() == 400, 60, "b still goes on")
        status = daemon.status()[0]["iso"]
        assert status["phase"] == "streaming" and status["restarts"] == 0, status
        families = {f.name: f for f in text_string_to_metric_families(daemon.get("/metrics")[1])}
        parked = {s.labels["table"]: s.value for s in families["lakeshore_table_parked"].samples}
        assert parked == {"a": 1.0}
    finally:
        assert daemon.stop() == 0


def test_a_mysql_table_the_source_cannot_follow_is_parked_and_the_others_go_on(tmp_path, mysql, duck):
    """on_table_error = "isolate" with MariaDB: table a is renamed (lakeshore does not follow
    renames), so the source gives it up; a is parked with the reason, a re-snapshot of it
    is refused, and table b of the same pipeline keeps landing its changes."""
    db = mysql.create_db("isolate")
    mysql.execute("create table a (id int primary key, n int)", db)
    mysql.execute("create table b (id int primary key, v text)", db)
    mysql.execute("insert into a select seq, seq from seq_1_to_100", db)
    mysql.execute("insert into b select seq, concat('b', seq) from seq_1_to_100", db)
    d = tmp_path / "pipelines"
    d.mkdir()
    p = Pipeline(d, "iso", {"type": "mysql", "url": mysql.url(), "tables": ["isolate.a", "isolate.b"]},
                 {"namespace": "iso"}, interval="300ms")
    p.file.write_text(p.file.read_text().replace("[pipeline]\n", '[pipeline]\non_table_error = "isolate"\n', 1))
    daemon = Daemon(d, [d])
    try:
        daemon.wait(lambda: daemon.status()[0]["iso"]["phase"] == "streaming", 60, "iso streams")
        daemon.committing("iso")
        mysql.execute("insert into a values (101, 101)", db)
        mysql.execute("rename table a to a_old", db)
        mysql.execute("insert into b select seq, 'late' from seq_101_to_300", db)
        daemon.wait(lambda: "a" in daemon.status()[0]["iso"]["failed_tables"], 60, "table a is parked")
        reason = daemon.status()[0]["iso"]["failed_tables"]["a"]
        assert "table isolate.a was renamed" in reason, reason
        code, text = daemon.post("/pipelines/iso/resnapshot?table=isolate.a")
        assert code == 409 and "parked" in text, (code, text)

        def rows_of(table):
            return duck.execute(f"select count(*) from {lake.scan(p.catalog_db, 'iso.' + table)}").fetchone()[0]

        daemon.wait(lambda: rows_of("b") == 300, 60, "b goes on")
        mysql.execute("insert into b select seq, 'later' from seq_301_to_400", db)
        daemon.wait(lambda: rows_of("b") == 400, 60, "b still goes on")
        assert rows_of("a") in (100, 101)
        status = daemon.status()[0]["iso"]
        assert status["phase"] == "streaming" and status["restarts"] == 0, status
    finally:
        assert daemon.stop() == 0
