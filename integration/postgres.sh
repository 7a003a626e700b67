#!/usr/bin/env bash
# A throw-away PostgreSQL 15 for the tests and benchmarks (never the system instance).
#   integration/postgres.sh install        apt packages, if missing
#   integration/postgres.sh start DIR PORT  initdb + start under DIR on 127.0.0.1:PORT
#   integration/postgres.sh stop DIR        stop the server started under DIR
#   integration/postgres.sh restart DIR     stop then start again (same data)
#   integration/postgres.sh down DIR / up DIR   stop, keeping the data / start it again
# Runs as root (the server itself runs as the `postgres` user, since initdb refuses root).
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  local dir=$1 port
  port=$(cat "$dir/port")
  as_postgres "$BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c wal_level=${LAKESHORE_PG_WAL_LEVEL:-logical} \
        -c max_replication_slots=64 -c max_wal_senders=64 -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB \
        -c max_connections=200 -c wal_sender_timeout=30s" start >/dev/null
}

case "${1:-}" in
  install)
    # PostGIS for the geometry tests (test_postgis.py).
    if [ ! -x "$BIN/initdb" ] || [ ! -f /usr/include/postgresql/libpq-fe.h ] \
        || [ ! -f /usr/share/postgresql/15/extension/postgis.control ]; then
      if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq
      $SUDO apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 libpq-dev \
        postgresql-15-postgis-3
    fi
    ;;
  start)
    dir=$2 port=$3
    mkdir -p "$dir"
    echo "$port" > "$dir/port"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    as_postgres "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    # The superuser `postgres` logs in without a password; every other role needs its
    # password (so tests can check what a wrong one does).
    cat > "$dir/data/pg_hba.conf" <<EOF
local all all trust
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
EOF
    if [ -n "${LAKESHORE_PG_TLS:-}" ]; then
      # TLS only: a CA and a server certificate for localhost / 127.0.0.1 (CA in
      # $dir/ca.pem); connections without TLS are rejected.
      "$(dirname "$0")/tls-certs.sh" "$dir/tls"
      cp "$dir/tls/ca.pem" "$dir/ca.pem"
      cp "$dir/tls/server.crt" "$dir/tls/server.key" "$dir/data/"
      chmod 600 "$dir/data/server.key"
      if [ "$(id -u)" = 0 ]; then chown postgres "$dir/data/server.key" "$dir/data/server.crt"; fi
      echo "ssl = on" >> "$dir/data/postgresql.conf"
      sed -i 's/^host /hostssl /' "$dir/data/pg_hba.conf"
      printf 'hostnossl all all 127.0.0.1/32 reject\nhostnossl replication all 127.0.0.1/32 reject\n' \
        >> "$dir/data/pg_hba.conf"
    fi
    pg_start "$dir"
    ;;
  stop)
    as_postgres "$BIN/pg_ctl" -D "$2/data" -m immediate -w stop >/dev/null 2>&1 || true
    ;;
  restart)
    as_postgres "$BIN/pg_ctl" -D "$2/data" -m fast -w stop >/dev/null
    pg_start "$2"
    ;;
  down)
    as_postgres "$BIN/pg_ctl" -D "$2/data" -m fast -w stop >/dev/null
    ;;
  up)
    pg_start "$2"
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
