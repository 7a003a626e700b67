"""Daemon benchmark: resident memory of one `lakeshore run` process holding N idle
pipelines (generators at 1 event/s, checkpoints every 2 s), after all of them committed
and then for `--hold` seconds. Peak is the kernel's VmHWM of the process.

    integration/bench.sh daemon [--pipelines 1,20] [--hold 30]
"""
import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = os.environ["LAKESHORE_BIN"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def measure(n, hold):
    d = Path(tempfile.mkdtemp(prefix="lakeshore-bench-daemon-"))
    for i in range(n):
        (d / f"idle{i:02}.toml").write_text(f"""[pipeline]
name = "idle{i:02}"
checkpoint_interval = "2s"

[source]
type = "datagen"
profile = "orders"
rate = 1
seed = {i}

[sink]
type = "iceberg"
namespace = "idle{i:02}"
catalog = {{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }}
""")
    port = free_port()
    proc = subprocess.Popen([BIN, "run", str(d), "--http", f"127.0.0.1:{port}"], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=open(d / "daemon.log", "w"))
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/pipelines", timeout=5) as r:
                    ps = json.loads(r.read())["pipelines"]
                if len(ps) == n and all(p["last_checkpoint"] for p in ps):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit(f"not every pipeline committed in 120 s: {(d / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.5)
        samples = []
        end = time.time() + hold
        while time.time() < end:
            samples.append(proc_kib(proc.pid, "VmRSS"))
            time.sleep(1)
        peak = proc_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return samples[-1] / 1024, max(samples) / 1024, max(peak, *samples) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipelines", default="1,20")
    ap.add_argument("--hold", type=int, default=30)
    a = ap.parse_args()
    print(f"{'pipelines':>9} {'RSS MiB (end)':>14} {'RSS MiB (max held)':>19} {'peak RSS MiB':>13}")
    for n in [int(x) for x in a.pipelines.split(",")]:
        end, held, peak = measure(n, a.hold)
        print(f"{n:>9} {end:>14.1f} {held:>19.1f} {peak:>13.1f}")


if __name__ == "__main__":
    main()
