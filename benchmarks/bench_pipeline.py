"""Ray Data job versus a direct single-process loop over the same stage classes, on this machine.

    python benchmarks/bench_pipeline.py --passages 20000 --memory-at 10000 100000 --json bench.json

Each measurement runs in a fresh subprocess; a sampler adds up the RSS of that process and all its
descendants (the driver, the local Ray's daemons and workers) every 0.2 s and keeps the peak.
Tiny offline models; settings are cut down (2 languages x 1 query x 8 tokens) so that 100k passages
finish on 2 CPU cores. Prints a table; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _config(models: dict, corpus: Path, output: Path):
    from xdr.config import IndexingJobConfig

    return IndexingJobConfig.model_validate({
        "output": str(output),
        "corpus": {"path": str(corpus), "passages_per_part": 2000},
        "generator": {"model": str(models["generator"]), "languages": ["ar", "fi"], "queries_per_language": 1,
                      "max_new_tokens": 8, "batch_size": 128},
        "encoder": {"model": str(models["encoder"]), "batch_size": 256},
        "resources": {"gpus_per_actor": 0, "cpus_per_actor": 1, "generator_actors": [1, 1], "encoder_actors": [1, 1]},
    })


def write_corpus(path: Path, n: int) -> Path:
    words = ("river mountain capital language city ocean forest history science music island desert king "
             "temple railway volcano festival").split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(60 + i % 40))
            f.write(json.dumps({"id": f"b{i:07d}", "title": f"Title {i % 997}", "text": text}) + "\n")
    return path


def run_direct(config) -> None:
    """The same stage classes, one process, part after part."""
    from xdr.ingest.validation import validate_corpus
    from xdr.io.storage import Storage
    from xdr.pipeline.stages import EmbedPartStage, GenerateQueriesStage

    summary = validate_corpus(Storage(), config.corpus, config.output)
    generate, embed = GenerateQueriesStage(config), EmbedPartStage(config)
    for part in summary.parts:
        generate.run_part(part.part)
        embed.run_part(part.part)


def run_ray(config) -> float:
    """Returns the seconds of the job itself, without starting and stopping the local Ray."""
    import ray

    from ray_jobs.common import start_local_ray
    from ray_jobs.index_corpus import run_indexing

    start_local_ray(2)
    try:
        start = time.perf_counter()
        run_indexing(config, progress_every_s=30)
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def child(mode: str, passages: int, work: Path) -> None:
    from xdr.models.tiny import build_tiny_models

    models = build_tiny_models(work / "models")
    corpus = work / f"corpus-{passages}.jsonl"
    if not corpus.exists():
        write_corpus(corpus, passages)
    output = work / f"run-{mode}-{passages}"
    if output.exists():
        import shutil

        shutil.rmtree(output)
    config = _config(models, corpus, output)
    start = time.perf_counter()
    job_seconds = (run_direct if mode == "direct" else run_ray)(config)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "job_seconds": job_seconds or seconds}))


def measure(mode: str, passages: int, work: Path) -> dict:
    """Run one child; sample the RSS of its process tree; return seconds, rate and peak memory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2" if mode == "direct" else ""}
    if not env["OMP_NUM_THREADS"]:
        env.pop("OMP_NUM_THREADS")
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--passages", str(passages),
                             "--work", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak = {"tree": 0}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                peak["tree"] = max(peak["tree"], total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run with {passages} passages failed ({proc.returncode})")
    timing = json.loads(out.strip().splitlines()[-1])
    return {"mode": mode, "passages": passages, "seconds": round(timing["seconds"], 2),
            "job_seconds": round(timing["job_seconds"], 2),
            "passages_per_s": round(passages / timing["job_seconds"], 1), "peak_rss_mib": round(peak["tree"] / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=20_000, help="corpus size of the throughput comparison")
    parser.add_argument("--memory-at", type=int, nargs="*", default=[10_000, 100_000],
                        help="corpus sizes at which the Ray job's peak memory is compared")
    parser.add_argument("--work", type=Path, default=REPO / "bench-output")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", choices=["direct", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.passages, args.work)
        return

    rows = [measure("direct", args.passages, args.work), measure("ray", args.passages, args.work)]
    for n in args.memory_at:
        if n != args.passages:
            rows.append(measure("ray", n, args.work))
    direct, ray_row = rows[0], rows[1]
    ratio = ray_row["passages_per_s"] / direct["passages_per_s"]
    ratio_with_start = direct["seconds"] / ray_row["seconds"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; date {time.strftime('%Y-%m-%d')}")
    print("job s = the job itself; total s adds process start, model build and (ray) starting the local Ray")
    print(f"{'mode':<8}{'passages':>10}{'job s':>9}{'total s':>9}{'passages/s':>12}{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['mode']:<8}{r['passages']:>10,}{r['job_seconds']:>9.1f}{r['seconds']:>9.1f}"
              f"{r['passages_per_s']:>12.1f}{r['peak_rss_mib']:>14,}")
    print(f"\nthroughput ratio ray/direct at {args.passages:,} passages: {ratio:.2f} (target >= 0.8); "
          f"{ratio_with_start:.2f} counting Ray's start-up")
    mem = {r["passages"]: r["peak_rss_mib"] for r in rows if r["mode"] == "ray"}
    if len(mem) >= 2:
        small, large = min(mem), max(mem)
        change = mem[large] / mem[small] - 1
        print(f"ray peak memory {small:,} -> {large:,} passages: {mem[small]} -> {mem[large]} MiB "
              f"({change:+.1%}; target within +-10%)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "throughput_ratio": round(ratio, 3),
                                         "throughput_ratio_with_ray_start": round(ratio_with_start, 3)}, indent=2))


if __name__ == "__main__":
    main()
