"""scripts/mutation_report.py, which the development notes quote, on mutmut results written here."""

import json
import subprocess
import sys

from tests.support.paths import REPO


def test_the_mutation_report_scores_killed_and_timeouts_over_the_mutants_run(tmp_path):
    codes = {"m.f__mutmut_1": 1, "m.f__mutmut_2": 1, "m.f__mutmut_3": 36, "m.f__mutmut_4": 0, "m.f__mutmut_5": 33,
             "m.f__mutmut_6": None}  # killed, killed, timeout, survived, no tests, not run
    (tmp_path / "mutants" / "xdr").mkdir(parents=True)
    (tmp_path / "mutants" / "xdr" / "m.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "mutation_report.py"), "--mutants",
                           str(tmp_path / "mutants"), "--json", str(tmp_path / "out.json"), "--survivors"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| xdr/m.py | 6 | 1 | 2 | 1 | 1 | 1 | 60.0% |" in done.stdout  # (2 + 1) of the 5 run
    result = json.loads((tmp_path / "out.json").read_text())["xdr/m.py"]
    assert result["score"] == 0.6 and result["survivors"] == ["m.f__mutmut_4", "m.f__mutmut_5"]
