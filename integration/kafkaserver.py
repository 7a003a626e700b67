"""A throw-away tansu broker (integration/kafka.sh) for tests and benchmarks, and a
producer that knows what it sent."""
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "integration" / "kafka.sh")


class Broker:
    """A tansu broker on a free loopback port, messages kept in memory."""

    def __init__(self):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="lakeshore-kafka-")
        self.brokers = f"127.0.0.1:{self.port}"
        subprocess.run([SCRIPT, "start", self.dir, str(self.port)], check=True)

    def topic(self, name, partitions):
        subprocess.run([SCRIPT, "topic", str(self.port), name, str(partitions)], check=True)
        return name

    def producer(self, **conf):
        from confluent_kafka import Producer
        return Producer({"bootstrap.servers": self.brokers, "linger.ms": 5, **conf})

    def produce(self, topic, messages, key=None, batched=False):
        """Send `messages` (bytes or str; `key(i, m)` gives each key) and wait for every one.

        One message per record batch unless `batched`: tansu 0.6.0 answers a fetch at an
        offset inside a record batch with the batches after it, so a consumer resuming
        mid-batch would miss the batch's remaining messages (a broker bug; Kafka returns
        the batch holding the offset). Tests that resume use single-message batches."""
        p = self.producer(**({} if batched else {"batch.num.messages": 1}))
        for i, m in enumerate(messages):
            while True:
                try:
                    p.produce(topic, value=m, key=key(i, m) if key else None)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
        left = p.flush(60)
        assert left == 0, f"{left} messages not delivered"

    def stop(self):
        subprocess.run([SCRIPT, "stop", self.dir], check=False)
