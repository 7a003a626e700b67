#!/usr/bin/env bash
# A throw-away MariaDB 10.11 for the tests and benchmarks (never the system instance).
#   integration/mariadb.sh install         apt packages, if missing
#   integration/mariadb.sh start DIR PORT  install-db + start under DIR on 127.0.0.1:PORT
#   integration/mariadb.sh stop DIR        stop the server started under DIR (by its PID)
#   integration/mariadb.sh restart DIR     stop then start again (same data)
# The binlog settings are lakeshore's requirements; LAKESHORE_MY_BINLOG_FORMAT overrides
# binlog_format (tests of a wrong setup); LAKESHORE_MY_TLS=1 at start makes a server that
# accepts only TLS over TCP (test CA in DIR/tls/ca.pem; the socket stays plain);
# LAKESHORE_MY_SERVER_ID sets server_id (default 1: a replica needs another). Replicated
# transactions are written to the binlog too (a replica can be promoted to primary).
set -euo pipefail

my_start() {
  local dir=$1 port
  port=$(cat "$dir/port")
  local tls=()
  if [ -f "$dir/tls/server.crt" ]; then
    tls=(--ssl-ca="$dir/tls/ca.pem" --ssl-cert="$dir/tls/server.crt" --ssl-key="$dir/tls/server.key"
         --require-secure-transport=ON)
  fi
  mariadbd --no-defaults --datadir="$dir/data" --user="$(id -un)" --port="$port" \
    --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --skip-name-resolve --server-id="${LAKESHORE_MY_SERVER_ID:-1}" \
    --log-bin="$dir/data/mysql-bin" --log-slave-updates --binlog-format="${LAKESHORE_MY_BINLOG_FORMAT:-ROW}" \
    --binlog-row-image=FULL --binlog-row-metadata=FULL --innodb-buffer-pool-size=128M \
    --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 --max-connections=300 "${tls[@]}" \
    >/dev/null 2>&1 &
  for _ in $(seq 1 300); do
    if mariadb-admin --socket="$dir/mysqld.sock" -uroot ping >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "mariadb did not start; see $dir/error.log" >&2
  tail -20 "$dir/error.log" >&2 || true
  return 1
}

my_stop() {
  local dir=$1 pid
  [ -f "$dir/mysqld.pid" ] || return 0
  pid=$(cat "$dir/mysqld.pid")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
  install)
    if ! command -v mariadbd >/dev/null || ! command -v mariadb >/dev/null; then
      if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq
      $SUDO apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client
    fi
    ;;
  start)
    dir=$2 port=$3
    mkdir -p "$dir/data"
    echo "$port" > "$dir/port"
    if [ -n "${LAKESHORE_MY_TLS:-}" ]; then "$(dirname "$0")/tls-certs.sh" "$dir/tls"; fi
    mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" \
      --auth-root-authentication-method=normal --skip-test-db >/dev/null
    my_start "$dir"
    # root over TCP without a password (like the PostgreSQL superuser in the tests);
    # every other user needs its password.
    mariadb --socket="$dir/mysqld.sock" -uroot -e \
      "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION"
    ;;
  stop)
    my_stop "$2"
    ;;
  restart)
    my_stop "$2"
    my_start "$2"
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
