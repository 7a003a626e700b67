"""Kafka benchmark (not a test): lakeshore vs the broker's own limit, same run.

For each size: N JSON messages of about 200 bytes in a 3-partition topic of a tansu broker
(in memory, on this machine). The limit is a bare rdkafka consumer with lakeshore's client
settings reading every message with no decoding and no writing (`lakeshore bench-kafka`);
then `lakeshore backfill` reads the same messages into an Iceberg append table, and again
into a Hive-style table on the local disk (`dt=date(ts)/hour=hour(ts)` partitions, with a
watermark). Messages/s of each, the ratio, and peak RSS (of the child, by
/usr/bin/time); DuckDB counts the lake tables (`iceberg_scan`, `read_parquet` with
`hive_partitioning`).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402
from benchlib import rss_of  # noqa: E402
from kafkaserver import Broker  # noqa: E402

BIN = os.environ["LAKESHORE_BIN"]
COLUMNS = ["id long", "user string", "amount decimal(12,2)", "ts timestamp", "country string",
           "device string", "note string"]


def message(i):
    return (f'{{"id": {i}, "user": "user_{i % 100000:06d}", "amount": "{i % 100000}.{i % 100:02d}", '
            f'"ts": {1_700_000_000_000 + i}, "country": "{["DE", "FR", "US", "BR", "JP"][i % 5]}", '
            f'"device": "{["android", "ios", "web"][i % 3]}", "note": "{"n" * (40 + i % 20)}"}}')


ICEBERG = """type = "iceberg"
catalog = { type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }
namespace = "k"
mode = "append"
"""

HIVE = """type = "hive"
path = "lake/hive"
partition_by = ["dt=date(ts)", "hour=hour(ts)"]
"""


def write_pipeline(d: Path, name, brokers, topic, sink=ICEBERG):
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    watermark = 'watermark = { column = "ts", lateness = "10s" }' if sink == HIVE else ""
    f = d / f"{name}.toml"
    f.write_text(f"""[pipeline]
name = "{name}"
checkpoint_interval = "10s"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
columns = [{cols}]
# tansu answers a fetch that starts inside a record batch with the batches after it; a
# partition fetch size above the producer's batch size keeps every fetch on a boundary.
properties = {{ "max.partition.fetch.bytes" = "8388608" }}
{watermark}

[sink]
{sink}""")
    return f


def produce(broker, topic, n):
    p = broker.producer(**{"linger.ms": 20, "batch.size": 262_144, "queue.buffering.max.messages": 1_000_000})
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=message(i))
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000")
    args = ap.parse_args()
    broker = Broker()
    d = Path(tempfile.mkdtemp(prefix="lakeshore-bench-kafka-"))
    print(f"message size ~{len(message(12345))} bytes; broker tansu (memory) on this machine")
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            topic = broker.topic(f"bench{n}", 3)
            t = time.perf_counter()
            produce(broker, topic, n)
            print(f"\n{n:,} messages produced in {time.perf_counter() - t:.1f} s")
            f = write_pipeline(d, f"bench{n}", broker.brokers, topic)
            _, rss, err = rss_of([BIN, "bench-kafka", str(f), "--report", str(d / "raw.json")], d)
            raw = json.loads((d / "raw.json").read_text())
            raw_rate = raw["messages"] / raw["seconds"]
            print(f"bare consumer: {raw['messages']:,} messages in {raw['seconds']:.2f} s = {raw_rate:,.0f} msg/s, "
                  f"peak RSS {rss:.1f} MiB")
            wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
            count = lake.duck().execute(f"select count(*) from {lake.scan(d / 'lake' / 'catalog.db', f'k.{topic}')}").fetchone()[0]
            rate = count / wall
            print(f"lakeshore → Iceberg append: {count:,} messages in {wall:.2f} s = {rate:,.0f} msg/s "
                  f"(ratio {rate / raw_rate:.2f} of the bare consumer), peak RSS {rss:.1f} MiB; DuckDB counts {count:,}")
            f = write_pipeline(d, f"hive{n}", broker.brokers, topic, sink=HIVE)
            wall, rss, _ = rss_of([BIN, "backfill", str(f)], d)
            hive_count = lake.duck().execute(
                f"select count(*) from read_parquet('{d}/lake/hive/{topic}/**/*.parquet', hive_partitioning=1)"
            ).fetchone()[0]
            files = len(list((d / "lake" / "hive" / topic).glob("**/*.parquet")))
            rate = hive_count / wall
            print(f"lakeshore → Hive (local disk, {files} files): {hive_count:,} messages in {wall:.2f} s = "
                  f"{rate:,.0f} msg/s (ratio {rate / raw_rate:.2f} of the bare consumer), peak RSS {rss:.1f} MiB; "
                  f"DuckDB counts {hive_count:,}")
            if count != n or raw["messages"] != n or hive_count != n:
                # Seen with tansu 0.6.0 now and then, for the bare consumer as much as for
                # lakeshore: the broker drops messages from some fetches.
                print(f"  note: {n:,} produced; the broker delivered {raw['messages']:,} to the bare consumer, "
                      f"{count:,} to lakeshore → Iceberg and {hive_count:,} to lakeshore → Hive")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
