"""The randomized differential test of issue 19, in the spirit of Jepsen.

A seeded generator runs random operations against a real MariaDB or PostgreSQL while
`lakeshore run` follows the database: multi-row transactions (inserts, updates, deletes,
key changes, large values), ADD / DROP / RENAME COLUMN, type widening and changes the
lake cannot take, RENAME TABLE, gh-ost style swaps, TRUNCATE, DROP + CREATE, and faults
(kill -9 of lakeshore, a database restart, a lost state directory). At every quiescent
point a checker reads each lake table with DuckDB and the source table with its own
driver and requires them equal, column by column, within a deadline — or lakeshore
stopped with an error naming a table of the workload (a *loud stop*; the run then starts
over under a new pipeline name, which is what a user would do). Anything else is a
*silent difference*: the run fails and prints the seed and the operation log to replay.

Used by `tests/test_differential.py` (a short form in CI) and `torture.sh` (long forms):

    python differential.py --source mysql --seeds 0-19 --ops 200
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lake  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = os.environ.get("LAKESHORE_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "lakeshore" / "target")) / "release" / "lakeshore")

BASE_COLUMNS = {"a": "int", "b": "varchar(64)", "c": "decimal(12,2)"}
TABLES = 3
CONVERGE_SECONDS = 45


class SilentDifference(AssertionError):
    pass


def norm(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, float) and v == int(v):
        return int(v)
    if isinstance(v, Decimal):
        return v.normalize() if v != 0 else Decimal(0)
    if isinstance(v, int):
        return v
    return v


class Db:
    """What differs between the two databases: SQL dialect, driver, restarts."""

    def __init__(self, server, db):
        self.server, self.db = server, db

    def sql(self, statements):
        with self.server.connect(self.db, autocommit=False) as c:
            cur = c.cursor()
            for s in statements:
                cur.execute(s)
            c.commit()

    def rows(self, table, columns):
        with self.server.connect(self.db) as c:
            cur = c.cursor()
            cur.execute(f"select {', '.join(self.q(x) for x in columns)} from {self.q(table)}")
            return sorted((tuple(norm(v) for v in r) for r in cur.fetchall()), key=repr)


class MyDb(Db):
    kind = "mysql"
    text = "mediumtext"
    rename_follows = False

    def q(self, name):
        return f"`{name}`"

    def url(self):
        return self.server.url()

    def table_pattern(self, t):
        return f"{self.db}.{t}"

    def widen(self, t, col):
        return [f"ALTER TABLE `{t}` MODIFY `{col}` bigint"]

    def to_text(self, t, col):
        return [f"ALTER TABLE `{t}` MODIFY `{col}` varchar(30)"]

    def rename_column(self, t, old, new):
        return [f"ALTER TABLE `{t}` RENAME COLUMN `{old}` TO `{new}`"]

    def swap(self, t, tmp, old):
        return [f"RENAME TABLE `{t}` TO `{old}`, `{tmp}` TO `{t}`", f"DROP TABLE `{old}`"]

    def like(self, new, t):
        return f"CREATE TABLE `{new}` LIKE `{t}`"

    def rename_table(self, t, new):
        return [f"RENAME TABLE `{t}` TO `{new}`"]

    def cleanup(self, pipeline):
        pass


class PgDb(Db):
    kind = "postgres"
    text = "text"
    rename_follows = True

    def q(self, name):
        return f'"{name}"'

    def url(self):
        return self.server.url(self.db)

    def table_pattern(self, t):
        return f"public.{t}"

    def widen(self, t, col):
        return [f'ALTER TABLE "{t}" ALTER COLUMN "{col}" TYPE bigint']

    def to_text(self, t, col):
        return [f'ALTER TABLE "{t}" ALTER COLUMN "{col}" TYPE varchar(30)']

    def rename_column(self, t, old, new):
        return [f'ALTER TABLE "{t}" RENAME COLUMN "{old}" TO "{new}"']

    def swap(self, t, tmp, old):
        return [f'ALTER TABLE "{t}" RENAME TO "{old}"', f'ALTER TABLE "{tmp}" RENAME TO "{t}"',
                f'DROP TABLE "{old}"']

    def rename_table(self, t, new):
        return [f'ALTER TABLE "{t}" RENAME TO "{new}"']

    def like(self, new, t):
        return f'CREATE TABLE "{new}" (LIKE "{t}" INCLUDING ALL)'

    def cleanup(self, pipeline):
        """Drop the slot of a pipeline that will not run again (slots pin WAL)."""
        for _ in range(50):
            try:
                self.server.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                    "where slot_name = %s and not active", self.db, (f"lakeshore_{pipeline}",))
                return
            except Exception:  # noqa: BLE001 - still active for a moment after a kill
                time.sleep(0.2)


class Table:
    """A workload table: its name at the source now, in the pipeline file (a file is not
    edited because a table was renamed; a new pipeline names tables as they are) and in
    the lake."""

    def __init__(self, name):
        self.source = self.config = self.lake = name
        self.columns = dict(BASE_COLUMNS)
        self.big = False


class Run:
    """One seed: the database, the model of its tables, the pipeline and the checker."""

    def __init__(self, db, seed, ops, workdir, log=print):
        self.db, self.seed, self.ops = db, seed, ops
        self.rng = random.Random(f"{db.kind}-{seed}")
        self.dir = Path(workdir)
        self.say = log
        self.oplog = []
        self.counts = Counter()
        self.generation = 0
        self.proc = None
        self.next_id = 1
        self.next_col = 0
        self.tables = {}
        self.pending_stop = None

    # -- the pipeline -------------------------------------------------------------------

    @property
    def pipeline(self):
        return f"diff{self.seed}g{self.generation}"

    def write_files(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        tables = ", ".join(f'"{self.db.table_pattern(t.config)}"' for t in self.tables.values())
        (self.dir / "p.toml").write_text(f"""[pipeline]
name = "{self.pipeline}"
checkpoint_interval = "200ms"

[source]
type = "{self.db.kind}"
url = "{self.db.url()}"
tables = [{tables}]

[sink]
type = "iceberg"
catalog = {{ type = "sql", uri = "sqlite://lake/catalog.db", warehouse = "lake/warehouse" }}
namespace = "{self.pipeline}"
""")
        (self.dir / "daemon.toml").write_text(
            '[restart]\ninitial_backoff = "200ms"\nmax_backoff = "1s"\ngive_up_after = 30\n')

    def start(self):
        self.write_files()
        self.stderr = open(self.dir / f"lakeshore-{self.generation}.log", "a")
        self.proc = subprocess.Popen([BIN, "run", "--config", "daemon.toml", "p.toml"], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log_text(self):
        self.stderr.flush()
        return (self.dir / f"lakeshore-{self.generation}.log").read_text(errors="replace")

    def start_over(self, cause):
        """After a loud stop: a new pipeline name (and lake namespace), as a user would."""
        self.kill()
        self.db.cleanup(self.pipeline)
        self.counts[f"loud stop: {cause}"] += 1
        self.generation += 1
        self.pending_stop = None
        for t in self.tables.values():
            t.config = t.lake = t.source
        self.start()

    # -- operations ---------------------------------------------------------------------

    def record(self, kind, statements):
        self.oplog.append({"op": kind, "sql": statements})
        self.counts[kind] += 1

    def run_sql(self, kind, statements):
        self.record(kind, statements)
        self.db.sql(statements)

    def value(self, typ):
        if typ.startswith("int") or typ == "bigint":
            return str(self.rng.randrange(-1000, 1000))
        if typ.startswith("decimal"):
            return f"{self.rng.randrange(-99999, 99999) / 100:.2f}"
        return "'" + self.rng.choice(["x", "y", "ü✓", "", "O'Neil".replace("'", "''")]) + str(self.rng.randrange(99)) + "'"

    def row_values(self, t, rid):
        vals = [str(rid)] + [self.value(typ) for typ in t.columns.values()]
        return vals

    def create(self, name):
        cols = ", ".join(f"{self.db.q(c)} {typ}" for c, typ in BASE_COLUMNS.items())
        return [f"CREATE TABLE {self.db.q(name)} (id int PRIMARY KEY, {cols})"]

    def insert_rows(self, t, n):
        rows = []
        for _ in range(n):
            rows.append("(" + ", ".join(self.row_values(t, self.next_id)) + ")")
            self.next_id += 1
        names = ", ".join(["id"] + [self.db.q(c) for c in t.columns])
        return [f"INSERT INTO {self.db.q(t.source)} ({names}) VALUES " + ", ".join(rows)]

    def some_id(self):
        return self.rng.randrange(1, max(2, self.next_id))

    def dml(self, t):
        q, r = self.db.q(t.source), self.rng.random()
        cols = list(t.columns)
        if r < 0.35:
            return self.insert_rows(t, self.rng.randint(1, 4))
        if r < 0.7:
            col = self.rng.choice(cols)
            lo = self.some_id()
            return [f"UPDATE {q} SET {self.db.q(col)} = {self.value(t.columns[col])} "
                    f"WHERE id BETWEEN {lo} AND {lo + self.rng.randint(0, 20)}"]
        if r < 0.85:
            lo = self.some_id()
            return [f"DELETE FROM {q} WHERE id BETWEEN {lo} AND {lo + self.rng.randint(0, 5)}"]
        old, new = self.some_id(), self.next_id
        self.next_id += 1
        return [f"UPDATE {q} SET id = {new} WHERE id = {old}"]

    def step(self):
        """One random operation."""
        live = list(self.tables.values())
        t = self.rng.choice(live)
        q = self.db.q(t.source)
        added = [c for c in t.columns if c not in BASE_COLUMNS]
        r = self.rng.random()
        if r < 0.45:
            stmts = []
            for _ in range(self.rng.randint(1, 5)):
                stmts += self.dml(self.rng.choice(live))
            self.run_sql("transaction", stmts)
        elif r < 0.50:
            if not t.big:
                self.run_sql("add large column", [f"ALTER TABLE {q} ADD COLUMN big {self.db.text}"])
                t.big = True
            size = self.rng.choice([10, 70_000, 300_000])
            lo = self.some_id()
            self.run_sql("large value", [f"UPDATE {q} SET big = '{'z' * size}' WHERE id BETWEEN {lo} AND {lo + 3}"])
        elif r < 0.58:
            name = f"x{self.next_col}"
            self.next_col += 1
            typ = self.rng.choice(["int", "varchar(20)"])
            extra = self.rng.choice(["", " DEFAULT 7" if typ == "int" else " DEFAULT 'd'", " NOT NULL DEFAULT 1"
                                     if typ == "int" else ""])
            self.run_sql("add column" + (" with default" if extra else ""),
                         [f"ALTER TABLE {q} ADD COLUMN {self.db.q(name)} {typ}{extra}"])
            t.columns[name] = typ
        elif r < 0.62 and added:
            col = self.rng.choice(added)
            self.run_sql("drop column", [f"ALTER TABLE {q} DROP COLUMN {self.db.q(col)}"])
            del t.columns[col]
        elif r < 0.66 and added:
            col = self.rng.choice(added)
            new = f"x{self.next_col}"
            self.next_col += 1
            self.run_sql("rename column", self.db.rename_column(t.source, col, new))
            t.columns[new] = t.columns.pop(col)
        elif r < 0.70:
            ints = [c for c in t.columns if t.columns[c] == "int" and c != "a"]
            if ints:
                col = self.rng.choice(ints)
                self.run_sql("widen int to bigint", self.db.widen(t.source, col))
                t.columns[col] = "bigint"
        elif r < 0.72 and any(typ in ("int", "bigint") for typ in t.columns.values()):
            ints = [c for c in t.columns if t.columns[c] in ("int", "bigint")]
            col = self.rng.choice(ints)
            self.run_sql("number to text (cannot be followed)", self.db.to_text(t.source, col))
            t.columns[col] = "varchar(30)"
            self.pending_stop = "type change"
            # A row event (a Relation message) shows the change.
            self.run_sql("transaction", self.insert_rows(t, 1))
        elif r < 0.76:
            self.run_sql("truncate", [f"TRUNCATE TABLE {q}"] + self.insert_rows(t, 2))
        elif r < 0.80:
            stmts = [f"DROP TABLE {q}"] + self.create(t.source)
            t.columns, t.big = dict(BASE_COLUMNS), False
            self.run_sql("drop and create", stmts + self.insert_rows(t, 5))
        elif r < 0.84:
            # As gh-ost does: a shadow table with the new shape, filled, swapped in.
            tmp, old = f"_{t.source}_gho", f"_{t.source}_del"
            new_col = f"x{self.next_col}"
            self.next_col += 1
            stmts = [f"DROP TABLE IF EXISTS {self.db.q(tmp)}", self.db.like(tmp, t.source),
                     f"ALTER TABLE {self.db.q(tmp)} ADD COLUMN {self.db.q(new_col)} int",
                     f"INSERT INTO {self.db.q(tmp)} SELECT *, 7 FROM {q} WHERE id % 3 <> 0"]
            self.run_sql("shadow table", stmts)
            self.run_sql("swap (online schema change)", self.db.swap(t.source, tmp, old))
            t.columns[new_col] = "int"
        elif r < 0.87:
            new = f"{t.source.split('_r')[0]}_r{self.rng.randrange(1000)}"
            self.run_sql("rename table", self.db.rename_table(t.source, new))
            del self.tables[t.source]
            t.source = new
            self.tables[new] = t
            if not self.db.rename_follows:
                self.pending_stop = "rename"
        elif r < 0.92:
            self.record("fault: kill -9", [])
            self.kill()
            self.start()
        elif r < 0.95:
            self.record("fault: database restart", [])
            self.db.server.restart()
        else:
            self.record("fault: lost state", [])
            self.kill()
            shutil.rmtree(self.dir / "lake" / "state", ignore_errors=True)
            self.start()

    # -- the checker --------------------------------------------------------------------

    def lake_rows(self, t, columns):
        con = lake.duck()
        rel = lake.scan(self.dir / "lake" / "catalog.db", f"{self.pipeline}.{t.lake}")
        names = ", ".join('"' + c + '"' for c in columns)
        rows = con.execute(f"select {names} from {rel}").fetchall()
        return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)

    def lake_columns(self, t):
        con = lake.duck()
        rel = lake.scan(self.dir / "lake" / "catalog.db", f"{self.pipeline}.{t.lake}")
        return {r[0] for r in con.execute(f"describe select * from {rel}").fetchall()}

    def differences(self):
        out = []
        for t in self.tables.values():
            columns = ["id"] + list(t.columns)
            try:
                have = self.lake_columns(t)
            except Exception as e:  # noqa: BLE001 - the table is not there yet
                out.append(f"{t.source}: lake unreadable: {str(e)[:200]}")
                continue
            missing = [c for c in columns if c not in have]
            if missing:
                out.append(f"{t.source}: the lake lacks columns {missing}")
                continue
            want = self.db.rows(t.source, columns)
            try:
                got = self.lake_rows(t, columns)
            except Exception as e:  # noqa: BLE001 - a column not there yet
                out.append(f"{t.source}: lake unreadable: {str(e)[:200]}")
                continue
            if got != want:
                missing = [r for r in want if r not in set(got)][:3]
                extra = [r for r in got if r not in set(want)][:3]
                out.append(f"{t.source} (lake {t.lake}): lake {len(got)} rows, source {len(want)}; "
                           f"missing {str(missing)[:300]}; extra {str(extra)[:300]}")
        return out

    def loud_stop(self):
        """The error of a pipeline that stopped and names a table of the workload."""
        if self.proc.poll() is None:
            return None
        text = self.log_text()
        errors = [line for line in text.splitlines() if "ERROR" in line or line.startswith("error")]
        names = [t.source for t in self.tables.values()] + [t.lake for t in self.tables.values()]
        named = [e for e in errors if any(n in e for n in names)]
        return named[-1] if named else None

    def check(self):
        deadline = time.time() + CONVERGE_SECONDS
        while True:
            diffs = self.differences()
            if not diffs:
                self.counts["checks equal"] += 1
                return
            stop = self.loud_stop()
            if stop:
                last = next((o["op"] for o in reversed(self.oplog) if "op" in o), "start")
                cause = self.pending_stop or f"after {last}"
                self.say(f"  loud stop ({cause}): {stop[-300:]}")
                self.oplog.append({"loud stop": stop[-500:]})
                self.start_over(cause)
                deadline = time.time() + CONVERGE_SECONDS
                continue
            if time.time() > deadline:
                if self.proc.poll() is None and shutil.which("gdb") and os.environ.get("LAKESHORE_DIFF_STACKS"):
                    with open(self.dir / "stacks.txt", "w") as out:
                        subprocess.run(["gdb", "-p", str(self.proc.pid), "-batch", "-ex", "thread apply all bt"],
                                       stdout=out, stderr=subprocess.STDOUT, timeout=120)
                raise SilentDifference(
                    f"{self.db.kind} seed {self.seed}: silent difference after {len(self.oplog)} operations:\n  "
                    + "\n  ".join(diffs) + f"\nreplay: python integration/differential.py --source {self.db.kind} "
                    f"--seeds {self.seed} --ops {self.ops}\nlast operations:\n"
                    + "\n".join(json.dumps(o)[:400] for o in self.oplog[-15:])
                    + f"\nlakeshore log: {self.dir}/lakeshore-{self.generation}.log")
            time.sleep(0.3)

    def run(self, check_every=5):
        for i in range(TABLES):
            name = f"t{i}"
            self.tables[name] = Table(name)
            self.db.sql([f"DROP TABLE IF EXISTS {self.db.q(name)}"] + self.create(name))
            self.db.sql(self.insert_rows(self.tables[name], 20))
        self.start()
        try:
            self.check()
            for n in range(self.ops):
                self.step()
                if (n + 1) % check_every == 0 or self.pending_stop:
                    self.check()
            self.check()
        finally:
            self.kill()
            self.db.cleanup(self.pipeline)
        return self.counts


def seeds_of(text):
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=["mysql", "postgres"], required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.source == "mysql":
        from myserver import MyServer as Server
    else:
        from pgserver import PgServer as Server
    server = Server()
    total = Counter()
    started = time.time()
    try:
        for seed in seeds_of(args.seeds):
            name = f"diff{seed}"
            server.create_db(name)
            db = (MyDb if args.source == "mysql" else PgDb)(server, name)
            work = Path(args.workdir or f"/tmp/lakeshore-differential/{args.source}") / f"seed{seed}"
            shutil.rmtree(work, ignore_errors=True)
            counts = Run(db, seed, args.ops, work).run()
            total += counts
            print(f"{args.source} seed {seed}: {sum(v for k, v in counts.items() if not k.startswith(('checks', 'loud')))} "
                  f"operations, {counts['checks equal']} checks equal, "
                  f"{sum(v for k, v in counts.items() if k.startswith('loud'))} loud stops", flush=True)
    finally:
        server.stop()
    print(f"\n{args.source}: {len(seeds_of(args.seeds))} seeds x {args.ops} operations in "
          f"{time.time() - started:.0f} s, 0 silent differences")
    for k, v in sorted(total.items()):
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
