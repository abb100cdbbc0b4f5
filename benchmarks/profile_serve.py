"""Where the endpoint's CPU goes: per process, and inside the Router by kind of work (loopback only).

    python benchmarks/profile_serve.py --index RUN/index --ingress proxy --clients 1 8 --json out.json
    python benchmarks/profile_serve.py --index RUN/index --ingress haproxy --clients 1 8

Starts `xdr serve`'s application on a local Ray with the ingress's Serve settings (one Router replica),
loads it with wrk (benchmarks/bench_serve.py) at each client count, and meanwhile
- reads every process's CPU time from /proc before and after, keyed by what it runs (the Router replica,
  Serve's proxy, HAProxy, the controller, Ray's daemons, wrk), so each gets its CPU milliseconds per request;
- samples the Router replica with py-spy (`pip install py-spy`; skipped without it) and sorts its samples
  by kind of work: encoding, the faiss search, the id/text lookup, FastAPI and pydantic, Serve's replica
  machinery, Ray's core worker (actor calls, metrics), asyncio and threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# first match wins, tested against each stack from the innermost frame out
WORK_KINDS = [
    ("encode", r"xdr/encoder\.py|embedder\.py|numpy\.py.*_encode|pure_tokenizer|use_model"),
    ("faiss search", r"search_ids|ShardSearcher\.search|merge_topk"),
    ("id/text lookup", r"\.docs \(|ShardSearcher\.lookup"),
    ("FastAPI, Starlette, pydantic", r"fastapi/|starlette/|pydantic|serve_app\.py"),
    ("Serve replica machinery", r"ray/serve/"),
    ("Ray core worker (calls, metrics)", r"ray/_private|ray/actor|ray/util|_raylet"),
    ("asyncio, threads", r"asyncio/|threading\.py|concurrent/"),
]
PROCESS_KINDS = [("Router replica", "ServeReplica:prof:Router"), ("Serve proxy", "ProxyActor"),
                 ("HAProxy", "haproxy"), ("Serve controller", "ServeController"), ("wrk", "wrk"),
                 ("raylet", "raylet"), ("GCS", "gcs_server")]


def cpu_by_process_kind() -> Counter:
    """CPU seconds so far of every live process, summed by kind (others under "other")."""
    tick = os.sysconf("SC_CLK_TCK")
    out: Counter = Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = next((k for k, pattern in PROCESS_KINDS if pattern in cmdline), "other")
        out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


def classify(stack: str) -> str:
    for kind, pattern in WORK_KINDS:
        if re.search(pattern, stack):
            return kind
    return "other"


def router_profile(raw: Path) -> dict[str, float]:
    """Share of the Router's py-spy samples by kind of work (py-spy's raw format: 'frame;frame;... count')."""
    counts: Counter = Counter()
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[classify(stack)] += int(n)
    total = sum(counts.values()) or 1
    return {kind: round(n / total, 3) for kind, n in counts.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--ingress", choices=["proxy", "haproxy"], default="haproxy")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from ray_jobs import serve_proxy

    for name, value in serve_proxy.ingress_env(args.ingress).items():
        os.environ[name] = value  # before Ray starts: Serve reads them in its own processes
    import bench_serve
    import ray
    from ray import serve

    from ray_jobs import serve_app
    from ray_jobs.common import free_port, start_local_ray
    from xdr.config import ServeConfig

    work = Path(tempfile.mkdtemp(prefix="xdr-profile-"))
    start_local_ray(2, log_file=work / "ray.log")
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    levels = []
    try:
        config = ServeConfig(index=args.index, port=free_port(), ingress=args.ingress, router_replicas=(1, 1),
                             replica_cpus=0.1)
        url = serve_app.start(config, name="prof")
        script = bench_serve.wrk_script(10)
        bench_serve.wrk_level(url, max(args.clients), 2, script)  # warm-up
        router = subprocess.run(["pgrep", "-f", r"ServeReplica:prof:Router(\.|$)"], capture_output=True,
                                text=True).stdout.split()[0]
        for clients in args.clients:
            raw = work / f"router-{clients}.txt"
            spy = (subprocess.Popen([py_spy, "record", "-p", router, "-d", str(int(args.duration)), "-r", "100",
                                     "-f", "raw", "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) if py_spy else None)
            before = cpu_by_process_kind()
            level = bench_serve.wrk_level(url, clients, args.duration, script)
            used = cpu_by_process_kind() - before
            used["wrk"] = level["client_cpu_s"]  # wrk has exited: its own rusage
            if spy:
                spy.wait()
            requests = max(level["ok"] + level["shed_503"] + level["errors"], 1)
            levels.append({"clients": clients, "qps": level["qps"], "p50_ms": level["p50_ms"],
                           "cpu_ms_per_request": {k: round(1000 * v / requests, 3) for k, v in used.most_common()},
                           "router_work": router_profile(raw) if spy and raw.exists() else None})
        serve.shutdown()
    finally:
        ray.shutdown()
    for lv in levels:
        print(f"\n{args.ingress} ingress, {lv['clients']} clients: {lv['qps']} q/s, p50 {lv['p50_ms']} ms")
        print("| process | CPU ms per request |\n|---|---:|")
        for kind, ms in lv["cpu_ms_per_request"].items():
            print(f"| {kind} | {ms} |")
        if lv["router_work"]:
            print("\n| inside the Router replica | share of its samples |\n|---|---:|")
            for kind, share in lv["router_work"].items():
                print(f"| {kind} | {share:.1%} |")
    if args.json:
        args.json.write_text(json.dumps({"index": args.index, "ingress": args.ingress, "levels": levels}, indent=2),
                             encoding="utf-8")


if __name__ == "__main__":
    main()
