#!/usr/bin/env bash
# Installs the Redfish test peer: sushy-tools' emulator in a venv under ~/.cache/recast/sushy.
# Idempotent: a venv whose sushy-emulator already reports the pinned version is left alone.
# The Redfish tests find it through RECAST_SUSHY_EMULATOR or this default path.
set -euo pipefail

SUSHY_VERSION="${SUSHY_VERSION:-2.2.0}"
VENV="${RECAST_SUSHY_VENV:-$HOME/.cache/recast/sushy/$SUSHY_VERSION}"

if [ -x "$VENV/bin/sushy-emulator" ] &&
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('sushy-tools') != '$SUSHY_VERSION')" 2>/dev/null; then
    echo "sushy-tools $SUSHY_VERSION already in $VENV"
    exit 0
fi

command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }

PYTHON="${PYTHON:-python3}"
mkdir -p "$(dirname "$VENV")"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "sushy-tools==$SUSHY_VERSION"
echo "sushy-tools $SUSHY_VERSION installed in $VENV"
