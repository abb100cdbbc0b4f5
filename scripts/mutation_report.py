"""The mutation score per module from mutmut's results (mutants/**/*.py.meta), as a table (and JSON).

    python scripts/mutation_report.py [--json out.json] [--survivors]

A mutant counts as killed when a test failed on it (or timed out: the change made a loop endless); the
score is killed / mutants run, so a mutant no test executes counts against it; mutants left out of a run
(`mutmut run <names>`) are counted apart. mutmut's own `results` lists mutants one by one; this adds them up
per module, which is what the development notes quote.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          37: "killed"}
LEFT = {0: "survived", 5: "no tests", 33: "no tests", None: "not checked", 34: "skipped"}


def outcome(exit_code: int | None) -> str:
    return KILLED.get(exit_code) or LEFT.get(exit_code) or "suspicious"


def module_results(mutants: Path) -> dict[str, dict]:
    results = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        module = str(meta.relative_to(mutants)).removesuffix(".meta")
        counts = Counter(outcome(code) for code in codes.values())
        killed, run = counts["killed"] + counts["timeout"], len(codes) - counts["not checked"]
        alive = sorted(k for k, code in codes.items() if outcome(code) in ("survived", "no tests"))
        results[module] = {"mutants": len(codes), **counts, "survivors": alive,
                           "score": round(killed / run, 4) if run else None}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--survivors", action="store_true", help="list the mutants left alive, by name")
    args = parser.parse_args()
    results = module_results(args.mutants)
    print("| module | mutants | not run | killed | timeout | survived | no tests | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for module, r in results.items():
        score = f"{r['score']:.1%}" if r["score"] is not None else "-"
        print(f"| {module} | {r['mutants']} | {r.get('not checked', 0)} | {r.get('killed', 0)} | "
              f"{r.get('timeout', 0)} | {r.get('survived', 0)} | {r.get('no tests', 0)} | {score} |")
    if args.survivors:
        for module, r in results.items():
            for name in r["survivors"]:
                print(f"{module}: {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
