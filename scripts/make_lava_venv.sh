#!/usr/bin/env bash
# Build the separate Lava / lava-dl virtual environment used to check netx exports in Lava's
# fixed-point CPU simulator (tests/test_writers_netx.py). Lava is not a runtime dependency of
# svformer-deploy: lava-nc 0.10.0 / lava-dl 0.6.0 declare Python 3.10 only and need numpy<2.
# Recipe and the two fixes (a 2-line sed patch for Python 3.11 dataclasses, a torchvision stub)
# are documented in docs/export.md ("netx and Lava").
#
#   scripts/make_lava_venv.sh [VENV]      default: $SVFORMER_LAVA_VENV or ~/.cache/svformer-deploy/lava-venv
#
# The venv is built in a temporary sibling and renamed into place only when its smoke test passes.
set -euo pipefail

VENV="${1:-${SVFORMER_LAVA_VENV:-$HOME/.cache/svformer-deploy/lava-venv}}"
PYTHON="${PYTHON:-python3.11}"
PIP_OPTS=(--quiet --disable-pip-version-check)

if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.svformer-lava-ok" ]; then
    echo "lava venv already built: $VENV"
    exit 0
fi
mkdir -p "$(dirname "$VENV")"
TMP="$(mktemp -d "$(dirname "$VENV")/.lava-venv.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

start=$(date +%s)
"$PYTHON" -m venv "$TMP"
"$TMP/bin/pip" install "${PIP_OPTS[@]}" torch==2.13.0 numpy==1.26.4
"$TMP/bin/pip" install "${PIP_OPTS[@]}" --no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0
"$TMP/bin/pip" install "${PIP_OPTS[@]}" "asteval>=0.9.31,<0.10" "networkx<=2.8.7" "scikit-learn>=1.5,<2" \
    "scipy>=1.10.1,<2" "h5py>=3.7,<4" "matplotlib>=3.5.2,<4" ninja "opencv-python-headless>=4.8.1.78,<5" \
    "pillow>=10.0.1,<11" numpy==1.26.4 torch==2.13.0
SP="$("$TMP/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Python 3.11: dataclass fields may not have mutable defaults (ByteEncoder()).
sed -i -e 's/^from dataclasses import dataclass, InitVar$/from dataclasses import dataclass, InitVar, field/' \
       -e 's/: ByteEncoder = ByteEncoder()/: ByteEncoder = field(default_factory=ByteEncoder)/' \
       "$SP/lava/magma/compiler/var_model.py"
# slayer/__init__ imports torchvision (object detection), whose PyPI builds do not load beside a CPU torch;
# netx never uses it, so a stub with the two names it imports is enough.
if [ ! -d "$SP/torchvision" ]; then
    mkdir -p "$SP/torchvision"
    cat > "$SP/torchvision/__init__.py" <<'PY'
"""Stub for lava-dl: slayer imports torchvision.ops/transforms at import time; netx never uses them."""
import types

ops = types.ModuleType("torchvision.ops")
transforms = types.ModuleType("torchvision.transforms")
PY
fi
# The venv's scripts hard-code its path: rename first, then smoke-test the final location.
rm -rf "$VENV"
mv "$TMP" "$VENV"
trap - EXIT
sed -i "s|$TMP|$VENV|g" "$VENV"/bin/* 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
from lava.lib.dl import netx  # noqa: F401
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: F401
print("lava import ok")
PY
touch "$VENV/.svformer-lava-ok"
echo "lava venv ready: $VENV ($(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1))"
