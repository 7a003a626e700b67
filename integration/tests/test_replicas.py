"""Replica mode: `lakeshore run --replica` daemons over one pipeline directory and one
state store. Each pipeline runs on exactly one replica at a time (the others show it
`standby`); a replica stopped by SIGTERM hands its pipelines over at once (two replicas
contending for them), replicas killed with -9 lose them to the survivor after the lease
TTL; nothing is ever fenced, and the tables end equal to the generators' rows (exactly
once across every hand-over)."""
import time

from conftest import Pipeline, assert_same_rows
from test_daemon import Daemon
from test_lake import ORDER_COLUMNS

TTL = 6.0
NAMES = ["r0", "r1", "r2", "r3"]
RUNNING = {"starting", "snapshot", "streaming", "finished"}


def pipelines(d):
    return [Pipeline(d, n, {"type": "datagen", "profile": "orders", "events": 150_000, "initial_rows": 2_000,
                            "seed": 20 + i, "rate": 1_500, "batch_events": 200},
                     {"namespace": n, "mode": "upsert"}, interval="300ms") for i, n in enumerate(NAMES)]


def where(daemons):
    """Pipeline -> the live replicas that run it (not standby), from their /pipelines."""
    runs = {n: [] for n in NAMES}
    for name, dm in daemons.items():
        if dm.proc.poll() is not None:
            continue
        for p, s in dm.status()[0].items():
            if s["phase"] in RUNNING:
                runs[p].append(name)
    return runs


def wait_owned(daemons, among, timeout, what):
    """Until every pipeline runs on exactly one replica of `among`; never on two."""
    deadline = time.time() + timeout
    while True:
        runs = where(daemons)
        for p, rs in runs.items():
            assert len(rs) <= 1, f"{p} runs on {rs} at once"
        if all(len(rs) == 1 and rs[0] in among for rs in runs.values()):
            return runs
        assert time.time() < deadline, f"timed out waiting until {what}: {runs}"
        time.sleep(0.2)


def test_pipelines_move_between_replicas_exactly_once(tmp_path, duck):
    d = tmp_path / "pipelines"
    d.mkdir()
    ps = pipelines(d)
    cfg = tmp_path / "lakeshore.toml"
    cfg.write_text(f'[replicas]\nlease_ttl = "{TTL}s"\n')

    def replica(name):
        return Daemon(d, [d], "--config", str(cfg), "--replica", name)

    daemons = {}
    try:
        daemons["a"] = replica("a")
        # a is up first: it takes every lease; b and c stand by.
        wait_owned(daemons, {"a"}, 30, "a runs every pipeline")
        daemons["b"], daemons["c"] = replica("b"), replica("c")
        time.sleep(TTL)
        for n in "bc":
            assert all(s["phase"] == "standby" for s in daemons[n].status()[0].values()), daemons[n].status()
        wait_owned(daemons, {"a"}, 5, "a still runs every pipeline")

        # SIGTERM: a's final checkpoints, then its leases released; b and c contend.
        t = time.time()
        assert daemons["a"].stop() == 0
        first_a = daemons.pop("a")
        owners = wait_owned(daemons, {"b", "c"}, TTL / 2 + 2, "b and c take over a's released pipelines")
        graceful = time.time() - t

        daemons["a"] = replica("a")
        time.sleep(TTL / 2)
        wait_owned(daemons, {"b", "c"}, 5, "b and c keep their pipelines when a comes back")
        # kill -9: nothing released; a takes over once the heartbeats stood still for the TTL.
        t = time.time()
        for n in "bc":
            daemons[n].proc.kill()
            daemons[n].proc.wait()
        wait_owned(daemons, {"a"}, TTL * 2 + 10, "a takes over the dead replicas' pipelines")
        killed = time.time() - t
        print(f"after SIGTERM {graceful:.1f} s ({owners}), after kill -9 {killed:.1f} s (lease TTL {TTL:g} s)")

        a = daemons["a"]
        a.wait(lambda: all(s["phase"] == "finished" for s in a.status()[0].values()), 240,
               "every generator finishes on a")
    finally:
        for dm in daemons.values():
            if dm.proc.poll() is None:
                dm.stop()
    logs = {p.name: p.read_text() for p in d.glob("daemon-*.log")}
    for name, text in logs.items():
        assert "fenced" not in text, f"{name}: {text[-3000:]}"
    # The stopping a started nothing once its SIGTERM came.
    first = first_a.log.read_text()
    after = first[first.index("stopping: taking a final checkpoint"):]
    assert "lakeshore::pipeline: starting" not in after, after[:3000]
    assert "took the pipeline's lease" in daemons["a"].log.read_text()
    for p in ps:
        assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
