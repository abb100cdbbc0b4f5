#!/usr/bin/env bash
# Creates .venv with everything xdr needs. Safe to rerun: it reinstalls only when pyproject.toml or this script changed.
# torch is pinned and installed first: from the package registry it is the CPU build on a machine without
# a GPU, and installing it first stops a dependency from pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=.venv/.xdr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test,experiments]"  # experiments: the tests run those scripts too
  touch "$stamp"
fi
# wrk (a C load generator) drives benchmarks/bench_serve.py, which a test runs; a Debian package
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null; }
fi
