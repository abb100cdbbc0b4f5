#!/usr/bin/env bash
# Sets everything up, then runs the linter and the whole test suite (slow tests included).
# Pass pytest arguments to narrow it, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check xdr ray_jobs tests benchmarks
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
