"""A throw-away PostgreSQL 15 (integration/postgres.sh) for tests and benchmarks."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class PgServer:
    """A throw-away PostgreSQL 15 (integration/postgres.sh) on a free loopback port."""

    SCRIPT = str(ROOT / "integration" / "postgres.sh")

    def __init__(self, wal_level="logical", tls=False):
        import socket
        import tempfile
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # Not under pytest's tmp_path: the server runs as `postgres` and needs to reach it.
        self.dir = tempfile.mkdtemp(prefix="lakeshore-pg-")
        os.chmod(self.dir, 0o755)
        env = {**os.environ, "LAKESHORE_PG_WAL_LEVEL": wal_level}
        if tls:
            # TLS only, with a test CA at `self.ca` (see postgres.sh).
            env["LAKESHORE_PG_TLS"] = "1"
        self.ca = os.path.join(self.dir, "ca.pem")
        subprocess.run([self.SCRIPT, "start", self.dir, str(self.port)], check=True, env=env)
        self.env = env

    def url(self, db="postgres", user="postgres", password=None):
        auth = f"{user}:{password}" if password else user
        return f"postgres://{auth}@127.0.0.1:{self.port}/{db}"

    def connect(self, db="postgres", autocommit=True):
        import psycopg
        return psycopg.connect(self.url(db), autocommit=autocommit)

    def execute(self, sql, db="postgres", params=None):
        with self.connect(db) as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def create_db(self, name, options=""):
        # Every pipeline of the suite keeps its slot until the server stops (64 allowed);
        # a database made again starts without the old ones.
        self.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = %s AND NOT active", params=(name,))
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.execute(f'CREATE DATABASE "{name}" {options}')
        return name

    def restart(self):
        subprocess.run([self.SCRIPT, "restart", self.dir], check=True, env=self.env)

    def down(self):
        """Stop the server, keeping its data (`up` starts it again)."""
        subprocess.run([self.SCRIPT, "down", self.dir], check=True, env=self.env)

    def up(self):
        subprocess.run([self.SCRIPT, "up", self.dir], check=True, env=self.env)

    def stop(self):
        subprocess.run([self.SCRIPT, "stop", self.dir], check=False)
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)
