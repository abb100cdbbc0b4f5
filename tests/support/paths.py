"""Where the repository and the shared evaluation data are."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# XDR_SHARED_DATA: for a copy of the tests run elsewhere (scripts/mutation.sh runs them from mutants/)
SHARED_DATA = Path(os.environ.get("XDR_SHARED_DATA", REPO.parent / "shared" / "data"))
