#!/usr/bin/env bash
# Mutation testing of the modules where a silent change costs most (fusion, the metrics, top-k merge and
# lookup, validation, the hybrid sampler; `[tool.mutmut]` in pyproject.toml), with the fast library tests
# that execute each mutated function; then the score per module. Not in CI: about 40 minutes on 2 cores.
#   bash scripts/mutation.sh [--survivors] [--json mutation.json]
# Run `bash scripts/setup.sh` first. mutmut works in ./mutants (ignored by git); `rm -rf mutants` starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install --quiet "mutmut==3.8.1"
export XDR_SHARED_DATA="${XDR_SHARED_DATA:-$(cd .. && pwd)/shared/data}"  # the tests run from ./mutants
# one OpenMP thread: a worker forked after faiss started OpenMP's pool hangs in it, and mutmut then reports a
# mutant the tests pass as a timeout (seen with the fork server too)
export OMP_NUM_THREADS=1
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-2}"
.venv/bin/python scripts/mutation_report.py "$@"
