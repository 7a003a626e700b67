"""A primary failover under a MySQL-source pipeline (MariaDB, GTID replication).

The pipeline follows a primary; the primary is killed (-9), its replica promoted, and the
pipeline, pointed at the new primary, resumes by GTID: the checkpoint's binlog file exists
there under the same name, but its offsets are another server's (the replica's binlog
also holds its own transactions), so resuming by file and offset would read the wrong
events. The lake must equal the new primary's rows, nothing lost or duplicated; a
replica promoted before it received what the lake has must stop the pipeline saying so."""
import random
import signal
import time

import pytest

from myserver import MyServer
from conftest import start_run
from test_mysql import ACCT_COLUMNS, Churn, assert_same, my_pipeline, setup_acct


@pytest.fixture
def primary_and_replica():
    primary = MyServer()
    replica = MyServer(server_id=2)
    try:
        with replica.connect() as c, c.cursor() as cur:
            # Its own set-up is not the primary's history ...
            cur.execute("RESET MASTER")
            # ... but its own transactions (another GTID domain) are in its binlog: the
            # same file names as the primary's, other offsets.
            cur.execute("SET SESSION gtid_domain_id = 9")
            cur.execute("CREATE DATABASE local_only")
            cur.execute("CREATE TABLE local_only.t (id int PRIMARY KEY, v text)")
            cur.execute("INSERT INTO local_only.t VALUES (1, repeat('r', 700)), (2, 'x')")
            cur.execute(f"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {primary.port}, "
                        "MASTER_USER = 'root', MASTER_USE_GTID = slave_pos")
            cur.execute("START SLAVE")
        yield primary, replica
    finally:
        primary.stop()
        replica.stop()


def caught_up(primary, replica):
    """Wait until the replica has applied everything the primary has committed."""
    pos = primary.execute("SELECT @@gtid_binlog_pos")[0][0]
    waited = replica.execute("SELECT MASTER_GTID_WAIT(%s, 60)", params=(pos,))[0][0]
    assert waited == 0, f"the replica did not reach {pos}"


def promote(replica):
    for sql in ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"]:
        replica.execute(sql)


def point_at(p, server):
    text = p.file.read_text()
    p.file.write_text(text.replace(p.url, server.url()))
    p.url = server.url()


def run_for(p, seconds):
    """One run, killed -9 after `seconds`; its log."""
    run = start_run(p)
    time.sleep(seconds)
    assert run.poll() is None, run.communicate()[1][-3000:]
    run.send_signal(signal.SIGKILL)
    return run.communicate()[1]


@pytest.mark.parametrize("during", ["streaming", "snapshot"])
def test_the_pipeline_follows_a_promoted_replica_by_gtid(tmp_path, primary_and_replica, duck, during):
    primary, replica = primary_and_replica
    rows = 20000 if during == "streaming" else 300000
    db = setup_acct(primary, "fo", rows)
    churn = Churn(primary, db, rows + 1, seed=31)
    churn.start()
    p = my_pipeline(tmp_path, "fo", primary, ["fo.acct"], chunk_size=500)
    p.url = primary.url()
    rng = random.Random(31 if during == "streaming" else 32)
    logs = [run_for(p, rng.uniform(5, 7) if during == "streaming" else rng.uniform(0.7, 1.2))]
    if during == "streaming":
        assert "snapshot complete" in logs[0], logs[0][-3000:]
    else:
        assert "snapshot complete" not in logs[0], "the snapshot ended before the failover"
    # The primary keeps committing after the pipeline's last checkpoint; the replica
    # receives it all, then the primary dies.
    time.sleep(1)
    churn.stop()
    caught_up(primary, replica)
    primary.kill()
    promote(replica)
    churn = Churn(replica, db, churn.next_id, seed=33)
    churn.start()
    point_at(p, replica)
    logs.append(run_for(p, rng.uniform(4, 6)))
    assert "resuming by GTID" in logs[-1], logs[-1][-3000:]
    # Once on the new primary, file and offset are its own: resumed by them.
    logs.append(run_for(p, rng.uniform(2, 3)))
    assert "resuming by GTID" not in logs[-1], logs[-1][-3000:]
    churn.stop()
    p.backfill()
    assert_same(duck, replica, db, p, "acct", ACCT_COLUMNS)


def test_a_replica_without_the_lakes_transactions_stops_the_pipeline(tmp_path, primary_and_replica):
    primary, replica = primary_and_replica
    db = setup_acct(primary, "gap", 1000)
    caught_up(primary, replica)
    replica.execute("STOP SLAVE")
    p = my_pipeline(tmp_path, "gap", primary, ["gap.acct"])
    p.url = primary.url()
    run = start_run(p)
    time.sleep(3)
    # Committed on the primary, read into the lake, never received by the replica.
    primary.execute("UPDATE acct SET v = 'only on the old primary' WHERE id <= 10", db)
    time.sleep(3)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err[-3000:]
    primary.kill()
    promote(replica)
    point_at(p, replica)
    run = start_run(p)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0, err[-3000:]
    assert "lacks transactions the lake already has" in err and "new snapshot" in err, err[-3000:]
