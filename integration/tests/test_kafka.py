"""Kafka source against a real broker (tansu): every message lands in the lake exactly
once (DuckDB reads it back and compares with what the producer sent), under kill -9 too;
change-event topics fold into upsert tables; bad messages stop with their offset or land
in the dead-letter table."""
import json
import os
import random
import signal
import subprocess
import threading
import time

import lake
from conftest import BIN, Pipeline, start_run

COLUMNS = ["id long", "user string", "amount decimal(12,2)", "ts timestamp", "tags string"]


def kafka_pipeline(tmp_path, name, kafka, topics, interval="300ms", sink=None, **source):
    src = {"type": "kafka", "brokers": kafka.brokers, "topics": topics, **source}
    if "columns" not in src and src.get("format", "json") != "raw":
        src["columns"] = COLUMNS
    sink = {"mode": "append"} if sink is None else sink
    return Pipeline(tmp_path, name, src, {"namespace": "k", **sink}, interval=interval)


def event(i):
    return json.dumps({"id": i, "user": f"u{i % 97}", "amount": f"{i % 10000}.{i % 100:02d}",
                       "ts": 1_700_000_000_000 + i * 1000, "tags": "x" * (i % 50), "extra": [i]})


def lake_digest(duck, p, table, cols="id, user, amount, ts"):
    return duck.execute(f"select count(*), count(distinct id), sum(hash({cols})) "
                        f"from {lake.scan(p.catalog_db, p.table(table))}").fetchone()


def want_digest(duck, ids):
    """What the lake must hold for messages `ids`: `event(i)` spelled in DuckDB's SQL."""
    return duck.execute("""
        select count(*), count(distinct id), sum(hash(id, user, amount, ts)) from (
          select i as id, 'u' || (i % 97) as user,
                 cast((i % 10000) || '.' || lpad(cast(i % 100 as varchar), 2, '0') as decimal(12,2)) as amount,
                 make_timestamp((1700000000000 + i * 1000) * 1000) as ts
          from (select unnest(?::bigint[]) as i))""", [list(ids)]).fetchone()


def test_json_topic_lands_once_and_resumes_from_the_lake(tmp_path, kafka, duck):
    topic = kafka.topic("orders-json", 3)
    kafka.produce(topic, [event(i) for i in range(20_000)], key=lambda i, m: str(i).encode())
    p = kafka_pipeline(tmp_path, "kjson", kafka, [topic])
    p.backfill()
    assert lake_digest(duck, p, topic) == want_digest(duck, range(20_000))
    # More messages: the next run starts at the offsets of the last lake commit.
    kafka.produce(topic, [event(i) for i in range(20_000, 25_000)])
    p.backfill()
    assert lake_digest(duck, p, topic) == want_digest(duck, range(25_000))
    # Nothing new: nothing added.
    p.backfill()
    assert lake_digest(duck, p, topic) == want_digest(duck, range(25_000))
    r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=p.dir, capture_output=True, text=True)
    assert r.returncode == 0 and f"topic {topic}: 3 partitions" in r.stdout, r


def produce_in_background(kafka, topic, total):
    """Send `event(0..total)` in steps of 2,000 from a thread; the event is set when done."""
    sent = threading.Event()

    def produce():
        for start in range(0, total, 2_000):
            kafka.produce(topic, [event(i) for i in range(start, start + 2_000)])
            time.sleep(0.05)
        sent.set()

    producer = threading.Thread(target=produce)
    producer.start()
    return producer, sent


def test_kill_9_while_messages_arrive_loses_and_duplicates_nothing(tmp_path, kafka, duck):
    topic = kafka.topic("orders-crash", 3)
    total = 60_000
    producer, sent = produce_in_background(kafka, topic, total)
    p = kafka_pipeline(tmp_path, "kcrash", kafka, [topic], interval="200ms")
    rng = random.Random(7)
    kills = 0
    while not sent.is_set() or kills < 4:
        run = start_run(p)
        time.sleep(rng.uniform(0.4, 1.5))
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)
        kills += 1
    producer.join()
    p.backfill()
    assert lake_digest(duck, p, topic) == want_digest(duck, range(total))


def debezium(op, before, after):
    return json.dumps({"schema": {"type": "struct"}, "payload": {
        "before": before, "after": after, "op": op, "source": {"connector": "mysql"}, "ts_ms": 0}})


def test_debezium_topic_folds_into_an_upsert_table(tmp_path, kafka, duck):
    topic = kafka.topic("dbz.shop.orders", 2)
    rng = random.Random(3)
    state = {}
    msgs = []
    for n in range(6_000):
        k = rng.randrange(800)
        row = {"id": k, "user": f"u{rng.randrange(50)}", "amount": f"{rng.randrange(10_000)}.25", "ts": n}
        if k not in state:
            msgs.append(debezium("c", None, row))
            state[k] = row
        elif rng.random() < 0.2:
            msgs.append(debezium("d", state.pop(k), None))
        elif rng.random() < 0.1 and (k + 1000) not in state:
            # A key change, as Debezium writes it: a delete of the old key, a create of
            # the new one (each under its own message key).
            moved = {**row, "id": k + 1000}
            msgs.append(debezium("d", state.pop(k), None))
            msgs.append(debezium("c", None, moved))
            state[k + 1000] = moved
        else:
            # Some updates carry no before image (PostgreSQL without REPLICA IDENTITY FULL).
            msgs.append(debezium("u", state[k] if rng.random() < 0.5 else None, row))
            state[k] = row
    # Debezium is at-least-once: a replayed stretch must fold to the same state.
    msgs += msgs[-300:]

    def key(_, m):
        payload = json.loads(m)["payload"]
        return str((payload["after"] or payload["before"])["id"]).encode()

    # The key picks the partition, so each row's events stay in order.
    kafka.produce(topic, msgs, key=key)
    p = kafka_pipeline(tmp_path, "kdbz", kafka, [topic], format="debezium-json", key=["id"],
                       columns=["id long", "user string", "amount decimal(12,2)", "ts long"],
                       sink={"mode": "upsert"})
    p.backfill()
    got = sorted(duck.execute(f"select id, user, cast(amount as varchar), ts from "
                              f"{lake.scan(p.catalog_db, p.table('dbz.shop.orders'.rsplit('.', 1)[1]))}").fetchall())
    want = sorted((r["id"], r["user"], r["amount"], r["ts"]) for r in state.values())
    assert got == want


def test_canal_topic_folds_into_an_upsert_table(tmp_path, kafka, duck):
    """Canal writes every value as a string, batches rows per event, and lists only the
    changed columns' old values in `old` (a key among them: the row moved)."""
    topic = kafka.topic("canal.shop.items", 1)

    def canal(kind, data, old=None):
        rows = [{k: (None if v is None else str(v)) for k, v in r.items()} for r in data]
        return json.dumps({"data": rows, "old": old, "type": kind, "isDdl": False, "database": "shop",
                           "table": "items", "pkNames": ["id"], "es": 0, "ts": 0})

    msgs = [
        canal("INSERT", [{"id": i, "name": f"n{i}", "price": f"{i}.50"} for i in range(1, 6)]),
        canal("UPDATE", [{"id": 2, "name": "two", "price": "2.50"}], [{"name": "n2"}]),
        # id 3 becomes 30
        canal("UPDATE", [{"id": 30, "name": "n3", "price": "3.50"}], [{"id": "3"}]),
        canal("DELETE", [{"id": 4, "name": "n4", "price": "4.50"}]),
        json.dumps({"data": None, "old": None, "type": "ALTER", "isDdl": True, "sql": "alter table items ..."}),
        canal("INSERT", [{"id": 6, "name": None, "price": "0.01"}]),
    ]
    kafka.produce(topic, msgs)
    p = kafka_pipeline(tmp_path, "kcanal", kafka, [topic], format="canal-json", key=["id"],
                       columns=["id long", "name string", "price decimal(10,2)"], sink={"mode": "upsert"})
    p.backfill()
    got = sorted(duck.execute(f"select id, name, cast(price as varchar) from "
                              f"{lake.scan(p.catalog_db, p.table('items'))}").fetchall())
    assert got == [(1, "n1", "1.50"), (2, "two", "2.50"), (5, "n5", "5.50"), (6, None, "0.01"), (30, "n3", "3.50")]


def test_a_bad_message_stops_with_its_offset_or_lands_as_a_dead_letter(tmp_path, kafka, duck):
    topic = kafka.topic("orders-poison", 1)
    msgs = [event(i) for i in range(100)]
    msgs[41] = "{not json"
    msgs[77] = json.dumps({"id": "seventy-seven"})
    kafka.produce(topic, msgs)
    p = kafka_pipeline(tmp_path, "kfail", kafka, [topic])
    r = subprocess.run([BIN, "backfill", str(p.file)], cwd=p.dir, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"topic {topic} partition 0 offset 41: cannot read the message as json" in r.stderr, r.stderr
    p = kafka_pipeline(tmp_path, "kdead", kafka, [topic], on_error="dead_letter")
    p.backfill()
    assert lake_digest(duck, p, topic) == want_digest(duck, [i for i in range(100) if i not in (41, 77)])
    dead = duck.execute(f"select \"offset\", decode(value), error from "
                        f"{lake.scan(p.catalog_db, p.table('kdead_dead_letters'))} order by 1").fetchall()
    assert [(o, v) for o, v, _ in dead] == [(41, "{not json"), (77, msgs[77])], dead
    assert all(e for _, _, e in dead)


def test_unreachable_brokers_and_missing_topics_say_what_to_change(tmp_path, kafka):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    cases = [
        ({"brokers": closed}, ["orders"], f"cannot reach the Kafka brokers at {closed}", "check [source] brokers"),
        ({}, ["no-such-topic"], 'no topic named "no-such-topic"', "fix [source] topics"),
        ({}, ["^nothing-like-this-.*"], 'no topic matches "^nothing-like-this-.*"', "fix [source] topics"),
    ]
    for i, (change, topics, what, fix) in enumerate(cases):
        p = kafka_pipeline(tmp_path, f"kbad{i}", kafka, topics, properties={"sasl.password": "hunter2"}, **change)
        r = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=p.dir, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and what in r.stderr and fix in r.stderr, r.stderr
        assert "hunter2" not in r.stderr + r.stdout


def test_regex_topics_into_one_raw_table_from_a_timestamp(tmp_path, kafka, duck):
    """topics = ["^regex"], table = one table for all, format = "raw" (every message as it
    is), startup = { timestamp }: only messages at or after it."""
    a = kafka.topic("clicks-eu", 2)
    b = kafka.topic("clicks-us", 1)
    kafka.topic("views-eu", 1)
    kafka.produce(a, [f"old-a{i}" for i in range(50)])
    kafka.produce(b, [f"old-b{i}" for i in range(50)])
    # A whole second after the old messages, and the new ones after it.
    cut = int(time.time()) + 2
    time.sleep(cut + 0.3 - time.time())
    kafka.produce(a, [f"new-a{i}" for i in range(300)], key=lambda i, m: f"k{i}".encode())
    kafka.produce(b, [f"new-b{i}" for i in range(200)])
    kafka.produce("views-eu", ["not a click"])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cut))
    p = kafka_pipeline(tmp_path, "kraw", kafka, ["^clicks-.*"], format="raw", table="clicks",
                       startup={"timestamp": stamp})
    p.backfill()
    rows = duck.execute(f"select topic, decode(value), decode(key), \"offset\", \"partition\", timestamp "
                        f"from {lake.scan(p.catalog_db, p.table('clicks'))}").fetchall()
    values = sorted(r[1] for r in rows)
    assert values == sorted([f"new-a{i}" for i in range(300)] + [f"new-b{i}" for i in range(200)]), values[:5]
    assert {r[0] for r in rows} == {a, b}
    assert all(r[2] == f"k{r[1][5:]}" for r in rows if r[0] == a)
    assert all(r[5] is not None for r in rows)
    # A time after every message: the backfill has nothing to read, and ends.
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    q = kafka_pipeline(tmp_path, "klater", kafka, ["^clicks-.*"], format="raw", startup={"timestamp": later})
    q.backfill()


def test_json_with_a_key_is_an_upsert_and_a_message_is_exactly_one_value(tmp_path, kafka, duck):
    topic = kafka.topic("prices", 1)
    kafka.produce(topic, [json.dumps({"id": i, "v": f"a{i}"}) for i in range(10)])
    p = kafka_pipeline(tmp_path, "kups", kafka, [topic], key=["id"], columns=["id long", "v string"],
                       on_error="dead_letter", sink={})
    p.backfill()
    # Later values replace committed rows of the same key; a message holding two objects,
    # or nothing, is a bad message, not two rows or none.
    kafka.produce(topic, [json.dumps({"id": 3, "v": "b3"}), '{"id": 4, "v": "x"}{"id": 5, "v": "y"}',
                          "  ", json.dumps({"id": 11, "v": "a11"}), json.dumps({"id": 3, "v": "c3"})])
    p.backfill()
    got = sorted(duck.execute(f"select id, v from {lake.scan(p.catalog_db, p.table(topic))}").fetchall())
    assert got == sorted([(i, f"a{i}") for i in range(10) if i != 3] + [(3, "c3"), (11, "a11")]), got
    dead = duck.execute(f"select \"offset\" from {lake.scan(p.catalog_db, p.table('kups_dead_letters'))} "
                        f"order by 1").fetchall()
    assert dead == [(11,), (12,)], dead


def test_json_columns_are_inferred_once_and_then_stay_fixed(tmp_path, kafka, duck):
    topic = kafka.topic("events-inferred", 2)
    first = [json.dumps({"id": i, "user": f"u{i}", "score": i / 2, "ok": i % 2 == 0, "meta": {"a": i}})
             for i in range(500)]
    kafka.produce(topic, first)
    src = {"type": "kafka", "brokers": kafka.brokers, "topics": [topic]}
    p = Pipeline(tmp_path, "kinfer", src, {"namespace": "k", "mode": "append"}, interval="300ms")
    _, err = p.backfill()
    assert "inferred the columns" in err
    rel = lake.scan(p.catalog_db, p.table(topic))
    cols = [(c[0], c[1]) for c in duck.execute(f"describe select * from {rel}").fetchall()]
    # Nested fields are left out; numbers, booleans and strings typed as they came.
    assert cols == [("id", "BIGINT"), ("user", "VARCHAR"), ("score", "DOUBLE"), ("ok", "BOOLEAN")]
    assert duck.execute(f"select count(*), sum(id), sum(score), count(*) filter (where ok) from {rel}").fetchone() \
        == (500, sum(range(500)), sum(i / 2 for i in range(500)), 250)
    # Later messages with a new field: the columns stay those of the first start.
    kafka.produce(topic, [json.dumps({"id": i, "user": f"u{i}", "score": 1.5, "ok": True, "new": "x"})
                          for i in range(500, 600)])
    _, err = p.backfill()
    assert "inferred the columns" not in err
    rel = lake.scan(p.catalog_db, p.table(topic))
    cols = [c[0] for c in duck.execute(f"describe select * from {rel}").fetchall()]
    assert cols == ["id", "user", "score", "ok"]
    assert duck.execute(f"select count(*), count(distinct id) from {rel}").fetchone() == (600, 600)


def start_member(p, log, env=None):
    """`lakeshore run` with its log in a file (a long run would fill a pipe)."""
    return subprocess.Popen([BIN, "run", str(p.file)], cwd=p.dir, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env={**os.environ, **(env or {})})


def wait_for_count(duck, p, table, want, timeout=120):
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        try:
            got = lake_digest(duck, p, table)[0]
        except Exception:  # the table may not exist yet
            got = None
        if got is not None and got >= want:
            return got
        time.sleep(1)
    raise AssertionError(f"{table}: {got} rows after {timeout}s, want {want}")


def test_two_processes_in_one_group_share_the_partitions_exactly(tmp_path, kafka, duck):
    """scale_out: two `lakeshore run` processes of one pipeline share a topic. One joins
    late (a rebalance moves partitions while messages flow), one is killed -9 (its
    partitions move after the session timeout, its decided checkpoint is committed by
    the new owner) and comes back, one stops with SIGTERM: the union in the lake is every
    message once, and commits came from several members."""
    topic = kafka.topic("orders-group", 3)
    total = 80_000
    producer, sent = produce_in_background(kafka, topic, total)
    p = kafka_pipeline(tmp_path, "kgroup", kafka, [topic], interval="300ms", scale_out=True,
                       properties={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"})
    procs = []

    def member(name):
        procs.append(start_member(p, tmp_path / f"{name}.log"))
        return procs[-1]

    def log(name):
        return (tmp_path / f"{name}.log").read_text()[-3000:]

    try:
        a = member("a")
        time.sleep(4)
        b = member("b")
        time.sleep(6)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        time.sleep(8)
        c = member("c")
        time.sleep(8)
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=60) == 0, log("b")
        producer.join()
        wait_for_count(duck, p, topic, total)
        c.send_signal(signal.SIGTERM)
        assert c.wait(timeout=60) == 0, log("c")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert lake_digest(duck, p, topic) == want_digest(duck, range(total))
    location = lake.metadata_location(p.catalog_db, p.table(topic)).removeprefix("file://")
    snapshots = json.loads(open(location).read())["snapshots"]
    # Members' commits (the daemon's compactions, `replace` snapshots, name no pipeline).
    members = {s["summary"]["lakeshore.pipeline"] for s in snapshots
               if "lakeshore.pipeline" in s["summary"] and int(s["summary"].get("added-records", 0)) > 0}
    # Several members committed (which ones depends on how fast each joined the group:
    # a member killed 6 s after a second one joined may have had its decided checkpoint
    # committed by the new owner, under that owner's name).
    assert len(members) >= 2 and all(m.startswith("kgroup@m") for m in members), members
    logs = "".join((tmp_path / f"{x}.log").read_text() for x in "abc")
    assert "took partitions over" in logs and "given up after a checkpoint" in logs
    # A single-process run of the shared pipeline's state is refused.
    p2 = kafka_pipeline(tmp_path, "kgroup", kafka, [topic], interval="300ms")
    r = subprocess.run([BIN, "backfill", str(p2.file)], cwd=p2.dir, capture_output=True, text=True)
    assert r.returncode == 2 and "scale_out = true" in r.stderr, r.stderr


def test_origin_metadata_columns_name_each_message(tmp_path, kafka, duck):
    """`_source_ts` is the message's timestamp and `_position` its `partition:offset`:
    every message of the topic once, each partition's offsets 0..n-1 without a gap."""
    topic = kafka.topic("origin", 2)
    before = time.time()
    kafka.produce(topic, [event(i) for i in range(3_000)], key=lambda i, m: str(i).encode())
    after = time.time()
    p = kafka_pipeline(tmp_path, "korigin", kafka, [topic])
    with open(p.file, "a") as f:
        f.write('\n[[transform]]\ntables = "*"\nmetadata = ["_source_ts", "_position", "_source_table"]\n')
    p.backfill()
    rows = duck.execute(f"select id, _source_ts, _position, _source_table from "
                        f"{lake.scan(p.catalog_db, p.table(topic))}").fetchall()
    assert sorted(r[0] for r in rows) == list(range(3_000))
    assert {r[3] for r in rows} == {topic}, {r[3] for r in rows}
    offsets = {}
    for _, ts, pos, _ in rows:
        partition, offset = pos.split(":")
        offsets.setdefault(int(partition), []).append(int(offset))
        assert before - 5 <= ts.timestamp() <= after + 5, (ts, before, after)
    assert set(offsets) == {0, 1}, offsets.keys()
    for partition, got in offsets.items():
        assert sorted(got) == list(range(len(got))), f"partition {partition}: offsets with gaps or twice"
