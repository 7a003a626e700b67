"""Iceberg REST catalog: lakeshore commits through a real REST server (Lakana, from PyPI,
on the test PostgreSQL), and the lake is read back through the same catalog by
pyiceberg's `RestCatalog` and by DuckDB (`iceberg_scan` of the metadata file the
catalog names). Lakana's own rules: tables only under `bronze`/`silver`/`gold`, the
server picks table locations, snapshot removal refused."""
import http.server
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import BIN, Pipeline, assert_same_rows, run_with_crashes, start_run, table_digest
from test_lake import NEXMARK_COLUMNS, ORDER_COLUMNS, nexmark_counts, rewrite_while_running


def orders(tmp_path, lakana, name, events, rate=30_000, interval="300ms", sink=None):
    return Pipeline(tmp_path, name,
                    {"type": "datagen", "profile": "orders", "events": events, "initial_rows": 10_000, "seed": 17,
                     "rate": rate, "batch_events": 1000},
                    {"namespace": f"bronze.{name}", "mode": "upsert", **(sink or {})},
                    partitioning={"orders": ["status"]}, interval=interval, lakana=lakana)


def test_quickstart_through_rest(tmp_path, lakana, duck):
    events = 60_000
    p = Pipeline(tmp_path, "quick", {"type": "datagen", "profile": "nexmark", "events": events, "seed": 5},
                 {"namespace": "bronze.nexmark", "mode": "append"}, partitioning={"bid": ["hour(date_time)"]},
                 lakana=lakana)
    _, err = p.backfill()
    assert lakana.token not in err
    exp = p.expected()
    for table, columns in NEXMARK_COLUMNS.items():
        assert_same_rows(duck, p, table, exp / f"{table}.parquet", columns)
    # pyiceberg through the catalog: the rows, and lakeshore's checkpoint in the summary.
    bid = p.pyiceberg_table("bid")
    assert bid.scan().to_arrow().num_rows == nexmark_counts(events)["bid"]
    assert bid.current_snapshot().summary["lakeshore.pipeline"] == "quick"
    assert bid.spec().fields[0].transform.__class__.__name__ == "HourTransform"
    # The server placed the tables in its warehouse.
    assert bid.metadata.location.startswith(f"file://{lakana.warehouse}")
    # Run again: nothing to do, nothing duplicated.
    p.backfill()
    assert_same_rows(duck, p, "bid", exp / "bid.parquet", NEXMARK_COLUMNS["bid"])


def test_kill_nine_during_rest_commits_loses_and_duplicates_nothing(tmp_path, lakana, duck):
    p = orders(tmp_path, lakana, "crash", 240_000)
    logs = run_with_crashes(p, kills=5, window=(0.4, 1.6), env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "150"},
                            seed="rest")
    assert sum("resuming" in log for log in logs) >= 3
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def test_postgres_cdc_with_kill_nine_during_rest_commits(tmp_path, postgres, lakana, duck):
    """Snapshot and WAL stream of a table under random transactions, killed -9 seven
    times (a pause inside each commit makes kills land there): the lake, read through
    the catalog, equals the source's rows."""
    from test_postgres import ACCT_COLUMNS, Churn, assert_lake_equals_source, setup_acct
    db = setup_acct(postgres, "restcdc", 100_000)
    churn = Churn(postgres, db, 100_001, seed=3)
    churn.start()
    src = {"type": "postgres", "url": postgres.url(db), "tables": ["public.acct"], "chunk_size": 500}
    p = Pipeline(tmp_path, "restcdc", src, {"namespace": "bronze.pg"}, interval="300ms", lakana=lakana)
    rng = random.Random(11)
    logs = []
    try:
        for _ in range(7):
            run = start_run(p, env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "150"})
            time.sleep(rng.uniform(0.6, 1.8))
            assert run.poll() is None, run.communicate()[1]
            run.send_signal(signal.SIGKILL)
            logs.append(run.communicate()[1])
    finally:
        churn.stop()
    p.backfill()
    assert_lake_equals_source(duck, postgres, db, p, "acct", ACCT_COLUMNS)
    assert any("resuming" in log for log in logs[1:]), "no run resumed from a checkpoint"


def test_a_foreign_commit_between_checkpoints_is_kept(tmp_path, lakana, duck):
    """pyiceberg rewrites every data file through the catalog while lakeshore holds
    position deletes into the old ones: lakeshore's commit gets 409, reloads, finds the
    rewrite, looks its keys up again, and lands; the table equals the source."""
    p = orders(tmp_path, lakana, "shared", 90_000, rate=12_000)
    proc = p.start(env={"LAKESHORE_TEST_COMMIT_PAUSE_MS": "600", "RUST_LOG": "info"})
    rewrites = rewrite_while_running(p, proc, "orders", 5)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert rewrites == 5
    assert "looked the checkpoint's keys up again" in err, "no commit met a foreign rewrite"
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def maintain(p, *args):
    return subprocess.run([BIN, "maintain", str(p.file), *args], cwd=p.dir, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **p.lakana.env()})


def test_compaction_through_rest_while_ingestion_commits(tmp_path, lakana, duck):
    p = orders(tmp_path, lakana, "busy", 150_000, rate=15_000, interval="150ms",
               sink={"maintenance": {"compact_when": {"delete_files": 1, "small_files": 2, "deleted_ratio": 0.0}}})
    run = p.start(env=p.lakana.env())
    outs = []
    try:
        while run.poll() is None:
            try:
                p.pyiceberg_table("orders")
            except Exception:
                time.sleep(0.2)
                continue
            out = maintain(p)
            assert out.returncode == 0, out.stderr
            outs.append(out.stdout)
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    finally:
        if run.poll() is None:
            run.kill()
    compacted = [o for o in outs if not re.search(r"orders: 0 partitions compacted", o)]
    assert len(compacted) >= 2, outs
    out = maintain(p)
    assert out.returncode == 0, out.stderr
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)
    assert p.pyiceberg_table("orders").current_snapshot().summary.operation.value == "replace"


def test_expiry_refused_by_the_catalog_names_the_setting(tmp_path, lakana, duck):
    p = orders(tmp_path, lakana, "expire", 60_000, rate=30_000,
               sink={"maintenance": {"expire_snapshots_older_than": "1s"}})
    p.backfill()
    assert len(p.pyiceberg_table("orders").snapshots()) >= 3
    time.sleep(1.5)
    out = maintain(p)
    print(out.stderr)
    assert out.returncode != 0
    assert "expire_snapshots_older_than" in out.stderr and "REST catalog" in out.stderr, out.stderr
    # The table is unchanged and still exact.
    assert_same_rows(duck, p, "orders", p.expected() / "orders.parquet", ORDER_COLUMNS)


def test_a_wrong_token_is_a_configuration_error(tmp_path, lakana):
    p = Pipeline(tmp_path, "denied", {"type": "datagen", "profile": "nexmark", "events": 100, "seed": 1},
                 {"namespace": "bronze.denied", "mode": "append"}, lakana=lakana)
    p.file.write_text(p.file.read_text().replace('"${LAKANA_TOKEN}"', '"${WRONG_TOKEN}"'))
    proc = p.start(env={"WRONG_TOKEN": "lakana_pat_0123456789abcdef_notthesecretnotthesecret0"})
    _, err = proc.communicate(timeout=60)
    print(err)
    assert proc.returncode != 0
    assert "REST catalog" in err and "[sink.catalog] token" in err, err
    assert "notthesecret" not in err


class TokenEndpoint:
    """The one stand-in of the suite: Lakana has no OAuth2 endpoint, so this minimal
    one follows the Iceberg REST spec's `/v1/oauth/tokens` shapes (form in, JSON out),
    hands out the catalog's token for the right client credentials with a short life,
    and counts what it issued."""

    def __init__(self, token, client_id, secret, expires_in):
        self.issued = 0
        self.refused = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                ok = (form.get("grant_type") == ["client_credentials"] and form.get("client_id") == [client_id]
                      and form.get("client_secret") == [secret] and form.get("scope") == ["catalog"])
                if ok:
                    outer.issued += 1
                    status, body = 200, {"access_token": token, "token_type": "bearer",
                                         "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                         "expires_in": expires_in}
                else:
                    outer.refused += 1
                    status, body = 401, {"error": "invalid_client", "error_description": "unknown client"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/v1/oauth/tokens"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def token_endpoint(lakana):
    endpoint = TokenEndpoint(lakana.token, "lakeshore-client", "s3cr3t-client-secret", expires_in=1)
    yield endpoint
    endpoint.stop()


def oauth_pipeline(tmp_path, lakana, endpoint, name):
    p = orders(tmp_path, lakana, name, 60_000, rate=15_000)
    catalog = {"type": "rest", "uri": lakana.uri, "prefix": lakana.prefix, "credential": "${CLIENT_CREDENTIAL}",
               "oauth2_server_uri": endpoint.uri}
    text = p.file.read_text()
    text = re.sub(r"^catalog = .*$", "catalog = { " + ", ".join(f'{k} = "{v}"' for k, v in catalog.items()) + " }",
                  text, flags=re.M)
    p.file.write_text(text)
    return p


def test_oauth2_client_credentials_are_refreshed_before_expiry(tmp_path, lakana, token_endpoint, duck):
    p = oauth_pipeline(tmp_path, lakana, token_endpoint, "oauth")
    env = {"CLIENT_CREDENTIAL": "lakeshore-client:s3cr3t-client-secret"}
    started = time.time()
    _, err = p.backfill(env=env)
    took = time.time() - started
    assert "s3cr3t" not in err
    # A token lives 1 s and is fetched again after 0.8 s: a run of several seconds
    # fetched several, and never sent an expired one (Lakana would not notice; the
    # count proves the refresh).
    assert took > 3 and token_endpoint.issued >= int(took / 1.0), (took, token_endpoint.issued)
    assert token_endpoint.refused == 0
    assert_same_rows(duck, p, "orders", p.expected(env) / "orders.parquet", ORDER_COLUMNS)


def test_a_wrong_client_secret_is_a_configuration_error(tmp_path, lakana, token_endpoint):
    p = oauth_pipeline(tmp_path, lakana, token_endpoint, "oauthbad")
    proc = p.start(env={"CLIENT_CREDENTIAL": "lakeshore-client:wrong-secret-value"})
    _, err = proc.communicate(timeout=60)
    print(err)
    assert proc.returncode != 0
    assert "invalid_client" in err and "[sink.catalog] credential" in err, err
    assert "wrong-secret-value" not in err
    assert token_endpoint.refused >= 1


def test_rest_settings_on_an_sql_catalog_say_what_to_write(tmp_path):
    p = Pipeline(tmp_path, "mixed", {"type": "datagen", "profile": "nexmark", "events": 10, "seed": 1},
                 {"namespace": "n", "mode": "append"})
    p.file.write_text(p.file.read_text().replace('warehouse = "lake/warehouse" }',
                                                 'warehouse = "lake/warehouse", token = "abc" }'))
    out = subprocess.run([BIN, "validate", str(p.file)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert "token is a setting of REST catalogs" in out.stderr, out.stderr
    assert re.search(r"mixed\.toml:\d+:\d+", out.stderr), out.stderr


def test_digest_helper_reads_through_the_catalog(tmp_path, lakana, duck):
    """The readers agree: DuckDB's scan of the catalog's metadata file and pyiceberg's
    scan through the catalog see the same rows."""
    p = orders(tmp_path, lakana, "agree", 20_000, rate=100_000)
    p.backfill()
    got = table_digest(duck, p.scan("orders"), ORDER_COLUMNS)
    arrow = p.pyiceberg_table("orders").scan().to_arrow()
    duck.register("py", arrow)
    assert table_digest(duck, "py", ORDER_COLUMNS) == got
