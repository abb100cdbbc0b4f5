#!/usr/bin/env bash
# Sets everything up, then runs the linter, the layer contracts, the type checker and the whole test suite
# (slow tests included).
# Pass pytest arguments to narrow it, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check xdr ray_jobs tests benchmarks
# the layering in pyproject.toml ([tool.importlinter]): xdr never imports Ray, and its layers only import down
.venv/bin/lint-imports --no-cache
.venv/bin/mypy  # xdr/ and ray_jobs/, [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
