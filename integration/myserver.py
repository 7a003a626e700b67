"""A throw-away MariaDB 10.11 (integration/mariadb.sh) for tests and benchmarks."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class MyServer:
    """A throw-away MariaDB on a free loopback port; `root` logs in without a password."""

    SCRIPT = str(ROOT / "integration" / "mariadb.sh")

    def __init__(self, binlog_format="ROW", tls=False, server_id=1):
        import socket
        import tempfile
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="lakeshore-my-")
        self.env = {**os.environ, "LAKESHORE_MY_BINLOG_FORMAT": binlog_format,
                    "LAKESHORE_MY_SERVER_ID": str(server_id)}
        if tls:
            # TCP only over TLS, with a test CA at `self.ca` (see mariadb.sh).
            self.env["LAKESHORE_MY_TLS"] = "1"
        self.ca = f"{self.dir}/tls/ca.pem"
        subprocess.run([self.SCRIPT, "start", self.dir, str(self.port)], check=True, env=self.env)

    def url(self, db=None, user="root", password=None):
        auth = f"{user}:{password}" if password else user
        return f"mysql://{auth}@127.0.0.1:{self.port}" + (f"/{db}" if db else "")

    def connect(self, db=None, autocommit=True):
        import pymysql
        # The socket: plain even when TCP needs TLS.
        return pymysql.connect(unix_socket=f"{self.dir}/mysqld.sock", user="root", database=db,
                               autocommit=autocommit, charset="utf8mb4")

    def execute(self, sql, db=None, params=None):
        with self.connect(db) as c, c.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def create_db(self, name):
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return name

    def restart(self):
        subprocess.run([self.SCRIPT, "restart", self.dir], check=True, env=self.env)

    def kill(self):
        """kill -9: the server dies as a failed primary does (its data directory stays)."""
        import signal
        pid = int(Path(self.dir, "mysqld.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            import time
            time.sleep(0.1)

    def stop(self):
        subprocess.run([self.SCRIPT, "stop", self.dir], check=False)
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)
