#!/usr/bin/env bash
# Creates .venv with everything xdr needs. Safe to rerun: it only installs what is missing.
# CPU machines get the CPU build of torch (a plain `pip install torch` pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip"
stamp=.venv/.xdr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $VPIP install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1; then
    $VPIP install -q "torch==2.13.0"
  else
    $VPIP install -q "torch==2.13.0" 2>/dev/null \
      || $VPIP install -q "torch==2.13.0"
  fi
  $VPIP install -q -e ".[test]"
  touch "$stamp"
fi
