"""A throw-away tansu broker (integration/kafka.sh) for tests and benchmarks, and a
producer that knows what it sent."""
import subprocess
import tempfile
from os import kill as os_kill
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "integration" / "kafka.sh")


class Broker:
    """A tansu broker on a free loopback port, messages kept in memory."""

    def __init__(self, s3=None, authentication=False):
        """`s3`: an S3Server whose bucket keeps the messages, so that the broker can be
        killed and restarted (`restart`); otherwise they live in the broker's memory.
        `authentication`: clients must log in with SASL (tansu 0.6.0 finds no SCRAM user
        created through its own `user create`, so every login is refused)."""
        import os
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="lakeshore-kafka-")
        self.brokers = f"127.0.0.1:{self.port}"
        self.args = [SCRIPT, "start", self.dir, str(self.port)]
        self.env = dict(os.environ)
        if s3 is not None:
            from s3server import ACCESS_KEY, REGION, SECRET_KEY
            bucket = s3.bucket(f"tansu-{self.port}")
            self.args.append(f"s3://{bucket}/")
            self.env.update(AWS_ENDPOINT=s3.endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                            AWS_DEFAULT_REGION=REGION, AWS_ALLOW_HTTP="true")
        if authentication:
            if s3 is None:
                self.args.append("memory://tansu/")
            self.args.append("--authentication")
        subprocess.run(self.args, check=True, env=self.env)

    def restart(self, down_for=0.0):
        """kill -9 the broker, wait, start it again on the same port."""
        import signal
        import time
        pid = int(Path(self.dir, "broker.pid").read_text())
        os_kill(pid, signal.SIGKILL)
        time.sleep(down_for)
        subprocess.run(self.args, check=True, env=self.env)

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
