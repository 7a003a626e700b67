"""Kafka → Hive-style Parquet on S3 (moto), read back by DuckDB's own hive_partitioning
reader and compared with what the producer sent: every message once, partitions where
the event time puts them, `_SUCCESS` once the watermark passed, never a partial or staged
file in the table; under kill -9 and an S3 outage too."""
import os
import random
import signal
import subprocess
import time

import duckdb
from conftest import BIN, Pipeline, start_run
from test_kafka import COLUMNS, event, produce_in_background, start_member, want_digest

HOUR_MS = 3_600_000
BASE_MS = 1_700_000_000_000  # event(i) happens at BASE_MS + i seconds


def hive_pipeline(tmp_path, name, kafka, s3, bucket, topic, interval="300ms", **sink):
    source = {"type": "kafka", "brokers": kafka.brokers, "topics": [topic], "columns": COLUMNS,
              "watermark": {"column": "ts", "lateness": "1min"}}
    sink = {"type": "hive", "path": f"s3://{bucket}/lake", "storage": s3.storage(),
            "partition_by": ["dt=date(ts)", "hour=hour(ts)"], **sink}
    return Pipeline(tmp_path, name, source, sink, interval=interval)


def hive_digest(duck, s3, bucket, table):
    s3.duck(duck)
    return duck.execute(f"""select count(*), count(distinct id), sum(hash(id, user, amount, ts))
        from read_parquet('s3://{bucket}/lake/{table}/**/*.parquet', hive_partitioning=1)""").fetchone()


def partitions_of(s3, bucket, table):
    """{partition path: (parquet files, has _SUCCESS)} as listed in the bucket."""
    out = {}
    for key in s3.keys(bucket, f"lake/{table}/"):
        part, name = key[len(f"lake/{table}/"):].rsplit("/", 1)
        files, done = out.get(part, (0, False))
        out[part] = (files + name.endswith(".parquet"), done or name == "_SUCCESS")
    return out


def hour_path(ms):
    t = time.gmtime(ms // 1000)
    return time.strftime("dt=%Y-%m-%d/hour=%H", t)


def wait_until(check, run, timeout, what):
    """Poll `check()` until it holds; fail if `run` stops or `timeout` passes first."""
    deadline = time.time() + timeout
    while True:
        try:
            if check():
                return
        except duckdb.Error:  # a table listed before its first file
            pass
        assert time.time() < deadline and run.poll() is None, what
        time.sleep(0.5)


def assert_table_matches(duck, s3, bucket, table, ids):
    assert hive_digest(duck, s3, bucket, table) == want_digest(duck, ids)
    # Every row sits in the directory of its own event time.
    wrong = duck.execute(f"""select count(*) from read_parquet('s3://{bucket}/lake/{table}/**/*.parquet',
        hive_partitioning=1) where dt <> cast(ts as date) or hour <> strftime(ts, '%H')""").fetchone()[0]
    assert wrong == 0
    # Nothing staged is left behind once a run ends.
    assert s3.keys(bucket, f"lake/_lakeshore/") and not [
        k for k in s3.keys(bucket, "lake/_lakeshore/") if "/staging/" in k]


def test_json_topic_lands_in_hive_on_s3_once_with_success_markers(tmp_path, kafka, s3, duck):
    bucket = s3.bucket("hive-json")
    topic = kafka.topic("events-hive", 3)
    n = 20_000  # 5.6 hours of event time
    kafka.produce(topic, [event(i) for i in range(n)], key=lambda i, m: str(i).encode())
    log = tmp_path / "committed.log"
    p = hive_pipeline(tmp_path, "khive", kafka, s3, bucket, topic,
                      partition_commit_command=f"echo $LAKESHORE_PARTITION >> {log}")
    p.backfill()
    assert_table_matches(duck, s3, bucket, topic, range(n))
    parts = partitions_of(s3, bucket, topic)
    hours = sorted({hour_path(BASE_MS + i * 1000) for i in range(n)})
    assert sorted(parts) == hours
    # The watermark (newest ts - 1 min) passed every hour but the last.
    assert [h for h in hours if parts[h][1]] == hours[:-1]
    assert log.read_text().split() == hours[:-1]
    r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=p.dir, capture_output=True, text=True)
    assert r.returncode == 0 and f"hive sink: s3://{bucket}/lake answers" in r.stdout, r
    assert s3.storage()["secret_access_key"] not in r.stdout + r.stderr

    # Two more hours of events: the earlier last hour completes, the rest stays open;
    # nothing is written twice and the command runs once per partition.
    # (Keyed, so that every partition's event time moves: the watermark follows the
    # partition furthest behind.)
    more = range(n, n + 7_200)
    kafka.produce(topic, [event(i) for i in more], key=lambda i, m: str(n + i).encode())
    p.backfill()
    assert_table_matches(duck, s3, bucket, topic, range(n + 7_200))
    parts = partitions_of(s3, bucket, topic)
    hours = sorted({hour_path(BASE_MS + i * 1000) for i in range(n + 7_200)})
    assert [h for h in hours if parts[h][1]] == hours[:-1]
    assert log.read_text().split() == hours[:-1]


def test_kill_9_loses_and_duplicates_nothing_and_leaves_no_partial_file(tmp_path, kafka, s3, duck):
    bucket = s3.bucket("hive-crash")
    topic = kafka.topic("events-hive-crash", 3)
    total = 40_000
    producer, sent = produce_in_background(kafka, topic, total)
    p = hive_pipeline(tmp_path, "khivecrash", kafka, s3, bucket, topic, interval="200ms")
    rng = random.Random(11)
    kills = 0
    # Widen the window between the checkpoint record and the commits, so that some
    # kills land inside it (recovery then finishes the commit).
    env = {**os.environ, "LAKESHORE_TEST_COMMIT_PAUSE_MS": "150"}
    while not sent.is_set() or kills < 5:
        run = subprocess.Popen([BIN, "run", str(p.file)], cwd=p.dir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 2.0))
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)
        kills += 1
    producer.join()
    _, err = p.backfill()
    assert_table_matches(duck, s3, bucket, topic, range(total))
    # Every file in the table is a whole Parquet file (DuckDB read them all above) and
    # named by the commit that moved it there.
    keys = [k for k in s3.keys(bucket, f"lake/{topic}/") if not k.endswith("_SUCCESS")]
    assert keys and all(k.rsplit("/", 1)[1].startswith("part-") and k.endswith(".parquet") for k in keys)


def test_s3_outage_stalls_the_pipeline_and_loses_nothing(tmp_path, kafka, s3, duck):
    bucket = s3.bucket("hive-outage")
    topic = kafka.topic("events-hive-outage", 3)
    kafka.produce(topic, [event(i) for i in range(5_000)])
    p = hive_pipeline(tmp_path, "khiveout", kafka, s3, bucket, topic, interval="500ms")
    run = start_run(p)
    try:
        wait_until(lambda: partitions_of(s3, bucket, topic), run, 60, "nothing committed")
        s3.pause()
        # Messages keep arriving while S3 does not answer.
        kafka.produce(topic, [event(i) for i in range(5_000, 10_000)])
        time.sleep(8)
        s3.resume()
        kafka.produce(topic, [event(i) for i in range(10_000, 12_000)])
        # The pipeline catches up by itself once S3 answers again.
        wait_until(lambda: hive_digest(duck, s3, bucket, topic)[0] == 12_000, run, 180,
                   "the pipeline did not recover")
    finally:
        s3.resume()
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert_table_matches(duck, s3, bucket, topic, range(12_000))


def test_broker_restart_loses_and_duplicates_nothing(tmp_path, s3, duck):
    """A broker that keeps its log in S3 is killed (-9) and restarted while lakeshore runs
    and messages arrive: the run goes on (librdkafka reconnects, or the run restarts from
    its checkpoint) and every message lands once."""
    from kafkaserver import Broker
    broker = Broker(s3=s3)
    try:
        bucket = s3.bucket("hive-broker-restart")
        topic = broker.topic("events-restart", 2)
        broker.produce(topic, [event(i) for i in range(800)])
        p = hive_pipeline(tmp_path, "khiverestart", broker, s3, bucket, topic, interval="300ms")
        run = start_run(p)
        try:
            wait_until(lambda: partitions_of(s3, bucket, topic), run, 60, "nothing committed")
            broker.restart(down_for=3)
            broker.produce(topic, [event(i) for i in range(800, 1_600)])
            broker.restart(down_for=1)
            broker.produce(topic, [event(i) for i in range(1_600, 2_000)])
            wait_until(lambda: hive_digest(duck, s3, bucket, topic)[0] == 2_000, run, 120,
                       "the pipeline did not catch up")
        finally:
            run.send_signal(signal.SIGTERM)
            _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert_table_matches(duck, s3, bucket, topic, range(2_000))
    finally:
        broker.stop()


def test_a_member_too_slow_for_a_rebalance_restarts_and_the_union_stays_exact(tmp_path, kafka, s3, duck):
    """scale_out into Hive on S3 (the group's ledger is on S3 too). Member a is slow: its
    checkpoints take 4 s while it waits only 0.2 s at a rebalance before giving its
    partitions up. When b joins, a's partitions move to b while a still holds messages
    read from them: a drops that work and restarts as a new member from the ledger (b
    first commits anything a had decided), and the table holds every message once."""
    bucket = s3.bucket("hive-group")
    topic = kafka.topic("events-group", 3)
    total = 60_000
    producer, sent = produce_in_background(kafka, topic, total)
    source = {"type": "kafka", "brokers": kafka.brokers, "topics": [topic], "columns": COLUMNS,
              "scale_out": True,
              "properties": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}}
    sink = {"type": "hive", "path": f"s3://{bucket}/lake", "storage": s3.storage(),
            "partition_by": ["dt=date(ts)", "hour=hour(ts)"]}
    p = Pipeline(tmp_path, "hgroup", source, sink, interval="300ms")
    procs = []
    slow = {"LAKESHORE_TEST_COMMIT_PAUSE_MS": "2000", "LAKESHORE_TEST_REVOKE_WAIT_MS": "200"}
    try:
        a = start_member(p, tmp_path / "a.log", env=slow)
        procs.append(a)
        time.sleep(5)
        b = start_member(p, tmp_path / "b.log")
        procs.append(b)
        producer.join()
        wait_until(lambda: hive_digest(duck, s3, bucket, topic)[0] >= total, b, 180, "all messages in the lake")
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        for name, proc in (("a", a), ("b", b)):
            assert proc.wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert hive_digest(duck, s3, bucket, topic) == want_digest(duck, range(total))
    log_a = (tmp_path / "a.log").read_text()
    assert "given up anyway and the pipeline restarts" in log_a, log_a[-3000:]
    assert "restarting from its last checkpoint" in log_a
    assert "took partitions over" in (tmp_path / "b.log").read_text()
