#!/usr/bin/env bash
# Azurite, Microsoft's Azure Storage emulator (npm `azurite`), blob service only.
#   integration/azurite.sh install          npm install once into ~/.cache/lakeshore/azurite
#   integration/azurite.sh run DIR PORT     serve blobs on 127.0.0.1:PORT, data in DIR (foreground)
# Needs node and npm (integration/test.sh installs them with apt when missing).
set -euo pipefail
CACHE=${LAKESHORE_CACHE:-$HOME/.cache/lakeshore}
AZURITE_VERSION=3.37.0
DIR=$CACHE/azurite
BIN=$DIR/node_modules/.bin/azurite-blob

case "${1:-}" in
  install)
    if [ ! -x "$BIN" ] || ! grep -qx "$AZURITE_VERSION" "$DIR/.version" 2>/dev/null; then
      echo "installing azurite $AZURITE_VERSION into $DIR" >&2
      mkdir -p "$DIR"
      (cd "$DIR" && npm install --no-audit --no-fund --silent "azurite@$AZURITE_VERSION" >&2)
      echo "$AZURITE_VERSION" > "$DIR/.version"
    fi
    ;;
  run)
    exec "$BIN" --blobHost 127.0.0.1 --blobPort "$3" --location "$2" --skipApiVersionCheck --loose --silent
    ;;
  *)
    echo "usage: $0 install | run DIR PORT" >&2
    exit 2
    ;;
esac
