"""Load benchmark of the search endpoint against the direct in-process path (loopback only).

    python benchmarks/bench_serve.py                         # builds the demo index, 1/8/32/64 clients
    python benchmarks/bench_serve.py --index RUN/index --clients 1 8 32 64 --duration 10 --json out.json

Each client sends one question per request and waits for the answer before the next (closed loop), for
`--duration` seconds or `--max-requests` requests per level, whichever comes first. The direct path runs
the same questions through the library in this process (the endpoint's Encoder and ShardedSearcher) with
the same number of threads. Printed per level: requests/s, p50 and p99 latency, and errors (503 = shed
load, counted apart from other failures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "What is the highest mountain in Africa?", "Wer hat das Penicillin entdeckt?",
    "Какая самая длинная река в Европе?", "日本で一番高い山は何ですか？", "한글은 언제 만들어졌습니까?",
    "ما هي أكبر صحراء حارة في العالم؟", "¿Quién pintó la Mona Lisa?", "Quelle est la capitale de l'Australie?",
    "Qual é o maior rio do mundo?", "Kuka keksi puhelimen?", "ใครเป็นผู้ค้นพบเพนิซิลลิน",
    "Ai là người phát minh ra điện thoại?",
]


def _summary(latencies_s: list[float], errors: int, shed: int, wall_s: float) -> dict:
    ok = sorted(latencies_s)
    pct = (lambda q: round(1000 * float(np.percentile(ok, q)), 2)) if ok else (lambda q: None)
    return {"requests": len(ok) + errors + shed, "ok": len(ok), "errors": errors, "shed_503": shed,
            "qps": round(len(ok) / wall_s, 1), "p50_ms": pct(50), "p99_ms": pct(99),
            "mean_ms": round(1000 * statistics.fmean(ok), 2) if ok else None}


async def _http_level(url: str, clients: int, duration_s: float, max_requests: int, k: int) -> dict:
    import aiohttp

    latencies, counts = [], {"errors": 0, "shed": 0, "sent": 0}
    deadline = time.perf_counter() + duration_s

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline and counts["sent"] < max_requests:
            counts["sent"] += 1
            body = {"queries": [QUESTIONS[i % len(QUESTIONS)]], "k": k}
            i += 1
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/search", json=body) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = -1
            if status == 200:
                latencies.append(time.perf_counter() - start)
            elif status == 503:
                counts["shed"] += 1
                await asyncio.sleep(0.05)  # a polite client waits a little before retrying
            else:
                counts["errors"] += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, c) for c in range(clients)))
        wall = time.perf_counter() - start
    return _summary(latencies, counts["errors"], counts["shed"], wall)


def _direct_level(search_one, clients: int, duration_s: float, max_requests: int) -> dict:
    latencies, lock, counts = [], threading.Lock(), {"sent": 0, "errors": 0}
    deadline = time.perf_counter() + duration_s

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            with lock:
                if counts["sent"] >= max_requests:
                    return
                counts["sent"] += 1
            start = time.perf_counter()
            try:
                search_one(QUESTIONS[i % len(QUESTIONS)])
            except Exception:  # noqa: BLE001 -- counted, the benchmark goes on
                with lock:
                    counts["errors"] += 1
                continue
            finally:
                i += 1
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary(latencies, counts["errors"], 0, time.perf_counter() - start)


def demo_index(work: Path) -> str:
    """The demo's index (sample corpus, tiny generator, USE encoder), built once under `work`."""
    import yaml

    from ray_jobs import build_index, index_corpus
    from ray_jobs.cli import DEMO_CONFIG
    from xdr import tiny_models
    from xdr.config import IndexBuildConfig, IndexingJobConfig

    index = work / "run" / "index"
    if (index / "manifest.json").exists():
        return str(index)
    models = tiny_models.build_tiny_models(work / "models")
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    data.update(output=str(work / "run"))
    data["corpus"]["path"] = str(tiny_models.SAMPLE_CORPUS)
    data["generator"]["model"] = str(models["generator"])
    index_corpus.run_indexing(IndexingJobConfig.model_validate(data))
    build_index.build_index(IndexBuildConfig(run=str(work / "run"), shards=2, nprobe=4))
    return str(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="a built index (default: build the demo index under --work)")
    parser.add_argument("--work", type=Path, default=REPO / "bench-output" / "serve")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests per level at most")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--replica-cpus", type=float, default=0.1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import ray
    from ray import serve

    from ray_jobs import serve_app
    from ray_jobs.common import free_port, quiet_ray_logs
    from xdr.config import EncoderConfig, ServeConfig
    from xdr.encoder import make_encoder
    from xdr.search import ShardedSearcher
    from xdr.storage import Storage

    ray.init(address="local", num_cpus=2, include_dashboard=False, **quiet_ray_logs(args.work / "ray.log"))
    try:
        index = args.index or demo_index(args.work)
        manifest = json.loads(Storage().read_bytes(f"{index}/manifest.json"))
        encoder = make_encoder(EncoderConfig.model_validate(manifest["encoder"]))
        searcher = ShardedSearcher(index)

        def search_one(question: str) -> None:
            searcher.search(encoder.encode_queries([question]), args.k)

        config = ServeConfig(index=index, port=free_port(), encoder_replicas=(1, 1), shard_replicas=(1, 1),
                             replica_cpus=args.replica_cpus)
        url = serve_app.start(config, name="xdr-bench")
        for q in QUESTIONS:  # warm both paths
            search_one(q)
            asyncio.run(_http_level(url, 1, 5, 1, args.k))
        rows = []
        for clients in args.clients:
            endpoint = asyncio.run(_http_level(url, clients, args.duration, args.max_requests, args.k))
            direct = _direct_level(search_one, clients, args.duration, args.max_requests)
            rows.append({"clients": clients, "endpoint": endpoint, "direct": direct})
            print(f"  {clients:>3} clients: endpoint {endpoint['qps']} q/s p50 {endpoint['p50_ms']} ms, "
                  f"direct {direct['qps']} q/s p50 {direct['p50_ms']} ms", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()

    print(f"\nSearch endpoint vs direct path, demo index {manifest['vectors']} vectors, "
          f"{len(manifest['shards'])} shards, k={args.k}, {args.duration:g} s per level\n")
    print("| clients | endpoint q/s | p50 ms | p99 ms | errors | 503 shed | direct q/s | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        e, d = row["endpoint"], row["direct"]
        print(f"| {row['clients']} | {e['qps']} | {e['p50_ms']} | {e['p99_ms']} | {e['errors']} | {e['shed_503']} "
              f"| {d['qps']} | {d['p50_ms']} | {d['p99_ms']} |")
    if args.json:
        args.json.write_text(json.dumps({"index": index, "k": args.k, "duration_s": args.duration, "levels": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
