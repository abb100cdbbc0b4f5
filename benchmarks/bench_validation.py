"""Corpus validation on Ray: rows/s with 1 and 2 CPUs, and the peak memory of each kind of process, at
two corpus sizes (is the memory per task flat as the corpus grows?).

    python benchmarks/bench_validation.py --sizes 1000000 4000000 --json docs/results/data/bench-validation.json
    python benchmarks/bench_validation.py --tiny            # seconds: what the test suite runs

Each size: a synthetic corpus (benchmarks/synthetic_corpus.py: half gzip JSON lines, half plain TSV) is
written once, then validated by a fresh local Ray per CPU count. A sampler thread reads the resident
memory of every Ray worker each 0.2 s, keyed by the task it runs (`ray::validate_unit` ...); the driver's
is its own peak (bench_scale.Sampler). The single reader that validation replaced runs once per size as the
baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_scale import Sampler  # noqa: E402
from benchmarks.synthetic_corpus import write_corpus  # noqa: E402
from xdr.config import CorpusConfig  # noqa: E402
from xdr.io.storage import Storage  # noqa: E402

TASKS = ("validate_unit", "find_duplicates", "cut_unit", "assemble_part")


def _validate_on_ray(config: CorpusConfig, run: str, cpus: int) -> dict:
    import ray

    from ray_jobs.common import start_local_ray
    from ray_jobs.tasks import RayTasks
    from xdr.ingest.validation import validate_corpus

    start_local_ray(cpus, logging_level="ERROR", log_to_driver=False)
    try:
        time.sleep(2)  # let the idle workers start before the clock does
        with Sampler(os.getpid(), every_s=0.2) as memory:  # this process and the Ray it started
            start = time.perf_counter()
            summary = validate_corpus(Storage(), config, run, RayTasks(), progress=lambda _: None)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"cpus": cpus, "seconds": round(seconds, 2), "rows_per_s": round(summary.rows_read / seconds),
            "rows_read": summary.rows_read, "passages": summary.passages, "rejects": dict(summary.reject_reasons),
            "parts": len(summary.parts),
            "peak_rss_mib": {t: memory.report()["peak_rss_mib"].get(t, 0) for t in TASKS}}


def _single_reader(config: CorpusConfig, run: str) -> dict:
    from tests.support.reference_validation import single_reader_parts

    start = time.perf_counter()
    counts = single_reader_parts(Storage(), config, run)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "rows_per_s": round(counts["rows_read"] / seconds)}


def run(sizes: list[int], cpus: list[int], workdir: Path, files: int, split_kib: int, baseline: bool) -> dict:
    results = {"machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB", "date": time.strftime("%Y-%m-%d"),
               "files": files, "split_kib": split_kib, "sizes": []}
    for n in sizes:
        corpus = workdir / f"corpus-{n}"
        if (corpus / "_planted.json").exists():  # written by an earlier run of the benchmark
            planted = json.loads((corpus / "_planted.json").read_text())
        else:
            planted = write_corpus(corpus, n, files, bad_every=min(50_000, n // 20))
        config = CorpusConfig(path=str(corpus), split_bytes=split_kib << 10, passages_per_part=10_000,
                              max_reject_fraction=1.0)
        row = {"passages": n, "input_mib": round(sum(p.stat().st_size for p in corpus.iterdir()) / 2**20),
               "planted": {k: planted[k] for k in ("bad_rows", "duplicates")}, "ray": []}
        for c in cpus:
            out = _validate_on_ray(config, str(workdir / f"run-{n}-{c}"), c)
            assert out["passages"] == n and out["rejects"].get("duplicate id", 0) == planted["duplicates"], out
            assert sum(out["rejects"].values()) == planted["bad_rows"] + planted["duplicates"], out
            row["ray"].append(out)
            shutil.rmtree(workdir / f"run-{n}-{c}")
            print(json.dumps({"passages": n, **out}), flush=True)
        if baseline:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row["single_reader"] = _single_reader(config, str(workdir / f"single-{n}"))
            row["single_reader"]["driver_peak_growth_mib"] = round(
                (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
            shutil.rmtree(workdir / f"single-{n}")
            print(json.dumps({"passages": n, "single_reader": row["single_reader"]}), flush=True)
        results["sizes"].append(row)
    return results


def table(results: dict) -> str:
    lines = ["| passages | input MiB | CPUs | s | rows/s | speed-up | peak RSS MiB: validate / duplicates / cut / "
             "assemble |", "|---|---|---|---|---|---|---|"]
    for row in results["sizes"]:
        one = next((r for r in row["ray"] if r["cpus"] == 1), row["ray"][0])
        for r in row["ray"]:
            peaks = " / ".join(str(r["peak_rss_mib"][t]) for t in TASKS)
            lines.append(f"| {row['passages']:,} | {row['input_mib']:,} | {r['cpus']} | {r['seconds']} | "
                         f"{r['rows_per_s']:,} | {one['seconds'] / r['seconds']:.2f}x | {peaks} |")
        if "single_reader" in row:
            s = row["single_reader"]
            lines.append(f"| {row['passages']:,} | {row['input_mib']:,} | 1 (single reader) | {s['seconds']} | "
                         f"{s['rows_per_s']:,} | {one['seconds'] / s['seconds']:.2f}x | driver grew "
                         f"{s['driver_peak_growth_mib']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--split-kib", type=int, default=65536)
    parser.add_argument("--no-baseline", action="store_true", help="skip the single reader")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="2,000 passages, 4 files: checks the script runs")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xdr-bench-validation-"))
    if args.tiny:
        args.sizes, args.files, args.split_kib = [2_000], 4, 64
    results = run(args.sizes, args.cpus, workdir, args.files, args.split_kib, not args.no_baseline)
    results["tiny"] = args.tiny
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
