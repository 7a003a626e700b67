"""A throw-away Iceberg REST catalog (Lakana, integration/lakana.sh) for tests and
benchmarks, on the test PostgreSQL, with a local `file://` warehouse.

Readers go through the catalog: pyiceberg's `RestCatalog`, and DuckDB's `iceberg_scan`
of the metadata file the catalog names (DuckDB's `ATTACH ... TYPE iceberg` needs the
`prefix` override Lakana's `/v1/config` does not send)."""
import json
import os
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "integration" / "lakana.sh")
TOKEN = "lakana_pat_0123456789abcdef_devsecretdevsecretdevsecret00"


class Lakana:
    def __init__(self, postgres, prefix="dev"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="lakeshore-lakana-")
        self.uri = f"http://127.0.0.1:{self.port}"
        self.prefix = prefix
        self.token = TOKEN
        db = postgres.create_db("lakana")
        url = f"postgresql+pg8000://postgres:unused@127.0.0.1:{postgres.port}/{db}"
        subprocess.run([SCRIPT, "install"], check=True)
        subprocess.run([SCRIPT, "start", self.dir, str(self.port), url], check=True)
        self.warehouse = Path(self.dir) / "warehouse" / prefix
        self.warehouse.mkdir(parents=True)
        self.api("POST", "/api/v1/environments",
                 {"name": prefix, "storage": {"scheme": "file", "root": f"file://{self.warehouse}"}})

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.uri + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
        return json.loads(data) if data else None

    def sink_catalog(self, token="${LAKANA_TOKEN}"):
        """`[sink] catalog` for lakeshore (the token from the environment: see env())."""
        return {"type": "rest", "uri": self.uri, "prefix": self.prefix, "token": token}

    def env(self):
        return {"LAKANA_TOKEN": self.token}

    def catalog(self, **props):
        from pyiceberg.catalog.rest import RestCatalog
        return RestCatalog("lakana", uri=self.uri, prefix=self.prefix, token=self.token, **props)

    def metadata_location(self, table):
        return self.catalog().load_table(table).metadata_location

    def scan(self, table):
        """A DuckDB table expression of `table`'s current snapshot, located through the
        catalog."""
        return f"iceberg_scan('{self.metadata_location(table)}')"

    def stop(self):
        subprocess.run([SCRIPT, "stop", self.dir], check=False)
