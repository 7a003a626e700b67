"""The randomized differential test (integration/differential.py), short form: a few
seeds of random DML, DDL and faults against MariaDB and PostgreSQL, the lake checked
against the source at every quiescent point. Long forms: integration/torture.sh."""
import pytest

import differential

SEEDS = [0, 1]
OPS = 40


@pytest.mark.parametrize("seed", SEEDS)
def test_mysql_random_operations_land_exactly_or_stop_loudly(tmp_path, mysql, seed):
    db = differential.MyDb(mysql, mysql.create_db(f"diff{seed}"))
    counts = differential.Run(db, seed, OPS, tmp_path).run()
    print(dict(counts))
    assert counts["checks equal"] >= OPS // 5


@pytest.mark.parametrize("seed", SEEDS)
def test_postgres_random_operations_land_exactly_or_stop_loudly(tmp_path, postgres, seed):
    db = differential.PgDb(postgres, postgres.create_db(f"diff{seed}"))
    counts = differential.Run(db, seed, OPS, tmp_path).run()
    print(dict(counts))
    assert counts["checks equal"] >= OPS // 5
