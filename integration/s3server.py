"""A throw-away S3 (moto server, PyPI `moto[server]`) for tests and benchmarks.

moto keeps objects in memory, so an outage is simulated by freezing the process
(`pause` / `resume`: requests hang, then time out), never by restarting it."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "lakeshore"
SECRET_KEY = "lakeshore-secret-key"
REGION = "us-east-1"


class S3Server:
    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="lakeshore-s3-")
        moto = Path(sys.executable).parent / "moto_server"
        self.log = open(os.path.join(self.dir, "moto.log"), "w")
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"moto did not start; see {self.dir}/moto.log")
                time.sleep(0.2)

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def bucket(self, name):
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket, prefix=""):
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def storage(self):
        """The `[sink] storage` table for lakeshore."""
        return {"endpoint": self.endpoint, "region": REGION, "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY, "allow_http": "true"}

    def duck(self, con):
        """Point a DuckDB connection (httpfs loaded) at this server."""
        con.execute(f"""CREATE OR REPLACE SECRET moto (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{SECRET_KEY}',
                        REGION '{REGION}', ENDPOINT '127.0.0.1:{self.port}', URL_STYLE 'path', USE_SSL false)""")
        return con

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        self.resume()
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
