#!/usr/bin/env bash
# Benchmarks (not part of the tests). Prints rows/s, the ratio to the raw Parquet write
# limit measured in the same run, peak RSS, and the upsert read-cost ratio.
#   integration/bench.sh [--sizes 1000000,10000000] [--orders 1000000] [--hourly 1000000,6000000] [--transforms 1000000]
#   integration/bench.sh postgres [--rows 1000000] [--changes 100000] [--fresh-rate 5000]
#   integration/bench.sh mysql [--rows 1000000] [--changes 100000] [--fresh-rate 5000]
#   integration/bench.sh kafka [--sizes 1000000,5000000]
#   integration/bench.sh daemon [--pipelines 1,20] [--hold 30]
#   integration/bench.sh maintenance [--rows 1000000] [--checkpoints 1000]
#   integration/bench.sh rest [--sizes 1000000] [--orders 1000000]   (SQL vs REST catalog)
#   integration/bench.sh always-fast [--rows 1000000] [--rate 5000] [--minutes 20] [--sample 60] [--sink TOML]
#   integration/bench.sh failover [--pipelines 4] [--rate 2000] [--ttl 15s] [--seconds 60]
#   integration/bench.sh whole-db [--source postgres|mysql] [--small 1000] [--big 10] [--rate 20000] [--seconds 60]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${LAKESHORE_CACHE:-$HOME/.cache/lakeshore}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
VENV=$CACHE/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r integration/requirements.txt
fi
integration/postgres.sh install
integration/mariadb.sh install
integration/kafka.sh install
if [ ! -x /usr/bin/time ]; then  # peak RSS of the measured child
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq time; else sudo apt-get install -y -qq time; fi
fi
"$VENV/bin/pip" install -q -r integration/requirements.txt
cargo build --release -q --workspace --bins --examples --features lakeshore/bench
export LAKESHORE_BIN="$CARGO_TARGET_DIR/release/lakeshore"
if [ "${1:-}" = postgres ]; then
  shift
  exec "$VENV/bin/python" integration/bench_postgres.py "$@"
fi
if [ "${1:-}" = mysql ]; then
  shift
  exec "$VENV/bin/python" integration/bench_mysql.py "$@"
fi
if [ "${1:-}" = kafka ]; then
  shift
  exec "$VENV/bin/python" integration/bench_kafka.py "$@"
fi
if [ "${1:-}" = maintenance ]; then
  shift
  exec "$VENV/bin/python" integration/bench_maintenance.py "$@"
fi
if [ "${1:-}" = rest ]; then
  shift
  integration/lakana.sh install
  exec "$VENV/bin/python" integration/bench_rest.py "$@"
fi
if [ "${1:-}" = always-fast ]; then
  shift
  exec "$VENV/bin/python" integration/bench_always_fast.py "$@"
fi
if [ "${1:-}" = failover ]; then
  shift
  exec "$VENV/bin/python" integration/bench_failover.py "$@"
fi
if [ "${1:-}" = whole-db ]; then
  shift
  exec "$VENV/bin/python" integration/bench_whole_db.py "$@"
fi
if [ "${1:-}" = daemon ]; then
  shift
  exec "$VENV/bin/python" integration/bench_daemon.py "$@"
fi
exec "$VENV/bin/python" integration/bench.py "$@"
