#!/usr/bin/env bash
# A throw-away Iceberg REST catalog: Lakana (PyPI `lakana-server`), keeping its state in
# a database of the test PostgreSQL and its tables under a local `file://` warehouse.
#   integration/lakana.sh install                       venv once into ~/.cache/lakeshore/lakana
#   integration/lakana.sh start DIR PORT DATABASE_URL   migrate, start on 127.0.0.1:PORT (PID in DIR)
#   integration/lakana.sh stop DIR
# The bootstrap token is lakana_pat_${KEY_ID}_${SECRET} below; its rules (namespaces
# bronze/silver/gold, server-assigned locations, no snapshot removal) are in
# docs/sinks/iceberg.md.
set -euo pipefail
CACHE=${LAKESHORE_CACHE:-$HOME/.cache/lakeshore}
LAKANA_VERSION=0.20.0
VENV=$CACHE/lakana
export LAKANA_BOOTSTRAP_PAT_KEY_ID=0123456789abcdef
export LAKANA_BOOTSTRAP_PAT_SECRET=devsecretdevsecretdevsecret00

case "${1:-}" in
  install)
    if [ ! -x "$VENV/bin/lakana-server" ] || ! grep -qx "$LAKANA_VERSION" "$VENV/.version" 2>/dev/null; then
      echo "installing lakana-server $LAKANA_VERSION into $VENV" >&2
      python3 -m venv "$VENV"
      "$VENV/bin/pip" install -q "lakana-server==$LAKANA_VERSION"
      echo "$LAKANA_VERSION" > "$VENV/.version"
    fi
    ;;
  start)
    dir=$2 port=$3
    mkdir -p "$dir"
    export LAKANA_DATABASE__URL=$4 LAKANA_HOST=127.0.0.1 LAKANA_PORT=$port
    "$VENV/bin/lakana-server" migrate >>"$dir/lakana.log" 2>&1
    "$VENV/bin/lakana-server" >>"$dir/lakana.log" 2>&1 &
    echo $! > "$dir/lakana.pid"
    for _ in $(seq 1 300); do
      if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then exit 0; fi
      sleep 0.1
    done
    echo "lakana did not start; see $dir/lakana.log" >&2
    tail -20 "$dir/lakana.log" >&2 || true
    exit 1
    ;;
  stop)
    if [ -f "$2/lakana.pid" ]; then
      kill "$(cat "$2/lakana.pid")" 2>/dev/null || true
      rm -f "$2/lakana.pid"
    fi
    ;;
  *)
    echo "usage: $0 install | start DIR PORT DATABASE_URL | stop DIR" >&2
    exit 2
    ;;
esac
