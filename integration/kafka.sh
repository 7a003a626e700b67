#!/usr/bin/env bash
# A throw-away Kafka-compatible broker (tansu, in memory) for the tests and benchmarks.
#   integration/kafka.sh install             build tansu once into ~/.cache/lakeshore/tansu
#   integration/kafka.sh start DIR PORT [STORAGE [--authentication]]
#                                            start a broker on 127.0.0.1:PORT (PID in DIR);
#                                            STORAGE defaults to memory://tansu/ (messages
#                                            die with the broker); s3://bucket/ keeps them
#                                            (AWS_ENDPOINT etc. from the environment);
#                                            --authentication: clients must log in (SASL)
#   integration/kafka.sh stop DIR            stop it
#   integration/kafka.sh topic PORT NAME N   create topic NAME with N partitions
set -euo pipefail
CACHE=${LAKESHORE_CACHE:-$HOME/.cache/lakeshore}
TANSU_VERSION=0.6.0
BIN=$CACHE/tansu/bin/tansu

case "${1:-}" in
  install)
    if [ ! -x "$BIN" ]; then
      echo "building tansu $TANSU_VERSION (once, ~13 min) into $CACHE/tansu" >&2
      cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
        --root "$CACHE/tansu" -q
    fi
    ;;
  start)
    dir=$2 port=$3 storage=${4:-memory://tansu/}
    mkdir -p "$dir"
    "$BIN" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$storage" \
      "${@:5}" >>"$dir/broker.log" 2>&1 &
    echo $! > "$dir/broker.pid"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
      sleep 0.1
    done
    echo "tansu did not start; see $dir/broker.log" >&2
    tail -20 "$dir/broker.log" >&2 || true
    exit 1
    ;;
  stop)
    dir=$2
    [ -f "$dir/broker.pid" ] || exit 0
    pid=$(cat "$dir/broker.pid")
    kill "$pid" 2>/dev/null || exit 0
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    ;;
  topic)
    "$BIN" topic create "$3" --partitions "$4" --broker "tcp://127.0.0.1:$2" >/dev/null
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
