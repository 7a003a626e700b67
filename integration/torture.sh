#!/usr/bin/env bash
# Long forms of the randomized differential test (issue 19): many seeds of random DML,
# DDL and faults per source, the lake checked against the source after each quiescent
# point. Prints each seed's counts and, at the end, the operations of every kind and the
# loud stops; a silent difference stops it with the seed and the operations to replay.
#   integration/torture.sh [mysql|postgres|both] [SEEDS, e.g. 0-19] [OPS per seed]
# Needs what integration/test.sh installs (run that once first).
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${LAKESHORE_CACHE:-$HOME/.cache/lakeshore}
export LAKESHORE_BIN=${LAKESHORE_BIN:-${CARGO_TARGET_DIR:-$CACHE/target}/release/lakeshore}
which=${1:-both}
seeds=${2:-0-19}
ops=${3:-200}
for source in mysql postgres; do
  if [ "$which" = both ] || [ "$which" = "$source" ]; then
    "$CACHE/venv/bin/python" differential.py --source "$source" --seeds "$seeds" --ops "$ops"
  fi
done
