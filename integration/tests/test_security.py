"""Issue 20: the control plane. With a token, every endpoint but /health and /ready
needs it (401 without, 200 with), mutating endpoints take only POST and refuse requests
from another origin (a cross-site form); without a token the daemon refuses any address
but loopback; `lakeshore status` reads the token; the endpoints speak HTTPS with [tls]."""
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import conftest
from conftest import BIN
from test_daemon import Daemon, free_port, generator

TOKEN = "t0k3n-" + "x" * 26


def call(port, path, method="GET", token=None, headers=None, data=None, scheme="http", context=None):
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", method=method, data=data,
                                 headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_every_endpoint_but_health_needs_the_token(tmp_path, monkeypatch):
    d = tmp_path / "pipelines"
    d.mkdir()
    generator(d, "gen", rate=500)
    monkeypatch.setenv("LAKESHORE_API_TOKEN", TOKEN)
    daemon = Daemon(d, [d])
    port = daemon.port
    try:
        daemon.wait(lambda: call(port, "/pipelines/gen", token=TOKEN)[0] == 200, 30, "gen is known")
        for path in ["/health", "/ready"]:
            assert call(port, path)[0] in (200, 503), path
        for path in ["/metrics", "/pipelines", "/pipelines/gen"]:
            code, body = call(port, path)
            assert code == 401 and "Bearer" in body, (path, code, body)
            assert call(port, path, token="wrong-" + TOKEN[6:])[0] == 401, path
            assert call(port, path, token=TOKEN)[0] == 200, path
        for action in ["pause", "resume"]:
            assert call(port, f"/pipelines/gen/{action}", "POST")[0] == 401, action
            # A cross-site form: no token, and even with one, another origin is refused.
            form = {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
            assert call(port, f"/pipelines/gen/{action}", "POST", headers=form, data=b"x=1")[0] == 403
            assert call(port, f"/pipelines/gen/{action}", "POST", token=TOKEN, headers=form, data=b"x=1")[0] == 403
            # Only POST changes anything.
            assert call(port, f"/pipelines/gen/{action}", token=TOKEN)[0] == 405
            code, body = call(port, f"/pipelines/gen/{action}", "POST", token=TOKEN)
            assert code == 200, (action, code, body)
        assert call(port, "/pipelines/gen/resnapshot?table=orders", "POST")[0] == 401
        # The daemon's own origin (same host and port) may post, with the token.
        same = {"Origin": f"http://127.0.0.1:{port}"}
        assert call(port, "/pipelines/gen/pause", "POST", token=TOKEN, headers=same)[0] == 200
        assert call(port, "/pipelines/gen/resume", "POST", token=TOKEN, headers=same)[0] == 200
        # `lakeshore status` with the token from the environment, and without it.
        url = f"http://127.0.0.1:{port}"
        r = subprocess.run([BIN, "status", "--url", url], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "gen" in r.stdout, r.stderr
        env = {k: v for k, v in os.environ.items() if k != "LAKESHORE_API_TOKEN"}
        r = subprocess.run([BIN, "status", "--url", url], capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode != 0 and "401" in r.stderr, r.stderr
        assert TOKEN not in daemon.log.read_text()
    finally:
        daemon.stop()


def test_no_token_means_loopback_only(tmp_path, monkeypatch):
    monkeypatch.delenv("LAKESHORE_API_TOKEN", raising=False)
    d = tmp_path / "pipelines"
    d.mkdir()
    generator(d, "gen", rate=500)
    r = subprocess.run([BIN, "run", str(d), "--http", f"0.0.0.0:{free_port()}"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "without a token" in r.stderr and "[auth]" in r.stderr and "127.0.0.1" in r.stderr, r.stderr
    # A token that is too short is refused, naming the file and line.
    (tmp_path / "daemon.toml").write_text('http = "0.0.0.0:1"\n[auth]\ntoken = "short"\n')
    r = subprocess.run([BIN, "run", "--config", str(tmp_path / "daemon.toml"), str(d)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "daemon.toml:3:9" in r.stderr and "16 characters" in r.stderr, r.stderr


def test_https_with_a_token_file_and_open_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("LAKESHORE_API_TOKEN", raising=False)
    certs = tmp_path / "certs"
    subprocess.run([str(conftest.ROOT / "integration" / "tls-certs.sh"), str(certs)], check=True)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "daemon.toml").write_text(
        '[auth]\ntoken_file = "token"\nmetrics = "open"\n'
        '[tls]\ncert = "certs/server.crt"\nkey = "certs/server.key"\n')
    d = tmp_path / "pipelines"
    d.mkdir()
    generator(d, "gen", rate=500)
    port = free_port()
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([BIN, "run", "--config", str(tmp_path / "daemon.toml"), str(d),
                             "--http", f"0.0.0.0:{port}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    try:
        import time
        deadline = time.time() + 30
        while True:
            try:
                if call(port, "/health", scheme="https", context=ctx)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, ssl.SSLError):
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.25)
        assert call(port, "/metrics", scheme="https", context=ctx)[0] == 200
        assert call(port, "/pipelines", scheme="https", context=ctx)[0] == 401
        code, body = call(port, "/pipelines", scheme="https", context=ctx, token=TOKEN)
        assert code == 200 and json.loads(body)["pipelines"][0]["name"] == "gen"
        # Plain HTTP on the TLS port gets nothing.
        try:
            plain = call(port, "/health")[0]
        except Exception:  # noqa: BLE001 - a TLS port answers plain HTTP with garbage or nothing
            plain = None
        assert plain != 200
        # `lakeshore status` reads the token from the daemon file.
        r = subprocess.run([BIN, "status", "--url", f"http://127.0.0.1:{port}", "--config",
                            str(tmp_path / "daemon.toml")], capture_output=True, text=True, timeout=30)
        assert TOKEN not in r.stdout + r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# Every character that means something in a URL, a libpq string or SQL quoting.
ODD = "Zq@9:w/r?d#x%2Fk&=+ 'q\"\\;"


def fragments(secret, n=6):
    """Pieces of the secret long enough not to occur by chance, raw and percent-encoded."""
    from urllib.parse import quote
    out = set()
    for s in (secret, quote(secret, safe="")):
        out |= {s[i:i + n] for i in range(len(s) - n + 1)}
    return out


def assert_nowhere(secret, texts, paths):
    pieces = fragments(secret)
    for name, text in texts.items():
        leaked = [p for p in pieces if p in text]
        assert not leaked, f"{name} shows {leaked}"
    for root in paths:
        for f in root.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                leaked = [p for p in pieces if p.encode() in data]
                assert not leaked, f"{f} holds {leaked}"


def run_cmd(args, cwd, env):
    r = subprocess.run([BIN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout + r.stderr


def test_a_postgres_password_with_url_metacharacters(tmp_path, postgres, duck):
    """Issue 20: the password reaches the server whole through `${ENV}` (snapshot and
    replication connection alike) and appears nowhere: not in any output, state or lake
    file."""
    from conftest import Pipeline
    from test_postgres import assert_lake_equals_source
    db = postgres.create_db("odd20")
    quoted = ODD.replace("'", "''")
    postgres.execute(f"CREATE ROLE odd LOGIN REPLICATION PASSWORD '{quoted}'")
    postgres.execute("GRANT CREATE ON DATABASE odd20 TO odd")
    with postgres.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g")
        c.execute("ALTER TABLE t OWNER TO odd")
    url = postgres.url(db, "odd", "${ODD_PW}")
    p = Pipeline(tmp_path, "odd20", {"type": "postgres", "url": url, "tables": ["public.t"]}, {"namespace": "pg"})
    env = {**os.environ, "ODD_PW": ODD}
    out = run_cmd(["validate", "--connect", str(p.file)], tmp_path, env)
    out += run_cmd(["backfill", str(p.file)], tmp_path, env)
    with postgres.connect(db) as c:
        c.execute("UPDATE t SET v = 'changed' WHERE id <= 50")
        c.execute("INSERT INTO t VALUES (1000, 'new')")
    out += run_cmd(["backfill", str(p.file)], tmp_path, env)
    assert_lake_equals_source(duck, postgres, db, p, "t", ["id", "v"])
    # The libpq key=value form, through the query and the replication connection too.
    kv = f"host=127.0.0.1 port={postgres.port} user=odd dbname={db} password=${{ODD_PW}}"
    p2 = Pipeline(tmp_path, "odd20kv", {"type": "postgres", "url": kv, "tables": ["public.t"],
                                        "slot": "odd20kv"}, {"namespace": "pgkv"})
    out += run_cmd(["validate", "--connect", str(p2.file)], tmp_path, env)
    out += run_cmd(["backfill", str(p2.file)], tmp_path, env)
    with postgres.connect(db) as c:
        c.execute("DELETE FROM t WHERE id <= 10")
    out += run_cmd(["backfill", str(p2.file)], tmp_path, env)
    assert_lake_equals_source(duck, postgres, db, p2, "t", ["id", "v"])
    # A wrong password: refused, saying what to check, still without the secret.
    bad = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**env, "ODD_PW": ODD[::-1]})
    assert bad.returncode != 0 and "refused the login" in bad.stderr, bad.stderr
    assert_nowhere(ODD, {"output": out, "bad output": bad.stdout + bad.stderr}, [tmp_path / "lake", tmp_path / "state"]
                   if (tmp_path / "state").exists() else [tmp_path / "lake"])


def test_a_mariadb_password_with_url_metacharacters(tmp_path, mysql, duck):
    from conftest import Pipeline
    from test_mysql import assert_same
    db = mysql.create_db("odd20")
    escaped = ODD.replace("\\", "\\\\").replace("'", "\\'")
    mysql.execute("DROP USER IF EXISTS 'odd'@'%'")
    mysql.execute(f"CREATE USER 'odd'@'%' IDENTIFIED BY '{escaped}'")
    mysql.execute("GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT, RELOAD ON *.* TO 'odd'@'%'")
    mysql.execute("CREATE TABLE t (id int PRIMARY KEY, v varchar(20))", db)
    mysql.execute("INSERT INTO t SELECT seq, concat('v', seq) FROM seq_1_to_500", db)
    url = mysql.url(user="odd", password="${ODD_PW}")
    p = Pipeline(tmp_path, "odd20", {"type": "mysql", "url": url, "tables": ["odd20.t"]}, {"namespace": "my"})
    env = {**os.environ, "ODD_PW": ODD}
    out = run_cmd(["validate", "--connect", str(p.file)], tmp_path, env)
    out += run_cmd(["backfill", str(p.file)], tmp_path, env)
    mysql.execute("UPDATE t SET v = 'changed' WHERE id <= 50", db)
    mysql.execute("INSERT INTO t VALUES (1000, 'new')", db)
    out += run_cmd(["backfill", str(p.file)], tmp_path, env)
    assert_same(duck, mysql, db, p, "t", ["id", "v"])
    bad = subprocess.run([BIN, "validate", "--connect", str(p.file)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**env, "ODD_PW": ODD[::-1]})
    assert bad.returncode != 0, bad.stderr
    assert_nowhere(ODD, {"output": out, "bad output": bad.stdout + bad.stderr}, [tmp_path / "lake"])


def test_names_that_escape_their_place_are_refused(tmp_path):
    """Issue 20: a lake table name that is not one directory (`a/b`) is refused, as is a
    namespace that would sit inside a table's location (namespace `shop.orders` beside
    table `shop.orders`), and a table whose location would hold a namespace's tables.
    Orphan cleanup deletes only under the table's own `data/` and `metadata/`: files a
    neighbour keeps inside its location stay."""
    import time
    from conftest import Pipeline
    from test_maintain import maintain, orders

    def gen(name, namespace, **route):
        p = Pipeline(tmp_path, name, {"type": "datagen", "profile": "orders", "events": 2000, "seed": 1},
                     {"namespace": namespace})
        if route:
            p.file.write_text(p.file.read_text() + f'\n[[route]]\nfrom = "{route["src"]}"\nto = "{route["to"]}"\n')
        return p

    def refused(p, *texts):
        r = subprocess.run([BIN, "backfill", str(p.file)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        for t in texts:
            assert t in r.stderr, r.stderr[-2000:]

    refused(gen("slash", "shop", src="orders", to="a/b"), 'table name "a/b" cannot be a directory')
    refused(gen("dots", "shop", src="orders", to=".."), 'table name ".." cannot be a directory')
    p = orders(tmp_path, "base", 5000, 0)
    p.backfill()
    refused(gen("nested_ns", "shop.orders"), "namespace shop.orders: a table of that name exists")
    # A namespace first, then a table of that name beside it.
    gen("inner", "shop.sub").backfill()
    refused(gen("outer", "shop", src="orders", to="sub"), "table shop.sub: a namespace of that name exists")
    # Orphan cleanup of shop.orders leaves a neighbour's file inside its location alone.
    location = p.warehouse / "shop" / "orders"
    neighbour = location / "other" / "kept.parquet"
    neighbour.parent.mkdir()
    neighbour.write_bytes(b"not ours")
    orphan = location / "data" / "lost.parquet"
    orphan.write_bytes(b"ours, lost")
    old = time.time() - 7200
    for f in (neighbour, orphan):
        os.utime(f, (old, old))
    p.file.write_text(p.file.read_text() + '\n[sink.maintenance]\nremove_orphans_older_than = "1h"\n')
    maintain(p)
    assert neighbour.exists() and not orphan.exists()


def test_an_s3_secret_with_metacharacters_appears_nowhere(tmp_path, s3, duck):
    """The S3 secret key through `${ENV}`: the pipeline writes its warehouse and state to S3
    (moto does not check signatures, so this proves the secret is carried and hidden, not
    that a real S3 accepts it), and no piece of it is in any output, any object in the
    bucket or any local file. `allow_http` is said in a warning."""
    from conftest import Pipeline
    bucket = s3.bucket("odd20")
    storage = {**s3.storage(), "secret_access_key": "${ODD_S3}"}
    orders = {"type": "datagen", "profile": "orders", "initial_rows": 500, "seed": 2, "events": 2000}
    p = Pipeline(tmp_path, "s3odd", orders, {"namespace": "shop", "mode": "upsert", "storage": storage})
    p.file.write_text(p.file.read_text().replace('warehouse = "lake/warehouse"', f'warehouse = "s3://{bucket}/wh"')
                      .replace("[source]", f'state = "s3://{bucket}/state"\n\n[source]'))
    env = {**os.environ, "ODD_S3": ODD}
    out = run_cmd(["validate", str(p.file)], tmp_path, env)
    out += run_cmd(["backfill", str(p.file)], tmp_path, env)
    assert "over plain HTTP" in out, out[-2000:]
    keys = s3.keys(bucket)
    assert any(k.startswith("wh/") for k in keys) and any(k.startswith("state/") for k in keys), keys
    objects = {k: s3.client().get_object(Bucket=bucket, Key=k)["Body"].read().decode("latin-1") for k in keys}
    assert_nowhere(ODD, {"output": out, **objects}, [tmp_path])


def test_snapshot_progress_stays_in_its_own_lake_table(tmp_path, postgres, duck):
    """Issue 20: a table's snapshot progress (primary-key values) is written into its own
    lake table's commits only, never into another table's snapshot summaries or metadata,
    nor into log lines. Recovery from the lake alone (the state directory lost after a
    kill -9 while the tables are read and written) puts the position together from every
    table's newest commit, and the lake ends equal to the source."""
    import random
    import shutil
    import signal
    import threading
    import time
    from conftest import Pipeline
    from test_postgres import assert_lake_equals_source
    db = postgres.create_db("split20")
    with postgres.connect(db) as c:
        for t in ("sa", "sb"):
            c.execute(f"CREATE TABLE {t} (k text PRIMARY KEY, v int)")
            c.execute(f"INSERT INTO {t} SELECT '{t}-secret-' || lpad(g::text, 7, '0'), g "
                      "FROM generate_series(1, 200000) g")
    halt = threading.Event()

    def writes():
        rng = random.Random(20)
        with postgres.connect(db) as c:
            n = 300000
            while not halt.is_set():
                with c.transaction():
                    for t in ("sa", "sb"):
                        g = rng.randrange(1, n)
                        c.execute(f"update {t} set v = v + 1 where k = %s", (f"{t}-secret-{g:07}",))
                        c.execute(f"delete from {t} where k = %s", (f"{t}-secret-{rng.randrange(1, n):07}",))
                        c.execute(f"insert into {t} values (%s, 0) on conflict do nothing", (f"{t}-secret-{n:07}",))
                n += 1
                time.sleep(0.003)

    writer = threading.Thread(target=writes, daemon=True)
    writer.start()
    src = {"type": "postgres", "url": postgres.url(db), "tables": ["public.sa", "public.sb"], "chunk_size": 500}
    p = Pipeline(tmp_path, "split20", src, {"namespace": "pg"}, interval="250ms")
    state, aside = tmp_path / "lake" / "state", tmp_path / "state-aside"
    rng = random.Random("split20")
    env = {"LAKESHORE_TEST_COMMIT_PAUSE_MS": "50"}
    logs, from_lake_reading = [], 0
    for _ in range(6):
        run = p.start(env)
        time.sleep(rng.uniform(0.8, 2.0))
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
        logs.append(run.communicate(timeout=60)[1])
        if not state.exists():
            continue
        shutil.rmtree(aside, ignore_errors=True)
        shutil.move(state, aside)
        attempt = p.start(env)
        time.sleep(rng.uniform(0.8, 2.0))
        if attempt.poll() is None:
            attempt.send_signal(signal.SIGKILL)
        err = attempt.communicate(timeout=60)[1]
        logs.append(err)
        resumed = [line for line in err.splitlines() if "resuming from the lake's commit" in line]
        if resumed:
            from_lake_reading += "reading" in resumed[0]
        elif attempt.returncode == 2:
            assert "reached only" in err, err[-2000:]
            shutil.rmtree(state, ignore_errors=True)
            shutil.move(aside, state)
        else:
            assert attempt.returncode in (0, -signal.SIGKILL), err[-2000:]
    halt.set()
    writer.join()
    logs.append(p.backfill()[1])
    for t in ("sa", "sb"):
        assert_lake_equals_source(duck, postgres, db, p, t, ["k", "v"])
    assert from_lake_reading >= 1, "no run resumed from the lake while a table was being read"
    text = "".join(logs)
    assert "-secret-" not in text, [line for line in text.splitlines() if "-secret-" in line][:3]
    # Each table's metadata holds its own progress (the check can see keys) and no other's.
    for own, other in (("sa", "sb"), ("sb", "sa")):
        meta = "".join(f.read_text() for f in (p.warehouse / "pg" / own / "metadata").glob("*.json"))
        assert f"{own}-secret-" in meta, f"{own}'s metadata holds none of its own progress"
        assert f"{other}-secret-" not in meta, f"{own}'s metadata holds {other}'s keys"


def test_a_kafka_sasl_password_with_metacharacters_appears_nowhere(tmp_path):
    """Issue 20, Kafka: the SASL password given through `${ENV}` in [source] properties.
    tansu 0.6.0 refuses every SCRAM login (it finds no user made by its own `user create`),
    so this proves that the refusal is named with the settings to check, and that no
    piece of the password is in any output or file; not that a broker accepts it."""
    from kafkaserver import Broker
    from conftest import Pipeline
    broker = Broker(authentication=True)
    try:
        props = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                 "sasl.username": "lake", "sasl.password": "${KAFKA_PW}"}
        src = {"type": "kafka", "brokers": broker.brokers, "topics": ["orders"], "format": "raw",
               "properties": props}
        p = Pipeline(tmp_path, "sasl20", src, {"namespace": "k", "mode": "append"})
        env = {**os.environ, "KAFKA_PW": ODD}
        outs = {}
        for cmd in (["validate"], ["validate", "--connect"], ["backfill"]):
            r = subprocess.run([BIN, *cmd, str(p.file)], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, env=env)
            outs[" ".join(cmd)] = r.stdout + r.stderr
            if cmd != ["validate"]:
                assert r.returncode == 2, r.stderr[-2000:]
                assert "refused the login" in r.stderr and "sasl.password" in r.stderr, r.stderr[-2000:]
        assert_nowhere(ODD, outs, [tmp_path])
    finally:
        broker.stop()
