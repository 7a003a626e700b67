"""What the database benchmarks share: timing children, their peak RSS, and commit →
visible freshness read from the lake's snapshot summaries."""
import json
import subprocess
import sys
import time


def timed(args):
    start = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{args} failed:\n{r.stderr}")
    return time.perf_counter() - start


def rss_of(args, cwd):
    """(wall, peak RSS MiB, stderr) of a child, measured by /usr/bin/time so that nothing
    of this (large) Python process is counted."""
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{args} failed:\n{p.stderr}")
    kb = int(p.stderr.strip().splitlines()[-1].removeprefix("maxrss_kb="))
    return wall, kb / 1024, p.stderr


def freshness(table, commits, position_of):
    """(p50, p99, transactions seen) of commit → visible: for each (commit time, source
    position after it), the first Iceberg snapshot whose `lakeshore.source-position`
    (read by `position_of` from its JSON) covers the position."""
    snaps = []
    for s in table.metadata.snapshots:
        pos = (s.summary.additional_properties or {}).get("lakeshore.source-position") if s.summary else None
        if pos:
            snaps.append((s.timestamp_ms / 1000, position_of(json.loads(pos))))
    snaps.sort()
    delays = sorted(next(ts for ts, p in snaps if p >= pos) - t for t, pos in commits
                    if any(p >= pos for _, p in snaps))
    return delays[len(delays) // 2], delays[int(len(delays) * 0.99)], len(delays)
