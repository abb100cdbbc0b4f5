#!/usr/bin/env bash
# Sets everything up, then runs the main job on the embedded default: the shipped sample corpus,
# tiny offline models, a local Ray and local storage (demo-output/). Prints the run's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/xdr demo "$@"
